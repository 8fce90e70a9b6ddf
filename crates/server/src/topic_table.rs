//! The server's view of its topics: the registry on disk, and the running partitions.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use spool_broker::limits::OPEN_THREADS_MAX;
use spool_broker::{
    CreateTopicError, OpenRegistryError, Placement, Registry, TopicConfig, TopicConfigRequest,
    TopicName,
};
use spool_proto::partitioner::RoundRobin;
use spool_storage::fs::StdFileSystem;
use spool_storage::{Log, SharedSync, TimestampMs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alter::TopicChange;
use crate::cluster::{Cluster, Command, Metadata, Outcome};
use crate::error::ServiceError;
use crate::limits::{
    REMOTE_LEADER_LOOKUP_TIMEOUT, REMOTE_LEADER_LOOKUPS_MAX, REMOTE_LEADER_MAX_AGE,
};
use crate::metrics::{Metrics, RecoverySummary};
use crate::partition::{Partition, Services, blocking};

/// A topic at run time.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: TopicName,
    /// Changed only by an alter (under the topic table's admin lock).
    config: RwLock<TopicConfig>,
    /// In partition order.
    pub(crate) partitions: Vec<Arc<Partition>>,
    /// Which nodes of a cluster hold each partition (`None`: every node).
    placement: Option<Placement>,
    pub(crate) round_robin: RoundRobin,
    stop: CancellationToken,
    writers: Mutex<Vec<JoinHandle<Option<Log>>>>,
}

impl Topic {
    /// How many nodes hold each partition: 1 on a single node.
    pub(crate) fn replication_factor(&self) -> u32 {
        let replicas = self.partitions.first().map_or(0, |partition| partition.replicas().len());
        replicas.max(1) as u32
    }

    fn start(
        name: TopicName,
        config: TopicConfig,
        logs: Vec<Log>,
        placement: Option<Placement>,
        stop: CancellationToken,
        services: &Services,
    ) -> Topic {
        let (partitions, writers) = logs
            .into_iter()
            .enumerate()
            .map(|(id, log)| {
                let (id, placed) = (id as u32, placement.as_ref());
                Partition::start(name.clone(), id, log, placed, stop.clone(), services.clone())
            })
            .unzip();
        Topic {
            name,
            config: RwLock::new(config),
            partitions,
            placement,
            round_robin: RoundRobin::default(),
            stop,
            writers: Mutex::new(writers),
        }
    }

    pub(crate) fn partition(&self, partition: u32) -> Result<&Arc<Partition>, ServiceError> {
        self.partitions.get(partition as usize).ok_or_else(|| ServiceError::UnknownPartition {
            topic: self.name.clone(),
            partition,
            partitions: self.config().partitions(),
        })
    }

    /// Asks who leads each partition this node holds no replica of, unless a replica said
    /// within [`REMOTE_LEADER_MAX_AGE`] (see `Remote::find_leader`), a few at a time, so
    /// that Kafka's Metadata names them.
    pub(crate) async fn find_remote_leaders(&self) {
        use futures_util::StreamExt;
        let unknown = self.partitions.iter().filter_map(|partition| stale_remote(partition));
        futures_util::stream::iter(unknown)
            .for_each_concurrent(REMOTE_LEADER_LOOKUPS_MAX, |remote| async move {
                remote.find_leader(REMOTE_LEADER_LOOKUP_TIMEOUT).await;
            })
            .await;
    }

    /// The nodes that hold (or, past its partitions, would hold) `partition` on a node of a
    /// cluster, its preferred leader first.
    pub(crate) fn replicas_for(&self, partition: u32) -> Vec<u64> {
        match (&self.placement, self.partitions.first()) {
            (Some(placement), _) => placement.replicas(partition),
            (None, Some(first)) => {
                let mut every = first.replicas().to_vec();
                every.sort_unstable();
                every
            }
            (None, None) => Vec::new(),
        }
    }

