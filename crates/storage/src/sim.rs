//! A simulated, in-memory file system for tests: it remembers what was made durable and can
//! crash, and it can be told to fail writes or syncs, or to halt after a given number of steps.
//!
//! The model, as a real file system behaves after a power loss:
//!
//! - Each file has its current bytes (what reads see: the page cache) and its durable bytes
//!   (as of its last `sync_data`, a map's `flush`, or a sync of the whole disk).
//! - Each directory has its current entries (what lookups and listings see) and its durable
//!   entries (as of its last `sync_dir`, or a sync of the whole disk). An entry names a file or a directory. Creating,
//!   renaming or removing an entry, a directory's included, changes only the current entries
//!   of the directories involved: it is durable once those directories are fsynced.
//! - After a power loss the tree is what the durable entries reach from the root: a directory
//!   whose creation was not made durable by an fsync of its parent vanishes with everything in
//!   it, however durable that was, and a removed one whose removal was not made durable comes
//!   back with its durable entries.
//!
//! [`SimFileSystem::crash`] loses every unsynced change; [`SimFileSystem::crash_seeded`] keeps,
//! tears or drops each one independently, driven by a seed, so unsynced writes also land torn
//! and out of order, and each unsynced entry change of a directory may or may not survive.
//!
//! [`SimFileSystem::halt_after_steps`] stops the simulated machine after a number of changing
//! steps (a write, a sync, a creation, a rename, a removal): every later call fails, as if the
//! power went out there. A crash test counts the steps of an operation with
//! [`SimFileSystem::steps`], then halts it at each one in turn and crashes, or resumes
//! ([`SimFileSystem::resume`]) as after a disk that failed for a while.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::fs::{EntryKind, File, FileSystem, OpenMode, Volume};

mod file;
use file::SimFile;

/// Faults to inject; all off by default.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Every `sync_data`, map flush, `sync_dir` and volume sync fails with EIO.
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

/// Directories are kept by number, so that a renamed directory keeps its entries, durable and
/// current, as on a real file system.
type DirId = u64;

/// The root directory's number: the root always exists.
const ROOT: DirId = 0;

#[derive(Debug)]
struct State {
    dirs: BTreeMap<DirId, Dir>,
    next_dir: DirId,
    faults: Faults,
    /// Changing steps taken so far.
    steps: u64,
    /// Every call fails once `steps` reaches this.
    halt_at_step: Option<u64>,
    /// Whether direct writes may go on behind their appends (`File::writes_behind`).
    writes_behind: bool,
}

impl Default for State {
    fn default() -> State {
        State {
            dirs: BTreeMap::from([(ROOT, Dir::default())]),
            next_dir: ROOT + 1,
            faults: Faults::default(),
            steps: 0,
            halt_at_step: None,
            writes_behind: false,
        }
    }
}

#[derive(Debug, Default)]
struct Dir {
    /// What lookups and listings see.
    current: BTreeMap<String, Entry>,
    /// As of the directory's last `sync_dir`: what a power loss leaves.
    durable: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    File(Arc<Inode>),
    Dir(DirId),
}

impl Entry {
    fn kind(&self) -> EntryKind {
        match self {
            Entry::File(_) => EntryKind::File,
            Entry::Dir(_) => EntryKind::Directory,
        }
    }
}

/// Whether two optional entries name the same file or directory.
fn same(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Entry::File(a)), Some(Entry::File(b))) => Arc::ptr_eq(a, b),
        (Some(Entry::Dir(a)), Some(Entry::Dir(b))) => a == b,
        _ => false,
    }
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
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

fn invalid(path: &Path, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {why}", path.display()))
}

fn halted() -> io::Error {
    io::Error::other("the simulated machine has halted")
}

/// The names along `path`, from the root (relative paths start at the root too).
fn names(path: &Path) -> io::Result<Vec<&str>> {
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => {
                names.push(name.to_str().ok_or_else(|| invalid(path, "not UTF-8"))?)
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(invalid(path, "`..` is not simulated")),
        }
    }
    Ok(names)
}

impl State {
    fn dir(&self, id: DirId) -> &Dir {
        self.dirs.get(&id).expect("an entry names a directory that exists")
    }

    fn dir_mut(&mut self, id: DirId) -> &mut Dir {
        self.dirs.get_mut(&id).expect("an entry names a directory that exists")
    }

