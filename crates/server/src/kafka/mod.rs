//! The Kafka listener (`--kafka`): unmodified Kafka clients produce to and fetch from Spool's
//! topics over Kafka's own wire protocol, on the same partitions, writers and reads as gRPC.
//!
//! Messages are encoded and decoded by the `kafka-protocol` crate (generated from Kafka's
//! schemas); the listener, the framing and every semantic are ours:
//!
//! - A frame is a 4-byte big-endian length, then the request: header (API key, version,
//!   correlation id, client id) and body. A length over [`KAFKA_REQUEST_BYTES_MAX`] closes the
//!   connection before the body is read; so does a frame that does not decode, an API key or
//!   version not advertised (but ApiVersions, which answers any version: see `apis`), and an
//!   internal failure. Kafka's brokers close the connection in the same cases.
//! - Requests on one connection are handled concurrently, at most
//!   [`KAFKA_REQUESTS_IN_FLIGHT_MAX`] at once, and answered in the order they came
//!   (clients pipeline); produces queue their batches in that order too ([`InTurn`]). A
//!   produce with `acks=0` gets no answer, as in Kafka.
//! - Memory is bounded listener-wide: a request takes its frame's size from a budget of
//!   [`KAFKA_BYTES_IN_FLIGHT_MAX`] before its body is read, a fetch also its answer's size;
//!   both are given back once the answer is written.
//! - Connections are counted and bounded ([`KAFKA_CONNECTIONS_MAX`]) and closed when they
//!   stall, as the other listeners' are (`crate::connection`).
//! - Requests with arrays are decoded by `decode`, which bounds every array by the bytes the
//!   frame holds (`kafka-protocol` reserves room for whatever count a request claims).
//!
//! - With TLS configured, the listener speaks TLS with the gRPC listener's certificate (and
//!   client CA); with tokens, a connection authenticates with SASL/PLAIN, its password a token
//!   (`sasl`), and every request is checked against that token's grants, as a gRPC call is.
//!   A connection whose token leaves the file is closed at the file's next reload.
//!
//! What is served, per API: `apis` (ApiVersions, Metadata), `produce` (Produce), `fetch`
//! (Fetch, ListOffsets), `sasl` (SaslHandshake, SaslAuthenticate); `producer_id`
//! (InitProducerId), `admin` (CreateTopics, DeleteTopics, CreatePartitions, DescribeConfigs,
//! IncrementalAlterConfigs, with `configs` mapping Kafka's configuration names onto Spool's
//! topic settings), `leader_epoch` (OffsetForLeaderEpoch), `groups` (the classic
//! consumer-group APIs); `codes` maps Spool's errors to Kafka's error codes.

mod admin;
mod apis;
mod codes;
mod configs;
mod decode;
mod elect;
mod fetch;
mod groups;
mod leader_epoch;
mod produce;
mod producer_id;
mod sasl;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, HeartbeatRequest, ListGroupsRequest, RequestHeader,
    ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use self::sasl::Session;
use crate::auth::{Action, Authenticator, Caller, Resource};
use crate::connection::{Accepting, ConnectionTimeouts, Guarded};
use crate::error::ServiceError;
use crate::groups::Groups;
use crate::idempotence::ProducerIds;
use crate::limits::{
    KAFKA_BYTES_IN_FLIGHT_MAX, KAFKA_CONNECTIONS_MAX, KAFKA_REQUEST_BYTES_MAX,
    KAFKA_REQUESTS_IN_FLIGHT_MAX, KAFKA_UNAUTHENTICATED_REQUEST_BYTES_MAX,
};
use crate::topic_table::{Topic, TopicTable};

/// The host and port Metadata tells Kafka clients to connect to (`--kafka-advertised`):
/// `HOST:PORT`, an IPv6 address in brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisedAddress {
    pub host: String,
    pub port: u16,
}

impl From<SocketAddr> for AdvertisedAddress {
    fn from(address: SocketAddr) -> AdvertisedAddress {
        AdvertisedAddress { host: address.ip().to_string(), port: address.port() }
    }
}

