//! This node's part in a cluster: its peer listener, the replicas it runs, and the metadata
//! group every node is a voter of.
//!
//! # The metadata group
//!
//! One Raft group over every node (`__cluster`), stored like a replicated partition under
//! `data/cluster/metadata/`. Its records are JSON [`Command`]s: a node registering the
//! address its clients reach it at, a topic created or deleted. Every node reads the
//! group's committed records in order and applies them (`TopicTable::apply_metadata`), so
//! every node agrees on what exists; a node that proposes waits until it has applied its own
//! command. Any node accepts topic administration: a follower passes its command to the
//! group's leader.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use spool_replication::{
    Fold, OnCommit, OnDamage, PartitionStateMachine, ProposeError, Replica, SegmentLogStore,
    SharedLog, Transport,
};
use spool_storage::batch::{BatchBuilder, BatchIter, BatchKind, ProducerStamp};
use spool_storage::fs::{FileSystem, StdFileSystem};
use spool_storage::{LogConfig, Offset, ReadError, TimestampMs};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::fold::MetadataFold;
use super::repair::InternalDamage;
use super::transport::{REGISTERED_QUESTION, serve_peers_reloading};
use super::{ClusterOptions, Groups, PeerTls, PeerTransport};
use crate::error::ServiceError;
use crate::groups::OffsetsFold;
use crate::idempotence::ProducerIdError;
use crate::limits::{
    EMPTY_START_RETRY, GROUPS_LOAD_PATIENCE, INTERNAL_COMPACT_BYTES,
    INTERNAL_COMPACT_CHECK_INTERVAL, INTERNAL_COMPACT_PATIENCE, INTERNAL_REPAIRS_QUEUED,
    LEADER_ELECTION_PATIENCE, LEADER_HAND_BACK_INTERVAL, LEADER_HAND_BACKS_AT_ONCE,
    LEADERSHIP_CONFIRM_TIMEOUT, METADATA_CATCH_UP_TIMEOUT, PEER_CRL_RELOAD_INTERVAL,
    PEER_PROBE_TIMEOUT, PEER_PROTOCOL_CHECK_INTERVAL, PRODUCER_ID_PATIENCE,
    REMOTE_READS_WAITING_MAX,
};
use spool_broker::Placement;
use spool_broker::limits::{INTERNAL_SEGMENT_BYTES, PRODUCER_ID_BLOCK};

/// Proposes a batch to one of the cluster's own groups from any node. While no leader is
/// known (an election is on, or the group is new) nothing was stored: it waits up to
/// [`METADATA_PATIENCE`] for one and tries again.
async fn propose_internal(replica: &Replica, batch: Bytes) -> spool_replication::Proposed {
    let attempt = || replica.propose_anywhere(batch.clone());
    replica.through_elections(METADATA_PATIENCE, attempt).await
}

/// One record of a committed batch of the cluster's own groups.
#[derive(Debug, Clone)]
pub(crate) struct CommittedRecord {
    pub(crate) value: Vec<u8>,
    /// The `origin` header, when it has one.
    pub(crate) origin: Option<Vec<u8>>,
}

/// The record batches `log` committed from `from` on, as far as it reads: per batch, the
/// offset after it and its records (none for a control batch); and the error that ended the
/// read early, if one did.
fn read_committed(
    log: &SharedLog,
    from: Offset,
) -> (Vec<(Offset, Vec<CommittedRecord>)>, Option<ReadError>) {
    let mut out = Vec::new();
    let log = log.read().unwrap_or_else(PoisonError::into_inner);
    let Some(log) = log.as_ref() else { return (out, None) };
    let mut offset = from;
    loop {
        let read = match log.read(offset, 1 << 20) {
            Ok(read) if !read.bytes.is_empty() => read,
            Ok(_) => return (out, None),
            Err(error) => return (out, Some(error)),
        };
        for view in BatchIter::read_before(&read.bytes) {
            let Ok(view) = view else { return (out, None) };
            let header = *view.header();
            if header.next_offset() <= offset {
                continue;
            }
            let mut records = Vec::new();
            if header.entry.kind == BatchKind::Records {
                let all = view.records();
                for record in all.iter().flatten() {
                    let origin = record
                        .headers()
                        .flatten()
                        .find(|header| header.key == ORIGIN_HEADER.as_bytes())
                        .and_then(|header| header.value.map(<[u8]>::to_vec));
                    let value = record.value.unwrap_or_default().to_vec();
                    records.push(CommittedRecord { value, origin });
                }
            }
            out.push((header.next_offset(), records));
        }
        offset = read.next_offset;
    }
}

/// The header naming the run of the node that wrote an offsets record.
pub(crate) const ORIGIN_HEADER: &str = "origin";

/// The first producer id of the block the command at `offset` allocated.
pub(super) fn producer_id_block(offset: Offset) -> i64 {
    i64::try_from(offset.0).unwrap_or(i64::MAX).saturating_mul(PRODUCER_ID_BLOCK as i64)
}

/// The metadata group's name.
pub(crate) const METADATA_GROUP: &str = "__cluster";
/// The name of the group that replicates consumer groups' committed offsets.
pub(crate) const OFFSETS_GROUP: &str = "__group_offsets";

/// How long a node waits for its own metadata command to be applied.
const METADATA_PATIENCE: Duration = Duration::from_secs(30);

/// A change to the cluster's metadata, as its group stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Command {
    /// Node `id` serves clients at `address`.
    RegisterNode {
        id: u64,
        address: String,
        /// The address its Kafka listener advertises, when it has one.
        #[serde(default)]
        kafka: Option<String>,
    },
    CreateTopic {
        name: String,
        spec: TopicSpec,
        /// The node that proposed it, which answers its client with what applying it did.
        #[serde(default)]
        by: Option<u64>,
    },
    DeleteTopic {
        name: String,
    },
    /// The topic's settings become `spec` (more partitions, or another compression).
    AlterTopic {
        name: String,
        spec: TopicSpec,
    },
    /// A block of [`PRODUCER_ID_BLOCK`] producer ids for node `node` to hand out: the block
    /// starts at the command's offset in the metadata log times the block's size, so no two
    /// commands hand out the same ids and every node knows every block.
    AllocateProducerIds {
        node: u64,
    },
}

/// What applying a command did on the node that proposed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    /// A topic of that name was created before it (another node's command won the race).
    Existed,
}

/// A topic's settings in a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicSpec {
    pub(crate) partitions: u32,
    /// `always`, `never` or the interval in milliseconds.
    pub(crate) fsync: String,
    pub(crate) retention_ms: Option<u64>,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) segment_bytes: u64,
    pub(crate) compression: String,
    /// Which nodes hold each partition; absent in commands written before placements (and
    /// ignored in an alter: a topic keeps the placement it was created with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) placement: Option<Placement>,
}

