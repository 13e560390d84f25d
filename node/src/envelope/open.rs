//! Verifying and opening an incoming envelope. Each step is a separate function with its own
//! error so that the receive pipeline can record exactly why an envelope was refused, and run the
//! cheap checks (parse, agreement, signature, clock) before the expensive one (decrypt).

use ed25519_dalek::{Signature, VerifyingKey};
use prost::Message;

use super::bulk::BulkCaches;
use super::{Aead, EnvelopeError, HpkePrivateKey, Kdf, Kem, SALT_LEN};
use crate::proto::v1::{Envelope, EnvelopeHeader, SealMode, SealedBody};

/// Decodes an envelope from wire bytes.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
    Envelope::decode(bytes).map_err(|e| EnvelopeError::Malformed {
        what: "envelope",
        detail: e.to_string(),
    })
}

/// Decodes the header and checks its version and that every required field is present and of
/// the right size.
pub fn parse_header(envelope: &Envelope) -> Result<EnvelopeHeader, EnvelopeError> {
    let header = EnvelopeHeader::decode(envelope.header.as_slice()).map_err(|e| {
        EnvelopeError::Malformed {
            what: "envelope header",
            detail: e.to_string(),
        }
    })?;
    if header.version != super::ENVELOPE_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(header.version));
    }
    let missing = |field: &str| EnvelopeError::Malformed {
        what: "envelope header",
        detail: format!("field {field} is missing or has the wrong length"),
    };
    if header.message_id.is_empty() || header.message_id.len() > 128 {
        return Err(missing("message_id"));
    }
    for (field, value) in [
        ("agreement_id", &header.agreement_id),
        ("sender", &header.sender),
        ("recipient", &header.recipient),
        ("message_type", &header.message_type),
    ] {
        if value.is_empty() || value.len() > 256 {
            return Err(missing(field));
        }
    }
    for (field, value) in [
        ("agreement_digest", &header.agreement_digest),
        ("ciphertext_digest", &header.ciphertext_digest),
        ("payload_commitment", &header.payload_commitment),
    ] {
        if value.len() != 32 {
            return Err(missing(field));
        }
    }
    if SealMode::try_from(header.seal_mode).is_err() {
        return Err(EnvelopeError::Malformed {
            what: "envelope header",
            detail: format!("field seal_mode has the unknown value {}", header.seal_mode),
        });
    }
    if envelope.batch_header.is_empty()
        && (envelope.batch_index != 0 || !envelope.batch_path.is_empty())
    {
        return Err(EnvelopeError::Malformed {
            what: "envelope",
            detail: "batch_index or batch_path is set without a batch_header".to_owned(),
        });
    }
    if envelope.signature.len() != 64 {
        return Err(EnvelopeError::Malformed {
            what: "envelope",
            detail: format!(
                "signature is {} bytes, expected 64",
                envelope.signature.len()
            ),
        });
    }
    Ok(header)
}

/// Verifies the envelope's signature (strict Ed25519: no malleable signatures, no weak keys)
/// under `key`, the key the agreement gives for the header's sender, in either signing mode:
/// a signature over the header itself (single-message mode, `batch_header` empty), or a bulk-mode
/// batch signature plus the header's inclusion path (see [`verify_signature_with`]).
///
/// Without a cache: a bulk envelope costs one full signature check. Receivers of streams use
/// [`verify_signature_with`] and a long-lived [`BulkCaches`].
pub fn verify_signature(
    envelope: &Envelope,
    key: &VerifyingKey,
    signer: &str,
) -> Result<(), EnvelopeError> {
    if envelope.batch_header.is_empty() {
        return verify_header_signature(envelope, key, signer);
    }
    let header = parse_header(envelope)?;
    verify_signature_with(envelope, &header, key, signer, &BulkCaches::uncached())
}

