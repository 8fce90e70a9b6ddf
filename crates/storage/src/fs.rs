//! The file-system seam. All storage I/O goes through [`FileSystem`] and [`File`], so every
//! test can run against [`crate::sim::SimFileSystem`], which simulates crashes and faults.
//!
//! The trait is deliberately small: positional reads and writes, length changes,
//! preallocation, the syncs (a file's data, a directory's entries, a whole file system), a
//! writeback hint (which makes nothing durable), a writable map for index files, and reads
//! that may share the page cache instead of copying it.
//!
//! The protocols that make changes to the namespace durable are written once, here, on top of
//! the trait, so that every caller follows the same order of writes and fsyncs and every
//! caller's use of them can be crash-tested on the simulator: [`create_dir_all_durably`] makes
//! a directory and those above it, [`write_atomically`] (and its halves [`write_temporary`] and
//! [`Temporary::commit`], for a caller that fsyncs the directory itself) replaces a small file, and [`remove_dir_all_durably`] removes a directory tree.

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::limits::MAP_READ_BYTES_MIN;

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, for reading and writing.
    Existing,
    /// An existing file, for reading only (offline checks, which change nothing).
    ReadOnly,
    /// A new file; fails if it exists.
    CreateNew,
}

/// What a directory entry is, seen without following a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file (or anything else that is neither a directory nor a link).
    File,
    Directory,
    Symlink,
}

pub trait FileSystem: Send + Sync + Debug + 'static {
    /// Creates one directory, whose parent exists; an error if something is at `path`. The new
    /// entry is durable only once the parent is synced: use [`create_dir_all_durably`].
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// The names (not paths) of the entries directly inside `path`.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>>;
    /// Whether something is at `path`, following symbolic links.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// What is at `path` itself, not following a symbolic link there (`lstat`); `None` when
    /// nothing is.
    fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The file system holding the directory `dir`, for syncing all of it at once; `None`
    /// where there is no such call. Open it before writing: a writeback error that happens
    /// after it is opened is reported by its next [`Volume::sync`], whoever else saw it.
    fn volume(&self, _dir: &Path) -> io::Result<Option<Box<dyn Volume>>> {
        Ok(None)
    }
    /// A second handle on the existing file at `path` for direct writes, past any cache
    /// (`O_DIRECT`; see `direct`): its writes must start and end on a multiple of
    /// [`crate::limits::DIRECT_BLOCK_BYTES`], from memory aligned the same way. `None` where
    /// the file system takes no direct writes; the caller then writes through its ordinary
    /// handle.
    fn open_direct(&self, _path: &Path) -> io::Result<Option<Arc<dyn File>>> {
        Ok(None)
    }
}

/// A whole file system (see [`FileSystem::volume`]).
pub trait Volume: Send + Sync + Debug {
    /// Makes every file's data and every directory's entries on the file system durable
    /// (`syncfs`), including other programs' writes. A failure means some write on the file
    /// system, not necessarily one of ours, may have been lost.
    fn sync(&self) -> io::Result<()>;
}

#[allow(clippy::len_without_is_empty)] // a file's length is an I/O call, not a collection's
pub trait File: Send + Sync + Debug {
    /// Fills `buf` from `position`; an error if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()>;
    /// The `len` bytes at `position`; an error if the file ends first. The caller promises
    /// that nothing rewrites or cuts off these bytes while the answer lives (in a log: they lie
    /// below the visible end, which only grows), so an implementation may map them rather
    /// than copy them.
    fn read_shared_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        read_copied(self, position, len)
    }
    /// Writes all of `buf` at `position`.
    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()>;
    /// Writes all of `bufs`, back to back, from `position` (`pwritev`).
    fn write_all_vectored_at(&self, bufs: &[&[u8]], position: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves blocks for the first `len` bytes (`posix_fallocate`), so later writes to them,
    /// including writes through a map, cannot fail for lack of space.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// A hint, not a sync: starts writing `len` bytes from `position` to the disk without
    /// waiting (`sync_file_range` with `SYNC_FILE_RANGE_WRITE` only), so the `fdatasync` that
    /// follows finds less to do. It makes nothing durable and reports no error: a failed
    /// writeback is reported by the next [`File::sync_data`] (the kernel keeps the error for
    /// it; only a waiting `sync_file_range` would consume it, and this one never waits).
    fn start_writeback(&self, _position: u64, _len: u64) {}
    /// Whether direct writes through this handle may go on after the append that handed
    /// them on, on a writer thread (see `direct`): yes, but for the simulated file system's
    /// crash tests, which need every step in one order.
    fn writes_behind(&self) -> bool {
        true
    }
    /// Maps the first `len` bytes (which must exist) for reading and writing.
    fn map_mut(&self, len: usize) -> io::Result<Box<dyn MappedFile>>;
}

