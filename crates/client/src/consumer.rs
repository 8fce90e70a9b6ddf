//! The consumer: one partition replayed from a starting point and then followed, as the
//! stored batches themselves.
//!
//! A [`Consumer`] asks the server for raw batches (`ENCODING_RAW_BATCH`): each answer is
//! whole batches back to back, exactly as the log stores them. [`Consumer::poll`] checks every
//! batch's CRC on arrival and hands the answer out as a [`Polled`], whose records borrow from
//! the received bytes: no value is copied or allocated.
//!
//! The server reads the log by offset and sends only as fast as the consumer polls, so a slow
//! consumer falls behind but never loses records; when retention deletes records it has not
//! read yet, the subscription ends with [`crate::ErrorCode::OutOfRange`].
//!
//! [`Consumer::poll_reconnecting`] also rides out a server restart: it subscribes again after
//! the last record it handed out ([`crate::Reconnect`]).
//!
//! A group member is not built from these: [`crate::GroupConsumer`] receives its records on
//! the group's own stream, which the server feeds from the partitions it assigned.

use bytes::Bytes;
use spool_proto::limits::RESPONSE_BYTES_MAX;
use spool_proto::v1::consume_service_client::ConsumeServiceClient;
use spool_proto::v1::start_position::{Earliest, Latest, Position};
use spool_proto::v1::{Encoding, StartPosition, SubscribeRequest, SubscribeResponse};
use spool_storage::batch::{
    BatchError, BatchHeader, BatchIter, BatchView, Header, HeaderIter, Records as BatchRecords,
};
use tonic::Streaming;

use crate::Client;
use crate::error::{ConsumeError, ServerError};
use crate::group::TopicPartition;
use crate::reconnect::{Reconnect, ReconnectEvent, server_lost, stream_error};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest record still stored.
    #[default]
    Earliest,
    /// The visible end: only records produced from now on.
    Latest,
    /// This offset, which must be within the stored range (else
    /// [`crate::ErrorCode::OutOfRange`]).
    Offset(u64),
    /// The first record whose timestamp is at or after this many milliseconds since the Unix
    /// epoch (the visible end when every record is older).
    TimestampMs(i64),
}

impl StartAt {
    pub(crate) fn wire(self) -> StartPosition {
        let position = match self {
            StartAt::Earliest => Position::Earliest(Earliest {}),
            StartAt::Latest => Position::Latest(Latest {}),
            StartAt::Offset(offset) => Position::Offset(offset),
            StartAt::TimestampMs(timestamp_ms) => Position::TimestampMs(timestamp_ms),
        };
        StartPosition { position: Some(position) }
    }
}

/// Whether a subscription ends when it has caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Follow {
    /// Keep following the live end until dropped. The default.
    #[default]
    Live,
    /// End once everything visible when the subscription started is delivered: a replay.
    UntilEnd,
}

/// One partition's records, in offset order.
#[derive(Debug)]
pub struct Consumer {
    subscription: Subscription,
    stream: Streaming<SubscribeResponse>,
    /// The first answer may start before the requested start; records before it are skipped.
    skip: Skip,
    position: Option<u64>,
    /// Set when [`Consumer::poll_reconnecting`] lost the server, until it subscribed again.
    lost: Option<ServerError>,
}

/// What was asked for: enough to subscribe again.
#[derive(Debug, Clone)]
struct Subscription {
    client: Client,
    topic: String,
    partition: u32,
    start: StartAt,
    follow: Follow,
}

impl Subscription {
    async fn open(&self, start: StartAt) -> Result<Streaming<SubscribeResponse>, ConsumeError> {
        let subscribe = || {
            let mut client = ConsumeServiceClient::new(self.client.transport())
                .max_decoding_message_size(RESPONSE_BYTES_MAX);
            let request = SubscribeRequest {
                topic: self.topic.clone(),
                partition: self.partition,
                start: Some(start.wire()),
                encoding: Encoding::RawBatch as i32,
                stop_at_end: self.follow == Follow::UntilEnd,
            };
            async move { client.subscribe(request).await }
        };
        let opened = self.client.nodes().read(subscribe).await.map_err(stream_error)?;
        Ok(opened.into_inner())
    }
}

