//! Ledger transparency between real nodes on loopback (real mutual TLS, real sled): signed
//! checkpoints in receipts and on an interval, partners witnessing and cosigning each other's
//! checkpoints, the alarm when a partner rewrites its history, the Audit service and who may use
//! it, offline export / verify / reconcile of real ledgers, and retention keeping proofs valid.

use std::path::Path;
use std::time::{Duration, Instant};

use dccf_node::checkpoints::Checkpoints;
use dccf_node::config::NodeConfig;
use dccf_node::identity::NodeIdentity;
use dccf_node::ledger::Store;
use dccf_node::ledger::checkpoint::{CosignatureVerifier, NoteVerifier, parse_checkpoint};
use dccf_node::ledger::export::{self, DiscrepancyKind, ExportError, ExportInput, ExportSummary};
use dccf_node::ledger::merkle::{Frontier, leaf_hash};
use dccf_node::ledger::proof::{self, Hash};
use dccf_node::proto::v1::audit_client::AuditClient;
use dccf_node::proto::v1::gateway_client::GatewayClient;
use dccf_node::proto::v1::{
    CheckpointRequest, CheckpointResponse, ConsistencyProofRequest, EntriesRequest, EntryKind,
    InclusionProofRequest, InclusionProofResponse, LedgerEntry, LedgerStatusRequest, ReceiptBody,
    SendResponse, inclusion_proof_request::Target,
};
use dccf_node::witness::{self, Outcome};
use dccf_tests::*;
use ed25519_dalek::VerifyingKey;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

const ALERT: &str = "dccf.v1.RiskAlert";
const DECL: &str = "dccf.v1.PreArrivalDeclaration";
const AGREEMENT: &str = "nl-br-exchange";
/// Checkpoint / witness interval for tests that watch them happen (milliseconds).
const SHORT: u64 = 100;
/// An interval that never elapses during a test: only the round at start happens.
const LONG: u64 = 3_600_000;
/// Longest any bounded wait polls before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

// ---- helpers --------------------------------------------------------------------------------

/// NL and BR under the example agreement with the given checkpoint and witness intervals.
async fn federation(template: &str, checkpoint_ms: u64, witness_ms: u64) -> Federation {
    Federation::start(
        &["NL", "BR"],
        template,
        AGREEMENT,
        move |c: &mut NodeConfig| {
            c.ledger.checkpoint_interval_ms = checkpoint_ms;
            c.ledger.witness_interval_ms = witness_ms;
        },
    )
    .await
}

/// Polls `check` until it yields a value; fails the test after [`DEADLINE`].
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn alert(seq: u64) -> Vec<u8> {
    dccf_node::samples::risk_alert(seq).encode_to_vec()
}

/// A risk alert whose description is `marker` (to search the ledger for plaintext).
fn alert_with(seq: u64, marker: &str) -> Vec<u8> {
    let mut a = dccf_node::samples::risk_alert(seq);
    a.description = marker.to_owned();
    a.encode_to_vec()
}

async fn send(fed: &Federation, from: &str, to: &str, payload: Vec<u8>) -> SendResponse {
    fed.gateway(from)
        .send(send_request(AGREEMENT, to, ALERT, payload))
        .await
        .unwrap_or_else(|s| panic!("{from} -> {to} send: {s:?}"))
        .into_inner()
}

fn receipt_body(sent: &SendResponse) -> ReceiptBody {
    ReceiptBody::decode(sent.receipt.as_ref().expect("receipt").body.as_slice()).expect("body")
}

/// `admin`'s Ed25519 key as its partner knows it from the agreement.
fn key_in_agreement(fed: &Federation, admin: &str) -> VerifyingKey {
    let partner = if admin == "NL" { "BR" } else { "NL" };
    let set = fed.node(partner).state.agreements();
    set.partner(partner, admin, dccf_node::envelope::now_ms())
        .expect("partner in force")
        .verifying_key
}

fn origin(admin: &str) -> String {
    format!("dccf.example/{admin}")
}

/// Verifies `admin`'s log signature on checkpoints, with the key of the agreement.
fn log_verifier(fed: &Federation, admin: &str) -> NoteVerifier {
    NoteVerifier::new(&origin(admin), key_in_agreement(fed, admin)).unwrap()
}

/// Verifies `admin`'s cosignatures as a witness, with the key of the agreement.
fn cosigner(fed: &Federation, admin: &str) -> CosignatureVerifier {
    CosignatureVerifier::new(&origin(admin), key_in_agreement(fed, admin)).unwrap()
}

/// (size, root) of a checkpoint note that must verify under `log`.
fn open_note(log: &NoteVerifier, note: &str) -> (u64, Hash) {
    let text = log.verify(note).unwrap_or_else(|e| {
        panic!(
            "checkpoint does not verify under {}: {e}\n{note}",
            log.name()
        )
    });
    let (o, size, root) = parse_checkpoint(text).expect("checkpoint text");
    assert_eq!(o, log.name());
    (size, root)
}

/// The largest size of `admin`'s published checkpoints that carries a valid cosignature by
/// `witness` (and a valid log signature).
fn cosigned_size(
    fed: &Federation,
    admin: &str,
    log: &NoteVerifier,
    witness: &CosignatureVerifier,
) -> Option<u64> {
    fed.node(admin)
        .state
        .checkpoints
        .cosigned_notes()
        .expect("cosigned notes")
        .into_iter()
        .filter(|(_, note)| witness.verify(note).is_ok())
        .map(|(size, note)| {
            assert_eq!(open_note(log, &note).0, size);
            size
        })
        .max()
}

