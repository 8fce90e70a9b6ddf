//! Format version 2: Spool's frame, then a Kafka RecordBatch v2 (magic 2) exactly as the
//! producer sent it but for the two fields Kafka's brokers stamp.
//!
//! On the wire a producer sends the Kafka batch alone (any Kafka client's encoder writes
//! one); the log writes the frame in front of it when it appends. Stored:
//!
//! # The frame (little-endian)
//!
//! | offset | size | field            | notes                                                   |
//! |-------:|-----:|------------------|---------------------------------------------------------|
//! |      0 |    8 | `base_offset`    | u64, stamped; the same as the Kafka batch's `baseOffset` |
//! |      8 |    4 | `length`         | u32, bytes after this field: 32 + the Kafka batch        |
//! |     12 |    1 | `magic`          | `0xB5`, as in version 1                                  |
//! |     13 |    1 | `version`        | `2`                                                      |
//! |     14 |    1 | `kind`           | 0: records; 1: control (no records of a producer's)      |
//! |     15 |    1 | `flags`          | bit 0: more batches of this entry follow; others 0      |
//! |     16 |    8 | `durable_offset` | u64, the log's durable end at append; stamped            |
//! |     24 |    8 | `term`           | u64, the replicated log's term; 0 on a single node       |
//! |     32 |    8 | `index`          | u64, the replicated log's index; 0 on a single node      |
//! |     40 |    4 | `frame_crc`      | CRC-32 (crc32fast) of bytes 0..40 and of the Kafka batch's first 17 bytes |
//! |     44 |    … | Kafka batch      | below                                                    |
//!
//! The frame's CRC covers what Kafka's CRC-32C does not (the stamped `baseOffset` and
//! `partitionLeaderEpoch`, `batchLength`, `magic`); Kafka's covers the rest, so together they
//! cover every byte but the two CRCs themselves, and the records' CRC is never recomputed.
//!
//! # Kafka's RecordBatch v2 (big-endian, as Kafka defines it)
//!
//! | offset | size | field                  | notes                                        |
//! |-------:|-----:|------------------------|----------------------------------------------|
//! |      0 |    8 | `baseOffset`           | stamped at append                            |
//! |      8 |    4 | `batchLength`          | bytes after this field                       |
//! |     12 |    4 | `partitionLeaderEpoch` | stamped at append (the term; 0 on one node)  |
//! |     16 |    1 | `magic`                | 2                                            |
//! |     17 |    4 | `crc`                  | CRC-32C of bytes 21..end                     |
//! |     21 |    2 | `attributes`           | bits 0-2 codec (none, gzip, snappy, lz4, zstd); 3 timestamp type; 4 transactional; 5 control |
//! |     23 |    4 | `lastOffsetDelta`      | record count - 1                             |
//! |     27 |    8 | `baseTimestamp`        | ms; the first record's                       |
//! |     35 |    8 | `maxTimestamp`         | ms; the largest record timestamp             |
//! |     43 |    8 | `producerId`           | -1 when not idempotent                       |
//! |     51 |    2 | `producerEpoch`        |                                              |
//! |     53 |    4 | `baseSequence`         |                                              |
//! |     57 |    4 | `recordsCount`         |                                              |
//! |     61 |    … | records                | compressed as a whole when the codec is not none |
//!
//! A record: `length`, `attributes` (i8, 0), `timestampDelta`, `offsetDelta`, `keyLength`,
//! key, `valueLength`, value, `headersCount`, then per header `keyLength`, key,
//! `valueLength`, value; every integer but `attributes` a zigzag varint, -1 for a null key,
//! value or header value.

use std::borrow::Cow;

use bytes::BytesMut;

use super::builder::put_record;
use super::compression::{self, Codec};
use super::{
    BatchError, BatchHeader, BatchKind, EntryStamp, Header, ProducerStamp, RecordIter, Varints,
    check_records, u32_at, u64_at,
};
use crate::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX, DECOMPRESSED_BYTES_MAX};
use crate::{Offset, TimestampMs};

/// The format version this module reads and writes.
pub const VERSION: u8 = 2;

