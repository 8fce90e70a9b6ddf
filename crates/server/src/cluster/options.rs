//! A cluster's configuration as `spool serve` takes it, checked before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// This node's place in a cluster: its id and every node's peer address (its own too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    pub node_id: u64,
    /// Every node's peer listener (Raft traffic), by node id.
    pub peers: BTreeMap<u64, SocketAddr>,
}

/// A cluster configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterConfigError {
    #[error("node ids start at 1; 0 is not a node id")]
    ZeroId,
    #[error("node {id} is listed twice in --peers")]
    DuplicateId { id: u64 },
    #[error(
        "this node's id {node_id} is not among the peers ({ids}); list every node, this one too"
    )]
    OwnIdMissing { node_id: u64, ids: String },
    #[error("nodes {first} and {second} have the same peer address {address}")]
    SameAddress { first: u64, second: u64, address: SocketAddr },
    #[error(
        "node {id}'s peer address {address} is not a loopback address: the peer listener has no TLS or authentication yet, so a cluster runs on one machine (127.0.0.1, 127.0.0.2, ...)"
    )]
    NotLoopback { id: u64, address: SocketAddr },
    #[error("peer {entry:?} is not ID=IP:PORT (for example 2=127.0.0.2:7071)")]
    BadPeer { entry: String },
    #[error("node {id}'s peer address {address} is also the gRPC listener's address")]
    PeerIsGrpc { id: u64, address: SocketAddr },
}

impl ClusterOptions {
    /// Checks a cluster's configuration: ids from 1, each once, this node's among them,
    /// every address its own and on loopback.
    pub fn new(
        node_id: u64,
        peers: &[(u64, SocketAddr)],
    ) -> Result<ClusterOptions, ClusterConfigError> {
        let mut map = BTreeMap::new();
        for &(id, address) in peers {
            if id == 0 || node_id == 0 {
                return Err(ClusterConfigError::ZeroId);
            }
            if map.insert(id, address).is_some() {
                return Err(ClusterConfigError::DuplicateId { id });
            }
            if !address.ip().is_loopback() {
                return Err(ClusterConfigError::NotLoopback { id, address });
            }
            if let Some((&first, _)) = map.iter().find(|(other, a)| **other != id && **a == address)
            {
                return Err(ClusterConfigError::SameAddress { first, second: id, address });
            }
        }
        if !map.contains_key(&node_id) {
            let ids = map.keys().map(u64::to_string).collect::<Vec<_>>().join(", ");
            return Err(ClusterConfigError::OwnIdMissing { node_id, ids });
        }
        Ok(ClusterOptions { node_id, peers: map })
    }

    /// Parses `--peers`: `ID=IP:PORT`, comma-separated.
    pub fn parse_peers(text: &str) -> Result<Vec<(u64, SocketAddr)>, ClusterConfigError> {
        text.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let bad = || ClusterConfigError::BadPeer { entry: entry.to_owned() };
                let (id, address) = entry.split_once('=').ok_or_else(bad)?;
                Ok((
                    id.trim().parse().map_err(|_| bad())?,
                    address.trim().parse().map_err(|_| bad())?,
                ))
            })
            .collect()
    }

    /// This node's peer address.
    pub fn own_peer_address(&self) -> SocketAddr {
        self.peers[&self.node_id]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(text: &str) -> Vec<(u64, SocketAddr)> {
        ClusterOptions::parse_peers(text).expect("parses")
    }

    #[test]
    fn a_cluster_configuration_is_checked() {
        let three = peers("1=127.0.0.1:7071, 2=127.0.0.2:7071,3=127.0.0.3:7071");
        assert_eq!(
            ClusterOptions::new(2, &three).unwrap().own_peer_address().to_string(),
            "127.0.0.2:7071"
        );
        let refused = |node_id, text: &str| {
            ClusterOptions::new(node_id, &peers(text)).unwrap_err().to_string()
        };
        assert!(
            refused(4, "1=127.0.0.1:7071,2=127.0.0.2:7071")
                .contains("id 4 is not among the peers (1, 2)")
        );
        assert!(refused(1, "1=127.0.0.1:7071,1=127.0.0.2:7071").contains("node 1 is listed twice"));
        assert!(refused(1, "1=127.0.0.1:7071,2=127.0.0.1:7071").contains("the same peer address"));
        assert!(refused(1, "1=10.0.0.1:7071").contains("not a loopback address"));
        assert!(refused(0, "0=127.0.0.1:7071").contains("ids start at 1"));
        let bad = ClusterOptions::parse_peers("1=127.0.0.1").unwrap_err().to_string();
        assert!(bad.contains("is not ID=IP:PORT"), "{bad}");
    }
}
