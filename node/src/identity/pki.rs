//! The administration's private TLS CA and the certificates it issues (ECDSA P-256, rcgen).
//!
//! Identity is carried in SAN URIs, not in subject names: every certificate names its
//! administration as `dccf:admin:<ADMIN>`, and every leaf names its local role as
//! `dccf:role:<node|gateway|auditor>`. [`cert_identity`] reads them back from a peer's certificate;
//! the TLS layer uses it to decide which services a client may call and which administration it
//! speaks for.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use ed25519_dalek::pkcs8::spki::der::zeroize::Zeroizing;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::OID_X509_COMMON_NAME;

use super::card::validate_admin_id;
use super::keyfile::{
    encode_pem, pkcs8_der_from_pem, read_public, read_secret, single_cert_der, write_public,
    write_secret,
};
use super::{IdentityError, one_line};

/// SAN URI prefix naming the administration a certificate belongs to.
pub const ADMIN_URI_PREFIX: &str = "dccf:admin:";
/// SAN URI prefix naming a leaf certificate's local role.
pub const ROLE_URI_PREFIX: &str = "dccf:role:";

/// How long a CA certificate is valid.
const CA_VALIDITY: Duration = Duration::days(3653);
/// Default leaf validity: 397 days, the CA/Browser Forum ceiling, so rotation stays a habit.
const LEAF_VALIDITY: Duration = Duration::days(397);
/// Backdating of `not_before`, to tolerate clock skew between partners.
const BACKDATE: Duration = Duration::hours(1);

/// What a leaf certificate may be used for locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A DCCF node: TLS server to partners and local clients, TLS client to partners.
    Node,
    /// A back-office system calling the Gateway API.
    Gateway,
    /// An auditor calling the Audit API.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Node, Role::Gateway, Role::Auditor];

    /// The name used in `dccf:role:<role>` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Gateway => "gateway",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(s.to_owned()))
    }
}

/// A request for a leaf certificate from an administration's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// The administration; must be the CA's own.
    pub admin: String,
    /// The local role written into the certificate.
    pub role: Role,
    /// DNS names or IP literals for the SAN; required for nodes, empty for client-only certificates.
    pub hosts: Vec<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity; clamped to the CA's own expiry, as a leaf cannot outlive its issuer.
    pub not_after: OffsetDateTime,
}

impl CertRequest {
    /// A request valid from an hour ago (clock skew) for 397 days.
    pub fn new(admin: impl Into<String>, role: Role, hosts: Vec<String>) -> Self {
        let now = now_seconds();
        Self {
            admin: admin.into(),
            role,
            hosts,
            not_before: now - BACKDATE,
            not_after: now + LEAF_VALIDITY,
        }
    }
}

/// A freshly issued leaf certificate and its private key, both PEM.
pub struct IssuedCert {
    /// The certificate (`CERTIFICATE` PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 `PRIVATE KEY` PEM, P-256).
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes the key (0600) and the certificate (0644); refuses if either file exists.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), IdentityError> {
        refuse_existing(&[cert_path, key_path])?;
        write_secret(key_path, self.key_pem.as_bytes())?;
        write_public(cert_path, self.cert_pem.as_bytes())
    }

    /// The certificate as DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, IdentityError> {
        single_cert_der(self.cert_pem.as_bytes()).map_err(|detail| IdentityError::InvalidCert {
            what: "PEM",
            detail,
        })
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// An administration's private certificate authority.
pub struct CertificateAuthority {
    admin: String,
    cert_der: Vec<u8>,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Creates a new self-signed CA for `admin`, valid for ten years.
    pub fn generate(admin: &str) -> Result<Self, IdentityError> {
        validate_admin_id(admin)?;
        let fail = |detail: String| IdentityError::Issue {
            admin: admin.to_owned(),
            what: "CA".to_owned(),
            detail,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail(format!("key generation failed: {}", one_line(e))))?;
        let now = now_seconds();
        let mut params = ca_params(admin).map_err(fail)?;
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial().map_err(fail)?);
        let cert = params.self_signed(&key).map_err(|e| fail(one_line(e)))?;
        Ok(Self {
            admin: admin.to_owned(),
            cert_der: cert.der().to_vec(),
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// Writes the CA key (0600) and certificate (0644); refuses if either file exists.
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), IdentityError> {
        refuse_existing(&[cert_path, key_path])?;
        let key_pem = Zeroizing::new(self.issuer.key().serialize_pem());
        write_secret(key_path, key_pem.as_bytes())?;
        write_public(cert_path, self.cert_pem().as_bytes())
    }

    /// Loads a CA written by [`save`](Self::save), checking that the key belongs to the certificate
    /// and that the certificate is a DCCF CA.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let bad_cert = |detail: String| IdentityError::CorruptCert {
            path: cert_path.to_path_buf(),
            detail,
        };
        let cert_der = single_cert_der(&read_public(cert_path)?).map_err(bad_cert)?;
        let x509 = parse_cert(&cert_der).map_err(bad_cert)?;
        let admin = ca_admin_of(&x509).map_err(bad_cert)?;
        // Issued certificates copy our subject as their issuer byte for byte, and chain building
        // matches on it: accept only the exact subject `generate` writes.
        check_ca_subject(&x509, &admin).map_err(bad_cert)?;
        let not_after = x509.validity().not_after.to_datetime();

