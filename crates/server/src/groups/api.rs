//! The group service: the member stream (`Join`), and the unary calls that list, describe,
//! reset and delete groups.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};

use spool_broker::TopicName;
use spool_broker::group::{
    GroupDescription, GroupName, GroupState, OffsetReset, Subscription, TopicPartition,
};
use spool_proto::limits::{
    GROUP_SESSION_TIMEOUT_MS_DEFAULT, GROUP_SESSION_TIMEOUT_MS_MAX, GROUP_SESSION_TIMEOUT_MS_MIN,
};

use crate::limits::{GROUP_MEMBER_QUEUE_DEPTH, JOIN_WAIT};
use spool_proto::v1::group_service_server::GroupService;
use spool_proto::v1::member_event::Kind;
use spool_proto::v1::member_request::Kind as RequestKind;
use spool_proto::v1::start_position::Position;
use spool_proto::v1::{
    DeleteGroupRequest, DeleteGroupResponse, DescribeGroupRequest, DescribeGroupResponse,
    GroupDescription as WireGroup, GroupPartition, GroupState as WireState, JoinGroup, Joined,
    ListGroupsRequest, ListGroupsResponse, MemberDescription, MemberEvent, MemberRequest,
    OffsetReset as WireReset, PartitionOffset, ResetGroupRequest, ResetGroupResponse,
};
use spool_storage::{Offset, TimestampMs};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::feed::{FeedItem, RecordsOut};
use super::member::{Ending, Member, wire_partition};
use super::{Groups, MemberLink};
use crate::auth::{Action, Caller, Resource};
use crate::consume::{Wire, wire};
use crate::error::{InvalidRequest, ServiceError};
use crate::replies::Replies;

#[derive(Debug, Clone)]
pub(crate) struct GroupApi {
    pub(crate) groups: Arc<Groups>,
}

type MemberEvents = Pin<Box<dyn Stream<Item = Result<MemberEvent, Status>> + Send>>;

/// What a member receives: its control messages (join answer, assignments, commit results)
/// before any queued records, records of stopped feeds dropped (see `feed`), and at the end
/// the status its task left in `ending` (none: the stream ends OK).
struct MemberStream {
    control: mpsc::Receiver<Result<MemberEvent, Status>>,
    records: mpsc::Receiver<FeedItem>,
    control_closed: bool,
    records_closed: bool,
    ending: Ending,
    ended: bool,
}

impl Stream for MemberStream {
    type Item = Result<MemberEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if !self.control_closed {
                match self.control.poll_recv(cx) {
                    Poll::Ready(Some(message)) => return Poll::Ready(Some(message)),
                    Poll::Ready(None) => self.control_closed = true,
                    Poll::Pending => {}
                }
            }
            if !self.records_closed {
                match self.records.poll_recv(cx) {
                    Poll::Ready(Some(item)) if item.alive.load(Ordering::SeqCst) => {
                        return Poll::Ready(Some(Ok(item.event)));
                    }
                    Poll::Ready(Some(_stopped)) => continue,
                    Poll::Ready(None) => self.records_closed = true,
                    Poll::Pending => {}
                }
            }
            if !(self.control_closed && self.records_closed) {
                return Poll::Pending;
            }
            self.ended = true;
            let status = self.ending.lock().unwrap_or_else(PoisonError::into_inner).take();
            return Poll::Ready(status.map(Err));
        }
    }
}

fn reset_choice(reset: i32) -> Result<OffsetReset, InvalidRequest> {
    match WireReset::try_from(reset) {
        Ok(WireReset::Unspecified | WireReset::Earliest) => Ok(OffsetReset::Earliest),
        Ok(WireReset::Latest) => Ok(OffsetReset::Latest),
        Err(_) => Err(InvalidRequest::UnknownEnumValue { field: "reset", value: reset }),
    }
}

fn wire_reset(reset: OffsetReset) -> WireReset {
    match reset {
        OffsetReset::Earliest => WireReset::Earliest,
        OffsetReset::Latest => WireReset::Latest,
    }
}

