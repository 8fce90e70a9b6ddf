//! Internal logs: the server's own state, stored as Spool partition logs under
//! `{data_dir}/internal/{name}/{generation}` (not topics: no client can produce to or delete
//! them). The generation starts at 0 and grows by one with each compaction.
//!
//! - `internal/group-offsets/{generation}`: one record per commit or reset of a consumer group
//!   (`spool_broker::group::CommitRecord` has the format).
//! - `internal/producer-ids/{generation}`: one record per block of reserved producer ids
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
//!
//! # Compaction
//!
//! A log given a [`Snapshot`] (both are: the offsets log keeps one record per group, producer
//! ids the highest reservation) is compacted once it holds more than
//! [`INTERNAL_LOG_COMPACT_BYTES`], or twice what the last compaction left, whichever is more
//! (so a large state is not rewritten after every append). The writer does it between two
//! groups of appends, so nothing is appended meanwhile. It takes the snapshot, records whose
//! folding gives the state folded so far: it includes every record already appended (callers
//! change the state before they queue its record); records still queued are appended after
//! it, and folding them again after the snapshot gives the same state, as folding is in order
//! and the latest value wins. [`InternalLogStore::compact`] then writes the new generation and
//! puts it in place; `spool_broker::internal_log` gives the order of its writes and fsyncs and
//! what a start does after an interrupted one. A compaction that fails before its new
//! generation is renamed into place is logged and the old log stays in use; one that fails
//! after it leaves the log refusing appends until the next start, which uses the new
//! generation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use spool_broker::internal_log::InternalLogStore;
use spool_broker::limits::{
    INTERNAL_GROUP_BYTES_MAX, INTERNAL_GROUP_RECORDS_MAX, INTERNAL_LOG_COMPACT_BYTES,
};
use spool_storage::TimestampMs;
use spool_storage::fs::StdFileSystem;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ServiceError;

/// Records `(key, value)` whose folding gives a log's state so far (see the module docs);
/// `None` when the state is no longer there to take (the server is closing).
pub(crate) type Snapshot = Box<dyn Fn() -> Option<Vec<(Vec<u8>, Vec<u8>)>> + Send + Sync>;

pub(crate) use spool_broker::internal_log::OpenInternalError;

type Reply = oneshot::Sender<Result<(), ServiceError>>;

struct Append {
    key: Vec<u8>,
    value: Vec<u8>,
    reply: Reply,
}

pub(crate) struct InternalLog {
    path: PathBuf,
    queue: Mutex<Option<mpsc::UnboundedSender<Append>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    snapshot: Arc<OnceLock<Snapshot>>,
}

impl std::fmt::Debug for InternalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalLog").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The log the writer appends to, and when to compact it.
#[derive(Debug)]
struct Current {
    store: InternalLogStore,
    /// Compact once the log is larger than this.
    compact_bytes: u64,
    compact_bytes_min: u64,
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append").field("bytes", &self.value.len()).finish()
    }
}

impl InternalLog {
    /// Opens (or creates) the log `{data_dir}/internal/{name}`, hands every record's value to
    /// `fold` oldest first (an `Err` from it stops the start), and starts the writer.
    pub(crate) async fn open(
        data_dir: &Path,
        name: &str,
        fold: impl FnMut(&[u8]) -> Result<(), String> + Send + 'static,
    ) -> Result<InternalLog, OpenInternalError> {
        InternalLog::open_compacting_at(data_dir, name, INTERNAL_LOG_COMPACT_BYTES, fold).await
    }

    /// [`InternalLog::open`], compacting past `compact_bytes_min` (tests use small ones).
    pub(crate) async fn open_compacting_at(
        data_dir: &Path,
        name: &str,
        compact_bytes_min: u64,
        fold: impl FnMut(&[u8]) -> Result<(), String> + Send + 'static,
    ) -> Result<InternalLog, OpenInternalError> {
        let base = data_dir.join("internal").join(name);
        let store = tokio::task::spawn_blocking(move || {
            InternalLogStore::open(StdFileSystem::shared(), &base, TimestampMs::now(), fold)
        })
        .await
        .expect("opening an internal log panicked")?;
        let path = store.dir().to_path_buf();
        let compact_bytes = compact_bytes_min.max(2 * store.size_bytes());
        let current = Current { store, compact_bytes, compact_bytes_min };
        let snapshot: Arc<OnceLock<Snapshot>> = Arc::default();
        let (queue, requests) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write(current, requests, snapshot.clone()));
        Ok(InternalLog {
            path,
            queue: Mutex::new(Some(queue)),
            writer: Mutex::new(Some(writer)),
            snapshot,
        })
    }

    /// Turns compaction on, with `snapshot` as the source of the folded state.
    pub(crate) fn compact_with(&self, snapshot: Snapshot) {
        if self.snapshot.set(snapshot).is_err() {
            tracing::warn!(path = %self.path.display(), "an internal log's snapshot was set twice; the first stays");
        }
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
    /// Stops the writer once what is queued is written; says what went wrong, if anything.
    pub(crate) async fn close(&self) -> Option<String> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).take();
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(writer) = writer
            && let Err(error) = writer.await
        {
            tracing::error!(path = %self.path.display(), %error, "an internal log's writer failed");
            return Some(format!(
                "the internal log {}: its writer failed: {error}",
                self.path.display()
            ));
        }
        None
    }
}

