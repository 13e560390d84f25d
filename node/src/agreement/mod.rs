//! Agreements (DESIGN §4), minimal: the TOML file, its parties' detached signatures, and the set
//! of agreements a node trusts.
//!
//! An agreement file `NAME.toml` is signed by each party in a sibling file `NAME.<ADMIN>.sig`
//! holding the base64 Ed25519 signature over `PAE("application/vnd.dccf.agreement-digest.v1",
//! SHA-256(file bytes))`. An agreement is *active* when every party's signature verifies and now
//! is inside `[valid_from, valid_until)`. Trust comes only from active agreements: a node accepts
//! a partner's TLS certificate, signature or encryption key only if an active agreement names it.
//!
//! The full policy engine (field allowlists, rates, retention) checks flows through
//! [`crate::policy`]; this module only parses, verifies and indexes.

pub mod commands;
pub mod templates;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::envelope::pae::{AGREEMENT_DIGEST_TYPE, pae};
use crate::envelope::{HpkePublicKey, sha256};
use crate::identity::card::PartyCard;

/// Errors loading, verifying or using agreements. Each names the file or agreement concerned.
#[derive(Debug, thiserror::Error)]
pub enum AgreementError {
    /// An agreement file or directory could not be read or written.
    #[error("agreement {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a valid agreement.
    #[error("agreement {path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the field).
        detail: String,
    },
    /// A signature file exists but is not a valid signature by that party.
    #[error("agreement {path}: signature of {admin} does not verify over the file's digest")]
    BadSignature {
        /// The agreement file.
        path: PathBuf,
        /// The party whose signature failed.
        admin: String,
    },
    /// No agreement with this id is loaded.
    #[error("unknown agreement {0:?}")]
    Unknown(String),
    /// The agreement exists but is not active.
    #[error("agreement {id} is not active: {why}")]
    Inactive {
        /// Agreement id.
        id: String,
        /// Why (missing signatures, not yet valid, expired).
        why: String,
    },
    /// The agreement exists, but no active version has the digest the message names.
    #[error("agreement {id}: no active version has digest {digest}")]
    DigestMismatch {
        /// Agreement id.
        id: String,
        /// The digest named (hex).
        digest: String,
    },
}

/// The TOML document of an agreement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgreementDoc {
    /// Stable identifier, e.g. `nl-br-aeo-mra`; versions share it.
    pub id: String,
    /// Version number; a higher version supersedes a lower one.
    pub version: u32,
    /// Human-readable title.
    pub title: String,
    /// The legal instrument the exchange rests on.
    #[serde(default)]
    pub legal_basis: String,
    /// Purposes the data may be used for.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Start of validity (RFC 3339 date-time, inclusive).
    pub valid_from: toml::value::Datetime,
    /// End of validity (RFC 3339 date-time, exclusive).
    pub valid_until: toml::value::Datetime,
    /// The administrations bound by the agreement, with their party cards.
    pub parties: Vec<PartyCard>,
    /// Which messages may flow, in which direction.
    pub flows: Vec<Flow>,
}

/// One permitted message flow.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    /// Fully qualified protobuf message type, e.g. `dccf.v1.PreArrivalDeclaration`.
    pub message_type: String,
    /// Sending administration.
    pub from: String,
    /// Receiving administration.
    pub to: String,
    /// Payload fields that may be sent, as protobuf field paths of `message_type`
    /// (e.g. `declaration_reference`, `consignor.name`, `goods_items.hs_code`; repeated fields are
    /// traversed implicitly). A path allows everything beneath it; `"*"` allows the whole message.
    /// Every path is checked against the message descriptor when the agreement loads.
    pub fields: Vec<toml::Spanned<String>>,
    /// Most messages per minute on this flow (bursts up to this many); absent means unlimited.
    /// Sender and receiver each enforce it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_minute: Option<u32>,
    /// True if each message needs a reference to the data subject's consent (carried, signed, in
    /// the envelope header). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub consent_required: bool,
    /// Days the receiver may keep a payload of this flow; after that the node crypto-shreds it,
    /// acknowledged or not. Absent means until the back office acknowledges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
    /// True if the receiver may pass data received on this flow on to a third administration.
    /// Default false: the receiver's node refuses to re-send such a payload to anyone but its
    /// original sender.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub onward_transfer: bool,
    /// `fields` compiled against the message descriptor when the agreement loads.
    #[serde(skip)]
    pub allow: AllowTree,
}

