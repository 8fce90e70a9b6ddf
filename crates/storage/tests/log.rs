//! Behaviour of the partition log through its public API.

mod common;

use common::*;
use spool_storage::sim::{Faults, SimFileSystem};
use spool_storage::{
    AppendError, FsyncPolicy, Log, LogConfig, Offset, ReadError, SyncError, TimestampMs,
};

const NOW: TimestampMs = TimestampMs(1_000_000);

#[test]
fn append_assigns_offsets_and_reads_return_the_stored_bytes() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Never));
    let first = batch(&[(10, b"a"), (11, b"b")]);
    let appended = log.append(&first, NOW).unwrap();
    assert_eq!((appended.base_offset, appended.last_offset), (Offset(0), Offset(1)));
    let second = batch(&[(12, b"c")]);
    assert_eq!(log.append(&second, NOW).unwrap().base_offset, Offset(2));

    // Stored as sent, but for the fields stamped at append, which the log writes in a copy
    // of each batch's head: the batches passed in are not changed.
    let read = log.read(Offset(0), 1 << 20).unwrap();
    let stored = |batch: &[u8], base| {
        let checked = spool_storage::batch::CheckedBatch::check(batch).unwrap();
        checked.stored(Offset(base), Offset(0))
    };
    let mut expected = stored(&first, 0).to_vec();
    expected.extend_from_slice(&stored(&second, 2));
    assert_eq!(&read.bytes[..], &expected[..], "consumers get the stored bytes");
    assert_eq!(first, batch(&[(10, b"a"), (11, b"b")]), "append leaves its input alone");
    assert_eq!(read.next_offset, Offset(3));

    // Reading from the middle of a batch returns the batch that holds the offset.
    let read = log.read(Offset(1), 1 << 20).unwrap();
    assert_eq!(decode(&read.bytes)[0].offset, 0);
    assert_eq!(log.read(Offset(3), 100).unwrap().bytes.len(), 0);
}

#[test]
fn a_read_returns_at_least_one_whole_batch_and_never_a_partial_one() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Never));
    for _ in 0..3 {
        log.append(&batch_of(4, 100, 5), NOW).unwrap();
    }
    let one = log.read(Offset(0), 1).unwrap();
    assert_eq!(decode(&one.bytes).len(), 4);
    assert_eq!(one.next_offset, Offset(4));
    let size = one.bytes.len() as u32;
    let two = log.read(Offset(0), size * 2 + size / 2).unwrap();
    assert_eq!(two.bytes.len() as u32, size * 2);
}

#[test]
fn reads_outside_the_log_say_which_offsets_exist() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Never));
    log.append(&batch_of(2, 10, 5), NOW).unwrap();
    match log.read(Offset(3), 100) {
        Err(ReadError::OffsetOutOfRange { requested, log_start, log_end }) => {
            assert_eq!((requested, log_start, log_end), (Offset(3), Offset(0), Offset(2)));
        }
        other => panic!("expected out of range, got {other:?}"),
    }
}

#[test]
fn under_fsync_always_readers_see_only_what_was_synced() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    log.append(&batch_of(3, 10, 5), NOW).unwrap();
    assert_eq!(log.log_end_offset(), Offset(0));
    assert_eq!(log.read(Offset(0), 1000).unwrap().bytes.len(), 0);
    let ticket = log.begin_sync();
    // Appends made while the fsync runs are left for the next one: group commit.
    log.append(&batch_of(1, 10, 5), NOW).unwrap();
    let result = ticket.run();
    assert_eq!(log.finish_sync(ticket, result, NOW).unwrap(), Offset(3));
    assert_eq!(read_all(&log, Offset(0), 1000).len(), 3);
    assert_eq!(log.sync(NOW).unwrap(), Offset(4));
    assert_eq!(read_all(&log, Offset(0), 1000).len(), 4);
}

#[test]
fn a_failed_fsync_fences_the_log_and_is_never_retried() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    log.append(&batch_of(1, 10, 5), NOW).unwrap();
    log.sync(NOW).unwrap();
    log.append(&batch_of(1, 10, 5), NOW).unwrap();
    fs.set_faults(Faults { fail_syncs: true, ..Faults::default() });
    assert!(matches!(log.sync(NOW), Err(SyncError::Fenced(_))));
    fs.set_faults(Faults::default());
    // The disk works again, but the log stays fenced: a retried fsync could lie.
    assert!(matches!(log.sync(NOW), Err(SyncError::Fenced(_))));
    assert!(matches!(log.append(&batch_of(1, 10, 5), NOW), Err(AppendError::Fenced(_))));
    assert_eq!(log.durable_offset(), Offset(1), "nothing the failed fsync covered is durable");
    assert_eq!(read_all(&log, Offset(0), 1000).len(), 1, "reads keep working");
    let message = log.fence().unwrap().to_string();
    assert!(message.contains("fsync of /data/t-0/00000000000000000000.log failed"), "{message}");
}

