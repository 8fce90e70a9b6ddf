//! End-to-end tests of the gRPC service against an in-process server on 127.0.0.1:0.
//! No test sleeps waiting for something: each waits on the event it expects.
//!
//! The service when a request or the disk goes wrong is `service_failures.rs`.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{TestServer, always, assert_code, header, keyed, record, value};
use spool_proto::partitioner::partition_for_key;
use spool_proto::v1::fsync_policy::{Never, Policy};
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_stream_response::Result as StreamResult;
use spool_proto::v1::start_position::{Earliest, Latest, Position};
use spool_proto::v1::{
    Acks, CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, Encoding, FetchRequest,
    ListTopicsRequest, ProduceRequest, ProduceStreamResponse, Record, RecordList, StartPosition,
    SubscribeRequest, TopicCompression, TopicConfig,
};
use spool_storage::TimestampMs;
use spool_storage::batch::{self, BatchBuilder, BatchIter, Header, ProducerStamp};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test]
async fn topics_are_created_listed_described_and_deleted() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let mut topics = server.topics().await;
    server.create_topic("orders", 3, always()).await;
    server.create_topic("audit.log-v1", 1, Policy::Never(Never {})).await;

    let listed = topics.list_topics(ListTopicsRequest {}).await.unwrap().into_inner();
    let names: Vec<_> = listed.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["audit.log-v1", "orders"]);

    server.produce("orders", Some(1), vec![record("a"), record("b")]).await.unwrap();
    let described = topics
        .describe_topic(DescribeTopicRequest { name: "orders".into() })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    assert_eq!(described.config.unwrap().partitions, 3);
    let ends: Vec<_> = described
        .partitions
        .iter()
        .map(|p| (p.partition, p.log_start_offset, p.log_end_offset))
        .collect();
    assert_eq!(ends, [(0, 0, 0), (1, 0, 2), (2, 0, 0)]);
    assert!(described.partitions[1].size_bytes > 0);
    assert!(described.partitions.iter().all(|p| p.fenced_reason.is_none()));

    // A follower of a topic being deleted is told so, rather than left waiting.
    let mut follower = server
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "orders".into(),
            partition: 1,
            start: Some(StartPosition { position: Some(Position::Latest(Latest {})) }),
            encoding: 0,
            stop_at_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    topics.delete_topic(DeleteTopicRequest { name: "orders".into() }).await.unwrap();
    assert!(!data.path().join("topics/orders").exists());
    assert_code(follower.message().await, Code::NotFound, "topic orders was deleted");
    assert_code(
        topics.describe_topic(DescribeTopicRequest { name: "orders".into() }).await,
        Code::NotFound,
        "topic orders does not exist",
    );
    // The name is free again, and the new topic starts empty.
    server.create_topic("orders", 1, always()).await;
    assert!(server.fetch_all("orders", 0, 0).await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn records_go_by_key_hash_explicit_partition_or_round_robin() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("events", 4, always()).await;

    let mut with_headers = keyed("user-7", "signed up");
    with_headers.headers = vec![header("trace", "abc"), header("trace", "def")];
    with_headers.headers.push(spool_proto::v1::Header { key: "flag".into(), value: None });
    let keys = ["user-1", "user-2", "user-3", "user-4", "user-5"];
    let mut records: Vec<Record> =
        keys.iter().map(|k| keyed(k, &format!("value of {k}"))).collect();
    records.push(with_headers);
    let produced = server.produce("events", None, records).await.unwrap();
    // One append per partition the keys hash to, in partition order.
    let mut expected: Vec<u32> =
        keys.iter().chain(["user-7"].iter()).map(|k| partition_for_key(k.as_bytes(), 4)).collect();
    expected.sort_unstable();
    expected.dedup();
    let partitions: Vec<u32> = produced.appends.iter().map(|a| a.partition).collect();
    assert_eq!(partitions, expected);

    for key in keys {
        let partition = partition_for_key(key.as_bytes(), 4);
        let found = server.fetch_all("events", partition, 0).await;
        let found = found.iter().find(|r| r.key.as_deref() == Some(key.as_bytes())).unwrap();
        assert_eq!(value(found), format!("value of {key}"));
    }
    let partition = partition_for_key(b"user-7", 4);
    let found = server.fetch_all("events", partition, 0).await;
    let signed_up = found.iter().find(|r| r.key.as_deref() == Some(&b"user-7"[..])).unwrap();
    assert_eq!(signed_up.headers.len(), 3);
    assert_eq!(signed_up.headers[0], header("trace", "abc"));
    assert_eq!(signed_up.headers[1], header("trace", "def"));
    assert_eq!(signed_up.headers[2].value, None);

    // An explicit partition wins over the key.
    let produced =
        server.produce("events", Some(3), vec![keyed("user-1", "x"), record("y")]).await.unwrap();
    assert_eq!(produced.appends.len(), 1);
    let append = &produced.appends[0];
    assert_eq!((append.partition, append.last_offset - append.base_offset), (3, 1));
    let tail = server.fetch_all("events", 3, append.base_offset).await;
    assert_eq!(tail.iter().map(value).collect::<Vec<_>>(), ["x", "y"]);
    assert_eq!(tail[0].offset, append.base_offset);

    // Records without key or partition go round-robin, one partition per request.
    let mut seen = Vec::new();
    for i in 0..4 {
        let produced = server.produce("events", None, vec![record(&i.to_string())]).await.unwrap();
        seen.push(produced.appends[0].partition);
    }
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3]);
    server.shutdown().await;
}

