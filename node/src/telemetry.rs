//! Prometheus metrics: the exporter, every metric's name and help text, and label hygiene.
//!
//! Metrics carry counts, durations and labels — partner, agreement, message type, reason —
//! never payload data or key material. Labels a peer could choose freely (an agreement id or
//! message type in an envelope it made up) are replaced by `unknown` / `other` unless this node
//! knows them, so a hostile peer cannot grow the metric set without bound.
//!
//! The recorder is process-wide: [`install`] once per process (`serve` does, from
//! `[observability] metrics_listen`). Without it every call here is a cheap no-op.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::state::NodeState;

/// Errors starting the metrics listener.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be started (port in use, a recorder already installed).
    #[error("metrics listener {addr}: {detail}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// What went wrong.
        detail: String,
    },
}

/// Delivery latency buckets, seconds (a loopback delivery takes ~1 ms, a retried one minutes).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 3600.0,
];

/// How often the gauges (queue depths, ledger size, certificate expiry…) are refreshed.
pub const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// When the latest checkpoint was signed, Unix ms (0: not in this process).
static CHECKPOINT_SIGNED_AT_MS: AtomicI64 = AtomicI64::new(0);

/// When expiring certificates were last logged, Unix ms: once an hour is enough.
static CERT_WARNED_AT_MS: AtomicI64 = AtomicI64::new(0);

/// Starts the Prometheus exporter on `addr` (`GET /metrics`) and describes every metric.
/// Must run inside a tokio runtime; fails if the port is taken or a recorder is installed.
pub fn install(addr: SocketAddr) -> Result<(), TelemetryError> {
    let fail = |detail: String| TelemetryError::Listen { addr, detail };
    // Bind first: the exporter binds in a background task and would only log a taken port.
    std::net::TcpListener::bind(addr).map_err(|e| fail(e.to_string()))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            LATENCY_BUCKETS,
        )
        .map_err(|e| fail(e.to_string()))?
        .install()
        .map_err(|e| fail(e.to_string()))?;
    describe();
    Ok(())
}

/// The metric catalogue (also printed in the README's operations section).
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "dccf_messages_sent_total",
        "counter",
        "Messages delivered to a partner (its signed receipt verified), by partner, agreement and type.",
    ),
    (
        "dccf_messages_received_total",
        "counter",
        "Messages accepted from a partner, by partner, agreement and type.",
    ),
    (
        "dccf_messages_rejected_total",
        "counter",
        "Messages refused, by direction (inbound: refused from a partner; outbound: refused by a partner, dead-lettered or refused before sending), partner, agreement, type and reason.",
    ),
    (
        "dccf_delivery_latency_seconds",
        "histogram",
        "Time from entering the outbox to the partner's verified receipt, by partner.",
    ),
    (
        "dccf_outbox_depth",
        "gauge",
        "Messages waiting per partner and queue (queued, dead_letter).",
    ),
    (
        "dccf_ledger_entries",
        "gauge",
        "Durable ledger size (entries).",
    ),
    (
        "dccf_ledger_unsigned_entries",
        "gauge",
        "Ledger entries not yet covered by a signed checkpoint.",
    ),
    (
        "dccf_ledger_checkpoint_age_seconds",
        "gauge",
        "Seconds since this process last signed a checkpoint.",
    ),
    (
        "dccf_ledger_available",
        "gauge",
        "1 while the ledger accepts writes, 0 after a failed commit (the node then reports NOT_SERVING).",
    ),
    (
        "dccf_certificate_expiry_seconds",
        "gauge",
        "Seconds until a certificate expires (negative: expired), by certificate (node, ca, gateway, auditor).",
    ),
    (
        "dccf_certificate_expiring",
        "gauge",
        "1 if a certificate expires within [observability] cert_warning_days.",
    ),
    (
        "dccf_witness_alarms_total",
        "counter",
        "Witness alarms raised (a partner's checkpoint inconsistent with an earlier one), by partner.",
    ),
    (
        "dccf_witness_alarms_open",
        "gauge",
        "Witness alarms not yet resolved.",
    ),
    (
        "dccf_requests_shed_total",
        "counter",
        "Requests answered at once because a limit was reached, by listener and scope (peer, node; refusals: envelopes of a partner over its refusal budget).",
    ),
    (
        "dccf_connections_refused_total",
        "counter",
        "Connections closed after the handshake because the peer held too many, by listener.",
    ),
    (
        "dccf_aeo_mirror_lookups_total",
        "counter",
        "AEO lookups answered from a partner's mirror, by partner.",
    ),
];

fn describe() {
    for (name, kind, help) in METRICS {
        match *kind {
            "counter" => describe_counter!(*name, *help),
            "gauge" => describe_gauge!(*name, *help),
            _ => describe_histogram!(*name, metrics::Unit::Seconds, *help),
        }
    }
}

/// The agreement label: the id if this node knows the agreement, else `unknown`.
pub fn agreement_label(state: &NodeState, id: &str) -> String {
    if !id.is_empty() && state.agreements().knows(id) {
        id.to_owned()
    } else {
        "unknown".to_owned()
    }
}

/// The message type label: a standard customs message type, else `other`.
pub fn type_label(message_type: &str) -> &'static str {
    crate::proto::MESSAGE_TYPES
        .iter()
        .find(|t| **t == message_type)
        .copied()
        .unwrap_or("other")
}

/// A message this node sent was delivered `latency` after it entered the outbox.
pub fn message_sent(partner: &str, agreement: &str, message_type: &str, latency: Option<Duration>) {
    counter!("dccf_messages_sent_total", "partner" => partner.to_owned(),
        "agreement" => agreement.to_owned(), "type" => type_label(message_type))
    .increment(1);
    if let Some(latency) = latency {
        histogram!("dccf_delivery_latency_seconds", "partner" => partner.to_owned())
            .record(latency.as_secs_f64());
    }
}

