//! `dccf-node demo`: two administrations (NL and BR) on loopback, each with its own keys, CA and
//! ledger, exchanging real signed and encrypted messages through real gRPC nodes over mutual TLS
//! under a signed agreement, with one refusal on each side. Prints what happened.
//!
//! The agreement is `agreements/nl-br-exchange.toml` (embedded in the binary). Its party cards
//! name the keys of whoever last signed the shipped copy, so the demo swaps in the cards of the
//! identities it has just generated and has both administrations sign the result — exactly what
//! two real administrations do with a template.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use tokio::net::TcpListener;

use crate::agreement::{AgreementDoc, sign_file};
use crate::cli::{gateway_client_for, init};
use crate::config::NodeConfig;
use crate::proto::v1::{
    AckRequest, AeoStatus, AeoStatusQuery, InboxRequest, PreArrivalDeclaration, SendRequest,
};
use crate::server::{RunningNode, start_on};

/// The example agreement shipped in `agreements/`.
pub const EXAMPLE_AGREEMENT: &str = include_str!("../../agreements/nl-br-exchange.toml");
/// File name of the example agreement.
pub const EXAMPLE_AGREEMENT_FILE: &str = "nl-br-exchange.toml";

/// Demo errors (all carry a one-line message).
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

fn fail(e: impl std::fmt::Display) -> DemoError {
    DemoError(crate::config::one_line(&e.to_string()))
}

/// One administration of the demo: its config, data directory and running node.
pub struct DemoNode {
    /// Its configuration.
    pub config: NodeConfig,
    /// The running node.
    pub node: RunningNode,
}

/// Creates identities for `admins` under `root/<admin>/`, writes the agreement `template` (TOML)
/// with their cards into each agreements directory as `file_name`, signed by all, and returns the
/// configs with listeners bound on free loopback ports.
pub async fn setup(
    root: &Path,
    admins: &[&str],
    template: &str,
    file_name: &str,
) -> Result<Vec<(NodeConfig, TcpListener, TcpListener)>, DemoError> {
    let mut prepared = Vec::new();
    let mut cards = Vec::new();
    for admin in admins {
        let exchange = TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
        let gateway = TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
        let dir = root.join(admin);
        if dir.join("node.toml").exists() {
            return Err(fail(format!(
                "{} already holds an administration; choose an empty --dir",
                dir.display()
            )));
        }
        let card = init(
            admin,
            exchange.local_addr().map_err(fail)?,
            Some(gateway.local_addr().map_err(fail)?),
            None,
            &dir,
        )
        .map_err(fail)?;
        let config = NodeConfig::load(&dir.join("node.toml")).map_err(fail)?;
        cards.push(card);
        prepared.push((config, exchange, gateway));
    }
    let mut doc: AgreementDoc = toml::from_str(template).map_err(fail)?;
    doc.parties = doc
        .parties
        .iter()
        .map(|p| {
            cards
                .iter()
                .find(|c| c.admin == p.admin)
                .cloned()
                .ok_or_else(|| fail(format!("no identity for party {}", p.admin)))
        })
        .collect::<Result<_, _>>()?;
    let text = format!(
        "# Signed by the demo's freshly generated identities; see agreements/README.md.\n{}",
        toml::to_string(&doc).map_err(fail)?
    );
    let first = &prepared[0].0;
    let agreement_path = first.agreements_dir.join(file_name);
    std::fs::write(&agreement_path, text).map_err(fail)?;
    for (config, _, _) in &prepared {
        let id = crate::identity::NodeIdentity::load(&config.identity_paths(), &config.admin)
            .map_err(fail)?;
        sign_file(&agreement_path, &config.admin, id.signing.signing_key()).map_err(fail)?;
    }
    for (config, _, _) in prepared.iter().skip(1) {
        copy_agreement(&agreement_path, &config.agreements_dir, admins)?;
    }
    Ok(prepared)
}

