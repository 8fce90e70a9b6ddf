//! Three replicas of one partition in one process, their messages routed in memory through
//! the bytes a real transport carries, each on its own simulated disk: replication, failover,
//! a partitioned leader, and a restart after power loss.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use spool_replication::history::{self, History, Observed, Outcome};
use spool_replication::limits::{ENTRY_BATCHES_MAX, HAND_OVER_LED_MIN};
use spool_replication::{
    Call, HandOverError, NodeId, PartitionStateMachine, ProposeError, Replica, SegmentLogStore,
    Transport, TransportError,
};
use spool_storage::batch::{BatchBuilder, BatchIter, BatchView, EntryStamp, ProducerStamp};
use spool_storage::sim::{Rng, SimFileSystem};
use spool_storage::{LogConfig, Offset, TimestampMs};

const GROUP: &str = "events-0";
/// How long anything here may take: elections take 1 to 2 s.
const PATIENCE: Duration = Duration::from_secs(30);

/// Delivers messages between the replicas in this process; a node in `cut` neither sends
/// nor receives.
#[derive(Default)]
struct Router {
    replicas: Mutex<HashMap<NodeId, Arc<Replica>>>,
    cut: Mutex<BTreeSet<NodeId>>,
    /// The largest message delivered, in bytes.
    largest: std::sync::atomic::AtomicUsize,
}

/// One node's side of the router.
struct Link {
    from: NodeId,
    router: Arc<Router>,
}

impl Transport for Link {
    fn call<'a>(
        &'a self,
        target: NodeId,
        address: &'a str,
        _group: &'a str,
        message: Bytes,
        timeout: Duration,
    ) -> Call<'a> {
        Box::pin(async move {
            let unreachable = |reason: &str| TransportError::Unreachable {
                node: target,
                address: address.to_owned(),
                reason: reason.to_owned(),
            };
            let cut = self.router.cut.lock().unwrap().clone();
            if cut.contains(&self.from) || cut.contains(&target) {
                return Err(unreachable("cut off"));
            }
            let replica = self.router.replicas.lock().unwrap().get(&target).cloned();
            let replica = replica.ok_or_else(|| unreachable("not running"))?;
            self.router.largest.fetch_max(message.len(), std::sync::atomic::Ordering::Relaxed);
            tokio::time::timeout(timeout, replica.handle(message)).await.map_err(|_| {
                TransportError::Timeout { node: target, address: address.to_owned(), timeout }
            })
        })
    }
}

struct Cluster {
    router: Arc<Router>,
    disks: BTreeMap<NodeId, SimFileSystem>,
    config: LogConfig,
    /// Each node's fold, when the replicas fold their records ([`Cluster::start_folding`]).
    folds: Option<Mutex<HashMap<NodeId, Arc<Values>>>>,
}

/// A fold that keeps every record's value, in order.
#[derive(Default)]
struct Values {
    values: Mutex<Vec<String>>,
}

impl spool_replication::Fold for Values {
    fn apply(&self, kafka: &[u8], _base: Offset, _next: Offset) {
        let view = BatchView::new(kafka).expect("a committed batch");
        let mut values = self.values.lock().unwrap();
        for record in view.records().iter() {
            let value = record.expect("a record").value.unwrap_or_default().to_vec();
            values.push(String::from_utf8(value).expect("UTF-8"));
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.values.lock().unwrap()).unwrap()
    }

    fn install(&self, snapshot: &[u8], _next: Offset) -> Result<(), String> {
        *self.values.lock().unwrap() =
            serde_json::from_slice(snapshot).map_err(|error| error.to_string())?;
        Ok(())
    }

    fn reset(&self) {
        self.values.lock().unwrap().clear();
    }
}

fn members() -> BTreeMap<NodeId, String> {
    (1..=3).map(|id| (id, format!("127.0.0.{id}:7071"))).collect()
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(LogConfig { segment_bytes: 256 * 1024, ..LogConfig::default() }).await
    }

    /// Three replicas whose logs have `config`.
    async fn start_with(config: LogConfig) -> Cluster {
        Cluster::start_as(config, false).await
    }

    /// Three replicas that fold their records into a [`Values`] each.
    async fn start_folding(config: LogConfig) -> Cluster {
        Cluster::start_as(config, true).await
    }

    async fn start_as(config: LogConfig, folding: bool) -> Cluster {
        let cluster = Cluster {
            router: Arc::new(Router::default()),
            disks: (1..=3).map(|id| (id, SimFileSystem::new())).collect(),
            config,
            folds: folding.then(|| Mutex::new(HashMap::new())),
        };
        for id in 1..=3 {
            cluster.start_node(id).await;
        }
        cluster.replica(1).bootstrap(&members()).await.expect("bootstrap");
        cluster
    }

    async fn start_node(&self, id: NodeId) {
        let fs = Arc::new(self.disks[&id].clone());
        let dir = Path::new("/data/p");
        let store = SegmentLogStore::open(fs.clone(), dir, self.config, TimestampMs(0))
            .expect("open the replica's storage");
        let link = Arc::new(Link { from: id, router: self.router.clone() });
        let log = store.log().clone();
        let state = match &self.folds {
            None => PartitionStateMachine::open(fs, dir, log, Arc::new(|_| {})),
            Some(folds) => {
                let fold = Arc::new(Values::default());
                folds.lock().unwrap().insert(id, fold.clone());
                PartitionStateMachine::open_folding(fs, dir, log, Arc::new(|_| {}), fold)
            }
        };
        let state = state.expect("open the replica's state");
        let replica = Replica::start(id, GROUP, store, state, link).await.expect("start");
        self.router.replicas.lock().unwrap().insert(id, Arc::new(replica));
    }

    /// Stops node `id` and loses what its disk had not synced.
    async fn kill(&self, id: NodeId) {
        let replica = self.router.replicas.lock().unwrap().remove(&id).expect("running");
        replica.shutdown().await;
        drop(replica);
        self.disks[&id].crash();
    }

    fn replica(&self, id: NodeId) -> Arc<Replica> {
        self.router.replicas.lock().unwrap()[&id].clone()
    }

    fn try_replica(&self, id: NodeId) -> Option<Arc<Replica>> {
        self.router.replicas.lock().unwrap().get(&id).cloned()
    }

    fn running(&self) -> Vec<NodeId> {
        self.router.replicas.lock().unwrap().keys().copied().collect()
    }

    fn set_cut(&self, nodes: &[NodeId]) {
        *self.router.cut.lock().unwrap() = nodes.iter().copied().collect();
    }

    /// The leader a majority of running, connected replicas agrees on, other than `not`.
    async fn leader(&self, not: Option<NodeId>) -> NodeId {
        let leader = self.leader_within(not, PATIENCE).await;
        leader.unwrap_or_else(|| panic!("no leader elected within {PATIENCE:?}"))
    }

    async fn leader_within(&self, not: Option<NodeId>, patience: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + patience;
        loop {
            let cut = self.router.cut.lock().unwrap().clone();
            let running = self.running();
            let mut votes: BTreeMap<NodeId, usize> = BTreeMap::new();
            for id in running.iter().filter(|id| !cut.contains(id)) {
                if let Some((leader, _)) = self.try_replica(*id).and_then(|r| r.leader()) {
                    *votes.entry(leader).or_default() += 1;
                }
            }
            let agreed = votes.into_iter().find(|(leader, count)| {
                *count >= 2 && Some(*leader) != not && running.contains(leader)
            });
            if let Some((leader, _)) = agreed {
                return Some(leader);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Proposes `value` at the current leader until it is committed; its offsets.
    async fn produce(&self, value: &str) -> (Offset, Offset) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let leader = self.leader(None).await;
            match self.replica(leader).propose(batch(value)).await {
                Ok(offsets) => return offsets,
                Err(ProposeError::NotLeader { .. }) => {}
                Err(error) => panic!("{value}: {error}"),
            }
            assert!(Instant::now() < deadline, "{value} not committed within {PATIENCE:?}");
        }
    }
}

