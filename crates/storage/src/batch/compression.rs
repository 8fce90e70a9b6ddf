//! Kafka's compression codecs: the records section of a Kafka RecordBatch v2, compressed as
//! Kafka's producers send it and decompressed, with bounded memory, for consumers.
//!
//! Spool stores a compressed batch as the producer sent it and never recompresses it; this
//! module is what reads such a batch's records (and what a Spool producer uses to write one).
//! The codec is bits 0-2 of the batch's `attributes`, with Kafka's ids ([`Codec`]).
//!
//! # Formats
//!
//! Each codec reads and writes exactly what Kafka's clients put on the wire:
//!
//! | id | codec    | payload                                                    | written by [`compress`]                        |
//! |---:|----------|------------------------------------------------------------|------------------------------------------------|
//! |  0 | `none`   | the records as they are                                    | a copy                                         |
//! |  1 | `gzip`   | one gzip member (RFC 1952)                                 | deflate level 6, as zlib's and Java's default  |
//! |  2 | `snappy` | raw snappy (librdkafka), or xerial-framed snappy (Java)    | raw snappy, which Java consumers also read     |
//! |  3 | `lz4`    | one LZ4 frame (Kafka's format since KIP-57)                | 64 KiB independent blocks, no checksums, as Java |
//! |  4 | `zstd`   | one zstd frame                                             | level 3 (Kafka's default), content size in the header |
//!
//! Ids 5 to 7 are not assigned: [`CompressionError::UnknownCodec`].
//!
//! Xerial framing (Java's `SnappyOutputStream`), all integers big-endian:
//!
//! | offset | size | field                 | notes                                        |
//! |-------:|-----:|-----------------------|----------------------------------------------|
//! |      0 |    8 | magic                 | `\x82SNAPPY\x00`                             |
//! |      8 |    4 | version               | i32, 1 (not checked: any value is read)      |
//! |     12 |    4 | compatible version    | i32, 1 (not checked)                         |
//! |     16 |    … | blocks                | each an i32 length, then that many bytes of raw snappy |
//!
//! A raw snappy payload never starts with the xerial magic: its first byte after the length
//! varint (`\x82S` is a length of 10,626) would be `N`, a copy, and a raw stream cannot start
//! with a copy. So the magic tells the two apart without ambiguity.
//!
//! # One payload, whole
//!
//! A batch carries exactly one compressed payload. Bytes after a complete gzip member, LZ4
//! frame or zstd frame (a second member or frame included) are refused as
//! [`CompressionError::Corrupt`], and so is a payload cut short anywhere, even between two
//! LZ4 blocks (where lz4_flex's decoder alone would stop as if at the end of the frame). An
//! empty payload is corrupt for every codec but `none`; compressing nothing gives a payload
//! that is not empty. The one exception is xerial framing, which has no end mark: cut where a
//! block starts, a payload reads as the blocks before the cut, and only the batch's CRC tells.
//!
//! # Integrity
//!
//! The batch's CRC, not the codec, is what detects damaged bytes: gzip checks a CRC-32 of its
//! output, but Kafka's producers write LZ4 and zstd frames without their optional checksums,
//! and snappy has none. Decompressing a damaged payload therefore fails (`Corrupt`, or
//! `TooLarge`) or gives other bytes; it never panics, and never gives more than the limit.
//!
//! # Memory
//!
//! [`decompress`] never trusts a size the payload claims. Its output grows only as bytes are
//! decoded, never past `limit + 1` bytes (the byte that shows the limit is passed), after
//! which it stops with [`CompressionError::TooLarge`]: a 100 KiB batch that expands to
//! gigabytes costs at most the limit. Snappy's lengths are read before anything is allocated
//! and the output is allocated once, exactly. Besides the output, each decoder keeps state of
//! a size its format bounds, whatever the payload: gzip a 32 KiB window and its tables; LZ4
//! one block's input and output (the frame says how large: 128 KiB for Kafka's 64 KiB
//! independent blocks, about 12 MiB at most, for 4 MiB linked blocks); zstd one 128 KiB block
//! and a window of at most 2^[`ZSTD_WINDOW_LOG_MAX`] bytes, the cap zstd's (and so Kafka's)
//! decoders apply by default. That window is reserved as the frame declares it but written
//! only as output is produced, so what it occupies is bounded by the limit too: a 100 KB
//! frame declaring a 128 MiB window, decompressed, added 1 MiB to the test process's
//! resident memory.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use thiserror::Error;

