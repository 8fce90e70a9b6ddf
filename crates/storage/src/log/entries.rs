//! What a replicated log needs of [`Log`] beyond appends and reads: reading everything
//! written (a leader sends its followers batches it has not synced yet), finding a batch by
//! its index in the replicated log, and cutting the tail (a follower's entries that the
//! leader's log does not hold).
//!
//! Each batch of a replicated log carries its term and index in its frame
//! ([`crate::batch::EntryStamp`]); both grow with the offset, so an index is found by a
//! binary search over offsets that reads only batch heads.
//!
//! **Truncate** ([`Log::truncate`]), in an order that a crash at any step recovers from:
//! (1) as for any first write, remove `clean-shutdown` and fsync the directory, so a crash
//! from here on is recovered as one; (2) lower the recovery point to the base of the segment
//! that holds the cut, so the next open scans it; (3) remove the later segments, newest
//! first (log file, then indexes), and fsync the directory: a crash in between leaves a
//! shorter log that is a prefix of the old one, never a hole; (4) remove the segment's
//! indexes, cut its log file, `fdatasync` it and fsync the directory; (5) open the log again,
//! which rebuilds the indexes. A failure in (2) to (4) fences the log.
//!
//! **Cutting damage** ([`Log::cut_damage`]) is for a replica whose other copies hold what it
//! lost: recovery found damage in data that was synced once, so the log is fenced. The
//! damaged segment and every later one go, in the truncate's order (steps 2 and 3, the
//! recovery point lowered to the damaged segment's base), and the log opens again as the
//! prefix before them. A log with one copy is never cut: it stays fenced for an operator.
//!
//! **Restarting** ([`Log::restart_at`]) empties the log and gives it another start offset:
//! (1) remove every segment, newest first, and fsync the directory; (2) write the new start
//! as the recovery point; (3) create the empty segment there and fsync the directory; (4)
//! open the log again. A crash before (3) leaves an empty directory, which opens as a log
//! at offset 0: the caller, which knows the start it wanted, restarts it again.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Log, ReadBatches, Watermark, readable_bytes};
use crate::batch::{self, EntryStamp, field, v2};
use crate::error::{Fence, ReadError, TruncateError};
use crate::segment::{ReadFailure, Segment};
use crate::{Offset, TimestampMs};

/// Bytes of a stored v2 batch's frame and Kafka header: what [`Log::entry_at`] reads.
const ENTRY_HEAD_BYTES: usize = v2::frame::BYTES + v2::kafka::RECORDS;

/// A batch found by [`Log::entry_at`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryAt {
    pub base_offset: Offset,
    /// The offset after the batch.
    pub next_offset: Offset,
    pub entry: EntryStamp,
}

impl Log {
    /// Reads as [`Log::read`] does, but up to everything written, synced or not. For a
    /// replicated log, whose readers are bounded by what a majority holds, not by this
    /// log's own syncs.
    pub fn read_written(&self, offset: Offset, bytes_max: u32) -> Result<ReadBatches, ReadError> {
        self.read_until(offset, bytes_max, self.written())
    }

    /// The batch that holds `offset`, written (synced or not): where it starts and ends and
    /// its [`EntryStamp`]. Only the batch's head is read and only the frame's CRC checked.
    pub fn entry_at(&self, offset: Offset) -> Result<EntryAt, ReadError> {
        let written = self.written();
        if offset < self.log_start_offset() || offset >= written.offset {
            return Err(ReadError::OffsetOutOfRange {
                requested: offset,
                log_start: self.log_start_offset(),
                log_end: written.offset,
            });
        }
        let segment = self.segment_for(offset);
        let end = readable_bytes(segment, written);
        head_at(segment, offset, end).map(|(_, at)| at)
    }

    /// The base offset of the batch stamped with index `index` of the replicated log, if the
    /// log holds it (written, synced or not).
    pub fn find_entry(&self, index: u64) -> Result<Option<Offset>, ReadError> {
        let found = self.first_entry_from(index)?;
        Ok(found.filter(|at| at.entry.index == index).map(|at| at.base_offset))
    }