/// A flow's field allowlist as a tree of field numbers: checking a payload is one map lookup per
/// set field, with no string work unless a field is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowTree {
    /// This field and everything beneath it is allowed.
    pub all: bool,
    /// Allowed sub-fields by field number.
    pub children: std::collections::HashMap<u32, AllowTree>,
}

impl AllowTree {
    /// Compiles `paths` (already checked by `check_field_path`) for `message`.
    fn compile(
        message: &prost_reflect::MessageDescriptor,
        paths: &[toml::Spanned<String>],
    ) -> AllowTree {
        let mut root = AllowTree::default();
        for path in paths {
            let path = path.get_ref();
            if path == "*" {
                root.all = true;
                continue;
            }
            let (mut node, mut current) = (&mut root, Some(message.clone()));
            for segment in path.split('.') {
                let Some(field) = current.as_ref().and_then(|m| m.get_field_by_name(segment))
                else {
                    break;
                };
                current = match field.kind() {
                    prost_reflect::Kind::Message(m) => Some(m),
                    _ => None,
                };
                node = node.children.entry(field.number()).or_default();
            }
            node.all = true;
        }
        root
    }
}

impl Flow {
    /// True if this flow allows the field at `path` (dot-separated field names).
    pub fn allows_field(&self, path: &str) -> bool {
        self.fields.iter().any(|allowed| {
            let allowed = allowed.get_ref().as_str();
            allowed == "*"
                || allowed == path
                || path
                    .strip_prefix(allowed)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }
}

/// Checks that `path` names a field (and sub-fields) of `message`; the error says which segment
/// is unknown.
fn check_field_path(message: &prost_reflect::MessageDescriptor, path: &str) -> Result<(), String> {
    if path == "*" {
        return Ok(());
    }
    let mut current = message.clone();
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let field = current.get_field_by_name(segment).ok_or_else(|| {
            format!(
                "unknown field {segment:?} in {path:?} (no such field in {})",
                current.full_name()
            )
        })?;
        if segments.peek().is_some() {
            current = match field.kind() {
                prost_reflect::Kind::Message(m) => m,
                _ => {
                    return Err(format!(
                        "{path:?}: {segment:?} is not a message, it has no sub-fields"
                    ));
                }
            };
        }
    }
    Ok(())
}

/// 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// A party with its keys decoded once at load time.
#[derive(Debug, Clone)]
pub struct Party {
    /// The party card as written in the agreement.
    pub card: PartyCard,
    /// Its Ed25519 key: verifies its envelope headers and receipts.
    pub verifying_key: VerifyingKey,
    /// Its HPKE key: payloads to it are sealed to this key.
    pub hpke_key: HpkePublicKey,
    /// Its CA certificate (DER): its node certificates chain to this.
    pub ca_der: Vec<u8>,
}

/// A parsed, signature-checked agreement.
#[derive(Debug, Clone)]
pub struct Agreement {
    /// The document.
    pub doc: AgreementDoc,
    /// SHA-256 of the exact file bytes.
    pub digest: [u8; 32],
    /// Where it was loaded from.
    pub path: PathBuf,
    /// Parties by admin id.
    pub parties: BTreeMap<String, Party>,
    /// Parties whose signature is missing (empty when fully signed).
    pub unsigned_by: Vec<String>,
    /// The first valid revocation: (revoking administration, effective time in Unix ms).
    pub revoked: Option<(String, i64)>,
    /// `valid_from` in Unix ms.
    pub valid_from_ms: i64,
    /// `valid_until` in Unix ms.
    pub valid_until_ms: i64,
}

impl Agreement {
    /// Parses and checks `bytes` (the file at `path`); signatures are looked up by the caller.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Agreement, AgreementError> {
        let invalid = |detail: String| AgreementError::Invalid {
            path: path.to_owned(),
            detail,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
        let doc: AgreementDoc =
            toml::from_str(text).map_err(|e| invalid(crate::config::one_line(&e.to_string())))?;
        if doc.id.is_empty()
            || !doc
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(format!(
                "field id: {:?} must be non-empty [A-Za-z0-9._-]",
                doc.id
            )));
        }
        let valid_from_ms =
            datetime_ms(&doc.valid_from).map_err(|e| invalid(format!("field valid_from: {e}")))?;
        let valid_until_ms = datetime_ms(&doc.valid_until)
            .map_err(|e| invalid(format!("field valid_until: {e}")))?;
        if valid_until_ms <= valid_from_ms {
            return Err(invalid(
                "field valid_until: must be after valid_from".into(),
            ));
        }
        let mut parties = BTreeMap::new();
        for (i, card) in doc.parties.iter().enumerate() {
            card.validate()
                .map_err(|e| invalid(format!("parties[{i}]: {e}")))?;
            let party = Party {
                verifying_key: card
                    .verifying_key()
                    .map_err(|e| invalid(format!("parties[{i}]: {e}")))?,
                hpke_key: card
                    .hpke_public_key()
                    .map_err(|e| invalid(format!("parties[{i}]: {e}")))?,
                ca_der: card
                    .ca_cert_der()
                    .map_err(|e| invalid(format!("parties[{i}]: {e}")))?,
                card: card.clone(),
            };
            if parties.insert(card.admin.clone(), party).is_some() {
                return Err(invalid(format!(
                    "parties[{i}]: administration {} is listed twice",
                    card.admin
                )));
            }
        }
        if parties.len() < 2 {
            return Err(invalid(
                "field parties: an agreement needs at least two parties".into(),
            ));
        }
        if doc.flows.is_empty() {
            return Err(invalid(
                "field flows: an agreement needs at least one flow".into(),
            ));
        }
        let pool = crate::proto::descriptor_pool();
        for (i, flow) in doc.flows.iter().enumerate() {
            for (field, admin) in [("from", &flow.from), ("to", &flow.to)] {
                if !parties.contains_key(admin) {
                    return Err(invalid(format!(
                        "flows[{i}].{field}: {admin} is not a party"
                    )));
                }
            }
            if flow.from == flow.to {
                return Err(invalid(format!(
                    "flows[{i}]: from and to are both {}",
                    flow.from
                )));
            }
            let descriptor = pool
                .get_message_by_name(&flow.message_type)
                .filter(|_| crate::proto::MESSAGE_TYPES.contains(&flow.message_type.as_str()))
                .ok_or_else(|| {
                    invalid(format!(
                        "flows[{i}].message_type: {:?} is not a customs message type (one of {})",
                        flow.message_type,
                        crate::proto::MESSAGE_TYPES.join(", ")
                    ))
                })?;
            if flow.retention_days == Some(0) {
                return Err(invalid(format!(
                    "flows[{i}].retention_days: 0 would delete data on arrival; give at least 1"
                )));
            }
            if flow.rate_limit_per_minute == Some(0) {
                return Err(invalid(format!(
                    "flows[{i}].rate_limit_per_minute: 0 would block the flow; remove the flow instead"
                )));
            }
            if flow.fields.is_empty() {
                return Err(invalid(format!(
                    "flows[{i}].fields: empty; list the allowed field paths of {}, or [\"*\"] for the whole message",
                    flow.message_type
                )));
            }
            for path in &flow.fields {
                check_field_path(&descriptor, path.get_ref()).map_err(|detail| {
                    invalid(format!(
                        "line {}: flows[{i}].fields: {detail}",
                        line_of(text, path.span().start)
                    ))
                })?;
            }
        }
        let mut doc = doc;
        for flow in &mut doc.flows {
            if let Some(descriptor) = pool.get_message_by_name(&flow.message_type) {
                flow.allow = AllowTree::compile(&descriptor, &flow.fields);
            }
        }
        Ok(Agreement {
            digest: sha256(bytes),
            path: path.to_owned(),
            unsigned_by: parties.keys().cloned().collect(),
            revoked: None,
            parties,
            doc,
            valid_from_ms,
            valid_until_ms,
        })
    }

    /// Loads `path` and verifies every sibling signature file `STEM.<ADMIN>.sig`. A missing
    /// signature leaves the agreement inactive; a present but invalid one is an error.
    pub fn load(path: &Path) -> Result<Agreement, AgreementError> {
        let bytes = std::fs::read(path).map_err(|source| AgreementError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut agreement = Agreement::parse(path, &bytes)?;
        let mut unsigned = Vec::new();
        for (admin, party) in &agreement.parties {
            let sig_path = signature_path(path, admin);
            match std::fs::read_to_string(&sig_path) {
                Ok(text) => {
                    if !verify_signature(&agreement.digest, text.trim(), &party.verifying_key) {
                        return Err(AgreementError::BadSignature {
                            path: path.to_owned(),
                            admin: admin.clone(),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => unsigned.push(admin.clone()),
                Err(source) => {
                    return Err(AgreementError::Io {
                        path: sig_path,
                        source,
                    });
                }
            }
        }
        agreement.unsigned_by = unsigned;
        for (admin, party) in &agreement.parties {
            let rev_path = revocation_path(path, admin);
            let text = match std::fs::read_to_string(&rev_path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(AgreementError::Io {
                        path: rev_path,
                        source,
                    });
                }
            };
            let at_ms = parse_revocation(&agreement.digest, admin, &text, &party.verifying_key)
                .ok_or_else(|| AgreementError::Invalid {
                    path: rev_path.clone(),
                    detail: format!("not a valid revocation signed by {admin}"),
                })?;
            let earlier = agreement.revoked.as_ref().is_none_or(|(_, t)| at_ms < *t);
            if earlier {
                agreement.revoked = Some((admin.clone(), at_ms));
            }
        }
        Ok(agreement)
    }

    /// Agreement id.
    pub fn id(&self) -> &str {
        &self.doc.id
    }

    /// Why the agreement is not active at `now_ms`, or `None` if it is.
    pub fn inactive_reason(&self, now_ms: i64) -> Option<String> {
        if let Some((admin, at_ms)) = &self.revoked
            && now_ms >= *at_ms
        {
            Some(format!(
                "revoked by {admin} at {}",
                crate::agreement::format_ms(*at_ms)
            ))
        } else if !self.unsigned_by.is_empty() {
            Some(format!("not signed by {}", self.unsigned_by.join(", ")))
        } else if now_ms < self.valid_from_ms {
            Some(format!("valid only from {}", self.doc.valid_from))
        } else if now_ms >= self.valid_until_ms {
            Some(format!("expired at {}", self.doc.valid_until))
        } else {
            None
        }
    }

    /// True if fully signed and inside its validity window at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.inactive_reason(now_ms).is_none()
    }

    /// The party with this admin id.
    pub fn party(&self, admin: &str) -> Option<&Party> {
        self.parties.get(admin)
    }
}

/// Path of `admin`'s detached signature for the agreement file at `path`.
pub fn signature_path(path: &Path, admin: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.{admin}.sig"))
}

/// Path of `admin`'s revocation of the agreement file at `path`.
pub fn revocation_path(path: &Path, admin: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.{admin}.revoked"))
}

fn revocation_message(digest: &[u8; 32], at_ms: i64, admin: &str) -> Vec<u8> {
    let body = [digest.as_slice(), &at_ms.to_be_bytes(), admin.as_bytes()].concat();
    pae(crate::envelope::pae::AGREEMENT_REVOCATION_TYPE, &body)
}

/// RFC 3339 text of a Unix-ms time (UTC, second precision).
pub fn format_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Reads a revocation file (`revoked_at_ms = N` and `signature = "BASE64"` lines) and returns the
/// effective time if `key` signed it for this digest and administration.
fn parse_revocation(digest: &[u8; 32], admin: &str, text: &str, key: &VerifyingKey) -> Option<i64> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Revocation {
        revoked_at_ms: i64,
        signature: String,
    }
    let r: Revocation = toml::from_str(text).ok()?;
    let sig = Signature::from_slice(&B64.decode(r.signature).ok()?).ok()?;
    key.verify_strict(&revocation_message(digest, r.revoked_at_ms, admin), &sig)
        .ok()
        .map(|()| r.revoked_at_ms)
}

/// Revokes the agreement file at `path` as `admin`, effective `at_ms`; writes
/// `STEM.<ADMIN>.revoked`. Copy that file to every party's agreements directory.
pub fn revoke_file(
    path: &Path,
    admin: &str,
    key: &SigningKey,
    at_ms: i64,
) -> Result<PathBuf, AgreementError> {
    let bytes = std::fs::read(path).map_err(|source| AgreementError::Io {
        path: path.to_owned(),
        source,
    })?;
    let sig = key.sign(&revocation_message(&sha256(&bytes), at_ms, admin));
    let rev_path = revocation_path(path, admin);
    let text = format!(
        "# Revocation of {} by {admin}, effective {}\nrevoked_at_ms = {at_ms}\nsignature = \"{}\"\n",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format_ms(at_ms),
        B64.encode(sig.to_bytes())
    );
    std::fs::write(&rev_path, text).map_err(|source| AgreementError::Io {
        path: rev_path.clone(),
        source,
    })?;
    Ok(rev_path)
}

/// Signs the agreement file at `path` as `admin` and writes `STEM.<ADMIN>.sig`.
pub fn sign_file(path: &Path, admin: &str, key: &SigningKey) -> Result<PathBuf, AgreementError> {
    let bytes = std::fs::read(path).map_err(|source| AgreementError::Io {
        path: path.to_owned(),
        source,
    })?;
    let sig = key.sign(&pae(AGREEMENT_DIGEST_TYPE, &sha256(&bytes)));
    let sig_path = signature_path(path, admin);
    std::fs::write(&sig_path, format!("{}\n", B64.encode(sig.to_bytes()))).map_err(|source| {
        AgreementError::Io {
            path: sig_path.clone(),
            source,
        }
    })?;
    Ok(sig_path)
}

fn verify_signature(digest: &[u8; 32], sig_b64: &str, key: &VerifyingKey) -> bool {
    let Ok(bytes) = B64.decode(sig_b64) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&bytes) else {
        return false;
    };
    key.verify_strict(&pae(AGREEMENT_DIGEST_TYPE, digest), &sig)
        .is_ok()
}

