//! `spool bench partitions`: what many partitions cost a server at rest, what spreading
//! small batches over them does to producing, and how long a restart over them takes.
//!
//! The harness starts `spool serve` as a child process (this binary, on `127.0.0.1:0`, over a
//! temporary directory, with no `SPOOL_*` setting from the environment), so that the server's
//! resident memory, open files and memory maps can be read from `/proc/PID` apart from the
//! harness's own. Then:
//!
//! 1. Idle, it reads the empty server's figures ([`Resources`]): `VmRSS`, the entries of
//!    `/proc/PID/fd`, the lines of `/proc/PID/maps`, and the bytes allocated to files and
//!    directories under the data directory (`st_blocks` × 512).
//! 2. It creates `--count` partitions, spread evenly over topics of at most 256 partitions
//!    (or over `--topics`), one topic after another, and times that. A create the server
//!    refuses (a limit on topics, partitions or open files) ends the creating: the run goes
//!    on with the partitions made, and reports the refusal and the server's message.
//! 3. Idle again, the same figures; per partition is their growth over the empty server,
//!    divided by the partitions made.
//! 4. It produces one batch of [`RECORDS_PER_BATCH`] records of [`RECORD_BYTES`] bytes to
//!    every partition, round-robin over them, with `acks=all` (the topics sync every write,
//!    fsync `always`): each partition's first write. Then once more the same way, then as
//!    many batches to one partition, and compares those two rates.
//! 5. It stops the server with SIGTERM and starts it again; writes one more batch to every
//!    partition (so that each has something to recover: a partition not written since a
//!    clean start opens as clean); then kills it with SIGKILL and starts it again. Each start
//!    is timed from spawning the process to the server printing its address, which it does
//!    once recovery is done and health says SERVING. After each, it counts the partitions and
//!    records the server holds, and takes the figures again.
//!
//! The records counted after a restart are reported beside those acknowledged, not checked:
//! benchmarks measure; they never judge.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use spool_broker::limits::PARTITIONS_PER_TOPIC_MAX;
use spool_client::{
    Acks, AdminError, Client, Delivery, ErrorCode, Producer, ProducerConfig, Record, TopicSettings,
};
use spool_server::limits::STREAMS_PER_CONNECTION_MAX;

use crate::BenchError;
use crate::machine::Machine;
use crate::payload::{PayloadKind, Payloads};
use crate::report::size;

mod server;

pub use server::Resources;
use server::Server;

/// Records in each batch produced.
pub const RECORDS_PER_BATCH: u32 = 10;
/// Bytes of each record's value.
pub const RECORD_BYTES: usize = 100;
/// Producers sharing one connection: each holds a produce stream open, and a connection
/// takes a bounded number of streams.
const PRODUCERS_PER_CONNECTION: usize = STREAMS_PER_CONNECTION_MAX as usize / 2;

const _: () = assert!(PRODUCERS_PER_CONNECTION >= 1);

/// `spool bench partitions`
#[derive(Debug, Clone, Args)]
pub struct PartitionsArgs {
    /// Partitions to create.
    #[arg(long, default_value_t = 1000)]
    pub count: u32,
    /// Topics to spread them over, evenly; default: as few as hold them at 256 partitions a
    /// topic (the most a topic may have).
    #[arg(long)]
    pub topics: Option<u32>,
    /// Where the server's temporary data directory is made (and the disk use measured);
    /// default: the system's temporary directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The growth of [`Resources`] from the empty server, divided by the partitions made.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PerPartition {
    pub rss_bytes: f64,
    pub open_files: f64,
    pub memory_maps: f64,
    pub file_maps: f64,
    pub threads: f64,
    pub disk_bytes: f64,
}

