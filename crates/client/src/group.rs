//! The group consumer: one member of a consumer group over the `GroupService.Join` stream.
//!
//! A [`GroupConsumer`] is the member's side of the protocol that `groups.proto` describes:
//! it joins, heartbeats from a background task (so a member busy processing stays in the
//! group), and turns the stream into [`GroupEvent`]s: an [`Assignment`] whenever the group
//! moves partitions, and [`GroupRecords`] of the partitions it owns.
//!
//! # Positions and commits
//!
//! For each owned partition the consumer keeps a *position*: one past the last record
//! [`GroupConsumer::poll`] handed out. A record counts as processed once `poll` is called
//! again (the caller is done with what the previous call returned), so a commit always names
//! positions. [`GroupConsumer::set_position`] moves a position back when a caller stops
//! partway through a message.
//!
//! - [`CommitMode::Auto`]: every `poll` first commits the positions that moved, without
//!   waiting for the answer; at most one such commit is in flight, so commits batch up by
//!   themselves under load, and when it is answered while `poll` waits for records, what moved
//!   meanwhile is committed then (an idle member's lag does not wait for the next record). A
//!   refused commit is reported by a later `poll`.
//! - [`CommitMode::Explicit`]: nothing is committed until [`GroupConsumer::commit`], which
//!   waits for the server's answer (after the offsets are synced to disk).
//!
//! In both modes a revocation commits the revoked partitions' positions and acknowledges the
//! revocation (`RevocationDone`) right behind that commit on the stream: the server applies
//! a commit as it reads it, before the acknowledgement that moves the partitions, so their
//! next owner starts where this member stopped (the commit's fsync need not hold the group
//! up). [`GroupConsumer::close`] commits everything before leaving. What was handed out but not
//! committed when a member dies is delivered again to the partition's next owner:
//! at-least-once.
//!
//! [`GroupConsumer::poll_reconnecting`] also rides out a server restart: it joins the group
//! again, naming its member id, so the member keeps its partitions if the server still
//! counts it, and skips what it had already handed out ([`crate::Reconnect`]).
//!
//! # Bounds
//!
//! The server sends records only as fast as the member reads them. While
//! [`GroupConsumer::commit`] waits for its answer it keeps reading, holding the records that
//! arrive meanwhile (the server sends answers ahead of its queued records, so that is what is
//! in transit plus what arrives during one commit's fsync); they are handed out first by the
//! next `poll`.
//!
//! Records travel as the stored batches (`ENCODING_RAW_BATCH`): every batch's CRC is checked
//! on arrival, records below the message's `start_offset` (the part of a partition's first
//! batch before where the member starts) are skipped, and keys, values and header values are
//! slices of the received bytes, not copies.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use spool_proto::limits::{
    GROUP_SESSION_TIMEOUT_MS_DEFAULT, GROUP_SESSION_TIMEOUT_MS_MAX, GROUP_SESSION_TIMEOUT_MS_MIN,
    RESPONSE_BYTES_MAX,
};
use spool_proto::v1 as wire;
use spool_proto::v1::group_service_client::GroupServiceClient;
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_storage::batch::{BatchError, share_or_copy};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::Client;
use crate::consumer::{CheckedBatches, Records};
use crate::error::{ErrorCode, GroupError, ServerError};
use crate::reconnect::{self, Reconnect, ReconnectEvent, server_lost};

/// Member requests queued toward the server, at most (the heartbeat task waits beyond).
const REQUESTS_QUEUED_MAX: usize = 16;
/// How many nodes a join follows when each names another as the groups' coordinator (a
/// cluster whose coordinator is moving) before it is answered UNAVAILABLE.
const COORDINATOR_HOPS_MAX: u32 = 3;

/// Where a member starts a partition for which its group has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// The oldest record still stored. The default.
    #[default]
    Earliest,
    /// The partition's visible end when the member starts it: only new records.
    Latest,
}

/// When a [`GroupConsumer`] commits; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CommitMode {
    /// Each [`GroupConsumer::poll`] commits what earlier polls handed out. The default.
    #[default]
    Auto,
    /// Only [`GroupConsumer::commit`], revocations and [`GroupConsumer::close`] commit.
    Explicit,
}

