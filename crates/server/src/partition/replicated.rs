//! The writer of a replicated partition: each batch is proposed to the partition's Raft group
//! and answered once a majority of the replicas has it fsynced (`acks=all`, whatever the
//! topic's fsync policy: a replica fsyncs every append). With `acks=leader` (or `none`) a
//! batch that reaches the leader is answered once the leader's log has appended it, before
//! the fsync and before any follower has it; one passed on by another node is answered on
//! commit. Readers see the log up to the group's high watermark, which the replica moves as
//! it applies entries.
//!
//! # Any node takes writes
//!
//! A node that does not lead the partition passes each batch to the leader over the peer
//! listener and answers with the leader's answer: a client may produce to any node, at the
//! cost of one more hop than sending to the leader `describe` names. (A node that holds no
//! replica of the partition at all runs `super::remote` instead.)
//!
//! # Order
//!
//! A producer's batches in flight are stored in the order they came. The writer hands each
//! batch on in that order: an idempotent producer's to the sequence checker, a plain one's,
//! on the leader, straight to the replica's queue ([`Replica::propose_queued`]), and on a
//! follower to the passer, which passes every batch queued meanwhile to the leader in one
//! message ([`Replica::forward_in_order`]) and the next ones once that is answered. The
//! leader queues the batches a peer passed in the order given. A plain batch that meets a
//! leader change is tried again on its own ([`propose_plain`]), so while leadership moves a
//! plain producer's batches may be reordered; an idempotent producer's are not (below).
//!
//! # Idempotent producers
//!
//! The leader checks an idempotent producer's sequence before it proposes the batch, against
//! a [`ProducerTable`] rebuilt from the committed log whenever it starts to lead (after it has
//! applied every entry of earlier terms, [`Replica::linearize`]), and kept up to date with
//! each batch it commits. A retry that reaches a new leader after a failover is so recognised
//! as the batch the old leader committed, and answered with its offsets.
//!
//! The checker works in rounds: it takes every idempotent batch queued while the round before
//! was committed, checks them in the order they came against a table that holds every batch
//! before them, and proposes those to append in one entry
//! ([`Replica::propose_together`]), so they are committed all or none: a producer's batch is
//! never stored without the one before it. A follower passes a round to the leader in one
//! message ([`Replica::forward_in_order`]), which keeps the order. Other batches do not wait
//! for the checker.
//!
//! # Damage a read finds
//!
//! Recovery checks at start what the last shutdown did not vouch for, so damage in a sealed
//! segment may first be met by a read ([`Partition::read`]). The read asks this writer to
//! repair the replica: it stops the replica, puts it under repair as recovery would
//! (`SegmentLogStore::repair_damage`: `repair.json`, the log cut back before the damaged
//! segment) and starts it again. The replica copies what it lost from the leader and votes
//! in no election until it has; the read waits for it meanwhile.
//!
//! # Retention
//!
//! Every replica applies the topic's retention limits to its own log, at its start, every
//! [`RETENTION_CHECK_INTERVAL`] and when the limits change, through Raft ([`Replica::apply_retention`]): only whole
//! segments below the commit point go, and a follower that still needs what a leader
//! deleted catches up from the leader's snapshot of the partition's state and goes on from
//! there.
//!
//! When the leader fails to commit an idempotent producer's batch, or no leader is known, the
//! answer is `UNAVAILABLE`: the producer retries it, and the leader that takes the retry
//! answers it as a duplicate if it was committed after all. A plain producer's batch has no
//! such retry, so a node that knows no leader (an election is on) holds it until one is
//! elected, up to [`LEADER_ELECTION_PATIENCE`], before it answers `FAILED_PRECONDITION`
//! (nothing stored). `UNAVAILABLE` leaves it unknown whether it was stored.

use std::sync::Arc;

use bytes::Bytes;
use spool_broker::producer::{ProducerTable, Verdict};
use spool_proto::Acks;
use spool_replication::{
    OnCommit, OnDamage, OnForwarded, ProposeError, Proposed, Replica, SegmentLogStore,
};
use spool_storage::batch::CheckedBatch;
use spool_storage::{Appended, Log, Offset};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::remote::serve_reads;
use super::{AppendRequest, Damage, Partition, Reconfigure, blocking};
use crate::cluster::Cluster;
use crate::error::{ServiceError, to_status};
use crate::idempotence::{rebuild, sequenced};
use crate::limits::{
    LEADER_ELECTION_PATIENCE, LEADERSHIP_CONFIRM_TIMEOUT, RETENTION_CHECK_INTERVAL,
    RETENTION_SNAPSHOT_TIMEOUT, WRITER_QUEUE_DEPTH,
};

