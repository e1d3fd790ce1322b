//! A test certificate authority: certificates made at test time with rcgen, written as
//! PEM files for tether to load, and client configurations that trust them.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// A test CA and the certificates it issues, as PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate: its files and its DER (to recognise it on the wire).
pub struct Leaf {
    pub cert: String,
    pub key: String,
    pub der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tether test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        }
    }

    /// A certificate for `names` (DER and PEM) and its key.
    pub fn issue(
        &self,
        names: &[&str],
        client: bool,
    ) -> (CertificateDer<'static>, String, KeyPair) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if client {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.der().clone(), cert.pem(), key)
    }

    /// A server certificate for `names`, written as `stem.pem` (chain) and `stem.key`.
    pub fn leaf(&self, stem: &str, names: &[&str]) -> Leaf {
        let (der, pem, key) = self.issue(names, false);
        let cert = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert, pem + &self.ca.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert: path(&cert),
            key: path(&key_path),
            der,
        }
    }

    pub fn ca_file(&self) -> String {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, self.ca.pem()).unwrap();
        path(&p)
    }

    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        Arc::new(roots)
    }

    pub fn client_config(&self, alpn: &[&[u8]], client_cert: bool) -> Arc<ClientConfig> {
        let b = ClientConfig::builder_with_provider(tether::config::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots());
        let mut c = if client_cert {
            let (der, _, key) = self.issue(&["client.test"], true);
            let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            b.with_client_auth_cert(vec![der], key).unwrap()
        } else {
            b.with_no_client_auth()
        };
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

fn path(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}
