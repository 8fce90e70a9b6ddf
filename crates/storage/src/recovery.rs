//! Opening a log: find the segments, trust what a clean shutdown vouches for, check and repair
//! the rest.
//!
//! Steps, in order:
//!
//! 1. Create the log directory and any missing above it, each made durable by an fsync of
//!    its parent (`fs::create_dir_all_durably`). Remove leftovers: `*.tmp` files and index
//!    files whose log file is gone. Fsync the directory if anything was removed.
//! 2. Decide whether the last shutdown was clean: the `clean-shutdown` file exists and holds
//!    the next offset that the segments end at. If it was not, read the recovery point
//!    (`recovery-point`): every segment below it was fsynced whole.
//! 3. Load each segment, oldest first. A sealed segment that is known durable (below the
//!    recovery point, or any segment after a clean shutdown) keeps its trimmed indexes if they
//!    are consistent, and only the batches after its last index entry are checked (length and
//!    CRC) up to the end of the file. Every other segment (from the recovery point on after a
//!    crash) and any segment whose indexes are missing, torn or inconsistent is scanned whole:
//!    every batch's length, CRC and offset, and its indexes are rebuilt.
//! 4. Where the scan finds invalid bytes, or a segment does not start where the previous one
//!    ended, decide: the bytes were fsynced once if they lie in a segment known durable, or if
//!    a valid batch after them (in that file or a later one) was stamped with a durable end
//!    past them. Then it is damage: the log is fenced, readable up to the damage, refusing
//!    writes, the files left as they are for inspection. Otherwise they are writes that never
//!    reached the disk whole (after a power loss unsynced writes land torn or out of order): a
//!    torn tail, cut off there, with every later segment deleted.
//! 5. Fsync every segment that was not known durable (a process that crashed may have left
//!    unsynced batches in the page cache: they become durable now, before anyone reads them),
//!    record the active segment's base as the recovery point, and ready the active segment's
//!    indexes for appends. After a clean shutdown the log is left as it was instead:
//!    `clean-shutdown` stays, and the indexes trimmed, until the first write removes the
//!    marker (fsync of the directory) and readies them; so opening an idle log writes
//!    nothing, and a crash before its first write still finds it clean. A marker that does
//!    not match the segments, or beside which this open rebuilt or cut anything, is removed
//!    here, and the directory fsynced.
//!
//! Opening is idempotent: opening again without writes in between rewrites nothing that
//! differs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Fence, OpenError};
use crate::fs::{FileSystem, OpenMode};
use crate::index::{IndexFile, OFFSET_ENTRY_BYTES, OffsetIndex, TIME_ENTRY_BYTES, TimeIndex};
use crate::log::{CLEAN_SHUTDOWN_FILE, Log, LogConfig, Watermark};
use crate::segment::{self, ScanStop as Stop, Segment};
use crate::segment_file::SegmentFile;
use crate::{Offset, TimestampMs};

/// What recovery found and did, for the operator's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub clean_shutdown: bool,
    pub segments: usize,
    /// Segments whose every batch was checked.
    pub scanned: Vec<PathBuf>,
    /// Index files written anew.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// A torn tail cut off: the file and the bytes removed.
    pub truncated: Option<(PathBuf, u64)>,
    /// Leftover temporary and orphaned files removed.
    pub removed: Vec<PathBuf>,
    /// Files in the directory that are not Spool's, left alone.
    pub ignored: Vec<PathBuf>,
}

impl fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.clean_shutdown { "clean shutdown" } else { "recovered after a crash" };
        write!(f, "{kind}: {} segments", self.segments)?;
        if !self.scanned.is_empty() {
            write!(f, ", {} scanned", self.scanned.len())?;
        }
        if !self.rebuilt_indexes.is_empty() {
            write!(f, ", {} index files rebuilt", self.rebuilt_indexes.len())?;
        }
        if let Some((path, bytes)) = &self.truncated {
            write!(f, ", torn tail of {bytes} bytes cut from {}", path.display())?;
        }
        if !self.removed.is_empty() {
            write!(f, ", {} leftover files removed", self.removed.len())?;
        }
        if !self.ignored.is_empty() {
            write!(f, ", {} unknown files ignored", self.ignored.len())?;
        }
        Ok(())
    }
}

