//! Golden files for the on-disk format (`data/golden/v1` at the repository root): a log
//! written by this build must be byte-identical to them, and they must read back. A change
//! that breaks reading old logs fails here. After an intended format change (a new format
//! version), write a new golden directory with `SPOOL_BLESS=1 cargo test --test golden`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use common::*;
use spool_storage::batch::{BatchBuilder, Header, ProducerStamp};
use spool_storage::fs::StdFileSystem;
use spool_storage::verify::verify_log;
use spool_storage::{FsyncPolicy, LogConfig, Offset, TimestampMs};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/golden/v1")
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
            log.append(&builder.finish(producer), now).unwrap();
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
    if std::env::var_os("SPOOL_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(golden_dir());
        std::fs::create_dir_all(golden_dir()).unwrap();
        for (name, bytes) in files(&written) {
            std::fs::write(golden_dir().join(name), bytes).unwrap();
        }
        eprintln!("wrote {}", golden_dir().display());
    }
    let golden = files(&golden_dir());
    let ours = files(&written);
    assert_eq!(golden.keys().collect::<Vec<_>>(), ours.keys().collect::<Vec<_>>());
    for (name, bytes) in &golden {
        assert!(ours[name] == *bytes, "{name} differs from the golden file");
    }
}

#[test]
fn the_golden_log_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("log");
    std::fs::create_dir_all(&copy).unwrap();
    for (name, bytes) in files(&golden_dir()) {
        std::fs::write(copy.join(name), bytes).unwrap();
    }
    // Every batch and index entry checks offline (the timestamps are out of order within
    // batches, which the time index's running largest timestamp must follow).
    let check = verify_log(&StdFileSystem, &copy).unwrap();
    assert!(check.findings.is_empty(), "{:?}", check.findings);
    assert_eq!((check.segments, check.batches, check.records), (4, 18, 54));
    let log = std_open(&copy, LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() });
    assert!(log.recovery_report().clean_shutdown, "{}", log.recovery_report());
    assert_eq!(log.segment_count(), 4);
    let records = read_all(&log, Offset(0), 1 << 20);
    assert_eq!(records.len(), 54);
    let expected = write_golden_log(&tmp.path().join("fresh"));
    assert_eq!(records, expected);
    assert_eq!(records[17].value, Vec::<u8>::new(), "offset 17 is a tombstone");
    assert_eq!(log.offset_for_timestamp(TimestampMs(1_767_225_602_000)).unwrap(), Some(Offset(6)));
}
