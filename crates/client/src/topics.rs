//! Creating, listing, describing, altering and deleting topics.

use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::topic_service_client::TopicServiceClient;
use std::time::Duration;

use spool_proto::v1::elect_leaders_result::Outcome;
use spool_proto::v1::{
    AlterTopicRequest, CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest,
    ElectLeadersRequest, ElectLeadersTopic, FsyncPolicy, ListTopicsRequest,
    TopicCompression as WireCompression, TopicConfig, TopicDescription,
};
use spool_storage::batch::Codec;

use crate::Client;
use crate::error::AdminError;

/// When a topic's appended records are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Every group of appends is synced before it is visible or acknowledged. The default.
    #[default]
    Always,
    /// Synced at most this many milliseconds apart.
    IntervalMs(u64),
    /// The operating system decides; `acks=all` is refused.
    Never,
}

impl Fsync {
    fn wire(self) -> FsyncPolicy {
        let policy = match self {
            Fsync::Always => Policy::Always(Always {}),
            Fsync::IntervalMs(ms) => Policy::IntervalMs(ms),
            Fsync::Never => Policy::Never(Never {}),
        };
        FsyncPolicy { policy: Some(policy) }
    }

    fn from_wire(policy: Option<&FsyncPolicy>) -> Fsync {
        match policy.and_then(|p| p.policy.as_ref()) {
            None | Some(Policy::Always(_)) => Fsync::Always,
            Some(Policy::IntervalMs(ms)) => Fsync::IntervalMs(*ms),
            Some(Policy::Never(_)) => Fsync::Never,
        }
    }
}

/// Which codec a topic stores its batches' records in (Kafka's `compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopicCompression {
    /// Each batch as its producer compressed it (stored as sent). The default.
    #[default]
    Producer,
    /// Every batch in this codec: the server re-encodes a batch sent in another.
    Codec(Codec),
}

impl TopicCompression {
    fn wire(self) -> WireCompression {
        match self {
            TopicCompression::Producer => WireCompression::Producer,
            TopicCompression::Codec(Codec::None) => WireCompression::None,
            TopicCompression::Codec(Codec::Gzip) => WireCompression::Gzip,
            TopicCompression::Codec(Codec::Snappy) => WireCompression::Snappy,
            TopicCompression::Codec(Codec::Lz4) => WireCompression::Lz4,
            TopicCompression::Codec(Codec::Zstd) => WireCompression::Zstd,
        }
    }

    fn from_wire(value: i32) -> TopicCompression {
        match WireCompression::try_from(value) {
            Ok(WireCompression::Unspecified | WireCompression::Producer) | Err(_) => {
                TopicCompression::Producer
            }
            Ok(WireCompression::None) => TopicCompression::Codec(Codec::None),
            Ok(WireCompression::Gzip) => TopicCompression::Codec(Codec::Gzip),
            Ok(WireCompression::Snappy) => TopicCompression::Codec(Codec::Snappy),
            Ok(WireCompression::Lz4) => TopicCompression::Codec(Codec::Lz4),
            Ok(WireCompression::Zstd) => TopicCompression::Codec(Codec::Zstd),
        }
    }
}

impl std::fmt::Display for TopicCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopicCompression::Producer => f.pad("producer"),
            TopicCompression::Codec(codec) => f.pad(codec.name()),
        }
    }
}

impl std::str::FromStr for TopicCompression {
    type Err = String;

    /// `producer`, or a codec's name (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
    fn from_str(name: &str) -> Result<TopicCompression, String> {
        match name {
            "producer" => Ok(TopicCompression::Producer),
            name => name.parse().map(TopicCompression::Codec).map_err(|_| {
                format!(
                    "unknown topic compression {name:?}; use producer (store batches as sent), none, gzip, snappy, lz4 or zstd"
                )
            }),
        }
    }
}

/// A new topic's settings; the server refuses values outside its bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: u32,
    pub fsync: Fsync,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub compression: TopicCompression,
    /// How many nodes hold each partition; `None`: every node of a cluster, 1 on a single
    /// node.
    pub replication_factor: Option<u32>,
}

impl Default for TopicSettings {
    fn default() -> TopicSettings {
        TopicSettings {
            partitions: 1,
            fsync: Fsync::Always,
            retention_ms: None,
            retention_bytes: None,
            segment_bytes: None,
            compression: TopicCompression::Producer,
            replication_factor: None,
        }
    }
}

/// Changes to a live topic's settings; `None` leaves a setting as it is, and a retention
/// limit of 0 removes it. Each takes effect without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicChange {
    pub fsync: Option<Fsync>,
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub segment_bytes: Option<u64>,
    /// Applies to batches produced from now on; stored ones keep their codec.
    pub compression: Option<TopicCompression>,
    /// More partitions (never fewer): records keep theirs, and a key's later records may go
    /// to another partition, since keys map to partitions by the count.
    pub partitions: Option<u32>,
}

