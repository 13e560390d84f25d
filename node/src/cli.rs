//! The `dccf-node` command line: argument parsing and one function per command. Every failure
//! reaches the user as one line on stderr and a non-zero exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Limits, NodeConfig};
use crate::identity::card::PartyCard;
use crate::identity::{IdentityPaths, NodeIdentity};
use crate::proto::v1::gateway_client::GatewayClient;
use crate::proto::v1::{AckRequest, InboxMessage, InboxRequest, SendRequest, SendResponse};

/// DCCF node: signed, end-to-end encrypted, ledgered customs data exchange between administrations.
#[derive(Debug, Parser)]
#[command(name = "dccf-node", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this administration's keys, CA, certificates, node.toml and party card in DIR.
    Init {
        /// Administration id (ISO 3166 alpha-2, optionally -SUFFIX), e.g. NL.
        #[arg(long)]
        admin: String,
        /// Address the Exchange service listens on, e.g. 127.0.0.1:7001.
        #[arg(long)]
        listen: SocketAddr,
        /// Address the Gateway service listens on (default: the listen port + 100).
        #[arg(long)]
        gateway_listen: Option<SocketAddr>,
        /// Endpoint partners use to reach this node (default: https://<listen>).
        #[arg(long)]
        endpoint: Option<String>,
        /// Data directory to create (must not contain an identity yet).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Run the node until SIGTERM or Ctrl-C (SIGHUP reloads agreements).
    Serve {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Send a message from a JSON file through this node's Gateway and print the receipt.
    Send {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// JSON file: {"agreement": ID, "to": ADMIN, "type": "dccf.v1.X", "message": {...}}
        /// (optional "in_reply_to", "message_id", "ttl_seconds", "consent_reference").
        #[arg(long)]
        file: PathBuf,
    },
    /// Print received messages as JSON lines.
    Inbox {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Keep waiting for new messages instead of stopping when the inbox is drained.
        #[arg(long)]
        follow: bool,
        /// Acknowledge each message after printing it (it leaves the inbox).
        #[arg(long)]
        ack: bool,
    },
    /// Run a federation of administrations on loopback and show what happens.
    Demo {
        /// Keep the nodes running after the demo and print how to talk to them.
        #[arg(long)]
        keep: bool,
        /// Keep each administration's data directory under DIR/<admin>/ (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Work with agreement files: sign, verify, show.
    Agreement {
        /// What to do.
        #[command(subcommand)]
        action: AgreementAction,
    },
    /// Inspect, export, verify and reconcile ledgers (auditor tools).
    Ledger {
        /// What to do.
        #[command(subcommand)]
        action: crate::ledger_commands::LedgerAction,
    },
    /// Inspect the outbox and dead-letter queue of the running node; retry or cancel messages.
    Outbox {
        /// What to do.
        #[command(subcommand)]
        action: crate::outbox_commands::OutboxAction,
    },
    /// The AEO registry and partner mirrors: generate, import, set-status, lookup, mirrors,
    /// verify.
    Aeo {
        /// What to do.
        #[command(subcommand)]
        action: crate::aeo_commands::AeoAction,
    },
    /// Certificates from this administration's CA: issue, rotate (no downtime), list.
    Cert {
        /// What to do.
        #[command(subcommand)]
        action: crate::cert_commands::CertAction,
    },
    /// Check this node's configuration, keys, certificates, agreements, partners (reachability,
    /// TLS, clock skew) and ledger; explain each problem and how to fix it. Non-zero exit if
    /// anything is broken.
    Doctor {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Effectiveness report: per agreement and flow, message volumes, refusals by reason,
    /// delivery latency, pre-arrival lead time, and AEO lookups with hit rates (aggregates only).
    Report {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Start of the period: YYYY-MM-DD (UTC) or an RFC 3339 date-time.
        #[arg(long)]
        since: String,
        /// End of the period (exclusive; default: now).
        #[arg(long)]
        until: Option<String>,
        /// Only this agreement.
        #[arg(long)]
        agreement: Option<String>,
        /// Output: a readable table, CSV, or an SVG chart.
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// Write to FILE instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// One-screen summary of the running node.
    Status {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Measure performance; every suite prints a table, or one JSON object with --json.
    Bench {
        /// Which suite.
        #[command(subcommand)]
        suite: crate::bench::Suite,
    },
}

/// `dccf-node agreement` subcommands.
#[derive(Debug, Subcommand)]
pub enum AgreementAction {
    /// Write a new agreement from a template and the parties' cards (review it, then each signs).
    New {
        /// Which template.
        #[arg(long, value_enum)]
        template: crate::agreement::templates::Template,
        /// Agreement id, e.g. nl-br-mra.
        #[arg(long)]
        id: String,
        /// Party card files (party.toml of each administration), comma-separated or repeated.
        #[arg(long, value_delimiter = ',', required = true)]
        parties: Vec<PathBuf>,
        /// Start of validity (RFC 3339; default: now).
        #[arg(long)]
        valid_from: Option<String>,
        /// End of validity (RFC 3339; default: one year after the start).
        #[arg(long)]
        valid_until: Option<String>,
        /// File to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign FILE as this node's administration (writes FILE's sibling `STEM.<ADMIN>.sig`).
    Sign {
        /// Path to node.toml (whose administration and signing key sign).
        #[arg(long)]
        config: PathBuf,
        /// The agreement file.
        file: PathBuf,
    },
    /// Revoke FILE as this node's administration, effective now (writes `STEM.<ADMIN>.revoked`;
    /// copy it to every party's agreements directory, then reload).
    Revoke {
        /// Path to node.toml (whose administration and signing key revoke).
        #[arg(long)]
        config: PathBuf,
        /// The agreement file.
        file: PathBuf,
    },
    /// Check the schema, every signature and the validity window; non-zero exit unless active.
    Verify {
        /// The agreement file.
        file: PathBuf,
    },
    /// Print a readable summary: parties, validity, and who may send what to whom.
    Show {
        /// The agreement file.
        file: PathBuf,
    },
}

/// Output formats of `report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// A readable table.
    Table,
    /// CSV, one row per flow and per AEO lookup kind.
    Csv,
    /// An SVG chart.
    Svg,
}

/// Errors of the command line layer (all other modules' errors arrive as text).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A one-line message for the user.
    #[error("{0}")]
    Message(String),
}

fn err(e: impl std::fmt::Display) -> CliError {
    CliError::Message(crate::config::one_line(&e.to_string()))
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server logs its decisions (set up once its config is read: it names the format);
    // interactive commands only their failures.
    if !matches!(cli.command, Command::Serve { .. }) {
        init_tracing("error", crate::config::LogFormat::Text);
    }
    crate::server::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr in `format`; `DCCF_LOG` (e.g. `info`, `dccf_node=debug`) overrides the
/// level and `DCCF_LOG_FORMAT` (`json` or `text`) the format.
fn init_tracing(default_level: &str, format: crate::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DCCF_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let json = match std::env::var("DCCF_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => format == crate::config::LogFormat::Json,
    };
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Init {
            admin,
            listen,
            gateway_listen,
            endpoint,
            dir,
        } => {
            let card = init(&admin, listen, gateway_listen, endpoint, &dir)?;
            emit(&format!(
                "# Party card of {admin} (give this to partners for agreements)\n{}",
                card.to_toml().map_err(err)?
            ))?;
            eprintln!(
                "created {} (config: {})",
                dir.display(),
                dir.join("node.toml").display()
            );
            Ok(())
        }
        Command::Serve { config } => serve(&config).await,
        Command::Send { config, file } => {
            let response = send_file(&config, &file).await?;
            emit(&receipt_json(&response).to_string())?;
            Ok(())
        }
        Command::Inbox {
            config,
            follow,
            ack,
        } => inbox(&config, follow, ack).await,
        Command::Demo { keep, dir } => crate::demo::run(keep, dir).await.map_err(err),
        Command::Outbox { action } => {
            let text = crate::outbox_commands::run(action).await?;
            emit(&text)
        }
        Command::Aeo { action } => {
            let text = crate::aeo_commands::run(action).await?;
            emit(&text)
        }
        Command::Agreement { action } => {
            use crate::agreement::commands;
            let now = crate::envelope::now_ms();
            let text = match action {
                AgreementAction::New {
                    template,
                    id,
                    parties,
                    valid_from,
                    valid_until,
                    out,
                } => {
                    new_agreement(template, &id, &parties, valid_from, valid_until, &out)?;
                    format!(
                        "wrote {}; review it, then each party runs `dccf-node agreement sign`",
                        out.display()
                    )
                }
                AgreementAction::Sign { config, file } => {
                    format!(
                        "wrote {}",
                        commands::sign(&config, &file).map_err(err)?.display()
                    )
                }
                AgreementAction::Revoke { config, file } => format!(
                    "wrote {}; copy it to every party's agreements directory and reload",
                    commands::revoke(&config, &file, now)
                        .map_err(err)?
                        .display()
                ),
                AgreementAction::Verify { file } => commands::verify(&file, now).map_err(err)?,
                AgreementAction::Show { file } => commands::show(&file, now).map_err(err)?,
            };
            emit(&text)
        }
        Command::Ledger { action } => {
            let text = crate::ledger_commands::run_ledger(action)
                .await
                .map_err(err)?;
            emit(&text)
        }
        Command::Cert { action } => emit(&crate::cert_commands::run(action).map_err(err)?),
        Command::Doctor { config } => {
            let findings = crate::doctor::run(&config).await;
            emit(&crate::doctor::render(
                &config.display().to_string(),
                &findings,
            ))?;
            let fails = findings
                .iter()
                .filter(|f| f.level == crate::doctor::Level::Fail)
                .count();
            if fails > 0 {
                return Err(err(format!(
                    "doctor: {fails} problem(s) to fix (see FAIL lines above)"
                )));
            }
            Ok(())
        }
        Command::Report {
            config,
            since,
            until,
            agreement,
            format,
            out,
        } => {
            let text = report(&config, &since, until.as_deref(), agreement, format).await?;
            match out {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|e| err(format!("{}: {e}", path.display())))
                }
                None => emit(&text),
            }
        }
        Command::Status { config } => {
            let config = NodeConfig::load(&config).map_err(err)?;
            emit(&crate::status::status(&config).await.map_err(err)?)
        }
        Command::Bench { suite } => crate::bench::run(suite).await.map_err(err),
    }
}

/// `agreement new`: fills a template and writes it.
fn new_agreement(
    template: crate::agreement::templates::Template,
    id: &str,
    parties: &[PathBuf],
    valid_from: Option<String>,
    valid_until: Option<String>,
    out: &Path,
) -> Result<(), CliError> {
    use crate::agreement::templates;
    use time::format_description::well_known::Rfc3339;
    let parse = |flag: &str, text: &str| -> Result<time::OffsetDateTime, CliError> {
        time::OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
            err(format!(
                "--{flag} {text:?}: not an RFC 3339 date-time ({e})"
            ))
        })
    };
    let from = match valid_from {
        Some(t) => parse("valid-from", &t)?,
        None => time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .map_err(err)?,
    };
    let until = match valid_until {
        Some(t) => parse("valid-until", &t)?,
        None => from + time::Duration::days(365),
    };
    let datetime = |t: time::OffsetDateTime| -> Result<toml::value::Datetime, CliError> {
        t.to_offset(time::UtcOffset::UTC)
            .format(&Rfc3339)
            .map_err(err)?
            .parse()
            .map_err(err)
    };
    let cards = templates::read_cards(parties).map_err(err)?;
    let doc =
        templates::fill(template, id, cards, datetime(from)?, datetime(until)?).map_err(err)?;
    templates::write(&doc, out).map_err(err)
}

