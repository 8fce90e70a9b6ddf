//! [`SegmentLogStore`]: openraft's log storage over a partition's segment log.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use serde::{Deserialize, Serialize};
use spool_storage::batch::BatchIter;
use spool_storage::fs::{FileSystem, OpenMode};
use spool_storage::limits::READ_BYTES_MAX;
use spool_storage::{Log, LogConfig, Offset, ReadError, TimestampMs};

use crate::entry::{self, Batch};
use crate::recent::SharedRecent;
use crate::state_machine::{APPLIED_FILE, SNAPSHOT_FILE, SavedApplied};
use crate::{NodeId, TypeConfig};

/// The file beside the log that holds the vote and the last purged log id.
const STATE_FILE: &str = "raft-state.json";
/// The file beside the log that marks a replica under repair, holding the damage found.
const REPAIR_FILE: &str = "repair.json";
/// The segment log's directory, inside the partition's.
const LOG_DIR: &str = "log";
/// The most a state file may hold: a vote and a log id are a few hundred bytes.
const STATE_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A replica under repair: what was damaged (the storage's description).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Repair {
    damage: String,
}

/// What is kept beside the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RaftState {
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId<NodeId>>,
}

/// Why a replicated partition's storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Log(#[from] spool_storage::OpenError),
    #[error("opening {path} failed: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is not a Raft state file: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("cutting the damaged replica in {path} back to its intact segments failed: {source}")]
    Repair { path: PathBuf, source: spool_storage::TruncateError },
    #[error("cutting the unfinished entry at the end of the log in {path} failed: {source}")]
    CutUnfinished { path: PathBuf, source: spool_storage::TruncateError },
}

/// A segment log shared by a replicated partition's Raft log and its readers; `None` once
/// the partition has closed it.
pub type SharedLog = Arc<RwLock<Option<Log>>>;

/// A replicated partition's Raft log: its segment log, and its vote and purge point beside
/// it. Clones share the same log (one is the log reader openraft asks for).
#[derive(Debug, Clone)]
pub struct SegmentLogStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    fs: Arc<dyn FileSystem>,
    /// Where `raft-state.json` is.
    dir: PathBuf,
    log: SharedLog,
    state: Mutex<RaftState>,
    /// Under repair (the log was cut back after damage, or this node started on an empty
    /// data directory) or held: this replica may not vote until it has caught up with a
    /// leader (see [`SegmentLogStore::over`]). Changed with `repair.json` under the lock.
    repairing: Mutex<bool>,
    /// What the state machine has saved as applied: purges go no further (a restart applies
    /// again from there). Unset, a purge goes where it is asked.
    purge_bound: std::sync::OnceLock<SavedApplied>,
    /// The entries appended last, which Raft reads back at once. Locked after the log when
    /// both are.
    recent: SharedRecent,
    /// Told of damage Raft's reads of the log meet (see [`SegmentLogStore::on_damage`]).
    on_damage: std::sync::OnceLock<Told>,
}

/// Told of each damaged batch a read of the log met ([`ReadError::Damaged`]).
pub type OnDamage = Arc<dyn Fn(&ReadError) + Send + Sync>;

/// An [`OnDamage`] the store holds.
struct Told(OnDamage);

impl std::fmt::Debug for Told {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnDamage")
    }
}

/// The log is closed: its partition stopped.
#[derive(Debug, thiserror::Error)]
#[error("the partition's log is closed")]
struct Closed;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&error).into()
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&error).into()
}

/// An error of this module's own steps, kept small (openraft's `StorageError` is large) and
/// turned into a `StorageError` where openraft's traits answer.
fn failed(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::other(error)
}

/// The JSON file at `path`, if there is one, of at most `bytes_max` bytes.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    fs: &dyn FileSystem,
    path: &Path,
    bytes_max: u64,
) -> Result<Option<T>, OpenError> {
    let Some(bytes) = read_file(fs, path, bytes_max)? else { return Ok(None) };
    let invalid = |reason: String| OpenError::State { path: path.to_path_buf(), reason };
    serde_json::from_slice(&bytes).map(Some).map_err(|error| invalid(error.to_string()))
}

