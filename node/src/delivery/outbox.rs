//! The durable outbox and dead-letter queue: what this node accepted from its back office and has
//! not yet delivered.
//!
//! Records: `ob/<partner> 0x00 <u64 BE sequence>` → [`OutboxRecord`] while queued, and
//! `od/<partner> 0x00 <u64 BE sequence>` once given up (dead letter). The sequence is the ledger
//! index of the message's `ENVELOPE_SENT` entry, so a partner's queue is in submission order and
//! the envelope itself is stored once, in the message's `SentRecord` (`s/<message id>`).

use prost::Message;

use crate::ledger::{LedgerError, Store, Txn};
use crate::proto::v1::{DeliveryState, OutboxItem, OutboxPartner, OutboxRecord, SentRecord};

const QUEUED: &[u8] = b"ob/";
const DEAD: &[u8] = b"od/";

/// Outbox errors.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The store failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A stored record cannot be decoded.
    #[error("outbox record {key}: {detail}")]
    Corrupt {
        /// The record's key (printable form).
        key: String,
        /// What is wrong.
        detail: String,
    },
}

/// Which queue a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Waiting for delivery.
    Queued,
    /// Given up.
    Dead,
}

impl Queue {
    fn prefix(self) -> &'static [u8] {
        match self {
            Queue::Queued => QUEUED,
            Queue::Dead => DEAD,
        }
    }
}

