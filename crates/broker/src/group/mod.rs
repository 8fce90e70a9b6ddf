//! Consumer groups: membership, cooperative rebalancing, generations and committed offsets,
//! as a synchronous, deterministic state machine. Time enters as a [`TimestampMs`] passed to
//! every call (`now`, which must never go backwards); nothing here sleeps, spawns or does
//! I/O. The server drives it: it calls [`Coordinator::tick`] at [`Coordinator::next_deadline`],
//! persists the [`CommitRecord`]s it returns, and tells members what [`Coordinator::view`]
//! shows them.
//!
//! ## The protocol, from the group's side
//!
//! - A member joins a group with a [`Subscription`] (topics, and where to start when nothing
//!   is committed). All members of a group have the same subscription.
//! - Every change of membership (a join, a leave, a removal) starts a new *generation* and
//!   computes a target assignment (the `assign` module): balanced, and moving as few
//!   partitions as possible.
//! - A partition whose target owner differs from its current owner is first *revoked*: its
//!   owner is told, may commit it, and acknowledges with [`Coordinator::revoked`]. Only then is
//!   the partition given to its new owner. Partitions that do not move stay owned throughout:
//!   the rebalance is cooperative.
//! - A member is removed when it leaves, when nothing is heard from it for its session
//!   timeout, or when it does not acknowledge a revocation within its session timeout. Its
//!   partitions are then free at once (it is presumed dead).
//! - A commit names the generation the member knows. It is accepted only from a member of the
//!   group, for partitions it owns (including ones being revoked from it, which it may commit
//!   before acknowledging), and only if the generation is not older than the one at which
//!   the member got each partition (its *tenure*) nor newer than the group's. A commit from an
//!   earlier tenure, or from a member presumed dead, is refused: it can never overwrite a
//!   successor's progress. (A member's commits of partitions it keeps stay valid across
//!   rebalances that do not move them.)
//!
//! ## Invariants (checked by the model test in `tests.rs`)
//!
//! - Every partition of a live group's subscription has at most one owner, and that owner is
//!   a member of the group.
//! - A partition moves from one member to another only after the first acknowledged its
//!   revocation or was removed.
//! - When no revocation is pending, every partition has an owner and shares differ by at most
//!   one.

mod assign;
pub mod classic;
mod offsets;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use spool_storage::{Offset, TimestampMs};
use thiserror::Error;

pub use offsets::{
    ClassicGroupRecord, ClassicStable, ClassicStoredMember, CommitRecord, CommitRecordError,
    CommittedOffsets, MembersRecord, OffsetsRecord, StoredMember, StoredMembers, StoredOwned,
};

use self::classic::{ClassicError, ClassicGroups, ConsumedTopics, JoinRequest, Replies, Ticket};
use crate::limits::{
    CLASSIC_COMMIT_METADATA_BYTES_MAX, CLASSIC_GROUP_METADATA_BYTES_MAX,
    CLASSIC_INITIAL_REBALANCE_DELAY_MS, COMMIT_OFFSETS_MAX, GROUP_MEMBERS_MAX, GROUP_TOPICS_MAX,
    GROUPS_KNOWN_MAX, GROUPS_LIVE_MAX,
};
use crate::{TopicName, TopicNameError};

/// A valid group name: the same rule as topic names (1 to 249 characters from
/// `[a-zA-Z0-9._-]`, not `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("bad group name: {}", .0.to_string().replace("topic name", "name"))]
pub struct GroupNameError(TopicNameError);