/// The bytes of the file at `path`, if there is one, refused past `bytes_max`.
pub(crate) fn read_file(
    fs: &dyn FileSystem,
    path: &Path,
    bytes_max: u64,
) -> Result<Option<Vec<u8>>, OpenError> {
    let io_at = |source| OpenError::Io { path: path.to_path_buf(), source };
    if !fs.exists(path).map_err(io_at)? {
        return Ok(None);
    }
    let file = fs.open(path, OpenMode::ReadOnly).map_err(io_at)?;
    let len = file.len().map_err(io_at)?;
    if len > bytes_max {
        let reason = format!("it holds {len} bytes, more than {bytes_max}");
        return Err(OpenError::State { path: path.to_path_buf(), reason });
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io_at)?;
    Ok(Some(bytes))
}

impl SegmentLogStore {
    /// Opens (creating it if need be) the replicated partition stored in `dir`: its segment
    /// log in `dir/log`, recovered as any log is, and its Raft state.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        config: LogConfig,
        now: TimestampMs,
    ) -> Result<SegmentLogStore, OpenError> {
        let io_at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        spool_storage::fs::create_dir_all_durably(fs.as_ref(), dir).map_err(io_at(dir))?;
        let log = Log::open(fs.clone(), &dir.join(LOG_DIR), config, now)?;
        SegmentLogStore::over(fs, dir, Arc::new(RwLock::new(Some(log))))
    }

    /// The store of a partition whose log is already open (and shared with its readers),
    /// with its Raft state in `dir`. Readers see nothing of the log until the state machine
    /// applies what is committed ([`Log::set_committed`]).
    ///
    /// **Repair.** A log whose recovery found damage in synced data (fenced as
    /// [`spool_storage::Fence::Damaged`]) lost batches this replica may have acknowledged;
    /// the other replicas hold them. The store writes `repair.json`, removes the saved
    /// applied state (the state machine applies again from the log's start), and cuts the
    /// log back to the intact segments before the damage ([`Log::cut_damage`]). Until the
    /// replica has caught up with a leader ([`crate::Replica`] clears the mark), it votes in
    /// no election and stands for none: with entries missing it could otherwise help elect a
    /// leader that lacks an acknowledged batch. A restart meanwhile finds the mark and stays
    /// under repair. A log that retention purged is not cut but emptied
    /// ([`Log::restart_at`]): its start is no entry a replica can apply from, so it copies
    /// the whole group's log (or a leader's snapshot) again.
    pub fn over(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        log: SharedLog,
    ) -> Result<SegmentLogStore, OpenError> {
        let repair_path = dir.join(REPAIR_FILE);
        let repair: Option<Repair> = read_json(fs.as_ref(), &repair_path, STATE_FILE_BYTES_MAX)?;
        let mut repairing = repair.is_some();
        let state: Option<RaftState> =
            read_json(fs.as_ref(), &dir.join(STATE_FILE), STATE_FILE_BYTES_MAX)?;
        let mut state = state.unwrap_or_default();
        if let Some(log) = log.write().unwrap_or_else(PoisonError::into_inner).as_mut()
            && let Some(damage @ spool_storage::Fence::Damaged { path, .. }) = log.fence()
        {
            let (damage, segment) = (damage.to_string(), path.clone());
            begin_repair(fs.as_ref(), dir, log, state.purged.is_some(), &damage, &segment)?;
            repairing = true;
        }
        // A replica under repair applies again from its log's start, but the start of a log
        // that retention purged is no entry the state machine can apply from: it empties its
        // log and copies the group's from a leader (a snapshot, where the leader's log is
        // purged too). Its log first, then the purge point, so that a restart in between
        // does this again.
        let saved = |name: &str| {
            let path = dir.join(name);
            fs.exists(&path).map_err(|source| OpenError::Io { path, source })
        };
        if repairing
            && state.purged.is_some()
            && !saved(APPLIED_FILE)?
            && !saved(SNAPSHOT_FILE)?
            && let Some(log) = log.write().unwrap_or_else(PoisonError::into_inner).as_mut()
        {
            tracing::warn!(dir = %dir.display(), "the replica under repair had a purged log: it empties it and copies the group's log from a leader");
            log.restart_at(Offset(0), TimestampMs::now())
                .map_err(|source| OpenError::Repair { path: dir.to_path_buf(), source })?;
            state.purged = None;
            let json = serde_json::to_vec(&state).expect("the Raft state encodes");
            spool_storage::fs::write_atomically(fs.as_ref(), dir, STATE_FILE, &json)
                .map_err(|source| OpenError::Io { path: dir.join(STATE_FILE), source })?;
        }
        if let Some(log) = log.write().unwrap_or_else(PoisonError::into_inner).as_mut() {
            cut_unfinished_entry(log)
                .map_err(|source| OpenError::CutUnfinished { path: dir.to_path_buf(), source })?;
            let start = log.log_start_offset();
            log.set_committed(start).map_err(|error| OpenError::Io {
                path: log.dir().to_path_buf(),
                source: io::Error::other(error),
            })?;
        }
        let repairing = Mutex::new(repairing);
        let shared = Shared {
            fs,
            dir: dir.to_path_buf(),
            log,
            state: Mutex::new(state),
            repairing,
            purge_bound: std::sync::OnceLock::new(),
            recent: SharedRecent::default(),
            on_damage: std::sync::OnceLock::new(),
        };
        Ok(SegmentLogStore { shared: Arc::new(shared) })
    }

    /// Tells `on_damage` of each damaged batch that Raft's reads of the log meet (set once,
    /// before the replica starts): a leader reading entries to send a follower, or the state
    /// machine reading entries to apply. The read fails, and with it this replica's Raft
    /// task, so its owner should stop it and start it again under repair
    /// ([`SegmentLogStore::repair_damage`]), as for damage its own reads meet.
    pub fn on_damage(&self, on_damage: OnDamage) {
        let _ = self.shared.on_damage.set(Told(on_damage));
    }

    /// `error`, told to [`SegmentLogStore::on_damage`] first when it is damage.
    fn reported(&self, error: ReadError) -> ReadError {
        if let ReadError::Damaged { .. } = &error
            && let Some(Told(on_damage)) = self.shared.on_damage.get()
        {
            on_damage(&error);
        }
        error
    }

    /// Under repair, forgets durably that node `id` (this replica's) led its saved term, so
    /// that it starts as a follower. openraft starts a replica whose saved vote is committed
    /// and its own as the leader of that term at once, without an election, and a replica
    /// under repair lost entries it may have written as that leader: leading again in that
    /// term with its log cut back, it would write other entries at the same index and term
    /// as those the other replicas hold. Its vote stays in the term, uncommitted, so it
    /// votes for no other candidate in that term either. Call before the replica starts.
    pub(crate) fn step_down_under_repair(&self, id: NodeId) -> io::Result<()> {
        let vote = lock(&self.shared.state).vote;
        if let Some(vote) = vote
            && vote.committed
            && vote.leader_id.voted_for() == Some(id)
            && self.repairing()
        {
            self.save(|state| state.vote = Some(Vote { committed: false, ..vote }))?;
        }
        Ok(())
    }

    /// Whether this replica is under repair or held (see [`SegmentLogStore::over`]).
    pub fn repairing(&self) -> bool {
        *lock(&self.shared.repairing)
    }

    /// Holds this replica's vote, in memory only, until [`crate::Replica::release`] or
    /// until it catches up with a leader: for a node that started on an empty data directory
    /// and has yet to learn whether the cluster already exists. Call before the replica
    /// starts.
    pub fn hold(&self) {
        *lock(&self.shared.repairing) = true;
    }

    /// Puts this replica under repair durably (`repair.json`, with `reason`) if it is still
    /// held or its log holds nothing a leader wrote: a replica that has meanwhile caught up
    /// with a leader lost nothing it needs.
    pub fn mark_for_repair(&self, reason: &str) -> io::Result<()> {
        let mut repairing = lock(&self.shared.repairing);
        if *repairing || !self.has_begun()? {
            let json = serde_json::to_vec(&Repair { damage: reason.to_owned() })?;
            let shared = &self.shared;
            spool_storage::fs::write_atomically(
                shared.fs.as_ref(),
                &shared.dir,
                REPAIR_FILE,
                &json,
            )?;
            *repairing = true;
        }
        Ok(())
    }

    /// Whether the log holds an entry past the first membership: one a leader wrote (forming
    /// a group writes the first membership on every node, before any election), or held one
    /// that a purge (retention, a compaction) has deleted since.
    pub fn has_begun(&self) -> io::Result<bool> {
        if self.purged().is_some_and(|purged| purged.index > 0) {
            return Ok(true);
        }
        let log = self.read_log()?;
        let last = log.as_ref().expect("checked").last_entry().map_err(failed)?;
        Ok(last.is_some_and(|at| at.entry.index > 0))
    }

    /// Ends the repair or the hold: removes `repair.json` durably, then lets the replica vote.
    pub(crate) fn finish_repair(&self) -> io::Result<()> {
        let mut repairing = lock(&self.shared.repairing);
        let shared = &self.shared;
        let path = shared.dir.join(REPAIR_FILE);
        if shared.fs.exists(&path)? {
            shared.fs.remove_file(&path)?;
            shared.fs.sync_dir(&shared.dir)?;
        }
        *repairing = false;
        Ok(())
    }

    /// The index of the last entry wholly below offset `before`: the one that holds offset
    /// `before - 1`, or the one before it when that entry goes on past `before`.
    pub(crate) fn index_before(&self, before: Offset) -> io::Result<Option<u64>> {
        let log = self.read_log()?;
        let log = log.as_ref().expect("checked");
        if before.0 == 0 || before <= log.log_start_offset() {
            return Ok(None);
        }
        let at = log.entry_at(Offset(before.0 - 1)).map_err(failed)?;
        if at.entry.more {
            return Ok(at.entry.index.checked_sub(1));
        }
        Ok(Some(at.entry.index))
    }

    /// The entries kept in memory, which the state machine forgets as it applies them.
    pub(crate) fn recent(&self) -> SharedRecent {
        self.shared.recent.clone()
    }

    /// Purges go no further than `saved`, the state machine's saved applied log id.
    pub(crate) fn bound_purges(&self, saved: SavedApplied) {
        let _ = self.shared.purge_bound.set(saved);
    }

    /// The index of the last entry that retention would delete now (the log's settings say
    /// how much to keep), when there is one not purged yet: the last entry wholly within the
    /// whole segments below what readers see (the commit point). An entry that goes on past
    /// them waits: purging it would delete the segments its tail is in.
    pub(crate) fn retention_index(&self, now: TimestampMs) -> io::Result<Option<u64>> {
        let end = {
            let log = self.read_log()?;
            let log = log.as_ref().expect("checked");
            log.retention_end(now, log.log_end_offset())
        };
        let Some(end) = end else { return Ok(None) };
        let last = self.index_before(end)?;
        let purged = self.purged().map(|purged| purged.index);
        Ok(last.filter(|last| purged < Some(*last)))
    }

    /// Runs `read` on the segment log (for tests and tools; a partition's readers hold the
    /// [`SharedLog`]). Panics once the log is closed.
    pub fn with_log<T>(&self, read: impl FnOnce(&Log) -> T) -> T {
        read(self.read_log().expect("the log is open").as_ref().expect("checked"))
    }

    /// The shared log.
    pub fn log(&self) -> &SharedLog {
        &self.shared.log
    }

    fn read_log(&self) -> Result<RwLockReadGuard<'_, Option<Log>>, io::Error> {
        let log = self.shared.log.read().unwrap_or_else(PoisonError::into_inner);
        if log.is_none() {
            return Err(failed(Closed));
        }
        Ok(log)
    }

    fn write_log(&self) -> Result<RwLockWriteGuard<'_, Option<Log>>, io::Error> {
        let log = self.shared.log.write().unwrap_or_else(PoisonError::into_inner);
        if log.is_none() {
            return Err(failed(Closed));
        }
        Ok(log)
    }

    /// Writes `state` durably, then keeps it.
    fn save(&self, change: impl FnOnce(&mut RaftState)) -> Result<(), io::Error> {
        let mut state = lock(&self.shared.state);
        let mut changed = state.clone();
        change(&mut changed);
        let json = serde_json::to_vec(&changed).map_err(io::Error::other)?;
        let shared = &self.shared;
        spool_storage::fs::write_atomically(shared.fs.as_ref(), &shared.dir, STATE_FILE, &json)?;
        *state = changed;
        Ok(())
    }

    fn purged(&self) -> Option<LogId<NodeId>> {
        lock(&self.shared.state).purged
    }

    /// The entries with indexes in `start..end` (`end` exclusive) as stored; `start` is past
    /// the purged ones.
    fn stored_entries(&self, start: u64, end: u64) -> io::Result<Vec<Entry<TypeConfig>>> {
        let mut out = Vec::new();
        let log = self.read_log()?;
        let log = log.as_ref().expect("checked");
        let reported = |error| failed(self.reported(error));
        let Some(first) = log.first_entry_from(start).map_err(reported)? else {
            return Ok(out);
        };
        let mut offset = first.base_offset;
        let mut gather = entry::Gather::default();
        loop {
            let read = log.read_written(offset, READ_BYTES_MAX).map_err(reported)?;
            if read.bytes.is_empty() {
                gather.finish().map_err(failed)?;
                return Ok(out);
            }
            for view in BatchIter::read_before(&read.bytes) {
                let view = view.map_err(failed)?;
                let Some(entry) = gather.push(&view, &read.bytes).map_err(failed)? else {
                    continue;
                };
                if entry.log_id.index >= end {
                    return Ok(out);
                }
                if entry.log_id.index >= start {
                    out.push(entry);
                }
            }
            offset = read.next_offset;
        }
    }

    /// Appends `entries` and syncs them: one fsync for the whole call.
    fn append_and_sync(&self, entries: Vec<Entry<TypeConfig>>) -> io::Result<()> {
        let now = TimestampMs::now();
        let mut batches = Vec::with_capacity(entries.len());
        // Per batch: its entry's index, and the offset the leader gave it, where known.
        let mut expected = Vec::with_capacity(entries.len());
        for entry in &entries {
            let stored = entry::to_batches(entry).map_err(failed)?;
            let mut next = match &entry.payload {
                EntryPayload::Normal(batch) => batch.base_offset.map(Offset),
                _ => None,
            };
            for batch in &stored {
                expected.push((entry.log_id.index, next));
                next = next.map(|next| Offset(next.0 + u64::from(batch.header().record_count)));
            }
            batches.extend(stored);
        }
        let borrowed: Vec<_> = batches.iter().map(|batch| batch.borrowed()).collect();
        let mut log = self.write_log()?;
        let log = log.as_mut().expect("checked");
        let results = log.append_many(&borrowed, now);
        let mut recent = lock(&self.shared.recent);
        let spans = match entry_spans(expected, results) {
            Ok(spans) => spans,
            Err(error) => {
                recent.clear();
                return Err(error);
            }
        };
        for entry in entries {
            let EntryPayload::Normal(batch) = &entry.payload else {
                recent.push(entry);
                continue;
            };
            let Some(&(_, base, next)) =
                spans.iter().find(|(index, ..)| *index == entry.log_id.index)
            else {
                recent.clear();
                continue;
            };
            // acks=leader: appended here, on the leader that proposed it; not yet synced.
            batch.appended.tell((base, next));
            let kept = Batch::new(batch.kafka.clone(), Some(base));
            recent.push(Entry { log_id: entry.log_id, payload: EntryPayload::Normal(kept) });
        }
        drop(recent);
        log.sync(now).map_err(|error| {
            lock(&self.shared.recent).clear();
            failed(error)
        })?;
        Ok(())
    }
}

