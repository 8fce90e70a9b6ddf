//! Request-reply over the log: two responders in one consumer group answer requests; a
//! requester sends a few and prints the replies, then shows a reply waited for again from a
//! new connection, as a requester that reconnected would.
//!
//! ```sh
//! cargo run -p spool-client --example request_reply           # against an in-process server
//! SPOOL_SERVER=http://127.0.0.1:7070 cargo run -p spool-client --example request_reply
//! ```

mod common;

use std::time::Duration;

use spool_client::{
    Client, ErrorCode, Record, Request, RequestError, RequesterConfig, Responder, TopicSettings,
};
use tokio::sync::watch;

async fn create(client: &Client, topic: &str, partitions: u32) -> Result<(), RequestError> {
    let settings = TopicSettings { partitions, ..TopicSettings::default() };
    match client.create_topic(topic, settings).await {
        Ok(_) => Ok(()),
        Err(spool_client::AdminError::Rejected(error))
            if error.code == ErrorCode::AlreadyExists =>
        {
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// A responder that answers "price of X" with a made-up price, and fails on anything else.
fn spawn_responder(
    client: &Client,
    name: &'static str,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), RequestError>> {
    let responder = Responder::new(client, "example-quotes", "example-quoters");
    tokio::spawn(responder.run(
        move |request: Request| async move {
            let asked =
                String::from_utf8_lossy(request.value.as_deref().unwrap_or_default()).into_owned();
            let Some(item) = asked.strip_prefix("price of ") else {
                return Err(format!("{name} does not understand {asked:?}"));
            };
            let cents = item.bytes().map(u64::from).sum::<u64>() * 7;
            Ok(format!("{item}: {}.{:02} (answered by {name})", cents / 100, cents % 100)
                .into_bytes())
        },
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        },
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = common::Server::from_env_or_start().await?;
    let client = server.client().await?;
    create(&client, "example-quotes", 2).await?;
    create(&client, "example-quotes.replies", 1).await?;

    let (stop, stopped) = watch::channel(false);
    let responders = [
        spawn_responder(&client, "responder-a", stopped.clone()),
        spawn_responder(&client, "responder-b", stopped),
    ];

    let config = RequesterConfig {
        timeout: Duration::from_secs(10),
        ..RequesterConfig::new("example-quotes.replies")
    };
    let requester = client.requester("example-quotes", config).await?;
    for item in ["apples", "pears", "plums"] {
        let question = format!("price of {item}");
        // The key spreads requests over the request topic's partitions (and responders).
        let reply =
            requester.request(Record::value(question.as_bytes()).with_key(item.as_bytes())).await?;
        println!(
            "{question} -> {}",
            String::from_utf8_lossy(reply.value.as_deref().unwrap_or_default())
        );
    }
    match requester.request(Record::value(b"weather tomorrow")).await {
        Err(RequestError::Failed { message, .. }) => {
            println!("weather tomorrow -> failed: {message}")
        }
        other => println!("weather tomorrow -> unexpected: {other:?}"),
    }

    // Send, forget the connection, and pick the reply up from a new one: it is in the log.
    let pending = requester.send(Record::value(b"price of cherries")).await?;
    requester.close().await?;
    let reconnected = server.client().await?;
    let again = reconnected
        .requester("example-quotes", RequesterConfig::new("example-quotes.replies"))
        .await?;
    let reply = again.wait(&pending, Duration::from_secs(10)).await?;
    println!(
        "price of cherries (after reconnecting, correlation id {}) -> {}",
        pending.correlation_id,
        String::from_utf8_lossy(reply.value.as_deref().unwrap_or_default())
    );
    again.close().await?;

    stop.send(true)?;
    for responder in responders {
        responder.await??;
    }
    server.stop().await;
    Ok(())
}
