//! A cluster's configuration as `spool serve` takes it, checked before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// This node's place in a cluster: its id, every node's peer address (its own too) and the
/// peer listener's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterOptions {
    pub node_id: u64,
    /// Every node's peer listener (Raft traffic), by node id.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// `None`: the peer listener speaks plain TCP, and every peer address is on loopback.
    pub tls: Option<PeerTls>,
    /// Whether this node hands each group it leads back to the group's preferred leader once
    /// that node has caught up (on by default; Kafka's `auto.leader.rebalance.enable`). Off,
    /// leaders stay where elections put them until asked (Kafka's ElectLeaders).
    pub hand_back_leaders: bool,
}

/// Mutual TLS between nodes: this node's certificate chain and key (PEM), which it presents
/// both when it listens and when it calls a peer, and the CA that signed every node's
/// certificate. A node accepts only callers whose certificate chains to the CA, and calls
/// only peers whose certificate does and names the peer address's IP (a subject alternative
/// name), so a certificate is needed per node (or one naming every node's IP).
///
/// With `crl_pem`, the CA's certificate revocation list (PEM), a node also refuses a peer
/// whose certificate it lists, both ways: revoking a retired node's certificate does not
/// need a new CA. With `crl_path` too (the file `crl_pem` was read from), the node reads
/// the list again whenever the file changes (see `Cluster::reload_peer_crl`).
#[derive(Clone, PartialEq, Eq)]
pub struct PeerTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
    pub crl_pem: Option<Vec<u8>>,
    pub crl_path: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"(hidden)")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .field("crl_pem", &self.crl_pem.as_ref().map(|crl| format!("{} bytes", crl.len())))
            .field("crl_path", &self.crl_path)
            .finish()
    }
}

impl PeerTls {
    /// The listening side: a caller must present a certificate that chains to the CA.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        let listener = crate::TlsConfig {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            client_ca_pem: Some(self.ca_pem.clone()),
        };
        listener.acceptor_revoking(self.crls()?)
    }

    fn crls(
        &self,
    ) -> Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>, String> {
        self.crl_pem.as_deref().map_or(Ok(Vec::new()), crate::serving::tls_crls)
    }

    /// The calling side: presents this node's certificate and trusts only the CA.
    pub fn connector(&self) -> Result<tokio_rustls::TlsConnector, String> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let roots = crate::serving::tls_roots(&self.ca_pem, "the CA")?;
        let (certs, key) = crate::serving::tls_identity(&self.cert_pem, &self.key_pem)?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .with_crls(self.crls()?)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| format!("the CA is not usable: {e}"))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("the certificate and key do not make a TLS identity: {e}"))?;
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)))
    }
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
        "node {id}'s peer address {address} is not a loopback address, and the peer listener has no TLS: set peer_tls_cert, peer_tls_key and peer_tls_ca (mutual TLS between nodes), or run the cluster on one machine (127.0.0.1, 127.0.0.2, ...)"
    )]
    NotLoopback { id: u64, address: SocketAddr },
    #[error("the peer TLS configuration is not usable: {0}")]
    PeerTls(String),
    #[error("peer {entry:?} is not ID=IP:PORT (for example 2=127.0.0.2:7071)")]
    BadPeer { entry: String },
    #[error("node {id}'s peer address {address} is also the gRPC listener's address")]
    PeerIsGrpc { id: u64, address: SocketAddr },
}

impl ClusterOptions {
    /// Checks a cluster's configuration: ids from 1, each once, this node's among them,
    /// every address its own, and on loopback unless `tls` secures the peer listener.
    pub fn new(
        node_id: u64,
        peers: &[(u64, SocketAddr)],
        tls: Option<PeerTls>,
    ) -> Result<ClusterOptions, ClusterConfigError> {
        if let Some(tls) = &tls {
            tls.acceptor().map_err(ClusterConfigError::PeerTls)?;
            tls.connector().map_err(ClusterConfigError::PeerTls)?;
        }
        let mut map = BTreeMap::new();
        for &(id, address) in peers {
            if id == 0 || node_id == 0 {
                return Err(ClusterConfigError::ZeroId);
            }
            if map.insert(id, address).is_some() {
                return Err(ClusterConfigError::DuplicateId { id });
            }
            if tls.is_none() && !address.ip().is_loopback() {
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
        Ok(ClusterOptions { node_id, peers: map, tls, hand_back_leaders: true })
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
            ClusterOptions::new(2, &three, None).unwrap().own_peer_address().to_string(),
            "127.0.0.2:7071"
        );
        let refused = |node_id, text: &str| {
            ClusterOptions::new(node_id, &peers(text), None).unwrap_err().to_string()
        };
        assert!(
            refused(4, "1=127.0.0.1:7071,2=127.0.0.2:7071")
                .contains("id 4 is not among the peers (1, 2)")
        );
        assert!(refused(1, "1=127.0.0.1:7071,1=127.0.0.2:7071").contains("node 1 is listed twice"));
        assert!(refused(1, "1=127.0.0.1:7071,2=127.0.0.1:7071").contains("the same peer address"));
        assert!(refused(1, "1=10.0.0.1:7071").contains("not a loopback address"));
        assert!(refused(1, "1=10.0.0.1:7071").contains("set peer_tls_cert, peer_tls_key and"));
        let garbage = PeerTls {
            cert_pem: b"x".to_vec(),
            key_pem: b"y".to_vec(),
            ca_pem: vec![],
            crl_pem: None,
            crl_path: None,
        };
        let garbled = ClusterOptions::new(1, &peers("1=10.0.0.1:7071"), Some(garbage.clone()));
        let garbled = garbled.unwrap_err().to_string();
        assert!(garbled.contains("the peer TLS configuration is not usable"), "{garbled}");
        assert!(format!("{garbage:?}").contains("key_pem: \"(hidden)\""), "{garbage:?}");
        assert!(refused(0, "0=127.0.0.1:7071").contains("ids start at 1"));
        let bad = ClusterOptions::parse_peers("1=127.0.0.1").unwrap_err().to_string();
        assert!(bad.contains("is not ID=IP:PORT"), "{bad}");
    }
}
