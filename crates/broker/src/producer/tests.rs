use super::*;
use spool_storage::sim::Rng;

fn batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    record_count: u32,
) -> Option<SequencedBatch> {
    Some(SequencedBatch {
        stamp: ProducerStamp { producer_id, producer_epoch: epoch, base_sequence },
        record_count,
    })
}

/// Checks a group against `table`, then appends what it accepts at `next_offset` and
/// records it, as the partition writer does.
fn append(
    table: &mut ProducerTable,
    next_offset: &mut u64,
    group: &[Option<SequencedBatch>],
) -> Vec<Verdict> {
    let verdicts = table.check_group(group);
    for (batch, verdict) in group.iter().zip(&verdicts) {
        if let (Some(batch), Verdict::Append) = (batch, verdict) {
            let base = Offset(*next_offset);
            *next_offset += u64::from(batch.record_count);
            table.record(*batch, base, Offset(*next_offset - 1));
        } else if let (None, Verdict::Append) = (batch, verdict) {
            *next_offset += 1;
        }
    }
    verdicts
}

fn refused(verdict: Verdict) -> SequenceError {
    match verdict {
        Verdict::Refuse(error) => error,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn the_table_of_verdicts() {
    let mut table = ProducerTable::new();
    let mut next = 0;
    // Unknown producer: sequence 0 is appended, anything else is out of order.
    assert_eq!(append(&mut table, &mut next, &[batch(7, 0, 0, 3)]), [Verdict::Append]);
    assert!(matches!(
        refused(table.check_group(&[batch(8, 0, 5, 1)])[0]),
        SequenceError::OutOfOrder { expected: 0, found: 5, .. }
    ));
    // The next expected sequence is appended; a retry gets the original offsets.
    assert_eq!(append(&mut table, &mut next, &[batch(7, 0, 3, 2)]), [Verdict::Append]);
    assert_eq!(
        table.check_group(&[batch(7, 0, 0, 3)]),
        [Verdict::Duplicate { base_offset: Offset(0), last_offset: Offset(2) }]
    );
    assert_eq!(
        table.check_group(&[batch(7, 0, 3, 2)]),
        [Verdict::Duplicate { base_offset: Offset(3), last_offset: Offset(4) }]
    );
    // A gap is refused and names what was expected.
    assert!(matches!(
        refused(table.check_group(&[batch(7, 0, 9, 1)])[0]),
        SequenceError::OutOfOrder { expected: 5, found: 9, .. }
    ));
    // The same sequence with another record count is not the same batch.
    assert!(matches!(
        refused(table.check_group(&[batch(7, 0, 3, 1)])[0]),
        SequenceError::OldDuplicate { expected: 5, .. }
    ));
    // A newer epoch restarts at 0 and fences the older one.
    assert!(matches!(
        refused(table.check_group(&[batch(7, 1, 5, 1)])[0]),
        SequenceError::OutOfOrder { expected: 0, .. }
    ));
    assert_eq!(append(&mut table, &mut next, &[batch(7, 1, 0, 1)]), [Verdict::Append]);
    assert!(matches!(
        refused(table.check_group(&[batch(7, 0, 5, 1)])[0]),
        SequenceError::StaleEpoch { epoch: 0, current_epoch: 1, .. }
    ));
    // Bad stamps and overflow are refused.
    assert!(matches!(
        refused(table.check_group(&[batch(9, -2, 0, 1)])[0]),
        SequenceError::BadStamp { .. }
    ));
    assert!(matches!(
        refused(table.check_group(&[batch(9, 0, i32::MAX, 2)])[0]),
        SequenceError::SequenceOverflow { .. }
    ));
    // Batches without a stamp are always appended.
    assert_eq!(table.check_group(&[None]), [Verdict::Append]);
}

#[test]
fn a_group_sees_its_own_earlier_batches() {
    let mut table = ProducerTable::new();
    let group = [batch(1, 0, 0, 2), batch(1, 0, 2, 2), batch(1, 0, 0, 2), batch(1, 0, 6, 1), None];
    let verdicts = table.check_group(&group);
    assert_eq!(
        verdicts[..3],
        [Verdict::Append, Verdict::Append, Verdict::DuplicateInGroup { index: 0 }]
    );
    assert!(matches!(
        refused(verdicts[3]),
        SequenceError::OutOfOrder { expected: 4, found: 6, .. }
    ));
    assert_eq!(verdicts[4], Verdict::Append);
    // Nothing is recorded by a check alone.
    assert!(table.is_empty());
    let mut next = 0;
    append(&mut table, &mut next, &group);
    assert_eq!(table.check_group(&[batch(1, 0, 4, 1)]), [Verdict::Append]);
}

#[test]
fn only_the_latest_batches_are_retained() {
    let mut table = ProducerTable::new();
    let mut next = 0;
    for sequence in 0..(PRODUCER_BATCHES_RETAINED as i32 + 2) {
        assert_eq!(append(&mut table, &mut next, &[batch(1, 0, sequence, 1)]), [Verdict::Append]);
    }
    assert!(matches!(
        refused(table.check_group(&[batch(1, 0, 0, 1)])[0]),
        SequenceError::OldDuplicate { .. }
    ));
    let latest = PRODUCER_BATCHES_RETAINED as i32 + 1;
    assert_eq!(
        table.check_group(&[batch(1, 0, latest, 1)]),
        [Verdict::Duplicate {
            base_offset: Offset(latest as u64),
            last_offset: Offset(latest as u64)
        }]
    );
}

#[test]
fn the_least_recent_producer_is_forgotten_and_the_table_turns_incomplete() {
    let mut table = ProducerTable::new();
    let mut next = 0;
    for producer in 0..PRODUCERS_PER_PARTITION_MAX as i64 + 1 {
        append(&mut table, &mut next, &[batch(producer, 0, 0, 1)]);
    }
    assert_eq!(table.len(), PRODUCERS_PER_PARTITION_MAX);
    assert!(table.is_incomplete());
    // Producer 0 was forgotten: it may continue where it was, since its state is gone.
    assert_eq!(table.check_group(&[batch(0, 0, 1, 1)]), [Verdict::Append]);
}

/// A batch a model producer sent: its sequence, record count, and offsets once appended.
type Sent = (i32, u32, Option<(u64, u64)>);

/// Producers that retry at random (some retries in the same group as the original, some
/// later) and occasionally skip a batch: the log, modelled as a `Vec`, ends up holding each
/// producer's sequences exactly once and in order, every retry is answered with the
/// original's offsets, and a table rebuilt from the log decides like the live one.
#[test]
fn model_retries_and_gaps() {
    for seed in 1..=200u64 {
        let mut rng = Rng::new(seed);
        let mut table = ProducerTable::new();
        // The log: (producer, sequence) per record.
        let mut log: Vec<(i64, i32)> = Vec::new();
        // Per producer: the next sequence to send, and sent batches with their offsets.
        let mut next_sequence = [0i32; 3];
        let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); 3];
        for _ in 0..60 {
            let mut group = Vec::new();
            for _ in 0..=rng.below(4) {
                let producer = rng.below(3) as usize;
                let choice = rng.below(10);
                let batches = &sent[producer];
                if choice < 3 && !batches.is_empty() {
                    // A retry of a recent batch.
                    let recent = batches.len().min(PRODUCER_BATCHES_RETAINED);
                    let pick = batches.len() - 1 - rng.below(recent as u64) as usize;
                    let (sequence, count, _) = batches[pick];
                    group.push((producer, sequence, count, Some(pick)));
                } else if choice == 3 {
                    // A gap: skips one sequence.
                    group.push((producer, next_sequence[producer] + 1, 1, None));
                } else {
                    let count = 1 + rng.below(3) as u32;
                    group.push((producer, next_sequence[producer], count, None));
                    sent[producer].push((next_sequence[producer], count, None));
                    next_sequence[producer] += count as i32;
                }
            }
            let stamps: Vec<_> =
                group.iter().map(|&(p, s, c, _)| batch(p as i64, 0, s, c)).collect();
            let verdicts = table.check_group(&stamps);
            let mut results: Vec<Option<(u64, u64)>> = Vec::new();
            for (i, (&(producer, sequence, count, retry), verdict)) in
                group.iter().zip(&verdicts).enumerate()
            {
                let result = match *verdict {
                    Verdict::Append => {
                        let base = log.len() as u64;
                        for k in 0..count as i32 {
                            log.push((producer as i64, sequence + k));
                        }
                        let last = log.len() as u64 - 1;
                        table.record(stamps[i].unwrap(), Offset(base), Offset(last));
                        if let Some(entry) = sent[producer].iter_mut().find(|b| b.0 == sequence) {
                            entry.2 = Some((base, last));
                        }
                        Some((base, last))
                    }
                    Verdict::Duplicate { base_offset, last_offset } => {
                        Some((base_offset.0, last_offset.0))
                    }
                    Verdict::DuplicateInGroup { index } => results[index],
                    Verdict::Refuse(SequenceError::OutOfOrder { .. }) => {
                        // Either a deliberate gap, or a batch whose predecessor was refused
                        // in this same group (never, here: only gaps are refused).
                        assert!(
                            retry.is_none(),
                            "seed {seed}: a retry was refused as out of order"
                        );
                        None
                    }
                    Verdict::Refuse(other) => panic!("seed {seed}: unexpected {other:?}"),
                };
                if let (Some(pick), Some(got)) = (retry, result) {
                    assert_eq!(
                        sent[producer][pick].2,
                        Some(got),
                        "seed {seed}: a retry got other offsets"
                    );
                }
                results.push(result);
            }
        }
        for producer in 0..3i64 {
            let sequences: Vec<i32> =
                log.iter().filter(|(p, _)| *p == producer).map(|(_, s)| *s).collect();
            let expected: Vec<i32> = (0..sequences.len() as i32).collect();
            assert_eq!(sequences, expected, "seed {seed}: producer {producer}'s records");
        }
        // Rebuild from the log's batches and compare decisions.
        let mut rebuilt = ProducerTable::new();
        let mut offset = 0u64;
        while (offset as usize) < log.len() {
            let (producer, sequence) = log[offset as usize];
            let mut end = offset;
            while (end as usize + 1) < log.len() && log[end as usize + 1].0 == producer {
                end += 1;
            }
            // One batch per run of a producer's records: the sequence bookkeeping is the same.
            let count = (end - offset + 1) as u32;
            rebuilt.record(
                batch(producer, 0, sequence, count).unwrap(),
                Offset(offset),
                Offset(end),
            );
            offset = end + 1;
        }
        for (producer, next) in next_sequence.iter().enumerate() {
            let probe = [batch(producer as i64, 0, *next, 1)];
            let live = table.check_group(&probe);
            assert_eq!(rebuilt.check_group(&probe), live, "seed {seed}");
        }
    }
}