/// Writes one line to stdout. A closed stdout (e.g. `| head`) is an error, not a panic, so a
/// message that could not be printed is not acknowledged either.
fn emit(line: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| err(format!("cannot write to standard output: {e}")))
}

/// Creates an administration's data directory; returns its party card.
pub fn init(
    admin: &str,
    listen: SocketAddr,
    gateway_listen: Option<SocketAddr>,
    endpoint: Option<String>,
    dir: &Path,
) -> Result<PartyCard, CliError> {
    crate::identity::card::validate_admin_id(admin).map_err(err)?;
    let config_path = dir.join("node.toml");
    if config_path.exists() {
        return Err(err(format!(
            "{} already exists; refusing to overwrite an identity",
            config_path.display()
        )));
    }
    if let Ok(mut entries) = std::fs::read_dir(dir)
        && let Some(Ok(first)) = entries.next()
    {
        return Err(err(format!(
            "{} is not empty (it holds {}); init needs a new or empty directory",
            dir.display(),
            first.file_name().to_string_lossy()
        )));
    }
    let gateway_listen = match gateway_listen {
        Some(g) => g,
        None => SocketAddr::new(
            listen.ip(),
            listen.port().checked_add(100).ok_or_else(|| {
                err("--listen port too high for the default gateway port; give --gateway-listen")
            })?,
        ),
    };
    let endpoint = endpoint.unwrap_or_else(|| format!("https://{listen}"));

    // Build everything in a private staging directory beside DIR and move it into place at the
    // end, so that a failure at any step leaves nothing behind and init can simply be re-run.
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| err(format!("{}: {e}", parent.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".dccf-init-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&parent)
        .map_err(|e| {
            err(format!(
                "{}: cannot create a staging directory: {e}",
                parent.display()
            ))
        })?;
    let paths = IdentityPaths {
        dir: staging.path().to_owned(),
    };
    let card = NodeIdentity::generate_all(&paths, admin, &listen.ip().to_string(), &endpoint)
        .map_err(|e| {
            err(e.to_string().replace(
                &staging.path().display().to_string(),
                &dir.display().to_string(),
            ))
        })?;
    std::fs::create_dir(staging.path().join("agreements"))
        .map_err(|e| err(format!("{}: {e}", dir.join("agreements").display())))?;
    let config = NodeConfig {
        admin: admin.to_owned(),
        data_dir: ".".into(),
        listen,
        gateway_listen,
        agreements_dir: "agreements".into(),
        limits: Limits::default(),
        ledger: Default::default(),
        delivery: Default::default(),
        aeo: Default::default(),
        observability: Default::default(),
    };
    crate::identity::keyfile::write_public(
        &staging.path().join("node.toml"),
        config.to_commented_toml().as_bytes(),
    )
    .map_err(err)?;
    if dir.exists() {
        // Checked empty above; an empty directory is replaced by the staged one.
        std::fs::remove_dir(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    }
    std::fs::rename(staging.path(), dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    // The staging directory now lives at DIR; keep TempDir from deleting it.
    let _ = staging.keep();
    Ok(card)
}

async fn serve(config_path: &Path) -> Result<(), CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: a SIGTERM that arrives while the node starts is queued, not fatal.
    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    let mut hup = signal(SignalKind::hangup()).map_err(err)?;
    let config = NodeConfig::load(config_path).map_err(err)?;
    init_tracing("info", config.observability.log_format);
    if let Some(addr) = config.observability.metrics_listen {
        crate::telemetry::install(addr).map_err(err)?;
        tracing::info!(%addr, "metrics listener: GET /metrics");
    }
    let mut node = crate::server::start(config).await.map_err(err)?;
    eprintln!(
        "dccf-node {} serving: exchange {} gateway {}",
        node.state.admin(),
        node.exchange_addr,
        node.gateway_addr
    );
    let _watchdog = crate::service_manager::ready(&format!(
        "{} serving: exchange {} gateway {}",
        node.state.admin(),
        node.exchange_addr,
        node.gateway_addr
    ));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match node.reload_certificate() {
                Err(e) => tracing::error!(error = %e, "node certificate not reloaded; keeping the current one"),
                Ok(_) => match node.state.reload_agreements().await {
                Ok(statuses) => tracing::warn!(
                    in_force = statuses.iter().filter(|s| s.active).count(),
                    loaded = statuses.len(),
                    "agreements reloaded"
                ),
                Err(e) => tracing::error!(error = %e, "agreement reload failed; keeping the previous set"),
            }},
            result = node.wait() => return result.map_err(err),
        }
    }
    eprintln!("shutting down");
    crate::service_manager::stopping();
    node.shutdown().await;
    Ok(())
}

/// `dccf-node report`: computed from the ledger directly when the node is stopped, by the
/// node's Audit service (auditor certificate) when it runs.
async fn report(
    config_path: &Path,
    since: &str,
    until: Option<&str>,
    agreement: Option<String>,
    format: ReportFormat,
) -> Result<String, CliError> {
    use crate::report;
    let since_ms = report::parse_date("--since", since).map_err(err)?;
    let until_ms = match until {
        Some(u) => report::parse_date("--until", u).map_err(err)?,
        None => crate::envelope::now_ms() + 1,
    };
    if until_ms <= since_ms {
        return Err(err(report::ReportError::Period {
            since: since.to_owned(),
            until: until.unwrap_or("now").to_owned(),
        }));
    }
    let config = NodeConfig::load(config_path).map_err(err)?;
    let dir = config.ledger_dir();
    if !dir.join("db").exists() {
        return Err(err(format!(
            "{}: no ledger here (has this node ever run?)",
            dir.display()
        )));
    }
    let r = match crate::ledger::Store::open_waiting(&dir, std::time::Duration::from_millis(300)) {
        Ok(store) => {
            let r = report::compute(
                &store,
                &config.admin,
                since_ms,
                until_ms,
                agreement.as_deref(),
            )
            .map_err(err)?;
            store.close().map_err(err)?;
            r
        }
        Err(crate::ledger::LedgerError::Io { source, .. })
            if source.to_string().contains("in use") =>
        {
            let paths = config.identity_paths();
            let channel = local_channel(&config, &paths.auditor_cert(), &paths.auditor_key())?;
            crate::proto::v1::audit_client::AuditClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .get_report(crate::proto::v1::ReportRequest {
                    since_ms,
                    until_ms,
                    agreement_id: agreement.unwrap_or_default(),
                })
                .await
                .map_err(|s| err(format!("Audit.GetReport: {}", s.message())))?
                .into_inner()
        }
        Err(e) => return Err(err(e)),
    };
    match format {
        ReportFormat::Table => Ok(report::table(&r)),
        ReportFormat::Csv => Ok(report::csv(&r)),
        ReportFormat::Svg => report::svg(&r).map_err(err),
    }
}

/// A Gateway client for the node configured at `config_path`, using its back-office certificate.
pub async fn gateway_client(
    config_path: &Path,
) -> Result<GatewayClient<tonic::transport::Channel>, CliError> {
    let config = NodeConfig::load(config_path).map_err(err)?;
    gateway_client_for(&config)
}

/// A Gateway client for `config` (connects lazily).
pub fn gateway_client_for(
    config: &NodeConfig,
) -> Result<GatewayClient<tonic::transport::Channel>, CliError> {
    let paths = config.identity_paths();
    let channel = local_channel(config, &paths.gateway_cert(), &paths.gateway_key())?;
    let limits = &config.limits;
    Ok(GatewayClient::new(channel)
        .max_decoding_message_size(limits.max_message_bytes + 64 * 1024)
        .max_encoding_message_size(limits.max_message_bytes + 64 * 1024))
}

/// Where local tools reach this node's Gateway: `gateway_listen`, with an unspecified address
/// (`0.0.0.0`, `::`) replaced by loopback.
pub fn gateway_dial_addr(config: &NodeConfig) -> std::net::SocketAddr {
    let mut addr = config.gateway_listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// A channel to the Gateway listener of the node configured by `config`, presenting the client
/// certificate `cert`/`key` (gateway or auditor role) and trusting only the node's own CA.
pub fn local_channel(
    config: &NodeConfig,
    cert: &Path,
    key: &Path,
) -> Result<tonic::transport::Channel, CliError> {
    use crate::server::tls;
    let paths = config.identity_paths();
    let card = PartyCard::from_toml(
        &std::fs::read_to_string(paths.party_card())
            .map_err(|e| err(format!("{}: {e}", paths.party_card().display())))?,
    )
    .map_err(err)?;
    let (server_name, _) = tls::endpoint_parts(&config.admin, &card.endpoint).map_err(err)?;
    let ca = tls::load_certs(&paths.ca_cert()).map_err(err)?;
    let tls_config = tls::client_config(
        &[ca[0].to_vec()],
        tls::load_certs(cert).map_err(err)?,
        tls::load_key(key).map_err(err)?,
    )
    .map_err(err)?;
    let addr = gateway_dial_addr(config);
    let limits = &config.limits;
    crate::delivery::peers::tls_channel(
        &addr.to_string(),
        server_name,
        tls_config,
        std::time::Duration::from_secs(limits.connect_timeout_secs),
        std::time::Duration::from_secs(
            limits.connect_timeout_secs + limits.request_timeout_secs + 10,
        ),
    )
    .map_err(err)
}

/// The JSON file `send` reads.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendFile {
    /// Agreement id.
    pub agreement: String,
    /// Recipient administration.
    pub to: String,
    /// Fully qualified message type.
    #[serde(rename = "type")]
    pub message_type: String,
    /// The message in proto3 JSON.
    pub message: serde_json::Value,
    /// Message id this answers.
    #[serde(default)]
    pub in_reply_to: String,
    /// Caller-chosen message id (UUID) for idempotent retries.
    #[serde(default)]
    pub message_id: String,
    /// Envelope lifetime in seconds.
    #[serde(default)]
    pub ttl_seconds: u32,
    /// Reference to the data subject's consent, where the flow requires it.
    #[serde(default)]
    pub consent_reference: String,
}

/// Builds a `SendRequest` from the JSON in `text` (file name `path` for errors).
pub fn send_request_from_json(path: &Path, text: &str) -> Result<SendRequest, CliError> {
    let file: SendFile =
        serde_json::from_str(text).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let desc = crate::proto::descriptor_pool()
        .get_message_by_name(&file.message_type)
        .ok_or_else(|| {
            err(format!(
                "{}: unknown message type {:?}",
                path.display(),
                file.message_type
            ))
        })?;
    let message = prost_reflect::DynamicMessage::deserialize(desc, file.message)
        .map_err(|e| err(format!("{}: field message: {e}", path.display())))?;
    Ok(SendRequest {
        agreement_id: file.agreement,
        recipient: file.to,
        message_type: file.message_type,
        payload: prost::Message::encode_to_vec(&message),
        in_reply_to: file.in_reply_to,
        ttl_seconds: file.ttl_seconds,
        message_id: file.message_id,
        consent_reference: file.consent_reference,
        await_delivery: true,
    })
}

async fn send_file(config_path: &Path, file: &Path) -> Result<SendResponse, CliError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| err(format!("{}: {e}", file.display())))?;
    let request = send_request_from_json(file, &text)?;
    let config = NodeConfig::load(config_path).map_err(err)?;
    let limit = config.limits.max_message_bytes;
    if request.payload.len() > limit {
        return Err(err(format!(
            "{}: message is {} bytes encoded; the node accepts at most {limit} (limits.max_message_bytes)",
            file.display(),
            request.payload.len()
        )));
    }
    let mut client = gateway_client_for(&config)?;
    client
        .send(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| err(format!("send failed ({:?}): {}", s.code(), s.message())))
}

