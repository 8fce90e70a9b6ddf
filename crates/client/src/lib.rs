//! # spool-client
//!
//! The Rust client of Spool's gRPC API: topics, a batching [`Producer`] and a
//! [`Consumer`] that receives stored batches and decodes them without copying.
//!
//! ```no_run
//! use spool_client::{Client, ProducerConfig, Record, StartAt, Follow, TopicSettings};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("http://127.0.0.1:7070").await?;
//! client.create_topic("orders", TopicSettings::default()).await?;
//!
//! let producer = client.producer("orders", ProducerConfig::default()).await?;
//! let delivery = producer.send(Record::value(b"hello").with_key(b"user-7")).await?;
//! let stored = delivery.wait().await?; // durable: acks=all on an fsync `always` topic
//! println!("stored at partition {} offset {:?}", stored.partition, stored.offset);
//!
//! let mut consumer = client.subscribe("orders", 0, StartAt::Earliest, Follow::UntilEnd).await?;
//! while let Some(polled) = consumer.poll().await? {
//!     for record in polled.records() {
//!         let record = record?;
//!         println!("{}: {:?}", record.offset, record.value);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Runnable examples, each against `SPOOL_SERVER` or, when it is not set, a server started
//! in-process on a temporary directory:
//!
//! ```sh
//! cargo run -p spool-client --example produce
//! cargo run -p spool-client --example consume
//! cargo run -p spool-client --example request_reply
//! cargo run -p spool-client --example event_handler
//! ```
//!
//! # Messaging patterns
//!
//! - **Publish-subscribe:** producers write a topic; every [`Consumer`] or consumer group
//!   reads all of it, each at its own pace.
//! - **Consumer groups:** [`Client::group_consumer`] joins a group whose members share a
//!   topic's partitions, with offsets committed on the server ([`GroupConsumer`]).
//! - **Fire-and-forget:** a producer with [`Acks::None`] (see below).
//! - **Request-reply:** [`Requester`] and [`Responder`], with the headers
//!   [`REPLY_TO_HEADER`], [`REPLY_PARTITION_HEADER`], [`CORRELATION_ID_HEADER`] and
//!   [`ERROR_HEADER`].
//! - **Event-driven handlers:** [`run_handler`] runs an async function per event of a group,
//!   retries with a bounded backoff, and moves what keeps failing to a dead-letter topic.
//!
//! ## Fire-and-forget: what it may lose
//!
//! With [`Acks::None`] a record's [`Delivery`] resolves, without an offset, as soon as its
//! batch is handed to the produce stream; the server answers only failures. It is still
//! batched, and still bounded: the buffer holds at most [`ProducerConfig::buffer_bytes_max`]
//! bytes, and when it is full [`Producer::send`] waits ([`Backpressure::Wait`]) or fails with
//! [`ProduceError::BufferFull`] ([`Backpressure::FailFast`]); it never grows. What it may lose,
//! without telling the sender:
//!
//! - every record buffered or in flight when the process exits or the connection breaks
//!   (the producer then fails with [`ProduceError::Disconnected`], but records already
//!   reported delivered are not reported again);
//! - a batch the server refuses (a bad partition, a fenced partition, a full disk): it is
//!   only counted in [`ProducerStats::unacknowledged_failures`] and logged;
//! - records appended but not yet synced, when the server's machine crashes (as with
//!   [`Acks::Leader`]).
//!
//! Use it for data that can be lost (metrics, telemetry); use [`Acks::All`] for anything else.
//!
//! Errors are one enum per operation ([`ProduceError`], [`ConsumeError`], [`AdminError`],
//! [`ProducerError`], [`ConnectError`], [`GroupError`], [`RequestError`], [`HandlerError`]);
//! what the server refused carries an [`ErrorCode`] to match on.
//!
//! This crate knows the wire (`spool-proto`) and the stored batch format (`spool-storage`'s
//! `batch` module, used to encode and decode); it knows nothing of the server's internals.

mod consumer;
mod error;
mod group;
mod group_admin;
mod handler;
mod nodes;
mod producer;
mod raw;
mod reconnect;
mod request;
mod topics;

use std::sync::Arc;
use std::time::Duration;

