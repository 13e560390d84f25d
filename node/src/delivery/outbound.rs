//! The send pipeline: what a node does with a message its back office hands to `Gateway.Send`.
//!
//! Policy first (the sender enforces the agreement itself), then seal and sign, then record the
//! sent envelope durably, then deliver and verify the partner's receipt, then record the receipt.
//! A message id given by the back office makes the call idempotent: a retry re-delivers the same
//! stored envelope, so the partner deduplicates it.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use super::Refusal;
use crate::envelope::receipt::{Expected, verify_receipt_for};
use crate::envelope::seal::{Outgoing, seal};
use crate::envelope::{envelope_digest, now_ms};
use crate::ledger::entry;
use crate::policy::{self, MessageFacts};
use crate::proto::v1::{EntryKind, Envelope, RejectReason, SendRequest, SendResponse, SentRecord};
use crate::state::NodeState;

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// This node refused the message (policy, agreement, payload, size).
    #[error("refused by {admin}: {refusal}")]
    Refused {
        /// The refusing node (this one).
        admin: String,
        /// Why.
        refusal: Refusal,
    },
    /// The partner refused the envelope.
    #[error("partner {partner} refused message {message_id}: {refusal}")]
    PartnerRefused {
        /// The partner.
        partner: String,
        /// The message.
        message_id: String,
        /// The partner's reason.
        refusal: Refusal,
    },
    /// The partner could not be reached or did not answer in time; the envelope is recorded as
    /// sent and can be re-delivered by sending again with the same message id.
    #[error(
        "partner {partner} unreachable for message {message_id}: {detail} (send again with message_id {message_id} to retry)"
    )]
    Unreachable {
        /// The partner.
        partner: String,
        /// The message.
        message_id: String,
        /// What failed.
        detail: String,
    },
    /// The partner answered with a receipt that does not verify.
    #[error("partner {partner} returned an invalid receipt for {message_id}: {detail}")]
    BadReceipt {
        /// The partner.
        partner: String,
        /// The message.
        message_id: String,
        /// What is wrong.
        detail: String,
    },
    /// This node's storage failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl SendError {
    /// The gRPC status for the back office.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            SendError::Refused { refusal, .. } | SendError::PartnerRefused { refusal, .. } => {
                let s = refusal.to_status();
                tonic::Status::with_metadata(s.code(), self.to_string(), s.metadata().clone())
            }
            SendError::Unreachable { .. } => tonic::Status::unavailable(self.to_string()),
            SendError::BadReceipt { .. } => tonic::Status::data_loss(self.to_string()),
            SendError::Internal(_) => tonic::Status::internal(self.to_string()),
        }
    }
}

/// A request to send `payload` (a serialized `message_type`) to `recipient` under `agreement`,
/// with a node-chosen message id, the default lifetime and no reply reference.
pub fn request(
    agreement: &str,
    recipient: &str,
    message_type: &str,
    payload: Vec<u8>,
) -> SendRequest {
    SendRequest {
        agreement_id: agreement.into(),
        recipient: recipient.into(),
        message_type: message_type.into(),
        payload,
        ..Default::default()
    }
}

