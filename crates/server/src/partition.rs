//! One partition at run time: its log, the single writer that appends to it, and the
//! notification that wakes its readers.
//!
//! The writer is the only code that mutates the log. It takes appends from a bounded queue
//! (producers beyond [`WRITER_QUEUE_DEPTH`] wait), and for each drained group:
//!
//! 1. appends every batch under the log's write lock (nothing is synced yet);
//! 2. on an fsync `always` topic, prepares one sync, releases the lock, runs the fsync on a
//!    blocking thread (appends to the queue and reads continue meanwhile), and records its
//!    outcome under the lock again: one fsync covers the whole group (group commit);
//! 3. wakes readers through a `watch` that carries no data: they read the log by offset, so
//!    the storage layer alone decides what is visible (on an `always` topic, only synced data);
//! 4. answers each producer: `leader` once appended, `all` once a sync covers the batch (on an
//!    `interval` topic that is the next timer-driven sync).
//!
//! A failed fsync fences the log (storage never retries it) and fails every waiting producer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::BytesMut;
use spool_broker::TopicName;
use spool_broker::limits::{
    RETENTION_CHECK_INTERVAL_MS, WRITER_GROUP_BATCHES_MAX, WRITER_QUEUE_DEPTH,
};
use spool_broker::producer::ProducerTable;
use spool_storage::{
    Appended, FsyncPolicy, Log, LogConfig, Offset, ReadBatches, SyncError, TimestampMs,
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
    batch: BytesMut,
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
        let writer = Writer {
            partition: partition.clone(),
            queue: receiver,
            reconfigure: reconfigure_receiver,
            waiting_for_sync: Vec::new(),
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
        batch: BytesMut,
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

/// A batch appended and acknowledged with `all`, waiting for a sync to cover it.
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
    /// The fsync of sealed segments of a `never` log, running beside the appends.
    background_sync: Option<JoinHandle<()>>,
}

/// What one group commit did, handed back from the blocking thread.
struct Committed {
    group: Vec<AppendRequest>,
    results: Vec<Result<Appended, Refused>>,
    synced: Option<Result<Offset, SyncError>>,
}

fn timer(period_ms: u64) -> Interval {
    let period = Duration::from_millis(period_ms);
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
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
        let mut retention_timer = timer(RETENTION_CHECK_INTERVAL_MS);
        self.partition.rebuild_producers().await;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
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
        let partition = self.partition.clone();
        let committed = tokio::task::spawn_blocking(move || partition.append_group(group))
            .await
            .expect("a group commit panicked");
        self.partition.metrics.committed(
            committed.group.len(),
            committed.group.iter().zip(&committed.results).filter_map(|(request, result)| {
                result.as_ref().ok().map(|appended| (&request.batch[..], appended))
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
        let Committed { group, results, synced } = committed;
        let (topic, id) = (&self.partition.topic, self.partition.id);
        for (request, result) in group.into_iter().zip(results) {
            let appended = match result {
                Ok(appended) => appended,
                Err(error) => {
                    let _ = request.reply.send(Err(ServiceError::refused(topic, id, error)));
                    continue;
                }
            };
            match (request.acks, &synced) {
                (AckLevel::None | AckLevel::Leader, _) => {
                    let _ = request.reply.send(Ok(appended));
                }
                (AckLevel::All, Some(Ok(durable))) => {
                    assert!(appended.last_offset < *durable, "the sync covers the group");
                    let _ = request.reply.send(Ok(appended));
                }
                (AckLevel::All, Some(Err(SyncError::Fenced(fence)))) => {
                    let error = SyncError::Fenced(fence.clone());
                    let _ = request.reply.send(Err(ServiceError::sync(topic, id, error)));
                }
                (AckLevel::All, None) => {
                    // An `interval` topic: the next timer-driven sync answers it. (The edge
                    // refuses `all` on a `never` topic, whose close is its only sync.)
                    self.waiting_for_sync.push(WaitingForSync { appended, reply: request.reply });
                }
            }
        }
    }

    /// Syncs what was appended and answers the producers waiting for it.
    async fn sync(&mut self) {
        let partition = self.partition.clone();
        let synced = tokio::task::spawn_blocking(move || partition.sync_now())
            .await
            .expect("a sync panicked");
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

    /// Steps 1 and 2 of a group commit, on a blocking thread.
    fn append_group(&self, mut group: Vec<AppendRequest>) -> Committed {
        let mut guard = self.log.write().unwrap_or_else(PoisonError::into_inner);
        let log = guard.as_mut().expect("the writer's log is open");
        let now = TimestampMs::now();
        // One vectored write for the whole group where it fits the active segment.
        let mut batches: Vec<&mut [u8]> =
            group.iter_mut().map(|request| &mut request.batch[..]).collect();
        let mut producers = self.producers.lock().unwrap_or_else(PoisonError::into_inner);
        let results = self
            .metrics
            .time_append(|| idempotence::append_group(log, &mut producers, &mut batches, now));
        drop(producers);
        drop(batches);
        let appended_any = results.iter().any(Result::is_ok);
        let synced = match log.config().fsync {
            FsyncPolicy::Always if appended_any => {
                let ticket = log.begin_sync();
                drop(guard);
                // The fsync runs without the lock: readers go on, producers go on queueing.
                let result = self.metrics.time_fsync(|| ticket.run());
                let mut guard = self.log.write().unwrap_or_else(PoisonError::into_inner);
                let log = guard.as_mut().expect("the writer's log is open");
                Some(log.finish_sync(ticket, result, TimestampMs::now()))
            }
            FsyncPolicy::Always | FsyncPolicy::Interval { .. } | FsyncPolicy::Never => None,
        };
        Committed { group, results, synced }
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
        let result = self.metrics.time_fsync(|| ticket.run());
        let mut guard = self.log.write().unwrap_or_else(PoisonError::into_inner);
        let log = guard.as_mut().expect("the writer's log is open");
        log.finish_sync(ticket, result, TimestampMs::now())
    }
}
