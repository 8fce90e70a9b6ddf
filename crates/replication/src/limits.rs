//! Every bound this crate enforces, in one place.

use std::time::Duration;

use spool_storage::batch::STORED_BATCH_BYTES_MAX;
use spool_storage::limits::BATCH_BYTES_MAX;

/// The most entries one AppendEntries message carries (openraft's `max_payload_entries`).
pub const ENTRIES_PER_MESSAGE_MAX: u64 = 8;

/// The most Kafka bytes a leader puts in one entry: every batch queued for a partition
/// while its earlier entries are in Raft goes into the next entry, up to this (a batch
/// larger on its own goes alone). An entry's payload so stays within one batch's bound,
/// which [`MESSAGE_BYTES_MAX`] allows for.
pub const ENTRY_KAFKA_BYTES_MAX: usize = BATCH_BYTES_MAX as usize;

/// The most batches in one entry.
pub const ENTRY_BATCHES_MAX: usize = 4096;

/// Entries a leader has in Raft at once for one partition (proposed, not yet applied). One:
/// openraft 0.9 appends and fsyncs inside its core loop, so a second entry in flight
/// overlaps nothing and only splits what waits into smaller entries, each fsynced on every
/// replica (docs/cluster.md has the figures).
pub const PROPOSALS_IN_FLIGHT: usize = 1;

/// Kibibytes of batches a replica holds queued for proposal or in Raft; a proposal past it
/// waits for room.
pub const PROPOSALS_QUEUED_KIB_MAX: u32 = 64 * 1024;

/// The most bytes of entries one AppendEntries carries: as many entries as fit (at most
/// [`ENTRIES_PER_MESSAGE_MAX`]), or one entry alone. A follower writes and fsyncs a message
/// before it answers, and openraft gives the answer one heartbeat interval: a follower
/// catching up gets its entries a few MiB at a time, not tens of MiB it could not write in
/// time. Two full entries: a follower that keeps up gets one at a time (the most a leader has
/// in Raft at once, [`PROPOSALS_IN_FLIGHT`]), one catching up two per write and fsync.
pub const APPEND_ENTRIES_BYTES_MAX: usize = 2 * (ENTRY_KAFKA_BYTES_MAX + ENTRY_HEAD_BYTES);

/// The largest message between replicas: an AppendEntries as large as
/// [`APPEND_ENTRIES_BYTES_MAX`] or of one entry of the largest batch, with room for its
/// header.
pub const MESSAGE_BYTES_MAX: usize =
    max(APPEND_ENTRIES_BYTES_MAX, STORED_BATCH_BYTES_MAX as usize + ENTRY_HEAD_BYTES)
        + HEADER_BYTES_MAX;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// The largest JSON header of a message (votes, log ids, membership, snapshot metadata).
pub const HEADER_BYTES_MAX: usize = 1024 * 1024;

/// The most snapshot bytes one InstallSnapshot message carries (openraft's
/// `snapshot_max_chunk_size`), raw after its header: a 64 MiB offsets snapshot travels in
/// 64 messages.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;

/// Bytes an entry's encoding adds to its payload (kind, term, index, offset, length).
pub const ENTRY_HEAD_BYTES: usize = 1 + 8 + 8 + 8 + 4;

/// Entries a replica applies between two saves of its applied state (`applied.json`): at a
/// restart, what was applied before the last save is not applied again, and readers see it
/// at once.
pub const APPLIED_SAVE_EVERY: u64 = 256;

/// The most an `applied.json` may hold (a log id, a membership and an offset).
pub const APPLIED_FILE_BYTES_MAX: u64 = 64 * 1024;

/// The most a folding state machine's saved snapshot (`snapshot.bin`: the applied state and
/// its owner's folded state, such as every group's committed offsets) may hold.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// How often a leader sends heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// A follower that hears nothing from a leader for a random time in this range stands for
/// election. Far above the heartbeat interval, so a loaded two-core machine does not elect
/// on every pause.
///
/// openraft adds a leader lease of `ELECTION_TIMEOUT_MAX` before it: a follower that heard a
/// heartbeat refuses votes for the lease, and stands for election only after the lease plus
/// its own timeout. A dead leader is so replaced 1.5-2 s after its last heartbeat.
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(500);
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(ELECTION_TIMEOUT_MAX_MS);
const ELECTION_TIMEOUT_MAX_MS: u64 = 1_000;

/// A leader hands its group over ([`crate::Replica::hand_over`]) only once it has led for
/// this long: openraft's lease on the leader's own vote runs `ELECTION_TIMEOUT_MAX` from its
/// election, and until it ends the leader refuses the vote the hand-over needs.
pub const HAND_OVER_LED_MIN: Duration = Duration::from_millis(2 * ELECTION_TIMEOUT_MAX_MS);

/// The most entries the node a leader hands over to may be behind when the hand-over starts:
/// further behind, it is not tried.
pub const HAND_OVER_LAG_MAX: u64 = 4;

/// How long a leader holds new proposals back while the node it hands over to catches up
/// with its last entry, and then again while that node's election runs: past either, the
/// hand-over gives up and the proposals go on.
pub const HAND_OVER_WAIT_MAX: Duration = Duration::from_millis(500);

/// The longest a leader asked to hand its group back ([`crate::Replica::hand_back_now`])
/// takes: waiting out its lease, then the hand-over itself.
pub const HAND_BACK_TIMEOUT_MAX: Duration = Duration::from_secs(60);

const _: () = assert!(ELECTION_TIMEOUT_MIN.as_millis() >= 5 * HEARTBEAT_INTERVAL.as_millis());
const _: () = assert!(ELECTION_TIMEOUT_MAX.as_millis() > ELECTION_TIMEOUT_MIN.as_millis());

const _: () = assert!(SNAPSHOT_CHUNK_BYTES as usize + HEADER_BYTES_MAX <= MESSAGE_BYTES_MAX);

const _: () = assert!(ENTRY_KAFKA_BYTES_MAX <= STORED_BATCH_BYTES_MAX as usize);
const _: () = assert!(PROPOSALS_QUEUED_KIB_MAX as usize * 1024 >= ENTRY_KAFKA_BYTES_MAX);

/// How long a node that holds no replica of a group waits before it asks again who leads,
/// while an election is on (see `Remote`).
pub const REMOTE_LEADER_RETRY: Duration = Duration::from_millis(50);
/// The most bytes of batches a node asks of a replica in one read for its clients (see
/// `Remote::read`); one batch larger than it still comes whole.
pub const PEER_READ_BYTES_MAX: u32 = 8 * 1024 * 1024;
/// The longest a replica waits for more records before it answers such a read.
pub const PEER_READ_WAIT_MAX: Duration = Duration::from_secs(1);

/// The most bytes of entries one replica keeps in memory after appending them (see
/// `Recent`): Raft reads each entry back right after it is written, the leader to send it
/// and every replica to apply it. Two full entries: the one in Raft and the one before it.
pub const RECENT_ENTRIES_BYTES_MAX: usize = 2 * ENTRY_KAFKA_BYTES_MAX;

/// The most bytes of recent entries the whole process keeps over all its replicas: a replica
/// that would go past it keeps none, and Raft reads its entries from its log.
pub const RECENT_ENTRIES_PROCESS_BYTES_MAX: usize = 64 * 1024 * 1024;
