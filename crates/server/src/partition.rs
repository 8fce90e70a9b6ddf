//! One partition at run time: its log, the single writer that appends to it, and the
//! notification that wakes its readers.
//!
//! The writer is the only code that mutates the log. It takes appends from a bounded queue
//! (producers beyond [`WRITER_QUEUE_DEPTH`] wait), and for each drained group:
//!
//! 1. appends every batch under the log's write lock (nothing is synced yet);
//! 2. answers `leader` (and `none`) producers; `all` producers wait for a sync that covers
//!    their batch (on an `interval` topic, the next timer-driven sync);
//! 3. wakes readers through a `watch` that carries no data: they read the log by offset, so
//!    the storage layer alone decides what is visible (on an `always` topic, only synced data).
//!
//! On an fsync `always` topic one sync is in flight whenever something appended is not yet
//! synced (pipelined group commit): the group that finds no sync running prepares one under
//! the same lock, and the blocking thread that appended it runs the fsync without the lock
//! while the writer goes on appending the next groups. When that fsync ends, the same thread
//! reports it to the writer and, if more was appended meanwhile, starts the next one at once
//! (up to [`SYNC_ROUNDS_MAX`] in a row, so a busy partition does not keep a blocking thread
//! for ever). So an fsync covers every batch that arrived during the previous one, and
//! appending (the copy into the page cache) overlaps the disk's flush instead of adding to
//! it. A lone producer's batch still takes one thread hop: the thread that appends it syncs
//! it.
//!
//! A failed fsync fences the log (storage never retries it) and fails every waiting producer,
//! including those whose batches were appended while it ran.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use crate::limits::{
    RETENTION_CHECK_INTERVAL, SYNC_ROUNDS_MAX, WRITER_GROUP_BATCHES_MAX, WRITER_QUEUE_DEPTH,
};
use bytes::Bytes;
use spool_broker::TopicName;
use spool_broker::producer::ProducerTable;
use spool_storage::batch::CheckedBatch;
use spool_storage::{
    Appended, FsyncPolicy, Log, LogConfig, Offset, ReadBatches, SyncError, SyncTicket, TimestampMs,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::error::ServiceError;
use crate::idempotence::{self, Refused};
use crate::metrics::PartitionMetrics;

/// How long a producer waits, once its batch is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckLevel {
    /// Nobody waits; only a failure is reported.
    None,
    /// Answered once appended.
    Leader,
    /// Answered once synced.
    All,
}

pub(crate) type AppendReply = oneshot::Sender<Result<Appended, ServiceError>>;

#[derive(Debug)]
struct AppendRequest {
    /// As the producer sent it, checked where it arrived: the log writes its stamped fields
    /// in a copy of its head.
    batch: CheckedBatch<Bytes>,
    acks: AckLevel,
    reply: AppendReply,
}

/// A partition's state shared by its writer, its readers and the services.
#[derive(Debug)]
pub(crate) struct Partition {
    topic: TopicName,
    id: u32,
    /// `None` once the writer has stopped (topic deleted or server shutting down).
    log: RwLock<Option<Log>>,
    queue: mpsc::Sender<AppendRequest>,
    /// New log settings for the writer to apply (see [`Partition::reconfigure`]).
    reconfigure: mpsc::Sender<Reconfigure>,
    pub(crate) metrics: PartitionMetrics,
    /// Bumped after every change readers may care about; it carries no data.
    changed: watch::Sender<()>,
    deleted: AtomicBool,
    /// Idempotent producers' sequences (see `crate::idempotence`); only the writer uses it.
    producers: Mutex<ProducerTable>,
}