/// A partner's message was accepted. `agreement` must be known (it passed the checks).
pub fn message_received(partner: &str, agreement: &str, message_type: &str) {
    counter!("dccf_messages_received_total", "partner" => partner.to_owned(),
        "agreement" => agreement.to_owned(), "type" => type_label(message_type))
    .increment(1);
}

/// Which way a refused message was going.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// A partner's message, refused by this node.
    Inbound,
    /// This node's message, refused by the partner, dead-lettered, or refused before sending.
    Outbound,
}

/// A message was refused for `reason` (a `RejectReason` name or a short word).
pub fn message_rejected(
    state: &NodeState,
    direction: Direction,
    partner: &str,
    agreement: &str,
    message_type: &str,
    reason: &str,
) {
    let direction = match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    };
    counter!("dccf_messages_rejected_total", "direction" => direction,
        "partner" => partner.to_owned(), "agreement" => agreement_label(state, agreement),
        "type" => type_label(message_type), "reason" => reason.to_owned())
    .increment(1);
}

/// A message this node queued was dead-lettered (refused by the partner, expired, or out of
/// attempts). Its labels come from the own outbox: no sanitising needed.
pub fn message_rejected_outbound(partner: &str, agreement: &str, message_type: &str, reason: &str) {
    counter!("dccf_messages_rejected_total", "direction" => "outbound",
        "partner" => partner.to_owned(), "agreement" => agreement.to_owned(),
        "type" => type_label(message_type), "reason" => reason.to_owned())
    .increment(1);
}

/// A request was answered at once because the `scope` limit (`peer` or `node`) was reached.
pub fn request_shed(listener: &'static str, scope: &'static str) {
    counter!("dccf_requests_shed_total", "listener" => listener, "scope" => scope).increment(1);
}

/// A connection was closed because its peer held too many.
pub fn connection_refused(listener: &'static str) {
    counter!("dccf_connections_refused_total", "listener" => listener).increment(1);
}

/// A checkpoint was just signed.
pub fn checkpoint_signed() {
    CHECKPOINT_SIGNED_AT_MS.store(crate::envelope::now_ms(), Ordering::Relaxed);
}

/// When each of the node's certificates expires: `(name, not after)` for node, ca, gateway and
/// auditor; unreadable certificates are left out (`doctor` names them).
pub fn certificate_expiry(
    paths: &crate::identity::IdentityPaths,
) -> Vec<(&'static str, time::OffsetDateTime)> {
    [
        ("node", paths.node_cert()),
        ("ca", paths.ca_cert()),
        ("gateway", paths.gateway_cert()),
        ("auditor", paths.auditor_cert()),
    ]
    .into_iter()
    .filter_map(|(name, path)| {
        let certs = crate::server::tls::load_certs(&path).ok()?;
        let not_after = crate::identity::pki::cert_not_after(certs.first()?).ok()?;
        Some((name, not_after))
    })
    .collect()
}

/// Refreshes every gauge from the node's state; logs expiring certificates (at most hourly).
pub fn refresh_gauges(state: &Arc<NodeState>) {
    let head = state.store.durable_head();
    gauge!("dccf_ledger_entries").set(head.size as f64);
    let signed = state.checkpoints.latest().map_or(0, |p| p.size);
    gauge!("dccf_ledger_unsigned_entries").set(head.size.saturating_sub(signed) as f64);
    let at = CHECKPOINT_SIGNED_AT_MS.load(Ordering::Relaxed);
    if at > 0 {
        gauge!("dccf_ledger_checkpoint_age_seconds")
            .set((crate::envelope::now_ms() - at) as f64 / 1000.0);
    }
    gauge!("dccf_ledger_available").set(if state.store.failure().is_none() {
        1.0
    } else {
        0.0
    });
    for (partner, n) in state.courier.queue_depths() {
        gauge!("dccf_outbox_depth", "partner" => partner, "queue" => "queued").set(n as f64);
    }
    if let Ok(dead) =
        crate::delivery::outbox::counts(&state.store, crate::delivery::outbox::Queue::Dead)
    {
        for (partner, n) in dead {
            gauge!("dccf_outbox_depth", "partner" => partner, "queue" => "dead_letter")
                .set(n as f64);
        }
    }
    if let Ok(alarms) = crate::witness::alarms(&state.store) {
        gauge!("dccf_witness_alarms_open").set(alarms.len() as f64);
    }
    let warn_secs = state.config.observability.cert_warning_days as i64 * 86_400;
    let now = crate::envelope::now_ms();
    let log = now - CERT_WARNED_AT_MS.load(Ordering::Relaxed) >= 3_600_000;
    let mut logged = false;
    let now_utc = time::OffsetDateTime::now_utc();
    for (name, not_after) in certificate_expiry(&state.config.identity_paths()) {
        let secs = (not_after - now_utc).whole_seconds();
        gauge!("dccf_certificate_expiry_seconds", "certificate" => name).set(secs as f64);
        let expiring = secs < warn_secs;
        gauge!("dccf_certificate_expiring", "certificate" => name)
            .set(f64::from(u8::from(expiring)));
        if expiring && log {
            logged = true;
            tracing::warn!(
                certificate = name,
                days_left = secs / 86_400,
                "certificate expires soon: run `dccf-node cert rotate` (see `dccf-node doctor`)"
            );
        }
    }
    if logged {
        CERT_WARNED_AT_MS.store(now, Ordering::Relaxed);
    }
}
