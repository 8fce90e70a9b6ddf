//! The browser listener keeps other sites out, with and without tokens: a foreign `Host` (DNS
//! rebinding) and a foreign `Origin` (a page on another site) are refused, a form's content
//! type cannot store a record, an allowed origin is let in, and the page may not be framed.
//! A revoked token ends an idle event stream at once.

mod common;

use std::sync::Arc;

use common::TestServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use spool_proto::v1::fsync_policy::{Never, Policy};
use spool_server::ServeOptions;
use spool_server::auth::{Authenticator, token_digest_hex};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WRITER: &str = "origins-writer-token";

struct Listener {
    _server: TestServer,
    base: String,
    /// `127.0.0.1:PORT`.
    host: String,
    client: reqwest::Client,
    token: Option<&'static str>,
    tokens: Option<Arc<Authenticator>>,
}

impl Listener {
    async fn start(data: &std::path::Path, tokens: bool, allowed: &[&str]) -> Listener {
        let setup = TestServer::start(data).await;
        setup.create_topic("t", 1, Policy::Never(Never {})).await;
        setup.shutdown().await;
        let mut options = ServeOptions {
            http_allowed_origins: allowed.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        };
        if tokens {
            let path = data.parent().unwrap().join("tokens.toml");
            let file = format!(
                "[[token]]\nname = \"writer\"\nsha256 = \"{}\"\ntopics = {{ \"*\" = [\"produce\", \"consume\"] }}\n",
                token_digest_hex(WRITER)
            );
            std::fs::write(&path, file).unwrap();
            options.tokens = Some(Arc::new(Authenticator::load(&path).unwrap()));
        }
        let tokens = options.tokens.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        options.http = Some(listener);
        let server = TestServer::start_with(data, options).await;
        Listener {
            _server: server,
            base: format!("http://{host}"),
            host,
            client: reqwest::Client::new(),
            token: tokens.as_ref().map(|_| WRITER),
            tokens,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Posts a JSON record with these extra headers; the status and the error, if any.
    async fn post(&self, headers: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut request = self
            .request(reqwest::Method::POST, "/v1/topics/t/records")
            .json(&json!({"value": "v"}));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.json().await.unwrap_or(Value::Null))
    }

    /// How many records partition 0 of `t` holds, read through the listener itself.
    async fn stored(&self) -> usize {
        let response = self
            .request(reqwest::Method::GET, "/v1/topics/t/partitions/0/records?offset=0")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["records"].as_array().unwrap().len()
    }

    /// Opens a WebSocket with these extra headers: the status of a refused handshake.
    async fn socket(&self, headers: &[(&'static str, &str)]) -> Result<(), u16> {
        let url = match self.token {
            Some(token) => format!("ws://{}/v1/ws?token={token}", self.host),
            None => format!("ws://{}/v1/ws", self.host),
        };
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(*name, value.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((mut socket, _)) => {
                let _ = socket.close(None).await;
                Ok(())
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("the handshake failed otherwise: {other}"),
        }
    }
}

async fn other_sites_are_refused(tokens: bool) {
    let dir = tempfile::tempdir().unwrap();
    let http = Listener::start(&dir.path().join("data"), tokens, &[]).await;
    let own_origin = http.base.clone();

    // DNS rebinding: a page on evil.example whose name resolves to this machine.
    let rebound = http
        .request(reqwest::Method::GET, "/v1/topics/t/partitions/0/records?offset=0")
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN, "tokens: {tokens}");
    let error: Value = rebound.json().await.unwrap();
    assert!(error["error"].as_str().unwrap().contains("evil.example"), "{error}");
    let (status, _) = http.post(&[("host", "evil.example")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A page on another site posting, with JSON or as a form would.
    let (status, error) = http.post(&[("origin", "http://evil.example")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "tokens: {tokens}");
    assert!(error["error"].as_str().unwrap().contains("http://evil.example"), "{error}");
    // The same host under another scheme is another origin.
    let (status, _) = http.post(&[("origin", &own_origin.replace("http://", "https://"))]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for form in
        ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b"]
    {
        let response = http
            .request(reqwest::Method::POST, "/v1/topics/t/records")
            .header("content-type", form)
            .body("value=v")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{form}");
    }
    assert_eq!(http.stored().await, 0, "nothing refused was stored");

    // Its own page, and a program that sends no Origin, may write.
    assert_eq!(http.post(&[("origin", &own_origin)]).await.0, StatusCode::OK);
    assert_eq!(http.post(&[]).await.0, StatusCode::OK);
    let raw = http
        .request(reqwest::Method::POST, "/v1/topics/t/records")
        .header("content-type", "application/octet-stream")
        .body("raw")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::OK);
    assert_eq!(http.stored().await, 3);

    // WebSockets: another site's page is refused; the listener's own page is not.
    assert_eq!(http.socket(&[("origin", "http://evil.example")]).await, Err(403));
    assert_eq!(http.socket(&[("host", "evil.example")]).await, Err(403));
    assert_eq!(http.socket(&[("origin", &own_origin)]).await, Ok(()));
}

#[tokio::test]
async fn other_sites_are_refused_without_tokens() {
    other_sites_are_refused(false).await;
}

#[tokio::test]
async fn other_sites_are_refused_with_tokens() {
    other_sites_are_refused(true).await;
}

#[tokio::test]
async fn an_allowed_origin_is_let_in_and_the_page_cannot_be_framed() {
    let dir = tempfile::tempdir().unwrap();
    let http = Listener::start(&dir.path().join("data"), false, &["https://events.example"]).await;
    let (status, _) =
        http.post(&[("origin", "https://events.example"), ("host", "events.example")]).await;
    assert_eq!(status, StatusCode::OK, "a TLS-terminating proxy's origin and host");
    assert_eq!(http.post(&[("origin", "http://events.example")]).await.0, StatusCode::FORBIDDEN);

    let page = http.request(reqwest::Method::GET, "/").send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'") && policy.contains("connect-src 'self'"));
}

#[tokio::test]
async fn an_idle_event_stream_ends_when_its_token_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let http = Listener::start(&dir.path().join("data"), true, &[]).await;
    let mut events = http
        .request(reqwest::Method::GET, "/v1/topics/t/partitions/0/events")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    // Nothing is produced; the token file loses the token and is reloaded.
    let path = dir.path().join("tokens.toml");
    std::fs::write(&path, "").unwrap();
    http.tokens.as_ref().unwrap().reload().unwrap();
    let ended = async {
        let mut text = String::new();
        while let Some(chunk) = events.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    };
    let text = tokio::time::timeout(std::time::Duration::from_secs(30), ended)
        .await
        .expect("the idle stream ends at the reload, not at the next record or keep-alive");
    assert!(text.contains("event: spool-error"), "{text}");
}
