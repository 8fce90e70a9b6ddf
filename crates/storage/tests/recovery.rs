//! Recovery rules: a torn tail is cut, damage elsewhere fences the log, indexes are rebuilt,
//! leftovers are cleared, and opening is idempotent.

mod common;

use std::collections::BTreeMap;

use common::*;
use spool_storage::batch::BatchIter;
use spool_storage::sim::SimFileSystem;
use spool_storage::{AppendError, Fence, FsyncPolicy, Log, Offset, TimestampMs};

const NOW: TimestampMs = TimestampMs(1_000_000);

/// A log of several segments, synced and then crashed (no clean shutdown), and the files
/// it left. Batches vary in size so that indexes have entries.
fn crashed_log() -> (BTreeMap<String, Vec<u8>>, Vec<Rec>) {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    for i in 0..120 {
        log.append(&batch_of(1 + (i % 4) as usize, 200 + (i as usize * 37) % 900, i), NOW).unwrap();
    }
    log.roll().unwrap();
    for i in 0..6 {
        log.append(&batch_of(2, 100 + i * 10, 200 + i as i64), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    // Batches appended after a sync carry its durable end: they vouch for what came before.
    for i in 0..2 {
        log.append(&batch_of(1, 50, 300 + i), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    assert!(log.segment_count() >= 3);
    let records = read_all(&log, Offset(0), 1 << 20);
    drop(log);
    fs.crash();
    (snapshot(&fs), records)
}

fn active_name(files: &BTreeMap<String, Vec<u8>>) -> String {
    files.keys().filter(|n| n.ends_with(".log")).max().unwrap().clone()
}

fn open(fs: &SimFileSystem) -> Log {
    sim_open(fs, config(FsyncPolicy::Always))
}

#[test]
fn a_cut_anywhere_in_the_last_batch_is_truncated_to_the_batch_before() {
    let (files, records) = crashed_log();
    let active = active_name(&files);
    let log_bytes = &files[&active];
    let last_start = *batch_positions(log_bytes).last().unwrap();
    let last_count = log_bytes.len() - last_start;
    let survivors: Vec<Rec> = {
        let lost =
            records.iter().rev().take_while(|r| r.offset >= last_batch_base(log_bytes)).count();
        records[..records.len() - lost].to_vec()
    };
    for cut in last_start..log_bytes.len() {
        let mut damaged = files.clone();
        damaged.get_mut(&active).unwrap().truncate(cut);
        let fs = restore(&damaged);
        let log = open(&fs);
        assert!(log.fence().is_none(), "cut at {cut}: {:?}", log.fence());
        assert_eq!(read_all(&log, Offset(0), 1 << 20), survivors, "cut at {cut}");
        let report = log.recovery_report();
        let expected_cut = (cut - last_start) as u64;
        if expected_cut > 0 {
            assert_eq!(report.truncated.as_ref().map(|t| t.1), Some(expected_cut), "cut at {cut}");
        }
        drop(log);
        let once = snapshot(&fs);
        drop(open(&fs));
        let twice = snapshot(&fs);
        let differing: Vec<&String> =
            twice.keys().chain(once.keys()).filter(|k| twice.get(*k) != once.get(*k)).collect();
        assert!(
            differing.is_empty(),
            "recovery is idempotent (cut at {cut}): {differing:?} differ"
        );
    }
    assert!(last_count > 0);
}

fn last_batch_base(log_bytes: &[u8]) -> u64 {
    BatchIter::new(log_bytes).last().unwrap().unwrap().header().base_offset.0
}

#[test]
fn a_flipped_bit_in_the_last_batch_is_a_torn_tail() {
    let (files, records) = crashed_log();
    let active = active_name(&files);
    let log_bytes = &files[&active];
    let last_start = *batch_positions(log_bytes).last().unwrap();
    let base = last_batch_base(log_bytes);
    let survivors: Vec<Rec> = records.iter().filter(|r| r.offset < base).cloned().collect();
    for at in (last_start..log_bytes.len()).step_by(7) {
        let mut damaged = files.clone();
        damaged.get_mut(&active).unwrap()[at] ^= 0x10;
        let fs = restore(&damaged);
        let log = open(&fs);
        assert!(log.fence().is_none(), "flip at {at}: {:?}", log.fence());
        assert_eq!(read_all(&log, Offset(0), 1 << 20), survivors, "flip at {at}");
    }
}

#[test]
fn damage_followed_by_valid_batches_fences_the_log_instead_of_dropping_them() {
    let (files, records) = crashed_log();
    let active = active_name(&files);
    let positions = batch_positions(&files[&active]);
    assert!(positions.len() >= 3);
    let victim = positions[1];
    let mut damaged = files.clone();
    damaged.get_mut(&active).unwrap()[victim + 30] ^= 0xFF;
    let fs = restore(&damaged);
    let mut log = open(&fs);
    let Some(Fence::Damaged { path, position, readable_end, .. }) = log.fence().cloned() else {
        panic!("expected a damage fence, got {:?}", log.fence());
    };
    assert_eq!(path, dir().join(&active));
    assert_eq!(position, victim as u64);
    assert_eq!(log.log_end_offset(), readable_end);
    let readable: Vec<Rec> =
        records.iter().filter(|r| Offset(r.offset) < readable_end).cloned().collect();
    assert_eq!(read_all(&log, Offset(0), 1 << 20), readable);
    assert!(matches!(log.append(&batch_of(1, 1, 1), NOW), Err(AppendError::Fenced(_))));
    assert_eq!(fs.read(&dir().join(&active)).unwrap(), damaged[&active], "evidence is kept");
    drop(log);
    let once = snapshot(&fs);
    let log = open(&fs);
    assert!(log.fence().is_some(), "still fenced on the next open");
    assert!(log.fence().unwrap().to_string().contains(&active));
    drop(log);
    assert_eq!(snapshot(&fs), once);
}

#[test]
fn damage_in_a_sealed_segments_tail_fences_the_log() {
    let (files, _) = crashed_log();
    let sealed = files.keys().find(|n| n.ends_with(".log")).unwrap().clone();
    assert_ne!(sealed, active_name(&files));
    // Truncating a sealed segment is damage, not a torn tail: later segments hold data.
    let mut damaged = files.clone();
    let len = damaged[&sealed].len();
    damaged.get_mut(&sealed).unwrap().truncate(len - 10);
    let log = open(&restore(&damaged));
    assert!(matches!(log.fence(), Some(Fence::Damaged { .. })), "{:?}", log.fence());
    // So is a flipped bit in its last batch.
    let mut damaged = files.clone();
    damaged.get_mut(&sealed).unwrap()[len - 5] ^= 1;
    let log = open(&restore(&damaged));
    assert!(matches!(log.fence(), Some(Fence::Damaged { .. })), "{:?}", log.fence());
}

#[test]
fn missing_or_garbage_indexes_are_rebuilt_the_same() {
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    for i in 0..150 {
        log.append(&batch_of(3, 333, i), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    let records = read_all(&log, Offset(0), 1 << 20);
    log.close().unwrap();
    let files = snapshot(&fs);
    let indexes: Vec<String> = files.keys().filter(|n| n.ends_with("index")).cloned().collect();
    assert!(indexes.len() >= 6);
    for name in &indexes {
        for damage in ["delete", "garbage", "odd length", "zeros"] {
            let mut damaged = files.clone();
            match damage {
                "delete" => {
                    damaged.remove(name);
                }
                "garbage" => {
                    let bytes = damaged.get_mut(name).unwrap();
                    bytes.iter_mut().enumerate().for_each(|(i, b)| *b = (i * 131 % 251) as u8);
                    if bytes.is_empty() {
                        bytes.extend_from_slice(&[0xAB; 24]);
                    }
                }
                "odd length" => damaged.get_mut(name).unwrap().push(1),
                _ => damaged.get_mut(name).unwrap().iter_mut().for_each(|b| *b = 0),
            }
            let fs = restore(&damaged);
            let log = open(&fs);
            assert!(log.fence().is_none(), "{damage} {name}: {:?}", log.fence());
            assert_eq!(read_all(&log, Offset(0), 1 << 20), records, "{damage} {name}");
            assert_eq!(log.offset_for_timestamp(TimestampMs(100)).unwrap(), Some(Offset(300)));
            log.close().unwrap();
            let rebuilt = snapshot(&fs);
            // An index whose damage keeps it consistent (zeros in an empty index) is kept;
            // every other one is rebuilt byte for byte.
            assert_eq!(rebuilt, files, "{damage} {name}: rebuilt indexes equal the originals");
        }
    }
}

#[test]
fn leftovers_are_removed_and_unknown_files_left_alone() {
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    log.append(&batch_of(1, 10, 1), NOW).unwrap();
    log.sync(NOW).unwrap();
    log.close().unwrap();
    fs.write(&dir().join("clean-shutdown.tmp"), b"12");
    fs.write(&dir().join(segment_name(999, "index")), &[0; 16]);
    fs.write(&dir().join("notes.txt"), b"hello");
    let log = open(&fs);
    let report = log.recovery_report().clone();
    assert_eq!(report.removed.len(), 2, "{report}");
    assert_eq!(report.ignored, vec![dir().join("notes.txt")]);
    assert!(fs.read(&dir().join("notes.txt")).is_some());
    assert_eq!(read_all(&log, Offset(0), 1000).len(), 1);
}

#[test]
fn open_and_close_twice_leaves_every_file_byte_identical() {
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    for i in 0..80 {
        log.append(&batch_of(2, 500, i), NOW).unwrap();
    }
    drop(log); // crash without sync
    fs.crash();
    open(&fs).close().unwrap();
    let first = snapshot(&fs);
    open(&fs).close().unwrap();
    assert_eq!(snapshot(&fs), first);
}

#[test]
fn a_hole_in_never_synced_data_is_a_torn_tail_even_with_valid_batches_after_it() {
    // Unsynced writes may reach the disk out of order: a lost page in the middle of them,
    // followed by batches that did land, is still a torn tail, not damage.
    let fs = SimFileSystem::new();
    let mut log = open(&fs);
    for i in 0..5 {
        log.append(&batch_of(2, 300, i), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    let durable = read_all(&log, Offset(0), 1 << 20);
    for i in 0..4 {
        log.append(&batch_of(2, 300, 10 + i), NOW).unwrap();
    }
    drop(log);
    let mut files = snapshot(&fs);
    let active = active_name(&files);
    let positions = batch_positions(&fs.read(&dir().join(&active)).unwrap());
    let bytes = fs.read(&dir().join(&active)).unwrap();
    files.insert(active.clone(), bytes.clone());
    let hole = positions[6];
    files.get_mut(&active).unwrap()[hole..positions[7]].fill(0);
    let fs = restore(&files);
    let log = open(&fs);
    assert!(log.fence().is_none(), "{:?}", log.fence());
    let report = log.recovery_report().clone();
    assert_eq!(report.truncated.map(|t| t.1), Some((bytes.len() - hole) as u64));
    let kept = read_all(&log, Offset(0), 1 << 20);
    assert_eq!(kept[..durable.len()], durable[..]);
    assert_eq!(kept.len(), 12, "the unsynced batch before the hole survived");
}
