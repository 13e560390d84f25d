//! Verifying an export offline ([`verify_export`], [`read_entries`]).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use super::notes::{
    Checked, Cosigned, RootsAt, check_checkpoint, check_cosignature_lines, check_cosigned, hex32,
    parse_witnesses,
};
use super::tiles::{Tile, TileBuilder, TileLevel, plan_bundles, tile_width};
use super::{
    CHECKPOINT_FILE, COSIGNATURES_DIR, ExportError, MAX_LEAF_LEN, TILE_DIR, TILE_WIDTH, VKEY_FILE,
    WITNESSES_FILE,
};
use crate::ledger::checkpoint::CosignatureVerifier;
use crate::ledger::entry::LedgerEntry;
use crate::ledger::merkle::{Frontier, leaf_hash};
use crate::ledger::proof::Hash;

/// Largest checkpoint, key or cosigned-note file [`verify_export`] reads.
pub const MAX_NOTE_FILE: u64 = 1 << 20;

/// What [`verify_export`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The log's origin (e.g. `dccf.example/NL`).
    pub origin: String,
    /// The checkpoint's tree size.
    pub size: u64,
    /// The checkpoint's root.
    pub root: [u8; 32],
    /// Number of entries read and hashed (equals `size`).
    pub entries: u64,
    /// Number of hash tiles checked (entry bundles not counted).
    pub tiles: usize,
    /// Every verified cosignature: (witness name, tree size it cosigned), the checkpoint's own
    /// first, then the `cosignatures/` files by size.
    pub cosignatures: Vec<(String, u64)>,
}

fn rel_io(dir: &Path, rel: &str) -> impl FnOnce(io::Error) -> ExportError {
    let path = dir.join(rel);
    move |source| ExportError::Io { path, source }
}

/// Reads a small text file of the export, refusing missing, oversized and non-UTF-8 files.
fn read_note_file(dir: &Path, rel: &str) -> Result<String, ExportError> {
    let path = dir.join(rel);
    let meta = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExportError::MissingFile {
                path: rel.to_owned(),
            });
        }
        other => other.map_err(rel_io(dir, rel))?,
    };
    if !meta.is_file() {
        return Err(ExportError::UnexpectedFile {
            path: rel.to_owned(),
        });
    }
    if meta.len() > MAX_NOTE_FILE {
        return Err(ExportError::FileTooLarge {
            path: rel.to_owned(),
            len: meta.len(),
            max: MAX_NOTE_FILE,
        });
    }
    let bytes = fs::read(&path).map_err(rel_io(dir, rel))?;
    String::from_utf8(bytes).map_err(|_| ExportError::NotUtf8 {
        path: rel.to_owned(),
    })
}

/// Reads a tile or bundle of at most `max` bytes; `Err(len)` if it is longer.
fn read_tile_file(dir: &Path, rel: &str, max: u64) -> Result<Result<Vec<u8>, u64>, ExportError> {
    let path = dir.join(rel);
    let meta = match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExportError::MissingFile {
                path: rel.to_owned(),
            });
        }
        other => other.map_err(rel_io(dir, rel))?,
    };
    if !meta.is_file() {
        return Err(ExportError::UnexpectedFile {
            path: rel.to_owned(),
        });
    }
    if meta.len() > max {
        return Ok(Err(meta.len()));
    }
    Ok(Ok(fs::read(&path).map_err(rel_io(dir, rel))?))
}

/// Splits an entry bundle into exactly `width` leaves.
fn split_bundle<'b>(
    bytes: &'b [u8],
    tile: &Tile,
    path: &str,
) -> Result<Vec<&'b [u8]>, ExportError> {
    let first = tile.index * TILE_WIDTH;
    let mut leaves = Vec::with_capacity(usize::from(tile.width));
    let mut rest = bytes;
    for k in 0..u64::from(tile.width) {
        let truncated = || ExportError::BundleTruncated {
            path: path.to_owned(),
            index: first + k,
        };
        let (len, after) = rest.split_first_chunk::<2>().ok_or_else(truncated)?;
        let len = usize::from(u16::from_be_bytes(*len));
        if after.len() < len {
            return Err(truncated());
        }
        let (leaf, after) = after.split_at(len);
        leaves.push(leaf);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(ExportError::BundleTrailingBytes {
            path: path.to_owned(),
            last_index: first + u64::from(tile.width) - 1,
            bytes: rest.len(),
        });
    }
    Ok(leaves)
}

fn read_vkey_file(dir: &Path) -> Result<String, ExportError> {
    let raw = read_note_file(dir, VKEY_FILE)?;
    match raw.strip_suffix('\n') {
        Some(key) if !key.is_empty() && !key.contains('\n') => Ok(key.to_owned()),
        _ => Err(ExportError::MalformedVkeyFile),
    }
}

