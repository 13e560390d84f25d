//! Policy: what an agreement allows. Both the sender (before sealing) and the receiver (after
//! verifying) call the same checks, so the two sides enforce the agreement independently.
//!
//! This first cut checks that a flow exists for the message type in this direction. Field
//! allowlists, rates, consent and onward-transfer rules extend [`check`] without changing callers.

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
