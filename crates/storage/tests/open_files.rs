//! What an open log holds of the process's open files and memory maps. Alone in its test
//! binary, so that no other test opens or maps files while these are counted.

mod common;

use std::path::Path;

use common::*;
use spool_storage::{FsyncPolicy, TimestampMs};

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
fn a_log_holds_one_open_file_per_segment_and_an_empty_one_no_map() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("t-0");
    let config = config(FsyncPolicy::Always);

    let mut log = std_open(&dir, config);
    assert_eq!(open_files(&dir), 1, "an empty log holds its active segment's file only");
    assert_eq!(maps(&dir), 0, "an empty segment's indexes are not mapped");

    // Three sealed segments and an active one.
    for _ in 0..3 {
        for _ in 0..2 {
            log.append(&batch_of(10, 1000, 5), NOW).unwrap();
        }
        log.roll().unwrap();
    }
    log.append(&batch_of(10, 1000, 5), NOW).unwrap();
    assert_eq!(open_files(&dir), 4, "one per segment: the indexes hold no file");
    log.close().unwrap();
    assert_eq!(open_files(&dir), 0);

    // Reopened after a clean close: the same.
    let log = std_open(&dir, config);
    assert_eq!(open_files(&dir), 4);
    drop(log);
    assert_eq!((open_files(&dir), maps(&dir)), (0, 0));
}
