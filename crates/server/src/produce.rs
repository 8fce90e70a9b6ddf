//! The produce service: checks a request at the edge, routes its records to partitions,
//! encodes them into stored batches, queues them for the partitions' writers and waits for
//! the acknowledgement level asked for.

use std::pin::Pin;
use std::sync::Arc;

use crate::limits::PRODUCE_STREAM_ANSWERS_QUEUED_MAX;
use bytes::{Bytes, BytesMut};
use spool_broker::TopicName;
use spool_proto::Acks;
use spool_proto::limits::PRODUCE_STREAM_IN_FLIGHT_MAX;
use spool_proto::limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, RECORD_HEADERS_MAX, TIMESTAMP_MS_MAX,
};
use spool_proto::partitioner::partition_for_key;
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_server::ProduceService;
use spool_proto::v1::produce_stream_response::Result as StreamResult;
use spool_proto::v1::{
    Acks as WireAcks, InitProducerRequest, InitProducerResponse, PartitionAppend, ProduceError,
    ProduceRequest, ProduceResponse, ProduceStreamResponse, Record,
};
use spool_storage::batch::{BatchBuilder, CheckedBatch, Codec, Header, ProducerStamp};
use spool_storage::{Appended, FsyncPolicy, TimestampMs};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Action, AuthError, Caller, Resource};
use crate::error::{InvalidRequest, ServiceError, to_status};
use crate::idempotence::{ProducerIds, sequenced};
use crate::topic_table::{Topic, TopicTable};

#[derive(Debug, Clone)]
pub(crate) struct ProduceApi {
    pub(crate) topics: Arc<TopicTable>,
    pub(crate) producer_ids: Arc<ProducerIds>,
}

/// Batches queued for their partitions, whose answers are still to come.
struct Pending {
    acks: Acks,
    answers: Vec<(u32, oneshot::Receiver<Result<Appended, ServiceError>>)>,
}

impl Pending {
    /// Waits for every partition's answer. With `acks=none` nothing is awaited.
    async fn wait(self) -> Result<ProduceResponse, ServiceError> {
        let mut appends = Vec::with_capacity(self.answers.len());
        if self.acks == Acks::None {
            return Ok(ProduceResponse { appends });
        }
        for (partition, answer) in self.answers {
            let appended = answer.await.map_err(|_| ServiceError::ShuttingDown)??;
            appends.push(PartitionAppend {
                partition,
                base_offset: appended.base_offset.0,
                last_offset: appended.last_offset.0,
            });
        }
        Ok(ProduceResponse { appends })
    }

    /// Waits for every answer only to find a failure (for `acks=none` on a stream).
    async fn first_failure(self) -> Option<ServiceError> {
        for (_, answer) in self.answers {
            match answer.await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => return Some(error),
                Err(_) => return Some(ServiceError::ShuttingDown),
            }
        }
        None
    }
}

/// The level a request's `acks` asks for, with `ACKS_UNSPECIFIED` resolved for its topic.
fn ack_level(acks: WireAcks, topic: &Topic) -> Result<Acks, ServiceError> {
    let never = topic.config().fsync() == FsyncPolicy::Never;
    match (acks, never) {
        (WireAcks::None, _) => Ok(Acks::None),
        (WireAcks::Leader, _) | (WireAcks::Unspecified, true) => Ok(Acks::Leader),
        (WireAcks::All | WireAcks::Unspecified, false) => Ok(Acks::All),
        (WireAcks::All, true) => {
            Err(ServiceError::AcksAllWithoutFsync { topic: topic.name.clone() })
        }
    }
}

/// Checks every record against the limits, so what reaches storage is well-formed.
fn check_records(records: &[Record]) -> Result<(), InvalidRequest> {
    if records.is_empty() {
        return Err(InvalidRequest::NoRecords);
    }
    if records.len() > BATCH_RECORDS_MAX as usize {
        return Err(InvalidRequest::TooManyRecords {
            records: records.len(),
            records_max: BATCH_RECORDS_MAX,
        });
    }
    for (index, record) in records.iter().enumerate() {
        if record.headers.len() > RECORD_HEADERS_MAX as usize {
            return Err(InvalidRequest::TooManyHeaders {
                index,
                headers: record.headers.len(),
                headers_max: RECORD_HEADERS_MAX,
            });
        }
        if let Some(timestamp_ms) = record.timestamp_ms
            && !(0..=TIMESTAMP_MS_MAX).contains(&timestamp_ms)
        {
            return Err(InvalidRequest::BadTimestamp {
                index,
                timestamp_ms,
                timestamp_ms_max: TIMESTAMP_MS_MAX,
            });
        }
    }
    Ok(())
}

