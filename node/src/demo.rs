//! `dccf-node demo`: three administrations (NL, BR, DE) on loopback, each with its own keys, CA
//! and ledger, exchanging real signed and encrypted messages through real gRPC nodes over mutual
//! TLS under two signed agreements (a bilateral AEO MRA and a multilateral pre-arrival
//! agreement), with one refusal on each side. Prints what happened.
//!
//! The agreements are `agreements/nl-br-aeo-mra.toml` and `agreements/pre-arrival-nl-br-de.toml`
//! (embedded in the binary). Their party cards name the keys of whoever last signed the shipped
//! copies, so the demo swaps in the cards of the identities it has just generated and has every
//! party sign the result — exactly what real administrations do with a template.

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

/// The general bilateral example agreement shipped in `agreements/` (used by the tests).
pub const EXAMPLE_AGREEMENT: &str = include_str!("../../agreements/nl-br-exchange.toml");
/// File name of the general example agreement.
pub const EXAMPLE_AGREEMENT_FILE: &str = "nl-br-exchange.toml";
/// The bilateral AEO mutual-recognition example (NL, BR).
pub const MRA_AGREEMENT: &str = include_str!("../../agreements/nl-br-aeo-mra.toml");
/// File name of the MRA example.
pub const MRA_AGREEMENT_FILE: &str = "nl-br-aeo-mra.toml";
/// Id of the MRA example.
pub const MRA_ID: &str = "nl-br-aeo-mra";
/// The multilateral pre-arrival and risk-alert example (NL, BR, DE).
pub const PRE_ARRIVAL_AGREEMENT: &str = include_str!("../../agreements/pre-arrival-nl-br-de.toml");
/// File name of the pre-arrival example.
pub const PRE_ARRIVAL_AGREEMENT_FILE: &str = "pre-arrival-nl-br-de.toml";
/// Id of the pre-arrival example.
pub const PRE_ARRIVAL_ID: &str = "pre-arrival-nl-br-de";

/// Demo errors (all carry a one-line message).
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

/// A synthetic declaration made now, the ship due in 16 days or so (the samples have fixed
/// dates; the report's lead times should look like a live exchange's).
fn declaration(seq: u64) -> crate::proto::v1::PreArrivalDeclaration {
    let mut decl = crate::samples::pre_arrival_declaration(seq);
    let shift = crate::envelope::now_ms() - decl.created_at_ms;
    decl.created_at_ms += shift;
    decl.eta_ms += shift;
    decl
}

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