/// What a reader sees of a partition without reading records.
#[derive(Debug, Clone)]
pub(crate) struct PartitionState {
    pub(crate) log_start_offset: Offset,
    pub(crate) visible_end_offset: Offset,
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
    /// when `stop` is cancelled.
    pub(crate) fn start(
        topic: TopicName,
        id: u32,
        log: Log,
        stop: CancellationToken,
    ) -> (Arc<Partition>, JoinHandle<Option<Log>>) {
        let (queue, receiver) = mpsc::channel(WRITER_QUEUE_DEPTH);
        let (reconfigure, reconfigure_receiver) = mpsc::channel(1);
        let partition = Arc::new(Partition {
            metrics: PartitionMetrics::new(&topic, id),
            topic,
            id,
            log: RwLock::new(Some(log)),
            queue,
            reconfigure,
            changed: watch::Sender::new(()),
            deleted: AtomicBool::new(false),
            producers: Mutex::new(ProducerTable::new()),
        });
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

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }

    fn closed_error(&self) -> ServiceError {
        if self.deleted.load(Ordering::SeqCst) {
            ServiceError::TopicDeleted { topic: self.topic.clone() }
        } else {
            ServiceError::ShuttingDown
        }
    }

    fn with_log<T>(
        &self,
        f: impl FnOnce(&Log) -> Result<T, ServiceError>,
    ) -> Result<T, ServiceError> {
        let guard = self.log.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(log) => f(log),
            None => Err(self.closed_error()),
        }
    }

    pub(crate) fn state(&self) -> Result<PartitionState, ServiceError> {
        self.with_log(|log| {
            Ok(PartitionState {
                log_start_offset: log.log_start_offset(),
                visible_end_offset: log.visible_end_offset(),
                size_bytes: log.size_bytes(),
                segments: log.segment_count(),
                fence: log.fence().map(ToString::to_string),
            })
        })
    }

    /// A receiver that is marked changed whenever the partition may have new visible data, is
    /// trimmed by retention, or closes.
    pub(crate) fn watch(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Queues one batch for the writer, waiting while the queue is full (backpressure).
    pub(crate) async fn submit(
        &self,
        batch: CheckedBatch<Bytes>,
        acks: AckLevel,
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

    /// Reads whole batches from `offset` (see `Log::read`) on a blocking thread.
    pub(crate) async fn read(
        self: &Arc<Self>,
        offset: Offset,
        bytes_max: u32,
    ) -> Result<ReadBatches, ServiceError> {
        let partition = self.clone();
        blocking(move || {
            partition.with_log(|log| {
                log.read(offset, bytes_max)
                    .map_err(|e| ServiceError::read(&partition.topic, partition.id, e))
            })
        })
        .await
    }

    /// The first visible offset at or after `timestamp`, or the visible end.
    pub(crate) async fn offset_for_timestamp(
        self: &Arc<Self>,
        timestamp: TimestampMs,
    ) -> Result<Offset, ServiceError> {
        let partition = self.clone();
        blocking(move || {
            partition.with_log(|log| {
                let found = log
                    .offset_for_timestamp(timestamp)
                    .map_err(|e| ServiceError::read(&partition.topic, partition.id, e))?;
                Ok(found.unwrap_or_else(|| log.visible_end_offset()))
            })
        })
        .await
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

/// A batch appended with `acks=all`, waiting for a sync to cover it.
#[derive(Debug)]
struct WaitingForSync {
    appended: Appended,
    reply: AppendReply,
}

struct Writer {
    partition: Arc<Partition>,
    queue: mpsc::Receiver<AppendRequest>,
    reconfigure: mpsc::Receiver<Reconfigure>,
    waiting_for_sync: Vec<WaitingForSync>,
    /// The blocking thread running an `always` log's syncs, one after another.
    syncing: Option<JoinHandle<()>>,
    /// Each of its syncs' outcomes, in order. (Unbounded, but it holds at most
    /// `SYNC_ROUNDS_MAX` entries: one thread sends, and the writer drains it before it starts
    /// another.)
    synced: mpsc::UnboundedSender<Result<Offset, SyncError>>,
    synced_answers: mpsc::UnboundedReceiver<Result<Offset, SyncError>>,
    /// The fsync of sealed segments of a `never` log, running beside the appends.
    background_sync: Option<JoinHandle<()>>,
}

/// What one group's append did, handed back from the blocking thread.
struct Committed {
    group: Vec<AppendRequest>,
    results: Vec<Result<Appended, Refused>>,
    /// Whether a sync covering the group was started.
    sync_started: bool,
}

fn timer(period_ms: u64) -> Interval {
    let period = Duration::from_millis(period_ms);
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Whether `log` is an `always` log with appended data no sync covers, which it can still
/// sync (a fenced log never syncs again).
fn behind(log: &Log) -> bool {
    log.config().fsync == FsyncPolicy::Always
        && log.fence().is_none()
        && log.next_offset() > log.durable_offset()
}

/// The end of the syncing thread; never, when there is none.
async fn syncing_end(syncing: &mut Option<JoinHandle<()>>) {
    match syncing {
        Some(task) => task.await.expect("a sync panicked"),
        None => std::future::pending().await,
    }
}

async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn sync_timer_for(fsync: FsyncPolicy) -> Option<Interval> {
    match fsync {
        FsyncPolicy::Interval { interval_ms } => Some(timer(interval_ms)),
        FsyncPolicy::Always | FsyncPolicy::Never => None,
    }
}

impl Writer {
    /// Returns the log, or `None` when a reconfiguration lost it (see `crate::alter`).
    async fn run(mut self, stop: CancellationToken) -> Option<Log> {
        let mut sync_timer = sync_timer_for(self.partition.fsync());
        let mut retention_timer = timer(RETENTION_CHECK_INTERVAL.as_millis() as u64);
        self.partition.rebuild_producers().await;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                Some(synced) = self.synced_answers.recv() => self.synced(synced),
                _ = syncing_end(&mut self.syncing) => {
                    self.syncing = None;
                    self.drain_synced();
                    self.sync_if_behind();
                }
                request = self.queue.recv() => match request {
                    Some(request) => self.commit(request).await,
                    None => break,
                },
                _ = tick(&mut sync_timer) => self.sync().await,
                _ = retention_timer.tick() => self.apply_retention().await,
                Some(request) = self.reconfigure.recv() => {
                    if !self.reconfigure(request).await {
                        break;
                    }
                    sync_timer = sync_timer_for(self.partition.fsync());
                }
            }
        }
        // Stop taking appends, but finish every one already queued: its producer may be
        // waiting for the answer. (Without a log, dropping them tells their producers.)
        self.queue.close();
        if let Some(task) = self.background_sync.take() {
            let _ = task.await;
        }
        if self.log_is_open() {
            while let Some(request) = self.queue.recv().await {
                self.commit(request).await;
            }
            self.sync().await;
        } else {
            self.wait_for_sync().await;
        }
        let log = self.partition.log.write().unwrap_or_else(PoisonError::into_inner).take();
        self.partition.changed.send_replace(());
        log
    }

    fn log_is_open(&self) -> bool {
        self.partition.log.read().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Syncs, then reopens the log with the new settings; false if the log was lost.
    async fn reconfigure(&mut self, request: Reconfigure) -> bool {
        self.wait_for_sync().await;
        if let Some(task) = self.background_sync.take() {
            let _ = task.await;
        }
        self.sync().await;
        let partition = self.partition.clone();
        let reopened = tokio::task::spawn_blocking(move || {
            crate::alter::reopen(&partition.topic, partition.id, &partition.log, request.config)
        })
        .await
        .expect("reopening a log panicked");
        let reopened_ok = reopened.is_ok();
        let _ = request.reply.send(reopened);
        if reopened_ok {
            self.apply_retention().await;
        }
        self.partition.changed.send_replace(());
        self.log_is_open()
    }

    async fn commit(&mut self, first: AppendRequest) {
        let mut group = Vec::with_capacity(WRITER_GROUP_BATCHES_MAX.min(self.queue.len() + 1));
        group.push(first);
        while group.len() < WRITER_GROUP_BATCHES_MAX {
            match self.queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let may_sync = self.syncing.is_none();
        let partition = self.partition.clone();
        let synced = self.synced.clone();
        let (appended, appended_answer) = oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            partition.append_group(group, may_sync, appended, synced);
        });
        let committed = appended_answer.await.expect("a group commit panicked");
        if committed.sync_started {
            self.syncing = Some(task);
        }
        self.partition.metrics.committed(
            committed.group.len(),
            committed.group.iter().zip(&committed.results).filter_map(|(request, result)| {
                result.as_ref().ok().map(|appended| (request.batch.bytes(), appended))
            }),
        );
        self.partition.changed.send_replace(());
        self.answer(committed);
        self.sync_sealed_in_background();
    }

    /// A `never` log rolls without fsyncing the sealed segment (so appends never wait for a
    /// whole segment to reach the disk) and asks for that fsync through `sync_due`, at most
    /// every `NEVER_SEALED_SYNC_INTERVAL_MS`: run it on a blocking thread while the writer
    /// goes on appending, one at a time, so the recovery point advances.
    fn sync_sealed_in_background(&mut self) {
        if self.partition.fsync() != FsyncPolicy::Never
            || self.background_sync.as_ref().is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let due = self.partition.with_log(|log| Ok(log.sync_due(TimestampMs::now())));
        if !matches!(due, Ok(true)) {
            return;
        }
        let partition = self.partition.clone();
        self.background_sync = Some(tokio::task::spawn_blocking(move || {
            if let Err(error) = partition.sync_now() {
                tracing::error!(topic = %partition.topic, partition = partition.id, %error, "syncing sealed segments failed");
            }
        }));
    }

    fn answer(&mut self, committed: Committed) {
        let Committed { group, results, .. } = committed;
        let (topic, id) = (&self.partition.topic, self.partition.id);
        // An idempotent producer's retry of a batch that is durable already writes nothing, so
        // no sync may come to answer it: answer it now.
        let durable = self.partition.with_log(|log| Ok(log.durable_offset())).ok();
        for (request, result) in group.into_iter().zip(results) {
            match (result, request.acks) {
                (Err(error), _) => {
                    let _ = request.reply.send(Err(ServiceError::refused(topic, id, error)));
                }
                (Ok(appended), AckLevel::None | AckLevel::Leader) => {
                    let _ = request.reply.send(Ok(appended));
                }
                (Ok(appended), AckLevel::All)
                    if durable.is_some_and(|durable| appended.last_offset < durable) =>
                {
                    let _ = request.reply.send(Ok(appended));
                }
                // The sync this group started, a later one on an `always` topic, or the next
                // timer-driven one on an `interval` topic answers it. (The edge refuses `all`
                // on a `never` topic, whose close is its only sync.)
                (Ok(appended), AckLevel::All) => {
                    self.waiting_for_sync.push(WaitingForSync { appended, reply: request.reply });
                }
            }
        }
    }

    /// With no sync in flight, starts one if an `always` log has appended what no sync covers
    /// (groups appended after the last syncing thread's final round).
    fn sync_if_behind(&mut self) {
        if self.syncing.is_some() {
            return;
        }
        let ticket = self.partition.with_log(|log| Ok(behind(log).then(|| log.begin_sync())));
        let Ok(Some(ticket)) = ticket else { return };
        let partition = self.partition.clone();
        let synced = self.synced.clone();
        self.syncing =
            Some(tokio::task::spawn_blocking(move || partition.sync_rounds(ticket, &synced)));
    }

    /// Waits for the syncing thread, if any, and answers the producers its syncs cover.
    async fn wait_for_sync(&mut self) {
        if let Some(task) = self.syncing.take() {
            task.await.expect("a sync panicked");
        }
        self.drain_synced();
    }

    fn drain_synced(&mut self) {
        while let Ok(synced) = self.synced_answers.try_recv() {
            self.synced(synced);
        }
    }

    /// Answers the producers a finished sync covers (all of them, with the error, when it
    /// failed) and wakes readers.
    fn synced(&mut self, synced: Result<Offset, SyncError>) {
        let (topic, id) = (&self.partition.topic, self.partition.id);
        match synced {
            Ok(durable) => {
                let (covered, rest): (Vec<_>, Vec<_>) =
                    self.waiting_for_sync.drain(..).partition(|w| w.appended.last_offset < durable);
                self.waiting_for_sync = rest;
                for waiting in covered {
                    let _ = waiting.reply.send(Ok(waiting.appended));
                }
            }
            Err(SyncError::Fenced(fence)) => {
                for waiting in self.waiting_for_sync.drain(..) {
                    let error = SyncError::Fenced(fence.clone());
                    let _ = waiting.reply.send(Err(ServiceError::sync(topic, id, error)));
                }
            }
        }
        self.partition.changed.send_replace(());
    }

    /// Syncs what was appended and answers the producers waiting for it.
    async fn sync(&mut self) {
        self.wait_for_sync().await;
        let partition = self.partition.clone();
        let synced = tokio::task::spawn_blocking(move || partition.sync_now())
            .await
            .expect("a sync panicked");
        self.synced(synced);
    }

    async fn apply_retention(&mut self) {
        let partition = self.partition.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut guard = partition.log.write().unwrap_or_else(PoisonError::into_inner);
            let log = guard.as_mut().expect("the writer's log is open");
            log.apply_retention(TimestampMs::now())
        })
        .await
        .expect("retention panicked");
        match outcome {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(topic = %self.partition.topic, partition = self.partition.id, deleted, "retention deleted segments");
                self.partition.changed.send_replace(());
            }
            Err(error) => {
                tracing::error!(topic = %self.partition.topic, partition = self.partition.id, %error, "retention failed");
            }
        }
    }
}

