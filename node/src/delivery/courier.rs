//! The courier: background delivery from the outbox, one worker per partner.
//!
//! A worker streams its partner's queue in submission order over one `Exchange.DeliverStream`,
//! with at most `delivery.window` envelopes unanswered. Each answer is recorded before it counts:
//! a verified receipt (single or batch) is ledgered as `RECEIPT_RECEIVED` and the message leaves
//! the outbox; a refusal by the partner moves the message to the dead-letter queue
//! (`DELIVERY_DEAD_LETTERED`). A transient failure (unreachable, timeout, a partner's "retry
//! later") counts an attempt against the oldest unanswered message (`DELIVERY_FAILED`), which
//! waits out an exponential backoff with jitter before the queue moves again, or goes to the
//! dead-letter queue after `delivery.max_attempts` attempts, `delivery.max_age_secs` or its
//! envelope's expiry. Messages after it that the partner may already have accepted are simply
//! sent again: the partner deduplicates them and answers with the original receipt, so the back
//! office sees each message delivered exactly once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use rand_core::RngCore;
use tokio::sync::{Notify, Semaphore, oneshot, watch};

use super::outbound::{SendError, sent_key};
use super::outbox::{self, Queue};
use super::{Refusal, next_chunk};
use crate::envelope::now_ms;
use crate::envelope::receipt::{Expected, check_receipt_body, verify_receipt};
use crate::ledger::entry;
use crate::proto::v1::{
    DeliveryResult, DeliveryState, EntryKind, Envelope, LedgerEntry, OutboxRecord, Receipt,
    RejectReason, SendResponse, SentRecord, delivery_result,
};
use crate::state::NodeState;

/// Outbox records read from the store at a time.
const PAGE: usize = 256;
/// How long an idle partner stream stays open for new messages.
const IDLE: Duration = Duration::from_secs(2);

/// How long a stopping node waits for answers to envelopes already sent to a partner.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// What became of a delivery attempt, for a waiting `Send`.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Delivered; the verified receipt.
    Delivered(Box<Receipt>),
    /// The partner refused it; it is in the dead-letter queue.
    Refused(Refusal),
    /// Given up for another reason (attempts, age, expiry, cancelled).
    DeadLettered(String),
    /// This attempt failed; the message stays queued.
    Failed(String),
    /// The partner's receipt did not verify; the message stays queued.
    BadReceipt(String),
}

#[derive(Debug, Default)]
struct PartnerState {
    queued: u64,
    notify: Arc<Notify>,
    running: bool,
    /// While the head message waits out its backoff: until when.
    backoff_until_ms: i64,
}

#[derive(Debug, Default)]
struct Inner {
    partners: HashMap<String, PartnerState>,
    waiters: HashMap<String, Vec<oneshot::Sender<Outcome>>>,
    stop: Option<watch::Receiver<bool>>,
    workers: Option<tokio::task::JoinSet<()>>,
}

/// Background delivery for one node (see the module docs).
#[derive(Debug, Default)]
pub struct Courier {
    inner: Mutex<Inner>,
}

