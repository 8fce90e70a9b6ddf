//! The examples' server: `SPOOL_SERVER` if set, else one started in-process on a temporary
//! directory (so `cargo run --example ...` works with nothing else running).

use spool_client::Client;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Server {
    url: String,
    in_process: Option<(oneshot::Sender<()>, JoinHandle<()>, tempfile::TempDir)>,
}

impl Server {
    pub async fn from_env_or_start() -> Result<Server, Box<dyn std::error::Error>> {
        if let Ok(url) = std::env::var("SPOOL_SERVER") {
            return Ok(Server { url, in_process: None });
        }
        let data = tempfile::tempdir()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = spool_server::Server::open(data.path()).await?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = server.serve(listener, shutdown).await {
                eprintln!("the in-process server failed: {error}");
            }
        });
        eprintln!("(started an in-process server at {url}; set SPOOL_SERVER to use another)");
        Ok(Server { url, in_process: Some((stop, task, data)) })
    }

    pub async fn client(&self) -> Result<Client, spool_client::ConnectError> {
        Client::connect(&self.url).await
    }

    pub async fn stop(self) {
        if let Some((stop, task, _data)) = self.in_process {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}
