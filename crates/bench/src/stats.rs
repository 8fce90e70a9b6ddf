//! Counting while a workload runs, and summing up afterwards.
//!
//! Workload tasks keep their own HDR histogram of latencies (in nanoseconds; merged at the
//! end, so recording needs no lock) and add to one shared [`Meter`] per acknowledged batch.
//! A sampler reads the meter periodically for the progress bar and, once a second, for the
//! time series: throughput, the second's latency p99 and maximum (tasks also record each
//! latency in the meter's interval histogram), this process's resident memory, and the
//! in-process server's fsyncs read from its own histogram ([`FsyncTotals`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::watch;

use crate::machine::{cpu_seconds, resident_bytes};

/// The longest latency a histogram tells apart; longer ones count as this long.
const LATENCY_NANOS_MAX: u64 = 60_000_000_000;

/// A histogram of nanoseconds, 1 ns to a minute, with 3 significant digits (its memory is
/// fixed; record with `saturating_record`).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NANOS_MAX, 3).expect("valid bounds and precision")
}

/// Latency percentiles, in microseconds. Every percentile is the histogram's, however few
/// the samples; [`samples_for`] says which ones a person should be shown.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
    /// How many latencies were recorded.
    pub samples: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        let us = |nanos: u64| nanos as f64 / 1000.0;
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            p9999: us(histogram.value_at_quantile(0.9999)),
            max: us(histogram.max()),
            mean: histogram.mean() / 1000.0,
            samples: histogram.len(),
        }
    }
}

/// How many samples above a percentile a figure for it must rest on: with fewer than 10 the
/// "p99.99" of a short run is only its largest latency or two, under another name.
const SAMPLES_ABOVE_PERCENTILE_MIN: f64 = 10.0;

/// The samples a percentile needs before it is shown: 10 / (1 - q), so 20 for p50, 1,000 for
/// p99 and 100,000 for p99.99. The minimum (p0) and maximum (p100) need one.
pub fn samples_for(percentile: f64) -> u64 {
    let above = 1.0 - percentile / 100.0;
    if percentile <= 0.0 || above <= 0.0 {
        return 1;
    }
    // Rounded: 1 - 0.99 is not exactly 0.01 in binary.
    (SAMPLES_ABOVE_PERCENTILE_MIN / above).round() as u64
}

/// Whether `samples` latencies are enough to show `percentile`.
pub fn shows(percentile: f64, samples: u64) -> bool {
    samples >= samples_for(percentile)
}

/// The latency at each of a fixed set of percentiles that the samples support (see
/// [`samples_for`]), for the percentile plot; the maximum is always there.
pub fn percentile_spectrum(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    const PERCENTILES: [f64; 12] =
        [0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0];
    if histogram.is_empty() {
        return Vec::new();
    }
    PERCENTILES
        .iter()
        .filter(|&&p| shows(p, histogram.len()))
        .map(|&p| (p, histogram.value_at_percentile(p) as f64 / 1000.0))
        .collect()
}

/// Messages and payload bytes done so far, shared by a workload's tasks, and the latencies
/// of the sampler's current interval.
#[derive(Debug)]
pub struct Meter {
    messages: AtomicU64,
    bytes: AtomicU64,
    interval: Mutex<Histogram<u64>>,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            interval: Mutex::new(new_histogram()),
        }
    }
}

impl Meter {
    pub fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records one latency in the current interval's histogram, for the latency-over-time
    /// series (the task keeps its own histogram for the run's percentiles).
    pub fn latency(&self, nanos: u64) {
        self.interval.lock().unwrap_or_else(PoisonError::into_inner).saturating_record(nanos);
    }

    /// The current interval's latencies, leaving it empty.
    fn take_interval(&self) -> Histogram<u64> {
        let mut interval = self.interval.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *interval, new_histogram())
    }

    pub fn read(&self) -> (u64, u64) {
        (self.messages.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}

/// One point of the throughput-over-time series.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the workload started, at the end of the interval.
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// This process's resident memory (with an in-process server: server and client).
    pub rss_mib: f64,
    /// The cores this process kept busy over the interval, on average.
    pub cpu_cores: f64,
    /// The p99 and the largest latency recorded in the interval, in microseconds; `None`
    /// when none was.
    pub latency_p99_us: Option<f64>,
    pub latency_max_us: Option<f64>,
    /// The in-process server's fsyncs that ended in the interval; `None` when there is no
    /// in-process server (see [`FsyncTotals`]).
    pub fsyncs: Option<FsyncTotals>,
}

/// Fsyncs of the in-process Spool server, from its `spool_fsync_seconds` histogram summed
/// over partitions: a count, a sum and cumulative buckets, so a period's figures are the
/// difference of two readings. A percentile is known only to its bucket's upper bound.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FsyncTotals {
    pub count: u64,
    pub sum_seconds: f64,
    /// (upper bound in seconds, fsyncs at or under it), by bound; the last is infinite.
    pub buckets: Vec<(f64, u64)>,
    /// Seconds the partitions' writers spent appending (copying batches into the page
    /// cache), from `spool_append_seconds`: beside `sum_seconds`, where a writer's time went.
    pub append_seconds: f64,
}

