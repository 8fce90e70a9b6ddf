//! Helpers shared by the storage tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use spool_storage::batch::{BatchBuilder, BatchIter, CheckedBatch, Header, ProducerStamp};
use spool_storage::fs::FileSystem;
use spool_storage::sim::SimFileSystem;
use spool_storage::{FsyncPolicy, Log, LogConfig, Offset, TimestampMs};

/// A record as tests see it: timestamp, key, value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

pub fn batch(records: &[(i64, &[u8])]) -> BytesMut {
    let mut b = BatchBuilder::new(BytesMut::new());
    for (ts, value) in records {
        b.push(TimestampMs(*ts), Some(b"key"), Some(value), &[Header::new("h", Some(b"v"))]);
    }
    b.finish(ProducerStamp::NONE)
}

/// A batch of `n` records of `value_bytes` each, all at `ts`.
pub fn batch_of(n: usize, value_bytes: usize, ts: i64) -> BytesMut {
    let value = vec![b'x'; value_bytes];
    let records: Vec<(i64, &[u8])> = (0..n).map(|_| (ts, value.as_slice())).collect();
    batch(&records)
}

pub fn decode(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    for view in BatchIter::new(bytes) {
        let view = view.expect("stored batches are valid");
        for r in view.records().iter() {
            let r = r.expect("stored records are valid");
            out.push(Rec {
                offset: r.offset.0,
                timestamp: r.timestamp.0,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.unwrap_or_default().to_vec(),
            });
        }
    }
    out
}

/// Every visible record from `from`, read in chunks of `bytes_max`.
pub fn read_all(log: &Log, from: Offset, bytes_max: u32) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let read = log.read(offset, bytes_max).expect("read");
        if read.bytes.is_empty() {
            assert_eq!(offset, log.log_end_offset(), "an empty read means the end");
            return out;
        }
        out.extend(decode(&read.bytes).into_iter().filter(|r| r.offset >= offset.0));
        assert!(read.next_offset > offset, "reads progress");
        offset = read.next_offset;
    }
}

pub fn config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig { segment_bytes: 64 * 1024, fsync, ..LogConfig::default() }
}

pub fn sim_open(fs: &SimFileSystem, config: LogConfig) -> Log {
    Log::open(Arc::new(fs.clone()), Path::new("/data/t-0"), config, TimestampMs(0)).expect("open")
}

pub fn dir() -> PathBuf {
    PathBuf::from("/data/t-0")
}

pub fn std_open(dir: &Path, config: LogConfig) -> Log {
    let fs: Arc<dyn FileSystem> = Arc::new(spool_storage::fs::StdFileSystem);
    Log::open(fs, dir, config, TimestampMs(0)).expect("open")
}

/// Every file in the test log directory and its bytes.
pub fn snapshot(fs: &SimFileSystem) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs.list_dir(&dir())
        .unwrap()
        .into_iter()
        .map(|name| {
            let bytes = fs.read(&dir().join(&name)).unwrap_or_default();
            (name, bytes)
        })
        .collect()
}

/// A fresh simulated disk holding exactly `files` in the test log directory, all durable.
pub fn restore(files: &std::collections::BTreeMap<String, Vec<u8>>) -> SimFileSystem {
    let fs = SimFileSystem::new();
    spool_storage::fs::create_dir_all_durably(&fs, &dir()).unwrap();
    for (name, bytes) in files {
        fs.write(&dir().join(name), bytes);
    }
    fs
}

/// Positions of the batches in a log file.
pub fn batch_positions(bytes: &[u8]) -> Vec<usize> {
    let mut positions = Vec::new();
    let mut at = 0;
    for view in BatchIter::new(bytes) {
        positions.push(at);
        at += view.unwrap().as_bytes().len();
    }
    positions
}

pub fn segment_name(base: u64, extension: &str) -> String {
    format!("{base:020}.{extension}")
}

/// Each batch checked, as `Log::append_many` takes them (panics on a damaged one).
pub fn checked(batches: &[BytesMut]) -> Vec<CheckedBatch<&[u8]>> {
    batches.iter().map(|b| CheckedBatch::check(&b[..]).unwrap()).collect()
}
