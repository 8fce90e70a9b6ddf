//! The producer: records batched per partition, sent as stored batches over pipelined
//! produce streams (one per node it sends to), each record's offset (or error) reported back.
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
//!    [`ProducerConfig::batch_bytes_max`] bytes. Each stream's sender task hands its
//!    partitions' batches to it (see "Leaders" below):
//!    sealed ones first, and an open one once it is [`ProducerConfig::linger`] old. With a
//!    linger of zero an open batch goes as soon as the sender has room, so batches grow by
//!    themselves while [`ProducerConfig::in_flight_max`] requests wait for answers.
//! 3. Each stream's receiver task takes its answers, which come in request order, and resolves each
//!    batch's outcome: every record's [`Delivery`] then yields its offset (the batch's base
//!    offset plus the record's index) or the batch's error. The batch's bytes go back to the
//!    buffer.
//!
//! # Leaders
//!
//! On a cluster every node takes every partition's writes, but a node that does not lead a
//! partition passes its batches on to the leader: one hop more. So the producer sends each
//! partition's batches to its leader's node, over a stream of their own (a lane), as a Kafka
//! producer does. It reads the leaders with the partition count (at start, every
//! [`ProducerConfig::metadata_max_age`], and a few times in the seconds after a stream
//! breaks, while an election may be on), and opens a lane to a node the first time it leads
//! one of the partitions. A partition moves to its new leader's lane only once none of its
//! batches is in flight on the old one, so moving keeps its order. A lane whose node fails
//! goes on through the client's other nodes, as the client's own stream does (see
//! [`crate::Nodes`]). Partitions whose leader is not known (a single node, an election, a
//! node registered at a wildcard address) go through the client's own nodes.
//! [`ProducerConfig::in_flight_max`] applies to each lane.
//!
//! # Ordering
//!
//! Records sent to one partition from one producer are stored in the order `send` returned:
//! a partition's batches are sealed and sent in order on one stream at a time, whose answers
//! come in order. With [`Acks::None`] nothing is answered, so a batch counts as answered when
//! it is sent: while a partition moves to a new leader's lane, its batches may be stored out
//! of order. A failed batch fails all its records; later batches of the same partition may
//! still be stored (the server answers each request on its own).
//!
//! # Retries and idempotence
//!
//! A plain producer never retries: when a stream breaks, every batch not yet answered (on any
//! stream) fails with [`ProduceError::Disconnected`] and the producer is closed. Such a batch may or may not
//! have been stored, so a caller that sends its records again may store them twice.
//!
//! An idempotent producer ([`ProducerConfig::idempotent`]) asks the server for a producer id
//! (`InitProducer`) and stamps each batch with it, an epoch and the sequence number of its
//! first record in its partition (stamped when the batch is first sent, in send order). On a
//! transient failure (the stream breaks or ends, an answer does not come within
//! [`ProducerConfig::request_timeout`], or the server answers `UNAVAILABLE` or
//! `RESOURCE_EXHAUSTED`) it opens a new stream and sends every batch that stream had
//! unanswered again, the same bytes with the same stamp, in the order they were first sent,
//! before anything new. The
//! server appends a stamp it has already appended only once and answers the retry with the
//! original offsets, so a network error never stores a record twice or out of order. Batches
//! of one partition in flight are capped at `IDEMPOTENT_BATCHES_IN_FLIGHT_MAX` (5), the number of
//! batches per producer the server remembers the offsets of.
//!
//! Reconnects back off from [`ProducerConfig::retry_backoff`], doubling up to 1 s. The
//! producer gives up, failing every unanswered batch with [`ProduceError::RetriesExhausted`]
//! and closing, after [`ProducerConfig::retries_max`] attempts in a row without an answer, or
//! once the oldest unanswered batch is older than [`ProducerConfig::delivery_timeout`]. Other errors (a refused batch, a sequence gap) fail
//! only their batch; the partition then starts a new epoch from sequence 0 once its batches in
//! flight are answered, so later batches are not refused for the gap.
//!
//! # Allocation
//!
//! Per record: nothing but the copy into the batch and one reference count (the
//! [`Delivery`]). Per batch: the batch buffer, its shared outcome and the request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use spool_proto::Acks;
use spool_proto::limits::{
    BATCH_BYTES_MAX, BATCH_RECORDS_MAX, IDEMPOTENT_BATCHES_IN_FLIGHT_MAX,
    PRODUCE_STREAM_IN_FLIGHT_MAX, RECORD_HEADERS_MAX, TIMESTAMP_MS_MAX,
};
use spool_proto::partitioner::partition_for_key;
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::produce_stream_response::Result as StreamResult;
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    DescribeTopicRequest, InitProducerRequest, ProduceRequest, ProduceStreamResponse,
};
use spool_storage::TimestampMs;
pub use spool_storage::batch::Codec;
pub use spool_storage::batch::Header;
use spool_storage::batch::{BATCH_HEADER_BYTES, BatchBuilder, ProducerStamp};
use tokio::sync::{Notify, Semaphore, SemaphorePermit, TryAcquireError, mpsc};
use tokio::time::Instant;
use tonic::{Code, Streaming};

