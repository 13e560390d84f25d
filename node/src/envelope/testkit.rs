//! Test helpers: fixed keys and envelope builders.

use ed25519_dalek::SigningKey;

use super::seal::{Outgoing, seal};
use super::{HpkePrivateKey, HpkePublicKey, Kem};
use crate::proto::v1::Envelope;

/// A fixed "now" for deterministic clock checks.
pub const NOW_MS: i64 = 1_790_000_000_000;
/// Agreement digest used by the test envelopes.
pub const DIGEST: [u8; 32] = [0xAB; 32];

/// A deterministic HPKE key pair from a seed (RFC 9180 DeriveKeyPair).
pub fn hpke_keypair(seed: u8) -> (HpkePrivateKey, HpkePublicKey) {
    <Kem as hpke::Kem>::derive_keypair(&[seed; 32])
}

/// A sender signing key and a recipient HPKE key pair.
pub struct Parties {
    /// Sender "NL"'s signing key.
    pub sender_sign: SigningKey,
    /// Recipient "BR"'s HPKE key pair.
    pub recipient_hpke: (HpkePrivateKey, HpkePublicKey),
}

impl Parties {
    /// Fixed keys.
    pub fn new() -> Self {
        Parties {
            sender_sign: SigningKey::from_bytes(&[1u8; 32]),
            recipient_hpke: hpke_keypair(2),
        }
    }

    /// An envelope NL → BR created now, valid one hour.
    pub fn envelope(&self, id: &str, payload: &[u8]) -> Envelope {
        self.envelope_at(id, payload, NOW_MS, NOW_MS + 3_600_000)
    }

    /// An envelope with explicit times.
    pub fn envelope_at(&self, id: &str, payload: &[u8], created: i64, expires: i64) -> Envelope {
        self.build(id, payload, created, expires, &self.recipient_hpke.1)
    }

    /// An envelope sealed to another key than the recipient's.
    pub fn envelope_to(&self, id: &str, payload: &[u8], key: &HpkePublicKey) -> Envelope {
        self.build(id, payload, NOW_MS, NOW_MS + 3_600_000, key)
    }

    fn build(
        &self,
        id: &str,
        payload: &[u8],
        created: i64,
        expires: i64,
        key: &HpkePublicKey,
    ) -> Envelope {
        seal(
            &Outgoing {
                message_id: id,
                agreement_id: "test-agreement",
                agreement_digest: &DIGEST,
                sender: "NL",
                recipient: "BR",
                message_type: "dccf.v1.RiskAlert",
                payload,
                in_reply_to: "",
                consent_reference: "",
                created_at_ms: created,
                expires_at_ms: expires,
            },
            &self.sender_sign,
            key,
        )
        .expect("sealing with valid keys works")
    }
}
