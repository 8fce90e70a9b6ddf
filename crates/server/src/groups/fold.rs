//! [`OffsetsFold`]: a cluster's committed consumer offsets, folded from the offsets group's
//! log as its replica applies it, so that the log can be compacted behind a snapshot that
//! holds them (see `spool_replication::Fold`).

use std::sync::{Mutex, MutexGuard, PoisonError};

use spool_broker::group::{CommittedOffsets, OffsetsRecord};
use spool_storage::Offset;
use spool_storage::batch::BatchView;
use tokio::sync::watch;

/// Every group's committed offsets as the offsets group's log holds them up to `next`.
#[derive(Debug, Default)]
pub(crate) struct OffsetsFold {
    state: Mutex<(CommittedOffsets, Offset)>,
    /// Bumped each time a snapshot replaced the state (this replica was too far behind the
    /// leader's compacted log): the consumer groups take it whole.
    installed: watch::Sender<u64>,
}

impl OffsetsFold {
    fn lock(&self) -> MutexGuard<'_, (CommittedOffsets, Offset)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The committed offsets, and the offset after the last record folded into them.
    pub(crate) fn state(&self) -> (CommittedOffsets, Offset) {
        self.lock().clone()
    }

    /// Marked changed whenever a snapshot replaced the state.
    pub(crate) fn installs(&self) -> watch::Receiver<u64> {
        self.installed.subscribe()
    }
}

impl spool_replication::Fold for OffsetsFold {
    fn apply(&self, kafka: &[u8], _base: Offset, next: Offset) {
        let mut state = self.lock();
        match BatchView::new(kafka) {
            Ok(view) => {
                for record in view.records().iter() {
                    let decoded = record.map_err(|error| error.to_string()).and_then(|record| {
                        OffsetsRecord::decode(record.value.unwrap_or_default())
                            .map_err(|error| error.to_string())
                    });
                    match decoded {
                        Ok(record) => state.0.apply_record(&record),
                        Err(error) => {
                            tracing::error!(%error, "a replicated consumer group offsets record does not decode; skipped");
                        }
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "a replicated consumer group offsets batch does not decode; skipped");
            }
        }
        state.1 = next;
    }

    /// One record per group (its committed offsets), and one per Kafka group stored with
    /// members (`CommittedOffsets::records`), each as a 4-byte big-endian length
    /// and the record as the offsets log stores it.
    fn snapshot(&self) -> Vec<u8> {
        let state = self.lock();
        let mut bytes = Vec::new();
        for record in state.0.records() {
            let encoded = record.encode();
            bytes.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&encoded);
        }
        bytes
    }

    fn install(&self, snapshot: &[u8], next: Offset) -> Result<(), String> {
        let mut committed = CommittedOffsets::default();
        let mut rest = snapshot;
        while !rest.is_empty() {
            let (length, after) = rest
                .split_first_chunk::<4>()
                .ok_or("a snapshot of committed offsets ends inside a record's length")?;
            let length = u32::from_be_bytes(*length) as usize;
            if after.len() < length {
                return Err("a snapshot of committed offsets ends inside a record".to_owned());
            }
            let (record, after) = after.split_at(length);
            let record = OffsetsRecord::decode(record).map_err(|error| error.to_string())?;
            committed.apply_record(&record);
            rest = after;
        }
        *self.lock() = (committed, next);
        self.installed.send_modify(|installs| *installs += 1);
        Ok(())
    }

    fn reset(&self) {
        *self.lock() = Default::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_broker::group::CommitRecord;
    use spool_replication::Fold;

    #[test]
    fn a_snapshot_installs_the_same_offsets() {
        let fold = OffsetsFold::default();
        let record = |group: &str, offset: u64| {
            let partition = spool_broker::group::TopicPartition {
                topic: spool_broker::TopicName::parse("orders").unwrap(),
                partition: 0,
            };
            CommitRecord {
                group: spool_broker::group::GroupName::parse(group).unwrap(),
                offsets: vec![(partition, Offset(offset))],
                metadata: Default::default(),
            }
        };
        let mut builder = spool_storage::batch::BatchBuilder::new(bytes::BytesMut::new());
        for record in [record("a", 5), record("b", 7), record("a", 9)] {
            let value = record.encode();
            builder.push(spool_storage::TimestampMs(0), None, Some(&value), &[]);
        }
        let batch = builder.finish(spool_storage::batch::ProducerStamp::NONE);
        fold.apply(&batch, Offset(0), Offset(3));
        let copy = OffsetsFold::default();
        let installs = copy.installs();
        copy.install(&fold.snapshot(), Offset(3)).unwrap();
        assert!(installs.has_changed().unwrap());
        assert_eq!(copy.state(), fold.state());
        let groups: Vec<_> = copy.state().0.snapshot().map(|r| r.group.to_string()).collect();
        assert_eq!(groups, ["a", "b"]);
        assert!(copy.install(&[0, 0, 0, 9, 1], Offset(0)).is_err());
    }
}
