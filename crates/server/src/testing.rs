//! A server started in-process on 127.0.0.1:0: what the end-to-end tests, the client's tests
//! and examples, and the benchmark harness (when it is given no server) all run against.
//!
//! The caller owns the data directory: a test makes a temporary one and keeps it for as long
//! as the server runs, or hands the same directory to a second server to test a restart. This
//! crate therefore needs no temporary-directory dependency of its own.
//!
//! [`TestServer::start`] returns once health says SERVING: it watches the gRPC health stream
//! rather than polling it, so nothing sleeps. [`TestServer::shutdown`] stops the server as a
//! signal would and reports how it ended; dropping a `TestServer` stops it without waiting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{Metrics, RunError, ServeOptions, Server};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("binding 127.0.0.1:0 failed: {0}")]
    Bind(std::io::Error),
    #[error(transparent)]
    Open(#[from] RunError),
    #[error("connecting to the server's own address failed: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("watching the server's health failed: {0}")]
    Health(#[from] tonic::Status),
    #[error("the health stream ended before the server was serving")]
    HealthEnded,
}

#[derive(Debug, Error)]
pub enum StopError {
    #[error(transparent)]
    Serve(#[from] RunError),
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A server on a loopback port over a data directory the caller owns.
#[derive(Debug)]
pub struct TestServer {
    address: SocketAddr,
    url: String,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
    /// On a node of a cluster.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    groups: Arc<crate::groups::Groups>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RunError>>>,
}

impl TestServer {
    /// A plaintext server without tokens over `data_dir`, serving once this returns.
    pub async fn start(data_dir: &Path) -> Result<TestServer, StartError> {
        TestServer::start_with(data_dir, ServeOptions::default()).await
    }

    /// A server with TLS, tokens, a metrics endpoint or a browser listener; its
    /// [`url`](TestServer::url) is `https://` with TLS. With TLS this does not wait for health
    /// to say SERVING: the caller's client brings its own certificates, so the caller waits.
    pub async fn start_with(
        data_dir: &Path,
        options: ServeOptions,
    ) -> Result<TestServer, StartError> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(StartError::Bind)?;
        let address = listener.local_addr().map_err(StartError::Bind)?;
        let tls = options.tls.is_some();
        let scheme = if tls { "https" } else { "http" };
        let server = Server::open_with(data_dir, options.partitions_max).await?;
        let metrics = server.metrics();
        let groups = server.groups();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve(listener, options, async { Ok(server) }, async {
            let _ = stopped.await;
        }));
        let server = TestServer {
            address,
            url: format!("{scheme}://{address}"),
            data_dir: data_dir.to_path_buf(),
            metrics,
            cluster: None,
            groups,
            stop: Some(stop),
            task: Some(task),
        };
        // The listener answers UNAVAILABLE until the opened server is installed behind it, a
        // moment after `serve` starts.
        if !tls {
            server.wait_until_serving().await?;
        }
        Ok(server)
    }

    /// A node of a cluster on `ip` (port chosen), plaintext and without tokens. It serves
    /// once the cluster has taken its registration, which needs a majority of the nodes
    /// running: start them all, then [`TestServer::wait_until_serving`] on each.
    pub async fn start_cluster_node(
        data_dir: &Path,
        ip: std::net::IpAddr,
        setup: crate::ClusterSetup,
    ) -> Result<TestServer, StartError> {
        TestServer::start_cluster_node_with(data_dir, ip, setup, ServeOptions::default()).await
    }

    /// [`TestServer::start_cluster_node`] with a Kafka listener or other listeners in
    /// `options` (its TLS and tokens are not for cluster nodes).
    pub async fn start_cluster_node_with(
        data_dir: &Path,
        ip: std::net::IpAddr,
        setup: crate::ClusterSetup,
        options: ServeOptions,
    ) -> Result<TestServer, StartError> {
        let client = SocketAddr::new(ip, 0);
        TestServer::start_cluster_node_at(data_dir, client, setup, options).await
    }

    /// [`TestServer::start_cluster_node_with`] serving clients at `client`: a node started
    /// again where it served before.
    pub async fn start_cluster_node_at(
        data_dir: &Path,
        client: SocketAddr,
        setup: crate::ClusterSetup,
        options: ServeOptions,
    ) -> Result<TestServer, StartError> {
        let listener = TcpListener::bind(client).await.map_err(StartError::Bind)?;
        let address = listener.local_addr().map_err(StartError::Bind)?;
        let kafka = crate::kafka_address(&options)?;
        let client = crate::client_address(&options, &listener)?;
        let server = Server::open_cluster(data_dir, None, setup, client, kafka).await?;
        let metrics = server.metrics();
        let (cluster, groups) = (server.cluster(), server.groups());
        let (stop, stopped) = oneshot::channel::<()>();
        let opening = async move {
            server.joined().await;
            Ok(server)
        };
        let task = tokio::spawn(crate::serve(listener, options, opening, async {
            let _ = stopped.await;
        }));
        Ok(TestServer {
            address,
            url: format!("http://{address}"),
            data_dir: data_dir.to_path_buf(),
            metrics,
            cluster,
            groups,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Compacts this cluster node's own logs (the metadata, the consumer groups' offsets)
    /// now, whatever their size (a node does so by itself once one is large): the index
    /// each purged up to, if any.
    pub async fn compact_internal_logs(&self) -> Result<(Option<u64>, Option<u64>), String> {
        let cluster = self.cluster.as_ref().ok_or("not a node of a cluster")?;
        cluster.compact_internal_logs(0).await
    }

    /// Scrubs every partition (and on a cluster, the node's logs of the cluster's own
    /// groups) now, as fast as the disk reads (see `partition::scrub`): how many logs it
    /// found damaged.
    pub async fn scrub(&self) -> usize {
        let stop = tokio_util::sync::CancellationToken::new();
        crate::partition::scrub::pass(&self.groups.topics, None, &stop).await
    }

    /// Whether this cluster node rejoins the cluster (see `Cluster::settle_empty_start`),
    /// once it has settled that: at once for a node that did not start on an empty data
    /// directory (`false`).
    pub async fn rejoins(&self) -> Result<bool, String> {
        let cluster = self.cluster.as_ref().ok_or("not a node of a cluster")?;
        Ok(cluster.settled().await)
    }

    /// The offset `group` has committed for `partition` of `topic` as this node knows it
    /// (on a node of a cluster, the coordinator or not).
    pub fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        let group = spool_broker::group::GroupName::parse(group).ok()?;
        let topic = spool_broker::TopicName::parse(topic).ok()?;
        let partition = spool_broker::group::TopicPartition { topic, partition };
        let state = self.groups.lock();
        state.coordinator.committed_offsets().get(&group, &partition).map(|offset| offset.0)
    }

    /// Returns once the server's health says SERVING (watched, not polled).
    pub async fn wait_until_serving(&self) -> Result<(), StartError> {
        let request = HealthCheckRequest { service: String::new() };
        let mut watch = HealthClient::new(self.channel().await?).watch(request).await?.into_inner();
        while let Some(status) = watch.message().await? {
            if status.status() == ServingStatus::Serving {
                return Ok(());
            }
        }
        Err(StartError::HealthEnded)
    }

    /// `http://127.0.0.1:PORT`, or `https://` with TLS.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server's gauges.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A plaintext channel to the server.
    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(self.url.clone()).expect("the URL is well formed").connect().await
    }

    /// Shuts the server down as a signal would, and returns how it ended.
    pub async fn shutdown(mut self) -> Result<(), StopError> {
        let stop = self.stop.take().expect("only shutdown and drop take the sender");
        let _ = stop.send(());
        let task = self.task.take().expect("only shutdown takes the task");
        Ok(task.await??)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What a [`FaultProxy`] does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Carries every byte at once.
    Pass,
    /// Keeps connections open but carries nothing: bytes sent are lost.
    Drop,
    /// Carries every byte after this long.
    Delay(std::time::Duration),
    /// Closes every connection, and each new one at once.
    Reset,
}

/// A TCP proxy on a loopback port in front of `target`, whose [`Fault`] can change at any
/// time, for connections already open too: the fault injection of the replication tests.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    fault: tokio::sync::watch::Sender<Fault>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy listening on `bind` (an IP address; the port is chosen) for `target`.
    pub async fn start(bind: std::net::IpAddr, target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind((bind, 0)).await?;
        let address = listener.local_addr()?;
        let (fault, faults) = tokio::sync::watch::channel(Fault::Pass);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let faults = faults.clone();
                tokio::spawn(async move {
                    if *faults.borrow() == Fault::Reset {
                        return;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        () = pump(client_read, server_write, faults.clone()) => {}
                        () = pump(server_read, client_write, faults) => {}
                    }
                });
            }
        });
        Ok(FaultProxy { address, fault, task })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Carries bytes one way under the current fault, until either side closes or a reset.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: tokio::sync::watch::Receiver<Fault>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = faults.changed() => {
                if changed.is_err() || *faults.borrow() == Fault::Reset {
                    return;
                }
                continue;
            }
        };
        let fault = *faults.borrow();
        match fault {
            Fault::Pass => {}
            Fault::Drop => continue,
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::Reset => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
