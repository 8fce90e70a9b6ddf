//! The partition log: an ordered list of segments, the last one active.

mod entries;

pub use entries::EntryAt;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{
    self, BatchHeader, BatchView, CheckedBatch, STAMPED_HEAD_BYTES, STAMPED_TAIL_FROM,
};
use crate::direct::Writes;
use crate::error::{
    AppendError, CloseError, ConfigError, DeleteError, Fence, ReadError, RetentionError, SyncError,
    is_no_space,
};
use crate::fs::{File, FileSystem};
use crate::limits::{
    BATCH_BYTES_MAX, FSYNC_INTERVAL_MS_MAX, NEVER_SEALED_SYNC_INTERVAL_MS, PAGE_BYTES,
    READ_BYTES_MAX, RUNWAY_APPENDS_WITHIN_MS, RUNWAY_BYTES, RUNWAY_RUN_BYTES_MAX,
    SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, WRITEBACK_HINT_BYTES_MIN,
    index_entries_max,
};
use crate::recovery::RecoveryReport;
use crate::segment::{Direct, ReadFailure, SealData, Segment, SegmentWriteError};
use crate::{Offset, TimestampMs};

/// The name of the file whose presence says the log was closed cleanly; it holds the log's
/// next offset in decimal.
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// When appended batches are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// A batch is durable before it is visible to readers (or acknowledged by a server).
    Always,
    /// Appended batches are synced at most `interval_ms` apart (the caller drives
    /// [`Log::sync_due`]); visible once written.
    Interval { interval_ms: u64 },
    /// The operating system decides when data reaches the disk; visible once written.
    Never,
}

/// A log's settings. Validated by [`LogConfig::validate`]; nothing is adjusted silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// The active segment rolls before a batch would take it past this size.
    pub segment_bytes: u64,
    /// The active segment rolls when its first batch is this old.
    pub segment_ms: Option<u64>,
    pub fsync: FsyncPolicy,
    /// Sealed segments whose newest record is older than this are deleted.
    pub retention_ms: Option<u64>,
    /// Sealed segments are deleted, oldest first, while the log stays at least this large
    /// without them.
    pub retention_bytes: Option<u64>,
    /// Heavy appends of an `always` log go past the page cache (`crate::direct`), unless
    /// direct writes are switched off for the process.
    pub direct_writes: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_ms: None,
            fsync: FsyncPolicy::Always,
            retention_ms: None,
            retention_bytes: None,
            direct_writes: true,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(ConfigError::SegmentBytes {
                bytes: self.segment_bytes,
                min: SEGMENT_BYTES_MIN,
                max: SEGMENT_BYTES_MAX,
            });
        }
        if self.segment_ms == Some(0) {
            return Err(ConfigError::SegmentMsZero);
        }
        if let FsyncPolicy::Interval { interval_ms } = self.fsync
            && !(1..=FSYNC_INTERVAL_MS_MAX).contains(&interval_ms)
        {
            return Err(ConfigError::FsyncInterval { interval_ms, max_ms: FSYNC_INTERVAL_MS_MAX });
        }
        if self.retention_ms == Some(0) {
            return Err(ConfigError::RetentionMsZero);
        }
        if self.retention_bytes == Some(0) {
            return Err(ConfigError::RetentionBytesZero);
        }
        Ok(())
    }

    pub(crate) fn index_capacity(&self) -> usize {
        index_entries_max(self.segment_bytes) as usize
    }
}

/// A point in the log: an offset and where it falls in the segment files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Watermark {
    pub(crate) offset: Offset,
    /// Base offset of the segment that `position` is in.
    pub(crate) segment_base: Offset,
    pub(crate) position: u64,
}

/// Batches stamped for the active segment and not yet written: (index in the group,
/// header, whether the segment rolled before it, the batch's stamped head).
struct Run {
    batches: Vec<(usize, BatchHeader, bool, [u8; STAMPED_HEAD_BYTES])>,
    bytes: u64,
}

/// A segment as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: Offset,
    pub next_offset: Offset,
    pub size_bytes: u64,
    /// The largest record timestamp, `None` while empty.
    pub max_timestamp: Option<TimestampMs>,
}

/// What an append assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The append was the first in a new segment.
    pub rolled: bool,
}

/// Whole batches read from the log, as stored.
#[derive(Debug, Clone)]
pub struct ReadBatches {
    /// Whole batches back to back. The first may start before the requested offset (it is
    /// the batch that holds it); readers skip records below the offset they asked for.
    pub bytes: Bytes,
    /// The offset after the last batch in `bytes` (the requested offset when empty).
    pub next_offset: Offset,
    pub log_start_offset: Offset,
    /// The log's visible end when the read was made.
    pub log_end_offset: Offset,
}

