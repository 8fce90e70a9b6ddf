//! TLS, mutual TLS, bearer tokens and per-token grants, against in-process servers on
//! 127.0.0.1:0 with certificates the test makes (rcgen).

mod common;

use std::sync::Arc;

use common::tls::{Pki, pki, tls};
use common::{TestServer, assert_code, record, value};
use spool_proto::v1::consume_service_client::ConsumeServiceClient;
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::produce_stream_response::Result as StreamResult;
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    Acks, AlterTopicRequest, CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest,
    ElectLeadersRequest, ElectLeadersTopic, FetchRequest, ListTopicsRequest, ProduceRequest,
    RecordList, SubscribeRequest,
};
use spool_server::ServeOptions;
use spool_server::auth::{Authenticator, token_digest_hex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

async fn connect_tls(
    server: &TestServer,
    pki: &Pki,
    client_identity: bool,
) -> Result<Channel, tonic::transport::Error> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    if client_identity {
        config = config.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Channel::from_shared(server.url().to_owned()).unwrap().tls_config(config)?.connect().await
}

async fn list(channel: Channel) -> Result<usize, Status> {
    let listed = TopicServiceClient::new(channel).list_topics(ListTopicsRequest {}).await?;
    Ok(listed.into_inner().topics.len())
}

#[tokio::test]
async fn tls_handshakes_and_plaintext_is_refused() {
    let pki = pki();
    let data = tempfile::tempdir().unwrap();
    let options = ServeOptions { tls: Some(tls(&pki, false)), ..Default::default() };
    let server = TestServer::start_with(data.path(), options).await;
    assert!(server.url().starts_with("https://"));
    let channel = connect_tls(&server, &pki, false).await.unwrap();
    assert_eq!(list(channel).await.unwrap(), 0);
    // A client that does not trust the CA cannot complete the handshake.
    let untrusting = Channel::from_shared(server.url().to_owned())
        .unwrap()
        .tls_config(ClientTlsConfig::new().domain_name("localhost"))
        .unwrap()
        .connect()
        .await;
    assert!(untrusting.is_err());
    // Plaintext HTTP/2 to a TLS listener gets no answer.
    let plain = server.url().replacen("https://", "http://", 1);
    let plain = Channel::from_shared(plain).unwrap().connect().await;
    if let Ok(channel) = plain {
        assert!(list(channel).await.is_err());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = self::pki();
    let data = tempfile::tempdir().unwrap();
    let options = ServeOptions { tls: Some(tls(&pki, true)), ..Default::default() };
    let server = TestServer::start_with(data.path(), options).await;
    let channel = connect_tls(&server, &pki, true).await.unwrap();
    assert_eq!(list(channel).await.unwrap(), 0);
    // Without a client certificate the handshake, or the first call, fails.
    match connect_tls(&server, &pki, false).await {
        Err(_) => {}
        Ok(channel) => assert!(list(channel).await.is_err()),
    }
    // A certificate from another CA is refused the same way.
    let stranger = self::pki();
    let foreign =
        Pki { ca_pem: pki.ca_pem.clone(), server: stranger.server, client: stranger.client };
    match connect_tls(&server, &foreign, true).await {
        Err(_) => {}
        Ok(channel) => assert!(list(channel).await.is_err()),
    }
    server.shutdown().await;
}

/// A token file with three identities:
/// - `writer`: produce to `orders`; consume from `logs.*`;
/// - `admin`: administer every topic;
/// - `reader`: consume from `orders`.
fn token_file() -> String {
    format!(
        r#"
[[token]]
name = "writer"
sha256 = "{}"
topics = {{ "orders" = ["produce"], "logs.*" = ["consume"] }}

[[token]]
name = "admin"
sha256 = "{}"
topics = {{ "*" = ["administer"] }}

[[token]]
name = "reader"
sha256 = "{}"
topics = {{ "orders" = ["consume"] }}
"#,
        token_digest_hex("writer-token"),
        token_digest_hex("admin-token"),
        token_digest_hex("reader-token"),
    )
}

type Authed = InterceptedService<Channel, Bearer>;

#[derive(Clone)]
struct Bearer(Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        Ok(request)
    }
}

struct Secured {
    server: TestServer,
    tokens: Arc<Authenticator>,
    token_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start(data: &std::path::Path) -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("tokens.toml");
        std::fs::write(&token_path, token_file()).unwrap();
        let tokens = Arc::new(Authenticator::load(&token_path).unwrap());
        let options = ServeOptions { tokens: Some(tokens.clone()), ..Default::default() };
        let server = TestServer::start_with(data, options).await;
        Secured { server, tokens, token_path, _dir: dir }
    }

    async fn as_(&self, token: Option<&'static str>) -> Authed {
        InterceptedService::new(self.server.channel().await, Bearer(token))
    }

    async fn topics(&self, token: Option<&'static str>) -> TopicServiceClient<Authed> {
        TopicServiceClient::new(self.as_(token).await)
    }

    async fn create(&self, token: Option<&'static str>, name: &str) -> Result<(), Status> {
        let request = CreateTopicRequest { name: name.into(), config: None };
        self.topics(token).await.create_topic(request).await.map(drop)
    }

    async fn produce(&self, token: Option<&'static str>, topic: &str) -> Result<(), Status> {
        let mut producer = ProduceServiceClient::new(self.as_(token).await);
        producer.produce(produce_request(topic, 0, "v")).await.map(drop)
    }

    async fn fetch(&self, token: Option<&'static str>, topic: &str) -> Result<usize, Status> {
        let request = FetchRequest {
            topic: topic.into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
            max_wait_ms: 0,
            encoding: 0,
        };
        let fetched = ConsumeServiceClient::new(self.as_(token).await).fetch(request).await?;
        Ok(fetched.into_inner().records.len())
    }

    async fn subscribe(
        &self,
        token: Option<&'static str>,
        topic: &str,
    ) -> Result<tonic::Streaming<spool_proto::v1::SubscribeResponse>, Status> {
        let request = SubscribeRequest {
            topic: topic.into(),
            partition: 0,
            start: None,
            encoding: 0,
            stop_at_end: false,
        };
        let mut consumer = ConsumeServiceClient::new(self.as_(token).await);
        Ok(consumer.subscribe(request).await?.into_inner())
    }

    /// Rewrites the token file without `name`'s entry and reloads it, as SIGHUP would.
    fn revoke(&self, name: &str) {
        let file = token_file();
        let kept: Vec<&str> =
            file.split("[[token]]").filter(|e| !e.contains(&format!("\"{name}\""))).collect();
        std::fs::write(&self.token_path, kept.join("[[token]]")).unwrap();
        assert_eq!(self.tokens.reload().unwrap(), 2);
    }
}

