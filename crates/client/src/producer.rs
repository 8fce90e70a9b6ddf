//! The producer: records batched per partition, sent as stored batches over one pipelined
//! produce stream, each record's offset (or error) reported back.
//!
//! # How a record travels
//!
//! 1. [`Producer::send`] checks the record against the server's limits, reserves an upper
//!    bound of its encoded size in the producer's buffer (waiting, or failing with
//!    [`ProduceError::BufferFull`], as [`Backpressure`] says), routes it to a partition and
//!    encodes it straight into that partition's open batch with
//!    [`spool_storage::batch::BatchBuilder`]: the bytes that travel are the bytes the log
//!    stores, so the server only verifies and appends them (`raw_batch` in the API).
//! 2. A batch is sealed when it reaches [`ProducerConfig::batch_records_max`] records or
//!    [`ProducerConfig::batch_bytes_max`] bytes. One sender task hands batches to the stream:
//!    sealed ones first, and an open one once it is [`ProducerConfig::linger`] old. With a
//!    linger of zero an open batch goes as soon as the sender has room, so batches grow by
//!    themselves while [`ProducerConfig::in_flight_max`] requests wait for answers.
//! 3. One receiver task takes the answers, which come in request order, and resolves each
//!    batch's outcome: every record's [`Delivery`] then yields its offset (the batch's base
//!    offset plus the record's index) or the batch's error. The batch's bytes go back to the
//!    buffer.
//!
//! # Ordering
//!
//! Records sent to one partition from one producer are stored in the order `send` returned:
//! a partition's batches are sealed and sent in order on one stream, whose answers come in
//! order, and nothing is retried. A failed batch fails all its records; later batches of the
//! same partition may still be stored (the server answers each request on its own).
//!
//! # Allocation
//!
//! Per record: nothing but the copy into the batch and one reference count (the
//! [`Delivery`]). Per batch: the batch buffer, its shared outcome and the request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use spool_broker::limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, PRODUCE_STREAM_IN_FLIGHT_MAX, RECORD_HEADERS_MAX,
    TIMESTAMP_MS_MAX,
};
use spool_broker::partitioner::partition_for_key;
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::produce_stream_response::Result as StreamResult;
use spool_proto::v1::{ProduceRequest, ProduceStreamResponse};
use spool_storage::TimestampMs;
use spool_storage::batch::{BATCH_HEADER_BYTES, BatchBuilder, HeaderPair, ProducerStamp};
use tokio::sync::{Notify, Semaphore, TryAcquireError, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::error::{ErrorCode, ProduceError, ProducerError, ServerError};

/// How much durability the producer waits for before a record counts as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Nothing is waited for: a record's [`Delivery`] resolves once its batch is handed to
    /// the stream, without an offset. Failures the server reports later are counted in
    /// [`ProducerStats::unacknowledged_failures`].
    None,
    /// Delivered once appended to the partition log (survives the server process crashing).
    Leader,
    /// Delivered once synced to disk under the topic's fsync policy. The default.
    #[default]
    All,
}

impl Acks {
    fn wire(self) -> spool_proto::v1::Acks {
        match self {
            Acks::None => spool_proto::v1::Acks::None,
            Acks::Leader => spool_proto::v1::Acks::Leader,
            Acks::All => spool_proto::v1::Acks::All,
        }
    }
}

/// What [`Producer::send`] does when the buffer has no room for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backpressure {
    /// Wait until acknowledged batches free enough room. The default.
    #[default]
    Wait,
    /// Fail at once with [`ProduceError::BufferFull`]; nothing is buffered.
    FailFast,
}

