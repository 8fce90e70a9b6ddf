//! Kafka rows: malformed frames and requests to the Kafka listener, each with what it must get:
//! the connection closed (as Kafka's brokers close it for a frame they cannot read) or an
//! answer carrying an error code.

use std::future::Future;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ResponseHeader;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, FetchRequest, FetchResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListOffsetsRequest, ListOffsetsResponse, ProduceRequest, ProduceResponse, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};

use crate::common::kafka::{Connection, Kafka, batch, name, raw_frame, record};

/// What a row must get.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The connection closed, nothing answered.
    Closed,
    /// An answer with this error code where the row looks.
    Code(i16),
}

type Call<'a> = Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;

/// One row: a request, what it must get, and how to send it on a fresh connection.
pub(crate) struct KafkaRow {
    pub(crate) request: &'static str,
    pub(crate) expected: Outcome,
    pub(crate) call: Box<dyn for<'a> FnOnce(&'a mut Connection) -> Call<'a> + Send>,
}

const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const OFFSET_OUT_OF_RANGE: i16 = 1;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_REQUIRED_ACKS: i16 = 21;
const UNSUPPORTED_VERSION: i16 = 35;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_CONFIG: i16 = 40;
const UNKNOWN_PRODUCER_ID: i16 = 59;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

/// A row whose bytes are sent as they are (a whole frame, length prefix included).
fn raw(request: &'static str, bytes: Vec<u8>) -> KafkaRow {
    KafkaRow {
        request,
        expected: Outcome::Closed,
        call: Box::new(move |connection| {
            Box::pin(async move {
                use tokio::io::AsyncWriteExt;
                connection.stream.write_all(&bytes).await.unwrap();
                closed_or(connection, |_| -1).await
            })
        }),
    }
}

/// The error code `code_of` finds in the answer, or `Closed`.
async fn closed_or(connection: &mut Connection, code_of: impl FnOnce(Bytes) -> i16) -> Outcome {
    match connection.receive_frame().await {
        None => Outcome::Closed,
        Some(frame) => Outcome::Code(code_of(frame)),
    }
}

/// A well-formed request of `api` at `version`, and where its answer's code is.
fn coded<Q, A>(
    request: &'static str,
    code: i16,
    api: ApiKey,
    version: i16,
    body: Q,
    code_of: fn(&A) -> i16,
) -> KafkaRow
where
    Q: Encodable + Send + Sync + 'static,
    A: Decodable + Send + 'static,
{
    KafkaRow {
        request,
        expected: Outcome::Code(code),
        call: Box::new(move |connection| {
            Box::pin(async move {
                connection.send(api, version, &body).await;
                closed_or(connection, |mut frame| {
                    ResponseHeader::decode(&mut frame, api.response_header_version(version))
                        .unwrap();
                    code_of(&A::decode(&mut frame, version).unwrap())
                })
                .await
            })
        }),
    }
}

fn produce(topic: &str, partition: i32, records: Bytes, acks: i16) -> ProduceRequest {
    let data = PartitionProduceData::default().with_index(partition).with_records(Some(records));
    ProduceRequest::default().with_acks(acks).with_timeout_ms(10_000).with_topic_data(vec![
        TopicProduceData::default().with_name(name(topic)).with_partition_data(vec![data]),
    ])
}

fn produced(answer: &ProduceResponse) -> i16 {
    answer.responses[0].partition_responses[0].error_code
}

fn fetch(topic: &str, partition: i32, offset: i64, session_id: i32) -> FetchRequest {
    let wanted = FetchPartition::default()
        .with_partition(partition)
        .with_fetch_offset(offset)
        .with_partition_max_bytes(1 << 20);
    FetchRequest::default()
        .with_max_bytes(1 << 20)
        .with_session_id(session_id)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default().with_topic(name(topic)).with_partitions(vec![wanted]),
        ])
}

fn fetched(answer: &FetchResponse) -> i16 {
    match answer.responses.first() {
        Some(topic) => topic.partitions[0].error_code,
        None => answer.error_code,
    }
}

fn create(
    topic: &str,
    partitions: i32,
    factor: i16,
    configs: &[(&str, &str)],
) -> CreateTopicsRequest {
    let configs = configs
        .iter()
        .map(|(key, value)| {
            CreatableTopicConfig::default()
                .with_name(StrBytes::from_string((*key).to_owned()))
                .with_value(Some(StrBytes::from_string((*value).to_owned())))
        })
        .collect();
    CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        CreatableTopic::default()
            .with_name(name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(factor)
            .with_configs(configs),
    ])
}

