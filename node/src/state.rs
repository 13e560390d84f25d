//! The running node's shared state: configuration, keys, agreements, ledger and partner clients.

use std::sync::{Arc, RwLock};

use crate::agreement::{AgreementError, AgreementSet};
use crate::config::NodeConfig;
use crate::delivery::peers::PeerClients;
use crate::identity::pki::Role;
use crate::identity::{IdentityError, NodeIdentity};
use crate::ledger::{LedgerError, Store};
use crate::proto::v1::AgreementStatus;
use crate::server::tls::{TlsError, TrustSource};

/// Key prefix of the recorded in-force status of each agreement version (by digest, hex).
const AGREEMENT_STATUS: &[u8] = b"a/";

/// Errors opening a node's state; each names the file or part concerned.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Keys or certificates could not be loaded.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Agreements could not be loaded.
    #[error(transparent)]
    Agreement(#[from] AgreementError),
    /// The ledger could not be opened.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The ledger's signed checkpoint does not match the ledger, or could not be checked.
    #[error("ledger checkpoint: {0}")]
    Checkpoint(#[from] crate::checkpoints::CheckpointError),
    /// The AEO registry database could not be opened.
    #[error("AEO database {path}: {source}")]
    Aeo {
        /// The database file.
        path: std::path::PathBuf,
        /// What failed.
        source: crate::aeo::AeoError,
    },
}

/// Everything the services of one node share.
#[derive(Debug)]
pub struct NodeState {
    /// The configuration the node runs with.
    pub config: NodeConfig,
    /// Keys of this administration.
    pub identity: NodeIdentity,
    /// The ledger store (also holds inbox and dedupe records).
    pub store: Store,
    /// Signed checkpoints of the ledger and the cosignatures partners returned.
    pub checkpoints: crate::checkpoints::Checkpoints,
    /// Clients for partner nodes.
    pub peers: PeerClients,
    /// This administration's CA certificate (DER).
    pub own_ca_der: Vec<u8>,
    /// Per-flow rate limits of the agreements, counted per side.
    pub rates: crate::policy::RateLimiter,
    /// Salt of the payload digests that enforce onward-transfer rules.
    pub onward_salt: Vec<u8>,
    /// Background delivery from the outbox.
    pub courier: crate::delivery::courier::Courier,
    /// Receiver side of bulk mode: verified batch signatures and HPKE epoch contexts.
    pub bulk_caches: crate::envelope::bulk::BulkCaches,
    /// Sender side of bulk mode: one HPKE epoch per partner and agreement, rotated by the
    /// `[delivery]` epoch limits.
    pub epochs: std::sync::Mutex<crate::envelope::bulk::Epochs>,
    /// AEO registry, partner mirrors and their feeds.
    pub aeo: crate::aeo::Aeo,
    /// Refusals logged one by one up to a burst per partner and reason, the rest summarised.
    pub rejection_log: crate::delivery::rejection_log::RejectionLog,
    /// Refusals (ledger entries) each partner may cause per minute.
    pub refusal_budget: crate::delivery::refusal_budget::RefusalBudget,
    agreements: RwLock<Arc<AgreementSet>>,
    in_flight: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

impl NodeState {
    /// Loads keys, certificates and agreements and opens the ledger.
    pub fn open(config: NodeConfig) -> Result<Arc<NodeState>, StateError> {
        let paths = config.identity_paths();
        let identity = NodeIdentity::load(&paths, &config.admin)?;
        let agreements = AgreementSet::load_dir(&config.agreements_dir)?;
        let own_ca_der = crate::server::tls::load_certs(&paths.ca_cert())?
            .remove(0)
            .to_vec();
        let peers = PeerClients::new(
            crate::server::tls::load_certs(&paths.node_cert())?,
            crate::server::tls::load_key(&paths.node_key())?,
            &config.limits,
        );
        let store = Store::open(&config.ledger_dir())?;
        let onward_salt = crate::delivery::onward::salt(&store)?;
        let checkpoints = crate::checkpoints::Checkpoints::open(
            store.clone(),
            &config.origin(),
            identity.signing.signing_key().clone(),
        )?;
        let epoch_policy = crate::envelope::bulk::EpochPolicy {
            max_messages: config.delivery.epoch_max_messages,
            max_age_ms: i64::try_from(config.delivery.epoch_max_age_secs * 1000)
                .unwrap_or(i64::MAX),
        };
        let aeo_path = config.aeo_db();
        let aeo = crate::aeo::Aeo::open(
            &aeo_path,
            usize::try_from(config.aeo.cache_mib * 1024 * 1024).unwrap_or(usize::MAX),
        )
        .map_err(|source| StateError::Aeo {
            path: aeo_path.clone(),
            source,
        })?;
        let state = NodeState {
            aeo,
            rejection_log: Default::default(),
            refusal_budget: crate::delivery::refusal_budget::RefusalBudget::new(
                config.limits.max_refusals_per_peer_per_minute,
            ),
            config,
            identity,
            store,
            checkpoints,
            peers,
            own_ca_der,
            rates: Default::default(),
            onward_salt,
            courier: Default::default(),
            bulk_caches: Default::default(),
            epochs: std::sync::Mutex::new(crate::envelope::bulk::Epochs::new(epoch_policy)),
            agreements: RwLock::new(Arc::new(agreements)),
            in_flight: Default::default(),
        };
        state.warn_about_own_cards();
        if let Some(ticket) = state.stage_agreement_changes()? {
            ticket.wait_blocking()?;
        }
        Ok(Arc::new(state))
    }

    /// This administration's id.
    pub fn admin(&self) -> &str {
        &self.config.admin
    }

    /// The current agreement set (a cheap snapshot).
    pub fn agreements(&self) -> Arc<AgreementSet> {
        // A poisoned lock only means a panic elsewhere while swapping; the Arc inside is intact.
        self.agreements
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads agreements from disk and swaps them in, records the agreements that came into or
    /// left force in the ledger, and returns every version's status. On a load error the
    /// previous set stays in force.
    pub async fn reload_agreements(&self) -> Result<Vec<AgreementStatus>, StateError> {
        let set = AgreementSet::load_dir(&self.config.agreements_dir)?;
        *self.agreements.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        self.peers.clear();
        self.warn_about_own_cards();
        self.record_agreement_changes().await?;
        Ok(self.agreement_statuses())
    }

    /// Every loaded agreement version and whether it is in force now.
    pub fn agreement_statuses(&self) -> Vec<AgreementStatus> {
        let now = crate::envelope::now_ms();
        let set = self.agreements();
        set.all()
            .map(|a| {
                let reason =
                    set.active_with_digest(a.id(), &a.digest, now)
                        .err()
                        .map(|e| match e {
                            AgreementError::Inactive { why, .. } => why,
                            other => other.to_string(),
                        });
                AgreementStatus {
                    id: a.id().to_owned(),
                    version: a.doc.version,
                    digest: hex::encode(a.digest),
                    active: reason.is_none(),
                    reason: reason.unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Stages an `AGREEMENT_ACTIVATED` or `AGREEMENT_DEACTIVATED` ledger entry for every
    /// agreement version whose being in force changed since the ledger last said (signatures,
    /// validity window, supersession, revocation, or its file removed). Returns the ticket to
    /// wait on, or `None` when nothing changed (then nothing is committed, and nothing synced).
    pub fn stage_agreement_changes(&self) -> Result<Option<crate::ledger::Ticket>, LedgerError> {
        use crate::proto::v1::{EntryKind, LedgerEntry};
        const ACTIVE: &[u8] = b"active";
        let statuses = self.agreement_statuses();
        let mut recorded: std::collections::HashMap<Vec<u8>, Vec<u8>> = self
            .store
            .scan_prefix(AGREEMENT_STATUS)?
            .into_iter()
            .collect();
        let mut txn = self.store.begin();
        let mut changed = false;
        let entry = |kind: EntryKind, id: &str, version: u32, digest: Vec<u8>, detail: String| {
            LedgerEntry {
                kind: kind as i32,
                recorded_at_ms: crate::envelope::now_ms(),
                agreement_id: id.to_owned(),
                agreement_version: version,
                agreement_digest: digest,
                detail,
                ..Default::default()
            }
        };
        for st in &statuses {
            let digest = hex::decode(&st.digest).unwrap_or_default();
            let key = [AGREEMENT_STATUS, st.digest.as_bytes()].concat();
            let was_active = recorded.remove(&key).is_some_and(|v| v == ACTIVE);
            let kind = match (was_active, st.active) {
                (false, true) => EntryKind::AgreementActivated,
                (true, false) => EntryKind::AgreementDeactivated,
                _ => continue,
            };
            let detail = if st.active {
                "in force".to_owned()
            } else {
                st.reason.clone()
            };
            crate::ledger::entry::append(
                &mut txn,
                &entry(kind, &st.id, st.version, digest, detail),
            );
            changed = true;
            let value = if st.active {
                ACTIVE
            } else {
                b"inactive".as_slice()
            };
            txn.put(key, value.to_vec())?;
        }
        // Versions that were in force and whose files are gone.
        for (key, value) in recorded {
            if value == ACTIVE {
                let hex_digest =
                    String::from_utf8_lossy(&key[AGREEMENT_STATUS.len()..]).into_owned();
                let digest = hex::decode(&hex_digest).unwrap_or_default();
                let detail = "removed from the agreements directory".to_owned();
                crate::ledger::entry::append(
                    &mut txn,
                    &entry(EntryKind::AgreementDeactivated, "", 0, digest, detail),
                );
                txn.remove(key)?;
                changed = true;
            }
        }
        // A dropped transaction writes nothing.
        Ok(changed.then(|| txn.commit()))
    }

    /// [`NodeState::stage_agreement_changes`] and waits until the changes are durable.
    pub async fn record_agreement_changes(&self) -> Result<(), LedgerError> {
        if let Some(ticket) = self.stage_agreement_changes()? {
            ticket.durable().await?;
        }
        Ok(())
    }

    /// Marks (sender, message id) as being processed; false if it already is.
    pub(crate) fn begin_receive(&self, sender: &str, id: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((sender.to_owned(), id.to_owned()))
    }

    /// Clears the mark set by [`NodeState::begin_receive`].
    pub(crate) fn end_receive(&self, sender: &str, id: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(sender.to_owned(), id.to_owned()));
    }

    /// Agreements that list this administration with keys other than its own cannot work: say so.
    fn warn_about_own_cards(&self) {
        let me = self.admin();
        let my_key = self.identity.signing.verifying_key();
        for a in self.agreements().all() {
            if let Some(p) = a.party(me)
                && p.verifying_key != my_key
            {
                tracing::warn!(
                    agreement = a.id(),
                    "agreement lists {me} with a different signing key than this node's"
                );
            }
        }
    }
}

/// Trust for the Exchange listener: partner node certificates, each from its own CA as named by
/// an active agreement shared with this administration.
#[derive(Debug)]
pub struct PartnerTrust(pub std::sync::Weak<NodeState>);

impl TrustSource for PartnerTrust {
    fn cas_for(&self, admin: &str, role: Role) -> Vec<Vec<u8>> {
        match (self.0.upgrade(), role) {
            (Some(state), Role::Node) => {
                state
                    .agreements()
                    .partner_cas(state.admin(), admin, crate::envelope::now_ms())
            }
            _ => Vec::new(),
        }
    }
}

/// Trust for the Gateway listener: only this administration's own back-office certificates.
#[derive(Debug)]
pub struct BackOfficeTrust {
    /// This administration.
    pub admin: String,
    /// Its CA (DER).
    pub ca_der: Vec<u8>,
}

impl TrustSource for BackOfficeTrust {
    fn cas_for(&self, admin: &str, role: Role) -> Vec<Vec<u8>> {
        // Gateway and Audit share the listener; each service checks the role it needs.
        if admin == self.admin && matches!(role, Role::Gateway | Role::Auditor) {
            vec![self.ca_der.clone()]
        } else {
            Vec::new()
        }
    }
}