impl FsyncTotals {
    /// Reads the histogram from Prometheus text; empty when it has no series.
    pub fn parse(text: &str) -> FsyncTotals {
        let name = spool_server::metrics::names::FSYNC_SECONDS;
        let appends = format!("{}_sum", spool_server::metrics::names::APPEND_SECONDS);
        let mut totals = FsyncTotals::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(appends.as_str()) {
                let value = rest.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok());
                totals.append_seconds += value.unwrap_or(0.0);
                continue;
            }
            let Some(rest) = line.strip_prefix(name) else { continue };
            let Some((series, value)) = rest.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            if series.starts_with("_count") {
                totals.count += value as u64;
            } else if series.starts_with("_sum") {
                totals.sum_seconds += value;
            } else if let Some(labels) = series.strip_prefix("_bucket") {
                let Some(bound) = labels.split("le=\"").nth(1).and_then(|b| b.split('"').next())
                else {
                    continue;
                };
                let bound =
                    if bound == "+Inf" { f64::INFINITY } else { bound.parse().unwrap_or(f64::NAN) };
                if bound.is_nan() {
                    continue;
                }
                match totals.buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, count)) => *count += value as u64,
                    None => totals.buckets.push((bound, value as u64)),
                }
            }
        }
        totals.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        totals
    }

    /// The in-process server's fsyncs so far; `None` when the harness runs none (no
    /// Prometheus recorder is installed in this process).
    pub fn read() -> Option<FsyncTotals> {
        spool_server::metrics::rendered().map(|text| FsyncTotals::parse(&text))
    }

    /// What happened between `earlier` and this reading (series of a deleted topic may have
    /// gone meanwhile: nothing goes below zero).
    pub fn since(&self, earlier: &FsyncTotals) -> FsyncTotals {
        let before = |bound: f64| {
            earlier.buckets.iter().find(|(b, _)| *b == bound).map_or(0, |(_, count)| *count)
        };
        FsyncTotals {
            count: self.count.saturating_sub(earlier.count),
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
            append_seconds: (self.append_seconds - earlier.append_seconds).max(0.0),
            buckets: self
                .buckets
                .iter()
                .map(|&(bound, count)| (bound, count.saturating_sub(before(bound))))
                .collect(),
        }
    }

    pub fn mean_us(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_seconds * 1e6 / self.count as f64)
    }

    /// The upper bound, in microseconds, of the bucket that holds quantile `q` (1.0: the
    /// slowest); infinite past the last finite bound, `None` with no fsync.
    pub fn bound_us(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let bound = self.buckets.iter().find(|(_, count)| *count >= rank).map(|(b, _)| *b);
        Some(bound.unwrap_or(f64::INFINITY) * 1e6)
    }
}

/// Runs until `done` turns true: moves the progress bar and keeps one sample per second.
/// Returns the samples and the in-process server's fsyncs over the whole run (`None` when
/// it ran none).
pub async fn sample(
    meter: Arc<Meter>,
    bar: ProgressBar,
    started: Instant,
    mut done: watch::Receiver<bool>,
) -> (Vec<Sample>, Option<FsyncTotals>) {
    const TICK: Duration = Duration::from_millis(250);
    const SAMPLE_EVERY: u32 = 4;
    let mut samples = Vec::new();
    let mut ticks = 0u32;
    let (mut last_messages, mut last_bytes, mut last_at) = (0u64, 0u64, started);
    let mut last_cpu = cpu_seconds();
    let first_fsyncs = FsyncTotals::read();
    let mut last_fsyncs = first_fsyncs.clone();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        let finished = tokio::select! {
            _ = interval.tick() => false,
            _ = done.wait_for(|done| *done) => true,
        };
        ticks += 1;
        let (messages, bytes) = meter.read();
        bar.set_position(messages);
        let now = Instant::now();
        let elapsed = now.duration_since(started).as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{:.0} msg/s, {:.1} MB/s",
            messages as f64 / elapsed,
            bytes as f64 / 1e6 / elapsed
        ));
        if ticks.is_multiple_of(SAMPLE_EVERY) || finished {
            let interval_seconds = now.duration_since(last_at).as_secs_f64();
            let cpu = cpu_seconds();
            let latencies = meter.take_interval();
            let fsyncs = FsyncTotals::read();
            if interval_seconds > 0.05 {
                let us = |nanos: u64| nanos as f64 / 1000.0;
                samples.push(Sample {
                    cpu_cores: (cpu - last_cpu) / interval_seconds,
                    seconds: now.duration_since(started).as_secs_f64(),
                    msgs_per_sec: (messages - last_messages) as f64 / interval_seconds,
                    mb_per_sec: (bytes - last_bytes) as f64 / 1e6 / interval_seconds,
                    rss_mib: resident_bytes() as f64 / (1024.0 * 1024.0),
                    latency_p99_us: (!latencies.is_empty())
                        .then(|| us(latencies.value_at_quantile(0.99))),
                    latency_max_us: (!latencies.is_empty()).then(|| us(latencies.max())),
                    fsyncs: fsyncs
                        .as_ref()
                        .zip(last_fsyncs.as_ref())
                        .map(|(now, then)| now.since(then)),
                });
            }
            (last_messages, last_bytes, last_at, last_cpu) = (messages, bytes, now, cpu);
            last_fsyncs = fsyncs;
        }
        if finished {
            bar.finish_and_clear();
            let run = last_fsyncs.zip(first_fsyncs).map(|(last, first)| last.since(&first));
            return (samples, run.filter(|run| run.count > 0));
        }
    }
}

