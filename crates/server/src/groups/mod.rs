//! Consumer groups at run time: the broker's [`Coordinator`] state machine, driven by tokio.
//!
//! - One [`Coordinator`] for the whole server, behind one mutex ([`Groups::state`]). Every
//!   decision (a join, a commit's check, a revocation, a removal) is made under it, and a
//!   commit's record is queued to the offsets log under it too, so the log stores commits
//!   in the order they were decided: a member that was presumed dead can never overwrite
//!   its successor's progress, also not after a restart.
//! - One task per member ([`member`]) owns its stream: it reads the member's messages, and
//!   tells it what the coordinator's view of it says whenever that changes (it is woken
//!   through its [`MemberLink`], which carries no data: it re-reads the view).
//! - One feed task per owned partition ([`feed`]) reads the log and sends records into the
//!   member's bounded queue. A feed is stopped (and awaited) before the member is told that
//!   its partition is revoked, so no record of a revoked partition follows the revocation.
//! - One driver task sleeps until the coordinator's next deadline (a session or revocation
//!   timeout) and ticks it.
//! - Kafka clients' groups (the classic protocol, `crate::kafka::groups`) live in the same
//!   [`Coordinator`], under the same mutex: a name is live under one protocol at a time, and
//!   Kafka commits go to the same committed offsets and log. A JoinGroup or SyncGroup that
//!   must wait leaves a [`ClassicWaiter`] under its ticket; whichever call completes it (a
//!   join, a sync, a leave, the driver's tick) sends the answer through it.
//! - A Kafka group that settles on a generation is stored beside the commits (see
//!   `spool_broker::group::classic`), and the JoinGroup and SyncGroup answers of that call
//!   wait until that is durable: a member starts on an assignment only once a coordinator
//!   taking over would know it. A
//!   single node takes the stored groups back at start; a node of a cluster each time it
//!   takes over as coordinator, dropping them when it no longer is.
//! - A Spool group's members, their partitions and its generation are stored beside the
//!   commits whenever they change ([`Groups::notify`]), without holding anyone up: a record
//!   still in flight when a coordinator is lost only means the members resume from the one
//!   before it. The coordinator after a restart or a failover takes them back, and each member
//!   keeps its partitions for its session timeout, while its client joins again naming its id
//!   (`JoinGroup.member_id`): then the new stream takes the member's place, and the group does
//!   not rebalance. A stream ended by a shutdown does not leave its group, so its member is
//!   still stored when the server (or another node) comes back. A node of a cluster that stops
//!   coordinating drops its live groups, and their streams end UNAVAILABLE.
//! - Committed offsets are durable: [`InternalLog`] `internal/group-offsets/{generation}`,
//!   one record per commit, reset or deletion, folded at start-up, and compacted to one record per group when it
//!   grows past `INTERNAL_LOG_COMPACT_BYTES` (see `internal_log`).
//! - On a node of a cluster the same records go to the cluster's offsets group instead
//!   (`__group_offsets`, a Raft group of every node under `data/cluster/group-offsets/`): one
//!   task proposes what is queued, many records to a batch, and a commit is answered once a
//!   majority of the nodes has it fsynced. Every node applies the other nodes' records (and
//!   its own from before a restart) to its committed offsets, so a group's offsets survive
//!   the node that took them. The offsets group's state machine folds the same records
//!   ([`OffsetsFold`]); once its log passes `INTERNAL_COMPACT_BYTES`, a snapshot of every
//!   group's committed offsets is saved and the log purged behind it (a replica too far
//!   behind takes that snapshot from the leader).
//! - A deleted topic's committed offsets are forgotten in every group (one record per group
//!   naming its partitions, as OffsetDelete writes), so a topic made again under the name
//!   starts each group with none instead of at an old position inside its new records. A
//!   single node forgets them before the deletion is answered, and at start those of any
//!   topic it does not have (a deletion interrupted before the records were durable). On a
//!   cluster the coordinator forgets them as it applies the deletion, and when it takes
//!   over, those of topics the cluster's metadata no longer holds; it loads the groups only
//!   once it has applied the metadata as the cluster has it then, so a topic of the same
//!   name made after the deletion is never mistaken for the deleted one. A deletion applied
//!   while no node coordinates (between an old coordinator's loss and the new one's load)
//!   is caught by that sweep unless the name is made again before it runs: then the old
//!   offsets stay, as they did before.
//!
//! Time is the wall clock's reading when the groups opened, advanced by tokio's monotonic
//! clock since: it never goes backwards, and tests that pause tokio's clock control it.

