//! The browser listener (`spool serve --http HOST:PORT`): a partition followed over
//! Server-Sent Events or WebSocket, records produced over WebSocket or a plain POST, and a
//! small page at `/` that uses them. It reads and writes through the same topic table and
//! partition writers as the gRPC services, never through gRPC itself.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the page ([`page.html`](./page.html), built in, no build step); `?topic=T&partition=P&from=F` opens a view |
//! | `GET /v1/topics` | the topics the caller may see, with their partition counts |
//! | `GET /v1/topics/{topic}/partitions/{p}/records?offset=O&limit=N` | up to N records from O, and the partition's range |
//! | `GET /v1/topics/{topic}/partitions/{p}/events?from=F` | Server-Sent Events ([`sse`]) |
//! | `GET /v1/ws` | WebSocket: subscribe and produce ([`ws`]) |
//! | `POST /v1/topics/{topic}/records` | produce one record (JSON, or a raw body) |
//!
//! Authentication is gRPC's ([`crate::auth`]): the same token file, grants and checks, and a
//! subscription re-checks its grant before every chunk. A token comes from the
//! `Authorization: Bearer` header, else the `token` query parameter (an `EventSource` cannot
//! set headers), else the cookie `spool_token` — the cookie only on GET requests and on a
//! WebSocket whose `Origin` is this listener, so another site cannot use a browser's cookie
//! to write (CSRF). The listener speaks plain HTTP: outside loopback, put it behind a
//! TLS-terminating proxy.
//!
//! Every stream has a bound: at most `HTTP_STREAMS_MAX` subscriptions and sockets at once,
//! a bounded queue per subscription ([`follow`]), one produce in flight per socket, bodies
//! and messages of at most `HTTP_REQUEST_BYTES_MAX`, and at most
//! `HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX` of records being produced at once over all of them
//! (a socket holds at most one more message, read but waiting for that budget).

mod error;
mod follow;
mod origin;

pub use origin::check_allowed_origin;
mod records;
mod sse;
mod ws;

use std::sync::{Arc, PoisonError};

use crate::limits::{
    HTTP_CONNECTIONS_MAX, HTTP_HISTORY_RECORDS_MAX, HTTP_KEEP_ALIVE,
    HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX, HTTP_REQUEST_BYTES_MAX, HTTP_STREAMS_MAX,
    HTTP_STREAMS_PER_TOKEN_MAX, HTTP_SUBSCRIBE_QUEUE_DEPTH,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use spool_storage::Offset;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;

use self::error::{BadRequest, HttpError};
use self::follow::{Item, feed};
use self::records::{EventJson, RecordIn, RecordJson, Start, produce};
use crate::auth::{Action, AuthError, AuthLayer, Caller, Resource, TokenDigest};
use crate::connection::ConnectionTimeouts;
use crate::consume::{Wire, answer};
use crate::error::ServiceError;
use crate::topic_table::TopicTable;

/// The page at `/`.
const PAGE: &str = include_str!("page.html");

/// The cookie a browser may carry its token in.
const TOKEN_COOKIE: &str = "spool_token";

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    topics: Arc<TopicTable>,
    auth: AuthLayer,
    streams: Arc<StreamSlots>,
    /// `HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX` permits, one per byte being produced.
    produce_bytes: Arc<Semaphore>,
    origins: Arc<origin::OriginPolicy>,
    /// How long an idle subscription waits before it sends a keep-alive: well inside the
    /// connections' idle timeout.
    keep_alive: std::time::Duration,
}

/// Where a request's token may come from besides the `Authorization` header and `?token=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenSources {
    /// A GET request: also the cookie.
    Get,
    /// A POST: never the cookie, which another site's form could make the browser send.
    Post,
    /// A WebSocket upgrade: the cookie only from this listener's own page.
    WebSocket,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// axum's `Query`, refusing with the listener's JSON error.
pub(crate) struct QueryOf<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryOf<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(query)) => Ok(QueryOf(query)),
            Err(rejection) => Err(BadRequest::Rejected { reason: rejection.body_text() }.into()),
        }
    }
}

/// axum's `Path`, refusing with the listener's JSON error.
pub(crate) struct PathOf<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathOf<T> {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(path)) => Ok(PathOf(path)),
            Err(rejection) => Err(BadRequest::Rejected { reason: rejection.body_text() }.into()),
        }
    }
}

