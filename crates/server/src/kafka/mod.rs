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
//!   (clients pipeline). A produce with `acks=0` gets no answer, as in Kafka.
//! - Memory is bounded listener-wide: a request takes its frame's size from a budget of
//!   [`KAFKA_BYTES_IN_FLIGHT_MAX`] before its body is read, a fetch also its answer's size;
//!   both are given back once the answer is written.
//! - Connections are counted and bounded ([`KAFKA_CONNECTIONS_MAX`]) and closed when they
//!   stall, as the other listeners' are (`crate::connection`).
//! - Requests with arrays are decoded by `decode`, which bounds every array by the bytes the
//!   frame holds (`kafka-protocol` reserves room for whatever count a request claims).
//!
//! What is served, per API: `apis` (ApiVersions, Metadata), `produce` (Produce), `fetch`
//! (Fetch, ListOffsets), `groups` (the classic consumer-group APIs); `codes` maps Spool's errors to Kafka's error codes. There is no
//! authentication yet: the server refuses to start the listener when tokens are configured.

mod apis;
mod codes;
mod decode;
mod fetch;
mod groups;
mod produce;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, HeartbeatRequest, LeaveGroupRequest, ListGroupsRequest,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::connection::{Accepting, ConnectionTimeouts, Guarded};
use crate::groups::Groups;
use crate::idempotence::ProducerIds;
use crate::limits::{
    KAFKA_BYTES_IN_FLIGHT_MAX, KAFKA_CONNECTIONS_MAX, KAFKA_REQUEST_BYTES_MAX,
    KAFKA_REQUESTS_IN_FLIGHT_MAX,
};
use crate::topic_table::TopicTable;

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
}

/// One answer, or none (a produce with `acks=0`), with the budget held until it is written.
struct Answer {
    frame: Option<BytesMut>,
    _held: Vec<OwnedSemaphorePermit>,
}

/// Serves Kafka clients on `listener` until `stop` is cancelled; then stops accepting,
/// lets each connection finish the requests it has read, and returns when all have closed
/// (the caller bounds that wait).
pub(crate) async fn serve(
    listener: TcpListener,
    topics: Arc<TopicTable>,
    producer_ids: Arc<ProducerIds>,
    groups: Arc<Groups>,
    advertised: AdvertisedAddress,
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        topics,
        producer_ids,
        groups,
        advertised,
        bytes: Arc::new(Semaphore::new(KAFKA_BYTES_IN_FLIGHT_MAX)),
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
        connections.spawn(serve_connection(connection, shared.clone(), stop.clone()));
    }
    drop(accepting);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Reads requests and hands each to its own task; a second task writes the answers in order.
async fn serve_connection(connection: Guarded, shared: Arc<Shared>, stop: CancellationToken) {
    let first_request = connection.first_request();
    // As Kafka's brokers show a member's host in DescribeGroups.
    let client_host: Arc<str> =
        connection.peer().map_or_else(String::new, |peer| format!("/{}", peer.ip())).into();
    let (mut reader, mut writer) = tokio::io::split(connection);
    let (answers, mut answers_rx) =
        mpsc::channel::<JoinHandle<Result<Answer, Close>>>(KAFKA_REQUESTS_IN_FLIGHT_MAX);
    let writing = tokio::spawn(async move {
        while let Some(answer) = answers_rx.recv().await {
            let answer = match answer.await {
                Ok(Ok(answer)) => answer,
                Ok(Err(close)) => return Err(close),
                Err(error) => return Err(Close::Task(error.to_string())),
            };
            if let Some(frame) = answer.frame
                && let Err(error) = writer.write_all(&frame).await
            {
                tracing::debug!(%error, "a Kafka connection closed while being answered");
                return Ok(());
            }
        }
        let _ = writer.shutdown().await;
        Ok(())
    });
    let reading = async {
        loop {
            let mut length = [0u8; 4];
            let read = tokio::select! {
                read = reader.read_exact(&mut length) => read,
                () = stop.cancelled() => return Ok(()),
                // The writer stopped: a request closed the connection.
                () = answers.closed() => return Ok(()),
            };
            if read.is_err() {
                return Ok(());
            }
            first_request.arrived();
            let bytes = u32::from_be_bytes(length) as u64;
            if !(8..=KAFKA_REQUEST_BYTES_MAX as u64).contains(&bytes) {
                return Err(Close::FrameSize { bytes, bytes_max: KAFKA_REQUEST_BYTES_MAX });
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
            let handling =
                tokio::spawn(counted(shared.clone(), client_host.clone(), body.freeze(), held));
            if answers.send(handling).await.is_err() {
                return Ok(());
            }
        }
    };
    let read: Result<(), Close> = reading.await;
    drop(answers);
    let written = writing.await.unwrap_or_else(|error| Err(Close::Task(error.to_string())));
    for close in [read.err(), written.err()].into_iter().flatten() {
        tracing::debug!(reason = %close, "closing a Kafka connection");
    }
}

/// [`handle`], counted in `spool_kafka_requests_total`.
async fn counted(
    shared: Arc<Shared>,
    client_host: Arc<str>,
    request: Bytes,
    held: OwnedSemaphorePermit,
) -> Result<Answer, Close> {
    let api = match ApiKey::try_from(i16::from_be_bytes([request[0], request[1]])) {
        Ok(api) if apis::served(api).is_some() => api_name(api),
        _ => "unknown",
    };
    let handled = handle(shared, &client_host, request, held).await;
    let outcome = match &handled {
        Ok(Answer { frame: Some(_), .. }) => "answered",
        Ok(Answer { frame: None, .. }) => "unanswered",
        Err(_) => "closed",
    };
    crate::metrics::kafka_request(api, outcome);
    handled
}

/// The label of a served API.
fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::Metadata => "Metadata",
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        _ => "unknown",
    }
}

