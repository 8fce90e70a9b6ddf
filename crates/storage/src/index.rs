//! Sparse, memory-mapped indexes beside each segment.
//!
//! # Offset index (`{base_offset:020}.index`), 8-byte entries
//!
//! | offset | size | field             |
//! |-------:|-----:|-------------------|
//! |      0 |    4 | `relative_offset` (u32 LE): batch base offset - segment base offset |
//! |      4 |    4 | `position` (u32 LE): byte position of that batch in the segment |
//!
//! # Time index (`{base_offset:020}.timeindex`), 12-byte entries
//!
//! | offset | size | field             |
//! |-------:|-----:|-------------------|
//! |      0 |    8 | `timestamp` (i64 LE, ms): the segment's largest timestamp up to and including the batch |
//! |      8 |    4 | `relative_offset` (u32 LE): that batch's base offset - segment base offset |
//!
//! Invariants, checked whenever an index is loaded (a failed check means the index is rebuilt
//! from the log): offset entries strictly increase in both fields and point inside the log;
//! time entries strictly increase in timestamp and do not decrease in offset. The batch at
//! position 0 is never indexed: it is implied.
//!
//! An active segment's index files are preallocated (so writing through the map can never hit
//! a full disk, which would be SIGBUS) before they are mapped: empty until the first entry,
//! then for [`INDEX_ENTRIES_INITIAL`] entries, then doubling as entries arrive, up to the
//! segment's most; they are trimmed to their entries
//! when the segment is sealed or the log is closed (an index with no entry since its last
//! trim is left as it is: nothing to write or sync). A growth the disk refuses leaves the index
//! as it was and the entry out: the index is sparse, so that only lengthens a scan. After a crash, the active
//! segment's indexes are rebuilt from the log, so index writes need no fsync of their own.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::fs::{File, FileSystem, MappedFile, OpenMode};
use crate::limits::INDEX_ENTRIES_INITIAL;

/// One index file: a mapped array of fixed-size entries.
///
/// It holds no open file: a map needs none once made, so the file is opened only to grow,
/// trim or map it, and closed again. A partition's open files are then its segments' log
/// files alone.
#[derive(Debug)]
pub(crate) struct IndexFile {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    map: Option<Box<dyn MappedFile>>,
    entry_bytes: usize,
    entries: usize,
    /// Entries preallocated and mapped.
    capacity: usize,
    /// The most entries [`IndexFile::push`] grows the file to.
    capacity_max: usize,
    /// Entries were pushed since the file was last trimmed and synced.
    dirty: bool,
}

impl IndexFile {
    /// Creates an empty index that grows to at most `capacity_max` entries, with room for the
    /// first of them preallocated (a full disk refuses a new segment here, not later). It is
    /// mapped when the first entry arrives, so an empty segment holds no map.
    pub(crate) fn create(
        fs: &Arc<dyn FileSystem>,
        path: &Path,
        entry_bytes: usize,
        capacity_max: usize,
    ) -> io::Result<IndexFile> {
        if fs.exists(path)? {
            fs.remove_file(path)?;
        }
        fs.open(path, OpenMode::CreateNew)?;
        let mut index = IndexFile::empty(fs, path, entry_bytes, 0, capacity_max);
        index.reserve(INDEX_ENTRIES_INITIAL.min(capacity_max))?;
        Ok(index)
    }

    /// An index with no entry and no map, over `capacity` entries' room already in its file.
    fn empty(
        fs: &Arc<dyn FileSystem>,
        path: &Path,
        entry_bytes: usize,
        capacity: usize,
        capacity_max: usize,
    ) -> IndexFile {
        IndexFile {
            fs: fs.clone(),
            path: path.to_path_buf(),
            map: None,
            entry_bytes,
            entries: 0,
            capacity,
            capacity_max,
            dirty: false,
        }
    }

