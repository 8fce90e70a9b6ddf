//! The record batch: the unit that producers send, the log stores and consumers receive.
//!
//! A batch is encoded once, by the producer, and never re-encoded: the server verifies it with
//! [`check_for_append`] where the request arrives (a [`CheckedBatch`]); the log stamps
//! `base_offset` and `durable_offset` into a copy of its first [`STAMPED_HEAD_BYTES`]
//! ([`stamped_head`]) and writes that head and then the rest of the batch as it came (the
//! server never copies or changes the bytes it received). A consumer receives those same
//! bytes. The CRC therefore covers everything except
//! the fields stamped at append time and the fields needed to find and verify the batch
//! (`length`, `magic`, `version`, `crc`), as in Kafka's v2 batch. A producer writes zeros in
//! the stamped fields.
//!
//! `durable_offset` is the log's durable end when the batch was appended: everything before it
//! had been fsynced. Recovery uses it to tell a hole left by a power loss in data that was never
//! synced (writes may reach the disk out of order: a torn tail, cut off) from damage to data
//! that was (which fences the log).
//!
//! # Batch layout (format version 1, all integers little-endian)
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
//! # Record layout
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
pub use builder::BatchBuilder;

/// First byte after the length: identifies a Spool batch.
pub const BATCH_MAGIC: u8 = 0xB5;
/// The only format version this build writes and reads.
pub const BATCH_VERSION: u8 = 1;
/// Bytes before the first record.
pub const BATCH_HEADER_BYTES: usize = field::RECORDS;
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
}

impl BatchHeader {
    /// The offset of the last record in the batch.
    pub fn last_offset(&self) -> Offset {
        Offset(self.base_offset.0 + u64::from(self.record_count) - 1)
    }

    /// The offset right after the batch.
    pub fn next_offset(&self) -> Offset {
        Offset(self.base_offset.0 + u64::from(self.record_count))
    }
}

/// Why some bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    #[error("batch is truncated: {bytes} bytes, at least {needed} needed")]
    Truncated { bytes: usize, needed: usize },
    #[error("batch length field says {length} bytes, outside 42..={max}", max = BATCH_BYTES_MAX)]
    BadLength { length: u32 },
    #[error("batch has magic byte {found:#04x}, expected {BATCH_MAGIC:#04x}: not a Spool batch")]
    BadMagic { found: u8 },
    #[error(
        "batch format version {found} is not supported (this build reads version {BATCH_VERSION})"
    )]
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
    if length < minimum || length > BATCH_BYTES_MAX - BATCH_PREFIX_BYTES as u32 {
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
    if bytes.len() < STAMPED_HEAD_BYTES {
        return Err(BatchError::Truncated { bytes: bytes.len(), needed: STAMPED_HEAD_BYTES });
    }
    check_magic_and_version(bytes)?;
    check_stamp(bytes)?;
    Ok((base_offset, batch_bytes))
}

fn check_magic_and_version(bytes: &[u8]) -> Result<(), BatchError> {
    if bytes[field::MAGIC] != BATCH_MAGIC {
        return Err(BatchError::BadMagic { found: bytes[field::MAGIC] });
    }
    if bytes[field::VERSION] != BATCH_VERSION {
        return Err(BatchError::UnsupportedVersion { found: bytes[field::VERSION] });
    }
    Ok(())
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
    check_with(bytes, Stamp::Verify)
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
    check_magic_and_version(bytes)?;
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
    })
}

/// [`check`], then a walk over every record: the batch must be exactly one batch, with
/// well-formed records whose count, offset deltas and timestamps agree with the header.
pub fn check_for_append(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = check_with(bytes, Stamp::Ignore)?;
    if bytes.len() != header.batch_bytes as usize {
        return Err(BatchError::TrailingBytes {
            bytes: bytes.len(),
            expected: header.batch_bytes as usize,
        });
    }
    let view = BatchView { header, bytes };
    let mut found = 0u32;
    let mut max_timestamp = i64::MIN;
    for record in view.records() {
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
    Ok(header)
}

/// A batch that passed [`check_for_append`], with its decoded header: what
/// [`Log::append_many`](crate::Log::append_many) takes. A server checks a batch once, where it
/// arrives (on the request's task, in parallel with other requests), and the log, which
/// appends one group at a time, trusts the check. `B` holds the bytes: the request's own
/// buffer (`Bytes`), or a borrowed `&[u8]` ([`CheckedBatch::borrowed`]).
#[derive(Debug, Clone)]
pub struct CheckedBatch<B> {
    bytes: B,
    header: BatchHeader,
}

impl<B: AsRef<[u8]>> CheckedBatch<B> {
    /// Checks `bytes` as [`check_for_append`] does.
    pub fn check(bytes: B) -> Result<Self, BatchError> {
        let header = check_for_append(bytes.as_ref())?;
        Ok(CheckedBatch { bytes, header })
    }

    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_ref()
    }

    /// The header as the producer sent it (base and durable offset not stamped yet).
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The same checked batch, borrowing the bytes.
    pub fn borrowed(&self) -> CheckedBatch<&[u8]> {
        CheckedBatch { bytes: self.bytes.as_ref(), header: self.header }
    }
}

