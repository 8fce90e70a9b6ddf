//! The record batch: the unit that producers send, the log stores and consumers receive.
//!
//! # Two format versions
//!
//! **Version 2**, what every append writes ([`v2`]): Spool's frame around a Kafka RecordBatch
//! v2. Producers (Spool's client, the CLI, the server's protobuf-records path, and any Kafka
//! client) send the Kafka batch alone; the log writes the frame in front of it and stamps
//! Kafka's `baseOffset` and `partitionLeaderEpoch`. Why this shape rather than Spool's own
//! records with a Kafka view computed on the way out: a Kafka batch is then stored as sent
//! and served as stored to gRPC and Kafka consumers alike, its CRC-32C never recomputed and
//! its compressed records never re-encoded, while the frame keeps what only the log knows
//! (the durable end that recovery needs, a term, an index and a kind for replicated logs)
//! under a checksum of its own. The frame costs 44 bytes per batch, and serving a Kafka
//! consumer means sending each stored batch from byte 44 on (still without copying).
//!
//! **Version 1**, Spool's own batch (the tables below), is what earlier builds appended. It
//! is still read (a segment holds one version; an append to a log whose active segment holds
//! version 1 starts a new segment) and still accepted from an older client, whose batch is
//! re-encoded as version 2 once, in [`CheckedBatch::check`].
//!
//! Both versions begin with `base_offset` (u64 LE), `length` (u32 LE, bytes after it), the
//! magic byte `0xB5` and the version: [`peek_prefix`] and [`check_head`] walk a segment of
//! either without knowing which.
//!
//! # Version 1
//!
//! A version 1 batch was encoded once, by the producer, and never re-encoded: the log stamped
//! `base_offset` and `durable_offset` into a copy of its first [`STAMPED_HEAD_BYTES_V1`] and
//! wrote that head and then the rest of the batch as it came. The CRC therefore covers
//! everything except the fields stamped at append time and the fields needed to find and
//! verify the batch (`length`, `magic`, `version`, `crc`), as in Kafka's v2 batch. A producer
//! wrote zeros in the stamped fields.
//!
//! `durable_offset` (in both versions) is the log's durable end when the batch was appended:
//! everything before it had been fsynced. Recovery uses it to tell a hole left by a power loss
//! in data that was never synced (writes may reach the disk out of order: a torn tail, cut
//! off) from damage to data that was (which fences the log).
//!
//! ## Batch layout (format version 1, all integers little-endian)
//!
//! | offset | size | field             | notes                                                   |
//! |-------:|-----:|-------------------|---------------------------------------------------------|
//! |      0 |    8 | `base_offset`     | u64, offset of the first record; stamped at append      |
//! |      8 |    4 | `length`          | u32, bytes that follow this field (whole batch - 12)   |
//! |     12 |    1 | `magic`           | `0xB5`                                                  |
//! |     13 |    1 | `version`         | `1`                                                     |
//! |     14 |    8 | `durable_offset`  | u64, the log's durable end at append; stamped at append |
//! |     22 |    4 | `stamp_crc`       | CRC-32 of bytes `0..8` then `14..22`; stamped at append |
//! |     26 |    4 | `crc`             | CRC-32 (IEEE, crc32fast) of bytes `30..end`             |
//! |     30 |    2 | `attributes`      | bits 0-2: compression codec (0 = none; others refused)  |
//! |     32 |    4 | `record_count`    | u32, at least 1                                         |
//! |     36 |    8 | `first_timestamp` | i64 ms since the Unix epoch, of the first record        |
//! |     44 |    8 | `max_timestamp`   | i64 ms, the largest record timestamp in the batch       |
//! |     52 |    8 | `producer_id`     | i64, -1 when the producer is not idempotent             |
//! |     60 |    2 | `producer_epoch`  | i16, -1 when not idempotent                             |
//! |     62 |    4 | `base_sequence`   | i32, sequence of the first record, -1 when not idempotent |
//! |     66 |    … | records           | `record_count` records, back to back                    |
//!
//! ## Record layout (version 1; version 2's are Kafka's, see [`v2`])
//!
//! Varints are LEB128; "signed" varints are zigzag-encoded first.
//!
//! | field             | encoding                                                         |
//! |-------------------|------------------------------------------------------------------|
//! | `length`          | varint: bytes of the record after this field                     |
//! | `attributes`      | u8, must be 0                                                    |
//! | `timestamp_delta` | signed varint: record timestamp - `first_timestamp` (0 for the first record; may be negative) |
//! | `offset_delta`    | varint: record offset - `base_offset`; equals the record's index |
//! | `key_length`      | signed varint, -1 for no key                                     |
//! | `key`             | bytes                                                            |
//! | `value_length`    | signed varint, -1 for no value (a tombstone)                     |
//! | `value`           | bytes                                                            |
//! | `header_count`    | varint                                                           |
//! | headers           | per header: varint key length, UTF-8 key, signed varint value length (-1: none), value |
//!
//! # Validation
//!
//! [`check`] verifies a stored batch's header, stamp CRC and CRC without looking at records:
//! it is what recovery and readers use. [`check_for_append`] verifies a batch as a producer
//! sent it (stamped fields not yet written) and walks every record, so nothing malformed is
//! ever stored; that walk allocates nothing. The record iterator never panics on any input: a
//! malformed record is an `Err` item, after which iteration stops.

