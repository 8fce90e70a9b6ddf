//! Subscribe answers sent without copying their stored batches.
//!
//! tonic encodes every message into its own buffer, so a replayed megabyte of stored
//! batches was copied once more on its way to the socket (with a fresh allocation each time):
//! ~15% of the CPU of a replay. Here the answer's other fields and the batches' field key and
//! length are encoded into a few bytes, and the batches follow as their own `Bytes`, which
//! hyper and h2 hand to the socket as they are.
//!
//! The subscribe handler returns an empty stream to tonic and puts the real one in the
//! response's extensions ([`Replies`]); [`RawReplies`], wrapped around the consume service,
//! swaps it in as the response body. Everything else (routing, the token check, headers,
//! request decoding) stays tonic's. What goes on the wire is plain gRPC: message frames
//! (uncompressed: the consume service enables no compression) then trailers with
//! `grpc-status`. tonic's per-message size check is not applied to these answers; they are
//! bounded before they are built (a subscribe read is `SUBSCRIBE_READ_BYTES`, or one batch of
//! at most `BATCH_BYTES_MAX`), below the `RESPONSE_BYTES_MAX` clients accept.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use spool_proto::v1::SubscribeResponse;
use tokio_stream::Stream;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::metrics::Buffered;

/// `SubscribeResponse.raw_batches`'s field number (consume.proto); the round-trip test
/// below fails if it changes.
const RAW_BATCHES_FIELD: u32 = 2;

/// Stored batches up to this size are copied in behind the answer's head: one frame instead
/// of two costs less than the copy.
const INLINE_BYTES_MAX: usize = 16 * 1024;

/// gRPC's message prefix: a compression flag and a big-endian length.
const PREFIX_BYTES: usize = 5;

/// One answer toward a subscriber and the bytes it holds on the server until it is handed on.
pub(crate) type Queued = (Result<SubscribeResponse, Status>, Option<Buffered>);

type Answers = Pin<Box<dyn Stream<Item = Queued> + Send>>;

/// The answers of one subscription, handed from the handler to [`RawReplies`] in the
/// response's extensions (which need `Clone + Sync`, hence the shared slot).
#[derive(Clone)]
pub(crate) struct Replies(Arc<Mutex<Option<Answers>>>);

impl Replies {
    pub(crate) fn new(answers: impl Stream<Item = Queued> + Send + 'static) -> Replies {
        Replies(Arc::new(Mutex::new(Some(Box::pin(answers)))))
    }

    fn take(&self) -> Option<Answers> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

/// Wraps a service; a response that carries [`Replies`] gets them as its body.
#[derive(Debug, Clone)]
pub(crate) struct RawReplies<S>(pub(crate) S);

impl<S: NamedService> NamedService for RawReplies<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, R> Service<R> for RawReplies<S>
where
    S: Service<R, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let call = self.0.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            if let Some(answers) =
                response.extensions_mut().remove::<Replies>().and_then(|r| r.take())
            {
                *response.body_mut() =
                    Body::new(ReplyBody { answers, batches: None, ended: false });
            }
            Ok(response)
        })
    }
}

struct ReplyBody {
    answers: Answers,
    /// The stored batches of the answer whose head went out last, and their byte count.
    batches: Option<(Bytes, Option<Buffered>)>,
    ended: bool,
}

