//! Checking logs offline without changing them: what `spool verify` reports.
//!
//! [`find_logs`] finds every log directory under a directory (a data directory holds one per
//! partition and per internal log); [`verify_log`] checks one. Per segment, oldest first:
//!
//! - Every batch as recovery's full scan checks it: its length, magic byte and version, stamp
//!   CRC and CRC, and offsets that continue from the batch before (and, across files, from the
//!   segment before).
//! - After a damaged batch the check goes on at the next intact batch: where the damaged one's
//!   length says it ends, or else the next position where a whole batch checks. So the report
//!   says which offsets are lost, and that the batches after the damage are intact.
//! - Every offset index entry must point at the start of an intact batch whose base offset is
//!   the one it names, every time index entry at an intact batch whose running largest
//!   timestamp is the one it records, both in order. Indexes are checked only where the next
//!   start trusts them (after a clean shutdown, and below the recovery point): the others are
//!   rebuilt from the log at start anyway.
//!
//! A finding is [`Severity::Damage`] when readers would meet it: a batch that fails its check
//! (readers get `ReadError::Damaged` there), a wrong index entry (reads that use it fail).
//! It is [`Severity::Repairable`] when the next start repairs it by itself: a missing index,
//! or an incomplete batch at the end of the last segment when the log was not closed cleanly
//! (a write a crash cut short, or one in progress beside a running server).
//!
//! Nothing is written: files are opened read-only ([`OpenMode::ReadOnly`]) and never mapped,
//! and no lock is taken, so a check may run beside a server. Then a segment that retention
//! deletes meanwhile is skipped, and a batch being written at the end of a last segment is
//! reported as repairable (a running server's last segments are never closed cleanly, so
//! their indexes are not checked). Memory is bounded: a read buffer
//! of [`VERIFY_READ_BYTES`] (or one batch, when larger), one segment's index entries (at most
//! [`index_entries_max`] of the largest segment), and [`VERIFY_FINDINGS_MAX`] findings per log.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::Offset;
use crate::batch::{self, BATCH_HEADER_BYTES, BATCH_PREFIX_BYTES, BatchHeader};
use crate::fs::{EntryKind, File, FileSystem, OpenMode};
use crate::index::{OFFSET_ENTRY_BYTES, OffsetEntry, TIME_ENTRY_BYTES, TimeEntry};
use crate::limits::{
    SEGMENT_BYTES_MAX, VERIFY_DEPTH_MAX, VERIFY_FINDINGS_MAX, VERIFY_READ_BYTES, index_entries_max,
};
use crate::log::CLEAN_SHUTDOWN_FILE;
use crate::recovery::{RECOVERY_POINT_FILE, parse_base};
use crate::segment::{log_path, offset_index_path, time_index_path};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Stored records or index entries that cannot be trusted: reads fail there.
    Damage,
    /// What the next start repairs by itself.
    Repairable,
}

/// One thing found wrong, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub path: PathBuf,
    /// The byte in `path` where it was found.
    pub position: u64,
    pub what: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: {}", self.path.display(), self.position, self.what)
    }
}

/// What checking one log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCheck {
    pub dir: PathBuf,
    /// The log was closed cleanly (its `clean-shutdown` file is there).
    pub clean_shutdown: bool,
    pub segments: u64,
    /// Bytes of the segments' log files.
    pub bytes: u64,
    /// Intact batches and the records they hold.
    pub batches: u64,
    pub records: u64,
    /// The first segment's base offset, and the offset after the last intact batch.
    pub start_offset: Offset,
    pub end_offset: Offset,
    /// Places in the log files where batches fail their checks (each may span several
    /// batches: up to where intact ones resume).
    pub damaged_batches: u64,
    /// Index entries (or index files) that are wrong.
    pub index_errors: u64,
    /// The first [`VERIFY_FINDINGS_MAX`] findings, in file order.
    pub findings: Vec<Finding>,
    /// Findings past the limit, counted only.
    pub findings_dropped: u64,
}