/// A sync prepared under the log's lock and run without it: see [`Log::begin_sync`].
#[derive(Debug)]
#[must_use = "a prepared sync does nothing until run and finished"]
pub struct SyncTicket {
    /// Sealed segments not yet synced, oldest first, then the active segment if it has
    /// unsynced batches.
    /// (`None`: it could not be opened; the sync fails.)
    files: Vec<(Option<Arc<dyn File>>, PathBuf)>,
    /// The active segment's direct writes (the last of `files`), which may still be running
    /// when the ticket is prepared: the sync waits for them first
    /// ([`SyncTicket::wait_for_writes`]). With how many had been handed on when it was
    /// prepared.
    writes: Option<(Arc<Writes>, u64)>,
    /// Base offsets of the sealed segments among `files`.
    sealed: Vec<Offset>,
    /// The recovery point to record once `files` are synced, when sealed segments are among
    /// them.
    recovery_point: Option<Offset>,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    target: Watermark,
    /// The file whose sync failed, for the fence's message.
    failed: std::sync::OnceLock<PathBuf>,
}

impl SyncTicket {
    /// The fsyncs themselves: call it without holding the log's lock, so appends continue.
    /// Syncs every sealed segment not yet synced and the active segment, then, if sealed
    /// segments were among them, records the new recovery point.
    pub fn run(&self) -> io::Result<()> {
        self.wait_for_writes()?;
        self.sync_files()?;
        self.record_recovery_point()
    }

    /// Waits until the active segment's direct writes handed on before the ticket was
    /// prepared are over, not for those handed on since; an error if one failed.
    pub(crate) fn wait_for_writes(&self) -> io::Result<()> {
        let Some((writes, handed)) = &self.writes else { return Ok(()) };
        writes.wait_for(*handed).inspect_err(|_| {
            if let Some((_, path)) = self.files.last() {
                let _ = self.failed.set(path.clone());
            }
        })
    }

    /// Whether a shared `syncfs` may stand for this ticket's fsyncs: it has files to sync,
    /// all open (one that could not be opened fails the sync alone, naming the file).
    pub(crate) fn can_share(&self) -> bool {
        !self.files.is_empty() && self.files.iter().all(|(file, _)| file.is_some())
    }

    /// A shared sync covering this ticket failed: the fence names the log's directory.
    pub(crate) fn mark_failed_in_dir(&self) {
        let _ = self.failed.set(self.dir.clone());
    }

    fn sync_files(&self) -> io::Result<()> {
        for (file, path) in &self.files {
            let synced = match file {
                Some(file) => file.sync_data(),
                None => Err(io::Error::other("the segment's file could not be opened to sync it")),
            };
            if let Err(error) = synced {
                let _ = self.failed.set(path.clone());
                return Err(error);
            }
        }
        Ok(())
    }

    pub(crate) fn record_recovery_point(&self) -> io::Result<()> {
        if let Some(point) = self.recovery_point {
            let written = crate::recovery::write_recovery_point(self.fs.as_ref(), &self.dir, point);
            if let Err(error) = written {
                let _ = self.failed.set(self.dir.clone());
                return Err(error);
            }
        }
        Ok(())
    }

    /// The offset this sync makes durable.
    pub fn offset(&self) -> Offset {
        self.target.offset
    }
}

/// One partition's log. Appends take `&mut self` (one writer); reads take `&self`.
#[derive(Debug)]
pub struct Log {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    /// Oldest first; never empty; the last is active.
    pub(crate) segments: Vec<Segment>,
    pub(crate) durable: Watermark,
    pub(crate) last_sync: TimestampMs,
    pub(crate) fence: Option<Fence>,
    pub(crate) recovery: RecoveryReport,
    /// Every segment below this offset is fsynced whole; recorded in `recovery-point`.
    pub(crate) recovery_point: Offset,
    /// `clean-shutdown` is still on disk: the log opened after a clean close and nothing has
    /// been written since, so the marker still tells the truth. The first write removes it
    /// ([`Log::prepare_first_write`]); a close while it is set has nothing to do.
    pub(crate) clean_marker: bool,
    /// A replicated log's commit point: readers see nothing past it ([`Log::set_committed`]).
    pub(crate) committed: Option<Watermark>,
    /// When the last light append run was written (see [`RUNWAY_RUN_BYTES_MAX`]).
    pub(crate) last_light_run: Option<TimestampMs>,
}

impl Log {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// What recovery found when the log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Why the log refuses writes, if it does.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    pub fn log_start_offset(&self) -> Offset {
        self.segments[0].base_offset
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> Offset {
        self.active().next_offset
    }

    /// The end of what is durable.
    pub fn durable_offset(&self) -> Offset {
        self.durable.offset
    }

    /// The log end offset (as the wire calls it): the end of what readers may see, one past
    /// the last visible record; the durable end under [`FsyncPolicy::Always`], everything
    /// written otherwise.
    pub fn log_end_offset(&self) -> Offset {
        self.visible().offset
    }

