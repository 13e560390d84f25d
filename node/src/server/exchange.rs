//! The `Exchange` service: partner nodes deliver envelopes here.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::delivery::inbound;
use crate::identity::pki::cert_identity;
use crate::proto::v1::exchange_server::Exchange;
use crate::proto::v1::{DeliveryResult, Envelope, Receipt, Rejection, delivery_result};
use crate::state::NodeState;

/// Serves partner deliveries for one node.
#[derive(Debug, Clone)]
pub struct ExchangeService {
    state: Arc<NodeState>,
}

impl ExchangeService {
    /// A service over `state`.
    pub fn new(state: Arc<NodeState>) -> Self {
        ExchangeService { state }
    }
}

/// The administration of the TLS client, as verified at the handshake.
pub(crate) fn peer_admin<T>(request: &Request<T>) -> Result<String, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let cert = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    cert_identity(cert)
        .map(|id| id.admin)
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
}

#[tonic::async_trait]
impl Exchange for ExchangeService {
    async fn deliver(&self, request: Request<Envelope>) -> Result<Response<Receipt>, Status> {
        let peer = peer_admin(&request)?;
        inbound::receive(&self.state, &peer, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|r| r.to_status())
    }

    type DeliverStreamStream = Pin<Box<dyn Stream<Item = Result<DeliveryResult, Status>> + Send>>;

    async fn deliver_stream(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        let peer = peer_admin(&request)?;
        let mut incoming = request.into_inner();
        let state = self.state.clone();
        // Bounded: when the partner stops reading results we stop reading envelopes.
        let (tx, rx) = tokio::sync::mpsc::channel(32);
        tokio::spawn(async move {
            while let Some(next) = incoming.next().await {
                let envelope = match next {
                    Ok(e) => e,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let message_id = crate::envelope::open::parse_header(&envelope)
                    .map(|h| h.message_id)
                    .unwrap_or_default();
                let outcome = match inbound::receive(&state, &peer, envelope).await {
                    Ok(receipt) => delivery_result::Outcome::Receipt(receipt),
                    Err(r) => delivery_result::Outcome::Rejection(Rejection {
                        reason: r.reason as i32,
                        message: r.message,
                    }),
                };
                let result = DeliveryResult {
                    message_id,
                    outcome: Some(outcome),
                };
                if tx.send(Ok(result)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