use thiserror::Error;

use crate::limits::{BATCH_BYTES_MAX, BATCH_RECORDS_MAX, RECORD_HEADERS_MAX};
use crate::{Offset, TimestampMs};

mod builder;
pub mod compression;
pub mod v2;
pub use builder::{BatchBuilder, BatchBuilderV1};
pub use compression::Codec;
pub use v2::Records;

/// First byte after the length: identifies a Spool batch.
pub const BATCH_MAGIC: u8 = 0xB5;
/// The first format version: Spool's own batch (this module's tables). Read, never written.
pub const BATCH_VERSION: u8 = 1;
/// The format version new appends write: a Kafka RecordBatch in Spool's frame ([`v2`]).
pub const BATCH_VERSION_2: u8 = v2::VERSION;
/// Bytes before the first record (format version 1).
pub const BATCH_HEADER_BYTES: usize = field::RECORDS;
/// The largest batch as stored: the largest a producer may send, in version 2's frame.
pub const STORED_BATCH_BYTES_MAX: u32 = BATCH_BYTES_MAX + v2::frame::BYTES as u32;
/// Bytes of `base_offset` + `length`: the prefix needed to find the end of a batch.
pub const BATCH_PREFIX_BYTES: usize = field::MAGIC;
/// Where the CRC-covered region starts.
const CRC_START: usize = field::ATTRIBUTES;

/// Where each header field starts (see the layout table above).
pub mod field {
    pub const BASE_OFFSET: usize = 0;
    pub const LENGTH: usize = 8;
    pub const MAGIC: usize = 12;
    pub const VERSION: usize = 13;
    pub const DURABLE_OFFSET: usize = 14;
    pub const STAMP_CRC: usize = 22;
    pub const CRC: usize = 26;
    pub const ATTRIBUTES: usize = 30;
    pub const RECORD_COUNT: usize = 32;
    pub const FIRST_TIMESTAMP: usize = 36;
    pub const MAX_TIMESTAMP: usize = 44;
    pub const PRODUCER_ID: usize = 52;
    pub const PRODUCER_EPOCH: usize = 60;
    pub const BASE_SEQUENCE: usize = 62;
    pub const RECORDS: usize = 66;
}
/// Mask of the compression codec within `attributes`.
const ATTRIBUTES_CODEC_MASK: u16 = 0b111;

/// Producer identity carried by a batch, for idempotent producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerStamp {
    /// The stamp of a batch from a producer that is not idempotent.
    pub const NONE: ProducerStamp =
        ProducerStamp { producer_id: -1, producer_epoch: -1, base_sequence: -1 };
}

/// The fixed-size header of a batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    /// The log's durable end when the batch was appended (0 before it is stored).
    pub durable_offset: Offset,
    /// The whole batch's size in bytes, header included.
    pub batch_bytes: u32,
    pub crc: u32,
    pub attributes: u16,
    pub record_count: u32,
    pub first_timestamp: TimestampMs,
    pub max_timestamp: TimestampMs,
    pub producer: ProducerStamp,
    /// The format version: 1 (Spool's own batch) or 2 (a Kafka batch in Spool's frame).
    pub version: u8,
    /// Where the batch stands in a replicated log (all zero, records, elsewhere).
    pub entry: EntryStamp,
}

/// What a version 2 frame records for a replicated log: the batch's term and index in the
/// replicated log, its kind, and whether more batches of the same entry follow it. A log that
/// is not replicated writes zeros and [`BatchKind::Records`]; version 1 batches read as that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct EntryStamp {
    pub term: u64,
    pub index: u64,
    pub kind: BatchKind,
    /// The entry goes on in the next batch (the frame's `flags` bit 0): an entry is one
    /// batch, or several stored back to back with the same term and index, every one but the
    /// last with `more` set.
    pub more: bool,
}

/// A stored batch's kind (the frame's `kind` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum BatchKind {
    /// A producer's records.
    #[default]
    Records,
    /// One control record written by the log's owner, never by a producer (a leader's first
    /// entry, a membership change): a Kafka control batch, which consumers skip.
    Control,
}

impl BatchKind {
    /// The frame's byte for this kind.
    pub fn id(self) -> u8 {
        match self {
            BatchKind::Records => 0,
            BatchKind::Control => 1,
        }
    }

    pub fn from_id(id: u8) -> Option<BatchKind> {
        match id {
            0 => Some(BatchKind::Records),
            1 => Some(BatchKind::Control),
            _ => None,
        }
    }
}

impl BatchHeader {
    /// The compression codec of the batch's records.
    pub fn codec(&self) -> Result<Codec, BatchError> {
        let id = self.attributes & ATTRIBUTES_CODEC_MASK;
        Codec::from_id(id as u8).map_err(|_| BatchError::UnsupportedCodec { codec: id })
    }

    /// The offset of the last record in the batch.
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + u64::from(self.record_count) - 1)
    }

    /// The offset right after the batch.
    pub fn next_offset(&self) -> Offset {
        Offset(self.base_offset.0 + u64::from(self.record_count))
    }
}

/// `part` of a record read from batches in `bytes`, as `Bytes`: a shared slice of `bytes` when
/// it lies within them, a copy when it does not (a record of a compressed batch lies in the
/// decompressed records).
pub fn share_or_copy(bytes: &bytes::Bytes, part: &[u8]) -> bytes::Bytes {
    let within = bytes.as_ptr_range();
    if within.start <= part.as_ptr() && part.as_ptr_range().end <= within.end {
        bytes.slice_ref(part)
    } else {
        bytes::Bytes::copy_from_slice(part)
    }
}

