//! The Kafka listener's idempotent producers (InitProducerId, sequences checked per partition)
//! and topic administration (CreateTopics, DeleteTopics, DescribeConfigs,
//! IncrementalAlterConfigs, OffsetForLeaderEpoch, ElectLeaders): spoken to with the `kafka-protocol` crate's
//! client side, and by kafka-python and confluent-kafka (`tests/python/*_idempotent.py`,
//! `tests/python/*_admin.py`), unmodified.
//!
//! The Python clients come from `.ci/run`'s virtual environment at `target/ci/venv` (or the
//! Python named by `SPOOL_PYTHON`); without them those tests say why they skip, and with
//! `SPOOL_REQUIRE_EXTERNAL_CLIENTS=1` (CI sets it) they fail instead.

mod common;

use bytes::{Bytes, BytesMut};
use common::TestServer;
use common::kafka::{Connection, name, python_with, raw_frame, run_python, start_at};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, ElectLeadersRequest, ElectLeadersResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, InitProducerIdRequest,
    InitProducerIdResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
    ProduceRequest, ProduceResponse, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spool_proto::v1::fsync_policy::{Always, Policy};
use spool_server::ServeOptions;
use spool_storage::batch::BatchIter;
use tokio::io::AsyncWriteExt;

const INVALID_TOPIC_EXCEPTION: i16 = 17;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
const UNKNOWN_PRODUCER_ID: i16 = 59;
const UNKNOWN_LEADER_EPOCH: i16 = 75;
const ELECTION_NOT_NEEDED: i16 = 84;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

