//! A replicated log's needs of the segment log, on the simulated disk: batches stamped with
//! a term and an index (records and control batches), found again by index, read before
//! they are synced, and a tail cut that survives a crash at any step.

mod common;

use std::sync::Arc;

use common::*;
use spool_storage::batch::{BatchIter, BatchKind, CheckedBatch, EntryStamp};
use spool_storage::sim::SimFileSystem;
use spool_storage::{FsyncPolicy, Log, Offset, TimestampMs};

const NOW: TimestampMs = TimestampMs(1_000_000);

fn open(fs: &SimFileSystem) -> Log {
    Log::open(Arc::new(fs.clone()), &dir(), config(FsyncPolicy::Always), NOW).expect("open")
}

/// Entry `index` of term `term`: every fifth a control batch, the others 1 to 4 records of
/// 5 KiB (so 64 KiB segments roll every few entries).
fn entry(term: u64, index: u64) -> CheckedBatch<bytes::Bytes> {
    if index % 5 == 0 {
        let payload = format!("control {index}");
        return CheckedBatch::control(2, payload.as_bytes(), NOW).with_entry(term, index);
    }
    let records = 1 + (index % 4) as usize;
    CheckedBatch::check(batch_of(records, 5 * 1024, NOW.0).freeze())
        .expect("a valid batch")
        .with_entry(term, index)
}

/// Appends entries `indexes` of `term` one group at a time; returns each one's base offset.
fn append(log: &mut Log, term: u64, indexes: std::ops::Range<u64>) -> Vec<(u64, Offset)> {
    let batches: Vec<_> = indexes.clone().map(|i| entry(term, i)).collect();
    let borrowed: Vec<_> = batches.iter().map(|b| b.borrowed()).collect();
    let results = log.append_many(&borrowed, NOW);
    indexes.zip(results).map(|(i, r)| (i, r.expect("appended").base_offset)).collect()
}

/// Every batch's stamp, read through `read_written` from the start.
fn stamps(log: &Log) -> Vec<EntryStamp> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let read = log.read_written(offset, 1 << 20).expect("read");
        if read.bytes.is_empty() {
            return out;
        }
        for view in BatchIter::new(&read.bytes) {
            out.push(view.expect("intact").header().entry);
        }
        offset = read.next_offset;
    }
}

#[test]
fn entries_are_found_by_index_before_and_after_a_sync() {
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    assert_eq!(log.last_entry().unwrap(), None);
    assert_eq!(log.find_entry(1).unwrap(), None);
    let placed = append(&mut log, 3, 1..40);
    assert!(log.segment_count() > 3, "the entries span segments");
    assert!(log.durable_offset() < log.next_offset(), "the active segment is not synced");
    for &(index, offset) in &placed {
        assert_eq!(log.find_entry(index).unwrap(), Some(offset), "entry {index}");
        let at = log.entry_at(offset).unwrap();
        assert_eq!((at.entry.term, at.entry.index), (3, index));
        let kind = if index % 5 == 0 { BatchKind::Control } else { BatchKind::Records };
        assert_eq!(at.entry.kind, kind);
    }
    assert_eq!(log.find_entry(0).unwrap(), None);
    assert_eq!(log.find_entry(40).unwrap(), None);
    assert_eq!(log.last_entry().unwrap().map(|at| at.entry.index), Some(39));
    let read: Vec<u64> = stamps(&log).iter().map(|s| s.index).collect();
    assert_eq!(read, (1..40).collect::<Vec<_>>());
    log.sync(NOW).unwrap();
    drop(log);
    fs.crash();
    let log = open(&fs);
    for &(index, offset) in &placed {
        assert_eq!(log.find_entry(index).unwrap(), Some(offset), "entry {index} after a crash");
    }
}