/// Each appended entry's index, the offset of its first record and the offset after its
/// last, in entry order, from the append's results for its batches (`expected`: per batch,
/// its entry's index and the offset the leader gave it, where known).
fn entry_spans(
    expected: Vec<(u64, Option<Offset>)>,
    results: Vec<Result<spool_storage::Appended, spool_storage::AppendError>>,
) -> io::Result<Vec<(u64, u64, u64)>> {
    let mut spans: Vec<(u64, u64, u64)> = Vec::with_capacity(expected.len());
    for ((index, expected), result) in expected.into_iter().zip(results) {
        let appended = result.map_err(failed)?;
        if let Some(expected) = expected
            && expected != appended.base_offset
        {
            return Err(failed(Diverged { index, expected, got: appended.base_offset }));
        }
        let next = appended.last_offset.0 + 1;
        match spans.last_mut() {
            Some((at, _, end)) if *at == index => *end = next,
            _ => spans.push((index, appended.base_offset.0, next)),
        }
    }
    Ok(spans)
}

/// Cuts an entry whose batches stop short at the log's end: the last batch says more of its
/// entry follow. A crash while a multi-batch entry was written leaves that (a roll in the
/// middle of the entry syncs the part before it), and Raft would take the part for the
/// whole entry. The entry was never acknowledged here: its fsync covers all of it.
fn cut_unfinished_entry(log: &mut Log) -> Result<(), spool_storage::TruncateError> {
    let Some(last) = log.last_entry()? else { return Ok(()) };
    if !last.entry.more {
        return Ok(());
    }
    let first = log.first_entry_from(last.entry.index)?;
    let from = first.map_or(last.base_offset, |first| first.base_offset);
    tracing::warn!(dir = %log.dir().display(), index = last.entry.index, from = from.0, "the log ends inside entry {}, which was never acknowledged: it is cut from offset {from}", last.entry.index);
    log.truncate(from, TimestampMs::now())
}

