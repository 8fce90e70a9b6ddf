//! Fetch and ListOffsets: reads by offset, as gRPC's fetch reads.
//!
//! A fetch answers each partition's stored batches from the one holding the fetch offset (the
//! client skips the records before it), each batch's Kafka bytes as stored (`kafka_bytes`: the
//! batch after Spool's frame, with the offsets stamped at append). The high watermark and the
//! last stable offset are both the visible end (there are no transactions, so the aborted list
//! is empty and `read_committed` reads what `read_uncommitted` does). At most
//! [`KAFKA_FETCH_BYTES_MAX`] bytes (or the client's smaller `max_bytes`) are answered, but
//! the first batch is sent whole even past it; a partition's read is bounded by its
//! `partition_max_bytes` the same way. When nothing is there, the fetch waits for any of its
//! partitions to change, up to `max_wait_ms` (at most [`KAFKA_FETCH_WAIT_MAX`]); `min_bytes`
//! is treated as 1. Fetch sessions are not served: only a sessionless fetch (session id 0,
//! epoch -1 or 0) is, and its answer's session id 0 tells the client none was created.
//!
//! The records are not copied: each partition's are slices of the bytes the log read (the
//! mapped segment), written to the socket as they are beside the encoded fields
//! ([`Fetched::encode`]); only batches under [`ZERO_COPY_BYTES_MIN`] are copied into the
//! fields around them, so that many small batches are not many small writes.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use kafka_protocol::protocol::Encodable;
use spool_storage::batch::{BATCH_VERSION, BatchIter};
use spool_storage::limits::BATCH_BYTES_MAX;
use spool_storage::{Offset, ReadBatches, TimestampMs};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::Shared;
use super::codes::error_code;
use crate::auth::{Action, Caller};
use crate::limits::{KAFKA_FETCH_BYTES_MAX, KAFKA_FETCH_WAIT_MAX};
use crate::partition::Partition;

/// ListOffsets' special timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

/// One partition a fetch asks for.
struct Wanted {
    index: i32,
    partition: Result<Arc<Partition>, i16>,
    offset: i64,
    bytes_max: u32,
}

/// Batches smaller than this are copied into the answer's encoded fields rather than written
/// as slices of their own.
const ZERO_COPY_BYTES_MIN: usize = 64 * 1024;

/// A fetch's answer: the response with every partition's records left empty, and each
/// partition's records (in the response's order, topic by topic) as slices of the log's bytes.
pub(super) struct Fetched {
    response: FetchResponse,
    records: Vec<Vec<Bytes>>,
}

impl From<FetchResponse> for Fetched {
    fn from(response: FetchResponse) -> Fetched {
        Fetched { response, records: Vec::new() }
    }
}

impl Fetched {
    /// The answer frame as chunks to write in order: the length, the response header and the
    /// fields, with each partition's records after its fields (in versions 4 to 11 a
    /// partition's records are its last field, and nothing follows them but the next one).
    pub(super) fn encode(
        &self,
        version: i16,
        header: &kafka_protocol::messages::ResponseHeader,
        header_version: i16,
    ) -> Result<Vec<Bytes>, String> {
        let response = &self.response;
        let mut chunks = Vec::new();
        let mut fields = BytesMut::new();
        header.encode(&mut fields, header_version).map_err(|e| e.to_string())?;
        if version >= 1 {
            fields.put_i32(response.throttle_time_ms);
        }
        if version >= 7 {
            fields.put_i16(response.error_code);
            fields.put_i32(response.session_id);
        }
        fields.put_i32(response.responses.len() as i32);
        let mut records = self.records.iter();
        for topic in &response.responses {
            let name = topic.topic.0.as_str();
            fields.put_i16(name.len() as i16);
            fields.put_slice(name.as_bytes());
            fields.put_i32(topic.partitions.len() as i32);
            for partition in &topic.partitions {
                partition.encode(&mut fields, version).map_err(|e| e.to_string())?;
                // Its records were encoded empty: a length of 0, replaced by theirs.
                debug_assert_eq!(fields[fields.len() - 4..], [0, 0, 0, 0]);
                fields.truncate(fields.len() - 4);
                let slices = records.next().map_or(&[][..], Vec::as_slice);
                let length: usize = slices.iter().map(Bytes::len).sum();
                fields.put_i32(length as i32);
                for slice in slices {
                    if slice.len() < ZERO_COPY_BYTES_MIN {
                        fields.put_slice(slice);
                    } else {
                        chunks.push(fields.split().freeze());
                        chunks.push(slice.clone());
                    }
                }
            }
        }
        chunks.push(fields.freeze());
        let length: usize = chunks.iter().map(Bytes::len).sum();
        chunks.insert(0, Bytes::copy_from_slice(&(length as u32).to_be_bytes()));
        Ok(chunks)
    }
}

