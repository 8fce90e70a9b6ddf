//! kill -9 of the real server: acknowledged records survive a process crash.
//!
//! Four producers write numbered records (`p{producer} s{sequence}`) to two topics, one with
//! fsync `always` and one with fsync every 20 ms; on each topic one producer waits for
//! `acks=all` and one for `acks=leader`, sharing the topic's one partition. At a random moment
//! (after a random number of acknowledgements, plus a random few milliseconds) the test sends
//! the server SIGKILL, restarts it on the same data directory, and the producers go on from
//! their next unsent sequence number. In some rounds a server is also killed while it starts
//! (during recovery, or before it answers). After the last round a consumer reads both
//! partitions and checks, per producer:
//!
//! - every acknowledged record is there exactly once: a process crash loses nothing that was
//!   appended, because the kernel still holds it, so `acks=leader` is as safe as `acks=all`
//!   here (a power loss is another matter: see crates/storage/tests/crash.rs);
//! - no record is there twice, acknowledged or not. The client never resends a record (a
//!   broken stream fails the records in flight as `Disconnected`, whose outcome is unknown,
//!   and the next round starts after the last sequence sent), so a duplicate can only come
//!   from the server;
//! - records are in sequence order.
//!
//! Records sent but not acknowledged before the kill may be there or not.
//!
//! A second test does the same with idempotent producers, which do resend: they keep running
//! through every kill, reconnect to the server restarted on the same port and send unanswered
//! batches again with their original stamps. There no record may be stored twice at all.
//!
//! `SPOOL_KILL_ROUNDS` sets the number of kills (default 40; the idempotent test does half),
//! `SPOOL_KILL_SEED` replays one run; the seed is printed.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::Served;
use spool_client::{
    Acks, Client, Follow, Fsync, ProduceError, ProducerConfig, Record, StartAt, TopicSettings,
};
use spool_storage::sim::Rng;
use tokio::sync::Notify;

const ROUNDS_DEFAULT: u64 = 40;
/// Only a guard against a hang: every wait below ends on an event long before this.
const GUARD: Duration = Duration::from_secs(60);

/// The producers: (topic, acks).
const PRODUCERS: [(&str, Acks); 4] = [
    ("always", Acks::All),
    ("always", Acks::Leader),
    ("interval", Acks::All),
    ("interval", Acks::Leader),
];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}")))
}

/// What one producer sent and had acknowledged in one round.
struct RoundResult {
    next_sequence: u64,
    acknowledged: Vec<u64>,
}

/// Sends records `first..` until the producer fails (the server was killed); returns what was
/// acknowledged. `acks` counts acknowledgements across producers and wakes the killer.
async fn produce(
    url: String,
    producer: usize,
    first: u64,
    acks: Arc<AtomicU64>,
    acked: Arc<Notify>,
) -> RoundResult {
    let (topic, level) = PRODUCERS[producer];
    let mut result = RoundResult { next_sequence: first, acknowledged: Vec::new() };
    // The server may be killed before this producer even connects.
    let Ok(client) = Client::connect(&url).await else { return result };
    let config = ProducerConfig {
        acks: level,
        batch_records_max: 32,
        in_flight_max: 4,
        ..Default::default()
    };
    let Ok(sender) = client.producer(topic, config).await else { return result };
    let mut pending = std::collections::VecDeque::new();
    let mut failed = false;
    while !failed {
        let sequence = result.next_sequence;
        let value = format!("p{producer} s{sequence}");
        match sender.send(Record::value(value.as_bytes())).await {
            Ok(delivery) => {
                result.next_sequence += 1;
                pending.push_back((sequence, delivery));
            }
            Err(_) => failed = true,
        }
        // Settle what is answered, in order; wait for the oldest once 256 are pending.
        while let Some((sequence, delivery)) = pending.front() {
            let outcome = match delivery.try_result() {
                Some(outcome) => outcome,
                None if pending.len() >= 256 || failed => delivery.clone().wait().await,
                None => break,
            };
            match outcome {
                Ok(_) => {
                    result.acknowledged.push(*sequence);
                    acks.fetch_add(1, Ordering::Relaxed);
                    acked.notify_waiters();
                }
                Err(ProduceError::Disconnected(_) | ProduceError::Closed) => failed = true,
                Err(error) => panic!("producer {producer}, sequence {sequence}: {error}"),
            }
            pending.pop_front();
        }
    }
    result
}