    /// The first batch (written, synced or not) whose index in the replicated log is at least
    /// `index`: a binary search over offsets, reading one batch head per step.
    pub fn first_entry_from(&self, index: u64) -> Result<Option<EntryAt>, ReadError> {
        let (mut low, mut high) = (self.log_start_offset(), self.written().offset);
        let mut found = None;
        while low < high {
            let at = self.entry_at(Offset(low.0 + (high.0 - low.0) / 2))?;
            if at.entry.index >= index {
                high = at.base_offset;
                found = Some(at);
            } else {
                low = at.next_offset;
            }
        }
        Ok(found)
    }

    /// The last batch written, synced or not; `None` while the log holds none.
    pub fn last_entry(&self) -> Result<Option<EntryAt>, ReadError> {
        let end = self.written().offset;
        if end == self.log_start_offset() {
            return Ok(None);
        }
        self.entry_at(Offset(end.0 - 1)).map(Some)
    }

    /// Caps what readers see at offset `end`, a replicated log's commit point: from now on
    /// [`Log::read`], [`Log::log_end_offset`] and [`Log::offset_for_timestamp`] stop there,
    /// whatever this log has synced. `end` is where a batch starts, or the written end; a
    /// point inside a batch is taken back to the batch's start.
    pub fn set_committed(&mut self, end: Offset) -> Result<(), ReadError> {
        let written = self.written();
        let committed = if end >= written.offset {
            written
        } else if end <= self.log_start_offset() {
            let first = &self.segments[0];
            Watermark { offset: first.base_offset, segment_base: first.base_offset, position: 0 }
        } else {
            let segment = self.segment_for(end);
            let (position, at) = head_at(segment, end, readable_bytes(segment, written))?;
            Watermark { offset: at.base_offset, segment_base: segment.base_offset, position }
        };
        self.committed = Some(committed);
        Ok(())
    }

    /// Removes every batch from offset `from` on, which must be where a batch starts (or
    /// the log's end: nothing to do), durably, in the order the module docs give. The log
    /// opens again afterwards (`now` is its time for that).
    pub fn truncate(&mut self, from: Offset, now: TimestampMs) -> Result<(), TruncateError> {
        if let Some(fence) = &self.fence {
            return Err(TruncateError::Fenced(fence.clone()));
        }
        let next_offset = self.next_offset();
        if from == next_offset {
            return Ok(());
        }
        if from < self.log_start_offset() || from > next_offset {
            return Err(TruncateError::OutOfRange {
                from,
                log_start: self.log_start_offset(),
                next_offset,
            });
        }
        let i = self.segments.partition_point(|s| s.base_offset <= from).saturating_sub(1);
        let segment = &self.segments[i];
        let (position, at) = head_at(segment, from, segment.size_bytes)?;
        if at.base_offset != from {
            return Err(TruncateError::NotABatchStart { from, base: at.base_offset });
        }
        let base = segment.base_offset;
        self.prepare_first_write().map_err(|error| match error {
            crate::AppendError::Fenced(fence) => TruncateError::Fenced(fence),
            other => TruncateError::Fenced(Fence::WriteFailed {
                path: self.dir.clone(),
                error: Arc::new(io::Error::other(other.to_string())),
            }),
        })?;
        if let Err((path, error)) = self.cut(i, base, position) {
            let fence = Fence::WriteFailed { path, error: Arc::new(error) };
            self.fence = Some(fence.clone());
            return Err(TruncateError::Fenced(fence));
        }
        match Log::open(self.fs.clone(), &self.dir, self.config, now) {
            Ok(reopened) => {
                // What was committed lies before the cut (Raft never cuts committed entries).
                let committed = self.committed.filter(|c| c.offset <= from);
                *self = reopened;
                self.committed = committed;
                Ok(())
            }
            Err(error) => {
                // The files were cut but this log still describes them uncut.
                let reason = format!("it could not be opened again after a cut: {error}");
                self.fence = Some(Fence::WriteFailed {
                    path: self.dir.clone(),
                    error: Arc::new(io::Error::other(reason)),
                });
                Err(TruncateError::Reopen(Box::new(error)))
            }
        }
    }