#[test]
fn a_full_disk_refuses_the_append_and_leaves_the_log_usable() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    log.append(&batch_of(1, 10, 5), NOW).unwrap();
    fs.set_faults(Faults { space_bytes_max: Some(0), ..Faults::default() });
    let error = log.append(&batch_of(1, 10, 5), NOW).unwrap_err();
    assert!(matches!(error, AppendError::NoSpace { .. }), "{error}");
    fs.set_faults(Faults::default());
    log.append(&batch_of(1, 10, 5), NOW).unwrap();
    log.sync(NOW).unwrap();
    assert_eq!(
        read_all(&log, Offset(0), 1000).iter().map(|r| r.offset).collect::<Vec<_>>(),
        [0, 1]
    );
}

/// A disk that fills up in the middle of a roll, after the new segment's files are made but
/// before the recovery point is written, refuses the append and leaves the log unfenced: the
/// next append rolls again once there is room.
#[test]
fn a_disk_full_in_the_middle_of_a_roll_refuses_the_append_without_fencing() {
    use spool_storage::fs::{FileSystem, OpenMode};
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    // 64 KiB segments: six 10 KB batches fill the first; the seventh rolls.
    for _ in 0..6 {
        log.append(&batch_of(1, 10_000, 5), NOW).unwrap();
    }
    // Closed and opened again, the indexes are trimmed: the roll's seal frees nothing.
    log.close().unwrap();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    let dir = log.dir().to_path_buf();
    // What the files hold once the first write has removed `clean-shutdown`.
    let used: u64 = fs
        .list_dir(&dir)
        .unwrap()
        .iter()
        .filter(|name| *name != "clean-shutdown")
        .map(|name| fs.open(&dir.join(name), OpenMode::Existing).unwrap().len().unwrap())
        .sum();
    // Room for the new segment's preallocated indexes (entries of 8 and of 12 bytes), not one
    // byte more.
    let entries = spool_storage::limits::INDEX_ENTRIES_INITIAL as u64;
    let entries = entries.min(spool_storage::limits::index_entries_max(64 * 1024));
    fs.set_faults(Faults { space_bytes_max: Some(used + entries * 20), ..Faults::default() });
    let error = log.append(&batch_of(1, 10_000, 5), NOW).unwrap_err();
    assert!(matches!(error, AppendError::NoSpace { .. }), "{error}");
    assert!(log.fence().is_none(), "{:?}", log.fence());
    assert_eq!(log.segment_count(), 1);
    let files = fs.list_dir(&dir).unwrap();
    assert!(files.iter().all(|f| !f.ends_with(".tmp")), "{files:?}");
    fs.set_faults(Faults::default());
    log.append(&batch_of(1, 10_000, 5), NOW).unwrap();
    log.sync(NOW).unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 7);
}

#[test]
fn invalid_and_oversized_batches_are_refused() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Never));
    let mut damaged = batch_of(1, 10, 5);
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    assert!(matches!(log.append(&damaged, NOW), Err(AppendError::InvalidBatch(_))));
    let huge = vec![0u8; spool_storage::limits::BATCH_BYTES_MAX as usize + 1];
    assert!(matches!(log.append(&huge, NOW), Err(AppendError::BatchTooLarge { .. })));
    assert_eq!(log.next_offset(), Offset(0));
}

#[test]
fn an_append_is_light_only_when_it_is_one_write_and_nothing_else() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    assert!(log.append_is_light(1000, NOW), "a small append to a new log");
    assert!(!log.append_is_light(5000, NOW), "index entries, and the index is not mapped yet");
    log.append(&batch_of(1, 100, 5), NOW).unwrap();
    log.sync(NOW).unwrap();
    log.close().unwrap();

    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    assert!(!log.append_is_light(1000, NOW), "the first write after a clean open");
    log.append(&batch_of(1, 100, 5), NOW).unwrap();
    assert!(log.append_is_light(1000, NOW));
    while log.segment_count() == 1 && log.size_bytes() < 60 * 1024 {
        log.append(&batch_of(10, 500, 5), NOW).unwrap();
    }
    assert!(!log.append_is_light(8 * 1024, NOW), "a roll is due");
}