impl GroupApi {
    /// Checks a join and resolves its topics' partition counts.
    async fn subscription(
        &self,
        caller: &Caller,
        join: &JoinGroup,
    ) -> Result<(GroupName, Subscription, u64, Wire), ServiceError> {
        // What the request itself gets wrong comes first, whatever exists: a name no topic
        // may have is INVALID_ARGUMENT even beside a topic that does not exist.
        let group = GroupName::parse(&join.group)?;
        let names = join.topics.iter().take(spool_broker::limits::GROUP_TOPICS_MAX + 1);
        let names: Vec<TopicName> =
            names.map(|name| TopicName::parse(name)).collect::<Result<_, _>>()?;
        let reset = reset_choice(join.reset)?;
        let wire = wire(join.encoding)?;
        if join.member_id.len() > spool_broker::limits::MEMBER_ID_BYTES_MAX {
            return Err(InvalidRequest::GroupProtocol {
                reason: "`member_id` is longer than any id the server gives (64 bytes at most)",
            }
            .into());
        }
        let session_timeout_ms = match join.session_timeout_ms {
            0 => GROUP_SESSION_TIMEOUT_MS_DEFAULT,
            ms => u64::from(ms),
        };
        if !(GROUP_SESSION_TIMEOUT_MS_MIN..=GROUP_SESSION_TIMEOUT_MS_MAX)
            .contains(&session_timeout_ms)
        {
            return Err(InvalidRequest::SessionTimeout {
                session_timeout_ms,
                min_ms: GROUP_SESSION_TIMEOUT_MS_MIN,
                max_ms: GROUP_SESSION_TIMEOUT_MS_MAX,
            }
            .into());
        }
        caller.allow(Action::Consume, Resource::Group(group.as_str()))?;
        let mut topics = BTreeMap::new();
        for name in &names {
            caller.allow(Action::Consume, Resource::Topic(name.as_str()))?;
            let topic = self.groups.topics.topic_for_request(name.as_str(), None).await?;
            topics.insert(topic.name.clone(), topic.partitions.len() as u32);
        }
        Ok((group, Subscription { topics, reset }, session_timeout_ms, wire))
    }

    /// Waits for the first message, which must be a join, and joins.
    async fn join(
        &self,
        caller: Caller,
        requests: &mut Streaming<MemberRequest>,
        out: &mpsc::Sender<Result<MemberEvent, Status>>,
        records: RecordsOut,
        ending: Ending,
    ) -> Result<Member, ServiceError> {
        let first = tokio::time::timeout(JOIN_WAIT, requests.message()).await;
        let protocol = |reason| ServiceError::from(InvalidRequest::GroupProtocol { reason });
        let join = match first {
            Err(_) => return Err(protocol("no `join` arrived in time")),
            Ok(Err(status)) => {
                return Err(ServiceError::Internal(format!("the stream broke: {status}")));
            }
            Ok(Ok(None)) => return Err(protocol("the stream ended before its `join`")),
            Ok(Ok(Some(MemberRequest { kind: Some(RequestKind::Join(join)) }))) => join,
            Ok(Ok(Some(_))) => {
                return Err(protocol("the first message of a stream must be `join`"));
            }
        };
        let (group, subscription, session_timeout_ms, wire) =
            self.subscription(&caller, &join).await?;
        let reset = subscription.reset;
        let link = Arc::new(MemberLink::default());
        let resume = (!join.member_id.is_empty()).then_some(join.member_id.as_str());
        let id = {
            let mut state = self.groups.lock_coordinated();
            let now = self.groups.now();
            let (id, changes) =
                state.coordinator.join(&group, subscription, session_timeout_ms, resume, now)?;
            // A stream still open for a resumed member ends (see `Member::view`).
            if let Some(replaced) = state.links.insert(id.clone(), link.clone()) {
                replaced.replaced.store(true, std::sync::atomic::Ordering::SeqCst);
                replaced.wake.notify_one();
            }
            self.groups.notify(&mut state, changes);
            id
        };
        match resume {
            Some(resumed) if resumed == id.as_str() => {
                tracing::debug!(member = %id, %group, "a group member resumed");
            }
            _ => tracing::debug!(member = %id, %group, "a group member joined"),
        }
        let joined = Joined {
            member_id: id.to_string(),
            session_timeout_ms: session_timeout_ms as u32,
            heartbeat_interval_ms: (session_timeout_ms / 3) as u32,
        };
        // The queue is empty: the first message always fits.
        let _ = out.try_send(Ok(MemberEvent { kind: Some(Kind::Joined(joined)) }));
        Ok(Member::new(
            self.groups.clone(),
            caller,
            group,
            id,
            link,
            reset,
            wire,
            out.clone(),
            records,
            ending,
        ))
    }

