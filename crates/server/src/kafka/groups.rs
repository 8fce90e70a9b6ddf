//! Kafka's classic consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, OffsetDelete, DescribeGroups, ListGroups and
//! DeleteGroups.
//!
//! The decisions are the broker's ([`spool_broker::group::classic`]), made under the one
//! mutex of the server's groups (`crate::groups`), beside Spool's own groups and their
//! committed offsets. Here each request is checked at the edge (group names, topics,
//! partitions, metadata sizes), the coordinator is called, and a JoinGroup or SyncGroup that
//! must wait leaves a waiter and awaits its answer, which the call (or the driver's tick)
//! that completes it sends. At shutdown a waiting request is answered
//! `COORDINATOR_NOT_AVAILABLE`, so a client looks for the coordinator again.
//!
//! A Kafka group's name is a Spool group name (`[a-zA-Z0-9._-]`, 1 to 249 characters);
//! another is `INVALID_GROUP_ID`. A name live in Spool's own group protocol is refused
//! `INCONSISTENT_GROUP_PROTOCOL` (and Spool's join of a name live here is refused
//! `FAILED_PRECONDITION`).
//!
//! With tokens, a group's requests need a grant on the group, as gRPC's group calls do:
//! joining, syncing, heartbeats, leaving, committing and fetching offsets `consume`,
//! DescribeGroups any grant (ListGroups lists only those), DeleteGroups and OffsetDelete
//! `administer`, each refused `GROUP_AUTHORIZATION_FAILED`; a commit or an offset's deletion
//! also needs `consume` on each topic (`TOPIC_AUTHORIZATION_FAILED` for that partition).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use spool_broker::group::classic::{ClassicError, JoinRequest, Joined, MemberRef};
use spool_broker::group::{DeleteError, DeleteOffsetsError, GroupName, GroupState, TopicPartition};
use spool_broker::limits::{CLASSIC_COMMIT_METADATA_BYTES_MAX, COMMIT_OFFSETS_MAX};
use spool_storage::Offset;
use tokio::sync::oneshot;

use super::Shared;
use super::apis::NODE_ID;
use super::codes::classic_error_code;
use crate::auth::{Action, Caller, Resource};
use crate::groups::ClassicWaiter;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_owned())
}

/// The group's name, if `caller` may `action` it (`GROUP_AUTHORIZATION_FAILED`, checked
/// first), it is valid (`INVALID_GROUP_ID`), and, on a cluster, this node coordinates it
/// (`NOT_COORDINATOR`: the client asks FindCoordinator again) and has loaded the groups
/// (`COORDINATOR_LOAD_IN_PROGRESS`, the load started: the client retries).
fn group_name(
    shared: &Shared,
    caller: &Caller,
    action: Action,
    group: &GroupId,
) -> Result<GroupName, i16> {
    caller
        .allow(action, Resource::Group(group.as_str()))
        .map_err(|error| super::codes::error_code(&error.into()))?;
    let name = GroupName::parse(group.as_str()).map_err(|error| {
        tracing::debug!(%error, "a Kafka group request refused");
        ResponseError::InvalidGroupId.code()
    })?;
    if let Some(cluster) = shared.topics.cluster() {
        let coordinator = cluster.kafka_coordinator().map(|(id, _)| id);
        if coordinator != Some(cluster.node_id) {
            return Err(ResponseError::NotCoordinator.code());
        }
        if !cluster.groups_loaded() {
            cluster.load_groups_in_background();
            return Err(ResponseError::CoordinatorLoadInProgress.code());
        }
    }
    Ok(name)
}

/// Awaits a waiting request's answer: the error code (with the member id, for
/// MEMBER_ID_REQUIRED); at shutdown, `COORDINATOR_NOT_AVAILABLE`.
async fn answer<T>(
    shared: &Shared,
    waiting: oneshot::Receiver<Result<T, ClassicError>>,
) -> Result<T, (i16, Option<String>)> {
    let stop = shared.topics.streams_stop.clone();
    let not_available = (ResponseError::CoordinatorNotAvailable.code(), None);
    tokio::select! {
        answer = waiting => match answer {
            Ok(Ok(answer)) => Ok(answer),
            // MEMBER_ID_REQUIRED carries the id the member must join with.
            Ok(Err(ClassicError::MemberIdRequired { member_id })) => {
                Err((ResponseError::MemberIdRequired.code(), Some(member_id)))
            }
            Ok(Err(error)) => Err((classic_error_code(&error), None)),
            Err(_) => Err(not_available),
        },
        () = stop.cancelled() => Err(not_available),
    }
}

