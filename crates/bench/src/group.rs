//! `spool bench group`: consumers in one consumer group share a pre-produced topic; how fast
//! the group consumes it, and how long a partition pauses when a rebalance moves it.
//!
//! 1. A topic of `--partitions` is filled with `--messages` (not timed).
//! 2. `--consumers` members of a new group ([`spool_client::GroupConsumer`], automatic
//!    commits) join at once and consume until every partition is read to its end. The clock
//!    runs from before the first join to the last record.
//! 3. Once `--rebalance-at` of the messages are consumed (members join one by one at the
//!    start, so the group has rebalanced before; that is not measured), a member joins (`join`) or the first
//!    member leaves (`leave`), and the partitions that move pause. A partition's pause is the
//!    time from its revocation reaching its old owner (or the old owner being told to leave)
//!    to the first message of it reaching the new owner: the old owner's commit and
//!    acknowledgement, the new assignment, the new owner's start and one read.
//!
//! Records delivered twice (a commit that did not cover them before the move) are counted,
//! not hidden.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use spool_client::{
    Client, GroupConfig, GroupConsumer, GroupEvent, GroupRecords, ProducerConfig, Record,
    TopicSettings,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::BenchError;
use crate::machine::Machine;
use crate::payload::{PayloadKind, Payloads};
use crate::spool::InProcess;

/// How long the group may take to consume what is left once the last member stopped making
/// progress; only a guard against a hang.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// `spool bench group`
#[derive(Debug, Clone, Args)]
pub struct GroupArgs {
    /// Benchmark a running Spool server at this URL; without it the harness starts one
    /// in-process on a temporary directory.
    #[arg(long, env = "SPOOL_BENCH_SERVER")]
    pub server: Option<String>,
    /// Where the in-process server's temporary directory is made.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Members of the group at the start.
    #[arg(long, default_value_t = 3)]
    pub consumers: u32,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 12)]
    pub partitions: u32,
    /// Messages produced before the group starts.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Bytes of each message's value.
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// What changes the group while it consumes.
    #[arg(long, value_enum, default_value = "join")]
    pub rebalance: Rebalance,
    /// The fraction of the messages consumed before the rebalance, 0..1.
    #[arg(long, default_value_t = 0.3)]
    pub rebalance_at: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rebalance {
    /// One more member joins.
    Join,
    /// The first member leaves (committing what it consumed).
    Leave,
    /// Nothing changes.
    None,
}

/// What `spool bench group` measured.
#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    pub consumers: u32,
    pub partitions: u32,
    pub messages: u64,
    pub message_size: usize,
    pub rebalance: Rebalance,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// Records delivered more than once.
    pub redelivered: u64,
    /// Partitions that changed owner.
    pub moved_partitions: usize,
    /// Per moved partition, the pause in milliseconds, sorted.
    pub pauses_ms: Vec<f64>,
    pub machine: Machine,
}

/// What every member reports into.
#[derive(Debug, Default)]
struct Progress {
    /// Per partition: the next offset not yet delivered, and its last owner.
    partitions: BTreeMap<u32, Track>,
    /// Partitions on their way to a new owner: since when, and from which member.
    moving: BTreeMap<u32, (Instant, u32)>,
    delivered: u64,
    redelivered: u64,
    pauses: Vec<Duration>,
    /// Handovers are measured only between the rebalance the harness causes and the end
    /// (not those of members joining one by one at the start, or stopping at the end).
    measuring: bool,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    next_offset: u64,
    owner: u32,
}

impl Progress {
    /// Notes one message (records, or only "caught up"); returns the unique messages
    /// delivered so far.
    fn delivered(&mut self, member: u32, records: &GroupRecords, at: Instant) -> u64 {
        if let Some(&(since, from)) = self.moving.get(&records.partition)
            && from != member
        {
            self.pauses.push(at - since);
            self.moving.remove(&records.partition);
        }
        let count = records.records.len() as u64;
        let first = records.records.first().map_or(records.next_offset, |r| r.offset);
        self.delivered += count;
        let track = self
            .partitions
            .entry(records.partition)
            .or_insert(Track { next_offset: 0, owner: member });
        self.redelivered += track.next_offset.saturating_sub(first).min(count);
        *track = Track { next_offset: track.next_offset.max(records.next_offset), owner: member };
        self.unique()
    }

