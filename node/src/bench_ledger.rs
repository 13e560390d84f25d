//! `dccf-node bench ledger`: durable ledger appends with group commit against a raw sled
//! baseline measured in the same run, then inclusion proofs, peak RSS and disk use of a ledger of
//! `--entries` entries (1M by default).
//!
//! Phases, in order, all under one work directory (`--dir`, or a temporary one removed
//! afterwards):
//!
//! 1. **Throughput.** `--appenders` tokio tasks on a two-worker runtime each loop { `begin`;
//!    append one leaf; `commit`; await durability } against a ledger store in `append/`, for
//!    `--seconds` per round. Interleaved round by round with the baselines: one thread inserting
//!    the same leaf bytes under 9-byte keys into a raw sled database in `raw-sled/` (the store's
//!    `sled::Config`), calling sled's `flush` after every 64 inserts, without and with an
//!    `fdatasync` of sled's log after each flush. Each side keeps its best round.
//! 2. **Build.** A child process (this executable re-run with the hidden `--child-append DIR`)
//!    appends `--entries` leaves to a fresh store in `ledger/`, 128 per transaction with
//!    several transactions in flight, closes it and reports its peak RSS (`VmHWM`).
//! 3. **Disk.** Bytes of every file under `ledger/` once the child has closed the store.
//! 4. **Proofs.** The parent opens `ledger/` and times `proof::inclusion_proof` and
//!    `proof::verify_inclusion` for random indices in the tree of size `--entries`.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::bench::{BenchError, print_json};
use crate::ledger::proof::{self, Hash};
use crate::ledger::{Store, entry};
use crate::proto::v1::{EntryKind, LedgerEntry};

/// Size of every benchmark leaf. A sealed header of the sample declaration makes a 373-byte
/// entry; headers with longer ids, `in_reply_to` and a consent reference grow, so the suite uses
/// the conservative 600 bytes of the ledger micro-benchmark (`benches/micro.rs`).
pub const LEAF_BYTES: usize = 600;
/// Interleaved rounds of the throughput phase (each side keeps its best round).
const ROUNDS: usize = 3;
/// Inserts between two `flush` calls in the raw sled baseline.
const RAW_FLUSH_EVERY: u64 = 64;
/// Leaves per transaction when building the large ledger.
const BUILD_TXN_LEAVES: u64 = 128;
/// Committed transactions allowed in flight while building the large ledger.
const BUILD_IN_FLIGHT: usize = 32;
/// Time budget for proof generation: sampling stops at `--proofs` proofs or once this much time
/// has been spent generating (but never before [`MIN_PROOFS`] proofs).
const PROOF_GEN_BUDGET: Duration = Duration::from_secs(30);
/// Proofs generated whatever the budget.
const MIN_PROOFS: usize = 3;
/// Verification passes over the generated proofs continue until this much time has passed.
const VERIFY_MIN_TIME: Duration = Duration::from_millis(200);
/// Fixed seed of the proof index sampler, so runs sample the same indices.
const PROOF_SEED: u64 = 0x0dcc_f1ed_9e71_0001;

/// Options of `dccf-node bench ledger`.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Entries of the large ledger (the `_1m` figures are taken at this size).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub entries: u64,
    /// Concurrent appender threads in the throughput phase.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub appenders: u32,
    /// Seconds per round of the throughput phase (3 interleaved rounds per side).
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    pub seconds: f64,
    /// Random indices to prove in the large ledger (fewer if generation exceeds 30 s in all).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub proofs: u32,
    /// Work directory, empty or new, left in place (default: a temporary one, removed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Internal: append `--entries` leaves to a new store in DIR, then print peak RSS as JSON.
    #[arg(long, hide = true, value_name = "DIR")]
    pub child_append: Option<PathBuf>,
}

/// Parses `--seconds`: a positive number of seconds, at most one hour.
fn parse_seconds(text: &str) -> Result<f64, String> {
    let s: f64 = text
        .parse()
        .map_err(|e| format!("{text:?} is not a number of seconds ({e})"))?;
    if s.is_finite() && s > 0.0 && s <= 3600.0 {
        Ok(s)
    } else {
        Err(format!("{text:?}: seconds must be > 0 and <= 3600"))
    }
}