#[tokio::test]
async fn replay_from_an_offset_a_timestamp_earliest_and_latest() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 1, always()).await;
    for i in 0..10 {
        let mut r = record(&format!("r{i}"));
        r.timestamp_ms = Some(1_000 * (i + 1));
        server.produce("t", Some(0), vec![r]).await.unwrap();
    }
    let values = |records: Vec<spool_proto::v1::ConsumedRecord>| {
        records.iter().map(|r| value(r).to_owned()).collect::<Vec<_>>()
    };
    let all = server.replay("t", 0, Position::Earliest(Earliest {})).await.unwrap();
    assert_eq!(all.len(), 10);
    assert_eq!(all.iter().map(|r| r.offset).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert_eq!(all[3].timestamp_ms, 4_000);

    let from_offset = server.replay("t", 0, Position::Offset(7)).await.unwrap();
    assert_eq!(values(from_offset), ["r7", "r8", "r9"]);
    // Between two records' timestamps: the first at or after it.
    let from_time = server.replay("t", 0, Position::TimestampMs(7_500)).await.unwrap();
    assert_eq!(values(from_time), ["r7", "r8", "r9"]);
    let exact_time = server.replay("t", 0, Position::TimestampMs(2_000)).await.unwrap();
    assert_eq!(exact_time.len(), 9);
    assert!(server.replay("t", 0, Position::TimestampMs(99_000)).await.unwrap().is_empty());
    assert!(server.replay("t", 0, Position::Latest(Latest {})).await.unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_follows_the_live_end_while_another_task_produces() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("live", 1, always()).await;
    server.produce("live", Some(0), vec![record("before")]).await.unwrap();
    let mut stream = server
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "live".into(),
            partition: 0,
            start: Some(StartPosition { position: Some(Position::Earliest(Earliest {})) }),
            encoding: 0,
            stop_at_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(value(&first.records[0]), "before");

    let producer = server.producer().await;
    let produce = tokio::spawn(async move {
        let mut producer = producer;
        for i in 0..200 {
            producer
                .produce(ProduceRequest {
                    correlation_id: 0,
                    topic: "live".into(),
                    partition: Some(0),
                    acks: Acks::All as i32,
                    payload: Some(Payload::Records(RecordList {
                        records: vec![record(&i.to_string())],
                    })),
                    producer: None,
                })
                .await
                .unwrap();
        }
    });
    let mut next = 1;
    while next <= 200 {
        let message = stream.message().await.unwrap().unwrap();
        for r in &message.records {
            assert_eq!(r.offset, next, "no gap, no repeat");
            assert_eq!(value(r), (next - 1).to_string());
            next += 1;
        }
    }
    produce.await.unwrap();
    server.shutdown().await;
}

/// A live subscription from the earliest offset of `topic`.
async fn follow(
    server: &TestServer,
    topic: &str,
) -> tonic::Streaming<spool_proto::v1::SubscribeResponse> {
    let request = SubscribeRequest {
        topic: topic.into(),
        partition: 0,
        start: Some(StartPosition { position: Some(Position::Earliest(Earliest {})) }),
        encoding: Encoding::RawBatch as i32,
        stop_at_end: false,
    };
    server.consumer().await.subscribe(request).await.unwrap().into_inner()
}

/// Reads `stream` to its end: the messages, and the status it ended with (`None`: it ended
/// without one, which a client takes for a finished stream).
async fn drain(
    mut stream: tonic::Streaming<spool_proto::v1::SubscribeResponse>,
) -> (usize, Option<tonic::Status>) {
    let mut messages = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => messages += 1,
            Ok(None) => return (messages, None),
            Err(status) => return (messages, Some(status)),
        }
    }
}