impl TopicSpec {
    pub(crate) fn from_config(
        config: &spool_broker::TopicConfig,
        placement: Option<Placement>,
    ) -> TopicSpec {
        let fsync = match config.fsync() {
            spool_storage::FsyncPolicy::Always => "always".to_owned(),
            spool_storage::FsyncPolicy::Never => "never".to_owned(),
            spool_storage::FsyncPolicy::Interval { interval_ms } => interval_ms.to_string(),
        };
        TopicSpec {
            partitions: config.partitions(),
            fsync,
            retention_ms: config.retention_ms(),
            retention_bytes: config.retention_bytes(),
            segment_bytes: config.segment_bytes(),
            compression: config.compression().name().to_owned(),
            placement,
        }
    }

    pub(crate) fn config(
        &self,
    ) -> Result<spool_broker::TopicConfig, spool_broker::TopicConfigError> {
        let fsync = match self.fsync.as_str() {
            "always" => spool_storage::FsyncPolicy::Always,
            "never" => spool_storage::FsyncPolicy::Never,
            interval => {
                spool_storage::FsyncPolicy::Interval { interval_ms: interval.parse().unwrap_or(0) }
            }
        };
        spool_broker::TopicConfig::new(spool_broker::TopicConfigRequest {
            partitions: Some(self.partitions),
            fsync: Some(fsync),
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            segment_bytes: Some(self.segment_bytes),
            compression: Some(self.compression.parse()?),
        })
    }
}

/// A node as [`Cluster::probe_nodes`] found it.
#[derive(Debug, Clone)]
pub(crate) struct NodeProbe {
    pub(crate) id: u64,
    pub(crate) peer_address: String,
    /// Where it serves clients, once it has registered.
    pub(crate) client_address: Option<String>,
    /// The peer protocol version it speaks; `None` when it was not reached.
    pub(crate) protocol: Option<u32>,
}

/// What a load of the groups calls once they are loaded: what it starts, to be awaited.
pub(crate) type OnGroupsLoaded = Box<dyn Fn() -> Option<crate::topic_table::Pending> + Send + Sync>;

/// This node's part in a cluster.
pub(crate) struct Cluster {
    pub(crate) node_id: u64,
    /// Every node's peer address, by id.
    members: BTreeMap<u64, String>,
    pub(super) fs: Arc<dyn FileSystem>,
    transport: Arc<PeerTransport>,
    replicas: RwLock<HashMap<String, Arc<Replica>>>,
    /// Where the cluster's own groups keep their state: `data/cluster`.
    dir: PathBuf,
    /// This node's replica of the metadata group; replaced when it is repaired (see
    /// `super::repair`).
    metadata: RwLock<Option<Arc<Replica>>>,
    /// The replica of the consumer groups' committed offsets (see `crate::groups`).
    offsets: RwLock<Option<Arc<Replica>>>,
    /// The committed offsets its state machine folds, so that its log can be compacted.
    offsets_fold: Arc<OffsetsFold>,
    /// The metadata the metadata group's state machine folds, for the same.
    metadata_fold: Arc<MetadataFold>,
    /// That group's high watermark, as it moves.
    offsets_committed: watch::Sender<u64>,
    /// How far this node's consumer groups have applied that group's log (the offset after
    /// the last batch applied).
    offsets_followed: watch::Sender<u64>,
    /// The term of the offsets group in which this node, its leader, has applied everything
    /// committed before the term began: it coordinates groups only then.
    groups_loaded: watch::Sender<Option<u64>>,
    /// One load of the groups at a time.
    loading: tokio::sync::Mutex<()>,
    /// What a load of the groups calls once they are loaded (see [`Cluster::load_groups`]).
    on_groups_loaded: OnceLock<OnGroupsLoaded>,
    /// Tells this run's records of the offsets group from every other (another node's, or
    /// this node's before it restarted): `{node}-{start time}`.
    run: String,
    /// The metadata group's high watermark, as it moves.
    metadata_committed: watch::Sender<u64>,
    /// How far this node has applied the metadata group's records.
    metadata_applied: watch::Sender<u64>,
    /// Where each node serves clients, as registered.
    nodes: RwLock<BTreeMap<u64, String>>,
    /// Where each registered node's Kafka listener is, for those that have one (as
    /// advertised: what Metadata names).
    kafka_nodes: RwLock<BTreeMap<u64, String>>,
    /// Whether this node's registration is applied here: it has joined.
    joined: watch::Sender<bool>,
    /// What applying this node's own commands did, by the command's offset, until the node
    /// that proposed it takes the outcome (at most one per command in flight here).
    outcomes: std::sync::Mutex<HashMap<u64, Outcome>>,
    /// The producer ids this node hands out next: the rest of its block.
    producer_ids: tokio::sync::Mutex<std::ops::Range<i64>>,
    /// Every producer id below this was handed out by some node (as applied here).
    producer_ids_end: watch::Sender<i64>,
    /// Whether this node rejoins a cluster that exists on an empty data directory (a
    /// replaced disk): then every replica it starts with an empty log is under repair.
    /// `None` while a node that started on an empty directory is still finding out.
    rejoining: watch::Sender<Option<bool>>,
    /// Reads other nodes ask of this node's replicas that may wait for records (see
    /// `partition::remote`).
    reads_waiting: Arc<tokio::sync::Semaphore>,
    /// Damage found in the logs of the cluster's own groups, for `super::repair` to repair.
    pub(super) repairs: mpsc::Sender<InternalDamage>,
    /// Held while a replica of the cluster's own groups restarts, and by the shutdown.
    pub(super) restarting: tokio::sync::Mutex<()>,
    pub(super) stop: CancellationToken,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node_id", &self.node_id).finish()
    }
}

/// Why this node could not take its place in the cluster.
#[derive(Debug, thiserror::Error)]
pub enum JoinClusterError {
    #[error("binding the peer listener at {address} failed: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error("opening the cluster's metadata under {dir} failed: {reason}")]
    Metadata { dir: PathBuf, reason: String },
    #[error("starting the cluster's metadata group failed: {0}")]
    Start(String),
    #[error("the peer TLS configuration is not usable: {0}")]
    PeerTls(String),
}

impl Groups for Cluster {
    fn replica(&self, group: &str) -> Option<Arc<Replica>> {
        self.replicas.read().unwrap_or_else(PoisonError::into_inner).get(group).cloned()
    }

    fn has_registered(&self, id: u64) -> bool {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).contains_key(&id)
    }
}

fn metadata_error(dir: &Path) -> impl Fn(String) -> JoinClusterError + '_ {
    move |reason| JoinClusterError::Metadata { dir: dir.to_path_buf(), reason }
}