/// Kafka's compression codecs, with their ids in bits 0-2 of a RecordBatch's `attributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    /// Every codec, in id order.
    pub const ALL: [Codec; 5] = [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

    /// The codec with Kafka's id `id` (`attributes & 0b111`); 5 to 7 (and anything larger) are
    /// not assigned.
    pub fn from_id(id: u8) -> Result<Codec, CompressionError> {
        Codec::ALL.get(usize::from(id)).copied().ok_or(CompressionError::UnknownCodec { id })
    }

    /// Kafka's id, as written in bits 0-2 of `attributes`.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// Kafka's name for the codec, as in the `compression.type` setting.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for Codec {
    type Err = UnknownCodecName;

    /// Parses Kafka's names, exactly (lower case).
    fn from_str(name: &str) -> Result<Codec, UnknownCodecName> {
        Codec::ALL
            .into_iter()
            .find(|codec| codec.name() == name)
            .ok_or_else(|| UnknownCodecName { name: name.to_owned() })
    }
}

/// A name that is not one of Kafka's codecs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown compression codec {name:?}; the codecs are none, gzip, snappy, lz4 and zstd")]
pub struct UnknownCodecName {
    pub name: String,
}

/// Why a compressed payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompressionError {
    #[error(
        "unknown compression codec id {id}; the ids are 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd"
    )]
    UnknownCodec { id: u8 },
    /// The payload is not a whole, valid payload of its codec; `reason` is the decoder's.
    #[error("corrupt {codec} payload: {reason}")]
    Corrupt { codec: Codec, reason: String },
    /// The payload decompresses to more than the caller's limit; decoding stopped there.
    #[error("{codec} payload decompresses to more than the limit of {limit} bytes")]
    TooLarge { codec: Codec, limit: usize },
}

/// The largest zstd window, as a power of two (128 MiB), a frame may ask the decoder for:
/// zstd's own default cap, which Kafka's Java consumers apply too. A Java producer at level
/// 20 to 22 writes windows of 32 to 128 MiB; Kafka's default level 3 writes 2 MiB or less.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Kafka's default zstd level (`compression.zstd.level`).
const ZSTD_LEVEL: i32 = 3;

/// The first bytes of a xerial-framed snappy payload.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// Magic, version and compatible version.
const XERIAL_HEADER_BYTES: usize = 16;

/// What [`decompress`]'s output starts with, before it grows by doubling.
const OUTPUT_BYTES_INITIAL: usize = 64 * 1024;

/// Compresses `input` (a batch's records section) with `codec`, as Kafka's clients do (see the
/// module's table). [`Codec::None`] returns a copy.
///
/// # Panics
///
/// On snappy input larger than raw snappy can carry (about 4 GiB, far beyond any batch), and
/// if zstd fails to allocate its context.
pub fn compress(codec: Codec, input: &[u8]) -> Vec<u8> {
    match codec {
        Codec::None => input.to_vec(),
        Codec::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(
                Vec::with_capacity(input.len() / 2),
                flate2::Compression::default(),
            );
            encoder.write_all(input).expect("writing to a Vec cannot fail");
            encoder.finish().expect("writing to a Vec cannot fail")
        }
        Codec::Snappy => snap::raw::Encoder::new()
            .compress_vec(input)
            .expect("raw snappy carries up to 2^32 - 1 bytes, more than any batch"),
        Codec::Lz4 => {
            // Kafka's Java producer (KafkaLZ4BlockOutputStream): 64 KiB independent blocks,
            // no block or content checksums, no content size.
            let frame = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(
                frame,
                Vec::with_capacity(input.len() / 2),
            );
            encoder.write_all(input).expect("writing to a Vec cannot fail");
            encoder.finish().expect("writing to a Vec cannot fail")
        }
        // One shot: the frame header carries the content size and a window no larger than
        // the input, so decoders reserve no more than they need.
        Codec::Zstd => zstd::bulk::compress(input, ZSTD_LEVEL)
            .expect("zstd compresses any input at a valid level into a buffer it sizes"),
    }
}

