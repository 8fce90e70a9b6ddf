//! Three `spool serve` processes forming a cluster on 127.0.0.1-3, driven by the `spool`
//! command: a topic created through one node, writes given to a follower (`spool produce`
//! sends them to the leader), `spool cluster status`, `kill -9` of the partition's leader,
//! twice (the killed node is started again on its data and catches up), and a follower whose
//! data directory is wiped (started again on an empty one, it copies everything from the
//! others): every acknowledged record is served by every node exactly once, in order. Each
//! wait polls a command until it answers, with a deadline as a failure guard.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{SPOOL, Served};

const GUARD: Duration = Duration::from_secs(60);

struct Node {
    peers: String,
    id: u64,
    client: String,
    metrics: String,
    data: PathBuf,
    served: Option<Served>,
}

impl Node {
    fn start(&mut self) {
        let mut command = Command::new(SPOOL);
        command.env("RUST_LOG", "warn").args([
            "serve",
            "--node-id",
            &self.id.to_string(),
            "--peers",
            &self.peers,
            "--listen",
            &self.client,
            "--metrics",
            &self.metrics,
            "--data",
        ]);
        command.arg(&self.data);
        self.served = Some(Served::spawn(command));
    }

    /// `spool ARGS` against this node, with `stdin` as its input.
    fn spool(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(SPOOL)
            .args(args)
            .env("SPOOL_SERVER", format!("http://{}", self.client))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// What its Prometheus endpoint serves now.
    fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.metrics).unwrap();
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.metrics);
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// `spool ARGS` until it succeeds (the cluster may be electing a leader); its stdout.
    fn until_ok(&self, args: &[&str], stdin: &str) -> String {
        let deadline = Instant::now() + GUARD;
        loop {
            let output = self.spool(args, stdin);
            if output.status.success() {
                return String::from_utf8(output.stdout).unwrap();
            }
            let error = String::from_utf8_lossy(&output.stderr).into_owned();
            if Instant::now() >= deadline {
                // The node's own account, for a failure that does not reproduce.
                let log = self.served.as_ref().map(Served::log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "spool {args:?} at node {}: {error}\nits log ends:\n{}",
                    self.id,
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn free_address(ip: &str) -> String {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    listener.local_addr().unwrap().to_string()
}

fn start_cluster(dir: &Path) -> Vec<Node> {
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let peers: Vec<String> =
        ips.iter().enumerate().map(|(i, ip)| format!("{}={}", i + 1, free_address(ip))).collect();
    let peers = peers.join(",");
    let mut nodes: Vec<Node> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| Node {
            peers: peers.clone(),
            id: i as u64 + 1,
            client: free_address(ip),
            metrics: free_address(ip),
            data: dir.join(format!("node-{}", i + 1)),
            served: None,
        })
        .collect();
    // A node says it listens once it has joined, which takes a majority: start them together.
    std::thread::scope(|scope| {
        for node in &mut nodes {
            scope.spawn(|| node.start());
        }
    });
    nodes
}

/// The leader of `topic`/0 in `spool cluster status` as `node` prints it, once it knows one.
fn leader(node: &Node, topic: &str) -> u64 {
    let deadline = Instant::now() + GUARD;
    loop {
        let status = node.until_ok(&["cluster", "status"], "");
        let line = status.lines().find(|l| l.trim_start().starts_with(&format!("{topic}/0\t")));
        let leader = line
            .and_then(|l| l.split('\t').find_map(|field| field.strip_prefix("leader ")))
            .and_then(|id| id.parse().ok());
        if let Some(leader) = leader {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader of {topic}/0 in:\n{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn killing_the_leader_or_wiping_a_follower_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path());
    nodes[1].until_ok(&["topic", "create", "t"], "");
    let status = nodes[0].until_ok(&["cluster", "status"], "");
    for id in 1..=3 {
        assert!(status.contains(&format!("node {id}\t")), "{status}");
    }
    assert!(status.contains("group coordinator (every consumer group, gRPC and Kafka): "));
    let mut acknowledged: Vec<String> = Vec::new();
    for round in 0..2 {
        let leader = leader(&nodes[0], "t");
        let via = if leader == 1 { 1 } else { 0 };
        for i in 0..5 {
            let value = format!("round {round} before {i}");
            nodes[via].until_ok(&["produce", "t", "--partition", "0"], &format!("{value}\n"));
            acknowledged.push(value);
        }
        drop(nodes[leader as usize - 1].served.take()); // SIGKILL
        let killed = Instant::now();
        for i in 0..5 {
            let value = format!("round {round} after {i}");
            nodes[via].until_ok(&["produce", "t", "--partition", "0"], &format!("{value}\n"));
            if i == 0 {
                println!(
                    "round {round}: writes resumed {:?} after kill -9 of node {leader}",
                    killed.elapsed()
                );
            }
            acknowledged.push(value);
        }
        nodes[leader as usize - 1].start();
    }
    // A follower loses its whole data directory and starts again on an empty one.
    let leader = leader(&nodes[0], "t");
    let wiped = (1..=3).find(|id| *id != leader).expect("a follower") as usize - 1;
    drop(nodes[wiped].served.take()); // SIGKILL
    std::fs::remove_dir_all(&nodes[wiped].data).unwrap();
    nodes[wiped].start();
    let log = nodes[wiped].served.as_ref().expect("started").log();
    assert!(log.contains("this node started on an empty data directory, and node"), "{log}");
    let value = "after the wipe".to_owned();
    nodes[wiped].until_ok(&["produce", "t", "--partition", "0"], &format!("{value}\n"));
    acknowledged.push(value);
    // The replication series: every node names a leader and counts the leaders it saw; the
    // leader that took the last writes timed their commits.
    let mut commits_timed = 0.0f64;
    for node in &nodes {
        let scraped = node.scrape();
        let series = |name: &str| {
            scraped
                .lines()
                .find(|l| l.starts_with(name) && l.contains("topic=\"t\""))
                .unwrap_or_else(|| panic!("no {name} of t at node {}:\n{scraped}", node.id))
                .rsplit(' ')
                .next()
                .unwrap()
                .parse::<f64>()
                .unwrap()
        };
        let leader = series("spool_partition_leader{");
        assert!([1.0, 2.0, 3.0].contains(&leader), "node {}: {leader}", node.id);
        assert!(series("spool_leader_changes_total{") >= 1.0, "node {}", node.id);
        commits_timed = commits_timed.max(series("spool_replication_commit_seconds_count{"));
    }
    assert!(commits_timed >= 5.0, "the leader timed {commits_timed} commits");
    // Handing the partition back through any node puts it on its preferred leader, the first
    // of its replicas (the nodes' own hand-backs may have done so already); the wiped node
    // is refused until it has caught up, so it is asked until it succeeds.
    let elected = nodes[2].until_ok(&["cluster", "elect-leaders", "t", "--partition", "0"], "");
    assert!(elected.starts_with("t partition 0: on its preferred leader"), "{elected}");
    let again = nodes[0].until_ok(&["cluster", "elect-leaders", "t"], "");
    assert_eq!(again, "t partition 0: on its preferred leader already\n");
    for node in &nodes {
        let deadline = Instant::now() + GUARD;
        loop {
            let served = node.until_ok(&["consume", "t", "--partition", "0"], "");
            let served: Vec<&str> = served.lines().collect();
            if served.len() >= acknowledged.len() {
                assert_eq!(served, acknowledged, "node {}", node.id);
                break;
            }
            assert!(Instant::now() < deadline, "node {} served {served:?}", node.id);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