#[tokio::test]
async fn a_live_subscription_ends_with_a_status_at_shutdown_even_while_its_queue_is_full() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("backlog", 1, always()).await;
    // 8 MiB: more than the subscription's queue and the connection's windows hold, so the
    // server is waiting on the client when it is told to stop.
    let value = "x".repeat(256 * 1024);
    for _ in 0..32 {
        server.produce("backlog", Some(0), vec![record(&value)]).await.unwrap();
    }
    let mut stream = follow(&server, "backlog").await;
    stream.message().await.unwrap().unwrap();
    let stopping = tokio::spawn(server.shutdown());
    let (_, ended) = drain(stream).await;
    let ended = ended.expect("the stream ended without a status: a follower would stop");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn a_live_subscription_ends_with_not_found_when_its_topic_is_deleted() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("doomed", 1, always()).await;
    server.produce("doomed", Some(0), vec![record("only")]).await.unwrap();
    let mut stream = follow(&server, "doomed").await;
    stream.message().await.unwrap().unwrap();
    // Caught up: the subscription waits for the partition to change.
    let mut topics = server.topics().await;
    topics.delete_topic(DeleteTopicRequest { name: "doomed".into() }).await.unwrap();
    let (_, ended) = drain(stream).await;
    let ended = ended.expect("the stream ended without a status");
    assert_eq!(ended.code(), Code::NotFound, "{ended:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn fetch_long_polls_until_a_record_arrives() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("poll", 1, always()).await;
    let mut consumer = server.consumer().await;
    let waiting = tokio::spawn(async move {
        consumer
            .fetch(FetchRequest {
                topic: "poll".into(),
                partition: 0,
                offset: 0,
                max_bytes: 0,
                max_wait_ms: 60_000,
                encoding: 0,
            })
            .await
            .unwrap()
            .into_inner()
    });
    server.produce("poll", Some(0), vec![record("hello")]).await.unwrap();
    let fetched = tokio::time::timeout(Duration::from_secs(30), waiting).await.unwrap().unwrap();
    assert_eq!(fetched.records.len(), 1);
    assert_eq!(value(&fetched.records[0]), "hello");
    assert_eq!((fetched.next_offset, fetched.log_end_offset), (1, 1));
    server.shutdown().await;
}