use spool_proto::limits::HTTP2_FRAME_BYTES_MAX;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use consumer::{ConsumedRecord, Consumer, Follow, Polled, Records, StartAt};
pub use error::{
    AdminError, ConnectError, ConsumeError, ErrorCode, GroupError, ProduceError, ProducerError,
    ServerError,
};
pub use group::{
    Assignment, CommitMode, GroupConfig, GroupConsumer, GroupEvent, GroupRecord, GroupRecords,
    OffsetReset, TopicPartition,
};
pub use group_admin::{GroupInfo, GroupPartitionInfo, GroupState, MemberInfo};
pub use handler::{
    DLQ_ATTEMPTS_HEADER, DLQ_ERROR_HEADER, DLQ_GROUP_HEADER, DLQ_OFFSET_HEADER,
    DLQ_PARTITION_HEADER, DLQ_TOPIC_HEADER, Event, HandlerConfig, HandlerError, HandlerStats,
    run_handler,
};
pub use nodes::Nodes;
pub use producer::{
    Backpressure, Codec, Delivery, Header, Producer, ProducerConfig, ProducerStats, Record,
    RecordMetadata,
};
pub use reconnect::{RECONNECT_BACKOFF_INITIAL, RECONNECT_BACKOFF_MAX, Reconnect, ReconnectEvent};
pub use request::{
    CORRELATION_ID_HEADER, ERROR_HEADER, PendingReply, REPLY_PARTITION_HEADER, REPLY_TO_HEADER,
    Reply, Request, RequestError, Requester, RequesterConfig, Responder,
};
pub use spool_proto::Acks;
pub use topics::{
    ClusterInfo, Election, ElectionOutcome, Fsync, NodeInfo, PartitionInfo,
    ReplicatedPartitionInfo, TopicChange, TopicCompression, TopicInfo, TopicSettings,
};

/// A connection to a Spool server. Cheap to clone; producers and consumers made from it
/// share its HTTP/2 connection unless built on their own ([`Client::connect`] again).
#[derive(Debug, Clone)]
pub struct Client {
    channel: Nodes,
    /// Sent as `authorization: Bearer TOKEN` with every call (see
    /// [`Client::with_bearer_token`]).
    token: BearerToken,
    /// How it connected, to connect the same way to another node a cluster names (see
    /// [`Client::named_by`]); `None` for a client over the caller's channel.
    origin: Option<Arc<Origin>>,
}

/// How a [`Client`] connected: its URL's scheme and TLS settings (the token is the
/// client's own).
#[derive(Debug)]
struct Origin {
    https: bool,
    options: ConnectOptions,
}

/// The status metadata key that names where a refused request belongs (`host:port`): a
/// partition's leader, or the node that coordinates a cluster's consumer groups.
const NAMED_ADDRESS_KEY: &str = "spool-leader-address";

/// What every service client of this crate is built on: the connection, with the bearer
/// token (if any) added to each call's metadata. The server checks the token on every call
/// and on every message of a stream; a stream's messages travel under its opening metadata.
/// [`Client::transport`] gives it out for calling the generated `spool_proto` clients
/// directly.
pub type Transport = InterceptedService<Nodes, BearerToken>;

/// Adds `authorization: Bearer TOKEN` to each outgoing call when a token is set (see
/// [`Client::with_bearer_token`]).
#[derive(Debug, Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

/// How [`Client::connect_with`] connects, beside the URL.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer TOKEN` with every call.
    pub token: Option<String>,
    /// The CA (PEM) that signed an `https://` server's certificate.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// A client certificate and its private key (PEM), for a server that requires mutual
    /// TLS.
    pub client_identity_pem: Option<(Vec<u8>, Vec<u8>)>,
}

/// An error and its sources as one line, each message once: transport errors wrap the same
/// text at several levels ("tcp connect error: tcp connect error: ...").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// Why a connection failed, with what to do about the common causes.
fn unreachable_reason(error: &tonic::transport::Error) -> String {
    let mut reason = error_chain(error);
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    reason.push_str(" (is `spool serve` running at that address?)")
                }
                std::io::ErrorKind::InvalidData => reason.push_str(
                    " (the server did not answer TLS: is it serving plaintext? try http://)",
                ),
                _ => {}
            }
            break;
        }
        next = error.source();
    }
    reason
}

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// The endpoint [`Client::connect`] connects to, for a caller that adds its own settings
/// (TLS, timeouts) and then builds the client with [`Client::from_channel`].
///
/// - HTTP/2 pings find a connection that stays open but carries nothing back (a dead peer
///   behind a NAT, a frozen proxy): without them every stream opened again after a request
///   timeout, such as an idempotent producer's retry, would go to the same dead connection.
///   With them it is closed and the channel connects anew.
/// - The server may send frames of up to [`HTTP2_FRAME_BYTES_MAX`] (HTTP/2's default is
///   16 KiB): it writes each frame to the socket with its own call, so a 1 MiB subscribe
///   answer went out in 64 writes, now in one.
///
/// An address without a scheme (`127.0.0.1:7070`, as `spool serve` prints it) means
/// `http://`.
pub fn endpoint(url: &str) -> Result<Endpoint, ConnectError> {
    let url = if url.contains("://") { url.to_owned() } else { format!("http://{url}") };
    Ok(Endpoint::from_shared(url.clone())
        .map_err(|error| ConnectError::BadUrl { url, reason: error_chain(&error) })?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .max_frame_size(HTTP2_FRAME_BYTES_MAX))
}