/// The listener's places for streams (subscriptions and WebSockets): [`HTTP_STREAMS_MAX`]
/// in all, of which one token holds at most [`HTTP_STREAMS_PER_TOKEN_MAX`].
#[derive(Debug)]
pub(crate) struct StreamSlots {
    all: Arc<Semaphore>,
    per_token: std::sync::Mutex<std::collections::HashMap<TokenDigest, usize>>,
}

/// One stream's place, given back when dropped.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    _place: OwnedSemaphorePermit,
    token: Option<(Arc<StreamSlots>, TokenDigest)>,
}

impl StreamSlots {
    fn new() -> StreamSlots {
        StreamSlots {
            all: Arc::new(Semaphore::new(HTTP_STREAMS_MAX)),
            per_token: Default::default(),
        }
    }

    fn take(slots: &Arc<StreamSlots>, token: Option<TokenDigest>) -> Result<StreamSlot, HttpError> {
        let place = slots
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| BadRequest::TooManyStreams { streams_max: HTTP_STREAMS_MAX })?;
        let Some(token) = token else {
            return Ok(StreamSlot { _place: place, token: None });
        };
        let mut per_token = slots.per_token.lock().unwrap_or_else(PoisonError::into_inner);
        let held = per_token.entry(token).or_default();
        if *held >= HTTP_STREAMS_PER_TOKEN_MAX {
            return Err(BadRequest::TooManyStreamsForToken {
                streams_max: HTTP_STREAMS_PER_TOKEN_MAX,
            }
            .into());
        }
        *held += 1;
        Ok(StreamSlot { _place: place, token: Some((slots.clone(), token)) })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some((slots, token)) = &self.token {
            let mut per_token = slots.per_token.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(held) = per_token.get_mut(token) {
                *held -= 1;
                if *held == 0 {
                    per_token.remove(token);
                }
            }
        }
    }
}

/// One open subscription: its queue, and what it follows.
#[derive(Debug)]
pub(crate) struct Subscription {
    items: mpsc::Receiver<Item>,
    topic: String,
    partition: u32,
    offset: u64,
}

impl AppState {
    /// The caller, found by the gRPC interceptor from the token this request carries.
    fn caller(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        sources: TokenSources,
    ) -> Result<Caller, HttpError> {
        let mut request = tonic::Request::new(());
        let authorization = match (headers.get(header::AUTHORIZATION), query_token) {
            (Some(value), _) => Some(value.clone()),
            (None, Some(token)) => format!("Bearer {token}").parse().ok(),
            (None, None) => {
                // A WebSocket's Origin was checked before any handler ran (see `origin`).
                let cookie = match sources {
                    TokenSources::Get | TokenSources::WebSocket => cookie(headers, TOKEN_COOKIE),
                    TokenSources::Post => None,
                };
                cookie.and_then(|token| format!("Bearer {token}").parse().ok())
            }
        };
        // What the interceptor refuses, told apart the way it tells them apart.
        let refused = match &authorization {
            None => AuthError::NoToken,
            Some(value) if !value.to_str().is_ok_and(|v| v.starts_with("Bearer ")) => {
                AuthError::Malformed
            }
            Some(_) => AuthError::UnknownToken,
        };
        if let Some(value) = authorization {
            let value = tonic::metadata::MetadataValue::try_from(value.as_bytes())
                .map_err(|_| HttpError::from(AuthError::Malformed))?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut auth = self.auth.clone();
        match auth.call(request) {
            Ok(request) => Ok(request
                .extensions()
                .get::<Caller>()
                .cloned()
                .expect("the interceptor leaves a caller in every request it lets through")),
            // The interceptor refuses only a missing, malformed or unknown token.
            Err(_) => Err(refused.into()),
        }
    }

    /// A slot for one more of `caller`'s streams: 503 when all are taken, 429 when the
    /// caller's token holds its share.
    fn slot(&self, caller: &Caller) -> Result<StreamSlot, HttpError> {
        StreamSlots::take(&self.streams, caller.token())
    }

    /// Waits until `bytes` more may be in flight toward the writers.
    async fn produce_budget(&self, bytes: usize) -> Result<OwnedSemaphorePermit, HttpError> {
        let bytes = bytes.min(HTTP_REQUEST_BYTES_MAX) as u32;
        self.produce_bytes
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| ServiceError::ShuttingDown.into())
    }

