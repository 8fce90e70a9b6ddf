//! The rows of ProduceService: records over a limit or out of range, acks, producer stamps
//! that do not hold, and raw batches that break one thing each (a damaged batch is re-sealed,
//! so only its damage is wrong).

use bytes::{Bytes, BytesMut};
use spool_proto::limits::{REQUEST_BYTES_MAX, TIMESTAMP_MS_MAX};
use spool_proto::v1::produce_request::Payload;
use spool_proto::v1::{Acks, ProduceRequest, ProducerStamp as WireStamp, Record, RecordList};
use spool_storage::TimestampMs;
use spool_storage::batch::v2::{kafka, kafka_crc};
use spool_storage::batch::{
    BATCH_MAGIC, BatchBuilder, BatchBuilderV1, Codec, ProducerStamp, field,
};
use tonic::Code;

use super::common::{header, record};
use super::{Clients, Row, row, stamped};

fn produce(topic: &str, partition: Option<u32>, records: Vec<Record>) -> ProduceRequest {
    ProduceRequest {
        correlation_id: 0,
        topic: topic.into(),
        partition,
        acks: 0,
        payload: Some(Payload::Records(RecordList { records })),
        producer: None,
    }
}

fn raw(bytes: impl Into<Bytes>) -> ProduceRequest {
    ProduceRequest {
        payload: Some(Payload::RawBatch(bytes.into())),
        ..produce("t", Some(0), vec![])
    }
}

/// A valid raw batch of three records (a Kafka RecordBatch v2), for the damaged variants.
fn good_batch() -> BytesMut {
    let mut builder = BatchBuilder::new(BytesMut::new());
    for value in [&b"a"[..], b"b", b"c"] {
        builder.push(TimestampMs(1_000), None, Some(value), &[]);
    }
    builder.finish(ProducerStamp::NONE)
}

/// The same in format version 1, which older clients send.
fn good_v1_batch() -> BytesMut {
    let mut builder = BatchBuilderV1::new(BytesMut::new());
    builder.push(TimestampMs(1_000), None, Some(b"a"), &[]);
    builder.finish(ProducerStamp::NONE)
}

/// Rewrites the batch's CRC-32C after a change to the bytes it covers, so that only the
/// change itself is wrong.
fn recrc(mut batch: BytesMut) -> BytesMut {
    let crc = kafka_crc(&batch[kafka::ATTRIBUTES..]);
    batch[kafka::CRC..kafka::CRC + 4].copy_from_slice(&crc.to_be_bytes());
    batch
}

fn with(mut batch: BytesMut, at: usize, bytes: &[u8]) -> BytesMut {
    batch[at..at + bytes.len()].copy_from_slice(bytes);
    batch
}