/// Where each frame field starts.
pub mod frame {
    pub const BASE_OFFSET: usize = 0;
    pub const LENGTH: usize = 8;
    pub const MAGIC: usize = 12;
    pub const VERSION: usize = 13;
    pub const KIND: usize = 14;
    pub const FLAGS: usize = 15;
    pub const DURABLE_OFFSET: usize = 16;
    pub const TERM: usize = 24;
    pub const INDEX: usize = 32;
    pub const CRC: usize = 40;
    /// The frame's size: the Kafka batch starts here.
    pub const BYTES: usize = 44;
}

/// Where each field of Kafka's batch header starts, from the start of the Kafka batch.
pub mod kafka {
    pub const BASE_OFFSET: usize = 0;
    pub const BATCH_LENGTH: usize = 8;
    pub const PARTITION_LEADER_EPOCH: usize = 12;
    pub const MAGIC: usize = 16;
    pub const CRC: usize = 17;
    pub const ATTRIBUTES: usize = 21;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const BASE_TIMESTAMP: usize = 27;
    pub const MAX_TIMESTAMP: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const RECORDS_COUNT: usize = 57;
    pub const RECORDS: usize = 61;
    /// Kafka's magic byte for this format.
    pub const MAGIC_V2: u8 = 2;
    /// Bytes from `baseOffset` to `batchLength`'s end: where `batchLength` counts from.
    pub const PREFIX: usize = 12;
}

/// Kafka's attribute bits.
/// The frame's `flags` bit that says more batches of the same entry follow.
const FLAG_MORE: u8 = 1;
const TRANSACTIONAL: u16 = 1 << 4;
const CONTROL: u16 = 1 << 5;

/// The bytes of a stored v2 batch that the log writes itself: the frame, then the Kafka
/// batch up to its CRC (with `baseOffset` and `partitionLeaderEpoch` stamped). The rest is
/// written from the producer's bytes as they came.
pub const STAMPED_HEAD_BYTES: usize = frame::BYTES + kafka::CRC;

fn be_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}
fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
fn be_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}
/// Whether `bytes` start like a bare Kafka batch (what a producer sends) rather than a stored
/// one: Kafka's magic 2 where a stored batch has `durable_offset`, and no Spool magic.
pub(crate) fn looks_like_kafka(bytes: &[u8]) -> bool {
    bytes.len() > kafka::MAGIC
        && bytes[kafka::MAGIC] == kafka::MAGIC_V2
        && !(bytes[frame::MAGIC] == super::BATCH_MAGIC && matches!(bytes[frame::VERSION], 1 | 2))
}

/// A Kafka batch's header, checked as far as its CRC-32C.
pub(crate) fn kafka_header(bytes: &[u8]) -> Result<(BatchHeader, usize), BatchError> {
    kafka_header_with(bytes, Crc::Verify)
}

/// Whether a batch's CRC-32C over its records is computed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Crc {
    Verify,
    /// The bytes are a log read's, which checked each batch whole a moment ago.
    Trust,
}

