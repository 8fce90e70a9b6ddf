//! Committed offsets: what each group has consumed, and the records that make it durable.
//!
//! Every commit (and every reset) is one record in an internal Spool log, written and fsynced
//! by the server before the commit is acknowledged. The record's key is the group's name; its
//! value is JSON, so `spool dump --records` shows it to a person:
//!
//! ```json
//! {"v":1,"group":"billing","offsets":[{"topic":"orders","partition":3,"offset":120}]}
//! ```
//!
//! `offset` is the next offset the group will consume (one past the last record it
//! processed). At start-up the server folds every record, in log order, into
//! [`CommittedOffsets`]: the latest value of each (group, topic, partition) wins.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spool_storage::Offset;
use thiserror::Error;

use super::{GroupName, TopicPartition};
use crate::TopicName;

const RECORD_VERSION: u32 = 1;

/// The committed offset of every (group, topic, partition) that has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommittedOffsets {
    groups: BTreeMap<GroupName, BTreeMap<TopicPartition, Offset>>,
}

/// One commit, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    pub group: GroupName,
    pub offsets: Vec<(TopicPartition, Offset)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredCommit {
    v: u32,
    group: String,
    offsets: Vec<StoredOffset>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredOffset {
    topic: String,
    partition: u32,
    offset: u64,
}

/// A stored commit record that cannot be read back.
#[derive(Debug, Error)]
pub enum CommitRecordError {
    #[error("a committed-offsets record is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "a committed-offsets record has format version {found}; this build reads {RECORD_VERSION}"
    )]
    Version { found: u32 },
    #[error("a committed-offsets record names {name:?}, which is not a valid name")]
    Name { name: String },
}

impl CommitRecord {
    /// The record's value, as stored.
    pub fn encode(&self) -> Vec<u8> {
        let stored = StoredCommit {
            v: RECORD_VERSION,
            group: self.group.to_string(),
            offsets: self
                .offsets
                .iter()
                .map(|(tp, offset)| StoredOffset {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset: offset.0,
                })
                .collect(),
        };
        serde_json::to_vec(&stored).expect("a commit always serializes")
    }

    pub fn decode(value: &[u8]) -> Result<CommitRecord, CommitRecordError> {
        let stored: StoredCommit = serde_json::from_slice(value)?;
        if stored.v != RECORD_VERSION {
            return Err(CommitRecordError::Version { found: stored.v });
        }
        let group = GroupName::parse(&stored.group)
            .map_err(|_| CommitRecordError::Name { name: stored.group.clone() })?;
        let offsets = stored
            .offsets
            .into_iter()
            .map(|o| {
                let topic = TopicName::parse(&o.topic)
                    .map_err(|_| CommitRecordError::Name { name: o.topic.clone() })?;
                Ok((TopicPartition { topic, partition: o.partition }, Offset(o.offset)))
            })
            .collect::<Result<_, CommitRecordError>>()?;
        Ok(CommitRecord { group, offsets })
    }
}

impl CommittedOffsets {
    /// Folds stored records, oldest first.
    pub fn fold<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<CommittedOffsets, CommitRecordError> {
        let mut offsets = CommittedOffsets::default();
        for value in values {
            offsets.apply(&CommitRecord::decode(value)?);
        }
        Ok(offsets)
    }

    pub fn apply(&mut self, record: &CommitRecord) {
        let group = self.groups.entry(record.group.clone()).or_default();
        for (partition, offset) in &record.offsets {
            group.insert(partition.clone(), *offset);
        }
    }

    pub fn get(&self, group: &GroupName, partition: &TopicPartition) -> Option<Offset> {
        self.groups.get(group).and_then(|g| g.get(partition)).copied()
    }

    /// Every committed offset of one group.
    pub fn of_group(&self, group: &GroupName) -> impl Iterator<Item = (&TopicPartition, Offset)> {
        self.groups.get(group).into_iter().flat_map(|g| g.iter().map(|(p, o)| (p, *o)))
    }

    /// One record per group holding all its committed offsets: folded in any order, they give
    /// back this state (what a compaction of the offsets log writes).
    pub fn snapshot(&self) -> impl Iterator<Item = CommitRecord> + '_ {
        self.groups.iter().map(|(group, offsets)| CommitRecord {
            group: group.clone(),
            offsets: offsets
                .iter()
                .map(|(partition, offset)| (partition.clone(), *offset))
                .collect(),
        })
    }

    pub fn groups(&self) -> impl Iterator<Item = &GroupName> {
        self.groups.keys()
    }

    pub fn has_group(&self, group: &GroupName) -> bool {
        self.groups.contains_key(group)
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: u32) -> TopicPartition {
        TopicPartition { topic: TopicName::parse(topic).unwrap(), partition }
    }

    #[test]
    fn records_round_trip_and_fold_latest_wins() {
        let g = GroupName::parse("billing").unwrap();
        let first = CommitRecord {
            group: g.clone(),
            offsets: vec![(tp("a", 0), Offset(5)), (tp("a", 1), Offset(7))],
        };
        let second = CommitRecord { group: g.clone(), offsets: vec![(tp("a", 0), Offset(9))] };
        let encoded = [first.encode(), second.encode()];
        assert_eq!(CommitRecord::decode(&encoded[0]).unwrap(), first);
        assert_eq!(
            std::str::from_utf8(&encoded[1]).unwrap(),
            r#"{"v":1,"group":"billing","offsets":[{"topic":"a","partition":0,"offset":9}]}"#
        );
        let folded = CommittedOffsets::fold(encoded.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(folded.get(&g, &tp("a", 0)), Some(Offset(9)));
        assert_eq!(folded.get(&g, &tp("a", 1)), Some(Offset(7)));
        assert_eq!(folded.get(&g, &tp("b", 0)), None);
    }

    #[test]
    fn a_snapshot_folds_back_to_the_same_offsets() {
        let records = [
            CommitRecord {
                group: GroupName::parse("a").unwrap(),
                offsets: vec![(tp("x", 0), Offset(1))],
            },
            CommitRecord {
                group: GroupName::parse("b").unwrap(),
                offsets: vec![(tp("x", 1), Offset(4))],
            },
            CommitRecord {
                group: GroupName::parse("a").unwrap(),
                offsets: vec![(tp("x", 0), Offset(3)), (tp("y", 2), Offset(9))],
            },
        ];
        let encoded: Vec<Vec<u8>> = records.iter().map(CommitRecord::encode).collect();
        let folded = CommittedOffsets::fold(encoded.iter().map(Vec::as_slice)).unwrap();
        let snapshot: Vec<Vec<u8>> = folded.snapshot().map(|r| r.encode()).collect();
        assert_eq!(snapshot.len(), 2, "one record per group");
        let refolded = CommittedOffsets::fold(snapshot.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(refolded, folded);
    }

    #[test]
    fn bad_records_are_errors() {
        assert!(matches!(CommitRecord::decode(b"nope"), Err(CommitRecordError::Json(_))));
        assert!(matches!(
            CommitRecord::decode(br#"{"v":2,"group":"g","offsets":[]}"#),
            Err(CommitRecordError::Version { found: 2 })
        ));
        assert!(matches!(
            CommitRecord::decode(br#"{"v":1,"group":"a/b","offsets":[]}"#),
            Err(CommitRecordError::Name { .. })
        ));
    }
}
