//! Every status code the protos document, against the server: each (rpc, code) pair that a
//! comment in `proto/spool/v1` names is provoked here, or names the test elsewhere that
//! provokes it (which must exist). A code documented but never answered, or a new one
//! documented without a check, fails this test.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{TestServer, always, record};
use spool_proto::v1::consume_service_client::ConsumeServiceClient;
use spool_proto::v1::fsync_policy::{Never, Policy};
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::start_position::Position;
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    Acks, AlterTopicRequest, CreateTopicRequest, DeleteGroupRequest, DeleteTopicRequest,
    DescribeGroupRequest, DescribeTopicRequest, ElectLeadersRequest, ElectLeadersTopic,
    FetchRequest, FsyncPolicy, JoinGroup, MemberRequest, ProduceRequest, RecordList,
    ResetGroupRequest, StartPosition, SubscribeRequest, TopicConfig, member_request,
};
use spool_server::ServeOptions;
use spool_server::auth::{Authenticator, token_digest_hex};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

/// Every gRPC status name.
const CODES: [&str; 16] = [
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Pairs another test provokes: (rpc, code, file, test function).
const ELSEWHERE: &[(&str, &str, &str, &str)] = &[
    (
        "AlterTopic",
        "RESOURCE_EXHAUSTED",
        "tests/production.rs",
        "a_topic_grows_live_up_to_the_partition_limit_and_never_shrinks",
    ),
    (
        "Produce",
        "RESOURCE_EXHAUSTED",
        "crates/cli/tests/faults.rs",
        "a_full_disk_refuses_writes_keeps_reads_and_recovers_once_space_is_freed",
    ),
    (
        "Produce",
        "DATA_LOSS",
        "crates/cli/tests/faults.rs",
        "a_failed_fdatasync_fences_one_partition_and_the_rest_serves",
    ),
    (
        "Fetch",
        "DATA_LOSS",
        "tests/damage.rs",
        "grpc_readers_get_every_record_before_a_damaged_batch_then_data_loss",
    ),
    (
        "Subscribe",
        "DATA_LOSS",
        "tests/damage.rs",
        "grpc_readers_get_every_record_before_a_damaged_batch_then_data_loss",
    ),
    (
        "Join",
        "DATA_LOSS",
        "tests/damage.rs",
        "grpc_readers_get_every_record_before_a_damaged_batch_then_data_loss",
    ),
    ("Join", "INVALID_ARGUMENT", "tests/groups.rs", "bad_joins_end_the_stream_with_their_status"),
    ("Join", "NOT_FOUND", "tests/groups.rs", "bad_joins_end_the_stream_with_their_status"),
    (
        "Join",
        "FAILED_PRECONDITION",
        "tests/groups.rs",
        "bad_joins_end_the_stream_with_their_status",
    ),
    (
        "Join",
        "RESOURCE_EXHAUSTED",
        "tests/groups.rs",
        "a_join_past_the_live_group_limit_is_resource_exhausted",
    ),
    ("Join", "ABORTED", "tests/groups.rs", "members_join_leave_are_cut_off_and_join_late"),
    (
        "Join",
        "UNAVAILABLE",
        "tests/groups.rs",
        "a_restart_resumes_the_group_from_its_committed_offsets",
    ),
    (
        "Join",
        "OUT_OF_RANGE",
        "tests/documented_codes.rs",
        "a_member_behind_retention_ends_with_out_of_range",
    ),
];

/// The (rpc, code) pairs the protos document: the codes named in the comment above each
/// `rpc`, and for `Join` those in its service's comment, which describes the member stream.
fn documented() -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/spool/v1");
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut comment = String::new();
        let mut service_comment = String::new();
        for line in text.lines().map(str::trim) {
            if let Some(words) = line.strip_prefix("//") {
                comment.push_str(words);
                comment.push(' ');
                continue;
            }
            if line.starts_with("service ") {
                service_comment = std::mem::take(&mut comment);
            } else if let Some(rest) = line.strip_prefix("rpc ") {
                let rpc = rest.split('(').next().unwrap().trim().to_owned();
                let mut text = std::mem::take(&mut comment);
                if rpc == "Join" {
                    text.push_str(&service_comment);
                }
                for code in CODES.iter().filter(|code| names(&text, code)) {
                    pairs.insert((rpc.clone(), (*code).to_owned()));
                }
            }
            comment.clear();
        }
    }
    pairs
}

