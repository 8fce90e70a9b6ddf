//! Consumer groups end to end, against an in-process server on 127.0.0.1:0.
//!
//! Each member is a task that behaves as a well-written member should (see the proto):
//! it commits after every records message, commits revoked partitions before acknowledging
//! them, and heartbeats. Every delivery, commit and assignment is recorded in [`Observed`],
//! and the invariants are checked on every delivery:
//! - within one generation no record is delivered to two members;
//! - a member never gets a record below the group's committed offset at the time it was
//!   given the partition (nothing committed before a change is delivered again).
//!
//! A member "cut off" goes through [`Proxy`], which can freeze a TCP connection without
//! closing it: the server hears nothing and must notice by the session timeout.
//! No test sleeps waiting for something: each waits on a condition, with a bounded timeout
//! only as a failure guard.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, always, record};
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::start_position::{Earliest, Position};
use spool_proto::v1::{
    AlterTopicRequest, Assignment, CommitOffsets, DeleteGroupRequest, DescribeGroupRequest,
    GroupDescription, GroupState, Heartbeat, JoinGroup, Leave, ListGroupsRequest, MemberEvent,
    MemberRequest, PartitionOffset, ResetGroupRequest, RevocationDone, StartPosition,
    TopicPartition,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const GUARD: Duration = Duration::from_secs(30);

type Partition = (String, u32);

fn key(p: &TopicPartition) -> Partition {
    (p.topic.clone(), p.partition)
}

/// What one member saw.
#[derive(Debug, Default, Clone)]
struct MemberSeen {
    id: String,
    generation: u64,
    owned: BTreeSet<Partition>,
    /// Per partition, the next offset this member will commit (one past the last delivered).
    position: BTreeMap<Partition, u64>,
    /// Per partition, the group's committed offset when this member was given it.
    floor: BTreeMap<Partition, u64>,
    delivered: usize,
    commit_results: Vec<(i32, String)>,
    ended: Option<(Code, String)>,
}

#[derive(Debug, Default)]
struct Observed {
    members: BTreeMap<String, MemberSeen>,
    /// Committed offsets, as acknowledged to members.
    committed: BTreeMap<Partition, u64>,
    /// (generation, partition) → the member that got records of it at that generation.
    deliverers: BTreeMap<(u64, Partition), String>,
    /// Every value delivered, with the member that got it.
    values: Vec<(String, String)>,
}

#[derive(Default)]
struct Shared {
    observed: Mutex<Observed>,
    changed: Notify,
}

impl Shared {
    fn update<T>(&self, f: impl FnOnce(&mut Observed) -> T) -> T {
        let result = f(&mut self.observed.lock().unwrap());
        self.changed.notify_waiters();
        result
    }

    fn read<T>(&self, f: impl FnOnce(&Observed) -> T) -> T {
        f(&self.observed.lock().unwrap())
    }

    async fn wait_for(&self, what: &str, condition: impl Fn(&Observed) -> bool) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                if self.read(&condition) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(GUARD, waiting).await.is_err() {
            panic!("timed out waiting for {what}: {:#?}", self.observed.lock().unwrap());
        }
    }
}

enum Command {
    Leave,
    /// Commit every owned partition, naming `generation`, at `offset` (none: the member's
    /// position).
    Commit {
        generation: u64,
        offset: Option<u64>,
    },
}

/// A member task's handle.
struct TestMember {
    commands: mpsc::Sender<Command>,
}

impl TestMember {
    async fn join(
        shared: &Arc<Shared>,
        channel: Channel,
        name: &str,
        group: &str,
        session_timeout_ms: u32,
    ) -> TestMember {
        let (requests, request_stream) = mpsc::channel(64);
        requests
            .send(MemberRequest {
                kind: Some(RequestKind::Join(JoinGroup {
                    group: group.into(),
                    topics: vec!["t".into()],
                    session_timeout_ms,
                    reset: 0,
                    encoding: 0,
                    member_id: String::new(),
                })),
            })
            .await
            .unwrap();
        let events = GroupServiceClient::new(channel)
            .join(ReceiverStream::new(request_stream))
            .await
            .unwrap()
            .into_inner();
        let (commands, command_stream) = mpsc::channel(8);
        shared.update(|o| o.members.insert(name.to_owned(), MemberSeen::default()));
        tokio::spawn(run_member(shared.clone(), name.to_owned(), requests, events, command_stream));
        TestMember { commands }
    }
}