/// How a producer batches and how much it keeps in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// The acknowledgement level of every request.
    pub acks: Acks,
    /// A batch is sealed at this many records (1..=100000).
    pub batch_records_max: u32,
    /// A batch is sealed before it would pass this many bytes, header included
    /// (up to 8 MiB, the server's batch limit).
    pub batch_bytes_max: usize,
    /// How long an open batch waits for more records once the sender has room for it.
    /// Zero: it goes as soon as the sender is free.
    pub linger: Duration,
    /// Requests sent and not yet answered, at most (1..=256, the server's limit per stream).
    pub in_flight_max: usize,
    /// Bytes of records buffered or in flight, at most; [`Producer::send`] applies
    /// [`ProducerConfig::backpressure`] beyond it. At least `batch_bytes_max`.
    pub buffer_bytes_max: usize,
    /// Wait or fail when the buffer is full.
    pub backpressure: Backpressure,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            acks: Acks::All,
            batch_records_max: 10_000,
            batch_bytes_max: 1024 * 1024,
            linger: Duration::ZERO,
            in_flight_max: PRODUCE_STREAM_IN_FLIGHT_MAX,
            buffer_bytes_max: 64 * 1024 * 1024,
            backpressure: Backpressure::Wait,
        }
    }
}

impl ProducerConfig {
    fn check(&self) -> Result<(), ProducerError> {
        let bad = |reason: String| Err(ProducerError::BadConfig { reason });
        if !(1..=BATCH_RECORDS_MAX).contains(&self.batch_records_max) {
            return bad(format!(
                "batch_records_max {} is outside 1..={BATCH_RECORDS_MAX}",
                self.batch_records_max
            ));
        }
        let batch_bytes_min = BATCH_HEADER_BYTES + RECORD_BYTES_FIXED;
        if !(batch_bytes_min..=BATCH_BYTES_MAX as usize).contains(&self.batch_bytes_max) {
            return bad(format!(
                "batch_bytes_max {} is outside {batch_bytes_min}..={BATCH_BYTES_MAX}",
                self.batch_bytes_max
            ));
        }
        if !(1..=PRODUCE_STREAM_IN_FLIGHT_MAX).contains(&self.in_flight_max) {
            return bad(format!(
                "in_flight_max {} is outside 1..={PRODUCE_STREAM_IN_FLIGHT_MAX}",
                self.in_flight_max
            ));
        }
        if self.buffer_bytes_max < self.batch_bytes_max || self.buffer_bytes_max > BUFFER_BYTES_MAX
        {
            return bad(format!(
                "buffer_bytes_max {} is outside batch_bytes_max ({})..={BUFFER_BYTES_MAX}",
                self.buffer_bytes_max, self.batch_bytes_max
            ));
        }
        Ok(())
    }
}

/// The largest buffer a producer may be configured with (the semaphore's permits are bytes).
const BUFFER_BYTES_MAX: usize = 1 << 40;
/// An upper bound of a record's encoding beyond its key, value and headers: the length,
/// attributes, timestamp delta, offset delta, key and value lengths and header count.
const RECORD_BYTES_FIXED: usize = 5 + 1 + 10 + 5 + 5 + 5 + 2;
/// An upper bound of one header's encoding beyond its key and value: two lengths.
const HEADER_BYTES_FIXED: usize = 5 + 5;
/// A new batch buffer is sized for this many records like its first (or the batch limits,
/// if smaller), and grows past that.
const BATCH_BUFFER_RECORDS_INITIAL: usize = 1024;

/// One header of a record: a UTF-8 name and an optional value.
pub type Header<'a> = (&'a str, Option<&'a [u8]>);

/// A record to send. It borrows its bytes: they are copied once, into the batch.
///
/// ```
/// use spool_client::Record;
/// let record = Record::value(b"hello").with_key(b"user-7").with_headers(&[("trace", Some(b"x"))]);
/// assert_eq!(record.key, Some(&b"user-7"[..]));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record<'a> {
    /// The key; with no [`Record::partition`], it picks the partition (Kafka's murmur2).
    pub key: Option<&'a [u8]>,
    /// The value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Headers, at most 64, in order.
    pub headers: &'a [Header<'a>],
    /// Milliseconds since the Unix epoch; `None`: the time of `send`.
    pub timestamp_ms: Option<i64>,
    /// The partition; `None`: by the key's hash, or for records without a key, the partition
    /// whose batch is filling (it moves on when that batch is sealed).
    pub partition: Option<u32>,
}

