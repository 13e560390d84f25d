//! `dccf-node outbox list|retry|cancel`: an operator's view of undelivered messages, through the
//! running node's Gateway (role `gateway`).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::cli::{CliError, gateway_client};
use crate::proto::v1::{DeliveryState, ListOutboxRequest, OutboxActionRequest};

/// `dccf-node outbox` subcommands.
#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// List queued and dead-lettered messages, per partner in submission order, with totals.
    List {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Only this partner.
        #[arg(long)]
        partner: Option<String>,
        /// Only the dead-letter queue.
        #[arg(long)]
        dead_letter: bool,
        /// At most this many messages (1..=10000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Print one JSON object per message instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Deliver now: queued messages are attempted at once, dead letters go back into the outbox.
    Retry {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Message ids.
        #[arg(required = true)]
        message_ids: Vec<String>,
    },
    /// Give up delivering messages (recorded in the ledger).
    Cancel {
        /// Path to node.toml.
        #[arg(long)]
        config: PathBuf,
        /// Message ids.
        #[arg(required = true)]
        message_ids: Vec<String>,
    },
}

fn failed(what: &str, s: &tonic::Status) -> CliError {
    CliError::Message(crate::config::one_line(&format!(
        "outbox {what} failed ({:?}): {}",
        s.code(),
        s.message()
    )))
}

fn state_name(state: i32) -> &'static str {
    match DeliveryState::try_from(state) {
        Ok(DeliveryState::Queued) => "queued",
        Ok(DeliveryState::DeadLetter) => "dead-letter",
        Ok(DeliveryState::Delivered) => "delivered",
        Ok(DeliveryState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// Runs an outbox subcommand and returns what to print.
pub async fn run(action: OutboxAction) -> Result<String, CliError> {
    match action {
        OutboxAction::List {
            config,
            partner,
            dead_letter,
            limit,
            json,
        } => list(&config, partner, dead_letter, limit, json).await,
        OutboxAction::Retry {
            config,
            message_ids,
        } => act(&config, message_ids, "retry", "retrying").await,
        OutboxAction::Cancel {
            config,
            message_ids,
        } => act(&config, message_ids, "cancel", "cancelled").await,
    }
}

/// Retries or cancels `message_ids` through the Gateway; says how many were in the outbox.
async fn act(
    config: &Path,
    message_ids: Vec<String>,
    what: &str,
    done: &str,
) -> Result<String, CliError> {
    let n = message_ids.len();
    let mut client = gateway_client(config).await?;
    let request = OutboxActionRequest { message_ids };
    let response = if what == "retry" {
        client.retry_outbox(request).await
    } else {
        client.cancel_outbox(request).await
    };
    let affected = response
        .map_err(|s| failed(what, &s))?
        .into_inner()
        .affected;
    Ok(format!(
        "{done} {affected} of {n} message(s) (the others are not in the outbox)"
    ))
}

async fn list(
    config: &Path,
    partner: Option<String>,
    dead_letter: bool,
    limit: u32,
    json: bool,
) -> Result<String, CliError> {
    let r = gateway_client(config)
        .await?
        .list_outbox(ListOutboxRequest {
            partner: partner.unwrap_or_default(),
            dead_letter_only: dead_letter,
            limit,
        })
        .await
        .map_err(|s| failed("list", &s))?
        .into_inner();
    let mut lines = Vec::new();
    if json {
        for i in &r.items {
            lines.push(
                serde_json::json!({
                    "message_id": i.message_id,
                    "partner": i.partner,
                    "agreement": i.agreement_id,
                    "type": i.message_type,
                    "state": state_name(i.state),
                    "attempts": i.attempts,
                    "enqueued_at": crate::agreement::format_ms(i.enqueued_at_ms),
                    "next_attempt_at": crate::agreement::format_ms(i.next_attempt_at_ms),
                    "last_error": i.last_error,
                    "sent_ledger_index": i.sent_ledger_index,
                })
                .to_string(),
            );
        }
        return Ok(lines.join("\n"));
    }
    if r.partners.is_empty() {
        return Ok("outbox empty".into());
    }
    for p in &r.partners {
        lines.push(format!(
            "{}: {} queued, {} dead-letter",
            p.partner, p.queued, p.dead_letter
        ));
    }
    for i in &r.items {
        lines.push(format!(
            "  {} {} {:<11} attempts {:>3}  next {}  {}{}",
            i.message_id,
            i.partner,
            state_name(i.state),
            i.attempts,
            crate::agreement::format_ms(i.next_attempt_at_ms),
            i.message_type,
            if i.last_error.is_empty() {
                String::new()
            } else {
                format!("  last error: {}", i.last_error)
            }
        ));
    }
    Ok(lines.join("\n"))
}
