//! Repairing this node's replicas of the cluster's own groups (the metadata, the consumer
//! groups' offsets) while it runs, as a partition's replica is repaired
//! (`partition::replicated`).
//!
//! Recovery at start puts a replica whose synced data is damaged under repair
//! (`SegmentLogStore::over`), but it checks only what the last shutdown did not vouch for.
//! Damage elsewhere is met by a read of the group's committed records
//! (`Cluster::read_committed`), by Raft's own reads of the log (`SegmentLogStore::on_damage`:
//! a leader reading entries to send, the state machine reading entries to apply), or by the
//! background scrub ([`Cluster::scrub_internal`]). Each hands it to [`ask`], and
//! [`repair_internal`] then stops the replica, puts it under repair as
//! recovery would (`repair.json`, its log cut back before the damaged segment) and starts it
//! again:
//!
//! - The replica copies what it lost from the group's leader, and votes in no election and
//!   stands for none until it has caught up with one.
//! - Its state machine applies its log again from the start, folding the group's state anew
//!   (`spool_replication::Fold::reset`).
//! - This node's readers of the group (its topics, its consumer groups) read on from where
//!   they stopped once the group's commit point passes it again, as after a restart.
//! - While it restarts, the node's own proposals to the group fail, and are answered as
//!   when no leader is known.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};

use spool_replication::SegmentLogStore;
use spool_storage::{Log, Offset, ReadError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use super::node::{METADATA_GROUP, OFFSETS_GROUP};
use crate::limits::SCRUB_READ_BYTES;
use crate::partition::scrub::{Scrubbed, read_through};

/// Damage found in this node's log of one of the cluster's own groups.
#[derive(Debug)]
pub(super) struct InternalDamage {
    group: &'static str,
    /// The damaged segment's log file.
    segment: PathBuf,
    description: String,
}

/// Reports `error` and asks `repairs` to repair this node's replica of `group` (one of the
/// cluster's own), when it is damage.
pub(super) fn ask(repairs: &mpsc::Sender<InternalDamage>, group: &'static str, error: &ReadError) {
    let ReadError::Damaged { path, .. } = error else { return };
    tracing::warn!(group, %error, "this node's log of one of the cluster's own groups is damaged: its replica is repaired from the others");
    let damage = InternalDamage { group, segment: path.clone(), description: error.to_string() };
    // Full: this group's repair is asked for already, and the other's.
    let _ = repairs.try_send(damage);
}

impl Cluster {
    /// Reads this node's logs of the cluster's own groups once, at most `rate` bytes a
    /// second, as a scrub reads a partition (`partition::scrub`): the bytes read, and how
    /// many of the logs met damage (each is repaired).
    pub(crate) async fn scrub_internal(
        &self,
        rate: Option<u64>,
        stop: &CancellationToken,
    ) -> (u64, usize) {
        let (mut bytes, mut damaged) = (0, 0);
        for group in [METADATA_GROUP, OFFSETS_GROUP] {
            let log = self.internal_replica(group).store().log().clone();
            let start = log
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(Log::log_start_offset);
            let Some(start) = start else { continue };
            let read = |offset: Offset| {
                let log = log.clone();
                async move {
                    let read = tokio::task::spawn_blocking(move || {
                        let log = log.read().unwrap_or_else(PoisonError::into_inner);
                        log.as_ref().map(|log| log.read(offset, SCRUB_READ_BYTES))
                    });
                    match read.await {
                        Ok(Some(read)) => Scrubbed::of(offset, read.as_ref(), |error| {
                            ask(&self.repairs, group, error);
                        }),
                        _ => Scrubbed::End,
                    }
                }
            };
            let (read, found) = read_through(start, rate, stop, read).await;
            bytes += read;
            damaged += usize::from(found);
            if stop.is_cancelled() {
                break;
            }
        }
        (bytes, damaged)
    }

    /// Stops this node's replica of `damage`'s group, puts it under repair and starts it
    /// again (see the module docs); nothing once the node is stopping. An error says what
    /// failed: putting it under repair (it started again as it was), or starting it again
    /// (it is not running).
    async fn repair(&self, damage: &InternalDamage) -> Result<(), String> {
        let group = damage.group;
        let _restarting = self.restarting.lock().await;
        if self.stop.is_cancelled() {
            return Ok(());
        }
        let log = self.internal_replica(group).store().log().clone();
        self.stop_replica(group).await;
        let (fs, dir) = (self.fs.clone(), self.internal_dir(group));
        let (segment, description) = (damage.segment.clone(), damage.description.clone());
        let marked = tokio::task::spawn_blocking(move || {
            let marked =
                SegmentLogStore::repair_damage(fs.as_ref(), &dir, &log, &description, &segment)
                    .map_err(|error| error.to_string());
            // The replica opens its log again as it starts.
            let taken = log.write().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(Err(error)) = taken.map(Log::close) {
                tracing::warn!(group, %error, "closing a damaged log before its repair failed");
            }
            marked
        });
        let marked = marked.await.map_err(|error| error.to_string())?;
        let (replica, _) = self.start_internal(group, Some(false)).await.map_err(|error| {
            format!("{error}; the node takes no part in the group until it is restarted")
        })?;
        *self.internal_slot(group).write().unwrap_or_else(PoisonError::into_inner) = Some(replica);
        marked.map_err(|error| {
            format!("putting it under repair failed: {error}; it started again as it was")
        })
    }
}

/// Repairs this node's replicas of the cluster's own groups as damage is found in their
/// logs, until the node stops (see the module docs). Damage found in a group while its
/// repair waited or ran was in the log the repair cut back, and is dropped. A group whose
/// repair failed is not repaired again in this run: it would fail again.
pub(super) async fn repair_internal(
    cluster: Arc<Cluster>,
    mut damages: mpsc::Receiver<InternalDamage>,
) {
    let mut pending = VecDeque::new();
    let mut failed = HashSet::new();
    loop {
        let damage = match pending.pop_front() {
            Some(damage) => damage,
            None => tokio::select! {
                () = cluster.stop.cancelled() => return,
                damage = damages.recv() => match damage {
                    Some(damage) => damage,
                    None => return,
                },
            },
        };
        if failed.contains(damage.group) {
            continue;
        }
        let group = damage.group;
        let repaired = cluster.repair(&damage).await;
        if cluster.stop.is_cancelled() {
            return;
        }
        match repaired {
            Ok(()) => tracing::warn!(
                group,
                "this node's replica of one of the cluster's own groups starts again under repair"
            ),
            Err(error) => {
                tracing::error!(group, %error, "repairing this node's replica of one of the cluster's own groups failed");
                failed.insert(group);
            }
        }
        while let Ok(queued) = damages.try_recv() {
            if queued.group != group {
                pending.push_back(queued);
            }
        }
    }
}