async fn run_member(
    shared: Arc<Shared>,
    name: String,
    requests: mpsc::Sender<MemberRequest>,
    mut events: tonic::Streaming<spool_proto::v1::MemberEvent>,
    mut commands: mpsc::Receiver<Command>,
) {
    let send = |kind| {
        let requests = requests.clone();
        async move {
            let _ = requests.send(MemberRequest { kind: Some(kind) }).await;
        }
    };
    let mut commit_id = 0u64;
    // Commits in flight: id → (offsets, partitions to acknowledge as revoked afterwards).
    let mut in_flight: BTreeMap<u64, (Vec<PartitionOffset>, Vec<TopicPartition>)> = BTreeMap::new();
    let mut heartbeat = tokio::time::interval(Duration::from_millis(50));
    loop {
        let event = tokio::select! {
            event = events.message() => event,
            command = commands.recv() => {
                match command {
                    Some(Command::Leave) | None => send(RequestKind::Leave(Leave {})).await,
                    Some(Command::Commit { generation, offset }) => {
                        let seen = shared.read(|o| o.members[&name].clone());
                        let offsets = seen
                            .owned
                            .iter()
                            .map(|p| PartitionOffset {
                                topic: p.0.clone(),
                                partition: p.1,
                                offset: offset.unwrap_or_else(|| seen.position.get(p).copied().unwrap_or(0)),
                            })
                            .collect();
                        commit_id += 1;
                        send(RequestKind::Commit(CommitOffsets { commit_id, generation, offsets })).await;
                    }
                }
                continue;
            }
            _ = heartbeat.tick() => {
                send(RequestKind::Heartbeat(Heartbeat {})).await;
                continue;
            }
        };
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => {
                shared.update(|o| {
                    o.members.get_mut(&name).unwrap().ended = Some((Code::Ok, String::new()))
                });
                return;
            }
            Err(status) => {
                shared.update(|o| {
                    o.members.get_mut(&name).unwrap().ended =
                        Some((status.code(), status.message().to_owned()))
                });
                return;
            }
        };
        match event.kind.unwrap() {
            Kind::Joined(joined) => {
                shared.update(|o| o.members.get_mut(&name).unwrap().id = joined.member_id)
            }
            Kind::Assignment(assignment) => {
                let revoked = assignment.revoked.clone();
                let (generation, offsets) = shared.update(|o| {
                    let committed = o.committed.clone();
                    let seen = o.members.get_mut(&name).unwrap();
                    seen.generation = assignment.generation;
                    seen.owned = assignment.owned.iter().map(key).collect();
                    for added in &assignment.added {
                        let p = key(added);
                        seen.floor.insert(p.clone(), committed.get(&p).copied().unwrap_or(0));
                    }
                    let offsets: Vec<PartitionOffset> = revoked
                        .iter()
                        .filter_map(|p| {
                            seen.position.get(&key(p)).map(|offset| PartitionOffset {
                                topic: p.topic.clone(),
                                partition: p.partition,
                                offset: *offset,
                            })
                        })
                        .collect();
                    (seen.generation, offsets)
                });
                if !revoked.is_empty() {
                    // Commit what was processed of the revoked partitions, then let them go.
                    commit_id += 1;
                    in_flight.insert(commit_id, (offsets.clone(), revoked));
                    send(RequestKind::Commit(CommitOffsets { commit_id, generation, offsets }))
                        .await;
                }
            }
            Kind::Records(records) => {
                let p = (records.topic.clone(), records.partition);
                let generation = shared.update(|o| {
                    let previous =
                        o.deliverers.insert((records.generation, p.clone()), name.clone());
                    if let Some(other) = previous {
                        assert_eq!(
                            other, name,
                            "{p:?} was delivered to two members at generation {}",
                            records.generation
                        );
                    }
                    let seen = o.members.get_mut(&name).unwrap();
                    for record in &records.records {
                        let floor = seen.floor.get(&p).copied().unwrap_or(0);
                        assert!(
                            record.offset >= floor,
                            "{name} got {p:?} offset {} below the committed {floor} it was given",
                            record.offset
                        );
                        let value =
                            String::from_utf8(record.value.clone().unwrap().to_vec()).unwrap();
                        o.values.push((name.clone(), value));
                    }
                    let seen = o.members.get_mut(&name).unwrap();
                    seen.delivered += records.records.len();
                    seen.position.insert(p.clone(), records.next_offset);
                    seen.generation
                });
                if !records.records.is_empty() {
                    commit_id += 1;
                    let offsets = vec![PartitionOffset {
                        topic: p.0,
                        partition: p.1,
                        offset: records.next_offset,
                    }];
                    in_flight.insert(commit_id, (offsets.clone(), Vec::new()));
                    send(RequestKind::Commit(CommitOffsets { commit_id, generation, offsets }))
                        .await;
                }
            }
            Kind::CommitResult(result) => {
                let (offsets, revoked) = in_flight.remove(&result.commit_id).unwrap_or_default();
                shared.update(|o| {
                    if result.code == 0 {
                        for offset in &offsets {
                            let p = (offset.topic.clone(), offset.partition);
                            let committed = o.committed.entry(p).or_insert(0);
                            *committed = (*committed).max(offset.offset);
                        }
                    }
                    o.members
                        .get_mut(&name)
                        .unwrap()
                        .commit_results
                        .push((result.code, result.message.clone()));
                });
                if !revoked.is_empty() {
                    send(RequestKind::RevocationDone(RevocationDone { partitions: revoked })).await;
                }
            }
        }
    }
}

