//! The browser listener (`--http`) end to end: an in-process server with its HTTP listener on
//! port 0, driven by reqwest (SSE and POST) and tokio-tungstenite (WebSocket), checked against
//! the gRPC API. The built-in page in headless Chromium is `http_browser.rs`; random requests
//! to the listener are `http_random.rs`.

mod common;

use std::sync::Arc;

use common::http::{Browserside, Event, PATIENCE};
use common::{TestServer, header, keyed, record, value};
use reqwest::StatusCode;
use serde_json::{Value, json};
use spool_proto::limits::BATCH_BYTES_MAX;
use spool_proto::v1::fsync_policy::Policy;
use spool_proto::v1::fsync_policy::{Always, Never};
use spool_server::ServeOptions;
use spool_server::auth::{Authenticator, token_digest_hex};
use spool_server::limits::{HTTP_REQUEST_BYTES_MAX, HTTP_SUBSCRIBER_BUFFERED_BYTES_MAX};

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

/// 2024-05-01T12:00:00Z, in milliseconds since the Unix epoch.
const NOON_MS: i64 = 1_714_564_800_000;

#[tokio::test]
async fn from_takes_an_rfc_3339_time_as_the_cli_does() {
    let data = tempfile::tempdir().unwrap();
    let http = Browserside::open(data.path()).await;
    http.server.create_topic("t", 1, Policy::Never(Never {})).await;
    let stamped: Vec<_> = (0..4)
        .map(|i| spool_proto::v1::Record {
            timestamp_ms: Some(NOON_MS + (i - 1) * 60_000),
            ..record(&format!("v{i}"))
        })
        .collect();
    http.server.produce("t", None, stamped).await.unwrap();
    // Noon UTC, the same instant in India (`+` encoded, as in any URL), and just after it.
    for (from, first) in [
        ("2024-05-01T12:00:00Z", 1),
        ("2024-05-01T17:30:00%2B05:30", 1),
        ("2024-05-01T12:00:00.001Z", 2),
        ("2024-05-01T11:00:00-01:00", 1),
    ] {
        let mut sse =
            http.sse(&format!("/v1/topics/t/partitions/0/events?from={from}"), None).await;
        assert_eq!(sse.next().await.id, Some(first), "from={from}");
    }
    // The WebSocket's `from` is parsed the same way.
    let mut socket = http.socket("?topic=t&partition=0&from=2024-05-01T12:01:00Z").await;
    assert_eq!(socket.next().await["offset"], 2);
    // A date alone is not a time; the error says what is.
    let (status, body) = http.get("/v1/topics/t/partitions/0/events?from=2024-05-01").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("RFC 3339"), "{body}");
}

#[tokio::test]
async fn a_method_an_endpoint_does_not_take_is_405_with_the_json_error() {
    let data = tempfile::tempdir().unwrap();
    let http = Browserside::open(data.path()).await;
    http.server.create_topic("t", 1, Policy::Never(Never {})).await;
    for (method, path, allowed) in [
        (reqwest::Method::DELETE, "/v1/topics", "GET"),
        (reqwest::Method::PUT, "/v1/topics/t/records", "POST"),
        (reqwest::Method::DELETE, "/v1/topics/t/partitions/0/events", "GET"),
    ] {
        let response = http.client.request(method.clone(), http.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let allow = response.headers()["allow"].to_str().unwrap().to_owned();
        assert!(allow.contains(allowed), "{method} {path}: Allow {allow:?}");
        assert!(
            response.headers()["content-type"].to_str().unwrap().starts_with("application/json")
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], 405, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(path) && error.contains(method.as_str()), "{error:?}");
    }
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
