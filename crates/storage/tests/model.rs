//! Model-based test: random sequences of appends, reads, timestamp lookups, syncs, rolls,
//! retention and reopening (clean or after a crash), checked after every step against a
//! plain in-memory model of the log.

mod common;

use common::*;
use proptest::prelude::*;
use spool_storage::batch::BatchBuilder;
use spool_storage::batch::{CheckedBatch, ProducerStamp};
use spool_storage::sim::SimFileSystem;
use spool_storage::{FsyncPolicy, Log, LogConfig, Offset, ReadError, TimestampMs};

#[derive(Debug, Clone)]
enum Op {
    /// Records as (timestamp relative to the clock, value size); the clock then advances.
    Append {
        records: Vec<(i64, usize)>,
        advance_ms: i64,
    },
    /// Several batches appended as one group; the one at `damaged` (if any) has a bad CRC.
    AppendGroup {
        batches: Vec<Vec<(i64, usize)>>,
        damaged: Option<usize>,
    },
    Read {
        pick: u64,
        bytes_max: u32,
    },
    ReadByTime {
        relative_ms: i64,
    },
    Sync,
    Roll,
    Retention {
        advance_ms: i64,
    },
    Reopen {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec((-50i64..50, 0usize..3000), 1..8), 0i64..400)
            .prop_map(|(records, advance_ms)| Op::Append { records, advance_ms }),
        2 => (prop::collection::vec(prop::collection::vec((-50i64..50, 0usize..3000), 1..4), 1..6),
              prop::option::weighted(0.3, 0usize..6))
            .prop_map(|(batches, damaged)| Op::AppendGroup { batches, damaged }),
        3 => (any::<u64>(), 1u32..20_000).prop_map(|(pick, bytes_max)| Op::Read { pick, bytes_max }),
        2 => (-2000i64..100).prop_map(|relative_ms| Op::ReadByTime { relative_ms }),
        2 => Just(Op::Sync),
        1 => Just(Op::Roll),
        1 => (0i64..3000).prop_map(|advance_ms| Op::Retention { advance_ms }),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

fn log_config() -> impl Strategy<Value = LogConfig> {
    let fsync = prop_oneof![
        Just(FsyncPolicy::Always),
        Just(FsyncPolicy::Interval { interval_ms: 50 }),
        Just(FsyncPolicy::Never),
    ];
    (fsync, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(fsync, by_age, by_time, by_size)| LogConfig {
            segment_bytes: 64 * 1024,
            segment_ms: by_age.then_some(2000),
            fsync,
            retention_ms: by_time.then_some(5000),
            retention_bytes: by_size.then_some(150 * 1024),
            direct_writes: true,
        },
    )
}

#[derive(Debug, Clone)]
struct ModelBatch {
    base: u64,
    max_timestamp: i64,
    records: Vec<Rec>,
}

struct Model {
    batches: Vec<ModelBatch>,
    next: u64,
}

impl Model {
    fn records_from(&self, from: u64, to: u64) -> Vec<Rec> {
        self.batches
            .iter()
            .flat_map(|b| b.records.iter())
            .filter(|r| r.offset >= from && r.offset < to)
            .cloned()
            .collect()
    }
}

fn check_against_model(log: &Log, model: &Model, policy: FsyncPolicy) {
    assert_eq!(log.next_offset().0, model.next);
    let start = model.batches.first().map_or(model.next, |b| b.base);
    assert_eq!(log.log_start_offset().0, start);
    let visible = match policy {
        FsyncPolicy::Always => log.durable_offset(),
        _ => log.next_offset(),
    };
    assert_eq!(log.log_end_offset(), visible);
    assert_eq!(read_all(log, Offset(start), 16 * 1024), model.records_from(start, visible.0));
}

/// Encodes a batch and the records the model expects from it.
fn encode(
    records: &[(i64, usize)],
    clock: i64,
    first_offset: u64,
) -> (bytes::BytesMut, ModelBatch) {
    let mut builder = BatchBuilder::new(Default::default());
    let mut recs = Vec::new();
    let mut value = Vec::new();
    for (i, (relative, size)) in records.iter().enumerate() {
        value.clear();
        value.extend((0..*size).map(|j| (j + i) as u8));
        builder.push(TimestampMs(clock + relative), Some(b"key"), Some(&value), &[]);
        recs.push(Rec {
            offset: first_offset + i as u64,
            timestamp: clock + relative,
            key: Some(b"key".to_vec()),
            value: value.clone(),
        });
    }
    let max_timestamp = recs.iter().map(|r| r.timestamp).max().unwrap();
    (
        builder.finish(ProducerStamp::NONE),
        ModelBatch { base: first_offset, max_timestamp, records: recs },
    )
}

fn run(config: LogConfig, ops: Vec<Op>) {
    let fs = SimFileSystem::new();
    let mut clock = 1_000_000i64;
    let open = |clock: i64| {
        Log::open(std::sync::Arc::new(fs.clone()), &dir(), config, TimestampMs(clock)).unwrap()
    };
    let mut log = open(clock);
    let mut model = Model { batches: Vec::new(), next: 0 };
    // Opened after a clean close and not written since: a crash now still finds it clean.
    let mut unwritten_since_clean_open = false;
    let mut value = Vec::new();
    for op in ops {
        match op {
            Op::Append { records, advance_ms } => {
                let mut builder = BatchBuilder::new(Default::default());
                let mut recs = Vec::new();
                for (i, (relative, size)) in records.iter().enumerate() {
                    value.clear();
                    value.extend((0..*size).map(|j| (j + i) as u8));
                    builder.push(TimestampMs(clock + relative), Some(b"key"), Some(&value), &[]);
                    recs.push(Rec {
                        offset: model.next + i as u64,
                        timestamp: clock + relative,
                        key: Some(b"key".to_vec()),
                        value: value.clone(),
                    });
                }
                let batch = builder.finish(ProducerStamp::NONE);
                let appended = log.append(&batch, TimestampMs(clock)).unwrap();
                unwritten_since_clean_open = false;
                assert_eq!(appended.base_offset.0, model.next);
                let max_timestamp = recs.iter().map(|r| r.timestamp).max().unwrap();
                model.batches.push(ModelBatch { base: model.next, max_timestamp, records: recs });
                model.next += records.len() as u64;
                clock += advance_ms;
                if log.sync_due(TimestampMs(clock)) {
                    log.sync(TimestampMs(clock)).unwrap();
                }
            }
            Op::AppendGroup { batches, damaged } => {
                // A damaged batch fails its check and never reaches the log; the others are
                // appended as one group.
                let mut encoded = Vec::new();
                let mut expected = Vec::new();
                let mut next = model.next;
                for (i, records) in batches.iter().enumerate() {
                    let (mut bytes, batch) = encode(records, clock, next);
                    if damaged == Some(i) {
                        let last = bytes.len() - 1;
                        bytes[last] ^= 1;
                        assert!(CheckedBatch::check(&bytes[..]).is_err(), "a damaged batch checks");
                    } else {
                        next += records.len() as u64;
                        expected.push(batch);
                        encoded.push(bytes);
                    }
                }
                let results = log.append_many(&checked(&encoded), TimestampMs(clock));
                unwritten_since_clean_open &= encoded.is_empty();
                assert_eq!(results.len(), expected.len());
                for (result, batch) in results.into_iter().zip(expected) {
                    let appended = result.unwrap();
                    assert_eq!(appended.base_offset.0, batch.base);
                    model.next = batch.base + batch.records.len() as u64;
                    model.batches.push(batch);
                }
            }
            Op::Read { pick, bytes_max } => {
                let start = log.log_start_offset().0;
                let end = log.log_end_offset().0;
                let offset = start + pick % (end - start + 1);
                let read = log.read(Offset(offset), bytes_max).unwrap();
                let got = decode(&read.bytes);
                if offset < end {
                    let first = got.first().expect("a read before the end returns a batch");
                    assert!(first.offset <= offset && offset < read.next_offset.0);
                    let expected = model.records_from(first.offset, read.next_offset.0);
                    assert_eq!(got, expected);
                } else {
                    assert!(got.is_empty());
                }
                if start > 0 {
                    assert!(matches!(
                        log.read(Offset(start - 1), bytes_max),
                        Err(ReadError::OffsetOutOfRange { .. })
                    ));
                }
            }
            Op::ReadByTime { relative_ms } => {
                let target = clock + relative_ms;
                let end = log.log_end_offset().0;
                let expected = model
                    .batches
                    .iter()
                    .filter(|b| b.base < end && b.max_timestamp >= target)
                    .find_map(|b| b.records.iter().find(|r| r.timestamp >= target))
                    .map(|r| Offset(r.offset));
                assert_eq!(log.offset_for_timestamp(TimestampMs(target)).unwrap(), expected);
            }
            Op::Sync => {
                assert_eq!(log.sync(TimestampMs(clock)).unwrap().0, model.next);
            }
            Op::Roll => {
                let active_empty = log.segments().last().unwrap().size_bytes == 0;
                log.roll().unwrap();
                unwritten_since_clean_open &= active_empty;
            }
            Op::Retention { advance_ms } => {
                clock += advance_ms;
                log.apply_retention(TimestampMs(clock)).unwrap();
                let start = log.log_start_offset().0;
                model.batches.retain(|b| b.base >= start);
                if let Some(first) = model.batches.first() {
                    assert_eq!(first.base, start, "retention deletes whole batches");
                }
                // Retention went exactly as far as the limits say.
                let segments: Vec<_> = log.segments().collect();
                if segments.len() > 1 {
                    let oldest = segments[0];
                    let expired = config.retention_ms.is_some_and(|limit| {
                        oldest.max_timestamp.is_some_and(|max| max.0 < clock - limit as i64)
                    });
                    let oversize = config
                        .retention_bytes
                        .is_some_and(|limit| log.size_bytes() - oldest.size_bytes >= limit);
                    assert!(!expired && !oversize, "retention stopped early: {segments:?}");
                }
            }
            Op::Reopen { clean } => {
                if clean {
                    log.close().unwrap();
                } else {
                    let durable = log.durable_offset().0;
                    drop(log);
                    fs.crash();
                    for batch in &mut model.batches {
                        batch.records.retain(|r| r.offset < durable);
                    }
                    model.batches.retain(|b| !b.records.is_empty());
                    model.next = durable;
                }
                log = open(clock);
                assert!(log.fence().is_none(), "{:?}", log.fence());
                let expected_clean = clean || unwritten_since_clean_open;
                assert_eq!(log.recovery_report().clean_shutdown, expected_clean);
                unwritten_since_clean_open = expected_clean;
            }
        }
        check_against_model(&log, &model, config.fsync);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("SPOOL_MODEL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_log_behaves_like_the_model(config in log_config(), ops in prop::collection::vec(op(), 1..80)) {
        run(config, ops);
    }
}
