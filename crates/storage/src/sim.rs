//! A simulated, in-memory file system for tests: it remembers what was made durable and can
//! crash, and it can be told to fail writes or syncs.
//!
//! The model: each file has its current bytes (what reads see: the page cache) and its durable
//! bytes (as of its last `sync_data`, or a map's `flush`). The directory tree has a current
//! namespace and a durable one (as of the last `sync_dir` of each parent). [`SimFileSystem::crash`]
//! throws away everything that was not durable: unsynced writes, and files created, renamed or
//! removed without a directory sync. Directories themselves are durable once created.
//!
//! [`SimFileSystem::crash`] loses every unsynced change; [`SimFileSystem::crash_seeded`] keeps,
//! tears or drops each one independently, driven by a seed, so unsynced writes also land torn
//! and out of order.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{EntryKind, File, FileSystem, MappedFile, OpenMode};

/// Faults to inject; all off by default.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Every `sync_data`, map flush and `sync_dir` fails with EIO.
    pub fail_syncs: bool,
    /// Every write and `allocate` fails with EIO.
    pub fail_writes: bool,
    /// Writes or allocations that would grow the total size of all files past this fail
    /// with ENOSPC.
    pub space_bytes_max: Option<u64>,
}

/// Clones share one simulated disk.
#[derive(Debug, Default, Clone)]
pub struct SimFileSystem {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<PathBuf, Arc<Inode>>,
    durable_files: BTreeMap<PathBuf, Arc<Inode>>,
    dirs: BTreeSet<PathBuf>,
    faults: Faults,
}

#[derive(Debug, Default)]
struct Inode {
    data: Mutex<InodeData>,
}

#[derive(Debug, Default, Clone)]
struct InodeData {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Changes since the last sync, in order: what a seeded crash may keep, tear or drop.
    pending: Vec<Pending>,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { position: usize, bytes: Vec<u8> },
    SetLen(usize),
}

impl InodeData {
    fn make_durable(&mut self) {
        self.durable = self.current.clone();
        self.pending.clear();
    }

    /// What the disk holds after a power loss: the durable bytes, then each pending change
    /// kept whole, torn (a prefix of it kept) or dropped, independently, so later writes may
    /// land while earlier ones are lost, leaving zeros between.
    fn after_power_loss(&self, rng: &mut Rng) -> Vec<u8> {
        let mut data = self.durable.clone();
        for change in &self.pending {
            match change {
                Pending::Write { position, bytes } => {
                    let kept = match rng.below(4) {
                        0 => continue,
                        1 => rng.below(bytes.len() as u64 + 1) as usize,
                        _ => bytes.len(),
                    };
                    if kept == 0 {
                        continue;
                    }
                    let end = position + kept;
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[*position..end].copy_from_slice(&bytes[..kept]);
                }
                Pending::SetLen(len) => {
                    if rng.below(2) == 0 {
                        data.resize(*len, 0);
                    }
                }
            }
        }
        data
    }
}

/// A small deterministic generator (xorshift64*), so a crash replays from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock has already failed; keep going for its report.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl SimFileSystem {
    pub fn new() -> SimFileSystem {
        SimFileSystem::default()
    }

    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Simulates power loss: everything not durable is gone. Handles opened before the crash
    /// must not be used afterwards (drop the log first).
    pub fn crash(&self) {
        let mut state = lock(&self.state);
        state.files = state.durable_files.clone();
        for inode in state.files.values() {
            let mut data = lock(&inode.data);
            data.current = data.durable.clone();
            data.pending.clear();
        }
    }

    /// Simulates power loss the hard way, driven by `seed`: each unsynced write to a file may
    /// survive whole, torn at any byte, or not at all, independently of the others (so they
    /// may land out of order); each unsynced length change may or may not survive; each file
    /// created or removed without a directory sync may or may not be there.
    pub fn crash_seeded(&self, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut state = lock(&self.state);
        let state = &mut *state;
        let mut files = state.durable_files.clone();
        for (path, inode) in &state.files {
            if !files.contains_key(path) && rng.below(2) == 0 {
                files.insert(path.clone(), inode.clone());
            }
        }
        for (path, inode) in &state.durable_files {
            if !state.files.contains_key(path) && rng.below(2) == 0 {
                files.remove(path);
                let _ = inode;
            }
        }
        for inode in files.values() {
            let mut data = lock(&inode.data);
            let survived = data.after_power_loss(&mut rng);
            data.current = survived.clone();
            data.durable = survived;
            data.pending.clear();
        }
        state.files = files.clone();
        state.durable_files = files;
    }

    /// The current bytes of a file, for tests that inspect or damage files.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        state.files.get(path).map(|inode| lock(&inode.data).current.clone())
    }

    /// Replaces a file's bytes, durably, as a disk fault or an operator might.
    pub fn write(&self, path: &Path, bytes: &[u8]) {
        let mut state = lock(&self.state);
        let inode = state.files.entry(path.to_path_buf()).or_default().clone();
        state.durable_files.insert(path.to_path_buf(), inode.clone());
        let mut data = lock(&inode.data);
        data.current = bytes.to_vec();
        data.durable = bytes.to_vec();
        data.pending.clear();
    }

    fn used_bytes(state: &State) -> u64 {
        state.files.values().map(|inode| lock(&inode.data).current.len() as u64).sum()
    }

    fn check_write(&self, inode: &Inode, end: u64) -> io::Result<()> {
        let state = lock(&self.state);
        if state.faults.fail_writes {
            return Err(eio());
        }
        if let Some(max) = state.faults.space_bytes_max {
            let growth = end.saturating_sub(lock(&inode.data).current.len() as u64);
            if growth > 0 && Self::used_bytes(&state) + growth > max {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
        }
        Ok(())
    }

    fn check_sync(&self) -> io::Result<()> {
        if lock(&self.state).faults.fail_syncs { Err(eio()) } else { Ok(()) }
    }
}

