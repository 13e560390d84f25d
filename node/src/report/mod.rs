//! The effectiveness report (`dccf-node report`): what an exchange programme delivers, per
//! agreement and flow — message volumes, refusals by reason, delivery latency, pre-arrival lead
//! time — and AEO lookups with hit rates, as a table, CSV or an SVG chart.
//!
//! Everything comes from the ledger (headers, receipts, decisions) plus two kinds of side
//! records the node keeps for it, never payload contents:
//! - `rp/lead/<ledger index>`: for a received pre-arrival declaration, only its lead time
//!   (declared arrival minus time received, ms), written with the acceptance;
//! - `rp/aeo/<partner>/<day>`: mirror lookups and hits per partner and UTC day (mirror lookups
//!   are answered locally and not ledgered one by one).

mod chart;

pub use chart::svg;

use std::collections::BTreeMap;

use prost::Message;

use crate::ledger::{LedgerError, Store, Txn};
use crate::proto::v1::{
    AeoLookupReport, EffectivenessReport, EntryKind, EnvelopeHeader, FlowReport, LedgerEntry,
    Percentiles, ReceiptBody, RejectReason,
};

const LEAD_PREFIX: &[u8] = b"rp/lead/";
const AEO_PREFIX: &[u8] = b"rp/aeo/";
const DAY_MS: i64 = 86_400_000;

/// Errors computing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A date could not be read.
    #[error("{what} {value:?}: expected YYYY-MM-DD or an RFC 3339 date-time")]
    Date {
        /// Which option.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// The period is empty.
    #[error("--until ({until}) must be after --since ({since})")]
    Period {
        /// Start.
        since: String,
        /// End.
        until: String,
    },
    /// The SVG chart could not be drawn.
    #[error("SVG chart: {0}")]
    Chart(String),
}

/// Reads `YYYY-MM-DD` (midnight UTC) or an RFC 3339 date-time as Unix milliseconds.
pub fn parse_date(what: &'static str, value: &str) -> Result<i64, ReportError> {
    let bad = || ReportError::Date {
        what,
        value: value.to_owned(),
    };
    let dt = if value.len() == 10 {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        time::Date::parse(value, &format)
            .map_err(|_| bad())?
            .midnight()
            .assume_utc()
    } else {
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            .map_err(|_| bad())?
    };
    i64::try_from(dt.unix_timestamp_nanos() / 1_000_000).map_err(|_| bad())
}

/// Stages the lead time of a received pre-arrival declaration (declared arrival minus
/// `received_at_ms`) under its ledger index; other messages, and declarations without an
/// arrival time, leave nothing. Only the number is kept.
pub fn stage_lead_time(
    txn: &mut Txn<'_>,
    index: u64,
    message_type: &str,
    payload: &[u8],
    received_at_ms: i64,
) {
    if message_type != "dccf.v1.PreArrivalDeclaration" {
        return;
    }
    let Ok(decl) = crate::proto::v1::PreArrivalDeclaration::decode(payload) else {
        return;
    };
    if decl.eta_ms <= 0 {
        return;
    }
    let lead = decl.eta_ms - received_at_ms;
    if let Err(e) = txn.put(lead_key(index), lead.to_be_bytes().to_vec()) {
        tracing::warn!(error = %e, "lead time not recorded");
    }
}

fn lead_key(index: u64) -> Vec<u8> {
    [LEAD_PREFIX, &index.to_be_bytes()].concat()
}

fn aeo_key(partner: &str, day: i64) -> Vec<u8> {
    [AEO_PREFIX, partner.as_bytes(), b"/", &day.to_be_bytes()].concat()
}

/// Adds the mirror lookups counted since the last call to today's side record of each partner.
pub async fn persist_mirror_counts(state: &crate::state::NodeState) -> Result<(), LedgerError> {
    let counts = state.aeo.take_mirror_counts();
    if counts.is_empty() {
        return Ok(());
    }
    let day = crate::envelope::now_ms().div_euclid(DAY_MS);
    let ticket = {
        let mut txn = state.store.begin();
        for (partner, (lookups, found)) in counts {
            let key = aeo_key(&partner, day);
            let (l0, f0) = state
                .store
                .get(&key)?
                .and_then(|v| {
                    Some((
                        u64::from_be_bytes(v.get(..8)?.try_into().ok()?),
                        u64::from_be_bytes(v.get(8..16)?.try_into().ok()?),
                    ))
                })
                .unwrap_or((0, 0));
            txn.put(
                key,
                [(l0 + lookups).to_be_bytes(), (f0 + found).to_be_bytes()].concat(),
            )?;
        }
        txn.commit()
    };
    ticket.durable().await.map(|_| ())
}