/// Why some bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("batch is truncated: {bytes} bytes, at least {needed} needed")]
    Truncated { bytes: usize, needed: usize },
    #[error("batch length field says {length} bytes, outside its format's bounds (at most {max})", max = BATCH_BYTES_MAX)]
    BadLength { length: u32 },
    #[error("batch has magic byte {found:#04x}, expected {BATCH_MAGIC:#04x}: not a Spool batch")]
    BadMagic { found: u8 },
    #[error("batch format version {found} is not supported (this build reads versions 1 and 2)")]
    UnsupportedVersion { found: u8 },
    #[error(
        "batch stamp CRC mismatch (base or durable offset damaged): stored {stored:#010x}, computed {computed:#010x}"
    )]
    StampCrcMismatch { stored: u32, computed: u32 },
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch has {bytes} bytes but its length field accounts for {expected}")]
    TrailingBytes { bytes: usize, expected: usize },
    #[error("batch uses compression codec {codec}, which this build does not support")]
    UnsupportedCodec { codec: u16 },
    #[error("batch declares {count} records, outside 1..={max}", max = BATCH_RECORDS_MAX)]
    BadRecordCount { count: u32 },
    #[error(
        "batch's max timestamp {max} is before its first timestamp {first}, or is not its records' largest"
    )]
    BadTimestamps { first: i64, max: i64 },
    #[error("record {index} is malformed: {reason}")]
    BadRecord { index: u32, reason: &'static str },
    #[error("batch declares {declared} records but holds {found}")]
    RecordCountMismatch { declared: u32, found: u32 },
    #[error(
        "Kafka batch has magic byte {found}, expected 2 (RecordBatch v2; older message sets are not supported)"
    )]
    BadKafkaMagic { found: u8 },
    #[error(
        "the batch's frame does not match the Kafka batch inside it (length, base offset or control kind)"
    )]
    FrameMismatch,
    #[error("the batch's frame has kind {found}, expected 0 (records) or 1 (control)")]
    UnknownKind { found: u8 },
    #[error("unknown flags {found:#04x} in a batch's frame")]
    UnknownFlags { found: u8 },
    #[error("batch is not supported: {what}")]
    Unsupported { what: &'static str },
    #[error("batch's records do not decompress: {0}")]
    Compression(String),
    #[error(
        "batch is {bytes} bytes once its records are re-encoded as {codec} (the topic's compression), more than the limit of {max}",
        max = BATCH_BYTES_MAX
    )]
    ReencodedTooLarge { codec: Codec, bytes: usize },
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads `base_offset` and the whole batch size from the first [`BATCH_PREFIX_BYTES`] bytes,
/// without verifying anything else. Used to walk a segment quickly.
pub fn peek_prefix(bytes: &[u8]) -> Result<(Offset, u32), BatchError> {
    if bytes.len() < BATCH_PREFIX_BYTES {
        return Err(BatchError::Truncated { bytes: bytes.len(), needed: BATCH_PREFIX_BYTES });
    }
    let length = u32_at(bytes, field::LENGTH);
    let minimum = (BATCH_HEADER_BYTES - BATCH_PREFIX_BYTES) as u32;
    if length < minimum || length > STORED_BATCH_BYTES_MAX - BATCH_PREFIX_BYTES as u32 {
        return Err(BatchError::BadLength { length });
    }
    Ok((Offset(u64_at(bytes, field::BASE_OFFSET)), length + BATCH_PREFIX_BYTES as u32))
}

/// Verifies what the first [`STAMPED_HEAD_BYTES`] of a stored batch can show without the rest:
/// its length is within bounds, its magic byte and version are Spool's, and its stamp CRC
/// matches, so its base offset can be trusted. Returns the base offset and the whole batch
/// size. Cheap enough for a walk over batch heads; the batch CRC needs [`check`].
pub fn check_head(bytes: &[u8]) -> Result<(Offset, u32), BatchError> {
    let (base_offset, batch_bytes) = peek_prefix(bytes)?;
    let version = check_magic_and_version(bytes)?;
    let needed = if version == BATCH_VERSION { STAMPED_HEAD_BYTES_V1 } else { STAMPED_HEAD_BYTES };
    if bytes.len() < needed {
        return Err(BatchError::Truncated { bytes: bytes.len(), needed });
    }
    if version == BATCH_VERSION {
        check_stamp(bytes)?;
    } else {
        v2::check_head(bytes)?;
    }
    Ok((base_offset, batch_bytes))
}

/// What a walk over a segment needs of a batch, read from its head alone and checked as far
/// as the head allows ([`check_head`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadFields {
    pub(crate) base_offset: Offset,
    pub(crate) batch_bytes: u32,
    pub(crate) record_count: u32,
    pub(crate) max_timestamp: TimestampMs,
}

/// The most bytes [`head_fields`] needs: a version 2 batch's frame and Kafka header.
pub(crate) const HEAD_FIELDS_BYTES_MAX: usize = v2::frame::BYTES + v2::kafka::RECORDS;

