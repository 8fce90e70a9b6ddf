//! Simulated power loss, many seeds. Random workloads (group appends, syncs, rolls, retention,
//! clean reopens, failing syncs, process crashes) run on the simulated file system, which at
//! each power loss keeps, tears or drops every unsynced write independently. After every crash the log must open
//! unfenced and hold every batch acknowledged as durable, in order and unchanged, nothing that
//! was never written, and no hole. Half the seeds sync through a shared `syncfs` of the whole
//! disk instead of the log's own fsyncs; half write every `always` run directly, and half of
//! those let the direct writes go on behind their appends, on a writer thread.
//!
//! `SPOOL_CRASH_SEEDS=N` runs N seeds (default 500); `SPOOL_CRASH_SEED=S` replays one.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use common::*;
use spool_storage::batch::{BatchBuilder, ProducerStamp};
use spool_storage::sim::{Faults, Rng, SimFileSystem};
use spool_storage::{FsyncPolicy, Log, LogConfig, SharedSync, TimestampMs};

struct World {
    fs: SimFileSystem,
    config: LogConfig,
    log: Option<Log>,
    /// Syncs through one `syncfs` of the whole disk, always shared, instead of the log's own
    /// fsyncs; made anew at every open, as by a server's start.
    shares_syncs: bool,
    shared: Option<SharedSync>,
    clock: i64,
    /// What was appended at each offset that may still be in the log.
    appended: BTreeMap<u64, Rec>,
    /// Every offset below this was acknowledged as durable.
    acked_end: u64,
    crashes: u64,
}

impl World {
    fn log(&mut self) -> &mut Log {
        self.log.as_mut().expect("open")
    }

    fn open(&mut self) {
        let fs = Arc::new(self.fs.clone());
        self.shared = self.shares_syncs.then(|| {
            SharedSync::open(&self.fs, Path::new("/")).expect("a volume").with_alone_max(0)
        });
        let log = Log::open(fs, &dir(), self.config, TimestampMs(self.clock)).expect("open");
        self.log = Some(log);
    }

    fn append_group(&mut self, rng: &mut Rng) {
        let mut batches = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let mut builder = BatchBuilder::new(BytesMut::new());
            let mut records = Vec::new();
            for _ in 0..1 + rng.below(5) {
                let value: Vec<u8> = (0..rng.below(2000)).map(|_| rng.below(256) as u8).collect();
                let timestamp = self.clock + rng.below(100) as i64;
                builder.push(TimestampMs(timestamp), None, Some(&value), &[]);
                records.push((timestamp, value));
            }
            batches.push(builder.finish(ProducerStamp::NONE));
            expected.push(records);
        }
        let now = TimestampMs(self.clock);
        let results = self.log().append_many(&checked(&batches), now);
        for (result, records) in results.into_iter().zip(expected) {
            let Ok(appended) = result else { continue };
            for (i, (timestamp, value)) in records.into_iter().enumerate() {
                let offset = appended.base_offset.0 + i as u64;
                self.appended.insert(offset, Rec { offset, timestamp, key: None, value });
            }
        }
    }

    fn sync(&mut self) {
        let clock = TimestampMs(self.clock);
        let log = self.log.as_mut().expect("open");
        let synced = match &self.shared {
            Some(shared) => {
                let (ticket, result) = shared.run_and_wait(log.begin_sync());
                log.finish_sync(ticket, result, clock)
            }
            None => log.sync(clock),
        };
        if let Ok(durable) = synced {
            self.acked_end = self.acked_end.max(durable.0);
        }
    }

    fn crash_and_check(&mut self, seed: u64, crash: Crash) {
        drop(self.log.take());
        self.fs.set_faults(Faults::default());
        if crash == Crash::PowerLoss {
            self.fs.crash_seeded(seed ^ self.crashes.wrapping_mul(0xA24B_AED4_963E_E407));
        }
        self.crashes += 1;
        self.open();
        let log = self.log.as_ref().unwrap();
        assert!(log.fence().is_none(), "a power loss fenced the log: {:?}", log.fence());
        let next = log.next_offset().0;
        assert!(next >= self.acked_end, "acknowledged offsets {next}..{} are gone", self.acked_end);
        let start = log.log_start_offset();
        let records = read_all(log, start, 64 * 1024);
        assert_eq!(records.len() as u64, next - start.0, "a hole in {}..{next}", start.0);
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.offset, start.0 + i as u64, "out of order");
            let expected = self.appended.get(&record.offset);
            assert!(
                expected == Some(record),
                "offset {} holds something that was never written there",
                record.offset
            );
        }
        self.appended.retain(|&offset, _| offset < next && offset >= start.0);
        // Recovery fsyncs what it kept: all of it is durable now.
        self.acked_end = next;
    }
}

