//! ApiVersions and Metadata: what the listener serves, and the one broker that serves it.

use std::sync::LazyLock;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{StrBytes, VersionRange};

use super::codes::error_code;
use super::{AdvertisedAddress, Shared};
use crate::auth::{Action, Caller, Resource};

/// Every API served and the versions of it, and nothing else: ApiVersions advertises exactly
/// this. The requests with arrays are served in their non-flexible versions only, which
/// `decode` reads (Metadata 9, Produce 9, Fetch 12 and ListOffsets 6 are the first flexible
/// ones; Fetch 13 and Metadata 10 also identify topics by id, which Spool's topics do not
/// have yet).
///
/// The group APIs are served up to the last version before the flexible ones (FindCoordinator
/// 3, JoinGroup 6, SyncGroup 4, Heartbeat 4, LeaveGroup 4, OffsetCommit 8, OffsetFetch 6,
/// DescribeGroups 5, ListGroups 3, DeleteGroups 2; OffsetDelete has no flexible version);
/// JoinGroup 5, SyncGroup 3, Heartbeat 3, LeaveGroup 3 and OffsetCommit 7 carry a static
/// member's group instance id. OffsetCommit 0 and 1 and
/// OffsetFetch 0 are gone from Kafka's own schemas.
const SERVED: [(ApiKey, VersionRange); 24] = [
    (ApiKey::ApiVersions, VersionRange { min: 0, max: 3 }),
    (ApiKey::Metadata, VersionRange { min: 1, max: 8 }),
    (ApiKey::Produce, VersionRange { min: 3, max: 8 }),
    (ApiKey::Fetch, VersionRange { min: 4, max: 11 }),
    (ApiKey::ListOffsets, VersionRange { min: 1, max: 5 }),
    // InitProducerId has no arrays, so its flexible versions (2 on) decode safely with
    // kafka-protocol; version 5 is for transactions. The admin APIs below are non-flexible,
    // read by `decode::admin`, from the oldest version kafka-protocol still encodes.
    (ApiKey::InitProducerId, VersionRange { min: 0, max: 4 }),
    (ApiKey::CreateTopics, VersionRange { min: 2, max: 4 }),
    (ApiKey::DeleteTopics, VersionRange { min: 1, max: 3 }),
    (ApiKey::CreatePartitions, VersionRange { min: 0, max: 1 }),
    (ApiKey::DescribeConfigs, VersionRange { min: 1, max: 3 }),
    (ApiKey::IncrementalAlterConfigs, VersionRange { min: 0, max: 0 }),
    (ApiKey::OffsetForLeaderEpoch, VersionRange { min: 2, max: 3 }),
    (ApiKey::ElectLeaders, VersionRange { min: 0, max: 1 }),
    (ApiKey::FindCoordinator, VersionRange { min: 0, max: 2 }),
    (ApiKey::JoinGroup, VersionRange { min: 0, max: 5 }),
    (ApiKey::SyncGroup, VersionRange { min: 0, max: 3 }),
    (ApiKey::Heartbeat, VersionRange { min: 0, max: 3 }),
    (ApiKey::LeaveGroup, VersionRange { min: 0, max: 3 }),
    (ApiKey::OffsetCommit, VersionRange { min: 2, max: 7 }),
    (ApiKey::OffsetFetch, VersionRange { min: 1, max: 5 }),
    (ApiKey::DescribeGroups, VersionRange { min: 0, max: 4 }),
    (ApiKey::ListGroups, VersionRange { min: 0, max: 2 }),
    (ApiKey::DeleteGroups, VersionRange { min: 0, max: 1 }),
    (ApiKey::OffsetDelete, VersionRange { min: 0, max: 0 }),
];

/// Served only when the server has tokens (see `sasl`). SaslHandshake v0 is left out: after
/// it the client sends SASL tokens outside Kafka's framing.
const SERVED_WITH_TOKENS: [(ApiKey, VersionRange); 2] = [
    (ApiKey::SaslHandshake, VersionRange { min: 1, max: 1 }),
    (ApiKey::SaslAuthenticate, VersionRange { min: 0, max: 1 }),
];

/// The one broker's node id: Metadata names it as every partition's leader.
pub(super) const NODE_ID: i32 = 0;

/// The versions of `api` served, if it is; the SASL APIs only `with_tokens`.
pub(super) fn served(api: ApiKey, with_tokens: bool) -> Option<VersionRange> {
    all_served(with_tokens).find(|(served, _)| *served == api).map(|(_, range)| range)
}

/// A served API's name, as metrics label it: Kafka's (`Produce`, `JoinGroup`, ...); `unknown`
/// for any other.
pub(super) fn name(api: ApiKey) -> &'static str {
    // Made once from the served list, so a newly served API is labelled without more code.
    static NAMES: LazyLock<Vec<(ApiKey, &'static str)>> = LazyLock::new(|| {
        let leak = |api: ApiKey| -> &'static str { Box::leak(format!("{api:?}").into_boxed_str()) };
        all_served(true).map(|(api, _)| (api, leak(api))).collect()
    });
    NAMES.iter().find(|(named, _)| *named == api).map_or("unknown", |(_, name)| name)
}

