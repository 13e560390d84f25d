//! Tests of writing, verifying, reconciling and `tlog-proof`s, which share the fixtures below
//! (the tile tests are in `tiles`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;

use super::verify::walk_files;
use super::*;
use crate::ledger::Store;
use crate::ledger::checkpoint::{Cosigner, NoteSigner, add_signature_lines, checkpoint_text};
use crate::ledger::entry::LedgerEntry;
use crate::ledger::merkle::{Frontier, leaf_hash};
use crate::ledger::proof::{Hash, inclusion_proof, subtree_root};
use crate::proto::v1::EntryKind;

const ORIGIN: &str = "dccf.example/NL";
const WITNESS: &str = "witness.example/w1";

fn log_signer(origin: &str, seed: u8) -> NoteSigner {
    NoteSigner::new(origin, SigningKey::from_bytes(&[seed; 32])).expect("signer")
}

fn witness() -> Cosigner {
    Cosigner::new(WITNESS, SigningKey::from_bytes(&[5; 32])).expect("cosigner")
}

fn unlisted_witness() -> Cosigner {
    Cosigner::new("witness.example/w2", SigningKey::from_bytes(&[6; 32])).expect("cosigner")
}

fn digest(tag: &str) -> Vec<u8> {
    crate::envelope::sha256_parts(&[tag.as_bytes()]).to_vec()
}

/// A realistic leaf: a serialized LedgerEntry whose length varies with `i`.
fn sample_leaf(i: u64) -> Vec<u8> {
    super::super::entry::leaf(&LedgerEntry {
        kind: EntryKind::EnvelopeSent as i32,
        recorded_at_ms: 1_700_000_000_000 + i as i64,
        envelope_digest: digest(&format!("envelope-{i}")),
        peer: "BR".into(),
        message_id: format!("m-{i}"),
        detail: "x".repeat((i % 13) as usize),
        ..Default::default()
    })
}

fn store_with(leaves: &[Vec<u8>]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("ledger")).expect("open store");
    for chunk in leaves.chunks(100) {
        let mut txn = store.begin();
        for leaf in chunk {
            txn.append(leaf.clone());
        }
        txn.commit().wait_blocking().expect("commit");
    }
    assert_eq!(store.durable_head().size, leaves.len() as u64);
    (dir, store)
}

fn root_of(leaves: &[Vec<u8>]) -> Hash {
    let mut f = Frontier::new();
    for l in leaves {
        f.push(leaf_hash(l));
    }
    f.root()
}

/// A store of `n` sample entries, the log's signer and the witness.
struct Fx {
    _dir: tempfile::TempDir,
    store: Store,
    leaves: Vec<Vec<u8>>,
    log: NoteSigner,
    witness: Cosigner,
}

impl Fx {
    fn new(n: u64) -> Fx {
        let leaves: Vec<Vec<u8>> = (0..n).map(sample_leaf).collect();
        let (dir, store) = store_with(&leaves);
        Fx {
            _dir: dir,
            store,
            leaves,
            log: log_signer(ORIGIN, 9),
            witness: witness(),
        }
    }

    fn text(&self, size: u64) -> String {
        checkpoint_text(ORIGIN, size, &root_of(&self.leaves[..size as usize]))
    }

    /// Log-signed checkpoint at `size`, cosigned by the witness.
    fn cosigned(&self, size: u64) -> String {
        let text = self.text(size);
        let line = self
            .witness
            .cosign(&text, 1_700_000_000 + size)
            .expect("cosign");
        add_signature_lines(&self.log.sign(&text).expect("sign"), &[line])
    }

    fn witnesses(&self) -> Vec<String> {
        vec![self.witness.verifier_key()]
    }