        let key_pem = Zeroizing::new(read_secret(key_path)?);
        let key_der = Zeroizing::new(pkcs8_der_from_pem(&key_pem).map_err(|detail| {
            IdentityError::CorruptKey {
                path: key_path.to_path_buf(),
                detail,
            }
        })?);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_der.as_slice()),
            &PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|e| IdentityError::CorruptKey {
            path: key_path.to_path_buf(),
            detail: format!("not an ECDSA P-256 PKCS#8 key: {}", one_line(e)),
        })?;
        if key.public_key_raw() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(IdentityError::KeyCertMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
        // The issuer needs only the CA's name, key usages and key-identifier method, all of which
        // `ca_params` reproduces exactly; validity and serial of the CA itself are not used.
        let params = ca_params(&admin).map_err(bad_cert)?;
        Ok(Self {
            admin,
            cert_der,
            not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// The administration this CA belongs to.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The CA certificate as PEM (what goes into the party card).
    pub fn cert_pem(&self) -> String {
        encode_pem("CERTIFICATE", &self.cert_der)
    }

    /// The CA certificate as DER (a TLS trust anchor).
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Issues a leaf certificate with a fresh P-256 key.
    ///
    /// Node certificates carry EKU serverAuth and clientAuth and need at least one host;
    /// gateway and auditor certificates carry clientAuth only.
    pub fn issue(&self, req: &CertRequest) -> Result<IssuedCert, IdentityError> {
        let fail = |detail: String| IdentityError::Issue {
            admin: req.admin.clone(),
            what: req.role.to_string(),
            detail,
        };
        if req.admin != self.admin {
            return Err(fail(format!(
                "this CA belongs to {} and issues only its own certificates",
                self.admin
            )));
        }
        if req.role == Role::Node && req.hosts.is_empty() {
            return Err(fail(
                "a node certificate needs at least one host name or IP address".to_owned(),
            ));
        }
        let not_after = req.not_after.min(self.not_after);
        if not_after <= req.not_before {
            return Err(fail(format!(
                "validity ends ({not_after}) before it starts ({}); the CA expires {}",
                req.not_before, self.not_after
            )));
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("DCCF {} {}", self.admin, req.role),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            san_uri(&format!("{ADMIN_URI_PREFIX}{}", self.admin)).map_err(fail)?,
            san_uri(&format!("{ROLE_URI_PREFIX}{}", req.role)).map_err(fail)?,
        ];
        for host in &req.hosts {
            params.subject_alt_names.push(host_san(host).map_err(fail)?);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match req.role {
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Gateway | Role::Auditor => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = req.not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial().map_err(fail)?);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail(format!("key generation failed: {}", one_line(e))))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail(one_line(e)))?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("admin", &self.admin)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The DCCF identity written into a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The administration (`dccf:admin:<ADMIN>`).
    pub admin: String,
    /// The local role (`dccf:role:<role>`).
    pub role: Role,
}

/// Reads the administration and role from a leaf certificate's SAN URIs.
///
/// Exactly one `dccf:admin:` and one `dccf:role:` URI must be present, and no other `dccf:` URI;
/// CA certificates are rejected. This does not verify the certificate: do that first (TLS does).
pub fn cert_identity(cert_der: &[u8]) -> Result<CertIdentity, IdentityError> {
    let invalid = |what, detail| IdentityError::InvalidCert { what, detail };
    let x509 = parse_cert(cert_der).map_err(|d| invalid("DER", d))?;
    if x509.is_ca() {
        return Err(invalid(
            "basic constraints",
            "is a CA certificate, not a node, gateway or auditor certificate".to_owned(),
        ));
    }
    let uris = DccfUris::of(&x509).map_err(|d| invalid("SAN", d))?;
    let admin = uris.single_admin().map_err(|d| invalid("SAN", d))?;
    let role = match uris.roles.as_slice() {
        [role] => role.parse::<Role>().map_err(|_| {
            invalid(
                "SAN",
                format!(
                    "unknown role {role:?} in {ROLE_URI_PREFIX}; expected node, gateway or auditor"
                ),
            )
        })?,
        [] => return Err(invalid("SAN", format!("no {ROLE_URI_PREFIX} URI"))),
        more => {
            return Err(invalid(
                "SAN",
                format!(
                    "{} {ROLE_URI_PREFIX} URIs; exactly one is allowed",
                    more.len()
                ),
            ));
        }
    };
    Ok(CertIdentity { admin, role })
}

/// Reads the administration from a DCCF CA certificate (exactly one `dccf:admin:` URI, no role).
pub fn ca_admin(ca_cert_der: &[u8]) -> Result<String, IdentityError> {
    let x509 = parse_cert(ca_cert_der).map_err(|detail| IdentityError::InvalidCert {
        what: "DER",
        detail,
    })?;
    ca_admin_of(&x509).map_err(|detail| IdentityError::InvalidCert { what: "CA", detail })
}

/// Checks that the leaf certificate `cert_der` is signed by the CA `ca_der` (signature and
/// chain only: validity dates are the caller's business, so an expired certificate is told
/// apart from a foreign one).
pub fn verify_issued_by(cert_der: &[u8], ca_der: &[u8]) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, UnixTime};
    let ca = CertificateDer::from(ca_der);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| format!("CA: {e}"))?;
    let leaf = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&leaf).map_err(|e| e.to_string())?;
    // Verify at a moment inside the leaf's validity, so only the chain is judged.
    let not_before = parse_cert(cert_der)?.validity().not_before.timestamp();
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(not_before).unwrap_or(0) + 1,
    ));
    let algs = crate::server::tls::provider().signature_verification_algorithms;
    cert.verify_for_usage(
        algs.all,
        &[anchor],
        &[],
        at,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Whether a (node) certificate is valid for `host` — a DNS name or an IP address — judged as
/// a partner's TLS client judges it (webpki name matching), so `doctor` predicts handshakes.
pub fn verify_valid_for_host(cert_der: &[u8], host: &str) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let der = CertificateDer::from(cert_der);
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host).map_err(|e| format!("{host:?}: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|e| e.to_string())
}

/// The DNS names and IP addresses in a certificate's SAN (what a node certificate is valid for).
pub fn cert_hosts(cert_der: &[u8]) -> Result<Vec<String>, IdentityError> {
    let x509 = parse_cert(cert_der).map_err(|detail| IdentityError::InvalidCert {
        what: "DER",
        detail,
    })?;
    let mut hosts = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => hosts.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => hosts.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => hosts.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(hosts)
}

/// When a certificate's validity starts and ends.
pub fn cert_validity(cert_der: &[u8]) -> Result<(OffsetDateTime, OffsetDateTime), IdentityError> {
    let x509 = parse_cert(cert_der).map_err(|detail| IdentityError::InvalidCert {
        what: "DER",
        detail,
    })?;
    Ok((
        x509.validity().not_before.to_datetime(),
        x509.validity().not_after.to_datetime(),
    ))
}

/// When a certificate expires.
pub fn cert_not_after(cert_der: &[u8]) -> Result<OffsetDateTime, IdentityError> {
    let x509 = parse_cert(cert_der).map_err(|detail| IdentityError::InvalidCert {
        what: "DER",
        detail,
    })?;
    Ok(x509.validity().not_after.to_datetime())
}

/// [`ca_admin`] with a plain-text error, for callers that name the file or field themselves.
pub(crate) fn ca_admin_detail(ca_cert_der: &[u8]) -> Result<String, String> {
    ca_admin_of(&parse_cert(ca_cert_der)?)
}

fn ca_admin_of(x509: &X509Certificate<'_>) -> Result<String, String> {
    let ca = x509
        .basic_constraints()
        .map_err(|e| format!("invalid basic constraints: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    if !ca {
        return Err("is not a CA certificate (basic constraints CA is not set)".to_owned());
    }
    let uris = DccfUris::of(x509)?;
    if !uris.roles.is_empty() {
        return Err(format!(
            "a CA certificate must not carry a {ROLE_URI_PREFIX} URI"
        ));
    }
    uris.single_admin()
}

fn check_ca_subject(x509: &X509Certificate<'_>, admin: &str) -> Result<(), String> {
    let expected = ca_common_name(admin);
    let attrs: Vec<_> = x509
        .subject()
        .iter_rdn()
        .flat_map(|rdn| rdn.iter())
        .collect();
    match attrs.as_slice() {
        [cn] if cn.attr_type() == &OID_X509_COMMON_NAME
            && cn.attr_value().tag() == Tag::Utf8String
            && cn.as_str().ok() == Some(expected.as_str()) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "subject is {:?}; a DCCF CA's subject is exactly CN={expected}",
            x509.subject().to_string()
        )),
    }
}

