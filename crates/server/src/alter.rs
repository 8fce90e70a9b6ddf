//! Changing a live topic's settings (fsync policy, retention, segment size, compression,
//! partition count) without a restart. New partitions are new logs, started beside the
//! others (see `topic_table`). Compression is read by each produce request, so it needs nothing below;
//! the other settings are the log's.
//!
//! Storage fixes a log's [`LogConfig`] when it opens, so a partition's writer applies new
//! settings by reopening its log, between two group commits:
//!
//! 1. the writer syncs, answering every producer waiting for a sync under the old policy;
//! 2. under the log's write lock (readers wait, nothing appends: the writer is busy here), it
//!    closes the log cleanly, which writes `clean-shutdown`;
//! 3. it opens the same directory with the new settings: after a clean close nothing is
//!    scanned, so this costs a few file opens and maps;
//! 4. it applies retention at once, so a shorter retention takes effect now rather than at
//!    the next periodic check.
//!
//! If the log fails to open with the new settings (for example no space to grow the active
//! segment's preallocated index files for a larger segment size), it is opened again with the
//! old ones and the alter fails. If that fails too, the partition has lost its log until the
//! server restarts: its writer stops, and producers and readers are told the partition is
//! unavailable. A `Log::set_config` in storage would remove both the reopen and this case.

use std::sync::{PoisonError, RwLock};

use spool_broker::{
    TopicCompression, TopicConfig, TopicConfigError, TopicConfigRequest, TopicName,
};
use spool_storage::fs::StdFileSystem;
use spool_storage::{FsyncPolicy, Log, LogConfig, TimestampMs};

use crate::error::ServiceError;

/// What an alter asks to change; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TopicChange {
    pub(crate) fsync: Option<FsyncPolicy>,
    /// `Some(None)` removes the limit.
    pub(crate) retention_ms: Option<Option<u64>>,
    /// `Some(None)` removes the limit.
    pub(crate) retention_bytes: Option<Option<u64>>,
    pub(crate) segment_bytes: Option<u64>,
    pub(crate) compression: Option<TopicCompression>,
    /// More partitions than the topic has (fewer is refused).
    pub(crate) partitions: Option<u32>,
}

impl TopicChange {
    /// Checks the values the change sets, whatever topic it is for (each setting is checked
    /// on its own, so a change refused for one topic is refused for every topic): an alter's
    /// own mistakes come before whether its topic exists.
    pub(crate) fn check(&self) -> Result<(), TopicConfigError> {
        TopicConfig::new(TopicConfigRequest {
            partitions: self.partitions,
            fsync: self.fsync,
            retention_ms: self.retention_ms.flatten(),
            retention_bytes: self.retention_bytes.flatten(),
            segment_bytes: self.segment_bytes,
            compression: self.compression,
        })
        .map(drop)
    }

    /// The settings after the change, checked like a new topic's.
    pub(crate) fn apply(&self, current: &TopicConfig) -> Result<TopicConfig, TopicConfigError> {
        TopicConfig::new(TopicConfigRequest {
            partitions: Some(self.partitions.unwrap_or(current.partitions())),
            fsync: Some(self.fsync.unwrap_or(current.fsync())),
            retention_ms: self.retention_ms.unwrap_or(current.retention_ms()),
            retention_bytes: self.retention_bytes.unwrap_or(current.retention_bytes()),
            segment_bytes: Some(self.segment_bytes.unwrap_or(current.segment_bytes())),
            compression: Some(self.compression.unwrap_or(current.compression())),
        })
    }
}

/// Steps 2 and 3 of the module docs, on a blocking thread; the writer does 1 and 4.
pub(crate) fn reopen(
    topic: &TopicName,
    partition: u32,
    slot: &RwLock<Option<Log>>,
    config: LogConfig,
) -> Result<(), ServiceError> {
    let mut slot = slot.write().unwrap_or_else(PoisonError::into_inner);
    let log = slot.take().expect("the writer's log is open");
    if let Some(fence) = log.fence() {
        let fence = fence.clone();
        *slot = Some(log);
        return Err(ServiceError::Fenced { topic: topic.clone(), partition, fence });
    }
    let old_config = *log.config();
    if old_config == config {
        *slot = Some(log);
        return Ok(());
    }
    let dir = log.dir().to_path_buf();
    if let Err(error) = log.close() {
        // The open below recovers whatever the close left, as after a crash.
        tracing::warn!(%topic, partition, %error, "closing the log to reconfigure it failed");
    }
    let fs = StdFileSystem::shared();
    let error = match Log::open(fs.clone(), &dir, config, TimestampMs::now()) {
        Ok(log) => {
            *slot = Some(log);
            return Ok(());
        }
        Err(error) => error,
    };
    match Log::open(fs, &dir, old_config, TimestampMs::now()) {
        Ok(log) => *slot = Some(log),
        Err(again) => {
            tracing::error!(%topic, partition, %error, %again, "reopening the log failed with the new and the old settings; the partition is unavailable until restart");
        }
    }
    Err(ServiceError::Reopen { topic: topic.clone(), partition, source: error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_keeps_what_it_does_not_name() {
        let current = TopicConfig::new(TopicConfigRequest {
            partitions: Some(3),
            retention_ms: Some(1000),
            retention_bytes: Some(1 << 30),
            ..Default::default()
        })
        .unwrap();
        let changed = TopicChange {
            fsync: Some(FsyncPolicy::Interval { interval_ms: 5 }),
            retention_ms: Some(None),
            ..Default::default()
        }
        .apply(&current)
        .unwrap();
        assert_eq!(changed.partitions(), 3);
        assert_eq!(changed.fsync(), FsyncPolicy::Interval { interval_ms: 5 });
        assert_eq!(changed.retention_ms(), None);
        assert_eq!(changed.retention_bytes(), Some(1 << 30));
        assert_eq!(changed.segment_bytes(), current.segment_bytes());
        assert!(matches!(
            TopicChange { segment_bytes: Some(1), ..Default::default() }.apply(&current),
            Err(TopicConfigError::SegmentBytes { .. })
        ));
    }
}