/// A TCP proxy whose connections can be frozen: bytes stop flowing both ways, but nothing
/// is closed, as when a network silently drops a peer.
struct Proxy {
    address: String,
    frozen: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let (frozen, _) = watch::channel(false);
        let frozen_rx = frozen.subscribe();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, frozen_rx.clone()));
                tokio::spawn(pipe(server_read, client_write, frozen_rx.clone()));
            }
        });
        Proxy { address, frozen }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.address.clone()).unwrap().connect().await.unwrap()
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let Ok(n) = from.read(&mut buffer).await else { return };
        if n == 0 {
            return;
        }
        // Hold what was read while frozen.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

fn key_of(p: &spool_proto::v1::GroupPartition) -> Partition {
    (p.topic.clone(), p.partition)
}

async fn describe(server: &TestServer, group: &str) -> GroupDescription {
    GroupServiceClient::new(server.channel().await)
        .describe_group(DescribeGroupRequest { group: group.into() })
        .await
        .unwrap()
        .into_inner()
        .group
        .unwrap()
}

/// Waits until the group is stable with exactly `members` (by name), each owning what the
/// server says it owns, every partition owned exactly once, shares differing by at most
/// one, and every member caught up with the end of all it owns.
async fn wait_stable(
    server: &TestServer,
    shared: &Shared,
    group: &str,
    members: &[&str],
    partitions: u32,
) {
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let described = describe(server, group).await;
        let ok = shared.read(|o| {
            let ids: BTreeMap<String, &str> =
                members.iter().map(|m| (o.members[*m].id.clone(), *m)).collect();
            let stable = described.state == GroupState::Stable as i32
                && described.members.len() == members.len()
                && described.members.iter().all(|m| ids.contains_key(&m.member_id));
            let mut owners = BTreeMap::new();
            for member in &described.members {
                let Some(name) = ids.get(&member.member_id) else { return false };
                let owned: BTreeSet<Partition> = member.owned.iter().map(key).collect();
                let seen = &o.members[*name];
                if seen.owned != owned || seen.generation != described.generation {
                    return false;
                }
                // Caught up with everything produced so far.
                let caught_up = described
                    .partitions
                    .iter()
                    .filter(|p| owned.contains(&key_of(p)))
                    .all(|p| seen.position.get(&key_of(p)) == p.log_end_offset.as_ref());
                if !caught_up {
                    return false;
                }
                for p in owned {
                    assert!(owners.insert(p.clone(), name).is_none(), "{p:?} has two owners");
                }
            }
            let shares: Vec<usize> = described.members.iter().map(|m| m.owned.len()).collect();
            stable
                && owners.len() == partitions as usize
                && shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1
        });
        if ok {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the group did not settle: {described:#?}");
        // Wait for members to see more, or poll the server's view again shortly.
        let _ = tokio::time::timeout(Duration::from_millis(20), shared.changed.notified()).await;
    }
}

async fn produce_round(server: &TestServer, partitions: u32, round: u32, per_partition: u32) {
    for p in 0..partitions {
        let records = (0..per_partition).map(|i| record(&format!("p{p}-r{round}-{i}"))).collect();
        server.produce("t", Some(p), records).await.unwrap();
    }
}

/// Every produced value was delivered at least once, and each delivered value was produced.
fn assert_all_delivered(shared: &Shared, produced: &BTreeSet<String>) {
    let delivered: BTreeSet<String> =
        shared.read(|o| o.values.iter().map(|(_, v)| v.clone()).collect());
    assert_eq!(&delivered, produced);
}

fn produced(partitions: u32, rounds: u32, per_partition: u32) -> BTreeSet<String> {
    (0..partitions)
        .flat_map(|p| {
            (0..rounds).flat_map(move |r| (0..per_partition).map(move |i| format!("p{p}-r{r}-{i}")))
        })
        .collect()
}

/// Three members share six partitions; one leaves, one is cut off without closing its
/// stream, one joins late. After each change every partition has exactly one owner, shares
/// are fair, nothing committed before the change is delivered again (checked on every
/// delivery), a stale generation's commit is refused, and the cut-off member's late commit
/// changes nothing.
#[tokio::test]
async fn members_join_leave_are_cut_off_and_join_late() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let partitions = 6;
    server.create_topic("t", partitions, always()).await;
    produce_round(&server, partitions, 0, 5).await;
    let shared = Arc::new(Shared::default());
    let proxy = Proxy::start(server.url()).await;
    let a = TestMember::join(&shared, server.channel().await, "a", "g", 10_000).await;
    let b = TestMember::join(&shared, server.channel().await, "b", "g", 10_000).await;
    // c's traffic goes through the proxy; its session timeout is short.
    let c = TestMember::join(&shared, proxy.channel().await, "c", "g", 400).await;
    wait_stable(&server, &shared, "g", &["a", "b", "c"], partitions).await;
    let shares: Vec<usize> = shared.read(|o| o.members.values().map(|m| m.owned.len()).collect());
    assert_eq!(shares, [2, 2, 2], "a fair share each");

    // a leaves: its partitions go to b and c, which resume at a's committed offsets.
    produce_round(&server, partitions, 1, 5).await;
    wait_stable(&server, &shared, "g", &["a", "b", "c"], partitions).await;
    let before_leave = shared.read(|o| o.members["b"].generation);
    a.commands.send(Command::Leave).await.unwrap();
    shared.wait_for("a's stream to end", |o| o.members["a"].ended.is_some()).await;
    assert_eq!(shared.read(|o| o.members["a"].ended.clone()).unwrap().0, Code::Ok);
    wait_stable(&server, &shared, "g", &["b", "c"], partitions).await;

    // b commits what it owns naming the generation before a left, when it did not own a's
    // partitions yet: refused as a whole.
    b.commands.send(Command::Commit { generation: before_leave, offset: None }).await.unwrap();
    shared
        .wait_for("b's stale commit to be refused", |o| {
            o.members["b"].commit_results.iter().any(|(code, message)| {
                *code == Code::FailedPrecondition as i32
                    && message.contains("only since generation")
            })
        })
        .await;

    // c is cut off: the proxy stops forwarding without closing anything.
    let c_owned = shared.read(|o| o.members["c"].owned.clone());
    let c_generation = shared.read(|o| o.members["c"].generation);
    proxy.frozen.send_replace(true);
    // While cut off, c commits offset 0 everywhere: a late, stale commit.
    c.commands.send(Command::Commit { generation: c_generation, offset: Some(0) }).await.unwrap();
    produce_round(&server, partitions, 2, 5).await;
    wait_stable(&server, &shared, "g", &["b"], partitions).await;
    shared
        .wait_for("b to commit everything", |o| {
            c_owned.iter().all(|p| o.committed.get(p) == Some(&15))
        })
        .await;
    proxy.frozen.send_replace(false);
    shared.wait_for("c's stream to end", |o| o.members["c"].ended.is_some()).await;
    let (code, message) = shared.read(|o| o.members["c"].ended.clone()).unwrap();
    assert_eq!(code, Code::Aborted, "{message}");
    assert!(message.contains("session timeout of 400 ms"), "{message}");
    let described = describe(&server, "g").await;
    for p in
        described.partitions.iter().filter(|p| c_owned.contains(&(p.topic.clone(), p.partition)))
    {
        assert_eq!(p.committed_offset, Some(15), "c's late commit of offset 0 changed nothing");
    }

    // d joins late: cooperative, b keeps half and gives half.
    let b_before = shared.read(|o| o.members["b"].owned.clone());
    let _d = TestMember::join(&shared, server.channel().await, "d", "g", 10_000).await;
    produce_round(&server, partitions, 3, 5).await;
    wait_stable(&server, &shared, "g", &["b", "d"], partitions).await;
    let (b_after, d_after) =
        shared.read(|o| (o.members["b"].owned.clone(), o.members["d"].owned.clone()));
    assert!(b_after.is_subset(&b_before), "b only gave partitions away");
    assert_eq!((b_after.len(), d_after.len()), (3, 3));
    assert_all_delivered(&shared, &produced(partitions, 4, 5));
    server.shutdown().await;
}

