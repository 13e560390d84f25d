//! Offline auditor tooling for the ledger in public C2SP formats (DESIGN §6): `ledger export`,
//! `ledger verify`, `ledger reconcile` and `tlog-proof` files.
//!
//! # Export layout
//!
//! ```text
//! OUT/checkpoint                 the checkpoint note (log signature + any cosignature lines)
//! OUT/vkey                       the log's verifier key (signed-note vkey, type 0x01) + "\n"
//! OUT/tile/<L>/<N>[.p/<W>]       C2SP tlog-tiles hash tiles for the checkpoint's tree size
//! OUT/tile/entries/<N>[.p/<W>]   C2SP tlog-tiles entry bundles (u16 BE length-prefixed leaves)
//! OUT/witnesses                  cosigner verifier keys (type 0x04), one per line ("" if none)
//! OUT/cosignatures/<size>        earlier checkpoints witnesses cosigned, one file per size
//! ```
//!
//! Tiles have height 8 (256 hashes): the `n`-th tile at level `l` holds the hashes of the
//! subtrees `[(n·256 + i)·256^l, (n·256 + i + 1)·256^l)`; level 0 holds leaf hashes and every
//! level-`l+1` hash is the root of a full level-`l` tile. A tile with fewer than 256 hashes is
//! *partial* and carries a `.p/<W>` suffix; partial tiles are never hashed into the level above.
//!
//! # Trust model of [`verify_export`]
//!
//! The signed checkpoint is the only trusted input (given the `vkey`). Entries are hashed into
//! a tree; if its root is the checkpoint's, the entries are authentic and every tile must be
//! exactly what the entries give (a tile that differs is named). If the root differs, the first
//! entry whose leaf hash differs from its level-0 tile hash is named as the altered entry.
//! Everything is streamed: memory is bounded by one bundle and one tile per level.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::{OsRng, RngCore};

use super::checkpoint::{
    CosignatureVerifier, NoteError, NoteVerifier, parse_checkpoint, split_note,
};
use super::entry::LedgerEntry;
use super::merkle::{Frontier, empty_root, leaf_hash};
use super::proof::{Hash, ProofError, verify_inclusion};
use super::{LedgerError, Store};
use crate::proto::v1::EntryKind;

/// Number of hashes in a full tile (tile height 8).
pub const TILE_WIDTH: u64 = 256;
/// Largest leaf an entry bundle can hold (its length prefix is a big-endian u16).
pub const MAX_LEAF_LEN: usize = u16::MAX as usize;
/// Largest checkpoint, key or cosigned-note file [`verify_export`] reads.
pub const MAX_NOTE_FILE: u64 = 1 << 20;
/// First line of a C2SP `tlog-proof`.
pub const TLOG_PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
const CHECKPOINT_FILE: &str = "checkpoint";
const VKEY_FILE: &str = "vkey";
const WITNESSES_FILE: &str = "witnesses";
const TILE_DIR: &str = "tile";
const COSIGNATURES_DIR: &str = "cosignatures";

