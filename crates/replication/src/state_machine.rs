//! [`PartitionStateMachine`]: what applying a replicated partition's committed entries
//! changes. The records themselves are already in the log; applying an entry moves the
//! partition's committed end (the high watermark readers are bounded by) and its membership.
//!
//! A snapshot is this state, never the records. A leader sends one to a follower that needs
//! entries retention has deleted from the leader's log: the follower takes the state, and if
//! its log ends before the snapshot's high watermark it empties its log and goes on from
//! there ([`spool_storage::Log::restart_at`]), so that the entries after the snapshot get the
//! same offsets as on the leader. Its readers start at that offset, as a consumer whose
//! position retention deleted does.
//!
//! A state machine made with [`PartitionStateMachine::open`] saves its state to
//! `applied.json` every [`APPLIED_SAVE_EVERY`] entries, whenever it builds a snapshot and
//! before it installs one (written and fsynced before it is renamed into place), and starts
//! from it: a restart applies only what came after the last
//! save, and readers see what was applied before it at once. What is saved was committed, so
//! this replica's log holds it durably (an entry is applied only once a majority, this
//! replica among them if it acknowledged it, has it fsynced; a follower applies only entries
//! it appended and synced).

use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};

use spool_storage::Offset;
use spool_storage::fs::FileSystem;

use crate::OpenError;
use crate::limits::{APPLIED_FILE_BYTES_MAX, APPLIED_SAVE_EVERY, SNAPSHOT_FILE_BYTES_MAX};

use crate::entry::{self, Applied};
use crate::log_store::{SharedLog, read_file, read_json};
use crate::recent::SharedRecent;
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
    /// Entries applied since the state was last saved.
    unsaved: u64,
    snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// Called with the new high watermark after entries are applied.
pub type OnCommit = Arc<dyn Fn(Offset) + Send + Sync>;

/// State its owner folds from a replicated log's committed records, too long to rebuild from
/// the whole log (a cluster's committed consumer offsets): the state machine applies each
/// committed batch to it in order, and its snapshot travels in the group's snapshots and is
/// saved with them, so the log can be purged behind it ([`crate::Replica::compact`]).
pub trait Fold: Send + Sync {
    /// Applies a committed batch (a producer's Kafka batch) that took offsets `base..next`.
    fn apply(&self, kafka: &[u8], base: Offset, next: Offset);
    /// The folded state, to be given to [`Fold::install`] on another replica or at a restart.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the folded state with a snapshot's; `next` is the offset after the last
    /// record it folded.
    fn install(&self, snapshot: &[u8], next: Offset) -> Result<(), String>;
    /// Empties the folded state, as nothing applied yet left it. A replica opened without a
    /// saved snapshot applies its whole log again (one under repair, restarted in the same
    /// process), and folds it anew from here.
    fn reset(&self);
}

/// A replicated partition's state machine. Clones share the state (one builds snapshots).
#[derive(Clone, Default)]
pub struct PartitionStateMachine {
    inner: Arc<Mutex<Inner>>,
    /// The partition's log, whose readers see up to the high watermark.
    log: Option<SharedLog>,
    on_commit: Option<OnCommit>,
    /// Where the applied state is saved.
    saved: Option<Arc<Saved>>,
    /// The last applied log id that `applied.json` holds: the log store purges no further
    /// (a restart applies again from there, and needs those entries).
    saved_applied: SavedApplied,
    /// The owner's folded state, for a state machine made with
    /// [`PartitionStateMachine::open_folding`].
    fold: Option<Arc<dyn Fold>>,
    /// The log store's entries kept in memory: those applied are forgotten there.
    recent: Arc<OnceLock<SharedRecent>>,
}

/// The last applied log id saved durably, shared with the log store.
pub(crate) type SavedApplied = Arc<Mutex<Option<LogId<NodeId>>>>;

/// `applied.json` in a replica's directory.
struct Saved {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
}

pub(crate) const APPLIED_FILE: &str = "applied.json";
/// What a folding state machine saves instead of `applied.json`, with every snapshot: the
/// applied state as JSON, a newline, and the fold's snapshot.
pub(crate) const SNAPSHOT_FILE: &str = "snapshot.bin";

