//! The bounds of the broker's model, in one place: topic names, topics and partitions, consumer
//! groups, idempotent producers and the internal logs. The server checks requests against these
//! at the edge (as typed errors); the broker asserts them again. The wire contract's limits are
//! in `spool_proto::limits`, the server's own (queues, streams, the browser listener) in the
//! server's `limits` module. The `const` assertions pin how these relate to storage's.

use spool_storage::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX};
pub use spool_storage::limits::{
    FSYNC_INTERVAL_MS_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};

/// The longest topic name, in bytes (Kafka's limit; names are ASCII).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// The most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 256;
/// The most topics a server holds.
pub const TOPICS_MAX: usize = 1024;
/// Threads that open partition logs at start and close them at shutdown. Opening and closing
/// wait on the file system (reading a recovery point, allocating and syncing files), not on
/// the CPU, so there are more of them than cores; each takes a stack only while it runs.
pub const OPEN_THREADS_MAX: usize = 32;
/// The most partitions, over all topics, a server's configured partition limit may allow. The
/// limit itself is a setting (the server sizes its default from the machine, see
/// [`crate::Registry::set_partitions_max`]).
pub const PARTITIONS_TOTAL_MAX: u32 = 1_000_000;

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
/// The longest member id a join may name to resume (the ids the server gives are at most 37
/// bytes).
pub const MEMBER_ID_BYTES_MAX: usize = 64;
/// Partition offsets one commit may carry.
pub const COMMIT_OFFSETS_MAX: usize = 4096;

/// Kafka's classic groups (the Kafka listener's JoinGroup and friends). They share
/// [`GROUPS_LIVE_MAX`] and [`GROUPS_KNOWN_MAX`] with Spool's own groups.
///
/// Members one classic group may have (or have been given ids and not yet joined).
pub const CLASSIC_GROUP_MEMBERS_MAX: usize = 1024;
/// Bytes of a static member's `group.instance.id` (Kafka's clients hold it to the length of a
/// topic name).
pub const CLASSIC_INSTANCE_ID_BYTES_MAX: usize = 249;
/// Protocols (assignors) one member may offer.
pub const CLASSIC_PROTOCOLS_MAX: usize = 16;
/// Bytes of protocol names and metadata one member may send in a JoinGroup.
pub const CLASSIC_MEMBER_METADATA_BYTES_MAX: usize = 64 * 1024;
/// Bytes of one member's assignment.
pub const CLASSIC_ASSIGNMENT_BYTES_MAX: usize = 1024 * 1024;
/// Bytes of metadata and assignments held over every classic group.
pub const CLASSIC_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes of one classic group's stored state (its members, the chosen protocol's metadata
/// and the assignments, in base64): a group whose state is larger is stored as having no
/// members, and its members join again after a restart or failover. With [`GROUPS_LIVE_MAX`]
/// groups, a compacted offsets log so holds at most 128 MiB of them.
pub const CLASSIC_GROUP_RECORD_BYTES_MAX: usize = 128 * 1024;
/// Session timeouts a classic member may ask for (Kafka's brokers allow 6 s to 30 min by
/// default; shorter ones are allowed here, as for Spool's groups, so tests need not wait).
pub const CLASSIC_SESSION_TIMEOUT_MS_MIN: i32 = 50;
pub const CLASSIC_SESSION_TIMEOUT_MS_MAX: i32 = 30 * 60 * 1000;
/// The longest a join phase, or the wait for every member's SyncGroup after it, lasts,
/// whatever rebalance timeout (`max.poll.interval.ms`) members give: some give
/// `i32::MAX` (Kafka Streams did), and a waiting JoinGroup holds its connection.
pub const CLASSIC_REBALANCE_TIMEOUT_MS_MAX: u64 = 30 * 60 * 1000;
/// How long the first join phase of a group without members lasts, extended by as much
/// while members keep joining, up to the rebalance timeout (Kafka's
/// `group.initial.rebalance.delay.ms` and its default): consumers started together then get
/// their assignment in one generation instead of a rebalance per arrival.
pub const CLASSIC_INITIAL_REBALANCE_DELAY_MS: u64 = 3000;
/// Bytes of the metadata string committed with one partition's offset (Kafka's
/// `offset.metadata.max.bytes` default).
pub const CLASSIC_COMMIT_METADATA_BYTES_MAX: usize = 4096;
/// Bytes of commit metadata one group may hold over all its partitions: a commit that would
/// pass it is refused (`OFFSET_METADATA_TOO_LARGE`).
pub const CLASSIC_GROUP_METADATA_BYTES_MAX: usize = 1024 * 1024;

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

/// Bytes one read takes while folding an internal log at start-up.
pub const INTERNAL_FOLD_READ_BYTES: u32 = 8 * 1024 * 1024;
/// Records, and bytes of keys and values, appended to an internal log as one batch at most:
/// far below the batch limits, whatever the records' sizes (a commit record is at most a few
/// hundred KiB).
pub const INTERNAL_GROUP_RECORDS_MAX: usize = 10_000;
pub const INTERNAL_GROUP_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Segment size of internal logs: small, as they hold small records.
pub const INTERNAL_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

const _: () = assert!(PARTITIONS_PER_TOPIC_MAX <= PARTITIONS_TOTAL_MAX);
const _: () = assert!(INTERNAL_FOLD_READ_BYTES >= BATCH_BYTES_MAX);
// A group of records, with its framing, fits in one batch.
const _: () = assert!(INTERNAL_GROUP_BYTES_MAX * 2 <= BATCH_BYTES_MAX as usize);
const _: () = assert!(INTERNAL_GROUP_RECORDS_MAX <= BATCH_RECORDS_MAX as usize);
const _: () = assert!(INTERNAL_SEGMENT_BYTES >= SEGMENT_BYTES_MIN);
const _: () = assert!(TOPIC_NAME_BYTES_MAX < 255, "a name must fit in one path component");
const _: () = assert!(GROUPS_LIVE_MAX <= GROUPS_KNOWN_MAX);
const _: () = assert!(PRODUCER_BATCHES_RETAINED >= 1);
const _: () = assert!(CLASSIC_SESSION_TIMEOUT_MS_MIN > 0);
const _: () = assert!(CLASSIC_SESSION_TIMEOUT_MS_MIN <= CLASSIC_SESSION_TIMEOUT_MS_MAX);
const _: () =
    assert!(CLASSIC_BYTES_MAX >= CLASSIC_MEMBER_METADATA_BYTES_MAX + CLASSIC_ASSIGNMENT_BYTES_MAX);
// A commit record, or a group's snapshot record, with all the metadata a group may hold
// still fits in an internal log's group of records (offsets take about 60 bytes each).
const _: () = assert!(
    CLASSIC_GROUP_METADATA_BYTES_MAX + COMMIT_OFFSETS_MAX * 100 <= INTERNAL_GROUP_BYTES_MAX
);
const _: () = assert!(CLASSIC_COMMIT_METADATA_BYTES_MAX <= CLASSIC_GROUP_METADATA_BYTES_MAX);
const _: () = assert!(PRODUCER_STATE_SCAN_BYTES >= BATCH_BYTES_MAX as u64);
// A snapshot of the largest state (every known group with a commit of the most offsets, about
// 60 bytes each) may be larger than the threshold: then the next compaction waits until the
// log doubles. The threshold must still hold a few batches.
const _: () = assert!(INTERNAL_LOG_COMPACT_BYTES >= 4 * BATCH_BYTES_MAX as u64);