/// Reads a stored batch's [`HeadFields`] from its first bytes (at most
/// [`HEAD_FIELDS_BYTES_MAX`]; `Truncated` when `bytes` hold fewer than its version needs).
pub(crate) fn head_fields(bytes: &[u8]) -> Result<HeadFields, BatchError> {
    let (base_offset, batch_bytes) = check_head(bytes)?;
    let (record_count, max_timestamp) = if bytes[field::VERSION] == BATCH_VERSION {
        let needed = field::MAX_TIMESTAMP + 8;
        if bytes.len() < needed {
            return Err(BatchError::Truncated { bytes: bytes.len(), needed });
        }
        (u32_at(bytes, field::RECORD_COUNT), u64_at(bytes, field::MAX_TIMESTAMP) as i64)
    } else {
        let kafka = v2::frame::BYTES;
        if bytes.len() < HEAD_FIELDS_BYTES_MAX {
            return Err(BatchError::Truncated {
                bytes: bytes.len(),
                needed: HEAD_FIELDS_BYTES_MAX,
            });
        }
        let count = &bytes[kafka + v2::kafka::RECORDS_COUNT..][..4];
        let max = &bytes[kafka + v2::kafka::MAX_TIMESTAMP..][..8];
        (
            u32::from_be_bytes(count.try_into().expect("4 bytes")),
            i64::from_be_bytes(max.try_into().expect("8 bytes")),
        )
    };
    Ok(HeadFields {
        base_offset,
        batch_bytes,
        record_count,
        max_timestamp: TimestampMs(max_timestamp),
    })
}

/// The stored batch's format version, once its magic byte is Spool's.
fn check_magic_and_version(bytes: &[u8]) -> Result<u8, BatchError> {
    if bytes.len() <= field::VERSION {
        return Err(BatchError::Truncated { bytes: bytes.len(), needed: field::VERSION + 1 });
    }
    if bytes[field::MAGIC] != BATCH_MAGIC {
        return Err(BatchError::BadMagic { found: bytes[field::MAGIC] });
    }
    match bytes[field::VERSION] {
        version @ (BATCH_VERSION | BATCH_VERSION_2) => Ok(version),
        found => Err(BatchError::UnsupportedVersion { found }),
    }
}

fn check_stamp(bytes: &[u8]) -> Result<(), BatchError> {
    let stored = u32_at(bytes, field::STAMP_CRC);
    let computed = stamp_crc(bytes);
    if stored != computed {
        return Err(BatchError::StampCrcMismatch { stored, computed });
    }
    Ok(())
}

/// Verifies the header and CRC of the batch that starts at `bytes[0]`, and returns its header.
///
/// `bytes` may extend past the batch (a read buffer holding several); the batch's extent is
/// `header.batch_bytes`. Records are not examined: see [`check_for_append`].
pub fn check(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    check_stored(bytes, v2::Crc::Verify)
}

/// [`check`], leaving a version 2 batch's Kafka CRC uncomputed when `crc` trusts it (a
/// version 1 batch is always checked whole).
fn check_stored(bytes: &[u8], crc: v2::Crc) -> Result<BatchHeader, BatchError> {
    peek_prefix(bytes)?;
    match check_magic_and_version(bytes)? {
        BATCH_VERSION => check_with(bytes, Stamp::Verify),
        _ => v2::check_stored_with(bytes, crc),
    }
}

/// Whether the fields stamped at append are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// A stored batch: the stamp CRC must match.
    Verify,
    /// A batch from a producer: the stamped fields are about to be written.
    Ignore,
}

fn stamp_crc(bytes: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[field::BASE_OFFSET..field::BASE_OFFSET + 8]);
    hasher.update(&bytes[field::DURABLE_OFFSET..field::DURABLE_OFFSET + 8]);
    hasher.finalize()
}

fn check_with(bytes: &[u8], stamp: Stamp) -> Result<BatchHeader, BatchError> {
    let (base_offset, batch_bytes) = peek_prefix(bytes)?;
    if bytes.len() < batch_bytes as usize {
        return Err(BatchError::Truncated { bytes: bytes.len(), needed: batch_bytes as usize });
    }
    let bytes = &bytes[..batch_bytes as usize];
    if check_magic_and_version(bytes)? != BATCH_VERSION {
        return Err(BatchError::UnsupportedVersion { found: bytes[field::VERSION] });
    }
    if stamp == Stamp::Verify {
        check_stamp(bytes)?;
    }
    let stored = u32_at(bytes, field::CRC);
    let computed = crc32fast::hash(&bytes[CRC_START..]);
    if stored != computed {
        return Err(BatchError::CrcMismatch { stored, computed });
    }
    let attributes = u16_at(bytes, field::ATTRIBUTES);
    let codec = attributes & ATTRIBUTES_CODEC_MASK;
    if codec != 0 {
        return Err(BatchError::UnsupportedCodec { codec });
    }
    let record_count = u32_at(bytes, field::RECORD_COUNT);
    if record_count == 0 || record_count > BATCH_RECORDS_MAX {
        return Err(BatchError::BadRecordCount { count: record_count });
    }
    let first = u64_at(bytes, field::FIRST_TIMESTAMP) as i64;
    let max = u64_at(bytes, field::MAX_TIMESTAMP) as i64;
    if max < first {
        return Err(BatchError::BadTimestamps { first, max });
    }
    Ok(BatchHeader {
        base_offset,
        durable_offset: Offset(u64_at(bytes, field::DURABLE_OFFSET)),
        batch_bytes,
        crc: stored,
        attributes,
        record_count,
        first_timestamp: TimestampMs(first),
        max_timestamp: TimestampMs(max),
        producer: ProducerStamp {
            producer_id: u64_at(bytes, field::PRODUCER_ID) as i64,
            producer_epoch: u16_at(bytes, field::PRODUCER_EPOCH) as i16,
            base_sequence: u32_at(bytes, field::BASE_SEQUENCE) as i32,
        },
        version: BATCH_VERSION,
        entry: EntryStamp::default(),
    })
}