impl<'a> Record<'a> {
    /// A record with this value and nothing else set.
    pub fn value(value: &'a [u8]) -> Record<'a> {
        Record { value: Some(value), ..Record::default() }
    }

    pub fn with_key(self, key: &'a [u8]) -> Record<'a> {
        Record { key: Some(key), ..self }
    }

    pub fn with_headers(self, headers: &'a [Header<'a>]) -> Record<'a> {
        Record { headers, ..self }
    }

    pub fn with_timestamp_ms(self, timestamp_ms: i64) -> Record<'a> {
        Record { timestamp_ms: Some(timestamp_ms), ..self }
    }

    pub fn with_partition(self, partition: u32) -> Record<'a> {
        Record { partition: Some(partition), ..self }
    }

    /// An upper bound of the record's encoded size.
    fn bytes_upper(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| HEADER_BYTES_FIXED + k.len() + v.map_or(0, <[u8]>::len))
            .sum();
        RECORD_BYTES_FIXED
            + self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
            + headers
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    /// The record's offset in its partition; `None` with [`Acks::None`].
    pub offset: Option<u64>,
}

/// Counters of a producer's life so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerStats {
    /// Requests (batches) sent.
    pub batches_sent: u64,
    /// Batches that failed after their records were already reported delivered
    /// ([`Acks::None`]).
    pub unacknowledged_failures: u64,
}

/// The shared outcome of one batch: its base offset, or why it failed.
#[derive(Debug)]
struct Outcome {
    partition: u32,
    result: OnceLock<Result<Option<u64>, ProduceError>>,
    resolved: Notify,
}

impl Outcome {
    fn new(partition: u32) -> Arc<Outcome> {
        Arc::new(Outcome { partition, result: OnceLock::new(), resolved: Notify::new() })
    }

    fn resolve(&self, result: Result<Option<u64>, ProduceError>) {
        let first = self.result.set(result).is_ok();
        assert!(first, "a batch is answered once");
        self.resolved.notify_waiters();
    }

    async fn wait(&self) -> &Result<Option<u64>, ProduceError> {
        loop {
            let notified = self.resolved.notified();
            tokio::pin!(notified);
            // Registered before the check, so a resolution in between is not missed.
            notified.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result;
            }
            notified.await;
        }
    }
}

/// The future outcome of one sent record.
#[derive(Debug, Clone)]
pub struct Delivery {
    outcome: Arc<Outcome>,
    index: u32,
}

impl Delivery {
    /// Waits until the record's batch is answered.
    pub async fn wait(self) -> Result<RecordMetadata, ProduceError> {
        let result = self.outcome.wait().await;
        self.metadata(result)
    }

    /// The outcome if it is known already.
    pub fn try_result(&self) -> Option<Result<RecordMetadata, ProduceError>> {
        self.outcome.result.get().map(|result| self.metadata(result))
    }

    /// The partition the record was routed to.
    pub fn partition(&self) -> u32 {
        self.outcome.partition
    }

    fn metadata(
        &self,
        result: &Result<Option<u64>, ProduceError>,
    ) -> Result<RecordMetadata, ProduceError> {
        match result {
            Ok(base) => Ok(RecordMetadata {
                partition: self.outcome.partition,
                offset: base.map(|base| base + u64::from(self.index)),
            }),
            Err(error) => Err(error.clone()),
        }
    }
}

/// A batch being filled.
#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    outcome: Arc<Outcome>,
    opened_at: Instant,
    bytes_reserved: usize,
}

/// A batch ready to send.
#[derive(Debug)]
struct Sealed {
    batch: BytesMut,
    outcome: Arc<Outcome>,
    bytes_reserved: usize,
}

#[derive(Debug, Default)]
struct PartitionBuffer {
    open: Option<OpenBatch>,
    sealed: VecDeque<Sealed>,
    /// The outcome of the newest batch, open or not: [`Producer::flush`] waits for it.
    newest: Option<Arc<Outcome>>,
}

impl PartitionBuffer {
    fn seal(&mut self) -> bool {
        match self.open.take() {
            Some(open) => {
                self.sealed.push_back(Sealed {
                    batch: open.builder.finish(ProducerStamp::NONE),
                    outcome: open.outcome,
                    bytes_reserved: open.bytes_reserved,
                });
                true
            }
            None => false,
        }
    }
}

