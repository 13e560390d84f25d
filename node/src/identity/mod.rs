//! An administration's identity: its keys, its private TLS CA and certificates, and its party card.
//!
//! Every administration (`NL`, `BR`, `DE-CUST`, ...) holds in its node's data directory:
//!
//! - an **Ed25519 signing key** (`keys/signing.key`): signs envelopes, receipts, ledger checkpoints,
//!   agreements and cosignatures;
//! - an **HPKE key pair** (`keys/hpke.key`, RFC 9180 with X25519): partners encrypt payloads to it;
//! - a **private TLS CA** (`tls/ca.pem`, `tls/ca.key`) that issues the administration's certificates.
//!   Certificates carry the administration in a SAN URI `dccf:admin:<ADMIN>` and, for leaves, the
//!   local role in `dccf:role:<node|gateway|auditor>`;
//! - the **node certificate** (`tls/node.pem`, `tls/node.key`): TLS server towards partners and the
//!   local clients, TLS client towards partners;
//! - a **gateway client certificate** (`tls/gateway-client.pem`, `tls/gateway-client.key`) for the
//!   administration's back-office systems, and an **auditor client certificate**
//!   (`tls/auditor-client.pem`, `tls/auditor-client.key`) for the `Audit` service;
//! - its **party card** (`party.toml`): admin id, endpoint, both public keys and the CA certificate.
//!   This is what partners put into agreements; trust comes from agreements, not from a directory.
//!
//! Private keys are PKCS#8 PEM files with mode 0600 in directories created 0700; they are refused
//! when readable by anyone but the owner, and never overwritten. See [`IdentityPaths`] for the layout
//! and [`NodeIdentity::generate_all`] for creating all of it.

pub mod card;
pub mod keyfile;
pub mod keys;
pub mod pki;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use card::{PartyCard, validate_admin_id};
pub use keys::{HpkeKeyPair, HpkePrivateKey, HpkePublicKey, SigningIdentity};
pub use pki::{
    CertIdentity, CertRequest, CertificateAuthority, IssuedCert, Role, ca_admin, cert_identity,
    cert_not_after,
};

