//! [`PartitionStateMachine`]: what applying a replicated partition's committed entries
//! changes. The records themselves are already in the log; applying an entry moves the
//! partition's committed end (the high watermark readers are bounded by) and its membership.
//!
//! A snapshot is this state, never the records (a follower too far behind for the leader's
//! log catches up from the leader's segments, not from a snapshot).

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use crate::entry::{self, Applied};
use crate::{NodeId, TypeConfig};

type Membership = StoredMembership<NodeId, openraft::BasicNode>;

/// The applied state: also a snapshot's content, as JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    /// The offset after the last committed record.
    high_watermark: u64,
}

#[derive(Debug, Default)]
struct Inner {
    applied: AppliedState,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// A replicated partition's state machine. Clones share the state (one builds snapshots).
#[derive(Debug, Clone, Default)]
pub struct PartitionStateMachine {
    inner: Arc<Mutex<Inner>>,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PartitionStateMachine {
    pub fn new() -> PartitionStateMachine {
        PartitionStateMachine::default()
    }

    /// The offset after the last committed record: readers see the records below it.
    pub fn high_watermark(&self) -> u64 {
        lock(&self.inner).applied.high_watermark
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PartitionStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut inner = lock(&self.inner);
        let applied = inner.applied.clone();
        let bytes = serde_json::to_vec(&applied)
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        inner.snapshots_built += 1;
        let snapshot_id = match applied.last_applied {
            Some(last) => {
                format!("{}-{}-{}", last.leader_id.term, last.index, inner.snapshots_built)
            }
            None => format!("none-{}", inner.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id,
        };
        inner.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<TypeConfig> for PartitionStateMachine {
    type SnapshotBuilder = PartitionStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let inner = lock(&self.inner);
        Ok((inner.applied.last_applied, inner.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut inner = lock(&self.inner);
        let mut replies = Vec::new();
        for entry in entries {
            let applied = &mut inner.applied;
            applied.last_applied = Some(entry.log_id);
            let offsets = match entry.payload {
                EntryPayload::Normal(batch) => entry::offsets(&batch),
                EntryPayload::Blank => None,
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    None
                }
            };
            if let Some((_, next)) = offsets {
                applied.high_watermark = applied.high_watermark.max(next);
            }
            replies.push(Applied { offsets });
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let applied: AppliedState = serde_json::from_slice(&bytes)
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        let mut inner = lock(&self.inner);
        inner.applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            high_watermark: applied.high_watermark,
        };
        inner.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let inner = lock(&self.inner);
        Ok(inner.snapshot.as_ref().map(|(meta, bytes)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(bytes.clone())),
        }))
    }
}
