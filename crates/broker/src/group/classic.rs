//! Kafka's classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup and
//! generation-checked OffsetCommit), as a synchronous, deterministic state machine beside
//! Spool's own groups. Time enters as `now` on every call.
//!
//! Unlike Spool's groups, the members decide the assignment: each sends opaque metadata per
//! protocol it supports (for consumers, an assignor name such as `range` with its
//! subscription), the group picks one protocol every member supports, and the leader sends
//! back an opaque assignment per member, which the group hands out. Nothing here reads those
//! bytes.
//!
//! ## States (as Kafka's broker has them)
//!
//! - *PreparingRebalance*: a member joined, left, changed its metadata or was removed. Every
//!   member must send JoinGroup again; the join phase ends when all have (and no member given
//!   an id by `MEMBER_ID_REQUIRED` is still to come back), or at the rebalance deadline (the
//!   largest rebalance timeout of the members, from the start of the phase). Members that did
//!   not rejoin by then are removed.
//! - *CompletingRebalance*: the join phase ended, the generation went up, the leader got every
//!   member's metadata. SyncGroup waits until the leader sends the assignments.
//! - *Stable*: the assignments are out; heartbeats keep members alive.
//!
//! A group with no members (and no member ids given out and awaited) is forgotten: its
//! committed offsets stay in [`CommittedOffsets`](super::CommittedOffsets), and a later join
//! starts again at generation 1.
//!
//! After a join phase every member must send SyncGroup within the rebalance timeout; one
//! that has not is removed, and the others rebalance.
//!
//! Requests that wait (JoinGroup, SyncGroup) get a [`Ticket`]; their answers come out in
//! [`Replies`] of whichever call completes them (possibly the same call). A member waiting
//! on one of these is kept alive; any other member is removed once nothing was heard from it
//! for its session timeout.
//!
//! ## Stored state
//!
//! Each time a group settles on a generation (its leader's assignments handed out), and when
//! a static member takes its old place in a stable group, the group is marked for storing;
//! [`ClassicGroups::take_records`] gives the server its state to store in the offsets log
//! ([`ClassicGroupRecord`]), and a group that is gone once stored is stored as having no
//! members. [`ClassicGroups::restore`] takes stored groups back (a restart, or another node
//! taking over as coordinator): each stable at its generation, every member heard from at
//! the moment of the restore, so it keeps its place if it heartbeats within its session
//! timeout. What happened after the last stored generation (a rebalance begun, a member
//! gone) is not stored: members find out by their next heartbeat or join, as after a change.
//!
//! ## Static members (`group.instance.id`)
//!
//! A member may join with an instance id its operator gave it, which outlives the process.
//! A group maps each instance id to the member id that holds it now (at most one entry per
//! member). A static member is never asked to come back with an id (MEMBER_ID_REQUIRED). A
//! static member that restarts joins again with its instance id and no member id: it gets a
//! new member id and the old member's place and assignment, the old id is fenced (its
//! waiting and later requests are answered `FENCED_INSTANCE_ID`), and a stable group whose
//! chosen protocol does not change does not rebalance. A static member that is stopped does
//! not leave: it keeps its assignment until its session timeout, and is then removed like
//! any other member. A join phase that ends without it does not remove it either. It leaves
//! by LeaveGroup, which may name it by instance id alone.

use std::collections::{BTreeMap, BTreeSet};

use spool_storage::TimestampMs;
use thiserror::Error;

use super::GroupName;
use super::offsets::{ClassicGroupRecord, ClassicStable, ClassicStoredMember, OffsetsRecord};
use crate::limits::{
    CLASSIC_ASSIGNMENT_BYTES_MAX, CLASSIC_BYTES_MAX, CLASSIC_GROUP_MEMBERS_MAX,
    CLASSIC_GROUP_RECORD_BYTES_MAX, CLASSIC_INSTANCE_ID_BYTES_MAX,
    CLASSIC_MEMBER_METADATA_BYTES_MAX, CLASSIC_PROTOCOLS_MAX, CLASSIC_REBALANCE_TIMEOUT_MS_MAX,
    CLASSIC_SESSION_TIMEOUT_MS_MAX, CLASSIC_SESSION_TIMEOUT_MS_MIN,
};

/// Identifies one waiting JoinGroup or SyncGroup request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

/// Why a classic-group request is refused; each is one Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClassicError {
    #[error("the member id is not known in this group")]
    UnknownMemberId,
    #[error("the generation is not the group's")]
    IllegalGeneration,
    #[error("the protocol type or protocols do not match the group's members")]
    InconsistentGroupProtocol,
    #[error("group {group} is in use by Spool's own group protocol")]
    InUseBySpool { group: GroupName },
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    /// The group's state here was replaced or dropped while the request waited (this node
    /// stopped or started coordinating the groups), or what it settled could not be stored:
    /// the member finds the coordinator again and joins there.
    #[error("the group's coordinator moved, or could not store the group: find it again")]
    CoordinatorMoved,
    #[error("a new member must join again with the member id it was given")]
    MemberIdRequired { member_id: String },
    #[error("session timeout {session_timeout_ms} ms is outside {min_ms}..={max_ms}")]
    InvalidSessionTimeout { session_timeout_ms: i32, min_ms: i32, max_ms: i32 },
    #[error("the group already has {CLASSIC_GROUP_MEMBERS_MAX} members")]
    GroupFull,
    #[error("the server holds too many groups or too much group metadata")]
    Exhausted,
    #[error("member metadata or an assignment is larger than the limit")]
    TooLarge,
    #[error("the group's commit metadata would pass its limit")]
    MetadataTooLarge,
    #[error("the group instance id is now another member's: this member id is fenced")]
    FencedInstanceId,
    #[error("a group instance id of {bytes} bytes is outside 1..={CLASSIC_INSTANCE_ID_BYTES_MAX}")]
    InvalidInstanceId { bytes: usize },
}

/// A member's JoinGroup, as the server decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// Empty for a new member.
    pub member_id: String,
    /// A static member's `group.instance.id` (JoinGroup v5 and later).
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    /// Protocol names with their metadata, in the member's order of preference.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// JoinGroup v4 and later: a new member is given an id and must join again with it.
    pub require_known_member_id: bool,
}

/// A successful JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub generation: i32,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    /// Every member with its metadata for the chosen protocol: for the leader only.
    pub members: Vec<JoinedMember>,
}

/// One member as the leader's JoinGroup answer lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinedMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub metadata: Vec<u8>,
}

