use bytes::BytesMut;

use super::*;

fn sample() -> BytesMut {
    let mut b = BatchBuilderV1::new(BytesMut::new());
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
    let records = view.records();
    let records: Vec<_> = records.iter().map(Result::unwrap).collect();
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
            for record in view.records().iter().flatten() {
                for _ in record.headers() {}
            }
        }
    }
}

// Format version 2: a Kafka batch from the builder, stored in its frame.

fn sample_v2(codec: Codec) -> BytesMut {
    let mut b = BatchBuilder::new(BytesMut::new());
    b.push(TimestampMs(100), Some(b"k1"), Some(b"v1"), &[Header::new("h", Some(b"x"))]);
    b.push(TimestampMs(90), None, None, &[]);
    b.push(
        TimestampMs(150),
        Some(b""),
        Some(&[7u8; 300]),
        &[Header::new("a", None), Header::new("b", Some(b""))],
    );
    b.finish_compressed(
        ProducerStamp { producer_id: 7, producer_epoch: 2, base_sequence: 40 },
        codec,
    )
}

const CODECS: [Codec; 5] = [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

#[test]
fn a_kafka_batch_round_trips_through_its_stored_form_in_every_codec() {
    for codec in CODECS {
        let wire = sample_v2(codec);
        let checked = CheckedBatch::check(&wire[..]).unwrap();
        let header = *checked.header();
        assert_eq!((header.version, header.record_count), (BATCH_VERSION_2, 3), "{codec}");
        assert_eq!(header.codec().unwrap(), codec);
        assert_eq!(header.batch_bytes as usize, wire.len() + v2::frame::BYTES);
        assert_eq!(checked.bytes(), &wire[..], "stored as sent");
        let stored = checked.stored(Offset(1000), Offset(900));
        let header = check(&stored).unwrap();
        assert_eq!(header.base_offset, Offset(1000));
        assert_eq!(header.durable_offset, Offset(900));
        assert_eq!(header.first_timestamp, TimestampMs(100));
        assert_eq!(header.max_timestamp, TimestampMs(150));
        assert_eq!(header.producer.base_sequence, 40);
        // The Kafka batch inside is the producer's but for Kafka's two stamped fields.
        let kafka = &stored[v2::frame::BYTES..];
        assert_eq!(&kafka[v2::kafka::MAGIC..], &wire[v2::kafka::MAGIC..]);
        assert_eq!(&kafka[..8], &1000u64.to_be_bytes());
        let view = BatchView::new(&stored).unwrap();
        let records = view.records();
        let records: Vec<_> = records.iter().map(Result::unwrap).collect();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].offset, Offset(1000));
        assert_eq!(records[0].key, Some(&b"k1"[..]));
        assert_eq!(records[1].timestamp, TimestampMs(90));
        assert_eq!(records[1].value, None);
        assert_eq!(records[2].offset, Offset(1002));
        assert_eq!(records[2].value.unwrap().len(), 300);
        let headers: Vec<_> = records[2].headers().map(Result::unwrap).collect();
        assert_eq!(
            headers,
            vec![Header { key: b"a", value: None }, Header { key: b"b", value: Some(b"") }]
        );
    }
}

#[test]
fn a_bare_kafka_batch_whose_leader_epoch_begins_with_spools_magic_reads_whole() {
    // partitionLeaderEpoch sits where a stored batch has its magic and version; it is outside
    // Kafka's CRC, so a producer may send any value there.
    let mut wire = sample_v2(Codec::None);
    wire[v2::kafka::PARTITION_LEADER_EPOCH] = BATCH_MAGIC;
    wire[v2::kafka::PARTITION_LEADER_EPOCH + 1] = 0;
    let view = BatchView::new(&wire).unwrap();
    assert_eq!(view.kafka_bytes(), &wire[..]);
    let records = view.records();
    let records: Vec<_> = records.iter().map(Result::unwrap).collect();
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].key, Some(&b"k1"[..]));
    assert_eq!(records[2].value.unwrap().len(), 300);
}

