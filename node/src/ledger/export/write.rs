//! Writing an export ([`write_export`]).

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use super::notes::{
    Cosigned, RootsAt, check_checkpoint, check_cosignature_lines, check_cosigned, cosigned_path,
    hex32, key_line, parse_witnesses,
};
use super::tiles::{Tile, TileBuilder, TileLevel};
use super::{CHECKPOINT_FILE, ExportError, MAX_LEAF_LEN, TILE_WIDTH, VKEY_FILE, WITNESSES_FILE};
use crate::ledger::Store;
use crate::ledger::merkle::{Frontier, leaf_hash};
use crate::ledger::proof::Hash;

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;

/// What [`write_export`] exports.
#[derive(Clone, Copy, Debug)]
pub struct ExportInput<'a> {
    /// The checkpoint note to export: log signature plus any cosignature lines. Its tree size
    /// is the number of entries exported.
    pub checkpoint: &'a str,
    /// The log's verifier key (`<name>+<key id>+<base64>`, signed-note type 0x01).
    pub vkey: &'a str,
    /// Earlier checkpoints that witnesses cosigned, each with the log signature and the
    /// cosignature lines; written to `cosignatures/<size>`.
    pub cosigned: &'a [String],
    /// Verifier keys of the witnesses (cosigner keys, type 0x04).
    pub witnesses: &'a [String],
}

/// What [`write_export`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Number of entries (the checkpoint's tree size).
    pub size: u64,
    /// The tree root.
    pub root: [u8; 32],
    /// Number of hash tiles written (partial ones included).
    pub tiles: usize,
    /// Number of entry bundles written.
    pub bundles: usize,
    /// Number of `cosignatures/<size>` files written.
    pub cosigned: usize,
}

/// Writes files and directories (0600 / 0700) under a fresh temporary directory.
struct TempExport {
    root: PathBuf,
    dirs: BTreeSet<PathBuf>,
    keep: bool,
}

impl TempExport {
    fn create(out: &Path) -> Result<TempExport, ExportError> {
        let name = out.file_name().ok_or_else(|| ExportError::OutputUnnamed {
            path: out.to_path_buf(),
        })?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let root = parent.join(format!(
            ".{}.export-tmp-{}-{:016x}",
            name.to_string_lossy(),
            std::process::id(),
            OsRng.next_u64()
        ));
        make_dir(&root)?;
        Ok(TempExport {
            root,
            dirs: BTreeSet::new(),
            keep: false,
        })
    }

    fn ensure_dir(&mut self, dir: &Path) -> Result<(), ExportError> {
        if dir == self.root || self.dirs.contains(dir) {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.ensure_dir(parent)?;
        }
        make_dir(dir)?;
        self.dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn write(&mut self, rel: &str, contents: &[u8]) -> Result<(), ExportError> {
        let path = self.root.join(rel);
        if let Some(parent) = path.parent() {
            self.ensure_dir(parent)?;
        }
        let io_err = |source| ExportError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io_err)?;
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(io_err)?;
        file.write_all(contents).map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }

    /// Syncs every directory, renames the tree to `out` and syncs `out`'s parent.
    fn finish(mut self, out: &Path) -> Result<(), ExportError> {
        for dir in self.dirs.iter().rev().chain([&self.root]) {
            sync_dir(dir)?;
        }
        fs::rename(&self.root, out).map_err(|source| ExportError::Io {
            path: out.to_path_buf(),
            source,
        })?;
        self.keep = true;
        match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
            _ => sync_dir(Path::new(".")),
        }
    }
}

impl Drop for TempExport {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: a failed export must not leave a half-written tree behind.
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), ExportError> {
    let io_err = |source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err)?;
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE)).map_err(io_err)
}

fn sync_dir(dir: &Path) -> Result<(), ExportError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| ExportError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

fn check_output(out: &Path) -> Result<(), ExportError> {
    match fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ExportError::Io {
            path: out.to_path_buf(),
            source,
        }),
        Ok(meta) if meta.is_dir() => {
            let mut entries = fs::read_dir(out).map_err(|source| ExportError::Io {
                path: out.to_path_buf(),
                source,
            })?;
            if entries.next().is_none() {
                Ok(())
            } else {
                Err(ExportError::OutputExists {
                    path: out.to_path_buf(),
                })
            }
        }
        Ok(_) => Err(ExportError::OutputExists {
            path: out.to_path_buf(),
        }),
    }
}