/// Decompresses `input`, a payload of `codec`, into a new buffer of at most `limit` bytes.
///
/// Refuses with [`CompressionError::TooLarge`] as soon as the output would pass `limit`,
/// having held at most `limit + 1` bytes of output (see the module's notes on memory), and
/// with [`CompressionError::Corrupt`] anything that is not exactly one whole payload of the
/// codec. Never panics.
pub fn decompress(codec: Codec, input: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let corrupt = |reason: String| CompressionError::Corrupt { codec, reason };
    let too_large = CompressionError::TooLarge { codec, limit };
    if input.is_empty() && codec != Codec::None {
        return Err(corrupt("the payload is empty".to_owned()));
    }
    match codec {
        Codec::None if input.len() > limit => Err(too_large),
        Codec::None => Ok(input.to_vec()),
        Codec::Gzip => {
            let mut decoder = flate2::bufread::GzDecoder::new(input);
            let output = read_bounded(&mut decoder, limit).map_err(|e| corrupt(e.to_string()))?;
            let Some(output) = output else { return Err(too_large) };
            ensure_consumed(decoder.into_inner(), "gzip member").map_err(corrupt)?;
            Ok(output)
        }
        Codec::Snappy if input.starts_with(XERIAL_MAGIC) => {
            decompress_xerial(input, limit, corrupt, too_large)
        }
        Codec::Snappy => {
            let length = snap::raw::decompress_len(input).map_err(|e| corrupt(e.to_string()))?;
            if length > limit {
                return Err(too_large);
            }
            let mut output = vec![0; length];
            decompress_snappy_block(input, &mut output).map_err(corrupt)?;
            Ok(output)
        }
        Codec::Lz4 => {
            check_lz4_frame_bounds(input).map_err(corrupt)?;
            let mut decoder = lz4_flex::frame::FrameDecoder::new(input);
            let output = read_bounded(&mut decoder, limit).map_err(|e| corrupt(e.to_string()))?;
            let Some(output) = output else { return Err(too_large) };
            ensure_consumed(decoder.into_inner(), "LZ4 frame").map_err(corrupt)?;
            Ok(output)
        }
        Codec::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(input)
                .expect("a zstd decoder without a dictionary allocates its context only")
                .single_frame();
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .expect("ZSTD_WINDOW_LOG_MAX is within zstd's bounds");
            let output = read_bounded(&mut decoder, limit).map_err(|e| corrupt(e.to_string()))?;
            let Some(output) = output else { return Err(too_large) };
            ensure_consumed(decoder.finish(), "zstd frame").map_err(corrupt)?;
            Ok(output)
        }
    }
}

/// Reads `decoder` to its end: `Some(output)`, or `None` once it gives more than `limit` bytes.
///
/// The output starts small and doubles, never past `limit + 1` bytes of capacity; `take` keeps
/// any decoder from giving more than that, whatever it was asked for.
fn read_bounded(decoder: &mut impl Read, limit: usize) -> io::Result<Option<Vec<u8>>> {
    let output_bytes_max = limit.saturating_add(1);
    let mut decoder = decoder.take(output_bytes_max as u64);
    let mut output = Vec::new();
    let mut filled = 0;
    loop {
        if filled > limit {
            return Ok(None);
        }
        if filled == output.len() {
            // `filled <= limit`, so there is room to grow.
            let bytes = (output.len() * 2).max(OUTPUT_BYTES_INITIAL).min(output_bytes_max);
            output.reserve_exact(bytes - output.len());
            output.resize(bytes, 0);
        }
        match decoder.read(&mut output[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    output.truncate(filled);
    Ok(Some(output))
}

/// Refuses bytes left after a complete `what`: a batch carries exactly one payload.
fn ensure_consumed(rest: &[u8], what: &str) -> Result<(), String> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(format!("{} bytes follow the {what}; a batch carries exactly one", rest.len()))
    }
}

/// Decodes one raw snappy block into `output`, which must be exactly its decompressed length.
fn decompress_snappy_block(block: &[u8], output: &mut [u8]) -> Result<(), String> {
    let written = snap::raw::Decoder::new().decompress(block, output).map_err(|e| e.to_string())?;
    if written != output.len() {
        return Err(format!("a block gave {written} bytes, its header said {}", output.len()));
    }
    Ok(())
}

/// Decodes xerial-framed snappy in two passes over its blocks: the first reads each block's
/// decompressed length and sums them against `limit`, the second decodes each block into its
/// place in an output allocated once.
fn decompress_xerial(
    input: &[u8],
    limit: usize,
    corrupt: impl Fn(String) -> CompressionError,
    too_large: CompressionError,
) -> Result<Vec<u8>, CompressionError> {
    let Some(blocks) = input.get(XERIAL_HEADER_BYTES..) else {
        return Err(corrupt("truncated: the xerial header is cut short".to_owned()));
    };
    let mut output_bytes = 0usize;
    for block in xerial_blocks(blocks) {
        let length = snap::raw::decompress_len(block.map_err(&corrupt)?)
            .map_err(|e| corrupt(e.to_string()))?;
        output_bytes = output_bytes.saturating_add(length);
        if output_bytes > limit {
            return Err(too_large);
        }
    }
    let mut output = vec![0; output_bytes];
    let mut start = 0;
    for block in xerial_blocks(blocks) {
        let block = block.map_err(&corrupt)?;
        let length = snap::raw::decompress_len(block).map_err(|e| corrupt(e.to_string()))?;
        decompress_snappy_block(block, &mut output[start..start + length]).map_err(&corrupt)?;
        start += length;
    }
    Ok(output)
}

/// The raw snappy blocks of xerial framing, each after its big-endian i32 length; an error
/// ends the iteration.
fn xerial_blocks(mut rest: &[u8]) -> impl Iterator<Item = Result<&[u8], String>> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let split = split_xerial_block(rest);
        rest = match split {
            Ok((_, after)) => after,
            Err(_) => &[],
        };
        Some(split.map(|(block, _)| block))
    })
}