impl GroupName {
    pub fn parse(name: &str) -> Result<GroupName, GroupNameError> {
        TopicName::parse(name).map(|_| GroupName(name.to_owned())).map_err(GroupNameError)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A member's id, unique within one server run: `{instance:x}-{n}`, where the instance
/// differs between runs, so an id from before a restart never names a new member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId(String);

impl MemberId {
    pub fn new(instance: u64, n: u64) -> MemberId {
        MemberId(format!("{instance:x}-{n}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: TopicName,
    pub partition: u32,
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where a member starts a partition that has no committed offset (or whose committed offset
/// is no longer in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
}

/// What a group consumes: topics with their partition counts, and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub topics: BTreeMap<TopicName, u32>,
    pub reset: OffsetReset,
}

impl Subscription {
    fn partitions(&self) -> BTreeSet<TopicPartition> {
        self.topics
            .iter()
            .flat_map(|(topic, &count)| {
                (0..count).map(|partition| TopicPartition { topic: topic.clone(), partition })
            })
            .collect()
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let topics: Vec<String> =
            self.topics.iter().map(|(t, n)| format!("{t} ({n} partitions)")).collect();
        let reset = match self.reset {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        };
        write!(f, "[{}] starting at {reset}", topics.join(", "))
    }
}

/// Why a member left its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// It said so, or its stream ended.
    Left,
    /// Nothing was heard from it for this many milliseconds.
    SessionTimeout { session_timeout_ms: u64 },
    /// It did not acknowledge a revocation within this many milliseconds.
    RevocationTimeout { session_timeout_ms: u64 },
    /// This server stopped coordinating the groups (a node of a cluster whose offsets group
    /// elected another leader): the member stays stored, to resume where they are
    /// coordinated now.
    CoordinatorMoved,
}

impl fmt::Display for Removal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Removal::Left => write!(f, "it left"),
            Removal::SessionTimeout { session_timeout_ms } => {
                write!(
                    f,
                    "nothing was heard from it for its session timeout of {session_timeout_ms} ms"
                )
            }
            Removal::RevocationTimeout { session_timeout_ms } => write!(
                f,
                "it did not acknowledge a revocation within its session timeout of {session_timeout_ms} ms"
            ),
            Removal::CoordinatorMoved => write!(f, "this node no longer coordinates the groups"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JoinError {
    #[error("a member must consume 1..={GROUP_TOPICS_MAX} topics; this one named {topics}")]
    Topics { topics: usize },
    #[error(
        "group {group} consumes {current}; a member asking for {requested} cannot join it until every current member has left"
    )]
    SubscriptionMismatch { group: GroupName, current: String, requested: String },
    #[error("group {group} already has {GROUP_MEMBERS_MAX} members, the limit")]
    TooManyMembers { group: GroupName },
    #[error("the server already coordinates {GROUPS_LIVE_MAX} live groups, the limit")]
    TooManyLiveGroups,
    #[error("the server already keeps offsets for {GROUPS_KNOWN_MAX} groups, the limit")]
    TooManyGroups,
    #[error(
        "group {group} is in use by Kafka clients (the classic group protocol); a group is used by one protocol at a time"
    )]
    InUseByKafka { group: GroupName },
}

/// Why a commit is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommitError {
    #[error("member {member} is not in group {group}")]
    NotAMember { group: GroupName, member: MemberId },
    #[error(
        "the commit names generation {generation}, but member {member} owns {partition} only since generation {owned_since}: the commit is from before it was given the partition"
    )]
    StaleGeneration {
        member: MemberId,
        partition: TopicPartition,
        generation: u64,
        owned_since: u64,
    },
    #[error(
        "the commit names generation {generation}, but group {group} is at generation {current}"
    )]
    FutureGeneration { group: GroupName, generation: u64, current: u64 },
    #[error("member {member} does not own partition {partition} at generation {generation}")]
    NotOwner { member: MemberId, partition: TopicPartition, generation: u64 },
    #[error("a commit may carry at most {COMMIT_OFFSETS_MAX} offsets; this one has {offsets}")]
    TooManyOffsets { offsets: usize },
}

/// Why a reset is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResetError {
    #[error(
        "group {group} has {members} live members: a reset is allowed only while it has none (stop its consumers first)"
    )]
    LiveMembers { group: GroupName, members: usize },
}

/// Why a deletion is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeleteError {
    #[error(
        "group {group} has {members} live members: it can be deleted only while it has none (stop its consumers first)"
    )]
    LiveMembers { group: GroupName, members: usize },
    #[error("group {group} has no members and no committed offsets")]
    Unknown { group: GroupName },
}

/// Why some of a group's committed offsets cannot be forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeleteOffsetsError {
    #[error("group {group} has no members and no committed offsets")]
    Unknown { group: GroupName },
    #[error(
        "group {group} has live members that are not Kafka consumers: its offsets can be deleted only while it has none"
    )]
    NotConsumers { group: GroupName },
    #[error(
        "group {group} has live members consuming topic {topic}: its offsets of the topic can be deleted only while none does (stop them first)"
    )]
    Consumed { group: GroupName, topic: TopicName },
}

/// What [`Coordinator::delete_offsets`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetsDeletion {
    pub group: GroupName,
    /// Of the partitions asked, those that had an offset, now forgotten, with that offset.
    pub forgotten: BTreeMap<TopicPartition, Offset>,
    /// Of the partitions asked, those of a topic a live member consumes: their offsets stay.
    pub consumed: BTreeSet<TopicPartition>,
}

impl OffsetsDeletion {
    /// The record to persist; `None` when nothing was forgotten.
    pub fn record(&self) -> Option<OffsetsRecord> {
        let partitions = self.forgotten.keys().cloned().collect::<Vec<_>>();
        (!partitions.is_empty())
            .then(|| OffsetsRecord::Forget { group: self.group.clone(), partitions })
    }
}

/// Whether members consuming `consumed` (see [`Coordinator::consumed_topics`]) consume
/// `topic`.
fn consumes(consumed: &Option<ConsumedTopics>, topic: &TopicName) -> bool {
    match consumed {
        None => false,
        Some(ConsumedTopics::Some(topics)) => topics.contains(topic.as_str()),
        Some(ConsumedTopics::Every | ConsumedTopics::NotConsumers) => true,
    }
}

/// What one member may see: its generation, the partitions it owns, and the ones being
/// revoked from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub generation: u64,
    pub subscription: Subscription,
    pub owned: BTreeSet<TopicPartition>,
    pub revoking: BTreeSet<TopicPartition>,
    /// For each partition owned or revoking: the generation at which the member got it.
    pub owned_since: BTreeMap<TopicPartition, u64>,
}

/// Members whose view changed, and members that were removed (and why).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub wake: Vec<MemberId>,
    pub removed: Vec<(MemberId, Removal)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members; only committed offsets.
    Empty,
    /// Revocations are pending: some partitions are moving.
    Rebalancing,
    /// Every partition is owned and nothing is moving.
    Stable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub id: MemberId,
    pub session_timeout_ms: u64,
    pub owned: Vec<TopicPartition>,
    pub revoking: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDescription {
    pub partition: TopicPartition,
    pub owner: Option<MemberId>,
    pub revoking: bool,
    pub committed: Option<Offset>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub name: GroupName,
    pub state: GroupState,
    /// 0 for an empty group.
    pub generation: u64,
    pub subscription: Option<Subscription>,
    pub members: Vec<MemberDescription>,
    /// The subscription's partitions for a live group, the committed ones for an empty one;
    /// for a live Kafka group, the committed ones and those its consumers' assignments name.
    pub partitions: Vec<PartitionDescription>,
}