#[test]
fn segments_roll_by_size_and_by_age() {
    let fs = SimFileSystem::new();
    let mut cfg = config(FsyncPolicy::Never);
    cfg.segment_ms = Some(1000);
    let mut log = sim_open(&fs, cfg);
    for _ in 0..20 {
        log.append(&batch_of(10, 1000, 5), NOW).unwrap();
    }
    assert!(log.segment_count() >= 3, "64 KiB segments hold about six 10 KB batches");
    let before = log.segment_count();
    assert!(!log.append(&batch_of(1, 10, 5), TimestampMs(NOW.0 + 999)).unwrap().rolled);
    assert!(log.append(&batch_of(1, 10, 5), TimestampMs(NOW.0 + 5000)).unwrap().rolled);
    assert_eq!(log.segment_count(), before + 1);
    assert_eq!(read_all(&log, Offset(0), 7000).len(), 202);
}

#[test]
fn timestamp_lookup_finds_the_first_record_at_or_after() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Never));
    for i in 0..200i64 {
        // Batches of three records at i*10, i*10+5 and, out of order, i*10+2.
        log.append(&batch(&[(i * 10, &[1; 500]), (i * 10 + 5, b"b"), (i * 10 + 2, b"c")]), NOW)
            .unwrap();
    }
    assert!(log.segment_count() > 1);
    assert_eq!(log.offset_for_timestamp(TimestampMs(-5)).unwrap(), Some(Offset(0)));
    assert_eq!(log.offset_for_timestamp(TimestampMs(1000)).unwrap(), Some(Offset(300)));
    assert_eq!(log.offset_for_timestamp(TimestampMs(1001)).unwrap(), Some(Offset(301)));
    assert_eq!(log.offset_for_timestamp(TimestampMs(1003)).unwrap(), Some(Offset(301)));
    assert_eq!(log.offset_for_timestamp(TimestampMs(1006)).unwrap(), Some(Offset(303)));
    assert_eq!(log.offset_for_timestamp(TimestampMs(1996)).unwrap(), None);
}

#[test]
fn retention_deletes_old_segments_and_moves_the_log_start() {
    let fs = SimFileSystem::new();
    let mut cfg = config(FsyncPolicy::Never);
    cfg.retention_bytes = Some(100 * 1024);
    cfg.retention_ms = Some(10_000);
    let mut log = sim_open(&fs, cfg);
    for i in 0..40 {
        log.append(&batch_of(1, 10_000, i * 1000), NOW).unwrap();
    }
    let segments = log.segment_count();
    let deleted = log.apply_retention(TimestampMs(0)).unwrap();
    assert!(deleted > 0 && log.segment_count() == segments - deleted);
    assert!(log.size_bytes() >= 100 * 1024);
    let start = log.log_start_offset();
    assert!(start > Offset(0));
    assert!(matches!(
        log.read(Offset(0), 100),
        Err(ReadError::OffsetOutOfRange { log_start, .. }) if log_start == start
    ));
    assert_eq!(read_all(&log, start, 1 << 20).len() as u64, 40 - start.0);
    // By time: everything older than 10 s before "now" goes, except the active segment.
    log.apply_retention(TimestampMs(100_000)).unwrap();
    assert_eq!(log.segment_count(), 1);
    let files = fs_files(&fs);
    assert_eq!(files.len(), 3, "one segment's three files remain: {files:?}");
}

fn fs_files(fs: &SimFileSystem) -> Vec<String> {
    use spool_storage::fs::FileSystem;
    fs.list_dir(&dir()).unwrap()
}