/// A single node coordinates every group: node 0 at the advertised address. On a cluster,
/// the node `Cluster::kafka_coordinator` names (the offsets group's leader). Only group
/// coordinators are looked up here (key type 0); there are no transactions.
pub(super) fn find_coordinator(
    shared: &Shared,
    request: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let response = FindCoordinatorResponse::default();
    if request.key_type != 0 {
        return response
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_error_message(Some(StrBytes::from_static_str(
                "only group coordinators are served: this server has no transactions",
            )))
            .with_node_id(BrokerId(-1))
            .with_port(-1);
    }
    let Some(cluster) = shared.topics.cluster() else {
        return response
            .with_node_id(BrokerId(NODE_ID))
            .with_host(text(&shared.advertised.host))
            .with_port(i32::from(shared.advertised.port));
    };
    let coordinator = cluster.kafka_coordinator().and_then(|(id, address)| {
        address.parse::<super::AdvertisedAddress>().ok().map(|address| (id, address))
    });
    match coordinator {
        Some((id, address)) => response
            .with_node_id(BrokerId(id as i32))
            .with_host(text(&address.host))
            .with_port(i32::from(address.port)),
        None => response
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_node_id(BrokerId(-1))
            .with_port(-1),
    }
}

fn join_error(code: i16, member_id: StrBytes) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(code)
        .with_generation_id(-1)
        .with_protocol_name(Some(StrBytes::default()))
        .with_member_id(member_id)
}

/// Who sent a request: the client id from its header, and the address it came from.
pub(super) struct Client<'a> {
    pub(super) id: &'a str,
    pub(super) host: &'a str,
}

pub(super) async fn join_group(
    shared: &Shared,
    caller: &Caller,
    request: JoinGroupRequest,
    version: i16,
    client: Client<'_>,
) -> JoinGroupResponse {
    let group = match group_name(shared, caller, Action::Consume, &request.group_id) {
        Ok(group) => group,
        Err(code) => return join_error(code, request.member_id),
    };
    let join = JoinRequest {
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.as_ref().map(|id| id.to_string()),
        client_id: client.id.to_owned(),
        client_host: client.host.to_owned(),
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.to_vec()))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let groups = &shared.groups;
    let waiting = {
        let mut state = groups.lock_coordinated();
        let now = groups.now();
        match state.coordinator.classic_join(&group, join, now) {
            Err(error) => return join_error(classic_error_code(&error), request.member_id),
            Ok((ticket, replies)) => {
                let (sender, waiting) = oneshot::channel();
                state.classic_waiters.insert(ticket, ClassicWaiter::Join(sender));
                groups.settle(&mut state, replies);
                waiting
            }
        }
    };
    groups.deadlines_changed();
    match answer(shared, waiting).await {
        Ok(joined) => joined_response(joined, version),
        Err((code, given)) => join_error(code, given.map_or(request.member_id, |id| text(&id))),
    }
}

/// A member's group instance id goes out from JoinGroup 5, which carries it.
fn joined_response(joined: Joined, version: i16) -> JoinGroupResponse {
    let members = joined
        .members
        .into_iter()
        .map(|member| {
            let instance_id = member.instance_id.filter(|_| version >= 5);
            JoinGroupResponseMember::default()
                .with_member_id(text(&member.member_id))
                .with_group_instance_id(instance_id.as_deref().map(text))
                .with_metadata(Bytes::from(member.metadata))
        })
        .collect();
    JoinGroupResponse::default()
        .with_generation_id(joined.generation)
        .with_protocol_name(Some(text(&joined.protocol_name)))
        .with_leader(text(&joined.leader))
        .with_member_id(text(&joined.member_id))
        .with_members(members)
}

