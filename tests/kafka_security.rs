//! The Kafka listener with tokens: SASL/PLAIN (a token as the password) before anything but
//! ApiVersions, the token's grants on every request, a revoked token's connection closed, and
//! TLS with the gRPC listener's certificate, spoken to by confluent-kafka (librdkafka).

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::TestServer;
use common::kafka::{Connection, Kafka, batch, name, python_with, run_python_with, start_in};
use common::tls::{pki, tls};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteGroupsRequest,
    DeleteGroupsResponse, DeleteTopicsRequest, DeleteTopicsResponse, ElectLeadersRequest,
    ElectLeadersResponse, FetchRequest, FetchResponse, GroupId, JoinGroupRequest,
    JoinGroupResponse, MetadataRequest, MetadataResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, ProduceRequest, ProduceResponse, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use spool_proto::v1::fsync_policy::{Always, Policy};
use spool_server::ServeOptions;
use spool_server::auth::{Authenticator, token_digest_hex};

const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;

/// `writer` produces to and consumes from `orders`; `reader` only consumes from it.
fn token_file(with_reader: bool) -> String {
    let mut file = format!(
        "[[token]]\nname = \"writer\"\nsha256 = \"{}\"\ntopics = {{ \"orders\" = [\"produce\", \"consume\"] }}\n",
        token_digest_hex("writer-token")
    );
    if with_reader {
        file.push_str(&format!(
            "[[token]]\nname = \"reader\"\nsha256 = \"{}\"\ntopics = {{ \"orders\" = [\"consume\"] }}\n",
            token_digest_hex("reader-token")
        ));
    }
    file
}

struct Secured {
    kafka: Kafka,
    tokens: Arc<Authenticator>,
    token_path: std::path::PathBuf,
    dir: tempfile::TempDir,
}

/// A server with tokens (and `options`), its topics `orders` and `secret` made before.
async fn secured(options: ServeOptions) -> Secured {
    let data = tempfile::tempdir().unwrap();
    let open = TestServer::start(data.path()).await;
    for topic in ["orders", "secret"] {
        open.create_topic(topic, 1, Policy::Always(Always {})).await;
    }
    open.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("tokens.toml");
    std::fs::write(&token_path, token_file(true)).unwrap();
    let tokens = Arc::new(Authenticator::load(&token_path).unwrap());
    let kafka = start_in(data, ServeOptions { tokens: Some(tokens.clone()), ..options }).await;
    Secured { kafka, tokens, token_path, dir }
}

/// Authenticates `connection` with `token` as the SASL/PLAIN password.
async fn authenticate(connection: &mut Connection, token: &str) -> SaslAuthenticateResponse {
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    let agreed: SaslHandshakeResponse = connection.call(ApiKey::SaslHandshake, 1, &handshake).await;
    assert_eq!(agreed.error_code, 0);
    let message = Bytes::from(format!("\0someone\0{token}"));
    let request = SaslAuthenticateRequest::default().with_auth_bytes(message);
    connection.call(ApiKey::SaslAuthenticate, 1, &request).await
}

fn produce_request(topic: &str) -> ProduceRequest {
    let data = PartitionProduceData::default().with_index(0).with_records(Some(batch(1, "k", 1)));
    ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![
        TopicProduceData::default().with_name(name(topic)).with_partition_data(vec![data]),
    ])
}

fn fetch_request(topic: &str) -> FetchRequest {
    let partition = FetchPartition::default().with_partition(0).with_partition_max_bytes(1 << 20);
    FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default().with_topic(name(topic)).with_partitions(vec![partition]),
        ])
}

