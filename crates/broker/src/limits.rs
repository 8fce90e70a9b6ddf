//! Every number Spool bounds above the storage layer, in one place: names, topics, requests,
//! queues and streams. The server checks requests against these at the edge (as typed errors)
//! and sizes its queues and channels from them, so nothing grows with client input without a
//! bound. The `const` assertions pin how the limits relate to each other and to storage's.

pub use spool_storage::limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, FSYNC_INTERVAL_MS_MAX, RECORD_HEADERS_MAX,
    SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};

/// The longest topic name, in bytes (Kafka's limit; names are ASCII).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// The most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 256;
/// The most topics a server holds.
pub const TOPICS_MAX: usize = 1024;
/// The most partitions, over all topics, a server holds. Each partition keeps its active
/// segment's index files mapped and preallocated, so this bounds maps and disk reserved.
pub const PARTITIONS_TOTAL_MAX: u32 = 4096;

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

/// Appends waiting for one partition's writer. Producers beyond this wait (backpressure).
pub const WRITER_QUEUE_DEPTH: usize = 1024;
/// The most batches a writer appends before one group commit.
pub const WRITER_GROUP_BATCHES_MAX: usize = 256;

/// Unanswered requests one ProduceStream may have in flight; the server stops reading the
/// stream while this many wait. 256 (raised from 64 for the client, issue 5): one producer
/// sending single-record requests needs this many in flight to fill each group commit; the
/// memory it allows is still bounded by the writer queue, which these requests wait in.
pub const PRODUCE_STREAM_IN_FLIGHT_MAX: usize = 256;
/// Answers queued toward one ProduceStream client.
pub const PRODUCE_STREAM_ANSWERS_QUEUED_MAX: usize = 64;

/// Bytes of log one subscription reads per message (a single larger batch is sent whole).
pub const SUBSCRIBE_READ_BYTES: u32 = 1024 * 1024;
/// Messages queued toward one subscriber: when they are not taken, the subscription stops
/// reading the log. With the message being built, a subscriber holds at most
/// [`SUBSCRIBER_BUFFERED_BYTES_MAX`] of log on the server.
pub const SUBSCRIBE_QUEUE_DEPTH: usize = 2;
/// The most log bytes one subscriber holds on the server, queued or being built.
pub const SUBSCRIBER_BUFFERED_BYTES_MAX: u64 =
    (SUBSCRIBE_QUEUE_DEPTH as u64 + 1) * BATCH_BYTES_MAX as u64;

/// Concurrent gRPC streams (calls) per connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 256;

/// The largest HTTP/2 frame the gRPC listener accepts, and the Rust client too (the
/// protocol's default is 16 KiB). A sender writes each frame with its own call, so a 1 MiB
/// produce request or subscribe answer went out in 64 writes. In one, on the 2-core VM
/// (paired runs): 1 KiB x 1000 produce without fsync 378-495 -> 476-523 MB/s (the listener);
/// replay of 1 KiB messages 1,132-1,264 -> 1,515-2,637 MB/s, at half the CPU per GB, and
/// `bench group` 1,112-1,236 -> 1,898-2,105 MB/s (the client). h2 holds one frame per
/// connection while reading it.
pub const HTTP2_FRAME_BYTES_MAX: u32 = 1024 * 1024;

// The browser listener (`--http`): Server-Sent Events, WebSocket and plain HTTP.

/// The largest HTTP request body or WebSocket message the listener reads: one record as JSON,
/// whose value may be base64 (4 bytes for every 3), plus room for its key and headers.
pub const HTTP_REQUEST_BYTES_MAX: usize = BATCH_BYTES_MAX as usize / 3 * 4 + 1024 * 1024;
/// Bytes of log one browser subscription reads per chunk. Smaller than gRPC's read: a chunk
/// becomes JSON text, which may be several times the size of the bytes it was read from.
pub const HTTP_SUBSCRIBE_READ_BYTES: u32 = 256 * 1024;
/// Chunks queued toward one browser subscription; when they are not taken, it stops reading
/// the log. With the chunk being built, a browser holds at most
/// [`HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX`] of log on the server (plus the socket's buffer).
pub const HTTP_SUBSCRIBE_QUEUE_DEPTH: usize = 2;
/// The most log bytes one browser subscription holds on the server, queued or being built
/// (a single batch larger than a read is read whole).
pub const HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX: u64 =
    (HTTP_SUBSCRIBE_QUEUE_DEPTH as u64 + 1) * BATCH_BYTES_MAX as u64;
