//! The topic service, and the conversions between the wire's topic messages and the broker's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use spool_broker::{TopicCompression, TopicConfig, TopicConfigRequest};
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::topic_service_server::TopicService;
use spool_proto::v1::{
    AlterTopicRequest, AlterTopicResponse, ClusterNode, ClusterPartition, CreateTopicRequest,
    CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeTopicRequest, DescribeTopicResponse, ElectLeadersRequest,
    ElectLeadersResponse, ElectLeadersResult, FsyncPolicy as WireFsync, ListTopicsRequest,
    ListTopicsResponse, PartitionDescription, ReplicaLag, TopicCompression as WireCompression,
    TopicConfig as WireConfig, TopicDescription,
};
use spool_storage::FsyncPolicy;
use spool_storage::batch::Codec;
use tonic::{Request, Response, Status};

use crate::alter::TopicChange;
use crate::auth::{Action, Caller, Resource};
use crate::error::{InvalidRequest, ServiceError};
use crate::limits::{
    ELECT_LEADERS_TIMEOUT_DEFAULT, LEADER_HAND_BACKS_AT_ONCE, NEW_TOPIC_LEADERS_PATIENCE,
};
use crate::partition::Partition;
use crate::topic_table::{Topic, TopicTable};

#[derive(Debug, Clone)]
pub(crate) struct TopicApi {
    pub(crate) topics: Arc<TopicTable>,
}

fn fsync_policy(fsync: Option<WireFsync>) -> Option<FsyncPolicy> {
    fsync.and_then(|f| f.policy).map(|policy| match policy {
        Policy::Always(Always {}) => FsyncPolicy::Always,
        Policy::IntervalMs(interval_ms) => FsyncPolicy::Interval { interval_ms },
        Policy::Never(Never {}) => FsyncPolicy::Never,
    })
}

fn compression(value: i32) -> Result<TopicCompression, InvalidRequest> {
    let codec = |codec| Ok(TopicCompression::Codec(codec));
    match WireCompression::try_from(value) {
        Ok(WireCompression::Unspecified | WireCompression::Producer) => {
            Ok(TopicCompression::Producer)
        }
        Ok(WireCompression::None) => codec(Codec::None),
        Ok(WireCompression::Gzip) => codec(Codec::Gzip),
        Ok(WireCompression::Snappy) => codec(Codec::Snappy),
        Ok(WireCompression::Lz4) => codec(Codec::Lz4),
        Ok(WireCompression::Zstd) => codec(Codec::Zstd),
        Err(_) => Err(InvalidRequest::UnknownEnumValue { field: "compression", value }),
    }
}

fn wire_compression(compression: TopicCompression) -> WireCompression {
    match compression.required() {
        None => WireCompression::Producer,
        Some(Codec::None) => WireCompression::None,
        Some(Codec::Gzip) => WireCompression::Gzip,
        Some(Codec::Snappy) => WireCompression::Snappy,
        Some(Codec::Lz4) => WireCompression::Lz4,
        Some(Codec::Zstd) => WireCompression::Zstd,
    }
}

fn config_request(config: Option<WireConfig>) -> Result<TopicConfigRequest, InvalidRequest> {
    let Some(config) = config else {
        return Ok(TopicConfigRequest::default());
    };
    Ok(TopicConfigRequest {
        partitions: (config.partitions != 0).then_some(config.partitions),
        fsync: fsync_policy(config.fsync),
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        segment_bytes: config.segment_bytes,
        compression: Some(compression(config.compression)?),
    })
}

fn topic_change(request: &AlterTopicRequest) -> Result<TopicChange, InvalidRequest> {
    // 0 removes a retention limit.
    let limit = |value: Option<u64>| value.map(|v| (v != 0).then_some(v));
    Ok(TopicChange {
        fsync: fsync_policy(request.fsync),
        retention_ms: limit(request.retention_ms),
        retention_bytes: limit(request.retention_bytes),
        segment_bytes: request.segment_bytes,
        compression: request.compression.map(compression).transpose()?,
        partitions: request.partitions,
    })
}

