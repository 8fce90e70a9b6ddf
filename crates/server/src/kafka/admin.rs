//! Topic administration over Kafka (CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs, IncrementalAlterConfigs), on the same topic table as gRPC's topic service; and the
//! dispatch of the APIs this module and its siblings `producer_id` (InitProducerId),
//! `leader_epoch` (OffsetForLeaderEpoch) and `elect` (ElectLeaders) serve.
//!
//! - CreateTopics: a name Spool refuses is INVALID_TOPIC_EXCEPTION; a topic that exists
//!   TOPIC_ALREADY_EXISTS; a replication factor other than 1 (or -1, the default)
//!   INVALID_REPLICATION_FACTOR (one node); a partition count outside 1 to the topic limit
//!   (or -1: one) INVALID_PARTITIONS; configs as `configs` maps them, else INVALID_CONFIG. A
//!   manual assignment is accepted only as Kafka accepts it (count and factor -1) and only when
//!   it puts every partition 0 to n-1 on node 0. `validate_only` checks all of it, creating
//!   nothing. The server's own limits (topics, partitions, open files) are POLICY_VIOLATION.
//! - DeleteTopics: deletes as `spool topic delete` does; an unknown topic is
//!   UNKNOWN_TOPIC_OR_PARTITION.
//! - CreatePartitions: grows a topic as `spool topic alter --partitions` does. A count that is
//!   not more than the topic has is INVALID_PARTITIONS (Kafka's answer); a manual assignment is
//!   accepted only when it puts each new partition on node 0 alone (else
//!   INVALID_REPLICA_ASSIGNMENT); the server's limits are POLICY_VIOLATION. `validate_only`
//!   checks the request against the topic, creating nothing.
//! - DescribeConfigs: a topic's settings under Kafka's names (`configs`), and the broker's
//!   (node 0, or the empty name), all read-only.
//! - IncrementalAlterConfigs: SET and DELETE (back to a new topic's value) on a topic's
//!   settings, applied as `spool topic alter` applies them (the partitions' logs reopen with
//!   the new settings); APPEND and SUBTRACT (no Spool setting is a list), unknown names and
//!   other values of fixed ones are INVALID_CONFIG with a message saying which. The broker's
//!   settings are fixed.
//!
//! Each refusal carries Spool's own message in the answer's `error_message`. With tokens,
//! creating, deleting and altering a topic need `administer` on it and describing it any
//! grant (TOPIC_AUTHORIZATION_FAILED otherwise); the broker's settings are any caller's to read.
//! InitProducerId needs only an authenticated connection, as gRPC's InitProducer does.

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::BrokerId;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_request::AlterConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    InitProducerIdRequest,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use spool_broker::{CreateTopicError, TopicName};

use super::codes::{admin_error_code, config_error_code};
use super::configs::{self, ConfigError};
use super::{Close, Shared, decode, elect, encode, leader_epoch, producer_id};
use crate::alter::TopicChange;
use crate::auth::{Action, Caller, Resource};
use crate::error::ServiceError;

