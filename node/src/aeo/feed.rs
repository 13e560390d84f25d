//! Publisher side of the mirror feed (`Exchange.SubscribeAeo`): a signed snapshot of the own
//! registry as disclosed to the partner (unless its mirror can be brought up to date with a
//! delta), then one signed delta per committed change as soon as it is committed, and a signed
//! heartbeat while nothing changes. Snapshots and deltas sent are on the ledger before they go.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use super::statement::{self, Disclosure};
use super::store::AeoStore;
use super::{AeoError, journal};
use crate::proto::v1::{
    AeoBatchHeader, AeoBatchKind, AeoLedgerRecord, AeoSignedBatch, AeoSubscribeRequest, EntryKind,
    LedgerEntry,
};
use crate::state::NodeState;

/// Batches buffered per subscriber before the publisher waits for it (backpressure).
const FEED_BUFFER: usize = 64;

/// What one subscription discloses, to whom, signed by whom.
#[derive(Clone)]
pub struct Publisher {
    /// This administration.
    pub me: String,
    /// The subscribing partner.
    pub partner: String,
    /// The agreement.
    pub agreement_id: String,
    /// Its digest.
    pub agreement_digest: Vec<u8>,
    /// What the agreement lets us disclose to the partner.
    pub disclosure: Disclosure,
    /// Our signing key.
    pub key: SigningKey,
    /// Records per snapshot part.
    pub part_size: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("partner", &self.partner)
            .field("agreement_id", &self.agreement_id)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    fn header(&self, kind: AeoBatchKind, registry_id: &str, now_ms: i64) -> AeoBatchHeader {
        AeoBatchHeader {
            publisher: self.me.clone(),
            recipient: self.partner.clone(),
            agreement_id: self.agreement_id.clone(),
            agreement_digest: self.agreement_digest.clone(),
            kind: kind as i32,
            registry_id: registry_id.to_owned(),
            created_at_ms: now_ms,
            ..Default::default()
        }
    }

    /// Signs a full snapshot of the registry, handing each batch to `sink` in order (parts, then
    /// SNAPSHOT_END). Stops early, returning `Ok(None)`, when `sink` returns false. Returns the
    /// SNAPSHOT_END batch and the version.
    pub fn snapshot(
        &self,
        store: &AeoStore,
        now_ms: i64,
        mut sink: impl FnMut(AeoSignedBatch) -> bool,
    ) -> Result<Option<(AeoSignedBatch, u64, u64)>, AeoError> {
        let (info, records) = store.registry_snapshot()?;
        let snapshot_id = uuid::Uuid::now_v7().to_string();
        let mut roots = Vec::new();
        let mut count = 0u64;
        let mut leaves = Vec::with_capacity(self.part_size);
        let mut records = records.peekable();
        while records.peek().is_some() {
            leaves.clear();
            for record in records.by_ref().take(self.part_size) {
                leaves.push(self.disclosure.disclose(&record?, now_ms).encode_to_vec());
            }
            count += leaves.len() as u64;
            let mut header = self.header(AeoBatchKind::Snapshot, &info.registry_id, now_ms);
            header.version_to = info.version;
            header.sequence = roots.len() as u64;
            header.snapshot_id = snapshot_id.clone();
            let batch = statement::sign(header, std::mem::take(&mut leaves), &self.key);
            roots.push(statement::root_of(&batch.leaves).to_vec());
            if !sink(batch) {
                return Ok(None);
            }
        }
        let mut header = self.header(AeoBatchKind::SnapshotEnd, &info.registry_id, now_ms);
        header.version_to = info.version;
        header.sequence = roots.len() as u64;
        header.snapshot_id = snapshot_id;
        header.record_count = count;
        Ok(Some((
            statement::sign(header, roots, &self.key),
            info.version,
            count,
        )))
    }

    /// A signed delta bringing a mirror at `from` up to date, `Ok(None)` if a snapshot is needed
    /// instead (change log too short, too many changes, or `from` ahead of the registry). A
    /// mirror already current gets a heartbeat.
    pub fn delta(
        &self,
        store: &AeoStore,
        from: u64,
        max: usize,
        now_ms: i64,
    ) -> Result<Option<AeoSignedBatch>, AeoError> {
        let registry_id = store.registry_info()?.registry_id;
        let Some((to, records)) = store.changes_since(from, max)? else {
            return Ok(None);
        };
        if to == from {
            return Ok(Some(self.heartbeat(&registry_id, to, now_ms)));
        }
        let leaves = records
            .iter()
            .map(|r| self.disclosure.disclose(r, now_ms).encode_to_vec())
            .collect();
        let mut header = self.header(AeoBatchKind::Delta, &registry_id, now_ms);
        header.version_from = from;
        header.version_to = to;
        Ok(Some(statement::sign(header, leaves, &self.key)))
    }

