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
//! processed). A commit from a Kafka client may also carry that client's metadata string for
//! a partition, stored beside its offset (`"metadata":"..."`, left out when there is none, so
//! records written before it existed read back unchanged); a commit of a partition without
//! metadata clears what an earlier one stored. Deleting a group is one record too, written and fsynced before the deletion is
//! answered:
//!
//! ```json
//! {"v":1,"group":"billing","deleted":true}
//! ```
//!
//! Forgetting some partitions' offsets and keeping the rest (Kafka's OffsetDelete) is one
//! record too, durable before it is answered:
//!
//! ```json
//! {"v":1,"group":"billing","forgotten":[{"topic":"orders","partition":3}]}
//! ```
//!
//! A Kafka classic group that settles on a new generation (its leader's assignments handed
//! out) is stored too, so that the coordinator after a restart, or another node's after a
//! failover, goes on with the same members, generation and assignments instead of making
//! every member join again (as Kafka's brokers store group metadata). Its chosen protocol's
//! metadata and each assignment are standard base64; a group that has no members any more is
//! stored with none:
//!
//! ```json
//! {"v":1,"group":"billing","classic":{"protocol_type":"consumer","protocol":"range","generation":3,
//!  "leader":"rdkafka-1","members":[{"id":"rdkafka-1","client_id":"rdkafka","client_host":"/127.0.0.1",
//!  "session_timeout_ms":45000,"rebalance_timeout_ms":300000,"metadata":"AAE=","assignment":"AAE="}]}}
//! ```
//!
//! A Spool group's members are stored whenever its membership or ownership changes (a join, a
//! leave, a removal, a revocation acknowledged), so that a restarted server, or the node
//! that takes over as coordinator, keeps each member's partitions for it while it joins again
//! naming its id. Each member's partitions name their topic by its place in `topics` (in name
//! order, so a long name is not repeated for every partition) and carry the generation the
//! member got them at (`since`) and whether they are being revoked; a group without members
//! is stored with none:
//!
//! ```json
//! {"v":1,"group":"billing","spool":{"generation":4,"topics":{"orders":2},"reset":"earliest",
//!  "members":[{"id":"18c2f-1","session_timeout_ms":10000,
//!  "owned":[{"topic_index":0,"partition":0,"since":3},{"topic_index":0,"partition":1,"since":4,"revoking":true}]}]}}
//! ```
//!
//! At start-up the server folds every record, in log order, into [`CommittedOffsets`]: the
//! latest value of each (group, topic, partition) wins, the latest classic or Spool membership of a group
//! wins, a deletion forgets every offset of its group committed before it, and a forgetting
//! the offsets of its partitions. A compaction writes the folded state, in which a deleted
//! group has no record at all. (A build from before deletions existed refuses to start on a
//! log holding one, as an unknown field, rather than bring the group back; so does a build
//! from before classic groups were stored, on a log holding one of theirs, one from before
//! forgetting, on a log holding a forgetting, and one from before Spool groups' members were
//! stored, on a log holding their membership.)

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
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
    /// The metadata strings committed with offsets, only where one is not empty.
    metadata: BTreeMap<GroupName, BTreeMap<TopicPartition, String>>,
    /// Each Kafka classic group's last stored generation, while it has members.
    classic: BTreeMap<GroupName, ClassicStable>,
    /// Each Spool group's last stored membership, while it has members.
    members: BTreeMap<GroupName, StoredMembers>,
}

/// A Spool group's stored membership, or `None` once it has no members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersRecord {
    pub group: GroupName,
    pub members: Option<StoredMembers>,
}

/// A Spool group's members, their partitions and its generation, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMembers {
    #[serde(default)]
    pub generation: u64,
    /// The subscription: each topic with its partition count.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topics: BTreeMap<String, u32>,
    /// `earliest` or `latest`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reset: String,
    pub members: Vec<StoredMember>,
}

/// One member of a [`StoredMembers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMember {
    pub id: String,
    pub session_timeout_ms: u64,
    pub owned: Vec<StoredOwned>,
}

/// A partition a [`StoredMember`] owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredOwned {
    /// The topic's place in [`StoredMembers::topics`] (in name order).
    pub topic_index: u32,
    pub partition: u32,
    /// The generation at which the member got it.
    pub since: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoking: bool,
}