#[derive(Debug)]
struct Member {
    session_timeout_ms: u64,
    last_heard: TimestampMs,
}

/// A partition's owner; `revoke_deadline` is set while it is being revoked from it, and
/// `owned_since` is the generation at which the owner got it.
#[derive(Debug, Default)]
struct Slot {
    owner: Option<MemberId>,
    revoke_deadline: Option<TimestampMs>,
    owned_since: u64,
}

#[derive(Debug)]
struct Group {
    subscription: Subscription,
    generation: u64,
    members: BTreeMap<MemberId, Member>,
    slots: BTreeMap<TopicPartition, Slot>,
    target: BTreeMap<TopicPartition, MemberId>,
}

/// Every group of one server.
#[derive(Debug)]
pub struct Coordinator {
    instance: u64,
    next_member: u64,
    groups: BTreeMap<GroupName, Group>,
    committed: CommittedOffsets,
    /// Groups of Kafka clients. A name is live in at most one of `groups` and `classic`.
    classic: ClassicGroups,
    /// Spool groups whose members or ownership changed since [`Coordinator::member_records`]
    /// last took them.
    changed: BTreeSet<GroupName>,
}

impl Group {
    fn new(subscription: Subscription) -> Group {
        let slots = subscription.partitions().into_iter().map(|p| (p, Slot::default())).collect();
        Group {
            subscription,
            generation: 0,
            members: BTreeMap::new(),
            slots,
            target: BTreeMap::new(),
        }
    }

    fn member_ids(&self) -> Vec<MemberId> {
        self.members.keys().cloned().collect()
    }

    /// Starts a new generation: computes the target, revokes what must move, and gives free
    /// partitions to their target owners.
    fn rebalance(&mut self, now: TimestampMs) {
        self.generation += 1;
        let members: BTreeSet<MemberId> = self.members.keys().cloned().collect();
        let partitions: BTreeSet<TopicPartition> = self.slots.keys().cloned().collect();
        let held: BTreeMap<TopicPartition, MemberId> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.revoke_deadline.is_none())
            .filter_map(|(p, slot)| slot.owner.clone().map(|owner| (p.clone(), owner)))
            .collect();
        self.target = assign::assign(&members, &partitions, &held);
        for (partition, slot) in &mut self.slots {
            let target = self.target.get(partition);
            match &slot.owner {
                Some(owner) if slot.revoke_deadline.is_none() && target != Some(owner) => {
                    let timeout = self.members[owner].session_timeout_ms;
                    slot.revoke_deadline = Some(now.plus_ms(timeout));
                }
                Some(_) => {}
                None => {
                    slot.owner = target.cloned();
                    slot.owned_since = self.generation;
                }
            }
        }
    }

    fn remove(&mut self, member: &MemberId) {
        self.members.remove(member);
        for slot in self.slots.values_mut() {
            if slot.owner.as_ref() == Some(member) {
                *slot = Slot::default();
            }
        }
    }

    /// The group as stored ([`StoredMembers`]).
    fn stored(&self) -> StoredMembers {
        let mut members: BTreeMap<&MemberId, StoredMember> = self
            .members
            .iter()
            .map(|(id, member)| {
                let session_timeout_ms = member.session_timeout_ms;
                (id, StoredMember { id: id.to_string(), session_timeout_ms, owned: Vec::new() })
            })
            .collect();
        let topic_index: BTreeMap<&TopicName, u32> =
            self.subscription.topics.keys().zip(0..).collect();
        for (partition, slot) in &self.slots {
            if let Some(member) = slot.owner.as_ref().and_then(|owner| members.get_mut(owner)) {
                member.owned.push(StoredOwned {
                    topic_index: topic_index[&partition.topic],
                    partition: partition.partition,
                    since: slot.owned_since,
                    revoking: slot.revoke_deadline.is_some(),
                });
            }
        }
        StoredMembers {
            generation: self.generation,
            topics: self.subscription.topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            reset: match self.subscription.reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            }
            .to_owned(),
            members: members.into_values().collect(),
        }
    }

    /// A group as stored, its members last heard at `now` and each revocation due within
    /// its owner's session timeout of `now`, at a new generation (see
    /// [`Coordinator::restore_members`]); `None` when what is stored does not make a group
    /// (no members, a name that is not valid, a partition with two owners).
    fn restore(stored: &StoredMembers, now: TimestampMs) -> Option<Group> {
        let topics = stored
            .topics
            .iter()
            .map(|(topic, count)| Some((TopicName::parse(topic).ok()?, *count)))
            .collect::<Option<BTreeMap<_, _>>>()?;
        let reset = match stored.reset.as_str() {
            "earliest" => OffsetReset::Earliest,
            "latest" => OffsetReset::Latest,
            _ => return None,
        };
        let names: Vec<TopicName> = topics.keys().cloned().collect();
        let mut group = Group::new(Subscription { topics, reset });
        group.generation = stored.generation;
        for member in &stored.members {
            let id = MemberId(member.id.clone());
            let session_timeout_ms = member.session_timeout_ms.max(1);
            group.members.insert(id.clone(), Member { session_timeout_ms, last_heard: now });
            for owned in &member.owned {
                let topic = names.get(owned.topic_index as usize)?.clone();
                let partition = TopicPartition { topic, partition: owned.partition };
                let Some(slot) = group.slots.get_mut(&partition) else { continue };
                if slot.owner.is_some() {
                    return None;
                }
                slot.owner = Some(id.clone());
                slot.owned_since = owned.since.min(stored.generation);
                slot.revoke_deadline = owned.revoking.then(|| now.plus_ms(session_timeout_ms));
            }
        }
        if group.members.is_empty() || group.members.len() != stored.members.len() {
            return None;
        }
        // A new generation: its target is what pending revocations move towards, and any
        // partition without an owner gets one.
        group.rebalance(now);
        Some(group)
    }

    fn state(&self) -> GroupState {
        if self.slots.values().any(|s| s.revoke_deadline.is_some()) {
            GroupState::Rebalancing
        } else {
            GroupState::Stable
        }
    }
}