/// A batch of two records holding `value`.
fn batch(value: &str) -> Bytes {
    let mut builder = BatchBuilder::new(BytesMut::new());
    for _ in 0..2 {
        builder.push(TimestampMs(1_000), None, Some(value.as_bytes()), &[]);
    }
    builder.finish(ProducerStamp::NONE).freeze()
}

/// Calls `visit` with every batch a replica's log holds (written, synced or not), in order.
fn each_batch(replica: &Replica, mut visit: impl FnMut(&BatchView<'_>)) {
    replica.store().with_log(|log| {
        let mut offset = log.log_start_offset();
        loop {
            let read = log.read_written(offset, 1 << 20).expect("read");
            if read.bytes.is_empty() {
                return;
            }
            for view in BatchIter::new(&read.bytes) {
                visit(&view.expect("intact"));
            }
            offset = read.next_offset;
        }
    })
}

/// What a replica's log holds: per batch, its entry stamp (term, index, kind, whether more
/// of its entry follow), base offset and Kafka body from its magic byte on (what the leader
/// stamps before it is the base offset and the term).
fn contents(replica: &Replica) -> Vec<(EntryStamp, u64, Vec<u8>)> {
    let mut out = Vec::new();
    each_batch(replica, |view| {
        let header = view.header();
        let body = view.as_bytes()[44 + 16..].to_vec();
        out.push((header.entry, header.base_offset.0, body));
    });
    out
}

/// Every offset of a replica's log, with its record's value or `None` for a control batch's
/// offset.
fn offsets(replica: &Replica) -> Observed {
    let mut out = Vec::new();
    each_batch(replica, |view| {
        let header = view.header();
        if header.entry.kind != spool_storage::batch::BatchKind::Records {
            out.extend((header.base_offset.0..header.next_offset().0).map(|o| (o, None)));
            return;
        }
        for record in view.records().iter() {
            let record = record.expect("record");
            let value = String::from_utf8(record.value.unwrap_or_default().to_vec());
            out.push((record.offset.0, Some(value.expect("UTF-8"))));
        }
    });
    out
}

/// The values of the records of a replica's log, in order, control batches left out.
fn values(replica: &Replica) -> Vec<String> {
    offsets(replica).into_iter().filter_map(|(_, value)| value).collect()
}

/// Waits until every running replica has applied up to `end`, then checks that their logs
/// are the same up to it.
async fn assert_same_logs(cluster: &Cluster, end: Offset) {
    for id in cluster.running() {
        let replica = cluster.replica(id);
        assert!(replica.wait_for_high_watermark(end, PATIENCE).await, "node {id} reached {end}");
    }
    let logs: Vec<(NodeId, Vec<_>)> = cluster
        .running()
        .into_iter()
        .map(|id| {
            let log = contents(&cluster.replica(id));
            (id, log.into_iter().filter(|(_, base, _)| *base < end.0).collect())
        })
        .collect();
    for (id, log) in &logs[1..] {
        let first = &logs[0];
        assert!(log == &first.1, "node {id}'s log differs from node {}'s below {end}", first.0);
    }
    // Each replica's readers see exactly what it applied, once it has published it (the
    // applied state moves first, then the log's visible end).
    for id in cluster.running() {
        let replica = cluster.replica(id);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let visible = replica.store().with_log(|log| log.log_end_offset());
            if visible == replica.high_watermark() {
                break;
            }
            let applied = replica.high_watermark();
            assert!(Instant::now() < deadline, "node {id}'s readers see {visible}, not {applied}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_hold_the_same_batches_at_the_same_offsets() {
    let cluster = Cluster::start().await;
    let mut end = Offset(0);
    for i in 0..40 {
        let (base, next) = cluster.produce(&format!("value {i}")).await;
        assert!(base >= end, "offsets grow");
        assert_eq!(next.0 - base.0, 2);
        end = next;
    }
    assert_same_logs(&cluster, end).await;
    let expected: Vec<String> =
        (0..40).flat_map(|i| [format!("value {i}"), format!("value {i}")]).collect();
    for id in 1..=3 {
        assert_eq!(values(&cluster.replica(id)), expected, "node {id}");
    }
}

/// Runs `futures` to completion, polling every one that is not done in order each time, so
/// that proposals made in order are queued in that order.
async fn in_order<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|output| output.expect("every future is done")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_proposed_together_share_entries_in_the_order_proposed() {
    let cluster = Cluster::start().await;
    let leader = cluster.replica(cluster.leader(None).await);
    let proposals = (0..200).map(|i| {
        let leader = leader.clone();
        async move { leader.propose(single(&format!("v{i}"))).await }
    });
    let proposed: Vec<(Offset, Offset)> = in_order(proposals.collect())
        .await
        .into_iter()
        .map(|proposed| proposed.expect("committed"))
        .collect();
    for (i, pair) in proposed.windows(2).enumerate() {
        assert_eq!(pair[0].1.0 - pair[0].0.0, 1, "batch {i} took one offset");
        assert!(pair[1].0 >= pair[0].1, "batch {} is stored after batch {i}", i + 1);
    }
    let end = proposed.last().expect("200").1;
    assert_same_logs(&cluster, end).await;
    // Each value at the offset its proposer was given, in the order proposed.
    let stored: Vec<(u64, String)> =
        offsets(&leader).into_iter().filter_map(|(o, value)| value.map(|v| (o, v))).collect();
    let expected: Vec<(u64, String)> =
        proposed.iter().enumerate().map(|(i, (base, _))| (base.0, format!("v{i}"))).collect();
    assert_eq!(stored, expected);
    let stored = contents(&leader);
    let entries: BTreeSet<u64> = stored.iter().map(|(stamp, _, _)| stamp.index).collect();
    assert!(entries.len() < 100, "200 batches proposed at once took {} entries", entries.len());
    // Every batch of an entry but its last says more follow.
    for (i, (stamp, base, _)) in stored.iter().enumerate() {
        let next_same = stored.get(i + 1).is_some_and(|(next, _, _)| next.index == stamp.index);
        assert_eq!(stamp.more, next_same, "the batch at offset {base}, of entry {}", stamp.index);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_proposed_as_one_group_share_one_entry_among_others() {
    use spool_replication::limits::ENTRY_KAFKA_BYTES_MAX;
    let cluster = Cluster::start().await;
    let leader = cluster.replica(cluster.leader(None).await);
    // Each round: a single of half an entry, then a group of five that, one batch at a time,
    // would fill that entry up and go on into the next.
    let padded = |name: String, len: usize| single(&format!("{name}{}", "_".repeat(len)));
    let rounds = 6;
    type Answers = Pin<Box<dyn Future<Output = Vec<(Offset, Offset)>> + Send>>;
    let mut proposals: Vec<Answers> = Vec::new();
    for round in 0..rounds {
        let single_leader = leader.clone();
        let single = padded(format!("s{round}"), ENTRY_KAFKA_BYTES_MAX / 2);
        proposals.push(Box::pin(async move {
            vec![single_leader.propose(single).await.expect("committed")]
        }));
        let group_leader = leader.clone();
        let group =
            (0..5).map(|i| padded(format!("g{round}.{i}"), ENTRY_KAFKA_BYTES_MAX / 6)).collect();
        proposals.push(Box::pin(async move {
            group_leader.propose_together(group).await.expect("committed")
        }));
    }
    let proposed = in_order(proposals).await;
    let stored = contents(&leader);
    let entry_of = |base: Offset| {
        let found = stored.iter().find(|(_, at, _)| *at == base.0);
        found.map(|(stamp, _, _)| stamp.index).expect("stored")
    };
    for (round, pair) in proposed.chunks(2).enumerate() {
        let (single, group) = (pair[0][0], &pair[1]);
        assert_eq!(group.len(), 5, "round {round}: one answer per batch");
        let entries: BTreeSet<u64> = group.iter().map(|(base, _)| entry_of(*base)).collect();
        assert_eq!(entries.len(), 1, "round {round}: the group took entries {entries:?}");
        for (pair, i) in group.windows(2).zip(0..) {
            assert_eq!(pair[0].1, pair[1].0, "round {round}: batch {} follows batch {i}", i + 1);
        }
        assert!(group[0].0 >= single.1, "round {round}: the group is stored after the single");
    }
    // Each value at the offset its proposer was given.
    let stored_values: BTreeMap<u64, String> = offsets(&leader)
        .into_iter()
        .filter_map(|(o, value)| value.map(|v| (o, v.trim_end_matches('_').to_owned())))
        .collect();
    for (round, pair) in proposed.chunks(2).enumerate() {
        assert_eq!(stored_values[&pair[0][0].0.0], format!("s{round}"));
        for (i, (base, _)) in pair[1].iter().enumerate() {
            assert_eq!(stored_values[&base.0], format!("g{round}.{i}"));
        }
    }
    // A group too large for one entry is refused whole, and nothing of it is stored.
    let too_many = (0..=ENTRY_BATCHES_MAX).map(|i| single(&format!("x{i}"))).collect();
    match leader.propose_together(too_many).await {
        Err(ProposeError::Oversized { batches, .. }) => assert_eq!(batches, ENTRY_BATCHES_MAX + 1),
        other => panic!("a group past {ENTRY_BATCHES_MAX} batches was not refused: {other:?}"),
    }
    let end = proposed.last().expect("rounds")[4].1;
    assert_same_logs(&cluster, end).await;
    assert_eq!(offsets(&leader).last().map(|(o, _)| o + 1), Some(end.0), "nothing stored after");
}

/// A follower that missed several full entries catches up a few at a time: no message
/// carries more than `APPEND_ENTRIES_BYTES_MAX` of entries, which a follower must write and
/// fsync within one heartbeat (one larger than `MESSAGE_BYTES_MAX` would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_up_on_full_entries_a_few_at_a_time() {
    use spool_replication::limits::{
        APPEND_ENTRIES_BYTES_MAX, ENTRY_KAFKA_BYTES_MAX, HEADER_BYTES_MAX,
    };
    let cluster = Cluster::start().await;
    let leader_id = cluster.leader(None).await;
    let behind = (1..=3).find(|id| *id != leader_id).expect("a follower");
    cluster.set_cut(&[behind]);
    let leader = cluster.replica(leader_id);
    let half =
        |name: String| single(&format!("{name}{}", "_".repeat(ENTRY_KAFKA_BYTES_MAX / 2 - 200)));
    let mut end = Offset(0);
    for entry in 0..6 {
        let group = vec![half(format!("e{entry}a")), half(format!("e{entry}b"))];
        end = leader.propose_together(group).await.expect("committed by two")[1].1;
    }
    cluster.router.largest.store(0, std::sync::atomic::Ordering::Relaxed);
    cluster.set_cut(&[]);
    assert_same_logs(&cluster, end).await;
    let largest = cluster.router.largest.load(std::sync::atomic::Ordering::Relaxed);
    assert!(largest > ENTRY_KAFKA_BYTES_MAX, "a message carried more than one entry: {largest}");
    assert!(
        largest <= APPEND_ENTRIES_BYTES_MAX + HEADER_BYTES_MAX,
        "{largest} bytes in one message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let cluster = Cluster::start().await;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        cluster.produce(&format!("before {i}")).await;
        acknowledged.push(format!("before {i}"));
    }
    let old = cluster.leader(None).await;
    let killed = Instant::now();
    cluster.kill(old).await;
    let new = cluster.leader(Some(old)).await;
    println!("failover from node {old} to node {new} took {:?}", killed.elapsed());
    let mut end = Offset(0);
    for i in 0..10 {
        end = cluster.produce(&format!("after {i}")).await.1;
        acknowledged.push(format!("after {i}"));
    }
    // The old leader comes back from what its disk kept, and catches up.
    cluster.start_node(old).await;
    assert_same_logs(&cluster, end).await;
    let expected: Vec<String> = acknowledged.iter().flat_map(|v| [v.clone(), v.clone()]).collect();
    for id in 1..=3 {
        assert_eq!(values(&cluster.replica(id)), expected, "node {id}: each acknowledged once");
    }
}

/// Hands `replica`'s leadership to `to`, once it has led long enough to.
async fn hand_over(replica: &Replica, to: NodeId) -> Result<(), HandOverError> {
    loop {
        let started = Instant::now();
        match replica.hand_over(to).await {
            Err(HandOverError::TooSoon { led }) => {
                tokio::time::sleep(HAND_OVER_LED_MIN.saturating_sub(led)).await;
            }
            other => {
                println!("hand-over to node {to}: {other:?} in {:?}", started.elapsed());
                return other;
            }
        }
    }
}

/// Hands `replica`'s leadership to `to`, asking again while the leader counts `to` behind:
/// it may hear of `to`'s last appends a moment after `to` has applied them.
async fn hand_over_once_caught_up(replica: &Replica, to: NodeId) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match hand_over(replica, to).await {
            Ok(()) => return,
            Err(HandOverError::Behind { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("not handed over to node {to}: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_hands_over_to_a_follower_under_load_and_nothing_acknowledged_is_lost() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let cluster = Arc::new(Cluster::start().await);
    let end = cluster.produce("first").await.1;
    assert_same_logs(&cluster, end).await;
    let old = cluster.leader(None).await;
    let to = (1..=3).find(|id| *id != old).expect("a follower");
    // Producers keep proposing at the leader they see, and record what was acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for producer in 0..3 {
        let (cluster, acknowledged, stop) = (cluster.clone(), acknowledged.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let value = format!("p{producer}-{n}");
                let leader = cluster.leader(None).await;
                match cluster.replica(leader).propose(single(&value)).await {
                    Ok(_) => {
                        acknowledged.lock().unwrap().push(value);
                        n += 1;
                    }
                    // Held while the leader handed over, then refused: nothing was stored.
                    Err(ProposeError::NotLeader { .. }) => {}
                    Err(error) => panic!("{value}: {error}"),
                }
            }
        }));
    }
    hand_over_once_caught_up(&cluster.replica(old), to).await;
    // The others' views of the leader follow the old leader's.
    assert_eq!(cluster.leader(Some(old)).await, to);
    assert_eq!(cluster.replica(old).leading_term(), None);
    let end = cluster.produce("last").await.1;
    stop.store(true, Ordering::SeqCst);
    for producer in producers {
        producer.await.expect("a producer panicked");
    }
    assert_same_logs(&cluster, end).await;
    let stored = values(&cluster.replica(to));
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 10, "only {} acknowledged", acknowledged.len());
    for value in &acknowledged {
        let count = stored.iter().filter(|stored| *stored == value).count();
        assert_eq!(count, 1, "{value} is stored {count} times");
    }
    // Each producer's values in the order acknowledged.
    for producer in 0..3 {
        let prefix = format!("p{producer}-");
        let mine: Vec<&String> = stored.iter().filter(|v| v.starts_with(&prefix)).collect();
        let sent: Vec<&String> = acknowledged.iter().filter(|v| v.starts_with(&prefix)).collect();
        assert_eq!(mine, sent, "producer {producer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_replica_asks_the_leader_to_hand_the_group_back_to_its_preferred_leader() {
    let cluster = Cluster::start().await;
    let end = cluster.produce("first").await.1;
    assert_same_logs(&cluster, end).await;
    let leader = cluster.leader(None).await;
    let preferred = (1..=3).find(|id| *id != leader).expect("a follower");
    let asking = (1..=3).find(|id| *id != leader && *id != preferred).expect("another");
    for id in 1..=3 {
        cluster.replica(id).prefer_leader(preferred);
    }
    assert!(cluster.replica(asking).wait_for_leader(PATIENCE).await.is_some());
    // The leader waits out its lease, then hands over (asked again while it counts the
    // preferred node behind, as `hand_over_once_caught_up` is).
    let deadline = Instant::now() + PATIENCE;
    let handed = loop {
        match cluster.replica(asking).hand_back_now(PATIENCE).await {
            Err(HandOverError::Behind { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            handed => break handed,
        }
    };
    assert_eq!(handed, Ok(Some(preferred)));
    assert_eq!(cluster.leader(Some(leader)).await, preferred);
    // Asked again, through the old leader: the preferred leader leads already.
    assert!(cluster.replica(leader).wait_for_leader(PATIENCE).await.is_some());
    assert_eq!(cluster.replica(leader).hand_back_now(PATIENCE).await, Ok(None));
    let end = cluster.produce("after").await.1;
    assert_same_logs(&cluster, end).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_over_is_refused_where_it_cannot_be_won() {
    let cluster = Cluster::start().await;
    cluster.produce("first").await;
    let leader = cluster.leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let other = (1..=3).find(|id| *id != leader && *id != follower).expect("another");
    let refused = cluster.replica(follower).hand_over(other).await;
    assert_eq!(refused, Err(HandOverError::NotLeader));
    let refused = hand_over(&cluster.replica(leader), 7).await;
    assert_eq!(refused, Err(HandOverError::NotAVoter(7)));
    // To itself: nothing to do.
    assert_eq!(cluster.replica(leader).hand_over(leader).await, Ok(()));
    // A follower cut off falls behind: the leader keeps the group.
    cluster.set_cut(&[follower]);
    for i in 0..5 {
        cluster.produce(&format!("while cut off {i}")).await;
    }
    let refused = hand_over(&cluster.replica(leader), follower).await;
    assert!(matches!(refused, Err(HandOverError::Behind { node, .. }) if node == follower));
    assert!(cluster.replica(leader).leading_term().is_some());
    // Once back and caught up, it takes the group.
    cluster.set_cut(&[]);
    let end = cluster.produce("healed").await.1;
    assert_same_logs(&cluster, end).await;
    hand_over_once_caught_up(&cluster.replica(leader), follower).await;
    assert_eq!(cluster.leader(Some(leader)).await, follower);
    let end = cluster.produce("after").await.1;
    assert_same_logs(&cluster, end).await;
    let values = values(&cluster.replica(leader));
    assert_eq!(values.last().map(String::as_str), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_never_acknowledges_and_its_tail_is_cut_when_it_rejoins() {
    let cluster = Cluster::start().await;
    cluster.produce("first").await;
    let old = cluster.leader(None).await;
    cluster.set_cut(&[old]);
    let isolated = cluster.replica(old);
    let stranded = tokio::spawn(async move { isolated.propose(batch("stranded")).await });
    let new = cluster.leader(Some(old)).await;
    assert_ne!(new, old);
    let end = cluster.produce("second").await.1;
    cluster.set_cut(&[]);
    match tokio::time::timeout(PATIENCE, stranded).await {
        Ok(Ok(Err(_))) => {}
        other => panic!("the stranded batch was not refused: {other:?}"),
    }
    let end = end.max(cluster.produce("third").await.1);
    assert_same_logs(&cluster, end).await;
    for id in 1..=3 {
        let values = values(&cluster.replica(id));
        assert_eq!(values, ["first", "first", "second", "second", "third", "third"], "node {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_passes_what_it_is_given_to_the_leader() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let replica = cluster.replica(follower);
    // The follower hears of the leader with its first message.
    let known = replica.wait_for_leader(PATIENCE).await.map(|(id, _)| id);
    assert_eq!(known, Some(leader));
    let refused = replica.propose(batch("direct")).await.unwrap_err();
    assert!(matches!(refused, ProposeError::NotLeader { leader: Some(_) }), "{refused}");
    let (_, end) = replica.propose_anywhere(batch("passed on")).await.expect("committed");
    assert_same_logs(&cluster, end).await;
    assert_eq!(values(&cluster.replica(leader)), ["passed on", "passed on"]);
    // Several in one message: handled in the order given, each answered with its offsets.
    let group: Vec<Bytes> = (0..5).map(|i| single(&format!("in order {i}"))).collect();
    let answers = replica.forward_in_order(group).await;
    let offsets: Vec<(Offset, Offset)> =
        answers.into_iter().map(|answer| answer.expect("committed")).collect();
    for (pair, i) in offsets.windows(2).zip(0..) {
        assert!(pair[1].0 >= pair[0].1, "batch {} is stored after batch {i}", i + 1);
    }
    let end = offsets.last().expect("five").1;
    assert_same_logs(&cluster, end).await;
    let stored = values(&cluster.replica(leader));
    let expected: Vec<String> = (0..5).map(|i| format!("in order {i}")).collect();
    assert_eq!(stored[2..], expected[..]);
    // The leader passes nothing on: it says it leads.
    let answers = cluster.replica(leader).forward_in_order(vec![single("back")]).await;
    assert!(matches!(answers[..], [Err(ProposeError::NotLeader { .. })]), "{answers:?}");
}

/// Every offset of a replica's log below its high watermark: what the history checker reads.
fn observed(replica: &Replica) -> Observed {
    let end = replica.high_watermark().0;
    offsets(replica).into_iter().filter(|(offset, _)| *offset < end).collect()
}

/// A batch of one record.
fn single(value: &str) -> Bytes {
    let mut builder = BatchBuilder::new(BytesMut::new());
    builder.push(TimestampMs(1_000), None, Some(value.as_bytes()), &[]);
    builder.finish(ProducerStamp::NONE).freeze()
}

/// Three producers write unique values while a seeded nemesis cuts nodes off, heals, kills a
/// node (losing its unsynced writes) and restarts it, and cuts the power of the whole cluster
/// at once; then everything heals and the history checker reads every replica.
async fn nemesis_run(seed: u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    println!("seed {seed} (SPOOL_TEST_SEED={seed} replays it)");
    let cluster = Arc::new(Cluster::start().await);
    let history = Arc::new(Mutex::new(History::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for producer in 0..3 {
        let (cluster, history, stop) = (cluster.clone(), history.clone(), stop.clone());
        producers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let value = format!("p{producer}-{n}");
                n += 1;
                let leader = cluster.leader_within(None, Duration::from_millis(500)).await;
                let Some(replica) = leader.and_then(|leader| cluster.try_replica(leader)) else {
                    continue;
                };
                let propose = replica.propose(single(&value));
                let outcome = match tokio::time::timeout(Duration::from_secs(3), propose).await {
                    Ok(Ok((base, _))) => Outcome::Acknowledged { offset: base.0 },
                    // A deposed leader may answer NotLeader for an entry it had replicated:
                    // every failure is of unknown outcome.
                    Ok(Err(_)) | Err(_) => Outcome::Unknown,
                };
                history.lock().unwrap().record(value, outcome);
            }
        }));
    }
    let mut rng = Rng::new(seed);
    let mut killed: Option<NodeId> = None;
    for step in 0..10 {
        let node = 1 + rng.below(3);
        match rng.below(5) {
            0 => {
                println!("step {step}: cut node {node} off");
                cluster.set_cut(&[node]);
            }
            1 => {
                println!("step {step}: heal");
                cluster.set_cut(&[]);
                if let Some(node) = killed.take() {
                    println!("step {step}: restart node {node}");
                    cluster.start_node(node).await;
                }
            }
            2 if killed.is_none() => {
                println!("step {step}: kill node {node}");
                cluster.kill(node).await;
                killed = Some(node);
            }
            3 => {
                let leader = cluster.leader_within(None, Duration::from_millis(500)).await;
                let replica = leader.and_then(|leader| cluster.try_replica(leader));
                if let Some(replica) = replica {
                    println!("step {step}: hand the leadership to node {node}");
                    let _ = hand_over(&replica, node).await;
                }
            }
            _ => {
                println!("step {step}: power loss of the whole cluster");
                for id in cluster.running() {
                    cluster.kill(id).await;
                }
                for id in 1..=3 {
                    cluster.start_node(id).await;
                }
                killed = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(1_000 + rng.below(1_000))).await;
    }
    cluster.set_cut(&[]);
    if let Some(node) = killed {
        cluster.start_node(node).await;
    }
    // Once healed, writes go through again. A retry is a new value: a deposed leader's
    // NotLeader does not say that nothing was stored.
    let deadline = Instant::now() + PATIENCE;
    let mut end = None;
    for attempt in 0.. {
        let value = format!("after the nemesis {attempt}");
        let leader = cluster.leader(None).await;
        let replica = cluster.replica(leader);
        let propose = replica.propose(single(&value));
        let outcome = match tokio::time::timeout(Duration::from_secs(3), propose).await {
            Ok(Ok((base, next))) => {
                end = Some(next);
                Outcome::Acknowledged { offset: base.0 }
            }
            Ok(Err(_)) | Err(_) => Outcome::Unknown,
        };
        history.lock().unwrap().record(value, outcome);
        if end.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed}: no write went through once healed");
    }
    let end = end.expect("acknowledged");
    stop.store(true, Ordering::SeqCst);
    for producer in producers {
        producer.await.expect("a producer panicked");
    }
    assert_same_logs(&cluster, end).await;
    let history = history.lock().unwrap().clone();
    let read = observed(&cluster.replica(1));
    let anomalies = history::check(&history, &read);
    println!(
        "seed {seed}: {} sends, {} acknowledged, {} offsets read, {} anomalies",
        history.len(),
        history.acknowledged(),
        read.len(),
        anomalies.len()
    );
    for id in 2..=3 {
        assert!(observed(&cluster.replica(id)) == read, "node {id} reads otherwise than node 1");
    }
    let described: Vec<String> = anomalies.iter().map(ToString::to_string).collect();
    assert!(anomalies.is_empty(), "seed {seed}: {}", described.join("; "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_under_partitions_kills_and_power_loss() {
    match std::env::var("SPOOL_TEST_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => nemesis_run(seed).await,
        None => {
            for seed in [1, 2] {
                nemesis_run(seed).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_serves_what_it_applied_before_it_hears_from_a_leader() {
    let cluster = Cluster::start().await;
    let leader = cluster.replica(cluster.leader(None).await);
    // One at a time, so that each is an entry of its own: a replica saves what it applied
    // every `APPLIED_SAVE_EVERY` entries.
    let mut end = Offset(0);
    for i in 0..spool_replication::limits::APPLIED_SAVE_EVERY + 100 {
        end = leader.propose(single(&format!("v{i}"))).await.expect("committed").1;
    }
    let follower = (1..=3).find(|id| *id != leader.node_id()).expect("a follower");
    assert!(cluster.replica(follower).wait_for_high_watermark(end, PATIENCE).await);
    cluster.kill(follower).await;
    cluster.set_cut(&[follower]);
    cluster.start_node(follower).await;
    let restarted = cluster.replica(follower);
    let seen = restarted.high_watermark();
    assert!(
        seen > Offset(0) && seen <= end,
        "after a restart alone it serves up to {seen} of {end}"
    );
    assert_eq!(restarted.store().with_log(|log| log.log_end_offset()), seen);
    cluster.set_cut(&[]);
    assert_same_logs(&cluster, end).await;
}

/// Produces sixty values of 20 KB, several segments' worth; returns the values as the log
/// holds them (each batch holds its value twice) and the log's end.
async fn produce_segments(cluster: &Cluster) -> (Vec<String>, Offset) {
    let padding = "x".repeat(20_000);
    let mut acknowledged = Vec::new();
    let mut end = Offset(0);
    for i in 0..60 {
        let value = format!("value {i} {padding}");
        end = cluster.produce(&value).await.1;
        acknowledged.extend([value.clone(), value]);
    }
    (acknowledged, end)
}

/// Flips one bit near the end of a sealed segment in the middle of node `id`'s log, on its
/// disk (synced): damage recovery finds, not a torn tail.
fn damage_a_sealed_segment(cluster: &Cluster, id: NodeId) {
    use spool_storage::fs::{FileSystem, OpenMode};
    let fs = &cluster.disks[&id];
    let dir = Path::new("/data/p/log");
    let mut segments: Vec<String> =
        fs.list_dir(dir).unwrap().into_iter().filter(|name| name.ends_with(".log")).collect();
    segments.sort();
    assert!(segments.len() > 3, "the log spans segments: {segments:?}");
    let victim = dir.join(&segments[segments.len() / 2]);
    let file = fs.open(&victim, OpenMode::Existing).unwrap();
    let at = file.len().unwrap() - 5;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    file.sync_data().unwrap();
}

/// Waits until node `id` is no longer under repair.
async fn wait_repaired(cluster: &Cluster, id: NodeId) {
    let deadline = Instant::now() + PATIENCE;
    while cluster.replica(id).repairing() {
        assert!(Instant::now() < deadline, "node {id} not repaired within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_synced_data_is_damaged_stays_out_of_elections_until_repaired() {
    let cluster = Cluster::start().await;
    let (mut acknowledged, end) = produce_segments(&cluster).await;
    let leader = cluster.leader(None).await;
    let damaged = (1..=3).find(|id| *id != leader).expect("a follower");
    let other = (1..=3).find(|id| *id != leader && *id != damaged).expect("another");
    assert!(cluster.replica(damaged).wait_for_high_watermark(end, PATIENCE).await);
    cluster.kill(damaged).await;
    damage_a_sealed_segment(&cluster, damaged);
    // With the leader gone too, the damaged replica and the other follower could elect a
    // leader together; the damaged one takes no part, so no leader is elected.
    cluster.kill(leader).await;
    cluster.start_node(damaged).await;
    let repairing = cluster.replica(damaged);
    assert!(repairing.repairing(), "damage puts the replica under repair");
    let cut = repairing.store().with_log(|log| log.next_offset());
    assert!(cut < end, "the log is cut back before the damage: {cut} of {end}");
    // Long enough for a leader lease and several election timeouts.
    let patience = spool_replication::limits::ELECTION_TIMEOUT_MAX * 6;
    assert_eq!(cluster.leader_within(None, patience).await, None, "no election without it");
    // A restart under repair stays under repair.
    cluster.kill(damaged).await;
    cluster.start_node(damaged).await;
    assert!(cluster.replica(damaged).repairing());
    // Once a leader is back, the damaged replica copies what it lost and votes again.
    cluster.start_node(leader).await;
    wait_repaired(&cluster, damaged).await;
    assert_same_logs(&cluster, end).await;
    assert_eq!(values(&cluster.replica(damaged)), acknowledged);
    cluster.kill(other).await;
    cluster.produce("after the repair").await;
    acknowledged.extend(["after the repair".to_owned(), "after the repair".to_owned()]);
    for id in cluster.running() {
        let replica = cluster.replica(id);
        let end = cluster.replica(cluster.leader(None).await).high_watermark();
        assert!(replica.wait_for_high_watermark(end, PATIENCE).await, "node {id}");
        assert_eq!(values(&replica), acknowledged, "node {id}");
    }
}

/// A leader whose synced data is damaged does not lead again when it restarts. openraft
/// would restore it as the leader of its term without an election (its saved vote is
/// committed and its own), with its log cut back before entries it wrote in that term. It
/// starts under repair as a follower instead, and copies what it lost once another replica
/// leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_synced_data_is_damaged_restarts_as_a_follower_under_repair() {
    let cluster = Cluster::start().await;
    let (acknowledged, end) = produce_segments(&cluster).await;
    let leader = cluster.leader(None).await;
    for id in cluster.running() {
        cluster.kill(id).await;
    }
    damage_a_sealed_segment(&cluster, leader);
    cluster.start_node(leader).await;
    let repairing = cluster.replica(leader);
    assert!(repairing.repairing(), "damage puts the replica under repair");
    // Long enough for a leader lease and several election timeouts.
    let patience = spool_replication::limits::ELECTION_TIMEOUT_MAX * 6;
    assert_eq!(cluster.leader_within(None, patience).await, None, "it does not lead alone");
    for id in (1..=3).filter(|id| *id != leader) {
        cluster.start_node(id).await;
    }
    wait_repaired(&cluster, leader).await;
    assert_same_logs(&cluster, end).await;
    assert_eq!(values(&cluster.replica(leader)), acknowledged);
}

/// The batches of a replica's log from `from` on, as [`contents`] gives them.
fn contents_from(replica: &Replica, from: Offset) -> Vec<(EntryStamp, u64, Vec<u8>)> {
    contents(replica).into_iter().filter(|(_, base, _)| *base >= from.0).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_on_every_replica_and_a_follower_behind_it_catches_up_from_a_snapshot() {
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        retention_bytes: Some(512 * 1024),
        ..LogConfig::default()
    };
    let cluster = Cluster::start_with(config).await;
    let leader = cluster.leader(None).await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    let other = (1..=3).find(|id| *id != leader && *id != lagging).expect("another");
    cluster.produce("before").await;
    cluster.kill(lagging).await;
    let (_, end) = produce_segments(&cluster).await;
    for id in [leader, other] {
        let replica = cluster.replica(id);
        assert!(replica.wait_for_high_watermark(end, PATIENCE).await, "node {id}");
        let purged = replica.apply_retention(TimestampMs::now(), PATIENCE).await;
        assert!(purged.expect("retention").is_some(), "node {id} has segments past the limit");
    }
    // A leader purges once no follower is being sent what it deletes.
    let deadline = Instant::now() + PATIENCE;
    for id in [leader, other] {
        let replica = cluster.replica(id);
        while replica.store().with_log(|log| log.log_start_offset()) == Offset(0) {
            assert!(Instant::now() < deadline, "node {id} deleted nothing within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (start, size) =
            replica.store().with_log(|log| (log.log_start_offset(), log.size_bytes()));
        assert!(size < 1024 * 1024, "node {id} keeps {size} bytes from {start}");
    }
    // The lagging follower needs what both others deleted: it takes the leader's snapshot,
    // empties its log and goes on from the snapshot's offset.
    cluster.start_node(lagging).await;
    let caught_up = cluster.replica(lagging);
    assert!(caught_up.wait_for_high_watermark(end, PATIENCE).await, "the lagging follower");
    let start = caught_up.store().with_log(|log| log.log_start_offset());
    assert!(start > Offset(0) && start <= end, "it starts at the snapshot's offset: {start}");
    let leader_log = contents_from(&cluster.replica(leader), start);
    assert_eq!(contents_from(&caught_up, start), leader_log, "the same batches from {start}");
    // What it took survives a restart, and it goes on replicating.
    cluster.kill(lagging).await;
    cluster.start_node(lagging).await;
    let restarted = cluster.replica(lagging);
    assert_eq!(restarted.store().with_log(|log| log.log_start_offset()), start);
    let (_, after) = cluster.produce("after").await;
    for id in 1..=3 {
        let replica = cluster.replica(id);
        assert!(replica.wait_for_high_watermark(after, PATIENCE).await, "node {id}");
        let values = values(&replica);
        assert_eq!(values.last().map(String::as_str), Some("after"), "node {id}");
        assert!(!values.contains(&"before".to_owned()), "node {id} deleted the oldest");
    }
    let leader_log = contents_from(&cluster.replica(leader), start);
    assert_eq!(contents_from(&cluster.replica(lagging), start), leader_log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_replica_whose_log_was_purged_empties_it_and_is_repaired() {
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        retention_bytes: Some(1024 * 1024),
        ..LogConfig::default()
    };
    let cluster = Cluster::start_with(config).await;
    let (_, end) = produce_segments(&cluster).await;
    let deadline = Instant::now() + PATIENCE;
    for id in 1..=3 {
        let replica = cluster.replica(id);
        assert!(replica.wait_for_high_watermark(end, PATIENCE).await, "node {id}");
        replica.apply_retention(TimestampMs::now(), PATIENCE).await.expect("retention");
        while replica.store().with_log(|log| log.log_start_offset()) == Offset(0) {
            assert!(Instant::now() < deadline, "node {id} deleted nothing within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let leader = cluster.leader(None).await;
    let damaged = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.kill(damaged).await;
    damage_a_sealed_segment(&cluster, damaged);
    cluster.start_node(damaged).await;
    assert!(cluster.replica(damaged).repairing(), "damage puts the replica under repair");
    wait_repaired(&cluster, damaged).await;
    let (_, after) = cluster.produce("after the repair").await;
    let repaired = cluster.replica(damaged);
    assert!(repaired.wait_for_high_watermark(after, PATIENCE).await);
    let start = repaired.store().with_log(|log| log.log_start_offset());
    assert!(start > Offset(0), "it went on from the leader's snapshot");
    let leader_log = contents_from(&cluster.replica(leader), start);
    assert_eq!(contents_from(&repaired, start), leader_log, "the same batches from {start}");
    assert_eq!(values(&repaired).last().map(String::as_str), Some("after the repair"));
}

impl Cluster {
    /// What node `id`'s fold holds.
    fn folded(&self, id: NodeId) -> Vec<String> {
        let folds = self.folds.as_ref().expect("a folding cluster").lock().unwrap();
        folds[&id].values.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_log_s_folded_state_reaches_a_follower_behind_it_and_survives_restarts() {
    let config = LogConfig { segment_bytes: 256 * 1024, ..LogConfig::default() };
    let cluster = Cluster::start_folding(config).await;
    let mut sent = Vec::new();
    let mut produce = async |value: String| {
        let (_, end) = cluster.produce(&value).await;
        sent.extend([value.clone(), value]);
        end
    };
    let padding = "x".repeat(20_000);
    for i in 0..10 {
        produce(format!("early {i} {padding}")).await;
    }
    let leader = cluster.leader(None).await;
    let lagging = (1..=3).find(|id| *id != leader).expect("a follower");
    let other = (1..=3).find(|id| *id != leader && *id != lagging).expect("another");
    cluster.kill(lagging).await;
    let mut end = Offset(0);
    for i in 0..50 {
        end = produce(format!("late {i} {padding}")).await;
    }
    for id in [leader, other] {
        let replica = cluster.replica(id);
        assert!(replica.wait_for_high_watermark(end, PATIENCE).await, "node {id}");
        let purged = replica.compact(PATIENCE).await.expect("compacted");
        assert!(purged.is_some(), "node {id} had entries to compact");
    }
    let deadline = Instant::now() + PATIENCE;
    for id in [leader, other] {
        while cluster.replica(id).store().with_log(|log| log.log_start_offset()) == Offset(0) {
            assert!(Instant::now() < deadline, "node {id} deleted nothing within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The lagging follower takes the leader's snapshot, the fold's state with it.
    cluster.start_node(lagging).await;
    assert!(cluster.replica(lagging).wait_for_high_watermark(end, PATIENCE).await);
    let start = cluster.replica(lagging).store().with_log(|log| log.log_start_offset());
    assert!(start > Offset(0), "it went on from the snapshot");
    // A restart folds the saved snapshot and what came after it again.
    cluster.kill(other).await;
    cluster.start_node(other).await;
    let end = produce("after".to_owned()).await;
    for id in 1..=3 {
        assert!(cluster.replica(id).wait_for_high_watermark(end, PATIENCE).await, "node {id}");
        assert_eq!(cluster.folded(id), sent, "node {id}'s fold");
    }
}