#[test]
fn a_clean_close_reopens_without_scanning_and_keeps_everything() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    for i in 0..50 {
        log.append(&batch_of(3, 700, i), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    let before = read_all(&log, Offset(0), 4096);
    log.close().unwrap();
    let log = sim_open(&fs, config(FsyncPolicy::Always));
    let report = log.recovery_report();
    assert!(report.clean_shutdown, "{report}");
    assert!(report.scanned.is_empty(), "{report}");
    assert_eq!(read_all(&log, Offset(0), 4096), before);
    assert_eq!(log.offset_for_timestamp(TimestampMs(49)).unwrap(), Some(Offset(147)));
}

#[test]
fn a_crash_keeps_what_was_synced_and_loses_only_what_was_not() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    for i in 0..30 {
        log.append(&batch_of(2, 900, i), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    let durable = read_all(&log, Offset(0), 4096);
    log.append(&batch_of(2, 900, 99), NOW).unwrap();
    drop(log);
    fs.crash();
    let mut log = sim_open(&fs, config(FsyncPolicy::Always));
    assert!(!log.recovery_report().clean_shutdown);
    assert_eq!(read_all(&log, Offset(0), 4096), durable);
    assert_eq!(log.next_offset(), Offset(60));
    log.append(&batch_of(1, 10, 5), NOW).unwrap();
    log.sync(NOW).unwrap();
    assert_eq!(read_all(&log, Offset(0), 4096).len(), 61);
}

#[test]
fn an_interval_log_says_when_a_sync_is_due() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Interval { interval_ms: 100 }));
    assert!(!log.sync_due(TimestampMs(1000)), "nothing to sync");
    log.append(&batch_of(1, 10, 5), TimestampMs(10)).unwrap();
    assert_eq!(log.log_end_offset(), Offset(1), "visible once written");
    assert!(!log.sync_due(TimestampMs(50)));
    assert!(log.sync_due(TimestampMs(100)));
    log.sync(TimestampMs(100)).unwrap();
    assert!(!log.sync_due(TimestampMs(1000)));
}

#[test]
fn the_real_file_system_round_trips_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("topic-0");
    let mut log = std_open(&dir, config(FsyncPolicy::Always));
    for i in 0..100 {
        log.append(&batch_of(5, 300, i), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    let before = read_all(&log, Offset(0), 10_000);
    assert!(log.segment_count() > 1);
    log.close().unwrap();
    let log = std_open(&dir, config(FsyncPolicy::Always));
    assert!(log.recovery_report().clean_shutdown);
    assert_eq!(read_all(&log, Offset(0), 10_000), before);
    // No clean close, but nothing written since the clean open: still clean, nothing scanned.
    drop(log);
    let mut log = std_open(&dir, config(FsyncPolicy::Always));
    assert!(log.recovery_report().clean_shutdown);
    assert!(log.recovery_report().scanned.is_empty());
    assert!(dir.join("clean-shutdown").exists(), "an open of a clean log writes nothing");
    // A write removes the marker first: a crash after it scans the active segment.
    log.append(&batch_of(1, 10, 7), NOW).unwrap();
    assert!(!dir.join("clean-shutdown").exists());
    log.sync(NOW).unwrap();
    let before = read_all(&log, Offset(0), 10_000);
    drop(log);
    let log = std_open(&dir, config(FsyncPolicy::Always));
    assert!(!log.recovery_report().clean_shutdown);
    assert_eq!(log.recovery_report().scanned.len(), 1);
    assert_eq!(read_all(&log, Offset(0), 10_000), before);
    log.delete().unwrap();
    assert!(!dir.exists());
}

#[test]
fn a_group_append_gives_each_batch_its_own_result_and_writes_runs_at_once() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Never));
    // Twelve 10 KB batches cross the 64 KiB segment size: the group rolls in the middle.
    let batches: Vec<_> = (0..12).map(|_| batch_of(2, 5000, 5)).collect();
    let results = log.append_many(&checked(&batches), NOW);
    let offsets: Vec<u64> =
        results.iter().filter_map(|r| r.as_ref().ok()).map(|a| a.base_offset.0).collect();
    assert_eq!(offsets, (0..12).map(|i| i * 2).collect::<Vec<_>>());
    assert_eq!(results.iter().filter(|r| r.as_ref().is_ok_and(|a| a.rolled)).count(), 1);
    assert_eq!(log.segment_count(), 2);
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 24);

    // A failed write fails its whole run and what follows; nothing of it is in the log.
    fs.set_faults(Faults { fail_writes: true, ..Faults::default() });
    let batches: Vec<_> = (0..3).map(|_| batch_of(1, 10, 5)).collect();
    let results = log.append_many(&checked(&batches), NOW);
    assert!(results.iter().all(|r| matches!(r, Err(AppendError::Io { .. }))), "{results:?}");
    fs.set_faults(Faults::default());
    assert_eq!(log.next_offset(), Offset(24));
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 24);
}