use crate::Nodes;
use crate::error::{ErrorCode, ProduceError, ProducerError, ServerError};

mod accumulator;
mod sender;

use accumulator::*;
use sender::*;

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
    /// Requests sent and not yet answered, at most, on each stream (1..=256, the server's
    /// limit per stream): on a cluster the producer has one stream per partition leader's
    /// node (see the module docs).
    pub in_flight_max: usize,
    /// Bytes of records buffered or in flight, at most; [`Producer::send`] applies
    /// [`ProducerConfig::backpressure`] beyond it. At least `batch_bytes_max`.
    pub buffer_bytes_max: usize,
    /// Wait or fail when the buffer is full.
    pub backpressure: Backpressure,
    /// Stamp batches with a producer id, epoch and sequence numbers, and resend unanswered
    /// batches after a transient failure (see the module docs). Needs `acks` `Leader` or
    /// `All`.
    ///
    /// Off by default, unlike Kafka's producer (which turned it on in 3.0), for three reasons
    /// that are ours: it caps each partition at 5 batches in flight, which a pipelined
    /// single-partition producer (256 one-record requests in flight, the benchmark's best
    /// case) would feel; it is refused with [`Acks::None`], so turning it on by default would
    /// make `acks: None, ..default()` a configuration error; and it costs an `InitProducer`
    /// call (and, once per 1000 producers, an fsync on the server) at start. Turn it on
    /// wherever a duplicate after a network error matters.
    pub idempotent: bool,
    /// How long an answer may take while requests are in flight before the stream counts as
    /// broken (an idempotent producer then reconnects and resends; a plain one fails).
    pub request_timeout: Duration,
    /// Idempotent producers: reconnect attempts in a row, without an answer in between, before
    /// the producer gives up ([`ProduceError::RetriesExhausted`]). At least 1.
    pub retries_max: u32,
    /// Idempotent producers: the wait before the first reconnect; it doubles per attempt up
    /// to 1 s.
    pub retry_backoff: Duration,
    /// Idempotent producers: the longest a batch may stay unanswered, from the moment its
    /// first record was buffered, across every retry; past it the producer gives up.
    pub delivery_timeout: Duration,
    /// How each batch's records are compressed (Kafka's codecs: none, gzip, snappy, lz4,
    /// zstd). The server stores a batch as sent and consumers decompress it.
    pub compression: Codec,
    /// Send each partition's batches to its leader's node (see the module docs). Off: every
    /// batch goes through the client's own nodes, which pass each on to its leader, a hop
    /// more: for a client that can reach only the nodes it was given (behind a proxy, or
    /// where nodes registered addresses it cannot reach).
    pub follow_leaders: bool,
    /// How often the producer reads the topic's partition count and leaders again, so that
    /// partitions added to the topic take keyed and unkeyed records and batches go to each
    /// partition's leader (Kafka's `metadata.max.age.ms`); [`Producer::refresh_partitions`]
    /// reads them at once.
    pub metadata_max_age: Duration,
}

