//! Misbehaving partners (the partner side is a stand-in server here: a hostile or broken peer is
//! outside the product): a receipt that does not verify, and a peer that never answers.

use std::sync::Arc;
use std::time::Duration;

use dccf_node::identity::pki::Role;
use dccf_node::proto::v1::exchange_server::{Exchange, ExchangeServer};
use dccf_node::proto::v1::{DeliveryResult, EntryKind, Envelope, Receipt, ReceiptBody};
use dccf_node::server::tls::{self, PeerVerifier, TrustSource};
use dccf_tests::*;
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

const ALERT: &str = "dccf.v1.RiskAlert";

/// A partner that signs receipts with a key the agreement does not name.
struct ForgingPartner {
    key: ed25519_dalek::SigningKey,
}

#[tonic::async_trait]
impl Exchange for ForgingPartner {
    type SubscribeAeoStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<dccf_node::proto::v1::AeoSignedBatch, Status>>
                + Send,
        >,
    >;

    async fn subscribe_aeo(
        &self,
        _: Request<dccf_node::proto::v1::AeoSubscribeRequest>,
    ) -> Result<Response<Self::SubscribeAeoStream>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn lookup_aeo(
        &self,
        _: Request<dccf_node::proto::v1::AeoLookupRequest>,
    ) -> Result<Response<dccf_node::proto::v1::AeoSignedBatch>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn ping(
        &self,
        _: Request<dccf_node::proto::v1::PingRequest>,
    ) -> Result<Response<dccf_node::proto::v1::PingResponse>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn deliver(&self, request: Request<Envelope>) -> Result<Response<Receipt>, Status> {
        Ok(Response::new(forged_receipt(
            &self.key,
            &request.into_inner(),
        )))
    }

    type DeliverStreamStream =
        std::pin::Pin<Box<dyn Stream<Item = Result<DeliveryResult, Status>> + Send>>;

    async fn deliver_stream(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        let key = self.key.clone();
        let results = request.into_inner().map(move |envelope| {
            let envelope = envelope?;
            let receipt = forged_receipt(&key, &envelope);
            Ok(DeliveryResult {
                message_id: String::new(),
                outcome: Some(dccf_node::proto::v1::delivery_result::Outcome::Receipt(
                    receipt,
                )),
            })
        });
        Ok(Response::new(Box::pin(results)))
    }

    async fn get_checkpoint(
        &self,
        _request: Request<dccf_node::proto::v1::CheckpointRequest>,
    ) -> Result<Response<dccf_node::proto::v1::CheckpointResponse>, Status> {
        Err(Status::unimplemented("not in this stand-in"))
    }

    async fn submit_cosignature(
        &self,
        _request: Request<dccf_node::proto::v1::CosignatureRequest>,
    ) -> Result<Response<dccf_node::proto::v1::CosignatureResponse>, Status> {
        Err(Status::unimplemented("not in this stand-in"))
    }
}

/// A receipt that states the right envelope but is signed with `key`.
fn forged_receipt(key: &ed25519_dalek::SigningKey, env: &Envelope) -> Receipt {
    let header = dccf_node::proto::v1::EnvelopeHeader::decode(env.header.as_slice()).unwrap();
    let body = ReceiptBody {
        message_id: header.message_id,
        sender: header.sender,
        recipient: header.recipient,
        envelope_digest: dccf_node::envelope::envelope_digest(env).to_vec(),
        ledger_index: 0,
        received_at_ms: dccf_node::envelope::now_ms(),
        checkpoint: String::new(),
        ledger_size: 1,
        ledger_root: vec![0; 32],
        items: Vec::new(),
    };
    dccf_node::envelope::receipt::sign_receipt(&body, key)
}

#[derive(Debug)]
struct TrustAdmin(String, Vec<u8>);

impl TrustSource for TrustAdmin {
    fn cas_for(&self, admin: &str, role: Role) -> Vec<Vec<u8>> {
        if admin == self.0 && role == Role::Node {
            vec![self.1.clone()]
        } else {
            vec![]
        }
    }
}

#[tokio::test]
async fn a_receipt_that_does_not_verify_is_refused_and_not_recorded_as_delivered() {
    let mut fed = Federation::nl_br().await;
    let addr = fed.node("BR").exchange_addr;
    fed.stop("BR").await;

    // The stand-in holds BR's real TLS identity (so NL connects) but signs with a stray key.
    let br = fed.admin("BR").config.identity_paths();
    let nl_ca =
        tls::load_certs(&fed.admin("NL").config.identity_paths().ca_cert()).unwrap()[0].to_vec();
    let tls_config = tls::server_config(
        tls::ReloadingCert::load(&br.node_cert(), &br.node_key()).unwrap(),
        Arc::new(PeerVerifier::new(Arc::new(TrustAdmin("NL".into(), nl_ca)))),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let incoming = tls::incoming(
        listener,
        tls_config,
        Duration::from_secs(5),
        8,
        dccf_node::server::limits::PeerLimits::new("test", &Default::default()),
    );
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExchangeServer::new(ForgingPartner {
                key: ed25519_dalek::SigningKey::from_bytes(&[42; 32]),
            }))
            .serve_with_incoming(incoming),
    );

    let status = fed
        .gateway("NL")
        .send(send_request(
            "nl-br-exchange",
            "BR",
            ALERT,
            dccf_node::samples::risk_alert(1).encode_to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(
        status.message().contains("invalid receipt"),
        "{}",
        status.message()
    );
    let kinds: Vec<_> = ledger_entries(fed.node("NL"))
        .iter()
        .map(|e| e.kind())
        .collect();
    assert_eq!(kinds[0], EntryKind::EnvelopeSent);
    assert!(
        !kinds.contains(&EntryKind::ReceiptReceived),
        "no receipt recorded for a forged receipt: {kinds:?}"
    );
    // The attempt is recorded as failed and the message waits in the outbox for a retry.
    assert!(kinds.contains(&EntryKind::DeliveryFailed), "{kinds:?}");
    let outbox = fed
        .gateway("NL")
        .list_outbox(dccf_node::proto::v1::ListOutboxRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outbox.items.len(), 1, "{outbox:?}");
    assert!(
        outbox.items[0].last_error.contains("invalid receipt"),
        "{outbox:?}"
    );
    server.abort();
}

#[tokio::test]
async fn a_partner_that_never_answers_times_out_and_the_node_keeps_serving() {
    let mut fed = Federation::start(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        "nl-br-exchange",
        |c| {
            c.limits.request_timeout_secs = 2;
            c.limits.connect_timeout_secs = 2;
        },
    )
    .await;
    let addr = fed.node("BR").exchange_addr;
    fed.stop("BR").await;
    // Accepts TCP connections and then says nothing at all.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });

    let mut gw = fed.gateway("NL");
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        gw.send(send_request(
            "nl-br-exchange",
            "BR",
            ALERT,
            dccf_node::samples::risk_alert(1).encode_to_vec(),
        )),
    )
    .await
    .expect("the send must not hang")
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("BR"), "{}", status.message());
    eprintln!("silent partner detected after {:?}", started.elapsed());

    // The node still answers its back office, and recorded the failed delivery.
    let kinds: Vec<_> = ledger_entries(fed.node("NL"))
        .iter()
        .map(|e| e.kind())
        .collect();
    assert_eq!(kinds, [EntryKind::EnvelopeSent, EntryKind::DeliveryFailed]);
    assert!(drain_inbox(&mut gw).await.is_empty());
    silent.abort();
}