/// The `dccf:` SAN URIs of a certificate.
struct DccfUris {
    admins: Vec<String>,
    roles: Vec<String>,
}

impl DccfUris {
    fn of(x509: &X509Certificate<'_>) -> Result<Self, String> {
        let san = x509
            .subject_alternative_name()
            .map_err(|e| format!("invalid subject alternative name extension: {e}"))?
            .ok_or_else(|| format!("no subject alternative names (no {ADMIN_URI_PREFIX} URI)"))?;
        let mut uris = Self {
            admins: Vec::new(),
            roles: Vec::new(),
        };
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => {
                    if let Some(admin) = uri.strip_prefix(ADMIN_URI_PREFIX) {
                        uris.admins.push(admin.to_owned());
                    } else if let Some(role) = uri.strip_prefix(ROLE_URI_PREFIX) {
                        uris.roles.push(role.to_owned());
                    } else if uri.to_ascii_lowercase().starts_with("dccf:") {
                        return Err(format!("unknown DCCF URI {uri:?}"));
                    }
                }
                GeneralName::Invalid(..) => {
                    return Err("malformed subject alternative name entry".to_owned());
                }
                _ => {}
            }
        }
        Ok(uris)
    }

    fn single_admin(&self) -> Result<String, String> {
        match self.admins.as_slice() {
            [admin] => {
                validate_admin_id(admin).map_err(|e| format!("{ADMIN_URI_PREFIX}: {e}"))?;
                Ok(admin.clone())
            }
            [] => Err(format!("no {ADMIN_URI_PREFIX} URI")),
            more => Err(format!(
                "{} {ADMIN_URI_PREFIX} URIs; exactly one is allowed",
                more.len()
            )),
        }
    }
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the certificate".to_owned()),
        Err(e) => Err(format!("not a valid X.509 certificate: {}", one_line(e))),
    }
}

