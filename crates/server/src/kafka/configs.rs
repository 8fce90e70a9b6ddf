//! Kafka's topic configuration names, mapped onto Spool's topic settings
//! ([`spool_broker::TopicConfig`]), for DescribeConfigs, CreateTopics' configs and
//! IncrementalAlterConfigs. Each setting a Kafka name stands for:
//!
//! | Kafka name            | Spool setting                 | values                                              |
//! |-----------------------|-------------------------------|-----------------------------------------------------|
//! | `retention.ms`        | `retention_ms`                | -1 (keep forever) or at least 1                     |
//! | `retention.bytes`     | `retention_bytes` (per partition) | -1 (no size limit) or at least 1                |
//! | `segment.bytes`       | `segment_bytes`               | within the segment bounds                           |
//! | `compression.type`    | `compression`                 | `producer`, `uncompressed` (or `none`), `gzip`, `snappy`, `lz4`, `zstd` |
//! | `flush.messages`, `flush.ms` | `fsync`                | `always`: 1 and MAX; `interval N`: MAX and N; `never`: MAX and MAX |
//! | `cleanup.policy`      | (fixed)                       | `delete`: Spool does not compact                    |
//! | `max.message.bytes`   | (fixed)                       | the largest batch, 8 MiB                            |
//! | `min.insync.replicas` | (fixed)                       | a majority of the topic's replicas: 1 on a single node, 2 of 3 |
//!
//! (MAX is 9223372036854775807, Kafka's "never" for both flush settings.) The fixed ones can be
//! set only to the value they have; any other name is refused with INVALID_CONFIG naming the
//! settings there are. Nothing is adjusted: a value Spool cannot keep exactly is refused.

use kafka_protocol::protocol::StrBytes;
use spool_broker::limits::SEGMENT_BYTES_DEFAULT;
use spool_broker::{TopicCompression, TopicConfig, TopicConfigRequest};
use spool_proto::limits::BATCH_BYTES_MAX;
use spool_storage::FsyncPolicy;
use thiserror::Error;

use super::AdvertisedAddress;
use crate::alter::TopicChange;

/// Kafka's "never" for `flush.messages` and `flush.ms`.
const FLUSH_NEVER: i64 = i64::MAX;

/// Kafka's `ConfigSource`.
pub(super) const SOURCE_DYNAMIC_TOPIC: i8 = 1;
pub(super) const SOURCE_STATIC_BROKER: i8 = 4;
pub(super) const SOURCE_DEFAULT: i8 = 5;

/// Kafka's `ConfigType` (DescribeConfigs v3 on).
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;
const TYPE_LIST: i8 = 7;
const TYPE_BOOLEAN: i8 = 1;

/// IncrementalAlterConfigs' operations.
const OPERATION_SET: i8 = 0;
const OPERATION_DELETE: i8 = 1;

/// The topic settings by Kafka name: (name, type, documentation).
const TOPIC_KEYS: [(&str, i8, &str); 9] = [
    (
        "cleanup.policy",
        TYPE_LIST,
        "Always delete: Spool removes whole old segments and does not compact.",
    ),
    (
        "compression.type",
        TYPE_STRING,
        "Spool's topic compression: producer keeps batches as sent; a codec re-encodes batches sent in another.",
    ),
    (
        "flush.messages",
        TYPE_LONG,
        "1 when the topic's fsync policy is always (each batch is synced before it is acknowledged), else never (9223372036854775807).",
    ),
    (
        "flush.ms",
        TYPE_LONG,
        "The fsync interval when the topic's fsync policy is an interval, else never (9223372036854775807).",
    ),
    ("max.message.bytes", TYPE_INT, "The largest record batch Spool stores (fixed)."),
    (
        "min.insync.replicas",
        TYPE_INT,
        "A majority of the topic's replicas: every acknowledged record is fsynced on at least that many (fixed).",
    ),
    ("retention.bytes", TYPE_LONG, "Spool's retention_bytes per partition; -1 is no size limit."),
    ("retention.ms", TYPE_LONG, "Spool's retention_ms; -1 keeps records forever."),
    (
        "segment.bytes",
        TYPE_INT,
        "Spool's segment_bytes: the size at which a partition's log rolls to a new segment.",
    ),
];

