//! Operator actions on the outbox (`Gateway.ListOutbox`, `RetryOutbox`, `CancelOutbox` and
//! `dccf-node outbox list|retry|cancel`). Every change is recorded in the ledger.

use std::sync::Arc;

use prost::Message;

use super::outbound::sent_key;
use super::outbox::{self, OutboxError, Queue};
use crate::envelope::now_ms;
use crate::ledger::entry;
use crate::proto::v1::{
    DeliveryState, EntryKind, LedgerEntry, ListOutboxRequest, ListOutboxResponse, OutboxPartner,
    OutboxRecord, SentRecord,
};
use crate::state::NodeState;

/// Errors of outbox actions.
#[derive(Debug, thiserror::Error)]
pub enum OutboxAdminError {
    /// The outbox could not be read or written.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// A request parameter is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl OutboxAdminError {
    /// The gRPC status for the back office.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            OutboxAdminError::Invalid(m) => tonic::Status::invalid_argument(m.clone()),
            OutboxAdminError::Outbox(e) => tonic::Status::internal(e.to_string()),
        }
    }
}

impl From<crate::ledger::LedgerError> for OutboxAdminError {
    fn from(e: crate::ledger::LedgerError) -> Self {
        OutboxAdminError::Outbox(e.into())
    }
}

/// Most ids per retry or cancel call.
const MAX_IDS: usize = 10_000;

/// Lists queued messages, then dead letters, per partner in submission order, with totals.
pub fn list(
    state: &NodeState,
    req: &ListOutboxRequest,
) -> Result<ListOutboxResponse, OutboxAdminError> {
    let limit = match req.limit {
        0 => 100,
        n if n as usize > MAX_IDS => {
            return Err(OutboxAdminError::Invalid(format!(
                "limit {n} is above {MAX_IDS}"
            )));
        }
        n => n as usize,
    };
    let totals = outbox::totals(&state.store)?;
    let totals: Vec<OutboxPartner> = if req.partner.is_empty() {
        totals
    } else {
        let of_partner = totals.into_iter().find(|t| t.partner == req.partner);
        vec![of_partner.unwrap_or_else(|| OutboxPartner {
            partner: req.partner.clone(),
            ..Default::default()
        })]
    };
    let mut out = ListOutboxResponse::default();
    let queues: &[Queue] = if req.dead_letter_only {
        &[Queue::Dead]
    } else {
        &[Queue::Queued, Queue::Dead]
    };
    for total in totals {
        let partner = &total.partner.clone();
        out.partners.push(total);
        for queue in queues {
            let room = limit.saturating_sub(out.items.len());
            if room == 0 {
                break;
            }
            for (seq, record) in outbox::page(&state.store, *queue, partner, None, room)? {
                out.items.push(outbox::item(seq, &record));
            }
        }
    }
    Ok(out)
}

fn check_ids(ids: &[String]) -> Result<(), OutboxAdminError> {
    if ids.len() > MAX_IDS {
        return Err(OutboxAdminError::Invalid(format!(
            "at most {MAX_IDS} message ids per call"
        )));
    }
    Ok(())
}

fn operator_entry(kind: EntryKind, record: &OutboxRecord, sent: &SentRecord) -> LedgerEntry {
    LedgerEntry {
        kind: kind as i32,
        recorded_at_ms: now_ms(),
        envelope_digest: sent.envelope_digest.clone(),
        peer: record.partner.clone(),
        message_id: record.message_id.clone(),
        detail: "operator action".into(),
        ..Default::default()
    }
}

/// Retries messages: a queued one is attempted at once, a dead-lettered one goes back into the
/// outbox with its attempts reset (`DELIVERY_REQUEUED`). Returns how many were affected.
pub async fn retry(state: &Arc<NodeState>, ids: &[String]) -> Result<u32, OutboxAdminError> {
    check_ids(ids)?;
    let now = now_ms();
    let mut affected = 0u32;
    let mut partners = std::collections::BTreeSet::new();
    let mut requeued: Vec<String> = Vec::new();
    let ticket = {
        let mut txn = state.store.begin();
        for id in ids {
            let Some(located) = outbox::locate(&state.store, id)? else {
                continue;
            };
            let seq = located.sent.sent_ledger_index;
            match located.queued {
                Some((Queue::Queued, record)) => {
                    let record = OutboxRecord {
                        next_attempt_at_ms: now,
                        ..record
                    };
                    outbox::stage_put(&mut txn, Queue::Queued, seq, &record)?;
                    partners.insert(record.partner);
                }
                Some((Queue::Dead, record)) => {
                    entry::append(
                        &mut txn,
                        &operator_entry(EntryKind::DeliveryRequeued, &record, &located.sent),
                    );
                    let record = OutboxRecord {
                        attempts: 0,
                        next_attempt_at_ms: now,
                        state: DeliveryState::Queued as i32,
                        ..record
                    };
                    outbox::stage_remove(&mut txn, Queue::Dead, &record.partner, seq)?;
                    outbox::stage_put(&mut txn, Queue::Queued, seq, &record)?;
                    let sent = SentRecord {
                        state: DeliveryState::Queued as i32,
                        ..located.sent
                    };
                    txn.put(sent_key(id), sent.encode_to_vec())?;
                    requeued.push(record.partner.clone());
                    partners.insert(record.partner);
                }
                None => continue,
            }
            affected += 1;
        }
        (affected > 0).then(|| txn.commit())
    };
    if let Some(t) = ticket {
        t.durable().await?;
    }
    for p in requeued {
        // Counted back in; a requeue may exceed the bound (the operator asked for it).
        state.courier.requeued(&p);
    }
    for p in partners {
        state.courier.queued(state, &p);
    }
    Ok(affected)
}

/// Cancels delivery of queued or dead-lettered messages (`DELIVERY_CANCELLED`). A message that
/// is on the wire at that moment may still be delivered. Returns how many were affected.
pub async fn cancel(state: &Arc<NodeState>, ids: &[String]) -> Result<u32, OutboxAdminError> {
    check_ids(ids)?;
    let mut affected = 0u32;
    let mut removed_queued: Vec<String> = Vec::new();
    let ticket = {
        let mut txn = state.store.begin();
        for id in ids {
            let Some(located) = outbox::locate(&state.store, id)? else {
                continue;
            };
            let Some((queue, record)) = located.queued else {
                continue;
            };
            let seq = located.sent.sent_ledger_index;
            entry::append(
                &mut txn,
                &operator_entry(EntryKind::DeliveryCancelled, &record, &located.sent),
            );
            outbox::stage_remove(&mut txn, queue, &record.partner, seq)?;
            let sent = SentRecord {
                state: DeliveryState::Cancelled as i32,
                ..located.sent
            };
            txn.put(sent_key(id), sent.encode_to_vec())?;
            if queue == Queue::Queued {
                removed_queued.push(record.partner.clone());
            }
            affected += 1;
        }
        (affected > 0).then(|| txn.commit())
    };
    if let Some(t) = ticket {
        t.durable().await?;
    }
    for p in removed_queued {
        state.courier.unreserve(&p, 1);
    }
    Ok(affected)
}