#[test]
fn an_entry_s_batches_before_its_last_say_so_in_the_frame() {
    let wire = sample_v2(Codec::None);
    let stamped = |more: bool| {
        let checked = CheckedBatch::check(&wire[..]).unwrap().with_entry(3, 9);
        let checked = if more { checked.with_more() } else { checked };
        checked.stored(Offset(10), Offset(0))
    };
    for more in [false, true] {
        let header = check(&stamped(more)).unwrap();
        let expected = EntryStamp { term: 3, index: 9, kind: BatchKind::Records, more };
        assert_eq!(header.entry, expected);
    }
    // A flag this version does not know is refused, not ignored.
    let mut stored = stamped(true);
    stored[v2::frame::FLAGS] |= 0x80;
    let crc = v2::frame_crc(&stored[..v2::frame::BYTES], &stored[v2::frame::BYTES..]);
    stored[v2::frame::CRC..v2::frame::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(check(&stored), Err(BatchError::UnknownFlags { found: 0x81 })));
}

#[test]
fn a_log_read_s_batches_are_read_again_without_their_records_crc() {
    let wire = sample_v2(Codec::None);
    let checked = CheckedBatch::check(&wire[..]).unwrap();
    let mut read = checked.stored(Offset(10), Offset(0));
    read.extend_from_slice(&checked.stored(Offset(13), Offset(0)));
    let again: Vec<_> = BatchIter::read_before(&read).map(|view| *view.unwrap().header()).collect();
    let checked_again: Vec<_> = BatchIter::new(&read).map(|view| *view.unwrap().header()).collect();
    assert_eq!(again, checked_again);
    // A record byte changed since the read: only the full check computes the CRC again.
    let last = read.len() - 1;
    read[last] ^= 0x01;
    assert!(BatchIter::new(&read).nth(1).unwrap().is_err());
    assert!(BatchIter::read_before(&read).nth(1).unwrap().is_ok());
    // The frame is still checked.
    read[v2::frame::BASE_OFFSET] ^= 0x01;
    assert!(BatchIter::read_before(&read).next().unwrap().is_err());
}

#[test]
fn every_flipped_bit_of_a_stored_v2_batch_is_caught() {
    let stored =
        CheckedBatch::check(&sample_v2(Codec::None)[..]).unwrap().stored(Offset(5), Offset(3));
    for at in 0..stored.len() {
        for bit in 0..8 {
            let mut damaged = stored.clone();
            damaged[at] ^= 1 << bit;
            assert!(check(&damaged).is_err(), "flip at byte {at} bit {bit}");
        }
    }
    for len in 0..stored.len() {
        assert!(check(&stored[..len]).is_err(), "truncated to {len}");
    }
}

#[test]
fn a_version_1_batch_from_an_older_client_is_stored_as_version_2() {
    let mut v1 = sample();
    stamp(&mut v1, Offset(0), Offset(0));
    let checked = CheckedBatch::check(&v1[..]).unwrap();
    assert_eq!(checked.header().version, BATCH_VERSION_2);
    let converted = CheckedBatch::check(checked.bytes()).unwrap();
    let view = BatchView::new(converted.bytes()).unwrap();
    let records = view.records();
    let values: Vec<_> = records.iter().map(|r| r.unwrap().value.map(<[u8]>::len)).collect();
    assert_eq!(values, vec![Some(2), None, Some(300)]);
    assert_eq!(checked.header().producer.base_sequence, 40);
}