/// Checks a batch as a producer sent it, and walks every record: it must be exactly one
/// batch, with well-formed records whose count, offset deltas and timestamps agree with its
/// header. A producer sends a Kafka RecordBatch v2 (what [`BatchBuilder`] writes; see [`v2`])
/// or, from an older client, a version 1 batch (stamped fields zero).
pub fn check_for_append(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if v2::looks_like_kafka(bytes) {
        return v2::check_wire(bytes);
    }
    let kafka_magic = bytes.get(v2::kafka::MAGIC).copied();
    if bytes.get(field::MAGIC) != Some(&BATCH_MAGIC) && kafka_magic.is_some_and(|m| m < 2) {
        // An older Kafka message set (magic 0 or 1).
        return Err(BatchError::BadKafkaMagic { found: kafka_magic.unwrap_or_default() });
    }
    let header = check_with(bytes, Stamp::Ignore)?;
    if bytes.len() != header.batch_bytes as usize {
        return Err(BatchError::TrailingBytes {
            bytes: bytes.len(),
            expected: header.batch_bytes as usize,
        });
    }
    let records = Records::borrowed(&bytes[BATCH_HEADER_BYTES..], header);
    check_records(&header, records.iter())?;
    Ok(header)
}

/// Checks a stored batch of either version as [`check`] does, then walks its records
/// (decompressed if need be) as [`check_for_append`] does: what tools that inspect a log use.
pub fn check_stored_records(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let view = BatchView::new(bytes)?;
    check_records(view.header(), view.records().iter())?;
    Ok(*view.header())
}

/// Walks `records`, which must agree with `header`: offset deltas 0, 1, 2, ..., the first
/// record at the batch's first timestamp, the largest timestamp the batch's max, as many as
/// it declares, UTF-8 header keys.
pub(crate) fn check_records(
    header: &BatchHeader,
    records: RecordIter<'_>,
) -> Result<(), BatchError> {
    let mut found = 0u32;
    let mut max_timestamp = i64::MIN;
    for record in records {
        let record = record?;
        let index = found;
        if record.offset_delta != index {
            return Err(BatchError::BadRecord { index, reason: "offset delta out of sequence" });
        }
        if index == 0 && record.timestamp != header.first_timestamp {
            return Err(BatchError::BadRecord {
                index,
                reason: "the first record's timestamp differs from the batch's first timestamp",
            });
        }
        max_timestamp = max_timestamp.max(record.timestamp.0);
        for h in record.headers() {
            let h = h?;
            if std::str::from_utf8(h.key).is_err() {
                return Err(BatchError::BadRecord { index, reason: "header key is not UTF-8" });
            }
        }
        found += 1;
    }
    if found != header.record_count {
        return Err(BatchError::RecordCountMismatch { declared: header.record_count, found });
    }
    if max_timestamp != header.max_timestamp.0 {
        return Err(BatchError::BadTimestamps {
            first: header.first_timestamp.0,
            max: header.max_timestamp.0,
        });
    }
    Ok(())
}

/// A batch that passed [`check_for_append`], with its decoded header: what
/// [`Log::append_many`](crate::Log::append_many) takes. A server checks a batch once, where it
/// arrives (on the request's task, in parallel with other requests), and the log, which
/// appends one group at a time, trusts the check. `B` holds the bytes: the request's own
/// buffer (`Bytes`), or a borrowed `&[u8]` ([`CheckedBatch::borrowed`]).
///
/// Whatever a producer sent, a checked batch is a Kafka RecordBatch v2, the form the log
/// stores: a version 1 batch from an older client is re-encoded once, here.
#[derive(Debug, Clone)]
pub struct CheckedBatch<B> {
    bytes: B,
    /// The re-encoded form of a version 1 batch.
    converted: Option<bytes::Bytes>,
    header: BatchHeader,
}

impl CheckedBatch<bytes::Bytes> {
    /// A control batch (see [`BatchKind::Control`]): one Kafka control record whose key is
    /// Kafka's control key (version 0, then `control_type`, both big-endian i16) and whose
    /// value is `payload`, at `timestamp`. Only a log's owner writes these; a producer's
    /// control batch is refused ([`check_for_append`]).
    pub fn control(
        control_type: u16,
        payload: &[u8],
        timestamp: TimestampMs,
    ) -> CheckedBatch<bytes::Bytes> {
        let bytes = v2::control_batch(control_type, payload, timestamp);
        let (mut header, total) = v2::kafka_header(&bytes).expect("a control batch just encoded");
        header.batch_bytes = (v2::frame::BYTES + total) as u32;
        header.entry.kind = BatchKind::Control;
        CheckedBatch { bytes, converted: None, header }
    }

