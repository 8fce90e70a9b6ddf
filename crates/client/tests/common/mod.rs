//! The in-process server on 127.0.0.1:0 (`spool_server::testing`) over a temporary directory.

#![allow(dead_code)] // each test file uses a different part

use spool_client::{Client, Fsync, TopicSettings};

pub struct TestServer {
    server: spool_server::testing::TestServer,
    _data: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let data = tempfile::tempdir().unwrap();
        let server = spool_server::testing::TestServer::start(data.path()).await.unwrap();
        TestServer { server, _data: data }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.server.url()).await.unwrap()
    }

    /// A client with a topic of `partitions` partitions and fsync policy `fsync`.
    pub async fn with_topic(&self, name: &str, partitions: u32, fsync: Fsync) -> Client {
        let client = self.client().await;
        client
            .create_topic(name, TopicSettings { partitions, fsync, ..TopicSettings::default() })
            .await
            .unwrap();
        client
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await.unwrap();
    }
}