/// Writes the export of the first `size` entries of `store` into `out` (the layout is in the
/// module docs), where `size` is the checkpoint's tree size.
///
/// Before anything is renamed into place: the checkpoint must verify with `vkey` (and its
/// origin be the key's name), `size` must not exceed the store's durable size, the checkpoint
/// root must equal the root recomputed from the stored entries, every cosignature line (in the
/// checkpoint and the cosigned notes) must be by a listed witness and verify, and every cosigned
/// note must be log-signed, no larger than the checkpoint and carry the tree root at its size.
///
/// `out` must not exist or be an empty directory. Everything is written into a sibling
/// temporary directory that is renamed to `out` at the end, so a failed export leaves nothing
/// half-written. Directories are 0700, files 0600. Entries are streamed: memory holds one entry
/// bundle and one tile per level.
pub fn write_export(
    store: &Store,
    input: &ExportInput<'_>,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    write_export_from(
        Some(store.durable_head().size),
        |index| {
            let leaf = store
                .entry(index)?
                .ok_or(ExportError::StoreEntryMissing { index })?;
            let hash = leaf_hash(&leaf);
            if store.leaf_hash(index)? != Some(hash) {
                return Err(ExportError::StoreLeafHashMismatch { index });
            }
            Ok((leaf, hash))
        },
        input,
        out,
    )
}

/// [`write_export`] from any source of the log's leaves: `next_leaf(i)` is called for `i` = 0, 1, …
/// in order up to the checkpoint's size and returns the leaf bytes and their RFC 9162 leaf hash
/// (a running node's entries fetched through its Audit service, say). `durable`, if known, is
/// how many entries the source holds durably. Every other check of [`write_export`] applies:
/// above all, the root of the leaves must be the signed checkpoint's, so a source that sends
/// other leaves than the log signed produces no export.
pub fn write_export_from(
    durable: Option<u64>,
    mut next_leaf: impl FnMut(u64) -> Result<(Vec<u8>, Hash), ExportError>,
    input: &ExportInput<'_>,
    out: &Path,
) -> Result<ExportSummary, ExportError> {
    check_output(out)?;
    let cp = check_checkpoint(input.vkey, input.checkpoint)?;
    let witnesses = parse_witnesses(input.witnesses, &cp.origin)?;
    check_cosignature_lines(input.checkpoint, CHECKPOINT_FILE, &cp.origin, &witnesses)?;
    let mut cosigned: Vec<Cosigned> = Vec::new();
    for (i, note) in input.cosigned.iter().enumerate() {
        let what = format!("cosigned checkpoint #{}", i + 1);
        let c = check_cosigned(note, &what, &cp, &witnesses)?;
        if cosigned.iter().any(|o| o.size == c.size) {
            return Err(ExportError::DuplicateCosignedSize { size: c.size });
        }
        cosigned.push(c);
    }
    if let Some(durable) = durable
        && cp.size > durable
    {
        return Err(ExportError::BeyondDurable {
            size: cp.size,
            durable,
        });
    }

    let mut tmp = TempExport::create(out)?;
    tmp.write(VKEY_FILE, format!("{}\n", key_line(input.vkey)).as_bytes())?;
    tmp.write(CHECKPOINT_FILE, input.checkpoint.as_bytes())?;
    let witness_list: String = input
        .witnesses
        .iter()
        .map(|w| format!("{}\n", key_line(w)))
        .collect();
    tmp.write(WITNESSES_FILE, witness_list.as_bytes())?;

    let mut frontier = Frontier::new();
    let mut roots = RootsAt::new(cosigned.iter().map(|c| c.size));
    let mut builder = TileBuilder::default();
    let mut bundle: Vec<u8> = Vec::new();
    let mut in_bundle: u64 = 0;
    let mut tiles = 0usize;
    let mut bundles = 0usize;
    {
        let tmp_cell = std::cell::RefCell::new(&mut tmp);
        let mut write_tile = |tile: Tile, hashes: &[Hash]| -> Result<(), ExportError> {
            tiles += 1;
            tmp_cell.borrow_mut().write(&tile.path(), &hashes.concat())
        };
        for index in 0..cp.size {
            let (leaf, hash) = next_leaf(index)?;
            if leaf.len() > MAX_LEAF_LEN {
                return Err(ExportError::LeafTooLarge {
                    index,
                    len: leaf.len(),
                });
            }
            frontier.push(hash);
            roots.after_push(&frontier);
            bundle.extend_from_slice(&(leaf.len() as u16).to_be_bytes());
            bundle.extend_from_slice(&leaf);
            in_bundle += 1;
            if in_bundle == TILE_WIDTH || index + 1 == cp.size {
                let tile = Tile {
                    level: TileLevel::Entries,
                    index: index / TILE_WIDTH,
                    width: in_bundle as u16,
                };
                tmp_cell.borrow_mut().write(&tile.path(), &bundle)?;
                bundles += 1;
                bundle.clear();
                in_bundle = 0;
            }
            builder.push(hash, &mut write_tile)?;
        }
        builder.finish(&mut write_tile)?;
    }

    let root = frontier.root();
    if root != cp.root {
        return Err(ExportError::StoreRootMismatch {
            size: cp.size,
            checkpoint: hex32(&cp.root),
            store: hex32(&root),
        });
    }
    roots.check(&cosigned)?;
    for c in &cosigned {
        tmp.write(&cosigned_path(c.size), c.note.as_bytes())?;
    }
    tmp.finish(out)?;
    Ok(ExportSummary {
        size: cp.size,
        root,
        tiles,
        bundles,
        cosigned: cosigned.len(),
    })
}
