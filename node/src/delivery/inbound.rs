//! The receive pipeline: what a node does with an envelope a partner delivers.
//!
//! Checks run cheapest first — parse, addressing, TLS identity, duplicate, agreement, signature,
//! clock, policy — and only then decrypt. Every refusal from an authenticated partner is
//! recorded in the ledger with its reason before the partner hears of it; every acceptance is
//! recorded, receipted and put in the inbox durably before the receipt is returned.

use std::sync::Arc;

use prost::Message;

use super::{Refusal, inbox};
use crate::envelope::open::{self, ClockPolicy};
use crate::envelope::receipt::sign_receipt;
use crate::envelope::{envelope_digest, now_ms};
use crate::ledger::entry;
use crate::policy::{self, MessageFacts};
use crate::proto::v1::{
    EntryKind, Envelope, EnvelopeHeader, InboxMessage, Receipt, ReceiptBody, ReceivedRecord,
    RejectReason,
};
use crate::state::NodeState;

/// Key of the dedupe record of (sender, message id).
pub fn received_key(sender: &str, message_id: &str) -> Vec<u8> {
    let mut k = b"x/".to_vec();
    k.extend_from_slice(sender.as_bytes());
    k.push(0);
    k.extend_from_slice(message_id.as_bytes());
    k
}

/// Receives `envelope` from the partner authenticated as `peer_admin` by its TLS certificate.
/// Returns the signed receipt (the original one for a duplicate) or the refusal.
pub async fn receive(
    state: &Arc<NodeState>,
    peer_admin: &str,
    envelope: Envelope,
) -> Result<Receipt, Refusal> {
    let digest = envelope_digest(&envelope);
    let st = state.clone();
    let peer = peer_admin.to_owned();
    // Signature checks and HPKE are CPU work: keep them off the async I/O threads.
    let checked = tokio::task::spawn_blocking(move || {
        let result = check_and_open(&st, &peer, &envelope, &digest);
        (envelope, result)
    })
    .await
    .map_err(|e| Refusal::retry_later(format!("internal error: {e}")))?;
    match checked {
        (_, Ok(Checked::Duplicate(receipt))) => Ok(*receipt),
        (envelope, Ok(Checked::Accept(accepted))) => {
            let (sender, id) = (
                accepted.header.sender.clone(),
                accepted.header.message_id.clone(),
            );
            let result = accept(state, &envelope, &digest, *accepted).await;
            state.end_receive(&sender, &id);
            result
        }
        (envelope, Err(refusal)) => {
            if !refusal.is_transient() {
                record_refusal(state, peer_admin, &envelope, &digest, &refusal).await;
            }
            Err(refusal)
        }
    }
}

enum Checked {
    Duplicate(Box<Receipt>),
    Accept(Box<Accepted>),
}

struct Accepted {
    header: EnvelopeHeader,
    payload: Vec<u8>,
    /// The flow forbids passing this payload on.
    no_onward_transfer: bool,
}

fn check_and_open(
    state: &NodeState,
    peer_admin: &str,
    envelope: &Envelope,
    digest: &[u8; 32],
) -> Result<Checked, Refusal> {
    let me = state.admin();
    let limit = state.config.limits.max_message_bytes;
    let size = envelope.encoded_len();
    if size > limit {
        return Err(Refusal::new(
            RejectReason::TooLarge,
            format!("envelope is {size} bytes, the limit is {limit}"),
        ));
    }
    let header = open::parse_header(envelope)?;
    if header.recipient != me {
        return Err(Refusal::new(
            RejectReason::WrongRecipient,
            format!(
                "envelope is addressed to {}, this node is {me}",
                header.recipient
            ),
        ));
    }
    if header.sender != peer_admin {
        return Err(Refusal::new(
            RejectReason::SenderMismatch,
            format!(
                "TLS client certificate is for {peer_admin} but the envelope claims sender {}",
                header.sender
            ),
        ));
    }
    // A byte-identical envelope from its authenticated sender was verified when first accepted:
    // answer with the original receipt, even if it has expired or the agreement changed since.
    if let Some(receipt) = duplicate(state, &header, digest)? {
        return Ok(Checked::Duplicate(Box::new(receipt)));
    }
    let now = now_ms();
    let agreements = state.agreements();
    let agreement =
        agreements.active_with_digest(&header.agreement_id, &header.agreement_digest, now)?;
    let facts = MessageFacts {
        sender: &header.sender,
        recipient: &header.recipient,
        message_type: &header.message_type,
    };
    let sender = agreement.party(&header.sender).ok_or_else(|| {
        Refusal::new(
            RejectReason::NotAParty,
            format!(
                "{} is not a party to agreement {}",
                header.sender,
                agreement.id()
            ),
        )
    })?;
    open::verify_signature(envelope, &sender.verifying_key, &header.sender)?;
    open::check_times(
        &header,
        &ClockPolicy {
            now_ms: now,
            max_skew_secs: state.config.limits.max_clock_skew_secs,
            max_ttl_secs: state.config.limits.max_envelope_ttl_secs,
        },
    )?;
    let flow = policy::check(agreement, &facts)?;
    policy::check_consent(agreement, flow, &header.consent_reference)?;
    state
        .rates
        .admit(agreement, flow, policy::Side::Receiving)?;
    if !state.begin_receive(&header.sender, &header.message_id) {
        return Err(Refusal::retry_later(format!(
            "message {} is already being received; retry",
            header.message_id
        )));
    }
    let opened = open::open_payload(envelope, &header, state.identity.hpke.private_key())
        .map(|o| o.payload)
        .map_err(Refusal::from)
        .and_then(|payload| {
            let message = super::check_payload(&header.message_type, &payload)?;
            policy::check_fields(agreement, flow, &message)?;
            Ok(payload)
        });
    match opened {
        Ok(payload) => Ok(Checked::Accept(Box::new(Accepted {
            header,
            payload,
            no_onward_transfer: !flow.onward_transfer,
        }))),
        Err(refusal) => {
            state.end_receive(&header.sender, &header.message_id);
            Err(refusal)
        }
    }
}