#[test]
fn a_truncated_tail_is_gone_and_the_log_goes_on_from_the_cut() {
    // Cut points: mid-segment, the first entry, the last, and every one in between.
    for cut in 1..30u64 {
        let fs = SimFileSystem::new();
        let mut log = open(&fs);
        let placed = append(&mut log, 1, 1..30);
        log.sync(NOW).unwrap();
        let from = placed[(cut - 1) as usize].1;
        log.truncate(from, NOW).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(log.next_offset(), from, "cut at {cut}");
        assert_eq!(log.last_entry().unwrap().map(|at| at.entry.index), (cut > 1).then(|| cut - 1));
        assert_eq!(log.find_entry(cut).unwrap(), None);
        let again = append(&mut log, 2, cut..cut + 5);
        assert_eq!(again[0].1, from, "the next entry takes the cut's offset");
        log.sync(NOW).unwrap();
        drop(log);
        fs.crash();
        let log = open(&fs);
        let expected: Vec<(u64, u64)> =
            (1..cut).map(|i| (1, i)).chain((cut..cut + 5).map(|i| (2, i))).collect();
        let read: Vec<(u64, u64)> = stamps(&log).iter().map(|s| (s.term, s.index)).collect();
        assert_eq!(read, expected, "cut at {cut}, after a crash");
    }
}

#[test]
fn a_cut_at_anything_but_a_batch_start_is_refused() {
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    let placed = append(&mut log, 1, 1..5);
    let inside = Offset(placed[2].1.0 + 1);
    let error = log.truncate(inside, NOW).unwrap_err().to_string();
    assert!(error.contains("starts at offset"), "{error}");
    let error = log.truncate(Offset(1_000), NOW).unwrap_err().to_string();
    assert!(error.contains("cannot cut"), "{error}");
    assert_eq!(stamps(&log).len(), 4, "nothing was cut");
}

#[test]
fn a_crash_at_any_step_of_a_cut_leaves_a_prefix_of_the_log_and_nothing_before_the_cut_lost() {
    // How many changing steps a whole cut takes, to crash at each of them.
    let steps = {
        let fs = SimFileSystem::new();
        let mut log = open(&fs);
        let placed = append(&mut log, 1, 1..30);
        log.sync(NOW).unwrap();
        let before = fs.steps();
        log.truncate(placed[7].1, NOW).unwrap();
        fs.steps() - before
    };
    for halt in 0..=steps {
        for seed in [halt, halt * 7919 + 1] {
            let fs = SimFileSystem::new();
            let mut log = open(&fs);
            let placed = append(&mut log, 1, 1..30);
            log.sync(NOW).unwrap();
            fs.halt_after_steps(halt);
            let cut = log.truncate(placed[7].1, NOW);
            drop(log);
            fs.crash_seeded(seed);
            let log = open(&fs);
            let read: Vec<u64> = stamps(&log).iter().map(|s| s.index).collect();
            let context = format!("halt after {halt} steps, seed {seed}, cut {cut:?}");
            assert!(read.len() >= 7, "{context}: entries before the cut lost: {read:?}");
            assert_eq!(read, (1..=read.len() as u64).collect::<Vec<_>>(), "{context}");
            if cut.is_ok() {
                assert_eq!(read.len(), 7, "{context}: a cut that returned is durable");
            }
        }
    }
}

#[test]
fn readers_of_a_replicated_log_see_only_what_is_committed() {
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    let placed = append(&mut log, 1, 1..20);
    log.sync(NOW).unwrap();
    log.set_committed(log.log_start_offset()).unwrap();
    assert_eq!(log.log_end_offset(), Offset(0));
    assert!(log.read(Offset(0), 1 << 20).unwrap().bytes.is_empty());
    let commit = placed[10].1;
    log.set_committed(commit).unwrap();
    assert_eq!(log.log_end_offset(), commit);
    let mut offset = Offset(0);
    let mut seen = 0;
    loop {
        let read = log.read(offset, 1 << 20).unwrap();
        if read.bytes.is_empty() {
            break;
        }
        seen += BatchIter::new(&read.bytes).count();
        offset = read.next_offset;
    }
    assert_eq!((offset, seen), (commit, 10), "the ten entries before the commit point");
    // A point inside a batch is taken back to its start.
    log.set_committed(Offset(placed[12].1.0 + 1)).unwrap();
    assert_eq!(log.log_end_offset(), placed[12].1);
    // A cut after the commit point keeps it.
    log.truncate(placed[15].1, NOW).unwrap();
    assert_eq!(log.log_end_offset(), placed[12].1);
}