#[tokio::test]
async fn sasl_apis_are_advertised_with_tokens_and_nothing_else_is_served_before_them() {
    let secured = secured(ServeOptions::default()).await;
    let mut connection = Connection::open(&secured.kafka).await;
    let versions: ApiVersionsResponse =
        connection.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()).await;
    let keys: Vec<i16> = versions.api_keys.iter().map(|k| k.api_key).collect();
    assert!(keys.contains(&(ApiKey::SaslHandshake as i16)), "{keys:?}");
    assert!(keys.contains(&(ApiKey::SaslAuthenticate as i16)), "{keys:?}");
    connection.send(ApiKey::Metadata, 8, &MetadataRequest::default()).await;
    connection.assert_closed().await;

    // A mechanism not served gets the list, and the connection may ask again.
    let mut connection = Connection::open(&secured.kafka).await;
    let scram =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256"));
    let refused: SaslHandshakeResponse = connection.call(ApiKey::SaslHandshake, 1, &scram).await;
    assert_eq!(refused.error_code, UNSUPPORTED_SASL_MECHANISM);
    assert_eq!(refused.mechanisms, vec![StrBytes::from_static_str("PLAIN")]);
    let answer = authenticate(&mut connection, "writer-token").await;
    assert_eq!(answer.error_code, 0, "{:?}", answer.error_message);
    secured.kafka.server.shutdown().await;
}

#[tokio::test]
async fn a_password_that_is_no_token_is_refused_with_a_message_and_the_connection_closed() {
    let secured = secured(ServeOptions::default()).await;
    let mut connection = Connection::open(&secured.kafka).await;
    let answer = authenticate(&mut connection, "guess").await;
    assert_eq!(answer.error_code, SASL_AUTHENTICATION_FAILED);
    let message = answer.error_message.expect("a message").to_string();
    assert!(message.contains("password must be a Spool token"), "{message}");
    connection.assert_closed().await;
    secured.kafka.server.shutdown().await;
}

#[tokio::test]
async fn every_request_is_checked_against_the_tokens_grants() {
    let secured = secured(ServeOptions::default()).await;
    let mut reader = Connection::open(&secured.kafka).await;
    assert_eq!(authenticate(&mut reader, "reader-token").await.error_code, 0);

    // Metadata lists only what the token may see, and refuses a topic asked for by name.
    let all: MetadataResponse =
        reader.call(ApiKey::Metadata, 8, &MetadataRequest::default().with_topics(None)).await;
    let names: Vec<String> =
        all.topics.iter().map(|t| t.name.as_ref().unwrap().0.to_string()).collect();
    assert_eq!(names, ["orders"]);
    let asked = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(name("secret")))]));
    let secret: MetadataResponse = reader.call(ApiKey::Metadata, 8, &asked).await;
    assert_eq!(secret.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);

    // Consume, but not produce.
    let produced: ProduceResponse =
        reader.call(ApiKey::Produce, 8, &produce_request("orders")).await;
    let partition = &produced.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, TOPIC_AUTHORIZATION_FAILED);
    let fetched: FetchResponse = reader.call(ApiKey::Fetch, 11, &fetch_request("orders")).await;
    let partition = &fetched.responses[0].partitions[0];
    assert_eq!((partition.error_code, partition.high_watermark), (0, 0), "nothing stored");
    let fetched: FetchResponse = reader.call(ApiKey::Fetch, 11, &fetch_request("secret")).await;
    assert_eq!(fetched.responses[0].partitions[0].error_code, TOPIC_AUTHORIZATION_FAILED);

    // Administering topics needs `administer`: neither token has it.
    let create = CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![
        CreatableTopic::default()
            .with_name(name("orders-2"))
            .with_num_partitions(1)
            .with_replication_factor(1),
    ]);
    let created: CreateTopicsResponse = reader.call(ApiKey::CreateTopics, 4, &create).await;
    assert_eq!(created.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let delete = DeleteTopicsRequest::default().with_topic_names(vec![name("orders")]);
    let deleted: DeleteTopicsResponse = reader.call(ApiKey::DeleteTopics, 3, &delete).await;
    assert_eq!(deleted.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let asked =
        vec![TopicPartitions::default().with_topic(name("orders")).with_partitions(vec![0])];
    let elect = ElectLeadersRequest::default().with_topic_partitions(Some(asked));
    let elected: ElectLeadersResponse = reader.call(ApiKey::ElectLeaders, 1, &elect).await;
    let result = &elected.replica_election_results[0].partition_result[0];
    assert_eq!(result.error_code, TOPIC_AUTHORIZATION_FAILED);
    // Every partition: only those of topics the caller administers, so none.
    let every = ElectLeadersRequest::default().with_topic_partitions(None);
    let elected: ElectLeadersResponse = reader.call(ApiKey::ElectLeaders, 1, &every).await;
    assert!(elected.replica_election_results.is_empty());

    // Groups need a grant on the group: the reader has none.
    let join = JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("billing")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(StrBytes::from_static_str(""))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default().with_name(StrBytes::from_static_str("range")),
        ]);
    let joined: JoinGroupResponse = reader.call(ApiKey::JoinGroup, 4, &join).await;
    assert_eq!(joined.error_code, GROUP_AUTHORIZATION_FAILED);
    let delete = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(StrBytes::from_static_str("billing"))]);
    let deleted: DeleteGroupsResponse = reader.call(ApiKey::DeleteGroups, 1, &delete).await;
    assert_eq!(deleted.results[0].error_code, GROUP_AUTHORIZATION_FAILED);
    let delete =
        OffsetDeleteRequest::default().with_group_id(GroupId(StrBytes::from_static_str("billing")));
    let deleted: OffsetDeleteResponse = reader.call(ApiKey::OffsetDelete, 0, &delete).await;
    assert_eq!(deleted.error_code, GROUP_AUTHORIZATION_FAILED);

    let mut writer = Connection::open(&secured.kafka).await;
    assert_eq!(authenticate(&mut writer, "writer-token").await.error_code, 0);
    let produced: ProduceResponse =
        writer.call(ApiKey::Produce, 8, &produce_request("orders")).await;
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    let fetched: FetchResponse = reader.call(ApiKey::Fetch, 11, &fetch_request("orders")).await;
    assert_eq!(fetched.responses[0].partitions[0].high_watermark, 1);
    secured.kafka.server.shutdown().await;
}

