//! The party card: an administration's public identity, as partners put it into agreements.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;
use hpke::Deserializable;
use serde::{Deserialize, Serialize};

use super::keyfile::{read_public, single_cert_der, write_public};
use super::keys::HpkePublicKey;
use super::pki::{Host, ca_admin_detail, parse_host};
use super::{IdentityError, one_line};

/// An administration's public identity: everything a partner needs to authenticate it, verify its
/// signatures and encrypt to it. Printed by `dccf-node init` and embedded in agreements.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PartyCard {
    /// Administration id: two uppercase letters (ISO 3166 alpha-2), optionally `-` and a suffix of
    /// 1 to 16 uppercase letters or digits, e.g. `NL`, `BR-RFB`.
    pub admin: String,
    /// Where partners reach the node's Exchange service: `https://host:port`.
    pub endpoint: String,
    /// Ed25519 public key that verifies the administration's signatures (standard base64, 32 bytes).
    pub signing_key: String,
    /// X25519 HPKE public key that partners encrypt payloads to (standard base64, 32 bytes).
    pub hpke_key: String,
    /// The administration's TLS CA certificate (one `CERTIFICATE` PEM block); its SAN URI
    /// `dccf:admin:<ADMIN>` must equal `admin`.
    pub ca_cert: String,
}

impl PartyCard {
    fn invalid(&self, field: &'static str, detail: impl Into<String>) -> IdentityError {
        let admin = if self.admin.is_empty() {
            "(no admin)".to_owned()
        } else {
            self.admin.escape_debug().to_string()
        };
        IdentityError::InvalidCard {
            admin,
            field,
            detail: detail.into(),
        }
    }

    /// The Ed25519 key that verifies this administration's signatures.
    pub fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        let bytes = decode_key32(&self.signing_key).map_err(|d| self.invalid("signing_key", d))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
            self.invalid(
                "signing_key",
                "not a valid Ed25519 public key (not a curve point)",
            )
        })?;
        if key.is_weak() {
            return Err(self.invalid("signing_key", "is a weak (small-order) Ed25519 key"));
        }
        Ok(key)
    }

    /// The HPKE public key partners encrypt to.
    pub fn hpke_public_key(&self) -> Result<HpkePublicKey, IdentityError> {
        let bytes = decode_key32(&self.hpke_key).map_err(|d| self.invalid("hpke_key", d))?;
        HpkePublicKey::from_bytes(&bytes)
            .map_err(|e| self.invalid("hpke_key", format!("not a valid X25519 public key: {e:?}")))
    }

    /// The CA certificate as DER, for use as a TLS trust anchor.
    pub fn ca_cert_der(&self) -> Result<Vec<u8>, IdentityError> {
        single_cert_der(self.ca_cert.as_bytes()).map_err(|d| self.invalid("ca_cert", d))
    }

    /// Host (without IPv6 brackets) and port of the endpoint.
    pub fn endpoint_host_port(&self) -> Result<(String, u16), IdentityError> {
        parse_endpoint(&self.endpoint).map_err(|d| self.invalid("endpoint", d))
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), IdentityError> {
        validate_admin_id(&self.admin).map_err(|e| match e {
            IdentityError::InvalidAdminId { reason, .. } => self.invalid("admin", reason),
            other => other,
        })?;
        self.endpoint_host_port()?;
        self.verifying_key()?;
        self.hpke_public_key()?;
        let der = self.ca_cert_der()?;
        let ca_admin = ca_admin_detail(&der).map_err(|d| self.invalid("ca_cert", d))?;
        if ca_admin != self.admin {
            return Err(self.invalid(
                "ca_cert",
                format!(
                    "CA certificate belongs to {ca_admin}, not {}",
                    self.admin.escape_debug()
                ),
            ));
        }
        Ok(())
    }

    /// The card as TOML, preceded by a comment saying what it is.
    pub fn to_toml(&self) -> Result<String, IdentityError> {
        let body = toml::to_string(self).map_err(|e| IdentityError::CardSyntax {
            detail: format!("cannot serialize: {}", one_line(e)),
        })?;
        Ok(format!(
            "# DCCF party card of administration {}.\n\
             # Public keys and CA certificate only: give it to partner administrations for agreements.\n\
             {body}",
            self.admin.escape_debug()
        ))
    }

    /// Parses a card from TOML and validates it.
    pub fn from_toml(text: &str) -> Result<Self, IdentityError> {
        let card: Self = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .and_then(|span| text.get(..span.start))
                .map(|before| before.matches('\n').count() + 1);
            IdentityError::CardSyntax {
                detail: match line {
                    Some(line) => format!("line {line}: {}", one_line(e.message())),
                    None => one_line(e.message()),
                },
            }
        })?;
        card.validate()?;
        Ok(card)
    }

    /// Writes the card as TOML to a new 0644 file; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        write_public(path, self.to_toml()?.as_bytes())
    }

    /// Reads and validates a card from a TOML file.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let bytes = read_public(path)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| IdentityError::CardSyntax {
            detail: format!("{} is not UTF-8 text", path.display()),
        })?;
        Self::from_toml(text).map_err(|e| match e {
            IdentityError::CardSyntax { detail } => IdentityError::CardSyntax {
                detail: format!("{}: {detail}", path.display()),
            },
            other => other,
        })
    }
}