/// Everything that can go wrong with identity files, keys, certificates and party cards.
///
/// Every message is a single line that names the file or field concerned and says what is wrong,
/// so that it can be shown to an operator as is.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A private key file does not exist.
    #[error("key file {} not found", .path.display())]
    KeyFileMissing {
        /// The key file that was looked for.
        path: PathBuf,
    },
    /// A public file (certificate, party card) does not exist.
    #[error("file {} not found", .path.display())]
    FileMissing {
        /// The file that was looked for.
        path: PathBuf,
    },
    /// A file exists but cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Unreadable {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A private key file is accessible by group or others.
    #[error(
        "key file {path} has permissions {mode:04o}; it must be readable by its owner only (chmod 600 {path})",
        path = .path.display()
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file that would be written already exists; key material is never replaced silently.
    #[error(
        "refusing to overwrite existing file {}: keys and certificates are never replaced silently; move it away first",
        .path.display()
    )]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A file (or its directory) could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A private key file exists and is readable but does not hold a usable key of the expected type.
    #[error("key file {} is not usable: {detail}", .path.display())]
    CorruptKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A certificate file does not hold the expected certificate.
    #[error("certificate file {} is not usable: {detail}", .path.display())]
    CorruptCert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// A private key does not belong to the certificate it is paired with.
    #[error("key file {} does not match certificate {}", .key.display(), .cert.display())]
    KeyCertMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A certificate (given as DER, e.g. from a TLS handshake) lacks a valid DCCF identity.
    #[error("certificate {what}: {detail}")]
    InvalidCert {
        /// Which certificate or part of it is wrong (e.g. `SAN`).
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A certificate could not be issued.
    #[error("cannot issue {what} certificate for {admin}: {detail}")]
    Issue {
        /// The administration the certificate was for.
        admin: String,
        /// The kind of certificate (`CA`, `node`, `gateway`, `auditor`).
        what: String,
        /// Why not.
        detail: String,
    },
    /// An administration id does not have the required form.
    #[error("invalid administration id {id:?}: {reason}")]
    InvalidAdminId {
        /// The rejected id.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A role name is not one of `node`, `gateway`, `auditor`.
    #[error("unknown role {0:?}: expected node, gateway or auditor")]
    UnknownRole(String),
    /// A party card field is invalid.
    #[error("party card {admin}: field {field}: {detail}")]
    InvalidCard {
        /// The card's admin id (escaped for display).
        admin: String,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A party card is not well-formed TOML or has missing or unknown fields.
    #[error("party card: {detail}")]
    CardSyntax {
        /// What is wrong, with the line number where known.
        detail: String,
    },
}

/// Collapses a foreign error message onto one line, as every [`IdentityError`] message is one line.
pub(crate) fn one_line(message: impl fmt::Display) -> String {
    message
        .to_string()
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The standard layout of identity files inside a node's data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPaths {
    /// The node's data directory.
    pub dir: PathBuf,
}

impl IdentityPaths {
    /// The layout under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Ed25519 signing key: `keys/signing.key`.
    pub fn signing_key(&self) -> PathBuf {
        self.dir.join("keys").join("signing.key")
    }

    /// HPKE (X25519) private key: `keys/hpke.key`.
    pub fn hpke_key(&self) -> PathBuf {
        self.dir.join("keys").join("hpke.key")
    }

    /// The administration's CA certificate: `tls/ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("tls").join("ca.pem")
    }

    /// The administration's CA private key: `tls/ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("tls").join("ca.key")
    }

    /// The node's TLS certificate: `tls/node.pem`.
    pub fn node_cert(&self) -> PathBuf {
        self.dir.join("tls").join("node.pem")
    }

    /// The node's TLS private key: `tls/node.key`.
    pub fn node_key(&self) -> PathBuf {
        self.dir.join("tls").join("node.key")
    }

    /// The back office's Gateway client certificate: `tls/gateway-client.pem`.
    pub fn gateway_cert(&self) -> PathBuf {
        self.dir.join("tls").join("gateway-client.pem")
    }

    /// The back office's Gateway client private key: `tls/gateway-client.key`.
    pub fn gateway_key(&self) -> PathBuf {
        self.dir.join("tls").join("gateway-client.key")
    }

    /// An auditor's client certificate (Audit service): `tls/auditor-client.pem`.
    pub fn auditor_cert(&self) -> PathBuf {
        self.dir.join("tls").join("auditor-client.pem")
    }

    /// An auditor's client private key: `tls/auditor-client.key`.
    pub fn auditor_key(&self) -> PathBuf {
        self.dir.join("tls").join("auditor-client.key")
    }

    /// The administration's party card: `party.toml`.
    pub fn party_card(&self) -> PathBuf {
        self.dir.join("party.toml")
    }

    /// Every file [`NodeIdentity::generate_all`] writes.
    fn generated_files(&self) -> [PathBuf; 11] {
        [
            self.signing_key(),
            self.hpke_key(),
            self.ca_cert(),
            self.ca_key(),
            self.node_cert(),
            self.node_key(),
            self.gateway_cert(),
            self.gateway_key(),
            self.auditor_cert(),
            self.auditor_key(),
            self.party_card(),
        ]
    }
}

/// The keys a running node uses to sign and to decrypt, for one administration.
#[derive(Debug)]
pub struct NodeIdentity {
    /// The administration id, e.g. `NL`.
    pub admin: String,
    /// Ed25519 signing key.
    pub signing: SigningIdentity,
    /// HPKE (X25519) key pair.
    pub hpke: HpkeKeyPair,
}

