//! The send pipeline: what a node does with a message its back office hands to `Gateway.Send` or
//! `Gateway.SendStream`.
//!
//! Policy first (the sender enforces the agreement itself), then seal and sign, then record the
//! sent envelope, its `SentRecord` and its outbox entry durably in one ledger transaction; only
//! then does the back office get the message id. The [`super::courier`] delivers from the outbox.
//! A message id given by the back office makes sending idempotent: sending it again returns
//! where the first one stands and never queues a second envelope.

use std::sync::Arc;

use prost::Message;

use super::{Refusal, outbox};
use crate::envelope::seal::{Outgoing, seal};
use crate::envelope::{envelope_digest, now_ms};
use crate::ledger::{Txn, entry};
use crate::policy::{self, MessageFacts};
use crate::proto::v1::{
    DeliveryState, EntryKind, Envelope, OutboxRecord, RejectReason, SendRejection, SendRequest,
    SendResponse, SentRecord,
};
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
    /// The partner could not be reached or did not answer in time; the message stays in the
    /// outbox and delivery goes on in the background.
    #[error(
        "partner {partner} unreachable for message {message_id}: {detail} (the message stays in the outbox and is retried)"
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
    /// The partner's outbox is full; nothing was queued.
    #[error(
        "outbox for {partner} is full ({queued} messages waiting, the limit is {limit}); retry in {retry_after_ms} ms"
    )]
    OutboxFull {
        /// The partner.
        partner: String,
        /// Messages waiting.
        queued: u64,
        /// The configured bound.
        limit: u64,
        /// Suggested wait before retrying.
        retry_after_ms: u64,
    },
    /// This node's storage failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Metadata key of the retry hint on RESOURCE_EXHAUSTED answers to a full outbox.
pub const RETRY_AFTER_METADATA: &str = "dccf-retry-after-ms";

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
            SendError::OutboxFull { retry_after_ms, .. } => {
                let mut s = tonic::Status::resource_exhausted(self.to_string());
                if let Ok(v) = retry_after_ms.to_string().parse() {
                    s.metadata_mut().insert(RETRY_AFTER_METADATA, v);
                }
                s
            }
            SendError::Internal(_) => tonic::Status::internal(self.to_string()),
        }
    }
}

/// A request to send `payload` (a serialized `message_type`) to `recipient` under `agreement`,
/// with a node-chosen message id, the default lifetime and no reply reference, waiting for the
/// first delivery attempt (`await_delivery`).
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
        await_delivery: true,
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

/// A request that passed every check of this node, ready to be sealed.
struct Checked {
    req: SendRequest,
    message_id: String,
    agreement: Arc<crate::agreement::Agreement>,
    partner: crate::agreement::Party,
    req_digest: [u8; 32],
    now_ms: i64,
    mark: Option<SendingMark>,
}

/// What to do with a checked request.
enum Intake {
    /// New: seal and queue it.
    New(Box<Checked>),
    /// Sent before with this id: answer where it stands.
    Existing(Box<SentRecord>),
}

/// A sealed message ready to be queued.
pub(crate) struct Prepared {
    message_id: String,
    recipient: String,
    agreement_id: String,
    message_type: String,
    envelope: Envelope,
    digest: [u8; 32],
    req_digest: [u8; 32],
    expires_at_ms: i64,
    /// Held until the message is queued durably.
    _mark: Option<SendingMark>,
}

/// Runs every check of this node on `req` (size, agreement, flow, payload, fields, consent,
/// onward transfer, rate, message id) and finds an earlier send with the same id.
fn check(state: &Arc<NodeState>, req: SendRequest) -> Result<Intake, Refusal> {
    let labels = (
        req.recipient.clone(),
        req.agreement_id.clone(),
        req.message_type.clone(),
    );
    let checked = check_request(state, req);
    if let Err(refusal) = &checked
        && !refusal.is_transient()
    {
        let (recipient, agreement, message_type) = labels;
        let now = now_ms();
        let partner = if state
            .agreements()
            .partner(state.admin(), &recipient, now)
            .is_some()
        {
            recipient.as_str()
        } else {
            "unknown"
        };
        crate::telemetry::message_rejected(
            state,
            crate::telemetry::Direction::Outbound,
            partner,
            &agreement,
            &message_type,
            refusal.reason.as_str_name(),
        );
    }
    checked
}