/// Where the large ledger is built.
#[derive(Debug, Clone)]
pub enum BuildIn {
    /// In a child process running this executable (the CLI's way: a clean peak RSS).
    ChildProcess(PathBuf),
    /// In the calling process (tests): the peak RSS is then the whole process's so far.
    ThisProcess,
}

/// Figures of the ledger suite. Figures suffixed `_1m` are taken on the ledger of `entries`
/// entries (1,000,000 unless `--entries` says otherwise).
#[derive(Debug, serde::Serialize)]
pub struct LedgerFigures {
    /// Durable appends per second, `appenders` tokio tasks each committing one entry at a time
    /// and awaiting its durability (best round).
    pub appends_per_s: f64,
    /// Raw sled inserts per second from one thread, `flush` after every 64 (best round).
    pub raw_sled_flush64_per_s: f64,
    /// `appends_per_s / raw_sled_flush64_per_s`.
    pub ratio: f64,
    /// Raw sled as above plus an `fdatasync` of its log after every flush (what durability
    /// costs sled itself, measured in the same run).
    pub raw_sled_flush64_fdatasync_per_s: f64,
    /// `appends_per_s / raw_sled_flush64_fdatasync_per_s`.
    pub ratio_to_durable_raw: f64,
    /// Mean time of one `proof::inclusion_proof` for a random index, tree of size `entries`.
    pub inclusion_proof_gen_us_1m: f64,
    /// Mean time of one `proof::verify_inclusion` (leaf hash and root given).
    pub inclusion_proof_verify_us_1m: f64,
    /// Peak RSS (`VmHWM`) of the process that appended the `entries` entries, MiB.
    pub peak_rss_mb_1m: f64,
    /// Sum of the file sizes under the store directory after `entries` entries and close,
    /// divided by `entries` (sled preallocates, so this includes unused space).
    pub disk_bytes_per_entry: f64,
    /// Same with allocated blocks (`st_blocks * 512`) instead of file sizes.
    pub disk_blocks_bytes_per_entry: f64,
    /// Entries of the large ledger.
    pub entries: u64,
    /// Concurrent appenders in the throughput phase.
    pub appenders: u32,
    /// How the appenders run.
    pub appender_kind: &'static str,
    /// Length of one throughput round.
    pub seconds_per_round: f64,
    /// Interleaved throughput rounds per side.
    pub rounds: usize,
    /// Size of one leaf (a serialized `ENVELOPE_RECEIVED` entry).
    pub leaf_bytes: usize,
    /// Mean entries per group commit over all ledger rounds.
    pub mean_group_entries: f64,
    /// Appends per second while building the large ledger (128 per transaction).
    pub build_entries_per_s: f64,
    /// Proofs generated and timed.
    pub proof_samples: usize,
    /// Proofs that verified (must equal `proof_samples`).
    pub proofs_verified: usize,
    /// Work directory used (removed afterwards unless given with `--dir`).
    pub dir: String,
}

/// What the child (or the in-process build) reports after building the large ledger.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct BuildReport {
    /// Entries appended (and durable).
    pub entries: u64,
    /// Peak RSS of the process, KiB (`VmHWM`).
    pub peak_rss_kib: u64,
    /// Wall time of the appends, seconds (store open and close included).
    pub seconds: f64,
}

fn fail(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> BenchError + '_ {
    move |e| BenchError(format!("{what}: {e}"))
}