/// A writable map of the start of a file.
pub trait MappedFile: Send + Sync + Debug {
    fn bytes(&self) -> &[u8];
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Makes the mapped bytes durable (`msync`).
    fn flush(&self) -> io::Result<()>;
}

/// The most buffers one `pwritev` call takes (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFileSystem;

impl StdFileSystem {
    /// The real file system, as the shared handle a log takes.
    pub fn shared() -> Arc<dyn FileSystem> {
        Arc::new(StdFileSystem)
    }
}

impl FileSystem for StdFileSystem {
    /// Directories are private to the server's user (0700), whatever the umask.
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Files are private to the server's user (0600), and a symbolic link is never followed
    /// to one (`O_NOFOLLOW`): what Spool writes stays inside its data directory.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn File>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.read(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
        match mode {
            OpenMode::Existing => options.write(true),
            OpenMode::CreateNew => options.write(true).create_new(true),
            OpenMode::ReadOnly => &mut options,
        };
        Ok(Arc::new(StdFile { file: options.open(path)? }))
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn entry_kind(&self, path: &Path) -> io::Result<Option<EntryKind>> {
        let file_type = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata.file_type(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        Ok(Some(if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_dir() {
            EntryKind::Directory
        } else {
            EntryKind::File
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    #[cfg(target_os = "linux")]
    fn volume(&self, dir: &Path) -> io::Result<Option<Box<dyn Volume>>> {
        Ok(Some(Box::new(StdVolume { dir: std::fs::File::open(dir)? })))
    }

    /// Opened as [`StdFileSystem::open`] opens an existing file, with `O_DIRECT`; a file
    /// system that refuses the flag (tmpfs) answers `EINVAL`, and gets `None`.
    #[cfg(target_os = "linux")]
    fn open_direct(&self, path: &Path) -> io::Result<Option<Arc<dyn File>>> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).custom_flags(libc::O_NOFOLLOW | libc::O_DIRECT);
        match options.open(path) {
            Ok(file) => Ok(Some(Arc::new(StdFile { file }))),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// The file system holding a directory, through a descriptor of that directory kept open:
/// `syncfs` reports a writeback error to each descriptor that had not yet seen it, so one
/// kept from before the first write misses none.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct StdVolume {
    dir: std::fs::File,
}

#[cfg(target_os = "linux")]
impl Volume for StdVolume {
    fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the lifetime of `self.dir`.
        match unsafe { libc::syncfs(self.dir.as_raw_fd()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

/// Creates the directory `dir` and every missing directory above it, durably: once this
/// returns, all of them survive a crash.
///
/// Order of writes and fsyncs, for each missing directory from the top down:
///
/// 1. Create the directory.
/// 2. Fsync its parent, so that the new entry is durable before anything is made inside it.
///
/// A crash part way leaves the upper directories and not the lower ones, so whatever a crash
/// leaves has every directory above it. Directories that exist already, symbolic links to
/// directories among them (a data directory on another disk, say), are used as they are.
pub fn create_dir_all_durably(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(path) = next {
        if fs.exists(path)? {
            break;
        }
        missing.push(path);
        next = parent_dir(path);
    }
    for path in missing.into_iter().rev() {
        match fs.create_dir(path) {
            Ok(()) => {}
            // Made meanwhile by another thread, which may not have synced the parent yet: the
            // sync below covers it too.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        fs.sync_dir(parent_dir(path).expect("a missing directory is not a root"))?;
    }
    Ok(())
}

/// Replaces the file `name` in `dir` by one holding `bytes`, atomically and durably: whatever
/// happens, the file holds its old bytes or all of the new ones, and once this returns, the new
/// ones survive a crash.
///
/// Order of writes and fsyncs:
///
/// 1. Remove `{name}.tmp` if an interrupted replace left one.
/// 2. Create `{name}.tmp` and write `bytes` to it.
/// 3. Fsync `{name}.tmp` (`fdatasync`), so its bytes are on the disk before any name points at
///    them.
/// 4. Rename `{name}.tmp` over `{name}`.
/// 5. Fsync `dir`, so the rename is durable.
///
/// A crash before step 5 leaves the old file (or none, if there was none) and perhaps
/// `{name}.tmp`, which the next replace removes.
pub fn write_atomically(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    write_temporary(fs, dir, name, bytes)?.commit(fs)?;
    fs.sync_dir(dir)
}

/// Steps 1 and 2 of [`write_atomically`]: `{name}.tmp` written, nothing synced yet, so a
/// caller may still give up cleanly when this fails (a full disk; the temporary file is
/// removed then). [`Temporary::commit`] does steps 3 and 4; a caller that fsyncs `dir` itself
/// right after, together with other changes to it, skips step 5 (until it does, a crash may
/// leave the old file).
pub fn write_temporary(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> io::Result<Temporary> {
    let temporary = dir.join(format!("{name}.tmp"));
    if fs.exists(&temporary)? {
        fs.remove_file(&temporary)?;
    }
    let file = fs.open(&temporary, OpenMode::CreateNew)?;
    if let Err(error) = file.write_all_at(bytes, 0) {
        drop(file);
        let _ = fs.remove_file(&temporary);
        return Err(error);
    }
    Ok(Temporary { file, path: temporary, to: dir.join(name) })
}

/// A `{name}.tmp` written by [`write_temporary`], not yet synced or renamed.
pub struct Temporary {
    file: Arc<dyn File>,
    path: PathBuf,
    to: PathBuf,
}

impl Temporary {
    /// Fsyncs the temporary file and renames it over `{name}` (steps 3 and 4).
    pub fn commit(self, fs: &dyn FileSystem) -> io::Result<()> {
        self.file.sync_data()?;
        drop(self.file);
        fs.rename(&self.path, &self.to)
    }
}

/// A symbolic link found where [`remove_dir_all_durably`] expected a directory or a file of
/// its tree. It travels inside an [`io::Error`] of kind [`io::ErrorKind::NotADirectory`];
/// find it with `error.get_ref().and_then(|e| e.downcast_ref::<UnexpectedSymlink>())`.
#[derive(Debug, Error)]
#[error("{path} is a symbolic link where a directory or file was expected; nothing was removed")]
pub struct UnexpectedSymlink {
    pub path: PathBuf,
}

/// Removes the directory `dir` and everything in it, durably. When `dir` does not exist there
/// is nothing to remove, but its parent is fsynced all the same (if it exists), so that a
/// removal interrupted before its last step is durable once this returns.
///
/// Order of writes and fsyncs:
///
/// 1. Walk the tree without following symbolic links and list its files and directories. A
///    symbolic link anywhere in it, `dir` itself included, is an error naming the link
///    ([`UnexpectedSymlink`]) and nothing is removed. Spool makes no links, so one is an
///    operator's (a partition moved to another disk, say); listing or removing through it
///    could delete files outside the data directory, and even unlinking it silently would
///    hide what the operator did.
/// 2. Remove every file, then every directory once it is empty, deepest first.
/// 3. Fsync the parent of `dir`, so the removal of `dir` is durable.
///
/// A crash before step 3 may leave any part of the tree. Callers make such a leftover
/// meaningless before they start (a topic's `meta.json` goes first, durably), so that the next
/// start removes it again.
pub fn remove_dir_all_durably(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    match fs.entry_kind(dir)? {
        Some(EntryKind::Directory) => list_tree(fs, dir, &mut files, &mut dirs)?,
        Some(EntryKind::Symlink) => return Err(unexpected_symlink(dir)),
        Some(EntryKind::File) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is a file where a directory was expected", dir.display()),
            ));
        }
        None => {}
    }
    for file in &files {
        fs.remove_file(file)?;
    }
    // `list_tree` lists each directory after everything inside it.
    for dir in &dirs {
        fs.remove_dir(dir)?;
    }
    match parent_dir(dir) {
        Some(parent) if fs.exists(parent)? => fs.sync_dir(parent),
        _ => Ok(()),
    }
}

/// Step 1 of [`remove_dir_all_durably`]: adds the files in the tree at `dir` to `files`, and
/// its directories, each after everything inside it, to `dirs`.
fn list_tree(
    fs: &dyn FileSystem,
    dir: &Path,
    files: &mut Vec<PathBuf>,
    dirs: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for name in fs.list_dir(dir)? {
        let path = dir.join(name);
        match fs.entry_kind(&path)? {
            Some(EntryKind::Directory) => list_tree(fs, &path, files, dirs)?,
            Some(EntryKind::File) => files.push(path),
            Some(EntryKind::Symlink) => return Err(unexpected_symlink(&path)),
            // Removed meanwhile: nothing left to do for it.
            None => {}
        }
    }
    dirs.push(dir.to_path_buf());
    Ok(())
}

fn unexpected_symlink(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotADirectory, UnexpectedSymlink { path: path.to_path_buf() })
}

/// The directory holding `path`: `.` for a relative path of one component, `None` for a root.
fn parent_dir(path: &Path) -> Option<&Path> {
    match path.parent() {
        Some(parent) if parent.as_os_str().is_empty() => Some(Path::new(".")),
        parent => parent,
    }
}

#[derive(Debug)]
struct StdFile {
    file: std::fs::File,
}

impl File for StdFile {
    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, position)
    }

    fn read_shared_at(&self, position: u64, len: usize) -> io::Result<Bytes> {
        if len >= MAP_READ_BYTES_MIN {
            if let Some(bytes) = self.map_range(position, len) {
                return Ok(bytes);
            }
        }
        read_copied(self, position, len)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, buf, position)
    }

    fn write_all_vectored_at(&self, bufs: &[&[u8]], mut position: u64) -> io::Result<()> {
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        let mut slices: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
        let mut remaining = &mut slices[..];
        IoSlice::advance_slices(&mut remaining, 0);
        while !remaining.is_empty() {
            let count = remaining.len().min(IOV_MAX) as libc::c_int;
            let offset = libc::off_t::try_from(position)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "position too large"))?;
            // SAFETY: IoSlice is ABI-compatible with iovec on Unix, and the slices outlive the
            // call.
            let written = unsafe {
                libc::pwritev(self.file.as_raw_fd(), remaining.as_ptr().cast(), count, offset)
            };
            match written {
                n if n > 0 => {
                    position += n as u64;
                    IoSlice::advance_slices(&mut remaining, n as usize);
                }
                0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                _ => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let len = libc::off_t::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "length too large"))?;
        // SAFETY: the descriptor is open for writing for the lifetime of `self.file`.
        let code = unsafe { libc::posix_fallocate(self.file.as_raw_fd(), 0, len) };
        match code {
            0 => Ok(()),
            // Some file systems (tmpfs on old kernels) lack fallocate; writing zeros reserves
            // the blocks just as well.
            libc::EOPNOTSUPP => self.zero_fill(len as u64),
            code => Err(io::Error::from_raw_os_error(code)),
        }
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    #[cfg(target_os = "linux")]
    fn start_writeback(&self, position: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(position), Ok(len)) =
            (libc::off64_t::try_from(position), libc::off64_t::try_from(len))
        else {
            return;
        };
        // SAFETY: the descriptor is open for the lifetime of `self.file`; the call only
        // queues writeback of the page-cache range. Its result is ignored on purpose (see the
        // trait): the next fdatasync reports any writeback error.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                position,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }

    fn map_mut(&self, len: usize) -> io::Result<Box<dyn MappedFile>> {
        // SAFETY: index files are owned by one log, whose writer is the only code that changes
        // them, and are never truncated while mapped (the map is dropped first).
        let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(&self.file)? };
        Ok(Box::new(StdMap { map }))
    }
}

impl StdFile {
    /// Maps `len` bytes at `position` read-only and faults them all in here, on the caller's
    /// (blocking) thread, so that whoever reads the answer later (a socket write on the async
    /// runtime) neither waits for the disk nor meets an I/O error as SIGBUS. `None` when the
    /// range cannot be mapped or faulted in (a read error, or a kernel before 5.14 without
    /// `MADV_POPULATE_READ`): the caller copies instead, and a plain read reports any error.
    fn map_range(&self, position: u64, len: usize) -> Option<Bytes> {
        // A map would read the end of the file's last page as zeros; a read reports the end.
        if position.checked_add(len as u64)? > self.len().ok()? {
            return None;
        }
        // SAFETY: read-only, and the caller promises (see `File::read_shared_at`) that the
        // range is never rewritten or truncated while mapped: segments are append-only, and
        // only bytes past a log's visible end are ever cut back. A file removed while mapped
        // stays readable until the map is dropped.
        let map = unsafe { memmap2::MmapOptions::new().offset(position).len(len).map(&self.file) }
            .ok()?;
        map.advise(memmap2::Advice::PopulateRead).ok()?;
        Some(Bytes::from_owner(map))
    }