    /// Notes that `partitions` are leaving `member`.
    fn moving(&mut self, member: u32, partitions: impl IntoIterator<Item = u32>, at: Instant) {
        if !self.measuring {
            return;
        }
        for partition in partitions {
            self.moving.insert(partition, (at, member));
        }
    }

    fn owned_by(&self, member: u32) -> Vec<u32> {
        self.partitions.iter().filter(|(_, t)| t.owner == member).map(|(p, _)| *p).collect()
    }

    fn unique(&self) -> u64 {
        self.partitions.values().map(|t| t.next_offset).sum()
    }
}

fn locked(progress: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `spool bench group` and prints its result.
pub async fn run(args: GroupArgs) -> Result<(), BenchError> {
    let result = measure(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&result).expect("serializable"));
    } else {
        print!("{}", table(&result));
    }
    Ok(())
}

fn check(args: &GroupArgs) -> Result<(), BenchError> {
    let bad = |what: &str| Err(BenchError::BadOption(what.to_owned()));
    if args.consumers == 0 || args.partitions == 0 || args.messages == 0 {
        return bad("--consumers, --partitions and --messages must be at least 1");
    }
    if !(0.0..1.0).contains(&args.rebalance_at) {
        return bad("--rebalance-at is a fraction from 0 up to (not including) 1");
    }
    if args.rebalance == Rebalance::Leave && args.consumers < 2 {
        return bad("--rebalance leave needs --consumers 2 or more");
    }
    Ok(())
}

/// Fills a topic, runs the group over it, and measures.
pub async fn measure(args: &GroupArgs) -> Result<GroupResult, BenchError> {
    check(args)?;
    let data_root = args.data.clone().unwrap_or_else(std::env::temp_dir);
    let in_process = match &args.server {
        Some(_) => None,
        None => Some(InProcess::start(&data_root).await?),
    };
    let url = match (&args.server, &in_process) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.url().to_owned(),
        (None, None) => unreachable!("a server is started when none is named"),
    };
    let client = Client::connect(&url).await?;
    let topic = format!("spool-bench-group-{}", std::process::id());
    let settings = TopicSettings { partitions: args.partitions, ..TopicSettings::default() };
    client.create_topic(&topic, settings).await?;
    let measured = match fill(&client, &topic, args).await {
        Ok(()) => consume(&client, &topic, args).await,
        Err(error) => Err(error),
    };
    let deleted = client.delete_topic(&topic).await;
    drop(client);
    if let Some(server) = in_process {
        server.stop().await?;
    }
    let (seconds, progress) = measured?;
    deleted?;
    let mut pauses_ms: Vec<f64> = progress.pauses.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    pauses_ms.sort_by(f64::total_cmp);
    let bytes = args.messages * args.message_size as u64;
    Ok(GroupResult {
        consumers: args.consumers,
        partitions: args.partitions,
        messages: args.messages,
        message_size: args.message_size,
        rebalance: args.rebalance,
        seconds,
        msgs_per_sec: args.messages as f64 / seconds.max(1e-9),
        mb_per_sec: bytes as f64 / 1e6 / seconds.max(1e-9),
        redelivered: progress.redelivered,
        moved_partitions: pauses_ms.len(),
        pauses_ms,
        machine: Machine::describe(&data_root),
    })
}

