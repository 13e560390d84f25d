//! Witnessing partners' ledgers (DESIGN §6): fetch each partner's latest checkpoint, check that it
//! extends the last one seen (RFC 9162 consistency proof), and hand back a C2SP
//! `tlog-cosignature`. A checkpoint that is validly signed by the partner but inconsistent with
//! what it showed before (a fork, a rollback, a rewritten history) raises an alarm: an error log,
//! the `dccf_witness_alarms_total` metric, a `WITNESS_ALARM` ledger entry and a standing record
//! that `ledger status` shows. A partner under alarm is no longer cosigned.
//!
//! Side records: `w/seen/<ADMIN>` the last consistent checkpoint note seen (and cosigned);
//! `w/alarm/<ADMIN>` the alarm (a serialized `WitnessAlarm`).

use std::sync::Arc;

use prost::Message;

use crate::agreement::Party;
use crate::ledger::checkpoint::{self, NoteVerifier};
use crate::ledger::proof::{self, Hash};
use crate::ledger::{Store, entry};
use crate::proto::v1::{CheckpointRequest, CosignatureRequest, EntryKind, WitnessAlarm};
use crate::state::NodeState;

const SEEN: &[u8] = b"w/seen/";
const ALARM: &[u8] = b"w/alarm/";

/// Errors of one witnessing round with one partner (not alarms: these are retried).
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The partner could not be reached or refused the call.
    #[error("partner {admin}: {detail}")]
    Unreachable {
        /// The partner.
        admin: String,
        /// What failed.
        detail: String,
    },
    /// The partner's answer is malformed or not signed by its key.
    #[error("partner {admin}: bad checkpoint: {detail}")]
    BadCheckpoint {
        /// The partner.
        admin: String,
        /// What is wrong.
        detail: String,
    },
    /// Local storage failed.
    #[error("witness state: {0}")]
    Local(String),
}

/// What one round with one partner found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new checkpoint, consistent with the last one seen, was cosigned.
    Cosigned {
        /// Its size.
        size: u64,
    },
    /// The partner's checkpoint did not change.
    Unchanged {
        /// Its size.
        size: u64,
    },
    /// The checkpoint is inconsistent with the last one seen: alarm raised now.
    Alarm(String),
    /// An alarm is standing for this partner: not witnessed until an operator resolves it.
    UnderAlarm,
}

/// A checkpoint parsed from a verified note.
struct Seen {
    origin: String,
    size: u64,
    root: Hash,
    note: String,
}

fn key(prefix: &[u8], admin: &str) -> Vec<u8> {
    [prefix, admin.as_bytes()].concat()
}

fn local(e: impl std::fmt::Display) -> WitnessError {
    WitnessError::Local(e.to_string())
}

/// Verifies `note` as a checkpoint of `admin`'s log signed with its key.
fn verify_note(party: &Party, note: &str) -> Result<Seen, WitnessError> {
    let admin = &party.card.admin;
    let bad = |detail: String| WitnessError::BadCheckpoint {
        admin: admin.clone(),
        detail,
    };
    let origin = note.lines().next().unwrap_or_default().to_owned();
    if !origin.ends_with(&format!("/{admin}")) {
        return Err(bad(format!("origin {origin:?} does not end in /{admin}")));
    }
    let verifier =
        NoteVerifier::new(&origin, party.verifying_key).map_err(|e| bad(e.to_string()))?;
    let text = verifier.verify(note).map_err(|e| bad(e.to_string()))?;
    let (origin, size, root) =
        checkpoint::parse_checkpoint(text).map_err(|e| bad(e.to_string()))?;
    // Keep the log's own signature only; cosignature lines of others are not ours to vouch for.
    let note = verifier_note(note, text);
    Ok(Seen {
        origin,
        size,
        root,
        note,
    })
}