    /// Steps (2) to (4) of a truncate: cut segment `i` (based at `base`) at `position`.
    fn cut(&mut self, i: usize, base: Offset, position: u64) -> Result<(), (PathBuf, io::Error)> {
        let fs = self.fs.clone();
        let dir = self.dir.clone();
        if base < self.recovery_point {
            crate::recovery::write_recovery_point(fs.as_ref(), &dir, base)
                .map_err(|error| (dir.clone(), error))?;
            self.recovery_point = base;
        }
        while self.segments.len() > i + 1 {
            let segment = self.segments.pop().expect("more than i + 1 segments");
            let later = segment.base_offset;
            drop(segment);
            for path in crate::recovery::segment_paths(&dir, later) {
                remove_if_present(fs.as_ref(), &path).map_err(|error| (path.clone(), error))?;
            }
        }
        fs.sync_dir(&dir).map_err(|error| (dir.clone(), error))?;
        let [log_path, indexes @ ..] = crate::recovery::segment_paths(&dir, base);
        for path in indexes {
            remove_if_present(fs.as_ref(), &path).map_err(|error| (path.clone(), error))?;
        }
        let file = self.segments[i].file.get().map_err(|error| (log_path.clone(), error))?;
        file.set_len(position)
            .and_then(|()| file.sync_data())
            .map_err(|error| (log_path.clone(), error))?;
        fs.sync_dir(&dir).map_err(|error| (dir.clone(), error))
    }
}

impl Log {
    /// Removes the segment recovery found damaged ([`Fence::Damaged`]) and every later one,
    /// durably (the module docs give the order), and opens the log again as the intact
    /// segments before them. Returns the offset the log now ends at; a log that is not
    /// fenced for damage is left as it is.
    pub fn cut_damage(&mut self, now: TimestampMs) -> Result<Offset, TruncateError> {
        let Some(Fence::Damaged { path, .. }) = &self.fence else {
            return Ok(self.next_offset());
        };
        self.cut_segments_from(&path.clone(), now)
    }

    /// Removes the segment whose log file is `path` and every later one, as
    /// [`Log::cut_damage`] does: for damage a read found (a segment recovery did not scan).
    /// Returns the offset the log now ends at.
    pub fn cut_segments_from(
        &mut self,
        path: &Path,
        now: TimestampMs,
    ) -> Result<Offset, TruncateError> {
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        let damaged = crate::recovery::parse_base(name, ".log")
            .filter(|_| path.parent() == Some(self.dir.as_path()))
            .ok_or_else(|| TruncateError::NotASegment { path: path.to_path_buf() })?;
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let failed = |path: &Path, error: io::Error| {
            TruncateError::Fenced(Fence::WriteFailed {
                path: path.to_path_buf(),
                error: Arc::new(error),
            })
        };
        if damaged < self.recovery_point {
            crate::recovery::write_recovery_point(fs.as_ref(), &dir, damaged)
                .map_err(|error| failed(&dir, error))?;
            self.recovery_point = damaged;
        }
        let names = fs.list_dir(&dir).map_err(|error| failed(&dir, error))?;
        let mut bases: Vec<Offset> = names
            .iter()
            .filter_map(|name| crate::recovery::parse_base(name, ".log"))
            .filter(|base| *base >= damaged)
            .collect();
        bases.sort_unstable();
        for base in bases.into_iter().rev() {
            for path in crate::recovery::segment_paths(&dir, base) {
                remove_if_present(fs.as_ref(), &path).map_err(|error| failed(&path, error))?;
            }
        }
        fs.sync_dir(&dir).map_err(|error| failed(&dir, error))?;
        *self = Log::open(fs, &dir, self.config, now).map_err(Box::new)?;
        Ok(self.next_offset())
    }