/// Subscriptions (SSE streams and WebSockets) the listener serves at once; one more is
/// answered 503.
pub const HTTP_STREAMS_MAX: usize = 1024;
/// Bytes of records being produced through the listener at once (POST bodies and WebSocket
/// produce messages, from the moment they are read until they are acknowledged); a request
/// beyond it waits, reading nothing more, until there is room.
pub const HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX: usize = 64 * 1024 * 1024;
/// The most records one history request (`GET .../records`) answers.
pub const HTTP_HISTORY_RECORDS_MAX: u32 = 1000;

/// How often each partition applies its retention limits, in milliseconds.
pub const RETENTION_CHECK_INTERVAL_MS: u64 = 30_000;

// Consumer groups and idempotent producers.

/// Live consumer groups (with at least one member) a server coordinates at once.
pub const GROUPS_LIVE_MAX: usize = 1024;
/// Groups a server remembers committed offsets for; a join that would create one more is
/// refused.
pub const GROUPS_KNOWN_MAX: usize = 10_000;
/// Members one group may have at once.
pub const GROUP_MEMBERS_MAX: usize = 1024;
/// Topics one group may consume.
pub const GROUP_TOPICS_MAX: usize = 64;
/// The shortest and longest session timeout a member may ask for, and the default: a member
/// that sends nothing for this long is removed from its group.
pub const GROUP_SESSION_TIMEOUT_MS_MIN: u64 = 50;
pub const GROUP_SESSION_TIMEOUT_MS_MAX: u64 = 10 * 60 * 1000;
pub const GROUP_SESSION_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Messages queued toward one group member, in each of its two queues: records, and control
/// messages (assignments, commit results), which go first. When the member does not take
/// records, its partitions stop reading the log.
pub const GROUP_MEMBER_QUEUE_DEPTH: usize = 4;
/// Bytes of log one group member's partition reads per message.
pub const GROUP_READ_BYTES: u32 = 1024 * 1024;
/// Partition offsets one commit may carry.
pub const COMMIT_OFFSETS_MAX: usize = PARTITIONS_TOTAL_MAX as usize;

/// Batches per producer a partition remembers the offsets of, to answer retries: a producer
/// with more unanswered batches than this in flight to one partition cannot be deduplicated.
pub const PRODUCER_BATCHES_RETAINED: usize = 5;
/// Producers a partition tracks; beyond it, the one that appended least recently is forgotten.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 1000;
/// Bytes at the end of each partition log read at start-up to rebuild producer state (whole
/// segments, so up to one segment more).
///
/// What the window costs: after a restart, a retry is deduplicated only if the batch it
/// retries lies within the window, so a producer whose batch was stored but not answered,
/// and which retries it only after more than this was appended to the partition *and* the
/// server restarted in between, stores it twice. A batch in flight at a crash was appended
/// moments before it, so that takes a partition taking 64 MiB within one request's wait, or
/// a producer cut off from the server (while others go on writing) for that long; the Rust
/// client gives up after its delivery timeout (2 minutes by default). A producer whose state
/// fell out of the window is not refused: the table is then incomplete and accepts an unknown
/// producer at any sequence.
///
/// Why a window rather than a snapshot of the state beside each log (as Kafka does): the
/// rebuild needs nothing but the log, whose batch headers carry every stamp, and it can never
/// disagree with what recovery kept of the log; a snapshot would be a second file per
/// partition to order against the log's own recovery (one ahead of a tail that recovery cut
/// must be thrown away). The cost is start-up reading: up to this much per partition.
pub const PRODUCER_STATE_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// Producer ids are reserved durably in blocks of this many, so most allocations need no
/// fsync.
pub const PRODUCER_ID_BLOCK: u64 = 1000;
/// An internal log (the committed offsets) is compacted to a snapshot of its folded state
/// once it holds more than this many bytes, or twice what the last compaction left, whichever
/// is more. Small enough that folding it at start-up takes well under a second; large enough
/// that compactions are rare (a commit record is about 60 bytes per partition).
pub const INTERNAL_LOG_COMPACT_BYTES: u64 = 64 * 1024 * 1024;