/// The first xerial block of `input` (after its length) and what follows it.
fn split_xerial_block(input: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let Some((length, rest)) = input.split_first_chunk::<4>() else {
        return Err(format!("truncated: {} bytes where a block length belongs", input.len()));
    };
    let length = i32::from_be_bytes(*length);
    let Ok(length) = usize::try_from(length) else {
        return Err(format!("a block length of {length}"));
    };
    if length > rest.len() {
        return Err(format!("truncated: a block of {length} bytes, {} left", rest.len()));
    }
    Ok(rest.split_at(length))
}

/// Walks an LZ4 frame's block headers without decoding: the frame must end with its end mark
/// (and content checksum, if it has one) exactly where `input` ends. lz4_flex's decoder, cut
/// off between two blocks, stops as if at the end of the frame; this catches that. The
/// header's own checks (version, reserved bits, checksum, block size) are the decoder's.
fn check_lz4_frame_bounds(input: &[u8]) -> Result<(), String> {
    const MAGIC: u32 = 0x184D_2204;
    const FLG_BLOCK_CHECKSUM: u8 = 0x10;
    const FLG_CONTENT_SIZE: u8 = 0x08;
    const FLG_CONTENT_CHECKSUM: u8 = 0x04;
    const FLG_DICTIONARY_ID: u8 = 0x01;
    const BLOCK_UNCOMPRESSED: u32 = 0x8000_0000;
    let u32_at = |position: usize| {
        let bytes = input.get(position..position.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?))
    };
    let truncated =
        || format!("truncated: the LZ4 frame's {} bytes end before its end mark", input.len());

    match u32_at(0) {
        Some(MAGIC) => {}
        Some(magic) => {
            return Err(format!(
                "magic number {magic:#010x} is not an LZ4 frame's ({MAGIC:#010x})"
            ));
        }
        None => return Err(truncated()),
    }
    let flags = *input.get(4).ok_or_else(truncated)?;
    let has = |flag: u8| usize::from(flags & flag != 0);
    // Magic, FLG, BD, optional content size and dictionary id, header checksum.
    let mut position = 7 + 8 * has(FLG_CONTENT_SIZE) + 4 * has(FLG_DICTIONARY_ID);
    loop {
        let block_header = u32_at(position).ok_or_else(truncated)?;
        position += 4;
        if block_header == 0 {
            break;
        }
        let data_bytes = (block_header & !BLOCK_UNCOMPRESSED) as usize;
        position = position.saturating_add(data_bytes).saturating_add(4 * has(FLG_BLOCK_CHECKSUM));
    }
    position += 4 * has(FLG_CONTENT_CHECKSUM);
    if position > input.len() {
        return Err(truncated());
    }
    ensure_consumed(&input[position..], "LZ4 frame")
}

#[cfg(test)]
mod tests;
