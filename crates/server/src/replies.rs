//! Answers sent without copying their stored batches: subscribe answers and group members'
//! records.
//!
//! tonic encodes every message into its own buffer, so a replayed megabyte of stored
//! batches was copied once more on its way to the socket (with a fresh allocation each time):
//! ~15% of the CPU of a replay. Here the message's other fields and the batches' field key and
//! length are encoded into a few bytes, and the batches follow as their own `Bytes`, which
//! hyper and h2 hand to the socket as they are.
//!
//! The subscribe and join handlers return an empty stream to tonic and put the real one in
//! the response's extensions ([`Replies`]); [`RawReplies`], wrapped around the consume and
//! group services, swaps it in as the response body. Everything else (routing, the token
//! check, headers, request decoding) stays tonic's. What goes on the wire is plain gRPC:
//! message frames (uncompressed: neither service enables compression) then trailers with
//! `grpc-status`. tonic's per-message size check is not applied to these answers; they are
//! bounded before they are built (a read is `SUBSCRIBE_READ_BYTES` or `GROUP_READ_BYTES`, or
//! one batch of at most `BATCH_BYTES_MAX`), below the `RESPONSE_BYTES_MAX` clients accept.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use spool_proto::framing;
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::{MemberEvent, SubscribeResponse};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::limits::REPLY_INLINE_BYTES_MAX;
use crate::metrics::Buffered;

/// `SubscribeResponse.raw_batches`'s field number (consume.proto); the round-trip tests
/// below fail if it changes, as for the two below.
const RAW_BATCHES_FIELD: u32 = 2;
/// `MemberEvent.records`'s field number, and `PartitionRecords.raw_batches`'s (groups.proto).
const MEMBER_RECORDS_FIELD: u32 = 3;
const RECORDS_RAW_BATCHES_FIELD: u32 = 5;

/// One answer toward a subscriber and the bytes it holds on the server until it is handed on.
pub(crate) type Queued = (Result<SubscribeResponse, Status>, Option<Buffered>);

/// One message, encoded: its head, and the stored batches that follow it on the wire.
#[derive(Debug)]
pub(crate) struct Encoded {
    head: Bytes,
    batches: Option<Bytes>,
}

impl From<SubscribeResponse> for Encoded {
    fn from(mut answer: SubscribeResponse) -> Encoded {
        let batches = std::mem::take(&mut answer.raw_batches);
        split(answer.encoded_len(), RAW_BATCHES_FIELD, batches, |head| answer.encode_raw(head))
    }
}

impl From<MemberEvent> for Encoded {
    fn from(mut event: MemberEvent) -> Encoded {
        let Some(Kind::Records(records)) = &mut event.kind else {
            return split(event.encoded_len(), 0, Bytes::new(), |head| event.encode_raw(head));
        };
        let batches = std::mem::take(&mut records.raw_batches);
        // The records message nests in the event: its key and length come first.
        let records_fields = records.encoded_len();
        let inner = records_fields + field_bytes(RECORDS_RAW_BATCHES_FIELD, batches.len());
        let fields =
            key_len(MEMBER_RECORDS_FIELD) + encoded_len_varint(inner as u64) + records_fields;
        split(fields, RECORDS_RAW_BATCHES_FIELD, batches, |head| {
            encode_key(MEMBER_RECORDS_FIELD, WireType::LengthDelimited, head);
            encode_varint(inner as u64, head);
            records.encode_raw(head);
        })
    }
}

/// The bytes of a `bytes` field of `len` bytes (none when empty: proto3 leaves it out).
fn field_bytes(field: u32, len: usize) -> usize {
    if len == 0 { 0 } else { framing::field_len(field, len) }
}

/// Frames one message: the prefix, what `write` encodes (`fields` bytes: everything but the
/// stored batches, which come last), then the batches, copied in when small (see
/// [`framing::frame`]). Answers are bounded by the read sizes in limits.rs, far below 4 GiB.
fn split(fields: usize, field: u32, batches: Bytes, write: impl FnOnce(&mut BytesMut)) -> Encoded {
    let batches = (!batches.is_empty()).then_some(batches);
    let (head, batches) = framing::frame(fields, field, batches, REPLY_INLINE_BYTES_MAX, write);
    Encoded { head, batches }
}