/// Verifies the envelope's signature in whichever mode it was signed, with `header` the parsed
/// `envelope.header` (see [`parse_header`]):
///
/// - `batch_header` empty: `signature` must be the sender's signature over PAE(envelope header
///   type, header), exactly as [`verify_signature`];
/// - `batch_header` set: `signature` must be the sender's signature over PAE(batch header type,
///   batch_header), and the header must be leaf `batch_index` of the batch root through
///   `batch_path` ([`super::bulk::verify_bulk_envelope_with`]); `caches` remembers verified
///   batches so that a stream costs one signature check per batch. A signature over the header
///   alone does not verify as a batch signature (different domain), so an envelope cannot claim
///   a batch it is not in.
///
/// The signing mode is independent of `header.seal_mode`: an epoch-sealed envelope may be signed
/// on its own, and a batch may carry single-shot sealed envelopes; `seal_mode` is itself signed.
pub fn verify_signature_with(
    envelope: &Envelope,
    header: &EnvelopeHeader,
    key: &VerifyingKey,
    signer: &str,
    caches: &BulkCaches,
) -> Result<(), EnvelopeError> {
    if envelope.batch_header.is_empty() {
        if envelope.batch_index != 0 || !envelope.batch_path.is_empty() {
            return Err(EnvelopeError::Malformed {
                what: "envelope",
                detail: "batch_index or batch_path is set without a batch_header".to_owned(),
            });
        }
        return verify_header_signature(envelope, key, signer);
    }
    super::bulk::verify_bulk_envelope_with(envelope, header, key, signer, caches).map(|_| ())
}

/// Single-message mode: the signature covers PAE(envelope header type, header).
fn verify_header_signature(
    envelope: &Envelope,
    key: &VerifyingKey,
    signer: &str,
) -> Result<(), EnvelopeError> {
    let bad = || EnvelopeError::BadSignature {
        what: "envelope header",
        signer: signer.to_owned(),
    };
    let sig = Signature::from_slice(&envelope.signature).map_err(|_| bad())?;
    let msg = super::pae::pae(super::pae::ENVELOPE_HEADER_TYPE, &envelope.header);
    key.verify_strict(&msg, &sig).map_err(|_| bad())
}

/// Clock rules a receiver applies.
#[derive(Debug, Clone, Copy)]
pub struct ClockPolicy {
    /// Receiver's current time, Unix ms.
    pub now_ms: i64,
    /// Allowed |created_at - now|, seconds.
    pub max_skew_secs: u64,
    /// Longest allowed lifetime (expires_at - created_at), seconds.
    pub max_ttl_secs: u64,
}