/// Why a Kafka configuration is refused (INVALID_CONFIG, with this as the message).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(super) enum ConfigError {
    #[error(
        "Spool topics have no setting {name:?}; they have cleanup.policy, compression.type, flush.messages, flush.ms, max.message.bytes, min.insync.replicas, retention.bytes, retention.ms and segment.bytes"
    )]
    Unknown { name: String },
    #[error("{name} is {fixed} on every Spool topic and cannot be set to {value:?}")]
    Fixed { name: String, fixed: String, value: String },
    #[error("{name} = {value:?}: {reason}")]
    BadValue { name: String, value: String, reason: &'static str },
    #[error("{name} has no value")]
    NoValue { name: String },
    #[error("{name} is named twice")]
    Twice { name: String },
    #[error(
        "operation {operation} on {name}: only SET (0) and DELETE (1) apply, as no Spool setting is a list"
    )]
    Operation { name: String, operation: i8 },
    #[error(
        "flush.messages {messages} with flush.ms {ms}: Spool syncs each batch (flush.messages 1, flush.ms 9223372036854775807), every N ms (flush.messages 9223372036854775807, flush.ms N), or never (both 9223372036854775807)"
    )]
    Flush { messages: i64, ms: i64 },
    #[error("{0}")]
    Topic(#[from] spool_broker::TopicConfigError),
}

/// One described setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Described {
    pub(super) name: &'static str,
    pub(super) value: String,
    pub(super) read_only: bool,
    pub(super) source: i8,
    pub(super) config_type: i8,
    pub(super) documentation: &'static str,
}

/// A topic's settings as Kafka names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KafkaView {
    retention_ms: Option<u64>,
    retention_bytes: Option<u64>,
    segment_bytes: u64,
    compression: TopicCompression,
    flush_messages: i64,
    flush_ms: i64,
    /// The nodes that hold each partition (1 on a single node).
    replicas: u32,
}

/// The replicas that must have a record fsynced before it is acknowledged: a majority.
fn majority(replicas: u32) -> u32 {
    replicas / 2 + 1
}

impl KafkaView {
    fn of(config: &TopicConfig, replicas: u32) -> KafkaView {
        let (flush_messages, flush_ms) = match config.fsync() {
            FsyncPolicy::Always => (1, FLUSH_NEVER),
            FsyncPolicy::Interval { interval_ms } => {
                (FLUSH_NEVER, i64::try_from(interval_ms).unwrap_or(FLUSH_NEVER))
            }
            FsyncPolicy::Never => (FLUSH_NEVER, FLUSH_NEVER),
        };
        KafkaView {
            retention_ms: config.retention_ms(),
            retention_bytes: config.retention_bytes(),
            segment_bytes: config.segment_bytes(),
            compression: config.compression(),
            flush_messages,
            flush_ms,
            replicas: replicas.max(1),
        }
    }

    /// A new topic's settings, on `replicas` nodes, when nothing is asked for.
    fn default(replicas: u32) -> KafkaView {
        KafkaView::of(
            &TopicConfig::new(TopicConfigRequest::default()).expect("the defaults are valid"),
            replicas,
        )
    }

    fn value(&self, name: &str) -> Option<String> {
        let limit = |value: Option<u64>| value.map_or_else(|| "-1".to_owned(), |v| v.to_string());
        Some(match name {
            "cleanup.policy" => "delete".to_owned(),
            "compression.type" => compression_name(self.compression).to_owned(),
            "flush.messages" => self.flush_messages.to_string(),
            "flush.ms" => self.flush_ms.to_string(),
            "max.message.bytes" => BATCH_BYTES_MAX.to_string(),
            "min.insync.replicas" => majority(self.replicas).to_string(),
            "retention.bytes" => limit(self.retention_bytes),
            "retention.ms" => limit(self.retention_ms),
            "segment.bytes" => self.segment_bytes.to_string(),
            _ => return None,
        })
    }

