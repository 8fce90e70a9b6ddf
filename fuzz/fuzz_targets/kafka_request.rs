//! Any bytes as a Kafka request frame (after its length prefix), decoded as the Kafka listener
//! decodes one before serving it: nothing panics, and no array's claimed count makes it
//! reserve memory the frame does not hold (libFuzzer's memory limit would stop the run).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    spool_server::decode_kafka_request(data);
});