/// Reads a partition to its end; per producer, the sequences in offset order.
async fn stored(url: &str, topic: &str) -> HashMap<usize, Vec<u64>> {
    let client = Client::connect(url).await.unwrap();
    let mut consumer =
        client.subscribe(topic, 0, StartAt::Earliest, Follow::UntilEnd).await.unwrap();
    let mut sequences: HashMap<usize, Vec<u64>> = HashMap::new();
    while let Some(polled) = consumer.poll().await.unwrap() {
        for record in polled.records() {
            let record = record.unwrap();
            let value = std::str::from_utf8(record.value.unwrap()).unwrap();
            let (producer, sequence) = value.split_once(' ').unwrap();
            let producer = producer.strip_prefix('p').unwrap().parse().unwrap();
            let sequence = sequence.strip_prefix('s').unwrap().parse().unwrap();
            sequences.entry(producer).or_default().push(sequence);
        }
    }
    sequences
}

#[test]
fn acknowledged_records_survive_kill_9_of_the_server() {
    let seed = env_u64("SPOOL_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1
    });
    let rounds = env_u64("SPOOL_KILL_ROUNDS").unwrap_or(ROUNDS_DEFAULT);
    eprintln!("kill -9 test: SPOOL_KILL_SEED={seed} SPOOL_KILL_ROUNDS={rounds}");
    let mut rng = Rng::new(seed);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let data = tempfile::tempdir().unwrap();

    let served = Served::start(data.path());
    runtime.block_on(async {
        let client = Client::connect(&served.url).await.unwrap();
        for (topic, fsync) in [("always", Fsync::Always), ("interval", Fsync::IntervalMs(20))] {
            let settings = TopicSettings { partitions: 1, fsync, ..Default::default() };
            client.create_topic(topic, settings).await.unwrap();
        }
    });

    let mut served = Some(served);
    let mut next_sequence = [0u64; PRODUCERS.len()];
    let mut acknowledged: Vec<Vec<u64>> = vec![Vec::new(); PRODUCERS.len()];
    for round in 0..rounds {
        if served.is_none() && rng.below(4) == 0 {
            // A kill while the server starts: opening the data directory, recovering what the
            // last kill left, or just ready. The next start recovers from whatever that left.
            let delay = Duration::from_micros(rng.below(50_000));
            let mut starting = common::serve_command(data.path())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            starting.kill().unwrap();
            starting.wait().unwrap();
            eprintln!("round {round}: killed a starting server after {delay:?}");
        }
        let server = served.take().unwrap_or_else(|| Served::start(data.path()));
        // Some rounds kill the server before anything is acknowledged.
        let acks_before_kill = if rng.below(4) == 0 { 0 } else { 1 + rng.below(3000) };
        let delay_after = Duration::from_micros(rng.below(20_000));
        let acks = Arc::new(AtomicU64::new(0));
        let acked = Arc::new(Notify::new());
        let results = runtime.block_on(async {
            let tasks: Vec<_> = (0..PRODUCERS.len())
                .map(|p| {
                    let url = server.url.clone();
                    tokio::spawn(produce(url, p, next_sequence[p], acks.clone(), acked.clone()))
                })
                .collect();
            let enough = async {
                loop {
                    let notified = acked.notified();
                    if acks.load(Ordering::Relaxed) >= acks_before_kill {
                        break;
                    }
                    notified.await;
                }
            };
            tokio::time::timeout(GUARD, enough).await.expect("the producers make progress");
            tokio::time::sleep(delay_after).await;
            server.kill();
            let mut results = Vec::new();
            for task in tasks {
                let result = tokio::time::timeout(GUARD, task).await;
                results.push(result.expect("a producer ends once the server is gone").unwrap());
            }
            results
        });
        let acked_this_round: usize = results.iter().map(|r| r.acknowledged.len()).sum();
        eprintln!(
            "round {round}: killed after {acked_this_round} acknowledgements (aimed at {acks_before_kill}, then {delay_after:?})"
        );
        for (p, result) in results.into_iter().enumerate() {
            next_sequence[p] = result.next_sequence;
            acknowledged[p].extend(result.acknowledged);
        }
    }

    // The last restart, with the server's info log, which reports what recovery found.
    let mut command = common::serve_command(data.path());
    command.env("RUST_LOG", "warn,spool_server=info");
    let served = Served::spawn(command);
    let log = served.log();
    assert!(
        log.contains("0 clean, 2 recovered after a crash, 0 fenced"),
        "the restart reports both partitions recovered: {log}"
    );
    let mut found: HashMap<usize, Vec<u64>> = HashMap::new();
    runtime.block_on(async {
        for topic in ["always", "interval"] {
            found.extend(stored(&served.url, topic).await);
        }
    });
    for (p, acked) in acknowledged.iter().enumerate() {
        let sequences = found.remove(&p).unwrap_or_default();
        let context = format!("producer {p} {:?}, seed {seed}", PRODUCERS[p]);
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "{context}: records out of order or duplicated: {sequences:?}"
        );
        let missing: Vec<_> =
            acked.iter().filter(|s| sequences.binary_search(s).is_err()).collect();
        assert!(missing.is_empty(), "{context}: acknowledged records lost: {missing:?}");
        assert!(
            sequences.iter().all(|&s| s < next_sequence[p]),
            "{context}: a record that was never sent"
        );
        eprintln!(
            "{context}: {} acknowledged, {} stored, {} sent",
            acked.len(),
            sequences.len(),
            next_sequence[p]
        );
    }
    assert!(found.is_empty(), "records of unknown producers: {:?}", found.keys());
    let total: usize = acknowledged.iter().map(Vec::len).sum();
    assert!(total > 0, "seed {seed}: nothing was acknowledged in {rounds} rounds");
    assert!(served.terminate(), "the server stops cleanly after the last restart");
}

