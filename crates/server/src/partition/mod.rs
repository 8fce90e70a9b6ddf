//! One partition at run time: its log, the handle producers submit appends to, and the
//! notification that wakes its readers. The writer task that appends to the log, and the
//! pipelined group commit, are in [`writer`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::limits::{
    DAMAGED_BATCHES_REMEMBERED, FOLLOWER_READ_PATIENCE, LIGHT_APPEND_BYTES_MAX,
    REMOTE_LEADER_LOOKUP_TIMEOUT, RETENTION_CHECK_INTERVAL, SYNC_ROUNDS_MAX,
    WRITER_GROUP_BATCHES_MAX, WRITER_QUEUE_DEPTH,
};
use bytes::Bytes;
use spool_broker::producer::ProducerTable;
use spool_broker::{Placement, TopicName};
use spool_proto::Acks;
use spool_replication::limits::REMOTE_LEADER_RETRY;
use spool_storage::batch::CheckedBatch;
use spool_storage::{
    Appended, FsyncPolicy, Log, LogConfig, Offset, ReadBatches, ReadError, SharedSync, SyncDone,
    SyncError, SyncTicket, TimestampMs,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::idempotence::{self, Refused};
use crate::metrics::{Metrics, PartitionMetrics};

mod remote;
mod replicated;
pub(crate) mod scrub;
mod writer;

use writer::*;

pub(crate) type AppendReply = oneshot::Sender<Result<Appended, ServiceError>>;

#[derive(Debug)]
struct AppendRequest {
    /// As the producer sent it, checked where it arrived: the log writes its stamped fields
    /// in a copy of its head.
    batch: CheckedBatch<Bytes>,
    acks: Acks,
    reply: AppendReply,
}

/// A partition's state shared by its writer, its readers and the services.
#[derive(Debug)]
pub(crate) struct Partition {
    topic: TopicName,
    id: u32,
    /// `None` once the writer has stopped (topic deleted or server shutting down). Shared
    /// with the partition's replica when the partition is replicated.
    log: Arc<RwLock<Option<Log>>>,
    queue: mpsc::Sender<AppendRequest>,
    /// New log settings for the writer to apply (see [`Partition::reconfigure`]).
    reconfigure: mpsc::Sender<Reconfigure>,
    pub(crate) metrics: PartitionMetrics,
    server: Services,
    /// Damaged batches already reported (logged and counted), by segment file and position,
    /// so that readers who meet one again and again do not report it again. The oldest is
    /// forgotten first past [`DAMAGED_BATCHES_REMEMBERED`].
    damage_reported: Mutex<VecDeque<(PathBuf, u64)>>,
    /// Bumped after every change readers may care about; it carries no data.
    changed: watch::Sender<()>,
    deleted: AtomicBool,
    /// Idempotent producers' sequences (see `crate::idempotence`); only the writer uses it.
    producers: Mutex<ProducerTable>,
    /// This node's replica of the partition, on a node of a cluster, while it runs.
    replica: RwLock<Option<Arc<spool_replication::Replica>>>,
    /// The nodes that hold the partition, its preferred leader first, on a node of a
    /// cluster.
    replicas: Vec<u64>,
    /// The partition's group, on a node of a cluster that holds no replica of it: the node
    /// passes batches to its leader and asks a replica for reads (see `remote`).
    remote: Option<Arc<spool_replication::Remote>>,
    /// Where the log starts and ends as the replicas said last, on a node that holds none.
    remote_state: RwLock<Option<PartitionState>>,
    /// Whether the task that watches the replicas for new records runs (see `remote`).
    polling: AtomicBool,
    /// Damage a read found in a replicated partition's log, for its writer to repair.
    repairs: mpsc::Sender<Damage>,
    /// Set when repairing this replica failed: reads report damage as on a single node.
    repair_failed: AtomicBool,
}

/// Damage a read found in a segment of the log.
#[derive(Debug)]
struct Damage {
    /// The segment's log file.
    segment: PathBuf,
    description: String,
}

/// What every partition of a server shares.
#[derive(Debug, Clone)]
pub(crate) struct Services {
    /// The server's gauges and counters.
    pub(crate) metrics: Arc<Metrics>,
    /// Syncs of many partitions at once share one `syncfs` (see `spool_storage::SharedSync`).
    pub(crate) sync: Arc<SharedSync>,
    /// This node's part in a cluster: in a cluster every partition is replicated.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// What a reader sees of a partition without reading records.
#[derive(Debug, Clone)]
pub(crate) struct PartitionState {
    pub(crate) log_start_offset: Offset,
    pub(crate) log_end_offset: Offset,
    pub(crate) size_bytes: u64,
    pub(crate) segments: usize,
    pub(crate) fence: Option<String>,
}

/// A request to the writer to reopen its log with new settings.
#[derive(Debug)]
struct Reconfigure {
    config: LogConfig,
    reply: oneshot::Sender<Result<(), ServiceError>>,
}

impl Partition {
    /// Starts the writer of `log`; it stops, drains its queue, syncs and hands the log back
    /// when `stop` is cancelled. On a node of a cluster the partition is held by the nodes
    /// `placement` names (every node without one); a node that is not one of them keeps
    /// `log` empty and passes batches on.
    pub(crate) fn start(
        topic: TopicName,
        id: u32,
        log: Log,
        placement: Option<&Placement>,
        stop: CancellationToken,
        server: Services,
    ) -> (Arc<Partition>, JoinHandle<Option<Log>>) {
        let (queue, receiver) = mpsc::channel(WRITER_QUEUE_DEPTH);
        let group = format!("{topic}/{id}");
        let replicas = match (&server.cluster, placement) {
            (None, _) => Vec::new(),
            (Some(_), Some(placement)) => placement.replicas(id),
            (Some(cluster), None) => cluster.every_node_for(&group),
        };
        let remote = match &server.cluster {
            Some(cluster) if !replicas.contains(&cluster.node_id) => {
                Some(Arc::new(cluster.remote(&group, &replicas)))
            }
            _ => None,
        };
        let (reconfigure, reconfigure_receiver) = mpsc::channel(1);
        let (repairs, repairs_receiver) = mpsc::channel(1);
        let partition = Arc::new(Partition {
            metrics: PartitionMetrics::new(&topic, id),
            server,
            damage_reported: Mutex::new(VecDeque::new()),
            topic,
            id,
            log: Arc::new(RwLock::new(Some(log))),
            queue,
            reconfigure,
            changed: watch::Sender::new(()),
            deleted: AtomicBool::new(false),
            producers: Mutex::new(ProducerTable::new()),
            replica: RwLock::new(None),
            replicas,
            remote,
            remote_state: RwLock::new(None),
            polling: AtomicBool::new(false),
            repairs,
            repair_failed: AtomicBool::new(false),
        });
        if let Some(remote) = partition.remote.clone() {
            let passing =
                remote::run(partition.clone(), receiver, reconfigure_receiver, remote, stop);
            return (partition, tokio::spawn(passing));
        }
        if let Some(cluster) = partition.server.cluster.clone() {
            let replicated = replicated::run(
                partition.clone(),
                receiver,
                reconfigure_receiver,
                repairs_receiver,
                cluster,
                stop,
            );
            return (partition, tokio::spawn(replicated));
        }
        let (synced, synced_answers) = mpsc::unbounded_channel();
        let writer = Writer {
            synced,
            synced_answers,
            partition: partition.clone(),
            queue: receiver,
            reconfigure: reconfigure_receiver,
            waiting_for_sync: Vec::new(),
            syncing: None,
            background_sync: None,
        };
        (partition.clone(), tokio::spawn(writer.run(stop)))
    }

    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn topic(&self) -> &TopicName {
        &self.topic
    }

    /// The partition's leader as this node knows it, on a node of a cluster.
    pub(crate) fn leader(&self) -> Option<u64> {
        match &self.remote {
            Some(remote) => remote.leader(),
            None => self.replica().and_then(|replica| replica.leader()),
        }
        .map(|(id, _)| id)
    }

    /// Waits until a leader of the partition is known here, up to `deadline`: its replica's
    /// election, once the replica has started; for a partition this node holds no replica
    /// of, what the replicas answer. Whether one is known.
    pub(crate) async fn wait_for_leader(&self, deadline: Instant) -> bool {
        let mut changes = self.changed.subscribe();
        loop {
            if self.leader().is_some() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Some(remote) = &self.remote {
                if remote.find_leader(left.min(REMOTE_LEADER_LOOKUP_TIMEOUT)).await.is_none() {
                    // Its replicas have not elected one yet.
                    tokio::time::sleep(left.min(REMOTE_LEADER_RETRY)).await;
                }
                continue;
            }
            match self.replica() {
                Some(replica) => {
                    replica.wait_for_leader(left).await;
                }
                // Its replica is starting.
                None => match tokio::time::timeout(left, changes.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => return false,
                },
            }
        }
    }

    /// Where the leader's node serves clients, when a leader is known and has registered.
    pub(crate) fn leader_address(&self) -> Option<String> {
        let cluster = self.server.cluster.as_ref()?;
        cluster.client_address(self.leader()?)
    }

    /// Counts `batches` a client sent here that this node passes on to the partition's
    /// leader (`spool_passed_on_batches_total`).
    pub(crate) fn passing_on(&self, batches: usize) {
        self.metrics.passed_on(batches as u64);
        self.server.metrics.passed_on(batches as u64);
    }

    /// The group of a partition this node holds no replica of (see [`Partition::start`]).
    /// Hands the partition back to its preferred leader now, asking its leader from this node
    /// (`Replica::hand_back_now`), within `timeout`: which node leads it now, or `Ok(None)`
    /// when the preferred leader leads it already (as on a single node, its one leader).
    pub(crate) async fn hand_back(
        &self,
        timeout: Duration,
    ) -> Result<Option<u64>, spool_replication::HandOverError> {
        // Led by its preferred leader as this node knows: nothing to ask of the leader.
        if self.leader().is_some() && self.leader() == self.replicas().first().copied() {
            return Ok(None);
        }
        if let Some(replica) = self.replica() {
            return replica.hand_back_now(timeout).await;
        }
        match self.remote() {
            Some(remote) => remote.hand_back(timeout).await,
            None => Ok(None),
        }
    }

    pub(crate) fn remote(&self) -> Option<&Arc<spool_replication::Remote>> {
        self.remote.as_ref()
    }

    /// This node's replica of the partition, on a node of a cluster while it runs.
    pub(crate) fn replica(&self) -> Option<Arc<spool_replication::Replica>> {
        self.replica.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_replica(&self, replica: Option<Arc<spool_replication::Replica>>) {
        *self.replica.write().unwrap_or_else(PoisonError::into_inner) = replica;
    }

    /// The nodes that hold the partition, its preferred leader first, on a node of a
    /// cluster.
    pub(crate) fn replicas(&self) -> &[u64] {
        &self.replicas
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }

    /// The error for what only a replica of the partition can do.
    fn not_held(&self) -> ServiceError {
        let leader = self.remote.as_ref().and_then(|remote| remote.leader()).map(|(id, _)| {
            (id, self.server.cluster.as_ref().and_then(|cluster| cluster.client_address(id)))
        });
        ServiceError::NotHeld {
            topic: self.topic.clone(),
            partition: self.id,
            replicas: self.replicas.clone(),
            leader,
        }
    }

    fn closed_error(&self) -> ServiceError {
        if self.deleted.load(Ordering::SeqCst) {
            ServiceError::TopicDeleted { topic: self.topic.clone() }
        } else {
            ServiceError::ShuttingDown
        }
    }

    /// Runs `f` over the partition's log: refused on a node that holds no replica of it
    /// (its log there is empty).
    fn with_log<T>(
        &self,
        f: impl FnOnce(&Log) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        if self.remote.is_some() {
            return Err(self.not_held());
        }
        let guard = self.log.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(log) => f(log),
            None => Err(self.closed_error()),
        }
    }

    /// Where the log starts and ends, its size and fence. On a node that holds no replica of
    /// the partition, as the replicas said last ([`Partition::refresh`] asks them again).
    pub(crate) fn state(&self) -> Result<PartitionState, ServiceError> {
        if self.remote.is_some() {
            return self.remote_state().ok_or_else(|| self.not_held());
        }
        self.with_log(|log| {
            Ok(PartitionState {
                log_start_offset: log.log_start_offset(),
                log_end_offset: log.log_end_offset(),
                size_bytes: log.size_bytes(),
                segments: log.segment_count(),
                fence: log.fence().map(ToString::to_string),
            })
        })
    }

    /// A receiver that is marked changed whenever the partition may have new visible data, is
    /// trimmed by retention, or closes.
    pub(crate) fn watch(self: &Arc<Self>) -> watch::Receiver<()> {
        let changes = self.changed.subscribe();
        self.poll_remote();
        changes
    }

    /// Queues one batch for the writer, waiting while the queue is full (backpressure).
    pub(crate) async fn submit(
        &self,
        batch: CheckedBatch<Bytes>,
        acks: Acks,
    ) -> Result<oneshot::Receiver<Result<Appended, ServiceError>>, ServiceError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(AppendRequest { batch, acks, reply })
            .await
            .map_err(|_| self.closed_error())?;
        Ok(answer)
    }

    /// Has the writer reopen the log with `config` (see `crate::alter`), between two group
    /// commits; returns once the new settings are in force.
    pub(crate) async fn reconfigure(&self, config: LogConfig) -> Result<(), ServiceError> {
        let (reply, answer) = oneshot::channel();
        self.reconfigure
            .send(Reconfigure { config, reply })
            .await
            .map_err(|_| self.closed_error())?;
        answer.await.map_err(|_| self.closed_error())?
    }

    /// Reads whole batches from `offset` (see `Log::read`) on a blocking thread. Every read
    /// of every service goes through here, so a damaged batch is reported here.
    ///
    /// On a follower, an offset past what this replica has applied may still be committed:
    /// the follower asks the leader for its commit point, and if the offset is within it,
    /// waits up to [`FOLLOWER_READ_PATIENCE`] for this replica to apply that far (answered
    /// [`ServiceError::Behind`], naming the leader, if it does not). Past the leader's
    /// commit point too, the answer is OUT_OF_RANGE, as on a single node.
    ///
    /// A read at the end of a replica under repair (which lost records it had) waits the
    /// same way for what the leader has committed.
    ///
    /// On a node of a cluster, a damaged batch is not the reader's problem: the other
    /// replicas hold it. The read asks the partition's writer to repair this replica (it
    /// restarts it under repair, its log cut back before the damaged segment) and reads
    /// again once it has caught up, as above.
    pub(crate) async fn read(
        self: &Arc<Self>,
        offset: Offset,
        bytes_max: u32,
    ) -> Result<ReadBatches, ServiceError> {
        if self.remote.is_some() {
            return self.read_remote(offset, bytes_max).await;
        }
        let mut changes = self.watch();
        // When waiting gives up: FOLLOWER_READ_PATIENCE after the first wait.
        let mut deadline = None;
        // What this replica must apply before the read is answered, once the leader said
        // how far the group has committed.
        let mut target: Option<Offset> = None;
        loop {
            let read = self.read_here(offset, bytes_max).await;
            let replica = self.replica();
            if !self.repair(&read) {
                // A replica under repair has lost records it had, and between two runs of
                // the replica its log may be cut: its end is no answer yet.
                let repairing = match &replica {
                    Some(replica) => replica.repairing(),
                    None => self.server.cluster.is_some(),
                };
                let applied = match &read {
                    Ok(batches)
                        if batches.bytes.is_empty()
                            && match target {
                                Some(target) => batches.log_end_offset < target,
                                None => repairing,
                            } =>
                    {
                        batches.log_end_offset
                    }
                    Err(ServiceError::Read {
                        source: ReadError::OffsetOutOfRange { log_end, .. },
                        ..
                    }) if offset > *log_end && self.server.cluster.is_some() => *log_end,
                    _ => return read,
                };
                // Between two runs of the replica (a repair), wait for the next.
                if let Some(replica) = &replica
                    && target.is_none()
                {
                    if replica.leading_term().is_some() {
                        return read;
                    }
                    match replica.read_index(FOLLOWER_READ_PATIENCE).await {
                        Ok(end) if offset > end => return read,
                        // The record at `offset` if the leader has committed it, else the end.
                        Ok(end) => target = Some(Offset(end.0.min(offset.0 + 1))),
                        Err(_) => return Err(self.behind(replica, applied, offset)),
                    }
                }
                let patience = tokio::time::Instant::now() + FOLLOWER_READ_PATIENCE;
                let waited =
                    tokio::time::timeout_at(*deadline.get_or_insert(patience), changes.changed());
                match waited.await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return read,
                    Err(_) => {
                        return match &replica {
                            Some(replica) => Err(self.behind(replica, applied, offset)),
                            None => read,
                        };
                    }
                }
            }
            // Damage this node's replica is being repaired for: read again once it has
            // started under repair (then the read waits for it to catch up, as above).
            let patience = tokio::time::Instant::now() + FOLLOWER_READ_PATIENCE;
            let waited =
                tokio::time::timeout_at(*deadline.get_or_insert(patience), changes.changed());
            match waited.await {
                Ok(Ok(())) => {}
                _ => return read,
            }
        }
    }

    /// The answer to a read this replica has not applied far enough for.
    fn behind(
        &self,
        replica: &spool_replication::Replica,
        applied: Offset,
        wanted: Offset,
    ) -> ServiceError {
        let leader = replica.leader().map(|(id, _)| {
            (id, self.server.cluster.as_ref().and_then(|cluster| cluster.client_address(id)))
        });
        ServiceError::Behind {
            topic: self.topic.clone(),
            partition: self.id,
            applied: applied.0,
            wanted: wanted.0,
            leader,
        }
    }

    /// [`Partition::read`] of what this node's log shows.
    async fn read_here(
        self: &Arc<Self>,
        offset: Offset,
        bytes_max: u32,
    ) -> Result<ReadBatches, ServiceError> {
        let partition = self.clone();
        let read = blocking(move || {
            partition.with_log(|log| {
                log.read(offset, bytes_max)
                    .map_err(|e| ServiceError::read(&partition.topic, partition.id, e))
            })
        })
        .await;
        read.inspect_err(|error| self.report_damage(error))
    }

    /// Whether `read` met damage that this node's replica is now being repaired for (see
    /// [`Partition::repair_damage`]).
    fn repair(&self, read: &Result<ReadBatches, ServiceError>) -> bool {
        let Err(ServiceError::Read { source, .. }) = read else { return false };
        self.repair_damage(source)
    }

    /// Whether `error` is damage that this node's replica is now being repaired for (asked
    /// of the partition's writer, which restarts the replica under repair): on a node of a
    /// cluster, where the other replicas hold what this one lost.
    pub(super) fn repair_damage(&self, error: &ReadError) -> bool {
        let ReadError::Damaged { path, .. } = error else { return false };
        if self.server.cluster.is_none() || self.repair_failed.load(Ordering::SeqCst) {
            return false;
        }
        let damage = Damage { segment: path.clone(), description: error.to_string() };
        // Full: a repair is asked for already.
        let _ = self.repairs.try_send(damage);
        true
    }

    /// The first visible offset at or after `timestamp`, or the visible end.
    pub(crate) async fn offset_for_timestamp(
        self: &Arc<Self>,
        timestamp: TimestampMs,
    ) -> Result<Offset, ServiceError> {
        if self.remote.is_some() {
            return self.offset_for_timestamp_remote(timestamp).await;
        }
        let partition = self.clone();
        let found = blocking(move || {
            partition.with_log(|log| {
                let found = log
                    .offset_for_timestamp(timestamp)
                    .map_err(|e| ServiceError::read(&partition.topic, partition.id, e))?;
                Ok(found.unwrap_or_else(|| log.log_end_offset()))
            })
        })
        .await;
        found.inspect_err(|error| self.report_damage(error))
    }

    /// Logs a damaged batch at WARN and counts it, the first time a read meets it.
    pub(crate) fn report_damage(&self, error: &ServiceError) {
        let ServiceError::Read { source: ReadError::Damaged { path, position, .. }, .. } = error
        else {
            return;
        };
        {
            let mut reported = self.damage_reported.lock().unwrap_or_else(PoisonError::into_inner);
            if reported.iter().any(|(p, at)| p == path && at == position) {
                return;
            }
            if reported.len() == DAMAGED_BATCHES_REMEMBERED {
                reported.pop_front();
            }
            reported.push_back((path.clone(), *position));
        }
        tracing::warn!(topic = %self.topic, partition = self.id, %error, "a read met a damaged batch");
        self.metrics.damaged_batch();
        self.server.metrics.damaged_batch();
    }
}

