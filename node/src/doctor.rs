//! `dccf-node doctor`: checks a node's installation and surroundings and explains, in plain
//! words, what is wrong and how to fix it — configuration, key and certificate files and their
//! permissions, certificate validity and expiry, agreements (signatures, validity), each
//! partner's reachability, TLS handshake and clock skew (from its signed time, `Exchange.Ping`),
//! and the ledger (its root against the last signed checkpoint).
//!
//! Works on a stopped node (the ledger is then recomputed in full) and on a running one (the
//! ledger is checked through the Audit service: checkpoint signature and a consistency proof up
//! to the current head).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::agreement::AgreementSet;
use crate::config::NodeConfig;
use crate::identity::IdentityPaths;
use crate::identity::pki::Role;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Ok,
    /// For information (nothing to fix).
    Info,
    /// Works now, needs attention soon.
    Warn,
    /// Broken: the node will not start, or an exchange fails.
    Fail,
}

/// One finding: which check, what was found, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Severity.
    pub level: Level,
    /// The check (short name, e.g. `certificate`, `partner BR`).
    pub check: String,
    /// What was found, in plain words.
    pub what: String,
    /// What to do about it (for warnings and failures).
    pub fix: Option<String>,
}

impl Finding {
    fn new(level: Level, check: impl Into<String>, what: impl Into<String>) -> Self {
        Finding {
            level,
            check: check.into(),
            what: what.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Runs every check for the node configured at `config_path`.
pub async fn run(config_path: &Path) -> Vec<Finding> {
    let mut out = Vec::new();
    let config = match NodeConfig::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            out.push(
                Finding::new(
                    Level::Fail,
                    "config",
                    crate::config::one_line(&e.to_string()),
                )
                .fix(format!(
                    "edit {} (every field is documented in the file written by `init` and \
                         in the README's configuration section)",
                    config_path.display()
                )),
            );
            return out;
        }
    };
    out.push(Finding::new(
        Level::Ok,
        "config",
        format!(
            "{} loads: administration {}, exchange {}, gateway {}",
            config_path.display(),
            config.admin,
            config.listen,
            config.gateway_listen
        ),
    ));
    let paths = config.identity_paths();
    out.extend(check_permissions(&config, &paths));
    out.extend(check_certificates(&config, &paths));
    let identity = match crate::identity::NodeIdentity::load(&paths, &config.admin) {
        Ok(i) => Some(i),
        Err(e) => {
            out.push(
                Finding::new(Level::Fail, "keys", e.to_string())
                    .fix("restore keys/ from the backup of the data directory; keys cannot be recreated (partners know the public keys)"),
            );
            None
        }
    };
    let agreements = check_agreements(&config, &mut out);
    if let Some(agreements) = &agreements {
        out.extend(check_partners(&config, agreements).await);
    }
    if let Some(identity) = &identity {
        out.push(check_ledger(&config, identity).await);
    }
    out.push(check_running(&config).await);
    out
}

/// Renders findings for a terminal: one line each, the fix indented below.
pub fn render(admin_or_path: &str, findings: &[Finding]) -> String {
    let mut text = format!("dccf-node doctor: {admin_or_path}\n");
    for f in findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Info => "info",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        text.push_str(&format!("{tag}  {:<18} {}\n", f.check, f.what));
        if let Some(fix) = &f.fix {
            text.push_str(&format!("      {:<18} fix: {fix}\n", ""));
        }
    }
    let fails = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warns = findings.iter().filter(|f| f.level == Level::Warn).count();
    text.push_str(&if fails + warns == 0 {
        "no problems found".to_owned()
    } else {
        format!("{fails} failure(s), {warns} warning(s)")
    });
    text
}