/// [`kafka_header`], its CRC-32C computed only when `crc` says to.
pub(crate) fn kafka_header_with(
    bytes: &[u8],
    crc: Crc,
) -> Result<(BatchHeader, usize), BatchError> {
    if bytes.len() < kafka::RECORDS {
        return Err(BatchError::Truncated { bytes: bytes.len(), needed: kafka::RECORDS });
    }
    if bytes[kafka::MAGIC] != kafka::MAGIC_V2 {
        return Err(BatchError::BadKafkaMagic { found: bytes[kafka::MAGIC] });
    }
    let length = be_u32(bytes, kafka::BATCH_LENGTH);
    let minimum = (kafka::RECORDS - kafka::PREFIX) as u32;
    if length < minimum || length > BATCH_BYTES_MAX - kafka::PREFIX as u32 {
        return Err(BatchError::BadLength { length });
    }
    let total = kafka::PREFIX + length as usize;
    if bytes.len() < total {
        return Err(BatchError::Truncated { bytes: bytes.len(), needed: total });
    }
    let bytes = &bytes[..total];
    let stored = be_u32(bytes, kafka::CRC);
    if crc == Crc::Verify {
        let computed = kafka_crc(&bytes[kafka::ATTRIBUTES..]);
        if stored != computed {
            return Err(BatchError::CrcMismatch { stored, computed });
        }
    }
    let attributes = be_u16(bytes, kafka::ATTRIBUTES);
    Codec::from_id((attributes & super::ATTRIBUTES_CODEC_MASK) as u8).map_err(|_| {
        BatchError::UnsupportedCodec { codec: attributes & super::ATTRIBUTES_CODEC_MASK }
    })?;
    let count = be_u32(bytes, kafka::RECORDS_COUNT);
    if count == 0 || count > BATCH_RECORDS_MAX {
        return Err(BatchError::BadRecordCount { count });
    }
    let last_delta = be_u32(bytes, kafka::LAST_OFFSET_DELTA);
    if u64::from(last_delta) + 1 != u64::from(count) {
        return Err(BatchError::BadRecord {
            index: count - 1,
            reason: "lastOffsetDelta is not the record count - 1",
        });
    }
    let first = be_u64(bytes, kafka::BASE_TIMESTAMP) as i64;
    let max = be_u64(bytes, kafka::MAX_TIMESTAMP) as i64;
    let header = BatchHeader {
        base_offset: Offset(be_u64(bytes, kafka::BASE_OFFSET)),
        durable_offset: Offset(0),
        batch_bytes: total as u32,
        crc: stored,
        attributes,
        record_count: count,
        first_timestamp: TimestampMs(first),
        max_timestamp: TimestampMs(max),
        producer: ProducerStamp {
            producer_id: be_u64(bytes, kafka::PRODUCER_ID) as i64,
            producer_epoch: be_u16(bytes, kafka::PRODUCER_EPOCH) as i16,
            base_sequence: be_u32(bytes, kafka::BASE_SEQUENCE) as i32,
        },
        version: VERSION,
        entry: EntryStamp::default(),
    };
    Ok((header, total))
}

/// Kafka's batch CRC: CRC-32C (Castagnoli) of `bytes`, which for a batch are those from
/// `attributes` to its end.
pub fn kafka_crc(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

pub(crate) fn frame_crc(frame_bytes: &[u8], kafka_head: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame_bytes[..frame::CRC]);
    hasher.update(&kafka_head[..kafka::CRC]);
    hasher.finalize()
}

/// Checks the frame CRC of the stored v2 batch at the start of `bytes`, which holds at least
/// its [`STAMPED_HEAD_BYTES`]: its base offset and length can then be trusted.
pub(crate) fn check_head(bytes: &[u8]) -> Result<(), BatchError> {
    let stored = u32_at(bytes, frame::CRC);
    let computed = frame_crc(&bytes[..frame::BYTES], &bytes[frame::BYTES..]);
    if stored != computed {
        return Err(BatchError::StampCrcMismatch { stored, computed });
    }
    Ok(())
}

/// Checks the stored v2 batch at the start of `bytes` (frame and Kafka CRCs, not records;
/// the Kafka CRC only when `crc` says to).
pub(crate) fn check_stored_with(bytes: &[u8], crc: Crc) -> Result<BatchHeader, BatchError> {
    let (_, stored_bytes) = super::peek_prefix(bytes)?;
    let stored_bytes = stored_bytes as usize;
    if bytes.len() < stored_bytes {
        return Err(BatchError::Truncated { bytes: bytes.len(), needed: stored_bytes });
    }
    if stored_bytes < frame::BYTES + kafka::RECORDS {
        return Err(BatchError::BadLength { length: u32_at(bytes, frame::LENGTH) });
    }
    let bytes = &bytes[..stored_bytes];
    let (frame_bytes, body) = bytes.split_at(frame::BYTES);
    let stored = u32_at(frame_bytes, frame::CRC);
    let computed = frame_crc(frame_bytes, body);
    if stored != computed {
        return Err(BatchError::StampCrcMismatch { stored, computed });
    }
    let (mut header, total) = kafka_header_with(body, crc)?;
    if total != body.len() || header.base_offset.0 != u64_at(frame_bytes, frame::BASE_OFFSET) {
        return Err(BatchError::FrameMismatch);
    }
    header.batch_bytes = stored_bytes as u32;
    header.durable_offset = Offset(u64_at(frame_bytes, frame::DURABLE_OFFSET));
    header.entry = frame_entry(frame_bytes)?;
    let control = header.attributes & CONTROL != 0;
    if control != (header.entry.kind == BatchKind::Control) {
        return Err(BatchError::FrameMismatch);
    }
    Ok(header)
}

