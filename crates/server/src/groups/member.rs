//! One group member's task: owns its stream from the join to the end.
//!
//! The task reads the member's messages and never blocks on the member's queue or on the
//! disk while doing so, so heartbeats keep being heard from a member that is slow to read:
//! - a commit is decided at once (under the groups' lock, which also queues its record, so
//!   records are stored in the order commits were decided) and its fsync is awaited beside
//!   the reading ([`Member::in_flight`]); results are answered in commit order, and many
//!   members' commits share one fsync;
//! - assignments and commit results wait in [`Member::pending`] until the control queue has
//!   room (the member's stream sends control messages before queued records).
//!
//! An assignment is built when it is sent, from the coordinator's view at that moment:
//!
//! 1. stop the feeds of partitions the member no longer owns: clear their `alive` flags (so
//!    their queued records are dropped), abort them and wait until they are gone;
//! 2. send the assignment, which lists them as revoked;
//! 3. start feeds for the partitions it gained.
//!
//! So records of a partition never follow the assignment that revokes it, and never precede
//! the one that gives it. A `RevocationDone` is passed on only for partitions the member was
//! told are revoked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spool_broker::group::{GroupName, MemberId, MemberView, OffsetReset, Removal, TopicPartition};
use spool_broker::limits::COMMIT_OFFSETS_MAX;
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::{
    Assignment, CommitOffsets, CommitResult, MemberEvent, MemberRequest,
    TopicPartition as WirePartition,
};
use spool_storage::Offset;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::{Code, Status, Streaming};

use super::feed::{Feed, Outbound, RecordsOut};
use super::{Groups, MemberLink};
use crate::auth::{Action, Caller, Resource};
use crate::consume::Wire;
use crate::error::{InvalidRequest, ServiceError, to_status};

/// A commit's fsync, resolving once its record is durable.
type Durable = Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>>;
/// How a member's stream ends: the status the response stream yields after the last queued
/// message (none: OK). Set by the member task before it lets go of the queue.
pub(crate) type Ending = Arc<std::sync::Mutex<Option<Status>>>;

/// A member as its task sees it.
pub(crate) struct Member {
    pub(crate) groups: Arc<Groups>,
    pub(crate) caller: Caller,
    pub(crate) group: GroupName,
    pub(crate) id: MemberId,
    pub(crate) link: Arc<MemberLink>,
    pub(crate) reset: OffsetReset,
    pub(crate) wire: Wire,
    pub(crate) out: Outbound,
    records: RecordsOut,
    ending: Ending,
    /// Each feed's task and its `alive` flag (see `feed`).
    feeds: BTreeMap<TopicPartition, (JoinHandle<()>, Arc<AtomicBool>)>,
    /// What the last assignment sent said.
    sent_owned: BTreeSet<TopicPartition>,
    sent_revoked: BTreeSet<TopicPartition>,
    generation: Arc<AtomicU64>,
    assignment_due: bool,
    pending: VecDeque<CommitResult>,
    in_flight: VecDeque<(u64, Durable)>,
    failed: mpsc::Sender<Status>,
    failures: mpsc::Receiver<Status>,
}

/// How a member's stream ends.
enum End {
    /// It left, or its client went away: the stream ends with OK.
    Left,
    /// The stream ends with this status.
    Status(Status),
}

pub(crate) fn wire_partition(partition: &TopicPartition) -> WirePartition {
    WirePartition { topic: partition.topic.to_string(), partition: partition.partition }
}