/// The answers to waiting requests that a call completed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replies {
    pub joins: Vec<(Ticket, Result<Joined, ClassicError>)>,
    pub syncs: Vec<(Ticket, Result<Vec<u8>, ClassicError>)>,
    /// Members removed for silence (for the server's log).
    pub expired: Vec<(GroupName, String)>,
}

impl Replies {
    fn extend(&mut self, other: Replies) {
        self.joins.extend(other.joins);
        self.syncs.extend(other.syncs);
        self.expired.extend(other.expired);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassicState {
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl ClassicState {
    /// The name Kafka's DescribeGroups uses.
    pub fn kafka_name(self) -> &'static str {
        match self {
            ClassicState::PreparingRebalance => "PreparingRebalance",
            ClassicState::CompletingRebalance => "CompletingRebalance",
            ClassicState::Stable => "Stable",
        }
    }
}

/// Who sends a SyncGroup, Heartbeat, LeaveGroup or OffsetCommit: its member id and, from the
/// versions that carry one, its group instance id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberRef<'a> {
    pub member_id: &'a str,
    pub instance_id: Option<&'a str>,
}

impl<'a> MemberRef<'a> {
    /// A member known by its member id only.
    pub fn dynamic(member_id: &'a str) -> MemberRef<'a> {
        MemberRef { member_id, instance_id: None }
    }
}

/// A member as DescribeGroups shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    /// Its metadata for the chosen protocol (empty before one is chosen).
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicDescription {
    pub state: ClassicState,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub members: Vec<ClassicMemberDescription>,
}

#[derive(Debug)]
struct Member {
    /// A static member's `group.instance.id`: the group's `instances` maps it to this member.
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<(String, Vec<u8>)>,
    assignment: Vec<u8>,
    last_heard: TimestampMs,
    awaiting_join: Option<Ticket>,
    awaiting_sync: Option<Ticket>,
    /// Whether it sent its SyncGroup since the last join phase.
    synced: bool,
}

impl Member {
    fn bytes(&self) -> usize {
        self.bytes_of_metadata() + self.assignment.len()
    }

    fn bytes_of_metadata(&self) -> usize {
        metadata_bytes(&self.protocols)
    }

    fn metadata_for(&self, protocol: &str) -> Vec<u8> {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map_or_else(Vec::new, |p| p.1.clone())
    }

    fn session_deadline(&self) -> Option<TimestampMs> {
        let kept_alive = self.awaiting_join.is_some() || self.awaiting_sync.is_some();
        (!kept_alive).then(|| self.last_heard.plus_ms(self.session_timeout_ms as u64))
    }
}

fn metadata_bytes(protocols: &[(String, Vec<u8>)]) -> usize {
    protocols.iter().map(|(name, metadata)| name.len() + metadata.len()).sum()
}

#[derive(Debug)]
struct Group {
    state: ClassicState,
    generation: i32,
    protocol_type: String,
    protocol_name: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Static members: each instance id to the id of the member that holds it now. One entry
    /// per member with an instance id, so it is bounded as `members` is.
    instances: BTreeMap<String, String>,
    /// Ids given out with MEMBER_ID_REQUIRED, until the member joins with them or its session
    /// timeout passes.
    pending: BTreeMap<String, TimestampMs>,
    rebalance_deadline: Option<TimestampMs>,
    initial_delay: Option<InitialDelay>,
    /// After a join phase, until every member has sent its SyncGroup: members that have not
    /// by then are removed (as Kafka's brokers do), so a leader that heartbeats but never
    /// assigns cannot hold the group.
    sync_deadline: Option<TimestampMs>,
}

/// Every classic group of one server.
#[derive(Debug)]
pub struct ClassicGroups {
    instance: u64,
    next_member: u64,
    next_ticket: u64,
    groups: BTreeMap<GroupName, Group>,
    /// Metadata and assignment bytes held over all groups.
    bytes: usize,
    initial_rebalance_delay_ms: u64,
    /// Groups whose stored state has members.
    stored: BTreeSet<GroupName>,
    /// Groups whose stored state is out of date (see the module docs).
    unstored: BTreeSet<GroupName>,
}

/// The first join phase of a group without members: it ends at its deadline, not when every
/// member has joined, and is extended while members keep coming (Kafka's
/// `group.initial.rebalance.delay.ms`), so consumers started together get one assignment
/// rather than a rebalance per arrival.
#[derive(Debug)]
struct InitialDelay {
    started: TimestampMs,
    /// The phase ends by then, however many arrive.
    end_by: TimestampMs,
    joined_since: bool,
}

impl ClassicGroups {
    /// `instance` must differ between server runs, so that member ids never repeat. The first
    /// join phase of a group without members lasts `initial_rebalance_delay_ms` (0: it ends
    /// as soon as its member joined).
    pub fn new(instance: u64, initial_rebalance_delay_ms: u64) -> ClassicGroups {
        ClassicGroups {
            instance,
            next_member: 1,
            next_ticket: 1,
            groups: BTreeMap::new(),
            bytes: 0,
            initial_rebalance_delay_ms,
            stored: BTreeSet::new(),
            unstored: BTreeSet::new(),
        }
    }

    /// The state to store of every group marked since the last call (see the module docs), in
    /// the order of their names, each with its record as the offsets log stores it: a stable
    /// group's, or none for a group gone (or too large to store) whose stored state had
    /// members. A group marked and then rebalancing keeps what was stored.
    pub fn take_records(&mut self) -> Vec<(ClassicGroupRecord, Vec<u8>)> {
        let mut records = Vec::new();
        for name in std::mem::take(&mut self.unstored) {
            let stable = match self.groups.get(&name) {
                Some(group) if group.state != ClassicState::Stable => continue,
                Some(group) if !group.members.is_empty() => {
                    let record =
                        ClassicGroupRecord { group: name.clone(), stable: Some(group.stable()) };
                    let encoded = OffsetsRecord::Classic(record.clone()).encode();
                    if encoded.len() <= CLASSIC_GROUP_RECORD_BYTES_MAX {
                        self.stored.insert(name);
                        records.push((record, encoded));
                        continue;
                    }
                    tracing::warn!(group = %name, bytes = encoded.len(), max = CLASSIC_GROUP_RECORD_BYTES_MAX, "a Kafka group's state is too large to store: after a restart or failover its members join again");
                    None
                }
                _ => None,
            };
            if self.stored.remove(&name) {
                let record = ClassicGroupRecord { group: name, stable };
                let encoded = OffsetsRecord::Classic(record.clone()).encode();
                records.push((record, encoded));
            }
        }
        records
    }