/// The log and index paths of the segment at `base`.
pub(crate) fn segment_paths(dir: &Path, base: Offset) -> [PathBuf; 3] {
    [
        segment::log_path(dir, base),
        segment::offset_index_path(dir, base),
        segment::time_index_path(dir, base),
    ]
}

pub(crate) fn parse_base(name: &str, extension: &str) -> Option<Offset> {
    let stem = name.strip_suffix(extension)?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok().map(Offset))
        .flatten()
}

/// The segment a [`Opener::load`] is for: a sealed one, or the last, which becomes active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Not the last segment: its indexes are trimmed to their entries and synced.
    Sealed,
    /// The last segment: its indexes keep room for appends.
    Active,
}

/// Whether [`Opener::load`] may keep a segment's index files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Indexes {
    /// The data they point into is known durable: keep them if they are consistent with it.
    KeepIfConsistent,
    /// Rebuild them from a scan of every batch.
    Rebuild,
}

/// What [`Opener::settle`] may assume of the bytes where a segment's scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// The segment was fsynced whole before the last shutdown: invalid bytes in it are damage.
    KnownDurable,
    /// The segment may hold writes that never reached the disk whole: invalid bytes are a
    /// torn tail, unless a later batch vouches that they were durable once.
    PerhapsUnsynced,
}

/// What the scan phase found: the segments on disk and how far the last shutdown vouches for
/// them.
struct Scan {
    /// The segments' base offsets, oldest first.
    bases: Vec<Offset>,
    /// The next offset that a clean shutdown recorded; `None` after a crash.
    clean_next_offset: Option<Offset>,
    /// After a crash, segments from this base on may hold data that was never fsynced; `None`
    /// after a clean shutdown, which fsynced everything.
    recovery_point: Option<Offset>,
}

impl Scan {
    /// Whether the segment at `base` was fsynced whole before the last shutdown.
    fn fsynced(&self, base: Offset) -> bool {
        self.recovery_point.is_none_or(|point| base < point)
    }

    /// Indexes are kept only where the data they point into is known durable.
    fn indexes(&self, base: Offset, role: Role) -> Indexes {
        let sealed_and_fsynced = role == Role::Sealed && self.fsynced(base);
        if self.clean_next_offset.is_some() || sealed_and_fsynced {
            Indexes::KeepIfConsistent
        } else {
            Indexes::Rebuild
        }
    }

    /// Invalid bytes are damage only in a sealed segment fsynced whole; the active segment's
    /// tail is always treated as possibly torn.
    fn durability(&self, base: Offset, role: Role) -> Durability {
        if role == Role::Sealed && self.fsynced(base) {
            Durability::KnownDurable
        } else {
            Durability::PerhapsUnsynced
        }
    }
}

/// What the recover phase kept: the segments, oldest first (none for an empty directory), and
/// the fence, if it found damage.
struct Recovered {
    segments: Vec<Segment>,
    fence: Option<Fence>,
}

/// What the finish phase hands to the new [`Log`].
struct Finished {
    segments: Vec<Segment>,
    fence: Option<Fence>,
    recovery_point: Offset,
    clean_shutdown: bool,
    /// `clean-shutdown` stays on disk until the first write (see the module docs).
    keep_marker: bool,
}

struct Opener<'a> {
    fs: &'a Arc<dyn FileSystem>,
    dir: &'a Path,
    config: &'a LogConfig,
    report: RecoveryReport,
}

/// Attaches `path` to an I/O error of opening.
fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + use<> {
    let path = path.to_path_buf();
    move |source| OpenError::Io { path, source }
}

