//! A batch damaged on disk after a clean shutdown, in the middle of a segment, where start-up
//! does not look (it trusts what a clean shutdown vouches for and checks only each segment's
//! tail). Every reader (fetch, subscribe, a group member, the browser listener's events and
//! history) gets every record before the damage, then DATA_LOSS naming the topic, partition,
//! offset and file position; the server counts the damaged batch once, however often it is
//! met.

mod common;

use common::http::Browserside;
use common::{TestServer, always, record, value};
use reqwest::StatusCode;
use spool_client::{ErrorCode, GroupConfig, GroupError, GroupEvent};
use spool_proto::v1::start_position::{Earliest, Position};
use spool_proto::v1::{StartPosition, SubscribeRequest};
use spool_storage::batch::{BATCH_HEADER_BYTES, peek_prefix};
use tonic::Code;

const BATCHES: usize = 50;
const RECORDS_PER_BATCH: usize = 100;
/// The batch whose record is damaged: 2,500 intact records come before it.
const VICTIM: usize = 25;

/// A data directory holding topic `t` (one partition of 50 batches of 100 records, values
/// `record N`), closed cleanly, with a byte of a record in batch 25 flipped.
struct Damaged {
    /// Each test damages its own topic: the Prometheus recorder is shared by the process.
    topic: &'static str,
    data: tempfile::TempDir,
    /// The offset the damaged batch starts at, and its byte position in the segment file.
    offset: u64,
    position: usize,
}

impl Damaged {
    async fn new(topic: &'static str) -> Damaged {
        let data = tempfile::tempdir().unwrap();
        let server = TestServer::start(data.path()).await;
        server.create_topic(topic, 1, always()).await;
        for batch in 0..BATCHES {
            let first = batch * RECORDS_PER_BATCH;
            let records = (first..first + RECORDS_PER_BATCH)
                .map(|i| record(&format!("record {i}")))
                .collect();
            server.produce(topic, Some(0), records).await.unwrap();
        }
        server.shutdown().await;
        let segment = data.path().join(format!("topics/{topic}/0/00000000000000000000.log"));
        let mut bytes = std::fs::read(&segment).unwrap();
        let mut positions = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            positions.push(at);
            at += peek_prefix(&bytes[at..]).unwrap().1 as usize;
        }
        assert_eq!(positions.len(), BATCHES, "one batch per produce request");
        let position = positions[VICTIM];
        bytes[position + BATCH_HEADER_BYTES + 10] ^= 0xff;
        std::fs::write(&segment, bytes).unwrap();
        Damaged { topic, data, offset: (VICTIM * RECORDS_PER_BATCH) as u64, position }
    }

    /// The values of the records before the damage.
    fn intact(&self) -> Vec<String> {
        (0..self.offset).map(|i| format!("record {i}")).collect()
    }

    #[track_caller]
    fn assert_named(&self, message: &str) {
        let offset = format!("offset {} cannot be read", self.offset);
        let position = format!("byte {} of ", self.position);
        let partition = format!("partition 0 of topic {}", self.topic);
        for part in [&partition, &offset, &position, "00000000000000000000.log"] {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }
}