/// A group commits, the server restarts in the middle, and the group resumes from its
/// committed offsets: nothing committed is delivered again, nothing is skipped. The members
/// from before the restart are stored: they keep their partitions until their session
/// timeout passes without them joining again, and a new member gets them after that.
#[tokio::test]
async fn a_restart_resumes_the_group_from_its_committed_offsets() {
    let data = tempfile::tempdir().unwrap();
    let partitions = 4;
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", partitions, always()).await;
    produce_round(&server, partitions, 0, 10).await;
    let shared = Arc::new(Shared::default());
    let _a = TestMember::join(&shared, server.channel().await, "a", "g", 2_000).await;
    let _b = TestMember::join(&shared, server.channel().await, "b", "g", 2_000).await;
    wait_stable(&server, &shared, "g", &["a", "b"], partitions).await;
    let before = describe(&server, "g").await;
    shared
        .wait_for("every record to be committed", |o| {
            o.committed.len() == partitions as usize && o.committed.values().all(|c| *c == 10)
        })
        .await;
    server.shutdown().await;
    shared.wait_for("both streams to end", |o| o.members.values().all(|m| m.ended.is_some())).await;
    assert!(
        shared
            .read(|o| o.members.values().all(|m| m.ended.as_ref().unwrap().0 == Code::Unavailable))
    );

    let server = TestServer::start(data.path()).await;
    let described = describe(&server, "g").await;
    assert_eq!(described.state, GroupState::Stable as i32);
    let owners = |group: &GroupDescription| {
        let members = group.members.iter();
        members.map(|m| (m.member_id.clone(), m.owned.clone())).collect::<BTreeMap<_, _>>()
    };
    assert_eq!(owners(&described), owners(&before), "the stored members keep their partitions");
    assert!(
        described.partitions.iter().all(|p| p.committed_offset == Some(10) && p.lag == Some(0))
    );
    produce_round(&server, partitions, 1, 10).await;
    let resumed = Arc::new(Shared::default());
    resumed.update(|o| o.committed = shared.read(|before| before.committed.clone()));
    let _c = TestMember::join(&resumed, server.channel().await, "c", "g", 10_000).await;
    wait_stable(&server, &resumed, "g", &["c"], partitions).await;
    // Only the records produced after the restart: the floors are the committed offsets.
    let values: BTreeSet<String> =
        resumed.read(|o| o.values.iter().map(|(_, v)| v.clone()).collect());
    assert_eq!(
        values,
        produced(partitions, 2, 10).difference(&produced(partitions, 1, 10)).cloned().collect()
    );
    server.shutdown().await;
}