/// The longest wait between two reconnect attempts.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

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
            idempotent: false,
            request_timeout: Duration::from_secs(30),
            retries_max: 20,
            retry_backoff: Duration::from_millis(50),
            // Kafka's delivery.timeout.ms default.
            delivery_timeout: Duration::from_secs(120),
            compression: Codec::None,
            follow_leaders: true,
            metadata_max_age: Duration::from_secs(60),
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
        if self.idempotent && self.acks == Acks::None {
            return bad("an idempotent producer needs acks Leader or All: with acks None nothing \
                 is answered, so nothing could be retried"
                .into());
        }
        if self.retries_max == 0 {
            return bad("retries_max must be at least 1".into());
        }
        if self.metadata_max_age.is_zero() {
            return bad("metadata_max_age must be longer than zero".into());
        }
        if self.request_timeout.is_zero() || self.delivery_timeout.is_zero() {
            return bad("request_timeout and delivery_timeout must be longer than zero".into());
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

/// A record to send. It borrows its bytes: they are copied once, into the batch.
///
/// ```
/// use spool_client::{Header, Record};
/// let headers = [Header::new("trace", Some(b"x"))];
/// let record = Record::value(b"hello").with_key(b"user-7").with_headers(&headers);
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
            .map(|h| HEADER_BYTES_FIXED + h.key.len() + h.value.map_or(0, <[u8]>::len))
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
    /// Produce streams opened again after a transient failure (idempotent producers).
    pub reconnects: u64,
    /// Batches sent again on a new stream (idempotent producers).
    pub batches_resent: u64,
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

/// The producer id and epoch of an idempotent producer.
#[derive(Debug, Clone, Copy)]
struct Identity {
    producer_id: i64,
    epoch: i16,
}

#[derive(Debug)]
struct Shared {
    topic: String,
    config: ProducerConfig,
    /// Set when the producer is idempotent.
    identity: Option<Identity>,
    state: Mutex<State>,
    /// Bytes of the buffer; a record takes an upper bound of its size until its batch is
    /// answered.
    buffer: Semaphore,
    /// Where lanes to leaders' nodes are connected from, as the producer's client was.
    client: crate::Client,
    /// Tells the refresher that a lane broke: the partitions' leaders may have moved.
    leaders_stale: Notify,
    /// Held while the partitions and their leaders are read and followed, so that two
    /// readings do not open two lanes to one node.
    following: tokio::sync::Mutex<()>,
    /// The next request's correlation id, across streams.
    correlation_id: AtomicU64,
    batches_sent: AtomicU64,
    unacknowledged_failures: AtomicU64,
    reconnects: AtomicU64,
    batches_resent: AtomicU64,
    /// Buffers of batches answered, for the next batches to be built in.
    batch_buffers: Arc<BatchBuffers>,
}

/// The buffers of batches that were answered (or failed) and dropped, kept for the next
/// batches: a batch is built in memory the process has already touched, not in a fresh
/// allocation, which costs page faults once a batch outlives the allocator's reuse of it (a
/// batch stays in flight until answered, and goes to the socket as it is; see `crate::raw`).
/// At most [`BATCH_BUFFERS_KEPT`] are kept.
#[derive(Debug, Default)]
struct BatchBuffers {
    kept: Mutex<Vec<BytesMut>>,
}

/// See [`BatchBuffers`]: with as many batches in flight as answered, one comes back for each
/// one sent, so a few are enough.
const BATCH_BUFFERS_KEPT: usize = 4;

impl BatchBuffers {
    /// An empty buffer for a batch of about `capacity` bytes.
    fn take(&self, capacity: usize) -> BytesMut {
        match locked(&self.kept).pop() {
            Some(mut buffer) => {
                buffer.clear();
                buffer.reserve(capacity);
                buffer
            }
            None => BytesMut::with_capacity(capacity),
        }
    }

    /// `batch` as shared bytes whose buffer comes back here once the last of them is dropped.
    fn share(self: &Arc<Self>, batch: BytesMut) -> Bytes {
        Bytes::from_owner(KeptBuffer { bytes: batch, buffers: self.clone() })
    }
}

/// A batch's buffer on its way back to [`BatchBuffers`].
struct KeptBuffer {
    bytes: BytesMut,
    buffers: Arc<BatchBuffers>,
}

impl AsRef<[u8]> for KeptBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for KeptBuffer {
    fn drop(&mut self) {
        let mut kept = locked(&self.buffers.kept);
        if kept.len() < BATCH_BUFFERS_KEPT {
            kept.push(std::mem::take(&mut self.bytes));
        }
    }
}

/// A producer sends to at most this many leaders' nodes, each over its own stream; the
/// partitions of further nodes go through the client's own nodes, which pass them on.
const LEADER_LANES_MAX: usize = 64;

/// How long opening a stream to a leader's node may take (or the request timeout, if
/// shorter); its partitions stay where they are if it takes longer.
const LANE_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// After a lane breaks, the leaders are read again after these waits, while an election
/// may still be choosing the next one.
const LEADERS_STALE_REREADS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

fn produce_client(transport: crate::Transport) -> ProduceServiceClient<crate::Transport> {
    ProduceServiceClient::new(transport)
        .max_encoding_message_size(spool_proto::limits::REQUEST_BYTES_MAX)
        .max_decoding_message_size(spool_proto::limits::RESPONSE_BYTES_MAX)
}

/// Reads the topic's partitions, grows the producer's to their count and sends each to its
/// leader's node from its next batch on; the count.
async fn read_partitions(
    shared: &Arc<Shared>,
    mut topics: TopicServiceClient<crate::Transport>,
) -> Result<u32, ProducerError> {
    let _following = shared.following.lock().await;
    let request = DescribeTopicRequest { name: shared.topic.clone() };
    let described = topics.describe_topic(request).await?.into_inner();
    let topic = described.topic.unwrap_or_default();
    let partitions = topic.config.map_or(0, |c| c.partitions);
    let count = shared.grow_partitions(partitions);
    let leaders = topic.partitions.into_iter().map(|p| p.leader_address).collect();
    shared.follow_leaders(leaders).await;
    Ok(count)
}

impl Shared {
    /// Routes each partition to the lane of its leader's node (`leaders`, by partition),
    /// opening the lane first. A partition whose leader is unknown, or whose leader's lane
    /// cannot be opened, stays where it is. Called with `following` held.
    async fn follow_leaders(self: &Arc<Self>, leaders: Vec<Option<String>>) {
        if !self.config.follow_leaders {
            return;
        }
        let mut woken = Vec::new();
        let mut unreachable: Vec<String> = Vec::new();
        for (partition, address) in leaders.into_iter().enumerate() {
            let Some(address) = address else { continue };
            if unreachable.contains(&address) {
                continue;
            }
            let Some(lane) = self.lane_to(&address).await else {
                unreachable.push(address);
                continue;
            };
            let mut state = locked(&self.state);
            if state.closing {
                return;
            }
            if let Some(buffer) = state.partitions.get_mut(partition)
                && buffer.lane != lane.index
            {
                buffer.lane = lane.index;
                woken.push(lane);
            }
        }
        for lane in woken {
            lane.wake.notify_one();
        }
    }

    /// The lane to the node serving clients at `address`, opened now if there is none; `None`
    /// when it cannot be (too many lanes, an address no client can reach, a node that does
    /// not answer).
    async fn lane_to(self: &Arc<Self>, address: &str) -> Option<Arc<Lane>> {
        {
            let state = locked(&self.state);
            if state.closing || state.failed.is_some() {
                return None;
            }
            if let Some(lane) = state.lanes.iter().find(|lane| lane.goes_to(address)) {
                return Some(lane.clone());
            }
            let ended = state.lanes.iter().any(|lane| lane.ended.load(Ordering::Acquire));
            if state.lanes.len() > LEADER_LANES_MAX && !ended {
                return None;
            }
        }
        let to_leader = self.client.preferring(address)?;
        let nodes = to_leader.nodes().clone();
        let mut client = produce_client(to_leader.transport());
        let opening = open_stream(&mut client, self.config.in_flight_max);
        let patience = self.config.request_timeout.min(LANE_OPEN_TIMEOUT);
        let (requests, answers) = match tokio::time::timeout(patience, opening).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(status)) => {
                tracing::debug!(topic = %self.topic, address, %status, "a stream to a leader's node did not open; its partitions go on where they are");
                return None;
            }
            Err(_elapsed) => {
                tracing::debug!(topic = %self.topic, address, "a stream to a leader's node did not open in time; its partitions go on where they are");
                return None;
            }
        };
        let lane = {
            let mut state = locked(&self.state);
            let ended = state.lanes.iter().position(|lane| lane.ended.load(Ordering::Acquire));
            let index = ended.unwrap_or(state.lanes.len());
            let leader = Some((address.to_owned(), nodes));
            let lane = Lane::new(index, leader, self.config.in_flight_max);
            match ended {
                Some(index) => state.lanes[index] = lane.clone(),
                None => state.lanes.push(lane.clone()),
            }
            lane
        };
        tokio::spawn(run(self.clone(), lane.clone(), client, requests, answers));
        Some(lane)
    }
}

