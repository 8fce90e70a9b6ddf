//! Produces a few records durably and prints where each was stored.
//!
//! ```sh
//! cargo run -p spool-client --example produce                 # against an in-process server
//! SPOOL_SERVER=http://127.0.0.1:7070 cargo run -p spool-client --example produce
//! ```

mod common;

use spool_client::{Acks, ErrorCode, Header, ProducerConfig, Record, TopicSettings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = common::Server::from_env_or_start().await?;
    let client = server.client().await?;

    // Create the topic, or use it if it exists already.
    match client
        .create_topic("example-orders", TopicSettings { partitions: 2, ..Default::default() })
        .await
    {
        Ok(_) => {}
        Err(spool_client::AdminError::Rejected(error))
            if error.code == ErrorCode::AlreadyExists => {}
        Err(error) => return Err(error.into()),
    }

    // Durable by default: acks=all on an fsync `always` topic.
    let config = ProducerConfig { acks: Acks::All, ..ProducerConfig::default() };
    let producer = client.producer("example-orders", config).await?;
    let mut deliveries = Vec::new();
    let headers = [Header::new("source", Some(b"example"))];
    for (user, item) in [("alice", "book"), ("bob", "lamp"), ("alice", "pen")] {
        let value = format!("{user} ordered a {item}");
        let record =
            Record::value(value.as_bytes()).with_key(user.as_bytes()).with_headers(&headers);
        deliveries.push((value.clone(), producer.send(record).await?));
    }
    for (value, delivery) in deliveries {
        let stored = delivery.wait().await?;
        println!(
            "{value:?} -> partition {} offset {}",
            stored.partition,
            stored.offset.unwrap_or_default()
        );
    }
    producer.close().await?;
    server.stop().await;
    Ok(())
}
