//! Records as JSON, both ways, and the two operations every transport shares: produce one
//! record, and resolve where a subscription starts.
//!
//! ## A record as JSON
//!
//! ```json
//! {"offset": 7, "timestamp_ms": 1764224000000, "encoding": "utf8",
//!  "key": "user-1", "value": "hello", "headers": [{"key": "trace", "value": "abc"}]}
//! ```
//!
//! `encoding` is `utf8` when the key, the value and every header value are valid UTF-8, and
//! then they are the text itself; otherwise it is `base64` and all three are standard base64
//! (with padding). Header keys are always text. A missing key or value is `null`. Records sent
//! to the server use the same form (without `offset`), with `encoding` defaulting to `utf8`,
//! plus an optional `partition` (otherwise the key picks it, as Spool's producers do, and
//! keyless records go round-robin).

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use spool_proto::Acks;
use spool_proto::limits::{RECORD_HEADERS_MAX, TIMESTAMP_MS_MAX};
use spool_proto::partitioner::partition_for_key;
use spool_proto::v1::ConsumedRecord;
use spool_storage::batch::{BatchBuilder, CheckedBatch, Codec, Header, ProducerStamp};
use spool_storage::{FsyncPolicy, Offset, TimestampMs};

use super::error::{BadRequest, HttpError};
use crate::auth::{Action, Caller, Resource};
use crate::error::{InvalidRequest, ServiceError};
use crate::partition::Partition;
use crate::produce::check_batch_bytes;
use crate::topic_table::TopicTable;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderJson {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
}

/// One consumed record, as SSE data and in a WebSocket `event` message.
#[derive(Debug, Serialize)]
pub(crate) struct EventJson<'a> {
    pub(crate) offset: u64,
    pub(crate) timestamp_ms: i64,
    pub(crate) encoding: &'static str,
    pub(crate) key: Option<Cow<'a, str>>,
    pub(crate) value: Option<Cow<'a, str>>,
    pub(crate) headers: Vec<HeaderJson>,
}

impl<'a> EventJson<'a> {
    pub(crate) fn of(record: &'a ConsumedRecord) -> EventJson<'a> {
        let text = |field: &'a Option<Bytes>| field.as_deref().map(std::str::from_utf8);
        let all_text = text(&record.key).is_none_or(|t| t.is_ok())
            && text(&record.value).is_none_or(|t| t.is_ok())
            && record
                .headers
                .iter()
                .all(|h| h.value.as_deref().is_none_or(|v| std::str::from_utf8(v).is_ok()));
        let show = |bytes: Option<&'a [u8]>| -> Option<Cow<'a, str>> {
            bytes.map(|bytes| match all_text {
                true => Cow::Borrowed(std::str::from_utf8(bytes).expect("checked above")),
                false => Cow::Owned(BASE64.encode(bytes)),
            })
        };
        EventJson {
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            encoding: if all_text { "utf8" } else { "base64" },
            key: show(record.key.as_deref()),
            value: show(record.value.as_deref()),
            headers: record
                .headers
                .iter()
                .map(|h| HeaderJson {
                    key: h.key.clone(),
                    value: show(h.value.as_deref()).map(Cow::into_owned),
                })
                .collect(),
        }
    }
}

/// One record to produce, as a client sends it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecordJson {
    #[serde(default)]
    pub(crate) partition: Option<u32>,
    #[serde(default)]
    pub(crate) timestamp_ms: Option<i64>,
    #[serde(default)]
    pub(crate) encoding: Option<String>,
    #[serde(default)]
    pub(crate) key: Option<String>,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) headers: Vec<HeaderJson>,
}

/// One record to produce, decoded.
#[derive(Debug, Default)]
pub(crate) struct RecordIn {
    pub(crate) partition: Option<u32>,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<(String, Option<Bytes>)>,
}