impl FromStr for AdvertisedAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<AdvertisedAddress, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not HOST:PORT (for example 127.0.0.1:9092)"))?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{text:?} has no usable host before the port"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("{text:?}: the port must be 1 to 65535"))?;
        Ok(AdvertisedAddress { host: host.to_owned(), port })
    }
}

impl fmt::Display for AdvertisedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// What every connection's requests are served from.
#[derive(Debug)]
struct Shared {
    topics: Arc<TopicTable>,
    producer_ids: Arc<ProducerIds>,
    groups: Arc<Groups>,
    advertised: AdvertisedAddress,
    /// The listener's byte budget (see the module docs), in permits of one byte.
    bytes: Arc<Semaphore>,
    security: KafkaSecurity,
}

impl Shared {
    /// Topic `name`, if `caller` may `action` it. The grant is checked first, so a caller
    /// without one cannot tell whether the topic exists.
    fn topic(
        &self,
        caller: &Caller,
        action: Action,
        name: &str,
    ) -> Result<Arc<Topic>, ServiceError> {
        caller.allow(action, Resource::Topic(name))?;
        self.topics.topic(name)
    }

    fn with_tokens(&self) -> bool {
        self.security.tokens.is_some()
    }
}

/// How the Kafka listener is secured: TLS when the server has it, SASL/PLAIN when it has
/// tokens (see the module docs).
#[derive(Clone, Default)]
pub(crate) struct KafkaSecurity {
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) tokens: Option<Arc<Authenticator>>,
}

impl fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSecurity")
            .field("tls", &self.tls.is_some())
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

/// Why a connection is closed instead of answered.
#[derive(Debug, thiserror::Error)]
enum Close {
    #[error("a request frame of {bytes} bytes is outside 8..={bytes_max}")]
    FrameSize { bytes: u64, bytes_max: usize },
    #[error("API key {api_key} is not served")]
    UnknownApi { api_key: i16 },
    #[error("{api:?} version {version} is not served (versions {min} to {max} are)")]
    UnsupportedVersion { api: ApiKey, version: i16, min: i16, max: i16 },
    #[error("the {api:?} v{version} request does not decode: {reason}")]
    Malformed { api: ApiKey, version: i16, reason: String },
    #[error("encoding the {api:?} answer failed: {reason}")]
    Encode { api: ApiKey, reason: String },
    #[error("the answer was lost: {0}")]
    Task(String),
    #[error("{api:?} before the connection authenticated (SASL/PLAIN with a token)")]
    Unauthenticated { api: ApiKey },
    #[error("SASL authentication failed")]
    AuthenticationFailed,
    #[error("{api:?} after the connection authenticated")]
    Reauthentication { api: ApiKey },
    #[error("the connection's token was revoked")]
    Revoked,
}

/// One answer, or none (a produce with `acks=0`), with the budget held until it is written.
struct Answer {
    /// The frame, as chunks written in order (a fetch's records are slices of the log).
    frame: Option<Vec<Bytes>>,
    _held: Vec<OwnedSemaphorePermit>,
}

/// The server's state the Kafka listener serves: the same as gRPC's.
pub(crate) struct KafkaServed {
    pub(crate) topics: Arc<TopicTable>,
    pub(crate) producer_ids: Arc<ProducerIds>,
    pub(crate) groups: Arc<Groups>,
}