#[derive(Debug)]
struct State {
    partitions: Vec<PartitionBuffer>,
    /// Where records without key or partition go while its batch fills.
    sticky: u32,
    /// Where the sender looks first next time, so no partition starves.
    next_pick: usize,
    /// No more records are taken; what is buffered is still sent.
    closing: bool,
    /// Why the producer stopped, once it has.
    failed: Option<ProduceError>,
}

/// A request sent and not yet answered.
#[derive(Debug)]
struct InFlight {
    correlation_id: u64,
    outcome: Arc<Outcome>,
    bytes_reserved: usize,
}

#[derive(Debug)]
struct Shared {
    topic: String,
    config: ProducerConfig,
    state: Mutex<State>,
    /// Bytes of the buffer; a record takes an upper bound of its size until its batch is
    /// answered.
    buffer: Semaphore,
    /// Requests the sender may still send before answers come back.
    in_flight_permits: Semaphore,
    in_flight: Mutex<VecDeque<InFlight>>,
    /// Tells the sender that a batch became ready, a linger timer starts, or the producer is
    /// closing.
    sender_wake: Notify,
    batches_sent: AtomicU64,
    unacknowledged_failures: AtomicU64,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends records to one topic. Cheap to clone: clones share the buffer and the stream.
///
/// Dropping the last clone sends what is buffered in the background and then ends the
/// stream; call [`Producer::close`] to wait for it.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    partitions: u32,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close();
    }
}

impl Producer {
    pub(crate) async fn start(
        channel: Channel,
        topic: String,
        partitions: u32,
        config: ProducerConfig,
    ) -> Result<Producer, ProducerError> {
        config.check()?;
        let (requests, requests_rx) = mpsc::channel(config.in_flight_max);
        let mut client = ProduceServiceClient::new(channel)
            .max_encoding_message_size(spool_broker::limits::REQUEST_BYTES_MAX)
            .max_decoding_message_size(spool_broker::limits::RESPONSE_BYTES_MAX);
        let answers = client.produce_stream(ReceiverStream::new(requests_rx)).await?.into_inner();
        let shared = Arc::new(Shared {
            topic,
            state: Mutex::new(State {
                partitions: (0..partitions).map(|_| PartitionBuffer::default()).collect(),
                sticky: 0,
                next_pick: 0,
                closing: false,
                failed: None,
            }),
            buffer: Semaphore::new(config.buffer_bytes_max),
            in_flight_permits: Semaphore::new(config.in_flight_max),
            in_flight: Mutex::new(VecDeque::with_capacity(config.in_flight_max)),
            sender_wake: Notify::new(),
            batches_sent: AtomicU64::new(0),
            unacknowledged_failures: AtomicU64::new(0),
            config,
        });
        tokio::spawn(run_sender(shared.clone(), requests));
        tokio::spawn(run_receiver(shared.clone(), answers));
        Ok(Producer { handle: Arc::new(Handle { shared, partitions }) })
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.handle.partitions
    }

