//! One segment: a log file of whole batches and its two indexes.
//!
//! A segment is *active* (the last of a log, appended to, its indexes preallocated) or
//! *sealed* (immutable: its log and trimmed indexes were fsynced when it was sealed).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, BATCH_HEADER_BYTES, BATCH_PREFIX_BYTES, BatchError, BatchHeader, field};
use crate::direct::DirectTail;
use crate::error::ReadError;
use crate::fs::{File, FileSystem, OpenMode};
use crate::index::{
    IndexFile, OFFSET_ENTRY_BYTES, OffsetEntry, OffsetIndex, TIME_ENTRY_BYTES, TimeEntry, TimeIndex,
};
use crate::limits::INDEX_INTERVAL_BYTES;
use crate::segment_file::SegmentFile;
use crate::{Offset, TimestampMs};

/// Bytes read at a time when walking batch headers.
const WALK_CHUNK_BYTES: usize = 16 * 1024;

/// The unverified start of a batch header, as a walk sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchPrefix {
    pub(crate) position: u64,
    pub(crate) base_offset: Offset,
    pub(crate) batch_bytes: u32,
    pub(crate) record_count: u32,
    pub(crate) max_timestamp: TimestampMs,
}

pub(crate) fn log_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{:020}.log", base_offset.0))
}
pub(crate) fn offset_index_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{:020}.index", base_offset.0))
}
pub(crate) fn time_index_path(dir: &Path, base_offset: Offset) -> PathBuf {
    dir.join(format!("{:020}.timeindex", base_offset.0))
}

#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_offset: Offset,
    pub(crate) path: PathBuf,
    pub(crate) file: SegmentFile,
    pub(crate) offset_index: OffsetIndex,
    pub(crate) time_index: TimeIndex,
    /// Bytes of whole batches in the log file.
    pub(crate) size_bytes: u64,
    pub(crate) next_offset: Offset,
    /// The largest timestamp of any batch, `None` while empty.
    pub(crate) max_timestamp: Option<TimestampMs>,
    /// When the segment's first batch was appended (server time), for rolling by age.
    pub(crate) first_append: Option<TimestampMs>,
    /// Position of the last indexed batch (0, implied, when none).
    pub(crate) last_indexed_position: u64,
    /// Whether the whole log file is known to be fsynced (a sealed segment of an `interval` or
    /// `never` log is sealed first and synced later).
    pub(crate) data_durable: bool,
    /// Holds batches of format version 1, which is no longer appended: the next append rolls
    /// to a new segment first, so a segment holds one version.
    pub(crate) holds_v1: bool,
    /// Where the zeros this process wrote past the batches end (see
    /// [`crate::limits::RUNWAY_BYTES`]); none are left when it is not past `size_bytes`.
    /// Direct writes leave zeros to the next block boundary too.
    pub(crate) runway_end: u64,
    /// How appends reach the log file: see [`Direct`].
    pub(crate) direct: Direct,
}

/// Whether an active segment's heavy appends are direct writes (`crate::direct`).
#[derive(Debug, Default)]
pub(crate) enum Direct {
    /// No handle: the next heavy append opens one (so a segment holds a second open file
    /// only while it is written heavily).
    #[default]
    Unopened,
    Open(DirectTail),
    /// The file system takes none: every append is buffered.
    Refused,
}

/// What a full scan of a segment's log file found.
#[derive(Debug)]
pub(crate) struct ScanOutcome {
    /// Bytes of valid, contiguous batches from the start.
    pub(crate) valid_bytes: u64,
    pub(crate) next_offset: Offset,
    pub(crate) max_timestamp: Option<TimestampMs>,
    pub(crate) first_batch_max_timestamp: Option<TimestampMs>,
    /// Index entries for the valid part, in the order appends would have written them.
    pub(crate) offset_entries: Vec<OffsetEntry>,
    pub(crate) time_entries: Vec<TimeEntry>,
    /// Why the scan stopped before the end of the file, if it did.
    pub(crate) stopped: Option<ScanStop>,
}

#[derive(Debug)]
pub(crate) struct ScanStop {
    pub(crate) reason: String,
    /// The largest durable offset stamped in a valid batch after the invalid bytes, if any
    /// valid batch follows them. When it is past where the valid part ends, the invalid bytes
    /// were fsynced once: damage, not a torn tail.
    pub(crate) durable_after: Option<Offset>,
}

