//! `GET /v1/topics/{topic}/partitions/{partition}/events`: a partition as Server-Sent Events.
//!
//! Each record is one event whose `id` is its offset and whose `data` is the record as JSON
//! (see [`super::records`]). A browser's `EventSource` reconnects on its own and sends the
//! last id it saw as `Last-Event-ID`; the stream then resumes at the next offset, so nothing
//! is lost or repeated. `Last-Event-ID` wins over `from`. The stream starts with
//! `retry: 1000` (reconnect after a second), sends a comment line when idle for
//! [`HTTP_KEEP_ALIVE`](crate::limits::HTTP_KEEP_ALIVE), and when it must end (shutdown, a revoked
//! grant, a deleted topic) sends one `spool-error` event with the error JSON and closes.
//!
//! The body is written by hand (one `id:`/`data:` pair per record, one body chunk per log
//! chunk): serde_json writes no raw newlines, so every `data:` is one line.

use std::convert::Infallible;
use std::fmt::Write as _;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::error::{BadRequest, HttpError};
use super::follow::Item;
use super::records::{EventJson, Start};
use super::{AppState, PathOf, QueryOf, TokenSources};

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    from: Option<String>,
    token: Option<String>,
}

/// Renders one queue item as SSE text.
fn render(item: Item) -> Bytes {
    let mut out = String::new();
    match item {
        Item::Records(records, buffered) => {
            for record in &records.records {
                let json = serde_json::to_string(&EventJson::of(record))
                    .expect("a record always serializes");
                let _ = write!(out, "id: {}\ndata: {json}\n\n", record.offset);
            }
            drop(buffered);
        }
        Item::KeepAlive => out.push_str(": keep-alive\n\n"),
        Item::End(error) => {
            let json = serde_json::to_string(&error.body()).expect("an error always serializes");
            let _ = write!(out, "event: spool-error\ndata: {json}\n\n");
        }
    }
    Bytes::from(out)
}

pub(crate) async fn events(
    State(state): State<AppState>,
    PathOf((topic, partition)): PathOf<(String, u32)>,
    QueryOf(query): QueryOf<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let caller = state.caller(&headers, query.token.as_deref(), TokenSources::Get)?;
    let start = match headers.get("last-event-id").map(|id| id.to_str()) {
        Some(Ok(id)) => Start::after_event(id)?,
        Some(Err(_)) => {
            return Err(BadRequest::LastEventId { id: "(not text)".to_owned() }.into());
        }
        None => Start::parse(query.from.as_deref())?,
    };
    let slot = state.slot(&caller)?;
    let subscription = state.subscribe(caller, &topic, partition, start).await?;
    let opening = tokio_stream::once(Bytes::from_static(b"retry: 1000\n\n"));
    let stream =
        opening.chain(ReceiverStream::new(subscription.items).map(render)).map(move |bytes| {
            // The stream holds its slot until the browser goes away.
            let _slot = &slot;
            Ok::<_, Infallible>(bytes)
        });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx must not hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}