/// What the first answers of a subscription starting at `start` may hold before it, and the
/// position before the first answer.
fn starting(start: StartAt) -> (Skip, Option<u64>) {
    match start {
        StartAt::Offset(offset) => (Skip::BelowOffset(offset), Some(offset)),
        StartAt::TimestampMs(timestamp_ms) => (Skip::UntilTimestampMs(timestamp_ms), None),
        StartAt::Earliest | StartAt::Latest => (Skip::Nothing, None),
    }
}

/// What the first answers may hold before the requested start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Nothing,
    /// Records below this offset (the start is inside a stored batch).
    BelowOffset(u64),
    /// Records before the first one at or after this timestamp (the server's time index is
    /// sparse, so it may start at an earlier batch).
    UntilTimestampMs(i64),
}

impl Consumer {
    /// Subscribes to `partition` of `topic` from `start`.
    pub(crate) async fn subscribe(
        client: &Client,
        topic: &str,
        partition: u32,
        start: StartAt,
        follow: Follow,
    ) -> Result<Consumer, ConsumeError> {
        let subscription = Subscription {
            client: client.clone(),
            topic: topic.to_owned(),
            partition,
            start,
            follow,
        };
        let stream = subscription.open(start).await?;
        let (skip, position) = starting(start);
        Ok(Consumer { subscription, stream, skip, position, lost: None })
    }

    /// The offset of the first record of `bytes` (whose batches `checked` checked) to
    /// deliver, and what to skip afterwards.
    fn first_wanted(
        &self,
        bytes: &[u8],
        checked: &CheckedBatches,
        next_offset: u64,
    ) -> (u64, Skip) {
        match self.skip {
            Skip::Nothing => (0, Skip::Nothing),
            Skip::BelowOffset(offset) => (offset, Skip::Nothing),
            Skip::UntilTimestampMs(timestamp_ms) => {
                let mut records = Records::new(bytes, checked, 0);
                let found = std::iter::from_fn(|| records.next_checked())
                    .map_while(Result::ok)
                    .find(|record| record.timestamp_ms >= timestamp_ms)
                    .map(|record| record.offset);
                match found {
                    Some(offset) => (offset, Skip::Nothing),
                    None => (next_offset, self.skip),
                }
            }
        }
    }

    /// The next batches; `None` once a [`Follow::UntilEnd`] subscription has delivered
    /// everything. Every batch's CRC is checked before it is handed out.
    pub async fn poll(&mut self) -> Result<Option<Polled>, ConsumeError> {
        let Some(answer) = self.stream.message().await.map_err(stream_error)? else {
            return Ok(None);
        };
        let checked = CheckedBatches::check(&answer.raw_batches).map_err(|source| {
            let wanted = match self.skip {
                Skip::BelowOffset(offset) => offset,
                Skip::Nothing | Skip::UntilTimestampMs(_) => 0,
            };
            ConsumeError::Corrupt { offset: self.position.unwrap_or(wanted), source }
        })?;
        let (from, skip) = self.first_wanted(&answer.raw_batches, &checked, answer.next_offset);
        self.skip = skip;
        let records = checked
            .headers
            .iter()
            .map(|(_, header)| {
                let below =
                    from.saturating_sub(header.base_offset.0).min(u64::from(header.record_count));
                u64::from(header.record_count) - below
            })
            .sum();
        self.position = Some(answer.next_offset);
        Ok(Some(Polled {
            bytes: answer.raw_batches,
            checked,
            from,
            records,
            next_offset: answer.next_offset,
            log_end_offset: answer.log_end_offset,
        }))
    }

    /// The offset of the next record this consumer will deliver (what a group commits);
    /// `None` until the first poll when the start was not an offset.
    pub fn position(&self) -> Option<u64> {
        self.position
    }