#[test]
fn a_batch_is_re_encoded_only_into_another_codec() {
    let records_of = |wire: &[u8]| -> Vec<(Option<Vec<u8>>, TimestampMs, usize)> {
        let stored = CheckedBatch::check(wire).unwrap().stored(Offset(0), Offset(0));
        let view = BatchView::new(&stored).unwrap();
        let records = view.records();
        records
            .iter()
            .map(Result::unwrap)
            .map(|r| (r.value.map(<[u8]>::to_vec), r.timestamp, r.headers().count()))
            .collect()
    };
    for from in CODECS {
        let wire = sample_v2(from);
        let expected = records_of(&wire);
        for to in CODECS {
            let original = CheckedBatch::check(&wire[..]).unwrap();
            let sent = *original.header();
            let re_encoded = original.with_codec(to).unwrap();
            let header = *re_encoded.header();
            assert_eq!(header.codec().unwrap(), to, "{from} -> {to}");
            if from == to {
                assert_eq!(re_encoded.bytes(), &wire[..], "{from}: stored as sent");
                continue;
            }
            // A batch a producer could have sent in `to`: it checks as one, header and all.
            let checked = CheckedBatch::check(re_encoded.bytes()).unwrap();
            assert_eq!(*checked.header(), header, "{from} -> {to}");
            assert_eq!(header.producer, sent.producer);
            assert_eq!(header.record_count, sent.record_count);
            assert_eq!(
                (header.first_timestamp, header.max_timestamp),
                (sent.first_timestamp, sent.max_timestamp)
            );
            assert_eq!(records_of(re_encoded.bytes()), expected, "{from} -> {to}");
        }
    }
}

#[test]
fn a_batch_too_large_once_re_encoded_is_refused() {
    let mut b = BatchBuilder::new(BytesMut::new());
    let value = vec![b'a'; 1024 * 1024];
    for _ in 0..9 {
        b.push(TimestampMs(1), None, Some(&value), &[]);
    }
    let wire = b.finish_compressed(ProducerStamp::NONE, Codec::Zstd);
    let checked = CheckedBatch::check(&wire[..]).unwrap();
    let error = checked.with_codec(Codec::None).unwrap_err();
    assert!(
        matches!(error, BatchError::ReencodedTooLarge { codec: Codec::None, bytes } if bytes > 9 << 20),
        "{error}"
    );
    assert!(error.to_string().contains("re-encoded as none"), "{error}");
}

#[test]
fn a_bad_kafka_batch_is_refused_with_what_is_wrong() {
    let wire = sample_v2(Codec::None);
    let refuse = |mut bytes: Vec<u8>, fix_crc: bool| {
        if fix_crc {
            let crc = v2::kafka_crc(&bytes[v2::kafka::ATTRIBUTES..]);
            bytes[v2::kafka::CRC..v2::kafka::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        }
        check_for_append(&bytes).unwrap_err()
    };
    let mut bad_crc = wire.to_vec();
    *bad_crc.last_mut().unwrap() ^= 1;
    assert!(matches!(refuse(bad_crc, false), BatchError::CrcMismatch { .. }));
    let mut codec = wire.to_vec();
    codec[v2::kafka::ATTRIBUTES + 1] |= 0b111;
    assert!(matches!(refuse(codec, true), BatchError::UnsupportedCodec { codec: 7 }));
    let mut control = wire.to_vec();
    control[v2::kafka::ATTRIBUTES + 1] |= 1 << 5;
    assert!(matches!(refuse(control, true), BatchError::Unsupported { .. }));
    let mut count = wire.to_vec();
    count[v2::kafka::RECORDS_COUNT + 3] = 4;
    assert!(matches!(refuse(count, true), BatchError::BadRecord { .. }));
    let mut trailing = wire.to_vec();
    trailing.push(0);
    assert!(matches!(refuse(trailing, false), BatchError::TrailingBytes { .. }));
    // A compressed payload that is not what its codec says.
    let mut zstd = sample_v2(Codec::Zstd).to_vec();
    let last = zstd.len() - 1;
    zstd[last - 3] ^= 0xff;
    let error = refuse(zstd, true);
    assert!(matches!(error, BatchError::Compression(_) | BatchError::BadRecord { .. }), "{error}");
}