/// Tracks what appends add to the indexes, shared by appends and scans so both write the
/// same entries.
#[derive(Debug, Default)]
pub(crate) struct IndexCursor {
    pub(crate) last_indexed_position: u64,
    pub(crate) max_timestamp: Option<TimestampMs>,
    pub(crate) last_time_entry: Option<i64>,
}

impl IndexCursor {
    /// The entries due for a batch at `position` with `header`, in a segment at `base`.
    pub(crate) fn on_batch(
        &mut self,
        base: Offset,
        position: u64,
        header: &BatchHeader,
    ) -> (Option<OffsetEntry>, Option<TimeEntry>) {
        let relative_offset = (header.base_offset.0 - base.0) as u32;
        self.max_timestamp =
            Some(self.max_timestamp.map_or(header.max_timestamp, |m| m.max(header.max_timestamp)));
        if position < self.last_indexed_position + u64::from(INDEX_INTERVAL_BYTES) {
            return (None, None);
        }
        self.last_indexed_position = position;
        let offset_entry = OffsetEntry { relative_offset, position: position as u32 };
        let max = self.max_timestamp.expect("set above").0;
        let time_entry = if self.last_time_entry.is_none_or(|t| max > t) {
            self.last_time_entry = Some(max);
            Some(TimeEntry { timestamp_ms: max, relative_offset })
        } else {
            None
        };
        (Some(offset_entry), time_entry)
    }
}

impl Segment {
    /// Creates an empty active segment. The caller syncs the directory.
    pub(crate) fn create(
        fs: &Arc<dyn FileSystem>,
        dir: &Path,
        base_offset: Offset,
        index_capacity: usize,
    ) -> io::Result<Segment> {
        let path = log_path(dir, base_offset);
        let file = fs.open(&path, OpenMode::CreateNew)?;
        let offset_index = OffsetIndex(IndexFile::create(
            fs,
            &offset_index_path(dir, base_offset),
            OFFSET_ENTRY_BYTES,
            index_capacity,
        )?);
        let time_index = TimeIndex(IndexFile::create(
            fs,
            &time_index_path(dir, base_offset),
            TIME_ENTRY_BYTES,
            index_capacity,
        )?);
        Ok(Segment {
            base_offset,
            path,
            file: SegmentFile::open(file),
            offset_index,
            time_index,
            size_bytes: 0,
            next_offset: base_offset,
            max_timestamp: None,
            first_append: None,
            last_indexed_position: 0,
            data_durable: false,
            holds_v1: false,
            runway_end: 0,
            direct: Direct::Unopened,
        })
    }