impl Coordinator {
    /// A coordinator for one server run. `instance` must differ between runs (the server
    /// uses its start time); `committed` is what the offsets log folded to.
    pub fn new(instance: u64, committed: CommittedOffsets) -> Coordinator {
        Coordinator {
            instance,
            next_member: 1,
            groups: BTreeMap::new(),
            committed,
            classic: ClassicGroups::new(instance, CLASSIC_INITIAL_REBALANCE_DELAY_MS),
            changed: BTreeSet::new(),
        }
    }

    /// Live Spool groups (Kafka's: [`ClassicGroups::live_count`]).
    pub fn spool_live_count(&self) -> usize {
        self.groups.len()
    }

    /// Live groups of either protocol.
    fn live_count(&self) -> usize {
        self.groups.len() + self.classic.live_count()
    }

    /// Whether a group not live under either protocol may become live: the live and known
    /// limits.
    fn may_create(&self, group: &GroupName) -> bool {
        self.live_count() < GROUPS_LIVE_MAX
            && (self.committed.has_group(group)
                || self.committed.group_count() + self.live_count() < GROUPS_KNOWN_MAX)
    }

    /// A Kafka JoinGroup (see [`ClassicGroups::join`]); refused at once when the name is a live
    /// Spool group.
    pub fn classic_join(
        &mut self,
        group: &GroupName,
        request: JoinRequest,
        now: TimestampMs,
    ) -> Result<(Ticket, Replies), ClassicError> {
        if self.groups.contains_key(group) {
            return Err(ClassicError::InUseBySpool { group: group.clone() });
        }
        let may_create = self.classic.is_live(group) || self.may_create(group);
        Ok(self.classic.join(group, request, may_create, now))
    }

    /// A Kafka OffsetCommit: checked against the classic group (see
    /// [`ClassicGroups::check_commit`]) and applied; returns the record to persist.
    /// `metadata` holds the non-empty metadata strings of some of `offsets`' partitions.
    pub fn classic_commit(
        &mut self,
        group: &GroupName,
        member_id: &str,
        generation: i32,
        offsets: Vec<(TopicPartition, Offset)>,
        metadata: BTreeMap<TopicPartition, String>,
        now: TimestampMs,
    ) -> Result<CommitRecord, ClassicError> {
        assert!(offsets.len() <= COMMIT_OFFSETS_MAX, "the server bounds commits at the edge");
        assert!(metadata.values().all(|m| m.len() <= CLASSIC_COMMIT_METADATA_BYTES_MAX));
        if self.groups.contains_key(group) {
            return Err(ClassicError::InUseBySpool { group: group.clone() });
        }
        self.classic.check_commit(group, member_id, generation, now)?;
        let held: usize = self
            .committed
            .metadata_of_group(group)
            .filter(|(p, _)| !offsets.iter().any(|(o, _)| o == *p))
            .map(|(_, m)| m.len())
            .sum();
        if held + metadata.values().map(String::len).sum::<usize>()
            > CLASSIC_GROUP_METADATA_BYTES_MAX
        {
            return Err(ClassicError::MetadataTooLarge);
        }
        let known = self.classic.is_live(group) || self.committed.has_group(group);
        if !known && self.committed.group_count() + self.live_count() >= GROUPS_KNOWN_MAX {
            return Err(ClassicError::Exhausted);
        }
        let record = CommitRecord { group: group.clone(), offsets, metadata };
        self.committed.apply(&record);
        Ok(record)
    }

    pub fn classic(&self) -> &ClassicGroups {
        &self.classic
    }

    /// The state to store of each Kafka classic group that changed since the last call
    /// ([`ClassicGroups::take_records`]), applied to the committed state as decided: the
    /// caller persists them, in this order, with the commits decided around them.
    pub fn classic_records(&mut self) -> Vec<(ClassicGroupRecord, Vec<u8>)> {
        let records = self.classic.take_records();
        for (record, _) in &records {
            self.committed.apply_record(&OffsetsRecord::Classic(record.clone()));
        }
        records
    }

    /// Drops every Kafka classic group (a node of a cluster that no longer coordinates
    /// them); what is stored stays. Waiting requests are answered, as by a restore.
    pub fn drop_classic(&mut self) -> Replies {
        self.classic.restore(std::iter::empty(), |_| false, TimestampMs(0))
    }

    /// The stored members of each Spool group whose members or ownership changed since the
    /// last call, applied to the committed state as decided: the caller persists them, in
    /// this order, with the commits decided around them.
    pub fn member_records(&mut self) -> Vec<OffsetsRecord> {
        let mut records = Vec::new();
        for group in std::mem::take(&mut self.changed) {
            let members = self.groups.get(&group).map(Group::stored);
            if self.committed.members_of(&group) == members.as_ref() {
                continue;
            }
            let record = OffsetsRecord::Members(MembersRecord { group, members });
            self.committed.apply_record(&record);
            records.push(record);
        }
        records
    }

