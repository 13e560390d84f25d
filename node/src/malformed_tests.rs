//! The malformed-input campaign: random bytes and mutated valid inputs (bit flips,
//! truncation, insertion, appended and overwritten bytes) fed to every decoder a peer or a file
//! reaches. Each property says more than "no panic": whatever a mutation produces is refused,
//! unless it decodes to exactly the original (protobuf tolerates e.g. appended unknown fields),
//! so each property fails if the check behind it is removed.
//!
//! The number of cases is bounded for `cargo test` (64 per property); run more with
//! `PROPTEST_CASES=100000 cargo test -p dccf-node --lib malformed`. The node-level side (the
//! same mutations sent to a running node, which must refuse them and keep serving) is in
//! `tests/malformed_input.rs`.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// One way of damaging a byte string; positions are taken modulo its length.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Append(Vec<u8>),
    Overwrite(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        proptest::collection::vec(any::<u8>(), 1..24).prop_map(Mutation::Append),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(i, b)| Mutation::Overwrite(i, b)),
    ]
}

/// One to three mutations in a row.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..4)
}

fn apply(bytes: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for m in mutations {
        let n = out.len().max(1);
        match m {
            Mutation::Flip(i, b) => {
                if !out.is_empty() {
                    out[i % n] ^= b;
                }
            }
            Mutation::Truncate(i) => out.truncate(i % n),
            Mutation::Insert(i, b) => out.insert(i % (out.len() + 1), *b),
            Mutation::Append(tail) => out.extend_from_slice(tail),
            Mutation::Overwrite(i, with) => {
                for (k, b) in with.iter().enumerate() {
                    if let Some(slot) = out.get_mut((i % n) + k) {
                        *slot = *b;
                    }
                }
            }
        }
    }
    out
}

/// The bounded runner: 64 cases unless `PROPTEST_CASES` asks for more.
fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..2048)
}

mod envelopes {
    use prost::Message;

    use super::*;
    use crate::envelope::EnvelopeError;
    use crate::envelope::open::Opened;
    use crate::envelope::open::{
        ClockPolicy, check_times, decode_envelope, open_payload, parse_header, verify_signature,
    };
    use crate::envelope::testkit::{NOW_MS, Parties};
    use crate::proto::v1::Envelope;

    /// Every receiver check, in the order of the receive pipeline.
    fn receive(bytes: &[u8], p: &Parties) -> Result<(Envelope, Opened), EnvelopeError> {
        let env = decode_envelope(bytes)?;
        let header = parse_header(&env)?;
        verify_signature(&env, &p.sender_sign.verifying_key(), &header.sender)?;
        check_times(
            &header,
            &ClockPolicy {
                now_ms: NOW_MS,
                max_skew_secs: 300,
                max_ttl_secs: 7 * 86400,
            },
        )?;
        let opened = open_payload(&env, &header, &p.recipient_hpke.0)?;
        Ok((env, opened))
    }