/// Puts the replica in `dir` under repair for `damage` in its log's segment `segment`
/// (see [`SegmentLogStore::over`]): writes `repair.json`, removes the saved applied state and
/// cuts the log back to the segments before the damaged one. A log that retention purged is
/// left for [`SegmentLogStore::over`] to empty.
fn begin_repair(
    fs: &dyn FileSystem,
    dir: &Path,
    log: &mut Log,
    purged: bool,
    damage: &str,
    segment: &Path,
) -> Result<(), OpenError> {
    tracing::warn!(dir = %dir.display(), %damage, "a replica's synced data is damaged: cutting its log back to the intact segments before the damage; it copies the rest from a leader, and takes no part in elections until it has");
    let io_at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OpenError::Io { path, source }
    };
    let json =
        serde_json::to_vec(&Repair { damage: damage.to_owned() }).expect("a repair mark encodes");
    spool_storage::fs::write_atomically(fs, dir, REPAIR_FILE, &json)
        .map_err(io_at(&dir.join(REPAIR_FILE)))?;
    for saved in [APPLIED_FILE, SNAPSHOT_FILE] {
        let saved = dir.join(saved);
        if fs.exists(&saved).map_err(io_at(&saved))? {
            fs.remove_file(&saved).map_err(io_at(&saved))?;
            fs.sync_dir(dir).map_err(io_at(dir))?;
        }
    }
    if !purged {
        let end = log
            .cut_segments_from(segment, TimestampMs::now())
            .map_err(|source| OpenError::Repair { path: dir.to_path_buf(), source })?;
        tracing::warn!(dir = %dir.display(), end = end.0, "the damaged replica's log now ends at offset {end}");
    }
    Ok(())
}