fn ca_common_name(admin: &str) -> String {
    format!("DCCF {admin} CA")
}

/// Everything about the CA certificate that also determines how it signs: its subject (copied
/// into each leaf's issuer), key usages and key-identifier method (the leaves' AKI).
fn ca_params(admin: &str) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca_common_name(admin));
    params.distinguished_name = dn;
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.subject_alt_names = vec![san_uri(&format!("{ADMIN_URI_PREFIX}{admin}"))?];
    Ok(params)
}

fn san_uri(uri: &str) -> Result<SanType, String> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| format!("invalid URI {uri:?}: {e}"))
}

fn host_san(host: &str) -> Result<SanType, String> {
    match parse_host(host)? {
        Host::Ip(ip) => Ok(SanType::IpAddress(ip)),
        Host::Dns(name) => Ia5String::try_from(name)
            .map(SanType::DnsName)
            .map_err(|e| format!("invalid host {host:?}: {e}")),
    }
}

/// A host as it may appear in a certificate SAN or an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Host {
    /// An IP literal (IPv6 may be given in brackets).
    Ip(IpAddr),
    /// A DNS name.
    Dns(String),
}

/// Parses a DNS name (RFC 1123 labels, no wildcards) or an IP literal.
pub(crate) fn parse_host(host: &str) -> Result<Host, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(format!(
            "invalid host {host:?}: expected a DNS name or an IP address"
        ));
    }
    Ok(Host::Dns(host.to_owned()))
}