    /// A group as `caller` may see it: topics it holds no grant on are left out (their
    /// names, partitions, offsets and lag), as ListTopics leaves them out.
    fn describe_one(
        &self,
        caller: &Caller,
        description: &GroupDescription,
        detailed: bool,
    ) -> WireGroup {
        let visible = |topic: &str| caller.may_see_topic(topic);
        let state = match description.state {
            GroupState::Empty => WireState::Empty,
            GroupState::Rebalancing => WireState::Rebalancing,
            GroupState::Stable => WireState::Stable,
        };
        // A group without members has no subscription: its topics are those it committed
        // offsets for (its partitions are then the committed ones).
        let (topics, reset) = match &description.subscription {
            Some(s) => (s.topics.keys().collect(), wire_reset(s.reset)),
            None => (
                description.partitions.iter().map(|p| &p.partition.topic).collect::<BTreeSet<_>>(),
                WireReset::Unspecified,
            ),
        };
        let topics =
            topics.into_iter().filter(|t| visible(t.as_str())).map(ToString::to_string).collect();
        let mut group = WireGroup {
            name: description.name.to_string(),
            state: state as i32,
            generation: description.generation,
            topics,
            reset: reset as i32,
            members: Vec::new(),
            partitions: Vec::new(),
        };
        if !detailed {
            return group;
        }
        group.members = description
            .members
            .iter()
            .map(|m| MemberDescription {
                member_id: m.id.to_string(),
                session_timeout_ms: m.session_timeout_ms as u32,
                owned: m
                    .owned
                    .iter()
                    .filter(|p| visible(p.topic.as_str()))
                    .map(wire_partition)
                    .collect(),
                revoking: m
                    .revoking
                    .iter()
                    .filter(|p| visible(p.topic.as_str()))
                    .map(wire_partition)
                    .collect(),
                awaiting_rejoin: false,
            })
            .collect();
        group.partitions = description
            .partitions
            .iter()
            .filter(|p| visible(p.partition.topic.as_str()))
            .map(|p| {
                let state = self
                    .groups
                    .topics
                    .partition(p.partition.topic.as_str(), p.partition.partition)
                    .and_then(|partition| partition.state())
                    .ok();
                let end = state.as_ref().map(|s| s.log_end_offset.0);
                let from =
                    p.committed.map(|c| c.0).or(state.as_ref().map(|s| s.log_start_offset.0));
                GroupPartition {
                    topic: p.partition.topic.to_string(),
                    partition: p.partition.partition,
                    owner: p.owner.as_ref().map(ToString::to_string),
                    revoking: p.revoking,
                    committed_offset: p.committed.map(|c| c.0),
                    log_end_offset: end,
                    lag: end.zip(from).map(|(end, from)| end.saturating_sub(from)),
                }
            })
            .collect();
        group
    }