/// A Kafka classic group's stored state: as the coordinator last settled it, or `None` once it
/// has no members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicGroupRecord {
    pub group: GroupName,
    pub stable: Option<ClassicStable>,
}

/// A classic group at a generation whose assignments are handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassicStable {
    pub protocol_type: String,
    /// The protocol (assignor) the group chose.
    pub protocol: String,
    pub generation: i32,
    pub leader: String,
    pub members: Vec<ClassicStoredMember>,
}

/// One member of a [`ClassicStable`] group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassicStoredMember {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// Its metadata for the group's protocol.
    #[serde(with = "base64_bytes")]
    pub metadata: Vec<u8>,
    #[serde(with = "base64_bytes")]
    pub assignment: Vec<u8>,
}

/// Bytes as standard base64 text.
mod base64_bytes {
    use super::BASE64;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        BASE64.decode(text).map_err(serde::de::Error::custom)
    }
}

/// A stored classic group: [`ClassicStable`], or an empty member list once it has none.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredClassic {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    protocol_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    protocol: String,
    #[serde(default)]
    generation: i32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    leader: String,
    members: Vec<ClassicStoredMember>,
}

/// One commit, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitRecord {
    pub group: GroupName,
    pub offsets: Vec<(TopicPartition, Offset)>,
    /// The metadata committed with some of `offsets` (Kafka's commit metadata); never empty
    /// strings, and only for partitions in `offsets`.
    pub metadata: BTreeMap<TopicPartition, String>,
}

/// One change of committed offsets, as stored in the offsets log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// A commit or a reset: these offsets replace the group's for their partitions.
    Commit(CommitRecord),
    /// The group is deleted: every offset it committed before is forgotten.
    Delete { group: GroupName },
    /// A Kafka classic group's state.
    Classic(ClassicGroupRecord),
    /// The group's offsets of these partitions are forgotten; its others stay.
    Forget { group: GroupName, partitions: Vec<TopicPartition> },
    /// A Spool group's members.
    Members(MembersRecord),
}

/// Every stored record, either shape: a commit has `offsets`, a deletion `deleted: true`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    v: u32,
    group: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offsets: Option<Vec<StoredOffset>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    classic: Option<StoredClassic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forgotten: Option<Vec<StoredPartition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spool: Option<StoredMembers>,
}

impl StoredRecord {
    /// A record of `group` with none of its shapes set yet.
    fn of(group: &GroupName) -> StoredRecord {
        StoredRecord {
            v: RECORD_VERSION,
            group: group.to_string(),
            offsets: None,
            deleted: false,
            classic: None,
            forgotten: None,
            spool: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredPartition {
    topic: String,
    partition: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredOffset {
    topic: String,
    partition: u32,
    offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<String>,
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
    #[error(
        "a committed-offsets record of group {group:?} must have one of offsets, `deleted: true`, classic, forgotten or spool"
    )]
    Shape { group: String },
}

impl CommitRecord {
    /// The record's value, as stored.
    pub fn encode(&self) -> Vec<u8> {
        let offsets = self
            .offsets
            .iter()
            .map(|(tp, offset)| StoredOffset {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                offset: offset.0,
                metadata: self.metadata.get(tp).cloned(),
            })
            .collect();
        let stored = StoredRecord { offsets: Some(offsets), ..StoredRecord::of(&self.group) };
        serde_json::to_vec(&stored).expect("a commit always serializes")
    }
}

impl OffsetsRecord {
    /// The group the record is about (also the record's key).
    pub fn group(&self) -> &GroupName {
        match self {
            OffsetsRecord::Commit(commit) => &commit.group,
            OffsetsRecord::Delete { group } => group,
            OffsetsRecord::Classic(classic) => &classic.group,
            OffsetsRecord::Forget { group, .. } => group,
            OffsetsRecord::Members(members) => &members.group,
        }
    }

    /// The record's value, as stored.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            OffsetsRecord::Commit(commit) => commit.encode(),
            OffsetsRecord::Delete { group } => {
                let stored = StoredRecord { deleted: true, ..StoredRecord::of(group) };
                serde_json::to_vec(&stored).expect("a deletion always serializes")
            }
            OffsetsRecord::Classic(ClassicGroupRecord { group, stable }) => {
                let classic = match stable.clone() {
                    Some(s) => StoredClassic {
                        protocol_type: s.protocol_type,
                        protocol: s.protocol,
                        generation: s.generation,
                        leader: s.leader,
                        members: s.members,
                    },
                    None => StoredClassic {
                        protocol_type: String::new(),
                        protocol: String::new(),
                        generation: 0,
                        leader: String::new(),
                        members: Vec::new(),
                    },
                };
                let stored = StoredRecord { classic: Some(classic), ..StoredRecord::of(group) };
                serde_json::to_vec(&stored).expect("a classic group always serializes")
            }
            OffsetsRecord::Forget { group, partitions } => {
                let forgotten = partitions
                    .iter()
                    .map(|p| StoredPartition { topic: p.topic.to_string(), partition: p.partition })
                    .collect();
                let stored = StoredRecord { forgotten: Some(forgotten), ..StoredRecord::of(group) };
                serde_json::to_vec(&stored).expect("a forgetting always serializes")
            }
            OffsetsRecord::Members(MembersRecord { group, members }) => {
                let stored = StoredRecord {
                    spool: Some(members.clone().unwrap_or_default()),
                    ..StoredRecord::of(group)
                };
                serde_json::to_vec(&stored).expect("a group's members always serialize")
            }
        }
    }

