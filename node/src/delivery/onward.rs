//! Onward transfer: data received on a flow whose agreement forbids passing it on must not leave
//! this node again for a third administration. On acceptance the node records a salted digest of
//! the payload; on send it refuses a payload whose digest it recorded, unless it goes back to its
//! original sender.
//!
//! The check recognises the payload byte for byte: a back office that re-encodes or edits the data
//! is not caught here (that needs field-level provenance, a later step).

use crate::ledger::{LedgerError, Store, Txn};
use crate::proto::v1::RejectReason;

use super::Refusal;

const PREFIX: &[u8] = b"o/";
const SALT_KEY: &[u8] = b"o/salt";

/// The node-local salt of payload digests, created on first use. Salting keeps the digests from
/// confirming guesses of low-entropy payloads to someone who reads the database.
pub fn salt(store: &Store) -> Result<Vec<u8>, LedgerError> {
    if let Some(salt) = store.get(SALT_KEY)? {
        return Ok(salt);
    }
    let mut salt = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).map_err(|_| {
        LedgerError::Corrupt {
            what: "random source failed while creating the onward-transfer salt".into(),
        }
    })?;
    let mut txn = store.begin();
    txn.put(SALT_KEY.to_vec(), salt.clone())?;
    txn.commit().wait_blocking()?;
    Ok(salt)
}

fn key(salt: &[u8], payload: &[u8]) -> Vec<u8> {
    let digest = crate::envelope::sha256_parts(&[salt, payload]);
    [PREFIX, b"p/", digest.as_slice()].concat()
}

/// Stages the record that `payload`, received from `sender` under `agreement_id`, may not be
/// passed on.
pub fn stage_received(
    txn: &mut Txn<'_>,
    salt: &[u8],
    payload: &[u8],
    sender: &str,
    agreement_id: &str,
) -> Result<(), LedgerError> {
    let origin = format!("{sender}\n{agreement_id}");
    txn.put(key(salt, payload), origin.into_bytes())
}

/// Refuses to send `payload` to `recipient` if it was received under a flow that forbids onward
/// transfer from another administration.
pub fn check_send(
    store: &Store,
    salt: &[u8],
    payload: &[u8],
    recipient: &str,
) -> Result<(), Refusal> {
    let origin = store
        .get(&key(salt, payload))
        .map_err(|e| Refusal::retry_later(format!("internal error: {e}")))?;
    let Some(origin) = origin else { return Ok(()) };
    let origin = String::from_utf8_lossy(&origin).into_owned();
    let (sender, agreement_id) = origin.split_once('\n').unwrap_or((origin.as_str(), ""));
    if sender == recipient {
        return Ok(());
    }
    Err(Refusal::new(
        RejectReason::OnwardTransferForbidden,
        format!(
            "this payload was received from {sender} under agreement {agreement_id}, whose flow forbids onward transfer; it may not be sent to {recipient}"
        ),
    ))
}