/// [`endpoint`] for `url`, with the TLS `options` give when it is `https://`.
fn tls_endpoint(url: &str, options: &ConnectOptions) -> Result<Endpoint, ConnectError> {
    let endpoint = endpoint(url)?;
    if endpoint.uri().scheme_str() == Some("https") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &options.ca_cert_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &options.client_identity_pem {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        return endpoint
            .tls_config(tls)
            .map_err(|error| ConnectError::Tls { reason: error_chain(&error) });
    }
    if options.ca_cert_pem.is_some() || options.client_identity_pem.is_some() {
        let url = endpoint.uri().to_string();
        return Err(ConnectError::Tls {
            reason: format!("{url} is not an https:// URL, so its certificates are not used"),
        });
    }
    Ok(endpoint)
}

impl Client {
    /// Connects to a server at a URL like `http://127.0.0.1:7070`, through [`endpoint`] (or
    /// to a cluster's nodes, as [`Client::connect_with`] says).
    pub async fn connect(url: &str) -> Result<Client, ConnectError> {
        Client::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects with TLS settings and a token: what `spool`'s `--server`, `--ca-cert`,
    /// `--client-cert`/`--client-key` and `--token` flags set. TLS applies to `https://`
    /// URLs; no system roots are compiled in, so name the server's CA.
    ///
    /// `url` may name several nodes of a cluster, separated by commas
    /// (`http://127.0.0.1:7070,http://127.0.0.2:7070`): the client connects to the first it
    /// reaches, and moves its calls to the next when one fails in the transport (see
    /// [`Nodes`]).
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Client, ConnectError> {
        let mut endpoints = Vec::new();
        for url in url.split(',').map(str::trim) {
            endpoints.push(tls_endpoint(url, options)?);
        }
        let https = endpoints[0].uri().scheme_str() == Some("https");
        if endpoints.iter().any(|e| (e.uri().scheme_str() == Some("https")) != https) {
            return Err(ConnectError::BadUrl {
                url: url.to_owned(),
                reason: "every node is reached the same way: all http:// or all https://".into(),
            });
        }
        // The first node reached takes the calls; the others are connected when first used.
        let mut reached = None;
        let mut reasons = Vec::new();
        for (at, endpoint) in endpoints.iter().enumerate() {
            match endpoint.connect().await {
                Ok(channel) => {
                    reached = Some((at, channel));
                    break;
                }
                Err(error) => reasons.push(unreachable_reason(&error)),
            }
        }
        let Some((at, channel)) = reached else {
            let urls: Vec<String> = endpoints.iter().map(|e| e.uri().to_string()).collect();
            let reason = match reasons.as_slice() {
                [reason] => reason.clone(),
                reasons => {
                    let each =
                        urls.iter().zip(reasons).map(|(url, reason)| format!("{url}: {reason}"));
                    each.collect::<Vec<_>>().join("; ")
                }
            };
            return Err(ConnectError::Unreachable { url: urls.join(","), reason });
        };
        let nodes = endpoints
            .into_iter()
            .enumerate()
            .map(|(i, endpoint)| {
                let url = endpoint.uri().to_string();
                match i == at {
                    true => (url, channel.clone()),
                    false => (url, endpoint.connect_lazy()),
                }
            })
            .collect();
        let origin = Origin { https, options: ConnectOptions { token: None, ..options.clone() } };
        let channel = Nodes::new(nodes, at);
        let client =
            Client { channel, token: BearerToken::default(), origin: Some(Arc::new(origin)) };
        match &options.token {
            Some(token) => client.with_bearer_token(token),
            None => Ok(client),
        }
    }

    /// A client over a channel built by the caller (TLS, timeouts, ...).
    pub fn from_channel(channel: Channel) -> Client {
        let channel = Nodes::new(vec![("the caller's channel".to_owned(), channel)], 0);
        Client { channel, token: BearerToken::default(), origin: None }
    }

    /// A client for the node a refused call names (FAILED_PRECONDITION with
    /// `spool-leader-address`: on a cluster, the node that coordinates its consumer groups),
    /// connected as this one was: the same scheme, TLS settings and token. `None` when the
    /// refusal names no node (it then stands); `UNAVAILABLE` when the named node cannot be
    /// reached (it died, and the cluster names another within seconds: try again).
    pub(crate) async fn named_by(
        &self,
        status: &tonic::Status,
    ) -> Option<Result<Client, ServerError>> {
        if status.code() != tonic::Code::FailedPrecondition {
            return None;
        }
        let address = status.metadata().get(NAMED_ADDRESS_KEY)?.to_str().ok()?;
        let origin = self.origin.as_ref()?;
        let scheme = if origin.https { "https" } else { "http" };
        let url = format!("{scheme}://{address}");
        Some(match Client::connect_with(&url, &origin.options).await {
            Ok(client) => Ok(Client { token: self.token.clone(), ..client }),
            Err(error) => Err(ServerError {
                code: ErrorCode::Unavailable,
                message: format!("{}; going there failed: {error}", status.message()),
            }),
        })
    }

    /// A client whose calls go to the node that serves clients at `address` (`host:port`, as
    /// a cluster names a partition's leader) and, when that node fails in the transport, on
    /// to this client's nodes; connected as this one was. `None` for a client over the
    /// caller's channel, or an address no client can reach (a wildcard such as
    /// `0.0.0.0:7070`, which a node bound to every interface registers).
    pub(crate) fn preferring(&self, address: &str) -> Option<Client> {
        let origin = self.origin.as_ref()?;
        if address.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_unspecified()) {
            return None;
        }
        let scheme = if origin.https { "https" } else { "http" };
        let endpoint = tls_endpoint(&format!("{scheme}://{address}"), &origin.options).ok()?;
        let url = endpoint.uri().to_string();
        let channel = self.channel.preferring(&url, || endpoint.connect_lazy());
        Some(Client { channel, token: self.token.clone(), origin: self.origin.clone() })
    }

