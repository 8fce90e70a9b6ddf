//! Message values: what producers send (`--payload`), and the send time e2e messages carry.
//!
//! - `pattern`: one value, the bytes 1, 2, ..., 251 repeating (never all zeros, so no layer
//!   can skip it). Every message is the same, so a codec compresses it far better than any
//!   real data; measure compression with `json`.
//! - `json`: JSON events of a web-analytics kind, each exactly `--message-size` bytes and
//!   ASCII, like
//!
//!   ```text
//!   {"sent":"000001a2b3c4d5e6","ts":1764237600123,"user_id":48213,"event":"page_view",
//!    "path":"/products/1234","session":"9f86d081884c7d65a1b2c3d4e5f60718",
//!    "agent":"Mozilla/5.0 (...)","pad":"checkout basket price ..."}
//!   ```
//!
//!   (one line). The fields' values vary from event to event, drawn from a fixed seed; fields
//!   that do not fit are left out from the end, and what is left over is a `"pad"` field of
//!   words, or spaces before the closing brace where fewer than 10 bytes are left. Every
//!   value is a complete JSON object, so a value must have room for the first field:
//!   [`JSON_BYTES_MIN`] bytes.
//!
//! The values are made before the clock starts, into a [`Payloads`] pool the producers cycle
//! through, so making them costs the timed run nothing. A `json` pool holds at least a
//! batch's worth of values (no codec sees a value twice within one batch) and at least
//! [`POOL_VALUES_MIN`], within [`POOL_BYTES_MAX`].
//!
//! The send time ([`stamp`], [`age_nanos`]) is the nanoseconds since the run's epoch:
//! `pattern` carries it in the first 8 bytes, little-endian ([`STAMP_BYTES`]); `json` as 16
//! lowercase hex digits, the value of the `"sent"` field at bytes 9 to 24, so a stamped event
//! stays valid JSON. Only e2e stamps; otherwise `"sent"` holds a made-up time.

use std::ops::Range;

use clap::ValueEnum;
use serde::Serialize;
use spool_proto::limits::BATCH_BYTES_MAX;
use spool_storage::sim::Rng;

/// Bytes of a `pattern` message holding its send time: the least an e2e message may be.
pub const STAMP_BYTES: usize = 8;

/// The smallest `json` value: `{"sent":"0000000000000000"}`.
pub const JSON_BYTES_MIN: usize = JSON_STAMP.end + 2;

/// Where a `json` value's `"sent"` field keeps its 16 hex digits.
const JSON_STAMP: Range<usize> = 9..25;

/// Distinct `json` values in a pool, at least.
pub const POOL_VALUES_MIN: usize = 1024;

/// The most bytes a `json` pool holds, whatever the batch.
pub const POOL_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The seed every `json` pool is drawn from, so that runs send the same events.
const SEED: u64 = 0x5EED_5900_1BE4_C400;

/// What each message's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// The same bytes in every message, 1 to 251 repeating.
    Pattern,
    /// JSON events, varied from message to message.
    Json,
}

impl PayloadKind {
    /// The smallest `--message-size` the kind can fill, `stamped` (e2e) or not.
    pub fn bytes_min(self, stamped: bool) -> usize {
        match (self, stamped) {
            (PayloadKind::Pattern, false) => 0,
            (PayloadKind::Pattern, true) => STAMP_BYTES,
            (PayloadKind::Json, _) => JSON_BYTES_MIN,
        }
    }
}

/// The values a run's producers send, one after the other, from the start again at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payloads {
    /// The values, back to back, each `message_size` bytes.
    bytes: Vec<u8>,
    message_size: usize,
    count: usize,
}

impl Payloads {
    /// The pool for messages of `message_size` bytes sent in batches of `batch`.
    /// `message_size` must be at least [`PayloadKind::bytes_min`] (settings check it).
    pub fn new(kind: PayloadKind, message_size: usize, batch: u32) -> Payloads {
        match kind {
            PayloadKind::Pattern => {
                let bytes = (0..message_size).map(|i| (i % 251) as u8 + 1).collect();
                Payloads { bytes, message_size, count: 1 }
            }
            PayloadKind::Json => {
                assert!(message_size >= JSON_BYTES_MIN, "settings check the size");
                let count = json_pool_values(message_size, batch);
                let mut bytes = Vec::with_capacity(count * message_size);
                let mut rng = Rng::new(SEED);
                for index in 0..count {
                    json_event(&mut rng, index as u64, message_size, &mut bytes);
                }
                Payloads { bytes, message_size, count }
            }
        }
    }