impl SegmentLogStore {
    /// Puts the stopped replica of the log `log`, whose state is in `dir`, under repair for
    /// damage a read found in its segment `segment` (recovery checks only what the last
    /// shutdown did not vouch for): as for damage found at open (see
    /// [`SegmentLogStore::over`]), which the replica's next start goes on with.
    pub fn repair_damage(
        fs: &dyn FileSystem,
        dir: &Path,
        log: &SharedLog,
        damage: &str,
        segment: &Path,
    ) -> Result<(), OpenError> {
        let state: Option<RaftState> = read_json(fs, &dir.join(STATE_FILE), STATE_FILE_BYTES_MAX)?;
        let purged = state.is_some_and(|state| state.purged.is_some());
        let mut log = log.write().unwrap_or_else(PoisonError::into_inner);
        let Some(log) = log.as_mut() else { return Ok(()) };
        begin_repair(fs, dir, log, purged, damage, segment)
    }
}

/// A follower's log gave an entry another offset than the leader's did.
#[derive(Debug, thiserror::Error)]
#[error("entry {index} was stored at offset {got} here but at offset {expected} on the leader")]
struct Diverged {
    index: u64,
    expected: Offset,
    got: Offset,
}

/// Runs `io` (the log's writes, fsyncs and reads) on a thread for blocking work, so that an
/// fsync holds no thread of the runtime, which every other replica, connection and
/// partition of the node share.
async fn off_the_runtime<T: Send + 'static>(
    io: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(io).await.unwrap_or_else(|error| Err(failed(error)))
}