const _: () = assert!(PARTITIONS_PER_TOPIC_MAX <= PARTITIONS_TOTAL_MAX);
const _: () = assert!(TOPIC_NAME_BYTES_MAX < 255, "a name must fit in one path component");
// A produce request that holds a largest batch fits in a request.
const _: () = assert!(REQUEST_BYTES_MAX > BATCH_BYTES_MAX as usize);
// A fetch answer (one read, which may be one whole largest batch) fits in a response.
const _: () = assert!(RESPONSE_BYTES_MAX > (FETCH_BYTES_MAX + BATCH_BYTES_MAX) as usize);
const _: () = assert!(FETCH_BYTES_DEFAULT <= FETCH_BYTES_MAX);
const _: () = assert!(SUBSCRIBE_READ_BYTES <= BATCH_BYTES_MAX);
const _: () = assert!(WRITER_GROUP_BATCHES_MAX <= WRITER_QUEUE_DEPTH);
const _: () = assert!(SUBSCRIBE_QUEUE_DEPTH >= 1);
// A browser can send one record of a largest batch's size, base64-encoded.
const _: () = assert!(HTTP_REQUEST_BYTES_MAX > BATCH_BYTES_MAX as usize / 3 * 4);
const _: () = assert!(HTTP_SUBSCRIBE_READ_BYTES <= BATCH_BYTES_MAX);
// One largest request fits in the budget, which a semaphore counts in u32 permits.
const _: () = assert!(HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX >= HTTP_REQUEST_BYTES_MAX);
const _: () = assert!(HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX <= u32::MAX as usize);
const _: () = assert!(HTTP_SUBSCRIBE_QUEUE_DEPTH >= 1);
const _: () = assert!(HTTP_HISTORY_RECORDS_MAX <= BATCH_RECORDS_MAX);
const _: () = assert!(PRODUCE_STREAM_IN_FLIGHT_MAX <= STREAMS_PER_CONNECTION_MAX as usize);
// HTTP/2 allows frames of 16 KiB to 16 MiB - 1.
const _: () =
    assert!(HTTP2_FRAME_BYTES_MAX >= 16 * 1024 && HTTP2_FRAME_BYTES_MAX < 16 * 1024 * 1024);
const _: () = assert!(GROUP_SESSION_TIMEOUT_MS_MIN <= GROUP_SESSION_TIMEOUT_MS_DEFAULT);
const _: () = assert!(GROUP_SESSION_TIMEOUT_MS_DEFAULT <= GROUP_SESSION_TIMEOUT_MS_MAX);
const _: () = assert!(GROUPS_LIVE_MAX <= GROUPS_KNOWN_MAX);
const _: () = assert!(GROUP_MEMBER_QUEUE_DEPTH >= 1);
const _: () = assert!(GROUP_READ_BYTES <= BATCH_BYTES_MAX);
const _: () = assert!(PRODUCER_BATCHES_RETAINED >= 1);
const _: () = assert!(PRODUCER_STATE_SCAN_BYTES >= BATCH_BYTES_MAX as u64);
// A snapshot of the largest state (every known group with a commit of the most offsets, about
// 60 bytes each) may be larger than the threshold: then the next compaction waits until the
// log doubles. The threshold must still hold a few batches.
const _: () = assert!(INTERNAL_LOG_COMPACT_BYTES >= 4 * BATCH_BYTES_MAX as u64);