#[tokio::test]
async fn a_revoked_tokens_connection_is_closed_even_while_it_waits_for_records() {
    let secured = secured(ServeOptions::default()).await;
    let mut connection = Connection::open(&secured.kafka).await;
    assert_eq!(authenticate(&mut connection, "reader-token").await.error_code, 0);
    // A fetch that waits for records, up to a minute.
    connection.send(ApiKey::Fetch, 11, &fetch_request("orders").with_max_wait_ms(60_000)).await;
    std::fs::write(&secured.token_path, token_file(false)).unwrap();
    assert_eq!(secured.tokens.reload().unwrap(), 1);
    connection.assert_closed().await;
    // The writer's connection is untouched.
    let mut writer = Connection::open(&secured.kafka).await;
    assert_eq!(authenticate(&mut writer, "writer-token").await.error_code, 0);
    secured.kafka.server.shutdown().await;
}

/// confluent-kafka over SASL_SSL: a token produces and consumes; a bad password is refused.
#[tokio::test(flavor = "multi_thread")]
async fn librdkafka_authenticates_over_tls_with_a_token_and_is_refused_without_one() {
    let Some(python) = python_with("confluent_kafka", "confluent-kafka") else { return };
    let pki = pki();
    let secured = secured(ServeOptions { tls: Some(tls(&pki, false)), ..Default::default() }).await;
    let ca = secured.dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let args = ["orders", ca.to_str().unwrap(), "writer-token"];
    let stdout = run_python_with(python, "confluent_kafka_sasl.py", &secured.kafka, &args).await;
    assert!(stdout.contains("consumed 10 records over SASL_SSL, identical"), "{stdout}");
    assert!(stdout.contains("a bad password is refused"), "{stdout}");
    secured.kafka.server.shutdown().await;
}
