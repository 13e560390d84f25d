//! The `Gateway` service: the administration's own back office sends and receives here.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::delivery::{inbox, outbound};
use crate::proto::v1::gateway_server::Gateway;
use crate::proto::v1::{
    AckRequest, AckResponse, InboxMessage, InboxRequest, ReloadAgreementsRequest,
    ReloadAgreementsResponse, SendRequest, SendResponse,
};
use crate::state::NodeState;

/// Serves the back office of one node. The TLS layer admits only this administration's
/// certificates (roles `gateway` and `auditor` share the listener); every call checks for role
/// `gateway`.
#[derive(Debug, Clone)]
pub struct GatewayService {
    state: Arc<NodeState>,
    /// Becomes true when the node shuts down: open Inbox streams end then, so that graceful
    /// shutdown does not wait for a back office that keeps its stream open.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl GatewayService {
    /// A service over `state`; its streams end when `stopping` becomes true.
    pub fn new(state: Arc<NodeState>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        GatewayService { state, stopping }
    }
}

/// Requests of a `SendStream` sealed and queued in one ledger transaction, at most.
const SEND_CHUNK: usize = 256;

/// Inbox messages read from storage per batch while streaming.
const INBOX_PAGE: usize = 64;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn import_aeo_registry(
        &self,
        request: Request<tonic::Streaming<crate::proto::v1::ImportAeoRequest>>,
    ) -> Result<Response<crate::proto::v1::ImportAeoResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        let limit = self.state.config.aeo.max_import_mib * 1024 * 1024;
        let mut chunks = request.into_inner();
        let mut format = None;
        let mut data = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            if format.is_none() {
                format = Some(
                    crate::aeo::import::Format::from_name(&chunk.format)
                        .map_err(|e| Status::invalid_argument(e.to_string()))?,
                );
            }
            if (data.len() + chunk.data.len()) as u64 > limit {
                return Err(Status::resource_exhausted(format!(
                    "registry file larger than aeo.max_import_mib ({} MiB)",
                    self.state.config.aeo.max_import_mib
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let format = format.ok_or_else(|| Status::invalid_argument("empty import: no data"))?;
        crate::aeo::registry::import_file(&self.state, format, data)
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn update_aeo_operator(
        &self,
        request: Request<crate::proto::v1::UpdateAeoRequest>,
    ) -> Result<Response<crate::proto::v1::ImportAeoResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        let request = request.into_inner();
        let record = request
            .record
            .ok_or_else(|| Status::invalid_argument("an update needs a record"))?;
        crate::aeo::registry::update(&self.state, record, request.status_only)
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn lookup_aeo(
        &self,
        request: Request<crate::proto::v1::LookupAeoRequest>,
    ) -> Result<Response<crate::proto::v1::LookupAeoResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        crate::aeo::lookup::lookup(&self.state, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    type LookupAeoStreamStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<crate::proto::v1::LookupAeoResponse, Status>>
                + Send,
        >,
    >;

    async fn lookup_aeo_stream(
        &self,
        request: Request<tonic::Streaming<crate::proto::v1::LookupAeoRequest>>,
    ) -> Result<Response<Self::LookupAeoStreamStream>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        let mut requests = request.into_inner();
        let state = self.state.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let next = match requests.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        return;
                    }
                };
                let (reference, id) = (next.query_reference.clone(), next.operator_id.clone());
                let answer = match crate::aeo::lookup::lookup(&state, next).await {
                    Ok(a) => a,
                    Err(e) => crate::proto::v1::LookupAeoResponse {
                        query_reference: reference,
                        operator_id: id,
                        error: e.to_string(),
                        ..Default::default()
                    },
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn list_aeo_mirrors(
        &self,
        request: Request<crate::proto::v1::ListAeoMirrorsRequest>,
    ) -> Result<Response<crate::proto::v1::ListAeoMirrorsResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        crate::aeo::lookup::list_mirrors(&self.state)
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        outbound::send(&self.state, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    type SendStreamStream = Pin<Box<dyn Stream<Item = Result<SendResponse, Status>> + Send>>;

    async fn send_stream(
        &self,
        request: Request<tonic::Streaming<SendRequest>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        let mut incoming = request.into_inner();
        let state = self.state.clone();
        // Bounded like the Exchange stream: one chunk being sealed, a few waiting for
        // durability, a bounded number of responses unread.
        let (responses_tx, responses_rx) = tokio::sync::mpsc::channel(2 * SEND_CHUNK);
        let (chunks_tx, mut chunks_rx) =
            tokio::sync::mpsc::channel::<Result<outbound::StagedSends, Status>>(2);
        let reader_state = state.clone();
        tokio::spawn(async move {
            while let Some((chunk, failed)) =
                crate::delivery::next_chunk(&mut incoming, SEND_CHUNK).await
            {
                // Staged in order; the next chunk is sealed while this one syncs.
                if !chunk.is_empty() {
                    let staged = outbound::stage_sends(&reader_state, chunk).await;
                    if chunks_tx.send(Ok(staged)).await.is_err() {
                        return;
                    }
                }
                if let Some(status) = failed {
                    let _ = chunks_tx.send(Err(status)).await;
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(next) = chunks_rx.recv().await {
                let staged = match next {
                    Ok(staged) => staged,
                    Err(status) => {
                        let _ = responses_tx.send(Err(status)).await;
                        return;
                    }
                };
                for r in staged.finish(&state).await {
                    if responses_tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(responses_rx),
        )))
    }

    async fn list_outbox(
        &self,
        request: Request<crate::proto::v1::ListOutboxRequest>,
    ) -> Result<Response<crate::proto::v1::ListOutboxResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        crate::delivery::outbox_admin::list(&self.state, &request.into_inner())
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn retry_outbox(
        &self,
        request: Request<crate::proto::v1::OutboxActionRequest>,
    ) -> Result<Response<crate::proto::v1::OutboxActionResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        crate::delivery::outbox_admin::retry(&self.state, &request.into_inner().message_ids)
            .await
            .map(|affected| Response::new(crate::proto::v1::OutboxActionResponse { affected }))
            .map_err(|e| e.to_status())
    }

    async fn cancel_outbox(
        &self,
        request: Request<crate::proto::v1::OutboxActionRequest>,
    ) -> Result<Response<crate::proto::v1::OutboxActionResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        crate::delivery::outbox_admin::cancel(&self.state, &request.into_inner().message_ids)
            .await
            .map(|affected| Response::new(crate::proto::v1::OutboxActionResponse { affected }))
            .map_err(|e| e.to_status())
    }

    type InboxStream = Pin<Box<dyn Stream<Item = Result<InboxMessage, Status>> + Send>>;

    async fn inbox(
        &self,
        request: Request<InboxRequest>,
    ) -> Result<Response<Self::InboxStream>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        let drain_only = request.into_inner().drain_only;
        let state = self.state.clone();
        let mut stopping = self.stopping.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut heads = state.store.subscribe();
            let mut cursor: Option<u64> = None;
            loop {
                // Mark the head seen before reading, so a commit between read and wait wakes us.
                heads.borrow_and_update();
                let page = match inbox::list(&state.store, cursor, INBOX_PAGE) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let full = page.len() == INBOX_PAGE;
                for msg in page {
                    cursor = Some(msg.ledger_index);
                    if tx.send(Ok(msg)).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if drain_only {
                    return;
                }
                tokio::select! {
                    changed = heads.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn reload_agreements(
        &self,
        request: Request<ReloadAgreementsRequest>,
    ) -> Result<Response<ReloadAgreementsResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        let agreements = self.state.reload_agreements().await.map_err(|e| {
            Status::failed_precondition(format!(
                "reload refused, previous agreements stay in force: {e}"
            ))
        })?;
        Ok(Response::new(ReloadAgreementsResponse { agreements }))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        let ids = request.into_inner().message_ids;
        if ids.len() > 10_000 {
            return Err(Status::invalid_argument(
                "at most 10000 message ids per Ack",
            ));
        }
        let acknowledged = inbox::ack(&self.state.store, &ids)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(AckResponse { acknowledged }))
    }
}
