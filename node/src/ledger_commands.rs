//! `dccf-node ledger …` and `dccf-node cert …`: the auditor's and operator's ledger tools.
//!
//! `status`, `proof` and `export` read the ledger directly when the node is stopped, and ask the
//! running node's `Audit` service (with the auditor certificate from `init`, or `--cert/--key`)
//! when it holds the ledger. `verify` and `reconcile` work offline on export directories;
//! `verify --config` checks a stopped node's database itself.

use std::path::PathBuf;

use clap::Subcommand;

use crate::checkpoints::Checkpoints;
use crate::config::NodeConfig;
use crate::identity::NodeIdentity;
use crate::ledger::{LedgerError, Store, entry, export, proof};
use crate::proto::v1::audit_client::AuditClient;
use crate::proto::v1::{
    CheckpointRequest, InclusionProofRequest, LedgerStatus, LedgerStatusRequest,
    inclusion_proof_request,
};

/// `dccf-node ledger` subcommands.
#[derive(Debug, Subcommand)]
pub enum LedgerAction {
    /// Ledger size and root, latest checkpoint, cosignatures, witnessed partners and alarms.
    Status {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Auditor client certificate (default: tls/auditor-client.pem) when the node runs.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Its private key (default: tls/auditor-client.key).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Write the ledger as a C2SP tlog-tiles directory with checkpoint, vkey and cosignatures:
    /// read from the database of a stopped node, or through the Audit service of a running one
    /// (a fresh checkpoint of its current head first; no downtime).
    Export {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Directory to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Auditor client certificate (default: tls/auditor-client.pem) when the node runs.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Its private key (default: tls/auditor-client.key).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Check an export offline (signatures, every entry and tile, root, cosignatures), or with
    /// --config the node's own database (every entry, leaf hash and interior node, and every
    /// checkpoint it signed); the node must be stopped for --config.
    Verify {
        /// The export directory.
        #[arg(required_unless_present = "config", conflicts_with = "config")]
        dir: Option<PathBuf>,
        /// Path to node.toml: verify the node's database instead of an export.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a C2SP tlog-proof of the ledger entry about a message (or of entry --index).
    Proof {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Message id: proves the first entry about it (others are listed on stderr).
        #[arg(long, conflicts_with = "index", required_unless_present = "index")]
        message_id: Option<String>,
        /// Entry index.
        #[arg(long)]
        index: Option<u64>,
        /// Auditor client certificate (default: tls/auditor-client.pem) when the node runs.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Its private key (default: tls/auditor-client.key).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Resolve a standing witness alarm against a partner after investigating it (the node must
    /// be stopped): records the reason in the ledger and restarts witnessing that partner from
    /// its current checkpoint.
    ResolveAlarm {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// The partner administration.
        #[arg(long)]
        partner: String,
        /// Why the alarm is resolved (recorded in the ledger).
        #[arg(long)]
        reason: String,
    },
    /// Check two partners' exports against each other; non-zero exit on any discrepancy.
    Reconcile {
        /// First export directory.
        a: PathBuf,
        /// Second export directory.
        b: PathBuf,
    },
}

/// Errors of these commands: one line for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(String);

fn err(e: impl std::fmt::Display) -> CommandError {
    CommandError(crate::config::one_line(&e.to_string()))
}

/// Runs a ledger command; returns what to print on stdout.
pub async fn run_ledger(action: LedgerAction) -> Result<String, CommandError> {
    match action {
        LedgerAction::Status { config, cert, key } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            let status = match open_local(&config)? {
                Some((store, cps)) => {
                    crate::server::audit::status(&store, &cps, false).map_err(err)?
                }
                None => {
                    let mut client = audit_client(&config, cert, key)?;
                    client
                        .get_status(LedgerStatusRequest::default())
                        .await
                        .map_err(|s| err(format!("Audit.GetStatus: {}", s.message())))?
                        .into_inner()
                }
            };
            Ok(format_status(&status))
        }
        LedgerAction::Export {
            config,
            out,
            cert,
            key,
        } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| err(format!("{}: {e}", parent.display())))?;
            }
            let (summary, how) = match open_local(&config)? {
                Some((store, cps)) => {
                    cps.publish().await.map_err(err)?;
                    let material = cps.export_material().map_err(err)?;
                    let summary =
                        export::write_export(&store, &material.input(), &out).map_err(err)?;
                    store.close().map_err(err)?;
                    (summary, "from its database")
                }
                None => (
                    export_running(&config, cert, key, &out).await?,
                    "through the running node's Audit service",
                ),
            };
            Ok(format!(
                "exported {} entries of {} {how} to {} ({} tiles, {} entry bundles, {} cosigned \
                 checkpoints); check it with `dccf-node ledger verify {}`",
                summary.size,
                config.origin(),
                out.display(),
                summary.tiles,
                summary.bundles,
                summary.cosigned,
                out.display()
            ))
        }
        LedgerAction::Verify {
            config: Some(config),
            ..
        } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            let (store, cps) = open_stopped(&config, "stop it to verify its database")?;
            verify_database(&store, &cps)
        }
        LedgerAction::Verify { dir, .. } => {
            let dir = dir.ok_or_else(|| err("give an export directory or --config"))?;
            let r = export::verify_export(&dir).map_err(err)?;
            let mut text = format!(
                "OK {}: {} entries, root {}, {} tiles, every entry, tile and signature verified",
                r.origin,
                r.size,
                hex::encode(r.root),
                r.tiles
            );
            for (witness, size) in &r.cosignatures {
                text.push_str(&format!("\ncosigned by {witness} at size {size}"));
            }
            Ok(text)
        }
        LedgerAction::Proof {
            config,
            message_id,
            index,
            cert,
            key,
        } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            match open_local(&config)? {
                Some((store, cps)) => local_proof(&store, &cps, message_id, index).await,
                None => {
                    let mut client = audit_client(&config, cert, key)?;
                    let target = match (message_id, index) {
                        (Some(id), _) => inclusion_proof_request::Target::MessageId(id),
                        (None, Some(i)) => inclusion_proof_request::Target::Index(i),
                        (None, None) => return Err(err("give --message-id or --index")),
                    };
                    // A fresh checkpoint, so the newest entries are covered.
                    client
                        .get_checkpoint(CheckpointRequest {
                            from_size: 0,
                            fresh: true,
                        })
                        .await
                        .map_err(|s| err(format!("Audit.GetCheckpoint: {}", s.message())))?;
                    let response = client
                        .get_inclusion_proof(InclusionProofRequest {
                            target: Some(target),
                        })
                        .await
                        .map_err(|s| err(format!("Audit.GetInclusionProof: {}", s.message())))?
                        .into_inner();
                    let mut proofs = response.proofs.into_iter();
                    let first = proofs
                        .next()
                        .ok_or_else(|| err("the node returned no proof"))?;
                    for other in proofs {
                        if let Some(e) = other.entry {
                            eprintln!("also about this message: entry {}", e.index);
                        }
                    }
                    Ok(first.tlog_proof.trim_end().to_owned())
                }
            }
        }
        LedgerAction::ResolveAlarm {
            config,
            partner,
            reason,
        } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            let (store, _cps) = open_stopped(&config, "stop it to resolve an alarm")?;
            let resolved = crate::witness::resolve_alarm(&store, &partner, &reason)
                .await
                .map_err(err)?;
            store.close().map_err(err)?;
            Ok(format!(
                "resolved the witness alarm against {partner} raised at {}; witnessing {partner} \
                 restarts from its current checkpoint",
                crate::agreement::format_ms(resolved.at_ms)
            ))
        }
        LedgerAction::Reconcile { a, b } => {
            let report = export::reconcile(&a, &b).map_err(err)?;
            let mut text = format!(
                "{} <-> {}: {} messages recorded consistently on both sides, {} discrepancies",
                report.a,
                report.b,
                report.matched,
                report.discrepancies.len()
            );
            for d in &report.discrepancies {
                text.push_str(&format!("\n{d}"));
            }
            if report.discrepancies.is_empty() {
                Ok(text)
            } else {
                // The report is the diagnosis: print it all, then fail.
                println!("{text}");
                Err(err(format!(
                    "{} discrepancies between {} and {}",
                    report.discrepancies.len(),
                    report.a,
                    report.b
                )))
            }
        }
    }
}

