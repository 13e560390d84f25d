//! Policy: what an agreement allows. Both the sender (before sealing) and the receiver (after
//! verifying) call the same checks, so the two sides enforce the agreement independently.
//!
//! [`check`] finds the flow for the message type in this direction (before anything is sealed
//! or decrypted); [`check_fields`] then checks every field the payload sets against that flow's
//! allowlist. Rates, consent and onward-transfer rules extend these without changing callers.

use crate::agreement::{Agreement, Flow};
use crate::proto::v1::RejectReason;

/// A policy refusal: a machine-readable reason and a message naming agreement, flow and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PolicyViolation {
    /// Wire reason code.
    pub reason: RejectReason,
    /// Readable explanation.
    pub message: String,
}

/// The facts about one message that policy decides on.
#[derive(Debug, Clone, Copy)]
pub struct MessageFacts<'a> {
    /// Sending administration.
    pub sender: &'a str,
    /// Receiving administration.
    pub recipient: &'a str,
    /// Fully qualified protobuf message type.
    pub message_type: &'a str,
}

/// Checks `facts` against `agreement`; returns the flow that allows the message.
pub fn check<'a>(
    agreement: &'a Agreement,
    facts: &MessageFacts<'_>,
) -> Result<&'a Flow, PolicyViolation> {
    for (role, admin) in [("sender", facts.sender), ("recipient", facts.recipient)] {
        if agreement.party(admin).is_none() {
            return Err(PolicyViolation {
                reason: RejectReason::NotAParty,
                message: format!(
                    "agreement {} v{}: {role} {admin} is not a party",
                    agreement.id(),
                    agreement.doc.version
                ),
            });
        }
    }
    agreement
        .doc
        .flows
        .iter()
        .find(|f| {
            f.message_type == facts.message_type
                && f.from == facts.sender
                && f.to == facts.recipient
        })
        .ok_or_else(|| PolicyViolation {
            reason: RejectReason::FlowNotAllowed,
            message: format!(
                "agreement {} v{} has no flow for {} from {} to {}",
                agreement.id(),
                agreement.doc.version,
                facts.message_type,
                facts.sender,
                facts.recipient
            ),
        })
}

#[cfg(test)]
mod field_tests {
    use super::*;
    use crate::agreement::tests::{doc, test_party};
    use prost::Message;

    fn agreement_with_fields(fields: &[&str]) -> Agreement {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let mut d = doc(&[&nl, &br]);
        d.flows[0].message_type = "dccf.v1.AeoStatusResponse".into();
        d.flows[0].fields = fields
            .iter()
            .map(|f| toml::Spanned::new(0..0, f.to_string()))
            .collect();
        let text = toml::to_string(&d).unwrap();
        Agreement::parse(std::path::Path::new("a.toml"), text.as_bytes()).unwrap()
    }

    fn response(with_name: bool) -> prost_reflect::DynamicMessage {
        let q = crate::samples::aeo_status_query("NLAEOC0001", 1);
        let mut r = crate::samples::aeo_status_response(&q, crate::proto::v1::AeoStatus::Valid);
        if !with_name {
            r.operator_name = None;
            r.operator_address = None;
        }
        let desc = crate::proto::descriptor_pool()
            .get_message_by_name("dccf.v1.AeoStatusResponse")
            .unwrap();
        prost_reflect::DynamicMessage::decode(desc, r.encode_to_vec().as_slice()).unwrap()
    }

    const STATUS_ONLY: &[&str] = crate::agreement::templates::AEO_STATUS_FIELDS;

    #[test]
    fn fields_inside_the_allowlist_pass() {
        let a = agreement_with_fields(STATUS_ONLY);
        assert!(check_fields(&a, &a.doc.flows[0], &response(false)).is_ok());
    }

    #[test]
    fn a_field_outside_the_allowlist_is_named() {
        let a = agreement_with_fields(STATUS_ONLY);
        let v = check_fields(&a, &a.doc.flows[0], &response(true)).unwrap_err();
        assert_eq!(v.reason, RejectReason::FieldNotAllowed);
        assert!(
            v.message.contains("field operator_name is not allowed"),
            "{}",
            v.message
        );
        assert!(v.message.contains("test-agreement"), "{}", v.message);
    }

    #[test]
    fn nested_paths_allow_exactly_their_subtree() {
        let mut fields = STATUS_ONLY.to_vec();
        fields.extend(["operator_name", "operator_address.country"]);
        let a = agreement_with_fields(&fields);
        let v = check_fields(&a, &a.doc.flows[0], &response(true)).unwrap_err();
        assert!(
            v.message.contains("field operator_address.street"),
            "{}",
            v.message
        );
        fields.push("operator_address");
        let a = agreement_with_fields(&fields);
        assert!(check_fields(&a, &a.doc.flows[0], &response(true)).is_ok());
    }

