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
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve(listener, options, async { Ok(server) }, async {
            let _ = stopped.await;
        }));
        let server = TestServer {
            address,
            url: format!("{scheme}://{address}"),
            data_dir: data_dir.to_path_buf(),
            metrics,
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