/// Opens the ledger of a node that must be stopped; `then` says what to do instead.
fn open_stopped(config: &NodeConfig, then: &str) -> Result<(Store, Checkpoints), CommandError> {
    open_local(config)?.ok_or_else(|| {
        err(format!(
            "the node is running (it holds {}); {then}",
            config.ledger_dir().display()
        ))
    })
}

/// Opens the ledger and its checkpoints, or `None` if a running node holds it.
pub(crate) fn open_local(
    config: &NodeConfig,
) -> Result<Option<(Store, Checkpoints)>, CommandError> {
    let dir = config.ledger_dir();
    if !dir.join("db").exists() {
        return Err(err(format!(
            "{}: no ledger here (has this node ever run?)",
            dir.display()
        )));
    }
    // A running node holds the lock: fall back to its Audit service at once.
    let store = match Store::open_waiting(&dir, std::time::Duration::from_millis(300)) {
        Ok(s) => s,
        Err(LedgerError::Io { source, .. }) if source.to_string().contains("in use") => {
            return Ok(None);
        }
        Err(e) => return Err(err(e)),
    };
    let identity = NodeIdentity::load(&config.identity_paths(), &config.admin).map_err(err)?;
    let cps = Checkpoints::open(
        store.clone(),
        &config.origin(),
        identity.signing.signing_key().clone(),
    )
    .map_err(err)?;
    Ok(Some((store, cps)))
}

