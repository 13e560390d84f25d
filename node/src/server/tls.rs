//! TLS for both listeners and for outgoing partner connections: rustls with the ring provider,
//! TLS 1.3 only, ALPN `h2`, client certificates mandatory.
//!
//! Client certificates are checked by [`PeerVerifier`] at the handshake: the certificate's
//! `dccf:admin:` SAN names an administration, and the chain must lead to *that* administration's
//! CA — for the Exchange listener a partner CA from an active agreement, for the Gateway listener
//! this node's own CA. So a partner's CA can never vouch for another administration, and a
//! back-office certificate can never reach the Exchange service (roles are checked too).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};

use crate::identity::pki::{Role, cert_identity};

/// TLS setup errors; each names the file or peer concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("TLS file {path}: {detail}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A key file could not be read (the error names it).
    #[error(transparent)]
    Identity(crate::identity::IdentityError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A partner's endpoint or CA cannot be used.
    #[error("partner {admin}: {detail}")]
    Partner {
        /// The partner.
        admin: String,
        /// What is wrong.
        detail: String,
    },
}

/// The crypto provider of the whole node: ring. Installed as the process default once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = rustls::crypto::ring::default_provider();
            // Ignore "already installed": a test binary may have installed the same provider.
            let _ = p.clone().install_default();
            Arc::new(p)
        })
        .clone()
}

/// Installs the ring provider as the process-wide default (call once at start-up and in tests).
pub fn install_crypto_provider() {
    let _ = provider();
}

/// Reads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::File {
            path: path.to_owned(),
            detail: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::File {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: path.to_owned(),
            detail: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Reads a PEM private key, checking its file permissions first.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = crate::identity::keyfile::read_secret(path).map_err(TlsError::Identity)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::File {
        path: path.to_owned(),
        detail: format!("not a PEM private key ({e})"),
    })
}

/// Where the trusted CAs for a client certificate come from.
pub trait TrustSource: Send + Sync + std::fmt::Debug {
    /// CA certificates (DER) trusted to vouch for `admin` in `role`; empty means "reject".
    fn cas_for(&self, admin: &str, role: Role) -> Vec<Vec<u8>>;
}

/// A client-certificate verifier that binds the certificate's administration to its own CA.
#[derive(Debug)]
pub struct PeerVerifier {
    trust: Arc<dyn TrustSource>,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    /// A verifier over `trust`.
    pub fn new(trust: Arc<dyn TrustSource>) -> Self {
        PeerVerifier {
            trust,
            provider: provider(),
        }
    }
}

fn cert_err(detail: String) -> rustls::Error {
    rustls::Error::General(detail)
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let who =
            cert_identity(end_entity).map_err(|e| cert_err(format!("client certificate: {e}")))?;
        let cas = self.trust.cas_for(&who.admin, who.role);
        if cas.is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        }
        let anchors: Vec<_> = cas
            .iter()
            .filter_map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| cert_err(format!("client certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertExpired { .. } => {
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
            }
            webpki::Error::CertNotValidYet { .. } => {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)
            }
            webpki::Error::UnknownIssuer => {
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            }
            other => rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(other)),
            )),
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// How often a running node looks for a rotated node certificate (SIGHUP checks at once).
pub const RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The node's own certificate for both listeners, replaced in place when the files change
/// (`dccf-node cert rotate`): new handshakes get the new certificate, established connections
/// keep theirs until they close.
#[derive(Debug)]
pub struct ReloadingCert {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    current: std::sync::RwLock<(Arc<rustls::sign::CertifiedKey>, Vec<u8>)>,
}

impl ReloadingCert {
    /// Loads the certificate chain and key files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let (certified, pem) = Self::read(cert_path, key_path)?;
        Ok(Arc::new(ReloadingCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: std::sync::RwLock::new((certified, pem)),
        }))
    }

    fn read(
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(Arc<rustls::sign::CertifiedKey>, Vec<u8>), TlsError> {
        let pem = std::fs::read(cert_path).map_err(|e| TlsError::File {
            path: cert_path.to_owned(),
            detail: e.to_string(),
        })?;
        let chain = load_certs(cert_path)?;
        let key = load_key(key_path)?;
        let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider())?;
        Ok((Arc::new(certified), pem))
    }

    /// The certificate chain and key in use (for outgoing connections).
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Re-reads the files; `Ok(true)` if a different certificate was loaded. A pair that does
    /// not load or match (a rotation half done) is an error and the current one stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let on_disk = std::fs::read(&self.cert_path).map_err(|e| TlsError::File {
            path: self.cert_path.clone(),
            detail: e.to_string(),
        })?;
        if on_disk == self.current.read().unwrap_or_else(|e| e.into_inner()).1 {
            return Ok(false);
        }
        let fresh = Self::read(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(true)
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// A server configuration: TLS 1.3 only, ALPN h2, client certificates checked by `verifier`,
/// the node certificate from `cert` (reloadable).
pub fn server_config(
    cert: Arc<ReloadingCert>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration for one partner (or own node): trusts only `ca_der`, presents
/// `cert_chain`/`key`, TLS 1.3 only, ALPN h2.
pub fn client_config(
    ca_ders: &[Vec<u8>],
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for der in ca_ders {
        roots.add(CertificateDer::from(der.clone()))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(cert_chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts TCP connections on `listener` and completes TLS handshakes concurrently (at most
/// `max_pending` at once, each bounded by `timeout`), yielding established streams. A client that
/// stalls or fails its handshake costs one task, never the accept loop. A peer already holding
/// its maximum of connections (`peers`) has the new one closed right after the handshake.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    max_pending: usize,
    peers: Arc<super::limits::PeerLimits>,
) -> tokio_stream::wrappers::ReceiverStream<Result<super::limits::Guarded, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(max_pending);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let permits = Arc::new(tokio::sync::Semaphore::new(max_pending));
    tokio::spawn(async move {
        loop {
            // Stop (and release the port) as soon as the server drops the incoming stream.
            let permit = tokio::select! {
                _ = tx.closed() => return,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, peer): (TcpStream, SocketAddr) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Transient (e.g. out of file descriptors): back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Small RPCs must not wait for delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let peers = peers.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        // The verifier demanded a client certificate: there is a leaf.
                        let slot = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|leaf| peers.admit_connection(leaf));
                        if let Some(slot) = slot {
                            let _ = tx.send(Ok(super::limits::Guarded::new(stream, slot))).await;
                        }
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Splits an `https://host:port` endpoint into a TLS server name and a connect address string.
pub fn endpoint_parts(
    admin: &str,
    endpoint: &str,
) -> Result<(ServerName<'static>, String), TlsError> {
    let bad = |detail: &str| TlsError::Partner {
        admin: admin.to_owned(),
        detail: format!("endpoint {endpoint:?}: {detail}"),
    };
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
    port.parse::<u16>().map_err(|_| bad("bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned()).map_err(|_| bad("bad host"))?;
    Ok((name, rest.to_owned()))
}
