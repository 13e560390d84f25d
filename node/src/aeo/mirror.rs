//! Subscriber side of the mirror feed: one task per MRA partner keeps a local mirror of the
//! partner's registry. [`MirrorSync`] checks and applies each batch the partner sends (signature,
//! parties, agreement, disclosure, sequence); any gap, out-of-order or foreign batch makes it
//! ask for a resync instead of applying anything.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use prost::Message;

use super::feed::ledger_entry;
use super::statement::{self, Disclosure, StatementError};
use super::store::{AeoStore, MirrorRows};
use super::{AeoError, journal};
use crate::ledger::proof::Hash;
use crate::proto::v1::{
    AeoBatchHeader, AeoBatchKind, AeoMirrorMeta, AeoMirrorRecord, AeoSignedBatch, AeoStatus,
    AeoStatusResponse, AeoSubscribeRequest, EntryKind,
};
use crate::state::NodeState;

/// What [`MirrorSync::accept`] did with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A snapshot part was staged.
    Staged,
    /// A snapshot was installed (its SNAPSHOT_END checked out).
    Installed,
    /// A delta was applied.
    Applied,
    /// Already applied (or an older heartbeat): ignored.
    Duplicate,
    /// A heartbeat confirmed the mirror is current.
    Current,
    /// Out of sequence: nothing applied; ask the publisher again from the mirror's version
    /// (`snapshot`: ask for a full snapshot).
    Resync {
        /// Why.
        reason: String,
        /// A full snapshot is needed.
        snapshot: bool,
    },
}

/// A batch refused outright: forged, foreign or over-disclosing. Nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// Refused, with the reason (ledgered as AEO_FEED_REJECTED).
    #[error("{0}")]
    Rejected(String),
    /// The AEO database failed.
    #[error(transparent)]
    Store(#[from] super::store::StoreError),
}

impl From<StatementError> for FeedError {
    fn from(e: StatementError) -> FeedError {
        FeedError::Rejected(e.to_string())
    }
}

/// A snapshot being received.
#[derive(Debug)]
struct Staging {
    snapshot_id: String,
    registry_id: String,
    version: u64,
    generation: u64,
    roots: Vec<Hash>,
    records: u64,
}

/// Checks and applies one partner's feed to its mirror.
#[derive(Debug)]
pub struct MirrorSync {
    me: String,
    partner: String,
    agreement_id: String,
    agreement_digest: Vec<u8>,
    key: VerifyingKey,
    disclosure: Disclosure,
    staging: Option<Staging>,
    max_records: u64,
}

impl MirrorSync {
    /// Mirror `partner`'s registry, verified under `key`, as disclosed under the agreement.
    pub fn new(
        me: &str,
        partner: &str,
        agreement_id: &str,
        agreement_digest: &[u8],
        key: VerifyingKey,
        disclosure: Disclosure,
    ) -> MirrorSync {
        MirrorSync {
            me: me.to_owned(),
            partner: partner.to_owned(),
            agreement_id: agreement_id.to_owned(),
            agreement_digest: agreement_digest.to_vec(),
            key,
            disclosure,
            staging: None,
            max_records: u64::MAX,
        }
    }

    /// Refuses snapshots and deltas that would make the mirror larger than `max` operators (a
    /// partner cannot fill this node's disk).
    pub fn with_max_records(mut self, max: u64) -> MirrorSync {
        self.max_records = max;
        self
    }

    fn check_size(&self, records: u64) -> Result<(), FeedError> {
        if records > self.max_records {
            return Err(FeedError::Rejected(format!(
                "the mirror would hold {records} operators, more than aeo.max_mirror_records ({})",
                self.max_records
            )));
        }
        Ok(())
    }