fn text(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// A RecordBatch v2 of `count` records from an idempotent producer: `(id, epoch, sequence)`.
fn idempotent_batch(count: usize, stamp: (i64, i16, i32)) -> Bytes {
    let (producer_id, producer_epoch, sequence) = stamp;
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: sequence + i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(format!("{sequence}+{i}"))),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

/// Produces `records` to partition 0 of `topic` with `acks=-1`: (error code, base offset).
async fn produce(connection: &mut Connection, topic: &str, records: Bytes) -> (i16, i64) {
    let request =
        ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(vec![
            TopicProduceData::default().with_name(name(topic)).with_partition_data(vec![
                PartitionProduceData::default().with_index(0).with_records(Some(records)),
            ]),
        ]);
    let answer: ProduceResponse = connection.call(ApiKey::Produce, 8, &request).await;
    let partition = &answer.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

async fn init_producer_id(connection: &mut Connection, version: i16) -> (i64, i16) {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    let answer: InitProducerIdResponse =
        connection.call(ApiKey::InitProducerId, version, &request).await;
    assert_eq!(answer.error_code, 0, "v{version}: {answer:?}");
    (answer.producer_id.0, answer.producer_epoch)
}

/// The same batch sent twice is stored once and both answers carry its offset; a gap in the
/// sequence is OUT_OF_ORDER_SEQUENCE_NUMBER; an older epoch is fenced; and all of it holds
/// across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn retried_batches_get_their_original_offsets_and_gaps_are_refused_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    kafka.server.create_topic("idempotent", 1, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;

    // Every version served hands out a new id at epoch 0; v0 is the oldest, v4 flexible.
    let (id, epoch) = init_producer_id(&mut connection, 4).await;
    assert_eq!(epoch, 0);
    let (other, _) = init_producer_id(&mut connection, 0).await;
    assert_ne!(other, id);

    let first = idempotent_batch(3, (id, 0, 0));
    let second = idempotent_batch(2, (id, 0, 3));
    assert_eq!(produce(&mut connection, "idempotent", first.clone()).await, (0, 0));
    assert_eq!(produce(&mut connection, "idempotent", second.clone()).await, (0, 3));
    // Retries: success, with the offsets the originals got.
    assert_eq!(produce(&mut connection, "idempotent", first.clone()).await, (0, 0));
    assert_eq!(produce(&mut connection, "idempotent", second.clone()).await, (0, 3));
    // A gap (sequence 5 is next) stores nothing.
    let gap = idempotent_batch(1, (id, 0, 9));
    assert_eq!(
        produce(&mut connection, "idempotent", gap.clone()).await,
        (OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
    );
    // An id the server never gave out.
    let stranger = idempotent_batch(1, (1_000_000_000, 0, 0));
    assert_eq!(produce(&mut connection, "idempotent", stranger).await, (UNKNOWN_PRODUCER_ID, -1));
    // A transactional id is refused: transactions are not served.
    let transactional = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(text("tx-1"))))
        .with_transaction_timeout_ms(60_000);
    let refused: InitProducerIdResponse =
        connection.call(ApiKey::InitProducerId, 4, &transactional).await;
    assert_eq!(refused.error_code, TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
    assert_eq!(refused.producer_id, ProducerId(-1));
    drop(connection);
    kafka.server.shutdown().await;

    // After a restart: the retry still gets its offset, the gap is still a gap, and the
    // producer carries on where it was.
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    let mut connection = Connection::open(&kafka).await;
    assert_eq!(produce(&mut connection, "idempotent", second).await, (0, 3));
    assert_eq!(
        produce(&mut connection, "idempotent", gap).await,
        (OUT_OF_ORDER_SEQUENCE_NUMBER, -1)
    );
    assert_eq!(
        produce(&mut connection, "idempotent", idempotent_batch(4, (id, 0, 5))).await,
        (0, 5)
    );
    // A new id after the restart is none handed out before.
    let (after, _) = init_producer_id(&mut connection, 3).await;
    assert!(after > other, "{after} after {other}");

    // The producer bumps its epoch (as Kafka's clients do themselves) and starts over at 0;
    // its older epoch is then fenced.
    assert_eq!(
        produce(&mut connection, "idempotent", idempotent_batch(1, (id, 1, 0))).await,
        (0, 9)
    );
    assert_eq!(
        produce(&mut connection, "idempotent", idempotent_batch(1, (id, 0, 9))).await,
        (INVALID_PRODUCER_EPOCH, -1)
    );
    // What is stored: each batch once.
    let stored = kafka.server.fetch_all("idempotent", 0, 0).await;
    assert_eq!(stored.len(), 10);
    drop(connection);
    kafka.server.shutdown().await;
}

fn creatable(topic: &str, partitions: i32, configs: &[(&str, &str)]) -> CreatableTopic {
    CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(-1)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default().with_name(text(k)).with_value(Some(text(v)))
                })
                .collect(),
        )
}

async fn create(
    connection: &mut Connection,
    topics: Vec<CreatableTopic>,
    validate_only: bool,
) -> Vec<(String, i16)> {
    let request = CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(30_000)
        .with_validate_only(validate_only);
    let answer: CreateTopicsResponse = connection.call(ApiKey::CreateTopics, 4, &request).await;
    answer.topics.iter().map(|t| (t.name.0.to_string(), t.error_code)).collect()
}

async fn describe(
    connection: &mut Connection,
    resource_type: i8,
    name: &str,
) -> (i16, Vec<(String, String, bool)>) {
    describe_keys(connection, resource_type, name, None).await
}

/// Describes the keys named (every key for `None`, as Kafka's null list).
async fn describe_keys(
    connection: &mut Connection,
    resource_type: i8,
    name: &str,
    keys: Option<&[&str]>,
) -> (i16, Vec<(String, String, bool)>) {
    let keys = keys.map(|keys| keys.iter().map(|key| text(key)).collect());
    let request = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(resource_type)
            .with_resource_name(text(name))
            .with_configuration_keys(keys),
    ]);
    let answer: DescribeConfigsResponse =
        connection.call(ApiKey::DescribeConfigs, 3, &request).await;
    let result = &answer.results[0];
    let configs = result
        .configs
        .iter()
        .map(|c| (c.name.to_string(), c.value.as_deref().unwrap_or("").to_owned(), c.read_only))
        .collect();
    (result.error_code, configs)
}