impl LogCheck {
    /// Whether anything was found that readers would meet.
    pub fn is_damaged(&self) -> bool {
        self.damaged_batches > 0
            || self.index_errors > 0
            || self.findings.iter().any(|f| f.severity == Severity::Damage)
    }

    fn found(&mut self, severity: Severity, path: &Path, position: u64, what: String) {
        if self.findings.len() < VERIFY_FINDINGS_MAX {
            self.findings.push(Finding { severity, path: path.to_path_buf(), position, what });
        } else {
            self.findings_dropped += 1;
        }
    }

    fn index_error(&mut self, path: &Path, position: u64, what: String) {
        self.index_errors += 1;
        self.found(Severity::Damage, path, position, what);
    }
}

/// Every log directory under `root` (`root` itself included), sorted, at most
/// [`VERIFY_DEPTH_MAX`] levels down. A log directory is one that holds a segment log file.
/// Symbolic links are not followed, and directories named `*.tmp` (unfinished work that the
/// next start removes) are skipped.
pub fn find_logs(fs: &dyn FileSystem, root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut logs = Vec::new();
    let mut pending = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = pending.pop() {
        let mut names = fs.list_dir(&dir)?;
        names.sort();
        if names.iter().any(|name| parse_base(name, ".log").is_some()) {
            logs.push(dir);
            continue;
        }
        if depth == VERIFY_DEPTH_MAX {
            continue;
        }
        for name in names.iter().rev().filter(|name| !name.ends_with(".tmp")) {
            let path = dir.join(name);
            if fs.entry_kind(&path)? == Some(EntryKind::Directory) {
                pending.push((path, depth + 1));
            }
        }
    }
    logs.sort();
    Ok(logs)
}

/// Checks every segment of the log in `dir` (see the module docs). An I/O error that keeps a
/// file from being read is a finding; only a directory that cannot be listed is an error.
pub fn verify_log(fs: &dyn FileSystem, dir: &Path) -> io::Result<LogCheck> {
    let mut bases: Vec<Offset> =
        fs.list_dir(dir)?.iter().filter_map(|name| parse_base(name, ".log")).collect();
    bases.sort();
    let clean_next_offset = read_decimal(fs, &dir.join(CLEAN_SHUTDOWN_FILE));
    // After a crash, only segments below the recovery point are known durable (0 when the
    // file is missing, as recovery reads it).
    let recovery_point = read_decimal(fs, &dir.join(RECOVERY_POINT_FILE)).unwrap_or(Offset(0));
    let mut check = LogCheck {
        dir: dir.to_path_buf(),
        clean_shutdown: clean_next_offset.is_some(),
        start_offset: bases.first().copied().unwrap_or_default(),
        ..LogCheck::default()
    };
    // The offset the next segment must start at, while known.
    let mut expected: Option<Offset> = None;
    for (i, &base) in bases.iter().enumerate() {
        let last = i + 1 == bases.len();
        let path = log_path(dir, base);
        if let Some(expected) = expected
            && expected != base
        {
            let what = format!(
                "the segment starts at offset {base}, but the one before it ends at offset {expected}"
            );
            check.found(Severity::Damage, &path, 0, what);
        }
        let segment = SegmentCheck {
            fs,
            dir,
            base,
            path,
            torn_tail_possible: last && !check.clean_shutdown,
            indexes_trusted: check.clean_shutdown || (!last && base < recovery_point),
        };
        expected = segment.run(&mut check);
        if let Some(end) = expected {
            check.end_offset = end;
        }
    }
    if let (Some(clean), Some(end)) = (clean_next_offset, expected)
        && clean != end
    {
        let what = format!(
            "the clean shutdown recorded next offset {clean}, but the segments end at {end}"
        );
        check.found(Severity::Damage, &dir.join(CLEAN_SHUTDOWN_FILE), 0, what);
    }
    Ok(check)
}