    #[test]
    fn malformed_mutated_envelopes_are_refused_unless_unchanged() {
        let p = Parties::new();
        let original = p.envelope("m-1", b"declaration payload");
        let bytes = original.encode_to_vec();
        assert!(receive(&bytes, &p).is_ok(), "the seed is valid");
        runner()
            .run(&mutations(), |m| {
                let mutated = apply(&bytes, &m);
                if let Ok((env, opened)) = receive(&mutated, &p) {
                    prop_assert_eq!(&env, &original, "a changed envelope was accepted");
                    prop_assert_eq!(opened.payload, b"declaration payload".to_vec());
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn malformed_random_bytes_are_never_an_envelope() {
        let p = Parties::new();
        runner()
            .run(&random_bytes(), |bytes| {
                prop_assert!(receive(&bytes, &p).is_err());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn malformed_mutated_bulk_envelopes_are_refused_unless_unchanged() {
        use crate::envelope::bulk::BulkCaches;
        let p = Parties::new();
        let mut batch: Vec<Envelope> = (0..4)
            .map(|i| p.envelope(&format!("b-{i}"), b"bulk payload"))
            .collect();
        crate::envelope::bulk::sign_batch(
            &mut batch,
            "batch-1",
            "NL",
            "BR",
            NOW_MS,
            &p.sender_sign,
        )
        .unwrap();
        let caches = BulkCaches::default();
        for original in &batch {
            let bytes = original.encode_to_vec();
            let check = |bytes: &[u8]| -> Result<Envelope, EnvelopeError> {
                let env = decode_envelope(bytes)?;
                let header = parse_header(&env)?;
                crate::envelope::open::verify_signature_with(
                    &env,
                    &header,
                    &p.sender_sign.verifying_key(),
                    &header.sender,
                    &caches,
                )?;
                open_payload(&env, &header, &p.recipient_hpke.0)?;
                Ok(env)
            };
            assert!(check(&bytes).is_ok(), "the seed is valid");
            runner()
                .run(&mutations(), |m| {
                    if let Ok(env) = check(&apply(&bytes, &m)) {
                        prop_assert_eq!(&env, original, "a changed bulk envelope was accepted");
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
}

mod receipts {
    use prost::Message;

    use super::*;
    use crate::envelope::receipt::{Expected, sign_receipt, verify_receipt_for};
    use crate::proto::v1::{Receipt, ReceiptBody};

    #[test]
    fn malformed_mutated_receipts_are_refused_unless_unchanged() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
        let digest = [7u8; 32];
        let body = ReceiptBody {
            message_id: "m-1".into(),
            sender: "NL".into(),
            recipient: "BR".into(),
            envelope_digest: digest.to_vec(),
            ledger_index: 42,
            received_at_ms: 1_790_000_000_000,
            ..Default::default()
        };
        let original = sign_receipt(&body, &key);
        let bytes = original.encode_to_vec();
        let expected = Expected {
            message_id: "m-1",
            sender: "NL",
            recipient: "BR",
            envelope_digest: &digest,
        };
        let check = |bytes: &[u8]| -> Option<Receipt> {
            let r = Receipt::decode(bytes).ok()?;
            verify_receipt_for(&r, &key.verifying_key(), &expected).ok()?;
            Some(r)
        };
        assert!(check(&bytes).is_some(), "the seed is valid");
        runner()
            .run(&mutations(), |m| {
                if let Some(r) = check(&apply(&bytes, &m)) {
                    prop_assert_eq!(r, original.clone(), "a changed receipt was accepted");
                }
                Ok(())
            })
            .unwrap();
        runner()
            .run(&random_bytes(), |b| {
                prop_assert!(check(&b).is_none());
                Ok(())
            })
            .unwrap();
    }
}

mod agreements {
    use super::*;
    use crate::agreement::Agreement;
    use crate::agreement::tests::{doc, test_party, write_signed};

    #[test]
    fn malformed_mutated_agreement_files_never_come_into_force() {
        let (nl, br) = (test_party("NL"), test_party("BR"));
        let seed_dir = tempfile::tempdir().unwrap();
        let path = write_signed(seed_dir.path(), &doc(&[&nl, &br]), &[&nl, &br]);
        let original = std::fs::read(&path).unwrap();
        let now = crate::envelope::now_ms();
        assert!(
            Agreement::load(&path).unwrap().is_active(now),
            "the seed is in force"
        );
        let sigs: Vec<_> = ["NL", "BR"]
            .iter()
            .map(|a| {
                let p = crate::agreement::signature_path(&path, a);
                (
                    p.file_name().unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        runner()
            .run(&mutations(), |m| {
                let mutated = apply(&original, &m);
                let dir = tempfile::tempdir().unwrap();
                let file = dir.path().join(path.file_name().unwrap());
                std::fs::write(&file, &mutated).unwrap();
                for (name, bytes) in &sigs {
                    std::fs::write(dir.path().join(name), bytes).unwrap();
                }
                if let Ok(a) = Agreement::load(&file) {
                    prop_assert!(
                        mutated == original || !a.is_active(now),
                        "a changed agreement file came into force"
                    );
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn malformed_party_cards_and_configs_give_clean_errors() {
        let card = test_party("NL").card.to_toml().unwrap();
        let config = crate::config::NodeConfig {
            admin: "NL".into(),
            data_dir: ".".into(),
            listen: "127.0.0.1:7001".parse().unwrap(),
            gateway_listen: "127.0.0.1:7101".parse().unwrap(),
            agreements_dir: "agreements".into(),
            limits: Default::default(),
            ledger: Default::default(),
            delivery: Default::default(),
            aeo: Default::default(),
            observability: Default::default(),
        }
        .to_commented_toml();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("node.toml");
        runner()
            .run(&mutations(), |m| {
                if let Ok(text) = String::from_utf8(apply(card.as_bytes(), &m)) {
                    let _ = crate::identity::card::PartyCard::from_toml(&text);
                }
                std::fs::write(&config_path, apply(config.as_bytes(), &m)).unwrap();
                if let Err(e) = crate::config::NodeConfig::load(&config_path) {
                    // One line, naming the file.
                    let text = e.to_string();
                    prop_assert!(text.contains("node.toml"), "{}", text);
                }
                Ok(())
            })
            .unwrap();
    }
}

mod ledger {
    use super::*;
    use crate::envelope::bulk::batch_tree;
    use crate::ledger::checkpoint::{NoteSigner, NoteVerifier, checkpoint_text, parse_checkpoint};
    use crate::ledger::export::{parse_tlog_proof, tlog_proof_text, verify_tlog_proof};
    use crate::ledger::proof::{verify_consistency, verify_inclusion};

    fn signer() -> (NoteSigner, NoteVerifier) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
        let verifier = NoteVerifier::new("dccf.example/NL", key.verifying_key()).unwrap();
        (NoteSigner::new("dccf.example/NL", key).unwrap(), verifier)
    }

    #[test]
    fn malformed_checkpoint_notes_verify_only_as_signed() {
        let (signer, verifier) = signer();
        let text = checkpoint_text("dccf.example/NL", 5, &[9u8; 32]);
        let note = signer.sign(&text).unwrap();
        assert!(verifier.verify(&note).is_ok(), "the seed is valid");
        runner()
            .run(&mutations(), |m| {
                let Ok(mutated) = String::from_utf8(apply(note.as_bytes(), &m)) else {
                    return Ok(());
                };
                if let Ok(t) = verifier.verify(&mutated) {
                    // Extra signature lines are allowed by C2SP; the signed text is not changed.
                    prop_assert_eq!(t, text.as_str());
                    prop_assert_eq!(
                        parse_checkpoint(t).unwrap(),
                        ("dccf.example/NL".to_owned(), 5, [9u8; 32])
                    );
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn malformed_tlog_proofs_verify_only_as_made() {
        let (signer, verifier) = signer();
        let leaves: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 40]).collect();
        let refs: Vec<&[u8]> = leaves.iter().map(Vec::as_slice).collect();
        let (root, paths) = batch_tree(&refs).unwrap();
        let note = signer
            .sign(&checkpoint_text("dccf.example/NL", 5, &root))
            .unwrap();
        let text = tlog_proof_text(2, &paths[2], &note, None);
        let vkey = signer.verifier_key();
        let _ = verifier;
        let seed = parse_tlog_proof(&text).unwrap();
        verify_tlog_proof(&seed, &leaves[2], &vkey).expect("the seed is valid");
        runner()
            .run(&mutations(), |m| {
                let Ok(mutated) = String::from_utf8(apply(text.as_bytes(), &m)) else {
                    return Ok(());
                };
                if let Ok(proof) = parse_tlog_proof(&mutated)
                    && verify_tlog_proof(&proof, &leaves[2], &vkey).is_ok()
                {
                    prop_assert_eq!(proof.index, 2);
                    prop_assert_eq!(&proof.hashes, &paths[2]);
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn malformed_random_proofs_never_verify_or_panic() {
        let leaves: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 8]).collect();
        let refs: Vec<&[u8]> = leaves.iter().map(Vec::as_slice).collect();
        let (root, _) = batch_tree(&refs).unwrap();
        let hashes = proptest::collection::vec(any::<[u8; 32]>(), 0..70);
        runner()
            .run(
                &(any::<u64>(), any::<u64>(), any::<u64>(), hashes),
                |(index, size1, size2, proof)| {
                    let leaf = crate::ledger::merkle::leaf_hash(&leaves[0]);
                    prop_assert!(verify_inclusion(&leaf, index, size2, &proof, &root).is_err());
                    if size1 != size2 && size1 != 0 {
                        prop_assert!(
                            verify_consistency(size1, size2, &proof, &[1u8; 32], &root).is_err()
                        );
                    }
                    Ok(())
                },
            )
            .unwrap();
    }
}

mod aeo {
    use prost::Message;

    use super::*;
    use crate::aeo::import::{Format, parse};
    use crate::proto::v1::{AeoBatchHeader, AeoSignedBatch};

    #[test]
    fn malformed_registry_files_give_clean_errors_or_valid_records() {
        let csv: Vec<_> = crate::aeo::generate::generate("BR", 20, 7).collect();
        let mut csv_bytes = Vec::new();
        crate::aeo::import::write(Format::Csv, &csv, &mut csv_bytes).unwrap();
        let mut json_bytes = Vec::new();
        crate::aeo::import::write(Format::Json, &csv, &mut json_bytes).unwrap();
        for (format, seed) in [(Format::Csv, &csv_bytes), (Format::Json, &json_bytes)] {
            assert_eq!(parse(format, seed).unwrap().len(), 20, "the seed is valid");
            runner()
                .run(&(mutations(), random_bytes()), |(m, random)| {
                    for bytes in [apply(seed, &m), random] {
                        if let Ok(records) = parse(format, &bytes) {
                            for r in &records {
                                prop_assert!(crate::aeo::import::validate(r).is_ok());
                            }
                        }
                    }
                    Ok(())
                })
                .unwrap();
        }
    }

    #[test]
    fn malformed_signed_batches_are_refused_unless_unchanged() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[4u8; 32]);
        let leaves: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 30]).collect();
        let original = crate::aeo::statement::sign(
            AeoBatchHeader {
                publisher: "BR".into(),
                kind: crate::proto::v1::AeoBatchKind::Delta as i32,
                ..Default::default()
            },
            leaves,
            &key,
        );
        let bytes = original.encode_to_vec();
        let check = |bytes: &[u8]| -> Option<AeoSignedBatch> {
            let b = AeoSignedBatch::decode(bytes).ok()?;
            crate::aeo::statement::verify_batch(&b, &key.verifying_key()).ok()?;
            Some(b)
        };
        assert!(check(&bytes).is_some(), "the seed is valid");
        runner()
            .run(&mutations(), |m| {
                if let Some(b) = check(&apply(&bytes, &m)) {
                    prop_assert_eq!(b, original.clone(), "a changed batch verified");
                }
                Ok(())
            })
            .unwrap();
    }
}

mod key_files {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Overwrites `file`, keeping it private (so the content, not the mode, is what is judged).
    fn replace(file: &std::path::Path, bytes: &[u8]) {
        std::fs::write(file, bytes).unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn malformed_key_files_give_clean_errors() {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::identity::IdentityPaths::new(dir.path());
        crate::identity::NodeIdentity::generate_all(
            &paths,
            "NL",
            "127.0.0.1",
            "https://127.0.0.1:7001",
        )
        .unwrap();
        let files = [
            paths.signing_key(),
            paths.hpke_key(),
            paths.node_key(),
            paths.node_cert(),
        ];
        let originals: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
        runner()
            .run(&mutations(), |m| {
                for (file, original) in files.iter().zip(&originals) {
                    let mutated = apply(original, &m);
                    replace(file, &mutated);
                    let _ = crate::identity::keys::SigningIdentity::load(&paths.signing_key());
                    let _ = crate::identity::keys::HpkeKeyPair::load(&paths.hpke_key());
                    let _ = crate::server::tls::load_key(&paths.node_key());
                    let _ = crate::server::tls::load_certs(&paths.node_cert());
                    let _ = crate::server::tls::ReloadingCert::load(
                        &paths.node_cert(),
                        &paths.node_key(),
                    );
                    replace(file, original);
                }
                Ok(())
            })
            .unwrap();
    }
}
