//! A bounded load test on loopback: 50 producers and 500 subscribers against one in-process
//! server. Every subscriber that stays gets every record of its partition, in order, once;
//! some subscribers are slow and some vanish mid-stream. Afterwards the server holds no
//! subscriber buffers, has closed every connection, and its memory stayed within a generous
//! bound: this checks that nothing grows with the number of clients beyond the limits, not
//! how fast anything is.
//!
//! The default run is short (200 records per producer, about 6 s in a debug build on 2
//! cores). A longer one, with the same memory ceiling:
//! `SPOOL_LOAD_RECORDS=5000 cargo test --release --test load -- --nocapture`
//! (records per producer, a multiple of 10). Measured here in debug: peak RSS 94 MB at 200
//! records per producer, 112 MB at 1000, so memory does not grow with the records sent.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{TestServer, record};
use spool_proto::v1::fsync_policy::{Always, Policy};
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::start_position::{Earliest, Position};
use spool_proto::v1::{
    Acks, Encoding, ProduceRequest, Record, RecordList, StartPosition, SubscribeRequest,
};
use spool_storage::batch::BatchIter;
use tokio::task::JoinSet;

const PRODUCERS: usize = 50;
const SUBSCRIBERS: usize = 500;
const PARTITIONS: u32 = 5;
/// Records each producer sends, in requests of this many.
const RECORDS_DEFAULT: u64 = 200;
const RECORDS_PER_REQUEST: u64 = 10;
const VALUE_BYTES: usize = 200;
/// Subscribers share connections, as clients of one process would (a connection carries at
/// most 256 streams).
const SUBSCRIBER_CONNECTIONS: usize = 10;
/// Every tenth subscriber is slow, every tenth (offset by five) vanishes halfway.
const SLOW_EVERY: usize = 10;
/// The process's resident memory may grow by at most this much during the run: a sanity
/// bound (a server that buffered every record for every subscriber would need about
/// SUBSCRIBERS * records * VALUE_BYTES, 1 GB at the default size).
const RSS_GROWTH_BYTES_MAX: u64 = 512 * 1024 * 1024;
/// Only a guard against a hang.
const GUARD: Duration = Duration::from_secs(120);

fn vm_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// "p{producer} s{sequence}" padded to VALUE_BYTES.
fn value(producer: usize, sequence: u64) -> Bytes {
    let mut value = format!("p{producer} s{sequence} ").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    Bytes::from(value)
}

fn parse(value: &[u8]) -> (usize, u64) {
    let text = std::str::from_utf8(value).unwrap();
    let mut words = text.split(' ');
    let producer = words.next().unwrap().strip_prefix('p').unwrap().parse().unwrap();
    let sequence = words.next().unwrap().strip_prefix('s').unwrap().parse().unwrap();
    (producer, sequence)
}

