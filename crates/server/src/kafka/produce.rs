//! Produce: each partition's records are one or more Kafka RecordBatch v2, checked and stored
//! as the gRPC raw path stores a raw batch (the bytes the client sent, stamped at append).
//!
//! Every batch of a partition is checked before any is queued, so a bad batch stores nothing
//! of that partition (CORRUPT_MESSAGE); other partitions of the request are independent, as in
//! Kafka. `acks` 0, 1 and -1 are Spool's none, leader and all; -1 on a topic whose fsync policy
//! is `never` is refused (INVALID_REQUIRED_ACKS), as gRPC refuses `acks=all` there.
//!
//! A connection's produces queue their batches in the order they were read (`InTurn`): a
//! client that pipelines produces to one partition gets them stored in the order it sent them,
//! as Kafka stores them; their waits for acknowledgement still overlap.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use spool_proto::Acks;
use spool_storage::batch::{BatchError, CheckedBatch};
use spool_storage::{Appended, FsyncPolicy};
use tokio::sync::oneshot;

use super::codes::error_code;
use super::{InTurn, Shared};
use crate::auth::{Action, Caller};
use crate::error::ServiceError;
use crate::idempotence::sequenced;
use crate::topic_table::Topic;

/// Kafka's RecordBatch v2 starts with `baseOffset` (8 bytes) and `batchLength` (4): the bytes
/// after that field.
const BATCH_LENGTH_END: usize = 12;

type Waiting = Vec<oneshot::Receiver<Result<Appended, ServiceError>>>;

/// Serves a produce; `None` for `acks=0`, which Kafka never answers.
pub(super) async fn produce(
    shared: &Shared,
    caller: &Caller,
    request: ProduceRequest,
    mut turn: InTurn,
) -> Option<ProduceResponse> {
    let acks = request.acks;
    turn.wait().await;
    let mut responses = Vec::with_capacity(request.topic_data.len());
    for topic_data in request.topic_data {
        let name = topic_data.name.0.as_str().to_owned();
        let topic = shared.topic(caller, Action::Produce, &name);
        let mut partitions = Vec::with_capacity(topic_data.partition_data.len());
        for data in topic_data.partition_data {
            let answer = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_log_append_time_ms(-1);
            let submitted = match &topic {
                Ok(topic) => submit(shared, topic, data.index, data.records, acks).await,
                Err(error) => Err(error_code(error)),
            };
            partitions.push((answer, submitted));
        }
        responses.push((topic_data.name, topic, partitions));
    }
    // Queued: the next produce of the connection may queue its batches.
    drop(turn);
    if acks == 0 {
        return None;
    }
    let mut answer = Vec::with_capacity(responses.len());
    for (name, topic, partitions) in responses {
        let mut answered = Vec::with_capacity(partitions.len());
        for (response, submitted) in partitions {
            let response = match submitted {
                Err(code) => response.with_error_code(code).with_base_offset(-1),
                Ok(waiting) => match wait(waiting).await {
                    Err(code) => response.with_error_code(code).with_base_offset(-1),
                    Ok(base_offset) => {
                        let log_start = topic
                            .as_ref()
                            .ok()
                            .and_then(|t| t.partition(response.index as u32).ok())
                            .and_then(|p| p.state().ok())
                            .map_or(-1, |state| state.log_start_offset.0 as i64);
                        response.with_base_offset(base_offset).with_log_start_offset(log_start)
                    }
                },
            };
            answered.push(response);
        }
        answer.push(
            TopicProduceResponse::default().with_name(name).with_partition_responses(answered),
        );
    }
    Some(ProduceResponse::default().with_responses(answer))
}

/// The first batch's base offset, once every batch of the partition is acknowledged.
async fn wait(waiting: Waiting) -> Result<i64, i16> {
    let mut base_offset = None;
    for answer in waiting {
        let appended = answer.await.map_err(|_| error_code(&ServiceError::ShuttingDown))?;
        let appended = appended.map_err(|error| error_code(&error))?;
        base_offset.get_or_insert(appended.base_offset.0 as i64);
    }
    Ok(base_offset.unwrap_or(-1))
}

/// Checks one partition's batches and queues them for its writer.
async fn submit(
    shared: &Shared,
    topic: &Topic,
    partition: i32,
    records: Option<Bytes>,
    acks: i16,
) -> Result<Waiting, i16> {
    let target = u32::try_from(partition)
        .map_err(|_| ResponseError::UnknownTopicOrPartition.code())
        .and_then(|p| topic.partition(p).map_err(|error| error_code(&error)))?;
    let never = topic.config().fsync() == FsyncPolicy::Never;
    let acks = match (acks, never) {
        (0, _) => Acks::None,
        (1, _) => Acks::Leader,
        (-1, false) => Acks::All,
        (-1, true) => {
            let error = ServiceError::AcksAllWithoutFsync { topic: topic.name.clone() };
            return Err(error_code(&error));
        }
        _ => return Err(ResponseError::InvalidRequiredAcks.code()),
    };
    let records = records.unwrap_or_default();
    let required = topic.config().compression().required();
    let invalid = |error: BatchError| {
        error_code(&ServiceError::append(&topic.name, target.id(), error.into()))
    };
    let mut batches = Vec::new();
    for bytes in split(records).map_err(invalid)? {
        let checked = CheckedBatch::check(bytes);
        let checked = match required {
            Some(codec) => checked.and_then(|batch| batch.with_codec(codec)),
            None => checked,
        };
        let checked = checked.map_err(invalid)?;
        if let Some(idempotent) = sequenced(&checked) {
            shared
                .producer_ids
                .check(idempotent.stamp.producer_id)
                .await
                .map_err(|error| error_code(&error.into()))?;
        }
        batches.push(checked);
    }
    let mut waiting = Vec::with_capacity(batches.len());
    for batch in batches {
        waiting.push(target.submit(batch, acks).await.map_err(|error| error_code(&error))?);
    }
    Ok(waiting)
}

/// The batches in a partition's records, each a slice of the request: one or more RecordBatch
/// v2 back to back, each as long as its `batchLength` says. None at all, or bytes left over
/// that are not a whole batch, is a corrupt message.
fn split(mut records: Bytes) -> Result<Vec<Bytes>, BatchError> {
    let mut batches = Vec::new();
    while !records.is_empty() {
        let end = records
            .get(8..BATCH_LENGTH_END)
            .map(|field| u32::from_be_bytes(field.try_into().expect("4 bytes")) as usize)
            .map(|length| BATCH_LENGTH_END + length)
            .filter(|end| *end <= records.len())
            .ok_or(BatchError::Truncated { bytes: records.len(), needed: BATCH_LENGTH_END })?;
        batches.push(records.split_to(end));
    }
    if batches.is_empty() {
        return Err(BatchError::Truncated { bytes: 0, needed: BATCH_LENGTH_END });
    }
    Ok(batches)
}
