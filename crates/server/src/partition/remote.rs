//! A partition this node holds no replica of: its topic is replicated on fewer nodes than
//! the cluster has. The node keeps an empty log for it and serves it through the replicas
//! (`spool_replication::Remote`), so a client may use any partition on any node:
//!
//! - **Writes:** the writer passes the batches queued to the leader in rounds, each in one
//!   message, and the next round once that one is answered ([`run`]), so a producer's batches
//!   reach the leader in the order they came, as a follower's do.
//! - **Reads:** each read is asked of a replica (the leader first), which reads as it would
//!   for its own client and answers with the batches and where its log starts and ends.
//!   Those offsets are kept ([`Partition::state`] answers with them).
//! - **Waiting for records:** while anyone watches the partition, one task per partition
//!   asks a replica for the log's end, and the replica holds the question until the end moves
//!   or [`REMOTE_READ_WAIT`] passes (while fewer than [`REMOTE_READS_WAITING_MAX`] questions
//!   wait on it; else it answers at once and the task asks again after
//!   [`REMOTE_POLL_INTERVAL`]). Each move wakes the watchers, who read again.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};

use bytes::Bytes;
use spool_replication::{PeerRead, ProposeError, ReadAnswer, ReadHead, Remote};
use spool_storage::{Appended, Log, Offset, ReadBatches, TimestampMs};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::replicated::{change_retention, next_round};
use super::{AppendRequest, Partition, PartitionState, Reconfigure};
use crate::error::ServiceError;
use crate::limits::{
    LEADER_ELECTION_PATIENCE, REMOTE_POLL_INTERVAL, REMOTE_READ_TIMEOUT, REMOTE_READ_WAIT,
    REMOTE_READS_WAITING_MAX,
};

/// Runs until `stop` (see the module docs): passes the batches queued to the partition's
/// leader. Hands the (empty) log back at the end.
pub(super) async fn run(
    partition: Arc<Partition>,
    mut queue: mpsc::Receiver<AppendRequest>,
    mut reconfigure: mpsc::Receiver<Reconfigure>,
    remote: Arc<Remote>,
    stop: CancellationToken,
) -> Option<Log> {
    let mut left = None;
    let length = |request: &AppendRequest| request.batch.bytes().len();
    loop {
        let round = tokio::select! {
            Some(request) = reconfigure.recv() => {
                let _ = request.reply.send(change_retention(&partition, request.config));
                continue;
            }
            round = next_round(&mut queue, &mut left, &stop, length) => match round {
                Some(round) => round,
                None => break,
            },
        };
        let (batches, replies): (Vec<Bytes>, Vec<_>) =
            round.into_iter().map(|request| (request.batch.into_bytes(), request.reply)).unzip();
        partition.passing_on(batches.len());
        let answers = tokio::select! {
            () = stop.cancelled() => break,
            answers = remote.forward_in_order(batches, LEADER_ELECTION_PATIENCE) => answers,
        };
        for (reply, answer) in replies.into_iter().zip(answers) {
            let answer = answer
                .map(|(base, next)| Appended {
                    base_offset: base,
                    last_offset: Offset(next.0.saturating_sub(1)),
                    rolled: false,
                })
                .map_err(|error| partition.refused(error));
            let _ = reply.send(answer);
        }
    }
    let log = partition.log.write().unwrap_or_else(PoisonError::into_inner).take();
    partition.changed.send_replace(());
    log
}

impl Partition {
    /// The error for what the replicas did not do for this node.
    fn refused(&self, error: ProposeError) -> ServiceError {
        let Some(cluster) = &self.server.cluster else {
            return ServiceError::Cluster(error.to_string());
        };
        let error = match error {
            ProposeError::NotLeader { leader: None } => {
                ProposeError::NotLeader { leader: self.remote.as_ref().and_then(|r| r.leader()) }
            }
            error => error,
        };
        cluster.not_leader(&self.topic, self.id, error)
    }

    /// The partition's group, and an error when the partition has closed.
    fn remote_open(&self) -> Result<&Arc<Remote>, ServiceError> {
        if self.log.read().unwrap_or_else(PoisonError::into_inner).is_none() {
            return Err(self.closed_error());
        }
        self.remote.as_ref().ok_or_else(|| ServiceError::Internal("not a remote partition".into()))
    }

    /// Asks a replica for `read`, and keeps where the log starts and ends.
    async fn ask(&self, read: PeerRead) -> Result<ReadAnswer, ServiceError> {
        let remote = self.remote_open()?;
        let answer = remote.read(read, REMOTE_READ_TIMEOUT).await.map_err(|error| match error {
            ProposeError::Refused { code, message } => ServiceError::Forwarded { code, message },
            error => ServiceError::Cluster(format!(
                "partition {} of topic {}: no replica answered ({error}); try again",
                self.id, self.topic
            )),
        })?;
        self.learn(&answer.head);
        Ok(answer)
    }

    /// Keeps what a replica said of the log (its start and end only ever move on).
    fn learn(&self, head: &ReadHead) {
        let mut known = self.remote_state.write().unwrap_or_else(PoisonError::into_inner);
        let (start, end) = (Offset(head.log_start_offset), Offset(head.log_end_offset));
        let state = known.get_or_insert_with(|| PartitionState {
            log_start_offset: start,
            log_end_offset: end,
            size_bytes: head.size_bytes,
            segments: 0,
            fence: None,
        });
        state.log_start_offset = state.log_start_offset.max(start);
        state.log_end_offset = state.log_end_offset.max(end);
        state.size_bytes = head.size_bytes;
    }