    /// Takes the Spool groups' stored members back: a coordinator taking over, at start or
    /// after a failover. Each group starts a new generation in which every member keeps its
    /// partitions (and its pending revocations) until it joins again naming its id, or is
    /// removed when its session timeout passes from `now` without that. Groups live here
    /// already stay as they are; what cannot be taken back (past the live limit, or not
    /// valid) is forgotten by the next [`Coordinator::member_records`].
    pub fn restore_members(&mut self, now: TimestampMs) {
        let stored: Vec<(GroupName, StoredMembers)> = self
            .committed
            .stored_members()
            .map(|(group, members)| (group.clone(), members.clone()))
            .collect();
        for (name, stored) in stored {
            if self.groups.contains_key(&name) || self.classic.is_live(&name) {
                continue;
            }
            self.changed.insert(name.clone());
            if self.live_count() >= GROUPS_LIVE_MAX {
                continue;
            }
            if let Some(group) = Group::restore(&stored, now) {
                self.groups.insert(name, group);
            }
        }
    }

    /// Drops every Spool group (a node of a cluster that no longer coordinates them): each
    /// member is removed ([`Removal::CoordinatorMoved`]); what is stored stays.
    pub fn drop_members(&mut self) -> Changes {
        let mut changes = Changes::default();
        for group in std::mem::take(&mut self.groups).into_values() {
            for member in group.members.into_keys() {
                changes.wake.push(member.clone());
                changes.removed.push((member, Removal::CoordinatorMoved));
            }
        }
        self.changed.clear();
        changes
    }

    /// Takes the Kafka classic groups back from the committed state (see
    /// [`ClassicGroups::restore`]): a coordinator taking over, at start or after a failover.
    pub fn restore_classic(&mut self, now: TimestampMs) -> Replies {
        let live = &self.groups;
        let stored = self.committed.classic_groups();
        self.classic.restore(stored, |name| live.contains_key(name), now)
    }

    pub fn classic_mut(&mut self) -> &mut ClassicGroups {
        &mut self.classic
    }

    /// The metadata committed with a partition's offset (empty when none).
    pub fn committed_metadata(&self, group: &GroupName, partition: &TopicPartition) -> &str {
        self.committed.metadata(group, partition)
    }

    /// Adds a member and rebalances its group; or, when `resume` names a member of the group
    /// and the subscription is the group's, that member is heard from and keeps what it has
    /// (the caller moves it to its new stream; `wake` names it alone).
    pub fn join(
        &mut self,
        group: &GroupName,
        subscription: Subscription,
        session_timeout_ms: u64,
        resume: Option<&str>,
        now: TimestampMs,
    ) -> Result<(MemberId, Changes), JoinError> {
        assert!(session_timeout_ms > 0, "the server checks session timeouts at the edge");
        if subscription.topics.is_empty() || subscription.topics.len() > GROUP_TOPICS_MAX {
            return Err(JoinError::Topics { topics: subscription.topics.len() });
        }
        let resumed = resume.map(|id| MemberId(id.to_owned()));
        let live = self.groups.get_mut(group).filter(|live| live.subscription == subscription);
        if let (Some(live), Some(id)) = (live, resumed)
            && let Some(member) = live.members.get_mut(&id)
        {
            member.session_timeout_ms = session_timeout_ms;
            member.last_heard = member.last_heard.max(now);
            self.changed.insert(group.clone());
            return Ok((id.clone(), Changes { wake: vec![id], removed: Vec::new() }));
        }
        if self.classic.is_live(group) {
            return Err(JoinError::InUseByKafka { group: group.clone() });
        }
        match self.groups.get(group) {
            Some(live) if live.subscription != subscription => {
                return Err(JoinError::SubscriptionMismatch {
                    group: group.clone(),
                    current: live.subscription.to_string(),
                    requested: subscription.to_string(),
                });
            }
            Some(live) if live.members.len() >= GROUP_MEMBERS_MAX => {
                return Err(JoinError::TooManyMembers { group: group.clone() });
            }
            Some(_) => {}
            None if self.live_count() >= GROUPS_LIVE_MAX => {
                return Err(JoinError::TooManyLiveGroups);
            }
            None if !self.committed.has_group(group)
                && self.committed.group_count() + self.live_count() >= GROUPS_KNOWN_MAX =>
            {
                return Err(JoinError::TooManyGroups);
            }
            None => {
                self.groups.insert(group.clone(), Group::new(subscription));
            }
        }
        // Not an id a member taken back from an earlier run holds (their ids carry another
        // run's instance, which a coordinator started in the same millisecond may share).
        let member = loop {
            let id = MemberId::new(self.instance, self.next_member);
            self.next_member += 1;
            if !self.groups.values().any(|g| g.members.contains_key(&id)) {
                break id;
            }
        };
        let live = self.groups.get_mut(group).expect("just checked or inserted");
        live.members.insert(member.clone(), Member { session_timeout_ms, last_heard: now });
        live.rebalance(now);
        self.changed.insert(group.clone());
        Ok((member, Changes { wake: live.member_ids(), removed: Vec::new() }))
    }

    /// Notes that `member` was heard from. `false` when it is no longer a member.
    pub fn heard_from(&mut self, group: &GroupName, member: &MemberId, now: TimestampMs) -> bool {
        match self.groups.get_mut(group).and_then(|g| g.members.get_mut(member)) {
            Some(state) => {
                state.last_heard = state.last_heard.max(now);
                true
            }
            None => false,
        }
    }