    /// Checks `batch` and applies it to the mirror in `store` if it is next in sequence.
    pub fn accept(
        &mut self,
        store: &AeoStore,
        batch: &AeoSignedBatch,
    ) -> Result<Outcome, FeedError> {
        let (header, paths) = statement::verify_batch(batch, &self.key)?;
        self.check_parties(&header)?;
        let kind = AeoBatchKind::try_from(header.kind).unwrap_or_default();
        match kind {
            AeoBatchKind::Snapshot => self.snapshot_part(store, batch, &header, &paths),
            AeoBatchKind::SnapshotEnd => self.snapshot_end(store, batch, &header),
            AeoBatchKind::Delta => self.delta(store, batch, &header, &paths),
            AeoBatchKind::Heartbeat => self.heartbeat(store, &header),
            other => Err(FeedError::Rejected(format!(
                "a {} batch has no place on a mirror feed",
                other.as_str_name()
            ))),
        }
    }

    fn check_parties(&self, h: &AeoBatchHeader) -> Result<(), FeedError> {
        let wrong = |what: &str, got: &str, want: &str| {
            Err(FeedError::Rejected(format!(
                "batch names {what} {got:?}, expected {want:?}"
            )))
        };
        if h.publisher != self.partner {
            return wrong("publisher", &h.publisher, &self.partner);
        }
        if h.recipient != self.me {
            return wrong("recipient", &h.recipient, &self.me);
        }
        if h.agreement_id != self.agreement_id {
            return wrong("agreement", &h.agreement_id, &self.agreement_id);
        }
        if h.agreement_digest != self.agreement_digest {
            return Err(FeedError::Rejected(format!(
                "batch was made under another version of agreement {}",
                self.agreement_id
            )));
        }
        Ok(())
    }

    /// Decodes and checks the records of a batch into rows for batch number `batch_no`.
    fn rows(
        &self,
        batch: &AeoSignedBatch,
        paths: &[Vec<Hash>],
        batch_no: u64,
    ) -> Result<MirrorRows, FeedError> {
        let mut rows = Vec::with_capacity(batch.leaves.len());
        for (i, (leaf, path)) in batch.leaves.iter().zip(paths).enumerate() {
            let record = AeoStatusResponse::decode(leaf.as_slice())
                .map_err(|e| FeedError::Rejected(format!("record {i}: {e}")))?;
            self.disclosure.permits(&record)?;
            let status = AeoStatus::try_from(record.status).unwrap_or_default();
            if record.operator_identifier.is_empty()
                || !matches!(
                    status,
                    AeoStatus::Valid | AeoStatus::Suspended | AeoStatus::Revoked
                )
            {
                return Err(FeedError::Rejected(format!(
                    "record {i}: an operator id and a status valid, suspended or revoked are required"
                )));
            }
            rows.push((
                record.operator_identifier.clone(),
                record.tin.clone(),
                AeoMirrorRecord {
                    batch: batch_no,
                    leaf_index: i as u64,
                    path: path.concat(),
                    record: leaf.clone(),
                },
            ));
        }
        Ok(rows)
    }

    /// A new snapshot, staged in a fresh generation.
    fn start_staging(&self, store: &AeoStore, h: &AeoBatchHeader) -> Result<Staging, FeedError> {
        Ok(Staging {
            snapshot_id: h.snapshot_id.clone(),
            registry_id: h.registry_id.clone(),
            version: h.version_to,
            generation: store.begin_snapshot(&self.partner)?,
            roots: Vec::new(),
            records: 0,
        })
    }

    fn snapshot_part(
        &mut self,
        store: &AeoStore,
        batch: &AeoSignedBatch,
        h: &AeoBatchHeader,
        paths: &[Vec<Hash>],
    ) -> Result<Outcome, FeedError> {
        let continuing = self
            .staging
            .as_ref()
            .is_some_and(|s| s.snapshot_id == h.snapshot_id);
        if !continuing {
            if h.sequence != 0 {
                self.staging = None;
                return Ok(resync(
                    format!("snapshot part {} arrived without its start", h.sequence),
                    true,
                ));
            }
            self.staging = Some(self.start_staging(store, h)?);
        }
        let rows = self.rows(batch, paths, h.sequence)?;
        let staged = self.staging.as_ref().map_or(0, |s| s.records);
        if let Err(e) = self.check_size(staged + rows.len() as u64) {
            self.staging = None;
            return Err(e);
        }
        let Some(staging) = self.staging.as_mut() else {
            return Ok(resync("no snapshot in progress".into(), true));
        };
        if h.sequence != staging.roots.len() as u64
            || h.version_to != staging.version
            || h.registry_id != staging.registry_id
        {
            let expected = staging.roots.len();
            self.staging = None;
            return Ok(resync(
                format!(
                    "snapshot part {} out of order (expected {expected})",
                    h.sequence
                ),
                true,
            ));
        }
        store.stage_part(&self.partner, staging.generation, h.sequence, batch, &rows)?;
        staging.roots.push(root(h)?);
        staging.records += rows.len() as u64;
        Ok(Outcome::Staged)
    }

