//! The Kafka listener, spoken to with Kafka's own message encoding (the `kafka-protocol`
//! crate's client side) over a plain TCP connection, and by two clients nobody here wrote:
//! kafka-python (pure Python, `tests/python/kafka_python_roundtrip.py`) and confluent-kafka
//! (librdkafka, `tests/python/confluent_kafka_roundtrip.py`).
//!
//! Both come from `.ci/run`'s virtual environment at `target/ci/venv` (or the Python named by
//! `SPOOL_PYTHON`); without them those tests say why they skip, and with
//! `SPOOL_REQUIRE_EXTERNAL_CLIENTS=1` (CI sets it) they fail instead.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::kafka::{
    Connection, Kafka, PATIENCE, batch, name, python_with, raw_frame, run_python, start,
};
use common::{TestServer, scrape};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ResponseHeader,
};
use kafka_protocol::protocol::Decodable;
use kafka_protocol::records::RecordBatchDecoder;
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_server::{AdvertisedAddress, ServeOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const CORRUPT_MESSAGE: i16 = 2;
const UNSUPPORTED_VERSION: i16 = 35;
const INVALID_REQUIRED_ACKS: i16 = 21;
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
const OFFSET_OUT_OF_RANGE: i16 = 1;

/// The RecordBatch v2s in `records`, back to back.
fn batches(records: &Bytes) -> Vec<Bytes> {
    let mut rest = records.clone();
    let mut batches = Vec::new();
    while !rest.is_empty() {
        let length = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
        batches.push(rest.split_to(12 + length));
    }
    batches
}

fn produce_request(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    ProduceRequest::default().with_acks(acks).with_timeout_ms(30_000).with_topic_data(vec![
        TopicProduceData::default().with_name(name(topic)).with_partition_data(vec![
            PartitionProduceData::default().with_index(partition).with_records(Some(records)),
        ]),
    ])
}

fn fetch_request(topic: &str, partition: i32, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(50 * 1024 * 1024)
        .with_isolation_level(1)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default().with_topic(name(topic)).with_partitions(vec![
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1024 * 1024),
        ])])
}

