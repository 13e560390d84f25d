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

/// The item of a batch receipt that acknowledges `message_id`: `(envelope_digest,
/// ledger_index)`. `None` if no item names it, or if several do (an ambiguous receipt proves
/// nothing about the message).
pub fn receipt_item_for<'a>(body: &'a ReceiptBody, message_id: &str) -> Option<(&'a [u8], u64)> {
    let mut found = body.items.iter().filter(|i| i.message_id == message_id);
    let item = found.next()?;
    if found.next().is_some() {
        return None;
    }
    Some((item.envelope_digest.as_slice(), item.ledger_index))
}

/// Verifies the signature and that the receipt is about exactly this envelope: a single receipt
/// names its message id and envelope digest; a batch receipt (`items` non-empty) leaves them
/// empty and has exactly one item for the message id, with the envelope digest. Either way the
/// sender and recipient must be the expected ones. Returns the body (for a batch receipt, the
/// message's ledger index is in its item: see [`receipt_item_for`]).
pub fn verify_receipt_for(
    receipt: &Receipt,
    key: &VerifyingKey,
    expected: &Expected<'_>,
) -> Result<ReceiptBody, EnvelopeError> {
    let body = verify_receipt(receipt, key, expected.recipient)?;
    check_receipt_body(&body, expected)?;
    Ok(body)
}

/// Checks that an already verified receipt body is about exactly the expected envelope (the
/// second half of [`verify_receipt_for`], for callers that check many envelopes against one
/// batch receipt and verify its signature once).
pub fn check_receipt_body(
    body: &ReceiptBody,
    expected: &Expected<'_>,
) -> Result<(), EnvelopeError> {
    let mismatch = |field: &str, got: String, want: String| {
        EnvelopeError::ReceiptMismatch(format!("{field} is {got}, expected {want}"))
    };
    if body.sender != expected.sender {
        return Err(mismatch(
            "sender",
            body.sender.clone(),
            expected.sender.into(),
        ));
    }
    if body.recipient != expected.recipient {
        return Err(mismatch(
            "recipient",
            body.recipient.clone(),
            expected.recipient.into(),
        ));
    }
    let digest = if body.items.is_empty() {
        if body.message_id != expected.message_id {
            return Err(mismatch(
                "message_id",
                body.message_id.clone(),
                expected.message_id.into(),
            ));
        }
        body.envelope_digest.as_slice()
    } else {
        if !body.message_id.is_empty() || !body.envelope_digest.is_empty() {
            return Err(EnvelopeError::ReceiptMismatch(
                "batch receipt also sets message_id or envelope_digest outside its items"
                    .to_owned(),
            ));
        }
        let naming = body
            .items
            .iter()
            .filter(|i| i.message_id == expected.message_id)
            .count();
        match receipt_item_for(body, expected.message_id) {
            Some((digest, _)) => digest,
            None if naming == 0 => {
                return Err(EnvelopeError::ReceiptMismatch(format!(
                    "batch receipt has no item with message_id {} among its {} items",
                    expected.message_id,
                    body.items.len()
                )));
            }
            None => {
                return Err(EnvelopeError::ReceiptMismatch(format!(
                    "batch receipt has {naming} items with message_id {}",
                    expected.message_id
                )));
            }
        }
    };
    if digest != expected.envelope_digest.as_slice() {
        return Err(mismatch(
            "envelope_digest",
            hex::encode(digest),
            hex::encode(expected.envelope_digest),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::ReceiptItem;

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

    fn batch_body() -> ReceiptBody {
        let item = |id: &str, d: u8, index: u64| ReceiptItem {
            message_id: id.into(),
            envelope_digest: vec![d; 32],
            ledger_index: index,
        };
        ReceiptBody {
            message_id: String::new(),
            envelope_digest: Vec::new(),
            ledger_index: 0,
            items: vec![item("m-0", 4, 10), item("m-1", 5, 11), item("m-2", 6, 12)],
            ..body()
        }
    }

    #[test]
    fn a_batch_receipt_verifies_for_each_of_its_items() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let r = sign_receipt(&batch_body(), &key);
        let got = verify_receipt_for(&r, &key.verifying_key(), &expected()).unwrap();
        assert_eq!(receipt_item_for(&got, "m-1"), Some((&[5u8; 32][..], 11)));
        for (id, d) in [("m-0", 4u8), ("m-2", 6)] {
            let exp = Expected {
                message_id: id,
                envelope_digest: &[d; 32],
                ..expected()
            };
            verify_receipt_for(&r, &key.verifying_key(), &exp).unwrap();
        }
    }

    #[test]
    fn a_batch_receipt_without_the_message_or_with_another_digest_is_rejected() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let r = sign_receipt(&batch_body(), &key);
        let absent = Expected {
            message_id: "m-9",
            ..expected()
        };
        let err = verify_receipt_for(&r, &key.verifying_key(), &absent).unwrap_err();
        assert!(matches!(err, EnvelopeError::ReceiptMismatch(_)));
        assert!(
            err.to_string().contains("no item with message_id m-9"),
            "{err}"
        );
        let wrong = Expected {
            envelope_digest: &[4u8; 32],
            ..expected()
        };
        let err = verify_receipt_for(&r, &key.verifying_key(), &wrong).unwrap_err();
        assert!(err.to_string().contains("envelope_digest"), "{err}");
        // Sender and recipient still count.
        let mut b = batch_body();
        b.sender = "DE".into();
        let err = verify_receipt_for(&sign_receipt(&b, &key), &key.verifying_key(), &expected())
            .unwrap_err();
        assert!(err.to_string().contains("sender"), "{err}");
        // Ambiguous: the message twice, or top-level fields set as well.
        let mut b = batch_body();
        b.items.push(ReceiptItem {
            message_id: "m-1".into(),
            envelope_digest: vec![5u8; 32],
            ledger_index: 13,
        });
        assert_eq!(receipt_item_for(&b, "m-1"), None);
        let err = verify_receipt_for(&sign_receipt(&b, &key), &key.verifying_key(), &expected())
            .unwrap_err();
        assert!(
            err.to_string().contains("2 items with message_id m-1"),
            "{err}"
        );
        let mut b = batch_body();
        b.message_id = "m-1".into();
        assert!(
            verify_receipt_for(&sign_receipt(&b, &key), &key.verifying_key(), &expected()).is_err()
        );
    }
}
