//! The transport's trust rules, over real TLS on loopback: who may connect to which service, and
//! that the certificate's administration must be the envelope's sender.

use dccf_node::identity::pki::Role;
use dccf_node::proto::v1::{EntryKind, RejectReason};
use dccf_tests::*;
use prost::Message;
use tonic::Code;

const ALERT: &str = "dccf.v1.RiskAlert";

fn alert() -> Vec<u8> {
    dccf_node::samples::risk_alert(1).encode_to_vec()
}

/// A call that must fail at the TLS layer: the handshake is refused, so nothing reaches a service.
fn assert_refused_connection(status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "expected a refused connection, got {status:?}"
    );
    assert!(reason(status).is_empty(), "reached the service: {status:?}");
}

#[tokio::test]
async fn a_client_with_a_certificate_from_an_unknown_ca_cannot_connect() {
    let fed = Federation::nl_br().await;
    let dir = tempfile::tempdir().unwrap();
    let xx = stranger(dir.path(), "XX");
    let env = fed.envelope("NL", "BR", ALERT, &alert(), |_| {});
    let status = fed
        .exchange_with_cert(&xx.node_cert(), &xx.node_key(), "BR")
        .deliver(env)
        .await
        .unwrap_err();
    assert_refused_connection(&status);
    assert!(ledger_entries(fed.node("BR")).is_empty());
}

#[tokio::test]
async fn a_stranger_ca_cannot_vouch_for_a_partner() {
    // A CA not in any agreement issues a certificate that claims to be NL's node.
    let fed = Federation::nl_br().await;
    let dir = tempfile::tempdir().unwrap();
    let fake_nl = stranger(dir.path(), "NL");
    let env = fed.envelope("NL", "BR", ALERT, &alert(), |_| {});
    let status = fed
        .exchange_with_cert(&fake_nl.node_cert(), &fake_nl.node_key(), "BR")
        .deliver(env)
        .await
        .unwrap_err();
    assert_refused_connection(&status);
}

#[tokio::test]
async fn an_expired_partner_certificate_cannot_connect() {
    let fed = Federation::nl_br().await;
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = issue_cert(
        &fed,
        "NL",
        Role::Node,
        now - time::Duration::days(30),
        now - time::Duration::days(1),
        dir.path(),
    );
    let env = fed.envelope("NL", "BR", ALERT, &alert(), |_| {});
    let status = fed
        .exchange_with_cert(&cert, &key, "BR")
        .deliver(env.clone())
        .await
        .unwrap_err();
    assert_refused_connection(&status);
    // The same partner with a current certificate gets through.
    let (cert, key) = issue_cert(
        &fed,
        "NL",
        Role::Node,
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
        dir.path().join("ok").as_path(),
    );
    fed.exchange_with_cert(&cert, &key, "BR")
        .deliver(env)
        .await
        .expect("current certificate works");
}

#[tokio::test]
async fn back_office_certificates_cannot_use_the_exchange_and_node_certificates_cannot_use_the_gateway()
 {
    let fed = Federation::nl_br().await;
    // NL's back-office certificate (role gateway) against BR's Exchange.
    let nl = fed.admin("NL").config.identity_paths();
    let env = fed.envelope("NL", "BR", ALERT, &alert(), |_| {});
    let status = fed
        .exchange_with_cert(&nl.gateway_cert(), &nl.gateway_key(), "BR")
        .deliver(env)
        .await
        .unwrap_err();
    assert_refused_connection(&status);

    // NL's node certificate (role node) against NL's own Gateway.
    let mut config = fed.admin("NL").config.clone();
    let dir = tempfile::tempdir().unwrap();
    // Point a copy of the config's gateway client files at the node certificate.
    let paths = config.identity_paths();
    let copy = dir.path().join("copy");
    for (from, to) in [
        (paths.node_cert(), "tls/gateway-client.pem"),
        (paths.node_key(), "tls/gateway-client.key"),
        (paths.ca_cert(), "tls/ca.pem"),
        (paths.party_card(), "party.toml"),
    ] {
        let to = copy.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    config.data_dir = copy;
    let mut gw = dccf_node::cli::gateway_client_for(&config).unwrap();
    let status = gw
        .send(send_request("nl-br-exchange", "BR", ALERT, alert()))
        .await
        .unwrap_err();
    assert_refused_connection(&status);

    // A back-office certificate from BR's CA cannot use NL's Gateway either.
    let br = fed.admin("BR").config.identity_paths();
    std::fs::copy(
        br.gateway_cert(),
        config.data_dir.join("tls/gateway-client.pem"),
    )
    .unwrap();
    std::fs::copy(
        br.gateway_key(),
        config.data_dir.join("tls/gateway-client.key"),
    )
    .unwrap();
    let mut gw = dccf_node::cli::gateway_client_for(&config).unwrap();
    let status = gw
        .send(send_request("nl-br-exchange", "BR", ALERT, alert()))
        .await
        .unwrap_err();
    assert_refused_connection(&status);
    assert!(ledger_entries(fed.node("NL")).is_empty());
}

#[tokio::test]
async fn a_valid_partner_claiming_another_sender_is_refused_and_recorded() {
    let fed = Federation::start(
        &["NL", "BR", "DE"],
        THREE_PARTY_AGREEMENT,
        "tri-exchange",
        |_| {},
    )
    .await;
    // A genuine envelope signed by NL, replayed to BR by DE over DE's own (valid) connection.
    let env = fed.envelope("NL", "BR", ALERT, &alert(), |_| {});
    let status = fed
        .exchange_as("DE", "BR")
        .deliver(env.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_SENDER_MISMATCH");
    assert!(
        status.message().contains("DE") && status.message().contains("NL"),
        "{}",
        status.message()
    );
    let entries = ledger_entries(fed.node("BR"));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].kind(), EntryKind::EnvelopeRejected);
    assert_eq!(entries[0].reason(), RejectReason::SenderMismatch);
    assert_eq!(entries[0].peer, "DE");

    // DE signing as itself but claiming NL in the header: same refusal, before any signature work.
    let forged = fed.envelope("DE", "BR", ALERT, &alert(), |o| o.sender = "NL".into());
    let status = fed
        .exchange_as("DE", "BR")
        .deliver(forged)
        .await
        .unwrap_err();
    assert_eq!(reason(&status), "REJECT_REASON_SENDER_MISMATCH");

    // And NL delivering its own envelope is accepted.
    fed.exchange_as("NL", "BR")
        .deliver(env)
        .await
        .expect("the real sender gets through");
}

#[tokio::test]
async fn a_signature_by_a_key_not_in_the_agreement_is_rejected() {
    // DE signs an envelope that claims NL as sender and delivers it over NL's connection: the
    // header names NL, so NL's key from the agreement must verify it, and it does not.
    let fed = Federation::start(
        &["NL", "BR", "DE"],
        THREE_PARTY_AGREEMENT,
        "tri-exchange",
        |_| {},
    )
    .await;
    let forged = fed.envelope("DE", "BR", ALERT, &alert(), |o| o.sender = "NL".into());
    let status = fed
        .exchange_as("NL", "BR")
        .deliver(forged)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_BAD_SIGNATURE");
}