    /// What is at `path` now; `None` when nothing is.
    fn lookup(&self, path: &Path) -> io::Result<Option<Entry>> {
        let mut entry = Entry::Dir(ROOT);
        for name in names(path)? {
            let Entry::Dir(id) = entry else { return Ok(None) };
            match self.dir(id).current.get(name) {
                Some(next) => entry = next.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(entry))
    }

    fn dir_at(&self, path: &Path) -> io::Result<DirId> {
        match self.lookup(path)? {
            Some(Entry::Dir(id)) => Ok(id),
            Some(Entry::File(_)) => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{}: not a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    /// The directory that holds `path`, and the name of `path` in it.
    fn parent_and_name(&self, path: &Path) -> io::Result<(DirId, String)> {
        let names = names(path)?;
        let (name, _) = names.split_last().ok_or_else(|| invalid(path, "the root"))?;
        let parent = path.parent().ok_or_else(|| invalid(path, "the root"))?;
        Ok((self.dir_at(parent).map_err(|_| not_found(path))?, name.to_string()))
    }

    /// Counts one changing step, or fails if the machine has halted.
    fn step(&mut self) -> io::Result<()> {
        self.running()?;
        self.steps += 1;
        Ok(())
    }

    fn running(&self) -> io::Result<()> {
        match self.halt_at_step {
            Some(step) if self.steps >= step => Err(halted()),
            _ => Ok(()),
        }
    }

    /// Every file the tree reaches now, once each.
    fn reachable_files(&self) -> Vec<Arc<Inode>> {
        let mut files: Vec<Arc<Inode>> = Vec::new();
        let mut seen = BTreeSet::new();
        let mut queue = vec![ROOT];
        while let Some(id) = queue.pop() {
            if !seen.insert(id) {
                continue;
            }
            for entry in self.dir(id).current.values() {
                match entry {
                    Entry::Dir(id) => queue.push(*id),
                    Entry::File(inode) => {
                        if !files.iter().any(|f| Arc::ptr_eq(f, inode)) {
                            files.push(inode.clone());
                        }
                    }
                }
            }
        }
        files
    }

    /// A power loss: from the root down, each directory the surviving entries reach keeps its
    /// durable entries, and, with `rng`, each entry changed since its last sync is changed
    /// after all or not, by a coin. Directories reached by no surviving entry are gone. Then
    /// each surviving file keeps its durable bytes, or with `rng` its durable bytes with each
    /// unsynced change kept, torn or dropped. Un-halts the machine.
    fn lose_power(&mut self, mut rng: Option<&mut Rng>) {
        let mut reached = BTreeSet::new();
        let mut queue = vec![ROOT];
        while let Some(id) = queue.pop() {
            if !reached.insert(id) {
                continue;
            }
            let dir = self.dir_mut(id);
            let mut survivors = dir.durable.clone();
            if let Some(rng) = rng.as_deref_mut() {
                let names: BTreeSet<&String> =
                    dir.current.keys().chain(dir.durable.keys()).collect();
                for name in names {
                    let (now, then) = (dir.current.get(name), dir.durable.get(name));
                    if same(now, then) || rng.below(2) == 0 {
                        continue;
                    }
                    match now {
                        Some(entry) => survivors.insert(name.clone(), entry.clone()),
                        None => survivors.remove(name),
                    };
                }
            }
            queue.extend(survivors.values().filter_map(|entry| match entry {
                Entry::Dir(id) => Some(*id),
                Entry::File(_) => None,
            }));
            dir.current = survivors.clone();
            dir.durable = survivors;
        }
        self.dirs.retain(|id, _| reached.contains(id));
        for inode in self.reachable_files() {
            let mut data = lock(&inode.data);
            let survived = match rng.as_deref_mut() {
                Some(rng) => data.after_power_loss(rng),
                None => data.durable.clone(),
            };
            data.current = survived.clone();
            data.durable = survived;
            data.pending.clear();
        }
        self.halt_at_step = None;
    }
}

impl SimFileSystem {
    pub fn new() -> SimFileSystem {
        SimFileSystem::default()
    }

    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Lets direct writes go on behind their appends, on a writer thread, as on a real disk
    /// (off until set: the crash tests need every step in one order).
    pub fn set_writes_behind(&self, on: bool) {
        lock(&self.state).writes_behind = on;
    }

    fn writes_behind(&self) -> bool {
        lock(&self.state).writes_behind
    }

    /// How many changing steps (writes, length changes, syncs, creations, renames, removals)
    /// the disk has taken so far.
    pub fn steps(&self) -> u64 {
        lock(&self.state).steps
    }

    /// Halts the simulated machine after `steps` more changing steps: from then on every call
    /// fails, as if the power went out. Follow with [`SimFileSystem::crash`] or
    /// [`SimFileSystem::crash_seeded`], which start it again.
    pub fn halt_after_steps(&self, steps: u64) {
        let mut state = lock(&self.state);
        state.halt_at_step = Some(state.steps + steps);
    }

    /// Starts a halted machine again without a crash, as after a disk that failed every call
    /// for a while: the calls that failed changed nothing, and everything before them stays
    /// as it was, durable or not.
    pub fn resume(&self) {
        lock(&self.state).halt_at_step = None;
    }

    /// Simulates power loss: everything not durable is gone. Handles opened before the crash
    /// must not be used afterwards (drop the log first).
    pub fn crash(&self) {
        lock(&self.state).lose_power(None);
    }

    /// Simulates power loss the hard way, driven by `seed`: each unsynced write to a file may
    /// survive whole, torn at any byte, or not at all, independently of the others (so they
    /// may land out of order); each unsynced length change may or may not survive; each file
    /// or directory created, renamed or removed without a sync of its directory may or may not
    /// be there.
    pub fn crash_seeded(&self, seed: u64) {
        let mut rng = Rng::new(seed);
        lock(&self.state).lose_power(Some(&mut rng));
    }

    /// The current bytes of a file, for tests that inspect or damage files.
    pub fn read(&self, path: &Path) -> Option<Vec<u8>> {
        let state = lock(&self.state);
        match state.lookup(path).ok()? {
            Some(Entry::File(inode)) => Some(lock(&inode.data).current.clone()),
            _ => None,
        }
    }

    /// Replaces a file's bytes, durably, as a disk fault or an operator might; creates the
    /// file, and the directories above it, durably if they are missing.
    pub fn write(&self, path: &Path, bytes: &[u8]) {
        let mut state = lock(&self.state);
        let names = names(path).expect("a simulated path");
        let (name, dirs) = names.split_last().expect("a file's path");
        let mut id = ROOT;
        for dir in dirs {
            let existing = state.dir(id).current.get(*dir).cloned();
            id = match existing {
                Some(Entry::Dir(next)) => next,
                Some(Entry::File(_)) => panic!("{}: a file is in the way", path.display()),
                None => {
                    let next = state.next_dir;
                    state.next_dir += 1;
                    state.dirs.insert(next, Dir::default());
                    let parent = state.dir_mut(id);
                    parent.current.insert(dir.to_string(), Entry::Dir(next));
                    parent.durable.insert(dir.to_string(), Entry::Dir(next));
                    next
                }
            };
        }
        let inode = match state.dir(id).current.get(*name) {
            Some(Entry::File(inode)) => inode.clone(),
            Some(Entry::Dir(_)) => panic!("{}: a directory is in the way", path.display()),
            None => Arc::new(Inode::default()),
        };
        let dir = state.dir_mut(id);
        dir.current.insert(name.to_string(), Entry::File(inode.clone()));
        dir.durable.insert(name.to_string(), Entry::File(inode.clone()));
        let mut data = lock(&inode.data);
        data.current = bytes.to_vec();
        data.durable = bytes.to_vec();
        data.pending.clear();
    }

    fn used_bytes(state: &State) -> u64 {
        state.reachable_files().iter().map(|inode| lock(&inode.data).current.len() as u64).sum()
    }

    fn check_write(&self, inode: &Inode, end: u64) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.step()?;
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
        let mut state = lock(&self.state);
        state.step()?;
        if state.faults.fail_syncs { Err(eio()) } else { Ok(()) }
    }

    /// Counts one changing step that no fault applies to.
    fn step(&self) -> io::Result<()> {
        lock(&self.state).step()
    }

    fn running(&self) -> io::Result<()> {
        lock(&self.state).running()
    }
}

impl FileSystem for SimFileSystem {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.step()?;
        let (parent, name) = state.parent_and_name(path)?;
        if state.dir(parent).current.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: exists", path.display()),
            ));
        }
        let id = state.next_dir;
        state.next_dir += 1;
        state.dirs.insert(id, Dir::default());
        state.dir_mut(parent).current.insert(name, Entry::Dir(id));
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = lock(&self.state);
        state.running()?;
        let id = state.dir_at(path)?;
        Ok(state.dir(id).current.keys().cloned().collect())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        let mut state = lock(&self.state);
        state.running()?;
        let inode = match (mode, state.lookup(path)?) {
            (OpenMode::Existing | OpenMode::ReadOnly, Some(Entry::File(inode))) => inode,
            (OpenMode::Existing | OpenMode::ReadOnly, Some(Entry::Dir(_))) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: a directory", path.display()),
                ));
            }
            (OpenMode::Existing | OpenMode::ReadOnly, None) => return Err(not_found(path)),
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
            }
            (OpenMode::CreateNew, None) => {
                state.step()?;
                let (parent, name) = state.parent_and_name(path)?;
                let inode = Arc::new(Inode::default());
                state.dir_mut(parent).current.insert(name, Entry::File(inode.clone()));
                inode
            }
        };
        Ok(Arc::new(SimFile { fs: self.clone(), inode, direct: false }))
    }

    /// A handle whose writes must be aligned as Linux's `O_DIRECT` ones must; the simulated
    /// disk keeps them unsynced as any other write (a real disk's write cache does too).
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn File>>> {
        let state = lock(&self.state);
        state.running()?;
        match state.lookup(path)? {
            Some(Entry::File(inode)) => {
                Ok(Some(Arc::new(SimFile { fs: self.clone(), inode, direct: true })))
            }
            Some(Entry::Dir(_)) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: a directory", path.display()),
            )),
            None => Err(not_found(path)),
        }
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let state = lock(&self.state);
        state.running()?;
        Ok(state.lookup(path)?.is_some())
    }

    fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        let state = lock(&self.state);
        state.running()?;
        Ok(state.lookup(path)?.map(|entry| entry.kind()))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.step()?;
        let (parent, name) = state.parent_and_name(path)?;
        match state.dir(parent).current.get(&name) {
            Some(Entry::File(_)) => {}
            Some(Entry::Dir(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: a directory", path.display()),
                ));
            }
            None => return Err(not_found(path)),
        }
        state.dir_mut(parent).current.remove(&name);
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.step()?;
        let (parent, name) = state.parent_and_name(path)?;
        let id = state.dir_at(path)?;
        if !state.dir(id).current.is_empty() {
            return Err(io::Error::new(io::ErrorKind::DirectoryNotEmpty, "directory not empty"));
        }
        state.dir_mut(parent).current.remove(&name);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        state.step()?;
        let (from_parent, from_name) = state.parent_and_name(from)?;
        let entry = state.dir(from_parent).current.get(&from_name).cloned();
        let entry = entry.ok_or_else(|| not_found(from))?;
        let (to_parent, to_name) = state.parent_and_name(to)?;
        let replaced = state.dir(to_parent).current.get(&to_name).cloned();
        if same(Some(&entry), replaced.as_ref()) {
            return Ok(());
        }
        match (&entry, &replaced) {
            (_, None) | (Entry::File(_), Some(Entry::File(_))) => {}
            (Entry::Dir(_), Some(Entry::Dir(id))) if state.dir(*id).current.is_empty() => {}
            _ => {
                return Err(invalid(
                    to,
                    "rename over an entry of another kind, or a full directory",
                ));
            }
        }
        if matches!(entry, Entry::Dir(_)) && to.starts_with(from) {
            return Err(invalid(to, "rename of a directory into itself"));
        }
        state.dir_mut(from_parent).current.remove(&from_name);
        state.dir_mut(to_parent).current.insert(to_name, entry);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check_sync()?;
        let mut state = lock(&self.state);
        let id = state.dir_at(path)?;
        let dir = state.dir_mut(id);
        dir.durable = dir.current.clone();
        Ok(())
    }

    fn volume(&self, _dir: &Path) -> io::Result<Option<Box<dyn Volume>>> {
        self.running()?;
        Ok(Some(Box::new(SimVolume { fs: self.clone() })))
    }
}

/// The whole simulated disk: its sync makes every directory's entries and every file's bytes
/// durable (what a map has not written back is not a file's bytes yet).
#[derive(Debug)]
struct SimVolume {
    fs: SimFileSystem,
}

impl Volume for SimVolume {
    fn sync(&self) -> io::Result<()> {
        self.fs.check_sync()?;
        let mut state = lock(&self.fs.state);
        for dir in state.dirs.values_mut() {
            dir.durable = dir.current.clone();
            for entry in dir.current.values() {
                if let Entry::File(inode) = entry {
                    lock(&inode.data).make_durable();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
