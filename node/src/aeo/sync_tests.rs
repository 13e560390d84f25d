//! The mirror feed end to end without the network: a publisher's registry, its signed snapshot
//! and deltas through a lossy channel, and a mirror that must converge to exactly what the
//! agreement discloses, refusing anything forged or out of sequence.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use prost::Message;

use super::feed::Publisher;
use super::mirror::{FeedError, MirrorSync, Outcome};
use super::statement::{self, Disclosure};
use super::store::AeoStore;
use crate::proto::v1::{
    Address, AeoBatchHeader, AeoRegistryRecord, AeoSignedBatch, AeoStatus, AeoStatusResponse,
    LedgerEntry,
};

const DIGEST: [u8; 32] = [7; 32];

struct World {
    _dir: tempfile::TempDir,
    publisher_store: AeoStore,
    mirror_store: AeoStore,
    publisher: Publisher,
    sync: MirrorSync,
}

fn world(disclosed: Disclosure, allowed: Disclosure) -> World {
    let dir = tempfile::tempdir().unwrap();
    let publisher_store = AeoStore::open(&dir.path().join("br.redb"), 4 << 20).unwrap();
    let mirror_store = AeoStore::open(&dir.path().join("nl.redb"), 4 << 20).unwrap();
    let key = SigningKey::from_bytes(&[1; 32]);
    let sync = MirrorSync::new("NL", "BR", "mra", &DIGEST, key.verifying_key(), allowed);
    World {
        _dir: dir,
        publisher_store,
        mirror_store,
        publisher: Publisher {
            me: "BR".into(),
            partner: "NL".into(),
            agreement_id: "mra".into(),
            agreement_digest: DIGEST.to_vec(),
            disclosure: disclosed,
            key,
            part_size: 4,
        },
        sync,
    }
}

fn record(i: u32, status: AeoStatus, day: i64) -> AeoRegistryRecord {
    AeoRegistryRecord {
        operator_id: format!("BRAEOF{i:010}"),
        tin: format!("{:08}", 1000 + i),
        name: format!("Synthetic {i} Ltd"),
        address: Some(Address {
            street: "Example street 1".into(),
            city: "Exampletown".into(),
            postcode: "1".into(),
            country: "BR".into(),
        }),
        status: status as i32,
        programme: 3,
        valid_from_ms: 1_600_000_000_000,
        valid_until_ms: 0,
        last_change_ms: 1_600_000_000_000 + day * 86_400_000,
    }
}

impl World {
    fn write(&self, records: &[AeoRegistryRecord]) -> u64 {
        self.publisher_store
            .registry_write(records, |_| LedgerEntry::default())
            .unwrap()
            .version_to
    }

    fn version(&self) -> u64 {
        self.publisher_store.registry_info().unwrap().version
    }

    fn snapshot(&self) -> Vec<AeoSignedBatch> {
        let mut parts = Vec::new();
        let (end, _, _) = self
            .publisher
            .snapshot(&self.publisher_store, 5, |b| {
                parts.push(b);
                true
            })
            .unwrap()
            .unwrap();
        parts.push(end);
        parts
    }

    fn delta(&self, from: u64) -> Option<AeoSignedBatch> {
        self.publisher
            .delta(&self.publisher_store, from, 4096, 5)
            .unwrap()
    }

    fn heartbeat(&self) -> AeoSignedBatch {
        let id = self.publisher_store.registry_info().unwrap().registry_id;
        self.publisher.heartbeat(&id, self.version(), 6)
    }

    fn mirror_version(&self) -> u64 {
        self.mirror_store
            .mirror_meta("BR")
            .unwrap()
            .map_or(0, |m| m.version)
    }