    /// Opens a subscription: checks the grant, resolves the start, starts its feed.
    async fn subscribe(
        &self,
        caller: Caller,
        topic: &str,
        partition: u32,
        start: Start,
    ) -> Result<Subscription, HttpError> {
        caller.allow(Action::Consume, Resource::Topic(topic))?;
        let partition = self.topics.partition_for_request(topic, partition).await?;
        let offset = start.resolve(&partition).await?;
        let (queue, items) = mpsc::channel(HTTP_SUBSCRIBE_QUEUE_DEPTH);
        let subscription = Subscription {
            items,
            topic: partition.topic().to_string(),
            partition: partition.id(),
            offset: offset.0,
        };
        tokio::spawn(feed(self.topics.clone(), caller, partition, offset, queue, self.keep_alive));
        Ok(subscription)
    }
}

/// What the page may load and connect to: this listener only. Its script and style are
/// inline, in the one file.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

async fn page() -> impl IntoResponse {
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, PAGE_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(PAGE),
    )
}

/// Refuses, before any handler runs, what another site's page may have sent (see [`origin`]).
async fn guard(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    // Labels from a small, fixed set: the route's pattern, never the path a client sent.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |path| path.as_str())
        .to_owned();
    let method = match request.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        _ => "other",
    };
    let response =
        match state.origins.check(request.method(), request.uri().path(), request.headers()) {
            Ok(()) => next.run(request).await,
            Err(refused) => HttpError::from(refused).into_response(),
        };
    crate::metrics::http_request(&route, method, response.status().as_u16());
    response
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

#[derive(Debug, Serialize)]
struct TopicJson {
    name: String,
    partitions: u32,
}

#[derive(Debug, Serialize)]
struct TopicsJson {
    topics: Vec<TopicJson>,
}

/// The topics the caller holds some grant on; others are not mentioned.
async fn topics(
    State(state): State<AppState>,
    QueryOf(query): QueryOf<TokenQuery>,
    headers: HeaderMap,
) -> Result<Json<TopicsJson>, HttpError> {
    let caller = state.caller(&headers, query.token.as_deref(), TokenSources::Get)?;
    caller.check_token()?;
    let topics = state
        .topics
        .topics()
        .into_iter()
        .filter(|topic| caller.may_see_topic(topic.name.as_str()))
        .map(|topic| TopicJson {
            name: topic.name.to_string(),
            partitions: topic.config().partitions(),
        })
        .collect();
    Ok(Json(TopicsJson { topics }))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    token: Option<String>,
    offset: Option<u64>,
    limit: Option<u32>,
}

/// Records from `offset`, a page at a time: what the page's "older" button loads.
async fn history(
    State(state): State<AppState>,
    PathOf((topic, partition)): PathOf<(String, u32)>,
    QueryOf(query): QueryOf<HistoryQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let caller = state.caller(&headers, query.token.as_deref(), TokenSources::Get)?;
    caller.allow(Action::Consume, Resource::Topic(&topic))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=HTTP_HISTORY_RECORDS_MAX).contains(&limit) {
        return Err(BadRequest::HistoryLimit { limit, limit_max: HTTP_HISTORY_RECORDS_MAX }.into());
    }
    let partition = state.topics.partition_for_request(&topic, partition).await?;
    partition.refresh().await?;
    let offset = Offset(query.offset.unwrap_or(partition.state()?.log_start_offset.0));
    let read = partition
        .read(offset, crate::limits::HTTP_SUBSCRIBE_READ_BYTES)
        .await
        .map_err(HttpError::from)?;
    let (log_start_offset, log_end_offset) = (read.log_start_offset.0, read.log_end_offset.0);
    let mut records = answer(&partition, read, offset, Wire::Records)?.records;
    records.truncate(limit as usize);
    let events: Vec<EventJson<'_>> = records.iter().map(EventJson::of).collect();
    let body = serde_json::json!({
        "topic": partition.topic().as_str(),
        "partition": partition.id(),
        "log_start_offset": log_start_offset,
        "log_end_offset": log_end_offset,
        "records": events,
    });
    Ok(Json(body).into_response())
}

#[derive(Debug, Deserialize)]
struct ProduceQuery {
    token: Option<String>,
    partition: Option<u32>,
    key: Option<String>,
}

/// The prefix of request headers that become record headers on a raw POST.
const HEADER_PREFIX: &str = "spool-header-";

/// A record from a raw POST body: the body is the value, `?key=` and `?partition=` set those,
/// and each `Spool-Header-NAME: VALUE` request header becomes a record header NAME.
fn raw_record(query: &ProduceQuery, headers: &HeaderMap, body: Bytes) -> RecordIn {
    let record_headers = headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix(HEADER_PREFIX)?;
            Some((name.to_owned(), Some(Bytes::copy_from_slice(value.as_bytes()))))
        })
        .collect();
    RecordIn {
        partition: query.partition,
        timestamp_ms: None,
        key: query.key.clone().map(Bytes::from),
        value: Some(body),
        headers: record_headers,
    }
}