impl RecordJson {
    pub(crate) fn decode(self) -> Result<RecordIn, BadRequest> {
        let base64 = match self.encoding.as_deref() {
            None | Some("utf8") => false,
            Some("base64") => true,
            Some(other) => return Err(BadRequest::Encoding { encoding: other.to_owned() }),
        };
        let field =
            |field: &'static str, text: Option<String>| -> Result<Option<Bytes>, BadRequest> {
                match (text, base64) {
                    (None, _) => Ok(None),
                    (Some(text), false) => Ok(Some(Bytes::from(text))),
                    (Some(text), true) => BASE64
                        .decode(text.as_bytes())
                        .map(|bytes| Some(Bytes::from(bytes)))
                        .map_err(|e| BadRequest::Base64 { field, reason: e.to_string() }),
                }
            };
        let mut headers = Vec::with_capacity(self.headers.len());
        for header in self.headers {
            headers.push((header.key, field("a header value", header.value)?));
        }
        Ok(RecordIn {
            partition: self.partition,
            timestamp_ms: self.timestamp_ms,
            key: field("key", self.key)?,
            value: field("value", self.value)?,
            headers,
        })
    }
}

/// Where a produced record landed.
#[derive(Debug, Serialize)]
pub(crate) struct Produced {
    pub(crate) topic: String,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
}

/// Checks one record against the limits and encodes it into a batch of one, compressed with
/// `codec`.
fn encode(record: &RecordIn, partition: u32, codec: Codec) -> Result<Bytes, InvalidRequest> {
    if record.headers.len() > RECORD_HEADERS_MAX as usize {
        return Err(InvalidRequest::TooManyHeaders {
            index: 0,
            headers: record.headers.len(),
            headers_max: RECORD_HEADERS_MAX,
        });
    }
    let timestamp = match record.timestamp_ms {
        None => TimestampMs::now(),
        Some(timestamp_ms) if (0..=TIMESTAMP_MS_MAX).contains(&timestamp_ms) => {
            TimestampMs(timestamp_ms)
        }
        Some(timestamp_ms) => {
            return Err(InvalidRequest::BadTimestamp {
                index: 0,
                timestamp_ms,
                timestamp_ms_max: TIMESTAMP_MS_MAX,
            });
        }
    };
    let headers: Vec<Header<'_>> =
        record.headers.iter().map(|(k, v)| Header::new(k, v.as_deref())).collect();
    let mut builder = BatchBuilder::new(BytesMut::new());
    builder.push(timestamp, record.key.as_deref(), record.value.as_deref(), &headers);
    check_batch_bytes(&builder, partition)?;
    Ok(builder.finish_compressed(ProducerStamp::NONE, codec).freeze())
}

/// Produces one record through the partition's writer, as the produce service does, and
/// waits until it is acknowledged: synced, or appended on a topic whose fsync is `never`.
pub(crate) async fn produce(
    topics: &TopicTable,
    caller: &Caller,
    topic: &str,
    record: RecordIn,
) -> Result<Produced, HttpError> {
    caller.allow(Action::Produce, Resource::Topic(topic))?;
    let topic = topics.topic_for_request(topic, None).await?;
    let partitions = topic.config().partitions();
    let partition = match (record.partition, &record.key) {
        (Some(partition), _) => topic.partition(partition)?.id(),
        (None, Some(key)) => partition_for_key(key, partitions),
        (None, None) => topic.round_robin.next(partitions),
    };
    let codec = topic.config().compression().required().unwrap_or(Codec::None);
    let batch = encode(&record, partition, codec)?;
    let acks = match topic.config().fsync() {
        FsyncPolicy::Never => Acks::Leader,
        FsyncPolicy::Always | FsyncPolicy::Interval { .. } => Acks::All,
    };
    let batch = CheckedBatch::check(batch)
        .map_err(|error| ServiceError::append(&topic.name, partition, error.into()))?;
    let answer = topic.partitions[partition as usize].submit(batch, acks).await?;
    let appended = answer.await.map_err(|_| ServiceError::ShuttingDown)??;
    Ok(Produced { topic: topic.name.to_string(), partition, offset: appended.base_offset.0 })
}

/// Where a subscription starts, as `from` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    Earliest,
    Latest,
    Offset(u64),
    TimestampMs(i64),
}

impl Start {
    /// `earliest`, `latest`, an offset, an RFC 3339 time (as the CLI's `--from` takes it), or
    /// `time:MS`; absent means `latest`.
    pub(crate) fn parse(from: Option<&str>) -> Result<Start, BadRequest> {
        let bad = || BadRequest::From { from: from.unwrap_or_default().to_owned() };
        match from {
            None | Some("latest") => Ok(Start::Latest),
            Some("earliest") => Ok(Start::Earliest),
            Some(from) if from.bytes().all(|b| b.is_ascii_digit()) => {
                from.parse().map(Start::Offset).map_err(|_| bad())
            }
            Some(from) => match from.strip_prefix("time:") {
                Some(ms) => ms.parse().map(Start::TimestampMs).map_err(|_| bad()),
                None => chrono::DateTime::parse_from_rfc3339(from)
                    .map(|time| Start::TimestampMs(time.timestamp_millis()))
                    .map_err(|_| bad()),
            },
        }
    }