pub(super) async fn fetch(
    shared: &Shared,
    caller: &Caller,
    request: FetchRequest,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> Fetched {
    let refused = |error: ResponseError| {
        Fetched::from(FetchResponse::default().with_error_code(error.code()).with_session_id(0))
    };
    if request.session_id != 0 {
        return refused(ResponseError::FetchSessionIdNotFound);
    }
    if !matches!(request.session_epoch, -1 | 0) {
        return refused(ResponseError::InvalidFetchSessionEpoch);
    }
    let bytes_max = u32::try_from(request.max_bytes)
        .ok()
        .filter(|bytes| *bytes > 0)
        .map_or(KAFKA_FETCH_BYTES_MAX, |bytes| bytes.min(KAFKA_FETCH_BYTES_MAX));
    let wait_ms = u64::try_from(request.max_wait_ms).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_millis(wait_ms).min(KAFKA_FETCH_WAIT_MAX);
    let topics: Vec<(TopicName, Vec<Wanted>)> = request
        .topics
        .into_iter()
        .map(|topic| {
            let found = shared.topic(caller, Action::Consume, topic.topic.0.as_str());
            let wanted = topic
                .partitions
                .iter()
                .map(|p| Wanted {
                    index: p.partition,
                    partition: match &found {
                        Ok(found) => u32::try_from(p.partition)
                            .map_err(|_| ResponseError::UnknownTopicOrPartition.code())
                            .and_then(|i| found.partition(i).cloned().map_err(|e| error_code(&e))),
                        Err(error) => Err(error_code(error)),
                    },
                    offset: p.fetch_offset,
                    bytes_max: u32::try_from(p.partition_max_bytes).unwrap_or(0).max(1),
                })
                .collect();
            (topic.topic, wanted)
        })
        .collect();
    wait_for_any(shared, &topics, deadline).await;
    // The answer's largest size, the budget and one batch past it, taken only once there is
    // something to read (or the wait is over): a waiting fetch holds none of the budget.
    held.push(
        shared
            .bytes
            .clone()
            .acquire_many_owned(bytes_max + BATCH_BYTES_MAX)
            .await
            .expect("the budget is never closed"),
    );
    let (answer, records) = read_all(&topics, bytes_max).await;
    let response = FetchResponse::default().with_session_id(0).with_responses(answer);
    Fetched { response, records }
}

/// Waits until a partition has something to answer at its fetch offset (records, or an
/// error such as an offset out of range), `deadline` passes, or shutdown begins. Waits on
/// the partitions' notifications, reading nothing.
async fn wait_for_any(shared: &Shared, topics: &[(TopicName, Vec<Wanted>)], deadline: Instant) {
    let wanted = || topics.iter().flat_map(|(_, wanted)| wanted.iter());
    let mut changes: Vec<_> =
        wanted().filter_map(|w| w.partition.as_ref().ok().map(|p| p.watch())).collect();
    let stop = shared.topics.streams_stop.clone();
    loop {
        for change in &mut changes {
            change.borrow_and_update();
        }
        let ready = wanted().any(|w| match &w.partition {
            Err(_) => true,
            Ok(partition) => match (partition.state(), u64::try_from(w.offset)) {
                (Ok(state), Ok(offset)) => offset != state.log_end_offset.0,
                // A closed partition or a negative offset is answered (with its error) at once.
                _ => true,
            },
        });
        if ready || Instant::now() >= deadline || stop.is_cancelled() {
            return;
        }
        if changes.is_empty() {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = stop.cancelled() => {}
            }
        } else {
            let any_change =
                futures_util::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
            tokio::select! {
                _ = any_change => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = stop.cancelled() => {}
            }
        }
    }
}