impl Partition {
    /// Rebuilds the idempotent producers' state from the tail of the log, before the first
    /// append. A read failure leaves it empty and incomplete (see `spool_broker::producer`).
    async fn rebuild_producers(self: &Arc<Self>) {
        let partition = self.clone();
        let rebuilt = blocking(move || {
            partition.with_log(|log| {
                idempotence::rebuild(log)
                    .map_err(|e| ServiceError::read(&partition.topic, partition.id, e))
            })
        })
        .await;
        let table = rebuilt.unwrap_or_else(|error| {
            tracing::error!(topic = %self.topic, partition = self.id, %error, "rebuilding producer state failed; unknown producers are accepted at any sequence");
            let mut table = ProducerTable::new();
            table.mark_incomplete();
            table
        });
        *self.producers.lock().unwrap_or_else(PoisonError::into_inner) = table;
    }

    /// Step 1 of a group commit, on a blocking thread: appends the group and hands the
    /// results to `appended`. On an `always` log, when `may_sync` (no sync is in flight), it
    /// then prepares a sync under the same lock and runs it, and the ones after it, without
    /// the lock (see [`Partition::sync_rounds`]); the writer goes on appending meanwhile.
    fn append_group(
        &self,
        group: Vec<AppendRequest>,
        may_sync: bool,
        appended: oneshot::Sender<Committed>,
        synced: mpsc::UnboundedSender<Result<Offset, SyncError>>,
    ) {
        let mut guard = self.log.write().unwrap_or_else(PoisonError::into_inner);
        let log = guard.as_mut().expect("the writer's log is open");
        let now = TimestampMs::now();
        // One vectored write for the whole group where it fits the active segment.
        let batches: Vec<CheckedBatch<&[u8]>> =
            group.iter().map(|request| request.batch.borrowed()).collect();
        let mut producers = self.producers.lock().unwrap_or_else(PoisonError::into_inner);
        let results = self
            .metrics
            .time_append(|| idempotence::append_group(log, &mut producers, &batches, now));
        drop(producers);
        drop(batches);
        let appended_any = results.iter().any(Result::is_ok);
        let ticket = (may_sync && appended_any && log.config().fsync == FsyncPolicy::Always)
            .then(|| log.begin_sync());
        drop(guard);
        let sync_started = ticket.is_some();
        // The writer drops the answer only when it is stopping; the sync still runs.
        let _ = appended.send(Committed { group, results, sync_started });
        if let Some(ticket) = ticket {
            self.sync_rounds(ticket, &synced);
        }
    }

