//! The Kafka listener's test side: a server with one, a connection that speaks Kafka's
//! encoding (the `kafka-protocol` crate's client side), and the Python clients nobody here
//! wrote (from `.ci/run`'s virtual environment at `target/ci/venv`, or `$SPOOL_PYTHON`).

use std::path::Path;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use spool_server::{AdvertisedAddress, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::TestServer;

/// How long a test waits for an answer that should come at once.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Kafka {
    pub server: TestServer,
    pub address: std::net::SocketAddr,
    /// The data directory, when the harness made it.
    pub _data: Option<tempfile::TempDir>,
}

pub async fn start(advertised: Option<AdvertisedAddress>) -> Kafka {
    start_with(ServeOptions { kafka_advertised: advertised, ..Default::default() }).await
}

/// A server with a Kafka listener on 127.0.0.1:0 and `options` otherwise.
pub async fn start_with(options: ServeOptions) -> Kafka {
    start_in(tempfile::tempdir().unwrap(), options).await
}

/// A server on the data directory `data` with a Kafka listener on 127.0.0.1:0 and `options`.
pub async fn start_in(data: tempfile::TempDir, options: ServeOptions) -> Kafka {
    let kafka = start_at(data.path(), options).await;
    Kafka { _data: Some(data), ..kafka }
}

/// A server on the data directory at `data` (the caller's to keep), with a Kafka listener on
/// 127.0.0.1:0 and `options`.
pub async fn start_at(data: &Path, options: ServeOptions) -> Kafka {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let options = ServeOptions { kafka: Some(listener), ..options };
    let server = TestServer::start_with(data, options).await;
    Kafka { server, address, _data: None }
}

/// One client connection, with its own correlation ids.
pub struct Connection {
    pub stream: TcpStream,
    next_id: i32,
}

impl Connection {
    pub async fn open(kafka: &Kafka) -> Connection {
        Connection::to(kafka.address).await
    }

    /// A connection to the Kafka listener at `address`.
    pub async fn to(address: std::net::SocketAddr) -> Connection {
        Connection { stream: TcpStream::connect(address).await.unwrap(), next_id: 1 }
    }

    /// Sends a request; returns its correlation id.
    pub async fn send<T: Encodable>(&mut self, api: ApiKey, version: i16, body: &T) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("spool-test")));
        let mut frame = BytesMut::new();
        frame.put_u32(0);
        header.encode(&mut frame, api.request_header_version(version)).unwrap();
        body.encode(&mut frame, version).unwrap();
        let length = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        self.stream.write_all(&frame).await.unwrap();
        id
    }

    /// Reads the next answer frame; `None` when the server closed the connection.
    pub async fn receive_frame(&mut self) -> Option<Bytes> {
        let read = async {
            let length = self.stream.read_u32().await.ok()?;
            let mut body = vec![0u8; length as usize];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(Bytes::from(body))
        };
        tokio::time::timeout(PATIENCE, read).await.expect("an answer or a close in time")
    }

    pub async fn receive<T: Decodable>(&mut self, api: ApiKey, version: i16, id: i32) -> T {
        let mut frame = self.receive_frame().await.expect("an answer, not a closed connection");
        let header =
            ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, id, "answers come in order");
        let body = T::decode(&mut frame, version).unwrap();
        assert!(!frame.has_remaining(), "the whole answer decodes");
        body
    }

    pub async fn call<Q: Encodable, A: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &Q,
    ) -> A {
        let id = self.send(api, version, body).await;
        self.receive(api, version, id).await
    }

    /// Asserts the server closes the connection (after sending nothing more).
    pub async fn assert_closed(&mut self) {
        assert!(self.receive_frame().await.is_none(), "the server should close the connection");
    }
}

pub fn name(text: &str) -> TopicName {
    TopicName(StrBytes::from_string(text.to_owned()))
}

/// The Python at `target/ci/venv` (or `$SPOOL_PYTHON`) if it can import `module`; else
/// `None`, after saying why the test skips (or failing, when CI requires the clients).
pub fn python_with(module: &str, package: &str) -> Option<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("SPOOL_PYTHON")
        .map_or_else(|| root.join("target/ci/venv/bin/python"), std::path::PathBuf::from);
    let found = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .status()
            .is_ok_and(|status| status.success());
    if found {
        return Some(python);
    }
    let message = format!(
        "SKIPPED: no Python with {package} at {} (or $SPOOL_PYTHON); `.ci/run` installs it",
        python.display()
    );
    assert!(std::env::var_os("SPOOL_REQUIRE_EXTERNAL_CLIENTS").is_none(), "{message}");
    eprintln!("{message}");
    None
}

/// Runs `tests/python/SCRIPT ADDRESS TOPIC` and returns what it printed.
pub async fn run_python(
    python: std::path::PathBuf,
    script: &str,
    kafka: &Kafka,
    topic: &str,
) -> String {
    run_python_with(python, script, kafka, &[topic]).await
}

/// Runs `tests/python/SCRIPT ADDRESS ARGS...` and returns what it printed.
pub async fn run_python_with(
    python: std::path::PathBuf,
    script: &str,
    kafka: &Kafka,
    args: &[&str],
) -> String {
    run_python_at(python, script, &kafka.address.to_string(), args).await
}

/// Runs `tests/python/SCRIPT BOOTSTRAP ARGS...` (`BOOTSTRAP`: one or more `HOST:PORT`, comma
/// separated) and returns what it printed.
pub async fn run_python_at(
    python: std::path::PathBuf,
    script: &str,
    bootstrap: &str,
    args: &[&str],
) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = std::process::Command::new(&python);
    command.arg(root.join("tests/python").join(script)).arg(bootstrap).args(args);
    let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

pub fn record(offset: i64, key: &str, value: &[u8], timestamp: i64) -> Record {
    let mut headers = kafka_protocol::indexmap::IndexMap::new();
    headers.insert(StrBytes::from_static_str("trace"), Some(Bytes::from_static(b"t-1")));
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        // One batch for all: the encoder groups records whose offset minus sequence is the same
        // (the batch takes the first record's sequence, -1: not idempotent).
        sequence: offset as i32 - 1,
        timestamp,
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Some(Bytes::copy_from_slice(value)),
        headers,
    }
}

/// A RecordBatch v2 of `count` records, as a Kafka client encodes one.
pub fn batch(count: usize, prefix: &str, timestamp: i64) -> Bytes {
    let records: Vec<Record> = (0..count)
        .map(|i| {
            record(
                i as i64,
                &format!("{prefix}-{i}"),
                format!("value {i}").as_bytes(),
                timestamp + i as i64,
            )
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
    buf.freeze()
}

/// A request frame built by hand, for requests `kafka-protocol` would not encode: the length,
/// a version 1 header (`api`, `version`, correlation id 7, no client id), then `body`.
pub fn raw_frame(api: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut frame = BytesMut::new();
    frame.put_u32((10 + body.len()) as u32);
    frame.put_i16(api);
    frame.put_i16(version);
    frame.put_i32(7);
    frame.put_i16(-1);
    frame.put_slice(body);
    frame.to_vec()
}