#[test]
fn a_never_log_rolls_without_waiting_for_the_disk_and_syncs_sealed_segments_when_asked() {
    let fs = SimFileSystem::new();
    let mut log = sim_open(&fs, config(FsyncPolicy::Never));
    while log.segment_count() < 3 {
        log.append(&batch_of(4, 2000, 5), NOW).unwrap();
    }
    // The log was opened at time 0: its sealed segments wait for the next sealed-sync slot.
    let interval = spool_storage::limits::NEVER_SEALED_SYNC_INTERVAL_MS as i64;
    assert!(!log.sync_due(TimestampMs(interval - 1)), "a never log does not sync at every roll");
    assert!(log.sync_due(TimestampMs(interval)), "sealed segments await their fsync");
    assert_eq!(log.durable_offset(), Offset(0), "the rolls did not fsync");
    let appended = log.next_offset();
    drop(log);
    fs.crash(); // lose every unsynced write: nothing was synced
    let mut log = sim_open(&fs, config(FsyncPolicy::Never));
    assert!(log.fence().is_none(), "{:?}", log.fence());
    assert_eq!(log.next_offset(), Offset(0), "a power loss may take what was never synced");

    while log.segment_count() < 3 {
        log.append(&batch_of(4, 2000, 5), NOW).unwrap();
    }
    let sealed_end = log.segments().nth(1).unwrap().next_offset;
    log.sync(NOW).unwrap();
    assert!(!log.sync_due(NOW));
    drop(log);
    fs.crash();
    let log = sim_open(&fs, config(FsyncPolicy::Never));
    assert!(log.next_offset() >= sealed_end);
    assert!(appended > Offset(0));
}

#[test]
fn an_idle_log_holds_little_index_and_an_index_grows_as_records_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().join("t-0");
    let config =
        spool_storage::LogConfig { segment_bytes: 64 * 1024 * 1024, ..config(FsyncPolicy::Never) };
    let index_bytes = |dir: &std::path::Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|e| e == "index" || e == "timeindex"))
            .map(|path| std::fs::metadata(path).unwrap().len())
            .sum()
    };
    let mut log = std_open(&dir, config);
    assert!(index_bytes(&dir) <= 16 * 1024, "an empty log: {} bytes", index_bytes(&dir));

    // 4,000 batches of 5 KiB: about one index entry each, several doublings past the first
    // room, all in one segment.
    let batches = 4000;
    for i in 0..batches {
        log.append(&batch_of(1, 5 * 1024, i), NOW).unwrap();
    }
    assert_eq!(log.segment_count(), 1);
    let grown = index_bytes(&dir);
    assert!(grown >= (batches as u64 - 1) * 20, "every entry has room: {grown} bytes");
    // Lookups by offset and by time go through the grown index.
    for offset in [0, 1, 511, 512, 1999, 3999] {
        let read = log.read(Offset(offset), 1).unwrap();
        assert_eq!(read.next_offset, Offset(offset + 1), "offset {offset}");
    }
    assert_eq!(log.offset_for_timestamp(TimestampMs(3000)).unwrap(), Some(Offset(3000)));

    // Closed, the indexes are trimmed to their entries and trusted at the next open.
    log.close().unwrap();
    let reopened = std_open(&dir, config);
    assert!(reopened.recovery_report().rebuilt_indexes.is_empty());
    assert_eq!(reopened.read(Offset(3999), 1).unwrap().next_offset, Offset(4000));
}

/// After a crash the active segment's indexes are rebuilt in the files already there (kept,
/// not removed and created again), and reads through them find every record.
#[test]
fn a_crash_rebuilds_the_active_indexes_in_their_own_files() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("topic-0");
    let mut log = std_open(&dir, config(FsyncPolicy::Always));
    for i in 0..20 {
        log.append(&batch_of(2, 1000, i), NOW).unwrap();
    }
    log.sync(NOW).unwrap();
    assert_eq!(log.segment_count(), 1, "one segment, so it is the active one");
    let before = read_all(&log, Offset(0), 10_000);
    let index = dir.join(format!("{:020}.index", 0));
    let inode = std::fs::metadata(&index).unwrap().ino();
    drop(log);
    let log = std_open(&dir, config(FsyncPolicy::Always));
    let report = log.recovery_report();
    assert!(!report.clean_shutdown);
    assert!(report.rebuilt_indexes.contains(&index), "{report}");
    assert_eq!(std::fs::metadata(&index).unwrap().ino(), inode, "the same file");
    assert_eq!(read_all(&log, Offset(0), 10_000), before);
    for offset in [0, 7, 21, 39] {
        let read = log.read(Offset(offset), 1).unwrap();
        assert!(read.next_offset.0 > offset, "offset {offset}: {read:?}");
    }
    log.close().unwrap();
    let log = std_open(&dir, config(FsyncPolicy::Always));
    assert!(log.recovery_report().clean_shutdown);
    assert!(log.recovery_report().rebuilt_indexes.is_empty(), "the close trimmed them");
    assert_eq!(read_all(&log, Offset(0), 10_000), before);
}