    /// Feeds one batch; on a resync, does what the follower does (ask again from the mirror's
    /// version, or for a snapshot) until the mirror stops asking.
    fn feed(&mut self, batch: &AeoSignedBatch) -> Result<Outcome, FeedError> {
        let outcome = self.sync.accept(&self.mirror_store, batch)?;
        let mut next = outcome.clone();
        for _ in 0..5 {
            let Outcome::Resync { snapshot, .. } = next else {
                return Ok(outcome);
            };
            let batches = match (snapshot, self.delta(self.mirror_version())) {
                (false, Some(d)) if self.mirror_store.mirror_meta("BR").unwrap().is_some() => {
                    vec![d]
                }
                _ => self.snapshot(),
            };
            for b in &batches {
                next = self.sync.accept(&self.mirror_store, b)?;
            }
        }
        panic!("the mirror keeps asking for a resync");
    }

    /// The mirror's records by operator id, `as_of_ms` cleared.
    fn mirror(&self) -> BTreeMap<String, AeoStatusResponse> {
        self.mirror_store
            .mirror_records("BR")
            .unwrap()
            .into_iter()
            .map(|r| {
                let mut rec = AeoStatusResponse::decode(r.record.as_slice()).unwrap();
                rec.as_of_ms = 0;
                (rec.operator_identifier.clone(), rec)
            })
            .collect()
    }

    /// What the agreement lets the publisher disclose of its registry, `as_of_ms` cleared.
    fn disclosed(&self) -> BTreeMap<String, AeoStatusResponse> {
        let (_, records) = self.publisher_store.registry_snapshot().unwrap();
        records
            .map(|r| {
                let r = self.publisher.disclosure.disclose(&r.unwrap(), 0);
                (r.operator_identifier.clone(), r)
            })
            .collect()
    }
}

/// Re-signs `batch` after `change` to its header, with `key`.
fn resign(
    batch: &AeoSignedBatch,
    key: &SigningKey,
    change: impl FnOnce(&mut AeoBatchHeader),
) -> AeoSignedBatch {
    let mut header = AeoBatchHeader::decode(batch.header.as_slice()).unwrap();
    change(&mut header);
    statement::sign(header, batch.leaves.clone(), key)
}

/// A world with `n` operators, mirrored.
fn mirrored(n: u32) -> World {
    let mut w = world(Disclosure::default(), Disclosure::default());
    w.write(
        &(0..n)
            .map(|i| record(i, AeoStatus::Valid, 0))
            .collect::<Vec<_>>(),
    );
    for b in w.snapshot() {
        w.feed(&b).unwrap();
    }
    assert_eq!(w.mirror(), w.disclosed());
    w
}

/// One step of a random change sequence: operators to upsert (index, status, day).
fn step() -> impl Strategy<Value = Vec<(u32, u8, i64)>> {
    prop::collection::vec((0u32..40, 0u8..3, 0i64..1000), 1..4)
}

/// What the lossy channel does with a delta.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Deliver,
    Drop,
    Duplicate,
    Delay,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        5 => Just(Fate::Deliver),
        1 => Just(Fate::Drop),
        1 => Just(Fate::Duplicate),
        1 => Just(Fate::Delay),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn snapshot_and_lossy_deltas_converge_to_the_disclosed_registry(
        initial in 0u32..30,
        steps in prop::collection::vec((step(), fate(), any::<bool>()), 1..25),
        names in any::<bool>(),
    ) {
        let disclosure = Disclosure { name: names, tin: names, ..Default::default() };
        let mut w = world(disclosure, disclosure);
        if initial > 0 {
            w.write(&(0..initial).map(|i| record(i, AeoStatus::Valid, 0)).collect::<Vec<_>>());
        }
        for b in w.snapshot() {
            w.feed(&b).unwrap();
        }
        let mut published = w.version();
        let mut delayed: Vec<AeoSignedBatch> = Vec::new();
        for (changes, fate, heartbeat) in steps {
            let statuses = [AeoStatus::Valid, AeoStatus::Suspended, AeoStatus::Revoked];
            let records: Vec<_> = changes
                .iter()
                .map(|(i, s, day)| record(*i, statuses[usize::from(*s)], *day))
                .collect();
            w.write(&records);
            let Some(delta) = w.delta(published) else { continue };
            published = w.version();
            match fate {
                Fate::Deliver => { w.feed(&delta).unwrap(); }
                Fate::Drop => {}
                Fate::Duplicate => { w.feed(&delta).unwrap(); w.feed(&delta).unwrap(); }
                Fate::Delay => delayed.push(delta),
            }
            if heartbeat {
                // A late delta shows up, then the publisher's heartbeat reveals anything missed.
                if let Some(late) = delayed.pop() {
                    w.feed(&late).unwrap();
                }
                let hb = w.heartbeat();
                w.feed(&hb).unwrap();
            }
        }
        for late in delayed {
            w.feed(&late).unwrap();
        }
        let hb = w.heartbeat();
        let last = w.feed(&hb).unwrap();
        prop_assert!(matches!(last, Outcome::Current | Outcome::Resync { .. }), "{last:?}");
        prop_assert_eq!(w.mirror_version(), w.version());
        prop_assert_eq!(w.mirror(), w.disclosed());
    }
}