/// How a member joins its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// The group's name: 1 to 249 characters from `[a-zA-Z0-9._-]`.
    pub group: String,
    /// The topics to consume; every member of a group names the same ones.
    pub topics: Vec<String>,
    /// The member is removed when the server hears nothing from it, or a revocation is not
    /// acknowledged, for this long (50 ms ..= 10 min).
    pub session_timeout: Duration,
    /// Where to start partitions without a committed offset.
    pub reset: OffsetReset,
    pub commit: CommitMode,
}

impl GroupConfig {
    /// Group `group` consuming `topics`, with the default session timeout (10 s), earliest
    /// reset and automatic commits.
    pub fn new(group: &str, topics: &[&str]) -> GroupConfig {
        GroupConfig {
            group: group.to_owned(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            session_timeout: Duration::from_millis(GROUP_SESSION_TIMEOUT_MS_DEFAULT),
            reset: OffsetReset::Earliest,
            commit: CommitMode::Auto,
        }
    }

    fn check(&self) -> Result<u32, GroupError> {
        let ms = self.session_timeout.as_millis();
        if !(u128::from(GROUP_SESSION_TIMEOUT_MS_MIN)..=u128::from(GROUP_SESSION_TIMEOUT_MS_MAX))
            .contains(&ms)
        {
            return Err(GroupError::BadConfig {
                reason: format!(
                    "session_timeout {ms} ms is outside \
                     {GROUP_SESSION_TIMEOUT_MS_MIN}..={GROUP_SESSION_TIMEOUT_MS_MAX}"
                ),
            });
        }
        if self.topics.is_empty() {
            return Err(GroupError::BadConfig { reason: "no topics to consume".into() });
        }
        Ok(ms as u32)
    }
}

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    fn from_wire(p: wire::TopicPartition) -> TopicPartition {
        TopicPartition { topic: p.topic, partition: p.partition }
    }
}

/// What the member owns after a change of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The group's generation; it grows with every change of membership.
    pub generation: u64,
    /// Every partition the member owns now, sorted.
    pub owned: Vec<TopicPartition>,
    /// Partitions in `owned` that are new to the member.
    pub added: Vec<TopicPartition>,
    /// Partitions taken away. Their positions were committed (if they moved) and the
    /// revocation acknowledged; no more records of them come.
    pub revoked: Vec<TopicPartition>,
}

/// A record consumed by a group member. Its bytes are slices of the received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// The headers in the order they were produced, as (name, value).
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl GroupRecord {
    fn from_wire(record: wire::ConsumedRecord) -> GroupRecord {
        GroupRecord {
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key,
            value: record.value,
            headers: record.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        }
    }

    /// The records at or after `start` in whole stored batches, each checked; keys and values
    /// are slices of `bytes`.
    fn from_batches(bytes: &Bytes, start: u64) -> Result<Vec<GroupRecord>, BatchError> {
        let checked = CheckedBatches::check(bytes)?;
        let share = |part: &[u8]| share_or_copy(bytes, part);
        let mut records = Records::new(bytes, &checked, start);
        std::iter::from_fn(|| records.next_checked())
            .map(|record| {
                let record = record?;
                let headers = record
                    .headers
                    .clone()
                    .map(|header| {
                        let header = header?;
                        let key = String::from_utf8_lossy(header.key).into_owned();
                        Ok((key, header.value.map(share)))
                    })
                    .collect::<Result<_, BatchError>>()?;
                Ok(GroupRecord {
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                    key: record.key.map(share),
                    value: record.value.map(share),
                    headers,
                })
            })
            .collect()
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(key, _)| key == name).and_then(|(_, value)| value.as_ref())
    }
}

/// Records of one owned partition, in offset order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecords {
    pub topic: String,
    pub partition: u32,
    /// The generation the server tagged these records with.
    pub generation: u64,
    /// Possibly empty: then the message only says the partition is caught up.
    pub records: Vec<GroupRecord>,
    /// The offset after the last record here (what a commit names once they are processed).
    pub next_offset: u64,
    /// The partition's visible end when these were read.
    pub log_end_offset: u64,
}