    /// Bytes of all segment log files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size_bytes).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The segments, oldest first; the last is active.
    pub fn segments(&self) -> impl Iterator<Item = SegmentInfo> + '_ {
        self.segments.iter().map(|s| SegmentInfo {
            base_offset: s.base_offset,
            next_offset: s.next_offset,
            size_bytes: s.size_bytes,
            max_timestamp: s.max_timestamp,
        })
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("a log has at least one segment")
    }

    fn written(&self) -> Watermark {
        let active = self.active();
        Watermark {
            offset: active.next_offset,
            segment_base: active.base_offset,
            position: active.size_bytes,
        }
    }

    fn visible(&self) -> Watermark {
        let visible = match self.config.fsync {
            FsyncPolicy::Always => self.durable,
            FsyncPolicy::Interval { .. } | FsyncPolicy::Never => self.written(),
        };
        match self.committed {
            Some(committed) if committed.offset < visible.offset => committed,
            _ => visible,
        }
    }

    /// Appends one batch, encoded by [`batch::BatchBuilder`] or a client in the same format.
    /// The batch is checked (CRC and every record) and written as it is, but for the fields
    /// stamped at append (its base offset among them), which are written in a copy of its
    /// head: `batch` itself is not changed. It is durable only after a later sync covers it.
    pub fn append(&mut self, batch: &[u8], now: TimestampMs) -> Result<Appended, AppendError> {
        self.check_open(batch.len())?;
        let batch = CheckedBatch::check(batch)?;
        let mut results = self.append_many(&[batch], now);
        results.pop().expect("one result per batch")
    }

    /// Appends a group of checked batches with as few writes as possible: one vectored write
    /// per run of batches that fits in the active segment. Each batch gets its own result, in
    /// order; a batch past [`BATCH_BYTES_MAX`] is refused without stopping the others. When a
    /// write fails, nothing of its run is in the log, and every batch from that run on reports
    /// the error.
    pub fn append_many(
        &mut self,
        batches: &[CheckedBatch<&[u8]>],
        now: TimestampMs,
    ) -> Vec<Result<Appended, AppendError>> {
        if !batches.is_empty()
            && let Err(error) = self.prepare_first_write()
        {
            return batches.iter().map(|_| Err(error.clone())).collect();
        }
        let mut results: Vec<Option<Result<Appended, AppendError>>> =
            batches.iter().map(|_| None).collect();
        let mut run = Run { batches: Vec::new(), bytes: 0 };
        let mut next = self.next_offset();
        let mut failure: Option<AppendError> = None;
        for (i, batch) in batches.iter().enumerate() {
            if let Some(error) = &failure {
                results[i] = Some(Err(error.clone()));
                continue;
            }
            let bytes = batch.bytes();
            if let Err(error) = self.check_open(bytes.len()) {
                results[i] = Some(Err(error));
                continue;
            }
            let stored_bytes = u64::from(batch.header().batch_bytes);
            let rolled = self.roll_due(run.bytes, stored_bytes, now);
            if rolled {
                let flushed = self.write_run(&mut run, batches, &mut results, now);
                if let Err(error) = flushed.and_then(|()| self.roll()) {
                    failure = Some(error.clone());
                    results[i] = Some(Err(error));
                    continue;
                }
                next = self.next_offset();
            }
            let mut header = *batch.header();
            header.base_offset = next;
            header.durable_offset = self.durable.offset;
            let head = batch.stamped_head(next, header.durable_offset);
            next = header.next_offset();
            run.batches.push((i, header, rolled, head));
            run.bytes += stored_bytes;
        }
        if failure.is_none() {
            // A failure here is already recorded in the results of the run's batches.
            let _ = self.write_run(&mut run, batches, &mut results, now);
        }
        results.into_iter().map(|r| r.expect("every batch has a result")).collect()
    }

    /// Waits until what was appended is written to the log's files, not synced: an `always`
    /// log's largest appends return while their direct writes go on behind them
    /// (`direct`), which every sync waits for, and so need this only to be answered before
    /// a sync (`acks=leader`). A failed write fences the log: the batches it held were
    /// appended, and are lost.
    pub fn wait_for_writes(&mut self) -> Result<(), AppendError> {
        if let Some(fence) = &self.fence {
            return Err(AppendError::Fenced(fence.clone()));
        }
        let active = self.segments.last().expect("a log has at least one segment");
        let Some(writes) = active.file.writes() else { return Ok(()) };
        writes.wait().map_err(|error| {
            let fence = Fence::WriteFailed { path: active.path.clone(), error: Arc::new(error) };
            self.fence = Some(fence.clone());
            AppendError::Fenced(fence)
        })
    }

    /// Whether appending batches of `bytes` in all now would be one write into the page
    /// cache and copies into mapped indexes, and nothing else: no roll, no first write after
    /// a clean open, no index file to grow or map, no writeback hint. (The write itself may
    /// still wait, when the kernel throttles processes that dirty pages faster than the disk
    /// takes them.) A writer may run such an append where it would not run one that may sync
    /// or create files.
    pub fn append_is_light(&self, bytes: u64, now: TimestampMs) -> bool {
        let hints_writeback =
            self.config.fsync == FsyncPolicy::Always && bytes >= WRITEBACK_HINT_BYTES_MIN;
        // A segment writing directly closes that handle first, which waits for the writes
        // still running behind earlier appends (`direct`).
        let heavy = self.clean_marker
            || matches!(self.active().direct, Direct::Open(_))
            || self.roll_due(0, bytes, now)
            || hints_writeback
            || self.runway_due(self.active().size_bytes + bytes, bytes, now);
        !heavy && self.active().indexes_have_room(bytes)
    }

    /// Before the first write after a clean open: removes `clean-shutdown` and fsyncs the
    /// directory, so that a crash from here on is recovered as one, then lets the active
    /// segment's indexes grow again (a clean open leaves them trimmed, so its next open finds
    /// them as the close left them). Until then the
    /// marker vouches for the log exactly as at the close: an open of many idle logs, and their
    /// next close, write nothing.
    ///
    /// A failed removal changes nothing and is the append's error; a failed fsync of the
    /// directory fences the log (the marker may or may not be gone: it is never retried).
    fn prepare_first_write(&mut self) -> Result<(), AppendError> {
        if !self.clean_marker {
            return Ok(());
        }
        if let Some(fence) = &self.fence {
            return Err(AppendError::Fenced(fence.clone()));
        }
        let marker = self.dir.join(CLEAN_SHUTDOWN_FILE);
        match self.fs.remove_file(&marker) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(AppendError::Io { path: marker, source: Arc::new(error) });
            }
        }
        if let Err(error) = self.fs.sync_dir(&self.dir) {
            let fence = Fence::SyncFailed { path: self.dir.clone(), error: Arc::new(error) };
            self.fence = Some(fence.clone());
            return Err(AppendError::Fenced(fence));
        }
        self.clean_marker = false;
        let capacity = self.config.index_capacity();
        let active = self.segments.last_mut().expect("a log has at least one segment");
        active.offset_index.0.activate(capacity);
        active.time_index.0.activate(capacity);
        Ok(())
    }

    /// Refuses an append to a fenced log, or of a batch past [`BATCH_BYTES_MAX`].
    fn check_open(&self, batch_bytes: usize) -> Result<(), AppendError> {
        if let Some(fence) = &self.fence {
            return Err(AppendError::Fenced(fence.clone()));
        }
        if batch_bytes > BATCH_BYTES_MAX as usize {
            return Err(AppendError::BatchTooLarge {
                bytes: batch_bytes,
                bytes_max: BATCH_BYTES_MAX,
            });
        }
        Ok(())
    }

    /// Whether the active segment must roll before `incoming_bytes` more, given `run_bytes`
    /// already queued for it: it is not empty, and it would grow past its size or is too old.
    fn roll_due(&self, run_bytes: u64, incoming_bytes: u64, now: TimestampMs) -> bool {
        let active = self.active();
        let size = active.size_bytes + run_bytes;
        if size == 0 {
            return false;
        }
        let full = size + incoming_bytes > self.config.segment_bytes;
        let old = match (self.config.segment_ms, active.first_append) {
            (Some(limit), Some(first)) => now.0.saturating_sub(first.0) >= limit as i64,
            _ => false,
        };
        full || old || active.holds_v1
    }

    /// Writes a run of stamped batches to the active segment with one vectored write and
    /// records each one's result.
    fn write_run(
        &mut self,
        run: &mut Run,
        batches: &[CheckedBatch<&[u8]>],
        results: &mut [Option<Result<Appended, AppendError>>],
        now: TimestampMs,
    ) -> Result<(), AppendError> {
        if run.batches.is_empty() {
            return Ok(());
        }
        // Each batch goes out as its stamped head, then its own bytes after the head.
        let bufs: Vec<&[u8]> = run
            .batches
            .iter()
            .flat_map(|(i, _, _, head)| [&head[..], &batches[*i].bytes()[STAMPED_TAIL_FROM..]])
            .collect();
        let headers: Vec<BatchHeader> = run.batches.iter().map(|(_, h, ..)| *h).collect();
        // An fsync `always` log writes heavy runs past the page cache where it can
        // (`crate::direct`): each is synced at once, so caching it saves nothing.
        let always = self.config.fsync == FsyncPolicy::Always;
        let direct = (always && self.config.direct_writes && crate::direct::wanted(run.bytes))
            .then_some((self.fs.as_ref(), self.config.segment_bytes));
        let active = self.segments.last_mut().expect("a log has at least one segment");
        let start = active.size_bytes;
        let outcome = match active.append_run(&bufs, &headers, now, direct) {
            Ok(()) => {
                let end = active.size_bytes;
                if always
                    && !matches!(active.direct, Direct::Open(_))
                    && end - start >= WRITEBACK_HINT_BYTES_MIN
                {
                    // Its fsync follows at once: start the disk on its whole pages now (the
                    // last, partial page is written again by the next append).
                    let from = start / PAGE_BYTES * PAGE_BYTES;
                    if let Ok(file) = active.file.get() {
                        file.start_writeback(from, end / PAGE_BYTES * PAGE_BYTES - from);
                    }
                }
                self.keep_runway(end - start, now);
                Ok(())
            }
            Err(SegmentWriteError::Clean(source)) if is_no_space(&source) => {
                Err(AppendError::NoSpace { path: active.path.clone(), source: Arc::new(source) })
            }
            Err(SegmentWriteError::Clean(source)) => {
                Err(AppendError::Io { path: active.path.clone(), source: Arc::new(source) })
            }
            Err(SegmentWriteError::Dirty(error)) => {
                let fence =
                    Fence::WriteFailed { path: active.path.clone(), error: Arc::new(error) };
                self.fence = Some(fence.clone());
                Err(AppendError::Fenced(fence))
            }
        };
        for (i, header, rolled, _) in run.batches.drain(..) {
            results[i] = Some(match &outcome {
                Ok(()) => Ok(Appended {
                    base_offset: header.base_offset,
                    last_offset: header.last_offset(),
                    rolled,
                }),
                Err(error) => Err(error.clone()),
            });
        }
        run.bytes = 0;
        outcome
    }

    /// Whether an append run of `run_bytes` now, ending at `end` in the active segment,
    /// extends the segment's runway (see [`RUNWAY_BYTES`]): on an `always` log, a light run
    /// that follows another within [`RUNWAY_APPENDS_WITHIN_MS`], with less than a light run's
    /// worth of zeros left past it, in a segment with room for more.
    fn runway_due(&self, end: u64, run_bytes: u64, now: TimestampMs) -> bool {
        let active = self.active();
        self.config.fsync == FsyncPolicy::Always
            && run_bytes <= RUNWAY_RUN_BYTES_MAX
            && self.last_light_run.is_some_and(|last| now.0 - last.0 <= RUNWAY_APPENDS_WITHIN_MS)
            && active.runway_end < end + RUNWAY_RUN_BYTES_MAX
            && end + RUNWAY_RUN_BYTES_MAX < self.config.segment_bytes
    }

    /// After a run of `run_bytes` was written: extends the active segment's runway if it is
    /// due. A failed write of zeros costs the runway, not the append (its zeros are cut as
    /// any others).
    fn keep_runway(&mut self, run_bytes: u64, now: TimestampMs) {
        let due = self.runway_due(self.active().size_bytes, run_bytes, now);
        if run_bytes <= RUNWAY_RUN_BYTES_MAX {
            self.last_light_run = Some(now);
        }
        if !due {
            return;
        }
        let segment_bytes = self.config.segment_bytes;
        let active = self.segments.last_mut().expect("a log has at least one segment");
        let end = (active.size_bytes + RUNWAY_BYTES).min(segment_bytes);
        if let Err(error) = active.extend_runway(end) {
            tracing::debug!(path = %active.path.display(), %error, "writing zeros ahead of the log's end failed");
        }
    }

    /// Seals the active segment and starts a new one (appends do this by themselves when the
    /// segment is full or old; an empty active segment is left as it is).
    ///
    /// Order: (1) seal the active segment: cut its runway, fsync its log (`always` logs only;
    /// others leave it to the next sync), trim and fsync its indexes; (2) create the new log
    /// file and its preallocated indexes; (3) if every sealed segment is durable, stage the
    /// new recovery point; (4) fsync the directory. A failed fsync fences the log. A failure to create the
    /// new files, or to write the recovery point's temporary file (before anything of it is
    /// synced), removes them and leaves the sealed segment active, so the next append tries
    /// again: a full disk refuses the append without fencing the log.
    pub fn roll(&mut self) -> Result<(), AppendError> {
        if let Some(fence) = &self.fence {
            return Err(AppendError::Fenced(fence.clone()));
        }
        if self.active().is_empty() {
            return Ok(());
        }
        self.prepare_first_write()?;
        let fs = self.fs.clone();
        let capacity = self.config.index_capacity();
        let data = match self.config.fsync {
            FsyncPolicy::Always => SealData::Sync,
            FsyncPolicy::Interval { .. } | FsyncPolicy::Never => SealData::Defer,
        };
        let active = self.segments.last_mut().expect("a log has at least one segment");
        if let Err(error) = active.seal(data, &fs) {
            let fence = Fence::SyncFailed { path: active.path.clone(), error: Arc::new(error) };
            self.fence = Some(fence.clone());
            return Err(AppendError::Fenced(fence));
        }
        let sealed = Watermark {
            offset: active.next_offset,
            segment_base: active.base_offset,
            position: active.size_bytes,
        };
        let base = active.next_offset;
        let dir = self.dir.clone();
        let give_up = |path: PathBuf, source: io::Error| {
            for path in crate::recovery::segment_paths(&dir, base) {
                let _ = fs.remove_file(&path);
            }
            let source = Arc::new(source);
            if is_no_space(&source) {
                AppendError::NoSpace { path, source }
            } else {
                AppendError::Io { path, source }
            }
        };
        let log_path = crate::segment::log_path(&self.dir, base);
        let segment = match Segment::create(&fs, &self.dir, base, capacity) {
            Ok(segment) => segment,
            Err(source) => return Err(give_up(log_path, source)),
        };
        // With every sealed segment durable, the new segment is the recovery point; the
        // directory sync below makes the rename durable along with the new files.
        let all_sealed_durable = self.segments.iter().all(|s| s.data_durable);
        let temporary = if all_sealed_durable {
            match crate::recovery::write_recovery_point_temporary(fs.as_ref(), &self.dir, base) {
                Ok(temporary) => Some(temporary),
                Err(source) => {
                    drop(segment);
                    return Err(give_up(log_path, source));
                }
            }
        } else {
            None
        };
        let staged = match temporary {
            Some(temporary) => temporary.commit(fs.as_ref()).map(|()| true),
            None => Ok(false),
        };
        let staged = match staged.and_then(|staged| fs.sync_dir(&self.dir).map(|()| staged)) {
            Ok(staged) => staged,
            Err(error) => {
                let fence = Fence::SyncFailed { path: self.dir.clone(), error: Arc::new(error) };
                self.fence = Some(fence.clone());
                return Err(AppendError::Fenced(fence));
            }
        };
        self.segments.push(segment);
        if staged {
            self.recovery_point = base;
        }
        if data == SealData::Sync && sealed.offset > self.durable.offset {
            self.durable = sealed;
        }
        Ok(())
    }

    /// Prepares a sync of everything appended so far. Run the ticket without holding the
    /// log's lock, then pass its result to [`Log::finish_sync`]: appends made meanwhile are
    /// left for the next sync. This is group commit: one fsync covers every batch before it.
    /// A fenced log's ticket syncs nothing (a failed fsync is never retried), and
    /// [`Log::finish_sync`] returns the fence.
    pub fn begin_sync(&self) -> SyncTicket {
        let target = self.written();
        let (active, sealed) = self.segments.split_last().expect("a log has at least one segment");
        let fenced = self.fence.is_some();
        let sealed: Vec<&Segment> = sealed.iter().filter(|s| !fenced && !s.data_durable).collect();
        // A segment not known durable holds its file (`Segment::release_file`). The active
        // segment's direct writes may still be running: the ticket waits for them, not this
        // thread, which holds the log's lock.
        let held = |s: &Segment| (s.file.get_while_writing().ok(), s.path.clone());
        let mut files: Vec<(Option<Arc<dyn File>>, PathBuf)> =
            sealed.iter().map(|s| held(s)).collect();
        let mut writes = None;
        if !fenced && target.offset > self.durable.offset {
            files.push(held(active));
            writes = active.file.writes().map(|w| (w.clone(), w.handed()));
        }
        SyncTicket {
            files,
            writes,
            recovery_point: (!sealed.is_empty()).then_some(active.base_offset),
            sealed: sealed.iter().map(|s| s.base_offset).collect(),
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            target,
            failed: std::sync::OnceLock::new(),
        }
    }

    /// Records a sync's outcome and returns the new durable offset. A failed fsync fences
    /// the log: the failure is not retried and nothing it covered becomes durable.
    pub fn finish_sync(
        &mut self,
        ticket: SyncTicket,
        result: io::Result<()>,
        now: TimestampMs,
    ) -> Result<Offset, SyncError> {
        if let Some(fence) = &self.fence {
            return Err(SyncError::Fenced(fence.clone()));
        }
        if let Err(error) = result {
            let path = ticket.failed.get().cloned().unwrap_or_else(|| self.dir.clone());
            let fence = Fence::SyncFailed { path, error: Arc::new(error) };
            self.fence = Some(fence.clone());
            return Err(SyncError::Fenced(fence));
        }
        self.last_sync = now;
        let fs = self.fs.clone();
        for segment in &mut self.segments {
            if ticket.sealed.contains(&segment.base_offset) {
                segment.data_durable = true;
                segment.release_file(&fs, true);
            }
        }
        if let Some(point) = ticket.recovery_point {
            self.recovery_point = self.recovery_point.max(point);
        }
        if ticket.target.offset > self.durable.offset {
            self.durable = ticket.target;
        }
        Ok(self.durable.offset)
    }

    /// Syncs everything appended so far, holding `&mut self` throughout.
    pub fn sync(&mut self, now: TimestampMs) -> Result<Offset, SyncError> {
        let ticket = self.begin_sync();
        let result = ticket.run();
        self.finish_sync(ticket, result, now)
    }

    /// Whether a sync is due that the caller should run (in the background: see
    /// [`Log::begin_sync`]): on an [`FsyncPolicy::Interval`] log, when something is unsynced
    /// and the interval has passed; on an [`FsyncPolicy::Never`] log, when a sealed segment
    /// awaits its fsync (rolls leave it for later, so appends never wait for the disk) and
    /// [`NEVER_SEALED_SYNC_INTERVAL_MS`] has passed since the last sync. An
    /// [`FsyncPolicy::Always`] log syncs after every group and is never "due".
    pub fn sync_due(&self, now: TimestampMs) -> bool {
        let sealed_unsynced = self.segments.iter().rev().skip(1).any(|s| !s.data_durable);
        match self.config.fsync {
            FsyncPolicy::Always => false,
            FsyncPolicy::Interval { interval_ms } => {
                (sealed_unsynced || self.next_offset() > self.durable.offset)
                    && now.0.saturating_sub(self.last_sync.0) >= interval_ms as i64
            }
            FsyncPolicy::Never => {
                sealed_unsynced
                    && now.0.saturating_sub(self.last_sync.0)
                        >= NEVER_SEALED_SYNC_INTERVAL_MS as i64
            }
        }
    }

    /// How far readers may read in `segment`, in bytes.
    fn readable_bytes(&self, segment: &Segment) -> u64 {
        readable_bytes(segment, self.visible())
    }

    fn segment_for(&self, offset: Offset) -> &Segment {
        let i = self.segments.partition_point(|s| s.base_offset <= offset);
        &self.segments[i.saturating_sub(1)]
    }

    /// Reads whole batches starting with the one that holds `offset`: as many as fit in
    /// `bytes_max` (at least one, so a reader always progresses), from one segment, never past
    /// the visible end. Reading at the visible end returns no bytes.
    ///
    /// Every batch returned is checked (length, CRC, offsets following on): a read stops
    /// before a damaged batch, so the reader gets every intact batch up to it, and the read
    /// that starts at the damaged batch fails with [`ReadError::Damaged`].
    pub fn read(&self, offset: Offset, bytes_max: u32) -> Result<ReadBatches, ReadError> {
        self.read_until(offset, bytes_max, self.visible())
    }

    /// [`Log::read`] up to `bound` rather than the visible end.
    fn read_until(
        &self,
        offset: Offset,
        bytes_max: u32,
        bound: Watermark,
    ) -> Result<ReadBatches, ReadError> {
        let log_start = self.log_start_offset();
        let log_end = bound.offset;
        if offset < log_start || offset > log_end {
            return Err(ReadError::OffsetOutOfRange { requested: offset, log_start, log_end });
        }
        let empty = ReadBatches {
            bytes: Bytes::new(),
            next_offset: offset,
            log_start_offset: log_start,
            log_end_offset: log_end,
        };
        if offset == log_end {
            return Ok(empty);
        }
        let segment = self.segment_for(offset);
        let end = readable_bytes(segment, bound);
        let failed = |failure: ReadFailure| failure.at(&segment.path, offset);
        let Some(position) = segment.find(offset, end).map_err(failed)? else {
            return Ok(empty);
        };
        let bytes = segment.read(position, end, bytes_max.min(READ_BYTES_MAX)).map_err(failed)?;
        let (intact_bytes, next_offset) =
            intact_batches(&bytes, offset).map_err(|(at, reason)| {
                failed(ReadFailure::Damaged { position: position + at, reason })
            })?;
        Ok(ReadBatches {
            bytes: bytes.slice(..intact_bytes),
            next_offset,
            log_start_offset: log_start,
            log_end_offset: log_end,
        })
    }

    /// The first visible offset whose record timestamp is at or after `timestamp`, or `None`
    /// when every visible record is older.
    pub fn offset_for_timestamp(
        &self,
        timestamp: TimestampMs,
    ) -> Result<Option<Offset>, ReadError> {
        for segment in &self.segments {
            if segment.max_timestamp.is_none_or(|max| max < timestamp) {
                continue;
            }
            let end = self.readable_bytes(segment);
            let start = segment
                .time_index
                .last_before(timestamp.0)
                .and_then(|e| segment.offset_index.floor(e.relative_offset))
                .map_or(0, |e| u64::from(e.position));
            let mut found = None;
            // The first offset a failure keeps from the caller: after the last batch walked.
            let mut reached = segment.base_offset;
            segment
                .walk(start, end, |batch| {
                    if batch.max_timestamp >= timestamp {
                        found = Some((batch.position, batch.batch_bytes, batch.base_offset));
                        false
                    } else {
                        reached = Offset(batch.base_offset.0 + u64::from(batch.record_count));
                        true
                    }
                })
                .map_err(|failure| failure.at(&segment.path, reached))?;
            let Some((position, batch_bytes, base_offset)) = found else {
                continue;
            };
            let failed = |failure: ReadFailure| failure.at(&segment.path, base_offset);
            let bytes = segment.read(position, end, batch_bytes).map_err(failed)?;
            let damaged = |error| failed(ReadFailure::damaged(position, error));
            let view = BatchView::new(&bytes).map_err(damaged)?;
            for record in view.records().iter() {
                let record = record.map_err(damaged)?;
                if record.timestamp >= timestamp {
                    return Ok(Some(record.offset));
                }
            }
        }
        Ok(None)
    }

    /// Changes the retention limits in force ([`Log::retention_end`] reads them); the other
    /// settings change only with a reopen.
    pub fn set_retention(&mut self, retention_ms: Option<u64>, retention_bytes: Option<u64>) {
        self.config.retention_ms = retention_ms;
        self.config.retention_bytes = retention_bytes;
    }

    /// Where retention would move the log start: the base of the oldest segment it keeps,
    /// when it would delete any. Only whole sealed segments below `bound` count (a replicated
    /// log passes its commit point; otherwise [`Log::next_offset`]).
    pub fn retention_end(&self, now: TimestampMs, bound: Offset) -> Option<Offset> {
        let mut total = self.size_bytes();
        let mut end = None;
        for pair in self.segments.windows(2) {
            let (oldest, next) = (&pair[0], &pair[1]);
            if next.base_offset > bound {
                break;
            }
            let expired = match (self.config.retention_ms, oldest.max_timestamp) {
                (Some(limit), Some(max)) => max.0 < now.0.saturating_sub(limit as i64),
                _ => false,
            };
            let oversize =
                self.config.retention_bytes.is_some_and(|limit| total - oldest.size_bytes >= limit);
            if !(expired || oversize) {
                break;
            }
            total -= oldest.size_bytes;
            end = Some(next.base_offset);
        }
        end
    }

    /// Deletes whole sealed segments past the retention limits, oldest first, and returns how
    /// many ([`Log::retention_end`], then [`Log::remove_segments_before`]).
    pub fn apply_retention(&mut self, now: TimestampMs) -> Result<usize, RetentionError> {
        match self.retention_end(now, self.next_offset()) {
            Some(end) => self.remove_segments_before(end),
            None => Ok(0),
        }
    }

    /// Deletes the oldest segments whose every batch lies below `end`, and returns how many.
    /// The active segment is never deleted.
    ///
    /// Order, per segment: (1) drop it from the in-memory list, so the log start offset moves
    /// past it and readers of it get out-of-range; (2) delete its log file, then its indexes;
    /// (3) fsync the directory, before the next segment, so a crash cannot leave a hole.
    pub fn remove_segments_before(&mut self, end: Offset) -> Result<usize, RetentionError> {
        let mut deleted = 0;
        while self.segments.len() > 1 && self.segments[1].base_offset <= end {
            let segment = self.segments.remove(0);
            let base = segment.base_offset;
            drop(segment);
            for path in crate::recovery::segment_paths(&self.dir, base) {
                match self.fs.remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(RetentionError::Io { path, source }),
                }
            }
            self.fs
                .sync_dir(&self.dir)
                .map_err(|source| RetentionError::Io { path: self.dir.clone(), source })?;
            deleted += 1;
        }
        // A sealed segment of an interval or never log may go before it was ever synced: what
        // it held is gone by retention, so the durable end is at least the new log start, and
        // so is a replicated log's commit point.
        let start = self.log_start_offset();
        let at_start = Watermark { offset: start, segment_base: start, position: 0 };
        if self.durable.offset < start {
            self.durable = at_start;
        }
        if let Some(committed) = &mut self.committed
            && committed.offset < start
        {
            *committed = at_start;
        }
        Ok(deleted)
    }

    /// Closes the log cleanly so the next open needs no scan.
    ///
    /// Order: (1) sync (every sealed segment not yet synced, then the active one), and cut
    /// and fsync the active segment's runway if it has one; (2) trim and fsync both active
    /// indexes; (3) write the next offset to `clean-shutdown` with
    /// [`crate::fs::write_atomically`] (`clean-shutdown.tmp`, fsync, rename, fsync of the
    /// directory). A fenced log writes nothing and reports its fence,
    /// so the next open checks everything again. A log not written since a clean open still
    /// has its marker, true as it stands: nothing is written.
    pub fn close(mut self) -> Result<(), CloseError> {
        if let Some(fence) = self.fence.take() {
            return Err(CloseError::Fenced(fence));
        }
        if self.clean_marker {
            return Ok(());
        }
        let dir = self.dir.clone();
        let fs = self.fs.clone();
        let next_offset = self.next_offset();
        let now = self.last_sync;
        if let Err(SyncError::Fenced(fence)) = self.sync(now) {
            return Err(CloseError::Fenced(fence));
        }
        let active = self.segments.last_mut().expect("a log has at least one segment");
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CloseError::Io { path, source }
        };
        // The next open trusts the file's length: no zeros may follow the batches.
        if active.runway_end > active.size_bytes {
            active
                .cut_runway()
                .and_then(|()| active.file.get()?.sync_data())
                .map_err(at(&active.path))?;
        }
        active.offset_index.0.trim_and_sync().map_err(at(active.offset_index.0.path()))?;
        active.time_index.0.trim_and_sync().map_err(at(active.time_index.0.path()))?;
        let marker = next_offset.0.to_string();
        crate::fs::write_atomically(fs.as_ref(), &dir, CLEAN_SHUTDOWN_FILE, marker.as_bytes())
            .map_err(at(&dir.join(CLEAN_SHUTDOWN_FILE)))
    }

    /// Deletes every file of the log and its directory, with
    /// [`crate::fs::remove_dir_all_durably`]: remove each segment's log file and indexes and
    /// any other file in the directory, remove the directory, fsync its parent.
    pub fn delete(self) -> Result<(), DeleteError> {
        let Log { fs, dir, segments, .. } = self;
        drop(segments);
        crate::fs::remove_dir_all_durably(fs.as_ref(), &dir)
            .map_err(|source| DeleteError { path: dir, source })
    }
}