/// The replicated-log fields of a frame whose CRC was checked.
fn frame_entry(frame_bytes: &[u8]) -> Result<EntryStamp, BatchError> {
    let kind = BatchKind::from_id(frame_bytes[frame::KIND])
        .ok_or(BatchError::UnknownKind { found: frame_bytes[frame::KIND] })?;
    let flags = frame_bytes[frame::FLAGS];
    if flags & !FLAG_MORE != 0 {
        return Err(BatchError::UnknownFlags { found: flags });
    }
    Ok(EntryStamp {
        term: u64_at(frame_bytes, frame::TERM),
        index: u64_at(frame_bytes, frame::INDEX),
        kind,
        more: flags & FLAG_MORE != 0,
    })
}

/// The base offset, size and replicated-log fields of the stored v2 batch whose
/// [`STAMPED_HEAD_BYTES`] are `head`, after checking the frame's CRC (not the records'):
/// enough to find a replicated log's entry without reading the batch.
pub(crate) fn check_head_entry(head: &[u8]) -> Result<(Offset, EntryStamp), BatchError> {
    check_head(head)?;
    let entry = frame_entry(&head[..frame::BYTES])?;
    Ok((Offset(u64_at(head, frame::BASE_OFFSET)), entry))
}

/// Checks a bare Kafka batch as a producer sent it, records included (decompressed, within
/// [`DECOMPRESSED_BYTES_MAX`]). Its header's `batch_bytes` is the size it will have stored.
pub(crate) fn check_wire(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let (mut header, total) = kafka_header(bytes)?;
    if total != bytes.len() {
        return Err(BatchError::TrailingBytes { bytes: bytes.len(), expected: total });
    }
    if header.attributes & (TRANSACTIONAL | CONTROL) != 0 {
        return Err(BatchError::Unsupported {
            what: "transactional and control batches (a producer's batches are neither)",
        });
    }
    check_records(&header, records(bytes, &header).iter())?;
    header.batch_bytes = (frame::BYTES + total) as u32;
    Ok(header)
}

/// The records of a checked Kafka batch (`bytes` from its `baseOffset`), decompressed if
/// need be.
pub(crate) fn records<'a>(bytes: &'a [u8], header: &BatchHeader) -> Records<'a> {
    let end = kafka::PREFIX + be_u32(bytes, kafka::BATCH_LENGTH) as usize;
    // A batch whose frame and Kafka lengths disagree (only unchecked bytes can) reads as
    // truncated rather than past its end.
    let Some(section) = bytes.get(kafka::RECORDS..end) else {
        let error = BatchError::Truncated { bytes: bytes.len(), needed: end };
        return Records { section: Err(error), header: *header };
    };
    let section = match header.codec() {
        Ok(Codec::None) => Ok(Cow::Borrowed(section)),
        Ok(codec) => compression::decompress(codec, section, DECOMPRESSED_BYTES_MAX)
            .map(Cow::Owned)
            .map_err(|error| BatchError::Compression(error.to_string())),
        Err(error) => Err(error),
    };
    Records { section, header: *header }
}

