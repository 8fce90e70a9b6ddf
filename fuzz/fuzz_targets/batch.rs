//! Any bytes through the batch checks and decoders: nothing panics, and the checks agree.
//!
//! - `check_for_append` accepting a batch (a Kafka batch, or a version 1 batch from an older
//!   client) means `check` accepts it in the form the log stores, and its records decode
//!   without error, exactly `record_count` of them, offsets in sequence.
//! - Whatever `check` accepts, decoding its records and headers ends (Ok or one Err) without
//!   reading outside the batch.
//! - `BatchIter` over a buffer stops at the first bad batch and never loops; read as a log
//!   read's bytes (records' CRC not computed again), it stays within the buffer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spool_storage::Offset;
use spool_storage::batch::{self, BatchIter, BatchView};

fuzz_target!(|data: &[u8]| {
    let _ = batch::peek_prefix(data);

    if let Ok(header) = batch::check_for_append(data) {
        // Stored as the log stores it (a version 1 batch re-encoded as version 2 first).
        let checked = batch::CheckedBatch::check(data).expect("the same check passes again");
        let stored = checked.stored(Offset(7), Offset(0));
        assert_eq!(checked.header().batch_bytes as usize, stored.len());
        assert_eq!(checked.header().record_count, header.record_count);
        let view = BatchView::new(&stored).expect("a batch fit to append checks once stored");
        let mut count = 0u32;
        for (i, record) in view.records().iter().enumerate() {
            let record = record.expect("check_for_append walked every record");
            assert_eq!(record.offset, Offset(7 + i as u64));
            for h in record.headers() {
                let h = h.expect("check_for_append walked every header");
                assert!(std::str::from_utf8(h.key).is_ok());
            }
            count += 1;
        }
        assert_eq!(count, header.record_count);
    }

    if let Ok(view) = BatchView::new(data) {
        decode_within(&view, data);
    }

    // A log read's bytes are read again without their records' CRC: still within bounds.
    for batch in BatchIter::read_before(data) {
        let Ok(view) = batch else { break };
        decode_within(&view, data);
    }

    let mut batches = 0usize;
    for batch in BatchIter::new(data) {
        batches += 1;
        if batch.is_err() {
            break;
        }
    }
    // Each batch is at least a header long, so a buffer holds only so many.
    assert!(batches <= data.len() / batch::BATCH_HEADER_BYTES + 1);
});

/// Decodes every record and header of `view` until the first error: a view of `data` stays
/// within it.
fn decode_within(view: &BatchView<'_>, data: &[u8]) {
    assert!(view.as_bytes().len() <= data.len());
    for record in view.records().iter() {
        let Ok(record) = record else { break };
        for h in record.headers() {
            if h.is_err() {
                break;
            }
        }
    }
}
