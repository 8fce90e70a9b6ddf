//! A topic's configuration: what a client asks for, validated, and how it is stored in
//! `meta.json`. Nothing is adjusted silently: a value outside its bounds is an error.

use serde::{Deserialize, Serialize};
use spool_storage::{FsyncPolicy, LogConfig};
use thiserror::Error;

use crate::limits::{
    FSYNC_INTERVAL_MS_MAX, PARTITIONS_PER_TOPIC_MAX, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX,
    SEGMENT_BYTES_MIN,
};

/// A topic's settings, valid by construction ([`TopicConfig::new`] checks every bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicConfig {
    partitions: u32,
    fsync: FsyncPolicy,
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    segment_bytes: u64,
}

/// What a client may leave out; [`TopicConfig::new`] fills in defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicConfigRequest {
    pub partitions: Option<u32>,
    pub fsync: Option<FsyncPolicy>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicConfigError {
    #[error("partition count {partitions} is outside 1..={max}")]
    Partitions { partitions: u32, max: u32 },
    #[error("fsync interval {interval_ms} ms is outside 1..={max_ms}")]
    FsyncInterval { interval_ms: u64, max_ms: u64 },
    #[error("retention_ms must be at least 1 (leave it out to keep records forever)")]
    RetentionMsZero,
    #[error("retention_bytes must be at least 1 (leave it out for no size limit)")]
    RetentionBytesZero,
    #[error("segment size {bytes} bytes is outside {min}..={max}")]
    SegmentBytes { bytes: u64, min: u64, max: u64 },
}

impl TopicConfig {
    pub fn new(request: TopicConfigRequest) -> Result<TopicConfig, TopicConfigError> {
        let partitions = request.partitions.unwrap_or(1);
        if !(1..=PARTITIONS_PER_TOPIC_MAX).contains(&partitions) {
            return Err(TopicConfigError::Partitions { partitions, max: PARTITIONS_PER_TOPIC_MAX });
        }
        let fsync = request.fsync.unwrap_or(FsyncPolicy::Always);
        if let FsyncPolicy::Interval { interval_ms } = fsync
            && !(1..=FSYNC_INTERVAL_MS_MAX).contains(&interval_ms)
        {
            return Err(TopicConfigError::FsyncInterval {
                interval_ms,
                max_ms: FSYNC_INTERVAL_MS_MAX,
            });
        }
        if request.retention_ms == Some(0) {
            return Err(TopicConfigError::RetentionMsZero);
        }
        if request.retention_bytes == Some(0) {
            return Err(TopicConfigError::RetentionBytesZero);
        }
        let segment_bytes = request.segment_bytes.unwrap_or(SEGMENT_BYTES_DEFAULT);
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&segment_bytes) {
            return Err(TopicConfigError::SegmentBytes {
                bytes: segment_bytes,
                min: SEGMENT_BYTES_MIN,
                max: SEGMENT_BYTES_MAX,
            });
        }
        let config = TopicConfig {
            partitions,
            fsync,
            retention_ms: request.retention_ms,
            retention_bytes: request.retention_bytes,
            segment_bytes,
        };
        // Our bounds are storage's bounds: a config that passed here must open a log.
        assert!(config.log_config().validate().is_ok(), "{config:?}");
        Ok(config)
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }
    pub fn fsync(&self) -> FsyncPolicy {
        self.fsync
    }
    pub fn retention_ms(&self) -> Option<u64> {
        self.retention_ms
    }
    pub fn retention_bytes(&self) -> Option<u64> {
        self.retention_bytes
    }
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// The configuration of each of the topic's partition logs.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: None,
            fsync: self.fsync,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
        }
    }
}

/// The format of `meta.json`. A new field gets a default so older files still load; a change
/// of meaning gets a new `format_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicMeta {
    pub(crate) format_version: u32,
    pub(crate) name: String,
    pub(crate) partitions: u32,
    pub(crate) fsync: FsyncMeta,
    pub(crate) retention_ms: Option<u64>,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) segment_bytes: u64,
}

pub(crate) const META_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FsyncMeta {
    Always,
    Interval { interval_ms: u64 },
    Never,
}

impl TopicMeta {
    pub(crate) fn new(name: &str, config: &TopicConfig) -> TopicMeta {
        TopicMeta {
            format_version: META_FORMAT_VERSION,
            name: name.to_owned(),
            partitions: config.partitions,
            fsync: match config.fsync {
                FsyncPolicy::Always => FsyncMeta::Always,
                FsyncPolicy::Interval { interval_ms } => FsyncMeta::Interval { interval_ms },
                FsyncPolicy::Never => FsyncMeta::Never,
            },
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes: config.segment_bytes,
        }
    }

    pub(crate) fn config(&self) -> Result<TopicConfig, TopicConfigError> {
        TopicConfig::new(TopicConfigRequest {
            partitions: Some(self.partitions),
            fsync: Some(match self.fsync {
                FsyncMeta::Always => FsyncPolicy::Always,
                FsyncMeta::Interval { interval_ms } => FsyncPolicy::Interval { interval_ms },
                FsyncMeta::Never => FsyncPolicy::Never,
            }),
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            segment_bytes: Some(self.segment_bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(request: TopicConfigRequest, expect: Result<(), TopicConfigError>) {
        assert_eq!(TopicConfig::new(request).map(|_| ()), expect, "{request:?}");
    }

    #[test]
    fn bounds() {
        check(TopicConfigRequest::default(), Ok(()));
        let partitions = |n| TopicConfigRequest { partitions: Some(n), ..Default::default() };
        check(partitions(256), Ok(()));
        check(partitions(0), Err(TopicConfigError::Partitions { partitions: 0, max: 256 }));
        check(partitions(257), Err(TopicConfigError::Partitions { partitions: 257, max: 256 }));
        check(
            TopicConfigRequest {
                fsync: Some(FsyncPolicy::Interval { interval_ms: 0 }),
                ..Default::default()
            },
            Err(TopicConfigError::FsyncInterval { interval_ms: 0, max_ms: FSYNC_INTERVAL_MS_MAX }),
        );
        check(
            TopicConfigRequest { retention_ms: Some(0), ..Default::default() },
            Err(TopicConfigError::RetentionMsZero),
        );
        check(
            TopicConfigRequest { segment_bytes: Some(1), ..Default::default() },
            Err(TopicConfigError::SegmentBytes {
                bytes: 1,
                min: SEGMENT_BYTES_MIN,
                max: SEGMENT_BYTES_MAX,
            }),
        );
    }

    #[test]
    fn meta_round_trip() {
        let config = TopicConfig::new(TopicConfigRequest {
            partitions: Some(3),
            fsync: Some(FsyncPolicy::Interval { interval_ms: 50 }),
            retention_ms: Some(1000),
            retention_bytes: None,
            segment_bytes: Some(1 << 20),
        })
        .unwrap();
        let meta = TopicMeta::new("t", &config);
        let json = serde_json::to_string(&meta).unwrap();
        let back: TopicMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back.config().unwrap(), config);
    }
}
