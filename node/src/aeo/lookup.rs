//! Lookups: the Gateway asks "is this partner's operator AEO right now?" and gets an answer from
//! the mirror (with its as-of time), online from the partner, or both with a warning when they
//! disagree; partners ask this node online (`Exchange.LookupAeo`). Answers carry the
//! publisher's signed statement. Unknown operators answer NOT_FOUND.

use std::time::Duration;

use prost::Message;

use super::statement::{self, Disclosure};
use super::{AeoError, journal};
use crate::proto::v1::{
    AeoAnswer, AeoAnswerSource, AeoBatchHeader, AeoBatchKind, AeoLookupMode, AeoLookupRequest,
    AeoSignedBatch, AeoStatement, AeoStatus, AeoStatusQuery, AeoStatusResponse, EntryKind,
    LookupAeoRequest, LookupAeoResponse, OperatorIdentifierKind,
};
use crate::state::NodeState;

/// Whether an identifier of this kind is looked up by TIN (EORI and national TINs) rather than
/// by AEO authorisation number.
fn by_tin(kind: i32) -> bool {
    matches!(
        OperatorIdentifierKind::try_from(kind).unwrap_or_default(),
        OperatorIdentifierKind::Tin | OperatorIdentifierKind::Eori
    )
}

/// Answers a Gateway lookup.
pub async fn lookup(
    state: &NodeState,
    request: LookupAeoRequest,
) -> Result<LookupAeoResponse, AeoError> {
    if request.partner.is_empty() || request.operator_id.is_empty() {
        return Err(AeoError::Invalid(
            "a lookup needs a partner and an operator id".into(),
        ));
    }
    if request.operator_id.len() > 64 {
        return Err(AeoError::Invalid(
            "operator id is longer than 64 characters".into(),
        ));
    }
    let mode = AeoLookupMode::try_from(request.mode).unwrap_or_default();
    let mut response = LookupAeoResponse {
        query_reference: request.query_reference.clone(),
        operator_id: request.operator_id.clone(),
        ..Default::default()
    };
    match mode {
        AeoLookupMode::Mirror => response.mirror = Some(from_mirror(state, &request).await?),
        AeoLookupMode::Online => response.online = Some(online_one(state, &request).await?),
        AeoLookupMode::Both => {
            let (mirror, online) =
                tokio::join!(from_mirror(state, &request), online_one(state, &request));
            match (mirror, online) {
                (Err(m), Err(o)) => {
                    return Err(AeoError::Partner(format!(
                        "no answer: mirror: {m}; online: {o}"
                    )));
                }
                (Ok(m), Err(o)) => {
                    response.warning = format!("online lookup failed, mirror answer only: {o}");
                    response.mirror = Some(m);
                }
                (Err(m), Ok(o)) => {
                    response.warning = format!("no mirror answer, online answer only: {m}");
                    response.online = Some(o);
                }
                (Ok(m), Ok(o)) => {
                    response.warning = mismatch(&m, &o).unwrap_or_default();
                    response.mirror = Some(m);
                    response.online = Some(o);
                }
            }
        }
    }
    Ok(response)
}

/// Says how the mirror and the online answer differ, if they do.
fn mismatch(mirror: &AeoAnswer, online: &AeoAnswer) -> Option<String> {
    let (m, o) = (mirror.record.as_ref()?, online.record.as_ref()?);
    let status = |s: i32| {
        AeoStatus::try_from(s)
            .unwrap_or_default()
            .as_str_name()
            .trim_start_matches("AEO_STATUS_")
            .to_owned()
    };
    let mut diffs = Vec::new();
    if m.status != o.status {
        diffs.push(format!(
            "status {} vs {}",
            status(m.status),
            status(o.status)
        ));
    }
    if m.programme != o.programme {
        diffs.push("programme".to_owned());
    }
    if (m.valid_from_ms, m.valid_until_ms) != (o.valid_from_ms, o.valid_until_ms) {
        diffs.push("validity dates".to_owned());
    }
    (!diffs.is_empty()).then(|| {
        format!(
            "mirror (as of {}, version {}) and partner (now, version {}) disagree: {}",
            crate::agreement::format_ms(mirror.as_of_ms),
            mirror.registry_version,
            online.registry_version,
            diffs.join(", ")
        )
    })
}

