//! Clients that no one here wrote, against an in-process server on 127.0.0.1:0:
//!
//! - a Python client whose stubs `grpcio-tools` generates from `proto/` (the test runs the
//!   generator), which creates a topic, produces with keys and headers, subscribes from an
//!   offset and checks it reads back exactly what it wrote (`tests/python/spool_client.py`);
//! - `buf curl`, which knows nothing of Spool but what server reflection tells it.
//!
//! The tools come from `.ci/run`: a virtual environment at `target/ci/venv` (or the Python
//! named by `SPOOL_PYTHON`) and the npm package `@bufbuild/buf` at `target/ci/node_modules`
//! (or the `buf` named by `SPOOL_BUF`). Without them each test prints why it skips; with
//! `SPOOL_REQUIRE_EXTERNAL_CLIENTS=1` (CI sets it) a missing tool fails the test instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use common::{TestServer, value};
use spool_server::ServeOptions;
use spool_server::auth::{Authenticator, token_digest_hex};

const TOKEN: &str = "external-client-token";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The tool at `$variable`, else at `default` under the repository, if it exists.
fn tool(variable: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map_or_else(|| root().join(default), PathBuf::from);
    path.exists().then_some(path)
}

/// Reports a missing tool: a skip, or a failure when CI requires the tool.
fn missing(what: &str) {
    let message = format!("SKIPPED: {what}; `.ci/run` installs it");
    assert!(std::env::var_os("SPOOL_REQUIRE_EXTERNAL_CLIENTS").is_none(), "{message}");
    eprintln!("{message}");
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A server whose only token may administer, produce to and consume from every topic.
async fn server(data: &Path, tokens_dir: &Path) -> TestServer {
    let path = tokens_dir.join("tokens.toml");
    let file = format!(
        "[[token]]\nname = \"external\"\nsha256 = \"{}\"\ntopics = {{ \"*\" = [\"produce\", \"consume\", \"administer\"] }}\n",
        token_digest_hex(TOKEN)
    );
    std::fs::write(&path, file).unwrap();
    let tokens = Arc::new(Authenticator::load(&path).unwrap());
    TestServer::start_with(data, ServeOptions { tokens: Some(tokens), ..Default::default() }).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_client_generated_from_the_protos_reads_back_what_it_wrote() {
    let Some(python) = tool("SPOOL_PYTHON", "target/ci/venv/bin/python") else {
        return missing("no Python with grpcio-tools at target/ci/venv (or $SPOOL_PYTHON)");
    };
    let has_tools = Command::new(&python).args(["-c", "import grpc, grpc_tools"]).status();
    if !has_tools.is_ok_and(|status| status.success()) {
        return missing(&format!("{} cannot import grpc and grpc_tools", python.display()));
    }
    let generated = tempfile::tempdir().unwrap();
    // protoc wants the files named relative to the import path.
    let mut protos: Vec<String> = std::fs::read_dir(root().join("proto/spool/v1"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".proto"))
        .map(|name| format!("spool/v1/{name}"))
        .collect();
    protos.sort();
    run(Command::new(&python)
        .current_dir(root())
        .args(["-m", "grpc_tools.protoc", "-Iproto"])
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()))
        .args(&protos));

    let data = tempfile::tempdir().unwrap();
    let server = server(data.path(), generated.path()).await;
    let address = server.address().to_string();
    let script = root().join("tests/python/spool_client.py");
    let generated_dir = generated.path().to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        run(Command::new(python).arg(script).arg(generated_dir).arg(address).arg(TOKEN))
    })
    .await
    .unwrap();
    let summary = String::from_utf8(output.stdout).unwrap();
    assert!(summary.contains(r#""topic": "python-events""#), "{summary}");

    // What the Python client wrote is what Spool holds: read back through the Rust stubs
    // after a restart (without tokens, so the test's own helpers can read).
    server.shutdown().await;
    let server = TestServer::start(data.path()).await;
    let records = server.fetch_all("python-events", 0, 0).await;
    let keys: Vec<_> = records.iter().map(|r| r.key.as_deref().unwrap()).collect();
    assert_eq!(keys, [&b"user-1"[..], b"user-2", b"user-1", b"user-3"]);
    assert_eq!(value(&records[2]), "logged in");
    assert_eq!(records[0].headers[1].value.as_deref(), Some(&b"\x00\x01\xff"[..]));
    server.shutdown().await;
}

/// Runs `buf curl` against the server, through reflection only, and returns its output.
fn buf_curl(buf: &Path, url: &str, method: &str, body: Option<&str>) -> String {
    let mut command = Command::new(buf);
    command
        .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge"])
        .args(["-H", &format!("authorization: Bearer {TOKEN}")]);
    if let Some(body) = body {
        command.args(["-d", body]);
    }
    let output = run(command.arg(format!("{url}/{method}")));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn buf_curl_calls_spool_through_reflection_alone() {
    let Some(buf) = tool("SPOOL_BUF", "target/ci/node_modules/.bin/buf") else {
        return missing("no `buf` at target/ci/node_modules/.bin (or $SPOOL_BUF)");
    };
    let data = tempfile::tempdir().unwrap();
    let tokens = tempfile::tempdir().unwrap();
    let server = server(data.path(), tokens.path()).await;
    let url = server.url().to_owned();
    let calls = tokio::task::spawn_blocking(move || {
        let listed = run(Command::new(&buf)
            .args(["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods"])
            .arg(&url));
        let methods = String::from_utf8(listed.stdout).unwrap();
        let health = buf_curl(&buf, &url, "grpc.health.v1.Health/Check", Some("{}"));
        let created = buf_curl(
            &buf,
            &url,
            "spool.v1.TopicService/CreateTopic",
            Some(r#"{"name": "buf-events", "config": {"partitions": 1}}"#),
        );
        // Bytes are base64 in protobuf's JSON: "a2V5" is "key", "dmFsdWU=" is "value".
        let produced = buf_curl(
            &buf,
            &url,
            "spool.v1.ProduceService/Produce",
            Some(
                r#"{"topic": "buf-events", "records": {"records": [
                    {"key": "a2V5", "value": "dmFsdWU=", "headers": [{"key": "h", "value": "dg=="}]}
                ]}}"#,
            ),
        );
        let subscribed = buf_curl(
            &buf,
            &url,
            "spool.v1.ConsumeService/Subscribe",
            Some(r#"{"topic": "buf-events", "start": {"offset": "0"}, "stopAtEnd": true}"#),
        );
        (methods, health, created, produced, subscribed)
    })
    .await
    .unwrap();
    let (methods, health, created, produced, subscribed) = calls;
    for method in [
        "spool.v1.TopicService/CreateTopic",
        "spool.v1.TopicService/AlterTopic",
        "spool.v1.ProduceService/ProduceStream",
        "spool.v1.ConsumeService/Subscribe",
        "grpc.health.v1.Health/Watch",
    ] {
        assert!(methods.contains(method), "{method} missing from:\n{methods}");
    }
    assert!(health.contains("SERVING"), "{health}");
    assert!(created.contains(r#""name": "buf-events""#), "{created}");
    assert!(
        produced.contains(r#""lastOffset": "0""#) || produced.contains("appends"),
        "{produced}"
    );
    assert!(subscribed.contains(r#""key": "a2V5""#), "{subscribed}");
    assert!(subscribed.contains(r#""value": "dmFsdWU=""#), "{subscribed}");

    server.shutdown().await;
    let server = TestServer::start(data.path()).await;
    let records = server.fetch_all("buf-events", 0, 0).await;
    assert_eq!(records.len(), 1);
    assert_eq!(value(&records[0]), "value");
    assert_eq!(records[0].headers[0].key, "h");
    server.shutdown().await;
}