/// Runs `dccf-node bench ledger` and prints its figures (or, with `--child-append`, does the
/// child's build and prints its [`BuildReport`]).
pub async fn run(args: LedgerArgs) -> Result<(), BenchError> {
    if let Some(dir) = args.child_append {
        let report = tokio::task::spawn_blocking(move || build_store(&dir, args.entries))
            .await
            .map_err(|e| fail("ledger build task")(&e))??;
        return print_json(&report);
    }
    let exe = std::env::current_exe().map_err(|e| fail("locating the dccf-node executable")(&e))?;
    let json = args.json;
    let r = tokio::task::spawn_blocking(move || ledger(&args, &BuildIn::ChildProcess(exe)))
        .await
        .map_err(|e| fail("ledger bench task")(&e))??;
    if json {
        return print_json(&r);
    }
    println!(
        "bench ledger: {} appender tokio tasks on 2 workers (commit + await durable each), {}-byte ENVELOPE_RECEIVED leaves, \
         {} interleaved rounds of {} s, best round each; {}-entry ledger built in a child process; dir {}",
        r.appenders, r.leaf_bytes, r.rounds, r.seconds_per_round, r.entries, r.dir
    );
    let n = r.entries;
    println!("  {:<52} {:>12}", "figure", "value");
    println!(
        "  {:<52} {:>12.0}",
        "appends_per_s (durable, group commit)", r.appends_per_s
    );
    println!(
        "  {:<52} {:>12.0}",
        "raw_sled_flush64_per_s (1 thread, flush every 64)", r.raw_sled_flush64_per_s
    );
    println!("  {:<52} {:>12.3}", "ratio (target >= 0.8)", r.ratio);
    println!(
        "  {:<52} {:>12.0}",
        "raw sled, flush every 64 + fdatasync", r.raw_sled_flush64_fdatasync_per_s
    );
    println!(
        "  {:<52} {:>12.3}",
        "ratio to durable raw sled", r.ratio_to_durable_raw
    );
    println!(
        "  {:<52} {:>12.1}",
        "mean entries per group commit", r.mean_group_entries
    );
    println!(
        "  {:<52} {:>12.1}",
        format!("inclusion_proof_gen_us, n={n} (target < 50)"),
        r.inclusion_proof_gen_us_1m
    );
    println!(
        "  {:<52} {:>12.2}",
        "inclusion_proof_verify_us (target < 20)", r.inclusion_proof_verify_us_1m
    );
    println!(
        "  {:<52} {:>12}",
        "proofs generated / verified",
        format!("{} / {}", r.proof_samples, r.proofs_verified)
    );
    println!(
        "  {:<52} {:>12.1}",
        format!("peak_rss_mb appending {n} (target < 150)"),
        r.peak_rss_mb_1m
    );
    println!(
        "  {:<52} {:>12.0}",
        "build appends/s (128 per txn, 32 in flight)", r.build_entries_per_s
    );
    println!(
        "  {:<52} {:>12.1}",
        "disk_bytes_per_entry (file sizes)", r.disk_bytes_per_entry
    );
    println!(
        "  {:<52} {:>12.1}",
        "disk_blocks_bytes_per_entry (allocated blocks)", r.disk_blocks_bytes_per_entry
    );
    Ok(())
}

/// The work directory: a temporary one (removed on drop) or the caller's.
enum Workdir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl Workdir {
    fn new(given: Option<&Path>) -> Result<Workdir, BenchError> {
        let Some(dir) = given else {
            return tempfile::Builder::new()
                .prefix("dccf-bench-ledger-")
                .tempdir()
                .map(Workdir::Temp)
                .map_err(|e| fail("creating a temporary work directory")(&e));
        };
        let what = format!("--dir {}", dir.display());
        fs::create_dir_all(dir).map_err(|e| fail(&what)(&e))?;
        let mut listing = fs::read_dir(dir).map_err(|e| fail(&what)(&e))?;
        if listing.next().is_some() {
            return Err(BenchError(format!(
                "{what}: directory is not empty; give an empty or new directory"
            )));
        }
        Ok(Workdir::Given(dir.to_path_buf()))
    }

    fn path(&self) -> &Path {
        match self {
            Workdir::Temp(t) => t.path(),
            Workdir::Given(p) => p,
        }
    }
}

