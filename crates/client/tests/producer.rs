//! The producer against an in-process server: batching by count, bytes and linger, ordering,
//! the offsets it reports, both backpressure modes, and the errors a caller matches on.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Waker};
use std::time::Duration;

use common::TestServer;
use spool_client::{
    Acks, Backpressure, Client, ErrorCode, Follow, Fsync, Header, ProduceError, ProducerConfig,
    ProducerError, Record, StartAt, TopicChange,
};
use spool_proto::partitioner::partition_for_key;

/// Long enough that no batch is sent because of its age during a test.
const LINGER_NEVER: Duration = Duration::from_secs(3600);

/// Every stored batch of partition 0, as (record count, bytes), and every value in order.
async fn stored(client: &Client, topic: &str, partition: u32) -> (Vec<(u32, u32)>, Vec<Vec<u8>>) {
    let mut consumer =
        client.subscribe(topic, partition, StartAt::Earliest, Follow::UntilEnd).await.unwrap();
    let (mut batches, mut values) = (Vec::new(), Vec::new());
    while let Some(polled) = consumer.poll().await.unwrap() {
        for batch in polled.batches() {
            batches.push((batch.header().record_count, batch.header().batch_bytes));
        }
        for record in polled.records() {
            values.push(record.unwrap().value.unwrap().to_vec());
        }
    }
    (batches, values)
}

#[tokio::test]
async fn batches_by_count_and_reports_each_offset_in_order() {
    let server = TestServer::start().await;
    let client = server.with_topic("counted", 1, Fsync::Always).await;
    let config =
        ProducerConfig { batch_records_max: 10, linger: LINGER_NEVER, ..ProducerConfig::default() };
    let producer = client.producer("counted", config).await.unwrap();
    let mut deliveries = Vec::new();
    for n in 0..35u32 {
        deliveries.push(producer.send(Record::value(&n.to_le_bytes())).await.unwrap());
    }
    // 3 full batches go at once; the last 5 records wait for the flush.
    producer.flush().await.unwrap();
    for (n, delivery) in deliveries.into_iter().enumerate() {
        let stored = delivery.wait().await.unwrap();
        assert_eq!((stored.partition, stored.offset), (0, Some(n as u64)));
    }
    assert_eq!(producer.stats().batches_sent, 4);
    let (batches, values) = stored(&client, "counted", 0).await;
    let counts: Vec<u32> = batches.iter().map(|(count, _)| *count).collect();
    assert_eq!(counts, vec![10, 10, 10, 5]);
    let expected: Vec<Vec<u8>> = (0..35u32).map(|n| n.to_le_bytes().to_vec()).collect();
    assert_eq!(values, expected);
    server.shutdown().await;
}