/// Answers from the local mirror of the partner's registry.
pub async fn from_mirror(
    state: &NodeState,
    request: &LookupAeoRequest,
) -> Result<AeoAnswer, AeoError> {
    let store = state.aeo.store.clone();
    let (partner, id, tin) = (
        request.partner.clone(),
        request.operator_id.clone(),
        by_tin(request.identifier_kind),
    );
    let (meta, hit) = super::blocking(move || {
        let meta = store.mirror_meta(&partner)?;
        let hit = store.mirror_lookup(&partner, &id, tin)?;
        Ok((meta, hit))
    })
    .await?;
    let Some(meta) = meta else {
        return Err(AeoError::NotAllowed(format!(
            "no mirror of {}'s AEO registry (no MRA agreement in force with an answer flow {} -> {}, or no snapshot received yet)",
            request.partner,
            request.partner,
            state.admin()
        )));
    };
    state.aeo.feed_status(&request.partner, |f| f.lookups += 1);
    state
        .aeo
        .count_mirror_lookup(&request.partner, hit.is_some());
    metrics::counter!("dccf_aeo_mirror_lookups_total", "partner" => request.partner.clone())
        .increment(1);
    let Some(hit) = hit else {
        return Ok(AeoAnswer {
            source: AeoAnswerSource::Mirror as i32,
            record: Some(statement::not_found(
                &request.operator_id,
                request.identifier_kind,
                meta.as_of_ms,
            )),
            statement: None,
            as_of_ms: meta.as_of_ms,
            registry_version: meta.version,
        });
    };
    let mut record = AeoStatusResponse::decode(hit.record.record.as_slice())
        .map_err(|e| AeoError::Internal(format!("stored mirror record: {e}")))?;
    record.query_reference = request.query_reference.clone();
    Ok(AeoAnswer {
        source: AeoAnswerSource::Mirror as i32,
        record: Some(record),
        statement: Some(AeoStatement {
            header: hit.batch.header.clone(),
            signature: hit.batch.signature.clone(),
            record: hit.record.record,
            leaf_index: hit.record.leaf_index,
            path: hit.record.path.chunks(32).map(<[u8]>::to_vec).collect(),
        }),
        as_of_ms: hit.meta.as_of_ms,
        registry_version: hit.meta.version,
    })
}

/// One online lookup at the partner.
async fn online_one(state: &NodeState, request: &LookupAeoRequest) -> Result<AeoAnswer, AeoError> {
    let query = AeoStatusQuery {
        query_reference: request.query_reference.clone(),
        operator_identifier: request.operator_id.clone(),
        identifier_kind: request.identifier_kind,
        issuing_country: request.partner.chars().take(2).collect(),
        purpose: request.purpose.clone(),
        created_at_ms: crate::envelope::now_ms(),
    };
    let mut answers = online(state, &request.partner, vec![query]).await?;
    answers
        .pop()
        .ok_or_else(|| AeoError::Partner("the partner answered no query".into()))
}