fn copy_agreement(path: &Path, to_dir: &Path, admins: &[&str]) -> Result<(), DemoError> {
    let mut files = vec![path.to_owned()];
    files.extend(
        admins
            .iter()
            .map(|a| crate::agreement::signature_path(path, a)),
    );
    for f in files {
        let name = f.file_name().ok_or_else(|| fail("bad agreement path"))?;
        std::fs::copy(&f, to_dir.join(name)).map_err(fail)?;
    }
    Ok(())
}

fn short(bytes: &[u8]) -> String {
    hex::encode(&bytes[..bytes.len().min(8)])
}

/// Runs the demo. `keep` leaves the nodes running; `dir` keeps the data directories.
pub async fn run(keep: bool, dir: Option<PathBuf>) -> Result<(), DemoError> {
    let temp;
    let root = match dir {
        Some(d) => d,
        None => {
            temp = tempfile::Builder::new()
                .prefix("dccf-demo-")
                .tempdir()
                .map_err(fail)?;
            temp.path().to_owned()
        }
    };
    println!(
        "DCCF node demo: two customs administrations exchanging data peer to peer on loopback\n"
    );
    let prepared = setup(
        &root,
        &["NL", "BR"],
        EXAMPLE_AGREEMENT,
        EXAMPLE_AGREEMENT_FILE,
    )
    .await?;
    let mut nodes = Vec::new();
    for (config, exchange, gateway) in prepared {
        let node = start_on(config.clone(), exchange, gateway)
            .await
            .map_err(fail)?;
        println!(
            "  {}  data {}  exchange https://{}  gateway {}",
            config.admin,
            config.data_dir.display(),
            node.exchange_addr,
            node.gateway_addr
        );
        nodes.push(DemoNode { config, node });
    }
    let (nl, br) = (&nodes[0], &nodes[1]);
    let agreements = nl.node.state.agreements();
    let agreement = agreements
        .active("nl-br-exchange", crate::envelope::now_ms())
        .map_err(fail)?;
    println!(
        "  agreement {} v{} \"{}\"\n    digest {}…, signed by {}; flows: {}\n",
        agreement.id(),
        agreement.doc.version,
        agreement.doc.title,
        short(&agreement.digest),
        agreement
            .parties
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        agreement
            .doc
            .flows
            .iter()
            .map(|f| format!(
                "{} {}→{}",
                f.message_type.trim_start_matches("dccf.v1."),
                f.from,
                f.to
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut nl_gw = gateway_client_for(&nl.config).map_err(fail)?;
    let mut br_gw = gateway_client_for(&br.config).map_err(fail)?;

    // 1. Pre-arrival declaration NL → BR.
    let decl = crate::samples::pre_arrival_declaration(1);
    let sent = nl_gw
        .send(request(
            "nl-br-exchange",
            "BR",
            "dccf.v1.PreArrivalDeclaration",
            decl.encode_to_vec(),
            "",
        ))
        .await
        .map_err(|s| fail(format!("send declaration: {}", s.message())))?
        .into_inner();
    let receipt = receipt_body(&sent)?;
    println!(
        "1. NL → BR  pre-arrival declaration {} ({} goods items, {} bytes)",
        decl_ref(&decl),
        decl.goods_items.len(),
        decl.encoded_len()
    );
    println!(
        "   signed (Ed25519) + sealed to BR (HPKE), ledgered by NL at #{}; BR receipt verified: BR ledger #{}, root {}…",
        sent.sent_ledger_index,
        receipt.ledger_index,
        short(&receipt.ledger_root)
    );
    let received = drain_inbox(&mut br_gw).await?;
    for m in &received {
        let d = PreArrivalDeclaration::decode(m.payload.as_slice()).map_err(fail)?;
        println!(
            "   BR inbox: {} from {} — {}, {} items, first HS {}",
            m.message_type.trim_start_matches("dccf.v1."),
            m.sender,
            decl_ref(&d),
            d.goods_items.len(),
            d.goods_items
                .first()
                .map(|g| g.hs_code.as_str())
                .unwrap_or("-")
        );
    }
    ack_all(&mut br_gw, &received).await?;

    // 2. AEO status query BR → NL, and NL's answer.
    let operator = decl
        .consignor
        .as_ref()
        .and_then(|p| p.aeo_authorisation_number.clone())
        .unwrap_or_else(|| "NLAEOC0001".into());
    let query = crate::samples::aeo_status_query(&operator, 1);
    let q_sent = br_gw
        .send(request(
            "nl-br-exchange",
            "NL",
            "dccf.v1.AeoStatusQuery",
            query.encode_to_vec(),
            "",
        ))
        .await
        .map_err(|s| fail(format!("send AEO query: {}", s.message())))?
        .into_inner();
    println!(
        "\n2. BR → NL  AEO status query for operator {operator} (message {})",
        q_sent.message_id
    );
    let queries = drain_inbox(&mut nl_gw).await?;
    for m in &queries {
        let q = AeoStatusQuery::decode(m.payload.as_slice()).map_err(fail)?;
        let answer = crate::samples::aeo_status_response(&q, AeoStatus::Valid);
        let a_sent = nl_gw
            .send(request(
                "nl-br-exchange",
                "BR",
                "dccf.v1.AeoStatusResponse",
                answer.encode_to_vec(),
                &m.message_id,
            ))
            .await
            .map_err(|s| fail(format!("send AEO answer: {}", s.message())))?
            .into_inner();
        println!(
            "   NL answers: {:?} (message {}, in reply to {})",
            AeoStatus::Valid,
            a_sent.message_id,
            m.message_id
        );
    }
    ack_all(&mut nl_gw, &queries).await?;
    let answers = drain_inbox(&mut br_gw).await?;
    for m in &answers {
        let r = crate::proto::v1::AeoStatusResponse::decode(m.payload.as_slice()).map_err(fail)?;
        println!(
            "   BR inbox: AEO status of {} is {:?}",
            r.operator_identifier,
            r.status()
        );
    }
    ack_all(&mut br_gw, &answers).await?;

    // 3. Refused by the sender's own node: BR may not send declarations to NL.
    println!("\n3. BR → NL  pre-arrival declaration, a flow the agreement does not list");
    match br_gw
        .send(request(
            "nl-br-exchange",
            "NL",
            "dccf.v1.PreArrivalDeclaration",
            crate::samples::pre_arrival_declaration(2).encode_to_vec(),
            "",
        ))
        .await
    {
        Ok(_) => return Err(fail("BR's node sent a message the agreement forbids")),
        Err(s) => println!(
            "   refused by BR's own node, nothing sent ({:?}):\n   {}",
            s.code(),
            s.message()
        ),
    }

    // 4. Refused by the receiver: a hand-built envelope that skips NL's own checks.
    println!(
        "\n4. NL → BR  hand-built envelope of an unlisted type, bypassing NL's own policy check"
    );
    match forged_delivery(&nl.node, "BR").await {
        Ok(()) => return Err(fail("BR accepted a message the agreement forbids")),
        Err(s) => println!(
            "   rejected by BR and recorded in BR's ledger ({:?}):\n   {}",
            s.code(),
            s.message()
        ),
    }

    println!(
        "\nLedgers (append-only, RFC 6962 leaf hashes; nothing acknowledged before it is durable):"
    );
    for n in &nodes {
        let head = n.node.state.store.durable_head();
        println!(
            "   {}  {} entries  root {}",
            n.config.admin,
            head.size,
            hex::encode(head.root)
        );
    }

    if keep {
        println!("\nNodes keep running. Try (from the repository root):");
        let nl_cfg = nl.config.data_dir.join("node.toml");
        let br_cfg = br.config.data_dir.join("node.toml");
        let sample = nl.config.data_dir.join("sample-declaration.json");
        std::fs::write(&sample, sample_send_json()).map_err(fail)?;
        println!(
            "   cargo run --release -- send --config {} --file {}",
            nl_cfg.display(),
            sample.display()
        );
        println!(
            "   cargo run --release -- inbox --config {} --ack",
            br_cfg.display()
        );
        println!("Press Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    }
    for n in nodes {
        n.node.shutdown().await;
    }
    println!("\nDone.");
    Ok(())
}

fn decl_ref(d: &PreArrivalDeclaration) -> String {
    d.declaration_reference.clone()
}

fn request(
    agreement: &str,
    to: &str,
    message_type: &str,
    payload: Vec<u8>,
    in_reply_to: &str,
) -> SendRequest {
    SendRequest {
        in_reply_to: in_reply_to.into(),
        ..crate::delivery::outbound::request(agreement, to, message_type, payload)
    }
}

fn receipt_body(
    sent: &crate::proto::v1::SendResponse,
) -> Result<crate::proto::v1::ReceiptBody, DemoError> {
    let r = sent.receipt.as_ref().ok_or_else(|| fail("no receipt"))?;
    crate::proto::v1::ReceiptBody::decode(r.body.as_slice()).map_err(fail)
}

type Gw = crate::proto::v1::gateway_client::GatewayClient<tonic::transport::Channel>;

async fn drain_inbox(gw: &mut Gw) -> Result<Vec<crate::proto::v1::InboxMessage>, DemoError> {
    let mut stream = gw
        .inbox(InboxRequest { drain_only: true })
        .await
        .map_err(|s| fail(s.message()))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.map_err(|s| fail(s.message()))? {
        out.push(m);
    }
    Ok(out)
}

async fn ack_all(gw: &mut Gw, msgs: &[crate::proto::v1::InboxMessage]) -> Result<(), DemoError> {
    let ids = msgs
        .iter()
        .map(|m| format!("{}/{}", m.sender, m.message_id))
        .collect();
    gw.ack(AckRequest { message_ids: ids })
        .await
        .map_err(|s| fail(s.message()))?;
    Ok(())
}

/// Seals and signs, with `node`'s real keys, an AEO status query to `to` (a flow that only runs
/// the other way) and delivers it straight to the partner's Exchange service.
pub async fn forged_delivery(node: &RunningNode, to: &str) -> Result<(), tonic::Status> {
    let state: &Arc<crate::state::NodeState> = &node.state;
    let now = crate::envelope::now_ms();
    let agreements = state.agreements();
    let agreement = agreements
        .active("nl-br-exchange", now)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let partner = agreement
        .party(to)
        .ok_or_else(|| tonic::Status::internal("no partner"))?;
    let id = uuid::Uuid::now_v7().to_string();
    let payload = crate::samples::aeo_status_query("NLAEOC0001", 9).encode_to_vec();
    let envelope = crate::envelope::seal::seal(
        &crate::envelope::seal::Outgoing {
            message_id: &id,
            agreement_id: agreement.id(),
            agreement_digest: &agreement.digest,
            sender: state.admin(),
            recipient: to,
            message_type: "dccf.v1.AeoStatusQuery",
            payload: &payload,
            in_reply_to: "",
            consent_reference: "",
            created_at_ms: now,
            expires_at_ms: now + 60_000,
        },
        state.identity.signing.signing_key(),
        &partner.hpke_key,
    )
    .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let mut client = state
        .peers
        .client(partner)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    client.deliver(envelope).await.map(|_| ())
}

/// A sample `send` file for the `--keep` instructions.
pub fn sample_send_json() -> String {
    let desc = crate::proto::descriptor_pool()
        .get_message_by_name("dccf.v1.PreArrivalDeclaration")
        .map(|d| {
            prost_reflect::DynamicMessage::decode(
                d,
                crate::samples::pre_arrival_declaration(7)
                    .encode_to_vec()
                    .as_slice(),
            )
            .ok()
            .and_then(|m| serde_json::to_value(&m).ok())
        })
        .unwrap_or(None)
        .unwrap_or(serde_json::Value::Null);
    serde_json::to_string_pretty(&serde_json::json!({
        "agreement": "nl-br-exchange",
        "to": "BR",
        "type": "dccf.v1.PreArrivalDeclaration",
        "message": desc,
    }))
    .unwrap_or_default()
}