    /// Replaces every group with `stored` (see the module docs), but for those `skip` names
    /// (live under Spool's own protocol) and those that break a limit of this build. Requests
    /// still waiting in the groups replaced are answered REBALANCE_IN_PROGRESS: they join
    /// again.
    pub fn restore<'a>(
        &mut self,
        stored: impl IntoIterator<Item = (&'a GroupName, &'a ClassicStable)>,
        skip: impl Fn(&GroupName) -> bool,
        now: TimestampMs,
    ) -> Replies {
        let mut replies = Replies::default();
        for member in std::mem::take(&mut self.groups).into_values().flat_map(|g| g.members) {
            let member = member.1;
            if let Some(waiting) = member.awaiting_join {
                replies.joins.push((waiting, Err(ClassicError::CoordinatorMoved)));
            }
            if let Some(waiting) = member.awaiting_sync {
                replies.syncs.push((waiting, Err(ClassicError::CoordinatorMoved)));
            }
        }
        self.bytes = 0;
        self.stored.clear();
        self.unstored.clear();
        for (name, stable) in stored {
            if skip(name) {
                continue;
            }
            match Group::restored(stable, now) {
                Some(group) if self.bytes + group.bytes() <= CLASSIC_BYTES_MAX => {
                    self.bytes += group.bytes();
                    self.stored.insert(name.clone());
                    self.groups.insert(name.clone(), group);
                }
                _ => {
                    tracing::warn!(group = %name, "a stored Kafka group is not taken back: it breaks a limit of this build; its members join again")
                }
            }
        }
        replies
    }

    /// Whether the group has members, or awaits one it gave an id to.
    pub fn is_live(&self, group: &GroupName) -> bool {
        self.groups.contains_key(group)
    }

    pub fn live_count(&self) -> usize {
        self.groups.len()
    }

    pub fn member_count(&self, group: &GroupName) -> usize {
        self.groups.get(group).map_or(0, |g| g.members.len())
    }

    /// What a live group's members consume (`None` when it is not live), as Kafka's brokers
    /// judge it before deleting a group's offsets: the topics of each member's
    /// `ConsumerProtocolSubscription` for the group's protocol. A member whose metadata does
    /// not read as one, or a group that has not chosen its protocol yet, counts as consuming
    /// every topic.
    pub fn consumed_topics(&self, group: &GroupName) -> Option<ConsumedTopics> {
        let group = self.groups.get(group)?;
        if group.members.is_empty() {
            return Some(ConsumedTopics::Some(BTreeSet::new()));
        }
        if group.protocol_type != "consumer" {
            return Some(ConsumedTopics::NotConsumers);
        }
        if group.protocol_name.is_empty() {
            return Some(ConsumedTopics::Every);
        }
        let mut topics = BTreeSet::new();
        for member in group.members.values() {
            match consumer_subscription(&member.metadata_for(&group.protocol_name)) {
                Some(subscribed) => topics.extend(subscribed),
                None => return Some(ConsumedTopics::Every),
            }
        }
        Some(ConsumedTopics::Some(topics))
    }

    fn ticket(&mut self) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        ticket
    }

    fn new_member_id(&mut self, client_id: &str) -> String {
        // Kafka's ids are the client id, a dash and a unique suffix.
        let client: String = client_id.chars().filter(|c| !c.is_control()).take(64).collect();
        let id = format!("{client}-{:x}-{}", self.instance, self.next_member);
        self.next_member += 1;
        id
    }

    /// A JoinGroup. The caller checked that no Spool group of that name is live, and that a
    /// new group would not pass the known-groups limit (`may_create`). The answer comes in
    /// the returned replies, under the returned ticket, now or from a later call.
    pub fn join(
        &mut self,
        group: &GroupName,
        request: JoinRequest,
        may_create: bool,
        now: TimestampMs,
    ) -> (Ticket, Replies) {
        let ticket = self.ticket();
        let mut replies = Replies::default();
        if let Err(error) = self.join_inner(group, request, may_create, ticket, now, &mut replies) {
            replies.joins.push((ticket, Err(error)));
        }
        (ticket, replies)
    }

    fn join_inner(
        &mut self,
        name: &GroupName,
        request: JoinRequest,
        may_create: bool,
        ticket: Ticket,
        now: TimestampMs,
        replies: &mut Replies,
    ) -> Result<(), ClassicError> {
        let timeout_range = CLASSIC_SESSION_TIMEOUT_MS_MIN..=CLASSIC_SESSION_TIMEOUT_MS_MAX;
        if !timeout_range.contains(&request.session_timeout_ms) {
            return Err(ClassicError::InvalidSessionTimeout {
                session_timeout_ms: request.session_timeout_ms,
                min_ms: CLASSIC_SESSION_TIMEOUT_MS_MIN,
                max_ms: CLASSIC_SESSION_TIMEOUT_MS_MAX,
            });
        }
        if request.protocol_type.is_empty()
            || request.protocols.is_empty()
            || request.protocols.len() > CLASSIC_PROTOCOLS_MAX
        {
            return Err(ClassicError::InconsistentGroupProtocol);
        }
        if metadata_bytes(&request.protocols) > CLASSIC_MEMBER_METADATA_BYTES_MAX {
            return Err(ClassicError::TooLarge);
        }
        if let Some(instance_id) = &request.instance_id
            && !(1..=CLASSIC_INSTANCE_ID_BYTES_MAX).contains(&instance_id.len())
        {
            return Err(ClassicError::InvalidInstanceId { bytes: instance_id.len() });
        }
        if !self.groups.contains_key(name) {
            if !request.member_id.is_empty() {
                return Err(ClassicError::UnknownMemberId);
            }
            if !may_create {
                return Err(ClassicError::Exhausted);
            }
            self.groups.insert(
                name.clone(),
                Group {
                    state: ClassicState::Stable,
                    generation: 0,
                    protocol_type: request.protocol_type.clone(),
                    protocol_name: String::new(),
                    leader: None,
                    members: BTreeMap::new(),
                    instances: BTreeMap::new(),
                    pending: BTreeMap::new(),
                    rebalance_deadline: None,
                    initial_delay: None,
                    sync_deadline: None,
                },
            );
        }
        let result = self.join_group(name, request, ticket, now, replies);
        self.forget_if_empty(name);
        result
    }