/// Whether `text` names `code` as a word.
fn names(text: &str, code: &str) -> bool {
    text.match_indices(code).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + code.len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

fn code_name(code: Code) -> String {
    let name = format!("{code:?}");
    // `InvalidArgument` -> `INVALID_ARGUMENT`.
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The pairs checked so far, and what did not match.
#[derive(Default)]
struct Checks {
    checked: BTreeSet<(String, String)>,
    wrong: Vec<String>,
}

impl Checks {
    fn expect<T: std::fmt::Debug>(&mut self, rpc: &str, code: &str, answer: Result<T, Status>) {
        match answer {
            Err(status) if code_name(status.code()) == code => {}
            other => self.wrong.push(format!("{rpc}: expected {code}, got {other:?}")),
        }
        self.checked.insert((rpc.to_owned(), code.to_owned()));
    }
}

fn topic_request(name: &str) -> CreateTopicRequest {
    CreateTopicRequest { name: name.into(), config: None }
}

fn produce(topic: &str, partition: Option<u32>, acks: Acks, payload: Payload) -> ProduceRequest {
    ProduceRequest {
        correlation_id: 0,
        topic: topic.into(),
        partition,
        acks: acks as i32,
        payload: Some(payload),
        producer: None,
    }
}

fn records() -> Payload {
    Payload::Records(RecordList { records: vec![record("v")] })
}

fn offset(at: u64) -> Option<StartPosition> {
    Some(StartPosition { position: Some(Position::Offset(at)) })
}

/// Joins `group` on `topic` and keeps the member alive while the returned sender lives.
async fn member(
    server: &TestServer,
    group: &str,
    topic: &str,
) -> (mpsc::Sender<MemberRequest>, tonic::Streaming<spool_proto::v1::MemberEvent>) {
    let (requests, stream) = mpsc::channel(4);
    let join = JoinGroup {
        group: group.into(),
        topics: vec![topic.into()],
        session_timeout_ms: 30_000,
        reset: 0,
        encoding: 0,
        member_id: String::new(),
    };
    let join = MemberRequest { kind: Some(member_request::Kind::Join(join)) };
    requests.send(join).await.unwrap();
    let mut events = GroupServiceClient::new(server.channel().await)
        .join(ReceiverStream::new(stream))
        .await
        .unwrap()
        .into_inner();
    // Joined, then its assignment: the member is live.
    events.message().await.unwrap().unwrap();
    events.message().await.unwrap().unwrap();
    (requests, events)
}

#[tokio::test]
async fn every_documented_code_is_what_the_server_answers() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let mut checks = Checks::default();
    let mut topics = TopicServiceClient::new(server.channel().await);
    let mut producer = ProduceServiceClient::new(server.channel().await);
    let mut consumer = ConsumeServiceClient::new(server.channel().await);
    let mut groups = GroupServiceClient::new(server.channel().await);
    server.create_topic("t", 2, always()).await;
    let never = FsyncPolicy { policy: Some(Policy::Never(Never {})) };
    let config = TopicConfig { fsync: Some(never), ..Default::default() };
    topics
        .create_topic(CreateTopicRequest { name: "lazy".into(), config: Some(config) })
        .await
        .unwrap();

    // TopicService.
    checks.expect(
        "CreateTopic",
        "INVALID_ARGUMENT",
        topics.create_topic(topic_request("a/b")).await,
    );
    checks.expect("CreateTopic", "ALREADY_EXISTS", topics.create_topic(topic_request("t")).await);
    let gone = DeleteTopicRequest { name: "missing".into() };
    checks.expect("DeleteTopic", "NOT_FOUND", topics.delete_topic(gone).await);
    let described = DescribeTopicRequest { name: "missing".into() };
    checks.expect("DescribeTopic", "NOT_FOUND", topics.describe_topic(described).await);
    let alter = |name: &str, segment_bytes: Option<u64>| AlterTopicRequest {
        name: name.into(),
        fsync: None,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes,
        compression: None,
        partitions: None,
    };
    checks.expect("AlterTopic", "NOT_FOUND", topics.alter_topic(alter("missing", None)).await);
    let tiny = alter("t", Some(1));
    checks.expect("AlterTopic", "INVALID_ARGUMENT", topics.alter_topic(tiny).await);
    let elect = |topic: &str, partitions: Vec<u32>, timeout_ms| ElectLeadersRequest {
        topics: vec![ElectLeadersTopic { topic: topic.into(), partitions }],
        timeout_ms,
    };
    checks.expect("ElectLeaders", "NOT_FOUND", topics.elect_leaders(elect("t", vec![2], 0)).await);
    let slow = elect("t", vec![0], 60_001);
    checks.expect("ElectLeaders", "INVALID_ARGUMENT", topics.elect_leaders(slow).await);

    // ProduceService.
    let request = produce("missing", None, Acks::All, records());
    checks.expect("Produce", "NOT_FOUND", producer.produce(request).await);
    let request = produce("t", Some(7), Acks::All, records());
    checks.expect("Produce", "NOT_FOUND", producer.produce(request).await);
    let garbage = produce("t", Some(0), Acks::All, Payload::RawBatch(vec![0u8; 70].into()));
    checks.expect("Produce", "INVALID_ARGUMENT", producer.produce(garbage).await);
    let request = produce("lazy", None, Acks::All, records());
    checks.expect("Produce", "FAILED_PRECONDITION", producer.produce(request).await);

    // ConsumeService.
    let fetch = FetchRequest { topic: "t".into(), partition: 0, offset: 5, ..Default::default() };
    checks.expect("Fetch", "OUT_OF_RANGE", consumer.fetch(fetch).await);
    let subscribe = SubscribeRequest {
        topic: "t".into(),
        partition: 0,
        start: offset(5),
        ..Default::default()
    };
    let subscribed = match consumer.subscribe(subscribe).await {
        Ok(stream) => stream.into_inner().message().await,
        Err(status) => Err(status),
    };
    checks.expect("Subscribe", "OUT_OF_RANGE", subscribed);

    // GroupService.
    let described = DescribeGroupRequest { group: "nobody".into() };
    checks.expect("DescribeGroup", "NOT_FOUND", groups.describe_group(described).await);
    let reset = |group: &str, topic: &str, partition: Option<u32>, at: u64| ResetGroupRequest {
        group: group.into(),
        topic: topic.into(),
        to: offset(at),
        partition,
    };
    checks.expect(
        "ResetGroup",
        "INVALID_ARGUMENT",
        groups.reset_group(reset("a/b", "t", None, 0)).await,
    );
    checks.expect(
        "ResetGroup",
        "NOT_FOUND",
        groups.reset_group(reset("g", "missing", None, 0)).await,
    );
    checks.expect("ResetGroup", "NOT_FOUND", groups.reset_group(reset("g", "t", Some(9), 0)).await);
    checks.expect("ResetGroup", "OUT_OF_RANGE", groups.reset_group(reset("g", "t", None, 5)).await);
    let delete = |group: &str| DeleteGroupRequest { group: group.into(), ..Default::default() };
    checks.expect("DeleteGroup", "INVALID_ARGUMENT", groups.delete_group(delete("a/b")).await);
    checks.expect("DeleteGroup", "NOT_FOUND", groups.delete_group(delete("nobody")).await);
    let (live, _events) = member(&server, "live", "t").await;
    checks.expect(
        "ResetGroup",
        "FAILED_PRECONDITION",
        groups.reset_group(reset("live", "t", None, 0)).await,
    );
    checks.expect("DeleteGroup", "FAILED_PRECONDITION", groups.delete_group(delete("live")).await);
    drop(live);

    // With tokens: a token without the grant.
    let tokens_dir = tempfile::tempdir().unwrap();
    let token_path = tokens_dir.path().join("tokens.toml");
    let file = format!(
        "[[token]]\nname = \"reader\"\nsha256 = \"{}\"\ntopics = {{ \"t\" = [\"consume\"] }}\ngroups = {{ \"g\" = [\"consume\"] }}\n",
        token_digest_hex("reader-token"),
    );
    std::fs::write(&token_path, file).unwrap();
    let tokens = Arc::new(Authenticator::load(&token_path).unwrap());
    let secured_data = tempfile::tempdir().unwrap();
    let options = ServeOptions { tokens: Some(tokens), ..Default::default() };
    let secured = TestServer::start_with(secured_data.path(), options).await;
    let channel = secured.channel().await;
    let bearer = |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", "Bearer reader-token".parse().unwrap());
        Ok(request)
    };
    let mut groups = GroupServiceClient::with_interceptor(channel, bearer);
    checks.expect(
        "ResetGroup",
        "PERMISSION_DENIED",
        groups.reset_group(reset("g", "t", None, 0)).await,
    );
    checks.expect("DeleteGroup", "PERMISSION_DENIED", groups.delete_group(delete("g")).await);

    // While the data directory is being opened, every call is UNAVAILABLE.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opening = std::future::pending::<Result<spool_server::Server, spool_server::RunError>>();
    let starting =
        tokio::spawn(spool_server::serve(listener, ServeOptions::default(), opening, async {
            let _ = stopped.await;
        }));
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut groups = GroupServiceClient::new(channel);
    checks.expect("DeleteGroup", "UNAVAILABLE", groups.delete_group(delete("g")).await);
    let _ = stop.send(());
    starting.await.unwrap().unwrap();

    // Every documented pair was checked here or is checked by the test named for it.
    let mut missing = Vec::new();
    for (rpc, code) in documented() {
        let elsewhere = ELSEWHERE.iter().find(|(r, c, ..)| *r == rpc && *c == code);
        match elsewhere {
            Some((_, _, file, test)) => {
                let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
                let text = std::fs::read_to_string(&path).unwrap();
                if !text.contains(&format!("fn {test}(")) {
                    missing.push(format!("{rpc} {code}: {file} has no test {test}"));
                }
            }
            None if checks.checked.contains(&(rpc.clone(), code.clone())) => {}
            None => missing.push(format!("{rpc} {code}: documented, checked nowhere")),
        }
    }
    for (rpc, code) in &checks.checked {
        if !documented().contains(&(rpc.clone(), code.clone())) {
            missing.push(format!("{rpc} answers {code}, which its proto comment does not name"));
        }
    }
    assert!(
        checks.wrong.is_empty(),
        "answers that differ from the docs:\n{}",
        checks.wrong.join("\n")
    );
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    server.shutdown().await;
    secured.shutdown().await;
}

#[tokio::test]
async fn a_member_behind_retention_ends_with_out_of_range() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let config = TopicConfig { segment_bytes: Some(64 * 1024), ..Default::default() };
    let mut topics = TopicServiceClient::new(server.channel().await);
    let request = CreateTopicRequest { name: "t".into(), config: Some(config) };
    topics.create_topic(request).await.unwrap();
    // 12 MiB in 48 batches of 256 KiB, one segment each: more than a member's queue holds.
    let value = "x".repeat(256 * 1024);
    for _ in 0..48 {
        server.produce("t", Some(0), vec![record(&value)]).await.unwrap();
    }
    // The member takes its first records and then reads nothing: the server reads ahead only
    // as far as the member's queue.
    let (_member, mut events) = member(&server, "slow", "t").await;
    // Retention then deletes everything but the newest megabyte, under the member.
    let alter = AlterTopicRequest {
        name: "t".into(),
        fsync: None,
        retention_ms: None,
        retention_bytes: Some(1024 * 1024),
        segment_bytes: None,
        compression: None,
        partitions: None,
    };
    topics.alter_topic(alter).await.unwrap();
    let ended = loop {
        match events.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the member's stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::OutOfRange, "{ended:?}");
    server.shutdown().await;
}
