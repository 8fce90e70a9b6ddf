//! The consume service: fetch (one read, long-polling when there is nothing yet) and
//! subscribe (replay, then follow).
//!
//! Both read the log by offset and wait on the partition's data-free notification, so what a
//! consumer sees is exactly what storage makes visible, and a slow subscriber falls behind
//! without skipping. A subscription reads the next chunk only when its bounded queue toward
//! the client has room: a client that stops reading stops the reads (flow control).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::limits::{SUBSCRIBE_QUEUE_DEPTH, SUBSCRIBE_READ_BYTES};
use bytes::Bytes;
use spool_broker::TopicName;
use spool_proto::limits::{FETCH_BYTES_DEFAULT, FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use spool_proto::v1::consume_service_server::ConsumeService;
use spool_proto::v1::start_position::Position;
use spool_proto::v1::{
    ConsumedRecord, Encoding, FetchRequest, FetchResponse, Header, SubscribeRequest,
    SubscribeResponse,
};
use spool_storage::batch::{BatchIter, BatchKind, share_or_copy};
use spool_storage::{Offset, ReadBatches, TimestampMs};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::auth::{Action, Caller, Resource};
use crate::error::{InvalidRequest, ServiceError};
use crate::metrics::Metrics;
use crate::partition::Partition;
use crate::replies::{Queued, Replies};
use crate::topic_table::TopicTable;

#[derive(Debug, Clone)]
pub(crate) struct ConsumeApi {
    pub(crate) topics: Arc<TopicTable>,
}

/// Whether answers carry decoded records or the stored batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    Records,
    RawBatches,
}

pub(crate) fn wire(encoding: i32) -> Result<Wire, InvalidRequest> {
    match Encoding::try_from(encoding) {
        Ok(Encoding::Unspecified | Encoding::Records) => Ok(Wire::Records),
        Ok(Encoding::RawBatch) => Ok(Wire::RawBatches),
        Err(_) => Err(InvalidRequest::UnknownEnumValue { field: "encoding", value: encoding }),
    }
}

/// Decodes the records at or after `from` in whole stored batches. Storage checked every
/// record before storing a batch, and every batch's CRC as it read it (a damaged batch is a
/// `ReadError::Damaged` before it gets here), so a record that does not decode is a bug,
/// reported, not skipped.
fn decode(
    partition: &Partition,
    bytes: &Bytes,
    from: Offset,
) -> Result<Vec<ConsumedRecord>, ServiceError> {
    let damaged = |error| {
        ServiceError::Internal(format!(
            "partition {} of topic {} holds a batch that fails its check: {error} (inspect it with `spool dump`)",
            partition.id(),
            partition.topic()
        ))
    };
    let mut records = Vec::new();
    for batch in BatchIter::read_before(bytes) {
        let batch = batch.map_err(damaged)?;
        // A replicated log's own entries (a leader's first, a membership), not records.
        if batch.header().entry.kind == BatchKind::Control {
            continue;
        }
        for record in batch.records().iter() {
            let record = record.map_err(damaged)?;
            if record.offset < from {
                continue;
            }
            let mut headers = Vec::new();
            for header in record.headers() {
                let header = header.map_err(damaged)?;
                headers.push(Header {
                    key: String::from_utf8_lossy(header.key).into_owned(),
                    value: header.value.map(|v| share_or_copy(bytes, v)),
                });
            }
            records.push(ConsumedRecord {
                offset: record.offset.0,
                timestamp_ms: record.timestamp.0,
                key: record.key.map(|k| share_or_copy(bytes, k)),
                value: record.value.map(|v| share_or_copy(bytes, v)),
                headers,
            });
        }
    }
    Ok(records)
}

