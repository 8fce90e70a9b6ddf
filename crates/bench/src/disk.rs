//! `spool bench disk`: what the disk under the data directory can do, so every produce
//! figure can be read as a fraction of it.
//!
//! Seven measurements, each on a fresh file in the directory, removed afterwards:
//!
//! 1. buffered sequential write: `bytes` in 1 MiB writes, no sync (the page cache's speed);
//! 2. write then `fdatasync`: the same writes and one `fdatasync` at the end, timed together
//!    (what a log that syncs seldom and in large groups can reach at best);
//! 3. and 4. `fdatasync` calls per second: for `append_seconds` each, append 4 KiB (then
//!    64 KiB) and `fdatasync`, as a log syncing every small append would; the latency of each
//!    cycle is kept, so a single durable write can be compared with the disk's own median;
//! 5. and 6. the same with 1 MiB and 16 MiB appends: the serial write+`fdatasync` rate, what
//!    a log that waited for each group's sync before writing the next would reach.
//! 7. direct write then `fdatasync`: the writes of 2. with `O_DIRECT`, from one aligned
//!    buffer, and one `fdatasync`: the disk without the page cache. On a virtual machine
//!    whose freed memory goes back to the host, every new page-cache page is a first touch,
//!    and this can be several times the rate of a long buffered write (see docs/benchmarks.md).
//!
//! Before the first measurement, `bytes` are written to a warm-up file (untimed, then
//! removed), so that the page cache's pages have been touched once: on a virtual machine
//! the first touch of guest memory is slow, and a buffered write measured cold came out
//! slower than the same writes followed by an `fdatasync`.
//!
//! Each measurement is then taken in rounds ([`settle`]) until two rounds in a row agree
//! within [`AGREEMENT`], at most [`ROUNDS_MAX`]; the figure is the median round, and every
//! round is reported. Figures that cannot all be true ([`contradictions`]) are reported as
//! warnings beside them, since a ratio taken against them would mislead.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::BenchError;
use crate::stats::{LatencySummary, new_histogram};

/// The write size of the sequential measurements.
const SEQUENTIAL_WRITE_BYTES: usize = 1024 * 1024;

/// How far apart two rounds (or two figures compared for a contradiction) may be, as a
/// fraction of the larger, and still count as agreeing.
pub const AGREEMENT: f64 = 0.15;

/// The most rounds a measurement takes; the fewest is two.
pub const ROUNDS_MAX: usize = 5;

/// What to measure, and for how long.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    pub dir: PathBuf,
    /// Bytes written by each round of a sequential measurement.
    pub bytes: u64,
    /// How long each round of an append-and-sync measurement runs.
    pub append_seconds: f64,
}

/// One figure, measured in rounds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rounds {
    /// Each round's figure, in the order measured.
    pub each: Vec<f64>,
    /// Whether the last two rounds agreed within [`AGREEMENT`]; if not, [`ROUNDS_MAX`] were
    /// taken and the figure is only their median.
    pub settled: bool,
}