    #[test]
    fn the_rate_limit_admits_a_burst_then_refuses_and_sides_count_separately() {
        let mut a = agreement_with_fields(&["*"]);
        a.doc.flows[0].rate_limit_per_minute = Some(3);
        let (limiter, flow) = (RateLimiter::default(), &a.doc.flows[0]);
        for _ in 0..3 {
            limiter.admit(&a, flow, Side::Sending).unwrap();
        }
        let v = limiter.admit(&a, flow, Side::Sending).unwrap_err();
        assert_eq!(v.reason, RejectReason::RateExceeded);
        assert!(
            v.message.contains("rate limit of 3 per minute"),
            "{}",
            v.message
        );
        limiter
            .admit(&a, flow, Side::Receiving)
            .expect("the receiving side has its own bucket");
        a.doc.flows[0].rate_limit_per_minute = None;
        for _ in 0..100 {
            limiter
                .admit(&a, &a.doc.flows[0], Side::Sending)
                .expect("no limit, no refusal");
        }
    }

    #[test]
    fn consent_is_checked_only_where_the_flow_requires_it() {
        let mut a = agreement_with_fields(&["*"]);
        assert!(check_consent(&a, &a.doc.flows[0], "").is_ok());
        a.doc.flows[0].consent_required = true;
        let v = check_consent(&a, &a.doc.flows[0], " ").unwrap_err();
        assert_eq!(v.reason, RejectReason::ConsentMissing);
        assert!(v.message.contains("consent_reference"), "{}", v.message);
        assert!(check_consent(&a, &a.doc.flows[0], "CONSENT-2026-0042").is_ok());
    }

    #[test]
    fn star_allows_the_whole_message() {
        let a = agreement_with_fields(&["*"]);
        assert!(check_fields(&a, &a.doc.flows[0], &response(true)).is_ok());
    }

    #[test]
    fn repeated_messages_are_checked_element_by_element() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let mut d = doc(&[&nl, &br]);
        d.flows[0].message_type = "dccf.v1.PreArrivalDeclaration".into();
        let top = crate::agreement::templates::PRE_ARRIVAL_HEADER_FIELDS;
        let mut fields: Vec<String> = top.iter().map(|s| s.to_string()).collect();
        fields.extend(
            [
                "goods_items.sequence_number",
                "goods_items.hs_code",
                "goods_items.description",
            ]
            .map(String::from),
        );
        d.flows[0].fields = fields
            .into_iter()
            .map(|f| toml::Spanned::new(0..0, f))
            .collect();
        let a = Agreement::parse(
            std::path::Path::new("a.toml"),
            toml::to_string(&d).unwrap().as_bytes(),
        )
        .unwrap();
        let desc = crate::proto::descriptor_pool()
            .get_message_by_name("dccf.v1.PreArrivalDeclaration")
            .unwrap();
        let decl = crate::samples::pre_arrival_declaration(1).encode_to_vec();
        let msg = prost_reflect::DynamicMessage::decode(desc, decl.as_slice()).unwrap();
        let v = check_fields(&a, &a.doc.flows[0], &msg).unwrap_err();
        assert!(
            v.message.contains("field goods_items.gross_mass_grams"),
            "{}",
            v.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::tests::{doc, test_party};

    fn agreement() -> Agreement {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let text = toml::to_string(&doc(&[&nl, &br])).unwrap();
        Agreement::parse(std::path::Path::new("a.toml"), text.as_bytes()).unwrap()
    }

    fn facts<'a>(sender: &'a str, recipient: &'a str, t: &'a str) -> MessageFacts<'a> {
        MessageFacts {
            sender,
            recipient,
            message_type: t,
        }
    }

    #[test]
    fn listed_flow_is_allowed() {
        let a = agreement();
        assert!(check(&a, &facts("NL", "BR", "dccf.v1.RiskAlert")).is_ok());
    }

    #[test]
    fn reverse_direction_is_refused() {
        let a = agreement();
        let v = check(&a, &facts("BR", "NL", "dccf.v1.RiskAlert")).unwrap_err();
        assert_eq!(v.reason, RejectReason::FlowNotAllowed);
        assert!(
            v.message.contains("test-agreement") && v.message.contains("from BR to NL"),
            "{}",
            v.message
        );
    }

    #[test]
    fn unlisted_type_is_refused() {
        let a = agreement();
        let v = check(&a, &facts("NL", "BR", "dccf.v1.PreArrivalDeclaration")).unwrap_err();
        assert_eq!(v.reason, RejectReason::FlowNotAllowed);
    }

    #[test]
    fn non_party_is_refused() {
        let a = agreement();
        let v = check(&a, &facts("NL", "FR", "dccf.v1.RiskAlert")).unwrap_err();
        assert_eq!(v.reason, RejectReason::NotAParty);
        assert!(v.message.contains("recipient FR"));
    }
}