    /// The nodes this client's calls go through.
    pub(crate) fn nodes(&self) -> &Nodes {
        &self.channel
    }

    /// Sends `authorization: Bearer TOKEN` with every call made through this client: topic
    /// calls, producers, subscriptions and group members.
    pub fn with_bearer_token(self, token: &str) -> Result<Client, ConnectError> {
        let value = format!("Bearer {token}").parse().map_err(|_| ConnectError::BadToken)?;
        Ok(Client { token: BearerToken(Some(value)), ..self })
    }

    /// The connection with this client's token added to every call, for the generated
    /// `spool_proto` service clients (`TopicServiceClient::new(client.transport())`).
    pub fn transport(&self) -> Transport {
        InterceptedService::new(self.channel.clone(), self.token.clone())
    }

    /// Starts a producer for `topic`, which must exist: its partitions (and, on a cluster,
    /// their leaders) are read first.
    pub async fn producer(
        &self,
        topic: &str,
        config: ProducerConfig,
    ) -> Result<Producer, ProducerError> {
        let described = self.describe_topic(topic).await.map_err(|e| match e {
            AdminError::Rejected(error) => ProducerError::Rejected(error),
        })?;
        Producer::start(self, described, config).await
    }

    /// Subscribes to one partition from `start`.
    pub async fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        start: StartAt,
        follow: Follow,
    ) -> Result<Consumer, ConsumeError> {
        Consumer::subscribe(self, topic, partition, start, follow).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address nothing listens at.
    fn closed() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    #[tokio::test]
    async fn a_client_given_several_nodes_names_each_it_could_not_reach() {
        let (first, second) = (closed(), closed());
        let error = Client::connect(&format!("{first},{second}")).await.unwrap_err().to_string();
        assert!(error.contains(&format!("{first}/: ")), "{error}");
        assert!(error.contains(&format!("; {second}/: ")), "{error}");
        assert!(error.contains("is `spool serve` running"), "{error}");
        let mixed = Client::connect(&format!("{first},https://127.0.0.1:1")).await.unwrap_err();
        assert!(mixed.to_string().contains("all http:// or all https://"), "{mixed}");
    }
}
