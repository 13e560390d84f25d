//! Building ledger entries. A leaf is a serialized [`LedgerEntry`]: headers, signatures, digests
//! and decisions, never payload plaintext.

use prost::Message;

pub use crate::proto::v1::LedgerEntry;
use crate::proto::v1::{EntryKind, Envelope, Receipt, RejectReason};

/// An entry of `kind` about the message `message_id` exchanged with `peer`, fields empty.
fn base(kind: EntryKind, envelope_digest: &[u8; 32], message_id: &str, peer: &str) -> LedgerEntry {
    LedgerEntry {
        kind: kind as i32,
        recorded_at_ms: crate::envelope::now_ms(),
        envelope_digest: envelope_digest.to_vec(),
        reason: RejectReason::Unspecified as i32,
        peer: peer.to_owned(),
        message_id: message_id.to_owned(),
        ..Default::default()
    }
}

/// An entry about `envelope` (header, signature and digest copied in).
pub fn about_envelope(
    kind: EntryKind,
    envelope: &Envelope,
    envelope_digest: &[u8; 32],
    message_id: &str,
    peer: &str,
) -> LedgerEntry {
    LedgerEntry {
        envelope_header: envelope.header.clone(),
        envelope_signature: envelope.signature.clone(),
        ..base(kind, envelope_digest, message_id, peer)
    }
}

/// A receipt entry (issued or received).
pub fn about_receipt(
    kind: EntryKind,
    receipt: &Receipt,
    envelope_digest: &[u8; 32],
    message_id: &str,
    peer: &str,
) -> LedgerEntry {
    LedgerEntry {
        receipt: Some(receipt.clone()),
        ..base(kind, envelope_digest, message_id, peer)
    }
}

/// A refusal entry: `entry` with the reason and readable detail set.
pub fn with_refusal(mut entry: LedgerEntry, reason: RejectReason, detail: &str) -> LedgerEntry {
    entry.reason = reason as i32;
    // Details are our own error messages (never payload content); bound their size anyway.
    entry.detail = detail.chars().take(1024).collect();
    entry
}

/// Serializes an entry to leaf bytes.
pub fn leaf(entry: &LedgerEntry) -> Vec<u8> {
    entry.encode_to_vec()
}

/// Parses leaf bytes.
pub fn parse(leaf: &[u8]) -> Result<LedgerEntry, prost::DecodeError> {
    LedgerEntry::decode(leaf)
}