fn datetime_ms(dt: &toml::value::Datetime) -> Result<i64, String> {
    let parsed = time::OffsetDateTime::parse(
        &dt.to_string(),
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| format!("{dt} is not a full RFC 3339 date-time with offset ({e})"))?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).map_err(|_| "out of range".into())
}

/// All agreements a node knows, indexed by id. Cheap to share (`Arc`) and swapped whole on reload.
#[derive(Debug, Clone, Default)]
pub struct AgreementSet {
    by_id: BTreeMap<String, Vec<Arc<Agreement>>>,
}

impl AgreementSet {
    /// Loads every `*.toml` in `dir`. A malformed file or a bad signature is an error naming the
    /// file; an unsigned agreement loads but stays inactive.
    pub fn load_dir(dir: &Path) -> Result<AgreementSet, AgreementError> {
        let io = |source| AgreementError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        paths.sort();
        let mut set = AgreementSet::default();
        for path in paths {
            set.insert(Agreement::load(&path)?);
        }
        Ok(set)
    }

    /// Adds an agreement (versions of one id are kept highest first).
    pub fn insert(&mut self, agreement: Agreement) {
        let versions = self.by_id.entry(agreement.doc.id.clone()).or_default();
        versions.push(Arc::new(agreement));
        versions.sort_by_key(|a| std::cmp::Reverse(a.doc.version));
    }