/// An idempotent producer's batch, for the partition's one sequence checker.
struct Sequenced {
    batch: CheckedBatch<Bytes>,
    /// Passed here by another node: never passed on again.
    forwarded: bool,
    reply: oneshot::Sender<Result<(Offset, Offset), ServiceError>>,
}

/// Runs until `stop`: starts the partition's replica, then proposes each queued batch. Hands
/// the log back once the replica has stopped.
pub(super) async fn run(
    partition: Arc<Partition>,
    mut queue: mpsc::Receiver<AppendRequest>,
    mut reconfigure: mpsc::Receiver<Reconfigure>,
    mut repairs: mpsc::Receiver<Damage>,
    cluster: Arc<Cluster>,
    stop: CancellationToken,
) -> Option<Log> {
    let group = format!("{}/{}", partition.topic, partition.id);
    let woken = partition.clone();
    let on_commit: OnCommit = Arc::new(move |_: Offset| {
        woken.changed.send_replace(());
    });
    // Damage Raft's own reads meet ends its task: the replica is repaired as for a read's.
    let damaged = Arc::downgrade(&partition);
    let named = group.clone();
    let on_damage: OnDamage = Arc::new(move |error| {
        tracing::warn!(group = %named, %error, "the partition's replica met damage in its log");
        if let Some(partition) = damaged.upgrade() {
            partition.repair_damage(error);
        }
    });
    let retention = Arc::new(tokio::sync::Notify::new());
    let in_flight = Arc::new(Semaphore::new(WRITER_QUEUE_DEPTH));
    'replica: loop {
        // One run of the replica, until the partition stops or a read finds damage.
        let running = stop.child_token();
        let started = cluster.start_partition(
            &group,
            partition.log.clone(),
            on_commit.clone(),
            on_damage.clone(),
            &partition.replicas,
        );
        let replica = match started.await {
            Ok(replica) => Some(replica),
            Err(error) => {
                tracing::error!(%group, %error, "the partition's replica did not start; it refuses writes");
                None
            }
        };
        partition.set_replica(replica.clone());
        partition.changed.send_replace(());
        let (checker, checker_queue) = mpsc::channel(WRITER_QUEUE_DEPTH);
        let (passer, passer_queue) = mpsc::channel(WRITER_QUEUE_DEPTH);
        if let Some(replica) = &replica {
            let (partition, replica, retention) =
                (partition.clone(), replica.clone(), retention.clone());
            tokio::spawn(check_sequences(
                partition.clone(),
                replica.clone(),
                checker_queue,
                running.clone(),
            ));
            tokio::spawn(pass_plain(
                partition.clone(),
                replica.clone(),
                passer_queue,
                running.clone(),
            ));
            let forwarded = take_forwarded(partition.clone(), replica.clone(), checker.clone());
            replica.on_forwarded(forwarded);
            replica.on_read(serve_reads(partition.clone(), cluster.reads_waiting()));
            tokio::spawn(retain(partition, replica, retention, running.clone()));
        }
        let damage = loop {
            let request = tokio::select! {
                () = stop.cancelled() => break None,
                Some(damage) = repairs.recv(), if replica.is_some() => break Some(damage),
                Some(request) = reconfigure.recv() => {
                    let _ = request.reply.send(change_retention(&partition, request.config));
                    retention.notify_one();
                    continue;
                }
                request = queue.recv() => match request {
                    Some(request) => request,
                    None => break None,
                },
            };
            let Some(replica) = replica.clone() else {
                let error = ServiceError::Cluster(format!("the replica of {group} did not start"));
                let _ = request.reply.send(Err(error));
                continue;
            };
            let AppendRequest { batch, acks, reply } = request;
            // Each kind of batch reaches where it goes in the order it came.
            let pending = if sequenced(&batch).is_some() {
                let (answer, answered) = oneshot::channel();
                let request = Sequenced { batch, forwarded: false, reply: answer };
                if checker.send(request).await.is_err() {
                    let _ = reply.send(Err(ServiceError::ShuttingDown));
                    continue;
                }
                Pending::Checked(answered)
            } else if replica.leading_term().is_some() {
                let kafka = batch.into_bytes();
                // Waits while the replica's queue is full, but not past a stop.
                let queued = tokio::select! {
                    () = stop.cancelled() => {
                        let _ = reply.send(Err(ServiceError::ShuttingDown));
                        break None;
                    }
                    queued = queue_here(&partition, &replica, kafka.clone(), acks) => queued,
                };
                Pending::Queued(queued, kafka)
            } else {
                let (answer, answered) = oneshot::channel();
                let request = Passing { kafka: batch.into_bytes(), reply: answer };
                if passer.send(request).await.is_err() {
                    let _ = reply.send(Err(ServiceError::ShuttingDown));
                    continue;
                }
                Pending::Passed(answered)
            };
            let Ok(permit) = in_flight.clone().acquire_owned().await else { break None };
            let (partition, cluster) = (partition.clone(), cluster.clone());
            tokio::spawn(async move {
                let not_leader = |error| cluster.not_leader(&partition.topic, partition.id, error);
                let proposed = match pending {
                    Pending::Checked(answered) => {
                        answered.await.unwrap_or(Err(ServiceError::ShuttingDown))
                    }
                    Pending::Queued(answered, kafka) => match answered.await {
                        // Leadership moved meanwhile: nothing was stored.
                        Err(ProposeError::NotLeader { .. }) => {
                            propose_plain(&partition, &replica, kafka).await
                        }
                        other => other,
                    }
                    .map_err(not_leader),
                    Pending::Passed(answered) => {
                        answered.await.unwrap_or_else(|_| Err(writer_stopped())).map_err(not_leader)
                    }
                };
                let answer = proposed.map(|(base, next)| Appended {
                    base_offset: base,
                    last_offset: Offset(next.0.saturating_sub(1)),
                    rolled: false,
                });
                let _ = reply.send(answer);
                drop(permit);
            });
        };
        running.cancel();
        partition.set_replica(None);
        cluster.stop_replica(&group).await;
        let Some(damage) = damage else { break 'replica };
        // Requests queued meanwhile name the log as it was before this repair (a read that
        // met the damage again): the cut below covers them, and a later cut would take
        // what the repaired replica copied back.
        while repairs.try_recv().is_ok() {}
        // The replica is stopped: cut its log back before the damaged segment and start it
        // again under repair (see `SegmentLogStore::over`).
        let repaired = partition.clone();
        let marked = blocking(move || {
            let dir = repaired.with_log(|log| Ok(log.dir().to_path_buf()))?;
            let fs = spool_storage::fs::StdFileSystem::shared();
            SegmentLogStore::repair_damage(
                fs.as_ref(),
                &dir,
                &repaired.log,
                &damage.description,
                &damage.segment,
            )
            .map_err(|error| ServiceError::Cluster(error.to_string()))
        })
        .await;
        match marked {
            Ok(()) => {
                tracing::warn!(%group, "a read found damage in this node's replica: it starts again under repair")
            }
            Err(error) => {
                tracing::error!(%group, %error, "a read found damage in this node's replica, and putting it under repair failed: it starts again as it was");
                partition.repair_failed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }
    partition.changed.send_replace(());
    partition.log.write().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}

/// Takes new settings for a replicated log: only its retention limits change (the edge
/// refuses the others, which every replica would have to apply alike).
pub(super) fn change_retention(
    partition: &Partition,
    config: spool_storage::LogConfig,
) -> Result<(), ServiceError> {
    let mut log = partition.log.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some(log) = log.as_mut() else { return Err(ServiceError::ShuttingDown) };
    if log.config().segment_bytes != config.segment_bytes {
        return Err(ServiceError::NotForReplicated { what: "changing a topic's segment size" });
    }
    log.set_retention(config.retention_ms, config.retention_bytes);
    Ok(())
}

/// Applies the partition's retention limits now, every [`RETENTION_CHECK_INTERVAL`] and
/// whenever `changed` is notified, until `stop` (see the module docs).
async fn retain(
    partition: Arc<Partition>,
    replica: Arc<Replica>,
    changed: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut timer = tokio::time::interval(RETENTION_CHECK_INTERVAL);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = timer.tick() => {}
            () = changed.notified() => {}
        }
        let now = spool_storage::TimestampMs::now();
        match replica.apply_retention(now, RETENTION_SNAPSHOT_TIMEOUT).await {
            Ok(None) => {}
            Ok(Some(index)) => {
                tracing::info!(topic = %partition.topic, partition = partition.id, index, "retention purged the replicated log");
                partition.changed.send_replace(());
            }
            Err(error) => {
                tracing::error!(topic = %partition.topic, partition = partition.id, %error, "retention failed");
            }
        }
    }
}

