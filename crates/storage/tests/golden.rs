//! Golden files for the on-disk format (`data/golden/v{1,2}` at the repository root). A log
//! written by this build must be byte-identical to the newest (version 2), and every version
//! must read back: a change that breaks reading old logs fails here. Version 1 is no longer
//! written; its files came from the build that wrote it. After an intended change to version
//! 2's bytes, write its directory anew with `SPOOL_BLESS=1 cargo test --test golden`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use common::*;
use spool_storage::batch::{BatchBuilder, Codec, Header, ProducerStamp};
use spool_storage::fs::StdFileSystem;
use spool_storage::verify::verify_log;
use spool_storage::{FsyncPolicy, LogConfig, Offset, TimestampMs};

fn golden_dir(version: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../data/golden/v{version}"))
}

/// Writes the golden log: three segments, keys and headers, a tombstone, an idempotent
/// producer's batch, out-of-order timestamps, and enough bytes for index entries.
fn write_golden_log(dir: &Path) -> Vec<Rec> {
    let config =
        LogConfig { segment_bytes: 64 * 1024, fsync: FsyncPolicy::Always, ..LogConfig::default() };
    let mut log = std_open(dir, config);
    let now = TimestampMs(1_767_225_600_000); // 2026-01-01T00:00:00Z
    for segment in 0..3u8 {
        for i in 0..6i64 {
            let mut builder = BatchBuilder::new(BytesMut::new());
            for r in 0..3i64 {
                let ts = now.0 + i * 1000 - r * 7;
                let value = vec![b'a' + segment + r as u8; 700 + (i * 100) as usize];
                let key = format!("key-{i}-{r}");
                if r == 2 && i == 5 {
                    builder.push(TimestampMs(ts), Some(key.as_bytes()), None, &[]);
                } else {
                    builder.push(
                        TimestampMs(ts),
                        Some(key.as_bytes()),
                        Some(&value),
                        &[
                            Header::new("content-type", Some(b"text/plain")),
                            Header::new("empty", None),
                        ],
                    );
                }
            }
            let producer = if i == 3 {
                ProducerStamp { producer_id: 42, producer_epoch: 1, base_sequence: 9 }
            } else {
                ProducerStamp::NONE
            };
            // One batch is compressed (zstd), as a Kafka producer may send it.
            let batch = if segment == 2 && i == 4 {
                builder.finish_compressed(producer, Codec::Zstd)
            } else {
                builder.finish(producer)
            };
            log.append(&batch, now).unwrap();
        }
        log.roll().unwrap();
    }
    log.sync(now).unwrap();
    let records = read_all(&log, Offset(0), 1 << 20);
    log.close().unwrap();
    records
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

#[test]
fn this_build_writes_the_golden_files_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let written = tmp.path().join("log");
    write_golden_log(&written);
    let dir = golden_dir(2);
    if std::env::var_os("SPOOL_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files(&written) {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        eprintln!("wrote {}", dir.display());
    }
    let golden = files(&dir);
    let ours = files(&written);
    assert_eq!(golden.keys().collect::<Vec<_>>(), ours.keys().collect::<Vec<_>>());
    for (name, bytes) in &golden {
        assert!(ours[name] == *bytes, "{name} differs from the golden file");
    }
}

/// A copy of version `version`'s golden log in a temporary directory.
fn golden_copy(version: u8, tmp: &Path) -> PathBuf {
    let copy = tmp.join(format!("v{version}"));
    std::fs::create_dir_all(&copy).unwrap();
    for (name, bytes) in files(&golden_dir(version)) {
        std::fs::write(copy.join(name), bytes).unwrap();
    }
    copy
}

#[test]
fn every_version_of_the_golden_log_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = write_golden_log(&tmp.path().join("fresh"));
    for version in [1, 2] {
        let copy = golden_copy(version, tmp.path());
        // Every batch and index entry checks offline (the timestamps are out of order within
        // batches, which the time index's running largest timestamp must follow).
        let check = verify_log(&StdFileSystem, &copy).unwrap();
        assert!(check.findings.is_empty(), "v{version}: {:?}", check.findings);
        assert_eq!((check.segments, check.batches, check.records), (4, 18, 54), "v{version}");
        let config = LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() };
        let log = std_open(&copy, config);
        assert!(log.recovery_report().clean_shutdown, "{}", log.recovery_report());
        assert_eq!(log.segment_count(), 4);
        let records = read_all(&log, Offset(0), 1 << 20);
        assert_eq!(records, expected, "v{version}: the same records in either format");
        assert_eq!(records[17].value, Vec::<u8>::new(), "offset 17 is a tombstone");
        let at = log.offset_for_timestamp(TimestampMs(1_767_225_602_000)).unwrap();
        assert_eq!(at, Some(Offset(6)), "v{version}");
    }
}

#[test]
fn appends_to_a_version_1_log_go_to_a_new_segment_in_version_2() {
    // A version 1 segment as an older build left it after a crash: two batches, no index.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    std::fs::create_dir_all(&dir).unwrap();
    let mut segment = Vec::new();
    for (base, value) in [(0u64, "one"), (1, "two")] {
        let mut builder = spool_storage::batch::BatchBuilderV1::new(BytesMut::new());
        builder.push(TimestampMs(1_000), Some(b"k"), Some(value.as_bytes()), &[]);
        let mut batch = builder.finish(ProducerStamp::NONE);
        spool_storage::batch::stamp(&mut batch, Offset(base), Offset(0));
        segment.extend_from_slice(&batch);
    }
    std::fs::write(dir.join("00000000000000000000.log"), &segment).unwrap();
    let config = LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() };
    let mut log = std_open(&dir, config);
    assert_eq!(log.segment_count(), 1);
    let mut builder = BatchBuilder::new(BytesMut::new());
    builder.push(TimestampMs(2_000), Some(b"k"), Some(b"after the upgrade"), &[]);
    let appended = log.append(&builder.finish(ProducerStamp::NONE), TimestampMs(2_000));
    assert_eq!(appended.unwrap().base_offset, Offset(2));
    assert_eq!(log.segment_count(), 2, "the version 1 segment was sealed first");
    log.sync(TimestampMs(2_000)).unwrap();
    let values = |log: &spool_storage::Log| {
        read_all(log, Offset(0), 1 << 20).into_iter().map(|r| r.value).collect::<Vec<_>>()
    };
    let expected: Vec<Vec<u8>> =
        vec![b"one".to_vec(), b"two".to_vec(), b"after the upgrade".to_vec()];
    assert_eq!(values(&log), expected);
    log.close().unwrap();
    // Both versions read back after a restart, and check offline.
    let check = verify_log(&StdFileSystem, &dir).unwrap();
    assert!(check.findings.is_empty(), "{:?}", check.findings);
    let log = std_open(&dir, config);
    assert_eq!(values(&log), expected);
}
