//! Internal logs: the server's own state, stored as Spool partition logs under
//! `{data_dir}/internal/{name}/0` (not topics: no client can produce to or delete them).
//!
//! - `internal/group-offsets/0`: one record per commit or reset of a consumer group
//!   (`spool_broker::group::CommitRecord` has the format).
//! - `internal/producer-ids/0`: one record per block of reserved producer ids
//!   ([`crate::idempotence::ProducerIds`]).
//!
//! At start-up every record is read back, oldest first, and folded into the state it
//! describes. Afterwards one writer task owns the log: [`InternalLog::append`] queues a
//! record *synchronously* (so records are stored in the order the callers decided them, which
//! a caller holding a lock relies on) and resolves once an fsync covers it. The writer
//! appends everything queued as one batch and syncs once (group commit). A failed fsync
//! fences the log, as for any partition: every later append fails.
//!
//! The queue has no fixed bound, but its depth is bounded by its callers: each group member
//! has at most 1024 commits unanswered (`groups::member`), members and groups are bounded
//! (`spool_broker::limits`), resets are one per call, and producer ids are reserved one block
//! at a time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::BytesMut;
use spool_storage::batch::{BatchBuilder, BatchIter, ProducerStamp};
use spool_storage::fs::StdFileSystem;
use spool_storage::{FsyncPolicy, Log, LogConfig, OpenError, ReadError, TimestampMs};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ServiceError;

/// Bytes one read takes while folding a log at start-up.
const FOLD_READ_BYTES: u32 = 8 * 1024 * 1024;
/// Records, and bytes of keys and values, appended as one batch at most: far below the
/// batch limits, whatever the records' sizes (a commit record is at most a few hundred KiB).
const GROUP_RECORDS_MAX: usize = 10_000;
const GROUP_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Segment size of internal logs: small, as they hold small records.
const INTERNAL_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum OpenInternalError {
    #[error("opening the internal log {path}: {source}")]
    Open { path: PathBuf, source: OpenError },
    #[error("reading the internal log {path}: {source}")]
    Read { path: PathBuf, source: ReadError },
    #[error(
        "the internal log {path} holds a record at offset {offset} that cannot be used: {reason}"
    )]
    Record { path: PathBuf, offset: u64, reason: String },
}

type Reply = oneshot::Sender<Result<(), ServiceError>>;

struct Append {
    key: Vec<u8>,
    value: Vec<u8>,
    reply: Reply,
}

#[derive(Debug)]
pub(crate) struct InternalLog {
    path: PathBuf,
    queue: Mutex<Option<mpsc::UnboundedSender<Append>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append").field("bytes", &self.value.len()).finish()
    }
}

impl InternalLog {
    /// Opens (or creates) `{data_dir}/internal/{name}/0`, hands every record's value to
    /// `fold` oldest first (an `Err` from it stops the start), and starts the writer.
    pub(crate) async fn open(
        data_dir: &Path,
        name: &str,
        fold: impl FnMut(&[u8]) -> Result<(), String> + Send + 'static,
    ) -> Result<InternalLog, OpenInternalError> {
        let path = data_dir.join("internal").join(name).join("0");
        let opening = path.clone();
        let log = tokio::task::spawn_blocking(move || open_and_fold(&opening, fold))
            .await
            .expect("opening an internal log panicked")?;
        let (queue, requests) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write(log, requests, path.clone()));
        Ok(InternalLog { path, queue: Mutex::new(Some(queue)), writer: Mutex::new(Some(writer)) })
    }

    /// Queues one record now; the returned future resolves once it is durable.
    pub(crate) fn append(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<(), ServiceError>> + use<> {
        let (reply, answer) = oneshot::channel();
        let queued = match &*self.queue.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(queue) => queue.send(Append { key, value, reply }).is_ok(),
            None => false,
        };
        async move {
            if !queued {
                return Err(ServiceError::ShuttingDown);
            }
            answer.await.map_err(|_| ServiceError::ShuttingDown)?
        }
    }

    /// Stops taking records, writes what is queued, and closes the log cleanly.
    pub(crate) async fn close(&self) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).take();
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(writer) = writer
            && let Err(error) = writer.await
        {
            tracing::error!(path = %self.path.display(), %error, "an internal log's writer failed");
        }
    }
}

fn open_and_fold(
    path: &Path,
    mut fold: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<Log, OpenInternalError> {
    let config = LogConfig {
        segment_bytes: INTERNAL_SEGMENT_BYTES,
        fsync: FsyncPolicy::Always,
        ..LogConfig::default()
    };
    let log = Log::open(StdFileSystem::shared(), path, config, TimestampMs::now())
        .map_err(|source| OpenInternalError::Open { path: path.to_path_buf(), source })?;
    if let Some(fence) = log.fence() {
        tracing::error!(path = %path.display(), %fence, "an internal log refuses writes; what it holds is still read");
    }
    let mut offset = log.log_start_offset();
    while offset < log.visible_end_offset() {
        let read = log
            .read(offset, FOLD_READ_BYTES)
            .map_err(|source| OpenInternalError::Read { path: path.to_path_buf(), source })?;
        let bad = |offset: u64, reason: String| OpenInternalError::Record {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        for batch in BatchIter::new(&read.bytes) {
            let batch = batch.map_err(|e| bad(offset.0, e.to_string()))?;
            for record in batch.records() {
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
    Ok(log)
}

/// The writer: appends everything queued as one batch, syncs, answers.
async fn write(log: Log, mut requests: mpsc::UnboundedReceiver<Append>, path: PathBuf) {
    let log = Arc::new(Mutex::new(log));
    while let Some(first) = requests.recv().await {
        let mut bytes = first.key.len() + first.value.len();
        let mut group = vec![first];
        while bytes < GROUP_BYTES_MAX && group.len() < GROUP_RECORDS_MAX {
            let Ok(next) = requests.try_recv() else { break };
            bytes += next.key.len() + next.value.len();
            group.push(next);
        }
        let appending = log.clone();
        let (group, outcome) = tokio::task::spawn_blocking(move || {
            let mut log = appending.lock().unwrap_or_else(PoisonError::into_inner);
            let outcome = append_and_sync(&mut log, &group);
            (group, outcome)
        })
        .await
        .expect("an internal append panicked");
        for append in group {
            let answer = match &outcome {
                Ok(()) => Ok(()),
                Err(message) => Err(ServiceError::Internal(message.clone())),
            };
            let _ = append.reply.send(answer);
        }
    }
    let log = Arc::try_unwrap(log).expect("the writer holds the only reference");
    let log = log.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Err(error) = tokio::task::spawn_blocking(move || log.close())
        .await
        .expect("closing an internal log panicked")
    {
        tracing::error!(path = %path.display(), %error, "closing an internal log failed; the next start checks it");
    }
}

fn append_and_sync(log: &mut Log, group: &[Append]) -> Result<(), String> {
    let now = TimestampMs::now();
    let mut builder = BatchBuilder::new(BytesMut::new());
    for append in group {
        builder.push(now, Some(&append.key), Some(&append.value), &[]);
    }
    let mut batch = builder.finish(ProducerStamp::NONE);
    let at = log.dir().display().to_string();
    log.append(&mut batch, now)
        .map_err(|e| format!("writing to the internal log {at} failed: {e}"))?;
    log.sync(now).map_err(|e| format!("syncing the internal log {at} failed: {e}"))?;
    Ok(())
}
