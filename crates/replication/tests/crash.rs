//! A replicated partition's storage through power loss at every step, on the simulated disk:
//! an append whose completion was reported survives, and so does a saved vote; what
//! survives of the rest is a prefix of what was appended.

use std::path::Path;
use std::sync::Arc;

use bytes::BytesMut;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, Vote,
};
use spool_replication::{Batch, SegmentLogStore, TypeConfig};
use spool_storage::batch::{BatchBuilder, ProducerStamp};
use spool_storage::sim::SimFileSystem;
use spool_storage::{LogConfig, TimestampMs};

fn open(fs: &SimFileSystem) -> SegmentLogStore {
    let config = LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() };
    SegmentLogStore::open(Arc::new(fs.clone()), Path::new("/data/p"), config, TimestampMs(0))
        .expect("open")
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

/// Entry `index` of term 1: a blank entry, a membership, then entries of one to three
/// batches (a leader puts the batches queued together in one entry) of one 8 KiB record
/// each, so that segments roll inside entries too.
fn entry(index: u64) -> Entry<TypeConfig> {
    let payload = match index {
        1 => EntryPayload::Blank,
        2 => EntryPayload::Membership(Membership::<u64, BasicNode>::new(
            vec![[1, 2, 3].into()],
            None,
        )),
        _ => {
            let kafka = (0..1 + index % 3)
                .map(|k| {
                    let mut builder = BatchBuilder::new(BytesMut::new());
                    let value = vec![(index * 3 + k) as u8; 8 * 1024];
                    builder.push(TimestampMs(1_000), None, Some(&value), &[]);
                    builder.finish(ProducerStamp::NONE).freeze()
                })
                .collect();
            EntryPayload::Normal(Batch::new(kafka, None))
        }
    };
    Entry { log_id: log_id(1, index), payload }
}

/// Saves a vote, then appends entries 1..=20 two per call. Returns whether the vote was
/// saved and the last index whose append reported completion.
async fn run(store: &mut SegmentLogStore) -> (bool, u64) {
    let voted = store.save_vote(&Vote::new(1, 1)).await.is_ok();
    let mut completed = 0;
    for first in (1..=20).step_by(2) {
        if store.blocking_append([entry(first), entry(first + 1)]).await.is_err() {
            break;
        }
        completed = first + 1;
    }
    (voted, completed)
}

#[tokio::test]
async fn what_an_append_completed_survives_power_loss_at_any_step() {
    let steps = {
        let fs = SimFileSystem::new();
        let mut store = open(&fs);
        let before = fs.steps();
        assert_eq!(run(&mut store).await, (true, 20));
        fs.steps() - before
    };
    for halt in 0..=steps {
        for seed in [halt, halt * 104_729 + 7] {
            let fs = SimFileSystem::new();
            let mut store = open(&fs);
            fs.halt_after_steps(halt);
            let (voted, completed) = run(&mut store).await;
            drop(store);
            fs.crash_seeded(seed);
            let mut store = open(&fs);
            let context = format!("halt after {halt} of {steps} steps, seed {seed}");
            let vote = store.read_vote().await.unwrap();
            if voted {
                assert_eq!(vote, Some(Vote::new(1, 1)), "{context}");
            }
            let entries = store.try_get_log_entries(0..100).await.unwrap();
            let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
            assert_eq!(indexes, (1..=indexes.len() as u64).collect::<Vec<_>>(), "{context}");
            assert!(indexes.len() as u64 >= completed, "{context}: completed {completed}");
            for stored in &entries {
                let expected = entry(stored.log_id.index);
                match (&stored.payload, &expected.payload) {
                    (EntryPayload::Normal(got), EntryPayload::Normal(sent)) => {
                        // All but the fields the log stamps (base offset, leader epoch).
                        assert_eq!(got.kafka.len(), sent.kafka.len(), "{context}: batches");
                        for (got, sent) in got.kafka.iter().zip(&sent.kafka) {
                            let same = got[16..] == sent[16..];
                            assert!(same, "{context}: entry {} changed", stored.log_id.index);
                        }
                    }
                    (got, sent) => assert_eq!(got, sent, "{context}"),
                }
            }
            let state = store.get_log_state().await.unwrap();
            let last = indexes.last().map(|&index| log_id(1, index));
            assert_eq!(state.last_log_id, last, "{context}");
        }
    }
}

#[tokio::test]
async fn a_follower_s_entry_at_another_offset_than_the_leader_s_is_refused() {
    let fs = SimFileSystem::new();
    let mut store = open(&fs);
    store.blocking_append([entry(1), entry(2)]).await.unwrap();
    let mut wrong = entry(3);
    if let EntryPayload::Normal(batch) = &mut wrong.payload {
        batch.base_offset = Some(7);
    }
    let error = store.blocking_append([wrong]).await.unwrap_err().to_string();
    assert!(error.contains("offset 7 on the leader"), "{error}");
}