fn value(configs: &[(String, String, bool)], key: &str) -> String {
    configs.iter().find(|(name, ..)| name == key).unwrap_or_else(|| panic!("{key}")).1.clone()
}

async fn alter(
    connection: &mut Connection,
    topic: &str,
    configs: &[(&str, i8, Option<&str>)],
) -> (i16, Option<String>) {
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(RESOURCE_TOPIC)
            .with_resource_name(text(topic))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, op, v)| {
                        AlterableConfig::default()
                            .with_name(text(k))
                            .with_config_operation(*op)
                            .with_value(v.map(text))
                    })
                    .collect(),
            ),
    ]);
    let answer: IncrementalAlterConfigsResponse =
        connection.call(ApiKey::IncrementalAlterConfigs, 0, &request).await;
    let response = &answer.responses[0];
    (response.error_code, response.error_message.as_ref().map(|m| m.to_string()))
}

/// The settings gRPC (and `spool topic describe`) reports for topic `orders`.
async fn orders_config(server: &TestServer) -> spool_proto::v1::TopicConfig {
    server.describe("orders").await.unwrap().config.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn topics_are_created_described_altered_and_deleted_over_kafka() {
    let data = tempfile::tempdir().unwrap();
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    let mut connection = Connection::open(&kafka).await;

    // validate_only checks everything and creates nothing.
    let checked = create(&mut connection, vec![creatable("orders", 3, &[])], true).await;
    assert_eq!(checked, vec![("orders".to_owned(), 0)]);
    assert!(kafka.server.describe("orders").await.is_err());

    let created = create(
        &mut connection,
        vec![
            creatable("orders", 3, &[("retention.ms", "3600000"), ("compression.type", "zstd")]),
            creatable("bad name!", 1, &[]),
            creatable("none", 0, &[]),
            creatable("compacted", 1, &[("cleanup.policy", "compact")]),
            creatable("mystery", 1, &[("unclean.leader.election.enable", "true")]),
            creatable("twice", 1, &[]),
            creatable("twice", 1, &[]),
            creatable("replicated", 1, &[]).with_replication_factor(3),
        ],
        false,
    )
    .await;
    assert_eq!(
        created,
        vec![
            ("orders".to_owned(), 0),
            ("bad name!".to_owned(), INVALID_TOPIC_EXCEPTION),
            ("none".to_owned(), INVALID_PARTITIONS),
            ("compacted".to_owned(), INVALID_CONFIG),
            ("mystery".to_owned(), INVALID_CONFIG),
            ("twice".to_owned(), INVALID_REQUEST),
            ("twice".to_owned(), INVALID_REQUEST),
            ("replicated".to_owned(), INVALID_REPLICATION_FACTOR),
        ]
    );
    let again = create(&mut connection, vec![creatable("orders", 3, &[])], false).await;
    assert_eq!(again, vec![("orders".to_owned(), TOPIC_ALREADY_EXISTS)]);
    let again = create(&mut connection, vec![creatable("orders", 3, &[])], true).await;
    assert_eq!(again, vec![("orders".to_owned(), TOPIC_ALREADY_EXISTS)]);

    // What was created is what gRPC (and `spool topic describe`) describes.
    let config = orders_config(&kafka.server).await;
    assert_eq!(config.partitions, 3);
    assert_eq!(config.retention_ms, Some(3_600_000));

    let (code, configs) = describe(&mut connection, RESOURCE_TOPIC, "orders").await;
    assert_eq!(code, 0);
    assert_eq!(value(&configs, "retention.ms"), "3600000");
    assert_eq!(value(&configs, "retention.bytes"), "-1");
    assert_eq!(value(&configs, "compression.type"), "zstd");
    assert_eq!(value(&configs, "cleanup.policy"), "delete");
    assert_eq!(value(&configs, "min.insync.replicas"), "1");
    assert_eq!(value(&configs, "flush.messages"), "1");
    for key in ["segment.bytes", "max.message.bytes", "flush.ms"] {
        value(&configs, key);
    }
    // An empty list of keys asks for every key, as Kafka's brokers answer it; a list asks
    // for the keys it names.
    let every = describe_keys(&mut connection, RESOURCE_TOPIC, "orders", Some(&[])).await;
    assert_eq!(every, (0, configs.clone()));
    let named = ["cleanup.policy", "retention.ms"];
    let (code, some) = describe_keys(&mut connection, RESOURCE_TOPIC, "orders", Some(&named)).await;
    assert_eq!(code, 0);
    let mut answered: Vec<_> = some.iter().map(|(name, ..)| name.as_str()).collect();
    answered.sort_unstable();
    assert_eq!(answered, named);
    let (code, _) = describe(&mut connection, RESOURCE_TOPIC, "missing").await;
    assert_eq!(code, UNKNOWN_TOPIC_OR_PARTITION);
    let (code, broker) = describe(&mut connection, RESOURCE_BROKER, "0").await;
    assert_eq!(code, 0);
    assert_eq!(value(&broker, "broker.id"), "0");
    assert_eq!(value(&broker, "auto.create.topics.enable"), "false");
    assert!(broker.iter().all(|(_, _, read_only)| *read_only));

    // Alter: retention set, retention.bytes set then deleted back to its default.
    let (code, _) = alter(
        &mut connection,
        "orders",
        &[("retention.ms", 0, Some("7200000")), ("retention.bytes", 0, Some("1048576"))],
    )
    .await;
    assert_eq!(code, 0);
    let config = orders_config(&kafka.server).await;
    assert_eq!((config.retention_ms, config.retention_bytes), (Some(7_200_000), Some(1_048_576)));
    assert_eq!(alter(&mut connection, "orders", &[("retention.bytes", 1, None)]).await.0, 0);
    let config = orders_config(&kafka.server).await;
    assert_eq!((config.retention_ms, config.retention_bytes), (Some(7_200_000), None));
    let (_, configs) = describe(&mut connection, RESOURCE_TOPIC, "orders").await;
    assert_eq!(value(&configs, "retention.ms"), "7200000");
    // Refused, with a message, and nothing changes.
    for refused in [
        vec![("cleanup.policy", 0, Some("compact"))],
        vec![("log.cleaner.enable", 0, Some("true"))],
        vec![("retention.ms", 0, Some("0"))],
        vec![("retention.ms", 2, Some("1"))],
        vec![("flush.ms", 0, Some("100"))],
    ] {
        let (code, message) = alter(&mut connection, "orders", &refused).await;
        assert_eq!(code, INVALID_CONFIG, "{refused:?}");
        assert!(message.is_some_and(|m| !m.is_empty()), "{refused:?}");
    }
    assert_eq!(orders_config(&kafka.server).await, config);
    // The fsync policy by Kafka's flush settings: every 25 ms.
    let never = i64::MAX.to_string();
    let (code, message) = alter(
        &mut connection,
        "orders",
        &[("flush.messages", 0, Some(&never)), ("flush.ms", 0, Some("25"))],
    )
    .await;
    assert_eq!(code, 0, "{message:?}");
    let fsync = orders_config(&kafka.server).await.fsync.unwrap().policy.unwrap();
    assert_eq!(fsync, spool_proto::v1::fsync_policy::Policy::IntervalMs(25));
    assert_eq!(
        alter(&mut connection, "missing", &[("retention.ms", 0, Some("1"))]).await.0,
        UNKNOWN_TOPIC_OR_PARTITION
    );

    // CreatePartitions: only more, each new partition on node 0, one topic named once;
    // validate_only changes nothing.
    let grow = |topic: &str, count: i32| {
        CreatePartitionsTopic::default().with_name(name(topic)).with_count(count)
    };
    let on = |nodes: &[i32]| {
        CreatePartitionsAssignment::default()
            .with_broker_ids(nodes.iter().map(|n| kafka_protocol::messages::BrokerId(*n)).collect())
    };
    let call = |topics: Vec<CreatePartitionsTopic>, validate_only: bool| {
        CreatePartitionsRequest::default()
            .with_topics(topics)
            .with_timeout_ms(30_000)
            .with_validate_only(validate_only)
    };
    let answer: CreatePartitionsResponse =
        connection.call(ApiKey::CreatePartitions, 1, &call(vec![grow("orders", 9)], true)).await;
    assert_eq!(answer.results[0].error_code, 0);
    assert_eq!(orders_config(&kafka.server).await.partitions, 3);
    let request = call(
        vec![
            grow("orders", 3),
            grow("missing", 4),
            grow("twice", 2),
            grow("twice", 3),
            grow("orders", 5).with_assignments(Some(vec![on(&[0]), on(&[1])])),
        ],
        false,
    );
    let answer: CreatePartitionsResponse =
        connection.call(ApiKey::CreatePartitions, 1, &request).await;
    let codes: Vec<i16> = answer.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        [
            INVALID_REQUEST,
            UNKNOWN_TOPIC_OR_PARTITION,
            INVALID_REQUEST,
            INVALID_REQUEST,
            INVALID_REQUEST
        ]
    );
    let assigned = grow("orders", 5).with_assignments(Some(vec![on(&[0]), on(&[1])]));
    let answer: CreatePartitionsResponse =
        connection.call(ApiKey::CreatePartitions, 0, &call(vec![assigned], false)).await;
    assert_eq!(answer.results[0].error_code, INVALID_REPLICA_ASSIGNMENT);
    let answer: CreatePartitionsResponse =
        connection.call(ApiKey::CreatePartitions, 0, &call(vec![grow("orders", 2)], false)).await;
    assert_eq!(answer.results[0].error_code, INVALID_PARTITIONS);
    assert!(answer.results[0].error_message.as_ref().is_some_and(|m| m.contains("has 3")));
    let assigned = grow("orders", 5).with_assignments(Some(vec![on(&[0]), on(&[0])]));
    let answer: CreatePartitionsResponse =
        connection.call(ApiKey::CreatePartitions, 1, &call(vec![assigned], false)).await;
    assert_eq!(answer.results[0].error_code, 0);
    assert_eq!(kafka.server.describe("orders").await.unwrap().partitions.len(), 5);

    // OffsetForLeaderEpoch: epoch 0 ends at the partition's end.
    kafka
        .server
        .produce("orders", Some(1), vec![common::record("a"), common::record("b")])
        .await
        .unwrap();
    let request = OffsetForLeaderEpochRequest::default().with_topics(vec![
        OffsetForLeaderTopic::default().with_topic(name("orders")).with_partitions(vec![
            OffsetForLeaderPartition::default().with_partition(1).with_leader_epoch(0),
            OffsetForLeaderPartition::default().with_partition(0).with_leader_epoch(0),
            OffsetForLeaderPartition::default().with_partition(2).with_leader_epoch(3),
            OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(1)
                .with_leader_epoch(0),
            OffsetForLeaderPartition::default().with_partition(7).with_leader_epoch(0),
        ]),
    ]);
    for version in [2, 3] {
        let answer: OffsetForLeaderEpochResponse =
            connection.call(ApiKey::OffsetForLeaderEpoch, version, &request).await;
        let got: Vec<(i16, i32, i64)> = answer.topics[0]
            .partitions
            .iter()
            .map(|p| (p.error_code, p.leader_epoch, p.end_offset))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, 0, 2),
                (0, 0, 0),
                (0, -1, -1),
                (UNKNOWN_LEADER_EPOCH, -1, -1),
                (UNKNOWN_TOPIC_OR_PARTITION, -1, -1)
            ]
        );
    }

    // Delete: gone from gRPC too; a second delete is an unknown topic.
    let request = DeleteTopicsRequest::default()
        .with_topic_names(vec![name("orders"), name("missing")])
        .with_timeout_ms(30_000);
    let answer: DeleteTopicsResponse = connection.call(ApiKey::DeleteTopics, 3, &request).await;
    let codes: Vec<i16> = answer.responses.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![0, UNKNOWN_TOPIC_OR_PARTITION]);
    assert!(kafka.server.describe("orders").await.is_err());
    drop(connection);
    kafka.server.shutdown().await;
}