impl Log {
    /// Opens the log in `dir`, creating it if it does not exist, and recovers it, in three
    /// phases (the module docs give the steps): scan the directory, recover the segments,
    /// finish by making what was kept durable.
    ///
    /// A log that finds damage it must not repair opens *fenced*: see [`Log::fence`].
    pub fn open(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        config: LogConfig,
        now: TimestampMs,
    ) -> Result<Log, OpenError> {
        config.validate()?;
        let mut opener =
            Opener { fs: &fs, dir, config: &config, report: RecoveryReport::default() };
        let scan = opener.scan()?;
        let recovered = opener.recover(&scan, now)?;
        let finished = opener.finish(&scan, recovered)?;
        let active = finished.segments.last().expect("at least one segment");
        let durable = Watermark {
            offset: active.next_offset,
            segment_base: active.base_offset,
            position: active.size_bytes,
        };
        let mut report = opener.report;
        report.clean_shutdown = finished.clean_shutdown;
        report.segments = finished.segments.len();
        if let Some(fence) = &finished.fence {
            tracing::error!(dir = %dir.display(), %fence, "log opened fenced");
        }
        Ok(Log {
            fs,
            dir: dir.to_path_buf(),
            config,
            segments: finished.segments,
            durable,
            last_sync: now,
            fence: finished.fence,
            recovery: report,
            recovery_point: finished.recovery_point,
            clean_marker: finished.keep_marker,
            last_light_run: None,
            committed: None,
        })
    }
}

/// Step 5's first part: fsyncs every segment that the last shutdown did not vouch for (a
/// process that crashed may have left unsynced batches in the page cache: they become durable
/// now, before anyone reads them). A failed fsync fences the log.
fn sync_not_known_durable(segments: &mut [Segment], scan: &Scan) -> Option<Fence> {
    let mut fence = None;
    for segment in segments.iter_mut().filter(|s| !scan.fsynced(s.base_offset)) {
        if let Err(error) = segment.file.get().and_then(|file| file.sync_data()) {
            fence = Some(Fence::SyncFailed { path: segment.path.clone(), error: Arc::new(error) });
            break;
        }
    }
    segments.iter_mut().for_each(|s| s.data_durable = true);
    fence
}

