//! # spool-storage
//!
//! The log of one partition: record batches stored in segment files, sparse memory-mapped
//! offset and time indexes, group commit, crash recovery and retention.
//!
//! This crate is synchronous and knows nothing of topics, consumer groups, async runtimes,
//! protobuf or the network. All file access goes through the [`fs::FileSystem`] trait, so
//! every test can run against [`sim::SimFileSystem`], which simulates crashes and faults.
//!
//! ## Files of a log directory
//!
//! | file                          | content                                                 |
//! |-------------------------------|---------------------------------------------------------|
//! | `{base_offset:020}.log`       | whole batches back to back ([`batch`] has the format)    |
//! | `{base_offset:020}.index`     | sparse offset index ([`index`] has the format)           |
//! | `{base_offset:020}.timeindex` | sparse time index                                        |
//! | `clean-shutdown`              | the next offset; present from a clean close until the first write after it |
//! | `recovery-point`              | a base offset: every segment below it was fsynced whole   |
//! | `*.json`                      | the log's owner's (a replicated log's Raft state); never touched here |
//!
//! ## Order of writes and syncs
//!
//! **Append** ([`Log::append`]): (1) check the batch (length, CRC, every record); (2) roll
//! if the segment is full or old (below); (3) stamp the base offset; (4) write the batch at
//! the end of the active log file with one positional write; (5) add index entries through
//! the map. Nothing is synced: the batch is durable after the next sync. An
//! [`FsyncPolicy::Always`] log writes a run of 256 KiB or more past the page cache instead
//! (`direct`: `O_DIRECT`, from the block the end lies in to zeros at the next block
//! boundary, which recovery cuts as it cuts the runway).
//!
//! **Sync** ([`Log::begin_sync`], [`SyncTicket::run`], [`Log::finish_sync`]): note the
//! written end and the sealed segments not yet synced; without holding the log, `fdatasync`
//! each of those segments' log files, then the active one; if sealed segments were among
//! them, record the active segment's base as the recovery point (write `recovery-point.tmp`,
//! `fdatasync`, rename, fsync the directory). On success the durable end moves to the noted
//! end. On failure the log is fenced: no retry, and the durable end stays where it was. Index
//! files of the active segment are not synced: they are rebuilt after a crash. Under
//! [`FsyncPolicy::Always`], readers see only what is durable. When many logs sync at once,
//! the fsyncs of their log files may be one `syncfs` of the file system instead
//! ([`SharedSync`]).
//!
//! **Roll**: (1) under [`FsyncPolicy::Always`] only,
//! `fdatasync` the active log file (`interval` and `never` logs leave it to the next sync,
//! which [`Log::sync_due`] asks for, so an append never waits for a whole segment to reach
//! the disk); (2) msync, trim and `fdatasync` both indexes; (3) create the new log file and
//! its preallocated index files; (4) if every sealed segment is now durable, write the new
//! segment's base to `recovery-point.tmp`, `fdatasync` it and rename it to `recovery-point`;
//! (5) fsync the directory. A sealed segment is immutable; below the recovery point it is
//! durable too, so after a crash recovery scans only from the recovery point. A failure
//! before anything of (3) and (4) is synced (a full disk) removes the new files and leaves
//! the segment active, unfenced; a failed fsync fences the log.
//!
//! **Truncate** in recovery, for a torn tail: (1) rebuild the indexes of the valid part;
//! (2) cut the log file at the first invalid byte; (3) `fdatasync` it. A replicated log also
//! cuts its tail on demand ([`Log::truncate`]: a follower's entries that its leader does not
//! hold), in the order `log/entries.rs` gives.
//!
//! **Delete** (retention, [`Log::apply_retention`]): per segment, oldest first: (1) forget it,
//! moving the log start offset; (2) remove the log file, then both indexes; (3) fsync the
//! directory before the next one. A crash in between leaves either the whole segment (whose
//! missing index is rebuilt) or none of it, never a hole.
//!
//! **Close** ([`Log::close`]): a sync (above); trim and sync the active indexes; write the
//! next offset to `clean-shutdown.tmp`, `fdatasync`, rename to `clean-shutdown`, fsync the
//! directory. A log not written since it opened after a clean close still has its
//! `clean-shutdown` and writes nothing.
//!
//! **First write after a clean open** (an append or a roll): remove `clean-shutdown`, fsync
//! the directory (a failure fences the log), then preallocate the active indexes. Until
//! then the log is exactly as the close left it, so opening and closing idle logs write
//! nothing, and a crash finds them clean.
//!
//! ## Assumptions about the disk
//!
//! - `fdatasync` returning success means the file's data written before it survives power
//!   loss; fsync of a directory does the same for its entries (creations, renames, removals).
//! - Writes that were not synced may be lost, torn at any byte, or reach the disk in any
//!   order; a crash may leave a file longer than what was written, filled with zeros.
//! - A failed fsync may have dropped the data it covered, and a later fsync can report
//!   success anyway (fsyncgate): so a failure is final for the log.
//! - Data that was synced is read back as written, or with damage that the CRC detects. Spool
//!   does not re-verify every CRC of sealed segments at start-up; it checks each segment's
//!   tail and rebuilds inconsistent indexes from a full check. Every read checks the CRC of
//!   each batch it returns and stops before a damaged one ([`ReadError::Damaged`]), and
//!   [`verify`] checks everything offline (`spool verify`).
//! - Writing through a map of a sparse file on a full disk raises SIGBUS, so index files are
//!   preallocated with `posix_fallocate` before they are mapped.

pub mod batch;
mod direct;
pub mod error;
pub mod fs;
pub mod index;
pub mod limits;
mod log;
mod recovery;
mod segment;
mod segment_file;
mod shared_sync;
pub mod sim;
pub mod verify;

pub use direct::{set_direct_write_bytes_min, set_direct_writes};
pub use error::{
    AppendError, CloseError, ConfigError, DeleteError, Fence, OpenError, ReadError, RetentionError,
    SyncError, TruncateError,
};
pub use log::{
    Appended, EntryAt, FsyncPolicy, Log, LogConfig, ReadBatches, SegmentInfo, SyncTicket,
};
pub use recovery::RecoveryReport;
pub use segment_file::{sealed_files_open, set_sealed_files_open_max};
pub use shared_sync::{SharedSync, SharedSyncStats, SyncDone};

/// A record's position in a partition: the first record ever appended is offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimestampMs(pub i64);

impl TimestampMs {
    /// The system clock, for callers at the edge; storage itself is handed times.
    pub fn now() -> TimestampMs {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        TimestampMs(since_epoch.as_millis() as i64)
    }

    /// This time plus `ms` milliseconds (saturating: a deadline past the year 292 million is
    /// as good as never).
    pub fn plus_ms(self, ms: u64) -> TimestampMs {
        TimestampMs(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