    /// Whether `bytes` more of batches need no index room beyond what is mapped already.
    pub(crate) fn indexes_have_room(&self, bytes: u64) -> bool {
        let end = self.size_bytes + bytes;
        let interval = u64::from(INDEX_INTERVAL_BYTES);
        // At most one entry per interval, and one for a batch that starts before the first
        // interval's end and reaches past it.
        let entries = if end < self.last_indexed_position + interval {
            0
        } else {
            (bytes / interval + 1) as usize
        };
        self.offset_index.0.has_mapped_room(entries) && self.time_index.0.has_mapped_room(entries)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// The index cursor as appends left it, for continuing to append.
    fn cursor(&self) -> IndexCursor {
        IndexCursor {
            last_indexed_position: self.last_indexed_position,
            max_timestamp: self.max_timestamp,
            last_time_entry: self.time_index.last().map(|e| e.timestamp_ms),
        }
    }

    /// Writes checked, stamped batches at the end of the log and indexes them: `bufs` are
    /// their bytes in order, in as many pieces as the caller likes; `headers` say where each
    /// batch ends. With `direct` (the log's file system, and the segment size blocks reserved
    /// ahead of direct writes stop at), the write is direct where that file system takes
    /// direct writes; otherwise one vectored write through the page cache (and a handle for
    /// direct writes is closed).
    /// On a write error the log file is cut back to its previous length, so no partial batch
    /// remains; if that fails too, the second error is returned and the caller must fence the
    /// log.
    pub(crate) fn append_run(
        &mut self,
        bufs: &[&[u8]],
        headers: &[BatchHeader],
        now: TimestampMs,
        direct: Option<(&dyn FileSystem, u64)>,
    ) -> Result<(), SegmentWriteError> {
        debug_assert_eq!(
            bufs.iter().map(|b| b.len() as u64).sum::<u64>(),
            headers.iter().map(|h| u64::from(h.batch_bytes)).sum::<u64>()
        );
        let start = self.size_bytes;
        // A direct write that failed lost batches appended before: the log must fence.
        let writes = self.file.writes().cloned().unwrap_or_default();
        writes.check().map_err(SegmentWriteError::Dirty)?;
        let file = self.file.get_while_writing().map_err(SegmentWriteError::Clean)?;
        match (direct, &self.direct) {
            (Some((fs, _)), Direct::Unopened) => {
                let handle = fs.open_direct(&self.path).map_err(SegmentWriteError::Clean)?;
                self.direct = match handle {
                    Some(handle) => Direct::Open(DirectTail::new(handle, writes.clone())),
                    None => Direct::Refused,
                };
            }
            // A light run: the handle is not kept for the next heavy one, and the buffered
            // write waits until the direct ones are over (it rewrites their last block).
            (None, Direct::Open(_)) => {
                self.direct = Direct::Unopened;
                writes.wait().map_err(SegmentWriteError::Dirty)?;
            }
            _ => {}
        }
        let written = match (&mut self.direct, direct) {
            (Direct::Open(tail), Some((_, reserve_to))) => {
                match tail.write(file.as_ref(), bufs, start, reserve_to) {
                    Ok(end) => {
                        self.runway_end = self.runway_end.max(end);
                        Ok(())
                    }
                    // A file system whose blocks are larger than the writes are aligned to takes
                    // the handle but not the write: this segment's appends are buffered.
                    Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                        self.direct = Direct::Refused;
                        file.set_len(start).and_then(|()| file.write_all_vectored_at(bufs, start))
                    }
                    Err(error) => Err(error),
                }
            }
            _ => file.write_all_vectored_at(bufs, start),
        };
        if let Err(error) = written {
            if let Err(failed) = writes.check() {
                return Err(SegmentWriteError::Dirty(failed));
            }
            return match file.set_len(start) {
                Ok(()) => {
                    self.runway_end = 0;
                    Err(SegmentWriteError::Clean(error))
                }
                Err(cleanup) => Err(SegmentWriteError::Dirty(cleanup)),
            };
        }
        let mut cursor = self.cursor();
        for header in headers {
            assert_eq!(header.base_offset, self.next_offset, "offsets are assigned in order");
            let (offset_entry, time_entry) =
                cursor.on_batch(self.base_offset, self.size_bytes, header);
            if let Some(e) = offset_entry {
                self.offset_index.push(e);
            }
            if let Some(e) = time_entry {
                self.time_index.push(e);
            }
            self.size_bytes += u64::from(header.batch_bytes);
            self.next_offset = header.next_offset();
        }
        self.last_indexed_position = cursor.last_indexed_position;
        self.max_timestamp = cursor.max_timestamp;
        self.first_append.get_or_insert(now);
        Ok(())
    }

    /// Seals the segment: fsync the log if `data` says so, trim and fsync both indexes. Once
    /// its data is synced, it no longer holds its file ([`Segment::release_file`]).
    pub(crate) fn seal(&mut self, data: SealData, fs: &Arc<dyn FileSystem>) -> io::Result<()> {
        // Its direct writes end here (the cut below waits for them to be over).
        self.direct = Direct::Unopened;
        self.cut_runway()?;
        if data == SealData::Sync {
            self.file.get()?.sync_data()?;
            self.data_durable = true;
        }
        self.offset_index.0.trim_and_sync()?;
        self.time_index.0.trim_and_sync()?;
        if self.data_durable {
            self.release_file(fs, true);
        }
        Ok(())
    }

    /// Writes zeros past the batches, up to `end` (see [`crate::limits::RUNWAY_BYTES`]), with
    /// one write; appends then overwrite them. Zeros already written are not written again.
    pub(crate) fn extend_runway(&mut self, end: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let from = self.size_bytes.max(self.runway_end);
        if end <= from {
            return Ok(());
        }
        let file = self.file.get()?;
        // Set first: zeros a failed write left behind are cut too.
        self.runway_end = end;
        let whole = ((end - from) / ZEROS.len() as u64) as usize;
        let rest = ((end - from) % ZEROS.len() as u64) as usize;
        let mut bufs: Vec<&[u8]> = vec![&ZEROS[..]; whole];
        if rest > 0 {
            bufs.push(&ZEROS[..rest]);
        }
        file.write_all_vectored_at(&bufs, from)
    }