impl Cluster {
    /// Starts the peer listener (on `listener` if given, else bound at this node's peer
    /// address) and this node's replica of the metadata group.
    pub(crate) async fn start(
        options: &ClusterOptions,
        listener: Option<TcpListener>,
        data_dir: &Path,
    ) -> Result<Arc<Cluster>, JoinClusterError> {
        let address = options.own_peer_address();
        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(address).await.map_err(|source| JoinClusterError::Bind {
                address: address.to_string(),
                source,
            })?,
        };
        let (acceptor, connector) = match &options.tls {
            None => (None, None),
            Some(tls) => (
                Some(tls.acceptor().map_err(JoinClusterError::PeerTls)?),
                Some(tls.connector().map_err(JoinClusterError::PeerTls)?),
            ),
        };
        let members: BTreeMap<u64, String> =
            options.peers.iter().map(|(id, address)| (*id, address.to_string())).collect();
        let (repairs, damages) = mpsc::channel(INTERNAL_REPAIRS_QUEUED);
        let cluster = Arc::new(Cluster {
            node_id: options.node_id,
            members: members.clone(),
            fs: StdFileSystem::shared(),
            transport: Arc::new(PeerTransport::new(connector)),
            replicas: RwLock::new(HashMap::new()),
            dir: data_dir.join("cluster"),
            metadata: RwLock::new(None),
            offsets: RwLock::new(None),
            offsets_fold: Arc::new(OffsetsFold::default()),
            metadata_fold: Arc::new(MetadataFold::default()),
            offsets_committed: watch::Sender::new(0),
            offsets_followed: watch::Sender::new(0),
            groups_loaded: watch::Sender::new(None),
            loading: tokio::sync::Mutex::new(()),
            on_groups_loaded: OnceLock::new(),
            run: format!("{}-{}", options.node_id, TimestampMs::now().0),
            metadata_committed: watch::Sender::new(0),
            metadata_applied: watch::Sender::new(0),
            nodes: RwLock::new(BTreeMap::new()),
            kafka_nodes: RwLock::new(BTreeMap::new()),
            joined: watch::Sender::new(false),
            producer_ids: tokio::sync::Mutex::new(0..0),
            outcomes: std::sync::Mutex::new(HashMap::new()),
            producer_ids_end: watch::Sender::new(0),
            rejoining: watch::Sender::new(None),
            reads_waiting: Arc::new(tokio::sync::Semaphore::new(REMOTE_READS_WAITING_MAX)),
            repairs,
            restarting: tokio::sync::Mutex::new(()),
            stop: CancellationToken::new(),
        });
        tokio::spawn(super::repair::repair_internal(cluster.clone(), damages));
        let (tls_in_force, tls_reloads) = watch::channel(acceptor);
        let stop = cluster.stop.clone();
        tokio::spawn(serve_peers_reloading(listener, cluster.clone(), tls_reloads, stop));
        if let Some(tls) = &options.tls
            && let Some(path) = &tls.crl_path
        {
            let reload = reload_peer_crl(cluster.clone(), tls.clone(), path.clone(), tls_in_force);
            tokio::spawn(reload);
        }
        // Empty: the metadata log holds nothing a leader wrote (a new directory, or one whose
        // node stopped before it heard from a leader).
        let (metadata, empty) = cluster.start_internal(METADATA_GROUP, None).await?;
        *cluster.metadata.write().unwrap_or_else(PoisonError::into_inner) = Some(metadata);
        let (offsets, _) = cluster.start_internal(OFFSETS_GROUP, Some(empty)).await?;
        *cluster.offsets.write().unwrap_or_else(PoisonError::into_inner) = Some(offsets);
        tokio::spawn(compact_internal_logs(cluster.clone()));
        if options.hand_back_leaders {
            tokio::spawn(hand_leaders_back(cluster.clone()));
        }
        tokio::spawn(watch_peer_protocols(cluster.clone()));
        if empty {
            tokio::spawn(cluster.clone().settle_empty_start());
        } else {
            cluster.rejoining.send_replace(Some(false));
        }
        Ok(cluster)
    }

    /// On an empty data directory (a metadata log that holds nothing a leader wrote) this
    /// node cannot tell a new cluster from one it belonged to before its disk was replaced,
    /// and in the second case its vote could help elect a leader that lacks batches it had
    /// acknowledged. So its own groups' replicas start held
    /// (no vote, no election), and it asks the other nodes whether the metadata group has
    /// begun. Once a majority, this node included, says it has not, the cluster is new and
    /// the replicas are released. If one says it has, this node asks every other node
    /// whether it has applied this node's registration:
    /// - every node answers no: this node never joined (a node registers at every start), so
    ///   it is new to a running cluster and its replicas are released too;
    /// - one answers yes, or one does not answer: this node rejoins, and each of its replicas
    ///   stays under repair until it has caught up with a leader.
    ///
    /// A held replica whose group lost its leader before the replica caught up blocks that
    /// group's election; a new node must not be held, or a leader that dies in the first
    /// moments of a cluster leaves its group without one for good.
    ///
    /// This node registers only once this is settled, so the answers are about earlier runs.
    async fn settle_empty_start(self: Arc<Self>) {
        let majority = self.members.len() / 2 + 1;
        let own = [self.metadata(), self.offsets_replica()];
        loop {
            let mut new = 1;
            let mut begun = None;
            for (&id, address) in self.members.iter().filter(|(id, _)| **id != self.node_id) {
                match self.metadata().peer_has_begun(id, address, PEER_PROBE_TIMEOUT).await {
                    Ok(true) => begun = Some(id),
                    Ok(false) => new += 1,
                    Err(_) => {}
                }
            }
            if let Some(peer) = begun
                && self.registered_elsewhere().await == Some(false)
            {
                tracing::info!(
                    peer,
                    "this node started on an empty data directory, and node {peer} has the cluster's metadata; no node has this node's registration, so it joins as a new node"
                );
                self.release_internal(&own).await;
                return;
            }
            if let Some(peer) = begun {
                tracing::warn!(
                    peer,
                    "this node started on an empty data directory, and node {peer} has the cluster's metadata: it rejoins, copying every group's log, and votes in no group until it has caught up with its leader"
                );
                let reason = format!(
                    "started on an empty data directory; node {peer} has the cluster's metadata"
                );
                for replica in &own {
                    if let Err(error) = replica.store().mark_for_repair(&reason) {
                        tracing::error!(%error, "marking a rejoining replica under repair failed; it stays held until it has caught up");
                    }
                }
                self.rejoining.send_replace(Some(true));
                return;
            }
            if new >= majority {
                tracing::info!(
                    nodes = new,
                    "a new cluster: a majority of the nodes starts on empty data directories"
                );
                self.release_internal(&own).await;
                return;
            }
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(EMPTY_START_RETRY) => {}
            }
        }
    }

    /// Releases the held replicas of the cluster's own groups (see
    /// [`Cluster::settle_empty_start`]): this node is new.
    async fn release_internal(&self, own: &[Arc<Replica>; 2]) {
        for (replica, group) in own.iter().zip([METADATA_GROUP, OFFSETS_GROUP]) {
            if let Err(error) = replica.release() {
                tracing::error!(%error, group, "releasing a replica's vote failed");
                continue;
            }
            if self.preferred_leader(group) == self.node_id && replica.leader().is_none() {
                replica.campaign().await;
            }
        }
        self.rejoining.send_replace(Some(false));
    }

    /// Whether another node has applied a registration of this node: `Some(false)` once
    /// every other node has answered no; `None` when one did not answer.
    async fn registered_elsewhere(&self) -> Option<bool> {
        let question = Bytes::copy_from_slice(&self.node_id.to_be_bytes());
        for (&id, address) in self.members.iter().filter(|(id, _)| **id != self.node_id) {
            let call = self.transport.call(
                id,
                address,
                REGISTERED_QUESTION,
                question.clone(),
                PEER_PROBE_TIMEOUT,
            );
            match call.await.ok()?.as_ref() {
                [0] => {}
                [1] => return Some(true),
                _ => return None,
            }
        }
        Some(false)
    }

    /// Where this node keeps its replica of `group`, one of the cluster's own.
    pub(super) fn internal_dir(&self, group: &str) -> PathBuf {
        match group {
            METADATA_GROUP => self.dir.join("metadata"),
            _ => self.dir.join("group-offsets"),
        }
    }

    /// Starts this node's replica of `group`, one of the cluster's own (every node a voter),
    /// over its log in [`Cluster::internal_dir`]. Its vote is held when `hold` says so, or
    /// (`None`) when its log holds nothing a leader wrote; returns whether it was.
    pub(super) async fn start_internal(
        &self,
        group: &'static str,
        hold: Option<bool>,
    ) -> Result<(Arc<Replica>, bool), JoinClusterError> {
        let dir = &self.internal_dir(group);
        let (committed, fold): (_, Arc<dyn Fold>) = match group {
            METADATA_GROUP => (self.metadata_committed.clone(), self.metadata_fold.clone()),
            _ => (self.offsets_committed.clone(), self.offsets_fold.clone()),
        };
        let error = metadata_error(dir);
        // Small segments: a compaction deletes whole ones.
        let config = LogConfig { segment_bytes: INTERNAL_SEGMENT_BYTES, ..LogConfig::default() };
        let store = SegmentLogStore::open(self.fs.clone(), dir, config, TimestampMs::now())
            .map_err(|e| error(e.to_string()))?;
        let hold = match hold {
            Some(hold) => hold,
            None => !store.has_begun().map_err(|e| error(e.to_string()))?,
        };
        if hold {
            store.hold();
        }
        let repairs = self.repairs.clone();
        store.on_damage(Arc::new(move |error| super::repair::ask(&repairs, group, error)));
        let on_commit: OnCommit = Arc::new(move |end: Offset| {
            committed.send_replace(end.0);
        });
        let log = store.log().clone();
        let state = PartitionStateMachine::open_folding(self.fs.clone(), dir, log, on_commit, fold)
            .map_err(|e| error(e.to_string()))?;
        let preferred = self.preferred_leader(group);
        let replica = self.start_replica(group, store, state, &self.members, preferred).await?;
        Ok((replica, hold))
    }

    /// Starts and registers this node's replica of `group`, and forms the group with
    /// `members` as its voters (a log that holds a membership keeps it). The node chosen to
    /// lead a group it has just formed (`preferred`) stands for election at once.
    async fn start_replica(
        &self,
        group: &str,
        store: SegmentLogStore,
        state: PartitionStateMachine,
        members: &BTreeMap<u64, String>,
        preferred: u64,
    ) -> Result<Arc<Replica>, JoinClusterError> {
        let transport = self.transport.clone();
        let replica = Replica::start(self.node_id, group, store, state, transport)
            .await
            .map_err(|e| JoinClusterError::Start(e.to_string()))?;
        let replica = Arc::new(replica);
        replica.prefer_leader(preferred);
        {
            let mut replicas = self.replicas.write().unwrap_or_else(PoisonError::into_inner);
            replicas.insert(group.to_owned(), replica.clone());
        }
        let formed =
            replica.bootstrap(members).await.map_err(|e| JoinClusterError::Start(e.to_string()))?;
        // Only a new group: a node that restarts into a running group waits to hear from its
        // leader, rather than start an election that would depose it.
        if formed && preferred == self.node_id && replica.leader().is_none() {
            replica.campaign().await;
        }
        Ok(replica)
    }

    /// Starts this node's replica of a partition whose log is `log`, in the log's
    /// directory; `on_commit` is told each new high watermark. `replicas` hold the
    /// partition, its preferred leader first.
    pub(crate) async fn start_partition(
        &self,
        group: &str,
        log: SharedLog,
        on_commit: OnCommit,
        on_damage: OnDamage,
        replicas: &[u64],
    ) -> Result<Arc<Replica>, JoinClusterError> {
        let dir = log
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|l| l.dir().to_path_buf());
        let dir = dir.ok_or_else(|| JoinClusterError::Start(format!("{group}'s log is closed")))?;
        let error = metadata_error(&dir);
        let store = SegmentLogStore::over(self.fs.clone(), &dir, log.clone())
            .map_err(|e| error(e.to_string()))?;
        store.on_damage(on_damage);
        let mut rejoining = self.rejoining.subscribe();
        tokio::select! {
            () = self.stop.cancelled() => {
                return Err(JoinClusterError::Start(format!("{group}: the node is stopping")));
            }
            _ = rejoining.wait_for(Option::is_some) => {}
        }
        if *rejoining.borrow() == Some(true) {
            let reason = "started on an empty data directory, rejoining the cluster";
            store.mark_for_repair(reason).map_err(|e| error(e.to_string()))?;
        }
        let state = PartitionStateMachine::open(self.fs.clone(), &dir, log, on_commit)
            .map_err(|e| error(e.to_string()))?;
        let members = self.peers_of(replicas).into_iter().collect();
        let preferred = replicas.first().copied().unwrap_or_else(|| self.preferred_leader(group));
        self.start_replica(group, store, state, &members, preferred).await
    }

    /// Every node, the one chosen to lead a new `group` first: placed as partition 0 of a
    /// topic of that name on every node would be ([`Placement`]). The nodes of the cluster's
    /// own groups, and of a partition of a topic without a placement (created before
    /// placements, every node holds it).
    pub(crate) fn every_node_for(&self, group: &str) -> Vec<u64> {
        let nodes = self.node_ids();
        match Placement::new(group, &nodes, nodes.len() as u32) {
            Ok(placement) => placement.replicas(0),
            Err(_) => nodes,
        }
    }

    /// What bounds the reads other nodes ask of this node's replicas that wait for records.
    pub(crate) fn reads_waiting(&self) -> Arc<tokio::sync::Semaphore> {
        self.reads_waiting.clone()
    }

    /// `nodes` (those this node knows of) with their peer addresses, in the order given.
    fn peers_of(&self, nodes: &[u64]) -> Vec<(u64, String)> {
        nodes.iter().filter_map(|id| Some((*id, self.members.get(id)?.clone()))).collect()
    }

    /// A partition's group as seen from this node, which holds no replica of it: `replicas`
    /// hold it, its preferred leader first.
    pub(crate) fn remote(&self, group: &str, replicas: &[u64]) -> spool_replication::Remote {
        spool_replication::Remote::new(group, self.peers_of(replicas), self.transport.clone())
    }

    /// The node that stands for election first in a new group of every node: chosen by the
    /// group's name (see [`Cluster::every_node_for`]), so such groups' leaders spread.
    fn preferred_leader(&self, group: &str) -> u64 {
        self.every_node_for(group).first().copied().unwrap_or(self.node_id)
    }

    /// Stops this node's replica of `group`.
    pub(crate) async fn stop_replica(&self, group: &str) {
        let replica = {
            let mut replicas = self.replicas.write().unwrap_or_else(PoisonError::into_inner);
            replicas.remove(group)
        };
        if let Some(replica) = replica {
            replica.shutdown().await;
        }
    }

    /// Every node's id.
    pub(crate) fn node_ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Where node `id` serves clients, once it has registered.
    pub(crate) fn client_address(&self, id: u64) -> Option<String> {
        self.nodes.read().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    /// Every node: its id, peer address, client address once registered, and the peer
    /// protocol version it speaks when it answered within [`PEER_PROBE_TIMEOUT`] (with peer
    /// TLS, after the handshake).
    pub(crate) async fn probe_nodes(&self) -> Vec<NodeProbe> {
        let mut probes = tokio::task::JoinSet::new();
        for (id, address) in self.members.clone() {
            let own = id == self.node_id;
            let transport = self.transport.clone();
            probes.spawn(async move {
                let protocol = match own {
                    true => Some(spool_replication::PROTOCOL_VERSION),
                    false => transport.protocol_of(&address, PEER_PROBE_TIMEOUT).await.ok(),
                };
                (id, address, protocol)
            });
        }
        let mut nodes = Vec::new();
        while let Some(probe) = probes.join_next().await {
            if let Ok((id, peer_address, protocol)) = probe {
                let client_address = self.client_address(id);
                nodes.push(NodeProbe { id, peer_address, client_address, protocol });
            }
        }
        nodes.sort_by_key(|node| node.id);
        nodes
    }

    fn metadata(&self) -> Arc<Replica> {
        self.internal_replica(METADATA_GROUP)
    }

    /// Commits `command` through the metadata group (from any node) and waits until this
    /// node has applied it.
    pub(crate) async fn propose(&self, command: &Command) -> Result<Offset, ServiceError> {
        let json = serde_json::to_vec(command).expect("a command encodes");
        let mut builder = BatchBuilder::new(BytesMut::new());
        builder.push(TimestampMs::now(), None, Some(&json), &[]);
        let batch: Bytes = builder.finish(ProducerStamp::NONE).freeze();
        let (base, next) = propose_internal(&self.metadata(), batch)
            .await
            .map_err(|error| ServiceError::Cluster(format!("the cluster's metadata: {error}")))?;
        let mut applied = self.metadata_applied.subscribe();
        let reached = applied.wait_for(|applied| *applied >= next.0);
        match tokio::time::timeout(METADATA_PATIENCE, reached).await {
            Ok(Ok(_)) => Ok(base),
            _ => Err(ServiceError::Cluster(format!(
                "the cluster's metadata change was committed but not applied here within {METADATA_PATIENCE:?}"
            ))),
        }
    }

    /// Waits until this node has applied every metadata change the cluster committed before
    /// the call (the metadata leader's read index, confirmed with a quorum), at most
    /// [`METADATA_CATCH_UP_TIMEOUT`]; false when it could not (no leader reachable in time).
    pub(crate) async fn catch_up(&self) -> bool {
        let caught_up = async {
            let index = match self.metadata().read_index(METADATA_CATCH_UP_TIMEOUT).await {
                Ok(index) => index,
                Err(error) => {
                    tracing::debug!(%error, "catching up with the cluster's metadata failed");
                    return false;
                }
            };
            let mut applied = self.metadata_applied.subscribe();
            applied.wait_for(|applied| *applied >= index.0).await.is_ok()
        };
        tokio::time::timeout(METADATA_CATCH_UP_TIMEOUT, caught_up).await.unwrap_or(false)
    }

    /// The record batches this node's replica of `group` (one of the cluster's own) committed
    /// from `from` on, as [`read_committed`] reads them. Damage the read meets is repaired
    /// (see `super::repair`): the batches before it are returned, and those from it on once
    /// the replica has copied them back.
    fn read_committed(
        &self,
        group: &'static str,
        from: Offset,
    ) -> Vec<(Offset, Vec<CommittedRecord>)> {
        let (batches, error) = read_committed(self.internal_replica(group).store().log(), from);
        if let Some(error) = error {
            tracing::error!(group, %error, "reading one of the cluster's own logs failed");
            super::repair::ask(&self.repairs, group, &error);
        }
        batches
    }

    /// Commands committed from `from` on, each with the offset after it.
    pub(crate) fn committed_commands(&self, from: Offset) -> Vec<(Offset, Option<Command>)> {
        let batches = self.read_committed(METADATA_GROUP, from);
        let command = |records: Vec<CommittedRecord>| {
            records.first().and_then(|record| serde_json::from_slice(&record.value).ok())
        };
        batches.into_iter().map(|(after, records)| (after, command(records))).collect()
    }

    /// The offsets group's records committed from `from` on: per batch, the offset after it
    /// and its records.
    pub(crate) fn committed_offsets_records(
        &self,
        from: Offset,
    ) -> Vec<(Offset, Vec<CommittedRecord>)> {
        self.read_committed(OFFSETS_GROUP, from)
    }

    /// The committed offsets the offsets group's state machine folds.
    pub(crate) fn offsets_fold(&self) -> &Arc<OffsetsFold> {
        &self.offsets_fold
    }

    /// Where the offsets group's log starts on this node (a compaction moves it).
    pub(crate) fn offsets_log_start(&self) -> Offset {
        self.offsets_replica().store().with_log(|log| log.log_start_offset())
    }

    /// The metadata the metadata group's state machine folds.
    pub(crate) fn metadata_fold(&self) -> &Arc<MetadataFold> {
        &self.metadata_fold
    }

    /// Where the metadata group's log starts on this node (a compaction moves it).
    pub(crate) fn metadata_log_start(&self) -> Offset {
        self.metadata().store().with_log(|log| log.log_start_offset())
    }

    /// Compacts the logs of the cluster's own groups (the metadata, the consumer groups'
    /// offsets) that hold `size` bytes or more: each saves a snapshot of its folded state
    /// and purges its log up to it, which deletes the whole segments below. Returns the
    /// index each purged up to, if any (metadata, then offsets).
    pub(crate) async fn compact_internal_logs(
        &self,
        size: u64,
    ) -> Result<(Option<u64>, Option<u64>), String> {
        let large = |replica: &Replica| replica.store().with_log(|log| log.size_bytes()) >= size;
        // The metadata's log no further than this node's topics have taken it: a restart
        // reads it again from its start, and finds there every command its disk may lack.
        let metadata = match large(&self.metadata()) {
            true => {
                let applied = Offset(*self.metadata_applied.borrow());
                self.metadata().compact_before(applied, INTERNAL_COMPACT_PATIENCE).await?
            }
            false => None,
        };
        let offsets = match large(&self.offsets_replica()) {
            true => self.offsets_replica().compact(INTERNAL_COMPACT_PATIENCE).await?,
            false => None,
        };
        Ok((metadata, offsets))
    }

    /// Every producer id below `end` was handed out (as a snapshot of the metadata says).
    pub(crate) fn producer_ids_handed_out(&self, end: i64) {
        self.producer_ids_end.send_if_modified(|known| {
            let grows = end > *known;
            *known = (*known).max(end);
            grows
        });
    }

    /// Where this node holds its replica of `group`, one of the cluster's own (empty only
    /// before it starts; a repair swaps it).
    pub(super) fn internal_slot(&self, group: &str) -> &RwLock<Option<Arc<Replica>>> {
        match group {
            METADATA_GROUP => &self.metadata,
            _ => &self.offsets,
        }
    }

    /// This node's replica of `group`, one of the cluster's own.
    pub(super) fn internal_replica(&self, group: &str) -> Arc<Replica> {
        let replica = self.internal_slot(group).read().unwrap_or_else(PoisonError::into_inner);
        replica.clone().expect("the cluster's own replicas start with the cluster")
    }

    fn offsets_replica(&self) -> Arc<Replica> {
        self.internal_replica(OFFSETS_GROUP)
    }

    /// What tells this run's records of the offsets group from others (see `run`).
    pub(crate) fn run(&self) -> &str {
        &self.run
    }

    /// Commits a batch of the offsets group (from any node: a follower passes it to the
    /// leader), once a majority has it fsynced.
    pub(crate) async fn propose_offsets(&self, batch: Bytes) -> Result<(), ServiceError> {
        let proposed = propose_internal(&self.offsets_replica(), batch).await;
        proposed.map(|_| ()).map_err(|error| {
            ServiceError::Cluster(format!("the cluster's consumer group offsets: {error}"))
        })
    }

    /// Notified when the offsets group commits more.
    pub(crate) fn offsets_changes(&self) -> watch::Receiver<u64> {
        self.offsets_committed.subscribe()
    }

    /// Records what applying the metadata up to `offset` did.
    pub(crate) fn applied(&self, offset: Offset) {
        self.metadata_applied.send_replace(offset.0);
    }

    /// Notified when the metadata group commits more.
    pub(crate) fn metadata_changes(&self) -> watch::Receiver<u64> {
        self.metadata_committed.subscribe()
    }

    /// A producer id no node handed out before, from this node's block; a new block is
    /// taken through the metadata group when it runs out.
    pub(crate) async fn allocate_producer_id(&self) -> Result<i64, ServiceError> {
        let mut block = self.producer_ids.lock().await;
        if block.is_empty() {
            let command = Command::AllocateProducerIds { node: self.node_id };
            let start = producer_id_block(self.propose(&command).await?);
            *block = start..start + PRODUCER_ID_BLOCK as i64;
        }
        let id = block.start;
        block.start += 1;
        Ok(id)
    }

    /// Applies a block's allocation, the command at `offset`.
    pub(crate) fn producer_ids_allocated(&self, offset: Offset) {
        self.producer_ids_handed_out(producer_id_block(offset) + PRODUCER_ID_BLOCK as i64);
    }

    /// Checks that some node of the cluster handed out `producer_id`. An id handed out by
    /// another node just now may not be applied here yet: it waits up to
    /// [`PRODUCER_ID_PATIENCE`] for it.
    pub(crate) async fn check_producer_id(&self, producer_id: i64) -> Result<(), ProducerIdError> {
        if producer_id < 0 {
            return Err(ProducerIdError::Unknown { producer_id });
        }
        let mut known = self.producer_ids_end.subscribe();
        let handed_out = known.wait_for(|end| producer_id < *end);
        match tokio::time::timeout(PRODUCER_ID_PATIENCE, handed_out).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(ProducerIdError::Unknown { producer_id }),
        }
    }

    /// Keeps what applying this node's own command at `at` did, for [`Cluster::take_outcome`].
    pub(crate) fn record_outcome(&self, at: Offset, outcome: Outcome) {
        self.outcomes.lock().unwrap_or_else(PoisonError::into_inner).insert(at.0, outcome);
    }

    /// What applying this node's command at `at` did, once (it was applied here).
    pub(crate) fn take_outcome(&self, at: Offset) -> Option<Outcome> {
        self.outcomes.lock().unwrap_or_else(PoisonError::into_inner).remove(&at.0)
    }

    /// The metadata group's leader, as this node knows it.
    pub(crate) fn metadata_leader(&self) -> Option<u64> {
        self.metadata().leader().map(|(id, _)| id)
    }

    /// Applies a node's registration.
    pub(crate) fn register(&self, id: u64, address: String, kafka: Option<String>) {
        self.nodes.write().unwrap_or_else(PoisonError::into_inner).insert(id, address);
        let mut kafka_nodes = self.kafka_nodes.write().unwrap_or_else(PoisonError::into_inner);
        match kafka {
            Some(kafka) => kafka_nodes.insert(id, kafka),
            None => kafka_nodes.remove(&id),
        };
    }

    /// Where each node's Kafka listener is, by node id, for the nodes registered with one.
    pub(crate) fn kafka_nodes(&self) -> BTreeMap<u64, String> {
        self.kafka_nodes.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The node that coordinates every consumer group, gRPC and Kafka: the leader of the
    /// offsets group, as this node knows it (`None` while there is none). A group's members
    /// so meet on one node, whose coordinator (`crate::groups`) runs the group and proposes
    /// its commits without a hop; when that node dies, the offsets group elects another and
    /// the coordinator moves with it, as Kafka's moves with the leader of its offsets topic's
    /// partition.
    pub(crate) fn group_coordinator(&self) -> Option<u64> {
        self.offsets_replica().leader().map(|(id, _)| id)
    }

    /// Whether this node coordinates the cluster's groups ([`Cluster::group_coordinator`]):
    /// `NotCoordinator` naming the node that does, once one is known. While an election is
    /// on it waits for it, up to [`LEADER_ELECTION_PATIENCE`]. A new coordinator first
    /// loads the groups ([`Cluster::load_groups`]).
    pub(crate) async fn coordinates_groups(&self) -> Result<(), ServiceError> {
        let coordinator = match self.group_coordinator() {
            Some(id) => Some(id),
            None => {
                let replica = self.offsets_replica();
                let elected = replica.wait_for_leader(LEADER_ELECTION_PATIENCE);
                elected.await.map(|(id, _)| id)
            }
        };
        match coordinator {
            Some(id) if id == self.node_id => match self.groups_loaded() {
                true => Ok(()),
                false => self.load_groups().await,
            },
            other => Err(ServiceError::NotCoordinator {
                coordinator: other.map(|id| (id, self.client_address(id))),
            }),
        }
    }

    /// Records that this node's consumer groups have applied the offsets group's log up to
    /// `next`.
    pub(crate) fn offsets_followed(&self, next: Offset) {
        self.offsets_followed.send_replace(next.0);
    }

    /// Whether this node leads the offsets group and its consumer groups have applied
    /// everything the group committed before this node's term began.
    pub(crate) fn groups_loaded(&self) -> bool {
        self.groups_loaded_term().is_some()
    }

    /// The term of the offsets group this node leads and has loaded the groups for; `None`
    /// while it does not coordinate them (or has not loaded them yet).
    pub(crate) fn groups_loaded_term(&self) -> Option<u64> {
        let term = self.offsets_replica().leading_term();
        term.filter(|_| *self.groups_loaded.borrow() == term)
    }

    /// Sets what [`Cluster::load_groups`] calls once the groups are loaded (once).
    pub(crate) fn on_groups_loaded(&self, loaded: OnGroupsLoaded) {
        let set = self.on_groups_loaded.set(loaded);
        assert!(set.is_ok(), "the cluster's groups-loaded watcher is set once");
    }

    /// Starts [`Cluster::load_groups`] unless a load is running (for a caller that does not
    /// wait).
    pub(crate) fn load_groups_in_background(self: &Arc<Self>) {
        if self.loading.try_lock().is_err() {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            if let Err(error) = cluster.load_groups().await {
                tracing::info!(%error, "loading the consumer groups failed; the next group call tries again");
            }
        });
    }

    /// Loads the consumer groups for this node's term as the offsets group's leader: confirms
    /// the leadership (which applies what earlier terms committed), then waits up to
    /// [`GROUPS_LOAD_PATIENCE`] for the groups to apply the log that far. Until then a
    /// new coordinator could answer with older committed offsets than a member committed
    /// at the last one, and let an older record it applies later overwrite a newer commit.
    /// Then it catches up with the cluster's metadata ([`Cluster::catch_up`]) and, once
    /// loaded, calls what [`Cluster::on_groups_loaded`] set (the groups forget the offsets
    /// of topics the cluster no longer holds).
    pub(crate) async fn load_groups(&self) -> Result<(), ServiceError> {
        let _one = self.loading.lock().await;
        if self.groups_loaded() {
            return Ok(());
        }
        let replica = self.offsets_replica();
        let not_coordinator = || {
            let coordinator = replica.leader().map(|(id, _)| (id, self.client_address(id)));
            ServiceError::NotCoordinator { coordinator }
        };
        if let Err(error) = replica.linearize(LEADERSHIP_CONFIRM_TIMEOUT).await {
            return Err(match error {
                ProposeError::NotLeader { .. } => not_coordinator(),
                other => ServiceError::Cluster(format!("the cluster's consumer groups: {other}")),
            });
        }
        let Some(term) = replica.leading_term() else { return Err(not_coordinator()) };
        let end = replica.high_watermark().0;
        let mut followed = self.offsets_followed.subscribe();
        let applied = tokio::time::timeout(GROUPS_LOAD_PATIENCE, followed.wait_for(|f| *f >= end));
        if !matches!(applied.await, Ok(Ok(_))) {
            return Err(ServiceError::Cluster(format!(
                "node {} is loading the consumer groups' committed offsets as their new coordinator: try again",
                self.node_id
            )));
        }
        // The metadata too, as the cluster has it now: every commit an earlier coordinator
        // took was of a topic created before this point. So a topic missing here is gone, and
        // one deleted from here on was created before its deletion: the groups forget their
        // offsets of either without forgetting those of a newer topic of the same name (see
        // `crate::groups`).
        if !self.catch_up().await {
            return Err(ServiceError::Cluster(format!(
                "node {} could not catch up with the cluster's metadata while loading the consumer groups as their new coordinator: try again",
                self.node_id
            )));
        }
        self.groups_loaded.send_replace(Some(term));
        tracing::info!(term, "this node coordinates the consumer groups, loaded");
        if let Some(pending) = self.on_groups_loaded.get().and_then(|loaded| loaded()) {
            pending.await;
        }
        Ok(())
    }

    /// [`Cluster::group_coordinator`] with its Kafka address (`None` when it has no Kafka
    /// listener).
    pub(crate) fn kafka_coordinator(&self) -> Option<(u64, String)> {
        let leader = self.group_coordinator()?;
        let nodes = self.kafka_nodes.read().unwrap_or_else(PoisonError::into_inner);
        nodes.get(&leader).map(|address| (leader, address.clone()))
    }

    /// Registers this node's client address (and its Kafka listener's, if it has one),
    /// retrying until the metadata group takes it.
    pub(crate) async fn join(&self, client_address: String, kafka: Option<String>) {
        let command = Command::RegisterNode { id: self.node_id, address: client_address, kafka };
        // An empty start asks the others whether this node registered before: settled first.
        tokio::select! {
            () = self.stop.cancelled() => return,
            _ = self.settled() => {}
        }
        loop {
            match self.propose(&command).await {
                Ok(_) => {
                    tracing::info!(node = self.node_id, "joined the cluster");
                    self.joined.send_replace(true);
                    return;
                }
                Err(error) => {
                    tracing::info!(%error, "waiting for the cluster to take this node's registration");
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }
        }
    }

    /// Whether this node rejoins the cluster, once that is settled (see
    /// [`Cluster::settle_empty_start`]).
    pub(crate) async fn settled(&self) -> bool {
        let mut settled = self.rejoining.subscribe();
        let rejoins = settled.wait_for(Option::is_some).await.map(|rejoins| *rejoins);
        rejoins.ok().flatten().unwrap_or(false)
    }

    /// Returns once this node has joined (its registration applied here).
    pub(crate) async fn joined(&self) {
        let mut joined = self.joined.subscribe();
        let _ = joined.wait_for(|joined| *joined).await;
    }

    /// Cancelled when the cluster shuts down.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// The error for a request this node's replica cannot take, naming the leader.
    pub(crate) fn not_leader(
        &self,
        topic: &spool_broker::TopicName,
        partition: u32,
        error: ProposeError,
    ) -> ServiceError {
        match error {
            ProposeError::NotLeader { leader } => {
                let leader = leader.map(|(id, _)| (id, self.client_address(id)));
                ServiceError::NotLeader { topic: topic.clone(), partition, leader }
            }
            ProposeError::Refused { code, message } => ServiceError::Forwarded { code, message },
            other => ServiceError::Cluster(format!("partition {partition} of {topic}: {other}")),
        }
    }

    /// Stops the metadata replica and the peer listener; returns the metadata log to close.
    pub(crate) async fn shutdown(&self) -> Vec<spool_storage::Log> {
        // No replica of the cluster's own groups restarts under repair past this point.
        let _restarting = self.restarting.lock().await;
        let mut logs = Vec::new();
        for group in [METADATA_GROUP, OFFSETS_GROUP] {
            let log = self
                .internal_slot(group)
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|replica| replica.store().log().clone());
            self.stop_replica(group).await;
            logs.extend(
                log.and_then(|log| log.write().unwrap_or_else(PoisonError::into_inner).take()),
            );
        }
        self.stop.cancel();
        logs
    }
}

