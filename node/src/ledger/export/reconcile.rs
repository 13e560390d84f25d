//! Reconciling two partners' exports ([`reconcile`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::ExportError;
use super::verify::read_entries;
use crate::ledger::entry::LedgerEntry;
use crate::proto::v1::EntryKind;

/// One ledger entry about a message, as cited in a [`Discrepancy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRecord {
    /// Entry index in its administration's ledger.
    pub index: u64,
    /// What the entry records.
    pub kind: EntryKind,
    /// The envelope digest it records.
    pub digest: Vec<u8>,
}

/// What kind of disagreement a [`Discrepancy`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscrepancyKind {
    /// The sender recorded the message as sent; the receiver has no record of it.
    MissingOnReceiver,
    /// Both recorded the message, with different envelope digests.
    DigestMismatch,
    /// The receiver recorded accepting a message the sender never recorded sending (with that
    /// digest).
    ReceivedNeverSent,
    /// The receiver rejected an envelope claiming to come from the sender, which the sender
    /// never sent (with that digest): possibly forged.
    RejectedNeverSent,
    /// The sender recorded the same message id as sent with different digests.
    ConflictingSent,
    /// The receiver recorded the same message id as accepted with different digests.
    ConflictingReceived,
}

/// A disagreement between two administrations' ledgers about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discrepancy {
    /// What disagrees.
    pub kind: DiscrepancyKind,
    /// The message id (empty if the entries had none).
    pub message_id: String,
    /// The (claimed) sending administration.
    pub sender: String,
    /// The receiving administration.
    pub receiver: String,
    /// The sender's entries about the message (ENVELOPE_SENT, and DELIVERY_FAILED as context).
    pub sent: Vec<LedgerRecord>,
    /// The receiver's entries about the message (ENVELOPE_RECEIVED / ENVELOPE_REJECTED).
    pub received: Vec<LedgerRecord>,
}

fn short(digest: &[u8]) -> String {
    let h = hex::encode(digest);
    if h.is_empty() {
        "(none)".to_owned()
    } else {
        format!("{}…", &h[..h.len().min(8)])
    }
}

fn verb(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::EnvelopeSent => "sent",
        EntryKind::EnvelopeReceived => "received",
        EntryKind::EnvelopeRejected => "rejected",
        EntryKind::DeliveryFailed => "delivery failed",
        _ => "recorded",
    }
}

