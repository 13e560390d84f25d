//! Node configuration: one TOML file (`node.toml`), every field documented.
//!
//! Relative paths in the file are resolved against the directory that holds the file, so a node's
//! data directory can be moved or backed up as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::IdentityPaths;

/// Errors loading or validating a configuration file. Each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: cannot read: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("config {path}: {detail}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message (names the field, line and column).
        detail: String,
    },
    /// A field has a value that is not allowed.
    #[error("config {path}: field {field}: {detail}")]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
}

/// The contents of `node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This administration's id (ISO 3166 alpha-2, optionally `-SUFFIX`), e.g. `NL`.
    pub admin: String,
    /// Directory holding keys (`keys/`), TLS material (`tls/`), the party card and the ledger.
    pub data_dir: PathBuf,
    /// Address the `Exchange` service (partner nodes, mutual TLS) listens on.
    pub listen: SocketAddr,
    /// Address the `Gateway` service (own back office, mutual TLS) listens on.
    pub gateway_listen: SocketAddr,
    /// Directory of agreement files (`*.toml`) and their detached signatures (`*.<ADMIN>.sig`).
    pub agreements_dir: PathBuf,
    /// Limits and timeouts; every field has a safe default.
    #[serde(default)]
    pub limits: Limits,
    /// Ledger checkpoints and witnessing; every field has a default.
    #[serde(default)]
    pub ledger: LedgerSettings,
    /// Outbox, retries and bulk mode; every field has a default.
    #[serde(default)]
    pub delivery: DeliverySettings,
    /// AEO registry, partner mirrors and lookups; every field has a default.
    #[serde(default)]
    pub aeo: AeoSettings,
    /// Logs, metrics and expiry warnings; every field has a default.
    #[serde(default)]
    pub observability: ObservabilitySettings,
}

/// How the node reports on itself: log format, Prometheus metrics, expiry warnings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilitySettings {
    /// Address of the Prometheus metrics listener (plain HTTP, `GET /metrics`), e.g.
    /// `"127.0.0.1:9464"`. Unset: no metrics listener. Metrics carry counts and labels
    /// (partner, agreement, message type, reason), never payload data; keep the listener on a
    /// management network all the same.
    pub metrics_listen: Option<SocketAddr>,
    /// Log line format on stderr: `"text"` (readable) or `"json"` (one JSON object per line, for
    /// log shippers). The environment variable `DCCF_LOG_FORMAT` overrides it; `DCCF_LOG` sets
    /// the level (default `info`).
    pub log_format: LogFormat,
    /// Certificates expiring within this many days raise a warning (log, metric
    /// `dccf_certificate_expiring`, `doctor`).
    pub cert_warning_days: u64,
}

impl Default for ObservabilitySettings {
    fn default() -> Self {
        ObservabilitySettings {
            metrics_listen: None,
            log_format: LogFormat::Text,
            cert_warning_days: 30,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// AEO mutual recognition: the registry database, mirror feeds and lookups.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AeoSettings {
    /// Page cache of the AEO database (`aeo.redb`), MiB.
    pub cache_mib: u64,
    /// A mirror feed sends a signed heartbeat after this many idle seconds; a mirror that hears
    /// nothing for three heartbeats (plus 10 s) reconnects.
    pub heartbeat_secs: u64,
    /// Records per signed snapshot part (the inclusion path of each record is log2 of this).
    pub snapshot_part: usize,
    /// Most changed operators sent as one delta; a mirror further behind gets a snapshot.
    pub max_delta: usize,
    /// Most queries in one online lookup (`Exchange.LookupAeo`).
    pub max_lookup_batch: usize,
    /// Largest registry file `ImportAeoRegistry` accepts, MiB.
    pub max_import_mib: u64,
    /// First reconnect delay of a mirror feed, milliseconds (doubles up to 30 s).
    pub reconnect_initial_ms: u64,
    /// Most operators a partner's mirror may hold; a larger snapshot or delta is refused.
    pub max_mirror_records: u64,
}

impl Default for AeoSettings {
    fn default() -> Self {
        AeoSettings {
            cache_mib: 64,
            heartbeat_secs: 5,
            snapshot_part: 64,
            max_delta: 4096,
            max_lookup_batch: 1000,
            max_import_mib: 512,
            reconnect_initial_ms: 500,
            max_mirror_records: 20_000_000,
        }
    }
}

/// How the outbox delivers to partners: retries, dead letters, bounds and bulk mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySettings {
    /// Delivery attempts per message before it goes to the dead-letter queue.
    pub max_attempts: u32,
    /// Age after which an undelivered message goes to the dead-letter queue, seconds (messages
    /// also go there once their envelope expires).
    pub max_age_secs: u64,
    /// First retry delay after a failed attempt, milliseconds; doubles per attempt (with jitter).
    pub backoff_initial_ms: u64,
    /// Longest retry delay, milliseconds.
    pub backoff_max_ms: u64,
    /// Messages waiting per partner before `Send` answers RESOURCE_EXHAUSTED.
    pub max_outbox_per_partner: u64,
    /// Envelopes in flight per partner stream (sent, not yet answered).
    pub window: usize,
    /// Envelopes per signed batch on `SendStream` (bulk mode).
    pub batch_size: usize,
    /// Bulk-mode envelopes sealed under one HPKE epoch before a new one starts.
    pub epoch_max_messages: u64,
    /// Age after which a new HPKE epoch starts, seconds.
    pub epoch_max_age_secs: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            max_attempts: 50,
            max_age_secs: 24 * 3600,
            backoff_initial_ms: 250,
            backoff_max_ms: 60_000,
            max_outbox_per_partner: 100_000,
            window: 1024,
            batch_size: 256,
            epoch_max_messages: 100_000,
            epoch_max_age_secs: 3600,
        }
    }
}

