//! # spool-server
//!
//! Spool's gRPC server: the topic, produce and consume services of `spool.v1` over the
//! broker's topics and storage's partition logs.
//!
//! - Each partition has exactly one writer task ([`partition`]): a bounded queue of appends,
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
//! that resolves when the server should shut down. Shutdown stops accepting calls, ends
//! subscriptions and produce streams, lets unary calls in flight finish, drains every
//! writer's queue and syncs it, and closes every log cleanly so the next start does not scan.

mod broker;
mod consume;
pub mod error;
mod metrics;
mod partition;
mod produce;
mod topics;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spool_broker::OpenRegistryError;
use spool_broker::limits::{REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, STREAMS_PER_CONNECTION_MAX};
use spool_proto::v1::consume_service_server::ConsumeServiceServer;
use spool_proto::v1::produce_service_server::ProduceServiceServer;
use spool_proto::v1::topic_service_server::TopicServiceServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub use metrics::Metrics;

use crate::broker::Broker;
use crate::consume::ConsumeApi;
use crate::produce::ProduceApi;
use crate::topics::TopicApi;

/// How long shutdown waits for calls in flight (for example a subscriber whose client does
/// not read) before it closes their connections. Work already queued is finished regardless.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("opening the data directory failed: {0}")]
    Open(#[from] OpenRegistryError),
    #[error("serving gRPC failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A server over one data directory, opened and ready to serve.
#[derive(Debug)]
pub struct Server {
    broker: Arc<Broker>,
}

impl Server {
    /// Opens (or creates) the data directory and recovers every partition log in it.
    pub async fn open(data_dir: &Path) -> Result<Server, RunError> {
        Ok(Server { broker: Arc::new(Broker::open(data_dir).await?) })
    }

    /// The server's gauges.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.broker.metrics.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then shuts down as described in the
    /// crate docs and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RunError> {
        let broker = self.broker;
        let topics = TopicServiceServer::new(TopicApi { broker: broker.clone() })
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
        let produce = ProduceServiceServer::new(ProduceApi { broker: broker.clone() })
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
        let consume = ConsumeServiceServer::new(ConsumeApi { broker: broker.clone() })
            .max_decoding_message_size(REQUEST_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_BYTES_MAX);
        let streams_stop = broker.streams_stop.clone();
        let signalled = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing calls in flight");
            streams_stop.cancel();
        };
        let serving = tonic::transport::Server::builder()
            .max_concurrent_streams(STREAMS_PER_CONNECTION_MAX)
            .add_service(topics)
            .add_service(produce)
            .add_service(consume)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signalled);
        let grace_over = async {
            broker.streams_stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let served = tokio::select! {
            served = serving => served,
            _ = grace_over => {
                tracing::warn!("calls still in flight after the grace period; closing their connections");
                Ok(())
            }
        };
        broker.close().await;
        tracing::info!("all partition logs closed");
        Ok(served?)
    }
}

/// Opens `data_dir`, serves on `listener` until `shutdown` resolves, and shuts down cleanly.
pub async fn run(
    listener: TcpListener,
    data_dir: &Path,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    Server::open(data_dir).await?.serve(listener, shutdown).await
}