impl Opener<'_> {
    /// Phase 1, scan (steps 1 and 2): makes the directory, removes leftovers, lists the
    /// segments and reads what the last shutdown left.
    fn scan(&mut self) -> Result<Scan, OpenError> {
        crate::fs::create_dir_all_durably(self.fs.as_ref(), self.dir).map_err(io_at(self.dir))?;
        let bases = self.tidy().map_err(io_at(self.dir))?;
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        let clean_next_offset = self.read_marker(&marker).map_err(io_at(&marker))?;
        let recovery_point = match clean_next_offset {
            Some(_) => None,
            None => Some(self.read_recovery_point().map_err(io_at(self.dir))?),
        };
        Ok(Scan { bases, clean_next_offset, recovery_point })
    }

    /// Phase 2, recover (steps 3 and 4): loads each segment, oldest first, until one's scan
    /// stops early or the next segment does not start where it ends; [`Opener::settle`] then
    /// cuts the torn tail or fences the log.
    fn recover(&mut self, scan: &Scan, now: TimestampMs) -> Result<Recovered, OpenError> {
        let mut segments: Vec<Segment> = Vec::new();
        for (i, &base) in scan.bases.iter().enumerate() {
            if let Some(previous) = segments.last_mut()
                && previous.next_offset != base
            {
                let stop = Stop {
                    reason: format!(
                        "the segment ends at offset {} but the next one starts at {}",
                        previous.next_offset.0, base.0
                    ),
                    durable_after: None,
                };
                let durability = scan.durability(previous.base_offset, Role::Sealed);
                let fence = self.settle(previous, stop, durability, &scan.bases[i..])?;
                return Ok(Recovered { segments, fence });
            }
            let later = &scan.bases[i + 1..];
            let role = if later.is_empty() { Role::Active } else { Role::Sealed };
            let (segment, stop) = self.load(base, role, scan.indexes(base, role), now)?;
            segments.push(segment);
            if let Some(stop) = stop {
                let segment = segments.last_mut().expect("pushed above");
                let fence = self.settle(segment, stop, scan.durability(base, role), later)?;
                return Ok(Recovered { segments, fence });
            }
        }
        Ok(Recovered { segments, fence: None })
    }

    /// Phase 3, finish (step 5): gives an empty directory its first segment, fsyncs every
    /// segment kept that was not known durable, prepares the active segment for appends and
    /// records the recovery point; or, after a clean shutdown, leaves the marker and the
    /// indexes for the first write.
    fn finish(&mut self, scan: &Scan, recovered: Recovered) -> Result<Finished, OpenError> {
        let Recovered { mut segments, mut fence } = recovered;
        if segments.is_empty() {
            let capacity = self.config.index_capacity();
            let segment =
                Segment::create(self.fs, self.dir, Offset(0), capacity).map_err(io_at(self.dir))?;
            self.fs.sync_dir(self.dir).map_err(io_at(self.dir))?;
            segments.push(segment);
        }
        if fence.is_none() {
            fence = sync_not_known_durable(&mut segments, scan);
        }
        // Every sealed segment is durable now: none holds its file.
        if fence.is_none() {
            let sealed = segments.len() - 1;
            segments[..sealed].iter_mut().for_each(|s| s.release_file(self.fs, false));
        }
        let active = segments.last_mut().expect("at least one segment");
        let clean_shutdown = scan.clean_next_offset == Some(active.next_offset) && fence.is_none();
        // The marker stays only where this open changed nothing it vouches for.
        let keep_marker = clean_shutdown
            && self.report.rebuilt_indexes.is_empty()
            && self.report.scanned.is_empty()
            && self.report.truncated.is_none();
        let mut recovery_point = scan.recovery_point.unwrap_or(active.base_offset);
        if fence.is_none() {
            active.data_durable = false;
            active.holds_v1 = active.first_batch_is_v1().map_err(io_at(&active.path))?;
            if !keep_marker {
                let capacity = self.config.index_capacity();
                active.offset_index.0.activate(capacity);
                active.time_index.0.activate(capacity);
            }
            if recovery_point != active.base_offset {
                recovery_point = active.base_offset;
                write_recovery_point(self.fs.as_ref(), self.dir, recovery_point)
                    .map_err(io_at(self.dir))?;
            }
        }
        if scan.clean_next_offset.is_some() && !keep_marker {
            let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
            self.fs.remove_file(&marker).map_err(io_at(&marker))?;
            self.fs.sync_dir(self.dir).map_err(io_at(self.dir))?;
        }
        Ok(Finished { segments, fence, recovery_point, clean_shutdown, keep_marker })
    }

    /// Step 1: removes leftovers and returns the segments' base offsets, oldest first.
    fn tidy(&mut self) -> std::io::Result<Vec<Offset>> {
        let names = self.fs.list_dir(self.dir)?;
        let mut bases: Vec<Offset> = names.iter().filter_map(|n| parse_base(n, ".log")).collect();
        bases.sort();
        let mut removed_any = false;
        for name in &names {
            let path = self.dir.join(name);
            let index_base = parse_base(name, ".index").or_else(|| parse_base(name, ".timeindex"));
            let orphan = index_base.is_some_and(|b| bases.binary_search(&b).is_err());
            if orphan || name.ends_with(".tmp") {
                self.fs.remove_file(&path)?;
                self.report.removed.push(path);
                removed_any = true;
            } else if index_base.is_none()
                && parse_base(name, ".log").is_none()
                && name != CLEAN_SHUTDOWN_FILE
                && name != RECOVERY_POINT_FILE
                && !name.ends_with(OWNER_FILE_SUFFIX)
            {
                tracing::warn!(path = %path.display(), "ignoring a file that is not Spool's");
                self.report.ignored.push(path);
            }
        }
        if removed_any {
            self.fs.sync_dir(self.dir)?;
        }
        Ok(bases)
    }

    /// Step 2: the next offset recorded by a clean shutdown, if there was one.
    fn read_marker(&self, marker: &Path) -> std::io::Result<Option<Offset>> {
        if !self.fs.exists(marker)? {
            return Ok(None);
        }
        let file = self.fs.open(marker, OpenMode::Existing)?;
        let mut bytes = vec![0u8; file.len()?.min(32) as usize];
        file.read_exact_at(&mut bytes, 0)?;
        Ok(std::str::from_utf8(&bytes).ok().and_then(|s| s.trim().parse().ok()).map(Offset))
    }

    /// Step 3 for one segment: returns it and, if its scan stopped before the end of the
    /// file, why (for [`Opener::settle`]).
    fn load(
        &mut self,
        base: Offset,
        role: Role,
        indexes: Indexes,
        now: TimestampMs,
    ) -> Result<(Segment, Option<Stop>), OpenError> {
        let [path, offset_path, time_path] = segment_paths(self.dir, base);
        let file = self.fs.open(&path, OpenMode::Existing).map_err(io_at(&path))?;
        let file_bytes = file.len().map_err(io_at(&path))?;
        let indexes = if indexes == Indexes::KeepIfConsistent {
            let offset_index = IndexFile::open_trimmed(self.fs, &offset_path, OFFSET_ENTRY_BYTES)
                .map_err(io_at(&offset_path))?;
            let time_index = IndexFile::open_trimmed(self.fs, &time_path, TIME_ENTRY_BYTES)
                .map_err(io_at(&time_path))?;
            offset_index.zip(time_index).map(|(o, t)| (OffsetIndex(o), TimeIndex(t)))
        } else {
            None
        };
        if let Some((offset_index, time_index)) = indexes
            && offset_index.is_consistent(file_bytes)
        {
            let mut segment = Segment {
                base_offset: base,
                path: path.clone(),
                file: SegmentFile::open(file.clone()),
                offset_index,
                time_index,
                size_bytes: file_bytes,
                next_offset: base,
                max_timestamp: None,
                first_append: None,
                last_indexed_position: 0,
                data_durable: true,
                holds_v1: false,
                runway_end: 0,
                direct: Default::default(),
            };
            if let Some(()) = self.check_tail(&mut segment, now).map_err(io_at(&path))? {
                return Ok((segment, None));
            }
        }
        self.scan_and_rebuild(base, file, role, now)
    }

    /// Checks the batches after the last index entry of a segment with trusted indexes, and
    /// fills in what the indexes do not record. `None` when anything is off: scan instead.
    fn check_tail(&self, segment: &mut Segment, now: TimestampMs) -> std::io::Result<Option<()>> {
        let start = segment.offset_index.last();
        let mut position = start.map_or(0, |e| u64::from(e.position));
        let mut next =
            Offset(segment.base_offset.0 + start.map_or(0, |e| u64::from(e.relative_offset)));
        let mut max = segment.time_index.last().map(|e| TimestampMs(e.timestamp_ms));
        // The tail is at most an index interval plus one batch: read it at once.
        let mut tail = vec![0u8; (segment.size_bytes - position) as usize];
        segment.file.get()?.read_exact_at(&mut tail, position)?;
        let mut at = 0usize;
        while at < tail.len() {
            let Ok(header) = crate::batch::check(&tail[at..]) else {
                return Ok(None);
            };
            if header.base_offset != next {
                return Ok(None);
            }
            max = Some(max.map_or(header.max_timestamp, |m| m.max(header.max_timestamp)));
            next = header.next_offset();
            at += header.batch_bytes as usize;
        }
        position += at as u64;
        debug_assert_eq!(position, segment.size_bytes);
        if !segment.time_index.is_consistent(next.0 - segment.base_offset.0) {
            return Ok(None);
        }
        segment.next_offset = next;
        segment.max_timestamp = max;
        segment.last_indexed_position = start.map_or(0, |e| u64::from(e.position));
        segment.first_append = self.first_batch_time(segment, now)?;
        Ok(Some(()))
    }

    /// The age a reopened segment counts from: its first batch's newest timestamp, but never
    /// later than now. `None` when the first batch's head is damaged: the segment then counts
    /// its age from its next append, and readers meet the damage as [`ReadError::Damaged`].
    ///
    /// [`ReadError::Damaged`]: crate::ReadError::Damaged
    fn first_batch_time(
        &self,
        segment: &Segment,
        now: TimestampMs,
    ) -> std::io::Result<Option<TimestampMs>> {
        let mut first = None;
        let walked = segment.walk(0, segment.size_bytes, |batch| {
            first = Some(batch.max_timestamp.min(now));
            false
        });
        match walked {
            Ok(()) => Ok(first),
            Err(segment::ReadFailure::Damaged { .. }) => Ok(None),
            Err(segment::ReadFailure::Io(error)) => Err(error),
        }
    }

    fn scan_and_rebuild(
        &mut self,
        base: Offset,
        file: Arc<dyn crate::fs::File>,
        role: Role,
        now: TimestampMs,
    ) -> Result<(Segment, Option<Stop>), OpenError> {
        let [path, offset_path, time_path] = segment_paths(self.dir, base);
        let (capacity, make): (usize, fn(_, _, _, _) -> _) = match role {
            Role::Active => (self.config.index_capacity(), IndexFile::recreate),
            Role::Sealed => (0, IndexFile::create),
        };
        let mut segment = Segment {
            base_offset: base,
            path: path.clone(),
            file: SegmentFile::open(file.clone()),
            offset_index: OffsetIndex(
                make(self.fs, &offset_path, OFFSET_ENTRY_BYTES, capacity)
                    .map_err(io_at(&offset_path))?,
            ),
            time_index: TimeIndex(
                make(self.fs, &time_path, TIME_ENTRY_BYTES, capacity).map_err(io_at(&time_path))?,
            ),
            size_bytes: 0,
            next_offset: base,
            max_timestamp: None,
            first_append: None,
            last_indexed_position: 0,
            data_durable: false,
            holds_v1: false,
            runway_end: 0,
            direct: Default::default(),
        };
        let outcome = segment.scan().map_err(io_at(&path))?;
        self.report.scanned.push(path.clone());
        self.report.rebuilt_indexes.extend([offset_path.clone(), time_path.clone()]);
        let entries = outcome.offset_entries.len().max(outcome.time_entries.len()) + 1;
        segment.offset_index.0.reserve(entries).map_err(io_at(&offset_path))?;
        segment.time_index.0.reserve(entries).map_err(io_at(&time_path))?;
        for entry in &outcome.offset_entries {
            segment.offset_index.push(*entry);
        }
        for entry in &outcome.time_entries {
            segment.time_index.push(*entry);
        }
        segment.size_bytes = outcome.valid_bytes;
        segment.next_offset = outcome.next_offset;
        segment.max_timestamp = outcome.max_timestamp;
        segment.last_indexed_position =
            outcome.offset_entries.last().map_or(0, |e| u64::from(e.position));
        segment.first_append = outcome.first_batch_max_timestamp.map(|t| t.min(now));
        if role == Role::Sealed {
            segment.offset_index.0.trim_and_sync().map_err(io_at(&offset_path))?;
            segment.time_index.0.trim_and_sync().map_err(io_at(&time_path))?;
        }
        Ok((segment, outcome.stopped))
    }

    /// Step 4: the scan of `segment` stopped (invalid bytes, or the next segment does not
    /// start where it ends). Fences the log if what follows was ever fsynced; otherwise cuts
    /// the torn tail and deletes the segments in `later`, and `segment` becomes the last.
    fn settle(
        &mut self,
        segment: &mut Segment,
        stop: Stop,
        durability: Durability,
        later: &[Offset],
    ) -> Result<Option<Fence>, OpenError> {
        let end = segment.next_offset;
        let mut durable_after = stop.durable_after;
        if durability == Durability::PerhapsUnsynced {
            for &base in later {
                let path = segment::log_path(self.dir, base);
                let file = self.fs.open(&path, OpenMode::Existing).map_err(io_at(&path))?;
                let stamp = segment::max_durable_stamp(file.as_ref(), 0).map_err(io_at(&path))?;
                durable_after = durable_after.max(stamp);
            }
        }
        if durability == Durability::KnownDurable || durable_after.is_some_and(|d| d > end) {
            return Ok(Some(Fence::Damaged {
                path: segment.path.clone(),
                position: segment.size_bytes,
                reason: stop.reason,
                readable_end: end,
            }));
        }
        let file = segment.file.get().map_err(io_at(&segment.path))?;
        let file_bytes = file.len().map_err(io_at(&segment.path))?;
        if file_bytes > segment.size_bytes {
            // Zeros alone, in the last segment: the runway written ahead of the appends
            // (`limits::RUNWAY_BYTES`), not a tail.
            let runway = later.is_empty()
                && segment::zeros_to_end(file.as_ref(), segment.size_bytes)
                    .map_err(io_at(&segment.path))?;
            if runway {
                tracing::debug!(path = %segment.path.display(), position = segment.size_bytes, "cutting the zeros written ahead of the log's end");
            } else {
                tracing::warn!(path = %segment.path.display(), position = segment.size_bytes, reason = %stop.reason, "cutting a torn tail");
                self.report.truncated =
                    Some((segment.path.clone(), file_bytes - segment.size_bytes));
            }
            file.set_len(segment.size_bytes).map_err(io_at(&segment.path))?;
            file.sync_data().map_err(io_at(&segment.path))?;
        }
        for &base in later {
            tracing::warn!(base = base.0, "deleting a segment that follows a torn tail");
            for path in segment_paths(self.dir, base) {
                if self.fs.exists(&path).map_err(io_at(&path))? {
                    self.fs.remove_file(&path).map_err(io_at(&path))?;
                    self.report.removed.push(path);
                }
            }
        }
        if !later.is_empty() {
            self.fs.sync_dir(self.dir).map_err(io_at(self.dir))?;
        }
        Ok(None)
    }

    /// The recovery point: every segment below it was fsynced whole. 0 when the file is
    /// missing or unreadable, so that everything is checked.
    fn read_recovery_point(&self) -> std::io::Result<Offset> {
        let path = self.dir.join(RECOVERY_POINT_FILE);
        if !self.fs.exists(&path)? {
            return Ok(Offset(0));
        }
        let file = self.fs.open(&path, OpenMode::Existing)?;
        let mut bytes = vec![0u8; file.len()?.min(32) as usize];
        file.read_exact_at(&mut bytes, 0)?;
        Ok(std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map_or(Offset(0), Offset))
    }
}

/// Files whose names end so belong to the log's owner (a replicated log keeps its Raft state
/// beside its segments) and are left alone.
pub(crate) const OWNER_FILE_SUFFIX: &str = ".json";

/// The file that holds the recovery point, in decimal.
pub(crate) const RECOVERY_POINT_FILE: &str = "recovery-point";

/// Records durably that every segment below `offset` was fsynced whole, with
/// [`crate::fs::write_atomically`].
pub(crate) fn write_recovery_point(
    fs: &dyn FileSystem,
    dir: &Path,
    offset: Offset,
) -> std::io::Result<()> {
    crate::fs::write_atomically(fs, dir, RECOVERY_POINT_FILE, offset.0.to_string().as_bytes())
}

/// The first half of [`write_recovery_point`] ([`crate::fs::write_temporary`]): commit it,
/// then sync the directory, or give up with nothing synced.
pub(crate) fn write_recovery_point_temporary(
    fs: &dyn FileSystem,
    dir: &Path,
    offset: Offset,
) -> std::io::Result<crate::fs::Temporary> {
    crate::fs::write_temporary(fs, dir, RECOVERY_POINT_FILE, offset.0.to_string().as_bytes())
}