    /// How many distinct values the pool holds.
    pub fn distinct(&self) -> usize {
        self.count
    }

    /// The `index`th value sent (the pool wraps around).
    pub fn get(&self, index: u64) -> &[u8] {
        let start = (index % self.count as u64) as usize * self.message_size;
        &self.bytes[start..start + self.message_size]
    }
}

/// Distinct `json` values for messages of `message_size` bytes in batches of `batch`.
fn json_pool_values(message_size: usize, batch: u32) -> usize {
    let size = message_size.max(1);
    let per_batch = (batch as usize).min(BATCH_BYTES_MAX as usize / size);
    per_batch.max(POOL_VALUES_MIN).min(POOL_BYTES_MAX / size).max(1)
}

const EVENTS: [&str; 6] = ["page_view", "page_view", "click", "search", "add_to_cart", "purchase"];
const PATHS: [&str; 5] = ["/products/", "/category/", "/search?q=item-", "/cart/", "/orders/"];
const AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
];
const WORDS: [&str; 16] = [
    "basket", "checkout", "price", "shipping", "discount", "review", "size", "colour", "stock",
    "delivery", "return", "gift", "wishlist", "brand", "rating", "offer",
];

/// Appends one JSON event of exactly `size` bytes, the `index`th of its pool, to `out`.
fn json_event(rng: &mut Rng, index: u64, size: usize, out: &mut Vec<u8>) {
    use std::fmt::Write;
    let start = out.len();
    // A made-up send time, a millisecond apart; e2e overwrites it with the real one.
    let sent = index * 1_000_000 + rng.below(1_000_000);
    let mut event = format!("{{\"sent\":\"{sent:016x}\"");
    debug_assert_eq!(event.len(), JSON_STAMP.end + 1);
    let mut session = String::new();
    let _ = write!(session, "{:016x}{:016x}", rng.next_u64(), rng.next_u64());
    let fields = [
        format!("\"ts\":{}", 1_764_237_600_000 + index * 3 + rng.below(3)),
        format!("\"user_id\":{}", rng.below(100_000)),
        format!("\"event\":\"{}\"", EVENTS[rng.below(EVENTS.len() as u64) as usize]),
        format!(
            "\"path\":\"{}{}\"",
            PATHS[rng.below(PATHS.len() as u64) as usize],
            rng.below(10_000)
        ),
        format!("\"session\":\"{session}\""),
        format!("\"agent\":\"{}\"", AGENTS[rng.below(AGENTS.len() as u64) as usize]),
    ];
    // Room for the closing brace stays free throughout.
    for field in fields {
        if event.len() + 1 + field.len() + 1 > size {
            break;
        }
        event.push(',');
        event.push_str(&field);
    }
    const PAD_FIELD: &str = ",\"pad\":\"\"";
    let room = size - 1 - event.len();
    if room > PAD_FIELD.len() {
        event.push_str(",\"pad\":\"");
        let end = event.len() + room - PAD_FIELD.len();
        while event.len() < end {
            event.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
            event.push(' ');
        }
        event.truncate(end);
        event.push('"');
    } else {
        event.extend(std::iter::repeat_n(' ', room));
    }
    event.push('}');
    out.extend_from_slice(event.as_bytes());
    debug_assert_eq!(out.len() - start, size);
}

/// Where `kind` keeps the send time in a message.
fn stamp_range(kind: PayloadKind) -> Range<usize> {
    match kind {
        PayloadKind::Pattern => 0..STAMP_BYTES,
        PayloadKind::Json => JSON_STAMP,
    }
}

/// Writes the time since `epoch` into a message of kind `kind`.
pub fn stamp(kind: PayloadKind, payload: &mut [u8], epoch: std::time::Instant) {
    let nanos = epoch.elapsed().as_nanos() as u64;
    let at = &mut payload[stamp_range(kind)];
    match kind {
        PayloadKind::Pattern => at.copy_from_slice(&nanos.to_le_bytes()),
        PayloadKind::Json => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for (i, digit) in at.iter_mut().enumerate() {
                *digit = HEX[((nanos >> (60 - 4 * i)) & 0xf) as usize];
            }
        }
    }
}