pub(super) async fn sync_group(
    shared: &Shared,
    caller: &Caller,
    request: SyncGroupRequest,
) -> SyncGroupResponse {
    let group = match group_name(shared, caller, Action::Consume, &request.group_id) {
        Ok(group) => group,
        Err(code) => return SyncGroupResponse::default().with_error_code(code),
    };
    let assignments = request
        .assignments
        .iter()
        .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
        .collect();
    let groups = &shared.groups;
    let waiting = {
        let mut state = groups.lock_coordinated();
        let now = groups.now();
        let member = MemberRef {
            member_id: request.member_id.as_str(),
            instance_id: request.group_instance_id.as_deref(),
        };
        let (ticket, replies) = state.coordinator.classic_mut().sync(
            &group,
            member,
            request.generation_id,
            assignments,
            now,
        );
        let (sender, waiting) = oneshot::channel();
        state.classic_waiters.insert(ticket, ClassicWaiter::Sync(sender));
        groups.settle(&mut state, replies);
        waiting
    };
    groups.deadlines_changed();
    match answer(shared, waiting).await {
        Ok(assignment) => SyncGroupResponse::default().with_assignment(Bytes::from(assignment)),
        Err((code, _)) => SyncGroupResponse::default().with_error_code(code),
    }
}

pub(super) fn heartbeat(
    shared: &Shared,
    caller: &Caller,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let group = match group_name(shared, caller, Action::Consume, &request.group_id) {
        Ok(group) => group,
        Err(code) => return HeartbeatResponse::default().with_error_code(code),
    };
    let groups = &shared.groups;
    let member = MemberRef {
        member_id: request.member_id.as_str(),
        instance_id: request.group_instance_id.as_deref(),
    };
    let beat = groups.lock_coordinated().coordinator.classic_mut().heartbeat(
        &group,
        member,
        request.generation_id,
        groups.now(),
    );
    groups.deadlines_changed();
    let code = beat.err().map_or(0, |error| classic_error_code(&error));
    HeartbeatResponse::default().with_error_code(code)
}