/// Durations collected for percentiles.
#[derive(Debug, Default)]
struct Samples(Vec<i64>);

impl Samples {
    fn percentiles(mut self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_unstable();
        let n = self.0.len();
        let at = |p: f64| self.0[((n - 1) as f64 * p).round() as usize];
        Some(Percentiles {
            count: n as u64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            min: self.0[0],
            max: self.0[n - 1],
        })
    }
}

#[derive(Debug, Default)]
struct Flow {
    messages: u64,
    delivered: u64,
    rejections: BTreeMap<String, u64>,
    latency: Samples,
    lead: Samples,
}

type FlowKey = (String, String, &'static str, String);

/// What a sent message was, remembered until its receipt or dead letter.
struct Sent {
    key: FlowKey,
    queued_at_ms: i64,
}

/// Counts one refusal for `reason` in the flow `key`.
fn refused(flows: &mut BTreeMap<FlowKey, Flow>, key: FlowKey, reason: i32) {
    *flows
        .entry(key)
        .or_default()
        .rejections
        .entry(reason_name(reason))
        .or_default() += 1;
}

fn reason_name(reason: i32) -> String {
    RejectReason::try_from(reason)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("REJECT_REASON_")
                .to_owned()
        })
        .unwrap_or_else(|_| format!("REASON_{reason}"))
}