/// The text plus only the first signature line (the log's), as stored for evidence.
fn verifier_note(note: &str, text: &str) -> String {
    let sigs = &note[text.len() + 1..];
    format!("{text}\n{}\n", sigs.lines().next().unwrap_or_default())
}

/// The standing alarm for `admin`, if any.
pub fn alarm(store: &Store, admin: &str) -> Result<Option<WitnessAlarm>, WitnessError> {
    match store.get(&key(ALARM, admin)).map_err(local)? {
        Some(bytes) => WitnessAlarm::decode(bytes.as_slice())
            .map(Some)
            .map_err(local),
        None => Ok(None),
    }
}

/// Every standing alarm.
pub fn alarms(store: &Store) -> Result<Vec<WitnessAlarm>, WitnessError> {
    store
        .scan_prefix(ALARM)
        .map_err(local)?
        .into_iter()
        .map(|(_, v)| WitnessAlarm::decode(v.as_slice()).map_err(local))
        .collect()
}

/// Every partner witnessed so far with the size of the last consistent checkpoint seen.
pub fn witnessed(store: &Store) -> Result<Vec<(String, u64)>, WitnessError> {
    let mut out = Vec::new();
    for (k, v) in store.scan_prefix(SEEN).map_err(local)? {
        let admin = String::from_utf8_lossy(&k[SEEN.len()..]).into_owned();
        let text = String::from_utf8_lossy(&v).into_owned();
        let size = text
            .lines()
            .nth(1)
            .and_then(|l| l.parse().ok())
            .unwrap_or_default();
        out.push((admin, size));
    }
    Ok(out)
}

/// Records an alarm against `admin`: error log, metric, ledger entry and standing record.
async fn raise(state: &NodeState, admin: &str, detail: String) -> Result<Outcome, WitnessError> {
    raise_in(&state.store, admin, detail).await
}

/// [`raise`] on a bare store.
async fn raise_in(store: &Store, admin: &str, detail: String) -> Result<Outcome, WitnessError> {
    tracing::error!(partner = admin, %detail, "WITNESS ALARM: partner ledger is inconsistent");
    metrics::counter!("dccf_witness_alarms_total", "partner" => admin.to_owned()).increment(1);
    let now = crate::envelope::now_ms();
    let record = WitnessAlarm {
        partner: admin.to_owned(),
        at_ms: now,
        detail: detail.clone(),
    };
    let entry = entry::LedgerEntry {
        kind: EntryKind::WitnessAlarm as i32,
        recorded_at_ms: now,
        peer: admin.to_owned(),
        detail: detail.clone(),
        ..Default::default()
    };
    let ticket = {
        let mut txn = store.begin();
        entry::append(&mut txn, &entry);
        txn.put(key(ALARM, admin), record.encode_to_vec())
            .map_err(local)?;
        txn.commit()
    };
    ticket.durable().await.map_err(local)?;
    Ok(Outcome::Alarm(detail))
}

/// Resolves the standing alarm against `admin` after an operator investigated it: records
/// `WITNESS_ALARM_RESOLVED` with `reason` and the alarm, and forgets the last checkpoint seen, so
/// witnessing starts again from the partner's current checkpoint. Returns the resolved alarm.
pub async fn resolve_alarm(
    store: &Store,
    admin: &str,
    reason: &str,
) -> Result<WitnessAlarm, WitnessError> {
    let Some(standing) = alarm(store, admin)? else {
        return Err(WitnessError::Local(format!(
            "no witness alarm is standing for {admin}"
        )));
    };
    if reason.trim().is_empty() {
        return Err(WitnessError::Local(
            "give a reason: it is recorded in the ledger".into(),
        ));
    }
    let entry = entry::LedgerEntry {
        kind: EntryKind::WitnessAlarmResolved as i32,
        recorded_at_ms: crate::envelope::now_ms(),
        peer: admin.to_owned(),
        detail: format!("resolved: {reason}; alarm was: {}", standing.detail),
        ..Default::default()
    };
    let ticket = {
        let mut txn = store.begin();
        entry::append(&mut txn, &entry);
        txn.remove(key(ALARM, admin)).map_err(local)?;
        txn.remove(key(SEEN, admin)).map_err(local)?;
        txn.commit()
    };
    ticket.durable().await.map_err(local)?;
    tracing::warn!(
        partner = admin,
        reason,
        "witness alarm resolved by the operator"
    );
    Ok(standing)
}

