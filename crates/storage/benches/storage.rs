//! Storage benchmarks, reported as figures and as fractions of what this machine's disk does
//! in the same run.
//!
//! ```sh
//! cargo bench --bench storage              # full run, a few minutes
//! cargo bench --bench storage -- --quick   # smaller sizes, for a smoke test
//! ```
//!
//! `SPOOL_BENCH_DIR` picks the directory to measure in (default the workspace's
//! `data/bench-storage`, on the same file system as the server's default data directory).
//! Everything written there is removed at the end.
//!
//! What is measured:
//! - the disk: buffered sequential write MB/s, and `fdatasync` calls per second after 4 KiB,
//!   64 KiB and group-sized appends;
//! - appends with fsync `never` and `interval`, per batch size, single and grouped, as a
//!   fraction of buffered write bandwidth;
//! - appends with fsync `always` from concurrent producers with group commit (one writer
//!   appends, one syncer thread fsyncs whatever has accumulated, producers wait for their
//!   batch to be durable), as a fraction of the `fdatasync` rate for groups of that size;
//!   and heavy ones (1 MiB batches, written past the page cache), as a fraction of the disk
//!   writing as many bytes with `O_DIRECT` and one `fdatasync`;
//! - sequential reads, offset lookups and timestamp lookups on a warm page cache;
//! - recovery: opening a 1 GiB log after a clean shutdown and after a crash;
//! - batch encoding and checking;
//! - Kafka's compression codecs on a batch's records section: ratio, compress and decompress
//!   speed (MB/s of uncompressed records).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spool_storage::batch::compression::{self, Codec};
use spool_storage::batch::{
    BATCH_HEADER_BYTES, BatchBuilder, CheckedBatch, ProducerStamp, check_for_append,
};
use spool_storage::fs::{FileSystem, StdFileSystem};
use spool_storage::sim::Rng;
use spool_storage::{FsyncPolicy, Log, LogConfig, Offset, SyncTicket, TimestampMs};

const MIB: f64 = 1024.0 * 1024.0;

