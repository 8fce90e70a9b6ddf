//! What the targets' workloads share: how long to run, pacing, and the measurement a workload
//! hands back. Message values and the send time e2e messages carry are in [`crate::payload`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use spool_client::{Codec, Fsync};
use tokio::sync::watch;

use crate::stats::{
    FsyncTotals, LatencySummary, Meter, Sample, percentile_spectrum, progress_bar, sample,
};
use crate::{
    BenchError, BenchResult, DiskLimits, Machine, SameBytes, Settings, StoredBytes, VsDisk,
    Workload,
};

pub fn parse_fsync(fsync: &str) -> Result<Fsync, BenchError> {
    match fsync {
        "always" => Ok(Fsync::Always),
        "never" => Ok(Fsync::Never),
        other => match other.strip_prefix("interval:").map(str::parse) {
            Some(Ok(ms)) => Ok(Fsync::IntervalMs(ms)),
            _ => Err(BenchError::BadOption(format!(
                "--fsync {other:?}: use always, interval:MS or never"
            ))),
        },
    }
}

/// How often (in messages sent) a task with a deadline reads the clock.
pub const CLOCK_CHECK_MESSAGES: u64 = 64;

/// When one task stops: after a number of messages, or at a deadline.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub messages: Option<u64>,
    pub deadline: Option<Instant>,
}

impl Budget {
    /// Task `index`'s share of the settings' budget among `tasks`.
    pub fn share(settings: &Settings, index: u32, tasks: u32, started: Instant) -> Budget {
        let messages = settings.messages.map(|total| {
            let tasks = u64::from(tasks);
            total / tasks + u64::from(u64::from(index) < total % tasks)
        });
        Budget { messages, deadline: settings.duration().map(|d| started + d) }
    }

    /// Whether a task that has sent `sent` messages is done. A deadline is looked at only
    /// when `sent` is a multiple of [`CLOCK_CHECK_MESSAGES`]: reading the clock for every
    /// 100-byte message cost the producer about a tenth of its CPU time.
    pub fn done(&self, sent: u64) -> bool {
        self.messages.is_some_and(|m| sent >= m)
            || self
                .deadline
                .is_some_and(|d| sent.is_multiple_of(CLOCK_CHECK_MESSAGES) && Instant::now() >= d)
    }
}

/// Keeps one task at `rate` messages per second.
#[derive(Debug)]
pub struct Pacer {
    started: Instant,
    per_message: Duration,
    sent: u32,
}

impl Pacer {
    pub fn new(rate_per_sec: f64) -> Pacer {
        Pacer {
            started: Instant::now(),
            per_message: Duration::from_secs_f64(1.0 / rate_per_sec),
            sent: 0,
        }
    }

    /// When the next message is due.
    pub fn due(&self) -> Instant {
        self.started + self.per_message * self.sent
    }

    /// Waits until the next message is due.
    pub async fn wait(&mut self) {
        let due = self.due();
        self.sent += 1;
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// What one target measured for one workload.
#[derive(Debug)]
pub struct Measured {
    pub target: String,
    pub durability: String,
    pub messages: u64,
    pub seconds: f64,
    pub histogram: Histogram<u64>,
    pub timeline: Vec<Sample>,
    /// The in-process Spool server's fsyncs over the run.
    pub server_fsyncs: Option<FsyncTotals>,
    /// The codec the target's producers used (NATS: none, whatever was asked).
    pub compression: Codec,
    /// Spool: the topic's bytes on disk after the workload.
    pub stored: Option<StoredBytes>,
}

impl Measured {
    pub fn into_result(
        self,
        settings: &Settings,
        machine: &Machine,
        disk: Option<&DiskLimits>,
        disk_same_bytes: Option<SameBytes>,
    ) -> BenchResult {
        let bytes = self.messages * settings.message_size as u64;
        let seconds = self.seconds.max(1e-9);
        let msgs_per_sec = self.messages as f64 / seconds;
        let mb_per_sec = bytes as f64 / 1e6 / seconds;
        let latency_us = LatencySummary::of(&self.histogram);
        let latency_of = match settings.workload {
            _ if self.target == "kafka" => "not measured: kcat reports no per-message times",
            Workload::Produce if self.target == "nats" => {
                "one message, from its publish to its acknowledgement"
            }
            Workload::Produce => "one batch, from its first send to its acknowledgement",
            Workload::Consume => "the wait for each delivery of the replay",
            Workload::E2e => "one message, from send to receipt by a consumer",
        };
        BenchResult {
            workload: settings.workload,
            target: self.target,
            durability: self.durability,
            messages: self.messages,
            bytes,
            seconds: self.seconds,
            msgs_per_sec,
            mb_per_sec,
            latency_us,
            latency_of,
            stored: self.stored,
            settings: Settings { compression: self.compression, ..settings.clone() },
            machine: machine.clone(),
            disk: disk.cloned(),
            vs_disk: disk.map(|d| VsDisk {
                of_write_fdatasync_same_bytes: disk_same_bytes
                    .map(|same| mb_per_sec / same.mb_per_sec.max(1e-9)),
                of_direct_write_fdatasync_same_bytes: disk_same_bytes
                    .and_then(|same| same.direct_mb_per_sec)
                    .map(|direct| mb_per_sec / direct.max(1e-9)),
                ..VsDisk::of(d, msgs_per_sec, mb_per_sec, &latency_us)
            }),
            timeline: self.timeline,
            server_fsyncs: self.server_fsyncs,
            disk_same_bytes,
            latency_percentiles: percentile_spectrum(&self.histogram),
        }
    }
}

/// The progress bar and sampler around one timed phase.
pub struct Timed {
    pub meter: Arc<Meter>,
    pub started: Instant,
    done: watch::Sender<bool>,
    sampler: tokio::task::JoinHandle<(Vec<Sample>, Option<FsyncTotals>)>,
}

impl Timed {
    pub fn start(label: &str, messages: Option<u64>) -> Timed {
        let meter = Arc::new(Meter::default());
        let started = Instant::now();
        let (done, done_rx) = watch::channel(false);
        let bar = progress_bar(label, messages);
        let sampler = tokio::spawn(sample(meter.clone(), bar, started, done_rx));
        Timed { meter, started, done, sampler }
    }

    /// Stops the clock: the seconds, the timeline, and the in-process server's fsyncs over
    /// the run (`None` without one).
    pub async fn finish(self) -> Finished {
        let seconds = self.started.elapsed().as_secs_f64();
        let _ = self.done.send(true);
        let (timeline, server_fsyncs) = self.sampler.await.unwrap_or_default();
        Finished { seconds, timeline, server_fsyncs }
    }
}

/// What [`Timed::finish`] hands back.
pub struct Finished {
    pub seconds: f64,
    pub timeline: Vec<Sample>,
    pub server_fsyncs: Option<FsyncTotals>,
}