/// The size at which `witness` last saw (and cosigned) `partner`'s log.
fn witnessed(fed: &Federation, witness: &str, partner: &str) -> Option<u64> {
    witness::witnessed(&fed.node(witness).state.store)
        .expect("witnessed")
        .into_iter()
        .find(|(a, _)| a == partner)
        .map(|(_, size)| size)
}

fn audit_with(fed: &Federation, admin: &str, cert: &Path, key: &Path) -> AuditClient<Channel> {
    AuditClient::new(
        dccf_node::cli::local_channel(&fed.admin(admin).config, cert, key).expect("channel"),
    )
}

/// An Audit client for `admin` with its auditor certificate.
fn auditor(fed: &Federation, admin: &str) -> AuditClient<Channel> {
    let p = fed.admin(admin).config.identity_paths();
    audit_with(fed, admin, &p.auditor_cert(), &p.auditor_key())
}

fn hashes(raw: &[Vec<u8>]) -> Vec<Hash> {
    raw.iter()
        .map(|h| proof::hash_from_slice(h).expect("32-byte hash"))
        .collect()
}

async fn checkpoint(
    audit: &mut AuditClient<Channel>,
    from_size: u64,
    fresh: bool,
) -> CheckpointResponse {
    audit
        .get_checkpoint(CheckpointRequest { from_size, fresh })
        .await
        .expect("GetCheckpoint")
        .into_inner()
}

async fn inclusion(audit: &mut AuditClient<Channel>, target: Target) -> InclusionProofResponse {
    audit
        .get_inclusion_proof(InclusionProofRequest {
            target: Some(target),
        })
        .await
        .expect("GetInclusionProof")
        .into_inner()
}

/// Checks every proof of `response` three ways: the leaf decodes to the entry given, the RFC 9162
/// proof verifies against `root`, and the tlog-proof text parses and verifies under `vkey`.
fn check_proofs(response: &InclusionProofResponse, size: u64, root: &Hash, vkey: &str) {
    assert!(!response.proofs.is_empty());
    for p in &response.proofs {
        let e = p.entry.as_ref().expect("entry");
        assert_eq!(
            LedgerEntry::decode(e.leaf.as_slice()).unwrap(),
            e.entry.clone().unwrap()
        );
        proof::verify_inclusion(&leaf_hash(&e.leaf), e.index, size, &hashes(&p.hashes), root)
            .unwrap_or_else(|err| panic!("inclusion of entry {}: {err}", e.index));
        let tlog = export::parse_tlog_proof(&p.tlog_proof).expect("tlog-proof parses");
        assert_eq!(tlog.index, e.index);
        assert_eq!(tlog.checkpoint, response.checkpoint);
        export::verify_tlog_proof(&tlog, &e.leaf, vkey).expect("tlog-proof verifies");
        // The proof is bound to its leaf.
        let mut other = e.leaf.clone();
        other.push(0);
        assert!(export::verify_tlog_proof(&tlog, &other, vkey).is_err());
    }
}

fn assert_refused_or_denied(status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Internal
                | Code::Unauthenticated
                | Code::PermissionDenied
        ),
        "expected a refused connection or an authentication refusal, got {status:?}"
    );
}

/// Exports a ledger with its latest (cosigned) checkpoint, every cosigned checkpoint and the
/// witnesses' keys, as an operator would.
fn export_ledger(store: &Store, cps: &Checkpoints, out: &Path) -> ExportSummary {
    let checkpoint = cps.latest_cosigned().unwrap();
    let cosigned: Vec<String> = cps
        .cosigned_notes()
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    // Read last: every cosignature read above has its witness key by now.
    let witnesses: Vec<String> = cps
        .witnesses()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    export::write_export(
        store,
        &ExportInput {
            checkpoint: &checkpoint,
            vkey: &cps.vkey(),
            cosigned: &cosigned,
            witnesses: &witnesses,
        },
        out,
    )
    .expect("export")
}

