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
//!
//! # Layout
//!
//! - `tiles`: tile and entry-bundle paths, the tile plan of a tree, building hash tiles.
//! - `notes`: checkpoint, key, witness-list and cosignature checks shared by writing and
//!   verifying.
//! - `write`: [`write_export`].
//! - `verify`: [`verify_export`] and [`read_entries`].
//! - `reconcile`: [`reconcile`](fn@reconcile) of two partners' exports.
//! - `tlog_proof`: the C2SP `tlog-proof` format ([`tlog_proof_text`], [`parse_tlog_proof`],
//!   [`verify_tlog_proof`]).

mod notes;
mod reconcile;
#[cfg(test)]
mod tests;
mod tiles;
mod tlog_proof;
mod verify;
mod write;

use std::io;
use std::path::PathBuf;

use super::LedgerError;
use super::checkpoint::NoteError;
use super::proof::ProofError;

pub use reconcile::{
    Discrepancy, DiscrepancyKind, LedgerRecord, ReconcileReport, administration_of, reconcile,
};
pub use tiles::{Tile, TileLevel, plan_bundles, plan_tiles, tile_index_path, tile_width};
pub use tlog_proof::{
    TLOG_PROOF_HEADER, TlogProof, parse_tlog_proof, tlog_proof_text, verify_tlog_proof,
};
pub use verify::{MAX_NOTE_FILE, VerifyReport, read_entries, verify_export};
pub use write::{ExportInput, ExportSummary, write_export, write_export_from};

/// Number of hashes in a full tile (tile height 8).
pub const TILE_WIDTH: u64 = 256;
/// Largest leaf an entry bundle can hold (its length prefix is a big-endian u16).
pub const MAX_LEAF_LEN: usize = u16::MAX as usize;

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
    /// Reading the entries from their source (a running node's Audit service) failed.
    #[error("reading entry {index}: {detail}")]
    Source {
        /// The entry being read.
        index: u64,
        /// What failed.
        detail: String,
    },
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
    /// Both exports given to [`reconcile`](fn@reconcile) are of the same administration.
    #[error("both exports are of administration {admin}; reconcile needs two partners")]
    SameAdministration {
        /// The administration.
        admin: String,
    },
    /// An export given to [`reconcile`](fn@reconcile) failed verification.
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
