//! # spool-server
//!
//! Spool's gRPC server: the topic, produce and consume services of `spool.v1` over the
//! broker's topics and storage's partition logs.
//!
//! - Each partition has exactly one writer task (`partition`): a bounded queue of appends,
//!   one fsync per drained group (group commit), acknowledgements after it.
//! - Readers read the log by offset and are woken by a notification that carries no data.
//! - [`error::to_status`] is the one place where errors become gRPC statuses.
//! - Every request is checked at the edge against `spool_broker::limits`; the decoder refuses
//!   messages over `REQUEST_BYTES_MAX`.
//!
//! This crate knows nothing of the file formats (storage's) or of where topics live on disk
//! (the broker's).
//!
//! [`run`] has the shape of mini-redis's: a bound listener, a data directory, and a future
//! that resolves when the server should shut down. It serves at once: while the data
//! directory is recovered, `grpc.health.v1` says NOT_SERVING and Spool's services answer
//! UNAVAILABLE; then health turns SERVING. Reflection (v1 and v1alpha) describes `spool.v1`
//! and the health service. Shutdown turns health NOT_SERVING, stops accepting calls, ends
//! subscriptions and produce streams, lets unary calls in flight finish, drains every
//! writer's queue and syncs it, and closes every log cleanly so the next start does not scan.
//!
//! [`ServeOptions`] adds TLS (optionally mutual), bearer tokens with per-topic and per-group
//! grants ([`auth`]), a Prometheus endpoint ([`metrics`]), and a listener for browsers
//! (Server-Sent Events, WebSocket, HTTP POST and a built-in page; the `http` module).

mod alter;
pub mod auth;
pub mod cluster;
mod connection;
mod consume;
pub mod error;
mod groups;
mod http;
mod idempotence;
mod internal_log;
mod kafka;
pub mod limits;
pub mod metrics;
mod partition;
mod produce;
mod replies;
pub mod resources;
mod serving;
pub mod testing;
mod topic_table;
mod topics;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use crate::limits::STREAMS_PER_CONNECTION_MAX;
use spool_broker::OpenRegistryError;
use spool_proto::limits::{HTTP2_FRAME_BYTES_MAX, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX};
use spool_proto::v1::consume_service_server::ConsumeServiceServer;
use spool_proto::v1::group_service_server::GroupServiceServer;
use spool_proto::v1::produce_service_server::ProduceServiceServer;
use spool_proto::v1::topic_service_server::TopicServiceServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use connection::ConnectionTimeouts;
pub use http::check_allowed_origin;
pub use kafka::{AdvertisedAddress, decode_request as decode_kafka_request};
pub use metrics::{Metrics, RecoverySummary};
pub use serving::TlsConfig;

use crate::auth::{AuthLayer, Authenticator};
use crate::consume::ConsumeApi;
use crate::groups::{GroupApi, Groups};
use crate::idempotence::ProducerIds;
use crate::limits::{SHUTDOWN_GRACE, TOKENS_RELOAD_INTERVAL};
use crate::produce::ProduceApi;
use crate::replies::RawReplies;
use crate::serving::Gate;
use crate::topic_table::TopicTable;
use crate::topics::TopicApi;