    /// Cuts the zeros [`Segment::extend_runway`] left past the batches; the caller syncs.
    pub(crate) fn cut_runway(&mut self) -> io::Result<()> {
        if self.runway_end > self.size_bytes {
            self.file.get()?.set_len(self.size_bytes)?;
        }
        self.runway_end = 0;
        Ok(())
    }

    /// A sealed segment whose data is durable gives up its open file: reads open it through
    /// the process's cache ([`crate::segment_file`]). One not yet synced keeps it, so the
    /// fsync that follows goes through the descriptor the writes did, and sees any
    /// writeback error they caused.
    /// `cached`: keep the file open in the cache for now (see [`SegmentFile::seal`]).
    pub(crate) fn release_file(&mut self, fs: &Arc<dyn FileSystem>, cached: bool) {
        debug_assert!(self.data_durable);
        self.direct = Direct::Unopened;
        self.file.seal(fs, self.path.clone(), cached);
    }

    /// Whether the segment's first batch is of format version 1.
    pub(crate) fn first_batch_is_v1(&self) -> io::Result<bool> {
        if self.size_bytes <= field::VERSION as u64 {
            return Ok(false);
        }
        let mut head = [0u8; field::VERSION + 1];
        self.file.get()?.read_exact_at(&mut head, 0)?;
        Ok(head[field::VERSION] == batch::BATCH_VERSION)
    }

    /// Walks batch headers from `position` up to `end`, calling `visit` with each until it
    /// returns false. Only each batch's head is looked at ([`batch::head_fields`]), and
    /// only what it shows is verified ([`batch::check_head`]: the length, the magic byte and
    /// version, the stamp CRC that covers the base offset).
    pub(crate) fn walk(
        &self,
        mut position: u64,
        end: u64,
        mut visit: impl FnMut(&BatchPrefix) -> bool,
    ) -> Result<(), ReadFailure> {
        let mut chunk = vec![0u8; WALK_CHUNK_BYTES];
        let file = self.file.get_to_read(end)?;
        while position < end {
            let n = (end - position).min(WALK_CHUNK_BYTES as u64) as usize;
            file.read_exact_at(&mut chunk[..n], position)?;
            let mut at = 0usize;
            while at < n {
                let fields = match batch::head_fields(&chunk[at..n]) {
                    Ok(fields) => fields,
                    // The next head runs past this chunk: read on from it.
                    Err(BatchError::Truncated { .. }) if at > 0 => break,
                    Err(error) => return Err(ReadFailure::damaged(position + at as u64, error)),
                };
                let prefix = BatchPrefix {
                    position: position + at as u64,
                    base_offset: fields.base_offset,
                    batch_bytes: fields.batch_bytes,
                    record_count: fields.record_count,
                    max_timestamp: fields.max_timestamp,
                };
                if !visit(&prefix) {
                    return Ok(());
                }
                at += fields.batch_bytes as usize;
            }
            // On from the first batch this chunk did not show whole (its head or all of it).
            position += at as u64;
        }
        Ok(())
    }

    /// The position of the batch that holds `offset`, if one before `end` may: the first
    /// whose records reach past `offset`, or else the last that starts at or before it. The
    /// second case only arises when a batch's record count is damaged (the walk does not
    /// check it), and reading that batch then finds the damage, rather than skipping to the
    /// batch after it.
    pub(crate) fn find(&self, offset: Offset, end: u64) -> Result<Option<u64>, ReadFailure> {
        let relative = (offset.0 - self.base_offset.0) as u32;
        let start = self.offset_index.floor(relative).map_or(0, |e| u64::from(e.position));
        let mut found = None;
        let mut first_base = None;
        self.walk(start, end, |batch| {
            first_base.get_or_insert(batch.base_offset);
            if batch.base_offset > offset {
                return false;
            }
            found = Some(batch.position);
            batch.base_offset.0.saturating_add(u64::from(batch.record_count)) <= offset.0
        })?;
        match (found, first_base) {
            (None, Some(base)) => Err(ReadFailure::Damaged {
                position: start,
                reason: format!(
                    "the batch there starts at offset {base}, after offset {offset}: the segment or its offset index is damaged"
                ),
            }),
            (found, _) => Ok(found),
        }
    }