/// The checks of [`check`].
fn check_request(state: &Arc<NodeState>, req: SendRequest) -> Result<Intake, Refusal> {
    let me = state.admin();
    let limit = state.config.limits.max_message_bytes;
    if req.payload.len() > limit {
        return Err(Refusal::new(
            RejectReason::TooLarge,
            format!(
                "payload is {} bytes, the limit is {limit}",
                req.payload.len()
            ),
        ));
    }
    let message_id = if req.message_id.is_empty() {
        uuid::Uuid::now_v7().to_string()
    } else {
        uuid::Uuid::parse_str(&req.message_id)
            .map_err(|_| {
                Refusal::new(
                    RejectReason::Malformed,
                    format!("message_id {:?} is not a UUID", req.message_id),
                )
            })?
            .to_string()
    };
    let req_digest = request_digest(&req);
    if !req.message_id.is_empty() {
        let existing = state
            .store
            .get(&sent_key(&message_id))
            .map_err(|e| Refusal::retry_later(format!("internal error: {e}")))?
            .map(|b| SentRecord::decode(b.as_slice()))
            .transpose()
            .map_err(|e| Refusal::retry_later(format!("internal error: {e}")))?;
        if let Some(record) = existing {
            if !record.request_digest.is_empty() && record.request_digest != req_digest {
                return Err(Refusal::new(
                    RejectReason::DuplicateConflict,
                    format!("message id {message_id} was already used for a different message"),
                ));
            }
            return Ok(Intake::Existing(Box::new(record)));
        }
    }
    // A caller-chosen id being sent right now (concurrent retry): one of them waits.
    let mark = if req.message_id.is_empty() {
        None
    } else {
        Some(SendingMark::new(state, &message_id).ok_or_else(|| {
            Refusal::retry_later(format!(
                "message id {message_id} is being sent by another request; retry"
            ))
        })?)
    };
    let now = now_ms();
    let agreements = state.agreements();
    let agreement = agreements.active(&req.agreement_id, now)?.clone();
    let flow_facts = MessageFacts {
        sender: me,
        recipient: &req.recipient,
        message_type: &req.message_type,
    };
    let flow = policy::check(&agreement, &flow_facts)?;
    let message = super::check_payload(&req.message_type, &req.payload)?;
    policy::check_fields(&agreement, flow, &message)?;
    policy::check_consent(&agreement, flow, &req.consent_reference)?;
    super::onward::check_send(
        &state.store,
        &state.onward_salt,
        &req.payload,
        &req.recipient,
    )?;
    state.rates.admit(&agreement, flow, policy::Side::Sending)?;
    let partner = agreement
        .party(&req.recipient)
        .ok_or_else(|| {
            Refusal::new(
                RejectReason::NotAParty,
                format!("{} is not a party", req.recipient),
            )
        })?
        .clone();
    Ok(Intake::New(Box::new(Checked {
        req,
        message_id,
        agreement,
        partner,
        req_digest,
        now_ms: now,
        mark,
    })))
}

/// Marks a caller-chosen message id as being sent until dropped (after it is queued durably).
pub(crate) struct SendingMark {
    state: Arc<NodeState>,
    message_id: String,
}

impl SendingMark {
    fn new(state: &Arc<NodeState>, message_id: &str) -> Option<SendingMark> {
        // Outgoing ids are marked under this node's own name, which no partner can send as.
        state
            .begin_receive(state.admin(), message_id)
            .then(|| SendingMark {
                state: state.clone(),
                message_id: message_id.to_owned(),
            })
    }
}

impl Drop for SendingMark {
    fn drop(&mut self) {
        self.state.end_receive(self.state.admin(), &self.message_id);
    }
}