/// Up to version 2 one member leaves, by member id, and its error is the answer's. From
/// version 3 a batch leaves, each member by member id or group instance id (or both), each
/// with its own error; the batch is bounded by the frame it came in.
pub(super) fn leave_group(
    shared: &Shared,
    caller: &Caller,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = match group_name(shared, caller, Action::Consume, &request.group_id) {
        Ok(group) => group,
        Err(code) => return LeaveGroupResponse::default().with_error_code(code),
    };
    let leaving: Vec<(StrBytes, Option<StrBytes>)> = if version < 3 {
        vec![(request.member_id, None)]
    } else {
        request.members.into_iter().map(|m| (m.member_id, m.group_instance_id)).collect()
    };
    let groups = &shared.groups;
    let codes: Vec<i16> = {
        let mut state = groups.lock_coordinated();
        let now = groups.now();
        leaving
            .iter()
            .map(|(member_id, instance_id)| {
                let member = MemberRef {
                    member_id: member_id.as_str(),
                    instance_id: instance_id.as_deref(),
                };
                match state.coordinator.classic_mut().leave(&group, member, now) {
                    Ok(replies) => {
                        groups.settle(&mut state, replies);
                        0
                    }
                    Err(error) => classic_error_code(&error),
                }
            })
            .collect()
    };
    groups.deadlines_changed();
    if version < 3 {
        return LeaveGroupResponse::default().with_error_code(codes[0]);
    }
    let members = leaving
        .into_iter()
        .zip(codes)
        .map(|((member_id, instance_id), code)| {
            MemberResponse::default()
                .with_member_id(member_id)
                .with_group_instance_id(instance_id)
                .with_error_code(code)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

/// Commits the offsets of partitions that exist, each with metadata of at most
/// [`CLASSIC_COMMIT_METADATA_BYTES_MAX`] bytes, once they are durable. A partition that
/// does not exist is `UNKNOWN_TOPIC_OR_PARTITION`, a negative offset `OFFSET_OUT_OF_RANGE`,
/// longer metadata `OFFSET_METADATA_TOO_LARGE`, and partitions past the
/// [`COMMIT_OFFSETS_MAX`] one commit may carry `INVALID_COMMIT_OFFSET_SIZE`; the others are
/// committed together or refused together with the group's answer.
pub(super) async fn offset_commit(
    shared: &Shared,
    caller: &Caller,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    let group = group_name(shared, caller, Action::Consume, &request.group_id);
    let mut codes: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    let mut offsets = Vec::new();
    let mut metadata = BTreeMap::new();
    // Where each partition to commit is in `codes`.
    let mut places = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for partition in &topic.partitions {
            let index = partition.partition_index;
            let checked = check_commit(
                shared,
                caller,
                &group,
                topic.name.as_str(),
                partition.partition_index,
                partition.committed_offset,
            );
            let committed_metadata = partition.committed_metadata.as_deref().unwrap_or("");
            let code = match checked {
                Err(code) => code,
                Ok(_) if committed_metadata.len() > CLASSIC_COMMIT_METADATA_BYTES_MAX => {
                    ResponseError::OffsetMetadataTooLarge.code()
                }
                Ok(_) if offsets.len() >= COMMIT_OFFSETS_MAX => {
                    ResponseError::InvalidCommitOffsetSize.code()
                }
                Ok((partition_id, offset)) => {
                    if !committed_metadata.is_empty() {
                        metadata.insert(partition_id.clone(), committed_metadata.to_owned());
                    }
                    offsets.push((partition_id, offset));
                    places.push((codes.len(), partitions.len()));
                    0
                }
            };
            partitions.push((index, code));
        }
        codes.push((topic.name.clone(), partitions));
    }
    if let (Ok(group), false) = (&group, offsets.is_empty()) {
        let code = commit(shared, group, &request, offsets, metadata).await;
        for (topic, partition) in places {
            codes[topic].1[partition].1 = code;
        }
    }
    let topics = codes
        .into_iter()
        .map(|(name, partitions)| {
            OffsetCommitResponseTopic::default().with_name(name).with_partitions(
                partitions
                    .into_iter()
                    .map(|(index, code)| {
                        OffsetCommitResponsePartition::default()
                            .with_partition_index(index)
                            .with_error_code(code)
                    })
                    .collect(),
            )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One partition of a commit: its group name is valid, it exists and its offset is not
/// negative.
fn check_commit(
    shared: &Shared,
    caller: &Caller,
    group: &Result<GroupName, i16>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(TopicPartition, Offset), i16> {
    let _ = group.as_ref().map_err(|code| *code)?;
    let partition = consumable(shared, caller, topic, partition)?;
    let offset = u64::try_from(offset).map_err(|_| ResponseError::OffsetOutOfRange.code())?;
    Ok((partition, Offset(offset)))
}

/// The partition, if it exists (`UNKNOWN_TOPIC_OR_PARTITION`) and `caller` may consume its
/// topic (`TOPIC_AUTHORIZATION_FAILED`).
fn consumable(
    shared: &Shared,
    caller: &Caller,
    topic: &str,
    partition: i32,
) -> Result<TopicPartition, i16> {
    let unknown = ResponseError::UnknownTopicOrPartition.code();
    let partition = u32::try_from(partition).map_err(|_| unknown)?;
    let found = shared
        .topic(caller, Action::Consume, topic)
        .map_err(|error| super::codes::error_code(&error))?;
    if partition >= found.partitions.len() as u32 {
        return Err(unknown);
    }
    Ok(TopicPartition { topic: found.name.clone(), partition })
}

/// Applies a commit and waits until it is durable; its one error code.
async fn commit(
    shared: &Shared,
    group: &GroupName,
    request: &OffsetCommitRequest,
    offsets: Vec<(TopicPartition, Offset)>,
    metadata: BTreeMap<TopicPartition, String>,
) -> i16 {
    let groups = &shared.groups;
    let member = MemberRef {
        member_id: request.member_id.as_str(),
        instance_id: request.group_instance_id.as_deref(),
    };
    let generation = request.generation_id_or_member_epoch;
    let durable = {
        let mut state = groups.lock_coordinated();
        let now = groups.now();
        // A static member's stale member id is fenced before the rest is checked, as in
        // Kafka; `classic_commit` checks the member id and generation.
        if let Err(error) =
            state.coordinator.classic().check_commit_instance(group, member, generation)
        {
            return classic_error_code(&error);
        }
        let committed = state.coordinator.classic_commit(
            group,
            request.member_id.as_str(),
            request.generation_id_or_member_epoch,
            offsets,
            metadata,
            now,
        );
        match committed {
            Ok(record) => groups.persist(&record),
            Err(error) => return classic_error_code(&error),
        }
    };
    match durable.await {
        Ok(()) => 0,
        Err(error) => {
            tracing::warn!(%error, %group, "a Kafka commit could not be stored");
            ResponseError::CoordinatorNotAvailable.code()
        }
    }
}

/// The committed offsets (and metadata) of the partitions asked for, or of every partition
/// the group committed (no topics, v2 and later). A partition without one is -1.
pub(super) fn offset_fetch(
    shared: &Shared,
    caller: &Caller,
    request: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    let group = match group_name(shared, caller, Action::Consume, &request.group_id) {
        Ok(group) => group,
        Err(code) => {
            let response = OffsetFetchResponse::default();
            return if version >= 2 { response.with_error_code(code) } else { response };
        }
    };
    let state = shared.groups.lock();
    let coordinator = &state.coordinator;
    let asked: Vec<(TopicName, Vec<i32>)> = match &request.topics {
        Some(topics) => {
            topics.iter().map(|t| (t.name.clone(), t.partition_indexes.clone())).collect()
        }
        None => {
            let mut all: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (partition, _) in coordinator.committed_offsets().of_group(&group) {
                all.entry(partition.topic.to_string())
                    .or_default()
                    .push(partition.partition as i32);
            }
            all.into_iter()
                .map(|(topic, partitions)| (TopicName(text(&topic)), partitions))
                .collect()
        }
    };
    let topics = asked
        .into_iter()
        .map(|(name, partitions)| {
            let partitions = partitions
                .into_iter()
                .map(|index| {
                    let partition = spool_broker::TopicName::parse(name.as_str())
                        .ok()
                        .zip(u32::try_from(index).ok())
                        .map(|(topic, partition)| TopicPartition { topic, partition });
                    let committed =
                        partition.as_ref().and_then(|p| coordinator.committed(&group, p));
                    let metadata = partition
                        .as_ref()
                        .map_or("", |p| coordinator.committed_metadata(&group, p));
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(index)
                        .with_committed_offset(committed.map_or(-1, |o| o.0 as i64))
                        .with_committed_leader_epoch(-1)
                        .with_metadata(Some(text(metadata)))
                })
                .collect();
            OffsetFetchResponseTopic::default().with_name(name).with_partitions(partitions)
        })
        .collect();
    OffsetFetchResponse::default().with_topics(topics)
}

/// Each group asked for: a Kafka group with its members; a Spool group or one with only
/// committed offsets without members; an unknown one as `Dead` (as Kafka's brokers answer
/// at these versions).
pub(super) fn describe_groups(
    shared: &Shared,
    caller: &Caller,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let state = shared.groups.lock_coordinated();
    let coordinator = &state.coordinator;
    let groups = request
        .groups
        .into_iter()
        .map(|id| {
            let described = DescribedGroup::default()
                .with_group_id(id.clone())
                .with_authorized_operations(i32::MIN);
            let group = match group_name(shared, caller, Action::Describe, &id) {
                Ok(group) => group,
                Err(code) => return described.with_error_code(code),
            };
            if let Some(classic) = coordinator.classic().describe(&group) {
                let members = classic
                    .members
                    .into_iter()
                    .map(|m| {
                        // Version 4 carries a member's group instance id.
                        let instance_id = m.instance_id.filter(|_| version >= 4);
                        DescribedGroupMember::default()
                            .with_member_id(text(&m.member_id))
                            .with_group_instance_id(instance_id.as_deref().map(text))
                            .with_client_id(text(&m.client_id))
                            .with_client_host(text(&m.client_host))
                            .with_member_metadata(Bytes::from(m.metadata))
                            .with_member_assignment(Bytes::from(m.assignment))
                    })
                    .collect();
                return described
                    .with_group_state(StrBytes::from_static_str(classic.state.kafka_name()))
                    .with_protocol_type(text(&classic.protocol_type))
                    .with_protocol_data(text(&classic.protocol_name))
                    .with_members(members);
            }
            match coordinator.describe(&group) {
                None => described.with_group_state(StrBytes::from_static_str("Dead")),
                Some(spool) => {
                    let (state, protocol_type) = match spool.state {
                        GroupState::Empty => ("Empty", ""),
                        GroupState::Rebalancing => ("PreparingRebalance", SPOOL_PROTOCOL_TYPE),
                        GroupState::Stable => ("Stable", SPOOL_PROTOCOL_TYPE),
                    };
                    described
                        .with_group_state(StrBytes::from_static_str(state))
                        .with_protocol_type(StrBytes::from_static_str(protocol_type))
                }
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

/// The protocol type Kafka clients see for a group live in Spool's own protocol.
const SPOOL_PROTOCOL_TYPE: &str = "spool";

/// Every group `caller` may see: Kafka groups with their protocol type, Spool's live groups as
/// `spool`, groups with only committed offsets with none.
pub(super) fn list_groups(shared: &Shared, caller: &Caller) -> ListGroupsResponse {
    let state = shared.groups.lock_coordinated();
    let coordinator = &state.coordinator;
    let classic: BTreeMap<&GroupName, &str> = coordinator.classic().list().collect();
    let groups = coordinator
        .list()
        .into_iter()
        .filter(|g| caller.allow(Action::Describe, Resource::Group(g.name.as_str())).is_ok())
        .map(|g| {
            let protocol_type = match (classic.get(&g.name), g.state) {
                (Some(protocol_type), _) => (*protocol_type).to_owned(),
                (None, GroupState::Empty) => String::new(),
                (None, _) => SPOOL_PROTOCOL_TYPE.to_owned(),
            };
            ListedGroup::default()
                .with_group_id(GroupId(text(g.name.as_str())))
                .with_protocol_type(text(&protocol_type))
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// Deletes each named group that has no live members, and its committed offsets (as
/// `spool group delete` does), answered once each deletion is durable: `NON_EMPTY_GROUP`
/// while it has members (of either protocol), `GROUP_ID_NOT_FOUND` when it has neither
/// members nor committed offsets.
pub(super) async fn delete_groups(
    shared: &Shared,
    caller: &Caller,
    request: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let groups = &shared.groups;
    let mut results = Vec::with_capacity(request.groups_names.len());
    let mut durable = Vec::new();
    {
        let mut state = groups.lock_coordinated();
        for group_id in request.groups_names {
            let deleted =
                group_name(shared, caller, Action::Administer, &group_id).and_then(|group| {
                    match state.coordinator.delete(&group) {
                        Ok((record, _forgotten)) => Ok((group, groups.persist_record(&record))),
                        Err(DeleteError::LiveMembers { .. }) => {
                            Err(ResponseError::NonEmptyGroup.code())
                        }
                        Err(DeleteError::Unknown { .. }) => {
                            Err(ResponseError::GroupIdNotFound.code())
                        }
                    }
                });
            match deleted {
                Ok(pending) => {
                    durable.push((results.len(), pending));
                    results.push(DeletableGroupResult::default().with_group_id(group_id));
                }
                Err(code) => results.push(
                    DeletableGroupResult::default().with_group_id(group_id).with_error_code(code),
                ),
            }
        }
    }
    for (at, (group, pending)) in durable {
        match pending.await {
            Ok(()) => {
                crate::metrics::retire_group(group.as_str());
                tracing::info!(identity = caller.identity(), %group, "group deleted over Kafka");
            }
            Err(error) => results[at].error_code = super::codes::error_code(&error),
        }
    }
    DeleteGroupsResponse::default().with_results(results)
}

/// Forgets a group's committed offsets of the partitions named (Kafka's OffsetDelete),
/// answered once the forgetting is durable; its other offsets stay. As in Kafka, partitions of
/// a topic a live member consumes keep theirs (`GROUP_SUBSCRIBED_TO_TOPIC`), a group whose
/// live members are not consumers keeps all (`NON_EMPTY_GROUP`), a group with neither members
/// nor offsets is `GROUP_ID_NOT_FOUND`, and a partition without an offset is answered as
/// forgotten.
pub(super) async fn offset_delete(
    shared: &Shared,
    caller: &Caller,
    request: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    let group = match group_name(shared, caller, Action::Administer, &request.group_id) {
        Ok(group) => group,
        Err(code) => return OffsetDeleteResponse::default().with_error_code(code),
    };
    let mut codes: Vec<(TopicName, Vec<(i32, i16)>)> = Vec::new();
    // The partitions to forget, and where each is in `codes`.
    let mut asked: Vec<(TopicPartition, (usize, usize))> = Vec::new();
    for topic in &request.topics {
        let mut partitions = Vec::new();
        for partition in &topic.partitions {
            let index = partition.partition_index;
            let code = match consumable(shared, caller, topic.name.as_str(), index) {
                Err(code) => code,
                // One record names them all: it is bounded as a commit is.
                Ok(_) if asked.len() >= COMMIT_OFFSETS_MAX => ResponseError::InvalidRequest.code(),
                Ok(partition) => {
                    asked.push((partition, (codes.len(), partitions.len())));
                    0
                }
            };
            partitions.push((index, code));
        }
        codes.push((topic.name.clone(), partitions));
    }
    let partitions: Vec<TopicPartition> = asked.iter().map(|(p, _)| p.clone()).collect();
    let groups = &shared.groups;
    let deleted = {
        let mut state = groups.lock_coordinated();
        state.coordinator.delete_offsets(&group, &partitions).map(|deletion| {
            let durable = deletion.record().map(|record| groups.persist_record(&record));
            (deletion, durable)
        })
    };
    let (deletion, durable) = match deleted {
        Ok(deleted) => deleted,
        Err(error) => {
            let code = match error {
                DeleteOffsetsError::Unknown { .. } => ResponseError::GroupIdNotFound.code(),
                DeleteOffsetsError::NotConsumers { .. } => ResponseError::NonEmptyGroup.code(),
                // `delete_offsets` answers a consumed partition in `consumed` instead.
                DeleteOffsetsError::Consumed { .. } => ResponseError::GroupSubscribedToTopic.code(),
            };
            return OffsetDeleteResponse::default().with_error_code(code);
        }
    };
    for (partition, (topic, at)) in &asked {
        if deletion.consumed.contains(partition) {
            codes[*topic].1[*at].1 = ResponseError::GroupSubscribedToTopic.code();
        }
    }
    if let Some(pending) = durable {
        let forgotten = &deletion.forgotten;
        match pending.await {
            Ok(()) => {
                for partition in forgotten.keys() {
                    let topic = partition.topic.as_str();
                    crate::metrics::retire_group_partition(
                        group.as_str(),
                        topic,
                        partition.partition,
                    );
                }
                tracing::info!(identity = caller.identity(), %group, partitions = forgotten.len(), "a group's offsets deleted over Kafka");
            }
            Err(error) => {
                tracing::warn!(%error, %group, "deleting a group's offsets could not be stored");
                let code = super::codes::error_code(&error);
                for (partition, (topic, at)) in &asked {
                    if forgotten.contains_key(partition) {
                        codes[*topic].1[*at].1 = code;
                    }
                }
            }
        }
    }
    let topics = codes
        .into_iter()
        .map(|(name, partitions)| {
            OffsetDeleteResponseTopic::default().with_name(name).with_partitions(
                partitions
                    .into_iter()
                    .map(|(index, code)| {
                        OffsetDeleteResponsePartition::default()
                            .with_partition_index(index)
                            .with_error_code(code)
                    })
                    .collect(),
            )
        })
        .collect();
    OffsetDeleteResponse::default().with_topics(topics)
}