    /// Waits up to `patience` for every partition's leader to be known here (see
    /// [`Partition::wait_for_leader`]), a few partitions at a time.
    pub(crate) async fn wait_for_leaders(&self, patience: std::time::Duration) {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + patience;
        futures_util::stream::iter(&self.partitions)
            .for_each_concurrent(REMOTE_LEADER_LOOKUPS_MAX, |partition| async move {
                partition.wait_for_leader(deadline).await;
            })
            .await;
    }

    /// Asks the replicas of each partition this node holds none of who leads it (as
    /// [`Topic::find_remote_leaders`]) and where its log starts and ends, a few partitions at
    /// a time, so that a description names them.
    pub(crate) async fn refresh_remote(&self) {
        use futures_util::StreamExt;
        let remote = self.partitions.iter().filter(|partition| partition.remote().is_some());
        futures_util::stream::iter(remote)
            .for_each_concurrent(REMOTE_LEADER_LOOKUPS_MAX, |partition| async move {
                if let Some(remote) = stale_remote(partition) {
                    remote.find_leader(REMOTE_LEADER_LOOKUP_TIMEOUT).await;
                }
                let _ = partition.refresh().await;
            })
            .await;
    }

    /// The topic's settings in force.
    pub(crate) fn config(&self) -> TopicConfig {
        *self.config.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_config(&self, config: TopicConfig) {
        assert_eq!(config.partitions(), self.config().partitions(), "a grow makes a new Topic");
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// This topic with `logs` started as its next partitions, to replace it in the table: the
    /// partitions it has keep running, and their writers move over. Whoever still holds the
    /// old `Topic` keeps seeing the old count, consistently.
    fn grow(&self, config: TopicConfig, logs: Vec<Log>, services: &Services) -> Topic {
        let mut partitions = self.partitions.clone();
        let mut writers =
            std::mem::take(&mut *self.writers.lock().unwrap_or_else(PoisonError::into_inner));
        for log in logs {
            let (id, placed, stop) = (partitions.len() as u32, self.placement.as_ref(), &self.stop);
            let (partition, writer) = Partition::start(
                self.name.clone(),
                id,
                log,
                placed,
                stop.clone(),
                services.clone(),
            );
            partitions.push(partition);
            writers.push(writer);
        }
        assert_eq!(partitions.len(), config.partitions() as usize, "every partition");
        Topic {
            name: self.name.clone(),
            config: RwLock::new(config),
            partitions,
            placement: self.placement.clone(),
            round_robin: RoundRobin::default(),
            stop: self.stop.clone(),
            writers: Mutex::new(writers),
        }
    }

    /// Stops the writers (each finishes what is queued and syncs) and returns the logs.
    async fn stop(&self) -> Result<Vec<Log>, ServiceError> {
        self.stop.cancel();
        let writers =
            std::mem::take(&mut *self.writers.lock().unwrap_or_else(PoisonError::into_inner));
        let mut logs = Vec::with_capacity(writers.len());
        for (partition, writer) in writers.into_iter().enumerate() {
            let log = writer.await.map_err(|e| {
                ServiceError::Internal(format!("a partition writer of {} failed: {e}", self.name))
            })?;
            logs.push(log.ok_or_else(|| {
                ServiceError::Internal(format!(
                    "partition {partition} of topic {} lost its log when it was reconfigured; restart the server",
                    self.name
                ))
            })?);
        }
        Ok(logs)
    }
}

/// The group of `partition` when this node holds no replica of it and no replica named its
/// leader within [`REMOTE_LEADER_MAX_AGE`].
fn stale_remote(partition: &Partition) -> Option<&Arc<spool_replication::Remote>> {
    partition.remote().filter(|remote| !remote.leader_heard_within(REMOTE_LEADER_MAX_AGE))
}

/// Topics and their partitions, shared by every service.
#[derive(Debug)]
pub(crate) struct TopicTable {
    registry: Arc<Mutex<Registry>>,
    topics: RwLock<BTreeMap<TopicName, Arc<Topic>>>,
    /// Serializes creates and deletes, which do blocking I/O outside the maps' locks.
    admin: tokio::sync::Mutex<()>,
    /// Cancelled after the gRPC server has stopped: writers finish and hand back their logs.
    writers_stop: CancellationToken,
    /// Cancelled when shutdown begins: subscriptions and produce streams end.
    pub(crate) streams_stop: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
    sync: Arc<SharedSync>,
    /// What opening the data directory did.
    pub(crate) recovery: RecoverySummary,
    /// Told when a topic grew: its name and new partition count (see [`TopicTable::on_grow`]).
    on_grow: OnceLock<GrowWatcher>,
    /// Told when a topic was deleted here (see [`TopicTable::on_delete`]).
    on_delete: OnceLock<DeleteWatcher>,
    /// This node's part in a cluster: topics are created and deleted through its metadata
    /// group, and every partition is replicated.
    cluster: Option<Arc<Cluster>>,
}

/// What a grow calls, with the topic's name and its new partition count.
pub(crate) type OnGrow = Box<dyn Fn(&TopicName, u32) + Send + Sync>;

struct GrowWatcher(OnGrow);

/// What a deletion calls, with the topic's name: what it starts, to be awaited (`None` when
/// it started nothing).
pub(crate) type OnDelete = Box<dyn Fn(&TopicName) -> Option<Pending> + Send + Sync>;

/// Work a watcher started, to await.
pub(crate) type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

struct DeleteWatcher(OnDelete);

impl std::fmt::Debug for DeleteWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeleteWatcher")
    }
}