/// What [`GroupConsumer::poll`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEvent {
    Assigned(Assignment),
    Records(GroupRecords),
}

/// An owned partition.
#[derive(Debug, Clone, Copy, Default)]
struct PartitionState {
    /// The generation whose assignment gave the partition to the member: records tagged
    /// older belong to an earlier tenure and are dropped.
    acquired: u64,
    /// One past the last record handed out; `None` before the first message.
    position: Option<u64>,
    /// The position last sent in a commit.
    committed: Option<u64>,
    /// The partition's end when last heard.
    log_end_offset: Option<u64>,
    /// Records below this offset were handed out by this consumer before it lost its server
    /// (and its commit of them may not have reached the server): they are skipped, and the
    /// position moves past them (see [`GroupConsumer::poll_reconnecting`]).
    handed_out_before: Option<u64>,
}

/// A commit sent and not answered yet.
#[derive(Debug)]
struct CommitInFlight {
    /// Sent by [`GroupConsumer::poll`] in [`CommitMode::Auto`] (at most one in flight).
    automatic: bool,
}

/// What one stream (one join) holds.
#[derive(Debug)]
struct Member {
    requests: mpsc::Sender<wire::MemberRequest>,
    events: Streaming<wire::MemberEvent>,
    heartbeat: JoinHandle<()>,
    member_id: String,
    generation: u64,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    next_commit_id: u64,
    commits: BTreeMap<u64, CommitInFlight>,
    /// Events read while waiting for a commit's answer: assignments already applied, records
    /// not yet handed out (their positions move when they are).
    held: VecDeque<Held>,
    /// Positions the consumer had before it lost its server, of partitions this member has
    /// not been given yet (see [`PartitionState::handed_out_before`]).
    handed_out_before: BTreeMap<TopicPartition, u64>,
}

#[derive(Debug)]
enum Held {
    Assigned(Assignment),
    Records(wire::PartitionRecords),
}

impl Drop for Member {
    fn drop(&mut self) {
        // Dropping the request sender (with the consumer) ends the stream: the server
        // treats it as leaving. The heartbeat task holds a sender too.
        self.heartbeat.abort();
    }
}

/// One member of a consumer group; see the module docs.
#[derive(Debug)]
pub struct GroupConsumer {
    client: Client,
    config: GroupConfig,
    member: Member,
    /// Set when [`GroupConsumer::poll_reconnecting`] lost the server, until it joined again.
    lost: Option<ServerError>,
}

impl Client {
    /// Joins a consumer group. Returns once the server has accepted the member; the first
    /// [`GroupEvent`] is its assignment.
    pub async fn group_consumer(&self, config: GroupConfig) -> Result<GroupConsumer, GroupError> {
        let member = Member::join(self, &config, None).await?;
        Ok(GroupConsumer { client: self.clone(), config, member, lost: None })
    }
}

fn stream_error(status: tonic::Status) -> GroupError {
    if status.code() == Code::Aborted {
        GroupError::Removed(status.into())
    } else {
        GroupError::Rejected(reconnect::stream_error(status))
    }
}

