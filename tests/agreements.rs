//! Agreement lifecycle on running nodes: revocation by one party takes effect at once on both
//! sides after a reload, every change is in both ledgers, and a bad reload changes nothing.

use dccf_node::proto::v1::{EntryKind, ReloadAgreementsRequest};
use dccf_tests::*;
use prost::Message;
use tonic::Code;

const ALERT: &str = "dccf.v1.RiskAlert";

#[tokio::test]
async fn a_revocation_by_one_party_stops_the_exchange_on_both_sides_and_is_ledgered() {
    let fed = Federation::nl_br().await;
    let alert = || dccf_node::samples::risk_alert(1).encode_to_vec();
    fed.gateway("NL")
        .send(send_request("nl-br-exchange", "BR", ALERT, alert()))
        .await
        .expect("in force before the revocation");

    // BR revokes; the revocation file is copied to NL's agreements directory as well.
    let br = &fed.admin("BR").config;
    let br_file = br.agreements_dir.join("nl-br-exchange.toml");
    let revocation = dccf_node::agreement::commands::revoke(
        &br.data_dir.join("node.toml"),
        &br_file,
        dccf_node::envelope::now_ms(),
    )
    .expect("BR revokes");
    let nl_dir = &fed.admin("NL").config.agreements_dir;
    std::fs::copy(&revocation, nl_dir.join(revocation.file_name().unwrap())).unwrap();

    for admin in ["NL", "BR"] {
        let statuses = fed
            .gateway(admin)
            .reload_agreements(ReloadAgreementsRequest {})
            .await
            .expect("reload")
            .into_inner()
            .agreements;
        assert_eq!(statuses.len(), 1);
        assert!(
            !statuses[0].active && statuses[0].reason.contains("revoked by BR"),
            "{admin}: {statuses:?}"
        );
        let lifecycle = agreement_entries(fed.node(admin));
        let kinds: Vec<_> = lifecycle.iter().map(|e| e.kind()).collect();
        assert_eq!(
            kinds,
            [
                EntryKind::AgreementActivated,
                EntryKind::AgreementDeactivated
            ],
            "{admin}"
        );
        assert!(
            lifecycle[1].detail.contains("revoked by BR"),
            "{admin}: {}",
            lifecycle[1].detail
        );
    }

    // NL's own node refuses to send under it...
    let status = fed
        .gateway("NL")
        .send(send_request("nl-br-exchange", "BR", ALERT, alert()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_AGREEMENT_INACTIVE");
    assert!(
        status.message().contains("revoked by BR"),
        "{}",
        status.message()
    );

    // ...and BR no longer trusts NL's node at all: a new connection is refused at the handshake.
    let env = fed.envelope_unchecked("NL", "BR", ALERT, &alert());
    let status = fed.exchange_as("NL", "BR").deliver(env).await.unwrap_err();
    assert!(
        reason(&status).is_empty(),
        "refused before any service: {status:?}"
    );

    // A reload that does not change anything records nothing new.
    fed.gateway("BR")
        .reload_agreements(ReloadAgreementsRequest {})
        .await
        .unwrap();
    assert_eq!(agreement_entries(fed.node("BR")).len(), 2);
}

#[tokio::test]
async fn a_reload_with_a_broken_agreement_keeps_the_previous_set() {
    let fed = Federation::nl_br().await;
    let dir = &fed.admin("NL").config.agreements_dir;
    std::fs::write(dir.join("broken.toml"), "id = ").unwrap();
    let status = fed
        .gateway("NL")
        .reload_agreements(ReloadAgreementsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("broken.toml"),
        "{}",
        status.message()
    );
    fed.gateway("NL")
        .send(send_request(
            "nl-br-exchange",
            "BR",
            ALERT,
            dccf_node::samples::risk_alert(1).encode_to_vec(),
        ))
        .await
        .expect("the previous agreements stay in force");
    assert_eq!(agreement_entries(fed.node("NL")).len(), 1);
}

#[tokio::test]
async fn payloads_past_their_flows_retention_are_crypto_shredded_and_the_ledger_still_verifies() {
    let example = dccf_node::demo::EXAMPLE_AGREEMENT;
    let from = "message_type = \"dccf.v1.RiskAlert\"\nfrom = \"NL\"\nto = \"BR\"\nfields = [\"*\"]";
    let template = example.replace(from, &format!("{from}\nretention_days = 1"));
    assert_ne!(template, example);
    let fed = Federation::start(&["NL", "BR"], &template, "nl-br-exchange", |_| {}).await;
    let mut nl = fed.gateway("NL");
    nl.send(send_request(
        "nl-br-exchange",
        "BR",
        ALERT,
        dccf_node::samples::risk_alert(1).encode_to_vec(),
    ))
    .await
    .unwrap();
    let decl = dccf_node::samples::pre_arrival_declaration(1).encode_to_vec();
    nl.send(send_request(
        "nl-br-exchange",
        "BR",
        "dccf.v1.PreArrivalDeclaration",
        decl,
    ))
    .await
    .unwrap();
    let state = &fed.node("BR").state;
    let now = dccf_node::envelope::now_ms();

    // Within retention nothing happens.
    assert_eq!(
        dccf_node::delivery::retention::sweep(state, now)
            .await
            .unwrap(),
        0
    );
    // Two days later the alert (1-day retention) is shredded; the declaration (no retention) stays.
    let later = now + 2 * 86_400_000;
    assert_eq!(
        dccf_node::delivery::retention::sweep(state, later)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        dccf_node::delivery::retention::sweep(state, later)
            .await
            .unwrap(),
        0,
        "only once"
    );
    let inbox = drain_inbox(&mut fed.gateway("BR")).await;
    assert_eq!(
        inbox
            .iter()
            .map(|m| m.message_type.as_str())
            .collect::<Vec<_>>(),
        ["dccf.v1.PreArrivalDeclaration"]
    );

    let entries = ledger_entries(fed.node("BR"));
    let deletion = entries
        .iter()
        .find(|e| e.kind() == EntryKind::RetentionDeletion)
        .expect("deletion recorded");
    assert_eq!(deletion.peer, "NL");
    assert!(deletion.detail.contains("1 days"), "{}", deletion.detail);
    assert_eq!(
        entries
            .iter()
            .filter(|e| e.kind() == EntryKind::EnvelopeReceived)
            .count(),
        2,
        "history intact"
    );
    state
        .store
        .verify()
        .expect("the Merkle tree still verifies");
}

#[tokio::test]
async fn data_received_under_a_no_onward_transfer_flow_cannot_be_passed_on() {
    use dccf_node::demo::{PRE_ARRIVAL_AGREEMENT, PRE_ARRIVAL_ID};
    const DECL: &str = "dccf.v1.PreArrivalDeclaration";
    // NL → BR declarations forbid onward transfer (the default); BR → DE declarations are a flow.
    let fed = Federation::start(
        &["NL", "BR", "DE"],
        PRE_ARRIVAL_AGREEMENT,
        PRE_ARRIVAL_ID,
        |_| {},
    )
    .await;
    let decl = dccf_node::samples::pre_arrival_declaration(5).encode_to_vec();
    fed.gateway("NL")
        .send(send_request(PRE_ARRIVAL_ID, "BR", DECL, decl.clone()))
        .await
        .unwrap();
    let received = drain_inbox(&mut fed.gateway("BR")).await;
    assert_eq!(received[0].payload, decl);

    let mut br = fed.gateway("BR");
    let status = br
        .send(send_request(
            PRE_ARRIVAL_ID,
            "DE",
            DECL,
            received[0].payload.clone(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_ONWARD_TRANSFER_FORBIDDEN");
    assert!(
        status.message().contains("received from NL"),
        "{}",
        status.message()
    );
    // Back to its origin is not onward transfer; BR's own declarations still go to DE.
    br.send(send_request(PRE_ARRIVAL_ID, "NL", DECL, decl))
        .await
        .expect("back to the original sender");
    let own = dccf_node::samples::pre_arrival_declaration(6).encode_to_vec();
    br.send(send_request(PRE_ARRIVAL_ID, "DE", DECL, own))
        .await
        .expect("BR's own data flows");
}

#[tokio::test]
async fn a_flow_that_allows_onward_transfer_lets_the_data_be_passed_on() {
    use dccf_node::demo::{PRE_ARRIVAL_AGREEMENT, PRE_ARRIVAL_ID};
    const DECL: &str = "dccf.v1.PreArrivalDeclaration";
    let from = "message_type = \"dccf.v1.PreArrivalDeclaration\"\nfrom = \"NL\"\nto = \"BR\"\nfields = [\"*\"]";
    assert!(
        PRE_ARRIVAL_AGREEMENT.contains(from),
        "example changed shape"
    );
    let template = PRE_ARRIVAL_AGREEMENT.replace(from, &format!("{from}\nonward_transfer = true"));
    let fed = Federation::start(&["NL", "BR", "DE"], &template, PRE_ARRIVAL_ID, |_| {}).await;
    let decl = dccf_node::samples::pre_arrival_declaration(5).encode_to_vec();
    fed.gateway("NL")
        .send(send_request(PRE_ARRIVAL_ID, "BR", DECL, decl.clone()))
        .await
        .unwrap();
    fed.gateway("BR")
        .send(send_request(PRE_ARRIVAL_ID, "DE", DECL, decl))
        .await
        .expect("allowed by the flow");
}
