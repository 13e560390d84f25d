//! sled-backed append-only log with group commit.
//!
//! # Layout
//!
//! One sled database per node, and everything lives in its default tree so that one group commit
//! is one atomic `sled::Batch`:
//!
//! | key                     | value                                            |
//! |-------------------------|--------------------------------------------------|
//! | `b"e"` + u64 BE index   | leaf bytes of entry `index` (opaque here)        |
//! | `b"n"` + u8 level + u64 BE index | hash of the perfect subtree of height `level` (even, ≥ 2) covering leaves `[index << level, (index + 1) << level)` |
//! | `b"m/head"`             | [`Frontier::to_bytes`] after the last entry      |
//! | anything else           | callers' side records (`b"i/…"`, `b"x/…"`, …)    |
//!
//! Complete interior nodes are stored at even levels (a third of a write per entry): a leaf hash
//! is the hash of the stored entry, an odd-level node the hash of its two stored children. The
//! upper levels (from [`cache_from_level`] up, at most ~22 MiB) are also kept in memory, loaded
//! at open and extended after every durable group. Any subtree hash, root at a past size,
//! inclusion or consistency proof is then O(log n) point lookups, never a rebuild of the tree.
//!
//! # Commit path
//!
//! [`Store::begin`] takes the staging lock; [`Txn::append`] assigns indices immediately;
//! [`Txn::commit`] queues the unit (still under the staging lock, so queue order is index order)
//! and returns a [`Ticket`]. A dedicated committer thread takes every queued unit at once, writes
//! them as one batch, calls sled's `flush`, then `fdatasync`s sled's files itself (sled 0.34's flush
//! ends in `sync_file_range` on Linux, which does not survive power loss), publishes the new
//! durable [`Head`] and completes the tickets in order.
//!
//! # Files sled writes, and what we sync
//!
//! Read from sled 0.34.7's source:
//! - `db`: the log (all segments). Written with `pwrite` + `sync_file_range`; we keep a handle
//!   open and `fdatasync` it after every group.
//! - `blobs/<lsn>`: any log message larger than `segment_size / 4 - 20` bytes (~128 KiB with the
//!   default 512 KiB segments; a serialized tree node, so a leaf of 17 medium values can spill
//!   too) is written to its own file with `write_all` and **never synced by sled**, and sled's
//!   recovery silently skips a record whose blob file is missing. After every flush we list
//!   `blobs/`, `fdatasync` each file not yet synced (blob files are write-once) and fsync the
//!   directory — before syncing `db`, so the record that points to a blob never becomes durable
//!   ahead of it through our syncs.
//! - `conf` (written once at creation, not synced by sled) and `snap.<lsn>` (written with
//!   `sync_all` then renamed, during recovery at open only): we fsync `conf` and the directory at
//!   open.
//!
//! Residual risk, inherent to sled 0.34: sled pushes log writes to the device with
//! `sync_file_range` before we get to sync blob files, so a power cut in the middle of a group
//! that spilled to a blob can leave *that never-acknowledged group* partially recovered. The
//! open-time check below catches the ledger part of that (entries past the recorded head); side
//! records of such a group are not checked. Acknowledged groups are not affected.
//!
//! # Reads see durable state only
//!
//! Entries are read only below the durable size. For side records, the committer records the
//! pre-group value of every key the group touches in an overlay *before* applying the batch and
//! drops it only once the group is durable; readers read sled first and then the overlay, so a
//! value that is applied but not yet synced is never returned.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{Notify, watch};

use super::LedgerError;
use super::merkle::{self, Frontier, HASH_LEN};

const ENTRY_PREFIX: u8 = b'e';
const NODE_PREFIX: u8 = b'n';
const META_PREFIX: &[u8] = b"m/";
const HEAD_KEY: &[u8] = b"m/head";
/// How long [`Store::open`] waits for sled's lock (released asynchronously after a close).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// sled page-cache budget.
pub(crate) const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A side record as returned by scans: key, value.
pub type Record = (Vec<u8>, Vec<u8>);

/// Size and root of the ledger's Merkle tree at some point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Number of entries (the next entry gets this index).
    pub size: u64,
    /// RFC 6962 root hash of the first `size` entries.
    pub root: [u8; 32],
}

impl Head {
    fn of(frontier: &Frontier) -> Head {
        Head {
            size: frontier.size(),
            root: frontier.root(),
        }
    }
}

/// Handle to the node's ledger store: cheap to clone, usable from any thread.
///
/// Dropping the last clone stops the committer after it has made every queued unit durable.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Owned by the `Store` clones only (not by the committer thread), so that dropping the last
/// clone can stop the committer.
struct Inner {
    shared: Arc<Shared>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

/// State shared by the store handles and the committer thread.
struct Shared {
    dir: PathBuf,
    db: sled::Db,
    /// Frontier after the last committed (queued) unit; locked from `begin()` to `commit()`.
    staging: Mutex<Frontier>,
    /// Copy of `staging` updated at each commit, so `staged_head()` never waits for a `Txn` (and
    /// cannot deadlock against one held by the same thread).
    staged_view: Mutex<Frontier>,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    /// Last durable head; receivers are notified after every durable group.
    durable: watch::Sender<Head>,
    /// Set once a group failed; then nothing more is committed.
    poison: Mutex<Option<String>>,
    /// Pre-group values of side keys whose new values are applied but not yet durable.
    overlay: Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Upper levels of the durable tree, in memory.
    top: std::sync::RwLock<TopCache>,
    commit_groups: AtomicU64,
    #[cfg(test)]
    hooks: test_hooks::Hooks,
}

#[derive(Default)]
struct Queue {
    units: Vec<Unit>,
    closing: bool,
}

/// One committed transaction, waiting for the committer.
struct Unit {
    first_index: u64,
    leaves: Vec<Vec<u8>>,
    /// Interior nodes completed by this unit's entries: (level, index, hash).
    nodes: Vec<(u8, u64, [u8; HASH_LEN])>,
    /// Frontier after this unit's entries.
    frontier: Frontier,
    /// Side-record writes in staging order: `Some` = put, `None` = remove.
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    done: Completer,
}

/// Locks a std mutex, ignoring poisoning: every critical section in this module either completes
/// its update or changes nothing (a `Txn` writes staging state back only in `commit`), so a panic
/// elsewhere while a lock was held leaves no half-updated state behind.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether interior nodes of `level` are stored (even levels from 2).
fn is_stored_level(level: u8) -> bool {
    level >= 2 && level.is_multiple_of(2)
}

/// Lowest tree level kept in memory for a tree of `size` leaves: 2 (about 11 bytes per entry),
/// raised in steps of two as the tree grows so that the cache stays under ~2^19 hashes at its
/// lowest level (~22 MiB in all). A proof then reads at most three entries from sled.
pub fn cache_from_level(size: u64) -> u8 {
    let bits = (64 - size.leading_zeros()) as u8;
    let level = bits.saturating_sub(19).max(2);
    level + level % 2
}

/// Upper tree levels in memory: `levels[l][j]` is node `(l, j)`, for even `l >= from`.
#[derive(Default)]
struct TopCache {
    from: u8,
    levels: Vec<Vec<[u8; HASH_LEN]>>,
}

impl TopCache {
    fn get(&self, level: u8, index: u64) -> Option<[u8; HASH_LEN]> {
        if level < self.from || !level.is_multiple_of(2) {
            return None;
        }
        let row = self.levels.get(usize::from(level))?;
        row.get(usize::try_from(index).ok()?).copied()
    }