    /// Sets `name` to `value`, or back to a new topic's value when `value` is `None`.
    fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), ConfigError> {
        let Some(value) = value else {
            let default = KafkaView::default(self.replicas);
            let text = default.value(name).ok_or_else(|| unknown(name))?;
            return self.set(name, Some(&text));
        };
        let bad = |reason| ConfigError::BadValue {
            name: name.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let whole = || value.trim().parse::<i64>().map_err(|_| bad("not a whole number"));
        let limit = || match whole()? {
            -1 => Ok(None),
            n if n >= 1 => Ok(Some(n as u64)),
            _ => Err(bad("use -1 for no limit, or at least 1")),
        };
        match name {
            "retention.ms" => self.retention_ms = limit()?,
            "retention.bytes" => self.retention_bytes = limit()?,
            "segment.bytes" => {
                self.segment_bytes =
                    u64::try_from(whole()?).map_err(|_| bad("a size is not negative"))?
            }
            "compression.type" => {
                self.compression = value.parse().map_err(|_| {
                    bad("use producer, uncompressed (or none), gzip, snappy, lz4 or zstd")
                })?
            }
            "flush.messages" | "flush.ms" => {
                let n = whole()?;
                if n < 1 {
                    return Err(bad("at least 1"));
                }
                if name == "flush.ms" {
                    self.flush_ms = n;
                } else {
                    self.flush_messages = n;
                }
            }
            fixed => {
                let current = self.value(fixed).ok_or_else(|| unknown(fixed))?;
                if value.trim() != current {
                    return Err(ConfigError::Fixed {
                        name: fixed.to_owned(),
                        fixed: current,
                        value: value.to_owned(),
                    });
                }
            }
        }
        Ok(())
    }

    fn fsync(&self) -> Result<FsyncPolicy, ConfigError> {
        match (self.flush_messages, self.flush_ms) {
            (1, FLUSH_NEVER) => Ok(FsyncPolicy::Always),
            (FLUSH_NEVER, FLUSH_NEVER) => Ok(FsyncPolicy::Never),
            (FLUSH_NEVER, ms) if ms >= 1 => Ok(FsyncPolicy::Interval { interval_ms: ms as u64 }),
            (messages, ms) => Err(ConfigError::Flush { messages, ms }),
        }
    }
}

fn unknown(name: &str) -> ConfigError {
    ConfigError::Unknown { name: name.to_owned() }
}

/// Kafka's name for a topic compression (`uncompressed` for no codec).
fn compression_name(compression: TopicCompression) -> &'static str {
    match compression.required() {
        Some(spool_storage::batch::Codec::None) => "uncompressed",
        _ => compression.name(),
    }
}

/// A topic's settings, on `replicas` nodes each, those in `keys` (every one when `None`;
/// names Spool does not have are left out, as Kafka leaves them out).
pub(super) fn describe_topic(
    config: &TopicConfig,
    replicas: u32,
    keys: Option<&[StrBytes]>,
) -> Vec<Described> {
    let view = KafkaView::of(config, replicas);
    let default = KafkaView::default(replicas);
    TOPIC_KEYS
        .iter()
        .filter(|(name, _, _)| keys.is_none_or(|keys| keys.iter().any(|k| k.as_str() == *name)))
        .map(|&(name, config_type, documentation)| {
            let value = view.value(name).expect("a topic key");
            let read_only =
                matches!(name, "cleanup.policy" | "max.message.bytes" | "min.insync.replicas");
            let source = if value == default.value(name).expect("a topic key") {
                SOURCE_DEFAULT
            } else {
                SOURCE_DYNAMIC_TOPIC
            };
            Described { name, value, read_only, source, config_type, documentation }
        })
        .collect()
}

/// What the broker's settings depend on.
pub(super) struct Broker<'a> {
    /// Its node id (0 on a single node).
    pub(super) id: i32,
    pub(super) advertised: &'a AdvertisedAddress,
    /// A topic created without one gets this replication factor.
    pub(super) default_replication_factor: u32,
}