impl Member {
    /// Opens a member stream at `client` that starts with `join`.
    async fn open(
        client: &Client,
        join: &wire::JoinGroup,
    ) -> Result<(mpsc::Sender<wire::MemberRequest>, Streaming<wire::MemberEvent>), Status> {
        let (requests, requests_rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let first = wire::MemberRequest { kind: Some(RequestKind::Join(join.clone())) };
        requests.send(first).await.expect("the receiver is held here");
        let mut service = GroupServiceClient::new(client.transport())
            .max_decoding_message_size(RESPONSE_BYTES_MAX);
        let events = service.join(ReceiverStream::new(requests_rx)).await?.into_inner();
        Ok((requests, events))
    }

    /// Joins as a new member, or resumes the member `resume` names when the group still
    /// counts it (the server's answer says which).
    async fn join(
        client: &Client,
        config: &GroupConfig,
        resume: Option<&str>,
    ) -> Result<Member, GroupError> {
        let session_timeout_ms = config.check()?;
        let reset = match config.reset {
            OffsetReset::Earliest => wire::OffsetReset::Earliest,
            OffsetReset::Latest => wire::OffsetReset::Latest,
        };
        let join = wire::JoinGroup {
            group: config.group.clone(),
            topics: config.topics.clone(),
            session_timeout_ms,
            reset: reset as i32,
            encoding: wire::Encoding::RawBatch as i32,
            member_id: resume.unwrap_or_default().to_owned(),
        };
        // On a cluster, one node coordinates every group: a refusal names it. While the
        // coordinator moves, the node named may name another in turn.
        let mut at = client.clone();
        let mut hops = 0;
        let (requests, mut events) = loop {
            let refused = match Member::open(&at, &join).await {
                Ok(opened) => break opened,
                Err(refused) => refused,
            };
            match at.named_by(&refused).await {
                Some(_) if hops == COORDINATOR_HOPS_MAX => {
                    let message = format!(
                        "{} (after {hops} other nodes named the coordinator: it is moving, try again)",
                        refused.message()
                    );
                    let moving = ServerError { code: ErrorCode::Unavailable, message };
                    return Err(GroupError::Rejected(moving));
                }
                Some(named) => {
                    at = named.map_err(GroupError::Rejected)?;
                    hops += 1;
                }
                None => return Err(stream_error(refused)),
            }
        };
        let joined = match events.message().await.map_err(stream_error)? {
            Some(wire::MemberEvent { kind: Some(Kind::Joined(joined)) }) => joined,
            Some(other) => {
                return Err(GroupError::Protocol {
                    reason: format!("the first message is not `joined`: {other:?}"),
                });
            }
            None => return Err(GroupError::Ended),
        };
        let interval = Duration::from_millis(u64::from(joined.heartbeat_interval_ms.max(1)));
        let heartbeat = tokio::spawn(heartbeat(requests.clone(), interval));
        Ok(Member {
            requests,
            events,
            heartbeat,
            member_id: joined.member_id,
            generation: 0,
            partitions: BTreeMap::new(),
            next_commit_id: 0,
            commits: BTreeMap::new(),
            held: VecDeque::new(),
            handed_out_before: BTreeMap::new(),
        })
    }

    /// Per partition, one past the last record handed out, also of partitions a previous
    /// member of this consumer handed out and this one was not given yet.
    fn positions(&self) -> BTreeMap<TopicPartition, u64> {
        let mut positions = self.handed_out_before.clone();
        for (partition, state) in &self.partitions {
            if let Some(position) = state.position.or(state.handed_out_before) {
                positions.insert(partition.clone(), position);
            }
        }
        positions
    }

    async fn send(&mut self, kind: RequestKind) -> Result<(), GroupError> {
        let request = wire::MemberRequest { kind: Some(kind) };
        match self.requests.send(request).await {
            Ok(()) => Ok(()),
            // The server stopped reading: its status says why.
            Err(_) => Err(self.stream_end().await),
        }
    }

    /// Reads the stream to its end; returns why it ended.
    async fn stream_end(&mut self) -> GroupError {
        loop {
            match self.events.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return GroupError::Ended,
                Err(status) => return stream_error(status),
            }
        }
    }

    async fn next_event(&mut self) -> Result<Kind, GroupError> {
        loop {
            match self.events.message().await.map_err(stream_error)? {
                Some(wire::MemberEvent { kind: Some(kind) }) => return Ok(kind),
                // An event of a kind this client does not know: skip it.
                Some(wire::MemberEvent { kind: None }) => continue,
                None => return Err(GroupError::Ended),
            }
        }
    }