    /// The Kafka batch to store ([`CheckedBatch::bytes`]), as the buffer it lives in: the
    /// request's own, or the re-encoded one.
    pub fn into_bytes(self) -> bytes::Bytes {
        self.converted.unwrap_or(self.bytes)
    }
}

impl<B: AsRef<[u8]>> CheckedBatch<B> {
    /// Checks `bytes` as [`check_for_append`] does.
    pub fn check(bytes: B) -> Result<Self, BatchError> {
        let header = check_for_append(bytes.as_ref())?;
        if header.version == BATCH_VERSION_2 {
            return Ok(CheckedBatch { bytes, converted: None, header });
        }
        let view = BatchView { header, bytes: bytes.as_ref() };
        let mut builder = BatchBuilder::new(bytes::BytesMut::new());
        for record in view.records().iter() {
            let record = record?;
            let headers: Vec<Header<'_>> = record.headers().collect::<Result<_, _>>()?;
            builder.push(record.timestamp, record.key, record.value, &headers);
        }
        let converted = builder.finish(header.producer).freeze();
        let header = v2::check_wire(&converted)?;
        Ok(CheckedBatch { bytes, converted: Some(converted), header })
    }

    /// A Kafka batch that passed [`check_for_append`] before (a replicated log's entry,
    /// checked where it arrived): its header is read and checked again, its CRC and records
    /// are not. Anything but a Kafka batch is checked as [`CheckedBatch::check`] does.
    pub fn checked_before(bytes: B) -> Result<Self, BatchError> {
        if !v2::looks_like_kafka(bytes.as_ref()) {
            return CheckedBatch::check(bytes);
        }
        let (mut header, total) = v2::kafka_header_with(bytes.as_ref(), v2::Crc::Trust)?;
        if total != bytes.as_ref().len() {
            let error = BatchError::TrailingBytes { bytes: bytes.as_ref().len(), expected: total };
            return Err(error);
        }
        debug_assert_eq!(
            check_for_append(bytes.as_ref()).map(|h| h.record_count),
            Ok(header.record_count)
        );
        header.batch_bytes = (v2::frame::BYTES + total) as u32;
        Ok(CheckedBatch { bytes, converted: None, header })
    }

    /// The same batch, to be stored as entry `index` of term `term` of a replicated log.
    pub fn with_entry(mut self, term: u64, index: u64) -> Self {
        self.header.entry.term = term;
        self.header.entry.index = index;
        self
    }

    /// The same batch, stored as one of its entry's batches that another follows (see
    /// [`EntryStamp::more`]).
    pub fn with_more(mut self) -> Self {
        self.header.entry.more = true;
        self
    }

    /// The Kafka batch to store.
    pub fn bytes(&self) -> &[u8] {
        self.converted.as_deref().unwrap_or(self.bytes.as_ref())
    }

    /// The batch with its records in `codec`: itself if they already are, else with its
    /// records section decompressed and compressed again, once, here (the producer stamp,
    /// timestamps and records are kept). For a topic that requires one codec.
    pub fn with_codec(self, codec: Codec) -> Result<Self, BatchError> {
        if self.header.codec()? == codec {
            return Ok(self);
        }
        let (converted, header) = v2::recompress(self.bytes(), &self.header, codec)?;
        Ok(CheckedBatch { bytes: self.bytes, converted: Some(converted), header })
    }

    /// The header as the producer sent it (base and durable offset not stamped yet), with
    /// `batch_bytes` the size the batch has once stored.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The same checked batch, borrowing the bytes.
    pub fn borrowed(&self) -> CheckedBatch<&[u8]> {
        CheckedBatch {
            bytes: self.bytes.as_ref(),
            converted: self.converted.clone(),
            header: self.header,
        }
    }

    /// The head the log writes for this batch with `base_offset` and `durable_offset`
    /// stamped (see [`STAMPED_HEAD_BYTES`]); the rest of the stored batch is
    /// `self.bytes()[STAMPED_TAIL_FROM..]`.
    pub fn stamped_head(
        &self,
        base_offset: Offset,
        durable_offset: Offset,
    ) -> [u8; STAMPED_HEAD_BYTES] {
        v2::stamped_head(self.bytes(), base_offset, durable_offset, self.header.entry)
    }

    /// The batch as the log stores it with `base_offset` and `durable_offset` stamped.
    pub fn stored(&self, base_offset: Offset, durable_offset: Offset) -> bytes::BytesMut {
        let mut stored = bytes::BytesMut::with_capacity(self.header.batch_bytes as usize);
        stored.extend_from_slice(&self.stamped_head(base_offset, durable_offset));
        stored.extend_from_slice(&self.bytes()[STAMPED_TAIL_FROM..]);
        stored
    }
}

/// The head the log writes for each batch: version 2's frame and the Kafka batch up to its
/// CRC, with every field stamped at append. The rest of a batch is stored as the producer
/// sent it, from [`STAMPED_TAIL_FROM`] of its bytes on.
pub const STAMPED_HEAD_BYTES: usize = v2::STAMPED_HEAD_BYTES;
/// Where, in the Kafka batch a producer sent, the bytes stored as sent begin.
pub const STAMPED_TAIL_FROM: usize = v2::kafka::CRC;
/// Version 1's stamped head: from the start of a batch up to its `crc`.
pub const STAMPED_HEAD_BYTES_V1: usize = field::CRC;

