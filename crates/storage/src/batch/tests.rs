use bytes::BytesMut;

use super::*;

fn sample() -> BytesMut {
    let mut b = BatchBuilder::new(BytesMut::new());
    b.push(TimestampMs(100), Some(b"k1"), Some(b"v1"), &[Header::new("h", Some(b"x"))]);
    b.push(TimestampMs(90), None, None, &[]);
    b.push(
        TimestampMs(150),
        Some(b""),
        Some(&[7u8; 300]),
        &[Header::new("a", None), Header::new("b", Some(b""))],
    );
    b.finish(ProducerStamp { producer_id: 7, producer_epoch: 2, base_sequence: 40 })
}

#[test]
fn round_trip() {
    let mut bytes = sample();
    stamp(&mut bytes, Offset(0), Offset(0));
    let header = check_for_append(&bytes).unwrap();
    assert_eq!(header.record_count, 3);
    assert_eq!(header.first_timestamp, TimestampMs(100));
    assert_eq!(header.max_timestamp, TimestampMs(150));
    assert_eq!(header.producer.base_sequence, 40);
    let view = BatchView::new(&bytes).unwrap();
    let records: Vec<_> = view.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].key, Some(&b"k1"[..]));
    assert_eq!(records[1].timestamp, TimestampMs(90));
    assert_eq!(records[1].value, None);
    assert_eq!(records[2].value.unwrap().len(), 300);
    let headers: Vec<_> = records[2].headers().map(Result::unwrap).collect();
    assert_eq!(
        headers,
        vec![Header { key: b"a", value: None }, Header { key: b"b", value: Some(b"") }]
    );
}

#[test]
fn stamped_fields_are_outside_the_crc() {
    let mut bytes = sample();
    stamp(&mut bytes, Offset(12345), Offset(12000));
    let header = check_for_append(&bytes).unwrap();
    assert_eq!(header.base_offset, Offset(12345));
    assert_eq!(header.last_offset(), Offset(12347));
    assert_eq!(header.durable_offset, Offset(12000));
}

#[test]
fn every_flipped_bit_of_a_stored_batch_is_caught() {
    let mut bytes = sample();
    stamp(&mut bytes, Offset(77), Offset(70));
    for at in 0..bytes.len() {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1 << bit;
            assert!(check(&damaged).is_err(), "flip at byte {at} bit {bit}");
        }
    }
}

#[test]
fn every_truncation_is_caught() {
    let bytes = sample();
    for len in 0..bytes.len() {
        assert!(check(&bytes[..len]).is_err(), "truncated to {len}");
    }
}

#[test]
fn garbage_never_panics() {
    // A deterministic pseudo-random walk over inputs with a valid CRC but random records.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..2000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 200) as usize;
        let mut body = vec![0u8; BATCH_HEADER_BYTES + len];
        for (i, b) in body.iter_mut().enumerate() {
            *b = (state.rotate_left(i as u32 % 64) >> 3) as u8;
        }
        let length = (body.len() - 12) as u32;
        body[field::LENGTH..field::LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        body[field::MAGIC] = BATCH_MAGIC;
        body[field::VERSION] = BATCH_VERSION;
        body[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&0u16.to_le_bytes());
        body[field::RECORD_COUNT..field::RECORD_COUNT + 4]
            .copy_from_slice(&((state % 5) as u32 + 1).to_le_bytes());
        body[field::FIRST_TIMESTAMP..field::FIRST_TIMESTAMP + 8]
            .copy_from_slice(&0i64.to_le_bytes());
        body[field::MAX_TIMESTAMP..field::MAX_TIMESTAMP + 8]
            .copy_from_slice(&i64::MAX.to_le_bytes());
        let crc = crc32fast::hash(&body[CRC_START..]);
        body[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        stamp(&mut body, Offset(0), Offset(0));
        let _ = check_for_append(&body);
        if let Ok(view) = BatchView::new(&body) {
            for record in view.records().flatten() {
                for _ in record.headers() {}
            }
        }
    }
}