    /// What the replicas said of the log last (see [`Partition::state`]).
    pub(super) fn remote_state(&self) -> Option<PartitionState> {
        self.remote_state.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Asks a replica where the log starts and ends now: a partition this node holds no
    /// replica of answers [`Partition::state`] with what it heard last.
    pub(crate) async fn refresh(&self) -> Result<(), ServiceError> {
        if self.remote.is_none() {
            return Ok(());
        }
        let read = PeerRead::Records { offset: 0, bytes_max: 0, wait_ms: 0 };
        self.ask(read).await.map(|_| ())
    }

    /// [`Partition::read`] through a replica.
    pub(super) async fn read_remote(
        &self,
        offset: Offset,
        bytes_max: u32,
    ) -> Result<ReadBatches, ServiceError> {
        let bytes_max = bytes_max.clamp(1, spool_replication::limits::PEER_READ_BYTES_MAX);
        let read = PeerRead::Records { offset: offset.0, bytes_max, wait_ms: 0 };
        let ReadAnswer { head, bytes } = self.ask(read).await?;
        Ok(ReadBatches {
            bytes,
            next_offset: Offset(head.next_offset),
            log_start_offset: Offset(head.log_start_offset),
            log_end_offset: Offset(head.log_end_offset),
        })
    }

    /// [`Partition::offset_for_timestamp`] through a replica.
    pub(super) async fn offset_for_timestamp_remote(
        &self,
        timestamp: TimestampMs,
    ) -> Result<Offset, ServiceError> {
        let answer = self.ask(PeerRead::Timestamp { timestamp_ms: timestamp.0 }).await?;
        Ok(Offset(answer.head.next_offset))
    }

    /// Starts the task that moves `changed` while anyone watches (see the module docs),
    /// unless it runs.
    pub(super) fn poll_remote(self: &Arc<Self>) {
        if self.remote.is_some() && !self.polling.swap(true, Ordering::SeqCst) {
            tokio::spawn(poll(Arc::downgrade(self)));
        }
    }
}

/// Moves `changed` whenever a replica says the log's end moved, while anyone
/// watches and the partition is open.
async fn poll(partition: Weak<Partition>) {
    loop {
        let Some(partition) = partition.upgrade() else { return };
        if partition.changed.receiver_count() == 0 || partition.remote_open().is_err() {
            partition.polling.store(false, Ordering::SeqCst);
            // A watcher that came meanwhile saw the task running: run on for it.
            let watched = partition.changed.receiver_count() > 0 && partition.remote_open().is_ok();
            if !watched || partition.polling.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        let known = partition.remote_state().map_or(0, |state| state.log_end_offset.0);
        let wait_ms = REMOTE_READ_WAIT.as_millis() as u32;
        let started = tokio::time::Instant::now();
        let read = PeerRead::Records { offset: known, bytes_max: 0, wait_ms };
        if let Ok(answer) = partition.ask(read).await
            && answer.head.log_end_offset != known
        {
            partition.changed.send_replace(());
            continue;
        }
        drop(partition);
        tokio::time::sleep_until(started + REMOTE_POLL_INTERVAL).await;
    }
}

/// How a replica answers a read another node asks for its clients: as it would its own
/// client's read. A read at the log's end asked to wait waits for more records while fewer
/// than [`REMOTE_READS_WAITING_MAX`] do on this node (`waiting`).
pub(super) fn serve_reads(
    partition: Arc<Partition>,
    waiting: Arc<tokio::sync::Semaphore>,
) -> spool_replication::OnRead {
    Arc::new(move |read: PeerRead| {
        let (partition, waiting) = (partition.clone(), waiting.clone());
        Box::pin(async move {
            let refused = |error: ServiceError| {
                let status = crate::error::to_status(&error);
                ProposeError::Refused { code: status.code() as i32, message: error.to_string() }
            };
            let (next, bytes) = match read {
                PeerRead::Timestamp { timestamp_ms } => {
                    let found = partition.offset_for_timestamp(TimestampMs(timestamp_ms)).await;
                    (found.map_err(refused)?, Bytes::new())
                }
                PeerRead::Records { offset, bytes_max, wait_ms } => {
                    let offset = Offset(offset);
                    if wait_ms > 0
                        && let Ok(_permit) = waiting.try_acquire()
                    {
                        let wait = std::time::Duration::from_millis(u64::from(wait_ms));
                        let deadline = tokio::time::Instant::now() + wait;
                        let mut changes = partition.watch();
                        while partition.state().map_err(refused)?.log_end_offset <= offset {
                            let changed = tokio::time::timeout_at(deadline, changes.changed());
                            if !matches!(changed.await, Ok(Ok(()))) {
                                break;
                            }
                        }
                    }
                    match bytes_max {
                        0 => (offset, Bytes::new()),
                        _ => {
                            let read = partition.read(offset, bytes_max).await.map_err(refused)?;
                            (read.next_offset, read.bytes)
                        }
                    }
                }
            };
            let state = partition.state().map_err(refused)?;
            let head = ReadHead {
                next_offset: next.0,
                log_start_offset: state.log_start_offset.0,
                log_end_offset: state.log_end_offset.0,
                size_bytes: state.size_bytes,
            };
            Ok(ReadAnswer { head, bytes })
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
    })
}

// Bound the waiting reads: each holds a peer connection open on this node.
const _: () = assert!(REMOTE_READS_WAITING_MAX < crate::limits::PEER_CONNECTIONS_MAX / 4);