/// Serves Kafka clients on `listener` until `stop` is cancelled; then stops accepting,
/// lets each connection finish the requests it has read, and returns when all have closed
/// (the caller bounds that wait).
pub(crate) async fn serve(
    listener: TcpListener,
    served: KafkaServed,
    advertised: AdvertisedAddress,
    security: KafkaSecurity,
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let KafkaServed { topics, producer_ids, groups } = served;
    let shared = Arc::new(Shared {
        topics,
        producer_ids,
        groups,
        advertised,
        bytes: Arc::new(Semaphore::new(KAFKA_BYTES_IN_FLIGHT_MAX)),
        security,
    });
    let mut accepting = Accepting::new(listener, KAFKA_CONNECTIONS_MAX, timeouts);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let connection = tokio::select! {
            accepted = accepting.next() => match accepted {
                Some(Ok(connection)) => connection,
                Some(Err(error)) => return Err(error),
                None => break,
            },
            () = stop.cancelled() => break,
            // Reap finished connections so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        connections.spawn(secure_connection(connection, shared.clone(), stop.clone()));
    }
    drop(accepting);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serves `connection`, over TLS when the listener has it. The TLS handshake is bounded by the
/// connection's handshake timeout (it counts as the time before the first request).
async fn secure_connection(connection: Guarded, shared: Arc<Shared>, stop: CancellationToken) {
    let first_request = connection.first_request();
    let serving = connection.serving();
    // As Kafka's brokers show a member's host in DescribeGroups.
    let client_host: Arc<str> =
        connection.peer().map_or_else(String::new, |peer| format!("/{}", peer.ip())).into();
    let client = (first_request, serving, client_host);
    match shared.security.tls.clone() {
        None => serve_connection(connection, client, shared, stop).await,
        Some(acceptor) => match acceptor.accept(connection).await {
            Ok(connection) => serve_connection(connection, client, shared, stop).await,
            Err(error) => tracing::debug!(%error, "a Kafka client's TLS handshake failed"),
        },
    }
}

/// One request or answer in a connection's queue: aborted if the connection closes first.
type Handling = AbortOnDropHandle<Result<Answer, Close>>;

/// A produce's turn among its connection's produces: it queues its batches only once the
/// produce read before it has queued its own (or ended), so pipelined produces to a
/// partition are stored in the order they were sent, as Kafka stores them. The checks and the
/// waits for acknowledgements still overlap. Dropped once its batches are queued.
pub(super) struct InTurn {
    before: Option<oneshot::Receiver<()>>,
    _done: oneshot::Sender<()>,
}

impl InTurn {
    /// Waits for the produce before this one to have queued its batches.
    pub(super) async fn wait(&mut self) {
        if let Some(before) = self.before.take() {
            // Its sender dropped: queued, or ended without queuing.
            let _ = before.await;
        }
    }
}

/// Reads requests and hands each to its own task; a second task writes the answers in order.
/// SASL requests are served here, in order, since what they decide applies to the next one.
async fn serve_connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    connection: S,
    (first_request, serving, client_host): (
        crate::connection::FirstRequest,
        crate::connection::Serving,
        Arc<str>,
    ),
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let (mut reader, mut writer) = tokio::io::split(connection);
    let (answers, mut answers_rx) = mpsc::channel::<Handling>(KAFKA_REQUESTS_IN_FLIGHT_MAX);
    let writing = tokio::spawn(async move {
        while let Some(answer) = answers_rx.recv().await {
            let answer = match answer.await {
                Ok(Ok(answer)) => answer,
                Ok(Err(close)) => return Err(close),
                Err(error) => return Err(Close::Task(error.to_string())),
            };
            if let Some(frame) = answer.frame
                && let Err(error) = write_chunks(&mut writer, frame).await
            {
                tracing::debug!(%error, "a Kafka connection closed while being answered");
                return Ok(());
            }
        }
        let _ = writer.shutdown().await;
        Ok(())
    });
    let mut session = Session::new(shared.security.tokens.as_ref());
    let mut last_produce: Option<oneshot::Receiver<()>> = None;
    let mut reloads = match &shared.security.tokens {
        Some(tokens) => crate::auth::TokenReloads::of(tokens),
        None => crate::auth::TokenReloads::none(),
    };
    let reading = async {
        loop {
            let mut length = [0u8; 4];
            let reading_length = reader.read_exact(&mut length);
            tokio::pin!(reading_length);
            // A reload does not interrupt the read: a length read halfway is not lost.
            let read = loop {
                tokio::select! {
                    read = &mut reading_length => break read,
                    () = stop.cancelled() => return Ok(()),
                    // The writer stopped: a request closed the connection.
                    () = answers.closed() => return Ok(()),
                    () = reloads.next() => {
                        if let Session::Authenticated(caller) = &session
                            && caller.check_token().is_err()
                        {
                            return Err(Close::Revoked);
                        }
                    }
                }
            };
            if read.is_err() {
                return Ok(());
            }
            first_request.arrived();
            let bytes = u32::from_be_bytes(length) as u64;
            let bytes_max = match session {
                Session::Authenticated(_) => KAFKA_REQUEST_BYTES_MAX,
                _ => KAFKA_UNAUTHENTICATED_REQUEST_BYTES_MAX,
            };
            if !(8..=bytes_max as u64).contains(&bytes) {
                return Err(Close::FrameSize { bytes, bytes_max });
            }
            let held = shared
                .bytes
                .clone()
                .acquire_many_owned(bytes as u32)
                .await
                .expect("the budget is never closed");
            let mut body = BytesMut::zeroed(bytes as usize);
            if reader.read_exact(&mut body).await.is_err() {
                return Ok(());
            }
            let body = body.freeze();
            let caller = match &session {
                Session::Authenticated(caller) => caller.clone(),
                _ => {
                    // Served here, so that the next request sees what it decided.
                    let (answer, failed) = exchange(&shared, &mut session, body)?;
                    let answer = Answer { frame: Some(vec![answer.freeze()]), _held: vec![held] };
                    let answered = AbortOnDropHandle::new(tokio::spawn(async { Ok(answer) }));
                    if answers.send(answered).await.is_err() {
                        return Ok(());
                    }
                    if failed {
                        return Err(Close::AuthenticationFailed);
                    }
                    continue;
                }
            };
            let turn =
                (i16::from_be_bytes([body[0], body[1]]) == ApiKey::Produce as i16).then(|| {
                    let (done, next) = oneshot::channel();
                    InTurn { before: last_produce.replace(next), _done: done }
                });
            let request = Request { caller, client_host: client_host.clone(), body, turn };
            // A request that waits (a JoinGroup, a Fetch) keeps the connection from idling.
            let one = serving.begin();
            let handling = tokio::spawn(counted(shared.clone(), request, held, one));
            if answers.send(AbortOnDropHandle::new(handling)).await.is_err() {
                return Ok(());
            }
        }
    };
    let read: Result<(), Close> = reading.await;
    drop(answers);
    let written = if matches!(read, Err(Close::Revoked)) {
        // Nothing more is sent on a revoked token's behalf, not even answers already queued.
        writing.abort();
        Ok(())
    } else {
        writing.await.unwrap_or_else(|error| Err(Close::Task(error.to_string())))
    };
    for close in [read.err(), written.err()].into_iter().flatten() {
        tracing::debug!(reason = %close, "closing a Kafka connection");
    }
}