impl NodeIdentity {
    /// Creates an administration's complete identity in `paths` and returns its party card.
    ///
    /// Generates the signing key, the HPKE key pair, the CA, the node certificate and the gateway
    /// and auditor client certificates, and writes them together with the party card. The node certificate names
    /// `listen_host`, the endpoint's host (what partners dial) and, for a loopback listen address,
    /// `localhost`; an unspecified listen address (`0.0.0.0`, `::`) is not a verifiable name and is
    /// left out. Nothing is written unless every input is valid and none of the files exists yet.
    pub fn generate_all(
        paths: &IdentityPaths,
        admin: &str,
        listen_host: &str,
        endpoint: &str,
    ) -> Result<PartyCard, IdentityError> {
        validate_admin_id(admin)?;
        let signing = SigningIdentity::generate();
        let hpke = HpkeKeyPair::generate();
        let ca = CertificateAuthority::generate(admin)?;
        let card = PartyCard {
            admin: admin.to_owned(),
            endpoint: endpoint.to_owned(),
            signing_key: signing.public_key_base64(),
            hpke_key: hpke.public_key_base64(),
            ca_cert: ca.cert_pem(),
        };
        card.validate()?;
        let (endpoint_host, _) = card.endpoint_host_port()?;

        let node = ca.issue(&CertRequest::new(
            admin,
            Role::Node,
            node_cert_hosts(listen_host, &endpoint_host),
        ))?;
        let gateway = ca.issue(&CertRequest::new(admin, Role::Gateway, Vec::new()))?;
        let auditor = ca.issue(&CertRequest::new(admin, Role::Auditor, Vec::new()))?;

        // Check everything up front so that a second `init` fails before touching anything.
        if let Some(existing) = paths
            .generated_files()
            .into_iter()
            .find(|path| exists(path))
        {
            return Err(IdentityError::AlreadyExists { path: existing });
        }
        signing.save(&paths.signing_key())?;
        hpke.save(&paths.hpke_key())?;
        ca.save(&paths.ca_cert(), &paths.ca_key())?;
        node.save(&paths.node_cert(), &paths.node_key())?;
        gateway.save(&paths.gateway_cert(), &paths.gateway_key())?;
        auditor.save(&paths.auditor_cert(), &paths.auditor_key())?;
        card.save(&paths.party_card())?;
        Ok(card)
    }

    /// Loads the signing and HPKE keys of administration `admin` from `paths`.
    pub fn load(paths: &IdentityPaths, admin: &str) -> Result<Self, IdentityError> {
        validate_admin_id(admin)?;
        Ok(Self {
            admin: admin.to_owned(),
            signing: SigningIdentity::load(&paths.signing_key())?,
            hpke: HpkeKeyPair::load(&paths.hpke_key())?,
        })
    }

    /// The party card for this identity, reachable at `endpoint`, with CA certificate `ca_cert_pem`.
    pub fn party_card(
        &self,
        endpoint: &str,
        ca_cert_pem: &str,
    ) -> Result<PartyCard, IdentityError> {
        let card = PartyCard {
            admin: self.admin.clone(),
            endpoint: endpoint.to_owned(),
            signing_key: self.signing.public_key_base64(),
            hpke_key: self.hpke.public_key_base64(),
            ca_cert: ca_cert_pem.to_owned(),
        };
        card.validate()?;
        Ok(card)
    }
}

