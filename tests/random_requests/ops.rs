//! The requests of the random test as data: topic names, settings, records, damage to raw
//! batches and the [`Op`]s built from them, with proptest strategies for each and the encoding
//! of a raw batch.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use spool_broker::limits::PARTITIONS_PER_TOPIC_MAX;
use spool_proto::limits::TIMESTAMP_MS_MAX;
use spool_proto::v1::FsyncPolicy;
use spool_proto::v1::fsync_policy::{Always, Never, Policy};
use spool_proto::v1::start_position::{Earliest, Latest, Position};
use spool_storage::TimestampMs;
use spool_storage::batch::v2::{kafka, kafka_crc};
use spool_storage::batch::{self, BatchBuilder, ProducerStamp};
use spool_storage::limits::{FSYNC_INTERVAL_MS_MAX, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN};

/// Topic names the requests use, and whether the API accepts each. Most requests name one of
/// the first two, so topics live long enough to hold records.
pub const NAMES: &[(&str, bool)] = &[
    ("t", true),
    ("u", true),
    ("Mixed.name_0-9", true),
    ("", false),
    (".", false),
    ("..", false),
    ("../up", false),
    ("a/b", false),
    ("with space", false),
    ("caf\u{e9}", false),
    ("nul\0", false),
];

pub fn name() -> impl Strategy<Value = usize> {
    prop_oneof![8 => 0usize..2, 1 => 0..NAMES.len()]
}

/// Values at and around the edges the API documents, and arbitrary ones.
pub fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0), Just(1), 0u64..16, Just(u64::from(u32::MAX)), Just(u64::MAX), any::<u64>()]
}

pub fn edgy_u32() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(1), 0u32..4, Just(256), Just(257), Just(u32::MAX), any::<u32>()]
}

pub fn fsync() -> impl Strategy<Value = Option<FsyncPolicy>> {
    let policy = prop_oneof![
        Just(None),
        Just(Some(Policy::Always(Always {}))),
        Just(Some(Policy::Never(Never {}))),
        edgy_u64().prop_map(|ms| Some(Policy::IntervalMs(ms))),
        (1u64..200).prop_map(|ms| Some(Policy::IntervalMs(ms))),
    ];
    prop::option::weighted(0.8, policy.prop_map(|policy| FsyncPolicy { policy }))
}

/// Retention and segment size: mostly absent (retention would delete what the model
/// expects to find; a topic given any is left out of the final comparison).
/// Retention time, retention size and segment size, each set or not.
pub type Sizes = (Option<u64>, Option<u64>, Option<u64>);

pub fn sizes() -> impl Strategy<Value = Sizes> {
    (
        prop::option::weighted(0.1, edgy_u64()),
        prop::option::weighted(0.1, edgy_u64()),
        prop::option::weighted(0.15, prop_oneof![edgy_u64(), Just(64 * 1024), Just(1 << 20)]),
    )
}

/// A topic's compression: mostly unset, else one of the seven values or an unknown one.
pub fn compression() -> impl Strategy<Value = Option<i32>> {
    prop::option::weighted(0.3, prop_oneof![7 => 0i32..7, 1 => any::<i32>()])
}

/// Whether the API documents these settings as acceptable: a partition count (0 for the
/// default) of at most 256, an fsync interval of 1 ms to an hour, a segment size of 64 KiB
/// to 1 GiB, a known compression and, at creation, retention limits of at least 1 (an
/// alter's 0 removes one).
pub fn settings_valid(
    partitions: Option<u32>,
    fsync: Option<FsyncPolicy>,
    sizes: &Sizes,
    compression: Option<i32>,
    alter: bool,
) -> bool {
    let interval_ok = match fsync.and_then(|f| f.policy) {
        Some(Policy::IntervalMs(ms)) => (1..=FSYNC_INTERVAL_MS_MAX).contains(&ms),
        _ => true,
    };
    let (retention_ms, retention_bytes, segment_bytes) = *sizes;
    partitions.is_none_or(|p| p <= PARTITIONS_PER_TOPIC_MAX)
        && interval_ok
        && compression.is_none_or(|c| (0..7).contains(&c))
        && (alter || (retention_ms != Some(0) && retention_bytes != Some(0)))
        && segment_bytes.is_none_or(|b| (SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&b))
}

/// One record's fields; `value` is a length (filled with a pattern) or a tombstone.
#[derive(Debug, Clone)]
pub struct RecordSpec {
    pub key: Option<Vec<u8>>,
    pub value: Option<usize>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
}