mod api;
mod feed;
mod fold;
mod member;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::BytesMut;
use spool_storage::Offset;
use spool_storage::batch::{BatchBuilder, Header, ProducerStamp};
use tokio::sync::mpsc;

use crate::cluster::{Cluster, CommittedRecord, ORIGIN_HEADER};
use crate::limits::{
    GROUP_READ_BYTES, REPLICATED_OFFSETS_BATCH_RECORDS_MAX, REPLICATED_OFFSETS_QUEUE_MAX,
};

use spool_broker::TopicName;
use spool_broker::group::classic::{ClassicError, Joined, Replies, Ticket};
use spool_broker::group::{
    Changes, CommitRecord, CommittedOffsets, Coordinator, MemberId, OffsetsRecord, Removal,
};
use spool_storage::TimestampMs;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

pub(crate) use api::GroupApi;
pub(crate) use fold::OffsetsFold;

use crate::error::ServiceError;
use crate::internal_log::{InternalLog, OpenInternalError};
use crate::topic_table::{Pending, TopicTable};

/// How a member's task learns that its view changed, and why it was removed.
#[derive(Debug, Default)]
pub(crate) struct MemberLink {
    wake: Notify,
    removal: Mutex<Option<Removal>>,
    /// Set when a new stream resumed the member: this one ends.
    replaced: std::sync::atomic::AtomicBool,
}

/// Where the answer to a waiting Kafka JoinGroup or SyncGroup goes.
#[derive(Debug)]
pub(crate) enum ClassicWaiter {
    Join(oneshot::Sender<Result<Joined, ClassicError>>),
    Sync(oneshot::Sender<Result<Vec<u8>, ClassicError>>),
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) coordinator: Coordinator,
    links: HashMap<MemberId, Arc<MemberLink>>,
    /// One per waiting JoinGroup or SyncGroup: each is a Kafka request being served, so
    /// there are at most `KAFKA_CONNECTIONS_MAX * KAFKA_REQUESTS_IN_FLIGHT_MAX`.
    pub(crate) classic_waiters: HashMap<Ticket, ClassicWaiter>,
    /// On a node of a cluster, the term of the offsets group whose stored groups (Kafka's and
    /// Spool's members) the coordinator took back; `None` while this node is not the loaded
    /// coordinator.
    coordinated_term: Option<u64>,
}

impl State {
    /// Sends each answer to its waiter (one whose request went away is skipped).
    pub(crate) fn deliver(&mut self, replies: Replies) {
        for (group, member) in &replies.expired {
            tracing::info!(%group, member, "a Kafka group member was removed: its session timed out");
        }
        for (ticket, answer) in replies.joins {
            if let Some(ClassicWaiter::Join(waiter)) = self.classic_waiters.remove(&ticket) {
                let _ = waiter.send(answer);
            }
        }
        for (ticket, answer) in replies.syncs {
            if let Some(ClassicWaiter::Sync(waiter)) = self.classic_waiters.remove(&ticket) {
                let _ = waiter.send(answer);
            }
        }
    }
}

/// A JoinGroup's or SyncGroup's answer held until a group's state is stored.
enum Held {
    Join(Result<Joined, ClassicError>),
    Sync(Result<Vec<u8>, ClassicError>),
}