impl std::fmt::Debug for PartitionStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionStateMachine").field("inner", &self.inner).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PartitionStateMachine {
    /// A state machine that keeps the high watermark to itself.
    pub fn new() -> PartitionStateMachine {
        PartitionStateMachine::default()
    }

    /// A state machine that moves `log`'s commit point ([`spool_storage::Log::set_committed`])
    /// to the high watermark as it applies entries, then calls `on_commit`.
    pub fn over(log: SharedLog, on_commit: OnCommit) -> PartitionStateMachine {
        PartitionStateMachine { log: Some(log), on_commit: Some(on_commit), ..Default::default() }
    }

    /// [`PartitionStateMachine::over`], starting from the state saved in `dir` (if any) and
    /// saving it there as it applies.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        log: SharedLog,
        on_commit: OnCommit,
    ) -> Result<PartitionStateMachine, OpenError> {
        let path = dir.join(APPLIED_FILE);
        let mut machine = PartitionStateMachine::over(log, on_commit);
        let saved: Option<AppliedState> = read_json(fs.as_ref(), &path, APPLIED_FILE_BYTES_MAX)?;
        if let Some(applied) = saved {
            let high_watermark = Offset(applied.high_watermark);
            *lock(&machine.saved_applied) = applied.last_applied;
            lock(&machine.inner).applied = applied;
            // A log that ends before what was applied took a snapshot past its end and was
            // stopped before it restarted at the snapshot's offset: it does so now.
            machine.restart_log_before(high_watermark).map_err(|error| OpenError::State {
                path: path.clone(),
                reason: format!("the log could not go on from the applied state: {error}"),
            })?;
            machine.publish(high_watermark).map_err(|error| OpenError::State {
                path: path.clone(),
                reason: format!("the log does not hold what it says was applied: {error}"),
            })?;
        }
        machine.saved = Some(Arc::new(Saved { fs, dir: dir.to_path_buf() }));
        Ok(machine)
    }

    /// [`PartitionStateMachine::open`] for a log whose owner folds its records into `fold`
    /// ([`Fold`]): it starts from the snapshot saved in `dir` (`snapshot.bin`, with the
    /// fold's state), if any, and saves one with every snapshot it builds or installs, never
    /// in between. So a restart applies again, to the fold too, what came after the last
    /// snapshot.
    pub fn open_folding(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        log: SharedLog,
        on_commit: OnCommit,
        fold: Arc<dyn Fold>,
    ) -> Result<PartitionStateMachine, OpenError> {
        let path = dir.join(SNAPSHOT_FILE);
        let io_at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        // An applied state saved without the fold (before the owner folded) is not where
        // the fold is: everything is applied again.
        let stale = dir.join(APPLIED_FILE);
        if fs.exists(&stale).map_err(io_at(&stale))? {
            fs.remove_file(&stale).map_err(io_at(&stale))?;
            fs.sync_dir(dir).map_err(io_at(dir))?;
        }
        let mut machine = PartitionStateMachine::over(log, on_commit);
        machine.fold = Some(fold.clone());
        if let Some(bytes) = read_file(fs.as_ref(), &path, SNAPSHOT_FILE_BYTES_MAX)? {
            let invalid = |reason: String| OpenError::State { path: path.clone(), reason };
            let (applied, folded) = split_snapshot(&bytes).map_err(invalid)?;
            fold.install(folded, Offset(applied.high_watermark)).map_err(invalid)?;
            let high_watermark = Offset(applied.high_watermark);
            *lock(&machine.saved_applied) = applied.last_applied;
            lock(&machine.inner).applied = applied;
            machine.restart_log_before(high_watermark).map_err(|error| {
                invalid(format!("the log could not go on from the snapshot: {error}"))
            })?;
            machine.publish(high_watermark).map_err(|error| {
                invalid(format!("the log does not hold what the snapshot says: {error}"))
            })?;
        } else {
            fold.reset();
        }
        machine.saved = Some(Arc::new(Saved { fs, dir: dir.to_path_buf() }));
        Ok(machine)
    }

    /// The offset after the last committed record: readers see the records below it.
    pub fn high_watermark(&self) -> u64 {
        lock(&self.inner).applied.high_watermark
    }

    pub(crate) fn saved_applied(&self) -> SavedApplied {
        self.saved_applied.clone()
    }

    /// Forgets each entry in `recent` once it is applied (set once, before the replica
    /// starts).
    pub(crate) fn forget_applied_in(&self, recent: SharedRecent) {
        let _ = self.recent.set(recent);
    }

    /// Saves the applied state in `applied.json` (a state machine without a directory keeps
    /// nothing over a restart), under the state's lock so that saves do not cross.
    fn save(&self, inner: &mut Inner) -> std::io::Result<()> {
        if let Some(saved) = &self.saved {
            let (fs, dir) = (saved.fs.as_ref(), &saved.dir);
            match &self.fold {
                None => {
                    let json =
                        serde_json::to_vec(&inner.applied).expect("the applied state encodes");
                    spool_storage::fs::write_atomically(fs, dir, APPLIED_FILE, &json)?;
                }
                Some(_) => {
                    let bytes = self.snapshot_bytes(inner);
                    spool_storage::fs::write_atomically(fs, dir, SNAPSHOT_FILE, &bytes)?;
                }
            }
        }
        inner.unsaved = 0;
        *lock(&self.saved_applied) = inner.applied.last_applied;
        Ok(())
    }

    /// A snapshot's content: the applied state as JSON, and for a folding state machine a
    /// newline and the fold's snapshot (compact JSON holds no newline).
    fn snapshot_bytes(&self, inner: &Inner) -> Vec<u8> {
        let mut bytes = serde_json::to_vec(&inner.applied).expect("the applied state encodes");
        if let Some(fold) = &self.fold {
            bytes.push(b'\n');
            bytes.extend_from_slice(&fold.snapshot());
        }
        bytes
    }

    /// Empties the log and restarts it at `high_watermark` when it ends before it.
    fn restart_log_before(
        &self,
        high_watermark: Offset,
    ) -> Result<(), spool_storage::TruncateError> {
        let Some(log) = &self.log else { return Ok(()) };
        let mut log = log.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(log) = log.as_mut() else { return Ok(()) };
        if log.next_offset() >= high_watermark {
            return Ok(());
        }
        tracing::warn!(dir = %log.dir().display(), ends = log.next_offset().0, goes_on = high_watermark.0, "a replica's log ends before the leader's snapshot it took: it empties its log and goes on from the snapshot's offset");
        if let Some(recent) = self.recent.get() {
            lock(recent).clear();
        }
        log.restart_at(high_watermark, spool_storage::TimestampMs::now())
    }
}

