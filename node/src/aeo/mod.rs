//! AEO mutual recognition (DESIGN §8): the administration's own AEO registry, mirrors of partner
//! registries kept current by signed snapshots and sequenced signed deltas, and signed lookups.
//!
//! # Layout
//!
//! - [`import`]: registry files (CSV, JSON), validated as a whole; [`generate`]: synthetic
//!   registries for the demo, tests and benchmarks.
//! - [`store`]: the redb database holding the registry, its change log, the mirrors and the
//!   ledger journal.
//! - [`statement`]: signed batches and statements, and what an agreement lets a publisher
//!   disclose.
//! - [`feed`]: the publisher side of `Exchange.SubscribeAeo` (snapshot, deltas, heartbeats).
//! - [`mirror`]: the subscriber side: one task per MRA partner, verifying and applying what the
//!   partner sends, resynchronising on any gap.
//! - [`lookup`]: Gateway lookups (mirror, online, both) and answering partners online.
//! - [`journal`]: moves AEO ledger entries from the AEO database into the ledger.
//!
//! Who mirrors whom follows the agreements: a node mirrors partner `X`'s registry under every
//! agreement in force with a `dccf.v1.AeoStatusResponse` flow `X → this node`, and discloses to
//! `X` what its own flow `this node → X` lists.

pub mod feed;
pub mod generate;
pub mod import;
pub mod journal;
pub mod lookup;
pub mod mirror;
pub mod registry;
pub mod statement;
pub mod store;
#[cfg(test)]
mod sync_tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use crate::agreement::{Agreement, AgreementSet};

/// Errors of the AEO services; each names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum AeoError {
    /// The AEO database failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The ledger failed.
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    /// A registry file or record is invalid.
    #[error(transparent)]
    Import(#[from] import::ImportError),
    /// A request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// No agreement in force allows this.
    #[error("{0}")]
    NotAllowed(String),
    /// The agreement's rate limit for the flow is used up.
    #[error("{0}")]
    RateExceeded(String),
    /// The partner could not be asked or answered wrongly.
    #[error("{0}")]
    Partner(String),
    /// Something that should not fail did (a task panicked).
    #[error("internal: {0}")]
    Internal(String),
}

impl AeoError {
    /// The gRPC status for this error.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            AeoError::Import(_) | AeoError::Invalid(_) => {
                tonic::Status::invalid_argument(self.to_string())
            }
            AeoError::Store(store::StoreError::UnknownOperator(_)) => {
                tonic::Status::not_found(self.to_string())
            }
            AeoError::Store(store::StoreError::TinTaken { .. }) => {
                tonic::Status::invalid_argument(self.to_string())
            }
            AeoError::NotAllowed(_) => tonic::Status::permission_denied(self.to_string()),
            AeoError::RateExceeded(_) => tonic::Status::resource_exhausted(self.to_string()),
            AeoError::Partner(_) => tonic::Status::unavailable(self.to_string()),
            _ => tonic::Status::internal(self.to_string()),
        }
    }
}

/// Runs `f` on the blocking pool (redb and signing work), mapping a panic to an error.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AeoError> + Send + 'static,
) -> Result<T, AeoError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AeoError::Internal(e.to_string()))?
}

/// What the node knows at run time about one mirror feed (not persisted).
#[derive(Debug, Default, Clone)]
pub struct FeedStatus {
    /// Subscription live.
    pub connected: bool,
    /// Last problem.
    pub last_error: String,
    /// Snapshots applied since start.
    pub snapshots: u64,
    /// Deltas applied since start.
    pub deltas: u64,
    /// Lookups answered from the mirror since start.
    pub lookups: u64,
}

/// The AEO part of the node's state.
#[derive(Debug)]
pub struct Aeo {
    /// The database.
    pub store: Arc<store::AeoStore>,
    /// The own registry's version, for waking publishers as soon as a change is committed.
    pub version: tokio::sync::watch::Sender<u64>,
    /// Per-partner feed status.
    pub feeds: Mutex<HashMap<String, FeedStatus>>,
    /// Serialises journal flushes.
    pub journal_lock: tokio::sync::Mutex<()>,
    /// The feed this node serves each partner: a new subscription supersedes the previous one
    /// (so a partner cannot make this node run many snapshots at once).
    pub serving: Mutex<HashMap<String, Arc<std::sync::atomic::AtomicBool>>>,
    /// Mirror lookups `(lookups, found)` per partner not yet persisted for the report.
    pub mirror_counts: Mutex<std::collections::BTreeMap<String, (u64, u64)>>,
}

impl Aeo {
    /// Opens the AEO database at `path`.
    pub fn open(path: &std::path::Path, cache_bytes: usize) -> Result<Aeo, AeoError> {
        let store = store::AeoStore::open(path, cache_bytes)?;
        let version = store.registry_info()?.version;
        Ok(Aeo {
            store: Arc::new(store),
            version: tokio::sync::watch::channel(version).0,
            feeds: Mutex::new(HashMap::new()),
            journal_lock: tokio::sync::Mutex::new(()),
            serving: Mutex::new(HashMap::new()),
            mirror_counts: Mutex::default(),
        })
    }

    /// Counts one mirror lookup of `partner`'s registry (for the report; persisted by
    /// [`crate::report::persist_mirror_counts`]).
    pub fn count_mirror_lookup(&self, partner: &str, found: bool) {
        let mut counts = self.mirror_counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(partner.to_owned()).or_default();
        c.0 += 1;
        c.1 += u64::from(found);
    }

    /// Takes the mirror lookup counts `(lookups, found)` per partner since the last call.
    pub fn take_mirror_counts(&self) -> std::collections::BTreeMap<String, (u64, u64)> {
        std::mem::take(&mut *self.mirror_counts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Updates the status of `partner`'s feed.
    pub fn feed_status(&self, partner: &str, f: impl FnOnce(&mut FeedStatus)) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        f(feeds.entry(partner.to_owned()).or_default());
    }

    /// Registers a new feed served to `partner`, superseding any previous one; the returned flag
    /// turns true when this feed is superseded in turn.
    pub fn serve_feed(&self, partner: &str) -> Arc<std::sync::atomic::AtomicBool> {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = serving.insert(partner.to_owned(), flag.clone()) {
            old.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        flag
    }

    /// A copy of `partner`'s feed status.
    pub fn feed(&self, partner: &str) -> FeedStatus {
        self.feeds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(partner)
            .cloned()
            .unwrap_or_default()
    }
}

/// The agreement in force under which `me` mirrors `partner`'s registry: it has an answer flow
/// `partner → me` (the first such agreement by id).
pub fn mirror_agreement(
    set: &AgreementSet,
    me: &str,
    partner: &str,
    now_ms: i64,
) -> Option<Arc<Agreement>> {
    set.current(now_ms)
        .filter(|a| a.parties.contains_key(me) && a.parties.contains_key(partner))
        .find(|a| statement::answer_flow(a, partner, me).is_some())
        .cloned()
}

/// Every partner whose registry `me` mirrors, with the agreement it is mirrored under.
pub fn mirrored_partners(set: &AgreementSet, me: &str, now_ms: i64) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = set
        .current(now_ms)
        .filter(|a| a.parties.contains_key(me))
        .flat_map(|a| {
            a.doc
                .flows
                .iter()
                .filter(|f| f.message_type == statement::ANSWER_FLOW && f.to == me && f.from != me)
                .map(|f| (f.from.clone(), a.id().to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.0 == b.0);
    out
}