    /// Adds a durable node; nodes of a level arrive in index order.
    fn push(&mut self, level: u8, index: u64, hash: [u8; HASH_LEN]) {
        if level < self.from || !level.is_multiple_of(2) {
            return;
        }
        let l = usize::from(level);
        if self.levels.len() <= l {
            self.levels.resize_with(l + 1, Vec::new);
        }
        if self.levels[l].len() as u64 == index {
            self.levels[l].push(hash);
        }
    }

    /// Raises the lowest cached level for a tree of `size` leaves, freeing the levels below.
    fn fit(&mut self, size: u64) {
        let from = cache_from_level(size);
        if from > self.from {
            for l in usize::from(self.from)..usize::from(from).min(self.levels.len()) {
                self.levels[l] = Vec::new();
            }
            self.from = from;
        }
    }
}

fn node_key(level: u8, index: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[0] = NODE_PREFIX;
    k[1] = level;
    k[2..].copy_from_slice(&index.to_be_bytes());
    k
}

fn index_key(prefix: u8, index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Whether `key` lies in the ledger's own key space.
fn is_reserved(key: &[u8]) -> bool {
    matches!(key.first(), Some(&ENTRY_PREFIX | &NODE_PREFIX)) || key.starts_with(META_PREFIX)
}

/// For a reserved key, the smallest key after its whole reserved range (to skip it in scans).
fn skip_reserved(key: &[u8]) -> Option<Vec<u8>> {
    match key.first() {
        Some(&ENTRY_PREFIX) => Some(vec![ENTRY_PREFIX + 1]),
        Some(&NODE_PREFIX) => Some(vec![NODE_PREFIX + 1]),
        _ if key.starts_with(META_PREFIX) => Some(b"m0".to_vec()), // '0' = '/' + 1
        _ => None,
    }
}

fn show_key(key: &[u8]) -> String {
    format!("\"{}\"", key.escape_ascii())
}

fn check_side_key(key: &[u8]) -> Result<(), LedgerError> {
    if is_reserved(key) {
        return Err(LedgerError::ReservedKey { key: show_key(key) });
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// fsync a directory, making entries created or renamed in it durable.
fn sync_dir(path: &Path) -> Result<(), LedgerError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path))
}

impl Store {
    /// Opens (or creates, mode 0700) the store in `dir`, recovers the head from disk and starts
    /// the committer thread.
    ///
    /// Everything already on disk is synced before it is reported as durable: a previous process
    /// may have been killed between sled's write and our `fdatasync`. Fails with
    /// [`LedgerError::Corrupt`] if the head record is malformed or entries exist past it (a
    /// half-written state).
    pub fn open(dir: &Path) -> Result<Store, LedgerError> {
        Store::open_waiting(dir, LOCK_WAIT)
    }