/// Why an export could not be written, verified, read or reconciled, or a proof not verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A file-system operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading the ledger store failed.
    #[error("reading the ledger store failed: {0}")]
    Store(#[from] LedgerError),
    /// The store has no leaf for a durable index.
    #[error("ledger store has no entry {index} although it is durable")]
    StoreEntryMissing {
        /// The missing entry.
        index: u64,
    },
    /// The store's recorded leaf hash differs from the hash of the stored leaf bytes.
    #[error(
        "ledger store is corrupt: stored leaf hash of entry {index} is not the hash of its bytes"
    )]
    StoreLeafHashMismatch {
        /// The inconsistent entry.
        index: u64,
    },
    /// The export target exists and is not an empty directory.
    #[error("export target {} exists and is not an empty directory", path.display())]
    OutputExists {
        /// The target.
        path: PathBuf,
    },
    /// The export target has no file name (e.g. `/` or `..`).
    #[error("export target {} does not name a directory to create", path.display())]
    OutputUnnamed {
        /// The target.
        path: PathBuf,
    },
    /// The log's verifier key does not parse.
    #[error("log verifier key is invalid: {0}")]
    BadVkey(#[source] NoteError),
    /// The `vkey` file is not exactly one line ending in a newline.
    #[error("vkey file must hold exactly one key line ending in a newline")]
    MalformedVkeyFile,
    /// The checkpoint has no valid signature by the log's key.
    #[error("checkpoint signature does not verify with the log's key: {0}")]
    CheckpointSignature(#[source] NoteError),
    /// The checkpoint text is not origin, size, root.
    #[error("checkpoint is malformed: {0}")]
    MalformedCheckpoint(#[source] NoteError),
    /// The checkpoint's origin differs from the name of the log's key.
    #[error("checkpoint origin {origin:?} differs from the log key's name {key_name:?}")]
    OriginMismatch {
        /// Origin line of the checkpoint.
        origin: String,
        /// Name in the verifier key.
        key_name: String,
    },
    /// The origin does not end in `/<administration id>`.
    #[error("origin {origin:?} does not end in \"/<administration id>\"")]
    OriginWithoutAdministration {
        /// The offending origin.
        origin: String,
    },
    /// The checkpoint is for more entries than the store has durably.
    #[error("checkpoint is for {size} entries but the ledger has only {durable} durable entries")]
    BeyondDurable {
        /// Checkpoint tree size.
        size: u64,
        /// Durable size of the store.
        durable: u64,
    },
    /// The checkpoint's root is not the root of the store's first `size` entries.
    #[error(
        "checkpoint root {checkpoint} for size {size} differs from the root {store} of the \
         ledger's first {size} entries"
    )]
    StoreRootMismatch {
        /// Tree size.
        size: u64,
        /// Root in the checkpoint, hex.
        checkpoint: String,
        /// Root recomputed from the store, hex.
        store: String,
    },
    /// A leaf is too long for an entry bundle's u16 length prefix.
    #[error("entry {index} is {len} bytes, more than the {MAX_LEAF_LEN} an entry bundle can hold")]
    LeafTooLarge {
        /// The entry.
        index: u64,
        /// Its length in bytes.
        len: usize,
    },
    /// A witness (cosigner) key does not parse.
    #[error("witness key on line {line} is invalid: {source}")]
    BadWitnessKey {
        /// 1-based line in the witness list.
        line: usize,
        /// Why it does not parse.
        #[source]
        source: NoteError,
    },
    /// The witness list is not one key per line, each ending in a newline.
    #[error("witnesses file line {line} is empty or lacks its final newline")]
    MalformedWitnessList {
        /// 1-based line.
        line: usize,
    },
    /// Two witness keys carry the same name, or a witness is named like the log.
    #[error("witness name {name:?} is listed twice or is the log's own name")]
    DuplicateWitness {
        /// The name.
        name: String,
    },
    /// A note carries a cosignature line by a name not listed in `witnesses`.
    #[error("{note} carries a cosignature by {name:?}, which is not a listed witness")]
    UnlistedWitness {
        /// Which note (`checkpoint` or `cosignatures/<size>`).
        note: String,
        /// Name on the signature line.
        name: String,
    },
    /// A cosignature line by a listed witness does not verify over the note.
    #[error("{note}: cosignature by witness {witness:?} does not verify: {source}")]
    BadCosignature {
        /// Which note.
        note: String,
        /// The witness.
        witness: String,
        /// Why it does not verify.
        #[source]
        source: NoteError,
    },
    /// A cosigned note is malformed or lacks a valid log signature.
    #[error("{note}: {source}")]
    CosignedNote {
        /// Which note.
        note: String,
        /// What is wrong with it.
        #[source]
        source: NoteError,
    },
    /// A cosigned note is for another log.
    #[error("{note} is a checkpoint of {origin:?}, not of this log")]
    CosignedOrigin {
        /// Which note.
        note: String,
        /// Its origin.
        origin: String,
    },
    /// A cosigned note carries no cosignature line at all.
    #[error("{note} carries no cosignature")]
    NotCosigned {
        /// Which note.
        note: String,
    },
    /// A cosigned note is for a tree larger than the checkpoint's.
    #[error("{note} is for size {size}, beyond the checkpoint's size {checkpoint_size}")]
    CosignedBeyondCheckpoint {
        /// Which note.
        note: String,
        /// Its tree size.
        size: u64,
        /// The checkpoint's tree size.
        checkpoint_size: u64,
    },
    /// Two cosigned notes are for the same tree size.
    #[error("two cosigned checkpoints are for tree size {size}")]
    DuplicateCosignedSize {
        /// The size.
        size: u64,
    },
    /// A `cosignatures/<size>` file holds a note for another size.
    #[error("{note} holds a checkpoint for size {size}")]
    CosignedSizeMismatch {
        /// Which file.
        note: String,
        /// Size in the note.
        size: u64,
    },
    /// A cosigned (log-signed) checkpoint's root is not the tree root at its size: a fork.
    #[error(
        "{note}: signed root {signed} for size {size} differs from the root {computed} of the \
         first {size} entries (the log signed a different tree)"
    )]
    CosignedRootMismatch {
        /// Which note.
        note: String,
        /// Its tree size.
        size: u64,
        /// Root in the note, hex.
        signed: String,
        /// Root recomputed from the entries, hex.
        computed: String,
    },
    /// A file of the export is missing.
    #[error("{path} is missing from the export")]
    MissingFile {
        /// Path relative to the export directory.
        path: String,
    },
    /// A file of the export is larger than any valid one can be.
    #[error("{path} is {len} bytes, more than the {max} it can hold")]
    FileTooLarge {
        /// Path relative to the export directory.
        path: String,
        /// Its size.
        len: u64,
        /// Largest valid size.
        max: u64,
    },
    /// A text file of the export is not UTF-8.
    #[error("{path} is not UTF-8 text")]
    NotUtf8 {
        /// Path relative to the export directory.
        path: String,
    },
    /// A hash tile has the wrong length for its width.
    #[error("tile {path} is {len} bytes, expected {expected}")]
    TileWrongLength {
        /// Tile path.
        path: String,
        /// Actual length.
        len: u64,
        /// `width · 32`.
        expected: u64,
    },
    /// An entry bundle ends before all its entries (or inside one).
    #[error("entry bundle {path} ends inside or before entry {index}")]
    BundleTruncated {
        /// Bundle path.
        path: String,
        /// First entry that is not complete.
        index: u64,
    },
    /// An entry bundle has bytes after its last entry.
    #[error("entry bundle {path} has {bytes} trailing bytes after entry {last_index}")]
    BundleTrailingBytes {
        /// Bundle path.
        path: String,
        /// Last entry the bundle should hold.
        last_index: u64,
        /// Number of extra bytes.
        bytes: usize,
    },
    /// An entry's leaf hash differs from its level-0 tile hash, and the entries do not hash to
    /// the checkpoint root: the entry was altered.
    #[error(
        "entry {index} (in {bundle}) does not match hash {position} of tile {tile}, and the \
         entries do not hash to the checkpoint root: entry {index} was altered"
    )]
    EntryMismatch {
        /// The first altered entry.
        index: u64,
        /// Its bundle's path.
        bundle: String,
        /// Its level-0 tile's path.
        tile: String,
        /// Its position in the tile.
        position: usize,
    },
    /// The entries hash to another root than the checkpoint's, and every entry matches its
    /// level-0 tile hash.
    #[error(
        "the {size} entries hash to root {computed}, but the checkpoint says {checkpoint}{}",
        tile_hint(.first_bad_tile)
    )]
    EntriesRootMismatch {
        /// Tree size.
        size: u64,
        /// Root from the entries, hex.
        computed: String,
        /// Root in the checkpoint, hex.
        checkpoint: String,
        /// The first upper-level tile that disagrees with the entries, if any (entries and
        /// level-0 tiles may both have been rewritten below it).
        first_bad_tile: Option<String>,
    },
    /// A tile hash differs from what the (authenticated) entries give.
    #[error("hash {position} of tile {path} is wrong: {what}")]
    TileMismatch {
        /// Tile path.
        path: String,
        /// Position of the first wrong hash.
        position: usize,
        /// What it should have been.
        what: &'static str,
    },
    /// A file or symlink the layout has no place for.
    #[error("unexpected file {path} in the export")]
    UnexpectedFile {
        /// Path relative to the export directory.
        path: String,
    },
    /// A verified leaf is not a `LedgerEntry`.
    #[error("entry {index} is not a valid LedgerEntry: {source}")]
    EntryDecode {
        /// The entry.
        index: u64,
        /// The decoding error.
        #[source]
        source: prost::DecodeError,
    },
    /// Both exports given to [`reconcile`] are of the same administration.
    #[error("both exports are of administration {admin}; reconcile needs two partners")]
    SameAdministration {
        /// The administration.
        admin: String,
    },
    /// An export given to [`reconcile`] failed verification.
    #[error("export {}: {source}", dir.display())]
    InExport {
        /// The export directory.
        dir: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<ExportError>,
    },
    /// A `tlog-proof` text is malformed.
    #[error("tlog-proof line {line}: {what}")]
    MalformedProof {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A `tlog-proof`'s inclusion proof does not verify.
    #[error("inclusion of entry {index} in the tree of size {size} does not verify: {source}")]
    Inclusion {
        /// Leaf index in the proof.
        index: u64,
        /// Tree size of the proof's checkpoint.
        size: u64,
        /// Why.
        #[source]
        source: ProofError,
    },
}