/// Decodes one request, serves it and encodes its answer frame.
async fn handle(
    shared: Arc<Shared>,
    client_host: &str,
    mut request: Bytes,
    held: OwnedSemaphorePermit,
) -> Result<Answer, Close> {
    // The header's first fields are the same in every version: API key, version, correlation id.
    let api_key = i16::from_be_bytes([request[0], request[1]]);
    let version = i16::from_be_bytes([request[2], request[3]]);
    let correlation_id = i32::from_be_bytes([request[4], request[5], request[6], request[7]]);
    let api = ApiKey::try_from(api_key).map_err(|()| Close::UnknownApi { api_key })?;
    let Some(range) = apis::served(api) else {
        return Err(Close::UnknownApi { api_key });
    };
    let mut held = vec![held];
    if !(range.min..=range.max).contains(&version) {
        if api == ApiKey::ApiVersions {
            // Any version gets an answer the client can read: v0, listing what is served.
            let frame = encode(api, 0, correlation_id, &apis::unsupported_api_versions())?;
            return Ok(Answer { frame: Some(frame), _held: held });
        }
        return Err(Close::UnsupportedVersion { api, version, min: range.min, max: range.max });
    }
    let malformed = |reason: String| Close::Malformed { api, version, reason };
    let header = RequestHeader::decode(&mut request, api.request_header_version(version))
        .map_err(|error| malformed(error.to_string()))?;
    let decode_whole = |request: &mut Bytes| -> Result<(), Close> {
        if request.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!("{} bytes past the end", request.len())))
        }
    };
    let frame = match api {
        ApiKey::ApiVersions => encode(api, version, correlation_id, &apis::api_versions())?,
        ApiKey::Metadata => {
            let request =
                decode::metadata(request, version).map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &apis::metadata(&shared, request))?
        }
        ApiKey::Produce => {
            let request =
                decode::produce(request, version).map_err(|e| malformed(e.to_string()))?;
            match produce::produce(&shared, request).await {
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
                &fetch::list_offsets(&shared, request, version).await,
            )?
        }
        ApiKey::Fetch => {
            let request = decode::fetch(request, version).map_err(|e| malformed(e.to_string()))?;
            let answer = fetch::fetch(&shared, request, &mut held).await;
            encode(api, version, correlation_id, &answer)?
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
            let client_id = header.client_id.as_deref().unwrap_or("");
            let client = groups::Client { id: client_id, host: client_host };
            let answer = groups::join_group(&shared, body, version, client).await;
            encode(api, version, correlation_id, &answer)?
        }
        ApiKey::SyncGroup => {
            let body =
                decode::sync_group(request, version).map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &groups::sync_group(&shared, body).await)?
        }
        ApiKey::Heartbeat => {
            let body = HeartbeatRequest::decode(&mut request, version)
                .map_err(|e| malformed(e.to_string()))?;
            decode_whole(&mut request)?;
            encode(api, version, correlation_id, &groups::heartbeat(&shared, body))?
        }
        ApiKey::LeaveGroup => {
            let body = LeaveGroupRequest::decode(&mut request, version)
                .map_err(|e| malformed(e.to_string()))?;
            decode_whole(&mut request)?;
            encode(api, version, correlation_id, &groups::leave_group(&shared, body))?
        }
        ApiKey::OffsetCommit => {
            let body =
                decode::offset_commit(request, version).map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &groups::offset_commit(&shared, body).await)?
        }
        ApiKey::OffsetFetch => {
            let body =
                decode::offset_fetch(request, version).map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &groups::offset_fetch(&shared, body, version))?
        }
        ApiKey::DescribeGroups => {
            let body =
                decode::describe_groups(request, version).map_err(|e| malformed(e.to_string()))?;
            encode(api, version, correlation_id, &groups::describe_groups(&shared, body))?
        }
        ApiKey::ListGroups => {
            let _ = ListGroupsRequest::decode(&mut request, version)
                .map_err(|e| malformed(e.to_string()))?;
            decode_whole(&mut request)?;
            encode(api, version, correlation_id, &groups::list_groups(&shared))?
        }
        other => unreachable!("{other:?} is served but not dispatched"),
    };
    Ok(Answer { frame: Some(frame), _held: held })
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
}