/// Exports the ledger of a stopped node, opening its database and checkpoints directly.
fn export_stopped(config: &NodeConfig, out: &Path) -> ExportSummary {
    let store = Store::open(&config.ledger_dir()).expect("ledger opens after the node stopped");
    let key = NodeIdentity::load(&config.identity_paths(), &config.admin)
        .expect("identity")
        .signing
        .signing_key()
        .clone();
    let cps = Checkpoints::open(store.clone(), &config.origin(), key).expect("checkpoints open");
    export_ledger(&store, &cps, out)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn count_kind(entries: &[LedgerEntry], kind: EntryKind) -> usize {
    entries.iter().filter(|e| e.kind() == kind).count()
}

// ---- 1. checkpoints and receipts ------------------------------------------------------------

#[tokio::test]
async fn receipts_carry_the_receivers_signed_checkpoint_and_checkpoints_follow_the_ledger() {
    let fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, SHORT, LONG).await;
    let br = &fed.node("BR").state;
    let br_log = log_verifier(&fed, "BR");
    // The vkey BR publishes is its agreement key under its origin.
    let vkey = NoteVerifier::from_key_string(&br.checkpoints.vkey()).expect("vkey parses");
    assert_eq!(vkey.name(), "dccf.example/BR");
    eventually("BR's first checkpoint", || br.checkpoints.latest()).await;

    let first = send(&fed, "NL", "BR", alert(1)).await;
    let body = receipt_body(&first);
    assert!(!body.checkpoint.is_empty(), "receipt without checkpoint");
    let (size1, root1) = open_note(&br_log, &body.checkpoint);
    vkey.verify(&body.checkpoint)
        .expect("verifies under the published vkey");
    // It is a checkpoint BR published, of its real tree, and the ledger the receipt describes
    // (right after the acceptance) extends it.
    let published = br.checkpoints.note_at(size1).unwrap().expect("published");
    assert!(body.checkpoint.starts_with(&published));
    assert_eq!(proof::root_at(&br.store, size1).unwrap(), root1);
    assert!(size1 <= body.ledger_size, "{size1} > {}", body.ledger_size);
    let ledger_root: Hash = body.ledger_root.as_slice().try_into().unwrap();
    let p = proof::consistency_proof(&br.store, size1, body.ledger_size).unwrap();
    proof::verify_consistency(size1, body.ledger_size, &p, &root1, &ledger_root)
        .expect("the receipt's ledger extends its checkpoint");

    // On the interval, BR signs a checkpoint of its grown ledger (acceptance and receipt).
    let head = br.store.durable_head();
    assert!(head.size > size1);
    let later = eventually("a checkpoint covering BR's ledger", || {
        br.checkpoints.latest().filter(|p| p.size >= head.size)
    })
    .await;
    assert_eq!(open_note(&br_log, &later.note), (head.size, head.root));

    // The next receipt carries that later, larger checkpoint.
    let second = send(&fed, "NL", "BR", alert(2)).await;
    let body2 = receipt_body(&second);
    let (size2, root2) = open_note(&br_log, &body2.checkpoint);
    assert!(size2 >= later.size && size2 > size1, "{size2} vs {size1}");
    let p = proof::consistency_proof(&br.store, size1, size2).unwrap();
    proof::verify_consistency(size1, size2, &p, &root1, &root2).expect("checkpoints consistent");
}

// ---- 2. witnessing --------------------------------------------------------------------------

#[tokio::test]
async fn partners_witness_and_cosign_each_others_checkpoints() {
    let fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, SHORT, SHORT).await;
    let (nl_log, br_log) = (log_verifier(&fed, "NL"), log_verifier(&fed, "BR"));
    let (by_nl, by_br) = (cosigner(&fed, "NL"), cosigner(&fed, "BR"));

    let br_first = eventually("NL's cosignature on a BR checkpoint", || {
        cosigned_size(&fed, "BR", &br_log, &by_nl)
    })
    .await;
    let nl_first = eventually("BR's cosignature on an NL checkpoint", || {
        cosigned_size(&fed, "NL", &nl_log, &by_br)
    })
    .await;
    // The cosignature is NL's: the same name with BR's key does not verify it.
    let impostor =
        CosignatureVerifier::new("dccf.example/NL", key_in_agreement(&fed, "BR")).unwrap();
    let (_, note) = fed.node("BR").state.checkpoints.cosigned_notes().unwrap()[0].clone();
    assert!(impostor.verify(&note).is_err());

    // More traffic both ways: each log grows and its partner cosigns the grown checkpoint.
    for seq in 0..2 {
        send(&fed, "NL", "BR", alert(seq)).await;
    }
    send(&fed, "BR", "NL", alert(7)).await;
    let br_head = fed.node("BR").state.store.durable_head().size;
    let nl_head = fed.node("NL").state.store.durable_head().size;
    let br_now = eventually("NL cosigning BR's grown log", || {
        cosigned_size(&fed, "BR", &br_log, &by_nl).filter(|s| *s >= br_head)
    })
    .await;
    let nl_now = eventually("BR cosigning NL's grown log", || {
        cosigned_size(&fed, "NL", &nl_log, &by_br).filter(|s| *s >= nl_head)
    })
    .await;
    assert!(br_now > br_first && nl_now > nl_first);
    // The latest cosigned checkpoint is what receipts and auditors now get. (Its cached text
    // is refreshed just after the cosignature is stored: wait for it rather than race it.)
    let latest = eventually("the latest checkpoint carrying NL's cosignature", || {
        let latest = fed.node("BR").state.checkpoints.latest_cosigned().unwrap();
        by_nl.verify(&latest).ok().map(|_| latest)
    })
    .await;
    assert!(open_note(&br_log, &latest).0 >= br_now);

    // Each witness records how far it has checked its partner, and status shows both sides.
    eventually("NL recording BR as witnessed", || {
        witnessed(&fed, "NL", "BR").filter(|s| *s >= br_head)
    })
    .await;
    eventually("BR recording NL as witnessed", || {
        witnessed(&fed, "BR", "NL").filter(|s| *s >= nl_head)
    })
    .await;
    let status = auditor(&fed, "BR")
        .get_status(LedgerStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        status.cosigned.iter().any(|c| c
            .strip_prefix("dccf.example/NL ")
            .and_then(|s| s.parse::<u64>().ok())
            >= Some(br_head)),
        "{:?}",
        status.cosigned
    );
    assert!(
        status.witnessed.iter().any(|w| w.starts_with("NL ")),
        "{status:?}"
    );
    assert!(status.alarms.is_empty());
    for admin in ["NL", "BR"] {
        assert!(
            witness::alarms(&fed.node(admin).state.store)
                .unwrap()
                .is_empty()
        );
    }
}

// ---- 3. fork alarm --------------------------------------------------------------------------