/// Serves a request of a connection that has not authenticated yet: ApiVersions, or a step of
/// SASL/PLAIN (anything else closes the connection). Returns the answer and whether
/// authentication failed (the connection closes once the answer is written).
fn exchange(
    shared: &Shared,
    session: &mut Session,
    mut request: Bytes,
) -> Result<(BytesMut, bool), Close> {
    let api = api_label(&request, true);
    let started = std::time::Instant::now();
    let exchanged = (|| {
        let header = match parse(&mut request, true)? {
            Parsed::Request(header) => header,
            Parsed::Answered(frame) => return Ok((frame, false)),
        };
        let Header { api, version, correlation_id, .. } = header;
        let malformed = |reason: String| Close::Malformed { api, version, reason };
        match (api, &*session) {
            (ApiKey::ApiVersions, _) => {
                Ok((encode(api, version, correlation_id, &apis::api_versions(true))?, false))
            }
            (ApiKey::SaslHandshake, Session::Started) => {
                let request = SaslHandshakeRequest::decode(&mut request, version)
                    .map_err(|e| malformed(e.to_string()))?;
                let (answer, agreed) = sasl::handshake(&request);
                if agreed {
                    *session = Session::Agreed;
                }
                Ok((encode(api, version, correlation_id, &answer)?, false))
            }
            (ApiKey::SaslAuthenticate, Session::Agreed) => {
                let request = SaslAuthenticateRequest::decode(&mut request, version)
                    .map_err(|e| malformed(e.to_string()))?;
                let tokens = shared
                    .security
                    .tokens
                    .as_ref()
                    .expect("a session waits for SASL only with tokens");
                let (answer, caller) = sasl::authenticate(tokens, &request);
                let failed = caller.is_none();
                if let Some(caller) = caller {
                    *session = Session::Authenticated(caller);
                }
                Ok((encode(api, version, correlation_id, &answer)?, failed))
            }
            (api, _) => Err(Close::Unauthenticated { api }),
        }
    })();
    crate::metrics::kafka_request(
        api,
        match &exchanged {
            Ok((_, false)) => "answered",
            Ok((_, true)) => "refused",
            Err(_) => "closed",
        },
        started.elapsed(),
    );
    exchanged
}

