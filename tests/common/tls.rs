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
    /// The CA's revocation list every node's peer TLS takes, once one is made.
    crl: Option<String>,
    /// The file the nodes read it from again as it changes (see [`PeerPki::with_crl_file`]).
    crl_file: Option<std::path::PathBuf>,
}

/// The serial number of the certificates [`PeerPki::retired`] makes.
const RETIRED_SERIAL: u64 = 9_999;

impl PeerPki {
    pub fn new() -> PeerPki {
        PeerPki { ca: ca("Spool test cluster CA"), crl: None, crl_file: None }
    }

    /// The CA's revocation list: revoking the certificates [`PeerPki::retired`] makes, or
    /// nothing.
    fn crl(&self, revoking_retired: bool) -> String {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
        };
        let revoked = RevokedCertParams {
            serial_number: SerialNumber::from(RETIRED_SERIAL),
            revocation_time: rcgen::date_time_ymd(2026, 1, 1),
            reason_code: Some(rcgen::RevocationReason::Superseded),
            invalidity_date: None,
        };
        let list = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: SerialNumber::from(u64::from(revoking_retired) + 1),
            issuing_distribution_point: None,
            revoked_certs: if revoking_retired { vec![revoked] } else { Vec::new() },
            key_identifier_method: KeyIdMethod::Sha256,
        };
        list.signed_by(&self.ca).unwrap().pem().unwrap()
    }

    /// A cluster whose nodes read the CA's revocation list from `file`, which revokes
    /// nothing yet, and again whenever it changes ([`PeerPki::revoke_retired`]).
    pub fn with_crl_file(file: std::path::PathBuf) -> PeerPki {
        let mut pki = PeerPki::new();
        let crl = pki.crl(false);
        std::fs::write(&file, &crl).unwrap();
        pki.crl = Some(crl);
        pki.crl_file = Some(file);
        pki
    }

    /// Rewrites the revocation list's file to revoke the certificates
    /// [`PeerPki::retired`] makes.
    pub fn revoke_retired(&self) {
        let file = self.crl_file.as_ref().expect("a PKI made with_crl_file");
        std::fs::write(file, self.crl(true)).unwrap();
    }

    /// A cluster whose nodes take the CA's revocation list, which lists the certificates
    /// [`PeerPki::retired`] makes.
    pub fn revoking_retired() -> PeerPki {
        let mut pki = PeerPki::new();
        pki.crl = Some(pki.crl(true));
        pki
    }

    /// Node `id`'s certificate, naming 127.0.0.`id`, and the cluster's CA.
    pub fn node(&self, id: u64) -> PeerTls {
        let (cert, key) = leaf(&self.ca, vec![format!("127.0.0.{id}")]);
        self.with(cert, key)
    }

    fn with(&self, cert: String, key: String) -> PeerTls {
        PeerTls {
            cert_pem: cert.into(),
            key_pem: key.into(),
            ca_pem: self.ca.pem().into(),
            crl_pem: self.crl.clone().map(String::into_bytes),
            crl_path: self.crl_file.clone(),
        }
    }

    /// A certificate the CA signed for node `id` (127.0.0.`id`) before it was retired: the
    /// revocation list of [`PeerPki::revoking_retired`] lists it.
    pub fn retired(&self, id: u64) -> PeerTls {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![format!("127.0.0.{id}")]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(RETIRED_SERIAL));
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let tls = self.with(cert.pem(), key.serialize_pem());
        // It trusts the CA, but knows nothing of the revocation.
        PeerTls { crl_pem: None, crl_path: None, ..tls }
    }

    /// Node `id`'s certificate, trusting only another CA.
    pub fn distrustful(&self, id: u64) -> PeerTls {
        PeerTls { ca_pem: ca("Another CA").pem().into(), ..self.node(id) }
    }

    /// A certificate another CA signed for 127.0.0.9, trusting this cluster's CA.
    pub fn stranger(&self) -> PeerTls {
        let (cert, key) = leaf(&ca("Another CA"), vec!["127.0.0.9".into()]);
        self.with(cert, key)
    }
}