    /// Positions that moved since their last commit, among `partitions` (all when `None`).
    fn moved(&self, only: Option<&[wire::TopicPartition]>) -> Vec<wire::PartitionOffset> {
        let wanted = |p: &TopicPartition| {
            only.is_none_or(|only| {
                only.iter().any(|o| o.topic == p.topic && o.partition == p.partition)
            })
        };
        self.partitions
            .iter()
            .filter(|(p, _)| wanted(p))
            .filter_map(|(p, state)| match state.position {
                Some(position) if state.committed != Some(position) => {
                    Some(wire::PartitionOffset {
                        topic: p.topic.clone(),
                        partition: p.partition,
                        offset: position,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// [`CommitMode::Auto`]: commits the positions that moved, unless an automatic commit is
    /// in flight (its answer sends the next).
    async fn commit_moved_automatically(&mut self) -> Result<(), GroupError> {
        if self.commits.values().any(|c| c.automatic) {
            return Ok(());
        }
        let offsets = self.moved(None);
        if !offsets.is_empty() {
            self.send_commit(offsets, CommitInFlight { automatic: true }).await?;
        }
        Ok(())
    }

    /// Sends a commit of `offsets`; returns its id.
    async fn send_commit(
        &mut self,
        offsets: Vec<wire::PartitionOffset>,
        in_flight: CommitInFlight,
    ) -> Result<u64, GroupError> {
        let commit_id = self.next_commit_id + 1;
        let committed: Vec<(TopicPartition, u64)> = offsets
            .iter()
            .map(|o| (TopicPartition { topic: o.topic.clone(), partition: o.partition }, o.offset))
            .collect();
        let commit = wire::CommitOffsets { commit_id, generation: self.generation, offsets };
        self.send(RequestKind::Commit(commit)).await?;
        // Recorded only once sent, so a `poll` cancelled while sending leaves no commit
        // waiting for an answer that will never come.
        self.next_commit_id = commit_id;
        self.commits.insert(commit_id, in_flight);
        for (key, offset) in committed {
            if let Some(state) = self.partitions.get_mut(&key) {
                state.committed = Some(offset);
            }
        }
        Ok(commit_id)
    }

    /// Applies an assignment: revoked partitions are committed (if they moved) and then
    /// acknowledged; added ones start with no position.
    async fn assign(&mut self, assignment: wire::Assignment) -> Result<Assignment, GroupError> {
        self.generation = assignment.generation;
        if !assignment.revoked.is_empty() {
            let offsets = self.moved(Some(&assignment.revoked));
            if !offsets.is_empty() {
                self.send_commit(offsets, CommitInFlight { automatic: false }).await?;
            }
            let done = wire::RevocationDone { partitions: assignment.revoked.clone() };
            self.send(RequestKind::RevocationDone(done)).await?;
            for p in &assignment.revoked {
                self.partitions.remove(&TopicPartition::from_wire(p.clone()));
            }
        }
        for p in &assignment.added {
            let key = TopicPartition::from_wire(p.clone());
            let acquired = assignment.generation;
            let handed_out_before = self.handed_out_before.remove(&key);
            let state = PartitionState { acquired, handed_out_before, ..PartitionState::default() };
            self.partitions.insert(key, state);
        }
        Ok(Assignment {
            generation: assignment.generation,
            owned: assignment.owned.into_iter().map(TopicPartition::from_wire).collect(),
            added: assignment.added.into_iter().map(TopicPartition::from_wire).collect(),
            revoked: assignment.revoked.into_iter().map(TopicPartition::from_wire).collect(),
        })
    }

    /// Handles the answer to a commit: reports a refusal.
    fn commit_answered(&mut self, result: wire::CommitResult) -> Result<(), GroupError> {
        if self.commits.remove(&result.commit_id).is_none() {
            return Err(GroupError::Protocol {
                reason: format!("an answer to commit {} that was not sent", result.commit_id),
            });
        }
        commit_outcome(self.generation, result)
    }

    /// Hands out one records message, moving its partition's position; `None` when it
    /// belongs to a partition the member no longer owns (or an earlier tenure of it).
    fn hand_out(
        &mut self,
        records: wire::PartitionRecords,
    ) -> Result<Option<GroupRecords>, GroupError> {
        let key = TopicPartition { topic: records.topic, partition: records.partition };
        let Some(state) = self.partitions.get_mut(&key) else { return Ok(None) };
        if records.generation < state.acquired {
            return Ok(None);
        }
        // What this consumer handed out before it lost its server is skipped, unless the log
        // no longer reaches that far (a crash took back records a topic had not synced: the
        // offsets are then reused by other records).
        let skip_below = state
            .handed_out_before
            .take()
            .filter(|&offset| offset <= records.log_end_offset)
            .unwrap_or(0);
        let start = records.start_offset.max(skip_below);
        let handed = if records.raw_batches.is_empty() {
            // A server may answer in the records encoding; it trimmed them itself.
            let records = records.records.into_iter().filter(|r| r.offset >= start);
            records.map(GroupRecord::from_wire).collect()
        } else {
            GroupRecord::from_batches(&records.raw_batches, start).map_err(|source| {
                GroupError::Corrupt {
                    topic: key.topic.clone(),
                    partition: key.partition,
                    offset: start,
                    source,
                }
            })?
        };
        let next_offset = records.next_offset.max(skip_below);
        if records.next_offset < skip_below {
            state.handed_out_before = Some(skip_below);
        }
        state.position = Some(next_offset);
        state.log_end_offset = Some(records.log_end_offset);
        Ok(Some(GroupRecords {
            topic: key.topic,
            partition: key.partition,
            generation: records.generation,
            records: handed,
            next_offset,
            log_end_offset: records.log_end_offset,
        }))
    }
}

fn commit_outcome(generation: u64, result: wire::CommitResult) -> Result<(), GroupError> {
    let error = ServerError { code: ErrorCode::from_i32(result.code), message: result.message };
    match Code::from_i32(result.code) {
        Code::Ok => Ok(()),
        Code::FailedPrecondition => Err(GroupError::CommitFenced { generation, error }),
        _ => Err(GroupError::CommitFailed(error)),
    }
}

/// Sends a heartbeat every `interval` until the stream closes (or the task is aborted).
async fn heartbeat(requests: mpsc::Sender<wire::MemberRequest>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let request =
            wire::MemberRequest { kind: Some(RequestKind::Heartbeat(wire::Heartbeat {})) };
        if requests.send(request).await.is_err() {
            return;
        }
    }
}

impl GroupConsumer {
    /// The next assignment or records. With [`CommitMode::Auto`] it first commits what
    /// earlier calls handed out.
    ///
    /// Errors: [`GroupError::Removed`] when the server removed the member (call
    /// [`GroupConsumer::rejoin`]); [`GroupError::CommitFenced`] when a commit named a stale
    /// generation; [`GroupError::Rejected`] when the server ended the stream otherwise.
    ///
    /// It may be raced against a stop signal (`tokio::select!`) if the member is then closed
    /// or dropped: a commit is recorded only once sent, and records read are handed out only
    /// when `poll` returns them.
    pub async fn poll(&mut self) -> Result<GroupEvent, GroupError> {
        let automatic = self.config.commit == CommitMode::Auto;
        if automatic {
            self.member.commit_moved_automatically().await?;
        }
        let member = &mut self.member;
        loop {
            if let Some(held) = member.held.pop_front() {
                match held {
                    Held::Assigned(assignment) => return Ok(GroupEvent::Assigned(assignment)),
                    Held::Records(records) => match member.hand_out(records)? {
                        Some(records) => return Ok(GroupEvent::Records(records)),
                        None => continue,
                    },
                }
            }
            match member.next_event().await? {
                Kind::Assignment(assignment) => {
                    return Ok(GroupEvent::Assigned(member.assign(assignment).await?));
                }
                Kind::Records(records) => {
                    if let Some(records) = member.hand_out(records)? {
                        return Ok(GroupEvent::Records(records));
                    }
                }
                Kind::CommitResult(result) => {
                    member.commit_answered(result)?;
                    // While no records come, what was handed out before this poll is still
                    // committed: an idle member's lag does not wait for the next record.
                    if automatic {
                        member.commit_moved_automatically().await?;
                    }
                }
                Kind::Joined(_) => {
                    return Err(GroupError::Protocol { reason: "a second `joined`".into() });
                }
            }
        }
    }

    /// Commits the position of every owned partition that moved, and waits until the server
    /// has synced it. Records arriving meanwhile are held for the next [`GroupConsumer::poll`].
    pub async fn commit(&mut self) -> Result<(), GroupError> {
        let offsets = self.member.moved(None);
        if offsets.is_empty() {
            return Ok(());
        }
        let commit_id =
            self.member.send_commit(offsets, CommitInFlight { automatic: false }).await?;
        self.wait_for_commit(commit_id).await
    }

    async fn wait_for_commit(&mut self, commit_id: u64) -> Result<(), GroupError> {
        let member = &mut self.member;
        loop {
            match member.next_event().await? {
                Kind::CommitResult(result) if result.commit_id == commit_id => {
                    return member.commit_answered(result);
                }
                Kind::CommitResult(result) => member.commit_answered(result)?,
                Kind::Assignment(assignment) => {
                    let applied = member.assign(assignment).await?;
                    member.held.push_back(Held::Assigned(applied));
                }
                Kind::Records(records) => member.held.push_back(Held::Records(records)),
                Kind::Joined(_) => {
                    return Err(GroupError::Protocol { reason: "a second `joined`".into() });
                }
            }
        }
    }

    /// Sets the offset the next commit names for an owned partition: by default one past the
    /// last record handed out. Set it lower (to the first record not processed) when stopping
    /// partway through a message.
    pub fn set_position(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), GroupError> {
        let key = TopicPartition { topic: topic.to_owned(), partition };
        match self.member.partitions.get_mut(&key) {
            Some(state) => {
                state.position = Some(offset);
                Ok(())
            }
            None => Err(GroupError::NotOwned { topic: key.topic, partition }),
        }
    }

    /// Commits every moved position, waits for the answer, and leaves the group (the server
    /// rebalances the others at once).
    pub async fn close(mut self) -> Result<(), GroupError> {
        let committed = self.commit().await;
        // Answers to earlier automatic commits still count: wait for them too.
        while let Some((&commit_id, _)) = self.member.commits.first_key_value() {
            self.wait_for_commit(commit_id).await?;
        }
        self.member.send(RequestKind::Leave(wire::Leave {})).await?;
        match self.member.stream_end().await {
            GroupError::Ended => committed,
            error => Err(error),
        }
    }

    /// Joins the group again as a new member, after [`GroupError::Removed`] or any other end
    /// of the stream. Positions not committed are forgotten: the group resumes from its
    /// committed offsets.
    pub async fn rejoin(&mut self) -> Result<(), GroupError> {
        self.member = Member::join(&self.client, &self.config, None).await?;
        self.lost = None;
        Ok(())
    }

    /// [`GroupConsumer::poll`] that rides out a server restart ([`crate::Reconnect`] has the
    /// details): when the server is lost (`UNAVAILABLE`), it tells `report`, waits, and joins
    /// the group again, for as long as it takes. Records this consumer handed out before are
    /// skipped when their partitions come back to it, and their positions committed as the
    /// commit mode says (with [`CommitMode::Auto`], by the next `poll`). Every other error is
    /// returned as `poll` returns it.
    ///
    /// It may be raced against a stop signal (`tokio::select!`) as `poll` may; a consumer
    /// stopped while waiting for its server cannot commit: [`GroupConsumer::close`] then fails.
    pub async fn poll_reconnecting(
        &mut self,
        reconnect: &Reconnect,
        mut report: impl FnMut(&ReconnectEvent),
    ) -> Result<GroupEvent, GroupError> {
        loop {
            if let Some(error) = self.lost.clone() {
                self.join_again(reconnect, error, &mut report).await?;
            }
            match self.poll().await {
                Err(GroupError::Rejected(error)) if server_lost(&error) => self.lost = Some(error),
                // This member did not leave: a stream the server ended without saying why
                // is a lost server too.
                Err(GroupError::Ended) => {
                    let message = "the server ended the member's stream without a status".into();
                    self.lost = Some(ServerError { code: ErrorCode::Unavailable, message });
                }
                event => return event,
            }
        }
    }

    /// Waits and joins again until it works or fails for another reason than a lost server;
    /// the new member skips what the old one handed out.
    async fn join_again(
        &mut self,
        reconnect: &Reconnect,
        mut error: ServerError,
        report: &mut impl FnMut(&ReconnectEvent),
    ) -> Result<(), GroupError> {
        let positions = self.member.positions();
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let retry_in = reconnect.backoff(attempt);
            let resume_at = positions.iter().map(|(p, offset)| (p.clone(), *offset)).collect();
            report(&ReconnectEvent::Waiting { error, attempt, retry_in, resume_at });
            tokio::time::sleep(retry_in).await;
            match Member::join(&self.client, &self.config, Some(&self.member.member_id)).await {
                Ok(mut member) => {
                    member.handed_out_before = positions;
                    self.member = member;
                    self.lost = None;
                    report(&ReconnectEvent::Reconnected { attempts: attempt });
                    return Ok(());
                }
                Err(GroupError::Rejected(lost)) if server_lost(&lost) => error = lost,
                Err(other) => return Err(other),
            }
        }
    }

    /// The next records for a long-running member (the event handler, the responder): polls
    /// until records come, skipping assignments and joining again when removed from the
    /// group (`member` names it in the warning). `None` once `stop` has completed.
    pub(crate) async fn next_records_until<F: Future<Output = ()>>(
        &mut self,
        mut stop: Pin<&mut F>,
        member: &str,
    ) -> Result<Option<GroupRecords>, GroupError> {
        loop {
            let event = tokio::select! {
                event = self.poll() => event,
                () = stop.as_mut() => return Ok(None),
            };
            match event {
                Ok(GroupEvent::Records(records)) => return Ok(Some(records)),
                Ok(GroupEvent::Assigned(_)) => {}
                Err(GroupError::Removed(error)) => {
                    tracing::warn!(%error, "the {member} was removed from its group; rejoining");
                    self.rejoin().await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The member id the server gave this member.
    pub fn member_id(&self) -> &str {
        &self.member.member_id
    }

    /// The generation of the latest assignment; 0 before the first.
    pub fn generation(&self) -> u64 {
        self.member.generation
    }

    /// The partitions owned now.
    pub fn owned(&self) -> impl Iterator<Item = &TopicPartition> {
        self.member.partitions.keys()
    }

    /// The next offset of an owned partition: one past the last record handed out.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        let key = TopicPartition { topic: topic.to_owned(), partition };
        self.member.partitions.get(&key).and_then(|state| state.position)
    }

    /// True once the member has an assignment and every owned partition was handed out up to
    /// the end it last reported (then a `poll` may wait for new records). Commits may still
    /// be in flight: [`GroupConsumer::close`] waits for them.
    pub fn caught_up(&self) -> bool {
        let member = &self.member;
        member.generation > 0
            && member.held.is_empty()
            && member.partitions.values().all(|state| {
                match (state.position, state.log_end_offset) {
                    (Some(position), Some(end)) => position >= end,
                    _ => false,
                }
            })
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: Code) -> wire::CommitResult {
        wire::CommitResult { commit_id: 1, code: code as i32, message: "why".into() }
    }

    #[test]
    fn commit_answers_map_to_errors_a_caller_can_match_on() {
        assert_eq!(commit_outcome(3, answer(Code::Ok)), Ok(()));
        let fenced = commit_outcome(3, answer(Code::FailedPrecondition)).unwrap_err();
        assert!(matches!(
            fenced,
            GroupError::CommitFenced {
                generation: 3,
                error: ServerError { code: ErrorCode::FailedPrecondition, .. }
            }
        ));
        let failed = commit_outcome(3, answer(Code::InvalidArgument)).unwrap_err();
        assert!(
            matches!(failed, GroupError::CommitFailed(e) if e.code == ErrorCode::InvalidArgument)
        );
    }
}