#[tokio::test]
async fn grpc_readers_get_every_record_before_a_damaged_batch_then_data_loss() {
    let prometheus = spool_server::metrics::install_prometheus().unwrap();
    let damaged = Damaged::new("t").await;
    let server = TestServer::start(damaged.data.path()).await;

    // Subscribe from the earliest offset.
    let mut stream = server
        .consumer()
        .await
        .subscribe(SubscribeRequest {
            topic: "t".into(),
            partition: 0,
            start: Some(StartPosition { position: Some(Position::Earliest(Earliest {})) }),
            encoding: 0,
            stop_at_end: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut subscribed = Vec::new();
    let status = loop {
        match stream.message().await {
            Ok(Some(message)) => {
                subscribed.extend(message.records.iter().map(value).map(String::from))
            }
            Ok(None) => panic!("the subscription ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(subscribed, damaged.intact());
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    damaged.assert_named(status.message());

    // Fetch, a chunk at a time.
    let mut fetched = Vec::new();
    let mut offset = 0;
    let status = loop {
        match server.fetch("t", 0, offset).await {
            Ok(answer) => {
                fetched.extend(answer.records.iter().map(value).map(String::from));
                offset = answer.next_offset;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(fetched, damaged.intact());
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    damaged.assert_named(status.message());

    // A consumer-group member.
    let client = spool_client::Client::connect(server.url()).await.unwrap();
    let mut member = client.group_consumer(GroupConfig::new("g", &["t"])).await.unwrap();
    let mut consumed = Vec::new();
    let error = loop {
        match member.poll().await {
            Ok(GroupEvent::Assigned(_)) => {}
            Ok(GroupEvent::Records(records)) => consumed.extend(
                records
                    .records
                    .iter()
                    .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()),
            ),
            Err(error) => break error,
        }
    };
    assert_eq!(consumed, damaged.intact());
    let GroupError::Rejected(error) = error else { panic!("expected DATA_LOSS, got {error:?}") };
    assert_eq!(error.code, ErrorCode::DataLoss, "{error}");
    damaged.assert_named(&error.message);

    // Met by every reader (and by the producer-state rebuild at start), counted once.
    assert_eq!(server.metrics().damaged_batches(), 1);
    let series = prometheus
        .render()
        .lines()
        .find(|line| {
            line.starts_with("spool_damaged_batches_total{") && line.contains("topic=\"t\"")
        })
        .map(str::to_owned);
    assert!(series.as_deref().is_some_and(|line| line.ends_with(" 1")), "{series:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_browser_listener_serves_every_record_before_a_damaged_batch_then_the_error() {
    let damaged = Damaged::new("b").await;
    let browser = Browserside::open(damaged.data.path()).await;

    let mut events = browser.sse("/v1/topics/b/partitions/0/events?from=earliest", None).await;
    let received: Vec<String> = events
        .records(damaged.offset as usize)
        .await
        .iter()
        .map(|event| event.data["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(received, damaged.intact());
    let end = events.next().await;
    assert_eq!(end.kind.as_deref(), Some("spool-error"), "{end:?}");
    assert_eq!(end.data["status"], 503, "{end:?}");
    damaged.assert_named(end.data["error"].as_str().unwrap());

    // History pages: the one before the damage is whole, the one at it is the error.
    let before = format!("/v1/topics/b/partitions/0/records?offset={}", damaged.offset - 100);
    let (status, page) = browser.get(&before).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["records"].as_array().unwrap().len(), 100, "{page}");
    let at = format!("/v1/topics/b/partitions/0/records?offset={}", damaged.offset);
    let (status, error) = browser.get(&at).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    damaged.assert_named(error["error"].as_str().unwrap());
    assert_eq!(browser.server.metrics().damaged_batches(), 1);
    browser.server.shutdown().await;
}

/// A scrub reads every partition and finds the damage (here the start met it too, rebuilding
/// the idempotent producers from the log's tail): the damaged batch is counted once, however
/// often a scrub meets it.
#[tokio::test]
async fn a_scrub_finds_the_damaged_partition() {
    let prometheus = spool_server::metrics::install_prometheus().unwrap();
    let damaged = Damaged::new("scrubbed").await;
    let server = TestServer::start(damaged.data.path()).await;
    assert_eq!(server.scrub().await, 1, "one damaged partition");
    assert_eq!(server.metrics().damaged_batches(), 1);
    assert_eq!(server.scrub().await, 1, "still damaged");
    assert_eq!(server.metrics().damaged_batches(), 1, "counted once");

    // The scrub's own series: the last pass's damaged partitions, the passes, the bytes.
    let rendered = prometheus.render();
    let value = |name: &str| -> f64 {
        let line = rendered.lines().find(|line| line.starts_with(&format!("{name} ")));
        let line = line.unwrap_or_else(|| panic!("{name} missing:\n{rendered}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("spool_scrub_damaged_partitions"), 1.0);
    assert!(value("spool_scrub_passes_total") >= 2.0);
    assert!(value("spool_scrub_bytes_total") > 0.0);
}