/// Digest of what the back office asked to send, to recognise a retry of the same message.
fn request_digest(req: &SendRequest) -> [u8; 32] {
    let fields: [&[u8]; 6] = [
        req.agreement_id.as_bytes(),
        req.recipient.as_bytes(),
        req.message_type.as_bytes(),
        &req.payload,
        req.in_reply_to.as_bytes(),
        req.consent_reference.as_bytes(),
    ];
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(fields.len() * 2);
    for f in fields {
        parts.push((f.len() as u64).to_be_bytes().to_vec());
        parts.push(f.to_vec());
    }
    crate::envelope::sha256_parts(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
}

/// Key of the sent record of `message_id`.
pub fn sent_key(message_id: &str) -> Vec<u8> {
    [b"s/".as_slice(), message_id.as_bytes()].concat()
}

/// Sends one message to a partner and returns the verified receipt. A refusal by this node's own
/// checks is recorded in the ledger (as `SEND_REFUSED`, with its reason) before it is returned.
pub async fn send(state: &Arc<NodeState>, req: SendRequest) -> Result<SendResponse, SendError> {
    let (recipient, message_id) = (req.recipient.clone(), req.message_id.clone());
    let result = checked_send(state, req).await;
    if let Err(SendError::Refused { refusal, .. }) = &result {
        let e = entry::with_refusal(
            entry::LedgerEntry {
                kind: EntryKind::SendRefused as i32,
                recorded_at_ms: now_ms(),
                peer: recipient.chars().take(64).collect(),
                message_id: message_id.chars().take(128).collect(),
                ..Default::default()
            },
            refusal.reason,
            &refusal.message,
        );
        let ticket = {
            let mut txn = state.store.begin();
            entry::append(&mut txn, &e);
            txn.commit()
        };
        ticket
            .durable()
            .await
            .map_err(|e| SendError::Internal(e.to_string()))?;
    }
    result
}

async fn checked_send(state: &Arc<NodeState>, req: SendRequest) -> Result<SendResponse, SendError> {
    let me = state.admin().to_owned();
    let refused = |refusal: Refusal| SendError::Refused {
        admin: me.clone(),
        refusal,
    };
    let internal = |e: &dyn std::fmt::Display| SendError::Internal(e.to_string());

    let limit = state.config.limits.max_message_bytes;
    if req.payload.len() > limit {
        return Err(refused(Refusal::new(
            RejectReason::TooLarge,
            format!(
                "payload is {} bytes, the limit is {limit}",
                req.payload.len()
            ),
        )));
    }
    let now = now_ms();
    let agreements = state.agreements();
    let agreement = agreements
        .active(&req.agreement_id, now)
        .map_err(|e| refused(e.into()))?;
    let flow_facts = MessageFacts {
        sender: &me,
        recipient: &req.recipient,
        message_type: &req.message_type,
    };
    let flow = policy::check(agreement, &flow_facts).map_err(|v| refused(v.into()))?;
    let message = super::check_payload(&req.message_type, &req.payload).map_err(refused)?;
    policy::check_fields(agreement, flow, &message).map_err(|v| refused(v.into()))?;
    policy::check_consent(agreement, flow, &req.consent_reference)
        .map_err(|v| refused(v.into()))?;
    super::onward::check_send(
        &state.store,
        &state.onward_salt,
        &req.payload,
        &req.recipient,
    )
    .map_err(refused)?;
    state
        .rates
        .admit(agreement, flow, policy::Side::Sending)
        .map_err(|v| refused(v.into()))?;
    let partner = agreement
        .party(&req.recipient)
        .ok_or_else(|| {
            refused(Refusal::new(
                RejectReason::NotAParty,
                format!("{} is not a party", req.recipient),
            ))
        })?
        .clone();

    let message_id = if req.message_id.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        uuid::Uuid::parse_str(&req.message_id)
            .map_err(|_| {
                refused(Refusal::new(
                    RejectReason::Malformed,
                    format!("message_id {:?} is not a UUID", req.message_id),
                ))
            })?
            .to_string()
    };

    // A retry with the same id re-delivers the stored envelope (or answers from the stored receipt).
    let existing = state
        .store
        .get(&sent_key(&message_id))
        .map_err(|e| internal(&e))?
        .map(|b| SentRecord::decode(b.as_slice()))
        .transpose()
        .map_err(|e| internal(&e))?;
    let req_digest = request_digest(&req);
    if let Some(record) = &existing
        && !record.request_digest.is_empty()
        && record.request_digest != req_digest
    {
        return Err(refused(Refusal::new(
            RejectReason::DuplicateConflict,
            format!("message id {message_id} was already used for a different message"),
        )));
    }
    let (envelope, digest, sent_index) = match existing {
        Some(SentRecord {
            receipt: Some(receipt),
            sent_ledger_index,
            envelope_digest,
            ..
        }) => {
            return Ok(SendResponse {
                message_id,
                receipt: Some(receipt),
                sent_ledger_index,
                envelope_digest,
                ..Default::default()
            });
        }
        Some(SentRecord {
            envelope: Some(envelope),
            sent_ledger_index,
            ..
        }) => {
            let digest = envelope_digest(&envelope);
            (envelope, digest, sent_ledger_index)
        }
        _ => {
            let ttl = if req.ttl_seconds == 0 {
                state.config.limits.default_ttl_secs
            } else {
                u64::from(req.ttl_seconds).min(state.config.limits.max_envelope_ttl_secs)
            };
            let st = state.clone();
            let (id, agreement_id, digest, recipient) = (
                message_id.clone(),
                agreement.id().to_owned(),
                agreement.digest,
                req.recipient.clone(),
            );
            let consent_reference = req.consent_reference.clone();
            let (message_type, payload, in_reply_to) = (
                req.message_type.clone(),
                req.payload,
                req.in_reply_to.clone(),
            );
            let hpke_key = partner.hpke_key.clone();
            let envelope = tokio::task::spawn_blocking(move || {
                seal(
                    &Outgoing {
                        message_id: &id,
                        agreement_id: &agreement_id,
                        agreement_digest: &digest,
                        sender: st.admin(),
                        recipient: &recipient,
                        message_type: &message_type,
                        payload: &payload,
                        in_reply_to: &in_reply_to,
                        consent_reference: &consent_reference,
                        created_at_ms: now,
                        expires_at_ms: now + i64::try_from(ttl * 1000).unwrap_or(i64::MAX / 2),
                    },
                    st.identity.signing.signing_key(),
                    &hpke_key,
                )
            })
            .await
            .map_err(|e| internal(&e))?
            .map_err(|e| internal(&e))?;
            let digest = envelope_digest(&envelope);
            let (index, ticket) = {
                let mut txn = state.store.begin();
                let index = entry::append(
                    &mut txn,
                    &entry::about_envelope(
                        EntryKind::EnvelopeSent,
                        &envelope,
                        &digest,
                        &message_id,
                        &req.recipient,
                    ),
                );
                let record = SentRecord {
                    envelope: Some(envelope.clone()),
                    sent_ledger_index: index,
                    receipt: None,
                    envelope_digest: digest.to_vec(),
                    request_digest: req_digest.to_vec(),
                    ..Default::default()
                };
                txn.put(sent_key(&message_id), record.encode_to_vec())
                    .map_err(|e| internal(&e))?;
                (index, txn.commit())
            };
            ticket.durable().await.map_err(|e| internal(&e))?;
            (envelope, digest, index)
        }
    };
    deliver(
        state,
        &partner,
        &message_id,
        envelope,
        &digest,
        sent_index,
        &req_digest,
    )
    .await
}