/// Creates identities for `admins` under `root/<admin>/` and, for each `(template, file name)`
/// in `agreements`, writes the agreement with its parties' fresh cards, has every party sign it,
/// and puts it in each party's agreements directory. Returns the configs with listeners bound on
/// free loopback ports.
pub async fn setup(
    root: &Path,
    admins: &[&str],
    agreements: &[(&str, &str)],
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
    for (template, file_name) in agreements {
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
        let parties: Vec<&str> = doc.parties.iter().map(|p| p.admin.as_str()).collect();
        let configs: Vec<&NodeConfig> = prepared
            .iter()
            .map(|(c, _, _)| c)
            .filter(|c| parties.contains(&c.admin.as_str()))
            .collect();
        let text = format!(
            "# Signed by the demo's freshly generated identities; see agreements/README.md.\n{}",
            toml::to_string(&doc).map_err(fail)?
        );
        let agreement_path = configs[0].agreements_dir.join(file_name);
        std::fs::write(&agreement_path, text).map_err(fail)?;
        for config in &configs {
            let id = crate::identity::NodeIdentity::load(&config.identity_paths(), &config.admin)
                .map_err(fail)?;
            sign_file(&agreement_path, &config.admin, id.signing.signing_key()).map_err(fail)?;
        }
        for config in configs.iter().skip(1) {
            copy_agreement(&agreement_path, &config.agreements_dir, &parties)?;
        }
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

/// Section 7: what an operator and a programme manager see: `doctor` on NL (partners reached
/// over mutual TLS, clocks compared through signed pings, the ledger checked against its last
/// checkpoint), `doctor` naming an operator's slip on DE with its fix, and BR's effectiveness
/// report.
async fn operations(nodes: &[DemoNode]) -> Result<(), DemoError> {
    println!("\n7. Operations: `dccf-node doctor` on NL, `dccf-node report` of BR");
    let nl = &nodes[0];
    let findings = crate::doctor::run(&nl.config.data_dir.join("node.toml")).await;
    for f in findings.iter().filter(|f| {
        f.check.starts_with("partner")
            || f.check == "ledger"
            || f.level >= crate::doctor::Level::Warn
    }) {
        println!("   {:?}  {:<14} {}", f.level, f.check, f.what);
    }
    let fails = findings
        .iter()
        .filter(|f| f.level == crate::doctor::Level::Fail)
        .count();
    println!("   doctor: {} checks, {fails} failure(s)", findings.len());
    operator_slip(nodes).await?;
    let br = nodes
        .iter()
        .find(|n| n.config.admin == "BR")
        .ok_or_else(|| fail("no BR"))?;
    let now = crate::envelope::now_ms();
    crate::report::persist_mirror_counts(&br.node.state)
        .await
        .map_err(fail)?;
    let report = crate::report::compute(&br.node.state.store, "BR", now - 3_600_000, now + 1, None)
        .map_err(fail)?;
    for line in crate::report::table(&report).lines() {
        println!("   {line}");
    }
    Ok(())
}

/// DE's operator leaves its signing key readable by every user of the machine (a restore with
/// the wrong umask, say): `doctor` names the file and the command that fixes it.
async fn operator_slip(nodes: &[DemoNode]) -> Result<(), DemoError> {
    use std::os::unix::fs::PermissionsExt;
    let de = nodes
        .iter()
        .find(|n| n.config.admin == "DE")
        .ok_or_else(|| fail("no DE"))?;
    let key = de.config.identity_paths().signing_key();
    let mode = |m| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(m));
    println!(
        "   DE's signing key made readable by everyone (chmod 644); `dccf-node doctor` on DE:"
    );
    mode(0o644).map_err(fail)?;
    let findings = crate::doctor::run(&de.config.data_dir.join("node.toml")).await;
    mode(0o600).map_err(fail)?;
    for f in findings
        .iter()
        .filter(|f| f.level == crate::doctor::Level::Fail)
    {
        println!("   FAIL  {}: {}", f.check, f.what);
        if let Some(fix) = &f.fix {
            println!("         fix: {fix}");
        }
    }
    Ok(())
}

/// The auditor's view: fresh signed checkpoints, one witnessing round (partners check
/// consistency and cosign), offline export + verify of NL's and BR's ledgers, a reconciliation
/// of the two, and a stand-alone inclusion proof.
async fn audit(nodes: &[DemoNode], root: &Path) -> Result<(), DemoError> {
    use crate::ledger::export;
    println!(
        "\nVerifiable ledgers (C2SP signed checkpoints, cosigned by partners after a consistency check):"
    );
    for n in nodes {
        n.node.state.checkpoints.publish().await.map_err(fail)?;
    }
    for n in nodes {
        crate::witness::round(&n.node.state).await;
    }
    for n in nodes {
        let cps = &n.node.state.checkpoints;
        let latest = cps.latest().ok_or_else(|| fail("no checkpoint"))?;
        let witnesses: Vec<String> = cps
            .witnesses()
            .map_err(fail)?
            .into_iter()
            .filter(|(_, size)| *size == latest.size)
            .map(|(vkey, _)| vkey.split('+').next().unwrap_or_default().to_owned())
            .collect();
        println!(
            "   {}  checkpoint of {:>2} entries, cosigned by {}",
            cps.origin(),
            latest.size,
            if witnesses.is_empty() {
                "nobody yet".to_owned()
            } else {
                witnesses.join(", ")
            }
        );
    }
    let exports = root.join("exports");
    std::fs::create_dir_all(&exports).map_err(fail)?;
    let mut dirs = Vec::new();
    for n in nodes
        .iter()
        .filter(|n| ["NL", "BR"].contains(&n.config.admin.as_str()))
    {
        let material = n.node.state.checkpoints.export_material().map_err(fail)?;
        let out = exports.join(&n.config.admin);
        export::write_export(&n.node.state.store, &material.input(), &out).map_err(fail)?;
        let report = export::verify_export(&out).map_err(fail)?;
        println!(
            "   exported {} to {} (tlog-tiles): verified offline, {} entries, {} cosignatures",
            n.config.admin,
            out.display(),
            report.entries,
            report.cosignatures.len()
        );
        dirs.push(out);
    }
    if let [a, b] = dirs.as_slice() {
        let r = export::reconcile(a, b).map_err(fail)?;
        println!(
            "   reconcile {} <-> {}: {} messages recorded alike on both sides, {} discrepancies",
            r.a,
            r.b,
            r.matched,
            r.discrepancies.len()
        );
        let (_, entries) = export::read_entries(b).map_err(fail)?;
        if let Some((index, e)) = entries
            .iter()
            .find(|(_, e)| e.kind == crate::proto::v1::EntryKind::EnvelopeReceived as i32)
        {
            let br = nodes
                .iter()
                .find(|n| n.config.admin == "BR")
                .ok_or_else(|| fail("no BR"))?;
            let state = &br.node.state;
            let latest = state
                .checkpoints
                .latest()
                .ok_or_else(|| fail("no checkpoint"))?;
            let hashes = crate::ledger::proof::inclusion_proof(&state.store, *index, latest.size)
                .map_err(fail)?;
            let text = export::tlog_proof_text(*index, &hashes, &latest.note, None);
            let leaf = state.store.entry(*index).map_err(fail)?.unwrap_or_default();
            let proof = export::parse_tlog_proof(&text).map_err(fail)?;
            export::verify_tlog_proof(&proof, &leaf, &state.checkpoints.vkey()).map_err(fail)?;
            println!(
                "   BR's record of receiving {} (entry {index}): its C2SP tlog-proof ({} hashes) verifies \
                 offline against BR's key",
                e.message_id,
                hashes.len()
            );
        }
    }
    Ok(())
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
        "DCCF node demo: three customs administrations exchanging data peer to peer on loopback\n"
    );
    let prepared = setup(
        &root,
        &["NL", "BR", "DE"],
        &[
            (MRA_AGREEMENT, MRA_AGREEMENT_FILE),
            (PRE_ARRIVAL_AGREEMENT, PRE_ARRIVAL_AGREEMENT_FILE),
        ],
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
    let agreements = nodes[0].node.state.agreements();
    for id in [MRA_ID, PRE_ARRIVAL_ID] {
        let a = agreements
            .active(id, crate::envelope::now_ms())
            .map_err(fail)?;
        println!(
            "  agreement {} v{} \"{}\": signed by {}, digest {}…, {} flows",
            a.id(),
            a.doc.version,
            a.doc.title,
            a.parties.keys().cloned().collect::<Vec<_>>().join(", "),
            short(&a.digest),
            a.doc.flows.len()
        );
    }
    println!();
    let (nl, br, de) = (&nodes[0], &nodes[1], &nodes[2]);
    let (nl_config, br_config) = (nl.config.clone(), br.config.clone());
    let mut nl_gw = gateway_client_for(&nl.config).map_err(fail)?;
    let mut br_gw = gateway_client_for(&br.config).map_err(fail)?;
    let mut de_gw = gateway_client_for(&de.config).map_err(fail)?;

    // 1. Pre-arrival declarations NL → BR and NL → DE under the multilateral agreement.
    println!("1. Pre-arrival declarations under {PRE_ARRIVAL_ID}");
    for (to, gw, seq) in [("BR", &mut br_gw, 1), ("DE", &mut de_gw, 2)] {
        let decl = declaration(seq);
        let sent = nl_gw
            .send(request(
                PRE_ARRIVAL_ID,
                to,
                "dccf.v1.PreArrivalDeclaration",
                decl.encode_to_vec(),
                "",
            ))
            .await
            .map_err(|s| fail(format!("send declaration: {}", s.message())))?
            .into_inner();
        let receipt = receipt_body(&sent)?;
        println!(
            "   NL → {to}  {} ({} goods items, {} bytes): signed, sealed to {to}, ledgered by NL at #{}; {to}'s receipt verified ({to} ledger #{}, root {}…)",
            decl_ref(&decl),
            decl.goods_items.len(),
            decl.encoded_len(),
            sent.sent_ledger_index,
            receipt.ledger_index,
            short(&receipt.ledger_root)
        );
        let received = drain_inbox(gw).await?;
        for m in &received {
            let d = PreArrivalDeclaration::decode(m.payload.as_slice()).map_err(fail)?;
            println!(
                "   {to} inbox: {} from {}, ETA in {} h, first HS {}",
                decl_ref(&d),
                m.sender,
                (d.eta_ms - d.created_at_ms) / 3_600_000,
                d.goods_items
                    .first()
                    .map(|g| g.hs_code.as_str())
                    .unwrap_or("-")
            );
        }
        ack_all(gw, &received).await?;
    }

    // 2. AEO status lookup BR → NL under the bilateral MRA, with a refusal on the sender side.
    let decl = declaration(1);
    let operator = decl
        .consignor
        .as_ref()
        .and_then(|p| p.aeo_authorisation_number.clone())
        .unwrap_or_else(|| "NLAEOC0001".into());
    println!("\n2. AEO status lookup under {MRA_ID}");
    let query = crate::samples::aeo_status_query(&operator, 1);
    br_gw
        .send(request(
            MRA_ID,
            "NL",
            "dccf.v1.AeoStatusQuery",
            query.encode_to_vec(),
            "",
        ))
        .await
        .map_err(|s| fail(format!("send AEO query: {}", s.message())))?;
    println!("   BR → NL  status query for consignor {operator}");
    let queries = drain_inbox(&mut nl_gw).await?;
    for m in &queries {
        let q = AeoStatusQuery::decode(m.payload.as_slice()).map_err(fail)?;
        let full = crate::samples::aeo_status_response(&q, AeoStatus::Valid);
        // The MRA discloses status and validity only: NL's own node refuses the name and address.
        match nl_gw
            .send(request(
                MRA_ID,
                "BR",
                "dccf.v1.AeoStatusResponse",
                full.encode_to_vec(),
                &m.message_id,
            ))
            .await
        {
            Ok(_) => return Err(fail("NL's node disclosed fields the MRA does not allow")),
            Err(s) => println!(
                "   NL → BR  answer with operator name and address: refused by NL's own node, nothing sent ({:?}):\n            {}",
                s.code(),
                s.message()
            ),
        }
        let mut status_only = full;
        status_only.operator_name = None;
        status_only.operator_address = None;
        nl_gw
            .send(request(
                MRA_ID,
                "BR",
                "dccf.v1.AeoStatusResponse",
                status_only.encode_to_vec(),
                &m.message_id,
            ))
            .await
            .map_err(|s| fail(format!("send AEO answer: {}", s.message())))?;
        println!("   NL → BR  answer with status and validity only: delivered and receipted");
    }
    ack_all(&mut nl_gw, &queries).await?;
    let answers = drain_inbox(&mut br_gw).await?;
    for m in &answers {
        let r = crate::proto::v1::AeoStatusResponse::decode(m.payload.as_slice()).map_err(fail)?;
        println!(
            "   BR inbox: {} is {:?} ({:?}), no name or address disclosed: {}",
            r.operator_identifier,
            r.status(),
            r.programme(),
            r.operator_name.is_none() && r.operator_address.is_none()
        );
    }
    ack_all(&mut br_gw, &answers).await?;

    // 3. A risk alert DE → BR.
    println!("\n3. Risk alert under {PRE_ARRIVAL_ID}");
    let alert = crate::samples::risk_alert(1);
    de_gw
        .send(request(
            PRE_ARRIVAL_ID,
            "BR",
            "dccf.v1.RiskAlert",
            alert.encode_to_vec(),
            "",
        ))
        .await
        .map_err(|s| fail(format!("send risk alert: {}", s.message())))?;
    let alerts = drain_inbox(&mut br_gw).await?;
    for m in &alerts {
        let a = crate::proto::v1::RiskAlert::decode(m.payload.as_slice()).map_err(fail)?;
        println!(
            "   DE → BR  {} ({:?}, {:?}): in BR's inbox",
            a.alert_id,
            a.severity(),
            a.category()
        );
    }
    ack_all(&mut br_gw, &alerts).await?;

    // 4. Refused by the receiver: a hand-built envelope that skips DE's own checks.
    println!(
        "\n4. DE → BR  hand-built AEO query under {PRE_ARRIVAL_ID} (no such flow), bypassing DE's own checks"
    );
    let payload = crate::samples::aeo_status_query("BRAEO0001", 9).encode_to_vec();
    match forged_delivery(
        &de.node,
        PRE_ARRIVAL_ID,
        "BR",
        "dccf.v1.AeoStatusQuery",
        &payload,
    )
    .await
    {
        Ok(()) => return Err(fail("BR accepted a message the agreement forbids")),
        Err(s) => println!(
            "   rejected by BR and recorded in BR's ledger ({:?}):\n            {}",
            s.code(),
            s.message()
        ),
    }

    // 5. Reliable delivery: bulk mode and an outage.
    delivery(&mut nodes, &mut nl_gw, &mut br_gw).await?;

    // 6. AEO mutual recognition: BR's registry mirrored at NL, a suspension seen in moments.
    aeo_mirror(&nodes, &mut nl_gw, &mut br_gw).await?;

    println!(
        "\nLedgers (append-only, RFC 6962 leaf hashes; nothing acknowledged before it is durable):"
    );
    for n in &nodes {
        let head = n.node.state.store.durable_head();
        println!(
            "   {}  {:>2} entries  root {}",
            n.config.admin,
            head.size,
            hex::encode(head.root)
        );
    }

    audit(&nodes, &root).await?;
    operations(&nodes).await?;

    if keep {
        println!("\nNodes keep running. Try (from the repository root):");
        let nl_cfg = nl_config.data_dir.join("node.toml");
        let br_cfg = br_config.data_dir.join("node.toml");
        let sample = nl_config.data_dir.join("sample-declaration.json");
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
        println!(
            "   cargo run --release -- agreement show {}",
            nl_config.agreements_dir.join(MRA_AGREEMENT_FILE).display()
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

/// Section 6: BR imports its AEO registry; NL's mirror of it fills from a signed snapshot; NL
/// looks an operator up (mirror and online, signed); BR suspends it; NL sees it moments later.
async fn aeo_mirror(nodes: &[DemoNode], nl_gw: &mut Gw, br_gw: &mut Gw) -> Result<(), DemoError> {
    use crate::proto::v1::{
        AeoLookupMode, AeoRegistryRecord, ListAeoMirrorsRequest, LookupAeoRequest, UpdateAeoRequest,
    };
    const OPERATORS: u64 = 10_000;
    println!("\n6. AEO mutual recognition under {MRA_ID}: BR's registry mirrored at NL");
    let records: Vec<AeoRegistryRecord> =
        crate::aeo::generate::generate("BR", OPERATORS, 2026).collect();
    let mut csv = Vec::new();
    crate::aeo::import::write(crate::aeo::import::Format::Csv, &records, &mut csv).map_err(fail)?;
    let started = std::time::Instant::now();
    let imported = br_gw
        .import_aeo_registry(tokio_stream::iter(crate::aeo::import::requests(
            crate::aeo::import::Format::Csv,
            &csv,
        )))
        .await
        .map_err(|s| fail(format!("AEO import: {}", s.message())))?
        .into_inner();
    println!(
        "   BR imports its registry (synthetic, {} operators, CSV): version {}, ledger #{}",
        imported.records, imported.version, imported.ledger_index
    );
    let mirror_at = |gw: &mut Gw, version: u64| {
        let mut gw = gw.clone();
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let list = gw
                    .list_aeo_mirrors(ListAeoMirrorsRequest {})
                    .await
                    .map_err(|s| fail(format!("ListAeoMirrors: {}", s.message())))?
                    .into_inner();
                if let Some(m) = list.mirrors.into_iter().find(|m| m.partner == "BR")
                    && m.version >= version
                {
                    return Ok(m);
                }
                if std::time::Instant::now() > deadline {
                    return Err(fail("NL's mirror of BR did not catch up within 60 s"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    let m = mirror_at(nl_gw, imported.version).await?;
    println!(
        "   NL's mirror of BR: {} operators at version {} after {} ms (signed snapshot, verified part by part)",
        m.records,
        m.version,
        started.elapsed().as_millis()
    );
    let operator = records
        .iter()
        .find(|r| r.status == crate::proto::v1::AeoStatus::Valid as i32)
        .ok_or_else(|| fail("no valid operator generated"))?
        .operator_id
        .clone();
    let ask = |mode: AeoLookupMode, id: &str| LookupAeoRequest {
        partner: "BR".into(),
        operator_id: id.to_owned(),
        mode: mode as i32,
        purpose: "grant MRA benefits at clearance".into(),
        ..Default::default()
    };
    let lookup = |gw: &mut Gw, r: LookupAeoRequest| {
        let mut gw = gw.clone();
        async move {
            gw.lookup_aeo(r)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| fail(format!("LookupAeo: {}", s.message())))
        }
    };
    let br_key = nodes
        .iter()
        .find(|n| n.config.admin == "BR")
        .ok_or_else(|| fail("no BR"))?
        .node
        .state
        .identity
        .signing
        .verifying_key();
    let t = std::time::Instant::now();
    let answer = lookup(nl_gw, ask(AeoLookupMode::Mirror, &operator)).await?;
    let took = t.elapsed();
    let mirror = answer.mirror.ok_or_else(|| fail("no mirror answer"))?;
    let statement = mirror
        .statement
        .ok_or_else(|| fail("unsigned mirror answer"))?;
    let (header, record) =
        crate::aeo::statement::verify_statement(&statement, &br_key).map_err(fail)?;
    println!(
        "   NL looks up {operator} in its mirror: {:?} (as of {}, {} µs); BR's signature over it verifies offline \
         (batch of {}, {}-hash path), name and address withheld as the MRA says",
        record.status(),
        crate::agreement::format_ms(mirror.as_of_ms),
        took.as_micros(),
        header.leaf_count,
        statement.path.len()
    );
    let suspended_at = std::time::Instant::now();
    let update = br_gw
        .update_aeo_operator(UpdateAeoRequest {
            record: Some(AeoRegistryRecord {
                operator_id: operator.clone(),
                status: crate::proto::v1::AeoStatus::Suspended as i32,
                ..Default::default()
            }),
            status_only: true,
        })
        .await
        .map_err(|s| fail(format!("suspend: {}", s.message())))?
        .into_inner();
    println!(
        "   BR suspends {operator} (registry version {}, ledger #{})",
        update.version, update.ledger_index
    );
    mirror_at(nl_gw, update.version).await?;
    let seen = suspended_at.elapsed();
    let both = lookup(nl_gw, ask(AeoLookupMode::Both, &operator)).await?;
    let status = |a: &Option<crate::proto::v1::AeoAnswer>| {
        a.as_ref()
            .and_then(|a| a.record.as_ref())
            .map(|r| format!("{:?}", r.status()))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "   NL sees the suspension in its mirror {} ms later; mirror {}, online from BR {} (signed, on both ledgers){}",
        seen.as_millis(),
        status(&both.mirror),
        status(&both.online),
        if both.warning.is_empty() {
            String::new()
        } else {
            format!(" — warning: {}", both.warning)
        }
    );
    let unknown = lookup(nl_gw, ask(AeoLookupMode::Mirror, "BRAEOF9999999999")).await?;
    println!(
        "   NL looks up an unknown id: {} (nothing more is revealed)",
        status(&unknown.mirror)
    );
    Ok(())
}

/// Section 5: a bulk stream NL → BR, then DE down while NL sends to it.
async fn delivery(
    nodes: &mut Vec<DemoNode>,
    nl_gw: &mut Gw,
    br_gw: &mut Gw,
) -> Result<(), DemoError> {
    use tokio_stream::StreamExt;
    const BULK: u64 = 2000;
    println!("\n5. Reliable delivery");
    let started = std::time::Instant::now();
    let requests: Vec<SendRequest> = (0..BULK)
        .map(|seq| SendRequest {
            await_delivery: false,
            ..request(
                PRE_ARRIVAL_ID,
                "BR",
                "dccf.v1.PreArrivalDeclaration",
                declaration(100 + seq).encode_to_vec(),
                "",
            )
        })
        .collect();
    let mut responses = nl_gw
        .send_stream(tokio_stream::iter(requests))
        .await
        .map_err(|s| fail(format!("SendStream: {}", s.message())))?
        .into_inner();
    let mut queued = 0u64;
    while let Some(r) = responses.next().await {
        let r = r.map_err(|s| fail(format!("SendStream: {}", s.message())))?;
        if let Some(rej) = r.rejection {
            return Err(fail(format!(
                "SendStream refused a declaration: {}",
                rej.message
            )));
        }
        queued += 1;
    }
    let queued_in = started.elapsed();
    let mut arrived = 0u64;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while arrived < BULK {
        if std::time::Instant::now() > deadline {
            return Err(fail(format!(
                "only {arrived} of {BULK} declarations arrived at BR"
            )));
        }
        let got = drain_inbox(br_gw).await?;
        arrived += got.len() as u64;
        ack_all(br_gw, &got).await?;
        if got.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let elapsed = started.elapsed();
    let batch_receipts = (0..nodes[1].node.state.store.durable_head().size)
        .filter_map(|i| nodes[1].node.state.store.entry(i).ok().flatten())
        .filter_map(|leaf| crate::ledger::entry::parse(&leaf).ok())
        .filter(|e| {
            e.kind() == crate::proto::v1::EntryKind::ReceiptIssued
                && e.receipt
                    .as_ref()
                    .and_then(|r| crate::proto::v1::ReceiptBody::decode(r.body.as_slice()).ok())
                    .is_some_and(|b| !b.items.is_empty())
        })
        .count();
    println!(
        "   NL → BR  {queued} declarations on one SendStream (bulk mode: one HPKE epoch, one signature per batch of up to 256):"
    );
    println!(
        "            queued durably in NL's outbox in {} ms, all {BULK} in BR's inbox after {} ms ({:.0} messages/s), {batch_receipts} signed batch receipts",
        queued_in.as_millis(),
        elapsed.as_millis(),
        BULK as f64 / elapsed.as_secs_f64()
    );

    // DE goes down; NL's message waits in the outbox and is delivered once DE is back.
    let de = nodes.remove(2);
    let de_config = de.config.clone();
    de.node.shutdown().await;
    let sent = nl_gw
        .send(SendRequest {
            await_delivery: false,
            ..request(
                PRE_ARRIVAL_ID,
                "DE",
                "dccf.v1.PreArrivalDeclaration",
                declaration(7).encode_to_vec(),
                "",
            )
        })
        .await
        .map_err(|s| fail(format!("send to DE: {}", s.message())))?
        .into_inner();
    println!(
        "   DE stopped. NL → DE  declaration {}: accepted into NL's outbox (ledger #{})",
        sent.message_id, sent.sent_ledger_index
    );
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let outbox = nl_gw
        .list_outbox(crate::proto::v1::ListOutboxRequest::default())
        .await
        .map_err(|s| fail(format!("ListOutbox: {}", s.message())))?
        .into_inner();
    for item in &outbox.items {
        println!(
            "   NL outbox: {} to {}, {} attempt(s), retrying with backoff; last error: {}",
            item.message_id,
            item.partner,
            item.attempts,
            item.last_error.chars().take(90).collect::<String>()
        );
    }
    let node = crate::server::start(de_config.clone())
        .await
        .map_err(fail)?;
    nodes.push(DemoNode {
        config: de_config.clone(),
        node,
    });
    let mut de_gw = gateway_client_for(&de_config).map_err(fail)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = drain_inbox(&mut de_gw).await?;
        if let Some(m) = got.first() {
            println!(
                "   DE restarted: {} delivered once, NL's outbox empty again; the failed attempts are in NL's ledger (DELIVERY_FAILED)",
                m.message_id
            );
            ack_all(&mut de_gw, &got).await?;
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(fail("NL's declaration never reached DE after its restart"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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

/// Seals and signs, with `node`'s real keys, a message of `message_type` to `to` under
/// `agreement_id` without any of the node's own policy checks, and delivers it straight to the
/// partner's Exchange service (to show what the receiver does with it).
pub async fn forged_delivery(
    node: &RunningNode,
    agreement_id: &str,
    to: &str,
    message_type: &str,
    payload: &[u8],
) -> Result<(), tonic::Status> {
    let state: &Arc<crate::state::NodeState> = &node.state;
    let now = crate::envelope::now_ms();
    let agreements = state.agreements();
    let agreement = agreements
        .active(agreement_id, now)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    let partner = agreement
        .party(to)
        .ok_or_else(|| tonic::Status::internal("no partner"))?;
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = crate::envelope::seal::seal(
        &crate::envelope::seal::Outgoing {
            message_id: &id,
            agreement_id: agreement.id(),
            agreement_digest: &agreement.digest,
            sender: state.admin(),
            recipient: to,
            message_type,
            payload,
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
            prost_reflect::DynamicMessage::decode(d, declaration(7).encode_to_vec().as_slice())
                .ok()
                .and_then(|m| serde_json::to_value(&m).ok())
        })
        .unwrap_or(None)
        .unwrap_or(serde_json::Value::Null);
    serde_json::to_string_pretty(&serde_json::json!({
        "agreement": PRE_ARRIVAL_ID,
        "to": "BR",
        "type": "dccf.v1.PreArrivalDeclaration",
        "message": desc,
    }))
    .unwrap_or_default()
}