/// Reads the topic's partitions and leaders again every [`ProducerConfig::metadata_max_age`],
/// and soon after a lane breaks, until the producer is gone or closing. A failed read is
/// tried again at the next one.
async fn refresh_partitions_every(
    shared: std::sync::Weak<Shared>,
    topics: TopicServiceClient<crate::Transport>,
) {
    let Some(age) = shared.upgrade().map(|shared| shared.config.metadata_max_age) else {
        return;
    };
    let mut rereads: &[Duration] = &[];
    loop {
        let stale = async {
            match shared.upgrade() {
                Some(shared) => shared.leaders_stale.notified().await,
                None => std::future::pending().await,
            }
        };
        match rereads.split_first() {
            Some((wait, rest)) => {
                tokio::time::sleep(*wait).await;
                rereads = rest;
            }
            None => tokio::select! {
                () = tokio::time::sleep(age) => {}
                () = stale => rereads = &LEADERS_STALE_REREADS,
            },
        }
        let Some(shared) = shared.upgrade() else { return };
        if locked(&shared.state).closing {
            return;
        }
        if let Err(error) = read_partitions(&shared, topics.clone()).await {
            tracing::debug!(topic = %shared.topic, %error, "reading the topic's partitions failed; trying again later");
        }
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sends records to one topic. Cheap to clone: clones share the buffer and the streams.
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
    topics: TopicServiceClient<crate::Transport>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_close();
    }
}

