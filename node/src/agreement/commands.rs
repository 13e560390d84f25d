//! The `dccf-node agreement` commands: sign an agreement as this administration, verify every
//! signature and the validity window, and show a readable summary of who may send what to whom.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::{Agreement, AgreementError, sign_file};
use crate::config::NodeConfig;
use crate::identity::NodeIdentity;

/// Errors of the agreement commands (each one line, naming the file).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The agreement itself is unusable.
    #[error(transparent)]
    Agreement(#[from] AgreementError),
    /// The node's configuration or keys could not be loaded.
    #[error("{0}")]
    Node(String),
    /// This administration is not a party to the agreement.
    #[error("agreement {path}: {admin} is not a party; only parties sign")]
    NotAParty {
        /// The agreement file.
        path: PathBuf,
        /// This administration.
        admin: String,
    },
    /// The party card in the agreement names other keys than this node's.
    #[error(
        "agreement {path}: the party card of {admin} names another signing key than {key_file}; fix the card before signing"
    )]
    WrongKey {
        /// The agreement file.
        path: PathBuf,
        /// This administration.
        admin: String,
        /// This node's key file.
        key_file: PathBuf,
    },
    /// The agreement verified, but is not active now.
    #[error("agreement {path}: not active: {why}")]
    NotActive {
        /// The agreement file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Signs `file` as the administration of the node configured at `config`; returns the path of
/// the signature written. Refuses if that administration is not a party, or if its party card in
/// the agreement names another key (a signature partners could never verify).
pub fn sign(config: &Path, file: &Path) -> Result<PathBuf, CommandError> {
    let config = NodeConfig::load(config).map_err(|e| CommandError::Node(e.to_string()))?;
    let paths = config.identity_paths();
    let identity =
        NodeIdentity::load(&paths, &config.admin).map_err(|e| CommandError::Node(e.to_string()))?;
    let bytes = std::fs::read(file).map_err(|source| AgreementError::Io {
        path: file.to_owned(),
        source,
    })?;
    let agreement = Agreement::parse(file, &bytes)?;
    let party = agreement
        .party(&config.admin)
        .ok_or_else(|| CommandError::NotAParty {
            path: file.to_owned(),
            admin: config.admin.clone(),
        })?;
    if party.verifying_key != identity.signing.verifying_key() {
        return Err(CommandError::WrongKey {
            path: file.to_owned(),
            admin: config.admin.clone(),
            key_file: paths.signing_key(),
        });
    }
    Ok(sign_file(
        file,
        &config.admin,
        identity.signing.signing_key(),
    )?)
}

/// Revokes `file` as the administration of the node configured at `config`, effective `now_ms`;
/// returns the path of the revocation written.
pub fn revoke(config: &Path, file: &Path, now_ms: i64) -> Result<PathBuf, CommandError> {
    let config = NodeConfig::load(config).map_err(|e| CommandError::Node(e.to_string()))?;
    let identity = NodeIdentity::load(&config.identity_paths(), &config.admin)
        .map_err(|e| CommandError::Node(e.to_string()))?;
    let agreement = Agreement::load(file)?;
    if agreement.party(&config.admin).is_none() {
        return Err(CommandError::NotAParty {
            path: file.to_owned(),
            admin: config.admin.clone(),
        });
    }
    Ok(super::revoke_file(
        file,
        &config.admin,
        identity.signing.signing_key(),
        now_ms,
    )?)
}

/// Verifies `file` (schema, every present signature) and reports each party's signature and the
/// validity window at `now_ms`. Returns the report; an error if the file or a signature is bad,
/// or if the agreement is not active.
pub fn verify(file: &Path, now_ms: i64) -> Result<String, CommandError> {
    let agreement = Agreement::load(file)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agreement {} v{} ({})\n  digest  {}",
        agreement.id(),
        agreement.doc.version,
        file.display(),
        hex::encode(agreement.digest)
    );
    for admin in agreement.parties.keys() {
        let state = if agreement.unsigned_by.contains(admin) {
            "signature missing"
        } else {
            "signature valid"
        };
        let _ = writeln!(out, "  {admin:<8}{state}");
    }
    let _ = write!(
        out,
        "  valid   {} .. {}",
        agreement.doc.valid_from, agreement.doc.valid_until
    );
    match agreement.inactive_reason(now_ms) {
        None => {
            let _ = write!(out, "\n  status  active");
            Ok(out)
        }
        Some(why) => Err(CommandError::NotActive {
            path: file.to_owned(),
            why,
        }),
    }
}

/// A readable summary of `file`: what it is, who the parties are, and who may send what to whom.
pub fn show(file: &Path, now_ms: i64) -> Result<String, CommandError> {
    let a = Agreement::load(file)?;
    let d = &a.doc;
    let mut out = String::new();
    let _ = writeln!(out, "{} v{}: {}", d.id, d.version, d.title);
    if !d.legal_basis.is_empty() {
        let _ = writeln!(out, "legal basis: {}", d.legal_basis);
    }
    if !d.purposes.is_empty() {
        let _ = writeln!(out, "purposes: {}", d.purposes.join("; "));
    }
    let _ = writeln!(out, "valid: {} .. {}", d.valid_from, d.valid_until);
    let status = match a.inactive_reason(now_ms) {
        None => "active".to_owned(),
        Some(why) => format!("inactive ({why})"),
    };
    let _ = writeln!(out, "status: {status}\ndigest: {}", hex::encode(a.digest));
    let _ = writeln!(out, "parties:");
    for (admin, p) in &a.parties {
        let ca_fingerprint = hex::encode(&crate::envelope::sha256(&p.ca_der)[..8]);
        let _ = writeln!(
            out,
            "  {admin:<8}{}  signing key {}  CA sha256 {ca_fingerprint}…",
            p.card.endpoint, p.card.signing_key
        );
    }
    let _ = writeln!(out, "flows (who may send what to whom):");
    for f in &d.flows {
        let fields: Vec<&str> = f.fields.iter().map(|p| p.get_ref().as_str()).collect();
        let fields = if fields == ["*"] {
            "all fields".to_owned()
        } else {
            format!("fields: {}", fields.join(", "))
        };
        let mut rate = f
            .rate_limit_per_minute
            .map(|r| format!("; at most {r}/min"))
            .unwrap_or_default();
        if f.consent_required {
            rate.push_str("; consent reference required");
        }
        let _ = writeln!(
            out,
            "  {} -> {}  {}  ({fields}{rate})",
            f.from, f.to, f.message_type
        );
    }
    Ok(out.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::tests::{doc, test_party, write_signed};

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn verify_reports_each_party_and_fails_while_a_signature_is_missing() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_signed(dir.path(), &doc(&[&nl, &br]), &[&nl]);
        let err = verify(&path, NOW).unwrap_err().to_string();
        assert!(err.contains("not signed by BR"), "{err}");
        sign_file(&path, "BR", &br.signing).unwrap();
        let report = verify(&path, NOW).unwrap();
        assert!(report.contains("NL      signature valid"), "{report}");
        assert!(report.contains("status  active"), "{report}");
    }

    #[test]
    fn show_lists_the_flows() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let dir = tempfile::tempdir().unwrap();
        let path = write_signed(dir.path(), &doc(&[&nl, &br]), &[&nl, &br]);
        let text = show(&path, NOW).unwrap();
        assert!(
            text.contains("NL -> BR  dccf.v1.RiskAlert  (all fields)"),
            "{text}"
        );
        assert!(text.contains("status: active"), "{text}");
    }
}
