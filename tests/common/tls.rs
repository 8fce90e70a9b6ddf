//! Certificates the tests make (rcgen): a CA, a server certificate and a client one; and a
//! cluster's: a CA and a certificate for each node's peer address.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use spool_server::TlsConfig;
use spool_server::cluster::PeerTls;

/// A CA, and certificates it signed for the server (localhost, 127.0.0.1) and a client.
pub struct Pki {
    pub ca_pem: String,
    pub server: (String, String),
    pub client: (String, String),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate and key (PEM) `ca` signed for `names` (host names or IP addresses).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>, names: Vec<String>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(names).unwrap().signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn pki() -> Pki {
    let ca = ca("Spool test CA");
    let leaf = |names: Vec<String>| leaf(&ca, names);
    Pki {
        ca_pem: ca.pem(),
        server: leaf(vec!["localhost".into(), "127.0.0.1".into()]),
        client: leaf(vec!["client.example".into()]),
    }
}

pub fn tls(pki: &Pki, mutual: bool) -> TlsConfig {
    TlsConfig {
        cert_pem: pki.server.0.clone().into_bytes(),
        key_pem: pki.server.1.clone().into_bytes(),
        client_ca_pem: mutual.then(|| pki.ca_pem.clone().into_bytes()),
    }
}

/// A cluster's CA, and the peer TLS of node `id` at 127.0.0.`id`.
pub struct PeerPki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl PeerPki {
    pub fn new() -> PeerPki {
        PeerPki { ca: ca("Spool test cluster CA") }
    }

    /// Node `id`'s certificate, naming 127.0.0.`id`, and the cluster's CA.
    pub fn node(&self, id: u64) -> PeerTls {
        let (cert, key) = leaf(&self.ca, vec![format!("127.0.0.{id}")]);
        PeerTls { cert_pem: cert.into(), key_pem: key.into(), ca_pem: self.ca.pem().into() }
    }

    /// Node `id`'s certificate, trusting only another CA.
    pub fn distrustful(&self, id: u64) -> PeerTls {
        PeerTls { ca_pem: ca("Another CA").pem().into(), ..self.node(id) }
    }

    /// A certificate another CA signed for 127.0.0.9, trusting this cluster's CA.
    pub fn stranger(&self) -> PeerTls {
        let (cert, key) = leaf(&ca("Another CA"), vec!["127.0.0.9".into()]);
        PeerTls { cert_pem: cert.into(), key_pem: key.into(), ca_pem: self.ca.pem().into() }
    }
}