    /// An empty index for an active segment whose entries are rebuilt, in the file already
    /// there when it has a whole number of entries' room, at least the first growth's and at
    /// most `capacity_max`: that room is allocated again (which fills any hole a copy of the
    /// file left) and kept, rather than the file removed and created. Its bytes past the
    /// entries pushed are never read: an active index is trimmed before a clean close vouches
    /// for it, and rebuilt after a crash. Otherwise [`IndexFile::create`].
    pub(crate) fn recreate(
        fs: &Arc<dyn FileSystem>,
        path: &Path,
        entry_bytes: usize,
        capacity_max: usize,
    ) -> io::Result<IndexFile> {
        let file = match fs.open(path, OpenMode::Existing) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return IndexFile::create(fs, path, entry_bytes, capacity_max);
            }
            Err(error) => return Err(error),
        };
        let len = file.len()?;
        let room = usize::try_from(len / entry_bytes as u64).unwrap_or(usize::MAX);
        let fits = (INDEX_ENTRIES_INITIAL.min(capacity_max)..=capacity_max).contains(&room);
        if len % entry_bytes as u64 != 0 || !fits {
            drop(file);
            return IndexFile::create(fs, path, entry_bytes, capacity_max);
        }
        file.allocate(len)?;
        Ok(IndexFile::empty(fs, path, entry_bytes, room, capacity_max))
    }

    /// Opens a trimmed index: its entry count is its length divided by the entry size.
    /// Returns `None` when the file is missing or its length is not a whole number of entries.
    pub(crate) fn open_trimmed(
        fs: &Arc<dyn FileSystem>,
        path: &Path,
        entry_bytes: usize,
    ) -> io::Result<Option<IndexFile>> {
        if !fs.exists(path)? {
            return Ok(None);
        }
        let file = fs.open(path, OpenMode::Existing)?;
        let len = file.len()?;
        if len % entry_bytes as u64 != 0 {
            return Ok(None);
        }
        let entries = (len / entry_bytes as u64) as usize;
        let map = if entries > 0 { Some(file.map_mut(len as usize)?) } else { None };
        Ok(Some(IndexFile {
            fs: fs.clone(),
            path: path.to_path_buf(),
            map,
            entry_bytes,
            entries,
            capacity: entries,
            capacity_max: entries,
            dirty: false,
        }))
    }

    fn open(&self) -> io::Result<Arc<dyn File>> {
        self.fs.open(&self.path, OpenMode::Existing)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn len(&self) -> usize {
        self.entries
    }

    pub(crate) fn entry(&self, i: usize) -> &[u8] {
        assert!(i < self.entries, "index entry {i} of {}", self.entries);
        let map = self.map.as_ref().expect("a non-empty index is mapped");
        &map.bytes()[i * self.entry_bytes..(i + 1) * self.entry_bytes]
    }

    /// Appends an entry, growing the file when it is full (doubling, up to its most) and
    /// mapping it if it is not. An index at its most, or one the disk refuses to grow or the
    /// system to map, skips the entry: the index is sparse, so a missing entry only lengthens
    /// a scan.
    pub(crate) fn push(&mut self, entry: &[u8]) {
        assert_eq!(entry.len(), self.entry_bytes);
        if self.entries == self.capacity {
            if self.capacity >= self.capacity_max {
                return;
            }
            let doubled = (self.capacity * 2).max(INDEX_ENTRIES_INITIAL).min(self.capacity_max);
            if self.reserve(doubled).is_err() {
                return;
            }
        }
        if self.map_capacity().is_err() {
            return;
        }
        let at = self.entries * self.entry_bytes;
        let map = self.map.as_mut().expect("an index with capacity is mapped");
        map.bytes_mut()[at..at + entry.len()].copy_from_slice(entry);
        self.entries += 1;
        self.dirty = true;
    }

    /// Whether `entries` more fit in the room already preallocated and mapped, so pushing
    /// them only copies into the map.
    pub(crate) fn has_mapped_room(&self, entries: usize) -> bool {
        let mapped = self.map.as_ref().map_or(0, |map| map.bytes().len());
        entries == 0
            || (self.entries + entries <= self.capacity
                && mapped == self.capacity * self.entry_bytes)
    }

    /// Makes a trimmed index active again: it grows (from its next entry) to at most
    /// `capacity_max` entries.
    pub(crate) fn activate(&mut self, capacity_max: usize) {
        self.capacity_max = capacity_max.max(self.entries);
    }

    /// Preallocates room for `capacity` entries (mapped by the next push). A refused
    /// allocation leaves the index as it was.
    pub(crate) fn reserve(&mut self, capacity: usize) -> io::Result<()> {
        if capacity <= self.capacity {
            return Ok(());
        }
        self.open()?.allocate((capacity * self.entry_bytes) as u64)?;
        self.capacity = capacity;
        Ok(())
    }

    /// Maps all the preallocated room, if the map does not cover it yet. On failure the old
    /// map is made again.
    fn map_capacity(&mut self) -> io::Result<()> {
        let bytes = self.capacity * self.entry_bytes;
        let mapped = self.map.as_ref().map_or(0, |map| map.bytes().len());
        if mapped == bytes {
            return Ok(());
        }
        let file = self.open()?;
        // The old map goes first: a map may be a private copy written back when dropped (the
        // simulated file system's is), which a new map must see.
        self.map = None;
        match file.map_mut(bytes) {
            Ok(map) => {
                self.map = Some(map);
                Ok(())
            }
            Err(error) => {
                if mapped > 0 {
                    self.map = Some(file.map_mut(mapped)?);
                }
                Err(error)
            }
        }
    }

    /// Trims the file to its entries and makes it durable; nothing to do when no entry came
    /// since the last time and the file holds no room past its entries.
    ///
    /// Order: msync the map, unmap, set the length, fsync, map the trimmed file again.
    pub(crate) fn trim_and_sync(&mut self) -> io::Result<()> {
        if !self.dirty && self.capacity == self.entries {
            return Ok(());
        }
        if let Some(map) = &self.map {
            map.flush()?;
        }
        self.map = None;
        let bytes = self.entries * self.entry_bytes;
        let file = self.open()?;
        file.set_len(bytes as u64)?;
        file.sync_data()?;
        self.capacity = self.entries;
        self.dirty = false;
        if self.entries > 0 {
            self.map = Some(file.map_mut(bytes)?);
        }
        Ok(())
    }
}