impl Rounds {
    pub fn median(&self) -> f64 {
        let mut sorted = self.each.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => 0.0,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.each.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max(&self) -> f64 {
        self.each.iter().copied().fold(0.0, f64::max)
    }
}

/// One append-and-sync measurement.
#[derive(Debug, Clone, Serialize)]
pub struct SyncRate {
    pub append_bytes: u64,
    /// The median round's.
    pub fdatasync_per_sec: f64,
    pub rounds: Rounds,
    /// Latency of one append + `fdatasync` cycle, over every round.
    pub latency_us: LatencySummary,
}

impl SyncRate {
    /// The bytes the cycles wrote, in MB/s.
    pub fn mb_per_sec(&self) -> f64 {
        self.fdatasync_per_sec * self.append_bytes as f64 / 1e6
    }
}

/// The disk's limits, measured in one directory.
#[derive(Debug, Clone, Serialize)]
pub struct DiskLimits {
    pub dir: String,
    pub file_system: String,
    /// The median round's.
    pub buffered_write_mb_per_sec: f64,
    pub buffered_write_rounds: Rounds,
    /// The median round's.
    pub write_fdatasync_mb_per_sec: f64,
    pub write_fdatasync_rounds: Rounds,
    pub sync_4k: SyncRate,
    pub sync_64k: SyncRate,
    pub sync_1m: SyncRate,
    pub sync_16m: SyncRate,
    /// The median round's; `None` where the file system refuses `O_DIRECT`.
    pub direct_fdatasync_mb_per_sec: Option<f64>,
    pub direct_fdatasync_rounds: Option<Rounds>,
    /// Figures that contradict each other, or that did not settle, in words; empty when
    /// all is well.
    pub warnings: Vec<String>,
}

/// Runs the seven measurements.
pub fn measure(plan: &DiskPlan) -> Result<DiskLimits, BenchError> {
    std::fs::create_dir_all(&plan.dir)
        .map_err(|source| BenchError::io(format!("creating {}", plan.dir.display()), source))?;
    warm_up(&plan.dir, plan.bytes)?;
    let buffered = settle(|| sequential(&plan.dir, plan.bytes, Sync::No))?;
    let synced = settle(|| sequential(&plan.dir, plan.bytes, Sync::AtEnd))?;
    let seconds = Duration::from_secs_f64(plan.append_seconds);
    let sync_4k = append_and_sync(&plan.dir, 4096, seconds)?;
    let sync_64k = append_and_sync(&plan.dir, 64 * 1024, seconds)?;
    let sync_1m = append_and_sync(&plan.dir, 1024 * 1024, seconds)?;
    let sync_16m = append_and_sync(&plan.dir, 16 * 1024 * 1024, seconds)?;
    // The first write tells whether the file system takes O_DIRECT; it is not counted.
    let direct = match direct(&plan.dir, plan.bytes)? {
        Some(_) => Some(settle(|| Ok(direct(&plan.dir, plan.bytes)?.unwrap_or(0.0)))?),
        None => None,
    };
    let mut limits = DiskLimits {
        dir: plan.dir.display().to_string(),
        file_system: crate::machine::file_system(&plan.dir),
        buffered_write_mb_per_sec: buffered.median(),
        buffered_write_rounds: buffered,
        write_fdatasync_mb_per_sec: synced.median(),
        write_fdatasync_rounds: synced,
        sync_4k,
        sync_64k,
        sync_1m,
        sync_16m,
        direct_fdatasync_mb_per_sec: direct.as_ref().map(Rounds::median),
        direct_fdatasync_rounds: direct,
        warnings: Vec::new(),
    };
    limits.warnings = contradictions(&limits);
    Ok(limits)
}

/// One long write of `bytes` and one `fdatasync`, timed together, in one round, through the
/// page cache and then with `O_DIRECT`: the rates to read a workload that stored `bytes`
/// against (see [`crate::SameBytes`]).
pub fn same_bytes(dir: &Path, bytes: u64) -> Result<crate::SameBytes, BenchError> {
    let bytes = bytes.max(SEQUENTIAL_WRITE_BYTES as u64);
    let mb_per_sec = sequential(dir, bytes, Sync::AtEnd)?;
    Ok(crate::SameBytes { bytes, mb_per_sec, direct_mb_per_sec: direct(dir, bytes)? })
}

/// Whether two figures agree within [`AGREEMENT`].
fn agree(a: f64, b: f64) -> bool {
    (a - b).abs() <= AGREEMENT * a.abs().max(b.abs())
}

/// Takes rounds of `round` until the last two agree, or [`ROUNDS_MAX`] are done.
pub fn settle(mut round: impl FnMut() -> Result<f64, BenchError>) -> Result<Rounds, BenchError> {
    let mut each = Vec::with_capacity(ROUNDS_MAX);
    loop {
        each.push(round()?);
        let settled = match each.as_slice() {
            [.., a, b] => agree(*a, *b),
            _ => false,
        };
        if settled || each.len() == ROUNDS_MAX {
            return Ok(Rounds { each, settled });
        }
    }
}

/// What cannot all be true of the figures measured, and which did not settle. Each
/// comparison allows [`AGREEMENT`] of noise.
pub fn contradictions(limits: &DiskLimits) -> Vec<String> {
    let mut warnings = Vec::new();
    let (buffered, synced) = (limits.buffered_write_mb_per_sec, limits.write_fdatasync_mb_per_sec);
    if synced > buffered && !agree(buffered, synced) {
        warnings.push(format!(
            "buffered write ({buffered:.0} MB/s) is slower than the same writes followed by an fdatasync ({synced:.0} MB/s): the buffered figure is not the page cache's speed; ratios to it mean little"
        ));
    }
    let (small, large) = (&limits.sync_4k, &limits.sync_64k);
    if large.fdatasync_per_sec > small.fdatasync_per_sec
        && !agree(small.fdatasync_per_sec, large.fdatasync_per_sec)
    {
        warnings.push(format!(
            "64 KiB append+fdatasync cycles ({:.0}/s) ran faster than 4 KiB ones ({:.0}/s)",
            large.fdatasync_per_sec, small.fdatasync_per_sec
        ));
    }
    let cycles_mb_per_sec = large.fdatasync_per_sec * large.append_bytes as f64 / 1e6;
    if cycles_mb_per_sec > synced && !agree(cycles_mb_per_sec, synced) {
        warnings.push(format!(
            "64 KiB append+fdatasync cycles moved {cycles_mb_per_sec:.0} MB/s, more than one long write and a single fdatasync ({synced:.0} MB/s)"
        ));
    }
    let measured = [
        ("buffered write", &limits.buffered_write_rounds),
        ("write then fdatasync", &limits.write_fdatasync_rounds),
        ("4 KiB append+fdatasync", &small.rounds),
        ("64 KiB append+fdatasync", &large.rounds),
    ];
    for (name, rounds) in measured {
        if !rounds.settled && rounds.each.len() > 1 {
            warnings.push(format!(
                "{name} did not settle: no two rounds in a row of {} agreed within {:.0}% ({:.0} to {:.0})",
                rounds.each.len(),
                AGREEMENT * 100.0,
                rounds.min(),
                rounds.max()
            ));
        }
    }
    warnings
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    No,
    AtEnd,
}

/// A scratch file that is removed when dropped.
struct Scratch {
    path: PathBuf,
    file: File,
}

impl Scratch {
    fn create(dir: &Path, name: &str) -> Result<Scratch, BenchError> {
        let path = dir.join(format!(".spool-bench-disk-{}-{name}", std::process::id()));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|source| BenchError::io(format!("creating {}", path.display()), source))?;
        Ok(Scratch { path, file })
    }