/// Reads the peer revocation list's file (`path`) again every [`PEER_CRL_RELOAD_INTERVAL`].
/// When it changed, and the new list makes a usable TLS configuration with the rest of
/// `tls`, the peer listener and this node's calls take it, and every peer connection is
/// opened again under it (a connection a revoked certificate opened ends). A file that
/// cannot be read or holds no usable list leaves the last one in force, and says so once.
async fn reload_peer_crl(
    cluster: Arc<Cluster>,
    tls: PeerTls,
    path: std::path::PathBuf,
    listener: watch::Sender<Option<tokio_rustls::TlsAcceptor>>,
) {
    let mut in_force = tls.crl_pem.clone();
    let mut refused: Option<String> = None;
    let mut interval = tokio::time::interval(PEER_CRL_RELOAD_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cluster.stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let reading = path.clone();
        let read = tokio::task::spawn_blocking(move || std::fs::read(reading)).await;
        let loaded = match read {
            Ok(Ok(pem)) if in_force.as_deref() == Some(&pem[..]) => continue,
            Ok(Ok(pem)) => {
                let next = PeerTls { crl_pem: Some(pem.clone()), ..tls.clone() };
                next.acceptor().and_then(|acceptor| Ok((pem, acceptor, next.connector()?)))
            }
            Ok(Err(error)) => Err(format!("cannot read {}: {error}", path.display())),
            Err(error) => Err(format!("reading {} panicked: {error}", path.display())),
        };
        match loaded {
            Ok((pem, acceptor, connector)) => {
                cluster.transport.set_tls(Some(connector));
                listener.send_replace(Some(acceptor));
                in_force = Some(pem);
                refused = None;
                tracing::info!(path = %path.display(), "the peer revocation list changed: every peer connection is opened again under it");
            }
            Err(reason) if refused.as_ref() != Some(&reason) => {
                tracing::error!(%reason, "the peer revocation list was not reloaded: the one read before stays in force");
                refused = Some(reason);
            }
            Err(_) => {}
        }
    }
}