    /// Like [`Store::open`], waiting at most `lock_wait` for the database lock (a tool that
    /// should fall back at once when a running node holds the ledger passes a short wait).
    pub fn open_waiting(dir: &Path, lock_wait: std::time::Duration) -> Result<Store, LedgerError> {
        create_dir_private(dir)?;
        let db = open_sled(dir, lock_wait)?;
        let files = SyncFiles::open(dir)?;
        let frontier = recover_head(&db)?;
        let head = Head::of(&frontier);
        let top = load_top(&db, head.size)?;

        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            db,
            staging: Mutex::new(frontier.clone()),
            staged_view: Mutex::new(frontier),
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            durable: watch::channel(head).0,
            poison: Mutex::new(None),
            overlay: Mutex::new(BTreeMap::new()),
            top: std::sync::RwLock::new(top),
            commit_groups: AtomicU64::new(0),
            #[cfg(test)]
            hooks: test_hooks::Hooks::default(),
        });
        let for_thread = Arc::clone(&shared);
        let committer = std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || run_committer(&for_thread, files))
            .map_err(io_err(dir))?;
        tracing::debug!(dir = %dir.display(), size = head.size, "ledger store opened");
        Ok(Store {
            inner: Arc::new(Inner {
                shared,
                committer: Mutex::new(Some(committer)),
            }),
        })
    }

    /// Directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Starts an atomic unit. Holds the staging lock until the [`Txn`] is committed or dropped,
    /// so keep it short: no I/O, no `.await` (a `Txn` is deliberately not `Send`).
    pub fn begin(&self) -> Txn<'_> {
        let shared: &Shared = &self.inner.shared;
        let staging = lock(&shared.staging);
        let frontier = staging.clone();
        Txn {
            shared,
            first_index: frontier.size(),
            frontier,
            staging,
            leaves: Vec::new(),
            nodes: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// Head including every committed unit, durable or not yet (not open transactions).
    pub fn staged_head(&self) -> Head {
        Head::of(&lock(&self.inner.shared.staged_view))
    }

    /// Why the store stopped accepting writes (a failed group commit), or `None` while it is
    /// healthy. A failed store stays failed until the node restarts.
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner.shared.poison).clone()
    }

    /// Head of what is on disk and synced.
    pub fn durable_head(&self) -> Head {
        *self.inner.shared.durable.borrow()
    }

    /// Leaf bytes of entry `index`, if that entry is durable.
    pub fn entry(&self, index: u64) -> Result<Option<Vec<u8>>, LedgerError> {
        self.durable_value(ENTRY_PREFIX, index)
            .map(|v| v.map(|v| v.to_vec()))
    }

    /// Leaf hash of entry `index` (the RFC 6962 hash of its stored bytes), if it is durable.
    pub fn leaf_hash(&self, index: u64) -> Result<Option<[u8; 32]>, LedgerError> {
        self.count_read();
        Ok(self
            .durable_value(ENTRY_PREFIX, index)?
            .map(|leaf| merkle::leaf_hash(&leaf)))
    }

    #[inline]
    fn count_read(&self) {
        #[cfg(test)]
        self.inner
            .shared
            .hooks
            .hash_reads
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Hash of the perfect subtree of height `level` covering leaves
    /// `[index << level, (index + 1) << level)` (level 0: the leaf hash), if all those leaves are
    /// durable: from memory for the upper levels, one stored read for an even level, the hash of
    /// two children for an odd one.
    pub fn node_hash(&self, level: u8, index: u64) -> Result<Option<[u8; 32]>, LedgerError> {
        let end = index
            .checked_add(1)
            .and_then(|n| n.checked_mul(1u64.checked_shl(u32::from(level))?));
        match end {
            Some(end) if level < 64 && end <= self.durable_head().size => {}
            _ => return Ok(None),
        }
        if level == 0 {
            return self.leaf_hash(index);
        }
        if let Some(hash) = self
            .inner
            .shared
            .top
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(level, index)
        {
            return Ok(Some(hash));
        }
        if !is_stored_level(level) {
            let left = self.node_hash(level - 1, 2 * index)?;
            let right = self.node_hash(level - 1, 2 * index + 1)?;
            return match (left, right) {
                (Some(l), Some(r)) => Ok(Some(merkle::node_hash(&l, &r))),
                _ => Err(LedgerError::Corrupt {
                    what: format!("children of durable node ({level}, {index}) are missing"),
                }),
            };
        }
        self.count_read();
        match self.stored_node(level, index)? {
            Some(hash) => Ok(Some(hash)),
            None => Err(LedgerError::Corrupt {
                what: format!(
                    "interior node {} of the durable tree is missing",
                    show_key(&node_key(level, index))
                ),
            }),
        }
    }

    /// The stored (on-disk) node, bypassing the memory cache; `None` if absent.
    fn stored_node(&self, level: u8, index: u64) -> Result<Option<[u8; 32]>, LedgerError> {
        let key = node_key(level, index);
        let Some(v) = self.inner.shared.db.get(key)? else {
            return Ok(None);
        };
        <[u8; 32]>::try_from(v.as_ref())
            .map(Some)
            .map_err(|_| LedgerError::Corrupt {
                what: format!(
                    "interior node {} is {} bytes, expected 32",
                    show_key(&key),
                    v.len()
                ),
            })
    }

    fn durable_value(&self, prefix: u8, index: u64) -> Result<Option<sled::IVec>, LedgerError> {
        if index >= self.durable_head().size {
            return Ok(None);
        }
        match self.inner.shared.db.get(index_key(prefix, index))? {
            Some(v) => Ok(Some(v)),
            None => Err(LedgerError::Corrupt {
                what: format!(
                    "key {} of durable entry {index} is missing",
                    show_key(&index_key(prefix, index))
                ),
            }),
        }
    }

    /// Durable value of side record `key`; reserved keys are refused.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        check_side_key(key)?;
        let shared = &self.inner.shared;
        // sled first, overlay second: see the module docs.
        let current = shared.db.get(key)?;
        if let Some(before) = lock(&shared.overlay).get(key) {
            return Ok(before.clone());
        }
        Ok(current.map(|v| v.to_vec()))
    }

    /// All durable side records whose key starts with `prefix`, in key order. The ledger's own
    /// keys are skipped; a prefix inside them is refused.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<Record>, LedgerError> {
        self.scan_prefix_limit(prefix, None, usize::MAX)
    }

    /// Like [`Store::scan_prefix`], for paging: at most `limit` records, with keys strictly
    /// after `after` when given (pass the last key of the previous page).
    ///
    /// A consistent view of the durable records: the overlay lock is held for the whole scan,
    /// so no group becomes visible half-way through it. (Without this, a group made durable
    /// between two chunks of the scan would show only its keys after the first chunk, and a
    /// reader paging through keys in commit order, like the Inbox stream, would skip the
    /// others.) The committer waits for the scan when it fills or clears the overlay.
    pub fn scan_prefix_limit(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Record>, LedgerError> {
        check_side_key(prefix)?;
        let shared = &self.inner.shared;
        let overlay = lock(&shared.overlay);
        let mut out: Vec<Record> = Vec::new();
        let mut lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        // Read sled in chunks; after each chunk, correct the range it covered with the overlay.
        // Removing in-flight inserts can shrink a chunk, hence the loop.
        while out.len() < limit {
            let want = limit - out.len();
            let mut chunk: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            // Highest key read when the chunk filled up; None when the prefix is exhausted.
            let mut last: Option<Vec<u8>> = None;
            let mut cursor = lower.clone();
            'restart: loop {
                for item in shared
                    .db
                    .range::<Vec<u8>, _>((cursor.clone(), Bound::Unbounded))
                {
                    let (k, v) = item?;
                    if !k.starts_with(prefix) {
                        break 'restart;
                    }
                    if let Some(next) = skip_reserved(&k) {
                        cursor = Bound::Included(next);
                        continue 'restart;
                    }
                    chunk.insert(k.to_vec(), v.to_vec());
                    if chunk.len() >= want {
                        last = Some(k.to_vec());
                        break 'restart;
                    }
                }
                break;
            }
            for (k, before) in overlay.range((lower.clone(), Bound::Unbounded)) {
                if last.as_ref().is_some_and(|l| k > l) {
                    break;
                }
                if !k.starts_with(prefix) {
                    continue;
                }
                match before {
                    Some(v) => chunk.insert(k.clone(), v.clone()),
                    None => chunk.remove(k),
                };
            }
            out.extend(chunk);
            match last {
                Some(l) => lower = Bound::Excluded(l),
                None => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Receiver of the durable head, updated after every durable group commit.
    pub fn subscribe(&self) -> watch::Receiver<Head> {
        self.inner.shared.durable.subscribe()
    }

    /// Number of group commits made durable since this store was opened.
    pub fn commit_groups(&self) -> u64 {
        self.inner.shared.commit_groups.load(Ordering::Acquire)
    }

    /// Recomputes the tree from the stored durable entries: every stored interior node must match
    /// what the entries hash to, and the root must match the durable head. Reads the whole ledger
    /// (O(n)); names the first bad node and the entries it covers.
    pub fn verify(&self) -> Result<Head, LedgerError> {
        let head = self.durable_head();
        let mut frontier = Frontier::new();
        for index in 0..head.size {
            let missing = || LedgerError::Corrupt {
                what: format!("entry {index} is missing"),
            };
            let leaf = self.entry(index)?.ok_or_else(missing)?;
            let mut bad: Option<LedgerError> = None;
            frontier.push_with_nodes(merkle::leaf_hash(&leaf), |level, node, hash| {
                if bad.is_some() || !is_stored_level(level) {
                    return;
                }
                match self.stored_node(level, node) {
                    Ok(Some(h)) if h == *hash => {}
                    Ok(_) => {
                        bad = Some(LedgerError::Corrupt {
                            what: format!(
                                "stored interior node at level {level}, index {node} does not \
                                 match entries {}..{}",
                                node << level,
                                (node + 1) << level
                            ),
                        })
                    }
                    Err(e) => bad = Some(e),
                }
            });
            if let Some(e) = bad {
                return Err(e);
            }
        }
        if frontier.root() != head.root {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "root recomputed over {} entries differs from the head",
                    head.size
                ),
            });
        }
        Ok(head)
    }

    /// Stops the committer after every queued unit has been made durable, then flushes and syncs
    /// once more. Later commits fail with [`LedgerError::Closed`]; reads keep working. Blocks
    /// until the queued units are durable. Also done when the last clone is dropped (errors then
    /// only logged).
    pub fn close(&self) -> Result<(), LedgerError> {
        self.inner.close()
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.shared.dir)
            .field("durable_head", &self.durable_head())
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn close(&self) -> Result<(), LedgerError> {
        let shared = &self.shared;
        lock(&shared.queue).closing = true;
        shared.queue_cv.notify_all();
        let Some(handle) = lock(&self.committer).take() else {
            return Ok(()); // already closed
        };
        if handle.join().is_err() {
            // The committer's unwind guard has already poisoned the store and failed its tickets.
            tracing::error!("ledger committer thread panicked");
        }
        if let Some(cause) = lock(&shared.poison).clone() {
            return Err(LedgerError::Poisoned { cause });
        }
        shared.db.flush()?;
        SyncFiles::open(&shared.dir).map(drop)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the ledger store failed");
        }
    }
}