/// Asks `partner` online; verifies its signed answer batch (signature, parties, that it answers
/// exactly this request, disclosure) and records it on the ledger before returning one answer
/// per query.
pub async fn online(
    state: &NodeState,
    partner: &str,
    queries: Vec<AeoStatusQuery>,
) -> Result<Vec<AeoAnswer>, AeoError> {
    let me = state.admin().to_owned();
    let now = crate::envelope::now_ms();
    let set = state.agreements();
    let agreement = super::mirror_agreement(&set, &me, partner, now)
        .filter(|a| statement::query_flow(a, &me, partner).is_some())
        .ok_or_else(|| {
            AeoError::NotAllowed(format!(
                "no agreement in force lets {me} ask {partner} for AEO status ({} flow {me} -> {partner} and {} flow {partner} -> {me})",
                statement::QUERY_FLOW,
                statement::ANSWER_FLOW
            ))
        })?;
    let (Some(flow), Some(query_flow)) = (
        statement::answer_flow(&agreement, partner, &me),
        statement::query_flow(&agreement, &me, partner),
    ) else {
        return Err(AeoError::Internal("AEO flows vanished".into()));
    };
    let disclosure = Disclosure::of_flow(flow);
    // Each query counts against the agreement's query-flow rate, on our side too.
    state
        .rates
        .admit_n(
            &agreement,
            query_flow,
            crate::policy::Side::Sending,
            queries.len(),
        )
        .map_err(|v| AeoError::RateExceeded(v.message))?;
    let party = agreement
        .party(partner)
        .cloned()
        .ok_or_else(|| AeoError::Internal("partner vanished".into()))?;
    let request = AeoLookupRequest {
        agreement_id: agreement.id().to_owned(),
        queries,
    };
    let request_digest = ring::digest::digest(&ring::digest::SHA256, &request.encode_to_vec());
    let mut client = state
        .peers
        .client(&party)
        .map_err(|e| AeoError::Partner(e.to_string()))?;
    let timeout = Duration::from_secs(state.config.limits.request_timeout_secs);
    let batch = tokio::time::timeout(timeout, client.lookup_aeo(request.clone()))
        .await
        .map_err(|_| AeoError::Partner(format!("{partner} did not answer within {timeout:?}")))?
        .map_err(|s| AeoError::Partner(format!("{partner} refused the lookup: {}", s.message())))?
        .into_inner();
    let (header, paths) = statement::verify_batch(&batch, &party.verifying_key)
        .map_err(|e| AeoError::Partner(format!("{partner}'s answer: {e}")))?;
    let expected = (
        AeoBatchKind::Answer as i32,
        partner,
        me.as_str(),
        request_digest.as_ref(),
        request.queries.len(),
    );
    let got = (
        header.kind,
        header.publisher.as_str(),
        header.recipient.as_str(),
        header.request_digest.as_slice(),
        batch.leaves.len(),
    );
    if got != expected {
        return Err(AeoError::Partner(format!(
            "{partner}'s answer does not answer this lookup (kind, parties, request digest or count differ)"
        )));
    }
    let mut answers = Vec::with_capacity(batch.leaves.len());
    for (i, (leaf, query)) in batch.leaves.iter().zip(&request.queries).enumerate() {
        let record = AeoStatusResponse::decode(leaf.as_slice())
            .map_err(|e| AeoError::Partner(format!("{partner}'s answer {i}: {e}")))?;
        disclosure
            .permits(&record)
            .map_err(|e| AeoError::Partner(format!("{partner}'s answer {i}: {e}")))?;
        if record.operator_identifier != query.operator_identifier {
            return Err(AeoError::Partner(format!(
                "{partner}'s answer {i} is about another operator"
            )));
        }
        answers.push(AeoAnswer {
            source: AeoAnswerSource::Online as i32,
            statement: statement::statement(&batch, i, &paths[i]),
            record: Some(record),
            as_of_ms: header.created_at_ms,
            registry_version: header.version_to,
        });
    }
    let mut entry = super::feed::ledger_entry(
        EntryKind::AeoLookupMade,
        partner,
        &batch,
        format!("{} operators looked up online", answers.len()),
    );
    set_found(
        &mut entry,
        answers
            .iter()
            .filter(|a| a.record.as_ref().is_some_and(found))
            .count(),
    );
    journal::record(state, &entry).await?;
    Ok(answers)
}

