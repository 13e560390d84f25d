//! The `Exchange` service: partner nodes deliver envelopes here.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::delivery::inbound;
use crate::identity::pki::cert_identity;
use crate::proto::v1::exchange_server::Exchange;
use crate::proto::v1::{
    CheckpointRequest, CheckpointResponse, CosignatureRequest, CosignatureResponse, DeliveryResult,
    Envelope, Receipt,
};
use crate::state::NodeState;

/// Serves partner deliveries for one node.
#[derive(Debug, Clone)]
pub struct ExchangeService {
    state: Arc<NodeState>,
    /// Becomes true when the node shuts down: AEO feeds (server streams a partner keeps open
    /// for as long as it mirrors us) end then, so a graceful stop does not wait for them.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl ExchangeService {
    /// A service over `state`; its long-lived streams end when `stopping` becomes true.
    pub fn new(state: Arc<NodeState>, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        ExchangeService { state, stopping }
    }
}

/// The latest checkpoint (publishing the first one if none yet), with its cosignatures and a
/// consistency proof from `from_size`; shared by the Exchange and Audit services.
pub(crate) async fn checkpoint_response(
    state: &NodeState,
    request: &CheckpointRequest,
) -> Result<CheckpointResponse, Status> {
    let internal = |e: String| Status::internal(format!("checkpoint: {e}"));
    let latest = match (request.fresh, state.checkpoints.latest()) {
        (false, Some(p)) => p,
        _ => state
            .checkpoints
            .publish()
            .await
            .map_err(|e| internal(e.to_string()))?,
    };
    if request.from_size > latest.size {
        return Err(Status::failed_precondition(format!(
            "from_size {} is larger than the latest checkpoint's size {}",
            request.from_size, latest.size
        )));
    }
    let proof =
        crate::ledger::proof::consistency_proof(&state.store, request.from_size, latest.size)
            .map_err(|e| internal(e.to_string()))?;
    Ok(CheckpointResponse {
        checkpoint: state
            .checkpoints
            .with_cosignatures(latest.size, &latest.note)
            .map_err(|e| internal(e.to_string()))?,
        consistency_proof: proof.iter().map(|h| h.to_vec()).collect(),
    })
}

/// The identity (administration, role) in the TLS client certificate verified at the handshake.
pub(crate) fn peer_identity<T>(
    request: &Request<T>,
) -> Result<crate::identity::pki::CertIdentity, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let cert = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    cert_identity(cert).map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
}

/// The administration of the TLS client, as verified at the handshake.
pub(crate) fn peer_admin<T>(request: &Request<T>) -> Result<String, Status> {
    peer_identity(request).map(|id| id.admin)
}

#[tonic::async_trait]
impl Exchange for ExchangeService {
    type SubscribeAeoStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<crate::proto::v1::AeoSignedBatch, Status>>
                + Send,
        >,
    >;