fn produce_request(topic: &str, correlation_id: u64, value: &str) -> ProduceRequest {
    ProduceRequest {
        correlation_id,
        topic: topic.into(),
        acks: Acks::Unspecified as i32,
        payload: Some(Payload::Records(RecordList { records: vec![record(value)] })),
        ..Default::default()
    }
}

const WRITER: Option<&str> = Some("writer-token");
const ADMIN: Option<&str> = Some("admin-token");
const READER: Option<&str> = Some("reader-token");

#[tokio::test]
async fn each_grant_allows_exactly_what_it_names_on_unary_calls() {
    let data = tempfile::tempdir().unwrap();
    let secured = Secured::start(data.path()).await;

    // No token, a malformed or unknown one: UNAUTHENTICATED, on every service.
    assert_code(secured.create(None, "orders").await, Code::Unauthenticated, "needs a token");
    assert_code(secured.produce(None, "orders").await, Code::Unauthenticated, "needs a token");
    assert_code(secured.fetch(None, "orders").await, Code::Unauthenticated, "needs a token");
    assert_code(secured.fetch(Some("guess"), "orders").await, Code::Unauthenticated, "not valid");

    // Administer: only the admin creates, alters and deletes.
    assert_code(
        secured.create(WRITER, "orders").await,
        Code::PermissionDenied,
        "writer may not administer topic orders",
    );
    secured.create(ADMIN, "orders").await.unwrap();
    secured.create(ADMIN, "logs.app").await.unwrap();
    secured.create(ADMIN, "secret").await.unwrap();
    let alter = AlterTopicRequest {
        name: "orders".into(),
        retention_ms: Some(60_000),
        ..Default::default()
    };
    assert_code(
        secured.topics(READER).await.alter_topic(alter.clone()).await,
        Code::PermissionDenied,
        "administer",
    );
    secured.topics(ADMIN).await.alter_topic(alter).await.unwrap();
    let elect = ElectLeadersRequest {
        topics: vec![ElectLeadersTopic { topic: "orders".into(), partitions: vec![] }],
        timeout_ms: 0,
    };
    assert_code(
        secured.topics(READER).await.elect_leaders(elect.clone()).await,
        Code::PermissionDenied,
        "administer",
    );
    secured.topics(ADMIN).await.elect_leaders(elect).await.unwrap();

    // Produce: the writer to orders only; the reader and the admin may not.
    secured.produce(WRITER, "orders").await.unwrap();
    assert_code(
        secured.produce(WRITER, "logs.app").await,
        Code::PermissionDenied,
        "writer may not produce to topic logs.app",
    );
    assert_code(
        secured.produce(READER, "orders").await,
        Code::PermissionDenied,
        "reader may not produce",
    );
    assert_code(
        secured.produce(ADMIN, "orders").await,
        Code::PermissionDenied,
        "admin may not produce",
    );

    // Consume: the reader from orders, the writer from logs.* only.
    assert_eq!(secured.fetch(READER, "orders").await.unwrap(), 1);
    assert_eq!(secured.fetch(WRITER, "logs.app").await.unwrap(), 0);
    assert_code(
        secured.fetch(WRITER, "orders").await,
        Code::PermissionDenied,
        "writer may not consume from topic orders",
    );

    // Nothing about topics one may not see: the same answer whether or not they exist, and
    // ListTopics shows only the topics one holds a grant on.
    let describe = |name: &str| DescribeTopicRequest { name: name.into() };
    let mut reader = secured.topics(READER).await;
    assert_code(
        reader.describe_topic(describe("secret")).await,
        Code::PermissionDenied,
        "reader may not describe topic secret",
    );
    assert_code(
        reader.describe_topic(describe("absent")).await,
        Code::PermissionDenied,
        "reader may not describe topic absent",
    );
    assert_code(
        secured.fetch(READER, "secret").await,
        Code::PermissionDenied,
        "reader may not consume",
    );
    assert_code(
        secured.fetch(READER, "absent").await,
        Code::PermissionDenied,
        "reader may not consume",
    );
    let shared = &secured;
    let names = |token| async move {
        let listed = shared.topics(token).await.list_topics(ListTopicsRequest {}).await.unwrap();
        listed.into_inner().topics.into_iter().map(|t| t.name).collect::<Vec<_>>()
    };
    assert_eq!(names(READER).await, ["orders"]);
    assert_eq!(names(WRITER).await, ["logs.app", "orders"]);
    assert_eq!(names(ADMIN).await, ["logs.app", "orders", "secret"]);

    // A revoked token stops working at once.
    assert_code(
        secured
            .topics(WRITER)
            .await
            .delete_topic(DeleteTopicRequest { name: "secret".into() })
            .await,
        Code::PermissionDenied,
        "administer",
    );
    secured.revoke("admin");
    assert_code(secured.create(ADMIN, "more").await, Code::Unauthenticated, "not valid");
    assert_code(
        secured.topics(ADMIN).await.list_topics(ListTopicsRequest {}).await,
        Code::Unauthenticated,
        "not valid",
    );
    secured.server.shutdown().await;
}

