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
//! - On a node of a cluster a pass also reads this node's logs of the cluster's own groups
//!   (the metadata, the consumer groups' offsets), and a replica found damaged there is
//!   repaired from the others too (`cluster::repair`).
//!
//! Reads go through the page cache: a batch read from the cache was checked in memory, not
//! on the disk.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use spool_storage::{Offset, ReadError};
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

/// One pass over every partition (and the cluster's own logs, on a node of a cluster), at
/// most `rate` bytes a second (unbounded: `None`); returns how many logs it found damaged.
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
    if let Some(cluster) = topics.cluster() {
        let (read, found) = cluster.scrub_internal(rate, stop).await;
        bytes += read;
        damaged += found;
        if stop.is_cancelled() {
            return damaged;
        }
    }
    let took_ms = started.elapsed().as_millis() as u64;
    tracing::info!(partitions, bytes, damaged, took_ms, "a scrub pass read every partition");
    metrics::counter!(names::SCRUB_PASSES).increment(1);
    metrics::gauge!(names::SCRUB_DAMAGED_PARTITIONS).set(damaged as f64);
    damaged
}

/// What one read of a scrub found.
pub(crate) enum Scrubbed {
    /// Intact batches: how many bytes, and the offset after them.
    Read { bytes: u64, next: Offset },
    /// Nothing more to read (the log's visible end, or a log closed or deleted meanwhile).
    End,
    /// Retention deleted what was to be read next: the log now starts here.
    From(Offset),
    /// A damaged batch, reported (and on a cluster handed on to be repaired).
    Damaged,
}

impl Scrubbed {
    /// What `read`, asked for `offset`, found; damage is handed to `on_damage`.
    pub(crate) fn of(
        offset: Offset,
        read: Result<&spool_storage::ReadBatches, &ReadError>,
        on_damage: impl FnOnce(&ReadError),
    ) -> Scrubbed {
        match read {
            Ok(batches) if batches.bytes.is_empty() => Scrubbed::End,
            Ok(batches) => {
                Scrubbed::Read { bytes: batches.bytes.len() as u64, next: batches.next_offset }
            }
            Err(ReadError::OffsetOutOfRange { log_start, .. }) if offset < *log_start => {
                Scrubbed::From(*log_start)
            }
            Err(error @ ReadError::Damaged { .. }) => {
                on_damage(error);
                Scrubbed::Damaged
            }
            Err(_) => Scrubbed::End,
        }
    }
}

/// Reads a log from `offset` to its visible end with `read`, at most `rate` bytes a second:
/// the bytes read, and whether it met damage (which ends the read).
pub(crate) async fn read_through<F, R>(
    mut offset: Offset,
    rate: Option<u64>,
    stop: &CancellationToken,
    mut read: F,
) -> (u64, bool)
where
    F: FnMut(Offset) -> R,
    R: Future<Output = Scrubbed>,
{
    let mut total = 0;
    loop {
        match read(offset).await {
            Scrubbed::End => return (total, false),
            Scrubbed::Damaged => return (total, true),
            Scrubbed::From(start) => offset = start,
            Scrubbed::Read { bytes, next } => {
                total += bytes;
                metrics::counter!(names::SCRUB_BYTES).increment(bytes);
                offset = next;
                if let Some(rate) = rate {
                    let pause = Duration::from_secs_f64(bytes as f64 / rate as f64);
                    tokio::select! {
                        () = stop.cancelled() => return (total, false),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

impl Partition {
    /// Reads the partition's visible batches once (see the module docs): the bytes read, and
    /// whether it met damage.
    async fn scrub(self: &Arc<Self>, rate: Option<u64>, stop: &CancellationToken) -> (u64, bool) {
        let Ok(start) = self.with_log(|log| Ok(log.log_start_offset())) else {
            return (0, false); // closed, or deleted
        };
        let read = |offset| async move {
            let read = self.read_here(offset, SCRUB_READ_BYTES).await;
            match &read {
                Ok(batches) => Scrubbed::of(offset, Ok(batches), |_| {}),
                // Reported as it was read; on a cluster, repaired.
                Err(ServiceError::Read { source, .. }) => Scrubbed::of(offset, Err(source), |_| {
                    self.repair(&read);
                }),
                Err(_) => Scrubbed::End,
            }
        };
        read_through(start, rate, stop, read).await
    }
}