    /// [`Consumer::poll`] that rides out a server restart ([`crate::Reconnect`] has the
    /// details): when the server is lost (`UNAVAILABLE`), it tells `report`, waits, and
    /// subscribes again at [`Consumer::position`] (where it started, when it handed out
    /// nothing yet), for as long as it takes. Every other error is returned as `poll` returns
    /// it. A [`Follow::UntilEnd`] subscription resumed this way ends at the partition's end
    /// as of the resumption.
    ///
    /// It may be raced against a stop signal (`tokio::select!`): a consumer stopped while
    /// waiting tries again at the next call.
    pub async fn poll_reconnecting(
        &mut self,
        reconnect: &Reconnect,
        mut report: impl FnMut(&ReconnectEvent),
    ) -> Result<Option<Polled>, ConsumeError> {
        loop {
            if let Some(error) = self.lost.clone() {
                self.subscribe_again(reconnect, error, &mut report).await?;
            }
            match self.poll().await {
                Err(ConsumeError::Rejected(error)) if server_lost(&error) => {
                    self.lost = Some(error)
                }
                polled => return polled,
            }
        }
    }

    /// Waits and subscribes again until it works or fails for another reason than a lost
    /// server.
    async fn subscribe_again(
        &mut self,
        reconnect: &Reconnect,
        mut error: ServerError,
        report: &mut impl FnMut(&ReconnectEvent),
    ) -> Result<(), ConsumeError> {
        let start = self.position.map_or(self.subscription.start, StartAt::Offset);
        let resume_at = match self.position {
            Some(offset) => {
                let topic = self.subscription.topic.clone();
                vec![(TopicPartition { topic, partition: self.subscription.partition }, offset)]
            }
            None => Vec::new(),
        };
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let retry_in = reconnect.backoff(attempt);
            let resume_at = resume_at.clone();
            report(&ReconnectEvent::Waiting { error, attempt, retry_in, resume_at });
            tokio::time::sleep(retry_in).await;
            match self.subscription.open(start).await {
                Ok(stream) => {
                    self.stream = stream;
                    (self.skip, self.position) = starting(start);
                    self.lost = None;
                    report(&ReconnectEvent::Reconnected { attempts: attempt });
                    return Ok(());
                }
                Err(ConsumeError::Rejected(lost)) if server_lost(&lost) => error = lost,
                Err(other) => return Err(other),
            }
        }
    }
}

/// Whole stored batches back to back, each checked once (its CRCs and, for a compressed one,
/// that its records decompress): where each starts, its header, and the records of the
/// compressed ones, decompressed. What reads them later builds each view from these rather
/// than checking it again.
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckedBatches {
    /// Each batch's start in the bytes, and its header.
    headers: Vec<(usize, BatchHeader)>,
    /// The records of the compressed batches, decompressed once, in batch order.
    decompressed: Vec<BatchRecords<'static>>,
}

impl CheckedBatches {
    /// Checks every batch in `bytes`; the first that fails is the error.
    pub(crate) fn check(bytes: &[u8]) -> Result<CheckedBatches, BatchError> {
        let mut checked = CheckedBatches::default();
        let mut start = 0;
        for batch in BatchIter::new(bytes) {
            let batch = batch?;
            if let Some(owned) = decompress(&batch) {
                checked.decompressed.push(owned);
            }
            checked.headers.push((start, *batch.header()));
            start += batch.as_bytes().len();
        }
        Ok(checked)
    }

    /// The checked batches' views in `bytes` (the bytes they were checked in).
    fn views<'a>(&'a self, bytes: &'a [u8]) -> Views<'a> {
        Views { bytes, headers: self.headers.iter() }
    }
}

/// The views of checked batches, built without checking them again.
#[derive(Debug, Clone)]
struct Views<'a> {
    bytes: &'a [u8],
    headers: std::slice::Iter<'a, (usize, BatchHeader)>,
}

impl<'a> Iterator for Views<'a> {
    type Item = BatchView<'a>;

    fn next(&mut self) -> Option<BatchView<'a>> {
        let &(start, header) = self.headers.next()?;
        Some(BatchView::checked_before(&self.bytes[start..], header))
    }
}

/// One answer of a subscription: whole stored batches, checked, and the records in them.
#[derive(Debug, Clone)]
pub struct Polled {
    bytes: Bytes,
    checked: CheckedBatches,
    from: u64,
    records: u64,
    next_offset: u64,
    log_end_offset: u64,
}