impl Courier {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the outbox counts and starts a worker for every partner with queued messages;
    /// returns the task that, on shutdown, waits for the workers to stop.
    pub fn start(
        state: &Arc<NodeState>,
        stop: watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, outbox::OutboxError>
    {
        let counts = outbox::counts(&state.store, Queue::Queued)?;
        {
            let mut inner = state.courier.lock();
            inner.stop = Some(stop.clone());
            inner.workers = Some(tokio::task::JoinSet::new());
            for (partner, n) in counts {
                inner.partners.entry(partner).or_default().queued = n;
            }
        }
        let partners: Vec<String> = state.courier.lock().partners.keys().cloned().collect();
        for p in partners {
            state.courier.queued(state, &p);
        }
        let state = state.clone();
        let mut stop = stop;
        Ok(tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            let workers = state.courier.lock().workers.take();
            if let Some(mut workers) = workers {
                while workers.join_next().await.is_some() {}
            }
            Ok(())
        }))
    }

    /// Fails with [`SendError::OutboxFull`] if `partner`'s outbox has no room for `n` more.
    pub fn check_room(&self, state: &NodeState, partner: &str, n: u64) -> Result<(), SendError> {
        let inner = self.lock();
        let queued = inner.partners.get(partner).map_or(0, |p| p.queued);
        full(state, partner, queued, n, inner.partners.get(partner))
    }

    /// Counts `n` messages into `partner`'s outbox if there is room (before they are written).
    pub fn reserve(&self, state: &NodeState, partner: &str, n: u64) -> Result<u64, SendError> {
        let mut inner = self.lock();
        let p = inner.partners.entry(partner.to_owned()).or_default();
        full(state, partner, p.queued, n, Some(p))?;
        p.queued += n;
        Ok(n)
    }

    /// Takes back a reservation whose messages were not written.
    pub fn unreserve(&self, partner: &str, n: u64) {
        if let Some(p) = self.lock().partners.get_mut(partner) {
            p.queued = p.queued.saturating_sub(n);
        }
    }

    /// A dead letter went back into `partner`'s outbox (operator retry; not bounded).
    pub fn requeued(&self, partner: &str) {
        self.lock()
            .partners
            .entry(partner.to_owned())
            .or_default()
            .queued += 1;
    }

    fn removed(&self, partner: &str, n: u64) {
        self.unreserve(partner, n);
    }

    /// Messages waiting, per partner the courier has seen.
    pub fn queue_depths(&self) -> Vec<(String, u64)> {
        self.lock()
            .partners
            .iter()
            .map(|(p, s)| (p.clone(), s.queued))
            .collect()
    }

    /// Messages waiting for `partner`.
    pub fn queued_count(&self, partner: &str) -> u64 {
        self.lock().partners.get(partner).map_or(0, |p| p.queued)
    }

    /// New messages are durable in `partner`'s outbox: wake (or start) its worker.
    pub fn queued(&self, state: &Arc<NodeState>, partner: &str) {
        let mut inner = self.lock();
        let Some(stop) = inner.stop.clone() else {
            return; // not started (tests of the send path alone); start() picks them up
        };
        let p = inner.partners.entry(partner.to_owned()).or_default();
        p.notify.notify_one();
        if p.running {
            return;
        }
        p.running = true;
        let notify = p.notify.clone();
        let (state, partner) = (state.clone(), partner.to_owned());
        if let Some(workers) = inner.workers.as_mut() {
            workers.spawn(async move {
                run(&state, &partner, notify, stop).await;
                if let Some(p) = state.courier.lock().partners.get_mut(&partner) {
                    p.running = false;
                }
            });
        }
    }

    /// Registers interest in the next outcome of `message_id`.
    pub fn wait_for(&self, message_id: &str) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.lock()
            .waiters
            .entry(message_id.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    fn settle(&self, message_id: &str, outcome: &Outcome) {
        let waiters = self.lock().waiters.remove(message_id);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(outcome.clone());
        }
    }

    /// Waits for `waiter`'s outcome (bounded by the node's connect and request timeouts) and
    /// turns it into the answer of a `Send` with `await_delivery`.
    pub async fn outcome(
        &self,
        state: &NodeState,
        waiter: oneshot::Receiver<Outcome>,
        mut response: SendResponse,
    ) -> Result<SendResponse, SendError> {
        let limits = &state.config.limits;
        let wait = Duration::from_secs(limits.connect_timeout_secs + limits.request_timeout_secs);
        let (partner, message_id) = (
            self.partner_of(state, &response.message_id),
            response.message_id.clone(),
        );
        let outcome = match tokio::time::timeout(wait, waiter).await {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => Outcome::Failed("the node is shutting down".into()),
            Err(_) => Outcome::Failed(format!("no outcome within {}s", wait.as_secs())),
        };
        match outcome {
            Outcome::Delivered(receipt) => {
                response.receipt = Some(*receipt);
                response.state = DeliveryState::Delivered as i32;
                Ok(response)
            }
            Outcome::Refused(refusal) => Err(SendError::PartnerRefused {
                partner,
                message_id,
                refusal,
            }),
            Outcome::DeadLettered(detail) | Outcome::Failed(detail) => {
                Err(SendError::Unreachable {
                    partner,
                    message_id,
                    detail,
                })
            }
            Outcome::BadReceipt(detail) => Err(SendError::BadReceipt {
                partner,
                message_id,
                detail,
            }),
        }
    }

    fn partner_of(&self, state: &NodeState, message_id: &str) -> String {
        outbox::locate(&state.store, message_id)
            .ok()
            .flatten()
            .map(|l| l.sent.recipient)
            .unwrap_or_default()
    }
}

