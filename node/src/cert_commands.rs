//! `dccf-node cert issue|rotate|list`: certificates from the administration's own CA.
//!
//! Rotation writes a fresh key and certificate next to the current ones and renames them into
//! place (key first, then certificate), keeping the previous pair as `*.previous`. A running
//! node picks the new node certificate up without a restart (within
//! [`crate::server::tls::RELOAD_INTERVAL`], or at once on SIGHUP): new handshakes use it while
//! existing connections carry on with the old one until they close.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::config::NodeConfig;
use crate::identity::pki::{CertRequest, CertificateAuthority, Role};

/// `dccf-node cert` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertAction {
    /// Issue an additional client certificate from this administration's CA (e.g. for a
    /// second auditor or back-office system).
    Issue {
        /// Path to node.toml (its CA signs).
        #[arg(long)]
        config: PathBuf,
        /// Role: auditor (Audit service) or gateway (back office).
        #[arg(long)]
        role: Role,
        /// Output prefix: writes PREFIX.pem (certificate) and PREFIX.key (0600).
        #[arg(long)]
        out: PathBuf,
        /// Validity in days (1 to 397; default 397), e.g. shorter for a temporary auditor.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_DAYS))]
        days: Option<u16>,
    },
    /// Replace the node's own node, gateway or auditor certificate with a fresh key and
    /// certificate (same names and hosts); the running node switches without downtime.
    Rotate {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Which certificate: node, gateway or auditor.
        #[arg(long)]
        role: Role,
        /// Validity in days (1 to 397; default 397).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_DAYS))]
        days: Option<u16>,
        /// Host name or IP address the new node certificate is valid for (repeat for several;
        /// default: those of the current certificate). Must include the host of this node's
        /// endpoint in the agreements, which partners dial.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// List the node's certificates: role, validity, days left.
    List {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
    },
}

/// Longest validity `--days` accepts: the default, 397 days (the public-web ceiling).
const MAX_DAYS: i64 = 397;

/// Errors of these commands: one line for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertCommandError(String);

fn err(e: impl std::fmt::Display) -> CertCommandError {
    CertCommandError(crate::config::one_line(&e.to_string()))
}

/// The certificate and key files of `role` in this node's data directory.
fn files(config: &NodeConfig, role: Role) -> (PathBuf, PathBuf) {
    let paths = config.identity_paths();
    match role {
        Role::Node => (paths.node_cert(), paths.node_key()),
        Role::Gateway => (paths.gateway_cert(), paths.gateway_key()),
        Role::Auditor => (paths.auditor_cert(), paths.auditor_key()),
    }
}

/// Runs a cert command; returns what to print.
pub fn run(action: CertAction) -> Result<String, CertCommandError> {
    match action {
        CertAction::Issue {
            config,
            role,
            out,
            days,
        } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            if role == Role::Node {
                return Err(err(
                    "--role node: the node certificate is replaced with `cert rotate --role node`; issue auditor or gateway",
                ));
            }
            let ca = load_ca(&config)?;
            let issued = ca
                .issue(&request(&config, role, Vec::new(), days))
                .map_err(err)?;
            let cert = out.with_extension("pem");
            let key = out.with_extension("key");
            issued.save(&cert, &key).map_err(err)?;
            Ok(format!(
                "issued a {role} certificate of {}: {} (key {}, mode 0600)",
                config.admin,
                cert.display(),
                key.display()
            ))
        }
        CertAction::Rotate {
            config,
            role,
            days,
            hosts,
        } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            if role != Role::Node && !hosts.is_empty() {
                return Err(err(format!(
                    "--host: only a node certificate names hosts; a {role} certificate is a client certificate"
                )));
            }
            rotate_with(&config, role, days, hosts)
        }
        CertAction::List { config } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            Ok(list(&config))
        }
    }
}

fn load_ca(config: &NodeConfig) -> Result<CertificateAuthority, CertCommandError> {
    let paths = config.identity_paths();
    CertificateAuthority::load(&paths.ca_cert(), &paths.ca_key()).map_err(err)
}

/// A certificate request of `role` for this administration, valid `days` (default 397).
fn request(config: &NodeConfig, role: Role, hosts: Vec<String>, days: Option<u16>) -> CertRequest {
    let mut req = CertRequest::new(config.admin.clone(), role, hosts);
    if let Some(days) = days {
        req.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days.into());
    }
    req
}

