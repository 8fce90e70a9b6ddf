//! [`Replica`]: this node's member of one replicated partition's Raft group.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, InitializeError, RaftError};
use openraft::{BasicNode, Raft, RaftMetrics, ServerState, SnapshotPolicy};
use spool_storage::Offset;

use crate::limits::{
    ELECTION_TIMEOUT_MAX, ELECTION_TIMEOUT_MIN, ENTRIES_PER_MESSAGE_MAX, HAND_BACK_TIMEOUT_MAX,
    HAND_OVER_LAG_MAX, HAND_OVER_LED_MIN, HAND_OVER_WAIT_MAX, HEARTBEAT_INTERVAL,
    SNAPSHOT_CHUNK_BYTES,
};
use crate::network::{Network, Transport};
use crate::proposals::{self, Proposals};
use crate::rpc::{self, PeerRead, ReadAnswer, Request};
use crate::{NodeId, PartitionStateMachine, SegmentLogStore, TypeConfig};

/// Why a replica did not start.
#[derive(Debug, thiserror::Error)]
#[error("starting the partition's replication failed: {0}")]
pub struct StartError(String);

/// Why a group was not formed.
#[derive(Debug, thiserror::Error)]
#[error("forming the partition's replica group failed: {0}")]
pub struct BootstrapError(String);

/// Why a proposed batch was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ProposeError {
    /// Only the leader appends; `leader` is who leads now, when known (id and address).
    #[error("this node does not lead the partition{}", match leader {
        Some((id, address)) => format!("; node {id} at {address} does"),
        None => "; no leader is elected yet".to_owned(),
    })]
    NotLeader { leader: Option<(NodeId, String)> },
    /// The replica stopped (shut down, or its storage failed): nothing more is appended here.
    #[error("the partition's replication stopped: {0}")]
    Stopped(String),
    /// Passing the batch to the leader failed; whether it was committed is unknown.
    #[error("the batch could not reach the partition's leader: {0}")]
    Unreachable(String),
    /// The leader refused the batch a peer passed to it (see [`Replica::on_forwarded`]):
    /// `code` is the status the leader's owner chose, opaque here.
    #[error("{message}")]
    Refused { code: i32, message: String },
    /// Batches proposed together that do not fit one entry (see
    /// [`fits_one_entry`](crate::fits_one_entry)); nothing was proposed.
    #[error(
        "{batches} batches of {bytes} bytes do not fit one entry (at most {} batches of {} bytes)",
        crate::limits::ENTRY_BATCHES_MAX,
        crate::limits::ENTRY_KAFKA_BYTES_MAX
    )]
    Oversized { batches: usize, bytes: usize },
}

/// Why a leader did not hand its group over ([`Replica::hand_over`]). The group is led as
/// before, or (`NotElected`) by whoever won the election that followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum HandOverError {
    #[error("this replica does not lead the group")]
    NotLeader,
    #[error("no leader of the group is known: an election is on")]
    NoLeader,
    #[error("the group's leader could not be asked: {0}")]
    Unreachable(String),
    #[error("node {0} is not a voter of the group")]
    NotAVoter(NodeId),
    /// Until then the leader's own lease refuses the vote the hand-over needs.
    #[error(
        "this replica has led the group for {led:?}, less than the {HAND_OVER_LED_MIN:?} a hand-over waits for"
    )]
    TooSoon { led: Duration },
    #[error("node {node} is {} behind this leader", match behind {
        Some(behind) => format!("{behind} entries"),
        None => "an unknown number of entries".to_owned(),
    })]
    Behind { node: NodeId, behind: Option<u64> },
    #[error("node {node} did not stand for election: {reason}")]
    NotStood { node: NodeId, reason: String },
    #[error("node {node} was not elected within {HAND_OVER_WAIT_MAX:?}; {}", match leader {
        Some(leader) => format!("node {leader} leads"),
        None => "no leader is known yet".to_owned(),
    })]
    NotElected { node: NodeId, leader: Option<NodeId> },
}

/// The offsets a committed batch took: its first, and the one after its last.
pub type Proposed = Result<(Offset, Offset), ProposeError>;

/// What a leader does with batches a peer passed to it, in the order given: its owner's
/// checks before [`Replica::propose`] (an idempotent producer's sequence, say). Answers each
/// batch, in order.
pub type OnForwarded =
    Arc<dyn Fn(Vec<Bytes>) -> Pin<Box<dyn Future<Output = Vec<Proposed>> + Send>> + Send + Sync>;

/// How a replica's owner answers a read another node asks for its clients
/// ([`Replica::on_read`]): `Refused` with the owner's status code when it cannot.
pub type OnRead = Arc<
    dyn Fn(PeerRead) -> Pin<Box<dyn Future<Output = Result<ReadAnswer, ProposeError>> + Send>>
        + Send
        + Sync,