/// An offset index entry (the layout is in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// Bytes of one offset index entry.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one time index entry.
pub const TIME_ENTRY_BYTES: usize = 12;

/// A time index entry (the layout is in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub timestamp_ms: i64,
    pub relative_offset: u32,
}

impl OffsetEntry {
    /// Decodes one entry from exactly [`OFFSET_ENTRY_BYTES`] bytes (for offline tools; the
    /// log reads its mapped indexes itself).
    pub fn decode(bytes: &[u8; OFFSET_ENTRY_BYTES]) -> OffsetEntry {
        OffsetEntry {
            relative_offset: u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")),
            position: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
        }
    }
}

impl TimeEntry {
    /// Decodes one entry from exactly [`TIME_ENTRY_BYTES`] bytes.
    pub fn decode(bytes: &[u8; TIME_ENTRY_BYTES]) -> TimeEntry {
        TimeEntry {
            timestamp_ms: i64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
            relative_offset: u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
        }
    }
}

#[derive(Debug)]
pub(crate) struct OffsetIndex(pub(crate) IndexFile);

impl OffsetIndex {
    pub(crate) fn get(&self, i: usize) -> OffsetEntry {
        OffsetEntry::decode(self.0.entry(i).try_into().expect("an offset entry"))
    }

    pub(crate) fn last(&self) -> Option<OffsetEntry> {
        self.0.len().checked_sub(1).map(|i| self.get(i))
    }

    pub(crate) fn push(&mut self, entry: OffsetEntry) {
        let mut bytes = [0u8; OFFSET_ENTRY_BYTES];
        bytes[0..4].copy_from_slice(&entry.relative_offset.to_le_bytes());
        bytes[4..8].copy_from_slice(&entry.position.to_le_bytes());
        self.0.push(&bytes);
    }

    /// The last entry whose relative offset is at most `relative_offset`.
    pub(crate) fn floor(&self, relative_offset: u32) -> Option<OffsetEntry> {
        let n = self.0.len();
        let count = partition_point(n, |i| self.get(i).relative_offset <= relative_offset);
        count.checked_sub(1).map(|i| self.get(i))
    }

    /// Whether the entries obey the invariants for a log of `log_bytes` bytes.
    pub(crate) fn is_consistent(&self, log_bytes: u64) -> bool {
        let mut previous: Option<OffsetEntry> = None;
        for i in 0..self.0.len() {
            let e = self.get(i);
            if u64::from(e.position) >= log_bytes || e.position == 0 {
                return false;
            }
            if let Some(p) = previous
                && (e.relative_offset <= p.relative_offset || e.position <= p.position)
            {
                return false;
            }
            previous = Some(e);
        }
        true
    }
}

#[derive(Debug)]
pub(crate) struct TimeIndex(pub(crate) IndexFile);

impl TimeIndex {
    pub(crate) fn get(&self, i: usize) -> TimeEntry {
        TimeEntry::decode(self.0.entry(i).try_into().expect("a time entry"))
    }

    pub(crate) fn last(&self) -> Option<TimeEntry> {
        self.0.len().checked_sub(1).map(|i| self.get(i))
    }

    pub(crate) fn push(&mut self, entry: TimeEntry) {
        let mut bytes = [0u8; TIME_ENTRY_BYTES];
        bytes[0..8].copy_from_slice(&entry.timestamp_ms.to_le_bytes());
        bytes[8..12].copy_from_slice(&entry.relative_offset.to_le_bytes());
        self.0.push(&bytes);
    }

    /// The last entry whose timestamp is before `timestamp_ms`: every batch up to and
    /// including the one it names has a smaller timestamp, so a search may start there.
    pub(crate) fn last_before(&self, timestamp_ms: i64) -> Option<TimeEntry> {
        let n = self.0.len();
        let count = partition_point(n, |i| self.get(i).timestamp_ms < timestamp_ms);
        count.checked_sub(1).map(|i| self.get(i))
    }

    pub(crate) fn is_consistent(&self, next_relative_offset: u64) -> bool {
        let mut previous: Option<TimeEntry> = None;
        for i in 0..self.0.len() {
            let e = self.get(i);
            if u64::from(e.relative_offset) >= next_relative_offset {
                return false;
            }
            if let Some(p) = previous
                && (e.timestamp_ms <= p.timestamp_ms || e.relative_offset < p.relative_offset)
            {
                return false;
            }
            previous = Some(e);
        }
        true
    }
}

/// The number of leading indexes `i < n` for which `pred(i)` holds, assuming `pred` is true
/// then false (a binary search over the mapped entries).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) { lo = mid + 1 } else { hi = mid }
    }
    lo
}
