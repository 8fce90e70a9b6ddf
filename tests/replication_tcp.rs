//! Three replicas of one partition in one process, talking over real TCP connections on
//! 127.0.0.1-3 through the server's peer protocol, with a fault proxy on every directed link
//! (pass, drop, delay, reset): what is acknowledged survives every fault, exactly once and in
//! order, and the replicas end up holding the same log.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use spool_replication::{
    Call, NodeId, PartitionStateMachine, ProposeError, Replica, SegmentLogStore, Transport,
};
use spool_server::cluster::{Groups, PeerTransport, serve_peers};
use spool_server::testing::{Fault, FaultProxy};
use spool_storage::batch::{BatchBuilder, BatchIter, BatchKind, ProducerStamp};
use spool_storage::sim::{Rng, SimFileSystem};
use spool_storage::{LogConfig, Offset, TimestampMs};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const GROUP: &str = "events-0";
const PATIENCE: Duration = Duration::from_secs(30);
/// How long one attempt to produce waits before it counts as not acknowledged.
const ATTEMPT: Duration = Duration::from_secs(3);

/// One node's replica, found by the peer listener.
#[derive(Default)]
struct Slot(Mutex<Option<Arc<Replica>>>);

impl Groups for Slot {
    fn replica(&self, group: &str) -> Option<Arc<Replica>> {
        (group == GROUP).then(|| self.0.lock().unwrap().clone()).flatten()
    }

    fn has_registered(&self, _id: NodeId) -> bool {
        false
    }
}

/// Node `from`'s transport: every peer reached through the proxy of the link `from -> peer`.
struct Routed {
    inner: PeerTransport,
    routes: HashMap<NodeId, String>,
}

impl Transport for Routed {
    fn call<'a>(
        &'a self,
        target: NodeId,
        _address: &'a str,
        group: &'a str,
        message: Bytes,
        timeout: Duration,
    ) -> Call<'a> {
        self.inner.call(target, &self.routes[&target], group, message, timeout)
    }
}

struct Cluster {
    slots: BTreeMap<NodeId, Arc<Slot>>,
    /// The proxy of each directed link (from, to).
    links: BTreeMap<(NodeId, NodeId), FaultProxy>,
    stop: CancellationToken,
}

fn ip(id: NodeId) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8))
}

impl Cluster {
    async fn start() -> Cluster {
        let stop = CancellationToken::new();
        let mut slots = BTreeMap::new();
        let mut listeners: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
        for id in 1..=3 {
            let listener = TcpListener::bind((ip(id), 0)).await.expect("bind");
            listeners.insert(id, listener.local_addr().unwrap());
            let slot = Arc::new(Slot::default());
            tokio::spawn(serve_peers(listener, slot.clone(), None, stop.clone()));
            slots.insert(id, slot);
        }
        let mut links = BTreeMap::new();
        for from in 1..=3 {
            for to in (1..=3).filter(|to| *to != from) {
                let proxy = FaultProxy::start(ip(from), listeners[&to]).await.expect("proxy");
                links.insert((from, to), proxy);
            }
        }
        let members: BTreeMap<NodeId, String> =
            listeners.iter().map(|(id, address)| (*id, address.to_string())).collect();
        let cluster = Cluster { slots, links, stop };
        for id in 1..=3 {
            let routes = (1..=3)
                .filter(|to| *to != id)
                .map(|to| (to, cluster.links[&(id, to)].address().to_string()))
                .collect();
            let transport = Arc::new(Routed { inner: PeerTransport::new(None), routes });
            let fs = Arc::new(SimFileSystem::new());
            let config = LogConfig { segment_bytes: 256 * 1024, ..LogConfig::default() };
            let store = SegmentLogStore::open(fs, Path::new("/data/p"), config, TimestampMs(0))
                .expect("open");
            let replica = Replica::start(id, GROUP, store, PartitionStateMachine::new(), transport)
                .await
                .expect("start");
            *cluster.slots[&id].0.lock().unwrap() = Some(Arc::new(replica));
        }
        cluster.replica(1).bootstrap(&members).await.expect("bootstrap");
        cluster
    }

    fn replica(&self, id: NodeId) -> Arc<Replica> {
        self.slots[&id].0.lock().unwrap().clone().expect("running")
    }

    /// Sets the fault of every link into and out of `node`.
    fn isolate(&self, node: NodeId, fault: Fault) {
        for ((from, to), proxy) in &self.links {
            if *from == node || *to == node {
                proxy.set(fault);
            }
        }
    }

    fn heal(&self) {
        self.links.values().for_each(|proxy| proxy.set(Fault::Pass));
    }