    fn join_group(
        &mut self,
        name: &GroupName,
        request: JoinRequest,
        ticket: Ticket,
        now: TimestampMs,
        replies: &mut Replies,
    ) -> Result<(), ClassicError> {
        let held = self.bytes;
        let group = self.groups.get_mut(name).expect("created above");
        // A known instance joining without a member id: a static member restarted.
        let replaced = match (&request.instance_id, request.member_id.is_empty()) {
            (Some(instance_id), true) => group.instances.get(instance_id).cloned(),
            _ => None,
        };
        if !group.members.is_empty() && !group.supports(&request, replaced.as_deref()) {
            return Err(ClassicError::InconsistentGroupProtocol);
        }
        if let Some(old_member_id) = replaced {
            return self.replace_static(name, old_member_id, request, ticket, now, replies);
        }
        let added = metadata_bytes(&request.protocols);
        // Ids given out with MEMBER_ID_REQUIRED are dynamic members'.
        let pending =
            request.instance_id.is_none() && group.pending.contains_key(&request.member_id);
        if request.member_id.is_empty() || pending {
            // A new member.
            let full = if request.member_id.is_empty() {
                group.members.len() + group.pending.len() >= CLASSIC_GROUP_MEMBERS_MAX
            } else {
                group.members.len() >= CLASSIC_GROUP_MEMBERS_MAX
            };
            if full {
                return Err(ClassicError::GroupFull);
            }
            if held + added > CLASSIC_BYTES_MAX {
                return Err(ClassicError::Exhausted);
            }
            let member_id = if request.member_id.is_empty() {
                let client_id = request.client_id.clone();
                let id = self.new_member_id(&client_id);
                let group = self.groups.get_mut(name).expect("live");
                // A static member is known by its instance id: it is not asked to come back.
                if request.require_known_member_id && request.instance_id.is_none() {
                    group
                        .pending
                        .insert(id.clone(), now.plus_ms(request.session_timeout_ms as u64));
                    return Err(ClassicError::MemberIdRequired { member_id: id });
                }
                id
            } else {
                request.member_id.clone()
            };
            let delay_ms = self.initial_rebalance_delay_ms;
            let group = self.groups.get_mut(name).expect("live");
            group.pending.remove(&member_id);
            let first = group.members.is_empty();
            if first {
                group.protocol_type = request.protocol_type.clone();
            }
            let rebalance_timeout_ms =
                (request.rebalance_timeout_ms.max(0) as u64).min(CLASSIC_REBALANCE_TIMEOUT_MS_MAX);
            if let Some(instance_id) = &request.instance_id {
                group.instances.insert(instance_id.clone(), member_id.clone());
            }
            group.members.insert(
                member_id.clone(),
                Member {
                    instance_id: request.instance_id,
                    client_id: request.client_id,
                    client_host: request.client_host,
                    session_timeout_ms: request.session_timeout_ms,
                    rebalance_timeout_ms: request.rebalance_timeout_ms,
                    protocols: request.protocols,
                    assignment: Vec::new(),
                    last_heard: now,
                    awaiting_join: Some(ticket),
                    awaiting_sync: None,
                    synced: false,
                },
            );
            self.bytes += added;
            let group = self.groups.get_mut(name).expect("live");
            if group.leader.is_none() {
                group.leader = Some(member_id);
            }
            if let Some(initial) = &mut group.initial_delay {
                initial.joined_since = true;
            } else if first && delay_ms > 0 {
                group.prepare_rebalance(now, replies);
                let end_by = now.plus_ms(rebalance_timeout_ms);
                group.rebalance_deadline = Some(now.plus_ms(delay_ms).min(end_by));
                group.initial_delay =
                    Some(InitialDelay { started: now, end_by, joined_since: false });
            } else if group.state != ClassicState::PreparingRebalance {
                group.prepare_rebalance(now, replies);
            }
            group.try_complete_join(now, replies);
            return Ok(());
        }
        group.validate_member(&request.member_id, request.instance_id.as_deref())?;
        let member = group.members.get_mut(&request.member_id).expect("validated");
        let removed = metadata_bytes(&member.protocols);
        if held - removed + added > CLASSIC_BYTES_MAX {
            return Err(ClassicError::Exhausted);
        }
        let unchanged = member.protocols == request.protocols;
        let is_leader = group.leader.as_deref() == Some(request.member_id.as_str());
        member.last_heard = member.last_heard.max(now);
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        let respond_now = match group.state {
            ClassicState::PreparingRebalance => false,
            ClassicState::CompletingRebalance => unchanged,
            ClassicState::Stable => unchanged && !is_leader,
        };
        if respond_now {
            replies.joins.push((ticket, Ok(group.joined(&request.member_id))));
            return Ok(());
        }
        member.protocols = request.protocols;
        if let Some(old) = member.awaiting_join.replace(ticket) {
            replies.joins.push((old, Err(ClassicError::RebalanceInProgress)));
        }
        self.bytes = held - removed + added;
        let group = self.groups.get_mut(name).expect("live");
        if group.state != ClassicState::PreparingRebalance {
            group.prepare_rebalance(now, replies);
        }
        group.try_complete_join(now, replies);
        Ok(())
    }

