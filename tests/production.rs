//! Running Spool in production: health turns SERVING after recovery, reflection describes the
//! API, topic settings change on a live topic, and Prometheus metrics move with traffic.
//! Servers run in-process on 127.0.0.1:0; nothing sleeps waiting for something to happen.

mod common;

use std::sync::Arc;

use common::{TestServer, assert_code, keyed, record, value};
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{AlterTopicRequest, FsyncPolicy, ListTopicsRequest};
use spool_server::{ServeOptions, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
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
    let described = server
        .topics()
        .await
        .describe_topic(spool_proto::v1::DescribeTopicRequest { name: "live".into() })
        .await
        .unwrap()
        .into_inner()
        .topic
        .unwrap();
    let config = described.config.unwrap();
    assert_eq!(config.fsync.unwrap().policy, Some(Policy::Always(Always {})));
    assert_eq!(config.segment_bytes, Some(65_536));
    assert_eq!(server.fetch_all("live", 0, 0).await.len(), 12);
    server.shutdown().await;
}

/// `GET /metrics` over a plain TCP connection; returns the body.
async fn scrape(address: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: spool\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the series `name{labels}` (labels in the exporter's order), if present.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_appear_and_move_when_traffic_flows() {
    spool_server::metrics::install_prometheus().unwrap();
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
