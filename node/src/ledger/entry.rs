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

/// Key prefix of the message-id index: `q/` + u16 BE id length + id + u64 BE entry index.
const BY_MESSAGE: &[u8] = b"q/";

fn message_prefix(message_id: &str) -> Vec<u8> {
    let len = u16::try_from(message_id.len()).unwrap_or(u16::MAX);
    [BY_MESSAGE, &len.to_be_bytes(), message_id.as_bytes()].concat()
}

/// Appends `entry` to `txn` and, when it names a message, indexes it by message id (same atomic
/// unit), so auditors can ask for every entry about a message. Returns the entry's index.
pub fn append(txn: &mut crate::ledger::Txn<'_>, entry: &LedgerEntry) -> u64 {
    let index = txn.append(leaf(entry));
    if !entry.message_id.is_empty() && entry.message_id.len() <= usize::from(u16::MAX) {
        let key = [
            message_prefix(&entry.message_id),
            index.to_be_bytes().to_vec(),
        ]
        .concat();
        // `q/` is outside the ledger's reserved key space, so this cannot be refused.
        let indexed = txn.put(key, Vec::new());
        debug_assert!(indexed.is_ok());
    }
    index
}

/// Indices of every durable entry about `message_id`, in log order.
pub fn indices_of(
    store: &crate::ledger::Store,
    message_id: &str,
) -> Result<Vec<u64>, crate::ledger::LedgerError> {
    let prefix = message_prefix(message_id);
    Ok(store
        .scan_prefix(&prefix)?
        .into_iter()
        .filter_map(|(k, _)| {
            k.get(prefix.len()..)?
                .try_into()
                .ok()
                .map(u64::from_be_bytes)
        })
        .collect())
}

/// Serializes an entry to leaf bytes.
pub fn leaf(entry: &LedgerEntry) -> Vec<u8> {
    entry.encode_to_vec()
}

/// Parses leaf bytes.
pub fn parse(leaf: &[u8]) -> Result<LedgerEntry, prost::DecodeError> {
    LedgerEntry::decode(leaf)
}
