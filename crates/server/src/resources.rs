//! What the machine gives the server: open files and memory.
//!
//! - **Open files.** Each partition holds one open file, its active segment's (index files
//!   are mapped and closed; sealed segments' files are opened on demand through storage's
//!   bounded cache, sized here from the limit: [`sealed_files_max`]). Connections, listeners,
//!   the internal logs and that cache need the rest. A start or a topic create that would run
//!   out is refused up front, with the numbers and the fix, instead of failing with "Too many
//!   open files" half way through.
//! - **The partition limit's default** ([`default_partitions_max`]), sized from the open-file
//!   limit and the memory.
//!
//! Linux only: the limit comes from `/proc/self/limits`, the count from `/proc/self/fd` and
//! the memory from `/proc/meminfo`. Where one cannot be read, nothing is checked (and nothing
//! is refused), and the default leaves that resource out.

use std::fs;
use std::path::Path;

use thiserror::Error;

use spool_broker::limits::PARTITIONS_TOTAL_MAX;

use spool_storage::limits::SEALED_FILES_OPEN_MAX;

use crate::limits::{OPEN_FILES_RESERVED, PARTITION_MEMORY_BYTES};

/// What would run out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{what} needs {needed} more open files, but the server has {open} open of its limit of \
     {limit} (RLIMIT_NOFILE) and keeps {kept} for connections and sealed segments: raise the \
     limit (`ulimit -n` in the shell that starts it, or LimitNOFILE= for a systemd service) \
     and restart the server{advice}",
    advice = advice(.creating)
)]
pub struct OpenFilesError {
    pub what: String,
    pub needed: u64,
    pub open: u64,
    pub limit: u64,
    /// Files kept for connections and for the sealed segments' cache to fill.
    pub kept: u64,
    /// Whether a topic create asked (it may ask for fewer).
    pub creating: bool,
}

fn advice(creating: &bool) -> &'static str {
    if *creating { ", or create fewer partitions" } else { "" }
}

/// The soft limit on open files, from `/proc/self/limits`; `None` if unlimited or unknown.
pub(crate) fn soft_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    parse_soft_limit(&limits)
}