/// A progress bar on standard error (drawn only on a terminal): a bar toward `messages`
/// when the workload has a count, a spinner otherwise.
pub fn progress_bar(label: &str, messages: Option<u64>) -> ProgressBar {
    let bar = match messages {
        Some(count) => ProgressBar::new(count).with_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .expect("a valid template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{prefix} [{elapsed_precise}] {spinner} {pos} {msg}")
                .expect("a valid template"),
        ),
    };
    bar.with_prefix(label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsyncs_are_read_from_the_prometheus_histogram_summed_over_partitions() {
        let text = "\
# TYPE spool_fsync_seconds histogram
spool_fsync_seconds_bucket{topic=\"a\",partition=\"0\",le=\"0.0005\"} 90
spool_fsync_seconds_bucket{topic=\"a\",partition=\"0\",le=\"0.005\"} 99
spool_fsync_seconds_bucket{topic=\"a\",partition=\"0\",le=\"+Inf\"} 100
spool_fsync_seconds_sum{topic=\"a\",partition=\"0\"} 0.5
spool_fsync_seconds_count{topic=\"a\",partition=\"0\"} 100
spool_fsync_seconds_bucket{topic=\"b\",partition=\"1\",le=\"0.0005\"} 10
spool_fsync_seconds_bucket{topic=\"b\",partition=\"1\",le=\"0.005\"} 10
spool_fsync_seconds_bucket{topic=\"b\",partition=\"1\",le=\"+Inf\"} 10
spool_fsync_seconds_sum{topic=\"b\",partition=\"1\"} 0.001
spool_fsync_seconds_count{topic=\"b\",partition=\"1\"} 10
spool_append_seconds_count{topic=\"a\",partition=\"0\"} 7
spool_append_seconds_sum{topic=\"a\",partition=\"0\"} 2.5
";
        let totals = FsyncTotals::parse(text);
        assert_eq!(totals.count, 110);
        assert_eq!(totals.append_seconds, 2.5);
        assert_eq!(totals.buckets, vec![(0.0005, 100), (0.005, 109), (f64::INFINITY, 110)]);
        assert_eq!(totals.bound_us(0.5), Some(500.0));
        assert_eq!(totals.bound_us(0.99), Some(5000.0));
        assert_eq!(totals.bound_us(1.0), Some(f64::INFINITY));
        let earlier = FsyncTotals {
            count: 100,
            sum_seconds: 0.4,
            append_seconds: 2.0,
            buckets: vec![(0.0005, 100), (0.005, 100), (f64::INFINITY, 100)],
        };
        let period = totals.since(&earlier);
        assert_eq!(period.count, 10);
        assert_eq!(period.buckets, vec![(0.0005, 0), (0.005, 9), (f64::INFINITY, 10)]);
        assert_eq!(period.bound_us(0.9), Some(5000.0));
        assert!((period.mean_us().unwrap() - 10_100.0).abs() < 1e-6);
        assert!((period.append_seconds - 0.5).abs() < 1e-9);
        assert_eq!(FsyncTotals::default().bound_us(0.5), None);
    }

    #[test]
    fn a_percentile_needs_ten_samples_beyond_it() {
        assert_eq!(samples_for(50.0), 20);
        assert_eq!(samples_for(90.0), 100);
        assert_eq!(samples_for(99.0), 1_000);
        assert_eq!(samples_for(99.9), 10_000);
        assert_eq!(samples_for(99.99), 100_000);
        assert_eq!((samples_for(0.0), samples_for(100.0)), (1, 1));
        assert!(shows(99.0, 1_000) && !shows(99.0, 999));
        assert!(!shows(99.99, 20) && shows(50.0, 20) && shows(100.0, 1));
    }

    #[test]
    fn the_spectrum_stops_where_the_samples_do() {
        let mut histogram = new_histogram();
        for nanos in 1..=150u64 {
            histogram.saturating_record(nanos * 1000);
        }
        let percentiles: Vec<f64> =
            percentile_spectrum(&histogram).iter().map(|&(p, _)| p).collect();
        assert_eq!(percentiles, [0.0, 50.0, 75.0, 90.0, 100.0]);
        assert!(percentile_spectrum(&new_histogram()).is_empty());
    }
}