    /// Reads whole batches from `position`: as many as fit in `bytes_max`, but at least one,
    /// never past `end`. Whole as their length fields say: nothing else is checked, and a
    /// length that cannot be right ends the read before that batch (or, for the first one,
    /// is an error).
    pub(crate) fn read(
        &self,
        position: u64,
        end: u64,
        bytes_max: u32,
    ) -> Result<Bytes, ReadFailure> {
        let available = end.saturating_sub(position);
        if available == 0 {
            return Ok(Bytes::new());
        }
        let want = available.min(u64::from(bytes_max).max(BATCH_PREFIX_BYTES as u64)) as usize;
        let file = self.file.get_to_read(position + want as u64)?;
        let buf = file.read_shared_at(position, want)?;
        // Cut at the last whole batch.
        let mut at = 0usize;
        while at < want {
            if at > 0 && want - at < BATCH_PREFIX_BYTES {
                break;
            }
            let batch_bytes = match batch::peek_prefix(&buf[at..]) {
                Ok((_, batch_bytes)) => batch_bytes,
                Err(error) if at == 0 => return Err(ReadFailure::damaged(position, error)),
                // The reader gets what comes before; its next read starts here and fails.
                Err(_) => break,
            };
            if at + batch_bytes as usize <= want {
                at += batch_bytes as usize;
            } else if at == 0 {
                // The first batch is larger than `bytes_max`: return it whole.
                let whole = u64::from(batch_bytes).min(available) as usize;
                return Ok(file.read_shared_at(position, whole)?);
            } else {
                break;
            }
        }
        Ok(buf.slice(..at))
    }

    /// Checks every batch in the log file (length, CRC, offsets continuing from the base)
    /// and computes the index entries for the valid part.
    pub(crate) fn scan(&self) -> io::Result<ScanOutcome> {
        let file = self.file.get()?;
        let file_bytes = file.len()?;
        let mut outcome = ScanOutcome {
            valid_bytes: 0,
            next_offset: self.base_offset,
            max_timestamp: None,
            first_batch_max_timestamp: None,
            offset_entries: Vec::new(),
            time_entries: Vec::new(),
            stopped: None,
        };
        let mut cursor = IndexCursor::default();
        let mut position = 0u64;
        let mut buf = Vec::new();
        while position < file_bytes {
            let header = match read_checked(file.as_ref(), position, file_bytes, &mut buf) {
                Ok(header) if header.base_offset == outcome.next_offset => header,
                Ok(header) => {
                    let reason = format!(
                        "batch at position {position} has base offset {}, expected {}",
                        header.base_offset.0, outcome.next_offset.0
                    );
                    outcome.stopped = Some(self.stop(reason, position)?);
                    break;
                }
                Err(ReadChecked::Io(e)) => return Err(e),
                Err(ReadChecked::Invalid(e)) => {
                    let reason = format!("invalid batch at position {position}: {e}");
                    outcome.stopped = Some(self.stop(reason, position)?);
                    break;
                }
            };
            let (offset_entry, time_entry) = cursor.on_batch(self.base_offset, position, &header);
            outcome.offset_entries.extend(offset_entry);
            outcome.time_entries.extend(time_entry);
            outcome.first_batch_max_timestamp.get_or_insert(header.max_timestamp);
            position += u64::from(header.batch_bytes);
            outcome.valid_bytes = position;
            outcome.next_offset = header.next_offset();
        }
        outcome.max_timestamp = cursor.max_timestamp;
        Ok(outcome)
    }

    /// Looks past invalid bytes at `position` for valid batches, and notes the largest durable
    /// offset stamped in any of them.
    fn stop(&self, reason: String, position: u64) -> io::Result<ScanStop> {
        let file = self.file.get()?;
        Ok(ScanStop { reason, durable_after: max_durable_stamp(file.as_ref(), position + 1)? })
    }
}

/// Whether a sealed segment's log file is fsynced as it is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealData {
    Sync,
    /// Left for a later sync (`interval` and `never` logs, so a roll does not wait for the disk).
    Defer,
}