/// Answers a partner's online lookup: checks the agreement lets `partner` ask, answers every
/// query from the registry (NOT_FOUND for unknown identifiers) as disclosed to `partner`, signs
/// one ANSWER batch and records it on the ledger before returning it.
pub async fn answer(
    state: &NodeState,
    partner: &str,
    request: AeoLookupRequest,
) -> Result<AeoSignedBatch, AeoError> {
    let me = state.admin().to_owned();
    let now = crate::envelope::now_ms();
    let set = state.agreements();
    let agreement = set
        .active(&request.agreement_id, now)
        .map_err(|e| AeoError::NotAllowed(e.to_string()))?
        .clone();
    let (Some(flow), Some(query_flow)) = (
        statement::answer_flow(&agreement, &me, partner),
        statement::query_flow(&agreement, partner, &me),
    ) else {
        return Err(AeoError::NotAllowed(format!(
            "agreement {} does not let {partner} ask {me} for AEO status",
            request.agreement_id
        )));
    };
    let max = state.config.aeo.max_lookup_batch;
    if request.queries.is_empty() || request.queries.len() > max {
        return Err(AeoError::Invalid(format!(
            "a lookup carries 1 to {max} queries, this one {}",
            request.queries.len()
        )));
    }
    if let Some(q) = request
        .queries
        .iter()
        .find(|q| q.operator_identifier.is_empty() || q.operator_identifier.len() > 64)
    {
        return Err(AeoError::Invalid(format!(
            "query {:?}: the operator identifier must be 1 to 64 characters",
            q.query_reference
        )));
    }
    state
        .rates
        .admit_n(
            &agreement,
            query_flow,
            crate::policy::Side::Receiving,
            request.queries.len(),
        )
        .map_err(|v| AeoError::RateExceeded(v.message))?;
    let disclosure = Disclosure::of_flow(flow);
    let request_digest = ring::digest::digest(&ring::digest::SHA256, &request.encode_to_vec());
    let header = AeoBatchHeader {
        publisher: me.clone(),
        recipient: partner.to_owned(),
        agreement_id: agreement.id().to_owned(),
        agreement_digest: agreement.digest.to_vec(),
        kind: AeoBatchKind::Answer as i32,
        created_at_ms: now,
        request_digest: request_digest.as_ref().to_vec(),
        ..Default::default()
    };
    let store = state.aeo.store.clone();
    let key = state.identity.signing.signing_key().clone();
    let batch = super::blocking(move || {
        let info = store.registry_info()?;
        let mut leaves = Vec::with_capacity(request.queries.len());
        for q in &request.queries {
            let found = if by_tin(q.identifier_kind) {
                store.registry_get_by_tin(&q.operator_identifier)?
            } else {
                store.registry_get(&q.operator_identifier)?
            };
            let mut answer = match found {
                Some(record) => {
                    let mut a = disclosure.disclose(&record, now);
                    a.operator_identifier = q.operator_identifier.clone();
                    a.identifier_kind = q.identifier_kind;
                    a
                }
                None => statement::not_found(&q.operator_identifier, q.identifier_kind, now),
            };
            answer.query_reference = q.query_reference.clone();
            leaves.push(answer.encode_to_vec());
        }
        let mut header = header;
        header.registry_id = info.registry_id;
        header.version_to = info.version;
        Ok(statement::sign(header, leaves, &key))
    })
    .await?;
    let mut entry = super::feed::ledger_entry(
        EntryKind::AeoLookupAnswered,
        partner,
        &batch,
        format!("{} operators looked up", batch.leaves.len()),
    );
    let hits = batch
        .leaves
        .iter()
        .filter(|l| AeoStatusResponse::decode(l.as_slice()).is_ok_and(|r| found(&r)))
        .count();
    set_found(&mut entry, hits);
    journal::record(state, &entry).await?;
    Ok(batch)
}

/// Whether an answer found an operator (anything but NOT_FOUND).
fn found(record: &AeoStatusResponse) -> bool {
    record.status != crate::proto::v1::AeoStatus::NotFound as i32
}

/// Records in a lookup's ledger entry how many queries found an operator (for the report).
fn set_found(entry: &mut crate::proto::v1::LedgerEntry, found: usize) {
    if let Some(aeo) = entry.aeo.as_mut() {
        aeo.found_count = found as u64;
    }
}

/// The mirrors this node keeps (or should keep, per the agreements) and the own registry.
pub async fn list_mirrors(
    state: &NodeState,
) -> Result<crate::proto::v1::ListAeoMirrorsResponse, AeoError> {
    let store = state.aeo.store.clone();
    let (info, metas) =
        super::blocking(move || Ok((store.registry_info()?, store.mirrors()?))).await?;
    let wanted = super::mirrored_partners(
        &state.agreements(),
        state.admin(),
        crate::envelope::now_ms(),
    );
    let mut partners: Vec<(String, String)> = wanted;
    for m in &metas {
        if !partners.iter().any(|(p, _)| *p == m.partner) {
            partners.push((m.partner.clone(), m.agreement_id.clone()));
        }
    }
    partners.sort();
    let mirrors = partners
        .into_iter()
        .map(|(partner, agreement_id)| {
            let meta = metas.iter().find(|m| m.partner == partner);
            let feed = state.aeo.feed(&partner);
            crate::proto::v1::AeoMirrorInfo {
                agreement_id: meta.map_or(agreement_id, |m| m.agreement_id.clone()),
                registry_id: meta.map(|m| m.registry_id.clone()).unwrap_or_default(),
                version: meta.map_or(0, |m| m.version),
                records: meta.map_or(0, |m| m.records),
                as_of_ms: meta.map_or(0, |m| m.as_of_ms),
                connected: feed.connected,
                last_error: feed.last_error,
                snapshots: feed.snapshots,
                deltas: feed.deltas,
                lookups: feed.lookups,
                partner,
            }
        })
        .collect();
    Ok(crate::proto::v1::ListAeoMirrorsResponse {
        mirrors,
        registry_id: info.registry_id,
        registry_version: info.version,
        registry_records: info.records,
    })
}
