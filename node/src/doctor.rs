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
            out.push(key_load_finding(&e));
            None
        }
    };
    let agreements = check_agreements(&config, &mut out);
    if let (Some(agreements), Some(identity)) = (&agreements, &identity) {
        out.extend(check_own_card(&config, identity, agreements));
    }
    if let Some(agreements) = &agreements {
        out.extend(check_partners(&config, agreements).await);
    }
    if let Some(identity) = &identity {
        out.extend(check_ledger(&config, identity).await);
    }
    out.extend(check_running(&config).await);
    out
}

/// Why the signing or HPKE key did not load, with the fix that suits the cause.
fn key_load_finding(e: &crate::identity::IdentityError) -> Finding {
    use crate::identity::IdentityError as E;
    match e {
        // Reported (with its chmod) by the key-file check: say only what it keeps from us.
        E::InsecurePermissions { .. } => Finding::new(
            Level::Info,
            "keys",
            "not loaded until the key file permissions are fixed (see above): own party card and ledger not checked",
        ),
        E::Unreadable { path, .. } => Finding::new(Level::Fail, "keys", e.to_string()).fix(format!(
            "the user running the node must own and be able to read {}: chown <node user> {0} and chmod 600 {0}",
            path.display()
        )),
        _ => Finding::new(Level::Fail, "keys", e.to_string())
            .fix("restore keys/ from the backup of the data directory; keys cannot be recreated (partners know the public keys)"),
    }
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
        text.push_str(&format!("{tag}  {:<20} {}\n", f.check, f.what));
        if let Some(fix) = &f.fix {
            text.push_str(&format!("      {:<20} fix: {fix}\n", ""));
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

/// This administration's own party card in each agreement in force: partners use it to verify
/// this node's signatures (signing key), to encrypt to it (HPKE key), to authenticate its TLS
/// certificate (CA) and to dial it (endpoint). Keys restored from another backup, a second
/// `init`, or a node certificate that does not name the endpoint's host break every exchange.
fn check_own_card(
    config: &NodeConfig,
    identity: &crate::identity::NodeIdentity,
    agreements: &AgreementSet,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let me = &config.admin;
    let paths = config.identity_paths();
    let own_ca = crate::server::tls::load_certs(&paths.ca_cert())
        .ok()
        .and_then(|c| c.first().map(|c| c.to_vec()));
    let node_cert = crate::server::tls::load_certs(&paths.node_cert())
        .ok()
        .and_then(|c| c.first().map(|c| c.to_vec()));
    let now = crate::envelope::now_ms();
    // endpoint -> the agreements naming it
    let mut endpoints: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut checked = 0;
    for agreement in agreements.current(now) {
        let Some(party) = agreement.party(me) else {
            continue;
        };
        checked += 1;
        let mut wrong = Vec::new();
        if party.verifying_key != identity.signing.verifying_key() {
            wrong.push("signing key (partners refuse every envelope and receipt this node signs)");
        }
        if hpke::Serializable::to_bytes(&party.hpke_key).as_slice()
            != identity.hpke.public_key_bytes()
        {
            wrong.push("HPKE key (this node cannot open what partners seal to it)");
        }
        if own_ca.as_deref() != Some(party.ca_der.as_slice()) {
            wrong.push("CA certificate (partners refuse this node's TLS certificate)");
        }
        if !wrong.is_empty() {
            out.push(
                Finding::new(
                    Level::Fail,
                    "own party card",
                    format!(
                        "agreement {} v{} lists {me} with keys this node does not have: {}",
                        agreement.id(),
                        agreement.doc.version,
                        wrong.join("; ")
                    ),
                )
                .fix(format!(
                    "the keys in {} are not the ones {me} put into the agreement (restored from \
                     another backup, or `init` run again?): restore the matching keys/ and tls/ \
                     from the backup, or agree a new agreement version with the current party \
                     card ({})",
                    config.data_dir.display(),
                    paths.party_card().display()
                )),
            );
        }
        endpoints
            .entry(party.card.endpoint.clone())
            .or_default()
            .push(agreement.id().to_owned());
    }
    for (endpoint, ids) in &endpoints {
        let ids = ids.join(", ");
        let Ok((host, port)) = crate::identity::card::parse_endpoint(endpoint) else {
            continue; // a card with a bad endpoint does not load
        };
        if let Some(cert) = &node_cert
            && let Err(e) = crate::identity::pki::verify_valid_for_host(cert, &host)
        {
            let names = crate::identity::pki::cert_hosts(cert)
                .map(|h| h.join(", "))
                .unwrap_or_default();
            out.push(
                Finding::new(
                    Level::Fail,
                    "node certificate",
                    format!(
                        "{} is not valid for {host}, the host partners dial ({endpoint} in {ids}): \
                         it names {}; every partner's TLS handshake fails",
                        paths.node_cert().display(),
                        if names.is_empty() { e } else { names }
                    ),
                )
                .fix(format!(
                    "dccf-node cert rotate --config <node.toml> --role node --host {host} \
                     (add a --host for every other name it must keep)"
                )),
            );
        }
        if port != config.listen.port() {
            out.push(
                Finding::new(
                    Level::Warn,
                    "own endpoint",
                    format!(
                        "partners dial port {port} ({endpoint} in {ids}), this node listens on {}",
                        config.listen
                    ),
                )
                .fix(format!(
                    "unless a firewall or load balancer forwards port {port} to {}, correct \
                     `listen` in node.toml or agree a new agreement version with the right endpoint",
                    config.listen.port()
                )),
            );
        }
    }
    if checked > 0 && out.is_empty() {
        out.push(Finding::new(
            Level::Ok,
            "own party card",
            format!(
                "the agreements in force name this node's signing key, HPKE key and CA; its \
                 certificate is valid for the endpoint {}",
                endpoints.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    out
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
            let fix = handshake_fix(admin, &text);
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
    let what = format!(
        "reachable at {endpoint}, mutual TLS ok, round trip {} ms, {admin}'s clock {}{} ms",
        rtt.as_millis(),
        if skew_ms >= 0 { "+" } else { "" },
        skew_ms
    );
    skew_verdict(check, what, skew_ms, config.limits.max_clock_skew_secs)
}

/// Whether a call's error, after its TCP connection was made, is the server closing the TLS
/// handshake on us: an alert, or — TLS 1.3 checks the client certificate after the client
/// thinks the handshake is done — a connection closed or reset at once, which surfaces as a
/// transport error without a gRPC status of the server's.
fn refused_in_handshake(error: &str) -> bool {
    [
        "transport error",
        "alert",
        "certificate",
        "broken pipe",
        "reset",
    ]
    .iter()
    .any(|w| error.contains(w))
}

/// What to do when a partner answers TCP but the call fails. The TCP connection worked, so a
/// transport failure is the TLS handshake: either we refused the partner's certificate
/// (`invalid peer certificate`), or — in TLS 1.3 a server's refusal of a client certificate
/// arrives as an alert or a closed connection right after the handshake — it refused ours.
fn handshake_fix(admin: &str, text: &str) -> String {
    if text.contains("invalid peer certificate") {
        format!(
            "{admin}'s node presents a certificate that does not chain to {admin}'s CA in the \
             agreement, has expired, or is not valid for the endpoint's host: ask {admin} to run \
             `dccf-node doctor`; compare both copies of the agreement (`dccf-node agreement verify` \
             prints the digest)"
        )
    } else if refused_in_handshake(text) {
        format!(
            "{admin}'s node closed the connection in the TLS handshake: it most likely refused \
             this node's certificate (it must chain to our CA in {admin}'s copy of the agreement \
             and be valid: see the node certificate finding above), or that agreement is not in \
             force at {admin}; compare both copies (`dccf-node agreement verify` prints the digest) \
             and ask {admin} to run `dccf-node doctor`"
        )
    } else {
        format!("ask {admin} to run `dccf-node doctor --config <their node.toml>`")
    }
}

/// Judges a partner's clock offset: beyond `max_skew_secs` envelopes are refused (FAIL); more
/// than 2 s apart is worth fixing before it grows (WARN).
fn skew_verdict(check: String, what: String, skew_ms: i64, max_skew_secs: u64) -> Finding {
    let max_ms = i64::try_from(max_skew_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let fix = "synchronise the clocks with NTP (chrony or systemd-timesyncd) on both nodes";
    if skew_ms.saturating_abs() > max_ms {
        Finding::new(
            Level::Fail,
            check,
            format!(
                "{what}: beyond the {max_skew_secs} s this node accepts, envelopes are refused"
            ),
        )
        .fix(fix)
    } else if skew_ms.saturating_abs() > 2_000 {
        Finding::new(
            Level::Warn,
            check,
            format!("{what}: clocks differ by more than 2 s"),
        )
        .fix(fix)
    } else {
        Finding::new(Level::Ok, check, what)
    }
}

/// The ledger: a stopped node's database recomputed in full against every signed checkpoint;
/// a running node's latest checkpoint verified and proven consistent with its current head.
/// Then what the node's data says needs attention: open witness alarms and the outbox.
async fn check_ledger(
    config: &NodeConfig,
    identity: &crate::identity::NodeIdentity,
) -> Vec<Finding> {
    if !config.ledger_dir().join("db").exists() {
        return vec![Finding::new(
            Level::Ok,
            "ledger",
            "no ledger yet (the node has never run)",
        )];
    }
    let integrity = |r: Result<String, String>| {
        match r {
        Ok(text) => Finding::new(Level::Ok, "ledger", text),
        Err(e) => Finding::new(Level::Fail, "ledger", e).fix(
            "stop the node and keep the data directory as it is (evidence); run `dccf-node ledger verify --config <node.toml>` and contact the auditors before restoring a backup",
        ),
    }
    };
    let stopped = match crate::ledger_commands::open_local(config) {
        Ok(s) => s,
        Err(e) => return vec![integrity(Err(e.to_string()))],
    };
    let (mut out, alarms, outbox) = match stopped {
        Some((store, cps)) => {
            // Read before the full check, which closes the store.
            let alarms = crate::witness::alarms(&store).map_err(|e| e.to_string());
            let outbox = crate::delivery::outbox::totals(&store).map_err(|e| e.to_string());
            let found = integrity(
                crate::ledger_commands::verify_database(&store, &cps).map_err(|e| e.to_string()),
            );
            (vec![found], alarms, outbox)
        }
        None => {
            use crate::ledger_commands::RunningLedgerError;
            // One auditor channel for the ledger check and the alarms.
            let audit =
                crate::ledger_commands::audit_client(config, None, None).map_err(|e| e.to_string());
            let checked = match &audit {
                Ok(audit) => {
                    crate::ledger_commands::verify_running_ledger(config, identity, audit.clone())
                        .await
                }
                Err(e) => Err(RunningLedgerError::Unreachable(e.clone())),
            };
            let found = match checked {
                Ok(text) => Finding::new(Level::Ok, "ledger", text),
                Err(RunningLedgerError::Invalid(e)) => integrity(Err(e)),
                Err(RunningLedgerError::Unreachable(e)) => Finding::new(
                    Level::Warn,
                    "ledger",
                    format!("running node: not checked, its Audit service did not answer: {e}"),
                )
                .fix(local_connection_fix(&e, "auditor")),
            };
            let alarms = match audit {
                Ok(audit) => running_alarms(audit).await,
                Err(e) => Err(e),
            };
            (vec![found], alarms, running_outbox(config).await)
        }
    };
    match alarms {
        Ok(alarms) => {
            for a in alarms {
                out.push(
                    Finding::new(
                        Level::Fail,
                        format!("witness {}", a.partner),
                        format!(
                            "open alarm since {}: {}'s ledger is inconsistent with a checkpoint \
                             it showed earlier ({})",
                            fmt_ms(a.at_ms),
                            a.partner,
                            crate::config::one_line(&a.detail)
                        ),
                    )
                    .fix(format!(
                        "{0}'s history was rewritten or rolled back: keep both nodes' data as \
                         evidence, ask {0} and the auditors (`dccf-node ledger status` shows both \
                         checkpoints); once explained, with the node stopped: `dccf-node ledger \
                         resolve-alarm --config <node.toml> --partner {0} --reason \"…\"`",
                        a.partner
                    )),
                );
            }
        }
        Err(e) => out.push(Finding::new(
            Level::Info,
            "witness",
            format!("alarms not checked: {e}"),
        )),
    }
    match outbox {
        Ok(partners) => {
            for crate::proto::v1::OutboxPartner {
                partner,
                queued,
                dead_letter: dead,
            } in partners
            {
                if dead > 0 {
                    out.push(
                        Finding::new(
                            Level::Warn,
                            format!("outbox {partner}"),
                            format!(
                                "{dead} message(s) to {partner} given up (dead letter), {queued} waiting"
                            ),
                        )
                        .fix(format!(
                            "`dccf-node outbox list --config <node.toml> --partner {partner} \
                             --dead-letter` shows why; once the cause is fixed, `dccf-node outbox \
                             retry` them (or `cancel`)"
                        )),
                    );
                } else if queued > 0 {
                    out.push(Finding::new(
                        Level::Info,
                        format!("outbox {partner}"),
                        format!("{queued} message(s) waiting for delivery to {partner}"),
                    ));
                }
            }
        }
        Err(e) => out.push(Finding::new(
            Level::Info,
            "outbox",
            format!("not checked: {e}"),
        )),
    }
    out
}

/// `ms` (Unix) as an RFC 3339 time, for findings.
fn fmt_ms(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.replace_nanosecond(0)
                .ok()?
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// A running node's open witness alarms, from its Audit service.
async fn running_alarms(
    mut audit: crate::proto::v1::audit_client::AuditClient<tonic::transport::Channel>,
) -> Result<Vec<crate::proto::v1::WitnessAlarm>, String> {
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        audit.get_status(crate::proto::v1::LedgerStatusRequest::default()),
    )
    .await
    .map_err(|_| "Audit.GetStatus: no answer within 10 s".to_owned())?
    .map_err(|s| format!("Audit.GetStatus: {}", s.message()))?;
    Ok(status.into_inner().alarms)
}

/// A running node's outbox totals per partner, from its Gateway service.
async fn running_outbox(
    config: &NodeConfig,
) -> Result<Vec<crate::proto::v1::OutboxPartner>, String> {
    let mut gateway = crate::cli::gateway_client_for(config).map_err(|e| e.to_string())?;
    let list = tokio::time::timeout(
        Duration::from_secs(10),
        gateway.list_outbox(crate::proto::v1::ListOutboxRequest {
            partner: String::new(),
            dead_letter_only: false,
            limit: 1,
        }),
    )
    .await
    .map_err(|_| "Gateway.ListOutbox: no answer within 10 s".to_owned())?
    .map_err(|s| format!("Gateway.ListOutbox: {}", s.message()))?;
    Ok(list.into_inner().partners)
}

/// Whether the node is running and serving (gRPC health on the Gateway listener). When it is
/// not running: whether it could start, i.e. its listen addresses are free on this machine.
async fn check_running(config: &NodeConfig) -> Vec<Finding> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(crate::cli::gateway_dial_addr(config)),
    )
    .await;
    if !matches!(tcp, Ok(Ok(_))) {
        let mut out = vec![Finding::new(
            Level::Info,
            "node",
            format!("not running (nothing answers on {})", config.gateway_listen),
        )];
        out.extend(check_listen_addresses(config));
        return out;
    }
    let paths = config.identity_paths();
    let channel =
        match crate::cli::local_channel(config, &paths.gateway_cert(), &paths.gateway_key()) {
            Ok(c) => c,
            Err(e) => {
                return vec![Finding::new(
                    Level::Info,
                    "node",
                    format!(
                        "something answers on {}, not checked further: {e}",
                        config.gateway_listen
                    ),
                )];
            }
        };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = tokio::time::timeout(
        Duration::from_secs(5),
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await;
    let finding = match check {
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
        Ok(Err(status)) => {
            let text = crate::delivery::courier::status_text(&status);
            Finding::new(
                Level::Fail,
                "node",
                format!(
                    "something answers on {} but the health check over mutual TLS failed: {text}",
                    config.gateway_listen
                ),
            )
            .fix(local_connection_fix(&text, "gateway"))
        }
        Err(_) => Finding::new(
            Level::Fail,
            "node",
            format!("{} accepts connections but gives no answer within 5 s", config.gateway_listen),
        )
        .fix("the node is overloaded or hung: look at its log and `dccf_requests_shed_total`; restart it if it stays so"),
    };
    vec![finding]
}

/// What to do when a local client (the back office's `gateway` or the `auditor` certificate)
/// cannot talk to its own node: tell apart the node's certificate failing our check, the node
/// refusing our client certificate, and something else holding the port.
fn local_connection_fix(error: &str, client: &str) -> String {
    if error.contains("invalid peer certificate") {
        "the node presents a certificate its own clients cannot verify (expired, another CA, or \
         not valid for the endpoint's host): fix the node certificate as reported above, then \
         send SIGHUP to the node"
            .to_owned()
    } else if refused_in_handshake(error) {
        format!(
            "the node refused the {client} client certificate: see the {client} certificate \
             finding above (`dccf-node cert rotate --config <node.toml> --role {client}`)"
        )
    } else {
        format!(
            "if another program holds the node's address, `ss -ltnp` names it; otherwise look at \
             the node's log ({client} client: {error})"
        )
    }
}

/// A stopped node's listen addresses (Exchange, Gateway, metrics): free to bind here?
fn check_listen_addresses(config: &NodeConfig) -> Vec<Finding> {
    let mut addrs = vec![
        ("listen", config.listen),
        ("gateway_listen", config.gateway_listen),
    ];
    if let Some(m) = config.observability.metrics_listen {
        addrs.push(("observability.metrics_listen", m));
    }
    let mut out = Vec::new();
    for (field, addr) in addrs {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => out.push(
                Finding::new(
                    Level::Fail,
                    "listen addresses",
                    format!("{field} {addr} is in use by another program: the node cannot start"),
                )
                .fix(format!(
                    "`ss -ltnp 'sport = :{}'` names the program: stop it, or change `{field}` in node.toml{}",
                    addr.port(),
                    if field == "listen" {
                        " (and the endpoint partners dial, with a new agreement version)"
                    } else {
                        ""
                    }
                )),
            ),
            Err(e) => out.push(
                Finding::new(
                    Level::Fail,
                    "listen addresses",
                    format!("{field} {addr} cannot be bound on this machine: {e}"),
                )
                .fix(format!(
                    "use an address of this machine (or 0.0.0.0) in `{field}` in node.toml; ports below 1024 need privileges"
                )),
            ),
        }
    }
    if out.is_empty() {
        out.push(Finding::new(
            Level::Ok,
            "listen addresses",
            "free: the node can start".to_owned(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(skew_ms: i64) -> Finding {
        skew_verdict("partner BR".into(), "clock".into(), skew_ms, 300)
    }

    #[test]
    fn clock_skew_is_ok_within_2_s_a_warning_beyond_and_a_failure_past_the_limit() {
        assert_eq!(verdict(0).level, Level::Ok);
        assert_eq!(verdict(-2_000).level, Level::Ok);
        for ms in [2_001, -2_001, 300_000, -300_000] {
            let f = verdict(ms);
            assert_eq!(f.level, Level::Warn, "{ms}");
            assert!(f.fix.as_deref().is_some_and(|x| x.contains("NTP")), "{ms}");
        }
        for ms in [300_001, -300_001, i64::MIN, i64::MAX] {
            let f = verdict(ms);
            assert_eq!(f.level, Level::Fail, "{ms}");
            assert!(f.what.contains("envelopes are refused"), "{}", f.what);
        }
    }

    #[test]
    fn a_refused_handshake_is_told_apart_from_a_certificate_we_refuse_and_other_errors() {
        let theirs = handshake_fix(
            "BR",
            "Unavailable: invalid peer certificate: UnknownIssuer: transport error",
        );
        assert!(
            theirs.contains("BR's node presents a certificate"),
            "{theirs}"
        );
        for ours in [
            "Unknown: transport error: connection error: received fatal alert: CertificateUnknown",
            "Cancelled: operation was canceled: transport error: connection closed",
            "Unknown: transport error: connection error: stream closed because of a broken pipe",
        ] {
            let fix = handshake_fix("BR", ours);
            assert!(
                fix.contains("refused this node's certificate"),
                "{ours}: {fix}"
            );
        }
        let other = handshake_fix("BR", "PermissionDenied: not a party");
        assert!(other.starts_with("ask BR to run"), "{other}");
    }

    #[test]
    fn a_local_client_failure_names_the_certificate_at_fault() {
        assert!(
            local_connection_fix("invalid peer certificate: NotValidForName", "gateway")
                .contains("the node presents a certificate its own clients cannot verify")
        );
        assert!(
            local_connection_fix("transport error: received fatal alert", "auditor")
                .contains("--role auditor")
        );
        assert!(local_connection_fix("DeadlineExceeded", "gateway").contains("ss -ltnp"));
    }

    #[test]
    fn findings_render_one_line_each_with_the_fix_below_and_a_summary() {
        let text = render(
            "nl/node.toml",
            &[
                Finding::new(Level::Ok, "config", "loads"),
                Finding::new(Level::Fail, "listen addresses", "in use").fix("stop it"),
                Finding::new(Level::Warn, "auditor certificate", "expires").fix("rotate"),
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], format!("ok    {:<20} loads", "config"));
        assert_eq!(lines[2], format!("FAIL  {:<20} in use", "listen addresses"));
        assert_eq!(lines[3].trim(), "fix: stop it");
        assert_eq!(lines.last(), Some(&"1 failure(s), 1 warning(s)"));
    }
}