    pub fn decode(value: &[u8]) -> Result<OffsetsRecord, CommitRecordError> {
        let stored: StoredRecord = serde_json::from_slice(value)?;
        if stored.v != RECORD_VERSION {
            return Err(CommitRecordError::Version { found: stored.v });
        }
        let group = GroupName::parse(&stored.group)
            .map_err(|_| CommitRecordError::Name { name: stored.group.clone() })?;
        let topic_name = |topic: String| {
            TopicName::parse(&topic).map_err(|_| CommitRecordError::Name { name: topic })
        };
        if let Some(spool) = stored.spool {
            if stored.offsets.is_some()
                || stored.deleted
                || stored.classic.is_some()
                || stored.forgotten.is_some()
            {
                return Err(CommitRecordError::Shape { group: stored.group });
            }
            let members = (!spool.members.is_empty()).then_some(spool);
            return Ok(OffsetsRecord::Members(MembersRecord { group, members }));
        }
        let offsets = match (stored.offsets, stored.deleted, stored.classic, stored.forgotten) {
            (None, true, None, None) => return Ok(OffsetsRecord::Delete { group }),
            (Some(offsets), false, None, None) => offsets,
            (None, false, None, Some(forgotten)) => {
                let partitions = forgotten
                    .into_iter()
                    .map(|p| {
                        Ok(TopicPartition { topic: topic_name(p.topic)?, partition: p.partition })
                    })
                    .collect::<Result<_, CommitRecordError>>()?;
                return Ok(OffsetsRecord::Forget { group, partitions });
            }
            (None, false, Some(classic), None) => {
                let stable = (!classic.members.is_empty()).then_some(ClassicStable {
                    protocol_type: classic.protocol_type,
                    protocol: classic.protocol,
                    generation: classic.generation,
                    leader: classic.leader,
                    members: classic.members,
                });
                return Ok(OffsetsRecord::Classic(ClassicGroupRecord { group, stable }));
            }
            _ => return Err(CommitRecordError::Shape { group: stored.group }),
        };
        let mut metadata = BTreeMap::new();
        let offsets = offsets
            .into_iter()
            .map(|o| {
                let partition =
                    TopicPartition { topic: topic_name(o.topic)?, partition: o.partition };
                if let Some(text) = o.metadata.filter(|text| !text.is_empty()) {
                    metadata.insert(partition.clone(), text);
                }
                Ok((partition, Offset(o.offset)))
            })
            .collect::<Result<_, CommitRecordError>>()?;
        Ok(OffsetsRecord::Commit(CommitRecord { group, offsets, metadata }))
    }
}

impl From<CommitRecord> for OffsetsRecord {
    fn from(commit: CommitRecord) -> OffsetsRecord {
        OffsetsRecord::Commit(commit)
    }
}

impl CommittedOffsets {
    /// Folds stored records, oldest first.
    pub fn fold<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<CommittedOffsets, CommitRecordError> {
        let mut offsets = CommittedOffsets::default();
        for value in values {
            offsets.apply_record(&OffsetsRecord::decode(value)?);
        }
        Ok(offsets)
    }