/// Checks expiry, lifetime and clock skew.
pub fn check_times(header: &EnvelopeHeader, clock: &ClockPolicy) -> Result<(), EnvelopeError> {
    if header.expires_at_ms <= clock.now_ms {
        return Err(EnvelopeError::Expired(format!(
            "expires_at {} ms is {} s in the past",
            header.expires_at_ms,
            (clock.now_ms - header.expires_at_ms) / 1000
        )));
    }
    let skew_ms = header.created_at_ms.saturating_sub(clock.now_ms);
    let max_skew_ms = i64::try_from(clock.max_skew_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    if skew_ms.abs() > max_skew_ms {
        return Err(EnvelopeError::ClockSkew {
            skew_secs: skew_ms / 1000,
            max_secs: clock.max_skew_secs,
        });
    }
    let ttl_ms = header.expires_at_ms.saturating_sub(header.created_at_ms);
    let max_ttl_ms = i64::try_from(clock.max_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    if ttl_ms > max_ttl_ms {
        return Err(EnvelopeError::Expired(format!(
            "lifetime {} s exceeds the allowed {} s",
            ttl_ms / 1000,
            clock.max_ttl_secs
        )));
    }
    Ok(())
}

/// A decrypted, commitment-checked payload.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The serialized payload message (of the header's `message_type`).
    pub payload: Vec<u8>,
    /// The commitment salt (lets the recipient later prove the payload to an auditor).
    pub salt: Vec<u8>,
}

/// Checks the ciphertext digest, opens the payload with HPKE under this header's binding, and
/// checks the payload commitment. Handles both seal modes (see [`open_payload_with`]); without a
/// cache, an epoch-sealed payload costs one HPKE setup.
pub fn open_payload(
    envelope: &Envelope,
    header: &EnvelopeHeader,
    recipient_key: &HpkePrivateKey,
) -> Result<Opened, EnvelopeError> {
    open_payload_with(envelope, header, recipient_key, &BulkCaches::uncached())
}

/// Checks the ciphertext digest, opens the payload as `header.seal_mode` says, and checks the
/// payload commitment:
///
/// - `SEAL_MODE_SINGLE_SHOT`: HPKE single-shot open with the info of [`super::hpke_info`];
/// - `SEAL_MODE_EPOCH`: the epoch's HPKE receiver context (from `caches`, or set up once and
///   cached) exports this message id's key, which opens `nonce || ChaCha20-Poly1305 ciphertext`
///   ([`super::bulk::open_epoch_payload`]).
///
/// An unknown seal mode is [`EnvelopeError::Malformed`].
pub fn open_payload_with(
    envelope: &Envelope,
    header: &EnvelopeHeader,
    recipient_key: &HpkePrivateKey,
    caches: &BulkCaches,
) -> Result<Opened, EnvelopeError> {
    match SealMode::try_from(header.seal_mode) {
        Ok(SealMode::SingleShot) => open_single_shot(envelope, header, recipient_key),
        Ok(SealMode::Epoch) => {
            super::bulk::open_epoch_payload(envelope, header, recipient_key, caches)
        }
        Err(_) => Err(EnvelopeError::Malformed {
            what: "envelope header",
            detail: format!("field seal_mode has the unknown value {}", header.seal_mode),
        }),
    }
}

/// Checks `header.ciphertext_digest` against the ciphertext carried (both seal modes).
pub(super) fn check_ciphertext_digest(
    envelope: &Envelope,
    header: &EnvelopeHeader,
) -> Result<(), EnvelopeError> {
    let digest = super::ciphertext_digest(&envelope.encapsulated_key, &envelope.sealed_payload);
    if !constant_time_eq(&digest, &header.ciphertext_digest) {
        return Err(EnvelopeError::CiphertextMismatch);
    }
    Ok(())
}

fn open_single_shot(
    envelope: &Envelope,
    header: &EnvelopeHeader,
    recipient_key: &HpkePrivateKey,
) -> Result<Opened, EnvelopeError> {
    check_ciphertext_digest(envelope, header)?;
    let encapped = <<Kem as hpke::Kem>::EncappedKey as hpke::Deserializable>::from_bytes(
        &envelope.encapsulated_key,
    )
    .map_err(|_| EnvelopeError::DecryptionFailed)?;
    let info = super::hpke_info(
        &header.message_id,
        &header.sender,
        &header.recipient,
        &header.agreement_digest,
    );
    let plaintext = hpke::single_shot_open::<Aead, Kdf, Kem>(
        &hpke::OpModeR::Base,
        recipient_key,
        &encapped,
        &info,
        &envelope.sealed_payload,
        &[],
    )
    .map_err(|_| EnvelopeError::DecryptionFailed)?;
    open_body(&plaintext, header)
}

/// Parses a decrypted `SealedBody` and checks it against the header's payload commitment (both
/// seal modes).
pub(super) fn open_body(
    plaintext: &[u8],
    header: &EnvelopeHeader,
) -> Result<Opened, EnvelopeError> {
    let body = SealedBody::decode(plaintext).map_err(|e| EnvelopeError::Malformed {
        what: "sealed body",
        detail: e.to_string(),
    })?;
    if body.salt.len() != SALT_LEN {
        return Err(EnvelopeError::Malformed {
            what: "sealed body",
            detail: format!("salt is {} bytes, expected {SALT_LEN}", body.salt.len()),
        });
    }
    let commitment = super::payload_commitment(&body.salt, &body.payload);
    if !constant_time_eq(&commitment, &header.payload_commitment) {
        return Err(EnvelopeError::CommitmentMismatch);
    }
    Ok(Opened {
        payload: body.payload,
        salt: body.salt,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;

    fn clock() -> ClockPolicy {
        ClockPolicy {
            now_ms: NOW_MS,
            max_skew_secs: 300,
            max_ttl_secs: 7 * 86400,
        }
    }

    /// Runs every receiver check in order, as the receive pipeline does.
    fn receive(env: &Envelope, parties: &Parties) -> Result<Opened, EnvelopeError> {
        let header = parse_header(env)?;
        verify_signature(env, &parties.sender_sign.verifying_key(), &header.sender)?;
        check_times(&header, &clock())?;
        open_payload(env, &header, &parties.recipient_hpke.0)
    }

    #[test]
    fn a_sealed_envelope_opens_to_its_payload() {
        let p = Parties::new();
        let env = p.envelope("m-1", b"declaration bytes");
        let opened = receive(&env, &p).unwrap();
        assert_eq!(opened.payload, b"declaration bytes");
        assert_eq!(opened.salt.len(), SALT_LEN);
    }

    #[test]
    fn any_header_byte_changed_is_rejected() {
        let p = Parties::new();
        let env = p.envelope("m-1", b"payload");
        for i in 0..env.header.len() {
            for flip in [0x01u8, 0x80] {
                let mut bad = env.clone();
                bad.header[i] ^= flip;
                let err =
                    receive(&bad, &p).expect_err(&format!("byte {i} flip {flip:#x} accepted"));
                assert!(
                    matches!(
                        err,
                        EnvelopeError::BadSignature { .. }
                            | EnvelopeError::Malformed { .. }
                            | EnvelopeError::UnsupportedVersion(_)
                    ),
                    "byte {i}: unexpected {err:?}"
                );
            }
        }
    }

    #[test]
    fn signature_by_another_key_is_rejected() {
        let p = Parties::new();
        let mut env = p.envelope("m-1", b"payload");
        let intruder = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]);
        env.signature = super::super::seal::sign_header(&env.header, &intruder);
        assert!(matches!(
            receive(&env, &p),
            Err(EnvelopeError::BadSignature { .. })
        ));
    }

    #[test]
    fn signature_bytes_changed_are_rejected() {
        let p = Parties::new();
        let env = p.envelope("m-1", b"payload");
        for i in [0usize, 31, 32, 63] {
            let mut bad = env.clone();
            bad.signature[i] ^= 0x04;
            assert!(matches!(
                receive(&bad, &p),
                Err(EnvelopeError::BadSignature { .. })
            ));
        }
    }

    #[test]
    fn ciphertext_moved_under_another_header_is_rejected() {
        let p = Parties::new();
        let a = p.envelope("m-a", b"secret A");
        let b = p.envelope("m-b", b"secret B");
        // Naive move: B's header with A's ciphertext: the signed digest no longer matches.
        let mut moved = b.clone();
        moved.sealed_payload = a.sealed_payload.clone();
        moved.encapsulated_key = a.encapsulated_key.clone();
        assert_eq!(
            receive(&moved, &p).unwrap_err(),
            EnvelopeError::CiphertextMismatch
        );

        // Even a sender that re-signs a header naming A's ciphertext under another message id
        // cannot get it opened: HPKE's info binds the message id.
        let mut header = parse_header(&b).unwrap();
        header.ciphertext_digest =
            super::super::ciphertext_digest(&a.encapsulated_key, &a.sealed_payload).to_vec();
        let header_bytes = prost::Message::encode_to_vec(&header);
        let rebound = Envelope {
            signature: super::super::seal::sign_header(&header_bytes, &p.sender_sign),
            header: header_bytes,
            sealed_payload: a.sealed_payload.clone(),
            encapsulated_key: a.encapsulated_key.clone(),
            ..Default::default()
        };
        assert_eq!(
            receive(&rebound, &p).unwrap_err(),
            EnvelopeError::DecryptionFailed
        );
    }

    #[test]
    fn header_naming_another_sender_or_recipient_cannot_open_the_payload() {
        let p = Parties::new();
        let env = p.envelope("m-1", b"payload");
        for field in ["sender", "recipient", "agreement_digest"] {
            let mut header = parse_header(&env).unwrap();
            match field {
                "sender" => header.sender = "XX".into(),
                "recipient" => header.recipient = "YY".into(),
                _ => header.agreement_digest = vec![7u8; 32],
            }
            let header_bytes = prost::Message::encode_to_vec(&header);
            let forged = Envelope {
                signature: super::super::seal::sign_header(&header_bytes, &p.sender_sign),
                header: header_bytes,
                ..env.clone()
            };
            assert_eq!(
                receive(&forged, &p).unwrap_err(),
                EnvelopeError::DecryptionFailed,
                "{field}"
            );
        }
    }

    #[test]
    fn sealed_to_another_recipient_is_rejected() {
        let p = Parties::new();
        let other = hpke_keypair(77);
        let env = p.envelope_to("m-1", b"payload", &other.1);
        assert_eq!(
            receive(&env, &p).unwrap_err(),
            EnvelopeError::DecryptionFailed
        );
    }

    #[test]
    fn truncated_or_garbage_bytes_are_rejected() {
        let p = Parties::new();
        let bytes = prost::Message::encode_to_vec(&p.envelope("m-1", b"payload"));
        for len in [0, 1, 10, bytes.len() / 2, bytes.len() - 1] {
            let result = decode_envelope(&bytes[..len]).and_then(|e| receive(&e, &p));
            assert!(result.is_err(), "truncated to {len} accepted");
        }
        for seed in 0..64u8 {
            let garbage: Vec<u8> = (0..200u32)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect();
            let result = decode_envelope(&garbage).and_then(|e| receive(&e, &p));
            assert!(result.is_err(), "garbage {seed} accepted");
        }
        // A truncated ciphertext with a matching (re-signed) digest still fails to open.
        let env = p.envelope("m-2", b"payload");
        let mut short = env.clone();
        short.sealed_payload.truncate(10);
        assert_eq!(
            receive(&short, &p).unwrap_err(),
            EnvelopeError::CiphertextMismatch
        );
    }

    #[test]
    fn expired_envelope_is_rejected() {
        let p = Parties::new();
        let env = p.envelope_at("m-1", b"payload", NOW_MS - 120_000, NOW_MS - 1);
        assert!(matches!(receive(&env, &p), Err(EnvelopeError::Expired(_))));
    }

    #[test]
    fn lifetime_beyond_the_maximum_is_rejected() {
        let p = Parties::new();
        let env = p.envelope_at("m-1", b"payload", NOW_MS, NOW_MS + 8 * 86_400_000);
        assert!(matches!(receive(&env, &p), Err(EnvelopeError::Expired(_))));
    }

    #[test]
    fn outside_the_clock_skew_window_is_rejected_both_ways() {
        let p = Parties::new();
        let future = p.envelope_at("m-1", b"p", NOW_MS + 301_000, NOW_MS + 3_600_000);
        assert!(matches!(
            receive(&future, &p),
            Err(EnvelopeError::ClockSkew { skew_secs: 301, .. })
        ));
        let past = p.envelope_at("m-2", b"p", NOW_MS - 301_000, NOW_MS + 3_600_000);
        assert!(matches!(
            receive(&past, &p),
            Err(EnvelopeError::ClockSkew {
                skew_secs: -301,
                ..
            })
        ));
        let inside = p.envelope_at("m-3", b"p", NOW_MS + 299_000, NOW_MS + 3_600_000);
        assert!(receive(&inside, &p).is_ok());
    }

    #[test]
    fn unsupported_version_is_rejected() {
        let p = Parties::new();
        let env = p.envelope("m-1", b"p");
        let mut header = parse_header(&env).unwrap();
        header.version = 2;
        let bytes = prost::Message::encode_to_vec(&header);
        let env = Envelope {
            header: bytes,
            ..env
        };
        assert_eq!(
            parse_header(&env).unwrap_err(),
            EnvelopeError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn missing_required_header_fields_are_malformed() {
        let p = Parties::new();
        let env = p.envelope("m-1", b"p");
        for field in [
            "message_id",
            "sender",
            "agreement_digest",
            "payload_commitment",
        ] {
            let mut header = parse_header(&env).unwrap();
            match field {
                "message_id" => header.message_id.clear(),
                "sender" => header.sender.clear(),
                "agreement_digest" => header.agreement_digest.truncate(31),
                _ => header.payload_commitment.clear(),
            }
            let bad = Envelope {
                header: prost::Message::encode_to_vec(&header),
                ..env.clone()
            };
            let err = parse_header(&bad).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn payload_not_matching_the_commitment_is_rejected() {
        // A sender that commits to one payload but seals another is caught after decryption.
        let p = Parties::new();
        let env = p.envelope("m-1", b"committed payload");
        let mut header = parse_header(&env).unwrap();
        header.payload_commitment = vec![0u8; 32];
        let header_bytes = prost::Message::encode_to_vec(&header);
        let env = Envelope {
            signature: super::super::seal::sign_header(&header_bytes, &p.sender_sign),
            header: header_bytes,
            ..env
        };
        assert_eq!(
            receive(&env, &p).unwrap_err(),
            EnvelopeError::CommitmentMismatch
        );
    }
}
