//! The `Audit` service: auditors read checkpoints, entries and proofs. Served on the Gateway
//! listener, and only to this administration's certificates with role `auditor`. Ledger entries
//! never hold payloads, so neither do the answers.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::identity::pki::Role;
use crate::ledger::{entry, proof};
use crate::proto::v1::audit_server::Audit;
use crate::proto::v1::{
    AuditEntry, CheckpointRequest, CheckpointResponse, ConsistencyProofRequest,
    ConsistencyProofResponse, EntriesRequest, EntriesResponse, EntryProof, InclusionProofRequest,
    InclusionProofResponse, LedgerStatus, LedgerStatusRequest, inclusion_proof_request,
};
use crate::state::NodeState;

/// Most entries returned by one `GetEntries` call.
pub const MAX_ENTRIES_PER_CALL: u64 = 1000;

/// Serves auditors of one node.
#[derive(Debug, Clone)]
pub struct AuditService {
    state: Arc<NodeState>,
}

impl AuditService {
    /// A service over `state`.
    pub fn new(state: Arc<NodeState>) -> Self {
        AuditService { state }
    }
}

/// Refuses the call unless the client certificate carries `role` (the TLS layer already checked
/// that it is this administration's).
pub(crate) fn require_role<T>(request: &Request<T>, role: Role) -> Result<(), Status> {
    let identity = super::exchange::peer_identity(request)?;
    if identity.role != role {
        return Err(Status::permission_denied(format!(
            "this service needs a certificate with role {role}; the client certificate has role {}",
            identity.role
        )));
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl AuditService {
    fn latest(&self) -> Result<Arc<crate::checkpoints::Published>, Status> {
        self.state
            .checkpoints
            .latest()
            .ok_or_else(|| Status::unavailable("no checkpoint published yet; retry shortly"))
    }

    fn audit_entry(&self, index: u64) -> Result<AuditEntry, Status> {
        let leaf = self
            .state
            .store
            .entry(index)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("no entry {index}")))?;
        let decoded = entry::parse(&leaf).map_err(internal)?;
        Ok(AuditEntry {
            index,
            leaf,
            entry: Some(decoded),
        })
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn get_checkpoint(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        super::exchange::checkpoint_response(&self.state, request.get_ref())
            .await
            .map(Response::new)
    }

    async fn get_entries(
        &self,
        request: Request<EntriesRequest>,
    ) -> Result<Response<EntriesResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let req = request.into_inner();
        let latest = self.latest()?;
        if req.start > req.end || req.start > latest.size {
            return Err(Status::out_of_range(format!(
                "range {}..{} is not within the checkpoint's {} entries",
                req.start, req.end, latest.size
            )));
        }
        let end = req
            .end
            .min(latest.size)
            .min(req.start + MAX_ENTRIES_PER_CALL);
        let entries = (req.start..end)
            .map(|i| self.audit_entry(i))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(EntriesResponse {
            entries,
            checkpoint: latest.note.clone(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<InclusionProofRequest>,
    ) -> Result<Response<InclusionProofResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let latest = self.latest()?;
        let indices = match request.into_inner().target {
            Some(inclusion_proof_request::Target::Index(i)) => vec![i],
            Some(inclusion_proof_request::Target::MessageId(id)) => {
                let found: Vec<u64> = entry::indices_of(&self.state.store, &id)
                    .map_err(internal)?
                    .into_iter()
                    .filter(|i| *i < latest.size)
                    .collect();
                if found.is_empty() {
                    return Err(Status::not_found(format!(
                        "no entry about message {id:?} within the latest checkpoint (size {}); \
                         if it is recent, retry after the next checkpoint",
                        latest.size
                    )));
                }
                found
            }
            None => return Err(Status::invalid_argument("give an index or a message id")),
        };
        let mut proofs = Vec::new();
        for index in indices {
            if index >= latest.size {
                return Err(Status::out_of_range(format!(
                    "entry {index} is not within the latest checkpoint (size {})",
                    latest.size
                )));
            }
            let hashes =
                proof::inclusion_proof(&self.state.store, index, latest.size).map_err(internal)?;
            proofs.push(EntryProof {
                entry: Some(self.audit_entry(index)?),
                tlog_proof: crate::ledger::export::tlog_proof_text(
                    index,
                    &hashes,
                    &latest.note,
                    None,
                ),
                hashes: hashes.iter().map(|h| h.to_vec()).collect(),
            });
        }
        Ok(Response::new(InclusionProofResponse {
            checkpoint: latest.note.clone(),
            proofs,
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<ConsistencyProofRequest>,
    ) -> Result<Response<ConsistencyProofResponse>, Status> {
        require_role(&request, Role::Auditor)?;
        let req = request.into_inner();
        let latest = self.latest()?;
        if req.size1 > req.size2 || req.size2 > latest.size {
            return Err(Status::out_of_range(format!(
                "sizes {} -> {} must satisfy size1 <= size2 <= {} (the latest checkpoint)",
                req.size1, req.size2, latest.size
            )));
        }
        let hashes =
            proof::consistency_proof(&self.state.store, req.size1, req.size2).map_err(internal)?;
        Ok(Response::new(ConsistencyProofResponse {
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_status(
        &self,
        request: Request<LedgerStatusRequest>,
    ) -> Result<Response<LedgerStatus>, Status> {
        require_role(&request, Role::Auditor)?;
        let with_export = request.get_ref().with_export_material;
        status(&self.state.store, &self.state.checkpoints, with_export)
            .map(Response::new)
            .map_err(internal)
    }

    async fn get_report(
        &self,
        request: Request<crate::proto::v1::ReportRequest>,
    ) -> Result<Response<crate::proto::v1::EffectivenessReport>, Status> {
        require_role(&request, Role::Auditor)?;
        let req = request.into_inner();
        let until = if req.until_ms == 0 {
            crate::envelope::now_ms() + 1
        } else {
            req.until_ms
        };
        if until <= req.since_ms {
            return Err(Status::invalid_argument("until_ms must be after since_ms"));
        }
        // Bring the mirror lookup counts up to date first, then read off the async threads.
        crate::report::persist_mirror_counts(&self.state)
            .await
            .map_err(|e| internal(e.to_string()))?;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let agreement = (!req.agreement_id.is_empty()).then_some(req.agreement_id.as_str());
            crate::report::compute(&state.store, state.admin(), req.since_ms, until, agreement)
        })
        .await
        .map_err(|e| internal(e.to_string()))?
        .map(Response::new)
        .map_err(|e| internal(e.to_string()))
    }
}

/// The ledger status shown by `ledger status` and `Audit.GetStatus`; `with_export` adds the
/// cosigned notes and witness keys an export needs.
pub fn status(
    store: &crate::ledger::Store,
    cps: &crate::checkpoints::Checkpoints,
    with_export: bool,
) -> Result<LedgerStatus, String> {
    let head = store.durable_head();
    let (cosigned_notes, witness_keys) = if with_export {
        let material = cps.export_material().map_err(|e| e.to_string())?;
        (material.cosigned, material.witnesses)
    } else {
        Default::default()
    };
    Ok(LedgerStatus {
        origin: cps.origin().to_owned(),
        size: head.size,
        root: head.root.to_vec(),
        checkpoint: cps.latest_cosigned().map_err(|e| e.to_string())?,
        vkey: cps.vkey(),
        cosigned: cps
            .witnesses()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(vkey, size)| format!("{} {size}", vkey.split('+').next().unwrap_or("")))
            .collect(),
        witnessed: crate::witness::witnessed(store)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(admin, size)| format!("{admin} {size}"))
            .collect(),
        alarms: crate::witness::alarms(store).map_err(|e| e.to_string())?,
        cosigned_notes,
        witness_keys,
    })
}