fn all_served(with_tokens: bool) -> impl Iterator<Item = (ApiKey, VersionRange)> {
    let sasl: &[_] = if with_tokens { &SERVED_WITH_TOKENS } else { &[] };
    SERVED.iter().chain(sasl).copied()
}

fn api_keys(with_tokens: bool) -> Vec<ApiVersion> {
    all_served(with_tokens)
        .map(|(api, range)| {
            ApiVersion::default()
                .with_api_key(api as i16)
                .with_min_version(range.min)
                .with_max_version(range.max)
        })
        .collect()
}

pub(super) fn api_versions(with_tokens: bool) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(api_keys(with_tokens))
}

/// The answer to an ApiVersions version not served, sent as v0: the client picks a served
/// version from the list and asks again.
pub(super) fn unsupported_api_versions(with_tokens: bool) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_keys(with_tokens))
}

/// The brokers, and the topics asked for (every topic when the request names none, or
/// null). On a single node: one broker (the advertised address) leads every partition. On a
/// cluster: every node registered with a Kafka listener, by its node id; a partition's
/// leader is its Raft group's leader (LEADER_NOT_AVAILABLE while there is none, or while it
/// has no Kafka listener), and its replicas and in-sync replicas are the nodes that hold it
/// (a node that holds none asks them who leads). A topic that does not exist is
/// UNKNOWN_TOPIC_OR_PARTITION: topics are never created by a Metadata request.
pub(super) async fn metadata(
    shared: &Shared,
    caller: &Caller,
    request: MetadataRequest,
) -> MetadataResponse {
    let broker = |id: i32, address: &AdvertisedAddress| {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_string(address.host.clone()))
            .with_port(i32::from(address.port))
    };
    let (brokers, controller) = match shared.topics.cluster() {
        None => (vec![broker(NODE_ID, &shared.advertised)], NODE_ID),
        Some(cluster) => {
            let brokers = cluster
                .kafka_nodes()
                .iter()
                .filter_map(|(id, address)| Some(broker(*id as i32, &address.parse().ok()?)))
                .collect();
            let controller = cluster.metadata_leader().map_or(-1, |id| id as i32);
            (brokers, controller)
        }
    };
    let names: Vec<Option<String>> = match request.topics {
        None => shared
            .topics
            .topics()
            .iter()
            .filter(|topic| caller.may_see_topic(topic.name.as_str()))
            .map(|topic| Some(topic.name.to_string()))
            .collect(),
        Some(asked) => {
            asked.iter().map(|asked| asked.name.as_ref().map(|n| n.to_string())).collect()
        }
    };
    let mut topics = Vec::with_capacity(names.len());
    for name in names {
        topics.push(match name {
            Some(name) => described(shared, caller, &name).await,
            None => MetadataResponseTopic::default()
                .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
        });
    }
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(StrBytes::from_static_str("spool")))
        .with_controller_id(BrokerId(controller))
        .with_topics(topics)
}

async fn described(shared: &Shared, caller: &Caller, name: &str) -> MetadataResponseTopic {
    let answer = MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))))
        .with_topic_authorized_operations(i32::MIN);
    // A topic created through another node a moment ago is found here too.
    let topic = match caller.allow(Action::Describe, Resource::Topic(name)) {
        Ok(()) => shared.topics.topic_for_request(name, None).await,
        Err(refused) => Err(refused.into()),
    };
    let topic = match topic {
        Ok(topic) => topic,
        Err(error) => return answer.with_error_code(error_code(&error)),
    };
    let Some(cluster) = shared.topics.cluster() else {
        let partitions = (0..topic.config().partitions())
            .map(|partition| {
                MetadataResponsePartition::default()
                    .with_partition_index(partition as i32)
                    .with_leader_id(BrokerId(NODE_ID))
                    .with_leader_epoch(0)
                    .with_replica_nodes(vec![BrokerId(NODE_ID)])
                    .with_isr_nodes(vec![BrokerId(NODE_ID)])
            })
            .collect();
        return answer.with_partitions(partitions);
    };
    topic.find_remote_leaders().await;
    let with_kafka = cluster.kafka_nodes();
    let partitions = topic
        .partitions
        .iter()
        .map(|partition| {
            let replicas: Vec<BrokerId> =
                partition.replicas().iter().map(|id| BrokerId(*id as i32)).collect();
            let answer = MetadataResponsePartition::default()
                .with_partition_index(partition.id() as i32)
                .with_leader_epoch(0)
                .with_replica_nodes(replicas.clone())
                .with_isr_nodes(replicas);
            match partition.leader().filter(|leader| with_kafka.contains_key(leader)) {
                Some(leader) => answer.with_leader_id(BrokerId(leader as i32)),
                None => answer
                    .with_leader_id(BrokerId(-1))
                    .with_error_code(ResponseError::LeaderNotAvailable.code()),
            }
        })
        .collect();
    answer.with_partitions(partitions)
}