/// Issues a fresh key and certificate for `role` (same hosts, 397 days) and moves them into
/// place.
pub fn rotate(config: &NodeConfig, role: Role) -> Result<String, CertCommandError> {
    rotate_with(config, role, None, Vec::new())
}

/// [`rotate`] with a validity of `days` and, for the node certificate, `hosts` (empty: keep
/// the current certificate's hosts).
pub fn rotate_with(
    config: &NodeConfig,
    role: Role,
    days: Option<u16>,
    hosts: Vec<String>,
) -> Result<String, CertCommandError> {
    let ca = load_ca(config)?;
    let (cert_path, key_path) = files(config, role);
    // Keep what the certificate is valid for: a node certificate's hosts.
    let hosts = match role {
        Role::Node if hosts.is_empty() => {
            let current = crate::server::tls::load_certs(&cert_path).map_err(err)?;
            crate::identity::pki::cert_hosts(&current[0]).map_err(err)?
        }
        _ => hosts,
    };
    let issued = ca.issue(&request(config, role, hosts, days)).map_err(err)?;
    let staged_cert = sibling(&cert_path, "new");
    let staged_key = sibling(&key_path, "new");
    for p in [&staged_cert, &staged_key] {
        let _ = std::fs::remove_file(p);
    }
    issued.save(&staged_cert, &staged_key).map_err(err)?;
    // The previous pair stays for a rollback; then key, then certificate: a reader between
    // the two renames sees a mismatch, refuses it and keeps its current pair.
    for (current, previous) in [
        (&key_path, sibling(&key_path, "previous")),
        (&cert_path, sibling(&cert_path, "previous")),
    ] {
        if current.exists() {
            std::fs::copy(current, &previous)
                .map_err(|e| err(format!("{}: {e}", previous.display())))?;
        }
    }
    std::fs::rename(&staged_key, &key_path)
        .map_err(|e| err(format!("{}: {e}", key_path.display())))?;
    std::fs::rename(&staged_cert, &cert_path)
        .map_err(|e| err(format!("{}: {e}", cert_path.display())))?;
    let not_after =
        crate::identity::pki::cert_not_after(&issued.cert_der().map_err(err)?).map_err(err)?;
    let next = match role {
        Role::Node => {
            "a running node loads it within a minute (or at once on SIGHUP); existing connections finish on the old one"
        }
        _ => "clients using it pick it up on their next connection",
    };
    Ok(format!(
        "rotated the {role} certificate of {}: {} valid until {} (previous kept as {}); {next}",
        config.admin,
        cert_path.display(),
        not_after.date(),
        sibling(&cert_path, "previous").display()
    ))
}

/// `path` with `.suffix` appended (`node.pem` → `node.pem.new`).
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// One line per certificate of the node: role, file, validity, days left.
pub fn list(config: &NodeConfig) -> String {
    let paths = config.identity_paths();
    let warn_days = config.observability.cert_warning_days as i64;
    let now = time::OffsetDateTime::now_utc();
    let mut lines = vec![format!(
        "{:<8} {:<12} {:<12} {:>6}  file",
        "role", "valid from", "valid until", "days"
    )];
    for (name, path) in [
        ("CA", paths.ca_cert()),
        ("node", paths.node_cert()),
        ("gateway", paths.gateway_cert()),
        ("auditor", paths.auditor_cert()),
    ] {
        let line = crate::server::tls::load_certs(&path)
            .map_err(|e| e.to_string())
            .and_then(|c| crate::identity::pki::cert_validity(&c[0]).map_err(|e| e.to_string()));
        match line {
            Ok((from, until)) => {
                let days = (until - now).whole_days();
                let note = if until <= now {
                    "  EXPIRED: rotate now"
                } else if days < warn_days {
                    "  expires soon: rotate"
                } else {
                    ""
                };
                lines.push(format!(
                    "{name:<8} {:<12} {:<12} {days:>6}  {}{note}",
                    from.date().to_string(),
                    until.date().to_string(),
                    path.display()
                ));
            }
            Err(e) => lines.push(format!("{name:<8} unreadable: {e}")),
        }
    }
    lines.join("\n")
}