/// The broker's settings: all fixed (they are `spool serve`'s flags or Spool's constants).
pub(super) fn describe_broker(broker: &Broker<'_>, keys: Option<&[StrBytes]>) -> Vec<Described> {
    let (advertised, factor) = (broker.advertised, broker.default_replication_factor);
    let default = KafkaView::default(factor);
    let entries: [(&'static str, String, i8, &'static str); 14] = [
        ("broker.id", broker.id.to_string(), TYPE_INT, "This node's id (0 on a single node)."),
        (
            "advertised.listeners",
            format!("PLAINTEXT://{advertised}"),
            TYPE_STRING,
            "--kafka-advertised.",
        ),
        (
            "auto.create.topics.enable",
            "false".to_owned(),
            TYPE_BOOLEAN,
            "Topics are created by CreateTopics, gRPC or spool topic create, never by a produce or a fetch.",
        ),
        ("delete.topic.enable", "true".to_owned(), TYPE_BOOLEAN, "DeleteTopics deletes."),
        (
            "num.partitions",
            "1".to_owned(),
            TYPE_INT,
            "Partitions of a topic created without a count.",
        ),
        (
            "default.replication.factor",
            factor.to_string(),
            TYPE_INT,
            "3 on a cluster of three nodes or more, else 1.",
        ),
        (
            "min.insync.replicas",
            majority(factor).to_string(),
            TYPE_INT,
            "A majority of the default replication factor; each topic's is a majority of its own.",
        ),
        ("message.max.bytes", BATCH_BYTES_MAX.to_string(), TYPE_INT, "The largest record batch."),
        ("log.cleanup.policy", "delete".to_owned(), TYPE_LIST, "Spool does not compact."),
        (
            "log.retention.ms",
            default.value("retention.ms").expect("a topic key"),
            TYPE_LONG,
            "A new topic's retention.ms.",
        ),
        (
            "log.retention.bytes",
            default.value("retention.bytes").expect("a topic key"),
            TYPE_LONG,
            "A new topic's retention.bytes.",
        ),
        (
            "log.segment.bytes",
            SEGMENT_BYTES_DEFAULT.to_string(),
            TYPE_INT,
            "A new topic's segment.bytes.",
        ),
        ("compression.type", "producer".to_owned(), TYPE_STRING, "A new topic's compression.type."),
        (
            "log.flush.interval.messages",
            default.flush_messages.to_string(),
            TYPE_LONG,
            "A new topic's flush.messages.",
        ),
    ];
    entries
        .into_iter()
        .filter(|(name, ..)| keys.is_none_or(|keys| keys.iter().any(|k| k.as_str() == *name)))
        .map(|(name, value, config_type, documentation)| Described {
            name,
            value,
            read_only: true,
            source: SOURCE_STATIC_BROKER,
            config_type,
            documentation,
        })
        .collect()
}

/// A new topic's settings from CreateTopics' configs.
pub(super) fn create_request<'a>(
    partitions: u32,
    replicas: u32,
    configs: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Result<TopicConfigRequest, ConfigError> {
    let mut view = KafkaView::default(replicas);
    let mut named: Vec<&str> = Vec::new();
    for (name, value) in configs {
        if named.contains(&name) {
            return Err(ConfigError::Twice { name: name.to_owned() });
        }
        named.push(name);
        let value = value.ok_or_else(|| ConfigError::NoValue { name: name.to_owned() })?;
        view.set(name, Some(value))?;
    }
    let request = TopicConfigRequest {
        partitions: Some(partitions),
        fsync: Some(view.fsync()?),
        retention_ms: view.retention_ms,
        retention_bytes: view.retention_bytes,
        segment_bytes: Some(view.segment_bytes),
        compression: Some(view.compression),
    };
    TopicConfig::new(request)?;
    Ok(request)
}