fn full(
    state: &NodeState,
    partner: &str,
    queued: u64,
    n: u64,
    p: Option<&PartnerState>,
) -> Result<(), SendError> {
    let limit = state.config.delivery.max_outbox_per_partner;
    if queued + n <= limit {
        return Ok(());
    }
    // A failing partner: after its backoff; a busy one: about the time to deliver a window.
    let backoff = p.map_or(0, |p| p.backoff_until_ms - now_ms()).max(0);
    let retry_after_ms = u64::try_from(backoff).unwrap_or(0).max(1000);
    Err(SendError::OutboxFull {
        partner: partner.to_owned(),
        queued,
        limit,
        retry_after_ms,
    })
}

/// The stored receipt of a delivered message (single receipt, or the batch receipt in its
/// `RECEIPT_RECEIVED` entry).
pub fn stored_receipt(state: &NodeState, record: &SentRecord) -> Option<Receipt> {
    if let Some(r) = &record.receipt {
        return Some(r.clone());
    }
    if record.state != DeliveryState::Delivered as i32 {
        return None;
    }
    let leaf = state.store.entry(record.receipt_ledger_index).ok()??;
    entry::parse(&leaf).ok()?.receipt
}

/// One envelope sent on the stream and not yet answered.
struct InFlight {
    seq: u64,
    record: OutboxRecord,
    sent: SentRecord,
    digest: [u8; 32],
}