/// One witnessing round with `party`.
pub async fn witness_partner(
    state: &Arc<NodeState>,
    party: &Party,
) -> Result<Outcome, WitnessError> {
    let admin = party.card.admin.clone();
    if alarm(&state.store, &admin)?.is_some() {
        return Ok(Outcome::UnderAlarm);
    }
    let seen = match state.store.get(&key(SEEN, &admin)).map_err(local)? {
        Some(bytes) => Some(verify_note(party, &String::from_utf8_lossy(&bytes))?),
        None => None,
    };
    let unreachable = |detail: String| WitnessError::Unreachable {
        admin: admin.clone(),
        detail,
    };
    let mut client = state
        .peers
        .client(party)
        .map_err(|e| unreachable(e.to_string()))?;
    let from_size = seen.as_ref().map_or(0, |s| s.size);
    let (response, without_proof) = match client
        .get_checkpoint(CheckpointRequest {
            from_size,
            fresh: false,
        })
        .await
    {
        Ok(r) => (r.into_inner(), false),
        // The partner refuses a proof from the size seen when its log is now smaller (a
        // rollback): fetch its checkpoint without one, so the rollback is detected below.
        Err(s) if s.code() == tonic::Code::FailedPrecondition && from_size > 0 => {
            let r = client
                .get_checkpoint(CheckpointRequest {
                    from_size: 0,
                    fresh: false,
                })
                .await
                .map_err(|s| unreachable(format!("GetCheckpoint: {}", s.message())))?;
            (r.into_inner(), true)
        }
        Err(s) => return Err(unreachable(format!("GetCheckpoint: {}", s.message()))),
    };
    let new = verify_note(party, &response.checkpoint)?;
    if without_proof && new.size >= from_size {
        // It grew in between: no proof to check; try again next round.
        return Err(unreachable(format!(
            "GetCheckpoint refused a proof from size {from_size}, then returned size {}",
            new.size
        )));
    }
    let proof: Vec<Hash> = response
        .consistency_proof
        .iter()
        .map(|h| proof::hash_from_slice(h))
        .collect::<Result<_, _>>()
        .map_err(|e| WitnessError::BadCheckpoint {
            admin: admin.clone(),
            detail: format!("consistency proof: {e}"),
        })?;
    if let Some(old) = &seen {
        if new.origin != old.origin {
            return Err(WitnessError::BadCheckpoint {
                admin,
                detail: format!("origin changed from {:?} to {:?}", old.origin, new.origin),
            });
        }
        let evidence = format!(
            "last consistent checkpoint:\n{}new checkpoint:\n{}",
            old.note, new.note
        );
        if new.size < old.size {
            let detail = format!(
                "rollback: size {} is smaller than the {} seen before; {evidence}",
                new.size, old.size
            );
            return raise(state, &admin, detail).await;
        }
        if let Err(e) = proof::verify_consistency(old.size, new.size, &proof, &old.root, &new.root)
        {
            let detail = format!(
                "fork: checkpoint of size {} is not consistent with size {} ({e}); {evidence}",
                new.size, old.size
            );
            return raise(state, &admin, detail).await;
        }
        if new.size == old.size {
            return Ok(Outcome::Unchanged { size: new.size });
        }
    }
    let text = &new.note[..new.note.find("\n\n").map_or(new.note.len(), |i| i + 1)];
    let time = u64::try_from(crate::envelope::now_ms() / 1000).unwrap_or_default();
    let line = state
        .checkpoints
        .cosigner()
        .cosign(text, time)
        .map_err(local)?;
    client
        .submit_cosignature(CosignatureRequest {
            checkpoint_text: text.to_owned(),
            cosignature: line,
        })
        .await
        .map_err(|s| unreachable(format!("SubmitCosignature: {}", s.message())))?;
    let ticket = {
        let mut txn = state.store.begin();
        txn.put(key(SEEN, &admin), new.note.clone().into_bytes())
            .map_err(local)?;
        txn.commit()
    };
    ticket.durable().await.map_err(local)?;
    Ok(Outcome::Cosigned { size: new.size })
}