#[tokio::test]
async fn raw_batches_are_stored_as_they_came_and_served_from_the_log() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("raw", 1, always()).await;
    server.produce("raw", Some(0), vec![record("first")]).await.unwrap();
    let mut builder = BatchBuilder::new(BytesMut::new());
    builder.push(TimestampMs(5), Some(b"k"), Some(b"v1"), &[Header::new("h", Some(b"x"))]);
    builder.push(TimestampMs(6), None, Some(b"v2"), &[]);
    let batch = builder.finish(ProducerStamp::NONE).freeze();
    let produced = server
        .producer()
        .await
        .produce(ProduceRequest {
            correlation_id: 0,
            topic: "raw".into(),
            partition: Some(0),
            // All, not Leader: on an `always` topic a record is visible only once synced, and
            // the fetch below does not wait.
            acks: Acks::All as i32,
            payload: Some(Payload::RawBatch(batch.clone())),
            producer: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((produced.appends[0].base_offset, produced.appends[0].last_offset), (1, 2));

    // Served raw: the same bytes, with only the fields stamped at append changed.
    let fetched = server.fetch_raw("raw", 0, 1).await;
    assert!(fetched.records.is_empty());
    let stored = BatchIter::new(&fetched.raw_batches).next().unwrap().unwrap();
    assert_eq!(stored.header().base_offset.0, 1);
    // Stored as version 2: Spool's frame, then the Kafka batch as sent but for its
    // `baseOffset` and `partitionLeaderEpoch`.
    assert_eq!(stored.as_bytes().len(), batch.len() + batch::v2::frame::BYTES);
    assert_eq!(stored.header().crc, batch::CheckedBatch::check(&batch[..]).unwrap().header().crc);
    let kafka = stored.kafka_bytes();
    assert_eq!(&kafka[batch::v2::kafka::MAGIC..], &batch[batch::v2::kafka::MAGIC..]);

    // And decoded for a plain protobuf consumer.
    let decoded = server.fetch_all("raw", 0, 1).await;
    assert_eq!(decoded.iter().map(value).collect::<Vec<_>>(), ["v1", "v2"]);
    assert_eq!(decoded[0].headers, [header("h", "x")]);
    assert_eq!(decoded[1].timestamp_ms, 6);

    // A batch whose CRC does not match is refused, and nothing is stored.
    let mut damaged = batch.to_vec();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let refused = server
        .producer()
        .await
        .produce(ProduceRequest {
            correlation_id: 0,
            topic: "raw".into(),
            partition: Some(0),
            acks: Acks::All as i32,
            payload: Some(Payload::RawBatch(Bytes::from(damaged))),
            producer: None,
        })
        .await;
    assert_code(refused, Code::InvalidArgument, "CRC mismatch");
    assert_eq!(server.fetch_all("raw", 0, 0).await.len(), 3);
    server.shutdown().await;
}

#[tokio::test]
async fn a_topic_that_requires_a_codec_stores_protobuf_records_in_it_and_serves_them_decoded() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let config = TopicConfig { compression: TopicCompression::Zstd as i32, ..Default::default() };
    let request = CreateTopicRequest { name: "z".into(), config: Some(config) };
    let created = server.topics().await.create_topic(request).await.unwrap().into_inner();
    let config = created.topic.unwrap().config.unwrap();
    assert_eq!(config.compression(), TopicCompression::Zstd);
    let records = vec![record("first"), keyed("k", "second"), stamped_with_header()];
    server.produce("z", Some(0), records).await.unwrap();

    let fetched = server.fetch_raw("z", 0, 0).await;
    let stored = BatchIter::new(&fetched.raw_batches).next().unwrap().unwrap();
    assert_eq!(stored.header().codec().unwrap(), batch::Codec::Zstd);
    // Decoded for a protobuf consumer, by fetch and by subscribe, from the decompressed
    // records.
    let fetched = server.fetch_all("z", 0, 0).await;
    let replayed = server.replay("z", 0, Position::Earliest(Earliest {})).await.unwrap();
    for records in [fetched, replayed] {
        assert_eq!(records.iter().map(value).collect::<Vec<_>>(), ["first", "second", "third"]);
        assert_eq!(records[1].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(records[2].headers, [header("h", "x")]);
        assert_eq!(records[2].timestamp_ms, 7);
    }
    server.shutdown().await;
}

fn stamped_with_header() -> Record {
    Record { timestamp_ms: Some(7), headers: vec![header("h", "x")], ..record("third") }
}

#[tokio::test]
async fn a_produce_stream_answers_by_correlation_id_and_survives_bad_requests() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("s", 2, always()).await;
    let request = |id: u64, topic: &str, acks: Acks| ProduceRequest {
        correlation_id: id,
        topic: topic.into(),
        partition: Some(1),
        acks: acks as i32,
        payload: Some(Payload::Records(RecordList { records: vec![record(&id.to_string())] })),
        producer: None,
    };
    let requests = vec![
        request(10, "s", Acks::All),
        request(11, "missing", Acks::All),
        request(12, "s", Acks::None),
        request(13, "s", Acks::Leader),
        request(14, "missing", Acks::None),
    ];
    let answers: Vec<_> = server
        .producer()
        .await
        .produce_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    let summary: Vec<_> = answers
        .iter()
        .map(|a| match a.result.as_ref().unwrap() {
            StreamResult::Ok(ok) => (a.correlation_id, Ok(ok.appends[0].base_offset)),
            StreamResult::Error(e) => (a.correlation_id, Err(e.code)),
        })
        .collect();
    assert_eq!(
        summary,
        [
            (10, Ok(0)),
            (11, Err(Code::NotFound as i32)),
            (13, Ok(2)),
            (14, Err(Code::NotFound as i32)),
        ]
    );
    let stored = server.fetch_all("s", 1, 0).await;
    assert_eq!(stored.iter().map(value).collect::<Vec<_>>(), ["10", "12", "13"]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_restart_on_the_same_data_directory_replays_everything_unchanged() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("keep", 2, always()).await;
    server.create_topic("later", 1, Policy::IntervalMs(5)).await;
    for i in 0..50 {
        let mut r = keyed(&format!("k{i}"), &format!("v{i}"));
        r.headers = vec![header("i", &i.to_string())];
        server.produce("keep", None, vec![r]).await.unwrap();
        server.produce("later", Some(0), vec![record(&i.to_string())]).await.unwrap();
    }
    let before = [
        server.fetch_all("keep", 0, 0).await,
        server.fetch_all("keep", 1, 0).await,
        server.fetch_all("later", 0, 0).await,
    ];
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 100);
    server.shutdown().await;
    // Closed cleanly: the next start trusts the files instead of scanning them.
    assert!(data.path().join("topics/keep/0/clean-shutdown").exists());
    assert!(data.path().join("topics/later/0/clean-shutdown").exists());

    let server = TestServer::start(data.path()).await;
    let after = [
        server.fetch_all("keep", 0, 0).await,
        server.fetch_all("keep", 1, 0).await,
        server.fetch_all("later", 0, 0).await,
    ];
    assert_eq!(before, after);
    // New records continue the offsets.
    let produced = server.produce("later", Some(0), vec![record("50")]).await.unwrap();
    assert_eq!(produced.appends[0].base_offset, 50);
    server.shutdown().await;
}