/// The change IncrementalAlterConfigs' operations make to a topic whose settings are
/// `current`, on `replicas` nodes each, checked against them.
pub(super) fn change<'a>(
    current: &TopicConfig,
    replicas: u32,
    operations: impl IntoIterator<Item = (&'a str, i8, Option<&'a str>)>,
) -> Result<TopicChange, ConfigError> {
    let mut view = KafkaView::of(current, replicas);
    let mut named: Vec<&str> = Vec::new();
    for (name, operation, value) in operations {
        if named.contains(&name) {
            return Err(ConfigError::Twice { name: name.to_owned() });
        }
        named.push(name);
        match operation {
            OPERATION_SET => {
                let value = value.ok_or_else(|| ConfigError::NoValue { name: name.to_owned() })?;
                view.set(name, Some(value))?;
            }
            OPERATION_DELETE => view.set(name, None)?,
            operation => {
                // Still refuse an unknown name as unknown, whatever the operation.
                view.value(name).ok_or_else(|| unknown(name))?;
                return Err(ConfigError::Operation { name: name.to_owned(), operation });
            }
        }
    }
    let change = TopicChange {
        fsync: Some(view.fsync()?),
        retention_ms: Some(view.retention_ms),
        retention_bytes: Some(view.retention_bytes),
        segment_bytes: Some(view.segment_bytes),
        compression: Some(view.compression),
        partitions: None,
    };
    change.apply(current)?;
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(request: TopicConfigRequest) -> TopicConfig {
        TopicConfig::new(request).unwrap()
    }

    fn described(config: &TopicConfig) -> Vec<(&'static str, String)> {
        describe_topic(config, 1, None).into_iter().map(|d| (d.name, d.value)).collect()
    }

    #[test]
    fn a_default_topic_reads_as_kafka_names_it() {
        let values = described(&config(TopicConfigRequest::default()));
        let value = |name| values.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        assert_eq!(value("cleanup.policy"), "delete");
        assert_eq!(value("retention.ms"), "-1");
        assert_eq!(value("retention.bytes"), "-1");
        assert_eq!(value("segment.bytes"), SEGMENT_BYTES_DEFAULT.to_string());
        assert_eq!(value("compression.type"), "producer");
        assert_eq!(value("flush.messages"), "1");
        assert_eq!(value("flush.ms"), i64::MAX.to_string());
        assert_eq!(value("min.insync.replicas"), "1");
        assert_eq!(value("max.message.bytes"), BATCH_BYTES_MAX.to_string());
    }

    #[test]
    fn create_configs_map_onto_spool_settings() {
        let request = create_request(
            3,
            1,
            [
                ("retention.ms", Some("60000")),
                ("retention.bytes", Some("-1")),
                ("compression.type", Some("zstd")),
                ("flush.messages", Some(&*i64::MAX.to_string())),
                ("flush.ms", Some("25")),
                ("cleanup.policy", Some("delete")),
            ],
        )
        .unwrap();
        let created = config(request);
        assert_eq!(created.partitions(), 3);
        assert_eq!(created.retention_ms(), Some(60_000));
        assert_eq!(created.retention_bytes(), None);
        assert_eq!(created.compression().name(), "zstd");
        assert_eq!(created.fsync(), FsyncPolicy::Interval { interval_ms: 25 });
    }

    #[test]
    fn what_spool_cannot_keep_is_refused() {
        let refused = |name, value| create_request(1, 1, [(name, Some(value))]).unwrap_err();
        assert!(matches!(refused("cleanup.policy", "compact"), ConfigError::Fixed { .. }));
        assert!(matches!(refused("min.insync.replicas", "2"), ConfigError::Fixed { .. }));
        // On three replicas, a record is acknowledged once two have it: Kafka clients that
        // ask for that are taken.
        assert!(create_request(1, 3, [("min.insync.replicas", Some("2"))]).is_ok());
        let three = create_request(1, 3, [("min.insync.replicas", Some("3"))]).unwrap_err();
        assert!(matches!(three, ConfigError::Fixed { .. }), "{three:?}");
        assert!(matches!(
            refused("unclean.leader.election.enable", "true"),
            ConfigError::Unknown { .. }
        ));
        assert!(matches!(refused("retention.ms", "0"), ConfigError::BadValue { .. }));
        assert!(matches!(refused("retention.ms", "soon"), ConfigError::BadValue { .. }));
        assert!(matches!(refused("segment.bytes", "10"), ConfigError::Topic(_)));
        // flush.ms alone, while every batch is synced, would be silently ignored.
        assert!(matches!(refused("flush.ms", "100"), ConfigError::Flush { .. }));
        assert!(matches!(refused("flush.messages", "10"), ConfigError::Flush { .. }));
        assert!(matches!(
            create_request(1, 1, [("retention.ms", Some("1")), ("retention.ms", Some("2"))]),
            Err(ConfigError::Twice { .. })
        ));
    }

    #[test]
    fn alters_set_and_delete_and_keep_the_rest() {
        let current = config(TopicConfigRequest {
            partitions: Some(2),
            retention_bytes: Some(1 << 30),
            ..Default::default()
        });
        let change = change(
            &current,
            1,
            [
                ("retention.ms", OPERATION_SET, Some("3600000")),
                ("retention.bytes", OPERATION_DELETE, None),
            ],
        )
        .unwrap();
        let altered = change.apply(&current).unwrap();
        assert_eq!(altered.retention_ms(), Some(3_600_000));
        assert_eq!(altered.retention_bytes(), None);
        assert_eq!(altered.fsync(), current.fsync());
        assert_eq!(altered.segment_bytes(), current.segment_bytes());
        assert!(matches!(
            super::change(&current, 1, [("cleanup.policy", 2, Some("compact"))]),
            Err(ConfigError::Operation { .. })
        ));
        assert!(matches!(
            super::change(&current, 1, [("retention.ms", OPERATION_SET, None)]),
            Err(ConfigError::NoValue { .. })
        ));
    }
}