    pub fn apply(&mut self, record: &CommitRecord) {
        let group = self.groups.entry(record.group.clone()).or_default();
        for (partition, offset) in &record.offsets {
            group.insert(partition.clone(), *offset);
        }
        let metadata = self.metadata.entry(record.group.clone()).or_default();
        for (partition, _) in &record.offsets {
            match record.metadata.get(partition) {
                Some(text) => metadata.insert(partition.clone(), text.clone()),
                None => metadata.remove(partition),
            };
        }
        if metadata.is_empty() {
            self.metadata.remove(&record.group);
        }
    }

    /// Applies a stored record of either kind.
    pub fn apply_record(&mut self, record: &OffsetsRecord) {
        match record {
            OffsetsRecord::Commit(commit) => self.apply(commit),
            OffsetsRecord::Delete { group } => {
                self.remove(group);
            }
            OffsetsRecord::Classic(ClassicGroupRecord { group, stable: Some(stable) }) => {
                self.classic.insert(group.clone(), stable.clone());
            }
            OffsetsRecord::Classic(ClassicGroupRecord { group, stable: None }) => {
                self.classic.remove(group);
            }
            OffsetsRecord::Forget { group, partitions } => {
                self.forget(group, partitions);
            }
            OffsetsRecord::Members(MembersRecord { group, members: Some(members) }) => {
                self.members.insert(group.clone(), members.clone());
            }
            OffsetsRecord::Members(MembersRecord { group, members: None }) => {
                self.members.remove(group);
            }
        }
    }

    /// Forgets `group`'s committed offsets (and metadata) of `partitions`; returns those it
    /// had, with their offsets, in the order asked. A group left without offsets is not known
    /// here any more.
    pub fn forget(
        &mut self,
        group: &GroupName,
        partitions: &[TopicPartition],
    ) -> Vec<(TopicPartition, Offset)> {
        let Some(offsets) = self.groups.get_mut(group) else { return Vec::new() };
        let forgotten: Vec<(TopicPartition, Offset)> = partitions
            .iter()
            .filter_map(|p| offsets.remove(p).map(|offset| (p.clone(), offset)))
            .collect();
        if offsets.is_empty() {
            self.groups.remove(group);
        }
        if let Some(metadata) = self.metadata.get_mut(group) {
            for partition in partitions {
                metadata.remove(partition);
            }
            if metadata.is_empty() {
                self.metadata.remove(group);
            }
        }
        forgotten
    }

    /// Forgets every committed offset of `group` (and its stored classic state and
    /// members); returns them, sorted.
    pub fn remove(&mut self, group: &GroupName) -> Vec<(TopicPartition, Offset)> {
        self.metadata.remove(group);
        self.classic.remove(group);
        self.members.remove(group);
        self.groups.remove(group).map(|offsets| offsets.into_iter().collect()).unwrap_or_default()
    }

    /// Each group's committed partitions of the topics `of` picks, by group.
    pub fn partitions_of_topics(
        &self,
        of: impl Fn(&TopicName) -> bool,
    ) -> Vec<(GroupName, Vec<TopicPartition>)> {
        self.groups
            .iter()
            .filter_map(|(group, offsets)| {
                let picked: Vec<TopicPartition> =
                    offsets.keys().filter(|p| of(&p.topic)).cloned().collect();
                (!picked.is_empty()).then(|| (group.clone(), picked))
            })
            .collect()
    }

    pub fn get(&self, group: &GroupName, partition: &TopicPartition) -> Option<Offset> {
        self.groups.get(group).and_then(|g| g.get(partition)).copied()
    }

    /// Every non-empty metadata string of one group.
    pub fn metadata_of_group(
        &self,
        group: &GroupName,
    ) -> impl Iterator<Item = (&TopicPartition, &str)> {
        self.metadata.get(group).into_iter().flat_map(|g| g.iter().map(|(p, m)| (p, m.as_str())))
    }