/// The first and last index `range` asks for, as `start..end`.
fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&start) => start,
        Bound::Excluded(&start) => start.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => end.saturating_add(1),
        Bound::Excluded(&end) => end,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for SegmentLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (start, end) = bounds(&range);
        let start = start.max(self.purged().map_or(0, |purged| purged.index + 1));
        if start >= end {
            return Ok(Vec::new());
        }
        // Those appended last as they were appended (see `Recent`), older ones from the log.
        if let Some(kept) = lock(&self.shared.recent).get(start, end) {
            return Ok(kept);
        }
        let store = self.clone();
        off_the_runtime(move || store.stored_entries(start, end)).await.map_err(read_error)
    }
}

impl RaftLogStorage<TypeConfig> for SegmentLogStore {
    type LogReader = SegmentLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = self.read_log().map_err(read_error)?;
        let last = log.as_ref().expect("checked").last_entry().map_err(read_error)?;
        drop(log);
        let last = last.map(|at| entry::log_id(at.entry.term, at.entry.index));
        let purged = self.purged();
        let last_log_id = match (last, purged) {
            (Some(last), Some(purged)) => Some(last.max(purged)),
            (last, purged) => last.or(purged),
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.save(|state| state.vote = Some(vote))
            .map_err(|error| StorageIOError::write_vote(&error).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.shared.state).vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let store = self.clone();
        match off_the_runtime(move || store.append_and_sync(entries)).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let reported = StorageIOError::write_logs(&error).into();
                callback.log_io_completed(Err(error));
                Err(reported)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut log = self.write_log().map_err(write_error)?;
        let log = log.as_mut().expect("checked");
        lock(&self.shared.recent).truncate(log_id.index);
        let first = log.first_entry_from(log_id.index);
        let Some(first) = first.map_err(|error| read_error(self.reported(error)))? else {
            return Ok(());
        };
        log.truncate(first.base_offset, TimestampMs::now()).map_err(write_error)
    }