    /// The leader two replicas agree on, other than `not`.
    async fn leader(&self, not: Option<NodeId>) -> NodeId {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut votes: BTreeMap<NodeId, usize> = BTreeMap::new();
            for id in 1..=3 {
                if let Some((leader, _)) = self.replica(id).leader() {
                    *votes.entry(leader).or_default() += 1;
                }
            }
            if let Some((leader, _)) = votes.into_iter().find(|(l, n)| *n >= 2 && Some(*l) != not) {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One attempt to produce `value` at whoever leads: its offsets if acknowledged.
    async fn attempt(&self, value: &str) -> Option<(Offset, Offset)> {
        let leader = self.leader(None).await;
        let replica = self.replica(leader);
        let propose = replica.propose(batch(value));
        match tokio::time::timeout(ATTEMPT, propose).await {
            Ok(Ok(offsets)) => Some(offsets),
            Ok(Err(ProposeError::NotLeader { .. })) | Err(_) => None,
            Ok(Err(error)) => panic!("{value}: {error}"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn batch(value: &str) -> Bytes {
    let mut builder = BatchBuilder::new(BytesMut::new());
    builder.push(TimestampMs(1_000), None, Some(value.as_bytes()), &[]);
    builder.finish(ProducerStamp::NONE).freeze()
}

/// Every record value in a replica's log below `end`, in order.
fn values(replica: &Replica, end: Offset) -> Vec<String> {
    replica.store().with_log(|log| {
        let mut out = Vec::new();
        let mut offset = log.log_start_offset();
        while offset < end {
            let read = log.read_written(offset, 1 << 20).expect("read");
            if read.bytes.is_empty() {
                break;
            }
            for view in BatchIter::new(&read.bytes) {
                let view = view.expect("intact");
                if view.header().entry.kind != BatchKind::Records
                    || view.header().base_offset >= end
                {
                    continue;
                }
                for record in view.records().iter() {
                    let value = record.expect("record").value.unwrap_or_default().to_vec();
                    out.push(String::from_utf8(value).expect("UTF-8"));
                }
            }
            offset = read.next_offset;
        }
        out
    })
}

/// Waits for every replica to apply up to `end`; their logs then hold the same values below
/// it, each value at most once, and every acknowledged one in the order acknowledged.
async fn check(cluster: &Cluster, end: Offset, acknowledged: &[String]) {
    for id in 1..=3 {
        assert!(cluster.replica(id).wait_for_high_watermark(end, PATIENCE).await, "node {id}");
    }
    let logs: Vec<Vec<String>> = (1..=3).map(|id| values(&cluster.replica(id), end)).collect();
    assert_eq!(logs[0], logs[1], "nodes 1 and 2 differ");
    assert_eq!(logs[0], logs[2], "nodes 1 and 3 differ");
    let mut seen = std::collections::BTreeSet::new();
    assert!(logs[0].iter().all(|value| seen.insert(value.clone())), "a value stored twice");
    let order: Vec<&String> = logs[0].iter().filter(|v| acknowledged.contains(v)).collect();
    assert_eq!(order.len(), acknowledged.len(), "an acknowledged value is missing");
    assert!(order.iter().zip(acknowledged).all(|(a, b)| *a == b), "acknowledged out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_acknowledged_survives_dropped_delayed_and_reset_links() {
    let seed = std::env::var("SPOOL_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    println!("seed {seed} (SPOOL_TEST_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let cluster = Cluster::start().await;
    let mut acknowledged = Vec::new();
    let mut end = Offset(0);
    for round in 0..6 {
        let links: Vec<_> = cluster.links.keys().copied().collect();
        for _ in 0..2 {
            let link = links[rng.below(links.len() as u64) as usize];
            let fault = match rng.below(4) {
                0 => Fault::Drop,
                1 => Fault::Delay(Duration::from_millis(1 + rng.below(20))),
                2 => Fault::Reset,
                _ => Fault::Pass,
            };
            println!("round {round}: link {link:?} {fault:?}");
            cluster.links[&link].set(fault);
        }
        for i in 0..5 {
            let value = format!("{round}-{i}");
            if let Some((_, next)) = cluster.attempt(&value).await {
                acknowledged.push(value);
                end = end.max(next);
            }
        }
        cluster.heal();
    }
    // Everything healed: the cluster takes writes again.
    for i in 0..3 {
        let value = format!("healed-{i}");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some((_, next)) = cluster.attempt(&value).await {
                acknowledged.push(value);
                end = end.max(next);
                break;
            }
            assert!(Instant::now() < deadline, "{value} never acknowledged after healing");
        }
    }
    check(&cluster, end, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_by_dropped_links_never_acknowledges() {
    let cluster = Cluster::start().await;
    let first = cluster.attempt("first").await.expect("acknowledged").1;
    let old = cluster.leader(None).await;
    cluster.isolate(old, Fault::Drop);
    let isolated = cluster.replica(old);
    let stranded = tokio::spawn(async move { isolated.propose(batch("stranded")).await });
    let new = cluster.leader(Some(old)).await;
    let mut end = first;
    let mut acknowledged = vec!["first".to_owned()];
    for value in ["second", "third"] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let replica = cluster.replica(new);
            let propose = replica.propose(batch(value));
            if let Ok(Ok((_, next))) = tokio::time::timeout(ATTEMPT, propose).await {
                end = next;
                acknowledged.push(value.to_owned());
                break;
            }
            assert!(Instant::now() < deadline, "{value} never acknowledged");
        }
    }
    cluster.heal();
    match tokio::time::timeout(PATIENCE, stranded).await {
        Ok(Ok(Err(_))) => {}
        other => panic!("the stranded batch was not refused: {other:?}"),
    }
    check(&cluster, end, &acknowledged).await;
    assert!(!values(&cluster.replica(old), end).contains(&"stranded".to_owned()));
}

#[tokio::test]
async fn the_peer_listener_refuses_what_it_cannot_take() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start().await;
    let node = cluster.links[&(2, 1)].address();
    // Through the transport: a group this node does not have, and a message that is no
    // replica's message.
    let transport = PeerTransport::new(None);
    let address = node.to_string();
    let unknown = transport.call(1, &address, "nope-0", Bytes::from_static(b"x"), PATIENCE).await;
    let unknown = unknown.unwrap_err().to_string();
    assert!(unknown.contains("no replica of \"nope-0\""), "{unknown}");
    let garbage = transport.call(1, &address, GROUP, Bytes::from_static(b"\x07"), PATIENCE).await;
    let garbage = garbage.expect("answered");
    assert!(String::from_utf8_lossy(&garbage).contains("5-byte head"), "{garbage:?}");
    // A frame past the limit ends the connection before its body is read.
    let mut stream = tokio::net::TcpStream::connect(node).await.unwrap();
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the connection stays open: {read:?}");
    // The replicas still work.
    cluster.attempt("after").await.expect("acknowledged");
}