/// The checked Kafka batch `wire` with its records re-encoded under `codec`: the records
/// section decompressed and compressed again (never decoded record by record), the codec
/// bits of `attributes`, `batchLength` and the CRC-32C changed, every other field kept.
pub(crate) fn recompress(
    wire: &[u8],
    header: &BatchHeader,
    codec: Codec,
) -> Result<(bytes::Bytes, BatchHeader), BatchError> {
    let records = records(wire, header);
    let section = records.section?;
    let mut buf = BytesMut::with_capacity(kafka::RECORDS + section.len());
    buf.extend_from_slice(&wire[..kafka::RECORDS]);
    match codec {
        Codec::None => buf.extend_from_slice(&section),
        codec => buf.extend_from_slice(&compression::compress(codec, &section)),
    }
    if buf.len() > BATCH_BYTES_MAX as usize {
        return Err(BatchError::ReencodedTooLarge { codec, bytes: buf.len() });
    }
    let attributes = (header.attributes & !super::ATTRIBUTES_CODEC_MASK) | u16::from(codec.id());
    let length = (buf.len() - kafka::PREFIX) as u32;
    buf[kafka::BATCH_LENGTH..][..4].copy_from_slice(&length.to_be_bytes());
    buf[kafka::ATTRIBUTES..][..2].copy_from_slice(&attributes.to_be_bytes());
    let crc = kafka_crc(&buf[kafka::ATTRIBUTES..]);
    buf[kafka::CRC..][..4].copy_from_slice(&crc.to_be_bytes());
    let header =
        BatchHeader { batch_bytes: (frame::BYTES + buf.len()) as u32, crc, attributes, ..*header };
    Ok((buf.freeze(), header))
}

/// A batch's records, borrowed from the batch or decompressed from it.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    section: Result<Cow<'a, [u8]>, BatchError>,
    header: BatchHeader,
}

impl<'a> Records<'a> {
    pub(crate) fn borrowed(section: &'a [u8], header: BatchHeader) -> Records<'a> {
        Records { section: Ok(Cow::Borrowed(section)), header }
    }

    /// Decodes the records lazily (compressed ones were decompressed when these were made;
    /// if that failed, the first item is the error).
    pub fn iter(&self) -> RecordIter<'_> {
        let varints = if self.header.version == VERSION { Varints::Kafka } else { Varints::Spool };
        match &self.section {
            Ok(section) => RecordIter::new(section, &self.header, varints),
            Err(error) => RecordIter::failed(error.clone()),
        }
    }

    /// The same records, owning their bytes (compressed records are already owned; others
    /// are copied).
    pub fn into_owned(self) -> Records<'static> {
        let section = self.section.map(|section| Cow::Owned(section.into_owned()));
        Records { section, header: self.header }
    }

    /// An iterator that borrows only the batch, for records not decompressed (else `Err`
    /// with the records, whose [`Records::iter`] borrows them).
    pub fn into_iter_borrowed(self) -> Result<RecordIter<'a>, Records<'a>> {
        let varints = if self.header.version == VERSION { Varints::Kafka } else { Varints::Spool };
        match self.section {
            Ok(Cow::Borrowed(section)) => Ok(RecordIter::new(section, &self.header, varints)),
            Err(error) => Ok(RecordIter::failed(error)),
            Ok(Cow::Owned(owned)) => {
                Err(Records { section: Ok(Cow::Owned(owned)), header: self.header })
            }
        }
    }

    /// Whether the records were decompressed from the batch.
    pub fn is_decompressed(&self) -> bool {
        matches!(self.section, Ok(Cow::Owned(_)))
    }

    /// The records' bytes once decompressed: what a batch's codec saves is
    /// `batch bytes` against this.
    pub fn decoded_bytes(&self) -> usize {
        self.section.as_ref().map_or(0, |section| section.len())
    }
}

/// The head the log writes for a v2 batch: the frame, then the Kafka batch's first 17 bytes
/// with `baseOffset` and `partitionLeaderEpoch` stamped. `wire` is the bare Kafka batch.
pub(crate) fn stamped_head(
    wire: &[u8],
    base_offset: Offset,
    durable_offset: Offset,
    entry: EntryStamp,
) -> [u8; STAMPED_HEAD_BYTES] {
    let EntryStamp { term, index, kind, more } = entry;
    let mut head = [0u8; STAMPED_HEAD_BYTES];
    let length = (frame::BYTES - frame::MAGIC + wire.len()) as u32;
    head[frame::BASE_OFFSET..][..8].copy_from_slice(&base_offset.0.to_le_bytes());
    head[frame::LENGTH..][..4].copy_from_slice(&length.to_le_bytes());
    head[frame::MAGIC] = super::BATCH_MAGIC;
    head[frame::VERSION] = VERSION;
    head[frame::KIND] = kind.id();
    head[frame::FLAGS] = if more { FLAG_MORE } else { 0 };
    head[frame::DURABLE_OFFSET..][..8].copy_from_slice(&durable_offset.0.to_le_bytes());
    head[frame::TERM..][..8].copy_from_slice(&term.to_le_bytes());
    head[frame::INDEX..][..8].copy_from_slice(&index.to_le_bytes());
    let body = &mut head[frame::BYTES..];
    body.copy_from_slice(&wire[..kafka::CRC]);
    body[kafka::BASE_OFFSET..][..8].copy_from_slice(&base_offset.0.to_be_bytes());
    body[kafka::PARTITION_LEADER_EPOCH..][..4].copy_from_slice(&(term as u32).to_be_bytes());
    let crc = frame_crc(&head[..frame::BYTES], &head[frame::BYTES..]);
    head[frame::CRC..][..4].copy_from_slice(&crc.to_le_bytes());
    head
}