impl PerPartition {
    fn of(empty: &Resources, after: &Resources, partitions: u32) -> PerPartition {
        let growth =
            |before: u64, after: u64| (after as f64 - before as f64) / f64::from(partitions.max(1));
        PerPartition {
            rss_bytes: growth(empty.rss_bytes, after.rss_bytes),
            open_files: growth(empty.open_files, after.open_files),
            memory_maps: growth(empty.memory_maps, after.memory_maps),
            file_maps: growth(empty.file_maps, after.file_maps),
            threads: growth(empty.threads, after.threads),
            disk_bytes: growth(empty.disk_bytes, after.disk_bytes),
        }
    }
}

/// A create the server refused, which ended the creating.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refusal {
    /// The gRPC code, as the API spells it (`RESOURCE_EXHAUSTED`).
    pub code: String,
    /// The server's message.
    pub message: String,
    /// The topic refused, and its partitions.
    pub topic: String,
    pub topic_partitions: u32,
}

/// One produce run: `batches` of [`RECORDS_PER_BATCH`] records, every one acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    pub batches: u64,
    pub messages: u64,
    /// From the first send to the last acknowledgement.
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub batches_per_sec: f64,
}

impl Rate {
    fn new(batches: u64, seconds: f64) -> Rate {
        let messages = batches * u64::from(RECORDS_PER_BATCH);
        Rate {
            batches,
            messages,
            seconds,
            msgs_per_sec: messages as f64 / seconds.max(1e-9),
            batches_per_sec: batches as f64 / seconds.max(1e-9),
        }
    }
}

/// Producing a batch to every partition, and as many to one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Produce {
    pub records_per_batch: u32,
    pub record_bytes: usize,
    /// The first batch to each partition since it was created, round-robin (each
    /// partition's first write prepares its files).
    pub first_spread: Rate,
    /// Then one more batch to each partition, the same way.
    pub spread: Rate,
    /// As many batches to one partition.
    pub one_partition: Rate,
    /// `spread.msgs_per_sec / one_partition.msgs_per_sec`.
    pub spread_vs_one: f64,
}

/// One restart of the server over the same data directory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Restart {
    /// From SIGTERM to the process's exit; absent after SIGKILL.
    pub stop_seconds: Option<f64>,
    /// From spawning the process to it serving (health SERVING, recovery done).
    pub start_seconds: f64,
    /// Partitions the restarted server holds.
    pub partitions: u32,
    /// Records it holds (log end minus log start, over every partition).
    pub records: u64,
    /// Records acknowledged before the stop.
    pub acknowledged: u64,
    /// Its figures, idle after the start.
    pub idle: Resources,
}

/// What `spool bench partitions` measured.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionsResult {
    /// `--count`.
    pub partitions_asked: u32,
    /// Partitions the server created (fewer when it refused a create).
    pub partitions: u32,
    pub topics: u32,
    pub refused: Option<Refusal>,
    /// Creating every topic, one after another.
    pub create_seconds: f64,
    pub created_per_sec: f64,
    /// The server's open-file limit (`Max open files` in `/proc/PID/limits`, the soft one).
    pub open_files_max: Option<u64>,
    /// The first start, on an empty directory.
    pub start_empty_seconds: f64,
    pub empty: Resources,
    pub after_create: Resources,
    pub per_partition: PerPartition,
    pub produce: Produce,
    pub after_produce: Resources,
    /// SIGTERM, then a start.
    pub restart_clean: Restart,
    /// SIGKILL, then a start.
    pub restart_killed: Restart,
    pub machine: Machine,
}

/// Runs `spool bench partitions` with this binary as the server, and prints its result.
pub async fn run(args: PartitionsArgs) -> Result<(), BenchError> {
    let spool = std::env::current_exe()
        .map_err(|e| BenchError::io("finding the spool binary to serve with".into(), e))?;
    let result = measure(&args, &spool).await?;
    if args.json {
        println!("{}", serde_json::to_string(&result).expect("serializable"));
        if let Some(refused) = &result.refused {
            eprintln!("WARNING: {}", refusal_line(&result, refused));
        }
    } else {
        print!("{}", table(&result));
    }
    Ok(())
}

