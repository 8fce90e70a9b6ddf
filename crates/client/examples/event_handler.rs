//! An event-driven handler: "ship" each order event, retrying a flaky failure and moving an
//! order that can never ship to a dead-letter topic, whose record says where it came from and
//! why.
//!
//! ```sh
//! cargo run -p spool-client --example event_handler           # against an in-process server
//! SPOOL_SERVER=http://127.0.0.1:7070 cargo run -p spool-client --example event_handler
//! ```

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use spool_client::{
    Client, ErrorCode, Event, Follow, GroupConfig, HandlerConfig, ProducerConfig, Record, StartAt,
    TopicSettings, run_handler,
};
use tokio::sync::Notify;

async fn create(client: &Client, topic: &str) -> Result<(), spool_client::AdminError> {
    match client.create_topic(topic, TopicSettings::default()).await {
        Ok(_) => Ok(()),
        Err(spool_client::AdminError::Rejected(error))
            if error.code == ErrorCode::AlreadyExists =>
        {
            Ok(())
        }
        Err(error) => Err(error),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = common::Server::from_env_or_start().await?;
    let client = server.client().await?;
    create(&client, "example-orders").await?;
    create(&client, "example-orders.dlq").await?;
    // A unique marker ends this run once its event is handled (the topic may hold earlier
    // runs' events, which a new group reads too).
    let marker = format!("end-{}", std::process::id());
    let producer = client.producer("example-orders", ProducerConfig::default()).await?;
    for order in ["order-1", "order-2 (flaky)", "order-3 (no address)", "order-4", &marker] {
        producer.send(Record::value(order.as_bytes()).with_key(b"shop-1")).await?;
    }
    producer.close().await?;

    let done = Arc::new(Notify::new());
    let flaky_attempts = Arc::new(AtomicU32::new(0));
    let handler = {
        let (done, marker) = (done.clone(), marker.clone());
        move |event: Event| {
            let (done, marker, flaky_attempts) =
                (done.clone(), marker.clone(), flaky_attempts.clone());
            async move {
                let order =
                    String::from_utf8_lossy(event.record.value.as_deref().unwrap_or_default())
                        .into_owned();
                if order.contains("no address") {
                    return Err(format!("{order}: cannot ship without an address"));
                }
                if order.contains("flaky") && flaky_attempts.fetch_add(1, Ordering::Relaxed) == 0 {
                    println!(
                        "{order}: the carrier timed out (attempt {}), will retry",
                        event.attempt
                    );
                    return Err("carrier timeout".to_owned());
                }
                if order == marker {
                    done.notify_one();
                } else {
                    println!("{order}: shipped (attempt {})", event.attempt);
                }
                Ok(())
            }
        }
    };
    let group = format!("example-shipping-{}", std::process::id());
    let config = HandlerConfig {
        attempts_max: 3,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        ..HandlerConfig::new(GroupConfig::new(&group, &["example-orders"]), "example-orders.dlq")
    };
    let stats = run_handler(&client, config, handler, done.notified()).await?;
    println!("{stats:?}");

    // The dead-letter topic's records, with their headers.
    let mut dead =
        client.subscribe("example-orders.dlq", 0, StartAt::Earliest, Follow::UntilEnd).await?;
    while let Some(polled) = dead.poll().await? {
        for record in polled.records() {
            let record = record?;
            println!("dead letter: {}", String::from_utf8_lossy(record.value.unwrap_or_default()));
            for header in record.headers() {
                let value = String::from_utf8_lossy(header.value.unwrap_or_default());
                println!("  {}: {value}", String::from_utf8_lossy(header.key));
            }
        }
    }
    server.stop().await;
    Ok(())
}
