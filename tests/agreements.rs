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