pub fn record_spec() -> impl Strategy<Value = RecordSpec> {
    let timestamp = prop_oneof![
        8 => 1_600_000_000_000i64..1_900_000_000_000,
        1 => prop_oneof![
            Just(0i64),
            Just(TIMESTAMP_MS_MAX),
            Just(TIMESTAMP_MS_MAX + 1),
            Just(-1),
            Just(i64::MIN),
            Just(i64::MAX),
        ],
    ];
    let header = (".{0,6}", prop::option::of(prop::collection::vec(any::<u8>(), 0..8)));
    (
        prop::option::of(prop::collection::vec(any::<u8>(), 0..12)),
        prop::option::weighted(0.9, prop_oneof![8 => 0usize..300, 1 => 0usize..20_000]),
        prop::collection::vec(header, 0..3),
        prop::option::weighted(0.3, timestamp),
    )
        .prop_map(|(key, value, headers, timestamp_ms)| RecordSpec {
            key,
            value,
            headers,
            timestamp_ms,
        })
}

/// How a raw batch is damaged after it is encoded.
#[derive(Debug, Clone)]
pub enum Damage {
    None,
    /// One byte changed (the CRC then fails, or the change is to the CRC itself).
    Flip {
        at: usize,
        xor: u8,
    },
    /// One byte changed and the CRC made to match, so the change itself is what is judged.
    FlipResealed {
        at: usize,
        xor: u8,
    },
    Truncate {
        keep: usize,
    },
    Extend {
        bytes: Vec<u8>,
    },
}

pub fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        8 => Just(Damage::None),
        2 => (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Damage::Flip { at, xor }),
        2 => (any::<usize>(), 1u8..=255).prop_map(|(at, xor)| Damage::FlipResealed { at, xor }),
        1 => any::<usize>().prop_map(|keep| Damage::Truncate { keep }),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(|bytes| Damage::Extend { bytes }),
    ]
}

/// A producer stamp as (producer id, epoch, base sequence).
pub type Stamp = (i64, i32, i32);

/// A committed offset as (topic name's index in [`NAMES`], partition, offset).
pub type Committed = (usize, u32, u64);

#[derive(Debug, Clone)]
pub enum Op {
    Create {
        name: usize,
        partitions: u32,
        fsync: Option<FsyncPolicy>,
        sizes: Sizes,
        compression: Option<i32>,
    },
    Delete {
        name: usize,
    },
    Describe {
        name: usize,
    },
    Alter {
        name: usize,
        fsync: Option<FsyncPolicy>,
        sizes: Sizes,
        compression: Option<i32>,
    },
    Produce {
        name: usize,
        partition: Option<u32>,
        acks: i32,
        records: Vec<RecordSpec>,
        /// Sent as a raw batch (partition and stamp as given) instead of a record list.
        raw: Option<(Damage, Option<Stamp>)>,
        stamp: Option<Stamp>,
    },
    Fetch {
        name: usize,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
        encoding: i32,
    },
    Replay {
        name: usize,
        partition: u32,
        position: Option<Position>,
        encoding: i32,
    },
    /// Joins group `group` (a name from [`NAMES`]) for `topics`, waits for its assignment,
    /// commits if `commit` is given (its generation plus the first field: mostly 0, else a
    /// stale or future one; offsets as (topic, partition, offset)), and leaves. `member_id`
    /// is the member it asks to resume: mostly none, else an id no member holds, or one
    /// longer than any id.
    Join {
        group: usize,
        topics: Vec<usize>,
        session_timeout_ms: u32,
        reset: i32,
        encoding: i32,
        commit: Option<(u64, Vec<Committed>)>,
        member_id: String,
    },
    DescribeGroup {
        group: usize,
    },
    ResetGroup {
        group: usize,
        name: usize,
        to: Option<Position>,
        partition: Option<u32>,
    },
    DeleteGroup {
        group: usize,
    },
    /// ElectLeaders for some partitions of one topic (none: all of them).
    Elect {
        name: usize,
        partitions: Vec<u32>,
        timeout_ms: u32,
    },
}

pub fn partition() -> impl Strategy<Value = u32> {
    prop_oneof![6 => 0u32..3, 1 => edgy_u32()]
}

