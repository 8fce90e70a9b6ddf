//! Running Spool in production: health turns SERVING after recovery, reflection describes the
//! API, topic settings change on a live topic, and Prometheus metrics move with traffic, show
//! consumer-group lag, and leave with a deleted topic.
//! Servers run in-process on 127.0.0.1:0; nothing sleeps waiting for something to happen
//! (a deleted topic's series leave after an idle time: that test scrapes until they have).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, always, assert_code, keyed, record, scrape, value};
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    AlterTopicRequest, CommitOffsets, DeleteTopicRequest, FsyncPolicy, JoinGroup,
    ListTopicsRequest, MemberEvent, MemberRequest, OffsetReset, PartitionOffset,
};
use spool_server::{ServeOptions, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn health_of(channel: &Channel, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(channel.clone());
    let answer = health.check(HealthCheckRequest { service: service.to_owned() }).await.unwrap();
    answer.into_inner().status()
}

#[tokio::test]
async fn health_turns_serving_once_recovery_has_finished() {
    let data = tempfile::tempdir().unwrap();
    // A first run leaves a topic with records behind, so the second start recovers it.
    let first = TestServer::start(data.path()).await;
    first.create_topic("kept", 1, Policy::Always(Always {})).await;
    first.produce("kept", None, vec![record("a"), record("b")]).await.unwrap();
    first.shutdown().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (recover, recover_now) = oneshot::channel::<()>();
    let dir = data.path().to_path_buf();
    // Recovery starts only when the test says so: until then the server must say so too.
    let opening = async move {
        let _ = recover_now.await;
        Server::open(&dir).await
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let serving =
        tokio::spawn(spool_server::serve(listener, ServeOptions::default(), opening, async {
            let _ = stopped.await;
        }));
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    assert_eq!(health_of(&channel, "").await, ServingStatus::NotServing);
    assert_eq!(health_of(&channel, "spool.v1.ProduceService").await, ServingStatus::NotServing);
    assert_code(
        TopicServiceClient::new(channel.clone()).list_topics(ListTopicsRequest {}).await,
        Code::Unavailable,
        "recovering",
    );
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::NotServing);

    recover.send(()).unwrap();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
    for service in ["spool.v1.TopicService", "spool.v1.ProduceService", "spool.v1.ConsumeService"] {
        assert_eq!(health_of(&channel, service).await, ServingStatus::Serving, "{service}");
    }
    let listed = TopicServiceClient::new(channel.clone())
        .list_topics(ListTopicsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.topics.len(), 1);
    // Shutting down says NOT_SERVING to watchers, then ends their streams.
    stop.send(()).unwrap();
    assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::NotServing);
    assert!(watch.message().await.unwrap().is_none());
    serving.await.unwrap().unwrap();
}

/// Sends one v1 or v1alpha reflection request and returns the service names or the number
/// of file descriptors in the answer.
mod reflect {
    use tokio_stream::StreamExt;
    use tonic::transport::Channel;
    use tonic_reflection::pb::{v1, v1alpha};

    pub async fn services_v1(channel: &Channel) -> Vec<String> {
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match answers.next().await.unwrap().unwrap().message_response.unwrap() {
            v1::server_reflection_response::MessageResponse::ListServicesResponse(list) => {
                list.service.into_iter().map(|s| s.name).collect()
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }

    pub async fn files_for_symbol_v1alpha(channel: &Channel, symbol: &str) -> usize {
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    symbol.to_owned(),
                ),
            ),
        };
        let mut client =
            v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        match answers.next().await.unwrap().unwrap().message_response.unwrap() {
            v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files) => {
                files.file_descriptor_proto.len()
            }
            other => panic!("unexpected answer for {symbol}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn reflection_describes_spool_and_health_in_v1_and_v1alpha() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let channel = server.channel().await;
    let mut services = reflect::services_v1(&channel).await;
    services.sort();
    for expected in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "spool.v1.ConsumeService",
        "spool.v1.ProduceService",
        "spool.v1.TopicService",
    ] {
        assert!(services.iter().any(|s| s == expected), "{expected} missing from {services:?}");
    }
    for symbol in ["grpc.health.v1.Health", "spool.v1.TopicService", "spool.v1.SubscribeRequest"] {
        assert!(reflect::files_for_symbol_v1alpha(&channel, symbol).await >= 1, "{symbol}");
    }
    server.shutdown().await;
}

