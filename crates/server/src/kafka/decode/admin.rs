//! The administrative requests that hold arrays (CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs, IncrementalAlterConfigs, OffsetForLeaderEpoch, ElectLeaders), read as
//! `decode` reads the others: every array by our own loop, bounded by the bytes the frame has
//! left, in the non-flexible versions only (CreateTopics up to 4, DeleteTopics up to 3,
//! CreatePartitions up to 1, DescribeConfigs up to 3, IncrementalAlterConfigs 0,
//! OffsetForLeaderEpoch up to 3, ElectLeaders up to 1).
//!
//! The arrays whose answers grow with them (topics to create or delete, resources to describe
//! or alter, topics to elect leaders of) are also bounded by a count,
//! [`KAFKA_ADMIN_RESOURCES_MAX`] (a topic's partitions, by the partitions a topic may have): a describe of many
//! small resources answers about a hundred bytes per byte asked, so a frame's bytes alone
//! would not bound the answer.

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest,
    DescribeConfigsRequest, ElectLeadersRequest, IncrementalAlterConfigsRequest,
    OffsetForLeaderEpochRequest,
};
use spool_broker::limits::PARTITIONS_PER_TOPIC_MAX;

use kafka_protocol::protocol::StrBytes;

use super::{DecodeError, Reader};
use crate::limits::KAFKA_ADMIN_RESOURCES_MAX;

impl Reader {
    /// [`Reader::array`], refusing a count over `count_max` before reading any element.
    fn array_max<T>(
        &mut self,
        field: &'static str,
        count_max: usize,
        element: impl FnMut(&mut Reader) -> Result<T, DecodeError>,
    ) -> Result<Option<Vec<T>>, DecodeError> {
        let count = i32::from_be_bytes(self.peek4(field)?);
        if usize::try_from(count).is_ok_and(|count| count > count_max) {
            let reason = format!("{count} elements, over the limit of {count_max}");
            return Err(DecodeError::Element { field, reason });
        }
        self.array(field, element)
    }

    fn peek4(&self, field: &'static str) -> Result<[u8; 4], DecodeError> {
        self.need(field, 4)?;
        Ok(self.0[..4].try_into().expect("4 bytes"))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        Ok(self.i8(field)? != 0)
    }

    /// A non-nullable `STRING` (a null one reads as empty: the request's checks refuse it).
    fn text(&mut self, field: &'static str) -> Result<StrBytes, DecodeError> {
        Ok(self.string(field)?.unwrap_or_default())
    }
}

pub(in crate::kafka) fn create_topics(
    body: Bytes,
    version: i16,
) -> Result<CreateTopicsRequest, DecodeError> {
    let mut r = Reader(body);
    let topics = r
        .array_max("topics", KAFKA_ADMIN_RESOURCES_MAX, |r| {
            let name = r.name("topics.name")?;
            let num_partitions = r.i32("num_partitions")?;
            let replication_factor = r.i16("replication_factor")?;
            let assignments = r.array("assignments", |r| {
                let partition_index = r.i32("assignments.partition_index")?;
                let broker_ids = r.array("assignments.broker_ids", |r| r.i32("broker_id"))?;
                Ok(CreatableReplicaAssignment::default()
                    .with_partition_index(partition_index)
                    .with_broker_ids(
                        broker_ids.unwrap_or_default().into_iter().map(BrokerId).collect(),
                    ))
            })?;
            let configs = r.array("configs", |r| {
                let name = r.text("configs.name")?;
                let value = r.string("configs.value")?;
                Ok(CreatableTopicConfig::default().with_name(name).with_value(value))
            })?;
            Ok(CreatableTopic::default()
                .with_name(name)
                .with_num_partitions(num_partitions)
                .with_replication_factor(replication_factor)
                .with_assignments(assignments.unwrap_or_default())
                .with_configs(configs.unwrap_or_default()))
        })?
        .unwrap_or_default();
    let timeout_ms = r.i32("timeout_ms")?;
    let validate_only = if version >= 1 { r.bool("validate_only")? } else { false };
    Ok(CreateTopicsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(timeout_ms)
        .with_validate_only(validate_only))
}

pub(in crate::kafka) fn create_partitions(
    body: Bytes,
    _version: i16,
) -> Result<CreatePartitionsRequest, DecodeError> {
    let mut r = Reader(body);
    let topics = r
        .array_max("topics", KAFKA_ADMIN_RESOURCES_MAX, |r| {
            let name = r.name("topics.name")?;
            let count = r.i32("topics.count")?;
            let assignments = r.array("assignments", |r| {
                let broker_ids = r.array("assignments.broker_ids", |r| r.i32("broker_id"))?;
                let broker_ids = broker_ids.unwrap_or_default().into_iter().map(BrokerId);
                Ok(CreatePartitionsAssignment::default().with_broker_ids(broker_ids.collect()))
            })?;
            Ok(CreatePartitionsTopic::default()
                .with_name(name)
                .with_count(count)
                .with_assignments(assignments))
        })?
        .unwrap_or_default();
    let timeout_ms = r.i32("timeout_ms")?;
    let validate_only = r.bool("validate_only")?;
    Ok(CreatePartitionsRequest::default()
        .with_topics(topics)
        .with_timeout_ms(timeout_ms)
        .with_validate_only(validate_only))
}