/// A blocking task's value, or `None` when it was cancelled: only a runtime shutting down
/// cancels one (before it ran), and then nothing is left to answer. A panic in it goes on
/// unwinding here.
pub(crate) async fn joined<T>(
    task: impl Future<Output = Result<T, tokio::task::JoinError>>,
) -> Option<T> {
    match task.await {
        Ok(value) => Some(value),
        Err(error) if error.is_cancelled() => None,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// Runs `f` on a blocking thread; a panic there is a bug, reported as an internal error.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, ServiceError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Internal(format!("a blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    //! The pipelined group commit, against a simulated disk whose segment fsyncs the test
    //! holds and fails at will.

    use std::io;
    use std::path::Path;
    use std::sync::Condvar;

    use bytes::BytesMut;
    use spool_storage::batch::{BatchBuilder, ProducerStamp};
    use spool_storage::fs::{EntryKind, File, FileSystem, MappedFile, OpenMode};
    use spool_storage::sim::{Faults, SimFileSystem};

    use super::*;

    #[derive(Debug, Default)]
    struct Gate {
        state: Mutex<GateState>,
        changed: Condvar,
    }

    #[derive(Debug, Default)]
    struct GateState {
        held: bool,
        /// Segment fsyncs started so far.
        started: usize,
        /// The fsync (counted as `started`) from which on every one fails.
        fail_from: Option<usize>,
    }

    impl Gate {
        fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn set(&self, change: impl FnOnce(&mut GateState)) {
            change(&mut self.lock());
            self.changed.notify_all();
        }

        /// Called by a segment fsync: counts it, waits while held, says whether it fails.
        fn pass(&self) -> bool {
            let mut state = self.lock();
            state.started += 1;
            let number = state.started;
            self.changed.notify_all();
            while state.held {
                state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            state.fail_from.is_some_and(|from| number >= from)
        }

        async fn started(self: &Arc<Self>, count: usize) {
            let gate = self.clone();
            tokio::task::spawn_blocking(move || {
                let mut state = gate.lock();
                while state.started < count {
                    state = gate.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
            })
            .await
            .unwrap();
        }
    }

    #[derive(Debug)]
    struct GatedFs {
        disk: SimFileSystem,
        gate: Arc<Gate>,
    }

    impl FileSystem for GatedFs {
        fn create_dir(&self, path: &Path) -> io::Result<()> {
            self.disk.create_dir(path)
        }
        fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
            self.disk.list_dir(path)
        }
        fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
            let file = self.disk.open(path, mode)?;
            if path.extension().is_some_and(|e| e == "log") {
                return Ok(Arc::new(GatedFile { file, gate: self.gate.clone() }));
            }
            Ok(file)
        }
        fn exists(&self, path: &Path) -> io::Result<bool> {
            self.disk.exists(path)
        }
        fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
            self.disk.entry_kind(path)
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            self.disk.remove_file(path)
        }
        fn remove_dir(&self, path: &Path) -> io::Result<()> {
            self.disk.remove_dir(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.disk.rename(from, to)
        }
        fn sync_dir(&self, path: &Path) -> io::Result<()> {
            self.disk.sync_dir(path)
        }
    }

    #[derive(Debug)]
    struct GatedFile {
        file: Arc<dyn File>,
        gate: Arc<Gate>,
    }

    impl File for GatedFile {
        fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
            self.file.read_exact_at(buf, position)
        }
        fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
            self.file.write_all_at(buf, position)
        }
        fn write_all_vectored_at(&self, bufs: &[&[u8]], position: u64) -> io::Result<()> {
            self.file.write_all_vectored_at(bufs, position)
        }
        fn len(&self) -> io::Result<u64> {
            self.file.len()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.file.set_len(len)
        }
        fn allocate(&self, len: u64) -> io::Result<()> {
            self.file.allocate(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            if self.gate.pass() {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
            self.file.sync_data()
        }
        fn map_mut(&self, len: usize) -> io::Result<Box<dyn MappedFile>> {
            self.file.map_mut(len)
        }
    }

    fn batch() -> CheckedBatch<Bytes> {
        let mut builder = BatchBuilder::new(BytesMut::new());
        builder.push(TimestampMs::now(), None, Some(b"value"), &[]);
        CheckedBatch::check(builder.finish(ProducerStamp::NONE).freeze()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_go_on_during_a_sync_and_only_what_a_sync_covers_is_acknowledged() {
        let gate = Arc::new(Gate::default());
        let fs = GatedFs { disk: SimFileSystem::new(), gate: gate.clone() };
        let dir = Path::new("/data/topic/0");
        let log = Log::open(Arc::new(fs), dir, LogConfig::default(), TimestampMs::now()).unwrap();
        assert_eq!(log.config().fsync, FsyncPolicy::Always);
        let stop = CancellationToken::new();
        let topic = TopicName::parse("topic").unwrap();
        let services = Services {
            metrics: Arc::new(Metrics::default()),
            sync: Arc::new(SharedSync::alone()),
            cluster: None,
        };
        let (partition, writer) = Partition::start(topic, 0, log, None, stop.clone(), services);
        let before = gate.lock().started;
        gate.set(|g| g.held = true);

        // A's group starts a sync, which the disk holds.
        let a = partition.submit(batch(), Acks::All).await.unwrap();
        gate.started(before + 1).await;
        // B and C are appended while it runs: C (`leader`) is answered at once, B waits.
        let mut b = partition.submit(batch(), Acks::All).await.unwrap();
        let c = partition.submit(batch(), Acks::Leader).await.unwrap();
        assert_eq!(c.await.unwrap().unwrap().base_offset, Offset(2));
        assert!(b.try_recv().is_err(), "B is not acknowledged before a sync covers it");
        assert_eq!(partition.state().unwrap().log_end_offset, Offset(0), "nothing synced");

        // A's sync succeeds; the next one, covering B and C, fails.
        gate.set(|g| {
            g.fail_from = Some(before + 2);
            g.held = false;
        });
        assert_eq!(a.await.unwrap().unwrap().base_offset, Offset(0));
        let b = b.await.unwrap();
        assert!(matches!(b, Err(ServiceError::Fenced { .. })), "B is never acknowledged: {b:?}");
        let state = partition.state().unwrap();
        assert_eq!(state.log_end_offset, Offset(1), "only A is durable, so only A is visible");
        assert!(state.fence.is_some());
        assert_eq!(gate.lock().started, before + 2, "a failed fsync is not retried");

        let d = partition.submit(batch(), Acks::All).await.unwrap();
        assert!(matches!(d.await.unwrap(), Err(ServiceError::Fenced { .. })));
        stop.cancel();
        writer.await.unwrap();
        assert_eq!(gate.lock().started, before + 2, "nor retried at close");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_ack_waits_for_the_direct_write_behind_its_append() {
        let disk = SimFileSystem::new();
        disk.set_writes_behind(true);
        let dir = Path::new("/data/topic/0");
        let log = Log::open(Arc::new(disk.clone()), dir, LogConfig::default(), TimestampMs::now())
            .unwrap();
        let stop = CancellationToken::new();
        let services = Services {
            metrics: Arc::new(Metrics::default()),
            sync: Arc::new(SharedSync::alone()),
            cluster: None,
        };
        let topic = TopicName::parse("topic").unwrap();
        let (partition, writer) = Partition::start(topic, 0, log, None, stop.clone(), services);
        // Past 256 KiB: written directly.
        let heavy = || {
            let mut builder = BatchBuilder::new(BytesMut::new());
            for _ in 0..300 {
                builder.push(TimestampMs::now(), None, Some(&[7u8; 1000]), &[]);
            }
            CheckedBatch::check(builder.finish(ProducerStamp::NONE).freeze()).unwrap()
        };
        // The first direct write is over before its append returns; the next goes behind.
        for _ in 0..2 {
            let answer = partition.submit(heavy(), Acks::All).await.unwrap();
            answer.await.unwrap().unwrap();
        }
        // This one's write fails behind its append: a `leader` ack waits for it, and is
        // refused.
        disk.set_faults(Faults { fail_writes: true, ..Faults::default() });
        let answer = partition.submit(heavy(), Acks::Leader).await.unwrap();
        let answer = answer.await.unwrap();
        assert!(matches!(answer, Err(ServiceError::Fenced { .. })), "{answer:?}");
        disk.set_faults(Faults::default());
        stop.cancel();
        writer.await.unwrap();
    }
}
