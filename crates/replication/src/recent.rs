//! [`Recent`]: the entries a replica appended last, kept in memory.
//!
//! Raft reads every entry back right after it is written: the leader to send it to the
//! followers, every replica to apply it. Kept here, those reads need not go to the log, and
//! the log may write past the page cache (`spool_storage` direct writes) without sending them
//! to the disk.
//!
//! A kept entry is the entry as appended, with the offset the log gave its first record:
//! a normal entry's Kafka batches are as their producers sent them (on the leader) or as the
//! leader sent them (on a follower), so their first bytes may lack the stamps the log writes
//! (`baseOffset`, `partitionLeaderEpoch`; see `spool_storage::batch::STAMPED_TAIL_FROM`).
//! Nothing that reads entries uses those: a follower's log stamps them again, from the entry's
//! offset and term, and a state machine takes the offsets from the entry.
//!
//! The entries kept are the log's last ones, with contiguous indexes: a write that does not
//! follow on from them starts them anew, a truncate cuts them, a purge drops what it
//! purged, and applying an entry (or installing a snapshot) drops it and those before it (a
//! follower still to be sent one then gets it from the log); a log restarted after a snapshot
//! drops them all. Each replica keeps at most [`RECENT_ENTRIES_BYTES_MAX`] and the process at most
//! [`RECENT_ENTRIES_PROCESS_BYTES_MAX`]; an entry past either bound drops the oldest, or, when
//! the process's bound is reached, everything this replica keeps. The bounds count the
//! entries' own bytes: a kept batch shares the buffer it arrived in, so on a follower it can
//! keep the rest of its message alive too (at most one more entry: see
//! [`crate::limits::APPEND_ENTRIES_BYTES_MAX`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::{Entry, EntryPayload};

use crate::TypeConfig;
use crate::limits::{RECENT_ENTRIES_BYTES_MAX, RECENT_ENTRIES_PROCESS_BYTES_MAX};

/// Bytes kept by every [`Recent`] in the process.
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// What a control entry (blank or membership) counts for.
const CONTROL_ENTRY_BYTES: usize = 1024;

/// A replica's [`Recent`], shared by its log store and its state machine.
pub(crate) type SharedRecent = Arc<Mutex<Recent>>;

/// The last entries one replica appended; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    entries: VecDeque<Entry<TypeConfig>>,
    bytes: usize,
}

fn bytes_of(entry: &Entry<TypeConfig>) -> usize {
    match &entry.payload {
        EntryPayload::Normal(batch) => batch.kafka.iter().map(Bytes::len).sum(),
        _ => CONTROL_ENTRY_BYTES,
    }
}

impl Recent {
    /// Keeps `entry`, just appended to the log after the entries kept (or starts anew with
    /// it).
    pub(crate) fn push(&mut self, entry: Entry<TypeConfig>) {
        let follows =
            self.entries.back().is_some_and(|last| last.log_id.index + 1 == entry.log_id.index);
        if !follows {
            self.clear();
        }
        let bytes = bytes_of(&entry);
        if bytes > RECENT_ENTRIES_BYTES_MAX {
            self.clear();
            return;
        }
        while self.bytes + bytes > RECENT_ENTRIES_BYTES_MAX {
            self.pop_front();
        }
        let reserved = KEPT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |kept| {
            (kept + bytes <= RECENT_ENTRIES_PROCESS_BYTES_MAX).then_some(kept + bytes)
        });
        if reserved.is_err() {
            // The process keeps all it may: this replica's entries come from its log.
            self.clear();
            return;
        }
        self.bytes += bytes;
        self.entries.push_back(entry);
    }

    /// The entries kept with indexes in `start..end`, if the first kept is at or before
    /// `start` (the kept entries go on to the log's end); `None` when the log must be read.
    pub(crate) fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.entries.front()?.log_id.index;
        if start < first {
            return None;
        }
        let skip = (start - first) as usize;
        let take = end.saturating_sub(start).min(usize::MAX as u64) as usize;
        Some(self.entries.iter().skip(skip).take(take).cloned().collect())
    }

    /// Forgets the entries from index `from` on (the log was truncated there).
    pub(crate) fn truncate(&mut self, from: u64) {
        while self.entries.back().is_some_and(|last| last.log_id.index >= from) {
            let entry = self.entries.pop_back().expect("checked");
            self.release(bytes_of(&entry));
        }
    }

    /// Forgets the entries up to index `upto` (purged from the log, or applied).
    pub(crate) fn purge(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|first| first.log_id.index <= upto) {
            self.pop_front();
        }
    }

    /// Forgets every entry kept.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.release(self.bytes);
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.release(bytes_of(&entry));
        }
    }

    fn release(&mut self, bytes: usize) {
        self.bytes -= bytes;
        KEPT.fetch_sub(bytes, Ordering::Relaxed);
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Batch, log_id};

    fn entry(term: u64, index: u64, bytes: usize) -> Entry<TypeConfig> {
        let batch = Batch::new(vec![Bytes::from(vec![0u8; bytes])], Some(index * 10));
        Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(batch) }
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|entry| entry.log_id.index).collect()
    }

    #[test]
    fn answers_only_ranges_that_start_within_the_entries_kept() {
        let mut recent = Recent::default();
        for index in 3..=6 {
            recent.push(entry(1, index, 10));
        }
        assert!(recent.get(2, 5).is_none(), "entry 2 is read from the log");
        assert_eq!(indexes(&recent.get(3, 5).unwrap()), [3, 4]);
        assert_eq!(indexes(&recent.get(5, u64::MAX).unwrap()), [5, 6]);
        assert_eq!(indexes(&recent.get(7, 9).unwrap()), [] as [u64; 0], "past the log's end");
    }

    #[test]
    fn a_write_that_does_not_follow_on_starts_anew_and_truncates_and_purges_cut() {
        let mut recent = Recent::default();
        for index in 1..=4 {
            recent.push(entry(1, index, 10));
        }
        recent.truncate(3);
        recent.push(entry(2, 3, 10));
        let got = recent.get(1, 10).unwrap();
        assert_eq!(indexes(&got), [1, 2, 3]);
        assert_eq!(got[2].log_id.leader_id.term, 2, "the entry written after the truncate");
        recent.purge(1);
        assert!(recent.get(1, 10).is_none());
        recent.push(entry(2, 9, 10));
        assert!(recent.get(3, 10).is_none(), "a gap starts anew");
        assert_eq!(indexes(&recent.get(9, 10).unwrap()), [9]);
        assert_eq!(recent.bytes, 10);
    }

    #[test]
    fn keeps_at_most_its_bound_dropping_the_oldest() {
        let mut recent = Recent::default();
        let third = RECENT_ENTRIES_BYTES_MAX / 3;
        for index in 1..=4 {
            recent.push(entry(1, index, third));
        }
        assert_eq!(indexes(&recent.get(2, 10).unwrap()), [2, 3, 4]);
        assert!(recent.get(1, 10).is_none());
        recent.push(entry(1, 5, RECENT_ENTRIES_BYTES_MAX + 1));
        assert!(recent.get(5, 10).is_none(), "an entry past the bound is not kept");
        assert_eq!(recent.bytes, 0);
    }
}