/// Whether anything (including a dangling symlink) exists at `path`.
fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Host names for the node certificate: the listen host, the endpoint host, and `localhost` when
/// listening on loopback (local clients connect by that name).
fn node_cert_hosts(listen_host: &str, endpoint_host: &str) -> Vec<String> {
    let listen = listen_host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(listen_host);
    let mut hosts = Vec::new();
    match listen.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {}
        Ok(ip) => {
            hosts.push(ip.to_string());
            if ip.is_loopback() {
                hosts.push("localhost".to_owned());
            }
        }
        Err(_) => hosts.push(listen.to_owned()),
    }
    let endpoint_host = match endpoint_host.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => endpoint_host.to_owned(),
    };
    if !hosts.iter().any(|h| h.eq_ignore_ascii_case(&endpoint_host)) {
        hosts.push(endpoint_host);
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn node_cert_hosts_cover_listen_endpoint_and_localhost() {
        assert_eq!(
            node_cert_hosts("127.0.0.1", "127.0.0.1"),
            ["127.0.0.1", "localhost"]
        );
        assert_eq!(
            node_cert_hosts("0.0.0.0", "customs.example.nl"),
            ["customs.example.nl"]
        );
        assert_eq!(
            node_cert_hosts("[::1]", "node.nl"),
            ["::1", "localhost", "node.nl"]
        );
        assert_eq!(node_cert_hosts("node.nl", "NODE.nl"), ["node.nl"]);
    }

    #[test]
    fn generate_all_writes_every_file_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let paths = IdentityPaths::new(dir.path().join("data"));
        let card = NodeIdentity::generate_all(&paths, "NL", "127.0.0.1", "https://127.0.0.1:7001")
            .unwrap();
        card.validate().unwrap();

        for path in paths.generated_files() {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let secret = path.extension().is_some_and(|e| e == "key");
            assert_eq!(
                mode,
                if secret { 0o600 } else { 0o644 },
                "{}",
                path.display()
            );
        }
        let keys_dir = std::fs::metadata(paths.dir.join("keys")).unwrap();
        assert_eq!(keys_dir.permissions().mode() & 0o777, 0o700);

        let identity = NodeIdentity::load(&paths, "NL").unwrap();
        assert_eq!(
            identity.signing.verifying_key(),
            card.verifying_key().unwrap()
        );
        assert_eq!(identity.hpke.public_key(), &card.hpke_public_key().unwrap());
        let on_disk = PartyCard::load(&paths.party_card()).unwrap();
        assert_eq!(on_disk, card);

        let ca = CertificateAuthority::load(&paths.ca_cert(), &paths.ca_key()).unwrap();
        assert_eq!(ca.cert_der(), card.ca_cert_der().unwrap());
        let node_pem = std::fs::read(paths.node_cert()).unwrap();
        let node_der = keyfile::single_cert_der(&node_pem).unwrap();
        let id = cert_identity(&node_der).unwrap();
        assert_eq!((id.admin.as_str(), id.role), ("NL", Role::Node));
        let gw_pem = std::fs::read(paths.gateway_cert()).unwrap();
        let gw_der = keyfile::single_cert_der(&gw_pem).unwrap();
        assert_eq!(cert_identity(&gw_der).unwrap().role, Role::Gateway);
        assert_eq!(
            identity
                .party_card("https://127.0.0.1:7001", &ca.cert_pem())
                .unwrap(),
            card
        );
    }

    #[test]
    fn generate_all_refuses_existing_identity_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = IdentityPaths::new(dir.path());
        std::fs::write(paths.party_card(), "mine").unwrap();
        let err = NodeIdentity::generate_all(&paths, "NL", "127.0.0.1", "https://127.0.0.1:7001")
            .unwrap_err();
        assert!(
            matches!(err, IdentityError::AlreadyExists { ref path } if *path == paths.party_card())
        );
        assert!(!paths.signing_key().exists());
        assert_eq!(std::fs::read_to_string(paths.party_card()).unwrap(), "mine");
    }

    #[test]
    fn generate_all_rejects_bad_inputs_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let paths = IdentityPaths::new(dir.path().join("d"));
        let err = NodeIdentity::generate_all(&paths, "nl", "127.0.0.1", "https://127.0.0.1:7001")
            .unwrap_err();
        assert!(matches!(err, IdentityError::InvalidAdminId { .. }), "{err}");
        let err = NodeIdentity::generate_all(&paths, "NL", "127.0.0.1", "http://127.0.0.1:7001")
            .unwrap_err();
        assert!(err.to_string().contains("field endpoint"), "{err}");
        let err = NodeIdentity::generate_all(&paths, "NL", "bad host!", "https://127.0.0.1:7001")
            .unwrap_err();
        assert!(matches!(err, IdentityError::Issue { .. }), "{err}");
        assert!(!paths.dir.exists());
    }

    #[test]
    fn one_line_collapses_newlines() {
        assert_eq!(one_line("a\n  b\r\n\nc"), "a; b; c");
    }
}
