//! Choosing a partition for a record: Kafka's murmur2 hash of the key, made positive, modulo
//! the partition count, so a key lands on the same partition as with Kafka's default
//! partitioner; records without a key go round-robin.

use std::sync::atomic::{AtomicU32, Ordering};

/// Kafka's 32-bit murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`, seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of a keyed record: `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

/// The round-robin position of one topic, for records with neither partition nor key.
#[derive(Debug, Default)]
pub struct RoundRobin(AtomicU32);

impl RoundRobin {
    pub fn next(&self, partitions: u32) -> u32 {
        assert!(partitions > 0, "a topic has at least one partition");
        self.0.fetch_add(1, Ordering::Relaxed) % partitions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafka() {
        // Kafka's own test vectors (UtilsTest.testMurmur2).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, expect) in cases {
            assert_eq!(murmur2(key), expect, "{:?}", std::str::from_utf8(key));
        }
    }

    #[test]
    fn partitions_are_stable_and_in_range() {
        for n in 1..20 {
            for key in [&b""[..], b"a", b"user-42", &[0xff; 7]] {
                let p = partition_for_key(key, n);
                assert!(p < n);
                assert_eq!(p, partition_for_key(key, n));
            }
        }
    }

    #[test]
    fn round_robin_cycles() {
        let rr = RoundRobin::default();
        let seen: Vec<u32> = (0..6).map(|_| rr.next(3)).collect();
        assert_eq!(seen, [0, 1, 2, 0, 1, 2]);
    }
}
