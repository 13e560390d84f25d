//! The running node's shared state: configuration, keys, agreements, ledger and partner clients.

use std::sync::{Arc, RwLock};

use crate::agreement::{AgreementError, AgreementSet};
use crate::config::NodeConfig;
use crate::delivery::peers::PeerClients;
use crate::identity::pki::Role;
use crate::identity::{IdentityError, NodeIdentity};
use crate::ledger::{LedgerError, Store};
use crate::server::tls::{TlsError, TrustSource};

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
    /// Clients for partner nodes.
    pub peers: PeerClients,
    /// This administration's CA certificate (DER).
    pub own_ca_der: Vec<u8>,
    /// Per-flow rate limits of the agreements, counted per side.
    pub rates: crate::policy::RateLimiter,
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
        let state = NodeState {
            config,
            identity,
            store,
            peers,
            own_ca_der,
            rates: Default::default(),
            agreements: RwLock::new(Arc::new(agreements)),
            in_flight: Default::default(),
        };
        state.warn_about_own_cards();
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

    /// Reloads agreements from disk and swaps them in; on error the old set stays.
    pub fn reload_agreements(&self) -> Result<(), AgreementError> {
        let set = AgreementSet::load_dir(&self.config.agreements_dir)?;
        *self.agreements.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        self.peers.clear();
        self.warn_about_own_cards();
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
        if admin == self.admin && role == Role::Gateway {
            vec![self.ca_der.clone()]
        } else {
            Vec::new()
        }
    }
}
