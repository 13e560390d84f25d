//! Moves AEO ledger entries from the AEO database's journal into the ledger.
//!
//! A change to the registry or a mirror and its ledger entry are written in one redb
//! transaction (the entry into `journal`); [`flush`] then appends journal entries to the ledger
//! together with the side record `aeo/journaled` (the last journal number on the ledger) in one
//! ledger unit, waits until that is durable, and forgets the entries in redb. A crash at any
//! point leaves either the entry in the journal (flushed again at the next start) or on the
//! ledger and marked, never both or neither.

use crate::ledger::entry;
use crate::proto::v1::LedgerEntry;
use crate::state::NodeState;

use super::AeoError;

/// Side record in the ledger store: the last journal number appended to the ledger.
const JOURNALED: &[u8] = b"aeo/journaled";

/// Appends every pending journal entry to the ledger and waits until it is durable. Returns
/// (journal number, ledger index) of each entry appended by this call.
pub async fn flush(state: &NodeState) -> Result<Vec<(u64, u64)>, AeoError> {
    let aeo = &state.aeo;
    let _one_at_a_time = aeo.journal_lock.lock().await;
    let store = aeo.store.clone();
    let pending = super::blocking(move || Ok(store.journal()?)).await?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let done = journaled(state)?;
    let fresh: Vec<&(u64, LedgerEntry)> = pending.iter().filter(|(seq, _)| *seq > done).collect();
    let last = pending.last().map_or(0, |(seq, _)| *seq);
    let mut appended = Vec::new();
    if let Some((newest, _)) = fresh.last() {
        let ticket = {
            let mut txn = state.store.begin();
            for (seq, e) in &fresh {
                appended.push((*seq, entry::append(&mut txn, e)));
            }
            txn.put(JOURNALED.to_vec(), newest.to_be_bytes().to_vec())?;
            txn.commit()
        };
        ticket.durable().await?;
    }
    let store = aeo.store.clone();
    super::blocking(move || Ok(store.journal_forget(last)?)).await?;
    Ok(appended)
}

/// The last journal number on the ledger (0: none).
fn journaled(state: &NodeState) -> Result<u64, AeoError> {
    Ok(state
        .store
        .get(JOURNALED)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// Appends one entry straight to the ledger (no AEO database change goes with it) and waits
/// until it is durable; returns its index.
pub async fn record(state: &NodeState, e: &LedgerEntry) -> Result<u64, AeoError> {
    let (index, ticket) = {
        let mut txn = state.store.begin();
        let index = entry::append(&mut txn, e);
        (index, txn.commit())
    };
    ticket.durable().await?;
    Ok(index)
}