/// The partner's worker: runs until shutdown, or until its queue is empty.
async fn run(
    state: &Arc<NodeState>,
    partner: &str,
    notify: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let head = match outbox::page(&state.store, Queue::Queued, partner, None, 1) {
            Ok(mut page) => page.pop(),
            Err(e) => {
                tracing::error!(partner, error = %e, "cannot read the outbox");
                None
            }
        };
        let Some((seq, head)) = head else {
            // Empty: wait for new messages (or stop).
            tokio::select! {
                _ = notify.notified() => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        let wait_ms = head.next_attempt_at_ms - now_ms();
        if wait_ms > 0 {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
                _ = notify.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        let run = deliver_run(state, partner, &notify, seq, head, stop.clone());
        tokio::pin!(run);
        let stopping = tokio::select! {
            () = &mut run => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            // Graceful stop: the feeder sends nothing more; envelopes already on the wire get
            // their receipts recorded (bounded), so the partner and this ledger agree.
            if tokio::time::timeout(SHUTDOWN_DRAIN, run).await.is_err() {
                tracing::warn!(
                    partner,
                    "deliveries still unanswered at shutdown; they are retried after restart"
                );
            }
            return;
        }
    }
}

/// Why a delivery run stopped before the queue was drained.
struct RunFailure {
    /// What went wrong (never payload content).
    detail: String,
    /// The partner's receipt did not verify.
    bad_receipt: bool,
}

impl RunFailure {
    fn new(detail: impl Into<String>) -> Self {
        RunFailure {
            detail: detail.into(),
            bad_receipt: false,
        }
    }
}

/// One stream's worth of delivery, from the head of the queue on. A failure counts as an
/// attempt at the oldest unanswered message (or the head, if nothing was sent yet).
async fn deliver_run(
    state: &Arc<NodeState>,
    partner: &str,
    notify: &Arc<Notify>,
    head_seq: u64,
    head: OutboxRecord,
    stop: watch::Receiver<bool>,
) {
    let in_flight: Arc<Mutex<BTreeMap<u64, InFlight>>> = Default::default();
    let Err(failure) = stream_run(state, partner, notify, &in_flight, stop).await else {
        return;
    };
    let oldest = in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .next()
        .map(|(s, f)| (*s, f.record.clone()));
    let (seq, record) = oldest.unwrap_or((head_seq, head));
    fail(
        state,
        partner,
        seq,
        record,
        &failure.detail,
        failure.bad_receipt,
    )
    .await;
}

/// Streams the partner's queue until it stays empty (`Ok`) or something fails.
async fn stream_run(
    state: &Arc<NodeState>,
    partner: &str,
    notify: &Arc<Notify>,
    in_flight: &Arc<Mutex<BTreeMap<u64, InFlight>>>,
    stop: watch::Receiver<bool>,
) -> Result<(), RunFailure> {
    let me = state.admin().to_owned();
    let party = state
        .agreements()
        .partner(&me, partner, now_ms())
        .cloned()
        .ok_or_else(|| RunFailure::new(format!("no agreement in force with {partner}")))?;
    let mut client = state
        .peers
        .client(&party)
        .map_err(|e| RunFailure::new(e.to_string()))?;
    let window = state.config.delivery.window;
    let permits = Arc::new(Semaphore::new(window));
    let by_id: Arc<Mutex<HashMap<String, u64>>> = Default::default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Envelope>(window.min(PAGE));
    let feeder = tokio::spawn(feed(
        state.clone(),
        partner.to_owned(),
        notify.clone(),
        tx,
        permits.clone(),
        in_flight.clone(),
        by_id.clone(),
        stop,
    ));
    let _abort_feeder = AbortOnDrop(feeder);
    let timeout = Duration::from_secs(
        state.config.limits.connect_timeout_secs + state.config.limits.request_timeout_secs,
    );
    let no_answer = || {
        // Retry on a fresh connection, not on the one that just stayed silent.
        state.peers.forget(partner);
        RunFailure::new(format!("no answer within {}s", timeout.as_secs()))
    };
    let mut results = tokio::time::timeout(
        timeout,
        client.deliver_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| no_answer())?
    .map_err(|status| RunFailure::new(status_text(&status)))?
    .into_inner();
    loop {
        let waiting = !in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        // Answers that have arrived, as one batch; bounded wait while envelopes are unanswered.
        let next = if waiting {
            tokio::time::timeout(timeout, next_chunk(&mut results, PAGE))
                .await
                .map_err(|_| no_answer())?
        } else {
            next_chunk(&mut results, PAGE).await
        };
        let Some((batch, broken)) = next else {
            let unanswered = !in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
            return if unanswered {
                Err(RunFailure::new("the partner closed the stream early"))
            } else {
                Ok(())
            };
        };
        let (transient, resolved) =
            record_results(state, partner, &party, in_flight, &by_id, batch).await;
        // Let the feeder send as many more as were answered.
        permits.add_permits(resolved);
        if let Some((detail, bad_receipt)) = transient {
            return Err(RunFailure {
                detail,
                bad_receipt,
            });
        }
        if let Some(status) = broken {
            return Err(RunFailure::new(status_text(&status)));
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The code, message and causes of a failed call. A transport failure's message is only
/// "transport error": what actually went wrong (refused, reset, connect timed out, TLS) is in
/// its sources, and the operator reading the outbox's `last_error` needs it.
pub(crate) fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let cause = e.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = e.source();
    }
    text
}

/// Feeds the partner's queue into the stream in order, at most `window` unanswered; closes the
/// stream when the queue stays empty for [`IDLE`], or at shutdown (`stop`): what is on the
/// wire is then still answered and recorded.
#[allow(clippy::too_many_arguments)]
async fn feed(
    state: Arc<NodeState>,
    partner: String,
    notify: Arc<Notify>,
    tx: tokio::sync::mpsc::Sender<Envelope>,
    permits: Arc<Semaphore>,
    in_flight: Arc<Mutex<BTreeMap<u64, InFlight>>>,
    by_id: Arc<Mutex<HashMap<String, u64>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut after: Option<u64> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let page = match outbox::page(&state.store, Queue::Queued, &partner, after, PAGE) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(partner, error = %e, "cannot read the outbox");
                return;
            }
        };
        if page.is_empty() {
            tokio::select! {
                _ = notify.notified() => continue,
                _ = tokio::time::sleep(IDLE) => return,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        for (seq, record) in page {
            after = Some(seq);
            let sent = match state.store.get(&sent_key(&record.message_id)) {
                Ok(Some(b)) => SentRecord::decode(b.as_slice()).ok(),
                _ => None,
            };
            let Some(mut sent) = sent else {
                tracing::error!(partner, message_id = %record.message_id, "outbox entry without its sent record; skipped");
                continue;
            };
            let Some(envelope) = sent.envelope.clone() else {
                continue;
            };
            let permit = tokio::select! {
                p = permits.acquire() => p,
                _ = stop.wait_for(|s| *s) => return,
            };
            let Ok(permit) = permit else {
                return;
            };
            if *stop.borrow() {
                return;
            }
            permit.forget();
            let digest = crate::envelope::envelope_digest(&envelope);
            sent.envelope = Some(envelope.clone());
            by_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(record.message_id.clone(), seq);
            in_flight.lock().unwrap_or_else(|e| e.into_inner()).insert(
                seq,
                InFlight {
                    seq,
                    record,
                    sent,
                    digest,
                },
            );
            if tx.send(envelope).await.is_err() {
                return;
            }
        }
    }
}

/// What one answer settles.
enum Settled {
    Delivered {
        flight: InFlight,
        receipt_at: usize,
        single: bool,
    },
    Dead {
        flight: InFlight,
        refusal: Refusal,
    },
}

/// Records a batch of answers in one ledger transaction and settles their waiters. Returns the
/// detail of a transient failure, if one answer says to retry later (or a receipt is invalid),
/// and how many envelopes the batch settled.
async fn record_results(
    state: &Arc<NodeState>,
    partner: &str,
    party: &crate::agreement::Party,
    in_flight: &Mutex<BTreeMap<u64, InFlight>>,
    by_id: &Mutex<HashMap<String, u64>>,
    batch: Vec<DeliveryResult>,
) -> (Option<(String, bool)>, usize) {
    let me = state.admin().to_owned();
    let take = |id: &str| -> Option<InFlight> {
        let seq = by_id.lock().unwrap_or_else(|e| e.into_inner()).remove(id)?;
        in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq)
    };
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut settled: Vec<Settled> = Vec::new();
    let mut transient: Option<String> = None;
    let mut bad_receipt: Option<(String, String)> = None;
    for result in batch {
        match result.outcome {
            Some(delivery_result::Outcome::Receipt(receipt)) => {
                let body = match verify_receipt(&receipt, &party.verifying_key, partner) {
                    Ok(b) => b,
                    Err(e) => {
                        bad_receipt.get_or_insert((result.message_id.clone(), e.to_string()));
                        continue;
                    }
                };
                // The signature is verified once above; each message it names is then checked
                // against what was sent (sender, recipient, id, envelope digest).
                let single = body.items.is_empty();
                let candidates: Vec<(String, Option<Vec<u8>>)> = if single {
                    vec![(body.message_id.clone(), None)]
                } else {
                    if !body.message_id.is_empty() || !body.envelope_digest.is_empty() {
                        bad_receipt.get_or_insert((
                            result.message_id.clone(),
                            "batch receipt also names a message outside its items".into(),
                        ));
                        continue;
                    }
                    let mut names = std::collections::HashSet::new();
                    if body
                        .items
                        .iter()
                        .any(|i| !names.insert(i.message_id.as_str()))
                    {
                        bad_receipt.get_or_insert((
                            result.message_id.clone(),
                            "batch receipt names a message twice".into(),
                        ));
                        continue;
                    }
                    body.items
                        .iter()
                        .map(|i| (i.message_id.clone(), Some(i.envelope_digest.clone())))
                        .collect()
                };
                let at = receipts.len();
                let mut any = false;
                for (id, item_digest) in candidates {
                    let known = by_id
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&id)
                        .copied();
                    let Some(seq) = known else { continue };
                    let digest = in_flight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&seq)
                        .map(|f| f.digest);
                    let Some(digest) = digest else { continue };
                    let checked = match &item_digest {
                        None => check_receipt_body(
                            &body,
                            &Expected {
                                message_id: &id,
                                sender: &me,
                                recipient: partner,
                                envelope_digest: &digest,
                            },
                        )
                        .map_err(|e| e.to_string()),
                        Some(d) if body.sender != me || body.recipient != partner => Err(format!(
                            "batch receipt is from {} for {}, expected {partner} for {me} ({} bytes digest)",
                            body.recipient,
                            body.sender,
                            d.len()
                        )),
                        Some(d) if d.as_slice() != digest.as_slice() => Err(format!(
                            "batch receipt states envelope digest {} for {id}, expected {}",
                            hex::encode(d),
                            hex::encode(digest)
                        )),
                        Some(_) => Ok(()),
                    };
                    if let Err(e) = checked {
                        bad_receipt.get_or_insert((id.clone(), e));
                        continue;
                    }
                    if let Some(flight) = take(&id) {
                        any = true;
                        settled.push(Settled::Delivered {
                            flight,
                            receipt_at: at,
                            single,
                        });
                    }
                }
                if any {
                    receipts.push(receipt);
                }
            }
            Some(delivery_result::Outcome::Rejection(r)) => {
                let reason = RejectReason::try_from(r.reason).unwrap_or(RejectReason::Unspecified);
                let refusal = Refusal::new(reason, r.message);
                if refusal.is_transient() {
                    transient.get_or_insert(format!(
                        "partner {partner} asked to retry {}: {}",
                        result.message_id, refusal.message
                    ));
                } else if let Some(flight) = take(&result.message_id) {
                    settled.push(Settled::Dead { flight, refusal });
                }
            }
            None => {
                transient.get_or_insert(format!("partner {partner} sent an empty result"));
            }
        }
    }
    let resolved = settled.len();
    if !settled.is_empty() {
        let now = now_ms();
        let ticket = {
            let mut txn = state.store.begin();
            let mut receipt_index = vec![None; receipts.len()];
            let mut problem = None;
            for s in &settled {
                let r = match s {
                    Settled::Delivered {
                        flight,
                        receipt_at,
                        single,
                    } => {
                        let receipt = &receipts[*receipt_at];
                        crate::telemetry::message_sent(
                            partner,
                            &flight.record.agreement_id,
                            &flight.record.message_type,
                            u64::try_from(now - flight.record.enqueued_at_ms)
                                .ok()
                                .map(Duration::from_millis),
                        );
                        let index = if *single {
                            entry::append(
                                &mut txn,
                                &entry::about_receipt(
                                    EntryKind::ReceiptReceived,
                                    receipt,
                                    &flight.digest,
                                    &flight.record.message_id,
                                    partner,
                                ),
                            )
                        } else {
                            *receipt_index[*receipt_at].get_or_insert_with(|| {
                                entry::append(
                                    &mut txn,
                                    &entry::about_receipt(
                                        EntryKind::ReceiptReceived,
                                        receipt,
                                        &[0; 32],
                                        "",
                                        partner,
                                    ),
                                )
                            })
                        };
                        let sent = SentRecord {
                            envelope: None,
                            receipt: single.then(|| receipt.clone()),
                            receipt_ledger_index: index,
                            state: DeliveryState::Delivered as i32,
                            ..flight.sent.clone()
                        };
                        txn.put(sent_key(&flight.record.message_id), sent.encode_to_vec())
                            .err()
                            .map(|e| e.to_string())
                            .or_else(|| {
                                outbox::stage_remove(&mut txn, Queue::Queued, partner, flight.seq)
                                    .err()
                                    .map(|e| e.to_string())
                            })
                    }
                    Settled::Dead { flight, refusal } => dead_letter(
                        &mut txn,
                        partner,
                        flight.seq,
                        &flight.record,
                        &flight.sent,
                        &flight.digest,
                        refusal.reason,
                        &format!("refused by {partner}: {}", refusal.message),
                        now,
                    ),
                };
                if let Some(e) = r {
                    problem.get_or_insert(e);
                }
            }
            if let Some(e) = problem {
                tracing::error!(partner, error = %e, "cannot record delivery results");
                drop(txn);
                return (Some((format!("internal error: {e}"), false)), 0);
            }
            txn.commit()
        };
        if let Err(e) = ticket.durable().await {
            tracing::error!(partner, error = %e, "cannot record delivery results");
            return (Some((format!("internal error: {e}"), false)), 0);
        }
        state.courier.removed(partner, settled.len() as u64);
        for s in settled {
            match s {
                Settled::Delivered {
                    flight, receipt_at, ..
                } => state.courier.settle(
                    &flight.record.message_id,
                    &Outcome::Delivered(Box::new(receipts[receipt_at].clone())),
                ),
                Settled::Dead { flight, refusal } => {
                    tracing::warn!(partner, message_id = %flight.record.message_id, reason = refusal.reason.as_str_name(), detail = %refusal.message, "partner refused; dead-lettered");
                    state
                        .courier
                        .settle(&flight.record.message_id, &Outcome::Refused(refusal));
                }
            }
        }
    }
    if let Some((_, detail)) = bad_receipt {
        let detail = format!("invalid receipt from {partner}: {detail}");
        return (Some((detail, true)), resolved);
    }
    (transient.map(|t| (t, false)), resolved)
}