impl http_body::Body for ReplyBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some((batches, _buffered)) = self.batches.take() {
            return Poll::Ready(Some(Ok(Frame::data(batches))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(self.answers.as_mut().poll_next(cx)) {
            Some((Ok(answer), buffered)) => {
                let (head, batches) = encode(answer);
                self.batches = batches.map(|batches| (batches, buffered));
                return Poll::Ready(Some(Ok(Frame::data(head))));
            }
            Some((Err(status), _)) => status,
            None => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(status) = status.add_header(&mut trailers) {
            // Only a message that cannot be a header value gets here.
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.batches.is_none()
    }
}

/// One gRPC message: the prefix, every field but the stored batches, and the batches' key and
/// length; then the batches themselves, unless they were small enough to copy in.
fn encode(mut answer: SubscribeResponse) -> (Bytes, Option<Bytes>) {
    let batches = std::mem::take(&mut answer.raw_batches);
    let batches_field = if batches.is_empty() {
        0
    } else {
        key_len(RAW_BATCHES_FIELD) + encoded_len_varint(batches.len() as u64) + batches.len()
    };
    let message_bytes = answer.encoded_len() + batches_field;
    let inline = batches.len() <= INLINE_BYTES_MAX;
    let head_bytes = PREFIX_BYTES + message_bytes - if inline { 0 } else { batches.len() };
    let mut head = BytesMut::with_capacity(head_bytes);
    head.put_u8(0);
    // Answers are bounded by the read sizes in limits.rs, far below 4 GiB.
    head.put_u32(message_bytes as u32);
    answer.encode_raw(&mut head);
    if batches.is_empty() {
        return (head.freeze(), None);
    }
    encode_key(RAW_BATCHES_FIELD, WireType::LengthDelimited, &mut head);
    encode_varint(batches.len() as u64, &mut head);
    if inline {
        head.put_slice(&batches);
        return (head.freeze(), None);
    }
    (head.freeze(), Some(batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_proto::v1::ConsumedRecord;

    fn round_trip(answer: SubscribeResponse) {
        let (head, batches) = encode(answer.clone());
        let mut wire = head.to_vec();
        if let Some(batches) = batches {
            wire.extend_from_slice(&batches);
        }
        assert_eq!(wire[0], 0, "uncompressed");
        let length = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
        assert_eq!(length, wire.len() - PREFIX_BYTES, "the prefix gives the message length");
        let decoded = SubscribeResponse::decode(&wire[PREFIX_BYTES..]).unwrap();
        assert_eq!(decoded, answer);
        assert_eq!(decoded.encoded_len(), length, "the same length prost would encode");
    }

    #[test]
    fn answers_decode_as_prost_encodes_them() {
        let big = Bytes::from((0..INLINE_BYTES_MAX * 3).map(|i| i as u8).collect::<Vec<_>>());
        for raw_batches in
            [Bytes::new(), Bytes::from_static(b"b"), big.slice(..INLINE_BYTES_MAX), big.clone()]
        {
            round_trip(SubscribeResponse {
                records: Vec::new(),
                raw_batches,
                next_offset: 1 << 40,
                log_end_offset: (1 << 40) + 7,
            });
        }
        round_trip(SubscribeResponse {
            records: vec![ConsumedRecord {
                offset: 3,
                timestamp_ms: 1_700_000_000_000,
                key: Some(Bytes::from_static(b"k")),
                value: Some(Bytes::from_static(b"v")),
                headers: Vec::new(),
            }],
            raw_batches: Bytes::new(),
            next_offset: 4,
            log_end_offset: 9,
        });
    }

    fn body_frames(answers: Vec<Result<SubscribeResponse, Status>>) -> Vec<Frame<Bytes>> {
        let answers = tokio_stream::iter(answers.into_iter().map(|answer| (answer, None)));
        let mut body = ReplyBody { answers: Box::pin(answers), batches: None, ended: false };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut frames = Vec::new();
        loop {
            match http_body::Body::poll_frame(Pin::new(&mut body), &mut cx) {
                Poll::Ready(Some(frame)) => frames.push(frame.expect("frames, not errors")),
                Poll::Ready(None) => break,
                Poll::Pending => panic!("a ready stream never leaves the body pending"),
            }
        }
        assert!(http_body::Body::is_end_stream(&body));
        frames
    }

    fn grpc_status(frame: &Frame<Bytes>) -> (String, Option<String>) {
        let trailers = frame.trailers_ref().expect("trailers last");
        let text =
            |name| trailers.get(name).map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned());
        (text("grpc-status").expect("a status"), text("grpc-message"))
    }

    #[test]
    fn the_body_sends_heads_batches_then_the_status() {
        let batches = Bytes::from(vec![1u8; INLINE_BYTES_MAX * 2]);
        let answer = SubscribeResponse {
            raw_batches: batches.clone(),
            next_offset: 5,
            ..Default::default()
        };
        let frames = body_frames(vec![Ok(answer.clone()), Ok(answer)]);
        assert_eq!(frames.len(), 5, "head and batches twice, then trailers");
        assert_eq!(frames[1].data_ref().unwrap().as_ptr(), batches.as_ptr());
        assert_eq!(grpc_status(&frames[4]), ("0".to_owned(), None));

        let frames = body_frames(vec![
            Ok(SubscribeResponse { raw_batches: Bytes::from_static(b"x"), ..Default::default() }),
            Err(Status::out_of_range("offset 9 is past the end")),
            Ok(SubscribeResponse::default()),
        ]);
        assert_eq!(frames.len(), 2, "a small answer in one frame; nothing after the error");
        let (code, message) = grpc_status(&frames[1]);
        assert_eq!(code, (tonic::Code::OutOfRange as i32).to_string());
        assert_eq!(message.as_deref(), Some("offset%209%20is%20past%20the%20end"));
    }

    #[test]
    fn large_batches_go_out_as_they_are() {
        let batches = Bytes::from(vec![7u8; INLINE_BYTES_MAX + 1]);
        let (head, rest) =
            encode(SubscribeResponse { raw_batches: batches.clone(), ..Default::default() });
        let rest = rest.expect("sent on their own");
        assert_eq!(rest.as_ptr(), batches.as_ptr(), "the stored bytes themselves, not a copy");
        assert!(head.len() < 16);
    }
}