impl Member {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        groups: Arc<Groups>,
        caller: Caller,
        group: GroupName,
        id: MemberId,
        link: Arc<MemberLink>,
        reset: OffsetReset,
        wire: Wire,
        out: Outbound,
        records: RecordsOut,
        ending: Ending,
    ) -> Member {
        let (failed, failures) = mpsc::channel(1);
        Member {
            groups,
            caller,
            group,
            id,
            link,
            reset,
            wire,
            out,
            records,
            ending,
            feeds: BTreeMap::new(),
            sent_owned: BTreeSet::new(),
            sent_revoked: BTreeSet::new(),
            generation: Arc::new(AtomicU64::new(0)),
            assignment_due: true,
            pending: VecDeque::new(),
            in_flight: VecDeque::new(),
            failed,
            failures,
        }
    }

    /// Serves the member until its stream ends, then removes it from its group: unless a new
    /// stream resumed it, or the server is shutting down (the member stays stored, to resume
    /// after the restart or on the next coordinator).
    pub(crate) async fn run(mut self, mut requests: Streaming<MemberRequest>) {
        let end = self.serve(&mut requests).await;
        self.stop_feeds(|_| true).await;
        {
            let mut state = self.groups.lock();
            let current = state.links.get(&self.id).is_some_and(|l| Arc::ptr_eq(l, &self.link));
            if current {
                state.links.remove(&self.id);
                if !self.groups.topics.streams_stop.is_cancelled() {
                    let changes = state.coordinator.leave(&self.group, &self.id, self.groups.now());
                    self.groups.notify(&mut state, changes);
                }
            }
        }
        if let End::Status(status) = end {
            tracing::debug!(member = %self.id, %status, "a group member's stream ended");
            *self.ending.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
        }
    }

    async fn serve(&mut self, requests: &mut Streaming<MemberRequest>) -> End {
        let stop = self.groups.topics.streams_stop.clone();
        loop {
            let sending = self.assignment_due || !self.pending.is_empty();
            let reading = self.pending.len() + self.in_flight.len()
                < crate::limits::MEMBER_COMMITS_UNANSWERED_MAX;
            let out = self.out.clone();
            // Every turn checks the token and the group grant as they are now, and a reload of
            // the token file wakes the loop to check again: a revoked member's heartbeats and
            // commits are refused, and an idle one ends at the reload.
            let mut reloads = self.caller.watch_reloads();
            if let Err(error) =
                self.caller.allow(Action::Consume, Resource::Group(self.group.as_str()))
            {
                return End::Status(ServiceError::from(error).into());
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return End::Status(ServiceError::ShuttingDown.into()),
                () = reloads.next() => {}
                Some(status) = self.failures.recv() => return End::Status(status),
                (commit_id, outcome) = first_durable(&mut self.in_flight) => {
                    self.pending.push_back(commit_result(commit_id, outcome));
                }
                () = self.link.wake.notified() => {
                    if let Err(end) = self.on_change().await {
                        return end;
                    }
                }
                permit = out.reserve(), if sending => {
                    let Ok(permit) = permit else { return End::Left };
                    match self.next_message().await {
                        Ok(Some(message)) => permit.send(Ok(message)),
                        Ok(None) => {}
                        Err(end) => return end,
                    }
                    self.start_feeds();
                }
                message = requests.message(), if reading => match message {
                    Ok(Some(message)) => {
                        if let Err(end) = self.handle(message).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::Left,
                    Err(status) => {
                        tracing::debug!(member = %self.id, %status, "a group member's stream broke");
                        return End::Left;
                    }
                },
                () = self.out.closed() => return End::Left,
            }
        }
    }

    /// How this stream ends though its member may still be in the group: a new stream
    /// resumed the member, or this node stopped coordinating the groups (the member stays
    /// stored, for its client to resume where they are coordinated now).
    fn superseded(&self) -> Option<End> {
        if self.link.replaced.load(Ordering::SeqCst) {
            return Some(End::Status(Status::aborted(format!(
                "a new stream resumed member {} of group {}: this one ends",
                self.id, self.group
            ))));
        }
        let removal = *self.link.removal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (removal == Some(Removal::CoordinatorMoved)).then(|| {
            End::Status(Status::unavailable(format!(
                "this node no longer coordinates the groups: join group {} again (any node names the coordinator), naming member id {} to keep its partitions",
                self.group, self.id
            )))
        })
    }

    /// The coordinator's view of this member, or how its stream ends if it was removed.
    fn view(&self) -> Result<MemberView, End> {
        if let Some(end) = self.superseded() {
            return Err(end);
        }
        let state = self.groups.lock();
        match state.coordinator.view(&self.group, &self.id) {
            Some(view) => Ok(view),
            None => {
                let removal =
                    *self.link.removal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let why = removal
                    .map_or_else(|| "it is no longer a member".to_owned(), |r| r.to_string());
                Err(End::Status(Status::aborted(format!(
                    "member {} was removed from group {}: {why}; join again to resume from the committed offsets",
                    self.id, self.group
                ))))
            }
        }
    }

    /// Stops the feeds of partitions the member lost; the assignment follows when there is
    /// room for it.
    async fn on_change(&mut self) -> Result<(), End> {
        let view = self.view()?;
        self.stop_feeds(|p| !view.owned.contains(p)).await;
        self.assignment_due = true;
        Ok(())
    }

    /// Stops the matching feeds: their queued messages will be dropped, and they are
    /// aborted and awaited.
    async fn stop_feeds(&mut self, stop: impl Fn(&TopicPartition) -> bool) {
        let stopping: Vec<TopicPartition> =
            self.feeds.keys().filter(|p| stop(p)).cloned().collect();
        for partition in stopping {
            let (feed, alive) = self.feeds.remove(&partition).expect("listed above");
            alive.store(false, Ordering::SeqCst);
            feed.abort();
            let _ = feed.await;
        }
    }

    /// The next message to send: the assignment if one is due, else a commit result.
    async fn next_message(&mut self) -> Result<Option<MemberEvent>, End> {
        if !self.assignment_due {
            return Ok(self
                .pending
                .pop_front()
                .map(|result| MemberEvent { kind: Some(Kind::CommitResult(result)) }));
        }
        self.assignment_due = false;
        let view = self.view()?;
        self.stop_feeds(|p| !view.owned.contains(p)).await;
        let added: Vec<_> = view.owned.difference(&self.sent_owned).map(wire_partition).collect();
        let revoked: BTreeSet<TopicPartition> = self
            .sent_owned
            .iter()
            .chain(&view.revoking)
            .filter(|p| !view.owned.contains(*p) && !self.sent_revoked.contains(*p))
            .cloned()
            .collect();
        let unchanged = self.generation.load(Ordering::SeqCst) == view.generation
            && added.is_empty()
            && revoked.is_empty()
            && self.sent_owned == view.owned;
        if unchanged {
            return Ok(None);
        }
        let message = Assignment {
            generation: view.generation,
            owned: view.owned.iter().map(wire_partition).collect(),
            added,
            revoked: revoked.iter().map(wire_partition).collect(),
        };
        self.generation.store(view.generation, Ordering::SeqCst);
        self.sent_revoked.retain(|p| view.revoking.contains(p));
        self.sent_revoked.extend(revoked);
        self.sent_owned = view.owned;
        Ok(Some(MemberEvent { kind: Some(Kind::Assignment(message)) }))
    }

    /// Starts a feed for every owned partition that has none (after the assignment that
    /// gave it was queued).
    fn start_feeds(&mut self) {
        let missing: Vec<TopicPartition> =
            self.sent_owned.iter().filter(|p| !self.feeds.contains_key(*p)).cloned().collect();
        for partition in missing {
            let alive = Arc::new(AtomicBool::new(true));
            let feed = Feed {
                groups: self.groups.clone(),
                caller: self.caller.clone(),
                group: self.group.clone(),
                partition: partition.clone(),
                reset: self.reset,
                wire: self.wire,
                generation: self.generation.clone(),
                alive: alive.clone(),
                out: self.records.clone(),
                failed: self.failed.clone(),
            };
            self.feeds.insert(partition, (tokio::spawn(feed.run()), alive));
        }
    }

    async fn handle(&mut self, message: MemberRequest) -> Result<(), End> {
        // A stream another one resumed, or one this node no longer coordinates, speaks for
        // the member no more.
        if let Some(end) = self.superseded() {
            return Err(end);
        }
        // The grant as it is now: a message read in the same turn as a reload is not let in
        // on the check made before it.
        if let Err(error) = self.caller.allow(Action::Consume, Resource::Group(self.group.as_str()))
        {
            return Err(End::Status(ServiceError::from(error).into()));
        }
        let now = self.groups.now();
        match message.kind {
            Some(RequestKind::Heartbeat(_)) => {
                if !self.groups.lock().coordinator.heard_from(&self.group, &self.id, now) {
                    return Err(self.view().err().unwrap_or(End::Left));
                }
            }
            Some(RequestKind::Commit(commit)) => {
                let commit_id = commit.commit_id;
                let durable: Durable = match self.commit(commit) {
                    Ok(durable) => Box::pin(durable),
                    Err(error) => Box::pin(std::future::ready(Err(error))),
                };
                self.in_flight.push_back((commit_id, durable));
            }
            Some(RequestKind::RevocationDone(done)) => {
                let partitions: Vec<TopicPartition> = done
                    .partitions
                    .iter()
                    .filter_map(|p| {
                        self.sent_revoked
                            .iter()
                            .find(|s| s.topic.as_str() == p.topic && s.partition == p.partition)
                    })
                    .cloned()
                    .collect();
                for partition in &partitions {
                    self.sent_revoked.remove(partition);
                }
                let mut state = self.groups.lock();
                let changes = state.coordinator.revoked(&self.group, &self.id, &partitions, now);
                self.groups.notify(&mut state, changes);
            }
            Some(RequestKind::Leave(_)) => return Err(End::Left),
            Some(RequestKind::Join(_)) => {
                let error = InvalidRequest::GroupProtocol {
                    reason: "`join` may only be the first message of a stream",
                };
                return Err(End::Status(ServiceError::from(error).into()));
            }
            None => {
                let error = InvalidRequest::GroupProtocol {
                    reason: "a member message must set one of its fields",
                };
                return Err(End::Status(ServiceError::from(error).into()));
            }
        }
        Ok(())
    }

    /// Checks a commit and applies it, queueing its record; the returned future resolves
    /// once the record is durable.
    fn commit(
        &self,
        commit: CommitOffsets,
    ) -> Result<impl Future<Output = Result<(), ServiceError>> + use<>, ServiceError> {
        let mut offsets = Vec::with_capacity(commit.offsets.len().min(COMMIT_OFFSETS_MAX));
        for entry in commit.offsets.iter().take(COMMIT_OFFSETS_MAX + 1) {
            let partition = self.groups.topics.partition(&entry.topic, entry.partition)?;
            let end = match partition.state() {
                Ok(state) => state.log_end_offset,
                // A partition this node holds no replica of, not read here yet: its end is
                // not known here, and the leader takes the commit as Kafka's commits are.
                Err(ServiceError::NotHeld { .. }) => Offset(u64::MAX),
                Err(error) => return Err(error),
            };
            if entry.offset > end.0 {
                return Err(ServiceError::from(InvalidRequest::CommitPastEnd {
                    topic: entry.topic.clone(),
                    partition: entry.partition,
                    offset: entry.offset,
                    end: end.0,
                }));
            }
            let topic = partition.topic().clone();
            offsets
                .push((TopicPartition { topic, partition: entry.partition }, Offset(entry.offset)));
        }
        let mut state = self.groups.lock();
        let now = self.groups.now();
        let record =
            state.coordinator.commit(&self.group, &self.id, commit.generation, offsets, now)?;
        let durable = (!record.offsets.is_empty()).then(|| self.groups.persist(&record));
        drop(state);
        Ok(async move {
            match durable {
                Some(durable) => durable.await,
                None => Ok(()),
            }
        })
    }
}

/// The first commit in flight, once durable; pending while there is none.
async fn first_durable(
    in_flight: &mut VecDeque<(u64, Durable)>,
) -> (u64, Result<(), ServiceError>) {
    let Some((_, durable)) = in_flight.front_mut() else {
        return std::future::pending().await;
    };
    let outcome = durable.as_mut().await;
    let (commit_id, _) = in_flight.pop_front().expect("polled above");
    (commit_id, outcome)
}

fn commit_result(commit_id: u64, outcome: Result<(), ServiceError>) -> CommitResult {
    match outcome {
        Ok(()) => CommitResult { commit_id, code: Code::Ok as i32, message: String::new() },
        Err(error) => {
            let status = to_status(&error);
            CommitResult {
                commit_id,
                code: status.code() as i32,
                message: status.message().to_owned(),
            }
        }
    }
}