    /// Records the purge (no further than the state machine has saved as applied), then
    /// deletes the segments whose every entry it covers: the log's start moves to the
    /// segment that holds the first entry kept. Only retention asks Raft for a purge, and a
    /// snapshot's install makes one ([`crate::Replica::apply_retention`]).
    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bound = self.shared.purge_bound.get().map(|saved| *lock(saved));
        let upto = match bound {
            Some(saved) => saved.min(Some(log_id)),
            None => Some(log_id),
        };
        let Some(upto) = upto else { return Ok(()) };
        self.save(|state| state.purged = state.purged.max(Some(upto))).map_err(write_error)?;
        let mut log = self.write_log().map_err(write_error)?;
        let log = log.as_mut().expect("checked");
        lock(&self.shared.recent).purge(upto.index);
        let kept = log.first_entry_from(upto.index + 1);
        let kept = kept.map_err(|error| read_error(self.reported(error)))?;
        let end = kept.map_or(log.next_offset(), |kept| kept.base_offset);
        log.remove_segments_before(end).map_err(write_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use openraft::storage::RaftLogStorageExt;
    use spool_storage::batch::{BatchBuilder, ProducerStamp};
    use spool_storage::sim::SimFileSystem;

    use super::*;

    fn normal(index: u64, batches: usize) -> Entry<TypeConfig> {
        sized(index, batches, 1)
    }

    /// Entry `index` of term 1: `batches` batches of one record of `value_bytes` bytes.
    fn sized(index: u64, batches: usize, value_bytes: usize) -> Entry<TypeConfig> {
        let kafka = (0..batches)
            .map(|_| {
                let mut builder = BatchBuilder::new(BytesMut::new());
                builder.push(TimestampMs(1), None, Some(&vec![7; value_bytes]), &[]);
                builder.finish(ProducerStamp::NONE).freeze()
            })
            .collect();
        let payload = EntryPayload::Normal(Batch::new(kafka, None));
        Entry { log_id: entry::log_id(1, index), payload }
    }

    #[tokio::test]
    async fn the_index_before_an_offset_is_of_an_entry_wholly_below_it() {
        let fs = SimFileSystem::new();
        let dir = Path::new("/data/p");
        let mut store =
            SegmentLogStore::open(Arc::new(fs), dir, LogConfig::default(), TimestampMs(0)).unwrap();
        // Entry 1 at offset 0; entry 2 at offsets 1, 2 and 3; entry 3 at offset 4.
        store.blocking_append([normal(1, 1), normal(2, 3), normal(3, 1)]).await.unwrap();
        let before = |offset| store.index_before(Offset(offset)).unwrap();
        assert_eq!(before(0), None);
        assert_eq!(before(1), Some(1));
        assert_eq!(before(2), Some(1), "entry 2 goes on past offset 2");
        assert_eq!(before(3), Some(1), "entry 2 goes on past offset 3");
        assert_eq!(before(4), Some(2));
        assert_eq!(before(5), Some(3));
    }

    #[tokio::test]
    async fn retention_purges_no_entry_whose_tail_is_in_a_segment_it_keeps() {
        let fs = SimFileSystem::new();
        let config = LogConfig {
            segment_bytes: 64 * 1024,
            retention_bytes: Some(1),
            ..LogConfig::default()
        };
        let mut store =
            SegmentLogStore::open(Arc::new(fs), Path::new("/data/p"), config, TimestampMs(0))
                .unwrap();
        // Entry 1 at offset 0; entry 2's three batches at offsets 1 to 3, of which the third
        // does not fit in the first segment; entry 3 at offset 4.
        let kib = 20 * 1024;
        store
            .blocking_append([sized(1, 1, kib), sized(2, 3, kib), sized(3, 1, kib)])
            .await
            .unwrap();
        let bases = store.with_log(|log| {
            log.segments().map(|segment| segment.base_offset.0).collect::<Vec<_>>()
        });
        assert_eq!(bases, [0, 3], "the first segment ends inside entry 2");
        store.log().write().unwrap().as_mut().unwrap().set_committed(Offset(u64::MAX)).unwrap();
        let now = TimestampMs::now();
        assert_eq!(
            store.with_log(|log| log.retention_end(now, log.log_end_offset())),
            Some(Offset(3))
        );
        assert_eq!(store.retention_index(now).unwrap(), Some(1), "entry 2 goes on past it");
    }

    /// A store over an empty log on the simulated file system.
    fn open_store() -> SegmentLogStore {
        let fs = Arc::new(SimFileSystem::new());
        SegmentLogStore::open(fs, Path::new("/data/p"), LogConfig::default(), TimestampMs(0))
            .unwrap()
    }

    /// How many entries from index `start` on the store keeps in memory (`None`: `start` is
    /// not among them).
    fn kept_from(store: &SegmentLogStore, start: u64) -> Option<usize> {
        lock(&store.recent()).get(start, u64::MAX).map(|kept| kept.len())
    }

    #[tokio::test]
    async fn entries_read_back_at_once_match_the_log_but_for_the_stamped_head() {
        let mut store = open_store();
        store.blocking_append([normal(1, 1), normal(2, 3), normal(3, 2)]).await.unwrap();
        let kept = store.try_get_log_entries(1..4).await.unwrap();
        lock(&store.shared.recent).clear();
        let stored = store.try_get_log_entries(1..4).await.unwrap();
        assert_eq!(kept.len(), 3);
        assert_eq!(stored.len(), 3);
        for (kept, stored) in kept.iter().zip(&stored) {
            assert_eq!(kept.log_id, stored.log_id);
            let (EntryPayload::Normal(kept), EntryPayload::Normal(stored)) =
                (&kept.payload, &stored.payload)
            else {
                panic!("normal entries");
            };
            assert_eq!(kept.base_offset, stored.base_offset);
            assert_eq!(kept.kafka.len(), stored.kafka.len());
            for (kept, stored) in kept.kafka.iter().zip(&stored.kafka) {
                let tail = spool_storage::batch::STAMPED_TAIL_FROM;
                assert_eq!(kept[tail..], stored[tail..]);
            }
        }
        assert_eq!(
            store.try_get_log_entries(2..3).await.unwrap().len(),
            1,
            "read from the log once nothing is kept"
        );
    }

    #[tokio::test]
    async fn the_state_machine_forgets_the_entries_it_applies() {
        use openraft::storage::RaftStateMachine;
        let mut store = open_store();
        let mut machine = crate::PartitionStateMachine::new();
        machine.forget_applied_in(store.recent());
        store.blocking_append([normal(1, 1), normal(2, 2), normal(3, 1)]).await.unwrap();
        let committed = store.try_get_log_entries(1..3).await.unwrap();
        machine.apply(committed).await.unwrap();
        assert_eq!(kept_from(&store, 2), None, "entries 1 and 2 were applied");
        assert_eq!(kept_from(&store, 3), Some(1));
    }

    #[tokio::test]
    async fn installing_a_snapshot_forgets_the_entries_it_covers() {
        use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
        let mut store = open_store();
        store.blocking_append([normal(1, 1), normal(2, 1), normal(3, 1)]).await.unwrap();
        // Another replica's state machine, which applied entries 1 and 2, snapshots them.
        let mut other = crate::PartitionStateMachine::new();
        other.apply(store.try_get_log_entries(1..3).await.unwrap()).await.unwrap();
        let snapshot = other.build_snapshot().await.unwrap();
        let mut machine = crate::PartitionStateMachine::new();
        machine.forget_applied_in(store.recent());
        machine.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        assert_eq!(kept_from(&store, 2), None, "entries 1 and 2 are in the snapshot");
        assert_eq!(kept_from(&store, 3), Some(1));
    }
}