/// Asks every other node which peer protocol version it speaks, every
/// [`PEER_PROTOCOL_CHECK_INTERVAL`] until the cluster stops, and logs an error naming each
/// node that speaks another than this node (and when it no longer does): nodes of different
/// releases fail each other's messages one by one, and this says why.
async fn watch_peer_protocols(cluster: Arc<Cluster>) {
    let ours = spool_replication::PROTOCOL_VERSION;
    let mut reported: BTreeMap<u64, u32> = BTreeMap::new();
    let mut timer = tokio::time::interval(PEER_PROTOCOL_CHECK_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cluster.stop.cancelled() => return,
            _ = timer.tick() => {}
        }
        for (&id, address) in cluster.members.iter().filter(|(id, _)| **id != cluster.node_id) {
            let Ok(theirs) = cluster.transport.protocol_of(address, PEER_PROBE_TIMEOUT).await
            else {
                continue;
            };
            let before = reported.insert(id, theirs).unwrap_or(ours);
            if theirs != ours && theirs != before {
                tracing::error!(
                    node = id,
                    %address,
                    theirs,
                    ours,
                    "node {id} speaks peer protocol version {theirs}, this node {ours}: its release differs from this node's, and the two cannot replicate to each other. Run one release on every node: stop them all, upgrade each, start them again"
                );
            } else if theirs == ours && before != ours {
                tracing::info!(node = id, "node {id} now speaks this node's peer protocol");
            }
        }
    }
}