#[tokio::test]
async fn batches_by_bytes_stay_under_the_limit() {
    let server = TestServer::start().await;
    let client = server.with_topic("sized", 1, Fsync::Always).await;
    let batch_bytes_max = 1000;
    let config = ProducerConfig {
        batch_bytes_max,
        buffer_bytes_max: 64 * 1024,
        linger: LINGER_NEVER,
        ..ProducerConfig::default()
    };
    let producer = client.producer("sized", config).await.unwrap();
    let value = [7u8; 200];
    for _ in 0..20 {
        producer.send(Record::value(&value)).await.unwrap();
    }
    producer.flush().await.unwrap();
    let (batches, values) = stored(&client, "sized", 0).await;
    assert_eq!(values.len(), 20);
    assert!(batches.len() > 1, "20 records of 200 bytes need several 1000-byte batches");
    for (count, bytes) in &batches {
        assert!(*bytes as usize <= batch_bytes_max, "a batch of {count} records has {bytes} bytes");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn linger_sends_a_partial_batch_without_a_flush() {
    let server = TestServer::start().await;
    let client = server.with_topic("lingering", 1, Fsync::Always).await;
    let config = ProducerConfig {
        batch_records_max: 1000,
        linger: Duration::from_millis(5),
        ..ProducerConfig::default()
    };
    let producer = client.producer("lingering", config).await.unwrap();
    let first = producer.send(Record::value(b"a")).await.unwrap();
    let second = producer.send(Record::value(b"b")).await.unwrap();
    // No flush: the linger timer alone sends the batch (the timeout only guards the test).
    let second = tokio::time::timeout(Duration::from_secs(30), second.wait()).await.unwrap();
    assert_eq!(second.unwrap().offset, Some(1));
    assert_eq!(first.try_result().unwrap().unwrap().offset, Some(0));
    server.shutdown().await;
}

#[tokio::test]
async fn a_producer_sends_to_partitions_the_topic_gained_after_it_started() {
    let server = TestServer::start().await;
    let client = server.with_topic("growing", 1, Fsync::Always).await;
    // Idempotent, so the new partitions' sequences start as the server expects.
    let config = ProducerConfig { idempotent: true, ..ProducerConfig::default() };
    let producer = client.producer("growing", config).await.unwrap();
    assert_eq!(producer.partitions(), 1);
    let change = TopicChange { partitions: Some(4), ..Default::default() };
    client.alter_topic("growing", change).await.unwrap();
    // Not seen until the producer reads the count again: a record for partition 3 is refused.
    let early = producer.send(Record::value(b"early").with_partition(3)).await;
    assert!(
        matches!(early, Err(ProduceError::UnknownPartition { partitions: 1, .. })),
        "{early:?}"
    );

    assert_eq!(producer.refresh_partitions().await.unwrap(), 4);
    assert_eq!(producer.partitions(), 4);
    let keys: [&[u8]; 8] = [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"];
    let mut deliveries = Vec::new();
    for key in keys {
        deliveries.push((key, producer.send(Record::value(key).with_key(key)).await.unwrap()));
    }
    deliveries.push((b"p3", producer.send(Record::value(b"p3").with_partition(3)).await.unwrap()));
    producer.flush().await.unwrap();
    let mut used = std::collections::BTreeSet::new();
    for (key, delivery) in deliveries {
        let stored = delivery.wait().await.unwrap();
        if key != b"p3" {
            assert_eq!(stored.partition, partition_for_key(key, 4), "key {key:?}");
        }
        used.insert(stored.partition);
    }
    assert!(used.len() > 1 && used.contains(&3), "the new partitions take records: {used:?}");
    producer.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn keyed_records_go_where_the_server_would_put_them_in_order() {
    let server = TestServer::start().await;
    let client = server.with_topic("keyed", 4, Fsync::Always).await;
    let producer = client.producer("keyed", ProducerConfig::default()).await.unwrap();
    let keys: [&[u8]; 5] = [b"alice", b"bob", b"carol", b"dave", b"erin"];
    let mut deliveries = Vec::new();
    for round in 0..20u32 {
        for key in keys {
            let delivery =
                producer.send(Record::value(&round.to_le_bytes()).with_key(key)).await.unwrap();
            deliveries.push((key, round, delivery));
        }
    }
    producer.flush().await.unwrap();
    let mut last_offset: std::collections::HashMap<&[u8], u64> = Default::default();
    for (key, _round, delivery) in deliveries {
        let stored = delivery.wait().await.unwrap();
        assert_eq!(stored.partition, partition_for_key(key, 4), "key {key:?}");
        let offset = stored.offset.unwrap();
        if let Some(previous) = last_offset.insert(key, offset) {
            assert!(offset > previous, "records of one key keep their order");
        }
    }
    // Each key's values arrive in the order sent.
    for partition in 0..4 {
        let (_, values) = stored(&client, "keyed", partition).await;
        let count = keys.iter().filter(|k| partition_for_key(k, 4) == partition).count();
        assert_eq!(values.len(), count * 20);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn keyless_records_fill_one_partition_at_a_time() {
    let server = TestServer::start().await;
    let client = server.with_topic("sticky", 3, Fsync::Always).await;
    let config =
        ProducerConfig { batch_records_max: 4, linger: LINGER_NEVER, ..ProducerConfig::default() };
    let producer = client.producer("sticky", config).await.unwrap();
    let mut partitions = Vec::new();
    for n in 0..12u32 {
        partitions.push(producer.send(Record::value(&n.to_le_bytes())).await.unwrap().partition());
    }
    assert_eq!(partitions, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    producer.flush().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn single_record_requests_with_256_in_flight() {
    let server = TestServer::start().await;
    let client = server.with_topic("pipelined", 1, Fsync::Always).await;
    let config =
        ProducerConfig { batch_records_max: 1, in_flight_max: 256, ..ProducerConfig::default() };
    let producer = client.producer("pipelined", config).await.unwrap();
    let mut deliveries = Vec::new();
    for n in 0..2000u32 {
        deliveries.push(producer.send(Record::value(&n.to_le_bytes())).await.unwrap());
    }
    for (n, delivery) in deliveries.into_iter().enumerate() {
        assert_eq!(delivery.wait().await.unwrap().offset, Some(n as u64));
    }
    assert_eq!(producer.stats().batches_sent, 2000);
    producer.close().await.unwrap();
    server.shutdown().await;
}

fn small_buffer(backpressure: Backpressure) -> ProducerConfig {
    ProducerConfig {
        batch_bytes_max: 4096,
        buffer_bytes_max: 4096,
        linger: LINGER_NEVER,
        backpressure,
        ..ProducerConfig::default()
    }
}

#[tokio::test]
async fn fail_fast_backpressure_refuses_when_the_buffer_is_full() {
    let server = TestServer::start().await;
    let client = server.with_topic("full", 1, Fsync::Always).await;
    let producer = client.producer("full", small_buffer(Backpressure::FailFast)).await.unwrap();
    let value = [1u8; 1000];
    let mut accepted = 0;
    let refused = loop {
        match producer.send(Record::value(&value)).await {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 100, "a 4096-byte buffer cannot take 100 records of 1000 bytes");
    };
    assert_eq!(refused, ProduceError::BufferFull { bytes_max: 4096 });
    assert!(accepted >= 3);
    // Once the buffered batch is acknowledged, there is room again.
    producer.flush().await.unwrap();
    producer.send(Record::value(&value)).await.unwrap();
    producer.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn wait_backpressure_waits_for_room_then_sends() {
    let server = TestServer::start().await;
    let client = server.with_topic("waiting", 1, Fsync::Always).await;
    let producer = client.producer("waiting", small_buffer(Backpressure::Wait)).await.unwrap();
    let value = [2u8; 1000];
    while producer.try_send(Record::value(&value)).is_ok() {}
    // The buffer is full and nothing is due to be sent (linger is long): a send must wait.
    let mut send = pin!(producer.send(Record::value(&value)));
    let mut context = Context::from_waker(Waker::noop());
    assert!(send.as_mut().poll(&mut context).is_pending(), "a full buffer makes send wait");
    // A flush sends the buffered batch; its answer frees the room the waiting send needs.
    let (sent, flushed) = tokio::join!(send, producer.flush());
    flushed.unwrap();
    producer.flush().await.unwrap();
    let offset = sent.unwrap().wait().await.unwrap().offset.unwrap();
    assert!(offset >= 3, "the waiting record comes after the ones buffered before it");
    producer.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn errors_a_caller_can_match_on() {
    let server = TestServer::start().await;
    let client = server.with_topic("strict", 2, Fsync::Never).await;

    let missing = client.producer("no-such-topic", ProducerConfig::default()).await.unwrap_err();
    assert!(
        matches!(&missing, ProducerError::Rejected(e) if e.code == ErrorCode::NotFound),
        "{missing:?}"
    );
    let too_many = ProducerConfig { in_flight_max: 257, ..ProducerConfig::default() };
    assert!(matches!(
        client.producer("strict", too_many).await,
        Err(ProducerError::BadConfig { .. })
    ));

    let producer = client.producer("strict", ProducerConfig::default()).await.unwrap();
    let huge = vec![0u8; 2 * 1024 * 1024];
    assert!(matches!(
        producer.send(Record::value(&huge)).await,
        Err(ProduceError::RecordTooLarge { .. })
    ));
    assert_eq!(
        producer.send(Record::value(b"x").with_partition(2)).await.unwrap_err(),
        ProduceError::UnknownPartition { topic: "strict".into(), partition: 2, partitions: 2 }
    );
    let headers = [Header::new("h", None); 65];
    assert!(matches!(
        producer.send(Record::value(b"x").with_headers(&headers)).await,
        Err(ProduceError::InvalidRecord { .. })
    ));
    assert!(matches!(
        producer.send(Record::value(b"x").with_timestamp_ms(-1)).await,
        Err(ProduceError::InvalidRecord { .. })
    ));
    // acks=all on an fsync `never` topic: the server refuses the batch.
    let refused = producer.send(Record::value(b"x")).await.unwrap().wait().await.unwrap_err();
    assert!(
        matches!(&refused, ProduceError::Rejected(e) if e.code == ErrorCode::FailedPrecondition),
        "{refused:?}"
    );
    // The stream goes on after a refused request.
    let leader = ProducerConfig { acks: Acks::Leader, ..ProducerConfig::default() };
    let producer = client.producer("strict", leader).await.unwrap();
    let stored = producer.send(Record::value(b"y")).await.unwrap().wait().await.unwrap();
    assert!(stored.offset.is_some());
    producer.close().await.unwrap();
    assert_eq!(producer.send(Record::value(b"z")).await.unwrap_err(), ProduceError::Closed);
    server.shutdown().await;
}

#[tokio::test]
async fn acks_none_reports_delivery_without_offsets() {
    let server = TestServer::start().await;
    let client = server.with_topic("fire", 1, Fsync::Never).await;
    let config = ProducerConfig { acks: Acks::None, ..ProducerConfig::default() };
    let producer = client.producer("fire", config).await.unwrap();
    let mut deliveries = Vec::new();
    for n in 0..100u32 {
        deliveries.push(producer.send(Record::value(&n.to_le_bytes())).await.unwrap());
    }
    producer.flush().await.unwrap();
    for delivery in deliveries {
        assert_eq!(delivery.wait().await.unwrap().offset, None);
    }
    producer.close().await.unwrap();
    // What was sent is stored, in order. Nothing is acknowledged with acks=none, so the last
    // requests may still be in the partition's queue: follow the log until they arrive (the
    // timeout only guards against a hang).
    let mut consumer = client.subscribe("fire", 0, StartAt::Earliest, Follow::Live).await.unwrap();
    let mut values = Vec::new();
    let all_arrive = async {
        while values.len() < 100 {
            let polled = consumer.poll().await.unwrap().expect("a live subscription goes on");
            for record in polled.records() {
                values.push(record.unwrap().value.unwrap().to_vec());
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), all_arrive)
        .await
        .expect("fire-and-forget records reach the log");
    let expected: Vec<Vec<u8>> = (0..100u32).map(|n| n.to_le_bytes().to_vec()).collect();
    assert_eq!(values, expected);
    assert_eq!(producer.stats().unacknowledged_failures, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_going_away_fails_the_producer() {
    let server = TestServer::start().await;
    let client = server.with_topic("going", 1, Fsync::Always).await;
    let producer = client.producer("going", ProducerConfig::default()).await.unwrap();
    producer.send(Record::value(b"before")).await.unwrap().wait().await.unwrap();
    server.shutdown().await;
    // Either the send sees the producer already failed, or its batch fails: never a success.
    let outcome = match producer.send(Record::value(b"after")).await {
        Ok(delivery) => delivery.wait().await.map(|_| ()),
        Err(error) => Err(error),
    };
    match outcome {
        Err(ProduceError::Disconnected(_)) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(matches!(producer.flush().await, Err(ProduceError::Disconnected(_))));
}

#[tokio::test]
async fn every_codec_is_stored_as_sent_and_read_back_as_produced() {
    use spool_client::Codec;
    let server = TestServer::start().await;
    let client = server.with_topic("codecs", 1, Fsync::Always).await;
    let mut expected = Vec::new();
    let mut sizes = Vec::new();
    for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let config = ProducerConfig {
            compression: codec,
            linger: LINGER_NEVER,
            batch_records_max: 100,
            ..ProducerConfig::default()
        };
        let producer = client.producer("codecs", config).await.unwrap();
        let mut deliveries = Vec::new();
        for n in 0..100 {
            let value = format!(r#"{{"event":"page_view","codec":"{codec}","n":{n}}}"#);
            let headers = [Header::new("source", Some(b"web"))];
            let record = Record::value(value.as_bytes()).with_key(b"user-7").with_headers(&headers);
            deliveries.push(producer.send(record).await.unwrap());
            expected.push(value.into_bytes());
        }
        producer.flush().await.unwrap();
        for delivery in deliveries {
            delivery.wait().await.unwrap();
        }
    }
    let (batches, values) = stored(&client, "codecs", 0).await;
    assert_eq!(values, expected, "every record comes back as produced");
    assert_eq!(batches.len(), 5, "one batch per codec: {batches:?}");
    sizes.extend(batches.iter().map(|(_, bytes)| *bytes));
    // Compressible JSON takes less room compressed than not.
    for (codec, size) in ["gzip", "snappy", "lz4", "zstd"].iter().zip(&sizes[1..]) {
        assert!(*size < sizes[0] / 2, "{codec}: {size} bytes against {} uncompressed", sizes[0]);
    }
}

#[tokio::test]
async fn a_topic_that_requires_a_codec_stores_every_batch_in_it() {
    use spool_client::{Codec, TopicChange, TopicCompression, TopicSettings};
    let server = TestServer::start().await;
    let client = server.client().await;
    let zstd = TopicCompression::Codec(Codec::Zstd);
    let settings = TopicSettings { compression: zstd, ..TopicSettings::default() };
    let created = client.create_topic("required", settings).await.unwrap();
    assert_eq!(created.compression, zstd);
    let mut expected = Vec::new();
    let send = |codec: Codec, tag: &'static str| {
        let client = client.clone();
        async move {
            let config = ProducerConfig {
                compression: codec,
                linger: LINGER_NEVER,
                ..ProducerConfig::default()
            };
            let producer = client.producer("required", config).await.unwrap();
            let mut values = Vec::new();
            let mut deliveries = Vec::new();
            for n in 0..50 {
                let value = format!(r#"{{"event":"click","tag":"{tag}","n":{n}}}"#);
                let headers = [Header::new("source", Some(b"web"))];
                let record = Record::value(value.as_bytes()).with_key(b"k").with_headers(&headers);
                deliveries.push(producer.send(record).await.unwrap());
                values.push(value.into_bytes());
            }
            producer.flush().await.unwrap();
            for delivery in deliveries {
                delivery.wait().await.unwrap();
            }
            values
        }
    };
    // Uncompressed and gzip batches are re-encoded; a zstd one is stored as sent.
    for (codec, tag) in [(Codec::None, "none"), (Codec::Gzip, "gzip"), (Codec::Zstd, "zstd")] {
        expected.extend(send(codec, tag).await);
    }
    // Back to `producer`: the next batch keeps its codec, the stored ones keep theirs.
    let change =
        TopicChange { compression: Some(TopicCompression::Producer), ..Default::default() };
    let altered = client.alter_topic("required", change).await.unwrap();
    assert_eq!(altered.compression, TopicCompression::Producer);
    expected.extend(send(Codec::Gzip, "after").await);

    let mut consumer =
        client.subscribe("required", 0, StartAt::Earliest, Follow::UntilEnd).await.unwrap();
    let (mut codecs, mut values) = (Vec::new(), Vec::new());
    while let Some(polled) = consumer.poll().await.unwrap() {
        codecs.extend(polled.batches().map(|batch| batch.header().codec().unwrap()));
        for record in polled.records() {
            let record = record.unwrap();
            assert_eq!(record.key, Some(&b"k"[..]));
            assert_eq!(record.headers().count(), 1);
            values.push(record.value.unwrap().to_vec());
        }
    }
    assert_eq!(codecs, [Codec::Zstd, Codec::Zstd, Codec::Zstd, Codec::Gzip]);
    assert_eq!(values, expected, "every record comes back as produced");
}
