//! `Exchange.Ping`: a partner's current time, signed over the caller's nonce, so `doctor` can
//! measure clock skew against a time it can attribute (envelopes outside the skew window are
//! refused, so a drifting clock silently stops an exchange).

use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use crate::identity::keys::SigningIdentity;
use crate::proto::v1::{PingRequest, PingResponse};

/// Shortest and longest nonce accepted.
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// Errors answering or checking a ping.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PingError {
    /// The request's nonce is too short or too long.
    #[error("ping nonce must be 16 to 64 bytes, got {0}")]
    Nonce(usize),
    /// The answer names another administration than the one asked.
    #[error("ping answered by {got}, expected {expected}")]
    WrongAdmin {
        /// Who was asked.
        expected: String,
        /// Who answered.
        got: String,
    },
    /// The signature does not verify under the expected key (or is malformed).
    #[error("ping answer of {0}: signature does not verify under its signing key")]
    BadSignature(String),
}

/// The bytes a ping answer signs.
pub fn signed_bytes(admin: &str, time_ms: i64, nonce: &[u8]) -> Vec<u8> {
    let mut out = format!("dccf-ping-v1\n{admin}\n{time_ms}\n").into_bytes();
    out.extend_from_slice(nonce);
    out
}

/// This node's answer to `request`, signed by `signing` as `admin` at `time_ms`.
pub fn answer(
    admin: &str,
    signing: &SigningIdentity,
    request: &PingRequest,
    time_ms: i64,
) -> Result<PingResponse, PingError> {
    if !NONCE_LEN.contains(&request.nonce.len()) {
        return Err(PingError::Nonce(request.nonce.len()));
    }
    let signature = signing.sign(&signed_bytes(admin, time_ms, &request.nonce));
    Ok(PingResponse {
        admin: admin.to_owned(),
        time_ms,
        signature: signature.to_bytes().to_vec(),
    })
}

/// Checks that `response` is `expected`'s signed answer to `nonce`; returns its time.
pub fn verify(
    response: &PingResponse,
    expected: &str,
    key: &VerifyingKey,
    nonce: &[u8],
) -> Result<i64, PingError> {
    if response.admin != expected {
        return Err(PingError::WrongAdmin {
            expected: expected.to_owned(),
            got: response.admin.clone(),
        });
    }
    let bad = || PingError::BadSignature(expected.to_owned());
    let signature = Signature::from_slice(&response.signature).map_err(|_| bad())?;
    key.verify(&signed_bytes(expected, response.time_ms, nonce), &signature)
        .map_err(|_| bad())?;
    Ok(response.time_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> SigningIdentity {
        SigningIdentity::generate()
    }

    #[test]
    fn an_answer_verifies_only_for_its_nonce_admin_time_and_key() {
        let me = identity();
        let nonce = [7u8; 16];
        let resp = answer(
            "BR",
            &me,
            &PingRequest {
                nonce: nonce.to_vec(),
            },
            1_000,
        )
        .unwrap();
        let key = me.verifying_key();
        assert_eq!(verify(&resp, "BR", &key, &nonce), Ok(1_000));
        // Another nonce (a replayed answer), another time, another admin, another key.
        assert_eq!(
            verify(&resp, "BR", &key, &[8u8; 16]),
            Err(PingError::BadSignature("BR".into()))
        );
        let mut later = resp.clone();
        later.time_ms += 1;
        assert_eq!(
            verify(&later, "BR", &key, &nonce),
            Err(PingError::BadSignature("BR".into()))
        );
        assert!(matches!(
            verify(&resp, "NL", &key, &nonce),
            Err(PingError::WrongAdmin { .. })
        ));
        let mut renamed = resp.clone();
        renamed.admin = "NL".into();
        assert_eq!(
            verify(&renamed, "NL", &key, &nonce),
            Err(PingError::BadSignature("NL".into()))
        );
        assert_eq!(
            verify(&resp, "BR", &identity().verifying_key(), &nonce),
            Err(PingError::BadSignature("BR".into()))
        );
        let mut short = resp;
        short.signature.truncate(10);
        assert_eq!(
            verify(&short, "BR", &key, &nonce),
            Err(PingError::BadSignature("BR".into()))
        );
    }

    #[test]
    fn nonces_outside_16_to_64_bytes_are_refused() {
        let me = identity();
        for n in [0, 15, 65] {
            assert_eq!(
                answer("BR", &me, &PingRequest { nonce: vec![0; n] }, 0),
                Err(PingError::Nonce(n))
            );
        }
        assert!(answer("BR", &me, &PingRequest { nonce: vec![0; 64] }, 0).is_ok());
    }
}