/// Every [`LEADER_HAND_BACK_INTERVAL`] until the cluster stops, hands each group this node
/// leads whose preferred leader is another node back to that node, once it holds every entry
/// ([`Replica::hand_back`]): after a failover and the failed node's return, leaders spread
/// over the nodes as they were placed.
async fn hand_leaders_back(cluster: Arc<Cluster>) {
    use futures_util::StreamExt;
    let stop = cluster.stopping();
    let mut timer = tokio::time::interval(LEADER_HAND_BACK_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = timer.tick() => {}
        }
        let led: Vec<(String, Arc<Replica>)> = {
            let replicas = cluster.replicas.read().unwrap_or_else(PoisonError::into_inner);
            let led = replicas.iter().filter(|(_, replica)| replica.leading_term().is_some());
            led.map(|(group, replica)| (group.clone(), replica.clone())).collect()
        };
        let hand_back = |(group, replica): (String, Arc<Replica>)| async move {
            match replica.hand_back().await {
                Ok(None) => {}
                Ok(Some(to)) => {
                    tracing::info!(group, to, "handed the leadership back to its preferred node")
                }
                Err(error) => {
                    tracing::debug!(group, %error, "the leadership stays: it is tried again later")
                }
            }
        };
        let all = futures_util::stream::iter(led)
            .for_each_concurrent(LEADER_HAND_BACKS_AT_ONCE, hand_back);
        tokio::select! {
            () = stop.cancelled() => return,
            () = all => {}
        }
    }
}

/// Compacts the logs of the cluster's own groups every [`INTERNAL_COMPACT_CHECK_INTERVAL`]
/// once one holds more than [`INTERNAL_COMPACT_BYTES`], until the cluster stops.
async fn compact_internal_logs(cluster: Arc<Cluster>) {
    let stop = cluster.stopping();
    let mut timer = tokio::time::interval(INTERNAL_COMPACT_CHECK_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = timer.tick() => {}
        }
        match cluster.compact_internal_logs(INTERNAL_COMPACT_BYTES).await {
            Ok((None, None)) => {}
            Ok((metadata, offsets)) => {
                tracing::info!(?metadata, ?offsets, "compacted the cluster's own logs");
            }
            Err(error) => {
                tracing::warn!(%error, "compacting the cluster's own logs failed; it is tried again")
            }
        }
    }
}