    fn zero_fill(&self, len: u64) -> io::Result<()> {
        let current = self.len()?;
        let zeros = vec![0u8; 64 * 1024];
        let mut position = current;
        while position < len {
            let n = (len - position).min(zeros.len() as u64) as usize;
            self.write_all_at(&zeros[..n], position)?;
            position += n as u64;
        }
        Ok(())
    }
}

fn read_copied<F: File + ?Sized>(file: &F, position: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, position)?;
    Ok(buf.freeze())
}

#[derive(Debug)]
struct StdMap {
    map: memmap2::MmapMut,
}

impl MappedFile for StdMap {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    fn flush(&self) -> io::Result<()> {
        self.map.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_reads_map_or_copy_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let fs = StdFileSystem;
        let file = fs.open(&path, OpenMode::CreateNew).unwrap();
        let bytes: Vec<u8> = (0..MAP_READ_BYTES_MIN * 3).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&bytes, 0).unwrap();
        // Mapped (large, at a position that is not page-aligned) and copied (small).
        for (position, len) in [(4097, MAP_READ_BYTES_MIN + 5), (0, bytes.len()), (10, 100)] {
            let read = file.read_shared_at(position as u64, len).unwrap();
            assert_eq!(&read[..], &bytes[position..position + len], "at {position}, {len} bytes");
        }
        // Past the end is an error, mapped or not: not zeros from the last page.
        let end = bytes.len() as u64;
        for (position, len) in [(end - 10, MAP_READ_BYTES_MIN), (end - 10, 20)] {
            let error = file.read_shared_at(position, len).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "at {position}, {len} bytes");
        }
        // A large read maps the file (on Linux with MADV_POPULATE_READ, 5.14 and later), and
        // outlives the file's removal.
        let read = file.read_shared_at(0, MAP_READ_BYTES_MIN).unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(maps.contains(path.to_str().unwrap()), "{path:?} is mapped");
        drop(file);
        fs.remove_file(&path).unwrap();
        assert_eq!(&read[..], &bytes[..MAP_READ_BYTES_MIN]);
    }

    #[test]
    fn atomic_writes_replace_and_tree_removal_removes_everything() {
        let root = tempfile::tempdir().unwrap();
        let fs = StdFileSystem;
        let dir = root.path().join("a");
        std::fs::create_dir_all(dir.join("b/c")).unwrap();
        std::fs::write(dir.join("b/c/f"), b"x").unwrap();
        std::fs::write(dir.join("name.tmp"), b"left over").unwrap();
        write_atomically(&fs, &dir, "name", b"one").unwrap();
        write_atomically(&fs, &dir, "name", b"two").unwrap();
        assert_eq!(std::fs::read(dir.join("name")).unwrap(), b"two");
        assert!(!dir.join("name.tmp").exists());
        remove_dir_all_durably(&fs, &dir).unwrap();
        assert!(!dir.exists());
        // Nothing to remove is not an error.
        remove_dir_all_durably(&fs, &dir).unwrap();
    }

    /// A link where a directory is expected, at the top or inside the tree, is refused by
    /// name, and nothing is removed: neither through the link nor beside it.
    #[test]
    fn tree_removal_refuses_symbolic_links_and_removes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let fs = StdFileSystem;
        let elsewhere = root.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("precious"), b"keep").unwrap();

        let linked = root.path().join("linked");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        let inside = root.path().join("tree");
        std::fs::create_dir_all(inside.join("0")).unwrap();
        std::fs::write(inside.join("0/file"), b"x").unwrap();
        std::os::unix::fs::symlink(&elsewhere, inside.join("1")).unwrap();

        for (dir, link) in [(&linked, &linked), (&inside, &inside.join("1"))] {
            let error = remove_dir_all_durably(&fs, dir).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::NotADirectory);
            let found = error.get_ref().and_then(|e| e.downcast_ref::<UnexpectedSymlink>());
            assert_eq!(found.map(|e| &e.path), Some(link), "{error}");
            assert!(error.to_string().contains(link.to_str().unwrap()), "{error}");
        }
        assert_eq!(std::fs::read(elsewhere.join("precious")).unwrap(), b"keep");
        assert!(linked.exists());
        assert_eq!(std::fs::read(inside.join("0/file")).unwrap(), b"x");
    }
}