#[tokio::test]
async fn streams_check_the_token_and_grant_on_every_message() {
    let data = tempfile::tempdir().unwrap();
    let secured = Secured::start(data.path()).await;
    secured.create(ADMIN, "orders").await.unwrap();
    secured.create(ADMIN, "logs.app").await.unwrap();

    // A produce stream: allowed messages succeed, a message to a topic without the grant
    // gets PERMISSION_DENIED for itself, and the stream goes on.
    let (requests, requests_rx) = mpsc::channel(4);
    let mut answers = ProduceServiceClient::new(secured.as_(WRITER).await)
        .produce_stream(ReceiverStream::new(requests_rx))
        .await
        .unwrap()
        .into_inner();
    let next = |request| {
        let requests = requests.clone();
        async move { requests.send(request).await.unwrap() }
    };
    next(produce_request("orders", 1, "one")).await;
    let first = answers.message().await.unwrap().unwrap();
    assert!(matches!(first.result, Some(StreamResult::Ok(_))), "{first:?}");
    next(produce_request("logs.app", 2, "denied")).await;
    let second = answers.message().await.unwrap().unwrap();
    match second.result {
        Some(StreamResult::Error(error)) => {
            assert_eq!(error.code, Code::PermissionDenied as i32);
            assert_eq!(second.correlation_id, 2);
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    // A subscriber with the reader's token follows orders.
    let mut follower = secured.subscribe(READER, "orders").await.unwrap();
    assert_eq!(value(&follower.message().await.unwrap().unwrap().records[0]), "one");
    // A subscription without the grant is refused at once.
    assert_code(
        secured.subscribe(READER, "logs.app").await,
        Code::PermissionDenied,
        "reader may not consume",
    );

    // Revoking the writer ends its stream at the next message, with UNAUTHENTICATED.
    secured.revoke("writer");
    next(produce_request("orders", 3, "after revocation")).await;
    let status = answers.message().await.expect_err("the stream ends");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Revoking the reader stops its subscription at the next message it would receive.
    let reader_file: String = token_file()
        .split("[[token]]")
        .filter(|e| e.contains("\"admin\""))
        .map(|e| format!("[[token]]{e}"))
        .collect();
    std::fs::write(&secured.token_path, reader_file).unwrap();
    secured.tokens.reload().unwrap();
    // Something new to deliver, produced with a fresh token that may.
    let admin_writes = format!(
        "{}\n[[token]]\nname = \"w2\"\nsha256 = \"{}\"\ntopics = {{ \"orders\" = [\"produce\"] }}\n",
        std::fs::read_to_string(&secured.token_path).unwrap(),
        token_digest_hex("w2-token")
    );
    std::fs::write(&secured.token_path, admin_writes).unwrap();
    secured.tokens.reload().unwrap();
    secured.produce(Some("w2-token"), "orders").await.unwrap();
    let status = follower.message().await.expect_err("the subscription ends");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    secured.server.shutdown().await;
}

/// The Rust client sends its token with every call: topic calls, producers and subscriptions.
#[tokio::test]
async fn the_rust_client_sends_its_token_on_every_call() {
    use spool_client::{
        AdminError, Client, ErrorCode, Follow, ProducerConfig, Record, StartAt, TopicSettings,
    };

    let data = tempfile::tempdir().unwrap();
    let secured = Secured::start(data.path()).await;
    let channel = secured.server.channel().await;
    let as_ = |token: &str| Client::from_channel(channel.clone()).with_bearer_token(token).unwrap();

    let anonymous = Client::from_channel(channel.clone());
    match anonymous.create_topic("orders", TopicSettings::default()).await {
        Err(AdminError::Rejected(error)) => assert_eq!(error.code, ErrorCode::Unauthenticated),
        other => panic!("an anonymous create answered {other:?}"),
    }
    as_("admin-token").create_topic("orders", TopicSettings::default()).await.unwrap();

    let producer = as_("writer-token").producer("orders", ProducerConfig::default()).await.unwrap();
    let delivery = producer.send(Record::value(b"paid")).await.unwrap();
    assert_eq!(delivery.wait().await.unwrap().offset, Some(0));
    producer.close().await.unwrap();

    let mut consumer = as_("reader-token")
        .subscribe("orders", 0, StartAt::Earliest, Follow::UntilEnd)
        .await
        .unwrap();
    let polled = consumer.poll().await.unwrap().expect("the record is there");
    let values: Vec<Vec<u8>> =
        polled.records().map(|r| r.unwrap().value.unwrap().to_vec()).collect();
    assert_eq!(values, [b"paid".to_vec()]);

    // The reader may not produce: the first record is refused with PERMISSION_DENIED.
    let producer = as_("reader-token").producer("orders", ProducerConfig::default()).await.unwrap();
    let delivery = producer.send(Record::value(b"forged")).await.unwrap();
    match delivery.wait().await {
        Err(error) => assert!(format!("{error:?}").contains("PermissionDenied"), "{error:?}"),
        Ok(metadata) => panic!("a reader produced at {metadata:?}"),
    }
}

#[tokio::test]
async fn a_group_describes_only_the_topics_its_caller_may_see() {
    use spool_client::{Client, GroupConfig, GroupEvent, TopicSettings};

    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("tokens.toml");
    let file = format!(
        "[[token]]\nname = \"admin\"\nsha256 = \"{}\"\ntopics = {{ \"*\" = [\"administer\", \"consume\"] }}\ngroups = {{ \"*\" = [\"administer\", \"consume\"] }}\n\
         [[token]]\nname = \"billing\"\nsha256 = \"{}\"\ngroups = {{ \"billing-*\" = [\"consume\"] }}\n",
        token_digest_hex("admin-token"),
        token_digest_hex("billing-token"),
    );
    std::fs::write(&token_path, file).unwrap();
    let tokens = Arc::new(Authenticator::load(&token_path).unwrap());
    let options = ServeOptions { tokens: Some(tokens), ..Default::default() };
    let server = TestServer::start_with(data.path(), options).await;
    let channel = server.channel().await;
    let as_ = |token: &str| Client::from_channel(channel.clone()).with_bearer_token(token).unwrap();

    let admin = as_("admin-token");
    admin.create_topic("secret", TopicSettings::default()).await.unwrap();
    let mut member =
        admin.group_consumer(GroupConfig::new("billing-1", &["secret"])).await.unwrap();
    while !matches!(member.poll().await.unwrap(), GroupEvent::Assigned(_)) {}
    member.commit().await.unwrap();

    let seen_by_admin = admin.describe_group("billing-1").await.unwrap();
    assert_eq!(seen_by_admin.topics, ["secret"]);
    assert_eq!(seen_by_admin.partitions.len(), 1);
    // A grant on the group alone shows the group, not the topic the token may not see:
    // no name, no partitions, no offsets or lag, nothing owned.
    let billing = as_("billing-token");
    let seen = billing.describe_group("billing-1").await.unwrap();
    assert_eq!(seen.name, "billing-1");
    assert!(seen.topics.is_empty(), "{seen:?}");
    assert!(seen.partitions.is_empty(), "{seen:?}");
    assert!(seen.members.iter().all(|m| m.owned.is_empty() && m.revoking.is_empty()), "{seen:?}");
    let listed = billing.list_groups().await.unwrap();
    assert!(listed.iter().all(|g| g.topics.is_empty()), "{listed:?}");
    member.close().await.unwrap();

    // Without members the group's topics are those of its committed offsets, hidden alike.
    admin.reset_group("billing-1", "secret", spool_client::StartAt::Earliest).await.unwrap();
    let listed = admin.list_groups().await.unwrap();
    assert_eq!(listed.iter().map(|g| g.topics.clone()).collect::<Vec<_>>(), [["secret"]]);
    let listed = billing.list_groups().await.unwrap();
    assert!(listed.iter().all(|g| g.topics.is_empty()), "{listed:?}");
    // Deleting takes the `administer` grant on the group, as a reset does.
    let refused = billing.delete_group("billing-1").await.unwrap_err();
    let spool_client::AdminError::Rejected(error) = refused;
    assert_eq!(error.code, spool_client::ErrorCode::PermissionDenied, "{error}");
    assert!(error.message.contains("may not administer group billing-1"), "{error}");
    assert_eq!(admin.list_groups().await.unwrap().len(), 1, "a refused deletion changes nothing");
    let deleted = admin.delete_group("billing-1").await.unwrap();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(admin.list_groups().await.unwrap().is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_subscription_ends_when_its_token_is_revoked() {
    let data = tempfile::tempdir().unwrap();
    let secured = Secured::start(data.path()).await;
    secured.create(ADMIN, "orders").await.unwrap();
    // Nothing is ever produced: the subscription waits for records, then its token goes.
    let mut follower = secured.subscribe(READER, "orders").await.unwrap();
    secured.revoke("reader");
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), follower.message())
        .await
        .expect("the idle stream ends at the reload, not at the next record");
    let status = ended.expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
}

#[tokio::test]
async fn a_revoked_group_member_can_neither_commit_nor_stay() {
    use spool_client::{Client, GroupConfig, GroupEvent, ProducerConfig, Record, TopicSettings};

    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("tokens.toml");
    let admin = format!(
        "[[token]]\nname = \"admin\"\nsha256 = \"{}\"\ntopics = {{ \"*\" = [\"administer\", \"produce\", \"consume\"] }}\ngroups = {{ \"*\" = [\"administer\", \"consume\"] }}\n",
        token_digest_hex("admin-token"),
    );
    let member_token = |groups: &str| {
        format!(
            "[[token]]\nname = \"member\"\nsha256 = \"{}\"\ntopics = {{ \"t\" = [\"consume\"] }}\n{groups}",
            token_digest_hex("member-token"),
        )
    };
    let granted = member_token("groups = { \"g\" = [\"consume\"] }\n");
    std::fs::write(&token_path, format!("{admin}{granted}")).unwrap();
    let tokens = Arc::new(Authenticator::load(&token_path).unwrap());
    let options = ServeOptions { tokens: Some(tokens.clone()), ..Default::default() };
    let server = TestServer::start_with(data.path(), options).await;
    let channel = server.channel().await;
    let as_ = |token: &str| Client::from_channel(channel.clone()).with_bearer_token(token).unwrap();

    let admin_client = as_("admin-token");
    admin_client.create_topic("t", TopicSettings::default()).await.unwrap();
    let producer = admin_client.producer("t", ProducerConfig::default()).await.unwrap();
    producer.send(Record::value(b"r")).await.unwrap().wait().await.unwrap();
    producer.close().await.unwrap();

    let config =
        GroupConfig { commit: spool_client::CommitMode::Explicit, ..GroupConfig::new("g", &["t"]) };
    let mut member = as_("member-token").group_consumer(config).await.unwrap();
    while !matches!(member.poll().await.unwrap(), GroupEvent::Records(_)) {}

    // The group grant is taken away: the token stays, and may still read the topic.
    std::fs::write(&token_path, format!("{admin}{}", member_token(""))).unwrap();
    tokens.reload().unwrap();
    let commit = member.commit().await;
    assert!(commit.is_err(), "a revoked member's commit is refused: {commit:?}");
    // The member left and nothing was committed: the server no longer knows the group.
    match admin_client.describe_group("g").await {
        Err(spool_client::AdminError::Rejected(error)) => {
            assert_eq!(error.code, spool_client::ErrorCode::NotFound, "{error}")
        }
        Ok(group) => panic!("the group is still known: {group:?}"),
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Connections that make no request, or stall, are closed.

/// Short timeouts, so the tests that wait for them are short.
const TIMEOUTS: spool_server::ConnectionTimeouts = spool_server::ConnectionTimeouts {
    handshake: std::time::Duration::from_millis(500),
    idle: std::time::Duration::from_millis(1500),
};

/// Sends `bytes` (perhaps none) on a new connection to `address`, then waits for the server
/// to close it; returns how long that took, or panics if it stays open for the patience.
async fn closed_after(address: std::net::SocketAddr, bytes: &[u8]) -> std::time::Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let started = std::time::Instant::now();
    let mut sink = Vec::new();
    let drained = tokio::time::timeout(common::http::PATIENCE, async {
        // Whatever the server writes first (its HTTP/2 settings) is read and dropped; the
        // connection ends with end-of-file or a reset.
        let _ = stream.read_to_end(&mut sink).await;
    });
    drained.await.unwrap_or_else(|_| panic!("the connection after {bytes:?} stayed open"));
    started.elapsed()
}

#[tokio::test]
async fn connections_that_make_no_request_are_closed_at_the_handshake_timeout() {
    let pki = pki();
    let plain = tempfile::tempdir().unwrap();
    let options = ServeOptions { connection_timeouts: TIMEOUTS, ..Default::default() };
    let plain = TestServer::start_with(plain.path(), options).await;
    let mutual = tempfile::tempdir().unwrap();
    let options = ServeOptions {
        tls: Some(tls(&pki, true)),
        connection_timeouts: TIMEOUTS,
        ..Default::default()
    };
    let mutual = TestServer::start_with(mutual.path(), options).await;
    let browser = tempfile::tempdir().unwrap();
    let options = ServeOptions { connection_timeouts: TIMEOUTS, ..Default::default() };
    let browser = common::http::Browserside::start(browser.path(), options).await;
    let browser_address = browser.base.trim_start_matches("http://").parse().unwrap();

    // Raw TCP that sends nothing, and half an HTTP/2 preface.
    closed_after(plain.address(), b"").await;
    closed_after(plain.address(), b"PRI * HTTP/2.0\r\n").await;
    // On the mutual-TLS port: nothing, and a TLS record header that never gets its body.
    closed_after(mutual.address(), b"").await;
    closed_after(mutual.address(), &[0x16, 0x03, 0x01, 0x02, 0x00]).await;
    // The browser listener: nothing, and a request head sent halfway.
    closed_after(browser_address, b"").await;
    let took = closed_after(browser_address, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    assert!(took >= TIMEOUTS.handshake / 2, "closed at once ({took:?}), not at the timeout");
    // The listeners still serve.
    assert_eq!(list(plain.channel().await).await.unwrap(), 0);
    assert_eq!(list(connect_tls(&mutual, &pki, true).await.unwrap()).await.unwrap(), 0);
    let page = browser.client.get(browser.url("/")).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_a_waiting_stream_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;
    let data = tempfile::tempdir().unwrap();
    let options = ServeOptions { connection_timeouts: TIMEOUTS, ..Default::default() };
    let browser = common::http::Browserside::start(data.path(), options).await;
    let server = &browser.server;
    server.create_topic("quiet", 1, common::always()).await;

    // A gRPC subscription and an SSE stream on a topic where nothing happens for several
    // idle timeouts: the gRPC listener's pings and the stream's keep-alives keep both open.
    let request = SubscribeRequest { topic: "quiet".into(), partition: 0, ..Default::default() };
    let mut subscription = server.consumer().await.subscribe(request).await.unwrap().into_inner();
    let mut events = browser.sse("/v1/topics/quiet/partitions/0/events", None).await;
    // A keep-alive HTTP/1 connection that made one request and then says nothing.
    let address: std::net::SocketAddr = browser.base.trim_start_matches("http://").parse().unwrap();
    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET /v1/topics HTTP/1.1\r\nHost: {address}\r\n\r\n");
    idle.write_all(request.as_bytes()).await.unwrap();
    let mut answered = Vec::new();
    let ended = tokio::time::timeout(common::http::PATIENCE, idle.read_to_end(&mut answered));
    let _ = ended.await.expect("the idle connection was closed");
    let answered = String::from_utf8_lossy(&answered);
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // The idle connection took one idle timeout to close; the streams have waited as long.
    // Wait two more before a record arrives.
    tokio::time::sleep(TIMEOUTS.idle * 2).await;
    server.produce("quiet", Some(0), vec![record("after the quiet")]).await.unwrap();
    let next = tokio::time::timeout(common::http::PATIENCE, subscription.next()).await;
    let message = next.unwrap().expect("the subscription is open").unwrap();
    assert_eq!(value(&message.records[0]), "after the quiet");
    let event = events.next().await;
    assert!(event.data.to_string().contains("after the quiet"), "{event:?}");
}