impl Producer {
    pub(crate) async fn start(
        client: &crate::Client,
        described: crate::TopicInfo,
        config: ProducerConfig,
    ) -> Result<Producer, ProducerError> {
        config.check()?;
        let transport = client.transport();
        let topics = TopicServiceClient::new(transport.clone());
        let mut produce = produce_client(transport);
        let identity = if config.idempotent {
            let answer = produce.init_producer(InitProducerRequest {}).await?.into_inner();
            let epoch = i16::try_from(answer.producer_epoch).map_err(|_| {
                ProducerError::Rejected(ServerError {
                    code: ErrorCode::Internal,
                    message: format!("InitProducer answered epoch {}", answer.producer_epoch),
                })
            })?;
            Some(Identity { producer_id: answer.producer_id, epoch })
        } else {
            None
        };
        let (requests, answers) = open_stream(&mut produce, config.in_flight_max).await?;
        let sequence = Sequence { epoch: identity.map_or(0, |i| i.epoch), next: 0, restart: false };
        let first = Lane::new(0, None, config.in_flight_max);
        let shared = Arc::new(Shared {
            topic: described.name.clone(),
            identity,
            state: Mutex::new(State {
                partitions: (0..described.partitions)
                    .map(|_| PartitionBuffer { sequence, ..PartitionBuffer::default() })
                    .collect(),
                lanes: vec![first.clone()],
                sticky: 0,
                next_pick: 0,
                closing: false,
                failed: None,
            }),
            buffer: Semaphore::new(config.buffer_bytes_max),
            client: client.clone(),
            leaders_stale: Notify::new(),
            following: tokio::sync::Mutex::new(()),
            correlation_id: AtomicU64::new(1),
            batches_sent: AtomicU64::new(0),
            unacknowledged_failures: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            batches_resent: AtomicU64::new(0),
            batch_buffers: Arc::default(),
            config,
        });
        tokio::spawn(run(shared.clone(), first, produce, requests, answers));
        let leaders = described.partition_states.into_iter().map(|p| p.leader_address).collect();
        shared.follow_leaders(leaders).await;
        tokio::spawn(refresh_partitions_every(Arc::downgrade(&shared), topics.clone()));
        Ok(Producer { handle: Arc::new(Handle { shared, topics }) })
    }

