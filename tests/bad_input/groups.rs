//! The rows of GroupService: joins with bad names, topics or settings, commits of a future
//! generation or past the end, and descriptions and resets that do not hold.

use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::member_event::Kind as EventKind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::start_position::Position;
use spool_proto::v1::{
    CommitOffsets, DeleteGroupRequest, DescribeGroupRequest, JoinGroup, MemberRequest,
    PartitionOffset, ResetGroupRequest, StartPosition,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{Clients, Row, row};

/// Joins a group over a stream and sends `then` once the first assignment arrives; a
/// non-OK commit result is returned as the status it carries.
async fn join_then(
    mut groups: GroupServiceClient<Channel>,
    join: JoinGroup,
    then: impl FnOnce(u64) -> Option<RequestKind> + Send + 'static,
) -> Result<String, Status> {
    let (requests, requests_rx) = tokio::sync::mpsc::channel(4);
    let send = |kind| MemberRequest { kind: Some(kind) };
    requests.send(send(RequestKind::Join(join))).await.unwrap();
    let mut events =
        groups.join(tokio_stream::wrappers::ReceiverStream::new(requests_rx)).await?.into_inner();
    let mut then = Some(then);
    while let Some(event) = events.message().await? {
        match event.kind {
            Some(EventKind::Assignment(assignment)) => {
                if let Some(request) = then.take().and_then(|then| then(assignment.generation)) {
                    requests.send(send(request)).await.unwrap();
                }
            }
            Some(EventKind::CommitResult(result)) if result.code != 0 => {
                return Err(Status::new(Code::from_i32(result.code), result.message));
            }
            Some(EventKind::CommitResult(result)) => return Ok(format!("{result:?}")),
            _ => {}
        }
    }
    Ok("the stream ended".into())
}

fn join(group: &str, topics: &[&str]) -> JoinGroup {
    JoinGroup {
        group: group.into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

fn commit(generation: u64, topic: &str, offset: u64) -> Option<RequestKind> {
    Some(RequestKind::Commit(CommitOffsets {
        commit_id: 1,
        generation,
        offsets: vec![PartitionOffset { topic: topic.into(), partition: 0, offset }],
    }))
}

pub fn group_rows(c: &Clients) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add_join = |what: &str, code, message_has, join: JoinGroup| {
        let call = join_then(c.groups.clone(), join, |_| None);
        rows.push(row(format!("Join {what}"), code, message_has, call));
    };
    add_join("group \"\"", Code::InvalidArgument, "group name", join("", &["t"]));
    add_join("group ../g", Code::InvalidArgument, "group name", join("../g", &["t"]));
    add_join("with no topics", Code::InvalidArgument, "", join("g", &[]));
    add_join("an unknown topic", Code::NotFound, "nope", join("g", &["nope"]));
    add_join("topic ../t", Code::InvalidArgument, "topic name", join("g", &["../t"]));
    // What the request gets wrong comes before what does not exist, in any order.
    add_join(
        "an unknown topic, then topic a/b",
        Code::InvalidArgument,
        "topic name",
        join("g", &["nope", "a/b"]),
    );
    add_join(
        "an unknown topic with reset 99",
        Code::InvalidArgument,
        "reset",
        JoinGroup { reset: 99, ..join("g", &["nope"]) },
    );
    add_join(
        "with a session timeout of 1 ms",
        Code::InvalidArgument,
        "session",
        JoinGroup { session_timeout_ms: 1, ..join("g", &["t"]) },
    );
    add_join(
        "with reset 99",
        Code::InvalidArgument,
        "reset",
        JoinGroup { reset: 99, ..join("g", &["t"]) },
    );
    add_join(
        "with encoding 5",
        Code::InvalidArgument,
        "encoding",
        JoinGroup { encoding: 5, ..join("g", &["t"]) },
    );
    add_join(
        "resuming a member id of 65 bytes",
        Code::InvalidArgument,
        "member_id",
        JoinGroup { member_id: "m".repeat(65), ..join("g", &["t"]) },
    );
    // A stream whose first message is not a join.
    let mut groups = c.groups.clone();
    let call = async move {
        let first = MemberRequest { kind: Some(RequestKind::Heartbeat(Default::default())) };
        let mut events = groups.join(tokio_stream::iter([first])).await?.into_inner();
        events.message().await
    };
    rows.push(row(
        "Join stream opened by a heartbeat",
        Code::InvalidArgument,
        "group protocol",
        call,
    ));
    let stale = [
        ("a commit naming generation 0", 0, "t", 1, Code::FailedPrecondition, "generation"),
        (
            "a commit naming a future generation",
            u64::MAX,
            "t",
            1,
            Code::FailedPrecondition,
            "generation",
        ),
        (
            "a commit past the partition's end",
            1,
            "t",
            99,
            Code::InvalidArgument,
            "visible end is 3",
        ),
        ("a commit of a partition not owned", 1, "unsynced", 0, Code::FailedPrecondition, ""),
    ];
    for (i, (what, generation, topic, offset, code, message_has)) in stale.into_iter().enumerate() {
        // Each in its own group, so each member owns t's partition at generation 1.
        let call = join_then(c.groups.clone(), join(&format!("stale{i}"), &["t"]), move |g| {
            commit(if generation == 1 { g } else { generation }, topic, offset)
        });
        rows.push(row(format!("Join then {what}"), code, message_has, call));
    }
    let mut groups = c.groups.clone();
    let call =
        async move { groups.describe_group(DescribeGroupRequest { group: "../g".into() }).await };
    rows.push(row("DescribeGroup ../g", Code::InvalidArgument, "group name", call));
    let mut groups = c.groups.clone();
    let call = async move {
        groups.describe_group(DescribeGroupRequest { group: "unheard".into() }).await
    };
    rows.push(row("DescribeGroup of an unknown group", Code::NotFound, "unheard", call));
    let reset = |group: &str, topic: &str, to: Option<Position>| ResetGroupRequest {
        group: group.into(),
        topic: topic.into(),
        to: to.map(|position| StartPosition { position: Some(position) }),
        partition: None,
    };
    for (what, code, message_has, request) in [
        (
            "to an offset past the end",
            Code::OutOfRange,
            "",
            reset("idle", "t", Some(Position::Offset(99))),
        ),
        ("of an unknown topic", Code::NotFound, "nope", reset("idle", "nope", None)),
        ("of topic ../t", Code::InvalidArgument, "topic name", reset("idle", "../t", None)),
        ("of group \"\"", Code::InvalidArgument, "group name", reset("", "t", None)),
        (
            "of partition 7 of a one-partition topic",
            Code::NotFound,
            "partition 7",
            ResetGroupRequest { partition: Some(7), ..reset("idle", "t", None) },
        ),
    ] {
        let mut groups = c.groups.clone();
        let call = async move { groups.reset_group(request).await };
        rows.push(row(format!("ResetGroup {what}"), code, message_has, call));
    }
    for (what, code, message_has, group) in [
        ("of group ../g", Code::InvalidArgument, "group name", "../g"),
        ("of an unknown group", Code::NotFound, "unheard", "unheard"),
    ] {
        let mut groups = c.groups.clone();
        let call = async move {
            groups
                .delete_group(DeleteGroupRequest { group: group.into(), ..Default::default() })
                .await
        };
        rows.push(row(format!("DeleteGroup {what}"), code, message_has, call));
    }
    rows
}
