//! Internal logs on disk: the server's own state (committed offsets, producer ids) kept as
//! Spool partition logs under `{data_dir}/internal/{name}/{generation}`, and their compaction.
//! The generation starts at 0 and grows by one with each compaction.
//!
//! This module holds the synchronous file protocol only, on a [`FileSystem`], so that it can be
//! crash-tested on the simulated one (`tests/crash.rs`). Which records to keep, and when to
//! compact, is the server's business: it hands [`InternalLogStore::compact`] records whose
//! folding gives the state folded so far.
//!
//! # Compaction
//!
//! [`InternalLogStore::compact`] replaces the log `{generation}` by one holding only the given
//! records, in this order:
//!
//! 1. Remove a leftover `{generation + 1}.tmp` directory; create a log there (its directory is
//!    made durable), append the records, and close it cleanly (which syncs its segments and
//!    indexes, writes its clean-shutdown marker and fsyncs its directory).
//! 2. Rename `{generation + 1}.tmp` to `{generation + 1}` and fsync `internal/{name}`. From
//!    here a start uses the new log.
//! 3. Reopen `{generation + 1}` (clean: nothing is scanned) and append there from now on.
//! 4. Delete the old log `{generation}` (`spool_storage::fs::remove_dir_all_durably`: its
//!    files, its directory, then an fsync of the parent).
//!
//! A failure before the rename leaves the old log in use. Once the rename is done, the old log
//! is superseded on disk: if the fsync after it or the reopen fails, the store refuses every
//! later append ([`InternalAppendError::Superseded`]) instead of appending to a log that the
//! next start would remove, or to one that a power loss could take back.
//!
//! At start-up ([`InternalLogStore::open`]), before folding: every `*.tmp` directory is removed
//! (a crash during step 1 leaves one; the old log is whole), the highest generation is the log,
//! and lower ones are removed (a crash between steps 2 and 4 leaves one).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use spool_storage::batch::{BatchBuilder, BatchIter, ProducerStamp};
use spool_storage::fs::{FileSystem, create_dir_all_durably, remove_dir_all_durably};
use spool_storage::{
    AppendError, CloseError, FsyncPolicy, Log, LogConfig, OpenError, ReadError, SyncError,
    TimestampMs,
};
use thiserror::Error;

use crate::limits::{
    INTERNAL_FOLD_READ_BYTES, INTERNAL_GROUP_BYTES_MAX, INTERNAL_GROUP_RECORDS_MAX,
    INTERNAL_SEGMENT_BYTES,
};

/// The configuration of every internal log: every append is durable before it is answered.
pub fn internal_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: INTERNAL_SEGMENT_BYTES,
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    }
}

#[derive(Debug, Error)]
pub enum OpenInternalError {
    #[error("opening the internal log {path}: {source}")]
    Open { path: PathBuf, source: OpenError },
    #[error("preparing the internal log directory {path}: {source}")]
    Directory { path: PathBuf, source: io::Error },
    #[error("reading the internal log {path}: {source}")]
    Read { path: PathBuf, source: ReadError },
    #[error(
        "the internal log {path} holds a record at offset {offset} that cannot be used: {reason}"
    )]
    Record { path: PathBuf, offset: u64, reason: String },
}

#[derive(Debug, Error)]
pub enum InternalAppendError {
    #[error("writing to the internal log {path} failed: {source}")]
    Append { path: PathBuf, source: AppendError },
    #[error("syncing the internal log {path} failed: {source}")]
    Sync { path: PathBuf, source: SyncError },
    #[error(
        "the internal log {path} was superseded by a compaction whose new log could not be put in use; it refuses writes until the next start"
    )]
    Superseded { path: PathBuf },
}

#[derive(Debug, Error)]
pub enum CompactError {
    #[error("compacting into {path} failed: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("compacting into {path} failed: {source}")]
    Open { path: PathBuf, source: OpenError },
    #[error("compacting into {path} failed: {source}")]
    Write { path: PathBuf, source: InternalAppendError },
    #[error("compacting into {path} failed: {source}")]
    Close { path: PathBuf, source: CloseError },
    #[error("the internal log {path} is superseded already and is not compacted again")]
    Superseded { path: PathBuf },
}