impl Checked {
    fn expires_at_ms(&self, state: &NodeState) -> i64 {
        let ttl = if self.req.ttl_seconds == 0 {
            state.config.limits.default_ttl_secs
        } else {
            u64::from(self.req.ttl_seconds).min(state.config.limits.max_envelope_ttl_secs)
        };
        self.now_ms + i64::try_from(ttl * 1000).unwrap_or(i64::MAX / 2)
    }

    fn outgoing<'a>(&'a self, state: &'a NodeState) -> Outgoing<'a> {
        Outgoing {
            message_id: &self.message_id,
            agreement_id: self.agreement.id(),
            agreement_digest: &self.agreement.digest,
            sender: state.admin(),
            recipient: &self.req.recipient,
            message_type: &self.req.message_type,
            payload: &self.req.payload,
            in_reply_to: &self.req.in_reply_to,
            consent_reference: &self.req.consent_reference,
            created_at_ms: self.now_ms,
            expires_at_ms: self.expires_at_ms(state),
        }
    }

    fn prepared(self, envelope: Envelope, state: &NodeState) -> Prepared {
        Prepared {
            expires_at_ms: self.expires_at_ms(state),
            digest: envelope_digest(&envelope),
            envelope,
            agreement_id: self.agreement.id().to_owned(),
            message_id: self.message_id,
            recipient: self.req.recipient,
            message_type: self.req.message_type,
            req_digest: self.req_digest,
            _mark: self.mark,
        }
    }
}

/// Seals `checked` in single-message mode (its own HPKE seal and signature).
fn seal_single(state: &NodeState, checked: Checked) -> Result<Prepared, Refusal> {
    let envelope = seal(
        &checked.outgoing(state),
        state.identity.signing.signing_key(),
        &checked.partner.hpke_key,
    )
    .map_err(|e| Refusal::retry_later(format!("internal error: {e}")))?;
    Ok(checked.prepared(envelope, state))
}

/// Stages the ENVELOPE_SENT entry, the `SentRecord` and the outbox record of `p`; returns the
/// sequence (the entry's ledger index).
fn stage_enqueue(txn: &mut Txn<'_>, p: &Prepared, now: i64) -> Result<u64, SendError> {
    let internal = |e: &dyn std::fmt::Display| SendError::Internal(e.to_string());
    let index = entry::append(
        txn,
        &entry::about_envelope(
            EntryKind::EnvelopeSent,
            &p.envelope,
            &p.digest,
            &p.message_id,
            &p.recipient,
        ),
    );
    let record = SentRecord {
        envelope: Some(p.envelope.clone()),
        sent_ledger_index: index,
        envelope_digest: p.digest.to_vec(),
        request_digest: p.req_digest.to_vec(),
        state: DeliveryState::Queued as i32,
        recipient: p.recipient.clone(),
        ..Default::default()
    };
    txn.put(sent_key(&p.message_id), record.encode_to_vec())
        .map_err(|e| internal(&e))?;
    outbox::stage_put(
        txn,
        outbox::Queue::Queued,
        index,
        &OutboxRecord {
            message_id: p.message_id.clone(),
            partner: p.recipient.clone(),
            agreement_id: p.agreement_id.clone(),
            message_type: p.message_type.clone(),
            attempts: 0,
            enqueued_at_ms: now,
            next_attempt_at_ms: now,
            last_error: String::new(),
            state: DeliveryState::Queued as i32,
            expires_at_ms: p.expires_at_ms,
        },
    )
    .map_err(|e| internal(&e))?;
    Ok(index)
}

/// Stages the SEND_REFUSED entry of a request this node refused.
fn stage_refused(txn: &mut Txn<'_>, recipient: &str, message_id: &str, refusal: &Refusal) {
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
    entry::append(txn, &e);
}