/// A request read from an authenticated connection.
struct Request {
    caller: Caller,
    /// The client's address, as DescribeGroups shows it.
    client_host: Arc<str>,
    body: Bytes,
    /// A produce's place among its connection's produces.
    turn: Option<InTurn>,
}

/// [`handle`], counted in `spool_kafka_requests_total`, and among its connection's requests
/// being served (`_serving`) until it is answered.
async fn counted(
    shared: Arc<Shared>,
    request: Request,
    held: OwnedSemaphorePermit,
    _serving: crate::connection::ServingOne,
) -> Result<Answer, Close> {
    let api = api_label(&request.body, shared.with_tokens());
    let started = std::time::Instant::now();
    let handled = handle(shared, request, held).await;
    let outcome = match &handled {
        Ok(Answer { frame: Some(_), .. }) => "answered",
        Ok(Answer { frame: None, .. }) => "unanswered",
        Err(_) => "closed",
    };
    crate::metrics::kafka_request(api, outcome, started.elapsed());
    handled
}

/// The metric label of a request's API: its name if served, else `unknown`.
fn api_label(request: &[u8], with_tokens: bool) -> &'static str {
    match ApiKey::try_from(i16::from_be_bytes([request[0], request[1]])) {
        Ok(api) if apis::served(api, with_tokens).is_some() => apis::name(api),
        _ => "unknown",
    }
}