/// Opens sled at `dir`. sled releases its file lock from a background thread after the last
/// handle is dropped, so a reopen right after a close (an in-process restart) can find the lock
/// still held for a moment: retry briefly, then report that another process holds the ledger.
fn open_sled(dir: &Path, lock_wait: std::time::Duration) -> Result<sled::Db, LedgerError> {
    let deadline = std::time::Instant::now() + lock_wait;
    loop {
        let opened = sled::Config::new()
            .path(dir)
            // Every write goes through our committer, which flushes and syncs each group; sled's
            // periodic flusher thread would only repeat that work (with `sync_all`).
            .flush_every_ms(None)
            // sled's default page cache is 1 GiB and fills as the ledger grows; the ledger is
            // append-mostly, so a small cache keeps a node's memory flat at scale.
            .cache_capacity(CACHE_BYTES)
            .open();
        match opened {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if std::time::Instant::now() >= deadline {
                    return Err(LedgerError::Io {
                        path: dir.join("db"),
                        source: std::io::Error::other(
                            "the ledger is in use by another process (its lock is held)",
                        ),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

fn create_dir_private(dir: &Path) -> Result<(), LedgerError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err(dir))?;
    // Make the new directory's own entry durable.
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Reads the head record and checks that no entry exists past it.
fn recover_head(db: &sled::Db) -> Result<Frontier, LedgerError> {
    let frontier = match db.get(HEAD_KEY)? {
        Some(bytes) => Frontier::from_bytes(&bytes)?,
        None => Frontier::new(),
    };
    let size = frontier.size();
    // Entries and the head are written in one atomic batch, so a key at or past `size` means a
    // half-written state that must not be silently extended or overwritten.
    let from = index_key(ENTRY_PREFIX, size);
    let end = [ENTRY_PREFIX + 1];
    if let Some(item) = db.range::<&[u8], _>(&from[..]..&end[..]).next() {
        let (key, _) = item?;
        return Err(LedgerError::Corrupt {
            what: format!(
                "key {} exists at or past the recorded ledger size {size} (half-written state)",
                show_key(&key)
            ),
        });
    }
    if let Some(last) = size.checked_sub(1)
        && db.get(index_key(ENTRY_PREFIX, last))?.is_none()
    {
        return Err(LedgerError::Corrupt {
            what: format!(
                "key {} of the last entry (ledger size {size}) is missing",
                show_key(&index_key(ENTRY_PREFIX, last))
            ),
        });
    }
    for level in 1..64u8 {
        // Nodes (level, j) with j >= size >> level would cover leaves past the head.
        let from = node_key(level, size >> level);
        let end = node_key(level, u64::MAX);
        if let Some(item) = db.range::<&[u8], _>(&from[..]..=&end[..]).next() {
            let (key, _) = item?;
            return Err(LedgerError::Corrupt {
                what: format!(
                    "interior node {} covers leaves past the recorded ledger size {size} \
                     (half-written state)",
                    show_key(&key)
                ),
            });
        }
    }
    Ok(frontier)
}

/// Loads the cached upper levels of a tree of `size` leaves from the stored nodes.
fn load_top(db: &sled::Db, size: u64) -> Result<TopCache, LedgerError> {
    let mut top = TopCache {
        from: cache_from_level(size),
        levels: Vec::new(),
    };
    for level in (top.from..64).step_by(2) {
        let count = size >> level;
        if count == 0 {
            break;
        }
        let from = node_key(level, 0);
        let to = node_key(level, count - 1);
        for item in db.range::<&[u8], _>(&from[..]..=&to[..]) {
            let (key, value) = item?;
            let index = u64::from_be_bytes(key[2..10].try_into().unwrap_or_default());
            let hash = <[u8; 32]>::try_from(value.as_ref()).map_err(|_| LedgerError::Corrupt {
                what: format!("interior node {} is not 32 bytes", show_key(&key)),
            })?;
            top.push(level, index, hash);
        }
        let loaded = top.levels.get(usize::from(level)).map_or(0, Vec::len) as u64;
        if loaded != count {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "level {level} of the tree holds {loaded} stored nodes, expected {count}"
                ),
            });
        }
    }
    Ok(top)
}

/// The files the committer syncs after sled's flush (see the module docs).
struct SyncFiles {
    db_path: PathBuf,
    /// Kept open: `fdatasync` on this handle covers sled's own writes to the same inode.
    db_file: File,
    blobs_dir: PathBuf,
    /// Blob files already synced (write-once, so once is enough).
    synced_blobs: HashSet<OsString>,
}

impl SyncFiles {
    /// Opens the handles and syncs everything sled has on disk now.
    fn open(dir: &Path) -> Result<SyncFiles, LedgerError> {
        let db_path = dir.join("db");
        // Write access is not needed for fdatasync on Linux, but is on some platforms.
        let db_file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&db_path)
            .map_err(io_err(&db_path))?;
        let conf = dir.join("conf");
        File::open(&conf)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&conf))?;
        let mut files = SyncFiles {
            db_path,
            db_file,
            blobs_dir: dir.join("blobs"),
            synced_blobs: HashSet::new(),
        };
        files.sync()?;
        // `db`, `conf`, `blobs/` and the snapshot are entries of the store directory.
        sync_dir(dir)?;
        sync_dir(&files.blobs_dir)?;
        Ok(files)
    }

    /// Makes everything sled has written so far durable: new blob files first, then the log.
    fn sync(&mut self) -> Result<(), LedgerError> {
        self.sync_new_blobs()?;
        self.db_file.sync_data().map_err(io_err(&self.db_path))
    }

    fn sync_new_blobs(&mut self) -> Result<(), LedgerError> {
        let listing = fs::read_dir(&self.blobs_dir).map_err(io_err(&self.blobs_dir))?;
        let mut present = HashSet::with_capacity(self.synced_blobs.len());
        let mut added = false;
        for item in listing {
            let name = item.map_err(io_err(&self.blobs_dir))?.file_name();
            if !self.synced_blobs.contains(&name) {
                let path = self.blobs_dir.join(&name);
                match File::open(&path).and_then(|f| f.sync_data()) {
                    Ok(()) => added = true,
                    // sled removed it meanwhile (garbage collection): nothing left to sync.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            present.insert(name);
        }
        // Forget removed blobs so the set does not grow without bound.
        self.synced_blobs = present;
        if added {
            tracing::trace!(dir = %self.blobs_dir.display(), "synced new sled blob files");
            sync_dir(&self.blobs_dir)?;
        }
        Ok(())
    }
}

/// Committer thread body: one group per iteration until closed and drained.
fn run_committer(shared: &Shared, mut files: SyncFiles) {
    let _unwind = FailQueueOnUnwind(shared);
    loop {
        {
            let mut queue = lock(&shared.queue);
            while queue.units.is_empty() && !queue.closing {
                queue = shared
                    .queue_cv
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.units.is_empty() {
                return; // closing, and everything queued is done
            }
        }
        #[cfg(test)]
        shared.hooks.wait_while_paused();
        // Take what is queued by now, up to a bounded batch: that is the group.
        let units = take_group(&mut lock(&shared.queue).units);

        if let Some(cause) = lock(&shared.poison).clone() {
            for unit in units {
                unit.done.complete(Err(LedgerError::Poisoned {
                    cause: cause.clone(),
                }));
            }
            continue;
        }
        match shared.commit_group(&units, &mut files) {
            Ok(head) => {
                shared.durable.send_replace(head);
                shared.commit_groups.fetch_add(1, Ordering::AcqRel);
                // In queue order: a completed ticket implies every earlier one is complete.
                for unit in units {
                    unit.done.complete(Ok(head));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger group commit failed; store poisoned");
                *lock(&shared.poison) = Some(e.to_string());
                for unit in units {
                    unit.done.complete(Err(e.duplicate()));
                }
            }
        }
    }
}

/// Most sled writes in one group commit. sled 0.34's memory use explodes with very large batches
/// (measured: batches of ~3,000 inserts over the entry, hash and node key ranges grow the process
/// by ~8 KiB per entry, ~1 GiB at 200,000 entries, while batches of ~900 stay flat); the node's
/// own units are a few entries each, so this only splits bulk appends into several syncs.
const MAX_GROUP_WRITES: usize = 768;

/// The units of the next group, oldest first: at least one, then more while the group stays
/// within [`MAX_GROUP_WRITES`]. A unit is never split (it is the atomic unit).
fn take_group(queue: &mut Vec<Unit>) -> Vec<Unit> {
    let mut writes = 0usize;
    let mut take = 0usize;
    for unit in queue.iter() {
        let w = unit.leaves.len() + unit.nodes.len() + unit.ops.len();
        if take > 0 && writes + w > MAX_GROUP_WRITES {
            break;
        }
        writes += w;
        take += 1;
    }
    let rest = queue.split_off(take);
    std::mem::replace(queue, rest)
}

/// If the committer panics (a bug), poison the store and fail every queued ticket rather than
/// leave waiters hanging. Tickets of the group in progress are failed by their `Completer`s.
struct FailQueueOnUnwind<'a>(&'a Shared);

impl Drop for FailQueueOnUnwind<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let cause = "the ledger committer thread panicked".to_string();
        *lock(&self.0.poison) = Some(cause.clone());
        let mut queue = lock(&self.0.queue);
        queue.closing = true;
        for unit in std::mem::take(&mut queue.units) {
            unit.done.complete(Err(LedgerError::Poisoned {
                cause: cause.clone(),
            }));
        }
    }
}

