//! The node's append-only ledger (DESIGN §6).
//!
//! One ledger per node, stored in one sled database. What this module guarantees:
//!
//! - **Append-only, gap-free indices.** Entries get consecutive indices `0, 1, 2, …` in the order
//!   their transactions are committed; an index is never reused or rewritten.
//! - **RFC 6962 / RFC 9162 hashing.** Every entry is a Merkle leaf (`SHA-256(0x00 ‖ leaf)`), and
//!   the [`Head`] carries the tree size and root, maintained incrementally by a
//!   [`merkle::Frontier`].
//! - **Atomic units.** A [`Txn`] groups appended entries with side records (inbox, dedupe, …
//!   keyed outside the ledger's reserved key space); after a crash either all of it is there or
//!   none of it.
//! - **Durable before acknowledged.** A [`Ticket`] completes only after the unit is on stable
//!   storage in the power-loss sense: sled's flush (which on Linux ends in `sync_file_range`) is
//!   followed by our own `fdatasync` of sled's files. Tickets complete in commit order, and an I/O
//!   failure poisons the store instead of being retried or swallowed.
//! - **Group commit.** Units committed concurrently share one sled batch and one sync, so
//!   durability costs one sync per group, not per message.
//! - **Proofs without rebuilding.** Complete interior nodes are stored (and the upper levels
//!   cached in memory), so inclusion and consistency proofs ([`proof`]) are O(log n) reads.
//! - **Public formats.** Checkpoints, cosignatures and notes follow C2SP ([`checkpoint`]); exports
//!   follow C2SP tlog-tiles and proofs C2SP tlog-proof ([`export`]), so auditors can use
//!   off-the-shelf tools.

pub mod checkpoint;
pub mod entry;
pub mod export;
pub mod merkle;
pub mod proof;
pub mod store;

use std::path::PathBuf;

pub use store::{Head, Store, Ticket, Txn};

/// Errors of the ledger store and its Merkle state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A file-system operation on the ledger's files failed.
    #[error("ledger I/O error on {}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// sled reported an error (its own I/O errors included).
    #[error("ledger storage (sled) error: {0}")]
    Sled(#[from] sled::Error),
    /// Stored ledger data is inconsistent.
    #[error("ledger store is corrupt: {what}")]
    Corrupt {
        /// What is inconsistent, with the offending key or index.
        what: String,
    },
    /// An earlier durable commit failed; the store accepts no further commits until the node is
    /// restarted (recovery then starts from what is actually on disk).
    #[error(
        "ledger store is poisoned by an earlier failed commit ({cause}); no further commits are \
         accepted, restart the node to recover from disk"
    )]
    Poisoned {
        /// The failure that poisoned the store.
        cause: String,
    },
    /// The key lies in the ledger's reserved key space (`e…`, `n…`, `m/…`).
    #[error(
        "key {key} is reserved for the ledger itself (keys starting with \"e\", \"h\" or \"m/\"); \
         side records need another prefix"
    )]
    ReservedKey {
        /// The offending key or prefix, escaped for display.
        key: String,
    },
    /// The store was closed; nothing more can be committed through it.
    #[error("ledger store is closed")]
    Closed,
}

impl LedgerError {
    /// Duplicates an error so every ticket of a failed group can receive one (`std::io::Error`
    /// is not `Clone`); the kind and message survive.
    pub(crate) fn duplicate(&self) -> LedgerError {
        match self {
            LedgerError::Io { path, source } => LedgerError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            LedgerError::Sled(e) => LedgerError::Sled(e.clone()),
            LedgerError::Corrupt { what } => LedgerError::Corrupt { what: what.clone() },
            LedgerError::Poisoned { cause } => LedgerError::Poisoned {
                cause: cause.clone(),
            },
            LedgerError::ReservedKey { key } => LedgerError::ReservedKey { key: key.clone() },
            LedgerError::Closed => LedgerError::Closed,
        }
    }
}