#[test]
fn a_delta_with_a_bad_signature_is_refused_and_the_genuine_one_still_applies() {
    let mut w = mirrored(6);
    let before = (w.mirror(), w.mirror_version());
    w.write(&[record(2, AeoStatus::Suspended, 3)]);
    let delta = w.delta(before.1).unwrap();
    let forged = resign(&delta, &SigningKey::from_bytes(&[2; 32]), |_| {});
    assert!(matches!(w.feed(&forged), Err(FeedError::Rejected(m)) if m.contains("signature")));
    let mut tampered = delta.clone();
    tampered.leaves[0][4] ^= 1;
    assert!(matches!(w.feed(&tampered), Err(FeedError::Rejected(m)) if m.contains("root")));
    assert_eq!((w.mirror(), w.mirror_version()), before, "nothing applied");
    assert_eq!(w.feed(&delta).unwrap(), Outcome::Applied);
    assert_eq!(w.mirror(), w.disclosed());
}

#[test]
fn a_gap_asks_for_a_resync_from_the_mirror_version_and_applies_nothing() {
    let mut w = mirrored(4);
    let v0 = w.mirror_version();
    w.write(&[record(0, AeoStatus::Suspended, 1)]);
    let _lost = w.delta(v0).unwrap();
    let v1 = w.version();
    w.write(&[record(1, AeoStatus::Revoked, 2)]);
    let next = w.delta(v1).unwrap();
    let outcome = w.sync.accept(&w.mirror_store, &next).unwrap();
    assert!(
        matches!(&outcome, Outcome::Resync { snapshot: false, reason } if reason.contains("gap")),
        "{outcome:?}"
    );
    assert_eq!(w.mirror_version(), v0, "nothing applied");
    // The follower's resync converges.
    w.feed(&next).unwrap();
    assert_eq!(w.mirror(), w.disclosed());
    // Replayed, the same delta is a duplicate.
    assert_eq!(w.feed(&next).unwrap(), Outcome::Duplicate);
}

#[test]
fn batches_for_someone_else_are_refused() {
    let mut w = mirrored(3);
    w.write(&[record(0, AeoStatus::Suspended, 1)]);
    let delta = w.delta(w.mirror_version()).unwrap();
    let key = w.publisher.key.clone();
    for (what, forged) in [
        (
            "recipient",
            resign(&delta, &key, |h| h.recipient = "DE".into()),
        ),
        (
            "publisher",
            resign(&delta, &key, |h| h.publisher = "DE".into()),
        ),
        (
            "agreement",
            resign(&delta, &key, |h| h.agreement_id = "other".into()),
        ),
        (
            "version",
            resign(&delta, &key, |h| h.agreement_digest = vec![8; 32]),
        ),
    ] {
        assert!(
            matches!(w.feed(&forged), Err(FeedError::Rejected(m)) if m.contains(what)),
            "{what}"
        );
    }
    let answer = resign(&delta, &key, |h| {
        h.kind = crate::proto::v1::AeoBatchKind::Answer as i32
    });
    assert!(matches!(w.feed(&answer), Err(FeedError::Rejected(_))));
}