/// The first [`STAMPED_HEAD_BYTES_V1`] of a version 1 batch with the fields stamped at append
/// written into them. Version 1 is no longer appended; tests and tools write it to check that
/// old logs stay readable.
pub fn stamped_head(
    bytes: &[u8],
    base_offset: Offset,
    durable_offset: Offset,
) -> [u8; STAMPED_HEAD_BYTES_V1] {
    let mut head = [0u8; STAMPED_HEAD_BYTES_V1];
    head.copy_from_slice(&bytes[..STAMPED_HEAD_BYTES_V1]);
    head[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&base_offset.0.to_le_bytes());
    head[field::DURABLE_OFFSET..field::DURABLE_OFFSET + 8]
        .copy_from_slice(&durable_offset.0.to_le_bytes());
    let crc = stamp_crc(&head);
    head[field::STAMP_CRC..field::STAMP_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    head
}

/// Writes the fields stamped at append into a version 1 batch, in place (see
/// [`stamped_head`]).
pub fn stamp(bytes: &mut [u8], base_offset: Offset, durable_offset: Offset) {
    let head = stamped_head(bytes, base_offset, durable_offset);
    bytes[..STAMPED_HEAD_BYTES_V1].copy_from_slice(&head);
}

/// A checked batch: its header and its bytes. Building one requires [`check`] to have passed.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Checks the batch at the start of `bytes` and returns a view of exactly that batch: a
    /// stored batch of either version, or a Kafka batch as a producer sends it.
    pub fn new(bytes: &'a [u8]) -> Result<Self, BatchError> {
        if v2::looks_like_kafka(bytes) {
            let (header, total) = v2::kafka_header(bytes)?;
            return Ok(BatchView { header, bytes: &bytes[..total] });
        }
        let header = check(bytes)?;
        Ok(BatchView { header, bytes: &bytes[..header.batch_bytes as usize] })
    }

    /// [`BatchView::new`] for a stored batch a log read checked whole: everything is
    /// checked but the Kafka CRC over its records, which the read computed.
    fn read_before(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let header = check_stored(bytes, v2::Crc::Trust)?;
        Ok(BatchView { header, bytes: &bytes[..header.batch_bytes as usize] })
    }

    /// The view that [`BatchView::new`] returned for the batch at the start of `bytes`, from
    /// its `header` kept since: nothing is checked again. A header from another batch gives
    /// wrong records or record errors, never unsafety (every read stays in bounds).
    pub fn checked_before(bytes: &'a [u8], header: BatchHeader) -> BatchView<'a> {
        let len = (header.batch_bytes as usize).min(bytes.len());
        BatchView { header, bytes: &bytes[..len] }
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes, exactly as stored.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The records: borrowed from the batch, or decompressed from it (within
    /// [`DECOMPRESSED_BYTES_MAX`](crate::limits::DECOMPRESSED_BYTES_MAX)). Iterate with
    /// [`Records::iter`]; a batch whose records do not decompress yields that error.
    pub fn records(&self) -> Records<'a> {
        if self.header.version == BATCH_VERSION {
            return Records::borrowed(&self.bytes[BATCH_HEADER_BYTES..], self.header);
        }
        v2::records(self.kafka_bytes(), &self.header)
    }

    /// The Kafka batch inside a version 2 batch (the whole batch if it is a bare one). A bare
    /// batch is told from a stored one as [`BatchView::new`] tells them: a bare batch's
    /// `partitionLeaderEpoch` may begin with Spool's magic byte.
    pub fn kafka_bytes(&self) -> &'a [u8] {
        if self.bytes.len() > v2::frame::BYTES && !v2::looks_like_kafka(self.bytes) {
            &self.bytes[v2::frame::BYTES..]
        } else {
            self.bytes
        }
    }
}

/// Iterates over the batches in a buffer that holds whole batches back to back (a read
/// result), checking each. Stops after the first error.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
    failed: bool,
    /// The bytes are a log read's ([`BatchIter::read_before`]).
    read: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BatchIter { rest: bytes, failed: false, read: false }
    }

    /// Iterates over the bytes of a log read ([`ReadBatches::bytes`](crate::ReadBatches)),
    /// which the read checked batch by batch, CRCs included: each batch's header is read
    /// and checked again, but the CRC over its records is not computed twice. Given other
    /// bytes, a damaged record reads as a record error or a wrong value, never out of
    /// bounds.
    pub fn read_before(bytes: &'a [u8]) -> Self {
        BatchIter { rest: bytes, failed: false, read: true }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<BatchView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let view =
            if self.read { BatchView::read_before(self.rest) } else { BatchView::new(self.rest) };
        match view {
            Ok(view) => {
                self.rest = &self.rest[view.bytes.len()..];
                Some(Ok(view))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// One decoded record; every slice borrows from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: Offset,
    pub offset_delta: u32,
    pub timestamp: TimestampMs,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    header_count: u32,
    headers: &'a [u8],
    varints: Varints,
}

impl<'a> Record<'a> {
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter {
            rest: self.headers,
            remaining: self.header_count,
            failed: false,
            varints: self.varints,
        }
    }
}

/// One record header, as read from a batch and as given to [`BatchBuilder::push`]; the key
/// is UTF-8 in any stored batch ([`check_for_append`] verifies it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

impl<'a> Header<'a> {
    /// A header named `key` (a name is UTF-8), with an optional value.
    pub fn new(key: &'a str, value: Option<&'a [u8]>) -> Header<'a> {
        Header { key: key.as_bytes(), value }
    }
}

