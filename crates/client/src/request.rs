//! Request-reply over the log: a [`Requester`] produces a request that names where its reply
//! goes, and a [`Responder`] (a consumer group, so responders scale out) produces the reply
//! there.
//!
//! # Headers
//!
//! | header | on | value |
//! |---|---|---|
//! | `spool-reply-to` ([`REPLY_TO_HEADER`]) | request | the topic the reply goes to (UTF-8) |
//! | `spool-reply-partition` ([`REPLY_PARTITION_HEADER`]) | request | the partition of that topic, in decimal (absent: 0) |
//! | `spool-correlation-id` ([`CORRELATION_ID_HEADER`]) | request and reply | an opaque id the requester chose, copied into the reply |
//! | `spool-error` ([`ERROR_HEADER`]) | reply | present when the responder failed: why, for a person |
//!
//! Any client that sets and reads these headers takes part; nothing on the server knows them.
//!
//! # Delivery
//!
//! A request is stored (`acks=all`) before the requester waits. A responder commits a request
//! only after its reply is stored, so a responder that crashes in between makes another one
//! answer it again: a requester may see more than one reply for an id (it takes the first).
//! Replies are records like any other: they survive the requester going away. A
//! [`PendingReply`] says where to look (the reply partition's end offset from before the
//! request was sent), so a requester that reconnects, or a new process, still finds the reply
//! with [`Requester::wait`].
//!
//! Each wait reads the reply partition from that offset and skips other requests' replies:
//! give requesters that run many requests at once a reply partition (or topic) of their own.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use spool_storage::batch::share_or_copy;
use thiserror::Error;

use crate::error::{
    AdminError, ConsumeError, ErrorCode, GroupError, ProduceError, ProducerError, ServerError,
};
use crate::group::{GroupConfig, GroupRecord};
use crate::producer::{Header, Producer, ProducerConfig, Record};
use crate::{Client, Follow, StartAt};

/// The header naming the topic a reply goes to.
pub const REPLY_TO_HEADER: &str = "spool-reply-to";
/// The header naming the partition of the reply topic, in decimal; absent means 0.
pub const REPLY_PARTITION_HEADER: &str = "spool-reply-partition";
/// The header that ties a reply to its request.
pub const CORRELATION_ID_HEADER: &str = "spool-correlation-id";
/// The header on a reply whose responder failed: the reason.
pub const ERROR_HEADER: &str = "spool-error";

/// Headers the requester adds to a request.
const REQUEST_HEADERS: usize = 3;
/// Reply producers a responder keeps open (one per reply topic); beyond, it starts over.
const REPLY_PRODUCERS_MAX: usize = 64;

