//! One case per agreement rule, each checked twice and separately: the sender's node refuses the
//! message at `Gateway.Send`, and the receiver's node rejects the same message sent as a
//! hand-built envelope that bypasses the sender's checks. Both refusals carry the rule's reason
//! code, and both are in the ledgers.

use dccf_node::demo::EXAMPLE_AGREEMENT;
use dccf_node::proto::v1::{AeoStatus, EntryKind};
use dccf_tests::*;
use prost::Message;

/// The example's flow block for `message_type` from → to (as it appears in the file).
fn flow_block(message_type: &str, from: &str, to: &str) -> String {
    format!("message_type = \"{message_type}\"\nfrom = \"{from}\"\nto = \"{to}\"\nfields = [\"*\"]")
}

/// `base` with `from` replaced by `to`; fails if `from` is not there (the example changed shape).
fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(
        base.contains(from),
        "example agreement changed shape: {from:?} not found"
    );
    base.replace(from, to)
}

/// What the receiver does with the hand-built envelope.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Receiver {
    /// Rejected by the receive pipeline with this reason (and ledgered).
    Rejects(&'static str),
    /// Refused at the TLS handshake: without an agreement in force there is no trust at all.
    RefusesConnection,
}

struct Case {
    rule: &'static str,
    template: String,
    from: &'static str,
    to: &'static str,
    message_type: &'static str,
    payload: Vec<u8>,
    /// Messages to send successfully first (to use up a rate).
    warm_up: usize,
    sender_reason: &'static str,
    receiver: Receiver,
}

fn cases() -> Vec<Case> {
    let alert = dccf_node::samples::risk_alert(1).encode_to_vec();
    let decl = dccf_node::samples::pre_arrival_declaration(1).encode_to_vec();
    let query = dccf_node::samples::aeo_status_query("NLAEOC0001", 1);
    let answer = dccf_node::samples::aeo_status_response(&query, AeoStatus::Valid).encode_to_vec();
    let ra = flow_block("dccf.v1.RiskAlert", "NL", "BR");
    let base = EXAMPLE_AGREEMENT.to_owned();
    assert!(base.contains(&ra), "example agreement changed shape");
    vec![
        Case {
            rule: "message type only flows the other way",
            template: base.clone(),
            from: "BR",
            to: "NL",
            message_type: "dccf.v1.PreArrivalDeclaration",
            payload: decl.clone(),
            warm_up: 0,
            sender_reason: "REJECT_REASON_FLOW_NOT_ALLOWED",
            receiver: Receiver::Rejects("REJECT_REASON_FLOW_NOT_ALLOWED"),
        },
        Case {
            rule: "message type in no flow",
            template: edit(&base, &format!("[[flows]]\n{ra}\n"), ""),
            from: "NL",
            to: "BR",
            message_type: "dccf.v1.RiskAlert",
            payload: alert.clone(),
            warm_up: 0,
            sender_reason: "REJECT_REASON_FLOW_NOT_ALLOWED",
            receiver: Receiver::Rejects("REJECT_REASON_FLOW_NOT_ALLOWED"),
        },
        Case {
            rule: "field outside the allowlist",
            template: edit(
                &base,
                &flow_block("dccf.v1.AeoStatusResponse", "NL", "BR"),
                &flow_block("dccf.v1.AeoStatusResponse", "NL", "BR").replace(
                    "[\"*\"]",
                    "[\"query_reference\", \"operator_identifier\", \"status\"]",
                ),
            ),
            from: "NL",
            to: "BR",
            message_type: "dccf.v1.AeoStatusResponse",
            payload: answer,
            warm_up: 0,
            sender_reason: "REJECT_REASON_FIELD_NOT_ALLOWED",
            receiver: Receiver::Rejects("REJECT_REASON_FIELD_NOT_ALLOWED"),
        },
        Case {
            rule: "rate limit exceeded",
            template: edit(&base, &ra, &format!("{ra}\nrate_limit_per_minute = 1")),
            from: "NL",
            to: "BR",
            message_type: "dccf.v1.RiskAlert",
            payload: alert.clone(),
            warm_up: 1,
            sender_reason: "REJECT_REASON_RATE_EXCEEDED",
            receiver: Receiver::Rejects("REJECT_REASON_RATE_EXCEEDED"),
        },
        Case {
            rule: "consent reference missing",
            template: edit(&base, &ra, &format!("{ra}\nconsent_required = true")),
            from: "NL",
            to: "BR",
            message_type: "dccf.v1.RiskAlert",
            payload: alert.clone(),
            warm_up: 0,
            sender_reason: "REJECT_REASON_CONSENT_MISSING",
            receiver: Receiver::Rejects("REJECT_REASON_CONSENT_MISSING"),
        },
        Case {
            rule: "agreement expired",
            template: base
                .replace(
                    "valid_from = 2026-01-01T00:00:00Z",
                    "valid_from = 2020-01-01T00:00:00Z",
                )
                .replace(
                    "valid_until = 2031-01-01T00:00:00Z",
                    "valid_until = 2021-01-01T00:00:00Z",
                ),
            from: "NL",
            to: "BR",
            message_type: "dccf.v1.RiskAlert",
            payload: alert,
            warm_up: 0,
            sender_reason: "REJECT_REASON_AGREEMENT_INACTIVE",
            receiver: Receiver::RefusesConnection,
        },
    ]
}

