//! Retention: payloads a node received may be kept only as long as their agreement's flow says
//! (`retention_days`). A sweep destroys the data key of every inbox payload past its retention
//! (crypto-shredding) and records each deletion in the ledger; the ledger never held the payload,
//! so it stays complete and verifiable.

use crate::ledger::{LedgerError, entry};
use crate::proto::v1::{EntryKind, LedgerEntry};
use crate::state::NodeState;

use super::inbox::{self, InboxError};

/// Retention sweep errors.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// Reading the inbox failed.
    #[error(transparent)]
    Inbox(#[from] InboxError),
    /// Writing the ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

const DAY_MS: i64 = 86_400_000;

/// Crypto-shreds every inbox payload received longer ago than its flow's retention at `now_ms`,
/// recording one `RETENTION_DELETION` entry each, durably. Returns how many were shredded.
pub async fn sweep(state: &NodeState, now_ms: i64) -> Result<usize, RetentionError> {
    let agreements = state.agreements();
    let me = state.admin();
    let mut txn_items = Vec::new();
    for record in inbox::records(&state.store)? {
        // The flow the message arrived on, in any loaded version of its agreement.
        let retention_days = agreements
            .all()
            .filter(|a| a.id() == record.agreement_id)
            .flat_map(|a| a.doc.flows.iter())
            .filter(|f| {
                f.message_type == record.message_type && f.from == record.sender && f.to == me
            })
            .filter_map(|f| f.retention_days)
            .min();
        let Some(days) = retention_days else { continue };
        if record
            .received_at_ms
            .saturating_add(i64::from(days) * DAY_MS)
            <= now_ms
        {
            txn_items.push((record, days));
        }
    }
    if txn_items.is_empty() {
        return Ok(0);
    }
    let count = txn_items.len();
    let ticket = {
        let mut txn = state.store.begin();
        for (record, days) in txn_items {
            inbox::stage_shred(&mut txn, record.ledger_index)?;
            let e = LedgerEntry {
                kind: EntryKind::RetentionDeletion as i32,
                recorded_at_ms: now_ms,
                envelope_digest: record.envelope_digest.clone(),
                peer: record.sender.clone(),
                message_id: record.message_id.clone(),
                agreement_id: record.agreement_id.clone(),
                detail: format!(
                    "payload of ledger entry {} crypto-shredded after {days} days of retention",
                    record.ledger_index
                ),
                ..Default::default()
            };
            entry::append(&mut txn, &e);
        }
        txn.commit()
    };
    ticket.durable().await?;
    tracing::info!(count, "payloads past retention crypto-shredded");
    Ok(count)
}