    /// Removes a member that left (or whose stream ended) and rebalances its group.
    pub fn leave(&mut self, group: &GroupName, member: &MemberId, now: TimestampMs) -> Changes {
        self.remove(group, &[(member.clone(), Removal::Left)], now)
    }

    fn remove(
        &mut self,
        group: &GroupName,
        removed: &[(MemberId, Removal)],
        now: TimestampMs,
    ) -> Changes {
        let Some(live) = self.groups.get_mut(group) else {
            return Changes::default();
        };
        let removed: Vec<(MemberId, Removal)> =
            removed.iter().filter(|(m, _)| live.members.contains_key(m)).cloned().collect();
        if removed.is_empty() {
            return Changes::default();
        }
        for (member, _) in &removed {
            live.remove(member);
        }
        self.changed.insert(group.clone());
        let wake = live.member_ids();
        if live.members.is_empty() {
            self.groups.remove(group);
        } else {
            live.rebalance(now);
        }
        let mut wake = wake;
        wake.extend(removed.iter().map(|(m, _)| m.clone()));
        Changes { wake, removed }
    }

    /// `member` acknowledges that it stopped consuming `partitions` (those being revoked from
    /// it; others are ignored). Each goes to its target owner.
    pub fn revoked(
        &mut self,
        group: &GroupName,
        member: &MemberId,
        partitions: &[TopicPartition],
        now: TimestampMs,
    ) -> Changes {
        if !self.heard_from(group, member, now) {
            return Changes::default();
        }
        let live = self.groups.get_mut(group).expect("the member's group is live");
        let mut wake = BTreeSet::new();
        for partition in partitions {
            let Some(slot) = live.slots.get_mut(partition) else { continue };
            if slot.owner.as_ref() != Some(member) || slot.revoke_deadline.is_none() {
                continue;
            }
            slot.revoke_deadline = None;
            slot.owner = live.target.get(partition).cloned();
            slot.owned_since = live.generation;
            wake.insert(member.clone());
            wake.extend(slot.owner.clone());
        }
        if !wake.is_empty() {
            self.changed.insert(group.clone());
        }
        Changes { wake: wake.into_iter().collect(), removed: Vec::new() }
    }

    /// Checks a commit and, when it is accepted, applies it to the committed offsets and
    /// returns the record to persist (the caller acknowledges the commit once it is durable).
    pub fn commit(
        &mut self,
        group: &GroupName,
        member: &MemberId,
        generation: u64,
        offsets: Vec<(TopicPartition, Offset)>,
        now: TimestampMs,
    ) -> Result<CommitRecord, CommitError> {
        if offsets.len() > COMMIT_OFFSETS_MAX {
            return Err(CommitError::TooManyOffsets { offsets: offsets.len() });
        }
        if !self.heard_from(group, member, now) {
            return Err(CommitError::NotAMember { group: group.clone(), member: member.clone() });
        }
        let live = &self.groups[group];
        if generation > live.generation {
            return Err(CommitError::FutureGeneration {
                group: group.clone(),
                generation,
                current: live.generation,
            });
        }
        for (partition, _) in &offsets {
            let slot = live.slots.get(partition).filter(|slot| slot.owner.as_ref() == Some(member));
            let Some(slot) = slot else {
                return Err(CommitError::NotOwner {
                    member: member.clone(),
                    partition: partition.clone(),
                    generation,
                });
            };
            if generation < slot.owned_since {
                return Err(CommitError::StaleGeneration {
                    member: member.clone(),
                    partition: partition.clone(),
                    generation,
                    owned_since: slot.owned_since,
                });
            }
        }
        let record = CommitRecord { group: group.clone(), offsets, metadata: BTreeMap::new() };
        self.committed.apply(&record);
        Ok(record)
    }

    /// Sets a group's committed offsets, refused while it has live members. Returns the
    /// record to persist.
    pub fn reset(
        &mut self,
        group: &GroupName,
        offsets: Vec<(TopicPartition, Offset)>,
    ) -> Result<CommitRecord, ResetError> {
        if let Some(members) = self.live_members(group) {
            return Err(ResetError::LiveMembers { group: group.clone(), members });
        }
        let record = CommitRecord { group: group.clone(), offsets, metadata: BTreeMap::new() };
        self.committed.apply(&record);
        Ok(record)
    }

    /// Deletes a group without live members: forgets its committed offsets. Returns the
    /// record to persist and the offsets it forgot, sorted.
    pub fn delete(
        &mut self,
        group: &GroupName,
    ) -> Result<(OffsetsRecord, Vec<(TopicPartition, Offset)>), DeleteError> {
        if let Some(members) = self.live_members(group) {
            return Err(DeleteError::LiveMembers { group: group.clone(), members });
        }
        if !self.committed.has_group(group) {
            return Err(DeleteError::Unknown { group: group.clone() });
        }
        let forgotten = self.committed.remove(group);
        Ok((OffsetsRecord::Delete { group: group.clone() }, forgotten))
    }