/// Reads every partition once, within `bytes_max` but for the answer's first batch: the
/// answer with empty records, and each partition's records in order.
async fn read_all(
    topics: &[(TopicName, Vec<Wanted>)],
    bytes_max: u32,
) -> (Vec<FetchableTopicResponse>, Vec<Vec<Bytes>>) {
    let mut left = bytes_max;
    let mut any_records = false;
    let mut answer = Vec::with_capacity(topics.len());
    let mut all_records = Vec::new();
    for (name, wanted) in topics {
        let mut partitions = Vec::with_capacity(wanted.len());
        for wanted in wanted {
            let data = PartitionData::default()
                .with_partition_index(wanted.index)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_aborted_transactions(Some(Vec::new()))
                .with_preferred_read_replica(BrokerId(-1))
                .with_records(Some(Bytes::new()));
            let read = match &wanted.partition {
                Err(code) => Err(*code),
                Ok(partition) => read_one(partition, wanted, left, any_records).await,
            };
            let data = match read {
                Err(code) => {
                    all_records.push(Vec::new());
                    data.with_error_code(code)
                }
                Ok(Answered { records, stored_bytes, high_watermark, log_start_offset }) => {
                    if !records.is_empty() {
                        any_records = true;
                        left = left.saturating_sub(stored_bytes as u32);
                    }
                    all_records.push(records);
                    data.with_high_watermark(high_watermark)
                        .with_last_stable_offset(high_watermark)
                        .with_log_start_offset(log_start_offset)
                }
            };
            partitions.push(data);
        }
        answer.push(
            FetchableTopicResponse::default().with_topic(name.clone()).with_partitions(partitions),
        );
    }
    (answer, all_records)
}

struct Answered {
    /// The batches' Kafka bytes, slices of the read.
    records: Vec<Bytes>,
    /// What the records take as stored: what a fetch's bounds count.
    stored_bytes: usize,
    high_watermark: i64,
    log_start_offset: i64,
}

/// One partition's read: its batches' Kafka bytes, within `left` bytes unless it is the first
/// data of the answer (`any_records` false), which is sent whole.
async fn read_one(
    partition: &Arc<Partition>,
    wanted: &Wanted,
    left: u32,
    any_records: bool,
) -> Result<Answered, i16> {
    let offset =
        u64::try_from(wanted.offset).map_err(|_| ResponseError::OffsetOutOfRange.code())?;
    let bytes_max = wanted.bytes_max.min(left).max(1);
    let read = if any_records && left == 0 {
        None
    } else {
        Some(partition.read(Offset(offset), bytes_max).await.map_err(|e| error_code(&e))?)
    };
    let Some(read) = read.filter(|read| !any_records || read.bytes.len() <= left as usize) else {
        // No room left in this answer: the partition's offsets, and no records.
        let state = partition.state().map_err(|e| error_code(&e))?;
        return Ok(Answered {
            records: Vec::new(),
            stored_bytes: 0,
            high_watermark: state.log_end_offset.0 as i64,
            log_start_offset: state.log_start_offset.0 as i64,
        });
    };
    let records = kafka_records(partition, &read)?;
    let bytes = records.iter().map(Bytes::len).sum();
    partition.metrics.consumed(read.next_offset.0.saturating_sub(offset), bytes);
    Ok(Answered {
        records,
        stored_bytes: read.bytes.len(),
        high_watermark: read.log_end_offset.0 as i64,
        log_start_offset: read.log_start_offset.0 as i64,
    })
}

/// The Kafka batches inside a read's stored batches, as slices of the read. A read checked
/// every batch, so one that does not iterate is a bug, reported as a storage error; a batch in
/// the old format 1 (written before Kafka batches were stored) has no Kafka form to send yet.
fn kafka_records(partition: &Partition, read: &ReadBatches) -> Result<Vec<Bytes>, i16> {
    let mut records = Vec::new();
    for batch in BatchIter::read_before(&read.bytes) {
        let unreadable = |reason: String| {
            tracing::warn!(topic = %partition.topic(), partition = partition.id(), %reason, "a Kafka fetch cannot send a stored batch");
            ResponseError::KafkaStorageError.code()
        };
        let batch = batch.map_err(|error| unreadable(error.to_string()))?;
        if batch.header().version == BATCH_VERSION {
            return Err(unreadable(
                "it is in format version 1, which has no Kafka form".to_owned(),
            ));
        }
        records.push(read.bytes.slice_ref(batch.kafka_bytes()));
    }
    Ok(records)
}