    fn snapshot_end(
        &mut self,
        store: &AeoStore,
        batch: &AeoSignedBatch,
        h: &AeoBatchHeader,
    ) -> Result<Outcome, FeedError> {
        // An empty registry's snapshot is its end alone.
        if self.staging.is_none() && h.sequence == 0 && h.record_count == 0 {
            self.staging = Some(self.start_staging(store, h)?);
        }
        let Some(staging) = self.staging.take() else {
            return Ok(resync("snapshot end without its parts".into(), true));
        };
        let complete = staging.snapshot_id == h.snapshot_id
            && h.sequence == staging.roots.len() as u64
            && h.record_count == staging.records
            && h.version_to == staging.version
            && batch.leaves.len() == staging.roots.len()
            && batch
                .leaves
                .iter()
                .zip(&staging.roots)
                .all(|(leaf, r)| leaf.as_slice() == r.as_slice());
        if !complete {
            return Ok(resync(
                format!(
                    "snapshot {} incomplete: {} parts and {} records received, its end lists {} and {}",
                    h.snapshot_id,
                    staging.roots.len(),
                    staging.records,
                    h.sequence,
                    h.record_count
                ),
                true,
            ));
        }
        let meta = AeoMirrorMeta {
            partner: self.partner.clone(),
            agreement_id: self.agreement_id.clone(),
            agreement_digest: self.agreement_digest.clone(),
            registry_id: h.registry_id.clone(),
            version: h.version_to,
            as_of_ms: h.created_at_ms,
            generation: staging.generation,
            next_batch: staging.roots.len() as u64 + 1,
            records: staging.records,
        };
        let detail = format!(
            "snapshot of {} operators at version {}",
            staging.records, h.version_to
        );
        let entry = ledger_entry(EntryKind::AeoSnapshotReceived, &self.partner, batch, detail);
        store.install_snapshot(&meta, batch, &entry)?;
        Ok(Outcome::Installed)
    }

    fn delta(
        &mut self,
        store: &AeoStore,
        batch: &AeoSignedBatch,
        h: &AeoBatchHeader,
        paths: &[Vec<Hash>],
    ) -> Result<Outcome, FeedError> {
        let Some(meta) = self.live(store)? else {
            return Ok(resync("a delta arrived before any snapshot".into(), true));
        };
        if h.registry_id != meta.registry_id {
            return Ok(resync(
                format!(
                    "delta of registry {} but the mirror holds {}",
                    h.registry_id, meta.registry_id
                ),
                true,
            ));
        }
        if h.version_to <= meta.version {
            return Ok(Outcome::Duplicate);
        }
        if h.version_from != meta.version {
            return Ok(resync(
                format!(
                    "gap: the mirror is at version {}, the delta goes from {} to {}",
                    meta.version, h.version_from, h.version_to
                ),
                false,
            ));
        }
        let rows = self.rows(batch, paths, meta.next_batch)?;
        // An upper bound: changed operators may already be in the mirror.
        self.check_size(meta.records + rows.len() as u64)?;
        let next = AeoMirrorMeta {
            version: h.version_to,
            as_of_ms: h.created_at_ms.max(meta.as_of_ms),
            next_batch: meta.next_batch + 1,
            ..meta
        };
        let detail = format!(
            "{} changed operators, versions {}..{}",
            rows.len(),
            h.version_from,
            h.version_to
        );
        let entry = ledger_entry(EntryKind::AeoDeltaReceived, &self.partner, batch, detail);
        store.apply_delta(&next, next.next_batch - 1, batch, &rows, &entry)?;
        Ok(Outcome::Applied)
    }