/// Key files: present, regular, mode 0600 (no group/other access), owned by this user; the
/// data directory not writable by others.
fn check_permissions(config: &NodeConfig, paths: &IdentityPaths) -> Vec<Finding> {
    let mut out = Vec::new();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let keys = [
        ("signing key", paths.signing_key(), true),
        ("HPKE key", paths.hpke_key(), true),
        ("node TLS key", paths.node_key(), true),
        ("CA key", paths.ca_key(), false),
        ("gateway key", paths.gateway_key(), false),
        ("auditor key", paths.auditor_key(), false),
    ];
    let mut fine = 0;
    for (what, path, needed) in keys {
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(_) if !needed => {
                out.push(Finding::new(
                    Level::Info,
                    "key files",
                    format!("{what} {} is not on this machine (only needed to issue certificates or run back-office tools here)", path.display()),
                ));
                continue;
            }
            Err(e) => {
                out.push(
                    Finding::new(
                        Level::Fail,
                        "key files",
                        format!("{what} {}: {e}", path.display()),
                    )
                    .fix("restore keys/ and tls/ from the backup of the data directory"),
                );
                continue;
            }
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            out.push(
                Finding::new(
                    Level::Fail,
                    "key files",
                    format!(
                        "{what} {} can be read by other users (mode {mode:04o}); the node refuses to start with it",
                        path.display()
                    ),
                )
                .fix(format!("chmod 600 {}", path.display())),
            );
        } else if meta.uid() != me {
            out.push(
                Finding::new(
                    Level::Warn,
                    "key files",
                    format!(
                        "{what} {} belongs to uid {}, not to the user running this check (uid {me})",
                        path.display(),
                        meta.uid()
                    ),
                )
                .fix(format!(
                    "run the node as the key's owner, or: chown <node user> {}",
                    path.display()
                )),
            );
        } else {
            fine += 1;
        }
    }
    if fine > 0 {
        out.push(Finding::new(
            Level::Ok,
            "key files",
            format!("{fine} private key file(s) readable by their owner only (0600)"),
        ));
    }
    if let Ok(meta) = std::fs::metadata(&config.data_dir)
        && meta.permissions().mode() & 0o002 != 0
    {
        out.push(
            Finding::new(
                Level::Fail,
                "data directory",
                format!(
                    "{} is writable by every user: anyone could replace keys or the ledger",
                    config.data_dir.display()
                ),
            )
            .fix(format!("chmod 700 {}", config.data_dir.display())),
        );
    }
    out
}

/// Certificates: readable, issued by the own CA, inside their validity, not close to expiry.
fn check_certificates(config: &NodeConfig, paths: &IdentityPaths) -> Vec<Finding> {
    let mut out = Vec::new();
    let warn_days = config.observability.cert_warning_days as i64;
    let now = time::OffsetDateTime::now_utc();
    let ca = crate::server::tls::load_certs(&paths.ca_cert())
        .ok()
        .and_then(|c| c.first().map(|c| c.to_vec()));
    for (name, path, role) in [
        ("CA", paths.ca_cert(), None),
        ("node", paths.node_cert(), Some(Role::Node)),
        ("gateway", paths.gateway_cert(), Some(Role::Gateway)),
        ("auditor", paths.auditor_cert(), Some(Role::Auditor)),
    ] {
        let check = format!("{name} certificate");
        let der = match crate::server::tls::load_certs(&path) {
            Ok(c) => c[0].to_vec(),
            Err(e) if role.is_some_and(|r| r != Role::Node) => {
                out.push(Finding::new(Level::Warn, check, e.to_string()).fix(format!(
                    "dccf-node cert issue --config <node.toml> --role {} --out {}",
                    name,
                    path.with_extension("").display()
                )));
                continue;
            }
            Err(e) => {
                out.push(
                    Finding::new(Level::Fail, check, e.to_string())
                        .fix("restore tls/ from the backup of the data directory"),
                );
                continue;
            }
        };
        let rotate = match role {
            Some(r) => format!(
                "dccf-node cert rotate --config <node.toml> --role {}",
                r.as_str()
            ),
            None => "the CA is renewed with a new agreement version (partners pin it): plan it with your partners".to_owned(),
        };
        if let (Some(role), Some(ca)) = (role, &ca) {
            match crate::identity::pki::cert_identity(&der) {
                Ok(id) if id.admin == config.admin && id.role == role => {}
                Ok(id) => out.push(
                    Finding::new(
                        Level::Fail,
                        check.clone(),
                        format!(
                            "{} names {} as {}, expected {} as {}",
                            path.display(),
                            id.admin,
                            id.role.as_str(),
                            config.admin,
                            role.as_str()
                        ),
                    )
                    .fix(rotate.clone()),
                ),
                Err(e) => out.push(
                    Finding::new(
                        Level::Fail,
                        check.clone(),
                        format!("{}: {e}", path.display()),
                    )
                    .fix(rotate.clone()),
                ),
            }
            if let Err(e) = crate::identity::pki::verify_issued_by(&der, ca) {
                out.push(
                    Finding::new(
                        Level::Fail,
                        check.clone(),
                        format!("{} is not issued by this node's CA: {e}", path.display()),
                    )
                    .fix(rotate.clone()),
                );
                continue;
            }
        }
        let Ok(not_after) = crate::identity::pki::cert_not_after(&der) else {
            continue;
        };
        let days = (not_after - now).whole_days();
        let until = not_after.date();
        if not_after <= now {
            out.push(
                Finding::new(
                    Level::Fail,
                    check,
                    format!("{} expired on {until}", path.display()),
                )
                .fix(rotate),
            );
        } else if days < warn_days {
            out.push(
                Finding::new(
                    Level::Warn,
                    check,
                    format!("{} expires in {days} day(s), on {until}", path.display()),
                )
                .fix(rotate),
            );
        } else {
            out.push(Finding::new(
                Level::Ok,
                check,
                format!("valid until {until} ({days} days)"),
            ));
        }
    }
    out
}