/// How far a reader bounded by `bound` may read in `segment`, in bytes.
fn readable_bytes(segment: &Segment, bound: Watermark) -> u64 {
    if segment.base_offset < bound.segment_base {
        segment.size_bytes
    } else if segment.base_offset == bound.segment_base {
        bound.position
    } else {
        0
    }
}

/// How much of `bytes` (whole batches back to back, the first holding `offset`) is intact:
/// the bytes of the batches before the first that fails its check or does not continue the
/// offsets, and the offset after them. Fails when the first batch is damaged, with its
/// position in `bytes` (0) and why.
fn intact_batches(bytes: &[u8], offset: Offset) -> Result<(usize, Offset), (u64, String)> {
    let mut at = 0usize;
    let mut next: Option<Offset> = None;
    while at < bytes.len() {
        let header = match batch::check(&bytes[at..]) {
            Ok(header) => header,
            Err(error) if at == 0 => return Err((0, error.to_string())),
            Err(_) => break,
        };
        match next {
            None if header.base_offset > offset || header.next_offset() <= offset => {
                let reason = format!(
                    "it holds offsets {} to {}, where offset {offset} was expected",
                    header.base_offset,
                    header.last_offset()
                );
                return Err((0, reason));
            }
            Some(expected) if header.base_offset != expected => break,
            _ => {}
        }
        at += header.batch_bytes as usize;
        next = Some(header.next_offset());
    }
    Ok((at, next.unwrap_or(offset)))
}