fn wire_config(config: &TopicConfig) -> WireConfig {
    let policy = match config.fsync() {
        FsyncPolicy::Always => Policy::Always(Always {}),
        FsyncPolicy::Interval { interval_ms } => Policy::IntervalMs(interval_ms),
        FsyncPolicy::Never => Policy::Never(Never {}),
    };
    WireConfig {
        partitions: config.partitions(),
        fsync: Some(WireFsync { policy: Some(policy) }),
        retention_ms: config.retention_ms(),
        retention_bytes: config.retention_bytes(),
        segment_bytes: Some(config.segment_bytes()),
        compression: wire_compression(config.compression()).into(),
        replication_factor: None,
    }
}

fn describe(topic: &Topic, with_partitions: bool) -> Result<TopicDescription, ServiceError> {
    let mut partitions = Vec::new();
    if with_partitions {
        for partition in &topic.partitions {
            let mut description = PartitionDescription {
                partition: partition.id(),
                leader: partition.leader(),
                leader_address: partition.leader_address(),
                replicas: partition.replicas().to_vec(),
                not_held_here: partition.remote().is_some(),
                ..PartitionDescription::default()
            };
            // Where this node holds no replica: as a replica said (zero when none answered).
            let state = match partition.remote() {
                None => Some(partition.state()?),
                Some(_) => partition.state().ok(),
            };
            if let Some(state) = state {
                description.log_start_offset = state.log_start_offset.0;
                description.log_end_offset = state.log_end_offset.0;
                description.size_bytes = state.size_bytes;
                description.fenced_reason = state.fence;
            }
            partitions.push(description);
        }
    }
    let mut config = wire_config(&topic.config());
    config.replication_factor = Some(topic.replication_factor());
    Ok(TopicDescription { name: topic.name.to_string(), config: Some(config), partitions })
}

#[tonic::async_trait]
impl TopicService for TopicApi {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        caller
            .allow(Action::Administer, Resource::Topic(&request.name))
            .map_err(ServiceError::from)?;
        let replication_factor = request.config.as_ref().and_then(|c| c.replication_factor);
        let config = config_request(request.config).map_err(ServiceError::from)?;
        let topic = self.topics.create_topic(&request.name, config, replication_factor).await?;
        if self.topics.cluster().is_some() {
            // Answered with the partitions' leaders, once their first elections are over.
            topic.wait_for_leaders(NEW_TOPIC_LEADERS_PATIENCE).await;
        }
        topic.refresh_remote().await;
        tracing::info!(identity = caller.identity(), topic = %topic.name, config = ?topic.config(), "topic created");
        Ok(Response::new(CreateTopicResponse { topic: Some(describe(&topic, true)?) }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().name;
        caller.allow(Action::Administer, Resource::Topic(&name)).map_err(ServiceError::from)?;
        self.topics.delete_topic(&name).await?;
        tracing::info!(identity = caller.identity(), topic = name, "topic deleted");
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let caller = Caller::of(&request);
        // A revoked token gets UNAUTHENTICATED, not an empty list.
        caller.check_token().map_err(ServiceError::from)?;
        let topics = self
            .topics
            .topics()
            .iter()
            .filter(|topic| caller.may_see_topic(topic.name.as_str()))
            .map(|topic| describe(topic, false))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let caller = Caller::of(&request);
        let name = request.into_inner().name;
        caller.allow(Action::Describe, Resource::Topic(&name)).map_err(ServiceError::from)?;
        let topic = self.topics.topic_for_request(&name, None).await?;
        topic.refresh_remote().await;
        Ok(Response::new(DescribeTopicResponse { topic: Some(describe(&topic, true)?) }))
    }

    async fn alter_topic(
        &self,
        request: Request<AlterTopicRequest>,
    ) -> Result<Response<AlterTopicResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        caller
            .allow(Action::Administer, Resource::Topic(&request.name))
            .map_err(ServiceError::from)?;
        let change = topic_change(&request).map_err(ServiceError::from)?;
        let topic = self.topics.alter_topic(&request.name, change).await?;
        tracing::info!(identity = caller.identity(), topic = %topic.name, config = ?topic.config(), "topic altered");
        Ok(Response::new(AlterTopicResponse { topic: Some(describe(&topic, true)?) }))
    }