/// A request naming more resources than a server could hold closes the connection before any
/// is served (an answer would be about a hundred times the request).
#[tokio::test(flavor = "multi_thread")]
async fn too_many_resources_close_the_connection() {
    let data = tempfile::tempdir().unwrap();
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    let resources = (0..2000)
        .map(|_| {
            DescribeConfigsResource::default()
                .with_resource_type(RESOURCE_BROKER)
                .with_resource_name(text("0"))
                .with_configuration_keys(None)
        })
        .collect();
    let request = DescribeConfigsRequest::default().with_resources(resources);
    let mut connection = Connection::open(&kafka).await;
    connection.send(ApiKey::DescribeConfigs, 1, &request).await;
    connection.assert_closed().await;
    // 1024 topics and the broker are within the bound.
    let mut connection = Connection::open(&kafka).await;
    let (code, _) = describe(&mut connection, RESOURCE_BROKER, "").await;
    assert_eq!(code, 0);
    drop(connection);
    kafka.server.shutdown().await;
}

/// kafka-python with idempotence on (its default) and confluent-kafka with
/// `enable.idempotence=true` each produce and read back every record exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn idempotent_kafka_clients_produce_each_record_once() {
    let data = tempfile::tempdir().unwrap();
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    for (module, package, script, topic) in [
        ("kafka", "kafka-python", "kafka_python_idempotent.py", "idempotent-python"),
        (
            "confluent_kafka",
            "confluent-kafka",
            "confluent_kafka_idempotent.py",
            "idempotent-librdkafka",
        ),
    ] {
        let Some(python) = python_with(module, package) else { continue };
        kafka.server.create_topic(topic, 2, Policy::Always(Always {})).await;
        let stdout = run_python(python, script, &kafka, topic).await;
        assert!(stdout.contains("consumed 200 records once each"), "{stdout}");
        // Over gRPC too: each record once, and the batches carry the producer's stamp.
        let mut values = Vec::new();
        for partition in 0..2 {
            for record in kafka.server.fetch_all(topic, partition, 0).await {
                values.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
            }
        }
        values.sort();
        let mut expected: Vec<String> = (0..200).map(|i| format!("value {i}")).collect();
        expected.sort();
        assert_eq!(values, expected, "{topic}");
        // The stored batches carry a producer id Spool gave out: the client was idempotent.
        let raw = kafka.server.fetch_raw(topic, 0, 0).await;
        let ids: Vec<i64> = BatchIter::new(&raw.raw_batches)
            .map(|batch| batch.unwrap().header().producer.producer_id)
            .collect();
        assert!(!ids.is_empty() && ids.iter().all(|id| *id >= 0), "{topic}: {ids:?}");
    }
    kafka.server.shutdown().await;
}