/// How long ago a stamped message of kind `kind` was sent; `None` if it carries no stamp.
pub fn age_nanos(kind: PayloadKind, payload: &[u8], epoch: std::time::Instant) -> Option<u64> {
    let at = payload.get(stamp_range(kind))?;
    let stamped = match kind {
        PayloadKind::Pattern => u64::from_le_bytes(at.try_into().ok()?),
        PayloadKind::Json => u64::from_str_radix(std::str::from_utf8(at).ok()?, 16).ok()?,
    };
    Some((epoch.elapsed().as_nanos() as u64).saturating_sub(stamped))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn json(size: usize) -> Payloads {
        Payloads::new(PayloadKind::Json, size, 1000)
    }

    #[test]
    fn every_json_value_is_a_json_object_of_exactly_the_size() {
        for size in [JSON_BYTES_MIN, JSON_BYTES_MIN + 1, 40, 60, 100, 137, 300, 1024, 4096] {
            let pool = json(size);
            assert_eq!(pool.distinct(), POOL_VALUES_MIN, "size {size}");
            for index in 0..pool.distinct() as u64 {
                let value = pool.get(index);
                assert_eq!(value.len(), size);
                let text = std::str::from_utf8(value).unwrap();
                let parsed: serde_json::Value = serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("size {size}: {e}: {text}"));
                assert!(parsed["sent"].as_str().is_some_and(|s| s.len() == 16), "{text}");
            }
        }
    }

    #[test]
    fn json_values_carry_every_field_when_they_have_room_and_vary() {
        let pool = json(1024);
        let first: serde_json::Value = serde_json::from_slice(pool.get(0)).unwrap();
        let fields = ["sent", "ts", "user_id", "event", "path", "session", "agent", "pad"];
        for field in fields {
            assert!(!first[field].is_null(), "{field} in {first}");
        }
        // No value repeats within the pool, and the fields vary from event to event.
        let values: std::collections::HashSet<&[u8]> =
            (0..pool.distinct() as u64).map(|i| pool.get(i)).collect();
        assert_eq!(values.len(), pool.distinct());
        let events: Vec<serde_json::Value> =
            (0..100).map(|i| serde_json::from_slice(pool.get(i)).unwrap()).collect();
        for field in ["user_id", "event", "path", "session", "agent", "pad"] {
            let distinct: std::collections::HashSet<String> =
                events.iter().map(|e| e[field].to_string()).collect();
            assert!(distinct.len() > 1, "{field} is always {distinct:?}");
        }
    }

    #[test]
    fn pools_are_the_same_every_run_and_wrap_around() {
        assert_eq!(json(200), json(200));
        let pool = json(200);
        assert_eq!(pool.get(0), pool.get(pool.distinct() as u64));
        assert_ne!(pool.get(0), pool.get(1));
        let pattern = Payloads::new(PayloadKind::Pattern, 300, 1000);
        assert_eq!(pattern.distinct(), 1);
        assert_eq!(&pattern.get(7)[249..253], &[250, 251, 1, 2]);
    }

    #[test]
    fn a_json_pool_covers_a_batch_within_its_byte_limit() {
        assert_eq!(json_pool_values(100, 10), POOL_VALUES_MIN);
        assert_eq!(json_pool_values(100, 5000), 5000);
        // A batch of 100,000 1 KiB values holds 8 MiB at most: 8192 values.
        assert_eq!(json_pool_values(1024, 100_000), 8192);
        assert_eq!(json_pool_values(1024 * 1024, 1000), 64);
    }

    #[test]
    fn stamps_read_back_and_keep_json_valid() {
        let epoch = Instant::now() - Duration::from_secs(3);
        for kind in [PayloadKind::Pattern, PayloadKind::Json] {
            let mut value = Payloads::new(kind, 64, 1).get(0).to_vec();
            stamp(kind, &mut value, epoch);
            let age = age_nanos(kind, &value, epoch).unwrap();
            assert!(age < Duration::from_secs(1).as_nanos() as u64, "{kind:?}: {age}");
            if kind == PayloadKind::Json {
                let parsed: serde_json::Value = serde_json::from_slice(&value).unwrap();
                let sent = u64::from_str_radix(parsed["sent"].as_str().unwrap(), 16).unwrap();
                assert!(sent >= Duration::from_secs(3).as_nanos() as u64, "{parsed}");
            }
        }
        assert_eq!(age_nanos(PayloadKind::Json, b"{}", epoch), None);
    }
}
