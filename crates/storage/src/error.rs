//! Errors, one enum per operation, each carrying the path or values a person needs to act.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use crate::Offset;
use crate::batch::BatchError;

/// Why a log refuses writes. Once fenced, a log stays fenced until it is reopened, which runs
/// recovery against what is really on disk.
#[derive(Debug, Clone, Error)]
pub enum Fence {
    /// fsync failed. It is never retried: after a failed fsync the kernel may have dropped the
    /// dirty pages and a second fsync can report success for data that is gone.
    #[error(
        "fsync of {path} failed: {error}; the log refuses writes, and nothing that fsync covered was acknowledged"
    )]
    SyncFailed { path: PathBuf, error: Arc<io::Error> },
    /// A write failed and the partial write could not be cut off the end of the file.
    #[error(
        "a write to {path} failed and its partial bytes could not be removed: {error}; the log refuses writes"
    )]
    WriteFailed { path: PathBuf, error: Arc<io::Error> },
    /// Recovery found damage that is not a torn tail.
    #[error(
        "{path} is damaged at byte {position}: {reason}; the log is readable up to offset {readable_end} and refuses writes (check the data directory with `spool verify`, inspect the file with `spool dump`)"
    )]
    Damaged { path: PathBuf, position: u64, reason: String, readable_end: Offset },
}

/// A log configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("segment size {bytes} bytes is outside {min}..={max}")]
    SegmentBytes { bytes: u64, min: u64, max: u64 },
    #[error("segment age limit must be at least 1 ms")]
    SegmentMsZero,
    #[error("fsync interval {interval_ms} ms is outside 1..={max_ms}")]
    FsyncInterval { interval_ms: u64, max_ms: u64 },
    #[error("retention time must be at least 1 ms")]
    RetentionMsZero,
    #[error("retention size must be at least 1 byte")]
    RetentionBytesZero,
}

#[derive(Debug, Error)]
pub enum OpenError {
    #[error("invalid log configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("opening the log failed at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Why a batch was not appended. Cloneable, because one failed write fails every batch of
/// its group.
#[derive(Debug, Clone, Error)]
pub enum AppendError {
    #[error("the log refuses writes: {0}")]
    Fenced(Fence),
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("batch of {bytes} bytes is larger than the limit of {bytes_max} bytes")]
    BatchTooLarge { bytes: usize, bytes_max: u32 },
    #[error("no space left on the device holding {path}; nothing was written")]
    NoSpace { path: PathBuf, source: Arc<io::Error> },
    #[error("writing {path} failed: {source}; nothing was written")]
    Io { path: PathBuf, source: Arc<io::Error> },
}

#[derive(Debug, Error)]
pub enum SyncError {
    #[error("the log refuses writes: {0}")]
    Fenced(Fence),
}

/// What a log holds, as a person reads a range: "offsets 3 to 9".
fn held(log_start: Offset, log_end: Offset) -> String {
    match log_end.0.checked_sub(1).filter(|last| *last >= log_start.0) {
        Some(last) => format!("the log holds offsets {log_start} to {last}"),
        None => format!("the log holds no records; the next is offset {log_end}"),
    }
}

#[derive(Debug, Error)]
pub enum ReadError {
    #[error("offset {requested} is out of range: {}", held(*log_start, *log_end))]
    OffsetOutOfRange { requested: Offset, log_start: Offset, log_end: Offset },
    #[error("reading {path} failed: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A stored batch fails its check: the disk gave back something other than what was
    /// written. Every batch before it is still served; `offset` is the first one that cannot
    /// be, and `position` is where in the segment file `path` the damage was found.
    #[error(
        "offset {offset} cannot be read: the batch at byte {position} of {path} is damaged ({reason}); the records before it can still be read, and `spool verify` checks every batch"
    )]
    Damaged { offset: Offset, path: PathBuf, position: u64, reason: String },
}

/// Why a log's tail could not be cut ([`crate::Log::truncate`]).
#[derive(Debug, Error)]
pub enum TruncateError {
    #[error("the log refuses writes: {0}")]
    Fenced(Fence),
    #[error("cannot cut the log at offset {from}: {}", held(*log_start, *next_offset))]
    OutOfRange { from: Offset, log_start: Offset, next_offset: Offset },
    #[error("cannot cut the log at offset {from}: the batch holding it starts at offset {base}")]
    NotABatchStart { from: Offset, base: Offset },
    #[error("cannot cut the log from {path}: it is not one of its segments")]
    NotASegment { path: PathBuf },
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Reopening the log after the cut failed; the cut itself is durable.
    #[error("reopening the log after cutting its tail failed: {0}")]
    Reopen(#[from] Box<OpenError>),
}

#[derive(Debug, Error)]
pub enum RetentionError {
    #[error("deleting {path} failed: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Debug, Error)]
pub enum CloseError {
    #[error("the log refuses writes: {0}")]
    Fenced(Fence),
    #[error("closing the log failed at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Debug, Error)]
#[error("deleting the log failed at {path}: {source}")]
pub struct DeleteError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// Whether an I/O error means the device is full.
pub(crate) fn is_no_space(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOSPC) || error.kind() == io::ErrorKind::StorageFull
}