/// The writer: appends everything queued as one batch, syncs, answers; then compacts when
/// the log has grown past its threshold.
async fn write(
    current: Current,
    mut requests: mpsc::UnboundedReceiver<Append>,
    snapshot: Arc<OnceLock<Snapshot>>,
) {
    let current = Arc::new(Mutex::new(current));
    while let Some(first) = requests.recv().await {
        let mut bytes = first.key.len() + first.value.len();
        let mut group = vec![first];
        while bytes < INTERNAL_GROUP_BYTES_MAX && group.len() < INTERNAL_GROUP_RECORDS_MAX {
            let Ok(next) = requests.try_recv() else { break };
            bytes += next.key.len() + next.value.len();
            group.push(next);
        }
        let appending = current.clone();
        let snapshot = snapshot.clone();
        let (group, outcome) = tokio::task::spawn_blocking(move || {
            let mut current = appending.lock().unwrap_or_else(PoisonError::into_inner);
            let records: Vec<(&[u8], &[u8])> =
                group.iter().map(|append| (&append.key[..], &append.value[..])).collect();
            let outcome = current.store.append(&records, TimestampMs::now());
            if outcome.is_ok()
                && let Some(snapshot) = snapshot.get()
                && current.store.size_bytes() > current.compact_bytes
            {
                current.compact(snapshot);
            }
            (group, outcome)
        })
        .await
        .expect("an internal append panicked");
        for append in group {
            let answer = match &outcome {
                Ok(()) => Ok(()),
                Err(error) => Err(ServiceError::Internal(error.to_string())),
            };
            let _ = append.reply.send(answer);
        }
    }
    let current = Arc::try_unwrap(current).expect("the writer holds the only reference");
    let store = current.into_inner().unwrap_or_else(PoisonError::into_inner).store;
    let path = store.dir().to_path_buf();
    match crate::partition::joined(tokio::task::spawn_blocking(move || store.close())).await {
        Some(Ok(())) => {}
        Some(Err(error)) => {
            tracing::error!(path = %path.display(), %error, "closing an internal log failed; the next start checks it");
        }
        None => {
            tracing::warn!(path = %path.display(), "the runtime shut down before the internal log closed; the next start checks it");
        }
    }
}