    async fn subscribe_aeo(
        &self,
        request: Request<crate::proto::v1::AeoSubscribeRequest>,
    ) -> Result<Response<Self::SubscribeAeoStream>, Status> {
        let peer = peer_admin(&request)?;
        let request = request.into_inner();
        let publisher = crate::aeo::feed::publisher_for(&self.state, &peer, &request)?;
        let (tx, rx) = crate::aeo::feed::channel();
        let feed = crate::aeo::feed::serve(self.state.clone(), publisher, request, tx);
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            // Dropping the feed drops its sender: the partner's stream ends, and it resubscribes
            // (with backoff) once this node is back.
            tokio::select! {
                () = feed => {}
                _ = stopping.wait_for(|s| *s) => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lookup_aeo(
        &self,
        request: Request<crate::proto::v1::AeoLookupRequest>,
    ) -> Result<Response<crate::proto::v1::AeoSignedBatch>, Status> {
        let peer = peer_admin(&request)?;
        crate::aeo::lookup::answer(&self.state, &peer, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn ping(
        &self,
        request: Request<crate::proto::v1::PingRequest>,
    ) -> Result<Response<crate::proto::v1::PingResponse>, Status> {
        peer_admin(&request)?;
        crate::ping::answer(
            self.state.admin(),
            &self.state.identity.signing,
            request.get_ref(),
            crate::envelope::now_ms(),
        )
        .map(Response::new)
        .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    async fn deliver(&self, request: Request<Envelope>) -> Result<Response<Receipt>, Status> {
        let peer = peer_admin(&request)?;
        inbound::receive(&self.state, &peer, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|r| r.to_status())
    }

    async fn get_checkpoint(
        &self,
        request: Request<CheckpointRequest>,
    ) -> Result<Response<CheckpointResponse>, Status> {
        peer_admin(&request)?;
        // Partners get the latest published checkpoint; only auditors may force a fresh one.
        let req = CheckpointRequest {
            fresh: false,
            ..request.into_inner()
        };
        checkpoint_response(&self.state, &req)
            .await
            .map(Response::new)
    }

    async fn submit_cosignature(
        &self,
        request: Request<CosignatureRequest>,
    ) -> Result<Response<CosignatureResponse>, Status> {
        let peer = peer_admin(&request)?;
        let now = crate::envelope::now_ms();
        let key = self
            .state
            .agreements()
            .partner(self.state.admin(), &peer, now)
            .map(|p| p.verifying_key)
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "{peer} is not a partner under an agreement in force"
                ))
            })?;
        let req = request.into_inner();
        self.state
            .checkpoints
            .accept_cosignature(&peer, key, &req.checkpoint_text, &req.cosignature)
            .await
            .map(|()| Response::new(CosignatureResponse {}))
            .map_err(|e| match e {
                crate::checkpoints::CheckpointError::Cosignature(_)
                | crate::checkpoints::CheckpointError::Note(_) => {
                    Status::invalid_argument(e.to_string())
                }
                other => Status::internal(other.to_string()),
            })
    }

    type DeliverStreamStream = Pin<Box<dyn Stream<Item = Result<DeliveryResult, Status>> + Send>>;

    async fn deliver_stream(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        let peer = peer_admin(&request)?;
        let mut incoming = request.into_inner();
        let state = self.state.clone();
        // Bounded everywhere: one chunk being checked, STAGED_CHUNKS waiting for durability and
        // RESULTS_BUFFERED results not yet read by the partner. When the partner stops reading
        // results we stop reading envelopes, and HTTP/2 flow control stops the partner.
        let (results_tx, results_rx) = tokio::sync::mpsc::channel(RESULTS_BUFFERED);
        let (staged_tx, mut staged_rx) = tokio::sync::mpsc::channel(STAGED_CHUNKS);
        let reader_state = state.clone();
        tokio::spawn(async move {
            // Take what has already arrived, up to a chunk, without waiting for more.
            while let Some((chunk, failed)) =
                crate::delivery::next_chunk(&mut incoming, MAX_CHUNK).await
            {
                let failed = failed.map(standard_status);
                if !chunk.is_empty() {
                    let staged = inbound::stage_chunk(&reader_state, &peer, chunk).await;
                    if staged_tx.send(Staged::Chunk(staged)).await.is_err() {
                        return;
                    }
                }
                if let Some(status) = failed {
                    let _ = staged_tx.send(Staged::Failed(status)).await;
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(staged) = staged_rx.recv().await {
                match staged {
                    Staged::Chunk(chunk) => {
                        for result in chunk.finish(&state).await {
                            if results_tx.send(Ok(result)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Staged::Failed(status) => {
                        let _ = results_tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(results_rx),
        )))
    }
}

/// tonic's decoder refuses a frame over the size limit with OUT_OF_RANGE; gRPC says
/// RESOURCE_EXHAUSTED, and that is what a unary call answers (the `size_limit` layer rewrites its
/// response headers). On a stream the refusal comes in the trailers, after earlier results,
/// where the layer cannot see it: say the same here.
fn standard_status(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        crate::delivery::Refusal::new(crate::proto::v1::RejectReason::TooLarge, status.message())
            .to_status()
    } else {
        status
    }
}

/// Envelopes checked and recorded in one ledger transaction on a stream, at most.
const MAX_CHUNK: usize = 256;
/// Chunks of a stream recorded but not yet durable, at most.
const STAGED_CHUNKS: usize = 2;
/// Results of a stream waiting for the partner to read them, at most.
const RESULTS_BUFFERED: usize = 2 * MAX_CHUNK;

/// A stream's next step for the result writer.
enum Staged {
    /// A chunk recorded, waiting for durability.
    Chunk(inbound::StagedChunk),
    /// The stream failed (bad frame, too large, reset): report it after the earlier results.
    Failed(Status),
}
