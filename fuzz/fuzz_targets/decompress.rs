//! Any bytes through Kafka's codecs: the first byte's low three bits pick the codec, as in a
//! batch's `attributes`, and the rest is the payload. Nothing panics; the output never passes
//! the limit; and what decompresses, compressed again, decompresses to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spool_storage::batch::compression::{self, Codec, CompressionError};

const LIMIT_BYTES: usize = 1024 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&first, payload)) = data.split_first() else { return };
    let codec = match Codec::from_id(first & 0b111) {
        Ok(codec) => codec,
        Err(CompressionError::UnknownCodec { id }) => {
            assert!((5..=7).contains(&id));
            return;
        }
        Err(e) => panic!("from_id gave {e}"),
    };
    match compression::decompress(codec, payload, LIMIT_BYTES) {
        Ok(output) => {
            assert!(output.len() <= LIMIT_BYTES);
            let again = compression::compress(codec, &output);
            let round_trip = compression::decompress(codec, &again, output.len());
            assert!(round_trip.as_ref() == Ok(&output), "{codec}: {round_trip:?}");
        }
        Err(
            CompressionError::Corrupt { codec: c, .. }
            | CompressionError::TooLarge { codec: c, .. },
        ) => {
            assert_eq!(c, codec)
        }
        Err(e) => panic!("{codec}: {e}"),
    }
});
