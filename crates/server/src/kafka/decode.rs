//! The requests that hold arrays, decoded with every array bounded by the bytes the frame has
//! left.
//!
//! `kafka-protocol` 0.18 decodes an array by reserving room for the count the request claims
//! (`Vec::with_capacity(n)`) before reading any element, so a 14-byte frame claiming two
//! billion topics makes it allocate over 100 GiB, which aborts the whole process. Here the
//! outer arrays (topics, and each topic's partitions) are read by our own loop, which reserves
//! nothing and fails at the first element the frame does not hold; the elements without arrays
//! (a partition's fields) are still decoded by `kafka-protocol`. Only the non-flexible versions
//! are served for these requests (Metadata up to 8, Produce up to 8, Fetch up to 11,
//! ListOffsets up to 5, and the group requests below), so arrays are an `INT32` count and
//! strings an `INT16` length. The group requests without arrays (FindCoordinator, Heartbeat,
//! ListGroups at the versions served) are decoded by `kafka-protocol` whole.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DescribeGroupsRequest, FetchRequest, GroupId, JoinGroupRequest,
    LeaveGroupRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, ProduceRequest, SyncGroupRequest, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::limits::KAFKA_LEAVE_GROUP_MEMBERS_MAX;

pub(super) mod admin;

/// Why a request does not decode.
#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("the request ends early: {field} needs {needed} more bytes, {left} are left")]
    Short { field: &'static str, needed: usize, left: usize },
    #[error("{field} has length {length}, which is negative")]
    NegativeLength { field: &'static str, length: i64 },
    #[error("{field} is not UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("{field} does not decode: {reason}")]
    Element { field: &'static str, reason: String },
}

/// A request's body, read front to back.
struct Reader(Bytes);

impl Reader {
    fn need(&self, field: &'static str, needed: usize) -> Result<(), DecodeError> {
        let left = self.0.remaining();
        if left < needed {
            return Err(DecodeError::Short { field, needed, left });
        }
        Ok(())
    }

    fn i8(&mut self, field: &'static str) -> Result<i8, DecodeError> {
        self.need(field, 1)?;
        Ok(self.0.get_i8())
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        self.need(field, 2)?;
        Ok(self.0.get_i16())
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.need(field, 4)?;
        Ok(self.0.get_i32())
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.need(field, 8)?;
        Ok(self.0.get_i64())
    }

    /// A nullable `STRING`: an `INT16` length (-1: null), then UTF-8.
    fn string(&mut self, field: &'static str) -> Result<Option<StrBytes>, DecodeError> {
        let length = self.i16(field)?;
        if length == -1 {
            return Ok(None);
        }
        let length = usize::try_from(length)
            .map_err(|_| DecodeError::NegativeLength { field, length: length.into() })?;
        self.need(field, length)?;
        let bytes = self.0.split_to(length);
        StrBytes::from_utf8(bytes).map(Some).map_err(|_| DecodeError::NotUtf8 { field })
    }

    fn name(&mut self, field: &'static str) -> Result<TopicName, DecodeError> {
        Ok(TopicName(self.string(field)?.unwrap_or_default()))
    }

    /// A nullable `ARRAY`: an `INT32` count (-1: null), then the elements, each read by
    /// `element`. Nothing is reserved for the count: every element read consumes bytes, so
    /// the list grows only with what the frame holds.
    fn array<T>(
        &mut self,
        field: &'static str,
        mut element: impl FnMut(&mut Reader) -> Result<T, DecodeError>,
    ) -> Result<Option<Vec<T>>, DecodeError> {
        let count = self.i32(field)?;
        if count == -1 {
            return Ok(None);
        }
        let count = u32::try_from(count)
            .map_err(|_| DecodeError::NegativeLength { field, length: count.into() })?;
        let mut elements = Vec::new();
        for _ in 0..count {
            // An element takes at least a byte, so a count past the bytes left fails here.
            self.need(field, 1)?;
            elements.push(element(self)?);
        }
        Ok(Some(elements))
    }

    /// An element without arrays, decoded by `kafka-protocol`.
    fn element<T: Decodable>(
        &mut self,
        field: &'static str,
        version: i16,
    ) -> Result<T, DecodeError> {
        T::decode(&mut self.0, version)
            .map_err(|error| DecodeError::Element { field, reason: error.to_string() })
    }
}

pub(super) fn metadata(body: Bytes, version: i16) -> Result<MetadataRequest, DecodeError> {
    let mut r = Reader(body);
    let topics = r.array("topics", |r| r.element::<MetadataRequestTopic>("topics", version))?;
    let mut request = MetadataRequest::default().with_topics(topics);
    if version >= 4 {
        request.allow_auto_topic_creation = r.i8("allow_auto_topic_creation")? != 0;
    }
    if version >= 8 {
        request.include_cluster_authorized_operations =
            r.i8("include_cluster_authorized_operations")? != 0;
        request.include_topic_authorized_operations =
            r.i8("include_topic_authorized_operations")? != 0;
    }
    Ok(request)
}

pub(super) fn produce(body: Bytes, version: i16) -> Result<ProduceRequest, DecodeError> {
    let mut r = Reader(body);
    let transactional_id = r.string("transactional_id")?.map(TransactionalId);
    let acks = r.i16("acks")?;
    let timeout_ms = r.i32("timeout_ms")?;
    let topic_data = r
        .array("topic_data", |r| {
            let name = r.name("topic_data.name")?;
            let partitions = r.array("partition_data", |r| {
                r.element::<PartitionProduceData>("partition_data", version)
            })?;
            Ok(TopicProduceData::default()
                .with_name(name)
                .with_partition_data(partitions.unwrap_or_default()))
        })?
        .unwrap_or_default();
    Ok(ProduceRequest::default()
        .with_transactional_id(transactional_id)
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(topic_data))
}

pub(super) fn fetch(body: Bytes, version: i16) -> Result<FetchRequest, DecodeError> {
    let mut r = Reader(body);
    let replica_id = r.i32("replica_id")?;
    let max_wait_ms = r.i32("max_wait_ms")?;
    let min_bytes = r.i32("min_bytes")?;
    let max_bytes = r.i32("max_bytes")?;
    let isolation_level = r.i8("isolation_level")?;
    let (session_id, session_epoch) =
        if version >= 7 { (r.i32("session_id")?, r.i32("session_epoch")?) } else { (0, -1) };
    let topics = r
        .array("topics", |r| {
            let topic = r.name("topics.topic")?;
            let partitions =
                r.array("partitions", |r| r.element::<FetchPartition>("partitions", version))?;
            Ok(FetchTopic::default()
                .with_topic(topic)
                .with_partitions(partitions.unwrap_or_default()))
        })?
        .unwrap_or_default();
    let forgotten = if version >= 7 {
        r.array("forgotten_topics_data", |r| {
            let topic = r.name("forgotten_topics_data.topic")?;
            let partitions = r.array("forgotten_topics_data.partitions", |r| r.i32("partition"))?;
            Ok(ForgottenTopic::default()
                .with_topic(topic)
                .with_partitions(partitions.unwrap_or_default()))
        })?
        .unwrap_or_default()
    } else {
        Vec::new()
    };
    let rack_id =
        if version >= 11 { r.string("rack_id")?.unwrap_or_default() } else { StrBytes::default() };
    Ok(FetchRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(max_bytes)
        .with_isolation_level(isolation_level)
        .with_session_id(session_id)
        .with_session_epoch(session_epoch)
        .with_topics(topics)
        .with_forgotten_topics_data(forgotten)
        .with_rack_id(rack_id))
}

pub(super) fn list_offsets(body: Bytes, version: i16) -> Result<ListOffsetsRequest, DecodeError> {
    let mut r = Reader(body);
    let replica_id = r.i32("replica_id")?;
    let isolation_level = if version >= 2 { r.i8("isolation_level")? } else { 0 };
    let topics = r
        .array("topics", |r| {
            let name = r.name("topics.name")?;
            let partitions = r.array("partitions", |r| {
                r.element::<ListOffsetsPartition>("partitions", version)
            })?;
            Ok(ListOffsetsTopic::default()
                .with_name(name)
                .with_partitions(partitions.unwrap_or_default()))
        })?
        .unwrap_or_default();
    Ok(ListOffsetsRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_isolation_level(isolation_level)
        .with_topics(topics))
}

// The group requests with arrays (JoinGroup up to 5, SyncGroup up to 3, LeaveGroup up to 3,
// OffsetCommit 2 to 7, OffsetFetch 1 to 5, DescribeGroups up to 4: none flexible). A group
// instance id comes after the member id from JoinGroup 5, SyncGroup 3 and OffsetCommit 7.

pub(super) fn join_group(body: Bytes, version: i16) -> Result<JoinGroupRequest, DecodeError> {
    let mut r = Reader(body);
    let group_id = r.string("group_id")?.unwrap_or_default();
    let session_timeout_ms = r.i32("session_timeout_ms")?;
    let rebalance_timeout_ms =
        if version >= 1 { r.i32("rebalance_timeout_ms")? } else { session_timeout_ms };
    let member_id = r.string("member_id")?.unwrap_or_default();
    let group_instance_id = if version >= 5 { r.string("group_instance_id")? } else { None };
    let protocol_type = r.string("protocol_type")?.unwrap_or_default();
    let protocols = r
        .array("protocols", |r| r.element::<JoinGroupRequestProtocol>("protocols", version))?
        .unwrap_or_default();
    Ok(JoinGroupRequest::default()
        .with_group_id(GroupId(group_id))
        .with_session_timeout_ms(session_timeout_ms)
        .with_rebalance_timeout_ms(rebalance_timeout_ms)
        .with_member_id(member_id)
        .with_group_instance_id(group_instance_id)
        .with_protocol_type(protocol_type)
        .with_protocols(protocols))
}

pub(super) fn sync_group(body: Bytes, version: i16) -> Result<SyncGroupRequest, DecodeError> {
    let mut r = Reader(body);
    let group_id = r.string("group_id")?.unwrap_or_default();
    let generation_id = r.i32("generation_id")?;
    let member_id = r.string("member_id")?.unwrap_or_default();
    let group_instance_id = if version >= 3 { r.string("group_instance_id")? } else { None };
    let assignments = r
        .array("assignments", |r| r.element::<SyncGroupRequestAssignment>("assignments", version))?
        .unwrap_or_default();
    Ok(SyncGroupRequest::default()
        .with_group_id(GroupId(group_id))
        .with_generation_id(generation_id)
        .with_member_id(member_id)
        .with_group_instance_id(group_instance_id)
        .with_assignments(assignments))
}

/// LeaveGroup: one member id up to version 2; from version 3 a batch of at most
/// [`KAFKA_LEAVE_GROUP_MEMBERS_MAX`] members, each a member id and a group instance id.
pub(super) fn leave_group(body: Bytes, version: i16) -> Result<LeaveGroupRequest, DecodeError> {
    let mut r = Reader(body);
    let group_id = GroupId(r.string("group_id")?.unwrap_or_default());
    if version < 3 {
        let member_id = r.string("member_id")?.unwrap_or_default();
        return Ok(LeaveGroupRequest::default().with_group_id(group_id).with_member_id(member_id));
    }
    r.need("members", 4)?;
    let count = i32::from_be_bytes(r.0[..4].try_into().expect("4 bytes"));
    if usize::try_from(count).is_ok_and(|count| count > KAFKA_LEAVE_GROUP_MEMBERS_MAX) {
        let reason = format!("{count} members, over the limit of {KAFKA_LEAVE_GROUP_MEMBERS_MAX}");
        return Err(DecodeError::Element { field: "members", reason });
    }
    let members = r
        .array("members", |r| {
            let member_id = r.string("members.member_id")?.unwrap_or_default();
            let group_instance_id = r.string("members.group_instance_id")?;
            Ok(MemberIdentity::default()
                .with_member_id(member_id)
                .with_group_instance_id(group_instance_id))
        })?
        .unwrap_or_default();
    Ok(LeaveGroupRequest::default().with_group_id(group_id).with_members(members))
}

pub(super) fn offset_commit(body: Bytes, version: i16) -> Result<OffsetCommitRequest, DecodeError> {
    let mut r = Reader(body);
    let group_id = r.string("group_id")?.unwrap_or_default();
    let generation = r.i32("generation_id")?;
    let member_id = r.string("member_id")?.unwrap_or_default();
    let group_instance_id = if version >= 7 { r.string("group_instance_id")? } else { None };
    let retention_time_ms =
        if (2..=4).contains(&version) { r.i64("retention_time_ms")? } else { -1 };
    let topics = r
        .array("topics", |r| {
            let name = r.name("topics.name")?;
            let partitions = r.array("partitions", |r| {
                r.element::<OffsetCommitRequestPartition>("partitions", version)
            })?;
            Ok(OffsetCommitRequestTopic::default()
                .with_name(name)
                .with_partitions(partitions.unwrap_or_default()))
        })?
        .unwrap_or_default();
    Ok(OffsetCommitRequest::default()
        .with_group_id(GroupId(group_id))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(member_id)
        .with_group_instance_id(group_instance_id)
        .with_retention_time_ms(retention_time_ms)
        .with_topics(topics))
}

pub(super) fn offset_fetch(body: Bytes, _version: i16) -> Result<OffsetFetchRequest, DecodeError> {
    let mut r = Reader(body);
    let group_id = r.string("group_id")?.unwrap_or_default();
    let topics = r.array("topics", |r| {
        let name = r.name("topics.name")?;
        let partitions = r.array("partition_indexes", |r| r.i32("partition_index"))?;
        Ok(OffsetFetchRequestTopic::default()
            .with_name(name)
            .with_partition_indexes(partitions.unwrap_or_default()))
    })?;
    Ok(OffsetFetchRequest::default().with_group_id(GroupId(group_id)).with_topics(topics))
}

pub(super) fn offset_delete(
    body: Bytes,
    _version: i16,
) -> Result<OffsetDeleteRequest, DecodeError> {
    let mut r = Reader(body);
    let group_id = r.string("group_id")?.unwrap_or_default();
    let topics = r.array("topics", |r| {
        let name = r.name("topics.name")?;
        let partitions = r.array("partitions", |r| {
            Ok(OffsetDeleteRequestPartition::default()
                .with_partition_index(r.i32("partition_index")?))
        })?;
        Ok(OffsetDeleteRequestTopic::default()
            .with_name(name)
            .with_partitions(partitions.unwrap_or_default()))
    })?;
    Ok(OffsetDeleteRequest::default()
        .with_group_id(GroupId(group_id))
        .with_topics(topics.unwrap_or_default()))
}

pub(super) fn delete_groups(
    body: Bytes,
    _version: i16,
) -> Result<DeleteGroupsRequest, DecodeError> {
    let mut r = Reader(body);
    Ok(DeleteGroupsRequest::default().with_groups_names(group_ids(&mut r, "groups_names")?))
}

/// An array of group ids (a null one: none).
fn group_ids(r: &mut Reader, field: &'static str) -> Result<Vec<GroupId>, DecodeError> {
    let groups = r.array(field, |r| Ok(GroupId(r.string(field)?.unwrap_or_default())))?;
    Ok(groups.unwrap_or_default())
}

pub(super) fn describe_groups(
    body: Bytes,
    version: i16,
) -> Result<DescribeGroupsRequest, DecodeError> {
    let mut r = Reader(body);
    let groups = group_ids(&mut r, "groups")?;
    let include_authorized_operations =
        if version >= 3 { r.i8("include_authorized_operations")? != 0 } else { false };
    Ok(DescribeGroupsRequest::default()
        .with_groups(groups)
        .with_include_authorized_operations(include_authorized_operations))
}