/// Where committed offsets are made durable.
#[derive(Debug)]
enum OffsetsLog {
    /// A single node's internal log.
    Local(InternalLog),
    /// A cluster's offsets group, through the task that proposes what is queued.
    Replicated(mpsc::Sender<Queued>),
}

/// A record queued for the offsets group, and where its outcome goes.
type Queued = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// Every consumer group of the server.
#[derive(Debug)]
pub(crate) struct Groups {
    state: Mutex<State>,
    offsets: OffsetsLog,
    pub(crate) topics: Arc<TopicTable>,
    started: Instant,
    /// The wall clock when `started` was taken.
    started_at: TimestampMs,
    /// Woken when a deadline may have moved earlier (a join, a revocation).
    deadlines: Notify,
}

impl Groups {
    /// Folds the committed offsets and starts the driver.
    pub(crate) async fn open(
        data_dir: &Path,
        topics: Arc<TopicTable>,
    ) -> Result<Arc<Groups>, OpenInternalError> {
        let committed = Arc::new(Mutex::new(CommittedOffsets::default()));
        let folding = committed.clone();
        let cluster = topics.cluster().cloned();
        let (offsets, replicated_from) = match &cluster {
            None => {
                let log = InternalLog::open(data_dir, "group-offsets", move |value| {
                    let record = OffsetsRecord::decode(value).map_err(|e| e.to_string())?;
                    folding.lock().unwrap_or_else(PoisonError::into_inner).apply_record(&record);
                    Ok(())
                })
                .await?;
                (OffsetsLog::Local(log), None)
            }
            Some(cluster) => {
                // What this replica folded (its last snapshot, and what it applied since) is
                // taken now, before any member joins; what the group commits from here on
                // is applied as it comes.
                let (folded, next) = cluster.offsets_fold().state();
                *folding.lock().unwrap_or_else(PoisonError::into_inner) = folded;
                let (queue, queued) = mpsc::channel(REPLICATED_OFFSETS_QUEUE_MAX);
                tokio::spawn(propose_replicated(cluster.clone(), queued));
                (OffsetsLog::Replicated(queue), Some(next))
            }
        };
        let committed =
            std::mem::take(&mut *committed.lock().unwrap_or_else(PoisonError::into_inner));
        committed.snapshot().for_each(|record| record_lag_sources(&record));
        // Member ids carry the start time, so an id from an earlier run never names a new
        // member.
        let instance = TimestampMs::now().0.unsigned_abs();
        let mut coordinator = Coordinator::new(instance, committed);
        if cluster.is_none() {
            coordinator.restore_classic(TimestampMs::now());
        }
        let groups = Arc::new(Groups {
            state: Mutex::new(State {
                coordinator,
                links: HashMap::new(),
                classic_waiters: HashMap::new(),
                coordinated_term: None,
            }),
            offsets,
            topics,
            started: Instant::now(),
            started_at: TimestampMs::now(),
            deadlines: Notify::new(),
        });
        if groups.topics.cluster().is_none() {
            groups.take_back_members(&mut groups.lock());
        }
        if let OffsetsLog::Local(log) = &groups.offsets {
            let source = Arc::downgrade(&groups);
            log.compact_with(Box::new(move || {
                let groups = source.upgrade()?;
                let state = groups.lock();
                let records = state.coordinator.committed_offsets().records();
                Some(
                    records.map(|r| (r.group().as_str().as_bytes().to_vec(), r.encode())).collect(),
                )
            }));
        }
        if let (Some(cluster), Some(next)) = (cluster, replicated_from) {
            tokio::spawn(follow_replicated(Arc::downgrade(&groups), cluster, next));
        }
        let source = Arc::downgrade(&groups);
        groups.topics.on_grow(Box::new(move |topic, partitions| {
            let Some(groups) = source.upgrade() else { return };
            let mut state = groups.lock();
            let changes = state.coordinator.topic_grew(topic, partitions, groups.now());
            groups.notify(&mut state, changes);
        }));
        let source = Arc::downgrade(&groups);
        groups.topics.on_delete(Box::new(move |topic| {
            let groups = source.upgrade()?;
            // On a cluster only the coordinator, loaded with the metadata caught up, forgets
            // them; the other nodes apply its records.
            let cluster = groups.topics.cluster();
            if cluster.is_some_and(|cluster| !cluster.groups_loaded()) {
                return None;
            }
            groups.forget_topics(|gone| gone == topic)
        }));
        match groups.topics.cluster() {
            Some(cluster) => {
                let source = Arc::downgrade(&groups);
                let held = Arc::downgrade(cluster);
                cluster.on_groups_loaded(Box::new(move || {
                    let (groups, cluster) = (source.upgrade()?, held.upgrade()?);
                    let metadata = cluster.metadata_fold().state();
                    groups.forget_topics(|topic| !metadata.topics.contains_key(topic.as_str()))
                }));
            }
            None => {
                let here: HashSet<TopicName> =
                    groups.topics.topics().iter().map(|topic| topic.name.clone()).collect();
                if let Some(forgetting) = groups.forget_topics(|topic| !here.contains(topic)) {
                    forgetting.await;
                }
            }
        }
        tokio::spawn(drive(groups.clone()));
        Ok(groups)
    }

