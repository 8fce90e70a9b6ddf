//! Produce requests sent without copying their batches.
//!
//! tonic encodes every request into its own buffer, so each batch a producer sent was copied
//! once more on its way to the socket, into a fresh allocation each time: about 9% of the
//! CPU of a 1 KiB produce, client and server together. Here each request's other fields and
//! the batch's field key and length are encoded into a few bytes, and the batch follows as
//! its own `Bytes`, which hyper and h2 hand to the socket as it is. The server does the same
//! for the answers it replays (`replies.rs` in the server crate).
//!
//! [`crate::producer`] opens its stream with an empty request stream for tonic and puts the
//! real body in the request's extensions ([`RawBody`]); [`crate::Nodes`], under tonic,
//! swaps it in. Everything else (the path, headers, the token, the answers) stays tonic's.
//! What goes on the wire is plain gRPC: uncompressed message frames, as tonic sends them for
//! this client, which enables no compression. Requests are bounded before they are built
//! (a batch is at most `BATCH_BYTES_MAX`), below what the server accepts.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use prost::Message;
use spool_proto::framing;
use spool_proto::v1::ProduceRequest;
use spool_proto::v1::produce_request::Payload;
use tokio::sync::mpsc;
use tonic::body::Body;

/// `ProduceRequest.raw_batch`'s field number (produce.proto); the round-trip test below fails
/// if it changes.
const RAW_BATCH_FIELD: u32 = 6;

/// Batches up to this size are copied in behind a request's head: one frame instead of two
/// costs less than the copy (as the server's answers do).
const REQUEST_INLINE_BYTES_MAX: usize = 16 * 1024;

/// A request body handed to [`crate::Nodes`] in the request's extensions (which need
/// `Clone + Sync`, hence the shared slot): it takes the place of the body tonic encoded.
#[derive(Clone)]
pub(crate) struct RawBody(Arc<Mutex<Option<Body>>>);

impl RawBody {
    /// The body of a produce stream: each request `requests` yields, framed.
    pub(crate) fn produce(requests: mpsc::Receiver<ProduceRequest>) -> RawBody {
        let body = Body::new(Frames { requests, batch: None });
        RawBody(Arc::new(Mutex::new(Some(body))))
    }

    /// The body, once.
    pub(crate) fn take(&self) -> Option<Body> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The frames of the requests as they come: each request's head, then its batch.
struct Frames {
    requests: mpsc::Receiver<ProduceRequest>,
    /// The batch of the request whose head went last.
    batch: Option<Bytes>,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(batch) = self.batch.take() {
            return Poll::Ready(Some(Ok(Frame::data(batch))));
        }
        self.requests.poll_recv(cx).map(|request| {
            request.map(|request| {
                let (head, batch) = encode(request);
                self.batch = batch;
                Ok(Frame::data(head))
            })
        })
    }
}

/// Frames one request: the prefix and every field but the raw batch, then the batch, copied
/// in when small (see [`framing::frame`]). A request holds at most one batch of
/// `BATCH_BYTES_MAX`, far below 4 GiB.
fn encode(mut request: ProduceRequest) -> (Bytes, Option<Bytes>) {
    let batch = match request.payload.take() {
        Some(Payload::RawBatch(batch)) => Some(batch),
        other => {
            request.payload = other;
            None
        }
    };
    let fields = request.encoded_len();
    framing::frame(fields, RAW_BATCH_FIELD, batch, REQUEST_INLINE_BYTES_MAX, |head| {
        request.encode_raw(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What tonic would send for `request`: the prefix and prost's encoding.
    fn as_tonic_sends(request: &ProduceRequest) -> Vec<u8> {
        let body = request.encode_to_vec();
        let mut framed = vec![0];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        framed
    }

    fn framed(request: ProduceRequest) -> Vec<u8> {
        let (head, batch) = encode(request);
        [head, batch.unwrap_or_default()].concat()
    }

    #[test]
    fn a_request_is_framed_as_tonic_frames_it() {
        let requests = [
            ProduceRequest {
                correlation_id: 7,
                topic: "orders".into(),
                partition: Some(0),
                acks: 2,
                payload: Some(Payload::RawBatch(Bytes::from(vec![5u8; 70_000]))),
                producer: None,
            },
            ProduceRequest {
                payload: Some(Payload::RawBatch(Bytes::new())),
                ..ProduceRequest::default()
            },
            ProduceRequest {
                payload: Some(Payload::RawBatch(Bytes::from(vec![3u8; 100]))),
                ..ProduceRequest::default()
            },
            ProduceRequest { topic: "t".into(), ..ProduceRequest::default() },
        ];
        for request in requests {
            assert_eq!(framed(request.clone()), as_tonic_sends(&request), "{request:?}");
        }
    }

    #[test]
    fn a_large_batch_goes_on_its_own_without_a_copy() {
        let batch = Bytes::from(vec![9u8; REQUEST_INLINE_BYTES_MAX + 1]);
        let request = ProduceRequest {
            payload: Some(Payload::RawBatch(batch.clone())),
            ..ProduceRequest::default()
        };
        let (_, sent) = encode(request);
        assert_eq!(sent.map(|sent| sent.as_ptr()), Some(batch.as_ptr()));
        let small = ProduceRequest {
            payload: Some(Payload::RawBatch(batch.slice(..REQUEST_INLINE_BYTES_MAX))),
            ..ProduceRequest::default()
        };
        assert!(encode(small).1.is_none(), "a small batch is copied in behind the head");
    }
}