/// Stages the move of a message to the dead-letter queue; returns an error text on failure.
#[allow(clippy::too_many_arguments)]
fn dead_letter(
    txn: &mut crate::ledger::Txn<'_>,
    partner: &str,
    seq: u64,
    record: &OutboxRecord,
    sent: &SentRecord,
    digest: &[u8; 32],
    reason: RejectReason,
    why: &str,
    now: i64,
) -> Option<String> {
    crate::telemetry::message_rejected_outbound(
        partner,
        &record.agreement_id,
        &record.message_type,
        reason.as_str_name(),
    );
    entry::append(
        txn,
        &entry::with_refusal(
            LedgerEntry {
                kind: EntryKind::DeliveryDeadLettered as i32,
                recorded_at_ms: now,
                envelope_digest: digest.to_vec(),
                peer: partner.to_owned(),
                message_id: record.message_id.clone(),
                ..Default::default()
            },
            reason,
            why,
        ),
    );
    let sent = SentRecord {
        state: DeliveryState::DeadLetter as i32,
        ..sent.clone()
    };
    let dead = outbox::dead(record.clone(), why);
    txn.put(sent_key(&record.message_id), sent.encode_to_vec())
        .err()
        .map(|e| e.to_string())
        .or_else(|| {
            outbox::stage_remove(txn, Queue::Queued, partner, seq)
                .err()
                .map(|e| e.to_string())
        })
        .or_else(|| {
            outbox::stage_put(txn, Queue::Dead, seq, &dead)
                .err()
                .map(|e| e.to_string())
        })
}

