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
    DeliveryResult, EntryKind, Envelope, EnvelopeHeader, InboxMessage, Receipt, ReceiptBody,
    ReceiptItem, ReceivedRecord, RejectReason, Rejection, delivery_result,
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
/// Returns the signed receipt (the original one for a duplicate; a batch receipt for a bulk-mode
/// envelope) or the refusal, once the outcome is durable.
pub async fn receive(
    state: &Arc<NodeState>,
    peer_admin: &str,
    envelope: Envelope,
) -> Result<Receipt, Refusal> {
    let staged = stage_chunk(state, peer_admin, vec![envelope]).await;
    let results = staged.finish(state).await;
    match results.into_iter().next().and_then(|r| r.outcome) {
        Some(delivery_result::Outcome::Receipt(receipt)) => Ok(receipt),
        Some(delivery_result::Outcome::Rejection(r)) => Err(Refusal::new(
            RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified),
            r.message,
        )),
        None => Err(Refusal::retry_later("internal error: no outcome")),
    }
}

/// The outcome of a chunk of envelopes, staged in the ledger in one go and not yet durable.
#[must_use = "a staged chunk must be finished to release its messages and learn the outcome"]
pub struct StagedChunk {
    /// Completes when everything the chunk wrote is durable (`None`: nothing was written).
    ticket: Option<crate::ledger::Ticket>,
    /// One result per envelope (rejections and single receipts, in order), then one batch
    /// receipt for the chunk's accepted bulk-mode envelopes.
    results: Vec<DeliveryResult>,
    /// (sender, message id) marked as being received until durable.
    in_flight: Vec<(String, String)>,
}

impl StagedChunk {
    /// Waits until the chunk is durable, releases its messages and returns the results. If the
    /// store fails, every result becomes a transient refusal: nothing was acknowledged.
    pub async fn finish(self, state: &NodeState) -> Vec<DeliveryResult> {
        let durable = match self.ticket {
            Some(t) => t.durable().await.map(|_| ()),
            None => Ok(()),
        };
        for (sender, id) in &self.in_flight {
            state.end_receive(sender, id);
        }
        match durable {
            Ok(()) => self.results,
            Err(e) => {
                let refusal = Refusal::retry_later(format!("internal error: {e}"));
                self.results
                    .into_iter()
                    .map(|r| rejection(r.message_id, &refusal))
                    .collect()
            }
        }
    }
}

/// Checks, opens and records a chunk of envelopes from `peer_admin`, in order, in one ledger
/// transaction: every refusal recorded with its reason, every acceptance recorded, receipted and
/// put in the inbox. Returns without waiting for durability, so that the next chunk can be
/// checked while this one syncs; [`StagedChunk::finish`] waits.
pub async fn stage_chunk(
    state: &Arc<NodeState>,
    peer_admin: &str,
    envelopes: Vec<Envelope>,
) -> StagedChunk {
    let st = state.clone();
    let peer = peer_admin.to_owned();
    let count = envelopes.len();
    // Signature checks and decryption are CPU work: keep them off the async I/O threads, and
    // sign this chunk's receipts there too.
    let staged =
        tokio::task::spawn_blocking(move || stage_chunk_blocking(&st, &peer, envelopes)).await;
    staged.unwrap_or_else(|e| StagedChunk {
        ticket: None,
        results: (0..count)
            .map(|_| {
                rejection(
                    String::new(),
                    &Refusal::retry_later(format!("internal error: {e}")),
                )
            })
            .collect(),
        in_flight: Vec::new(),
    })
}

fn rejection(message_id: String, refusal: &Refusal) -> DeliveryResult {
    DeliveryResult {
        message_id,
        outcome: Some(delivery_result::Outcome::Rejection(Rejection {
            reason: refusal.reason as i32,
            message: refusal.message.clone(),
        })),
    }
}

/// What happened to one envelope of a chunk while staging.
enum Slot {
    /// Refused; already staged in the ledger unless transient.
    Refused(String, Refusal),
    /// Already accepted before: the original receipt.
    Duplicate(String, Box<Receipt>),
    /// Accepted in this chunk, with the index of its ENVELOPE_RECEIVED entry.
    Accepted {
        accepted: Box<Accepted>,
        digest: [u8; 32],
        index: u64,
        bulk: bool,
    },
}