    /// Exports `size` entries with a cosigned checkpoint and cosigned notes at `earlier`.
    fn export(&self, size: u64, earlier: &[u64]) -> (tempfile::TempDir, PathBuf, ExportSummary) {
        let tmp = tempfile::tempdir().expect("temp dir");
        let out = tmp.path().join("export");
        let cosigned: Vec<String> = earlier.iter().map(|s| self.cosigned(*s)).collect();
        let checkpoint = self.cosigned(size);
        let summary = write_export(
            &self.store,
            &ExportInput {
                checkpoint: &checkpoint,
                vkey: &self.log.verifier_key(),
                cosigned: &cosigned,
                witnesses: &self.witnesses(),
            },
            &out,
        )
        .unwrap_or_else(|e| panic!("export of size {size}: {e}"));
        (tmp, out, summary)
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for top in fs::read_dir(dir).expect("read export") {
        let name = top
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if dir.join(&name).is_dir() {
            walk_files(dir, &name, &mut out).expect("walk");
        } else {
            out.push(name);
        }
    }
    out.sort();
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn export_then_verify_round_trips_for_several_sizes() {
    let fx = Fx::new(600);
    for (size, earlier) in [
        (0u64, &[][..]),
        (1, &[0][..]),
        (255, &[1, 100][..]),
        (256, &[255][..]),
        (257, &[256][..]),
        (600, &[0, 257, 300, 600][..]),
    ] {
        let (_tmp, out, summary) = fx.export(size, earlier);
        let root = root_of(&fx.leaves[..size as usize]);
        let tiles: Vec<String> = plan_tiles(size).map(|t| t.path()).collect();
        let bundles: Vec<String> = plan_bundles(size).map(|t| t.path()).collect();
        assert_eq!(
            summary,
            ExportSummary {
                size,
                root,
                tiles: tiles.len(),
                bundles: bundles.len(),
                cosigned: earlier.len(),
            }
        );
        let mut expected: Vec<String> = ["checkpoint", "vkey", "witnesses"]
            .iter()
            .map(|s| s.to_string())
            .chain(tiles.iter().cloned())
            .chain(bundles)
            .chain(earlier.iter().map(|s| format!("cosignatures/{s}")))
            .collect();
        expected.sort();
        assert_eq!(files_under(&out), expected, "size {size}");

        let report = verify_export(&out).unwrap_or_else(|e| panic!("size {size}: {e}"));
        let mut cosignatures = vec![(WITNESS.to_owned(), size)];
        let mut sorted = earlier.to_vec();
        sorted.sort();
        cosignatures.extend(sorted.iter().map(|s| (WITNESS.to_owned(), *s)));
        assert_eq!(
            report,
            VerifyReport {
                origin: ORIGIN.into(),
                size,
                root,
                entries: size,
                tiles: tiles.len(),
                cosignatures,
            }
        );
        let (_, entries) = read_entries(&out).expect("read entries");
        assert_eq!(entries.len() as u64, size);
        for (i, (index, entry)) in entries.iter().enumerate() {
            assert_eq!(*index, i as u64);
            assert_eq!(entry.message_id, format!("m-{i}"));
        }
    }
}

/// The only size class with a full level-1 tile (>= 65,536 entries); slow in debug builds,
/// run with `--ignored`.
#[test]
#[ignore = "slow: 70,000 entries"]
fn export_of_70000_entries_has_full_upper_tiles() {
    let leaves: Vec<Vec<u8>> = (0..70_000u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("ledger")).expect("open store");
    for chunk in leaves.chunks(5_000) {
        let mut txn = store.begin();
        for leaf in chunk {
            txn.append(leaf.clone());
        }
        txn.commit().wait_blocking().expect("commit");
    }
    let log = log_signer(ORIGIN, 9);
    let out = dir.path().join("export");
    let summary = write_export(
        &store,
        &ExportInput {
            checkpoint: &log
                .sign(&checkpoint_text(ORIGIN, 70_000, &root_of(&leaves)))
                .expect("sign"),
            vkey: &log.verifier_key(),
            cosigned: &[],
            witnesses: &[],
        },
        &out,
    )
    .expect("export");
    assert_eq!((summary.tiles, summary.bundles), (277, 274));
    let l1 = fs::read(out.join("tile/1/000")).expect("full level-1 tile");
    assert_eq!(
        &l1[32 * 255..],
        &subtree_root(&store, 255 * 256, 256 * 256).expect("root")
    );
    let l2 = fs::read(out.join("tile/2/000.p/1")).expect("level-2 tile");
    assert_eq!(&l2[..], &subtree_root(&store, 0, 65_536).expect("root"));
    assert_eq!(verify_export(&out).expect("verifies").tiles, 277);
    edit(&out, "tile/1/000", |b| b[32 * 200] ^= 1);
    let err = verify_export(&out).expect_err("tampered");
    assert!(
        matches!(err, ExportError::TileMismatch { ref path, position: 200, .. } if path == "tile/1/000"),
        "{err}"
    );
}

#[test]
fn export_files_hold_the_formats_and_are_private() {
    let fx = Fx::new(600);
    let (_tmp, out, _) = fx.export(600, &[300]);
    let read = |rel: &str| fs::read(out.join(rel)).expect(rel);
    assert_eq!(
        read("vkey"),
        format!("{}\n", fx.log.verifier_key()).into_bytes()
    );
    assert_eq!(
        read("witnesses"),
        format!("{}\n", fx.witness.verifier_key()).into_bytes()
    );
    assert_eq!(read("checkpoint"), fx.cosigned(600).into_bytes());
    assert_eq!(read("cosignatures/300"), fx.cosigned(300).into_bytes());
    // Level 0: leaf hashes; level 1: roots of full level-0 tiles (MTH of 256 leaves each).
    let l0 = read("tile/0/001");
    assert_eq!(&l0[32 * 5..32 * 6], &leaf_hash(&fx.leaves[256 + 5]));
    let l1 = read("tile/1/000.p/2");
    assert_eq!(&l1[..32], &subtree_root(&fx.store, 0, 256).expect("root"));
    assert_eq!(&l1[32..], &subtree_root(&fx.store, 256, 512).expect("root"));
    // Bundles: u16 BE length-prefixed leaves.
    let b = read("tile/entries/002.p/88");
    let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
    assert_eq!(&b[2..2 + len], &fx.leaves[512][..]);
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("tile/0")), 0o700);
    assert_eq!(mode(&out.join("tile/entries/002.p")), 0o700);
    assert_eq!(mode(&out.join("checkpoint")), 0o600);
    assert_eq!(mode(&out.join("tile/entries/002.p/88")), 0o600);
}

