//! A topic's configuration: what a client asks for, validated, and how it is stored in
//! `meta.json`. Nothing is adjusted silently: a value outside its bounds is an error.

use serde::{Deserialize, Serialize};
use spool_storage::batch::Codec;
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
    compression: TopicCompression,
}

/// Which codec a topic stores its batches' records in: Kafka's `compression.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TopicCompression {
    /// As each producer compressed them (stored as sent).
    #[default]
    Producer,
    /// In this codec: a batch sent in another is re-encoded when it arrives.
    Codec(Codec),
}

impl TopicCompression {
    /// The codec every stored batch has, if the topic requires one.
    pub fn required(self) -> Option<Codec> {
        match self {
            TopicCompression::Producer => None,
            TopicCompression::Codec(codec) => Some(codec),
        }
    }

    /// The setting's name: `producer`, or a codec's (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
    pub fn name(self) -> &'static str {
        match self {
            TopicCompression::Producer => "producer",
            TopicCompression::Codec(codec) => codec.name(),
        }
    }
}

impl std::fmt::Display for TopicCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for TopicCompression {
    type Err = UnknownCompression;

    /// Parses `producer`, a codec's name, or Kafka's `uncompressed` (the same as `none`).
    fn from_str(name: &str) -> Result<TopicCompression, UnknownCompression> {
        match name {
            "producer" => Ok(TopicCompression::Producer),
            "uncompressed" => Ok(TopicCompression::Codec(Codec::None)),
            name => name
                .parse()
                .map(TopicCompression::Codec)
                .map_err(|_| UnknownCompression { name: name.to_owned() }),
        }
    }
}

/// A name that is not a topic compression setting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "unknown topic compression {name:?}; use producer (store batches as sent), none, gzip, snappy, lz4 or zstd"
)]
pub struct UnknownCompression {
    pub name: String,
}

/// What a client may leave out; [`TopicConfig::new`] fills in defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicConfigRequest {
    pub partitions: Option<u32>,
    pub fsync: Option<FsyncPolicy>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub compression: Option<TopicCompression>,
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
    #[error(transparent)]
    Compression(#[from] UnknownCompression),
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
            compression: request.compression.unwrap_or_default(),
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
    pub fn compression(&self) -> TopicCompression {
        self.compression
    }

    /// The configuration of each of the topic's partition logs.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: None,
            fsync: self.fsync,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            direct_writes: true,
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
    /// Absent in files written before topics had the setting: `producer`.
    #[serde(default = "producer_compression", skip_serializing_if = "is_producer")]
    pub(crate) compression: String,
    /// Which nodes of a cluster hold each partition; absent on a single node, and in files
    /// written before placements: every node of the cluster holds every partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) placement: Option<crate::Placement>,
}

fn producer_compression() -> String {
    TopicCompression::Producer.name().to_owned()
}

fn is_producer(compression: &str) -> bool {
    compression == TopicCompression::Producer.name()
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
    pub(crate) fn new(
        name: &str,
        config: &TopicConfig,
        placement: Option<&crate::Placement>,
    ) -> TopicMeta {
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
            compression: config.compression.name().to_owned(),
            placement: placement.cloned(),
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
            compression: Some(self.compression.parse()?),
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
            compression: Some(TopicCompression::Codec(Codec::Zstd)),
        })
        .unwrap();
        let meta = TopicMeta::new("t", &config, None);
        let json = serde_json::to_string(&meta).unwrap();
        assert!(json.contains(r#""compression":"zstd""#), "{json}");
        let back: TopicMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back.config().unwrap(), config);
    }

    #[test]
    fn a_meta_file_without_compression_stores_as_sent() {
        let config = TopicConfig::new(TopicConfigRequest::default()).unwrap();
        let json = serde_json::to_string(&TopicMeta::new("t", &config, None)).unwrap();
        assert!(!json.contains("compression"), "files stay readable by older servers: {json}");
        let back: TopicMeta = serde_json::from_str(&json).unwrap();
        assert_eq!(back.config().unwrap().compression(), TopicCompression::Producer);
    }

    #[test]
    fn compression_names() {
        for name in ["producer", "none", "gzip", "snappy", "lz4", "zstd"] {
            let parsed: TopicCompression = name.parse().unwrap();
            assert_eq!(parsed.to_string(), name);
        }
        assert_eq!("uncompressed".parse(), Ok(TopicCompression::Codec(Codec::None)));
        let error = "brotli".parse::<TopicCompression>().unwrap_err();
        assert!(error.to_string().contains("producer"), "{error}");
    }
}
