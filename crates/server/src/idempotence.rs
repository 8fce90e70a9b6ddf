//! Idempotent producers at run time: producer ids, and the sequence checks each partition's
//! writer makes before it appends (the rules are `spool_broker::producer`'s).
//!
//! - [`ProducerIds`] hands out ids that are never reused: a block of
//!   [`PRODUCER_ID_BLOCK`] ids is reserved durably in the internal log
//!   `internal/producer-ids` before any of it is handed out, so after a restart allocation
//!   continues past every block reserved before (unused ids of a block are skipped). Past
//!   the compaction threshold the log is rewritten as its one highest reservation.
//! - [`append_group`] is what the partition writer calls instead of `Log::append_many`: it
//!   decides each batch's [`Verdict`], appends only the batches to append, answers
//!   duplicates with the original offsets, and records what was appended.
//! - [`rebuild`] reads the stamps of the batches at the tail of a log at start-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use spool_broker::limits::{
    INTERNAL_LOG_COMPACT_BYTES, PRODUCER_ID_BLOCK, PRODUCER_STATE_SCAN_BYTES,
};
use spool_broker::producer::{ProducerTable, SequenceError, SequencedBatch, Verdict};
use spool_storage::batch::{BatchIter, CheckedBatch};
use spool_storage::{AppendError, Appended, Log, ReadError, TimestampMs};
use thiserror::Error;

use crate::error::ServiceError;
use crate::internal_log::{InternalLog, OpenInternalError};

/// Why a batch of a group was not appended.
#[derive(Debug, Error)]
pub(crate) enum Refused {
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Sequence(#[from] SequenceError),
}

/// The stamp and record count of a checked batch; `None` when it carries no stamp.
pub(crate) fn sequenced<B: AsRef<[u8]>>(batch: &CheckedBatch<B>) -> Option<SequencedBatch> {
    let header = batch.header();
    (header.producer.producer_id >= 0)
        .then_some(SequencedBatch { stamp: header.producer, record_count: header.record_count })
}

/// Appends a group of checked batches, checking idempotent producers' sequences first. One
/// result per batch, in order; a duplicate's result is the original's offsets.
///
/// The failures of `append_many` (a failed write, a full disk, a fence) fail every batch from
/// the failing one on, so a batch never lands after a refused predecessor of its producer.
pub(crate) fn append_group(
    log: &mut Log,
    table: &mut ProducerTable,
    batches: &[CheckedBatch<&[u8]>],
    now: TimestampMs,
) -> Vec<Result<Appended, Refused>> {
    let stamps: Vec<Option<SequencedBatch>> = batches.iter().map(sequenced).collect();
    if stamps.iter().all(Option::is_none) {
        // The common case: no idempotent producer in the group.
        return log
            .append_many(batches, now)
            .into_iter()
            .map(|r| r.map_err(Refused::from))
            .collect();
    }
    let verdicts = table.check_group(&stamps);
    let to_append: Vec<CheckedBatch<&[u8]>> = batches
        .iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| **verdict == Verdict::Append)
        .map(|(batch, _)| batch.clone())
        .collect();
    let mut appended = log.append_many(&to_append, now).into_iter();
    let mut results: Vec<Result<Appended, Refused>> = Vec::with_capacity(verdicts.len());
    for (index, verdict) in verdicts.into_iter().enumerate() {
        let result = match verdict {
            Verdict::Append => {
                let result = appended.next().expect("one result per appended batch");
                if let (Ok(done), Some(stamp)) = (&result, stamps[index]) {
                    table.record(stamp, done.base_offset, done.last_offset);
                }
                result.map_err(Refused::from)
            }
            Verdict::Duplicate { base_offset, last_offset } => {
                Ok(Appended { base_offset, last_offset, rolled: false })
            }
            Verdict::DuplicateInGroup { index: original } => match &results[original] {
                Ok(done) => Ok(Appended { rolled: false, ..*done }),
                Err(Refused::Append(error)) => Err(Refused::Append(error.clone())),
                Err(Refused::Sequence(error)) => Err(Refused::Sequence(*error)),
            },
            Verdict::Refuse(error) => Err(Refused::Sequence(error)),
        };
        results.push(result);
    }
    results
}

/// The producer table of `log`, from the stamps of the batches in its last
/// [`PRODUCER_STATE_SCAN_BYTES`] (whole segments; incomplete when that is not the whole log).
pub(crate) fn rebuild(log: &Log) -> Result<ProducerTable, ReadError> {
    let segments: Vec<_> = log.segments().collect();
    let mut start = segments.len();
    let mut bytes = 0u64;
    while start > 0 && bytes < PRODUCER_STATE_SCAN_BYTES {
        start -= 1;
        bytes += segments[start].size_bytes;
    }
    let mut table = ProducerTable::new();
    if start > 0 {
        table.mark_incomplete();
    }
    let mut offset = segments.get(start).map_or(log.log_start_offset(), |s| s.base_offset);
    let end = log.log_end_offset();
    while offset < end {
        let read = log.read(offset, crate::limits::PRODUCER_REBUILD_READ_BYTES)?;
        for batch in BatchIter::read_before(&read.bytes) {
            // Storage checked every batch when it was appended; one that no longer checks
            // is damage that readers report. The state is built from what does check.
            let Ok(batch) = batch else { break };
            let header = batch.header();
            if header.producer.producer_id >= 0 && header.base_offset >= offset {
                let stamp =
                    SequencedBatch { stamp: header.producer, record_count: header.record_count };
                table.record(stamp, header.base_offset, header.last_offset());
            }
        }
        if read.next_offset <= offset {
            break;
        }
        offset = read.next_offset;
    }
    Ok(table)
}

