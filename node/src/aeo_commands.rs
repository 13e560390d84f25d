//! `dccf-node aeo …`: the AEO registry and partner mirrors from the command line. `generate` and
//! `verify` work offline; the others talk to the running node's Gateway (role `gateway`).

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Subcommand;

use crate::aeo::import::Format;
use crate::cli::{CliError, gateway_client};
use crate::proto::v1::{
    AeoAnswer, AeoAnswerSource, AeoLookupMode, AeoRegistryRecord, AeoStatement, AeoStatus,
    AeoStatusResponse, ListAeoMirrorsRequest, LookupAeoRequest, LookupAeoResponse,
    OperatorIdentifierKind, UpdateAeoRequest,
};

/// `dccf-node aeo` subcommands.
#[derive(Debug, Subcommand)]
pub enum AeoAction {
    /// Write a synthetic registry (fictitious operators only) for demos, tests and benchmarks.
    Generate {
        /// Number of operators.
        #[arg(long)]
        count: u64,
        /// Country of the operators (ISO 3166 alpha-2).
        #[arg(long, default_value = "BR")]
        country: String,
        /// Seed (same seed, same registry).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// csv or json (default: from the file extension, else csv).
        #[arg(long)]
        format: Option<String>,
        /// Output file; `-` for standard output.
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
    /// Import registry records from a CSV or JSON file (atomic: a bad file changes nothing).
    Import {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// csv or json (default: from the file extension).
        #[arg(long)]
        format: Option<String>,
        /// The registry file.
        file: PathBuf,
    },
    /// Change the status of one operator of the own registry (pushed to partner mirrors at once).
    SetStatus {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Operator id (AEO authorisation number).
        operator_id: String,
        /// valid, suspended or revoked.
        status: String,
    },
    /// Is this partner's operator AEO right now? From the mirror (default), online, or both.
    Lookup {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Partner administration (the issuer of the authorisation).
        #[arg(long)]
        partner: String,
        /// Ask the partner online instead of the mirror.
        #[arg(long, conflicts_with = "both")]
        online: bool,
        /// Ask both and warn when they disagree.
        #[arg(long)]
        both: bool,
        /// The ids are TINs, not AEO authorisation numbers.
        #[arg(long)]
        tin: bool,
        /// Print one JSON object per answer, with the partner's signed statement.
        #[arg(long)]
        json: bool,
        /// Operator ids.
        #[arg(required = true)]
        operator_ids: Vec<String>,
    },
    /// The partner mirrors (version, as-of time, size, feed state) and the own registry.
    Mirrors {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a signed statement (the `statement` of `lookup --json`) offline against the
    /// partner's public key, as a third party would.
    Verify {
        /// The partner's Ed25519 public key, base64 (from its party card or the agreement).
        #[arg(long)]
        key: String,
        /// File holding the JSON answer printed by `lookup --json` (or just its `statement`).
        file: PathBuf,
    },
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Message(crate::config::one_line(&e.to_string()))
}

fn failed(what: &str, s: &tonic::Status) -> CliError {
    CliError::Message(crate::config::one_line(&format!(
        "aeo {what} failed ({:?}): {}",
        s.code(),
        s.message()
    )))
}

/// Runs an `aeo` subcommand and returns what to print.
pub async fn run(action: AeoAction) -> Result<String, CliError> {
    match action {
        AeoAction::Generate {
            count,
            country,
            seed,
            format,
            out,
        } => generate(count, &country, seed, format.as_deref(), &out),
        AeoAction::Import {
            config,
            format,
            file,
        } => import(&config, format.as_deref(), &file).await,
        AeoAction::SetStatus {
            config,
            operator_id,
            status,
        } => set_status(&config, operator_id, &status).await,
        AeoAction::Lookup {
            config,
            partner,
            online,
            both,
            tin,
            json,
            operator_ids,
        } => {
            let mode = if both {
                AeoLookupMode::Both
            } else if online {
                AeoLookupMode::Online
            } else {
                AeoLookupMode::Mirror
            };
            lookup(&config, &partner, mode, tin, json, operator_ids).await
        }
        AeoAction::Mirrors { config, json } => mirrors(&config, json).await,
        AeoAction::Verify { key, file } => verify(&key, &file),
    }
}

fn format_of(name: Option<&str>, path: &Path) -> Result<Format, CliError> {
    match name {
        Some(n) => Format::from_name(n).map_err(err),
        None => Format::from_path(path).ok_or_else(|| {
            err(format!(
                "{}: cannot tell the format from the extension; pass --format csv or --format json",
                path.display()
            ))
        }),
    }
}

fn generate(
    count: u64,
    country: &str,
    seed: u64,
    format: Option<&str>,
    out: &Path,
) -> Result<String, CliError> {
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(err(format!(
            "--country {country:?}: two uppercase letters (ISO 3166 alpha-2) expected"
        )));
    }
    let to_stdout = out.as_os_str() == "-";
    let format = match format {
        Some(_) => format_of(format, out)?,
        None if to_stdout => Format::Csv,
        None => Format::from_path(out).unwrap_or(Format::Csv),
    };
    let records: Vec<AeoRegistryRecord> =
        crate::aeo::generate::generate(country, count, seed).collect();
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(out).map_err(|e| err(format!("{}: {e}", out.display())))?,
        ))
    };
    crate::aeo::import::write(format, &records, &mut sink)
        .and_then(|()| sink.flush())
        .map_err(|e| err(format!("{}: {e}", out.display())))?;
    if to_stdout {
        Ok(String::new())
    } else {
        Ok(format!(
            "wrote {count} synthetic {country} operators to {} ({})",
            out.display(),
            format.name()
        ))
    }
}

