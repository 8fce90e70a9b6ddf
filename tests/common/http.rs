//! A test server with the browser listener (`--http`) on port 0, and clients for it: reqwest
//! for SSE and POST, tokio-tungstenite for WebSocket.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::Value;
use spool_server::ServeOptions;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use super::TestServer;

/// A guard against a test that would otherwise hang; never a wait for something to happen.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A server with the browser listener; `base` is `http://127.0.0.1:PORT`.
pub struct Browserside {
    pub server: TestServer,
    pub base: String,
    pub client: reqwest::Client,
}

impl Browserside {
    pub async fn start(data: &Path, mut options: ServeOptions) -> Browserside {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        options.http = Some(listener);
        let server = TestServer::start_with(data, options).await;
        Browserside { server, base, client: reqwest::Client::new() }
    }

    pub async fn open(data: &Path) -> Browserside {
        Browserside::start(data, ServeOptions::default()).await
    }

    /// Shuts the server down and starts it again on the same data and HTTP address.
    pub async fn restart(self) -> Browserside {
        let Browserside { server, base, client } = self;
        let data = server.data_dir().to_path_buf();
        server.shutdown().await;
        let listener = TcpListener::bind(base.trim_start_matches("http://")).await.unwrap();
        let options = ServeOptions { http: Some(listener), ..Default::default() };
        let server = TestServer::start_with(&data, options).await;
        Browserside { server, base, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn sse(&self, path: &str, last_event_id: Option<u64>) -> Sse {
        let mut request = self.client.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}: {:?}", response.text().await);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Sse { response, buffer: Vec::new() }
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self.client.post(self.url(path)).json(&body).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    pub async fn socket(&self, query: &str) -> Socket {
        let url = format!("{}/v1/ws{query}", self.base.replace("http://", "ws://"));
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Socket(socket)
    }
}

/// One Server-Sent Event.
#[derive(Debug)]
pub struct Event {
    pub id: Option<u64>,
    pub kind: Option<String>,
    pub data: Value,
}

/// An SSE response, parsed as it arrives.
pub struct Sse {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl Sse {
    /// The next event (comments and `retry:` lines skipped).
    pub async fn next(&mut self) -> Event {
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
    pub async fn records(&mut self, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let event = self.next().await;
            assert_eq!(event.kind, None, "{event:?}");
            events.push(event);
        }
        events
    }
}

pub struct Socket(
    pub tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Socket {
    pub async fn send(&mut self, message: Value) {
        self.0.send(Message::Text(message.to_string().into())).await.unwrap();
    }

    /// The next JSON message (pings skipped).
    pub async fn next(&mut self) -> Value {
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
