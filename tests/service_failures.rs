//! The gRPC service when a request or the disk goes wrong, against an in-process server on
//! 127.0.0.1:0: every error's status code, a damaged partition, a full disk, a subscriber that
//! stops reading, and garbage raw batches. No test sleeps waiting for something: each waits on
//! the event it expects.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, always, assert_code, header, record, value};
use spool_proto::v1::fsync_policy::{Never, Policy};
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::start_position::{Earliest, Position};
use spool_proto::v1::{
    Acks, CreateTopicRequest, DeleteTopicRequest, FetchRequest, ProduceRequest, Record, RecordList,
    StartPosition, SubscribeRequest, TopicConfig,
};
use spool_server::limits::SUBSCRIBE_READ_BYTES;
use spool_storage::batch::BATCH_HEADER_BYTES;
use spool_storage::sim::Rng;
use tonic::Code;

#[tokio::test]
async fn every_error_has_its_status_code() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 2, always()).await;
    server.create_topic("unsynced", 1, Policy::Never(Never {})).await;
    server.produce("t", Some(0), vec![record("a"), record("b")]).await.unwrap();
    let mut topics = server.topics().await;
    let create = |name: &str, partitions: u32| CreateTopicRequest {
        name: name.into(),
        config: Some(TopicConfig { partitions, ..Default::default() }),
    };

    // NOT_FOUND
    assert_code(
        server.produce("nope", None, vec![record("x")]).await,
        Code::NotFound,
        "topic nope does not exist",
    );
    assert_code(server.fetch("nope", 0, 0).await, Code::NotFound, "does not exist");
    assert_code(server.fetch("t", 2, 0).await, Code::NotFound, "partition 2 does not exist");
    assert_code(
        server.replay("nope", 0, Position::Earliest(Earliest {})).await,
        Code::NotFound,
        "nope",
    );
    assert_code(
        topics.delete_topic(DeleteTopicRequest { name: "nope".into() }).await,
        Code::NotFound,
        "nope",
    );

    // ALREADY_EXISTS
    assert_code(
        topics.create_topic(create("t", 1)).await,
        Code::AlreadyExists,
        "topic t already exists",
    );

    // INVALID_ARGUMENT: names, configuration, records, batches, fetch sizes, enum values.
    for bad in ["", ".", "..", "a/b", "../../etc", "spaces here", &"x".repeat(250)] {
        assert_code(topics.create_topic(create(bad, 1)).await, Code::InvalidArgument, "topic name");
    }
    assert_code(
        topics.create_topic(create("many", 100_000)).await,
        Code::InvalidArgument,
        "partition count 100000",
    );
    assert_code(
        server.produce("t", Some(0), vec![]).await,
        Code::InvalidArgument,
        "empty record list",
    );
    let mut late = record("x");
    late.timestamp_ms = Some(-1);
    assert_code(
        server.produce("t", Some(0), vec![late]).await,
        Code::InvalidArgument,
        "timestamp -1",
    );
    let mut crowded = record("x");
    crowded.headers = (0..65).map(|i| header(&i.to_string(), "v")).collect();
    assert_code(
        server.produce("t", Some(0), vec![crowded]).await,
        Code::InvalidArgument,
        "65 headers",
    );
    let big = Record { value: Some(Bytes::from(vec![7u8; 4 * 1024 * 1024])), ..record("") };
    assert_code(
        server.produce("t", Some(0), vec![big.clone(), big.clone()]).await,
        Code::InvalidArgument,
        "over the batch limit",
    );
    // A message over the server's decoding limit is refused by tonic before it is decoded
    // (tonic answers OUT_OF_RANGE for that), and the server goes on.
    let oversized = ProduceRequest {
        correlation_id: 0,
        topic: "t".into(),
        partition: Some(0),
        acks: 0,
        payload: Some(Payload::Records(RecordList {
            records: vec![big.clone(), big.clone(), big],
        })),
        producer: None,
    };
    let mut unlimited =
        spool_proto::v1::produce_service_client::ProduceServiceClient::new(server.channel().await)
            .max_encoding_message_size(usize::MAX);
    assert_code(unlimited.produce(oversized).await, Code::OutOfRange, "message length too large");
    let mut producer = server.producer().await;
    let raw = |bytes: &[u8]| ProduceRequest {
        correlation_id: 0,
        topic: "t".into(),
        partition: Some(0),
        acks: 0,
        payload: Some(Payload::RawBatch(Bytes::copy_from_slice(bytes))),
        producer: None,
    };
    assert_code(
        producer.produce(raw(b"not a batch")).await,
        Code::InvalidArgument,
        "invalid batch",
    );
    let no_payload = ProduceRequest { payload: None, ..raw(b"") };
    assert_code(producer.produce(no_payload).await, Code::InvalidArgument, "no records");
    let bad_acks = ProduceRequest {
        acks: 42,
        payload: Some(Payload::Records(RecordList { records: vec![record("x")] })),
        ..raw(b"")
    };
    assert_code(producer.produce(bad_acks).await, Code::InvalidArgument, "acks is 42");
    let mut consumer = server.consumer().await;
    let fetch = |max_bytes, max_wait_ms| FetchRequest {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        max_bytes,
        max_wait_ms,
        encoding: 0,
    };
    assert_code(consumer.fetch(fetch(u32::MAX, 0)).await, Code::InvalidArgument, "max_bytes");
    assert_code(consumer.fetch(fetch(0, 3_600_000)).await, Code::InvalidArgument, "max_wait_ms");

    // OUT_OF_RANGE, with the valid range in the message.
    assert_code(server.fetch("t", 0, 3).await, Code::OutOfRange, "the log holds offsets 0 to 1");
    assert_code(
        server.replay("t", 0, Position::Offset(9)).await,
        Code::OutOfRange,
        "offsets 0 to 1",
    );

    // FAILED_PRECONDITION: acks=all on a topic that never syncs.
    let all_on_never = ProduceRequest {
        topic: "unsynced".into(),
        acks: Acks::All as i32,
        payload: Some(Payload::Records(RecordList { records: vec![record("x")] })),
        ..raw(b"")
    };
    assert_code(
        producer.produce(all_on_never).await,
        Code::FailedPrecondition,
        "fsync policy `never`",
    );
    // ...while the default on such a topic is acknowledged once appended.
    server.produce("unsynced", Some(0), vec![record("x")]).await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_damaged_partition_answers_data_loss_and_stays_readable_up_to_the_damage() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 1, always()).await;
    for i in 0..3 {
        server.produce("t", Some(0), vec![record(&format!("record {i}"))]).await.unwrap();
    }
    server.shutdown().await;
    // Flip a byte inside the second batch: a bad batch followed by a good one is damage, not a
    // torn tail, so the partition opens fenced.
    let segment = data.path().join("topics/t/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let first_batch_bytes = 12 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    bytes[first_batch_bytes + BATCH_HEADER_BYTES + 2] ^= 0xff;
    std::fs::write(&segment, bytes).unwrap();

    let server = TestServer::start(data.path()).await;
    assert_code(
        server.produce("t", Some(0), vec![record("more")]).await,
        Code::DataLoss,
        "damaged",
    );
    let described = server.describe("t").await.unwrap();
    let reason = described.partitions[0].fenced_reason.clone().unwrap();
    assert!(reason.contains("spool dump"), "{reason}");
    let readable = server.fetch_all("t", 0, 0).await;
    assert_eq!(readable.iter().map(value).collect::<Vec<_>>(), ["record 0"]);
    // The fenced log cannot close cleanly, and the stop says so.
    let stopped = server.shutdown_unclean().await;
    assert!(stopped.contains("partition 0 of topic t"), "{stopped}");
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_resource_exhausted() {
    // Mounting needs root; where it is refused, the status mapping is still covered by the
    // server's unit tests (error::tests::codes).
    let Some(disk) = SmallDisk::mount(2 * 1024 * 1024) else {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    let server = TestServer::start(disk.0.path()).await;
    server.create_topic("t", 1, always()).await;
    let chunk = Record { value: Some(Bytes::from(vec![1u8; 100 * 1024])), ..record("") };
    let mut stored = 0;
    let full = loop {
        match server.produce("t", Some(0), vec![chunk.clone()]).await {
            Ok(_) => stored += 1,
            Err(status) => break status,
        }
        assert!(stored < 100, "a 2 MiB disk cannot hold 10 MiB");
    };
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("no space left"), "{}", full.message());
    // What was acknowledged is still there.
    assert_eq!(server.fetch_all("t", 0, 0).await.len(), stored);
    server.shutdown().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_holds_bounded_server_memory() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("firehose", 1, Policy::Never(Never {})).await;
    // A subscriber that takes nothing after opening its stream.
    let mut idle = server
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "firehose".into(),
            partition: 0,
            start: Some(StartPosition { position: Some(Position::Earliest(Earliest {})) }),
            encoding: 0,
            stop_at_end: false,
        })
        .await
        .unwrap()
        .into_inner();

    // 32 MiB in 64 KiB records, far more than the subscriber may hold.
    let value = Bytes::from(vec![b'x'; 64 * 1024]);
    let batches = 512;
    let mut producer = server.producer().await;
    for _ in 0..batches {
        producer
            .produce(ProduceRequest {
                correlation_id: 0,
                topic: "firehose".into(),
                partition: Some(0),
                acks: Acks::Leader as i32,
                payload: Some(Payload::Records(RecordList {
                    records: vec![Record { value: Some(value.clone()), ..record("") }],
                })),
                producer: None,
            })
            .await
            .unwrap();
    }
    let produced_bytes = (batches * value.len()) as u64;
    // The subscription fills its bounded queue and then waits for its client.
    let metrics = server.metrics().clone();
    tokio::time::timeout(
        Duration::from_secs(60),
        metrics.wait_for(|m| m.subscribers_waiting_on_client() == 1),
    )
    .await
    .expect("the subscription blocks on its client");
    // Queue depth 2 plus the message waiting to enter it, each one read of at most
    // SUBSCRIBE_READ_BYTES (the batches here are smaller than a read).
    let bound = 3 * u64::from(SUBSCRIBE_READ_BYTES);
    let held = metrics.subscriber_buffered_bytes();
    assert!(held <= bound, "a subscriber holds {held} bytes, over {bound}");
    assert!(produced_bytes > 10 * bound);

    // It fell behind but lost nothing: reading now yields every record in order.
    let mut next = 0;
    while next < batches as u64 {
        let message = idle.message().await.unwrap().unwrap();
        for r in &message.records {
            assert_eq!(r.offset, next);
            next += 1;
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_never_panics_the_server() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 1, always()).await;
    let mut producer = server.producer().await;
    let mut rng = Rng::new(1);
    for round in 0..300 {
        let state = rng.next_u64();
        let len = (state % 300) as usize;
        let mut bytes: Vec<u8> =
            (0..len).map(|i| (state.rotate_left(i as u32 % 64) >> 5) as u8).collect();
        // Half the rounds get a plausible header, so the checks past the length run too.
        if round % 2 == 0 && bytes.len() >= 54 {
            let length = (bytes.len() - 12) as u32;
            bytes[8..12].copy_from_slice(&length.to_le_bytes());
            bytes[12] = 0xB5;
            bytes[13] = 1;
        }
        let result = producer
            .produce(ProduceRequest {
                correlation_id: 0,
                topic: "t".into(),
                partition: Some(0),
                acks: 0,
                payload: Some(Payload::RawBatch(Bytes::from(bytes))),
                producer: None,
            })
            .await;
        assert_code(result, Code::InvalidArgument, "batch");
    }
    // Still serving.
    server.produce("t", Some(0), vec![record("fine")]).await.unwrap();
    server.shutdown().await;
}