    /// Runs `ticket`'s fsync without the lock (readers go on, the writer appends the next
    /// group), records it, and sends the outcome to the writer; then, while something was
    /// appended meanwhile and no fsync failed, the next one, up to [`SYNC_ROUNDS_MAX`] in all.
    fn sync_rounds(
        &self,
        mut ticket: SyncTicket,
        synced: &mpsc::UnboundedSender<Result<Offset, SyncError>>,
    ) {
        for round in 1..=SYNC_ROUNDS_MAX {
            let (outcome, guard) = self.run_sync(ticket);
            let log = guard.as_ref().expect("the writer's log is open");
            let next = (round < SYNC_ROUNDS_MAX && behind(log)).then(|| log.begin_sync());
            drop(guard);
            // The writer drops its receiver only once it has stopped and waited for this thread.
            let _ = synced.send(outcome);
            match next {
                Some(next) => ticket = next,
                None => return,
            }
        }
    }

    /// Runs `ticket`'s fsync without the lock, then records its outcome under the write lock,
    /// which it hands back.
    fn run_sync(
        &self,
        ticket: SyncTicket,
    ) -> (Result<Offset, SyncError>, RwLockWriteGuard<'_, Option<Log>>) {
        let result = self.metrics.time_fsync(|| ticket.run());
        let mut guard = self.log.write().unwrap_or_else(PoisonError::into_inner);
        let log = guard.as_mut().expect("the writer's log is open");
        let outcome = log.finish_sync(ticket, result, TimestampMs::now());
        (outcome, guard)
    }

