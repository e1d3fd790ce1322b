//! `[listener.tls]`: certificate files → a rustls `ServerConfig`, at load time.
//!
//! Certificates are read when the configuration is loaded (and so again on every
//! reload): a missing, unparsable or mismatched file is a configuration error that
//! names the file, and the running configuration stays. Relative paths are relative to
//! the working directory. The result is immutable and lives in the snapshot; new
//! handshakes use the snapshot current at accept time, established connections keep
//! the one they started with.
//!
//! TLS 1.2 and 1.3 only, ALPN `h2`, `http/1.1` and `http/1.0`, certificates chosen by
//! SNI: an exact name, else the longest matching `*.` wildcard, else the default
//! certificate (also for clients that send no SNI).

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use toml::Spanned;

use super::raw::RawTls;
use super::{Invalid, duration_or, invalid};

const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's TLS settings, ready to accept with.
#[derive(Clone)]
pub struct TlsConfig {
    pub server: Arc<ServerConfig>,
    /// A client that has not finished its handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// `Strict-Transport-Security` value added to responses that lack one.
    pub hsts: Option<hyper::header::HeaderValue>,
    /// For the summary: the default certificate's file, the SNI names, client
    /// verification and HSTS.
    pub describe: String,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

/// The crypto provider tether uses (ring: no C toolchain beyond a C compiler needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn build_tls(t: RawTls) -> Result<TlsConfig, Invalid> {
    let provider = provider();
    let default = certified_key(&t.cert, &t.key, &provider)?;
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut names = Vec::new();
    for sni in &t.sni {
        let key = certified_key(&sni.cert, &sni.key, &provider)?;
        if sni.server_names.is_empty() {
            return invalid(
                sni.cert.span(),
                "an [[listener.tls.sni]] entry needs `server_names`",
            );
        }
        for name in &sni.server_names {
            let n = name.get_ref().to_ascii_lowercase();
            let (map, k) = match n.strip_prefix("*.") {
                Some(suffix) => (&mut wildcard, suffix.to_owned()),
                None => (&mut exact, n.clone()),
            };
            // What a ClientHello can carry: a DNS name (so no `*` but a leading `*.`).
            if DnsName::try_from(k.as_str()).is_err() {
                return invalid(
                    name.span(),
                    format!("server name `{n}` is not a DNS name, or `*.` and a DNS name"),
                );
            }
            if map.insert(k, key.clone()).is_some() {
                return invalid(name.span(), format!("server name `{n}` is listed twice"));
            }
            names.push(n);
        }
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Invalid {
            span: t.cert.span(),
            message: e.to_string(),
        })?;
    let builder = match &t.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error(ca, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(SniResolver {
        exact,
        wildcard,
        default,
    }));
    // `http/1.0` too, as nginx offers: rustls refuses a client whose every offer is
    // unknown, where OpenSSL-based servers go on without ALPN.
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    let hsts = match &t.hsts {
        None => None,
        Some(v) => Some(
            hyper::header::HeaderValue::from_str(v.get_ref()).map_err(|_| Invalid {
                span: v.span(),
                message: "`hsts` is a header value, e.g. \"max-age=31536000\"".into(),
            })?,
        ),
    };
    let describe = describe(&t, &names);
    Ok(TlsConfig {
        server: Arc::new(server),
        handshake_timeout: duration_or(t.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT)?,
        hsts,
        describe,
    })
}

/// The one-line summary `tether check` prints for a TLS listener.
fn describe(t: &RawTls, names: &[String]) -> String {
    let mut d = format!("cert {}", t.cert.get_ref());
    if !names.is_empty() {
        d += &format!(", SNI: {}", names.join(", "));
    }
    if let Some(ca) = &t.client_ca {
        d += &format!(", client certificates from {}", ca.get_ref());
    }
    if let Some(hsts) = &t.hsts {
        d += &format!(", HSTS {}", hsts.get_ref());
    }
    d
}

fn file_error(path: &Spanned<String>, why: impl fmt::Display) -> Invalid {
    Invalid {
        span: path.span(),
        message: format!("`{}`: {why}", path.get_ref()),
    }
}

fn read_certs(path: &Spanned<String>) -> Result<Vec<CertificateDer<'static>>, Invalid> {
    let bytes = fs::read(Path::new(path.get_ref()))
        .map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "contains no certificate"));
    }
    Ok(certs)
}

/// A certificate chain and its key (PKCS#8, RSA or SEC1 PEM), checked to match.
fn certified_key(
    cert: &Spanned<String>,
    key: &Spanned<String>,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, Invalid> {
    let chain = read_certs(cert)?;
    let bytes = fs::read(Path::new(key.get_ref()))
        .map_err(|e| file_error(key, format!("cannot read: {e}")))?;
    // `BEGIN ENCRYPTED PRIVATE KEY` (PKCS#8) or `Proc-Type: 4,ENCRYPTED` (OpenSSL's
    // older PEM encryption).
    if bytes.windows(b"ENCRYPTED".len()).any(|w| w == b"ENCRYPTED") {
        return Err(file_error(
            key,
            "is encrypted; tether needs the key unencrypted (`openssl pkey -in KEY -out PLAIN`)",
        ));
    }
    let der = PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_error(key, format!("no usable private key: {e}")))?;
    let ck = CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        file_error(
            key,
            format!(
                "does not fit certificate `{}`, or is not an RSA, ECDSA or Ed25519 key: {e}",
                cert.get_ref()
            ),
        )
    })?;
    Ok(Arc::new(ck))
}

/// Picks the certificate for a ClientHello's SNI; see the module doc.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        // A fully qualified `a.example.com.` is `a.example.com`, as routing takes it.
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.clone());
        }
        // `a.b.example.com` tries `b.example.com`, then `example.com`.
        let mut rest = name.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return Some(k.clone());
            }
            rest = parent;
        }
        Some(self.default.clone())
    }
}
