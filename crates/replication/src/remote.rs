//! A group this node holds no replica of, as seen from this node: a cluster whose topics are
//! replicated on fewer nodes than it has still takes every request on every node, and a node
//! that holds no replica of a partition passes its batches to the partition's leader.
//!
//! It reads for its clients through the replicas too ([`Remote::read`]), so a client may
//! read any partition from any node, at the cost of a hop.
//!
//! It learns the leader from the replicas: each answers `ReadIndex` with its commit point if
//! it leads (confirmed with a quorum) or names the leader it knows of. The answer is kept
//! until a call fails; batches passed to a node that no longer leads come back `NotLeader`,
//! naming the new leader, and nothing of them was stored, so they go there.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::limits::{ELECTION_TIMEOUT_MAX, REMOTE_LEADER_RETRY};
use crate::replica::{ask_hand_back, ask_read_index, pass_in_order};
use crate::rpc::{self, PeerRead, ReadAnswer, Request};
use crate::{HandOverError, NodeId, ProposeError, Proposed, Transport};

/// A group this node holds no replica of (see the module docs).
pub struct Remote {
    group: Arc<str>,
    transport: Arc<dyn Transport>,
    /// The group's replicas (id and peer address), its preferred leader first.
    replicas: Vec<(NodeId, String)>,
    /// The leader as last heard, and when.
    leader: Mutex<Option<(NodeId, String, Instant)>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("group", &self.group).finish()
    }
}

impl Remote {
    /// The group `group`, held by `replicas` (id and peer address, its preferred leader
    /// first), reached through `transport`.
    pub fn new(
        group: &str,
        replicas: Vec<(NodeId, String)>,
        transport: Arc<dyn Transport>,
    ) -> Remote {
        Remote { group: group.into(), transport, replicas, leader: Mutex::new(None) }
    }

    /// The nodes that hold the group.
    pub fn replicas(&self) -> Vec<NodeId> {
        self.replicas.iter().map(|(id, _)| *id).collect()
    }

