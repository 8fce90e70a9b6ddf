//! Messaging patterns on the log, against an in-process server: fire-and-forget under a full
//! buffer, request-reply (a round trip, no responder, a requester that reconnects), and
//! event handlers with retries and a dead-letter topic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use common::TestServer;
use spool_client::{
    Acks, Backpressure, Client, Follow, Fsync, GroupConfig, GroupEvent, HandlerConfig, Header,
    ProduceError, ProducerConfig, Record, Request, RequestError, RequesterConfig, Responder,
    StartAt, run_handler,
};
use tokio::sync::oneshot;

/// Long enough that no batch is sent because of its age during a test.
const LINGER_NEVER: Duration = Duration::from_secs(3600);
/// Only guards against a hang: every wait below ends on an event.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn fire_and_forget(backpressure: Backpressure) -> ProducerConfig {
    ProducerConfig {
        acks: Acks::None,
        batch_bytes_max: 4096,
        buffer_bytes_max: 4096,
        linger: LINGER_NEVER,
        backpressure,
        ..ProducerConfig::default()
    }
}

/// Every value of partition 0, following the log until `count` have arrived.
async fn values(client: &Client, topic: &str, count: usize) -> Vec<Vec<u8>> {
    let mut consumer = client.subscribe(topic, 0, StartAt::Earliest, Follow::Live).await.unwrap();
    let mut values = Vec::new();
    let all = async {
        while values.len() < count {
            let polled = consumer.poll().await.unwrap().expect("a live subscription goes on");
            for record in polled.records() {
                values.push(record.unwrap().value.unwrap().to_vec());
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, all).await.expect("the records reach the log");
    values
}

#[tokio::test]
async fn fire_and_forget_fails_fast_when_its_buffer_is_full_instead_of_growing() {
    let server = TestServer::start().await;
    let client = server.with_topic("fire", 1, Fsync::Never).await;
    let producer = client.producer("fire", fire_and_forget(Backpressure::FailFast)).await.unwrap();
    let value = [3u8; 1000];
    let mut accepted = 0u32;
    let refused = loop {
        match producer.send(Record::value(&value)).await {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 100, "a 4096-byte buffer cannot take 100 records of 1000 bytes");
    };
    assert_eq!(refused, ProduceError::BufferFull { bytes_max: 4096 });
    assert!(accepted >= 3, "{accepted}");
    // Still full: nothing was sent (linger is long), and nothing more was taken.
    assert_eq!(
        producer.send(Record::value(&value)).await.unwrap_err(),
        ProduceError::BufferFull { bytes_max: 4096 }
    );
    // A flush hands the batch to the stream; with acks=none that frees its room at once.
    producer.flush().await.unwrap();
    producer.send(Record::value(&value)).await.unwrap();
    producer.close().await.unwrap();
    assert_eq!(values(&client, "fire", accepted as usize + 1).await.len(), accepted as usize + 1);
    assert_eq!(producer.stats().unacknowledged_failures, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn fire_and_forget_waits_for_room_when_its_buffer_is_full() {
    let server = TestServer::start().await;
    let client = server.with_topic("fire", 1, Fsync::Never).await;
    let producer = client.producer("fire", fire_and_forget(Backpressure::Wait)).await.unwrap();
    let value = [4u8; 1000];
    let mut accepted = 0usize;
    while producer.try_send(Record::value(&value)).is_ok() {
        accepted += 1;
    }
    // The buffer is full and nothing is due to be sent: a send waits rather than buffering.
    let mut send = pin!(producer.send(Record::value(&value)));
    let mut context = Context::from_waker(Waker::noop());
    assert!(send.as_mut().poll(&mut context).is_pending(), "a full buffer makes send wait");
    assert!(send.as_mut().poll(&mut context).is_pending(), "and it keeps waiting");
    let (sent, flushed) = tokio::join!(send, producer.flush());
    flushed.unwrap();
    // The waiting record is in a new batch, which the next flush sends.
    producer.flush().await.unwrap();
    assert_eq!(sent.unwrap().wait().await.unwrap().offset, None, "acks=none has no offsets");
    producer.close().await.unwrap();
    assert_eq!(values(&client, "fire", accepted + 1).await.len(), accepted + 1);
    server.shutdown().await;
}

/// Starts a responder to `requests` in group `responders` that upper-cases values and fails
/// on "fail"; it stops when `stop` is sent (or dropped).
fn spawn_responder(
    client: &Client,
    stop: oneshot::Receiver<()>,
    calls: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<Result<(), RequestError>> {
    let responder = Responder::new(client, "requests", "responders");
    tokio::spawn(responder.run(
        move |request: Request| {
            let calls = calls.clone();
            async move {
                let value = String::from_utf8(request.value.unwrap().to_vec()).unwrap();
                calls.lock().unwrap().push(value.clone());
                if value == "fail" {
                    Err("asked to fail".to_owned())
                } else {
                    Ok(value.to_uppercase().into_bytes())
                }
            }
        },
        async move {
            let _ = stop.await;
        },
    ))
}

async fn request_topics(server: &TestServer) -> Client {
    let client = server.with_topic("requests", 2, Fsync::Always).await;
    client
        .create_topic(
            "replies",
            spool_client::TopicSettings { partitions: 2, ..Default::default() },
        )
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn a_request_gets_its_reply_and_a_failure_comes_back_as_an_error() {
    let server = TestServer::start().await;
    let client = request_topics(&server).await;
    let (stop, stopped) = oneshot::channel();
    let responder = spawn_responder(&client, stopped, Arc::default());

    let config = RequesterConfig { reply_partition: 1, ..RequesterConfig::new("replies") };
    let requester = client.requester("requests", config).await.unwrap();
    let reply = requester.request(Record::value(b"hello").with_key(b"k")).await.unwrap();
    assert_eq!(reply.value.as_deref(), Some(&b"HELLO"[..]));
    let reply = requester.request(Record::value(b"again")).await.unwrap();
    assert_eq!(reply.value.as_deref(), Some(&b"AGAIN"[..]));
    match requester.request(Record::value(b"fail")).await {
        Err(RequestError::Failed { message, reply }) => {
            assert_eq!(message, "asked to fail");
            assert!(reply.headers.iter().any(|(name, _)| name == spool_client::ERROR_HEADER));
        }
        other => panic!("expected a failed reply, got {other:?}"),
    }
    // Replies went to the partition the requester named.
    let described = client.describe_topic("replies").await.unwrap();
    let ends: Vec<u64> = described.partition_states.iter().map(|p| p.log_end_offset).collect();
    assert_eq!(ends, [0, 3]);
    let missing = RequesterConfig { reply_partition: 2, ..RequesterConfig::new("replies") };
    let refused = client.requester("requests", missing).await.unwrap();
    assert!(matches!(
        refused.request(Record::value(b"x")).await,
        Err(RequestError::NoReplyPartition { partition: 2, partitions: 2, .. })
    ));

    stop.send(()).unwrap();
    responder.await.unwrap().unwrap();
    requester.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_responder_a_request_times_out() {
    let server = TestServer::start().await;
    let client = request_topics(&server).await;
    let config =
        RequesterConfig { timeout: Duration::from_millis(200), ..RequesterConfig::new("replies") };
    let requester = client.requester("requests", config).await.unwrap();
    match requester.request(Record::value(b"anyone?")).await {
        Err(RequestError::Timeout { waited, correlation_id }) => {
            assert_eq!(waited, Duration::from_millis(200));
            assert!(!correlation_id.is_empty());
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_requester_that_reconnects_still_gets_its_reply() {
    let server = TestServer::start().await;
    let client = request_topics(&server).await;
    // A reply to someone else first, so the right one has to be picked out.
    let (stop, stopped) = oneshot::channel();
    let calls: Arc<Mutex<Vec<String>>> = Arc::default();
    let responder = spawn_responder(&client, stopped, calls.clone());
    let other = client.requester("requests", RequesterConfig::new("replies")).await.unwrap();
    other.request(Record::value(b"other")).await.unwrap();
    stop.send(()).unwrap();
    responder.await.unwrap().unwrap();

    // The request is sent; then the requester goes away, connection and all.
    let pending = {
        let gone = server.client().await;
        let requester = gone.requester("requests", RequesterConfig::new("replies")).await.unwrap();
        let pending = requester.send(Record::value(b"while away")).await.unwrap();
        requester.close().await.unwrap();
        pending
    };
    // A responder answers while no requester listens, and stops once the reply is stored.
    let (stop, stopped) = oneshot::channel();
    let responder = spawn_responder(&client, stopped, calls.clone());
    let start = StartAt::Offset(pending.reply_from_offset);
    let mut replies = client.subscribe("replies", 0, start, Follow::Live).await.unwrap();
    let answered = async { while replies.poll().await.unwrap().unwrap().record_count() == 0 {} };
    tokio::time::timeout(HANG_GUARD, answered).await.expect("the responder answers");
    stop.send(()).unwrap();
    responder.await.unwrap().unwrap();

    // A new connection and requester find the reply in the log.
    let back = server.client().await;
    let requester = back.requester("requests", RequesterConfig::new("replies")).await.unwrap();
    let reply = requester.wait(&pending, HANG_GUARD).await.unwrap();
    assert_eq!(reply.value.as_deref(), Some(&b"WHILE AWAY"[..]));
    assert_eq!(*calls.lock().unwrap(), ["other", "while away"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_handler_dead_letters_what_keeps_failing_and_retries_what_fails_once() {
    let server = TestServer::start().await;
    let client = server.with_topic("orders", 1, Fsync::Always).await;
    client.create_topic("orders.dlq", spool_client::TopicSettings::default()).await.unwrap();
    let producer = client.producer("orders", ProducerConfig::default()).await.unwrap();
    let trace = [Header::new("trace", Some(b"t-42"))];
    for value in ["a", "b", "poison", "flaky", "c"] {
        let record = Record::value(value.as_bytes()).with_key(b"customer-1").with_headers(&trace);
        producer.send(record).await.unwrap();
    }
    producer.close().await.unwrap();

    let attempts: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let (done, all_handled) = oneshot::channel::<()>();
    let done = Arc::new(Mutex::new(Some(done)));
    let config = HandlerConfig {
        attempts_max: 3,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(4),
        ..HandlerConfig::new(GroupConfig::new("shipping", &["orders"]), "orders.dlq")
    };
    let handled = {
        let attempts = attempts.clone();
        move |event: spool_client::Event| {
            let attempts = attempts.clone();
            let done = done.clone();
            async move {
                let value = String::from_utf8(event.record.value.unwrap().to_vec()).unwrap();
                let mut attempts = attempts.lock().unwrap();
                *attempts.entry(value.clone()).or_default() += 1;
                assert_eq!(attempts[&value], event.attempt);
                match value.as_str() {
                    "poison" => return Err(format!("cannot ship {value}")),
                    "flaky" if event.attempt == 1 => return Err("try again".to_owned()),
                    // The last event: everything before it was handled or dead-lettered.
                    "c" => drop(done.lock().unwrap().take()),
                    _ => {}
                }
                Ok(())
            }
        }
    };
    let stop = async {
        let _ = all_handled.await;
    };
    let run = run_handler(&client, config, handled, stop);
    let stats = tokio::time::timeout(HANG_GUARD, run).await.unwrap().unwrap();
    assert_eq!((stats.handled, stats.dead_lettered, stats.retried), (4, 1, 2 + 1));
    let attempts = attempts.lock().unwrap().clone();
    let expected: BTreeMap<String, u32> =
        [("a", 1), ("b", 1), ("poison", 3), ("flaky", 2), ("c", 1)]
            .into_iter()
            .map(|(v, n)| (v.to_owned(), n))
            .collect();
    assert_eq!(attempts, expected);

    // Exactly the poison event is in the dead-letter topic, as it was, plus where and why.
    let mut dead =
        client.subscribe("orders.dlq", 0, StartAt::Earliest, Follow::UntilEnd).await.unwrap();
    let mut records = Vec::new();
    while let Some(polled) = dead.poll().await.unwrap() {
        for record in polled.records() {
            let record = record.unwrap();
            let headers: Vec<(String, String)> = record
                .headers()
                .map(|h| {
                    (
                        String::from_utf8(h.key.to_vec()).unwrap(),
                        String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                    )
                })
                .collect();
            records.push((record.key.unwrap().to_vec(), record.value.unwrap().to_vec(), headers));
        }
    }
    assert_eq!(records.len(), 1, "{records:?}");
    let (key, value, headers) = &records[0];
    assert_eq!((key.as_slice(), value.as_slice()), (&b"customer-1"[..], &b"poison"[..]));
    let expected_headers: Vec<(String, String)> = [
        ("trace", "t-42"),
        (spool_client::DLQ_TOPIC_HEADER, "orders"),
        (spool_client::DLQ_PARTITION_HEADER, "0"),
        (spool_client::DLQ_OFFSET_HEADER, "2"),
        (spool_client::DLQ_GROUP_HEADER, "shipping"),
        (spool_client::DLQ_ATTEMPTS_HEADER, "3"),
        (spool_client::DLQ_ERROR_HEADER, "cannot ship poison"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(*headers, expected_headers);

    // Everything was committed: the group has nothing left to hand out.
    let mut after = client.group_consumer(GroupConfig::new("shipping", &["orders"])).await.unwrap();
    let mut left = BTreeSet::new();
    while !after.caught_up() {
        if let GroupEvent::Records(records) = after.poll().await.unwrap() {
            left.extend(records.records.into_iter().map(|r| r.offset));
        }
    }
    assert_eq!(left, BTreeSet::new());
    after.close().await.unwrap();
    server.shutdown().await;
}