/// Agreements: the directory loads, and each agreement is in force (or says why not).
fn check_agreements(config: &NodeConfig, out: &mut Vec<Finding>) -> Option<AgreementSet> {
    let set = match AgreementSet::load_dir(&config.agreements_dir) {
        Ok(s) => s,
        Err(e) => {
            out.push(
                Finding::new(Level::Fail, "agreements", crate::config::one_line(&e.to_string()))
                    .fix("correct or remove the file named, then reload (SIGHUP or `dccf-node agreement verify FILE` first)"),
            );
            return None;
        }
    };
    let now = crate::envelope::now_ms();
    let warn_ms = config.observability.cert_warning_days as i64 * 86_400_000;
    let mut in_force = 0;
    let mut ids: Vec<&str> = set.all().map(|a| a.id()).collect();
    ids.dedup();
    for id in ids {
        let check = format!("agreement {id}");
        match set.active(id, now) {
            Ok(a) => {
                if a.party(&config.admin).is_none() {
                    out.push(
                        Finding::new(
                            Level::Warn,
                            check,
                            format!("in force, but {} is not one of its parties", config.admin),
                        )
                        .fix(format!(
                            "remove {} from this node's agreements directory",
                            a.path.display()
                        )),
                    );
                    continue;
                }
                in_force += 1;
                let left = a.valid_until_ms - now;
                if left < warn_ms {
                    out.push(
                        Finding::new(
                            Level::Warn,
                            check,
                            format!(
                                "version {} in force, but expires in {} day(s) ({})",
                                a.doc.version,
                                left / 86_400_000,
                                a.doc.valid_until
                            ),
                        )
                        .fix("agree a new version with the partners (`dccf-node agreement new`, each signs), copy it here and reload"),
                    );
                } else {
                    out.push(Finding::new(
                        Level::Ok,
                        check,
                        format!(
                            "version {} in force until {}, signed by every party",
                            a.doc.version, a.doc.valid_until
                        ),
                    ));
                }
            }
            Err(e) => {
                let latest = set.all().find(|a| a.id() == id);
                let fix = match latest {
                    Some(a) if !a.unsigned_by.is_empty() => format!(
                        "ask {} to sign: `dccf-node agreement sign --config <their node.toml> {}`, \
                         copy each {} here, then reload (SIGHUP)",
                        a.unsigned_by.join(", "),
                        a.path.file_name().map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
                        a.unsigned_by
                            .iter()
                            .map(|adm| crate::agreement::signature_path(&a.path, adm)
                                .file_name()
                                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => "agree a new version with the partners, or remove the file if the agreement has ended".to_owned(),
                };
                out.push(Finding::new(Level::Warn, check, format!("not in force: {e}")).fix(fix));
            }
        }
    }
    if in_force == 0 {
        out.push(
            Finding::new(
                Level::Fail,
                "agreements",
                format!(
                    "no agreement in force in {}: this node can exchange nothing",
                    config.agreements_dir.display()
                ),
            )
            .fix("create one with `dccf-node agreement new`, have every party sign it, copy it and the .sig files here"),
        );
    }
    Some(set)
}

/// Each partner of an agreement in force: TCP reachability, TLS handshake (both ways: our
/// certificate accepted, theirs verified against the agreement's CA), signed time and skew.
async fn check_partners(config: &NodeConfig, agreements: &AgreementSet) -> Vec<Finding> {
    let mut out = Vec::new();
    let now = crate::envelope::now_ms();
    let paths = config.identity_paths();
    let (Ok(chain), Ok(key)) = (
        crate::server::tls::load_certs(&paths.node_cert()),
        crate::server::tls::load_key(&paths.node_key()),
    ) else {
        out.push(Finding::new(
            Level::Info,
            "partners",
            "not checked: the node's certificate or key is unusable (see above)",
        ));
        return out;
    };
    let mut limits = config.limits.clone();
    limits.connect_timeout_secs = limits.connect_timeout_secs.min(5);
    limits.request_timeout_secs = limits.request_timeout_secs.min(10);
    let clients = crate::delivery::peers::PeerClients::new(chain, key, &limits);
    let mut seen = std::collections::BTreeSet::new();
    for agreement in agreements.current(now) {
        for (admin, party) in &agreement.parties {
            if admin == &config.admin || !seen.insert(admin.clone()) {
                continue;
            }
            out.push(check_partner(config, &clients, party).await);
        }
    }
    out
}

async fn check_partner(
    config: &NodeConfig,
    clients: &crate::delivery::peers::PeerClients,
    party: &crate::agreement::Party,
) -> Finding {
    let admin = &party.card.admin;
    let endpoint = &party.card.endpoint;
    let check = format!("partner {admin}");
    let host_port = match crate::server::tls::endpoint_parts(admin, endpoint) {
        Ok((_, hp)) => hp,
        Err(e) => {
            return Finding::new(Level::Fail, check, e.to_string())
                .fix(format!("{admin}'s party card in the agreement has a bad endpoint: ask {admin} for a corrected card and a new agreement version"));
        }
    };
    let connect = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&host_port),
    )
    .await;
    match connect {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Finding::new(
                Level::Fail,
                check,
                format!("cannot reach {endpoint}: {e}"),
            )
            .fix(format!(
                "check that {admin}'s node is running and that {endpoint} (from the agreement) \
                 is right; check firewalls for TCP {host_port}; ask {admin} to run `dccf-node doctor`"
            ));
        }
        Err(_) => {
            return Finding::new(
                Level::Fail,
                check,
                format!("no TCP connection to {endpoint} within 5 s"),
            )
            .fix(format!(
                "a firewall probably drops traffic to {host_port}: open it between the two nodes"
            ));
        }
    }
    let mut client = match clients.client(party) {
        Ok(c) => c,
        Err(e) => return Finding::new(Level::Fail, check, e.to_string()),
    };
    let mut nonce = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
        return Finding::new(Level::Fail, check, "no randomness for the ping nonce");
    }
    let sent = Instant::now();
    let sent_ms = crate::envelope::now_ms();
    let answer = client
        .ping(crate::proto::v1::PingRequest {
            nonce: nonce.to_vec(),
        })
        .await;
    let rtt = sent.elapsed();
    let response = match answer {
        Ok(r) => r.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            return Finding::new(
                Level::Warn,
                check,
                format!("reachable at {endpoint} over mutual TLS, but its node has no Ping (older version): clock skew not measured"),
            )
            .fix(format!("ask {admin} to upgrade dccf-node"));
        }
        Err(status) => {
            let text = crate::delivery::courier::status_text(&status);
            let fix = if text.contains("certificate")
                || text.contains("CertificateRequired")
                || text.contains("alert")
            {
                format!(
                    "the TLS handshake failed: {admin}'s certificate must chain to the CA in the \
                     agreement, and ours to our CA in {admin}'s copy of the agreement; compare \
                     both copies and ask {admin} to run `dccf-node doctor`"
                )
            } else {
                format!("ask {admin} to run `dccf-node doctor --config <their node.toml>`")
            };
            return Finding::new(Level::Fail, check, format!("{endpoint}: {text}")).fix(fix);
        }
    };
    let their_ms = match crate::ping::verify(&response, admin, &party.verifying_key, &nonce) {
        Ok(t) => t,
        Err(e) => {
            return Finding::new(Level::Fail, check, e.to_string()).fix(format!(
                "{admin}'s node signs with another key than the agreement names: ask {admin} \
                 whether its keys were replaced; a new agreement version is needed"
            ));
        }
    };
    let midpoint = sent_ms + (rtt.as_millis() as i64) / 2;
    let skew_ms = their_ms - midpoint;
    let max_ms = config.limits.max_clock_skew_secs as i64 * 1000;
    let what = format!(
        "reachable at {endpoint}, mutual TLS ok, round trip {} ms, {admin}'s clock {}{} ms",
        rtt.as_millis(),
        if skew_ms >= 0 { "+" } else { "" },
        skew_ms
    );
    if skew_ms.abs() > max_ms {
        Finding::new(
            Level::Fail,
            check,
            format!(
                "{what}: beyond the {} s this node accepts, envelopes are refused",
                config.limits.max_clock_skew_secs
            ),
        )
        .fix("synchronise the clocks with NTP (chrony or systemd-timesyncd) on both nodes")
    } else if skew_ms.abs() > 2_000 {
        Finding::new(
            Level::Warn,
            check,
            format!("{what}: clocks differ by more than 2 s"),
        )
        .fix("synchronise the clocks with NTP (chrony or systemd-timesyncd) on both nodes")
    } else {
        Finding::new(Level::Ok, check, what)
    }
}