/// Kafka's resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Decodes, serves and encodes one request of an API this module dispatches.
pub(super) async fn handle(
    shared: &Shared,
    caller: &Caller,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    mut body: Bytes,
) -> Result<BytesMut, Close> {
    let malformed = |reason: String| Close::Malformed { api, version, reason };
    match api {
        ApiKey::InitProducerId => {
            let request = InitProducerIdRequest::decode(&mut body, version)
                .map_err(|e| malformed(e.to_string()))?;
            let answer = producer_id::init_producer_id(shared, request).await;
            encode(api, version, correlation_id, &answer)
        }
        ApiKey::CreateTopics => {
            let request = decode::admin::create_topics(body, version)
                .map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &create_topics(shared, caller, request).await)
        }
        ApiKey::DeleteTopics => {
            let request = decode::admin::delete_topics(body, version)
                .map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &delete_topics(shared, caller, request).await)
        }
        ApiKey::CreatePartitions => {
            let request = decode::admin::create_partitions(body, version)
                .map_err(|e| malformed(e.to_string()))?;
            let answer = create_partitions(shared, caller, request).await;
            encode(api, version, correlation_id, &answer)
        }
        ApiKey::DescribeConfigs => {
            let request = decode::admin::describe_configs(body, version)
                .map_err(|e| malformed(e.to_string()))?;
            encode(
                api,
                version,
                correlation_id,
                &describe_configs(shared, caller, request, version),
            )
        }
        ApiKey::IncrementalAlterConfigs => {
            let request = decode::admin::incremental_alter_configs(body, version)
                .map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &alter_configs(shared, caller, request).await)
        }
        ApiKey::OffsetForLeaderEpoch => {
            let request = decode::admin::offset_for_leader_epoch(body, version)
                .map_err(|e| malformed(e.to_string()))?;
            encode(
                api,
                version,
                correlation_id,
                &leader_epoch::offset_for_leader_epoch(shared, caller, request),
            )
        }
        ApiKey::ElectLeaders => {
            let request = decode::admin::elect_leaders(body, version)
                .map_err(|e| malformed(e.to_string()))?;
            encode(
                api,
                version,
                correlation_id,
                &elect::elect_leaders(shared, caller, request).await,
            )
        }
        other => unreachable!("{other:?} is not dispatched here"),
    }
}

/// A refusal: its code and the message to send with it.
struct Refusal {
    code: i16,
    message: String,
}

impl Refusal {
    fn new(code: ResponseError, message: impl Into<String>) -> Refusal {
        Refusal { code: code.code(), message: message.into() }
    }
}

impl From<ServiceError> for Refusal {
    fn from(error: ServiceError) -> Refusal {
        Refusal { code: admin_error_code(&error), message: error.to_string() }
    }
}

impl From<ConfigError> for Refusal {
    fn from(error: ConfigError) -> Refusal {
        Refusal { code: config_error_code(&error), message: error.to_string() }
    }
}