    fn heartbeat(&mut self, store: &AeoStore, h: &AeoBatchHeader) -> Result<Outcome, FeedError> {
        let Some(meta) = self.live(store)? else {
            // The partner has no registry yet: nothing to mirror, nothing missed.
            if h.version_to == 0 {
                return Ok(Outcome::Current);
            }
            return Ok(resync(
                "a heartbeat arrived before any snapshot".into(),
                true,
            ));
        };
        if h.registry_id != meta.registry_id {
            return Ok(resync("the partner's registry was replaced".into(), true));
        }
        if h.version_to > meta.version {
            return Ok(resync(
                format!(
                    "missed changes: the partner is at version {}, the mirror at {}",
                    h.version_to, meta.version
                ),
                false,
            ));
        }
        if h.version_to < meta.version {
            return Ok(Outcome::Duplicate);
        }
        store.touch_mirror(&self.partner, h.created_at_ms)?;
        Ok(Outcome::Current)
    }

    /// The live mirror, if it was filled under this agreement version.
    fn live(&self, store: &AeoStore) -> Result<Option<AeoMirrorMeta>, FeedError> {
        Ok(store
            .mirror_meta(&self.partner)?
            .filter(|m| m.agreement_digest == self.agreement_digest))
    }
}

fn resync(reason: String, snapshot: bool) -> Outcome {
    Outcome::Resync { reason, snapshot }
}

fn root(h: &AeoBatchHeader) -> Result<Hash, FeedError> {
    Hash::try_from(h.root.as_slice())
        .map_err(|_| FeedError::Rejected("batch root is not 32 bytes".into()))
}

// ---- the follower tasks ---------------------------------------------------------------------

/// Keeps one follower task per partner whose registry this node mirrors (per the agreements in
/// force), until `stopping`.
pub async fn run(state: Arc<NodeState>, mut stopping: tokio::sync::watch::Receiver<bool>) {
    let mut running: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        Default::default();
    loop {
        let wanted = super::mirrored_partners(
            &state.agreements(),
            state.admin(),
            crate::envelope::now_ms(),
        );
        running.retain(|_, task| !task.is_finished());
        for (partner, _) in wanted {
            running
                .entry(partner.clone())
                .or_insert_with(|| tokio::spawn(follow(state.clone(), partner, stopping.clone())));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stopping.changed() => {}
        }
        if *stopping.borrow() {
            for (_, task) in running {
                task.abort();
            }
            return;
        }
    }
}