    /// Whether an agreement with this id is loaded (any version, active or not).
    pub fn knows(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Every loaded agreement, every version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Agreement>> {
        self.by_id.values().flatten()
    }

    /// The highest active version of `id` (what a sender uses).
    pub fn active(&self, id: &str, now_ms: i64) -> Result<&Arc<Agreement>, AgreementError> {
        let versions = self
            .by_id
            .get(id)
            .ok_or_else(|| AgreementError::Unknown(id.into()))?;
        versions
            .iter()
            .find(|a| a.is_active(now_ms))
            .ok_or_else(|| AgreementError::Inactive {
                id: id.into(),
                why: versions[0].inactive_reason(now_ms).unwrap_or_default(),
            })
    }

    /// The active version of `id` whose digest is `digest` (what a receiver checks). A version
    /// is retired as soon as a higher version of the same id is active (supersession at the new
    /// version's `valid_from`).
    pub fn active_with_digest(
        &self,
        id: &str,
        digest: &[u8],
        now_ms: i64,
    ) -> Result<&Arc<Agreement>, AgreementError> {
        let versions = self
            .by_id
            .get(id)
            .ok_or_else(|| AgreementError::Unknown(id.into()))?;
        let Some(a) = versions.iter().find(|a| a.digest.as_slice() == digest) else {
            return Err(AgreementError::DigestMismatch {
                id: id.into(),
                digest: hex::encode(digest),
            });
        };
        if let Some(why) = a.inactive_reason(now_ms) {
            return Err(AgreementError::Inactive { id: id.into(), why });
        }
        match versions.iter().find(|v| v.is_active(now_ms)) {
            Some(current) if current.doc.version > a.doc.version => Err(AgreementError::Inactive {
                id: id.into(),
                why: format!(
                    "version {} is superseded by version {} since {}",
                    a.doc.version, current.doc.version, current.doc.valid_from
                ),
            }),
            _ => Ok(a),
        }
    }

    /// The version of each agreement in force at `now_ms`: the highest active one.
    pub fn current(&self, now_ms: i64) -> impl Iterator<Item = &Arc<Agreement>> {
        self.by_id
            .values()
            .filter_map(move |versions| versions.iter().find(|a| a.is_active(now_ms)))
    }

    /// CA certificates (DER) that `admin` uses, from every agreement in force that `me` and
    /// `admin` are both parties to. Empty if none links them.
    pub fn partner_cas(&self, me: &str, admin: &str, now_ms: i64) -> Vec<Vec<u8>> {
        if admin == me {
            return Vec::new();
        }
        let mut cas: Vec<Vec<u8>> = self
            .current(now_ms)
            .filter(|a| a.parties.contains_key(me))
            .filter_map(|a| a.party(admin).map(|p| p.ca_der.clone()))
            .collect();
        cas.sort();
        cas.dedup();
        cas
    }

    /// The party card of `admin` from an agreement in force shared with `me`.
    pub fn partner(&self, me: &str, admin: &str, now_ms: i64) -> Option<&Party> {
        self.current(now_ms)
            .filter(|a| a.parties.contains_key(me))
            .find_map(|a| a.party(admin))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::identity::card::PartyCard;

    /// A party with real keys and CA, for tests that need agreements.
    pub(crate) struct TestParty {
        pub card: PartyCard,
        pub signing: SigningKey,
    }

    pub(crate) fn test_party(admin: &str) -> TestParty {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::identity::IdentityPaths {
            dir: dir.path().to_owned(),
        };
        let card = crate::identity::NodeIdentity::generate_all(
            &paths,
            admin,
            "127.0.0.1",
            "https://127.0.0.1:7001",
        )
        .unwrap();
        let id = crate::identity::NodeIdentity::load(&paths, admin).unwrap();
        TestParty {
            card,
            signing: id.signing.signing_key().clone(),
        }
    }

    pub(crate) fn doc(parties: &[&TestParty]) -> AgreementDoc {
        AgreementDoc {
            id: "test-agreement".into(),
            version: 1,
            title: "Test".into(),
            legal_basis: "Test basis".into(),
            purposes: vec!["testing".into()],
            valid_from: "2020-01-01T00:00:00Z".parse().unwrap(),
            valid_until: "2100-01-01T00:00:00Z".parse().unwrap(),
            parties: parties.iter().map(|p| p.card.clone()).collect(),
            flows: vec![Flow {
                message_type: "dccf.v1.RiskAlert".into(),
                from: parties[0].card.admin.clone(),
                to: parties[1].card.admin.clone(),
                fields: vec![toml::Spanned::new(0..0, "*".to_owned())],
                rate_limit_per_minute: None,
                consent_required: false,
                retention_days: None,
                onward_transfer: false,
                allow: Default::default(),
            }],
        }
    }

    /// Writes `doc` into `dir` and signs it by `signers`.
    pub(crate) fn write_signed(dir: &Path, doc: &AgreementDoc, signers: &[&TestParty]) -> PathBuf {
        let path = dir.join(format!("{}.toml", doc.id));
        std::fs::write(&path, toml::to_string(doc).unwrap()).unwrap();
        for s in signers {
            sign_file(&path, &s.card.admin, &s.signing).unwrap();
        }
        path
    }

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn the_shipped_example_agreements_are_signed_by_all_their_parties() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agreements");
        let set = AgreementSet::load_dir(&dir)
            .expect("shipped agreements load and their signatures verify");
        for (id, parties) in [
            ("nl-br-exchange", vec!["BR", "NL"]),
            ("nl-br-aeo-mra", vec!["BR", "NL"]),
            ("pre-arrival-nl-br-de", vec!["BR", "DE", "NL"]),
        ] {
            let a = set.active(id, NOW).expect("active inside its window");
            assert!(a.unsigned_by.is_empty(), "{id}");
            assert_eq!(a.parties.keys().collect::<Vec<_>>(), parties, "{id}");
        }
    }

    #[test]
    fn a_newer_version_supersedes_the_older_one_at_its_valid_from() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let dir = tempfile::tempdir().unwrap();
        let v1 = doc(&[&nl, &br]);
        let mut v2 = v1.clone();
        v2.version = 2;
        v2.valid_from = "2027-01-01T00:00:00Z".parse().unwrap();
        write_signed(dir.path(), &v1, &[&nl, &br]);
        let v2_file = dir.path().join("test-agreement-v2.toml");
        std::fs::write(&v2_file, toml::to_string(&v2).unwrap()).unwrap();
        for p in [&nl, &br] {
            sign_file(&v2_file, &p.card.admin, &p.signing).unwrap();
        }
        let set = AgreementSet::load_dir(dir.path()).unwrap();
        let d1 = set.all().find(|a| a.doc.version == 1).unwrap().digest;
        let d2 = set.all().find(|a| a.doc.version == 2).unwrap().digest;

        // Before v2's valid_from: v1 is in force, v2 not yet.
        let before = 1_790_000_000_000; // 2026-09
        assert_eq!(set.active("test-agreement", before).unwrap().doc.version, 1);
        assert!(
            set.active_with_digest("test-agreement", &d1, before)
                .is_ok()
        );
        assert!(
            set.active_with_digest("test-agreement", &d2, before)
                .is_err()
        );

        // From v2's valid_from: v2 is in force and v1 is refused as superseded.
        let after = 1_800_000_000_000; // 2027-01
        assert_eq!(set.active("test-agreement", after).unwrap().doc.version, 2);
        assert!(set.active_with_digest("test-agreement", &d2, after).is_ok());
        let err = set
            .active_with_digest("test-agreement", &d1, after)
            .unwrap_err()
            .to_string();
        assert!(err.contains("superseded by version 2"), "{err}");
    }