/// A small decimal file (`clean-shutdown`, `recovery-point`), `None` when missing or unreadable.
fn read_decimal(fs: &dyn FileSystem, path: &Path) -> Option<Offset> {
    let file = fs.open(path, OpenMode::ReadOnly).ok()?;
    let mut bytes = vec![0u8; file.len().ok()?.min(32) as usize];
    file.read_exact_at(&mut bytes, 0).ok()?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok().map(Offset)
}

/// One segment's check.
struct SegmentCheck<'a> {
    fs: &'a dyn FileSystem,
    dir: &'a Path,
    base: Offset,
    path: PathBuf,
    /// Invalid bytes at the end with nothing intact after them are a torn tail, not damage.
    torn_tail_possible: bool,
    indexes_trusted: bool,
}

/// What is at a position of a log file.
enum AtPosition {
    Batch(BatchHeader),
    Invalid {
        reason: String,
        /// The batch's length, when its length field is plausible and it fits in the file.
        batch_bytes: Option<u32>,
    },
}

impl SegmentCheck<'_> {
    /// Checks the segment and adds what it found to `check`; returns the offset after its last
    /// batch, unless damage at its end leaves that unknown.
    fn run(&self, check: &mut LogCheck) -> Option<Offset> {
        let file = match self.fs.open(&self.path, OpenMode::ReadOnly) {
            Ok(file) => file,
            // Deleted since the directory was listed: retention, beside a running server.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
            Err(error) => {
                check.segments += 1;
                check.damaged_batches += 1;
                check.found(Severity::Damage, &self.path, 0, format!("cannot be opened: {error}"));
                return None;
            }
        };
        check.segments += 1;
        let mut indexes = if self.indexes_trusted { self.load_indexes(check) } else { None };
        let outcome = file.len().and_then(|file_bytes| {
            check.bytes += file_bytes;
            let mut reader = Reader { file: file.as_ref(), file_bytes, buf: Vec::new(), start: 0 };
            self.walk(&mut reader, indexes.as_mut(), check)
        });
        match outcome {
            Ok(next) => {
                if let Some(indexes) = indexes {
                    indexes.finish(self, check);
                }
                next
            }
            Err(error) => {
                check.damaged_batches += 1;
                check.found(Severity::Damage, &self.path, 0, format!("cannot be read: {error}"));
                None
            }
        }
    }

    /// Checks every batch from the start of the file, and the index entries that point at
    /// them. Returns the offset after the last batch, unless damage at the end leaves it
    /// unknown.
    fn walk(
        &self,
        reader: &mut Reader<'_>,
        mut indexes: Option<&mut Indexes>,
        check: &mut LogCheck,
    ) -> io::Result<Option<Offset>> {
        let mut position = 0u64;
        let mut expected = Some(self.base);
        let mut max_timestamp = None;
        while position < reader.file_bytes {
            let (reason, batch_bytes) = match reader.check_at(position)? {
                AtPosition::Batch(header) => {
                    if let Some(expected) = expected
                        && header.base_offset != expected
                    {
                        let what = format!(
                            "the batch starts at offset {}, but the one before it ends at offset {expected}",
                            header.base_offset
                        );
                        check.found(Severity::Damage, &self.path, position, what);
                    }
                    max_timestamp = max_timestamp.max(Some(header.max_timestamp));
                    if let Some(indexes) = indexes.as_deref_mut() {
                        indexes.on_batch(self, check, position, &header, max_timestamp);
                    }
                    check.batches += 1;
                    check.records += u64::from(header.record_count);
                    expected = Some(header.next_offset());
                    position += u64::from(header.batch_bytes);
                    continue;
                }
                AtPosition::Invalid { reason, batch_bytes } => (reason, batch_bytes),
            };
            let lost = expected.map_or_else(|| "offsets".to_owned(), |e| format!("offsets {e}"));
            let Some((resume, header)) = reader.next_intact(position, batch_bytes)? else {
                let left = reader.file_bytes - position;
                if self.torn_tail_possible {
                    if crate::segment::zeros_to_end(reader.file, position)? {
                        // Zeros written ahead of the appends (`limits::RUNWAY_BYTES`).
                        return Ok(expected);
                    }
                    let what = format!(
                        "the last {left} bytes are not a whole batch ({reason}): a write that a crash cut short, or one in progress if a server is running; the next start cuts them"
                    );
                    check.found(Severity::Repairable, &self.path, position, what);
                    return Ok(expected);
                }
                let what = format!(
                    "damaged batch ({reason}); {lost} and on cannot be read, and no intact batch follows in the last {left} bytes of the file"
                );
                check.damaged_batches += 1;
                check.found(Severity::Damage, &self.path, position, what);
                return Ok(None);
            };
            let what = format!(
                "damaged batch ({reason}); {lost} to {} cannot be read; the next intact batch starts at byte {resume} with offset {}",
                header.base_offset.0.saturating_sub(1),
                header.base_offset
            );
            check.damaged_batches += 1;
            check.found(Severity::Damage, &self.path, position, what);
            if let Some(indexes) = indexes.as_deref_mut() {
                // The running largest timestamp is unknown from here: the damaged batches had
                // their own.
                indexes.timestamps_known = false;
            }
            expected = Some(header.base_offset);
            position = resume;
        }
        Ok(expected)
    }

    /// Both indexes' entries, checked for order; `None` when they are not there (the next
    /// start rebuilds them) or cannot be used.
    fn load_indexes(&self, check: &mut LogCheck) -> Option<Indexes> {
        let offset_path = offset_index_path(self.dir, self.base);
        let time_path = time_index_path(self.dir, self.base);
        let offsets = self.load_index(check, &offset_path, OFFSET_ENTRY_BYTES)?;
        let times = self.load_index(check, &time_path, TIME_ENTRY_BYTES)?;
        let mut indexes = Indexes {
            offset_path,
            time_path,
            offsets: Vec::new(),
            times: Vec::new(),
            next_offset: 0,
            next_time: 0,
            timestamps_known: true,
        };
        let mut previous: Option<OffsetEntry> = None;
        for (i, bytes) in offsets.chunks_exact(OFFSET_ENTRY_BYTES).enumerate() {
            let entry = OffsetEntry::decode(bytes.try_into().expect("whole entries"));
            let out_of_order = entry.position == 0
                || previous.is_some_and(|p| {
                    entry.relative_offset <= p.relative_offset || entry.position <= p.position
                });
            if out_of_order {
                let what = format!(
                    "offset index entry {i} (relative offset {}, byte {}) breaks the order: entries strictly increase in offset and position, and position 0 is never indexed",
                    entry.relative_offset, entry.position
                );
                check.index_error(&indexes.offset_path, (i * OFFSET_ENTRY_BYTES) as u64, what);
                continue;
            }
            previous = Some(entry);
            indexes.offsets.push((i, entry));
        }
        let mut previous: Option<TimeEntry> = None;
        for (i, bytes) in times.chunks_exact(TIME_ENTRY_BYTES).enumerate() {
            let entry = TimeEntry::decode(bytes.try_into().expect("whole entries"));
            let out_of_order = previous.is_some_and(|p| {
                entry.timestamp_ms <= p.timestamp_ms || entry.relative_offset < p.relative_offset
            });
            if out_of_order {
                let what = format!(
                    "time index entry {i} (timestamp {}, relative offset {}) breaks the order: timestamps strictly increase and offsets do not decrease",
                    entry.timestamp_ms, entry.relative_offset
                );
                check.index_error(&indexes.time_path, (i * TIME_ENTRY_BYTES) as u64, what);
                continue;
            }
            previous = Some(entry);
            indexes.times.push((i, entry));
        }
        Some(indexes)
    }

    /// An index file's bytes: a whole number of entries, no more than the largest segment has.
    fn load_index(&self, check: &mut LogCheck, path: &Path, entry_bytes: usize) -> Option<Vec<u8>> {
        let file = match self.fs.open(path, OpenMode::ReadOnly) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let what = "the index file is missing; the next start rebuilds it".to_owned();
                check.found(Severity::Repairable, path, 0, what);
                return None;
            }
            Err(error) => {
                check.index_error(path, 0, format!("cannot be opened: {error}"));
                return None;
            }
        };
        let bytes_max = index_entries_max(SEGMENT_BYTES_MAX) * entry_bytes as u64;
        let file_bytes = match file.len() {
            Ok(bytes) if bytes <= bytes_max && bytes % entry_bytes as u64 == 0 => bytes as usize,
            Ok(bytes) => {
                let what = format!(
                    "{bytes} bytes is not a whole number of {entry_bytes}-byte entries up to {bytes_max} bytes"
                );
                check.index_error(path, 0, what);
                return None;
            }
            Err(error) => {
                check.index_error(path, 0, format!("cannot be read: {error}"));
                return None;
            }
        };
        let mut bytes = vec![0u8; file_bytes];
        if let Err(error) = file.read_exact_at(&mut bytes, 0) {
            check.index_error(path, 0, format!("cannot be read: {error}"));
            return None;
        }
        Some(bytes)
    }
}

