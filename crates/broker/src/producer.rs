//! Idempotent producing: the per-partition state that lets a partition's writer append a
//! retried batch only once, and refuse a batch that would leave a hole in a producer's
//! sequence.
//!
//! A batch from an idempotent producer carries a [`ProducerStamp`]: the producer's id, its
//! epoch, and the sequence number of its first record in this partition (the first batch a
//! producer sends to a partition starts at 0; each batch starts where the previous one ended).
//! Before a group of batches is appended, [`ProducerTable::check_group`] gives each one a
//! [`Verdict`]:
//!
//! | batch's epoch and base sequence, against the producer's state      | verdict                  |
//! |---------------------------------------------------------------------|--------------------------|
//! | no stamp (`producer_id` -1)                                         | append                   |
//! | producer unknown here, sequence 0 (or the table is incomplete)       | append                   |
//! | producer unknown here, sequence > 0                                  | refuse: out of order     |
//! | epoch older than the producer's                                      | refuse: stale epoch      |
//! | epoch newer, sequence 0                                              | append (sequence restarts) |
//! | epoch newer, sequence > 0                                            | refuse: out of order     |
//! | same epoch, sequence = next expected                                 | append                   |
//! | same epoch, sequence > next expected (a gap)                         | refuse: out of order     |
//! | same epoch, same sequence and record count as a retained batch        | duplicate: its offsets   |
//! | same epoch, sequence < next expected, not retained                    | refuse: old duplicate    |
//!
//! Earlier batches of the same group count: a retry of a batch that is in the same group is a
//! duplicate of it. Only after the appends succeed does the writer [`ProducerTable::record`]
//! them, so a batch that failed to append leaves no trace.
//!
//! The table is rebuilt at start-up from the stamps of the batches at the tail of the log
//! (the last [`PRODUCER_STATE_SCAN_BYTES`](crate::limits::PRODUCER_STATE_SCAN_BYTES)). When
//! that tail is not the whole log, or a producer was forgotten to stay within
//! [`PRODUCERS_PER_PARTITION_MAX`], the table is *incomplete*: a producer it does not know
//! may then continue at any sequence (its state may simply have been dropped).

use std::collections::{HashMap, VecDeque};

use spool_storage::Offset;
use spool_storage::batch::ProducerStamp;
use thiserror::Error;

use crate::limits::{PRODUCER_BATCHES_RETAINED, PRODUCERS_PER_PARTITION_MAX};

/// An idempotent batch about to be appended: its stamp and how many records it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequencedBatch {
    pub stamp: ProducerStamp,
    pub record_count: u32,
}

impl SequencedBatch {
    /// The sequence number after the batch's last record, or `None` past `i32::MAX`.
    fn next_sequence(&self) -> Option<i32> {
        i32::try_from(i64::from(self.stamp.base_sequence) + i64::from(self.record_count)).ok()
    }
}

/// What to do with one batch of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// A retry of a batch already in the log: answer with its offsets, append nothing.
    Duplicate { base_offset: Offset, last_offset: Offset },
    /// A retry of the batch at this index earlier in the same group: answer with its result.
    DuplicateInGroup { index: usize },
    /// Refuse it.
    Refuse(SequenceError),
}

/// Why a batch from an idempotent producer is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SequenceError {
    #[error(
        "producer {producer_id} epoch {epoch} sent sequence {found}, but this partition expects {expected}: batches in between were lost; start over with a new producer id, or epoch {next_epoch} from sequence 0",
        next_epoch = i32::from(*epoch) + 1
    )]
    OutOfOrder { producer_id: i64, epoch: i16, expected: i32, found: i32 },
    #[error(
        "producer {producer_id} epoch {epoch} is fenced: this partition has seen epoch {current_epoch}"
    )]
    StaleEpoch { producer_id: i64, epoch: i16, current_epoch: i16 },
    #[error(
        "producer {producer_id} epoch {epoch} sequence {base_sequence} was appended long ago (this partition expects {expected} next): too old to report its offsets"
    )]
    OldDuplicate { producer_id: i64, epoch: i16, base_sequence: i32, expected: i32 },
    #[error(
        "producer {producer_id} sequence {base_sequence} + {record_count} records passes the largest sequence number: start over with a new producer id"
    )]
    SequenceOverflow { producer_id: i64, base_sequence: i32, record_count: u32 },
    #[error(
        "producer id {producer_id}, epoch {epoch} and base sequence {base_sequence}: the epoch and sequence must not be negative"
    )]
    BadStamp { producer_id: i64, epoch: i16, base_sequence: i32 },
}

/// A batch appended recently, kept to answer its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retained {
    base_sequence: i32,
    record_count: u32,
    base_offset: Offset,
    last_offset: Offset,
}

#[derive(Debug, Clone)]
struct ProducerState {
    epoch: i16,
    next_sequence: i32,
    /// Oldest first, at most [`PRODUCER_BATCHES_RETAINED`].
    retained: VecDeque<Retained>,
    /// The offset of its latest batch: the least recent is forgotten first.
    last_offset: Offset,
}

/// One partition's idempotent producers.
#[derive(Debug, Default)]
pub struct ProducerTable {
    producers: HashMap<i64, ProducerState>,
    incomplete: bool,
}

/// What a producer looks like while a group is checked: its state, with the group's accepted
/// batches applied.
#[derive(Debug, Clone, Copy)]
struct Expecting {
    epoch: i16,
    next_sequence: i32,
}

impl ProducerTable {
    /// An empty table that knows every producer of its partition (a new, empty log).
    pub fn new() -> ProducerTable {
        ProducerTable::default()
    }

    /// Marks the table as not knowing every producer (the rebuild did not see the whole log).
    pub fn mark_incomplete(&mut self) {
        self.incomplete = true;
    }