/// A readable JSON summary of a send's receipt.
pub fn receipt_json(response: &SendResponse) -> serde_json::Value {
    let body = response.receipt.as_ref().and_then(|r| {
        <crate::proto::v1::ReceiptBody as prost::Message>::decode(r.body.as_slice()).ok()
    });
    serde_json::json!({
        "message_id": response.message_id,
        "envelope_digest": hex::encode(&response.envelope_digest),
        "sent_ledger_index": response.sent_ledger_index,
        "receipt": body.map(|b| serde_json::json!({
            "recipient": b.recipient,
            "recipient_ledger_index": b.ledger_index,
            "recipient_ledger_size": b.ledger_size,
            "recipient_ledger_root": hex::encode(&b.ledger_root),
            "received_at_ms": b.received_at_ms,
        })),
    })
}

/// An inbox message as JSON, with its payload in proto3 JSON.
pub fn inbox_json(msg: &InboxMessage) -> serde_json::Value {
    let payload = crate::proto::descriptor_pool()
        .get_message_by_name(&msg.message_type)
        .and_then(|d| prost_reflect::DynamicMessage::decode(d, msg.payload.as_slice()).ok())
        .and_then(|m| serde_json::to_value(&m).ok())
        .unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "message_id": msg.message_id,
        "sender": msg.sender,
        "agreement": msg.agreement_id,
        "type": msg.message_type,
        "in_reply_to": msg.in_reply_to,
        "created_at_ms": msg.created_at_ms,
        "received_at_ms": msg.received_at_ms,
        "ledger_index": msg.ledger_index,
        "envelope_digest": hex::encode(&msg.envelope_digest),
        "message": payload,
    })
}

async fn inbox(config_path: &Path, follow: bool, ack: bool) -> Result<(), CliError> {
    let mut client = gateway_client(config_path).await?;
    let mut stream = client
        .inbox(InboxRequest {
            drain_only: !follow,
        })
        .await
        .map_err(|s| err(format!("inbox failed ({:?}): {}", s.code(), s.message())))?
        .into_inner();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(|s| err(format!("inbox failed ({:?}): {}", s.code(), s.message())))?
    {
        // Acknowledge only what was actually written out.
        emit(&inbox_json(&msg).to_string())?;
        if ack {
            client
                .ack(AckRequest {
                    message_ids: vec![format!("{}/{}", msg.sender, msg.message_id)],
                })
                .await
                .map_err(|s| err(format!("ack failed ({:?}): {}", s.code(), s.message())))?;
        }
    }
    Ok(())
}