    #[test]
    fn a_revocation_by_any_party_deactivates_at_once_and_a_forged_one_is_refused() {
        let (nl, br, xx) = (test_party("NL"), test_party("BR"), test_party("XX"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_signed(dir.path(), &doc(&[&nl, &br]), &[&nl, &br]);
        revoke_file(&path, "BR", &br.signing, NOW).unwrap();
        let set = AgreementSet::load_dir(dir.path()).unwrap();
        assert!(
            set.active("test-agreement", NOW - 1).is_ok(),
            "effective from its time on"
        );
        let err = set.active("test-agreement", NOW).unwrap_err().to_string();
        assert!(err.contains("revoked by BR"), "{err}");
        assert!(
            set.partner_cas("NL", "BR", NOW).is_empty(),
            "no trust after revocation"
        );

        // A revocation file for NL signed by a stranger makes the whole load fail, naming it.
        revoke_file(&path, "NL", &xx.signing, NOW).unwrap();
        let err = AgreementSet::load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("test-agreement.NL.revoked") && err.contains("not a valid revocation"),
            "{err}"
        );
    }

    #[test]
    fn fully_signed_agreement_in_window_is_active() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let dir = tempfile::tempdir().unwrap();
        write_signed(dir.path(), &doc(&[&nl, &br]), &[&nl, &br]);
        let set = AgreementSet::load_dir(dir.path()).unwrap();
        let a = set.active("test-agreement", NOW).unwrap();
        assert!(
            set.active_with_digest("test-agreement", &a.digest, NOW)
                .is_ok()
        );
        assert_eq!(set.partner_cas("NL", "BR", NOW).len(), 1);
        assert!(set.partner("NL", "BR", NOW).is_some());
    }