    /// Forgets a group's committed offsets of `partitions` (Kafka's OffsetDelete), but for
    /// those of topics its live members consume, which stay (see
    /// [`ClassicGroups::consumed_topics`]). A group with live members that are not Kafka
    /// consumers keeps them all.
    pub fn delete_offsets(
        &mut self,
        group: &GroupName,
        partitions: &[TopicPartition],
    ) -> Result<OffsetsDeletion, DeleteOffsetsError> {
        let consumed = self.consumed_topics(group);
        let consumes = |partition: &TopicPartition| consumes(&consumed, &partition.topic);
        match &consumed {
            None if !self.committed.has_group(group) => {
                return Err(DeleteOffsetsError::Unknown { group: group.clone() });
            }
            Some(ConsumedTopics::NotConsumers) => {
                return Err(DeleteOffsetsError::NotConsumers { group: group.clone() });
            }
            _ => {}
        }
        let (consumed, free): (Vec<_>, Vec<_>) = partitions.iter().cloned().partition(consumes);
        let forgotten = self.committed.forget(group, &free).into_iter().collect();
        let consumed = consumed.into_iter().collect();
        Ok(OffsetsDeletion { group: group.clone(), forgotten, consumed })
    }

    /// [`Coordinator::delete_offsets`] of `partitions`, all of `topic`: refused whole while a
    /// live member consumes the topic.
    pub fn delete_topic_offsets(
        &mut self,
        group: &GroupName,
        topic: &TopicName,
        partitions: &[TopicPartition],
    ) -> Result<OffsetsDeletion, DeleteOffsetsError> {
        let consumed = self.consumed_topics(group);
        if !matches!(consumed, Some(ConsumedTopics::NotConsumers)) && consumes(&consumed, topic) {
            return Err(DeleteOffsetsError::Consumed {
                group: group.clone(),
                topic: topic.clone(),
            });
        }
        self.delete_offsets(group, partitions)
    }

    /// What a group's live members consume, under either protocol; `None` when it is not
    /// live.
    fn consumed_topics(&self, group: &GroupName) -> Option<ConsumedTopics> {
        match self.groups.get(group) {
            Some(live) => Some(ConsumedTopics::Some(
                live.subscription.topics.keys().map(|t| t.to_string()).collect(),
            )),
            None => self.classic.consumed_topics(group),
        }
    }

    /// Forgets every group's committed offsets of the topics `gone` picks (topics deleted, as
    /// Kafka's coordinator forgets the offsets of deleted partitions), so that a topic made
    /// again under the name starts with none. Returns the records to persist: per group,
    /// at most [`COMMIT_OFFSETS_MAX`] partitions each.
    pub fn forget_topics(&mut self, gone: impl Fn(&TopicName) -> bool) -> Vec<OffsetsRecord> {
        let mut records = Vec::new();
        for (group, partitions) in self.committed.partitions_of_topics(gone) {
            self.committed.forget(&group, &partitions);
            for chunk in partitions.chunks(COMMIT_OFFSETS_MAX) {
                let partitions = chunk.to_vec();
                records.push(OffsetsRecord::Forget { group: group.clone(), partitions });
            }
        }
        records
    }

    /// The members of a group live under either protocol; `None` when it is not live.
    fn live_members(&self, group: &GroupName) -> Option<usize> {
        match self.groups.get(group) {
            Some(live) => Some(live.members.len()),
            None => self.classic.is_live(group).then(|| self.classic.member_count(group)),
        }
    }

    /// `topic` now has `partitions`: every live group subscribed to it takes the new ones in a
    /// rebalance. (Kafka groups learn it from Metadata and rejoin on their own.)
    pub fn topic_grew(&mut self, topic: &TopicName, partitions: u32, now: TimestampMs) -> Changes {
        let mut changes = Changes::default();
        for (name, live) in &mut self.groups {
            let Some(count) = live.subscription.topics.get_mut(topic) else { continue };
            if *count >= partitions {
                continue;
            }
            for partition in *count..partitions {
                let added = TopicPartition { topic: topic.clone(), partition };
                live.slots.insert(added, Slot::default());
            }
            *count = partitions;
            live.rebalance(now);
            changes.wake.extend(live.member_ids());
            self.changed.insert(name.clone());
        }
        changes
    }

    /// Removes members whose session or revocation deadline passed, and rebalances.
    pub fn tick(&mut self, now: TimestampMs) -> Changes {
        let mut changes = Changes::default();
        let names: Vec<GroupName> = self.groups.keys().cloned().collect();
        for name in names {
            let live = &self.groups[&name];
            let mut expired: BTreeMap<MemberId, Removal> = live
                .members
                .iter()
                .filter(|(_, m)| m.last_heard.plus_ms(m.session_timeout_ms) <= now)
                .map(|(id, m)| {
                    (
                        id.clone(),
                        Removal::SessionTimeout { session_timeout_ms: m.session_timeout_ms },
                    )
                })
                .collect();
            for slot in live.slots.values() {
                if let (Some(owner), Some(deadline)) = (&slot.owner, slot.revoke_deadline)
                    && deadline <= now
                {
                    let session_timeout_ms = live.members[owner].session_timeout_ms;
                    expired
                        .entry(owner.clone())
                        .or_insert(Removal::RevocationTimeout { session_timeout_ms });
                }
            }
            if expired.is_empty() {
                continue;
            }
            let expired: Vec<(MemberId, Removal)> = expired.into_iter().collect();
            let group_changes = self.remove(&name, &expired, now);
            changes.wake.extend(group_changes.wake);
            changes.removed.extend(group_changes.removed);
        }
        changes
    }