impl PartitionStateMachine {
    /// Lets the log's readers see up to `high_watermark`, and says so.
    fn publish(&self, high_watermark: Offset) -> Result<(), spool_storage::ReadError> {
        if let Some(log) = &self.log {
            let mut log = log.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(log) = log.as_mut() {
                log.set_committed(high_watermark)?;
            }
        }
        if let Some(on_commit) = &self.on_commit {
            on_commit(high_watermark);
        }
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PartitionStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut inner = lock(&self.inner);
        // Saved first: the log is purged no further than what is saved.
        self.save(&mut inner).map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        let applied = inner.applied.clone();
        let bytes = self.snapshot_bytes(&inner);
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
        let before = inner.applied.high_watermark;
        let mut replies = Vec::new();
        for entry in entries {
            let applied = &mut inner.applied;
            applied.last_applied = Some(entry.log_id);
            let offsets = match entry.payload {
                EntryPayload::Normal(batch) => {
                    let offsets = entry::offsets(&batch);
                    if let (Some(fold), Some((base, _))) = (&self.fold, offsets) {
                        let records =
                            batch.kafka.iter().map(|kafka| entry::record_count(kafka).unwrap_or(0));
                        let offsets = entry::batch_offsets(base, records);
                        for (kafka, (base, next)) in batch.kafka.iter().zip(offsets) {
                            fold.apply(kafka, Offset(base), Offset(next));
                        }
                    }
                    offsets
                }
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
        let high_watermark = inner.applied.high_watermark;
        if let (Some(recent), Some(last)) = (self.recent.get(), inner.applied.last_applied) {
            lock(recent).purge(last.index);
        }
        inner.unsaved += replies.len() as u64;
        // A folding state machine saves with its snapshots only (see `open_folding`).
        if inner.unsaved >= APPLIED_SAVE_EVERY
            && self.fold.is_none()
            && let Err(error) = self.save(&mut inner)
        {
            // Only a restart's shortcut is lost: it applies from the previous save.
            tracing::warn!(%error, "saving a replica's applied state failed");
        }
        drop(inner);
        if high_watermark > before {
            self.publish(Offset(high_watermark))
                .map_err(|error| StorageIOError::write_state_machine(&error))?;
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
        let invalid = |reason: String| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(reason))
        };
        let (applied, folded) = split_snapshot(&bytes).map_err(invalid)?;
        if let Some(fold) = &self.fold {
            fold.install(folded, Offset(applied.high_watermark)).map_err(invalid)?;
        }
        let mut inner = lock(&self.inner);
        inner.applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            high_watermark: applied.high_watermark,
        };
        let high_watermark = Offset(inner.applied.high_watermark);
        inner.snapshot = Some((meta.clone(), bytes));
        // Saved before the log changes: a restart goes on from the snapshot (and finishes
        // the log's restart if it was stopped in the middle).
        self.save(&mut inner).map_err(|error| StorageIOError::write_state_machine(&error))?;
        drop(inner);
        // What the snapshot covers counts as applied: forgotten where it is kept.
        if let (Some(recent), Some(last)) = (self.recent.get(), meta.last_log_id) {
            lock(recent).purge(last.index);
        }
        self.restart_log_before(high_watermark)
            .map_err(|error| StorageIOError::write_state_machine(&error))?;
        self.publish(high_watermark)
            .map_err(|error| StorageIOError::write_state_machine(&error).into())
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

/// A snapshot's applied state, and the fold's snapshot after it (empty for none).
fn split_snapshot(bytes: &[u8]) -> Result<(AppliedState, &[u8]), String> {
    let (json, folded) = match bytes.iter().position(|byte| *byte == b'\n') {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &bytes[bytes.len()..]),
    };
    let applied = serde_json::from_slice(json)
        .map_err(|error| format!("the applied state is not valid JSON: {error}"))?;
    Ok((applied, folded))
}