/// Checks an administration id: two uppercase ASCII letters, optionally followed by `-` and 1 to 16
/// uppercase letters or digits (`NL`, `BR`, `DE-ZOLL`, `EU-OLAF1`).
pub fn validate_admin_id(id: &str) -> Result<(), IdentityError> {
    let fail = |reason| {
        Err(IdentityError::InvalidAdminId {
            id: id.to_owned(),
            reason,
        })
    };
    let rest = match id.as_bytes() {
        [a, b, rest @ ..] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => rest,
        _ => return fail("must start with two uppercase letters (ISO 3166 alpha-2)"),
    };
    match rest {
        [] => Ok(()),
        [b'-', suffix @ ..] => {
            if suffix.is_empty() || suffix.len() > 16 {
                fail("the suffix after '-' must be 1 to 16 characters")
            } else if !suffix
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            {
                fail("the suffix after '-' may contain only uppercase letters and digits")
            } else {
                Ok(())
            }
        }
        _ => fail("the two-letter code may be followed only by '-' and a suffix"),
    }
}

/// Decodes standard base64 that must hold exactly 32 bytes.
fn decode_key32(text: &str) -> Result<[u8; 32], &'static str> {
    STANDARD
        .decode(text)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or("not 32 bytes of base64")
}

/// Splits `https://host:port` (IPv6 in brackets) into host and port; nothing else is allowed.
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<(String, u16), String> {
    let rest = endpoint
        .strip_prefix("https://")
        .ok_or("must start with https://")?;
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, port) = v6.split_once("]:").ok_or("must be https://[ipv6]:port")?;
        (host, port)
    } else {
        rest.rsplit_once(':').ok_or("must be https://host:port")?
    };
    let bracketed = rest.starts_with('[');
    if host.is_empty() || host.contains(['/', '@', '[', ']']) || (!bracketed && host.contains(':'))
    {
        return Err(format!("invalid host {host:?}; must be https://host:port"));
    }
    let host = match parse_host(host)? {
        Host::Ip(ip) if bracketed != ip.is_ipv6() => {
            return Err("IPv6 addresses, and only they, go in brackets".to_owned());
        }
        Host::Ip(ip) => ip.to_string(),
        Host::Dns(name) => name,
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
        _ => {
            return Err(format!(
                "invalid port {port:?}; must be https://host:port with a port from 1 to 65535 and no path"
            ));
        }
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{CertificateAuthority, HpkeKeyPair, SigningIdentity};

    fn card() -> PartyCard {
        PartyCard {
            admin: "NL".into(),
            endpoint: "https://127.0.0.1:7001".into(),
            signing_key: SigningIdentity::generate().public_key_base64(),
            hpke_key: HpkeKeyPair::generate().public_key_base64(),
            ca_cert: CertificateAuthority::generate("NL").unwrap().cert_pem(),
        }
    }

    /// A modification of a valid card.
    type Change = Box<dyn FnOnce(&mut PartyCard)>;

    fn error_of(change: impl FnOnce(&mut PartyCard)) -> String {
        let mut c = card();
        change(&mut c);
        let msg = c.validate().unwrap_err().to_string();
        assert!(!msg.contains('\n'), "{msg}");
        msg
    }

    #[test]
    fn valid_card_passes_and_yields_keys() {
        let c = card();
        c.validate().unwrap();
        assert_eq!(
            c.endpoint_host_port().unwrap(),
            ("127.0.0.1".to_owned(), 7001)
        );
        c.verifying_key().unwrap();
        c.hpke_public_key().unwrap();
        assert_eq!(
            crate::identity::ca_admin(&c.ca_cert_der().unwrap()).unwrap(),
            "NL"
        );
    }

    #[test]
    fn card_toml_round_trip() {
        let c = card();
        let text = c.to_toml().unwrap();
        assert!(
            text.starts_with("# DCCF party card of administration NL."),
            "{text}"
        );
        assert_eq!(PartyCard::from_toml(&text).unwrap(), c);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.toml");
        c.save(&path).unwrap();
        assert_eq!(PartyCard::load(&path).unwrap(), c);
        assert!(matches!(
            c.save(&path),
            Err(IdentityError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn from_toml_rejects_unknown_and_missing_fields() {
        let text = card().to_toml().unwrap();
        let err = PartyCard::from_toml(&format!("{text}role = \"x\"\n")).unwrap_err();
        assert!(matches!(err, IdentityError::CardSyntax { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("unknown field `role`") && msg.contains("line "),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");

        let without_hpke: String = text
            .lines()
            .filter(|l| !l.starts_with("hpke_key"))
            .map(|l| format!("{l}\n"))
            .collect();
        let msg = PartyCard::from_toml(&without_hpke).unwrap_err().to_string();
        assert!(msg.contains("missing field `hpke_key`"), "{msg}");

        // A syntactically valid card with a bad field is rejected by validation.
        let bad = text.replace("https://127.0.0.1:7001", "http://127.0.0.1:7001");
        let msg = PartyCard::from_toml(&bad).unwrap_err().to_string();
        assert!(msg.starts_with("party card NL: field endpoint:"), "{msg}");
    }

    #[test]
    fn validate_names_the_bad_field() {
        let other_ca = CertificateAuthority::generate("BR").unwrap().cert_pem();
        let leaf = CertificateAuthority::generate("NL")
            .unwrap()
            .issue(&crate::identity::CertRequest::new(
                "NL",
                crate::identity::Role::Gateway,
                vec![],
            ))
            .unwrap()
            .cert_pem;
        let weak = STANDARD.encode({
            let mut identity = [0u8; 32];
            identity[0] = 1; // the neutral element: a small-order point
            identity
        });
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|c| c.admin = "nl".into()),
                "party card nl: field admin: must start with two uppercase",
            ),
            (
                Box::new(|c| c.admin = String::new()),
                "party card (no admin): field admin:",
            ),
            (
                Box::new(|c| c.admin = "NL-".into()),
                "field admin: the suffix after '-' must be 1 to 16",
            ),
            (
                Box::new(|c| c.endpoint = "http://h:1".into()),
                "field endpoint: must start with https://",
            ),
            (
                Box::new(|c| c.endpoint = "https://h".into()),
                "field endpoint: must be https://host:port",
            ),
            (
                Box::new(|c| c.endpoint = "https://h:0".into()),
                "field endpoint: invalid port \"0\"",
            ),
            (
                Box::new(|c| c.endpoint = "https://h:7001/x".into()),
                "field endpoint: invalid port",
            ),
            (
                Box::new(|c| c.endpoint = "https://::1:7001".into()),
                "field endpoint: invalid host",
            ),
            (
                Box::new(|c| c.endpoint = "https://b_d:7001".into()),
                "field endpoint: invalid host",
            ),
            (
                Box::new(|c| c.signing_key = "AAAA".into()),
                "party card NL: field signing_key: not 32 bytes of base64",
            ),
            (
                Box::new(|c| c.signing_key = "!!".into()),
                "field signing_key: not 32 bytes of base64",
            ),
            (
                Box::new(move |c| c.signing_key = weak),
                "field signing_key: is a weak",
            ),
            (
                Box::new(|c| c.hpke_key = STANDARD.encode([1u8; 31])),
                "party card NL: field hpke_key: not 32 bytes of base64",
            ),
            (
                Box::new(|c| c.ca_cert = String::new()),
                "field ca_cert: no CERTIFICATE PEM block",
            ),
            (
                Box::new(|c| c.ca_cert = format!("{0}{0}", c.ca_cert)),
                "field ca_cert: 2 CERTIFICATE PEM blocks",
            ),
            (
                Box::new(|c| {
                    c.ca_cert =
                        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into()
                }),
                "field ca_cert: not a valid X.509 certificate",
            ),
            (
                Box::new(move |c| c.ca_cert = other_ca),
                "field ca_cert: CA certificate belongs to BR, not NL",
            ),
            (
                Box::new(move |c| c.ca_cert = leaf),
                "field ca_cert: is not a CA certificate",
            ),
        ];
        for (change, expected) in cases {
            let msg = error_of(change);
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        }
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            parse_endpoint("https://[::1]:7001").unwrap(),
            ("::1".into(), 7001)
        );
        assert_eq!(
            parse_endpoint("https://node.customs.nl:443").unwrap(),
            ("node.customs.nl".into(), 443)
        );
        for bad in [
            "https://[127.0.0.1]:1",
            "https://user@h:1",
            "https://h:+1",
            "https://h:65536",
            "https://:1",
            "https://h:1/",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn admin_ids() {
        for ok in ["NL", "BR", "DE-ZOLL", "EU-OLAF1", "XX-0123456789ABCDEF"] {
            validate_admin_id(ok).unwrap();
        }
        for bad in [
            "",
            "N",
            "nl",
            "NLD",
            "N1",
            "NL-",
            "NL_X",
            "NL-abc",
            "NL-0123456789ABCDEFG",
            "ÑL",
        ] {
            let err = validate_admin_id(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid administration id"),
                "{err}"
            );
        }
    }
}