    /// The metadata committed with `partition`'s offset; empty when there is none.
    pub fn metadata(&self, group: &GroupName, partition: &TopicPartition) -> &str {
        self.metadata.get(group).and_then(|g| g.get(partition)).map_or("", String::as_str)
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
            metadata: self.metadata.get(group).cloned().unwrap_or_default(),
        })
    }

    /// Every record of this state, commits, classic groups and Spool groups' members:
    /// folded, they give it back (what a compaction of the offsets log writes).
    pub fn records(&self) -> impl Iterator<Item = OffsetsRecord> + '_ {
        let classic = self.classic.iter().map(|(group, stable)| {
            OffsetsRecord::Classic(ClassicGroupRecord {
                group: group.clone(),
                stable: Some(stable.clone()),
            })
        });
        let members = self.members.iter().map(|(group, members)| {
            OffsetsRecord::Members(MembersRecord {
                group: group.clone(),
                members: Some(members.clone()),
            })
        });
        self.snapshot().map(OffsetsRecord::Commit).chain(classic).chain(members)
    }

    /// Each Spool group's last stored members.
    pub fn stored_members(&self) -> impl Iterator<Item = (&GroupName, &StoredMembers)> {
        self.members.iter()
    }

    /// A Spool group's last stored members.
    pub fn members_of(&self, group: &GroupName) -> Option<&StoredMembers> {
        self.members.get(group)
    }

    /// Each Kafka classic group's last stored state.
    pub fn classic_groups(&self) -> impl Iterator<Item = (&GroupName, &ClassicStable)> {
        self.classic.iter()
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
            metadata: BTreeMap::new(),
        };
        let second = CommitRecord {
            group: g.clone(),
            offsets: vec![(tp("a", 0), Offset(9))],
            metadata: BTreeMap::new(),
        };
        let encoded = [first.encode(), second.encode()];
        assert_eq!(OffsetsRecord::decode(&encoded[0]).unwrap(), OffsetsRecord::Commit(first));
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
                metadata: BTreeMap::new(),
            },
            CommitRecord {
                group: GroupName::parse("b").unwrap(),
                offsets: vec![(tp("x", 1), Offset(4))],
                metadata: BTreeMap::new(),
            },
            CommitRecord {
                group: GroupName::parse("a").unwrap(),
                offsets: vec![(tp("x", 0), Offset(3)), (tp("y", 2), Offset(9))],
                metadata: BTreeMap::new(),
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
    fn a_deletion_forgets_what_came_before_it_and_not_what_comes_after() {
        let g = GroupName::parse("billing").unwrap();
        let other = GroupName::parse("audit").unwrap();
        let deletion = OffsetsRecord::Delete { group: g.clone() };
        assert_eq!(
            std::str::from_utf8(&deletion.encode()).unwrap(),
            r#"{"v":1,"group":"billing","deleted":true}"#
        );
        assert_eq!(OffsetsRecord::decode(&deletion.encode()).unwrap(), deletion);
        let commit = |group: &GroupName, offset| {
            OffsetsRecord::Commit(CommitRecord {
                group: group.clone(),
                offsets: vec![(tp("a", 0), Offset(offset))],
                metadata: BTreeMap::new(),
            })
            .encode()
        };
        let deleted = [commit(&g, 5), commit(&other, 7), deletion.encode()];
        let folded = CommittedOffsets::fold(deleted.iter().map(Vec::as_slice)).unwrap();
        assert!(!folded.has_group(&g), "the deletion removes the group");
        assert_eq!(folded.get(&other, &tp("a", 0)), Some(Offset(7)), "others stay");
        assert_eq!(folded.snapshot().count(), 1, "a compaction writes nothing for it");
        let again = [commit(&g, 5), deletion.encode(), commit(&g, 2)];
        let folded = CommittedOffsets::fold(again.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(folded.get(&g, &tp("a", 0)), Some(Offset(2)), "a new commit starts afresh");
    }

    #[test]
    fn a_forgetting_removes_its_partitions_offsets_and_metadata_only() {
        let g = GroupName::parse("billing").unwrap();
        let commit = OffsetsRecord::Commit(CommitRecord {
            group: g.clone(),
            offsets: vec![(tp("a", 0), Offset(5)), (tp("a", 1), Offset(6))],
            metadata: [(tp("a", 0), "seen".to_owned())].into(),
        });
        let forget = OffsetsRecord::Forget { group: g.clone(), partitions: vec![tp("a", 0)] };
        assert_eq!(
            std::str::from_utf8(&forget.encode()).unwrap(),
            r#"{"v":1,"group":"billing","forgotten":[{"topic":"a","partition":0}]}"#
        );
        assert_eq!(OffsetsRecord::decode(&forget.encode()).unwrap(), forget);
        let records = [commit.encode(), forget.encode()];
        let folded = CommittedOffsets::fold(records.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(folded.get(&g, &tp("a", 0)), None);
        assert_eq!(folded.metadata(&g, &tp("a", 0)), "");
        assert_eq!(folded.get(&g, &tp("a", 1)), Some(Offset(6)));
        // Forgetting the last one forgets the group, and a compaction writes nothing for it.
        let last = OffsetsRecord::Forget { group: g.clone(), partitions: vec![tp("a", 1)] };
        let records = [commit.encode(), forget.encode(), last.encode()];
        let folded = CommittedOffsets::fold(records.iter().map(Vec::as_slice)).unwrap();
        assert!(!folded.has_group(&g));
        assert_eq!(folded.records().count(), 0);
        let both = br#"{"v":1,"group":"billing","deleted":true,"forgotten":[]}"#;
        assert!(matches!(OffsetsRecord::decode(both), Err(CommitRecordError::Shape { .. })));
    }

    #[test]
    fn metadata_is_stored_beside_offsets_and_old_records_still_read() {
        let g = GroupName::parse("kafka").unwrap();
        let old = br#"{"v":1,"group":"kafka","offsets":[{"topic":"a","partition":0,"offset":3}]}"#;
        let with = CommitRecord {
            group: g.clone(),
            offsets: vec![(tp("a", 0), Offset(5)), (tp("a", 1), Offset(6))],
            metadata: [(tp("a", 0), "client state".to_owned())].into(),
        };
        assert_eq!(
            std::str::from_utf8(&with.encode()).unwrap(),
            r#"{"v":1,"group":"kafka","offsets":[{"topic":"a","partition":0,"offset":5,"metadata":"client state"},{"topic":"a","partition":1,"offset":6}]}"#
        );
        assert_eq!(
            OffsetsRecord::decode(&with.encode()).unwrap(),
            OffsetsRecord::Commit(with.clone())
        );
        let folded = CommittedOffsets::fold([&old[..], &with.encode()]).unwrap();
        assert_eq!(folded.get(&g, &tp("a", 0)), Some(Offset(5)));
        assert_eq!(folded.metadata(&g, &tp("a", 0)), "client state");
        assert_eq!(folded.metadata(&g, &tp("a", 1)), "");
        let snapshot: Vec<Vec<u8>> = folded.snapshot().map(|r| r.encode()).collect();
        let refolded = CommittedOffsets::fold(snapshot.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(refolded, folded, "a compaction keeps the metadata");
        let cleared = CommitRecord {
            group: g.clone(),
            offsets: vec![(tp("a", 0), Offset(9))],
            metadata: BTreeMap::new(),
        };
        let folded = CommittedOffsets::fold([&with.encode()[..], &cleared.encode()]).unwrap();
        assert_eq!(folded.metadata(&g, &tp("a", 0)), "", "a commit without metadata clears it");
    }

    #[test]
    fn a_classic_group_is_stored_in_base64_and_folds_latest_first() {
        let g = GroupName::parse("billing").unwrap();
        let member = ClassicStoredMember {
            id: "rdkafka-1".to_owned(),
            instance_id: None,
            client_id: "rdkafka".to_owned(),
            client_host: "/127.0.0.1".to_owned(),
            session_timeout_ms: 45_000,
            rebalance_timeout_ms: 300_000,
            metadata: vec![0, 1],
            assignment: vec![0, 1],
        };
        let stable = ClassicStable {
            protocol_type: "consumer".to_owned(),
            protocol: "range".to_owned(),
            generation: 3,
            leader: "rdkafka-1".to_owned(),
            members: vec![member],
        };
        let record = OffsetsRecord::Classic(ClassicGroupRecord {
            group: g.clone(),
            stable: Some(stable.clone()),
        });
        let encoded = record.encode();
        let text = String::from_utf8(encoded.clone()).unwrap();
        assert!(text.contains(r#""metadata":"AAE=","assignment":"AAE=""#), "{text}");
        assert_eq!(OffsetsRecord::decode(&encoded).unwrap(), record);
        let gone = OffsetsRecord::Classic(ClassicGroupRecord { group: g.clone(), stable: None });
        assert_eq!(OffsetsRecord::decode(&gone.encode()).unwrap(), gone);

        let commit = CommitRecord {
            group: g.clone(),
            offsets: vec![(tp("a", 0), Offset(5))],
            metadata: BTreeMap::new(),
        };
        let folded = CommittedOffsets::fold([&encoded[..], &commit.encode()]).unwrap();
        assert_eq!(folded.classic_groups().collect::<Vec<_>>(), vec![(&g, &stable)]);
        let again: Vec<Vec<u8>> = folded.records().map(|r| r.encode()).collect();
        let refolded = CommittedOffsets::fold(again.iter().map(Vec::as_slice)).unwrap();
        assert_eq!(refolded, folded, "its records give the state back");
        let after = CommittedOffsets::fold([&encoded[..], &gone.encode()]).unwrap();
        assert_eq!(after.classic_groups().count(), 0, "a group gone is forgotten");
        let deleted = OffsetsRecord::Delete { group: g.clone() }.encode();
        let after = CommittedOffsets::fold([&encoded[..], &deleted]).unwrap();
        assert_eq!(after.classic_groups().count(), 0, "so is a deleted one");
    }

    #[test]
    fn bad_records_are_errors() {
        assert!(matches!(OffsetsRecord::decode(b"nope"), Err(CommitRecordError::Json(_))));
        assert!(matches!(
            OffsetsRecord::decode(br#"{"v":2,"group":"g","offsets":[]}"#),
            Err(CommitRecordError::Version { found: 2 })
        ));
        assert!(matches!(
            OffsetsRecord::decode(br#"{"v":1,"group":"a/b","offsets":[]}"#),
            Err(CommitRecordError::Name { .. })
        ));
        for neither_or_both in [
            &br#"{"v":1,"group":"g"}"#[..],
            br#"{"v":1,"group":"g","deleted":false}"#,
            br#"{"v":1,"group":"g","offsets":[],"deleted":true}"#,
            br#"{"v":1,"group":"g","offsets":[],"classic":{"members":[]}}"#,
        ] {
            assert!(matches!(
                OffsetsRecord::decode(neither_or_both),
                Err(CommitRecordError::Shape { .. })
            ));
        }
    }

    /// The largest group the limits allow (every topic's name as long as it may be, every
    /// partition owned and being revoked, every member) is stored in one record that leaves
    /// room beside it in an internal log's group of records.
    #[test]
    fn the_largest_groups_members_fit_in_half_a_group_of_records() {
        use crate::limits::{
            GROUP_MEMBERS_MAX, GROUP_TOPICS_MAX, INTERNAL_GROUP_BYTES_MAX,
            PARTITIONS_PER_TOPIC_MAX, TOPIC_NAME_BYTES_MAX,
        };
        let topics: BTreeMap<String, u32> = (0..GROUP_TOPICS_MAX)
            .map(|i| {
                (format!("{i:0>width$}", width = TOPIC_NAME_BYTES_MAX), PARTITIONS_PER_TOPIC_MAX)
            })
            .collect();
        let partitions = GROUP_TOPICS_MAX * PARTITIONS_PER_TOPIC_MAX as usize;
        let mut members: Vec<StoredMember> = (0..GROUP_MEMBERS_MAX)
            .map(|i| StoredMember {
                id: format!("{:x}-{i}", u64::MAX),
                session_timeout_ms: 600_000,
                owned: Vec::new(),
            })
            .collect();
        for p in 0..partitions {
            members[p % GROUP_MEMBERS_MAX].owned.push(StoredOwned {
                topic_index: (p / PARTITIONS_PER_TOPIC_MAX as usize) as u32,
                partition: p as u32 % PARTITIONS_PER_TOPIC_MAX,
                since: u64::MAX,
                revoking: true,
            });
        }
        let stored =
            StoredMembers { generation: u64::MAX, topics, reset: "earliest".into(), members };
        let record = OffsetsRecord::Members(MembersRecord {
            group: GroupName::parse(&"g".repeat(TOPIC_NAME_BYTES_MAX)).unwrap(),
            members: Some(stored),
        });
        let bytes = record.encode().len();
        assert!(bytes <= INTERNAL_GROUP_BYTES_MAX / 2, "{bytes} bytes");
        assert_eq!(OffsetsRecord::decode(&record.encode()).unwrap(), record);
    }
}