/// confluent-kafka's AdminClient and kafka-python's KafkaAdminClient create, describe, alter,
/// grow and delete topics; what they change is what gRPC describes.
#[tokio::test(flavor = "multi_thread")]
async fn admin_clients_create_describe_alter_and_delete_topics() {
    let data = tempfile::tempdir().unwrap();
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    for (module, package, script, topic) in [
        ("kafka", "kafka-python", "kafka_python_admin.py", "admin-python"),
        ("confluent_kafka", "confluent-kafka", "confluent_kafka_admin.py", "admin-librdkafka"),
    ] {
        let Some(python) = python_with(module, package) else { continue };
        let stdout = run_python(python, script, &kafka, topic).await;
        assert!(stdout.contains("admin done"), "{stdout}");
        if module == "kafka" {
            assert!(stdout.contains("offsets deleted; then GROUP_ID_NOT_FOUND"), "{stdout}");
        }
        let config = kafka.server.describe(topic).await.unwrap().config.unwrap();
        assert_eq!(config.partitions, 5, "{topic}: CreatePartitions grew it");
        assert_eq!(config.retention_ms, Some(7_200_000), "{topic}: the alter is visible");
        let doomed = kafka.server.describe(&format!("{topic}-doomed")).await;
        assert!(doomed.is_err(), "{topic}-doomed was deleted");
    }
    kafka.server.shutdown().await;
}