fn cite(records: &[&LedgerRecord]) -> String {
    records
        .iter()
        .map(|r| {
            format!(
                "{} (entry {}, digest {})",
                verb(r.kind),
                r.index,
                short(&r.digest)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Discrepancy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, r) = (&self.sender, &self.receiver);
        let id = if self.message_id.is_empty() {
            "(no id)"
        } else {
            &self.message_id
        };
        let sent: Vec<&LedgerRecord> = self
            .sent
            .iter()
            .filter(|x| x.kind == EntryKind::EnvelopeSent)
            .collect();
        let failed: Vec<&LedgerRecord> = self
            .sent
            .iter()
            .filter(|x| x.kind == EntryKind::DeliveryFailed)
            .collect();
        let received: Vec<&LedgerRecord> = self.received.iter().collect();
        write!(f, "message {id}: ")?;
        match self.kind {
            DiscrepancyKind::MissingOnReceiver => {
                write!(
                    f,
                    "{s} recorded it sent to {r} ({}) but {r} has no record of it",
                    cite_bare(&sent)
                )?;
                if !failed.is_empty() {
                    write!(
                        f,
                        "; {s} also recorded the delivery as failed ({})",
                        cite_bare(&failed)
                    )?;
                }
                Ok(())
            }
            DiscrepancyKind::DigestMismatch => write!(
                f,
                "{s} recorded it sent to {r} ({}) but {r} recorded it {}: the digests differ",
                cite_bare(&sent),
                cite(&received)
            ),
            DiscrepancyKind::ReceivedNeverSent => {
                write!(f, "{r} recorded it {} from {s}", cite(&received))?;
                if sent.is_empty() {
                    write!(f, " but {s} has no record of sending it")
                } else {
                    write!(
                        f,
                        " but {s} never sent an envelope with that digest ({s} sent {})",
                        cite_bare(&sent)
                    )
                }
            }
            DiscrepancyKind::RejectedNeverSent => {
                write!(
                    f,
                    "rejected by {r} ({}), never sent by {s}",
                    cite_bare(&received)
                )?;
                if sent.is_empty() {
                    write!(
                        f,
                        " (an envelope claiming to come from {s}, possibly forged)"
                    )
                } else {
                    write!(
                        f,
                        " with that digest ({s} sent {}; the rejected envelope is another one \
                         claiming to come from {s}, possibly forged)",
                        cite_bare(&sent)
                    )
                }
            }
            DiscrepancyKind::ConflictingSent => {
                write!(
                    f,
                    "{s} recorded it sent to {r} with different digests: {}",
                    cite_bare(&sent)
                )?;
                if received.is_empty() {
                    write!(f, "; {r} has no record of it")
                } else {
                    write!(f, "; {r} recorded it {}", cite(&received))
                }
            }
            DiscrepancyKind::ConflictingReceived => write!(
                f,
                "{r} recorded it from {s} with different digests: {}",
                cite(&received)
            ),
        }
    }
}

/// Like [`cite`] without the verb: `entry 12, digest ab12…; entry 14, digest …`.
fn cite_bare(records: &[&LedgerRecord]) -> String {
    records
        .iter()
        .map(|r| format!("entry {}, digest {}", r.index, short(&r.digest)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Result of [`reconcile`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Administration of the first export.
    pub a: String,
    /// Administration of the second export.
    pub b: String,
    /// Number of messages (per direction and digest) both sides recorded consistently.
    pub matched: usize,
    /// Every disagreement, A→B first, each direction by message id.
    pub discrepancies: Vec<Discrepancy>,
}

/// The administration id of an origin: its last `/`-segment.
pub fn administration_of(origin: &str) -> Result<String, ExportError> {
    match origin.rsplit_once('/') {
        Some((_, admin)) if !admin.is_empty() => Ok(admin.to_owned()),
        _ => Err(ExportError::OriginWithoutAdministration {
            origin: origin.to_owned(),
        }),
    }
}

/// Entries of one side grouped by message id: (records as sender, records as receiver).
type ByMessage = BTreeMap<String, (Vec<LedgerRecord>, Vec<LedgerRecord>)>;

/// Groups `sender`'s send-side entries towards `receiver` and `receiver`'s receive-side entries
/// from `sender` by message id.
fn group(
    sender: &str,
    sender_entries: &[(u64, LedgerEntry)],
    receiver: &str,
    receiver_entries: &[(u64, LedgerEntry)],
) -> ByMessage {
    let mut by: ByMessage = BTreeMap::new();
    let record = |index: u64, e: &LedgerEntry, kind| LedgerRecord {
        index,
        kind,
        digest: e.envelope_digest.clone(),
    };
    for (index, e) in sender_entries {
        let Ok(kind) = EntryKind::try_from(e.kind) else {
            continue;
        };
        if e.peer == receiver && matches!(kind, EntryKind::EnvelopeSent | EntryKind::DeliveryFailed)
        {
            by.entry(e.message_id.clone())
                .or_default()
                .0
                .push(record(*index, e, kind));
        }
    }
    for (index, e) in receiver_entries {
        let Ok(kind) = EntryKind::try_from(e.kind) else {
            continue;
        };
        if e.peer == sender
            && matches!(
                kind,
                EntryKind::EnvelopeReceived | EntryKind::EnvelopeRejected
            )
        {
            by.entry(e.message_id.clone())
                .or_default()
                .1
                .push(record(*index, e, kind));
        }
    }
    by
}

fn distinct_digests<'r>(records: impl Iterator<Item = &'r LedgerRecord>) -> Vec<&'r [u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for r in records {
        if !out.contains(&r.digest.as_slice()) {
            out.push(&r.digest);
        }
    }
    out
}

/// Checks one direction (`sender` → `receiver`); returns the number matched.
fn check_direction(
    sender: &str,
    receiver: &str,
    by: ByMessage,
    out: &mut Vec<Discrepancy>,
) -> usize {
    let mut matched = 0;
    for (message_id, (sender_side, received)) in by {
        let sent_digests = distinct_digests(
            sender_side
                .iter()
                .filter(|r| r.kind == EntryKind::EnvelopeSent),
        );
        let accepted_digests = distinct_digests(
            received
                .iter()
                .filter(|r| r.kind == EntryKind::EnvelopeReceived),
        );
        let make = |kind, received: Vec<LedgerRecord>| Discrepancy {
            kind,
            message_id: message_id.clone(),
            sender: sender.to_owned(),
            receiver: receiver.to_owned(),
            sent: sender_side.clone(),
            received,
        };
        if sent_digests.len() > 1 {
            out.push(make(DiscrepancyKind::ConflictingSent, received.clone()));
            continue;
        }
        if accepted_digests.len() > 1 {
            let accepted = received
                .iter()
                .filter(|r| r.kind == EntryKind::EnvelopeReceived)
                .cloned()
                .collect();
            out.push(make(DiscrepancyKind::ConflictingReceived, accepted));
            continue;
        }
        let unexplained: Vec<LedgerRecord> = match sent_digests.first() {
            Some(d) if received.iter().any(|r| r.digest == *d) => {
                matched += 1;
                received
                    .iter()
                    .filter(|r| r.digest != *d)
                    .cloned()
                    .collect()
            }
            Some(_) if !received.is_empty() => {
                out.push(make(DiscrepancyKind::DigestMismatch, received.clone()));
                Vec::new()
            }
            Some(_) => {
                out.push(make(DiscrepancyKind::MissingOnReceiver, Vec::new()));
                Vec::new()
            }
            None => received.clone(),
        };
        for r in unexplained {
            let kind = if r.kind == EntryKind::EnvelopeRejected {
                DiscrepancyKind::RejectedNeverSent
            } else {
                DiscrepancyKind::ReceivedNeverSent
            };
            out.push(make(kind, vec![r]));
        }
    }
    matched
}

/// Verifies both exports fully ([`read_entries`]), then checks that every message A recorded
/// as sent to B (ENVELOPE_SENT, `peer` = B) is recorded by B as received or rejected
/// (ENVELOPE_RECEIVED / ENVELOPE_REJECTED, `peer` = A, same `message_id`) with the same
/// envelope digest, that everything B recorded as received or rejected from A was sent by A
/// with that digest, and the same from B to A. Administrations are the last `/`-segment of the
/// origins.
///
/// Every disagreement is listed; an envelope B rejected that A never sent is reported as such
/// (it may be a forgery claiming to come from A).
pub fn reconcile(a: &Path, b: &Path) -> Result<ReconcileReport, ExportError> {
    let in_export = |dir: &Path| {
        let dir = dir.to_path_buf();
        move |e: ExportError| ExportError::InExport {
            dir,
            source: Box::new(e),
        }
    };
    let (report_a, entries_a) = read_entries(a).map_err(in_export(a))?;
    let (report_b, entries_b) = read_entries(b).map_err(in_export(b))?;
    let admin_a = administration_of(&report_a.origin).map_err(in_export(a))?;
    let admin_b = administration_of(&report_b.origin).map_err(in_export(b))?;
    if admin_a == admin_b {
        return Err(ExportError::SameAdministration { admin: admin_a });
    }
    let mut discrepancies = Vec::new();
    let ab = group(&admin_a, &entries_a, &admin_b, &entries_b);
    let mut matched = check_direction(&admin_a, &admin_b, ab, &mut discrepancies);
    let ba = group(&admin_b, &entries_b, &admin_a, &entries_a);
    matched += check_direction(&admin_b, &admin_a, ba, &mut discrepancies);
    Ok(ReconcileReport {
        a: admin_a,
        b: admin_b,
        matched,
        discrepancies,
    })
}
