//! Three `spool` servers in one process forming a cluster on 127.0.0.1-3: topics created on
//! any node exist on every node, partitions are replicated, a follower refuses writes naming
//! the leader, every node serves what is committed, and a dead leader is replaced.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{TestServer, always, record, value};
use spool_server::ClusterSetup;
use spool_server::cluster::ClusterOptions;
use spool_server::error::{LEADER_ADDRESS_KEY, LEADER_ID_KEY};
use tokio::net::TcpListener;
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(30);

fn ip(id: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, id as u8))
}

struct Cluster {
    /// By node id - 1; `None` once stopped.
    nodes: Vec<Option<TestServer>>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    async fn start() -> Cluster {
        let mut listeners = Vec::new();
        for id in 1..=3 {
            listeners.push(TcpListener::bind((ip(id), 0)).await.expect("bind a peer listener"));
        }
        let peers: Vec<(u64, std::net::SocketAddr)> = listeners
            .iter()
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap()))
            .collect();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let options = ClusterOptions::new(id, &peers).expect("a valid cluster");
            let setup = ClusterSetup { options, listener: Some(listener) };
            let server = spool_server::testing::TestServer::start_cluster_node(
                dirs[i].path(),
                ip(id),
                setup,
            )
            .await
            .expect("start a node");
            nodes.push(server);
        }
        for node in &nodes {
            tokio::time::timeout(PATIENCE, node.wait_until_serving())
                .await
                .expect("every node joins")
                .expect("health");
        }
        Cluster {
            nodes: nodes.into_iter().map(|n| Some(TestServer::from(n))).collect(),
            _dirs: dirs,
        }
    }

    fn node(&self, id: u64) -> &TestServer {
        self.nodes[id as usize - 1].as_ref().expect("running")
    }

    fn running(&self) -> Vec<u64> {
        (1..=3).filter(|id| self.nodes[*id as usize - 1].is_some()).collect()
    }

    /// Produces `value` to partition 0 of `topic`, following the leader each refusal names,
    /// until it is acknowledged; the offset.
    async fn produce(&self, topic: &str, value: &str) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        let mut at = self.running()[0];
        loop {
            match self.node(at).produce(topic, Some(0), vec![record(value)]).await {
                Ok(produced) => return produced.appends[0].base_offset,
                Err(status) if status.code() == Code::FailedPrecondition => {
                    let leader = status.metadata().get(LEADER_ID_KEY).and_then(|v| v.to_str().ok());
                    let leader = leader.and_then(|v| v.parse::<u64>().ok());
                    if let Some(leader) = leader.filter(|l| self.running().contains(l)) {
                        at = leader;
                    } else {
                        at = self.running()[(self
                            .running()
                            .iter()
                            .position(|n| *n == at)
                            .unwrap_or(0)
                            + 1)
                            % self.running().len()];
                    }
                }
                Err(status) if status.code() == Code::Unavailable => {}
                Err(status) => panic!("producing {value}: {status:?}"),
            }
            assert!(Instant::now() < deadline, "{value} not acknowledged within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` serves `count` records of partition 0 of `topic`; their values.
    async fn read(&self, id: u64, topic: &str, count: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(described) = self.node(id).describe(topic).await {
                let _ = described;
                let records = self.node(id).fetch_all(topic, 0, 0).await;
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
async fn a_topic_created_on_any_node_is_replicated_and_a_follower_names_the_leader() {
    let cluster = Cluster::start().await;
    cluster.node(2).create_topic("events", 1, always()).await;
    let mut topics = cluster.node(3).topics().await;
    let request = spool_proto::v1::CreateTopicRequest { name: "events".into(), config: None };
    let again = topics.create_topic(request);
    let again = again.await.expect_err("created twice");
    assert!(matches!(again.code(), Code::AlreadyExists | Code::Unavailable), "{again:?}");
    let mut expected = Vec::new();
    for i in 0..20 {
        let value = format!("event {i}");
        cluster.produce("events", &value).await;
        expected.push(value);
    }
    for id in 1..=3 {
        assert_eq!(cluster.read(id, "events", 20).await, expected, "node {id}");
    }
    // Every node but the leader refuses a produce, naming the leader and its address.
    let mut refusals = 0;
    for id in 1..=3 {
        if let Err(status) = cluster.node(id).produce("events", Some(0), vec![record("x")]).await {
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(
                status.message().contains("does not lead partition 0 of topic events"),
                "{status:?}"
            );
            let address = status.metadata().get(LEADER_ADDRESS_KEY).expect("the leader's address");
            let leader: u64 =
                status.metadata().get(LEADER_ID_KEY).unwrap().to_str().unwrap().parse().unwrap();
            assert_eq!(address.to_str().unwrap(), cluster.node(leader).address().to_string());
            refusals += 1;
        }
    }
    assert_eq!(refusals, 2, "one leader, two followers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let mut cluster = Cluster::start().await;
    cluster.node(1).create_topic("orders", 1, always()).await;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let value = format!("before {i}");
        cluster.produce("orders", &value).await;
        acknowledged.push(value);
    }
    // Find the leader: the node that takes a produce.
    let mut leader = None;
    for id in 1..=3 {
        if cluster.node(id).produce("orders", Some(0), vec![record("probe")]).await.is_ok() {
            leader = Some(id);
            acknowledged.push("probe".into());
            break;
        }
    }
    let leader = leader.expect("a leader");
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
    for (factor, refusal) in
        [(4, "more than the 3 nodes"), (2, "other factors are not supported yet")]
    {
        let refused = topics.create_topic(create_request("wide", Some(factor))).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().contains(refusal), "{refused:?}");
    }
    topics.create_topic(create_request("wide", Some(3))).await.expect("three replicas fit");
    cluster.produce("wide", "one").await;
    let mut leaders = Vec::new();
    for id in 1..=3 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let described = cluster.node(id).describe("wide").await.expect("described");
            assert_eq!(described.config.as_ref().unwrap().replication_factor, Some(3));
            let partition = &described.partitions[0];
            assert_eq!(partition.replicas, [1, 2, 3], "node {id}");
            if let Some(leader) = partition.leader {
                leaders.push(leader);
                break;
            }
            assert!(Instant::now() < deadline, "node {id} never knew the leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(leaders.iter().all(|l| *l == leaders[0]), "one leader: {leaders:?}");
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
    server.shutdown().await;
}
