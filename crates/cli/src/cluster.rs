//! `spool cluster status`: every node of a cluster and every replicated partition, gathered
//! from each node that answers (a partition's lag from its leader, each node's high watermark
//! from that node). `spool cluster elect-leaders`: partitions handed back to their preferred
//! leaders now.

use std::collections::BTreeMap;

use anyhow::Context;
use clap::Subcommand;
use spool_client::{ClusterInfo, ElectionOutcome};

use crate::ServerArg;
use crate::client::connect;

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Every node (reachable or not) and every replicated partition: leader, replicas (the
    /// preferred leader first), each node's high watermark and each follower's lag behind
    /// the leader.
    Status,
    /// Hand partitions back to their preferred leaders (the first of their replicas) where
    /// another node leads them, once the preferred one has caught up, as the nodes do by
    /// themselves every 10 s unless started with `--hand-back-leaders false`. Without a
    /// topic: every partition you may administer. Exits with 1 if a partition stays where it
    /// is led.
    ElectLeaders {
        /// The topics (all of their partitions, unless --partition names some).
        topics: Vec<String>,
        /// A partition of the one topic named (repeat for more).
        #[arg(long = "partition", value_name = "N")]
        partitions: Vec<u32>,
        /// How long each partition's hand-over may take, in milliseconds (at most 60000).
        #[arg(long, default_value_t = 10_000, value_name = "MS")]
        timeout_ms: u64,
    },
}

pub(crate) async fn cluster(server: &ServerArg, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => status(server).await,
        ClusterCommand::ElectLeaders { topics, partitions, timeout_ms } => {
            elect_leaders(server, &topics, &partitions, timeout_ms).await
        }
    }
}

async fn elect_leaders(
    server: &ServerArg,
    topics: &[String],
    partitions: &[u32],
    timeout_ms: u64,
) -> anyhow::Result<()> {
    if !partitions.is_empty() && topics.len() != 1 {
        anyhow::bail!("--partition names partitions of one topic: name exactly one");
    }
    let asked: Vec<(&str, &[u32])> = topics.iter().map(|t| (t.as_str(), partitions)).collect();
    let client = connect(server).await?;
    let timeout = std::time::Duration::from_millis(timeout_ms);
    let elections = client
        .elect_leaders(&asked, Some(timeout))
        .await
        .context("asking for partitions to be handed back to their preferred leaders")?;
    if elections.is_empty() {
        println!("every partition is on its preferred leader");
    }
    let mut stayed = 0;
    for election in &elections {
        let outcome = match &election.outcome {
            ElectionOutcome::Elected => "on its preferred leader now".to_owned(),
            ElectionOutcome::NotNeeded => "on its preferred leader already".to_owned(),
            ElectionOutcome::NotAvailable(reason) => {
                stayed += 1;
                format!("stays where it is led: {reason}")
            }
        };
        println!("{} partition {}: {outcome}", election.topic, election.partition);
    }
    if stayed > 0 {
        anyhow::bail!("{stayed} of {} partitions stay where they are led", elections.len());
    }
    Ok(())
}

async fn status(server: &ServerArg) -> anyhow::Result<()> {
    let client = connect(server).await?;
    let first = client.describe_cluster().await.context("asking for the cluster's state")?;
    let Some(answering) = first.node_id else {
        println!("{} is a single node, not a node of a cluster", server.server);
        return Ok(());
    };
    // Each other registered node's own view, where it answers.
    let mut views: BTreeMap<u64, Result<ClusterInfo, String>> = BTreeMap::new();
    let scheme = if server.server.starts_with("https://") { "https" } else { "http" };
    for node in first.nodes.iter().filter(|n| n.id != answering) {
        let view = match &node.client_address {
            None => Err("not registered yet".to_owned()),
            Some(address) => {
                let url = format!("{scheme}://{address}");
                let other = ServerArg { server: url, ..server.clone() };
                match connect(&other).await {
                    Ok(client) => client.describe_cluster().await.map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                }
            }
        };
        views.insert(node.id, view);
    }
    println!("nodes (reachability as node {answering} sees it):");
    let own_protocol = first.nodes.iter().find(|n| n.id == answering).and_then(|n| n.peer_protocol);
    for node in &first.nodes {
        let client = node.client_address.as_deref().unwrap_or("not registered");
        let reach = match (node.reachable, node.peer_protocol) {
            (false, _) => "unreachable".to_owned(),
            (true, Some(theirs)) if own_protocol.is_some_and(|ours| ours != theirs) => format!(
                "reachable, but it speaks peer protocol {theirs} and node {answering} {}: run one release on every node",
                own_protocol.unwrap_or_default()
            ),
            (true, _) => "reachable".to_owned(),
        };
        let answer = match views.get(&node.id) {
            Some(Err(error)) => format!("\tnot answering: {error}"),
            _ => String::new(),
        };
        println!(
            "  node {}\tpeers {}\tclients {client}\t{reach}{answer}",
            node.id, node.peer_address
        );
    }
    let node =
        |id: Option<u64>| id.map_or_else(|| "none yet".to_owned(), |id| format!("node {id}"));
    let metadata = node(first.metadata_leader);
    println!("metadata leader (topics, registrations, producer ids): {metadata}");
    let groups = node(first.group_coordinator);
    println!("group coordinator (every consumer group, gRPC and Kafka): {groups}");
    views.insert(answering, Ok(first.clone()));
    println!("partitions:");
    if first.partitions.is_empty() {
        println!("  none");
    }
    for partition in &first.partitions {
        // The partition as node `id` sees it, when that node answered.
        let seen = |id: u64| {
            let view = views.get(&id)?.as_ref().ok()?;
            view.partitions
                .iter()
                .find(|p| p.topic == partition.topic && p.partition == partition.partition)
        };
        // Only the nodes that hold the partition have a high watermark of their own.
        let watermarks: Vec<String> = views
            .keys()
            .filter(|id| partition.replicas.contains(id))
            .map(|id| format!("{id}={}", known(seen(*id).map(|p| p.high_watermark))))
            .collect();
        let leader = partition.leader.map_or_else(|| "none".to_owned(), |id| id.to_string());
        let lag = match partition.leader.and_then(seen) {
            Some(led) => {
                let lag: Vec<String> =
                    led.lag.iter().map(|(id, behind)| format!("{id}={}", known(*behind))).collect();
                lag.join(",")
            }
            None => "unknown (the leader did not answer)".to_owned(),
        };
        let replicas: Vec<String> = partition.replicas.iter().map(u64::to_string).collect();
        let repairing: Vec<String> = views
            .keys()
            .filter(|id| seen(**id).is_some_and(|p| p.under_repair))
            .map(u64::to_string)
            .collect();
        let repairing = match repairing.is_empty() {
            true => String::new(),
            false => format!("\tunder repair {}", repairing.join(",")),
        };
        // The first replica is the preferred leader: a leader elsewhere is handed back to it
        // once it has caught up (or by Kafka's ElectLeaders, where hand-backs are off).
        let away = match (partition.leader, partition.replicas.first()) {
            (Some(leader), Some(&preferred)) if leader != preferred => {
                format!("\tnot on its preferred leader, node {preferred}")
            }
            _ => String::new(),
        };
        println!(
            "  {}/{}\tleader {leader}\treplicas {}\thigh watermark {}\tlag (entries) {lag}{repairing}{away}",
            partition.topic,
            partition.partition,
            replicas.join(","),
            watermarks.join(",")
        );
    }
    Ok(())
}

/// A number, or `?` when it is not known.
fn known(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |value| value.to_string())
}