/// ListOffsets at `version` (the leader epoch exists from version 4: 0, the only term there is).
pub(super) async fn list_offsets(
    shared: &Shared,
    caller: &Caller,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let leader_epoch = if version >= 4 { 0 } else { -1 };
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let found = shared.topic(caller, Action::Describe, topic.name.0.as_str());
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for asked in &topic.partitions {
            let answer = ListOffsetsPartitionResponse::default()
                .with_partition_index(asked.partition_index)
                .with_leader_epoch(leader_epoch);
            let partition = match &found {
                Ok(found) => u32::try_from(asked.partition_index)
                    .map_err(|_| ResponseError::UnknownTopicOrPartition.code())
                    .and_then(|i| found.partition(i).cloned().map_err(|e| error_code(&e))),
                Err(error) => Err(error_code(error)),
            };
            let answer = match partition {
                Err(code) => answer.with_error_code(code).with_offset(-1).with_timestamp(-1),
                Ok(partition) => match offset_for(&partition, asked.timestamp).await {
                    Ok((offset, timestamp)) => answer.with_offset(offset).with_timestamp(timestamp),
                    Err(code) => answer.with_error_code(code).with_offset(-1).with_timestamp(-1),
                },
            };
            partitions.push(answer);
        }
        topics.push(
            ListOffsetsTopicResponse::default().with_name(topic.name).with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// The offset (and its record's timestamp) ListOffsets answers for `timestamp`: the log's
/// start for EARLIEST, its visible end for LATEST, else the first record at or after the
/// timestamp, or -1 (and timestamp -1) when there is none.
async fn offset_for(partition: &Arc<Partition>, timestamp: i64) -> Result<(i64, i64), i16> {
    let state = partition.state().map_err(|e| error_code(&e))?;
    match timestamp {
        EARLIEST => Ok((state.log_start_offset.0 as i64, -1)),
        LATEST => Ok((state.log_end_offset.0 as i64, -1)),
        at if at >= 0 => {
            let offset = partition
                .offset_for_timestamp(TimestampMs(at))
                .await
                .map_err(|e| error_code(&e))?;
            let end = partition.state().map_err(|e| error_code(&e))?.log_end_offset;
            if offset >= end {
                return Ok((-1, -1));
            }
            let read = partition.read(offset, 1).await.map_err(|e| error_code(&e))?;
            Ok((offset.0 as i64, record_timestamp(&read, offset).unwrap_or(at)))
        }
        _ => Err(ResponseError::InvalidRequest.code()),
    }
}

/// The timestamp of the record at `offset` in a read.
fn record_timestamp(read: &ReadBatches, offset: Offset) -> Option<i64> {
    let batch = BatchIter::read_before(&read.bytes).next()?.ok()?;
    let records = batch.records();
    records.iter().find_map(|record| {
        let record = record.ok()?;
        (record.offset == offset).then_some(record.timestamp.0)
    })
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::ResponseHeader;

    use super::*;

    /// The chunks are, byte for byte, what `kafka-protocol` encodes for the same answer with
    /// its records in place, in every version served.
    #[test]
    fn a_fetch_answer_in_chunks_is_the_encoded_answer() {
        let small = Bytes::from_static(b"a small batch");
        let large = Bytes::from(vec![7u8; ZERO_COPY_BYTES_MIN + 3]);
        let records = vec![vec![small.clone(), large.clone()], Vec::new(), vec![large.clone()]];
        let partition = |index: i32| {
            PartitionData::default()
                .with_partition_index(index)
                .with_high_watermark(10 + i64::from(index))
                .with_last_stable_offset(9)
                .with_log_start_offset(1)
                .with_aborted_transactions(Some(Vec::new()))
                .with_preferred_read_replica(BrokerId(-1))
                .with_records(Some(Bytes::new()))
        };
        let topic = |name: &str, partitions: Vec<PartitionData>| {
            FetchableTopicResponse::default()
                .with_topic(TopicName(kafka_protocol::protocol::StrBytes::from_string(
                    name.to_owned(),
                )))
                .with_partitions(partitions)
        };
        let response = FetchResponse::default().with_session_id(0).with_responses(vec![
            topic("first", vec![partition(0), partition(1).with_error_code(3)]),
            topic("second", vec![partition(0)]),
        ]);
        let header = ResponseHeader::default().with_correlation_id(42);
        for version in 4..=11 {
            let fetched = Fetched { response: response.clone(), records: records.clone() };
            let chunks = fetched.encode(version, &header, 0).unwrap();
            assert!(
                chunks.iter().any(|c| c.as_ptr() == large.as_ptr()),
                "the large one is sent as it is"
            );
            let mut whole = response.clone();
            let mut filled = records.iter();
            for topic in &mut whole.responses {
                for partition in &mut topic.partitions {
                    partition.records = Some(filled.next().unwrap().concat().into());
                }
            }
            let mut expected = BytesMut::new();
            expected.put_u32(0);
            header.encode(&mut expected, 0).unwrap();
            whole.encode(&mut expected, version).unwrap();
            let length = (expected.len() - 4) as u32;
            expected[..4].copy_from_slice(&length.to_be_bytes());
            assert_eq!(chunks.concat(), expected.to_vec(), "version {version}");
        }
    }
}
