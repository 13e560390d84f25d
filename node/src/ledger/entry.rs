//! Building ledger entries. A leaf is a serialized [`LedgerEntry`]: headers, signatures, digests
//! and decisions, never payload plaintext.

use ed25519_dalek::VerifyingKey;
use prost::Message;

use crate::envelope::EnvelopeError;
use crate::envelope::bulk::BulkCaches;
use crate::envelope::open;
pub use crate::proto::v1::LedgerEntry;
use crate::proto::v1::{EntryKind, Envelope, EnvelopeHeader, Receipt, RejectReason};

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

/// An entry about `envelope` (header, signature and digest copied in, and for a bulk-mode
/// envelope its batch header, index and path, so the entry stays verifiable on its own: see
/// [`verify_envelope_signature`]).
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
        batch_header: envelope.batch_header.clone(),
        batch_index: envelope.batch_index,
        batch_path: envelope.batch_path.clone(),
        ..base(kind, envelope_digest, message_id, peer)
    }
}

/// Verifies the sender's signature an envelope entry records, in either signing mode: over
/// `envelope_header` itself, or (bulk mode, `batch_header` set) over the batch header with
/// `envelope_header` included at `batch_index` through `batch_path`. `key` is the sender's
/// verifying key, `signer` its name for errors. Returns the parsed header.
pub fn verify_envelope_signature(
    entry: &LedgerEntry,
    key: &VerifyingKey,
    signer: &str,
) -> Result<EnvelopeHeader, EnvelopeError> {
    let envelope = Envelope {
        header: entry.envelope_header.clone(),
        signature: entry.envelope_signature.clone(),
        batch_header: entry.batch_header.clone(),
        batch_index: entry.batch_index,
        batch_path: entry.batch_path.clone(),
        ..Default::default()
    };
    let header = open::parse_header(&envelope)?;
    open::verify_signature_with(&envelope, &header, key, signer, &BulkCaches::uncached())?;
    Ok(header)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::bulk::{EpochPolicy, Epochs, sign_batch};
    use crate::envelope::seal::Outgoing;
    use crate::envelope::testkit::{DIGEST, NOW_MS, Parties};

    fn bulk_envelopes(p: &Parties, n: usize) -> Vec<Envelope> {
        let mut epochs = Epochs::new(EpochPolicy::default());
        let ids: Vec<String> = (0..n).map(|i| format!("m-{i}")).collect();
        let mut envs: Vec<Envelope> = ids
            .iter()
            .map(|id| {
                let msg = Outgoing {
                    message_id: id,
                    agreement_id: "test-agreement",
                    agreement_digest: &DIGEST,
                    sender: "NL",
                    recipient: "BR",
                    message_type: "dccf.v1.RiskAlert",
                    payload: b"payload",
                    in_reply_to: "",
                    consent_reference: "",
                    created_at_ms: NOW_MS,
                    expires_at_ms: NOW_MS + 3_600_000,
                };
                epochs
                    .seal(&msg, &p.recipient_hpke.1, NOW_MS)
                    .expect("seal")
            })
            .collect();
        sign_batch(&mut envs, "batch-1", "NL", "BR", NOW_MS, &p.sender_sign).expect("sign");
        envs
    }

    /// The entry as an auditor reads it back from the ledger.
    fn recorded(env: &Envelope) -> LedgerEntry {
        let e = about_envelope(
            EntryKind::EnvelopeReceived,
            env,
            &crate::envelope::envelope_digest(env),
            "m",
            "NL",
        );
        parse(&leaf(&e)).expect("leaf parses")
    }

    #[test]
    fn bulk_envelope_entries_stay_verifiable_on_their_own() {
        let p = Parties::new();
        let key = p.sender_sign.verifying_key();
        let envs = bulk_envelopes(&p, 9);
        for (i, env) in envs.iter().enumerate() {
            let e = recorded(env);
            assert_eq!(e.batch_header, env.batch_header);
            assert_eq!(e.batch_index, i as u64);
            assert_eq!(e.batch_path, env.batch_path);
            let header = verify_envelope_signature(&e, &key, "NL").expect("verifies");
            assert_eq!(header.message_id, format!("m-{i}"));
        }
        // Tampered batch path, index, header or signature: refused.
        let good = recorded(&envs[4]);
        let mut bad = good.clone();
        bad.batch_path[0][0] ^= 1;
        assert!(verify_envelope_signature(&bad, &key, "NL").is_err());
        let mut bad = good.clone();
        bad.batch_index = 5;
        assert!(verify_envelope_signature(&bad, &key, "NL").is_err());
        let mut bad = good.clone();
        bad.envelope_header = recorded(&envs[5]).envelope_header;
        assert!(verify_envelope_signature(&bad, &key, "NL").is_err());
        let mut bad = good.clone();
        bad.batch_header.clear();
        bad.batch_index = 0;
        bad.batch_path.clear();
        assert!(verify_envelope_signature(&bad, &key, "NL").is_err());
        let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
        assert!(verify_envelope_signature(&good, &other, "NL").is_err());
    }

    #[test]
    fn single_envelope_entries_verify_as_before() {
        let p = Parties::new();
        let key = p.sender_sign.verifying_key();
        let e = recorded(&p.envelope("m-1", b"payload"));
        assert!(e.batch_header.is_empty() && e.batch_path.is_empty());
        assert_eq!(
            verify_envelope_signature(&e, &key, "NL")
                .expect("verifies")
                .message_id,
            "m-1"
        );
        let mut bad = e.clone();
        bad.envelope_signature[3] ^= 1;
        assert!(verify_envelope_signature(&bad, &key, "NL").is_err());
    }
}