#[test]
fn a_delta_of_another_registry_asks_for_a_snapshot() {
    let mut w = mirrored(3);
    w.write(&[record(0, AeoStatus::Suspended, 1)]);
    let delta = w.delta(w.mirror_version()).unwrap();
    let key = w.publisher.key.clone();
    let other = resign(&delta, &key, |h| h.registry_id = "another".into());
    let outcome = w.sync.accept(&w.mirror_store, &other).unwrap();
    assert!(
        matches!(outcome, Outcome::Resync { snapshot: true, .. }),
        "{outcome:?}"
    );
}

#[test]
fn over_disclosure_is_refused() {
    // The publisher discloses names; the mirror's agreement allows status only.
    let mut w = world(
        Disclosure {
            name: true,
            ..Default::default()
        },
        Disclosure::default(),
    );
    w.write(&[record(1, AeoStatus::Valid, 0)]);
    let parts = w.snapshot();
    assert!(
        matches!(w.feed(&parts[0]), Err(FeedError::Rejected(m)) if m.contains("operator_name"))
    );
    assert!(w.mirror_store.mirror_meta("BR").unwrap().is_none());
}

#[test]
fn broken_snapshots_install_nothing_and_the_live_mirror_keeps_answering() {
    let mut w = mirrored(10);
    let live = w.mirror();
    w.write(
        &(0..10)
            .map(|i| record(i, AeoStatus::Revoked, 9))
            .collect::<Vec<_>>(),
    );
    let parts = w.snapshot();
    assert!(parts.len() >= 4, "10 records in parts of 4, plus the end");
    // A part missing: the next one is out of order.
    assert!(matches!(
        w.sync.accept(&w.mirror_store, &parts[0]).unwrap(),
        Outcome::Staged
    ));
    let skipped = w.sync.accept(&w.mirror_store, &parts[2]).unwrap();
    assert!(
        matches!(skipped, Outcome::Resync { snapshot: true, .. }),
        "{skipped:?}"
    );
    assert_eq!(w.mirror(), live);
    assert!(
        w.mirror_store
            .mirror_lookup("BR", "BRAEOF0000000003", false)
            .unwrap()
            .is_some()
    );
    // An end that lists other parts than were received.
    for p in &parts[..parts.len() - 2] {
        w.sync.accept(&w.mirror_store, p).unwrap();
    }
    let end = parts.last().unwrap();
    let outcome = w.sync.accept(&w.mirror_store, end).unwrap();
    assert!(
        matches!(outcome, Outcome::Resync { snapshot: true, .. }),
        "{outcome:?}"
    );
    assert_eq!(w.mirror(), live);
    // A snapshot part without its start.
    let outcome = w.sync.accept(&w.mirror_store, &parts[1]).unwrap();
    assert!(
        matches!(outcome, Outcome::Resync { snapshot: true, .. }),
        "{outcome:?}"
    );
    // The whole snapshot installs.
    for p in &parts {
        w.sync.accept(&w.mirror_store, p).unwrap();
    }
    assert_eq!(w.mirror(), w.disclosed());
}

#[test]
fn heartbeats_confirm_reveal_gaps_or_are_stale() {
    let mut w = mirrored(2);
    let as_of = w.mirror_store.mirror_meta("BR").unwrap().unwrap().as_of_ms;
    let hb = w.heartbeat();
    assert_eq!(
        w.sync.accept(&w.mirror_store, &hb).unwrap(),
        Outcome::Current
    );
    assert!(w.mirror_store.mirror_meta("BR").unwrap().unwrap().as_of_ms > as_of);
    w.write(&[record(0, AeoStatus::Suspended, 1)]);
    let ahead = w.heartbeat();
    let outcome = w.sync.accept(&w.mirror_store, &ahead).unwrap();
    assert!(
        matches!(
            outcome,
            Outcome::Resync {
                snapshot: false,
                ..
            }
        ),
        "{outcome:?}"
    );
    w.feed(&ahead).unwrap();
    assert_eq!(
        w.sync.accept(&w.mirror_store, &hb).unwrap(),
        Outcome::Duplicate
    );
}