impl Polled {
    /// The records, decoded lazily from the received bytes.
    pub fn records(&self) -> Records<'_> {
        Records::new(&self.bytes, &self.checked, self.from)
    }

    /// The stored batches as received (the first may start before the subscription's start).
    pub fn batches(&self) -> impl Iterator<Item = BatchView<'_>> {
        self.checked.views(&self.bytes)
    }

    /// The received bytes: whole batches back to back, as the log stores them.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// How many records [`Polled::records`] yields.
    pub fn record_count(&self) -> u64 {
        self.records
    }

    pub fn batch_count(&self) -> u32 {
        self.checked.headers.len() as u32
    }

    /// The offset after the last record here.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The partition's visible end when this was read: `next_offset` equal to it means the
    /// consumer has caught up.
    pub fn log_end_offset(&self) -> u64 {
        self.log_end_offset
    }
}

/// A record as consumed; every slice borrows from the [`Polled`] it came in.
#[derive(Debug, Clone)]
pub struct ConsumedRecord<'a> {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub(crate) headers: HeaderIter<'a>,
}

impl<'a> ConsumedRecord<'a> {
    /// The headers, in order, as (name, value); a name that is not UTF-8 (which the server
    /// never stores) is shown lossily.
    pub fn headers(&self) -> impl Iterator<Item = Header<'a>> + use<'a> {
        self.headers.clone().map_while(Result::ok)
    }
}

/// The records of a [`Polled`], at or after the subscription's start.
#[derive(Debug)]
pub struct Records<'a> {
    batches: Views<'a>,
    /// The records of the compressed batches among them, in order ([`decompress`]).
    decompressed: std::slice::Iter<'a, BatchRecords<'static>>,
    current: Option<spool_storage::batch::RecordIter<'a>>,
    from: u64,
}

/// The records of a compressed batch, decompressed and owned; `None` for a batch whose
/// records can be read where they are.
pub(crate) fn decompress(batch: &BatchView<'_>) -> Option<BatchRecords<'static>> {
    match batch.header().codec() {
        Ok(spool_storage::batch::Codec::None) => None,
        _ => Some(batch.records().into_owned()),
    }
}

impl<'a> Records<'a> {
    /// The records at or after `from` in `bytes`, whose batches `checked` checked.
    pub(crate) fn new(bytes: &'a [u8], checked: &'a CheckedBatches, from: u64) -> Records<'a> {
        Records {
            batches: checked.views(bytes),
            decompressed: checked.decompressed.iter(),
            current: None,
            from,
        }
    }

    /// The next record, or the check that failed (then decoding stops).
    pub(crate) fn next_checked(&mut self) -> Option<Result<ConsumedRecord<'a>, BatchError>> {
        loop {
            if let Some(records) = &mut self.current {
                match records.next() {
                    Some(Ok(record)) if record.offset.0 < self.from => continue,
                    Some(Ok(record)) => {
                        return Some(Ok(ConsumedRecord {
                            offset: record.offset.0,
                            timestamp_ms: record.timestamp.0,
                            key: record.key,
                            value: record.value,
                            headers: record.headers(),
                        }));
                    }
                    Some(Err(source)) => {
                        self.current = None;
                        self.batches.headers = [].iter();
                        return Some(Err(source));
                    }
                    None => self.current = None,
                }
            }
            let batch = self.batches.next()?;
            // A replicated log's own entries (a leader's first, a membership): not records.
            if batch.header().entry.kind == spool_storage::batch::BatchKind::Control {
                continue;
            }
            let records = match batch.header().codec() {
                Ok(spool_storage::batch::Codec::None) => batch.records().into_iter_borrowed().ok(),
                _ => self.decompressed.next().map(BatchRecords::iter),
            };
            let Some(records) = records else {
                return Some(Err(BatchError::Unsupported {
                    what: "a compressed batch that was not decompressed",
                }));
            };
            self.current = Some(records);
        }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<ConsumedRecord<'a>, ConsumeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.from;
        self.next_checked()
            .map(|record| record.map_err(|source| ConsumeError::Corrupt { offset, source }))
    }
}