/// The partitions of each topic: `count` spread evenly over `topics`, or over as few topics
/// as hold them.
pub fn topic_sizes(count: u32, topics: Option<u32>) -> Result<Vec<u32>, BenchError> {
    let bad = |what: String| Err(BenchError::BadOption(what));
    if count == 0 {
        return bad("--count must be at least 1".into());
    }
    let topics = topics.unwrap_or_else(|| count.div_ceil(PARTITIONS_PER_TOPIC_MAX));
    if topics == 0 || topics > count {
        return bad(format!("--topics must be from 1 to --count ({count})"));
    }
    if count.div_ceil(topics) > PARTITIONS_PER_TOPIC_MAX {
        return bad(format!(
            "--count {count} over --topics {topics} needs {} partitions in a topic; a topic has at most {PARTITIONS_PER_TOPIC_MAX}",
            count.div_ceil(topics)
        ));
    }
    Ok((0..topics).map(|index| count / topics + u32::from(index < count % topics)).collect())
}

fn topic_name(index: usize) -> String {
    format!("bench-partitions-{index:05}")
}

/// Runs the benchmark with `spool` (a `spool` binary) as the server.
pub async fn measure(args: &PartitionsArgs, spool: &Path) -> Result<PartitionsResult, BenchError> {
    let sizes = topic_sizes(args.count, args.topics)?;
    let data_root = args.data.clone().unwrap_or_else(std::env::temp_dir);
    let dir =
        tempfile::Builder::new().prefix("spool-bench-partitions-").tempdir_in(&data_root).map_err(
            |e| BenchError::io(format!("creating a directory in {}", data_root.display()), e),
        )?;
    let data = dir.path();
    eprintln!(
        "creating {} partitions in {} topics on a spool serve under {}...",
        args.count,
        sizes.len(),
        data.display()
    );
    let (server, start_empty) = Server::start(spool, data).await?;
    let empty = server.resources()?;
    let open_files_max = server.open_files_max();
    let measured = match server.when_alive(fill_and_produce(&server, &sizes)).await {
        Ok(measured) => measured,
        Err(error) => return Err(server.explain(error).await),
    };
    let after_produce = server.resources()?;

    let produce = &measured.produce;
    let acknowledged =
        produce.first_spread.messages + produce.spread.messages + produce.one_partition.messages;
    let stop = server.terminate().await?;
    let (server, restart_clean) = restart(spool, data, Some(stop), acknowledged).await?;
    let written = match server.when_alive(write_each(&server.url)).await {
        Ok(written) => written,
        Err(error) => return Err(server.explain(error).await),
    };
    server.kill().await?;
    let (server, restart_killed) = restart(spool, data, None, acknowledged + written).await?;
    server.terminate().await?;
    dir.close().map_err(|e| BenchError::io("removing the server's data directory".into(), e))?;

    let Filled { topics, partitions, create_seconds, refused, after_create, produce } = measured;
    Ok(PartitionsResult {
        partitions_asked: args.count,
        partitions,
        topics,
        refused,
        create_seconds,
        created_per_sec: f64::from(partitions) / create_seconds.max(1e-9),
        open_files_max,
        start_empty_seconds: start_empty.as_secs_f64(),
        empty,
        after_create,
        per_partition: PerPartition::of(&empty, &after_create, partitions),
        produce,
        after_produce,
        restart_clean,
        restart_killed,
        machine: Machine::describe(&data_root),
    })
}

/// What the first server did: created and filled the partitions.
struct Filled {
    topics: u32,
    partitions: u32,
    create_seconds: f64,
    refused: Option<Refusal>,
    after_create: Resources,
    produce: Produce,
}