async fn deliver(
    state: &Arc<NodeState>,
    partner: &crate::agreement::Party,
    message_id: &str,
    envelope: Envelope,
    digest: &[u8; 32],
    sent_index: u64,
    req_digest: &[u8; 32],
) -> Result<SendResponse, SendError> {
    let admin = partner.card.admin.clone();
    let internal = |e: &dyn std::fmt::Display| SendError::Internal(e.to_string());
    let mut client = state
        .peers
        .client(partner)
        .map_err(|e| SendError::Unreachable {
            partner: admin.clone(),
            message_id: message_id.to_owned(),
            detail: e.to_string(),
        })?;
    let timeout = Duration::from_secs(state.config.limits.request_timeout_secs);
    let answer = tokio::time::timeout(timeout, client.deliver(envelope.clone())).await;
    let receipt = match answer {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            let failure = match Refusal::from_status(&status) {
                Some(refusal) => SendError::PartnerRefused {
                    partner: admin.clone(),
                    message_id: message_id.to_owned(),
                    refusal,
                },
                None => SendError::Unreachable {
                    partner: admin.clone(),
                    message_id: message_id.to_owned(),
                    detail: format!("{:?}: {}", status.code(), status.message()),
                },
            };
            record_failure(state, &envelope, digest, message_id, &admin, &failure).await;
            return Err(failure);
        }
        Err(_) => {
            let failure = SendError::Unreachable {
                partner: admin.clone(),
                message_id: message_id.to_owned(),
                detail: format!("no answer within {}s", timeout.as_secs()),
            };
            record_failure(state, &envelope, digest, message_id, &admin, &failure).await;
            return Err(failure);
        }
    };
    let me = state.admin();
    verify_receipt_for(
        &receipt,
        &partner.verifying_key,
        &Expected {
            message_id,
            sender: me,
            recipient: &admin,
            envelope_digest: digest,
        },
    )
    .map_err(|e| SendError::BadReceipt {
        partner: admin.clone(),
        message_id: message_id.to_owned(),
        detail: e.to_string(),
    })?;
    let ticket = {
        let mut txn = state.store.begin();
        entry::append(
            &mut txn,
            &entry::about_receipt(
                EntryKind::ReceiptReceived,
                &receipt,
                digest,
                message_id,
                &admin,
            ),
        );
        let record = SentRecord {
            envelope: Some(envelope),
            sent_ledger_index: sent_index,
            receipt: Some(receipt.clone()),
            envelope_digest: digest.to_vec(),
            request_digest: req_digest.to_vec(),
            ..Default::default()
        };
        txn.put(sent_key(message_id), record.encode_to_vec())
            .map_err(|e| internal(&e))?;
        txn.commit()
    };
    ticket.durable().await.map_err(|e| internal(&e))?;
    tracing::info!(message_id, partner = %admin, "delivered and receipted");
    Ok(SendResponse {
        message_id: message_id.to_owned(),
        receipt: Some(receipt),
        sent_ledger_index: sent_index,
        envelope_digest: digest.to_vec(),
        ..Default::default()
    })
}

async fn record_failure(
    state: &Arc<NodeState>,
    envelope: &Envelope,
    digest: &[u8; 32],
    message_id: &str,
    partner: &str,
    failure: &SendError,
) {
    let reason = match failure {
        SendError::PartnerRefused { refusal, .. } => refusal.reason,
        _ => RejectReason::Unspecified,
    };
    let e = entry::with_refusal(
        entry::about_envelope(
            EntryKind::DeliveryFailed,
            envelope,
            digest,
            message_id,
            partner,
        ),
        reason,
        &failure.to_string(),
    );
    let ticket = {
        let mut txn = state.store.begin();
        entry::append(&mut txn, &e);
        txn.commit()
    };
    if let Err(err) = ticket.durable().await {
        tracing::error!(error = %err, "could not record a delivery failure in the ledger");
    }
    tracing::warn!(message_id, partner, error = %failure, "delivery failed");
}
