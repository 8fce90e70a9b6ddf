//! The writer: the only code that mutates a partition's log. It takes appends from a bounded queue
//! (producers beyond [`WRITER_QUEUE_DEPTH`] wait), and for each drained group:
//!
//! 1. appends every batch under the log's write lock (nothing is synced yet): on a blocking
//!    thread, or, for a small group that the log says is one write into the page cache and
//!    nothing else, on the writer's own task ([`Partition::append_light_group`]);
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
//! it. A lone producer's batch still takes one thread hop: the blocking thread that appends
//! it, or after a light append the one started for its sync, syncs it. When many
//! partitions sync at once, a sync may instead be queued for the server's shared `syncfs`
//! (`spool_storage::SharedSync`): the thread returns, and the one running the shared rounds
//! records the sync and starts the next.
//!
//! A failed fsync fences the log (storage never retries it) and fails every waiting producer,
//! including those whose batches were appended while it ran.

use super::*;

/// Whether a group commit starts a sync of an `always` log after its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SyncStart {
    /// No sync is in flight: start one if the group appended anything.
    IfAppended,
    /// A sync is in flight; the one that follows it covers this group.
    Running,
}

/// A batch appended with `acks=all`, waiting for a sync to cover it.
#[derive(Debug)]
pub(super) struct WaitingForSync {
    pub(super) appended: Appended,
    pub(super) reply: AppendReply,
}

pub(super) struct Writer {
    pub(super) partition: Arc<Partition>,
    pub(super) queue: mpsc::Receiver<AppendRequest>,
    pub(super) reconfigure: mpsc::Receiver<Reconfigure>,
    pub(super) waiting_for_sync: Vec<WaitingForSync>,
    /// Ends when the syncs an `always` log's writer started, one after another, are over
    /// (see [`Partition::sync_rounds`]).
    pub(super) syncing: Option<SyncsRunning>,
    /// Each of its syncs' outcomes, in order. (Unbounded, but it holds at most
    /// `SYNC_ROUNDS_MAX` entries: one thread sends, and the writer drains it before it starts
    /// another.)
    pub(super) synced: mpsc::UnboundedSender<Result<Offset, SyncError>>,
    pub(super) synced_answers: mpsc::UnboundedReceiver<Result<Offset, SyncError>>,
    /// The fsync of sealed segments of a `never` log, running beside the appends.
    pub(super) background_sync: Option<JoinHandle<()>>,
}

/// What one group's append did, handed back from the blocking thread.
pub(super) struct Committed {
    pub(super) group: Vec<AppendRequest>,
    pub(super) results: Vec<Result<Appended, Refused>>,
    /// Whether a sync covering the group was started.
    pub(super) sync_started: bool,
}

