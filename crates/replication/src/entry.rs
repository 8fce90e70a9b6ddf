//! Raft entries to stored batches and back.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership};
use serde::{Deserialize, Serialize};
use spool_storage::TimestampMs;
use spool_storage::batch::{BatchError, BatchKind, BatchView, CheckedBatch, share_or_copy, v2};
use tokio::sync::oneshot;

use crate::{NodeId, TypeConfig};

/// The control type of a blank entry, the first a leader writes in its term (the number
/// Kafka's KRaft gives its leader-change record; the value is Spool's, empty).
pub const CONTROL_LEADER_CHANGE: u16 = 2;
/// The control type of a membership entry (the number KRaft gives its voters record; the
/// value is openraft's membership as JSON).
pub const CONTROL_MEMBERSHIP: u16 = 6;

/// Control batches' timestamp: the same on every replica.
const CONTROL_TIMESTAMP: TimestampMs = TimestampMs(0);

/// A normal entry's payload: one or more Kafka RecordBatch v2, as their producers sent them
/// (on the leader) or as the leader stored them (on a follower, with the offset the leader
/// gave the first). A leader puts every batch queued for its partition into one entry (up to
/// [`crate::limits::ENTRY_KAFKA_BYTES_MAX`]), so one fsync on each replica covers them all;
/// the log stores them back to back with the same term and index, every one but the last
/// marked [`EntryStamp::more`](spool_storage::batch::EntryStamp::more), and their offsets
/// follow on from one another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub kafka: Vec<Bytes>,
    /// The offset of the first record in the leader's log, once it has one: a follower's log
    /// must give it the same.
    pub base_offset: Option<u64>,
    /// On the leader that proposed it: told the entry's offsets once its log has appended
    /// it, before the fsync (for `acks=leader`). It never leaves the leader's memory.
    #[serde(skip)]
    pub appended: Appended,
}

impl Batch {
    /// A normal entry's payload with nothing waiting for its append.
    pub fn new(kafka: Vec<Bytes>, base_offset: Option<u64>) -> Batch {
        Batch { kafka, base_offset, appended: Appended::default() }
    }
}

/// Who waits for an entry's append on its leader: told the offsets of its first record and
/// of the record after its last, once. Entries equal whoever waits.
#[derive(Debug, Clone, Default)]
pub struct Appended(Option<Arc<Mutex<Option<Offsets>>>>);

/// Where an entry's offsets are sent once, as `(first, after the last)`.
type Offsets = oneshot::Sender<(u64, u64)>;

impl Appended {
    /// One to tell, and what it tells.
    pub(crate) fn waiting() -> (Appended, oneshot::Receiver<(u64, u64)>) {
        let (tell, told) = oneshot::channel();
        (Appended(Some(Arc::new(Mutex::new(Some(tell))))), told)
    }

    /// Tells whoever waits (the first time only).
    pub(crate) fn tell(&self, offsets: (u64, u64)) {
        let Some(waiting) = &self.0 else { return };
        if let Some(tell) = waiting.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = tell.send(offsets);
        }
    }
}

impl PartialEq for Appended {
    fn eq(&self, _: &Appended) -> bool {
        true
    }
}

impl Eq for Appended {}

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
    #[error("entry {index} holds no batch")]
    Empty { index: u64 },
    #[error("stored entry {index} goes on past the batches read (its last has `more` set)")]
    Unfinished { index: u64 },
    #[error("stored entry {index} goes on in a batch of another entry or kind")]
    Interrupted { index: u64 },
}