async fn import(config: &Path, format: Option<&str>, file: &Path) -> Result<String, CliError> {
    let format = format_of(format, file)?;
    let bytes = std::fs::read(file).map_err(|e| err(format!("{}: {e}", file.display())))?;
    let mut client = gateway_client(config).await?;
    let chunks = crate::aeo::import::requests(format, &bytes);
    let r = client
        .import_aeo_registry(tokio_stream::iter(chunks))
        .await
        .map_err(|s| {
            CliError::Message(crate::config::one_line(&format!(
                "{}: import refused, registry unchanged: {}",
                file.display(),
                s.message()
            )))
        })?
        .into_inner();
    Ok(format!(
        "imported {}: {} records, {} changed, registry version {}{}",
        file.display(),
        r.records,
        r.changed,
        r.version,
        if r.ledger_index > 0 {
            format!(", ledger entry {}", r.ledger_index)
        } else {
            String::new()
        }
    ))
}

fn parse_status(status: &str) -> Result<AeoStatus, CliError> {
    match status.to_ascii_lowercase().as_str() {
        "valid" => Ok(AeoStatus::Valid),
        "suspended" => Ok(AeoStatus::Suspended),
        "revoked" => Ok(AeoStatus::Revoked),
        other => Err(err(format!(
            "status {other:?}: expected valid, suspended or revoked"
        ))),
    }
}

async fn set_status(config: &Path, operator_id: String, status: &str) -> Result<String, CliError> {
    let status = parse_status(status)?;
    let r = gateway_client(config)
        .await?
        .update_aeo_operator(UpdateAeoRequest {
            record: Some(AeoRegistryRecord {
                operator_id: operator_id.clone(),
                status: status as i32,
                ..Default::default()
            }),
            status_only: true,
        })
        .await
        .map_err(|s| failed("set-status", &s))?
        .into_inner();
    Ok(format!(
        "{operator_id}: {} (registry version {}{})",
        status_name(status as i32),
        r.version,
        if r.changed == 0 { ", unchanged" } else { "" }
    ))
}

fn status_name(status: i32) -> &'static str {
    match AeoStatus::try_from(status).unwrap_or_default() {
        AeoStatus::Valid => "VALID",
        AeoStatus::Suspended => "SUSPENDED",
        AeoStatus::Revoked => "REVOKED",
        AeoStatus::NotFound => "NOT FOUND",
        AeoStatus::Unspecified => "UNKNOWN",
    }
}