async fn create_topics(
    shared: &Shared,
    caller: &Caller,
    request: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let named = request.topics.iter().filter(|t| t.name == topic.name).count();
        let created = if named > 1 {
            Err(Refusal::new(ResponseError::InvalidRequest, "the topic is named more than once"))
        } else {
            create_topic(shared, caller, topic, request.validate_only).await
        };
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        results.push(match created {
            Ok(()) => result,
            Err(refusal) => {
                tracing::debug!(
                    topic = topic.name.as_str(),
                    refusal.message,
                    "CreateTopics refused"
                );
                result
                    .with_error_code(refusal.code)
                    .with_error_message(Some(StrBytes::from_string(refusal.message)))
            }
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

async fn create_topic(
    shared: &Shared,
    caller: &Caller,
    topic: &CreatableTopic,
    validate_only: bool,
) -> Result<(), Refusal> {
    caller
        .allow(Action::Administer, Resource::Topic(topic.name.as_str()))
        .map_err(ServiceError::from)?;
    let name = TopicName::parse(topic.name.as_str()).map_err(ServiceError::from)?;
    let replicas = replica_set(shared);
    let partitions = partitions(topic, &replicas)?;
    // A manual assignment puts every partition on every node (see `partitions`).
    let factor = match topic.replication_factor {
        -1 if !topic.assignments.is_empty() && shared.topics.cluster().is_some() => {
            Some(replicas.len() as u32)
        }
        -1 => None,
        factor if factor >= 1 => Some(factor as u32),
        factor => {
            return Err(Refusal::new(
                ResponseError::InvalidReplicationFactor,
                format!(
                    "replication factor {factor}: a partition is held by at least 1 node (or -1, the default)"
                ),
            ));
        }
    };
    let configs =
        topic.configs.iter().map(|config| (config.name.as_str(), config.value.as_deref()));
    let replicas = factor.unwrap_or_else(|| shared.topics.default_replication_factor());
    let config = configs::create_request(partitions, replicas, configs)?;
    if validate_only {
        shared.topics.place(&name, factor)?;
        if shared.topics.topic(name.as_str()).is_ok() {
            return Err(ServiceError::from(CreateTopicError::AlreadyExists { name }).into());
        }
        return Ok(());
    }
    shared.topics.create_topic(name.as_str(), config, factor).await?;
    tracing::info!(topic = %name, ?config, "topic created over Kafka");
    Ok(())
}

/// The nodes every partition is on, as Kafka's broker ids: node 0 on a single node; every
/// node of a cluster.
fn replica_set(shared: &Shared) -> Vec<i32> {
    match shared.topics.cluster() {
        None => vec![super::apis::NODE_ID],
        Some(cluster) => cluster.node_ids().into_iter().map(|id| id as i32).collect(),
    }
}

/// Whether a manual assignment's `brokers` are `replicas`, in any order.
fn is_replica_set(brokers: &[BrokerId], replicas: &[i32]) -> bool {
    let mut brokers: Vec<i32> = brokers.iter().map(|broker| broker.0).collect();
    brokers.sort_unstable();
    brokers == replicas
}

/// What a manual assignment must say, in words.
fn assignment_rule(replicas: &[i32]) -> String {
    match replicas {
        [0] => "Spool is one node: an assignment puts each partition on node 0 alone".into(),
        nodes => format!(
            "Spool places a topic's replicas itself (use replication_factor): an assignment is taken only when it puts each partition on every node, {nodes:?}"
        ),
    }
}

/// The partition count asked for: `num_partitions` (-1: one), or a manual assignment of
/// partitions 0 to n-1, each to `replicas` (node 0 alone on a single node).
fn partitions(topic: &CreatableTopic, replicas: &[i32]) -> Result<u32, Refusal> {
    if topic.assignments.is_empty() {
        return match topic.num_partitions {
            -1 => Ok(1),
            n if n >= 1 => Ok(n as u32),
            n => Err(Refusal::new(
                ResponseError::InvalidPartitions,
                format!("{n} partitions: a topic has at least 1 (or -1, the default of 1)"),
            )),
        };
    }
    if topic.num_partitions != -1 || topic.replication_factor != -1 {
        return Err(Refusal::new(
            ResponseError::InvalidRequest,
            "with a manual assignment, num_partitions and replication_factor must be -1",
        ));
    }
    let count = topic.assignments.len();
    let mut seen = vec![false; count];
    for assignment in &topic.assignments {
        let index = usize::try_from(assignment.partition_index).ok().filter(|i| *i < count);
        let placed = is_replica_set(&assignment.broker_ids, replicas);
        match index {
            Some(index) if placed && !seen[index] => seen[index] = true,
            _ => {
                return Err(Refusal::new(
                    ResponseError::InvalidReplicaAssignment,
                    format!("{}, partitions 0 to n-1 once each", assignment_rule(replicas)),
                ));
            }
        }
    }
    Ok(count as u32)
}

async fn delete_topics(
    shared: &Shared,
    caller: &Caller,
    request: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(request.topic_names.len());
    for name in request.topic_names {
        let result = DeletableTopicResult::default().with_name(Some(name.clone()));
        let deleted = match caller.allow(Action::Administer, Resource::Topic(name.as_str())) {
            Ok(()) => shared.topics.delete_topic(name.as_str()).await,
            Err(denied) => Err(denied.into()),
        };
        results.push(match deleted {
            Ok(()) => {
                tracing::info!(topic = name.as_str(), "topic deleted over Kafka");
                result
            }
            Err(error) => {
                let refusal = Refusal::from(error);
                tracing::debug!(topic = name.as_str(), refusal.message, "DeleteTopics refused");
                result.with_error_code(refusal.code)
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(results)
}

async fn create_partitions(
    shared: &Shared,
    caller: &Caller,
    request: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let named = request.topics.iter().filter(|t| t.name == topic.name).count();
        let grown = if named > 1 {
            Err(Refusal::new(ResponseError::InvalidRequest, "the topic is named more than once"))
        } else {
            grow_topic(shared, caller, topic, request.validate_only).await
        };
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        results.push(match grown {
            Ok(()) => result,
            Err(refusal) => {
                tracing::debug!(
                    topic = topic.name.as_str(),
                    refusal.message,
                    "CreatePartitions refused"
                );
                result
                    .with_error_code(refusal.code)
                    .with_error_message(Some(StrBytes::from_string(refusal.message)))
            }
        });
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn grow_topic(
    shared: &Shared,
    caller: &Caller,
    topic: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), Refusal> {
    let name = topic.name.as_str();
    caller.allow(Action::Administer, Resource::Topic(name)).map_err(ServiceError::from)?;
    let current = shared.topics.topic(name)?.config();
    let has = current.partitions();
    let count = u32::try_from(topic.count).ok().filter(|&count| count > has).ok_or_else(|| {
        Refusal::new(
            ResponseError::InvalidPartitions,
            format!(
                "topic {name} has {has} partitions; CreatePartitions asks for more, and {} is not",
                topic.count
            ),
        )
    })?;
    // An empty list is no assignment, as a null one (some encoders send it).
    // New partitions are placed as the topic's first were: an assignment must say the same.
    if let Some(assignments) = topic.assignments.as_ref().filter(|a| !a.is_empty()) {
        let placing = shared.topics.topic(name)?;
        let placed: Vec<Vec<i32>> = (has..count)
            .map(|partition| match shared.topics.cluster() {
                None => vec![super::apis::NODE_ID],
                Some(_) => {
                    let mut nodes: Vec<i32> =
                        placing.replicas_for(partition).iter().map(|id| *id as i32).collect();
                    nodes.sort_unstable();
                    nodes
                }
            })
            .collect();
        let matches = assignments.len() == placed.len()
            && assignments.iter().zip(&placed).all(|(a, p)| is_replica_set(&a.broker_ids, p));
        if !matches {
            return Err(Refusal::new(
                ResponseError::InvalidReplicaAssignment,
                format!(
                    "Spool places new partitions as the topic's others: the {} new partitions go on nodes {placed:?}, one set each (or send no assignment)",
                    count - has
                ),
            ));
        }
    }
    let change = TopicChange { partitions: Some(count), ..Default::default() };
    if validate_only {
        change.apply(&current).map_err(ServiceError::from)?;
        return Ok(());
    }
    let topic = shared.topics.alter_topic(name, change).await?;
    tracing::info!(topic = %topic.name, partitions = count, "topic grown over Kafka");
    Ok(())
}

fn describe_configs(
    shared: &Shared,
    caller: &Caller,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            // Kafka's brokers answer every key for an empty list, as for a null one.
            let keys = resource.configuration_keys.as_deref().filter(|keys| !keys.is_empty());
            let described = match resource.resource_type {
                RESOURCE_TOPIC => shared
                    .topic(caller, Action::Describe, resource.resource_name.as_str())
                    .map(|topic| {
                        configs::describe_topic(&topic.config(), topic.replication_factor(), keys)
                    })
                    .map_err(Refusal::from),
                RESOURCE_BROKER => broker(shared, &resource.resource_name).map(|broker| {
                    let broker = configs::Broker {
                        id: broker,
                        advertised: &shared.advertised,
                        default_replication_factor: shared.topics.default_replication_factor(),
                    };
                    configs::describe_broker(&broker, keys)
                }),
                other => Err(unsupported_resource(other)),
            };
            let result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name);
            match described {
                Ok(described) => result.with_configs(
                    described.into_iter().map(|d| config_result(d, version)).collect(),
                ),
                Err(refusal) => result
                    .with_error_code(refusal.code)
                    .with_error_message(Some(StrBytes::from_string(refusal.message))),
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn config_result(described: configs::Described, version: i16) -> DescribeConfigsResourceResult {
    let result = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(described.name))
        .with_value(Some(StrBytes::from_string(described.value)))
        .with_read_only(described.read_only)
        .with_config_source(described.source);
    if version >= 3 {
        result
            .with_config_type(described.config_type)
            .with_documentation(Some(StrBytes::from_static_str(described.documentation)))
    } else {
        result
    }
}

/// This broker's id, when `name` names it: its node id (0 on a single node), or the empty
/// string, as Kafka's tools also name it. Another broker's settings are asked of that broker,
/// as Kafka's are.
fn broker(shared: &Shared, name: &str) -> Result<i32, Refusal> {
    let id = match shared.topics.cluster() {
        Some(cluster) => cluster.node_id as i32,
        None => super::apis::NODE_ID,
    };
    if name.is_empty() || name == id.to_string() {
        return Ok(id);
    }
    Err(Refusal::new(
        ResponseError::InvalidRequest,
        format!("broker {name:?}: this is broker {id}; ask another broker's settings of it"),
    ))
}

fn unsupported_resource(resource_type: i8) -> Refusal {
    Refusal::new(
        ResponseError::InvalidRequest,
        format!(
            "resource type {resource_type}: Spool describes and alters topics (2) and the broker (4) only"
        ),
    )
}

async fn alter_configs(
    shared: &Shared,
    caller: &Caller,
    request: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let mut responses = Vec::with_capacity(request.resources.len());
    for resource in &request.resources {
        let named = request
            .resources
            .iter()
            .filter(|r| {
                r.resource_type == resource.resource_type
                    && r.resource_name == resource.resource_name
            })
            .count();
        let altered = if named > 1 {
            Err(Refusal::new(ResponseError::InvalidRequest, "the resource is named more than once"))
        } else {
            alter_resource(shared, caller, resource, request.validate_only).await
        };
        let response = AlterConfigsResourceResponse::default()
            .with_resource_type(resource.resource_type)
            .with_resource_name(resource.resource_name.clone());
        responses.push(match altered {
            Ok(()) => response,
            Err(refusal) => {
                tracing::debug!(
                    resource = resource.resource_name.as_str(),
                    refusal.message,
                    "IncrementalAlterConfigs refused"
                );
                response
                    .with_error_code(refusal.code)
                    .with_error_message(Some(StrBytes::from_string(refusal.message)))
            }
        });
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

async fn alter_resource(
    shared: &Shared,
    caller: &Caller,
    resource: &AlterConfigsResource,
    validate_only: bool,
) -> Result<(), Refusal> {
    match resource.resource_type {
        RESOURCE_TOPIC => {
            let topic = resource.resource_name.as_str();
            caller.allow(Action::Administer, Resource::Topic(topic)).map_err(ServiceError::from)?;
        }
        RESOURCE_BROKER => {
            broker(shared, &resource.resource_name)?;
            if resource.configs.is_empty() {
                return Ok(());
            }
            return Err(Refusal::new(
                ResponseError::InvalidConfig,
                "the broker's settings are fixed: they are spool serve's flags",
            ));
        }
        other => return Err(unsupported_resource(other)),
    }
    let topic = shared.topics.topic(resource.resource_name.as_str())?;
    let operations =
        resource.configs.iter().map(|c| (c.name.as_str(), c.config_operation, c.value.as_deref()));
    let change = configs::change(&topic.config(), topic.replication_factor(), operations)?;
    if validate_only {
        return Ok(());
    }
    let topic = shared.topics.alter_topic(topic.name.as_str(), change).await?;
    tracing::info!(topic = %topic.name, config = ?topic.config(), "topic altered over Kafka");
    Ok(())
}
