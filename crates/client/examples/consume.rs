//! Produces a few records, then replays partition 0 from the earliest offset, decoding the
//! stored batches without copying values.
//!
//! ```sh
//! cargo run -p spool-client --example consume                 # against an in-process server
//! SPOOL_SERVER=http://127.0.0.1:7070 cargo run -p spool-client --example consume
//! ```

mod common;

use spool_client::{ErrorCode, Follow, ProducerConfig, Record, StartAt, TopicSettings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = common::Server::from_env_or_start().await?;
    let client = server.client().await?;
    match client.create_topic("example-events", TopicSettings::default()).await {
        Ok(_) => {}
        Err(spool_client::AdminError::Rejected(error))
            if error.code == ErrorCode::AlreadyExists => {}
        Err(error) => return Err(error.into()),
    }
    let producer = client.producer("example-events", ProducerConfig::default()).await?;
    for n in 0..5 {
        let value = format!("event {n}");
        producer.send(Record::value(value.as_bytes())).await?;
    }
    producer.flush().await?;

    // Replay what is there, then stop (Follow::Live would keep following new records).
    let mut consumer =
        client.subscribe("example-events", 0, StartAt::Earliest, Follow::UntilEnd).await?;
    while let Some(polled) = consumer.poll().await? {
        for record in polled.records() {
            let record = record?;
            let value = record.value.map(String::from_utf8_lossy).unwrap_or_default();
            println!("offset {} at {} ms: {value}", record.offset, record.timestamp_ms);
        }
    }
    println!("next offset to read: {:?}", consumer.position());
    server.stop().await;
    Ok(())
}