/// An `always` log appended to in small runs writes zeros ahead of its end (its runway), so
/// that its fsyncs write into blocks the file already has. A roll, a clean close and an open
/// after a crash leave no zeros behind, and lose no synced batch.
#[test]
fn light_appends_run_on_zeros_that_a_roll_a_close_and_a_crash_cut() {
    use spool_storage::limits::RUNWAY_BYTES;
    let fs = SimFileSystem::new();
    let config = LogConfig { segment_bytes: 4 * 1024 * 1024, ..config(FsyncPolicy::Always) };
    let first = dir().join("00000000000000000000.log");
    let file_bytes = |path: &std::path::Path| fs.read(path).unwrap().len() as u64;
    let data_bytes = |log: &Log| log.segments().last().unwrap().size_bytes;
    let append = |log: &mut Log, n: usize| {
        for _ in 0..n {
            log.append(&batch_of(1, 100, 5), NOW).unwrap();
            log.sync(NOW).unwrap();
        }
    };

    let mut log = sim_open(&fs, config);
    append(&mut log, 10);
    let (data, file) = (data_bytes(&log), file_bytes(&first));
    assert!(file >= data + RUNWAY_BYTES / 2, "a runway: {data} bytes of batches, {file} in all");
    assert!(fs.read(&first).unwrap()[data as usize..].iter().all(|&byte| byte == 0));

    // A crash: the zeros are cut as no torn tail, and every synced batch is there.
    drop(log);
    fs.crash();
    let mut log = sim_open(&fs, config);
    assert_eq!(log.recovery_report().truncated, None, "{:?}", log.recovery_report());
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 10);
    assert_eq!(file_bytes(&first), data_bytes(&log));

    // A clean close cuts them, so the next open trusts the file's length.
    append(&mut log, 10);
    assert!(file_bytes(&first) > data_bytes(&log));
    log.close().unwrap();
    let mut log = sim_open(&fs, config);
    assert!(log.recovery_report().clean_shutdown, "{:?}", log.recovery_report());
    assert_eq!(file_bytes(&first), data_bytes(&log));
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 20);

    // A sealed segment keeps none either.
    append(&mut log, 10);
    assert!(file_bytes(&first) > data_bytes(&log));
    let sealed = data_bytes(&log);
    log.roll().unwrap();
    assert_eq!(file_bytes(&first), sealed);
    append(&mut log, 10);
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 40);

    // Heavy runs (or a log whose runs do not follow each other closely) write no zeros.
    let heavy_fs = SimFileSystem::new();
    let mut heavy = sim_open(&heavy_fs, config);
    for _ in 0..4 {
        heavy.append(&batch_of(100, 1000, 5), NOW).unwrap();
        heavy.sync(NOW).unwrap();
    }
    let length = heavy_fs.read(&first).unwrap().len() as u64;
    assert_eq!(length, data_bytes(&heavy));
}

