//! Syncs of many logs shared in one `syncfs` (`SharedSync`), on the simulated disk: what a
//! shared round acknowledges survives power loss, a failed round fences exactly the logs it
//! covered, and after it every sync runs alone.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::*;
use spool_storage::sim::{Faults, SimFileSystem};
use spool_storage::{FsyncPolicy, Log, Offset, SharedSync, SharedSyncStats, TimestampMs};

const NOW: TimestampMs = TimestampMs(1_000_000);

fn log_dir(i: usize) -> PathBuf {
    dir().join(i.to_string())
}

/// `count` logs, each with one batch appended and not synced.
fn written_logs(fs: &SimFileSystem, count: usize) -> Vec<Log> {
    (0..count)
        .map(|i| {
            let mut log =
                Log::open(Arc::new(fs.clone()), &log_dir(i), config(FsyncPolicy::Always), NOW)
                    .unwrap();
            log.append(&batch_of(3, 100, NOW.0), NOW).unwrap();
            log
        })
        .collect()
}

fn shared_always(fs: &SimFileSystem) -> SharedSync {
    SharedSync::open(fs, &dir()).expect("the simulated disk is a volume").with_alone_max(0)
}

/// Runs every log's sync through `shared` on one thread; each log's durable offset or error.
fn sync_all(shared: &SharedSync, logs: &mut [Log]) -> Vec<Result<Offset, String>> {
    logs.iter_mut()
        .map(|log| {
            let (ticket, result) = shared.run_and_wait(log.begin_sync());
            log.finish_sync(ticket, result, NOW).map_err(|e| e.to_string())
        })
        .collect()
}

#[test]
fn what_a_shared_round_acknowledges_survives_power_loss() {
    let fs = SimFileSystem::new();
    let shared = shared_always(&fs);
    let mut logs = written_logs(&fs, 5);
    assert!(sync_all(&shared, &mut logs).iter().all(|r| r == &Ok(Offset(3))));
    assert_eq!(shared.stats(), SharedSyncStats { rounds: 5, covered: 5 });
    drop(logs);
    fs.crash();
    for i in 0..5 {
        let log =
            Log::open(Arc::new(fs.clone()), &log_dir(i), config(FsyncPolicy::Always), NOW).unwrap();
        assert_eq!(log.next_offset(), Offset(3), "log {i}");
    }
}

#[test]
fn a_round_covers_every_sync_queued_while_the_one_before_ran() {
    let fs = SimFileSystem::new();
    let shared = Arc::new(shared_always(&fs));
    let logs: Vec<Arc<Mutex<Log>>> =
        written_logs(&fs, 6).into_iter().map(|log| Arc::new(Mutex::new(log))).collect();
    // The first log's completion queues the other five: this thread runs them all, in one
    // more round.
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let first = logs[0].lock().unwrap().begin_sync();
    let (inner_shared, inner_logs, inner_outcomes) =
        (shared.clone(), logs.clone(), outcomes.clone());
    shared.run(
        first,
        Box::new(move |ticket, result| {
            let outcome = inner_logs[0].lock().unwrap().finish_sync(ticket, result, NOW);
            inner_outcomes.lock().unwrap().push(outcome.is_ok());
            for log in &inner_logs[1..] {
                let ticket = log.lock().unwrap().begin_sync();
                let (log, outcomes) = (log.clone(), inner_outcomes.clone());
                inner_shared.run(
                    ticket,
                    Box::new(move |ticket, result| {
                        let outcome = log.lock().unwrap().finish_sync(ticket, result, NOW);
                        outcomes.lock().unwrap().push(outcome.is_ok());
                    }),
                );
            }
        }),
    );
    assert_eq!(*outcomes.lock().unwrap(), vec![true; 6]);
    assert_eq!(shared.stats(), SharedSyncStats { rounds: 2, covered: 6 });
    for log in &logs {
        assert_eq!(log.lock().unwrap().durable_offset(), Offset(3));
    }
}

#[test]
fn a_failed_round_fences_what_it_covered_and_then_every_sync_runs_alone() {
    let fs = SimFileSystem::new();
    let shared = shared_always(&fs);
    let mut logs = written_logs(&fs, 3);
    fs.set_faults(Faults { fail_syncs: true, ..Faults::default() });
    let failed = sync_all(&shared, &mut logs[..1]);
    let error = failed[0].as_ref().unwrap_err();
    assert!(error.contains("syncfs"), "{error}");
    assert!(logs[0].fence().is_some());
    // The disk works again, but no round runs after a failure: the others sync alone.
    fs.set_faults(Faults::default());
    assert_eq!(sync_all(&shared, &mut logs[1..]), vec![Ok(Offset(3)), Ok(Offset(3))]);
    assert_eq!(shared.stats(), SharedSyncStats { rounds: 1, covered: 1 });
}

#[test]
fn syncs_from_many_threads_are_all_answered() {
    let fs = SimFileSystem::new();
    let shared = Arc::new(SharedSync::open(&fs, &dir()).unwrap().with_alone_max(2));
    let logs = written_logs(&fs, 32);
    let handles: Vec<_> = logs
        .into_iter()
        .map(|mut log| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let (ticket, result) = shared.run_and_wait(log.begin_sync());
                log.finish_sync(ticket, result, NOW).unwrap()
            })
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), Offset(3));
    }
}

#[test]
fn without_a_volume_every_sync_runs_alone() {
    let fs = SimFileSystem::new();
    let shared = SharedSync::alone().with_alone_max(0);
    let mut logs = written_logs(&fs, 3);
    assert!(sync_all(&shared, &mut logs).iter().all(|r| r == &Ok(Offset(3))));
    assert_eq!(shared.stats(), SharedSyncStats::default());
}