/// The original receipt if this exact envelope was already accepted; a conflict if the same
/// message id came with a different envelope.
fn duplicate(
    state: &NodeState,
    header: &EnvelopeHeader,
    digest: &[u8; 32],
) -> Result<Option<Receipt>, Refusal> {
    let internal = |e: String| Refusal::retry_later(format!("internal error: {e}"));
    let Some(bytes) = state
        .store
        .get(&received_key(&header.sender, &header.message_id))
        .map_err(|e| internal(e.to_string()))?
    else {
        return Ok(None);
    };
    let record = ReceivedRecord::decode(bytes.as_slice()).map_err(|e| internal(e.to_string()))?;
    if record.envelope_digest.as_slice() != digest.as_slice() {
        return Err(Refusal::new(
            RejectReason::DuplicateConflict,
            format!(
                "message id {} from {} was already received with a different envelope",
                header.message_id, header.sender
            ),
        ));
    }
    record
        .receipt
        .map(Some)
        .ok_or_else(|| internal("dedupe record without receipt".into()))
}

async fn accept(
    state: &Arc<NodeState>,
    envelope: &Envelope,
    digest: &[u8; 32],
    accepted: Accepted,
) -> Result<Receipt, Refusal> {
    let internal = |e: String| Refusal::retry_later(format!("internal error: {e}"));
    let header = &accepted.header;
    let received_at_ms = now_ms();
    let (index, head) = {
        let mut txn = state.store.begin();
        let index = entry::append(
            &mut txn,
            &entry::about_envelope(
                EntryKind::EnvelopeReceived,
                envelope,
                digest,
                &header.message_id,
                &header.sender,
            ),
        );
        let head = txn.staged_head();
        txn.commit();
        (index, head)
    };
    let body = ReceiptBody {
        message_id: header.message_id.clone(),
        sender: header.sender.clone(),
        recipient: header.recipient.clone(),
        envelope_digest: digest.to_vec(),
        ledger_index: index,
        received_at_ms,
        checkpoint: state.checkpoints.latest_cosigned().unwrap_or_default(),
        ledger_size: head.size,
        ledger_root: head.root.to_vec(),
        items: Vec::new(),
    };
    let receipt = sign_receipt(&body, state.identity.signing.signing_key());
    let ticket = {
        let mut txn = state.store.begin();
        entry::append(
            &mut txn,
            &entry::about_receipt(
                EntryKind::ReceiptIssued,
                &receipt,
                digest,
                &header.message_id,
                &header.sender,
            ),
        );
        let record = ReceivedRecord {
            envelope_digest: digest.to_vec(),
            ledger_index: index,
            receipt: Some(receipt.clone()),
        };
        txn.put(
            received_key(&header.sender, &header.message_id),
            record.encode_to_vec(),
        )
        .map_err(|e| internal(e.to_string()))?;
        if accepted.no_onward_transfer {
            super::onward::stage_received(
                &mut txn,
                &state.onward_salt,
                &accepted.payload,
                &header.sender,
                &header.agreement_id,
            )
            .map_err(|e| internal(e.to_string()))?;
        }
        inbox::stage(
            &mut txn,
            &InboxMessage {
                message_id: header.message_id.clone(),
                agreement_id: header.agreement_id.clone(),
                sender: header.sender.clone(),
                message_type: header.message_type.clone(),
                payload: accepted.payload,
                in_reply_to: header.in_reply_to.clone(),
                created_at_ms: header.created_at_ms,
                received_at_ms,
                ledger_index: index,
                envelope_digest: digest.to_vec(),
                consent_reference: header.consent_reference.clone(),
            },
        )
        .map_err(|e| internal(e.to_string()))?;
        txn.commit()
    };
    ticket
        .durable()
        .await
        .map_err(|e| internal(e.to_string()))?;
    tracing::info!(
        message_id = %header.message_id,
        sender = %header.sender,
        message_type = %header.message_type,
        agreement = %header.agreement_id,
        ledger_index = index,
        "envelope accepted"
    );
    Ok(receipt)
}

async fn record_refusal(
    state: &Arc<NodeState>,
    peer_admin: &str,
    envelope: &Envelope,
    digest: &[u8; 32],
    refusal: &Refusal,
) {
    let message_id = EnvelopeHeader::decode(envelope.header.as_slice())
        .map(|h| h.message_id)
        .unwrap_or_default();
    let mut rejected = entry::about_envelope(
        EntryKind::EnvelopeRejected,
        envelope,
        digest,
        &message_id,
        peer_admin,
    );
    // Unparseable or oversized headers are not worth keeping; their digest identifies them.
    if rejected.envelope_header.len() > 4096 {
        rejected.envelope_header.clear();
        rejected.envelope_signature.clear();
    }
    let rejected = entry::with_refusal(rejected, refusal.reason, &refusal.message);
    let ticket = {
        let mut txn = state.store.begin();
        entry::append(&mut txn, &rejected);
        txn.commit()
    };
    if let Err(e) = ticket.durable().await {
        tracing::error!(error = %e, "could not record a rejection in the ledger");
    }
    tracing::warn!(
        peer = peer_admin,
        message_id = %message_id,
        reason = refusal.reason.as_str_name(),
        detail = %refusal.message,
        "envelope rejected"
    );
}
