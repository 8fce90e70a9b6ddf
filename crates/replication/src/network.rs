//! How replicas reach each other. The server implements [`Transport`] over its internal
//! listener; tests route messages in process. What travels is bytes in this crate's encoding
//! ([`crate::rpc`]), so no openraft type leaves the crate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;

use crate::limits::APPEND_ENTRIES_BYTES_MAX;
use crate::rpc::{self, Request};
use crate::{NodeId, TypeConfig};

/// A call to a peer that got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached (refused, reset, unknown): try again later.
    #[error("node {node} at {address} is unreachable: {reason}")]
    Unreachable { node: NodeId, address: String, reason: String },
    /// The peer did not answer in time.
    #[error("node {node} at {address} did not answer within {timeout:?}")]
    Timeout { node: NodeId, address: String, timeout: Duration },
}

/// A boxed future of a call's answer.
pub type Call<'a> = Pin<Box<dyn Future<Output = Result<Bytes, TransportError>> + Send + 'a>>;

/// Carries a message for the Raft group `group` to node `target` (at `address`) and brings
/// back its answer, within `timeout`. The receiving side hands the message to the
/// [`crate::Replica`] of that group ([`crate::Replica::handle`]).
pub trait Transport: Send + Sync + 'static {
    fn call<'a>(
        &'a self,
        target: NodeId,
        address: &'a str,
        group: &'a str,
        message: Bytes,
        timeout: Duration,
    ) -> Call<'a>;
}

/// openraft's view of the network for one group.
pub(crate) struct Network {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) group: Arc<str>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            transport: self.transport.clone(),
            group: self.group.clone(),
            target,
            address: node.addr.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct Connection {
    transport: Arc<dyn Transport>,
    group: Arc<str>,
    target: NodeId,
    address: String,
}

impl Connection {
    /// Sends `request` and decodes the answer, mapping failures onto openraft's errors.
    async fn send<T, E>(
        &self,
        request: Request,
        option: &RPCOption,
    ) -> Result<T, RPCError<NodeId, BasicNode, E>>
    where
        T: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let message = rpc::encode_request(&request);
        let timeout = option.hard_ttl();
        let call = self.transport.call(self.target, &self.address, &self.group, message, timeout);
        let answer = match call.await {
            Ok(answer) => answer,
            Err(error) => return Err(RPCError::Unreachable(Unreachable::new(&error))),
        };
        match rpc::decode_response::<T, E>(&answer) {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(RPCError::RemoteError(RemoteError::new(self.target, error))),
            Err(invalid) => Err(RPCError::Network(NetworkError::new(&invalid))),
        }
    }
}

/// How many of `entries`, from the first, one AppendEntries carries: as many as fit in
/// [`APPEND_ENTRIES_BYTES_MAX`], and at least one. openraft sends the others after them when
/// told the payload is too large.
fn entries_that_fit(entries: &[openraft::Entry<TypeConfig>]) -> usize {
    let mut bytes = 0;
    let fit = entries
        .iter()
        .take_while(|entry| {
            bytes += rpc::entry_bytes(entry);
            bytes <= APPEND_ENTRIES_BYTES_MAX
        })
        .count();
    fit.max(1).min(entries.len())
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let fit = entries_that_fit(&request.entries);
        if fit < request.entries.len() {
            return Err(PayloadTooLarge::new_entries_hint(fit as u64).into());
        }
        self.send(Request::AppendEntries(request), &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Request::InstallSnapshot(request), &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(Request::Vote(request), &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Batch, log_id};
    use crate::limits::{ENTRY_HEAD_BYTES, ENTRY_KAFKA_BYTES_MAX};
    use openraft::{Entry, EntryPayload};

    fn entry(index: u64, kafka_bytes: usize) -> Entry<TypeConfig> {
        let batch = Batch::new(vec![Bytes::from(vec![0; kafka_bytes])], None);
        Entry { log_id: log_id(1, index), payload: EntryPayload::Normal(batch) }
    }

    #[test]
    fn an_append_carries_the_entries_that_fit_and_at_least_one() {
        let full = ENTRY_KAFKA_BYTES_MAX;
        let entries: Vec<_> = (1..=5).map(|index| entry(index, full)).collect();
        let fit = APPEND_ENTRIES_BYTES_MAX / (full + ENTRY_HEAD_BYTES);
        assert!(fit >= 1);
        assert_eq!(entries_that_fit(&entries), fit.min(5));
        assert_eq!(entries_that_fit(&entries[..1]), 1);
        let small: Vec<_> = (1..=8).map(|index| entry(index, 1024)).collect();
        assert_eq!(entries_that_fit(&small), 8);
        // One entry larger than the bound on its own still goes, alone.
        let huge = [entry(1, APPEND_ENTRIES_BYTES_MAX), entry(2, 1)];
        assert_eq!(entries_that_fit(&huge), 1);
        assert_eq!(entries_that_fit(&[]), 0);
    }
}