    /// The configuration the producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.handle.shared.config
    }

    pub fn stats(&self) -> ProducerStats {
        let shared = &self.handle.shared;
        ProducerStats {
            batches_sent: shared.batches_sent.load(Ordering::Relaxed),
            unacknowledged_failures: shared.unacknowledged_failures.load(Ordering::Relaxed),
        }
    }

    /// Buffers one record; waits for room when the buffer is full and the producer was built
    /// with [`Backpressure::Wait`]. The returned [`Delivery`] tells the record's offset once
    /// its batch is answered.
    pub async fn send(&self, record: Record<'_>) -> Result<Delivery, ProduceError> {
        let shared = &self.handle.shared;
        let bytes = self.check(&record)?;
        if shared.config.backpressure == Backpressure::FailFast {
            return self.try_send(record);
        }
        shared.buffer.acquire_many(bytes as u32).await.map_err(|_| ProduceError::Closed)?.forget();
        shared.append(record, bytes, self.handle.partitions)
    }

    /// Buffers one record if there is room now, whatever the producer's [`Backpressure`];
    /// [`ProduceError::BufferFull`] otherwise.
    pub fn try_send(&self, record: Record<'_>) -> Result<Delivery, ProduceError> {
        let shared = &self.handle.shared;
        let bytes = self.check(&record)?;
        match shared.buffer.try_acquire_many(bytes as u32) {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::NoPermits) => {
                return Err(ProduceError::BufferFull { bytes_max: shared.config.buffer_bytes_max });
            }
            Err(TryAcquireError::Closed) => return Err(ProduceError::Closed),
        }
        shared.append(record, bytes, self.handle.partitions)
    }

    /// Sends every buffered record now (without waiting for linger) and waits until every
    /// record sent before the call is answered. Errors of single records are reported by
    /// their [`Delivery`]; this fails only when the producer itself has failed.
    pub async fn flush(&self) -> Result<(), ProduceError> {
        let shared = &self.handle.shared;
        let newest: Vec<Arc<Outcome>> = {
            let mut state = locked(&shared.state);
            for buffer in &mut state.partitions {
                buffer.seal();
            }
            state.partitions.iter().filter_map(|b| b.newest.clone()).collect()
        };
        shared.sender_wake.notify_one();
        for outcome in newest {
            outcome.wait().await;
        }
        match &locked(&shared.state).failed {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Flushes, then ends the produce stream. Later sends, from any clone, fail with
    /// [`ProduceError::Closed`].
    pub async fn close(&self) -> Result<(), ProduceError> {
        let flushed = self.flush().await;
        self.handle.shared.begin_close();
        flushed
    }

    /// Checks a record against the server's limits; returns an upper bound of its size.
    fn check(&self, record: &Record<'_>) -> Result<usize, ProduceError> {
        let invalid = |reason: String| Err(ProduceError::InvalidRecord { reason });
        if record.headers.len() > RECORD_HEADERS_MAX as usize {
            return invalid(format!(
                "{} headers; the limit is {RECORD_HEADERS_MAX}",
                record.headers.len()
            ));
        }
        if let Some(timestamp_ms) = record.timestamp_ms
            && !(0..=TIMESTAMP_MS_MAX).contains(&timestamp_ms)
        {
            return invalid(format!(
                "timestamp {timestamp_ms} ms is outside 0..={TIMESTAMP_MS_MAX}"
            ));
        }
        if let Some(partition) = record.partition
            && partition >= self.handle.partitions
        {
            return Err(ProduceError::UnknownPartition {
                topic: self.handle.shared.topic.clone(),
                partition,
                partitions: self.handle.partitions,
            });
        }
        let bytes = record.bytes_upper();
        let bytes_max = self.handle.shared.config.batch_bytes_max - BATCH_HEADER_BYTES;
        if bytes > bytes_max {
            return Err(ProduceError::RecordTooLarge { bytes, bytes_max });
        }
        Ok(bytes)
    }
}

impl Shared {
    /// Puts a checked record, whose buffer bytes are reserved, into its partition's batch.
    fn append(
        &self,
        record: Record<'_>,
        bytes: usize,
        partitions: u32,
    ) -> Result<Delivery, ProduceError> {
        let mut state = locked(&self.state);
        if let Some(error) = state.failed.clone() {
            drop(state);
            self.buffer.add_permits(bytes);
            return Err(error);
        }
        if state.closing {
            drop(state);
            self.buffer.add_permits(bytes);
            return Err(ProduceError::Closed);
        }
        let sticky = record.partition.is_none() && record.key.is_none();
        let partition = match (record.partition, record.key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => state.sticky,
        };
        let config = &self.config;
        let buffer = &mut state.partitions[partition as usize];
        let mut wake = false;
        if let Some(open) = &buffer.open
            && open.builder.encoded_bytes() + bytes > config.batch_bytes_max
        {
            wake |= buffer.seal();
        }
        let open = buffer.open.get_or_insert_with(|| {
            wake = true;
            let outcome = Outcome::new(partition);
            // Sized once for a batch of records like this one: growing a large batch by
            // doubling would copy it about once more.
            let records = (config.batch_records_max as usize).min(BATCH_BUFFER_RECORDS_INITIAL);
            let capacity = (BATCH_HEADER_BYTES + bytes * records).min(config.batch_bytes_max);
            OpenBatch {
                builder: BatchBuilder::new(BytesMut::with_capacity(capacity)),
                outcome,
                opened_at: Instant::now(),
                bytes_reserved: 0,
            }
        });
        if buffer.newest.as_ref().is_none_or(|newest| !Arc::ptr_eq(newest, &open.outcome)) {
            buffer.newest = Some(open.outcome.clone());
        }
        let index = open.builder.record_count();
        let timestamp = record.timestamp_ms.map_or_else(TimestampMs::now, TimestampMs);
        push(&mut open.builder, timestamp, &record);
        open.bytes_reserved += bytes;
        let delivery = Delivery { outcome: open.outcome.clone(), index };
        let full = open.builder.record_count() >= config.batch_records_max
            || open.builder.encoded_bytes() + RECORD_BYTES_FIXED >= config.batch_bytes_max;
        if full {
            wake |= buffer.seal();
        }
        if sticky && full && partitions > 1 {
            state.sticky = (state.sticky + 1) % partitions;
        }
        drop(state);
        if wake {
            self.sender_wake.notify_one();
        }
        Ok(delivery)
    }

    /// The next batch to send, sealing an open one whose linger is over; or, when there is
    /// none, when to look again (`None`: when woken).
    fn next_ready(&self, now: Instant) -> Next {
        let mut state = locked(&self.state);
        if state.failed.is_some() {
            return Next::Stop;
        }
        let closing = state.closing;
        let count = state.partitions.len();
        let start = state.next_pick;
        let mut deadline: Option<Instant> = None;
        for step in 0..count {
            let index = (start + step) % count;
            let buffer = &mut state.partitions[index];
            if buffer.sealed.is_empty()
                && let Some(open) = &buffer.open
            {
                let due = open.opened_at + self.config.linger;
                if closing || due <= now {
                    buffer.seal();
                } else {
                    deadline = Some(deadline.map_or(due, |d| d.min(due)));
                }
            }
            if let Some(sealed) = buffer.sealed.pop_front() {
                state.next_pick = (index + 1) % count;
                return Next::Send(index as u32, sealed);
            }
        }
        if closing { Next::Stop } else { Next::Wait(deadline) }
    }

    fn begin_close(&self) {
        locked(&self.state).closing = true;
        self.sender_wake.notify_one();
    }

    /// Stops the producer: every batch not yet answered fails with `error`.
    fn fail(&self, error: ProduceError) {
        let mut orphans: Vec<(Arc<Outcome>, usize)> = Vec::new();
        {
            let mut state = locked(&self.state);
            if state.failed.is_none() {
                state.failed = Some(error.clone());
            }
            for buffer in &mut state.partitions {
                buffer.seal();
                orphans.extend(buffer.sealed.drain(..).map(|s| (s.outcome, s.bytes_reserved)));
            }
        }
        orphans.extend(locked(&self.in_flight).drain(..).map(|f| (f.outcome, f.bytes_reserved)));
        for (outcome, bytes) in orphans {
            outcome.resolve(Err(error.clone()));
            self.buffer.add_permits(bytes);
        }
        self.in_flight_permits.close();
        self.sender_wake.notify_one();
    }
}

/// Encodes one record into a batch; headers go through a stack array, not an allocation.
fn push(builder: &mut BatchBuilder, timestamp: TimestampMs, record: &Record<'_>) {
    if record.headers.is_empty() {
        builder.push(timestamp, record.key, record.value, &[]);
        return;
    }
    let mut pairs: [HeaderPair<'_>; RECORD_HEADERS_MAX as usize] =
        [(&[], None); RECORD_HEADERS_MAX as usize];
    for (pair, (key, value)) in pairs.iter_mut().zip(record.headers) {
        *pair = (key.as_bytes(), *value);
    }
    builder.push(timestamp, record.key, record.value, &pairs[..record.headers.len()]);
}

enum Next {
    Send(u32, Sealed),
    Wait(Option<Instant>),
    Stop,
}

/// Takes ready batches and sends them, while fewer than `in_flight_max` wait for answers.
/// Ends the stream (by dropping `requests`) once the producer is closed and drained.
async fn run_sender(shared: Arc<Shared>, requests: mpsc::Sender<ProduceRequest>) {
    let acks = shared.config.acks;
    let mut correlation_id = 0u64;
    loop {
        match shared.in_flight_permits.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return,
        }
        let (partition, sealed) = loop {
            match shared.next_ready(Instant::now()) {
                Next::Send(partition, sealed) => break (partition, sealed),
                Next::Stop => return,
                Next::Wait(Some(deadline)) => tokio::select! {
                    _ = shared.sender_wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                },
                Next::Wait(None) => shared.sender_wake.notified().await,
            }
        };
        correlation_id += 1;
        let request = ProduceRequest {
            correlation_id,
            topic: shared.topic.clone(),
            partition: Some(partition),
            acks: acks.wire() as i32,
            payload: Some(Payload::RawBatch(sealed.batch.freeze())),
            producer: None,
        };
        if acks == Acks::None {
            // Nothing will be answered unless it fails: delivered on hand-off.
            sealed.outcome.resolve(Ok(None));
            shared.buffer.add_permits(sealed.bytes_reserved);
            shared.in_flight_permits.add_permits(1);
        } else {
            locked(&shared.in_flight).push_back(InFlight {
                correlation_id,
                outcome: sealed.outcome,
                bytes_reserved: sealed.bytes_reserved,
            });
        }
        shared.batches_sent.fetch_add(1, Ordering::Relaxed);
        if requests.send(request).await.is_err() {
            shared.fail(ProduceError::Disconnected(ServerError {
                code: ErrorCode::Unavailable,
                message: "the produce stream closed".into(),
            }));
            return;
        }
    }
}

/// Resolves each batch from its answer; answers come in request order.
async fn run_receiver(shared: Arc<Shared>, mut answers: Streaming<ProduceStreamResponse>) {
    let error = loop {
        let answer = match answers.message().await {
            Ok(Some(answer)) => answer,
            Ok(None) => {
                break ServerError {
                    code: ErrorCode::Unavailable,
                    message: "the server ended the produce stream".into(),
                };
            }
            Err(status) => break ServerError::from(status),
        };
        let result = match answer.result {
            Some(StreamResult::Ok(ok)) => match ok.appends.first() {
                Some(append) => Ok(Some(append.base_offset)),
                None => Ok(None),
            },
            Some(StreamResult::Error(error)) => Err(ProduceError::Rejected(ServerError {
                code: ErrorCode::from_i32(error.code),
                message: error.message,
            })),
            None => Err(ProduceError::Rejected(ServerError {
                code: ErrorCode::Internal,
                message: "an answer with no result".into(),
            })),
        };
        let front = {
            let mut in_flight = locked(&shared.in_flight);
            match in_flight.front() {
                Some(front) if front.correlation_id == answer.correlation_id => {
                    in_flight.pop_front()
                }
                _ => None,
            }
        };
        match front {
            Some(entry) => {
                entry.outcome.resolve(result);
                shared.buffer.add_permits(entry.bytes_reserved);
                shared.in_flight_permits.add_permits(1);
            }
            None if shared.config.acks == Acks::None => {
                if let Err(error) = result {
                    shared.unacknowledged_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %shared.topic, %error, "a batch sent with acks=none failed");
                }
            }
            None => {
                break ServerError {
                    code: ErrorCode::Internal,
                    message: format!(
                        "the server answered request {} out of order",
                        answer.correlation_id
                    ),
                };
            }
        }
    };
    let closed_cleanly = {
        let state = locked(&shared.state);
        state.closing && state.partitions.iter().all(|b| b.open.is_none() && b.sealed.is_empty())
    } && locked(&shared.in_flight).is_empty();
    if closed_cleanly {
        shared.fail(ProduceError::Closed);
    } else {
        shared.fail(ProduceError::Disconnected(error));
    }
}