/// How the node publishes signed checkpoints of its ledger and witnesses its partners' ledgers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSettings {
    /// Checkpoint origin (C2SP `tlog-checkpoint` first line, also the note signer and cosigner
    /// name). Must end with `/<admin>`, so partners and auditors can tell whose log it is.
    /// Default: `dccf.example/<admin>`.
    pub origin: Option<String>,
    /// How often a new checkpoint is signed when the ledger has grown, milliseconds.
    pub checkpoint_interval_ms: u64,
    /// How often each partner's latest checkpoint is fetched, checked for consistency with the
    /// last one seen and cosigned, milliseconds.
    pub witness_interval_ms: u64,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            origin: None,
            checkpoint_interval_ms: 10_000,
            witness_interval_ms: 30_000,
        }
    }
}

/// Bounds that protect the node from slow, large or stale input.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted message (envelope or Gateway request) in bytes; larger ones get
    /// `RESOURCE_EXHAUSTED`. Default 4 MiB.
    pub max_message_bytes: usize,
    /// Largest accepted difference between a sender's `created_at` and this node's clock, seconds.
    pub max_clock_skew_secs: u64,
    /// Longest envelope lifetime (`expires_at - created_at`) accepted, seconds.
    pub max_envelope_ttl_secs: u64,
    /// Lifetime given to outgoing envelopes when the back office does not choose one, seconds.
    pub default_ttl_secs: u64,
    /// Time allowed for a TLS handshake from a connecting client, seconds.
    pub handshake_timeout_secs: u64,
    /// Time allowed for connecting to a partner node, seconds.
    pub connect_timeout_secs: u64,
    /// Time allowed for one call to a partner node (e.g. `Deliver`), seconds.
    pub request_timeout_secs: u64,
    /// Concurrent gRPC requests served per connection.
    pub max_concurrent_streams: u32,
    /// Simultaneous TLS handshakes in progress per listener.
    pub max_pending_handshakes: usize,
    /// Established connections one peer (administration and role of its client certificate)
    /// may hold per listener; further connections are closed right after the handshake.
    pub max_connections_per_peer: usize,
    /// Requests (and open streams) one peer may have in progress per listener; more are
    /// answered `RESOURCE_EXHAUSTED` at once (load shedding), never queued.
    pub max_requests_per_peer: usize,
    /// Requests in progress per listener over all peers; more are answered `UNAVAILABLE`
    /// ("overloaded, retry") at once instead of waiting in an unbounded queue.
    pub max_requests_in_flight: usize,
    /// Envelopes one partner may have refused (each one a ledger entry) per minute. Beyond
    /// that its envelopes are not judged until the minute is over: they are answered "retry
    /// later" (`UNAVAILABLE`), not ledgered, and its outbox retries them. Bounds how fast a
    /// hostile or broken partner can grow the ledger.
    pub max_refusals_per_peer_per_minute: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 * 1024 * 1024,
            max_clock_skew_secs: 300,
            max_envelope_ttl_secs: 7 * 24 * 3600,
            default_ttl_secs: 24 * 3600,
            handshake_timeout_secs: 10,
            connect_timeout_secs: 10,
            request_timeout_secs: 30,
            max_concurrent_streams: 128,
            max_pending_handshakes: 256,
            max_connections_per_peer: 64,
            max_requests_per_peer: 512,
            max_requests_in_flight: 4096,
            max_refusals_per_peer_per_minute: 6000,
        }
    }
}