impl Shared {
    /// Applies, flushes and syncs one group; returns the new durable head.
    fn commit_group(&self, units: &[Unit], files: &mut SyncFiles) -> Result<Head, LedgerError> {
        let mut head = *self.durable.borrow();
        let mut batch = sled::Batch::default();
        let mut next = head.size;
        for unit in units {
            if unit.first_index != next || unit.frontier.size() != next + unit.leaves.len() as u64 {
                return Err(LedgerError::Corrupt {
                    what: format!(
                        "internal: unit staged at index {} with {} entries and frontier size {}, \
                         but the log continues at {next}",
                        unit.first_index,
                        unit.leaves.len(),
                        unit.frontier.size()
                    ),
                });
            }
            for leaf in &unit.leaves {
                batch.insert(&index_key(ENTRY_PREFIX, next)[..], leaf.as_slice());
                next += 1;
            }
            for (level, index, hash) in &unit.nodes {
                batch.insert(&node_key(*level, *index)[..], &hash[..]);
            }
        }
        if let Some(last) = units.iter().rev().find(|u| !u.leaves.is_empty()) {
            batch.insert(HEAD_KEY, last.frontier.to_bytes());
            head = Head::of(&last.frontier);
        }
        // Side records after the entries; a later write to the same key wins, as staged.
        let mut side_keys: BTreeSet<&[u8]> = BTreeSet::new();
        for unit in units {
            for (key, value) in &unit.ops {
                match value {
                    Some(v) => batch.insert(key.as_slice(), v.as_slice()),
                    None => batch.remove(key.as_slice()),
                }
                side_keys.insert(key.as_slice());
            }
        }
        // Hide the new side values from readers until durable. The overlay is filled before
        // the batch is applied, so a reader that sees a new value in sled also sees the overlay.
        let mut before = Vec::with_capacity(side_keys.len());
        for key in &side_keys {
            before.push((key.to_vec(), self.db.get(key)?.map(|v| v.to_vec())));
        }
        {
            let mut overlay = lock(&self.overlay);
            for (key, value) in before {
                overlay.entry(key).or_insert(value);
            }
        }

        self.db.apply_batch(batch)?;
        self.db.flush()?;
        #[cfg(test)]
        self.hooks.injected_sync_failure(&files.db_path)?;
        files.sync()?;

        // Durable: the upper levels join the memory cache before the new head is published.
        {
            let mut top = self.top.write().unwrap_or_else(PoisonError::into_inner);
            top.fit(head.size);
            for unit in units {
                for (level, index, hash) in &unit.nodes {
                    top.push(*level, *index, *hash);
                }
            }
        }

        // Durable: the new values may now be read.
        let mut overlay = lock(&self.overlay);
        for key in side_keys {
            overlay.remove(key);
        }
        Ok(head)
    }
}

/// An atomic unit being staged: entries and side-record writes that become durable together.
///
/// Holds the store's staging lock; dropping it without [`Txn::commit`] discards everything and
/// consumes no indices.
pub struct Txn<'a> {
    shared: &'a Shared,
    staging: MutexGuard<'a, Frontier>,
    first_index: u64,
    /// Staging frontier plus this transaction's entries.
    frontier: Frontier,
    leaves: Vec<Vec<u8>>,
    nodes: Vec<(u8, u64, [u8; HASH_LEN])>,
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Txn<'_> {
    /// Appends an entry (its serialized leaf bytes) and returns its index, final as soon as the
    /// transaction is committed.
    pub fn append(&mut self, leaf: Vec<u8>) -> u64 {
        let index = self.frontier.size();
        let hash = merkle::leaf_hash(&leaf);
        let nodes = &mut self.nodes;
        self.frontier.push_with_nodes(hash, |level, index, node| {
            if is_stored_level(level) {
                nodes.push((level, index, *node));
            }
        });
        self.leaves.push(leaf);
        index
    }

    /// Index the next [`Txn::append`] would get.
    pub fn next_index(&self) -> u64 {
        self.frontier.size()
    }

    /// Head the ledger will have once this unit is durable (with the entries appended so far),
    /// e.g. to quote in a receipt signed before the unit commits.
    pub fn staged_head(&self) -> Head {
        Head::of(&self.frontier)
    }

    /// Writes side record `key` with this unit; keys in the ledger's reserved space (`e…`,
    /// `n…`, `m/…`) are refused.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), LedgerError> {
        check_side_key(&key)?;
        self.ops.push((key, Some(value)));
        Ok(())
    }

    /// Removes side record `key` with this unit; reserved keys are refused.
    pub fn remove(&mut self, key: Vec<u8>) -> Result<(), LedgerError> {
        check_side_key(&key)?;
        self.ops.push((key, None));
        Ok(())
    }

    /// Hands the unit to the committer and returns at once; the [`Ticket`] completes once the
    /// unit is durable. On a poisoned or closed store nothing is staged and the ticket carries
    /// the error.
    pub fn commit(self) -> Ticket {
        let Txn {
            shared,
            mut staging,
            first_index,
            frontier,
            leaves,
            nodes,
            ops,
        } = self;
        let (done, ticket) = completion();
        if let Some(cause) = lock(&shared.poison).clone() {
            done.complete(Err(LedgerError::Poisoned { cause }));
            return ticket;
        }
        let mut queue = lock(&shared.queue);
        if queue.closing {
            drop(queue);
            done.complete(Err(LedgerError::Closed));
            return ticket;
        }
        // Still under the staging lock: queue order is index order.
        staging.clone_from(&frontier);
        lock(&shared.staged_view).clone_from(&frontier);
        queue.units.push(Unit {
            first_index,
            leaves,
            nodes,
            frontier,
            ops,
            done,
        });
        drop(queue);
        shared.queue_cv.notify_one();
        drop(staging);
        ticket
    }
}

/// Completion of one committed unit.
///
/// Tickets complete in commit order: once one is complete, so is every ticket of an earlier
/// commit.
pub struct Ticket {
    slot: Arc<Slot>,
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("complete", &self.is_complete())
            .finish()
    }
}

struct Slot {
    result: Mutex<Option<Result<Head, LedgerError>>>,
    /// Wakes `wait_blocking`.
    cv: Condvar,
    /// Wakes `durable` (stores a permit if nobody waits yet).
    notify: Notify,
}

impl Slot {
    fn take(&self) -> Option<Result<Head, LedgerError>> {
        lock(&self.result).take()
    }
}