/// Opens a member stream that joins `group` (consuming `t`), naming `member_id` to resume;
/// returns the id it was given, its first assignment and the stream.
async fn join_naming(
    server: &TestServer,
    group: &str,
    member_id: &str,
) -> (String, Assignment, mpsc::Sender<MemberRequest>, tonic::Streaming<MemberEvent>) {
    let (requests, request_stream) = mpsc::channel(8);
    let join = JoinGroup {
        group: group.into(),
        topics: vec!["t".into()],
        session_timeout_ms: 10_000,
        member_id: member_id.into(),
        ..Default::default()
    };
    requests.send(MemberRequest { kind: Some(RequestKind::Join(join)) }).await.unwrap();
    let mut events = GroupServiceClient::new(server.channel().await)
        .join(ReceiverStream::new(request_stream))
        .await
        .unwrap()
        .into_inner();
    let Some(Kind::Joined(joined)) = events.message().await.unwrap().unwrap().kind else {
        panic!("the first message is not `joined`");
    };
    let Some(Kind::Assignment(assignment)) = events.message().await.unwrap().unwrap().kind else {
        panic!("the second message is not an assignment");
    };
    (joined.member_id, assignment, requests, events)
}

/// A member that joins again naming its id takes its own place back: across a restart it
/// keeps its partitions and the group does not rebalance, and a second stream naming it
/// ends the first.
#[tokio::test]
async fn a_member_resumes_by_its_id_across_a_restart_and_keeps_its_partitions() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 4, always()).await;
    let (a, first, a_requests, _a_events) = join_naming(&server, "g", "").await;
    let (b, _, _b_requests, _b_events) = join_naming(&server, "g", "").await;
    // `a` gives two partitions to `b`; the group is stable once it acknowledges.
    let revoking = describe(&server, "g").await;
    let revoked = revoking.members.iter().find(|m| m.member_id == a).unwrap().revoking.clone();
    assert_eq!(revoked.len(), 2, "{revoking:?}");
    let done = RevocationDone { partitions: revoked };
    a_requests.send(MemberRequest { kind: Some(RequestKind::RevocationDone(done)) }).await.unwrap();
    let deadline = tokio::time::Instant::now() + GUARD;
    let stable = loop {
        let described = describe(&server, "g").await;
        if described.state == GroupState::Stable as i32 {
            break described;
        }
        assert!(tokio::time::Instant::now() < deadline, "never stable: {described:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(first.owned.len(), 4);
    server.shutdown().await;

    let server = TestServer::start(data.path()).await;
    let restored = describe(&server, "g").await;
    let awaiting = |group: &GroupDescription| {
        group.members.iter().map(|m| (m.member_id.clone(), m.awaiting_rejoin)).collect::<Vec<_>>()
    };
    assert!(stable.members.iter().all(|m| !m.awaiting_rejoin), "{stable:?}");
    assert!(restored.members.iter().all(|m| m.awaiting_rejoin), "{restored:?}");
    let rejoined = |mut group: GroupDescription| {
        group.members.iter_mut().for_each(|m| m.awaiting_rejoin = false);
        group.members
    };
    assert_eq!(rejoined(restored.clone()), stable.members, "the stored members, as they were");
    let (id, assignment, _requests, mut events) = join_naming(&server, "g", &a).await;
    assert_eq!(id, a, "resumed");
    let a_before = stable.members.iter().find(|m| m.member_id == a).unwrap();
    assert_eq!(assignment.owned, a_before.owned, "its partitions, without a rebalance");
    assert_eq!(assignment.generation, restored.generation);
    let after = describe(&server, "g").await;
    assert_eq!(after.generation, restored.generation);
    let mut expected = vec![(a.clone(), false), (b.clone(), true)];
    expected.sort();
    assert_eq!(awaiting(&after), expected, "members are sorted by id");
    assert_eq!(rejoined(after), stable.members);

    // A second stream naming `a` takes its place; the first ends ABORTED, saying why.
    let (again, _, _again_requests, _again_events) = join_naming(&server, "g", &a).await;
    assert_eq!(again, a);
    let ended = loop {
        match events.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the replaced stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert!(ended.message().contains("a new stream resumed member"), "{ended:?}");
    assert_eq!(describe(&server, "g").await.members.len(), 2, "{b} is still stored too");
    // An id the group does not count makes a new member.
    let (new, _, _new_requests, _new_events) = join_naming(&server, "g", "0-1").await;
    assert!(new != "0-1" && new != a && new != b, "{new}");
    server.shutdown().await;
}

/// A topic grown under a live group: the members take the new partitions in a rebalance and
/// get their records, and the partitions they had stay theirs.
#[tokio::test]
async fn a_grown_topic_is_shared_out_to_its_live_group() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 2, always()).await;
    produce_round(&server, 2, 0, 5).await;
    let shared = Arc::new(Shared::default());
    let _a = TestMember::join(&shared, server.channel().await, "a", "g", 10_000).await;
    let _b = TestMember::join(&shared, server.channel().await, "b", "g", 10_000).await;
    wait_stable(&server, &shared, "g", &["a", "b"], 2).await;
    let before = shared.read(|o| (o.members["a"].owned.clone(), o.members["b"].owned.clone()));
    let grow = AlterTopicRequest { name: "t".into(), partitions: Some(4), ..Default::default() };
    server.topics().await.alter_topic(grow).await.unwrap();
    produce_round(&server, 4, 1, 5).await;
    wait_stable(&server, &shared, "g", &["a", "b"], 4).await;
    let after = shared.read(|o| (o.members["a"].owned.clone(), o.members["b"].owned.clone()));
    assert!(before.0.is_subset(&after.0) && before.1.is_subset(&after.1), "{before:?} {after:?}");
    let mut expected = produced(2, 1, 5);
    expected.extend(produced(4, 2, 5).difference(&produced(4, 1, 5)).cloned());
    assert_all_delivered(&shared, &expected);
    server.shutdown().await;
}