impl NodeConfig {
    /// Reads, parses and validates `path`; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            detail: one_line(&e.to_string()),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = resolve(base, &config.data_dir);
        config.agreements_dir = resolve(base, &config.agreements_dir);
        config.validate(path)?;
        Ok(config)
    }

    /// Checks field values that the schema alone cannot.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, detail: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            detail,
        };
        crate::identity::card::validate_admin_id(&self.admin)
            .map_err(|e| invalid("admin", e.to_string()))?;
        if self.listen == self.gateway_listen {
            return Err(invalid(
                "gateway_listen",
                format!("must differ from listen ({})", self.listen),
            ));
        }
        let l = &self.limits;
        if l.max_message_bytes < 1024 || l.max_message_bytes > 64 * 1024 * 1024 {
            return Err(invalid(
                "limits.max_message_bytes",
                format!("{} is outside 1024..=67108864", l.max_message_bytes),
            ));
        }
        for (field, v) in [
            ("limits.max_clock_skew_secs", l.max_clock_skew_secs),
            ("limits.max_envelope_ttl_secs", l.max_envelope_ttl_secs),
            ("limits.default_ttl_secs", l.default_ttl_secs),
            ("limits.handshake_timeout_secs", l.handshake_timeout_secs),
            ("limits.connect_timeout_secs", l.connect_timeout_secs),
            ("limits.request_timeout_secs", l.request_timeout_secs),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0".into()));
            }
        }
        if l.default_ttl_secs > l.max_envelope_ttl_secs {
            return Err(invalid(
                "limits.default_ttl_secs",
                "must not exceed limits.max_envelope_ttl_secs".into(),
            ));
        }
        if l.max_concurrent_streams == 0
            || l.max_pending_handshakes == 0
            || l.max_connections_per_peer == 0
            || l.max_requests_per_peer == 0
            || l.max_requests_in_flight == 0
            || l.max_refusals_per_peer_per_minute == 0
        {
            return Err(invalid(
                "limits",
                "concurrency limits must be greater than 0".into(),
            ));
        }
        let origin = self.origin();
        let suffix = format!("/{}", self.admin);
        if !origin.ends_with(&suffix)
            || origin.len() == suffix.len()
            || origin.contains('+')
            || origin.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid(
                "ledger.origin",
                format!(
                    "{origin:?} must be a schema-less name ending in {suffix:?}, without spaces \
                     or '+' (e.g. \"dccf.example{suffix}\")"
                ),
            ));
        }
        if !(1..=3650).contains(&self.observability.cert_warning_days) {
            return Err(invalid(
                "observability.cert_warning_days",
                format!(
                    "{} is outside 1..=3650",
                    self.observability.cert_warning_days
                ),
            ));
        }
        if let Some(m) = self.observability.metrics_listen
            && (m == self.listen || m == self.gateway_listen)
        {
            return Err(invalid(
                "observability.metrics_listen",
                format!("{m} is already the Exchange or Gateway address"),
            ));
        }
        for (field, v) in [
            (
                "ledger.checkpoint_interval_ms",
                self.ledger.checkpoint_interval_ms,
            ),
            (
                "ledger.witness_interval_ms",
                self.ledger.witness_interval_ms,
            ),
        ] {
            if !(50..=86_400_000).contains(&v) {
                return Err(invalid(field, format!("{v} is outside 50..=86400000")));
            }
        }
        let d = &self.delivery;
        for (field, v, range) in [
            (
                "delivery.max_attempts",
                u64::from(d.max_attempts),
                1..=1_000_000,
            ),
            ("delivery.max_age_secs", d.max_age_secs, 1..=365 * 86_400),
            (
                "delivery.backoff_initial_ms",
                d.backoff_initial_ms,
                1..=3_600_000,
            ),
            ("delivery.backoff_max_ms", d.backoff_max_ms, 1..=86_400_000),
            (
                "delivery.max_outbox_per_partner",
                d.max_outbox_per_partner,
                1..=100_000_000,
            ),
            ("delivery.window", d.window as u64, 1..=65_536),
            ("delivery.batch_size", d.batch_size as u64, 1..=4096),
            (
                "delivery.epoch_max_messages",
                d.epoch_max_messages,
                1..=u64::from(u32::MAX),
            ),
            (
                "delivery.epoch_max_age_secs",
                d.epoch_max_age_secs,
                1..=7 * 86_400,
            ),
            ("aeo.cache_mib", self.aeo.cache_mib, 1..=65_536),
            ("aeo.heartbeat_secs", self.aeo.heartbeat_secs, 1..=3600),
            ("aeo.snapshot_part", self.aeo.snapshot_part as u64, 1..=4096),
            ("aeo.max_delta", self.aeo.max_delta as u64, 1..=1_000_000),
            (
                "aeo.max_lookup_batch",
                self.aeo.max_lookup_batch as u64,
                1..=100_000,
            ),
            ("aeo.max_import_mib", self.aeo.max_import_mib, 1..=65_536),
            (
                "aeo.reconnect_initial_ms",
                self.aeo.reconnect_initial_ms,
                1..=60_000,
            ),
            (
                "aeo.max_mirror_records",
                self.aeo.max_mirror_records,
                1..=1_000_000_000,
            ),
        ] {
            if !range.contains(&v) {
                return Err(invalid(
                    field,
                    format!("{v} is outside {}..={}", range.start(), range.end()),
                ));
            }
        }
        if d.backoff_max_ms < d.backoff_initial_ms {
            return Err(invalid(
                "delivery.backoff_max_ms",
                "must not be less than delivery.backoff_initial_ms".into(),
            ));
        }
        Ok(())
    }

    /// The ledger's checkpoint origin (see [`LedgerSettings::origin`]).
    pub fn origin(&self) -> String {
        self.ledger
            .origin
            .clone()
            .unwrap_or_else(|| format!("dccf.example/{}", self.admin))
    }

    /// Paths of this node's identity files.
    pub fn identity_paths(&self) -> IdentityPaths {
        IdentityPaths {
            dir: self.data_dir.clone(),
        }
    }

    /// Directory of the sled database holding the ledger, inbox and dedupe records.
    pub fn ledger_dir(&self) -> PathBuf {
        self.data_dir.join("ledger")
    }

    /// The AEO registry and mirror database.
    pub fn aeo_db(&self) -> PathBuf {
        self.data_dir.join("aeo.redb")
    }

    /// Renders a commented `node.toml` for this configuration (paths as given).
    pub fn to_commented_toml(&self) -> String {
        let l = &self.limits;
        format!(
            r#"# DCCF node configuration. Relative paths are resolved against this file's directory.

# This administration's id (ISO 3166 alpha-2, optionally -SUFFIX).
admin = "{admin}"
# Keys (keys/), TLS material (tls/), party card (party.toml) and ledger (ledger/).
data_dir = "{data_dir}"
# Exchange service: partner nodes connect here with mutual TLS.
listen = "{listen}"
# Gateway service: your own back office connects here with its client certificate.
gateway_listen = "{gateway_listen}"
# Agreement files (*.toml) with their parties' detached signatures (*.<ADMIN>.sig).
agreements_dir = "{agreements_dir}"

[limits]
# Largest accepted message in bytes; larger ones are refused with RESOURCE_EXHAUSTED.
max_message_bytes = {max_message_bytes}
# Largest accepted clock difference with a sender, seconds.
max_clock_skew_secs = {max_clock_skew_secs}
# Longest envelope lifetime accepted, seconds.
max_envelope_ttl_secs = {max_envelope_ttl_secs}
# Lifetime of outgoing envelopes unless the back office chooses one, seconds.
default_ttl_secs = {default_ttl_secs}
# Time allowed for a client's TLS handshake, seconds.
handshake_timeout_secs = {handshake_timeout_secs}
# Time allowed to connect to a partner, seconds.
connect_timeout_secs = {connect_timeout_secs}
# Time allowed for one call to a partner, seconds.
request_timeout_secs = {request_timeout_secs}
# Concurrent requests per connection.
max_concurrent_streams = {max_concurrent_streams}
# Simultaneous TLS handshakes in progress per listener.
max_pending_handshakes = {max_pending_handshakes}
# Connections one peer (certificate administration and role) may hold per listener.
max_connections_per_peer = {max_connections_per_peer}
# Requests and open streams one peer may have in progress; more get RESOURCE_EXHAUSTED at once.
max_requests_per_peer = {max_requests_per_peer}
# Requests in progress per listener over all peers; more get UNAVAILABLE at once (load shedding).
max_requests_in_flight = {max_requests_in_flight}
# Envelopes one partner may have refused (each a ledger entry) per minute; beyond that its
# envelopes wait ("retry later", not ledgered) until the minute is over.
max_refusals_per_peer_per_minute = {max_refusals_per_peer_per_minute}

[ledger]
# Checkpoint origin: names this ledger in signed checkpoints; must end with "/{admin}".
origin = "{origin}"
# Sign a new checkpoint this often when the ledger has grown, milliseconds.
checkpoint_interval_ms = {checkpoint_interval_ms}
# Fetch, check and cosign each partner's checkpoint this often, milliseconds.
witness_interval_ms = {witness_interval_ms}

[delivery]
# Delivery attempts per message before it goes to the dead-letter queue.
max_attempts = {max_attempts}
# Age after which an undelivered message goes to the dead-letter queue, seconds.
max_age_secs = {max_age_secs}
# First retry delay after a failed attempt, milliseconds (doubles per attempt, with jitter).
backoff_initial_ms = {backoff_initial_ms}
# Longest retry delay, milliseconds.
backoff_max_ms = {backoff_max_ms}
# Messages waiting per partner before Send answers RESOURCE_EXHAUSTED.
max_outbox_per_partner = {max_outbox_per_partner}
# Envelopes in flight per partner stream.
window = {window}
# Envelopes per signed batch on SendStream (bulk mode).
batch_size = {batch_size}
# Bulk-mode envelopes per HPKE epoch.
epoch_max_messages = {epoch_max_messages}
# Age after which a new HPKE epoch starts, seconds.
epoch_max_age_secs = {epoch_max_age_secs}

[aeo]
# Page cache of the AEO registry and mirror database (aeo.redb), MiB.
cache_mib = {aeo_cache_mib}
# Idle mirror feeds send a signed heartbeat this often, seconds.
heartbeat_secs = {aeo_heartbeat_secs}
# Records per signed snapshot part.
snapshot_part = {aeo_snapshot_part}
# Most changed operators per delta; a mirror further behind gets a full snapshot.
max_delta = {aeo_max_delta}
# Most queries per online lookup.
max_lookup_batch = {aeo_max_lookup_batch}
# Largest registry file accepted by an import, MiB.
max_import_mib = {aeo_max_import_mib}
# First reconnect delay of a mirror feed, milliseconds (doubles up to 30 s).
reconnect_initial_ms = {aeo_reconnect_initial_ms}
# Most operators a partner's mirror may hold; larger snapshots and deltas are refused.
max_mirror_records = {aeo_max_mirror_records}

[observability]
# Prometheus metrics listener (plain HTTP, GET /metrics); keep it on a management network.
{metrics_listen}
# Log format on stderr: "text" or "json" (DCCF_LOG_FORMAT overrides; DCCF_LOG sets the level).
log_format = "{log_format}"
# Warn this many days before a certificate expires (log, metric, doctor).
cert_warning_days = {cert_warning_days}
"#,
            metrics_listen = match self.observability.metrics_listen {
                Some(a) => format!("metrics_listen = \"{a}\""),
                None => "# metrics_listen = \"127.0.0.1:9464\"".to_owned(),
            },
            log_format = match self.observability.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
            cert_warning_days = self.observability.cert_warning_days,
            max_connections_per_peer = l.max_connections_per_peer,
            max_requests_per_peer = l.max_requests_per_peer,
            max_requests_in_flight = l.max_requests_in_flight,
            max_refusals_per_peer_per_minute = l.max_refusals_per_peer_per_minute,
            aeo_max_mirror_records = self.aeo.max_mirror_records,
            aeo_cache_mib = self.aeo.cache_mib,
            aeo_heartbeat_secs = self.aeo.heartbeat_secs,
            aeo_snapshot_part = self.aeo.snapshot_part,
            aeo_max_delta = self.aeo.max_delta,
            aeo_max_lookup_batch = self.aeo.max_lookup_batch,
            aeo_max_import_mib = self.aeo.max_import_mib,
            aeo_reconnect_initial_ms = self.aeo.reconnect_initial_ms,
            max_attempts = self.delivery.max_attempts,
            max_age_secs = self.delivery.max_age_secs,
            backoff_initial_ms = self.delivery.backoff_initial_ms,
            backoff_max_ms = self.delivery.backoff_max_ms,
            max_outbox_per_partner = self.delivery.max_outbox_per_partner,
            window = self.delivery.window,
            batch_size = self.delivery.batch_size,
            epoch_max_messages = self.delivery.epoch_max_messages,
            epoch_max_age_secs = self.delivery.epoch_max_age_secs,
            origin = self.origin(),
            checkpoint_interval_ms = self.ledger.checkpoint_interval_ms,
            witness_interval_ms = self.ledger.witness_interval_ms,
            admin = self.admin,
            data_dir = self.data_dir.display(),
            listen = self.listen,
            gateway_listen = self.gateway_listen,
            agreements_dir = self.agreements_dir.display(),
            max_message_bytes = l.max_message_bytes,
            max_clock_skew_secs = l.max_clock_skew_secs,
            max_envelope_ttl_secs = l.max_envelope_ttl_secs,
            default_ttl_secs = l.default_ttl_secs,
            handshake_timeout_secs = l.handshake_timeout_secs,
            connect_timeout_secs = l.connect_timeout_secs,
            request_timeout_secs = l.request_timeout_secs,
            max_concurrent_streams = l.max_concurrent_streams,
            max_pending_handshakes = l.max_pending_handshakes,
        )
    }
}

