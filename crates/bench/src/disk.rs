//! `spool bench disk`: what the disk under the data directory can do, so every produce
//! figure can be read as a fraction of it.
//!
//! Four measurements, each on a fresh file in the directory, removed afterwards:
//!
//! 1. buffered sequential write: `bytes` in 1 MiB writes, no sync (the page cache's speed);
//! 2. write then `fdatasync`: the same writes and one `fdatasync` at the end, timed together
//!    (what an fsync-per-large-batch log can reach at best);
//! 3. and 4. `fdatasync` calls per second: for `append_seconds` each, append 4 KiB (then
//!    64 KiB) and `fdatasync`, as a log syncing every small append would; the latency of each
//!    cycle is kept, so a single durable write can be compared with the disk's own median.

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

/// What to measure, and for how long.
#[derive(Debug, Clone)]
pub struct DiskPlan {
    pub dir: PathBuf,
    /// Bytes written by each sequential measurement.
    pub bytes: u64,
    /// How long each append-and-sync measurement runs.
    pub append_seconds: f64,
}

/// One append-and-sync measurement.
#[derive(Debug, Clone, Serialize)]
pub struct SyncRate {
    pub append_bytes: u64,
    pub fdatasync_per_sec: f64,
    /// Latency of one append + `fdatasync` cycle.
    pub latency_us: LatencySummary,
}

/// The disk's limits, measured in one directory.
#[derive(Debug, Clone, Serialize)]
pub struct DiskLimits {
    pub dir: String,
    pub file_system: String,
    pub buffered_write_mb_per_sec: f64,
    pub write_fdatasync_mb_per_sec: f64,
    pub sync_4k: SyncRate,
    pub sync_64k: SyncRate,
}

/// Runs the four measurements.
pub fn measure(plan: &DiskPlan) -> Result<DiskLimits, BenchError> {
    std::fs::create_dir_all(&plan.dir)
        .map_err(|source| BenchError::io(format!("creating {}", plan.dir.display()), source))?;
    let buffered = sequential(&plan.dir, plan.bytes, Sync::No)?;
    let synced = sequential(&plan.dir, plan.bytes, Sync::AtEnd)?;
    let seconds = Duration::from_secs_f64(plan.append_seconds);
    let sync_4k = append_and_sync(&plan.dir, 4096, seconds)?;
    let sync_64k = append_and_sync(&plan.dir, 64 * 1024, seconds)?;
    Ok(DiskLimits {
        dir: plan.dir.display().to_string(),
        file_system: crate::machine::file_system(&plan.dir),
        buffered_write_mb_per_sec: buffered,
        write_fdatasync_mb_per_sec: synced,
        sync_4k,
        sync_64k,
    })
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

/// Appends `append_bytes` and syncs, again and again, for `seconds`.
fn append_and_sync(
    dir: &Path,
    append_bytes: usize,
    seconds: Duration,
) -> Result<SyncRate, BenchError> {
    let mut scratch = Scratch::create(dir, "append")?;
    let chunk = vec![0xa5u8; append_bytes];
    let mut histogram: Histogram<u64> = new_histogram();
    let started = Instant::now();
    let mut cycles = 0u64;
    while cycles == 0 || started.elapsed() < seconds {
        let cycle = Instant::now();
        scratch.file.write_all(&chunk).map_err(|e| scratch.error("writing", e))?;
        scratch.file.sync_data().map_err(|e| scratch.error("syncing", e))?;
        histogram.saturating_record(cycle.elapsed().as_nanos() as u64);
        cycles += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(SyncRate {
        append_bytes: append_bytes as u64,
        fdatasync_per_sec: cycles as f64 / elapsed,
        latency_us: LatencySummary::of(&histogram),
    })
}