/// The response for a message sent before (idempotent retry), receipt included once delivered.
fn existing_response(state: &NodeState, record: &SentRecord, message_id: &str) -> SendResponse {
    SendResponse {
        message_id: message_id.to_owned(),
        receipt: super::courier::stored_receipt(state, record),
        sent_ledger_index: record.sent_ledger_index,
        envelope_digest: record.envelope_digest.clone(),
        state: record.state,
        rejection: None,
    }
}

/// Sends one message: checks, seals and queues it durably, then (with `await_delivery`) waits
/// for the first delivery attempt. A refusal by this node's own checks is recorded in the ledger
/// (as `SEND_REFUSED`, with its reason) before it is returned.
pub async fn send(state: &Arc<NodeState>, req: SendRequest) -> Result<SendResponse, SendError> {
    let await_delivery = req.await_delivery;
    let (recipient, given_id) = (req.recipient.clone(), req.message_id.clone());
    let refused = |refusal: Refusal| SendError::Refused {
        admin: state.admin().to_owned(),
        refusal,
    };
    // Cheap bound check first, so a full outbox costs no sealing.
    state.courier.check_room(state, &recipient, 1)?;
    let st = state.clone();
    let prepared = tokio::task::spawn_blocking(move || match check(&st, req)? {
        Intake::Existing(record) => Ok(Err(*record)),
        Intake::New(checked) => seal_single(&st, *checked).map(Ok),
    })
    .await
    .map_err(|e| SendError::Internal(e.to_string()))?;
    let prepared = match prepared {
        Ok(p) => p,
        Err(refusal) if refusal.is_transient() => {
            return Err(SendError::Internal(refusal.message));
        }
        Err(refusal) => {
            let ticket = {
                let mut txn = state.store.begin();
                stage_refused(&mut txn, &recipient, &given_id, &refusal);
                txn.commit()
            };
            ticket
                .durable()
                .await
                .map_err(|e| SendError::Internal(e.to_string()))?;
            return Err(refused(refusal));
        }
    };
    let response = match prepared {
        Err(record) => {
            let response = existing_response(state, &record, &given_id);
            if !(await_delivery && record.state == DeliveryState::Queued as i32) {
                return Ok(response);
            }
            response
        }
        Ok(p) => {
            let reserved = state.courier.reserve(state, &p.recipient, 1)?;
            let (seq, ticket) = {
                let mut txn = state.store.begin();
                let seq = stage_enqueue(&mut txn, &p, now_ms())?;
                (seq, txn.commit())
            };
            if let Err(e) = ticket.durable().await {
                state.courier.unreserve(&p.recipient, reserved);
                return Err(SendError::Internal(e.to_string()));
            }
            let waiter = await_delivery.then(|| state.courier.wait_for(&p.message_id));
            state.courier.queued(state, &p.recipient);
            let response = SendResponse {
                message_id: p.message_id.clone(),
                receipt: None,
                sent_ledger_index: seq,
                envelope_digest: p.digest.to_vec(),
                state: DeliveryState::Queued as i32,
                rejection: None,
            };
            match waiter {
                None => return Ok(response),
                Some(w) => return state.courier.outcome(state, w, response).await,
            }
        }
    };
    let waiter = state.courier.wait_for(&response.message_id);
    state.courier.queued(state, &recipient);
    state.courier.outcome(state, waiter, response).await
}

/// A chunk of a `SendStream` staged in the ledger, not yet durable.
#[must_use = "a staged chunk must be finished to learn the outcome"]
pub struct StagedSends {
    ticket: Option<crate::ledger::Ticket>,
    responses: Vec<SendResponse>,
    reserved: Vec<(String, u64)>,
}

impl StagedSends {
    /// Waits until the chunk is durable, wakes the courier and returns one response per request.
    /// If the store fails, every request gets a transient rejection: nothing was queued.
    pub async fn finish(self, state: &Arc<NodeState>) -> Vec<SendResponse> {
        if let Some(ticket) = self.ticket
            && let Err(e) = ticket.durable().await
        {
            for (partner, n) in self.reserved {
                state.courier.unreserve(&partner, n);
            }
            let r = Refusal::retry_later(format!("internal error: {e}"));
            return self
                .responses
                .into_iter()
                .map(|resp| rejected_response(resp.message_id, &r, 0))
                .collect();
        }
        for (partner, _) in self.reserved {
            state.courier.queued(state, &partner);
        }
        self.responses
    }
}