/// The name of the lock file in a data directory.
pub const LOCK_FILE: &str = "lock";

/// An exclusive advisory lock (`flock`) on a directory, held for as long as this value lives.
/// One process at a time may serve a data directory: two writers appending to the same
/// segment files would overwrite each other's acknowledged records. The kernel releases the
/// lock when the process exits, however it exits, so a `kill -9` leaves no stale lock; the
/// file keeps the holder's process id, only to name it in the error of the next one.
#[derive(Debug)]
pub struct DirectoryLock {
    _file: std::fs::File,
}

/// Why a directory could not be locked.
#[derive(Debug, Error)]
pub enum LockError {
    #[error(
        "the data directory {} is in use by another Spool server{}: stop it, or give this one another data directory",
        .dir.display(),
        .holder.map(|pid| format!(" (process {pid})")).unwrap_or_default()
    )]
    Held { dir: PathBuf, holder: Option<u32> },
    #[error("cannot lock the data directory {}: {source}", .dir.display())]
    Io { dir: PathBuf, source: io::Error },
}

impl DirectoryLock {
    /// Creates `dir` (durably) if it does not exist, and locks it; fails at once, without
    /// waiting, if another process holds the lock.
    pub fn acquire(dir: &Path) -> Result<DirectoryLock, LockError> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let failed = |source| LockError::Io { dir: dir.to_path_buf(), source };
        create_dir_all_durably(&StdFileSystem, dir).map_err(failed)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join(LOCK_FILE))
            .map_err(failed)?;
        // SAFETY: flock on a descriptor this function owns; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::WouldBlock {
                return Err(failed(error));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder: holder.trim().parse().ok(),
            });
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(failed)?;
        Ok(DirectoryLock { _file: file })
    }
}