struct Settings {
    dir: PathBuf,
    write_bytes: u64,
    recovery_bytes: u64,
    duration: Duration,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // Sections named on the command line run alone: disk, never, interval, always, reads,
    // recovery, batches, compression (cargo passes its own `--bench`; flags are skipped).
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |section: &str| named.is_empty() || named.iter().any(|n| n == section);
    let dir = std::env::var_os("SPOOL_BENCH_DIR")
        .map(PathBuf::from)
        // The workspace's data/ (cargo runs a bench from its own crate's directory).
        .unwrap_or_else(|| {
            let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates/");
            crates.parent().expect("the workspace").join("data/bench-storage")
        });
    let settings = Settings {
        dir: dir.clone(),
        write_bytes: if quick { 32 << 20 } else { 512 << 20 },
        recovery_bytes: if quick { 64 << 20 } else { 1 << 30 },
        duration: Duration::from_millis(if quick { 300 } else { 3000 }),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the benchmark directory");
    let settings = &settings;
    println!(
        "spool-storage benchmarks in {} ({} run)",
        dir.display(),
        if quick { "quick" } else { "full" }
    );

    let mut buffered_mb_s = f64::NAN;
    if wants("disk") || wants("never") || wants("interval") {
        println!("\n## The disk");
        buffered_mb_s = median3(|| buffered_write_mb_s(settings));
        let sync_4k = median3(|| fdatasync_per_s(settings, 4096));
        let sync_64k = median3(|| fdatasync_per_s(settings, 65536));
        println!("buffered sequential write   {buffered_mb_s:>10.0} MB/s");
        println!("fdatasync after 4 KiB       {sync_4k:>10.0} /s");
        println!("fdatasync after 64 KiB      {sync_64k:>10.0} /s");
    }

    if wants("never") {
        never_section(settings, buffered_mb_s);
    }
    if wants("interval") {
        interval_section(settings, buffered_mb_s);
    }
    if wants("always") {
        always_section(settings);
    }
    if wants("reads") {
        reads_section(settings);
    }
    if wants("recovery") {
        println!("\n## Recovery (opening a log of {} MiB)", settings.recovery_bytes >> 20);
        let (clean_ms, crash_ms, scanned) = recovery_ms(settings);
        println!("after a clean shutdown        {clean_ms:>8.1} ms");
        println!(
            "after a crash                 {crash_ms:>8.1} ms   ({scanned} segment(s) scanned, from the recovery point)"
        );
    }
    if wants("batches") {
        println!("\n## Batches");
        let (encode_ns, check_mb_s) = encode_and_check();
        println!("encode, 100-byte records     {encode_ns:>9.1} ns/record");
        println!("check (CRC + records)        {check_mb_s:>9.0} MB/s");
    }
    if wants("compression") {
        compression_section(settings);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn never_section(settings: &Settings, buffered_mb_s: f64) {
    println!("\n## Append, fsync never (fraction of buffered sequential write)");
    println!(
        "(group: batches per append_many call, as the server's writer appends a drained queue)"
    );
    for (records, value_bytes) in [(1, 1024), (16, 1024), (256, 1024)] {
        let batch_kib = records * value_bytes / 1024;
        let group_max = (1024 / batch_kib).clamp(1, 256);
        for group in [1, group_max] {
            let mb_s = median3(|| append_never_mb_s(settings, records, value_bytes, group));
            println!(
                "{batch_kib:>4} KiB batches, group {group:>4}  {mb_s:>8.0} MB/s   {:>5.0}% of buffered write",
                100.0 * mb_s / buffered_mb_s
            );
            if group_max == 1 {
                break;
            }
        }
    }
}

fn interval_section(settings: &Settings, buffered_mb_s: f64) {
    println!("\n## Append, fsync interval (fraction of buffered sequential write)");
    for interval_ms in [5, 100] {
        let (mb_s, syncs_per_s) = median3_pair(|| append_interval(settings, interval_ms));
        println!(
            "  16 KiB batches, group   64, sync every {interval_ms:>3} ms  {mb_s:>8.0} MB/s  {syncs_per_s:>6.0} fsyncs/s  {:>5.0}% of buffered write",
            100.0 * mb_s / buffered_mb_s
        );
    }
}

fn always_section(settings: &Settings) {
    println!("\n## Append, fsync always, concurrent producers with group commit");
    println!(
        "(fraction: fsyncs per second achieved / fdatasync calls per second for groups of that size)"
    );
    for producers in [1, 8, 64] {
        let r = group_commit(settings, producers, 4096);
        let raw = fdatasync_per_s(settings, r.group_bytes.max(1.0) as usize);
        println!(
            "{producers:>3} producers x 4 KiB       {:>10.1} MB/s  {:>8.0} batches/s  {:>7.0} fsyncs/s  group {:>6.1} batches  p50 {:>7.0} us  p99 {:>7.0} us  {:>5.0}% of {raw:.0} fdatasync/s",
            r.mb_s,
            r.batches_per_s,
            r.syncs_per_s,
            r.group_batches,
            r.p50_us,
            r.p99_us,
            100.0 * r.syncs_per_s / raw
        );
    }
    // Heavy appends, as a 1 KiB x 1000 produce brings them: 1 MiB batches from 16 producers,
    // so that about 16 MiB wait while a group is written. An `always` log writes such runs
    // past the page cache; the disk writes as many bytes the same way, with one fdatasync.
    let r = group_commit(settings, 16, 1 << 20);
    let disk = direct_write_mb_s(settings, r.bytes as u64);
    let of_disk = disk.map_or("n/a (no O_DIRECT here)".to_owned(), |disk| {
        format!("{:.2}x of {disk:.0} MB/s, O_DIRECT write+fdatasync", r.mb_s / disk)
    });
    println!(
        " 16 producers x 1 MiB       {:>10.1} MB/s  {:>8.0} batches/s  {:>7.0} fsyncs/s  group {:>6.1} batches  p50 {:>7.0} us  p99 {:>7.0} us  {of_disk}",
        r.mb_s, r.batches_per_s, r.syncs_per_s, r.group_batches, r.p50_us, r.p99_us
    );
}

/// The disk writing `bytes` to a new file in 1 MiB `O_DIRECT` writes, then one `fdatasync`,
/// timed together; `None` where the file system takes no direct writes.
fn direct_write_mb_s(settings: &Settings, bytes: u64) -> Option<f64> {
    const CHUNK: usize = 1 << 20;
    let path = fresh(settings, "raw-direct");
    let file = std::fs::File::create(&path).unwrap();
    let Some(direct) = StdFileSystem.open_direct(&path).unwrap() else {
        drop(file);
        std::fs::remove_file(&path).unwrap();
        return None;
    };
    let mut buffer = memmap2::MmapMut::map_anon(CHUNK).unwrap();
    buffer.fill(7);
    let start = Instant::now();
    let mut written = 0;
    while written < bytes.max(CHUNK as u64) {
        direct.write_all_at(&buffer, written).unwrap();
        written += CHUNK as u64;
    }
    file.sync_data().unwrap();
    let seconds = start.elapsed().as_secs_f64();
    drop((direct, file));
    std::fs::remove_file(&path).unwrap();
    Some(written as f64 / MIB / seconds)
}

fn reads_section(settings: &Settings) {
    println!("\n## Reads (warm page cache)");
    let log = filled_log(settings, 16, 1024);
    let read_mb_s = sequential_read_mb_s(&log);
    println!("sequential read, 1 MiB reads {read_mb_s:>9.0} MB/s");
    let lookup_ns = offset_lookup_ns(&log);
    println!("offset lookup + read 1 batch {lookup_ns:>9.0} ns");
    let time_ns = timestamp_lookup_ns(&log);
    println!("timestamp lookup             {time_ns:>9.0} ns");
}

fn median3(mut f: impl FnMut() -> f64) -> f64 {
    let mut runs = [f(), f(), f()];
    runs.sort_by(f64::total_cmp);
    runs[1]
}

fn fresh(settings: &Settings, name: &str) -> PathBuf {
    let path = settings.dir.join(name);
    let _ = std::fs::remove_dir_all(&path);
    let _ = std::fs::remove_file(&path);
    path
}

fn buffered_write_mb_s(settings: &Settings) -> f64 {
    use std::io::Write;
    let path = fresh(settings, "raw-write");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 1 << 20];
    let start = Instant::now();
    let mut written = 0;
    while written < settings.write_bytes {
        file.write_all(&chunk).unwrap();
        written += chunk.len() as u64;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    written as f64 / MIB / seconds
}

fn fdatasync_per_s(settings: &Settings, append_bytes: usize) -> f64 {
    use std::io::Write;
    let path = fresh(settings, "raw-sync");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; append_bytes];
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < settings.duration {
        file.write_all(&chunk).unwrap();
        file.sync_data().unwrap();
        calls += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    calls as f64 / seconds
}

fn batch(records: usize, value_bytes: usize, timestamp: i64) -> BytesMut {
    let value = vec![b'v'; value_bytes];
    let mut builder = BatchBuilder::new(BytesMut::with_capacity(records * (value_bytes + 32) + 64));
    for _ in 0..records {
        builder.push(TimestampMs(timestamp), Some(b"key"), Some(&value), &[]);
    }
    builder.finish(ProducerStamp::NONE)
}

fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig { fsync, ..LogConfig::default() }
}

fn open(path: &Path, fsync: FsyncPolicy) -> Log {
    Log::open(StdFileSystem::shared(), path, config(fsync), TimestampMs::now()).unwrap()
}

fn append_never_mb_s(settings: &Settings, records: usize, value_bytes: usize, group: usize) -> f64 {
    let path = fresh(settings, "append-never");
    let mut log = open(&path, FsyncPolicy::Never);
    // The same buffers appended over and over: the log stamps each one's base offset in
    // place, which the CRC does not cover.
    let buffers: Vec<BytesMut> = (0..group).map(|_| batch(records, value_bytes, 1)).collect();
    let now = TimestampMs::now();
    let start = Instant::now();
    let mut written = 0u64;
    // Sealed segments are fsynced on another thread while appends go on, as the server does.
    let mut in_flight: Option<std::thread::JoinHandle<(SyncTicket, std::io::Result<()>)>> = None;
    while written < settings.write_bytes {
        append_all(&mut log, &buffers, now);
        written += buffers.iter().map(|b| b.len() as u64).sum::<u64>();
        if in_flight.as_ref().is_some_and(|sync| sync.is_finished()) {
            let (ticket, result) = in_flight.take().unwrap().join().unwrap();
            log.finish_sync(ticket, result, now).unwrap();
        }
        if in_flight.is_none() && log.sync_due(now) {
            let ticket = log.begin_sync();
            in_flight = Some(std::thread::spawn(move || {
                let result = ticket.run();
                (ticket, result)
            }));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(sync) = in_flight {
        let (ticket, result) = sync.join().unwrap();
        log.finish_sync(ticket, result, now).unwrap();
    }
    log.delete().unwrap();
    written as f64 / MIB / seconds
}

/// Checks `buffers` as the server checks each batch before its writer appends it, then
/// appends them as one group.
fn append_all(log: &mut Log, buffers: &[BytesMut], now: TimestampMs) {
    let batches: Vec<CheckedBatch<&[u8]>> =
        buffers.iter().map(|b| CheckedBatch::check(&b[..]).unwrap()).collect();
    for result in log.append_many(&batches, now) {
        result.unwrap();
    }
}

/// Appends 16 KiB batches in groups of 64 and syncs inline whenever the interval has passed.
fn append_interval(settings: &Settings, interval_ms: u64) -> (f64, f64) {
    let path = fresh(settings, "append-interval");
    let mut log = open(&path, FsyncPolicy::Interval { interval_ms });
    let buffers: Vec<BytesMut> = (0..64).map(|_| batch(16, 1024, 1)).collect();
    let start = Instant::now();
    let (mut written, mut syncs) = (0u64, 0u64);
    while written < settings.write_bytes {
        let now = TimestampMs::now();
        append_all(&mut log, &buffers, now);
        written += buffers.iter().map(|b| b.len() as u64).sum::<u64>();
        if log.sync_due(now) {
            log.sync(now).unwrap();
            syncs += 1;
        }
    }
    log.sync(TimestampMs::now()).unwrap();
    let seconds = start.elapsed().as_secs_f64();
    log.delete().unwrap();
    (written as f64 / MIB / seconds, (syncs + 1) as f64 / seconds)
}

fn median3_pair(mut f: impl FnMut() -> (f64, f64)) -> (f64, f64) {
    let mut runs = [f(), f(), f()];
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs[1]
}

struct GroupCommit {
    mb_s: f64,
    batches_per_s: f64,
    syncs_per_s: f64,
    group_batches: f64,
    group_bytes: f64,
    /// Bytes appended in all.
    bytes: f64,
    p50_us: f64,
    p99_us: f64,
}

struct Shared {
    log: Mutex<Log>,
    durable: Mutex<(Offset, bool)>,
    synced: Condvar,
    appended: Condvar,
}

/// Producers append under the log's lock and wait for durability; one syncer thread runs
/// the fsync outside the lock, covering every batch appended since the previous one.
fn group_commit(settings: &Settings, producers: usize, batch_bytes: usize) -> GroupCommit {
    let path = fresh(settings, "append-always");
    let shared = Arc::new(Shared {
        log: Mutex::new(open(&path, FsyncPolicy::Always)),
        durable: Mutex::new((Offset(0), false)),
        synced: Condvar::new(),
        appended: Condvar::new(),
    });
    let syncs = Arc::new(Mutex::new(0u64));
    let syncer = {
        let shared = shared.clone();
        let syncs = syncs.clone();
        std::thread::spawn(move || {
            loop {
                {
                    let mut durable = shared.durable.lock().unwrap();
                    while !durable.1 && shared.log.lock().unwrap().next_offset() == durable.0 {
                        durable = shared.appended.wait(durable).unwrap();
                    }
                    if durable.1 {
                        return;
                    }
                }
                let ticket = shared.log.lock().unwrap().begin_sync();
                let result = ticket.run();
                let offset = shared
                    .log
                    .lock()
                    .unwrap()
                    .finish_sync(ticket, result, TimestampMs::now())
                    .unwrap();
                *syncs.lock().unwrap() += 1;
                shared.durable.lock().unwrap().0 = offset;
                shared.synced.notify_all();
            }
        })
    };
    let deadline = Instant::now() + settings.duration;
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let template = batch(1, batch_bytes - 80, 1);
                let mut scratch = template.clone();
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    scratch.copy_from_slice(&template);
                    let start = Instant::now();
                    let appended =
                        shared.log.lock().unwrap().append(&scratch, TimestampMs::now()).unwrap();
                    shared.appended.notify_one();
                    let mut durable = shared.durable.lock().unwrap();
                    while durable.0 <= appended.last_offset {
                        durable = shared.synced.wait(durable).unwrap();
                    }
                    latencies.push(start.elapsed().as_secs_f64() * 1e6);
                }
                (latencies, scratch.len())
            })
        })
        .collect();
    let start = Instant::now();
    let mut latencies = Vec::new();
    let mut batch_len = 0;
    for t in threads {
        let (l, len) = t.join().unwrap();
        latencies.extend(l);
        batch_len = len;
    }
    let seconds = start.elapsed().as_secs_f64();
    shared.durable.lock().unwrap().1 = true;
    shared.appended.notify_all();
    syncer.join().unwrap();
    let syncs = *syncs.lock().unwrap() as f64;
    latencies.sort_by(f64::total_cmp);
    let batches = latencies.len() as f64;
    let percentile = |p: f64| latencies[((batches - 1.0) * p) as usize];
    let log = Arc::try_unwrap(shared).ok().expect("threads joined").log.into_inner().unwrap();
    log.delete().unwrap();
    GroupCommit {
        mb_s: batches * batch_len as f64 / MIB / seconds,
        batches_per_s: batches / seconds,
        syncs_per_s: syncs / seconds,
        group_batches: batches / syncs,
        group_bytes: batches / syncs * batch_len as f64,
        bytes: batches * batch_len as f64,
        p50_us: percentile(0.5),
        p99_us: percentile(0.99),
    }
}