/// Exports a running node's ledger through its Audit service: a fresh checkpoint of the current
/// head, the export material from `GetStatus`, and the entries up to that checkpoint in pages of
/// `GetEntries`. The log key must be this node's (from its own keys): the export then verifies
/// exactly as one of a stopped node.
async fn export_running(
    config: &NodeConfig,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    out: &std::path::Path,
) -> Result<export::ExportSummary, CommandError> {
    use crate::proto::v1::EntriesRequest;
    let mut audit = audit_client(config, cert, key)?;
    let call = |what: &'static str| move |s: tonic::Status| err(format!("{what}: {}", s.message()));
    audit
        .get_checkpoint(CheckpointRequest {
            from_size: 0,
            fresh: true,
        })
        .await
        .map_err(call("Audit.GetCheckpoint"))?;
    let status = audit
        .get_status(LedgerStatusRequest {
            with_export_material: true,
        })
        .await
        .map_err(call("Audit.GetStatus"))?
        .into_inner();
    let identity = NodeIdentity::load(&config.identity_paths(), &config.admin).map_err(err)?;
    let ours = crate::ledger::checkpoint::NoteSigner::new(
        &config.origin(),
        identity.signing.signing_key().clone(),
    )
    .map_err(err)?
    .verifier_key();
    if status.vkey != ours {
        return Err(err(format!(
            "the node answering at {} signs its log with {}, not with this node's key ({ours}): \
             is --config the right node?",
            config.gateway_listen, status.vkey
        )));
    }
    let material = crate::checkpoints::ExportMaterial {
        checkpoint: status.checkpoint,
        vkey: status.vkey,
        cosigned: status.cosigned_notes,
        witnesses: status.witness_keys,
    };
    let out = out.to_path_buf();
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut page = std::collections::VecDeque::<(u64, Vec<u8>)>::new();
        export::write_export_from(
            None,
            |index| {
                if page.front().is_none_or(|(i, _)| *i != index) {
                    let source = |detail: String| export::ExportError::Source { index, detail };
                    let entries = handle
                        .block_on(audit.get_entries(EntriesRequest {
                            start: index,
                            end: index + 1000,
                        }))
                        .map_err(|s| source(format!("Audit.GetEntries: {}", s.message())))?
                        .into_inner()
                        .entries;
                    page = entries.into_iter().map(|e| (e.index, e.leaf)).collect();
                }
                match page.pop_front() {
                    Some((i, leaf)) if i == index => {
                        let hash = crate::ledger::merkle::leaf_hash(&leaf);
                        Ok((leaf, hash))
                    }
                    other => Err(export::ExportError::Source {
                        index,
                        detail: format!(
                            "Audit.GetEntries answered entry {:?} instead",
                            other.map(|(i, _)| i)
                        ),
                    }),
                }
            },
            &material.input(),
            &out,
        )
    })
    .await
    .map_err(err)?
    .map_err(err)
}