/// A segment's index entries (with their numbers in the file), checked against its batches
/// in one pass: each list is in order, so a cursor per list follows the batches.
struct Indexes {
    offset_path: PathBuf,
    time_path: PathBuf,
    offsets: Vec<(usize, OffsetEntry)>,
    times: Vec<(usize, TimeEntry)>,
    next_offset: usize,
    next_time: usize,
    /// Whether the running largest timestamp is known (no damaged batch came before).
    timestamps_known: bool,
}

impl Indexes {
    /// Checks the entries up to an intact batch at `position`: those before it point where no
    /// intact batch starts; one at it must name its offset (and timestamp, for the time
    /// index).
    fn on_batch(
        &mut self,
        segment: &SegmentCheck<'_>,
        check: &mut LogCheck,
        position: u64,
        header: &BatchHeader,
        max_timestamp: Option<crate::TimestampMs>,
    ) {
        let relative = header.base_offset.0.wrapping_sub(segment.base.0);
        while let Some(&(i, entry)) = self.offsets.get(self.next_offset) {
            let at = u64::from(entry.position);
            if at > position {
                break;
            }
            self.next_offset += 1;
            let what = if at < position {
                format!("offset index entry {i} points at byte {at}, where no intact batch starts")
            } else if u64::from(entry.relative_offset) != relative {
                format!(
                    "offset index entry {i} names offset {}, but the batch at byte {at} starts at offset {}",
                    segment.base.0 + u64::from(entry.relative_offset),
                    header.base_offset
                )
            } else {
                continue;
            };
            check.index_error(&self.offset_path, (i * OFFSET_ENTRY_BYTES) as u64, what);
        }
        while let Some(&(i, entry)) = self.times.get(self.next_time) {
            let named = u64::from(entry.relative_offset);
            if named > relative {
                break;
            }
            self.next_time += 1;
            let what = if named < relative {
                format!(
                    "time index entry {i} names offset {}, where no intact batch starts",
                    segment.base.0 + named
                )
            } else if self.timestamps_known
                && max_timestamp.is_some_and(|max| max.0 != entry.timestamp_ms)
            {
                format!(
                    "time index entry {i} records timestamp {}, but the largest timestamp up to the batch at offset {} is {}",
                    entry.timestamp_ms,
                    header.base_offset,
                    max_timestamp.map_or(0, |max| max.0)
                )
            } else {
                continue;
            };
            check.index_error(&self.time_path, (i * TIME_ENTRY_BYTES) as u64, what);
        }
    }