    /// The offsets a reset sets, per partition of `topic` (or for `only` that one).
    async fn reset_offsets(
        &self,
        topic: &str,
        only: Option<u32>,
        to: Option<Position>,
    ) -> Result<Vec<(TopicPartition, Offset)>, ServiceError> {
        let topic = self.groups.topics.topic_for_request(topic, only).await?;
        let partitions = match only {
            Some(partition) => std::slice::from_ref(topic.partition(partition)?),
            None => &topic.partitions[..],
        };
        let mut offsets = Vec::with_capacity(partitions.len());
        for partition in partitions {
            partition.refresh().await?;
            let state = partition.state()?;
            let offset = match to {
                None | Some(Position::Earliest(_)) => state.log_start_offset,
                Some(Position::Latest(_)) => state.log_end_offset,
                Some(Position::Offset(offset)) => {
                    // Reading at it checks it against the log's range (OUT_OF_RANGE).
                    partition.read(Offset(offset), 1).await?;
                    Offset(offset)
                }
                Some(Position::TimestampMs(ms)) => {
                    partition.offset_for_timestamp(TimestampMs(ms)).await?
                }
            };
            offsets.push((
                TopicPartition { topic: topic.name.clone(), partition: partition.id() },
                offset,
            ));
        }
        Ok(offsets)
    }
}

