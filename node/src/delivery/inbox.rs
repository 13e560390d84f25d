//! The durable inbox: accepted messages wait here until the back office acknowledges them.
//!
//! Payloads are encrypted at rest, each under its own random data key (ChaCha20-Poly1305, ring),
//! stored under a separate key record: deleting that record destroys the payload
//! (crypto-shredding) while the ledger, which never held the payload, stays intact.
//!
//! Records: `i/<u64 BE ledger index>` → `InboxMessage` whose `payload` is `nonce || ciphertext`,
//! and `k/<u64 BE ledger index>` → the 32-byte data key.

use prost::Message;
use ring::aead::{CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::ledger::{LedgerError, Store, Txn};
use crate::proto::v1::InboxMessage;

const INBOX: &[u8] = b"i/";
const KEYS: &[u8] = b"k/";

/// Inbox errors.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The store failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A record cannot be decoded or decrypted (its key was shredded or the data is corrupt).
    #[error("inbox record {index}: {detail}")]
    Corrupt {
        /// Ledger index of the record.
        index: u64,
        /// What is wrong.
        detail: String,
    },
    /// The random source failed.
    #[error("random source failed")]
    Random,
}

fn record_key(prefix: &[u8], index: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn aad(index: u64) -> [u8; 18] {
    let mut a = [0u8; 18];
    a[..10].copy_from_slice(b"dccf inbox");
    a[10..].copy_from_slice(&index.to_be_bytes());
    a
}

/// Stages `message` (plaintext payload) into the inbox within `txn`, encrypted at rest.
pub fn stage(txn: &mut Txn<'_>, message: &InboxMessage) -> Result<(), InboxError> {
    let rng = SystemRandom::new();
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    rng.fill(&mut key).map_err(|_| InboxError::Random)?;
    rng.fill(&mut nonce).map_err(|_| InboxError::Random)?;
    let sealing = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| InboxError::Random)?,
    );
    let mut sealed = message.payload.clone();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad(message.ledger_index)),
            &mut sealed,
        )
        .map_err(|_| InboxError::Random)?;
    let mut stored = message.clone();
    stored.payload = [nonce.as_slice(), &sealed].concat();
    txn.put(
        record_key(INBOX, message.ledger_index),
        stored.encode_to_vec(),
    )?;
    txn.put(record_key(KEYS, message.ledger_index), key.to_vec())?;
    Ok(())
}

/// Reads and decrypts up to `limit` inbox messages with ledger index greater than `after`.
pub fn list(
    store: &Store,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<InboxMessage>, InboxError> {
    let after_key = after.map(|i| record_key(INBOX, i));
    let rows = store.scan_prefix_limit(INBOX, after_key.as_deref(), limit)?;
    let mut out = Vec::with_capacity(rows.len());
    for (_, value) in rows {
        let mut msg = InboxMessage::decode(value.as_slice()).map_err(|e| InboxError::Corrupt {
            index: 0,
            detail: e.to_string(),
        })?;
        let index = msg.ledger_index;
        let corrupt = |detail: &str| InboxError::Corrupt {
            index,
            detail: detail.into(),
        };
        let key = store
            .get(&record_key(KEYS, index))?
            .ok_or_else(|| corrupt("data key missing (payload shredded)"))?;
        if msg.payload.len() < 12 {
            return Err(corrupt("ciphertext too short"));
        }
        let opening = LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &key).map_err(|_| corrupt("bad data key"))?,
        );
        let nonce = Nonce::try_assume_unique_for_key(&msg.payload[..12])
            .map_err(|_| corrupt("bad nonce"))?;
        let mut ct = msg.payload[12..].to_vec();
        let plain = opening
            .open_in_place(nonce, ring::aead::Aad::from(aad(index)), &mut ct)
            .map_err(|_| corrupt("payload does not decrypt"))?;
        msg.payload = plain.to_vec();
        out.push(msg);
    }
    Ok(out)
}

/// Acknowledges messages by id (`SENDER/ID` or bare `ID`); returns how many were removed.
/// `SENDER/ID` is found through the message's dedupe record (a point lookup); a bare id needs a
/// scan of the inbox, so back offices that ack at volume should name the sender.
pub async fn ack(store: &Store, ids: &[String]) -> Result<u32, InboxError> {
    use crate::proto::v1::ReceivedRecord;
    let mut remove: Vec<u64> = Vec::new();
    let mut bare: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for id in ids {
        match id.split_once('/') {
            Some((sender, message_id)) => {
                let key = super::inbound::received_key(sender, message_id);
                let Some(bytes) = store.get(&key)? else {
                    continue;
                };
                let Ok(record) = ReceivedRecord::decode(bytes.as_slice()) else {
                    continue;
                };
                let index = record.ledger_index;
                // Only if it is still in the inbox (not acknowledged or shredded before).
                if store.get(&record_key(INBOX, index))?.is_some() {
                    remove.push(index);
                }
            }
            None => {
                bare.insert(id.as_str());
            }
        }
    }
    if !bare.is_empty() {
        for (_, value) in store.scan_prefix(INBOX)? {
            let Ok(msg) = InboxMessage::decode(value.as_slice()) else {
                continue;
            };
            if bare.remove(msg.message_id.as_str()) {
                remove.push(msg.ledger_index);
            }
        }
    }
    remove.sort_unstable();
    remove.dedup();
    if remove.is_empty() {
        return Ok(0);
    }
    let count = u32::try_from(remove.len()).unwrap_or(u32::MAX);
    let ticket = {
        let mut txn = store.begin();
        for index in remove {
            txn.remove(record_key(INBOX, index))?;
            txn.remove(record_key(KEYS, index))?;
        }
        txn.commit()
    };
    ticket.durable().await?;
    Ok(count)
}

/// Every inbox record's metadata (payload still encrypted), in arrival order.
pub fn records(store: &Store) -> Result<Vec<InboxMessage>, InboxError> {
    store
        .scan_prefix(INBOX)?
        .into_iter()
        .map(|(_, v)| {
            InboxMessage::decode(v.as_slice()).map_err(|e| InboxError::Corrupt {
                index: 0,
                detail: e.to_string(),
            })
        })
        .collect()
}

/// Stages the destruction of the record at ledger index `index` and its data key.
pub fn stage_shred(txn: &mut Txn<'_>, index: u64) -> Result<(), InboxError> {
    txn.remove(record_key(KEYS, index))?;
    txn.remove(record_key(INBOX, index))?;
    Ok(())
}

/// Number of messages waiting in the inbox.
pub fn len(store: &Store) -> Result<usize, InboxError> {
    Ok(store.scan_prefix(INBOX)?.len())
}
