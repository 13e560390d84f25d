//! The envelope (DESIGN §5): a signed header plus an HPKE-sealed payload, and signed receipts.
//!
//! - [`pae`]: the DSSE-style pre-authentication encoding that gives every signature its domain.
//! - [`seal`]: build, seal and sign an outgoing envelope.
//! - [`open`]: verify and open an incoming envelope, step by step, each step with its own error.
//! - [`receipt`]: sign and verify receipts (single and batch receipts).
//! - [`bulk`]: bulk mode (DESIGN §5): per-epoch HPKE contexts with per-message exported keys,
//!   one signature per batch of headers (RFC 9162 Merkle root + inclusion paths), and the
//!   receiver's caches that make verification one signature per batch.
//!
//! This module knows keys, bytes and clocks, not agreements: the caller looks up which keys an
//! agreement names and passes them in.

pub mod bulk;
pub mod open;
pub mod pae;
pub mod receipt;
pub mod seal;

use crate::proto::v1::RejectReason;

/// HPKE suite of every envelope: X25519-HKDF-SHA256 / HKDF-SHA256 / ChaCha20-Poly1305.
pub type Kem = hpke::kem::X25519HkdfSha256;
/// The HPKE KDF.
pub type Kdf = hpke::kdf::HkdfSha256;
/// The HPKE AEAD.
pub type Aead = hpke::aead::ChaCha20Poly1305;
/// A recipient's HPKE public key.
pub type HpkePublicKey = <Kem as hpke::Kem>::PublicKey;
/// A recipient's HPKE private key.
pub type HpkePrivateKey = <Kem as hpke::Kem>::PrivateKey;

/// Envelope format version produced and accepted by this node.
pub const ENVELOPE_VERSION: u32 = 1;

/// Length of the payload-commitment salt.
pub const SALT_LEN: usize = 32;

/// Everything that can be wrong with an envelope or a receipt. [`EnvelopeError::reason`] maps
/// each to the wire's machine-readable [`RejectReason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Bytes that are not a valid envelope, header, body or receipt.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which structure failed to parse.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// An envelope version this node does not implement.
    #[error("unsupported envelope version {0} (this node speaks version {ENVELOPE_VERSION})")]
    UnsupportedVersion(u32),
    /// The header signature does not verify under the sender's key.
    #[error("signature of {what} does not verify under the key of {signer}")]
    BadSignature {
        /// What was signed (envelope header, receipt).
        what: &'static str,
        /// Whose key was used to verify.
        signer: String,
    },
    /// The envelope expired, or its lifetime is longer than allowed.
    #[error("envelope expired: {0}")]
    Expired(String),
    /// The envelope's creation time is outside the clock-skew window.
    #[error(
        "envelope created_at is {skew_secs}s away from this node's clock (allowed: {max_secs}s)"
    )]
    ClockSkew {
        /// Observed difference in seconds (signed: positive means in the future).
        skew_secs: i64,
        /// Allowed difference in seconds.
        max_secs: u64,
    },
    /// The ciphertext digest in the header does not match the ciphertext carried.
    #[error("ciphertext does not match the header's ciphertext_digest")]
    CiphertextMismatch,
    /// HPKE could not open the payload with this node's key and this header's binding.
    #[error("payload cannot be decrypted with this node's key under this header")]
    DecryptionFailed,
    /// The decrypted payload does not match the header's commitment.
    #[error("payload does not match the header's payload_commitment")]
    CommitmentMismatch,
    /// A receipt that does not state what the sender expects.
    #[error("receipt mismatch: {0}")]
    ReceiptMismatch(String),
    /// Sealing failed (bad recipient key or RNG failure).
    #[error("cannot seal payload: {0}")]
    Seal(String),
}

impl EnvelopeError {
    /// The wire reason code for this error.
    pub fn reason(&self) -> RejectReason {
        match self {
            EnvelopeError::Malformed { .. } | EnvelopeError::ReceiptMismatch(_) => {
                RejectReason::Malformed
            }
            EnvelopeError::UnsupportedVersion(_) => RejectReason::UnsupportedVersion,
            EnvelopeError::BadSignature { .. } => RejectReason::BadSignature,
            EnvelopeError::Expired(_) => RejectReason::Expired,
            EnvelopeError::ClockSkew { .. } => RejectReason::ClockSkew,
            EnvelopeError::CiphertextMismatch => RejectReason::CiphertextMismatch,
            EnvelopeError::DecryptionFailed | EnvelopeError::Seal(_) => {
                RejectReason::DecryptionFailed
            }
            EnvelopeError::CommitmentMismatch => RejectReason::CommitmentMismatch,
        }
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The digest that names an envelope in receipts and ledgers: SHA-256 of its protobuf encoding
/// (prost writes the fields in field order, so sender and receiver compute the same bytes).
pub fn envelope_digest(envelope: &crate::proto::v1::Envelope) -> [u8; 32] {
    use prost::Message;
    sha256(&envelope.encode_to_vec())
}

/// `header.ciphertext_digest`: SHA-256(u32be(len(enc)) || enc || ciphertext).
pub fn ciphertext_digest(encapsulated_key: &[u8], sealed_payload: &[u8]) -> [u8; 32] {
    let len = u32::try_from(encapsulated_key.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    sha256_parts(&[&len, encapsulated_key, sealed_payload])
}

/// `header.payload_commitment`: SHA-256(salt || payload).
pub fn payload_commitment(salt: &[u8], payload: &[u8]) -> [u8; 32] {
    sha256_parts(&[salt, payload])
}

/// The HPKE `info` string: binds the ciphertext to message id, sender, recipient and agreement
/// digest, each length-prefixed so that no two different tuples encode alike.
pub fn hpke_info(
    message_id: &str,
    sender: &str,
    recipient: &str,
    agreement_digest: &[u8],
) -> Vec<u8> {
    labeled(
        b"dccf.v1 envelope payload",
        &[
            message_id.as_bytes(),
            sender.as_bytes(),
            recipient.as_bytes(),
            agreement_digest,
        ],
    )
}

/// `label` followed by each field as u32 big-endian length then bytes: an injective encoding of
/// the tuple under a fixed label (the label itself is a constant, so it needs no prefix).
pub fn labeled(label: &[u8], fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        label.len() + 4 * fields.len() + fields.iter().map(|f| f.len()).sum::<usize>(),
    );
    out.extend_from_slice(label);
    for f in fields {
        out.extend_from_slice(&u32::try_from(f.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod testkit;