/// Refuses before anything is written, so a pair is never left half-replaced.
fn refuse_existing(paths: &[&Path]) -> Result<(), IdentityError> {
    match paths.iter().find(|p| std::fs::symlink_metadata(p).is_ok()) {
        Some(path) => Err(IdentityError::AlreadyExists {
            path: path.to_path_buf(),
        }),
        None => Ok(()),
    }
}

/// A random positive 128-bit serial (RFC 5280 allows up to 20 octets).
fn random_serial() -> Result<SerialNumber, String> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random number generator failed".to_owned())?;
    // Positive, and non-zero leading byte so the DER length is always 16.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// Now, truncated to whole seconds as certificates store it.
fn now_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::{CertificateDer, UnixTime};

    fn verify(
        ca_der: &[u8],
        leaf_der: &[u8],
        usage: webpki::KeyUsage,
    ) -> Result<(), webpki::Error> {
        let ca = CertificateDer::from(ca_der.to_vec());
        let anchor = webpki::anchor_from_trusted_cert(&ca)?;
        let leaf = CertificateDer::from(leaf_der.to_vec());
        let ee = webpki::EndEntityCert::try_from(&leaf)?;
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map(|_| ())
    }

    #[test]
    fn ca_issues_certs_that_verify_and_carry_identity() {
        let ca = CertificateAuthority::generate("NL").unwrap();
        assert_eq!(ca_admin(&ca.cert_der()).unwrap(), "NL");
        assert!(parse_cert(&ca.cert_der).unwrap().is_ca());
        let years = (ca.not_after() - OffsetDateTime::now_utc()).whole_days() / 365;
        assert_eq!(years, 10);

        for role in Role::ALL {
            let hosts = match role {
                Role::Node => vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
                _ => Vec::new(),
            };
            let issued = ca.issue(&CertRequest::new("NL", role, hosts)).unwrap();
            let der = issued.cert_der().unwrap();
            assert_eq!(
                cert_identity(&der).unwrap(),
                CertIdentity {
                    admin: "NL".into(),
                    role
                }
            );
            verify(&ca.cert_der(), &der, webpki::KeyUsage::client_auth()).unwrap();
            let server = verify(&ca.cert_der(), &der, webpki::KeyUsage::server_auth());
            assert_eq!(server.is_ok(), role == Role::Node, "{role}: {server:?}");

            // The key is a P-256 PKCS#8 key that belongs to the certificate.
            let key = KeyPair::from_pem(&issued.key_pem).unwrap();
            let x509 = parse_cert(&der).unwrap();
            assert_eq!(
                key.public_key_raw(),
                &x509.public_key().subject_public_key.data[..]
            );
            let days = (cert_not_after(&der).unwrap() - OffsetDateTime::now_utc()).whole_days();
            assert!((396..=397).contains(&days), "{days}");
        }
    }

    #[test]
    fn node_cert_is_valid_for_its_hosts() {
        let ca = CertificateAuthority::generate("NL").unwrap();
        let issued = ca
            .issue(&CertRequest::new(
                "NL",
                Role::Node,
                vec!["127.0.0.1".into(), "[::1]".into(), "node.customs.nl".into()],
            ))
            .unwrap();
        let der = CertificateDer::from(issued.cert_der().unwrap());
        let ee = webpki::EndEntityCert::try_from(&der).unwrap();
        for name in ["127.0.0.1", "::1", "node.customs.nl"] {
            let server_name = rustls_pki_types::ServerName::try_from(name).unwrap();
            ee.verify_is_valid_for_subject_name(&server_name).unwrap();
        }
        let other = rustls_pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(ee.verify_is_valid_for_subject_name(&other).is_err());
    }

    #[test]
    fn cert_from_another_ca_does_not_verify() {
        let nl = CertificateAuthority::generate("NL").unwrap();
        // Same admin id and therefore the same CA subject name, but a different key.
        let impostor = CertificateAuthority::generate("NL").unwrap();
        let forged = impostor
            .issue(&CertRequest::new("NL", Role::Gateway, Vec::new()))
            .unwrap();
        let err = verify(
            &nl.cert_der(),
            &forged.cert_der().unwrap(),
            webpki::KeyUsage::client_auth(),
        )
        .unwrap_err();
        assert_eq!(err, webpki::Error::InvalidSignatureForPublicKey);

        let br = CertificateAuthority::generate("BR").unwrap();
        let br_node = br
            .issue(&CertRequest::new(
                "BR",
                Role::Node,
                vec!["localhost".into()],
            ))
            .unwrap();
        let err = verify(
            &nl.cert_der(),
            &br_node.cert_der().unwrap(),
            webpki::KeyUsage::server_auth(),
        )
        .unwrap_err();
        assert_eq!(err, webpki::Error::UnknownIssuer);
    }

    #[test]
    fn ca_save_load_round_trip_keeps_issuing_valid_certs() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        let ca = CertificateAuthority::generate("BR-RFB").unwrap();
        ca.save(&cert_path, &key_path).unwrap();
        let loaded = CertificateAuthority::load(&cert_path, &key_path).unwrap();
        assert_eq!(loaded.admin(), "BR-RFB");
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.not_after(), ca.not_after());

        let issued = loaded
            .issue(&CertRequest::new("BR-RFB", Role::Auditor, Vec::new()))
            .unwrap();
        verify(
            &ca.cert_der(),
            &issued.cert_der().unwrap(),
            webpki::KeyUsage::client_auth(),
        )
        .unwrap();

        let err = ca
            .save(&cert_path, &dir.path().join("other.key"))
            .unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { ref path } if *path == cert_path));
        assert!(!dir.path().join("other.key").exists());
    }

    #[test]
    fn ca_load_rejects_foreign_key_and_non_ca_cert() {
        let dir = tempfile::tempdir().unwrap();
        let a = CertificateAuthority::generate("NL").unwrap();
        let b = CertificateAuthority::generate("NL").unwrap();
        let p = |n: &str| dir.path().join(n);
        a.save(&p("a.pem"), &p("a.key")).unwrap();
        b.save(&p("b.pem"), &p("b.key")).unwrap();
        let err = CertificateAuthority::load(&p("a.pem"), &p("b.key")).unwrap_err();
        assert!(
            matches!(err, IdentityError::KeyCertMismatch { .. }),
            "{err}"
        );

        let leaf = a
            .issue(&CertRequest::new("NL", Role::Gateway, vec![]))
            .unwrap();
        leaf.save(&p("leaf.pem"), &p("leaf.key")).unwrap();
        let err = CertificateAuthority::load(&p("leaf.pem"), &p("leaf.key")).unwrap_err();
        assert!(matches!(err, IdentityError::CorruptCert { .. }), "{err}");
        assert!(err.to_string().contains("is not a CA certificate"), "{err}");

        let err = CertificateAuthority::load(&p("a.pem"), &p("missing.key")).unwrap_err();
        assert!(matches!(err, IdentityError::KeyFileMissing { .. }), "{err}");
        let err = CertificateAuthority::load(&p("missing.pem"), &p("a.key")).unwrap_err();
        assert!(matches!(err, IdentityError::FileMissing { .. }), "{err}");
        crate::identity::SigningIdentity::generate()
            .save(&p("ed25519.key"))
            .unwrap();
        let err = CertificateAuthority::load(&p("a.pem"), &p("ed25519.key")).unwrap_err();
        assert!(matches!(err, IdentityError::CorruptKey { .. }), "{err}");
    }

    #[test]
    fn issue_rejects_bad_requests() {
        let ca = CertificateAuthority::generate("NL").unwrap();
        let err = ca
            .issue(&CertRequest::new("BR", Role::Gateway, vec![]))
            .unwrap_err();
        assert!(err.to_string().contains("this CA belongs to NL"), "{err}");
        let err = ca
            .issue(&CertRequest::new("NL", Role::Node, vec![]))
            .unwrap_err();
        assert!(err.to_string().contains("at least one host"), "{err}");
        let err = ca
            .issue(&CertRequest::new("NL", Role::Node, vec!["bad_host".into()]))
            .unwrap_err();
        assert!(
            err.to_string().contains("invalid host \"bad_host\""),
            "{err}"
        );
        let mut req = CertRequest::new("NL", Role::Gateway, vec![]);
        req.not_after = req.not_before - Duration::days(1);
        assert!(ca.issue(&req).is_err());

        // A leaf never outlives its CA.
        let mut req = CertRequest::new("NL", Role::Gateway, vec![]);
        req.not_after = ca.not_after() + Duration::days(100);
        let der = ca.issue(&req).unwrap().cert_der().unwrap();
        assert_eq!(cert_not_after(&der).unwrap(), ca.not_after());
    }

    /// Builds a certificate with arbitrary SAN URIs, signed by a throwaway CA.
    fn cert_with_uris(uris: &[&str], is_ca: bool) -> Vec<u8> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris.iter().map(|u| san_uri(u).unwrap()).collect();
        if is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn cert_identity_requires_exactly_one_admin_and_role() {
        let ok = cert_with_uris(&["dccf:admin:NL", "dccf:role:auditor"], false);
        assert_eq!(cert_identity(&ok).unwrap().role, Role::Auditor);

        let cases: [(&[&str], &str); 7] = [
            (&["dccf:role:node"], "no dccf:admin: URI"),
            (&["dccf:admin:NL"], "no dccf:role: URI"),
            (
                &["dccf:admin:NL", "dccf:admin:BR", "dccf:role:node"],
                "2 dccf:admin: URIs",
            ),
            (
                &["dccf:admin:NL", "dccf:role:node", "dccf:role:gateway"],
                "2 dccf:role: URIs",
            ),
            (
                &["dccf:admin:NL", "dccf:role:root"],
                "unknown role \"root\"",
            ),
            (
                &["dccf:admin:nl", "dccf:role:node"],
                "invalid administration id",
            ),
            (
                &["dccf:admin:NL", "dccf:role:node", "dccf:superuser:yes"],
                "unknown DCCF URI",
            ),
        ];
        for (uris, expected) in cases {
            let err = cert_identity(&cert_with_uris(uris, false)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(expected), "{uris:?}: {msg}");
            assert!(msg.starts_with("certificate SAN: "), "{msg}");
        }

        let err = cert_identity(&cert_with_uris(&[], false)).unwrap_err();
        assert!(
            err.to_string().contains("no subject alternative names"),
            "{err}"
        );
        let ca = cert_with_uris(&["dccf:admin:NL", "dccf:role:node"], true);
        assert!(
            cert_identity(&ca)
                .unwrap_err()
                .to_string()
                .contains("is a CA")
        );
        let err = cert_identity(b"junk").unwrap_err();
        assert!(err.to_string().starts_with("certificate DER: "), "{err}");
    }

    #[test]
    fn ca_admin_rejects_roles_and_leaves() {
        let with_role = cert_with_uris(&["dccf:admin:NL", "dccf:role:node"], true);
        assert!(
            ca_admin(&with_role)
                .unwrap_err()
                .to_string()
                .contains("must not carry")
        );
        let leaf = cert_with_uris(&["dccf:admin:NL"], false);
        assert!(
            ca_admin(&leaf)
                .unwrap_err()
                .to_string()
                .contains("not a CA")
        );
    }

    #[test]
    fn role_parses_and_prints() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
            assert_eq!(role.to_string(), role.as_str());
        }
        let err = "admin".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role \"admin\": expected node, gateway or auditor"
        );
    }

    #[test]
    fn parse_host_accepts_names_and_ips_only() {
        assert_eq!(
            parse_host("[::1]").unwrap(),
            Host::Ip("::1".parse().unwrap())
        );
        assert_eq!(
            parse_host("10.0.0.1").unwrap(),
            Host::Ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            parse_host("a-b.example").unwrap(),
            Host::Dns("a-b.example".into())
        );
        for bad in [
            "",
            "*.example",
            "a..b",
            "-a.b",
            "a b",
            "ex_ample.nl",
            "é.nl",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?}");
        }
    }
}