fn tile_hint(tile: &Option<String>) -> String {
    match tile {
        Some(t) => format!(" (the first tile that disagrees with the entries is {t})"),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Tiles
// ---------------------------------------------------------------------------------------------

/// Which tile sequence a tile belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TileLevel {
    /// Hash tiles of level `l` (0 = leaf hashes).
    Hashes(u8),
    /// Entry bundles (same indexing and widths as level-0 hash tiles).
    Entries,
}

/// One hash tile or entry bundle of a tiled log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tile {
    /// Level (or entry bundle).
    pub level: TileLevel,
    /// Tile index `N` within its level.
    pub index: u64,
    /// Number of hashes (or entries): 256 for a full tile, 1..=255 for a partial one.
    pub width: u16,
}

/// The `<N>` path of a tile index: zero-padded 3-digit elements, all but the last prefixed
/// with `x` (`1234067` → `x001/x234/067`, `5` → `005`).
pub fn tile_index_path(index: u64) -> String {
    let mut groups = Vec::new();
    let mut rest = index;
    loop {
        groups.push(rest % 1000);
        rest /= 1000;
        if rest == 0 {
            break;
        }
    }
    let last = groups.len() - 1;
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(i, g)| {
            if i == last {
                format!("{g:03}")
            } else {
                format!("x{g:03}")
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

impl Tile {
    /// Whether the tile holds fewer than 256 hashes.
    pub fn is_partial(&self) -> bool {
        u64::from(self.width) < TILE_WIDTH
    }

    /// The tile's path relative to the export directory, e.g. `tile/0/x001/067.p/5` or
    /// `tile/entries/000`.
    pub fn path(&self) -> String {
        let level = match self.level {
            TileLevel::Hashes(l) => l.to_string(),
            TileLevel::Entries => "entries".to_owned(),
        };
        let mut p = format!("{TILE_DIR}/{level}/{}", tile_index_path(self.index));
        if self.is_partial() {
            p.push_str(&format!(".p/{}", self.width));
        }
        p
    }

    /// Parses a path made by [`Tile::path`]; only the canonical spelling is accepted.
    pub fn from_path(path: &str) -> Option<Tile> {
        let rest = path.strip_prefix(TILE_DIR)?.strip_prefix('/')?;
        let mut parts: Vec<&str> = rest.split('/').collect();
        let level = match *parts.first()? {
            "entries" => TileLevel::Entries,
            l => TileLevel::Hashes(l.parse().ok()?),
        };
        parts.remove(0);
        let mut width = TILE_WIDTH as u16;
        if parts.len() >= 2 && parts[parts.len() - 2].ends_with(".p") {
            width = parts.pop()?.parse().ok()?;
            let last = parts.last_mut()?;
            *last = last.strip_suffix(".p")?;
        }
        let mut index: u64 = 0;
        for part in &parts {
            let digits = part.strip_prefix('x').unwrap_or(part);
            if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let group: u64 = digits.parse().ok()?;
            index = index.checked_mul(1000)?.checked_add(group)?;
        }
        let tile = Tile {
            level,
            index,
            width,
        };
        (width >= 1 && tile.path() == path).then_some(tile)
    }
}

/// Number of hashes at `level` of a tree of `size` leaves (`size / 256^level`).
fn level_count(size: u64, level: u8) -> u64 {
    size.checked_shr(8 * u32::from(level)).unwrap_or(0)
}

/// Width of tile `index` at `level` for a tree of `size` leaves, or `None` if the tree has no
/// such tile (empty tiles are not part of a tiled log).
pub fn tile_width(size: u64, level: TileLevel, index: u64) -> Option<u16> {
    let count = match level {
        TileLevel::Hashes(l) => level_count(size, l),
        TileLevel::Entries => size,
    };
    let start = index.checked_mul(TILE_WIDTH)?;
    (start < count).then(|| (count - start).min(TILE_WIDTH) as u16)
}

/// Every hash tile of a tree of `size` leaves, level by level, in index order.
pub fn plan_tiles(size: u64) -> impl Iterator<Item = Tile> {
    (0u8..8).flat_map(move |l| {
        let count = level_count(size, l);
        (0..count.div_ceil(TILE_WIDTH)).map(move |n| Tile {
            level: TileLevel::Hashes(l),
            index: n,
            width: (count - n * TILE_WIDTH).min(TILE_WIDTH) as u16,
        })
    })
}

/// Every entry bundle of a tree of `size` leaves, in index order.
pub fn plan_bundles(size: u64) -> impl Iterator<Item = Tile> {
    (0..size.div_ceil(TILE_WIDTH)).map(move |n| Tile {
        level: TileLevel::Entries,
        index: n,
        width: (size - n * TILE_WIDTH).min(TILE_WIDTH) as u16,
    })
}

/// Root of a full tile: the perfect tree over its 256 hashes (a [`Frontier`] fed the hashes
/// as if they were leaf hashes merges them exactly so).
fn full_tile_root(hashes: &[Hash]) -> Hash {
    let mut f = Frontier::new();
    for h in hashes {
        f.push(*h);
    }
    f.root()
}

/// Callback receiving each completed tile and its hashes.
type TileSink<'a> = dyn FnMut(Tile, &[Hash]) -> Result<(), ExportError> + 'a;

/// Builds the hash tiles of a tree from its leaf hashes, one tile per level in memory.
#[derive(Default)]
struct TileBuilder {
    levels: Vec<Vec<Hash>>,
    next_index: Vec<u64>,
}

impl TileBuilder {
    /// Adds the next leaf hash; emits every tile it completes (a level-0 tile, then possibly
    /// the level-1 tile its root completes, and so on).
    fn push(&mut self, leaf: Hash, sink: &mut TileSink<'_>) -> Result<(), ExportError> {
        let mut hash = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::with_capacity(TILE_WIDTH as usize));
                self.next_index.push(0);
            }
            let buf = &mut self.levels[level];
            buf.push(hash);
            if (buf.len() as u64) < TILE_WIDTH {
                return Ok(());
            }
            let tile = Tile {
                level: TileLevel::Hashes(level as u8),
                index: self.next_index[level],
                width: TILE_WIDTH as u16,
            };
            sink(tile, buf)?;
            hash = full_tile_root(buf);
            buf.clear();
            self.next_index[level] += 1;
            level += 1;
        }
    }

    /// Emits the partial tiles, lowest level first.
    fn finish(self, sink: &mut TileSink<'_>) -> Result<(), ExportError> {
        for (level, buf) in self.levels.iter().enumerate() {
            if !buf.is_empty() {
                let tile = Tile {
                    level: TileLevel::Hashes(level as u8),
                    index: self.next_index[level],
                    width: buf.len() as u16,
                };
                sink(tile, buf)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Notes, keys, cosignatures
// ---------------------------------------------------------------------------------------------

fn hex32(h: &Hash) -> String {
    hex::encode(h)
}

/// Strips one trailing newline from a key given as a string.
fn key_line(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

/// The verified checkpoint of an export: verifier, origin, size, root.
struct Checked {
    verifier: NoteVerifier,
    origin: String,
    size: u64,
    root: Hash,
}

fn check_checkpoint(vkey: &str, note: &str) -> Result<Checked, ExportError> {
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

fn parse_witnesses(
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
fn check_cosignature_lines(
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
struct Cosigned {
    size: u64,
    root: Hash,
    witnesses: Vec<String>,
    note: String,
}

fn check_cosigned(
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

fn cosigned_path(size: u64) -> String {
    format!("{COSIGNATURES_DIR}/{size}")
}

/// Records the tree roots at the sizes of cosigned checkpoints while entries stream by.
struct RootsAt {
    wanted: BTreeMap<u64, Option<Hash>>,
}

impl RootsAt {
    fn new(sizes: impl Iterator<Item = u64>) -> RootsAt {
        let mut wanted: BTreeMap<u64, Option<Hash>> = sizes.map(|s| (s, None)).collect();
        if let Some(slot) = wanted.get_mut(&0) {
            *slot = Some(empty_root());
        }
        RootsAt { wanted }
    }

    fn after_push(&mut self, frontier: &Frontier) {
        if let Some(slot) = self.wanted.get_mut(&frontier.size()) {
            *slot = Some(frontier.root());
        }
    }

    fn check(&self, cosigned: &[Cosigned]) -> Result<(), ExportError> {
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

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

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
    let durable = store.durable_head().size;
    if cp.size > durable {
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
            let leaf = store
                .entry(index)?
                .ok_or(ExportError::StoreEntryMissing { index })?;
            if leaf.len() > MAX_LEAF_LEN {
                return Err(ExportError::LeafTooLarge {
                    index,
                    len: leaf.len(),
                });
            }
            let hash = leaf_hash(&leaf);
            if store.leaf_hash(index)? != Some(hash) {
                return Err(ExportError::StoreLeafHashMismatch { index });
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

// ---------------------------------------------------------------------------------------------
// Verifying
// ---------------------------------------------------------------------------------------------

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
fn walk_files(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<(), ExportError> {
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
        match super::entry::parse(leaf) {
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

// ---------------------------------------------------------------------------------------------
// Reconciling
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// tlog-proof
// ---------------------------------------------------------------------------------------------

/// A parsed C2SP `tlog-proof`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlogProof {
    /// Index of the entry in the log.
    pub index: u64,
    /// RFC 9162 inclusion proof, from the leaf's sibling up to the root's child.
    pub hashes: Vec<[u8; 32]>,
    /// The checkpoint note, verbatim (signatures and cosignatures included).
    pub checkpoint: String,
    /// Opaque, unauthenticated extra data.
    pub extra: Option<Vec<u8>>,
}

/// Formats a C2SP `tlog-proof`: the header line, `extra <base64>` if any, `index <n>`, one
/// base64 hash per line, an empty line, then `checkpoint_note` verbatim.
pub fn tlog_proof_text(
    index: u64,
    hashes: &[[u8; 32]],
    checkpoint_note: &str,
    extra: Option<&[u8]>,
) -> String {
    let mut out = format!("{TLOG_PROOF_HEADER}\n");
    if let Some(extra) = extra {
        out.push_str(&format!("extra {}\n", B64.encode(extra)));
    }
    out.push_str(&format!("index {index}\n"));
    for h in hashes {
        out.push_str(&B64.encode(h));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(checkpoint_note);
    out
}

/// Parses a C2SP `tlog-proof` (see [`tlog_proof_text`]); the checkpoint is not verified here.
pub fn parse_tlog_proof(text: &str) -> Result<TlogProof, ExportError> {
    let bad = |line: usize, what: &str| ExportError::MalformedProof {
        line,
        what: what.to_owned(),
    };
    let mut rest = text;
    let mut line_no = 0usize;
    let mut next_line = |rest: &mut &str| -> Option<(usize, String)> {
        let (line, after) = rest.split_once('\n')?;
        *rest = after;
        line_no += 1;
        Some((line_no, line.to_owned()))
    };
    let (n, first) = next_line(&mut rest).ok_or_else(|| bad(1, "missing header line"))?;
    if first != TLOG_PROOF_HEADER {
        return Err(bad(n, &format!("header must be {TLOG_PROOF_HEADER:?}")));
    }
    let (mut n, mut line) = next_line(&mut rest).ok_or_else(|| bad(2, "missing index line"))?;
    let mut extra = None;
    if let Some(b64) = line.strip_prefix("extra ") {
        extra = Some(
            B64.decode(b64)
                .map_err(|_| bad(n, "extra data is not base64"))?,
        );
        (n, line) = next_line(&mut rest).ok_or_else(|| bad(n + 1, "missing index line"))?;
    }
    let digits = line
        .strip_prefix("index ")
        .ok_or_else(|| bad(n, "expected \"index <n>\""))?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    let index: u64 = digits
        .parse()
        .ok()
        .filter(|_| canonical)
        .ok_or_else(|| bad(n, "index must be a decimal number without leading zeros"))?;
    let mut hashes = Vec::new();
    loop {
        let (n, line) = next_line(&mut rest).ok_or_else(|| {
            bad(
                n + hashes.len() + 1,
                "missing empty line before the checkpoint",
            )
        })?;
        if line.is_empty() {
            break;
        }
        let hash: [u8; 32] = B64
            .decode(&line)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(n, "proof hash must be 32 bytes of base64"))?;
        hashes.push(hash);
    }
    if rest.is_empty() {
        return Err(bad(line_no + 1, "missing checkpoint"));
    }
    Ok(TlogProof {
        index,
        hashes,
        checkpoint: rest.to_owned(),
        extra,
    })
}

/// Verifies a `tlog-proof` for the leaf bytes `leaf` against the log's verifier key: the
/// checkpoint's signature (and that its origin is the key's name), then RFC 9162 inclusion of
/// `leaf` at `proof.index` in the checkpoint's tree. Cosignatures are not checked here.
pub fn verify_tlog_proof(proof: &TlogProof, leaf: &[u8], vkey: &str) -> Result<(), ExportError> {
    let cp = check_checkpoint(vkey, &proof.checkpoint)?;
    verify_inclusion(
        &leaf_hash(leaf),
        proof.index,
        cp.size,
        &proof.hashes,
        &cp.root,
    )
    .map_err(|source| ExportError::Inclusion {
        index: proof.index,
        size: cp.size,
        source,
    })
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::ledger::checkpoint::{Cosigner, NoteSigner, add_signature_lines, checkpoint_text};
    use crate::ledger::proof::{inclusion_proof, subtree_root};

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
        fn export(
            &self,
            size: u64,
            earlier: &[u64],
        ) -> (tempfile::TempDir, PathBuf, ExportSummary) {
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
    fn tile_index_paths_follow_tlog_tiles() {
        assert_eq!(tile_index_path(0), "000");
        assert_eq!(tile_index_path(5), "005");
        assert_eq!(tile_index_path(999), "999");
        assert_eq!(tile_index_path(1000), "x001/000");
        assert_eq!(tile_index_path(1_234_067), "x001/x234/067");
        assert_eq!(
            tile_index_path(u64::MAX),
            "x018/x446/x744/x073/x709/x551/615"
        );
        let t = |level, index, width| Tile {
            level,
            index,
            width,
        };
        assert_eq!(
            t(TileLevel::Hashes(0), 1_234_067, 256).path(),
            "tile/0/x001/x234/067"
        );
        assert_eq!(t(TileLevel::Hashes(2), 5, 1).path(), "tile/2/005.p/1");
        assert_eq!(
            t(TileLevel::Entries, 1000, 17).path(),
            "tile/entries/x001/000.p/17"
        );
        for tile in [
            t(TileLevel::Hashes(0), 1_234_067, 256),
            t(TileLevel::Hashes(7), 0, 255),
            t(TileLevel::Entries, 1000, 17),
            t(TileLevel::Entries, u64::MAX, 1),
        ] {
            assert_eq!(Tile::from_path(&tile.path()), Some(tile));
        }
        for bad in [
            "tile/0/5",
            "tile/0/0005",
            "tile/0/x000/005",
            "tile/0/x005",
            "tile/0/001/002",
            "tile/0/005.p/0",
            "tile/0/005.p/05",
            "tile/0/005.p/256",
            "tile/0/005.p/300",
            "tile/00/005",
            "tile/x/005",
            "tile/entries",
            "tile/0/005.p",
            "tiles/0/005",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
        ] {
            assert_eq!(Tile::from_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn tile_plan_for_70000_entries() {
        let tiles: Vec<Tile> = plan_tiles(70_000).collect();
        let level = |l| -> Vec<&Tile> {
            tiles
                .iter()
                .filter(|t| t.level == TileLevel::Hashes(l))
                .collect()
        };
        let l0 = level(0);
        assert_eq!(l0.len(), 274);
        assert_eq!(l0.iter().filter(|t| !t.is_partial()).count(), 273);
        assert_eq!(l0[273].path(), "tile/0/273.p/112");
        let l1: Vec<String> = level(1).iter().map(|t| t.path()).collect();
        assert_eq!(l1, ["tile/1/000", "tile/1/001.p/17"]);
        let l2: Vec<String> = level(2).iter().map(|t| t.path()).collect();
        assert_eq!(l2, ["tile/2/000.p/1"]);
        assert_eq!(tiles.len(), 277);
        let bundles: Vec<Tile> = plan_bundles(70_000).collect();
        assert_eq!(bundles.len(), 274);
        assert_eq!(bundles[273].path(), "tile/entries/273.p/112");
        assert_eq!(tile_width(70_000, TileLevel::Hashes(1), 1), Some(17));
        assert_eq!(tile_width(70_000, TileLevel::Hashes(1), 2), None);
        assert_eq!(tile_width(70_000, TileLevel::Hashes(3), 0), None);
        assert_eq!(tile_width(70_000, TileLevel::Entries, 273), Some(112));
        // The plan agrees with the width function everywhere.
        for t in tiles.iter().chain(&bundles) {
            assert_eq!(
                tile_width(70_000, t.level, t.index),
                Some(t.width),
                "{}",
                t.path()
            );
        }
    }

    #[test]
    fn tile_plan_for_small_and_huge_sizes() {
        let paths = |size| plan_tiles(size).map(|t| t.path()).collect::<Vec<_>>();
        assert!(paths(0).is_empty());
        assert_eq!(plan_bundles(0).count(), 0);
        assert_eq!(paths(1), ["tile/0/000.p/1"]);
        assert_eq!(paths(255), ["tile/0/000.p/255"]);
        assert_eq!(paths(256), ["tile/0/000", "tile/1/000.p/1"]);
        assert_eq!(
            paths(257),
            ["tile/0/000", "tile/0/001.p/1", "tile/1/000.p/1"]
        );
        // Level 7 exists for the largest sizes, and nothing overflows.
        assert_eq!(tile_width(u64::MAX, TileLevel::Hashes(7), 0), Some(255));
        assert_eq!(tile_width(u64::MAX, TileLevel::Hashes(8), 0), None);
        assert_eq!(tile_width(u64::MAX, TileLevel::Entries, u64::MAX), None);
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
        let err =
            tampered(|_, out| edit(out, "tile/entries/000", |b| b.extend_from_slice(&[0, 0, 1])));
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
}