/// ElectLeaders on a single node: its one node leads every partition, so none needs an
/// election; unknown partitions and election types are refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_single_node_needs_no_leader_election() {
    let data = tempfile::tempdir().unwrap();
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    kafka.server.create_topic("elected", 2, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    let asked = |election_type: i8| {
        ElectLeadersRequest::default()
            .with_election_type(election_type)
            .with_timeout_ms(5_000)
            .with_topic_partitions(Some(vec![
                TopicPartitions::default()
                    .with_topic(name("elected"))
                    .with_partitions(vec![1, 0, 1]),
                TopicPartitions::default().with_topic(name("elected")).with_partitions(vec![9]),
                TopicPartitions::default().with_topic(name("missing")).with_partitions(vec![0]),
            ]))
    };
    let codes = |answer: &ElectLeadersResponse| -> Vec<(String, i32, i16)> {
        let results = answer.replica_election_results.iter();
        results
            .flat_map(|topic| {
                topic
                    .partition_result
                    .iter()
                    .map(|p| (topic.topic.as_str().to_owned(), p.partition_id, p.error_code))
            })
            .collect()
    };
    for (version, election_type) in [(0, 0), (1, 0), (1, 1)] {
        let answer: ElectLeadersResponse =
            connection.call(ApiKey::ElectLeaders, version, &asked(election_type)).await;
        assert_eq!(answer.error_code, 0);
        let expected = vec![
            ("elected".to_owned(), 0, ELECTION_NOT_NEEDED),
            ("elected".to_owned(), 1, ELECTION_NOT_NEEDED),
            ("elected".to_owned(), 9, UNKNOWN_TOPIC_OR_PARTITION),
            ("missing".to_owned(), 0, UNKNOWN_TOPIC_OR_PARTITION),
        ];
        assert_eq!(codes(&answer), expected, "v{version}, type {election_type}");
    }
    let answer: ElectLeadersResponse = connection.call(ApiKey::ElectLeaders, 1, &asked(7)).await;
    assert!(codes(&answer).iter().any(|(_, _, code)| *code == INVALID_REQUEST));
    // Every partition: those that need no election are left out.
    let every = ElectLeadersRequest::default().with_timeout_ms(5_000).with_topic_partitions(None);
    let answer: ElectLeadersResponse = connection.call(ApiKey::ElectLeaders, 1, &every).await;
    assert_eq!(codes(&answer), vec![]);
    drop(connection);
    kafka.server.shutdown().await;
}

