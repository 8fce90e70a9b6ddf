//! Scrubbing: every partition's stored batches are read again in the background, each
//! checked as a read checks it (length, CRC, offsets following on), so that damage no
//! reader meets is found too.
//!
//! - A pass reads each partition of this node from its log start to its visible end, at
//!   most [`SCRUB_BYTES_PER_SECOND`], and the next starts [`SCRUB_PASS_INTERVAL`] after it
//!   ended. The first waits that long after the start too: recovery has just checked what
//!   a crash may have left unsynced.
//! - What a pass finds is handled as a read's damage is: a warning and the
//!   `spool_damaged_batches_total` counter. The scrub's own series count the bytes it
//!   checked and its passes, and say how many partitions the last pass found damaged. On a
//!   node of a cluster the partition's replica is then repaired from the others (see
//!   `Partition::read`); on a single node the partition's pass ends there, and `spool verify`
//!   says what is lost past it.
//! - The cluster's own logs (metadata, group offsets) are not scrubbed.
//!
//! Reads go through the page cache: a batch read from the cache was checked in memory, not
//! on the disk.

use std::sync::Arc;
use std::time::Duration;

use spool_storage::ReadError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Partition;
use crate::error::ServiceError;
use crate::limits::{SCRUB_BYTES_PER_SECOND, SCRUB_PASS_INTERVAL, SCRUB_READ_BYTES};
use crate::metrics::names;
use crate::topic_table::TopicTable;

/// Scrubs every partition, a pass every [`SCRUB_PASS_INTERVAL`], until `stop`.
pub(crate) async fn run(topics: Arc<TopicTable>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SCRUB_PASS_INTERVAL) => {}
        }
        pass(&topics, Some(SCRUB_BYTES_PER_SECOND), &stop).await;
    }
}

/// One pass over every partition, at most `rate` bytes a second (unbounded: `None`);
/// returns how many partitions it found damaged.
pub(crate) async fn pass(
    topics: &TopicTable,
    rate: Option<u64>,
    stop: &CancellationToken,
) -> usize {
    let started = Instant::now();
    let (mut partitions, mut bytes, mut damaged) = (0, 0, 0);
    for topic in topics.topics() {
        for partition in &topic.partitions {
            let (read, found) = partition.scrub(rate, stop).await;
            partitions += 1;
            bytes += read;
            damaged += usize::from(found);
            if stop.is_cancelled() {
                return damaged;
            }
        }
    }
    let took_ms = started.elapsed().as_millis() as u64;
    tracing::info!(partitions, bytes, damaged, took_ms, "a scrub pass read every partition");
    metrics::counter!(names::SCRUB_PASSES).increment(1);
    metrics::gauge!(names::SCRUB_DAMAGED_PARTITIONS).set(damaged as f64);
    damaged
}

impl Partition {
    /// Reads the partition's visible batches once (see the module docs): the bytes read, and
    /// whether it met damage.
    async fn scrub(self: &Arc<Self>, rate: Option<u64>, stop: &CancellationToken) -> (u64, bool) {
        let Ok(mut offset) = self.with_log(|log| Ok(log.log_start_offset())) else {
            return (0, false); // closed, or deleted
        };
        let mut bytes = 0;
        loop {
            let read = self.read_here(offset, SCRUB_READ_BYTES).await;
            match &read {
                Ok(batches) if batches.bytes.is_empty() => return (bytes, false),
                Ok(batches) => {
                    let length = batches.bytes.len() as u64;
                    bytes += length;
                    metrics::counter!(names::SCRUB_BYTES).increment(length);
                    offset = batches.next_offset;
                    if let Some(rate) = rate {
                        let pause = Duration::from_secs_f64(length as f64 / rate as f64);
                        tokio::select! {
                            () = stop.cancelled() => return (bytes, false),
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
                // Retention deleted what was to be read next.
                Err(ServiceError::Read {
                    source: ReadError::OffsetOutOfRange { log_start, .. },
                    ..
                }) if offset < *log_start => offset = *log_start,
                Err(ServiceError::Read { source: ReadError::Damaged { .. }, .. }) => {
                    // Reported as it was read; on a cluster, repaired.
                    self.repair(&read);
                    return (bytes, true);
                }
                Err(_) => return (bytes, false),
            }
        }
    }
}