/// One record per request on one produce stream, `acks=all`: request `i` (its correlation id)
/// carries the value `i` to the `i`th partition of `partitions`. Every answer, in order.
async fn stream_records(
    server: &TestServer,
    topic: &str,
    partitions: impl Iterator<Item = u32>,
) -> Vec<ProduceStreamResponse> {
    let requests: Vec<_> = partitions
        .enumerate()
        .map(|(i, partition)| ProduceRequest {
            correlation_id: i as u64,
            topic: topic.into(),
            partition: Some(partition),
            acks: Acks::All as i32,
            payload: Some(Payload::Records(RecordList { records: vec![record(&i.to_string())] })),
            producer: None,
        })
        .collect();
    server
        .producer()
        .await
        .produce_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap()
}

/// More partitions syncing at once than may sync alone share `syncfs` rounds: every batch is
/// answered, once, with its own offset, and is there after a restart.
#[tokio::test]
async fn many_partitions_syncing_at_once_answer_every_batch_and_keep_it() {
    const PARTITIONS: u32 = 128;
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("wide", PARTITIONS, always()).await;
    let answers =
        stream_records(&server, "wide", (0..2 * PARTITIONS).map(|i| i % PARTITIONS)).await;
    assert_eq!(answers.len(), 2 * PARTITIONS as usize);
    for answer in &answers {
        let Some(StreamResult::Ok(ok)) = &answer.result else { panic!("{answer:?}") };
        let expected = u64::from(answer.correlation_id >= u64::from(PARTITIONS));
        assert_eq!(ok.appends[0].base_offset, expected, "{answer:?}");
    }
    server.shutdown().await;

    let server = TestServer::start(data.path()).await;
    for partition in 0..PARTITIONS {
        let stored = server.fetch_all("wide", partition, 0).await;
        let values: Vec<_> = stored.iter().map(value).collect();
        assert_eq!(values, [partition.to_string(), (partition + PARTITIONS).to_string()]);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_what_was_acknowledged_and_closes_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 1, always()).await;
    let answers = stream_records(&server, "t", std::iter::repeat_n(0, 300)).await;
    assert_eq!(answers.len(), 300);
    // A follower is connected while the server stops: it is told, not left hanging.
    let mut follower = server
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "t".into(),
            partition: 0,
            start: Some(StartPosition { position: Some(Position::Latest(Latest {})) }),
            encoding: 0,
            stop_at_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    server.shutdown().await;
    let ended = follower.message().await;
    assert!(
        matches!(&ended, Err(s) if s.code() == Code::Unavailable) || matches!(ended, Ok(None)),
        "{ended:?}"
    );

    let server = TestServer::start(data.path()).await;
    let stored = server.fetch_all("t", 0, 0).await;
    assert_eq!(stored.len(), 300);
    assert!(stored.iter().enumerate().all(|(i, r)| value(r) == i.to_string()));
    server.shutdown().await;
}