    pub fn is_incomplete(&self) -> bool {
        self.incomplete
    }

    /// Producers tracked.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides, in order, what to do with each batch of a group; `None` is a batch without a
    /// producer stamp. Changes nothing: see [`ProducerTable::record`].
    pub fn check_group(&self, batches: &[Option<SequencedBatch>]) -> Vec<Verdict> {
        let mut pending: HashMap<i64, (Expecting, Vec<(usize, SequencedBatch)>)> = HashMap::new();
        let mut verdicts = Vec::with_capacity(batches.len());
        for (index, batch) in batches.iter().enumerate() {
            let Some(batch) = batch else {
                verdicts.push(Verdict::Append);
                continue;
            };
            let id = batch.stamp.producer_id;
            let (expecting, in_group) = match pending.get(&id) {
                Some((expecting, in_group)) => (Some(*expecting), in_group.as_slice()),
                None => (self.expecting(id), &[][..]),
            };
            let verdict = self.check(batch, expecting, in_group);
            if verdict == Verdict::Append {
                let next_sequence = batch.next_sequence().expect("checked for overflow");
                let entry = pending.entry(id).or_insert_with(|| {
                    (Expecting { epoch: batch.stamp.producer_epoch, next_sequence }, Vec::new())
                });
                entry.0 = Expecting { epoch: batch.stamp.producer_epoch, next_sequence };
                entry.1.push((index, *batch));
            }
            verdicts.push(verdict);
        }
        verdicts
    }

    fn expecting(&self, producer_id: i64) -> Option<Expecting> {
        self.producers
            .get(&producer_id)
            .map(|state| Expecting { epoch: state.epoch, next_sequence: state.next_sequence })
    }

    fn check(
        &self,
        batch: &SequencedBatch,
        expecting: Option<Expecting>,
        in_group: &[(usize, SequencedBatch)],
    ) -> Verdict {
        let ProducerStamp { producer_id, producer_epoch: epoch, base_sequence } = batch.stamp;
        if epoch < 0 || base_sequence < 0 {
            return Verdict::Refuse(SequenceError::BadStamp { producer_id, epoch, base_sequence });
        }
        if batch.next_sequence().is_none() {
            return Verdict::Refuse(SequenceError::SequenceOverflow {
                producer_id,
                base_sequence,
                record_count: batch.record_count,
            });
        }
        let out_of_order = |expected| {
            Verdict::Refuse(SequenceError::OutOfOrder {
                producer_id,
                epoch,
                expected,
                found: base_sequence,
            })
        };
        let Some(expecting) = expecting else {
            return if base_sequence == 0 || self.incomplete {
                Verdict::Append
            } else {
                out_of_order(0)
            };
        };
        if epoch < expecting.epoch {
            return Verdict::Refuse(SequenceError::StaleEpoch {
                producer_id,
                epoch,
                current_epoch: expecting.epoch,
            });
        }
        if epoch > expecting.epoch {
            return if base_sequence == 0 { Verdict::Append } else { out_of_order(0) };
        }
        if base_sequence == expecting.next_sequence {
            return Verdict::Append;
        }
        if base_sequence > expecting.next_sequence {
            return out_of_order(expecting.next_sequence);
        }
        let same =
            |sequence: i32, count: u32| sequence == base_sequence && count == batch.record_count;
        if let Some((index, _)) = in_group.iter().find(|(_, b)| {
            b.stamp.producer_epoch == epoch && same(b.stamp.base_sequence, b.record_count)
        }) {
            return Verdict::DuplicateInGroup { index: *index };
        }
        let retained = self.producers.get(&producer_id).filter(|state| state.epoch == epoch);
        if let Some(found) = retained
            .into_iter()
            .flat_map(|state| state.retained.iter())
            .find(|r| same(r.base_sequence, r.record_count))
        {
            return Verdict::Duplicate {
                base_offset: found.base_offset,
                last_offset: found.last_offset,
            };
        }
        Verdict::Refuse(SequenceError::OldDuplicate {
            producer_id,
            epoch,
            base_sequence,
            expected: expecting.next_sequence,
        })
    }

    /// Records a batch that was appended at `base_offset..=last_offset`. Called in log order,
    /// both by the writer after an append and by the rebuild at start-up.
    pub fn record(&mut self, batch: SequencedBatch, base_offset: Offset, last_offset: Offset) {
        let ProducerStamp { producer_id, producer_epoch, base_sequence } = batch.stamp;
        let Some(next_sequence) = batch.next_sequence() else {
            // Only a batch the checks refused could overflow; a log holding one was not
            // written by this server. It cannot be continued, so it is not tracked.
            return;
        };
        if !self.producers.contains_key(&producer_id)
            && self.producers.len() >= PRODUCERS_PER_PARTITION_MAX
        {
            self.forget_least_recent();
        }
        let state = self.producers.entry(producer_id).or_insert_with(|| ProducerState {
            epoch: producer_epoch,
            next_sequence,
            retained: VecDeque::with_capacity(PRODUCER_BATCHES_RETAINED),
            last_offset,
        });
        if producer_epoch != state.epoch {
            state.retained.clear();
        }
        state.epoch = producer_epoch;
        state.next_sequence = next_sequence;
        state.last_offset = last_offset;
        if state.retained.len() == PRODUCER_BATCHES_RETAINED {
            state.retained.pop_front();
        }
        state.retained.push_back(Retained {
            base_sequence,
            record_count: batch.record_count,
            base_offset,
            last_offset,
        });
    }

    fn forget_least_recent(&mut self) {
        let oldest =
            self.producers.iter().min_by_key(|(_, state)| state.last_offset).map(|(id, _)| *id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
            self.incomplete = true;
        }
    }
}

#[cfg(test)]
mod tests;