#[derive(Debug, Error)]
pub enum RunError {
    #[error("opening the data directory failed: {0}")]
    Open(#[from] OpenRegistryError),
    #[error(transparent)]
    Locked(#[from] spool_storage::fs::LockError),
    #[error("the data directory cannot be opened: {0}")]
    OpenFiles(#[from] resources::OpenFilesError),
    #[error("serving gRPC failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("opening the server's internal logs failed: {0}")]
    Internal(#[from] internal_log::OpenInternalError),
    #[error("the TLS configuration is not usable: {0}")]
    Tls(tonic::transport::Error),
    #[error(transparent)]
    Metrics(#[from] metrics::InstallMetricsError),
    #[error("serving metrics failed: {0}")]
    MetricsEndpoint(std::io::Error),
    #[error("serving the browser listener (--http) failed: {0}")]
    HttpEndpoint(std::io::Error),
    #[error("serving the Kafka listener (--kafka) failed: {0}")]
    KafkaEndpoint(std::io::Error),
    #[error("the Kafka listener (--kafka) cannot use the TLS configuration: {0}")]
    KafkaTls(String),
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(
        "stopped, but not cleanly: {}. The next start checks every batch of these logs and \
         keeps what was acknowledged",
        logs.join("; ")
    )]
    UncleanStop { logs: Vec<String> },
    #[error(transparent)]
    Cluster(#[from] cluster::JoinClusterError),
    #[error("reading the Kafka listener's address failed: {0}")]
    KafkaAddress(std::io::Error),
    #[error("reading the gRPC listener's address failed: {0}")]
    ClientAddress(std::io::Error),
}

/// How the listener is secured and observed. The default: plaintext, no tokens, no metrics
/// endpoint (what tests and a loopback-only server use).
#[derive(Debug, Default)]
pub struct ServeOptions {
    pub tls: Option<TlsConfig>,
    /// Bearer tokens and their grants; `None` lets every caller do everything.
    pub tokens: Option<Arc<Authenticator>>,
    /// Where to serve `GET /metrics` for Prometheus.
    pub metrics: Option<TcpListener>,
    /// Where to serve browsers: Server-Sent Events, WebSocket, HTTP POST and the page at `/`
    /// (see the `http` module). It starts once the data directory is open.
    pub http: Option<TcpListener>,
    /// Origins (`https://events.example.com`) besides the browser listener's own whose pages
    /// may write and open WebSockets there, and whose hosts it answers (see the `http`
    /// module's `origin`). Check each with [`check_allowed_origin`].
    pub http_allowed_origins: Vec<String>,
    /// Where to serve Kafka clients (see the `kafka` module). It starts once the data
    /// directory is open. Refused beside `tokens`: it has no authentication yet.
    pub kafka: Option<TcpListener>,
    /// What Metadata tells Kafka clients to connect to; `None`: the Kafka listener's own
    /// address.
    pub kafka_advertised: Option<AdvertisedAddress>,
    /// Told once the data directory is open and health says SERVING.
    pub serving: Option<tokio::sync::oneshot::Sender<()>>,
    /// How long a connection to either listener may take to make its first request, and
    /// stay silent after (the defaults are in [`limits`]).
    pub connection_timeouts: ConnectionTimeouts,
    /// Where clients reach this node's gRPC listener, which a cluster node registers so the
    /// others can name it (a partition's leader, a group's coordinator); `None`: the
    /// listener's own address.
    pub advertised: Option<AdvertisedAddress>,
    /// The most partitions over all topics; `None`: sized from the machine
    /// ([`resources::default_partitions_max`]).
    pub partitions_max: Option<u32>,
    /// This node's place in a cluster; `None`: a single node.
    pub cluster: Option<ClusterSetup>,
}

/// A cluster node's settings, for [`run`].
#[derive(Debug)]
pub struct ClusterSetup {
    pub options: cluster::ClusterOptions,
    /// The peer listener, already bound (tests bind port 0 first); `None`: bound at this
    /// node's peer address.
    pub listener: Option<TcpListener>,
}

/// A server over one data directory, opened and ready to serve.
#[derive(Debug)]
pub struct Server {
    /// Held for the server's life: no other process serves this data directory meanwhile.
    _lock: spool_storage::fs::DirectoryLock,
    topics: Arc<TopicTable>,
    groups: Arc<Groups>,
    producer_ids: Arc<ProducerIds>,
    cluster: Option<Arc<cluster::Cluster>>,
}

impl Server {
    /// Opens (or creates) the data directory and recovers every partition log in it, with the
    /// partition limit sized from the machine.
    pub async fn open(data_dir: &Path) -> Result<Server, RunError> {
        Server::open_with(data_dir, None).await
    }

    /// [`Server::open`] with the most partitions over all topics; `None`: sized from the
    /// machine.
    pub async fn open_with(
        data_dir: &Path,
        partitions_max: Option<u32>,
    ) -> Result<Server, RunError> {
        let lock = spool_storage::fs::DirectoryLock::acquire(data_dir)?;
        tracing::info!(data = %data_dir.display(), "opening the data directory");
        let limit = resources::soft_limit();
        spool_storage::set_sealed_files_open_max(resources::sealed_files_max(limit));
        let partitions = resources::partitions(data_dir);
        resources::check(&format!("opening its {partitions} partitions"), partitions, false)?;
        let partitions_max = partitions_max.unwrap_or_else(resources::default_partitions_max);
        let topics = TopicTable::open(data_dir, partitions_max, None).await?;
        Server::finish_open(lock, data_dir, topics, None).await
    }

    async fn finish_open(
        lock: spool_storage::fs::DirectoryLock,
        data_dir: &Path,
        topics: TopicTable,
        cluster: Option<Arc<cluster::Cluster>>,
    ) -> Result<Server, RunError> {
        tracing::info!(data = %data_dir.display(), took_ms = topics.recovery.took.as_millis() as u64, "data directory opened: {}", topics.recovery);
        let topics = Arc::new(topics);
        let producer_ids = Arc::new(ProducerIds::open(data_dir).await?);
        let groups = Groups::open(data_dir, topics.clone()).await?;
        tokio::spawn(partition::scrub::run(topics.clone(), topics.streams_stop.clone()));
        Ok(Server { _lock: lock, topics, groups, producer_ids, cluster })
    }

    /// Opens the data directory as a node of a cluster: starts the peer listener and this
    /// node's replica of the metadata group, then every partition (all replicated), and
    /// applies the metadata as it is committed. It registers `client_address` as where this
    /// node serves clients; [`Server::joined`] says when that is done.
    pub async fn open_cluster(
        data_dir: &Path,
        partitions_max: Option<u32>,
        setup: ClusterSetup,
        client_address: String,
        kafka_address: Option<String>,
    ) -> Result<Server, RunError> {
        let lock = spool_storage::fs::DirectoryLock::acquire(data_dir)?;
        tracing::info!(data = %data_dir.display(), node = setup.options.node_id, "opening the data directory as a cluster node");
        let limit = resources::soft_limit();
        spool_storage::set_sealed_files_open_max(resources::sealed_files_max(limit));
        let cluster = cluster::Cluster::start(&setup.options, setup.listener, data_dir).await?;
        let partitions_max = partitions_max.unwrap_or_else(resources::default_partitions_max);
        let topics = TopicTable::open(data_dir, partitions_max, Some(cluster.clone())).await?;
        let server = Server::finish_open(lock, data_dir, topics, Some(cluster.clone())).await?;
        server.producer_ids.use_cluster(cluster.clone());
        let applier = server.topics.clone().apply_metadata(cluster.clone(), cluster.stopping());
        tokio::spawn(applier);
        let joining = cluster.clone();
        tokio::spawn(async move { joining.join(client_address, kafka_address).await });
        Ok(server)
    }

    /// Returns once this node has joined its cluster (at once for a single node).
    pub async fn joined(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.joined().await;
        }
    }

    /// The server's gauges.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.topics.metrics.clone()
    }

    /// This node's part in a cluster, on a node of one.
    pub(crate) fn cluster(&self) -> Option<Arc<cluster::Cluster>> {
        self.cluster.clone()
    }

    pub(crate) fn groups(&self) -> Arc<Groups> {
        self.groups.clone()
    }

    /// What opening the data directory did.
    pub fn recovery(&self) -> &RecoverySummary {
        &self.topics.recovery
    }

    /// Drains every writer's queue, syncs it and closes every log cleanly; a log that did
    /// not close cleanly is checked again at the next start.
    async fn close(&self) -> Result<(), RunError> {
        let mut unclean = self.topics.close().await;
        unclean.extend(self.groups.close().await);
        unclean.extend(self.producer_ids.close().await);
        if let Some(cluster) = &self.cluster {
            for log in cluster.shutdown().await {
                if let Err(error) = log.close() {
                    unclean.push(format!("the cluster's own log: {error}"));
                }
            }
        }
        if unclean.is_empty() {
            tracing::info!("all partition logs closed");
            Ok(())
        } else {
            Err(RunError::UncleanStop { logs: unclean })
        }
    }

    /// Serves on `listener`, plaintext and without tokens, until `shutdown` resolves, then
    /// shuts down as described in the crate docs and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RunError> {
        serve(listener, ServeOptions::default(), async { Ok(self) }, shutdown).await
    }
}

/// Opens `data_dir` while serving health on `listener`, then serves everything until
/// `shutdown` resolves, and shuts down cleanly.
pub async fn run(
    listener: TcpListener,
    data_dir: &Path,
    mut options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let partitions_max = options.partitions_max;
    let Some(setup) = options.cluster.take() else {
        return serve(listener, options, Server::open_with(data_dir, partitions_max), shutdown)
            .await;
    };
    let client_address = client_address(&options, &listener)?;
    let kafka_address = kafka_address(&options)?;
    let opening = async move {
        let server =
            Server::open_cluster(data_dir, partitions_max, setup, client_address, kafka_address)
                .await?;
        server.joined().await;
        Ok(server)
    };
    serve(listener, options, opening, shutdown).await
}

/// Where a cluster node tells clients it serves, which it registers with the cluster so every
/// node can name it: `advertised`, or the gRPC listener's own address.
fn client_address(options: &ServeOptions, listener: &TcpListener) -> Result<String, RunError> {
    Ok(match &options.advertised {
        Some(advertised) => advertised.to_string(),
        None => listener.local_addr().map_err(RunError::ClientAddress)?.to_string(),
    })
}

/// What a cluster node's Kafka listener advertises, which it registers with the cluster so
/// every node's Metadata names it: `kafka_advertised`, or the listener's own address.
fn kafka_address(options: &ServeOptions) -> Result<Option<String>, RunError> {
    Ok(match (&options.kafka_advertised, &options.kafka) {
        (Some(advertised), _) => Some(advertised.to_string()),
        (None, Some(kafka)) => {
            let address = kafka.local_addr().map_err(RunError::KafkaAddress)?;
            Some(kafka::AdvertisedAddress::from(address).to_string())
        }
        (None, None) => None,
    })
}

/// The services registered before the data directory is open, opened once it is.
struct Services {
    topics: Gate<TopicServiceServer<TopicApi>>,
    produce: Gate<ProduceServiceServer<ProduceApi>>,
    consume: Gate<RawReplies<ConsumeServiceServer<ConsumeApi>>>,
    groups: Gate<RawReplies<GroupServiceServer<GroupApi>>>,
}

impl Services {
    /// Every service behind a closed gate.
    fn gated() -> Services {
        Services {
            topics: Gate::new(),
            produce: Gate::new(),
            consume: Gate::new(),
            groups: Gate::new(),
        }
    }

    fn open(&self, server: &Server, auth: &AuthLayer) {
        let table = &server.topics;
        let topics = TopicServiceServer::new(TopicApi { topics: table.clone() })
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
        let produce = ProduceServiceServer::new(ProduceApi {
            topics: table.clone(),
            producer_ids: server.producer_ids.clone(),
        })
        .max_decoding_message_size(REQUEST_BYTES_MAX)
        .max_encoding_message_size(RESPONSE_BYTES_MAX);
        let consume = ConsumeServiceServer::new(ConsumeApi { topics: table.clone() })
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
        self.topics.open(topics, auth.clone());
        self.produce.open(produce, auth.clone());
        self.consume.open(RawReplies(consume), auth.clone());
        let groups = GroupServiceServer::new(GroupApi { groups: server.groups.clone() })
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
        self.groups.open(RawReplies(groups), auth.clone());
    }
}

/// The names health reports on: the whole server ("") and each `spool.v1` service.
const HEALTH_NAMES: [&str; 5] = [
    "",
    <TopicServiceServer<TopicApi> as NamedService>::NAME,
    <ProduceServiceServer<ProduceApi> as NamedService>::NAME,
    <ConsumeServiceServer<ConsumeApi> as NamedService>::NAME,
    <GroupServiceServer<GroupApi> as NamedService>::NAME,
];

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Serves health, reflection and (gated) Spool's services on `listener` while `opening`
/// runs; once it yields the opened server, turns health SERVING and serves until
/// `shutdown`. The phases, each a function below: listen, open, go live, serve until
/// shutdown (then drain within the grace), close.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    opening: impl Future<Output = Result<Server, RunError>> + Send,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let ServeOptions {
        tls,
        tokens,
        metrics,
        http,
        http_allowed_origins,
        kafka,
        kafka_advertised,
        serving: told,
        connection_timeouts: timeouts,
        advertised: _,
        partitions_max: _,
        cluster: _,
    } = options;
    let kafka = match kafka {
        Some(listener) => {
            let tls = match &tls {
                Some(tls) => Some(tls.acceptor().map_err(RunError::KafkaTls)?),
                None => None,
            };
            let security = kafka::KafkaSecurity { tls, tokens: tokens.clone() };
            let advertised = match kafka_advertised {
                Some(advertised) => advertised,
                None => listener.local_addr().map_err(RunError::KafkaEndpoint)?.into(),
            };
            Some((listener, advertised, security, timeouts))
        }
        None => None,
    };
    let (mut reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let services = Services::gated();
    let stop_serving = CancellationToken::new();
    let serving = listen(listener, tls.as_ref(), timeouts, health, &services, &stop_serving)?;
    tokio::pin!(serving, shutdown);
    let opened_topics = Arc::new(std::sync::OnceLock::new());
    let metrics_endpoint = match metrics {
        Some(listener) => {
            let prometheus = metrics::install_prometheus()?;
            let endpoint = serving::serve_metrics(
                listener,
                prometheus,
                opened_topics.clone(),
                tokens.clone(),
                timeouts,
                stop_serving.clone(),
            );
            Some(tokio::spawn(endpoint))
        }
        None => None,
    };

    // Open the data directory while health says NOT_SERVING.
    let server = tokio::select! {
        opened = opening => opened?,
        () = &mut shutdown => {
            tracing::info!("shutting down before the data directory finished opening");
            stop_serving.cancel();
            return Ok(serving.await?);
        }
        served = &mut serving => return Ok(served?),
    };
    let _ = opened_topics.set(server.topics.clone());
    let http = http.map(|listener| (listener, http_allowed_origins, timeouts));
    let live = go_live(&server, &services, tokens, http, kafka, &stop_serving, &reporter).await;
    if let Some(told) = told {
        let _ = told.send(());
    }
    let (served, grace_end) =
        serve_until_shutdown(serving, shutdown, &mut reporter, &server, &stop_serving).await;
    stop_serving.cancel();
    if let Some(reloading) = live.reloading {
        reloading.abort();
    }
    // Posts in flight finish before the logs close; a browser that reads nothing is not
    // waited for past the grace period.
    let http_served =
        finish_listener(live.http_endpoint, grace_end, "browser", RunError::HttpEndpoint).await;
    let kafka_served =
        finish_listener(live.kafka_endpoint, grace_end, "Kafka", RunError::KafkaEndpoint).await;
    let closed = server.close().await;
    if let Some(endpoint) = metrics_endpoint {
        match endpoint.await {
            Ok(result) => result.map_err(RunError::MetricsEndpoint)?,
            Err(error) => tracing::error!(%error, "the metrics endpoint panicked"),
        }
    }
    http_served?;
    kafka_served?;
    served?;
    closed
}

/// The gRPC listener's stack: health, reflection and Spool's services behind their gates
/// (UNAVAILABLE until opened), serving until `stop_serving` is cancelled.
fn listen(
    listener: TcpListener,
    tls: Option<&TlsConfig>,
    timeouts: ConnectionTimeouts,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    services: &Services,
    stop_serving: &CancellationToken,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>> + Send, RunError> {
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(spool_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1()?;
    let reflection_v1alpha =
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha()?;
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
        .max_frame_size(HTTP2_FRAME_BYTES_MAX)
        .http2_keepalive_interval(Some(timeouts.keep_alive()))
        .http2_keepalive_timeout(Some(timeouts.keep_alive()));
    if let Some(tls) = tls {
        let tls = tls.server_config(timeouts.handshake);
        builder = builder.tls_config(tls).map_err(RunError::Tls)?;
    }
    Ok(builder
        .layer(tower::util::MapRequestLayer::new(serving::mark_first_request::<tonic::body::Body>))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(services.topics.clone())
        .add_service(services.produce.clone())
        .add_service(services.consume.clone())
        .add_service(services.groups.clone())
        .serve_with_incoming_shutdown(
            serving::grpc_connections(listener, timeouts),
            stop_serving.clone().cancelled_owned(),
        ))
}

/// What runs beside the gRPC listener once the server is live.
struct Live {
    http_endpoint: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    kafka_endpoint: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    reloading: Option<tokio::task::JoinHandle<()>>,
}

/// Opens the services' gates, starts the browser listener and the token file's reloading,
/// and turns health SERVING.
async fn go_live(
    server: &Server,
    services: &Services,
    tokens: Option<Arc<Authenticator>>,
    http: Option<(TcpListener, Vec<String>, ConnectionTimeouts)>,
    kafka: Option<(TcpListener, AdvertisedAddress, kafka::KafkaSecurity, ConnectionTimeouts)>,
    stop_serving: &CancellationToken,
    reporter: &HealthReporter,
) -> Live {
    let auth = AuthLayer::new(tokens.clone());
    services.open(server, &auth);
    let http_endpoint = http.map(|(listener, allowed_origins, timeouts)| {
        let (topics, stop) = (server.topics.clone(), stop_serving.clone());
        tokio::spawn(async move {
            http::serve(listener, topics, auth, &allowed_origins, timeouts, stop).await
        })
    });
    let kafka_endpoint = kafka.map(|(listener, advertised, security, timeouts)| {
        let served = kafka::KafkaServed {
            topics: server.topics.clone(),
            producer_ids: server.producer_ids.clone(),
            groups: server.groups.clone(),
        };
        let stop = stop_serving.clone();
        tokio::spawn(kafka::serve(listener, served, advertised, security, timeouts, stop))
    });
    let reloading = tokens.map(|tokens| {
        // Loaded before the metrics recorder was installed, perhaps.
        metrics::token_file_loaded(true);
        tokio::spawn(reload_tokens(tokens))
    });
    set_health(reporter, ServingStatus::Serving).await;
    tracing::info!("serving");
    Live { http_endpoint, kafka_endpoint, reloading }
}

/// Serves until `shutdown`; then turns health NOT_SERVING, ends streams, stops accepting
/// calls and lets those in flight finish within [`SHUTDOWN_GRACE`]. Returns how serving
/// ended and, when shutdown started it, the grace's end.
async fn serve_until_shutdown(
    mut serving: std::pin::Pin<&mut impl Future<Output = Result<(), tonic::transport::Error>>>,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    reporter: &mut HealthReporter,
    server: &Server,
    stop_serving: &CancellationToken,
) -> (Result<(), tonic::transport::Error>, Option<tokio::time::Instant>) {
    tokio::select! {
        served = &mut serving => (served, None),
        () = shutdown => {
            let grace_end = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            tracing::info!("shutting down: finishing calls in flight");
            set_health(reporter, ServingStatus::NotServing).await;
            // Health watchers see NOT_SERVING, then their streams end, so they do not hold
            // the shutdown for its grace period.
            for name in HEALTH_NAMES {
                reporter.clear_service_status(name).await;
            }
            server.topics.streams_stop.cancel();
            stop_serving.cancel();
            let served = tokio::select! {
                served = &mut serving => served,
                _ = tokio::time::sleep_until(grace_end) => {
                    tracing::warn!("calls still in flight after the grace period; closing their connections");
                    Ok(())
                }
            };
            (served, Some(grace_end))
        }
    }
}

/// Waits for a listener's connections (the browser's, `name` "browser", or Kafka's) to finish
/// the requests they have read, until the shutdown's grace ends (or a grace from now, when
/// serving ended by itself); then closes what is left.
async fn finish_listener(
    endpoint: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    grace_end: Option<tokio::time::Instant>,
    name: &str,
    failed: fn(std::io::Error) -> RunError,
) -> Result<(), RunError> {
    let Some(mut endpoint) = endpoint else {
        return Ok(());
    };
    let deadline = grace_end.unwrap_or_else(|| tokio::time::Instant::now() + SHUTDOWN_GRACE);
    match tokio::time::timeout_at(deadline, &mut endpoint).await {
        Ok(Ok(result)) => result.map_err(failed),
        Ok(Err(error)) => {
            tracing::error!(%error, "the {name} listener panicked");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("{name} connections still open after the grace period; closing them");
            endpoint.abort();
            Ok(())
        }
    }
}

/// Reloads the token file whenever it changes; a file that does not load leaves no token in
/// force until it does (see [`Authenticator::reload`]), says why at every check, and shows
/// in the `spool_token_file_loaded` gauge.
async fn reload_tokens(tokens: Arc<Authenticator>) {
    let mut interval = tokio::time::interval(TOKENS_RELOAD_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let checked = tokens.clone();
        let reloaded = tokio::task::spawn_blocking(move || checked.reload_if_changed()).await;
        match reloaded {
            Ok(Ok(Some(count))) => {
                tracing::info!(path = %tokens.path().display(), tokens = count, "token file reloaded")
            }
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::error!(%error, "token file not reloaded: every token is refused until it loads again")
            }
            Err(error) => tracing::error!(%error, "reloading the token file panicked"),
        }
    }
}