impl FileSystem for SimFileSystem {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        for ancestor in path.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        if !state.dirs.contains(path) {
            return Err(not_found(path));
        }
        let files = state.files.keys();
        let dirs = state.dirs.iter().filter(|d| d.as_path() != path);
        Ok(files
            .chain(dirs)
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        let mut state = lock(&self.state);
        let inode = match (mode, state.files.get(path)) {
            (OpenMode::Existing, Some(inode)) => inode.clone(),
            (OpenMode::Existing, None) => return Err(not_found(path)),
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
            }
            (OpenMode::CreateNew, None) => {
                if !path.parent().is_some_and(|p| state.dirs.contains(p)) {
                    return Err(not_found(path));
                }
                let inode = Arc::new(Inode::default());
                state.files.insert(path.to_path_buf(), inode.clone());
                inode
            }
        };
        Ok(Arc::new(SimFile { fs: self.clone(), inode }))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = lock(&self.state);
        Ok(state.files.contains_key(path) || state.dirs.contains(path))
    }

    fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        let state = lock(&self.state);
        Ok(if state.files.contains_key(path) {
            Some(EntryKind::File)
        } else if state.dirs.contains(path) {
            Some(EntryKind::Directory)
        } else {
            None
        })
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.files.remove(path).map(drop).ok_or_else(|| not_found(path))
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.files.keys().chain(state.dirs.iter()).any(|p| p.parent() == Some(path)) {
            return Err(io::Error::new(io::ErrorKind::DirectoryNotEmpty, "directory not empty"));
        }
        state.dirs.remove(path);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let inode = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check_sync()?;
        let mut state = lock(&self.state);
        let state = &mut *state;
        state.durable_files.retain(|p, _| p.parent() != Some(path));
        for (p, inode) in &state.files {
            if p.parent() == Some(path) {
                state.durable_files.insert(p.clone(), inode.clone());
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SimFile {
    fs: SimFileSystem,
    inode: Arc<Inode>,
}

impl File for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        let data = lock(&self.inode.data);
        let start = usize::try_from(position).unwrap_or(usize::MAX);
        let end = start.saturating_add(buf.len());
        if end > data.current.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"));
        }
        buf.copy_from_slice(&data.current[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        let end = position + buf.len() as u64;
        self.fs.check_write(&self.inode, end)?;
        let mut data = lock(&self.inode.data);
        let (start, end) = (position as usize, end as usize);
        if data.current.len() < end {
            data.current.resize(end, 0);
        }
        data.current[start..end].copy_from_slice(buf);
        data.pending.push(Pending::Write { position: start, bytes: buf.to_vec() });
        Ok(())
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], position: u64) -> io::Result<()> {
        self.write_all_at(&bufs.concat(), position)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.inode.data).current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        // Shrinking frees space and touches no data blocks: the injected faults spare it.
        if len > self.len()? {
            self.fs.check_write(&self.inode, len)?;
        }
        let mut data = lock(&self.inode.data);
        data.current.resize(len as usize, 0);
        data.pending.push(Pending::SetLen(len as usize));
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.fs.check_write(&self.inode, len)?;
        let mut data = lock(&self.inode.data);
        if (data.current.len() as u64) < len {
            data.current.resize(len as usize, 0);
            data.pending.push(Pending::SetLen(len as usize));
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.check_sync()?;
        let mut data = lock(&self.inode.data);
        data.make_durable();
        Ok(())
    }

    fn map_mut(&self, len: usize) -> io::Result<Box<dyn MappedFile>> {
        let data = lock(&self.inode.data);
        if data.current.len() < len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "map past end of file"));
        }
        let bytes = data.current[..len].to_vec();
        Ok(Box::new(SimMap { fs: self.fs.clone(), inode: self.inode.clone(), bytes }))
    }
}

/// A map is a private copy written back on flush (durably) and on drop (to the page cache).
#[derive(Debug)]
struct SimMap {
    fs: SimFileSystem,
    inode: Arc<Inode>,
    bytes: Vec<u8>,
}

impl SimMap {
    fn write_back(&self, durable: bool) {
        let mut data = lock(&self.inode.data);
        let n = self.bytes.len().min(data.current.len());
        data.current[..n].copy_from_slice(&self.bytes[..n]);
        if durable {
            data.make_durable();
        } else {
            data.pending.push(Pending::Write { position: 0, bytes: self.bytes[..n].to_vec() });
        }
    }
}

impl MappedFile for SimMap {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    fn flush(&self) -> io::Result<()> {
        self.fs.check_sync()?;
        self.write_back(true);
        Ok(())
    }
}

impl Drop for SimMap {
    fn drop(&mut self) {
        self.write_back(false);
    }
}