    /// The producer id the server gave this producer, when it is idempotent.
    pub fn producer_id(&self) -> Option<i64> {
        self.handle.shared.identity.map(|identity| identity.producer_id)
    }

    /// The topic's partition count, as last read (see [`ProducerConfig::metadata_max_age`]).
    pub fn partitions(&self) -> u32 {
        self.handle.shared.partition_count()
    }

    /// Reads the topic's partition count and leaders now: if the topic has grown, sends to
    /// the new partitions from the next record on, and sends each partition's next batches
    /// to its leader's node; returns the count.
    pub async fn refresh_partitions(&self) -> Result<u32, ProducerError> {
        read_partitions(&self.handle.shared, self.handle.topics.clone()).await
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
            reconnects: shared.reconnects.load(Ordering::Relaxed),
            batches_resent: shared.batches_resent.load(Ordering::Relaxed),
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
        shared.append(record, bytes)
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
        shared.append(record, bytes)
    }

    /// Sends every buffered record now, without waiting for linger, and returns at once: for
    /// a caller that knows no more records are coming for a while (an interactive input with
    /// nothing more typed), so a long linger costs it nothing.
    pub fn send_buffered(&self) {
        let lanes = {
            let mut state = locked(&self.handle.shared.state);
            for buffer in &mut state.partitions {
                buffer.seal();
            }
            state.lanes.clone()
        };
        for lane in lanes {
            lane.wake.notify_one();
        }
    }

    /// Sends every buffered record now (without waiting for linger) and waits until every
    /// record sent before the call is answered. Errors of single records are reported by
    /// their [`Delivery`]; this fails only when the producer itself has failed.
    pub async fn flush(&self) -> Result<(), ProduceError> {
        let shared = &self.handle.shared;
        self.send_buffered();
        let newest: Vec<Arc<Outcome>> =
            locked(&shared.state).partitions.iter().filter_map(|b| b.newest.clone()).collect();
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
        if let Some(index) = record.headers.iter().position(|h| std::str::from_utf8(h.key).is_err())
        {
            return invalid(format!("header {index}'s name is not UTF-8"));
        }
        if let Some(timestamp_ms) = record.timestamp_ms
            && !(0..=TIMESTAMP_MS_MAX).contains(&timestamp_ms)
        {
            return invalid(format!(
                "timestamp {timestamp_ms} ms is outside 0 to {TIMESTAMP_MS_MAX}"
            ));
        }
        let partitions = self.handle.shared.partition_count();
        if let Some(partition) = record.partition
            && partition >= partitions
        {
            return Err(ProduceError::UnknownPartition {
                topic: self.handle.shared.topic.clone(),
                partition,
                partitions,
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