/// A topic as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    pub fsync: Fsync,
    /// Segments older than this are deleted; `None`: no limit.
    pub retention_ms: Option<u64>,
    /// Old segments are deleted while the partition is larger; `None`: no limit.
    pub retention_bytes: Option<u64>,
    /// The size at which a segment is rolled; `None`: the server's default.
    pub segment_bytes: Option<u64>,
    pub compression: TopicCompression,
    /// Per partition, when described (empty from a create).
    pub partition_states: Vec<PartitionInfo>,
}

/// One partition's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start_offset: u64,
    pub log_end_offset: u64,
    pub size_bytes: u64,
    pub fenced_reason: Option<String>,
    /// On a cluster: the leader's node id, as the answering node knows it.
    pub leader: Option<u64>,
    /// On a cluster: where the leader's node serves clients (`host:port`), once it has
    /// registered. A [`crate::Producer`] sends the partition's batches there.
    pub leader_address: Option<String>,
    /// On a cluster: the nodes that hold the partition, its preferred leader first.
    pub replicas: Vec<u64>,
    /// The answering node holds no replica of the partition (its topic is on fewer nodes
    /// than the cluster has): the offsets and size are a replica's, as it answered.
    pub not_held_here: bool,
}

impl TopicInfo {
    fn from_wire(description: TopicDescription) -> TopicInfo {
        let config = description.config.unwrap_or_default();
        TopicInfo {
            name: description.name,
            partitions: config.partitions,
            fsync: Fsync::from_wire(config.fsync.as_ref()),
            retention_ms: config.retention_ms,
            retention_bytes: config.retention_bytes,
            segment_bytes: config.segment_bytes,
            compression: TopicCompression::from_wire(config.compression),
            partition_states: description
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    partition: p.partition,
                    log_start_offset: p.log_start_offset,
                    log_end_offset: p.log_end_offset,
                    size_bytes: p.size_bytes,
                    fenced_reason: p.fenced_reason,
                    leader: p.leader,
                    leader_address: p.leader_address,
                    replicas: p.replicas,
                    not_held_here: p.not_held_here,
                })
                .collect(),
        }
    }
}

/// A cluster as one node knows it ([`Client::describe_cluster`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterInfo {
    /// The answering node's id; `None` on a single node (then nothing else is set).
    pub node_id: Option<u64>,
    /// The leader of the cluster's metadata group (topics, registrations, producer ids).
    pub metadata_leader: Option<u64>,
    /// The node that coordinates every consumer group: the leader of the offsets group.
    pub group_coordinator: Option<u64>,
    pub nodes: Vec<NodeInfo>,
    /// Every replicated partition the caller may see, by topic and partition.
    pub partitions: Vec<ReplicatedPartitionInfo>,
}

/// One node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: u64,
    /// Where it listens for its peers.
    pub peer_address: String,
    /// Where it serves clients, once it has registered.
    pub client_address: Option<String>,
    /// Whether the answering node reached its peer address just now.
    pub reachable: bool,
    /// The peer protocol version it speaks, when it answered: nodes that speak different
    /// ones cannot replicate to each other.
    pub peer_protocol: Option<u32>,
}

/// One replicated partition as the answering node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicatedPartitionInfo {
    pub topic: String,
    pub partition: u32,
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
    /// The end of what the answering node serves.
    pub high_watermark: u64,
    /// Where the answering node leads: each follower's node id and how many entries it is
    /// behind (`None` while unknown).
    pub lag: Vec<(u64, Option<u64>)>,
    /// The answering node's replica is under repair (its synced data was damaged, or its node
    /// started on an empty data directory): it takes no part in elections until it has
    /// caught up with a leader.
    pub under_repair: bool,
    /// The answering node holds no replica of the partition: `high_watermark` is a
    /// replica's, as it answered.
    pub not_held_here: bool,
}

/// What a hand-back did to one partition ([`Client::elect_leaders`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    pub topic: String,
    pub partition: u32,
    pub outcome: ElectionOutcome,
}

/// See [`Election`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElectionOutcome {
    /// Its preferred leader leads it now.
    Elected,
    /// Its preferred leader led it already.
    NotNeeded,
    /// It stays where it is led, for the reason given (its preferred leader is down or
    /// behind, it has no leader, its leader led it too briefly).
    NotAvailable(String),
}

impl Client {
    fn topics(&self) -> TopicServiceClient<crate::Transport> {
        TopicServiceClient::new(self.transport())
    }