/// What a crash takes: the process only (the page cache survives, as after kill -9), or the
/// machine's power (unsynced writes survive whole, torn or not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    Process,
    PowerLoss,
}

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    // Odd seeds write every run of an `always` log directly (the simulated file system takes
    // direct writes only when aligned), even seeds only the heavy ones, which are none here.
    spool_storage::set_direct_write_bytes_min(if seed % 2 == 1 { 0 } else { u64::MAX });
    // Of those, every other seed lets the direct writes go on behind their appends, on a
    // writer thread.
    let writes_behind = seed % 4 == 3;
    let fsync = match rng.below(3) {
        0 => FsyncPolicy::Always,
        1 => FsyncPolicy::Interval { interval_ms: 20 },
        _ => FsyncPolicy::Never,
    };
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        fsync,
        retention_bytes: (rng.below(2) == 0).then_some(96 * 1024),
        ..LogConfig::default()
    };
    let mut world = World {
        fs: SimFileSystem::new(),
        config,
        log: None,
        shares_syncs: rng.below(2) == 0,
        shared: None,
        clock: 1_000_000,
        appended: BTreeMap::new(),
        acked_end: 0,
        crashes: 0,
    };
    world.fs.set_writes_behind(writes_behind);
    world.open();
    for _ in 0..40 + rng.below(80) {
        world.clock += rng.below(30) as i64;
        match rng.below(100) {
            0..=44 => world.append_group(&mut rng),
            45..=64 => world.sync(),
            65..=69 => {
                let _ = world.log().roll();
            }
            70..=74 => {
                let now = TimestampMs(world.clock);
                world.log().apply_retention(now).expect("retention");
            }
            75..=79 => {
                world.log.take().unwrap().close().expect("close");
                world.open();
                world.acked_end = world.log().next_offset().0;
            }
            80..=86 => world.crash_and_check(seed, Crash::PowerLoss),
            87..=89 => world.crash_and_check(seed, Crash::Process),
            90..=94 => {
                // A failing write refuses its batches and changes nothing. A full disk
                // refuses what does not fit in blocks the file already has (zeros a direct
                // write or the runway left); what fits is appended whole, and the next
                // crash check reads it back.
                // A write behind its append fails after the append's answer: it fences the
                // log (the batches it held were appended), and a crash follows. The faults
                // hold only while no write but the append's runs.
                let _ = world.log().wait_for_writes();
                let next = world.log().next_offset();
                let fail_writes = rng.below(2) == 0;
                let faults = match fail_writes {
                    true => Faults { fail_writes: true, ..Faults::default() },
                    false => Faults { space_bytes_max: Some(0), ..Faults::default() },
                };
                world.fs.set_faults(faults);
                world.append_group(&mut rng);
                let waited = world.log().wait_for_writes();
                world.fs.set_faults(Faults::default());
                if fail_writes && world.log().next_offset() != next {
                    assert!(writes_behind, "a failed write appended");
                    assert!(waited.is_err() && world.log().fence().is_some());
                    let acked_before = world.acked_end;
                    world.sync();
                    assert_eq!(world.acked_end, acked_before, "a failed write acknowledged");
                    world.crash_and_check(seed, Crash::PowerLoss);
                }
            }
            _ => {
                // A failing fsync fences the log and acknowledges nothing; a crash follows.
                world.append_group(&mut rng);
                world.fs.set_faults(Faults { fail_syncs: true, ..Faults::default() });
                let acked_before = world.acked_end;
                world.sync();
                assert_eq!(world.acked_end, acked_before, "a failed fsync acknowledged data");
                assert!(world.log().fence().is_some());
                world.crash_and_check(seed, Crash::PowerLoss);
            }
        }
    }
    world.crash_and_check(seed, Crash::PowerLoss);
}

#[test]
fn acknowledged_data_survives_simulated_power_loss() {
    let seeds: Vec<u64> = match std::env::var("SPOOL_CRASH_SEED") {
        Ok(seed) => vec![seed.parse().expect("SPOOL_CRASH_SEED is a number")],
        Err(_) => {
            let count = std::env::var("SPOOL_CRASH_SEEDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(500u64);
            (0..count).collect()
        }
    };
    for seed in seeds {
        if std::panic::catch_unwind(|| run(seed)).is_err() {
            panic!("seed {seed} failed; replay it with SPOOL_CRASH_SEED={seed}");
        }
    }
}