/// Allocates producer ids; see the module docs.
#[derive(Debug)]
pub(crate) struct ProducerIds {
    /// Ids below this were handed out (or skipped); the next one handed out is this one.
    next: AtomicI64,
    /// Ids below this are reserved durably. Taken while reserving a new block.
    reserved_end: tokio::sync::Mutex<i64>,
    /// The highest reservation queued to the log, raised before its record is queued: what a
    /// compaction keeps (one record), so it never drops a reservation already in the log.
    queued_end: Arc<AtomicI64>,
    log: InternalLog,
    /// On a node of a cluster, the cluster hands out ids instead (see
    /// `Cluster::allocate_producer_id`), so ids are unique across its nodes and every node
    /// knows every id handed out.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

#[derive(Debug, Error)]
pub enum ProducerIdError {
    #[error(
        "producer id {producer_id} was never allocated by this server: get one from InitProducer (gRPC) or InitProducerId (Kafka)"
    )]
    Unknown { producer_id: i64 },
}

impl ProducerIds {
    pub(crate) async fn open(data_dir: &std::path::Path) -> Result<ProducerIds, OpenInternalError> {
        ProducerIds::open_compacting_at(data_dir, INTERNAL_LOG_COMPACT_BYTES).await
    }

    /// [`ProducerIds::open`], compacting its log past `compact_bytes_min` (tests use small
    /// ones).
    async fn open_compacting_at(
        data_dir: &std::path::Path,
        compact_bytes_min: u64,
    ) -> Result<ProducerIds, OpenInternalError> {
        let reserved = Arc::new(AtomicI64::new(0));
        let folding = reserved.clone();
        let log = InternalLog::open_compacting_at(
            data_dir,
            "producer-ids",
            compact_bytes_min,
            move |value| {
                let end: [u8; 8] = value
                    .try_into()
                    .map_err(|_| format!("a reservation holds {} bytes, not 8", value.len()))?;
                folding.fetch_max(i64::from_le_bytes(end), Ordering::SeqCst);
                Ok(())
            },
        )
        .await?;
        // What the log folded to is also the highest reservation queued so far.
        let reserved_end = reserved.load(Ordering::SeqCst);
        let queued_end = reserved;
        let snapshot = queued_end.clone();
        log.compact_with(Box::new(move || {
            let end = snapshot.load(Ordering::SeqCst);
            Some(vec![(Vec::new(), end.to_le_bytes().to_vec())])
        }));
        Ok(ProducerIds {
            next: AtomicI64::new(reserved_end),
            reserved_end: tokio::sync::Mutex::new(reserved_end),
            queued_end,
            log,
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Hands out ids through `cluster` from now on.
    pub(crate) fn use_cluster(&self, cluster: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// A new id, never handed out before.
    pub(crate) async fn allocate(&self) -> Result<i64, ServiceError> {
        if let Some(cluster) = self.cluster.get() {
            return cluster.allocate_producer_id().await;
        }
        let mut reserved_end = self.reserved_end.lock().await;
        let id = self.next.load(Ordering::SeqCst);
        if id >= *reserved_end {
            let end = id + PRODUCER_ID_BLOCK as i64;
            self.queued_end.fetch_max(end, Ordering::SeqCst);
            self.log.append(Vec::new(), end.to_le_bytes().to_vec()).await?;
            *reserved_end = end;
        }
        self.next.store(id + 1, Ordering::SeqCst);
        Ok(id)
    }

    /// Checks that `producer_id` was handed out (by this run or an earlier one).
    pub(crate) async fn check(&self, producer_id: i64) -> Result<(), ProducerIdError> {
        if let Some(cluster) = self.cluster.get() {
            return cluster.check_producer_id(producer_id).await;
        }
        if (0..self.next.load(Ordering::SeqCst)).contains(&producer_id) {
            Ok(())
        } else {
            Err(ProducerIdError::Unknown { producer_id })
        }
    }

    pub(crate) async fn close(&self) -> Option<String> {
        self.log.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generations(data: &std::path::Path) -> Vec<String> {
        let base = data.join("internal").join("producer-ids");
        let mut names: Vec<String> = std::fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn reservations_compact_and_allocation_goes_on_past_them() {
        // One record of 81 bytes per block, compacted past 1 KiB: after the 13th block, then
        // every 12th. Stopping after each count from 13 to 40 blocks stops right after a
        // compaction too (when the log holds nothing but its snapshot), not only between.
        for blocks in 13..=40 {
            let data = tempfile::tempdir().unwrap();
            let ids = ProducerIds::open_compacting_at(data.path(), 1024).await.unwrap();
            let mut last = -1;
            for _ in 0..blocks * PRODUCER_ID_BLOCK {
                let id = ids.allocate().await.unwrap();
                assert_eq!(id, last + 1, "ids are handed out in order");
                last = id;
            }
            ids.close().await;
            let generations = generations(data.path());
            assert_eq!(generations.len(), 1, "one log left: {generations:?}");
            assert_ne!(generations, ["0"], "it was compacted after {blocks} blocks");

            // The log keeps the highest reservation: nothing handed out is handed out again,
            // and every id handed out is still known.
            let reopened = ProducerIds::open_compacting_at(data.path(), 1024).await.unwrap();
            reopened.check(last).await.unwrap();
            assert_eq!(reopened.allocate().await.unwrap(), last + 1, "after {blocks} blocks");
            reopened.close().await;
        }
    }
}
