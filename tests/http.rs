//! The browser listener (`--http`) end to end: an in-process server with its HTTP listener on
//! port 0, driven by reqwest (SSE and POST) and tokio-tungstenite (WebSocket), checked against
//! the gRPC API; and the built-in page in headless Chromium (`tests/browser/e2e.mjs`).
//!
//! The browser test needs Debian's `chromium` (`/usr/bin/chromium`, or `SPOOL_CHROMIUM`), and
//! `playwright-core` from npm under `target/ci/node_modules` (or `SPOOL_BROWSER_NODE_MODULES`);
//! `.ci/run` installs both. Without them it prints why it skips; with
//! `SPOOL_REQUIRE_BROWSER=1` (CI sets it) a missing tool fails it instead.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, header, keyed, record, value};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use spool_proto::limits::BATCH_BYTES_MAX;
use spool_proto::v1::fsync_policy::Policy;
use spool_proto::v1::fsync_policy::{Always, Never};
use spool_proto::v1::start_position::Position;
use spool_server::ServeOptions;
use spool_server::auth::{Authenticator, token_digest_hex};
use spool_server::limits::{HTTP_REQUEST_BYTES_MAX, HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A guard against a test that would otherwise hang; never a wait for something to happen.
const PATIENCE: Duration = Duration::from_secs(30);

/// A server with the browser listener; `base` is `http://127.0.0.1:PORT`.
struct Browserside {
    server: TestServer,
    base: String,
    client: reqwest::Client,
}

impl Browserside {
    async fn start(data: &Path, mut options: ServeOptions) -> Browserside {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        options.http = Some(listener);
        let server = TestServer::start_with(data, options).await;
        Browserside { server, base, client: reqwest::Client::new() }
    }

    async fn open(data: &Path) -> Browserside {
        Browserside::start(data, ServeOptions::default()).await
    }

    /// Shuts the server down and starts it again on the same data and HTTP address.
    async fn restart(self) -> Browserside {
        let Browserside { server, base, client } = self;
        let data = server.data_dir().to_path_buf();
        server.shutdown().await;
        let listener = TcpListener::bind(base.trim_start_matches("http://")).await.unwrap();
        let options = ServeOptions { http: Some(listener), ..Default::default() };
        let server = TestServer::start_with(&data, options).await;
        Browserside { server, base, client }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn sse(&self, path: &str, last_event_id: Option<u64>) -> Sse {
        let mut request = self.client.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}: {:?}", response.text().await);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse { response, buffer: Vec::new() }
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self.client.post(self.url(path)).json(&body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn socket(&self, query: &str) -> Socket {
        let url = format!("{}/v1/ws{query}", self.base.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Socket(socket)
    }
}

/// One Server-Sent Event.
#[derive(Debug)]
struct Event {
    id: Option<u64>,
    kind: Option<String>,
    data: Value,
}

/// An SSE response, parsed as it arrives.
struct Sse {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Sse {
    /// The next event (comments and `retry:` lines skipped).
    async fn next(&mut self) -> Event {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buffer.drain(..end + 2).collect()).unwrap();
                let mut event = Event { id: None, kind: None, data: Value::Null };
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id: ") {
                        event.id = Some(id.parse().unwrap());
                    } else if let Some(kind) = line.strip_prefix("event: ") {
                        event.kind = Some(kind.to_owned());
                    } else if let Some(data) = line.strip_prefix("data: ") {
                        event.data = serde_json::from_str(data).unwrap();
                    }
                }
                if event.data != Value::Null {
                    return event;
                }
                continue;
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("no event in time")
                .unwrap()
                .expect("the stream ended");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next `n` events, which must be records.
    async fn records(&mut self, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let event = self.next().await;
            assert_eq!(event.kind, None, "{event:?}");
            events.push(event);
        }
        events
    }
}

struct Socket(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Socket {
    async fn send(&mut self, message: Value) {
        self.0.send(Message::Text(message.to_string().into())).await.unwrap();
    }

    /// The next JSON message (pings skipped).
    async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.0.next())
                .await
                .expect("no message in time")
                .expect("the socket closed")
                .unwrap();
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn offsets(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.id.unwrap()).collect()
}

#[tokio::test]
async fn sse_events_carry_their_offsets_and_last_event_id_resumes_without_loss_or_repeat() {
    let data = tempfile::tempdir().unwrap();
    let http = Browserside::open(data.path()).await;
    http.server.create_topic("orders", 2, Policy::Never(Never {})).await;
    let first: Vec<_> = (0..5).map(|i| keyed("k", &format!("v{i}"))).collect();
    http.server.produce("orders", Some(1), first).await.unwrap();
    let binary = spool_proto::v1::Record {
        value: Some(bytes::Bytes::from_static(&[0xff, 0x00])),
        headers: vec![header("trace", "t-1")],
        ..record("")
    };
    http.server.produce("orders", Some(1), vec![binary]).await.unwrap();

    let mut sse = http.sse("/v1/topics/orders/partitions/1/events?from=earliest", None).await;
    let events = sse.records(6).await;
    assert_eq!(offsets(&events), [0, 1, 2, 3, 4, 5]);
    assert_eq!(events[2].data["offset"], 2);
    assert_eq!(events[2].data["key"], "k");
    assert_eq!(events[2].data["value"], "v2");
    assert_eq!(events[2].data["encoding"], "utf8");
    assert!(events[2].data["timestamp_ms"].as_i64().unwrap() > 0);
    assert_eq!(events[5].data["encoding"], "base64");
    assert_eq!(events[5].data["value"], "/wA=");
    assert_eq!(events[5].data["headers"], json!([{"key": "trace", "value": "dC0x"}]));

    // Live: produced while the stream is open.
    let more: Vec<_> = (5..9).map(|i| record(&format!("v{i}"))).collect();
    http.server.produce("orders", Some(1), more).await.unwrap();
    let live = sse.records(2).await;
    assert_eq!(offsets(&live), [6, 7]);
    drop(sse);

    // The browser reconnects with the last id it saw; nothing lost, nothing repeated, even
    // when resuming inside a stored batch. `from` is ignored when Last-Event-ID is present.
    let mut resumed = http.sse("/v1/topics/orders/partitions/1/events?from=latest", Some(7)).await;
    http.server.produce("orders", Some(1), vec![record("v9")]).await.unwrap();
    let rest = resumed.records(3).await;
    assert_eq!(offsets(&rest), [8, 9, 10]);
    assert_eq!(rest[2].data["value"], "v9");

    // `latest` starts at the end; `time:MS` at the first record at or after it.
    let mut latest = http.sse("/v1/topics/orders/partitions/1/events", None).await;
    http.server.produce("orders", Some(1), vec![record("v10")]).await.unwrap();
    assert_eq!(offsets(&latest.records(1).await), [11]);
    let stamp = events[3].data["timestamp_ms"].as_i64().unwrap();
    let mut timed =
        http.sse(&format!("/v1/topics/orders/partitions/1/events?from=time:{stamp}"), None).await;
    assert!(timed.records(1).await[0].id.unwrap() <= 3);

    // Shutdown ends open streams with a last event that says why.
    let server = http.server;
    let stopping = tokio::spawn(server.shutdown());
    // (It still delivers offset 11, produced above, first.)
    assert_eq!(resumed.next().await.id, Some(11));
    let last = resumed.next().await;
    assert_eq!(last.kind.as_deref(), Some("spool-error"));
    assert_eq!(last.data["status"], 503);
    stopping.await.unwrap();
}

#[tokio::test]
async fn sse_refuses_bad_starts_with_statuses_a_person_can_act_on() {
    let data = tempfile::tempdir().unwrap();
    let http = Browserside::open(data.path()).await;
    http.server.create_topic("t", 1, Policy::Never(Never {})).await;
    http.server.produce("t", None, vec![record("a")]).await.unwrap();
    let check = |path: &'static str,
                 last_event_id: Option<&'static str>,
                 status: StatusCode,
                 has: &'static str| {
        let http = &http;
        async move {
            let mut request = http.client.get(http.url(path));
            if let Some(id) = last_event_id {
                request = request.header("last-event-id", id);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), status, "{path}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["status"], status.as_u16());
            let error = body["error"].as_str().unwrap();
            assert!(error.contains(has), "{path}: {error:?} lacks {has:?}");
        }
    };
    check("/v1/topics/t/partitions/0/events?from=soon", None, StatusCode::BAD_REQUEST, "`from`")
        .await;
    check("/v1/topics/t/partitions/0/events?from=7", None, StatusCode::RANGE_NOT_SATISFIABLE, "7")
        .await;
    check("/v1/topics/t/partitions/0/events", Some("x"), StatusCode::BAD_REQUEST, "Last-Event-ID")
        .await;
    check("/v1/topics/nope/partitions/0/events", None, StatusCode::NOT_FOUND, "does not exist")
        .await;
    check("/v1/topics/t/partitions/3/events", None, StatusCode::NOT_FOUND, "partition 3").await;
    check("/v1/topics/BAD!/partitions/0/events", None, StatusCode::BAD_REQUEST, "topic name").await;
    check("/v1/elsewhere", None, StatusCode::NOT_FOUND, "/v1/elsewhere").await;
    check("/v1/topics/t/partitions/x/events", None, StatusCode::BAD_REQUEST, "`x`").await;
    check("/v1/topics/t/partitions/0/records?offset=-1", None, StatusCode::BAD_REQUEST, "offset")
        .await;
    check("/v1/ws", None, StatusCode::BAD_REQUEST, "upgrade").await;
}

#[tokio::test]
async fn a_websocket_subscribes_produces_and_reports_errors_by_id() {
    let data = tempfile::tempdir().unwrap();
    let http = Browserside::open(data.path()).await;
    http.server.create_topic("chat", 1, Policy::Always(Always {})).await;
    http.server.produce("chat", None, vec![record("before")]).await.unwrap();

    // Subscribed by the query, from the start.
    let mut socket = http.socket("?topic=chat&partition=0&from=earliest").await;
    let subscribed = socket.next().await;
    assert_eq!(
        subscribed,
        json!({"type": "subscribed", "topic": "chat", "partition": 0, "offset": 0})
    );
    let event = socket.next().await;
    assert_eq!((event["type"].as_str(), event["offset"].as_u64()), (Some("event"), Some(0)));
    assert_eq!(event["value"], "before");

    let produce = json!({"type": "produce", "id": "p1", "topic": "chat",
        "record": {"key": "alice", "value": "hello", "headers": [{"key": "lang", "value": "en"}]}});
    socket.send(produce).await;
    // The answer and the event may come in either order.
    let mut seen = [socket.next().await, socket.next().await];
    seen.sort_by_key(|m| m["type"].as_str().unwrap().to_owned());
    assert_eq!(seen[0]["type"], "event");
    assert_eq!(seen[0]["offset"], 1);
    assert_eq!(seen[0]["key"], "alice");
    assert_eq!(seen[0]["headers"], json!([{"key": "lang", "value": "en"}]));
    assert_eq!(
        seen[1],
        json!({"type": "produced", "id": "p1", "topic": "chat", "partition": 0, "offset": 1})
    );
    let stored = http.server.fetch_all("chat", 0, 1).await;
    assert_eq!(value(&stored[0]), "hello");

    // Errors answer the produce they belong to; the socket stays open.
    socket
        .send(json!({"type": "produce", "id": 7, "topic": "nope", "record": {"value": "x"}}))
        .await;
    let error = socket.next().await;
    assert_eq!((error["type"].as_str(), error["id"].as_i64()), (Some("error"), Some(7)));
    assert_eq!(error["status"], 404);
    socket.send(json!({"type": "dance"})).await;
    let error = socket.next().await;
    assert_eq!(error["status"], 400);
    assert!(error["error"].as_str().unwrap().contains("dance"), "{error}");

    // A new subscription replaces the old one: from the live end now.
    socket
        .send(json!({"type": "subscribe", "topic": "chat", "partition": 0, "from": "latest"}))
        .await;
    assert_eq!(socket.next().await["offset"], 2);
    http.server.produce("chat", None, vec![record("after")]).await.unwrap();
    let event = socket.next().await;
    assert_eq!((event["offset"].as_u64(), event["value"].as_str()), (Some(2), Some("after")));

    // A subscription to an unknown partition is refused in the socket.
    socket.send(json!({"type": "subscribe", "topic": "chat", "partition": 9})).await;
    assert_eq!(socket.next().await["status"], 404);
}

#[tokio::test]
async fn post_produces_json_and_raw_records_and_refuses_bad_input() {
    let data = tempfile::tempdir().unwrap();
    let http = Browserside::open(data.path()).await;
    http.server.create_topic("in", 2, Policy::Always(Always {})).await;

    let (status, body) = http
        .post("/v1/topics/in/records", json!({"partition": 1, "key": "k", "value": "one"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"topic": "in", "partition": 1, "offset": 0}));
    let (status, body) = http
        .post(
            "/v1/topics/in/records",
            json!({"partition": 1, "encoding": "base64", "value": "AAEC", "timestamp_ms": 1000}),
        )
        .await;
    assert_eq!((status, &body["offset"]), (StatusCode::OK, &json!(1)), "{body}");

    // A raw body: the value as sent, the key and partition from the query, headers from
    // Spool-Header-* request headers.
    let response = http
        .client
        .post(http.url("/v1/topics/in/records?partition=1&key=raw"))
        .header("content-type", "application/octet-stream")
        .header("spool-header-origin", "curl")
        .body(vec![1u8, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let stored = http.server.fetch_all("in", 1, 0).await;
    assert_eq!(stored.len(), 3);
    assert_eq!(value(&stored[0]), "one");
    assert_eq!(stored[1].value.as_deref(), Some(&[0, 1, 2][..]));
    assert_eq!(stored[1].timestamp_ms, 1000);
    assert_eq!(stored[2].key.as_deref(), Some(&b"raw"[..]));
    assert_eq!(stored[2].value.as_deref(), Some(&[1, 2, 3][..]));
    assert_eq!(stored[2].headers, [header("origin", "curl")]);

    // Bad input, each with its status and a message naming the problem.
    let refused = [
        ("/v1/topics/nope/records", json!({"value": "x"}), StatusCode::NOT_FOUND, "does not exist"),
        ("/v1/topics/in/records", json!({"partition": 5}), StatusCode::NOT_FOUND, "partition 5"),
        ("/v1/topics/in/records", json!({"valeu": "x"}), StatusCode::BAD_REQUEST, "valeu"),
        ("/v1/topics/in/records", json!({"encoding": "hex"}), StatusCode::BAD_REQUEST, "hex"),
        (
            "/v1/topics/in/records",
            json!({"encoding": "base64", "value": "***"}),
            StatusCode::BAD_REQUEST,
            "base64",
        ),
        (
            "/v1/topics/in/records",
            json!({"timestamp_ms": -1}),
            StatusCode::BAD_REQUEST,
            "timestamp",
        ),
    ];
    for (path, body, status, has) in refused {
        let (got, answer) = http.post(path, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(has), "{body}: {answer}");
    }

    // A record over the batch limit, and a body over the request limit: 413 both.
    for bytes in [BATCH_BYTES_MAX as usize + 1, HTTP_REQUEST_BYTES_MAX + 1] {
        let response = http
            .client
            .post(http.url("/v1/topics/in/records?partition=0"))
            .body(vec![b'x'; bytes])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{bytes} bytes");
        let answer: Value = response.json().await.unwrap();
        assert!(answer["error"].as_str().unwrap().contains("limit"), "{answer}");
    }
    assert!(http.server.fetch_all("in", 0, 0).await.is_empty());

    // History: a page of records from an offset, with the partition's range.
    let (status, page) = http.get("/v1/topics/in/partitions/1/records?offset=1&limit=1").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        (page["log_start_offset"].as_u64(), page["log_end_offset"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
    assert_eq!(page["records"][0]["offset"], 1);
    let (status, _) = http.get("/v1/topics/in/partitions/1/records?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, topics) = http.get("/v1/topics").await;
    assert_eq!(
        (status, topics),
        (StatusCode::OK, json!({"topics": [{"name": "in", "partitions": 2}]}))
    );

    // The page itself.
    let page = http.client.get(http.url("/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("EventSource"));
}

/// A tmpfs of `bytes` on a new temporary directory, unmounted on drop (needs root).
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(format!("cannot mount a tmpfs (needs root): {}", stderr.trim()));
        }
        Ok(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_answers_507_and_a_post_succeeds_once_space_is_freed() {
    let disk = match SmallDisk::mount(4 * 1024 * 1024) {
        Ok(disk) => disk,
        Err(reason) => {
            // The same tool the disk-fault tests need; .ci/run requires it there.
            let message = format!("SKIPPED: {reason}");
            assert!(std::env::var_os("SPOOL_REQUIRE_FAULT_TOOLS").is_none(), "{message}");
            eprintln!("{message}");
            return;
        }
    };
    let filler = disk.0.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1024 * 1024]).unwrap();
    let data = disk.0.path().join("data");
    let http = Browserside::open(&data).await;
    let config = spool_proto::v1::TopicConfig {
        partitions: 1,
        segment_bytes: Some(1024 * 1024),
        ..Default::default()
    };
    let create = spool_proto::v1::CreateTopicRequest { name: "full".into(), config: Some(config) };
    http.server.topics().await.create_topic(create).await.unwrap();
    let chunk = "x".repeat(100 * 1024);
    let mut stored = 0;
    let (status, body) = loop {
        let (status, body) = http.post("/v1/topics/full/records", json!({"value": chunk})).await;
        if status != StatusCode::OK {
            break (status, body);
        }
        stored += 1;
        assert!(stored < 100, "a 4 MiB disk cannot hold 10 MiB");
    };
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert!(body["error"].as_str().unwrap().to_lowercase().contains("no space left"), "{body}");
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = http.post("/v1/topics/full/records", json!({"value": "room"})).await;
    assert_eq!((status, &body["offset"]), (StatusCode::OK, &json!(stored)), "{body}");
    http.server.shutdown().await;
}

const WRITER: &str = "writer-token";
const READER: &str = "reader-token";

/// `writer` may produce to and consume from `public.*`; `reader` may only consume `public.*`.
fn token_file() -> String {
    format!(
        "[[token]]\nname = \"writer\"\nsha256 = \"{}\"\ntopics = {{ \"public.*\" = [\"produce\", \"consume\"] }}\n\
         [[token]]\nname = \"reader\"\nsha256 = \"{}\"\ntopics = {{ \"public.*\" = [\"consume\"] }}\n",
        token_digest_hex(WRITER),
        token_digest_hex(READER)
    )
}

#[tokio::test]
async fn tokens_and_grants_are_grpcs_from_a_header_a_query_or_a_cookie() {
    let data = tempfile::tempdir().unwrap();
    let open = TestServer::start(data.path()).await;
    open.create_topic("public.news", 1, Policy::Never(Never {})).await;
    open.create_topic("secret.plans", 1, Policy::Never(Never {})).await;
    open.shutdown().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(&path, token_file()).unwrap();
    let tokens = Arc::new(Authenticator::load(&path).unwrap());
    let http = Browserside::start(
        data.path(),
        ServeOptions { tokens: Some(tokens.clone()), ..Default::default() },
    )
    .await;
    let post = |token: Option<&'static str>, topic: &'static str| {
        let http = &http;
        async move {
            let mut request = http
                .client
                .post(http.url(&format!("/v1/topics/{topic}/records")))
                .json(&json!({"value": "v"}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    let (status, body) = post(None, "public.news").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["hint"].as_str().unwrap().contains("?token="), "{body}");
    assert_eq!(post(Some("forged"), "public.news").await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = post(Some(READER), "public.news").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["error"].as_str().unwrap().contains("reader may not produce to"), "{body}");
    // Without a grant, a topic that exists and one that does not look the same.
    let (secret, missing) =
        (post(Some(WRITER), "secret.plans").await, post(Some(WRITER), "secret.none").await);
    assert_eq!((secret.0, missing.0), (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN));
    assert_eq!(
        secret.1["error"].as_str().unwrap().replace("plans", "none"),
        missing.1["error"].as_str().unwrap()
    );
    assert_eq!(post(Some(WRITER), "public.news").await.0, StatusCode::OK);

    // The topic list shows only what the token may see.
    let listed = http.client.get(http.url("/v1/topics")).bearer_auth(READER).send().await.unwrap();
    assert_eq!(
        listed.json::<Value>().await.unwrap(),
        json!({"topics": [{"name": "public.news", "partitions": 1}]})
    );

    // An EventSource passes its token in the query; a cookie works for GET.
    let mut sse = http
        .sse(
            &format!("/v1/topics/public.news/partitions/0/events?from=earliest&token={READER}"),
            None,
        )
        .await;
    assert_eq!(sse.next().await.data["value"], "v");
    let events = http
        .client
        .get(http.url("/v1/topics/public.news/partitions/0/events?from=earliest"))
        .header("cookie", format!("theme=dark; spool_token={READER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    drop(events);
    let denied = http
        .client
        .get(http.url("/v1/topics/secret.plans/partitions/0/events?token=reader-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    // A cookie does not authorize a POST: another site's form could send it.
    let forged = http
        .client
        .post(http.url("/v1/topics/public.news/records"))
        .header("cookie", format!("spool_token={WRITER}"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    // Nor a WebSocket opened by another site's page.
    let url = format!("{}/v1/ws", http.base.replace("http://", "ws://"));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    request.headers_mut().insert("cookie", format!("spool_token={WRITER}").parse().unwrap());
    request.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN.as_u16())
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // A WebSocket with the query token produces within its grant only.
    let mut socket = http.socket(&format!("?token={WRITER}")).await;
    socket.send(json!({"type": "produce", "id": 1, "topic": "secret.plans", "record": {}})).await;
    assert_eq!(socket.next().await["status"], 403);

    // A token removed from the file ends its open stream at the next record.
    let writer_only = token_file().split("[[token]]").nth(1).unwrap().to_owned();
    std::fs::write(&path, format!("[[token]]{writer_only}")).unwrap();
    assert_eq!(tokens.reload().unwrap(), 1);
    assert_eq!(post(Some(WRITER), "public.news").await.0, StatusCode::OK);
    let ended = sse.next().await;
    assert_eq!(ended.kind.as_deref(), Some("spool-error"), "{ended:?}");
    assert_eq!(ended.data["status"], 401);
}

#[tokio::test]
async fn a_browser_that_stops_reading_holds_a_bounded_buffer_and_delays_no_one() {
    let data = tempfile::tempdir().unwrap();
    let http = Browserside::open(data.path()).await;
    http.server.create_topic("firehose", 1, Policy::Never(Never {})).await;
    // Far more than the socket buffers, the server's queue and the reader's read-ahead hold.
    let big = "x".repeat(64 * 1024);
    let (batches, per_batch) = (40, 10);
    for _ in 0..batches {
        let records = (0..per_batch).map(|_| record(&big)).collect();
        http.server.produce("firehose", Some(0), records).await.unwrap();
    }
    let total = (batches * per_batch) as u64;

    // A browser that opens the stream and never reads it.
    let stalled = http.sse("/v1/topics/firehose/partitions/0/events?from=earliest", None).await;
    let metrics = http.server.metrics().clone();
    tokio::time::timeout(PATIENCE, metrics.wait_for(|m| m.subscribers_waiting_on_client() == 1))
        .await
        .expect("the stalled subscription should stop reading the log");
    let held = metrics.subscriber_buffered_bytes();
    assert!(held <= HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX, "{held} bytes held for one browser");
    // And a WebSocket that subscribes and never reads.
    let stalled_socket = http.socket("?topic=firehose&partition=0&from=earliest").await;
    tokio::time::timeout(PATIENCE, metrics.wait_for(|m| m.subscribers_waiting_on_client() == 2))
        .await
        .expect("the stalled socket's subscription should stop reading the log");
    let held = metrics.subscriber_buffered_bytes();
    assert!(held <= 2 * HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX, "{held} bytes held for two browsers");

    // Another browser reads everything meanwhile.
    let mut reader = http.sse("/v1/topics/firehose/partitions/0/events?from=earliest", None).await;
    let mut next = 0;
    while next < total {
        let event = reader.next().await;
        assert_eq!(event.id, Some(next));
        next += 1;
    }
    assert_eq!(metrics.subscribers_waiting_on_client(), 2, "the stalled ones are still stalled");
    assert!(metrics.subscriber_buffered_bytes() <= 2 * HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX);
    drop((stalled, stalled_socket));
    tokio::time::timeout(PATIENCE, metrics.wait_for(|m| m.subscriber_buffered_bytes() == 0))
        .await
        .expect("a closed stream releases what it held");
}

/// A child process killed if the test fails before it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// --- the page in headless Chromium ------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Reports a missing tool: a skip, or a failure when CI requires the browser test.
fn missing(what: &str) {
    let message = format!("SKIPPED: {what}; `.ci/run` installs it");
    assert!(std::env::var_os("SPOOL_REQUIRE_BROWSER").is_none(), "{message}");
    eprintln!("{message}");
}

fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = std::env::var_os("SPOOL_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let modules = std::env::var_os("SPOOL_BROWSER_NODE_MODULES")
        .map_or_else(|| root().join("target/ci/node_modules"), PathBuf::from);
    if !chromium.exists() {
        missing(&format!("no Chromium at {}", chromium.display()));
        return None;
    }
    if !modules.join("playwright-core").exists() {
        missing(&format!("no playwright-core under {}", modules.display()));
        return None;
    }
    if std::process::Command::new("node").arg("--version").output().is_err() {
        missing("no `node` on PATH");
        return None;
    }
    Some((chromium, modules))
}

/// The page opens, shows events the test produces, survives its event stream being cut
/// mid-way without losing or repeating one, and publishes an event a gRPC consumer reads.
/// The script drives the page and prints one JSON line of what it saw; this checks it.
#[tokio::test]
async fn the_page_in_headless_chromium_follows_resumes_and_publishes() {
    let Some((chromium, modules)) = browser_tools() else { return };
    let data = tempfile::tempdir().unwrap();
    let mut http = Browserside::open(data.path()).await;
    http.server.create_topic("demo", 2, Policy::Always(Always {})).await;
    let history: Vec<_> =
        (0..30).map(|i| keyed("sensor-1", &format!("{{\"reading\":{i}}}"))).collect();
    http.server.produce("demo", Some(0), history).await.unwrap();

    let script = root().join("tests/browser/e2e.mjs");
    // `SPOOL_SCREENSHOTS=docs/screenshots` refreshes the pictures in docs/http-api.md.
    let shots = std::env::var_os("SPOOL_SCREENSHOTS")
        .map_or_else(|| root().join("target/browser-screenshots"), PathBuf::from);
    std::fs::create_dir_all(&shots).unwrap();
    let mut child = KillOnDrop(
        std::process::Command::new("node")
            .arg(&script)
            .arg(&http.base)
            .env("NODE_PATH", &modules)
            .env("SPOOL_CHROMIUM", &chromium)
            .env("SPOOL_SCREENSHOTS", &shots)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("cannot start node"),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let stdout = child.0.stdout.take().unwrap();
    // The script says what it needs by lines on stdout (read on a thread of their own); the
    // test answers on stdin.
    let (lines_sender, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
            let Ok(line) = line else { return };
            if lines_sender.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut answer = move |text: &str| {
        use std::io::Write;
        stdin.write_all(format!("{text}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    let mut report = None;
    let mut produced = 30;
    while report.is_none() {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.recv())
            .await
            .expect("the browser script said nothing in time")
            .expect("the browser script ended early");
        let Some((what, rest)) = line.split_once(' ') else { continue };
        match what {
            // Produce N more records to partition 0 while the page watches.
            "produce" => {
                let n: usize = rest.parse().unwrap();
                let records = (produced..produced + n)
                    .map(|i| keyed("sensor-1", &format!("{{\"reading\":{i}}}")))
                    .collect();
                http.server.produce("demo", Some(0), records).await.unwrap();
                produced += n;
                answer("ok");
            }
            // Restart the server under the page, producing N records before it answers.
            "restart" => {
                let n: usize = rest.parse().unwrap();
                http = http.restart().await;
                let records = (produced..produced + n)
                    .map(|i| keyed("sensor-1", &format!("{{\"reading\":{i}}}")))
                    .collect();
                http.server.produce("demo", Some(0), records).await.unwrap();
                produced += n;
                answer("ok");
            }
            "report" => report = Some(serde_json::from_str::<Value>(rest).unwrap()),
            _ => eprintln!("browser: {line}"),
        }
    }
    drop(answer);
    let exited = tokio::task::spawn_blocking(move || child.0.wait());
    let status = tokio::time::timeout(Duration::from_secs(60), exited)
        .await
        .expect("the browser script did not exit")
        .unwrap()
        .unwrap();
    assert!(status.success(), "the browser script failed");
    let report = report.unwrap();
    let seen: Vec<u64> =
        report["offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap()).collect();
    assert_eq!(seen, (0..produced as u64).collect::<Vec<_>>(), "every record once, in order");
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report}");
    // The event published from the page, read back through gRPC.
    let published = report["published"].as_str().unwrap();
    let stored =
        http.server.replay("demo", 1, Position::Earliest(Default::default())).await.unwrap();
    assert!(stored.iter().any(|r| value(r) == published), "{published} not in partition 1");
}

/// Random requests to the browser listener: paths with odd topic and partition segments
/// (escaped separators, dots, non-UTF-8, overlong, out of range), odd query values, JSON
/// bodies with unknown, missing and mistyped fields, and raw bodies under odd content types.
/// Every answer must be below 500 and, when refused, a JSON error naming the problem; the
/// listener must still serve afterwards, and topic `in` must hold exactly the records whose
/// POST was answered 200. proptest shrinks a failure to a short list and prints it.
mod random_requests {
    use proptest::prelude::*;

    use super::*;

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
        let end =
            json!({"type": "produce", "id": "end", "topic": "in", "record": {"value": "end"}});
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
}
