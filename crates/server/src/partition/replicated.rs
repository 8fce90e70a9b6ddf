//! The writer of a replicated partition: each batch is proposed to the partition's Raft
//! group and answered once a majority of the replicas has it fsynced (whatever `acks` asked:
//! a replicated partition acknowledges nothing less). Readers see the log up to the group's
//! high watermark, which the replica moves as it applies entries.

use std::sync::Arc;

use spool_replication::OnCommit;
use spool_storage::{Appended, Log, Offset};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::{AppendRequest, Partition};
use crate::cluster::Cluster;
use crate::error::ServiceError;
use crate::limits::WRITER_QUEUE_DEPTH;

/// Runs until `stop`: starts the partition's replica, then proposes each queued batch. Hands
/// the log back once the replica has stopped.
pub(super) async fn run(
    partition: Arc<Partition>,
    mut queue: mpsc::Receiver<AppendRequest>,
    cluster: Arc<Cluster>,
    stop: CancellationToken,
) -> Option<Log> {
    let group = format!("{}/{}", partition.topic, partition.id);
    let woken = partition.clone();
    let on_commit: OnCommit = Arc::new(move |_: Offset| {
        woken.changed.send_replace(());
    });
    let replica = cluster.start_partition(&group, partition.log.clone(), on_commit).await;
    let replica = match replica {
        Ok(replica) => {
            let _ = partition.replica.set(replica.clone());
            Some(replica)
        }
        Err(error) => {
            tracing::error!(%group, %error, "the partition's replica did not start; it refuses writes");
            None
        }
    };
    let in_flight = Arc::new(Semaphore::new(WRITER_QUEUE_DEPTH));
    loop {
        let request = tokio::select! {
            () = stop.cancelled() => break,
            request = queue.recv() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let Some(replica) = replica.clone() else {
            let error = ServiceError::Cluster(format!("the replica of {group} did not start"));
            let _ = request.reply.send(Err(error));
            continue;
        };
        if request.batch.header().producer.producer_id >= 0 {
            let error = ServiceError::NotForReplicated { what: "idempotent producing" };
            let _ = request.reply.send(Err(error));
            continue;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let (partition, cluster) = (partition.clone(), cluster.clone());
        tokio::spawn(async move {
            let AppendRequest { batch, reply, .. } = request;
            let answer = match replica.propose(batch.into_bytes()).await {
                Ok((base, next)) => Ok(Appended {
                    base_offset: base,
                    last_offset: Offset(next.0.saturating_sub(1)),
                    rolled: false,
                }),
                Err(error) => Err(cluster.not_leader(&partition.topic, partition.id, error)),
            };
            let _ = reply.send(answer);
            drop(permit);
        });
    }
    cluster.stop_replica(&group).await;
    partition.changed.send_replace(());
    partition.log.write().unwrap_or_else(std::sync::PoisonError::into_inner).take()
}