/// The ledger: a stopped node's database recomputed in full against every signed checkpoint;
/// a running node's latest checkpoint verified and proven consistent with its current head.
async fn check_ledger(config: &NodeConfig, identity: &crate::identity::NodeIdentity) -> Finding {
    match crate::ledger_commands::verify_ledger_for_doctor(config, identity).await {
        Ok(text) => Finding::new(Level::Ok, "ledger", text),
        Err(e) => Finding::new(Level::Fail, "ledger", e.to_string()).fix(
            "stop the node and keep the data directory as it is (evidence); run `dccf-node ledger verify --config <node.toml>` and contact the auditors before restoring a backup",
        ),
    }
}

/// Whether the node is running and serving (gRPC health on the Gateway listener).
async fn check_running(config: &NodeConfig) -> Finding {
    let paths = config.identity_paths();
    let Ok(channel) =
        crate::cli::local_channel(config, &paths.gateway_cert(), &paths.gateway_key())
    else {
        return Finding::new(
            Level::Info,
            "node",
            "not checked (no usable gateway certificate)",
        );
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = tokio::time::timeout(
        Duration::from_secs(5),
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    match check {
        Ok(Ok(r))
            if r.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 =>
        {
            Finding::new(
                Level::Ok,
                "node",
                format!("running and serving (gateway {})", config.gateway_listen),
            )
        }
        Ok(Ok(_)) => Finding::new(
            Level::Fail,
            "node",
            "running but NOT_SERVING: its ledger stopped accepting writes",
        )
        .fix("check the node's log and the disk holding the data directory (space, I/O errors), then restart the node"),
        Ok(Err(_)) | Err(_) => Finding::new(
            Level::Info,
            "node",
            format!("not running (nothing answers on {})", config.gateway_listen),
        ),
    }
}