/// How a format writes the record fields that are never negative (lengths, offset deltas,
/// counts): version 1 as LEB128 varints, Kafka as zigzag varints like every other field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Varints {
    Spool,
    Kafka,
}

/// Decodes records without allocating. Yields an `Err` and stops at the first malformed record.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    base_offset: Offset,
    first_timestamp: TimestampMs,
    remaining: u32,
    index: u32,
    failed: bool,
    varints: Varints,
    /// An error to yield first (records that did not decompress).
    error: Option<BatchError>,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.error.take() {
            self.failed = true;
            return Some(Err(error));
        }
        if self.failed {
            return None;
        }
        if self.remaining == 0 {
            if self.rest.is_empty() {
                return None;
            }
            self.failed = true;
            return Some(Err(BatchError::BadRecord {
                index: self.index,
                reason: "bytes left after the last record",
            }));
        }
        match self.decode_one() {
            Ok(record) => {
                self.remaining -= 1;
                self.index += 1;
                Some(Ok(record))
            }
            Err(reason) => {
                self.failed = true;
                Some(Err(BatchError::BadRecord { index: self.index, reason }))
            }
        }
    }
}

impl<'a> RecordIter<'a> {
    pub(crate) fn new(section: &'a [u8], header: &BatchHeader, varints: Varints) -> RecordIter<'a> {
        RecordIter {
            rest: section,
            base_offset: header.base_offset,
            first_timestamp: header.first_timestamp,
            remaining: header.record_count,
            index: 0,
            failed: false,
            varints,
            error: None,
        }
    }

    pub(crate) fn failed(error: BatchError) -> RecordIter<'a> {
        RecordIter {
            rest: &[],
            base_offset: Offset(0),
            first_timestamp: TimestampMs(0),
            remaining: 0,
            index: 0,
            failed: false,
            varints: Varints::Kafka,
            error: Some(error),
        }
    }

    fn decode_one(&mut self) -> Result<Record<'a>, &'static str> {
        let varints = self.varints;
        let mut reader = Reader(self.rest);
        let length = reader.count(varints).ok_or("bad record length")?;
        let length = usize::try_from(length).map_err(|_| "record length too large")?;
        if length > reader.0.len() {
            return Err("record length runs past the batch");
        }
        let (body, after) = reader.0.split_at(length);
        let mut r = Reader(body);
        let attributes = r.byte().ok_or("missing record attributes")?;
        if attributes != 0 {
            return Err("unknown record attributes");
        }
        let timestamp_delta = r.signed_varint().ok_or("bad timestamp delta")?;
        let offset_delta = r.count(varints).ok_or("bad offset delta")?;
        let offset_delta = u32::try_from(offset_delta).map_err(|_| "offset delta too large")?;
        let key = r.nullable_bytes().ok_or("bad key")?;
        let value = r.nullable_bytes().ok_or("bad value")?;
        let header_count = r.count(varints).ok_or("bad header count")?;
        let header_count = u32::try_from(header_count).map_err(|_| "too many headers")?;
        if header_count > RECORD_HEADERS_MAX {
            return Err("too many headers");
        }
        let headers = r.0;
        // Walk the headers once so that a record that decodes is wholly well-formed.
        let mut walk =
            HeaderIter { rest: headers, remaining: header_count, failed: false, varints };
        for h in walk.by_ref() {
            h.map_err(|_| "bad header")?;
        }
        if !walk.rest.is_empty() {
            return Err("bytes left after the record's headers");
        }
        let timestamp = self
            .first_timestamp
            .0
            .checked_add(timestamp_delta)
            .ok_or("timestamp delta overflows")?;
        self.rest = after;
        Ok(Record {
            offset: Offset(self.base_offset.0.wrapping_add(u64::from(offset_delta))),
            offset_delta,
            timestamp: TimestampMs(timestamp),
            key,
            value,
            header_count,
            headers,
            varints,
        })
    }
}

/// Iterates over a record's headers without allocating.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
    remaining: u32,
    failed: bool,
    varints: Varints,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<Header<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        let mut r = Reader(self.rest);
        let parsed = (|| {
            let key_length = usize::try_from(r.count(self.varints)?).ok()?;
            let key = r.take(key_length)?;
            let value = r.nullable_bytes()?;
            Some(Header { key, value })
        })();
        match parsed {
            Some(header) => {
                self.rest = r.0;
                self.remaining -= 1;
                Some(Ok(header))
            }
            None => {
                self.failed = true;
                Some(Err(BatchError::BadRecord { index: 0, reason: "bad header" }))
            }
        }
    }
}

/// A cursor over bytes whose every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            // The tenth byte may only carry the top bit of a u64.
            if shift == 63 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// A field that is never negative, as `varints` writes it.
    fn count(&mut self, varints: Varints) -> Option<u64> {
        match varints {
            Varints::Spool => self.varint(),
            Varints::Kafka => u64::try_from(self.signed_varint()?).ok(),
        }
    }

    fn signed_varint(&mut self) -> Option<i64> {
        let raw = self.varint()?;
        Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn nullable_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        match self.signed_varint()? {
            -1 => Some(None),
            n if n >= 0 => Some(Some(self.take(usize::try_from(n).ok()?)?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
