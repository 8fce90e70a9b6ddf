//! Raft entries to stored batches and back.

use bytes::Bytes;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use serde::{Deserialize, Serialize};
use spool_storage::batch::{BatchError, BatchKind, BatchView, CheckedBatch, share_or_copy, v2};
use spool_storage::{Offset, TimestampMs};

use crate::{NodeId, TypeConfig};

/// The control type of a blank entry, the first a leader writes in its term (the number
/// Kafka's KRaft gives its leader-change record; the value is Spool's, empty).
pub const CONTROL_LEADER_CHANGE: u16 = 2;
/// The control type of a membership entry (the number KRaft gives its voters record; the
/// value is openraft's membership as JSON).
pub const CONTROL_MEMBERSHIP: u16 = 6;

/// Control batches' timestamp: the same on every replica.
const CONTROL_TIMESTAMP: TimestampMs = TimestampMs(0);

/// A normal entry's payload: one Kafka RecordBatch v2, as its producer sent it (on the
/// leader) or as the leader stored it (on a follower, with the offset the leader gave it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub kafka: Bytes,
    /// The offset of the batch's first record in the leader's log, once it has one: a
    /// follower's log must give it the same.
    pub base_offset: Option<u64>,
}

/// What applying an entry gives the proposer: the offsets of a normal entry's records
/// (`None` for entries without a producer's records).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub offsets: Option<(u64, u64)>,
}

/// Why an entry cannot be stored or read back.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("entry {index}'s batch is invalid: {source}")]
    Batch { index: u64, source: BatchError },
    #[error("entry {index}'s membership does not encode: {source}")]
    Membership { index: u64, source: serde_json::Error },
    #[error("stored entry {index} is a control batch of unknown type {control_type}")]
    UnknownControl { index: u64, control_type: u16 },
    #[error("stored entry {index} is a control batch without its one record")]
    BadControl { index: u64 },
}

/// The batch that stores `entry`.
pub(crate) fn to_batch(entry: &Entry<TypeConfig>) -> Result<CheckedBatch<Bytes>, EntryError> {
    let LogId { leader_id, index } = entry.log_id;
    let batch = match &entry.payload {
        EntryPayload::Normal(batch) => CheckedBatch::check(batch.kafka.clone())
            .map_err(|source| EntryError::Batch { index, source })?,
        EntryPayload::Blank => CheckedBatch::control(CONTROL_LEADER_CHANGE, b"", CONTROL_TIMESTAMP),
        EntryPayload::Membership(membership) => {
            let json = serde_json::to_vec(membership)
                .map_err(|source| EntryError::Membership { index, source })?;
            CheckedBatch::control(CONTROL_MEMBERSHIP, &json, CONTROL_TIMESTAMP)
        }
    };
    Ok(batch.with_entry(leader_id.term, index))
}

/// The base offset a follower's log must give `entry`, when the leader gave it one.
pub(crate) fn expected_offset(entry: &Entry<TypeConfig>) -> Option<Offset> {
    match &entry.payload {
        EntryPayload::Normal(batch) => batch.base_offset.map(Offset),
        _ => None,
    }
}

/// The entry a stored batch holds; `read` is the buffer the batch was read into, which a
/// normal entry's payload shares rather than copies.
pub(crate) fn from_batch(
    view: &BatchView<'_>,
    read: &Bytes,
) -> Result<Entry<TypeConfig>, EntryError> {
    let header = view.header();
    let stamp = header.entry;
    let index = stamp.index;
    let log_id = log_id(stamp.term, index);
    let bytes = view.as_bytes();
    let payload = match stamp.kind {
        BatchKind::Records => EntryPayload::Normal(Batch {
            kafka: share_or_copy(read, &bytes[v2::frame::BYTES..]),
            base_offset: Some(header.base_offset.0),
        }),
        BatchKind::Control => {
            let records = view.records();
            let mut records = records.iter();
            let record = match records.next() {
                Some(Ok(record)) => record,
                Some(Err(source)) => return Err(EntryError::Batch { index, source }),
                None => return Err(EntryError::BadControl { index }),
            };
            let key = record.key.filter(|key| key.len() == 4);
            let key = key.ok_or(EntryError::BadControl { index })?;
            let control_type = u16::from_be_bytes([key[2], key[3]]);
            let value = record.value.unwrap_or_default();
            match control_type {
                CONTROL_LEADER_CHANGE => EntryPayload::Blank,
                CONTROL_MEMBERSHIP => {
                    let membership: Membership<NodeId, openraft::BasicNode> =
                        serde_json::from_slice(value)
                            .map_err(|source| EntryError::Membership { index, source })?;
                    EntryPayload::Membership(membership)
                }
                control_type => return Err(EntryError::UnknownControl { index, control_type }),
            }
        }
    };
    Ok(Entry { log_id, payload })
}

pub(crate) fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, NodeId::default()), index)
}

/// The offsets of a normal entry's records: its base offset and the offset after it. The
/// batch was checked when it was read from the log; only its record count is read here.
pub(crate) fn offsets(batch: &Batch) -> Option<(u64, u64)> {
    let base = batch.base_offset?;
    let at = v2::kafka::RECORDS_COUNT;
    let count = u32::from_be_bytes(batch.kafka.get(at..at + 4)?.try_into().ok()?);
    Some((base, base + u64::from(count)))
}