/// Committer side of a [`Ticket`]. Dropping it uncompleted fails the ticket, so a waiter never
/// hangs if the committer dies.
struct Completer {
    slot: Option<Arc<Slot>>,
}

fn completion() -> (Completer, Ticket) {
    let slot = Arc::new(Slot {
        result: Mutex::new(None),
        cv: Condvar::new(),
        notify: Notify::new(),
    });
    (
        Completer {
            slot: Some(Arc::clone(&slot)),
        },
        Ticket { slot },
    )
}

impl Completer {
    fn complete(mut self, result: Result<Head, LedgerError>) {
        if let Some(slot) = self.slot.take() {
            Self::fill(&slot, result);
        }
    }

    fn fill(slot: &Slot, result: Result<Head, LedgerError>) {
        *lock(&slot.result) = Some(result);
        slot.cv.notify_all();
        slot.notify.notify_one();
    }
}

impl Drop for Completer {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let cause = "the ledger committer stopped before this unit was durable".to_string();
            Self::fill(&slot, Err(LedgerError::Poisoned { cause }));
        }
    }
}

impl Ticket {
    /// Waits (without blocking the runtime thread) until the unit is durable; returns the
    /// durable head of the group that contained it.
    pub async fn durable(self) -> Result<Head, LedgerError> {
        loop {
            let notified = self.slot.notify.notified();
            if let Some(result) = self.slot.take() {
                return result;
            }
            notified.await;
        }
    }

    /// Blocks the calling thread until the unit is durable. Not for async tasks: use
    /// [`Ticket::durable`] there.
    pub fn wait_blocking(self) -> Result<Head, LedgerError> {
        let mut result = lock(&self.slot.result);
        loop {
            if let Some(r) = result.take() {
                return r;
            }
            result = self
                .slot
                .cv
                .wait(result)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether the unit has completed (durable or failed), without waiting.
    pub fn is_complete(&self) -> bool {
        lock(&self.slot.result).is_some()
    }
}

#[cfg(test)]
mod test_hooks {
    //! Deterministic control over the committer for tests (no timing involved).
    use std::io;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Condvar, Mutex, PoisonError};

    use super::{LedgerError, lock};

    #[derive(Default)]
    pub(super) struct Hooks {
        paused: Mutex<bool>,
        resumed: Condvar,
        fail_sync: AtomicBool,
        /// Stored hashes read (leaf hashes and interior nodes), to check proof costs.
        pub(super) hash_reads: AtomicU64,
    }

    impl Hooks {
        pub(super) fn set_paused(&self, paused: bool) {
            *lock(&self.paused) = paused;
            self.resumed.notify_all();
        }

        pub(super) fn wait_while_paused(&self) {
            let mut paused = lock(&self.paused);
            while *paused {
                paused = self
                    .resumed
                    .wait(paused)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }

        pub(super) fn fail_next_sync(&self) {
            self.fail_sync.store(true, Ordering::SeqCst);
        }

        pub(super) fn injected_sync_failure(&self, path: &Path) -> Result<(), LedgerError> {
            if self.fail_sync.swap(false, Ordering::SeqCst) {
                return Err(LedgerError::Io {
                    path: path.to_path_buf(),
                    source: io::Error::other("injected fdatasync failure"),
                });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Store {
        /// Stops the committer before it takes the next group.
        fn pause_committer(&self) {
            self.inner.shared.hooks.set_paused(true);
        }
        fn resume_committer(&self) {
            self.inner.shared.hooks.set_paused(false);
        }
        /// Stored hashes read so far (leaf hashes and interior nodes).
        pub(crate) fn hash_reads(&self) -> u64 {
            self.inner.shared.hooks.hash_reads.load(Ordering::Relaxed)
        }
        fn queued(&self) -> usize {
            lock(&self.inner.shared.queue).units.len()
        }
        pub(crate) fn fail_next_sync(&self) {
            self.inner.shared.hooks.fail_next_sync();
        }
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().expect("create temp dir")
    }

    fn open(dir: &Path) -> Store {
        Store::open(dir).expect("open store")
    }

    fn leaf(i: u64) -> Vec<u8> {
        format!("entry-{i}-{}", "x".repeat((i % 13) as usize)).into_bytes()
    }

    /// Root recomputed from the stored leaf hashes of the first `size` entries.
    fn recomputed_root(store: &Store, size: u64) -> [u8; 32] {
        let mut f = Frontier::new();
        for i in 0..size {
            f.push(
                store
                    .leaf_hash(i)
                    .expect("read hash")
                    .expect("hash present"),
            );
        }
        f.root()
    }

    #[test]
    fn store_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        fn check_send<T: Send + 'static>() {}
        check::<Store>();
        check_send::<Ticket>();
    }

    #[test]
    fn entries_survive_reopen_with_consecutive_indices() {
        let dir = tempdir();
        let path = dir.path().join("ledger");
        {
            let store = open(&path);
            assert_eq!(
                store.durable_head(),
                Head {
                    size: 0,
                    root: merkle::empty_root()
                }
            );
            let mut t = store.begin();
            assert_eq!(t.append(leaf(0)), 0);
            assert_eq!(t.append(leaf(1)), 1);
            assert_eq!(t.next_index(), 2);
            let promised = t.staged_head();
            let head = t.commit().wait_blocking().expect("durable");
            assert_eq!(head.size, 2);
            assert_eq!(
                head, promised,
                "a Txn's staged head is the head once it is durable"
            );
            let mut t = store.begin();
            assert_eq!(t.append(leaf(2)), 2);
            let head = t.commit().wait_blocking().expect("durable");
            assert_eq!(head, store.durable_head());
            assert_eq!(head, store.staged_head());
            store.close().expect("close");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "store directory must be private");
        }
        let store = open(&path);
        let head = store.durable_head();
        assert_eq!(head.size, 3);
        for i in 0..3 {
            assert_eq!(store.entry(i).expect("read"), Some(leaf(i)));
        }
        assert_eq!(store.entry(3).expect("read"), None);
        let mut t = store.begin();
        assert_eq!(t.append(leaf(3)), 3, "indices continue across reopen");
        let head = t.commit().wait_blocking().expect("durable");
        assert_eq!(head.size, 4);
        assert_eq!(store.verify().expect("verify"), head);
    }

    #[test]
    fn head_root_equals_root_recomputed_from_stored_hashes() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut n = 0;
        for batch in [1u64, 2, 3, 5, 8, 13, 1, 0, 4] {
            let mut t = store.begin();
            for _ in 0..batch {
                t.append(leaf(n));
                n += 1;
            }
            let head = t.commit().wait_blocking().expect("durable");
            assert_eq!(head.size, n);
            assert_eq!(head.root, recomputed_root(&store, n));
            for i in 0..n {
                let stored = store.leaf_hash(i).expect("read").expect("present");
                assert_eq!(stored, merkle::leaf_hash(&leaf(i)));
            }
        }
        assert_eq!(store.verify().expect("verify").size, n);
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.durable_head().root, recomputed_root(&store, n));
    }

    #[test]
    fn dropped_txn_writes_nothing() {
        let dir = tempdir();
        let store = open(dir.path());
        {
            let mut t = store.begin();
            assert_eq!(t.append(leaf(0)), 0);
            t.put(b"x/k".to_vec(), b"v".to_vec()).expect("put");
        }
        assert_eq!(store.staged_head().size, 0);
        let mut t = store.begin();
        assert_eq!(t.append(leaf(7)), 0, "a dropped txn consumes no index");
        t.commit().wait_blocking().expect("durable");
        assert_eq!(store.get(b"x/k").expect("get"), None);
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.durable_head().size, 1);
        assert_eq!(store.entry(0).expect("read"), Some(leaf(7)));
        assert_eq!(store.get(b"x/k").expect("get"), None);
    }

