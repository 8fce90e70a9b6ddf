//! Encoding a batch: [`BatchBuilder`] writes a Kafka RecordBatch v2, what producers send and
//! the log stores in its frame ([`super::v2`]); [`BatchBuilderV1`] writes format version 1,
//! which the log no longer appends, for tests and tools that check old logs stay readable.
//! Decoding and checking are in the parent module.

use bytes::{BufMut, BytesMut};

use super::v2::KafkaBuilder;
use super::{
    BATCH_HEADER_BYTES, BATCH_MAGIC, BATCH_PREFIX_BYTES, BATCH_VERSION, CRC_START, Codec, Header,
    ProducerStamp, Varints, field, stamp,
};
use crate::{Offset, TimestampMs};

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn put_signed_varint(buf: &mut BytesMut, value: i64) {
    put_varint(buf, ((value << 1) ^ (value >> 63)) as u64);
}

fn varint_len(mut value: u64) -> usize {
    let mut n = 1;
    while value >= 0x80 {
        value >>= 7;
        n += 1;
    }
    n
}

fn signed_varint_len(value: i64) -> usize {
    varint_len(((value << 1) ^ (value >> 63)) as u64)
}

fn nullable_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => signed_varint_len(-1),
        Some(b) => signed_varint_len(b.len() as i64) + b.len(),
    }
}

fn put_nullable(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_signed_varint(buf, -1),
        Some(b) => {
            put_signed_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
    }
}

/// A field that is never negative (a length, the offset delta, a count), as `varints` writes
/// it: LEB128 in version 1, zigzag in Kafka's format.
fn put_count(buf: &mut BytesMut, varints: Varints, value: u64) {
    match varints {
        Varints::Spool => put_varint(buf, value),
        Varints::Kafka => put_signed_varint(buf, value as i64),
    }
}

fn count_len(varints: Varints, value: u64) -> usize {
    match varints {
        Varints::Spool => varint_len(value),
        Varints::Kafka => signed_varint_len(value as i64),
    }
}