fn filled_log(settings: &Settings, records: usize, value_bytes: usize) -> Log {
    let path = fresh(settings, "reads");
    let mut log = open(&path, FsyncPolicy::Never);
    let mut written = 0u64;
    let mut timestamp = 0i64;
    while written < settings.write_bytes / 2 {
        let b = batch(records, value_bytes, timestamp);
        log.append(&b, TimestampMs(timestamp)).unwrap();
        written += b.len() as u64;
        timestamp += 1;
    }
    log
}

fn sequential_read_mb_s(log: &Log) -> f64 {
    let run = || {
        let start = Instant::now();
        let mut offset = log.log_start_offset();
        let mut bytes = 0u64;
        loop {
            let read = log.read(offset, 1 << 20).unwrap();
            if read.bytes.is_empty() {
                break;
            }
            bytes += read.bytes.len() as u64;
            offset = read.next_offset;
        }
        bytes as f64 / MIB / start.elapsed().as_secs_f64()
    };
    median3(run)
}

fn offset_lookup_ns(log: &Log) -> f64 {
    let end = log.next_offset().0;
    let mut rng = Rng::new(1);
    median3(|| {
        let n = 20_000;
        let start = Instant::now();
        for _ in 0..n {
            let offset = Offset(rng.below(end));
            std::hint::black_box(log.read(offset, 1).unwrap());
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

fn timestamp_lookup_ns(log: &Log) -> f64 {
    let batches = (log.next_offset().0 / 16) as i64;
    let mut rng = Rng::new(2);
    median3(|| {
        let n = 20_000;
        let start = Instant::now();
        for _ in 0..n {
            let timestamp = TimestampMs(rng.below(batches as u64) as i64);
            std::hint::black_box(log.offset_for_timestamp(timestamp).unwrap());
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

/// Writes a log of `recovery_bytes` (16 KiB batches, synced), then times opening it after a
/// clean close and after the process stopped without closing it (the log is dropped; the
/// page cache keeps everything, as after kill -9). The crash case scans from the recovery
/// point: the active segment.
fn recovery_ms(settings: &Settings) -> (f64, f64, usize) {
    let path = fresh(settings, "recovery");
    let mut log = open(&path, FsyncPolicy::Always);
    let buffers: Vec<BytesMut> = (0..64).map(|_| batch(16, 1024, 1)).collect();
    let mut written = 0u64;
    while written < settings.recovery_bytes {
        let now = TimestampMs::now();
        append_all(&mut log, &buffers, now);
        log.sync(now).unwrap();
        written += buffers.iter().map(|b| b.len() as u64).sum::<u64>();
    }
    log.close().unwrap();
    let start = Instant::now();
    let log = open(&path, FsyncPolicy::Always);
    let clean_ms = start.elapsed().as_secs_f64() * 1e3;
    assert!(log.recovery_report().clean_shutdown);
    drop(log);
    let start = Instant::now();
    let log = open(&path, FsyncPolicy::Always);
    let crash_ms = start.elapsed().as_secs_f64() * 1e3;
    let scanned = log.recovery_report().scanned.len();
    assert!(!log.recovery_report().clean_shutdown);
    log.delete().unwrap();
    (clean_ms, crash_ms, scanned)
}

fn encode_and_check() -> (f64, f64) {
    let value = [b'v'; 100];
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let rounds = 2000;
    let records = 100;
    let start = Instant::now();
    for _ in 0..rounds {
        let mut builder = BatchBuilder::new(std::mem::take(&mut buf));
        for _ in 0..records {
            builder.push(TimestampMs(1), Some(b"key"), Some(&value), &[]);
        }
        buf = builder.finish(ProducerStamp::NONE);
    }
    let encode_ns = start.elapsed().as_nanos() as f64 / (rounds * records) as f64;
    let big = batch(1000, 1000, 1);
    let start = Instant::now();
    let rounds = 200;
    for _ in 0..rounds {
        std::hint::black_box(check_for_append(&big).unwrap());
    }
    let check_mb_s = (rounds * big.len()) as f64 / MIB / start.elapsed().as_secs_f64();
    (encode_ns, check_mb_s)
}

/// Each codec on the records section of a batch of 10,000 JSON events (about 1 MiB), as a
/// producer would compress it and a consumer decompress it.
fn compression_section(settings: &Settings) {
    println!("\n## Compression (the records of one batch of 10,000 JSON events of ~100 bytes)");
    let mut builder = BatchBuilder::new(BytesMut::with_capacity(2 << 20));
    for i in 0..10_000u64 {
        let value = format!(
            r#"{{"id":{i},"user":"user-{}","action":"{}","amount":{},"ts":"2026-11-27T10:{:02}:{:02}Z"}}"#,
            i * 7919 % 10_000,
            ["view", "click", "add-to-cart", "buy"][(i % 4) as usize],
            i * 31 % 9973,
            i / 60 % 60,
            i % 60
        );
        builder.push(
            TimestampMs(1),
            Some(format!("user-{}", i % 100).as_bytes()),
            Some(value.as_bytes()),
            &[],
        );
    }
    let batch = builder.finish(ProducerStamp::NONE);
    let records = &batch[BATCH_HEADER_BYTES..];
    println!("{:.2} MiB of records", records.len() as f64 / MIB);
    for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let payload = compression::compress(codec, records);
        let compress_mb_s = median3(|| {
            mb_s_for(settings.duration, records.len(), || {
                std::hint::black_box(compression::compress(codec, records));
            })
        });
        let decompress_mb_s = median3(|| {
            mb_s_for(settings.duration, records.len(), || {
                std::hint::black_box(
                    compression::decompress(codec, &payload, records.len()).unwrap(),
                );
            })
        });
        println!(
            "{codec:<7} ratio {:>5.2}   compress {compress_mb_s:>6.0} MB/s   decompress {decompress_mb_s:>6.0} MB/s",
            records.len() as f64 / payload.len() as f64
        );
    }
}

/// Runs `round` for at least `duration`; MB/s, counting `bytes` per round.
fn mb_s_for(duration: Duration, bytes: usize, mut round: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut rounds = 0;
    while rounds == 0 || start.elapsed() < duration {
        round();
        rounds += 1;
    }
    (rounds * bytes) as f64 / MIB / start.elapsed().as_secs_f64()
}
