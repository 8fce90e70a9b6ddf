//! The in-process server on 127.0.0.1:0 (`spool_server::testing`) over a temporary data
//! directory, and clients for it; [`http`] has clients for its browser listener, [`kafka`]
//! for its Kafka listener.

#![allow(dead_code)] // each test file uses a different part

pub mod http;
pub mod kafka;
pub mod tls;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use spool_proto::limits::{REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX};
use spool_proto::v1::consume_service_client::ConsumeServiceClient;
use spool_proto::v1::fsync_policy::{Always, Policy};
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::produce_service_client::ProduceServiceClient;
use spool_proto::v1::start_position::Position;
use spool_proto::v1::topic_service_client::TopicServiceClient;
use spool_proto::v1::{
    Acks, ConsumedRecord, CreateTopicRequest, DescribeTopicRequest, Encoding, FetchRequest,
    FetchResponse, FsyncPolicy, Header, ProduceRequest, ProduceResponse, Record, RecordList,
    StartPosition, SubscribeRequest, TopicConfig, TopicDescription,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The shared in-process server (`spool_server::testing`), with the calls these tests make.
pub struct TestServer(spool_server::testing::TestServer);

impl std::ops::Deref for TestServer {
    type Target = spool_server::testing::TestServer;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl From<spool_server::testing::TestServer> for TestServer {
    fn from(server: spool_server::testing::TestServer) -> TestServer {
        TestServer(server)
    }
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> TestServer {
        TestServer::start_with(data_dir, spool_server::ServeOptions::default()).await
    }

    /// A server with TLS, tokens or a metrics endpoint; its URL is `https://` with TLS. (A TLS
    /// test's client brings its own certificates and is slowed by the handshake; it does not
    /// wait here for health to say SERVING.)
    pub async fn start_with(data_dir: &Path, options: spool_server::ServeOptions) -> TestServer {
        TestServer(spool_server::testing::TestServer::start_with(data_dir, options).await.unwrap())
    }

    /// Shuts the server down as a signal would, and checks it stopped cleanly.
    pub async fn shutdown(self) {
        self.0.shutdown().await.unwrap();
    }

    /// Shuts down a server with a log that cannot close cleanly (a fenced partition), and
    /// checks it says so; returns what it said.
    pub async fn shutdown_unclean(self) -> String {
        match self.0.shutdown().await {
            Err(spool_server::testing::StopError::Serve(
                error @ spool_server::RunError::UncleanStop { .. },
            )) => error.to_string(),
            other => panic!("expected an unclean stop, got {other:?}"),
        }
    }

    pub async fn channel(&self) -> Channel {
        self.0.channel().await.unwrap()
    }

    pub async fn topics(&self) -> TopicServiceClient<Channel> {
        TopicServiceClient::new(self.channel().await)
    }

    /// DescribeTopic of `topic`: the topic, or the call's status.
    pub async fn describe(&self, topic: &str) -> Result<TopicDescription, Status> {
        let request = DescribeTopicRequest { name: topic.to_owned() };
        let described = self.topics().await.describe_topic(request).await?.into_inner();
        Ok(described.topic.expect("a described topic"))
    }

    pub async fn producer(&self) -> ProduceServiceClient<Channel> {
        ProduceServiceClient::new(self.channel().await).max_encoding_message_size(REQUEST_BYTES_MAX)
    }

    pub async fn consumer(&self) -> ConsumeServiceClient<Channel> {
        ConsumeServiceClient::new(self.channel().await)
            .max_decoding_message_size(RESPONSE_BYTES_MAX)
    }

    pub async fn create_topic(&self, name: &str, partitions: u32, fsync: Policy) {
        self.topics()
            .await
            .create_topic(CreateTopicRequest {
                name: name.to_owned(),
                config: Some(TopicConfig {
                    partitions,
                    fsync: Some(FsyncPolicy { policy: Some(fsync) }),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
    }

    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<u32>,
        records: Vec<Record>,
    ) -> Result<ProduceResponse, Status> {
        self.producer()
            .await
            .produce(ProduceRequest {
                correlation_id: 0,
                topic: topic.to_owned(),
                partition,
                acks: Acks::Unspecified as i32,
                payload: Some(Payload::Records(RecordList { records })),
                producer: None,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<FetchResponse, Status> {
        self.fetch_encoded(topic, partition, offset, Encoding::Unspecified).await
    }

    /// A fetch in the raw encoding: the stored batches as the log holds them.
    pub async fn fetch_raw(&self, topic: &str, partition: u32, offset: u64) -> FetchResponse {
        self.fetch_encoded(topic, partition, offset, Encoding::RawBatch).await.unwrap()
    }

    async fn fetch_encoded(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        encoding: Encoding,
    ) -> Result<FetchResponse, Status> {
        self.consumer()
            .await
            .fetch(FetchRequest {
                topic: topic.to_owned(),
                partition,
                offset,
                max_bytes: 0,
                max_wait_ms: 0,
                encoding: encoding as i32,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Every record of a partition from `offset` to its visible end, by repeated fetches.
    pub async fn fetch_all(
        &self,
        topic: &str,
        partition: u32,
        mut offset: u64,
    ) -> Vec<ConsumedRecord> {
        let mut records = Vec::new();
        loop {
            let fetched = self.fetch(topic, partition, offset).await.unwrap();
            records.extend(fetched.records);
            if fetched.next_offset >= fetched.log_end_offset {
                return records;
            }
            offset = fetched.next_offset;
        }
    }

    /// Replays a partition from `position` to the end as it is now, through Subscribe.
    pub async fn replay(
        &self,
        topic: &str,
        partition: u32,
        position: Position,
    ) -> Result<Vec<ConsumedRecord>, Status> {
        let mut stream = self
            .consumer()
            .await
            .subscribe(SubscribeRequest {
                topic: topic.to_owned(),
                partition,
                start: Some(StartPosition { position: Some(position) }),
                encoding: 0,
                stop_at_end: true,
            })
            .await?
            .into_inner();
        let mut records = Vec::new();
        while let Some(message) = stream.message().await? {
            records.extend(message.records);
        }
        Ok(records)
    }
}

/// A data directory alone in a temporary parent, so anything a server writes beside it (a
/// topic named `../escape`, say) shows in [`LoneDataDir::beside`].
pub struct LoneDataDir {
    parent: tempfile::TempDir,
    pub data: PathBuf,
}

impl LoneDataDir {
    pub fn new() -> LoneDataDir {
        let parent = tempfile::tempdir().unwrap();
        let data = parent.path().join("data");
        std::fs::create_dir(&data).unwrap();
        LoneDataDir { parent, data }
    }

    pub fn parent(&self) -> &Path {
        self.parent.path()
    }

    /// Every entry of the parent but `data`.
    pub fn beside(&self) -> Vec<std::ffi::OsString> {
        let entries = std::fs::read_dir(self.parent.path()).unwrap();
        entries.map(|entry| entry.unwrap().file_name()).filter(|name| name != "data").collect()
    }
}

/// Runs `future` on a fresh two-worker runtime: for property tests, whose bodies are not async.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(future)
}

pub fn record(value: &str) -> Record {
    Record {
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Vec::new(),
        timestamp_ms: None,
    }
}

pub fn keyed(key: &str, value: &str) -> Record {
    Record { key: Some(Bytes::copy_from_slice(key.as_bytes())), ..record(value) }
}

pub fn header(key: &str, value: &str) -> Header {
    Header { key: key.to_owned(), value: Some(Bytes::copy_from_slice(value.as_bytes())) }
}

pub fn value(record: &ConsumedRecord) -> &str {
    std::str::from_utf8(record.value.as_deref().unwrap()).unwrap()
}

#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, message_has: &str) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(message_has), "{:?} lacks {message_has:?}", status.message());
}

/// The fsync `always` policy, the default, as a topic request names it.
pub fn always() -> Policy {
    Policy::Always(Always {})
}

/// `GET /metrics` over a plain TCP connection; returns the body.
pub async fn scrape(address: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: spool\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}