fn stage_chunk_blocking(state: &NodeState, peer: &str, envelopes: Vec<Envelope>) -> StagedChunk {
    let now = now_ms();
    let checked: Vec<(Envelope, [u8; 32], Result<Checked, Refusal>)> = envelopes
        .into_iter()
        .map(|envelope| {
            let digest = envelope_digest(&envelope);
            let result = judge_within_budget(state, peer, &envelope, &digest, now);
            (envelope, digest, result)
        })
        .collect();
    let mut in_flight = Vec::new();
    let mut slots = Vec::with_capacity(checked.len());
    let received_at_ms = now_ms();
    // One unit for the whole chunk: decisions (received / rejected), receipts naming those
    // entries and the ledger head that includes them, dedupe and inbox records. Were they split,
    // a crash between two units could leave an acceptance without its dedupe record, and the
    // retry would be accepted twice. Signing happens under the staging lock: one signature per
    // chunk in bulk mode.
    let mut txn = state.store.begin();
    let mut wrote = false;
    let head = {
        for (envelope, digest, result) in checked {
            let (envelope, digest) = (&envelope, &digest);
            let slot = match result {
                Ok(Checked::Duplicate(receipt)) => {
                    Slot::Duplicate(header_message_id(envelope), receipt)
                }
                Ok(Checked::Accept(accepted)) => {
                    wrote = true;
                    crate::telemetry::message_received(
                        &accepted.header.sender,
                        &accepted.header.agreement_id,
                        &accepted.header.message_type,
                    );
                    in_flight.push((
                        accepted.header.sender.clone(),
                        accepted.header.message_id.clone(),
                    ));
                    let index = entry::append(
                        &mut txn,
                        &entry::about_envelope(
                            EntryKind::EnvelopeReceived,
                            envelope,
                            digest,
                            &accepted.header.message_id,
                            &accepted.header.sender,
                        ),
                    );
                    crate::report::stage_lead_time(
                        &mut txn,
                        index,
                        &accepted.header.message_type,
                        &accepted.payload,
                        received_at_ms,
                    );
                    Slot::Accepted {
                        accepted,
                        digest: *digest,
                        index,
                        bulk: !envelope.batch_header.is_empty(),
                    }
                }
                Err(refusal) => {
                    if !refusal.is_transient() {
                        wrote = true;
                        txn_refusal(state, &mut txn, peer, envelope, digest, &refusal);
                    }
                    Slot::Refused(header_message_id(envelope), refusal)
                }
            };
            slots.push(slot);
        }
        txn.staged_head()
    };
    let checkpoint = state.checkpoints.latest_cosigned().unwrap_or_default();
    let signer = state.identity.signing.signing_key();
    let body =
        |message_id: String, digest: Vec<u8>, index: u64, sender: String, items| ReceiptBody {
            message_id,
            sender,
            recipient: state.admin().to_owned(),
            envelope_digest: digest,
            ledger_index: index,
            received_at_ms,
            checkpoint: checkpoint.clone(),
            ledger_size: head.size,
            ledger_root: head.root.to_vec(),
            items,
        };
    // Bulk-mode envelopes accepted in this chunk share one batch receipt.
    let items: Vec<ReceiptItem> = slots
        .iter()
        .filter_map(|s| match s {
            Slot::Accepted {
                accepted,
                digest,
                index,
                bulk: true,
            } => Some(ReceiptItem {
                message_id: accepted.header.message_id.clone(),
                envelope_digest: digest.to_vec(),
                ledger_index: *index,
            }),
            _ => None,
        })
        .collect();
    let batch_receipt = (!items.is_empty()).then(|| {
        sign_receipt(
            &body(String::new(), Vec::new(), 0, peer.to_owned(), items),
            signer,
        )
    });
    let mut results = Vec::with_capacity(slots.len() + 1);
    let mut repeated = std::collections::HashSet::new();
    let mut failure: Option<String> = None;
    let ticket = {
        let batch_receipt_index = batch_receipt.as_ref().map(|r| {
            entry::append(
                &mut txn,
                &entry::about_receipt(EntryKind::ReceiptIssued, r, &[0; 32], "", peer),
            )
        });
        for slot in slots {
            match slot {
                Slot::Refused(id, refusal) => results.push(rejection(id, &refusal)),
                Slot::Duplicate(id, receipt) => {
                    // Duplicates from one batch share its receipt: send it once per chunk.
                    if repeated.insert(receipt.signature.clone()) {
                        results.push(DeliveryResult {
                            message_id: id,
                            outcome: Some(delivery_result::Outcome::Receipt(*receipt)),
                        });
                    }
                }
                Slot::Accepted {
                    accepted,
                    digest,
                    index,
                    bulk,
                } => {
                    let header = &accepted.header;
                    let (receipt, receipt_index) = if bulk {
                        (None, batch_receipt_index.unwrap_or_default())
                    } else {
                        let receipt = sign_receipt(
                            &body(
                                header.message_id.clone(),
                                digest.to_vec(),
                                index,
                                header.sender.clone(),
                                Vec::new(),
                            ),
                            signer,
                        );
                        let at = entry::append(
                            &mut txn,
                            &entry::about_receipt(
                                EntryKind::ReceiptIssued,
                                &receipt,
                                &digest,
                                &header.message_id,
                                &header.sender,
                            ),
                        );
                        results.push(DeliveryResult {
                            message_id: header.message_id.clone(),
                            outcome: Some(delivery_result::Outcome::Receipt(receipt.clone())),
                        });
                        (Some(receipt), at)
                    };
                    if let Err(e) = stage_acceptance(
                        &mut txn,
                        state,
                        *accepted,
                        &digest,
                        index,
                        receipt,
                        receipt_index,
                        received_at_ms,
                    ) {
                        failure.get_or_insert(e);
                    }
                }
            }
        }
        if let Some(r) = &batch_receipt {
            results.push(DeliveryResult {
                message_id: String::new(),
                outcome: Some(delivery_result::Outcome::Receipt(r.clone())),
            });
        }
        if failure.is_some() || !wrote {
            // A failure: nothing of the chunk is written and the sender retries. No decision
            // (only duplicates or transient refusals): nothing to write or sync.
            drop(txn);
            None
        } else {
            Some(txn.commit())
        }
    };
    if let Some(e) = failure {
        let refusal = Refusal::retry_later(format!("internal error: {e}"));
        results = results
            .into_iter()
            .map(|r| rejection(r.message_id, &refusal))
            .collect();
        return StagedChunk {
            ticket: None,
            results,
            in_flight,
        };
    }
    for r in &results {
        if let Some(delivery_result::Outcome::Rejection(rej)) = &r.outcome
            && rej.reason != RejectReason::Unspecified as i32
        {
            let reason = RejectReason::try_from(rej.reason)
                .map(|r| r.as_str_name())
                .unwrap_or("?");
            // A partner flooding us with refusable envelopes must not fill the disk with logs.
            let (full, ended) = state.rejection_log.admit(peer, reason, now);
            if let Some(summary) = ended {
                super::rejection_log::log_summary(&summary);
            }
            if full {
                tracing::warn!(
                    peer,
                    message_id = %r.message_id,
                    reason,
                    detail = %rej.message,
                    "envelope rejected"
                );
            }
        }
    }
    StagedChunk {
        ticket,
        results,
        in_flight,
    }
}