>;

fn unanswered() -> ProposeError {
    ProposeError::Stopped("the leader's owner left a batch passed to it unanswered".into())
}

/// Counts each new leader the metrics name, and notes in which term and since when node
/// `node_id` leads, until the replica stops.
async fn watch_leaders(
    mut metrics: tokio::sync::watch::Receiver<RaftMetrics<NodeId, BasicNode>>,
    node_id: NodeId,
    changes: Arc<std::sync::atomic::AtomicU64>,
    led_since: Arc<Mutex<Option<(u64, Instant)>>>,
) {
    let mut last = None;
    loop {
        let (leader, term, leads) = {
            let metrics = metrics.borrow_and_update();
            let leads =
                metrics.state == ServerState::Leader && metrics.current_leader == Some(node_id);
            (metrics.current_leader, metrics.current_term, leads)
        };
        if leader.is_some() && leader != last {
            changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        last = leader;
        {
            let mut led = led_since.lock().unwrap_or_else(PoisonError::into_inner);
            match *led {
                Some((led_term, _)) if leads && led_term == term => {}
                _ if leads => *led = Some((term, Instant::now())),
                _ => *led = None,
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// This node's replica of one partition: its segment log, its state, and the Raft group that
/// keeps them in step with the other replicas.
pub struct Replica {
    raft: Raft<TypeConfig>,
    node_id: NodeId,
    group: Arc<str>,
    transport: Arc<dyn Transport>,
    store: SegmentLogStore,
    state: PartitionStateMachine,
    forwarded: OnceLock<OnForwarded>,
    reads: OnceLock<OnRead>,
    proposals: Arc<Proposals>,
    /// Leaders this replica has seen take the group since it started.
    leader_changes: Arc<std::sync::atomic::AtomicU64>,
    /// While this replica leads: the term, and when it took the lead (as its metrics told).
    led_since: Arc<Mutex<Option<(u64, Instant)>>>,
    /// The node the group's leadership goes back to when it can ([`Replica::hand_back`]).
    preferred: OnceLock<NodeId>,
    /// While the store is under repair: the commit index a leader sent that this replica
    /// must apply before it votes again (`u64::MAX`: none yet).
    repair_target: Arc<AtomicU64>,
}

/// Ends a repair (see [`SegmentLogStore::over`]) once the replica has applied `target`'s
/// index: a commit point a leader sent in its own term, so everything committed before the
/// damage lies below it, and this replica's log now holds it again.
async fn finish_repair(
    raft: Raft<TypeConfig>,
    store: SegmentLogStore,
    target: Arc<AtomicU64>,
    group: Arc<str>,
) {
    let mut metrics = raft.metrics();
    loop {
        if !store.repairing() {
            return; // released
        }
        let applied = metrics.borrow_and_update().last_applied.map(|id| id.index);
        let target = target.load(Ordering::Acquire);
        if target != u64::MAX && applied.is_some_and(|applied| applied >= target) {
            break;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
    if let Err(error) = store.finish_repair() {
        tracing::error!(%group, %error, "a repaired replica could not clear its repair mark: it stays out of elections until it restarts");
        return;
    }
    raft.runtime_config().elect(true);
    tracing::info!(%group, "a replica under repair caught up with its leader: it votes again");
}

/// Passes `batches` to node `leader` of `group` in one message, to be handled in the order
/// given as the leader's owner says ([`Replica::on_forwarded`]), and answered each.
pub(crate) async fn pass_in_order(
    transport: &dyn Transport,
    group: &str,
    (id, address): (NodeId, String),
    batches: Vec<Bytes>,
) -> Vec<Proposed> {
    let count = batches.len();
    let all = |error: ProposeError| vec![Err(error); count];
    let message = rpc::encode_request(&Request::ProposeInOrder(batches));
    let timeout = ELECTION_TIMEOUT_MAX * 4;
    let answer = match transport.call(id, &address, group, message, timeout).await {
        Ok(answer) => answer,
        Err(error) => return all(ProposeError::Unreachable(error.to_string())),
    };
    type Answers = Vec<Result<(u64, u64), ProposeError>>;
    match rpc::decode_response::<Answers, ()>(&answer) {
        Ok(Ok(answers)) if answers.len() == count => answers
            .into_iter()
            .map(|answer| answer.map(|(base, next)| (Offset(base), Offset(next))))
            .collect(),
        Ok(Ok(answers)) => all(ProposeError::Unreachable(format!(
            "the leader answered {} of {count} batches passed to it",
            answers.len()
        ))),
        Ok(Err(())) => all(ProposeError::Unreachable("the leader refused the batches".into())),
        Err(invalid) => all(ProposeError::Unreachable(invalid.to_string())),
    }
}

/// Asks node `id` of `group`, its leader, to hand the group back to its preferred leader now
/// ([`Replica::hand_back_now`]), within `timeout`.
pub(crate) async fn ask_hand_back(
    transport: &dyn Transport,
    group: &str,
    (id, address): (NodeId, String),
    timeout: Duration,
) -> Result<Option<NodeId>, HandOverError> {
    let timeout = timeout.min(HAND_BACK_TIMEOUT_MAX);
    let message =
        rpc::encode_request(&Request::HandBack { timeout_ms: timeout.as_millis() as u64 });
    // The leader's own work takes up to `timeout`; the message, one more election timeout.
    let call = transport.call(id, &address, group, message, timeout + ELECTION_TIMEOUT_MAX);
    let answer = call.await.map_err(|error| HandOverError::Unreachable(error.to_string()))?;
    match rpc::decode_response::<Option<NodeId>, HandOverError>(&answer) {
        Ok(answer) => answer,
        Err(invalid) => Err(HandOverError::Unreachable(invalid.to_string())),
    }
}

/// Asks node `id` of `group` for the group's commit point: answered by the leader (which
/// confirms with a quorum that it still leads), or `NotLeader` naming the leader the asked
/// node knows of.
pub(crate) async fn ask_read_index(
    transport: &dyn Transport,
    group: &str,
    (id, address): (NodeId, &str),
    timeout: Duration,
) -> Result<Offset, ProposeError> {
    let message = rpc::encode_request(&Request::ReadIndex);
    let answer = transport
        .call(id, address, group, message, timeout)
        .await
        .map_err(|error| ProposeError::Unreachable(error.to_string()))?;
    match rpc::decode_response::<u64, ProposeError>(&answer) {
        Ok(answer) => answer.map(Offset),
        Err(invalid) => Err(ProposeError::Unreachable(invalid.to_string())),
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("group", &self.group)
            .field("node_id", &self.node_id)
            .finish()
    }
}

impl Replica {
    /// Starts the replica of group `group` (a name unique in the cluster, the partition's)
    /// on this node, over its opened storage. Peers are reached through `transport`.
    pub async fn start(
        node_id: NodeId,
        group: &str,
        store: SegmentLogStore,
        state: PartitionStateMachine,
        transport: Arc<dyn Transport>,
    ) -> Result<Replica, StartError> {
        let config = openraft::Config {
            cluster_name: group.to_owned(),
            heartbeat_interval: HEARTBEAT_INTERVAL.as_millis() as u64,
            election_timeout_min: ELECTION_TIMEOUT_MIN.as_millis() as u64,
            election_timeout_max: ELECTION_TIMEOUT_MAX.as_millis() as u64,
            max_payload_entries: ENTRIES_PER_MESSAGE_MAX,
            // The log is the partition's data: Raft builds no snapshot and purges nothing
            // unless retention asks (`Replica::apply_retention`).
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            // A snapshot chunk travels raw after a message's header.
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES,
            // A replica under repair stands for no election until it has caught up.
            enable_elect: !store.repairing(),
            ..openraft::Config::default()
        };
        let config = config.validate().map_err(|error| StartError(error.to_string()))?;
        let group: Arc<str> = group.into();
        store.step_down_under_repair(node_id).map_err(|error| {
            StartError(format!("a replica under repair could not step down: {error}"))
        })?;
        store.bound_purges(state.saved_applied());
        state.forget_applied_in(store.recent());
        let network = Network { transport: transport.clone(), group: group.clone() };
        let raft = Raft::new(node_id, Arc::new(config), network, store.clone(), state.clone())
            .await
            .map_err(|error| StartError(error.to_string()))?;
        let leader_changes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let led_since = Arc::new(Mutex::new(None));
        let watch =
            watch_leaders(raft.metrics(), node_id, leader_changes.clone(), led_since.clone());
        tokio::spawn(watch);
        let repair_target = Arc::new(AtomicU64::new(u64::MAX));
        if store.repairing() {
            let (raft, store) = (raft.clone(), store.clone());
            tokio::spawn(finish_repair(raft, store, repair_target.clone(), group.clone()));
        }
        let forwarded = OnceLock::new();
        Ok(Replica {
            raft,
            node_id,
            group,
            transport,
            store,
            state,
            forwarded,
            reads: OnceLock::new(),
            proposals: Arc::new(Proposals::new()),
            leader_changes,
            led_since,
            preferred: OnceLock::new(),
            repair_target,
        })
    }

    /// Applies the log's retention limits: when whole segments below the commit point are
    /// past them, builds a snapshot of the applied state (if the last one is older) and asks
    /// Raft to purge the log up to the last entry in them; the purge deletes them (on a
    /// leader, once no follower is being sent them). A follower that still needs them gets
    /// the snapshot instead. Returns the index purged up to, if any. Waits at most
    /// `patience` for the snapshot.
    pub async fn apply_retention(
        &self,
        now: spool_storage::TimestampMs,
        patience: Duration,
    ) -> Result<Option<u64>, String> {
        let index = self.store.retention_index(now).map_err(|error| error.to_string())?;
        let Some(index) = index else { return Ok(None) };
        self.purge_through(index, patience).await.map(Some)
    }

    /// Compacts the log of a group whose state machine folds its records
    /// ([`crate::PartitionStateMachine::open_folding`]): saves a snapshot of everything
    /// applied (the fold's state with it) and has Raft purge the log up to it, which deletes
    /// the whole segments below. Returns the index purged up to, if any. Waits at most
    /// `patience` for the snapshot.
    pub async fn compact(&self, patience: Duration) -> Result<Option<u64>, String> {
        let applied = self.raft.metrics().borrow().last_applied.map(|applied| applied.index);
        let purged = self.raft.metrics().borrow().purged.map(|purged| purged.index);
        match applied {
            Some(index) if Some(index) > purged => {
                self.purge_through(index, patience).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// [`Replica::compact`], purging no further than the entries below offset `before` (what
    /// an owner that keeps state of its own beside the fold has applied).
    pub async fn compact_before(
        &self,
        before: Offset,
        patience: Duration,
    ) -> Result<Option<u64>, String> {
        let index = self.store.index_before(before).map_err(|error| error.to_string())?;
        let applied = self.raft.metrics().borrow().last_applied.map(|applied| applied.index);
        let purged = self.raft.metrics().borrow().purged.map(|purged| purged.index);
        match index.zip(applied).map(|(index, applied)| index.min(applied)) {
            Some(index) if Some(index) > purged => {
                self.purge_through(index, patience).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Has Raft purge the log through entry `index`, after building a snapshot that covers
    /// it if the last one does not.
    async fn purge_through(&self, index: u64, patience: Duration) -> Result<u64, String> {
        let mut metrics = self.raft.metrics();
        let built = |metrics: &openraft::RaftMetrics<NodeId, BasicNode>| {
            metrics.snapshot.is_some_and(|snapshot| snapshot.index >= index)
        };
        if !built(&metrics.borrow()) {
            self.raft.trigger().snapshot().await.map_err(|error| error.to_string())?;
            let waited = tokio::time::timeout(patience, metrics.wait_for(built)).await;
            match waited {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err("the replica stopped".to_owned()),
                Err(_) => return Err(format!("no snapshot was built within {patience:?}")),
            }
        }
        self.raft.trigger().purge_log(index).await.map_err(|error| error.to_string())?;
        Ok(index)
    }

    /// Whether this replica is under repair (its synced data was damaged and its log cut
    /// back, or its node started on an empty data directory) or held: it takes no part in
    /// elections until it has caught up with a leader, or is released.
    pub fn repairing(&self) -> bool {
        self.store.repairing()
    }

    /// Ends a hold ([`SegmentLogStore::hold`]): the replica votes and stands for election.
    pub fn release(&self) -> std::io::Result<()> {
        self.store.finish_repair()?;
        self.raft.runtime_config().elect(true);
        Ok(())
    }

    /// Whether the peer `id` at `address` has begun this group: its log holds an entry past
    /// the first membership, which only an elected leader writes (a term alone says nothing:
    /// forming a group starts an election at once). An error when it cannot tell
    /// (unreachable, no replica yet), within `timeout`.
    pub async fn peer_has_begun(
        &self,
        id: NodeId,
        address: &str,
        timeout: Duration,
    ) -> Result<bool, String> {
        let message = rpc::encode_request(&Request::Progress);
        let answer = self.transport.call(id, address, &self.group, message, timeout).await;
        let answer = answer.map_err(|error| error.to_string())?;
        match rpc::decode_response::<u64, ()>(&answer) {
            Ok(Ok(last_index)) => Ok(last_index > 0),
            Ok(Err(())) => Err("the peer did not say".to_owned()),
            Err(invalid) => Err(invalid.to_string()),
        }
    }

    /// Forms the group with `members` (node id to address) as its voters, once: a replica
    /// whose log already holds a membership leaves it as it is. Whether this call formed it.
    pub async fn bootstrap(
        &self,
        members: &BTreeMap<NodeId, String>,
    ) -> Result<bool, BootstrapError> {
        if self.raft.is_initialized().await.map_err(|e| BootstrapError(e.to_string()))? {
            return Ok(false);
        }
        let nodes: BTreeMap<NodeId, BasicNode> =
            members.iter().map(|(id, address)| (*id, BasicNode::new(address))).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(error) => Err(BootstrapError(error.to_string())),
        }
    }

    /// Appends a producer's Kafka batch through the group (which must have passed
    /// [`check_for_append`](spool_storage::batch::check_for_append)): answered once a
    /// majority of the replicas has it fsynced and this leader applied it, with its offsets
    /// (the first, and the one after the last). Batches proposed while earlier ones are in
    /// Raft share an entry (the `proposals` module).
    pub async fn propose(&self, kafka: Bytes) -> Proposed {
        self.propose_queued(kafka, false).await.await
    }

    /// Queues `kafka` to be proposed as [`Replica::propose`] does, and returns once it is
    /// queued (which waits while the queue is full) with what answers it: batches queued
    /// one after the other are stored in that order. With `on_append` the answer comes once
    /// this leader's log has appended the batch, before its fsync and before a follower has
    /// it (`acks=leader`): the batch is lost should this leader die or be deposed before a
    /// majority has it.
    pub async fn propose_queued(
        &self,
        kafka: Bytes,
        on_append: bool,
    ) -> impl Future<Output = Proposed> + Send + 'static {
        let queued = self.proposals.queue(&self.raft, vec![kafka], on_append).await;
        async move {
            let answered = queued?;
            proposals::first(answered.await.unwrap_or_else(|_| Err(proposals::dropped())))
        }
    }

    /// Proposes `batches` in one entry, in the order given: they are committed all or none,
    /// and answered each with its offsets. Together they must fit one entry
    /// ([`fits_one_entry`](crate::fits_one_entry)).
    pub async fn propose_together(
        &self,
        batches: Vec<Bytes>,
    ) -> Result<Vec<(Offset, Offset)>, ProposeError> {
        let answered = self.proposals.queue(&self.raft, batches, false).await?;
        answered.await.unwrap_or_else(|_| Err(proposals::dropped()))
    }

    /// Appends a batch through the group as [`Replica::propose`] does, passing it to the
    /// leader when this replica does not lead: for requests any node accepts.
    pub async fn propose_anywhere(&self, kafka: Bytes) -> Proposed {
        match self.propose(kafka.clone()).await {
            Err(ProposeError::NotLeader { leader: Some(leader) }) if leader.0 != self.node_id => {
                self.forward_to(leader, kafka).await
            }
            other => other,
        }
    }

    /// Passes a batch to the leader this replica knows of, which handles it as its owner
    /// said ([`Replica::on_forwarded`]), or proposes it. `NotLeader` when no other node is
    /// known to lead.
    pub async fn forward(&self, kafka: Bytes) -> Proposed {
        match self.leader() {
            Some(leader) if leader.0 != self.node_id => self.forward_to(leader, kafka).await,
            leader => Err(ProposeError::NotLeader { leader }),
        }
    }

    /// Passes `batches` to the leader this replica knows of in one message, to be handled
    /// in the order given as [`Replica::forward`] handles one, and answered each.
    pub async fn forward_in_order(&self, batches: Vec<Bytes>) -> Vec<Proposed> {
        match self.leader() {
            Some(leader) if leader.0 != self.node_id => {
                pass_in_order(self.transport.as_ref(), &self.group, leader, batches).await
            }
            leader => vec![Err(ProposeError::NotLeader { leader }); batches.len()],
        }
    }

    async fn forward_to(&self, (id, address): (NodeId, String), kafka: Bytes) -> Proposed {
        let message = rpc::encode_request(&Request::Propose(kafka));
        let timeout = ELECTION_TIMEOUT_MAX * 4;
        let answer = self
            .transport
            .call(id, &address, &self.group, message, timeout)
            .await
            .map_err(|error| ProposeError::Unreachable(error.to_string()))?;
        match rpc::decode_response::<(u64, u64), ProposeError>(&answer) {
            Ok(Ok((base, next))) => Ok((Offset(base), Offset(next))),
            Ok(Err(error)) => Err(error),
            Err(invalid) => Err(ProposeError::Unreachable(invalid.to_string())),
        }
    }

    /// Sets what this replica does with a batch a peer passes to it while it leads: by
    /// default, [`Replica::propose`]. Set once.
    pub fn on_forwarded(&self, handler: OnForwarded) {
        let _ = self.forwarded.set(handler);
    }

    /// Sets how this replica answers reads other nodes ask for their clients (see
    /// [`crate::Remote::read`]); until set, they are answered `Stopped`. Set once.
    pub fn on_read(&self, handler: OnRead) {
        let _ = self.reads.set(handler);
    }

    /// Confirms with a quorum that this replica leads, and waits until it has applied every
    /// entry committed before its term began (its term's first entry included), so state
    /// rebuilt from the log now is complete. Returns the term it leads in. Waits at most
    /// `timeout`.
    pub async fn linearize(&self, timeout: Duration) -> Result<u64, ProposeError> {
        let confirmed = tokio::time::timeout(timeout, self.raft.ensure_linearizable()).await;
        match confirmed {
            Ok(Ok(Some(log_id))) => Ok(log_id.leader_id.term),
            Ok(Ok(None)) => Err(ProposeError::NotLeader { leader: None }),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                let leader = forward.leader_id.zip(forward.leader_node.map(|node| node.addr));
                Err(ProposeError::NotLeader { leader })
            }
            Ok(Err(error)) => Err(ProposeError::Unreachable(error.to_string())),
            Err(_) => Err(ProposeError::Unreachable(format!(
                "no quorum confirmed this replica's leadership within {timeout:?}"
            ))),
        }
    }

    /// The high watermark this replica must apply to before a read here sees everything
    /// the group committed before the call. The leader confirms with a quorum that it still
    /// leads ([`Replica::linearize`]) and answers its own; a follower asks the leader. Waits
    /// at most `timeout`.
    pub async fn read_index(&self, timeout: Duration) -> Result<Offset, ProposeError> {
        let leader = match self.linearize(timeout).await {
            Ok(_) => return Ok(self.high_watermark()),
            Err(ProposeError::NotLeader { leader: Some(leader) }) if leader.0 != self.node_id => {
                leader
            }
            Err(error) => return Err(error),
        };
        let (id, address) = leader;
        ask_read_index(self.transport.as_ref(), &self.group, (id, &address), timeout).await
    }

    /// Runs `attempt` (a proposal, here or through the leader) again while it is answered
    /// `NotLeader` with no leader known, which means nothing was stored (an election is on,
    /// or the group is new): between tries it waits for a leader, for up to `patience` in all.
    pub async fn through_elections<F, Fut>(&self, patience: Duration, mut attempt: F) -> Proposed
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Proposed>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match attempt().await {
                Err(ProposeError::NotLeader { leader: None })
                    if tokio::time::Instant::now() < deadline =>
                {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    if self.wait_for_leader(left).await.is_none() {
                        return Err(ProposeError::NotLeader { leader: None });
                    }
                }
                other => return other,
            }
        }
    }

    /// Stands for election now rather than after an election timeout: what the node chosen
    /// to lead a new group does, so that leaders spread over the nodes and a new partition
    /// takes writes at once. Raft still decides; this only starts an election.
    pub async fn campaign(&self) {
        if self.repairing() {
            return;
        }
        if let Err(error) = self.raft.trigger().elect().await {
            tracing::debug!(%error, "a replica could not stand for election");
        }
    }

    /// Hands the group's leadership to node `to`, one of its voters (`Ok` at once when `to`
    /// is this node): what openraft 0.10's `transfer_leader` does, built from 0.9's election
    /// trigger. This leader holds new proposals back (entries already in Raft go on) until
    /// `to` holds every entry it has, asks `to` to stand for election, and gives it its vote:
    /// a candidate whose log is as long as the leader's. Raft still decides; this only starts an election that `to` can win
    /// at once. In a group of three, `to`'s own vote and this leader's make a majority (the
    /// other follower refuses votes for the lease, having heard from this leader); in a larger
    /// group, `to` wins once the others' lease has run out, as after a leader's death. The held
    /// proposals then go on, and are answered `NotLeader` naming `to`. Waits at most
    /// [`HAND_OVER_WAIT_MAX`] for `to` to catch up, and as long again for it to win.
    pub async fn hand_over(&self, to: NodeId) -> Result<(), HandOverError> {
        let term = self.leading_term().ok_or(HandOverError::NotLeader)?;
        if to == self.node_id {
            return Ok(());
        }
        let led = match *self.led_since.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((led_term, since)) if led_term == term => since.elapsed(),
            _ => Duration::ZERO,
        };
        if led < HAND_OVER_LED_MIN {
            return Err(HandOverError::TooSoon { led });
        }
        let address = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let voter = membership.voter_ids().any(|id| id == to);
            let node = membership.get_node(&to).filter(|_| voter);
            node.ok_or(HandOverError::NotAVoter(to))?.addr.clone()
        };
        let behind = |metrics: &RaftMetrics<NodeId, BasicNode>| {
            let matched = metrics.replication.as_ref()?.get(&to)?.as_ref()?.index;
            Some(metrics.last_log_index.unwrap_or(0).saturating_sub(matched))
        };
        let mut metrics = self.raft.metrics();
        let lag = behind(&metrics.borrow());
        if lag.is_none_or(|lag| lag > HAND_OVER_LAG_MAX) {
            return Err(HandOverError::Behind { node: to, behind: lag });
        }
        let _held = self.proposals.hold().await;
        let caught_up = async {
            // Every entry handed to Raft before the hold is answered, so the leader's log
            // holds it: then `to` holds all of the leader's log.
            self.proposals.settled().await;
            let waited = metrics.wait_for(|m| m.current_term != term || behind(m) == Some(0));
            waited.await.is_ok_and(|metrics| metrics.current_term == term)
        };
        match tokio::time::timeout(HAND_OVER_WAIT_MAX, caught_up).await {
            Ok(true) => {}
            Ok(false) => return Err(HandOverError::NotLeader),
            Err(_) => {
                let lag = behind(&self.raft.metrics().borrow());
                return Err(HandOverError::Behind { node: to, behind: lag });
            }
        }
        if self.leading_term() != Some(term) {
            return Err(HandOverError::NotLeader);
        }
        let not_stood = |reason: String| HandOverError::NotStood { node: to, reason };
        let message = rpc::encode_request(&Request::Campaign { term });
        let call = self.transport.call(to, &address, &self.group, message, HAND_OVER_WAIT_MAX);
        let answer = call.await.map_err(|error| not_stood(error.to_string()))?;
        match rpc::decode_response::<(), String>(&answer) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(not_stood(reason)),
            Err(invalid) => return Err(not_stood(invalid.to_string())),
        }
        let elected = metrics.wait_for(|m| m.current_leader == Some(to));
        match tokio::time::timeout(HAND_OVER_WAIT_MAX, elected).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let leader = self.raft.metrics().borrow().current_leader;
                Err(HandOverError::NotElected { node: to, leader })
            }
        }
    }

    /// Stands for election because the leader of `term` hands the group over to this replica
    /// ([`Replica::hand_over`]); refused under repair, or in another term.
    async fn stand_when_handed(&self, term: u64) -> Result<(), String> {
        if self.store.repairing() {
            return Err("this replica is under repair: it stands for no election".to_owned());
        }
        let current = self.raft.metrics().borrow().current_term;
        if current != term {
            return Err(format!("this replica is in term {current}, not {term}"));
        }
        self.raft.trigger().elect().await.map_err(|error| error.to_string())
    }

    /// Hands the group back to its preferred leader now, from any replica: here if this
    /// replica leads, else through the leader it knows of. A leader that has led for less
    /// than [`HAND_OVER_LED_MIN`] first waits for that, within `timeout`. `Ok(None)` when the
    /// preferred leader leads already.
    pub async fn hand_back_now(&self, timeout: Duration) -> Result<Option<NodeId>, HandOverError> {
        if self.leading_term().is_some() {
            return self.hand_back_within(timeout).await;
        }
        let leader = self.leader().ok_or(HandOverError::NoLeader)?;
        ask_hand_back(self.transport.as_ref(), &self.group, leader, timeout).await
    }

    /// [`Replica::hand_back`], waiting out [`HandOverError::TooSoon`] while `timeout` allows.
    async fn hand_back_within(&self, timeout: Duration) -> Result<Option<NodeId>, HandOverError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.hand_back().await {
                Err(HandOverError::TooSoon { led }) => {
                    let until = tokio::time::Instant::now() + HAND_OVER_LED_MIN.saturating_sub(led);
                    if until >= deadline {
                        return Err(HandOverError::TooSoon { led });
                    }
                    tokio::time::sleep_until(until).await;
                }
                other => return other,
            }
        }
    }

    /// Names the node the group's leadership goes back to when it can ([`Replica::hand_back`]):
    /// its preferred leader. Set once.
    pub fn prefer_leader(&self, id: NodeId) {
        let _ = self.preferred.set(id);
    }

    /// Where this replica leads a group whose preferred leader is another node: hands the
    /// leadership to that node ([`Replica::hand_over`]), and names it. `Ok(None)` when there
    /// is nothing to hand back.
    pub async fn hand_back(&self) -> Result<Option<NodeId>, HandOverError> {
        let Some(&preferred) = self.preferred.get() else { return Ok(None) };
        if preferred == self.node_id || self.leading_term().is_none() {
            return Ok(None);
        }
        self.hand_over(preferred).await.map(|()| Some(preferred))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The leader this replica knows of, with its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let address = metrics.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, address))
    }

    /// The term this replica leads in, when it believes it leads.
    pub fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leads =
            metrics.state == ServerState::Leader && metrics.current_leader == Some(self.node_id);
        leads.then_some(metrics.current_term)
    }

    /// Where this replica leads: each follower's distance behind it, in entries (`None` while
    /// the leader has not heard which entries the follower holds). Empty elsewhere.
    pub fn lag(&self) -> Vec<(NodeId, Option<u64>)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let Some(replication) = metrics.replication.as_ref() else { return Vec::new() };
        let last = metrics.last_log_index.unwrap_or(0);
        replication
            .iter()
            .filter(|(id, _)| **id != self.node_id)
            .map(|(id, matched)| (*id, matched.map(|at| last.saturating_sub(at.index))))
            .collect()
    }

    /// How many times a new leader took the group, as this replica heard it, since it
    /// started (its first leader included).
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits up to `timeout` for a leader to be known, and returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, String)> {
        let wait = self.raft.wait(Some(timeout));
        wait.metrics(|metrics| metrics.current_leader.is_some(), "a leader").await.ok()?;
        self.leader()
    }

    /// The end of what the group committed and this replica applied: readers of this replica
    /// see the records before it.
    pub fn high_watermark(&self) -> Offset {
        Offset(self.state.high_watermark())
    }

    /// Waits up to `timeout` until this replica has applied up to `offset`.
    pub async fn wait_for_high_watermark(&self, offset: Offset, timeout: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let reached = async {
            while self.high_watermark() < offset {
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, reached).await.unwrap_or(false)
    }

    /// The replica's storage (its log, for reads).
    pub fn store(&self) -> &SegmentLogStore {
        &self.store
    }

    /// Handles batches a peer passed here, in the order given, as the owner said
    /// ([`Replica::on_forwarded`]), or proposes them one after the other.
    async fn take_forwarded(&self, batches: Vec<Bytes>) -> Vec<Proposed> {
        if let Some(handler) = self.forwarded.get() {
            return handler(batches).await;
        }
        let mut proposed = Vec::with_capacity(batches.len());
        for kafka in batches {
            proposed.push(self.propose(kafka).await);
        }
        proposed
    }

    /// Answers a message a peer sent this replica's group (what a [`Transport`] delivers).
    /// A message that does not decode is refused with the reason.
    pub async fn handle(&self, message: Bytes) -> Bytes {
        match rpc::decode_request(message) {
            Err(invalid) => rpc::encode_refusal(&invalid),
            Ok(Request::Vote(_)) if self.store.repairing() => rpc::encode_declined(
                "this replica holds its vote until it has caught up with a leader (its data was damaged or lost, or its node is finding out whether the cluster already exists)",
            ),
            Ok(Request::Vote(vote)) => rpc::encode_response(self.raft.vote(vote).await),
            Ok(Request::AppendEntries(append)) => {
                if self.store.repairing()
                    && let Some(commit) = append.leader_commit
                    && commit.leader_id.term == append.vote.leader_id.term
                {
                    self.repair_target.fetch_min(commit.index, Ordering::AcqRel);
                }
                rpc::encode_response(self.raft.append_entries(append).await)
            }
            Ok(Request::InstallSnapshot(snapshot)) => {
                rpc::encode_response(self.raft.install_snapshot(snapshot).await)
            }
            Ok(Request::Propose(kafka)) => {
                let proposed = self.take_forwarded(vec![kafka]).await.pop();
                let proposed = proposed.unwrap_or_else(|| Err(unanswered()));
                rpc::encode_response(proposed.map(|(base, next)| (base.0, next.0)))
            }
            Ok(Request::ProposeInOrder(batches)) => {
                let count = batches.len();
                let mut proposed = self.take_forwarded(batches).await;
                proposed.resize_with(count, || Err(unanswered()));
                let answers: Vec<Result<(u64, u64), ProposeError>> = proposed
                    .into_iter()
                    .map(|proposed| proposed.map(|(base, next)| (base.0, next.0)))
                    .collect();
                rpc::encode_response::<_, ()>(Ok(answers))
            }
            Ok(Request::Read(read)) => rpc::encode_read_answer(match self.reads.get() {
                Some(handler) => handler(read).await,
                None => Err(ProposeError::Stopped("this replica serves no reads yet".into())),
            }),
            Ok(Request::Progress) => {
                let last_index = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
                rpc::encode_response::<u64, ()>(Ok(last_index))
            }
            Ok(Request::Campaign { term }) => {
                rpc::encode_response::<(), String>(self.stand_when_handed(term).await)
            }
            Ok(Request::HandBack { timeout_ms }) => {
                let handed = match self.leading_term() {
                    Some(_) => self.hand_back_within(Duration::from_millis(timeout_ms)).await,
                    None => Err(HandOverError::NotLeader),
                };
                rpc::encode_response(handed)
            }
            Ok(Request::ReadIndex) => {
                // Only the leader answers with an index: asked of a follower (the leader
                // changed meanwhile), it says NotLeader and the asker's read goes without.
                let confirmed = self.linearize(ELECTION_TIMEOUT_MAX * 4).await;
                rpc::encode_response(confirmed.map(|_| self.high_watermark().0))
            }
        }
    }

    /// Stops the replica: it answers no more messages and appends nothing more.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "a replica's Raft task ended badly");
        }
    }
}