#[test]
fn heavy_appends_of_an_always_log_are_direct_writes_whose_zeros_a_close_cuts() {
    // The simulated file system takes direct writes only from block-aligned buffers at
    // block-aligned positions, as Linux does.
    let fs = SimFileSystem::new();
    let config = LogConfig { segment_bytes: 4 * 1024 * 1024, ..config(FsyncPolicy::Always) };
    let mut log = sim_open(&fs, config);
    let first = dir().join("00000000000000000000.log");
    let file_bytes = |fs: &SimFileSystem| fs.read(&first).unwrap().len() as u64;
    let data_bytes = |log: &Log| log.segments().last().unwrap().size_bytes;

    // A light append first (buffered), then heavy ones (past 256 KiB at once) after it: each
    // starts within the block the one before ended in.
    log.append(&batch_of(1, 100, 5), NOW).unwrap();
    for _ in 0..3 {
        log.append(&batch_of(300, 1000, 5), NOW).unwrap();
        log.sync(NOW).unwrap();
        assert_eq!(file_bytes(&fs) % 4096, 0, "a direct write ends on a block boundary");
        assert!(file_bytes(&fs) > data_bytes(&log), "zeros after the batches");
    }
    // A light append after them is buffered again, over those zeros.
    log.append(&batch_of(1, 100, 5), NOW).unwrap();
    log.sync(NOW).unwrap();
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 1 + 900 + 1);

    // After a crash the zeros are no torn tail; a clean close cuts them.
    drop(log);
    fs.crash();
    let log = sim_open(&fs, config);
    assert_eq!(log.recovery_report().truncated, None, "{:?}", log.recovery_report());
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 902);
    let mut log = log;
    log.append(&batch_of(300, 1000, 5), NOW).unwrap();
    log.close().unwrap();
    let log = sim_open(&fs, config);
    assert!(log.recovery_report().clean_shutdown, "{:?}", log.recovery_report());
    assert_eq!(file_bytes(&fs), data_bytes(&log));
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 1202);
}

#[test]
fn direct_writes_go_on_behind_their_appends_in_blocks_reserved_ahead() {
    let fs = SimFileSystem::new();
    fs.set_writes_behind(true);
    let config = LogConfig { segment_bytes: 64 * 1024 * 1024, ..config(FsyncPolicy::Always) };
    let mut log = sim_open(&fs, config);
    let first = dir().join("00000000000000000000.log");
    let file_bytes = |fs: &SimFileSystem| fs.read(&first).unwrap().len() as u64;
    let data_bytes = |log: &Log| log.segments().last().unwrap().size_bytes;
    let reserved = 16 * 1024 * 1024;

    // The first heavy append is written before it returns (a file system may refuse direct
    // writes); those after it go on behind, in blocks reserved ahead of them.
    for _ in 0..4 {
        log.append(&batch_of(300, 1000, 5), NOW).unwrap();
    }
    log.wait_for_writes().unwrap();
    // (From the end of the second append on.)
    assert!(file_bytes(&fs) > reserved, "blocks reserved ahead: {}", file_bytes(&fs));
    log.sync(NOW).unwrap();
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 1200);

    // A full disk refuses an append that needs more blocks than are reserved, before its
    // answer (one that fits in them is appended), and the log goes on once there is room.
    fs.set_faults(Faults { space_bytes_max: Some(0), ..Faults::default() });
    log.append(&batch_of(300, 1000, 5), NOW).unwrap();
    let big: Vec<_> = (0..18).map(|_| batch_of(1000, 1000, 5)).collect();
    for result in log.append_many(&checked(&big), NOW) {
        assert!(matches!(result, Err(AppendError::NoSpace { .. })), "{result:?}");
    }
    assert!(log.fence().is_none());
    fs.set_faults(Faults::default());
    log.sync(NOW).unwrap();
    assert_eq!(log.durable_offset(), Offset(1500));

    // After a crash the reserved blocks are zeros past the end, no torn tail; a clean close
    // cuts them.
    drop(log);
    fs.crash();
    let mut log = sim_open(&fs, config);
    assert_eq!(log.recovery_report().truncated, None, "{:?}", log.recovery_report());
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 1500);
    log.append(&batch_of(300, 1000, 5), NOW).unwrap();
    log.append(&batch_of(300, 1000, 5), NOW).unwrap();
    log.close().unwrap();
    let mut log = sim_open(&fs, config);
    assert!(log.recovery_report().clean_shutdown, "{:?}", log.recovery_report());
    assert_eq!(file_bytes(&fs), data_bytes(&log));
    assert_eq!(read_all(&log, Offset(0), 1 << 20).len(), 2100);

    // A write that fails behind its append fences the log, and no sync acknowledges it.
    log.append(&batch_of(300, 1000, 5), NOW).unwrap();
    log.append(&batch_of(300, 1000, 5), NOW).unwrap();
    log.sync(NOW).unwrap();
    fs.set_faults(Faults { fail_writes: true, ..Faults::default() });
    log.append(&batch_of(300, 1000, 5), NOW).unwrap();
    assert!(matches!(log.wait_for_writes(), Err(AppendError::Fenced(_))));
    assert!(log.sync(NOW).is_err());
    assert_eq!(log.durable_offset(), Offset(2700));
}