type Answers = Pin<Box<dyn Stream<Item = (Result<Encoded, Status>, Option<Buffered>)> + Send>>;

/// The answers of one call, handed from the handler to [`RawReplies`] in the response's
/// extensions (which need `Clone + Sync`, hence the shared slot).
#[derive(Clone)]
pub(crate) struct Replies(Arc<Mutex<Option<Answers>>>);

impl Replies {
    /// Answers, each with the bytes it holds on the server until it is handed on.
    pub(crate) fn new<T: Into<Encoded>>(
        answers: impl Stream<Item = (Result<T, Status>, Option<Buffered>)> + Send + 'static,
    ) -> Replies {
        let encoded = answers.map(|(answer, buffered)| (answer.map(Into::into), buffered));
        Replies(Arc::new(Mutex::new(Some(Box::pin(encoded)))))
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
            Some((Ok(Encoded { head, batches }), buffered)) => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use spool_proto::v1::{Assignment, ConsumedRecord, PartitionRecords};

    fn round_trip<T: Message + Default + PartialEq + Clone + Into<Encoded>>(answer: T) {
        let Encoded { head, batches } = answer.clone().into();
        let mut wire = head.to_vec();
        if let Some(batches) = batches {
            wire.extend_from_slice(&batches);
        }
        assert_eq!(wire[0], 0, "uncompressed");
        let length = u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
        assert_eq!(
            length,
            wire.len() - framing::PREFIX_BYTES,
            "the prefix gives the message length"
        );
        let decoded = T::decode(&wire[framing::PREFIX_BYTES..]).unwrap();
        assert!(decoded == answer, "decodes to what was encoded");
        assert_eq!(decoded.encoded_len(), length, "the same length prost would encode");
    }

    fn batch_sizes() -> [Bytes; 4] {
        let big = Bytes::from((0..REPLY_INLINE_BYTES_MAX * 3).map(|i| i as u8).collect::<Vec<_>>());
        [Bytes::new(), Bytes::from_static(b"b"), big.slice(..REPLY_INLINE_BYTES_MAX), big]
    }

    #[test]
    fn answers_decode_as_prost_encodes_them() {
        for raw_batches in batch_sizes() {
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

    #[test]
    fn member_events_decode_as_prost_encodes_them() {
        for raw_batches in batch_sizes() {
            round_trip(MemberEvent {
                kind: Some(Kind::Records(PartitionRecords {
                    topic: "orders".into(),
                    partition: 7,
                    generation: 3,
                    records: Vec::new(),
                    raw_batches,
                    next_offset: 1 << 33,
                    log_end_offset: (1 << 33) + 1,
                    start_offset: 12,
                })),
            });
        }
        round_trip(MemberEvent {
            kind: Some(Kind::Assignment(Assignment { generation: 2, ..Default::default() })),
        });
        round_trip(MemberEvent::default());
    }

    fn body_frames(answers: Vec<Result<SubscribeResponse, Status>>) -> Vec<Frame<Bytes>> {
        let answers = tokio_stream::iter(answers.into_iter().map(|answer| (answer, None)));
        let answers = Replies::new(answers).take().unwrap();
        let mut body = ReplyBody { answers, batches: None, ended: false };
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
        let batches = Bytes::from(vec![1u8; REPLY_INLINE_BYTES_MAX * 2]);
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
        let batches = Bytes::from(vec![7u8; REPLY_INLINE_BYTES_MAX + 1]);
        let Encoded { head, batches: rest } =
            SubscribeResponse { raw_batches: batches.clone(), ..Default::default() }.into();
        let rest = rest.expect("sent on their own");
        assert_eq!(rest.as_ptr(), batches.as_ptr(), "the stored bytes themselves, not a copy");
        assert!(head.len() < 16);
    }
}
