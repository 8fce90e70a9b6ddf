//! The examples' server: `SPOOL_SERVER` if set, else one started in-process on a temporary
//! directory (so `cargo run --example ...` works with nothing else running).

use spool_client::Client;
use spool_server::testing::TestServer;

pub struct Server {
    url: String,
    in_process: Option<(TestServer, tempfile::TempDir)>,
}

impl Server {
    pub async fn from_env_or_start() -> Result<Server, Box<dyn std::error::Error>> {
        if let Ok(url) = std::env::var("SPOOL_SERVER") {
            return Ok(Server { url, in_process: None });
        }
        let data = tempfile::tempdir()?;
        let server = TestServer::start(data.path()).await?;
        let url = server.url().to_owned();
        eprintln!("(started an in-process server at {url}; set SPOOL_SERVER to use another)");
        Ok(Server { url, in_process: Some((server, data)) })
    }

    pub async fn client(&self) -> Result<Client, spool_client::ConnectError> {
        Client::connect(&self.url).await
    }

    pub async fn stop(self) {
        if let Some((server, _data)) = self.in_process
            && let Err(error) = server.shutdown().await
        {
            eprintln!("the in-process server failed: {error}");
        }
    }
}