pub fn produce_rows(c: &Clients, producer_id: i64) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |what: &str, code, message_has, request: ProduceRequest| {
        let mut produce = c.produce.clone();
        let call = async move { produce.produce(request).await };
        rows.push(row(format!("Produce {what}"), code, message_has, call));
    };
    add(
        "to an unknown topic",
        Code::NotFound,
        "topic nope does not exist",
        produce("nope", None, vec![record("x")]),
    );
    add("to a deleted topic", Code::NotFound, "gone", produce("gone", None, vec![record("x")]));
    add(
        "to partition 9 of 1",
        Code::NotFound,
        "partition 9 does not exist",
        produce("t", Some(9), vec![record("x")]),
    );
    add(
        "to partition u32::MAX",
        Code::NotFound,
        "does not exist",
        produce("t", Some(u32::MAX), vec![record("x")]),
    );
    add(
        "to a topic named ../t",
        Code::InvalidArgument,
        "topic name",
        produce("../t", Some(0), vec![record("x")]),
    );
    add(
        "with an empty record list",
        Code::InvalidArgument,
        "empty record list",
        produce("t", Some(0), vec![]),
    );
    add(
        "with no payload",
        Code::InvalidArgument,
        "no records",
        ProduceRequest { payload: None, ..produce("t", Some(0), vec![]) },
    );
    for timestamp_ms in [-1, i64::MIN, TIMESTAMP_MS_MAX + 1, i64::MAX] {
        add(
            &format!("with timestamp {timestamp_ms}"),
            Code::InvalidArgument,
            "timestamp",
            produce("t", Some(0), vec![stamped(timestamp_ms)]),
        );
    }
    let crowded =
        Record { headers: (0..65).map(|i| header(&i.to_string(), "v")).collect(), ..record("x") };
    add(
        "with 65 headers",
        Code::InvalidArgument,
        "65 headers",
        produce("t", Some(0), vec![crowded]),
    );
    let huge_header =
        Record { headers: vec![header("h", &"v".repeat(8 * 1024 * 1024))], ..record("x") };
    add(
        "with an 8 MiB header",
        Code::InvalidArgument,
        "over the batch limit",
        produce("t", Some(0), vec![huge_header]),
    );
    let huge_key = Record { key: Some(Bytes::from(vec![1u8; 8 * 1024 * 1024])), ..record("x") };
    add(
        "with an 8 MiB key",
        Code::InvalidArgument,
        "over the batch limit",
        produce("t", Some(0), vec![huge_key]),
    );
    let big = Record { value: Some(Bytes::from(vec![7u8; 8 * 1024 * 1024 + 1])), ..record("") };
    add(
        "with a record over 8 MiB",
        Code::InvalidArgument,
        "over the batch limit",
        produce("t", Some(0), vec![big]),
    );
    let half = Record { value: Some(Bytes::from(vec![7u8; 4 * 1024 * 1024])), ..record("") };
    add(
        "with a batch over 8 MiB",
        Code::InvalidArgument,
        "over the batch limit",
        produce("t", Some(0), vec![half.clone(), half]),
    );
    add(
        "with 100001 records",
        Code::InvalidArgument,
        "100001 records",
        produce("t", Some(0), vec![Record { value: None, ..record("") }; 100_001]),
    );
    for acks in [42, -1, i32::MAX] {
        add(
            &format!("with acks {acks}"),
            Code::InvalidArgument,
            "acks",
            ProduceRequest { acks, ..produce("t", Some(0), vec![record("x")]) },
        );
    }
    // A request malformed in itself is refused as such, whether its topic exists.
    add(
        "with acks 42, to a topic that does not exist",
        Code::InvalidArgument,
        "acks",
        ProduceRequest { acks: 42, ..produce("nope", Some(0), vec![record("x")]) },
    );
    add(
        "of no records, to a topic that does not exist",
        Code::InvalidArgument,
        "empty record list",
        produce("nope", Some(0), vec![]),
    );
    add(
        "with acks=all to an fsync never topic",
        Code::FailedPrecondition,
        "fsync policy `never`",
        ProduceRequest {
            acks: Acks::All as i32,
            ..produce("unsynced", Some(0), vec![record("x")])
        },
    );
    let stamp = |producer_id, producer_epoch, base_sequence| WireStamp {
        producer_id,
        producer_epoch,
        base_sequence,
    };
    add(
        "idempotent without a partition",
        Code::InvalidArgument,
        "must name its partition",
        ProduceRequest { producer: Some(stamp(1, 0, 0)), ..produce("t", None, vec![record("x")]) },
    );
    add(
        "with producer epoch 40000",
        Code::InvalidArgument,
        "producer_epoch 40000",
        ProduceRequest {
            producer: Some(stamp(1, 40_000, 0)),
            ..produce("t", Some(0), vec![record("x")])
        },
    );
    add(
        "with base sequence -5",
        Code::InvalidArgument,
        "base_sequence -5",
        ProduceRequest {
            producer: Some(stamp(1, 0, -5)),
            ..produce("t", Some(0), vec![record("x")])
        },
    );
    add(
        "with a producer id the server never gave",
        Code::FailedPrecondition,
        "producer id 987654321 was never allocated by this server",
        ProduceRequest {
            producer: Some(stamp(987_654_321, 0, 0)),
            ..produce("t", Some(0), vec![record("x")])
        },
    );

    // Raw batches: each row breaks one thing of a valid batch.
    let good = good_batch();
    let length = good.len() - 12;
    let raw_rows: Vec<(&str, &str, BytesMut)> = vec![
        ("empty", "truncated", BytesMut::new()),
        ("of 11 bytes", "truncated", good[..11].into()),
        ("cut in its header", "truncated", good[..40].into()),
        ("cut in its records", "truncated", good[..good.len() - 1].into()),
        ("with a trailing byte", "length field accounts for", {
            let mut longer = good.clone();
            longer.extend_from_slice(&[0]);
            longer
        }),
        ("with a wrong CRC", "CRC mismatch", with(good.clone(), kafka::CRC, &[0, 0, 0, 0])),
        ("with a flipped record byte", "CRC mismatch", {
            let mut flipped = good.clone();
            let last = flipped.len() - 1;
            flipped[last] ^= 0x40;
            flipped
        }),
        (
            "with length 0",
            "length field",
            with(good.clone(), kafka::BATCH_LENGTH, &0u32.to_be_bytes()),
        ),
        (
            "with length u32::MAX",
            "length field",
            with(good.clone(), kafka::BATCH_LENGTH, &u32::MAX.to_be_bytes()),
        ),
        (
            "with length one short",
            "",
            with(good.clone(), kafka::BATCH_LENGTH, &(length as u32 - 1).to_be_bytes()),
        ),
        (
            "with length one long",
            "truncated",
            with(good.clone(), kafka::BATCH_LENGTH, &(length as u32 + 1).to_be_bytes()),
        ),
        (
            "with magic 0 (a Kafka message set)",
            "expected 2",
            with(good.clone(), kafka::MAGIC, &[0]),
        ),
        (
            "with magic 1 (a Kafka message set)",
            "expected 2",
            with(good.clone(), kafka::MAGIC, &[1]),
        ),
        ("of version 1 with magic 0x00", "magic", with(good_v1_batch(), field::MAGIC, &[0])),
        ("of version 9", "version 9", with(good_v1_batch(), field::VERSION, &[9])),
        (
            "with an unknown compression codec",
            "compression codec 7",
            recrc(with(good.clone(), kafka::ATTRIBUTES, &7u16.to_be_bytes())),
        ),
        (
            "claiming gzip without being gzip",
            "do not decompress",
            recrc(with(good.clone(), kafka::ATTRIBUTES, &1u16.to_be_bytes())),
        ),
        (
            "marked transactional",
            "transactional",
            recrc(with(good.clone(), kafka::ATTRIBUTES, &(1u16 << 4).to_be_bytes())),
        ),
        (
            "claiming 0 records",
            "declares 0 records",
            recrc(with(good.clone(), kafka::RECORDS_COUNT, &0u32.to_be_bytes())),
        ),
        (
            "claiming 2 of its 3 records",
            "",
            recrc(with(good.clone(), kafka::RECORDS_COUNT, &2u32.to_be_bytes())),
        ),
        (
            "claiming 4 of its 3 records",
            "",
            recrc(with(good.clone(), kafka::RECORDS_COUNT, &4u32.to_be_bytes())),
        ),
        (
            "claiming u32::MAX records",
            "records",
            recrc(with(good.clone(), kafka::RECORDS_COUNT, &u32::MAX.to_be_bytes())),
        ),
        (
            "with a last offset delta that is not its count",
            "lastOffsetDelta",
            recrc(with(good.clone(), kafka::LAST_OFFSET_DELTA, &5u32.to_be_bytes())),
        ),
        (
            "with max timestamp before first",
            "timestamp",
            recrc(with(good.clone(), kafka::MAX_TIMESTAMP, &0i64.to_be_bytes())),
        ),
        (
            "with a lying max timestamp",
            "timestamp",
            recrc(with(good.clone(), kafka::MAX_TIMESTAMP, &5_000i64.to_be_bytes())),
        ),
        (
            "of random bytes",
            "invalid batch",
            BytesMut::from(&b"not a batch at all, just some text"[..]),
        ),
        ("of only a magic byte", "", {
            let mut bytes = BytesMut::from(&[0u8; 12][..]);
            bytes.extend_from_slice(&[BATCH_MAGIC, 1]);
            bytes
        }),
    ];
    for (what, message_has, bytes) in raw_rows {
        add(
            &format!("a raw batch {what}"),
            Code::InvalidArgument,
            message_has,
            raw(bytes.freeze()),
        );
    }
    // "t" stores its batches uncompressed: 9 MiB of records zstd makes small are too large
    // once re-encoded.
    let mut builder = BatchBuilder::new(BytesMut::new());
    for _ in 0..9 {
        builder.push(TimestampMs(1_000), None, Some(&vec![b'z'; 1 << 20]), &[]);
    }
    add(
        "a raw zstd batch over the limit once re-encoded as the topic's codec",
        Code::InvalidArgument,
        "re-encoded as none (the topic's compression), more than the limit",
        raw(builder.finish_compressed(ProducerStamp::NONE, Codec::Zstd).freeze()),
    );
    // Fire-and-forget waits for no append, so a damaged batch must be refused before it is
    // queued: answering OK and dropping it later would lose it without a word.
    add(
        "a raw batch with a wrong CRC, acks=none",
        Code::InvalidArgument,
        "CRC mismatch",
        ProduceRequest {
            acks: Acks::None as i32,
            ..raw(with(good.clone(), kafka::CRC, &[0, 0, 0, 0]).freeze())
        },
    );
    add(
        "a raw batch and a producer stamp",
        Code::InvalidArgument,
        "leave the request's `producer` unset",
        ProduceRequest { producer: Some(stamp(producer_id, 0, 0)), ..raw(good.clone().freeze()) },
    );
    // Larger than the server decodes at all: tonic refuses it (with OUT_OF_RANGE) unread.
    let mut unlimited = c.produce.clone().max_encoding_message_size(usize::MAX);
    let oversized =
        Record { value: Some(Bytes::from(vec![0u8; REQUEST_BYTES_MAX + 1])), ..record("") };
    let request = produce("t", Some(0), vec![oversized]);
    let call = async move { unlimited.produce(request).await };
    rows.push(row(
        "Produce a message over the request limit",
        Code::OutOfRange,
        "message length too large",
        call,
    ));
    rows
}