    /// The coordinator's clock (see the module docs).
    pub(crate) fn now(&self) -> TimestampMs {
        self.started_at.plus_ms(self.started.elapsed().as_millis() as u64)
    }

    /// When the coordinator's clock reads `time`, on tokio's clock.
    fn instant_at(&self, time: TimestampMs) -> Instant {
        let since_start = u64::try_from(time.0.saturating_sub(self.started_at.0)).unwrap_or(0);
        self.started + std::time::Duration::from_millis(since_start)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state locked for a join or a Kafka group call: on a node of a cluster, with the
    /// stored groups (Kafka's, and Spool's members) taken back once this node took over as
    /// coordinator, and dropped once it no longer is (see the module docs).
    pub(crate) fn lock_coordinated(&self) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        if let Some(cluster) = self.topics.cluster() {
            let term = cluster.groups_loaded_term();
            if state.coordinated_term != term {
                let replies = match term {
                    Some(term) => {
                        let now = self.now();
                        let replies = state.coordinator.restore_classic(now);
                        // Groups of an earlier term of this node's may be older than what
                        // another coordinator stored since: their members join again.
                        self.drop_members(&mut state);
                        self.take_back_members(&mut state);
                        let classic = state.coordinator.classic().live_count();
                        let spool = state.coordinator.spool_live_count();
                        tracing::info!(term, classic, spool, "took back the stored groups");
                        replies
                    }
                    None => {
                        self.drop_members(&mut state);
                        state.coordinator.drop_classic()
                    }
                };
                state.coordinated_term = term;
                state.deliver(replies);
            }
        }
        state
    }

    /// Drops every Spool group ([`Coordinator::drop_members`]): their streams end UNAVAILABLE
    /// and none leaves its group as it ends, so the members stay stored (see the module docs).
    fn drop_members(&self, state: &mut State) {
        let changes = state.coordinator.drop_members();
        let dropped: Vec<MemberId> = changes.removed.iter().map(|(m, _)| m.clone()).collect();
        self.notify(state, changes);
        for member in &dropped {
            state.links.remove(member);
        }
    }

    /// Takes the stored Spool groups' members back (see the module docs), each topic with the
    /// partitions it has now: it may have grown while no coordinator held the group.
    fn take_back_members(&self, state: &mut State) {
        let now = self.now();
        state.coordinator.restore_members(now);
        let mut changes = Changes::default();
        for topic in self.topics.topics() {
            let partitions = topic.partitions.len() as u32;
            changes.wake.extend(state.coordinator.topic_grew(&topic.name, partitions, now).wake);
        }
        self.notify(state, changes);
    }

    /// Whether this node stores what its Kafka groups settle: a single node, or the loaded
    /// coordinator of a cluster.
    fn stores_groups(&self) -> bool {
        self.topics.cluster().is_none_or(|cluster| cluster.groups_loaded())
    }