/// Decodes `request` (a frame after its length prefix) as the listener would, with tokens
/// (so the SASL APIs are served too), serving nothing: what the fuzz target `kafka_request`
/// runs. Whether it decoded.
#[doc(hidden)]
pub fn decode_request(request: &[u8]) -> bool {
    use kafka_protocol::messages::InitProducerIdRequest;

    // The listener closes a connection on a shorter frame before it reads it.
    if request.len() < 8 {
        return false;
    }
    let mut request = Bytes::copy_from_slice(request);
    let Ok(Parsed::Request(Header { api, version, .. })) = parse(&mut request, true) else {
        return false;
    };
    let v = version;
    match api {
        ApiKey::ApiVersions => true,
        ApiKey::Metadata => decode::metadata(request, v).is_ok(),
        ApiKey::Produce => decode::produce(request, v).is_ok(),
        ApiKey::Fetch => decode::fetch(request, v).is_ok(),
        ApiKey::ListOffsets => decode::list_offsets(request, v).is_ok(),
        ApiKey::SaslHandshake => SaslHandshakeRequest::decode(&mut request, v).is_ok(),
        ApiKey::SaslAuthenticate => SaslAuthenticateRequest::decode(&mut request, v).is_ok(),
        ApiKey::InitProducerId => InitProducerIdRequest::decode(&mut request, v).is_ok(),
        ApiKey::CreateTopics => decode::admin::create_topics(request, v).is_ok(),
        ApiKey::DeleteTopics => decode::admin::delete_topics(request, v).is_ok(),
        ApiKey::CreatePartitions => decode::admin::create_partitions(request, v).is_ok(),
        ApiKey::DescribeConfigs => decode::admin::describe_configs(request, v).is_ok(),
        ApiKey::IncrementalAlterConfigs => {
            decode::admin::incremental_alter_configs(request, v).is_ok()
        }
        ApiKey::OffsetForLeaderEpoch => decode::admin::offset_for_leader_epoch(request, v).is_ok(),
        ApiKey::ElectLeaders => decode::admin::elect_leaders(request, v).is_ok(),
        ApiKey::FindCoordinator => FindCoordinatorRequest::decode(&mut request, v).is_ok(),
        ApiKey::JoinGroup => decode::join_group(request, v).is_ok(),
        ApiKey::SyncGroup => decode::sync_group(request, v).is_ok(),
        ApiKey::Heartbeat => HeartbeatRequest::decode(&mut request, v).is_ok(),
        ApiKey::LeaveGroup => decode::leave_group(request, v).is_ok(),
        ApiKey::OffsetCommit => decode::offset_commit(request, v).is_ok(),
        ApiKey::OffsetFetch => decode::offset_fetch(request, v).is_ok(),
        ApiKey::DescribeGroups => decode::describe_groups(request, v).is_ok(),
        ApiKey::ListGroups => ListGroupsRequest::decode(&mut request, v).is_ok(),
        ApiKey::DeleteGroups => decode::delete_groups(request, v).is_ok(),
        ApiKey::OffsetDelete => decode::offset_delete(request, v).is_ok(),
        other => unreachable!("{other:?} is served but has no decoder here"),
    }
}

/// A request's header fields that decide how it is served.
#[derive(Debug, Clone)]
struct Header {
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    /// What a group member's client says it is (DescribeGroups shows it).
    client_id: Option<StrBytes>,
}

enum Parsed {
    /// The header was read; the body follows in the request.
    Request(Header),
    /// Answered already: an ApiVersions of a version not served.
    Answered(BytesMut),
}

/// Reads a request's header, leaving its body: closes the connection for an API or version
/// not served, but answers any ApiVersions.
fn parse(request: &mut Bytes, with_tokens: bool) -> Result<Parsed, Close> {
    // The header's first fields are the same in every version: API key, version, correlation id.
    let api_key = i16::from_be_bytes([request[0], request[1]]);
    let version = i16::from_be_bytes([request[2], request[3]]);
    let correlation_id = i32::from_be_bytes([request[4], request[5], request[6], request[7]]);
    let api = ApiKey::try_from(api_key).map_err(|()| Close::UnknownApi { api_key })?;
    let Some(range) = apis::served(api, with_tokens) else {
        return Err(Close::UnknownApi { api_key });
    };
    if !(range.min..=range.max).contains(&version) {
        if api == ApiKey::ApiVersions {
            // Any version gets an answer the client can read: v0, listing what is served.
            let answer = apis::unsupported_api_versions(with_tokens);
            return Ok(Parsed::Answered(encode(api, 0, correlation_id, &answer)?));
        }
        return Err(Close::UnsupportedVersion { api, version, min: range.min, max: range.max });
    }
    let header = RequestHeader::decode(request, api.request_header_version(version))
        .map_err(|error| Close::Malformed { api, version, reason: error.to_string() })?;
    Ok(Parsed::Request(Header { api, version, correlation_id, client_id: header.client_id }))
}