async fn lookup(
    config: &Path,
    partner: &str,
    mode: AeoLookupMode,
    tin: bool,
    json: bool,
    ids: Vec<String>,
) -> Result<String, CliError> {
    let mut client = gateway_client(config).await?;
    let kind = if tin {
        OperatorIdentifierKind::Tin
    } else {
        OperatorIdentifierKind::AeoAuthorisation
    };
    let requests: Vec<LookupAeoRequest> = ids
        .iter()
        .map(|id| LookupAeoRequest {
            partner: partner.to_owned(),
            operator_id: id.clone(),
            identifier_kind: kind as i32,
            mode: mode as i32,
            purpose: "dccf-node aeo lookup".into(),
            query_reference: id.clone(),
        })
        .collect();
    let answers: Vec<LookupAeoResponse> = if requests.len() == 1 {
        vec![
            client
                .lookup_aeo(requests[0].clone())
                .await
                .map_err(|s| failed("lookup", &s))?
                .into_inner(),
        ]
    } else {
        let mut stream = client
            .lookup_aeo_stream(tokio_stream::iter(requests))
            .await
            .map_err(|s| failed("lookup", &s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(a) = stream.message().await.map_err(|s| failed("lookup", &s))? {
            out.push(a);
        }
        out
    };
    let lines: Vec<String> = answers
        .iter()
        .map(|a| {
            if json {
                answer_json(partner, a).to_string()
            } else {
                answer_line(partner, a)
            }
        })
        .collect();
    Ok(lines.join("\n"))
}

fn answer_line(partner: &str, a: &LookupAeoResponse) -> String {
    if !a.error.is_empty() {
        return format!("{partner} {}: error: {}", a.operator_id, a.error);
    }
    let one = |ans: &AeoAnswer| {
        let r = ans.record.clone().unwrap_or_default();
        let source = match AeoAnswerSource::try_from(ans.source).unwrap_or_default() {
            AeoAnswerSource::Online => "online",
            _ => "mirror",
        };
        let mut s = format!(
            "{} ({source}, as of {}, registry version {}{})",
            status_name(r.status),
            crate::agreement::format_ms(ans.as_of_ms),
            ans.registry_version,
            if ans.statement.is_some() {
                ", signed"
            } else {
                ""
            }
        );
        if r.valid_from_ms > 0 {
            s.push_str(&format!(
                ", valid from {}",
                crate::agreement::format_ms(r.valid_from_ms)
            ));
        }
        if let Some(name) = &r.operator_name {
            s.push_str(&format!(", {name}"));
        }
        s
    };
    let mut parts = Vec::new();
    if let Some(m) = &a.mirror {
        parts.push(one(m));
    }
    if let Some(o) = &a.online {
        parts.push(one(o));
    }
    let mut line = format!("{partner} {}: {}", a.operator_id, parts.join("; "));
    if !a.warning.is_empty() {
        line.push_str(&format!("\n  WARNING: {}", a.warning));
    }
    line
}

fn statement_json(s: &AeoStatement) -> serde_json::Value {
    serde_json::json!({
        "header": B64.encode(&s.header),
        "signature": B64.encode(&s.signature),
        "record": B64.encode(&s.record),
        "leaf_index": s.leaf_index,
        "path": s.path.iter().map(|p| B64.encode(p)).collect::<Vec<_>>(),
    })
}

fn answer_json(partner: &str, a: &LookupAeoResponse) -> serde_json::Value {
    let one = |ans: &AeoAnswer| {
        let r = ans.record.clone().unwrap_or_default();
        serde_json::json!({
            "status": status_name(r.status),
            "programme": r.programme,
            "valid_from": crate::agreement::format_ms(r.valid_from_ms),
            "valid_until": if r.valid_until_ms == 0 { String::new() } else { crate::agreement::format_ms(r.valid_until_ms) },
            "status_changed_at": crate::agreement::format_ms(r.status_changed_at_ms),
            "name": r.operator_name,
            "as_of": crate::agreement::format_ms(ans.as_of_ms),
            "registry_version": ans.registry_version,
            "statement": ans.statement.as_ref().map(statement_json),
        })
    };
    serde_json::json!({
        "partner": partner,
        "operator_id": a.operator_id,
        "mirror": a.mirror.as_ref().map(one),
        "online": a.online.as_ref().map(one),
        "warning": a.warning,
        "error": a.error,
    })
}

async fn mirrors(config: &Path, json: bool) -> Result<String, CliError> {
    let r = gateway_client(config)
        .await?
        .list_aeo_mirrors(ListAeoMirrorsRequest {})
        .await
        .map_err(|s| failed("mirrors", &s))?
        .into_inner();
    if json {
        let mirrors: Vec<serde_json::Value> = r
            .mirrors
            .iter()
            .map(|m| {
                serde_json::json!({
                    "partner": m.partner, "agreement": m.agreement_id, "registry_id": m.registry_id,
                    "version": m.version, "records": m.records,
                    "as_of": crate::agreement::format_ms(m.as_of_ms), "connected": m.connected,
                    "last_error": m.last_error, "snapshots": m.snapshots, "deltas": m.deltas,
                    "lookups": m.lookups,
                })
            })
            .collect();
        return Ok(serde_json::json!({
            "registry": {"id": r.registry_id, "version": r.registry_version, "records": r.registry_records},
            "mirrors": mirrors,
        })
        .to_string());
    }
    let mut lines = vec![format!(
        "own registry: {} operators, version {}",
        r.registry_records, r.registry_version
    )];
    if r.mirrors.is_empty() {
        lines.push(
            "no partner mirrors (no agreement in force with an AEO answer flow to us)".into(),
        );
    }
    for m in &r.mirrors {
        lines.push(format!(
            "mirror of {}: {} operators, version {}, as of {}, {}{}",
            m.partner,
            m.records,
            m.version,
            if m.as_of_ms > 0 {
                crate::agreement::format_ms(m.as_of_ms)
            } else {
                "never".into()
            },
            if m.connected {
                "feed live"
            } else {
                "feed down"
            },
            if m.last_error.is_empty() {
                String::new()
            } else {
                format!(" (last problem: {})", m.last_error)
            }
        ));
    }
    Ok(lines.join("\n"))
}

fn verify(key: &str, file: &Path) -> Result<String, CliError> {
    let key_bytes: [u8; 32] = B64
        .decode(key.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| err("--key: a base64 Ed25519 public key (32 bytes) expected"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key_bytes)
        .map_err(|e| err(format!("--key: {e}")))?;
    let text =
        std::fs::read_to_string(file).map_err(|e| err(format!("{}: {e}", file.display())))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| err(format!("{}: not JSON: {e}", file.display())))?;
    // Accept a whole `lookup --json` answer or a bare statement.
    let s = ["mirror", "online"]
        .iter()
        .find_map(|k| {
            value
                .get(k)
                .and_then(|a| a.get("statement"))
                .filter(|s| !s.is_null())
        })
        .unwrap_or(&value);
    let field = |name: &str| -> Result<Vec<u8>, CliError> {
        s.get(name)
            .and_then(|v| v.as_str())
            .and_then(|v| B64.decode(v).ok())
            .ok_or_else(|| {
                err(format!(
                    "{}: statement field {name:?} missing or not base64",
                    file.display()
                ))
            })
    };
    let path = s
        .get("path")
        .and_then(|p| p.as_array())
        .map(|p| {
            p.iter()
                .map(|h| h.as_str().and_then(|h| B64.decode(h).ok()))
                .collect::<Option<Vec<_>>>()
        })
        .unwrap_or(Some(Vec::new()))
        .ok_or_else(|| err("statement path: base64 hashes expected"))?;
    let statement = AeoStatement {
        header: field("header")?,
        signature: field("signature")?,
        record: field("record")?,
        leaf_index: s.get("leaf_index").and_then(|v| v.as_u64()).unwrap_or(0),
        path,
    };
    let (header, record) = crate::aeo::statement::verify_statement(&statement, &key)
        .map_err(|e| err(format!("NOT VERIFIED: {e}")))?;
    let r: AeoStatusResponse = record;
    Ok(format!(
        "verified: {} states that operator {} was {} as of {} (registry version {}, agreement {}, for {})",
        header.publisher,
        r.operator_identifier,
        status_name(r.status),
        crate::agreement::format_ms(header.created_at_ms),
        header.version_to,
        header.agreement_id,
        header.recipient
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{AeoBatchHeader, AeoBatchKind};
    use ed25519_dalek::SigningKey;

    /// A statement as `lookup --json` prints it, for the operator at `index` of a signed batch.
    fn printed(key: &SigningKey, index: usize) -> serde_json::Value {
        let leaves = (0..5)
            .map(|i| {
                prost::Message::encode_to_vec(&AeoStatusResponse {
                    operator_identifier: format!("BRAEOF{i:010}"),
                    status: AeoStatus::Suspended as i32,
                    ..Default::default()
                })
            })
            .collect();
        let header = AeoBatchHeader {
            publisher: "BR".into(),
            recipient: "NL".into(),
            kind: AeoBatchKind::Delta as i32,
            ..Default::default()
        };
        let batch = crate::aeo::statement::sign(header, leaves, key);
        let (_, paths) = crate::aeo::statement::verify_batch(&batch, &key.verifying_key()).unwrap();
        let s = crate::aeo::statement::statement(&batch, index, &paths[index]).unwrap();
        serde_json::json!({ "partner": "BR", "mirror": { "statement": statement_json(&s) } })
    }

    #[test]
    fn verify_checks_a_printed_statement_and_refuses_a_changed_one() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let public = B64.encode(key.verifying_key().as_bytes());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("answer.json");
        std::fs::write(&file, printed(&key, 3).to_string()).unwrap();
        let out = verify(&public, &file).unwrap();
        assert!(
            out.contains("BR states that operator BRAEOF0000000003 was SUSPENDED"),
            "{out}"
        );
        let mut changed = printed(&key, 3);
        changed["mirror"]["statement"]["leaf_index"] = serde_json::json!(2);
        std::fs::write(&file, changed.to_string()).unwrap();
        assert!(verify(&public, &file).is_err());
        let other = B64.encode(SigningKey::from_bytes(&[4; 32]).verifying_key().as_bytes());
        std::fs::write(&file, printed(&key, 1).to_string()).unwrap();
        let e = verify(&other, &file).unwrap_err();
        assert!(format!("{e:?}").contains("NOT VERIFIED"), "{e:?}");
    }
}
