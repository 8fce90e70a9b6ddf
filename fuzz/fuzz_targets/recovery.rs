//! A partition directory of garbage, opened through the storage API on the simulated file
//! system: opening never panics, and a log that opens serves only checked batches, in
//! offset order, up to its visible end, and (unless fenced) takes a new append.
//!
//! Input layout: a flags byte (bit 0: an offset index file, bit 1: a time index file, bit 2:
//! a `clean-shutdown` marker, bit 3: a `recovery-point` file, bit 4: a second segment at
//! base offset 100), then for each file present a u16 little-endian length and that many
//! bytes, in that order; the rest is the first segment's log file.

#![no_main]

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use spool_storage::batch::{BatchBuilder, BatchIter, ProducerStamp};
use spool_storage::sim::SimFileSystem;
use spool_storage::{Log, LogConfig, ReadError};
use spool_storage::{Offset, TimestampMs};

/// Splits off a u16-length-prefixed piece.
fn piece<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    if data.len() < 2 {
        return &[];
    }
    let length = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (piece, rest) = data[2..].split_at(length);
    *data = rest;
    piece
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let dir = Path::new("/fuzz/topic/0");
    let fs = SimFileSystem::new();
    let files = [
        (1, "00000000000000000000.index"),
        (2, "00000000000000000000.timeindex"),
        (4, "clean-shutdown"),
        (8, "recovery-point"),
        (16, "00000000000000000100.log"),
    ];
    for (bit, name) in files {
        if flags & bit != 0 {
            fs.write(&dir.join(name), piece(&mut rest));
        }
    }
    fs.write(&dir.join("00000000000000000000.log"), rest);

    let config = LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() };
    let now = TimestampMs(1_700_000_000_000);
    let Ok(mut log) = Log::open(Arc::new(fs), dir, config, now) else { return };

    // Recovery trusts what a clean shutdown or the recovery point vouches for (it checks only
    // the batches past the last index entry there), so damage inside that region is found by
    // readers: a read serves only batches that check, in offset order, and stops before a
    // damaged one, which the next read reports as `ReadError::Damaged`. With neither file,
    // every byte was scanned: then everything visible must read back, up to the visible end.
    let scanned_whole = flags & (4 | 8) == 0;
    let end = log.log_end_offset();
    let mut offset = log.log_start_offset();
    assert!(offset <= end);
    while offset < end {
        let read = match log.read(offset, 1024 * 1024) {
            Ok(read) => read,
            Err(error) => {
                assert!(!scanned_whole, "a visible offset {offset:?} fails to read: {error}");
                assert!(matches!(error, ReadError::Damaged { .. }), "{error}");
                break;
            }
        };
        if read.bytes.is_empty() || read.next_offset <= offset {
            assert!(!scanned_whole, "no progress at visible offset {offset:?} below {end:?}");
            break;
        }
        let mut next = None;
        for batch in BatchIter::new(&read.bytes) {
            let batch = batch.unwrap_or_else(|error| panic!("a served batch fails: {error}"));
            let header = batch.header();
            match next {
                None => assert!(header.base_offset <= offset && offset < header.next_offset()),
                Some(next) => assert_eq!(header.base_offset, next, "served batches follow on"),
            }
            next = Some(header.next_offset());
        }
        assert_eq!(next, Some(read.next_offset));
        offset = read.next_offset;
    }
    if scanned_whole {
        assert_eq!(offset, end);
    }

    if log.fence().is_none() {
        let mut builder = BatchBuilder::new(BytesMut::new());
        builder.push(now, None, Some(b"after recovery"), &[]);
        let batch = builder.finish(ProducerStamp::NONE);
        let appended = log.append(&batch, now).expect("an unfenced log takes an append");
        assert_eq!(appended.base_offset, end.max(log.log_start_offset()));
        log.sync(now).expect("the simulated disk syncs");
        let read = log.read(appended.base_offset, 1024 * 1024).unwrap();
        let last = BatchIter::new(&read.bytes).last().unwrap().unwrap();
        assert_eq!(last.header().base_offset, appended.base_offset);
        assert_eq!(log.log_end_offset(), Offset(appended.last_offset.0 + 1));
    }
});
