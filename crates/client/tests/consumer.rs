//! The consumer against an in-process server: every start position, skipping records below
//! the start inside a batch, following the live end, and its errors.

mod common;

use common::TestServer;
use spool_client::{
    Client, Codec, ConsumeError, ErrorCode, Follow, Fsync, Header, ProducerConfig, Record, StartAt,
};

/// Produces `count` records with values "0", "1", ... in batches of `batch` records, and
/// timestamps 1000 * n.
async fn fill(client: &Client, topic: &str, count: u32, batch: u32) {
    fill_compressed(client, topic, count, batch, Codec::None).await;
}

/// [`fill`], each batch compressed with `codec`.
async fn fill_compressed(client: &Client, topic: &str, count: u32, batch: u32, codec: Codec) {
    let config = ProducerConfig {
        batch_records_max: batch,
        compression: codec,
        ..ProducerConfig::default()
    };
    let producer = client.producer(topic, config).await.unwrap();
    for n in 0..count {
        let value = n.to_string();
        let record = Record::value(value.as_bytes()).with_timestamp_ms(1000 * i64::from(n));
        producer.send(record).await.unwrap();
    }
    producer.close().await.unwrap();
}

/// Every (offset, value) of a replay from `start`.
async fn replay(client: &Client, topic: &str, start: StartAt) -> Vec<(u64, String)> {
    let mut consumer = client.subscribe(topic, 0, start, Follow::UntilEnd).await.unwrap();
    let mut seen = Vec::new();
    while let Some(polled) = consumer.poll().await.unwrap() {
        let before = seen.len();
        for record in polled.records() {
            let record = record.unwrap();
            seen.push((record.offset, String::from_utf8(record.value.unwrap().to_vec()).unwrap()));
        }
        assert_eq!((seen.len() - before) as u64, polled.record_count());
        assert_eq!(consumer.position(), Some(polled.next_offset()));
    }
    seen
}

fn expected(range: std::ops::Range<u64>) -> Vec<(u64, String)> {
    range.map(|n| (n, n.to_string())).collect()
}

#[tokio::test]
async fn replays_from_every_kind_of_start() {
    let server = TestServer::start().await;
    let client = server.with_topic("history", 1, Fsync::Always).await;
    fill(&client, "history", 50, 8).await;

    assert_eq!(replay(&client, "history", StartAt::Earliest).await, expected(0..50));
    // Offset 13 is inside the batch 8..16: the records below it are skipped.
    assert_eq!(replay(&client, "history", StartAt::Offset(13)).await, expected(13..50));
    assert_eq!(replay(&client, "history", StartAt::TimestampMs(20_500)).await, expected(21..50));
    assert_eq!(replay(&client, "history", StartAt::Latest).await, expected(50..50));

    // The same from compressed batches.
    let client = server.with_topic("zipped", 1, Fsync::Always).await;
    fill_compressed(&client, "zipped", 50, 8, Codec::Zstd).await;
    assert_eq!(replay(&client, "zipped", StartAt::Earliest).await, expected(0..50));
    assert_eq!(replay(&client, "zipped", StartAt::Offset(13)).await, expected(13..50));
    assert_eq!(replay(&client, "zipped", StartAt::TimestampMs(20_500)).await, expected(21..50));
    server.shutdown().await;
}

#[tokio::test]
async fn follows_the_live_end() {
    let server = TestServer::start().await;
    let client = server.with_topic("live", 1, Fsync::Always).await;
    let mut consumer = client.subscribe("live", 0, StartAt::Latest, Follow::Live).await.unwrap();
    let producer = client.producer("live", ProducerConfig::default()).await.unwrap();
    producer.send(Record::value(b"first")).await.unwrap().wait().await.unwrap();
    producer.send(Record::value(b"second")).await.unwrap().wait().await.unwrap();
    let mut values = Vec::new();
    while values.len() < 2 {
        let polled = consumer.poll().await.unwrap().expect("a live subscription does not end");
        for record in polled.records() {
            values.push(record.unwrap().value.unwrap().to_vec());
        }
    }
    assert_eq!(values, vec![b"first".to_vec(), b"second".to_vec()]);
    server.shutdown().await;
}

#[tokio::test]
async fn headers_and_keys_come_back_as_sent() {
    let server = TestServer::start().await;
    let client = server.with_topic("decorated", 1, Fsync::Always).await;
    let producer = client.producer("decorated", ProducerConfig::default()).await.unwrap();
    let headers = [Header::new("trace", Some(b"abc")), Header::new("empty", None)];
    let record = Record::value(b"v").with_key(b"k").with_headers(&headers).with_timestamp_ms(42);
    producer.send(record).await.unwrap();
    producer.send(Record { value: None, ..Record::default() }).await.unwrap();
    producer.close().await.unwrap();
    let mut consumer =
        client.subscribe("decorated", 0, StartAt::Earliest, Follow::UntilEnd).await.unwrap();
    let polled = consumer.poll().await.unwrap().unwrap();
    let records: Vec<_> = polled.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0].key, records[0].value, records[0].timestamp_ms),
        (Some(&b"k"[..]), Some(&b"v"[..]), 42)
    );
    let got: Vec<_> = records[0].headers().map(|h| (h.key, h.value)).collect();
    assert_eq!(got, vec![(&b"trace"[..], Some(&b"abc"[..])), (&b"empty"[..], None)]);
    assert_eq!((records[1].key, records[1].value), (None, None), "a tombstone");
    server.shutdown().await;
}

#[tokio::test]
async fn refusals_carry_their_code() {
    let server = TestServer::start().await;
    let client = server.with_topic("short", 1, Fsync::Always).await;
    fill(&client, "short", 3, 3).await;
    let beyond = client.subscribe("short", 0, StartAt::Offset(99), Follow::UntilEnd).await;
    assert!(
        matches!(&beyond, Err(ConsumeError::Rejected(e)) if e.code == ErrorCode::OutOfRange),
        "{beyond:?}"
    );
    let missing = client.subscribe("nothing-here", 0, StartAt::Earliest, Follow::Live).await;
    assert!(matches!(&missing, Err(ConsumeError::Rejected(e)) if e.code == ErrorCode::NotFound));
    server.shutdown().await;
}
