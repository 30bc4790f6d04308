//! The server certificate: from PEM files (re-read when they change, so a certificate that
//! cert-manager or the kubelet rotates is picked up without a restart), or self-signed and
//! generated at start when none is given, as controller-runtime's secure metrics do.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sharedip_process::sync::lock;

/// How often the certificate files are checked for a change (at most, on a handshake).
const RECHECK: Duration = Duration::from_secs(10);

/// Where the server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// Generated at start: self-signed, for these DNS names / IP addresses (in addition to
    /// `localhost`, 127.0.0.1 and ::1). Clients skip verification (Prometheus'
    /// `insecureSkipVerify`, the kubelet's HTTPS probes); the bearer token is still encrypted.
    SelfSigned {
        /// Extra subject alternative names.
        names: Vec<String>,
    },
    /// A PEM certificate chain and its PEM private key (PKCS#8, PKCS#1 or SEC1).
    Files {
        /// Certificate chain, leaf first (e.g. `tls.crt` of a `kubernetes.io/tls` Secret).
        cert: PathBuf,
        /// Private key (e.g. `tls.key`).
        key: PathBuf,
    },
}

/// Why HTTPS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    #[error("the private key in {key} does not fit the certificate in {cert}: {detail}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("the system's random number generator failed")]
    Random,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls server configuration for `source`: TLS 1.2 and 1.3 with rustls' safe defaults,
/// HTTP/1.1 only, no client certificates.
pub fn server_config(source: &CertSource) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let resolver: Arc<dyn ResolvesServerCert> = match source {
        CertSource::SelfSigned { names } => {
            Arc::new(Fixed(Arc::new(self_signed(names, &provider)?)))
        }
        CertSource::Files { cert, key } => {
            Arc::new(FileResolver::new(cert, key, provider.clone())?)
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed certificate (ECDSA P-256) for `localhost`, the loopback addresses and `names`.
fn self_signed(names: &[String], provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for n in names {
        if !n.is_empty() && !sans.contains(n) {
            sans.push(n.clone());
        }
    }
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let mut params = rcgen::CertificateParams::new(sans).map_err(generate)?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map_or("sharedip", String::as_str),
    );
    let cert = params.self_signed(&key).map_err(generate)?;
    CertifiedKey::from_der(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        provider,
    )
    .map_err(|e| TlsError::Generate(e.to_string()))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads and checks a certificate chain and its key.
pub fn load_files(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let private = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| pem(key, e))?;
    CertifiedKey::from_der(chain, private, provider).map_err(|e| TlsError::KeyMismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        detail: e.to_string(),
    })
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Modification times of the two files: a change of either (a new file behind the symlinks
/// of a Secret volume, or a rewrite) means "load again".
type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert), mtime(key))
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: Stamp,
    checked: Instant,
}

/// Serves the certificate of two files and loads them again when they change. A pair that
/// does not load (a rotation caught half-way, a key that does not match) keeps the previous
/// certificate in use and is retried at the next check.
#[derive(Debug)]
struct FileResolver {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

impl FileResolver {
    fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let stamp = stamp(cert, key);
        let certified = load_files(cert, key, &provider)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            loaded: Mutex::new(Loaded {
                key: Arc::new(certified),
                stamp,
                checked: Instant::now(),
            }),
        })
    }
}

impl ResolvesServerCert for FileResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut loaded = lock(&self.loaded);
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let now = stamp(&self.cert, &self.key);
            if now != loaded.stamp {
                match load_files(&self.cert, &self.key, &self.provider) {
                    Ok(k) => {
                        loaded.key = Arc::new(k);
                        loaded.stamp = now;
                        tracing::info!(cert = %self.cert.display(), "serving the renewed TLS certificate");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot load the changed TLS certificate; serving the previous one");
                    }
                }
            }
        }
        Some(loaded.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_covers_loopback_and_names() {
        let p = provider();
        let k = self_signed(&["node-a".into(), "10.0.0.5".into()], &p).unwrap();
        assert!(k.keys_match().is_ok());
        assert_eq!(k.cert.len(), 1);
        assert!(server_config(&CertSource::SelfSigned { names: vec![] }).is_ok());
    }

    #[test]
    fn files_load_and_mismatches_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (c1, k1) = write("a.example");
        let (_, k2) = write("b.example");
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, &c1).unwrap();
        std::fs::write(&key, &k1).unwrap();
        let p = provider();
        assert!(load_files(&cert, &key, &p).is_ok());
        std::fs::write(&key, &k2).unwrap();
        assert!(matches!(
            load_files(&cert, &key, &p),
            Err(TlsError::KeyMismatch { .. })
        ));
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(matches!(
            load_files(&cert, &key, &p),
            Err(TlsError::NoCertificate { .. })
        ));
        assert!(matches!(
            load_files(&dir.path().join("missing"), &key, &p),
            Err(TlsError::Read { .. })
        ));
    }
}