    /// The earliest time [`Coordinator::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<TimestampMs> {
        self.groups
            .values()
            .flat_map(|g| {
                let sessions =
                    g.members.values().map(|m| m.last_heard.plus_ms(m.session_timeout_ms));
                let revocations = g.slots.values().filter_map(|s| s.revoke_deadline);
                sessions.chain(revocations)
            })
            .min()
    }

    /// What `member` may see, or `None` once it is not a member.
    pub fn view(&self, group: &GroupName, member: &MemberId) -> Option<MemberView> {
        let live = self.groups.get(group).filter(|g| g.members.contains_key(member))?;
        let mut view = MemberView {
            generation: live.generation,
            subscription: live.subscription.clone(),
            owned: BTreeSet::new(),
            revoking: BTreeSet::new(),
            owned_since: BTreeMap::new(),
        };
        for (partition, slot) in &live.slots {
            if slot.owner.as_ref() == Some(member) {
                view.owned_since.insert(partition.clone(), slot.owned_since);
                match slot.revoke_deadline {
                    Some(_) => view.revoking.insert(partition.clone()),
                    None => view.owned.insert(partition.clone()),
                };
            }
        }
        Some(view)
    }

    pub fn committed(&self, group: &GroupName, partition: &TopicPartition) -> Option<Offset> {
        self.committed.get(group, partition)
    }

    /// Every committed offset: what the offsets log folds to.
    pub fn committed_offsets(&self) -> &CommittedOffsets {
        &self.committed
    }

    /// Every committed offset, to apply what another coordinator decided (on a cluster,
    /// another node's commits, replicated to this one).
    pub fn committed_offsets_mut(&mut self) -> &mut CommittedOffsets {
        &mut self.committed
    }

    /// One group, live or with committed offsets; `None` if neither.
    pub fn describe(&self, group: &GroupName) -> Option<GroupDescription> {
        let Some(live) = self.groups.get(group) else {
            if let Some(classic) = self.classic.describe(group) {
                return Some(self.describe_classic(group, classic));
            }
            if !self.committed.has_group(group) {
                return None;
            }
            let partitions = self
                .committed
                .of_group(group)
                .map(|(p, offset)| PartitionDescription {
                    partition: p.clone(),
                    owner: None,
                    revoking: false,
                    committed: Some(offset),
                })
                .collect();
            return Some(GroupDescription {
                name: group.clone(),
                state: GroupState::Empty,
                generation: 0,
                subscription: None,
                members: Vec::new(),
                partitions,
            });
        };
        let members = live
            .members
            .iter()
            .map(|(id, m)| {
                let view = self.view(group, id).expect("a member has a view");
                MemberDescription {
                    id: id.clone(),
                    session_timeout_ms: m.session_timeout_ms,
                    owned: view.owned.into_iter().collect(),
                    revoking: view.revoking.into_iter().collect(),
                }
            })
            .collect();
        let partitions = live
            .slots
            .iter()
            .map(|(p, slot)| PartitionDescription {
                partition: p.clone(),
                owner: slot.owner.clone(),
                revoking: slot.revoke_deadline.is_some(),
                committed: self.committed.get(group, p),
            })
            .collect();
        Some(GroupDescription {
            name: group.clone(),
            state: live.state(),
            generation: live.generation,
            subscription: Some(live.subscription.clone()),
            members,
            partitions,
        })
    }

    /// A live Kafka group as Spool describes groups: its members, with the partitions their
    /// assignments name when they are consumers' (`consumer` protocol type, in the Stable
    /// state), and the group's committed offsets.
    fn describe_classic(
        &self,
        group: &GroupName,
        classic: classic::ClassicDescription,
    ) -> GroupDescription {
        let state = match classic.state {
            classic::ClassicState::Stable => GroupState::Stable,
            _ => GroupState::Rebalancing,
        };
        let consumers = classic.protocol_type == "consumer";
        let mut owners: BTreeMap<TopicPartition, MemberId> = BTreeMap::new();
        let members = classic
            .members
            .iter()
            .map(|m| {
                let id = MemberId(m.member_id.clone());
                let assigned = if consumers {
                    classic::consumer_assignment(&m.assignment).unwrap_or_default()
                } else {
                    Vec::new()
                };
                let owned: Vec<TopicPartition> = assigned
                    .into_iter()
                    .filter_map(|(topic, partition)| {
                        let topic = TopicName::parse(&topic).ok()?;
                        Some(TopicPartition { topic, partition: u32::try_from(partition).ok()? })
                    })
                    .collect();
                for partition in &owned {
                    owners.insert(partition.clone(), id.clone());
                }
                MemberDescription {
                    id,
                    session_timeout_ms: m.session_timeout_ms.max(0) as u64,
                    owned,
                    revoking: Vec::new(),
                }
            })
            .collect();
        let committed: BTreeMap<&TopicPartition, Offset> = self.committed.of_group(group).collect();
        let mut partitions: BTreeSet<&TopicPartition> = committed.keys().copied().collect();
        partitions.extend(owners.keys());
        let partitions = partitions
            .into_iter()
            .map(|p| PartitionDescription {
                partition: p.clone(),
                owner: owners.get(p).cloned(),
                revoking: false,
                committed: committed.get(p).copied(),
            })
            .collect();
        GroupDescription {
            name: group.clone(),
            state,
            generation: classic.generation.max(0) as u64,
            subscription: None,
            members,
            partitions,
        }
    }

    /// Every group, live or with committed offsets, sorted by name.
    pub fn list(&self) -> Vec<GroupDescription> {
        let classic = self.classic.list().map(|(name, _)| name);
        let names: BTreeSet<&GroupName> =
            self.groups.keys().chain(self.committed.groups()).chain(classic).collect();
        names.into_iter().filter_map(|name| self.describe(name)).collect()
    }
}

#[cfg(test)]
mod tests;