/// Reads a partition from the start until `expected` records arrived (or half of them, for
/// a subscriber that vanishes), checking per producer that sequences come in order, once.
async fn subscribe(channel: tonic::transport::Channel, subscriber: usize, expected: u64) -> u64 {
    let partition = subscriber as u32 % PARTITIONS;
    let mut consumer = spool_proto::v1::consume_service_client::ConsumeServiceClient::new(channel)
        .max_decoding_message_size(spool_proto::limits::RESPONSE_BYTES_MAX);
    let mut stream = consumer
        .subscribe(SubscribeRequest {
            topic: "load".into(),
            partition,
            start: Some(StartPosition { position: Some(Position::Earliest(Earliest {})) }),
            encoding: Encoding::RawBatch as i32,
            stop_at_end: false,
        })
        .await
        .unwrap()
        .into_inner();
    let slow = subscriber.is_multiple_of(SLOW_EVERY);
    let vanishes = subscriber % SLOW_EVERY == 5;
    let stop_at = if vanishes { expected / 2 } else { expected };
    let mut next_sequence = vec![0u64; PRODUCERS];
    let mut next_offset = 0u64;
    while next_offset < stop_at {
        let message = stream.message().await.unwrap().expect("the subscription goes on");
        for batch in BatchIter::new(&message.raw_batches) {
            for record in batch.unwrap().records().iter() {
                let record = record.unwrap();
                if record.offset.0 < next_offset {
                    continue; // a batch may start before the position asked for
                }
                assert_eq!(record.offset.0, next_offset, "subscriber {subscriber}: a gap");
                next_offset += 1;
                let (producer, sequence) = parse(record.value.unwrap());
                assert_eq!(
                    sequence, next_sequence[producer],
                    "subscriber {subscriber}, partition {partition}, producer {producer}"
                );
                next_sequence[producer] += 1;
            }
        }
        if slow {
            // A slow reader: the server must hold it to its limit, not buffer for it.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    if !vanishes {
        let per_producer = expected / (PRODUCERS as u64 / u64::from(PARTITIONS));
        for (producer, &next) in next_sequence.iter().enumerate() {
            if producer as u32 % PARTITIONS == partition {
                assert_eq!(next, per_producer, "subscriber {subscriber}: producer {producer}");
            }
        }
    }
    // A vanishing subscriber may have read past its halfway mark within its last message.
    next_offset.min(stop_at)
}

async fn produce(server: Arc<TestServer>, producer: usize, records: u64) {
    let mut client = server.producer().await;
    let partition = producer as u32 % PARTITIONS;
    let mut sequence = 0;
    while sequence < records {
        let batch: Vec<Record> = (sequence..sequence + RECORDS_PER_REQUEST)
            .map(|s| Record { value: Some(value(producer, s)), ..record("") })
            .collect();
        sequence += RECORDS_PER_REQUEST;
        client
            .produce(ProduceRequest {
                correlation_id: 0,
                topic: "load".into(),
                partition: Some(partition),
                acks: Acks::All as i32,
                payload: Some(Payload::Records(RecordList { records: batch })),
                producer: None,
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_producers_and_five_hundred_subscribers_lose_nothing_and_stay_bounded() {
    let records: u64 = std::env::var("SPOOL_LOAD_RECORDS")
        .map(|v| v.parse().expect("SPOOL_LOAD_RECORDS is a number"))
        .unwrap_or(RECORDS_DEFAULT);
    assert!(records.is_multiple_of(RECORDS_PER_REQUEST));
    let data = tempfile::tempdir().unwrap();
    let files_before = open_files();
    let rss_before = vm_rss_bytes();
    let server = Arc::new(TestServer::start(data.path()).await);
    server.create_topic("load", PARTITIONS, Policy::Always(Always {})).await;
    let metrics = server.metrics().clone();

    // Samples the peak of resident memory and of subscriber buffers while the load runs.
    let peak_rss = Arc::new(AtomicU64::new(rss_before));
    let peak_buffered = Arc::new(AtomicU64::new(0));
    let peak_files = Arc::new(AtomicU64::new(files_before as u64));
    let sampler = {
        let (peak_rss, peak_buffered, peak_files, metrics) =
            (peak_rss.clone(), peak_buffered.clone(), peak_files.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                peak_rss.fetch_max(vm_rss_bytes(), Ordering::Relaxed);
                peak_files.fetch_max(open_files() as u64, Ordering::Relaxed);
                peak_buffered.fetch_max(metrics.subscriber_buffered_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let per_partition = records * (PRODUCERS as u64 / u64::from(PARTITIONS));
    let mut channels = Vec::new();
    for _ in 0..SUBSCRIBER_CONNECTIONS {
        channels.push(server.channel().await);
    }
    let mut subscribers = JoinSet::new();
    for s in 0..SUBSCRIBERS {
        let channel = channels[s % SUBSCRIBER_CONNECTIONS].clone();
        subscribers.spawn(subscribe(channel, s, per_partition));
    }
    let mut producers = JoinSet::new();
    for p in 0..PRODUCERS {
        producers.spawn(produce(server.clone(), p, records));
    }
    let run = async {
        while let Some(done) = producers.join_next().await {
            done.unwrap();
        }
        let mut read = 0;
        while let Some(done) = subscribers.join_next().await {
            read += done.unwrap();
        }
        read
    };
    let read = tokio::time::timeout(GUARD, run).await.expect("the load finishes");
    sampler.abort();
    drop(channels);

    let vanished = SUBSCRIBERS / SLOW_EVERY;
    let expected_read =
        (SUBSCRIBERS - vanished) as u64 * per_partition + vanished as u64 * (per_partition / 2);
    assert_eq!(read, expected_read);
    // Once every subscription has ended, the server holds nothing for any of them.
    tokio::time::timeout(
        GUARD,
        metrics.wait_for(|m| {
            m.subscriber_buffered_bytes() == 0 && m.subscribers_waiting_on_client() == 0
        }),
    )
    .await
    .expect("subscriber buffers are released");
    let peak_buffered = peak_buffered.load(Ordering::Relaxed);
    let buffered_max = SUBSCRIBERS as u64 * spool_server::limits::SUBSCRIBER_BUFFERED_BYTES_MAX;
    assert!(peak_buffered <= buffered_max, "{peak_buffered} buffered, over {buffered_max}");
    let peak_rss = peak_rss.load(Ordering::Relaxed);
    let growth = peak_rss.saturating_sub(rss_before);
    eprintln!(
        "load: {PRODUCERS} producers x {records} records, {SUBSCRIBERS} subscribers; read {read}; \
         peak subscriber buffers {peak_buffered} bytes; RSS {rss_before} -> peak {peak_rss} bytes; \
         open files {files_before} -> peak {}",
        peak_files.load(Ordering::Relaxed),
    );
    assert!(growth <= RSS_GROWTH_BYTES_MAX, "resident memory grew by {growth} bytes");
    // Both ends of every connection are in this process; beyond those, a few dozen files (the
    // partitions' segments and indexes, the listener, the runtime): nothing per subscriber.
    let connections = PRODUCERS + SUBSCRIBER_CONNECTIONS + 1;
    let files_max = files_before + 2 * connections + 50;
    let peak_files = peak_files.load(Ordering::Relaxed) as usize;
    assert!(peak_files <= files_max, "{peak_files} files open at the peak, over {files_max}");

    // Every connection and file the run opened is closed once the server stops.
    Arc::into_inner(server).expect("no task holds the server").shutdown().await;
    let files_after = open_files();
    assert!(
        files_after <= files_before + 2,
        "{files_before} open files before the run, {files_after} after"
    );
}