    /// After a Kafka group call (or a tick) that gave `replies`: queues the state of every
    /// Kafka group that changed to the offsets log (under the lock, so in the order decided),
    /// and sends the replies; while such a state is being stored, the JoinGroup and
    /// SyncGroup answers once it is durable. Should the store fail, they are answered
    /// NOT_COORDINATOR (the members find the coordinator again) and the group rebalances. So no member works from an
    /// assignment, or a static member's new id, that a coordinator taking over would not
    /// know (it would fence the static member).
    pub(crate) fn settle(self: &Arc<Self>, state: &mut State, mut replies: Replies) {
        let records = state.coordinator.classic_records();
        if records.is_empty() || !self.stores_groups() {
            state.deliver(replies);
            return;
        }
        let groups: Vec<_> = records.iter().map(|(record, _)| record.group.clone()).collect();
        let stored: Vec<_> = records
            .into_iter()
            .map(|(record, encoded)| {
                self.append(record.group.as_str().as_bytes().to_vec(), encoded)
            })
            .collect();
        let joins = std::mem::take(&mut replies.joins);
        let syncs = std::mem::take(&mut replies.syncs);
        state.deliver(replies);
        let held: Vec<_> = joins
            .into_iter()
            .map(|(ticket, answer)| (ticket, Held::Join(answer)))
            .chain(syncs.into_iter().map(|(ticket, answer)| (ticket, Held::Sync(answer))))
            .filter_map(|(ticket, answer)| Some((state.classic_waiters.remove(&ticket)?, answer)))
            .collect();
        let source = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failed = None;
            for durable in stored {
                if let Err(error) = durable.await {
                    failed = Some(error);
                }
            }
            if let Some(error) = &failed {
                tracing::warn!(%error, groups = ?groups, "storing a Kafka group's new generation failed: it rebalances");
                if let Some(source) = source.upgrade() {
                    let mut state = source.lock();
                    let now = source.now();
                    for group in &groups {
                        let replies = state.coordinator.classic_mut().unsettle(group, now);
                        state.deliver(replies);
                    }
                }
            }
            let refused = failed.is_some();
            for (waiter, answer) in held {
                match (waiter, answer) {
                    (ClassicWaiter::Join(waiter), Held::Join(answer)) => {
                        let answer =
                            if refused { Err(ClassicError::CoordinatorMoved) } else { answer };
                        let _ = waiter.send(answer);
                    }
                    (ClassicWaiter::Sync(waiter), Held::Sync(answer)) => {
                        let answer =
                            if refused { Err(ClassicError::CoordinatorMoved) } else { answer };
                        let _ = waiter.send(answer);
                    }
                    _ => {}
                }
            }
        });
    }

    /// Tells the members a change concerns, and queues the stored members of every Spool
    /// group that changed to the offsets log (not awaited: see the module docs). Called with
    /// the state locked, right after the change.
    fn notify(&self, state: &mut State, changes: Changes) {
        let records = state.coordinator.member_records();
        if self.stores_groups() {
            for record in records {
                // Queued as it is called; nothing waits for it to be durable.
                drop(self.persist_record(&record));
            }
        }
        for (member, removal) in &changes.removed {
            if let Some(link) = state.links.get(member) {
                *link.removal.lock().unwrap_or_else(PoisonError::into_inner) = Some(*removal);
            }
        }
        for member in &changes.wake {
            if let Some(link) = state.links.get(member) {
                link.wake.notify_one();
            }
        }
        self.deadlines.notify_one();
    }

    /// Tells the driver that a deadline may have moved earlier (after a Kafka group call).
    pub(crate) fn deadlines_changed(&self) {
        self.deadlines.notify_one();
    }

    /// Queues a commit record to the offsets log; the future resolves once it is durable.
    /// Call it with the state locked, right after the coordinator accepted the record.
    pub(crate) fn persist(
        &self,
        record: &CommitRecord,
    ) -> impl Future<Output = Result<(), ServiceError>> + use<> {
        record_lag_sources(record);
        self.append(record.group.as_str().as_bytes().to_vec(), record.encode())
    }

    fn append(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>> {
        match &self.offsets {
            OffsetsLog::Local(log) => Box::pin(log.append(key, value)),
            OffsetsLog::Replicated(queue) => {
                let (reply, outcome) = oneshot::channel();
                let queued = queue.try_send((value, reply));
                Box::pin(async move {
                    match queued {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            return Err(ServiceError::Cluster(format!(
                                "{REPLICATED_OFFSETS_QUEUE_MAX} commits are queued for the cluster already; try again"
                            )));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Err(ServiceError::ShuttingDown);
                        }
                    }
                    match outcome.await {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(reason)) => Err(ServiceError::Cluster(reason)),
                        Err(_) => Err(ServiceError::ShuttingDown),
                    }
                })
            }
        }
    }

    /// Forgets every group's committed offsets of the topics `gone` picks (deleted ones),
    /// queueing the records; the wait for them to be durable, `None` when there was nothing
    /// to forget.
    fn forget_topics(&self, gone: impl Fn(&TopicName) -> bool) -> Option<Pending> {
        let pending: Vec<_> = {
            let mut state = self.lock();
            let records = state.coordinator.forget_topics(gone);
            records.iter().map(|r| (r.group().clone(), self.persist_record(r))).collect()
        };
        if pending.is_empty() {
            return None;
        }
        Some(Box::pin(async move {
            for (group, durable) in pending {
                match durable.await {
                    Ok(()) => {
                        tracing::info!(%group, "the group's committed offsets of a deleted topic forgotten");
                    }
                    Err(error) => {
                        tracing::warn!(%error, %group, "forgetting the group's committed offsets of a deleted topic could not be stored");
                    }
                }
            }
        }))
    }

    /// Queues a group's deletion record, a record forgetting some of its offsets, or its
    /// members, to the offsets log; the future resolves once it is durable. Call it with the
    /// state locked, right after the coordinator made the change, so that it is stored after
    /// every commit decided before it.
    pub(crate) fn persist_record(
        &self,
        record: &OffsetsRecord,
    ) -> impl Future<Output = Result<(), ServiceError>> + use<> {
        self.append(record.group().as_str().as_bytes().to_vec(), record.encode())
    }

    /// Stops taking commits, writes what is queued, and closes the offsets log (a cluster's
    /// offsets group is stopped with the cluster).
    pub(crate) async fn close(&self) -> Option<String> {
        match &self.offsets {
            OffsetsLog::Local(log) => log.close().await,
            OffsetsLog::Replicated(_) => None,
        }
    }
}