/// Computes the report over entries recorded in `[since_ms, until_ms)`, only `agreement` if
/// given. Entries are read in ledger order (recording time order).
pub fn compute(
    store: &Store,
    admin: &str,
    since_ms: i64,
    until_ms: i64,
    agreement: Option<&str>,
) -> Result<EffectivenessReport, ReportError> {
    let mut flows: BTreeMap<FlowKey, Flow> = BTreeMap::new();
    let mut sent: std::collections::HashMap<String, Sent> = Default::default();
    let mut aeo: BTreeMap<(String, &'static str), (u64, u64)> = BTreeMap::new();
    let wanted = |id: &str| agreement.is_none_or(|a| a == id);
    let size = store.durable_head().size;
    let mut scanned = 0u64;
    for index in 0..size {
        let Some(leaf) = store.entry(index)? else {
            continue;
        };
        let Ok(e) = LedgerEntry::decode(leaf.as_slice()) else {
            continue;
        };
        if e.recorded_at_ms < since_ms || e.recorded_at_ms >= until_ms {
            continue;
        }
        scanned += 1;
        let header = || EnvelopeHeader::decode(e.envelope_header.as_slice()).unwrap_or_default();
        match e.kind() {
            EntryKind::EnvelopeSent => {
                let h = header();
                if !wanted(&h.agreement_id) {
                    continue;
                }
                let key = (h.agreement_id, h.message_type, "sent", h.recipient);
                flows.entry(key.clone()).or_default().messages += 1;
                sent.insert(
                    h.message_id,
                    Sent {
                        key,
                        queued_at_ms: e.recorded_at_ms,
                    },
                );
            }
            EntryKind::ReceiptReceived => {
                let Some(body) = e
                    .receipt
                    .as_ref()
                    .and_then(|r| ReceiptBody::decode(r.body.as_slice()).ok())
                else {
                    continue;
                };
                let ids = std::iter::once(body.message_id)
                    .chain(body.items.into_iter().map(|i| i.message_id))
                    .filter(|m| !m.is_empty());
                for id in ids {
                    if let Some(s) = sent.remove(&id) {
                        let f = flows.entry(s.key).or_default();
                        f.delivered += 1;
                        f.latency.0.push(e.recorded_at_ms - s.queued_at_ms);
                    }
                }
            }
            EntryKind::DeliveryDeadLettered => {
                if let Some(s) = sent.remove(&e.message_id) {
                    refused(&mut flows, s.key, e.reason);
                }
            }
            EntryKind::SendRefused => {
                // No header was sealed: the agreement and type are not in the entry.
                if agreement.is_some() {
                    continue;
                }
                let key = (
                    "unknown".to_owned(),
                    "unknown".to_owned(),
                    "sent",
                    e.peer.clone(),
                );
                refused(&mut flows, key, e.reason);
            }
            EntryKind::EnvelopeReceived => {
                let h = header();
                if !wanted(&h.agreement_id) {
                    continue;
                }
                let f = flows
                    .entry((h.agreement_id, h.message_type, "received", h.sender))
                    .or_default();
                f.messages += 1;
                f.latency.0.push(e.recorded_at_ms - h.created_at_ms);
                if let Some(v) = store.get(&lead_key(index))?
                    && let Ok(b) = <[u8; 8]>::try_from(v.as_slice())
                {
                    f.lead.0.push(i64::from_be_bytes(b));
                }
            }
            EntryKind::EnvelopeRejected => {
                let h = header();
                let id = if h.agreement_id.is_empty() {
                    "unknown".to_owned()
                } else {
                    h.agreement_id
                };
                if !wanted(&id) {
                    continue;
                }
                let mtype = if h.message_type.is_empty() {
                    "unknown".to_owned()
                } else {
                    h.message_type
                };
                refused(
                    &mut flows,
                    (id, mtype, "received", e.peer.clone()),
                    e.reason,
                );
            }
            kind @ (EntryKind::AeoLookupMade | EntryKind::AeoLookupAnswered) => {
                if !wanted(&e.agreement_id) {
                    continue;
                }
                let what = if kind == EntryKind::AeoLookupMade {
                    "online"
                } else {
                    "answered"
                };
                let r = e.aeo.unwrap_or_default();
                let c = aeo.entry((e.peer.clone(), what)).or_default();
                c.0 += r.record_count;
                c.1 += r.found_count;
            }
            _ => {}
        }
    }
    // Mirror lookups, by day (whole days overlapping the period).
    if agreement.is_none() {
        for (key, value) in store.scan_prefix(AEO_PREFIX)? {
            let rest = &key[AEO_PREFIX.len()..];
            if rest.len() < 9 || value.len() < 16 {
                continue;
            }
            let (partner, day) = rest.split_at(rest.len() - 8);
            let partner = String::from_utf8_lossy(&partner[..partner.len() - 1]).into_owned();
            let day = i64::from_be_bytes(day.try_into().unwrap_or_default());
            if (day + 1) * DAY_MS <= since_ms || day * DAY_MS >= until_ms {
                continue;
            }
            let c = aeo.entry((partner, "mirror")).or_default();
            c.0 += u64::from_be_bytes(value[..8].try_into().unwrap_or_default());
            c.1 += u64::from_be_bytes(value[8..16].try_into().unwrap_or_default());
        }
    }
    Ok(EffectivenessReport {
        admin: admin.to_owned(),
        since_ms,
        until_ms,
        agreement_id: agreement.unwrap_or_default().to_owned(),
        flows: flows
            .into_iter()
            .map(
                |((agreement_id, message_type, direction, partner), f)| FlowReport {
                    agreement_id,
                    message_type,
                    direction: direction.to_owned(),
                    partner,
                    messages: f.messages,
                    delivered: f.delivered,
                    rejections: f.rejections.into_iter().collect(),
                    latency_ms: f.latency.percentiles(),
                    lead_time_ms: f.lead.percentiles(),
                },
            )
            .collect(),
        aeo: aeo
            .into_iter()
            .map(|((partner, kind), (lookups, found))| AeoLookupReport {
                partner,
                kind: kind.to_owned(),
                lookups,
                found,
            })
            .collect(),
        entries_scanned: scanned,
    })
}

pub(crate) fn date(ms: i64) -> String {
    crate::agreement::format_ms(ms)
}

fn pct(p: &Option<Percentiles>) -> String {
    p.as_ref().map_or("-".to_owned(), |p| {
        format!("{} / {} / {}", human(p.p50), human(p.p90), human(p.p99))
    })
}

/// A duration in ms, readable: ms, s, min, h or days.
pub(crate) fn human(ms: i64) -> String {
    let a = ms.unsigned_abs();
    let sign = if ms < 0 { "-" } else { "" };
    match a {
        0..=9_999 => format!("{ms} ms"),
        10_000..=599_999 => format!("{sign}{:.1} s", a as f64 / 1000.0),
        600_000..=17_999_999 => format!("{sign}{:.0} min", a as f64 / 60_000.0),
        18_000_000..=259_199_999 => format!("{sign}{:.1} h", a as f64 / 3_600_000.0),
        _ => format!("{sign}{:.1} d", a as f64 / 86_400_000.0),
    }
}

fn rejections_text(r: &std::collections::HashMap<String, u64>) -> String {
    let mut v: Vec<_> = r.iter().collect();
    v.sort();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One line of the table.
fn row(c: [&str; 9]) -> String {
    format!(
        "{:<22} {:<30} {:<9} {:<7} {:>8} {:>9}  {:<28} {:<28} {}\n",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
    )
}

/// The report as a readable table.
pub fn table(r: &EffectivenessReport) -> String {
    let mut out = format!(
        "Effectiveness report of {} — {} to {}{}\n\n",
        r.admin,
        date(r.since_ms),
        date(r.until_ms),
        if r.agreement_id.is_empty() {
            String::new()
        } else {
            format!(", agreement {}", r.agreement_id)
        }
    );
    out.push_str(&row([
        "agreement",
        "flow",
        "direction",
        "partner",
        "messages",
        "delivered",
        "latency p50 / p90 / p99",
        "lead time p50 / p90 / p99",
        "refused",
    ]));
    for f in &r.flows {
        let delivered = if f.direction == "sent" {
            f.delivered.to_string()
        } else {
            "-".to_owned()
        };
        out.push_str(&row([
            &f.agreement_id,
            f.message_type.trim_start_matches("dccf.v1."),
            &f.direction,
            &f.partner,
            &f.messages.to_string(),
            &delivered,
            &pct(&f.latency_ms),
            &pct(&f.lead_time_ms),
            &rejections_text(&f.rejections),
        ]));
    }
    if r.flows.is_empty() {
        out.push_str("(no messages in this period)\n");
    }
    out.push_str("\nAEO lookups\n");
    for a in &r.aeo {
        let rate = if a.lookups == 0 {
            0.0
        } else {
            100.0 * a.found as f64 / a.lookups as f64
        };
        out.push_str(&format!(
            "  {:<8} {:<9} {:>9} lookups, {:>9} found ({rate:.1} % hit rate)\n",
            a.partner, a.kind, a.lookups, a.found
        ));
    }
    if r.aeo.is_empty() {
        out.push_str("  (none in this period)\n");
    }
    out.push_str(&format!(
        "\n{} ledger entries in the period. Aggregates only: no payload content.",
        r.entries_scanned
    ));
    out
}

/// The report as CSV: one row per flow, then one per AEO lookup kind.
pub fn csv(r: &EffectivenessReport) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let p = |p: &Option<Percentiles>, f: fn(&Percentiles) -> i64| {
        p.as_ref().map_or(String::new(), |p| f(p).to_string())
    };
    let _ = w.write_record([
        "section",
        "agreement",
        "flow",
        "direction",
        "partner",
        "messages",
        "delivered",
        "rejected",
        "rejections",
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p99_ms",
        "lead_time_count",
        "lead_time_p50_ms",
        "lead_time_p90_ms",
        "lead_time_p99_ms",
        "aeo_lookups",
        "aeo_found",
    ]);
    for f in &r.flows {
        let rejected: u64 = f.rejections.values().sum();
        let _ = w.write_record([
            "flow".to_owned(),
            f.agreement_id.clone(),
            f.message_type.clone(),
            f.direction.clone(),
            f.partner.clone(),
            f.messages.to_string(),
            f.delivered.to_string(),
            rejected.to_string(),
            rejections_text(&f.rejections),
            p(&f.latency_ms, |p| p.p50),
            p(&f.latency_ms, |p| p.p90),
            p(&f.latency_ms, |p| p.p99),
            f.lead_time_ms
                .as_ref()
                .map_or("0".to_owned(), |p| p.count.to_string()),
            p(&f.lead_time_ms, |p| p.p50),
            p(&f.lead_time_ms, |p| p.p90),
            p(&f.lead_time_ms, |p| p.p99),
            String::new(),
            String::new(),
        ]);
    }
    for a in &r.aeo {
        let mut row = vec![String::new(); 18];
        row[0] = "aeo".into();
        row[3] = a.kind.clone();
        row[4] = a.partner.clone();
        row[16] = a.lookups.to_string();
        row[17] = a.found.to_string();
        let _ = w.write_record(&row);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{Receipt, ReceiptItem};

    fn header(id: &str, agreement: &str, mtype: &str, from: &str, to: &str, at: i64) -> Vec<u8> {
        EnvelopeHeader {
            message_id: id.into(),
            agreement_id: agreement.into(),
            message_type: mtype.into(),
            sender: from.into(),
            recipient: to.into(),
            created_at_ms: at,
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn entry(kind: EntryKind, at: i64) -> LedgerEntry {
        LedgerEntry {
            kind: kind as i32,
            recorded_at_ms: at,
            ..Default::default()
        }
    }

    const DECL: &str = "dccf.v1.PreArrivalDeclaration";
    const T0: i64 = 1_790_000_000_000;

    /// A ledger of NL with sends to BR, a batch receipt, a dead letter, receptions from DE
    /// (two with lead times), refusals, a refused send and AEO lookups.
    fn ledger(dir: &std::path::Path) -> Store {
        let store = Store::open(dir).unwrap();
        let mut txn = store.begin();
        let mut add = |e: LedgerEntry| txn.append(e.encode_to_vec());
        for (i, id) in ["s1", "s2", "s3", "s4"].iter().enumerate() {
            add(LedgerEntry {
                envelope_header: header(id, "a-1", DECL, "NL", "BR", T0),
                message_id: id.to_string(),
                ..entry(EntryKind::EnvelopeSent, T0 + i as i64)
            });
        }
        // s1 single receipt after 100 ms; s2 and s3 in a batch receipt after 300 ms.
        let receipt = |body: ReceiptBody| Receipt {
            body: body.encode_to_vec(),
            signature: vec![],
        };
        add(LedgerEntry {
            receipt: Some(receipt(ReceiptBody {
                message_id: "s1".into(),
                ..Default::default()
            })),
            ..entry(EntryKind::ReceiptReceived, T0 + 100)
        });
        add(LedgerEntry {
            receipt: Some(receipt(ReceiptBody {
                items: ["s2", "s3"]
                    .iter()
                    .map(|m| ReceiptItem {
                        message_id: m.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })),
            ..entry(EntryKind::ReceiptReceived, T0 + 301)
        });
        add(LedgerEntry {
            message_id: "s4".into(),
            reason: RejectReason::Expired as i32,
            ..entry(EntryKind::DeliveryDeadLettered, T0 + 500)
        });
        let r1 = add(LedgerEntry {
            envelope_header: header("r1", "a-2", DECL, "DE", "NL", T0 - 50),
            ..entry(EntryKind::EnvelopeReceived, T0 + 10)
        });
        let r2 = add(LedgerEntry {
            envelope_header: header("r2", "a-2", DECL, "DE", "NL", T0 - 20),
            ..entry(EntryKind::EnvelopeReceived, T0 + 20)
        });
        add(LedgerEntry {
            envelope_header: header("r3", "a-2", DECL, "DE", "NL", T0),
            peer: "DE".into(),
            reason: RejectReason::FieldNotAllowed as i32,
            ..entry(EntryKind::EnvelopeRejected, T0 + 30)
        });
        add(LedgerEntry {
            peer: "DE".into(),
            reason: RejectReason::Malformed as i32,
            ..entry(EntryKind::EnvelopeRejected, T0 + 31)
        });
        add(LedgerEntry {
            peer: "BR".into(),
            reason: RejectReason::UnknownAgreement as i32,
            ..entry(EntryKind::SendRefused, T0 + 40)
        });
        add(LedgerEntry {
            peer: "BR".into(),
            agreement_id: "mra".into(),
            aeo: Some(crate::proto::v1::AeoLedgerRecord {
                record_count: 10,
                found_count: 7,
                ..Default::default()
            }),
            ..entry(EntryKind::AeoLookupMade, T0 + 50)
        });
        // Outside the period.
        add(LedgerEntry {
            envelope_header: header("old", "a-1", DECL, "NL", "BR", T0 - DAY_MS),
            ..entry(EntryKind::EnvelopeSent, T0 - DAY_MS)
        });
        txn.put(lead_key(r1), (6 * 3_600_000i64).to_be_bytes().to_vec())
            .unwrap();
        txn.put(lead_key(r2), (2 * 3_600_000i64).to_be_bytes().to_vec())
            .unwrap();
        txn.put(
            aeo_key("BR", T0 / DAY_MS),
            [5u64.to_be_bytes(), 4u64.to_be_bytes()].concat(),
        )
        .unwrap();
        txn.commit().wait_blocking().unwrap();
        store
    }

    fn flow<'a>(r: &'a EffectivenessReport, agreement: &str, dir: &str) -> &'a FlowReport {
        r.flows
            .iter()
            .find(|f| f.agreement_id == agreement && f.direction == dir)
            .unwrap_or_else(|| panic!("no {agreement} {dir} flow in {r:?}"))
    }

    #[test]
    fn volumes_latency_rejections_lead_times_and_lookups_are_aggregated() {
        let dir = tempfile::tempdir().unwrap();
        let store = ledger(dir.path());
        let r = compute(&store, "NL", T0 - 1000, T0 + DAY_MS, None).unwrap();
        let sent = flow(&r, "a-1", "sent");
        assert_eq!((sent.messages, sent.delivered), (4, 3));
        assert_eq!(sent.rejections.get("EXPIRED"), Some(&1));
        let lat = sent.latency_ms.unwrap();
        assert_eq!((lat.count, lat.min, lat.max), (3, 100, 300));
        let received = flow(&r, "a-2", "received");
        assert_eq!(received.messages, 2);
        assert_eq!(received.rejections.get("FIELD_NOT_ALLOWED"), Some(&1));
        assert_eq!(received.latency_ms.unwrap().max, 60);
        let lead = received.lead_time_ms.unwrap();
        assert_eq!(
            (lead.count, lead.min, lead.max),
            (2, 2 * 3_600_000, 6 * 3_600_000)
        );
        assert_eq!(
            flow(&r, "unknown", "received").rejections.get("MALFORMED"),
            Some(&1)
        );
        assert_eq!(
            flow(&r, "unknown", "sent")
                .rejections
                .get("UNKNOWN_AGREEMENT"),
            Some(&1)
        );
        let online = r.aeo.iter().find(|a| a.kind == "online").unwrap();
        assert_eq!((online.lookups, online.found), (10, 7));
        let mirror = r.aeo.iter().find(|a| a.kind == "mirror").unwrap();
        assert_eq!(
            (mirror.partner.as_str(), mirror.lookups, mirror.found),
            ("BR", 5, 4)
        );
        assert_eq!(r.entries_scanned, 13, "the old entry is outside the period");
    }

    #[test]
    fn the_agreement_filter_and_period_select_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = ledger(dir.path());
        let r = compute(&store, "NL", T0 - 1000, T0 + DAY_MS, Some("a-2")).unwrap();
        assert!(r.flows.iter().all(|f| f.agreement_id == "a-2"), "{r:?}");
        assert!(r.aeo.is_empty());
        let r = compute(&store, "NL", T0 - 2 * DAY_MS, T0 - 1000, None).unwrap();
        assert_eq!(r.flows.len(), 1);
        assert_eq!(r.flows[0].messages, 1);
        assert!(r.flows[0].latency_ms.is_none(), "never delivered");
    }

    #[test]
    fn outputs_carry_the_numbers_and_parse() {
        let dir = tempfile::tempdir().unwrap();
        let store = ledger(dir.path());
        let r = compute(&store, "NL", T0 - 1000, T0 + DAY_MS, None).unwrap();
        let t = table(&r);
        assert!(
            t.contains("PreArrivalDeclaration") && t.contains("EXPIRED 1"),
            "{t}"
        );
        assert!(
            t.contains("70.0 % hit rate") && t.contains("80.0 % hit rate"),
            "{t}"
        );
        let c = csv(&r);
        let mut rows = ::csv::Reader::from_reader(c.as_bytes());
        let n = rows.records().collect::<Result<Vec<_>, _>>().unwrap().len();
        assert_eq!(n, r.flows.len() + r.aeo.len());
        let s = svg(&r).unwrap();
        assert!(
            s.starts_with("<svg") && s.contains("Pre-arrival lead time"),
            "{}",
            &s[..200]
        );
    }

    #[test]
    fn dates_are_parsed_or_named() {
        assert_eq!(parse_date("--since", "1970-01-02").unwrap(), DAY_MS);
        assert_eq!(parse_date("--since", "1970-01-01T00:00:01Z").unwrap(), 1000);
        let e = parse_date("--since", "yesterday").unwrap_err().to_string();
        assert!(e.contains("--since \"yesterday\""), "{e}");
    }

    #[test]
    fn a_lead_time_is_kept_for_declarations_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let decl = crate::proto::v1::PreArrivalDeclaration {
            eta_ms: T0 + 3_600_000,
            declaration_reference: "SECRET".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut txn = store.begin();
        let i = txn.append(b"x".to_vec());
        stage_lead_time(&mut txn, i, DECL, &decl, T0);
        stage_lead_time(&mut txn, i + 1, "dccf.v1.RiskAlert", &decl, T0);
        txn.commit().wait_blocking().unwrap();
        assert_eq!(
            store.get(&lead_key(i)).unwrap(),
            Some(3_600_000i64.to_be_bytes().to_vec())
        );
        assert_eq!(store.get(&lead_key(i + 1)).unwrap(), None);
    }
}