/// Checks that a consent reference is present where `flow` requires one.
pub fn check_consent(
    agreement: &Agreement,
    flow: &Flow,
    consent_reference: &str,
) -> Result<(), PolicyViolation> {
    if !flow.consent_required || !consent_reference.trim().is_empty() {
        return Ok(());
    }
    Err(PolicyViolation {
        reason: RejectReason::ConsentMissing,
        message: format!(
            "agreement {} v{}, flow {} {}->{}: requires a consent_reference and none was given",
            agreement.id(),
            agreement.doc.version,
            flow.message_type,
            flow.from,
            flow.to
        ),
    })
}

/// Which side of a flow a rate is counted on (each side keeps its own count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// This node sends on the flow.
    Sending,
    /// This node receives on the flow.
    Receiving,
}

/// Per-flow rate limits: one token bucket per (agreement version, flow, side), holding up to
/// `rate_limit_per_minute` tokens and refilled continuously at that rate.
#[derive(Debug, Default)]
pub struct RateLimiter {
    buckets: std::sync::Mutex<std::collections::HashMap<RateKey, Bucket>>,
}

/// (agreement digest, flow position in the agreement, side).
type RateKey = ([u8; 32], usize, Side);

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimiter {
    /// Takes one message from `flow`'s allowance on `side`, or refuses with the flow named.
    pub fn admit(
        &self,
        agreement: &Agreement,
        flow: &Flow,
        side: Side,
    ) -> Result<(), PolicyViolation> {
        self.admit_n(agreement, flow, side, 1)
    }

    /// Takes `n` messages at once (all or none), e.g. the queries of one online AEO lookup.
    pub fn admit_n(
        &self,
        agreement: &Agreement,
        flow: &Flow,
        side: Side,
        n: usize,
    ) -> Result<(), PolicyViolation> {
        let n = n as f64;
        let Some(per_minute) = flow.rate_limit_per_minute else {
            return Ok(());
        };
        let capacity = f64::from(per_minute);
        let position = agreement
            .doc
            .flows
            .iter()
            .position(|f| std::ptr::eq(f, flow))
            .unwrap_or(usize::MAX);
        let key = (agreement.digest, position, side);
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * capacity / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(capacity);
        bucket.last = now;
        if bucket.tokens >= n {
            bucket.tokens -= n;
            Ok(())
        } else {
            Err(PolicyViolation {
                reason: RejectReason::RateExceeded,
                message: format!(
                    "agreement {} v{}, flow {} {}->{}: rate limit of {per_minute} per minute exceeded; retry later",
                    agreement.id(),
                    agreement.doc.version,
                    flow.message_type,
                    flow.from,
                    flow.to
                ),
            })
        }
    }
}

/// Checks that every field `payload` sets is allowed by `flow`; the refusal names the agreement,
/// the flow and the first field outside the allowlist.
pub fn check_fields(
    agreement: &Agreement,
    flow: &Flow,
    payload: &prost_reflect::DynamicMessage,
) -> Result<(), PolicyViolation> {
    match first_disallowed(&flow.allow, payload) {
        None => Ok(()),
        Some(path) => Err(PolicyViolation {
            reason: RejectReason::FieldNotAllowed,
            message: format!(
                "agreement {} v{}, flow {} {}->{}: field {path} is not allowed",
                agreement.id(),
                agreement.doc.version,
                flow.message_type,
                flow.from,
                flow.to
            ),
        }),
    }
}

