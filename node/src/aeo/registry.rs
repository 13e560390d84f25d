//! Changes to the own AEO registry (import, single-operator update): validated, committed with
//! their ledger entry, then pushed to partner feeds at once.

use crate::proto::v1::{
    AeoLedgerRecord, AeoRegistryRecord, AeoStatus, EntryKind, ImportAeoResponse, LedgerEntry,
};
use crate::state::NodeState;

use super::import::{self, Format};
use super::store::WriteOutcome;
use super::{AeoError, journal};

/// Parses, validates and imports a registry file atomically; a bad file changes nothing.
pub async fn import_file(
    state: &NodeState,
    format: Format,
    bytes: Vec<u8>,
) -> Result<ImportAeoResponse, AeoError> {
    let records = super::blocking(move || Ok(import::parse(format, &bytes)?)).await?;
    let what = format!("import of a {} file", format.name());
    write(state, records, what).await
}

/// Changes one operator: a full record, or (`status_only`) the status of an existing one.
pub async fn update(
    state: &NodeState,
    mut record: AeoRegistryRecord,
    status_only: bool,
) -> Result<ImportAeoResponse, AeoError> {
    if record.last_change_ms == 0 {
        record.last_change_ms = crate::envelope::now_ms();
    }
    if status_only {
        let status = AeoStatus::try_from(record.status).unwrap_or_default();
        if !matches!(
            status,
            AeoStatus::Valid | AeoStatus::Suspended | AeoStatus::Revoked
        ) {
            return Err(AeoError::Invalid(
                "status must be valid, suspended or revoked".into(),
            ));
        }
        let store = state.aeo.store.clone();
        let id = record.operator_id.clone();
        let existing = super::blocking(move || Ok(store.registry_get(&id)?)).await?;
        let Some(mut existing) = existing else {
            return Err(super::store::StoreError::UnknownOperator(record.operator_id).into());
        };
        existing.status = record.status;
        existing.last_change_ms = record.last_change_ms;
        record = existing;
    }
    import::validate(&record)
        .map_err(|e| AeoError::Invalid(format!("operator {}: {e}", record.operator_id)))?;
    // The ledger names no operator: the digest identifies the record for an auditor.
    let what = "update of one operator".to_owned();
    write(state, vec![record], what).await
}

/// Commits `records` with their ledger entry, flushes it to the ledger and wakes the feeds.
async fn write(
    state: &NodeState,
    records: Vec<AeoRegistryRecord>,
    what: String,
) -> Result<ImportAeoResponse, AeoError> {
    let store = state.aeo.store.clone();
    let outcome: WriteOutcome = super::blocking(move || {
        Ok(store.registry_write(&records, |o| LedgerEntry {
            kind: EntryKind::AeoRegistryChanged as i32,
            recorded_at_ms: crate::envelope::now_ms(),
            detail: format!(
                "{what}: {} of {} records changed (versions {}..{})",
                o.changed, o.records, o.version_from, o.version_to
            ),
            aeo: Some(AeoLedgerRecord {
                version_from: o.version_from,
                version_to: o.version_to,
                record_count: o.changed,
                digest: o.digest.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        })?)
    })
    .await?;
    let appended = journal::flush(state).await?;
    if outcome.changed > 0 {
        state.aeo.version.send_replace(outcome.version_to);
    }
    Ok(ImportAeoResponse {
        records: outcome.records,
        changed: outcome.changed,
        version: outcome.version_to,
        ledger_index: appended.last().map_or(0, |(_, index)| *index),
    })
}