/// Key of `partner`'s record with sequence `seq` in `queue`.
pub fn key(queue: Queue, partner: &str, seq: u64) -> Vec<u8> {
    let mut k = partner_prefix(queue, partner);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn partner_prefix(queue: Queue, partner: &str) -> Vec<u8> {
    let mut k = queue.prefix().to_vec();
    k.extend_from_slice(partner.as_bytes());
    k.push(0);
    k
}

/// Splits a key of `queue` into (partner, sequence).
fn parse_key(queue: Queue, key: &[u8]) -> Option<(String, u64)> {
    let rest = key.strip_prefix(queue.prefix())?;
    let zero = rest.iter().position(|b| *b == 0)?;
    let partner = std::str::from_utf8(&rest[..zero]).ok()?.to_owned();
    let seq = u64::from_be_bytes(rest[zero + 1..].try_into().ok()?);
    Some((partner, seq))
}

fn decode(key: &[u8], value: &[u8]) -> Result<OutboxRecord, OutboxError> {
    OutboxRecord::decode(value).map_err(|e| OutboxError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

/// Stages `record` as `partner`'s message with sequence `seq` in `queue`.
pub fn stage_put(
    txn: &mut Txn<'_>,
    queue: Queue,
    seq: u64,
    record: &OutboxRecord,
) -> Result<(), OutboxError> {
    txn.put(key(queue, &record.partner, seq), record.encode_to_vec())?;
    Ok(())
}

/// Stages the removal of `partner`'s record `seq` from `queue`.
pub fn stage_remove(
    txn: &mut Txn<'_>,
    queue: Queue,
    partner: &str,
    seq: u64,
) -> Result<(), OutboxError> {
    txn.remove(key(queue, partner, seq))?;
    Ok(())
}

/// Up to `limit` of `partner`'s records in `queue` with sequence after `after`, in order.
pub fn page(
    store: &Store,
    queue: Queue,
    partner: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, OutboxRecord)>, OutboxError> {
    let prefix = partner_prefix(queue, partner);
    let after_key = after.map(|s| key(queue, partner, s));
    store
        .scan_prefix_limit(&prefix, after_key.as_deref(), limit)?
        .into_iter()
        .map(|(k, v)| {
            let (_, seq) = parse_key(queue, &k).ok_or_else(|| OutboxError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                detail: "bad key".into(),
            })?;
            Ok((seq, decode(&k, &v)?))
        })
        .collect()
}

/// The record of `partner`'s message `seq` in `queue`, if there.
pub fn get(
    store: &Store,
    queue: Queue,
    partner: &str,
    seq: u64,
) -> Result<Option<OutboxRecord>, OutboxError> {
    let k = key(queue, partner, seq);
    store.get(&k)?.map(|v| decode(&k, &v)).transpose()
}

/// Number of records per partner in `queue` (read once at start; the courier counts after).
pub fn counts(
    store: &Store,
    queue: Queue,
) -> Result<std::collections::BTreeMap<String, u64>, OutboxError> {
    let mut out = std::collections::BTreeMap::new();
    for (k, _) in store.scan_prefix(queue.prefix())? {
        if let Some((partner, _)) = parse_key(queue, &k) {
            *out.entry(partner).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// Where a sent message is: its `SentRecord` and, while undelivered, its queue and record.
#[derive(Debug, Clone)]
pub struct Located {
    /// The message's sent record.
    pub sent: SentRecord,
    /// Its outbox or dead-letter record, with the queue.
    pub queued: Option<(Queue, OutboxRecord)>,
}

/// Finds `message_id`'s sent record and outbox position.
pub fn locate(store: &Store, message_id: &str) -> Result<Option<Located>, OutboxError> {
    let k = super::outbound::sent_key(message_id);
    let Some(bytes) = store.get(&k)? else {
        return Ok(None);
    };
    let sent = SentRecord::decode(bytes.as_slice()).map_err(|e| OutboxError::Corrupt {
        key: String::from_utf8_lossy(&k).into_owned(),
        detail: e.to_string(),
    })?;
    let seq = sent.sent_ledger_index;
    let mut queued = None;
    for queue in [Queue::Queued, Queue::Dead] {
        if let Some(r) = get(store, queue, &sent.recipient, seq)? {
            queued = Some((queue, r));
            break;
        }
    }
    Ok(Some(Located { sent, queued }))
}

/// The Gateway's view of a record.
pub fn item(seq: u64, record: &OutboxRecord) -> OutboxItem {
    OutboxItem {
        message_id: record.message_id.clone(),
        partner: record.partner.clone(),
        agreement_id: record.agreement_id.clone(),
        message_type: record.message_type.clone(),
        state: record.state,
        attempts: record.attempts,
        enqueued_at_ms: record.enqueued_at_ms,
        next_attempt_at_ms: record.next_attempt_at_ms,
        last_error: record.last_error.clone(),
        sent_ledger_index: seq,
    }
}

/// How many messages each partner has waiting and dead-lettered, for every partner with any,
/// by partner id.
pub fn totals(store: &Store) -> Result<Vec<OutboxPartner>, OutboxError> {
    let queued = counts(store, Queue::Queued)?;
    let dead = counts(store, Queue::Dead)?;
    let partners: std::collections::BTreeSet<&String> = queued.keys().chain(dead.keys()).collect();
    Ok(partners
        .into_iter()
        .map(|p| OutboxPartner {
            partner: p.clone(),
            queued: queued.get(p).copied().unwrap_or(0),
            dead_letter: dead.get(p).copied().unwrap_or(0),
        })
        .collect())
}

/// A record in the dead-letter state, with why.
pub fn dead(mut record: OutboxRecord, why: &str) -> OutboxRecord {
    record.state = DeliveryState::DeadLetter as i32;
    record.last_error = why.chars().take(1024).collect();
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_partner_then_sequence_and_parse_back() {
        let a = key(Queue::Queued, "BR", 2);
        let b = key(Queue::Queued, "BR", 10);
        let c = key(Queue::Queued, "BR-X", 1);
        assert!(a < b && b < c);
        assert_eq!(parse_key(Queue::Queued, &b), Some(("BR".into(), 10)));
        assert_eq!(
            parse_key(Queue::Dead, &key(Queue::Dead, "DE", 7)),
            Some(("DE".into(), 7))
        );
        // A queued key is never read as a dead-letter key and the other way round.
        assert_eq!(parse_key(Queue::Dead, &a), None);
    }
}