    /// Removes every segment and opens the log again empty, its next offset `start`
    /// (durably, in the order the module docs give): a replica whose log ends before what it
    /// took from a leader's snapshot goes on from there. A fence is lifted with the segments.
    pub fn restart_at(&mut self, start: Offset, now: TimestampMs) -> Result<(), TruncateError> {
        let (fs, dir) = (self.fs.clone(), self.dir.clone());
        let failed = |path: &Path, error: io::Error| {
            TruncateError::Fenced(Fence::WriteFailed {
                path: path.to_path_buf(),
                error: Arc::new(error),
            })
        };
        let restarted = (|| {
            let names = fs.list_dir(&dir).map_err(|error| failed(&dir, error))?;
            let mut bases: Vec<Offset> =
                names.iter().filter_map(|name| crate::recovery::parse_base(name, ".log")).collect();
            bases.sort_unstable();
            for base in bases.into_iter().rev() {
                for path in crate::recovery::segment_paths(&dir, base) {
                    remove_if_present(fs.as_ref(), &path).map_err(|error| failed(&path, error))?;
                }
            }
            fs.sync_dir(&dir).map_err(|error| failed(&dir, error))?;
            crate::recovery::write_recovery_point(fs.as_ref(), &dir, start)
                .map_err(|error| failed(&dir, error))?;
            drop(
                Segment::create(&fs, &dir, start, self.config.index_capacity())
                    .map_err(|error| failed(&crate::segment::log_path(&dir, start), error))?,
            );
            fs.sync_dir(&dir).map_err(|error| failed(&dir, error))
        })();
        if let Err(error) = restarted {
            if let TruncateError::Fenced(fence) = &error {
                self.fence = Some(fence.clone());
            }
            return Err(error);
        }
        let replicated = self.committed.is_some();
        *self = Log::open(fs, &dir, self.config, now).map_err(Box::new)?;
        if replicated {
            self.committed = Some(Watermark { offset: start, segment_base: start, position: 0 });
        }
        Ok(())
    }
}

fn remove_if_present(fs: &dyn crate::fs::FileSystem, path: &Path) -> io::Result<()> {
    match fs.remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// The position and head of the batch holding `offset` in `segment`, read no further than
/// `end`. A version 1 batch (never in a replicated log) reads as entry zero.
fn head_at(segment: &Segment, offset: Offset, end: u64) -> Result<(u64, EntryAt), ReadError> {
    let failed = |failure: ReadFailure| failure.at(&segment.path, offset);
    let position = segment
        .find(offset, end)
        .map_err(failed)?
        .ok_or_else(|| failed(ReadFailure::Io(io::Error::other("no batch holds the offset"))))?;
    let length = (end - position).min(ENTRY_HEAD_BYTES as u64) as usize;
    let mut head = [0u8; ENTRY_HEAD_BYTES];
    let file = segment.file.get_to_read(end).map_err(|error| failed(error.into()))?;
    file.read_exact_at(&mut head[..length], position).map_err(|error| failed(error.into()))?;
    let damaged = |error| failed(ReadFailure::damaged(position, error));
    if length > field::VERSION && head[field::VERSION] == batch::BATCH_VERSION {
        let header = batch::head_fields(&head[..length]).map_err(damaged)?;
        let at = EntryAt {
            base_offset: header.base_offset,
            next_offset: Offset(header.base_offset.0 + u64::from(header.record_count)),
            entry: EntryStamp::default(),
        };
        return Ok((position, at));
    }
    if length < ENTRY_HEAD_BYTES {
        let error = batch::BatchError::Truncated { bytes: length, needed: ENTRY_HEAD_BYTES };
        return Err(damaged(error));
    }
    let (base_offset, entry) = v2::check_head_entry(&head).map_err(damaged)?;
    let count_at = v2::frame::BYTES + v2::kafka::RECORDS_COUNT;
    let count = u32::from_be_bytes(head[count_at..count_at + 4].try_into().expect("4 bytes"));
    let at = EntryAt { base_offset, next_offset: Offset(base_offset.0 + u64::from(count)), entry };
    Ok((position, at))
}