#[tokio::test]
async fn every_rule_is_enforced_by_the_sender_and_by_the_receiver_separately() {
    for case in cases() {
        let fed = Federation::start(&["NL", "BR"], &case.template, "nl-br-exchange", |_| {}).await;
        let mut gw = fed.gateway(case.from);
        for _ in 0..case.warm_up {
            gw.send(send_request(
                "nl-br-exchange",
                case.to,
                case.message_type,
                case.payload.clone(),
            ))
            .await
            .unwrap_or_else(|s| panic!("{}: warm-up send failed: {s:?}", case.rule));
        }

        // Sender side: refused by the sender's own node, named, and in the sender's ledger.
        let status = gw
            .send(send_request(
                "nl-br-exchange",
                case.to,
                case.message_type,
                case.payload.clone(),
            ))
            .await
            .expect_err(case.rule);
        assert_eq!(
            reason(&status),
            case.sender_reason,
            "{}: {status:?}",
            case.rule
        );
        assert!(
            status.message().contains("nl-br-exchange"),
            "{}: {}",
            case.rule,
            status.message()
        );
        let sender_ledger = ledger_entries(fed.node(case.from));
        let refused = sender_ledger.last().expect("sender ledger has the refusal");
        assert_eq!(refused.kind(), EntryKind::SendRefused, "{}", case.rule);
        assert_eq!(
            refused.reason().as_str_name(),
            case.sender_reason,
            "{}",
            case.rule
        );

        // Receiver side: the same message, hand-built with the sender's real keys.
        let received_before = drain_inbox(&mut fed.gateway(case.to)).await.len();
        let env = fed.envelope_unchecked(case.from, case.to, case.message_type, &case.payload);
        let status = fed
            .exchange_as(case.from, case.to)
            .deliver(env)
            .await
            .expect_err(case.rule);
        match case.receiver {
            Receiver::Rejects(expected) => {
                assert_eq!(reason(&status), expected, "{}: {status:?}", case.rule);
                let receiver_ledger = ledger_entries(fed.node(case.to));
                let rejected = receiver_ledger
                    .last()
                    .expect("receiver ledger has the rejection");
                assert_eq!(
                    rejected.kind(),
                    EntryKind::EnvelopeRejected,
                    "{}",
                    case.rule
                );
                assert_eq!(rejected.reason().as_str_name(), expected, "{}", case.rule);
            }
            Receiver::RefusesConnection => {
                assert!(
                    reason(&status).is_empty(),
                    "{}: reached a service: {status:?}",
                    case.rule
                );
            }
        }
        assert_eq!(
            drain_inbox(&mut fed.gateway(case.to)).await.len(),
            received_before,
            "{}: nothing new delivered",
            case.rule
        );
    }
}