/// The batches that store `entry`, in order.
pub(crate) fn to_batches(
    entry: &Entry<TypeConfig>,
) -> Result<Vec<CheckedBatch<Bytes>>, EntryError> {
    let LogId { leader_id, index } = entry.log_id;
    let batches = match &entry.payload {
        EntryPayload::Normal(batch) => {
            let mut batches = Vec::with_capacity(batch.kafka.len());
            for (i, kafka) in batch.kafka.iter().enumerate() {
                // Checked whole where it arrived: by the produce path on a leader (or the
                // peer listener, for a batch a follower passed on), on a follower by the
                // peer listener.
                let checked = CheckedBatch::checked_before(kafka.clone())
                    .map_err(|source| EntryError::Batch { index, source })?
                    .with_entry(leader_id.term, index);
                let more = i + 1 < batch.kafka.len();
                batches.push(if more { checked.with_more() } else { checked });
            }
            if batches.is_empty() {
                return Err(EntryError::Empty { index });
            }
            batches
        }
        EntryPayload::Blank => vec![
            CheckedBatch::control(CONTROL_LEADER_CHANGE, b"", CONTROL_TIMESTAMP)
                .with_entry(leader_id.term, index),
        ],
        EntryPayload::Membership(membership) => {
            let json = serde_json::to_vec(membership)
                .map_err(|source| EntryError::Membership { index, source })?;
            vec![
                CheckedBatch::control(CONTROL_MEMBERSHIP, &json, CONTROL_TIMESTAMP)
                    .with_entry(leader_id.term, index),
            ]
        }
    };
    Ok(batches)
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
        BatchKind::Records => EntryPayload::Normal(Batch::new(
            vec![share_or_copy(read, &bytes[v2::frame::BYTES..])],
            Some(header.base_offset.0),
        )),
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

/// Gathers the stored batches of entries, read in order: a batch marked
/// [`EntryStamp::more`](spool_storage::batch::EntryStamp::more) is followed by the rest of its
/// entry, which [`Gather::push`] adds to it.
#[derive(Default)]
pub(crate) struct Gather {
    /// An entry whose last batch read so far said more follow.
    open: Option<Entry<TypeConfig>>,
}

impl Gather {
    /// Takes the next stored batch; returns the entry it ends, if it ends one.
    pub(crate) fn push(
        &mut self,
        view: &BatchView<'_>,
        read: &Bytes,
    ) -> Result<Option<Entry<TypeConfig>>, EntryError> {
        let stamp = view.header().entry;
        let entry = match self.open.take() {
            None => from_batch(view, read)?,
            Some(mut open) => {
                let EntryPayload::Normal(batch) = &mut open.payload else {
                    unreachable!("only a normal entry is left open")
                };
                if stamp.index != open.log_id.index || stamp.kind != BatchKind::Records {
                    return Err(EntryError::Interrupted { index: open.log_id.index });
                }
                batch.kafka.push(share_or_copy(read, &view.as_bytes()[v2::frame::BYTES..]));
                open
            }
        };
        if stamp.more {
            if !matches!(entry.payload, EntryPayload::Normal(_)) {
                return Err(EntryError::Interrupted { index: stamp.index });
            }
            self.open = Some(entry);
            return Ok(None);
        }
        Ok(Some(entry))
    }

    /// Ends the reading: an error if the last entry was left unfinished.
    pub(crate) fn finish(self) -> Result<(), EntryError> {
        match self.open {
            Some(open) => Err(EntryError::Unfinished { index: open.log_id.index }),
            None => Ok(()),
        }
    }
}

/// The record count of a checked Kafka batch.
pub(crate) fn record_count(kafka: &[u8]) -> Option<u64> {
    let at = v2::kafka::RECORDS_COUNT;
    Some(u64::from(u32::from_be_bytes(kafka.get(at..at + 4)?.try_into().ok()?)))
}

/// The offsets of a normal entry's records: its base offset and the offset after its last.
/// Its batches were checked when they were read from the log; only their record counts are
/// read here.
pub(crate) fn offsets(batch: &Batch) -> Option<(u64, u64)> {
    let base = batch.base_offset?;
    let mut next = base;
    for kafka in &batch.kafka {
        next += record_count(kafka)?;
    }
    Some((base, next))
}

/// Each batch's offsets (its first, and the one after its last) in an entry whose first
/// record is at `base`, from the batches' record counts in order.
pub(crate) fn batch_offsets(
    base: u64,
    records: impl IntoIterator<Item = u64>,
) -> impl Iterator<Item = (u64, u64)> {
    records.into_iter().scan(base, |next, records| {
        let first = *next;
        *next += records;
        Some((first, *next))
    })
}