/// Tells the lag gauges the offsets a commit or reset sets (see `metrics::record_group_commit`).
fn record_lag_sources(record: &CommitRecord) {
    for (partition, offset) in &record.offsets {
        let topic = partition.topic.as_str();
        crate::metrics::record_group_commit(
            record.group.as_str(),
            topic,
            partition.partition,
            offset.0,
        );
    }
}

/// Applies the offsets group's committed `batches` (read from `from` on) to `committed`, but
/// for the records run `run` proposed (this run applied its own as it decided them); returns
/// the offset after the last.
fn apply_replicated(
    committed: &mut CommittedOffsets,
    run: &str,
    batches: Vec<(Offset, Vec<CommittedRecord>)>,
    from: Offset,
) -> Offset {
    let mut next = from;
    for (after, records) in batches {
        for record in records {
            if record.origin.as_deref() == Some(run.as_bytes()) {
                continue;
            }
            match OffsetsRecord::decode(&record.value) {
                Ok(decoded) => {
                    if let OffsetsRecord::Commit(commit) = &decoded {
                        record_lag_sources(commit);
                    }
                    committed.apply_record(&decoded);
                }
                Err(error) => {
                    tracing::error!(%error, "a replicated consumer group offsets record does not decode; skipped");
                }
            }
        }
        next = after;
    }
    next
}