    /// A static member that joins again without its member id (it restarted): it gets a new
    /// id and the old member's place and assignment, and the old id is fenced. A stable
    /// group whose protocol stays the one chosen does not rebalance: the member is answered
    /// at once with the current generation, and the old leader's id as the leader, so that a
    /// restarted leader does not assign (as Kafka's brokers answer before JoinGroup v9); it
    /// leads from the next rebalance. Otherwise the group rebalances with it (while
    /// CompletingRebalance too, since the leader may be assigning to the old id).
    fn replace_static(
        &mut self,
        name: &GroupName,
        old_member_id: String,
        request: JoinRequest,
        ticket: Ticket,
        now: TimestampMs,
        replies: &mut Replies,
    ) -> Result<(), ClassicError> {
        let held = self.bytes;
        let group = self.groups.get(name).expect("live");
        let removed = group.members.get(&old_member_id).map_or(0, Member::bytes_of_metadata);
        let added = metadata_bytes(&request.protocols);
        if held - removed + added > CLASSIC_BYTES_MAX {
            return Err(ClassicError::Exhausted);
        }
        let member_id = self.new_member_id(&request.client_id);
        self.bytes = held - removed + added;
        let group = self.groups.get_mut(name).expect("live");
        let mut member = group.members.remove(&old_member_id).expect("instances name members");
        if let Some(waiting) = member.awaiting_join.take() {
            replies.joins.push((waiting, Err(ClassicError::FencedInstanceId)));
        }
        if let Some(waiting) = member.awaiting_sync.take() {
            replies.syncs.push((waiting, Err(ClassicError::FencedInstanceId)));
        }
        member.protocols = request.protocols;
        member.client_id = request.client_id;
        member.client_host = request.client_host;
        member.session_timeout_ms = request.session_timeout_ms;
        member.rebalance_timeout_ms = request.rebalance_timeout_ms;
        member.last_heard = member.last_heard.max(now);
        let old_leader = group.leader.clone().unwrap_or_default();
        if old_leader == old_member_id {
            group.leader = Some(member_id.clone());
        }
        let instance_id = request.instance_id.expect("a static member's");
        group.instances.insert(instance_id, member_id.clone());
        group.members.insert(member_id.clone(), member);
        let protocol_kept = group.select_protocol() == group.protocol_name;
        if group.state == ClassicState::Stable && protocol_kept {
            self.unstored.insert(name.clone());
            let joined = Joined {
                generation: group.generation,
                protocol_name: group.protocol_name.clone(),
                leader: old_leader,
                member_id,
                members: Vec::new(),
            };
            replies.joins.push((ticket, Ok(joined)));
            return Ok(());
        }
        group.members.get_mut(&member_id).expect("inserted").awaiting_join = Some(ticket);
        if group.state != ClassicState::PreparingRebalance {
            group.prepare_rebalance(now, replies);
        }
        if let Some(initial) = &mut group.initial_delay {
            initial.joined_since = true;
        }
        group.try_complete_join(now, replies);
        Ok(())
    }

    /// A SyncGroup. `assignments` is what the leader sends (others send none).
    pub fn sync(
        &mut self,
        name: &GroupName,
        member: MemberRef<'_>,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
        now: TimestampMs,
    ) -> (Ticket, Replies) {
        let ticket = self.ticket();
        let mut replies = Replies::default();
        let answer =
            self.sync_inner(name, member, generation, assignments, ticket, now, &mut replies);
        if let Err(error) = answer {
            replies.syncs.push((ticket, Err(error)));
        }
        (ticket, replies)
    }

    #[allow(clippy::too_many_arguments)]
    fn sync_inner(
        &mut self,
        name: &GroupName,
        member: MemberRef<'_>,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
        ticket: Ticket,
        now: TimestampMs,
        replies: &mut Replies,
    ) -> Result<(), ClassicError> {
        let held = self.bytes;
        let group = self.groups.get_mut(name).ok_or(ClassicError::UnknownMemberId)?;
        group.validate_member(member.member_id, member.instance_id)?;
        let member_id = member.member_id;
        let member = group.members.get_mut(member_id).expect("validated");
        if generation != group.generation {
            return Err(ClassicError::IllegalGeneration);
        }
        member.last_heard = member.last_heard.max(now);
        if group.state != ClassicState::PreparingRebalance {
            member.synced = true;
            if group.members.values().all(|m| m.synced) {
                group.sync_deadline = None;
            }
        }
        let member = group.members.get_mut(member_id).expect("checked");
        match group.state {
            ClassicState::PreparingRebalance => Err(ClassicError::RebalanceInProgress),
            ClassicState::Stable => {
                replies.syncs.push((ticket, Ok(member.assignment.clone())));
                Ok(())
            }
            ClassicState::CompletingRebalance => {
                if let Some(old) = member.awaiting_sync.replace(ticket) {
                    replies.syncs.push((old, Err(ClassicError::RebalanceInProgress)));
                }
                if group.leader.as_deref() != Some(member_id) {
                    return Ok(());
                }
                if assignments.iter().any(|(_, a)| a.len() > CLASSIC_ASSIGNMENT_BYTES_MAX) {
                    member.awaiting_sync = None;
                    return Err(ClassicError::TooLarge);
                }
                let mut assignments: BTreeMap<String, Vec<u8>> = assignments.into_iter().collect();
                let mut bytes = held;
                for (id, member) in &mut group.members {
                    let assignment = assignments.remove(id).unwrap_or_default();
                    bytes = bytes - member.assignment.len() + assignment.len();
                    member.assignment = assignment;
                }
                if bytes > CLASSIC_BYTES_MAX {
                    for member in group.members.values_mut() {
                        bytes -= std::mem::take(&mut member.assignment).len();
                    }
                    self.bytes = bytes;
                    let member = group.members.get_mut(member_id).expect("checked");
                    member.awaiting_sync = None;
                    return Err(ClassicError::Exhausted);
                }
                self.bytes = bytes;
                group.state = ClassicState::Stable;
                self.unstored.insert(name.clone());
                for member in group.members.values_mut() {
                    if let Some(waiting) = member.awaiting_sync.take() {
                        replies.syncs.push((waiting, Ok(member.assignment.clone())));
                    }
                }
                Ok(())
            }
        }
    }

    /// Makes a stable group rebalance (its settled generation could not be stored): its
    /// members hear REBALANCE_IN_PROGRESS at their next heartbeat and join again.
    pub fn unsettle(&mut self, name: &GroupName, now: TimestampMs) -> Replies {
        let mut replies = Replies::default();
        if let Some(group) = self.groups.get_mut(name)
            && group.state == ClassicState::Stable
        {
            group.prepare_rebalance(now, &mut replies);
            group.try_complete_join(now, &mut replies);
        }
        replies
    }

    /// A Heartbeat: `Ok` keeps the member alive; REBALANCE_IN_PROGRESS tells it to rejoin.
    pub fn heartbeat(
        &mut self,
        name: &GroupName,
        member: MemberRef<'_>,
        generation: i32,
        now: TimestampMs,
    ) -> Result<(), ClassicError> {
        let group = self.groups.get_mut(name).ok_or(ClassicError::UnknownMemberId)?;
        group.validate_member(member.member_id, member.instance_id)?;
        let member = group.members.get_mut(member.member_id).expect("validated");
        if generation != group.generation {
            return Err(ClassicError::IllegalGeneration);
        }
        member.last_heard = member.last_heard.max(now);
        match group.state {
            ClassicState::PreparingRebalance => Err(ClassicError::RebalanceInProgress),
            ClassicState::CompletingRebalance | ClassicState::Stable => Ok(()),
        }
    }