#[test]
fn export_into_an_existing_empty_directory() {
    let fx = Fx::new(3);
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("empty");
    fs::create_dir(&out).expect("mkdir");
    let summary = write_export(
        &fx.store,
        &ExportInput {
            checkpoint: &fx.log.sign(&fx.text(3)).expect("sign"),
            vkey: &fx.log.verifier_key(),
            cosigned: &[],
            witnesses: &[],
        },
        &out,
    )
    .expect("export");
    assert_eq!(summary.size, 3);
    assert_eq!(fs::read(out.join("witnesses")).expect("witnesses"), b"");
    verify_export(&out).expect("verifies");
}

/// Runs `write_export` with the given pieces and checks that it failed without leaving
/// anything behind.
fn export_fails(
    fx: &Fx,
    checkpoint: &str,
    cosigned: &[String],
    witnesses: &[String],
) -> ExportError {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("export");
    let err = write_export(
        &fx.store,
        &ExportInput {
            checkpoint,
            vkey: &fx.log.verifier_key(),
            cosigned,
            witnesses,
        },
        &out,
    )
    .expect_err("export must fail");
    let left: Vec<_> = fs::read_dir(tmp.path()).expect("list").collect();
    assert!(
        left.is_empty(),
        "a failed export left {left:?} behind ({err})"
    );
    err
}

#[test]
fn export_refuses_bad_input_and_leaves_nothing() {
    let fx = Fx::new(300);
    let wrong_root = fx
        .log
        .sign(&checkpoint_text(ORIGIN, 300, &[7; 32]))
        .expect("sign");
    assert!(matches!(
        export_fails(&fx, &wrong_root, &[], &[]),
        ExportError::StoreRootMismatch { size: 300, .. }
    ));
    let too_big = fx
        .log
        .sign(&checkpoint_text(ORIGIN, 301, &[7; 32]))
        .expect("sign");
    assert!(matches!(
        export_fails(&fx, &too_big, &[], &[]),
        ExportError::BeyondDurable {
            size: 301,
            durable: 300
        }
    ));
    let other_key = log_signer(ORIGIN, 8).sign(&fx.text(300)).expect("sign");
    assert!(matches!(
        export_fails(&fx, &other_key, &[], &[]),
        ExportError::CheckpointSignature(_)
    ));
    let other_origin = log_signer("dccf.example/BR", 9)
        .sign(&checkpoint_text(
            "dccf.example/BR",
            300,
            &root_of(&fx.leaves),
        ))
        .expect("sign");
    let tmp = tempfile::tempdir().expect("temp dir");
    let err = write_export(
        &fx.store,
        &ExportInput {
            checkpoint: &other_origin,
            vkey: &log_signer("dccf.example/NL", 9).verifier_key(),
            cosigned: &[],
            witnesses: &[],
        },
        &tmp.path().join("x"),
    )
    .expect_err("wrong key name");
    assert!(matches!(err, ExportError::CheckpointSignature(_)), "{err}");
    // Cosignatures: unlisted witness, cosigned note whose root is not the tree's.
    let cp = fx.cosigned(300);
    assert!(matches!(
        export_fails(&fx, &cp, &[], &[]),
        ExportError::UnlistedWitness { ref note, ref name } if note == "checkpoint" && name == WITNESS
    ));
    let fork_text = checkpoint_text(ORIGIN, 100, &[3; 32]);
    let fork = add_signature_lines(
        &fx.log.sign(&fork_text).expect("sign"),
        &[fx.witness.cosign(&fork_text, 1).expect("cosign")],
    );
    assert!(matches!(
        export_fails(&fx, &cp, &[fork], &fx.witnesses()),
        ExportError::CosignedRootMismatch { size: 100, .. }
    ));
    let beyond = fx
        .log
        .sign(&checkpoint_text(ORIGIN, 301, &[3; 32]))
        .expect("sign");
    assert!(matches!(
        export_fails(&fx, &cp, &[beyond], &fx.witnesses()),
        ExportError::CosignedNote { .. } | ExportError::CosignedBeyondCheckpoint { .. }
    ));
    let uncosigned = fx.log.sign(&fx.text(100)).expect("sign");
    assert!(matches!(
        export_fails(&fx, &cp, &[uncosigned], &fx.witnesses()),
        ExportError::NotCosigned { .. }
    ));
    assert!(matches!(
        export_fails(
            &fx,
            &cp,
            &[fx.cosigned(10), fx.cosigned(10)],
            &fx.witnesses()
        ),
        ExportError::DuplicateCosignedSize { size: 10 }
    ));
    assert!(matches!(
        export_fails(&fx, &cp, &[], &["not a key".to_owned()]),
        ExportError::BadWitnessKey { line: 1, .. }
    ));
    // A non-empty target is refused before anything is written.
    let tmp = tempfile::tempdir().expect("temp dir");
    fs::write(tmp.path().join("keep"), b"x").expect("write");
    let err = write_export(
        &fx.store,
        &ExportInput {
            checkpoint: &cp,
            vkey: &fx.log.verifier_key(),
            cosigned: &[],
            witnesses: &fx.witnesses(),
        },
        tmp.path(),
    )
    .expect_err("non-empty target");
    assert!(matches!(err, ExportError::OutputExists { .. }), "{err}");
}