async fn fill_and_produce(server: &Server, sizes: &[u32]) -> Result<Filled, BenchError> {
    let client = Client::connect(&server.url).await?;
    let started = Instant::now();
    let refused = create(&client, sizes).await?;
    let create_seconds = started.elapsed().as_secs_f64();
    let after_create = server.resources()?;
    // What the server holds, rather than what was asked: a refused create may have left
    // part of a topic behind.
    let topics: Vec<(String, u32)> =
        client.list_topics().await?.into_iter().map(|t| (t.name, t.partitions)).collect();
    let partitions = topics.iter().map(|(_, p)| p).sum();
    if partitions == 0 {
        let why =
            refused.as_ref().map_or(String::new(), |r| format!(": {} ({})", r.message, r.code));
        return Err(BenchError::Server(format!("the server created no partition{why}")));
    }
    let produce = produce(&server.url, &topics).await?;
    Ok(Filled {
        topics: topics.len() as u32,
        partitions,
        create_seconds,
        refused,
        after_create,
        produce,
    })
}

/// Creates a topic of each size, in order, until the server refuses one.
async fn create(client: &Client, sizes: &[u32]) -> Result<Option<Refusal>, BenchError> {
    for (index, &partitions) in sizes.iter().enumerate() {
        let name = topic_name(index);
        let settings = TopicSettings { partitions, ..TopicSettings::default() };
        match client.create_topic(&name, settings).await {
            Ok(_) => {}
            // A server that cannot be reached did not refuse: that is a failure.
            Err(AdminError::Rejected(error)) if error.code != ErrorCode::Unavailable => {
                return Ok(Some(Refusal {
                    code: error.code.name().to_owned(),
                    message: error.message,
                    topic: name,
                    topic_partitions: partitions,
                }));
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(None)
}

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        acks: Acks::All,
        // A batch is sealed, and sent, at its last record; the linger only matters were it not.
        batch_records_max: RECORDS_PER_BATCH,
        batch_bytes_max: 64 * 1024,
        linger: Duration::from_secs(1),
        ..ProducerConfig::default()
    }
}

/// One batch to every partition of `topics`, round-robin over them, on clients it connects
/// (returned, to be used again); the rate from the first send to the last acknowledgement.
async fn one_batch_each(
    url: &str,
    topics: &[(String, u32)],
) -> Result<(Rate, Vec<Client>), BenchError> {
    let payloads = Payloads::new(PayloadKind::Pattern, RECORD_BYTES, RECORDS_PER_BATCH);
    let value = payloads.get(0);
    let mut clients: Vec<Client> = Vec::new();
    let mut producers = Vec::with_capacity(topics.len());
    for (index, (topic, _)) in topics.iter().enumerate() {
        if index % PRODUCERS_PER_CONNECTION == 0 {
            clients.push(Client::connect(url).await?);
        }
        let client = clients.last().expect("connected");
        producers.push(client.producer(topic, producer_config()).await?);
    }
    let batches: u64 = topics.iter().map(|(_, p)| u64::from(*p)).sum();
    let most = topics.iter().map(|(_, p)| *p).max().unwrap_or(0);

    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(batches as usize);
    for partition in 0..most {
        for (producer, (_, partitions)) in producers.iter().zip(topics) {
            if partition < *partitions {
                deliveries.push(send_batch(producer, partition, value).await?);
            }
        }
    }
    acknowledged(deliveries).await?;
    let rate = Rate::new(batches, started.elapsed().as_secs_f64());
    for producer in &producers {
        producer.close().await?;
    }
    Ok((rate, clients))
}

/// One batch to every partition the server holds; the records acknowledged.
async fn write_each(url: &str) -> Result<u64, BenchError> {
    let client = Client::connect(url).await?;
    let topics: Vec<(String, u32)> =
        client.list_topics().await?.into_iter().map(|t| (t.name, t.partitions)).collect();
    let (written, _) = one_batch_each(url, &topics).await?;
    Ok(written.messages)
}

async fn produce(url: &str, topics: &[(String, u32)]) -> Result<Produce, BenchError> {
    let payloads = Payloads::new(PayloadKind::Pattern, RECORD_BYTES, RECORDS_PER_BATCH);
    let value = payloads.get(0);
    let (first_spread, _) = one_batch_each(url, topics).await?;
    let (spread, clients) = one_batch_each(url, topics).await?;
    let batches = spread.batches;

    let producer = clients[0].producer(&topics[0].0, producer_config()).await?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(batches as usize);
    for _ in 0..batches {
        deliveries.push(send_batch(&producer, 0, value).await?);
    }
    acknowledged(deliveries).await?;
    let one_partition = Rate::new(batches, started.elapsed().as_secs_f64());
    producer.close().await?;

    Ok(Produce {
        records_per_batch: RECORDS_PER_BATCH,
        record_bytes: RECORD_BYTES,
        first_spread,
        spread,
        one_partition,
        spread_vs_one: spread.msgs_per_sec / one_partition.msgs_per_sec.max(1e-9),
    })
}

/// Sends one batch's records to `partition`; the last record's delivery stands for the
/// batch, whose records share one outcome.
async fn send_batch(
    producer: &Producer,
    partition: u32,
    value: &[u8],
) -> Result<Delivery, BenchError> {
    let mut last = None;
    for _ in 0..RECORDS_PER_BATCH {
        last = Some(producer.send(Record::value(value).with_partition(partition)).await?);
    }
    Ok(last.expect("a batch has records"))
}

async fn acknowledged(deliveries: Vec<Delivery>) -> Result<(), BenchError> {
    for delivery in deliveries {
        delivery.wait().await?;
    }
    Ok(())
}

/// Starts the server again over `data`, times it, and counts what it holds.
async fn restart(
    spool: &Path,
    data: &Path,
    stop: Option<Duration>,
    acknowledged: u64,
) -> Result<(Server, Restart), BenchError> {
    let (server, start) = Server::start(spool, data).await?;
    let holdings = async {
        let client = Client::connect(&server.url).await?;
        let (mut partitions, mut records) = (0, 0);
        // A list names the topics; only a describe has their partitions' offsets.
        for topic in client.list_topics().await? {
            let described = client.describe_topic(&topic.name).await?;
            partitions += described.partitions;
            records += described
                .partition_states
                .iter()
                .map(|p| p.log_end_offset.saturating_sub(p.log_start_offset))
                .sum::<u64>();
        }
        Ok::<_, BenchError>((partitions, records))
    };
    let (partitions, records) = match server.when_alive(holdings).await {
        Ok(counted) => counted,
        Err(error) => return Err(server.explain(error).await),
    };
    let idle = server.resources()?;
    let restart = Restart {
        stop_seconds: stop.map(|d| d.as_secs_f64()),
        start_seconds: start.as_secs_f64(),
        partitions,
        records,
        acknowledged,
        idle,
    };
    Ok((server, restart))
}

/// Bytes in the unit that reads best.
fn refusal_line(result: &PartitionsResult, refused: &Refusal) -> String {
    format!(
        "the server refused topic {} ({} partitions) after {} of {} partitions: {} ({})",
        refused.topic,
        refused.topic_partitions,
        result.partitions,
        result.partitions_asked,
        refused.message,
        refused.code
    )
}

/// The result as a table.
pub fn table(result: &PartitionsResult) -> String {
    let mut out = format!(
        "partitions  spool serve  {} partitions in {} topics, created in {:.2} s ({:.0} partitions/s); open-file limit {}\n",
        result.partitions,
        result.topics,
        result.create_seconds,
        result.created_per_sec,
        result.open_files_max.map_or("unknown".into(), |n| n.to_string()),
    );
    if let Some(refused) = &result.refused {
        out += &format!("  REFUSED: {}\n", refusal_line(result, refused));
    }
    out += &format!(
        "  {:<24}{:>11}{:>12}{:>9}{:>11}{:>9}{:>12}\n",
        "idle server", "RSS", "open files", "maps", "file maps", "threads", "on disk"
    );
    let row = |name: &str, r: &Resources| {
        format!(
            "  {name:<24}{:>11}{:>12}{:>9}{:>11}{:>9}{:>12}\n",
            size(r.rss_bytes as f64),
            r.open_files,
            r.memory_maps,
            r.file_maps,
            r.threads,
            size(r.disk_bytes as f64)
        )
    };
    let per = &result.per_partition;
    out += &row("empty", &result.empty);
    out += &row("after create", &result.after_create);
    out += &format!(
        "  {:<24}{:>11}{:>12.2}{:>9.2}{:>11.2}{:>9.2}{:>12}\n",
        "  per partition",
        size(per.rss_bytes),
        per.open_files,
        per.memory_maps,
        per.file_maps,
        per.threads,
        size(per.disk_bytes)
    );
    out += &row("after produce", &result.after_produce);
    out += &row("after SIGTERM + start", &result.restart_clean.idle);
    out += &row("after SIGKILL + start", &result.restart_killed.idle);
    let produce = &result.produce;
    let rate = |r: &Rate| {
        format!(
            "{:.0} msg/s, {:.0} batches/s ({} batches in {:.2} s)",
            r.msgs_per_sec, r.batches_per_sec, r.batches, r.seconds
        )
    };
    out += &format!(
        "  produce, batches of {} x {} B, acks all, fsync always:\n\
         \x20   first to each partition {}\n\
         \x20   one to each partition  {}\n\
         \x20   all to one partition   {}\n\
         \x20   spread / one           {:.3}\n",
        produce.records_per_batch,
        produce.record_bytes,
        rate(&produce.first_spread),
        rate(&produce.spread),
        rate(&produce.one_partition),
        produce.spread_vs_one,
    );
    let restart = |r: &Restart| {
        format!(
            "serving again in {:.3} s, holding {} partitions and {} of {} records",
            r.start_seconds, r.partitions, r.records, r.acknowledged
        )
    };
    out += &format!(
        "  restart: first start (empty) {:.3} s\n\
         \x20   SIGTERM: stopped in {:.3} s, {}\n\
         \x20   one more batch to each partition, SIGKILL: {}\n",
        result.start_empty_seconds,
        result.restart_clean.stop_seconds.unwrap_or(0.0),
        restart(&result.restart_clean),
        restart(&result.restart_killed),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_evenly_over_as_few_topics_as_hold_them() {
        assert_eq!(topic_sizes(20, None).unwrap(), [20]);
        assert_eq!(topic_sizes(256, None).unwrap(), [256]);
        assert_eq!(topic_sizes(1000, None).unwrap(), [250; 4]);
        assert_eq!(topic_sizes(257, None).unwrap(), [129, 128]);
        assert_eq!(topic_sizes(10, Some(3)).unwrap(), [4, 3, 3]);
        let many = topic_sizes(50_000, None).unwrap();
        assert_eq!((many.len(), many.iter().sum::<u32>()), (196, 50_000));
        assert!(many.iter().all(|&p| p <= PARTITIONS_PER_TOPIC_MAX));
    }

    #[test]
    fn a_spread_no_topic_can_hold_is_refused_with_the_reason() {
        let message = |count, topics| match topic_sizes(count, topics) {
            Err(BenchError::BadOption(message)) => message,
            other => panic!("{other:?}"),
        };
        assert!(message(0, None).contains("--count must be at least 1"));
        assert!(message(5, Some(6)).contains("--topics must be from 1 to --count (5)"));
        assert!(message(1000, Some(3)).contains("needs 334 partitions in a topic"));
    }

    #[test]
    fn per_partition_is_the_growth_over_the_empty_server() {
        let empty = Resources {
            rss_bytes: 1000,
            open_files: 10,
            memory_maps: 100,
            file_maps: 30,
            threads: 8,
            disk_bytes: 0,
        };
        let after = Resources {
            rss_bytes: 3000,
            open_files: 30,
            memory_maps: 140,
            file_maps: 50,
            threads: 8,
            disk_bytes: 4000,
        };
        let per = PerPartition::of(&empty, &after, 20);
        assert_eq!((per.rss_bytes, per.open_files), (100.0, 1.0));
        assert_eq!((per.memory_maps, per.file_maps, per.threads), (2.0, 1.0, 0.0));
        assert_eq!(per.disk_bytes, 200.0);
    }
}
