use std::path::Path;

use super::*;
use crate::sim::Rng;

const MIB: usize = 1024 * 1024;

/// Codecs that compress (every one but `none`).
const COMPRESSING: [Codec; 4] = [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

/// Text like a batch of JSON events: compressible, but not trivially.
fn records_like(bytes: usize) -> Vec<u8> {
    let mut output = Vec::with_capacity(bytes + 100);
    let mut i = 0u64;
    while output.len() < bytes {
        let line = format!(
            "{{\"id\":{i},\"user\":\"user-{}\",\"action\":\"{}\",\"amount\":{}}}\n",
            i * 7919 % 1000,
            ["view", "click", "buy"][(i % 3) as usize],
            i * 31 % 977
        );
        output.extend_from_slice(line.as_bytes());
        i += 1;
    }
    output.truncate(bytes);
    output
}

fn round_trip(codec: Codec, input: &[u8]) -> Vec<u8> {
    let payload = compress(codec, input);
    decompress(codec, &payload, input.len())
        .unwrap_or_else(|e| panic!("{codec}, {} bytes: {e}", input.len()))
}

fn is_corrupt(result: &Result<Vec<u8>, CompressionError>, codec: Codec) -> bool {
    matches!(result, Err(CompressionError::Corrupt { codec: c, .. }) if *c == codec)
}

#[test]
fn every_codec_round_trips_empty_small_and_large_inputs() {
    let large = records_like(MIB);
    for codec in Codec::ALL {
        assert_eq!(round_trip(codec, b""), b"", "{codec}");
        assert_eq!(round_trip(codec, b"hello, spool"), b"hello, spool", "{codec}");
        assert!(round_trip(codec, &large) == large, "{codec}: 1 MiB differs after a round trip");
    }
    for codec in COMPRESSING {
        let payload = compress(codec, &large);
        assert!(payload.len() < large.len() / 2, "{codec}: {} bytes", payload.len());
        assert!(!compress(codec, b"").is_empty(), "{codec}: compressing nothing gives a payload");
    }
}

#[test]
fn payloads_are_what_kafka_clients_write() {
    let input = records_like(200 * 1024);
    // gzip: one member, no optional header fields.
    let gzip = compress(Codec::Gzip, &input);
    assert_eq!(gzip[..4], [0x1f, 0x8b, 8, 0]);
    // snappy: raw, its length first (a varint), as librdkafka sends it.
    let snappy = compress(Codec::Snappy, &input);
    assert_eq!(snap::raw::decompress_len(&snappy).unwrap(), input.len());
    // lz4: a frame of independent 64 KiB blocks without checksums, as Kafka's Java producer.
    let lz4 = compress(Codec::Lz4, &input);
    assert_eq!(lz4[..6], [0x04, 0x22, 0x4d, 0x18, 0x60, 0x40]);
    assert!(lz4_block_ends(&lz4).len() >= 4, "200 KiB makes several blocks");
    // zstd: a frame whose header carries the content size, at level 3.
    let zstd = compress(Codec::Zstd, &input);
    assert_eq!(zstd[..4], [0x28, 0xb5, 0x2f, 0xfd]);
    assert_eq!(zstd::zstd_safe::get_frame_content_size(&zstd).ok(), Some(Some(input.len() as u64)));
    assert_eq!(zstd, zstd::bulk::compress(&input, 3).unwrap());
}

/// Where each data block of an LZ4 frame without content size or dictionary id ends, and so
/// where the next block (or the end mark) starts.
fn lz4_block_ends(frame: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut position = 7;
    loop {
        let header = u32::from_le_bytes(frame[position..position + 4].try_into().unwrap());
        if header == 0 {
            return ends;
        }
        position += 4 + (header & 0x7fff_ffff) as usize;
        ends.push(position);
    }
}

fn xerial(blocks: &[&[u8]]) -> Vec<u8> {
    let mut payload = b"\x82SNAPPY\x00".to_vec();
    payload.extend_from_slice(&1i32.to_be_bytes());
    payload.extend_from_slice(&1i32.to_be_bytes());
    for block in blocks {
        let compressed = snap::raw::Encoder::new().compress_vec(block).unwrap();
        payload.extend_from_slice(&(compressed.len() as i32).to_be_bytes());
        payload.extend_from_slice(&compressed);
    }
    payload
}

#[test]
fn xerial_framed_snappy_as_java_writes_it_is_read() {
    let first = records_like(32 * 1024);
    let second = b"the second, shorter block".to_vec();
    let payload = xerial(&[&first, &second]);
    let output = decompress(Codec::Snappy, &payload, MIB).unwrap();
    assert!(output == [first.clone(), second].concat());

    assert_eq!(decompress(Codec::Snappy, &xerial(&[]), MIB), Ok(Vec::new()));

    // The blocks' lengths are summed against the limit before anything is decoded.
    let blocks = vec![&first[..]; 40];
    let limit = 32 * 1024 * 39;
    assert_eq!(
        decompress(Codec::Snappy, &xerial(&blocks), limit),
        Err(CompressionError::TooLarge { codec: Codec::Snappy, limit })
    );
    assert_eq!(
        decompress(Codec::Snappy, &xerial(&blocks), limit + 32 * 1024).unwrap().len(),
        40 * 32 * 1024
    );

    let mut negative = xerial(&[]);
    negative.extend_from_slice(&(-1i32).to_be_bytes());
    assert!(is_corrupt(&decompress(Codec::Snappy, &negative, MIB), Codec::Snappy));
    let header_only = &xerial(&[])[..12];
    assert!(is_corrupt(&decompress(Codec::Snappy, header_only, MIB), Codec::Snappy));
}

#[test]
fn every_truncated_payload_is_corrupt() {
    let input = records_like(2000);
    for codec in COMPRESSING {
        let payload = compress(codec, &input);
        for cut in 0..payload.len() {
            let result = decompress(codec, &payload[..cut], MIB);
            assert!(
                is_corrupt(&result, codec),
                "{codec} cut to {cut} of {}: {result:?}",
                payload.len()
            );
        }
    }
}

#[test]
fn xerial_snappy_cut_between_blocks_reads_as_fewer_blocks() {
    // Xerial framing has no end mark: cut where a block starts, a payload is a shorter valid
    // one (the batch's CRC is what catches that). Cut anywhere else, it is corrupt.
    let input = records_like(2000);
    let payload = xerial(&[&input[..1000], &input[1000..]]);
    let second_block = 16 + 4 + i32::from_be_bytes(payload[16..20].try_into().unwrap()) as usize;
    for cut in 0..payload.len() {
        let result = decompress(Codec::Snappy, &payload[..cut], MIB);
        match cut {
            16 => assert_eq!(result, Ok(Vec::new())),
            _ if cut == second_block => assert!(result == Ok(input[..1000].to_vec())),
            _ => assert!(is_corrupt(&result, Codec::Snappy), "cut to {cut}: {result:?}"),
        }
    }
}

#[test]
fn an_lz4_frame_cut_between_blocks_is_corrupt() {
    let input = records_like(300 * 1024);
    let payload = compress(Codec::Lz4, &input);
    let ends = lz4_block_ends(&payload);
    assert!(ends.len() >= 5);
    for end in ends {
        let result = decompress(Codec::Lz4, &payload[..end], MIB);
        assert!(is_corrupt(&result, Codec::Lz4), "cut at block end {end}: {result:?}");
    }
}

#[test]
fn bytes_after_the_payload_are_corrupt() {
    let input = records_like(5000);
    for codec in COMPRESSING {
        let payload = compress(codec, &input);
        for trailer in [vec![0], b"junk".to_vec(), payload.clone()] {
            let result = decompress(codec, &[&payload[..], &trailer].concat(), MIB);
            assert!(is_corrupt(&result, codec), "{codec} + {} bytes: {result:?}", trailer.len());
        }
    }
    let result = decompress(Codec::Snappy, &[xerial(&[&input]), vec![1, 2]].concat(), MIB);
    assert!(is_corrupt(&result, Codec::Snappy), "{result:?}");
}

#[test]
fn empty_payloads_are_corrupt() {
    for codec in COMPRESSING {
        let result = decompress(codec, b"", MIB);
        assert!(is_corrupt(&result, codec), "{codec}: {result:?}");
    }
    assert_eq!(decompress(Codec::None, b"", 0), Ok(Vec::new()));
}

/// Flips every byte of a payload in turn: nothing panics or gives more than the limit, and a
/// flip where the format checks its bytes is `Corrupt`.
fn check_flips(codec: Codec, payload: &[u8], limit: usize, checked: std::ops::Range<usize>) {
    let mut corrupt = 0;
    for position in 0..payload.len() {
        let mut damaged = payload.to_vec();
        damaged[position] ^= 0xff;
        let result = decompress(codec, &damaged, limit);
        match &result {
            Ok(output) => assert!(output.len() <= limit),
            Err(CompressionError::Corrupt { codec: c, .. }) => {
                assert_eq!(*c, codec);
                corrupt += 1;
            }
            Err(CompressionError::TooLarge { codec: c, limit: l }) => {
                assert_eq!((*c, *l), (codec, limit))
            }
            Err(e) => panic!("{codec}: {e}"),
        }
        if checked.contains(&position) {
            assert!(is_corrupt(&result, codec), "{codec}, byte {position} flipped: {result:?}");
        }
    }
    assert!(corrupt >= checked.len(), "{codec}: {corrupt} flips corrupt");
}

#[test]
fn flipped_bytes_are_corrupt_where_the_format_checks() {
    let input = records_like(3000);
    // Far above what a flip could make of 3,000 bytes, so a checked flip is never TooLarge.
    let limit = MIB;
    let gzip = compress(Codec::Gzip, &input);
    // After the 10-byte header, everything is covered by the trailer's CRC-32 and length.
    check_flips(Codec::Gzip, &gzip, limit, 10..gzip.len());
    let lz4 = compress(Codec::Lz4, &input);
    // Magic, descriptor and its checksum.
    check_flips(Codec::Lz4, &lz4, limit, 0..7);
    let zstd = compress(Codec::Zstd, &input);
    // Magic.
    check_flips(Codec::Zstd, &zstd, limit, 0..4);
    let snappy = compress(Codec::Snappy, &input);
    // The length varint.
    check_flips(Codec::Snappy, &snappy, limit, 0..1);
    let xerial = xerial(&[&input[..1500], &input[1500..]]);
    // Magic (read as raw snappy instead) and the first block's length.
    check_flips(Codec::Snappy, &xerial, limit, 16..20);
}

#[test]
fn checksummed_lz4_and_zstd_frames_catch_flipped_data() {
    // Kafka's producers leave the optional checksums out, but other writers may put them in;
    // when a frame has them, they are checked.
    let input = records_like(3000);
    let limit = MIB;
    let frame = lz4_flex::frame::FrameInfo::new().content_checksum(true).block_checksums(true);
    let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(frame, Vec::new());
    encoder.write_all(&input).unwrap();
    let lz4 = encoder.finish().unwrap();
    check_flips(Codec::Lz4, &lz4, limit, 7..lz4.len());

    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    encoder.include_checksum(true).unwrap();
    encoder.write_all(&input).unwrap();
    let zstd = encoder.finish().unwrap();
    // Past the frame header (magic, descriptor, window): the blocks and the checksum.
    check_flips(Codec::Zstd, &zstd, limit, 8..zstd.len());
}

/// 64 MiB of zeros, compressed by `codec`'s streaming encoder a chunk at a time.
fn bomb(codec: Codec) -> Vec<u8> {
    const BOMB_BYTES: usize = 64 * MIB;
    let chunk = vec![0u8; MIB];
    let write_all = |writer: &mut dyn Write| {
        for _ in 0..BOMB_BYTES / MIB {
            writer.write_all(&chunk).unwrap();
        }
    };
    match codec {
        Codec::None => unreachable!("`none` does not compress"),
        Codec::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            write_all(&mut encoder);
            encoder.finish().unwrap()
        }
        Codec::Snappy => {
            // Raw snappy expands at most about 21 times, so a 64 MiB payload would not be
            // small: this one's length varint claims 64 MiB and its body is 1 MiB's. The length
            // is read, and refused, before anything is allocated or decoded.
            let mut payload = Vec::new();
            let mut length = BOMB_BYTES;
            while length >= 0x80 {
                payload.push(length as u8 | 0x80);
                length >>= 7;
            }
            payload.push(length as u8);
            let body = compress(Codec::Snappy, &chunk);
            payload.extend_from_slice(&body[3..]); // after 1 MiB's 3-byte varint
            payload
        }
        Codec::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            write_all(&mut encoder);
            encoder.finish().unwrap()
        }
        Codec::Zstd => {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            write_all(&mut encoder);
            encoder.finish().unwrap()
        }
    }
}

