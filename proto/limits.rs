//! The wire contract's limits: what a request and a response may hold, the HTTP/2 frame size
//! both sides use, and the bounds of values a client sends. The server checks requests
//! against these at the edge; a client sizes its buffers and checks its settings with the same
//! numbers, so neither side needs the other's internals.
//!
//! Raw batches travel on the wire in storage's batch format, so the batch limits are storage's,
//! re-exported here.

pub use spool_storage::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX, RECORD_HEADERS_MAX};

/// The largest record timestamp accepted: the last millisecond of the year 9999.
pub const TIMESTAMP_MS_MAX: i64 = 253_402_300_799_999;

/// The largest gRPC message the server decodes. A produce request carries at most one batch's
/// worth of records, plus the protobuf framing around them.
pub const REQUEST_BYTES_MAX: usize = BATCH_BYTES_MAX as usize + 1024 * 1024;
/// The largest gRPC message a Spool client must be ready to decode: a fetch or subscribe
/// answer holds at most one read of [`FETCH_BYTES_MAX`], or one whole batch, plus framing.
pub const RESPONSE_BYTES_MAX: usize = 2 * BATCH_BYTES_MAX as usize + 1024 * 1024;

/// Bytes a fetch returns when the request names no limit.
pub const FETCH_BYTES_DEFAULT: u32 = 1024 * 1024;
/// The most bytes a fetch may ask for.
pub const FETCH_BYTES_MAX: u32 = BATCH_BYTES_MAX;
/// The longest a fetch may wait for data, in milliseconds.
pub const FETCH_WAIT_MS_MAX: u32 = 60_000;

/// Unanswered requests one ProduceStream may have in flight; the server stops reading the
/// stream while this many wait, and a client need not send more. One producer sending
/// single-record requests needs this many in flight to fill each group commit; the memory it
/// allows on the server is still bounded by the writer queue, which these requests wait in.
pub const PRODUCE_STREAM_IN_FLIGHT_MAX: usize = 256;

/// Batches an idempotent producer may have in flight to one partition. A server remembers the
/// offsets of at least this many recent batches per producer and partition, so a retry of any
/// of them is answered with its original offsets instead of being stored twice.
pub const IDEMPOTENT_BATCHES_IN_FLIGHT_MAX: usize = 5;

/// The largest HTTP/2 frame the gRPC listener accepts, and the Rust client too (the
/// protocol's default is 16 KiB). A sender writes each frame with its own call, so at 16 KiB a
/// 1 MiB produce request or subscribe answer goes out in 64 writes; at 1 MiB in one. h2 holds
/// one frame per connection while reading it.
pub const HTTP2_FRAME_BYTES_MAX: u32 = 1024 * 1024;

/// The shortest and longest session timeout a group member may ask for, and the default
/// (what a join that names none gets): a member that sends nothing for this long is removed
/// from its group.
pub const GROUP_SESSION_TIMEOUT_MS_MIN: u64 = 50;
pub const GROUP_SESSION_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;
pub const GROUP_SESSION_TIMEOUT_MS_DEFAULT: u64 = 10_000;

// A produce request that holds a largest batch fits in a request.
const _: () = assert!(REQUEST_BYTES_MAX > BATCH_BYTES_MAX as usize);
// A fetch answer (one read, which may be one whole largest batch) fits in a response.
const _: () = assert!(RESPONSE_BYTES_MAX > (FETCH_BYTES_MAX + BATCH_BYTES_MAX) as usize);
const _: () = assert!(FETCH_BYTES_DEFAULT <= FETCH_BYTES_MAX);
// HTTP/2 allows frames of 16 KiB to 16 MiB - 1.
const _: () =
    assert!(HTTP2_FRAME_BYTES_MAX >= 16 * 1024 && HTTP2_FRAME_BYTES_MAX < 16 * 1024 * 1024);
const _: () = assert!(GROUP_SESSION_TIMEOUT_MS_MIN <= GROUP_SESSION_TIMEOUT_MS_DEFAULT);
const _: () = assert!(GROUP_SESSION_TIMEOUT_MS_DEFAULT <= GROUP_SESSION_TIMEOUT_MS_MAX);
// The session timeout travels as a u32 of milliseconds.
const _: () = assert!(GROUP_SESSION_TIMEOUT_MS_MAX <= u32::MAX as u64);
