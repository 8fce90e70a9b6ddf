//! Random requests to the browser listener: paths with odd topic and partition segments
//! (escaped separators, dots, non-UTF-8, overlong, out of range), odd query values, JSON
//! bodies with unknown, missing and mistyped fields, and raw bodies under odd content types.
//! Every answer must be below 500 and, when refused, a JSON error naming the problem; the
//! listener must still serve afterwards, and topic `in` must hold exactly the records whose
//! POST was answered 200. proptest shrinks a failure to a short list and prints it.

mod common;

use common::http::{Browserside, PATIENCE};
use futures_util::SinkExt;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use spool_proto::v1::fsync_policy::{Never, Policy};
use tokio_tungstenite::tungstenite::Message;

const TOPICS: &[&str] =
    &["in", "nope", "..", "%2e%2e", "a%2Fb", "%ff", "in%00", "with%20space", "", "x"];
const PARTITIONS: &[&str] = &["0", "1", "2", "-1", "4294967296", "abc", "%ff", "1.5"];
const QUERY_KEYS: &[&str] =
    &["partition", "key", "from", "offset", "limit", "token", "encoding", "other"];
const QUERY_VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "1000",
    "1001",
    "99999999999999999999",
    "abc",
    "",
    "%ff",
    "earliest",
    "latest",
    "now",
    "base64",
];
const CONTENT_TYPES: &[&str] =
    &["application/json", "application/octet-stream", "text/plain", "multipart/form-data"];

#[derive(Debug, Clone)]
enum HttpOp {
    Post {
        topic: usize,
        query: Vec<(usize, usize)>,
        content_type: Option<usize>,
        body: Body,
    },
    History {
        topic: usize,
        partition: usize,
        query: Vec<(usize, usize)>,
    },
    Events {
        topic: usize,
        partition: usize,
        query: Vec<(usize, usize)>,
        last_event_id: Option<String>,
    },
    /// A WebSocket that sends these frames, then a produce with id "end" to topic `in`,
    /// and reads until that is answered (produces are answered in order).
    Socket {
        frames: Vec<Frame>,
    },
}

#[derive(Debug, Clone)]
enum Frame {
    Json(Value),
    Text(String),
    Binary(Vec<u8>),
}

fn frame() -> impl Strategy<Value = Frame> {
    let types = ["subscribe", "unsubscribe", "produce", "other"];
    let fields = ["id", "topic", "partition", "from", "record", "extra"];
    let message = (
        prop::option::of(0..types.len()),
        prop::collection::vec((0..fields.len(), json_value()), 0..4),
        prop::option::of((0..TOPICS.len(), body())),
    )
        .prop_map(move |(kind, pairs, record)| {
            let mut object: serde_json::Map<String, Value> =
                pairs.into_iter().map(|(f, v)| (fields[f].to_owned(), v)).collect();
            if let Some(kind) = kind {
                object.insert("type".into(), json!(types[kind]));
            }
            if let Some((topic, Body::Json(record))) = record {
                object.insert("topic".into(), json!(TOPICS[topic]));
                object.insert("record".into(), record);
            }
            Frame::Json(Value::Object(object))
        });
    prop_oneof![
        6 => message,
        1 => ".{0,12}".prop_map(Frame::Text),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Frame::Binary),
    ]
}

#[derive(Debug, Clone)]
enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(json!(1e300)),
        Just(json!(-1)),
        Just(json!(0)),
        ".{0,8}".prop_map(Value::from),
        Just(json!("AAEC")),
        Just(json!("base64")),
        Just(json!([["k", "v"]])),
        Just(json!({"k": "v"})),
        Just(json!([])),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    let fields = ["value", "key", "partition", "encoding", "timestamp_ms", "headers", "valeu"];
    prop_oneof![
        3 => prop::collection::vec((0..fields.len(), json_value()), 0..4).prop_map(move |pairs| {
            let object: serde_json::Map<String, Value> =
                pairs.into_iter().map(|(f, v)| (fields[f].to_owned(), v)).collect();
            Body::Json(Value::Object(object))
        }),
        1 => json_value().prop_map(Body::Json),
        2 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Body::Bytes),
    ]
}

fn query() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0..QUERY_KEYS.len(), 0..QUERY_VALUES.len()), 0..3)
}

/// Mostly topic `in` (so records accumulate), sometimes any.
fn topic() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0usize), 1 => 0..TOPICS.len()]
}

fn op() -> impl Strategy<Value = HttpOp> {
    prop_oneof![
        4 => (topic(), query(), prop::option::of(0..CONTENT_TYPES.len()), body())
            .prop_map(|(topic, query, content_type, body)| HttpOp::Post { topic, query, content_type, body }),
        2 => (topic(), 0..PARTITIONS.len(), query())
            .prop_map(|(topic, partition, query)| HttpOp::History { topic, partition, query }),
        2 => (topic(), 0..PARTITIONS.len(), query(), prop::option::of("[0-9a-z-]{0,24}"))
            .prop_map(|(topic, partition, query, last_event_id)| HttpOp::Events { topic, partition, query, last_event_id }),
        1 => prop::collection::vec(frame(), 1..6).prop_map(|frames| HttpOp::Socket { frames }),
    ]
}

