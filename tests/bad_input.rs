//! Every malformed request we could think of, through the gRPC API, as one table: each row
//! names the request, the status code the API documents for it and a fragment of the message
//! a person would act on. After the table the server still serves, and nothing was created
//! outside its data directory.
//!
//! The rows are grouped by service: `bad_input/topics.rs`, `produce.rs`, `consume.rs` and
//! `groups.rs`; this file holds what they share and the test that runs them. The Kafka
//! listener's rows (`bad_input/kafka.rs`) get a Kafka error code or a closed connection
//! instead, and run in a test of their own.

mod common;
#[path = "bad_input/consume.rs"]
mod consume;
#[path = "bad_input/groups.rs"]
mod groups;
#[path = "bad_input/kafka.rs"]
mod kafka;
#[path = "bad_input/produce.rs"]
mod produce;
#[path = "bad_input/topics.rs"]
mod topics;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use common::{LoneDataDir, TestServer, record};
use spool_proto::limits::TIMESTAMP_MS_MAX;
use spool_proto::v1::consume_service_client::ConsumeServiceClient;
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::start_position::Position;
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    AlterTopicRequest, CreateTopicRequest, DeleteTopicRequest, Record, ResetGroupRequest,
    TopicCompression, TopicConfig,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Only a guard against a hang; every call answers long before.
const GUARD: Duration = Duration::from_secs(60);

type Call = Pin<Box<dyn Future<Output = Result<String, Status>> + Send>>;

/// One row: a request, the code it must get, and a fragment of the message.
struct Row {
    request: String,
    code: Code,
    message_has: &'static str,
    call: Call,
}

fn row<T: Debug>(
    request: impl Into<String>,
    code: Code,
    message_has: &'static str,
    call: impl Future<Output = Result<T, Status>> + Send + 'static,
) -> Row {
    let call = async move { call.await.map(|answer| format!("{answer:?}")) };
    Row { request: request.into(), code, message_has, call: Box::pin(call) }
}

/// Runs every row; returns one line per row that did not get its code and message.
async fn run(rows: Vec<Row>) -> Vec<String> {
    let mut failures = Vec::new();
    for Row { request, code, message_has, call } in rows {
        let outcome = tokio::time::timeout(GUARD, call).await.expect("the server answers");
        match outcome {
            Ok(answer) => failures.push(format!("{request}: accepted, answered {answer:.200}")),
            Err(status) if status.code() != code || !status.message().contains(message_has) => {
                failures.push(format!(
                    "{request}: expected {code:?} with {message_has:?}, got {:?} {:?}",
                    status.code(),
                    status.message()
                ));
            }
            Err(_) => {}
        }
    }
    failures
}

struct Clients {
    topics: TopicServiceClient<Channel>,
    produce: ProduceServiceClient<Channel>,
    consume: ConsumeServiceClient<Channel>,
    groups: GroupServiceClient<Channel>,
}

fn create(name: &str, config: TopicConfig) -> CreateTopicRequest {
    CreateTopicRequest { name: name.into(), config: Some(config) }
}

fn partitions(partitions: u32) -> TopicConfig {
    TopicConfig { partitions, ..Default::default() }
}

fn stamped(timestamp_ms: i64) -> Record {
    Record { timestamp_ms: Some(timestamp_ms), ..record("x") }
}