/// One round over every partner of an agreement in force, partners in parallel (a stalled
/// partner costs at most the request timeout and delays no one else); failures are logged and
/// retried next round.
pub async fn round(state: &Arc<NodeState>) {
    let now = crate::envelope::now_ms();
    let set = state.agreements();
    let mut partners: Vec<Party> = Vec::new();
    for agreement in set.current(now) {
        if !agreement.parties.contains_key(state.admin()) {
            continue;
        }
        for (admin, party) in &agreement.parties {
            if admin != state.admin() && !partners.iter().any(|p| &p.card.admin == admin) {
                partners.push(party.clone());
            }
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for party in partners {
        let state = state.clone();
        tasks.spawn(async move {
            let outcome = witness_partner(&state, &party).await;
            (party.card.admin, outcome)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((admin, outcome)) = joined else {
            tracing::error!("a witnessing task failed");
            continue;
        };
        match outcome {
            Ok(Outcome::Cosigned { size }) => {
                tracing::debug!(partner = %admin, size, "partner checkpoint cosigned")
            }
            Ok(Outcome::Unchanged { .. }) | Ok(Outcome::Alarm(_)) => {}
            Ok(Outcome::UnderAlarm) => tracing::warn!(
                partner = %admin,
                "partner not witnessed: a witness alarm is standing (see `ledger status`)"
            ),
            Err(e) => tracing::warn!(error = %e, "witnessing failed; retrying next round"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(store: &Store) -> Vec<i32> {
        (0..store.durable_head().size)
            .map(|i| {
                entry::parse(&store.entry(i).unwrap().unwrap())
                    .unwrap()
                    .kind
            })
            .collect()
    }

    #[tokio::test]
    async fn an_alarm_stands_until_resolved_with_a_reason_and_both_are_ledgered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut txn = store.begin();
        txn.put(key(SEEN, "BR"), b"old checkpoint".to_vec())
            .unwrap();
        txn.commit().durable().await.unwrap();

        let err = resolve_alarm(&store, "BR", "checked").await.unwrap_err();
        assert!(err.to_string().contains("no witness alarm"), "{err}");

        raise_in(&store, "BR", "fork: evidence".into())
            .await
            .unwrap();
        assert_eq!(alarms(&store).unwrap()[0].detail, "fork: evidence");
        assert_eq!(alarm(&store, "BR").unwrap().unwrap().partner, "BR");
        let err = resolve_alarm(&store, "BR", "  ").await.unwrap_err();
        assert!(err.to_string().contains("give a reason"), "{err}");
        assert!(alarm(&store, "BR").unwrap().is_some());

        let resolved = resolve_alarm(&store, "BR", "restored from backup, confirmed by BR")
            .await
            .unwrap();
        assert_eq!(resolved.detail, "fork: evidence");
        assert!(alarms(&store).unwrap().is_empty());
        assert!(store.get(&key(SEEN, "BR")).unwrap().is_none());
        assert_eq!(
            kinds(&store),
            vec![
                EntryKind::WitnessAlarm as i32,
                EntryKind::WitnessAlarmResolved as i32
            ]
        );
        let last = entry::parse(&store.entry(1).unwrap().unwrap()).unwrap();
        assert!(
            last.detail.contains("restored from backup"),
            "{}",
            last.detail
        );
        assert!(last.detail.contains("fork: evidence"), "{}", last.detail);
    }
}