/// Measures the ledger suite (see the module docs for the phases).
pub fn ledger(args: &LedgerArgs, build_in: &BuildIn) -> Result<LedgerFigures, BenchError> {
    let work = Workdir::new(args.dir.as_deref())?;
    let dir = work.path();
    let template = entry_template()?;
    let leaf = leaf_bytes(&template, 0);

    let tp = throughput(dir, &leaf, args.appenders, args.seconds)?;

    let ledger_dir = dir.join("ledger");
    let build = match build_in {
        BuildIn::ThisProcess => build_store(&ledger_dir, args.entries)?,
        BuildIn::ChildProcess(exe) => build_in_child(exe, &ledger_dir, args.entries)?,
    };
    if build.entries != args.entries {
        return Err(BenchError(format!(
            "ledger build appended {} entries, expected {}",
            build.entries, args.entries
        )));
    }
    let (len_bytes, block_bytes) = disk_usage(&ledger_dir)?;
    let proofs = proofs(&ledger_dir, args.entries, args.proofs as usize)?;

    let n = args.entries as f64;
    Ok(LedgerFigures {
        appends_per_s: tp.appends_per_s,
        raw_sled_flush64_per_s: tp.raw_per_s,
        ratio: tp.appends_per_s / tp.raw_per_s,
        raw_sled_flush64_fdatasync_per_s: tp.raw_durable_per_s,
        ratio_to_durable_raw: tp.appends_per_s / tp.raw_durable_per_s,
        inclusion_proof_gen_us_1m: proofs.gen_us,
        inclusion_proof_verify_us_1m: proofs.verify_us,
        peak_rss_mb_1m: build.peak_rss_kib as f64 / 1024.0,
        disk_bytes_per_entry: len_bytes as f64 / n,
        disk_blocks_bytes_per_entry: block_bytes as f64 / n,
        entries: args.entries,
        appenders: args.appenders,
        appender_kind: "tokio_tasks_2_workers",
        seconds_per_round: args.seconds,
        rounds: ROUNDS,
        leaf_bytes: leaf.len(),
        mean_group_entries: tp.mean_group_entries,
        build_entries_per_s: n / build.seconds,
        proof_samples: proofs.samples,
        proofs_verified: proofs.verified,
        dir: dir.display().to_string(),
    })
}

/// The entry every benchmark leaf is made from: an `ENVELOPE_RECEIVED` entry about a real sealed
/// envelope (1 KiB pre-arrival declaration), as the receive pipeline records it, with its header
/// field padded so that the leaf is [`LEAF_BYTES`] long. Sealed once; [`leaf_bytes`] varies the
/// message id, time and digest per leaf.
pub fn entry_template() -> Result<LedgerEntry, BenchError> {
    use prost::Message;
    let payload = crate::samples::pre_arrival_declaration(1).encode_to_vec();
    let sender = ed25519_dalek::SigningKey::from_bytes(&[0x11; 32]);
    let (_, recipient_pk) = <crate::envelope::Kem as hpke::Kem>::derive_keypair(&[0x22; 32]);
    let now = crate::envelope::now_ms();
    let message_id = "0190b7c2-7d3e-7a55-9c41-000000000000";
    let outgoing = crate::envelope::seal::Outgoing {
        message_id,
        agreement_id: "nl-br-pre-arrival-2026",
        agreement_digest: &[7u8; 32],
        sender: "NL",
        recipient: "BR",
        message_type: "dccf.v1.PreArrivalDeclaration",
        payload: &payload,
        in_reply_to: "",
        consent_reference: "",
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
    };
    let envelope = crate::envelope::seal::seal(&outgoing, &sender, &recipient_pk)
        .map_err(|e| fail("sealing the envelope of the sample ledger entry")(&e))?;
    let digest = crate::envelope::envelope_digest(&envelope);
    let mut e = entry::about_envelope(
        EntryKind::EnvelopeReceived,
        &envelope,
        &digest,
        message_id,
        "NL",
    );
    // Pad the header field (repeating its own bytes) up to a LEAF_BYTES leaf.
    let real_header = e.envelope_header.clone();
    let mut i = 0;
    while entry::leaf(&e).len() < LEAF_BYTES && !real_header.is_empty() {
        let missing = LEAF_BYTES - entry::leaf(&e).len();
        for _ in 0..missing {
            e.envelope_header.push(real_header[i % real_header.len()]);
            i += 1;
        }
    }
    while entry::leaf(&e).len() > LEAF_BYTES && e.envelope_header.len() > real_header.len() {
        e.envelope_header.pop();
    }
    Ok(e)
}