#[tokio::test]
async fn a_partner_that_rewrites_its_history_raises_an_alarm_and_is_no_longer_cosigned() {
    let mut fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, SHORT, SHORT).await;
    let br_log = log_verifier(&fed, "BR");
    let by_nl = cosigner(&fed, "NL");

    // NL witnesses BR's log as it is: the agreement's activation, nothing else.
    let old = fed.node("BR").state.store.durable_head();
    let old_entries = all_ledger_entries(fed.node("BR"));
    assert_eq!(old_entries.len() as u64, old.size);
    eventually("NL witnessing BR's log", || {
        witnessed(&fed, "NL", "BR").filter(|s| *s == old.size)
    })
    .await;
    eventually("NL's cosignature on BR's log", || {
        cosigned_size(&fed, "BR", &br_log, &by_nl).filter(|s| *s == old.size)
    })
    .await;
    let old_note = fed
        .node("BR")
        .state
        .checkpoints
        .note_at(old.size)
        .unwrap()
        .unwrap();

    // BR loses its ledger and starts a new history under the same key. (The clock moves past
    // the old entry's time first, so the new activation entry cannot be byte-identical.)
    fed.stop("BR").await;
    std::fs::remove_dir_all(fed.admin("BR").config.ledger_dir()).unwrap();
    let old_time = old_entries
        .iter()
        .map(|(_, e)| e.recorded_at_ms)
        .max()
        .unwrap();
    eventually("the clock to move on", || {
        (dccf_node::envelope::now_ms() > old_time).then_some(())
    })
    .await;
    fed.start_node("BR").await;
    let restarted = all_ledger_entries(fed.node("BR"));
    assert_eq!(restarted[0].1.kind(), EntryKind::AgreementActivated);
    assert_ne!(restarted[0].1, old_entries[0].1, "a new history");
    send(&fed, "NL", "BR", alert(1)).await;

    let alarm = eventually("NL's witness alarm against BR", || {
        witness::alarms(&fed.node("NL").state.store)
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(alarm.partner, "BR");
    assert!(alarm.detail.contains("fork"), "{}", alarm.detail);
    // The evidence: the last consistent checkpoint and BR's new, validly signed one.
    assert!(alarm.detail.contains(&old_note), "{}", alarm.detail);
    let new_note = alarm
        .detail
        .split("new checkpoint:\n")
        .nth(1)
        .expect("new checkpoint in the evidence");
    let (new_size, new_root) = open_note(&br_log, new_note);
    let (_, old_root) = open_note(&br_log, &old_note);
    assert!(new_size >= old.size);
    assert_ne!(
        proof::root_at(&fed.node("BR").state.store, old.size).unwrap(),
        old_root,
        "BR's new log is not an extension of the old one"
    );
    if new_size == old.size {
        assert_ne!(new_root, old_root);
    }

    // NL's ledger records the alarm against BR with the same evidence.
    let nl_entries = ledger_entries(fed.node("NL"));
    let alarms: Vec<&LedgerEntry> = nl_entries
        .iter()
        .filter(|e| e.kind() == EntryKind::WitnessAlarm)
        .collect();
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].peer, "BR");
    assert_eq!(alarms[0].detail, alarm.detail);
    // The auditor sees it.
    let status = auditor(&fed, "NL")
        .get_status(LedgerStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.alarms, vec![alarm.clone()]);

    // BR's new log grows and is checkpointed, but NL no longer witnesses it.
    send(&fed, "NL", "BR", alert(2)).await;
    let head = fed.node("BR").state.store.durable_head();
    eventually("BR's checkpoint of its new log", || {
        fed.node("BR")
            .state
            .checkpoints
            .latest()
            .filter(|p| p.size >= head.size)
    })
    .await;
    let party = fed
        .node("NL")
        .state
        .agreements()
        .partner("NL", "BR", dccf_node::envelope::now_ms())
        .unwrap()
        .clone();
    assert_eq!(
        witness::witness_partner(&fed.node("NL").state, &party)
            .await
            .unwrap(),
        Outcome::UnderAlarm
    );
    assert_eq!(
        cosigned_size(&fed, "BR", &br_log, &by_nl),
        None,
        "NL cosigned BR's rewritten log"
    );
    assert_eq!(witnessed(&fed, "NL", "BR"), Some(old.size));
    assert_eq!(
        count_kind(&ledger_entries(fed.node("NL")), EntryKind::WitnessAlarm),
        1,
        "one alarm, not one per round"
    );

    // The operator investigates and resolves the alarm: recorded, and witnessing BR restarts
    // from its current checkpoint (the new log is then cosigned).
    witness::resolve_alarm(
        &fed.node("NL").state.store,
        "BR",
        "BR lost its ledger disk; new log confirmed by BR",
    )
    .await
    .unwrap();
    assert!(
        witness::alarms(&fed.node("NL").state.store)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        count_kind(
            &ledger_entries(fed.node("NL")),
            EntryKind::WitnessAlarmResolved
        ),
        1
    );
    let outcome = witness::witness_partner(&fed.node("NL").state, &party)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Cosigned { .. }), "{outcome:?}");
    fed.node("NL")
        .state
        .store
        .verify()
        .expect("NL's ledger verifies");
}

