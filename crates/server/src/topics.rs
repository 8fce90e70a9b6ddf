//! The topic service, and the conversions between the wire's topic messages and the broker's.

use std::sync::Arc;

use spool_broker::{TopicConfig, TopicConfigRequest};
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::topic_service_server::TopicService;
use spool_proto::v1::{
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse,
    DescribeTopicRequest, DescribeTopicResponse, FsyncPolicy as WireFsync, ListTopicsRequest,
    ListTopicsResponse, PartitionDescription, TopicConfig as WireConfig, TopicDescription,
};
use spool_storage::FsyncPolicy;
use tonic::{Request, Response, Status};

use crate::broker::{Broker, Topic};
use crate::error::ServiceError;

#[derive(Debug, Clone)]
pub(crate) struct TopicApi {
    pub(crate) broker: Arc<Broker>,
}

fn config_request(config: Option<WireConfig>) -> TopicConfigRequest {
    let Some(config) = config else {
        return TopicConfigRequest::default();
    };
    TopicConfigRequest {
        partitions: (config.partitions != 0).then_some(config.partitions),
        fsync: config.fsync.and_then(|f| f.policy).map(|policy| match policy {
            Policy::Always(Always {}) => FsyncPolicy::Always,
            Policy::IntervalMs(interval_ms) => FsyncPolicy::Interval { interval_ms },
            Policy::Never(Never {}) => FsyncPolicy::Never,
        }),
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        segment_bytes: config.segment_bytes,
    }
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
    }
}

fn describe(topic: &Topic, with_partitions: bool) -> Result<TopicDescription, ServiceError> {
    let mut partitions = Vec::new();
    if with_partitions {
        for partition in &topic.partitions {
            let state = partition.state()?;
            partitions.push(PartitionDescription {
                partition: partition.id(),
                log_start_offset: state.log_start_offset.0,
                log_end_offset: state.visible_end_offset.0,
                size_bytes: state.size_bytes,
                fenced_reason: state.fence,
            });
        }
    }
    Ok(TopicDescription {
        name: topic.name.to_string(),
        config: Some(wire_config(&topic.config)),
        partitions,
    })
}

#[tonic::async_trait]
impl TopicService for TopicApi {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let request = request.into_inner();
        let topic = self.broker.create_topic(&request.name, config_request(request.config)).await?;
        Ok(Response::new(CreateTopicResponse { topic: Some(describe(&topic, true)?) }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        self.broker.delete_topic(&request.into_inner().name).await?;
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let topics = self
            .broker
            .topics()
            .iter()
            .map(|topic| describe(topic, false))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let topic = self.broker.topic(&request.into_inner().name)?;
        Ok(Response::new(DescribeTopicResponse { topic: Some(describe(&topic, true)?) }))
    }
}