/// Why a request got no reply, or a responder stopped.
#[derive(Debug, Error)]
pub enum RequestError {
    /// No reply arrived within the timeout. The request is stored and may still be answered:
    /// [`Requester::wait`] with the same [`PendingReply`] finds a later reply.
    #[error("no reply to request {correlation_id} within {waited:?}")]
    Timeout { correlation_id: String, waited: Duration },
    /// The responder answered with [`ERROR_HEADER`].
    #[error("the responder failed: {message}")]
    Failed { message: String, reply: Reply },
    /// The reply topic has no such partition.
    #[error("reply topic {topic} has partitions 0..{partitions}; {partition} does not exist")]
    NoReplyPartition { topic: String, partition: u32, partitions: u32 },
    /// Too many headers on the request to add the request-reply ones.
    #[error("a request carries at most {headers_max} headers of its own")]
    TooManyHeaders { headers_max: usize },
    #[error("the reply topic: {0}")]
    ReplyTopic(#[from] AdminError),
    #[error("starting the request producer: {0}")]
    Producer(#[from] ProducerError),
    #[error("producing: {0}")]
    Produce(#[from] ProduceError),
    #[error("reading replies: {0}")]
    Consume(#[from] ConsumeError),
    #[error("the responders' group: {0}")]
    Group(#[from] GroupError),
}

/// A reply as the requester receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Its offset in the reply partition.
    pub offset: u64,
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Where a sent request's reply will be: keep it to wait again, from any process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PendingReply {
    pub correlation_id: String,
    pub reply_topic: String,
    pub reply_partition: u32,
    /// The reply partition's end before the request was sent: the reply is at or after it.
    pub reply_from_offset: u64,
}

/// Where a requester's replies go, and how long [`Requester::request`] waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequesterConfig {
    pub reply_topic: String,
    pub reply_partition: u32,
    pub timeout: Duration,
}

impl RequesterConfig {
    /// Replies to partition 0 of `reply_topic` (which must exist), waiting up to 30 s.
    pub fn new(reply_topic: &str) -> RequesterConfig {
        RequesterConfig {
            reply_topic: reply_topic.to_owned(),
            reply_partition: 0,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Sends requests to one topic and waits for their replies; see the module docs.
#[derive(Debug)]
pub struct Requester {
    client: Client,
    producer: Producer,
    config: RequesterConfig,
}

/// A correlation id unique across processes: the time, the process, and a counter.
fn correlation_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n:x}", std::process::id())
}

impl Client {
    /// A requester for requests to `topic`, with replies as `config` says.
    pub async fn requester(
        &self,
        topic: &str,
        config: RequesterConfig,
    ) -> Result<Requester, RequestError> {
        let producer = self.producer(topic, ProducerConfig::default()).await?;
        Ok(Requester { client: self.clone(), producer, config })
    }
}

impl Requester {
    /// Sends a request and waits for its reply, up to the configured timeout.
    pub async fn request(&self, request: Record<'_>) -> Result<Reply, RequestError> {
        let pending = self.send(request).await?;
        self.wait(&pending, self.config.timeout).await
    }

    /// Stores a request (its own headers, then the request-reply ones) and says where its
    /// reply will be.
    pub async fn send(&self, request: Record<'_>) -> Result<PendingReply, RequestError> {
        let (topic, partition) = (&self.config.reply_topic, self.config.reply_partition);
        let described = self.client.describe_topic(topic).await?;
        let Some(state) = described.partition_states.iter().find(|p| p.partition == partition)
        else {
            return Err(RequestError::NoReplyPartition {
                topic: topic.clone(),
                partition,
                partitions: described.partitions,
            });
        };
        let pending = PendingReply {
            correlation_id: correlation_id(),
            reply_topic: topic.clone(),
            reply_partition: partition,
            reply_from_offset: state.log_end_offset,
        };
        let headers_max = spool_proto::limits::RECORD_HEADERS_MAX as usize - REQUEST_HEADERS;
        if request.headers.len() > headers_max {
            return Err(RequestError::TooManyHeaders { headers_max });
        }
        let partition_text = partition.to_string();
        let mut headers: Vec<Header<'_>> = request.headers.to_vec();
        headers.extend([
            Header::new(REPLY_TO_HEADER, Some(topic.as_bytes())),
            Header::new(REPLY_PARTITION_HEADER, Some(partition_text.as_bytes())),
            Header::new(CORRELATION_ID_HEADER, Some(pending.correlation_id.as_bytes())),
        ]);
        let delivery = self.producer.send(request.with_headers(&headers)).await?;
        delivery.wait().await?;
        Ok(pending)
    }

    /// Waits up to `timeout` for the reply to a request sent by this or any requester.
    pub async fn wait(
        &self,
        pending: &PendingReply,
        timeout: Duration,
    ) -> Result<Reply, RequestError> {
        match tokio::time::timeout(timeout, find_reply(&self.client, pending)).await {
            Ok(found) => found,
            Err(_) => Err(RequestError::Timeout {
                correlation_id: pending.correlation_id.clone(),
                waited: timeout,
            }),
        }
    }

    /// Ends the request producer.
    pub async fn close(self) -> Result<(), RequestError> {
        Ok(self.producer.close().await?)
    }
}

/// Reads the reply partition from the pending offset until the reply shows up.
async fn find_reply(client: &Client, pending: &PendingReply) -> Result<Reply, RequestError> {
    let start = StartAt::Offset(pending.reply_from_offset);
    let mut consumer = client
        .subscribe(&pending.reply_topic, pending.reply_partition, start, Follow::Live)
        .await?;
    let wanted = pending.correlation_id.as_bytes();
    loop {
        let Some(polled) = consumer.poll().await? else {
            // A live subscription ends only with an error status; say so if it did not.
            let ended = ServerError {
                code: ErrorCode::Unavailable,
                message: "the reply subscription ended".into(),
            };
            return Err(RequestError::Consume(ConsumeError::Rejected(ended)));
        };
        for record in polled.records() {
            let record = record?;
            let matches = record.headers().any(|header| {
                header.key == CORRELATION_ID_HEADER.as_bytes() && header.value == Some(wanted)
            });
            if !matches {
                continue;
            }
            let bytes = polled.bytes();
            let reply = Reply {
                offset: record.offset,
                value: record.value.map(|v| share_or_copy(bytes, v)),
                headers: record
                    .headers()
                    .map(|header| {
                        (
                            String::from_utf8_lossy(header.key).into_owned(),
                            header.value.map(|v| share_or_copy(bytes, v)),
                        )
                    })
                    .collect(),
            };
            let error = reply.headers.iter().find(|(name, _)| name == ERROR_HEADER);
            if let Some((_, message)) = error {
                let message = message
                    .as_ref()
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                return Err(RequestError::Failed { message, reply });
            }
            return Ok(reply);
        }
    }
}

/// A request as a [`Responder`] hands it to its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub correlation_id: String,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Every header of the request, the request-reply ones included.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Where one request's reply goes, read from its headers.
struct ReplyAddress {
    topic: String,
    partition: u32,
    correlation_id: String,
}

fn utf8_header(record: &GroupRecord, name: &str) -> Option<String> {
    record.header(name).and_then(|v| std::str::from_utf8(v).ok()).map(str::to_owned)
}

fn reply_address(record: &GroupRecord) -> Option<ReplyAddress> {
    let partition = match utf8_header(record, REPLY_PARTITION_HEADER) {
        Some(text) => text.parse().ok()?,
        None => 0,
    };
    Some(ReplyAddress {
        topic: utf8_header(record, REPLY_TO_HEADER)?,
        partition,
        correlation_id: utf8_header(record, CORRELATION_ID_HEADER)?,
    })
}

/// Answers requests as a member of a consumer group; see the module docs.
#[derive(Debug)]
pub struct Responder {
    client: Client,
    config: GroupConfig,
    producers: HashMap<String, Producer>,
}

impl Responder {
    /// A responder to `topic` in group `group` (automatic commits).
    pub fn new(client: &Client, topic: &str, group: &str) -> Responder {
        Responder::with_config(client, GroupConfig::new(group, &[topic]))
    }

    /// A responder whose group member is configured by `config` (its commit mode is ignored:
    /// a request is committed once its reply is stored).
    pub fn with_config(client: &Client, config: GroupConfig) -> Responder {
        let config = GroupConfig { commit: crate::CommitMode::Auto, ..config };
        Responder { client: client.clone(), config, producers: HashMap::new() }
    }

    /// Answers requests until `stop` completes, then commits and leaves the group.
    ///
    /// `handler` gets each request; its `Ok` becomes the reply's value, its `Err` a reply
    /// with [`ERROR_HEADER`]. A request without a usable reply address, or whose reply topic
    /// or partition does not exist, is skipped with a warning (there is no one to tell). A
    /// member removed from the group joins again.
    pub async fn run<F, Fut>(
        mut self,
        mut handler: F,
        stop: impl Future<Output = ()>,
    ) -> Result<(), RequestError>
    where
        F: FnMut(Request) -> Fut,
        Fut: Future<Output = Result<Vec<u8>, String>>,
    {
        let mut consumer = self.client.group_consumer(self.config.clone()).await?;
        tokio::pin!(stop);
        while let Some(records) = consumer.next_records_until(stop.as_mut(), "responder").await? {
            let mut deliveries = Vec::with_capacity(records.records.len());
            for record in records.records {
                let Some(address) = reply_address(&record) else {
                    tracing::warn!(
                        topic = %records.topic, partition = records.partition,
                        offset = record.offset, "a request without a usable reply address; skipped"
                    );
                    continue;
                };
                let request = Request {
                    topic: records.topic.clone(),
                    partition: records.partition,
                    offset: record.offset,
                    correlation_id: address.correlation_id.clone(),
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                };
                let outcome = handler(request).await;
                if let Some(delivery) = self.reply(&address, outcome).await? {
                    deliveries.push(delivery);
                }
            }
            // Replies are stored before the next poll commits their requests.
            for producer in self.producers.values() {
                producer.flush().await?;
            }
            for delivery in deliveries {
                delivery.wait().await?;
            }
        }
        consumer.close().await?;
        for (_, producer) in self.producers.drain() {
            producer.close().await?;
        }
        Ok(())
    }

    /// Sends one reply; `None` when it cannot be addressed.
    async fn reply(
        &mut self,
        address: &ReplyAddress,
        outcome: Result<Vec<u8>, String>,
    ) -> Result<Option<crate::Delivery>, RequestError> {
        let producer = match self.producer(&address.topic).await {
            Ok(producer) => producer,
            Err(ProducerError::Rejected(error)) => {
                tracing::warn!(topic = %address.topic, %error, "cannot reply to this topic; skipped");
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let (value, error) = match &outcome {
            Ok(value) => (value.as_slice(), None),
            Err(message) => (&[][..], Some(message.as_bytes())),
        };
        let mut headers: Vec<Header<'_>> =
            vec![Header::new(CORRELATION_ID_HEADER, Some(address.correlation_id.as_bytes()))];
        if let Some(error) = error {
            headers.push(Header::new(ERROR_HEADER, Some(error)));
        }
        let record = Record::value(value).with_partition(address.partition).with_headers(&headers);
        match producer.send(record).await {
            Ok(delivery) => Ok(Some(delivery)),
            Err(error @ ProduceError::UnknownPartition { .. }) => {
                tracing::warn!(%error, "cannot reply to this partition; skipped");
                Ok(None)
            }
            Err(error) => Err(error.into()),
        }
    }

    async fn producer(&mut self, topic: &str) -> Result<Producer, ProducerError> {
        if let Some(producer) = self.producers.get(topic) {
            return Ok(producer.clone());
        }
        if self.producers.len() >= REPLY_PRODUCERS_MAX {
            for (_, producer) in self.producers.drain() {
                // A failure here also fails the replies it held, whose deliveries the run
                // loop waits for and reports.
                if let Err(error) = producer.close().await {
                    tracing::warn!(%error, "closing a reply producer failed");
                }
            }
        }
        let producer = self.client.producer(topic, ProducerConfig::default()).await?;
        self.producers.insert(topic.to_owned(), producer.clone());
        Ok(producer)
    }
}