/// Builds one answer from a read; `None` when it holds nothing at or after `from`.
pub(crate) fn answer(
    partition: &Partition,
    read: ReadBatches,
    from: Offset,
    wire: Wire,
) -> Result<SubscribeResponse, ServiceError> {
    partition.metrics.consumed(read.next_offset.0.saturating_sub(from.0), read.bytes.len());
    let (records, raw_batches) = match wire {
        Wire::Records => (decode(partition, &read.bytes, from)?, Bytes::new()),
        Wire::RawBatches => (Vec::new(), read.bytes),
    };
    Ok(SubscribeResponse {
        records,
        raw_batches,
        next_offset: read.next_offset.0,
        log_end_offset: read.log_end_offset.0,
    })
}

type SubscribeItems = Pin<Box<dyn Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

impl ConsumeApi {
    async fn fetch_inner(
        &self,
        caller: &Caller,
        request: FetchRequest,
    ) -> Result<FetchResponse, ServiceError> {
        caller.allow(Action::Consume, Resource::Topic(&request.topic))?;
        // What the request itself gets wrong comes first, whatever exists.
        TopicName::parse(&request.topic)?;
        let wire = wire(request.encoding)?;
        let max_bytes = match request.max_bytes {
            0 => FETCH_BYTES_DEFAULT,
            n if n <= FETCH_BYTES_MAX => n,
            max_bytes => {
                return Err(
                    InvalidRequest::FetchBytes { max_bytes, bytes_max: FETCH_BYTES_MAX }.into()
                );
            }
        };
        if request.max_wait_ms > FETCH_WAIT_MS_MAX {
            return Err(InvalidRequest::FetchWait {
                max_wait_ms: request.max_wait_ms,
                max_wait_ms_max: FETCH_WAIT_MS_MAX,
            }
            .into());
        }
        let partition =
            self.topics.partition_for_request(&request.topic, request.partition).await?;
        let offset = Offset(request.offset);
        let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
        let mut changes = partition.watch();
        let read = loop {
            changes.borrow_and_update();
            let read = partition.read(offset, max_bytes).await?;
            if !read.bytes.is_empty() || Instant::now() >= deadline {
                break read;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break read },
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.topics.streams_stop.cancelled() => break read,
            }
        };
        let log_start_offset = read.log_start_offset.0;
        let answer = answer(&partition, read, offset, wire)?;
        Ok(FetchResponse {
            records: answer.records,
            raw_batches: answer.raw_batches,
            next_offset: answer.next_offset,
            log_start_offset,
            log_end_offset: answer.log_end_offset,
        })
    }

    /// Resolves where a subscription starts.
    async fn start_offset(
        partition: &Arc<Partition>,
        position: Option<Position>,
    ) -> Result<Offset, ServiceError> {
        partition.refresh().await?;
        let state = partition.state()?;
        match position {
            None | Some(Position::Earliest(_)) => Ok(state.log_start_offset),
            Some(Position::Latest(_)) => Ok(state.log_end_offset),
            Some(Position::Offset(offset)) => {
                // Reading at it checks it against the log's range (OUT_OF_RANGE otherwise).
                partition.read(Offset(offset), 1).await?;
                Ok(Offset(offset))
            }
            Some(Position::TimestampMs(timestamp)) => {
                partition.offset_for_timestamp(TimestampMs(timestamp)).await
            }
        }
    }
}

