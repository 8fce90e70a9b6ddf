//! Records built by `BatchBuilder` decode back to themselves: the encoder and the decoder
//! agree on every key, value, header and timestamp, and the batch passes the append check.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use spool_storage::TimestampMs;
use spool_storage::batch::{self, BatchBuilder, BatchView, ProducerStamp};
use spool_storage::limits::RECORD_HEADERS_MAX;

#[derive(Debug, Arbitrary)]
struct Input {
    records: Vec<InputRecord>,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

#[derive(Debug, Arbitrary)]
struct InputRecord {
    timestamp_ms: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fuzz_target!(|input: Input| {
    let records: Vec<&InputRecord> =
        input.records.iter().filter(|r| r.headers.len() <= RECORD_HEADERS_MAX as usize).collect();
    if records.is_empty() {
        return;
    }
    let mut builder = BatchBuilder::new(BytesMut::new());
    for r in &records {
        let headers: Vec<batch::Header<'_>> =
            r.headers.iter().map(|(k, v)| batch::Header::new(k, v.as_deref())).collect();
        builder.push(TimestampMs(r.timestamp_ms), r.key.as_deref(), r.value.as_deref(), &headers);
    }
    let stamp = ProducerStamp {
        producer_id: input.producer_id,
        producer_epoch: input.producer_epoch,
        base_sequence: input.base_sequence,
    };
    let bytes = builder.finish(stamp);

    // Timestamp deltas are i64 differences: a batch whose timestamps are too far apart to
    // subtract is refused by the append check rather than stored wrong.
    let header = match batch::check_for_append(&bytes) {
        Ok(header) => header,
        Err(error) => {
            let first = records[0].timestamp_ms;
            assert!(
                records.iter().any(|r| r.timestamp_ms.checked_sub(first).is_none()),
                "a built batch was refused: {error}"
            );
            return;
        }
    };
    assert_eq!(header.record_count as usize, records.len());
    assert_eq!(header.producer, stamp);
    let view = BatchView::new(&bytes).unwrap();
    let decoded = view.records();
    let decoded: Vec<_> = decoded.iter().map(Result::unwrap).collect();
    assert_eq!(decoded.len(), records.len());
    for (record, input) in decoded.iter().zip(&records) {
        assert_eq!(record.timestamp, TimestampMs(input.timestamp_ms));
        assert_eq!(record.key, input.key.as_deref());
        assert_eq!(record.value, input.value.as_deref());
        let headers: Vec<_> = record.headers().map(Result::unwrap).collect();
        assert_eq!(headers.len(), input.headers.len());
        for (h, (key, value)) in headers.iter().zip(&input.headers) {
            assert_eq!(h.key, key.as_bytes());
            assert_eq!(h.value, value.as_deref());
        }
    }
});