/// Leaf `seq`: the template with a distinct message id, recording time and digest, serialized.
pub fn leaf_bytes(template: &LedgerEntry, seq: u64) -> Vec<u8> {
    let mut e = template.clone();
    // Same length as a UUIDv7 string, so every leaf has the template's size.
    e.message_id = format!("0190b7c2-7d3e-7a55-9c41-{:012x}", seq & 0xffff_ffff_ffff);
    e.recorded_at_ms += seq as i64;
    if e.envelope_digest.len() >= 8 {
        e.envelope_digest[..8].copy_from_slice(&seq.to_be_bytes());
    }
    entry::leaf(&e)
}

/// Best rounds of the throughput phase.
struct Throughput {
    appends_per_s: f64,
    raw_per_s: f64,
    /// The same with an `fdatasync` of sled's log after every flush.
    raw_durable_per_s: f64,
    mean_group_entries: f64,
}

/// The throughput phase: ledger rounds and raw sled rounds, interleaved.
fn throughput(
    dir: &Path,
    leaf: &[u8],
    appenders: u32,
    seconds: f64,
) -> Result<Throughput, BenchError> {
    let store_dir = dir.join("append");
    let store = Store::open(&store_dir)
        .map_err(|e| fail(&format!("opening {}", store_dir.display()))(&e))?;
    let raw_dir = dir.join("raw-sled");
    // The store's own sled configuration (`ledger::store::open_sled`).
    let raw = sled::Config::new()
        .path(&raw_dir)
        .flush_every_ms(None)
        .cache_capacity(crate::ledger::store::CACHE_BYTES)
        .open()
        .map_err(|e| fail(&format!("opening raw sled at {}", raw_dir.display()))(&e))?;
    let raw_db_file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(raw_dir.join("db"))
        .map_err(|e| fail("opening the raw sled db file")(&e))?;
    let round = Duration::from_secs_f64(seconds);
    let mut best_ledger = 0f64;
    let mut best_raw = 0f64;
    let mut best_raw_durable = 0f64;
    let mut raw_next = 0u64;
    let (mut appends, mut groups) = (0u64, 0u64);
    for _ in 0..ROUNDS {
        let groups_before = store.commit_groups();
        let (n, rate) = ledger_round(&store, leaf, appenders, round)?;
        groups += store.commit_groups() - groups_before;
        appends += n;
        best_ledger = best_ledger.max(rate);
        best_raw = best_raw.max(raw_round(&raw, leaf, &mut raw_next, round, None)?);
        best_raw_durable = best_raw_durable.max(raw_round(
            &raw,
            leaf,
            &mut raw_next,
            round,
            Some(&raw_db_file),
        )?);
    }
    store
        .close()
        .map_err(|e| fail(&format!("closing {}", store_dir.display()))(&e))?;
    Ok(Throughput {
        appends_per_s: best_ledger,
        raw_per_s: best_raw,
        raw_durable_per_s: best_raw_durable,
        mean_group_entries: appends as f64 / groups.max(1) as f64,
    })
}

