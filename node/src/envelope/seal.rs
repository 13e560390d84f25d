//! Building an outgoing envelope: commit, seal (HPKE), then sign the exact header bytes.

use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use rand_core::{OsRng, RngCore};

use super::{Aead, EnvelopeError, HpkePublicKey, Kdf, Kem, SALT_LEN};
use crate::proto::v1::{Envelope, EnvelopeHeader, SealMode, SealedBody};

/// What the sender states about a message; becomes the signed header.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// Unique message id (UUID text).
    pub message_id: &'a str,
    /// Agreement the message travels under.
    pub agreement_id: &'a str,
    /// SHA-256 of that agreement's file bytes.
    pub agreement_digest: &'a [u8; 32],
    /// Sending administration.
    pub sender: &'a str,
    /// Receiving administration.
    pub recipient: &'a str,
    /// Fully qualified protobuf type of `payload`.
    pub message_type: &'a str,
    /// Serialized payload message.
    pub payload: &'a [u8],
    /// Message id this one answers, or empty.
    pub in_reply_to: &'a str,
    /// Consent reference where the flow requires one, or empty.
    pub consent_reference: &'a str,
    /// Creation time, Unix ms.
    pub created_at_ms: i64,
    /// Expiry time, Unix ms.
    pub expires_at_ms: i64,
}

/// Seals `msg.payload` to `recipient_key` and signs the header with `signer`.
pub fn seal(
    msg: &Outgoing<'_>,
    signer: &SigningKey,
    recipient_key: &HpkePublicKey,
) -> Result<Envelope, EnvelopeError> {
    let (payload_commitment, body) = sealed_body(msg.payload)?;
    let info = super::hpke_info(
        msg.message_id,
        msg.sender,
        msg.recipient,
        msg.agreement_digest,
    );
    let (encapped, sealed_payload) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &hpke::OpModeS::Base,
        recipient_key,
        &info,
        &body,
        &[],
        &mut OsRng,
    )
    .map_err(|e| EnvelopeError::Seal(e.to_string()))?;
    let encapsulated_key = hpke::Serializable::to_bytes(&encapped).to_vec();

    let header = header_bytes(
        msg,
        &encapsulated_key,
        &sealed_payload,
        &payload_commitment,
        SealMode::SingleShot,
    );
    let signature = sign_header(&header, signer);
    Ok(Envelope {
        header,
        signature,
        sealed_payload,
        encapsulated_key,
        ..Default::default()
    })
}

/// Signs serialized header bytes under the envelope-header domain.
pub fn sign_header(header: &[u8], signer: &SigningKey) -> Vec<u8> {
    signer
        .sign(&super::pae::pae(super::pae::ENVELOPE_HEADER_TYPE, header))
        .to_bytes()
        .to_vec()
}

/// Draws a fresh commitment salt and returns `(payload_commitment, serialized SealedBody)`:
/// the plaintext both seal modes encrypt, and the commitment the header carries.
pub(super) fn sealed_body(payload: &[u8]) -> Result<([u8; 32], Vec<u8>), EnvelopeError> {
    let mut salt = [0u8; SALT_LEN];
    OsRng
        .try_fill_bytes(&mut salt)
        .map_err(|e| EnvelopeError::Seal(format!("random source failed: {e}")))?;
    let payload_commitment = super::payload_commitment(&salt, payload);
    let body = SealedBody {
        salt: salt.to_vec(),
        payload: payload.to_vec(),
    }
    .encode_to_vec();
    Ok((payload_commitment, body))
}

/// The serialized header of `msg` for a sealed payload (both seal modes).
pub(super) fn header_bytes(
    msg: &Outgoing<'_>,
    encapsulated_key: &[u8],
    sealed_payload: &[u8],
    payload_commitment: &[u8; 32],
    seal_mode: SealMode,
) -> Vec<u8> {
    EnvelopeHeader {
        version: super::ENVELOPE_VERSION,
        message_id: msg.message_id.to_owned(),
        agreement_id: msg.agreement_id.to_owned(),
        agreement_digest: msg.agreement_digest.to_vec(),
        sender: msg.sender.to_owned(),
        recipient: msg.recipient.to_owned(),
        message_type: msg.message_type.to_owned(),
        created_at_ms: msg.created_at_ms,
        expires_at_ms: msg.expires_at_ms,
        in_reply_to: msg.in_reply_to.to_owned(),
        ciphertext_digest: super::ciphertext_digest(encapsulated_key, sealed_payload).to_vec(),
        payload_commitment: payload_commitment.to_vec(),
        consent_reference: msg.consent_reference.to_owned(),
        seal_mode: seal_mode as i32,
    }
    .encode_to_vec()
}
