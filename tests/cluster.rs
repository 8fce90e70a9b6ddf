//! Three `spool` servers in one process forming a cluster on 127.0.0.1-3: topics created on
//! any node exist on every node, partitions are replicated, every node takes writes (a
//! follower passes them to the leader), every node serves what is committed, a dead leader is
//! replaced, and an idempotent producer's retries across the change store nothing twice.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::tls::PeerPki;
use common::{TestServer, always, record, value};
use kafka_protocol::protocol::StrBytes;
use spool_client::{Client, ElectionOutcome, ProducerConfig, Record as ClientRecord};
use spool_replication::Transport;
use spool_server::ClusterSetup;
use spool_server::cluster::{ClusterOptions, PeerTransport};
use spool_server::testing::{Fault, FaultProxy};
use tokio::net::TcpListener;
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(30);

fn ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8))
}

struct Cluster {
    /// By node id - 1; `None` once stopped.
    nodes: Vec<Option<TestServer>>,
    /// In front of each node's peer listener, by node id - 1 (see `start_behind_proxies`).
    proxies: Vec<FaultProxy>,
    /// Each node's Kafka listener, by node id - 1 (see `start_with_kafka`).
    kafka: Vec<std::net::SocketAddr>,
    /// Each node's peer address, by node id - 1.
    peers: Vec<std::net::SocketAddr>,
    dirs: Vec<tempfile::TempDir>,
    /// Where each node served clients when it last ran, by node id - 1.
    clients: Vec<Option<std::net::SocketAddr>>,
    /// The node not started yet, with its peer listener (see `start_but_one`).
    late: Option<(u64, TcpListener)>,
    /// Whether the nodes hand leadership back to preferred leaders by themselves.
    hand_back_leaders: bool,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with(false, false).await
    }

    /// A cluster whose nodes speak mutual TLS to each other, with certificates from `pki`.
    async fn start_over_tls(pki: &PeerPki) -> Cluster {
        Cluster::start_with_tls(false, false, Some(pki)).await
    }

    /// A cluster whose nodes reach each other's peer listeners only through a fault proxy:
    /// a fault set on node N's proxy is on everything the others send N.
    async fn start_behind_proxies() -> Cluster {
        Cluster::start_with(true, false).await
    }

    /// A cluster whose nodes each have a Kafka listener, on 127.0.0.N.
    async fn start_with_kafka() -> Cluster {
        Cluster::start_with(false, true).await
    }

    async fn start_with(proxied: bool, kafka: bool) -> Cluster {
        Cluster::start_with_tls(proxied, kafka, None).await
    }

    async fn start_with_tls(proxied: bool, kafka: bool, pki: Option<&PeerPki>) -> Cluster {
        Cluster::start_nodes(proxied, kafka, pki, None, true).await
    }

    /// [`Cluster::start_with_kafka`] whose nodes leave leaders where elections put them
    /// (`hand_back_leaders` off).
    async fn start_with_kafka_holding_leaders() -> Cluster {
        Cluster::start_nodes(false, true, None, None, false).await
    }

    /// A cluster behind proxies (as `start_behind_proxies`) whose node `late` is not started
    /// yet: its peer listener is bound, and `start_late` starts it.
    async fn start_but_one(late: u64) -> Cluster {
        Cluster::start_nodes(true, false, None, Some(late), true).await
    }

    async fn start_nodes(
        proxied: bool,
        kafka: bool,
        pki: Option<&PeerPki>,
        late: Option<u64>,
        hand_back_leaders: bool,
    ) -> Cluster {
        let mut listeners = Vec::new();
        for id in 1..=3 {
            listeners.push(TcpListener::bind((ip(id), 0)).await.expect("bind a peer listener"));
        }
        let mut proxies = Vec::new();
        if proxied {
            for (id, listener) in (1..).zip(&listeners) {
                let target = listener.local_addr().unwrap();
                proxies.push(FaultProxy::start(ip(id), target).await.expect("a proxy"));
            }
        }
        let peers: Vec<(u64, std::net::SocketAddr)> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let address =
                    proxies.get(i).map_or_else(|| l.local_addr().unwrap(), FaultProxy::address);
                (i as u64 + 1, address)
            })
            .collect();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        let mut kafka_addresses = Vec::new();
        let mut late_listener = None;
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            if late == Some(id) {
                late_listener = Some((id, listener));
                nodes.push(None);
                continue;
            }
            let tls = pki.map(|pki| pki.node(id));
            let mut options = ClusterOptions::new(id, &peers, tls).expect("a valid cluster");
            options.hand_back_leaders = hand_back_leaders;
            let setup = ClusterSetup { options, listener: Some(listener) };
            let mut serve = spool_server::ServeOptions::default();
            if kafka {
                let listener = TcpListener::bind((ip(id), 0)).await.expect("bind a Kafka listener");
                kafka_addresses.push(listener.local_addr().unwrap());
                serve.kafka = Some(listener);
            }
            let server = spool_server::testing::TestServer::start_cluster_node_with(
                dirs[i].path(),
                ip(id),
                setup,
                serve,
            )
            .await
            .expect("start a node");
            nodes.push(Some(server));
        }
        for node in nodes.iter().flatten() {
            tokio::time::timeout(PATIENCE, node.wait_until_serving())
                .await
                .expect("every node joins")
                .expect("health");
        }
        let clients = nodes.iter().map(|n| n.as_ref().map(|n| n.address())).collect();
        Cluster {
            nodes: nodes.into_iter().map(|n| n.map(TestServer::from)).collect(),
            clients,
            proxies,
            kafka: kafka_addresses,
            peers: peers.iter().map(|(_, address)| *address).collect(),
            dirs,
            late: late_listener,
            hand_back_leaders,
        }
    }

    /// Starts the node `start_but_one` left out, on its empty data directory, without
    /// waiting for it to serve.
    async fn start_late(&mut self) {
        let (id, listener) = self.late.take().expect("a node left to start");
        let peers: Vec<(u64, std::net::SocketAddr)> = (1..).zip(self.peers.clone()).collect();
        let options = ClusterOptions::new(id, &peers, None).expect("a valid cluster");
        let setup = ClusterSetup { options, listener: Some(listener) };
        let server = spool_server::testing::TestServer::start_cluster_node_with(
            self.dirs[id as usize - 1].path(),
            ip(id),
            setup,
            spool_server::ServeOptions::default(),
        )
        .await
        .expect("start the late node");
        self.clients[id as usize - 1] = Some(server.address());
        self.nodes[id as usize - 1] = Some(TestServer::from(server));
    }

    /// Starts node `id` again on its data directory, peer address and client address (a
    /// cluster started without proxies or TLS), once it has stopped; returns once it serves.
    async fn restart(&mut self, id: u64) {
        self.restart_with(id, spool_server::ServeOptions::default()).await;
    }

    /// [`Cluster::restart`] with `options` (an advertised address, say).
    async fn restart_with(&mut self, id: u64, serve: spool_server::ServeOptions) {
        let at = id as usize - 1;
        assert!(self.nodes[at].is_none(), "node {id} is running");
        let listener = TcpListener::bind(self.peers[at]).await.expect("its peer address again");
        let peers: Vec<(u64, std::net::SocketAddr)> = (1..).zip(self.peers.clone()).collect();
        let mut options = ClusterOptions::new(id, &peers, None).expect("a valid cluster");
        options.hand_back_leaders = self.hand_back_leaders;
        let setup = ClusterSetup { options, listener: Some(listener) };
        let client = self.clients[at].unwrap_or_else(|| std::net::SocketAddr::new(ip(id), 0));
        let server = spool_server::testing::TestServer::start_cluster_node_at(
            self.dirs[at].path(),
            client,
            setup,
            serve,
        )
        .await
        .expect("restart a node");
        tokio::time::timeout(PATIENCE, server.wait_until_serving())
            .await
            .expect("it joins again")
            .expect("health");
        self.nodes[at] = Some(TestServer::from(server));
    }

    fn node(&self, id: u64) -> &TestServer {
        self.nodes[id as usize - 1].as_ref().expect("running")
    }

    fn running(&self) -> Vec<u64> {
        (1..=3).filter(|id| self.nodes[*id as usize - 1].is_some()).collect()
    }

    /// Creates `topic` (always synced) through node `at`, and waits until every running node
    /// has applied it (requests catch up with the cluster's metadata before they answer
    /// NOT_FOUND, but a listing of topics shows what its node applied).
    async fn create_topic(&self, at: u64, topic: &str, partitions: u32) {
        self.node(at).create_topic(topic, partitions, always()).await;
        for id in self.running() {
            let deadline = Instant::now() + PATIENCE;
            while self.node(id).describe(topic).await.is_err() {
                assert!(Instant::now() < deadline, "node {id} never applied {topic}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Creates `topic` (one partition, always synced) with 64 KiB segments through node `at`.
    async fn create_topic_of_small_segments(&self, at: u64, topic: &str) {
        use spool_proto::v1::{CreateTopicRequest, FsyncPolicy, TopicConfig, fsync_policy::Policy};
        let config = TopicConfig {
            partitions: 1,
            segment_bytes: Some(64 * 1024),
            fsync: Some(FsyncPolicy { policy: Some(Policy::Always(Default::default())) }),
            ..Default::default()
        };
        let request = CreateTopicRequest { name: topic.into(), config: Some(config) };
        self.node(at).topics().await.create_topic(request).await.expect("created");
    }

    /// Produces `value` to partition 0 of `topic` through node `at`, retrying while no
    /// leader is elected, until it is acknowledged; the offset.
    async fn produce_at(&self, at: u64, topic: &str, value: &str) -> u64 {
        self.produce_to(at, topic, 0, value).await
    }

    /// [`Cluster::produce_at`] to `partition`.
    async fn produce_to(&self, at: u64, topic: &str, partition: u32, value: &str) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.node(at).produce(topic, Some(partition), vec![record(value)]).await {
                Ok(produced) => return produced.appends[0].base_offset,
                // No leader yet: an election is on.
                Err(status)
                    if matches!(status.code(), Code::FailedPrecondition | Code::Unavailable) => {}
                Err(status) => panic!("producing {value}: {status:?}"),
            }
            assert!(Instant::now() < deadline, "{value} not acknowledged within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Produces `value` through the first running node.
    async fn produce(&self, topic: &str, value: &str) -> u64 {
        self.produce_at(self.running()[0], topic, value).await
    }

    /// The leader of partition 0 of `topic`, as node `id` knows it once it knows one.
    async fn leader(&self, id: u64, topic: &str) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let described = self.node(id).describe(topic).await.expect("described");
            if let Some(leader) = described.partitions[0].leader {
                return leader;
            }
            assert!(Instant::now() < deadline, "node {id} never knew a leader of {topic}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node that coordinates the cluster's groups, as node `id` names it once it knows.
    async fn group_coordinator(&self, id: u64) -> u64 {
        use spool_proto::v1::ListGroupsRequest;
        use spool_proto::v1::group_service_client::GroupServiceClient;
        let mut groups = GroupServiceClient::new(self.node(id).channel().await);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let named = match groups.list_groups(ListGroupsRequest {}).await {
                Ok(_) => Some(id),
                Err(status) => status
                    .metadata()
                    .get("spool-leader-id")
                    .and_then(|named| named.to_str().ok()?.parse().ok()),
            };
            if let Some(named) = named {
                return named;
            }
            assert!(Instant::now() < deadline, "node {id} never named a group coordinator");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` serves `count` records of partition 0 of `topic`; their values.
    async fn read(&self, id: u64, topic: &str, count: usize) -> Vec<String> {
        self.read_partition(id, topic, 0, count).await
    }

    /// [`Cluster::read`] of `partition`: a follower serves what it has applied, which may be
    /// a heartbeat behind what the leader acknowledged.
    async fn read_partition(
        &self,
        id: u64,
        topic: &str,
        partition: u32,
        count: usize,
    ) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.node(id).describe(topic).await.is_ok() {
                let records = self.node(id).fetch_all(topic, partition, 0).await;
                if records.len() >= count {
                    return records.iter().map(|r| value(r).to_owned()).collect();
                }
            }
            assert!(Instant::now() < deadline, "node {id} never served {count} records of {topic}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_on_any_node_is_replicated_and_every_node_takes_writes() {
    let cluster = Cluster::start().await;
    cluster.create_topic(2, "events", 1).await;
    let mut topics = cluster.node(3).topics().await;
    let request = spool_proto::v1::CreateTopicRequest { name: "events".into(), config: None };
    let again = topics.create_topic(request);
    let again = again.await.expect_err("created twice");
    assert!(matches!(again.code(), Code::AlreadyExists | Code::Unavailable), "{again:?}");
    let mut expected = Vec::new();
    let mut last = 0;
    for i in 0..20 {
        let value = format!("event {i}");
        last = cluster.produce("events", &value).await;
        expected.push(value);
    }
    for id in 1..=3 {
        assert_eq!(cluster.read(id, "events", 20).await, expected, "node {id}");
    }
    // Every node takes a produce: the two followers pass theirs to the leader, and offsets
    // stay one sequence (a leader change would add a control batch between two records).
    let leader = cluster.leader(1, "events").await;
    for id in 1..=3 {
        let offset = cluster.produce_at(id, "events", &format!("via node {id}")).await;
        assert!(offset > last, "through node {id} (the leader is {leader}): {offset} after {last}");
        last = offset;
        expected.push(format!("via node {id}"));
    }
    for id in 1..=3 {
        assert_eq!(cluster.read(id, "events", 23).await, expected, "node {id}");
    }
}

/// Nodes that speak mutual TLS to each other replicate as they do over plain TCP; the peer
/// listener answers a caller whose certificate the cluster's CA signed, and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_speak_mutual_tls_and_refuse_a_caller_the_ca_did_not_sign() {
    let pki = PeerPki::new();
    let cluster = Cluster::start_over_tls(&pki).await;
    cluster.create_topic(1, "secret", 1).await;
    let expected: Vec<String> = (0..5).map(|i| format!("secret {i}")).collect();
    for (id, value) in (1..=3).cycle().zip(&expected) {
        cluster.produce_at(id, "secret", value).await;
    }
    for id in 1..=3 {
        assert_eq!(cluster.read(id, "secret", 5).await, expected, "node {id}");
    }
    let address = cluster.peers[0].to_string();
    let call = |transport: PeerTransport| {
        let address = address.clone();
        async move {
            let message = bytes::Bytes::from_static(b"hello");
            let timeout = Duration::from_secs(5);
            let answer = transport.call(1, &address, "no-such-group", message, timeout).await;
            answer.expect_err("no such group").to_string()
        }
    };
    // A node's certificate: the listener takes the call, and finds no such group.
    let node = pki.node(2).connector().expect("a connector");
    let answered = call(PeerTransport::new(Some(node))).await;
    assert!(answered.contains("no replica of \"no-such-group\""), "{answered}");
    for (caller, transport) in [
        ("plain TCP", None),
        ("another CA's certificate", Some(pki.stranger())),
        ("trusting another CA only", Some(pki.distrustful(2))),
    ]
    .map(|(caller, tls)| (caller, PeerTransport::new(tls.map(|tls| tls.connector().unwrap()))))
    {
        let refused = call(transport).await;
        assert!(!refused.contains("no replica"), "{caller}: {refused}");
    }
}

/// With the CA's revocation list, a node refuses a retired node's certificate both ways: as
/// a caller, and as the peer a caller reaches (a caller with the list refuses it); the
/// cluster's own nodes go on replicating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_peer_certificate_is_refused_both_ways() {
    let pki = PeerPki::revoking_retired();
    let cluster = Cluster::start_over_tls(&pki).await;
    cluster.create_topic(1, "guarded", 1).await;
    cluster.produce_at(2, "guarded", "kept").await;
    assert_eq!(cluster.read(3, "guarded", 1).await, ["kept"]);
    let call = |transport: PeerTransport, address: String| async move {
        let message = bytes::Bytes::from_static(b"hello");
        let answer =
            transport.call(1, &address, "no-such-group", message, Duration::from_secs(5)).await;
        answer.expect_err("no such group").to_string()
    };
    let node_1 = cluster.peers[0].to_string();
    let current = PeerTransport::new(Some(pki.node(2).connector().unwrap()));
    let answered = call(current, node_1.clone()).await;
    assert!(answered.contains("no replica of \"no-such-group\""), "{answered}");
    let retired = PeerTransport::new(Some(pki.retired(2).connector().unwrap()));
    let refused = call(retired, node_1).await;
    assert!(!refused.contains("no replica"), "a retired caller: {refused}");
    // A listener that presents a retired certificate, called by a node that has the list.
    let listener = tokio::net::TcpListener::bind((ip(4), 0)).await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let acceptor = pki.retired(4).acceptor().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let groups: std::sync::Arc<dyn spool_server::cluster::Groups> = std::sync::Arc::new(NoGroups);
    tokio::spawn(spool_server::cluster::serve_peers(
        listener,
        groups,
        Some(acceptor),
        stop.clone(),
    ));
    let unrevoked = PeerTransport::new(Some(pki.retired(3).connector().unwrap()));
    let reached = call(unrevoked, address.clone()).await;
    assert!(reached.contains("no replica"), "without the list it is reached: {reached}");
    let node = PeerTransport::new(Some(pki.node(3).connector().unwrap()));
    let refused = call(node, address).await;
    assert!(!refused.contains("no replica"), "a retired listener: {refused}");
    stop.cancel();
}

/// A node reads its revocation list's file again as it changes: a certificate the new list
/// revokes is refused from then on, its open connection ends, and the nodes' own
/// connections are opened again under the new list and go on replicating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_revocation_list_is_reloaded_while_the_nodes_run() {
    let dir = tempfile::tempdir().unwrap();
    let pki = PeerPki::with_crl_file(dir.path().join("crl.pem"));
    let cluster = Cluster::start_over_tls(&pki).await;
    cluster.create_topic(1, "guarded", 1).await;
    cluster.produce_at(2, "guarded", "before").await;
    let node_1 = cluster.peers[0].to_string();
    let retired = PeerTransport::new(Some(pki.retired(2).connector().unwrap()));
    let call = || async {
        let message = bytes::Bytes::from_static(b"hello");
        let answer =
            retired.call(1, &node_1, "no-such-group", message, Duration::from_secs(5)).await;
        answer.expect_err("no such group").to_string()
    };
    let answered = call().await;
    assert!(answered.contains("no replica"), "not revoked yet: {answered}");
    pki.revoke_retired();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answered = call().await;
        if !answered.contains("no replica") {
            // Its connection ended, or its new one was refused: no call waits for an answer.
            assert!(!answered.contains("did not answer"), "{answered}");
            break;
        }
        assert!(Instant::now() < deadline, "the new list was never taken: {answered}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = call().await;
    assert!(!refused.contains("no replica"), "a revoked caller: {refused}");
    assert!(!refused.contains("did not answer"), "a revoked caller: {refused}");
    cluster.produce_at(3, "guarded", "after").await;
    assert_eq!(cluster.read(1, "guarded", 2).await, ["before", "after"]);
}

/// A peer listener that holds no replica.
struct NoGroups;

impl spool_server::cluster::Groups for NoGroups {
    fn replica(&self, _group: &str) -> Option<std::sync::Arc<spool_replication::Replica>> {
        None
    }

    fn has_registered(&self, _id: u64) -> bool {
        false
    }
}

/// A plain producer's batch that reaches a node while its partition elects its first leader
/// waits for the election instead of being refused: no retry is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_during_a_partitions_first_election_waits_for_it() {
    let cluster = Cluster::start().await;
    cluster.node(1).create_topic("fresh", 4, always()).await;
    let sends = (1..=3).flat_map(|id| (0..4).map(move |partition| (id, partition)));
    let cluster = &cluster;
    let sends = sends.map(|(id, partition)| async move {
        let sent = cluster.node(id).produce("fresh", Some(partition), vec![record("first")]);
        (id, partition, sent.await)
    });
    for (id, partition, sent) in futures_util::future::join_all(sends).await {
        sent.unwrap_or_else(|status| {
            panic!("through node {id}, partition {partition}: {status:?}")
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "orders", 1).await;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let value = format!("before {i}");
        cluster.produce("orders", &value).await;
        acknowledged.push(value);
    }
    let leader = cluster.leader(1, "orders").await;
    let stopped = Instant::now();
    cluster.nodes[leader as usize - 1].take().expect("running").shutdown().await;
    for i in 0..10 {
        let value = format!("after {i}");
        cluster.produce("orders", &value).await;
        acknowledged.push(value);
    }
    println!("writes resumed {:?} after the leader stopped", stopped.elapsed());
    for id in cluster.running() {
        assert_eq!(cluster.read(id, "orders", acknowledged.len()).await, acknowledged, "node {id}");
    }
}

/// `acks=leader` is answered once the leader has appended the batch: a leader whose followers
/// are all stopped still answers it, with the offset every replica gives the batch once the
/// followers are back and it is committed; consumers see it only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acks_leader_write_is_answered_by_a_leader_without_its_followers() {
    use spool_proto::v1::{Acks, ProduceRequest, RecordList, produce_request};
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "alone", 1).await;
    let leader = cluster.leader(1, "alone").await;
    let first = cluster.produce_at(leader, "alone", "committed").await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        cluster.nodes[*id as usize - 1].take().expect("running").shutdown().await;
    }
    let request = ProduceRequest {
        correlation_id: 0,
        topic: "alone".into(),
        partition: Some(0),
        acks: Acks::Leader as i32,
        payload: Some(produce_request::Payload::Records(RecordList {
            records: vec![record("appended by the leader alone")],
        })),
        producer: None,
    };
    let mut producer = cluster.node(leader).producer().await;
    let answer = tokio::time::timeout(PATIENCE, producer.produce(request))
        .await
        .expect("answered without the followers")
        .expect("answered on append")
        .into_inner();
    let offset = answer.appends[0].base_offset;
    assert!(offset > first, "after the first record: {offset}");
    let described = cluster.node(leader).describe("alone").await.expect("described");
    assert_eq!(described.partitions[0].log_end_offset, first + 1, "not visible: not committed");
    for id in followers {
        cluster.restart(id).await;
    }
    for id in cluster.running() {
        let stored = cluster.read(id, "alone", 2).await;
        assert_eq!(stored, ["committed", "appended by the leader alone"], "node {id}");
        let records = cluster.node(id).fetch_all("alone", 0, 0).await;
        assert_eq!(records[1].offset, offset, "node {id}: the leader's offset");
    }
}

/// A Rust client's idempotent producer writes through a follower (not following leaders)
/// while the leader stops: the batches the old leader may have committed are retried through
/// the new one, which answers them as duplicates. Every record is stored exactly once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_producer_stores_each_record_once_across_a_failover() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "payments", 1).await;
    let leader = cluster.leader(1, "payments").await;
    let through = if leader == 1 { 2 } else { 1 };
    let client = Client::connect(&format!("http://{}", cluster.node(through).address()))
        .await
        .expect("connect");
    let config = ProducerConfig {
        idempotent: true,
        batch_records_max: 10,
        retries_max: 200,
        follow_leaders: false,
        ..ProducerConfig::default()
    };
    let producer = client.producer("payments", config).await.expect("an idempotent producer");
    let total = 600;
    let mut deliveries = Vec::new();
    for i in 0..total {
        let value = format!("payment {i}");
        let record = ClientRecord::value(value.as_bytes()).with_partition(0);
        deliveries.push(producer.send(record).await.expect("buffered"));
        if i == total / 3 {
            // Let some batches be acknowledged, then stop the leader under the rest.
            producer.flush().await.expect("the first third acknowledged");
            cluster.nodes[leader as usize - 1].take().expect("running").shutdown().await;
        }
    }
    let mut offsets = Vec::new();
    for delivery in deliveries {
        offsets.push(delivery.wait().await.expect("acknowledged").offset.expect("an offset"));
    }
    // A new leader's first entry, a control batch, takes an offset between two records.
    assert!(offsets.windows(2).all(|w| w[1] > w[0]), "offsets in order: {offsets:?}");
    let expected: Vec<String> = (0..total).map(|i| format!("payment {i}")).collect();
    for id in cluster.running() {
        let stored = cluster.read(id, "payments", total).await;
        assert_eq!(stored.len(), total, "node {id} stored a record twice");
        assert!(stored == expected, "node {id} stored the records out of order or changed");
    }
}

/// A client given every node's address goes on through another node when the one it talks
/// to stops: an idempotent producer's batches are each stored once, in order, and a consumer
/// of a client that has not called since the node stopped subscribes through another at
/// once, and reads them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_every_node_goes_on_through_another_when_its_node_stops() {
    use spool_client::{Follow, StartAt};
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "rides", 1).await;
    let urls: Vec<String> =
        (1..=3).map(|id| format!("http://{}", cluster.node(id).address())).collect();
    let client = Client::connect(&urls.join(",")).await.expect("connect");
    let reader = Client::connect(&urls.join(",")).await.expect("connect");
    let config = ProducerConfig { idempotent: true, retries_max: 200, ..ProducerConfig::default() };
    let producer = client.producer("rides", config).await.expect("an idempotent producer");
    let total = 200;
    let mut deliveries = Vec::new();
    for i in 0..total {
        let value = format!("ride {i}");
        let record = ClientRecord::value(value.as_bytes()).with_partition(0);
        deliveries.push(producer.send(record).await.expect("buffered"));
        if i == total / 2 {
            producer.flush().await.expect("the first half acknowledged");
            // The node the client talks to: the first it reached.
            cluster.nodes[0].take().expect("running").shutdown().await;
        }
    }
    for delivery in deliveries {
        delivery.wait().await.expect("acknowledged through another node");
    }
    // Live: the node it reads through may be a follower a heartbeat behind the leader that
    // acknowledged the last batches, so its end at the start may not hold them all yet.
    let mut consumer = reader
        .subscribe("rides", 0, StartAt::Earliest, Follow::Live)
        .await
        .expect("subscribed through another node");
    let mut values = Vec::new();
    let read = tokio::time::timeout(PATIENCE, async {
        while values.len() < total {
            let polled = consumer.poll().await.expect("polled").expect("a live subscription");
            for record in polled.records() {
                let record = record.expect("a record");
                let value = record.value.unwrap_or_default();
                values.push(String::from_utf8_lossy(value).into_owned());
            }
        }
    });
    read.await.unwrap_or_else(|_| panic!("only {} records came", values.len()));
    let expected: Vec<String> = (0..total).map(|i| format!("ride {i}")).collect();
    assert!(values == expected, "each record once, in order: {values:?}");
}

/// Every partition's leader, as every running node names it, once they all name the same
/// ones.
async fn agreed_leaders(cluster: &Cluster, topic: &str) -> Vec<u64> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut named = Vec::new();
        for id in cluster.running() {
            let described = cluster.node(id).describe(topic).await.expect("described");
            named.push(described.partitions.iter().map(|p| p.leader).collect::<Vec<_>>());
        }
        if named.iter().all(|leaders| leaders == &named[0] && leaders.iter().all(Option::is_some)) {
            return named[0].iter().map(|leader| leader.expect("named")).collect();
        }
        assert!(Instant::now() < deadline, "the nodes never agreed on {topic}'s leaders");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Batches the running nodes passed on to a leader for their clients.
fn passed_on(cluster: &Cluster) -> u64 {
    cluster.running().iter().map(|id| cluster.node(*id).metrics().passed_on_batches()).sum()
}

/// Sends `count` records to each of `partitions` and waits for every acknowledgement; whether
/// the cluster's leaders of `topic` stayed where they were meanwhile, and so whether every
/// batch could have gone straight to its leader.
async fn produce_while_leaders_stay(
    cluster: &Cluster,
    producer: &spool_client::Producer,
    topic: &str,
    partitions: &[u32],
    count: usize,
) -> bool {
    let before = agreed_leaders(cluster, topic).await;
    let mut deliveries = Vec::new();
    for i in 0..count {
        for partition in partitions {
            let value = format!("record {i} of partition {partition}");
            let record = ClientRecord::value(value.as_bytes()).with_partition(*partition);
            deliveries.push(producer.send(record).await.expect("buffered"));
        }
    }
    for delivery in deliveries {
        delivery.wait().await.expect("acknowledged");
    }
    agreed_leaders(cluster, topic).await == before
}

/// A node that advertises a name for its gRPC listener (`--advertised`) is named by it: in
/// every node's cluster status, as the leader's address in a topic's description, and where
/// a producer sends the partitions it leads.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_is_named_by_the_address_it_advertises() {
    let mut cluster = Cluster::start().await;
    let serving = cluster.node(1).address();
    cluster.nodes[0].take().expect("running").shutdown().await;
    // A name for the same listener: what a node bound to every interface would advertise.
    let advertised = format!("localhost:{}", serving.port());
    let options = spool_server::ServeOptions {
        advertised: Some(advertised.parse().expect("HOST:PORT")),
        ..Default::default()
    };
    cluster.restart_with(1, options).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut named = Vec::new();
        for id in cluster.running() {
            let mut topics = cluster.node(id).topics().await;
            let request = spool_proto::v1::DescribeClusterRequest {};
            let status = topics.describe_cluster(request).await.expect("status");
            let node = status.into_inner().nodes.into_iter().find(|node| node.id == 1);
            named.push(node.and_then(|node| node.client_address));
        }
        if named.iter().all(|address| address.as_deref() == Some(advertised.as_str())) {
            break;
        }
        assert!(Instant::now() < deadline, "node 1's address as the nodes name it: {named:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A topic of one replica per partition, one partition on each node: node 1 leads its
    // own, the topic's description names it by the advertised address, and a producer that
    // reached node 2 sends that partition there, with nothing passed on.
    let config = spool_proto::v1::TopicConfig {
        partitions: 3,
        replication_factor: Some(1),
        ..Default::default()
    };
    let request =
        spool_proto::v1::CreateTopicRequest { name: "named".into(), config: Some(config) };
    cluster.node(2).topics().await.create_topic(request).await.expect("created");
    let leaders = agreed_leaders(&cluster, "named").await;
    let on_node_1 = leaders.iter().position(|leader| *leader == 1).expect("a partition on node 1");
    let described = cluster.node(2).describe("named").await.expect("described");
    let named = described.partitions[on_node_1].leader_address.as_deref();
    assert_eq!(named, Some(advertised.as_str()));
    let client =
        Client::connect(&format!("http://{}", cluster.node(2).address())).await.expect("connect");
    let producer = client.producer("named", ProducerConfig::default()).await.expect("a producer");
    let before = passed_on(&cluster);
    let stayed = produce_while_leaders_stay(&cluster, &producer, "named", &[0, 1, 2], 20).await;
    assert!(stayed, "a partition of one replica keeps its leader");
    assert_eq!(passed_on(&cluster), before, "batches passed on to a leader");
    producer.close().await.expect("closed");
}

/// A Rust producer given one node sends each partition's batches to that partition's leader,
/// so no node passes any on; when a leader stops, the partition's batches go on (through
/// another node meanwhile) and then to the new leader, and when the node comes back and leads
/// a partition again, that partition's go to it. A run in which an election moved a leader proves nothing about routing and
/// is run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_sends_each_partition_to_its_leader() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "routed", 3).await;
    let leaders = agreed_leaders(&cluster, "routed").await;
    println!("leaders by partition: {leaders:?}");
    let client =
        Client::connect(&format!("http://{}", cluster.node(1).address())).await.expect("connect");
    let config = ProducerConfig {
        idempotent: true,
        batch_records_max: 10,
        retries_max: 200,
        ..ProducerConfig::default()
    };
    let producer = client.producer("routed", config).await.expect("an idempotent producer");
    let all = [0, 1, 2];
    for attempt in 1.. {
        let before = passed_on(&cluster);
        if produce_while_leaders_stay(&cluster, &producer, "routed", &all, 100).await {
            assert_eq!(passed_on(&cluster), before, "batches passed on to a leader");
            break;
        }
        assert!(attempt < 5, "the leaders kept moving");
        producer.refresh_partitions().await.expect("leaders read again");
    }

    // The leader of a partition that node 1 does not lead stops.
    let leaders = agreed_leaders(&cluster, "routed").await;
    let (moved, stopped) = (0u32..)
        .zip(&leaders)
        .find(|(_, leader)| **leader != 1)
        .map(|(partition, leader)| (partition, *leader))
        .expect("with three partitions on three nodes, node 1 does not lead them all");
    let pending: Vec<_> = {
        let mut pending = Vec::new();
        for i in 0..50 {
            let value = format!("around the stop {i}");
            let record = ClientRecord::value(value.as_bytes()).with_partition(moved);
            pending.push(producer.send(record).await.expect("buffered"));
        }
        pending
    };
    cluster.nodes[stopped as usize - 1].take().expect("running").shutdown().await;
    for delivery in pending {
        delivery.wait().await.expect("acknowledged through another node");
    }
    // The batches may all have been acknowledged before the stop: the running nodes may
    // still name the stopped one until their election timeout passes.
    let deadline = Instant::now() + PATIENCE;
    let new_leader = loop {
        let leader = agreed_leaders(&cluster, "routed").await[moved as usize];
        if leader != stopped {
            break leader;
        }
        assert!(Instant::now() < deadline, "partition {moved} kept its stopped leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for attempt in 1.. {
        producer.refresh_partitions().await.expect("leaders read again");
        let before = passed_on(&cluster);
        if produce_while_leaders_stay(&cluster, &producer, "routed", &[moved], 100).await {
            assert_eq!(passed_on(&cluster), before, "batches passed on to the new leader");
            break;
        }
        assert!(attempt < 5, "the leaders kept moving");
    }

    // The stopped node comes back where it served, and leads a partition the topic grows by
    // (each new partition's first leader is its preferred one, or is handed back to it):
    // the stream that went on through another node is not used for it, a new one to the
    // node is.
    cluster.restart(stopped).await;
    let grow = spool_proto::v1::AlterTopicRequest {
        name: "routed".into(),
        partitions: Some(6),
        ..Default::default()
    };
    cluster.node(1).topics().await.alter_topic(grow).await.expect("grown");
    let preferred = preferred_leaders(&cluster, 1, "routed").await;
    assert!(preferred[3..].contains(&stopped), "a new partition prefers node {stopped}");
    let deadline = Instant::now() + PATIENCE * 2;
    let regained = loop {
        let leaders = agreed_leaders(&cluster, "routed").await;
        if let Some(regained) = (3u32..6).find(|p| leaders[*p as usize] == stopped) {
            break regained;
        }
        assert!(Instant::now() < deadline, "node {stopped} leads no new partition: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for attempt in 1.. {
        assert_eq!(producer.refresh_partitions().await.expect("leaders read again"), 6);
        let before = passed_on(&cluster);
        if produce_while_leaders_stay(&cluster, &producer, "routed", &[regained], 100).await {
            assert_eq!(passed_on(&cluster), before, "batches passed on to the node come back");
            break;
        }
        assert!(attempt < 5, "the leaders kept moving");
    }
    producer.close().await.expect("closed");
    let values = cluster.read_partition(new_leader, "routed", moved, 250).await;
    assert_eq!(values.len(), 100 + 50 + 100, "each record of partition {moved} stored once");
    assert!(values[100..150].iter().zip(0..).all(|(v, i)| *v == format!("around the stop {i}")));
}

/// Each partition's preferred leader (the first of its replicas), as node `id` describes
/// `topic`.
async fn preferred_leaders(cluster: &Cluster, id: u64, topic: &str) -> Vec<u64> {
    let described = cluster.node(id).describe(topic).await.expect("described");
    described.partitions.iter().map(|p| p.replicas[0]).collect()
}

/// Waits until the running nodes agree that each partition of `topic` is led by its
/// preferred leader; how long that took.
async fn wait_for_preferred_leaders(cluster: &Cluster, topic: &str, preferred: &[u64]) -> Duration {
    // A hand-back waits for its node's next look (every 10 s) and the leader's lease.
    let patience = PATIENCE * 2;
    let started = Instant::now();
    loop {
        let leaders = agreed_leaders(cluster, topic).await;
        if leaders == preferred {
            return started.elapsed();
        }
        let waited = started.elapsed();
        assert!(waited < patience, "{topic}: leaders {leaders:?}, preferred {preferred:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces one record to each partition of `topic` through the first running node, and
/// notes it in `acknowledged` (one list per partition).
async fn produce_round_to(
    cluster: &Cluster,
    topic: &str,
    round: &str,
    acknowledged: &mut [Vec<String>],
) {
    let at = cluster.running()[0];
    for (partition, sent) in (0u32..).zip(acknowledged.iter_mut()) {
        let value = format!("{round} {partition}");
        cluster.produce_to(at, topic, partition, &value).await;
        sent.push(value);
    }
}

/// Stops node `leader`, which leads `partition` of `topic`, and waits until the running
/// nodes agree that another node leads it.
async fn stop_partition_leader(cluster: &mut Cluster, topic: &str, partition: usize, leader: u64) {
    cluster.nodes[leader as usize - 1].take().expect("running").shutdown().await;
    let deadline = Instant::now() + PATIENCE;
    while agreed_leaders(cluster, topic).await[partition] == leader {
        assert!(Instant::now() < deadline, "partition {partition} kept its stopped leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node that stops loses the leadership of its partitions; once it is back and has caught
/// up, each is handed back to it, and nothing acknowledged meanwhile is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_return_to_their_preferred_nodes_once_a_stopped_node_is_back() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "spread", 3).await;
    let preferred = preferred_leaders(&cluster, 1, "spread").await;
    let mut nodes = preferred.clone();
    nodes.sort_unstable();
    assert_eq!(nodes, [1, 2, 3], "one partition preferring each node");
    // A preferred node may lose its first election on a loaded machine: it gets it back.
    let took = wait_for_preferred_leaders(&cluster, "spread", &preferred).await;
    println!("each partition led by its preferred node after {took:?}");
    let mut acknowledged = vec![Vec::new(); 3];
    produce_round_to(&cluster, "spread", "before", &mut acknowledged).await;
    let stopped = preferred[1];
    stop_partition_leader(&mut cluster, "spread", 1, stopped).await;
    produce_round_to(&cluster, "spread", "while stopped", &mut acknowledged).await;
    cluster.restart(stopped).await;
    produce_round_to(&cluster, "spread", "back", &mut acknowledged).await;
    let took = wait_for_preferred_leaders(&cluster, "spread", &preferred).await;
    println!("node {stopped} led its partition again {took:?} after it served");
    produce_round_to(&cluster, "spread", "after", &mut acknowledged).await;
    for (partition, expected) in (0u32..).zip(&acknowledged) {
        let leader = preferred[partition as usize];
        let values = cluster.read_partition(leader, "spread", partition, expected.len()).await;
        assert_eq!(&values, expected, "partition {partition}: each record once, in order");
    }
}

/// Kafka's ElectLeaders asked of node `at` for `partitions` of `topic` (every partition
/// when `None`): each partition's answer code, in order.
async fn elect_preferred(
    cluster: &Cluster,
    at: u64,
    topic: &str,
    partitions: Option<Vec<i32>>,
) -> Vec<(i32, i16)> {
    use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
    use kafka_protocol::messages::{ApiKey, ElectLeadersRequest, ElectLeadersResponse};
    let asked = partitions.map(|partitions| {
        vec![
            TopicPartitions::default()
                .with_topic(common::kafka::name(topic))
                .with_partitions(partitions),
        ]
    });
    let request =
        ElectLeadersRequest::default().with_timeout_ms(30_000).with_topic_partitions(asked);
    let mut connection = common::kafka::Connection::to(cluster.kafka[at as usize - 1]).await;
    let answer: ElectLeadersResponse = connection.call(ApiKey::ElectLeaders, 1, &request).await;
    assert_eq!(answer.error_code, 0);
    let results = answer.replica_election_results.iter();
    results
        .flat_map(|t| t.partition_result.iter().map(|p| (p.partition_id, p.error_code)))
        .collect()
}

/// With hand-backs off, leaders stay where elections put them until Kafka's ElectLeaders asks
/// (through any node): then each partition goes back to its preferred leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_elect_leaders_hands_partitions_back_to_their_preferred_nodes() {
    const ELECTION_NOT_NEEDED: i16 = 84;
    let mut cluster = Cluster::start_with_kafka_holding_leaders().await;
    cluster.create_topic(1, "elect", 3).await;
    let preferred = preferred_leaders(&cluster, 1, "elect").await;
    let _ = agreed_leaders(&cluster, "elect").await;
    // First elections may not all go to the preferred nodes: every partition, through node 1.
    let answered = elect_preferred(&cluster, 1, "elect", None).await;
    assert!(answered.iter().all(|(_, code)| *code == 0), "{answered:?}");
    assert_eq!(agreed_leaders(&cluster, "elect").await, preferred);
    // Nothing left to elect: left out of an answer for every partition, named when asked.
    assert_eq!(elect_preferred(&cluster, 2, "elect", None).await, vec![]);
    let answered = elect_preferred(&cluster, 2, "elect", Some(vec![0, 1, 2])).await;
    assert_eq!(
        answered,
        [(0, ELECTION_NOT_NEEDED), (1, ELECTION_NOT_NEEDED), (2, ELECTION_NOT_NEEDED)]
    );
    // gRPC's ElectLeaders answers alike, and refuses what names nothing the cluster has.
    let client = Client::connect(&format!("http://{}", cluster.node(3).address())).await.unwrap();
    assert_eq!(client.elect_leaders(&[], None).await.unwrap(), vec![]);
    let answered = client.elect_leaders(&[("elect", &[2, 0, 2])], None).await.unwrap();
    let outcomes: Vec<(u32, ElectionOutcome)> =
        answered.into_iter().map(|e| (e.partition, e.outcome)).collect();
    assert_eq!(outcomes, [(0, ElectionOutcome::NotNeeded), (2, ElectionOutcome::NotNeeded)]);
    let mut topics = cluster.node(3).topics().await;
    let ask =
        |topic: &str, partitions: Vec<u32>, timeout_ms| spool_proto::v1::ElectLeadersRequest {
            topics: vec![spool_proto::v1::ElectLeadersTopic { topic: topic.into(), partitions }],
            timeout_ms,
        };
    for (request, code, says) in [
        (ask("nowhere", vec![], 0), Code::NotFound, "topic nowhere does not exist"),
        (ask("elect", vec![3], 0), Code::NotFound, "partition 3 does not exist"),
        (ask("elect", vec![0], 60_001), Code::InvalidArgument, "limit of 60000"),
    ] {
        let refused = topics.elect_leaders(request).await.expect_err("refused");
        assert_eq!(refused.code(), code, "{refused:?}");
        assert!(refused.message().contains(says), "{refused:?}");
    }
    let mut acknowledged = vec![Vec::new(); 3];
    produce_round_to(&cluster, "elect", "before", &mut acknowledged).await;
    // A node stops and comes back: with hand-backs off, its partition stays elsewhere.
    let stopped = preferred[1];
    stop_partition_leader(&mut cluster, "elect", 1, stopped).await;
    produce_round_to(&cluster, "elect", "while stopped", &mut acknowledged).await;
    cluster.restart(stopped).await;
    assert_ne!(agreed_leaders(&cluster, "elect").await[1], stopped);
    // Asked through a node with a Kafka listener (the restarted one has none): the leader
    // waits until its node is caught up, then hands the partition back.
    let through = cluster.running().into_iter().find(|id| *id != stopped).expect("another");
    let python = common::kafka::python_with("confluent_kafka", "confluent-kafka");
    match python {
        Some(python) => {
            let bootstrap = cluster.kafka[through as usize - 1].to_string();
            let script = "confluent_kafka_elect_leaders.py";
            let deadline = Instant::now() + PATIENCE;
            loop {
                let printed = common::kafka::run_python_at(
                    python.clone(),
                    script,
                    &bootstrap,
                    &["elect", "1"],
                )
                .await;
                if printed.contains("elected elect/1") {
                    break;
                }
                // The restarted node may not have caught up yet: it is refused, and asked again.
                assert!(printed.contains("PREFERRED_LEADER_NOT_AVAILABLE"), "{printed}");
                assert!(Instant::now() < deadline, "never elected: {printed}");
            }
        }
        None => {
            let deadline = Instant::now() + PATIENCE;
            while elect_preferred(&cluster, through, "elect", Some(vec![1])).await != [(1, 0)] {
                assert!(Instant::now() < deadline, "partition 1 was never handed back");
            }
        }
    }
    assert_eq!(agreed_leaders(&cluster, "elect").await, preferred);
    produce_round_to(&cluster, "elect", "after", &mut acknowledged).await;
    for (partition, expected) in (0u32..).zip(&acknowledged) {
        let leader = preferred[partition as usize];
        let values = cluster.read_partition(leader, "elect", partition, expected.len()).await;
        assert_eq!(&values, expected, "partition {partition}: each record once, in order");
    }
}

/// A plain producer keeps many one-record batches in flight, through a follower (not
/// following leaders) and through the leader: each is stored in the order it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_producer_s_batches_in_flight_are_stored_in_the_order_sent() {
    let cluster = Cluster::start().await;
    cluster.create_topic(1, "sequence", 1).await;
    let leader = cluster.leader(1, "sequence").await;
    let follower = if leader == 1 { 2 } else { 1 };
    let mut expected = Vec::new();
    for through in [follower, leader] {
        let client = Client::connect(&format!("http://{}", cluster.node(through).address()))
            .await
            .expect("connect");
        let config = ProducerConfig {
            batch_records_max: 1,
            linger: Duration::ZERO,
            in_flight_max: 32,
            follow_leaders: false,
            ..ProducerConfig::default()
        };
        let producer = client.producer("sequence", config).await.expect("a producer");
        let mut deliveries = Vec::new();
        for i in 0..400 {
            let value = format!("through {through}: {i}");
            let record = ClientRecord::value(value.as_bytes()).with_partition(0);
            deliveries.push(producer.send(record).await.expect("buffered"));
            expected.push(value);
        }
        for delivery in deliveries {
            delivery.wait().await.expect("acknowledged");
        }
    }
    let stored = cluster.read(leader, "sequence", expected.len()).await;
    let first_out_of_order = stored.iter().zip(&expected).position(|(got, sent)| got != sent);
    assert_eq!(first_out_of_order, None, "stored out of the order sent: {stored:?}");
}

/// A retry reaches a new leader: a batch acknowledged by the old leader and sent again with its
/// stamp through another node is answered with its first offsets and stored once; a producer
/// id handed out by one node is known to every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_answered_as_a_duplicate_by_the_next_leader() {
    use spool_proto::v1::{Acks, ProduceRequest, ProducerStamp, RecordList, produce_request};
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "t", 1).await;
    let leader = cluster.leader(1, "t").await;
    let other = if leader == 3 { 2 } else { 3 };
    // The id comes from one node and is used at the others.
    let mut producer = cluster.node(other).producer().await;
    let init = producer.init_producer(spool_proto::v1::InitProducerRequest {}).await.unwrap();
    let producer_id = init.into_inner().producer_id;
    let request = |sequence: i32, values: &[&str]| ProduceRequest {
        correlation_id: 0,
        topic: "t".into(),
        partition: Some(0),
        acks: Acks::All as i32,
        payload: Some(produce_request::Payload::Records(RecordList {
            records: values.iter().map(|v| record(v)).collect(),
        })),
        producer: Some(ProducerStamp { producer_id, producer_epoch: 0, base_sequence: sequence }),
    };
    let mut at_leader = cluster.node(leader).producer().await;
    let first = at_leader.produce(request(0, &["a", "b"])).await.expect("stored").into_inner();
    let first = first.appends[0].base_offset;
    cluster.nodes[leader as usize - 1].take().expect("running").shutdown().await;

    let deadline = Instant::now() + PATIENCE;
    let again = loop {
        match producer.produce(request(0, &["a", "b"])).await {
            Ok(answer) => break answer.into_inner().appends[0].base_offset,
            Err(status) if status.code() == Code::Unavailable => {}
            Err(status) => panic!("the retry: {status:?}"),
        }
        assert!(Instant::now() < deadline, "the retry was never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(again, first, "the retry is answered with the first offsets");
    let next = producer.produce(request(2, &["c"])).await.expect("the next batch").into_inner();
    assert!(next.appends[0].base_offset > first + 1);
    let gap = producer.produce(request(9, &["d"])).await.expect_err("a gap is refused");
    assert_eq!(gap.code(), Code::FailedPrecondition, "{gap:?}");
    assert!(gap.message().contains("expects 3"), "{gap:?}");
    for id in cluster.running() {
        assert_eq!(cluster.read(id, "t", 3).await, ["a", "b", "c"], "node {id}");
    }
}

/// A topic grows through any node: every node starts the new partitions' replicas and each
/// takes writes; settings a replicated partition cannot change are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_grows_on_every_node() {
    use spool_proto::v1::AlterTopicRequest;
    let cluster = Cluster::start().await;
    cluster.create_topic(1, "growing", 1).await;
    let mut topics = cluster.node(2).topics().await;
    let grow =
        AlterTopicRequest { name: "growing".into(), partitions: Some(3), ..Default::default() };
    let grown = topics.alter_topic(grow).await.expect("grown").into_inner();
    assert_eq!(grown.topic.unwrap().config.unwrap().partitions, 3);
    // Right after the alter through node 2: node 3 catches up with the metadata before it
    // could answer NOT_FOUND for the new partition (only an election may hold the write).
    let deadline = Instant::now() + PATIENCE;
    loop {
        match cluster
            .node(3)
            .produce("growing", Some(2), vec![record("in the new partition")])
            .await
        {
            Ok(_) => break,
            Err(status)
                if matches!(status.code(), Code::FailedPrecondition | Code::Unavailable) => {}
            Err(status) => panic!("{status:?}"),
        }
        assert!(Instant::now() < deadline, "the new partition never took a write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in 1..=3 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let described = cluster.node(id).describe("growing").await.expect("described");
            if described.partitions.len() == 3
                && described.partitions.iter().all(|p| p.leader.is_some())
            {
                break;
            }
            assert!(Instant::now() < deadline, "node {id}: {described:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let segments = AlterTopicRequest {
        name: "growing".into(),
        segment_bytes: Some(1 << 20),
        ..Default::default()
    };
    let refused = topics.alter_topic(segments).await.expect_err("not on a cluster yet");
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert!(refused.message().contains("segment size"), "{refused:?}");
}

/// Retention changed through one node runs on every replica: each deletes what is past the
/// limit (through its partition's group, so a follower behind it would take the leader's
/// snapshot), readers start at the new log start, and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_changed_through_any_node_deletes_on_every_replica() {
    use spool_proto::v1::AlterTopicRequest;
    let cluster = Cluster::start().await;
    cluster.create_topic_of_small_segments(1, "kept").await;
    // 24 batches of 256 KiB, one segment each.
    let padding = "x".repeat(256 * 1024);
    for i in 0..24 {
        cluster.produce("kept", &format!("{i} {padding}")).await;
    }
    let limit = AlterTopicRequest {
        name: "kept".into(),
        retention_bytes: Some(1024 * 1024),
        ..Default::default()
    };
    let altered = cluster.node(2).topics().await.alter_topic(limit).await.expect("altered");
    let config = altered.into_inner().topic.unwrap().config.unwrap();
    assert_eq!(config.retention_bytes, Some(1024 * 1024));
    let last = cluster.produce("kept", "after").await;
    for id in 1..=3 {
        let deadline = Instant::now() + PATIENCE;
        let start = loop {
            let described = cluster.node(id).describe("kept").await.expect("described");
            let partition = &described.partitions[0];
            if partition.log_start_offset > 0 && partition.log_end_offset > last {
                assert!(partition.size_bytes < 3 << 20, "node {id} keeps {partition:?}");
                break partition.log_start_offset;
            }
            assert!(Instant::now() < deadline, "node {id} deleted nothing: {partition:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let stale = cluster.node(id).fetch("kept", 0, 0).await.expect_err("deleted");
        assert_eq!(stale.code(), Code::OutOfRange, "node {id}: {stale:?}");
        let kept = cluster.node(id).fetch_all("kept", 0, start).await;
        assert_eq!(kept.last().map(value), Some("after"), "node {id}");
    }
}

/// A node answers for the metadata it has applied, but before it answers NOT_FOUND it catches
/// up with what the cluster committed: a topic created through one node is found through a
/// node that has not received the create yet (everything sent to it arrives 300 ms late,
/// less than an election timeout), by describe and fetch, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_through_one_node_is_found_at_once_through_a_lagging_one() {
    let cluster = Cluster::start_behind_proxies().await;
    let request = spool_proto::v1::DescribeClusterRequest {};
    let described = cluster.node(1).topics().await.describe_cluster(request).await.unwrap();
    let leader = described.into_inner().metadata_leader.expect("a metadata leader");
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let through = (1..=3).find(|id| *id != leader && *id != lagging).unwrap();
    cluster.proxies[lagging as usize - 1].set(Fault::Delay(Duration::from_millis(300)));
    for round in 0..3 {
        let topic = format!("at-once-{round}");
        cluster.node(through).create_topic(&topic, 1, always()).await;
        let described = cluster.node(lagging).describe(&topic).await;
        assert!(described.is_ok(), "node {lagging}, round {round}: {described:?}");
        let fetched = cluster.node(lagging).fetch_all(&topic, 0, 0).await;
        assert!(fetched.is_empty(), "{fetched:?}");
    }
    // A name nobody created is still NOT_FOUND, once the node has caught up.
    let status = cluster.node(lagging).describe("never-created").await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    cluster.proxies[lagging as usize - 1].set(Fault::Pass);
    cluster.produce_at(lagging, "at-once-0", "found").await;
}

/// A follower serves a record it has not applied yet but the leader has committed: it asks
/// the leader how far the group has committed and waits until it has applied that far (its
/// inbound messages arrive 300 ms late here), rather than answer OUT_OF_RANGE. An offset
/// past the leader's end is OUT_OF_RANGE still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_what_the_leader_committed_before_it_has_applied_it() {
    let cluster = Cluster::start_behind_proxies().await;
    cluster.create_topic(1, "ahead", 1).await;
    let first = cluster.produce("ahead", "first").await;
    let leader = cluster.leader(1, "ahead").await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let _ = cluster.read(follower, "ahead", 1).await;
    cluster.proxies[follower as usize - 1].set(Fault::Delay(Duration::from_millis(300)));
    for round in 0..3 {
        // Two records: the follower's end is at most the first's offset when it is asked
        // for the second's (a read at the end itself is answered at once, with nothing).
        cluster.produce_at(leader, "ahead", &format!("round {round} first")).await;
        let sent = format!("round {round}");
        let offset = cluster.produce_at(leader, "ahead", &sent).await;
        assert!(offset > first);
        let fetched = cluster.node(follower).fetch("ahead", 0, offset).await;
        let fetched = fetched.unwrap_or_else(|status| panic!("round {round}: {status:?}"));
        assert_eq!(fetched.records.first().map(value), Some(sent.as_str()), "round {round}");
        let beyond = cluster.node(follower).fetch("ahead", 0, offset + 1_000).await;
        let beyond = beyond.expect_err("past the leader's end");
        assert_eq!(beyond.code(), Code::OutOfRange, "{beyond:?}");
    }
    cluster.proxies[follower as usize - 1].set(Fault::Pass);
}

/// Creates `topic` (one partition of 64 KiB segments), writes twelve 40 KiB records to it,
/// and flips one bit near the end of the second segment of a follower's replica, in place
/// (written since the node started, so recovery never scanned it): the follower, and the
/// records sent.
async fn damage_a_followers_sealed_segment(cluster: &Cluster, topic: &str) -> (u64, Vec<String>) {
    cluster.create_topic_of_small_segments(1, topic).await;
    let padding = "x".repeat(40 * 1024);
    let mut sent = Vec::new();
    for i in 0..12 {
        let value = format!("{i} {padding}");
        cluster.produce(topic, &value).await;
        sent.push(value);
    }
    let leader = cluster.leader(1, topic).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    assert_eq!(cluster.read(follower, topic, sent.len()).await, sent);
    damage_a_sealed_segment(cluster, follower, topic);
    (follower, sent)
}

/// Flips one bit near the end of the second segment of node `id`'s replica of partition 0
/// of `topic`, in place.
fn damage_a_sealed_segment(cluster: &Cluster, id: u64, topic: &str) {
    let dir = cluster.node(id).data_dir().join(format!("topics/{topic}/0"));
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() > 3, "the log spans segments: {segments:?}");
    use std::os::unix::fs::FileExt;
    let victim = std::fs::OpenOptions::new().read(true).write(true).open(&segments[1]).unwrap();
    let at = victim.metadata().unwrap().len() - 5;
    let mut byte = [0u8];
    victim.read_exact_at(&mut byte, at).unwrap();
    victim.write_all_at(&[byte[0] ^ 1], at).unwrap();
}

/// Damage that a read meets in a follower's sealed segment (written since the node started,
/// so recovery never scanned it) is not the reader's problem: the follower restarts its
/// replica under repair, cuts its log back before the damaged segment, copies the rest from
/// the leader, and the read that met it is answered with the intact records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_meets_damage_on_a_follower_is_answered_once_the_replica_is_repaired() {
    let cluster = Cluster::start().await;
    let (follower, mut sent) = damage_a_followers_sealed_segment(&cluster, "mended").await;
    let read: Vec<String> = cluster
        .node(follower)
        .fetch_all("mended", 0, 0)
        .await
        .iter()
        .map(|record| value(record).to_owned())
        .collect();
    assert_eq!(read, sent, "the records, intact, once the replica is repaired");
    let after = cluster.produce("mended", "after the repair").await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let described = cluster.node(follower).describe("mended").await.expect("described");
        if described.partitions[0].log_end_offset > after {
            break;
        }
        assert!(Instant::now() < deadline, "the repaired follower never took {after}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sent.push("after the repair".to_owned());
    assert_eq!(cluster.read(follower, "mended", sent.len()).await, sent);
}

/// Damage in a follower's sealed segment that no reader meets is found by a scrub, and the
/// follower's replica is repaired from the others as when a read meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_on_a_follower_finds_damage_and_the_replica_is_repaired() {
    let cluster = Cluster::start().await;
    let (follower, sent) = damage_a_followers_sealed_segment(&cluster, "scrubbed").await;
    let leader = cluster.leader(1, "scrubbed").await;
    let dir = cluster.node(follower).data_dir().join("topics/scrubbed/0");
    assert_eq!(cluster.node(follower).scrub().await, 1, "the follower's damage found");
    // The repair cuts the log back before the damaged segment and copies the rest again.
    let fs = spool_storage::fs::StdFileSystem;
    let end = cluster.node(leader).describe("scrubbed").await.unwrap().partitions[0].log_end_offset;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let check = spool_storage::verify::verify_log(&fs, &dir).expect("checked");
        if !check.is_damaged() && check.end_offset.0 >= end {
            break;
        }
        assert!(Instant::now() < deadline, "the follower was not repaired: {check:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.node(follower).scrub().await, 0, "nothing damaged after the repair");
    assert_eq!(cluster.read(follower, "scrubbed", sent.len()).await, sent);
}

/// Damage in the leader's sealed segment that its Raft task meets, reading entries to send a
/// follower that was down, ends that task; the leader's replica is repaired as for a read's:
/// it starts again under repair, another node leads, and every replica ends intact with
/// every record, no client read having met the damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_a_leader_meets_sending_to_a_lagging_follower_is_repaired() {
    let mut cluster = Cluster::start().await;
    cluster.create_topic_of_small_segments(1, "sent").await;
    let leader = cluster.leader(1, "sent").await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    cluster.nodes[lagging as usize - 1].take().expect("running").shutdown().await;
    let padding = "x".repeat(40 * 1024);
    let mut sent = Vec::new();
    for i in 0..12 {
        let value = format!("{i} {padding}");
        cluster.produce_at(leader, "sent", &value).await;
        sent.push(value);
    }
    damage_a_sealed_segment(&cluster, leader, "sent");
    let fs = spool_storage::fs::StdFileSystem;
    let dirs: Vec<_> =
        (1..=3).map(|id| cluster.dirs[id - 1].path().join("topics/sent/0")).collect();
    let dir = |id: u64| dirs[id as usize - 1].clone();
    // The third replica acknowledged every record with the leader.
    let third = (1..=3).find(|id| *id != leader && *id != lagging).unwrap();
    let end = spool_storage::verify::verify_log(&fs, &dir(third)).unwrap().end_offset;
    cluster.restart(lagging).await;
    for id in [leader, lagging] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let check = spool_storage::verify::verify_log(&fs, &dir(id)).expect("checked");
            if !check.is_damaged() && check.end_offset >= end {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} was not repaired: {check:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for id in 1..=3 {
        assert_eq!(cluster.read(id, "sent", sent.len()).await, sent, "node {id}");
    }
}

/// Damage in a node's logs of the cluster's own groups (the metadata, the consumer groups'
/// offsets), which no read meets, is found by a scrub: each of the node's replicas starts
/// again under repair and copies its group's log back from the leader, and the node goes on
/// applying what both groups commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrub_finds_damage_in_a_nodes_own_logs_and_the_replicas_are_repaired() {
    use spool_client::StartAt;
    let cluster = Cluster::start().await;
    cluster.create_topic(1, "before", 1).await;
    let reset = async |through: u64, offset: u64| {
        let url = format!("http://{}", cluster.node(through).address());
        let client = Client::connect(&url).await.expect("connected");
        let deadline = Instant::now() + PATIENCE;
        while let Err(error) =
            client.reset_group("readers", "before", StartAt::Offset(offset)).await
        {
            assert!(Instant::now() < deadline, "resetting the group: {error:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    for value in ["a", "b"] {
        cluster.produce("before", value).await;
    }
    reset(1, 0).await;
    // A node that leads neither group, so that no election slows the repair.
    let request = spool_proto::v1::DescribeClusterRequest {};
    let described = cluster.node(1).topics().await.describe_cluster(request).await.unwrap();
    let leader = described.into_inner().metadata_leader.expect("a metadata leader");
    let coordinator = cluster.group_coordinator(1).await;
    let node = (1..=3).find(|id| *id != leader && *id != coordinator).unwrap();
    let committed = async |offset: u64| {
        let deadline = Instant::now() + PATIENCE;
        while cluster.node(node).committed_offset("readers", "before", 0) != Some(offset) {
            assert!(Instant::now() < deadline, "node {node} never applied the commit of {offset}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Then the first entry of each group's log here is not its last.
    committed(0).await;
    let fs = spool_storage::fs::StdFileSystem;
    let log_dir =
        |id: u64, group: &str| cluster.node(id).data_dir().join(format!("cluster/{group}/log"));
    for group in ["metadata", "group-offsets"] {
        // One bit of the group's first entry (the membership every node wrote), in place.
        let segment = std::fs::read_dir(log_dir(node, group))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|extension| extension == "log"))
            .expect("a segment");
        use std::os::unix::fs::FileExt;
        let victim = std::fs::OpenOptions::new().read(true).write(true).open(&segment).unwrap();
        let mut byte = [0u8];
        victim.read_exact_at(&mut byte, 100).unwrap();
        victim.write_all_at(&[byte[0] ^ 1], 100).unwrap();
        let check = spool_storage::verify::verify_log(&fs, &log_dir(node, group)).unwrap();
        assert!(check.is_damaged(), "{group}: {check:?}");
    }
    assert_eq!(cluster.node(node).scrub().await, 2, "both logs' damage found");
    // Each repair cuts the damaged segment away and copies the group's log back.
    for (group, from) in [("metadata", leader), ("group-offsets", coordinator)] {
        let end = spool_storage::verify::verify_log(&fs, &log_dir(from, group)).unwrap().end_offset;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let check = spool_storage::verify::verify_log(&fs, &log_dir(node, group)).unwrap();
            if !check.is_damaged() && check.end_offset >= end {
                break;
            }
            assert!(Instant::now() < deadline, "{group} was not repaired: {check:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(cluster.node(node).scrub().await, 0, "nothing damaged after the repairs");
    // The repaired node applies what the groups commit next, and what it held stays.
    cluster.create_topic(node, "after", 1).await;
    for topic in ["before", "after"] {
        let described = cluster.node(node).describe(topic).await;
        assert!(described.is_ok(), "{topic}: {described:?}");
    }
    reset(node, 1).await;
    committed(1).await;
}

/// Kafka's Metadata, asked of any node, names every node as a broker (by its node id, at its
/// Kafka listener) and each partition's Raft leader as its leader, with every node a
/// replica; every node names the same coordinator for a group, and the others refuse the
/// group's requests NOT_COORDINATOR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_metadata_names_every_node_and_each_partitions_leader() {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{
        ApiKey, CreateTopicsRequest, CreateTopicsResponse, DescribeConfigsRequest,
        DescribeConfigsResponse, GroupId, HeartbeatRequest, HeartbeatResponse, MetadataRequest,
        MetadataResponse,
    };
    let cluster = Cluster::start_with_kafka().await;
    cluster.create_topic(1, "kafka-events", 2).await;
    // Each partition's leader and replicas (its preferred leader first): the preferred
    // leader stands for election first, but another node may win it.
    let leaders: Vec<(u64, Vec<u64>)> = {
        let mut leaders = Vec::new();
        for partition in 0..2 {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let described = cluster.node(1).describe("kafka-events").await.unwrap();
                let described = &described.partitions[partition];
                if let Some(leader) = described.leader {
                    leaders.push((leader, described.replicas.clone()));
                    break;
                }
                assert!(Instant::now() < deadline, "no leader of partition {partition}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        leaders
    };
    let topic =
        MetadataRequestTopic::default().with_name(Some(common::kafka::name("kafka-events")));
    let request = MetadataRequest::default().with_topics(Some(vec![topic]));
    let mut coordinators = Vec::new();
    for id in 1..=3u64 {
        let mut connection = common::kafka::Connection::to(cluster.kafka[id as usize - 1]).await;
        let answer: MetadataResponse = connection.call(ApiKey::Metadata, 8, &request).await;
        let brokers: Vec<(i32, String, i32)> =
            answer.brokers.iter().map(|b| (b.node_id.0, b.host.to_string(), b.port)).collect();
        let expected: Vec<(i32, String, i32)> = (1..=3)
            .map(|n| {
                let address = cluster.kafka[n - 1];
                (n as i32, address.ip().to_string(), i32::from(address.port()))
            })
            .collect();
        assert_eq!(brokers, expected, "node {id}");
        let partitions = &answer.topics[0].partitions;
        for (partition, (leader, described)) in partitions.iter().zip(&leaders) {
            assert_eq!(partition.error_code, 0, "node {id}: {partition:?}");
            assert_eq!(partition.leader_id.0, *leader as i32, "node {id}: {partition:?}");
            let mut replicas: Vec<i32> = partition.replica_nodes.iter().map(|r| r.0).collect();
            let preferred_first: Vec<i32> = described.iter().map(|&r| r as i32).collect();
            assert_eq!(replicas, preferred_first, "node {id}: the preferred leader first");
            replicas.sort_unstable();
            assert_eq!(replicas, vec![1, 2, 3], "node {id}");
        }
        coordinators.push(coordinator(cluster.kafka[id as usize - 1], "readers", None).await);
    }
    assert!(coordinators.iter().all(|c| *c == coordinators[0]), "{coordinators:?}");
    // CreateTopics through a node: a factor of 1 to the cluster's 3 (-1: 3), or refused.
    let mut connection = common::kafka::Connection::to(cluster.kafka[2]).await;
    // Kafka clients often ask for min.insync.replicas 2 with three replicas: that is what
    // Spool's majority is.
    let min_insync = |value: &'static str| {
        CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str("min.insync.replicas"))
            .with_value(Some(StrBytes::from_static_str(value)))
    };
    for (name, factor, config, code) in [
        ("by-kafka", 3, Some(min_insync("2")), 0),
        ("by-kafka-default", -1, None, 0),
        ("two-copies", 2, None, 0),
        ("not-a-majority", 3, Some(min_insync("3")), 40),
        ("too-wide", 4, None, 38),
        ("no-copy", 0, None, 38),
    ] {
        let topic = CreatableTopic::default()
            .with_name(common::kafka::name(name))
            .with_num_partitions(1)
            .with_replication_factor(factor)
            .with_configs(config.into_iter().collect());
        let request =
            CreateTopicsRequest::default().with_topics(vec![topic]).with_timeout_ms(30_000);
        let answer: CreateTopicsResponse = connection.call(ApiKey::CreateTopics, 4, &request).await;
        assert_eq!(answer.topics[0].error_code, code, "{name}: {answer:?}");
    }
    let described = cluster.node(1).describe("by-kafka").await.expect("created through node 3");
    let mut replicas = described.partitions[0].replicas.clone();
    replicas.sort_unstable();
    assert_eq!(replicas, vec![1, 2, 3]);
    // Node 3 describes itself as broker 3, and each topic's majority; not broker 1.
    let resource = |kind: i8, name: &'static str| {
        DescribeConfigsResource::default()
            .with_resource_type(kind)
            .with_resource_name(StrBytes::from_static_str(name))
            .with_configuration_keys(None)
    };
    let request = DescribeConfigsRequest::default().with_resources(vec![
        resource(4, "3"),
        resource(4, "1"),
        resource(2, "two-copies"),
        resource(2, "by-kafka"),
    ]);
    let answer: DescribeConfigsResponse =
        connection.call(ApiKey::DescribeConfigs, 3, &request).await;
    let value = |result: usize, name: &str| {
        let configs = &answer.results[result].configs;
        let config = configs.iter().find(|c| c.name.as_str() == name).expect(name);
        config.value.as_ref().map(|v| v.to_string()).unwrap_or_default()
    };
    assert_eq!(answer.results[0].error_code, 0, "{answer:?}");
    assert_eq!(value(0, "broker.id"), "3");
    assert_eq!(value(0, "default.replication.factor"), "3");
    assert_eq!(value(0, "min.insync.replicas"), "2");
    assert_eq!(answer.results[1].error_code, 42, "another broker: INVALID_REQUEST");
    assert_eq!(value(2, "min.insync.replicas"), "2", "a majority of two");
    assert_eq!(value(3, "min.insync.replicas"), "2", "a majority of three");
    // Every node names the two replicas of "two-copies", and their leader, the one that
    // holds none of it too.
    let topic = MetadataRequestTopic::default().with_name(Some(common::kafka::name("two-copies")));
    let request = MetadataRequest::default().with_topics(Some(vec![topic]));
    for id in 1..=3u64 {
        let mut connection = common::kafka::Connection::to(cluster.kafka[id as usize - 1]).await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer: MetadataResponse = connection.call(ApiKey::Metadata, 8, &request).await;
            // The node catches up with the cluster's metadata before it answers.
            let topic = &answer.topics[0];
            assert_eq!(topic.error_code, 0, "node {id}: {topic:?}");
            let partition = &topic.partitions[0];
            let replicas: Vec<i32> = partition.replica_nodes.iter().map(|r| r.0).collect();
            assert_eq!(replicas.len(), 2, "node {id}: {partition:?}");
            if partition.error_code == 0 {
                assert!(replicas.contains(&partition.leader_id.0), "node {id}: {partition:?}");
                break;
            }
            assert!(Instant::now() < deadline, "node {id} named no leader: {partition:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for id in (1..=3u64).filter(|id| *id != coordinators[0]) {
        let mut connection = common::kafka::Connection::to(cluster.kafka[id as usize - 1]).await;
        let heartbeat = HeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("readers")))
            .with_generation_id(1)
            .with_member_id(StrBytes::from_static_str("m"));
        let answer: HeartbeatResponse = connection.call(ApiKey::Heartbeat, 3, &heartbeat).await;
        assert_eq!(answer.error_code, 16, "NOT_COORDINATOR at node {id}: {answer:?}");
    }
}

/// The node the Kafka listener at `kafka` names as `group`'s coordinator, once it names one
/// other than `not`.
async fn coordinator(kafka: std::net::SocketAddr, group: &'static str, not: Option<u64>) -> u64 {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    let mut connection = common::kafka::Connection::to(kafka).await;
    let find = FindCoordinatorRequest::default().with_key(StrBytes::from_static_str(group));
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found: FindCoordinatorResponse =
            connection.call(ApiKey::FindCoordinator, 2, &find).await;
        let named = u64::try_from(found.node_id.0).ok().filter(|_| found.error_code == 0);
        if let Some(id) = named.filter(|id| Some(*id) != not) {
            return id;
        }
        assert!(Instant::now() < deadline, "{kafka} never named another coordinator: {found:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Kafka group's coordinator is the offsets group's leader: once that node stops, the
/// others name a running node, which serves the offsets committed through the one that
/// stopped, and the members of a group that settled there go on without joining again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_groups_coordinator_moves_off_a_stopped_node() {
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        ApiKey, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
        OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
        SyncGroupRequest, SyncGroupResponse,
    };
    let mut cluster = Cluster::start_with_kafka().await;
    cluster.create_topic(1, "kafka-jobs", 1).await;
    let group = || GroupId(StrBytes::from_static_str("movers"));
    let first = coordinator(cluster.kafka[0], "movers", None).await;
    // A group without members takes commits from anyone (generation -1).
    let partition =
        OffsetCommitRequestPartition::default().with_partition_index(0).with_committed_offset(7);
    let topic = OffsetCommitRequestTopic::default()
        .with_name(common::kafka::name("kafka-jobs"))
        .with_partitions(vec![partition]);
    let commit = OffsetCommitRequest::default()
        .with_group_id(group())
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![topic]);
    let mut at_first = common::kafka::Connection::to(cluster.kafka[first as usize - 1]).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let committed: OffsetCommitResponse = at_first.call(ApiKey::OffsetCommit, 6, &commit).await;
        match committed.topics[0].partitions[0].error_code {
            0 => break,
            // COORDINATOR_LOAD_IN_PROGRESS: a client retries.
            14 => assert!(Instant::now() < deadline, "{committed:?}"),
            _ => panic!("{committed:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A member of another group settles (joins, is assigned, syncs) at that coordinator.
    let settlers = || GroupId(StrBytes::from_static_str("settlers"));
    let join = |member: &str| {
        JoinGroupRequest::default()
            .with_group_id(settlers())
            .with_session_timeout_ms(30_000)
            .with_rebalance_timeout_ms(30_000)
            .with_member_id(StrBytes::from_string(member.to_owned()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(bytes::Bytes::from_static(b"subscription")),
            ])
    };
    let given: JoinGroupResponse = at_first.call(ApiKey::JoinGroup, 4, &join("")).await;
    assert_eq!(given.error_code, 79, "MEMBER_ID_REQUIRED: {given:?}");
    let member = given.member_id.clone();
    let joined: JoinGroupResponse = at_first.call(ApiKey::JoinGroup, 4, &join(&member)).await;
    assert_eq!(joined.error_code, 0, "{joined:?}");
    let sync = SyncGroupRequest::default()
        .with_group_id(settlers())
        .with_generation_id(joined.generation_id)
        .with_member_id(member.clone())
        .with_assignments(vec![
            SyncGroupRequestAssignment::default()
                .with_member_id(member.clone())
                .with_assignment(bytes::Bytes::from_static(b"p0")),
        ]);
    let synced: SyncGroupResponse = at_first.call(ApiKey::SyncGroup, 2, &sync).await;
    assert_eq!((synced.error_code, synced.assignment.as_ref()), (0, &b"p0"[..]));
    drop(at_first);
    let stopped = Instant::now();
    cluster.nodes[first as usize - 1].take().expect("running").shutdown().await;

    let mut named = Vec::new();
    for id in cluster.running() {
        named.push(coordinator(cluster.kafka[id as usize - 1], "movers", Some(first)).await);
    }
    println!("the coordinator moved {:?} after node {first} stopped", stopped.elapsed());
    assert!(named.iter().all(|id| *id == named[0]), "{named:?}");
    let fetch = OffsetFetchRequest::default().with_group_id(group()).with_topics(Some(vec![
        OffsetFetchRequestTopic::default()
            .with_name(common::kafka::name("kafka-jobs"))
            .with_partition_indexes(vec![0]),
    ]));
    let mut at_next = common::kafka::Connection::to(cluster.kafka[named[0] as usize - 1]).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let fetched: OffsetFetchResponse = at_next.call(ApiKey::OffsetFetch, 5, &fetch).await;
        let offset = fetched.topics.first().and_then(|t| t.partitions.first());
        if fetched.error_code == 0 && offset.map(|p| p.committed_offset) == Some(7) {
            break;
        }
        assert!(Instant::now() < deadline, "node {} answered {fetched:?}", named[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The settled member goes on at the new coordinator without joining again: it was
    // stored with its generation and assignment.
    let beat = HeartbeatRequest::default()
        .with_group_id(settlers())
        .with_generation_id(joined.generation_id)
        .with_member_id(member.clone());
    let answer: HeartbeatResponse = at_next.call(ApiKey::Heartbeat, 2, &beat).await;
    assert_eq!(answer.error_code, 0, "{answer:?}");
    let sync = sync.with_assignments(Vec::new());
    let synced: SyncGroupResponse = at_next.call(ApiKey::SyncGroup, 2, &sync).await;
    assert_eq!((synced.error_code, synced.assignment.as_ref()), (0, &b"p0"[..]));
}

/// Kafka clients nobody here wrote, bootstrapped at one node of a cluster: librdkafka's
/// idempotent producer writes to each partition's leader and reads everything back once,
/// and its consumer group commits and resumes through the coordinator the cluster names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_produces_and_consumes_as_a_group_through_a_cluster() {
    let Some(python) = common::kafka::python_with("confluent_kafka", "confluent-kafka") else {
        return;
    };
    let cluster = Cluster::start_with_kafka().await;
    cluster.create_topic(1, "idempotent", 2).await;
    cluster.create_topic(1, "events", 4).await;
    for topic in ["idempotent", "events"] {
        let partitions = if topic == "events" { 4 } else { 2 };
        for partition in 0..partitions {
            let deadline = Instant::now() + PATIENCE;
            while cluster.node(2).describe(topic).await.unwrap().partitions[partition]
                .leader
                .is_none()
            {
                assert!(Instant::now() < deadline, "no leader of {topic}/{partition}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let bootstrap = cluster.kafka[1].to_string();
    let printed = common::kafka::run_python_at(
        python.clone(),
        "confluent_kafka_idempotent.py",
        &bootstrap,
        &["idempotent"],
    )
    .await;
    assert!(printed.contains("consumed 200 records once each"), "{printed}");
    // Every node serves them: replicated, not only on the leaders the producer wrote to.
    for id in 1..=3 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut records = 0;
            for partition in 0..2 {
                records += cluster.node(id).fetch_all("idempotent", partition, 0).await.len();
            }
            if records == 200 {
                break;
            }
            assert!(records < 200 && Instant::now() < deadline, "node {id} serves {records}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let printed = common::kafka::run_python_at(
        python,
        "confluent_kafka_cluster_group.py",
        &bootstrap,
        &["events", "readers"],
    )
    .await;
    assert!(printed.contains("two members read 40 records once each"), "{printed}");
    assert!(printed.contains("resumed at the committed offsets"), "{printed}");
}

/// Two nodes take a create of one name while the metadata group elects a new leader (its
/// leader was just stopped): one topic results, the same on both, and at most one create
/// answers OK; the other says ALREADY_EXISTS (or, when its node could not tell whether its
/// command was committed, UNAVAILABLE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_creates_racing_through_an_election_make_one_topic() {
    let mut cluster = Cluster::start().await;
    let request = spool_proto::v1::DescribeClusterRequest {};
    let described = cluster.node(1).topics().await.describe_cluster(request).await.unwrap();
    let leader = described.into_inner().metadata_leader.expect("a metadata leader");
    cluster.nodes[leader as usize - 1].take().expect("running").shutdown().await;
    let survivors = cluster.running();
    let create = |id: u64| {
        let node = cluster.node(id);
        async move {
            let mut topics = node.topics().await;
            let deadline = Instant::now() + PATIENCE;
            loop {
                match topics.create_topic(create_request("raced", None)).await {
                    Ok(_) => return Code::Ok,
                    Err(status) if status.code() == Code::Unavailable => {
                        assert!(Instant::now() < deadline, "{status:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(status) => return status.code(),
                }
            }
        }
    };
    let (first, second) = tokio::join!(create(survivors[0]), create(survivors[1]));
    let mut answers = [first, second];
    answers.sort_by_key(|code| *code as i32);
    assert!(
        answers == [Code::Ok, Code::AlreadyExists] || answers == [Code::AlreadyExists; 2],
        "{answers:?}"
    );
    for id in survivors {
        let mut topics = cluster.node(id).topics().await;
        let listed = topics.list_topics(spool_proto::v1::ListTopicsRequest {}).await.unwrap();
        let names: Vec<String> = listed.into_inner().topics.into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["raced"], "node {id}");
    }
}

/// One node coordinates a cluster's consumer groups: members joining through three nodes
/// are sent there by the other two and share the topic's partitions, one each, and every
/// node's describe shows the three of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_through_different_nodes_share_the_partitions() {
    use spool_client::{CommitMode, GroupConfig, GroupState, OffsetReset};
    let cluster = Cluster::start().await;
    cluster.create_topic(1, "shared", 3).await;
    let config = GroupConfig {
        group: "sharers".into(),
        topics: vec!["shared".into()],
        session_timeout: Duration::from_secs(10),
        reset: OffsetReset::Earliest,
        commit: CommitMode::Explicit,
    };
    let mut clients = Vec::new();
    let mut polling = tokio::task::JoinSet::new();
    for id in 1..=3 {
        let url = format!("http://{}", cluster.node(id).address());
        let client = Client::connect(&url).await.unwrap();
        let mut member = client.group_consumer(config.clone()).await.expect("joined");
        // A member takes part in rebalances as it polls.
        polling.spawn(async move {
            loop {
                member.poll().await.expect("polled");
            }
        });
        clients.push(client);
    }
    for (client, id) in clients.iter().zip(1..) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let group = client.describe_group("sharers").await.expect("described");
            let mut owners: Vec<_> = group.partitions.iter().map(|p| p.owner.clone()).collect();
            owners.sort();
            owners.dedup();
            let one_each = owners.len() == 3 && owners.iter().all(Option::is_some);
            if group.state == GroupState::Stable && group.members.len() == 3 && one_each {
                break;
            }
            assert!(Instant::now() < deadline, "through node {id}: {group:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    polling.abort_all();
}

/// A member that reconnects by itself, given a node that does not coordinate the groups:
/// when the coordinator's node stops, it joins again through the node it was given, which
/// names the new coordinator, and it goes on after what it committed, as the same member
/// (the new coordinator took the stored members back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_member_follows_the_coordinator_to_another_node() {
    use spool_client::{
        CommitMode, GroupConfig, GroupEvent, OffsetReset, Reconnect, ReconnectEvent,
    };
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "tasks", 1).await;
    for i in 0..3 {
        cluster.produce("tasks", &format!("task {i}")).await;
    }
    let coordinator = cluster.group_coordinator(1).await;
    let request = spool_proto::v1::DescribeClusterRequest {};
    let described = cluster.node(1).topics().await.describe_cluster(request).await.unwrap();
    assert_eq!(described.into_inner().group_coordinator, Some(coordinator));
    let home = cluster.running().into_iter().find(|id| *id != coordinator).expect("a follower");
    let client = Client::connect(&format!("http://{}", cluster.node(home).address())).await;
    let config = GroupConfig {
        group: "followers".into(),
        topics: vec!["tasks".into()],
        session_timeout: Duration::from_secs(10),
        reset: OffsetReset::Earliest,
        commit: CommitMode::Explicit,
    };
    let mut member = client.unwrap().group_consumer(config).await.expect("joined");
    let value_of = |record: &spool_client::GroupRecord| {
        String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned()
    };
    let mut taken = Vec::new();
    while taken.len() < 3 {
        if let GroupEvent::Records(records) = member.poll().await.expect("polled") {
            taken.extend(records.records.iter().map(value_of));
        }
    }
    member.commit().await.expect("committed");
    let id = member.member_id().to_owned();
    cluster.nodes[coordinator as usize - 1].take().expect("running").shutdown().await;
    cluster.produce("tasks", "task 3").await;

    let reconnect = Reconnect {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
    };
    // What the member went through, for a failure that does not reproduce.
    let mut events = Vec::new();
    let mut polled_events = Vec::new();
    let next = tokio::time::timeout(PATIENCE, async {
        loop {
            let polled = member.poll_reconnecting(&reconnect, |event| events.push(event.clone()));
            match polled.await {
                Ok(GroupEvent::Records(records)) => {
                    if let Some(record) = records.records.first() {
                        return value_of(record);
                    }
                }
                Ok(other) => polled_events.push(format!("{other:?}")),
                Err(error) => panic!("polled: {error:?} after {events:?}"),
            }
        }
    })
    .await;
    let next = next.unwrap_or_else(|_| {
        panic!(
            "no record came after the coordinator's node stopped; the member went through \
             {events:?} and polled {polled_events:?}"
        )
    });
    let reconnected =
        events.iter().any(|event| matches!(event, ReconnectEvent::Reconnected { .. }));
    assert!(reconnected, "the member never joined again: {events:?}");
    assert_eq!(next, "task 3", "resumed after what was committed ({taken:?})");
    assert_eq!(member.member_id(), id, "resumed as the member it was");
}

/// The offsets group's log is compacted behind a snapshot of every group's committed
/// offsets: a node that was down meanwhile takes that snapshot from the leader (the entries
/// it missed are purged), and a node restarted after its own compaction starts from its
/// saved snapshot; both know every commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_outlive_a_compacted_offsets_log_on_every_node() {
    use spool_client::StartAt;
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "work", 1).await;
    for i in 0..5 {
        cluster.produce("work", &format!("job {i}")).await;
    }
    let reset = async |cluster: &Cluster, through: u64, group: &str, offset: u64| {
        let url = format!("http://{}", cluster.node(through).address());
        let client = Client::connect(&url).await.expect("connected");
        let deadline = Instant::now() + PATIENCE;
        loop {
            match client.reset_group(group, "work", StartAt::Offset(offset)).await {
                Ok(_) => return,
                Err(error) => {
                    assert!(Instant::now() < deadline, "resetting {group}: {error:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    reset(&cluster, 1, "first", 1).await;
    let coordinator = cluster.group_coordinator(1).await;
    let lagging = (1..=3).find(|id| *id != coordinator).unwrap();
    let other = (1..=3).find(|id| *id != coordinator && *id != lagging).unwrap();
    cluster.nodes[lagging as usize - 1].take().expect("running").shutdown().await;
    reset(&cluster, other, "first", 3).await;
    reset(&cluster, other, "second", 4).await;
    for id in [coordinator, other] {
        let (_, offsets) = cluster.node(id).compact_internal_logs().await.expect("compacted");
        assert!(offsets.is_some(), "node {id} had entries to compact");
    }
    let knows_every_commit = async |cluster: &Cluster, id: u64| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let node = cluster.node(id);
            let known = (
                node.committed_offset("first", "work", 0),
                node.committed_offset("second", "work", 0),
            );
            if known == (Some(3), Some(4)) {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} knows {known:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    cluster.restart(lagging).await;
    knows_every_commit(&cluster, lagging).await;
    cluster.nodes[other as usize - 1].take().expect("running").shutdown().await;
    cluster.restart(other).await;
    knows_every_commit(&cluster, other).await;
}

/// The metadata group's log is compacted behind a snapshot of the cluster's topics, node
/// registrations and producer-id blocks: a node that was down meanwhile takes the leader's
/// snapshot and ends with the cluster's topics (it creates what it missed, deletes what was
/// deleted, grows what grew), and a compacted node restarted starts from its own snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_compacted_metadata_log_takes_the_cluster_s_topics() {
    use spool_proto::v1::{AlterTopicRequest, DeleteTopicRequest, DescribeClusterRequest};
    let mut cluster = Cluster::start().await;
    for name in ["kept", "grown", "dropped"] {
        cluster.create_topic(1, name, 1).await;
    }
    cluster.produce("kept", "before").await;
    let mut topics = cluster.node(1).topics().await;
    let described = topics.describe_cluster(DescribeClusterRequest {}).await.unwrap();
    let leader = described.into_inner().metadata_leader.expect("a metadata leader");
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let through = (1..=3).find(|id| *id != leader && *id != lagging).unwrap();
    cluster.nodes[lagging as usize - 1].take().expect("running").shutdown().await;
    cluster.create_topic(through, "added", 1).await;
    let mut topics = cluster.node(through).topics().await;
    topics.delete_topic(DeleteTopicRequest { name: "dropped".into() }).await.expect("deleted");
    let grow =
        AlterTopicRequest { name: "grown".into(), partitions: Some(3), ..Default::default() };
    topics.alter_topic(grow).await.expect("grown");
    for id in [leader, through] {
        let (metadata, _) = cluster.node(id).compact_internal_logs().await.expect("compacted");
        assert!(metadata.is_some(), "node {id} had entries to compact");
    }
    let holds_the_cluster_s_topics = async |cluster: &Cluster, id: u64| {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut topics = cluster.node(id).topics().await;
            let listed = topics.list_topics(spool_proto::v1::ListTopicsRequest {}).await;
            let names: Vec<String> =
                listed.unwrap().into_inner().topics.into_iter().map(|t| t.name).collect();
            let grown = cluster.node(id).describe("grown").await.map(|t| t.partitions.len());
            if names == ["added", "grown", "kept"] && grown.as_ref().ok() == Some(&3) {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} holds {names:?}, grown: {grown:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    cluster.restart(lagging).await;
    holds_the_cluster_s_topics(&cluster, lagging).await;
    assert_eq!(cluster.read(lagging, "kept", 1).await, ["before"]);
    cluster.nodes[through as usize - 1].take().expect("running").shutdown().await;
    cluster.restart(through).await;
    holds_the_cluster_s_topics(&cluster, through).await;
    cluster.produce_at(through, "added", "after").await;
}

/// What a group describes through node `id` once the cluster answers (refusals meanwhile: an
/// election, the coordinator's load); `None` once it does not know the group.
async fn described_group(
    cluster: &Cluster,
    id: u64,
    group: &str,
) -> Option<spool_client::GroupInfo> {
    use spool_client::{AdminError, ErrorCode};
    let client = Client::connect(&format!("http://{}", cluster.node(id).address())).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match client.describe_group(group).await {
            Ok(described) => return Some(described),
            Err(AdminError::Rejected(error)) if error.code == ErrorCode::NotFound => return None,
            Err(AdminError::Rejected(error))
                if matches!(error.code, ErrorCode::Unavailable | ErrorCode::FailedPrecondition) =>
            {
                assert!(Instant::now() < deadline, "node {id}: {error:?}");
            }
            Err(error) => panic!("node {id}: {error:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A topic deleted through any node has its committed offsets forgotten by the groups'
/// coordinator, durably: a topic made again under the name starts the group without them,
/// also after the coordinator's node stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topics_committed_offsets_are_forgotten_by_the_cluster() {
    use spool_client::StartAt;
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "jobs", 1).await;
    cluster.create_topic(1, "audit", 1).await;
    for topic in ["jobs", "audit"] {
        cluster.produce(topic, "one").await;
        cluster.produce(topic, "two").await;
    }
    let at_two = Client::connect(&format!("http://{}", cluster.node(2).address())).await.unwrap();
    for topic in ["jobs", "audit"] {
        at_two.reset_group("workers", topic, StartAt::Offset(2)).await.expect("reset");
    }
    let at_three = Client::connect(&format!("http://{}", cluster.node(3).address())).await.unwrap();
    at_three.delete_topic("jobs").await.expect("deleted through node 3");
    cluster.create_topic(1, "jobs", 1).await;
    let committed = |described: &spool_client::GroupInfo| -> Vec<(String, Option<u64>)> {
        let partitions = described.partitions.iter();
        partitions.map(|p| (p.topic.clone(), p.committed_offset)).collect()
    };
    let kept = vec![("audit".to_owned(), Some(2))];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let described = described_group(&cluster, 1, "workers").await.expect("still known");
        if committed(&described) == kept {
            break;
        }
        assert!(Instant::now() < deadline, "never forgotten: {described:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let coordinator = at_two.describe_cluster().await.expect("described").group_coordinator;
    let coordinator = coordinator.expect("a coordinator");
    drop((at_two, at_three));
    cluster.nodes[coordinator as usize - 1].take().expect("running").shutdown().await;
    let other = cluster.running()[0];
    let described = described_group(&cluster, other, "workers").await.expect("still known");
    assert_eq!(committed(&described), kept, "forgotten for good, through node {other}");
}

/// A group's commits through one node reach every node: once that node is gone, the others
/// describe the group with the offsets it committed, and a member joining another node
/// resumes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_committed_offsets_survive_the_node_that_took_them() {
    use spool_client::{CommitMode, GroupConfig, GroupEvent, OffsetReset, StartAt};
    let mut cluster = Cluster::start().await;
    cluster.create_topic(1, "jobs", 1).await;
    for i in 0..10 {
        cluster.produce("jobs", &format!("job {i}")).await;
    }
    let config = GroupConfig {
        group: "workers".into(),
        topics: vec!["jobs".into()],
        session_timeout: Duration::from_secs(10),
        reset: OffsetReset::Earliest,
        commit: CommitMode::Explicit,
    };
    let at_two = Client::connect(&format!("http://{}", cluster.node(2).address())).await.unwrap();
    let mut member = at_two.group_consumer(config.clone()).await.expect("joined at node 2");
    // Take the first six records, and commit them.
    let mut taken = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while taken.len() < 6 {
        if let GroupEvent::Records(records) = member.poll().await.expect("polled") {
            taken.extend(records.records.iter().map(|r| r.offset));
        }
        assert!(Instant::now() < deadline, "only {taken:?} came");
    }
    // Closed, not dropped: a dropped member leaves in the background, and the reset below
    // is refused while the group still has it.
    member.close().await.expect("committed and left");
    let committed = *taken.last().unwrap() + 1;
    // Moved by an administrator too, through node 2: a reset goes the same way.
    at_two.reset_group("workers", "jobs", StartAt::Offset(committed)).await.expect("reset");
    drop(at_two);
    cluster.nodes[1].take().expect("running").shutdown().await;

    // The new coordinator answers once it has loaded the groups: its first answer has the
    // offset committed at the last one (refusals meanwhile: an election, the load).
    for id in [1, 3] {
        let client =
            Client::connect(&format!("http://{}", cluster.node(id).address())).await.unwrap();
        let deadline = Instant::now() + PATIENCE;
        let described = loop {
            use spool_client::{AdminError, ErrorCode};
            match client.describe_group("workers").await {
                Ok(described) => break described,
                Err(AdminError::Rejected(error))
                    if matches!(
                        error.code,
                        ErrorCode::Unavailable | ErrorCode::FailedPrecondition
                    ) =>
                {
                    assert!(Instant::now() < deadline, "node {id}: {error:?}");
                }
                Err(error) => panic!("node {id}: {error:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let offset = described.partitions.first().and_then(|p| p.committed_offset);
        assert_eq!(offset, Some(committed), "through node {id}: {described:?}");
    }
    // A member at node 3 resumes after what was committed at node 2.
    cluster.produce("jobs", "job 10").await;
    let at_three = Client::connect(&format!("http://{}", cluster.node(3).address())).await.unwrap();
    let mut member = at_three.group_consumer(config).await.expect("joined at node 3");
    let first = tokio::time::timeout(PATIENCE, async {
        loop {
            if let GroupEvent::Records(records) = member.poll().await.expect("polled")
                && let Some(record) = records.records.first()
            {
                return (
                    record.offset,
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                        .into_owned(),
                );
            }
        }
    });
    let (offset, value) = first.await.expect("a record came at node 3");
    assert!(offset >= committed, "{offset} is before the committed {committed}");
    assert_eq!(value, format!("job {}", taken.len()), "resumed after what node 2's member took");
}

/// A node that starts on an empty data directory beside a running cluster, and that no node
/// has a registration of, is new: it votes at once, rather than holding its vote until it has
/// caught up with each group's leader. Here it has caught up with nothing when the metadata
/// group's leader stops; the remaining node and it still elect a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_votes_before_it_has_caught_up() {
    use spool_proto::v1::DescribeClusterRequest;
    let mut cluster = Cluster::start_but_one(3).await;
    // Nothing the others send node 3 reaches it: it copies no group's log.
    cluster.proxies[2].set(Fault::Drop);
    cluster.start_late().await;
    let rejoins = tokio::time::timeout(PATIENCE, cluster.node(3).rejoins()).await;
    assert!(!rejoins.expect("settled").expect("a node of a cluster"), "node 3 rejoins");
    let request = DescribeClusterRequest {};
    let described = cluster.node(1).topics().await.describe_cluster(request).await.unwrap();
    let leader = described.into_inner().metadata_leader.expect("a metadata leader");
    let remaining = if leader == 1 { 2 } else { 1 };
    cluster.nodes[leader as usize - 1].take().expect("running").shutdown().await;
    cluster.proxies[2].set(Fault::Pass);
    // The metadata group elects the remaining node with node 3's vote: a topic is created.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut topics = cluster.node(remaining).topics().await;
        match topics.create_topic(create_request("after", None)).await {
            Ok(_) => break,
            Err(status) => {
                assert!(Instant::now() < deadline, "no topic created: {status:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // So does the offsets group, if the stopped node led it.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let request = DescribeClusterRequest {};
        let mut topics = cluster.node(remaining).topics().await;
        let described = topics.describe_cluster(request).await.unwrap().into_inner();
        if described.group_coordinator.is_some_and(|id| id != leader) {
            break;
        }
        assert!(Instant::now() < deadline, "no group coordinator: {described:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn create_request(
    name: &str,
    replication_factor: Option<u32>,
) -> spool_proto::v1::CreateTopicRequest {
    spool_proto::v1::CreateTopicRequest {
        name: name.into(),
        config: Some(spool_proto::v1::TopicConfig { replication_factor, ..Default::default() }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_names_the_leader_and_replicas_and_the_replication_factor_must_fit() {
    let cluster = Cluster::start().await;
    let mut topics = cluster.node(1).topics().await;
    for (factor, refusal) in [(4, "more than the 3 nodes"), (0, "held by 1 to 3 nodes")] {
        let refused = topics.create_topic(create_request("wide", Some(factor))).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(refusal), "{refused:?}");
    }
    let created = topics.create_topic(create_request("wide", Some(3))).await;
    let created = created.expect("three replicas fit").into_inner().topic.expect("described");
    assert!(created.partitions[0].leader.is_some(), "the answer names the leader: {created:?}");
    cluster.produce("wide", "one").await;
    let mut leaders = Vec::new();
    for id in 1..=3 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let described = cluster.node(id).describe("wide").await.expect("described");
            assert_eq!(described.config.as_ref().unwrap().replication_factor, Some(3));
            let partition = &described.partitions[0];
            let mut replicas = partition.replicas.clone();
            replicas.sort_unstable();
            assert_eq!(replicas, [1, 2, 3], "node {id}");
            if let Some(leader) = partition.leader {
                leaders.push(leader);
                break;
            }
            assert!(Instant::now() < deadline, "node {id} never knew the leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(leaders.iter().all(|l| *l == leaders[0]), "one leader: {leaders:?}");

    // DescribeCluster: every node, reachable, and the partition with its leader; the leader
    // reports both followers' lag.
    let request = spool_proto::v1::DescribeClusterRequest {};
    let at_leader = cluster.node(leaders[0]).topics().await.describe_cluster(request).await;
    let described = at_leader.expect("described").into_inner();
    assert_eq!(described.node_id, Some(leaders[0]));
    let nodes: Vec<(u64, bool)> = described.nodes.iter().map(|n| (n.id, n.reachable)).collect();
    assert_eq!(nodes, [(1, true), (2, true), (3, true)]);
    let protocol = Some(spool_replication::PROTOCOL_VERSION);
    assert!(described.nodes.iter().all(|n| n.peer_protocol == protocol), "{described:?}");
    let partition = &described.partitions[0];
    assert_eq!((partition.topic.as_str(), partition.leader), ("wide", Some(leaders[0])));
    assert!(partition.high_watermark >= 1, "{partition:?}");
    let mut followers: Vec<u64> = partition.lag.iter().map(|lag| lag.node_id).collect();
    followers.sort_unstable();
    assert_eq!(followers.len(), 2, "{partition:?}");
    assert!(!followers.contains(&leaders[0]), "{partition:?}");

    // A create's answer names every partition's leader, also of partitions the node it went
    // through holds no replica of.
    let mut narrow = create_request("narrow", Some(1));
    narrow.config.as_mut().unwrap().partitions = 3;
    let created = topics.create_topic(narrow).await.expect("created").into_inner();
    let partitions = created.topic.expect("described").partitions;
    let leaders: Vec<Option<u64>> = partitions.iter().map(|p| p.leader).collect();
    assert!(leaders.iter().all(Option::is_some), "every leader named: {leaders:?}");
}

/// A topic on two of the three nodes: each partition is held by two, leaders spread, and
/// every node takes each partition's writes and serves its reads, live subscriptions
/// included: the node that holds none passes writes to the leader and asks a replica for
/// reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_on_two_of_three_nodes_is_served_through_every_node() {
    use spool_proto::v1::start_position::{Latest, Position};
    use spool_proto::v1::{StartPosition, SubscribeRequest};
    let cluster = Cluster::start().await;
    let mut request = create_request("pairs", Some(2));
    request.config.as_mut().unwrap().partitions = 3;
    cluster.node(1).topics().await.create_topic(request).await.expect("two replicas fit");
    let mut outsiders = Vec::new();
    for partition in 0..3usize {
        let described = cluster.node(1).describe("pairs").await.expect("described");
        let replicas = described.partitions[partition].replicas.clone();
        assert_eq!(replicas.len(), 2, "partition {partition}: {replicas:?}");
        let outsider = (1..=3).find(|id| !replicas.contains(id)).unwrap();
        outsiders.push(outsider);
        // The node that holds none names the replicas and, once it asked them, the leader.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let described = cluster.node(outsider).describe("pairs").await.expect("described");
            let seen = &described.partitions[partition];
            assert!(seen.not_held_here, "node {outsider}: {seen:?}");
            assert_eq!(seen.replicas, replicas);
            if let Some(leader) = seen.leader {
                assert!(replicas.contains(&leader), "{seen:?}");
                break;
            }
            assert!(Instant::now() < deadline, "node {outsider} never named a leader: {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut outsider_set = outsiders.clone();
    outsider_set.sort_unstable();
    assert_eq!(outsider_set, [1, 2, 3], "each node leaves out one partition: {outsiders:?}");

    for partition in 0..3u32 {
        let outsider = outsiders[partition as usize];
        // A live subscription through the node that holds none of the partition.
        let start = StartPosition { position: Some(Position::Latest(Latest {})) };
        let mut live = cluster
            .node(outsider)
            .consumer()
            .await
            .subscribe(SubscribeRequest {
                topic: "pairs".into(),
                partition,
                start: Some(start),
                encoding: 0,
                stop_at_end: false,
            })
            .await
            .expect("subscribed")
            .into_inner();
        let mut expected = Vec::new();
        for id in 1..=3 {
            let value = format!("partition {partition} via node {id}");
            cluster.produce_to(id, "pairs", partition, &value).await;
            expected.push(value);
        }
        for id in 1..=3 {
            let values = cluster.read_partition(id, "pairs", partition, expected.len()).await;
            assert_eq!(values, expected, "partition {partition} read through node {id}");
        }
        let mut received = Vec::new();
        while received.len() < expected.len() {
            let message = tokio::time::timeout(PATIENCE, live.message()).await;
            let message = message.expect("records reach the subscription").expect("a message");
            let message = message.expect("the subscription goes on");
            received.extend(message.records.iter().map(|r| value(r).to_owned()));
        }
        assert_eq!(received, expected, "partition {partition} live through node {outsider}");
        // The node that holds none describes the partition as a replica said.
        let described = cluster.node(outsider).describe("pairs").await.expect("described");
        let seen = &described.partitions[partition as usize];
        assert!(seen.log_end_offset >= 3 && seen.size_bytes > 0, "{seen:?}");
    }

    // An idempotent producer with batches in flight through the node that holds none of
    // partition 0: each record stored once, in the order sent.
    let outsider = outsiders[0];
    let client = Client::connect(&format!("http://{}", cluster.node(outsider).address()))
        .await
        .expect("connect");
    let config = ProducerConfig {
        idempotent: true,
        batch_records_max: 1,
        linger: Duration::ZERO,
        in_flight_max: 5,
        follow_leaders: false,
        ..ProducerConfig::default()
    };
    let producer = client.producer("pairs", config).await.expect("an idempotent producer");
    let mut deliveries = Vec::new();
    let mut expected: Vec<String> =
        (1..=3).map(|id| format!("partition 0 via node {id}")).collect();
    for i in 0..200 {
        let value = format!("idempotent {i}");
        let record = ClientRecord::value(value.as_bytes()).with_partition(0);
        deliveries.push(producer.send(record).await.expect("buffered"));
        expected.push(value);
    }
    for delivery in deliveries {
        delivery.wait().await.expect("acknowledged");
    }
    let stored: Vec<String> = cluster
        .node(1)
        .fetch_all("pairs", 0, 0)
        .await
        .iter()
        .map(|r| value(r).to_owned())
        .collect();
    assert!(stored == expected, "stored once each, in order: {stored:?}");

    // A subscriber through that node is told when the topic is deleted.
    let start = StartPosition { position: Some(Position::Latest(Latest {})) };
    let request = SubscribeRequest {
        topic: "pairs".into(),
        partition: 0,
        start: Some(start),
        encoding: 0,
        stop_at_end: false,
    };
    let mut live = cluster.node(outsider).consumer().await.subscribe(request).await.unwrap();
    let request = spool_proto::v1::DeleteTopicRequest { name: "pairs".into() };
    cluster.node(1).topics().await.delete_topic(request).await.expect("deleted");
    let ended = tokio::time::timeout(PATIENCE, live.get_mut().message()).await.expect("it ends");
    common::assert_code(ended, Code::NotFound, "deleted");
}

/// A topic of one replica per partition, one partition on each node: a consumer group's
/// member, fed by the coordinating node (which holds one of them), takes every record of
/// the three and commits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_takes_partitions_its_coordinator_holds_no_replica_of() {
    use spool_client::{CommitMode, GroupConfig, GroupEvent, OffsetReset};
    let cluster = Cluster::start().await;
    let mut request = create_request("singles", Some(1));
    request.config.as_mut().unwrap().partitions = 3;
    cluster.node(1).topics().await.create_topic(request).await.expect("one replica fits");
    let mut expected = Vec::new();
    for partition in 0..3u32 {
        for i in 0..2 {
            let value = format!("partition {partition} record {i}");
            cluster.produce_to(1, "singles", partition, &value).await;
            expected.push(value);
        }
    }
    let coordinator = cluster.group_coordinator(1).await;
    let client = Client::connect(&format!("http://{}", cluster.node(coordinator).address()))
        .await
        .expect("connect");
    let config = GroupConfig {
        group: "spread".into(),
        topics: vec!["singles".into()],
        session_timeout: Duration::from_secs(10),
        reset: OffsetReset::Earliest,
        commit: CommitMode::Explicit,
    };
    let mut member = client.group_consumer(config).await.expect("joined");
    let mut taken = Vec::new();
    let polled = tokio::time::timeout(PATIENCE, async {
        while taken.len() < expected.len() {
            if let GroupEvent::Records(records) = member.poll().await.expect("polled") {
                let values = records.records.iter().map(|record| {
                    String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
                        .into_owned()
                });
                taken.extend(values);
            }
        }
    });
    polled.await.unwrap_or_else(|_| panic!("only {taken:?} came"));
    taken.sort();
    assert_eq!(taken, expected);
    member.commit().await.expect("committed");
    let group = client.describe_group("spread").await.expect("described");
    assert_eq!(group.partitions.len(), 3, "{group:?}");
    for partition in &group.partitions {
        assert!(partition.committed_offset.is_some(), "{group:?}");
        assert_eq!(partition.lag, Some(0), "{group:?}");
    }
}

#[tokio::test]
async fn a_single_node_takes_replication_factor_one_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut topics = server.topics().await;
    let refused = topics.create_topic(create_request("solo", Some(3))).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("it is a single node"), "{refused:?}");
    topics.create_topic(create_request("solo", Some(1))).await.expect("one replica fits");
    let described = server.describe("solo").await.unwrap();
    assert_eq!(described.config.unwrap().replication_factor, Some(1));
    assert!(
        described.partitions[0].replicas.is_empty() && described.partitions[0].leader.is_none()
    );
    let request = spool_proto::v1::DescribeClusterRequest {};
    let single = topics.describe_cluster(request).await.expect("described").into_inner();
    assert_eq!(single, spool_proto::v1::DescribeClusterResponse::default(), "not a cluster");
    server.shutdown().await;
}