    /// Creates a topic ([`crate::ErrorCode::AlreadyExists`] if one of that name exists).
    pub async fn create_topic(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<TopicInfo, AdminError> {
        let config = TopicConfig {
            partitions: settings.partitions,
            fsync: Some(settings.fsync.wire()),
            retention_ms: settings.retention_ms,
            retention_bytes: settings.retention_bytes,
            segment_bytes: settings.segment_bytes,
            compression: settings.compression.wire().into(),
            replication_factor: settings.replication_factor,
        };
        let request = CreateTopicRequest { name: name.to_owned(), config: Some(config) };
        let created = self.topics().create_topic(request).await?.into_inner();
        Ok(TopicInfo::from_wire(created.topic.unwrap_or_default()))
    }

    /// The cluster as the connected node knows it: its nodes, and every replicated
    /// partition's leader, replicas, high watermark here and (where this node leads) lag.
    pub async fn describe_cluster(&self) -> Result<ClusterInfo, AdminError> {
        let described =
            self.nodes()
                .read(|| {
                    let mut topics = self.topics();
                    async move {
                        topics.describe_cluster(spool_proto::v1::DescribeClusterRequest {}).await
                    }
                })
                .await?
                .into_inner();
        Ok(ClusterInfo {
            node_id: described.node_id,
            metadata_leader: described.metadata_leader,
            group_coordinator: described.group_coordinator,
            nodes: described
                .nodes
                .into_iter()
                .map(|n| NodeInfo {
                    id: n.id,
                    peer_address: n.peer_address,
                    client_address: n.client_address,
                    reachable: n.reachable,
                    peer_protocol: n.peer_protocol,
                })
                .collect(),
            partitions: described
                .partitions
                .into_iter()
                .map(|p| ReplicatedPartitionInfo {
                    topic: p.topic,
                    partition: p.partition,
                    leader: p.leader,
                    replicas: p.replicas,
                    high_watermark: p.high_watermark,
                    lag: p.lag.into_iter().map(|l| (l.node_id, l.entries_behind)).collect(),
                    under_repair: p.under_repair,
                    not_held_here: p.not_held_here,
                })
                .collect(),
        })
    }

    /// Describes a topic and its partitions ([`crate::ErrorCode::NotFound`] if none).
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo, AdminError> {
        let described = self
            .nodes()
            .read(|| {
                let (mut topics, request) =
                    (self.topics(), DescribeTopicRequest { name: name.to_owned() });
                async move { topics.describe_topic(request).await }
            })
            .await?
            .into_inner();
        Ok(TopicInfo::from_wire(described.topic.unwrap_or_default()))
    }

    /// Every topic with its settings, sorted by name; `partition_states` is empty (use
    /// [`Client::describe_topic`] for those).
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, AdminError> {
        let listed = self
            .nodes()
            .read(|| {
                let mut topics = self.topics();
                async move { topics.list_topics(ListTopicsRequest {}).await }
            })
            .await?
            .into_inner();
        Ok(listed.topics.into_iter().map(TopicInfo::from_wire).collect())
    }

    /// Changes a live topic's settings and returns it as it is now.
    pub async fn alter_topic(
        &self,
        name: &str,
        change: TopicChange,
    ) -> Result<TopicInfo, AdminError> {
        let request = AlterTopicRequest {
            name: name.to_owned(),
            fsync: change.fsync.map(Fsync::wire),
            retention_ms: change.retention_ms,
            retention_bytes: change.retention_bytes,
            segment_bytes: change.segment_bytes,
            compression: change.compression.map(|c| c.wire().into()),
            partitions: change.partitions,
        };
        let altered = self.topics().alter_topic(request).await?.into_inner();
        Ok(TopicInfo::from_wire(altered.topic.unwrap_or_default()))
    }

    /// Deletes a topic and all its records.
    pub async fn delete_topic(&self, name: &str) -> Result<(), AdminError> {
        let request = DeleteTopicRequest { name: name.to_owned() };
        self.topics().delete_topic(request).await?;
        Ok(())
    }

    /// On a cluster, hands partitions back to their preferred leaders (the first of their
    /// replicas) where another node leads them, once the preferred one has caught up, as the
    /// nodes do by themselves every 10 s unless told not to. `topics` names each topic and
    /// its partitions (none: all of them); with no topic, every partition the caller may
    /// administer is asked for, and only those that needed it are answered. `timeout` bounds
    /// each partition's hand-over (at most 60 s; `None`: 10 s).
    pub async fn elect_leaders(
        &self,
        topics: &[(&str, &[u32])],
        timeout: Option<Duration>,
    ) -> Result<Vec<Election>, AdminError> {
        let timeout_ms = timeout.map_or(0, |t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
        let topics = topics
            .iter()
            .map(|(topic, partitions)| ElectLeadersTopic {
                topic: (*topic).to_owned(),
                partitions: partitions.to_vec(),
            })
            .collect();
        let request = ElectLeadersRequest { topics, timeout_ms };
        let answer = self.topics().elect_leaders(request).await?.into_inner();
        Ok(answer
            .results
            .into_iter()
            .map(|result| Election {
                outcome: match result.outcome() {
                    Outcome::Elected => ElectionOutcome::Elected,
                    Outcome::NotNeeded => ElectionOutcome::NotNeeded,
                    Outcome::NotAvailable | Outcome::Unspecified => {
                        ElectionOutcome::NotAvailable(result.message.clone())
                    }
                },
                topic: result.topic,
                partition: result.partition,
            })
            .collect())
    }
}