    /// A LeaveGroup (one member of its batch): the member goes, and the others rebalance.
    /// A static member may be named by its instance id alone (an empty member id, as
    /// administrators remove one); with a member id too, that id must be the instance's
    /// current one (`FENCED_INSTANCE_ID`). A member id given out with MEMBER_ID_REQUIRED and
    /// not yet used is taken back.
    pub fn leave(
        &mut self,
        name: &GroupName,
        member: MemberRef<'_>,
        now: TimestampMs,
    ) -> Result<Replies, ClassicError> {
        let group = self.groups.get_mut(name).ok_or(ClassicError::UnknownMemberId)?;
        let mut replies = Replies::default();
        let member_id = match member.instance_id {
            Some(instance_id) if member.member_id.is_empty() => {
                group.instances.get(instance_id).cloned().ok_or(ClassicError::UnknownMemberId)?
            }
            None if group.pending.remove(member.member_id).is_some() => {
                group.try_complete_join(now, &mut replies);
                self.forget_if_empty(name);
                return Ok(replies);
            }
            _ => {
                group.validate_member(member.member_id, member.instance_id)?;
                member.member_id.to_owned()
            }
        };
        self.remove_member(name, &member_id, now, &mut replies);
        Ok(replies)
    }

    /// Checks the instance id an OffsetCommit (v7 and later) carries: a member id that is
    /// no longer its instance's is `FENCED_INSTANCE_ID`, an unknown instance
    /// `UNKNOWN_MEMBER_ID`. The rest is [`ClassicGroups::check_commit`]'s.
    pub fn check_commit_instance(
        &self,
        name: &GroupName,
        member: MemberRef<'_>,
        generation: i32,
    ) -> Result<(), ClassicError> {
        let Some(group) = self.groups.get(name) else { return Ok(()) };
        if member.instance_id.is_none() || generation < 0 && group.members.is_empty() {
            return Ok(());
        }
        group.validate_member(member.member_id, member.instance_id)
    }

    fn remove_member(
        &mut self,
        name: &GroupName,
        member_id: &str,
        now: TimestampMs,
        replies: &mut Replies,
    ) {
        let group = self.groups.get_mut(name).expect("the caller found it");
        let Some(member) = group.members.remove(member_id) else { return };
        if let Some(instance_id) = &member.instance_id {
            let held = group.instances.remove(instance_id);
            assert_eq!(held.as_deref(), Some(member_id), "an instance names its member");
        }
        self.bytes -= member.bytes();
        if let Some(waiting) = member.awaiting_join {
            replies.joins.push((waiting, Err(ClassicError::UnknownMemberId)));
        }
        if let Some(waiting) = member.awaiting_sync {
            replies.syncs.push((waiting, Err(ClassicError::UnknownMemberId)));
        }
        if group.leader.as_deref() == Some(member_id) {
            group.leader = group.members.keys().next().cloned();
        }
        match group.state {
            ClassicState::PreparingRebalance => group.try_complete_join(now, replies),
            ClassicState::CompletingRebalance | ClassicState::Stable => {
                group.prepare_rebalance(now, replies);
                group.try_complete_join(now, replies);
            }
        }
        self.forget_if_empty(name);
    }

    fn forget_if_empty(&mut self, name: &GroupName) {
        if let Some(group) = self.groups.get(name)
            && group.members.is_empty()
            && group.pending.is_empty()
        {
            self.groups.remove(name);
            if self.stored.contains(name) {
                self.unstored.insert(name.clone());
            }
        }
    }

    /// Checks an OffsetCommit against the group (a `generation` below 0 is a commit from a
    /// client that assigns its own partitions, accepted while the group has no members), and
    /// counts it as a heartbeat.
    pub fn check_commit(
        &mut self,
        name: &GroupName,
        member_id: &str,
        generation: i32,
        now: TimestampMs,
    ) -> Result<(), ClassicError> {
        let Some(group) = self.groups.get_mut(name) else {
            return if generation < 0 { Ok(()) } else { Err(ClassicError::IllegalGeneration) };
        };
        if generation < 0 && group.members.is_empty() {
            return Ok(());
        }
        if group.state == ClassicState::CompletingRebalance {
            return Err(ClassicError::RebalanceInProgress);
        }
        let member = group.members.get_mut(member_id).ok_or(ClassicError::UnknownMemberId)?;
        if generation != group.generation {
            return Err(ClassicError::IllegalGeneration);
        }
        member.last_heard = member.last_heard.max(now);
        Ok(())
    }

    /// Ends join phases whose deadline passed and removes silent members.
    pub fn tick(&mut self, now: TimestampMs) -> Replies {
        let mut replies = Replies::default();
        let names: Vec<GroupName> = self.groups.keys().cloned().collect();
        for name in names {
            let group = self.groups.get_mut(&name).expect("listed");
            group.pending.retain(|_, deadline| *deadline > now);
            let delay_ms = self.initial_rebalance_delay_ms;
            if group.state == ClassicState::PreparingRebalance
                && group.rebalance_deadline.is_some_and(|deadline| deadline <= now)
                && !group.extend_initial_delay(now, delay_ms)
            {
                let mut phase = Replies::default();
                let removed = group.complete_join(now, &mut phase);
                for member in removed {
                    self.bytes -= member.bytes();
                }
                replies.extend(phase);
            }
            let group = self.groups.get_mut(&name).expect("listed");
            let sync_passed = group.sync_deadline.is_some_and(|deadline| deadline <= now);
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.session_deadline().is_some_and(|deadline| deadline <= now)
                        || sync_passed && !m.synced
                })
                .map(|(id, _)| id.clone())
                .collect();
            group.sync_deadline = group.sync_deadline.filter(|_| !sync_passed);
            for member_id in expired {
                if self.groups.contains_key(&name) {
                    replies.expired.push((name.clone(), member_id.clone()));
                    self.remove_member(&name, &member_id, now, &mut replies);
                }
            }
            self.forget_if_empty(&name);
        }
        replies
    }

    /// The earliest time [`ClassicGroups::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<TimestampMs> {
        self.groups
            .values()
            .flat_map(|g| {
                let sessions = g.members.values().filter_map(Member::session_deadline);
                let rebalance =
                    g.rebalance_deadline.filter(|_| g.state == ClassicState::PreparingRebalance);
                let pending = g.pending.values().copied();
                sessions.chain(pending).chain(rebalance).chain(g.sync_deadline)
            })
            .min()
    }

    pub fn describe(&self, name: &GroupName) -> Option<ClassicDescription> {
        let group = self.groups.get(name)?;
        let members = group
            .members
            .iter()
            .map(|(id, m)| ClassicMemberDescription {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout_ms: m.session_timeout_ms,
                metadata: m.metadata_for(&group.protocol_name),
                // The assignments are those of the last generation until the leader's
                // sync replaces them: shown only once they are current.
                assignment: if group.state == ClassicState::Stable {
                    m.assignment.clone()
                } else {
                    Vec::new()
                },
            })
            .collect();
        Some(ClassicDescription {
            state: group.state,
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol_name: group.protocol_name.clone(),
            leader: group.leader.clone().unwrap_or_default(),
            members,
        })
    }

    /// Every live group's name and protocol type.
    pub fn list(&self) -> impl Iterator<Item = (&GroupName, &str)> {
        self.groups.iter().map(|(name, g)| (name, g.protocol_type.as_str()))
    }
}

