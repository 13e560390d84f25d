//! `dccf-node status`: a one-screen summary of a running node, gathered over its Gateway
//! (health, outbox, AEO mirrors) and Audit (ledger, witnessing) services with the local
//! back-office and auditor certificates, plus the agreement files and certificates on disk.

use std::time::Duration;

use crate::config::NodeConfig;
use crate::proto::v1::audit_client::AuditClient;
use crate::proto::v1::{LedgerStatusRequest, ListAeoMirrorsRequest, ListOutboxRequest};

/// Errors gathering the status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The node does not answer (not running, or another address).
    #[error(
        "node {admin} is not running: nothing answers on {addr} ({detail}); start it with `dccf-node serve --config <node.toml>`, or run `dccf-node doctor`"
    )]
    NotRunning {
        /// The administration.
        admin: String,
        /// The Gateway address.
        addr: std::net::SocketAddr,
        /// What failed.
        detail: String,
    },
    /// A call failed.
    #[error("{call}: {detail}")]
    Call {
        /// The RPC.
        call: &'static str,
        /// What failed.
        detail: String,
    },
}

fn call(call: &'static str) -> impl Fn(tonic::Status) -> StatusError {
    move |s| StatusError::Call {
        call,
        detail: s.message().to_owned(),
    }
}

/// Gathers and renders the status of the node configured by `config`.
pub async fn status(config: &NodeConfig) -> Result<String, StatusError> {
    let paths = config.identity_paths();
    let not_running = |detail: String| StatusError::NotRunning {
        admin: config.admin.clone(),
        addr: config.gateway_listen,
        detail,
    };
    let channel = crate::cli::local_channel(config, &paths.gateway_cert(), &paths.gateway_key())
        .map_err(|e| not_running(e.to_string()))?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = tokio::time::timeout(
        Duration::from_secs(5),
        health.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .map_err(|_| not_running("no answer within 5 s".into()))?
    .map_err(|s| not_running(crate::delivery::courier::status_text(&s)))?
    .into_inner()
    .status
        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    let mut gateway = crate::proto::v1::gateway_client::GatewayClient::new(channel);
    let outbox = gateway
        .list_outbox(ListOutboxRequest {
            partner: String::new(),
            dead_letter_only: false,
            limit: 1,
        })
        .await
        .map_err(call("Gateway.ListOutbox"))?
        .into_inner();
    let aeo = gateway
        .list_aeo_mirrors(ListAeoMirrorsRequest::default())
        .await
        .map_err(call("Gateway.ListAeoMirrors"))?
        .into_inner();
    let ledger =
        match crate::cli::local_channel(config, &paths.auditor_cert(), &paths.auditor_key()) {
            Ok(ch) => AuditClient::new(ch)
                .max_decoding_message_size(64 * 1024 * 1024)
                .get_status(LedgerStatusRequest::default())
                .await
                .ok()
                .map(|r| r.into_inner()),
            Err(_) => None,
        };

    let now = crate::envelope::now_ms();
    let mut lines = vec![format!(
        "{}  dccf-node {}  {}  exchange {}  gateway {}",
        config.admin,
        env!("CARGO_PKG_VERSION"),
        if serving {
            "SERVING"
        } else {
            "NOT SERVING (ledger unavailable: see the log)"
        },
        config.listen,
        config.gateway_listen
    )];
    let agreements = match crate::agreement::AgreementSet::load_dir(&config.agreements_dir) {
        Ok(set) => {
            let mut ids: Vec<&str> = set.all().map(|a| a.id()).collect();
            ids.dedup();
            ids.iter()
                .map(|id| match set.active(id, now) {
                    Ok(a) => format!("{id} v{} in force", a.doc.version),
                    Err(e) => format!("{id}: {e}"),
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        Err(e) => e.to_string(),
    };
    lines.push(format!("agreements    {agreements}"));
    match &ledger {
        Some(l) => {
            let checkpoint = l
                .checkpoint
                .lines()
                .nth(1)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            lines.push(format!(
                "ledger        {} entries, last checkpoint at {}, {} cosignature(s)",
                l.size,
                checkpoint,
                l.cosigned.len()
            ));
            lines.push(format!(
                "witnessing    {}; alarms: {}",
                if l.witnessed.is_empty() {
                    "nobody yet".to_owned()
                } else {
                    l.witnessed.join(", ")
                },
                if l.alarms.is_empty() {
                    "none".to_owned()
                } else {
                    l.alarms
                        .iter()
                        .map(|a| format!("{} (OPEN)", a.partner))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ));
        }
        None => lines.push("ledger        (no auditor certificate here)".to_owned()),
    }
    lines.push(format!(
        "outbox        {}",
        if outbox.partners.is_empty() {
            "empty".to_owned()
        } else {
            outbox
                .partners
                .iter()
                .map(|p| format!("{}: {} queued, {} dead", p.partner, p.queued, p.dead_letter))
                .collect::<Vec<_>>()
                .join("; ")
        }
    ));
    let mut aeo_text = if aeo.registry_records > 0 {
        format!(
            "own registry {} operators (v{})",
            aeo.registry_records, aeo.registry_version
        )
    } else {
        "no own registry".to_owned()
    };
    for m in &aeo.mirrors {
        aeo_text.push_str(&format!(
            "; mirror {} {} operators (v{}, as of {} s ago, {})",
            m.partner,
            m.records,
            m.version,
            (now - m.as_of_ms).max(0) / 1000,
            if m.connected { "live" } else { "disconnected" }
        ));
    }
    lines.push(format!("aeo           {aeo_text}"));
    let warn_days = config.observability.cert_warning_days as i64;
    let now = time::OffsetDateTime::now_utc();
    let certs: Vec<String> = crate::telemetry::certificate_expiry(&paths)
        .into_iter()
        .map(|(name, not_after)| {
            let days = (not_after - now).whole_days();
            format!(
                "{name} until {} ({days} d{})",
                not_after.date(),
                if days < warn_days { ", ROTATE" } else { "" }
            )
        })
        .collect();
    lines.push(format!("certificates  {}", certs.join("; ")));
    Ok(lines.join("\n"))
}