/// A Kafka control batch of one record: key Kafka's control key (version 0, `control_type`),
/// value `payload`. Kafka's consumers skip control batches.
pub(crate) fn control_batch(
    control_type: u16,
    payload: &[u8],
    timestamp: TimestampMs,
) -> bytes::Bytes {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&control_type.to_be_bytes());
    let mut builder = KafkaBuilder::new(BytesMut::new());
    builder.push(timestamp, Some(&key), Some(payload), &[]);
    let mut buf = builder.finish(ProducerStamp::NONE, Codec::None);
    buf[kafka::ATTRIBUTES..][..2].copy_from_slice(&CONTROL.to_be_bytes());
    let crc = kafka_crc(&buf[kafka::ATTRIBUTES..]);
    buf[kafka::CRC..][..4].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

/// Encodes records into a Kafka RecordBatch v2, the form a producer sends.
#[derive(Debug)]
pub(crate) struct KafkaBuilder {
    records: BytesMut,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl KafkaBuilder {
    pub(crate) fn new(mut records: BytesMut) -> KafkaBuilder {
        records.clear();
        records.resize(kafka::RECORDS, 0);
        KafkaBuilder { records, record_count: 0, first_timestamp: 0, max_timestamp: i64::MIN }
    }

    pub(crate) fn record_count(&self) -> u32 {
        self.record_count
    }

    pub(crate) fn encoded_bytes(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn push(
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
        let (buf, offset_delta) = (&mut self.records, self.record_count);
        put_record(buf, Varints::Kafka, timestamp_delta, offset_delta, key, value, headers);
        self.record_count += 1;
    }

    /// The finished Kafka batch, its records compressed with `codec`.
    pub(crate) fn finish(self, producer: ProducerStamp, codec: Codec) -> BytesMut {
        assert!(self.record_count > 0, "a batch needs at least one record");
        let mut buf = self.records;
        if codec != Codec::None {
            let compressed = compression::compress(codec, &buf[kafka::RECORDS..]);
            buf.truncate(kafka::RECORDS);
            buf.extend_from_slice(&compressed);
        }
        let length = (buf.len() - kafka::PREFIX) as u32;
        let header = &mut buf[..kafka::RECORDS];
        let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
        put(kafka::BASE_OFFSET, &0u64.to_be_bytes());
        put(kafka::BATCH_LENGTH, &length.to_be_bytes());
        put(kafka::PARTITION_LEADER_EPOCH, &0u32.to_be_bytes());
        put(kafka::MAGIC, &[kafka::MAGIC_V2]);
        put(kafka::ATTRIBUTES, &u16::from(codec.id()).to_be_bytes());
        put(kafka::LAST_OFFSET_DELTA, &(self.record_count - 1).to_be_bytes());
        put(kafka::BASE_TIMESTAMP, &self.first_timestamp.to_be_bytes());
        put(kafka::MAX_TIMESTAMP, &self.max_timestamp.to_be_bytes());
        put(kafka::PRODUCER_ID, &producer.producer_id.to_be_bytes());
        put(kafka::PRODUCER_EPOCH, &producer.producer_epoch.to_be_bytes());
        put(kafka::BASE_SEQUENCE, &producer.base_sequence.to_be_bytes());
        put(kafka::RECORDS_COUNT, &self.record_count.to_be_bytes());
        let crc = kafka_crc(&buf[kafka::ATTRIBUTES..]);
        buf[kafka::CRC..kafka::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        buf
    }
}