/// What the members of a live group consume (see [`ClassicGroups::consumed_topics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumedTopics {
    /// These topics, by name.
    Some(BTreeSet<String>),
    /// Any topic: what they consume cannot be told.
    Every,
    /// The members are not Kafka consumers (their protocol type is not `consumer`).
    NotConsumers,
}

/// The topics of a consumer's subscription (`ConsumerProtocolSubscription`, what Kafka's
/// consumers send as their metadata with protocol type `consumer`, every version: a version,
/// then the topics; what follows is not read). `None` when the bytes are not one.
pub fn consumer_subscription(bytes: &[u8]) -> Option<Vec<String>> {
    let mut bytes = bytes;
    if read_i16(&mut bytes)? < 0 {
        return None;
    }
    let count = read_i32(&mut bytes)?;
    // Each topic takes at least 2 bytes: a count past the bytes left fails at once.
    (0..count).map(|_| read_string(&mut bytes)).collect()
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
    *bytes = rest;
    Some(head)
}

fn read_i16(bytes: &mut &[u8]) -> Option<i16> {
    Some(i16::from_be_bytes(take(bytes, 2)?.try_into().ok()?))
}

fn read_i32(bytes: &mut &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(take(bytes, 4)?.try_into().ok()?))
}

/// A string of Kafka's classic encoding: an `i16` length, then UTF-8 (a null one fails).
fn read_string(bytes: &mut &[u8]) -> Option<String> {
    let length = usize::try_from(read_i16(bytes)?).ok()?;
    Some(std::str::from_utf8(take(bytes, length)?).ok()?.to_owned())
}

/// The partitions of a consumer's assignment (`ConsumerProtocolAssignment`, what Kafka's
/// consumers send with protocol type `consumer`, every version: a version, then topics each
/// with their partitions, then user data, which is not read). `None` when the bytes are not
/// one. Only for describing a group: the group itself never reads assignments.
pub fn consumer_assignment(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    let mut bytes = bytes;
    if read_i16(&mut bytes)? < 0 {
        return None;
    }
    let mut partitions = Vec::new();
    for _ in 0..read_i32(&mut bytes)? {
        let topic = read_string(&mut bytes)?;
        for _ in 0..read_i32(&mut bytes)? {
            // Each partition takes 4 bytes: a count past the bytes left fails at once.
            partitions.push((topic.clone(), read_i32(&mut bytes)?));
        }
    }
    Some(partitions)
}

impl Group {
    /// A stored group taken back, stable, its members heard from `now`; `None` when it breaks
    /// a limit (a stored group never does, unless written by a build with larger ones) or
    /// names a member or instance twice.
    fn restored(stored: &ClassicStable, now: TimestampMs) -> Option<Group> {
        let timeouts = CLASSIC_SESSION_TIMEOUT_MS_MIN..=CLASSIC_SESSION_TIMEOUT_MS_MAX;
        if stored.members.is_empty()
            || stored.members.len() > CLASSIC_GROUP_MEMBERS_MAX
            || stored.protocol_type.is_empty()
            || stored.protocol.is_empty()
        {
            return None;
        }
        let mut members = BTreeMap::new();
        let mut instances = BTreeMap::new();
        for m in &stored.members {
            let fits = timeouts.contains(&m.session_timeout_ms)
                && stored.protocol.len() + m.metadata.len() <= CLASSIC_MEMBER_METADATA_BYTES_MAX
                && m.assignment.len() <= CLASSIC_ASSIGNMENT_BYTES_MAX
                && m.instance_id.as_ref().is_none_or(|id| {
                    (1..=CLASSIC_INSTANCE_ID_BYTES_MAX).contains(&id.len())
                        && instances.insert(id.clone(), m.id.clone()).is_none()
                });
            let member = Member {
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                protocols: vec![(stored.protocol.clone(), m.metadata.clone())],
                assignment: m.assignment.clone(),
                last_heard: now,
                awaiting_join: None,
                awaiting_sync: None,
                synced: true,
            };
            if !fits || members.insert(m.id.clone(), member).is_some() {
                return None;
            }
        }
        let leader = match members.contains_key(&stored.leader) {
            true => stored.leader.clone(),
            false => members.keys().next().cloned().expect("not empty"),
        };
        Some(Group {
            state: ClassicState::Stable,
            generation: stored.generation,
            protocol_type: stored.protocol_type.clone(),
            protocol_name: stored.protocol.clone(),
            leader: Some(leader),
            members,
            instances,
            pending: BTreeMap::new(),
            rebalance_deadline: None,
            initial_delay: None,
            sync_deadline: None,
        })
    }

    /// What is stored of a stable group: its members with the chosen protocol's metadata and
    /// their assignments.
    fn stable(&self) -> ClassicStable {
        let members = self
            .members
            .iter()
            .map(|(id, m)| ClassicStoredMember {
                id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                metadata: m.metadata_for(&self.protocol_name),
                assignment: m.assignment.clone(),
            })
            .collect();
        ClassicStable {
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol_name.clone(),
            generation: self.generation,
            leader: self.leader.clone().unwrap_or_default(),
            members,
        }
    }

    /// Metadata and assignment bytes its members hold.
    fn bytes(&self) -> usize {
        self.members.values().map(Member::bytes).sum()
    }