pub(in crate::kafka) fn delete_topics(
    body: Bytes,
    _version: i16,
) -> Result<DeleteTopicsRequest, DecodeError> {
    let mut r = Reader(body);
    let names = r
        .array_max("topic_names", KAFKA_ADMIN_RESOURCES_MAX, |r| r.name("topic_names"))?
        .unwrap_or_default();
    let timeout_ms = r.i32("timeout_ms")?;
    Ok(DeleteTopicsRequest::default().with_topic_names(names).with_timeout_ms(timeout_ms))
}

pub(in crate::kafka) fn describe_configs(
    body: Bytes,
    version: i16,
) -> Result<DescribeConfigsRequest, DecodeError> {
    let mut r = Reader(body);
    let resources = r
        .array_max("resources", KAFKA_ADMIN_RESOURCES_MAX, |r| {
            let resource_type = r.i8("resource_type")?;
            let resource_name = r.text("resource_name")?;
            let keys = r.array("configuration_keys", |r| r.text("configuration_keys"))?;
            Ok(DescribeConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(resource_name)
                .with_configuration_keys(keys))
        })?
        .unwrap_or_default();
    let include_synonyms = if version >= 1 { r.bool("include_synonyms")? } else { false };
    let include_documentation = if version >= 3 { r.bool("include_documentation")? } else { false };
    Ok(DescribeConfigsRequest::default()
        .with_resources(resources)
        .with_include_synonyms(include_synonyms)
        .with_include_documentation(include_documentation))
}

pub(in crate::kafka) fn incremental_alter_configs(
    body: Bytes,
    _version: i16,
) -> Result<IncrementalAlterConfigsRequest, DecodeError> {
    let mut r = Reader(body);
    let resources = r
        .array_max("resources", KAFKA_ADMIN_RESOURCES_MAX, |r| {
            let resource_type = r.i8("resource_type")?;
            let resource_name = r.text("resource_name")?;
            let configs = r.array("configs", |r| {
                let name = r.text("configs.name")?;
                let operation = r.i8("config_operation")?;
                let value = r.string("configs.value")?;
                Ok(AlterableConfig::default()
                    .with_name(name)
                    .with_config_operation(operation)
                    .with_value(value))
            })?;
            Ok(AlterConfigsResource::default()
                .with_resource_type(resource_type)
                .with_resource_name(resource_name)
                .with_configs(configs.unwrap_or_default()))
        })?
        .unwrap_or_default();
    let validate_only = r.bool("validate_only")?;
    Ok(IncrementalAlterConfigsRequest::default()
        .with_resources(resources)
        .with_validate_only(validate_only))
}

pub(in crate::kafka) fn elect_leaders(
    body: Bytes,
    version: i16,
) -> Result<ElectLeadersRequest, DecodeError> {
    let mut r = Reader(body);
    let election_type = if version >= 1 { r.i8("election_type")? } else { 0 };
    let topic_partitions = r.array_max("topic_partitions", KAFKA_ADMIN_RESOURCES_MAX, |r| {
        let topic = r.name("topic_partitions.topic")?;
        let partitions =
            r.array_max("partitions", PARTITIONS_PER_TOPIC_MAX as usize, |r| r.i32("partition"))?;
        Ok(TopicPartitions::default()
            .with_topic(topic)
            .with_partitions(partitions.unwrap_or_default()))
    })?;
    let timeout_ms = r.i32("timeout_ms")?;
    Ok(ElectLeadersRequest::default()
        .with_election_type(election_type)
        .with_topic_partitions(topic_partitions)
        .with_timeout_ms(timeout_ms))
}

pub(in crate::kafka) fn offset_for_leader_epoch(
    body: Bytes,
    version: i16,
) -> Result<OffsetForLeaderEpochRequest, DecodeError> {
    let mut r = Reader(body);
    let replica_id = if version >= 3 { r.i32("replica_id")? } else { -2 };
    let topics = r
        .array("topics", |r| {
            let topic = r.name("topics.topic")?;
            let partitions = r.array("partitions", |r| {
                r.element::<OffsetForLeaderPartition>("partitions", version)
            })?;
            Ok(OffsetForLeaderTopic::default()
                .with_topic(topic)
                .with_partitions(partitions.unwrap_or_default()))
        })?
        .unwrap_or_default();
    Ok(OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(replica_id))
        .with_topics(topics))
}