    /// Entries left after the last intact batch point past it.
    fn finish(self, segment: &SegmentCheck<'_>, check: &mut LogCheck) {
        for &(i, entry) in &self.offsets[self.next_offset..] {
            let what = format!(
                "offset index entry {i} points at byte {}, past the last intact batch",
                entry.position
            );
            check.index_error(&self.offset_path, (i * OFFSET_ENTRY_BYTES) as u64, what);
        }
        for &(i, entry) in &self.times[self.next_time..] {
            let what = format!(
                "time index entry {i} names offset {}, past the last intact batch",
                segment.base.0 + u64::from(entry.relative_offset)
            );
            check.index_error(&self.time_path, (i * TIME_ENTRY_BYTES) as u64, what);
        }
    }
}

/// Reads a file through one buffer of [`VERIFY_READ_BYTES`] (or one batch, when larger).
struct Reader<'a> {
    file: &'a dyn File,
    file_bytes: u64,
    buf: Vec<u8>,
    /// Where `buf` starts in the file.
    start: u64,
}

impl Reader<'_> {
    /// Up to `len` bytes at `position` (fewer at the end of the file).
    fn get(&mut self, position: u64, len: usize) -> io::Result<&[u8]> {
        let left = self.file_bytes.saturating_sub(position);
        let len = len.min(left as usize);
        let buffered_end = self.start + self.buf.len() as u64;
        if position < self.start || position + len as u64 > buffered_end {
            let n = left.min(len.max(VERIFY_READ_BYTES) as u64) as usize;
            self.buf.resize(n, 0);
            self.file.read_exact_at(&mut self.buf, position)?;
            self.start = position;
        }
        let at = (position - self.start) as usize;
        Ok(&self.buf[at..at + len])
    }

    /// Checks the batch that should start at `position`.
    fn check_at(&mut self, position: u64) -> io::Result<AtPosition> {
        let file_bytes = self.file_bytes;
        let head = self.get(position, BATCH_HEADER_BYTES)?;
        let batch_bytes = match batch::peek_prefix(head) {
            Ok((_, batch_bytes)) => batch_bytes,
            Err(error) => {
                return Ok(AtPosition::Invalid { reason: error.to_string(), batch_bytes: None });
            }
        };
        if position + u64::from(batch_bytes) > file_bytes {
            let reason = format!(
                "its length says {batch_bytes} bytes, but {} are left in the file",
                file_bytes - position
            );
            return Ok(AtPosition::Invalid { reason, batch_bytes: None });
        }
        let bytes = self.get(position, batch_bytes as usize)?;
        Ok(match batch::check(bytes) {
            Ok(header) => AtPosition::Batch(header),
            Err(error) => {
                AtPosition::Invalid { reason: error.to_string(), batch_bytes: Some(batch_bytes) }
            }
        })
    }

    /// The next intact batch after the invalid bytes at `position`: where the length field
    /// says the damaged batch ends, if a batch checks there, or else the first position after
    /// `position` where one does.
    fn next_intact(
        &mut self,
        position: u64,
        batch_bytes: Option<u32>,
    ) -> io::Result<Option<(u64, BatchHeader)>> {
        if let Some(batch_bytes) = batch_bytes {
            let end = position + u64::from(batch_bytes);
            if end < self.file_bytes
                && let AtPosition::Batch(header) = self.check_at(end)?
            {
                return Ok(Some((end, header)));
            }
        }
        let mut from = position + 1;
        while from + (BATCH_PREFIX_BYTES as u64) < self.file_bytes {
            let window = self.get(from, VERIFY_READ_BYTES)?;
            // Positions whose head checks (length, magic, version, stamp CRC) are rare in
            // damaged bytes; each is then checked whole.
            let candidates: Vec<u64> = (0..window.len())
                .filter(|&at| batch::check_head(&window[at..]).is_ok())
                .map(|at| from + at as u64)
                .collect();
            let scanned = window.len();
            for candidate in candidates {
                if let AtPosition::Batch(header) = self.check_at(candidate)? {
                    return Ok(Some((candidate, header)));
                }
            }
            // The next window overlaps this one by a head, so no head is missed at the seam.
            if from + scanned as u64 >= self.file_bytes {
                break;
            }
            from += (scanned - batch::STAMPED_HEAD_BYTES).max(1) as u64;
        }
        Ok(None)
    }
}