#[tokio::test]
async fn groups_are_listed_described_and_reset_only_when_empty() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 2, always()).await;
    produce_round(&server, 2, 0, 3).await;
    let shared = Arc::new(Shared::default());
    let a = TestMember::join(&shared, server.channel().await, "a", "g", 10_000).await;
    wait_stable(&server, &shared, "g", &["a"], 2).await;
    shared.wait_for("commits", |o| o.committed.values().filter(|c| **c == 3).count() == 2).await;
    let mut groups = GroupServiceClient::new(server.channel().await);
    let reset = |to: Position| ResetGroupRequest {
        group: "g".into(),
        topic: "t".into(),
        to: Some(StartPosition { position: Some(to) }),
        partition: None,
    };
    let refused = groups.reset_group(reset(Position::Earliest(Earliest {}))).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("1 live members"), "{refused:?}");
    let listed = groups.list_groups(ListGroupsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.groups.len(), 1);
    assert_eq!(listed.groups[0].state, GroupState::Stable as i32);
    a.commands.send(Command::Leave).await.unwrap();
    shared.wait_for("a to leave", |o| o.members["a"].ended.is_some()).await;
    let done = groups.reset_group(reset(Position::Offset(1))).await.unwrap().into_inner();
    assert_eq!(done.offsets.iter().map(|o| o.offset).collect::<Vec<_>>(), [1, 1]);
    let described = describe(&server, "g").await;
    assert_eq!(described.partitions.iter().map(|p| p.lag).collect::<Vec<_>>(), [Some(2), Some(2)]);
    let out_of_range = groups.reset_group(reset(Position::Offset(99))).await.unwrap_err();
    assert_eq!(out_of_range.code(), Code::OutOfRange);
    let missing =
        groups.describe_group(DescribeGroupRequest { group: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.shutdown().await;
}

/// A group is deleted only without members, and stays deleted after a restart: a member that
/// joins it later starts from its reset choice. Before that, one partition is reset alone, and
/// the list shows the topics of the group without members.
#[tokio::test]
async fn a_group_is_deleted_only_when_empty_and_stays_deleted_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 2, always()).await;
    produce_round(&server, 2, 0, 3).await;
    let shared = Arc::new(Shared::default());
    let a = TestMember::join(&shared, server.channel().await, "a", "g", 10_000).await;
    wait_stable(&server, &shared, "g", &["a"], 2).await;
    shared.wait_for("commits", |o| o.committed.values().filter(|c| **c == 3).count() == 2).await;
    let mut groups = GroupServiceClient::new(server.channel().await);
    let delete = |group: &str| DeleteGroupRequest { group: group.into(), ..Default::default() };
    let refused = groups.delete_group(delete("g")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("1 live members"), "{refused:?}");
    let unknown = groups.delete_group(delete("nope")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let bad = groups.delete_group(delete("a/b")).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    a.commands.send(Command::Leave).await.unwrap();
    shared.wait_for("a to leave", |o| o.members["a"].ended.is_some()).await;

    let listed = groups.list_groups(ListGroupsRequest {}).await.unwrap().into_inner().groups;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, GroupState::Empty as i32);
    assert_eq!(listed[0].topics, ["t"], "the topics of its committed offsets");

    let reset_partition = |partition: u32| ResetGroupRequest {
        group: "g".into(),
        topic: "t".into(),
        to: Some(StartPosition { position: Some(Position::Offset(1)) }),
        partition: Some(partition),
    };
    let reset = groups.reset_group(reset_partition(1)).await.unwrap().into_inner();
    assert_eq!(
        reset.offsets,
        [PartitionOffset { topic: "t".into(), partition: 1, offset: 1 }],
        "only the partition named"
    );
    let committed: Vec<Option<u64>> =
        describe(&server, "g").await.partitions.iter().map(|p| p.committed_offset).collect();
    assert_eq!(committed, [Some(3), Some(1)]);
    let missing = groups.reset_group(reset_partition(2)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    let deleted = groups.delete_group(delete("g")).await.unwrap().into_inner();
    assert_eq!(
        deleted.offsets.iter().map(|o| (o.partition, o.offset)).collect::<Vec<_>>(),
        [(0, 3), (1, 1)]
    );
    let gone = groups.describe_group(DescribeGroupRequest { group: "g".into() }).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    assert!(groups.list_groups(ListGroupsRequest {}).await.unwrap().into_inner().groups.is_empty());
    let again = groups.delete_group(delete("g")).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{again:?}");
    server.shutdown().await;

    let server = TestServer::start(data.path()).await;
    let mut groups = GroupServiceClient::new(server.channel().await);
    assert!(groups.list_groups(ListGroupsRequest {}).await.unwrap().into_inner().groups.is_empty());
    // A new member of g starts at the reset choice (earliest): every record again.
    let rejoined = Arc::new(Shared::default());
    let _b = TestMember::join(&rejoined, server.channel().await, "b", "g", 10_000).await;
    wait_stable(&server, &rejoined, "g", &["b"], 2).await;
    assert_all_delivered(&rejoined, &produced(2, 1, 3));
    server.shutdown().await;
}