/// Decodes one request of an authenticated connection, serves it as `caller` and encodes its
/// answer frame.
async fn handle(
    shared: Arc<Shared>,
    request: Request,
    held: OwnedSemaphorePermit,
) -> Result<Answer, Close> {
    let Request { caller, client_host, body: mut request, turn } = request;
    let mut held = vec![held];
    let header = match parse(&mut request, shared.with_tokens())? {
        Parsed::Request(header) => header,
        Parsed::Answered(frame) => {
            return Ok(Answer { frame: Some(vec![frame.freeze()]), _held: held });
        }
    };
    let Header { api, version, correlation_id, client_id } = header;
    let malformed = |reason: String| Close::Malformed { api, version, reason };
    let decode_whole = |request: &mut Bytes| -> Result<(), Close> {
        if request.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!("{} bytes past the end", request.len())))
        }
    };
    let frame = match api {
        ApiKey::ApiVersions => {
            encode(api, version, correlation_id, &apis::api_versions(shared.with_tokens()))?
        }
        ApiKey::SaslHandshake | ApiKey::SaslAuthenticate => {
            return Err(Close::Reauthentication { api });
        }
        ApiKey::Metadata => {
            let request =
                decode::metadata(request, version).map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &apis::metadata(&shared, &caller, request).await)?
        }
        ApiKey::Produce => {
            let request =
                decode::produce(request, version).map_err(|e| malformed(e.to_string()))?;
            let turn = turn.expect("a produce has its turn");
            match produce::produce(&shared, &caller, request, turn).await {
                Some(answer) => encode(api, version, correlation_id, &answer)?,
                None => return Ok(Answer { frame: None, _held: held }),
            }
        }
        ApiKey::ListOffsets => {
            let request =
                decode::list_offsets(request, version).map_err(|e| malformed(e.to_string()))?;
            encode(
                api,
                version,
                correlation_id,
                &fetch::list_offsets(&shared, &caller, request, version).await,
            )?
        }
        ApiKey::Fetch => {
            let request = decode::fetch(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = fetch::fetch(&shared, &caller, request, &mut held).await;
            let header = ResponseHeader::default().with_correlation_id(correlation_id);
            let frame = answer
                .encode(version, &header, api.response_header_version(version))
                .map_err(|reason| Close::Encode { api, reason })?;
            return Ok(Answer { frame: Some(frame), _held: held });
        }
        ApiKey::InitProducerId
        | ApiKey::CreateTopics
        | ApiKey::DeleteTopics
        | ApiKey::CreatePartitions
        | ApiKey::DescribeConfigs
        | ApiKey::IncrementalAlterConfigs
        | ApiKey::OffsetForLeaderEpoch
        | ApiKey::ElectLeaders => {
            admin::handle(&shared, &caller, api, version, correlation_id, request).await?
        }
        ApiKey::FindCoordinator => {
            let body = FindCoordinatorRequest::decode(&mut request, version)
                .map_err(|e| malformed(e.to_string()))?;
            decode_whole(&mut request)?;
            encode(api, version, correlation_id, &groups::find_coordinator(&shared, body))?
        }
        ApiKey::JoinGroup => {
            let body =
                decode::join_group(request, version).map_err(|e| malformed(e.to_string()))?;
            let client_id = client_id.as_deref().unwrap_or("");
            let client = groups::Client { id: client_id, host: &client_host };
            let answer = groups::join_group(&shared, &caller, body, version, client).await;
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::SyncGroup => {
            let body =
                decode::sync_group(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = groups::sync_group(&shared, &caller, body).await;
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::Heartbeat => {
            let body = HeartbeatRequest::decode(&mut request, version)
                .map_err(|e| malformed(e.to_string()))?;
            decode_whole(&mut request)?;
            encode(api, version, correlation_id, &groups::heartbeat(&shared, &caller, body))?
        }
        ApiKey::LeaveGroup => {
            let body =
                decode::leave_group(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = groups::leave_group(&shared, &caller, body, version);
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::OffsetCommit => {
            let body =
                decode::offset_commit(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = groups::offset_commit(&shared, &caller, body).await;
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::OffsetFetch => {
            let body =
                decode::offset_fetch(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = groups::offset_fetch(&shared, &caller, body, version);
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::DescribeGroups => {
            let body =
                decode::describe_groups(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = groups::describe_groups(&shared, &caller, body, version);
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::DeleteGroups => {
            let body =
                decode::delete_groups(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = groups::delete_groups(&shared, &caller, body).await;
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::OffsetDelete => {
            let body =
                decode::offset_delete(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = groups::offset_delete(&shared, &caller, body).await;
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::ListGroups => {
            let _ = ListGroupsRequest::decode(&mut request, version)
                .map_err(|e| malformed(e.to_string()))?;
            decode_whole(&mut request)?;
            encode(api, version, correlation_id, &groups::list_groups(&shared, &caller))?
        }
        other => unreachable!("{other:?} is served but not dispatched"),
    };
    Ok(Answer { frame: Some(vec![frame.freeze()]), _held: held })
}

/// Writes `chunks` in order, several at a time.
async fn write_chunks<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut chunks: Vec<Bytes>,
) -> std::io::Result<()> {
    /// Chunks handed to one vectored write.
    const SLICES_MAX: usize = 64;
    let mut next = 0;
    while next < chunks.len() {
        let end = chunks.len().min(next + SLICES_MAX);
        let slices: Vec<std::io::IoSlice<'_>> =
            chunks[next..end].iter().map(|chunk| std::io::IoSlice::new(chunk)).collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let chunk = &mut chunks[next];
            let taken = written.min(chunk.len());
            bytes::Buf::advance(chunk, taken);
            written -= taken;
            if chunk.is_empty() {
                next += 1;
            }
        }
        while next < chunks.len() && chunks[next].is_empty() {
            next += 1;
        }
    }
    writer.flush().await
}

/// The answer frame: length, response header, body.
fn encode<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<BytesMut, Close> {
    let failed = |reason: String| Close::Encode { api, reason };
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    let mut frame = BytesMut::new();
    frame.put_u32(0);
    header.encode(&mut frame, header_version).map_err(|e| failed(e.to_string()))?;
    body.encode(&mut frame, version).map_err(|e| failed(e.to_string()))?;
    let length = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&length.to_be_bytes());
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_parse_and_print_back() {
        for (text, host, port) in
            [("127.0.0.1:9092", "127.0.0.1", 9092), ("kafka.example:19092", "kafka.example", 19092)]
        {
            let address: AdvertisedAddress = text.parse().unwrap();
            assert_eq!(address, AdvertisedAddress { host: host.to_owned(), port });
            assert_eq!(address.to_string(), text);
        }
        let v6: AdvertisedAddress = "[::1]:9092".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:9092");
        for bad in ["9092", ":9092", "host:0", "host:99999", "host:x"] {
            assert!(bad.parse::<AdvertisedAddress>().is_err(), "{bad}");
        }
    }

    /// The fuzz target's seeds of the group requests with a group instance id decode, and a
    /// LeaveGroup v3 claiming more members than its frame holds, or than the limit, does not.
    #[test]
    fn static_member_requests_decode_and_a_leave_batch_is_bounded_by_its_frame() {
        let seeds =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/kafka_request");
        for seed in ["join_group_v5", "leave_group_v3", "offset_commit_v7"] {
            let frame = std::fs::read(seeds.join(seed)).unwrap();
            assert!(decode_request(&frame), "{seed}");
        }
        let frame = std::fs::read(seeds.join("leave_group_v3")).unwrap();
        let body = Bytes::copy_from_slice(&frame[14..]);
        let request = decode::leave_group(body, 3).unwrap();
        let members: Vec<(&str, Option<&str>)> = request
            .members
            .iter()
            .map(|m| (m.member_id.as_str(), m.group_instance_id.as_deref()))
            .collect();
        assert_eq!(members, vec![("member-1", None), ("", Some("instance-1"))]);
        for count in [i32::MAX, crate::limits::KAFKA_LEAVE_GROUP_MEMBERS_MAX as i32 + 1] {
            let mut claiming = frame[..14].to_vec();
            claiming.extend([0, 1, b'g']);
            claiming.extend(count.to_be_bytes());
            claiming.extend(std::iter::repeat_n([0xff, 0xff, 0xff, 0xff], 2000).flatten());
            assert!(!decode_request(&claiming), "{count}");
        }
    }
}
