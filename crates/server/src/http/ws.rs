//! `GET /v1/ws`: one WebSocket that subscribes to a partition and produces records.
//!
//! Messages are JSON text, one object each, told apart by `type`.
//!
//! From the client:
//!
//! - `{"type": "subscribe", "topic": "t", "partition": 0, "from": "earliest"}`: follow a
//!   partition (`from` as for SSE; default `latest`). A socket follows one partition at a
//!   time; a new `subscribe` replaces the old one. The same can be asked at connect time with
//!   the query parameters `topic`, `partition` and `from`.
//! - `{"type": "unsubscribe"}`
//! - `{"type": "produce", "id": ANY, "topic": "t", "record": RECORD}`: produce one record
//!   (RECORD as for `POST .../records`); `id` is echoed in the answer.
//!
//! From the server:
//!
//! - `{"type": "subscribed", "topic": "t", "partition": 0, "offset": 12}`: the first offset
//!   the subscription will deliver.
//! - `{"type": "event", "topic": "t", "partition": 0, "offset": 12, "timestamp_ms": ...,
//!   "encoding": "utf8", "key": ..., "value": ..., "headers": [...]}`
//! - `{"type": "produced", "id": ANY, "topic": "t", "partition": 0, "offset": 13}`
//! - `{"type": "error", "id": ANY, "status": 404, "error": "..."}`: `id` is set when it
//!   answers a produce; an error that ends a subscription has none. The socket stays open.
//!
//! Produce requests are answered in order, one at a time: while one waits for its
//! acknowledgement, the socket reads no further message, so a client cannot queue work on
//! the server without bound. Records toward the client come through the subscription's
//! bounded queue (see [`super::follow`]); a client that stops reading stops the log reads.

use crate::limits::HTTP_REQUEST_BYTES_MAX;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::{Deserialize, Serialize};

use super::error::{BadRequest, ErrorBody, HttpError};
use super::follow::Item;
use super::records::{EventJson, RecordJson, Start, produce};
use super::{AppState, QueryOf, Subscription, TokenSources};
use crate::auth::Caller;

