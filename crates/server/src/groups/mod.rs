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
//! - Committed offsets are durable: [`InternalLog`] `internal/group-offsets/{generation}`,
//!   one record per commit, reset or deletion, folded at start-up, and compacted to one record per group when it
//!   grows past `INTERNAL_LOG_COMPACT_BYTES` (see `internal_log`).
//!
//! Time is the wall clock's reading when the groups opened, advanced by tokio's monotonic
//! clock since: it never goes backwards, and tests that pause tokio's clock control it.

mod api;
mod feed;
mod member;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use spool_broker::group::classic::{ClassicError, Joined, Replies, Ticket};
use spool_broker::group::{
    Changes, CommitRecord, CommittedOffsets, Coordinator, MemberId, OffsetsRecord, Removal,
};
use spool_storage::TimestampMs;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

pub(crate) use api::GroupApi;

use crate::error::ServiceError;
use crate::internal_log::{InternalLog, OpenInternalError};
use crate::topic_table::TopicTable;

/// How a member's task learns that its view changed, and why it was removed.
#[derive(Debug, Default)]
pub(crate) struct MemberLink {
    wake: Notify,
    removal: Mutex<Option<Removal>>,
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
    classic_waiters: HashMap<Ticket, ClassicWaiter>,
}

impl State {
    /// Registers where `ticket`'s answer goes, then sends every answer in `replies` (perhaps
    /// this one's). Call it right after the coordinator call that gave both.
    pub(crate) fn wait_for(&mut self, ticket: Ticket, waiter: ClassicWaiter, replies: Replies) {
        self.classic_waiters.insert(ticket, waiter);
        self.deliver(replies);
    }

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

/// Every consumer group of the server.
#[derive(Debug)]
pub(crate) struct Groups {
    state: Mutex<State>,
    offsets: InternalLog,
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
        let offsets = InternalLog::open(data_dir, "group-offsets", move |value| {
            let record = OffsetsRecord::decode(value).map_err(|e| e.to_string())?;
            folding.lock().unwrap_or_else(PoisonError::into_inner).apply_record(&record);
            Ok(())
        })
        .await?;
        let committed =
            std::mem::take(&mut *committed.lock().unwrap_or_else(PoisonError::into_inner));
        committed.snapshot().for_each(|record| record_lag_sources(&record));
        // Member ids carry the start time, so an id from an earlier run never names a new
        // member.
        let instance = TimestampMs::now().0.unsigned_abs();
        let groups = Arc::new(Groups {
            state: Mutex::new(State {
                coordinator: Coordinator::new(instance, committed),
                links: HashMap::new(),
                classic_waiters: HashMap::new(),
            }),
            offsets,
            topics,
            started: Instant::now(),
            started_at: TimestampMs::now(),
            deadlines: Notify::new(),
        });
        let source = Arc::downgrade(&groups);
        groups.offsets.compact_with(Box::new(move || {
            let groups = source.upgrade()?;
            let state = groups.lock();
            let records = state.coordinator.committed_offsets().snapshot();
            Some(records.map(|r| (r.group.as_str().as_bytes().to_vec(), r.encode())).collect())
        }));
        let source = Arc::downgrade(&groups);
        groups.topics.on_grow(Box::new(move |topic, partitions| {
            let Some(groups) = source.upgrade() else { return };
            let mut state = groups.lock();
            let changes = state.coordinator.topic_grew(topic, partitions, groups.now());
            groups.notify(&state, changes);
        }));
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

    /// Tells the members a change concerns. Called with the state locked, right after the
    /// change.
    fn notify(&self, state: &State, changes: Changes) {
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
        self.offsets.append(record.group.as_str().as_bytes().to_vec(), record.encode())
    }

    /// Queues a group's deletion record to the offsets log; the future resolves once it is
    /// durable. Call it with the state locked, right after the coordinator deleted the group,
    /// so that it is stored after every commit decided before the deletion.
    fn persist_deletion(
        &self,
        record: &OffsetsRecord,
    ) -> impl Future<Output = Result<(), ServiceError>> + use<> {
        self.offsets.append(record.group().as_str().as_bytes().to_vec(), record.encode())
    }

    /// Stops taking commits, writes what is queued, and closes the offsets log.
    pub(crate) async fn close(&self) -> Option<String> {
        self.offsets.close().await
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
                let mut state = groups.lock();
                let changes = state.coordinator.tick(groups.now());
                for (member, removal) in &changes.removed {
                    tracing::info!(%member, %removal, "a group member was removed");
                }
                groups.notify(&state, changes);
                let replies = state.coordinator.classic_mut().tick(groups.now());
                state.deliver(replies);
                drop(state);
            }
            () = groups.deadlines.notified() => {}
            () = stop.cancelled() => return,
        }
    }
}