/// Proposes `kafka` through this replica (answered `NotLeader` where it does not lead), and
/// times the commit when it succeeds.
async fn propose_here(partition: &Partition, replica: &Replica, kafka: Bytes) -> Proposed {
    let started = std::time::Instant::now();
    let proposed = replica.propose(kafka).await;
    if proposed.is_ok() {
        partition.metrics.commit_took(started.elapsed());
    }
    proposed
}

/// Proposes a plain producer's batch here, or passes it to the leader. While no leader is
/// known (an election is on) nothing was stored: it waits for one, and tries again, for up
/// to [`LEADER_ELECTION_PATIENCE`].
async fn propose_plain(partition: &Partition, replica: &Replica, kafka: Bytes) -> Proposed {
    let attempt = || async {
        match propose_here(partition, replica, kafka.clone()).await {
            Err(ProposeError::NotLeader { leader: Some(_) }) => {
                partition.passing_on(1);
                replica.forward(kafka.clone()).await
            }
            other => other,
        }
    };
    replica.through_elections(LEADER_ELECTION_PATIENCE, attempt).await
}

/// What the leader does with batches another node passed to it, in order: a plain batch is
/// proposed, an idempotent producer's goes through the sequence checker. A refusal travels
/// back with its gRPC code, which the passing node answers with.
fn take_forwarded(
    partition: Arc<Partition>,
    replica: Arc<Replica>,
    checker: mpsc::Sender<Sequenced>,
) -> OnForwarded {
    Arc::new(move |batches: Vec<Bytes>| {
        let (partition, replica, checker) = (partition.clone(), replica.clone(), checker.clone());
        Box::pin(async move {
            // Each batch's answer: queued here, or from the checker. Idempotent producers'
            // batches reach the checker in the order given.
            let mut answers = Vec::with_capacity(batches.len());
            for kafka in batches {
                let batch = match CheckedBatch::check(kafka) {
                    Ok(batch) => batch,
                    Err(error) => {
                        let refused = ProposeError::Refused {
                            code: tonic::Code::InvalidArgument as i32,
                            message: format!("a peer passed a batch that does not check: {error}"),
                        };
                        answers.push(Forwarded::Done(Err(refused)));
                        continue;
                    }
                };
                if sequenced(&batch).is_none() {
                    let kafka = batch.into_bytes();
                    let queued = queue_here(&partition, &replica, kafka, Acks::All).await;
                    answers.push(Forwarded::Queued(queued));
                    continue;
                }
                let (answer, answered) = oneshot::channel();
                let request = Sequenced { batch, forwarded: true, reply: answer };
                match checker.send(request).await {
                    Ok(()) => answers.push(Forwarded::Checked(answered)),
                    Err(_) => answers.push(Forwarded::Done(Err(writer_stopped()))),
                }
            }
            let mut proposed = Vec::with_capacity(answers.len());
            for answer in answers {
                proposed.push(match answer {
                    Forwarded::Done(done) => done,
                    Forwarded::Queued(answered) => answered.await,
                    Forwarded::Checked(answered) => match answered.await {
                        Ok(answer) => answer.map_err(|error| {
                            let status = to_status(&error);
                            ProposeError::Refused {
                                code: status.code() as i32,
                                message: error.to_string(),
                            }
                        }),
                        Err(_) => Err(writer_stopped()),
                    },
                });
            }
            proposed
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Proposed>> + Send>>
    })
}

/// Where the answer to a batch a peer passed here comes from.
enum Forwarded {
    Done(Proposed),
    Queued(QueuedHere),
    Checked(oneshot::Receiver<Result<(Offset, Offset), ServiceError>>),
}

/// Where the answer to a producer's batch comes from.
enum Pending {
    /// The sequence checker.
    Checked(oneshot::Receiver<Result<(Offset, Offset), ServiceError>>),
    /// This replica, the leader, which queued it (the batch, should leadership move).
    Queued(QueuedHere, Bytes),
    /// The passer, which passed it to the leader.
    Passed(oneshot::Receiver<Proposed>),
}

/// A plain producer's batch for the partition's passer.
struct Passing {
    kafka: Bytes,
    reply: oneshot::Sender<Proposed>,
}

type QueuedHere = std::pin::Pin<Box<dyn std::future::Future<Output = Proposed> + Send>>;

/// Queues a batch for proposal here, in the order of the calls: answered once committed, or
/// with `acks` other than `All`, once this leader's log has appended it.
async fn queue_here(
    partition: &Arc<Partition>,
    replica: &Replica,
    kafka: Bytes,
    acks: Acks,
) -> QueuedHere {
    let started = std::time::Instant::now();
    let on_append = acks != Acks::All;
    let answered = replica.propose_queued(kafka, on_append).await;
    let partition = partition.clone();
    Box::pin(async move {
        let proposed = answered.await;
        if proposed.is_ok() && !on_append {
            partition.metrics.commit_took(started.elapsed());
        }
        proposed
    })
}

fn writer_stopped() -> ProposeError {
    ProposeError::Stopped("the partition's writer stopped".into())
}

/// The partition's sequence checker (see the module docs): takes the batches queued, checks
/// them in the order they came against the table and proposes those to append in one entry,
/// and takes the next round once that entry is answered.
async fn check_sequences(
    partition: Arc<Partition>,
    replica: Arc<Replica>,
    mut queue: mpsc::Receiver<Sequenced>,
    running: CancellationToken,
) {
    // The table and the term it was rebuilt for; `None` when it must be rebuilt.
    let mut table: Option<(u64, ProducerTable)> = None;
    // A batch that did not fit the round before.
    let mut left = None;
    let length = |sequenced: &Sequenced| sequenced.batch.bytes().len();
    while let Some(round) = next_round(&mut queue, &mut left, &running, length).await {
        let (batches, replies): (Vec<_>, Vec<_>) = round
            .into_iter()
            .map(|Sequenced { batch, forwarded, reply }| ((batch, forwarded), reply))
            .unzip();
        let answers = check_round(&partition, &replica, &mut table, batches).await;
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }
}

/// The next round of a queue: its first batch (`left` from the round before, or the next to
/// come) and every batch queued behind it that fits one entry with it; the first that does
/// not is `left` for the next. `None` once the queue closes or `running` is cancelled.
pub(super) async fn next_round<T>(
    queue: &mut mpsc::Receiver<T>,
    left: &mut Option<T>,
    running: &CancellationToken,
    length: impl Fn(&T) -> usize,
) -> Option<Vec<T>> {
    let first = match left.take() {
        Some(first) => first,
        None => tokio::select! {
            () = running.cancelled() => return None,
            next = queue.recv() => next?,
        },
    };
    let mut lengths = vec![length(&first)];
    let mut round = vec![first];
    while let Ok(next) = queue.try_recv() {
        lengths.push(length(&next));
        if !spool_replication::fits_one_entry(&lengths) {
            *left = Some(next);
            break;
        }
        round.push(next);
    }
    Some(round)
}

/// The partition's passer: on a follower, passes plain producers' batches to the leader in
/// rounds, each in one message, so that they reach it in the order they came. A batch the
/// leader could not take because leadership moved is proposed anew ([`propose_plain`]).
async fn pass_plain(
    partition: Arc<Partition>,
    replica: Arc<Replica>,
    mut queue: mpsc::Receiver<Passing>,
    running: CancellationToken,
) {
    let mut left = None;
    let length = |passing: &Passing| passing.kafka.len();
    while let Some(round) = next_round(&mut queue, &mut left, &running, length).await {
        let batches: Vec<Bytes> = round.iter().map(|passing| passing.kafka.clone()).collect();
        partition.passing_on(batches.len());
        let answers = replica.forward_in_order(batches).await;
        for (Passing { kafka, reply }, answer) in round.into_iter().zip(answers) {
            match answer {
                Err(ProposeError::NotLeader { .. }) => {
                    let (partition, replica) = (partition.clone(), replica.clone());
                    tokio::spawn(async move {
                        let _ = reply.send(propose_plain(&partition, &replica, kafka).await);
                    });
                }
                answer => {
                    let _ = reply.send(answer);
                }
            }
        }
    }
}

type SequencedAnswer = Result<(Offset, Offset), ServiceError>;

/// Checks a round of idempotent producers' batches (each with whether a peer passed it
/// here) and proposes those to append together; answers each, in order.
async fn check_round(
    partition: &Arc<Partition>,
    replica: &Replica,
    table: &mut Option<(u64, ProducerTable)>,
    batches: Vec<(CheckedBatch<Bytes>, bool)>,
) -> Vec<SequencedAnswer> {
    let unavailable = |error: ProposeError| match error {
        ProposeError::Refused { code, message } => ServiceError::Forwarded { code, message },
        other => ServiceError::Cluster(format!(
            "partition {} of {}: {other}; an idempotent producer retries the batch",
            partition.id, partition.topic
        )),
    };
    let leading = replica.leading_term();
    if leading.is_none() || leading != table.as_ref().map(|(term, _)| *term) {
        *table = None;
        let term = match replica.linearize(LEADERSHIP_CONFIRM_TIMEOUT).await {
            Ok(term) => term,
            Err(ProposeError::NotLeader { .. }) => {
                // Passed on in one message, so that they reach the leader's checker in order.
                // A peer passed those marked forwarded here: they go back refused.
                let forwarded: Vec<bool> =
                    batches.iter().map(|(_, forwarded)| *forwarded).collect();
                let passing: Vec<Bytes> = batches
                    .into_iter()
                    .filter(|(_, forwarded)| !forwarded)
                    .map(|(batch, _)| batch.into_bytes())
                    .collect();
                partition.passing_on(passing.len());
                let mut passed = match passing.is_empty() {
                    true => Vec::new(),
                    false => replica.forward_in_order(passing).await,
                }
                .into_iter();
                let not_leader = || ProposeError::NotLeader { leader: replica.leader() };
                return forwarded
                    .into_iter()
                    .map(|forwarded| match forwarded {
                        true => Err(unavailable(not_leader())),
                        false => {
                            passed.next().unwrap_or_else(|| Err(not_leader())).map_err(unavailable)
                        }
                    })
                    .collect();
            }
            Err(error) => {
                let status = to_status(&unavailable(error));
                return batches.iter().map(|_| Err(forwarded_status(&status))).collect();
            }
        };
        let rebuilt = partition.clone();
        let rebuilt = blocking(move || {
            rebuilt.with_log(|log| {
                rebuild(log).map_err(|e| ServiceError::read(&rebuilt.topic, rebuilt.id, e))
            })
        })
        .await;
        match rebuilt {
            Ok(rebuilt) => *table = Some((term, rebuilt)),
            Err(error) => {
                let status = to_status(&error);
                return batches.iter().map(|_| Err(forwarded_status(&status))).collect();
            }
        }
    }
    let Some((_, producers)) = table.as_mut() else {
        let error = || ServiceError::Internal("the producer table was not rebuilt".into());
        return batches.iter().map(|_| Err(error())).collect();
    };
    let stamps: Vec<_> = batches.iter().map(|(batch, _)| sequenced(batch)).collect();
    let verdicts = producers.check_group(&stamps);
    let appending: Vec<Bytes> = batches
        .into_iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| **verdict == Verdict::Append)
        .map(|((batch, _), _)| batch.into_bytes())
        .collect();
    let started = std::time::Instant::now();
    let mut proposed = match appending.is_empty() {
        true => Ok(Vec::new()),
        false => replica.propose_together(appending).await,
    };
    if proposed.is_ok() {
        partition.metrics.commit_took(started.elapsed());
    } else {
        // Whether they were committed is unknown: the next round starts from the log.
        *table = None;
    }
    let mut offsets = proposed.as_mut().map(|offsets| offsets.drain(..));
    let mut answers: Vec<SequencedAnswer> = Vec::with_capacity(verdicts.len());
    for (verdict, stamp) in verdicts.into_iter().zip(stamps) {
        let stamp = stamp.expect("only an idempotent producer's batch comes here");
        let answer = match verdict {
            Verdict::Append => match &mut offsets {
                Ok(offsets) => match offsets.next() {
                    Some((base, next)) => {
                        if let Some((_, producers)) = table.as_mut() {
                            producers.record(stamp, base, Offset(next.0.saturating_sub(1)));
                        }
                        Ok((base, next))
                    }
                    None => Err(ServiceError::Internal("a batch proposed went unanswered".into())),
                },
                Err(error) => Err(unavailable(error.clone())),
            },
            Verdict::Duplicate { base_offset, last_offset } => {
                Ok((base_offset, Offset(last_offset.0 + 1)))
            }
            Verdict::DuplicateInGroup { index } => match &answers[index] {
                Ok(offsets) => Ok(*offsets),
                Err(error) => Err(forwarded_status(&to_status(error))),
            },
            Verdict::Refuse(source) => Err(ServiceError::Sequence {
                topic: partition.topic.clone(),
                partition: partition.id,
                source,
            }),
        };
        answers.push(answer);
    }
    answers
}

/// An error answered to one batch, for another batch of the same round.
fn forwarded_status(status: &tonic::Status) -> ServiceError {
    ServiceError::Forwarded { code: status.code() as i32, message: status.message().to_owned() }
}
