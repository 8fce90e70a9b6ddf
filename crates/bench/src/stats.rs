//! Counting while a workload runs, and summing up afterwards.
//!
//! Workload tasks keep their own HDR histogram of latencies (in nanoseconds; merged at the
//! end, so recording needs no lock) and add to one shared [`Meter`] per acknowledged batch.
//! A sampler reads the meter periodically for the progress bar and, once a second, for the
//! throughput-over-time series, along with this process's resident memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Messages and payload bytes done so far, shared by a workload's tasks.
#[derive(Debug, Default)]
pub struct Meter {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Meter {
    pub fn add(&self, messages: u64, bytes: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn read(&self) -> (u64, u64) {
        (self.messages.load(Ordering::Relaxed), self.bytes.load(Ordering::Relaxed))
    }
}

/// One point of the throughput-over-time series.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the workload started, at the end of the interval.
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    /// This process's resident memory (with an in-process server: server and client).
    pub rss_mib: f64,
    /// The cores this process kept busy over the interval, on average.
    pub cpu_cores: f64,
}

/// Runs until `done` turns true: moves the progress bar and keeps one sample per second.
pub async fn sample(
    meter: Arc<Meter>,
    bar: ProgressBar,
    started: Instant,
    mut done: watch::Receiver<bool>,
) -> Vec<Sample> {
    const TICK: Duration = Duration::from_millis(250);
    const SAMPLE_EVERY: u32 = 4;
    let mut samples = Vec::new();
    let mut ticks = 0u32;
    let (mut last_messages, mut last_bytes, mut last_at) = (0u64, 0u64, started);
    let mut last_cpu = cpu_seconds();
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
            if interval_seconds > 0.05 {
                samples.push(Sample {
                    cpu_cores: (cpu - last_cpu) / interval_seconds,
                    seconds: now.duration_since(started).as_secs_f64(),
                    msgs_per_sec: (messages - last_messages) as f64 / interval_seconds,
                    mb_per_sec: (bytes - last_bytes) as f64 / 1e6 / interval_seconds,
                    rss_mib: resident_bytes() as f64 / (1024.0 * 1024.0),
                });
            }
            (last_messages, last_bytes, last_at, last_cpu) = (messages, bytes, now, cpu);
        }
        if finished {
            bar.finish_and_clear();
            return samples;
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
