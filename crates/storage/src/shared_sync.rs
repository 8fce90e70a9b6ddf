//! Group commit across logs: one `syncfs` for the syncs of many logs at once.
//!
//! A log's sync fsyncs its own files ([`SyncTicket::run`](crate::SyncTicket::run)). When
//! many logs sync at the same time (small batches spread over many partitions), each of those
//! fsyncs costs a journal commit and a flush of the disk's cache of its own; one `syncfs` of
//! the file system they share costs about one, however many files it covers.
//!
//! [`SharedSync::run`] decides per sync: while fewer than [`SYNCS_ALONE_MAX`] syncs run
//! their own fsyncs and no shared round runs, a sync runs its own, so a lone busy log keeps
//! its latency and never waits for other programs' writes. Otherwise it is queued for the
//! next shared round: one `syncfs` that starts after it was queued. The thread that queues
//! one when no round runs runs rounds until nothing is queued, and calls each sync's
//! completion; the others return at once, so a crowd of syncs holds one thread, not one
//! each. Each round covers every sync queued during the one before.
//!
//! A failed round fails every sync it covered (their logs fence). A `syncfs` failure does
//! not say whose write was lost, and it leaves each file's own error for that file's next
//! fsync to report, so after one failure every sync runs alone, those already queued
//! included: each log's own fsyncs then report an error in its own files, exactly as
//! without sharing.
//!
//! The cost of sharing: a round also writes out whatever else is dirty on the file system
//! (other topics' unsynced appends, other programs' files), so a data directory on a file
//! system shared with heavy writers pays for their writes in its spread-out syncs.

use std::io;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::SyncTicket;
use crate::fs::{FileSystem, Volume};
use crate::limits::SYNCS_ALONE_MAX;

/// What runs once a ticket's sync is over, with the ticket and its result (pass both to
/// [`Log::finish_sync`](crate::Log::finish_sync)).
pub type SyncDone = Box<dyn FnOnce(SyncTicket, io::Result<()>) + Send>;

/// The syncs of every log under one data directory; see the module documentation.
pub struct SharedSync {
    /// `None`: the platform cannot sync a whole file system; every sync runs alone.
    volume: Option<Box<dyn Volume>>,
    /// Syncs that may run alone at once ([`SYNCS_ALONE_MAX`] unless set).
    alone_max: usize,
    state: Mutex<State>,
}

impl std::fmt::Debug for SharedSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSync").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Syncs running their own fsyncs now.
    alone: usize,
    /// Tickets waiting for the next round.
    queued: Vec<(SyncTicket, SyncDone)>,
    /// Whether a thread is running rounds: it runs them until nothing is queued.
    running: bool,
    /// Whether a round failed; no round runs after one did.
    failed: bool,
    stats: SharedSyncStats,
}

/// What the shared rounds have done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SharedSyncStats {
    /// Shared rounds run (`syncfs` calls).
    pub rounds: u64,
    /// Syncs they covered.
    pub covered: u64,
}

impl SharedSync {
    /// Shares syncs on the file system holding `dir`: open it before the logs there are
    /// written (see [`FileSystem::volume`]).
    pub fn open(fs: &dyn FileSystem, dir: &Path) -> io::Result<SharedSync> {
        Ok(SharedSync::with_volume(fs.volume(dir)?))
    }

    /// Never shares: every sync runs alone.
    pub fn alone() -> SharedSync {
        SharedSync::with_volume(None)
    }

    fn with_volume(volume: Option<Box<dyn Volume>>) -> SharedSync {
        SharedSync { volume, alone_max: SYNCS_ALONE_MAX, state: Mutex::new(State::default()) }
    }

    /// Lets at most `alone_max` syncs run alone at once; 0 shares every sync (for tests of
    /// the shared path), `usize::MAX` none.
    pub fn with_alone_max(mut self, alone_max: usize) -> SharedSync {
        self.alone_max = alone_max;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `ticket`'s sync and then `done`, exactly once. Alone, on this thread (see the
    /// module documentation for when), or queued for the next shared round: then the thread
    /// running rounds calls `done`, and when none is, this thread becomes it and runs rounds
    /// until nothing is queued (the syncs that `done` queues included). Blocks; call it
    /// without holding a log's lock.
    pub fn run(&self, ticket: SyncTicket, done: SyncDone) {
        let Some(volume) = &self.volume else { return run_alone(ticket, done) };
        let mut state = self.lock();
        if !may_queue(&state, &ticket) || (!state.running && state.alone < self.alone_max) {
            state.alone += 1;
            drop(state);
            let result = ticket.run();
            self.lock().alone -= 1;
            return done(ticket, result);
        }
        state.queued.push((ticket, done));
        if state.running {
            return;
        }
        state.running = true;
        loop {
            let round = std::mem::take(&mut state.queued);
            if round.is_empty() {
                state.running = false;
                return;
            }
            if state.failed {
                drop(state);
                round.into_iter().for_each(|(ticket, done)| run_alone(ticket, done));
                state = self.lock();
                continue;
            }
            drop(state);
            // Every ticket in `round` was prepared before this call, and its direct writes
            // are over once waited for.
            let waited: Vec<io::Result<()>> =
                round.iter().map(|(ticket, _)| ticket.wait_for_writes()).collect();
            let synced = volume.sync();
            state = self.lock();
            state.stats.rounds += 1;
            state.stats.covered += round.len() as u64;
            if let Err(error) = &synced {
                tracing::error!(%error, "syncfs failed: the logs it covered are fenced, and every sync runs alone from now on");
                state.failed = true;
            }
            drop(state);
            for ((ticket, done), waited) in round.into_iter().zip(waited) {
                let result = match &synced {
                    Ok(()) if waited.is_err() => waited,
                    Ok(()) => ticket.record_recovery_point(),
                    Err(error) => {
                        ticket.mark_failed_in_dir();
                        Err(io::Error::new(
                            error.kind(),
                            format!("syncing the whole file system (syncfs) failed: {error}"),
                        ))
                    }
                };
                done(ticket, result);
            }
            state = self.lock();
        }
    }

    /// Queues `ticket` for the round after the one running, if one is running (then this
    /// call never blocks); otherwise hands both back, for [`SharedSync::run`] on a thread
    /// that may block.
    #[allow(clippy::result_large_err)]
    pub fn try_queue(
        &self,
        ticket: SyncTicket,
        done: SyncDone,
    ) -> Result<(), (SyncTicket, SyncDone)> {
        let mut state = self.lock();
        if self.volume.is_none() || !state.running || !may_queue(&state, &ticket) {
            return Err((ticket, done));
        }
        state.queued.push((ticket, done));
        Ok(())
    }

    /// [`SharedSync::run`], waiting for the outcome.
    pub fn run_and_wait(&self, ticket: SyncTicket) -> (SyncTicket, io::Result<()>) {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.run(
            ticket,
            Box::new(move |ticket, result| {
                let _ = sender.send((ticket, result));
            }),
        );
        receiver.recv().expect("every queued ticket's `done` is called")
    }

    pub fn stats(&self) -> SharedSyncStats {
        self.lock().stats
    }
}

/// Whether `ticket` may wait for a shared round at all: no round has failed, and a `syncfs`
/// can stand for its fsyncs.
fn may_queue(state: &State, ticket: &SyncTicket) -> bool {
    !state.failed && ticket.can_share()
}

fn run_alone(ticket: SyncTicket, done: SyncDone) {
    let result = ticket.run();
    done(ticket, result)
}