/// Follows `partner`'s feed while an agreement makes this node mirror it.
async fn follow(
    state: Arc<NodeState>,
    partner: String,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let initial = Duration::from_millis(state.config.aeo.reconnect_initial_ms);
    let mut backoff = initial;
    let mut snapshot = false;
    loop {
        if *stopping.borrow() {
            return;
        }
        match follow_once(&state, &partner, snapshot, &mut stopping).await {
            Ok(Some(resync_snapshot)) => {
                // A resync: ask again at once.
                snapshot = resync_snapshot;
                backoff = initial;
                continue;
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(partner = %partner, "AEO mirror feed: {e}");
                state.aeo.feed_status(&partner, |f| {
                    f.connected = false;
                    f.last_error = e.to_string();
                });
                snapshot = false;
            }
        }
        state.aeo.feed_status(&partner, |f| f.connected = false);
        let jitter =
            Duration::from_millis(u64::from(rand_jitter()) % (backoff.as_millis() as u64 / 2 + 1));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = stopping.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn rand_jitter() -> u32 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    u32::from_le_bytes(b)
}

/// One subscription. `Ok(None)`: no longer mirrored (or stopping); `Ok(Some(snapshot))`:
/// resync needed; `Err`: connection or verification problem (back off).
async fn follow_once(
    state: &Arc<NodeState>,
    partner: &str,
    force_snapshot: bool,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<bool>, AeoError> {
    let me = state.admin().to_owned();
    let now = crate::envelope::now_ms();
    let Some(agreement) = super::mirror_agreement(&state.agreements(), &me, partner, now) else {
        return Ok(None);
    };
    let (Some(party), Some(flow)) = (
        agreement.party(partner).cloned(),
        statement::answer_flow(&agreement, partner, &me),
    ) else {
        return Ok(None);
    };
    let disclosure = Disclosure::of_flow(flow);
    let store = state.aeo.store.clone();
    let meta = {
        let (store, p) = (store.clone(), partner.to_owned());
        super::blocking(move || Ok(store.mirror_meta(&p)?)).await?
    }
    .filter(|m| m.agreement_digest == agreement.digest.as_slice());
    let request = AeoSubscribeRequest {
        agreement_id: agreement.id().to_owned(),
        registry_id: meta
            .as_ref()
            .map(|m| m.registry_id.clone())
            .unwrap_or_default(),
        version: meta.as_ref().map_or(0, |m| m.version),
        agreement_digest: agreement.digest.to_vec(),
        snapshot: force_snapshot,
    };
    let mut client = state
        .peers
        .client(&party)
        .map_err(|e| AeoError::Partner(e.to_string()))?
        .max_decoding_message_size(64 * 1024 * 1024);
    let mut stream = client
        .subscribe_aeo(request)
        .await
        .map_err(|s| AeoError::Partner(format!("subscribe to {partner}: {}", s.message())))?
        .into_inner();
    state.aeo.feed_status(partner, |f| {
        f.connected = true;
        f.last_error.clear();
    });
    let idle = Duration::from_secs(state.config.aeo.heartbeat_secs * 3 + 10);
    let mut sync = Some(
        MirrorSync::new(
            &me,
            partner,
            agreement.id(),
            &agreement.digest,
            party.verifying_key,
            disclosure,
        )
        .with_max_records(state.config.aeo.max_mirror_records),
    );
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(idle, stream.message()) => next,
            _ = stopping.changed() => return Ok(None),
        };
        let batch = match next {
            Err(_) => {
                return Err(AeoError::Partner(format!(
                    "{partner} sent nothing for {}s (no heartbeat)",
                    idle.as_secs()
                )));
            }
            Ok(Err(s)) => {
                return Err(AeoError::Partner(format!(
                    "{partner}'s feed: {}",
                    s.message()
                )));
            }
            Ok(Ok(None)) => {
                return Err(AeoError::Partner(format!("{partner} ended the feed")));
            }
            Ok(Ok(Some(batch))) => batch,
        };
        let Some(mut s) = sync.take() else {
            return Err(AeoError::Internal("mirror state lost".into()));
        };
        let store2 = store.clone();
        let (s, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = s.accept(&store2, &batch);
            (s, outcome.map_err(|e| (e, batch)))
        })
        .await
        .map_err(|e| AeoError::Internal(e.to_string()))?;
        sync = Some(s);
        match outcome {
            Ok(Outcome::Installed) => {
                journal::flush(state).await?;
                state.aeo.feed_status(partner, |f| f.snapshots += 1);
                tracing::info!(partner, "AEO mirror snapshot installed");
            }
            Ok(Outcome::Applied) => {
                journal::flush(state).await?;
                state.aeo.feed_status(partner, |f| f.deltas += 1);
            }
            Ok(Outcome::Staged | Outcome::Duplicate | Outcome::Current) => {}
            Ok(Outcome::Resync { reason, snapshot }) => {
                tracing::warn!(partner, "AEO mirror resync: {reason}");
                state
                    .aeo
                    .feed_status(partner, |f| f.last_error = format!("resync: {reason}"));
                return Ok(Some(snapshot));
            }
            Err((FeedError::Rejected(reason), batch)) => {
                let entry = ledger_entry(
                    EntryKind::AeoFeedRejected,
                    partner,
                    &batch,
                    format!("refused: {reason}"),
                );
                journal::record(state, &entry).await?;
                return Err(AeoError::Partner(format!(
                    "refused a batch from {partner}: {reason}"
                )));
            }
            Err((FeedError::Store(e), _)) => return Err(e.into()),
        }
    }
}