/// The bytes from the start of a batch up to its `crc`: every field stamped at append lies in
/// them. The rest of a batch is stored as the producer sent it.
pub const STAMPED_HEAD_BYTES: usize = field::CRC;

/// The first [`STAMPED_HEAD_BYTES`] of `bytes` (at least that long) with the fields stamped
/// at append written into them. The CRC does not cover those fields. The log writes this head
/// and then the rest of the batch, so the batch itself is never written to.
pub fn stamped_head(
    bytes: &[u8],
    base_offset: Offset,
    durable_offset: Offset,
) -> [u8; STAMPED_HEAD_BYTES] {
    let mut head = [0u8; STAMPED_HEAD_BYTES];
    head.copy_from_slice(&bytes[..STAMPED_HEAD_BYTES]);
    head[field::BASE_OFFSET..field::BASE_OFFSET + 8].copy_from_slice(&base_offset.0.to_le_bytes());
    head[field::DURABLE_OFFSET..field::DURABLE_OFFSET + 8]
        .copy_from_slice(&durable_offset.0.to_le_bytes());
    let crc = stamp_crc(&head);
    head[field::STAMP_CRC..field::STAMP_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    head
}

/// Writes the fields stamped at append into a batch, in place (see [`stamped_head`]).
pub fn stamp(bytes: &mut [u8], base_offset: Offset, durable_offset: Offset) {
    let head = stamped_head(bytes, base_offset, durable_offset);
    bytes[..STAMPED_HEAD_BYTES].copy_from_slice(&head);
}

/// A checked batch: its header and its bytes. Building one requires [`check`] to have passed.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Checks the batch at the start of `bytes` and returns a view of exactly that batch.
    pub fn new(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let header = check(bytes)?;
        Ok(BatchView { header, bytes: &bytes[..header.batch_bytes as usize] })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch's bytes, exactly as stored.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The records, decoded lazily and without allocation.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            rest: &self.bytes[BATCH_HEADER_BYTES..],
            base_offset: self.header.base_offset,
            first_timestamp: self.header.first_timestamp,
            remaining: self.header.record_count,
            index: 0,
            failed: false,
        }
    }
}

/// Iterates over the batches in a buffer that holds whole batches back to back (a read
/// result), checking each. Stops after the first error.
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BatchIter { rest: bytes, failed: false }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<BatchView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match BatchView::new(self.rest) {
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
}

impl<'a> Record<'a> {
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { rest: self.headers, remaining: self.header_count, failed: false }
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

/// Decodes records without allocating. Yields an `Err` and stops at the first malformed record.
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    rest: &'a [u8],
    base_offset: Offset,
    first_timestamp: TimestampMs,
    remaining: u32,
    index: u32,
    failed: bool,
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
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
    fn decode_one(&mut self) -> Result<Record<'a>, &'static str> {
        let mut reader = Reader(self.rest);
        let length = reader.varint().ok_or("bad record length")?;
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
        let offset_delta = r.varint().ok_or("bad offset delta")?;
        let offset_delta = u32::try_from(offset_delta).map_err(|_| "offset delta too large")?;
        let key = r.nullable_bytes().ok_or("bad key")?;
        let value = r.nullable_bytes().ok_or("bad value")?;
        let header_count = r.varint().ok_or("bad header count")?;
        let header_count = u32::try_from(header_count).map_err(|_| "too many headers")?;
        if header_count > RECORD_HEADERS_MAX {
            return Err("too many headers");
        }
        let headers = r.0;
        // Walk the headers once so that a record that decodes is wholly well-formed.
        let mut walk = HeaderIter { rest: headers, remaining: header_count, failed: false };
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
        })
    }
}

/// Iterates over a record's headers without allocating.
#[derive(Debug, Clone)]
pub struct HeaderIter<'a> {
    rest: &'a [u8],
    remaining: u32,
    failed: bool,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = Result<Header<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        let mut r = Reader(self.rest);
        let parsed = (|| {
            let key_length = usize::try_from(r.varint()?).ok()?;
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