/// The path of the first set field of `message` that `tree` does not allow, if any. Builds the
/// path string only for a refused field.
fn first_disallowed(
    tree: &crate::agreement::AllowTree,
    message: &prost_reflect::DynamicMessage,
) -> Option<String> {
    use prost_reflect::Value;
    if tree.all {
        return None;
    }
    for (field, value) in message.fields() {
        let Some(child) = tree.children.get(&field.number()) else {
            return Some(field.name().to_owned());
        };
        if child.all {
            continue;
        }
        // Partly allowed: descend into the message (or every message of a repeated field).
        let deeper = match value {
            Value::Message(m) => first_disallowed(child, m),
            Value::List(items) => items
                .iter()
                .filter_map(Value::as_message)
                .find_map(|m| first_disallowed(child, m)),
            _ => None,
        };
        if let Some(rest) = deeper {
            return Some(format!("{}.{rest}", field.name()));
        }
    }
    None
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::agreement::tests::{doc, test_party};
    use crate::proto::v1::{Address, AeoStatusResponse};
    use proptest::prelude::*;
    use prost::Message;

    /// Field paths of an AEO answer that the generator can set.
    const PATHS: &[&str] = &[
        "query_reference",
        "operator_identifier",
        "status",
        "valid_from_ms",
        "operator_name",
        "operator_address.street",
        "operator_address.city",
        "operator_address.country",
    ];
    /// Allowlist entries the generator can pick: leaves, the whole address, or everything.
    const ENTRIES: &[&str] = &[
        "query_reference",
        "operator_identifier",
        "status",
        "valid_from_ms",
        "operator_name",
        "operator_address",
        "operator_address.street",
        "operator_address.city",
        "operator_address.country",
        "*",
    ];

    fn message(set: &[bool]) -> AeoStatusResponse {
        let text = |i: usize, v: &str| set[i].then(|| v.to_owned());
        let address = (set[5] || set[6] || set[7]).then(|| Address {
            street: text(5, "Proefstraat 3").unwrap_or_default(),
            city: text(6, "Eindhoven").unwrap_or_default(),
            country: text(7, "NL").unwrap_or_default(),
            ..Default::default()
        });
        AeoStatusResponse {
            query_reference: text(0, "Q-1").unwrap_or_default(),
            operator_identifier: text(1, "NLAEOC0001").unwrap_or_default(),
            status: if set[2] { 1 } else { 0 },
            valid_from_ms: if set[3] { 1_700_000_000_000 } else { 0 },
            operator_name: text(4, "Example B.V."),
            operator_address: address,
            ..Default::default()
        }
    }

    /// A two-party agreement document, with identities generated once for all cases.
    fn base_doc() -> &'static crate::agreement::AgreementDoc {
        static DOC: std::sync::OnceLock<crate::agreement::AgreementDoc> =
            std::sync::OnceLock::new();
        DOC.get_or_init(|| doc(&[&test_party("NL"), &test_party("BR")]))
    }

    fn covered(path: &str, allow: &[&str]) -> bool {
        allow
            .iter()
            .any(|a| *a == "*" || *a == path || path.starts_with(&format!("{a}.")))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn accepted_messages_never_carry_a_field_outside_the_allowlist(
            set in proptest::collection::vec(any::<bool>(), PATHS.len()),
            picks in proptest::collection::vec(any::<bool>(), ENTRIES.len()),
        ) {
            let allow: Vec<&str> = ENTRIES.iter().zip(&picks).filter(|(_, p)| **p).map(|(e, _)| *e).collect();
            prop_assume!(!allow.is_empty());
            let mut d = base_doc().clone();
            d.flows[0].message_type = "dccf.v1.AeoStatusResponse".into();
            d.flows[0].fields = allow.iter().map(|f| toml::Spanned::new(0..0, (*f).to_owned())).collect();
            let a = Agreement::parse(std::path::Path::new("p.toml"), toml::to_string(&d).unwrap().as_bytes()).unwrap();
            let desc = crate::proto::descriptor_pool().get_message_by_name("dccf.v1.AeoStatusResponse").unwrap();
            let msg = prost_reflect::DynamicMessage::decode(desc, message(&set).encode_to_vec().as_slice()).unwrap();

            let outside: Vec<&str> = PATHS.iter().zip(&set).filter(|(p, s)| **s && !covered(p, &allow)).map(|(p, _)| *p).collect();
            match check_fields(&a, &a.doc.flows[0], &msg) {
                Ok(()) => prop_assert!(outside.is_empty(), "accepted with {outside:?} outside {allow:?}"),
                Err(v) => {
                    prop_assert!(!outside.is_empty(), "refused although every field is allowed: {}", v.message);
                    let named = v
                        .message
                        .split("field ")
                        .nth(1)
                        .and_then(|rest| rest.split(' ').next())
                        .unwrap_or_default()
                        .to_owned();
                    // The refusal names an outside field, or the message that holds it when
                    // nothing under that message is allowed.
                    prop_assert!(
                        outside.iter().any(|p| *p == named || p.starts_with(&format!("{named}."))),
                        "{} names none of {outside:?}",
                        v.message
                    );
                }
            }
        }
    }
}
