//! How long group consumption pauses during a rebalance, with 100 partitions.
//!
//! An in-process server on 127.0.0.1:0 over a temporary directory; a producer keeps every
//! partition of a 100-partition topic busy; two members share them (committing their
//! positions every 50 ms, as a client's auto-commit does, and revoked partitions before
//! acknowledging them). Then a third member
//! joins (33 partitions move), and later one leaves cleanly (its partitions move). For each
//! partition that moves, the pause is the time from the last records message its old owner
//! received to the first one its new owner received; partitions that stay are watched for
//! the longest gap between messages during the rebalance.
//!
//! ```sh
//! cargo run --release --example group_rebalance
//! ```
//! (The harness's full benchmark belongs to `spool bench`; this is the rebalance figure.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use spool_proto::v1::fsync_policy::{Always, Policy};
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    Acks, CommitOffsets, CreateTopicRequest, FsyncPolicy, Heartbeat, JoinGroup, Leave,
    MemberRequest, PartitionOffset, ProduceRequest, Record, RecordList, RevocationDone,
    TopicConfig,
};
use spool_server::testing::TestServer;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const PARTITIONS: u32 = 100;

/// Per partition: every (time, member) a records message with records arrived.
#[derive(Default)]
struct Deliveries {
    by_partition: Mutex<BTreeMap<u32, Vec<(Instant, usize)>>>,
    /// Per member: (generation, partitions owned, revocations pending).
    members: Mutex<BTreeMap<usize, (u64, usize, usize)>>,
    changed: Notify,
}

impl Deliveries {
    async fn wait_for(&self, condition: impl Fn(&BTreeMap<usize, (u64, usize, usize)>) -> bool) {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                if condition(&self.members.lock().unwrap()) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), waiting).await.is_err() {
            panic!("the group did not settle: {:?}", self.members.lock().unwrap());
        }
    }
}