    /// After the event whose SSE id was `id`.
    pub(crate) fn after_event(id: &str) -> Result<Start, BadRequest> {
        id.trim()
            .parse::<u64>()
            .ok()
            .and_then(|offset| offset.checked_add(1))
            .map(Start::Offset)
            .ok_or_else(|| BadRequest::LastEventId { id: id.to_owned() })
    }

    /// The offset this names in `partition` now. An offset must lie within the log (its
    /// visible end included); a time past the last record is the visible end.
    pub(crate) async fn resolve(
        self,
        partition: &std::sync::Arc<Partition>,
    ) -> Result<Offset, ServiceError> {
        partition.refresh().await?;
        let state = partition.state()?;
        match self {
            Start::Earliest => Ok(state.log_start_offset),
            Start::Latest => Ok(state.log_end_offset),
            Start::Offset(offset) => {
                partition.read(Offset(offset), 1).await?;
                Ok(Offset(offset))
            }
            Start::TimestampMs(ms) => partition.offset_for_timestamp(TimestampMs(ms)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_proto::v1::Header;

    #[test]
    fn starts() {
        assert_eq!(Start::parse(None), Ok(Start::Latest));
        assert_eq!(Start::parse(Some("earliest")), Ok(Start::Earliest));
        assert_eq!(Start::parse(Some("42")), Ok(Start::Offset(42)));
        assert_eq!(Start::parse(Some("time:1700")), Ok(Start::TimestampMs(1700)));
        assert_eq!(
            Start::parse(Some("2024-05-01T12:00:00Z")),
            Ok(Start::TimestampMs(1_714_564_800_000))
        );
        assert_eq!(
            Start::parse(Some("2024-05-01T17:30:00.250+05:30")),
            Ok(Start::TimestampMs(1_714_564_800_250))
        );
        assert!(Start::parse(Some("2024-05-01")).is_err());
        assert!(Start::parse(Some("2024-05-01T17:30:00 05:30")).is_err());
        assert!(Start::parse(Some("")).is_err());
        assert!(Start::parse(Some("-1")).is_err());
        assert!(Start::parse(Some("time:x")).is_err());
        assert_eq!(Start::after_event("41"), Ok(Start::Offset(42)));
        assert!(Start::after_event(&u64::MAX.to_string()).is_err());
        assert!(Start::after_event("abc").is_err());
    }

    fn consumed(value: &[u8], header: &[u8]) -> ConsumedRecord {
        ConsumedRecord {
            offset: 3,
            timestamp_ms: 10,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::copy_from_slice(value)),
            headers: vec![Header { key: "h".into(), value: Some(Bytes::copy_from_slice(header)) }],
        }
    }

    #[test]
    fn text_when_every_field_is_utf8_else_base64() {
        let record = consumed("héllo".as_bytes(), b"v");
        let event = EventJson::of(&record);
        assert_eq!((event.encoding, event.value.as_deref()), ("utf8", Some("héllo")));
        let record = consumed(b"ok", &[0xff]);
        let event = EventJson::of(&record);
        assert_eq!(event.encoding, "base64");
        assert_eq!(event.key.as_deref(), Some("aw=="));
        assert_eq!(event.value.as_deref(), Some("b2s="));
        assert_eq!(event.headers[0].value.as_deref(), Some("/w=="));
    }

    #[test]
    fn records_in_decode_both_encodings() {
        let json = RecordJson {
            encoding: Some("base64".into()),
            value: Some("/w==".into()),
            ..Default::default()
        };
        assert_eq!(json.decode().unwrap().value.as_deref(), Some(&[0xff][..]));
        let json = RecordJson { encoding: Some("hex".into()), ..Default::default() };
        assert!(matches!(json.decode(), Err(BadRequest::Encoding { .. })));
        let json = RecordJson {
            encoding: Some("base64".into()),
            key: Some("!!".into()),
            ..Default::default()
        };
        assert!(matches!(json.decode(), Err(BadRequest::Base64 { field: "key", .. })));
    }
}