#[test]
fn a_small_payload_that_expands_past_the_limit_is_too_large() {
    for codec in COMPRESSING {
        let payload = bomb(codec);
        assert!(payload.len() < 300 * 1024, "{codec}: a {} byte bomb", payload.len());
        assert_eq!(
            decompress(codec, &payload, MIB),
            Err(CompressionError::TooLarge { codec, limit: MIB })
        );
    }
    assert_eq!(
        decompress(Codec::Snappy, &xerial(&vec![&[0u8; 32 * 1024][..]; 64]), MIB),
        Err(CompressionError::TooLarge { codec: Codec::Snappy, limit: MIB })
    );
}

#[test]
fn output_of_exactly_the_limit_is_read_and_one_byte_more_is_too_large() {
    let input = records_like(100_000);
    for codec in Codec::ALL {
        let payload = compress(codec, &input);
        let output = decompress(codec, &payload, input.len()).unwrap();
        assert!(output == input, "{codec}");
        assert!(output.capacity() <= input.len() + 1, "{codec}: capacity {}", output.capacity());
        assert_eq!(
            decompress(codec, &payload, input.len() - 1),
            Err(CompressionError::TooLarge { codec, limit: input.len() - 1 })
        );
    }
}

#[test]
fn reading_an_endless_decoder_stops_past_the_limit() {
    assert_eq!(read_bounded(&mut io::repeat(7), MIB).unwrap(), None);
    assert_eq!(read_bounded(&mut io::repeat(7), 0).unwrap(), None);
    assert_eq!(read_bounded(&mut io::empty(), 0).unwrap(), Some(Vec::new()));
    let exact = read_bounded(&mut io::repeat(7).take(MIB as u64), MIB).unwrap().unwrap();
    assert_eq!(exact.len(), MIB);
    assert!(exact.capacity() <= MIB + 1);
}

