//! Notes, keys, cosignatures: checks of the checkpoint, the log's key, the witness list and
//! cosigned checkpoints, shared by writing and verifying an export.

use std::collections::BTreeMap;

use super::{COSIGNATURES_DIR, ExportError};
use crate::ledger::checkpoint::{CosignatureVerifier, NoteVerifier, parse_checkpoint, split_note};
use crate::ledger::merkle::{Frontier, empty_root};
use crate::ledger::proof::Hash;

pub(super) fn hex32(h: &Hash) -> String {
    hex::encode(h)
}

/// Strips one trailing newline from a key given as a string.
pub(super) fn key_line(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

/// The verified checkpoint of an export: verifier, origin, size, root.
pub(super) struct Checked {
    verifier: NoteVerifier,
    pub(super) origin: String,
    pub(super) size: u64,
    pub(super) root: Hash,
}

pub(super) fn check_checkpoint(vkey: &str, note: &str) -> Result<Checked, ExportError> {
    let verifier = NoteVerifier::from_key_string(key_line(vkey)).map_err(ExportError::BadVkey)?;
    let text = verifier
        .verify(note)
        .map_err(ExportError::CheckpointSignature)?;
    let (origin, size, root) = parse_checkpoint(text).map_err(ExportError::MalformedCheckpoint)?;
    if origin != verifier.name() {
        return Err(ExportError::OriginMismatch {
            origin,
            key_name: verifier.name().to_owned(),
        });
    }
    Ok(Checked {
        verifier,
        origin,
        size,
        root,
    })
}

pub(super) fn parse_witnesses(
    keys: &[String],
    log_name: &str,
) -> Result<Vec<CosignatureVerifier>, ExportError> {
    let mut out: Vec<CosignatureVerifier> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let w = CosignatureVerifier::from_key_string(key_line(key)).map_err(|source| {
            ExportError::BadWitnessKey {
                line: i + 1,
                source,
            }
        })?;
        if w.name() == log_name || out.iter().any(|o| o.name() == w.name()) {
            return Err(ExportError::DuplicateWitness {
                name: w.name().to_owned(),
            });
        }
        out.push(w);
    }
    Ok(out)
}

/// Checks every signature line of `note` not by the log: each must be by a listed witness and
/// verify on its own. Returns the witness names, in line order, without repeats.
pub(super) fn check_cosignature_lines(
    note: &str,
    what: &str,
    log_name: &str,
    witnesses: &[CosignatureVerifier],
) -> Result<Vec<String>, ExportError> {
    let note_err = |source| ExportError::CosignedNote {
        note: what.to_owned(),
        source,
    };
    let (text, lines) = split_note(note).map_err(note_err)?;
    // split_note parsed exactly these raw lines, in this order.
    let raw_lines = note.get(text.len() + 1..).unwrap_or("").lines();
    let mut names = Vec::new();
    for (raw, (name, _)) in raw_lines.zip(lines) {
        if name == log_name {
            continue;
        }
        let Some(w) = witnesses.iter().find(|w| w.name() == name) else {
            return Err(ExportError::UnlistedWitness {
                note: what.to_owned(),
                name: name.to_owned(),
            });
        };
        w.verify(&format!("{text}\n{raw}\n"))
            .map_err(|source| ExportError::BadCosignature {
                note: what.to_owned(),
                witness: name.to_owned(),
                source,
            })?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// A verified cosigned checkpoint: its size, signed root, witnesses and the note itself.
pub(super) struct Cosigned {
    pub(super) size: u64,
    root: Hash,
    pub(super) witnesses: Vec<String>,
    pub(super) note: String,
}

pub(super) fn check_cosigned(
    note: &str,
    what: &str,
    cp: &Checked,
    witnesses: &[CosignatureVerifier],
) -> Result<Cosigned, ExportError> {
    let note_err = |source| ExportError::CosignedNote {
        note: what.to_owned(),
        source,
    };
    let text = cp.verifier.verify(note).map_err(note_err)?;
    let (origin, size, root) = parse_checkpoint(text).map_err(note_err)?;
    if origin != cp.origin {
        return Err(ExportError::CosignedOrigin {
            note: what.to_owned(),
            origin,
        });
    }
    if size > cp.size {
        return Err(ExportError::CosignedBeyondCheckpoint {
            note: what.to_owned(),
            size,
            checkpoint_size: cp.size,
        });
    }
    let names = check_cosignature_lines(note, what, &cp.origin, witnesses)?;
    if names.is_empty() {
        return Err(ExportError::NotCosigned {
            note: what.to_owned(),
        });
    }
    Ok(Cosigned {
        size,
        root,
        witnesses: names,
        note: note.to_owned(),
    })
}

pub(super) fn cosigned_path(size: u64) -> String {
    format!("{COSIGNATURES_DIR}/{size}")
}

/// Records the tree roots at the sizes of cosigned checkpoints while entries stream by.
pub(super) struct RootsAt {
    wanted: BTreeMap<u64, Option<Hash>>,
}

impl RootsAt {
    pub(super) fn new(sizes: impl Iterator<Item = u64>) -> RootsAt {
        let mut wanted: BTreeMap<u64, Option<Hash>> = sizes.map(|s| (s, None)).collect();
        if let Some(slot) = wanted.get_mut(&0) {
            *slot = Some(empty_root());
        }
        RootsAt { wanted }
    }

    pub(super) fn after_push(&mut self, frontier: &Frontier) {
        if let Some(slot) = self.wanted.get_mut(&frontier.size()) {
            *slot = Some(frontier.root());
        }
    }

    pub(super) fn check(&self, cosigned: &[Cosigned]) -> Result<(), ExportError> {
        for c in cosigned {
            let computed = self
                .wanted
                .get(&c.size)
                .copied()
                .flatten()
                .unwrap_or_else(empty_root);
            if computed != c.root {
                return Err(ExportError::CosignedRootMismatch {
                    note: cosigned_path(c.size),
                    size: c.size,
                    signed: hex32(&c.root),
                    computed: hex32(&computed),
                });
            }
        }
        Ok(())
    }
}
