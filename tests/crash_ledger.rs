//! Crash safety of a receiving node's ledger, with a real process: NL (in-process) streams
//! messages to BR (a real `dccf-node serve` process that signs a checkpoint every 50 ms) from
//! several concurrent senders, and BR is killed with SIGKILL at random moments. After every kill,
//! BR's data directory is opened directly while the process is dead: the ledger opens (nothing
//! half-written), its tree verifies, the last signed checkpoint (and every earlier one, and every
//! checkpoint BR handed out in a receipt) matches the tree, the ledger extends what was seen at
//! the previous kill, and every message acknowledged so far is recorded exactly once. Then BR is
//! restarted and traffic continues.
//!
//! The kill moments come from a seeded PRNG; the seed is printed, and `DCCF_CRASH_SEED=<seed>`
//! replays the same delays.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dccf_node::checkpoints::Checkpoints;
use dccf_node::envelope::receipt::{Expected, verify_receipt_for};
use dccf_node::identity::NodeIdentity;
use dccf_node::ledger::checkpoint::{NoteVerifier, parse_checkpoint};
use dccf_node::ledger::{Store, entry, proof};
use dccf_node::proto::v1::gateway_client::GatewayClient;
use dccf_node::proto::v1::{EntryKind, LedgerEntry, Receipt, ReceiptBody, ReceivedRecord};
use dccf_tests::*;
use ed25519_dalek::{SigningKey, VerifyingKey};
use prost::Message;
use tokio::time::{Instant, sleep, timeout};
use tonic::transport::Channel;

const ALERT: &str = "dccf.v1.RiskAlert";
const AGREEMENT: &str = "nl-br-exchange";
/// How many times BR is killed with SIGKILL while traffic flows.
const KILL_POINTS: u32 = 24;
/// Concurrent senders pushing messages through NL's Gateway.
const SENDERS: usize = 8;
/// Traffic runs this long (ms, uniformly drawn) after BR acknowledged its first message of the
/// round, before the kill.
const TRAFFIC_MS: (u64, u64) = (20, 300);
/// Bound on every wait for the product (restart, first acknowledgement, shutdown).
const WAIT: Duration = Duration::from_secs(20);
const LATEST_CHECKPOINT: &[u8] = b"c/latest";
const CHECKPOINT_HISTORY: &[u8] = b"c/cp/";