/// One ledger round: `appenders` tokio tasks (as the node's request handlers are) on a
/// two-worker runtime append one entry each, commit and await durability, until `round` has
/// passed. Returns the durable appends and their rate (appends in flight at the deadline are
/// finished and counted, and so is the time they take).
fn ledger_round(
    store: &Store,
    leaf: &[u8],
    appenders: u32,
    round: Duration,
) -> Result<(u64, f64), BenchError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| fail("starting the appender runtime")(&e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let results: Vec<Result<u64, BenchError>> = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..appenders {
            let (store, leaf, stop) = (store.clone(), leaf.to_vec(), stop.clone());
            tasks.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ticket = {
                        let mut txn = store.begin();
                        txn.append(leaf.clone());
                        txn.commit()
                    };
                    ticket
                        .durable()
                        .await
                        .map_err(|e| fail("durable ledger append")(&e))?;
                    n += 1;
                }
                Ok(n)
            });
        }
        tokio::time::sleep(round.saturating_sub(start.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        let mut results = Vec::with_capacity(appenders as usize);
        while let Some(joined) = tasks.join_next().await {
            results.push(
                joined.unwrap_or_else(|_| Err(BenchError("an appender task panicked".into()))),
            );
        }
        results
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = 0u64;
    for r in results {
        total += r?;
    }
    Ok((total, total as f64 / elapsed))
}

/// One baseline round: raw sled inserts of `leaf` under 9-byte keys from this thread, `flush`
/// after every 64, for `round`. Returns inserts per second.
pub(crate) fn raw_round(
    db: &sled::Db,
    leaf: &[u8],
    next_key: &mut u64,
    round: Duration,
    fdatasync: Option<&fs::File>,
) -> Result<f64, BenchError> {
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..RAW_FLUSH_EVERY {
            let mut key = [0u8; 9];
            key[0] = b'e';
            key[1..].copy_from_slice(&next_key.to_be_bytes());
            db.insert(key, leaf)
                .map_err(|e| fail("raw sled insert")(&e))?;
            *next_key += 1;
            n += 1;
        }
        db.flush().map_err(|e| fail("raw sled flush")(&e))?;
        if let Some(file) = fdatasync {
            file.sync_data()
                .map_err(|e| fail("raw sled fdatasync")(&e))?;
        }
        if start.elapsed() >= round {
            break;
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Appends `entries` leaves to a new store in `dir` (128 per transaction, up to 32 transactions
/// in flight), closes it and reports this process's peak RSS.
pub fn build_store(dir: &Path, entries: u64) -> Result<BuildReport, BenchError> {
    let shown = dir.display().to_string();
    if dir.exists() {
        return Err(BenchError(format!(
            "ledger build: {shown} already exists; the build needs a new directory"
        )));
    }
    let template = entry_template()?;
    let start = Instant::now();
    let store = Store::open(dir).map_err(|e| fail(&format!("opening {shown}"))(&e))?;
    let mut in_flight = VecDeque::with_capacity(BUILD_IN_FLIGHT);
    let mut next = 0u64;
    let wait = |t: crate::ledger::Ticket| {
        t.wait_blocking()
            .map_err(|e| fail(&format!("durable append to {shown}"))(&e))
    };
    while next < entries {
        let end = entries.min(next + BUILD_TXN_LEAVES);
        // Leaves are built before taking the staging lock.
        let leaves: Vec<Vec<u8>> = (next..end).map(|i| leaf_bytes(&template, i)).collect();
        let ticket = {
            let mut txn = store.begin();
            for leaf in leaves {
                txn.append(leaf);
            }
            txn.commit()
        };
        in_flight.push_back(ticket);
        if in_flight.len() >= BUILD_IN_FLIGHT
            && let Some(oldest) = in_flight.pop_front()
        {
            wait(oldest)?;
        }
        next = end;
    }
    for ticket in in_flight {
        wait(ticket)?;
    }
    let size = store.durable_head().size;
    store
        .close()
        .map_err(|e| fail(&format!("closing {shown}"))(&e))?;
    drop(store);
    Ok(BuildReport {
        entries: size,
        peak_rss_kib: peak_rss_kib()?,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Runs the build in a child process: `exe bench ledger --child-append DIR --entries N`.
fn build_in_child(exe: &Path, dir: &Path, entries: u64) -> Result<BuildReport, BenchError> {
    let what = format!("ledger build child process ({})", exe.display());
    let out = std::process::Command::new(exe)
        .arg("bench")
        .arg("ledger")
        .arg("--child-append")
        .arg(dir)
        .arg("--entries")
        .arg(entries.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(&what)(&e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(BenchError(format!(
            "{what} failed ({}): {}",
            out.status,
            stderr.trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .map_err(|e| BenchError(format!("{what}: unreadable report {line:?}: {e}")))
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), KiB.
pub fn peak_rss_kib() -> Result<u64, BenchError> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| fail("reading peak RSS from /proc/self/status")(&e))?;
    parse_vm_hwm(&status)
        .ok_or_else(|| BenchError("no readable VmHWM line in /proc/self/status (peak RSS)".into()))
}

/// The `VmHWM:   1234 kB` value of a `/proc/<pid>/status` text, in KiB.
pub(crate) fn parse_vm_hwm(status: &str) -> Option<u64> {
    let rest = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim();
    rest.strip_suffix("kB")?.trim().parse().ok()
}

/// Sum of file sizes and of allocated bytes (`st_blocks * 512`) of every file under `dir`.
fn disk_usage(dir: &Path) -> Result<(u64, u64), BenchError> {
    use std::os::unix::fs::MetadataExt;
    let (mut len, mut blocks) = (0u64, 0u64);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let what = format!("measuring disk use of {}", d.display());
        for item in fs::read_dir(&d).map_err(|e| fail(&what)(&e))? {
            let item = item.map_err(|e| fail(&what)(&e))?;
            let meta = item.metadata().map_err(|e| fail(&what)(&e))?;
            if meta.is_dir() {
                pending.push(item.path());
            } else if meta.is_file() {
                len += meta.len();
                blocks += meta.blocks() * 512;
            }
        }
    }
    Ok((len, blocks))
}

/// Proof figures.
struct Proofs {
    gen_us: f64,
    verify_us: f64,
    samples: usize,
    verified: usize,
}

/// Small deterministic generator (SplitMix64) for proof indices.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for sampling (`n` far below 2^64).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Opens the large ledger and times inclusion proof generation and verification.
fn proofs(dir: &Path, entries: u64, wanted: usize) -> Result<Proofs, BenchError> {
    let shown = dir.display().to_string();
    let store = Store::open(dir).map_err(|e| fail(&format!("opening {shown}"))(&e))?;
    let head = store.durable_head();
    if head.size != entries {
        return Err(BenchError(format!(
            "{shown} holds {} entries after reopening, expected {entries}",
            head.size
        )));
    }
    let n = head.size;
    let gen_fail = |index: u64| {
        move |e: proof::ProofError| {
            BenchError(format!(
                "inclusion proof of entry {index} in a tree of {n}: {e}"
            ))
        }
    };
    let leaf_of = |index: u64| -> Result<Hash, BenchError> {
        store
            .leaf_hash(index)
            .map_err(|e| fail(&format!("reading leaf hash {index} of {shown}"))(&e))?
            .ok_or_else(|| BenchError(format!("leaf hash {index} of {shown} is missing")))
    };
    let mut rng = SplitMix64(PROOF_SEED);
    // Warm-up (untimed): the first proof after opening reads cold sled pages.
    let warm = rng.below(n);
    std::hint::black_box(proof::inclusion_proof(&store, warm, n).map_err(gen_fail(warm))?);

    let mut samples: Vec<(u64, Hash, Vec<Hash>)> = Vec::with_capacity(wanted.min(4096));
    let mut gen_time = Duration::ZERO;
    while samples.len() < wanted && (samples.len() < MIN_PROOFS || gen_time < PROOF_GEN_BUDGET) {
        let index = rng.below(n);
        let leaf = leaf_of(index)?;
        let t = Instant::now();
        let path = proof::inclusion_proof(&store, index, n).map_err(gen_fail(index))?;
        gen_time += t.elapsed();
        samples.push((index, leaf, path));
    }

    // Correctness first: every proof verifies, and a wrong leaf does not.
    for (index, leaf, path) in &samples {
        proof::verify_inclusion(leaf, *index, n, path, &head.root).map_err(|e| {
            BenchError(format!(
                "inclusion proof of entry {index} did not verify: {e}"
            ))
        })?;
    }
    let verified = samples.len();
    if let Some((index, leaf, path)) = samples.first() {
        let mut wrong = *leaf;
        wrong[0] ^= 1;
        if proof::verify_inclusion(&wrong, *index, n, path, &head.root).is_ok() {
            return Err(BenchError(format!(
                "inclusion proof of entry {index} also verified a wrong leaf hash"
            )));
        }
    }
    let mut verifications = 0u64;
    let t = Instant::now();
    while verifications == 0 || t.elapsed() < VERIFY_MIN_TIME {
        for (index, leaf, path) in &samples {
            let ok = proof::verify_inclusion(
                std::hint::black_box(leaf),
                *index,
                n,
                path,
                std::hint::black_box(&head.root),
            );
            std::hint::black_box(ok.is_ok());
        }
        verifications += samples.len() as u64;
    }
    let verify_time = t.elapsed();
    store
        .close()
        .map_err(|e| fail(&format!("closing {shown}"))(&e))?;
    Ok(Proofs {
        gen_us: gen_time.as_secs_f64() * 1e6 / samples.len() as f64,
        verify_us: verify_time.as_secs_f64() * 1e6 / verifications as f64,
        samples: samples.len(),
        verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> LedgerArgs {
        LedgerArgs {
            json: true,
            entries: 2000,
            appenders: 8,
            seconds: 0.2,
            proofs: 50,
            dir: Some(dir.to_path_buf()),
            child_append: None,
        }
    }

    #[test]
    fn suite_core_at_tiny_sizes_gives_positive_figures_and_verified_proofs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("work");
        let r = ledger(&args(&dir), &BuildIn::ThisProcess).expect("ledger suite");
        for (name, v) in [
            ("appends_per_s", r.appends_per_s),
            ("raw_sled_flush64_per_s", r.raw_sled_flush64_per_s),
            ("ratio", r.ratio),
            ("inclusion_proof_gen_us_1m", r.inclusion_proof_gen_us_1m),
            (
                "inclusion_proof_verify_us_1m",
                r.inclusion_proof_verify_us_1m,
            ),
            ("peak_rss_mb_1m", r.peak_rss_mb_1m),
            ("disk_bytes_per_entry", r.disk_bytes_per_entry),
            ("disk_blocks_bytes_per_entry", r.disk_blocks_bytes_per_entry),
            ("mean_group_entries", r.mean_group_entries),
            ("build_entries_per_s", r.build_entries_per_s),
        ] {
            assert!(v.is_finite() && v > 0.0, "{name} = {v}");
        }
        assert_eq!(r.entries, 2000);
        assert_eq!(r.proof_samples, 50);
        assert_eq!(r.proofs_verified, r.proof_samples);
        // The large ledger is left in place with --dir, intact.
        let store = Store::open(&dir.join("ledger")).expect("reopen");
        assert_eq!(store.verify().expect("verify").size, 2000);
    }

    #[test]
    fn a_non_empty_dir_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::write(tmp.path().join("keep.txt"), b"x").expect("write");
        let err = ledger(&args(tmp.path()), &BuildIn::ThisProcess)
            .expect_err("must refuse")
            .to_string();
        assert!(err.contains("not empty"), "{err}");
        assert!(tmp.path().join("keep.txt").exists());
    }

    #[test]
    fn leaves_are_realistic_envelope_received_entries_of_one_size() {
        let template = entry_template().expect("template");
        let a = leaf_bytes(&template, 0);
        let b = leaf_bytes(&template, 123_456_789);
        assert_eq!(a.len(), LEAF_BYTES);
        assert_eq!(b.len(), LEAF_BYTES);
        assert_ne!(a, b);
        let e = entry::parse(&b).expect("parse");
        assert_eq!(e.kind, EntryKind::EnvelopeReceived as i32);
        assert_eq!(e.envelope_signature.len(), 64);
        assert_eq!(e.envelope_digest.len(), 32);
        assert!(e.envelope_header.len() > 100, "{}", e.envelope_header.len());
        assert_eq!(e.peer, "NL");
    }

    #[test]
    fn vm_hwm_is_parsed_and_read() {
        assert_eq!(
            parse_vm_hwm("Name:\tx\nVmPeak:\t  9 kB\nVmHWM:\t   12345 kB\nVmRSS: 1 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vm_hwm("VmRSS: 1 kB\n"), None);
        assert!(peak_rss_kib().expect("VmHWM") > 0);
    }

    #[test]
    fn seconds_must_be_positive() {
        assert_eq!(parse_seconds("0.3"), Ok(0.3));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
        assert!(parse_seconds("abc").is_err());
    }
}