/// `POST /v1/topics/{topic}/records`: a JSON record (`Content-Type: application/json`) or a
/// raw body; answers `{"topic", "partition", "offset"}` once the record is acknowledged.
///
/// The caller and its grant are checked before the body is read, and the body is read only
/// once the produce budget has room for it (its `Content-Length`, else the largest body).
async fn produce_post(
    State(state): State<AppState>,
    PathOf(topic): PathOf<String>,
    QueryOf(query): QueryOf<ProduceQuery>,
    request: Request,
) -> Result<Response, HttpError> {
    let headers = request.headers().clone();
    let caller = state.caller(&headers, query.token.as_deref(), TokenSources::Post)?;
    // Permission before the body's faults: a caller without a grant learns nothing more.
    caller.allow(Action::Produce, Resource::Topic(&topic))?;
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let _budget = state.produce_budget(length.unwrap_or(HTTP_REQUEST_BYTES_MAX)).await?;
    let body = Bytes::from_request(request, &state).await;
    let body = body.map_err(|rejection: BytesRejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => BadRequest::BodyTooLarge {
            bytes: HTTP_REQUEST_BYTES_MAX + 1,
            bytes_max: HTTP_REQUEST_BYTES_MAX,
        },
        _ => BadRequest::Body { reason: rejection.body_text() },
    })?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let record = if json {
        let record: RecordJson = serde_json::from_slice(&body)
            .map_err(|e| BadRequest::Record { reason: e.to_string() })?;
        let mut record = record.decode()?;
        record.partition = record.partition.or(query.partition);
        record
    } else {
        raw_record(&query, &headers, body)
    };
    let produced = produce(&state.topics, &caller, &topic, record).await?;
    Ok((StatusCode::OK, Json(produced)).into_response())
}

async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError::NoEndpoint { path: uri.path().to_owned() }
}

/// A path that exists, asked with a method it does not take; axum adds the `Allow` header.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> HttpError {
    HttpError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
}

fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/v1/topics", get(topics))
        .route("/v1/topics/{topic}/records", post(produce_post))
        .route("/v1/topics/{topic}/partitions/{partition}/records", get(history))
        .route("/v1/topics/{topic}/partitions/{partition}/events", get(sse::events))
        .route("/v1/ws", get(ws::socket))
        .fallback(not_found)
        // After the routes: it is given to the routes added so far.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .layer(DefaultBodyLimit::max(HTTP_REQUEST_BYTES_MAX))
        .with_state(state)
}

/// Serves the browser listener until `stop` is cancelled. Subscriptions end earlier, when
/// the topic table's `streams_stop` is.
pub(crate) async fn serve(
    listener: TcpListener,
    topics: Arc<TopicTable>,
    auth: AuthLayer,
    allowed_origins: &[String],
    timeouts: ConnectionTimeouts,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let origins = origin::OriginPolicy::new(listener.local_addr()?, allowed_origins);
    let state = AppState {
        topics,
        auth,
        streams: Arc::new(StreamSlots::new()),
        produce_bytes: Arc::new(Semaphore::new(HTTP_PRODUCE_BYTES_IN_FLIGHT_MAX)),
        origins: Arc::new(origins),
        keep_alive: HTTP_KEEP_ALIVE.min(timeouts.keep_alive()),
    };
    crate::connection::serve_http1(listener, router(state), HTTP_CONNECTIONS_MAX, timeouts, stop)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_holds_at_most_its_share_of_the_streams() {
        let slots = Arc::new(StreamSlots::new());
        let (alice, bob) = ([1u8; 32], [2u8; 32]);
        let mut held: Vec<_> = (0..HTTP_STREAMS_PER_TOKEN_MAX)
            .map(|_| StreamSlots::take(&slots, Some(alice)).unwrap())
            .collect();
        let refused = StreamSlots::take(&slots, Some(alice)).unwrap_err();
        assert!(
            matches!(refused, HttpError::Request(BadRequest::TooManyStreamsForToken { .. })),
            "{refused:?}"
        );
        // Another token, and callers without tokens, still get places.
        let _bob = StreamSlots::take(&slots, Some(bob)).unwrap();
        let _open = StreamSlots::take(&slots, None).unwrap();
        // A closed stream gives its place back to its token.
        held.pop();
        held.push(StreamSlots::take(&slots, Some(alice)).unwrap());
        drop(held);
        assert!(slots.per_token.lock().unwrap().get(&alice).is_none(), "no entry is left behind");
    }
}
