//! Event-driven handlers: an async function run once per event of a consumer group, with
//! retries and a dead-letter topic.
//!
//! [`run_handler`] joins the group and, for each event of its partitions in offset order:
//!
//! 1. runs the handler; on success the event counts as processed;
//! 2. on failure waits and tries again, up to [`HandlerConfig::attempts_max`] attempts in
//!    all, the waits doubling from [`HandlerConfig::backoff_initial`] up to
//!    [`HandlerConfig::backoff_max`];
//! 3. after the last failed attempt, produces the event (same key, value, timestamp and
//!    headers) to [`HandlerConfig::dead_letter_topic`] with the headers below added, waits
//!    until it is stored, and moves on.
//!
//! Positions are committed by the group consumer's next poll, so an event is committed only
//! after it was handled or dead-lettered: delivery is at-least-once, and a handler may see an
//! event again after a crash or a rebalance. Events of one partition are handled one at a
//! time; a failing event holds its partition up for its retries.
//!
//! While an event is retried the member keeps heartbeating, but answers a revocation only
//! when it polls again: keep `attempts_max` waits of `backoff_max` well below the group's
//! session timeout, or the member is removed (then it rejoins, and the event is handled
//! again by the partition's next owner).
//!
//! # Dead-letter headers
//!
//! | header | value |
//! |---|---|
//! | `spool-dlq-topic` | the topic the event came from |
//! | `spool-dlq-partition` | its partition, in decimal |
//! | `spool-dlq-offset` | its offset, in decimal |
//! | `spool-dlq-group` | the handler's group |
//! | `spool-dlq-attempts` | how many attempts failed, in decimal |
//! | `spool-dlq-error` | the last attempt's error, as text |
//!
//! They follow the event's own headers, of which the first 58 are kept (a record holds 64).

use std::future::Future;
use std::time::Duration;

use thiserror::Error;

use crate::error::{GroupError, ProduceError, ProducerError};
use crate::group::{GroupConfig, GroupRecord};
use crate::producer::{Header, Producer, ProducerConfig, Record};
use crate::{Client, CommitMode};

pub const DLQ_TOPIC_HEADER: &str = "spool-dlq-topic";
pub const DLQ_PARTITION_HEADER: &str = "spool-dlq-partition";
pub const DLQ_OFFSET_HEADER: &str = "spool-dlq-offset";
pub const DLQ_GROUP_HEADER: &str = "spool-dlq-group";
pub const DLQ_ATTEMPTS_HEADER: &str = "spool-dlq-attempts";
pub const DLQ_ERROR_HEADER: &str = "spool-dlq-error";

/// Headers a dead-lettered event gets.
const DLQ_HEADERS: usize = 6;
/// The most attempts a handler may be configured with.
const ATTEMPTS_MAX: u32 = 100;

/// How [`run_handler`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerConfig {
    /// The group and topics (the commit mode is ignored: commits follow handling).
    pub group: GroupConfig,
    /// Attempts per event before it is dead-lettered, 1..=100.
    pub attempts_max: u32,
    /// The wait after the first failure; each later one doubles, up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Where events go after `attempts_max` failures; it must exist.
    pub dead_letter_topic: String,
}

impl HandlerConfig {
    /// 5 attempts, waits from 100 ms up to 2 s.
    pub fn new(group: GroupConfig, dead_letter_topic: &str) -> HandlerConfig {
        HandlerConfig {
            group,
            attempts_max: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            dead_letter_topic: dead_letter_topic.to_owned(),
        }
    }

    fn check(&self) -> Result<(), HandlerError> {
        let bad = |reason: String| Err(HandlerError::BadConfig { reason });
        if !(1..=ATTEMPTS_MAX).contains(&self.attempts_max) {
            return bad(format!(
                "attempts_max {} is outside 1..={ATTEMPTS_MAX}",
                self.attempts_max
            ));
        }
        if self.backoff_initial > self.backoff_max {
            return bad(format!(
                "backoff_initial {:?} is longer than backoff_max {:?}",
                self.backoff_initial, self.backoff_max
            ));
        }
        Ok(())
    }

    /// The wait after failed attempt `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.backoff_initial.saturating_mul(1 << doublings).min(self.backoff_max)
    }
}

/// One event, as the handler gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub topic: String,
    pub partition: u32,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub record: GroupRecord,
}

/// What a handler run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandlerStats {
    /// Events the handler succeeded on.
    pub handled: u64,
    /// Failed attempts that were tried again.
    pub retried: u64,
    /// Events moved to the dead-letter topic.
    pub dead_lettered: u64,
}