/// Applies what the offsets group commits, as it commits it, until the cluster stops. When
/// this replica installed a leader's snapshot, or its log was compacted past what was
/// applied here, the committed offsets are taken whole from the fold and followed from there.
async fn follow_replicated(groups: Weak<Groups>, cluster: Arc<Cluster>, mut next: Offset) {
    let mut changes = cluster.offsets_changes();
    let mut installs = cluster.offsets_fold().installs();
    let stop = cluster.stopping();
    cluster.offsets_followed(next);
    loop {
        let mut installed = false;
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
            changed = installs.changed() => {
                if changed.is_err() { return }
                installed = true;
            }
        }
        let Some(groups) = groups.upgrade() else { return };
        if installed || next < cluster.offsets_log_start() {
            let (folded, at) = cluster.offsets_fold().state();
            folded.snapshot().for_each(|record| record_lag_sources(&record));
            *groups.lock().coordinator.committed_offsets_mut() = folded;
            next = at;
        }
        // Read before the coordinator is locked: only applying holds it.
        let batches = cluster.committed_offsets_records(next);
        let mut state = groups.lock();
        let committed = state.coordinator.committed_offsets_mut();
        next = apply_replicated(committed, cluster.run(), batches, next);
        drop(state);
        cluster.offsets_followed(next);
        // A coordinator that lost its term learns it here, from the new leader's entries: it
        // drops its groups, ending their members' streams.
        drop(groups.lock_coordinated());
        // A new leader commits an entry of its term first: it loads the groups at once
        // rather than at the first group call.
        if !cluster.groups_loaded() && cluster.group_coordinator() == Some(cluster.node_id) {
            cluster.load_groups_in_background();
        }
    }
}

/// Proposes what is queued for the offsets group, up to
/// [`REPLICATED_OFFSETS_BATCH_RECORDS_MAX`] records to a batch, in the order queued.
async fn propose_replicated(cluster: Arc<Cluster>, mut queue: mpsc::Receiver<Queued>) {
    while let Some(first) = queue.recv().await {
        let mut queued = vec![first];
        let mut bytes = queued[0].0.len();
        while queued.len() < REPLICATED_OFFSETS_BATCH_RECORDS_MAX
            && bytes < GROUP_READ_BYTES as usize
        {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.0.len();
                    queued.push(next);
                }
                Err(_) => break,
            }
        }
        let origin = [Header::new(ORIGIN_HEADER, Some(cluster.run().as_bytes()))];
        let mut builder = BatchBuilder::new(BytesMut::new());
        let now = TimestampMs::now();
        for (value, _) in &queued {
            builder.push(now, None, Some(value), &origin);
        }
        let batch = builder.finish(ProducerStamp::NONE).freeze();
        let proposed = cluster.propose_offsets(batch).await.map_err(|error| error.to_string());
        for (_, reply) in queued {
            let _ = reply.send(proposed.clone());
        }
    }
}

/// Ticks the coordinator at each deadline, until shutdown.
async fn drive(groups: Arc<Groups>) {
    let stop = groups.topics.streams_stop.clone();
    loop {
        let next = {
            let state = groups.lock();
            let classic = state.coordinator.classic().next_deadline();
            state.coordinator.next_deadline().into_iter().chain(classic).min()
        };
        let sleep = async {
            match next {
                Some(deadline) => tokio::time::sleep_until(groups.instant_at(deadline)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {
                let mut state = groups.lock_coordinated();
                let changes = state.coordinator.tick(groups.now());
                for (member, removal) in &changes.removed {
                    tracing::info!(%member, %removal, "a group member was removed");
                }
                groups.notify(&mut state, changes);
                let replies = state.coordinator.classic_mut().tick(groups.now());
                groups.settle(&mut state, replies);
                drop(state);
            }
            () = groups.deadlines.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}