impl Current {
    /// Replaces the log by one holding only `snapshot`'s records (see the module docs). On
    /// failure the old log stays in use, and the next attempt waits until the log has doubled.
    fn compact(&mut self, snapshot: &Snapshot) {
        let before_bytes = self.store.size_bytes();
        let compacted = match snapshot() {
            Some(records) => {
                self.store.compact(&records, TimestampMs::now()).map_err(|e| e.to_string())
            }
            None => Err("the state to snapshot is gone".to_string()),
        };
        match compacted {
            Ok(()) => {
                let after_bytes = self.store.size_bytes();
                self.compact_bytes = self.compact_bytes_min.max(2 * after_bytes);
                tracing::info!(path = %self.store.dir().display(), before_bytes, after_bytes, "compacted an internal log");
            }
            Err(error) => {
                self.compact_bytes = self.compact_bytes_min.max(2 * before_bytes);
                tracing::error!(path = %self.store.dir().display(), %error, "compacting an internal log failed; it stays as it is");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::BytesMut;
    use spool_broker::internal_log::internal_log_config;
    use spool_storage::Log;
    use spool_storage::batch::{BatchBuilder, ProducerStamp};

    use super::*;

    type State = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;

    /// A log whose records are `key=value` and whose state is the latest value per key; with
    /// `compact_bytes_min`, compacted with that state as its snapshot.
    async fn open(data: &Path, compact_bytes_min: u64) -> (InternalLog, State) {
        let state: State = Arc::default();
        let folding = state.clone();
        let log = InternalLog::open_compacting_at(data, "test", compact_bytes_min, move |value| {
            let text = std::str::from_utf8(value).map_err(|e| e.to_string())?;
            let (key, value) = text.split_once('=').ok_or("no =")?;
            let mut state = folding.lock().unwrap();
            state.insert(key.as_bytes().to_vec(), value.as_bytes().to_vec());
            Ok(())
        })
        .await
        .unwrap();
        let source = state.clone();
        log.compact_with(Box::new(move || {
            let state = source.lock().unwrap();
            let records = state.iter().map(|(k, v)| (k.clone(), [&k[..], b"=", v].concat()));
            Some(records.collect())
        }));
        (log, state)
    }

    /// Applies `key=value` to the state, then appends it, as the offsets log's callers do.
    async fn put(log: &InternalLog, state: &State, key: &str, value: &str) {
        state.lock().unwrap().insert(key.into(), value.into());
        log.append(key.into(), format!("{key}={value}").into_bytes()).await.unwrap();
    }

    /// The generations in `internal/test`, and the bytes of their segment files.
    fn on_disk(data: &Path) -> (Vec<String>, u64) {
        let base = data.join("internal").join("test");
        let mut names: Vec<String> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut bytes = 0;
        for name in &names {
            for file in std::fs::read_dir(base.join(name)).unwrap() {
                let file = file.unwrap();
                if file.file_name().to_string_lossy().ends_with(".log") {
                    bytes += file.metadata().unwrap().len();
                }
            }
        }
        (names, bytes)
    }

    fn expected(rounds: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
        (0..10).map(|k| (format!("k{k}").into(), format!("v{}", rounds - 1).into())).collect()
    }

    async fn fill(log: &InternalLog, state: &State, rounds: usize) {
        for round in 0..rounds {
            for k in 0..10 {
                put(log, state, &format!("k{k}"), &format!("v{round}")).await;
            }
        }
    }

    #[tokio::test]
    async fn many_appends_stay_bounded_and_a_restart_folds_the_compacted_state() {
        let data = tempfile::tempdir().unwrap();
        let (log, state) = open(data.path(), 16 * 1024).await;
        // About 40 bytes of batch per record (one record per batch here): 2000 records are
        // about 80 KiB uncompacted.
        fill(&log, &state, 200).await;
        log.close().await;
        let (generations, bytes) = on_disk(data.path());
        assert_eq!(generations.len(), 1, "one log left: {generations:?}");
        assert_ne!(generations, ["0"], "it was compacted");
        assert!(bytes <= 16 * 1024 + 4096, "{bytes} bytes stay near the threshold");
        let (reopened, folded) = open(data.path(), 16 * 1024).await;
        assert_eq!(*folded.lock().unwrap(), expected(200));
        // And it goes on from there.
        put(&reopened, &folded, "k0", "after").await;
        reopened.close().await;
        let (_again, refolded) = open(data.path(), 16 * 1024).await;
        let mut after = expected(200);
        after.insert(b"k0".to_vec(), b"after".to_vec());
        assert_eq!(*refolded.lock().unwrap(), after);
    }

    /// A crash during step 2 leaves `{generation + 1}.tmp`; one between steps 3 and 5 leaves
    /// the old generation beside the new one. Either way the start uses the right log and
    /// removes the rest.
    #[tokio::test]
    async fn a_start_after_an_interrupted_compaction_uses_the_right_log() {
        let data = tempfile::tempdir().unwrap();
        let (log, state) = open(data.path(), 16 * 1024).await;
        fill(&log, &state, 100).await;
        log.close().await;
        let (generations, _) = on_disk(data.path());
        let current: u64 = generations[0].parse().unwrap();
        let base = data.path().join("internal").join("test");
        // Step 2 interrupted: a half-written next generation.
        let unfinished = base.join(format!("{}.tmp", current + 1));
        std::fs::create_dir(&unfinished).unwrap();
        std::fs::write(unfinished.join("00000000000000000000.log"), b"torn").unwrap();
        // Steps 3 to 5 interrupted: an older generation still there, holding what the current
        // one does not (a stale value, to tell which one was folded).
        let older = base.join((current - 1).to_string());
        std::fs::create_dir(&older).unwrap();
        let mut stale =
            Log::open(StdFileSystem::shared(), &older, internal_log_config(), TimestampMs::now())
                .unwrap();
        let mut batch = BatchBuilder::new(BytesMut::new());
        batch.push(TimestampMs::now(), Some(b"k0"), Some(b"k0=stale"), &[]);
        stale.append(&batch.finish(ProducerStamp::NONE), TimestampMs::now()).unwrap();
        stale.sync(TimestampMs::now()).unwrap();
        stale.close().unwrap();
        let (reopened, folded) = open(data.path(), 16 * 1024).await;
        assert_eq!(*folded.lock().unwrap(), expected(100));
        reopened.close().await;
        assert_eq!(on_disk(data.path()).0, [current.to_string()], "the leftovers are removed");
    }
}