/// DeleteGroup naming a topic forgets only the group's offsets of that topic (or of one
/// partition of it), durably: refused while a live member consumes the topic, taken while
/// members consume only others.
#[tokio::test]
async fn a_groups_offsets_of_one_topic_are_deleted_and_the_others_stay() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 2, always()).await;
    server.create_topic("u", 1, always()).await;
    let mut groups = GroupServiceClient::new(server.channel().await);
    for topic in ["t", "u"] {
        let reset = ResetGroupRequest {
            group: "g".into(),
            topic: topic.into(),
            to: Some(StartPosition { position: Some(Position::Offset(0)) }),
            partition: None,
        };
        groups.reset_group(reset).await.unwrap();
    }
    let delete = |topic: &str, partition: Option<u32>| DeleteGroupRequest {
        group: "g".into(),
        topic: Some(topic.into()),
        partition,
    };
    let shared = Arc::new(Shared::default());
    let a = TestMember::join(&shared, server.channel().await, "a", "g", 10_000).await;
    wait_stable(&server, &shared, "g", &["a"], 2).await;
    let refused = groups.delete_group(delete("t", None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("consuming topic t"), "{refused:?}");
    let deleted = groups.delete_group(delete("u", None)).await.unwrap().into_inner();
    assert_eq!(deleted.offsets, [PartitionOffset { topic: "u".into(), partition: 0, offset: 0 }]);
    a.commands.send(Command::Leave).await.unwrap();
    shared.wait_for("a to leave", |o| o.members["a"].ended.is_some()).await;

    let deleted = groups.delete_group(delete("t", Some(1))).await.unwrap().into_inner();
    assert_eq!(deleted.offsets.iter().map(|o| o.partition).collect::<Vec<_>>(), [1]);
    for (topic, partition) in [("t", Some(2)), ("nope", None)] {
        let missing = groups.delete_group(delete(topic, partition)).await.unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{topic} {partition:?}: {missing:?}");
    }
    server.shutdown().await;

    let server = TestServer::start(data.path()).await;
    let partitions: Vec<(String, u32)> = describe(&server, "g")
        .await
        .partitions
        .iter()
        .filter(|p| p.committed_offset.is_some())
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    assert_eq!(partitions, [("t".to_owned(), 0)], "only t-0's offset is left");
    server.shutdown().await;
}

