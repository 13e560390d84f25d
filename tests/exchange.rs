//! Envelope exchange between real nodes on loopback over real mTLS: delivery, receipts,
//! refusals on the sending and the receiving side, and what each ledger records.

use dccf_node::envelope::receipt::{Expected, verify_receipt_for};
use dccf_node::proto::v1::{EntryKind, PreArrivalDeclaration, RejectReason};
use dccf_tests::*;
use prost::Message;
use tonic::Code;

const DECL: &str = "dccf.v1.PreArrivalDeclaration";
const ALERT: &str = "dccf.v1.RiskAlert";

fn kinds(entries: &[dccf_node::proto::v1::LedgerEntry]) -> Vec<EntryKind> {
    entries.iter().map(|e| e.kind()).collect()
}

#[tokio::test]
async fn a_declaration_is_delivered_receipted_and_ledgered_on_both_sides() {
    let fed = Federation::nl_br().await;
    let decl = dccf_node::samples::pre_arrival_declaration(42);
    let sent = fed
        .gateway("NL")
        .send(send_request(
            "nl-br-exchange",
            "BR",
            DECL,
            decl.encode_to_vec(),
        ))
        .await
        .expect("send succeeds")
        .into_inner();

    // The receipt is BR's signature over this exact envelope, checked here independently.
    let agreements = fed.node("NL").state.agreements();
    let br = agreements
        .partner("NL", "BR", dccf_node::envelope::now_ms())
        .unwrap();
    let digest: [u8; 32] = sent.envelope_digest.clone().try_into().unwrap();
    let body = verify_receipt_for(
        sent.receipt.as_ref().unwrap(),
        &br.verifying_key,
        &Expected {
            message_id: &sent.message_id,
            sender: "NL",
            recipient: "BR",
            envelope_digest: &digest,
        },
    )
    .expect("receipt verifies under BR's key");

    // BR's inbox holds exactly the declaration, decrypted.
    let inbox = drain_inbox(&mut fed.gateway("BR")).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].message_id, sent.message_id);
    assert_eq!(inbox[0].sender, "NL");
    assert_eq!(
        PreArrivalDeclaration::decode(inbox[0].payload.as_slice()).unwrap(),
        decl
    );
    assert_eq!(inbox[0].ledger_index, body.ledger_index);

    // Each ledger records its side, and the receipt points at BR's acceptance entry.
    let nl = ledger_entries(fed.node("NL"));
    let br_entries = ledger_entries(fed.node("BR"));
    assert_eq!(
        kinds(&nl),
        [EntryKind::EnvelopeSent, EntryKind::ReceiptReceived]
    );
    assert_eq!(
        kinds(&br_entries),
        [EntryKind::EnvelopeReceived, EntryKind::ReceiptIssued]
    );
    let all_br = all_ledger_entries(fed.node("BR"));
    let (_, accepted) = &all_br[body.ledger_index as usize];
    assert_eq!(accepted.kind(), EntryKind::EnvelopeReceived);
    assert_eq!(accepted.envelope_digest, sent.envelope_digest);
    assert_eq!(nl[0].envelope_digest, sent.envelope_digest);
    assert_eq!(body.ledger_size, body.ledger_index + 1);
    // Before any message, each ledger recorded the agreement coming into force.
    for admin in ["NL", "BR"] {
        let lifecycle = agreement_entries(fed.node(admin));
        assert_eq!(lifecycle.len(), 1, "{admin}");
        assert_eq!(lifecycle[0].kind(), EntryKind::AgreementActivated);
        assert_eq!(lifecycle[0].agreement_id, "nl-br-exchange");
    }

    // No plaintext in either ledger: distinctive payload strings never appear in a leaf.
    let consignor = decl.consignor.as_ref().unwrap().name.clone();
    let description = decl.goods_items[0].description.clone();
    for admin in ["NL", "BR"] {
        for leaf in ledger_leaves(fed.node(admin)) {
            for needle in [&consignor, &description, &decl.declaration_reference] {
                assert!(
                    !leaf.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{admin} ledger contains plaintext {needle:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn acknowledged_messages_leave_the_inbox_and_unacknowledged_ones_are_redelivered() {
    let fed = Federation::nl_br().await;
    let mut nl = fed.gateway("NL");
    for seq in 0..3 {
        nl.send(send_request(
            "nl-br-exchange",
            "BR",
            ALERT,
            dccf_node::samples::risk_alert(seq).encode_to_vec(),
        ))
        .await
        .unwrap();
    }
    let mut br = fed.gateway("BR");
    let first = drain_inbox(&mut br).await;
    assert_eq!(first.len(), 3);
    let ack = br
        .ack(dccf_node::proto::v1::AckRequest {
            message_ids: vec![format!("NL/{}", first[0].message_id)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.acknowledged, 1);
    let again = drain_inbox(&mut br).await;
    assert_eq!(
        again.iter().map(|m| &m.message_id).collect::<Vec<_>>(),
        [&first[1].message_id, &first[2].message_id]
    );
}

#[tokio::test]
async fn the_sender_refuses_what_the_agreement_does_not_allow() {
    let fed = Federation::nl_br().await;
    let mut br = fed.gateway("BR");
    // BR → NL declarations are not a flow of the agreement.
    let status = br
        .send(send_request(
            "nl-br-exchange",
            "NL",
            DECL,
            dccf_node::samples::pre_arrival_declaration(1).encode_to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_FLOW_NOT_ALLOWED");
    assert!(
        status.message().contains("nl-br-exchange") && status.message().contains("from BR to NL"),
        "{}",
        status.message()
    );

    let status = br
        .send(send_request(
            "no-such-agreement",
            "NL",
            ALERT,
            dccf_node::samples::risk_alert(1).encode_to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no-such-agreement"));

    // A payload that is not a valid message of its declared type.
    let status = br
        .send(send_request(
            "nl-br-exchange",
            "NL",
            ALERT,
            vec![0xff, 0xff, 0xff],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_PAYLOAD_INVALID");

    // Nothing reached NL; BR's ledger records each refusal with its reason, and nothing sent.
    assert!(ledger_entries(fed.node("NL")).is_empty());
    let br_entries = ledger_entries(fed.node("BR"));
    assert_eq!(kinds(&br_entries), [EntryKind::SendRefused; 3]);
    assert_eq!(
        br_entries.iter().map(|e| e.reason()).collect::<Vec<_>>(),
        [
            RejectReason::FlowNotAllowed,
            RejectReason::UnknownAgreement,
            RejectReason::PayloadInvalid
        ]
    );
    assert!(
        br_entries
            .iter()
            .all(|e| e.peer == "NL" && e.envelope_header.is_empty())
    );
}

#[tokio::test]
async fn the_receiver_rejects_a_forbidden_flow_and_records_it() {
    let fed = Federation::nl_br().await;
    // NL hand-builds an AEO query to BR (a flow that only runs BR → NL), bypassing its own
    // node's policy check.
    let payload = dccf_node::samples::aeo_status_query("NLAEOC0001", 1).encode_to_vec();
    let env = fed.envelope("NL", "BR", "dccf.v1.AeoStatusQuery", &payload, |_| {});
    let status = fed
        .exchange_as("NL", "BR")
        .deliver(env.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "REJECT_REASON_FLOW_NOT_ALLOWED");
    let entries = ledger_entries(fed.node("BR"));
    assert_eq!(kinds(&entries), [EntryKind::EnvelopeRejected]);
    assert_eq!(entries[0].reason(), RejectReason::FlowNotAllowed);
    assert_eq!(
        entries[0].envelope_digest,
        dccf_node::envelope::envelope_digest(&env).to_vec()
    );
    assert!(drain_inbox(&mut fed.gateway("BR")).await.is_empty());
}

#[tokio::test]
async fn tampered_envelopes_are_rejected_and_recorded_as_rejected() {
    let fed = Federation::nl_br().await;
    let payload = dccf_node::samples::risk_alert(1).encode_to_vec();
    let mut client = fed.exchange_as("NL", "BR");

    // A header byte changed after signing.
    let mut env = fed.envelope("NL", "BR", ALERT, &payload, |_| {});
    let last = env.header.len() - 1;
    env.header[last] ^= 0x01;
    let status = client.deliver(env.clone()).await.unwrap_err();
    assert_eq!(reason(&status), "REJECT_REASON_BAD_SIGNATURE", "{status:?}");
    assert_eq!(status.code(), Code::Unauthenticated);

    // The ciphertext changed.
    let mut env2 = fed.envelope("NL", "BR", ALERT, &payload, |_| {});
    env2.sealed_payload[5] ^= 0x80;
    let status = client.deliver(env2.clone()).await.unwrap_err();
    assert_eq!(
        reason(&status),
        "REJECT_REASON_CIPHERTEXT_MISMATCH",
        "{status:?}"
    );

    // Garbage in every field.
    let garbage = dccf_node::proto::v1::Envelope {
        header: vec![0xde, 0xad, 0xbe, 0xef],
        signature: vec![1; 10],
        sealed_payload: vec![2; 10],
        encapsulated_key: vec![],
        ..Default::default()
    };
    let status = client.deliver(garbage).await.unwrap_err();
    assert_eq!(reason(&status), "REJECT_REASON_MALFORMED", "{status:?}");

    let entries = ledger_entries(fed.node("BR"));
    assert_eq!(kinds(&entries), [EntryKind::EnvelopeRejected; 3]);
    assert_eq!(entries[0].reason(), RejectReason::BadSignature);
    assert_eq!(
        entries[0].envelope_digest,
        dccf_node::envelope::envelope_digest(&env).to_vec()
    );
    assert_eq!(entries[1].reason(), RejectReason::CiphertextMismatch);
    assert_eq!(entries[2].reason(), RejectReason::Malformed);
    assert!(entries.iter().all(|e| e.peer == "NL"));
    assert!(drain_inbox(&mut fed.gateway("BR")).await.is_empty());
}

#[tokio::test]
async fn a_duplicate_returns_the_original_receipt_and_is_not_delivered_twice() {
    let fed = Federation::nl_br().await;
    let payload = dccf_node::samples::risk_alert(3).encode_to_vec();
    let env = fed.envelope("NL", "BR", ALERT, &payload, |_| {});
    let mut client = fed.exchange_as("NL", "BR");
    let first = client.deliver(env.clone()).await.unwrap().into_inner();
    let second = client.deliver(env.clone()).await.unwrap().into_inner();
    assert_eq!(first, second, "the duplicate gets the original receipt");
    assert_eq!(drain_inbox(&mut fed.gateway("BR")).await.len(), 1);
    let received = ledger_entries(fed.node("BR"))
        .iter()
        .filter(|e| e.kind() == EntryKind::EnvelopeReceived)
        .count();
    assert_eq!(received, 1);

    // The same message id with different content is a conflict, not a delivery.
    let id = dccf_node::proto::v1::EnvelopeHeader::decode(env.header.as_slice())
        .unwrap()
        .message_id;
    let other = fed.envelope(
        "NL",
        "BR",
        ALERT,
        &dccf_node::samples::risk_alert(4).encode_to_vec(),
        |o| o.message_id = id.clone(),
    );
    let status = client.deliver(other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(reason(&status), "REJECT_REASON_DUPLICATE_CONFLICT");
    assert_eq!(drain_inbox(&mut fed.gateway("BR")).await.len(), 1);
}

#[tokio::test]
async fn a_back_office_retry_with_the_same_message_id_is_not_delivered_twice() {
    let fed = Federation::nl_br().await;
    let mut nl = fed.gateway("NL");
    let mut req = send_request(
        "nl-br-exchange",
        "BR",
        ALERT,
        dccf_node::samples::risk_alert(5).encode_to_vec(),
    );
    req.message_id = uuid_v7();
    let a = nl.send(req.clone()).await.unwrap().into_inner();
    let b = nl.send(req.clone()).await.unwrap().into_inner();
    assert_eq!(a.receipt, b.receipt);
    assert_eq!(drain_inbox(&mut fed.gateway("BR")).await.len(), 1);

    // Reusing the id for other content is refused, not silently answered with the old receipt.
    req.payload = dccf_node::samples::risk_alert(6).encode_to_vec();
    let status = nl.send(req).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_DUPLICATE_CONFLICT");
    assert_eq!(drain_inbox(&mut fed.gateway("BR")).await.len(), 1);
}

#[tokio::test]
async fn a_redelivery_after_expiry_still_gets_the_original_receipt() {
    let fed = Federation::nl_br().await;
    let env = fed.envelope(
        "NL",
        "BR",
        ALERT,
        &dccf_node::samples::risk_alert(1).encode_to_vec(),
        |o| {
            o.expires_at_ms = o.created_at_ms + 3_000;
        },
    );
    let mut client = fed.exchange_as("NL", "BR");
    let first = client.deliver(env.clone()).await.unwrap().into_inner();
    tokio::time::sleep(std::time::Duration::from_millis(3_200)).await;
    let again = client
        .deliver(env)
        .await
        .expect("a retry of an accepted envelope is not refused")
        .into_inner();
    assert_eq!(first, again);
}

#[tokio::test]
async fn envelopes_under_an_unknown_or_altered_agreement_are_rejected() {
    let fed = Federation::nl_br().await;
    let payload = dccf_node::samples::risk_alert(1).encode_to_vec();
    let mut client = fed.exchange_as("NL", "BR");
    let unknown = fed.envelope("NL", "BR", ALERT, &payload, |o| {
        o.agreement_id = "other-agreement".into()
    });
    let status = client.deliver(unknown).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(reason(&status), "REJECT_REASON_UNKNOWN_AGREEMENT");
    let altered = fed.envelope("NL", "BR", ALERT, &payload, |o| {
        o.agreement_digest = [9u8; 32]
    });
    let status = client.deliver(altered).await.unwrap_err();
    assert_eq!(reason(&status), "REJECT_REASON_AGREEMENT_DIGEST_MISMATCH");
}

#[tokio::test]
async fn expired_and_skewed_envelopes_are_rejected() {
    let fed = Federation::nl_br().await;
    let payload = dccf_node::samples::risk_alert(1).encode_to_vec();
    let mut client = fed.exchange_as("NL", "BR");
    let now = dccf_node::envelope::now_ms();
    let expired = fed.envelope("NL", "BR", ALERT, &payload, |o| {
        o.created_at_ms = now - 120_000;
        o.expires_at_ms = now - 60_000;
    });
    let status = client.deliver(expired).await.unwrap_err();
    assert_eq!(reason(&status), "REJECT_REASON_EXPIRED");
    let future = fed.envelope("NL", "BR", ALERT, &payload, |o| {
        o.created_at_ms = now + 3_600_000;
        o.expires_at_ms = now + 7_200_000;
    });
    let status = client.deliver(future).await.unwrap_err();
    assert_eq!(reason(&status), "REJECT_REASON_CLOCK_SKEW");
    let misaddressed = fed.envelope("NL", "BR", ALERT, &payload, |o| o.recipient = "NL".into());
    let status = client.deliver(misaddressed).await.unwrap_err();
    assert_eq!(reason(&status), "REJECT_REASON_WRONG_RECIPIENT");
}

#[tokio::test]
async fn oversized_messages_get_resource_exhausted() {
    let limit = 64 * 1024;
    let fed = Federation::start(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        "nl-br-exchange",
        |c| {
            c.limits.max_message_bytes = limit;
        },
    )
    .await;
    let mut alert = dccf_node::samples::risk_alert(1);
    alert.description = "x".repeat(limit + 1);
    let payload = alert.encode_to_vec();

    // Back office → own node.
    let status = fed
        .gateway("NL")
        .send(send_request("nl-br-exchange", "BR", ALERT, payload.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // Partner → node, just over the limit (checked by the receive pipeline, and recorded).
    let env = fed.envelope("NL", "BR", ALERT, &payload, |_| {});
    let status = fed.exchange_as("NL", "BR").deliver(env).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_TOO_LARGE");

    // Far over the limit (refused while decoding, before any processing).
    alert.description = "y".repeat(limit * 4);
    let env = fed.envelope("NL", "BR", ALERT, &alert.encode_to_vec(), |_| {});
    let status = fed.exchange_as("NL", "BR").deliver(env).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // The node still serves normal messages afterwards.
    fed.gateway("NL")
        .send(send_request(
            "nl-br-exchange",
            "BR",
            ALERT,
            dccf_node::samples::risk_alert(2).encode_to_vec(),
        ))
        .await
        .expect("normal message after oversized ones");
}

#[tokio::test]
async fn a_stream_of_envelopes_gets_one_result_each() {
    let fed = Federation::nl_br().await;
    let payload = dccf_node::samples::risk_alert(1).encode_to_vec();
    let good: Vec<_> = (0..5)
        .map(|_| fed.envelope("NL", "BR", ALERT, &payload, |_| {}))
        .collect();
    let mut bad = fed.envelope("NL", "BR", ALERT, &payload, |_| {});
    bad.signature[0] ^= 1;
    let mut all = good.clone();
    all.insert(2, bad);
    let mut results = fed
        .exchange_as("NL", "BR")
        .deliver_stream(tokio_stream::iter(all))
        .await
        .unwrap()
        .into_inner();
    let mut outcomes = Vec::new();
    while let Some(r) = results.message().await.unwrap() {
        outcomes.push(matches!(
            r.outcome,
            Some(dccf_node::proto::v1::delivery_result::Outcome::Receipt(_))
        ));
    }
    assert_eq!(outcomes, [true, true, false, true, true, true]);
    assert_eq!(drain_inbox(&mut fed.gateway("BR")).await.len(), 5);
}

/// The example agreement, with the AEO answer limited to status fields (no name or address).
fn status_only_agreement() -> String {
    let example = dccf_node::demo::EXAMPLE_AGREEMENT;
    let from = "message_type = \"dccf.v1.AeoStatusResponse\"\nfrom = \"NL\"\nto = \"BR\"\nfields = [\"*\"]";
    assert!(example.contains(from), "example agreement changed shape");
    example.replace(
        from,
        "message_type = \"dccf.v1.AeoStatusResponse\"\nfrom = \"NL\"\nto = \"BR\"\nfields = [\"query_reference\", \"operator_identifier\", \"identifier_kind\", \"status\", \"programme\", \"aeo_authorisation_number\", \"valid_from_ms\", \"valid_until_ms\", \"status_changed_at_ms\", \"as_of_ms\"]",
    )
}

#[tokio::test]
async fn fields_outside_the_flow_are_refused_by_the_sender_and_rejected_by_the_receiver() {
    let template = status_only_agreement();
    let fed = Federation::start(&["NL", "BR"], &template, "nl-br-exchange", |_| {}).await;
    let query = dccf_node::samples::aeo_status_query("NLAEOC0001", 1);
    let full =
        dccf_node::samples::aeo_status_response(&query, dccf_node::proto::v1::AeoStatus::Valid);
    assert!(
        full.operator_name.is_some(),
        "the sample discloses the name"
    );
    const RESPONSE: &str = "dccf.v1.AeoStatusResponse";

    // Sender side: NL's own node refuses to disclose the name.
    let status = fed
        .gateway("NL")
        .send(send_request(
            "nl-br-exchange",
            "BR",
            RESPONSE,
            full.encode_to_vec(),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_FIELD_NOT_ALLOWED");
    assert!(
        status.message().contains("field operator_name"),
        "{}",
        status.message()
    );

    // Receiver side: the same payload in a hand-built envelope is rejected after decryption.
    let env = fed.envelope("NL", "BR", RESPONSE, &full.encode_to_vec(), |_| {});
    let status = fed.exchange_as("NL", "BR").deliver(env).await.unwrap_err();
    assert_eq!(
        reason(&status),
        "REJECT_REASON_FIELD_NOT_ALLOWED",
        "{status:?}"
    );
    let entries = ledger_entries(fed.node("BR"));
    assert_eq!(
        entries.last().unwrap().reason(),
        RejectReason::FieldNotAllowed
    );
    assert!(drain_inbox(&mut fed.gateway("BR")).await.is_empty());

    // Without name and address the answer goes through.
    let mut status_only = full.clone();
    status_only.operator_name = None;
    status_only.operator_address = None;
    fed.gateway("NL")
        .send(send_request(
            "nl-br-exchange",
            "BR",
            RESPONSE,
            status_only.encode_to_vec(),
        ))
        .await
        .expect("status-only answer is allowed");
}

/// The example agreement with NL → BR risk alerts limited to `n` per minute.
fn rate_limited_agreement(n: u32) -> String {
    let example = dccf_node::demo::EXAMPLE_AGREEMENT;
    let from = "message_type = \"dccf.v1.RiskAlert\"\nfrom = \"NL\"\nto = \"BR\"\nfields = [\"*\"]";
    assert!(example.contains(from), "example agreement changed shape");
    example.replace(from, &format!("{from}\nrate_limit_per_minute = {n}"))
}

#[tokio::test]
async fn a_flow_rate_limit_is_enforced_by_the_sender_and_by_the_receiver() {
    let fed = Federation::start(
        &["NL", "BR"],
        &rate_limited_agreement(2),
        "nl-br-exchange",
        |_| {},
    )
    .await;
    let alert = || dccf_node::samples::risk_alert(1).encode_to_vec();

    // Sender side: NL's node sends two, then refuses the third.
    let mut nl = fed.gateway("NL");
    for _ in 0..2 {
        nl.send(send_request("nl-br-exchange", "BR", ALERT, alert()))
            .await
            .expect("within the limit");
    }
    let status = nl
        .send(send_request("nl-br-exchange", "BR", ALERT, alert()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_RATE_EXCEEDED");
    assert!(
        status.message().contains("2 per minute"),
        "{}",
        status.message()
    );

    // Receiver side: BR counted the two it accepted; a hand-built third one is rejected.
    let env = fed.envelope("NL", "BR", ALERT, &alert(), |_| {});
    let status = fed.exchange_as("NL", "BR").deliver(env).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_RATE_EXCEEDED");
    assert_eq!(
        ledger_entries(fed.node("BR")).last().unwrap().reason(),
        RejectReason::RateExceeded
    );
    assert_eq!(drain_inbox(&mut fed.gateway("BR")).await.len(), 2);

    // Other flows are not affected.
    let query = dccf_node::samples::aeo_status_query("NLAEOC0001", 1).encode_to_vec();
    fed.gateway("BR")
        .send(send_request(
            "nl-br-exchange",
            "NL",
            "dccf.v1.AeoStatusQuery",
            query,
        ))
        .await
        .expect("another flow still flows");
}

#[tokio::test]
async fn a_flow_that_requires_consent_needs_a_consent_reference_on_both_sides() {
    let example = dccf_node::demo::EXAMPLE_AGREEMENT;
    let from = "message_type = \"dccf.v1.RiskAlert\"\nfrom = \"NL\"\nto = \"BR\"\nfields = [\"*\"]";
    let template = example.replace(from, &format!("{from}\nconsent_required = true"));
    assert_ne!(template, example);
    let fed = Federation::start(&["NL", "BR"], &template, "nl-br-exchange", |_| {}).await;
    let alert = dccf_node::samples::risk_alert(1).encode_to_vec();

    let status = fed
        .gateway("NL")
        .send(send_request("nl-br-exchange", "BR", ALERT, alert.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(reason(&status), "REJECT_REASON_CONSENT_MISSING");

    let env = fed.envelope("NL", "BR", ALERT, &alert, |_| {});
    let status = fed.exchange_as("NL", "BR").deliver(env).await.unwrap_err();
    assert_eq!(
        reason(&status),
        "REJECT_REASON_CONSENT_MISSING",
        "{status:?}"
    );

    let mut req = send_request("nl-br-exchange", "BR", ALERT, alert);
    req.consent_reference = "CONSENT-2026-0042".into();
    fed.gateway("NL")
        .send(req)
        .await
        .expect("with a consent reference it flows");
    let inbox = drain_inbox(&mut fed.gateway("BR")).await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].consent_reference, "CONSENT-2026-0042");
}