#[test]
fn damage_is_cut_back_to_the_intact_segments_before_it_and_the_log_goes_on() {
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    append(&mut log, 1, 1..40);
    log.sync(NOW).unwrap();
    drop(log);
    let files = snapshot(&fs);
    let segments: Vec<&String> = files.keys().filter(|name| name.ends_with(".log")).collect();
    assert!(segments.len() > 3, "the entries span segments");
    // A flipped bit near the end of a sealed segment in the middle: synced data, damaged.
    let victim = segments[segments.len() / 2].clone();
    let cut: u64 = victim.trim_end_matches(".log").parse().unwrap();
    let mut damaged = files.clone();
    let len = damaged[&victim].len();
    damaged.get_mut(&victim).unwrap()[len - 5] ^= 1;
    let fs = restore(&damaged);
    let mut log = open(&fs);
    assert!(log.fence().is_some(), "damage fences the log");
    let end = log.cut_damage(NOW).expect("cut");
    assert_eq!(end, Offset(cut), "the log ends where the damaged segment began");
    assert!(log.fence().is_none());
    let kept: Vec<u64> = stamps(&log).iter().map(|s| s.index).collect();
    let last = *kept.last().expect("entries before the damage");
    assert_eq!(kept, (1..=last).collect::<Vec<_>>(), "an intact prefix");
    assert_eq!(log.cut_damage(NOW).unwrap(), end, "an intact log is left as it is");
    let again = append(&mut log, 2, last + 1..last + 4);
    assert_eq!(again[0].1, end, "the next entry takes the cut's offset");
    log.sync(NOW).unwrap();
    drop(log);
    fs.crash();
    let log = open(&fs);
    assert!(log.fence().is_none());
    let read: Vec<u64> = stamps(&log).iter().map(|s| s.index).collect();
    assert_eq!(read, (1..=last + 3).collect::<Vec<_>>(), "after a crash");
    let later = snapshot(&fs).into_keys().filter(|n| n.ends_with(".log") && *n > victim).count();
    assert_eq!(later, 0, "no segment after the cut is left");
}

#[test]
fn retention_of_a_replicated_log_keeps_what_is_not_committed() {
    let fs = SimFileSystem::new();
    let mut cfg = config(FsyncPolicy::Always);
    cfg.retention_bytes = Some(1);
    let mut log = Log::open(Arc::new(fs.clone()), &dir(), cfg, NOW).expect("open");
    let placed = append(&mut log, 1, 1..40);
    log.sync(NOW).unwrap();
    let commit = placed[20].1;
    log.set_committed(commit).unwrap();
    let end = log.retention_end(NOW, log.log_end_offset()).expect("segments past the limit");
    assert!(end <= commit, "only whole segments below the commit point: {end} of {commit}");
    assert!(log.segments().any(|segment| segment.base_offset == end), "{end} starts a segment");
    assert!(log.segments().any(|segment| segment.base_offset > end), "later segments stay");
    log.remove_segments_before(end).unwrap();
    assert_eq!(log.log_start_offset(), end);
    assert_eq!(log.log_end_offset(), commit, "the commit point stays");
    assert_eq!(log.find_entry(1).unwrap(), None);
    assert_eq!(log.last_entry().unwrap().map(|at| at.entry.index), Some(39));
}

#[test]
fn a_restarted_log_is_empty_and_goes_on_from_the_offset_it_was_given() {
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    append(&mut log, 1, 1..40);
    log.sync(NOW).unwrap();
    log.set_committed(Offset(3)).unwrap();
    log.restart_at(Offset(5_000), NOW).unwrap();
    assert_eq!((log.log_start_offset(), log.next_offset()), (Offset(5_000), Offset(5_000)));
    assert_eq!(log.log_end_offset(), Offset(5_000), "readers see nothing yet");
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.last_entry().unwrap(), None);
    let placed = append(&mut log, 2, 40..45);
    assert_eq!(placed[0].1, Offset(5_000));
    log.sync(NOW).unwrap();
    drop(log);
    fs.crash();
    let log = open(&fs);
    assert_eq!(log.log_start_offset(), Offset(5_000));
    let read: Vec<u64> = stamps(&log).iter().map(|s| s.index).collect();
    assert_eq!(read, (40..45).collect::<Vec<_>>());
    assert_eq!(log.find_entry(40).unwrap(), Some(Offset(5_000)));
}