#[test]
fn unknown_codec_ids_are_refused() {
    for id in [5, 6, 7, 8, 255] {
        assert_eq!(Codec::from_id(id), Err(CompressionError::UnknownCodec { id }));
    }
    for (id, codec) in Codec::ALL.into_iter().enumerate() {
        assert_eq!(Codec::from_id(id as u8), Ok(codec));
        assert_eq!(codec.id(), id as u8);
    }
    let message = CompressionError::UnknownCodec { id: 6 }.to_string();
    assert!(message.contains("id 6") && message.contains("4 zstd"), "{message}");
}

#[test]
fn names_parse_and_display() {
    let names: Vec<String> = Codec::ALL.iter().map(Codec::to_string).collect();
    assert_eq!(names, ["none", "gzip", "snappy", "lz4", "zstd"]);
    for codec in Codec::ALL {
        assert_eq!(codec.name().parse::<Codec>(), Ok(codec));
    }
    for name in ["", "LZ4", "snapy", "lz4 ", "uncompressed"] {
        let error = name.parse::<Codec>().unwrap_err();
        assert_eq!(error, UnknownCodecName { name: name.to_owned() });
        assert!(error.to_string().contains("none, gzip, snappy, lz4 and zstd"), "{error}");
    }
}

/// Random bytes with the structure records have: runs, repeats of earlier bytes, noise.
fn random_input(rng: &mut Rng) -> Vec<u8> {
    let bytes = match rng.below(10) {
        0 => rng.below(300 * 1024) as usize,
        _ => rng.below(8 * 1024) as usize,
    };
    let mut output = Vec::with_capacity(bytes);
    while output.len() < bytes {
        let run = 1 + rng.below(200) as usize;
        match rng.below(3) {
            0 => output.extend(std::iter::repeat_n(rng.next_u64() as u8, run)),
            1 if !output.is_empty() => {
                let start = rng.below(output.len() as u64) as usize;
                let end = (start + run).min(output.len());
                output.extend_from_within(start..end);
            }
            _ => output.extend((0..run).map(|_| rng.next_u64() as u8)),
        }
    }
    output.truncate(bytes);
    output
}

#[test]
fn random_inputs_round_trip_through_every_codec() {
    for seed in 0..150 {
        let mut rng = Rng::new(seed);
        let input = random_input(&mut rng);
        for codec in Codec::ALL {
            let payload = compress(codec, &input);
            let output = decompress(codec, &payload, input.len());
            assert!(
                output.as_ref() == Ok(&input),
                "seed {seed}, {codec}, {} bytes: {:?}",
                input.len(),
                output.map(|o| o.len())
            );
        }
    }
}

/// The fuzz target's seeds (`fuzz/seeds/decompress`: the codec id, then a payload) stay valid,
/// one at least per codec.
#[test]
fn fuzz_seeds_decompress() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/decompress");
    let mut codecs = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let seed = std::fs::read(&path).unwrap();
        let codec = Codec::from_id(seed[0] & 0b111).unwrap();
        decompress(codec, &seed[1..], MIB).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        codecs.push(codec);
    }
    for codec in Codec::ALL {
        assert!(codecs.contains(&codec), "no seed for {codec}");
    }
}