/// Arrays claiming more elements than their frame holds, outer and nested, close the
/// connection without an answer (and without reserving room for them), and the server serves
/// the next connection.
#[tokio::test(flavor = "multi_thread")]
async fn arrays_longer_than_their_frame_close_the_connection() {
    let data = tempfile::tempdir().unwrap();
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    let huge = i32::MAX.to_be_bytes();
    // One topic named "t" (1 partition, factor 1, no assignments) whose configs claim i32::MAX.
    let mut nested_create = vec![0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 1, 0, 0, 0, 0];
    nested_create.extend_from_slice(&huge);
    // One topic resource "t" whose configs claim i32::MAX.
    let mut nested_alter = vec![0, 0, 0, 1, RESOURCE_TOPIC as u8, 0, 1, b't'];
    nested_alter.extend_from_slice(&huge);
    // Replica id -1, then one topic "t" whose partitions claim i32::MAX.
    let mut nested_epochs = vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 1, b't'];
    nested_epochs.extend_from_slice(&huge);
    // An unclean election of one topic "t" whose partitions claim i32::MAX.
    let mut nested_elect = vec![1, 0, 0, 0, 1, 0, 1, b't'];
    nested_elect.extend_from_slice(&huge);
    // Group "g", then one topic "t" whose partitions claim i32::MAX.
    let mut nested_offsets = vec![0, 1, b'g', 0, 0, 0, 1, 0, 1, b't'];
    nested_offsets.extend_from_slice(&huge);
    let cases = [
        (ApiKey::CreateTopics, 4, huge.to_vec()),
        (ApiKey::CreateTopics, 4, nested_create),
        (ApiKey::DeleteTopics, 3, huge.to_vec()),
        (ApiKey::DescribeConfigs, 3, huge.to_vec()),
        (ApiKey::IncrementalAlterConfigs, 0, huge.to_vec()),
        (ApiKey::IncrementalAlterConfigs, 0, nested_alter),
        (ApiKey::OffsetForLeaderEpoch, 3, [&[0xff; 4][..], &huge].concat()),
        (ApiKey::OffsetForLeaderEpoch, 3, nested_epochs),
        (ApiKey::OffsetDelete, 0, [&[0, 1, b'g'][..], &huge].concat()),
        (ApiKey::OffsetDelete, 0, nested_offsets),
        (ApiKey::ElectLeaders, 1, [&[0][..], &huge].concat()),
        (ApiKey::ElectLeaders, 1, nested_elect),
        // A flexible InitProducerId cut short.
        (ApiKey::InitProducerId, 4, vec![0]),
    ];
    for (api, version, body) in cases {
        let mut connection = Connection::open(&kafka).await;
        connection.stream.write_all(&raw_frame(api as i16, version, &body)).await.unwrap();
        connection.assert_closed().await;
    }
    let mut connection = Connection::open(&kafka).await;
    let (code, _) = describe(&mut connection, RESOURCE_BROKER, "0").await;
    assert_eq!(code, 0);
    drop(connection);
    kafka.server.shutdown().await;
}

/// A retry of a batch older than the five a partition keeps per producer is stored nothing
/// and answered DUPLICATE_SEQUENCE_NUMBER, which clients take as already written.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_older_than_five_batches_is_a_duplicate_sequence_number() {
    let data = tempfile::tempdir().unwrap();
    let kafka = start_at(data.path(), ServeOptions::default()).await;
    kafka.server.create_topic("old", 1, Policy::Always(Always {})).await;
    let mut connection = Connection::open(&kafka).await;
    let (id, _) = init_producer_id(&mut connection, 1).await;
    for sequence in 0..6 {
        let batch = idempotent_batch(1, (id, 0, sequence));
        assert_eq!(produce(&mut connection, "old", batch).await, (0, i64::from(sequence)));
    }
    // The second is still kept; the first is not.
    assert_eq!(produce(&mut connection, "old", idempotent_batch(1, (id, 0, 1))).await, (0, 1));
    let first = idempotent_batch(1, (id, 0, 0));
    assert_eq!(produce(&mut connection, "old", first).await, (DUPLICATE_SEQUENCE_NUMBER, -1));
    assert_eq!(kafka.server.fetch_all("old", 0, 0).await.len(), 6);
    drop(connection);
    kafka.server.shutdown().await;
}