/// [`check_and_open`], unless `peer` has used up its refusal budget for this minute: then the
/// envelope is not judged but answered "retry later" (not ledgered; the sender retries).
fn judge_within_budget(
    state: &NodeState,
    peer: &str,
    envelope: &Envelope,
    digest: &[u8; 32],
    now: i64,
) -> Result<Checked, Refusal> {
    let budget = &state.refusal_budget;
    if let Some(until) = budget.exhausted(peer, now) {
        crate::telemetry::request_shed("exchange", "refusals");
        return Err(Refusal::retry_later(format!(
            "{peer} had {} envelopes refused in the last minute \
             (limits.max_refusals_per_peer_per_minute): not checked; retry in {} s",
            budget.per_minute(),
            (until - now).max(0) / 1000 + 1
        )));
    }
    let result = check_and_open(state, peer, envelope, digest);
    if let Err(refusal) = &result
        && !refusal.is_transient()
        && budget.spend(peer, now)
    {
        tracing::warn!(
            peer,
            limit = budget.per_minute(),
            "partner used up its refusal budget for this minute: its envelopes are answered \
             \"retry later\" without being checked or ledgered until the minute is over"
        );
    }
    result
}

fn header_message_id(envelope: &Envelope) -> String {
    EnvelopeHeader::decode(envelope.header.as_slice())
        .map(|h| h.message_id)
        .unwrap_or_default()
}