    #[test]
    fn missing_signature_leaves_it_inactive_and_trusts_nobody() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let dir = tempfile::tempdir().unwrap();
        write_signed(dir.path(), &doc(&[&nl, &br]), &[&nl]);
        let set = AgreementSet::load_dir(dir.path()).unwrap();
        let err = set.active("test-agreement", NOW).unwrap_err().to_string();
        assert!(err.contains("not signed by BR"), "{err}");
        assert!(set.partner_cas("NL", "BR", NOW).is_empty());
        assert!(set.partner("NL", "BR", NOW).is_none());
    }

    #[test]
    fn signature_by_a_non_party_key_is_an_error() {
        let (nl, br, xx) = (test_party("NL"), test_party("BR"), test_party("XX"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_signed(dir.path(), &doc(&[&nl, &br]), &[&nl]);
        // XX's key writes BR's signature file.
        let bytes = std::fs::read(&path).unwrap();
        let sig = xx
            .signing
            .sign(&pae(AGREEMENT_DIGEST_TYPE, &sha256(&bytes)));
        std::fs::write(signature_path(&path, "BR"), B64.encode(sig.to_bytes())).unwrap();
        let err = AgreementSet::load_dir(dir.path()).unwrap_err();
        assert!(
            matches!(err, AgreementError::BadSignature { ref admin, .. } if admin == "BR"),
            "{err}"
        );
    }

    #[test]
    fn any_edit_after_signing_invalidates_the_signatures() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_signed(dir.path(), &doc(&[&nl, &br]), &[&nl, &br]);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("title = \"Test\"", "title = \"Tost\"")).unwrap();
        assert!(matches!(
            AgreementSet::load_dir(dir.path()).unwrap_err(),
            AgreementError::BadSignature { .. }
        ));
    }

    #[test]
    fn outside_the_validity_window_is_inactive() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let dir = tempfile::tempdir().unwrap();
        let mut d = doc(&[&nl, &br]);
        d.valid_from = "2030-01-01T00:00:00Z".parse().unwrap();
        d.valid_until = "2031-01-01T00:00:00Z".parse().unwrap();
        write_signed(dir.path(), &d, &[&nl, &br]);
        let set = AgreementSet::load_dir(dir.path()).unwrap();
        assert!(
            set.active("test-agreement", NOW)
                .unwrap_err()
                .to_string()
                .contains("valid only from")
        );
        let after = 1_925_000_000_000; // 2031
        assert!(
            set.active("test-agreement", after)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
    }

    #[test]
    fn unknown_id_and_wrong_digest_are_distinguished() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let dir = tempfile::tempdir().unwrap();
        write_signed(dir.path(), &doc(&[&nl, &br]), &[&nl, &br]);
        let set = AgreementSet::load_dir(dir.path()).unwrap();
        assert!(matches!(
            set.active("nope", NOW),
            Err(AgreementError::Unknown(_))
        ));
        assert!(matches!(
            set.active_with_digest("test-agreement", &[0u8; 32], NOW),
            Err(AgreementError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn invalid_documents_name_the_field() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let base = doc(&[&nl, &br]);
        type Mutation = Box<dyn Fn(&mut AgreementDoc)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|d| d.flows[0].message_type = "dccf.v1.NoSuchMessage".into()),
                "flows[0].message_type",
            ),
            (Box::new(|d| d.flows[0].to = "FR".into()), "flows[0].to"),
            (
                Box::new(|d| d.flows[0].fields.clear()),
                "flows[0].fields: empty",
            ),
            (
                Box::new(|d| {
                    d.flows[0].fields = vec![toml::Spanned::new(0..0, "descripton".into())]
                }),
                "unknown field \"descripton\"",
            ),
            (
                Box::new(|d| {
                    d.flows[0].fields = vec![toml::Spanned::new(0..0, "severity.level".into())]
                }),
                "not a message",
            ),
            (
                Box::new(|d| d.flows[0].message_type = "dccf.v1.LedgerEntry".into()),
                "flows[0].message_type",
            ),
            (Box::new(|d| d.parties.truncate(1)), "parties"),
            (
                Box::new(|d| d.valid_until = "2019-01-01T00:00:00Z".parse().unwrap()),
                "valid_until",
            ),
            (
                Box::new(|d| d.parties[1].hpke_key = "AAAA".into()),
                "parties[1]",
            ),
            (Box::new(|d| d.id = "bad id!".into()), "field id"),
        ];
        for (mutate, field) in cases {
            let mut d = base.clone();
            mutate(&mut d);
            let text = toml::to_string(&d).unwrap();
            let err = Agreement::parse(Path::new("x.toml"), text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{field}: {err}");
            assert!(err.contains("x.toml"), "{err}");
        }
        let err = Agreement::parse(Path::new("x.toml"), b"id = 5")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("agreement x.toml:"), "{err}");
    }
}