pub fn op() -> impl Strategy<Value = Op> {
    let stamp = prop::option::weighted(
        0.05,
        (prop_oneof![Just(-1i64), Just(0), 0..3i64, any::<i64>()], any::<i32>(), any::<i32>()),
    );
    let encoding = prop_oneof![4 => 0i32..3, 1 => any::<i32>()];
    let position = prop::option::of(prop_oneof![
        Just(Position::Earliest(Earliest {})),
        Just(Position::Latest(Latest {})),
        edgy_u64().prop_map(Position::Offset),
        prop_oneof![Just(i64::MIN), Just(-1i64), Just(0), Just(i64::MAX), any::<i64>()]
            .prop_map(Position::TimestampMs),
    ]);
    let commit = prop::option::weighted(
        0.5,
        (
            prop_oneof![4 => Just(0u64), 1 => any::<u64>()],
            prop::collection::vec(
                (0usize..2, 0u32..3, prop_oneof![3 => 0u64..10, 1 => edgy_u64()]),
                0..4,
            ),
        ),
    );
    prop_oneof![
        3 => (name(), prop_oneof![3 => 0u32..4, 1 => edgy_u32()], fsync(), sizes(), compression())
            .prop_map(|(name, partitions, fsync, sizes, compression)| Op::Create {
                name, partitions, fsync, sizes, compression,
            }),
        1 => name().prop_map(|name| Op::Delete { name }),
        1 => name().prop_map(|name| Op::Describe { name }),
        1 => (name(), fsync(), sizes(), compression())
            .prop_map(|(name, fsync, sizes, compression)| Op::Alter { name, fsync, sizes, compression }),
        10 => (
            name(),
            prop::option::weighted(0.6, partition()),
            prop_oneof![12 => 0i32..4, 1 => any::<i32>()],
            prop::collection::vec(record_spec(), 0..5),
            prop::option::weighted(0.4, (damage(), stamp.clone())),
            stamp,
        )
            .prop_map(|(name, partition, acks, records, raw, stamp)| Op::Produce {
                name, partition, acks, records, raw, stamp,
            }),
        3 => (name(), partition(), edgy_u64(), edgy_u32(), prop_oneof![Just(0u32), Just(u32::MAX)], encoding.clone())
            .prop_map(|(name, partition, offset, max_bytes, max_wait_ms, encoding)| Op::Fetch {
                name, partition, offset, max_bytes, max_wait_ms, encoding,
            }),
        2 => (name(), partition(), position.clone(), encoding.clone())
            .prop_map(|(name, partition, position, encoding)| Op::Replay { name, partition, position, encoding }),
        2 => (
            name(),
            prop_oneof![9 => prop::collection::vec(0usize..2, 1..3), 1 => prop::collection::vec(name(), 0..3)],
            prop_oneof![9 => Just(10_000u32), 1 => edgy_u32()],
            prop_oneof![9 => 0i32..3, 1 => any::<i32>()],
            prop_oneof![9 => 0i32..3, 1 => any::<i32>()],
            commit,
            prop_oneof![6 => Just(String::new()), 2 => "[0-9a-f]{1,12}-[0-9]{1,3}", 1 => Just("m".repeat(65))],
        )
            .prop_map(|(group, topics, session_timeout_ms, reset, encoding, commit, member_id)| Op::Join {
                group, topics, session_timeout_ms, reset, encoding, commit, member_id,
            }),
        1 => name().prop_map(|group| Op::DescribeGroup { group }),
        1 => (name(), name(), position, prop::option::weighted(0.3, partition()))
            .prop_map(|(group, name, to, partition)| Op::ResetGroup { group, name, to, partition }),
        1 => name().prop_map(|group| Op::DeleteGroup { group }),
        1 => (name(), prop::collection::vec(partition(), 0..4), prop_oneof![3 => Just(0u32), 1 => edgy_u32()])
            .prop_map(|(name, partitions, timeout_ms)| Op::Elect { name, partitions, timeout_ms }),
    ]
}

/// The value of a record spec: its length in a pattern that differs per request.
pub fn value_bytes(spec: &RecordSpec, serial: u64, index: usize) -> Option<Bytes> {
    spec.value.map(|len| {
        let seed = serial.wrapping_mul(31).wrapping_add(index as u64);
        Bytes::from((0..len).map(|i| (seed as usize + i) as u8).collect::<Vec<u8>>())
    })
}

pub fn raw_batch(
    records: &[RecordSpec],
    serial: u64,
    damage: &Damage,
    stamp: ProducerStamp,
) -> Bytes {
    let mut builder = BatchBuilder::new(BytesMut::new());
    for (index, spec) in records.iter().enumerate() {
        let value = value_bytes(spec, serial, index);
        let headers: Vec<batch::Header<'_>> =
            spec.headers.iter().map(|(k, v)| batch::Header::new(k, v.as_deref())).collect();
        let timestamp = TimestampMs(spec.timestamp_ms.unwrap_or(1_700_000_000_000));
        builder.push(timestamp, spec.key.as_deref(), value.as_deref(), &headers);
    }
    let mut batch = if records.is_empty() {
        // An empty batch cannot be built: send a bare header instead.
        let mut bytes = BytesMut::zeroed(kafka::RECORDS);
        bytes[kafka::MAGIC] = kafka::MAGIC_V2;
        bytes
    } else {
        builder.finish(stamp)
    };
    let len = batch.len();
    match damage {
        Damage::None => {}
        Damage::Flip { at, xor } => batch[at % len] ^= xor,
        Damage::FlipResealed { at, xor } => {
            batch[at % len] ^= xor;
            if len > kafka::ATTRIBUTES {
                let crc = kafka_crc(&batch[kafka::ATTRIBUTES..]);
                batch[kafka::CRC..kafka::CRC + 4].copy_from_slice(&crc.to_be_bytes());
            }
        }
        Damage::Truncate { keep } => batch.truncate(keep % len),
        Damage::Extend { bytes } => batch.extend_from_slice(bytes),
    }
    batch.freeze()
}