/// Why [`run_handler`] stopped.
#[derive(Debug, Error)]
pub enum HandlerError {
    #[error("the handler configuration is invalid: {reason}")]
    BadConfig { reason: String },
    #[error("the handler's group: {0}")]
    Group(#[from] GroupError),
    #[error("the dead-letter topic: {0}")]
    DeadLetterTopic(#[from] ProducerError),
    /// An event could not be dead-lettered; it is not committed.
    #[error("dead-lettering an event failed: {0}")]
    DeadLetter(#[from] ProduceError),
}

/// Runs `handler` for every event of `config.group` until `stop` completes, then commits and
/// leaves; see the module docs. A member removed from the group joins again.
pub async fn run_handler<F, Fut, E>(
    client: &Client,
    config: HandlerConfig,
    mut handler: F,
    stop: impl Future<Output = ()>,
) -> Result<HandlerStats, HandlerError>
where
    F: FnMut(Event) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    config.check()?;
    let dead_letters =
        client.producer(&config.dead_letter_topic, ProducerConfig::default()).await?;
    let group = GroupConfig { commit: CommitMode::Auto, ..config.group.clone() };
    let mut consumer = client.group_consumer(group).await?;
    let mut stats = HandlerStats::default();
    tokio::pin!(stop);
    while let Some(records) = consumer.next_records_until(stop.as_mut(), "handler").await? {
        for record in records.records {
            let event = Event {
                topic: records.topic.clone(),
                partition: records.partition,
                attempt: 1,
                record,
            };
            handle(&config, &mut handler, &dead_letters, event, &mut stats).await?;
        }
    }
    consumer.close().await?;
    dead_letters.close().await?;
    Ok(stats)
}

/// Handles one event: attempts with backoff, then the dead-letter topic.
async fn handle<F, Fut, E>(
    config: &HandlerConfig,
    handler: &mut F,
    dead_letters: &Producer,
    event: Event,
    stats: &mut HandlerStats,
) -> Result<(), HandlerError>
where
    F: FnMut(Event) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut attempt = 1;
    let error = loop {
        match handler(Event { attempt, ..event.clone() }).await {
            Ok(()) => {
                stats.handled += 1;
                return Ok(());
            }
            Err(error) if attempt < config.attempts_max => {
                tracing::debug!(
                    topic = %event.topic, partition = event.partition,
                    offset = event.record.offset, attempt, %error, "a handler attempt failed"
                );
                stats.retried += 1;
                tokio::time::sleep(config.backoff(attempt)).await;
                attempt += 1;
            }
            Err(error) => break error.to_string(),
        }
    };
    tracing::warn!(
        topic = %event.topic, partition = event.partition, offset = event.record.offset,
        attempts = attempt, %error, "dead-lettering an event"
    );
    dead_letter(config, dead_letters, &event, attempt, &error).await?;
    stats.dead_lettered += 1;
    Ok(())
}

/// Produces `event` to the dead-letter topic with where it came from and why, and waits until
/// it is stored.
async fn dead_letter(
    config: &HandlerConfig,
    dead_letters: &Producer,
    event: &Event,
    attempts: u32,
    error: &str,
) -> Result<(), ProduceError> {
    let record = &event.record;
    let (partition, offset, attempts) =
        (event.partition.to_string(), record.offset.to_string(), attempts.to_string());
    let kept = spool_proto::limits::RECORD_HEADERS_MAX as usize - DLQ_HEADERS;
    let mut headers: Vec<Header<'_>> = record
        .headers
        .iter()
        .take(kept)
        .map(|(name, value)| Header::new(name, value.as_deref()))
        .collect();
    headers.extend([
        Header::new(DLQ_TOPIC_HEADER, Some(event.topic.as_bytes())),
        Header::new(DLQ_PARTITION_HEADER, Some(partition.as_bytes())),
        Header::new(DLQ_OFFSET_HEADER, Some(offset.as_bytes())),
        Header::new(DLQ_GROUP_HEADER, Some(config.group.group.as_bytes())),
        Header::new(DLQ_ATTEMPTS_HEADER, Some(attempts.as_bytes())),
        Header::new(DLQ_ERROR_HEADER, Some(error.as_bytes())),
    ]);
    let dead = Record {
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        headers: &headers,
        timestamp_ms: Some(record.timestamp_ms),
        partition: None,
    };
    dead_letters.send(dead).await?.wait().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let config = HandlerConfig {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            ..HandlerConfig::new(GroupConfig::new("g", &["t"]), "dlq")
        };
        let waits: Vec<u128> = (1..=5).map(|a| config.backoff(a).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 50, 50]);
        assert_eq!(config.backoff(u32::MAX), Duration::from_millis(50));
        let zero = HandlerConfig { attempts_max: 0, ..config.clone() };
        assert!(matches!(zero.check(), Err(HandlerError::BadConfig { .. })));
        let inverted = HandlerConfig { backoff_initial: Duration::from_secs(9), ..config };
        assert!(matches!(inverted.check(), Err(HandlerError::BadConfig { .. })));
    }
}
