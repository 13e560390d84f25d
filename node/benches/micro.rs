//! Criterion micro-benchmarks of the hot primitives: envelope seal+sign and verify+open of a
//! 1 KiB declaration, in single-message mode and in bulk mode (a batch of 256, one epoch; the
//! reported throughput is per message), and a durable ledger commit against a raw sled flush +
//! fdatasync baseline.
//! Run with `cargo bench -p dccf-node --bench micro`; end-to-end figures come from
//! `dccf-node bench` (see BENCHMARKS.md).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dccf_node::envelope::bulk::{BulkCaches, EpochPolicy, Epochs, sign_batch};
use dccf_node::envelope::open::{self, ClockPolicy};
use dccf_node::envelope::seal::{Outgoing, seal};
use dccf_node::envelope::{Kem, now_ms};
use ed25519_dalek::SigningKey;
use prost::Message;
use rand_core::OsRng;

fn envelope(c: &mut Criterion) {
    let payload = dccf_node::samples::pre_arrival_declaration(1).encode_to_vec();
    let sender = SigningKey::generate(&mut OsRng);
    let sender_pub = sender.verifying_key();
    let (sk, pk) = <Kem as hpke::Kem>::gen_keypair(&mut OsRng);
    let digest = [7u8; 32];
    let now = now_ms();
    let msg = Outgoing {
        message_id: "0190b7c2-7d3e-7a55-9c41-3f2d1e0a9b88",
        agreement_id: "bench",
        agreement_digest: &digest,
        sender: "NL",
        recipient: "BR",
        message_type: "dccf.v1.PreArrivalDeclaration",
        payload: &payload,
        in_reply_to: "",
        consent_reference: "",
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
    };
    let clock = ClockPolicy {
        now_ms: now,
        max_skew_secs: 300,
        max_ttl_secs: 86_400,
    };
    let env = seal(&msg, &sender, &pk).expect("seal");
    let mut group = c.benchmark_group("envelope_1kib");
    group.bench_function("seal_sign", |b| {
        b.iter(|| black_box(seal(&msg, &sender, &pk).unwrap()))
    });
    group.bench_function("verify_open", |b| {
        b.iter(|| {
            let header = open::parse_header(&env).unwrap();
            open::verify_signature(&env, &sender_pub, "NL").unwrap();
            open::check_times(&header, &clock).unwrap();
            black_box(open::open_payload(&env, &header, &sk).unwrap())
        })
    });
    group.finish();
}

fn bulk_msg<'a>(id: &'a str, payload: &'a [u8], digest: &'a [u8; 32], now: i64) -> Outgoing<'a> {
    Outgoing {
        message_id: id,
        agreement_id: "bench",
        agreement_digest: digest,
        sender: "NL",
        recipient: "BR",
        message_type: "dccf.v1.PreArrivalDeclaration",
        payload,
        in_reply_to: "",
        consent_reference: "",
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
    }
}

/// Bulk mode, per message: seal in an epoch + one batch signature per 256, and verify + open
/// with fresh receiver caches per batch (one signature check and one HPKE setup per batch).
fn bulk(c: &mut Criterion) {
    const BATCH: usize = 256;
    let payload = dccf_node::samples::pre_arrival_declaration(1).encode_to_vec();
    let sender = SigningKey::generate(&mut OsRng);
    let sender_pub = sender.verifying_key();
    let (sk, pk) = <Kem as hpke::Kem>::gen_keypair(&mut OsRng);
    let digest = [7u8; 32];
    let now = now_ms();
    let ids: Vec<String> = (0..BATCH)
        .map(|i| format!("0190b7c2-7d3e-7a55-9c41-{i:012x}"))
        .collect();
    let seal_batch = |epochs: &mut Epochs| {
        let mut envs: Vec<_> = ids
            .iter()
            .map(|id| {
                epochs
                    .seal(&bulk_msg(id, &payload, &digest, now), &pk, now)
                    .unwrap()
            })
            .collect();
        sign_batch(&mut envs, "bench-batch", "NL", "BR", now, &sender).unwrap();
        envs
    };
    let mut epochs = Epochs::new(EpochPolicy::default());
    let envs = seal_batch(&mut epochs);
    let mut group = c.benchmark_group("bulk_1kib_batch256");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("seal_sign", |b| {
        b.iter(|| black_box(seal_batch(&mut epochs)))
    });
    group.bench_function("verify_open", |b| {
        b.iter(|| {
            let caches = BulkCaches::new();
            for env in &envs {
                let header = open::parse_header(env).unwrap();
                open::verify_signature_with(env, &header, &sender_pub, "NL", &caches).unwrap();
                black_box(open::open_payload_with(env, &header, &sk, &caches).unwrap());
            }
        })
    });
    group.finish();
}

fn ledger(c: &mut Criterion) {
    let leaf = vec![0x42u8; 600];
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dccf_node::ledger::Store::open(&dir.path().join("ledger")).expect("store");
    let raw_dir = tempfile::tempdir().expect("tempdir");
    let raw = sled::open(raw_dir.path()).expect("sled");
    let raw_file = std::fs::OpenOptions::new()
        .write(true)
        .open(raw_dir.path().join("db"))
        .expect("db file");
    let mut group = c.benchmark_group("ledger_commit");
    group.sample_size(20);
    // Baseline: one sled insert made durable the same way (flush + fdatasync).
    let mut i = 0u64;
    group.bench_function("raw_sled_insert_flush_fdatasync", |b| {
        b.iter(|| {
            i += 1;
            raw.insert(i.to_be_bytes(), leaf.as_slice()).unwrap();
            raw.flush().unwrap();
            raw_file.sync_data().unwrap();
        })
    });
    group.bench_function("one_entry_durable", |b| {
        b.iter(|| {
            let mut txn = store.begin();
            txn.append(leaf.clone());
            txn.commit().wait_blocking().unwrap()
        })
    });
    group.bench_function("64_entries_one_group", |b| {
        b.iter(|| {
            let tickets: Vec<_> = (0..64)
                .map(|_| {
                    let mut txn = store.begin();
                    txn.append(leaf.clone());
                    txn.commit()
                })
                .collect();
            for t in tickets {
                t.wait_blocking().unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, envelope, bulk, ledger);
criterion_main!(benches);