/// Sends a chunk of requests from one `SendStream`: each is checked and sealed, all accepted ones
/// are queued in one ledger transaction (in request order, so chunks staged one after the other
/// keep submission order), and [`StagedSends::finish`] gives one response per request once
/// durable. Refused requests get a response with `rejection` set.
pub async fn stage_sends(state: &Arc<NodeState>, reqs: Vec<SendRequest>) -> StagedSends {
    let st = state.clone();
    let count = reqs.len();
    let sealed = tokio::task::spawn_blocking(move || {
        let mut out: Vec<(String, String, Result<Intake, Refusal>)> =
            Vec::with_capacity(reqs.len());
        for req in reqs {
            let (recipient, id) = (req.recipient.clone(), req.message_id.clone());
            out.push((recipient, id, check(&st, req)));
        }
        seal_all(&st, out)
    })
    .await;
    let slots = match sealed {
        Ok(slots) => slots,
        Err(e) => {
            let r = Refusal::retry_later(format!("internal error: {e}"));
            return StagedSends {
                ticket: None,
                responses: (0..count)
                    .map(|_| rejected_response(String::new(), &r, 0))
                    .collect(),
                reserved: Vec::new(),
            };
        }
    };
    // Bound per partner: reserve room for what this chunk queues.
    let mut wanted: std::collections::BTreeMap<String, u64> = Default::default();
    for slot in &slots {
        if let SendSlot::New(p) = slot {
            *wanted.entry(p.recipient.clone()).or_default() += 1;
        }
    }
    let mut full: std::collections::BTreeMap<String, SendError> = Default::default();
    let mut reserved: Vec<(String, u64)> = Vec::new();
    for (partner, n) in wanted {
        match state.courier.reserve(state, &partner, n) {
            Ok(r) => reserved.push((partner, r)),
            Err(e) => {
                full.insert(partner, e);
            }
        }
    }
    let now = now_ms();
    let mut responses = Vec::with_capacity(slots.len());
    let ticket = {
        let mut txn = state.store.begin();
        let mut wrote = false;
        for slot in slots {
            let response = match slot {
                SendSlot::Refused {
                    recipient,
                    message_id,
                    refusal,
                } => {
                    if !refusal.is_transient() {
                        wrote = true;
                        stage_refused(&mut txn, &recipient, &message_id, &refusal);
                    }
                    rejected_response(message_id, &refusal, 0)
                }
                SendSlot::Existing(id, record) => existing_response(state, &record, &id),
                SendSlot::Sealing => rejected_response(
                    String::new(),
                    &Refusal::retry_later("internal error: message left unsealed"),
                    0,
                ),
                SendSlot::New(p) => {
                    if let Some(SendError::OutboxFull { retry_after_ms, .. }) =
                        full.get(&p.recipient)
                    {
                        let e = full
                            .get(&p.recipient)
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        rejected_response(
                            p.message_id.clone(),
                            &Refusal::new(RejectReason::RateExceeded, e),
                            *retry_after_ms,
                        )
                    } else {
                        match stage_enqueue(&mut txn, &p, now) {
                            Ok(seq) => {
                                wrote = true;
                                SendResponse {
                                    message_id: p.message_id.clone(),
                                    receipt: None,
                                    sent_ledger_index: seq,
                                    envelope_digest: p.digest.to_vec(),
                                    state: DeliveryState::Queued as i32,
                                    rejection: None,
                                }
                            }
                            Err(e) => rejected_response(
                                p.message_id.clone(),
                                &Refusal::retry_later(e.to_string()),
                                0,
                            ),
                        }
                    }
                }
            };
            responses.push(response);
        }
        wrote.then(|| txn.commit())
    };
    StagedSends {
        ticket,
        responses,
        reserved,
    }
}

