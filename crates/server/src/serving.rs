//! What the gRPC listener needs beyond Spool's own services: the gate that answers while the
//! data directory is still being recovered, TLS, its connections (see [`crate::connection`]),
//! and the Prometheus endpoint.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, Bytes, Service, StdError, http};
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::auth::{AuthError, AuthLayer, Authenticator};
use crate::connection::{Accepting, ConnectionTimeouts, FirstRequest, Guarded};
use crate::limits::{GRPC_CONNECTIONS_MAX, METRICS_CONNECTIONS_MAX};
use crate::metrics::{PartitionGauges, ReplicationGauges, export_partition_gauges};
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
    /// The same TLS for listeners that speak it with tokio-rustls directly (the Kafka and
    /// peer listeners: tonic's configuration serves only tonic's own listener).
    pub(crate) fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        self.acceptor_revoking(Vec::new())
    }

    /// [`TlsConfig::acceptor`] that also refuses client certificates `crls` revoke.
    pub(crate) fn acceptor_revoking(
        &self,
        crls: Vec<rustls::pki_types::CertificateRevocationListDer<'static>>,
    ) -> Result<tokio_rustls::TlsAcceptor, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (certs, key) = tls_identity(&self.cert_pem, &self.key_pem)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = tls_roots(ca, "the client CA")?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .build()
                .map_err(|e| format!("the client CA is not usable: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// The listener's TLS, the handshake bounded by `handshake_timeout`.
    pub(crate) fn server_config(&self, handshake_timeout: std::time::Duration) -> ServerTlsConfig {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(handshake_timeout);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        }
    }
}

/// A certificate chain and its private key, from PEM.
pub(crate) type TlsIdentity =
    (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>);

/// Parses a certificate chain and its private key from PEM.
pub(crate) fn tls_identity(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsIdentity, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("the private key is not PEM: {e}"))?;
    Ok((certs, key))
}

/// The certificate revocation lists of a file (PEM).
pub(crate) fn tls_crls(
    crl_pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, String> {
    use rustls::pki_types::CertificateRevocationListDer;
    use rustls::pki_types::pem::PemObject;

    let crls = CertificateRevocationListDer::pem_slice_iter(crl_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the revocation list is not PEM: {e}"))?;
    if crls.is_empty() {
        return Err("the revocation list file holds no X509 CRL (PEM)".to_owned());
    }
    Ok(crls)
}

/// The certificates of a CA file (PEM) as trust roots; `what` names it in errors.
pub(crate) fn tls_roots(ca_pem: &[u8], what: &str) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| format!("{what} is not PEM: {e}"))?;
        roots.add(cert).map_err(|e| format!("{what} is not usable: {e}"))?;
    }
    Ok(roots)
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

/// What a gRPC request learns of its connection: the flag its first request sets (see
/// [`crate::connection`]).
#[derive(Debug, Clone)]
pub(crate) struct GrpcConnectInfo {
    first_request: FirstRequest,
}

impl Connected for Guarded {
    type ConnectInfo = GrpcConnectInfo;

    fn connect_info(&self) -> GrpcConnectInfo {
        GrpcConnectInfo { first_request: self.first_request() }
    }
}

/// Marks its connection's first request, for the handshake timeout. A TLS connection's
/// information is wrapped in tonic's `TlsConnectInfo`.
pub(crate) fn mark_first_request<B>(request: http::Request<B>) -> http::Request<B> {
    let extensions = request.extensions();
    let info = extensions.get::<GrpcConnectInfo>().or_else(|| {
        extensions
            .get::<tonic::transport::server::TlsConnectInfo<GrpcConnectInfo>>()
            .map(|tls| tls.get_ref())
    });
    if let Some(info) = info {
        info.first_request.arrived();
    }
    request
}

/// The connections `listener` accepts, each counted while it lives, at most
/// [`GRPC_CONNECTIONS_MAX`] at once, each closed when it stalls (see [`crate::connection`]).
pub(crate) fn grpc_connections(
    listener: TcpListener,
    timeouts: ConnectionTimeouts,
) -> impl Stream<Item = io::Result<Guarded>> {
    Accepting::new(listener, GRPC_CONNECTIONS_MAX, timeouts)
}

/// Serves `GET /metrics` on `listener` until `stop` is cancelled. Before rendering, the
/// partitions' state gauges are set from `topics` (once the data directory is open). With
/// tokens, only a token granted `metrics = true` may read it: the series name every topic
/// and group.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    topics: Arc<OnceLock<Arc<TopicTable>>>,
    tokens: Option<Arc<Authenticator>>,
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
) -> io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    let render = move |headers: axum::http::HeaderMap| {
        let (prometheus, topics, tokens) = (prometheus.clone(), topics.clone(), tokens.clone());
        async move {
            if let Some(tokens) = &tokens {
                let authorization = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
                if let Err(error) = tokens.allow_scrape(authorization) {
                    let message = format!("{error}\n");
                    return match error {
                        AuthError::NoMetricsGrant { .. } => {
                            (StatusCode::FORBIDDEN, message).into_response()
                        }
                        _ => {
                            let challenge = [(header::WWW_AUTHENTICATE, "Bearer")];
                            (StatusCode::UNAUTHORIZED, challenge, message).into_response()
                        }
                    };
                }
            }
            if let Some(topics) = topics.get() {
                export_gauges(topics);
            }
            crate::metrics::collect_process();
            prometheus.render().into_response()
        }
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(render));
    crate::connection::serve_http1(listener, app, METRICS_CONNECTIONS_MAX, timeouts, stop).await
}

fn export_gauges(topics: &TopicTable) {
    for topic in topics.topics() {
        // Only the partitions this node holds: another node's are its gauges.
        let held = topic.partitions.iter().filter(|partition| partition.remote().is_none());
        for partition in held {
            let Ok(state) = partition.state() else { continue };
            let replication = partition.replica().map(|replica| ReplicationGauges {
                leader: replica.leader().map(|(id, _)| id),
                leader_changes: replica.leader_changes(),
                lag_entries: replica
                    .lag()
                    .iter()
                    .filter_map(|(_, behind)| *behind)
                    .max()
                    .unwrap_or(0),
            });
            export_partition_gauges(
                &topic.name,
                partition.id(),
                PartitionGauges {
                    log_start_offset: state.log_start_offset.0,
                    log_end_offset: state.log_end_offset.0,
                    segments: state.segments,
                    size_bytes: state.size_bytes,
                    fenced: state.fence.is_some(),
                    replication,
                },
            );
        }
    }
}
