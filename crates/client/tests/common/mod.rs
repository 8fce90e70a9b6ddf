//! An in-process server on 127.0.0.1:0 over a temporary directory.

#![allow(dead_code)] // each test file uses a different part

use spool_client::{Client, Fsync, TopicSettings};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), spool_server::RunError>>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let data = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = spool_server::Server::open(data.path()).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        TestServer { url, stop: Some(stop), task: Some(task), _data: data }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await.unwrap()
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

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}