fn topic_of(
    answer: tonic::Response<spool_proto::v1::AlterTopicResponse>,
) -> spool_proto::v1::TopicDescription {
    answer.into_inner().topic.unwrap()
}

#[tokio::test]
async fn topic_settings_change_on_a_live_topic() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("live", 1, Policy::Never(Never {})).await;
    server.produce("live", None, vec![record("before")]).await.unwrap();
    // A subscriber that follows the topic across the change.
    let mut follower = server
        .consumer()
        .await
        .subscribe(spool_proto::v1::SubscribeRequest {
            topic: "live".into(),
            partition: 0,
            start: None,
            encoding: 0,
            stop_at_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(value(&follower.message().await.unwrap().unwrap().records[0]), "before");

    let mut topics = server.topics().await;
    // acks=all is refused on a `never` topic...
    let mut producer = server.producer().await;
    let acks_all = |value: &str| spool_proto::v1::ProduceRequest {
        topic: "live".into(),
        acks: spool_proto::v1::Acks::All as i32,
        payload: Some(spool_proto::v1::produce_request::Payload::Records(
            spool_proto::v1::RecordList { records: vec![record(value)] },
        )),
        ..Default::default()
    };
    assert_code(producer.produce(acks_all("refused")).await, Code::FailedPrecondition, "never");
    // ... and accepted once the policy is `always`, without a restart.
    let altered = topic_of(
        topics
            .alter_topic(AlterTopicRequest {
                name: "live".into(),
                fsync: Some(FsyncPolicy { policy: Some(Policy::Always(Always {})) }),
                retention_ms: Some(3_600_000),
                retention_bytes: None,
                segment_bytes: Some(65_536),
                compression: None,
                partitions: None,
            })
            .await
            .unwrap(),
    );
    let config = altered.config.unwrap();
    assert_eq!(config.fsync.unwrap().policy, Some(Policy::Always(Always {})));
    assert_eq!((config.retention_ms, config.segment_bytes), (Some(3_600_000), Some(65_536)));
    producer.produce(acks_all("after")).await.unwrap();
    assert_eq!(value(&follower.message().await.unwrap().unwrap().records[0]), "after");

    // The smaller segment size takes effect: 100 KiB of records roll at least once.
    let big = "x".repeat(10_000);
    for _ in 0..10 {
        server.produce("live", None, vec![keyed("k", &big)]).await.unwrap();
    }
    let segments = std::fs::read_dir(data.path().join("topics/live/0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log"))
        .count();
    assert!(segments >= 2, "{segments} segments");

    // 0 removes a retention limit; bad values are refused and change nothing.
    let altered = topic_of(
        topics
            .alter_topic(AlterTopicRequest {
                name: "live".into(),
                retention_ms: Some(0),
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    assert_eq!(altered.config.unwrap().retention_ms, None);
    assert_code(
        topics
            .alter_topic(AlterTopicRequest {
                name: "live".into(),
                segment_bytes: Some(1),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "segment size",
    );
    assert_code(
        topics.alter_topic(AlterTopicRequest { name: "nope".into(), ..Default::default() }).await,
        Code::NotFound,
        "nope",
    );
    server.shutdown().await;

    // The change was stored: the next start uses it.
    let server = TestServer::start(data.path()).await;
    let config = server.describe("live").await.unwrap().config.unwrap();
    assert_eq!(config.fsync.unwrap().policy, Some(Policy::Always(Always {})));
    assert_eq!(config.segment_bytes, Some(65_536));
    assert_eq!(server.fetch_all("live", 0, 0).await.len(), 12);
    server.shutdown().await;
}

/// The value of the series `name{labels}` (labels in the exporter's order), if present.
/// Partitions are added to a live topic: producers and readers use them at once, the records
/// of the others stay where they were, a restart keeps them, and the partition limit and
/// "never fewer" are refused without changing anything.
#[tokio::test]
async fn a_topic_grows_live_up_to_the_partition_limit_and_never_shrinks() {
    let data = tempfile::tempdir().unwrap();
    let options = || ServeOptions { partitions_max: Some(5), ..Default::default() };
    let server = TestServer::start_with(data.path(), options()).await;
    server.create_topic("grows", 2, always()).await;
    server.produce("grows", Some(1), vec![record("old")]).await.unwrap();
    let mut topics = server.topics().await;
    let grow = |partitions: u32| AlterTopicRequest {
        name: "grows".into(),
        partitions: Some(partitions),
        ..Default::default()
    };
    let grown = topic_of(topics.alter_topic(grow(4)).await.unwrap());
    assert_eq!((grown.config.unwrap().partitions, grown.partitions.len()), (4, 4));
    server.produce("grows", Some(3), vec![record("new")]).await.unwrap();
    // Unkeyed produces go round the partitions, the new ones too.
    for i in 0..8 {
        server.produce("grows", None, vec![record(&format!("spread-{i}"))]).await.unwrap();
    }
    let described = server.describe("grows").await.unwrap();
    assert!(described.partitions.iter().all(|p| p.log_end_offset > 0), "{described:#?}");

    assert_code(topics.alter_topic(grow(6)).await, Code::ResourceExhausted, "--partitions-max");
    assert_code(topics.alter_topic(grow(3)).await, Code::InvalidArgument, "never removed");
    assert_code(topics.alter_topic(grow(0)).await, Code::InvalidArgument, "partition");
    assert_eq!(server.describe("grows").await.unwrap().partitions.len(), 4);
    assert!(!data.path().join("topics/grows/4").exists());
    server.shutdown().await;

    let server = TestServer::start_with(data.path(), options()).await;
    let described = server.describe("grows").await.unwrap();
    assert_eq!(described.partitions.len(), 4);
    assert_eq!(value(&server.fetch_all("grows", 1, 0).await[0]), "old");
    assert_eq!(value(&server.fetch_all("grows", 3, 0).await[0]), "new");
    server.shutdown().await;
}

fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The idle time after which a retired series leaves `/metrics`: short, so the test that
/// waits for it is short. Every test of this binary installs the recorder with it (the first
/// one decides, for the whole process).
const SERIES_IDLE: Duration = Duration::from_secs(2);

fn install_prometheus() {
    spool_server::metrics::install_prometheus_with_series_idle(SERIES_IDLE).unwrap();
}

/// A server with a metrics endpoint, and the endpoint's address.
async fn metered_server(data: &std::path::Path) -> (TestServer, std::net::SocketAddr) {
    install_prometheus();
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_address = metrics_listener.local_addr().unwrap();
    let options = ServeOptions { metrics: Some(metrics_listener), ..Default::default() };
    (TestServer::start_with(data, options).await, metrics_address)
}

/// `GET /metrics` with `authorization`, if any; returns the status line's code.
async fn scrape_status(address: std::net::SocketAddr, authorization: Option<&str>) -> u16 {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let authorization =
        authorization.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: spool\r\n{authorization}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_default()
}

#[tokio::test]
async fn metrics_show_the_process_the_build_and_the_browser_listeners_requests() {
    install_prometheus();
    let data = tempfile::tempdir().unwrap();
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = metrics_listener.local_addr().unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = http_listener.local_addr().unwrap();
    let options = ServeOptions {
        metrics: Some(metrics_listener),
        http: Some(http_listener),
        ..Default::default()
    };
    let server = TestServer::start_with(data.path(), options).await;
    for path in ["/v1/topics", "/v1/topics", "/nowhere"] {
        let mut stream = TcpStream::connect(http).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.read_to_end(&mut Vec::new()).await.unwrap();
    }
    let body = scrape(address).await;
    let requests = |labels: &str| sample(&body, &format!("spool_http_requests_total{{{labels}}}"));
    assert!(requests(r#"route="/v1/topics",method="GET",status="200""#) >= Some(2.0), "{body}");
    assert!(requests(r#"route="other",method="GET",status="404""#) >= Some(1.0), "{body}");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sample(&body, &format!("spool_build_info{{version=\"{version}\"}}")), Some(1.0));
    for series in
        ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"]
    {
        assert!(sample(&body, series).is_some_and(|v| v > 0.0), "{series}: {body}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn with_tokens_only_a_token_granted_metrics_may_scrape() {
    use spool_server::auth::{Authenticator, token_digest_hex};
    install_prometheus();
    let data = tempfile::tempdir().unwrap();
    let tokens_dir = tempfile::tempdir().unwrap();
    let token_path = tokens_dir.path().join("tokens.toml");
    let file = format!(
        "[[token]]\nname = \"prometheus\"\nsha256 = \"{}\"\nmetrics = true\n\n\
         [[token]]\nname = \"app\"\nsha256 = \"{}\"\ntopics = {{ \"*\" = [\"administer\"] }}\n",
        token_digest_hex("scrape-token"),
        token_digest_hex("app-token"),
    );
    std::fs::write(&token_path, file).unwrap();
    let tokens = Arc::new(Authenticator::load(&token_path).unwrap());
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = metrics_listener.local_addr().unwrap();
    let options = ServeOptions {
        metrics: Some(metrics_listener),
        tokens: Some(tokens),
        ..Default::default()
    };
    let server = TestServer::start_with(data.path(), options).await;
    assert_eq!(scrape_status(address, None).await, 401, "no token");
    assert_eq!(scrape_status(address, Some("Bearer wrong")).await, 401, "an unknown token");
    assert_eq!(scrape_status(address, Some("Bearer app-token")).await, 403, "no metrics grant");
    assert_eq!(scrape_status(address, Some("Bearer scrape-token")).await, 200);
    server.shutdown().await;
}

#[tokio::test]
async fn metrics_appear_and_move_when_traffic_flows() {
    install_prometheus();
    let data = tempfile::tempdir().unwrap();
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_address = metrics_listener.local_addr().unwrap();
    let options = ServeOptions { metrics: Some(metrics_listener), ..Default::default() };
    let server = Arc::new(TestServer::start_with(data.path(), options).await);
    server.create_topic("metered", 2, Policy::Always(Always {})).await;

    let before = scrape(metrics_address).await;
    let labels = r#"{topic="metered",partition="1"}"#;
    assert_eq!(sample(&before, &format!("spool_log_end_offset{labels}")), Some(0.0));
    assert!(before.contains("spool_recovery_seconds"), "{before}");
    // Connections: the accepted counter only grows, so it is at least the one that created the
    // topic; the open-connection gauge is shared with the other tests of this binary (one
    // global recorder), which open and close connections concurrently, so only its presence
    // is checked here.
    assert!(sample(&before, "spool_connections_accepted_total").unwrap() >= 1.0, "{before}");
    assert!(sample(&before, "spool_connections").is_some(), "{before}");

    server.produce("metered", Some(1), vec![record("a"), record("b"), record("c")]).await.unwrap();
    let _ = server.fetch("metered", 1, 0).await.unwrap();
    let mut follower = server
        .consumer()
        .await
        .subscribe(spool_proto::v1::SubscribeRequest {
            topic: "metered".into(),
            partition: 1,
            start: None,
            encoding: 0,
            stop_at_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    follower.message().await.unwrap().unwrap();

    let after = scrape(metrics_address).await;
    let get = |name: &str| sample(&after, &format!("{name}{labels}"));
    assert_eq!(get("spool_produced_records_total"), Some(3.0), "{after}");
    assert!(get("spool_produced_bytes_total").unwrap() > 0.0);
    // The fetch read 3 records, the subscription 3 more.
    assert_eq!(get("spool_consumed_records_total"), Some(6.0), "{after}");
    assert!(get("spool_consumed_bytes_total").unwrap() > 0.0);
    assert_eq!(get("spool_log_end_offset"), Some(3.0));
    assert_eq!(get("spool_segments"), Some(1.0));
    assert_eq!(get("spool_subscribers"), Some(1.0));
    assert_eq!(get("spool_partition_fenced"), Some(0.0));
    let append_count = r#"spool_append_seconds_count{topic="metered",partition="1"}"#;
    assert_eq!(sample(&after, append_count), Some(1.0), "{after}");
    let fsync_count = r#"spool_fsync_seconds_count{topic="metered",partition="1"}"#;
    assert_eq!(sample(&after, fsync_count), Some(1.0), "{after}");
    let group_bucket = r#"spool_group_commit_batches_bucket{topic="metered",partition="1",le="1"}"#;
    assert_eq!(sample(&after, group_bucket), Some(1.0), "{after}");
    drop(follower);
    Arc::into_inner(server).unwrap().shutdown().await;
}

/// A group member on one topic: joins, and commits offsets of its partitions.
struct Member {
    requests: mpsc::Sender<MemberRequest>,
    events: tonic::Streaming<MemberEvent>,
    generation: u64,
    commits: u64,
}

impl Member {
    async fn join(server: &TestServer, group: &str, topic: &str) -> Member {
        let (requests, receiver) = mpsc::channel(8);
        let join = JoinGroup {
            group: group.into(),
            topics: vec![topic.into()],
            reset: OffsetReset::Earliest as i32,
            ..Default::default()
        };
        requests.send(MemberRequest { kind: Some(RequestKind::Join(join)) }).await.unwrap();
        let mut groups = GroupServiceClient::new(server.channel().await);
        let events = groups.join(ReceiverStream::new(receiver)).await.unwrap().into_inner();
        let mut member = Member { requests, events, generation: 0, commits: 0 };
        member.generation = member
            .next(|kind| match kind {
                Kind::Assignment(assignment) if !assignment.owned.is_empty() => {
                    Some(assignment.generation)
                }
                _ => None,
            })
            .await;
        member
    }

    /// Reads events until `wanted` picks one.
    async fn next<T>(&mut self, wanted: impl Fn(Kind) -> Option<T>) -> T {
        let reading = async {
            loop {
                let event =
                    self.events.message().await.unwrap().expect("the member stream goes on");
                if let Some(found) = event.kind.and_then(&wanted) {
                    return found;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), reading).await.expect("the event comes")
    }

    /// Commits `offset` for partition 0 of `topic` and waits for the result.
    async fn commit(&mut self, topic: &str, offset: u64) {
        self.commits += 1;
        let commit_id = self.commits;
        let offsets = vec![PartitionOffset { topic: topic.into(), partition: 0, offset }];
        let commit = CommitOffsets { commit_id, generation: self.generation, offsets };
        self.requests
            .send(MemberRequest { kind: Some(RequestKind::Commit(commit)) })
            .await
            .unwrap();
        let result = self
            .next(|kind| match kind {
                Kind::CommitResult(result) if result.commit_id == commit_id => Some(result),
                _ => None,
            })
            .await;
        assert_eq!(result.code, 0, "{result:?}");
    }
}

#[tokio::test]
async fn group_lag_appears_and_drops_after_a_commit() {
    let data = tempfile::tempdir().unwrap();
    let (server, metrics_address) = metered_server(data.path()).await;
    server.create_topic("lagging", 1, Policy::Always(Always {})).await;
    let ten: Vec<_> = (0..10).map(|n| record(&format!("r{n}"))).collect();
    server.produce("lagging", Some(0), ten).await.unwrap();
    let lag = r#"spool_group_lag_records{group="watchers",topic="lagging",partition="0"}"#;
    assert_eq!(sample(&scrape(metrics_address).await, lag), None, "nothing committed yet");

    let mut member = Member::join(&server, "watchers", "lagging").await;
    member.commit("lagging", 4).await;
    assert_eq!(sample(&scrape(metrics_address).await, lag), Some(6.0));
    member.commit("lagging", 10).await;
    assert_eq!(sample(&scrape(metrics_address).await, lag), Some(0.0));
    // The lag follows the end without a commit.
    server.produce("lagging", Some(0), vec![record("a"), record("b"), record("c")]).await.unwrap();
    assert_eq!(sample(&scrape(metrics_address).await, lag), Some(3.0));
    drop(member);
    // A restart folds the committed offset back: the lag is there before any member joins.
    server.shutdown().await;
    let (server, metrics_address) = metered_server(data.path()).await;
    assert_eq!(sample(&scrape(metrics_address).await, lag), Some(3.0));
    server.shutdown().await;
}

/// A deleted group's lag series leave `/metrics` within the idle time.
#[tokio::test]
async fn a_deleted_groups_lag_leaves_metrics() {
    let data = tempfile::tempdir().unwrap();
    let (server, metrics_address) = metered_server(data.path()).await;
    server.create_topic("read", 1, Policy::Always(Always {})).await;
    server.produce("read", Some(0), vec![record("a"), record("b")]).await.unwrap();
    let mut member = Member::join(&server, "leavers", "read").await;
    member.commit("read", 1).await;
    drop(member);
    let lag = r#"spool_group_lag_records{group="leavers",topic="read",partition="0"}"#;
    assert_eq!(sample(&scrape(metrics_address).await, lag), Some(1.0));
    // The member's stream has closed; the group is deleted once the server saw it leave.
    let mut groups = GroupServiceClient::new(server.channel().await);
    let deleted = async {
        loop {
            let request = spool_proto::v1::DeleteGroupRequest {
                group: "leavers".into(),
                ..Default::default()
            };
            match groups.delete_group(request).await {
                Ok(_) => return,
                Err(status) if status.code() == Code::FailedPrecondition => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(status) => panic!("{status:?}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), deleted).await.expect("the group is deleted");
    let gone = async {
        loop {
            if sample(&scrape(metrics_address).await, lag).is_none() {
                return;
            }
            tokio::time::sleep(SERIES_IDLE / 8).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), gone).await.expect("the lag series is gone");
    server.shutdown().await;
}

/// A deleted topic's series (counters, gauges, the lag of groups on it) leave `/metrics`
/// within the idle time; a live topic's series stay, however quiet it is meanwhile.
#[tokio::test]
async fn a_deleted_topics_series_leave_metrics_and_a_quiet_topics_stay() {
    let data = tempfile::tempdir().unwrap();
    let (server, metrics_address) = metered_server(data.path()).await;
    for topic in ["doomed", "quiet"] {
        server.create_topic(topic, 1, Policy::Always(Always {})).await;
        server.produce(topic, Some(0), vec![record("a"), record("b")]).await.unwrap();
    }
    let mut member = Member::join(&server, "mourners", "doomed").await;
    member.commit("doomed", 1).await;
    drop(member);
    let doomed = |body: &str| -> Vec<String> {
        body.lines()
            .filter(|line| line.contains(r#"topic="doomed""#) && !line.contains("_seconds"))
            .filter(|line| !line.contains("spool_group_commit_batches"))
            .map(str::to_owned)
            .collect()
    };
    let before = scrape(metrics_address).await;
    let lag = r#"spool_group_lag_records{group="mourners",topic="doomed",partition="0"}"#;
    assert_eq!(sample(&before, lag), Some(1.0), "{before}");
    let produced = r#"spool_produced_records_total{topic="doomed",partition="0"}"#;
    assert_eq!(sample(&before, produced), Some(2.0));

    let mut topics = server.topics().await;
    topics.delete_topic(DeleteTopicRequest { name: "doomed".into() }).await.unwrap();
    let gone = async {
        loop {
            let body = scrape(metrics_address).await;
            if doomed(&body).is_empty() {
                return body;
            }
            tokio::time::sleep(SERIES_IDLE / 8).await;
        }
    };
    let after = tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .unwrap_or_else(|_| panic!("the deleted topic's series stay: {:?}", doomed(&before)));
    // The quiet topic saw no traffic for longer than the idle time: its series are all there.
    let quiet = |name: &str| sample(&after, &format!(r#"{name}{{topic="quiet",partition="0"}}"#));
    assert_eq!(quiet("spool_produced_records_total"), Some(2.0), "{after}");
    assert_eq!(quiet("spool_log_end_offset"), Some(2.0), "{after}");
    assert_eq!(quiet("spool_subscribers"), Some(0.0), "{after}");
    server.shutdown().await;
}