    /// The fsync policy in force (the log's; an alter may change it).
    fn fsync(&self) -> FsyncPolicy {
        let guard = self.log.read().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map_or(FsyncPolicy::Never, |log| log.config().fsync)
    }

    /// Syncs everything appended, without holding the lock during the fsync.
    fn sync_now(&self) -> Result<Offset, SyncError> {
        let ticket = {
            let guard = self.log.read().unwrap_or_else(PoisonError::into_inner);
            guard.as_ref().expect("the writer's log is open").begin_sync()
        };
        self.run_sync(ticket).0
    }
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
    use spool_storage::sim::SimFileSystem;

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
        let (partition, writer) = Partition::start(topic, 0, log, stop.clone());
        let before = gate.lock().started;
        gate.set(|g| g.held = true);

        // A's group starts a sync, which the disk holds.
        let a = partition.submit(batch(), AckLevel::All).await.unwrap();
        gate.started(before + 1).await;
        // B and C are appended while it runs: C (`leader`) is answered at once, B waits.
        let mut b = partition.submit(batch(), AckLevel::All).await.unwrap();
        let c = partition.submit(batch(), AckLevel::Leader).await.unwrap();
        assert_eq!(c.await.unwrap().unwrap().base_offset, Offset(2));
        assert!(b.try_recv().is_err(), "B is not acknowledged before a sync covers it");
        assert_eq!(partition.state().unwrap().visible_end_offset, Offset(0), "nothing synced");

        // A's sync succeeds; the next one, covering B and C, fails.
        gate.set(|g| {
            g.fail_from = Some(before + 2);
            g.held = false;
        });
        assert_eq!(a.await.unwrap().unwrap().base_offset, Offset(0));
        let b = b.await.unwrap();
        assert!(matches!(b, Err(ServiceError::Fenced { .. })), "B is never acknowledged: {b:?}");
        let state = partition.state().unwrap();
        assert_eq!(state.visible_end_offset, Offset(1), "only A is durable, so only A is visible");
        assert!(state.fence.is_some());
        assert_eq!(gate.lock().started, before + 2, "a failed fsync is not retried");

        let d = partition.submit(batch(), AckLevel::All).await.unwrap();
        assert!(matches!(d.await.unwrap(), Err(ServiceError::Fenced { .. })));
        stop.cancel();
        writer.await.unwrap();
        assert_eq!(gate.lock().started, before + 2, "nor retried at close");
    }
}