/// Every entry under `dir`, recursively, relative to it.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_request_gets_its_status_and_the_server_stays_up() {
    let dir = LoneDataDir::new();
    let data = dir.data.clone();
    let server = TestServer::start(&data).await;
    server.create_topic("t", 1, Policy::Always(Always {})).await;
    server.create_topic("unsynced", 1, Policy::Never(Never {})).await;
    server.create_topic("gone", 1, Policy::Always(Always {})).await;
    server.produce("t", Some(0), vec![record("a"), record("b"), record("c")]).await.unwrap();
    server.create_topic("deleting", 1, Policy::Always(Always {})).await;
    server.produce("deleting", Some(0), vec![record("last words")]).await.unwrap();
    let mut topics = server.topics().await;
    topics.delete_topic(DeleteTopicRequest { name: "gone".into() }).await.unwrap();
    // "t" requires uncompressed batches, for the produce row that is too large re-encoded.
    let uncompressed = TopicCompression::None as i32;
    let alter = AlterTopicRequest {
        name: "t".into(),
        compression: Some(uncompressed),
        ..Default::default()
    };
    topics.alter_topic(alter).await.unwrap();
    // A group with committed offsets and no members, for ResetGroup.
    let channel = server.channel().await;
    let mut groups = GroupServiceClient::new(channel.clone());
    groups
        .reset_group(ResetGroupRequest {
            group: "idle".into(),
            topic: "t".into(),
            to: None,
            partition: None,
        })
        .await
        .unwrap();

    let clients = Clients {
        topics,
        produce: server.producer().await,
        consume: server.consumer().await,
        groups,
    };
    let mut rows = topics::topic_rows(&clients, &channel);
    let producer_id = clients
        .produce
        .clone()
        .init_producer(spool_proto::v1::InitProducerRequest {})
        .await
        .unwrap()
        .into_inner()
        .producer_id;
    rows.extend(produce::produce_rows(&clients, producer_id));
    rows.extend(consume::consume_rows(&clients));
    rows.extend(groups::group_rows(&clients));
    let count = rows.len();
    let failures = run(rows).await;
    eprintln!("bad input: {count} malformed requests, {} answered otherwise", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The edges of what is valid are accepted, as the API documents them: timestamps from 0
    // to the end of year 9999, a tombstone, partitions not set (one), a start time before
    // every record (the earliest) or after every record (the visible end).
    let edges = vec![stamped(0), stamped(TIMESTAMP_MS_MAX), Record { value: None, ..record("") }];
    server.produce("t", Some(0), edges).await.unwrap();
    let mut topics = server.topics().await;
    let created = topics.create_topic(create("defaulted", partitions(0))).await.unwrap();
    assert_eq!(created.into_inner().topic.unwrap().partitions.len(), 1);
    topics.delete_topic(DeleteTopicRequest { name: "defaulted".into() }).await.unwrap();
    for (timestamp_ms, records) in [(-1, 6), (i64::MIN, 6), (i64::MAX, 0)] {
        let replayed = server.replay("t", 0, Position::TimestampMs(timestamp_ms)).await.unwrap();
        assert_eq!(replayed.len(), records, "replay from timestamp {timestamp_ms}");
    }
    // Still serving, with nothing stored by any refused request.
    server.produce("t", Some(0), vec![record("d")]).await.unwrap();
    let stored = server.fetch_all("t", 0, 0).await;
    assert_eq!(stored.len(), 7, "only the accepted produces stored records");
    server.shutdown().await;

    let outside: Vec<_> =
        tree(dir.parent()).into_iter().filter(|p| !p.starts_with("data")).collect();
    assert!(outside.is_empty(), "files outside the data directory: {outside:?}");
    let topics: Vec<_> = std::fs::read_dir(data.join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut topics = topics;
    topics.sort();
    assert_eq!(topics, ["t", "unsynced"], "no topic directory but the created ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_kafka_request_gets_its_code_or_a_closed_connection() {
    let dir = LoneDataDir::new();
    let server = TestServer::start(&dir.data).await;
    server.create_topic("t", 1, Policy::Always(Always {})).await;
    server.create_topic("unsynced", 1, Policy::Never(Never {})).await;
    server.produce("t", Some(0), vec![record("a"), record("b"), record("c")]).await.unwrap();
    server.shutdown().await;
    let kafka = common::kafka::start_at(&dir.data, spool_server::ServeOptions::default()).await;
    let rows = kafka::kafka_rows();
    let count = rows.len();
    let failures = tokio::time::timeout(GUARD, kafka::run_kafka(&kafka, rows)).await.unwrap();
    eprintln!("bad Kafka input: {count} malformed requests, {} answered otherwise", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Still serving, with nothing stored by any refused request, and no topic made.
    let stored = kafka.server.fetch_all("t", 0, 0).await;
    assert_eq!(stored.len(), 3, "no refused produce stored records");
    let topics =
        kafka.server.topics().await.list_topics(spool_proto::v1::ListTopicsRequest {}).await;
    let names: Vec<String> =
        topics.unwrap().into_inner().topics.into_iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    kafka.server.shutdown().await;
    let outside: Vec<_> =
        tree(dir.parent()).into_iter().filter(|p| !p.starts_with("data")).collect();
    assert!(outside.is_empty(), "files outside the data directory: {outside:?}");
}