    /// Whether a joining member fits the group: the same protocol type, and a protocol every
    /// member (it included) supports.
    fn supports(&self, request: &JoinRequest, replaced: Option<&str>) -> bool {
        if request.protocol_type != self.protocol_type {
            return false;
        }
        let others = self
            .members
            .iter()
            .filter(|(id, _)| **id != request.member_id && Some(id.as_str()) != replaced);
        let mut candidates: BTreeSet<&str> =
            request.protocols.iter().map(|(n, _)| n.as_str()).collect();
        for (_, member) in others {
            let theirs: BTreeSet<&str> = member.protocols.iter().map(|(n, _)| n.as_str()).collect();
            candidates.retain(|n| theirs.contains(n));
        }
        !candidates.is_empty()
    }

    /// That a request comes from a current member (Kafka's rule): with an instance id, the
    /// instance must be known (`UNKNOWN_MEMBER_ID`) and held by this member id
    /// (`FENCED_INSTANCE_ID`: a newer member took the instance's place); without, the
    /// member id must be known.
    fn validate_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), ClassicError> {
        match instance_id {
            Some(instance_id) => match self.instances.get(instance_id) {
                Some(current) if current == member_id => Ok(()),
                Some(_) => Err(ClassicError::FencedInstanceId),
                None => Err(ClassicError::UnknownMemberId),
            },
            None if self.members.contains_key(member_id) => Ok(()),
            None => Err(ClassicError::UnknownMemberId),
        }
    }

    /// Starts a join phase: pending syncs are told to rejoin, and the deadline is set.
    fn prepare_rebalance(&mut self, now: TimestampMs, replies: &mut Replies) {
        for member in self.members.values_mut() {
            if let Some(waiting) = member.awaiting_sync.take() {
                replies.syncs.push((waiting, Err(ClassicError::RebalanceInProgress)));
            }
        }
        let timeout = self.rebalance_timeout_ms();
        self.state = ClassicState::PreparingRebalance;
        self.rebalance_deadline = Some(now.plus_ms(timeout));
        self.sync_deadline = None;
    }

    /// The largest rebalance timeout of the members.
    fn rebalance_timeout_ms(&self) -> u64 {
        let largest = self.members.values().map(|m| m.rebalance_timeout_ms.max(0) as u64).max();
        largest.unwrap_or(0).min(CLASSIC_REBALANCE_TIMEOUT_MS_MAX)
    }

    /// At the initial delay's deadline: `true` (and a later deadline) when members joined
    /// during it and its time is not over.
    fn extend_initial_delay(&mut self, now: TimestampMs, delay_ms: u64) -> bool {
        let Some(initial) = &mut self.initial_delay else { return false };
        if !initial.joined_since || now >= initial.end_by {
            return false;
        }
        assert!(initial.started <= now);
        initial.joined_since = false;
        self.rebalance_deadline = Some(now.plus_ms(delay_ms).min(initial.end_by));
        true
    }

    /// Ends the join phase if every member has rejoined (the initial delay's only at its
    /// deadline).
    fn try_complete_join(&mut self, now: TimestampMs, replies: &mut Replies) {
        if self.initial_delay.is_some() {
            return;
        }
        let all_joined =
            self.members.values().all(|m| m.awaiting_join.is_some()) && self.pending.is_empty();
        if self.state == ClassicState::PreparingRebalance && all_joined {
            let removed = self.complete_join(now, replies);
            assert!(removed.is_empty(), "every member rejoined");
        }
    }

    /// Ends the join phase: dynamic members that did not rejoin are removed (and returned),
    /// the generation goes up and every waiting join is answered. Static members that did
    /// not rejoin stay, with their place in the new generation, until their session timeout
    /// (or the sync deadline) passes, as in Kafka: a member restarting during a rebalance
    /// then finds its assignment. If only such members are left, the phase waits another
    /// rebalance timeout.
    fn complete_join(&mut self, now: TimestampMs, replies: &mut Replies) -> Vec<Member> {
        let late: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.awaiting_join.is_none() && m.instance_id.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let removed: Vec<Member> = late.iter().filter_map(|id| self.members.remove(id)).collect();
        for member in &removed {
            if let Some(waiting) = member.awaiting_sync {
                replies.syncs.push((waiting, Err(ClassicError::UnknownMemberId)));
            }
        }
        self.initial_delay = None;
        let joined = |m: &Member| m.awaiting_join.is_some();
        if !self.members.is_empty() && !self.members.values().any(joined) {
            let timeout = self.rebalance_timeout_ms();
            self.rebalance_deadline = Some(now.plus_ms(timeout));
            return removed;
        }
        self.rebalance_deadline = None;
        self.generation = self.generation.wrapping_add(1).max(1);
        if self.members.is_empty() {
            self.leader = None;
            self.state = ClassicState::Stable;
            return removed;
        }
        // The leader must be a member that rejoined: only those hear the join's answer.
        if !self.leader.as_ref().and_then(|l| self.members.get(l)).is_some_and(joined) {
            self.leader = self.members.iter().find(|(_, m)| joined(m)).map(|(id, _)| id.clone());
        }
        self.protocol_name = self.select_protocol();
        self.state = ClassicState::CompletingRebalance;
        let timeout = self.rebalance_timeout_ms();
        self.sync_deadline = Some(now.plus_ms(timeout));
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let joined = self.joined(&id);
            let member = self.members.get_mut(&id).expect("listed");
            member.last_heard = member.last_heard.max(now);
            member.synced = false;
            if let Some(waiting) = member.awaiting_join.take() {
                replies.joins.push((waiting, Ok(joined)));
            }
        }
        removed
    }

    /// The protocol every member supports that most members prefer (Kafka's vote).
    fn select_protocol(&self) -> String {
        let mut candidates: Option<BTreeSet<&str>> = None;
        for member in self.members.values() {
            let theirs: BTreeSet<&str> = member.protocols.iter().map(|(n, _)| n.as_str()).collect();
            candidates = Some(match candidates {
                None => theirs,
                Some(c) => c.intersection(&theirs).copied().collect(),
            });
        }
        let candidates = candidates.unwrap_or_default();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) =
                member.protocols.iter().find(|(n, _)| candidates.contains(n.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max().unwrap_or(0);
        votes
            .into_iter()
            .find(|(_, n)| *n == best)
            .map(|(name, _)| name.to_owned())
            .unwrap_or_default()
    }

    fn joined(&self, member_id: &str) -> Joined {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    metadata: m.metadata_for(&self.protocol_name),
                })
                .collect()
        } else {
            Vec::new()
        };
        Joined {
            generation: self.generation,
            protocol_name: self.protocol_name.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }
}

#[cfg(test)]
mod tests;
