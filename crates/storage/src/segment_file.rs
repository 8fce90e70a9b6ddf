//! A segment's log file, and the process-wide cache of sealed segments' open files.
//!
//! An active segment holds its log file open: every append writes to it. A sealed segment
//! holds none: its file is opened when a read or a sync needs it and kept in one cache shared
//! by every log of the process, of at most [`SEALED_FILES_OPEN_MAX`] files, the least recently
//! used closed first (a reader still using a file keeps it open until it is done). So an idle
//! partition holds one open file whatever its segment count, and the process holds at most
//! one per partition plus the cache's bound. Index files hold none either (see `index`).
//!
//! A cached file is keyed by a number drawn once per sealed segment, never by its path: a
//! segment deleted and another created at the same path (or on another simulated file system)
//! never finds the old one's file. Dropping the segment (the log closed, the segment deleted)
//! removes its entry.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use crate::direct::Writes;
use crate::fs::{File, FileSystem, OpenMode};
use crate::limits::SEALED_FILES_OPEN_MAX;

/// A segment's log file: open while the segment is active, opened on demand once sealed.
pub(crate) enum SegmentFile {
    /// With the direct writes to it that may still be running ([`crate::direct`]).
    Open(Arc<dyn File>, Arc<Writes>),
    Sealed {
        key: u64,
        fs: Arc<dyn FileSystem>,
        path: PathBuf,
    },
}

impl fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SegmentFile::Open(..) => f.write_str("SegmentFile::Open"),
            SegmentFile::Sealed { key, path, .. } => {
                f.debug_struct("SegmentFile::Sealed").field("key", key).field("path", path).finish()
            }
        }
    }
}

impl SegmentFile {
    /// An active segment's file.
    pub(crate) fn open(file: Arc<dyn File>) -> SegmentFile {
        SegmentFile::Open(file, Arc::default())
    }

    /// The open file: the segment's own while active, else the cache's (opened if it is
    /// not there). An active segment's direct writes are over first, so a read sees what
    /// they wrote, and a length change or sync covers them; an error if one failed.
    pub(crate) fn get(&self) -> io::Result<Arc<dyn File>> {
        if let SegmentFile::Open(_, writes) = self {
            writes.wait()?;
        }
        self.get_while_writing()
    }

    /// The open file, while direct writes to it may still be running: for appending, and
    /// for a sync that waits for them itself ([`SegmentFile::writes`]).
    pub(crate) fn get_while_writing(&self) -> io::Result<Arc<dyn File>> {
        match self {
            SegmentFile::Open(file, _) => Ok(file.clone()),
            SegmentFile::Sealed { key, fs, path } => {
                if let Some(file) = cache().get(*key) {
                    return Ok(file);
                }
                let file = fs.open(path, OpenMode::Existing)?;
                cache().insert(*key, file.clone());
                Ok(file)
            }
        }
    }

    /// The open file, to read up to `end`: once the direct writes that hold bytes before
    /// `end` are over (an `always` log's readers stop at what is synced, which they are).
    pub(crate) fn get_to_read(&self, end: u64) -> io::Result<Arc<dyn File>> {
        if let SegmentFile::Open(_, writes) = self {
            writes.wait_to_read(end)?;
        }
        self.get_while_writing()
    }

    /// An active segment's direct writes, which a sync of it waits for.
    pub(crate) fn writes(&self) -> Option<&Arc<Writes>> {
        match self {
            SegmentFile::Open(_, writes) => Some(writes),
            SegmentFile::Sealed { .. } => None,
        }
    }

    /// The segment is sealed: its file is no longer held, only cached if `cached` (a
    /// segment sealed by a roll was just written, and readers of recent data read it next; one
    /// found at open waits until something reads it).
    pub(crate) fn seal(&mut self, fs: &Arc<dyn FileSystem>, path: PathBuf, cached: bool) {
        if let SegmentFile::Open(file, _) = self {
            let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
            if cached {
                cache().insert(key, file.clone());
            }
            *self = SegmentFile::Sealed { key, fs: fs.clone(), path };
        }
    }
}

impl Drop for SegmentFile {
    fn drop(&mut self) {
        if let SegmentFile::Sealed { key, .. } = self {
            cache().remove(*key);
        }
    }
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(0);
static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(|| {
    Mutex::new(Cache {
        files: HashMap::new(),
        by_use: BTreeMap::new(),
        uses: 0,
        max: SEALED_FILES_OPEN_MAX,
    })
});

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    CACHE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sealed segments' open files, least recently used first out.
struct Cache {
    /// Key -> (file, its last use).
    files: HashMap<u64, (Arc<dyn File>, u64)>,
    /// Last use -> key.
    by_use: BTreeMap<u64, u64>,
    uses: u64,
    max: usize,
}

impl Cache {
    fn get(&mut self, key: u64) -> Option<Arc<dyn File>> {
        self.uses += 1;
        let uses = self.uses;
        let (file, last) = self.files.get_mut(&key)?;
        let (file, previous) = (file.clone(), std::mem::replace(last, uses));
        self.by_use.remove(&previous);
        self.by_use.insert(uses, key);
        Some(file)
    }

    fn insert(&mut self, key: u64, file: Arc<dyn File>) {
        self.remove(key);
        self.close_least_used(self.max - 1);
        self.uses += 1;
        let uses = self.uses;
        self.files.insert(key, (file, uses));
        self.by_use.insert(uses, key);
    }

    /// Closes the least recently used files until at most `kept` are left.
    fn close_least_used(&mut self, kept: usize) {
        while self.files.len() > kept {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            self.files.remove(&oldest);
        }
    }

    fn remove(&mut self, key: u64) {
        if let Some((_, last)) = self.files.remove(&key) {
            self.by_use.remove(&last);
        }
    }
}

/// Sealed segments' files open in the cache now.
pub fn sealed_files_open() -> usize {
    cache().files.len()
}

/// Changes the cache's bound (at least 1; [`SEALED_FILES_OPEN_MAX`] until changed); files
/// past it are closed now. A server sizes it from its open-file limit.
pub fn set_sealed_files_open_max(max: usize) {
    let mut cache = cache();
    cache.max = max.max(1);
    let kept = cache.max;
    cache.close_least_used(kept);
}
