//! [`Proposals`]: a replica's queue of batches to propose, which it proposes as few entries.
//!
//! openraft 0.9 appends and fsyncs each client write alone, and takes the next only after
//! that fsync. Proposed one entry per batch, a partition's leader so runs one fsync per
//! batch however many wait, and its throughput is its disk's fsync rate. Instead a replica
//! keeps at most [`PROPOSALS_IN_FLIGHT`] entries in Raft at once, and each new entry takes
//! every batch queued meanwhile (up to [`ENTRY_KAFKA_BYTES_MAX`] and [`ENTRY_BATCHES_MAX`]):
//! under load one fsync on each replica covers many batches, and a lone batch is proposed at
//! once. The batches of an entry keep the order they were queued in, and entries are
//! submitted in the order they were formed, so batches are stored in the order they were
//! queued. Batches queued as one group go into one entry, and are committed all or none.
//!
//! A group queued to be answered on append (`acks=leader`) is answered once the leader's log
//! has appended its entry, before the fsync and before any follower has it: the leader's
//! offsets, which every replica gives it should it be committed. Should the entry not be
//! committed after all (the leader dies or is deposed first), a new leader truncates it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use openraft::Raft;
use openraft::error::ClientWriteError;
use spool_storage::Offset;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::TypeConfig;
use crate::entry::{self, Batch};
use crate::limits::{
    ENTRY_BATCHES_MAX, ENTRY_KAFKA_BYTES_MAX, PROPOSALS_IN_FLIGHT, PROPOSALS_QUEUED_KIB_MAX,
};
use crate::replica::{ProposeError, Proposed};

/// Batches proposed together, waiting to be proposed: they go into one entry, so they are
/// committed all or none.
struct Queued {
    batches: Vec<Bytes>,
    /// Their payload bytes.
    bytes: usize,
    /// Each batch's record count.
    records: Vec<u64>,
    /// Answered once the leader has appended the entry, rather than once it is committed.
    on_append: bool,
    /// Taken when it is answered.
    answer: Option<oneshot::Sender<Answered>>,
    /// Its share of [`PROPOSALS_QUEUED_KIB_MAX`], given back once it is answered.
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// Tasks proposing entries now (each one entry at a time).
    proposing: usize,
}

/// See the module documentation.
pub(crate) struct Proposals {
    state: Mutex<State>,
    /// Kibibytes of batches queued or in Raft: a proposal waits for room.
    room: Arc<Semaphore>,
    /// Held while an entry is formed and handed to Raft, so entries reach Raft in the order
    /// their batches were queued.
    submit: tokio::sync::Mutex<()>,
    /// Entries handed to Raft and not yet answered.
    in_raft: tokio::sync::watch::Sender<usize>,
}