/// Stages the dedupe record, onward-transfer digest and inbox record of an accepted envelope.
#[allow(clippy::too_many_arguments)]
fn stage_acceptance(
    txn: &mut crate::ledger::Txn<'_>,
    state: &NodeState,
    accepted: Accepted,
    digest: &[u8; 32],
    index: u64,
    receipt: Option<Receipt>,
    receipt_ledger_index: u64,
    received_at_ms: i64,
) -> Result<(), String> {
    let header = &accepted.header;
    let record = ReceivedRecord {
        envelope_digest: digest.to_vec(),
        ledger_index: index,
        receipt,
        receipt_ledger_index,
    };
    txn.put(
        received_key(&header.sender, &header.message_id),
        record.encode_to_vec(),
    )
    .map_err(|e| e.to_string())?;
    if accepted.no_onward_transfer {
        super::onward::stage_received(
            txn,
            &state.onward_salt,
            &accepted.payload,
            &header.sender,
            &header.agreement_id,
        )
        .map_err(|e| e.to_string())?;
    }
    inbox::stage(
        txn,
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
    .map_err(|e| e.to_string())?;
    tracing::debug!(
        message_id = %header.message_id,
        sender = %header.sender,
        message_type = %header.message_type,
        agreement = %header.agreement_id,
        ledger_index = index,
        "envelope accepted"
    );
    Ok(())
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
    open::verify_signature_with(
        envelope,
        &header,
        &sender.verifying_key,
        &header.sender,
        &state.bulk_caches,
    )?;
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
    let opened = open::open_payload_with(
        envelope,
        &header,
        state.identity.hpke.private_key(),
        &state.bulk_caches,
    )
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
    if let Some(receipt) = record.receipt {
        return Ok(Some(receipt));
    }
    let stored = state
        .store
        .entry(record.receipt_ledger_index)
        .map_err(|e| internal(e.to_string()))?
        .ok_or_else(|| internal("dedupe record without receipt".into()))?;
    entry::parse(&stored)
        .ok()
        .and_then(|e| e.receipt)
        .map(Some)
        .ok_or_else(|| internal("dedupe record points to an entry without receipt".into()))
}

/// Stages the ENVELOPE_REJECTED entry of a refusal.
fn txn_refusal(
    state: &NodeState,
    txn: &mut crate::ledger::Txn<'_>,
    peer_admin: &str,
    envelope: &Envelope,
    digest: &[u8; 32],
    refusal: &Refusal,
) {
    let message_id = header_message_id(envelope);
    let header = EnvelopeHeader::decode(envelope.header.as_slice()).unwrap_or_default();
    crate::telemetry::message_rejected(
        state,
        crate::telemetry::Direction::Inbound,
        peer_admin,
        &header.agreement_id,
        &header.message_type,
        refusal.reason.as_str_name(),
    );
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
    // Likewise bulk-mode batch fields that cannot be a valid batch header and RFC 9162 path.
    if rejected.envelope_header.is_empty()
        || rejected.batch_header.len() > 1024
        || rejected.batch_path.len() > 64
        || rejected.batch_path.iter().any(|h| h.len() != 32)
    {
        rejected.batch_header.clear();
        rejected.batch_index = 0;
        rejected.batch_path.clear();
    }
    let rejected = entry::with_refusal(rejected, refusal.reason, &refusal.message);
    entry::append(txn, &rejected);
}