pub(super) fn timer(period_ms: u64) -> Interval {
    let period = Duration::from_millis(period_ms);
    let mut interval = tokio::time::interval_at(Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval
}

/// Whether `log` is an `always` log with appended data no sync covers, which it can still
/// sync (a fenced log never syncs again).
pub(super) fn behind(log: &Log) -> bool {
    log.config().fsync == FsyncPolicy::Always
        && log.fence().is_none()
        && log.next_offset() > log.durable_offset()
}

/// Where the outcomes of syncs go, to the writer.
pub(super) type SyncedSender = mpsc::UnboundedSender<Result<Offset, SyncError>>;

/// Dropped when a run of syncs is over, however it ends.
pub(super) type SyncsOver = oneshot::Sender<()>;
pub(super) type SyncsRunning = oneshot::Receiver<()>;

/// The end of the syncs running; never, when none are.
pub(super) async fn syncing_end(syncing: &mut Option<SyncsRunning>) {
    match syncing {
        Some(running) => {
            let _ = running.await;
        }
        None => std::future::pending().await,
    }
}

pub(super) async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub(super) fn sync_timer_for(fsync: FsyncPolicy) -> Option<Interval> {
    match fsync {
        FsyncPolicy::Interval { interval_ms } => Some(timer(interval_ms)),
        FsyncPolicy::Always | FsyncPolicy::Never => None,
    }
}

impl Writer {
    /// Returns the log, or `None` when a reconfiguration lost it (see `crate::alter`).
    pub(super) async fn run(mut self, stop: CancellationToken) -> Option<Log> {
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

    pub(super) fn log_is_open(&self) -> bool {
        self.partition.log.read().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// Syncs, then reopens the log with the new settings; false if the log was lost.
    pub(super) async fn reconfigure(&mut self, request: Reconfigure) -> bool {
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

    pub(super) async fn commit(&mut self, first: AppendRequest) {
        let mut group = Vec::with_capacity(WRITER_GROUP_BATCHES_MAX.min(self.queue.len() + 1));
        group.push(first);
        while group.len() < WRITER_GROUP_BATCHES_MAX {
            match self.queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        let sync = match self.syncing {
            None => SyncStart::IfAppended,
            Some(_) => SyncStart::Running,
        };
        let synced = self.synced.clone();
        let (over, running) = oneshot::channel();
        let committed = match self.partition.append_light_group(group, sync, synced, over) {
            Ok(committed) => committed,
            Err((group, synced, over)) => {
                let partition = self.partition.clone();
                let (appended, appended_answer) = oneshot::channel();
                tokio::task::spawn_blocking(move || {
                    partition.append_group(group, sync, appended, synced, over);
                });
                appended_answer.await.expect("a group commit panicked")
            }
        };
        if committed.sync_started {
            self.syncing = Some(running);
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
    pub(super) fn sync_sealed_in_background(&mut self) {
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

    pub(super) fn answer(&mut self, committed: Committed) {
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
                (Ok(appended), Acks::None | Acks::Leader) => {
                    let _ = request.reply.send(Ok(appended));
                }
                (Ok(appended), Acks::All)
                    if durable.is_some_and(|durable| appended.last_offset < durable) =>
                {
                    let _ = request.reply.send(Ok(appended));
                }
                // The sync this group started, a later one on an `always` topic, or the next
                // timer-driven one on an `interval` topic answers it. (The edge refuses `all`
                // on a `never` topic, whose close is its only sync.)
                (Ok(appended), Acks::All) => {
                    self.waiting_for_sync.push(WaitingForSync { appended, reply: request.reply });
                }
            }
        }
    }

    /// With no sync in flight, starts one if an `always` log has appended what no sync covers
    /// (groups appended after the last syncing thread's final round).
    pub(super) fn sync_if_behind(&mut self) {
        if self.syncing.is_some() {
            return;
        }
        let ticket = self.partition.with_log(|log| Ok(behind(log).then(|| log.begin_sync())));
        let Ok(Some(ticket)) = ticket else { return };
        let partition = self.partition.clone();
        let synced = self.synced.clone();
        let (over, running) = oneshot::channel();
        self.syncing = Some(running);
        tokio::task::spawn_blocking(move || partition.sync_rounds(ticket, 1, synced, over));
    }

    /// Waits for the syncs running, if any, and answers the producers they cover.
    pub(super) async fn wait_for_sync(&mut self) {
        if let Some(running) = self.syncing.take() {
            let _ = running.await;
        }
        self.drain_synced();
    }

    pub(super) fn drain_synced(&mut self) {
        while let Ok(synced) = self.synced_answers.try_recv() {
            self.synced(synced);
        }
    }

    /// Answers the producers a finished sync covers (all of them, with the error, when it
    /// failed) and wakes readers.
    pub(super) fn synced(&mut self, synced: Result<Offset, SyncError>) {
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
    pub(super) async fn sync(&mut self) {
        self.wait_for_sync().await;
        let partition = self.partition.clone();
        let Some(synced) = joined(tokio::task::spawn_blocking(move || partition.sync_now())).await
        else {
            return;
        };
        self.synced(synced);
    }

    pub(super) async fn apply_retention(&mut self) {
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
    pub(super) async fn rebuild_producers(self: &Arc<Self>) {
        let partition = self.clone();
        let rebuilt = blocking(move || {
            partition.with_log(|log| {
                idempotence::rebuild(log)
                    .map_err(|e| ServiceError::read(&partition.topic, partition.id, e))
            })
        })
        .await;
        let table = rebuilt.unwrap_or_else(|error| {
            self.report_damage(&error);
            tracing::error!(topic = %self.topic, partition = self.id, %error, "rebuilding producer state failed; unknown producers are accepted at any sequence");
            let mut table = ProducerTable::new();
            table.mark_incomplete();
            table
        });
        *self.producers.lock().unwrap_or_else(PoisonError::into_inner) = table;
    }

    /// Step 1 of a group commit, on a blocking thread: appends the group and hands the
    /// results to `appended`. On an `always` log, when no sync is in flight
    /// ([`SyncStart::IfAppended`]), it then prepares a sync under the same lock and runs it,
    /// and the ones after it, without the lock (see [`Partition::sync_rounds`]); the writer
    /// goes on appending meanwhile.
    pub(super) fn append_group(
        self: Arc<Self>,
        group: Vec<AppendRequest>,
        sync: SyncStart,
        appended: oneshot::Sender<Committed>,
        synced: mpsc::UnboundedSender<Result<Offset, SyncError>>,
        over: SyncsOver,
    ) {
        let mut guard = self.log.write().unwrap_or_else(PoisonError::into_inner);
        let log = guard.as_mut().expect("the writer's log is open");
        let (results, ticket) = self.append_locked(log, &group, sync);
        drop(guard);
        let sync_started = ticket.is_some();
        // The writer drops the answer only when it is stopping; the sync still runs.
        let _ = appended.send(Committed { group, results, sync_started });
        if let Some(ticket) = ticket {
            self.sync_rounds(ticket, 1, synced, over);
        }
    }

    /// [`Partition::append_group`] on the writer's own thread, for a group that costs one
    /// write into the page cache and nothing else (see `Log::append_is_light`): at most
    /// [`LIGHT_APPEND_BYTES_MAX`], to a log no reader holds at the moment, with no roll,
    /// first write or index growth due. Its sync, if it starts one, joins a shared round
    /// already running without blocking, or goes to a blocking thread. This saves the thread
    /// hop that is most of what a small batch to one of many partitions costs. Any other
    /// group is handed back.
    pub(super) fn append_light_group(
        self: &Arc<Self>,
        group: Vec<AppendRequest>,
        sync: SyncStart,
        synced: SyncedSender,
        over: SyncsOver,
    ) -> Result<Committed, (Vec<AppendRequest>, SyncedSender, SyncsOver)> {
        let bytes: usize = group.iter().map(|request| request.batch.bytes().len()).sum();
        if bytes > LIGHT_APPEND_BYTES_MAX {
            return Err((group, synced, over));
        }
        let Ok(mut guard) = self.log.try_write() else { return Err((group, synced, over)) };
        let Some(log) =
            guard.as_mut().filter(|log| log.append_is_light(bytes as u64, TimestampMs::now()))
        else {
            drop(guard);
            return Err((group, synced, over));
        };
        let (results, ticket) = self.append_locked(log, &group, sync);
        drop(guard);
        let sync_started = ticket.is_some();
        if let Some(ticket) = ticket {
            let shared = self.server.sync.clone();
            let done = self.clone().sync_done(1, synced, over);
            if let Err((ticket, done)) = shared.try_queue(ticket, done) {
                tokio::task::spawn_blocking(move || shared.run(ticket, done));
            }
        }
        Ok(Committed { group, results, sync_started })
    }

    /// Appends `group` to `log` (one vectored write where it fits the active segment); on an
    /// `always` log with no sync in flight, prepares the sync that covers it.
    fn append_locked(
        &self,
        log: &mut Log,
        group: &[AppendRequest],
        sync: SyncStart,
    ) -> (Vec<Result<Appended, Refused>>, Option<SyncTicket>) {
        let now = TimestampMs::now();
        let batches: Vec<CheckedBatch<&[u8]>> =
            group.iter().map(|request| request.batch.borrowed()).collect();
        let mut producers = self.producers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut results = self
            .metrics
            .time_append(|| idempotence::append_group(log, &mut producers, &batches, now));
        // `acks=leader` is answered once its batch is written, which a direct write behind
        // the append may not be yet; `acks=all` waits for the sync, which waits for it.
        let leader_acked = group
            .iter()
            .zip(&results)
            .any(|(request, result)| request.acks == Acks::Leader && result.is_ok());
        if leader_acked && let Err(error) = log.wait_for_writes() {
            for result in results.iter_mut().filter(|result| result.is_ok()) {
                *result = Err(Refused::from(error.clone()));
            }
        }
        let appended_any = results.iter().any(Result::is_ok);
        let ticket = (sync == SyncStart::IfAppended
            && appended_any
            && log.config().fsync == FsyncPolicy::Always)
            .then(|| log.begin_sync());
        (results, ticket)
    }

    /// Runs `ticket`'s sync without the lock (readers go on, the writer appends the next
    /// group), records it, and sends the outcome to the writer; then, while something was
    /// appended meanwhile and no fsync failed, the next one, up to [`SYNC_ROUNDS_MAX`] in all.
    /// `over` is dropped when the last is done.
    ///
    /// A sync runs on this thread, or, when many partitions sync at once, in a round of the
    /// server's shared sync (see `spool_storage::SharedSync`): then this thread returns at
    /// once and the thread running rounds records it and goes on.
    pub(super) fn sync_rounds(
        self: Arc<Self>,
        ticket: SyncTicket,
        round: u32,
        synced: SyncedSender,
        over: SyncsOver,
    ) {
        let shared = self.server.sync.clone();
        shared.run(ticket, self.sync_done(round, synced, over));
    }

    /// What runs when sync `round` is over: records it, sends the outcome to the writer, and
    /// starts the next round if something was appended meanwhile.
    fn sync_done(self: Arc<Self>, round: u32, synced: SyncedSender, over: SyncsOver) -> SyncDone {
        let started = std::time::Instant::now();
        Box::new(move |ticket, result| {
            self.metrics.fsync_took(started.elapsed());
            let mut guard = self.log.write().unwrap_or_else(PoisonError::into_inner);
            let log = guard.as_mut().expect("the writer's log is open");
            let outcome = log.finish_sync(ticket, result, TimestampMs::now());
            let next = (round < SYNC_ROUNDS_MAX && behind(log)).then(|| log.begin_sync());
            drop(guard);
            // The writer drops its receiver only once it has stopped and waited for `over`.
            let _ = synced.send(outcome);
            match next {
                Some(next) => self.sync_rounds(next, round + 1, synced, over),
                // Tells the writer that no sync runs any more.
                None => drop(over),
            }
        })
    }

    /// The fsync policy in force (the log's; an alter may change it).
    pub(super) fn fsync(&self) -> FsyncPolicy {
        let guard = self.log.read().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map_or(FsyncPolicy::Never, |log| log.config().fsync)
    }

    /// Syncs everything appended, without holding the lock during the fsync.
    pub(super) fn sync_now(&self) -> Result<Offset, SyncError> {
        let ticket = {
            let guard = self.log.read().unwrap_or_else(PoisonError::into_inner);
            guard.as_ref().expect("the writer's log is open").begin_sync()
        };
        let started = std::time::Instant::now();
        let (ticket, result) = self.server.sync.run_and_wait(ticket);
        self.metrics.fsync_took(started.elapsed());
        let mut guard = self.log.write().unwrap_or_else(PoisonError::into_inner);
        let log = guard.as_mut().expect("the writer's log is open");
        log.finish_sync(ticket, result, TimestampMs::now())
    }
}