/// The largest durable offset stamped in any valid batch that starts at or after `from` in
/// `file`, found by checking every position that carries the magic byte and version. Reads the
/// file a chunk at a time.
pub(crate) fn max_durable_stamp(file: &dyn File, from: u64) -> io::Result<Option<Offset>> {
    const CHUNK: u64 = 1024 * 1024;
    let file_bytes = file.len()?;
    let mut chunk = Vec::new();
    let mut batch = Vec::new();
    let mut durable = None;
    let mut start = from;
    while start + (BATCH_HEADER_BYTES as u64) <= file_bytes {
        let n = (file_bytes - start).min(CHUNK) as usize;
        chunk.resize(n, 0);
        file.read_exact_at(&mut chunk, start)?;
        let candidates = n.saturating_sub(field::VERSION);
        for at in 0..candidates {
            if chunk[at + field::MAGIC] != batch::BATCH_MAGIC
                || !matches!(
                    chunk[at + field::VERSION],
                    batch::BATCH_VERSION | batch::BATCH_VERSION_2
                )
            {
                continue;
            }
            match read_checked(file, start + at as u64, file_bytes, &mut batch) {
                Ok(header) => durable = durable.max(Some(header.durable_offset)),
                Err(ReadChecked::Io(e)) => return Err(e),
                Err(ReadChecked::Invalid(_)) => {}
            }
        }
        start += candidates.max(1) as u64;
    }
    Ok(durable)
}

/// Whether `file` holds only zeros from `from` to its end: what a runway (see
/// [`crate::limits::RUNWAY_BYTES`]) leaves when the process stops without a clean close.
pub(crate) fn zeros_to_end(file: &dyn File, from: u64) -> io::Result<bool> {
    const CHUNK: u64 = 64 * 1024;
    let file_bytes = file.len()?;
    let mut chunk = Vec::new();
    let mut start = from;
    while start < file_bytes {
        chunk.resize((file_bytes - start).min(CHUNK) as usize, 0);
        file.read_exact_at(&mut chunk, start)?;
        if chunk.iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        start += chunk.len() as u64;
    }
    Ok(true)
}

fn read_checked(
    file: &dyn File,
    position: u64,
    file_bytes: u64,
    buf: &mut Vec<u8>,
) -> Result<BatchHeader, ReadChecked> {
    let prefix_bytes = (file_bytes - position).min(BATCH_HEADER_BYTES as u64) as usize;
    buf.resize(prefix_bytes, 0);
    file.read_exact_at(buf, position).map_err(ReadChecked::Io)?;
    let (_, batch_bytes) = batch::peek_prefix(buf).map_err(ReadChecked::Invalid)?;
    if position + u64::from(batch_bytes) > file_bytes {
        return Err(ReadChecked::Invalid(BatchError::Truncated {
            bytes: (file_bytes - position) as usize,
            needed: batch_bytes as usize,
        }));
    }
    buf.resize(batch_bytes as usize, 0);
    file.read_exact_at(buf, position).map_err(ReadChecked::Io)?;
    batch::check(buf).map_err(ReadChecked::Invalid)
}

enum ReadChecked {
    Io(io::Error),
    Invalid(BatchError),
}

/// A segment write that failed.
#[derive(Debug)]
pub(crate) enum SegmentWriteError {
    /// The write failed and the file was cut back: the log is unchanged.
    Clean(io::Error),
    /// The write failed and so did cutting the file back: the log's tail is unknown.
    Dirty(io::Error),
}

/// Why a segment could not be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    Io(io::Error),
    /// The bytes at `position` are not the valid batch (head) they should be.
    Damaged {
        position: u64,
        reason: String,
    },
}

impl From<io::Error> for ReadFailure {
    fn from(error: io::Error) -> ReadFailure {
        ReadFailure::Io(error)
    }
}

impl ReadFailure {
    pub(crate) fn damaged(position: u64, error: BatchError) -> ReadFailure {
        ReadFailure::Damaged { position, reason: error.to_string() }
    }

    /// The failure as a read error: `offset` is the first offset the damage keeps from the
    /// reader.
    pub(crate) fn at(self, path: &Path, offset: Offset) -> ReadError {
        match self {
            ReadFailure::Io(source) => ReadError::Io { path: path.to_path_buf(), source },
            ReadFailure::Damaged { position, reason } => {
                ReadError::Damaged { offset, path: path.to_path_buf(), position, reason }
            }
        }
    }
}