/// Encodes the records routed to `partition` into one batch, compressed with `codec`.
/// Allocates the batch buffer and one reused header list, nothing per record.
fn encode(
    records: &[Record],
    routes: Option<&[u32]>,
    partition: u32,
    now: TimestampMs,
    producer: ProducerStamp,
    codec: Codec,
) -> Result<Bytes, InvalidRequest> {
    let mut builder = BatchBuilder::new(BytesMut::new());
    let mut headers: Vec<Header<'_>> = Vec::with_capacity(RECORD_HEADERS_MAX as usize);
    for (index, record) in records.iter().enumerate() {
        if routes.is_some_and(|routes| routes[index] != partition) {
            continue;
        }
        headers.clear();
        headers.extend(record.headers.iter().map(|h| Header::new(&h.key, h.value.as_deref())));
        let timestamp = record.timestamp_ms.map_or(now, TimestampMs);
        builder.push(timestamp, record.key.as_deref(), record.value.as_deref(), &headers);
        check_batch_bytes(&builder, partition)?;
    }
    Ok(builder.finish_compressed(producer, codec).freeze())
}

/// Checks that the batch being built for `partition` is within the batch format's limit:
/// after every record pushed, so an oversized request is refused before it is all encoded.
/// Shared by the produce service and the browser listener's POST.
pub(crate) fn check_batch_bytes(
    builder: &BatchBuilder,
    partition: u32,
) -> Result<(), InvalidRequest> {
    let bytes = builder.encoded_bytes();
    if bytes > BATCH_BYTES_MAX as usize {
        return Err(InvalidRequest::BatchTooLarge { partition, bytes, bytes_max: BATCH_BYTES_MAX });
    }
    Ok(())
}

/// The stamp of an idempotent request in the records encoding, its fields checked (whether
/// the producer id was ever given out is checked after the topic is found).
fn producer_stamp(request: &ProduceRequest) -> Result<ProducerStamp, ServiceError> {
    let Some(stamp) = request.producer else {
        return Ok(ProducerStamp::NONE);
    };
    if request.partition.is_none() {
        return Err(
            InvalidRequest::IdempotentWithoutPartition { reason: "it sets `producer`" }.into()
        );
    }
    let producer_epoch = i16::try_from(stamp.producer_epoch)
        .ok()
        .filter(|epoch| *epoch >= 0)
        .ok_or(InvalidRequest::ProducerEpoch { epoch: stamp.producer_epoch })?;
    if stamp.base_sequence < 0 {
        return Err(InvalidRequest::BaseSequence { base_sequence: stamp.base_sequence }.into());
    }
    Ok(ProducerStamp {
        producer_id: stamp.producer_id,
        producer_epoch,
        base_sequence: stamp.base_sequence,
    })
}

impl ProduceApi {
    /// Checks, routes, encodes and queues a request; waits only for room in the queues.
    async fn submit(
        &self,
        caller: &Caller,
        request: ProduceRequest,
    ) -> Result<Pending, ServiceError> {
        caller.allow(Action::Produce, Resource::Topic(&request.topic))?;
        // What the request itself gets wrong comes first, whatever exists: a malformed request
        // to a missing topic is INVALID_ARGUMENT, not NOT_FOUND.
        TopicName::parse(&request.topic)?;
        let acks = WireAcks::try_from(request.acks)
            .map_err(|_| InvalidRequest::UnknownEnumValue { field: "acks", value: request.acks })?;
        match &request.payload {
            None => return Err(InvalidRequest::MissingPayload.into()),
            Some(Payload::Records(list)) => check_records(&list.records)?,
            Some(Payload::RawBatch(raw)) => {
                if raw.len() > BATCH_BYTES_MAX as usize {
                    return Err(InvalidRequest::BatchTooLarge {
                        partition: request.partition.unwrap_or(0),
                        bytes: raw.len(),
                        bytes_max: BATCH_BYTES_MAX,
                    }
                    .into());
                }
                if request.producer.is_some() {
                    return Err(InvalidRequest::ProducerWithRawBatch.into());
                }
            }
        }
        let producer = producer_stamp(&request)?;
        let topic = self.topics.topic_for_request(&request.topic, request.partition).await?;
        let acks = ack_level(acks, &topic)?;
        let explicit = match request.partition {
            Some(partition) => Some(topic.partition(partition)?.id()),
            None => None,
        };
        let partitions = topic.config().partitions();
        if request.producer.is_some() {
            self.producer_ids.check(producer.producer_id).await?;
        }
        // Every batch is checked here (CRC and every record), on the request's own task, before
        // any is queued: the partitions' writers append them without checking them again. A
        // topic that requires a codec gets its batches re-encoded here too, where needed.
        let required = topic.config().compression().required();
        let check = |partition: u32, bytes: Bytes| {
            let checked = CheckedBatch::check(bytes);
            let checked = match required {
                Some(codec) => checked.and_then(|batch| batch.with_codec(codec)),
                None => checked,
            };
            checked.map_err(|error| ServiceError::append(&topic.name, partition, error.into()))
        };
        let batches: Vec<(u32, CheckedBatch<Bytes>)> = match request.payload {
            None => return Err(InvalidRequest::MissingPayload.into()),
            Some(Payload::RawBatch(raw)) => {
                let partition = explicit.unwrap_or_else(|| topic.round_robin.next(partitions));
                // The stamp is trusted only in a batch that checks (garbage is
                // INVALID_ARGUMENT, not an unknown producer), and stored as it came.
                let raw = check(partition, raw)?;
                if let Some(idempotent) = sequenced(&raw) {
                    if explicit.is_none() {
                        let reason = "a raw batch with a producer stamp";
                        return Err(InvalidRequest::IdempotentWithoutPartition { reason }.into());
                    }
                    self.producer_ids.check(idempotent.stamp.producer_id).await?;
                }
                vec![(partition, raw)]
            }
            Some(Payload::Records(list)) => {
                let records = &list.records;
                let now = TimestampMs::now();
                let encoded = |partition: u32, routes: Option<&[u32]>| {
                    let codec = required.unwrap_or(Codec::None);
                    let bytes = encode(records, routes, partition, now, producer, codec)?;
                    Ok::<_, ServiceError>((partition, check(partition, bytes)?))
                };
                match explicit {
                    Some(partition) => vec![encoded(partition, None)?],
                    None => {
                        // Keyless records of one request go together to one partition.
                        let keyless = topic.round_robin.next(partitions);
                        let routes: Vec<u32> = records
                            .iter()
                            .map(|r| match &r.key {
                                Some(key) => partition_for_key(key, partitions),
                                None => keyless,
                            })
                            .collect();
                        let mut targets = routes.clone();
                        targets.sort_unstable();
                        targets.dedup();
                        let batches: Result<Vec<_>, ServiceError> =
                            targets.into_iter().map(|p| encoded(p, Some(&routes))).collect();
                        batches?
                    }
                }
            }
        };
        let mut answers = Vec::with_capacity(batches.len());
        for (partition, batch) in batches {
            let answer = topic.partitions[partition as usize].submit(batch, acks).await?;
            answers.push((partition, answer));
        }
        Ok(Pending { acks, answers })
    }
}