impl Proposals {
    pub(crate) fn new() -> Proposals {
        Proposals {
            state: Mutex::new(State::default()),
            room: Arc::new(Semaphore::new(PROPOSALS_QUEUED_KIB_MAX as usize)),
            submit: tokio::sync::Mutex::new(()),
            in_raft: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Queues `batches` (Kafka batches that passed
    /// [`check_for_append`](spool_storage::batch::check_for_append), to go into one entry)
    /// once there is room for them, behind every group queued before; returns what answers
    /// them once their entry is committed and applied here, or with `on_append`, once this
    /// leader's log has appended it.
    pub(crate) async fn queue(
        self: &Arc<Self>,
        raft: &Raft<TypeConfig>,
        batches: Vec<Bytes>,
        on_append: bool,
    ) -> Result<Answer, ProposeError> {
        let lengths: Vec<usize> = batches.iter().map(Bytes::len).collect();
        let bytes = lengths.iter().sum::<usize>();
        if !fits_one_entry(&lengths) {
            return Err(ProposeError::Oversized { batches: lengths.len(), bytes });
        }
        let records = batches.iter().map(|kafka| entry::record_count(kafka).unwrap_or(0)).collect();
        let kib = bytes.div_ceil(1024).clamp(1, PROPOSALS_QUEUED_KIB_MAX as usize) as u32;
        let permit = self.room.clone().acquire_many_owned(kib).await.expect("never closed");
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let answer = Some(answer);
            let queued = Queued { batches, bytes, records, on_append, answer, _permit: permit };
            state.queue.push_back(queued);
            let start = state.proposing < PROPOSALS_IN_FLIGHT;
            state.proposing += usize::from(start);
            start
        };
        if start {
            tokio::spawn(self.clone().run(raft.clone()));
        }
        Ok(answered)
    }

    /// Holds every queued batch back from Raft until the guard is dropped; entries already in
    /// Raft go on. What a leader does while it hands its group over.
    pub(crate) async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.submit.lock().await
    }

    /// Waits until no entry handed to Raft is unanswered (committed, or refused).
    pub(crate) async fn settled(&self) {
        let mut in_raft = self.in_raft.subscribe();
        let _ = in_raft.wait_for(|count| *count == 0).await;
    }

    /// Proposes entries of the queued batches, one at a time, until none is queued.
    async fn run(self: Arc<Self>, raft: Raft<TypeConfig>) {
        loop {
            let submitted = {
                let _submit = self.submit.lock().await;
                let group = self.take();
                if group.is_empty() {
                    return;
                }
                let kafka =
                    group.iter().flat_map(|queued| queued.batches.iter().cloned()).collect();
                let mut batch = Batch::new(kafka, None);
                let appended = match group.iter().any(|queued| queued.on_append) {
                    true => {
                        let (waiting, appended) = entry::Appended::waiting();
                        batch.appended = waiting;
                        Some(appended)
                    }
                    false => None,
                };
                self.in_raft.send_modify(|count| *count += 1);
                let written = raft.client_write_ff(batch).await;
                (group, appended, written)
            };
            let (mut group, mut appended, written) = submitted;
            let entry = match written {
                Ok(pending) => {
                    tokio::pin!(pending);
                    // Those asked to be answered on append are, once it is (or, should the
                    // entry never be, with the others).
                    let committed = loop {
                        tokio::select! {
                            told = async { appended.as_mut().expect("waited for").await },
                                if appended.is_some() =>
                            {
                                if let Ok(offsets) = told {
                                    answer(&mut group, Ok(offsets), |queued| queued.on_append);
                                }
                                appended = None;
                            }
                            committed = &mut pending => break committed,
                        }
                    };
                    match committed {
                        Ok(Ok(response)) => response.data.offsets.ok_or_else(|| {
                            ProposeError::Stopped(
                                "a committed entry came back without offsets".into(),
                            )
                        }),
                        Ok(Err(ClientWriteError::ForwardToLeader(forward))) => {
                            let leader =
                                forward.leader_id.zip(forward.leader_node.map(|node| node.addr));
                            Err(ProposeError::NotLeader { leader })
                        }
                        Ok(Err(error)) => Err(ProposeError::Stopped(error.to_string())),
                        Err(_) => Err(ProposeError::Stopped("the replica stopped".to_owned())),
                    }
                }
                Err(fatal) => Err(ProposeError::Stopped(fatal.to_string())),
            };
            answer(&mut group, entry, |_| true);
            self.in_raft.send_modify(|count| *count -= 1);
        }
    }

    /// The batches for the next entry, from the front of the queue; none (and this task
    /// counted out) when the queue is empty.
    fn take(&self) -> Vec<Queued> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut group = Vec::new();
        let (mut bytes, mut batches) = (0usize, 0usize);
        while let Some(next) = state.queue.front() {
            let fits = bytes + next.bytes <= ENTRY_KAFKA_BYTES_MAX
                && batches + next.batches.len() <= ENTRY_BATCHES_MAX;
            if !group.is_empty() && !fits {
                break;
            }
            bytes += next.bytes;
            batches += next.batches.len();
            group.extend(state.queue.pop_front());
        }
        if group.is_empty() {
            state.proposing -= 1;
        }
        group
    }
}

/// A queued group's answer: each batch's offsets, or why none was committed.
type Answered = Result<Vec<(Offset, Offset)>, ProposeError>;

/// What answers a queued group.
pub(crate) type Answer = oneshot::Receiver<Answered>;

/// The answer to a group of one batch.
pub(crate) fn first(answer: Result<Vec<(Offset, Offset)>, ProposeError>) -> Proposed {
    answer?.pop().ok_or_else(|| ProposeError::Stopped("a proposal went unanswered".into()))
}

pub(crate) fn dropped() -> ProposeError {
    ProposeError::Stopped("the proposal was dropped unanswered".to_owned())
}

/// Whether batches of these lengths fit one entry: within [`ENTRY_BATCHES_MAX`] and
/// [`ENTRY_KAFKA_BYTES_MAX`], or one batch alone (which fits one entry whatever its size).
pub fn fits_one_entry(lengths: &[usize]) -> bool {
    lengths.len() == 1
        || (lengths.len() <= ENTRY_BATCHES_MAX
            && lengths.iter().sum::<usize>() <= ENTRY_KAFKA_BYTES_MAX)
}

/// Answers each batch of an entry's groups that `which` picks and that is not answered yet
/// with its own offsets: they follow on from the entry's first in the order of its batches.
fn answer(
    group: &mut [Queued],
    entry: Result<(u64, u64), ProposeError>,
    which: impl Fn(&Queued) -> bool,
) {
    let records = group.iter().flat_map(|queued| queued.records.iter().copied());
    let offsets = entry.and_then(|(base, next)| {
        let offsets: Vec<(u64, u64)> = entry::batch_offsets(base, records).collect();
        match offsets.last() {
            Some(&(_, end)) if end == next => Ok(offsets),
            _ => Err(ProposeError::Stopped(format!(
                "an entry of {} batches was applied at offsets {base} to {next}, which its records do not fill",
                offsets.len()
            ))),
        }
    });
    let mut offsets = offsets.map(Vec::into_iter);
    for queued in group {
        let answer = match &mut offsets {
            Ok(offsets) => Ok(offsets
                .by_ref()
                .take(queued.records.len())
                .map(|(base, next)| (Offset(base), Offset(next)))
                .collect()),
            Err(error) => Err(error.clone()),
        };
        if which(queued)
            && let Some(sender) = queued.answer.take()
        {
            let _ = sender.send(answer);
        }
    }
}