    /// The leader as last heard (`None` before the first answer, and after a failed call).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let leader = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        leader.as_ref().map(|(id, address, _)| (*id, address.clone()))
    }

    /// Whether a replica named the leader within `age`: what this node names as the leader
    /// to its clients (who go there) should be no older.
    pub fn leader_heard_within(&self, age: Duration) -> bool {
        let leader = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        leader.as_ref().is_some_and(|(_, _, heard)| heard.elapsed() <= age)
    }

    /// The replicas, the leader as last heard first.
    fn leader_first(&self) -> Vec<(NodeId, String)> {
        let leader = self.leader();
        let others =
            self.replicas.iter().filter(|(id, _)| Some(*id) != leader.as_ref().map(|l| l.0));
        leader.clone().into_iter().chain(others.cloned()).collect()
    }

    fn set_leader(&self, leader: Option<(NodeId, String)>) {
        let heard = leader.map(|(id, address)| (id, address, Instant::now()));
        *self.leader.lock().unwrap_or_else(PoisonError::into_inner) = heard;
    }

    /// Asks the replicas who leads, each in turn (the one last heard of first), within
    /// `timeout` per question: the first that leads, or that names a leader, settles it.
    /// `None` when none does (an election is on, or none answered).
    pub async fn find_leader(&self, timeout: Duration) -> Option<(NodeId, String)> {
        for (id, address) in self.leader_first() {
            match ask_read_index(self.transport.as_ref(), &self.group, (id, &address), timeout)
                .await
            {
                Ok(_) => {
                    self.set_leader(Some((id, address.clone())));
                    return Some((id, address));
                }
                Err(ProposeError::NotLeader { leader: Some(leader) }) => {
                    self.set_leader(Some(leader.clone()));
                    return Some(leader);
                }
                Err(_) => {}
            }
        }
        self.set_leader(None);
        None
    }

    /// Asks the group's leader to hand it back to its preferred leader now, within `timeout`
    /// ([`crate::Replica::hand_back_now`]).
    pub async fn hand_back(&self, timeout: Duration) -> Result<Option<NodeId>, HandOverError> {
        let leader = match self.leader() {
            Some(leader) => Some(leader),
            None => self.find_leader(ELECTION_TIMEOUT_MAX).await,
        };
        let leader = leader.ok_or(HandOverError::NoLeader)?;
        let handed = ask_hand_back(self.transport.as_ref(), &self.group, leader, timeout).await;
        if handed.is_err() {
            self.set_leader(None);
        }
        handed
    }

    /// Asks a replica to read for this node's clients: the leader as last heard first, then
    /// each replica in turn (a read changes nothing, so one that gets no answer is asked of
    /// the next). A refusal by the replica's owner (an offset out of range, say) stands.
    /// Each question is given `timeout`, beside the time the read may wait.
    pub async fn read(
        &self,
        read: PeerRead,
        timeout: Duration,
    ) -> Result<ReadAnswer, ProposeError> {
        let timeout = timeout
            + match read {
                PeerRead::Records { wait_ms, .. } => Duration::from_millis(u64::from(wait_ms)),
                PeerRead::Timestamp { .. } => Duration::ZERO,
            };
        let leader = self.leader();
        let mut last = ProposeError::NotLeader { leader: None };
        for (id, address) in &self.leader_first() {
            let message = rpc::encode_request(&Request::Read(read.clone()));
            let call = self.transport.call(*id, address, &self.group, message, timeout);
            let answer = match call.await {
                Ok(answer) => rpc::decode_read_answer(answer),
                Err(error) => {
                    // Ask it who leads again before it is tried first again.
                    if leader.as_ref().is_some_and(|leader| leader.0 == *id) {
                        self.set_leader(None);
                    }
                    last = ProposeError::Unreachable(error.to_string());
                    continue;
                }
            };
            match answer {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(refused @ ProposeError::Refused { .. })) => return Err(refused),
                Ok(Err(error)) => last = error,
                Err(invalid) => last = ProposeError::Unreachable(invalid.to_string()),
            }
        }
        Err(last)
    }

    /// Passes `batches` to the group's leader in one message, to be handled there in the
    /// order given ([`crate::Replica::on_forwarded`]), and answers each. While no leader is
    /// known, or the node asked no longer leads (nothing was stored), it finds the leader
    /// and tries again, for up to `patience` in all.
    pub async fn forward_in_order(&self, batches: Vec<Bytes>, patience: Duration) -> Vec<Proposed> {
        let deadline = tokio::time::Instant::now() + patience;
        let lookup = ELECTION_TIMEOUT_MAX;
        loop {
            let leader = match self.leader() {
                Some(leader) => Some(leader),
                None => self.find_leader(lookup).await,
            };
            let out_of_time = tokio::time::Instant::now() >= deadline;
            let Some(leader) = leader else {
                if out_of_time {
                    return vec![Err(ProposeError::NotLeader { leader: None }); batches.len()];
                }
                tokio::time::sleep(REMOTE_LEADER_RETRY).await;
                continue;
            };
            let answers =
                pass_in_order(self.transport.as_ref(), &self.group, leader, batches.clone()).await;
            let named = answers.iter().find_map(|answer| match answer {
                Err(ProposeError::NotLeader { leader }) => Some(leader.clone()),
                _ => None,
            });
            let none_taken =
                answers.iter().all(|answer| matches!(answer, Err(ProposeError::NotLeader { .. })));
            match named {
                // The node asked does not lead: nothing was stored, go where it says.
                Some(named) if none_taken && !out_of_time => {
                    let wait = named.is_none();
                    self.set_leader(named);
                    if wait {
                        tokio::time::sleep(REMOTE_LEADER_RETRY).await;
                    }
                    continue;
                }
                _ => {}
            }
            // A refusal or a lost call may mean leadership moved: look again next time.
            if answers.iter().any(Result::is_err) {
                self.set_leader(None);
            }
            return answers;
        }
    }
}