/// A failed attempt at `partner`'s message `seq`: recorded, then either a backoff or, past the
/// limits, the dead-letter queue. A waiting `Send` hears that the cause was an invalid receipt
/// if `bad_receipt`.
async fn fail(
    state: &Arc<NodeState>,
    partner: &str,
    seq: u64,
    record: OutboxRecord,
    why: &str,
    bad_receipt: bool,
) {
    let settings = &state.config.delivery;
    let now = now_ms();
    let attempts = record.attempts + 1;
    let age_ms = now - record.enqueued_at_ms;
    let give_up = if attempts >= settings.max_attempts {
        Some(format!("gave up after {attempts} attempts; last: {why}"))
    } else if age_ms > i64::try_from(settings.max_age_secs * 1000).unwrap_or(i64::MAX) {
        Some(format!("gave up after {} s; last: {why}", age_ms / 1000))
    } else if record.expires_at_ms != 0 && record.expires_at_ms <= now {
        Some(format!("envelope expired before delivery; last: {why}"))
    } else {
        None
    };
    let sent = match state.store.get(&sent_key(&record.message_id)) {
        Ok(Some(b)) => SentRecord::decode(b.as_slice()).unwrap_or_default(),
        _ => SentRecord::default(),
    };
    let digest = <[u8; 32]>::try_from(sent.envelope_digest.as_slice()).unwrap_or([0; 32]);
    let backoff_ms = backoff(settings, attempts);
    let ticket = {
        let mut txn = state.store.begin();
        entry::append(
            &mut txn,
            &entry::with_refusal(
                LedgerEntry {
                    kind: EntryKind::DeliveryFailed as i32,
                    recorded_at_ms: now,
                    envelope_digest: digest.to_vec(),
                    peer: partner.to_owned(),
                    message_id: record.message_id.clone(),
                    ..Default::default()
                },
                RejectReason::Unspecified,
                &format!("attempt {attempts}: {why}"),
            ),
        );
        let problem = match &give_up {
            Some(g) => dead_letter(
                &mut txn,
                partner,
                seq,
                &record,
                &sent,
                &digest,
                RejectReason::Unspecified,
                g,
                now,
            ),
            None => {
                let retry = OutboxRecord {
                    attempts,
                    next_attempt_at_ms: now + backoff_ms,
                    last_error: why.chars().take(1024).collect(),
                    ..record.clone()
                };
                outbox::stage_put(&mut txn, Queue::Queued, seq, &retry)
                    .err()
                    .map(|e| e.to_string())
            }
        };
        if let Some(e) = problem {
            tracing::error!(partner, error = %e, "cannot record a failed delivery");
            return;
        }
        txn.commit()
    };
    if let Err(e) = ticket.durable().await {
        tracing::error!(partner, error = %e, "cannot record a failed delivery");
        return;
    }
    match give_up {
        Some(g) => {
            tracing::warn!(partner, message_id = %record.message_id, detail = %g, "dead-lettered");
            state.courier.removed(partner, 1);
            state
                .courier
                .settle(&record.message_id, &Outcome::DeadLettered(g));
        }
        None => {
            tracing::warn!(partner, message_id = %record.message_id, attempt = attempts, retry_in_ms = backoff_ms, error = why, "delivery failed; will retry");
            if let Some(p) = state.courier.lock().partners.get_mut(partner) {
                p.backoff_until_ms = now + backoff_ms;
            }
            let outcome = if bad_receipt {
                Outcome::BadReceipt(why.to_owned())
            } else {
                Outcome::Failed(why.to_owned())
            };
            state.courier.settle(&record.message_id, &outcome);
        }
    }
}

/// Delay before attempt `attempts + 1`: exponential, capped, with jitter in [half, full].
fn backoff(settings: &crate::config::DeliverySettings, attempts: u32) -> i64 {
    let exp = settings
        .backoff_initial_ms
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
        .min(settings.backoff_max_ms);
    let half = exp / 2;
    let jitter = if half == 0 {
        0
    } else {
        u64::from(rand_core::OsRng.next_u32()) % (half + 1)
    };
    i64::try_from(half + jitter).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let s = crate::config::DeliverySettings {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..Default::default()
        };
        for _ in 0..100 {
            let b1 = backoff(&s, 1);
            assert!((50..=100).contains(&b1), "{b1}");
            let b3 = backoff(&s, 3);
            assert!((200..=400).contains(&b3), "{b3}");
            let b20 = backoff(&s, 20);
            assert!((500..=1000).contains(&b20), "{b20}");
        }
        // Jitter: not every delay alike.
        let seen: std::collections::HashSet<i64> = (0..50).map(|_| backoff(&s, 4)).collect();
        assert!(seen.len() > 1);
    }
}
