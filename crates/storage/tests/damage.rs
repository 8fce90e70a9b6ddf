//! A batch damaged after it was synced, in a log that opens trusted (it was closed cleanly, so
//! recovery checks only each segment's tail): reads serve every intact batch up to the damage
//! and then report it with its offset and place, and `verify` finds it and every wrong index
//! entry without changing a byte.

mod common;

use std::collections::BTreeMap;

use common::*;
use spool_storage::batch::field;
use spool_storage::sim::SimFileSystem;
use spool_storage::verify::{Severity, find_logs, verify_log};
use spool_storage::{FsyncPolicy, Log, LogConfig, Offset, ReadError, TimestampMs};

const NOW: TimestampMs = TimestampMs(1_000_000);
const BATCHES: u64 = 50;
const RECORDS_PER_BATCH: u64 = 10;

fn config(segment_bytes: u64) -> LogConfig {
    LogConfig { segment_bytes, fsync: FsyncPolicy::Always, ..LogConfig::default() }
}

/// The files of a log of 50 batches of 10 records (timestamps rising batch by batch), closed
/// cleanly, and its records.
fn closed_log(segment_bytes: u64) -> (BTreeMap<String, Vec<u8>>, Vec<Rec>) {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(segment_bytes));
    for i in 0..BATCHES {
        log.append(&batch_of(RECORDS_PER_BATCH as usize, 200, 1_000 + i as i64), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    let records = read_all(&log, Offset(0), 1 << 20);
    assert_eq!(records.len() as u64, BATCHES * RECORDS_PER_BATCH);
    log.close().unwrap();
    (snapshot(&fs), records)
}

fn open(fs: &SimFileSystem, segment_bytes: u64) -> Log {
    sim_open(fs, config(segment_bytes))
}

/// Reads from `from` in chunks of `bytes_max` until the end or the first error.
fn read_until_error(log: &Log, from: Offset, bytes_max: u32) -> (Vec<Rec>, Option<ReadError>) {
    let mut records = Vec::new();
    let mut offset = from;
    loop {
        match log.read(offset, bytes_max) {
            Ok(read) if read.bytes.is_empty() => return (records, None),
            Ok(read) => {
                let fresh = decode(&read.bytes).into_iter().filter(|r| r.offset >= offset.0);
                records.extend(fresh);
                offset = read.next_offset;
            }
            Err(error) => return (records, Some(error)),
        }
    }
}

/// Where in a batch a byte is flipped: its base offset (covered by the stamp CRC), its length
/// (covered by no CRC), its magic byte, its record count, its CRC, and a record's value.
const FLIPS: [(&str, usize); 6] = [
    ("base offset", field::BASE_OFFSET + 1),
    ("length", field::LENGTH + 1),
    ("magic", field::MAGIC),
    ("record count", field::RECORD_COUNT),
    ("crc", field::CRC),
    ("a value", field::RECORDS + 300),
];

#[test]
fn reads_serve_every_batch_before_a_damaged_one_and_then_name_it() {
    let (files, records) = closed_log(1 << 20);
    let name = segment_name(0, "log");
    let positions = batch_positions(&files[&name]);
    assert_eq!(positions.len() as u64, BATCHES);
    let victim = 23;
    let victim_base = victim as u64 * RECORDS_PER_BATCH;
    let intact: Vec<Rec> = records.iter().filter(|r| r.offset < victim_base).cloned().collect();
    for (what, at) in FLIPS {
        let mut damaged = files.clone();
        damaged.get_mut(&name).unwrap()[positions[victim] + at] ^= 0x5A;
        let fs = restore(&damaged);
        let log = open(&fs, 1 << 20);
        assert!(log.fence().is_none(), "{what}: a clean shutdown vouches for the segment");
        // One batch per read, and everything in one read: either way every intact batch
        // arrives, then the damage with the offset the reader was at and where it is.
        for bytes_max in [1, 1 << 20] {
            let (read, error) = read_until_error(&log, Offset(0), bytes_max);
            assert_eq!(read, intact, "{what}, reads of {bytes_max} bytes");
            match error {
                Some(ReadError::Damaged { offset, path, position, reason }) => {
                    assert_eq!(offset, Offset(victim_base), "{what}");
                    assert_eq!(path, dir().join(&name), "{what}");
                    assert_eq!(position, positions[victim] as u64, "{what}: {reason}");
                }
                other => panic!("{what}: expected damage, got {other:?}"),
            }
        }
        // A read from inside the damaged batch names the offset it asked for.
        let inside = Offset(victim_base + 4);
        match log.read(inside, 1 << 20) {
            Err(error @ ReadError::Damaged { offset, .. }) => {
                assert_eq!(offset, inside, "{what}");
                let message = error.to_string();
                for part in
                    [&format!("offset {}", inside.0), &format!("byte {}", positions[victim])]
                {
                    assert!(message.contains(part.as_str()), "{what}: {message}");
                }
            }
            other => panic!("{what}: expected damage, got {other:?}"),
        }
    }
}

#[test]
fn the_batches_after_damage_in_a_record_stay_readable_by_offset() {
    let (files, records) = closed_log(1 << 20);
    let name = segment_name(0, "log");
    let positions = batch_positions(&files[&name]);
    let mut damaged = files.clone();
    damaged.get_mut(&name).unwrap()[positions[10] + field::RECORDS + 200] ^= 1;
    let log = open(&restore(&damaged), 1 << 20);
    let after = Offset(11 * RECORDS_PER_BATCH);
    let (read, error) = read_until_error(&log, after, 1 << 20);
    assert!(error.is_none(), "{error:?}");
    let expected: Vec<Rec> = records.into_iter().filter(|r| r.offset >= after.0).collect();
    assert_eq!(read, expected);
}

#[test]
fn verify_finds_nothing_in_an_intact_log_and_changes_nothing() {
    let (files, _) = closed_log(64 * 1024);
    assert!(files.keys().filter(|n| n.ends_with(".log")).count() >= 2, "several segments");
    let fs = restore(&files);
    let check = verify_log(&fs, &dir()).unwrap();
    assert!(!check.is_damaged(), "{:?}", check.findings);
    assert!(check.findings.is_empty(), "{:?}", check.findings);
    assert!(check.clean_shutdown);
    assert_eq!(check.batches, BATCHES);
    assert_eq!(check.records, BATCHES * RECORDS_PER_BATCH);
    assert_eq!((check.start_offset, check.end_offset), (Offset(0), Offset(500)));
    assert_eq!(snapshot(&fs), files, "verify writes nothing");
}

#[test]
fn verify_reports_a_damaged_batch_the_offsets_it_hides_and_where_intact_batches_resume() {
    let (files, _) = closed_log(1 << 20);
    let name = segment_name(0, "log");
    let positions = batch_positions(&files[&name]);
    for (what, at) in FLIPS {
        let mut damaged = files.clone();
        damaged.get_mut(&name).unwrap()[positions[23] + at] ^= 0x5A;
        let fs = restore(&damaged);
        let check = verify_log(&fs, &dir()).unwrap();
        assert!(check.is_damaged(), "{what}");
        assert_eq!(check.damaged_batches, 1, "{what}: {:?}", check.findings);
        assert_eq!(check.batches, BATCHES - 1, "{what}: the batches after it are intact");
        assert_eq!(check.end_offset, Offset(500), "{what}");
        let found = &check.findings[0];
        assert_eq!(found.severity, Severity::Damage);
        assert_eq!((found.path.clone(), found.position), (dir().join(&name), positions[23] as u64));
        let resumes = format!(
            "offsets 230 to 239 cannot be read; the next intact batch starts at byte {}",
            positions[24]
        );
        assert!(found.what.contains(&resumes), "{what}: {found}");
        assert_eq!(snapshot(&fs), damaged, "{what}: verify writes nothing");
    }
}

#[test]
fn verify_reports_an_index_entry_that_points_where_no_batch_starts() {
    let (files, _) = closed_log(1 << 20);
    let index = segment_name(0, "index");
    assert!(files[&index].len() >= 16, "the index has entries");
    // The second entry's position moved by one byte: still in order, so recovery keeps it.
    let mut damaged = files.clone();
    let moved = &mut damaged.get_mut(&index).unwrap()[8 + 4];
    *moved = moved.wrapping_add(1);
    let fs = restore(&damaged);
    let check = verify_log(&fs, &dir()).unwrap();
    assert!(check.is_damaged());
    assert_eq!((check.damaged_batches, check.index_errors), (0, 1), "{:?}", check.findings);
    assert_eq!(
        (check.findings[0].path.clone(), check.findings[0].position),
        (dir().join(&index), 8)
    );
    assert!(
        check.findings[0].what.contains("where no intact batch starts"),
        "{}",
        check.findings[0]
    );
    // A reader that the entry sends there meets it as damage, not as an internal error.
    let log = open(&fs, 1 << 20);
    let entry = u32::from_le_bytes(files[&index][8..12].try_into().unwrap());
    match log.read(Offset(u64::from(entry)), 1 << 20) {
        Err(ReadError::Damaged { .. }) => {}
        other => panic!("expected damage, got {other:?}"),
    }
    // A time index entry with the wrong timestamp.
    let time_index = segment_name(0, "timeindex");
    let mut damaged = files.clone();
    damaged.get_mut(&time_index).unwrap()[12] ^= 0x01;
    let check = verify_log(&restore(&damaged), &dir()).unwrap();
    assert_eq!(check.index_errors, 1, "{:?}", check.findings);
    assert!(check.findings[0].what.contains("records timestamp"), "{}", check.findings[0]);
}

#[test]
fn what_the_next_start_repairs_is_reported_but_is_not_damage() {
    // A crash leaves zeros written ahead of the appends: nothing to report.
    let fs = SimFileSystem::new();
    let mut log = open(&fs, 1 << 20);
    for i in 0..5 {
        log.append(&batch_of(2, 50, i), NOW).unwrap();
        log.sync(NOW).unwrap();
    }
    drop(log);
    fs.crash();
    let files = snapshot(&fs);
    assert!(files[&segment_name(0, "log")].ends_with(&[0; 1024]), "a runway");
    let check = verify_log(&restore(&files), &dir()).unwrap();
    assert!(check.findings.is_empty(), "{:?}", check.findings);
    assert_eq!(check.batches, 5);

    // A crash leaves a torn last batch (appends too far apart to keep a runway).
    let fs = SimFileSystem::new();
    let mut log = open(&fs, 1 << 20);
    for i in 0..5 {
        log.append(&batch_of(2, 50, i), TimestampMs(NOW.0 + i * 1000)).unwrap();
    }
    log.sync(NOW).unwrap();
    drop(log);
    fs.crash();
    let mut files = snapshot(&fs);
    let name = segment_name(0, "log");
    let len = files[&name].len();
    files.get_mut(&name).unwrap().truncate(len - 7);
    let check = verify_log(&restore(&files), &dir()).unwrap();
    assert!(!check.is_damaged(), "{:?}", check.findings);
    assert_eq!(check.findings.len(), 1);
    assert_eq!(check.findings[0].severity, Severity::Repairable);
    assert!(check.findings[0].what.contains("the next start cuts them"), "{}", check.findings[0]);
    assert_eq!(check.batches, 4);

    // A missing index is rebuilt at start.
    let (mut files, _) = closed_log(1 << 20);
    files.remove(&segment_name(0, "index"));
    let check = verify_log(&restore(&files), &dir()).unwrap();
    assert!(!check.is_damaged(), "{:?}", check.findings);
    assert_eq!(check.findings[0].severity, Severity::Repairable);
}

#[test]
fn find_logs_finds_every_log_directory_and_skips_unfinished_ones() {
    let fs = SimFileSystem::new();
    let root = std::path::Path::new("/data");
    let logs = ["topics/a/0", "topics/a/1", "topics/b.c/0", "internal/offsets/3"];
    for log in logs.iter().chain(&["internal/offsets/4.tmp"]) {
        let log = Log::open(std::sync::Arc::new(fs.clone()), &root.join(log), config(1 << 20), NOW)
            .unwrap();
        log.close().unwrap();
    }
    let mut expected: Vec<_> = logs.iter().map(|log| root.join(log)).collect();
    expected.sort();
    assert_eq!(find_logs(&fs, root).unwrap(), expected);
}