/// An Audit client for the running node, with the auditor certificate.
pub(crate) fn audit_client(
    config: &NodeConfig,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<AuditClient<tonic::transport::Channel>, CommandError> {
    let paths = config.identity_paths();
    let cert = cert.unwrap_or_else(|| paths.auditor_cert());
    let key = key.unwrap_or_else(|| paths.auditor_key());
    let channel = crate::cli::local_channel(config, &cert, &key).map_err(err)?;
    Ok(AuditClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

/// Why a running node's ledger could not be confirmed by [`verify_running_ledger`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunningLedgerError {
    /// The Audit service could not be asked (connection, certificates, the call itself): says
    /// nothing about the ledger.
    #[error("{0}")]
    Unreachable(String),
    /// The node answered with a checkpoint or proof that does not verify.
    #[error("{0}")]
    Invalid(String),
}

/// The ledger check of `doctor` for a running node, through its Audit service (auditor
/// certificate): the latest checkpoint's signature, and a consistency proof from it to a fresh
/// checkpoint of the current head. (A stopped node's database is checked in full by
/// [`verify_database`].)
pub(crate) async fn verify_running_ledger(
    config: &NodeConfig,
    identity: &NodeIdentity,
    audit: AuditClient<tonic::transport::Channel>,
) -> Result<String, RunningLedgerError> {
    use RunningLedgerError::{Invalid, Unreachable};
    let verifier = crate::ledger::checkpoint::NoteVerifier::new(
        &config.origin(),
        identity.signing.verifying_key(),
    )
    .map_err(|e| Invalid(e.to_string()))?;
    let fetch = |from_size, fresh| {
        let mut audit = audit.clone();
        async move {
            audit
                .get_checkpoint(crate::proto::v1::CheckpointRequest { from_size, fresh })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| {
                    Unreachable(format!(
                        "Audit.GetCheckpoint: {}",
                        crate::delivery::courier::status_text(&s)
                    ))
                })
        }
    };
    let parse = |note: &str| -> Result<(u64, [u8; 32]), RunningLedgerError> {
        let text = verifier
            .verify(note)
            .map_err(|e| Invalid(format!("checkpoint signature: {e}")))?;
        let (_, size, root) = crate::ledger::checkpoint::parse_checkpoint(text)
            .map_err(|e| Invalid(e.to_string()))?;
        Ok((size, root))
    };
    let last = fetch(0, false).await?;
    let (size1, root1) = parse(&last.checkpoint)?;
    let now = fetch(size1, true).await?;
    let (size2, root2) = parse(&now.checkpoint)?;
    let proof: Vec<[u8; 32]> = now
        .consistency_proof
        .iter()
        .map(|h| {
            <[u8; 32]>::try_from(h.as_slice())
                .map_err(|_| Invalid("a proof hash is not 32 bytes".into()))
        })
        .collect::<Result<_, _>>()?;
    proof::verify_consistency(size1, size2, &proof, &root1, &root2).map_err(|e| {
        Invalid(format!(
            "the current ledger (size {size2}) does not extend the last checkpoint (size \
             {size1}): {e}"
        ))
    })?;
    Ok(format!(
        "running node: last checkpoint (size {size1}) signed by this node's key; the current \
         head (size {size2}) is proven to extend it"
    ))
}

/// Full check of a stopped node's database: the tree recomputed from every entry, and every
/// checkpoint the node ever signed against it.
pub(crate) fn verify_database(store: &Store, cps: &Checkpoints) -> Result<String, CommandError> {
    // `Checkpoints::open` (in `open_local`) already checked the latest checkpoint.
    let head = store.verify().map_err(err)?;
    let verifier =
        crate::ledger::checkpoint::NoteVerifier::from_key_string(&cps.vkey()).map_err(err)?;
    let mut checked = 0usize;
    for (size, note) in cps.history().map_err(err)? {
        let text = verifier
            .verify(&note)
            .map_err(|e| err(format!("stored checkpoint of size {size}: {e}")))?;
        let (_, signed_size, root) =
            crate::ledger::checkpoint::parse_checkpoint(text).map_err(err)?;
        if signed_size != size || signed_size > head.size {
            return Err(err(format!(
                "stored checkpoint of size {size} claims size {signed_size} (ledger has {})",
                head.size
            )));
        }
        if proof::root_at(store, size).map_err(err)? != root {
            return Err(err(format!(
                "the ledger's root at size {size} differs from the checkpoint signed at that size \
                 (history was rewritten)"
            )));
        }
        checked += 1;
    }
    store.close().map_err(err)?;
    Ok(format!(
        "OK {}: {} entries, root {}; every entry, leaf hash and interior node recomputed; {} \
         signed checkpoints match",
        cps.origin(),
        head.size,
        hex::encode(head.root),
        checked
    ))
}

/// `ledger proof` on a stopped node: signs a fresh checkpoint so every entry is covered.
async fn local_proof(
    store: &Store,
    cps: &Checkpoints,
    message_id: Option<String>,
    index: Option<u64>,
) -> Result<String, CommandError> {
    let latest = cps.publish().await.map_err(err)?;
    let indices = match (message_id, index) {
        (Some(id), _) => {
            let found = entry::indices_of(store, &id).map_err(err)?;
            if found.is_empty() {
                return Err(err(format!("no ledger entry about message {id:?}")));
            }
            found
        }
        (None, Some(i)) => vec![i],
        (None, None) => return Err(err("give --message-id or --index")),
    };
    let index = indices[0];
    for other in &indices[1..] {
        eprintln!("also about this message: entry {other}");
    }
    if index >= latest.size {
        return Err(err(format!(
            "entry {index} does not exist (the ledger has {} entries)",
            latest.size
        )));
    }
    let hashes = proof::inclusion_proof(store, index, latest.size).map_err(err)?;
    let note = cps.latest_cosigned().map_err(err)?;
    let text = export::tlog_proof_text(index, &hashes, &note, None);
    store.close().map_err(err)?;
    Ok(text.trim_end().to_owned())
}

fn format_status(s: &LedgerStatus) -> String {
    let mut out = format!(
        "origin     {}\nsize       {}\nroot       {}\nvkey       {}\n",
        s.origin,
        s.size,
        hex::encode(&s.root),
        s.vkey
    );
    out.push_str("checkpoint\n");
    for line in s.checkpoint.lines() {
        out.push_str(&format!("  {line}\n"));
    }
    if s.cosigned.is_empty() {
        out.push_str("cosigned by: nobody yet\n");
    }
    for c in &s.cosigned {
        out.push_str(&format!(
            "cosigned by {c} (witness, largest cosigned size)\n"
        ));
    }
    for w in &s.witnessed {
        out.push_str(&format!("witnessing {w} (partner, last consistent size)\n"));
    }
    if s.alarms.is_empty() {
        out.push_str("alarms: none");
    } else {
        out.push_str(&format!("ALARMS: {}", s.alarms.len()));
        for a in &s.alarms {
            out.push_str(&format!(
                "\nALARM {} at {}: {}",
                a.partner,
                crate::agreement::format_ms(a.at_ms),
                crate::config::one_line(&a.detail)
            ));
        }
    }
    out
}