/// Produces `--messages` round-robin over the partitions, in batches of 1000.
async fn fill(client: &Client, topic: &str, args: &GroupArgs) -> Result<(), BenchError> {
    let config = ProducerConfig {
        batch_records_max: 1000,
        batch_bytes_max: (1000 * (args.message_size + 64) + 1024).min(8 * 1024 * 1024),
        linger: Duration::from_millis(5),
        ..ProducerConfig::default()
    };
    let producer = client.producer(topic, config).await?;
    let values = Payloads::new(PayloadKind::Pattern, args.message_size, 1000);
    let value = values.get(0);
    for n in 0..args.messages {
        let partition = (n % u64::from(args.partitions)) as u32;
        producer.send(Record::value(value).with_partition(partition)).await?;
    }
    producer.close().await?;
    Ok(())
}

/// Runs the group until every message is delivered: (seconds, progress).
async fn consume(
    client: &Client,
    topic: &str,
    args: &GroupArgs,
) -> Result<(f64, Progress), BenchError> {
    let group = format!("{topic}-consumers");
    let progress = Arc::new(Mutex::new(Progress::default()));
    let (unique_tx, mut unique) = watch::channel(0u64);
    let unique_tx = Arc::new(unique_tx);
    let started = Instant::now();
    let mut members = Vec::new();
    for index in 0..args.consumers {
        members.push(Member::spawn(client, topic, &group, index, &progress, &unique_tx));
    }
    let total = args.messages;
    let rebalance_at = (total as f64 * args.rebalance_at) as u64;
    let mut rebalanced = args.rebalance == Rebalance::None;
    loop {
        let reached = *unique.borrow_and_update();
        if reached >= total {
            break;
        }
        if !rebalanced && reached >= rebalance_at {
            rebalanced = true;
            locked(&progress).measuring = true;
            match args.rebalance {
                Rebalance::Join => members.push(Member::spawn(
                    client,
                    topic,
                    &group,
                    args.consumers,
                    &progress,
                    &unique_tx,
                )),
                Rebalance::Leave => {
                    let leaving = locked(&progress).owned_by(0);
                    locked(&progress).moving(0, leaving, Instant::now());
                    members.remove(0).stop().await?;
                }
                Rebalance::None => {}
            }
            continue;
        }
        match tokio::time::timeout(STALL_TIMEOUT, unique.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => unreachable!("the sender is held here"),
            Err(_) => {
                return Err(BenchError::Timeout(format!(
                    "the group delivered {reached} of {total} messages and then nothing for {}s",
                    STALL_TIMEOUT.as_secs()
                )));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    locked(&progress).measuring = false;
    for member in members {
        member.stop().await?;
    }
    let progress = std::mem::take(&mut *locked(&progress));
    Ok((seconds, progress))
}

/// One member's task.
struct Member {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), BenchError>>,
}

impl Member {
    fn spawn(
        client: &Client,
        topic: &str,
        group: &str,
        index: u32,
        progress: &Arc<Mutex<Progress>>,
        unique: &Arc<watch::Sender<u64>>,
    ) -> Member {
        let (stop, stopped) = oneshot::channel();
        let config = GroupConfig::new(group, &[topic]);
        let (client, progress, unique) = (client.clone(), progress.clone(), unique.clone());
        let task = tokio::spawn(async move {
            let consumer = client.group_consumer(config).await.map_err(group_error)?;
            consume_until(consumer, index, stopped, &progress, &unique).await
        });
        Member { stop, task }
    }

    /// Stops the member: it commits and leaves.
    async fn stop(self) -> Result<(), BenchError> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| BenchError::Server(format!("a member task failed: {e}")))?
    }
}

async fn consume_until(
    mut consumer: GroupConsumer,
    index: u32,
    mut stopped: oneshot::Receiver<()>,
    progress: &Mutex<Progress>,
    unique: &watch::Sender<u64>,
) -> Result<(), BenchError> {
    loop {
        let event = tokio::select! {
            event = consumer.poll() => event.map_err(group_error)?,
            _ = &mut stopped => break,
        };
        match event {
            GroupEvent::Records(records) => {
                let reached = locked(progress).delivered(index, &records, Instant::now());
                unique.send_replace(reached);
            }
            GroupEvent::Assigned(assignment) => {
                let revoked = assignment.revoked.iter().map(|p| p.partition);
                locked(progress).moving(index, revoked, Instant::now());
            }
        }
    }
    consumer.close().await.map_err(group_error)
}