fn parse_soft_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// Files the process has open now; `None` if unknown.
pub(crate) fn open_now() -> Option<u64> {
    Some(fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// The bound of storage's cache of sealed segments' open files for an open-file limit: an
/// eighth of it, within 16 and [`SEALED_FILES_OPEN_MAX`].
pub fn sealed_files_max(limit: Option<u64>) -> usize {
    limit.map_or(SEALED_FILES_OPEN_MAX, |limit| {
        (limit / 8).clamp(16, SEALED_FILES_OPEN_MAX as u64) as usize
    })
}

/// Checks that `needed` more files fit under the soft limit beside those open now, with
/// [`OPEN_FILES_RESERVED`] and the room the sealed segments' cache may still fill left over.
pub(crate) fn check(what: &str, needed: u64, creating: bool) -> Result<(), OpenFilesError> {
    let (Some(limit), Some(open)) = (soft_limit(), open_now()) else {
        return Ok(());
    };
    let cache_room =
        sealed_files_max(Some(limit)).saturating_sub(spool_storage::sealed_files_open());
    let kept = OPEN_FILES_RESERVED + cache_room as u64;
    check_against(what, needed, creating, open, limit, kept)
}

fn check_against(
    what: &str,
    needed: u64,
    creating: bool,
    open: u64,
    limit: u64,
    kept: u64,
) -> Result<(), OpenFilesError> {
    if open + needed + kept <= limit {
        return Ok(());
    }
    Err(OpenFilesError { what: what.to_owned(), needed, open, limit, kept, creating })
}

/// The machine's memory in bytes, from `/proc/meminfo`.
fn memory_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line["MemTotal:".len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The partition limit when none is configured: as many partitions as open files allow at
/// one each (beside [`OPEN_FILES_RESERVED`] and the sealed segments' cache) and as memory
/// allows at [`PARTITION_MEMORY_BYTES`] each, and never below one full topic's 256 nor above
/// [`PARTITIONS_TOTAL_MAX`]. Read once the open-file limit has been raised.
pub fn default_partitions_max() -> u32 {
    sized_partitions_max(soft_limit(), memory_bytes())
}

fn sized_partitions_max(open_files: Option<u64>, memory: Option<u64>) -> u32 {
    let kept = OPEN_FILES_RESERVED + sealed_files_max(open_files) as u64;
    let by_files = open_files.map_or(u64::MAX, |limit| limit.saturating_sub(kept));
    let by_memory = memory.map_or(u64::MAX, |bytes| bytes / PARTITION_MEMORY_BYTES);
    let floor = u64::from(spool_broker::limits::PARTITIONS_PER_TOPIC_MAX);
    by_files.min(by_memory).clamp(floor, u64::from(PARTITIONS_TOTAL_MAX)) as u32
}

/// The partitions under a data directory: the files they hold open once opened, one each.
/// Reads directory entries only (no file is opened, no link followed); what it cannot read it
/// does not count, and opening the directory reports it.
pub(crate) fn partitions(data_dir: &Path) -> u64 {
    let dirs = |dir: &Path| {
        fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
    };
    dirs(&data_dir.join("topics")).map(|topic| dirs(&topic.path()).count() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 20000                files     \n";
        assert_eq!(parse_soft_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_soft_limit(unlimited), None);
        assert!(soft_limit().is_some(), "this test runs on Linux with a finite limit");
        assert!(open_now().unwrap() >= 3);
    }

    #[test]
    fn a_request_past_the_limit_names_the_numbers_and_the_fix() {
        assert_eq!(check_against("x", 100, true, 500, 1024, 384), Ok(()));
        let error = check_against("creating topic t (3000 partitions)", 3000, true, 40, 1024, 384)
            .unwrap_err();
        let message = error.to_string();
        for part in ["3000 more open files", "40 open", "limit of 1024", "keeps 384", "ulimit -n"] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        assert!(message.contains("fewer"), "{message}");
        let at_start =
            check_against("opening 9000 partitions", 9000, false, 10, 1024, 384).unwrap_err();
        assert!(!at_start.to_string().contains("fewer"), "{at_start}");
    }

    #[test]
    fn the_default_partition_limit_follows_open_files_and_memory() {
        let gib = 1 << 30;
        // This machine's sizes: 20,000 files (1,024 of them for sealed segments), 24 GiB.
        assert_eq!(sized_partitions_max(Some(20_000), Some(24 * gib)), 20_000 - 256 - 1024);
        assert_eq!(sized_partitions_max(Some(1 << 20), Some(24 * gib)), 24 * 1024);
        // A soft limit of 1,024 that cannot be raised (128 for sealed segments).
        assert_eq!(sized_partitions_max(Some(1024), Some(24 * gib)), 1024 - 256 - 128);
        assert_eq!(sealed_files_max(Some(1024)), 128);
        assert_eq!(sealed_files_max(Some(64)), 16);
        assert_eq!(sealed_files_max(None), SEALED_FILES_OPEN_MAX);
        // Never below one full topic, never above the most any setting may ask.
        assert_eq!(sized_partitions_max(Some(300), Some(gib)), 256);
        assert_eq!(sized_partitions_max(None, None), PARTITIONS_TOTAL_MAX);
        assert!(default_partitions_max() >= 256);
    }

    #[test]
    fn partitions_counts_the_partition_directories_of_every_topic() {
        let data = tempfile::tempdir().unwrap();
        for (topic, partition, files) in
            [("a", 0, &["0.log", "0.index", "5.log"][..]), ("a", 1, &["0.log"]), ("b", 0, &[])]
        {
            let dir = data.path().join("topics").join(topic).join(partition.to_string());
            fs::create_dir_all(&dir).unwrap();
            for file in files {
                fs::write(dir.join(file), b"").unwrap();
            }
        }
        fs::write(data.path().join("topics/a/meta.json"), b"{}").unwrap();
        assert_eq!(partitions(data.path()), 3);
        assert_eq!(partitions(&data.path().join("missing")), 0);
    }
}