impl GroupApi {
    /// On a cluster, one node coordinates every group: elsewhere group requests are refused,
    /// naming it (a member on each of two nodes would each be given every partition).
    async fn coordinates(&self) -> Result<(), ServiceError> {
        match self.groups.topics.cluster() {
            Some(cluster) => cluster.coordinates_groups().await,
            None => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl GroupService for GroupApi {
    type JoinStream = MemberEvents;

    async fn join(
        &self,
        request: Request<Streaming<MemberRequest>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        self.coordinates().await?;
        let caller = Caller::of(&request);
        let mut requests = request.into_inner();
        let (out, control) = mpsc::channel(GROUP_MEMBER_QUEUE_DEPTH);
        let (records_out, records) = mpsc::channel(GROUP_MEMBER_QUEUE_DEPTH);
        let ending = Ending::default();
        let api = self.clone();
        let member_ending = ending.clone();
        tokio::spawn(async move {
            let joined = api.join(caller, &mut requests, &out, records_out, member_ending.clone());
            match joined.await {
                Ok(member) => member.run(requests).await,
                Err(error) => {
                    *member_ending.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(error.into())
                }
            }
        });
        let events = MemberStream {
            control,
            records,
            control_closed: false,
            records_closed: false,
            ending,
            ended: false,
        };
        // tonic gets no messages: `RawReplies` sends these without copying their batches.
        let mut response = Response::new(Box::pin(tokio_stream::empty()) as Self::JoinStream);
        response.extensions_mut().insert(Replies::new(events.map(|event| (event, None))));
        Ok(response)
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        self.coordinates().await?;
        let caller = Caller::of(&request);
        caller.check_token().map_err(ServiceError::from)?;
        let described = self.groups.lock().coordinator.list();
        let groups = described
            .iter()
            .filter(|g| caller.allow(Action::Describe, Resource::Group(g.name.as_str())).is_ok())
            .map(|g| self.describe_one(&caller, g, false))
            .collect();
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        self.coordinates().await?;
        let caller = Caller::of(&request);
        let group = GroupName::parse(&request.into_inner().group).map_err(ServiceError::from)?;
        caller
            .allow(Action::Describe, Resource::Group(group.as_str()))
            .map_err(ServiceError::from)?;
        let (described, awaiting) = {
            let state = self.groups.lock();
            let described = state.coordinator.describe(&group);
            let described = described.ok_or(ServiceError::UnknownGroup { group: group.clone() })?;
            // Spool members (those with a view) without a stream.
            let awaiting: BTreeSet<String> = described
                .members
                .iter()
                .filter(|m| state.coordinator.view(&group, &m.id).is_some())
                .filter(|m| !state.links.contains_key(&m.id))
                .map(|m| m.id.to_string())
                .collect();
            (described, awaiting)
        };
        let mut described = self.describe_one(&caller, &described, true);
        for member in &mut described.members {
            member.awaiting_rejoin = awaiting.contains(&member.member_id);
        }
        Ok(Response::new(DescribeGroupResponse { group: Some(described) }))
    }

    async fn reset_group(
        &self,
        request: Request<ResetGroupRequest>,
    ) -> Result<Response<ResetGroupResponse>, Status> {
        self.coordinates().await?;
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let group = GroupName::parse(&request.group).map_err(ServiceError::from)?;
        caller
            .allow(Action::Administer, Resource::Group(group.as_str()))
            .map_err(ServiceError::from)?;
        caller
            .allow(Action::Describe, Resource::Topic(&request.topic))
            .map_err(ServiceError::from)?;
        let to = request.to.and_then(|to| to.position);
        let offsets = self.reset_offsets(&request.topic, request.partition, to).await?;
        let (durable, offsets) = {
            let mut state = self.groups.lock();
            let record = state.coordinator.reset(&group, offsets).map_err(ServiceError::from)?;
            (self.groups.persist(&record), record.offsets)
        };
        durable.await?;
        Ok(Response::new(ResetGroupResponse { offsets: wire_offsets(offsets) }))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        self.coordinates().await?;
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let group = GroupName::parse(&request.group).map_err(ServiceError::from)?;
        caller
            .allow(Action::Administer, Resource::Group(group.as_str()))
            .map_err(ServiceError::from)?;
        if let Some(topic) = &request.topic {
            return self.delete_offsets(&caller, group, topic, request.partition).await;
        }
        let (durable, forgotten) = {
            let mut state = self.groups.lock();
            let (record, forgotten) =
                state.coordinator.delete(&group).map_err(ServiceError::from)?;
            (self.groups.persist_record(&record), forgotten)
        };
        durable.await?;
        crate::metrics::retire_group(group.as_str());
        tracing::info!(identity = caller.identity(), %group, "group deleted");
        let seen = forgotten.into_iter().filter(|(p, _)| caller.may_see_topic(p.topic.as_str()));
        Ok(Response::new(DeleteGroupResponse { offsets: wire_offsets(seen) }))
    }
}

impl GroupApi {
    /// A DeleteGroup naming a topic: forgets the group's offsets of the topic (or of one
    /// partition of it), refused whole while a live member consumes the topic.
    async fn delete_offsets(
        &self,
        caller: &Caller,
        group: GroupName,
        topic: &str,
        partition: Option<u32>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        caller.allow(Action::Describe, Resource::Topic(topic)).map_err(ServiceError::from)?;
        let found = self.groups.topics.topic(topic)?;
        let count = found.partitions.len() as u32;
        let partitions: Vec<TopicPartition> = match partition {
            Some(partition) if partition >= count => {
                let (topic, partitions) = (found.name.clone(), count);
                return Err(ServiceError::UnknownPartition { topic, partition, partitions }.into());
            }
            Some(partition) => vec![TopicPartition { topic: found.name.clone(), partition }],
            None => (0..count)
                .map(|partition| TopicPartition { topic: found.name.clone(), partition })
                .collect(),
        };
        let (durable, forgotten) = {
            let mut state = self.groups.lock();
            let deletion = state
                .coordinator
                .delete_topic_offsets(&group, &found.name, &partitions)
                .map_err(ServiceError::from)?;
            (
                deletion.record().map(|record| self.groups.persist_record(&record)),
                deletion.forgotten,
            )
        };
        if let Some(durable) = durable {
            durable.await?;
        }
        for partition in forgotten.keys() {
            let topic = partition.topic.as_str();
            crate::metrics::retire_group_partition(group.as_str(), topic, partition.partition);
        }
        tracing::info!(identity = caller.identity(), %group, topic = %found.name, partitions = forgotten.len(), "a group's offsets of a topic deleted");
        Ok(Response::new(DeleteGroupResponse { offsets: wire_offsets(forgotten) }))
    }
}

/// Committed offsets as the wire carries them.
fn wire_offsets(
    offsets: impl IntoIterator<Item = (TopicPartition, Offset)>,
) -> Vec<PartitionOffset> {
    let wire = |(p, offset): (TopicPartition, Offset)| PartitionOffset {
        topic: p.topic.to_string(),
        partition: p.partition,
        offset: offset.0,
    };
    offsets.into_iter().map(wire).collect()
}