/// One internal log on disk: the current generation's log, which it appends to, and the
/// protocol that replaces it by a compacted one.
#[derive(Debug)]
pub struct InternalLogStore {
    fs: Arc<dyn FileSystem>,
    /// `internal/{name}`.
    base: PathBuf,
    generation: u64,
    log: Log,
    /// Set once a compaction renamed a new generation into place but could not put it in use.
    superseded: bool,
}

impl InternalLogStore {
    /// Opens (or creates) the internal log under `base` (`{data_dir}/internal/{name}`): clears
    /// what an interrupted compaction left, opens the current generation, and hands every
    /// record's value to `fold`, oldest first (an `Err` from it stops the opening).
    pub fn open(
        fs: Arc<dyn FileSystem>,
        base: &Path,
        now: TimestampMs,
        fold: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<InternalLogStore, OpenInternalError> {
        let generation = settle_generations(fs.as_ref(), base)
            .map_err(|source| OpenInternalError::Directory { path: base.to_path_buf(), source })?;
        let path = base.join(generation.to_string());
        let log = Log::open(fs.clone(), &path, internal_log_config(), now)
            .map_err(|source| OpenInternalError::Open { path: path.clone(), source })?;
        if let Some(fence) = log.fence() {
            tracing::error!(path = %path.display(), %fence, "an internal log refuses writes; what it holds is still read");
        }
        fold_log(&log, fold)?;
        let base = base.to_path_buf();
        Ok(InternalLogStore { fs, base, generation, log, superseded: false })
    }

    /// The current generation's log directory.
    pub fn dir(&self) -> &Path {
        self.log.dir()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Bytes of the current generation's segment files.
    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    /// Appends `records` (`(key, value)`) as one batch and syncs it: once this returns `Ok`,
    /// they are durable. Callers keep a batch within [`INTERNAL_GROUP_RECORDS_MAX`] and
    /// [`INTERNAL_GROUP_BYTES_MAX`].
    pub fn append(
        &mut self,
        records: &[(&[u8], &[u8])],
        now: TimestampMs,
    ) -> Result<(), InternalAppendError> {
        if self.superseded {
            return Err(InternalAppendError::Superseded { path: self.log.dir().to_path_buf() });
        }
        append_and_sync(&mut self.log, records, now)
    }

    /// Replaces the log by one holding only `records`, in the order the module docs give.
    pub fn compact(
        &mut self,
        records: &[(Vec<u8>, Vec<u8>)],
        now: TimestampMs,
    ) -> Result<(), CompactError> {
        if self.superseded {
            return Err(CompactError::Superseded { path: self.log.dir().to_path_buf() });
        }
        let next = self.generation + 1;
        let temporary = self.base.join(format!("{next}.tmp"));
        let path = self.base.join(next.to_string());
        // Step 1: the new log, whole and closed, under its temporary name.
        write_generation(self.fs.clone(), &temporary, records, now)?;
        // Step 2: the commit point.
        let io_at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CompactError::Io { path, source }
        };
        self.fs.rename(&temporary, &path).map_err(io_at(&path))?;
        self.superseded = true;
        self.fs.sync_dir(&self.base).map_err(io_at(&self.base))?;
        // Step 3.
        let reopened = Log::open(self.fs.clone(), &path, internal_log_config(), now)
            .map_err(|source| CompactError::Open { path: path.clone(), source })?;
        let old = std::mem::replace(&mut self.log, reopened);
        self.generation = next;
        self.superseded = false;
        // Step 4. From here the new log is in use: a failure to delete the old one leaves it
        // for the next start to remove.
        let old_dir = old.dir().to_path_buf();
        if let Err(error) = old.delete() {
            tracing::error!(path = %old_dir.display(), %error, "deleting a compacted internal log failed; the next start removes it");
        }
        Ok(())
    }

    /// Closes the current log cleanly, so the next start needs no scan.
    pub fn close(self) -> Result<(), CloseError> {
        self.log.close()
    }
}

/// Clears what an interrupted compaction left in `base` and returns the generation in use.
fn settle_generations(fs: &dyn FileSystem, base: &Path) -> io::Result<u64> {
    create_dir_all_durably(fs, base)?;
    let names = fs.list_dir(base)?;
    let generations: Vec<u64> = names.iter().filter_map(|name| name.parse().ok()).collect();
    let current = generations.iter().copied().max().unwrap_or(0);
    for name in &names {
        let unfinished = name.ends_with(".tmp");
        let superseded = name.parse::<u64>().is_ok_and(|generation| generation < current);
        if unfinished || superseded {
            tracing::info!(path = %base.join(name).display(), "removing what an interrupted compaction left");
            remove_dir_all_durably(fs, &base.join(name))?;
        }
    }
    Ok(current)
}

/// Hands the value of every record of `log` to `fold`, oldest first.
fn fold_log(
    log: &Log,
    mut fold: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), OpenInternalError> {
    let path = log.dir();
    let bad = |offset: u64, reason: String| OpenInternalError::Record {
        path: path.to_path_buf(),
        offset,
        reason,
    };
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let read = log
            .read(offset, INTERNAL_FOLD_READ_BYTES)
            .map_err(|source| OpenInternalError::Read { path: path.to_path_buf(), source })?;
        for batch in BatchIter::read_before(&read.bytes) {
            let batch = batch.map_err(|e| bad(offset.0, e.to_string()))?;
            for record in batch.records().iter() {
                let record = record.map_err(|e| bad(offset.0, e.to_string()))?;
                if record.offset < offset {
                    continue;
                }
                fold(record.value.unwrap_or_default()).map_err(|e| bad(record.offset.0, e))?;
            }
        }
        if read.next_offset <= offset {
            break;
        }
        offset = read.next_offset;
    }
    Ok(())
}