/// A join with a bad first message, an unknown topic or a different subscription ends the
/// stream with the documented status.
#[tokio::test]
async fn bad_joins_end_the_stream_with_their_status() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 1, always()).await;
    server.create_topic("u", 1, always()).await;
    let first_message = |kind: RequestKind| async {
        let (requests, stream) = mpsc::channel(1);
        requests.send(MemberRequest { kind: Some(kind) }).await.unwrap();
        let mut events = GroupServiceClient::new(server.channel().await)
            .join(ReceiverStream::new(stream))
            .await
            .unwrap()
            .into_inner();
        let mut ended = None;
        while ended.is_none() {
            match events.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("ended without a status"),
                Err(status) => ended = Some(status),
            }
        }
        drop(requests);
        ended.unwrap()
    };
    let join = |group: &str, topics: &[&str], timeout: u32| {
        RequestKind::Join(JoinGroup {
            group: group.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            session_timeout_ms: timeout,
            reset: 0,
            encoding: 0,
            member_id: String::new(),
        })
    };
    let status = first_message(RequestKind::Heartbeat(Heartbeat {})).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("must be `join`"));
    let status = first_message(join("g", &["missing"], 1000)).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = first_message(join("a/b", &["t"], 1000)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let status = first_message(join("g", &["t"], 10)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let many: Vec<String> =
        (0..=spool_broker::limits::GROUP_TOPICS_MAX).map(|i| format!("t{i}")).collect();
    for topic in &many {
        server.create_topic(topic, 1, always()).await;
    }
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let status = first_message(join("g", &many, 1000)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A live member of g consumes t; a member asking for u cannot join g.
    let shared = Arc::new(Shared::default());
    let _a = TestMember::join(&shared, server.channel().await, "a", "g", 10_000).await;
    wait_stable(&server, &shared, "g", &["a"], 1).await;
    let status = first_message(join("g", &["u"], 1000)).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("cannot join"), "{status:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_join_past_the_live_group_limit_is_resource_exhausted() {
    use spool_broker::limits::GROUPS_LIVE_MAX;
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    server.create_topic("t", 1, always()).await;
    // One connection carries at most 256 streams: a channel per 200 members.
    let mut channels = Vec::new();
    for _ in 0..=GROUPS_LIVE_MAX / 200 {
        channels.push(server.channel().await);
    }
    let join = |i: usize| {
        let channel = channels[i / 200].clone();
        async move {
            let (requests, stream) = mpsc::channel(1);
            let join = JoinGroup {
                group: format!("g{i}"),
                topics: vec!["t".into()],
                session_timeout_ms: 30_000,
                reset: 0,
                encoding: 0,
                member_id: String::new(),
            };
            requests.send(MemberRequest { kind: Some(RequestKind::Join(join)) }).await.unwrap();
            let mut events = GroupServiceClient::new(channel)
                .join(ReceiverStream::new(stream))
                .await
                .unwrap()
                .into_inner();
            let first = events.message().await;
            (requests, events, first)
        }
    };
    let mut live = Vec::new();
    for i in 0..GROUPS_LIVE_MAX {
        let (requests, events, first) = join(i).await;
        assert!(matches!(first, Ok(Some(_))), "member {i}: {first:?}");
        live.push((requests, events));
    }
    let (_requests, _events, refused) = join(GROUPS_LIVE_MAX).await;
    let status = refused.expect_err("one group past the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("live groups, the limit"), "{status:?}");
    drop(live);
    server.shutdown().await;
}