#[test]
fn export_refuses_a_leaf_too_large_for_a_bundle() {
    let leaves = vec![b"small".to_vec(), vec![7u8; MAX_LEAF_LEN + 1]];
    let (_dir, store) = store_with(&leaves);
    let log = log_signer(ORIGIN, 9);
    let tmp = tempfile::tempdir().expect("temp dir");
    let err = write_export(
        &store,
        &ExportInput {
            checkpoint: &log
                .sign(&checkpoint_text(ORIGIN, 2, &root_of(&leaves)))
                .expect("sign"),
            vkey: &log.verifier_key(),
            cosigned: &[],
            witnesses: &[],
        },
        &tmp.path().join("out"),
    )
    .expect_err("leaf too large");
    assert!(
        matches!(
            err,
            ExportError::LeafTooLarge {
                index: 1,
                len: 65536
            }
        ),
        "{err}"
    );
    assert!(!tmp.path().join("out").exists());
}

/// Exports 600 entries (cosigned at 600 and 300), applies `tamper`, and returns the error
/// `verify_export` must report.
fn tampered(tamper: impl FnOnce(&Fx, &Path)) -> ExportError {
    let fx = Fx::new(600);
    let (_tmp, out, _) = fx.export(600, &[300]);
    verify_export(&out).expect("untampered export verifies");
    tamper(&fx, &out);
    verify_export(&out).expect_err("tampered export must not verify")
}

fn edit(out: &Path, rel: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let path = out.join(rel);
    let mut bytes = fs::read(&path).expect(rel);
    f(&mut bytes);
    fs::write(&path, bytes).expect(rel);
}

/// Offset of the last data byte of the `k`-th leaf of a bundle.
fn last_byte_of_leaf(bundle: &[u8], k: usize) -> usize {
    let mut at = 0;
    for _ in 0..k {
        at += 2 + usize::from(u16::from_be_bytes([bundle[at], bundle[at + 1]]));
    }
    at + 2 + usize::from(u16::from_be_bytes([bundle[at], bundle[at + 1]])) - 1
}