/// Feeds one subscriber: read a chunk, queue it, repeat; wait for the partition's
/// notification at the end. Stops when the client goes away, at `end` if set, at shutdown
/// (UNAVAILABLE), when the topic is deleted (NOT_FOUND), or at the first error. The caller's
/// token and grant are checked again before every message.
///
/// Returns the status that ends the stream, if any: the subscription sends it after every
/// queued message, through a queue of its own, so it is never lost to a full queue (a
/// client that reads slowly still learns why its stream ended, and a following client
/// reconnects rather than taking the end for the partition's).
async fn feed(
    topics: Arc<TopicTable>,
    caller: Caller,
    partition: Arc<Partition>,
    mut offset: Offset,
    end: Option<Offset>,
    wire: Wire,
    queue: mpsc::Sender<Queued>,
) -> Option<Status> {
    let stop = topics.streams_stop.clone();
    let mut changes = partition.watch();
    let _subscriber = partition.metrics.subscriber();
    loop {
        if end.is_some_and(|end| offset >= end) {
            return None;
        }
        changes.borrow_and_update();
        let read = match partition.read(offset, SUBSCRIBE_READ_BYTES).await {
            Ok(read) => read,
            Err(error) => return Some(error.into()),
        };
        if read.bytes.is_empty() {
            // A token revoked while nothing arrives ends the stream now, not at the next
            // record: each wait checks the grant first and ends at the token file's reload.
            let mut reloads = caller.watch_reloads();
            if let Err(error) =
                caller.allow(Action::Consume, Resource::Topic(partition.topic().as_str()))
            {
                return Some(ServiceError::from(error).into());
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    // The partition's writer is gone: its topic was deleted.
                    return Some(ServiceError::TopicDeleted { topic: partition.topic().clone() }.into());
                },
                () = reloads.next() => {}
                _ = queue.closed() => return None,
                _ = stop.cancelled() => return Some(ServiceError::ShuttingDown.into()),
            }
            continue;
        }
        if let Err(error) =
            caller.allow(Action::Consume, Resource::Topic(partition.topic().as_str()))
        {
            return Some(ServiceError::from(error).into());
        }
        let buffered = topics.metrics.buffered(read.bytes.len() as u64);
        let from = offset;
        offset = read.next_offset;
        let message = match answer(&partition, read, from, wire) {
            Ok(message) => Ok(message),
            Err(error) => Err(Status::from(error)),
        };
        let failed = message.is_err();
        let Some(permit) = reserve_queued(&queue, &topics.metrics, &stop).await else {
            return stop.is_cancelled().then(|| ServiceError::ShuttingDown.into());
        };
        permit.send((message, Some(buffered)));
        if failed {
            return None;
        }
    }
}

/// A place in a subscriber's queue: at once when there is room, else once its client has
/// taken something, counted meanwhile as a subscriber waiting on its client. `None` when the
/// receiver is gone or shutdown has begun: the subscription ends. Shared by the gRPC and the
/// browser subscriptions.
pub(crate) async fn reserve_queued<'a, T>(
    queue: &'a mpsc::Sender<T>,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Option<mpsc::Permit<'a, T>> {
    match queue.try_reserve() {
        Ok(permit) => Some(permit),
        Err(mpsc::error::TrySendError::Closed(())) => None,
        Err(mpsc::error::TrySendError::Full(())) => {
            let _waiting = metrics.waiting_on_client();
            tokio::select! {
                permit = queue.reserve() => permit.ok(),
                () = stop.cancelled() => None,
            }
        }
    }
}

#[tonic::async_trait]
impl ConsumeService for ConsumeApi {
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(self.fetch_inner(&caller, request.into_inner()).await?))
    }

    type SubscribeStream = SubscribeItems;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        caller
            .allow(Action::Consume, Resource::Topic(&request.topic))
            .map_err(ServiceError::from)?;
        TopicName::parse(&request.topic).map_err(ServiceError::from)?;
        let wire = wire(request.encoding).map_err(ServiceError::from)?;
        let partition =
            self.topics.partition_for_request(&request.topic, request.partition).await?;
        let start = Self::start_offset(&partition, request.start.and_then(|s| s.position)).await?;
        let end = if request.stop_at_end { Some(partition.state()?.log_end_offset) } else { None };
        let (queue, messages) = mpsc::channel(SUBSCRIBE_QUEUE_DEPTH);
        // The status that ends the stream, sent after every queued message (see `feed`).
        let (ending, ended) = mpsc::channel::<Queued>(1);
        let topics = self.topics.clone();
        tokio::spawn(async move {
            if let Some(status) = feed(topics, caller, partition, start, end, wire, queue).await {
                let _ = ending.try_send((Err(status), None));
            }
        });
        let answers = ReceiverStream::new(messages).chain(ReceiverStream::new(ended));
        // tonic gets no messages: `RawReplies` sends these without copying their batches.
        let mut response = Response::new(Box::pin(tokio_stream::empty()) as SubscribeItems);
        response.extensions_mut().insert(Replies::new(answers));
        Ok(response)
    }
}