#[derive(Debug, Deserialize)]
pub(crate) struct SocketQuery {
    token: Option<String>,
    topic: Option<String>,
    partition: Option<u32>,
    from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Subscribe {
        topic: String,
        #[serde(default)]
        partition: u32,
        #[serde(default)]
        from: Option<String>,
    },
    Unsubscribe,
    Produce {
        #[serde(default)]
        id: serde_json::Value,
        topic: String,
        record: RecordJson,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    Subscribed {
        topic: &'a str,
        partition: u32,
        offset: u64,
    },
    Event {
        topic: &'a str,
        partition: u32,
        #[serde(flatten)]
        record: EventJson<'a>,
    },
    Produced {
        id: serde_json::Value,
        topic: String,
        partition: u32,
        offset: u64,
    },
    Error {
        #[serde(skip_serializing_if = "serde_json::Value::is_null")]
        id: serde_json::Value,
        #[serde(flatten)]
        error: ErrorBody,
    },
}

fn text(message: &ServerMessage<'_>) -> Message {
    let json = serde_json::to_string(message).expect("a server message always serializes");
    Message::Text(Utf8Bytes::from(json))
}

pub(crate) async fn socket(
    State(state): State<AppState>,
    QueryOf(query): QueryOf<SocketQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    let upgrade =
        upgrade.map_err(|rejection| BadRequest::Rejected { reason: rejection.body_text() })?;
    let caller = state.caller(&headers, query.token.as_deref(), TokenSources::WebSocket)?;
    let slot = state.slot(&caller)?;
    // A subscription asked for in the query is opened before the upgrade, so its errors are
    // plain HTTP statuses.
    let first = match query.topic {
        Some(topic) => {
            let start = Start::parse(query.from.as_deref())?;
            let partition = query.partition.unwrap_or(0);
            Some(state.subscribe(caller.clone(), &topic, partition, start).await?)
        }
        None => None,
    };
    Ok(upgrade
        .max_message_size(HTTP_REQUEST_BYTES_MAX)
        .max_frame_size(HTTP_REQUEST_BYTES_MAX)
        .on_upgrade(move |socket| async move {
            // The socket holds its slot while it is open, whatever it follows.
            let _slot = slot;
            session(state, caller, socket, first).await
        }))
}

/// The next item of the subscription, or never when there is none.
async fn next(subscription: &mut Option<Subscription>) -> Option<Item> {
    match subscription {
        Some(subscription) => subscription.items.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves one socket until the client closes it, an error breaks it, or shutdown begins.
async fn session(
    state: AppState,
    caller: Caller,
    mut socket: WebSocket,
    mut subscription: Option<Subscription>,
) {
    let stop = state.topics.streams_stop.clone();
    if let Some(first) = &subscription
        && socket.send(text(&first.subscribed())).await.is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            message = socket.recv() => {
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(_)) | None => return,
                };
                let reply = match message {
                    Message::Text(json) => {
                        handle(&state, &caller, &mut subscription, json.as_str()).await
                    }
                    Message::Binary(_) => Some(error_message(
                        serde_json::Value::Null,
                        BadRequest::Message { reason: "binary messages are not used; send JSON text".into() }.into(),
                    )),
                    Message::Close(_) => return,
                    Message::Ping(_) | Message::Pong(_) => None,
                };
                if let Some(reply) = reply && socket.send(reply).await.is_err() {
                    return;
                }
            }
            item = next(&mut subscription) => {
                let Some(item) = item else {
                    subscription = None;
                    continue;
                };
                let Some(current) = &subscription else { continue };
                if send_item(&mut socket, current, item).await.is_err() {
                    return;
                }
            }
            () = stop.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}

/// Sends one queue item; an `End` item ends the subscription, not the socket.
async fn send_item(
    socket: &mut WebSocket,
    subscription: &Subscription,
    item: Item,
) -> Result<(), axum::Error> {
    match item {
        Item::Records(records, buffered) => {
            for record in &records.records {
                let event = ServerMessage::Event {
                    topic: &subscription.topic,
                    partition: subscription.partition,
                    record: EventJson::of(record),
                };
                socket.send(text(&event)).await?;
            }
            drop(buffered);
            Ok(())
        }
        Item::KeepAlive => socket.send(Message::Ping(Default::default())).await,
        Item::End(error) => socket.send(error_message(serde_json::Value::Null, error)).await,
    }
}

fn error_message(id: serde_json::Value, error: HttpError) -> Message {
    text(&ServerMessage::Error { id, error: error.body() })
}

/// Handles one client message; returns the answer to send, if any.
async fn handle(
    state: &AppState,
    caller: &Caller,
    subscription: &mut Option<Subscription>,
    json: &str,
) -> Option<Message> {
    let message: ClientMessage = match serde_json::from_str(json) {
        Ok(message) => message,
        Err(error) => {
            let error = BadRequest::Message { reason: error.to_string() };
            return Some(error_message(serde_json::Value::Null, error.into()));
        }
    };
    match message {
        ClientMessage::Subscribe { topic, partition, from } => {
            // The old subscription ends first (its feed stops when its queue is dropped).
            *subscription = None;
            let opened = match Start::parse(from.as_deref()) {
                Ok(start) => state.subscribe(caller.clone(), &topic, partition, start).await,
                Err(error) => Err(error.into()),
            };
            match opened {
                Ok(opened) => {
                    let reply = text(&opened.subscribed());
                    *subscription = Some(opened);
                    Some(reply)
                }
                Err(error) => Some(error_message(serde_json::Value::Null, error)),
            }
        }
        ClientMessage::Unsubscribe => {
            *subscription = None;
            None
        }
        ClientMessage::Produce { id, topic, record } => {
            let produced = match (record.decode(), state.produce_budget(json.len()).await) {
                (Ok(record), Ok(_budget)) => produce(&state.topics, caller, &topic, record).await,
                (Err(error), _) => Err(error.into()),
                (_, Err(error)) => Err(error),
            };
            Some(match produced {
                Ok(produced) => text(&ServerMessage::Produced {
                    id,
                    topic: produced.topic,
                    partition: produced.partition,
                    offset: produced.offset,
                }),
                Err(error) => error_message(id, error),
            })
        }
    }
}

impl Subscription {
    fn subscribed(&self) -> ServerMessage<'_> {
        ServerMessage::Subscribed {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
        }
    }
}