#[test]
fn verify_names_a_changed_entry() {
    let err = tampered(|_, out| {
        edit(out, "tile/entries/001", |b| {
            let at = last_byte_of_leaf(b, 300 - 256);
            b[at] ^= 1;
        })
    });
    match err {
        ExportError::EntryMismatch {
            index,
            bundle,
            tile,
            position,
        } => {
            assert_eq!((index, position), (300, 44));
            assert_eq!(bundle, "tile/entries/001");
            assert_eq!(tile, "tile/0/001");
        }
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn verify_points_at_the_upper_tile_when_entry_and_level0_tile_were_both_rewritten() {
    let err = tampered(|_, out| {
        let mut changed = Vec::new();
        edit(out, "tile/entries/001", |b| {
            let end = last_byte_of_leaf(b, 300 - 256);
            b[end] ^= 1;
            let start = last_byte_of_leaf(b, 300 - 256 - 1) + 3;
            changed = b[start..=end].to_vec();
        });
        edit(out, "tile/0/001", |b| {
            b[32 * 44..32 * 45].copy_from_slice(&leaf_hash(&changed))
        });
    });
    match err {
        ExportError::EntriesRootMismatch {
            size: 600,
            first_bad_tile: Some(ref tile),
            ..
        } => assert_eq!(tile, "tile/1/000.p/2"),
        other => panic!("wrong error: {other}"),
    }
}

#[test]
fn verify_names_a_truncated_bundle() {
    let err = tampered(|_, out| {
        edit(out, "tile/entries/002.p/88", |b| {
            b.pop();
        })
    });
    assert!(
        matches!(err, ExportError::BundleTruncated { ref path, index: 599 } if path == "tile/entries/002.p/88"),
        "{err}"
    );
    // A bundle cut exactly after entry 299: entry 300 is the first one missing.
    let err = tampered(|_, out| {
        edit(out, "tile/entries/001", |b| {
            let end = last_byte_of_leaf(b, 300 - 256 - 1) + 1;
            b.truncate(end);
        })
    });
    assert!(
        matches!(err, ExportError::BundleTruncated { ref path, index: 300 } if path == "tile/entries/001"),
        "{err}"
    );
}

#[test]
fn verify_names_trailing_bytes_in_a_bundle() {
    let err = tampered(|_, out| edit(out, "tile/entries/000", |b| b.extend_from_slice(&[0, 0, 1])));
    assert!(
        matches!(err, ExportError::BundleTrailingBytes { ref path, last_index: 255, bytes: 3 } if path == "tile/entries/000"),
        "{err}"
    );
}

#[test]
fn verify_names_a_missing_bundle() {
    let err = tampered(|_, out| fs::remove_file(out.join("tile/entries/001")).expect("rm"));
    assert!(
        matches!(err, ExportError::MissingFile { ref path } if path == "tile/entries/001"),
        "{err}"
    );
}

#[test]
fn verify_names_a_changed_level0_tile() {
    let err = tampered(|_, out| edit(out, "tile/0/001", |b| b[32 * 5 + 7] ^= 0x80));
    assert!(
        matches!(err, ExportError::TileMismatch { ref path, position: 5, .. } if path == "tile/0/001"),
        "{err}"
    );
}

#[test]
fn verify_names_a_changed_level1_tile() {
    let err = tampered(|_, out| edit(out, "tile/1/000.p/2", |b| b[32 + 31] ^= 1));
    assert!(
        matches!(err, ExportError::TileMismatch { ref path, position: 1, .. } if path == "tile/1/000.p/2"),
        "{err}"
    );
    assert!(
        err.to_string().contains("root of the full tile below"),
        "{err}"
    );
}

#[test]
fn verify_names_a_missing_or_short_tile() {
    let err = tampered(|_, out| fs::remove_file(out.join("tile/0/002.p/88")).expect("rm"));
    assert!(
        matches!(err, ExportError::MissingFile { ref path } if path == "tile/0/002.p/88"),
        "{err}"
    );
    let err = tampered(|_, out| edit(out, "tile/0/000", |b| b.truncate(32 * 255)));
    assert!(
        matches!(err, ExportError::TileWrongLength { ref path, len: 8160, expected: 8192 } if path == "tile/0/000"),
        "{err}"
    );
}

#[test]
fn verify_names_extra_files() {
    for extra in [
        "tile/0/003.p/1",
        "tile/2/000.p/1",
        "tile/0/002.p/87",
        "tile/1/000",
        "tile/entries/002",
        "tile/0/x000/001",
        "notes.txt",
    ] {
        let err = tampered(|_, out| {
            let path = out.join(extra);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, [0u8; 32]).expect("write");
        });
        assert!(
            matches!(err, ExportError::UnexpectedFile { ref path } if path == extra),
            "{extra}: {err}"
        );
    }
}

#[test]
fn verify_rejects_a_checkpoint_signed_by_another_key() {
    let err = tampered(|fx, out| {
        let other = log_signer(ORIGIN, 8).sign(&fx.text(600)).expect("sign");
        fs::write(out.join("checkpoint"), other).expect("write");
    });
    assert!(matches!(err, ExportError::CheckpointSignature(_)), "{err}");
}

#[test]
fn verify_rejects_an_altered_checkpoint_root() {
    // Edited in place: the signature no longer verifies.
    let err = tampered(|_, out| {
        let note = fs::read_to_string(out.join("checkpoint")).expect("read");
        let mut lines: Vec<String> = note.split('\n').map(str::to_owned).collect();
        lines[2] = B64.encode([1u8; 32]);
        fs::write(out.join("checkpoint"), lines.join("\n")).expect("write");
    });
    assert!(matches!(err, ExportError::CheckpointSignature(_)), "{err}");
    // Validly signed by the log, but over another root: the entries do not match it.
    let err = tampered(|fx, out| {
        let note = fx
            .log
            .sign(&checkpoint_text(ORIGIN, 600, &[1; 32]))
            .expect("sign");
        fs::write(out.join("checkpoint"), note).expect("write");
    });
    assert!(
        matches!(err, ExportError::EntriesRootMismatch { size: 600, .. }),
        "{err}"
    );
}

#[test]
fn verify_rejects_a_cosignature_by_an_unlisted_witness() {
    let err = tampered(|fx, out| {
        let text = fx.text(200);
        let note = add_signature_lines(
            &fx.log.sign(&text).expect("sign"),
            &[unlisted_witness().cosign(&text, 5).expect("cosign")],
        );
        fs::write(out.join("cosignatures/200"), note).expect("write");
    });
    assert!(
        matches!(err, ExportError::UnlistedWitness { ref note, ref name }
            if note == "cosignatures/200" && name == "witness.example/w2"),
        "{err}"
    );
    let err = tampered(|fx, out| {
        let line = unlisted_witness().cosign(&fx.text(600), 5).expect("cosign");
        let note = fs::read_to_string(out.join("checkpoint")).expect("read");
        fs::write(out.join("checkpoint"), add_signature_lines(&note, &[line])).expect("write");
    });
    assert!(
        matches!(err, ExportError::UnlistedWitness { ref note, .. } if note == "checkpoint"),
        "{err}"
    );
}

#[test]
fn verify_rejects_a_cosignature_over_a_different_root() {
    let err = tampered(|fx, out| {
        // The witness cosigned a fork at size 300; its line is attached to the real note.
        let fork = checkpoint_text(ORIGIN, 300, &[2; 32]);
        let line = fx.witness.cosign(&fork, 9).expect("cosign");
        let note = add_signature_lines(&fx.log.sign(&fx.text(300)).expect("sign"), &[line]);
        fs::write(out.join("cosignatures/300"), note).expect("write");
    });
    assert!(
        matches!(err, ExportError::BadCosignature { ref note, ref witness, .. }
            if note == "cosignatures/300" && witness == WITNESS),
        "{err}"
    );
}

#[test]
fn verify_rejects_a_cosigned_checkpoint_that_does_not_match_the_entries() {
    let err = tampered(|fx, out| {
        // Log and witness both signed a tree of size 300 that is not this one (split view).
        let fork = checkpoint_text(ORIGIN, 300, &[2; 32]);
        let note = add_signature_lines(
            &fx.log.sign(&fork).expect("sign"),
            &[fx.witness.cosign(&fork, 9).expect("cosign")],
        );
        fs::write(out.join("cosignatures/300"), note).expect("write");
    });
    assert!(
        matches!(err, ExportError::CosignedRootMismatch { ref note, size: 300, .. }
            if note == "cosignatures/300"),
        "{err}"
    );
}

#[test]
fn verify_rejects_misfiled_or_oversized_cosigned_checkpoints() {
    let err = tampered(|fx, out| {
        fs::write(out.join("cosignatures/301"), fx.cosigned(300)).expect("write");
    });
    assert!(
        matches!(err, ExportError::CosignedSizeMismatch { size: 300, .. }),
        "{err}"
    );
    let err = tampered(|_, out| {
        fs::write(out.join("cosignatures/0300"), b"").expect("write");
    });
    assert!(
        matches!(err, ExportError::UnexpectedFile { ref path } if path == "cosignatures/0300"),
        "{err}"
    );
    let err = tampered(|fx, out| {
        let text = checkpoint_text(ORIGIN, 601, &[2; 32]);
        let note = add_signature_lines(
            &fx.log.sign(&text).expect("sign"),
            &[fx.witness.cosign(&text, 9).expect("cosign")],
        );
        fs::write(out.join("cosignatures/601"), note).expect("write");
    });
    assert!(
        matches!(
            err,
            ExportError::CosignedBeyondCheckpoint {
                size: 601,
                checkpoint_size: 600,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn verify_rejects_malformed_key_files() {
    let err = tampered(|_, out| {
        edit(out, "vkey", |b| {
            b.pop();
        })
    });
    assert!(matches!(err, ExportError::MalformedVkeyFile), "{err}");
    let err = tampered(|_, out| edit(out, "witnesses", |b| b.insert(0, b'\n')));
    assert!(
        matches!(err, ExportError::MalformedWitnessList { line: 1 }),
        "{err}"
    );
    let err = tampered(|_, out| fs::write(out.join("witnesses"), b"").expect("write"));
    assert!(
        matches!(err, ExportError::UnlistedWitness { ref note, .. } if note == "checkpoint"),
        "{err}"
    );
}

#[test]
fn read_entries_reports_leaves_that_are_not_ledger_entries() {
    let leaves = vec![sample_leaf(0), vec![0xff, 0xff, 0xff]];
    let (_dir, store) = store_with(&leaves);
    let log = log_signer(ORIGIN, 9);
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("out");
    write_export(
        &store,
        &ExportInput {
            checkpoint: &log
                .sign(&checkpoint_text(ORIGIN, 2, &root_of(&leaves)))
                .expect("sign"),
            vkey: &log.verifier_key(),
            cosigned: &[],
            witnesses: &[],
        },
        &out,
    )
    .expect("export");
    verify_export(&out).expect("the log itself is intact");
    let err = read_entries(&out).expect_err("leaf 1 is not a LedgerEntry");
    assert!(
        matches!(err, ExportError::EntryDecode { index: 1, .. }),
        "{err}"
    );
}

// ---- reconcile ------------------------------------------------------------------------

fn entry(kind: EntryKind, peer: &str, message_id: &str, digest_tag: &str) -> Vec<u8> {
    super::super::entry::leaf(&LedgerEntry {
        kind: kind as i32,
        recorded_at_ms: 1_700_000_000_000,
        envelope_digest: digest(digest_tag),
        peer: peer.into(),
        message_id: message_id.into(),
        ..Default::default()
    })
}

/// A store of `leaves` for `admin`, exported with a checkpoint signed by its own key.
fn exported(admin: &str, seed: u8, leaves: &[Vec<u8>]) -> (tempfile::TempDir, PathBuf) {
    let (dir, store) = store_with(leaves);
    let origin = format!("dccf.example/{admin}");
    let log = log_signer(&origin, seed);
    let out = dir.path().join("export");
    let text = checkpoint_text(&origin, leaves.len() as u64, &root_of(leaves));
    write_export(
        &store,
        &ExportInput {
            checkpoint: &log.sign(&text).expect("sign"),
            vkey: &log.verifier_key(),
            cosigned: &[],
            witnesses: &[],
        },
        &out,
    )
    .expect("export");
    (dir, out)
}

#[test]
fn reconcile_lists_every_discrepancy() {
    use EntryKind::*;
    let nl = [
        entry(EnvelopeSent, "BR", "m-1", "d1"),       // 0: matched
        entry(EnvelopeSent, "BR", "m-2", "d2"),       // 1: BR has no record
        entry(EnvelopeSent, "BR", "m-3", "d3"),       // 2: BR recorded another digest
        entry(EnvelopeSent, "BR", "m-6", "d6"),       // 3: BR rejected it: matched
        entry(EnvelopeReceived, "BR", "m-10", "d10"), // 4: matched (BR -> NL)
        entry(EnvelopeSent, "DE", "m-7", "d7"),       // 5: another partner, ignored
        entry(EnvelopeSent, "BR", "m-8", "d8a"),      // 6: conflicting sends
        entry(EnvelopeSent, "BR", "m-8", "d8b"),      // 7
        entry(DeliveryFailed, "BR", "m-2", "d2"),     // 8: context for m-2
        entry(EnvelopeSent, "BR", "m-1", "d1"),       // 9: identical duplicate, fine
    ];
    let br = [
        entry(EnvelopeReceived, "NL", "m-1", "d1"),  // 0
        entry(EnvelopeReceived, "NL", "m-3", "d3x"), // 1
        entry(EnvelopeReceived, "NL", "m-4", "d4"),  // 2: never sent by NL
        entry(EnvelopeRejected, "NL", "m-5", "d5"),  // 3: forged, never sent by NL
        entry(EnvelopeRejected, "NL", "m-6", "d6"),  // 4
        entry(EnvelopeSent, "NL", "m-10", "d10"),    // 5
        entry(EnvelopeSent, "NL", "m-11", "d11"),    // 6: NL has no record
        entry(EnvelopeReceived, "NL", "m-8", "d8a"), // 7
        entry(EnvelopeRejected, "NL", "m-1", "d1f"), // 8: forged copy of a real id
        entry(EnvelopeReceived, "DE", "m-9", "d9"),  // 9: another partner, ignored
    ];
    let (_a, a) = exported("NL", 9, &nl);
    let (_b, b) = exported("BR", 10, &br);
    let report = reconcile(&a, &b).expect("reconcile");
    assert_eq!((report.a.as_str(), report.b.as_str()), ("NL", "BR"));
    assert_eq!(report.matched, 3, "m-1, m-6 (NL -> BR) and m-10 (BR -> NL)");
    let got: Vec<(DiscrepancyKind, &str, &str)> = report
        .discrepancies
        .iter()
        .map(|d| (d.kind, d.message_id.as_str(), d.sender.as_str()))
        .collect();
    use DiscrepancyKind as K;
    assert_eq!(
        got,
        [
            (K::RejectedNeverSent, "m-1", "NL"),
            (K::MissingOnReceiver, "m-2", "NL"),
            (K::DigestMismatch, "m-3", "NL"),
            (K::ReceivedNeverSent, "m-4", "NL"),
            (K::RejectedNeverSent, "m-5", "NL"),
            (K::ConflictingSent, "m-8", "NL"),
            (K::MissingOnReceiver, "m-11", "BR"),
        ]
    );
    let text: Vec<String> = report.discrepancies.iter().map(|d| d.to_string()).collect();
    let d2 = hex::encode(digest("d2"));
    assert_eq!(
        text[1],
        format!(
            "message m-2: NL recorded it sent to BR (entry 1, digest {}…) but BR has no \
             record of it; NL also recorded the delivery as failed (entry 8, digest {}…)",
            &d2[..8],
            &d2[..8]
        )
    );
    assert!(text[0].contains("rejected by BR (entry 8"), "{}", text[0]);
    assert!(
        text[0].contains("never sent by NL with that digest"),
        "{}",
        text[0]
    );
    assert!(
        text[2].contains("BR recorded it received (entry 1"),
        "{}",
        text[2]
    );
    assert!(
        text[3].contains("NL has no record of sending it"),
        "{}",
        text[3]
    );
    assert!(
        text[4].starts_with("message m-5: rejected by BR (entry 3"),
        "{}",
        text[4]
    );
    assert!(
        text[4].contains("never sent by NL (an envelope claiming"),
        "{}",
        text[4]
    );
    assert!(
        text[5].contains("entry 6") && text[5].contains("entry 7"),
        "{}",
        text[5]
    );
    assert!(
        text[6].starts_with("message m-11: BR recorded it sent to NL (entry 6"),
        "{}",
        text[6]
    );
    // Reversing the arguments finds the same discrepancies.
    let reversed = reconcile(&b, &a).expect("reconcile");
    assert_eq!(reversed.matched, 3);
    assert_eq!(reversed.discrepancies.len(), 7);
}

#[test]
fn reconcile_refuses_unverifiable_or_same_side_exports() {
    let leaves = [entry(EntryKind::EnvelopeSent, "BR", "m-1", "d1")];
    let (_a, a) = exported("NL", 9, &leaves);
    let (_b, b) = exported("NL", 11, &leaves);
    assert!(matches!(
        reconcile(&a, &b),
        Err(ExportError::SameAdministration { ref admin }) if admin == "NL"
    ));
    let (_c, c) = exported("BR", 10, &leaves);
    fs::remove_file(c.join("tile/entries/000.p/1")).expect("rm");
    match reconcile(&a, &c) {
        Err(ExportError::InExport { dir, source }) => {
            assert_eq!(dir, c);
            assert!(
                matches!(*source, ExportError::MissingFile { .. }),
                "{source}"
            );
        }
        other => panic!("expected InExport, got {other:?}"),
    }
    assert!(administration_of("no-slash").is_err());
    assert!(administration_of("dccf.example/").is_err());
    assert_eq!(administration_of("a/b/NL").expect("admin"), "NL");
}

// ---- tlog-proof -------------------------------------------------------------------------

#[test]
fn tlog_proofs_round_trip_and_verify() {
    let fx = Fx::new(600);
    let note = fx.cosigned(600);
    let vkey = fx.log.verifier_key();
    for (index, extra) in [
        (0u64, None),
        (300, Some(&b"context"[..])),
        (599, Some(&b""[..])),
    ] {
        let hashes = inclusion_proof(&fx.store, index, 600).expect("proof");
        let text = tlog_proof_text(index, &hashes, &note, extra);
        assert!(text.starts_with("c2sp.org/tlog-proof@v1\n"));
        assert!(text.ends_with(&format!("\n\n{note}")));
        let proof = parse_tlog_proof(&text).expect("parses");
        assert_eq!(
            proof,
            TlogProof {
                index,
                hashes: hashes.clone(),
                checkpoint: note.clone(),
                extra: extra.map(<[u8]>::to_vec),
            }
        );
        verify_tlog_proof(&proof, &fx.leaves[index as usize], &vkey).expect("verifies");

        let mut altered = proof.clone();
        altered.hashes[3][0] ^= 1;
        assert!(matches!(
            verify_tlog_proof(&altered, &fx.leaves[index as usize], &vkey),
            Err(ExportError::Inclusion { .. })
        ));
        let mut moved = proof.clone();
        moved.index = (index + 1) % 600;
        assert!(matches!(
            verify_tlog_proof(&moved, &fx.leaves[index as usize], &vkey),
            Err(ExportError::Inclusion { .. })
        ));
        assert!(matches!(
            verify_tlog_proof(&proof, b"another leaf", &vkey),
            Err(ExportError::Inclusion { .. })
        ));
        let wrong = log_signer(ORIGIN, 8).verifier_key();
        assert!(matches!(
            verify_tlog_proof(&proof, &fx.leaves[index as usize], &wrong),
            Err(ExportError::CheckpointSignature(_))
        ));
    }
    // A one-entry tree: no hashes at all.
    let one = fx.log.sign(&fx.text(1)).expect("sign");
    let proof = parse_tlog_proof(&tlog_proof_text(0, &[], &one, None)).expect("parses");
    assert!(proof.hashes.is_empty());
    verify_tlog_proof(&proof, &fx.leaves[0], &vkey).expect("verifies");
}

#[test]
fn malformed_tlog_proofs_are_refused_with_their_line() {
    let h = B64.encode([1u8; 32]);
    let cp = "o/NL\n1\nAAAA\n\n\u{2014} o/NL AAAA\n";
    for (text, line) in [
        (String::new(), 1),
        ("c2sp.org/tlog-proof@v2\nindex 0\n\n".to_owned() + cp, 1),
        ("c2sp.org/tlog-proof@v1\nindex 01\n\n".to_owned() + cp, 2),
        ("c2sp.org/tlog-proof@v1\nindex -1\n\n".to_owned() + cp, 2),
        (
            "c2sp.org/tlog-proof@v1\nextra !!\nindex 0\n\n".to_owned() + cp,
            2,
        ),
        (
            "c2sp.org/tlog-proof@v1\nextra AA==\nidx 0\n\n".to_owned() + cp,
            3,
        ),
        (
            format!("c2sp.org/tlog-proof@v1\nindex 3\n{h}\nAAAA\n\n{cp}"),
            4,
        ),
        (format!("c2sp.org/tlog-proof@v1\nindex 3\n{h}\n"), 4),
        (format!("c2sp.org/tlog-proof@v1\nindex 3\n{h}\n\n"), 5),
    ] {
        match parse_tlog_proof(&text) {
            Err(ExportError::MalformedProof { line: got, .. }) => {
                assert_eq!(got, line, "{text:?}")
            }
            other => panic!("{text:?}: expected MalformedProof, got {other:?}"),
        }
    }
}

#[test]
fn an_export_from_another_source_needs_the_leaves_the_log_signed() {
    let fx = Fx::new(5);
    let checkpoint = fx.cosigned(5);
    let witnesses = fx.witnesses();
    let vkey = fx.log.verifier_key();
    let input = ExportInput {
        checkpoint: &checkpoint,
        vkey: &vkey,
        cosigned: &[],
        witnesses: &witnesses,
    };
    let leaves = |change: Option<u64>| {
        let leaves = fx.leaves.clone();
        move |i: u64| {
            let mut leaf = leaves[i as usize].clone();
            if change == Some(i) {
                leaf[0] ^= 1;
            }
            let hash = crate::ledger::merkle::leaf_hash(&leaf);
            Ok((leaf, hash))
        }
    };
    // The log's own leaves, from a source other than the store: the same export.
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("export");
    let summary = write_export_from(None, leaves(None), &input, &out).expect("export");
    assert_eq!(summary.size, 5);
    verify_export(&out).expect("verifies");
    // One leaf other than the log signed: refused, nothing written.
    let bad = tmp.path().join("bad");
    let err = write_export_from(None, leaves(Some(3)), &input, &bad).unwrap_err();
    assert!(
        matches!(err, ExportError::StoreRootMismatch { size: 5, .. }),
        "{err}"
    );
    assert!(!bad.exists());
    // A source that fails names the entry.
    let err = write_export_from(
        None,
        |index| {
            Err(ExportError::Source {
                index,
                detail: "Audit.GetEntries: unavailable".into(),
            })
        },
        &input,
        &bad,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "reading entry 0: Audit.GetEntries: unavailable"
    );
    assert!(!bad.exists());
}
