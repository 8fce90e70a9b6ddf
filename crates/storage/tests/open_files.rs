//! What an open log holds of the process's open files and memory maps. Alone in its test
//! binary, so that no other test opens or maps files while these are counted.

mod common;

use std::path::Path;

use common::*;
use spool_storage::{FsyncPolicy, Offset, TimestampMs, set_sealed_files_open_max};

const NOW: TimestampMs = TimestampMs(1_000_000);

/// Open files of this process under `dir`.
fn open_files(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Memory maps of this process of files under `dir`.
fn maps(dir: &Path) -> usize {
    let dir = dir.to_str().unwrap();
    std::fs::read_to_string("/proc/self/maps").unwrap().lines().filter(|l| l.contains(dir)).count()
}

#[test]
fn a_log_holds_its_active_segment_open_and_sealed_ones_only_in_a_bounded_cache() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("t-0");
    let config = config(FsyncPolicy::Always);

    let mut log = std_open(&dir, config);
    assert_eq!(open_files(&dir), 1, "an empty log holds its active segment's file only");
    assert_eq!(maps(&dir), 0, "an empty segment's indexes are not mapped");

    // Three sealed segments and an active one: the sealed ones' files are in the cache,
    // which holds two at most here.
    set_sealed_files_open_max(2);
    for _ in 0..3 {
        for _ in 0..2 {
            log.append(&batch_of(10, 1000, 5), NOW).unwrap();
        }
        log.roll().unwrap();
    }
    log.append(&batch_of(10, 1000, 5), NOW).unwrap();
    assert_eq!(open_files(&dir), 1 + 2, "the active file and the two cached");
    log.close().unwrap();
    assert_eq!(open_files(&dir), 0, "closing a log closes its cached files too");

    // Reopened after a clean close: only the active segment's file, until a read.
    let log = std_open(&dir, config);
    assert_eq!(open_files(&dir), 1, "sealed segments hold no file after a start");
    let everything = read_all(&log, Offset(0), 1 << 20);
    assert_eq!(everything.len(), 70);
    assert_eq!(open_files(&dir), 1 + 2, "a replay of every segment leaves two cached");
    drop(log);
    assert_eq!((open_files(&dir), maps(&dir)), (0, 0));
}
