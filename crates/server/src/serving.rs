//! What the gRPC listener needs beyond Spool's own services: the gate that answers while the
//! data directory is still being recovered, TLS, connection counting, and the Prometheus
//! endpoint.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, Bytes, Service, StdError, http};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::AuthLayer;
use crate::limits::{ACCEPT_RETRY_INTERVAL, GRPC_CONNECTIONS_MAX};
use crate::metrics::{Connection, PartitionGauges, export_partition_gauges};
use crate::topic_table::TopicTable;

/// The listener's TLS: a certificate chain and key (PEM), and for mutual TLS the CA that
/// client certificates must chain to.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// With it, a client without a certificate signed by this CA cannot connect.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl TlsConfig {
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// A `spool.v1` service registered before the data directory is open. Until [`Gate::open`]
/// it answers every call with UNAVAILABLE (health says NOT_SERVING meanwhile); then it runs
/// the service behind the token interceptor.
pub(crate) struct Gate<S> {
    service: Arc<OnceLock<InterceptedService<S, AuthLayer>>>,
}

impl<S> Clone for Gate<S> {
    fn clone(&self) -> Self {
        Gate { service: self.service.clone() }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Gate<S> {
    pub(crate) fn new() -> Gate<S> {
        Gate { service: Arc::new(OnceLock::new()) }
    }

    pub(crate) fn open(&self, service: S, auth: AuthLayer) {
        let opened = self.service.set(InterceptedService::new(service, auth));
        assert!(opened.is_ok(), "a gate opens once");
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<Body>> for Gate<S>
where
    InterceptedService<S, AuthLayer>: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    <InterceptedService<S, AuthLayer> as Service<http::Request<Body>>>::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match self.service.get() {
            Some(service) => {
                let mut service = service.clone();
                Box::pin(async move {
                    let response = service.call(request).await?;
                    Ok(response.map(Body::new))
                })
            }
            None => {
                let status = tonic::Status::unavailable(
                    "the server is recovering its data directory; retry once health says SERVING",
                );
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// A client connection, counted in the connection gauges while it is open, holding one of
/// the listener's [`GRPC_CONNECTIONS_MAX`] places.
pub(crate) struct Counted {
    stream: TcpStream,
    _connection: Connection,
    _place: tokio::sync::OwnedSemaphorePermit,
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections `listener` accepts, each counted while it lives, at most
/// [`GRPC_CONNECTIONS_MAX`] at once: past it the listener accepts nothing more (the kernel's
/// backlog holds or refuses the rest) until one closes. A failed accept (out of file
/// handles, say) is logged and retried after [`ACCEPT_RETRY_INTERVAL`], never in a busy loop.
pub(crate) fn counted_connections(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<Counted>> {
    Accepting::new(listener, GRPC_CONNECTIONS_MAX)
}

struct Accepting {
    listener: TcpListener,
    places: tokio_util::sync::PollSemaphore,
    place: Option<tokio::sync::OwnedSemaphorePermit>,
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Accepting {
    fn new(listener: TcpListener, places: usize) -> Accepting {
        let places = Arc::new(tokio::sync::Semaphore::new(places));
        Accepting {
            listener,
            places: tokio_util::sync::PollSemaphore::new(places),
            place: None,
            retry: None,
        }
    }
}

impl Stream for Accepting {
    type Item = io::Result<Counted>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(retry) = &mut this.retry {
                std::task::ready!(retry.as_mut().poll(cx));
                this.retry = None;
            }
            if this.place.is_none() {
                match std::task::ready!(this.places.poll_acquire(cx)) {
                    Some(place) => this.place = Some(place),
                    None => return Poll::Ready(None),
                }
            }
            match std::task::ready!(this.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    // Small answers (acknowledgements) should not wait for Nagle's algorithm;
                    // a socket that refuses the option still serves.
                    let _ = stream.set_nodelay(true);
                    let place = this.place.take().expect("a place was taken above");
                    let connection = Connection::opened();
                    return Poll::Ready(Some(Ok(Counted {
                        stream,
                        _connection: connection,
                        _place: place,
                    })));
                }
                Err(error) => {
                    tracing::warn!(%error, retry_ms = ACCEPT_RETRY_INTERVAL.as_millis() as u64, "accepting a connection failed");
                    this.retry = Some(Box::pin(tokio::time::sleep(ACCEPT_RETRY_INTERVAL)));
                }
            }
        }
    }
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled. Before rendering, the
/// partitions' state gauges are set from `topics` (once the data directory is open).
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    topics: Arc<OnceLock<Arc<TopicTable>>>,
    stop: CancellationToken,
) -> io::Result<()> {
    let render = move || {
        let (prometheus, topics) = (prometheus.clone(), topics.clone());
        async move {
            if let Some(topics) = topics.get() {
                export_gauges(topics);
            }
            prometheus.render()
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
}

fn export_gauges(topics: &TopicTable) {
    for topic in topics.topics() {
        for partition in &topic.partitions {
            let Ok(state) = partition.state() else { continue };
            export_partition_gauges(
                &topic.name,
                partition.id(),
                PartitionGauges {
                    log_start_offset: state.log_start_offset.0,
                    log_end_offset: state.log_end_offset.0,
                    segments: state.segments,
                    size_bytes: state.size_bytes,
                    fenced: state.fence.is_some(),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn a_listener_holds_at_most_its_places_and_frees_one_when_a_connection_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut accepting = Accepting::new(listener, 1);
        let _first = TcpStream::connect(address).await.unwrap();
        let held = accepting.next().await.unwrap().unwrap();
        let _second = TcpStream::connect(address).await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(200), accepting.next());
        assert!(waiting.await.is_err(), "no second place while the first connection is open");
        drop(held);
        let second = tokio::time::timeout(std::time::Duration::from_secs(30), accepting.next());
        assert!(second.await.unwrap().unwrap().is_ok(), "the freed place takes the next one");
    }
}