async fn produce(
    connection: &mut Connection,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> (i16, i64) {
    let answer: ProduceResponse =
        connection.call(ApiKey::Produce, 8, &produce_request(topic, partition, records, -1)).await;
    let partition = &answer.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

async fn fetch(
    connection: &mut Connection,
    topic: &str,
    partition: i32,
    offset: i64,
    wait_ms: i32,
) -> FetchResponse {
    connection.call(ApiKey::Fetch, 11, &fetch_request(topic, partition, offset, wait_ms)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn api_versions_advertise_exactly_what_is_served_and_answer_any_version() {
    let kafka = start(None).await;
    let mut connection = Connection::open(&kafka).await;
    for version in 0..=3 {
        let answer: ApiVersionsResponse =
            connection.call(ApiKey::ApiVersions, version, &ApiVersionsRequest::default()).await;
        assert_eq!(answer.error_code, 0);
        let served: Vec<(i16, i16, i16)> =
            answer.api_keys.iter().map(|k| (k.api_key, k.min_version, k.max_version)).collect();
        let groups = [(10, 0, 2), (11, 0, 5), (14, 0, 3), (12, 0, 3), (13, 0, 3), (8, 2, 7)];
        let groups =
            [&groups[..], &[(9, 1, 5), (15, 0, 4), (16, 0, 2), (42, 0, 1), (47, 0, 0)]].concat();
        let produce_and_fetch = [(18, 0, 3), (3, 1, 8), (0, 3, 8), (1, 4, 11), (2, 1, 5)];
        let admin = [
            (22, 0, 4),
            (19, 2, 4),
            (20, 1, 3),
            (37, 0, 1),
            (32, 1, 3),
            (44, 0, 0),
            (23, 2, 3),
            (43, 0, 1),
        ];
        assert_eq!(served, [&produce_and_fetch[..], &admin, &groups].concat());
    }
    // A newer version than served: the v0 answer, UNSUPPORTED_VERSION with the served ranges.
    let id = connection.send(ApiKey::ApiVersions, 4, &ApiVersionsRequest::default()).await;
    let mut frame = connection.receive_frame().await.unwrap();
    let header = ResponseHeader::decode(&mut frame, 0).unwrap();
    assert_eq!(header.correlation_id, id);
    let answer = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(answer.error_code, UNSUPPORTED_VERSION);
    assert_eq!(answer.api_keys.len(), 24);
    // The connection still serves.
    let _: ApiVersionsResponse =
        connection.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_names_one_broker_and_the_topics_asked_for() {
    let advertised: AdvertisedAddress = "broker.example:19092".parse().unwrap();
    let kafka = start(Some(advertised)).await;
    kafka.server.create_topic("orders", 3, Policy::Always(Always {})).await;
    kafka.server.create_topic("audit", 1, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    for version in [1, 4, 8] {
        let all: MetadataResponse = connection
            .call(ApiKey::Metadata, version, &MetadataRequest::default().with_topics(None))
            .await;
        assert_eq!(all.brokers.len(), 1);
        assert_eq!(all.brokers[0].node_id.0, 0);
        assert_eq!(all.brokers[0].host.as_str(), "broker.example");
        assert_eq!(all.brokers[0].port, 19092);
        assert_eq!(all.controller_id.0, 0);
        let topics: Vec<(&str, usize)> = all
            .topics
            .iter()
            .map(|t| (t.name.as_ref().unwrap().0.as_str(), t.partitions.len()))
            .collect();
        assert_eq!(topics, vec![("audit", 1), ("orders", 3)]);
        for partition in &all.topics[1].partitions {
            assert_eq!(partition.error_code, 0);
            assert_eq!(partition.leader_id.0, 0);
            assert_eq!(partition.replica_nodes.iter().map(|n| n.0).collect::<Vec<_>>(), vec![0]);
        }
        let asked = MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("orders"))),
            MetadataRequestTopic::default().with_name(Some(name("missing"))),
        ]));
        let some: MetadataResponse = connection.call(ApiKey::Metadata, version, &asked).await;
        assert_eq!(some.topics.len(), 2);
        assert_eq!(some.topics[0].error_code, 0);
        assert_eq!(some.topics[0].partitions.len(), 3);
        assert_eq!(some.topics[1].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    }
    // Nothing was created by asking.
    let all: MetadataResponse =
        connection.call(ApiKey::Metadata, 8, &MetadataRequest::default().with_topics(None)).await;
    assert_eq!(all.topics.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_produced_batch_is_fetched_back_byte_for_byte_by_kafka_and_grpc() {
    let kafka = start(None).await;
    kafka.server.create_topic("events", 2, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    let first = batch(3, "a", 1_700_000_000_000);
    let second = batch(2, "b", 1_700_000_001_000);
    assert_eq!(produce(&mut connection, "events", 1, first.clone()).await, (0, 0));
    assert_eq!(produce(&mut connection, "events", 1, second.clone()).await, (0, 3));
    // Two batches in one partition's records: both stored, the first's base offset answered.
    let mut both = BytesMut::from(&first[..]);
    both.extend_from_slice(&second);
    assert_eq!(produce(&mut connection, "events", 1, both.freeze()).await, (0, 5));

    let answer = fetch(&mut connection, "events", 1, 0, 0).await;
    assert_eq!(answer.error_code, 0);
    let partition = &answer.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(partition.high_watermark, 10);
    assert_eq!(partition.last_stable_offset, 10);
    assert_eq!(partition.log_start_offset, 0);
    assert_eq!(partition.aborted_transactions.as_deref(), Some(&[][..]));
    let records = partition.records.clone().unwrap();
    // The bytes are the client's, but for the offset and leader epoch a broker stamps.
    let sent: Vec<Bytes> =
        [&first, &second, &first, &second].into_iter().flat_map(batches).collect();
    let got = batches(&records);
    assert_eq!(got.len(), sent.len());
    let mut base_offset = 0;
    for (got, sent) in got.iter().zip(&sent) {
        assert_eq!(i64::from_be_bytes(got[..8].try_into().unwrap()), base_offset);
        assert_eq!(got[8..12], sent[8..12], "batchLength");
        assert_eq!(got[16..], sent[16..], "magic, CRC, attributes and records as sent");
        base_offset += i64::from(u32::from_be_bytes(sent[23..27].try_into().unwrap())) + 1;
    }
    assert_eq!(base_offset, 10);
    let mut decoding = records;
    let sets = RecordBatchDecoder::decode_all(&mut decoding).unwrap();
    let offsets: Vec<i64> = sets.iter().flat_map(|s| s.records.iter().map(|r| r.offset)).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    let first_record = &sets[0].records[0];
    assert_eq!(first_record.key.as_deref(), Some(&b"a-0"[..]));
    assert_eq!(first_record.timestamp, 1_700_000_000_000);

    // A fetch from the middle of a batch answers the whole batch holding it.
    let middle = fetch(&mut connection, "events", 1, 4, 0).await;
    let mut records = middle.responses[0].partitions[0].records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut records).unwrap();
    assert_eq!(sets[0].records[0].offset, 3);

    // gRPC reads what Kafka wrote: keys, values, headers and timestamps.
    let consumed = kafka.server.fetch_all("events", 1, 0).await;
    assert_eq!(consumed.len(), 10);
    assert_eq!(consumed[0].key.as_deref(), Some(&b"a-0"[..]));
    assert_eq!(consumed[0].value.as_deref(), Some(&b"value 0"[..]));
    assert_eq!(consumed[0].timestamp_ms, 1_700_000_000_000);
    assert_eq!(consumed[0].headers[0].key, "trace");
    assert_eq!(consumed[4].key.as_deref(), Some(&b"b-1"[..]));

    // Past the end: OFFSET_OUT_OF_RANGE; the other partition is empty.
    let past = fetch(&mut connection, "events", 1, 11, 0).await;
    assert_eq!(past.responses[0].partitions[0].error_code, OFFSET_OUT_OF_RANGE);
    let empty = fetch(&mut connection, "events", 0, 0, 0).await;
    assert_eq!(empty.responses[0].partitions[0].error_code, 0);
    assert_eq!(empty.responses[0].partitions[0].high_watermark, 0);
    assert_eq!(empty.responses[0].partitions[0].records.as_deref(), Some(&[][..]));
}

/// `max_bytes` and `partition_max_bytes` bound an answer, but its first batch comes whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_answers_within_its_bytes_but_always_the_first_batch_whole() {
    let kafka = start(None).await;
    kafka.server.create_topic("sized", 2, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    let one = batch(5, "s", 1_000);
    for partition in [0, 1] {
        for _ in 0..3 {
            assert_eq!(produce(&mut connection, "sized", partition, one.clone()).await.0, 0);
        }
    }
    let both = |max_bytes: i32, partition_max_bytes: i32| {
        let partition = |index| {
            FetchPartition::default()
                .with_partition(index)
                .with_fetch_offset(0)
                .with_partition_max_bytes(partition_max_bytes)
        };
        fetch_request("sized", 0, 0, 0).with_max_bytes(max_bytes).with_topics(vec![
            FetchTopic::default()
                .with_topic(name("sized"))
                .with_partitions(vec![partition(0), partition(1)]),
        ])
    };
    let sizes = |answer: &FetchResponse| -> Vec<usize> {
        answer.responses[0]
            .partitions
            .iter()
            .map(|p| batches(p.records.as_ref().unwrap()).len())
            .collect()
    };
    // Ten bytes: the first partition's first batch, whole; nothing more fits.
    let tiny: FetchResponse = connection.call(ApiKey::Fetch, 11, &both(10, 1024 * 1024)).await;
    assert_eq!(sizes(&tiny), vec![1, 0]);
    assert_eq!(tiny.responses[0].partitions[1].high_watermark, 15, "ends still answered");
    // Room for all, but ten bytes per partition: each partition's first batch.
    let per_partition: FetchResponse =
        connection.call(ApiKey::Fetch, 11, &both(50 * 1024 * 1024, 10)).await;
    assert_eq!(sizes(&per_partition), vec![1, 1]);
    // Room for two batches as stored (each 44 bytes more than its Kafka bytes, the frame):
    // both from the first partition; a byte less, one.
    let two = 2 * (one.len() as i32 + 44);
    let answer: FetchResponse =
        connection.call(ApiKey::Fetch, 11, &both(two - 1, 1024 * 1024)).await;
    assert_eq!(sizes(&answer), vec![1, 0]);
    let answer: FetchResponse = connection.call(ApiKey::Fetch, 11, &both(two, 1024 * 1024)).await;
    assert_eq!(sizes(&answer), vec![2, 0]);
    // Room for everything.
    let all: FetchResponse =
        connection.call(ApiKey::Fetch, 11, &both(50 * 1024 * 1024, 1024 * 1024)).await;
    assert_eq!(sizes(&all), vec![3, 3]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_at_the_end_waits_for_records_and_returns_when_they_arrive() {
    let kafka = start(None).await;
    kafka.server.create_topic("waits", 1, Policy::Always(Always {})).await;
    let mut waiting = Connection::open(&kafka).await;
    // Nothing arrives: the answer comes, empty, once max_wait_ms has passed.
    let started = std::time::Instant::now();
    let empty = fetch(&mut waiting, "waits", 0, 0, 200).await;
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());
    assert_eq!(empty.responses[0].partitions[0].records.as_deref(), Some(&[][..]));
    // A record produced while a fetch waits (up to a minute) ends the wait.
    let id = waiting.send(ApiKey::Fetch, 11, &fetch_request("waits", 0, 0, 60_000)).await;
    let mut producer = Connection::open(&kafka).await;
    assert_eq!(produce(&mut producer, "waits", 0, batch(1, "w", 1_700_000_000_000)).await, (0, 0));
    let answer: FetchResponse = waiting.receive(ApiKey::Fetch, 11, id).await;
    let mut records = answer.responses[0].partitions[0].records.clone().unwrap();
    let sets = RecordBatchDecoder::decode_all(&mut records).unwrap();
    assert_eq!(sets[0].records[0].key.as_deref(), Some(&b"w-0"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_offsets_answers_earliest_latest_and_by_timestamp() {
    let kafka = start(None).await;
    kafka.server.create_topic("times", 1, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    produce(&mut connection, "times", 0, batch(3, "t", 1_000)).await;
    produce(&mut connection, "times", 0, batch(3, "u", 5_000)).await;
    for version in [1, 5] {
        let mut ask = async |timestamp: i64, partition: i32| {
            list_offset(&mut connection, version, timestamp, partition).await
        };
        assert_eq!(ask(-2, 0).await, (0, 0, -1));
        assert_eq!(ask(-1, 0).await, (0, 6, -1));
        assert_eq!(ask(1_001, 0).await, (0, 1, 1_001));
        assert_eq!(ask(3_000, 0).await, (0, 3, 5_000));
        assert_eq!(ask(9_000, 0).await, (0, -1, -1));
        assert_eq!(ask(-1, 7).await.0, UNKNOWN_TOPIC_OR_PARTITION);
    }
}

/// ListOffsets for one partition of `times`: error code, offset, timestamp.
async fn list_offset(
    connection: &mut Connection,
    version: i16,
    timestamp: i64,
    partition: i32,
) -> (i16, i64, i64) {
    let request = ListOffsetsRequest::default()
        .with_replica_id(kafka_protocol::messages::BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default().with_name(name("times")).with_partitions(
            vec![
                ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_timestamp(timestamp),
            ],
        )]);
    let answer: ListOffsetsResponse = connection.call(ApiKey::ListOffsets, version, &request).await;
    let p = &answer.topics[0].partitions[0];
    (p.error_code, p.offset, p.timestamp)
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_refuses_bad_batches_unknown_topics_and_impossible_acks_storing_nothing() {
    let kafka = start(None).await;
    kafka.server.create_topic("strict", 1, Policy::Always(Always {})).await;
    kafka.server.create_topic("unsynced", 1, Policy::Never(Never {})).await;
    let mut connection = Connection::open(&kafka).await;
    let good = batch(2, "g", 1_000);
    // A flipped byte in the records: the CRC-32C no longer matches.
    let mut corrupt = BytesMut::from(&good[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    // A good batch followed by a bad one: neither is stored.
    let mut mixed = BytesMut::from(&good[..]);
    mixed.extend_from_slice(&corrupt);
    for records in
        [corrupt.freeze(), mixed.freeze(), Bytes::from_static(b"garbage!garbage!"), Bytes::new()]
    {
        assert_eq!(produce(&mut connection, "strict", 0, records).await.0, CORRUPT_MESSAGE);
    }
    assert_eq!(
        produce(&mut connection, "missing", 0, good.clone()).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(
        produce(&mut connection, "strict", 5, good.clone()).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );
    // acks=-1 on a topic that never syncs is refused, as gRPC refuses acks=all; acks=1 works.
    assert_eq!(
        produce(&mut connection, "unsynced", 0, good.clone()).await.0,
        INVALID_REQUIRED_ACKS
    );
    let answer: ProduceResponse =
        connection.call(ApiKey::Produce, 8, &produce_request("unsynced", 0, good.clone(), 1)).await;
    assert_eq!(answer.responses[0].partition_responses[0].error_code, 0);
    let answer: ProduceResponse =
        connection.call(ApiKey::Produce, 8, &produce_request("strict", 0, good.clone(), 2)).await;
    assert_eq!(answer.responses[0].partition_responses[0].error_code, INVALID_REQUIRED_ACKS);
    let end = fetch(&mut connection, "strict", 0, 0, 0).await;
    assert_eq!(end.responses[0].partitions[0].high_watermark, 0, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_answered_in_order_and_acks_zero_gets_no_answer() {
    let kafka = start(None).await;
    kafka.server.create_topic("piped", 1, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    // Pipelined: a fetch that waits, then a produce that does not; answers in request order.
    let fetching = connection.send(ApiKey::Fetch, 11, &fetch_request("piped", 0, 0, 300)).await;
    let silent = produce_request("piped", 0, batch(1, "z", 1_000), 0);
    connection.send(ApiKey::Produce, 8, &silent).await;
    let versions = connection.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
    let _: FetchResponse = connection.receive(ApiKey::Fetch, 11, fetching).await;
    // The acks=0 produce was stored, and answered nothing: the next answer is ApiVersions'.
    let _: ApiVersionsResponse = connection.receive(ApiKey::ApiVersions, 3, versions).await;
    let stored = fetch(&mut connection, "piped", 0, 0, 0).await;
    assert_eq!(stored.responses[0].partitions[0].high_watermark, 1);
}

/// Produces pipelined on one connection to one partition are stored in the order they were
/// sent (KAFKA_REQUESTS_IN_FLIGHT_MAX of them in flight at once), with `acks` 1 and -1.
#[tokio::test(flavor = "multi_thread")]
async fn pipelined_produces_are_stored_in_the_order_sent() {
    let kafka = start(None).await;
    kafka.server.create_topic("ordered", 1, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    let mut sent = Vec::new();
    for i in 0..64i64 {
        let acks = if i % 2 == 0 { 1 } else { -1 };
        let request =
            produce_request("ordered", 0, batch(1 + (i % 3) as usize, &format!("p{i}"), i), acks);
        sent.push(connection.send(ApiKey::Produce, 8, &request).await);
    }
    let mut expected_base = 0;
    for (i, id) in sent.into_iter().enumerate() {
        let answer: ProduceResponse = connection.receive(ApiKey::Produce, 8, id).await;
        let partition = &answer.responses[0].partition_responses[0];
        assert_eq!(
            (partition.error_code, partition.base_offset),
            (0, expected_base),
            "produce {i}"
        );
        expected_base += 1 + (i % 3) as i64;
    }
    let stored = kafka.server.fetch_all("ordered", 0, 0).await;
    let keys: Vec<&[u8]> = stored.iter().map(|r| r.key.as_deref().unwrap()).collect();
    let expected: Vec<String> =
        (0..64).flat_map(|i| (0..1 + i % 3).map(move |j| format!("p{i}-{j}"))).collect();
    assert_eq!(keys, expected.iter().map(|k| k.as_bytes()).collect::<Vec<_>>());
    kafka.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_sessions_are_refused_and_sessionless_fetches_served() {
    let kafka = start(None).await;
    kafka.server.create_topic("sessions", 1, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    let answer: FetchResponse = connection
        .call(
            ApiKey::Fetch,
            11,
            &fetch_request("sessions", 0, 0, 0).with_session_id(42).with_session_epoch(3),
        )
        .await;
    assert_eq!(answer.error_code, FETCH_SESSION_ID_NOT_FOUND);
    // A client asking to start a session (epoch 0) gets a sessionless answer: session id 0.
    let answer: FetchResponse = connection
        .call(ApiKey::Fetch, 11, &fetch_request("sessions", 0, 0, 0).with_session_epoch(0))
        .await;
    assert_eq!((answer.error_code, answer.session_id), (0, 0));
    // Version 4, the oldest served.
    let answer: FetchResponse =
        connection.call(ApiKey::Fetch, 4, &fetch_request("sessions", 0, 0, 0)).await;
    assert_eq!(answer.responses[0].partitions[0].error_code, 0);
}

/// Sends raw bytes and expects the connection closed, then checks the server still serves.
async fn closes_on(kafka: &Kafka, bytes: &[u8]) {
    let mut connection = Connection::open(kafka).await;
    connection.stream.write_all(bytes).await.unwrap();
    connection.assert_closed().await;
    let mut fresh = Connection::open(kafka).await;
    let answer: ApiVersionsResponse =
        fresh.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
    assert_eq!(answer.error_code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_close_the_connection_and_the_server_keeps_serving() {
    let kafka = start(None).await;
    // A length prefix over the limit: closed before any body is read.
    closes_on(&kafka, &(u32::MAX).to_be_bytes()).await;
    closes_on(&kafka, &(64u32 * 1024 * 1024).to_be_bytes()).await;
    // Shorter than a request header.
    closes_on(&kafka, &[0, 0, 0, 3, 1, 2, 3]).await;
    // An unknown API key, and a known one not served (OffsetCommit).
    for api_key in [999i16, 8] {
        let mut frame = BytesMut::new();
        frame.put_u32(10);
        frame.put_i16(api_key);
        frame.put_i16(0);
        frame.put_i32(7);
        frame.put_i16(-1);
        closes_on(&kafka, &frame).await;
    }
    // A served API at a version not served.
    let mut frame = BytesMut::new();
    frame.put_u32(10);
    frame.put_i16(ApiKey::Produce as i16);
    frame.put_i16(2);
    frame.put_i32(7);
    frame.put_i16(-1);
    closes_on(&kafka, &frame).await;
    // A Metadata request whose body is garbage, and one cut short.
    let mut frame = BytesMut::new();
    frame.put_u32(14);
    frame.put_i16(ApiKey::Metadata as i16);
    frame.put_i16(1);
    frame.put_i32(7);
    frame.put_i16(-1);
    frame.put_i32(-5);
    closes_on(&kafka, &frame).await;
    let mut frame = BytesMut::new();
    frame.put_u32(12);
    frame.put_i16(ApiKey::Metadata as i16);
    frame.put_i16(1);
    frame.put_i32(7);
    frame.put_i16(-1);
    frame.put_u16(0);
    closes_on(&kafka, &frame).await;
}

/// Waiting fetches hold none of the listener's byte budget: more of them than the budget has
/// room for answers (each may answer up to 16 MiB) wait at once, and a produce still goes
/// through and wakes them.
#[tokio::test(flavor = "multi_thread")]
async fn many_waiting_fetches_do_not_hold_up_a_produce() {
    let kafka = start(None).await;
    kafka.server.create_topic("crowd", 1, Policy::Always(Always {})).await;
    let mut waiting = Vec::new();
    for _ in 0..40 {
        let mut connection = Connection::open(&kafka).await;
        let id = connection.send(ApiKey::Fetch, 11, &fetch_request("crowd", 0, 0, 60_000)).await;
        waiting.push((connection, id));
    }
    let mut producer = Connection::open(&kafka).await;
    let produced =
        tokio::time::timeout(PATIENCE, produce(&mut producer, "crowd", 0, batch(1, "c", 1_000)));
    assert_eq!(produced.await.expect("the produce is answered while fetches wait"), (0, 0));
    for (mut connection, id) in waiting {
        let answer: FetchResponse = connection.receive(ApiKey::Fetch, 11, id).await;
        assert_eq!(answer.responses[0].partitions[0].high_watermark, 1);
    }
}

/// Shutdown ends a fetch that waits and finishes cleanly, without the grace period.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_answers_a_waiting_fetch_and_stops_cleanly() {
    let kafka = start(None).await;
    kafka.server.create_topic("closing", 1, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    let id = connection.send(ApiKey::Fetch, 11, &fetch_request("closing", 0, 0, 60_000)).await;
    // The fetch is read before shutdown: an ApiVersions behind it is answered only after it.
    let Kafka { server, _data, .. } = kafka;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(8), server.shutdown())
        .await
        .expect("shutdown does not wait out the fetch or the grace period");
    assert!(started.elapsed() < Duration::from_secs(8));
    // The fetch got an answer (empty) or its connection was closed, never a hang.
    match connection.receive_frame().await {
        None => {}
        Some(mut frame) => {
            let header = ResponseHeader::decode(&mut frame, 0).unwrap();
            assert_eq!(header.correlation_id, id);
        }
    }
}

/// `spool_kafka_requests_total` counts requests by API and outcome,
/// `spool_kafka_request_seconds` times them, `spool_kafka_errors_total` counts error codes.
#[tokio::test(flavor = "multi_thread")]
async fn requests_are_counted_and_timed_by_api_and_errors_by_code() {
    let data = tempfile::tempdir().unwrap();
    let kafka_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (address, metrics) =
        (kafka_listener.local_addr().unwrap(), metrics_listener.local_addr().unwrap());
    let options = ServeOptions {
        kafka: Some(kafka_listener),
        metrics: Some(metrics_listener),
        ..Default::default()
    };
    let server = TestServer::start_with(data.path(), options).await;
    let kafka = Kafka { server, address, _data: Some(data) };
    let mut connection = Connection::open(&kafka).await;
    for _ in 0..3 {
        let _: ApiVersionsResponse =
            connection.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
    }
    let _: MetadataResponse =
        connection.call(ApiKey::Metadata, 8, &MetadataRequest::default().with_topics(None)).await;
    let missing = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name("nowhere")))]));
    let answer: MetadataResponse = connection.call(ApiKey::Metadata, 8, &missing).await;
    assert_eq!(answer.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    let mut frame = BytesMut::new();
    frame.put_u32(10);
    frame.put_i16(999);
    frame.put_i16(0);
    frame.put_i32(7);
    frame.put_i16(-1);
    closes_on(&kafka, &frame).await;
    let body = scrape(metrics).await;
    let count = |labels: &str| {
        let series = format!("{labels} ");
        body.lines().find_map(|line| line.strip_prefix(&series)?.trim().parse::<f64>().ok())
    };
    // Other tests in this binary may count too (the recorder is the process's): at least ours.
    let at_least = |series: &str, n: f64| {
        assert!(count(series).is_some_and(|count| count >= n), "{series} >= {n} in:\n{body}");
    };
    at_least("spool_kafka_requests_total{api=\"ApiVersions\",outcome=\"answered\"}", 4.0);
    at_least("spool_kafka_requests_total{api=\"Metadata\",outcome=\"answered\"}", 2.0);
    at_least("spool_kafka_requests_total{api=\"unknown\",outcome=\"closed\"}", 1.0);
    at_least("spool_kafka_request_seconds_count{api=\"Metadata\"}", 2.0);
    at_least("spool_kafka_errors_total{error=\"UnknownTopicOrPartition\"}", 1.0);
}

/// A frame whose array claims more elements than it holds: `kafka-protocol`'s own decoder
/// would reserve room for them all (over 100 GiB here) and abort the process.
#[tokio::test(flavor = "multi_thread")]
async fn an_array_count_past_the_frame_closes_the_connection_without_reserving_it() {
    let kafka = start(None).await;
    let head = |api: ApiKey, version: i16, body: &[u8]| raw_frame(api as i16, version, body);
    let huge = i32::MAX.to_be_bytes();
    closes_on(&kafka, &head(ApiKey::Metadata, 1, &huge)).await;
    // Produce: transactional id null, acks, timeout, then the topic count.
    let mut produce = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100];
    produce.extend_from_slice(&huge);
    closes_on(&kafka, &head(ApiKey::Produce, 8, &produce)).await;
    // Produce: one topic "t" whose partition count is huge.
    let mut nested = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100, 0, 0, 0, 1, 0, 1, b't'];
    nested.extend_from_slice(&huge);
    closes_on(&kafka, &head(ApiKey::Produce, 8, &nested)).await;
    // Fetch v11: replica, wait, min, max, isolation, session id and epoch, then topics.
    let mut fetch = vec![0xff; 4];
    fetch.extend_from_slice(&[0; 12]);
    fetch.push(0);
    fetch.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    fetch.extend_from_slice(&huge);
    closes_on(&kafka, &head(ApiKey::Fetch, 11, &fetch)).await;
    // ListOffsets v5: replica, isolation, then topics.
    let mut list = vec![0xff, 0xff, 0xff, 0xff, 0];
    list.extend_from_slice(&huge);
    closes_on(&kafka, &head(ApiKey::ListOffsets, 5, &list)).await;
}

/// kafka-python, unmodified, produces 100 records and reads them back.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_python_produces_and_consumes_back_what_it_wrote() {
    let Some(python) = python_with("kafka", "kafka-python") else { return };
    let kafka = start(None).await;
    kafka.server.create_topic("python", 2, Policy::Always(Always {})).await;
    let stdout = run_python(python, "kafka_python_roundtrip.py", &kafka, "python").await;
    assert!(stdout.contains("consumed 100 records"), "{stdout}");
    // What kafka-python wrote, gRPC reads.
    let consumed = kafka.server.fetch_all("python", 1, 0).await;
    assert_eq!(consumed.len(), 100);
    assert_eq!(consumed[7].key.as_deref(), Some(&b"key-7"[..]));
}

/// confluent-kafka (librdkafka) produces under every codec and reads it all back.
#[tokio::test(flavor = "multi_thread")]
async fn librdkafka_produces_under_every_codec_and_consumes_back_what_it_wrote() {
    let Some(python) = python_with("confluent_kafka", "confluent-kafka") else { return };
    let kafka = start(None).await;
    kafka.server.create_topic("librdkafka", 1, Policy::Always(Always {})).await;
    let stdout = run_python(python, "confluent_kafka_roundtrip.py", &kafka, "librdkafka").await;
    assert!(stdout.contains("consumed 100 records"), "{stdout}");
    // What librdkafka wrote, compressed or not, gRPC reads.
    let consumed = kafka.server.fetch_all("librdkafka", 0, 0).await;
    assert_eq!(consumed.len(), 100);
    assert_eq!(consumed[99].key.as_deref(), Some(&b"zstd-19"[..]));
}

/// Runs kcat (Debian's, on librdkafka 2.0) with `args` against the listener, `stdin` fed to
/// it; `None` after saying why the test skips (or failing, when CI requires the clients).
async fn kcat(kafka: &Kafka, args: &[&str], stdin: &str) -> Option<String> {
    use std::io::Write;
    if std::process::Command::new("kcat").arg("-V").output().is_err() {
        let message = "SKIPPED: no kcat on the PATH (Debian's `kcat`); `.ci/run` installs it";
        assert!(std::env::var_os("SPOOL_REQUIRE_EXTERNAL_CLIENTS").is_none(), "{message}");
        eprintln!("{message}");
        return None;
    }
    let mut command = std::process::Command::new("kcat");
    command.args(["-b", &kafka.address.to_string()]).args(args);
    command.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    command.stderr(std::process::Stdio::piped());
    let stdin = stdin.to_owned();
    let output = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn()?;
        child.stdin.take().expect("piped").write_all(stdin.as_bytes())?;
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kcat {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(stdout)
}

/// kcat, unmodified: lists metadata, produces keyed lines in zstd, and reads them back.
#[tokio::test(flavor = "multi_thread")]
async fn kcat_lists_produces_and_consumes_back_what_it_wrote() {
    let kafka = start(None).await;
    kafka.server.create_topic("kcat", 1, Policy::Always(Always {})).await;
    let Some(listed) = kcat(&kafka, &["-L", "-t", "kcat"], "").await else { return };
    assert!(listed.contains("topic \"kcat\" with 1 partitions"), "{listed}");
    let lines: String = (0..50).map(|i| format!("key-{i}:value {i}\n")).collect();
    kcat(&kafka, &["-P", "-t", "kcat", "-p", "0", "-K:", "-z", "zstd"], &lines).await.unwrap();
    let format = ["-f", "%o %k %s\n"];
    let consumed = kcat(
        &kafka,
        &[&["-C", "-t", "kcat", "-p", "0", "-o", "beginning", "-e"][..], &format[..]].concat(),
        "",
    )
    .await
    .unwrap();
    let expected: String = (0..50).map(|i| format!("{i} key-{i} value {i}\n")).collect();
    assert_eq!(consumed, expected);
    // What kcat wrote, gRPC reads.
    let fetched = kafka.server.fetch_all("kcat", 0, 0).await;
    assert_eq!(fetched.len(), 50);
    assert_eq!(fetched[49].key.as_deref(), Some(&b"key-49"[..]));
    kafka.server.shutdown().await;
}

/// kcat reads what gRPC wrote (keys, values, headers, timestamps, offsets), writes headers
/// with `-H`, and finds offsets by time with `-Q`.
#[tokio::test(flavor = "multi_thread")]
async fn kcat_reads_grpc_records_writes_headers_and_queries_offsets_by_time() {
    let kafka = start(None).await;
    kafka.server.create_topic("mixed", 1, Policy::Always(Always {})).await;
    let records: Vec<_> = (0..3)
        .map(|i| spool_proto::v1::Record {
            headers: vec![common::header("via", "grpc")],
            timestamp_ms: Some(1_000 * (i + 1)),
            ..common::keyed(&format!("key-{i}"), &format!("value {i}"))
        })
        .collect();
    kafka.server.produce("mixed", Some(0), records).await.unwrap();
    let Some(_) =
        kcat(&kafka, &["-P", "-t", "mixed", "-p", "0", "-K:", "-H", "via=kcat"], "key-3:value 3\n")
            .await
    else {
        return;
    };
    let consumed = kcat(
        &kafka,
        &["-C", "-t", "mixed", "-p", "0", "-o", "beginning", "-e", "-f", "%o %k %s %h %T\n"],
        "",
    )
    .await
    .unwrap();
    let lines: Vec<&str> = consumed.lines().collect();
    assert_eq!(lines.len(), 4, "{consumed}");
    for (i, line) in lines[..3].iter().enumerate() {
        assert_eq!(*line, format!("{i} key-{i} value {i} via=grpc {}", 1_000 * (i + 1)));
    }
    assert!(lines[3].starts_with("3 key-3 value 3 via=kcat "), "{consumed}");
    // The first record at or after 1500 ms is offset 1; after every record, the end.
    let found = kcat(&kafka, &["-Q", "-t", "mixed:0:1500"], "").await.unwrap();
    assert!(found.contains("offset 1"), "{found}");
    // What kcat wrote, gRPC reads with its header.
    let fetched = kafka.server.fetch_all("mixed", 0, 0).await;
    assert_eq!(fetched[3].headers[0].key, "via");
    assert_eq!(fetched[3].headers[0].value.as_deref(), Some(&b"kcat"[..]));
    kafka.server.shutdown().await;
}