#[test]
fn tin_index_follows_changes() {
    let both = Disclosure {
        tin: true,
        ..Default::default()
    };
    let mut w = world(both, both);
    w.write(&[
        record(1, AeoStatus::Valid, 0),
        record(2, AeoStatus::Valid, 0),
    ]);
    for b in w.snapshot() {
        w.feed(&b).unwrap();
    }
    let hit = w
        .mirror_store
        .mirror_lookup("BR", "00001001", true)
        .unwrap();
    assert!(hit.is_some());
    // Operator 1 gets a new TIN: the old one no longer finds it.
    let mut moved = record(1, AeoStatus::Valid, 1);
    moved.tin = "77777777".into();
    let v = w.mirror_version();
    w.write(&[moved]);
    let d = w.delta(v).unwrap();
    w.feed(&d).unwrap();
    assert!(
        w.mirror_store
            .mirror_lookup("BR", "00001001", true)
            .unwrap()
            .is_none()
    );
    assert!(
        w.mirror_store
            .mirror_lookup("BR", "77777777", true)
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_snapshot_staged_when_the_node_died_is_dropped_at_open() {
    let mut w = mirrored(5);
    let live = w.mirror();
    w.write(
        &(0..5)
            .map(|i| record(i, AeoStatus::Suspended, 2))
            .collect::<Vec<_>>(),
    );
    let parts = w.snapshot();
    w.sync.accept(&w.mirror_store, &parts[0]).unwrap();
    let path = w._dir.path().join("nl.redb");
    let World {
        _dir,
        publisher_store,
        mirror_store,
        publisher,
        ..
    } = w;
    drop(mirror_store);
    let reopened = AeoStore::open(&path, 4 << 20).unwrap();
    let key = publisher.key.clone();
    let mut w = World {
        _dir,
        publisher_store,
        mirror_store: reopened,
        publisher,
        sync: MirrorSync::new(
            "NL",
            "BR",
            "mra",
            &DIGEST,
            key.verifying_key(),
            Disclosure::default(),
        ),
    };
    assert_eq!(w.mirror(), live, "the live mirror survived");
    for p in &parts {
        w.feed(p).unwrap();
    }
    assert_eq!(w.mirror(), w.disclosed());
}

#[test]
fn a_publisher_without_a_registry_is_current_at_version_zero() {
    let mut w = world(Disclosure::default(), Disclosure::default());
    let hb = w.heartbeat();
    assert_eq!(
        w.sync.accept(&w.mirror_store, &hb).unwrap(),
        Outcome::Current
    );
    assert!(w.mirror_store.mirror_meta("BR").unwrap().is_none());
    // Its first change comes as a snapshot after a resync.
    w.write(&[record(1, AeoStatus::Valid, 0)]);
    let hb = w.heartbeat();
    w.feed(&hb).unwrap();
    assert_eq!(w.mirror(), w.disclosed());
}

#[test]
fn a_partner_cannot_grow_the_mirror_past_its_bound() {
    let mut w = world(Disclosure::default(), Disclosure::default());
    w.sync = MirrorSync::new(
        "NL",
        "BR",
        "mra",
        &DIGEST,
        w.publisher.key.verifying_key(),
        Disclosure::default(),
    )
    .with_max_records(6);
    w.write(
        &(0..5)
            .map(|i| record(i, AeoStatus::Valid, 0))
            .collect::<Vec<_>>(),
    );
    for b in w.snapshot() {
        w.feed(&b).unwrap();
    }
    let v = w.mirror_version();
    w.write(
        &(5..8)
            .map(|i| record(i, AeoStatus::Valid, 0))
            .collect::<Vec<_>>(),
    );
    let delta = w.delta(v).unwrap();
    assert!(
        matches!(w.feed(&delta), Err(FeedError::Rejected(m)) if m.contains("max_mirror_records"))
    );
    assert_eq!(w.mirror_version(), v, "nothing applied");
    let parts = w.snapshot();
    let refused = parts
        .iter()
        .map(|p| w.sync.accept(&w.mirror_store, p))
        .find(Result::is_err);
    assert!(matches!(refused, Some(Err(FeedError::Rejected(_)))));
    assert_eq!(w.mirror().len(), 5, "the live mirror stays");
}