/// Appends one record in the layout both formats share; they differ only in how `varints`
/// writes the fields that are never negative.
pub(super) fn put_record(
    buf: &mut BytesMut,
    varints: Varints,
    timestamp_delta: i64,
    offset_delta: u32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[Header<'_>],
) {
    let offset_delta = u64::from(offset_delta);
    let headers_len: usize = headers
        .iter()
        .map(|h| count_len(varints, h.key.len() as u64) + h.key.len() + nullable_len(h.value))
        .sum();
    let body_len = 1
        + signed_varint_len(timestamp_delta)
        + count_len(varints, offset_delta)
        + nullable_len(key)
        + nullable_len(value)
        + count_len(varints, headers.len() as u64)
        + headers_len;
    put_count(buf, varints, body_len as u64);
    buf.put_u8(0);
    put_signed_varint(buf, timestamp_delta);
    put_count(buf, varints, offset_delta);
    put_nullable(buf, key);
    put_nullable(buf, value);
    put_count(buf, varints, headers.len() as u64);
    for header in headers {
        put_count(buf, varints, header.key.len() as u64);
        buf.put_slice(header.key);
        put_nullable(buf, header.value);
    }
}

/// Encodes one batch, a Kafka RecordBatch v2, into a caller-owned buffer, so a producer can
/// reuse its allocation.
///
/// ```
/// use bytes::BytesMut;
/// use spool_storage::batch::{BatchBuilder, BatchView, Codec, Header, ProducerStamp};
/// use spool_storage::TimestampMs;
///
/// let mut builder = BatchBuilder::new(BytesMut::new());
/// builder.push(TimestampMs(1_000), Some(b"key"), Some(b"value"), &[Header::new("trace", Some(b"abc"))]);
/// let batch = builder.finish_compressed(ProducerStamp::NONE, Codec::Zstd);
/// let view = BatchView::new(&batch).unwrap();
/// assert_eq!(view.header().record_count, 1);
/// let records = view.records();
/// let record = records.iter().next().unwrap().unwrap();
/// assert_eq!(record.value, Some(&b"value"[..]));
/// ```
#[derive(Debug)]
pub struct BatchBuilder(KafkaBuilder);

impl BatchBuilder {
    /// Starts a batch in `buf`, which is cleared first.
    pub fn new(buf: BytesMut) -> Self {
        BatchBuilder(KafkaBuilder::new(buf))
    }

    pub fn record_count(&self) -> u32 {
        self.0.record_count()
    }

    /// The encoded size so far, header included (before compression).
    pub fn encoded_bytes(&self) -> usize {
        self.0.encoded_bytes()
    }

    /// Appends one record. The caller keeps the batch within
    /// [`BATCH_RECORDS_MAX`](crate::limits::BATCH_RECORDS_MAX) and
    /// [`BATCH_BYTES_MAX`](crate::limits::BATCH_BYTES_MAX); a log refuses a batch past either.
    pub fn push(
        &mut self,
        timestamp: TimestampMs,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) {
        self.0.push(timestamp, key, value, headers);
    }

    /// The encoded batch, records uncompressed (base offset 0, to be stamped by the log).
    /// Panics if no record was pushed: an empty batch is a caller bug.
    pub fn finish(self, producer: ProducerStamp) -> BytesMut {
        self.0.finish(producer, Codec::None)
    }

    /// The encoded batch, its records compressed with `codec` as Kafka's clients do.
    pub fn finish_compressed(self, producer: ProducerStamp, codec: Codec) -> BytesMut {
        self.0.finish(producer, codec)
    }
}

/// Encodes one batch in format version 1, which the log reads but no longer appends.
#[derive(Debug)]
pub struct BatchBuilderV1 {
    buf: BytesMut,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilderV1 {
    /// Starts a batch in `buf`, which is cleared first.
    pub fn new(mut buf: BytesMut) -> Self {
        buf.clear();
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilderV1 { buf, record_count: 0, first_timestamp: 0, max_timestamp: i64::MIN }
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// The encoded size so far, header included.
    pub fn encoded_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends one record. The caller keeps the batch within
    /// [`BATCH_RECORDS_MAX`](crate::limits::BATCH_RECORDS_MAX) and
    /// [`BATCH_BYTES_MAX`](crate::limits::BATCH_BYTES_MAX); a log refuses a batch past either.
    pub fn push(
        &mut self,
        timestamp: TimestampMs,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) {
        if self.record_count == 0 {
            self.first_timestamp = timestamp.0;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp.0);
        let timestamp_delta = timestamp.0.wrapping_sub(self.first_timestamp);
        let offset_delta = self.record_count;
        put_record(
            &mut self.buf,
            Varints::Spool,
            timestamp_delta,
            offset_delta,
            key,
            value,
            headers,
        );
        self.record_count += 1;
    }

    /// Writes the header and CRCs and returns the encoded batch (base and durable offset 0,
    /// to be stamped by the log). Panics if no record was pushed: an empty batch is a caller bug.
    pub fn finish(self, producer: ProducerStamp) -> BytesMut {
        assert!(self.record_count > 0, "a batch needs at least one record");
        let mut buf = self.buf;
        let length = (buf.len() - BATCH_PREFIX_BYTES) as u32;
        let header = &mut buf[..BATCH_HEADER_BYTES];
        let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
        put(field::BASE_OFFSET, &0u64.to_le_bytes());
        put(field::LENGTH, &length.to_le_bytes());
        put(field::MAGIC, &[BATCH_MAGIC, BATCH_VERSION]);
        put(field::DURABLE_OFFSET, &0u64.to_le_bytes());
        put(field::ATTRIBUTES, &0u16.to_le_bytes());
        put(field::RECORD_COUNT, &self.record_count.to_le_bytes());
        put(field::FIRST_TIMESTAMP, &self.first_timestamp.to_le_bytes());
        put(field::MAX_TIMESTAMP, &self.max_timestamp.to_le_bytes());
        put(field::PRODUCER_ID, &producer.producer_id.to_le_bytes());
        put(field::PRODUCER_EPOCH, &producer.producer_epoch.to_le_bytes());
        put(field::BASE_SEQUENCE, &producer.base_sequence.to_le_bytes());
        let crc = crc32fast::hash(&buf[CRC_START..]);
        buf[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        // Stamped as base offset 0, durable offset 0, so the batch checks as it is.
        stamp(&mut buf, Offset(0), Offset(0));
        buf
    }
}