type ProduceStreamItems = Pin<Box<dyn Stream<Item = Result<ProduceStreamResponse, Status>> + Send>>;

fn stream_error(correlation_id: u64, error: &ServiceError) -> ProduceStreamResponse {
    let status = to_status(error);
    ProduceStreamResponse {
        correlation_id,
        result: Some(StreamResult::Error(ProduceError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        })),
    }
}

#[tonic::async_trait]
impl ProduceService for ProduceApi {
    async fn init_producer(
        &self,
        request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        Caller::of(&request).check_token().map_err(ServiceError::from)?;
        let producer_id = self.producer_ids.allocate().await?;
        Ok(Response::new(InitProducerResponse { producer_id, producer_epoch: 0 }))
    }

    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let caller = Caller::of(&request);
        let pending = self.submit(&caller, request.into_inner()).await?;
        Ok(Response::new(pending.wait().await?))
    }

    type ProduceStreamStream = ProduceStreamItems;

    /// Two tasks: one reads requests and queues their batches (it stops reading while
    /// `PRODUCE_STREAM_IN_FLIGHT_MAX` answers are outstanding), the other waits for the
    /// answers in order and sends them back.
    async fn produce_stream(
        &self,
        request: Request<Streaming<ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let caller = Caller::of(&request);
        let mut requests = request.into_inner();
        let (in_flight, mut in_flight_rx) =
            mpsc::channel::<(u64, Result<Pending, ServiceError>)>(PRODUCE_STREAM_IN_FLIGHT_MAX);
        let (answers, answers_rx) = mpsc::channel(PRODUCE_STREAM_ANSWERS_QUEUED_MAX);
        let api = self.clone();
        let stop = self.topics.streams_stop.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = stop.cancelled() => break,
                    next = requests.message() => next,
                };
                match next {
                    Ok(Some(request)) => {
                        let correlation_id = request.correlation_id;
                        // The token is checked again for every message: a revoked one ends
                        // the stream.
                        let pending = api.submit(&caller, request).await;
                        let revoked =
                            matches!(pending, Err(ServiceError::Auth(AuthError::UnknownToken)));
                        if in_flight.send((correlation_id, pending)).await.is_err() || revoked {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "a produce stream ended with an error");
                        break;
                    }
                }
            }
        });
        tokio::spawn(async move {
            while let Some((correlation_id, pending)) = in_flight_rx.recv().await {
                let answer = match pending {
                    Err(error @ ServiceError::Auth(AuthError::UnknownToken)) => {
                        let _ = answers.send(Err(Status::from(error))).await;
                        break;
                    }
                    Err(error) => Some(stream_error(correlation_id, &error)),
                    Ok(pending) if pending.acks == Acks::None => pending
                        .first_failure()
                        .await
                        .map(|error| stream_error(correlation_id, &error)),
                    Ok(pending) => Some(match pending.wait().await {
                        Ok(ok) => ProduceStreamResponse {
                            correlation_id,
                            result: Some(StreamResult::Ok(ok)),
                        },
                        Err(error) => stream_error(correlation_id, &error),
                    }),
                };
                if let Some(answer) = answer
                    && answers.send(Ok(answer)).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answers_rx))))
    }
}
