//! Listing, describing, resetting and deleting consumer groups: what `spool group` shows and
//! does.

use spool_proto::v1 as wire;
use spool_proto::v1::group_service_client::GroupServiceClient;

use crate::error::AdminError;
use crate::{Client, OffsetReset, StartAt, TopicPartition};

/// Where a group stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members: only committed offsets.
    Empty,
    /// Partitions are moving between members.
    Rebalancing,
    /// Every partition has its owner.
    Stable,
    /// A state this client does not know (a newer server).
    Unknown,
}

impl std::fmt::Display for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GroupState::Empty => "EMPTY",
            GroupState::Rebalancing => "REBALANCING",
            GroupState::Stable => "STABLE",
            GroupState::Unknown => "UNKNOWN",
        })
    }
}

/// A consumer group as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    pub state: GroupState,
    pub generation: u64,
    /// The topics its members consume, or that it has committed offsets for.
    pub topics: Vec<String>,
    /// Where members start partitions without a committed offset; `None` for a group without
    /// members.
    pub reset: Option<OffsetReset>,
    /// Filled in by [`Client::describe_group`]; empty in [`Client::list_groups`].
    pub members: Vec<MemberInfo>,
    /// Filled in by [`Client::describe_group`]; empty in [`Client::list_groups`].
    pub partitions: Vec<GroupPartitionInfo>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub member_id: String,
    pub session_timeout_ms: u32,
    pub owned: Vec<TopicPartition>,
    /// Partitions it was asked to give up and has not yet.
    pub revoking: Vec<TopicPartition>,
    /// Taken back from storage by a restarted server (or a new coordinator) and not joined
    /// again yet: it keeps its partitions until it does, or its session timeout passes.
    pub awaiting_rejoin: bool,
}

/// One partition a group consumes or has committed an offset for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPartitionInfo {
    pub topic: String,
    pub partition: u32,
    /// The member that owns it.
    pub owner: Option<String>,
    /// Whether its owner is giving it up.
    pub revoking: bool,
    pub committed_offset: Option<u64>,
    /// The partition's log end; `None` when the topic no longer exists.
    pub log_end_offset: Option<u64>,
    /// Records between the committed offset (or the log start) and the log end.
    pub lag: Option<u64>,
}

fn partitions(list: Vec<wire::TopicPartition>) -> Vec<TopicPartition> {
    list.into_iter().map(|p| TopicPartition { topic: p.topic, partition: p.partition }).collect()
}

impl GroupInfo {
    fn from_wire(group: wire::GroupDescription) -> GroupInfo {
        let state = match wire::GroupState::try_from(group.state) {
            Ok(wire::GroupState::Empty) => GroupState::Empty,
            Ok(wire::GroupState::Rebalancing) => GroupState::Rebalancing,
            Ok(wire::GroupState::Stable) => GroupState::Stable,
            Ok(wire::GroupState::Unspecified) | Err(_) => GroupState::Unknown,
        };
        let reset = match wire::OffsetReset::try_from(group.reset) {
            Ok(wire::OffsetReset::Earliest) => Some(OffsetReset::Earliest),
            Ok(wire::OffsetReset::Latest) => Some(OffsetReset::Latest),
            Ok(wire::OffsetReset::Unspecified) | Err(_) => None,
        };
        GroupInfo {
            name: group.name,
            state,
            generation: group.generation,
            topics: group.topics,
            reset,
            members: group
                .members
                .into_iter()
                .map(|m| MemberInfo {
                    member_id: m.member_id,
                    session_timeout_ms: m.session_timeout_ms,
                    owned: partitions(m.owned),
                    revoking: partitions(m.revoking),
                    awaiting_rejoin: m.awaiting_rejoin,
                })
                .collect(),
            partitions: group
                .partitions
                .into_iter()
                .map(|p| GroupPartitionInfo {
                    topic: p.topic,
                    partition: p.partition,
                    owner: p.owner,
                    revoking: p.revoking,
                    committed_offset: p.committed_offset,
                    log_end_offset: p.log_end_offset,
                    lag: p.lag,
                })
                .collect(),
        }
    }
}

impl Client {
    fn groups(&self) -> GroupServiceClient<crate::Transport> {
        GroupServiceClient::new(self.transport())
    }