async fn member(
    channel: Channel,
    index: usize,
    deliveries: Arc<Deliveries>,
    mut leave: mpsc::Receiver<()>,
) {
    let (requests, stream) = mpsc::channel(256);
    let join = JoinGroup {
        group: "bench".into(),
        topics: vec!["t".into()],
        session_timeout_ms: 10_000,
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
    let send = |kind| {
        let requests = requests.clone();
        async move {
            let _ = requests.send(MemberRequest { kind: Some(kind) }).await;
        }
    };
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    let mut auto_commit = tokio::time::interval(Duration::from_millis(50));
    let mut uncommitted: BTreeMap<u32, u64> = BTreeMap::new();
    let (mut generation, mut commit_id) = (0, 0);
    let mut positions: BTreeMap<u32, u64> = BTreeMap::new();
    let mut revoking: BTreeMap<u64, Vec<spool_proto::v1::TopicPartition>> = BTreeMap::new();
    loop {
        let event = tokio::select! {
            event = events.message() => event,
            _ = heartbeat.tick() => { send(RequestKind::Heartbeat(Heartbeat {})).await; continue }
            _ = auto_commit.tick() => {
                if !uncommitted.is_empty() {
                    let offsets = std::mem::take(&mut uncommitted)
                        .into_iter()
                        .map(|(partition, offset)| PartitionOffset { topic: "t".into(), partition, offset })
                        .collect();
                    commit_id += 1;
                    send(RequestKind::Commit(CommitOffsets { commit_id, generation, offsets })).await;
                }
                continue;
            }
            _ = leave.recv() => { send(RequestKind::Leave(Leave {})).await; continue }
        };
        let Ok(Some(event)) = event else { return };
        match event.kind.unwrap() {
            Kind::Joined(_) => {}
            Kind::Assignment(assignment) => {
                generation = assignment.generation;
                let offsets: Vec<PartitionOffset> = assignment
                    .revoked
                    .iter()
                    .filter_map(|p| {
                        uncommitted.remove(&p.partition);
                        positions.remove(&p.partition).map(|offset| PartitionOffset {
                            topic: p.topic.clone(),
                            partition: p.partition,
                            offset,
                        })
                    })
                    .collect();
                if !assignment.revoked.is_empty() {
                    commit_id += 1;
                    revoking.insert(commit_id, assignment.revoked.clone());
                    send(RequestKind::Commit(CommitOffsets { commit_id, generation, offsets }))
                        .await;
                }
                deliveries
                    .members
                    .lock()
                    .unwrap()
                    .insert(index, (generation, assignment.owned.len(), revoking.len()));
                deliveries.changed.notify_waiters();
            }
            Kind::Records(records) => {
                if records.records.is_empty() {
                    continue;
                }
                deliveries
                    .by_partition
                    .lock()
                    .unwrap()
                    .entry(records.partition)
                    .or_default()
                    .push((Instant::now(), index));
                positions.insert(records.partition, records.next_offset);
                uncommitted.insert(records.partition, records.next_offset);
            }
            Kind::CommitResult(result) => {
                if let Some(partitions) = revoking.remove(&result.commit_id) {
                    send(RequestKind::RevocationDone(RevocationDone { partitions })).await;
                    if let Some(entry) = deliveries.members.lock().unwrap().get_mut(&index) {
                        entry.2 = revoking.len();
                    }
                    deliveries.changed.notify_waiters();
                }
            }
        }
    }
}

/// Keeps every partition busy: small requests to each partition in turn, pipelined on one
/// produce stream (the server keeps up to 256 in flight), until `stop`.
async fn produce(channel: Channel, stop: Arc<Notify>) {
    let (requests, stream) = mpsc::channel(64);
    let mut answers = ProduceServiceClient::new(channel)
        .produce_stream(ReceiverStream::new(stream))
        .await
        .unwrap()
        .into_inner();
    let draining = tokio::spawn(async move { while let Ok(Some(_)) = answers.message().await {} });
    let stopped = stop.notified();
    tokio::pin!(stopped);
    let mut round = 0u64;
    'producing: loop {
        for partition in 0..PARTITIONS {
            let request = ProduceRequest {
                correlation_id: round * u64::from(PARTITIONS) + u64::from(partition),
                topic: "t".into(),
                partition: Some(partition),
                acks: Acks::Leader as i32,
                payload: Some(Payload::Records(RecordList {
                    records: vec![Record {
                        key: None,
                        value: Some(Bytes::from(format!("{round}"))),
                        headers: Vec::new(),
                        timestamp_ms: None,
                    }],
                })),
                producer: None,
            };
            tokio::select! {
                sent = requests.send(request) => if sent.is_err() { break 'producing },
                () = &mut stopped => break 'producing,
            }
        }
        round += 1;
    }
    drop(requests);
    let _ = draining.await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Pauses of the partitions that changed hands after `from`, and the longest gap of those
/// that did not.
fn report(what: &str, deliveries: &Deliveries, from: Instant, until: Instant) {
    let by_partition = deliveries.by_partition.lock().unwrap();
    let mut pauses = Vec::new();
    let mut kept_gaps = Vec::new();
    for list in by_partition.values() {
        let before = list.iter().rev().find(|(t, _)| *t < from);
        let Some(&(_, old_owner)) = before else { continue };
        let after: Vec<_> = list.iter().filter(|(t, _)| *t >= from && *t <= until).collect();
        match after.iter().find(|(_, m)| *m != old_owner) {
            Some((first_new, _)) => {
                let last_old =
                    list.iter().rev().find(|(t, m)| *m == old_owner && t < first_new).unwrap();
                pauses.push(*first_new - last_old.0);
            }
            None => {
                let mut previous = before.unwrap().0;
                let mut gap = Duration::ZERO;
                for (t, _) in after {
                    gap = gap.max(*t - previous);
                    previous = *t;
                }
                kept_gaps.push(gap);
            }
        }
    }
    pauses.sort();
    kept_gaps.sort();
    println!("{what}: {} partitions moved", pauses.len());
    if !pauses.is_empty() {
        println!(
            "  pause of a moved partition (old owner's last message to new owner's first): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&pauses, 0.5).as_secs_f64() * 1e3,
            percentile(&pauses, 0.99).as_secs_f64() * 1e3,
            pauses.last().unwrap().as_secs_f64() * 1e3,
        );
    }
    if !kept_gaps.is_empty() {
        println!(
            "  longest gap between messages of a partition that stayed: p50 {:.1} ms, max {:.1} ms",
            percentile(&kept_gaps, 0.5).as_secs_f64() * 1e3,
            kept_gaps.last().unwrap().as_secs_f64() * 1e3,
        );
    }
}

#[tokio::main]
async fn main() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await.unwrap();
    let channel = || {
        let url = server.url().to_owned();
        async move { Channel::from_shared(url).unwrap().connect().await.unwrap() }
    };
    let config = TopicConfig {
        partitions: PARTITIONS,
        fsync: Some(FsyncPolicy { policy: Some(Policy::Always(Always {})) }),
        ..Default::default()
    };
    TopicServiceClient::new(channel().await)
        .create_topic(CreateTopicRequest { name: "t".into(), config: Some(config) })
        .await
        .unwrap();
    let stop_producing = Arc::new(Notify::new());
    let producers: Vec<_> =
        (0..2).map(|_| tokio::spawn(produce_channel(channel(), stop_producing.clone()))).collect();
    let deliveries = Arc::new(Deliveries::default());
    let mut leaves = Vec::new();
    let stable = |members: usize| {
        move |m: &BTreeMap<usize, (u64, usize, usize)>| {
            let live: Vec<_> = m.values().filter(|(_, owned, _)| *owned > 0).collect();
            live.len() == members
                && live.iter().all(|(g, _, r)| *g == live[0].0 && *r == 0)
                && live.iter().map(|(_, o, _)| o).sum::<usize>() == PARTITIONS as usize
        }
    };
    for index in 0..2 {
        let (leave, leave_rx) = mpsc::channel(1);
        leaves.push(leave);
        tokio::spawn(member(channel().await, index, deliveries.clone(), leave_rx));
    }
    deliveries.wait_for(stable(2)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let joined = Instant::now();
    let (leave, leave_rx) = mpsc::channel(1);
    leaves.push(leave);
    tokio::spawn(member(channel().await, 2, deliveries.clone(), leave_rx));
    deliveries.wait_for(stable(3)).await;
    let settled = joined.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    report("a third member joins", &deliveries, joined, Instant::now());
    println!("  from the join to a stable group: {:.1} ms", settled.as_secs_f64() * 1e3);

    let left = Instant::now();
    leaves[0].send(()).await.unwrap();
    deliveries.members.lock().unwrap().remove(&0);
    deliveries.wait_for(stable(2)).await;
    let settled = left.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    report("a member leaves", &deliveries, left, Instant::now());
    println!("  from the leave to a stable group: {:.1} ms", settled.as_secs_f64() * 1e3);

    stop_producing.notify_waiters();
    for producer in producers {
        let _ = producer.await;
    }
    let _ = server.shutdown().await;
}

async fn produce_channel(channel: impl Future<Output = Channel>, stop: Arc<Notify>) {
    produce(channel.await, stop).await;
}