fn grow(topic: &str, count: i32) -> CreatePartitionsRequest {
    CreatePartitionsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        CreatePartitionsTopic::default().with_name(name(topic)).with_count(count),
    ])
}

fn created(answer: &CreateTopicsResponse) -> i16 {
    answer.topics[0].error_code
}

/// Every row; the topics `t` (fsync always, one partition, three records) and `unsynced`
/// (fsync never) exist.
pub(crate) fn kafka_rows() -> Vec<KafkaRow> {
    let good = batch(2, "k", 1);
    let mut bad_crc = good.to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let mut magic_1 = good.to_vec();
    magic_1[16] = 1;
    // A producer id Spool never gave out.
    let stamped =
        Record { producer_id: 4242, producer_epoch: 0, sequence: 0, ..record(0, "k", b"v", 1) };
    let mut encoded = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut encoded, [&stamped], &options).unwrap();
    let (bad_crc, magic_1) = (Bytes::from(bad_crc), Bytes::from(magic_1));
    let mut huge_count = Vec::new();
    huge_count.extend_from_slice(&i32::MAX.to_be_bytes());
    vec![
        raw("a frame shorter than a request header", vec![0, 0, 0, 7, 0, 3, 0, 8, 0, 0, 0]),
        raw("a frame longer than the request limit", vec![0x7f, 0xff, 0xff, 0xff, 0, 0]),
        raw("an API key that does not exist", raw_frame(999, 0, &[])),
        raw("Produce v2, a version not served", raw_frame(0, 2, &[])),
        raw("Metadata v8 cut short", raw_frame(3, 8, &[0, 0, 0, 1, 0, 5, b't'])),
        raw("Metadata with two billion topics in 4 bytes", raw_frame(3, 8, &huge_count)),
        raw(
            "SaslHandshake without tokens (not served)",
            raw_frame(17, 1, &[0, 5, b'P', b'L', b'A', b'I', b'N']),
        ),
        KafkaRow {
            request: "ApiVersions v99",
            expected: Outcome::Code(UNSUPPORTED_VERSION),
            call: Box::new(|connection| {
                Box::pin(async move {
                    use tokio::io::AsyncWriteExt;
                    connection.stream.write_all(&raw_frame(18, 99, &[])).await.unwrap();
                    // Answered as v0: header v0, then the error code.
                    closed_or(connection, |frame| i16::from_be_bytes([frame[4], frame[5]])).await
                })
            }),
        },
        coded(
            "Produce to a topic that does not exist",
            UNKNOWN_TOPIC_OR_PARTITION,
            ApiKey::Produce,
            8,
            produce("nowhere", 0, good.clone(), -1),
            produced,
        ),
        coded(
            "Produce to partition 7 of a one-partition topic",
            UNKNOWN_TOPIC_OR_PARTITION,
            ApiKey::Produce,
            8,
            produce("t", 7, good.clone(), -1),
            produced,
        ),
        coded(
            "Produce a batch with a bad CRC",
            CORRUPT_MESSAGE,
            ApiKey::Produce,
            8,
            produce("t", 0, bad_crc, -1),
            produced,
        ),
        coded(
            "Produce a magic 1 batch",
            CORRUPT_MESSAGE,
            ApiKey::Produce,
            8,
            produce("t", 0, magic_1, -1),
            produced,
        ),
        coded(
            "Produce records that are no batch",
            CORRUPT_MESSAGE,
            ApiKey::Produce,
            8,
            produce("t", 0, Bytes::from_static(b"not a batch at all"), -1),
            produced,
        ),
        coded(
            "Produce with acks=2",
            INVALID_REQUIRED_ACKS,
            ApiKey::Produce,
            8,
            produce("t", 0, good.clone(), 2),
            produced,
        ),
        coded(
            "Produce acks=-1 to an fsync never topic",
            INVALID_REQUIRED_ACKS,
            ApiKey::Produce,
            8,
            produce("unsynced", 0, good.clone(), -1),
            produced,
        ),
        coded(
            "Produce with a producer id never given out",
            UNKNOWN_PRODUCER_ID,
            ApiKey::Produce,
            8,
            produce("t", 0, encoded.freeze(), -1),
            produced,
        ),
        coded(
            "Fetch past the end",
            OFFSET_OUT_OF_RANGE,
            ApiKey::Fetch,
            11,
            fetch("t", 0, 1000, 0),
            fetched,
        ),
        coded(
            "Fetch partition 7 of a one-partition topic",
            UNKNOWN_TOPIC_OR_PARTITION,
            ApiKey::Fetch,
            11,
            fetch("t", 7, 0, 0),
            fetched,
        ),
        coded(
            "Fetch in a session never made",
            FETCH_SESSION_ID_NOT_FOUND,
            ApiKey::Fetch,
            11,
            fetch("t", 0, 0, 5),
            fetched,
        ),
        coded(
            "ListOffsets of a topic that does not exist",
            UNKNOWN_TOPIC_OR_PARTITION,
            ApiKey::ListOffsets,
            5,
            ListOffsetsRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_topics(vec![
                    ListOffsetsTopic::default().with_name(name("nowhere")).with_partitions(vec![
                        ListOffsetsPartition::default().with_partition_index(0).with_timestamp(-1),
                    ]),
                ]),
            |answer: &ListOffsetsResponse| answer.topics[0].partitions[0].error_code,
        ),
        coded(
            "CreateTopics with a name Spool refuses",
            INVALID_TOPIC_EXCEPTION,
            ApiKey::CreateTopics,
            4,
            create("no/slashes", 1, 1, &[]),
            created,
        ),
        coded(
            "CreateTopics of a topic that exists",
            TOPIC_ALREADY_EXISTS,
            ApiKey::CreateTopics,
            4,
            create("t", 1, 1, &[]),
            created,
        ),
        coded(
            "CreateTopics with replication factor 3",
            INVALID_REPLICATION_FACTOR,
            ApiKey::CreateTopics,
            4,
            create("three", 1, 3, &[]),
            created,
        ),
        coded(
            "CreateTopics with 0 partitions",
            INVALID_PARTITIONS,
            ApiKey::CreateTopics,
            4,
            create("zero", 0, 1, &[]),
            created,
        ),
        coded(
            "CreateTopics with an unknown config",
            INVALID_CONFIG,
            ApiKey::CreateTopics,
            4,
            create("configured", 1, 1, &[("no.such.config", "1")]),
            created,
        ),
        coded(
            "CreateTopics with retention.ms=-7",
            INVALID_CONFIG,
            ApiKey::CreateTopics,
            4,
            create("configured", 1, 1, &[("retention.ms", "-7")]),
            created,
        ),
        coded(
            "CreatePartitions to fewer partitions than the topic has",
            INVALID_PARTITIONS,
            ApiKey::CreatePartitions,
            1,
            grow("t", 0),
            |answer: &CreatePartitionsResponse| answer.results[0].error_code,
        ),
        coded(
            "CreatePartitions past the per-topic limit",
            INVALID_PARTITIONS,
            ApiKey::CreatePartitions,
            1,
            grow("t", 100_000),
            |answer: &CreatePartitionsResponse| answer.results[0].error_code,
        ),
        coded(
            "CreatePartitions of a topic that does not exist",
            UNKNOWN_TOPIC_OR_PARTITION,
            ApiKey::CreatePartitions,
            1,
            grow("nowhere", 2),
            |answer: &CreatePartitionsResponse| answer.results[0].error_code,
        ),
        coded(
            "IncrementalAlterConfigs of an unknown config",
            INVALID_CONFIG,
            ApiKey::IncrementalAlterConfigs,
            0,
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t"))
                    .with_configs(vec![
                        AlterableConfig::default()
                            .with_name(StrBytes::from_static_str("no.such.config"))
                            .with_config_operation(0)
                            .with_value(Some(StrBytes::from_static_str("1"))),
                    ]),
            ]),
            |answer: &IncrementalAlterConfigsResponse| answer.responses[0].error_code,
        ),
        coded(
            "InitProducerId with a transactional id",
            TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            ApiKey::InitProducerId,
            4,
            InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("tx"))))
                .with_transaction_timeout_ms(60_000),
            |answer: &InitProducerIdResponse| answer.error_code,
        ),
    ]
}

/// Runs every row on a connection of its own; one line per row that got something else.
pub(crate) async fn run_kafka(kafka: &Kafka, rows: Vec<KafkaRow>) -> Vec<String> {
    let mut failures = Vec::new();
    for KafkaRow { request, expected, call } in rows {
        let mut connection = Connection::open(kafka).await;
        let outcome = call(&mut connection).await;
        if outcome != expected {
            failures.push(format!("{request}: expected {expected:?}, got {outcome:?}"));
        }
    }
    failures
}