/// Seals every new request of a `SendStream` chunk in bulk mode (DESIGN §5): payloads under the
/// partner's current HPKE epoch, then one signed batch per partner (at most
/// `delivery.batch_size` envelopes each), every envelope carrying its inclusion path.
fn seal_all(
    state: &NodeState,
    checked: Vec<(String, String, Result<Intake, Refusal>)>,
) -> Vec<SendSlot> {
    let internal = |e: &dyn std::fmt::Display| Refusal::retry_later(format!("internal error: {e}"));
    let mut slots: Vec<SendSlot> = Vec::with_capacity(checked.len());
    let mut sealed: Vec<Option<(Box<Checked>, Envelope)>> = Vec::with_capacity(checked.len());
    {
        let now = now_ms();
        let mut epochs = state.epochs.lock().unwrap_or_else(|e| e.into_inner());
        for (recipient, message_id, r) in checked {
            let slot = match r {
                Err(refusal) => SendSlot::Refused {
                    recipient,
                    message_id,
                    refusal,
                },
                Ok(Intake::Existing(record)) => SendSlot::Existing(message_id, record),
                Ok(Intake::New(c)) => {
                    match epochs.seal(&c.outgoing(state), &c.partner.hpke_key, now) {
                        Ok(envelope) => {
                            sealed.resize_with(slots.len(), || None);
                            sealed.push(Some((c, envelope)));
                            slots.push(SendSlot::Sealing);
                            continue;
                        }
                        Err(e) => SendSlot::Refused {
                            recipient,
                            message_id,
                            refusal: internal(&e),
                        },
                    }
                }
            };
            slots.push(slot);
        }
        epochs.prune(now);
    }
    sealed.resize_with(slots.len(), || None);
    // Batches: consecutive runs per recipient, in request order.
    let mut by_recipient: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, s) in sealed.iter().enumerate() {
        if let Some((c, _)) = s {
            by_recipient
                .entry(c.req.recipient.clone())
                .or_default()
                .push(i);
        }
    }
    let batch_size = state.config.delivery.batch_size.max(1);
    for (recipient, indices) in by_recipient {
        for run in indices.chunks(batch_size) {
            let mut envelopes: Vec<Envelope> = run
                .iter()
                .filter_map(|i| sealed[*i].as_mut().map(|(_, e)| std::mem::take(e)))
                .collect();
            let signed = crate::envelope::bulk::sign_batch(
                &mut envelopes,
                &uuid::Uuid::now_v7().to_string(),
                state.admin(),
                &recipient,
                now_ms(),
                state.identity.signing.signing_key(),
            );
            for (i, envelope) in run.iter().zip(envelopes) {
                let Some((c, _)) = sealed[*i].take() else {
                    continue;
                };
                slots[*i] = match &signed {
                    Ok(()) => SendSlot::New(Box::new(c.prepared(envelope, state))),
                    Err(e) => SendSlot::Refused {
                        recipient: recipient.clone(),
                        message_id: c.message_id.clone(),
                        refusal: internal(e),
                    },
                };
            }
        }
    }
    slots
}

/// A `SendStream` response for a refused request.
fn rejected_response(message_id: String, refusal: &Refusal, retry_after_ms: u64) -> SendResponse {
    SendResponse {
        message_id,
        rejection: Some(SendRejection {
            reason: refusal.reason as i32,
            message: refusal.message.clone(),
            retry_after_ms,
        }),
        ..Default::default()
    }
}

/// One request of a `SendStream` chunk after checking and sealing.
pub(crate) enum SendSlot {
    /// Refused by this node.
    Refused {
        /// Intended recipient.
        recipient: String,
        /// Message id as given.
        message_id: String,
        /// Why.
        refusal: Refusal,
    },
    /// Sent before with this id.
    Existing(String, Box<SentRecord>),
    /// Sealed, to be queued.
    New(Box<Prepared>),
    /// Being sealed (never left in a finished chunk).
    Sealing,
}