#[tokio::test]
async fn a_partner_whose_log_shrinks_raises_a_rollback_alarm() {
    let mut fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, SHORT, SHORT).await;
    // NL witnesses BR after a message: activation, acceptance and receipt.
    send(&fed, "NL", "BR", alert(1)).await;
    let old = fed.node("BR").state.store.durable_head();
    assert!(old.size > 1);
    eventually("NL witnessing BR's log", || {
        witnessed(&fed, "NL", "BR").filter(|s| *s == old.size)
    })
    .await;

    // BR comes back from an older state: a ledger holding only the activation entry.
    fed.stop("BR").await;
    std::fs::remove_dir_all(fed.admin("BR").config.ledger_dir()).unwrap();
    fed.start_node("BR").await;
    let new_size = fed.node("BR").state.store.durable_head().size;
    assert!(new_size < old.size);

    let alarm = eventually("NL's rollback alarm against BR", || {
        witness::alarms(&fed.node("NL").state.store)
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(alarm.partner, "BR");
    assert!(
        alarm.detail.contains("rollback")
            && alarm
                .detail
                .contains(&format!("size {new_size} is smaller than the {}", old.size)),
        "{}",
        alarm.detail
    );
    assert_eq!(
        count_kind(&ledger_entries(fed.node("NL")), EntryKind::WitnessAlarm),
        1
    );

    // NL's operator hears of it from `doctor`, with the way to handle it.
    let (ok, out) = fed.doctor("NL").await;
    assert!(!ok, "{out}");
    let alarm = findings(&out, "FAIL", "witness BR");
    assert_eq!(alarm.len(), 1, "{out}");
    assert!(
        alarm[0].contains("open alarm since")
            && alarm[0].contains("rollback")
            && alarm[0].contains("keep both nodes' data as evidence")
            && alarm[0].contains("ledger resolve-alarm --config <node.toml> --partner BR"),
        "{out}"
    );
}

#[tokio::test]
async fn a_partner_whose_log_only_grows_is_never_alarmed() {
    let mut fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, SHORT, SHORT).await;
    let (br_log, by_nl) = (log_verifier(&fed, "BR"), cosigner(&fed, "NL"));
    let mut seen = Vec::new();
    for round in 0..3u64 {
        if round == 1 {
            // A graceful restart keeps BR's history: still consistent.
            fed.restart("BR").await;
        }
        send(&fed, "NL", "BR", alert(round)).await;
        send(&fed, "BR", "NL", alert(round + 10)).await;
        let head = fed.node("BR").state.store.durable_head().size;
        seen.push(
            eventually("NL witnessing BR's grown log", || {
                witnessed(&fed, "NL", "BR").filter(|s| *s >= head)
            })
            .await,
        );
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(cosigned_size(&fed, "BR", &br_log, &by_nl) >= Some(seen[2]));
    for admin in ["NL", "BR"] {
        let state = &fed.node(admin).state;
        assert!(witness::alarms(&state.store).unwrap().is_empty(), "{admin}");
        assert_eq!(
            count_kind(&ledger_entries(fed.node(admin)), EntryKind::WitnessAlarm),
            0,
            "{admin}"
        );
    }
}

// ---- 4. Audit API ---------------------------------------------------------------------------

#[tokio::test]
async fn auditors_read_checkpoints_entries_and_proofs_that_verify() {
    let fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, LONG, LONG).await;
    for admin in ["NL", "BR"] {
        let state = &fed.node(admin).state;
        eventually("the checkpoint at start", || state.checkpoints.latest()).await;
    }
    let br_log = log_verifier(&fed, "BR");
    let marker = "LEDGER-AUDIT-CANARY-7f3a";
    let first = send(&fed, "NL", "BR", alert_with(1, marker)).await;
    send(&fed, "NL", "BR", alert(2)).await;
    send(&fed, "BR", "NL", alert(3)).await;
    let mut audit = auditor(&fed, "BR");
    let head = fed.node("BR").state.store.durable_head();

    // The published checkpoint (from start) lags the ledger; `fresh` signs one of the head.
    let stale = checkpoint(&mut audit, 0, false).await;
    let (stale_size, stale_root) = open_note(&br_log, &stale.checkpoint);
    assert!(stale_size < head.size, "{stale_size} vs {}", head.size);
    let fresh = checkpoint(&mut audit, stale_size, true).await;
    let (size, root) = open_note(&br_log, &fresh.checkpoint);
    assert_eq!((size, root), (head.size, head.root));
    proof::verify_consistency(
        stale_size,
        size,
        &hashes(&fresh.consistency_proof),
        &stale_root,
        &root,
    )
    .expect("GetCheckpoint's consistency proof");
    let status = audit
        .get_status(LedgerStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let vkey = status.vkey.clone();
    assert_eq!(status.size, head.size);
    assert!(
        NoteVerifier::from_key_string(&vkey)
            .unwrap()
            .verify(&fresh.checkpoint)
            .is_ok()
    );

    // Entries: the whole checkpoint range (the end is capped at its size), decoded, hashing to
    // its root, without any payload plaintext.
    let entries = audit
        .get_entries(EntriesRequest {
            start: 0,
            end: size + 50,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entries.entries.len() as u64, size);
    let mut frontier = Frontier::new();
    for (i, e) in entries.entries.iter().enumerate() {
        assert_eq!(e.index, i as u64);
        assert_eq!(
            LedgerEntry::decode(e.leaf.as_slice()).unwrap(),
            e.entry.clone().unwrap()
        );
        assert!(
            !e.leaf.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "entry {i} holds payload plaintext"
        );
        frontier.push(leaf_hash(&e.leaf));
    }
    assert_eq!(frontier.root(), root);
    let kinds: Vec<EntryKind> = entries
        .entries
        .iter()
        .map(|e| e.entry.as_ref().unwrap().kind())
        .collect();
    assert!(
        kinds.contains(&EntryKind::EnvelopeReceived) && kinds.contains(&EntryKind::ReceiptIssued)
    );
    let part = audit
        .get_entries(EntriesRequest { start: 1, end: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        part.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        [1, 2]
    );

    // Inclusion proofs by index, for every entry.
    for index in 0..size {
        let r = inclusion(&mut audit, Target::Index(index)).await;
        assert_eq!(r.proofs.len(), 1);
        assert_eq!(r.proofs[0].entry.as_ref().unwrap().index, index);
        check_proofs(&r, size, &root, &vkey);
    }
    // By message id: every entry about the message (acceptance and receipt).
    let r = inclusion(&mut audit, Target::MessageId(first.message_id.clone())).await;
    let mut about: Vec<EntryKind> = r
        .proofs
        .iter()
        .map(|p| {
            let e = p.entry.as_ref().unwrap().entry.as_ref().unwrap();
            assert_eq!(e.message_id, first.message_id);
            e.kind()
        })
        .collect();
    about.sort();
    assert_eq!(
        about,
        [EntryKind::EnvelopeReceived, EntryKind::ReceiptIssued]
    );
    check_proofs(&r, size, &root, &vkey);

    // Consistency between two checkpoints.
    let c = audit
        .get_consistency_proof(ConsistencyProofRequest {
            size1: stale_size,
            size2: size,
        })
        .await
        .unwrap()
        .into_inner();
    proof::verify_consistency(stale_size, size, &hashes(&c.hashes), &stale_root, &root)
        .expect("consistency proof verifies");

    // A message recorded after the latest checkpoint is not provable yet; after a fresh one it is.
    let late = send(&fed, "NL", "BR", alert(4)).await;
    let err = audit
        .get_inclusion_proof(InclusionProofRequest {
            target: Some(Target::MessageId(late.message_id.clone())),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains(&late.message_id),
        "{}",
        err.message()
    );
    let newer = checkpoint(&mut audit, size, true).await;
    let (size3, root3) = open_note(&br_log, &newer.checkpoint);
    let r = inclusion(&mut audit, Target::MessageId(late.message_id.clone())).await;
    assert_eq!(r.proofs.len(), 2);
    check_proofs(&r, size3, &root3, &vkey);

    // Out of range, each naming the problem.
    let bad = [
        audit
            .get_entries(EntriesRequest {
                start: size3 + 1,
                end: size3 + 5,
            })
            .await
            .unwrap_err(),
        audit
            .get_entries(EntriesRequest { start: 3, end: 2 })
            .await
            .unwrap_err(),
    ];
    for err in &bad {
        assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
        assert!(
            err.message()
                .contains(&format!("checkpoint's {size3} entries")),
            "{}",
            err.message()
        );
    }
    let err = audit
        .get_inclusion_proof(InclusionProofRequest {
            target: Some(Target::Index(size3)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains(&format!("entry {size3}")),
        "{}",
        err.message()
    );
    let err = audit
        .get_inclusion_proof(InclusionProofRequest {
            target: Some(Target::MessageId("no-such-message".into())),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("no-such-message"),
        "{}",
        err.message()
    );
    let err = audit
        .get_consistency_proof(ConsistencyProofRequest {
            size1: 1,
            size2: size3 + 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains(&(size3 + 1).to_string()),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn get_entries_returns_at_most_one_thousand_entries_per_call() {
    let fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, LONG, LONG).await;
    // Over a thousand refused sends: one SEND_REFUSED entry each.
    let gw = fed.gateway("NL");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1001 {
        let mut gw = gw.clone();
        tasks.spawn(async move {
            gw.send(send_request(AGREEMENT, "BR", ALERT, vec![0xff, 0xff, 0xff]))
                .await
                .unwrap_err()
                .code()
        });
    }
    while let Some(code) = tasks.join_next().await {
        assert_eq!(code.unwrap(), Code::InvalidArgument);
    }
    let mut audit = auditor(&fed, "NL");
    let (size, _) = open_note(
        &log_verifier(&fed, "NL"),
        &checkpoint(&mut audit, 0, true).await.checkpoint,
    );
    assert!(size > 1001);
    let page = audit
        .get_entries(EntriesRequest {
            start: 0,
            end: size,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entries.len(), 1000);
    let rest = audit
        .get_entries(EntriesRequest {
            start: 1000,
            end: size,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.entries.len() as u64, size - 1000);
    assert_eq!(rest.entries[0].index, 1000);
}

#[tokio::test]
async fn only_this_administrations_auditor_certificate_may_use_the_audit_service() {
    let fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, LONG, LONG).await;
    let nl = fed.admin("NL").config.identity_paths();
    let br = fed.admin("BR").config.identity_paths();

    // The back-office (gateway) certificate: authenticated, but not an auditor.
    let err = audit_with(&fed, "NL", &nl.gateway_cert(), &nl.gateway_key())
        .get_checkpoint(CheckpointRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("role auditor"), "{}", err.message());
    let err = audit_with(&fed, "NL", &nl.gateway_cert(), &nl.gateway_key())
        .get_status(LedgerStatusRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The auditor certificate cannot send through the Gateway; nothing is sent or recorded.
    let before = fed.node("NL").state.store.durable_head();
    let channel = dccf_node::cli::local_channel(
        &fed.admin("NL").config,
        &nl.auditor_cert(),
        &nl.auditor_key(),
    )
    .unwrap();
    let err = GatewayClient::new(channel)
        .send(send_request(AGREEMENT, "BR", ALERT, alert(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("role gateway"), "{}", err.message());
    assert_eq!(fed.node("NL").state.store.durable_head(), before);
    assert!(ledger_entries(fed.node("BR")).is_empty());

    // The partner's auditor certificate is not NL's: refused.
    let err = audit_with(&fed, "NL", &br.auditor_cert(), &br.auditor_key())
        .get_checkpoint(CheckpointRequest::default())
        .await
        .unwrap_err();
    assert_refused_or_denied(&err);

    // NL's own auditor certificate works.
    let cp = auditor(&fed, "NL")
        .get_checkpoint(CheckpointRequest::default())
        .await
        .expect("auditor allowed")
        .into_inner();
    open_note(&log_verifier(&fed, "NL"), &cp.checkpoint);
}

// ---- 5. export, verify, reconcile -----------------------------------------------------------

#[tokio::test]
async fn real_ledgers_export_verify_and_reconcile() {
    let mut fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, SHORT, SHORT).await;
    let dir = tempfile::tempdir().unwrap();
    let mut nl_to_br = Vec::new();
    for seq in 0..3 {
        nl_to_br.push(send(&fed, "NL", "BR", alert(seq)).await);
    }
    for seq in 0..2 {
        send(&fed, "BR", "NL", alert(100 + seq)).await;
    }
    // An export of BR's ledger taken now, from the running node.
    let early = dir.path().join("br-early");
    {
        let br = &fed.node("BR").state;
        let p = br.checkpoints.publish().await.unwrap();
        assert_eq!(p.size, br.store.durable_head().size);
        let summary = export_ledger(&br.store, &br.checkpoints, &early);
        assert_eq!(summary.size, p.size);
    }
    let last = send(&fed, "NL", "BR", alert(9)).await;

    // Both heads checkpointed and cosigned by the partner, then both nodes stop.
    let mut heads = Vec::new();
    for (admin, witness) in [("NL", "BR"), ("BR", "NL")] {
        let head = fed.node(admin).state.store.durable_head().size;
        let (log, by) = (log_verifier(&fed, admin), cosigner(&fed, witness));
        eventually("a cosigned checkpoint of the whole ledger", || {
            cosigned_size(&fed, admin, &log, &by).filter(|s| *s == head)
        })
        .await;
        heads.push(head);
    }
    fed.stop("NL").await;
    fed.stop("BR").await;
    let (nl_out, br_out) = (dir.path().join("nl"), dir.path().join("br"));
    let nl_summary = export_stopped(&fed.admin("NL").config, &nl_out);
    let br_summary = export_stopped(&fed.admin("BR").config, &br_out);
    assert_eq!((nl_summary.size, br_summary.size), (heads[0], heads[1]));
    assert!(nl_summary.cosigned >= 1 && br_summary.cosigned >= 1);

    let nl_report = export::verify_export(&nl_out).expect("NL's export verifies");
    let br_report = export::verify_export(&br_out).expect("BR's export verifies");
    assert_eq!((nl_report.entries, br_report.entries), (heads[0], heads[1]));
    assert!(
        nl_report
            .cosignatures
            .contains(&("dccf.example/BR".to_owned(), heads[0]))
    );
    assert!(
        br_report
            .cosignatures
            .contains(&("dccf.example/NL".to_owned(), heads[1]))
    );

    let report = export::reconcile(&nl_out, &br_out).expect("reconcile");
    assert_eq!((report.a.as_str(), report.b.as_str()), ("NL", "BR"));
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
    assert_eq!(report.matched, 6, "4 messages NL -> BR and 2 BR -> NL");

    // One byte of one entry changed in BR's export: verify names that entry.
    let tampered = dir.path().join("br-tampered");
    copy_dir(&br_out, &tampered);
    let target = receipt_body(&nl_to_br[1]).ledger_index;
    assert!(target < 256);
    let bundle = export::plan_bundles(heads[1]).next().unwrap().path();
    let path = tampered.join(&bundle);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut offset = 0usize;
    for _ in 0..target {
        let len = u16::from_be_bytes([bytes[offset], bytes[offset + 1]]) as usize;
        offset += 2 + len;
    }
    let len = u16::from_be_bytes([bytes[offset], bytes[offset + 1]]) as usize;
    bytes[offset + 2 + len / 2] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let err = export::verify_export(&tampered).unwrap_err();
    assert!(
        matches!(err, ExportError::EntryMismatch { index, .. } if index == target),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!("entry {target}")),
        "{err}"
    );
    assert!(matches!(
        export::reconcile(&nl_out, &tampered),
        Err(ExportError::InExport { .. })
    ));

    // NL's ledger against BR's earlier export: the last message is missing on BR's side.
    export::verify_export(&early).expect("early export verifies");
    let report = export::reconcile(&nl_out, &early).expect("reconcile");
    assert_eq!(report.matched, 5);
    assert_eq!(report.discrepancies.len(), 1, "{:?}", report.discrepancies);
    let d = &report.discrepancies[0];
    assert_eq!(d.kind, DiscrepancyKind::MissingOnReceiver);
    assert_eq!(d.message_id, last.message_id);
    assert_eq!((d.sender.as_str(), d.receiver.as_str()), ("NL", "BR"));
    assert!(d.to_string().contains("BR has no record of it"), "{d}");
}

// ---- 6. retention ---------------------------------------------------------------------------

#[tokio::test]
async fn crypto_shredding_past_retention_keeps_every_proof_valid() {
    let example = dccf_node::demo::EXAMPLE_AGREEMENT;
    let flow = "message_type = \"dccf.v1.RiskAlert\"\nfrom = \"NL\"\nto = \"BR\"\nfields = [\"*\"]";
    let template = example.replace(flow, &format!("{flow}\nretention_days = 1"));
    assert_ne!(template, example);
    let fed = federation(&template, LONG, LONG).await;
    let marker = "RETENTION-CANARY-41c2";
    let shredded = send(&fed, "NL", "BR", alert_with(1, marker)).await;
    let kept = fed
        .gateway("NL")
        .send(send_request(
            AGREEMENT,
            "BR",
            DECL,
            dccf_node::samples::pre_arrival_declaration(1).encode_to_vec(),
        ))
        .await
        .unwrap()
        .into_inner();
    let br = &fed.node("BR").state;
    let inbox = drain_inbox(&mut fed.gateway("BR")).await;
    assert!(inbox.iter().any(|m| {
        m.message_id == shredded.message_id
            && m.payload
                .windows(marker.len())
                .any(|w| w == marker.as_bytes())
    }));

    let mut audit = auditor(&fed, "BR");
    let br_log = log_verifier(&fed, "BR");
    let vkey = br.checkpoints.vkey();
    let before = checkpoint(&mut audit, 0, true).await;
    let (size1, root1) = open_note(&br_log, &before.checkpoint);
    let leaves_before = ledger_leaves(fed.node("BR"));
    assert_eq!(leaves_before.len() as u64, size1);

    let far_future = dccf_node::envelope::now_ms() + 365 * 86_400_000;
    assert_eq!(
        dccf_node::delivery::retention::sweep(br, far_future)
            .await
            .unwrap(),
        1
    );
    br.store
        .verify()
        .expect("the tree still verifies after the sweep");

    let after = checkpoint(&mut audit, size1, true).await;
    let (size2, root2) = open_note(&br_log, &after.checkpoint);
    assert_eq!(size2, size1 + 1, "one RETENTION_DELETION entry");
    proof::verify_consistency(
        size1,
        size2,
        &hashes(&after.consistency_proof),
        &root1,
        &root2,
    )
    .expect("GetCheckpoint's consistency proof across the sweep");
    let c = audit
        .get_consistency_proof(ConsistencyProofRequest { size1, size2 })
        .await
        .unwrap()
        .into_inner();
    proof::verify_consistency(size1, size2, &hashes(&c.hashes), &root1, &root2)
        .expect("consistency proof across the sweep");

    // Every old entry is unchanged and still proves into the new checkpoint.
    for (index, leaf) in leaves_before.iter().enumerate() {
        let r = inclusion(&mut audit, Target::Index(index as u64)).await;
        assert_eq!(&r.proofs[0].entry.as_ref().unwrap().leaf, leaf);
        check_proofs(&r, size2, &root2, &vkey);
    }
    // The shredded message's history: accepted, receipted, deleted — all provable.
    let r = inclusion(&mut audit, Target::MessageId(shredded.message_id.clone())).await;
    let mut kinds: Vec<EntryKind> = r
        .proofs
        .iter()
        .map(|p| p.entry.as_ref().unwrap().entry.as_ref().unwrap().kind())
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            EntryKind::EnvelopeReceived,
            EntryKind::ReceiptIssued,
            EntryKind::RetentionDeletion
        ]
    );
    check_proofs(&r, size2, &root2, &vkey);

    // The payload is gone from the inbox; the message without retention stays.
    let inbox = drain_inbox(&mut fed.gateway("BR")).await;
    assert!(inbox.iter().all(|m| m.message_id != shredded.message_id));
    assert!(inbox.iter().any(|m| m.message_id == kept.message_id));
    assert!(
        dccf_node::delivery::inbox::records(&br.store)
            .unwrap()
            .iter()
            .all(|m| m.message_id != shredded.message_id)
    );
}

// ---- export of running nodes -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_nodes_export_through_their_audit_service_and_the_exports_reconcile() {
    const N: usize = 1200;
    let fed = federation(dccf_node::demo::EXAMPLE_AGREEMENT, SHORT, SHORT).await;
    // Enough messages that each ledger spans more than one `GetEntries` page (1000 entries).
    queue_declarations(&fed, "NL", "BR", AGREEMENT, N).await;
    eventually("BR receiving every declaration", || {
        (count_kind(&ledger_entries(fed.node("BR")), EntryKind::EnvelopeReceived) == N)
            .then_some(())
    })
    .await;

    // Both nodes keep running: the CLI exports them through their Audit services.
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for admin in ["NL", "BR"] {
        fed.save_config(admin);
        let config = fed.admin(admin).config.data_dir.join("node.toml");
        let out = dir.path().join(admin);
        let (ok, said, err) = cli_async(&[
            "ledger",
            "export",
            "--config",
            config.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .await;
        assert!(ok, "{said}{err}");
        assert!(
            said.contains("through the running node's Audit service"),
            "{said}"
        );
        let verified = export::verify_export(&out).expect("the export verifies offline");
        assert!(verified.entries > 1000, "{} entries", verified.entries);
        assert!(
            verified.entries <= fed.node(admin).state.store.durable_head().size,
            "no more than the node has"
        );
        outs.push(out);
    }
    let report = export::reconcile(&outs[0], &outs[1]).expect("both exports reconcile");
    assert!(
        report.discrepancies.is_empty(),
        "{:?}",
        report.discrepancies
    );
    assert!(report.matched >= N, "{} reconciled", report.matched);
    assert!(
        fed.node("NL").state.store.durable_head().size > 0,
        "NL kept running"
    );
}