impl std::fmt::Debug for GrowWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrowWatcher")
    }
}

impl TopicTable {
    /// Opens the data directory and starts a writer for every partition found.
    pub(crate) async fn open(
        data_dir: &Path,
        partitions_max: u32,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<TopicTable, OpenRegistryError> {
        let data_dir = data_dir.to_path_buf();
        let started = Instant::now();
        let (mut registry, opened, sync) = tokio::task::spawn_blocking(move || {
            let (registry, opened) =
                Registry::open(StdFileSystem::shared(), &data_dir, TimestampMs::now())?;
            // Before any write, so that its syncs report every writeback error after it.
            let sync = SharedSync::open(&StdFileSystem, &data_dir).unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot open the data directory's file system to sync many partitions at once; each partition syncs its own files");
                SharedSync::alone()
            });
            Ok::<_, OpenRegistryError>((registry, opened, Arc::new(sync)))
        })
        .await
        .expect("opening the registry panicked")?;
        registry.set_partitions_max(partitions_max);
        let partitions = registry.partitions();
        tracing::info!(partitions, partitions_max, "partition limit: {partitions_max}");
        if partitions > partitions_max {
            tracing::warn!(
                partitions,
                partitions_max,
                "the data directory holds more partitions than the partition limit: they are all served, and no topic can be created until some are deleted"
            );
        }
        let mut recovery = RecoverySummary { took: started.elapsed(), ..Default::default() };
        recovery.topics = opened.len();
        for log in opened.iter().flat_map(|topic| &topic.logs) {
            recovery.add(log.recovery_report(), log.fence().is_some());
        }
        recovery.export();
        let writers_stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let services =
            Services { metrics: metrics.clone(), sync: sync.clone(), cluster: cluster.clone() };
        let topics = opened
            .into_iter()
            .map(|topic| {
                let stop = writers_stop.child_token();
                let name = topic.name.clone();
                let (config, logs, placement) = (topic.config, topic.logs, topic.placement);
                let started = Topic::start(topic.name, config, logs, placement, stop, &services);
                (name, Arc::new(started))
            })
            .collect();
        Ok(TopicTable {
            registry: Arc::new(Mutex::new(registry)),
            topics: RwLock::new(topics),
            admin: tokio::sync::Mutex::new(()),
            writers_stop,
            streams_stop: CancellationToken::new(),
            metrics,
            sync,
            recovery,
            on_grow: OnceLock::new(),
            on_delete: OnceLock::new(),
            cluster,
        })
    }

    fn services(&self) -> Services {
        Services {
            metrics: self.metrics.clone(),
            sync: self.sync.clone(),
            cluster: self.cluster.clone(),
        }
    }

    /// The replication factor of a topic created without one: 3 on a cluster of three nodes
    /// or more, else 1.
    pub(crate) fn default_replication_factor(&self) -> u32 {
        match &self.cluster {
            Some(cluster) if cluster.node_ids().len() >= 3 => 3,
            _ => 1,
        }
    }

    /// Where a new topic's partitions go: on a cluster, `factor` nodes each (by default 3
    /// on a cluster of three nodes or more, else 1), spread over the nodes (see
    /// [`Placement`]); `None` on a single node, which takes a factor of 1 only.
    pub(crate) fn place(
        &self,
        name: &TopicName,
        factor: Option<u32>,
    ) -> Result<Option<Placement>, ServiceError> {
        let Some(cluster) = &self.cluster else {
            return match factor {
                None | Some(1) => Ok(None),
                Some(requested) => Err(ServiceError::ReplicationFactor { requested, nodes: 1 }),
            };
        };
        let nodes = cluster.node_ids();
        let count = nodes.len() as u32;
        let factor = factor.unwrap_or(self.default_replication_factor());
        match Placement::new(name.as_str(), &nodes, factor) {
            Ok(placement) => Ok(Some(placement)),
            Err(_) => Err(ServiceError::ReplicationFactor { requested: factor, nodes: count }),
        }
    }

    /// Applies the cluster's metadata as its group commits it, until `stop`: every node
    /// creates and deletes the same topics in the same order. At a start it reads the
    /// metadata log again from its start; topics already on disk are left as they are.
    ///
    /// A compacted log starts past its first commands: the node takes node registrations
    /// and producer-id blocks from the metadata group's fold, and its topics are as the
    /// commands before the log's start left them (a compaction purges no further than this
    /// node applied). A replica that installed a leader's snapshot skipped commands: then
    /// the node makes its topics what the fold holds ([`TopicTable::reconcile`]) and reads
    /// the log on from there.
    pub(crate) async fn apply_metadata(
        self: Arc<Self>,
        cluster: Arc<Cluster>,
        stop: CancellationToken,
    ) {
        let mut changes = cluster.metadata_changes();
        let fold = cluster.metadata_fold().clone();
        let mut installs = fold.installs();
        let mut reconcile = false;
        let mut next = cluster.metadata_log_start();
        let metadata = fold.state();
        for (id, (address, kafka)) in &metadata.nodes {
            cluster.register(*id, address.clone(), kafka.clone());
        }
        cluster.producer_ids_handed_out(metadata.producer_ids_end);
        loop {
            if reconcile || next < cluster.metadata_log_start() {
                let metadata = fold.state();
                self.reconcile(&cluster, &metadata).await;
                next = spool_storage::Offset(metadata.next);
                cluster.applied(next);
                reconcile = false;
            }
            for (after, command) in cluster.committed_commands(next) {
                if let Some(command) = command {
                    // A command is a batch of one record: it is at the offset before `after`.
                    let at = spool_storage::Offset(after.0.saturating_sub(1));
                    self.apply(&cluster, command, at).await;
                }
                next = after;
                cluster.applied(next);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
                changed = installs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    reconcile = true;
                }
            }
        }
    }

    /// Makes this node's topics, node registrations and producer-id blocks what `metadata`
    /// (the metadata group's fold) holds: topics it lacks are created, topics it does not
    /// hold are deleted, settings that differ are changed.
    async fn reconcile(&self, cluster: &Cluster, metadata: &Metadata) {
        for (id, (address, kafka)) in &metadata.nodes {
            cluster.register(*id, address.clone(), kafka.clone());
        }
        cluster.producer_ids_handed_out(metadata.producer_ids_end);
        let here: Vec<TopicName> =
            self.topics.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        for name in here.into_iter().filter(|name| !metadata.topics.contains_key(name.as_str())) {
            if let Err(error) = self.delete_here(name.clone()).await {
                tracing::error!(topic = %name, %error, "deleting a topic the cluster deleted failed on this node");
            }
        }
        for (name, spec) in &metadata.topics {
            let Ok(name) = TopicName::parse(name) else { continue };
            let config = match spec.config() {
                Ok(config) => config,
                Err(error) => {
                    tracing::error!(topic = %name, %error, "a topic the cluster holds has settings this node cannot take");
                    continue;
                }
            };
            let done = match self.topic(name.as_str()) {
                Err(_) => {
                    let placement = spec.placement.clone();
                    self.create_here(name.clone(), config, placement).await.map(|_| ())
                }
                Ok(topic) if topic.config() != config => {
                    let _admin = self.admin.lock().await;
                    self.alter_here(topic, config).await.map(|_| ())
                }
                Ok(_) => Ok(()),
            };
            if let Err(error) = done {
                tracing::error!(topic = %name, %error, "taking a topic as the cluster holds it failed on this node");
            }
        }
    }

    async fn apply(&self, cluster: &Cluster, command: Command, at: spool_storage::Offset) {
        match command {
            Command::RegisterNode { id, address, kafka } => cluster.register(id, address, kafka),
            Command::AllocateProducerIds { .. } => cluster.producer_ids_allocated(at),
            Command::CreateTopic { name, spec, by } => {
                let Ok(name) = TopicName::parse(&name) else { return };
                let mine = by == Some(cluster.node_id);
                if self.topics.read().unwrap_or_else(PoisonError::into_inner).contains_key(&name) {
                    if mine {
                        cluster.record_outcome(at, Outcome::Existed);
                    }
                    return;
                }
                if mine {
                    cluster.record_outcome(at, Outcome::Done);
                }
                let created = match spec.config() {
                    Ok(config) => {
                        self.create_here(name.clone(), config, spec.placement).await.map(|_| ())
                    }
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = created {
                    tracing::error!(topic = %name, %error, "creating a topic the cluster committed failed on this node");
                }
            }
            Command::AlterTopic { name, spec } => {
                let Ok(name) = TopicName::parse(&name) else { return };
                let Ok(topic) = self.topic(name.as_str()) else { return };
                let altered = match spec.config() {
                    Ok(config) => {
                        let _admin = self.admin.lock().await;
                        self.alter_here(topic, config).await.map(|_| ())
                    }
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = altered {
                    tracing::error!(topic = %name, %error, "changing a topic the cluster committed failed on this node");
                }
            }
            Command::DeleteTopic { name } => {
                let Ok(name) = TopicName::parse(&name) else { return };
                if !self.topics.read().unwrap_or_else(PoisonError::into_inner).contains_key(&name) {
                    return;
                }
                if let Err(error) = self.delete_here(name.clone()).await {
                    tracing::error!(topic = %name, %error, "deleting a topic the cluster committed failed on this node");
                }
            }
        }
    }

    pub(crate) fn topic(&self, name: &str) -> Result<Arc<Topic>, ServiceError> {
        let name = TopicName::parse(name)?;
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics.get(&name).cloned().ok_or(ServiceError::UnknownTopic { name })
    }

    pub(crate) fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Partition>, ServiceError> {
        self.topic(topic)?.partition(partition).cloned()
    }

    /// The topic a request names, holding `partition` when it names one. On a cluster node
    /// that knows neither (or not the partition), asked again once the node has caught up with
    /// the metadata the cluster committed before the request (see `Cluster::catch_up`), so a
    /// topic created or grown through another node a moment ago is found here.
    pub(crate) async fn topic_for_request(
        &self,
        name: &str,
        partition: Option<u32>,
    ) -> Result<Arc<Topic>, ServiceError> {
        let found = || {
            let topic = self.topic(name)?;
            if let Some(partition) = partition {
                topic.partition(partition)?;
            }
            Ok(topic)
        };
        match found() {
            Err(ServiceError::UnknownTopic { .. } | ServiceError::UnknownPartition { .. })
                if self.catch_up().await =>
            {
                found()
            }
            found => found,
        }
    }

    /// [`TopicTable::partition`] for a request, caught up as [`TopicTable::topic_for_request`]
    /// is.
    pub(crate) async fn partition_for_request(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Partition>, ServiceError> {
        self.topic_for_request(topic, Some(partition)).await?.partition(partition).cloned()
    }

    /// On a cluster node, catches up with the cluster's committed metadata; false elsewhere,
    /// or when it could not.
    async fn catch_up(&self) -> bool {
        match &self.cluster {
            Some(cluster) => cluster.catch_up().await,
            None => false,
        }
    }

    /// This node's part in a cluster, on a node of one.
    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Every topic, sorted by name.
    pub(crate) fn topics(&self) -> Vec<Arc<Topic>> {
        let topics = self.topics.read().unwrap_or_else(PoisonError::into_inner);
        topics.values().cloned().collect()
    }

    /// Creates a topic: on a cluster, through its metadata group on every node, each
    /// partition held by `replication_factor` of them (see [`TopicTable::place`]).
    pub(crate) async fn create_topic(
        &self,
        name: &str,
        request: TopicConfigRequest,
        replication_factor: Option<u32>,
    ) -> Result<Arc<Topic>, ServiceError> {
        let name = TopicName::parse(name)?;
        let config = TopicConfig::new(request)?;
        let placement = self.place(&name, replication_factor)?;
        let Some(cluster) = self.cluster.clone() else {
            return self.create_here(name, config, None).await;
        };
        // In a cluster the topic is created through the metadata group, on every node.
        if self.topics.read().unwrap_or_else(PoisonError::into_inner).contains_key(&name) {
            return Err(CreateTopicError::AlreadyExists { name }.into());
        }
        let spec = crate::cluster::TopicSpec::from_config(&config, placement);
        let by = Some(cluster.node_id);
        let at =
            cluster.propose(&Command::CreateTopic { name: name.to_string(), spec, by }).await?;
        // Two nodes may have taken a create of one name at once: the first applied wins.
        if cluster.take_outcome(at) == Some(Outcome::Existed) {
            return Err(CreateTopicError::AlreadyExists { name }.into());
        }
        self.topic(name.as_str())
    }

    /// Creates a topic on this node's disk and starts its partitions.
    async fn create_here(
        &self,
        name: TopicName,
        config: TopicConfig,
        placement: Option<Placement>,
    ) -> Result<Arc<Topic>, ServiceError> {
        let _admin = self.admin.lock().await;
        if self.writers_stop.is_cancelled() {
            return Err(ServiceError::ShuttingDown);
        }
        // One open file per new partition (its first segment); a name that exists is the
        // registry's ALREADY_EXISTS, whatever the files.
        let exists = self.topics.read().unwrap_or_else(PoisonError::into_inner).contains_key(&name);
        if !exists {
            let partitions = config.partitions();
            let what = format!("creating topic {name} ({partitions} partitions)");
            crate::resources::check(&what, u64::from(partitions), true)?;
        }
        let registry = self.registry.clone();
        let (created, placed) = (name.clone(), placement.clone());
        let logs = blocking(move || {
            let mut registry = registry.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(registry.create(created, config, placed, TimestampMs::now())?)
        })
        .await?;
        let stop = self.writers_stop.child_token();
        let services = self.services();
        let topic = Arc::new(Topic::start(name.clone(), config, logs, placement, stop, &services));
        self.topics.write().unwrap_or_else(PoisonError::into_inner).insert(name, topic.clone());
        Ok(topic)
    }

    pub(crate) async fn delete_topic(&self, name: &str) -> Result<(), ServiceError> {
        let name = TopicName::parse(name)?;
        let Some(cluster) = self.cluster.clone() else {
            return self.delete_here(name).await;
        };
        self.topic_for_request(name.as_str(), None).await?;
        cluster.propose(&Command::DeleteTopic { name: name.to_string() }).await.map(|_| ())
    }

    /// Deletes a topic from this node's disk.
    async fn delete_here(&self, name: TopicName) -> Result<(), ServiceError> {
        let _admin = self.admin.lock().await;
        let topic = self
            .topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&name)
            .ok_or_else(|| ServiceError::UnknownTopic { name: name.clone() })?;
        for partition in &topic.partitions {
            partition.mark_deleted();
        }
        let logs = topic.stop().await?;
        let registry = self.registry.clone();
        let deleted = name.clone();
        blocking(move || {
            let mut registry = registry.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(registry.delete(&deleted, logs)?)
        })
        .await?;
        crate::metrics::retire_topic(&name);
        if let Some(pending) = self.on_delete.get().and_then(|deleted| (deleted.0)(&name)) {
            // A single node answers the deletion once its groups' offsets of the topic are
            // forgotten for good; a cluster's node applies it among the metadata group's
            // changes, which must not wait on the offsets group.
            match self.cluster {
                None => pending.await,
                Some(_) => {
                    tokio::spawn(pending);
                }
            }
        }
        Ok(())
    }

    /// Changes a live topic's settings: `meta.json` first (what the next start uses), then
    /// each partition's writer reopens its log with them between two group commits. More
    /// partitions are created and started before `meta.json` names them, and the topic is
    /// replaced in the table by one that has them; then whoever watches grows (the consumer
    /// groups) is told.
    pub(crate) async fn alter_topic(
        &self,
        name: &str,
        change: TopicChange,
    ) -> Result<Arc<Topic>, ServiceError> {
        let name = TopicName::parse(name)?;
        change.check()?;
        let Some(cluster) = self.cluster.clone() else {
            let _admin = self.admin.lock().await;
            let topic = self.topic(name.as_str())?;
            let config = change.apply(&topic.config())?;
            return self.alter_here(topic, config).await;
        };
        // In a cluster the change is committed through the metadata group and every node
        // applies it. Only what every replica can apply alike is taken: more partitions
        // (each a new replicated group), the required compression (checked where batches
        // arrive) and retention (each replica purges through its group). A replicated
        // partition's log syncs every append whatever the topic's fsync policy, and its
        // segment size stays as created.
        if change.fsync.is_some() || change.segment_bytes.is_some() {
            let what = "changing a topic's fsync policy or segment size";
            return Err(ServiceError::NotForReplicated { what });
        }
        let topic = self.topic_for_request(name.as_str(), None).await?;
        let config = change.apply(&topic.config())?;
        if config == topic.config() {
            return Ok(topic);
        }
        if config.partitions() > topic.config().partitions() {
            let added = config.partitions() - topic.config().partitions();
            let what = format!("adding {added} partitions to topic {name}");
            crate::resources::check(&what, u64::from(added), true)?;
        }
        let spec = crate::cluster::TopicSpec::from_config(&config, topic.placement.clone());
        cluster.propose(&Command::AlterTopic { name: name.to_string(), spec }).await?;
        self.topic(name.as_str())
    }

    /// Changes `topic`'s settings to `config` on this node's disk; the caller holds the
    /// admin lock.
    async fn alter_here(
        &self,
        mut topic: Arc<Topic>,
        config: TopicConfig,
    ) -> Result<Arc<Topic>, ServiceError> {
        let name = topic.name.clone();
        let current = topic.config();
        if config == current {
            return Ok(topic);
        }
        let grows = config.partitions() > current.partitions();
        if grows {
            let added = config.partitions() - current.partitions();
            let what = format!("adding {added} partitions to topic {name}");
            crate::resources::check(&what, u64::from(added), true)?;
        }
        let registry = self.registry.clone();
        let altered = name.clone();
        let added = blocking(move || {
            let mut registry = registry.lock().unwrap_or_else(PoisonError::into_inner);
            Ok(registry.alter(&altered, config, TimestampMs::now())?)
        })
        .await?;
        let logs_change = config.log_config() != current.log_config();
        if grows {
            topic = Arc::new(topic.grow(config, added, &self.services()));
            let mut topics = self.topics.write().unwrap_or_else(PoisonError::into_inner);
            topics.insert(name.clone(), topic.clone());
        } else {
            topic.set_config(config);
        }
        if logs_change {
            // The new partitions opened with the new settings: their reopen does nothing.
            for partition in &topic.partitions {
                partition.reconfigure(config.log_config()).await?;
            }
        }
        if grows && let Some(grown) = self.on_grow.get() {
            (grown.0)(&name, config.partitions());
        }
        Ok(topic)
    }

    /// Sets what [`TopicTable::alter_topic`] calls after a topic grew (once).
    pub(crate) fn on_grow(&self, grown: OnGrow) {
        let set = self.on_grow.set(GrowWatcher(grown));
        assert!(set.is_ok(), "the topic table's grow watcher is set once");
    }

    /// Sets what deleting a topic here calls once it is gone (once).
    pub(crate) fn on_delete(&self, deleted: OnDelete) {
        let set = self.on_delete.set(DeleteWatcher(deleted));
        assert!(set.is_ok(), "the topic table's delete watcher is set once");
    }

    /// Stops every writer (each finishes its queue and syncs) and closes every log cleanly,
    /// so the next start needs no scan. Called once the gRPC server has stopped.
    pub(crate) async fn close(&self) -> Vec<String> {
        let mut unclean = Vec::new();
        let _admin = self.admin.lock().await;
        self.writers_stop.cancel();
        let shared = self.sync.stats();
        tracing::info!(
            rounds = shared.rounds,
            covered = shared.covered,
            "partition syncs shared: {} syncfs calls covered {} syncs",
            shared.rounds,
            shared.covered
        );
        let topics =
            std::mem::take(&mut *self.topics.write().unwrap_or_else(PoisonError::into_inner));
        let mut logs = Vec::new();
        for topic in topics.into_values() {
            match topic.stop().await {
                Ok(stopped) => logs.extend(
                    stopped.into_iter().enumerate().map(|(p, log)| (topic.name.clone(), p, log)),
                ),
                Err(error) => {
                    tracing::error!(%error, "stopping a topic failed");
                    unclean.push(format!("topic {}: {error}", topic.name));
                }
            }
        }
        // Each close syncs a few files (indexes, the clean-shutdown marker, the directory), so
        // the logs are closed on several threads: a few thousand partitions one after another
        // would take tens of seconds.
        let threads = OPEN_THREADS_MAX.min(logs.len()).max(1);
        let mut shares: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, log) in logs.into_iter().enumerate() {
            shares[i % threads].push(log);
        }
        let closing: Vec<_> = shares
            .into_iter()
            .map(|share| {
                tokio::task::spawn_blocking(move || {
                    share
                        .into_iter()
                        .filter_map(|(name, partition, log)| {
                            log.close().err().map(|error| (name, partition, error))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for closed in closing {
            match closed.await {
                Ok(failures) => {
                    for (name, partition, error) in failures {
                        tracing::error!(topic = %name, partition, %error, "closing a partition log failed; the next start checks it");
                        unclean.push(format!("partition {partition} of topic {name}: {error}"));
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "closing logs panicked");
                    unclean.push(format!("closing logs panicked: {error}"));
                }
            }
        }
        unclean
    }
}