/// splitmix64: small, seedable, good enough to pick kill moments reproducibly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn seed() -> u64 {
    match std::env::var("DCCF_CRASH_SEED") {
        Ok(s) => s.parse().expect("DCCF_CRASH_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

/// A message BR acknowledged: the receipt NL's `Send` returned and its verified body.
#[derive(Clone)]
struct Ack {
    receipt: Receipt,
    body: ReceiptBody,
}

/// What the senders share with the test.
#[derive(Default)]
struct Traffic {
    acked: Mutex<BTreeMap<String, Ack>>,
    /// Acknowledgements so far (monotonic).
    acks: AtomicU64,
    /// `Send` calls under way.
    in_flight: AtomicU64,
    /// Failed sends by gRPC code (expected while BR is down).
    failures: Mutex<BTreeMap<String, u64>>,
    /// Successful sends whose receipt did not verify here (a product bug).
    bad_receipts: Mutex<Vec<String>>,
    seq: AtomicU64,
    /// Set while the test inspects the dead BR: sends that cannot succeed would only take the
    /// CPU (two cores) from the inspection.
    paused: AtomicBool,
    stop: AtomicBool,
}

impl Traffic {
    fn acked(&self) -> BTreeMap<String, Ack> {
        self.acked.lock().unwrap().clone()
    }

    fn record(&self, br_key: &VerifyingKey, response: dccf_node::proto::v1::SendResponse) {
        let checked = (|| {
            let receipt = response.receipt.clone().ok_or("no receipt")?;
            let digest: [u8; 32] = response
                .envelope_digest
                .as_slice()
                .try_into()
                .map_err(|_| "envelope digest is not 32 bytes")?;
            let body = verify_receipt_for(
                &receipt,
                br_key,
                &Expected {
                    message_id: &response.message_id,
                    sender: "NL",
                    recipient: "BR",
                    envelope_digest: &digest,
                },
            )
            .map_err(|e| e.to_string())?;
            Ok::<_, String>(Ack { receipt, body })
        })();
        match checked {
            Ok(ack) => {
                self.acked.lock().unwrap().insert(response.message_id, ack);
                self.acks.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => self
                .bad_receipts
                .lock()
                .unwrap()
                .push(format!("{}: {e}", response.message_id)),
        }
    }

    fn failed(&self, what: String) {
        *self.failures.lock().unwrap().entry(what).or_default() += 1;
    }
}

/// One sender: sends NL->BR in a loop until told to stop; records every acknowledged message.
async fn sender(mut gw: GatewayClient<Channel>, br_key: VerifyingKey, traffic: Arc<Traffic>) {
    while !traffic.stop.load(Ordering::SeqCst) {
        if traffic.paused.load(Ordering::SeqCst) {
            sleep(Duration::from_millis(5)).await;
            continue;
        }
        let seq = traffic.seq.fetch_add(1, Ordering::SeqCst);
        let req = send_request(
            AGREEMENT,
            "BR",
            ALERT,
            dccf_node::samples::risk_alert(seq).encode_to_vec(),
        );
        traffic.in_flight.fetch_add(1, Ordering::SeqCst);
        let answer = timeout(WAIT, gw.send(req)).await;
        traffic.in_flight.fetch_sub(1, Ordering::SeqCst);
        match answer {
            Ok(Ok(response)) => traffic.record(&br_key, response.into_inner()),
            Ok(Err(status)) => {
                traffic.failed(format!("{:?}", status.code()));
                sleep(Duration::from_millis(20)).await;
            }
            Err(_) => traffic.failed("no answer from NL's Gateway".into()),
        }
    }
}

/// What the test knows about BR's ledger after a kill.
#[derive(Clone, Debug)]
struct Seen {
    size: u64,
    root: [u8; 32],
    /// Size and root of the latest signed checkpoint, once there is one.
    checkpoint: Option<(u64, [u8; 32])>,
}

/// BR's ledger location and checkpoint identity.
struct Ctx {
    seed: u64,
    ledger_dir: PathBuf,
    origin: String,
    key: SigningKey,
    verifier: NoteVerifier,
    /// Size and root of every note whose signature was already verified (signatures are slow
    /// in a debug build, and the same notes come back at every kill).
    signed: Mutex<HashMap<String, (u64, [u8; 32])>>,
}

/// Verifies a checkpoint note signed by BR and returns its size and root, after checking both
/// against the ledger.
fn checked_note(
    store: &Store,
    ctx: &Ctx,
    size_on_disk: u64,
    note: &str,
) -> Result<(u64, [u8; 32]), String> {
    let known = ctx.signed.lock().unwrap().get(note).copied();
    let (size, root) = match known {
        Some(signed) => signed,
        None => {
            let text = ctx
                .verifier
                .verify(note)
                .map_err(|e| format!("does not verify: {e}"))?;
            let (_, size, root) = parse_checkpoint(text).map_err(|e| e.to_string())?;
            ctx.signed
                .lock()
                .unwrap()
                .insert(note.to_owned(), (size, root));
            (size, root)
        }
    };
    if size > size_on_disk {
        return Err(format!(
            "signed size {size} exceeds the durable ledger size {size_on_disk}"
        ));
    }
    let actual = proof::root_at(store, size).map_err(|e| format!("root_at({size}): {e}"))?;
    if actual != root {
        return Err(format!(
            "the tree's root at size {size} differs from the signed root"
        ));
    }
    Ok((size, root))
}

/// Side records are written in the same atomic group as the entries they go with, so none may
/// point past the ledger or lack its entries, and no entry may lack its side records: the
/// message-id index (`q/`) names durable entries about that message, and a dedupe record
/// (`x/`) exists exactly for each issued receipt, pointing at its ENVELOPE_RECEIVED entry.
fn check_side_records(store: &Store, entries: &[LedgerEntry]) -> Result<(), String> {
    for (key, _) in store.scan_prefix(b"q/").map_err(|e| e.to_string())? {
        let len = key
            .get(2..4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
            .ok_or("short q/ key")?;
        let id = key.get(4..4 + len).ok_or("short q/ key")?;
        let index = key
            .get(4 + len..)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or("q/ key without index")?;
        let e = entries.get(index as usize).ok_or_else(|| {
            format!(
                "index record of {} points at entry {index}, past the ledger size {}",
                String::from_utf8_lossy(id),
                entries.len()
            )
        })?;
        if e.message_id.as_bytes() != id {
            return Err(format!(
                "index record for {id:?} points at an entry about {}",
                e.message_id
            ));
        }
    }
    let mut issued: HashMap<&str, Vec<&Receipt>> = HashMap::new();
    for e in entries {
        if e.kind() == EntryKind::ReceiptIssued {
            issued
                .entry(e.message_id.as_str())
                .or_default()
                .extend(e.receipt.as_ref());
        }
    }
    let records = store.scan_prefix(b"x/").map_err(|e| e.to_string())?;
    for (key, value) in &records {
        let id = key
            .rsplit(|b| *b == 0)
            .next()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let record = ReceivedRecord::decode(value.as_slice())
            .map_err(|e| format!("dedupe record of {id} does not decode: {e}"))?;
        match entries.get(record.ledger_index as usize) {
            Some(e)
                if e.kind() == EntryKind::EnvelopeReceived
                    && e.message_id == id
                    && e.envelope_digest == record.envelope_digest => {}
            _ => {
                return Err(format!(
                    "dedupe record of {id} points at entry {} (ledger size {}), which is not its \
                     ENVELOPE_RECEIVED entry",
                    record.ledger_index,
                    entries.len()
                ));
            }
        }
        let receipt = record
            .receipt
            .as_ref()
            .ok_or_else(|| format!("dedupe record of {id} holds no receipt"))?;
        match issued.get(id.as_str()).map(Vec::as_slice) {
            Some([r]) if *r == receipt => {}
            other => {
                return Err(format!(
                    "dedupe record of {id}: {} RECEIPT_ISSUED entries, not exactly one holding \
                     its receipt (half-written group)",
                    other.map_or(0, <[_]>::len)
                ));
            }
        }
    }
    if records.len() != issued.len() {
        return Err(format!(
            "{} RECEIPT_ISSUED messages but {} dedupe records (half-written group)",
            issued.len(),
            records.len()
        ));
    }
    Ok(())
}

/// Checks BR's data directory while BR is dead (see the module docs). Panics naming the seed,
/// the moment and what is wrong.
fn check_dead_node(ctx: &Ctx, when: &str, acked: &BTreeMap<String, Ack>, prev: &Seen) -> Seen {
    let fail = |what: String| -> ! { panic!("seed {}, {when}: {what}", ctx.seed) };
    let store = Store::open(&ctx.ledger_dir)
        .unwrap_or_else(|e| fail(format!("the ledger does not open: {e}")));
    let head = store
        .verify()
        .unwrap_or_else(|e| fail(format!("the tree does not verify: {e}")));
    let mut entries = Vec::new();
    for index in 0..head.size {
        let leaf = store
            .entry(index)
            .unwrap_or_else(|e| fail(format!("entry {index}: {e}")))
            .unwrap_or_else(|| fail(format!("entry {index} is missing")));
        entries.push(
            entry::parse(&leaf)
                .unwrap_or_else(|e| fail(format!("entry {index} does not decode: {e}"))),
        );
    }
    check_side_records(&store, &entries).unwrap_or_else(|e| fail(e));

    // The ledger only grew since the previous kill, without rewriting history.
    if head.size < prev.size {
        fail(format!(
            "the ledger shrank from {} to {} entries",
            prev.size, head.size
        ));
    }
    let old_root = proof::root_at(&store, prev.size)
        .unwrap_or_else(|e| fail(format!("root_at({}): {e}", prev.size)));
    if old_root != prev.root {
        fail(format!(
            "the root at size {} changed since the previous kill",
            prev.size
        ));
    }

    // The node's own open-time check of the last signed checkpoint.
    let checkpoints = Checkpoints::open(store.clone(), &ctx.origin, ctx.key.clone())
        .unwrap_or_else(|e| fail(format!("Checkpoints::open refuses: {e}")));
    // The same, done here, for the latest and every earlier checkpoint.
    let latest = store
        .get(LATEST_CHECKPOINT)
        .unwrap_or_else(|e| fail(format!("reading c/latest: {e}")))
        .map(|bytes| {
            let note =
                String::from_utf8(bytes).unwrap_or_else(|_| fail("c/latest is not UTF-8".into()));
            checked_note(&store, ctx, head.size, &note)
                .unwrap_or_else(|e| fail(format!("latest checkpoint: {e}")))
        });
    if latest != checkpoints.latest().map(|p| (p.size, p.root)) {
        fail("Checkpoints::open loaded another checkpoint than c/latest".into());
    }
    match (prev.checkpoint, latest) {
        (Some(_), None) => fail("the latest checkpoint disappeared".into()),
        (Some((before, _)), Some((now, _))) if now < before => fail(format!(
            "the latest checkpoint went back from size {before} to {now}"
        )),
        _ => {}
    }
    let mut largest = None;
    for (key, note) in store
        .scan_prefix(CHECKPOINT_HISTORY)
        .unwrap_or_else(|e| fail(format!("reading c/cp/: {e}")))
    {
        let note = String::from_utf8_lossy(&note);
        let (size, root) = checked_note(&store, ctx, head.size, &note)
            .unwrap_or_else(|e| fail(format!("published checkpoint {key:?}: {e}")));
        if key[CHECKPOINT_HISTORY.len()..] != size.to_be_bytes() {
            fail(format!("checkpoint of size {size} is stored under {key:?}"));
        }
        largest = largest.max(Some((size, root)));
    }
    if largest != latest {
        fail(format!(
            "c/latest is {latest:?} but the largest published checkpoint is {largest:?}"
        ));
    }
    drop(checkpoints);

    // Every acknowledged message: received exactly once, at the index its receipt names, with
    // the receipt recorded, and the tree the receipt (and the checkpoint in it) describes intact.
    for (id, ack) in acked {
        let body = &ack.body;
        let mut received = Vec::new();
        let mut issued = Vec::new();
        for index in entry::indices_of(&store, id)
            .unwrap_or_else(|e| fail(format!("index of message {id}: {e}")))
        {
            let leaf = store
                .entry(index)
                .unwrap_or_else(|e| fail(format!("entry {index}: {e}")))
                .unwrap_or_else(|| {
                    fail(format!(
                        "message {id} is indexed at {index}, past the ledger size {}",
                        head.size
                    ))
                });
            let e = entry::parse(&leaf).unwrap();
            if e.message_id != *id {
                fail(format!(
                    "entry {index} indexed for {id} is about {}",
                    e.message_id
                ));
            }
            match e.kind() {
                EntryKind::EnvelopeReceived => received.push((index, e)),
                EntryKind::ReceiptIssued => issued.push(e),
                _ => {}
            }
        }
        match received.as_slice() {
            [(index, e)] => {
                if *index != body.ledger_index {
                    fail(format!(
                        "acknowledged message {id} is at {index}, its receipt says {}",
                        body.ledger_index
                    ));
                }
                if e.envelope_digest != body.envelope_digest || e.peer != "NL" {
                    fail(format!(
                        "entry {index} does not record what {id}'s receipt says"
                    ));
                }
            }
            [] => fail(format!(
                "acknowledged message {id} (receipt index {}, size {}) has no ENVELOPE_RECEIVED \
                 entry; ledger size {}",
                body.ledger_index, body.ledger_size, head.size
            )),
            more => fail(format!(
                "acknowledged message {id} was recorded as received {} times",
                more.len()
            )),
        }
        if issued.len() != 1 || issued[0].receipt.as_ref() != Some(&ack.receipt) {
            fail(format!(
                "acknowledged message {id}: {} RECEIPT_ISSUED entries, none or not the receipt \
                 NL holds",
                issued.len()
            ));
        }
        if body.ledger_size > head.size {
            fail(format!(
                "receipt of {id} names ledger size {} but the ledger holds {}",
                body.ledger_size, head.size
            ));
        }
        let root = proof::root_at(&store, body.ledger_size)
            .unwrap_or_else(|e| fail(format!("root_at({}): {e}", body.ledger_size)));
        if root.as_slice() != body.ledger_root.as_slice() {
            fail(format!(
                "the root at size {} differs from the one in {id}'s receipt",
                body.ledger_size
            ));
        }
        if !body.checkpoint.is_empty() {
            checked_note(&store, ctx, head.size, &body.checkpoint)
                .unwrap_or_else(|e| fail(format!("checkpoint in {id}'s receipt: {e}")));
        }
    }
    let seen = Seen {
        size: head.size,
        root: head.root,
        checkpoint: latest,
    };
    drop(store);
    seen
}

/// Runs [`check_dead_node`] off the async workers (it reads the whole ledger).
async fn check(ctx: &Arc<Ctx>, when: String, acked: BTreeMap<String, Ack>, prev: &Seen) -> Seen {
    let (ctx, prev) = (ctx.clone(), prev.clone());
    match tokio::task::spawn_blocking(move || check_dead_node(&ctx, &when, &acked, &prev)).await {
        Ok(seen) => seen,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("check task: {e}"),
    }
}

/// A child process that is killed if the test fails while it runs.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_sigkilled_at_random_moments_keeps_acknowledged_messages_and_checkpoints() {
    let started = Instant::now();
    let seed = seed();
    eprintln!("crash_ledger: seed {seed} (replay with DCCF_CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    let fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        |config| {
            if config.admin == "BR" {
                // Checkpoints are signed while messages arrive.
                config.ledger.checkpoint_interval_ms = 50;
            } else {
                // NL gives up on a dead BR quickly.
                config.limits.connect_timeout_secs = 2;
                config.limits.request_timeout_secs = 5;
                // ... and keeps retrying through every kill.
                config.delivery.max_attempts = 1_000_000;
            }
        },
        &["BR"],
    )
    .await;
    fed.save_config("BR");
    let br = &fed.admin("BR").config;
    let br_identity = NodeIdentity::load(&br.identity_paths(), "BR").expect("BR's keys");
    let ctx = Arc::new(Ctx {
        seed,
        ledger_dir: br.ledger_dir(),
        origin: br.origin(),
        key: br_identity.signing.signing_key().clone(),
        verifier: NoteVerifier::new(&br.origin(), br_identity.signing.verifying_key())
            .expect("BR's note verifier"),
        signed: Mutex::new(HashMap::new()),
    });
    let br_key = br_identity.signing.verifying_key();
    let log = fed.root.path().join("BR-serve.log");

    let traffic = Arc::new(Traffic::default());
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| tokio::spawn(sender(fed.gateway("NL"), br_key, traffic.clone())))
        .collect();

    // Before the first start: the empty tree.
    let mut seen = Seen {
        size: 0,
        root: dccf_node::ledger::merkle::Frontier::new().root(),
        checkpoint: None,
    };
    // Per kill point: acknowledgements in the round, sends under way at the kill, traffic time,
    // ledger size and whether the latest checkpoint grew.
    let mut rounds: Vec<(u64, u64, u64, u64, bool)> = Vec::new();
    for round in 0..KILL_POINTS {
        traffic.paused.store(false, Ordering::SeqCst);
        let mut br_process = Proc(fed.spawn_process_logged("BR", &log).await);
        let acks_before = traffic.acks.load(Ordering::SeqCst);
        let deadline = Instant::now() + WAIT;
        while traffic.acks.load(Ordering::SeqCst) == acks_before {
            assert!(
                Instant::now() < deadline,
                "seed {seed}, round {round}: no message acknowledged within {WAIT:?} of BR's \
                 restart; failures {:?}; BR's log:\n{}",
                traffic.failures.lock().unwrap(),
                tail(&log)
            );
            sleep(Duration::from_millis(2)).await;
        }
        let traffic_ms = rng.range(TRAFFIC_MS.0, TRAFFIC_MS.1);
        sleep(Duration::from_millis(traffic_ms)).await;
        let in_flight = traffic.in_flight.load(Ordering::SeqCst);
        kill_9(&mut br_process.0);
        drop(br_process);
        traffic.paused.store(true, Ordering::SeqCst);
        // Answers BR sent before it died may still be arriving: they are checked at the next kill.
        let acked = traffic.acked();
        let acks_in_round = traffic.acks.load(Ordering::SeqCst) - acks_before;
        let previous_checkpoint = seen.checkpoint.map(|(s, _)| s);
        seen = check(
            &ctx,
            format!("after kill {round} (traffic {traffic_ms} ms, {in_flight} sends under way)"),
            acked,
            &seen,
        )
        .await;
        rounds.push((
            acks_in_round,
            in_flight,
            traffic_ms,
            seen.size,
            seen.checkpoint.map(|(s, _)| s) > previous_checkpoint,
        ));
    }

    // Stop the senders, then BR must still come up and accept a message after all the crashes.
    traffic.stop.store(true, Ordering::SeqCst);
    for s in senders {
        timeout(WAIT + WAIT, s)
            .await
            .expect("senders stop")
            .expect("sender task");
    }
    let mut br_process = Proc(fed.spawn_process_logged("BR", &log).await);
    let deadline = Instant::now() + WAIT;
    loop {
        let req = send_request(
            AGREEMENT,
            "BR",
            ALERT,
            dccf_node::samples::risk_alert(u64::MAX / 2).encode_to_vec(),
        );
        match timeout(WAIT, fed.gateway("NL").send(req)).await {
            Ok(Ok(response)) => {
                traffic.record(&br_key, response.into_inner());
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "seed {seed}: BR accepts no message after the last restart: {other:?}; BR's \
                 log:\n{}",
                tail(&log)
            ),
        }
        sleep(Duration::from_millis(50)).await;
    }
    // Graceful stop this time.
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(br_process.0.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM failed");
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = br_process.0.try_wait().expect("wait for BR") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: BR did not stop within {WAIT:?} of SIGTERM"
        );
        sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "seed {seed}: BR exited with {status}");
    drop(br_process);
    let acked = traffic.acked();
    seen = check(&ctx, "after the final stop".into(), acked.clone(), &seen).await;

    let failures = traffic.failures.lock().unwrap().clone();
    let bad = traffic.bad_receipts.lock().unwrap().clone();
    eprintln!(
        "crash_ledger: seed {seed}: {} kill points, {} messages acknowledged, ledger size {}, \
         latest checkpoint size {:?}, failed sends {failures:?}, {:?}",
        rounds.len(),
        acked.len(),
        seen.size,
        seen.checkpoint.map(|(s, _)| s),
        started.elapsed()
    );
    for (i, (acks, in_flight, ms, size, grew)) in rounds.iter().enumerate() {
        eprintln!(
            "  kill {i:2}: after {ms:3} ms, {acks:4} acks in round, {in_flight} sends under way, \
             ledger size {size}, checkpoint grew: {grew}"
        );
    }

    assert!(
        bad.is_empty(),
        "seed {seed}: receipts that do not verify: {bad:?}"
    );
    assert!(rounds.len() >= 20, "at least 20 kill points");
    let n = rounds.len();
    let with_acks = rounds.iter().filter(|r| r.0 > 0).count();
    let mid_traffic = rounds.iter().filter(|r| r.1 > 0).count();
    let checkpointed = rounds.iter().filter(|r| r.4).count();
    assert_eq!(
        with_acks, n,
        "seed {seed}: every round acknowledged messages"
    );
    assert!(
        mid_traffic * 4 >= n * 3,
        "seed {seed}: only {mid_traffic} of {n} kills hit sends under way"
    );
    assert!(
        checkpointed * 2 >= n,
        "seed {seed}: the latest checkpoint grew in only {checkpointed} of {n} rounds"
    );
    assert!(
        acked.len() as u64 > u64::from(KILL_POINTS),
        "seed {seed}: only {} messages acknowledged",
        acked.len()
    );
}
