//! Moving messages: the send pipeline ([`outbound`]) into the durable [`outbox`], background
//! delivery ([`courier`]), the receive pipeline ([`inbound`]), the durable inbox the back office
//! reads ([`inbox`]), operator actions on the outbox ([`outbox_admin`]) and connections to
//! partner nodes ([`peers`]).
//!
//! Follow a message: `Gateway.Send`/`SendStream` → [`outbound`] (policy, seal, ledger, outbox)
//! → [`courier`] → partner's `Exchange.DeliverStream` → [`inbound`] (verify, open, policy,
//! ledger, receipt) → [`inbox`] → partner's `Gateway.Inbox`; the receipt comes back to the
//! courier, which records it and takes the message out of the outbox.

pub mod courier;
pub mod inbound;
pub mod inbox;
pub mod onward;
pub mod outbound;
pub mod outbox;
pub mod outbox_admin;
pub mod peers;
pub mod refusal_budget;
pub mod rejection_log;
pub mod retention;

use crate::proto::v1::RejectReason;

/// Metadata key carrying the machine-readable [`RejectReason`] of a refusal.
pub const REASON_METADATA: &str = "dccf-reason";

/// A refusal of an envelope or message, with its reason code and a readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("[{}] {message}", reason.as_str_name())]
pub struct Refusal {
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// What was wrong, naming the agreement, party or field concerned.
    pub message: String,
}

impl Refusal {
    /// A refusal with `reason` and `message`.
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    /// A transient condition on this node (storage failure, the same message being received
    /// concurrently): not a decision about the envelope, so it is not ledgered, and the sender
    /// should retry later.
    pub fn retry_later(message: impl Into<String>) -> Self {
        Refusal::new(RejectReason::Unspecified, message)
    }

    /// True for [`Refusal::retry_later`] refusals.
    pub fn is_transient(&self) -> bool {
        self.reason == RejectReason::Unspecified
    }

    /// The gRPC status for this refusal, with the reason in `dccf-reason` metadata.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        if self.is_transient() {
            return tonic::Status::unavailable(self.message.clone());
        }
        let code = match self.reason {
            RejectReason::SenderMismatch
            | RejectReason::NotAParty
            | RejectReason::FlowNotAllowed
            | RejectReason::FieldNotAllowed
            | RejectReason::ConsentMissing
            | RejectReason::OnwardTransferForbidden => Code::PermissionDenied,
            RejectReason::BadSignature => Code::Unauthenticated,
            RejectReason::UnknownAgreement
            | RejectReason::AgreementInactive
            | RejectReason::AgreementDigestMismatch
            | RejectReason::WrongRecipient
            | RejectReason::Expired
            | RejectReason::ClockSkew => Code::FailedPrecondition,
            RejectReason::DuplicateConflict => Code::AlreadyExists,
            RejectReason::TooLarge | RejectReason::RateExceeded => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        };
        let mut status = tonic::Status::new(code, self.to_string());
        if let Ok(v) = self.reason.as_str_name().parse() {
            status.metadata_mut().insert(REASON_METADATA, v);
        }
        status
    }

    /// Reads the reason back from a status produced by [`Refusal::to_status`].
    pub fn from_status(status: &tonic::Status) -> Option<Refusal> {
        let name = status.metadata().get(REASON_METADATA)?.to_str().ok()?;
        let reason = RejectReason::from_str_name(name)?;
        // The message carries the reason as a prefix already (see Display); keep it once.
        let message = status.message();
        let message = message
            .strip_prefix(&format!("[{name}] "))
            .unwrap_or(message)
            .to_owned();
        Some(Refusal { reason, message })
    }
}

impl From<crate::envelope::EnvelopeError> for Refusal {
    fn from(e: crate::envelope::EnvelopeError) -> Self {
        Refusal::new(e.reason(), e.to_string())
    }
}

impl From<crate::policy::PolicyViolation> for Refusal {
    fn from(v: crate::policy::PolicyViolation) -> Self {
        Refusal::new(v.reason, v.message)
    }
}

impl From<crate::agreement::AgreementError> for Refusal {
    fn from(e: crate::agreement::AgreementError) -> Self {
        use crate::agreement::AgreementError as E;
        let reason = match e {
            E::DigestMismatch { .. } => RejectReason::AgreementDigestMismatch,
            E::Inactive { .. } => RejectReason::AgreementInactive,
            _ => RejectReason::UnknownAgreement,
        };
        Refusal::new(reason, e.to_string())
    }
}

/// Checks that `payload` is a valid protobuf message of `message_type` (a known `dccf.v1` type).
pub fn check_payload(
    message_type: &str,
    payload: &[u8],
) -> Result<prost_reflect::DynamicMessage, Refusal> {
    let desc = crate::proto::descriptor_pool()
        .get_message_by_name(message_type)
        .ok_or_else(|| {
            Refusal::new(
                RejectReason::PayloadInvalid,
                format!("unknown message type {message_type:?}"),
            )
        })?;
    prost_reflect::DynamicMessage::decode(desc, payload).map_err(|e| {
        Refusal::new(
            RejectReason::PayloadInvalid,
            format!("payload is not a valid {message_type}: {e}"),
        )
    })
}

/// The next chunk of a stream: waits for one item, then takes what has already arrived, up to
/// `max`, without waiting for more. `None` once the stream has ended. An error ends the chunk and
/// comes back with the items before it (which may be none), to be reported after them.
pub async fn next_chunk<S, T, E>(stream: &mut S, max: usize) -> Option<(Vec<T>, Option<E>)>
where
    S: tokio_stream::Stream<Item = Result<T, E>> + Unpin,
{
    use tokio_stream::StreamExt;
    let mut chunk = Vec::new();
    match stream.next().await? {
        Ok(item) => chunk.push(item),
        Err(e) => return Some((chunk, Some(e))),
    }
    while chunk.len() < max {
        match next_ready(stream) {
            Some(Some(Ok(item))) => chunk.push(item),
            Some(Some(Err(e))) => return Some((chunk, Some(e))),
            Some(None) | None => break,
        }
    }
    Some((chunk, None))
}

/// The stream's next item if it has already arrived: `Some(item)`, or `None` when polling would
/// wait. Lets a reader take what is buffered as one chunk without waiting for more.
pub fn next_ready<S: tokio_stream::Stream + Unpin>(stream: &mut S) -> Option<Option<S::Item>> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::pin::Pin::new(stream).poll_next(&mut cx) {
        std::task::Poll::Ready(item) => Some(item),
        std::task::Poll::Pending => None,
    }
}