fn query_string(query: &[(usize, usize)]) -> String {
    let pairs: Vec<String> =
        query.iter().map(|(k, v)| format!("{}={}", QUERY_KEYS[*k], QUERY_VALUES[*v])).collect();
    if pairs.is_empty() { String::new() } else { format!("?{}", pairs.join("&")) }
}

/// Runs a [`HttpOp::Socket`]; how many records it stored in topic `in`.
async fn socket(http: &Browserside, frames: &[Frame]) -> Result<usize, TestCaseError> {
    let mut socket = http.socket("").await;
    for frame in frames {
        let message = match frame {
            Frame::Json(value) => Message::Text(value.to_string().into()),
            Frame::Text(text) => Message::Text(text.clone().into()),
            Frame::Binary(bytes) => Message::Binary(bytes.clone().into()),
        };
        socket.0.send(message).await.unwrap();
    }
    let end = json!({"type": "produce", "id": "end", "topic": "in", "record": {"value": "end"}});
    socket.send(end).await;
    let mut stored = 0;
    loop {
        let message = socket.next().await;
        match message["type"].as_str() {
            Some("produced") => {
                if message["topic"] == "in" {
                    stored += 1;
                }
                if message["id"] == "end" {
                    return Ok(stored);
                }
            }
            Some("error") => {
                let status = message["status"].as_u64().unwrap_or_default();
                prop_assert!((400..500).contains(&status), "{frames:?}: {message}");
                let error = message["error"].as_str().unwrap_or_default();
                prop_assert!(!error.trim().is_empty(), "{frames:?}: {message}");
                prop_assert!(message["id"] != "end", "{frames:?}: {message}");
            }
            Some("event" | "subscribed") => {}
            _ => prop_assert!(false, "{frames:?}: unexpected {message}"),
        }
    }
}

/// Sends `op`; how many records it stored in topic `in`.
async fn send(http: &Browserside, op: &HttpOp) -> Result<usize, TestCaseError> {
    let (request, produces_into_in) = match op {
        HttpOp::Socket { frames } => return socket(http, frames).await,
        HttpOp::Post { topic, query, content_type, body } => {
            let path = format!("/v1/topics/{}/records{}", TOPICS[*topic], query_string(query));
            let mut request = http.client.post(http.url(&path));
            if let Some(content_type) = content_type {
                request = request.header("content-type", CONTENT_TYPES[*content_type]);
            }
            request = match body {
                Body::Json(value) => request.body(value.to_string()),
                Body::Bytes(bytes) => request.body(bytes.clone()),
            };
            (request, *topic == 0)
        }
        HttpOp::History { topic, partition, query } => {
            let path = format!(
                "/v1/topics/{}/partitions/{}/records{}",
                TOPICS[*topic],
                PARTITIONS[*partition],
                query_string(query)
            );
            (http.client.get(http.url(&path)), false)
        }
        HttpOp::Events { topic, partition, query, last_event_id } => {
            let path = format!(
                "/v1/topics/{}/partitions/{}/events{}",
                TOPICS[*topic],
                PARTITIONS[*partition],
                query_string(query)
            );
            let mut request = http.client.get(http.url(&path));
            if let Some(id) = last_event_id {
                request = request.header("last-event-id", id.as_str());
            }
            (request, false)
        }
    };
    let response = tokio::time::timeout(PATIENCE, request.send())
        .await
        .expect("the listener answers")
        .map_err(|error| TestCaseError::fail(format!("{op:?}: {error}")))?;
    let status = response.status();
    prop_assert!(status.as_u16() < 500, "{op:?} answered {status}");
    if status == StatusCode::OK {
        // An event stream stays open: its headers are the answer.
        return Ok(usize::from(produces_into_in && matches!(op, HttpOp::Post { .. })));
    }
    let answer: Value = tokio::time::timeout(PATIENCE, response.json())
        .await
        .expect("the listener answers")
        .map_err(|error| TestCaseError::fail(format!("{op:?} {status}: not JSON: {error}")))?;
    let error = answer["error"].as_str().unwrap_or_default();
    prop_assert!(!error.trim().is_empty(), "{op:?} {status}: {answer}");
    Ok(0)
}

async fn scenario(ops: Vec<HttpOp>) -> Result<(), TestCaseError> {
    let dir = common::LoneDataDir::new();
    let http = Browserside::open(&dir.data).await;
    http.server.create_topic("in", 2, Policy::Never(Never {})).await;
    let mut stored = 0;
    for op in &ops {
        stored += send(&http, op).await?;
    }
    let (status, _) = http.get("/v1/topics").await;
    prop_assert_eq!(status, StatusCode::OK);
    let found = http.server.fetch_all("in", 0, 0).await.len()
        + http.server.fetch_all("in", 1, 0).await.len();
    prop_assert_eq!(found, stored, "topic `in` holds the records answered 200");
    http.server.shutdown().await;
    prop_assert_eq!(dir.beside(), Vec::<std::ffi::OsString>::new());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn random_http_requests_get_json_errors_below_500_and_lose_nothing(
        ops in prop::collection::vec(op(), 1..30)
    ) {
        common::block_on(scenario(ops))?;
    }
}