    async fn describe_cluster(
        &self,
        request: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let caller = Caller::of(&request);
        caller.check_token().map_err(ServiceError::from)?;
        let Some(cluster) = self.topics.cluster() else {
            return Ok(Response::new(DescribeClusterResponse::default()));
        };
        let nodes = cluster.probe_nodes().await.into_iter();
        let nodes = nodes
            .map(|node| ClusterNode {
                id: node.id,
                peer_address: node.peer_address,
                client_address: node.client_address,
                reachable: node.protocol.is_some(),
                peer_protocol: node.protocol,
            })
            .collect();
        let mut topics = self.topics.topics();
        topics.retain(|topic| caller.may_see_topic(topic.name.as_str()));
        topics.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        let mut partitions = Vec::new();
        for topic in topics {
            topic.refresh_remote().await;
            for partition in &topic.partitions {
                let replica = partition.replica();
                let replica = replica.as_ref();
                let lag = replica.map(|replica| replica.lag()).unwrap_or_default();
                partitions.push(ClusterPartition {
                    topic: topic.name.to_string(),
                    partition: partition.id(),
                    leader: partition.leader(),
                    replicas: partition.replicas().to_vec(),
                    not_held_here: partition.remote().is_some(),
                    high_watermark: match replica {
                        Some(replica) => replica.high_watermark().0,
                        None => partition.state().map_or(0, |state| state.log_end_offset.0),
                    },
                    under_repair: replica.is_some_and(|replica| replica.repairing()),
                    lag: lag
                        .into_iter()
                        .map(|(node_id, entries_behind)| ReplicaLag { node_id, entries_behind })
                        .collect(),
                });
            }
        }
        Ok(Response::new(DescribeClusterResponse {
            node_id: Some(cluster.node_id),
            metadata_leader: cluster.metadata_leader(),
            group_coordinator: cluster.group_coordinator(),
            nodes,
            partitions,
        }))
    }

    async fn elect_leaders(
        &self,
        request: Request<ElectLeadersRequest>,
    ) -> Result<Response<ElectLeadersResponse>, Status> {
        use spool_proto::v1::elect_leaders_result::Outcome;
        let caller = Caller::of(&request);
        caller.check_token().map_err(ServiceError::from)?;
        let request = request.into_inner();
        let max = spool_replication::limits::HAND_BACK_TIMEOUT_MAX;
        let timeout = match request.timeout_ms {
            0 => ELECT_LEADERS_TIMEOUT_DEFAULT,
            ms if u128::from(ms) > max.as_millis() => {
                let refused = InvalidRequest::ElectTimeout {
                    timeout_ms: ms,
                    timeout_ms_max: max.as_millis(),
                };
                return Err(ServiceError::from(refused).into());
            }
            ms => Duration::from_millis(u64::from(ms)),
        };
        // Every partition asked for, checked before any is handed back; each once.
        let every = request.topics.is_empty();
        let mut asked = BTreeMap::new();
        let mut ask = |topic: &Topic, partition: &Arc<Partition>| {
            let key = (topic.name.as_str().to_owned(), partition.id());
            asked.insert(key, partition.clone());
        };
        if every {
            for topic in self.topics.topics() {
                let name = topic.name.as_str();
                if caller.allow(Action::Administer, Resource::Topic(name)).is_ok() {
                    topic.partitions.iter().for_each(|partition| ask(&topic, partition));
                }
            }
        }
        for wanted in &request.topics {
            let name = wanted.topic.as_str();
            caller.allow(Action::Administer, Resource::Topic(name)).map_err(ServiceError::from)?;
            let highest = wanted.partitions.iter().max().copied();
            let topic = self.topics.topic_for_request(name, highest).await?;
            match wanted.partitions.is_empty() {
                true => topic.partitions.iter().for_each(|partition| ask(&topic, partition)),
                false => {
                    for &id in &wanted.partitions {
                        ask(&topic, topic.partition(id)?);
                    }
                }
            }
        }
        let outcomes: Vec<ElectLeadersResult> = futures_util::stream::iter(asked)
            .map(|((topic, partition), found)| async move {
                let (outcome, message) = match found.hand_back(timeout).await {
                    Ok(Some(_)) => (Outcome::Elected, String::new()),
                    Ok(None) => (Outcome::NotNeeded, String::new()),
                    Err(error) => (Outcome::NotAvailable, error.to_string()),
                };
                ElectLeadersResult { topic, partition, outcome: outcome.into(), message }
            })
            .buffered(LEADER_HAND_BACKS_AT_ONCE)
            .collect()
            .await;
        let results = outcomes
            .into_iter()
            .filter(|result| !(every && result.outcome() == Outcome::NotNeeded))
            .collect();
        Ok(Response::new(ElectLeadersResponse { results }))
    }
}