    fn error(&self, what: &str, source: std::io::Error) -> BenchError {
        BenchError::io(format!("{what} {}", self.path.display()), source)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `bytes` once, untimed, and removes them: the pages the measurements write into
/// have then been touched.
fn warm_up(dir: &Path, bytes: u64) -> Result<(), BenchError> {
    sequential(dir, bytes, Sync::AtEnd).map(drop)
}

/// MB/s (10^6 bytes) of writing `bytes` sequentially.
fn sequential(dir: &Path, bytes: u64, sync: Sync) -> Result<f64, BenchError> {
    let mut scratch = Scratch::create(dir, "sequential")?;
    let chunk = vec![0x5au8; SEQUENTIAL_WRITE_BYTES];
    let started = Instant::now();
    let mut written = 0u64;
    while written < bytes {
        scratch.file.write_all(&chunk).map_err(|e| scratch.error("writing", e))?;
        written += chunk.len() as u64;
    }
    if sync == Sync::AtEnd {
        scratch.file.sync_data().map_err(|e| scratch.error("syncing", e))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if sync == Sync::No {
        // Not timed: leave no dirty pages behind for the next measurement.
        scratch.file.sync_data().map_err(|e| scratch.error("syncing", e))?;
    }
    Ok(written as f64 / 1e6 / seconds)
}

/// The alignment `O_DIRECT` asks of buffers, lengths and offsets (a page: more than any
/// logical block size in use).
const DIRECT_ALIGN: usize = 4096;

/// MB/s of writing `bytes` in [`SEQUENTIAL_WRITE_BYTES`] writes with `O_DIRECT` and one
/// `fdatasync`; `None` when the file system refuses `O_DIRECT` (tmpfs, for one).
fn direct(dir: &Path, bytes: u64) -> Result<Option<f64>, BenchError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!(".spool-bench-disk-{}-direct", std::process::id()));
    let opened = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let file = match opened {
        Ok(file) => file,
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(source) => return Err(BenchError::io(format!("creating {}", path.display()), source)),
    };
    let mut scratch = Scratch { path, file };
    let backing = vec![0x5au8; SEQUENTIAL_WRITE_BYTES + DIRECT_ALIGN];
    let start = backing.as_ptr().align_offset(DIRECT_ALIGN);
    let chunk = &backing[start..start + SEQUENTIAL_WRITE_BYTES];
    let started = Instant::now();
    let mut written = 0u64;
    while written < bytes {
        match scratch.file.write_all(chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
            Err(error) => return Err(scratch.error("writing", error)),
        }
    }
    scratch.file.sync_data().map_err(|e| scratch.error("syncing", e))?;
    Ok(Some(written as f64 / 1e6 / started.elapsed().as_secs_f64()))
}

/// Appends `append_bytes` and syncs, again and again, for `seconds` a round, in rounds.
fn append_and_sync(
    dir: &Path,
    append_bytes: usize,
    seconds: Duration,
) -> Result<SyncRate, BenchError> {
    let mut histogram: Histogram<u64> = new_histogram();
    let rounds = settle(|| append_and_sync_round(dir, append_bytes, seconds, &mut histogram))?;
    Ok(SyncRate {
        append_bytes: append_bytes as u64,
        fdatasync_per_sec: rounds.median(),
        rounds,
        latency_us: LatencySummary::of(&histogram),
    })
}

/// One round: `fdatasync` calls per second, each cycle's latency added to `histogram`.
fn append_and_sync_round(
    dir: &Path,
    append_bytes: usize,
    seconds: Duration,
    histogram: &mut Histogram<u64>,
) -> Result<f64, BenchError> {
    let mut scratch = Scratch::create(dir, "append")?;
    let chunk = vec![0xa5u8; append_bytes];
    let started = Instant::now();
    let mut cycles = 0u64;
    while cycles == 0 || started.elapsed() < seconds {
        let cycle = Instant::now();
        scratch.file.write_all(&chunk).map_err(|e| scratch.error("writing", e))?;
        scratch.file.sync_data().map_err(|e| scratch.error("syncing", e))?;
        histogram.saturating_record(cycle.elapsed().as_nanos() as u64);
        cycles += 1;
    }
    Ok(cycles as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `settle` over a scripted sequence of round figures.
    fn settled(figures: &[f64]) -> Rounds {
        let mut next = figures.iter();
        settle(|| Ok(*next.next().expect("asked for more rounds than scripted"))).unwrap()
    }

    #[test]
    fn rounds_stop_when_two_in_a_row_agree() {
        let rounds = settled(&[375.0, 1400.0, 1500.0]);
        assert_eq!(rounds, Rounds { each: vec![375.0, 1400.0, 1500.0], settled: true });
        assert_eq!((rounds.median(), rounds.min(), rounds.max()), (1400.0, 375.0, 1500.0));
        assert!(settled(&[100.0, 115.0]).settled);
        let unsettled = settled(&[100.0, 200.0, 100.0, 200.0, 100.0, 999.0]);
        assert_eq!((unsettled.each.len(), unsettled.settled), (ROUNDS_MAX, false));
        assert_eq!(unsettled.median(), 100.0);
    }

    fn limits(buffered: f64, synced: f64, per_sec_4k: f64, per_sec_64k: f64) -> DiskLimits {
        let rate = |append_bytes: u64, per_sec: f64| SyncRate {
            append_bytes,
            fdatasync_per_sec: per_sec,
            rounds: Rounds { each: vec![per_sec, per_sec], settled: true },
            latency_us: LatencySummary::default(),
        };
        DiskLimits {
            dir: "/d".into(),
            file_system: "ext4 on /dev/vda".into(),
            buffered_write_mb_per_sec: buffered,
            buffered_write_rounds: Rounds { each: vec![buffered, buffered], settled: true },
            write_fdatasync_mb_per_sec: synced,
            write_fdatasync_rounds: Rounds { each: vec![synced, synced], settled: true },
            sync_4k: rate(4096, per_sec_4k),
            sync_64k: rate(65536, per_sec_64k),
            sync_1m: rate(1 << 20, synced / 2.0 / 1.048576),
            sync_16m: rate(16 << 20, synced / 1.5 / 16.777216),
            direct_fdatasync_mb_per_sec: None,
            direct_fdatasync_rounds: None,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn figures_that_cannot_all_be_true_are_flagged() {
        assert!(contradictions(&limits(2000.0, 500.0, 4000.0, 2000.0)).is_empty());
        // Within the noise allowed: no warning.
        assert!(contradictions(&limits(1000.0, 1100.0, 4000.0, 4400.0)).is_empty());
        let warnings = contradictions(&limits(375.0, 1486.0, 4000.0, 2000.0));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("buffered write (375 MB/s) is slower"), "{warnings:?}");
        let warnings = contradictions(&limits(2000.0, 500.0, 1000.0, 2000.0));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("ran faster than 4 KiB"), "{warnings:?}");
        // 10,000 cycles of 64 KiB a second is 655 MB/s, more than 500 MB/s written at once.
        let warnings = contradictions(&limits(2000.0, 500.0, 20_000.0, 10_000.0));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("moved 655 MB/s"), "{warnings:?}");
        let mut unsettled = limits(2000.0, 500.0, 4000.0, 2000.0);
        unsettled.write_fdatasync_rounds =
            Rounds { each: vec![100.0, 900.0, 100.0, 900.0, 500.0], settled: false };
        let warnings = contradictions(&unsettled);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("write then fdatasync did not settle"), "{warnings:?}");
    }
}