fn read_witness_file(dir: &Path) -> Result<Vec<String>, ExportError> {
    let raw = read_note_file(dir, WITNESSES_FILE)?;
    let mut keys = Vec::new();
    let mut rest = raw.as_str();
    while !rest.is_empty() {
        let line = keys.len() + 1;
        let (key, after) = rest
            .split_once('\n')
            .ok_or(ExportError::MalformedWitnessList { line })?;
        if key.is_empty() {
            return Err(ExportError::MalformedWitnessList { line });
        }
        keys.push(key.to_owned());
        rest = after;
    }
    Ok(keys)
}

/// Reads and checks every `cosignatures/<size>` file, in size order.
fn read_cosigned_dir(
    dir: &Path,
    cp: &Checked,
    witnesses: &[CosignatureVerifier],
) -> Result<Vec<Cosigned>, ExportError> {
    let cdir = dir.join(COSIGNATURES_DIR);
    let listing = match fs::read_dir(&cdir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.map_err(rel_io(dir, COSIGNATURES_DIR))?,
    };
    let mut sizes = BTreeMap::new();
    for entry in listing {
        let entry = entry.map_err(rel_io(dir, COSIGNATURES_DIR))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{COSIGNATURES_DIR}/{name}");
        match name.parse::<u64>() {
            Ok(size) if size.to_string() == name => {
                sizes.insert(size, rel);
            }
            _ => return Err(ExportError::UnexpectedFile { path: rel }),
        }
    }
    let mut out = Vec::new();
    for (size, rel) in sizes {
        let note = read_note_file(dir, &rel)?;
        let c = check_cosigned(&note, &rel, cp, witnesses)?;
        if c.size != size {
            return Err(ExportError::CosignedSizeMismatch {
                note: rel,
                size: c.size,
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// The first level-0 disagreement between an entry and its tile.
struct EntryTileMismatch {
    index: u64,
    bundle: String,
    tile: String,
    position: usize,
}

/// Walks the export for files the layout has no place for.
fn check_no_extra_files(dir: &Path, size: u64) -> Result<(), ExportError> {
    let top = fs::read_dir(dir).map_err(|source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in top {
        let entry = entry.map_err(|source| ExportError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    for name in names {
        let meta = fs::symlink_metadata(dir.join(&name)).map_err(rel_io(dir, &name))?;
        let ok = match name.as_str() {
            CHECKPOINT_FILE | VKEY_FILE | WITNESSES_FILE => meta.is_file(),
            COSIGNATURES_DIR => meta.is_dir(), // its files were checked one by one
            TILE_DIR => meta.is_dir(),
            _ => false,
        };
        if !ok {
            return Err(ExportError::UnexpectedFile { path: name });
        }
    }
    let mut files = Vec::new();
    walk_files(dir, TILE_DIR, &mut files)?;
    files.sort();
    for rel in files {
        let expected = Tile::from_path(&rel)
            .is_some_and(|t| tile_width(size, t.level, t.index) == Some(t.width));
        if !expected {
            return Err(ExportError::UnexpectedFile { path: rel });
        }
    }
    Ok(())
}

/// Collects every non-directory under `dir/rel`, as paths relative to `dir`.
pub(super) fn walk_files(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), ExportError> {
    let listing = match fs::read_dir(dir.join(rel)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.map_err(rel_io(dir, rel))?,
    };
    for entry in listing {
        let entry = entry.map_err(rel_io(dir, rel))?;
        let child = format!("{rel}/{}", entry.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(dir.join(&child)).map_err(rel_io(dir, &child))?;
        if meta.is_dir() {
            walk_files(dir, &child, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

/// The whole offline check; `on_leaf` sees every leaf in index order.
fn verify_with(
    dir: &Path,
    on_leaf: &mut dyn FnMut(u64, &[u8]),
) -> Result<VerifyReport, ExportError> {
    // Name the directory itself when it is not there, rather than its first missing file.
    std::fs::read_dir(dir).map_err(|source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let vkey = read_vkey_file(dir)?;
    let note = read_note_file(dir, CHECKPOINT_FILE)?;
    let cp = check_checkpoint(&vkey, &note)?;
    let witnesses = parse_witnesses(&read_witness_file(dir)?, &cp.origin)?;
    let mut cosignatures: Vec<(String, u64)> =
        check_cosignature_lines(&note, CHECKPOINT_FILE, &cp.origin, &witnesses)?
            .into_iter()
            .map(|w| (w, cp.size))
            .collect();
    let cosigned = read_cosigned_dir(dir, &cp, &witnesses)?;
    for c in &cosigned {
        cosignatures.extend(c.witnesses.iter().map(|w| (w.clone(), c.size)));
    }

    let mut frontier = Frontier::new();
    let mut roots = RootsAt::new(cosigned.iter().map(|c| c.size));
    let mut builder = TileBuilder::default();
    let mut tiles = 0usize;
    let mut entry_mismatch: Option<EntryTileMismatch> = None;
    let mut tile_mismatch: Option<(String, usize, &'static str)> = None;
    {
        let bundle_name = std::cell::RefCell::new(String::new());
        let mut check_tile = |tile: Tile, expected: &[Hash]| -> Result<(), ExportError> {
            tiles += 1;
            let path = tile.path();
            let want = expected.len() as u64 * 32;
            let bytes =
                read_tile_file(dir, &path, want)?.map_err(|len| ExportError::TileWrongLength {
                    path: path.clone(),
                    len,
                    expected: want,
                })?;
            if bytes.len() as u64 != want {
                return Err(ExportError::TileWrongLength {
                    path,
                    len: bytes.len() as u64,
                    expected: want,
                });
            }
            let found = bytes
                .chunks_exact(32)
                .zip(expected)
                .position(|(f, e)| f != e);
            if let Some(position) = found {
                let level0 = tile.level == TileLevel::Hashes(0);
                if level0 && entry_mismatch.is_none() {
                    entry_mismatch = Some(EntryTileMismatch {
                        index: tile.index * TILE_WIDTH + position as u64,
                        bundle: bundle_name.borrow().clone(),
                        tile: path.clone(),
                        position,
                    });
                }
                if tile_mismatch.is_none() {
                    let what = if level0 {
                        "it is not the leaf hash of its entry"
                    } else {
                        "it is not the root of the full tile below"
                    };
                    tile_mismatch = Some((path, position, what));
                }
            }
            Ok(())
        };
        for bundle in plan_bundles(cp.size) {
            let path = bundle.path();
            let max = u64::from(bundle.width) * (2 + MAX_LEAF_LEN as u64);
            let bytes =
                read_tile_file(dir, &path, max)?.map_err(|len| ExportError::FileTooLarge {
                    path: path.clone(),
                    len,
                    max,
                })?;
            let leaves = split_bundle(&bytes, &bundle, &path)?;
            *bundle_name.borrow_mut() = path.clone();
            for (k, leaf) in leaves.into_iter().enumerate() {
                let index = bundle.index * TILE_WIDTH + k as u64;
                on_leaf(index, leaf);
                let hash = leaf_hash(leaf);
                frontier.push(hash);
                roots.after_push(&frontier);
                builder.push(hash, &mut check_tile)?;
            }
        }
        builder.finish(&mut check_tile)?;
    }

    let root = frontier.root();
    if root != cp.root {
        return Err(match entry_mismatch {
            Some(m) => ExportError::EntryMismatch {
                index: m.index,
                bundle: m.bundle,
                tile: m.tile,
                position: m.position,
            },
            None => ExportError::EntriesRootMismatch {
                size: cp.size,
                computed: hex32(&root),
                checkpoint: hex32(&cp.root),
                first_bad_tile: tile_mismatch.map(|(path, _, _)| path),
            },
        });
    }
    if let Some((path, position, what)) = tile_mismatch {
        return Err(ExportError::TileMismatch {
            path,
            position,
            what,
        });
    }
    roots.check(&cosigned)?;
    check_no_extra_files(dir, cp.size)?;
    Ok(VerifyReport {
        origin: cp.origin,
        size: cp.size,
        root: cp.root,
        entries: frontier.size(),
        tiles,
        cosignatures,
    })
}

/// Checks an export offline, trusting only its `vkey`: the checkpoint signature; every entry
/// bundle present and well-formed (right count, no trailing bytes); the entries' root equals
/// the checkpoint root; every hash tile present and exactly what the entries give (level 0 the
/// leaf hashes, each upper hash the root of the full tile below); no extra files; every
/// `cosignatures/<size>` file log-signed, no larger than the checkpoint, with the tree root at
/// its size, and every cosignature line there and in `checkpoint` by a listed witness and valid.
///
/// The error names the first bad entry (by index) or tile (by path) found.
pub fn verify_export(dir: &Path) -> Result<VerifyReport, ExportError> {
    verify_with(dir, &mut |_, _| {})
}

/// Verifies an export ([`verify_export`]) and returns its entries, parsed, with their indices.
pub fn read_entries(dir: &Path) -> Result<(VerifyReport, Vec<(u64, LedgerEntry)>), ExportError> {
    let mut entries = Vec::new();
    let mut first_bad: Option<(u64, prost::DecodeError)> = None;
    let report = verify_with(dir, &mut |index, leaf| {
        if first_bad.is_some() {
            return;
        }
        match crate::ledger::entry::parse(leaf) {
            Ok(e) => entries.push((index, e)),
            Err(e) => first_bad = Some((index, e)),
        }
    })?;
    // Reported only once the export verified, so that an altered entry is named as such.
    if let Some((index, source)) = first_bad {
        return Err(ExportError::EntryDecode { index, source });
    }
    Ok((report, entries))
}
