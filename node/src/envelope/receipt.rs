//! Signed receipts: the recipient's non-repudiable statement that it accepted an envelope.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use prost::Message;

use super::EnvelopeError;
use super::pae::{RECEIPT_TYPE, pae};
use crate::proto::v1::{Receipt, ReceiptBody};

/// Signs `body` as the recipient.
pub fn sign_receipt(body: &ReceiptBody, signer: &SigningKey) -> Receipt {
    let body = body.encode_to_vec();
    let signature = signer.sign(&pae(RECEIPT_TYPE, &body)).to_bytes().to_vec();
    Receipt { body, signature }
}

/// Verifies a receipt's signature under the recipient's key and returns its body.
pub fn verify_receipt(
    receipt: &Receipt,
    key: &VerifyingKey,
    signer: &str,
) -> Result<ReceiptBody, EnvelopeError> {
    let bad = || EnvelopeError::BadSignature {
        what: "receipt",
        signer: signer.to_owned(),
    };
    let sig = Signature::from_slice(&receipt.signature).map_err(|_| bad())?;
    key.verify_strict(&pae(RECEIPT_TYPE, &receipt.body), &sig)
        .map_err(|_| bad())?;
    ReceiptBody::decode(receipt.body.as_slice()).map_err(|e| EnvelopeError::Malformed {
        what: "receipt body",
        detail: e.to_string(),
    })
}

/// What a sender expects a receipt for one of its envelopes to state.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The envelope's message id.
    pub message_id: &'a str,
    /// This node (the sender).
    pub sender: &'a str,
    /// The partner that must have signed.
    pub recipient: &'a str,
    /// SHA-256 of the envelope as sent.
    pub envelope_digest: &'a [u8; 32],
}

/// Verifies the signature and that the receipt is about exactly this envelope.
pub fn verify_receipt_for(
    receipt: &Receipt,
    key: &VerifyingKey,
    expected: &Expected<'_>,
) -> Result<ReceiptBody, EnvelopeError> {
    let body = verify_receipt(receipt, key, expected.recipient)?;
    let mismatch = |field: &str, got: String, want: String| {
        EnvelopeError::ReceiptMismatch(format!("{field} is {got}, expected {want}"))
    };
    if body.message_id != expected.message_id {
        return Err(mismatch(
            "message_id",
            body.message_id,
            expected.message_id.into(),
        ));
    }
    if body.sender != expected.sender {
        return Err(mismatch("sender", body.sender, expected.sender.into()));
    }
    if body.recipient != expected.recipient {
        return Err(mismatch(
            "recipient",
            body.recipient,
            expected.recipient.into(),
        ));
    }
    if body.envelope_digest.as_slice() != expected.envelope_digest.as_slice() {
        return Err(mismatch(
            "envelope_digest",
            hex::encode(&body.envelope_digest),
            hex::encode(expected.envelope_digest),
        ));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ReceiptBody {
        ReceiptBody {
            message_id: "m-1".into(),
            sender: "NL".into(),
            recipient: "BR".into(),
            envelope_digest: vec![5u8; 32],
            ledger_index: 7,
            received_at_ms: 1,
            checkpoint: String::new(),
            ledger_size: 8,
            ledger_root: vec![1u8; 32],
            items: Vec::new(),
        }
    }

    fn expected() -> Expected<'static> {
        Expected {
            message_id: "m-1",
            sender: "NL",
            recipient: "BR",
            envelope_digest: &[5u8; 32],
        }
    }

    #[test]
    fn a_signed_receipt_verifies() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let r = sign_receipt(&body(), &key);
        assert_eq!(
            verify_receipt_for(&r, &key.verifying_key(), &expected()).unwrap(),
            body()
        );
    }

    #[test]
    fn a_receipt_signed_by_another_key_is_rejected() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let other = SigningKey::from_bytes(&[4u8; 32]);
        let r = sign_receipt(&body(), &other);
        assert!(matches!(
            verify_receipt(&r, &key.verifying_key(), "BR"),
            Err(EnvelopeError::BadSignature {
                what: "receipt",
                ..
            })
        ));
    }

    #[test]
    fn any_receipt_byte_changed_is_rejected() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let r = sign_receipt(&body(), &key);
        for i in 0..r.body.len() {
            let mut bad = r.clone();
            bad.body[i] ^= 1;
            assert!(
                verify_receipt(&bad, &key.verifying_key(), "BR").is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn a_header_signature_is_not_a_receipt_signature() {
        // Domain separation: the same key signing the same bytes as an envelope header does not
        // produce a valid receipt.
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let r = sign_receipt(&body(), &key);
        let header_sig = super::super::seal::sign_header(&r.body, &key);
        let forged = Receipt {
            body: r.body.clone(),
            signature: header_sig,
        };
        assert!(verify_receipt(&forged, &key.verifying_key(), "BR").is_err());
    }

    #[test]
    fn a_receipt_for_another_envelope_is_rejected() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        for field in ["message_id", "sender", "recipient", "envelope_digest"] {
            let mut b = body();
            match field {
                "message_id" => b.message_id = "m-2".into(),
                "sender" => b.sender = "DE".into(),
                "recipient" => b.recipient = "FR".into(),
                _ => b.envelope_digest = vec![6u8; 32],
            }
            let r = sign_receipt(&b, &key);
            let err = verify_receipt_for(&r, &key.verifying_key(), &expected()).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }
}