    /// A signed heartbeat: the registry is at `version` now.
    pub fn heartbeat(&self, registry_id: &str, version: u64, now_ms: i64) -> AeoSignedBatch {
        let mut header = self.header(AeoBatchKind::Heartbeat, registry_id, now_ms);
        header.version_from = version;
        header.version_to = version;
        statement::sign(header, Vec::new(), &self.key)
    }
}

/// The ledger entry of a batch sent to or received from `peer`.
pub fn ledger_entry(
    kind: EntryKind,
    peer: &str,
    batch: &AeoSignedBatch,
    detail: String,
) -> LedgerEntry {
    let header = AeoBatchHeader::decode(batch.header.as_slice()).unwrap_or_default();
    LedgerEntry {
        kind: kind as i32,
        recorded_at_ms: crate::envelope::now_ms(),
        peer: peer.to_owned(),
        agreement_id: header.agreement_id.clone(),
        agreement_digest: header.agreement_digest.clone(),
        detail,
        aeo: Some(AeoLedgerRecord {
            batch_header: batch.header.clone(),
            batch_signature: batch.signature.clone(),
            version_from: header.version_from,
            version_to: header.version_to,
            // SNAPSHOT_END's leaves are part roots; its record count is in the header.
            record_count: if header.kind == AeoBatchKind::SnapshotEnd as i32 {
                header.record_count
            } else {
                header.leaf_count
            },
            digest: header.request_digest,
            found_count: 0,
        }),
        ..Default::default()
    }
}

/// Checks that `partner` may subscribe under the agreement it names and builds its publisher.
pub fn publisher_for(
    state: &NodeState,
    partner: &str,
    request: &AeoSubscribeRequest,
) -> Result<Publisher, Status> {
    let me = state.admin();
    let now = crate::envelope::now_ms();
    let set = state.agreements();
    let agreement = set
        .active(&request.agreement_id, now)
        .map_err(|e| Status::permission_denied(e.to_string()))?;
    if agreement.party(partner).is_none() {
        return Err(Status::permission_denied(format!(
            "agreement {} does not name {partner}",
            request.agreement_id
        )));
    }
    let flow = statement::answer_flow(agreement, me, partner).ok_or_else(|| {
        Status::permission_denied(format!(
            "agreement {} has no {} flow {me} -> {partner}: no registry to mirror",
            request.agreement_id,
            statement::ANSWER_FLOW
        ))
    })?;
    Ok(Publisher {
        me: me.to_owned(),
        partner: partner.to_owned(),
        agreement_id: agreement.id().to_owned(),
        agreement_digest: agreement.digest.to_vec(),
        disclosure: Disclosure::of_flow(flow),
        key: state.identity.signing.signing_key().clone(),
        part_size: state.config.aeo.snapshot_part,
    })
}

/// Serves one subscription: runs until the partner goes away, the agreement leaves force or the
/// node stops. Batches go out through `tx`.
pub async fn serve(
    state: Arc<NodeState>,
    publisher: Publisher,
    request: AeoSubscribeRequest,
    tx: FeedSender,
) {
    let superseded = state.aeo.serve_feed(&publisher.partner);
    if let Err(e) = run(&state, &publisher, &request, &tx, &superseded).await {
        tracing::warn!(partner = %publisher.partner, "AEO feed ended: {e}");
        let _ = tx.send(Err(e.to_status())).await;
    }
}

/// Set when a newer subscription of the same partner replaced this one.
type Superseded = Arc<std::sync::atomic::AtomicBool>;

fn is_superseded(flag: &Superseded) -> bool {
    flag.load(std::sync::atomic::Ordering::SeqCst)
}