/// `path` relative to `base` (absolute paths stay), without `.` components.
fn resolve(base: &Path, path: &Path) -> PathBuf {
    base.join(path)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// Collapses a multi-line parser message into one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeConfig {
        NodeConfig {
            admin: "NL".into(),
            data_dir: ".".into(),
            listen: "127.0.0.1:7001".parse().unwrap(),
            gateway_listen: "127.0.0.1:7101".parse().unwrap(),
            agreements_dir: "agreements".into(),
            limits: Limits::default(),
            ledger: LedgerSettings::default(),
            delivery: DeliverySettings::default(),
            aeo: AeoSettings::default(),
            observability: ObservabilitySettings::default(),
        }
    }

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn commented_toml_round_trips_and_resolves_relative_paths() {
        let (dir, path) = write(&sample().to_commented_toml());
        let loaded = NodeConfig::load(&path).unwrap();
        assert_eq!(loaded.admin, "NL");
        assert_eq!(loaded.data_dir, dir.path());
        assert_eq!(loaded.agreements_dir, dir.path().join("agreements"));
        assert_eq!(loaded.limits, Limits::default());
        assert_eq!(loaded.delivery, DeliverySettings::default());
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = NodeConfig::load(Path::new("/nonexistent/node.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/node.toml"), "{err}");
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let text = sample().to_commented_toml().replace("admin =", "admn =");
        let (_d, path) = write(&text);
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("admn"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            ("admin = \"NL\"", "admin = \"nl\"", "admin"),
            (
                "max_message_bytes = 4194304",
                "max_message_bytes = 10",
                "max_message_bytes",
            ),
            (
                "max_clock_skew_secs = 300",
                "max_clock_skew_secs = 0",
                "max_clock_skew_secs",
            ),
            (
                "gateway_listen = \"127.0.0.1:7101\"",
                "gateway_listen = \"127.0.0.1:7001\"",
                "gateway_listen",
            ),
            (
                "listen = \"127.0.0.1:7001\"",
                "listen = \"not an address\"",
                "listen",
            ),
            (
                "max_attempts = 50",
                "max_attempts = 0",
                "delivery.max_attempts",
            ),
            ("window = 1024", "window = 0", "delivery.window"),
            (
                "batch_size = 256",
                "batch_size = 5000",
                "delivery.batch_size",
            ),
            (
                "backoff_max_ms = 60000",
                "backoff_max_ms = 100",
                "delivery.backoff_max_ms",
            ),
            (
                "max_outbox_per_partner = 100000",
                "max_outbox_per_partner = 0",
                "delivery.max_outbox_per_partner",
            ),
            (
                "origin = \"dccf.example/NL\"",
                "origin = \"dccf.example/BR\"",
                "ledger.origin",
            ),
            (
                "checkpoint_interval_ms = 10000",
                "checkpoint_interval_ms = 0",
                "ledger.checkpoint_interval_ms",
            ),
        ];
        for (from, to, field) in cases {
            let text = sample().to_commented_toml().replace(from, to);
            assert_ne!(
                text,
                sample().to_commented_toml(),
                "case {from} did not apply"
            );
            let (_d, path) = write(&text);
            let err = NodeConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }
}
