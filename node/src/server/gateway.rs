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
}

impl GatewayService {
    /// A service over `state`.
    pub fn new(state: Arc<NodeState>) -> Self {
        GatewayService { state }
    }
}

/// Inbox messages read from storage per batch while streaming.
const INBOX_PAGE: usize = 64;

#[tonic::async_trait]
impl Gateway for GatewayService {
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
        Err(Status::unimplemented("SendStream is not implemented yet"))
    }

    async fn list_outbox(
        &self,
        request: Request<crate::proto::v1::ListOutboxRequest>,
    ) -> Result<Response<crate::proto::v1::ListOutboxResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        Err(Status::unimplemented("ListOutbox is not implemented yet"))
    }

    async fn retry_outbox(
        &self,
        request: Request<crate::proto::v1::OutboxActionRequest>,
    ) -> Result<Response<crate::proto::v1::OutboxActionResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        Err(Status::unimplemented("RetryOutbox is not implemented yet"))
    }

    async fn cancel_outbox(
        &self,
        request: Request<crate::proto::v1::OutboxActionRequest>,
    ) -> Result<Response<crate::proto::v1::OutboxActionResponse>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        Err(Status::unimplemented("CancelOutbox is not implemented yet"))
    }

    type InboxStream = Pin<Box<dyn Stream<Item = Result<InboxMessage, Status>> + Send>>;

    async fn inbox(
        &self,
        request: Request<InboxRequest>,
    ) -> Result<Response<Self::InboxStream>, Status> {
        super::audit::require_role(&request, crate::identity::pki::Role::Gateway)?;
        let drain_only = request.into_inner().drain_only;
        let state = self.state.clone();
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