/// Compaction's step 1: a log at `temporary` holding `records`, closed cleanly.
fn write_generation(
    fs: Arc<dyn FileSystem>,
    temporary: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    now: TimestampMs,
) -> Result<(), CompactError> {
    let path = || temporary.to_path_buf();
    remove_dir_all_durably(fs.as_ref(), temporary)
        .map_err(|source| CompactError::Io { path: path(), source })?;
    let mut fresh = Log::open(fs, temporary, internal_log_config(), now)
        .map_err(|source| CompactError::Open { path: path(), source })?;
    for chunk in chunks(records) {
        let chunk: Vec<(&[u8], &[u8])> =
            chunk.iter().map(|(key, value)| (&key[..], &value[..])).collect();
        append_and_sync(&mut fresh, &chunk, now)
            .map_err(|source| CompactError::Write { path: path(), source })?;
    }
    fresh.close().map_err(|source| CompactError::Close { path: path(), source })
}

/// Splits records into groups the server's writer would append as one batch each.
fn chunks(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<&[(Vec<u8>, Vec<u8>)]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (index, (key, value)) in records.iter().enumerate() {
        if index > start
            && (bytes >= INTERNAL_GROUP_BYTES_MAX || index - start >= INTERNAL_GROUP_RECORDS_MAX)
        {
            chunks.push(&records[start..index]);
            (start, bytes) = (index, 0);
        }
        bytes += key.len() + value.len();
    }
    if start < records.len() {
        chunks.push(&records[start..]);
    }
    chunks
}

fn append_and_sync(
    log: &mut Log,
    records: &[(&[u8], &[u8])],
    now: TimestampMs,
) -> Result<(), InternalAppendError> {
    let mut builder = BatchBuilder::new(BytesMut::new());
    for (key, value) in records {
        builder.push(now, Some(key), Some(value), &[]);
    }
    let batch = builder.finish(ProducerStamp::NONE);
    log.append(&batch, now)
        .map_err(|source| InternalAppendError::Append { path: log.dir().to_path_buf(), source })?;
    log.sync(now)
        .map_err(|source| InternalAppendError::Sync { path: log.dir().to_path_buf(), source })?;
    Ok(())
}