async fn run(
    state: &Arc<NodeState>,
    publisher: &Publisher,
    request: &AeoSubscribeRequest,
    tx: &FeedSender,
    superseded: &Superseded,
) -> Result<(), AeoError> {
    let settings = &state.config.aeo;
    let heartbeat = Duration::from_secs(settings.heartbeat_secs);
    let mut versions = state.aeo.version.subscribe();
    // An administration that has not imported a registry has nothing to mirror: until its first
    // change the feed sends only heartbeats at version 0 (no snapshot, no ledger entry).
    while *versions.borrow_and_update() == 0 {
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(heartbeat) => {
                let id = state.aeo.store.registry_info()?.registry_id;
                let beat = publisher.heartbeat(&id, 0, crate::envelope::now_ms());
                if tx.send(Ok(beat)).await.is_err() {
                    return Ok(());
                }
            }
            _ = tx.closed() => return Ok(()),
        }
    }
    let info = state.aeo.store.registry_info()?;
    // Deltas only to a mirror of this very registry, filled under this agreement version.
    let can_delta = !request.snapshot
        && request.registry_id == info.registry_id
        && request.agreement_digest == publisher.agreement_digest
        && !request.registry_id.is_empty();
    let mut version = if can_delta {
        match send_delta(state, publisher, request.version, tx).await? {
            Some(v) => v,
            None => send_snapshot(state, publisher, tx, superseded).await?,
        }
    } else {
        send_snapshot(state, publisher, tx, superseded).await?
    };
    loop {
        tokio::select! {
            changed = versions.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(heartbeat) => {}
            _ = tx.closed() => return Ok(()),
        }
        if is_superseded(superseded) {
            return Err(AeoError::Partner(format!(
                "{} subscribed again; this feed ends",
                publisher.partner
            )));
        }
        if state
            .agreements()
            .active_with_digest(
                &publisher.agreement_id,
                &publisher.agreement_digest,
                crate::envelope::now_ms(),
            )
            .is_err()
        {
            return Err(AeoError::NotAllowed(format!(
                "agreement {} is no longer in force in the version the feed started under",
                publisher.agreement_id
            )));
        }
        version = match send_delta(state, publisher, version, tx).await? {
            Some(v) => v,
            None => send_snapshot(state, publisher, tx, superseded).await?,
        };
    }
}

/// Sends what brings a mirror at `from` up to date (a delta, ledgered first, or a heartbeat);
/// `None` if a snapshot is needed. Returns the version the mirror is then at.
async fn send_delta(
    state: &Arc<NodeState>,
    publisher: &Publisher,
    from: u64,
    tx: &FeedSender,
) -> Result<Option<u64>, AeoError> {
    let (p, store) = (publisher.clone(), state.aeo.store.clone());
    let max = state.config.aeo.max_delta;
    let batch =
        super::blocking(move || p.delta(&store, from, max, crate::envelope::now_ms())).await?;
    let Some(batch) = batch else {
        return Ok(None);
    };
    let header = AeoBatchHeader::decode(batch.header.as_slice()).unwrap_or_default();
    if header.kind == AeoBatchKind::Delta as i32 {
        let detail = format!(
            "{} changed operators, versions {}..{}",
            header.leaf_count, header.version_from, header.version_to
        );
        let entry = ledger_entry(EntryKind::AeoDeltaSent, &publisher.partner, &batch, detail);
        journal::record(state, &entry).await?;
    }
    let _ = tx.send(Ok(batch)).await;
    Ok(Some(header.version_to))
}

/// Streams a full snapshot (parts signed on the blocking pool as the partner reads them),
/// ledgers it, then sends its SNAPSHOT_END. Returns the snapshot's version.
async fn send_snapshot(
    state: &Arc<NodeState>,
    publisher: &Publisher,
    tx: &FeedSender,
    superseded: &Superseded,
) -> Result<u64, AeoError> {
    let (p, store, parts) = (publisher.clone(), state.aeo.store.clone(), tx.clone());
    let superseded = superseded.clone();
    let end = super::blocking(move || {
        p.snapshot(&store, crate::envelope::now_ms(), |batch| {
            !is_superseded(&superseded) && parts.blocking_send(Ok(batch)).is_ok()
        })
    })
    .await?;
    let Some((end, version, count)) = end else {
        return Err(AeoError::Partner(
            "the partner left during the snapshot".into(),
        ));
    };
    let detail = format!("snapshot of {count} operators at version {version}");
    let entry = ledger_entry(EntryKind::AeoSnapshotSent, &publisher.partner, &end, detail);
    journal::record(state, &entry).await?;
    let _ = tx.send(Ok(end)).await;
    tracing::info!(partner = %publisher.partner, count, version, "AEO snapshot sent");
    Ok(version)
}

/// Sending half of a subscription's stream.
pub type FeedSender = mpsc::Sender<Result<AeoSignedBatch, Status>>;

/// The channel a subscription streams through.
pub fn channel() -> (FeedSender, mpsc::Receiver<Result<AeoSignedBatch, Status>>) {
    mpsc::channel(FEED_BUFFER)
}