    /// Makes a group call here, and once more at the node a refusal names: on a cluster,
    /// one node coordinates every group.
    async fn at_coordinator<T, F>(
        &self,
        call: impl Fn(GroupServiceClient<crate::Transport>) -> F,
    ) -> Result<T, AdminError>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let refused = match call(self.groups()).await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(status) => status,
        };
        match self.named_by(&refused).await {
            Some(coordinator) => Ok(call(coordinator?.groups()).await?.into_inner()),
            None => Err(refused.into()),
        }
    }

    /// Every group: those with members and those with committed offsets only.
    pub async fn list_groups(&self) -> Result<Vec<GroupInfo>, AdminError> {
        let listed = self
            .at_coordinator(|mut groups| async move {
                groups.list_groups(wire::ListGroupsRequest {}).await
            })
            .await?;
        Ok(listed.groups.into_iter().map(GroupInfo::from_wire).collect())
    }

    /// A group's members, assignments and, per partition, committed offset and lag
    /// ([`crate::ErrorCode::NotFound`] for a group the server does not know).
    pub async fn describe_group(&self, group: &str) -> Result<GroupInfo, AdminError> {
        let request = wire::DescribeGroupRequest { group: group.to_owned() };
        let described = self
            .at_coordinator(|mut groups| {
                let request = request.clone();
                async move { groups.describe_group(request).await }
            })
            .await?;
        Ok(GroupInfo::from_wire(described.group.unwrap_or_default()))
    }

    /// Moves a group's committed offsets for every partition of `topic` to `to` (a time is
    /// looked up per partition), and returns what was committed. Refused
    /// ([`crate::ErrorCode::FailedPrecondition`]) while the group has members.
    pub async fn reset_group(
        &self,
        group: &str,
        topic: &str,
        to: StartAt,
    ) -> Result<Vec<(TopicPartition, u64)>, AdminError> {
        self.reset(group, topic, None, to).await
    }

    /// [`Client::reset_group`] for one partition of `topic`; the group's other partitions keep
    /// their committed offsets ([`crate::ErrorCode::NotFound`] for a partition the topic does
    /// not have).
    pub async fn reset_group_partition(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        to: StartAt,
    ) -> Result<Vec<(TopicPartition, u64)>, AdminError> {
        self.reset(group, topic, Some(partition), to).await
    }

    async fn reset(
        &self,
        group: &str,
        topic: &str,
        partition: Option<u32>,
        to: StartAt,
    ) -> Result<Vec<(TopicPartition, u64)>, AdminError> {
        let request = wire::ResetGroupRequest {
            group: group.to_owned(),
            topic: topic.to_owned(),
            to: Some(to.wire()),
            partition,
        };
        let reset = self
            .at_coordinator(|mut groups| {
                let request = request.clone();
                async move { groups.reset_group(request).await }
            })
            .await?;
        Ok(offsets(reset.offsets))
    }

    /// Deletes a group: the server forgets its committed offsets, durably. Returns the offsets
    /// it had. Refused ([`crate::ErrorCode::FailedPrecondition`]) while the group has members;
    /// [`crate::ErrorCode::NotFound`] for a group the server does not know.
    pub async fn delete_group(
        &self,
        group: &str,
    ) -> Result<Vec<(TopicPartition, u64)>, AdminError> {
        let request = wire::DeleteGroupRequest { group: group.to_owned(), ..Default::default() };
        self.delete(request).await
    }

    /// Forgets a group's committed offsets of `topic` (of every partition, or of `partition`
    /// only), durably, and returns what they were; the group keeps its others. It may have
    /// members, but none consuming `topic` ([`crate::ErrorCode::FailedPrecondition`] while one
    /// does; [`crate::ErrorCode::NotFound`] for an unknown group, topic or partition).
    pub async fn delete_group_offsets(
        &self,
        group: &str,
        topic: &str,
        partition: Option<u32>,
    ) -> Result<Vec<(TopicPartition, u64)>, AdminError> {
        let topic = Some(topic.to_owned());
        self.delete(wire::DeleteGroupRequest { group: group.to_owned(), topic, partition }).await
    }

    async fn delete(
        &self,
        request: wire::DeleteGroupRequest,
    ) -> Result<Vec<(TopicPartition, u64)>, AdminError> {
        let deleted = self
            .at_coordinator(|mut groups| {
                let request = request.clone();
                async move { groups.delete_group(request).await }
            })
            .await?;
        Ok(offsets(deleted.offsets))
    }
}

fn offsets(offsets: Vec<wire::PartitionOffset>) -> Vec<(TopicPartition, u64)> {
    offsets
        .into_iter()
        .map(|o| (TopicPartition { topic: o.topic, partition: o.partition }, o.offset))
        .collect()
}