    #[test]
    fn side_records_commit_with_the_entries_of_the_same_txn() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut t = store.begin();
        t.put(b"i/old".to_vec(), b"1".to_vec()).expect("put");
        t.commit().wait_blocking().expect("durable");

        store.pause_committer();
        let mut t = store.begin();
        let index = t.append(leaf(0));
        t.put(b"i/a".to_vec(), b"A".to_vec()).expect("put");
        t.put(b"i/b".to_vec(), b"B0".to_vec()).expect("put");
        t.put(b"i/b".to_vec(), b"B1".to_vec()).expect("put"); // later write wins
        t.remove(b"i/old".to_vec()).expect("remove");
        let ticket = t.commit();
        // Staged but not durable: neither the entry nor the side records are visible.
        assert_eq!(store.staged_head().size, 1);
        assert_eq!(store.durable_head().size, 0);
        assert_eq!(store.entry(index).expect("read"), None);
        assert_eq!(store.get(b"i/a").expect("get"), None);
        assert_eq!(store.get(b"i/old").expect("get"), Some(b"1".to_vec()));
        store.resume_committer();
        let head = ticket.wait_blocking().expect("durable");
        assert_eq!(head.size, 1);
        let expect = vec![
            (b"i/a".to_vec(), b"A".to_vec()),
            (b"i/b".to_vec(), b"B1".to_vec()),
        ];
        assert_eq!(store.scan_prefix(b"i/").expect("scan"), expect);
        assert_eq!(store.entry(0).expect("read"), Some(leaf(0)));
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.scan_prefix(b"i/").expect("scan"), expect);
        assert_eq!(store.entry(0).expect("read"), Some(leaf(0)));
    }

    #[test]
    fn reserved_keys_are_refused() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut t = store.begin();
        t.append(leaf(0));
        for key in [
            &b"e"[..],
            b"e\0\0\0\0\0\0\0\0",
            b"node",
            b"m/head",
            b"m/other",
        ] {
            assert!(matches!(
                t.put(key.to_vec(), vec![1]),
                Err(LedgerError::ReservedKey { .. })
            ));
            assert!(matches!(
                t.remove(key.to_vec()),
                Err(LedgerError::ReservedKey { .. })
            ));
            assert!(matches!(
                store.get(key),
                Err(LedgerError::ReservedKey { .. })
            ));
            assert!(matches!(
                store.scan_prefix(key),
                Err(LedgerError::ReservedKey { .. })
            ));
        }
        // Near misses are ordinary side keys.
        t.put(b"m".to_vec(), b"1".to_vec()).expect("put m");
        t.put(b"mx".to_vec(), b"2".to_vec()).expect("put mx");
        t.put(b"x/1".to_vec(), b"3".to_vec()).expect("put x/1");
        t.commit().wait_blocking().expect("durable");
        // Scans that span the reserved ranges skip them.
        let all = store.scan_prefix(b"").expect("scan all");
        let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"m"[..], b"mx", b"x/1"]);
        assert_eq!(store.scan_prefix(b"m").expect("scan m").len(), 2);
    }

    #[test]
    fn scan_prefix_limit_pages_in_key_order() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut t = store.begin();
        for i in (0..10u8).rev() {
            t.put(format!("x/{i:02}").into_bytes(), vec![i])
                .expect("put");
        }
        t.put(b"x0".to_vec(), b"outside".to_vec()).expect("put");
        t.put(b"w/".to_vec(), b"outside".to_vec()).expect("put");
        t.commit().wait_blocking().expect("durable");

        let mut pages = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store
                .scan_prefix_limit(b"x/", after.as_deref(), 3)
                .expect("page");
            if page.is_empty() {
                break;
            }
            after = page.last().map(|(k, _)| k.clone());
            pages.push(page);
        }
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 3, 3, 1]
        );
        let values: Vec<u8> = pages.concat().into_iter().map(|(_, v)| v[0]).collect();
        assert_eq!(values, (0..10).collect::<Vec<u8>>());
        assert_eq!(store.scan_prefix(b"x/").expect("scan").len(), 10);
        assert!(
            store
                .scan_prefix_limit(b"x/", None, 0)
                .expect("empty")
                .is_empty()
        );
        // `after` before the prefix starts at the prefix.
        assert_eq!(
            store.scan_prefix_limit(b"x/", Some(b"a"), 2).expect("page")[0].0,
            b"x/00"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_tasks_share_group_commits() {
        let dir = tempdir();
        let store = open(dir.path());
        let groups_before = store.commit_groups();
        // Hold the committer so all 50 units are queued before it takes the next group: the
        // test is about grouping, and must not depend on timing.
        store.pause_committer();
        let mut tasks = Vec::new();
        for task in 0..50u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let (index, ticket) = {
                    let mut t = store.begin();
                    let index = t.append(format!("task {task}").into_bytes());
                    t.put(
                        format!("x/task/{task:02}").into_bytes(),
                        index.to_be_bytes().to_vec(),
                    )
                    .expect("put");
                    (index, t.commit())
                };
                let head = ticket.durable().await.expect("durable");
                assert!(head.size > index);
                index
            }));
        }
        while store.queued() < 50 {
            tokio::task::yield_now().await;
        }
        store.resume_committer();
        let mut indices = Vec::new();
        for task in tasks {
            indices.push(task.await.expect("task"));
        }
        indices.sort_unstable();
        assert_eq!(
            indices,
            (0..50).collect::<Vec<u64>>(),
            "unique and contiguous"
        );
        let groups = store.commit_groups() - groups_before;
        assert!(
            groups < 50,
            "50 concurrent transactions took {groups} group commits"
        );
        assert_eq!(groups, 1);
        assert_eq!(store.durable_head().size, 50);
        assert_eq!(store.scan_prefix(b"x/task/").expect("scan").len(), 50);
        assert_eq!(store.durable_head().root, recomputed_root(&store, 50));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_tasks_without_pause_get_contiguous_indices() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut tasks = Vec::new();
        for task in 0..50u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for round in 0..4u64 {
                    let (index, ticket) = {
                        let mut t = store.begin();
                        (t.append(format!("{task}/{round}").into_bytes()), t.commit())
                    };
                    ticket.durable().await.expect("durable");
                    assert!(store.entry(index).expect("read").is_some());
                    got.push(index);
                }
                got
            }));
        }
        let mut indices = Vec::new();
        for task in tasks {
            indices.extend(task.await.expect("task"));
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..200).collect::<Vec<u64>>());
        assert!(store.commit_groups() <= 200);
        assert_eq!(store.verify().expect("verify").size, 200);
    }

    #[test]
    fn later_tickets_never_complete_before_earlier_ones() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut tickets = Vec::new();
        for i in 0..300 {
            let mut t = store.begin();
            t.append(leaf(i));
            tickets.push(t.commit());
        }
        // Scan from the newest down: if ticket k was seen complete, every j < k (read later)
        // must be complete too.
        loop {
            let mut seen_complete = false;
            let mut all = true;
            for (k, ticket) in tickets.iter().enumerate().rev() {
                let done = ticket.is_complete();
                assert!(
                    done || !seen_complete,
                    "ticket {k} incomplete after a later one completed"
                );
                seen_complete |= done;
                all &= done;
            }
            if all {
                break;
            }
            std::thread::yield_now();
        }
        let mut last_size = 0;
        for ticket in tickets {
            let head = ticket.wait_blocking().expect("durable");
            assert!(head.size >= last_size, "heads are monotone in commit order");
            last_size = head.size;
        }
        assert_eq!(last_size, 300);
    }

    #[tokio::test]
    async fn subscribers_see_each_durable_head() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut rx = store.subscribe();
        let mut t = store.begin();
        t.append(leaf(0));
        let head = t.commit().durable().await.expect("durable");
        rx.changed().await.expect("sender alive");
        assert_eq!(*rx.borrow_and_update(), head);
    }

    #[test]
    fn failed_sync_poisons_and_hides_the_unsynced_group() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut t = store.begin();
        t.append(leaf(0));
        t.put(b"x/k".to_vec(), b"old".to_vec()).expect("put");
        let good = t.commit().wait_blocking().expect("durable");

        store.fail_next_sync();
        let mut t = store.begin();
        let index = t.append(leaf(1));
        t.put(b"x/k".to_vec(), b"new".to_vec()).expect("put");
        t.put(b"x/fresh".to_vec(), b"new".to_vec()).expect("put");
        match t.commit().wait_blocking() {
            Err(LedgerError::Io { source, .. }) => {
                assert!(source.to_string().contains("injected"), "{source}");
            }
            other => panic!("expected the I/O failure, got {other:?}"),
        }
        // Applied in sled but never synced: not visible, not acknowledged.
        assert_eq!(store.durable_head(), good);
        assert_eq!(store.entry(index).expect("read"), None);
        assert_eq!(store.get(b"x/k").expect("get"), Some(b"old".to_vec()));
        assert_eq!(store.get(b"x/fresh").expect("get"), None);
        assert_eq!(
            store.scan_prefix(b"x/").expect("scan"),
            vec![(b"x/k".to_vec(), b"old".to_vec())]
        );
        let mut t = store.begin();
        t.append(leaf(2));
        assert!(matches!(
            t.commit().wait_blocking(),
            Err(LedgerError::Poisoned { .. })
        ));
        assert!(matches!(store.close(), Err(LedgerError::Poisoned { .. })));
    }

    #[test]
    fn closed_store_refuses_commits_but_reads() {
        let dir = tempdir();
        let store = open(dir.path());
        let mut t = store.begin();
        t.append(leaf(0));
        let ticket = t.commit();
        store.close().expect("close");
        // Queued work is finished before the committer stops.
        assert_eq!(ticket.wait_blocking().expect("durable").size, 1);
        let mut t = store.begin();
        t.append(leaf(1));
        assert!(matches!(
            t.commit().wait_blocking(),
            Err(LedgerError::Closed)
        ));
        assert_eq!(store.entry(0).expect("read"), Some(leaf(0)));
        store.close().expect("second close is a no-op");
    }

    #[test]
    fn open_rejects_half_written_state() {
        let dir = tempdir();
        {
            let store = open(dir.path());
            let mut t = store.begin();
            t.append(leaf(0));
            t.append(leaf(1));
            t.commit().wait_blocking().expect("durable");
        }
        {
            let db = sled::open(dir.path()).expect("raw sled");
            db.insert(index_key(ENTRY_PREFIX, 5), b"stray".to_vec())
                .expect("insert");
            db.flush().expect("flush");
        }
        match Store::open(dir.path()) {
            Err(LedgerError::Corrupt { what }) => assert!(what.contains("half-written"), "{what}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        {
            let db = sled::open(dir.path()).expect("raw sled");
            db.remove(index_key(ENTRY_PREFIX, 5)).expect("remove");
            db.insert(HEAD_KEY, vec![0u8; 11]).expect("insert");
            db.flush().expect("flush");
        }
        assert!(matches!(
            Store::open(dir.path()),
            Err(LedgerError::Corrupt { .. })
        ));
    }

    #[test]
    fn stored_interior_nodes_match_the_tree_and_tampering_is_named() {
        let dir = tempdir();
        {
            let store = open(dir.path());
            // Units of varied sizes, so nodes completed across unit boundaries are stored too.
            let mut i = 0;
            for unit in [1u64, 3, 4, 9, 1, 16, 2] {
                let mut t = store.begin();
                for _ in 0..unit {
                    t.append(leaf(i));
                    i += 1;
                }
                t.commit().wait_blocking().expect("durable");
            }
            assert_eq!(store.durable_head().size, 36);
            store.verify().expect("consistent");
            // Every perfect subtree inside the tree is stored and hashes its leaves.
            for level in 1..=5u8 {
                for index in 0..(36u64 >> level) {
                    let start = index << level;
                    let want = recomputed_range(&store, start, start + (1 << level));
                    assert_eq!(store.node_hash(level, index).unwrap(), Some(want));
                }
                // The node that would reach past the durable size is not served.
                assert_eq!(store.node_hash(level, 36u64 >> level).unwrap(), None);
            }
        }
        {
            let db = sled::open(dir.path()).expect("raw sled");
            db.insert(node_key(2, 3), vec![0u8; 32]).expect("insert");
            db.flush().expect("flush");
        }
        let store = open(dir.path());
        match store.verify() {
            Err(LedgerError::Corrupt { what }) => {
                assert!(what.contains("level 2, index 3"), "{what}")
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        drop(store);
        {
            let db = sled::open(dir.path()).expect("raw sled");
            db.insert(node_key(3, 4), vec![0u8; 32]).expect("insert");
            db.flush().expect("flush");
        }
        match Store::open(dir.path()) {
            Err(LedgerError::Corrupt { what }) => assert!(what.contains("half-written"), "{what}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    /// RFC 6962 hash of leaves `[start, end)` recomputed from the entries (test oracle).
    fn recomputed_range(store: &Store, start: u64, end: u64) -> [u8; 32] {
        let hashes: Vec<[u8; 32]> = (start..end)
            .map(|i| merkle::leaf_hash(&store.entry(i).unwrap().unwrap()))
            .collect();
        fn mth(h: &[[u8; 32]]) -> [u8; 32] {
            if h.len() == 1 {
                return h[0];
            }
            // Largest power of two strictly below the length.
            let k = 1usize << (usize::BITS - 1 - (h.len() - 1).leading_zeros());
            merkle::node_hash(&mth(&h[..k]), &mth(&h[k..]))
        }
        mth(&hashes)
    }

    #[test]
    fn large_values_spill_to_sled_blobs_and_survive_reopen() {
        let dir = tempdir();
        let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        {
            let store = open(dir.path());
            let mut t = store.begin();
            t.append(big.clone());
            t.put(b"x/big".to_vec(), big.clone()).expect("put");
            t.commit().wait_blocking().expect("durable");
        }
        // Documents the sled behaviour the committer's blob syncing exists for.
        let blobs = fs::read_dir(dir.path().join("blobs"))
            .expect("blobs dir")
            .count();
        assert!(
            blobs > 0,
            "values over ~128 KiB are stored as sled blob files"
        );
        let store = open(dir.path());
        assert_eq!(store.entry(0).expect("read"), Some(big.clone()));
        assert_eq!(store.get(b"x/big").expect("get"), Some(big));
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_ledger_held_by_another_store_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger");
        let _held = Store::open(&path).expect("first open");
        let err = Store::open(&path)
            .expect_err("second open must fail")
            .to_string();
        assert!(err.contains("in use by another process"), "{err}");
        assert!(err.contains("ledger"), "{err}");
    }
}