fn group_error(error: spool_client::GroupError) -> BenchError {
    BenchError::Server(format!("a group member failed: {error}"))
}

/// The result as a few lines of text.
pub fn table(result: &GroupResult) -> String {
    let pauses = &result.pauses_ms;
    let pause_line = match (pauses.first(), pauses.last()) {
        (Some(min), Some(max)) => format!(
            "{} partitions moved; pause min {min:.1} ms, median {:.1} ms, max {max:.1} ms",
            pauses.len(),
            pauses[pauses.len() / 2]
        ),
        _ => "no partition moved".to_owned(),
    };
    format!(
        "group  spool  {} consumers, {} partitions, {} x {} B, rebalance {:?}\n\
         \x20      {:.0} msg/s  {:.1} MB/s  in {:.2} s  redelivered {}\n\
         \x20      {pause_line}\n",
        result.consumers,
        result.partitions,
        result.messages,
        result.message_size,
        result.rebalance,
        result.msgs_per_sec,
        result.mb_per_sec,
        result.seconds,
        result.redelivered,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_client::GroupRecord;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_group_run_delivers_every_message_once_through_a_rebalance() {
        let data = tempfile::tempdir().unwrap();
        for rebalance in [Rebalance::Join, Rebalance::Leave] {
            let args = GroupArgs {
                server: None,
                data: Some(data.path().to_owned()),
                consumers: 2,
                partitions: 4,
                messages: 2000,
                message_size: 16,
                rebalance,
                rebalance_at: 0.2,
                json: false,
            };
            let result = measure(&args).await.unwrap();
            assert_eq!((result.messages, result.redelivered), (2000, 0), "{rebalance:?}");
            assert_eq!(result.pauses_ms.len(), result.moved_partitions);
            assert!(table(&result).contains("2000 x 16 B"));
        }
    }

    fn records(partition: u32, offsets: std::ops::Range<u64>) -> GroupRecords {
        GroupRecords {
            topic: "t".into(),
            partition,
            generation: 1,
            records: offsets
                .clone()
                .map(|offset| GroupRecord {
                    offset,
                    timestamp_ms: 0,
                    key: None,
                    value: None,
                    headers: Vec::new(),
                })
                .collect(),
            next_offset: offsets.end,
            log_end_offset: 100,
        }
    }

    #[test]
    fn progress_counts_unique_messages_redeliveries_and_pauses_of_moved_partitions() {
        let mut progress = Progress { measuring: true, ..Progress::default() };
        let t0 = Instant::now();
        assert_eq!(progress.delivered(0, &records(0, 0..10), t0), 10);
        assert_eq!(progress.delivered(0, &records(1, 0..5), t0), 15);
        assert_eq!(progress.delivered(0, &records(0, 10..20), t0), 25);
        assert_eq!(progress.owned_by(0), [0, 1]);
        // Partitions 0 and 1 leave member 0; a late message of its own does not count.
        progress.moving(0, [0, 1], t0 + Duration::from_millis(1));
        assert_eq!(progress.delivered(0, &records(1, 5..6), t0 + Duration::from_millis(2)), 26);
        // Member 1 gets partition 0 starting 2 records back, and partition 1 caught up.
        let later = t0 + Duration::from_millis(41);
        assert_eq!(progress.delivered(1, &records(0, 18..30), later), 36);
        assert_eq!(progress.delivered(1, &records(1, 6..6), later), 36);
        assert_eq!(progress.redelivered, 2);
        assert_eq!(progress.pauses, [Duration::from_millis(40); 2]);
        assert_eq!(progress.delivered, 38);
    }
}