/// Idempotent producers: (topic, acks). Each has a topic of its own.
const IDEMPOTENT: [(&str, Acks); 2] = [("idem-always", Acks::All), ("idem-interval", Acks::Leader)];

/// A free loopback address for a server that must come back on the same port.
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn serve_at(data: &std::path::Path, address: &str) -> std::process::Command {
    let mut command = std::process::Command::new(common::SPOOL);
    command.env("RUST_LOG", "warn").args(["serve", "--listen", address, "--data"]).arg(data);
    command
}

/// Sends numbered records on one idempotent producer, which reconnects and resends across
/// the kills, until `stop` is set; returns the sequences acknowledged. When the producer gives
/// up (its retries exhausted) a new one takes over from the next sequence.
async fn produce_idempotent(
    url: String,
    producer: usize,
    acks: Arc<AtomicU64>,
    acked: Arc<Notify>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<u64> {
    let (topic, level) = IDEMPOTENT[producer];
    let config = ProducerConfig {
        acks: level,
        idempotent: true,
        batch_records_max: 32,
        retry_backoff: Duration::from_millis(10),
        retries_max: 100,
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let mut acknowledged = Vec::new();
    let mut sequence = 0u64;
    let mut pending = std::collections::VecDeque::new();
    'producers: while !stop.load(Ordering::Relaxed) {
        // The server may be down: try again shortly, as a client's reconnect would.
        let retry = || tokio::time::sleep(Duration::from_millis(10));
        let Ok(client) = Client::connect(&url).await else {
            retry().await;
            continue;
        };
        let Ok(sender) = client.producer(topic, config.clone()).await else {
            retry().await;
            continue;
        };
        loop {
            let done = stop.load(Ordering::Relaxed);
            if !done {
                let value = format!("p{producer} s{sequence}");
                match sender.send(Record::value(value.as_bytes()).with_partition(0)).await {
                    Ok(delivery) => {
                        pending.push_back((sequence, delivery));
                        sequence += 1;
                    }
                    // The producer gave up and closed: settle what it had, then start over.
                    Err(_) => {
                        while let Some((sequence, delivery)) = pending.pop_front() {
                            if delivery.wait().await.is_ok() {
                                acknowledged.push(sequence);
                            }
                        }
                        continue 'producers;
                    }
                }
            }
            while let Some((sequence, delivery)) = pending.front() {
                let outcome = match delivery.try_result() {
                    Some(outcome) => outcome,
                    None if pending.len() >= 256 || done => delivery.clone().wait().await,
                    None => break,
                };
                let failed = outcome.is_err();
                if outcome.is_ok() {
                    acknowledged.push(*sequence);
                    acks.fetch_add(1, Ordering::Relaxed);
                    acked.notify_waiters();
                }
                pending.pop_front();
                if failed && matches!(outcome, Err(ProduceError::RetriesExhausted { .. })) {
                    // Whatever else is pending fails the same way: settle it, then start over.
                    while let Some((_, delivery)) = pending.pop_front() {
                        assert!(delivery.wait().await.is_err(), "an answer after giving up");
                    }
                    continue 'producers;
                }
            }
            if done {
                sender.close().await.ok();
                break 'producers;
            }
        }
    }
    acknowledged
}

/// Idempotent producers keep sending through every kill: the client reconnects to the server
/// restarted on the same port and resends unanswered batches with their original stamps, and
/// the server, which recovers each producer's recent sequence numbers from the log, stores
/// each batch once. So here no record is stored twice, acknowledged or not, and every
/// acknowledged one is there, in order.
#[test]
fn idempotent_producers_resend_through_kill_9_without_duplicates() {
    let seed = env_u64("SPOOL_KILL_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1
    });
    let rounds = env_u64("SPOOL_KILL_ROUNDS").unwrap_or(ROUNDS_DEFAULT) / 2;
    eprintln!("idempotent kill -9 test: SPOOL_KILL_SEED={seed} SPOOL_KILL_ROUNDS={}", rounds * 2);
    let mut rng = Rng::new(seed);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let data = tempfile::tempdir().unwrap();
    let address = free_address();
    let url = format!("http://{address}");

    let mut served = Served::spawn(serve_at(data.path(), &address));
    runtime.block_on(async {
        let client = Client::connect(&url).await.unwrap();
        for (topic, fsync) in
            [("idem-always", Fsync::Always), ("idem-interval", Fsync::IntervalMs(20))]
        {
            let settings = TopicSettings { partitions: 1, fsync, ..Default::default() };
            client.create_topic(topic, settings).await.unwrap();
        }
    });
    let acks = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Notify::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..IDEMPOTENT.len())
        .map(|p| {
            let (url, acks, acked, stop) = (url.clone(), acks.clone(), acked.clone(), stop.clone());
            runtime.spawn(produce_idempotent(url, p, acks, acked, stop))
        })
        .collect();
    let wait_for_acks = |more: u64| {
        let target = acks.load(Ordering::Relaxed) + more;
        let enough = async {
            loop {
                let notified = acked.notified();
                if acks.load(Ordering::Relaxed) >= target {
                    break;
                }
                notified.await;
            }
        };
        runtime.block_on(async {
            tokio::time::timeout(GUARD, enough).await.expect("the producers make progress")
        });
    };
    for round in 0..rounds {
        wait_for_acks(1 + rng.below(2000));
        std::thread::sleep(Duration::from_micros(rng.below(20_000)));
        served.kill();
        eprintln!("round {round}: killed after {} acknowledgements", acks.load(Ordering::Relaxed));
        served = Served::spawn(serve_at(data.path(), &address));
    }
    // The producers get through to the last server, then stop and settle what is pending.
    wait_for_acks(100);
    stop.store(true, Ordering::Relaxed);
    let acknowledged: Vec<Vec<u64>> = runtime.block_on(async {
        let mut acknowledged = Vec::new();
        for task in tasks {
            acknowledged.push(tokio::time::timeout(GUARD, task).await.expect("settled").unwrap());
        }
        acknowledged
    });

    let mut found: HashMap<usize, Vec<u64>> = HashMap::new();
    runtime.block_on(async {
        for (topic, _) in IDEMPOTENT {
            found.extend(stored(&served.url, topic).await);
        }
    });
    for (p, acked) in acknowledged.iter().enumerate() {
        let sequences = found.remove(&p).unwrap_or_default();
        let context = format!("idempotent producer {p} {:?}, seed {seed}", IDEMPOTENT[p]);
        let mut sorted = sequences.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), sequences.len(), "{context}: a record stored twice");
        assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{context}: records out of order");
        let missing: Vec<_> =
            acked.iter().filter(|s| sequences.binary_search(s).is_err()).collect();
        assert!(missing.is_empty(), "{context}: acknowledged records lost: {missing:?}");
        eprintln!("{context}: {} acknowledged, {} stored", acked.len(), sequences.len());
    }
    assert!(served.terminate());
}
