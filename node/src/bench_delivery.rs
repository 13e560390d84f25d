//! `dccf-node bench delivery`: end-to-end delivery between two nodes running as separate
//! processes on loopback with mutual TLS, against baselines measured in the same run.
//!
//! The suite sets up NL and BR in a temporary directory (identities, CAs, certificates and the
//! shipped `nl-br-exchange` agreement signed by both, whose NL → BR
//! `dccf.v1.PreArrivalDeclaration` flow has no rate limit), starts each as `dccf-node serve` in
//! its own child process (this executable; node logs at their default level go to files in the
//! temporary directory) and runs these phases, one after the other so that they never compete
//! for the CPU (`--phases` selects them):
//!
//! 1. **bulk**: `--streams` concurrent `Gateway.SendStream`s to NL, each with at most `--window`
//!    unanswered requests, carrying the ~1 KiB sample pre-arrival declaration closest to 1,024
//!    bytes; a `Gateway.Inbox` reader on BR counts arrivals and `Ack`s them in batches. After a
//!    warm-up (15% of `--duration`, between 0.2 and 3 s, excluded), `bulk_msgs_per_s` = messages
//!    that *arrived in BR's inbox* during `--duration`, divided by it. A refusal carrying
//!    `retry_after_ms` (full outbox) is sent again after that delay; any other refusal fails the
//!    suite. CPU seconds (utime + stime of both node processes from `/proc/<pid>/stat`) are
//!    taken over the same window.
//! 2. **latency**: one `SendStream` paced at `--rate` messages/s (1,000 by default). Latency is
//!    from a message's *scheduled* send time (so a sender held back by the window cannot hide
//!    queueing: no coordinated omission) until BR's inbox stream hands it to the reader;
//!    p50/p99/p99.9 of the messages scheduled after the warm-up.
//! 3. **unary**: `--concurrency` tasks each looping on `Gateway.Send` with `await_delivery`
//!    (single-message mode: per-message HPKE and signature, a signed receipt per message);
//!    exchanges whose receipt came back during `--duration` after the warm-up, per second.
//!
//!    Then peak RSS (`VmHWM`) of each node process is read and the nodes are stopped (SIGTERM).
//! 4. **stream** (baseline a): two child processes of this executable, a bare tonic server of
//!    `Exchange.DeliverStream` that answers each envelope with an empty `DeliveryResult`
//!    (presenting BR's node certificate, requiring NL's) and a client (presenting NL's)
//!    pushing the same envelope bytes on `--streams` streams with the same `--window`.
//! 5. **sled** (baseline b): two child processes at once, one per side, each inserting one
//!    record (the same serialized envelope) per message into a fresh raw sled database with the
//!    ledger's sled configuration, `flush` after every 64 inserts, for `--duration`.
//!    `baseline_sled_records_per_s` is the slower side's rate (a message needs a record on each
//!    side); both sides are reported.
//! 6. **crypto** (the unary ceiling): Ed25519 sign and verify (of an envelope header's signed
//!    bytes) and HPKE single-shot seal and open (of the sealed body of the payload) timed in
//!    this process, best of interleaved rounds. One exchange costs seal and sign (sender),
//!    verify and open (receiver), sign and verify (receipt); `crypto_ceiling_per_s` =
//!    available cores × 10^6 / those microseconds.
//!
//! `bulk` and `latency` need `Gateway.SendStream`; a node that answers UNIMPLEMENTED fails the
//! suite with a one-line error (run `--phases unary,baselines` meanwhile).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::Signer;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{Semaphore, watch};
use tonic::transport::Channel;

use crate::bench::{BenchError, print_json};
use crate::config::NodeConfig;
use crate::proto::v1::gateway_client::GatewayClient;
use crate::proto::v1::{AckRequest, Envelope, InboxRequest, SendRequest};

/// Message type of every benchmark message.
const MESSAGE_TYPE: &str = "dccf.v1.PreArrivalDeclaration";
/// Agreement the benchmark messages travel under (the shipped example; no rate limit on the
/// NL → BR declaration flow).
const AGREEMENT_ID: &str = "nl-br-exchange";
/// Target size of the sample payload.
const PAYLOAD_TARGET_BYTES: usize = 1024;
/// Sample declarations searched for the one closest to [`PAYLOAD_TARGET_BYTES`].
const PAYLOAD_CANDIDATES: u64 = 64;
/// Message ids acknowledged per `Ack` call at most.
const ACK_BATCH: usize = 1000;
/// How long senders may take to get their last responses, and messages to reach BR's inbox,
/// after a phase stops sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child process may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time per round of the slowest primitive in the crypto phase.
const CRYPTO_ROUND: Duration = Duration::from_millis(25);
/// Wait after a refused unary send that gave no retry hint.
const UNARY_RETRY_DEFAULT: Duration = Duration::from_millis(10);

/// Options of `dccf-node bench delivery`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeliveryArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds each phase measures, after its warm-up (the target run is 60).
    #[arg(long, default_value_t = 20.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Offered load of the latency phase, messages per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
    /// Concurrent `SendStream`s in the bulk phase (and streams of the stream baseline).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub streams: u32,
    /// Unanswered requests allowed per stream.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub window: u32,
    /// Concurrent `Gateway.Send` calls in the unary phase.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: u32,
    /// Phases to run, comma-separated: bulk, latency, unary, stream, sled, crypto; `baselines`
    /// means stream,sled,crypto and `all` everything. `bulk` and `latency` need
    /// `Gateway.SendStream`; until a node has it, run `--phases unary,baselines`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub phases: Vec<PhaseArg>,
    /// Internal: run as one of the suite's child processes.
    #[arg(long, hide = true, value_enum)]
    pub child: Option<ChildRole>,
    /// Internal: the child's own data directory (identity or sled database).
    #[arg(long, hide = true)]
    pub child_dir: Option<PathBuf>,
    /// Internal: the data directory of the child's peer (whose CA it trusts).
    #[arg(long, hide = true)]
    pub child_peer_dir: Option<PathBuf>,
    /// Internal: the address the stream client connects to.
    #[arg(long, hide = true)]
    pub child_addr: Option<SocketAddr>,
}

/// Parses `--duration`: a positive number of seconds, at most one hour.
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

/// A `--phases` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PhaseArg {
    /// Every phase.
    All,
    /// Bulk `SendStream` throughput, CPU per message.
    Bulk,
    /// Latency at `--rate` over `SendStream`.
    Latency,
    /// Unary `Send` with `await_delivery`.
    Unary,
    /// Baseline (a): bare mTLS stream between two processes.
    Stream,
    /// Baseline (b): raw sled, one record per message on each side, flush per 64.
    Sled,
    /// Crypto ceiling of the unary path from raw primitive timings.
    Crypto,
    /// stream, sled and crypto.
    Baselines,
}

/// The phases selected by `--phases`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phases {
    /// Bulk phase.
    pub bulk: bool,
    /// Latency phase.
    pub latency: bool,
    /// Unary phase.
    pub unary: bool,
    /// Stream baseline.
    pub stream: bool,
    /// Sled baseline.
    pub sled: bool,
    /// Crypto ceiling.
    pub crypto: bool,
}

impl Phases {
    /// The union of `args`.
    pub fn from_args(args: &[PhaseArg]) -> Phases {
        let mut p = Phases::default();
        for a in args {
            match a {
                PhaseArg::All => {
                    p = Phases {
                        bulk: true,
                        latency: true,
                        unary: true,
                        stream: true,
                        sled: true,
                        crypto: true,
                    }
                }
                PhaseArg::Bulk => p.bulk = true,
                PhaseArg::Latency => p.latency = true,
                PhaseArg::Unary => p.unary = true,
                PhaseArg::Stream => p.stream = true,
                PhaseArg::Sled => p.sled = true,
                PhaseArg::Crypto => p.crypto = true,
                PhaseArg::Baselines => {
                    p.stream = true;
                    p.sled = true;
                    p.crypto = true;
                }
            }
        }
        p
    }

    fn needs_nodes(self) -> bool {
        self.bulk || self.latency || self.unary
    }

    fn names(self) -> Vec<&'static str> {
        [
            (self.bulk, "bulk"),
            (self.latency, "latency"),
            (self.unary, "unary"),
            (self.stream, "stream"),
            (self.sled, "sled"),
            (self.crypto, "crypto"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }
}

/// What a child process of the suite does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChildRole {
    /// Bare `Exchange.DeliverStream` server; prints its address, serves until stdin closes.
    StreamServer,
    /// Pushes envelopes to a stream server for `--duration`; prints its count.
    StreamClient,
    /// Raw sled inserts with a flush per 64 for `--duration`; prints its rate.
    Sled,
}

/// Figures of the delivery suite. A figure of a phase that did not run is `null`. The `_at_1000`
/// figures are taken at `latency_offered_per_s` (1,000 unless `--rate` says otherwise).
#[derive(Debug, Default, serde::Serialize)]
pub struct DeliveryFigures {
    /// Bulk: messages arrived in BR's inbox per second over the measured window.
    pub bulk_msgs_per_s: Option<f64>,
    /// Unary: `Send` + `await_delivery` exchanges (receipt returned) per second.
    pub unary_msgs_per_s: Option<f64>,
    /// Baseline (a): envelopes answered per second on a bare tonic mTLS stream.
    pub baseline_stream_msgs_per_s: Option<f64>,
    /// Baseline (b): raw sled records per second on the slower of two sides writing at once,
    /// one record per message, `flush` every 64.
    pub baseline_sled_records_per_s: Option<f64>,
    /// Unary ceiling from primitive timings: cores × 10^6 / crypto µs per exchange.
    pub crypto_ceiling_per_s: Option<f64>,
    /// Latency p50 at the offered load, ms.
    pub p50_ms_at_1000: Option<f64>,
    /// Latency p99 at the offered load, ms.
    pub p99_ms_at_1000: Option<f64>,
    /// Latency p99.9 at the offered load, ms.
    pub p999_ms_at_1000: Option<f64>,
    /// Bulk: CPU seconds (user + system) of both node processes per 1,000 delivered messages.
    pub cpu_s_per_1000_msgs: Option<f64>,
    /// Peak RSS (`VmHWM`) of the larger of the two node processes, MiB.
    pub peak_rss_mb: Option<f64>,
    /// `bulk_msgs_per_s / baseline_sled_records_per_s` (target >= 0.25).
    pub bulk_ratio_to_sled: Option<f64>,
    /// `bulk_msgs_per_s / baseline_stream_msgs_per_s`.
    pub bulk_ratio_to_stream: Option<f64>,
    /// `unary_msgs_per_s / crypto_ceiling_per_s` (target >= 0.5).
    pub unary_ratio_to_ceiling: Option<f64>,
    /// Peak RSS of the sending node (NL), MiB.
    pub peak_rss_mb_sender: Option<f64>,
    /// Peak RSS of the receiving node (BR), MiB.
    pub peak_rss_mb_receiver: Option<f64>,
    /// Unary: CPU seconds of both node processes per 1,000 exchanges.
    pub unary_cpu_s_per_1000_msgs: Option<f64>,
    /// Bulk: messages arrived during the measured window.
    pub bulk_delivered: Option<u64>,
    /// Bulk: refusals with a retry hint (full outbox), sent again.
    pub bulk_retried: Option<u64>,
    /// Latency: offered load, messages/s.
    pub latency_offered_per_s: u32,
    /// Latency: messages measured (scheduled after the warm-up).
    pub latency_samples: Option<u64>,
    /// Latency: mean, ms.
    pub latency_mean_ms: Option<f64>,
    /// Latency: maximum, ms.
    pub latency_max_ms: Option<f64>,
    /// Unary: exchanges completed during the measured window.
    pub unary_delivered: Option<u64>,
    /// Sled baseline: NL side's records/s.
    pub baseline_sled_records_per_s_sender: Option<f64>,
    /// Sled baseline: BR side's records/s.
    pub baseline_sled_records_per_s_receiver: Option<f64>,
    /// Crypto: HPKE single-shot seal of the sealed body, µs.
    pub hpke_seal_us: Option<f64>,
    /// Crypto: HPKE single-shot open of the sealed body, µs.
    pub hpke_open_us: Option<f64>,
    /// Crypto: Ed25519 sign of an envelope header's signed bytes, µs.
    pub ed25519_sign_us: Option<f64>,
    /// Crypto: Ed25519 strict verify of the same, µs.
    pub ed25519_verify_us: Option<f64>,
    /// Crypto: seal + open + 2 × (sign + verify), µs per unary exchange.
    pub crypto_us_per_exchange: Option<f64>,
    /// Cores the ceiling assumes (`available_parallelism`).
    pub cores: usize,
    /// Bytes of the serialized declaration in every message.
    pub payload_bytes: usize,
    /// Bytes of one serialized single-message envelope of it (stream and sled baselines).
    pub envelope_bytes: usize,
    /// Measured seconds per phase.
    pub duration_s: f64,
    /// Warm-up seconds before each measured window (excluded).
    pub warmup_s: f64,
    /// Concurrent streams (bulk and stream baseline).
    pub streams: u32,
    /// Unanswered requests per stream.
    pub window: u32,
    /// Concurrent unary sends.
    pub unary_concurrency: u32,
    /// Phases that ran, in order.
    pub phases: Vec<&'static str>,
}

fn fail(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> BenchError + '_ {
    move |e| {
        BenchError(format!(
            "{what}: {}",
            crate::config::one_line(&e.to_string())
        ))
    }
}

/// Runs `dccf-node bench delivery` and prints its figures (or does a child process's part).
pub async fn run(args: DeliveryArgs) -> Result<(), BenchError> {
    if let Some(role) = args.child {
        return child::run(role, &args).await;
    }
    let json = args.json;
    let r = measure(&args).await?;
    if json {
        return print_json(&r);
    }
    print_table(&r);
    Ok(())
}

fn print_table(r: &DeliveryFigures) {
    let show =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"));
    println!(
        "bench delivery: NL -> BR as two `dccf-node serve` processes on loopback (mTLS), {} B pre-arrival \
         declarations ({} B envelopes); {} s measured per phase after {:.1} s warm-up; phases {}",
        r.payload_bytes,
        r.envelope_bytes,
        r.duration_s,
        r.warmup_s,
        r.phases.join(",")
    );
    println!("  {:<58} {:>12}", "figure", "value");
    let rows: [(String, Option<f64>, usize); 14] = [
        (
            format!(
                "bulk_msgs_per_s ({} SendStreams x window {}) (>= 10000)",
                r.streams, r.window
            ),
            r.bulk_msgs_per_s,
            0,
        ),
        (
            "baseline_stream_msgs_per_s (a: bare tonic mTLS stream)".into(),
            r.baseline_stream_msgs_per_s,
            0,
        ),
        (
            "baseline_sled_records_per_s (b: slower side, flush/64)".into(),
            r.baseline_sled_records_per_s,
            0,
        ),
        (
            "bulk_ratio_to_sled (target >= 0.25)".into(),
            r.bulk_ratio_to_sled,
            3,
        ),
        (
            "cpu_s_per_1000_msgs (bulk, both nodes)".into(),
            r.cpu_s_per_1000_msgs,
            3,
        ),
        (
            format!("p50_ms at {} msg/s offered", r.latency_offered_per_s),
            r.p50_ms_at_1000,
            2,
        ),
        (
            format!(
                "p99_ms at {} msg/s offered (<= 10)",
                r.latency_offered_per_s
            ),
            r.p99_ms_at_1000,
            2,
        ),
        (
            format!("p999_ms at {} msg/s offered", r.latency_offered_per_s),
            r.p999_ms_at_1000,
            2,
        ),
        (
            format!(
                "unary_msgs_per_s (Send+await, {} concurrent) (>= 2000)",
                r.unary_concurrency
            ),
            r.unary_msgs_per_s,
            0,
        ),
        (
            format!("crypto_ceiling_per_s ({} cores x 1e6 / crypto us)", r.cores),
            r.crypto_ceiling_per_s,
            0,
        ),
        (
            "unary_ratio_to_ceiling (target >= 0.5)".into(),
            r.unary_ratio_to_ceiling,
            3,
        ),
        (
            "unary_cpu_s_per_1000_msgs (both nodes)".into(),
            r.unary_cpu_s_per_1000_msgs,
            3,
        ),
        (
            "peak_rss_mb sender NL (<= 100)".into(),
            r.peak_rss_mb_sender,
            1,
        ),
        (
            "peak_rss_mb receiver BR (<= 100)".into(),
            r.peak_rss_mb_receiver,
            1,
        ),
    ];
    for (name, value, prec) in rows {
        println!("  {name:<58} {:>12}", show(value, prec));
    }
    if r.crypto_us_per_exchange.is_some() {
        println!(
            "  crypto per unary exchange: hpke seal {} + open {} + 2 x (ed25519 sign {} + verify {}) = {} us",
            show(r.hpke_seal_us, 1),
            show(r.hpke_open_us, 1),
            show(r.ed25519_sign_us, 1),
            show(r.ed25519_verify_us, 1),
            show(r.crypto_us_per_exchange, 1)
        );
    }
    if r.baseline_sled_records_per_s.is_some() {
        println!(
            "  raw sled per side while both write: NL {} / BR {} records/s",
            show(r.baseline_sled_records_per_s_sender, 0),
            show(r.baseline_sled_records_per_s_receiver, 0)
        );
    }
}

/// The warm-up before a measured window of `duration` seconds.
fn warmup(duration: f64) -> Duration {
    Duration::from_secs_f64((duration * 0.15).clamp(0.2, 3.0))
}

/// The sample declaration (among the first [`PAYLOAD_CANDIDATES`]) whose encoding is closest to
/// 1 KiB, serialized.
pub fn bench_payload() -> Vec<u8> {
    (1..=PAYLOAD_CANDIDATES)
        .map(|seq| crate::samples::pre_arrival_declaration(seq).encode_to_vec())
        .min_by_key(|p| p.len().abs_diff(PAYLOAD_TARGET_BYTES))
        .unwrap_or_default()
}

/// A real single-message envelope NL → BR of `payload` (fixed keys): the bytes the baselines
/// carry and store.
pub fn sample_envelope(payload: &[u8]) -> Result<Envelope, BenchError> {
    let sender = ed25519_dalek::SigningKey::from_bytes(&[0x11; 32]);
    let (_, recipient_pk) = <crate::envelope::Kem as hpke::Kem>::derive_keypair(&[0x22; 32]);
    let now = crate::envelope::now_ms();
    crate::envelope::seal::seal(
        &crate::envelope::seal::Outgoing {
            message_id: "0190b7c2-7d3e-7a55-9c41-000000000000",
            agreement_id: AGREEMENT_ID,
            agreement_digest: &[7u8; 32],
            sender: "NL",
            recipient: "BR",
            message_type: MESSAGE_TYPE,
            payload,
            in_reply_to: "",
            consent_reference: "",
            created_at_ms: now,
            expires_at_ms: now + 3_600_000,
        },
        &sender,
        &recipient_pk,
    )
    .map_err(|e| fail("sealing the sample envelope")(&e))
}

/// Runs the selected phases and gathers their figures.
pub async fn measure(args: &DeliveryArgs) -> Result<DeliveryFigures, BenchError> {
    let phases = Phases::from_args(&args.phases);
    if phases == Phases::default() {
        return Err(BenchError("--phases selects no phase".into()));
    }
    let exe = std::env::current_exe().map_err(|e| fail("locating the dccf-node executable")(&e))?;
    let work = tempfile::Builder::new()
        .prefix("dccf-bench-delivery-")
        .tempdir()
        .map_err(|e| fail("creating a temporary work directory")(&e))?;
    // DCCF_BENCH_KEEP=1 keeps the nodes' data and logs for a post-mortem.
    let (work, kept) = if std::env::var_os("DCCF_BENCH_KEEP").is_some() {
        let kept = work.keep();
        eprintln!("bench delivery: keeping {}", kept.display());
        (None, kept)
    } else {
        let path = work.path().to_owned();
        (Some(work), path)
    };
    let root = kept.as_path();
    let payload = bench_payload();
    let envelope_bytes = sample_envelope(&payload)?.encoded_len();
    let duration = Duration::from_secs_f64(args.duration);
    let mut r = DeliveryFigures {
        latency_offered_per_s: args.rate,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        payload_bytes: payload.len(),
        envelope_bytes,
        duration_s: args.duration,
        warmup_s: warmup(args.duration).as_secs_f64(),
        streams: args.streams,
        window: args.window,
        unary_concurrency: args.concurrency,
        phases: phases.names(),
        ..DeliveryFigures::default()
    };

    let prepared = crate::demo::setup(
        root,
        &["NL", "BR"],
        &[(
            crate::demo::EXAMPLE_AGREEMENT,
            crate::demo::EXAMPLE_AGREEMENT_FILE,
        )],
    )
    .await
    .map_err(|e| fail("setting up NL and BR")(&e))?;
    // The listeners only reserved free ports; the node processes bind them.
    let configs: Vec<NodeConfig> = prepared.into_iter().map(|(c, _, _)| c).collect();
    let [nl, br] = &configs[..] else {
        return Err(BenchError("setup did not create NL and BR".into()));
    };

    if phases.needs_nodes() {
        node_phases(&exe, root, nl, br, &payload, args, phases, &mut r).await?;
    }
    if phases.stream {
        r.baseline_stream_msgs_per_s = Some(stream_baseline(&exe, nl, br, args).await?);
    }
    if phases.sled {
        let (nl_rate, br_rate) = sled_baseline(&exe, root, duration).await?;
        r.baseline_sled_records_per_s_sender = Some(nl_rate);
        r.baseline_sled_records_per_s_receiver = Some(br_rate);
        r.baseline_sled_records_per_s = Some(nl_rate.min(br_rate));
    }
    if phases.crypto {
        let payload = payload.clone();
        let c = tokio::task::spawn_blocking(move || crypto_primitives(&payload))
            .await
            .map_err(|e| fail("crypto timing task")(&e))??;
        let per_exchange = c.seal_us + c.open_us + 2.0 * (c.sign_us + c.verify_us);
        r.hpke_seal_us = Some(c.seal_us);
        r.hpke_open_us = Some(c.open_us);
        r.ed25519_sign_us = Some(c.sign_us);
        r.ed25519_verify_us = Some(c.verify_us);
        r.crypto_us_per_exchange = Some(per_exchange);
        r.crypto_ceiling_per_s = Some(r.cores as f64 * 1e6 / per_exchange);
    }
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    r.bulk_ratio_to_sled = ratio(r.bulk_msgs_per_s, r.baseline_sled_records_per_s);
    r.bulk_ratio_to_stream = ratio(r.bulk_msgs_per_s, r.baseline_stream_msgs_per_s);
    r.unary_ratio_to_ceiling = ratio(r.unary_msgs_per_s, r.crypto_ceiling_per_s);
    drop(work);
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Node phases
// ---------------------------------------------------------------------------------------------

/// Starts both nodes, runs bulk, latency and unary as selected, reads peak RSS, stops them.
#[allow(clippy::too_many_arguments)]
async fn node_phases(
    exe: &Path,
    root: &Path,
    nl: &NodeConfig,
    br: &NodeConfig,
    payload: &[u8],
    args: &DeliveryArgs,
    phases: Phases,
    r: &mut DeliveryFigures,
) -> Result<(), BenchError> {
    let mut nodes = vec![
        NodeProcess::spawn(exe, nl, &root.join("NL.log")).await?,
        NodeProcess::spawn(exe, br, &root.join("BR.log")).await?,
    ];
    let result = async {
        let nl_gw =
            crate::cli::gateway_client_for(nl).map_err(|e| fail("NL gateway client")(&e))?;
        let br_gw =
            crate::cli::gateway_client_for(br).map_err(|e| fail("BR gateway client")(&e))?;
        let traffic = Arc::new(Traffic::new(payload.to_vec()));
        let inbox = Inbox::start(br_gw, traffic.run).await?;
        // One message end to end first: connections are up and the agreement is in force.
        send_one(&nl_gw, &traffic, &inbox).await?;
        let (warm, duration) = (
            warmup(args.duration),
            Duration::from_secs_f64(args.duration),
        );
        if phases.bulk {
            let b = bulk(&nl_gw, &traffic, &inbox, &nodes, args, warm, duration).await?;
            r.bulk_msgs_per_s = Some(b.per_s);
            r.bulk_delivered = Some(b.delivered);
            r.bulk_retried = Some(b.retried);
            r.cpu_s_per_1000_msgs = b.cpu_s_per_1000;
        }
        if phases.latency {
            let l = latency(&nl_gw, &traffic, &inbox, args, warm, duration).await?;
            r.p50_ms_at_1000 = Some(l.p50_ms);
            r.p99_ms_at_1000 = Some(l.p99_ms);
            r.p999_ms_at_1000 = Some(l.p999_ms);
            r.latency_mean_ms = Some(l.mean_ms);
            r.latency_max_ms = Some(l.max_ms);
            r.latency_samples = Some(l.samples);
        }
        if phases.unary {
            let u = unary(&nl_gw, &traffic, &inbox, &nodes, args, warm, duration).await?;
            r.unary_msgs_per_s = Some(u.per_s);
            r.unary_delivered = Some(u.delivered);
            r.unary_cpu_s_per_1000_msgs = u.cpu_s_per_1000;
        }
        let nl_rss = nodes[0].peak_rss_mb()?;
        let br_rss = nodes[1].peak_rss_mb()?;
        r.peak_rss_mb_sender = Some(nl_rss);
        r.peak_rss_mb_receiver = Some(br_rss);
        r.peak_rss_mb = Some(nl_rss.max(br_rss));
        Ok(())
    }
    .await;
    for n in &mut nodes {
        n.stop().await;
    }
    result
}

/// A `dccf-node serve` child process; killed if dropped without [`NodeProcess::stop`].
pub(crate) struct NodeProcess {
    admin: String,
    child: Child,
    pid: u32,
}

impl NodeProcess {
    /// Starts `exe serve --config <data_dir>/node.toml`, stderr to `log`, and waits until both
    /// its listeners accept connections.
    pub(crate) async fn spawn(
        exe: &Path,
        config: &NodeConfig,
        log: &Path,
    ) -> Result<NodeProcess, BenchError> {
        let admin = config.admin.clone();
        let what = format!("starting {admin}'s node process");
        let log_file = std::fs::File::create(log).map_err(|e| fail(&what)(&e))?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(config.data_dir.join("node.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(&what)(&e))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError(format!("{what}: it exited at once")))?;
        let deadline = Instant::now() + START_TIMEOUT;
        for addr in [config.listen, config.gateway_listen] {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    let last = text.lines().last().unwrap_or("no output");
                    return Err(BenchError(format!(
                        "{admin}'s node exited with {status} before listening on {addr}: {last}"
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(BenchError(format!(
                        "{admin}'s node does not listen on {addr} after {} s",
                        START_TIMEOUT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(NodeProcess { admin, child, pid })
    }

    /// User + system CPU seconds the process has used so far.
    fn cpu_seconds(&self) -> Result<f64, BenchError> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| fail(&format!("reading {}'s CPU time from {path}", self.admin))(&e))?;
        let ticks = parse_cpu_ticks(&text)
            .ok_or_else(|| BenchError(format!("{path}: no readable utime/stime fields")))?;
        Ok(ticks as f64 / clock_ticks_per_second())
    }

    /// Current resident set size (`VmRSS`), MiB.
    pub(crate) fn rss_mb(&self) -> Result<f64, BenchError> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| fail(&format!("reading {}'s RSS from {path}", self.admin))(&e))?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .ok_or_else(|| BenchError(format!("{path}: no readable VmRSS line")))
    }

    /// Peak resident set size (`VmHWM`), MiB.
    pub(crate) fn peak_rss_mb(&self) -> Result<f64, BenchError> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| fail(&format!("reading {}'s peak RSS from {path}", self.admin))(&e))?;
        let kib = crate::bench_ledger::parse_vm_hwm(&text)
            .ok_or_else(|| BenchError(format!("{path}: no readable VmHWM line")))?;
        Ok(kib as f64 / 1024.0)
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
    pub(crate) async fn stop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

/// utime + stime (fields 14 and 15, clock ticks) of a `/proc/<pid>/stat` text.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds of all `nodes` together.
fn nodes_cpu(nodes: &[NodeProcess]) -> Result<f64, BenchError> {
    nodes.iter().map(NodeProcess::cpu_seconds).sum()
}

/// Which phase a message belongs to (encoded in its id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Probe = 0,
    Bulk = 1,
    Latency = 2,
    Unary = 3,
}

const TAGS: usize = 4;

/// What every phase sends: the payload, and message ids that name the run, the phase and a
/// sequence number, so that BR's inbox reader can tell them apart.
struct Traffic {
    /// Random per run (the upper half of every message id).
    run: u64,
    payload: Vec<u8>,
    next: [AtomicU64; TAGS],
}

impl Traffic {
    fn new(payload: Vec<u8>) -> Traffic {
        Traffic {
            run: rand_core::RngCore::next_u64(&mut rand_core::OsRng),
            payload,
            next: Default::default(),
        }
    }

    /// A new sequence number of `tag`.
    fn next_seq(&self, tag: Tag) -> u64 {
        self.next[tag as usize].fetch_add(1, Ordering::Relaxed)
    }

    /// The message id of `seq` in phase `tag`.
    fn id(&self, tag: Tag, seq: u64) -> String {
        message_id(self.run, tag, seq)
    }

    fn request(&self, tag: Tag, seq: u64, await_delivery: bool) -> SendRequest {
        SendRequest {
            agreement_id: AGREEMENT_ID.into(),
            recipient: "BR".into(),
            message_type: MESSAGE_TYPE.into(),
            payload: self.payload.clone(),
            message_id: self.id(tag, seq),
            await_delivery,
            ..SendRequest::default()
        }
    }
}

/// The message id (UUID text) of `seq` in phase `tag` of run `run`.
fn message_id(run: u64, tag: Tag, seq: u64) -> String {
    uuid::Uuid::from_u64_pair(run, ((tag as u64) << 56) | (seq & ((1 << 56) - 1))).to_string()
}

/// Phase index and sequence number of a message id of run `run`.
fn parse_message_id(run: u64, id: &str) -> Option<(usize, u64)> {
    let (hi, lo) = uuid::Uuid::parse_str(id).ok()?.as_u64_pair();
    let tag = (lo >> 56) as usize;
    (hi == run && tag < TAGS).then_some((tag, lo & ((1 << 56) - 1)))
}

/// Latency bookkeeping: scheduled send times of outstanding latency-phase messages, and the
/// measured samples (scheduled time, latency).
#[derive(Default)]
struct LatencyBook {
    scheduled: HashMap<u64, Instant>,
    samples: Vec<(Instant, Duration)>,
}

/// BR's back office: one `Gateway.Inbox` stream counting arrivals per phase, timing
/// latency-phase messages, and acknowledging everything in batches.
///
/// Acknowledgements name the sender (`NL/<id>`), which the node resolves with a point lookup.
struct Inbox {
    arrived: Arc<[AtomicU64; TAGS]>,
    /// Low halves of the ids of this run's messages seen so far (on any stream).
    book: Arc<Mutex<LatencyBook>>,
    error: Arc<Mutex<Option<String>>>,
    reader: tokio::task::JoinHandle<()>,
    acker: tokio::task::JoinHandle<()>,
}

/// Records the arrival of message `lo` (low half of its id) at `now`; false if already seen.
fn record_arrival(
    seen: &Mutex<std::collections::HashSet<u64>>,
    arrived: &[AtomicU64; TAGS],
    book: &Mutex<LatencyBook>,
    lo: u64,
    now: Instant,
) -> bool {
    if !seen.lock().unwrap_or_else(|e| e.into_inner()).insert(lo) {
        return false;
    }
    let (tag, seq) = ((lo >> 56) as usize, lo & ((1 << 56) - 1));
    if tag == Tag::Latency as usize {
        let mut b = book.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = b.scheduled.remove(&seq) {
            b.samples.push((at, now.saturating_duration_since(at)));
        }
    }
    if let Some(count) = arrived.get(tag) {
        count.fetch_add(1, Ordering::Relaxed);
    }
    true
}

/// The low half of a message id of run `run`.
fn id_low(run: u64, id: &str) -> Option<u64> {
    let (tag, seq) = parse_message_id(run, id)?;
    Some(((tag as u64) << 56) | seq)
}

impl Inbox {
    async fn start(client: GatewayClient<Channel>, run: u64) -> Result<Inbox, BenchError> {
        let mut stream = client
            .clone()
            .inbox(InboxRequest { drain_only: false })
            .await
            .map_err(|s| fail("opening BR's inbox stream")(&s.message()))?
            .into_inner();
        let arrived: Arc<[AtomicU64; TAGS]> = Arc::new(Default::default());
        let book = Arc::new(Mutex::new(LatencyBook::default()));
        let error = Arc::new(Mutex::new(None));
        let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let reader = {
            let (arrived, book, error, seen) =
                (arrived.clone(), book.clone(), error.clone(), seen.clone());
            let ack_tx = ack_tx.clone();
            tokio::spawn(async move {
                loop {
                    let msg = match stream.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => {
                            set_error(&error, "BR's inbox stream ended".into());
                            return;
                        }
                        Err(s) => {
                            set_error(&error, format!("BR's inbox stream failed: {}", s.message()));
                            return;
                        }
                    };
                    if let Some(lo) = id_low(run, &msg.message_id) {
                        record_arrival(&seen, &arrived, &book, lo, Instant::now());
                    }
                    let _ = ack_tx.send(format!("{}/{}", msg.sender, msg.message_id));
                }
            })
        };
        let acker = {
            let (mut client, error) = (client.clone(), error.clone());
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(ACK_BATCH);
                while ack_rx.recv_many(&mut ids, ACK_BATCH).await > 0 {
                    let batch = std::mem::take(&mut ids);
                    if let Err(s) = client.ack(AckRequest { message_ids: batch }).await {
                        set_error(&error, format!("BR's Ack failed: {}", s.message()));
                        return;
                    }
                }
            })
        };
        Ok(Inbox {
            arrived,
            book,
            error,
            reader,
            acker,
        })
    }

    fn arrived(&self, tag: Tag) -> u64 {
        self.arrived[tag as usize].load(Ordering::Relaxed)
    }

    fn check(&self) -> Result<(), BenchError> {
        match &*self.error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(BenchError(e.clone())),
            None => Ok(()),
        }
    }

    /// Waits until `expected` messages of `tag` have arrived (at most [`DRAIN_TIMEOUT`]).
    async fn wait_for(&self, tag: Tag, expected: u64, phase: &str) -> Result<(), BenchError> {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.arrived(tag) < expected {
            self.check()?;
            if Instant::now() >= deadline {
                return Err(BenchError(format!(
                    "{phase} phase: only {} of {expected} accepted messages reached BR's inbox {} s after sending stopped",
                    self.arrived(tag),
                    DRAIN_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl Drop for Inbox {
    /// Closes the streams: a node shutting down gracefully waits for open calls.
    fn drop(&mut self) {
        self.reader.abort();
        self.acker.abort();
    }
}

fn set_error(slot: &Mutex<Option<String>>, e: String) {
    slot.lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert(e);
}

/// Sends one message with `await_delivery` and waits for it in BR's inbox.
async fn send_one(
    client: &GatewayClient<Channel>,
    traffic: &Traffic,
    inbox: &Inbox,
) -> Result<(), BenchError> {
    let seq = traffic.next_seq(Tag::Probe);
    client
        .clone()
        .send(traffic.request(Tag::Probe, seq, true))
        .await
        .map_err(|s| {
            BenchError(format!(
                "first NL -> BR message failed ({:?}): {}",
                s.code(),
                crate::config::one_line(s.message())
            ))
        })?;
    inbox.wait_for(Tag::Probe, seq + 1, "first message").await
}

/// Totals of one or more `SendStream`s.
#[derive(Debug, Default)]
struct StreamTotals {
    accepted: u64,
    retried: u64,
    refused: u64,
    first_refusal: Option<String>,
}

/// Pacing of a stream: message `k` is scheduled at `start + k × interval`.
#[derive(Debug, Clone, Copy)]
struct Pace {
    start: tokio::time::Instant,
    interval: Duration,
}

/// What a `SendStream` sends and how.
#[derive(Clone)]
struct StreamSpec {
    /// Phase of its messages.
    tag: Tag,
    /// Unanswered requests allowed.
    window: usize,
    /// Paced, or as fast as the window allows.
    pace: Option<Pace>,
    /// Where scheduled times of paced messages go.
    book: Option<Arc<Mutex<LatencyBook>>>,
}

/// One `Gateway.SendStream` with at most `spec.window` unanswered requests, sending messages
/// until `stop` turns true. A refusal with `retry_after_ms` is sent again after that delay.
async fn send_stream(
    mut client: GatewayClient<Channel>,
    traffic: Arc<Traffic>,
    spec: StreamSpec,
    mut stop: watch::Receiver<bool>,
) -> Result<StreamTotals, BenchError> {
    let StreamSpec {
        tag,
        window,
        pace,
        book,
    } = spec;
    let (tx, rx) = tokio::sync::mpsc::channel::<SendRequest>(window);
    let permits = Arc::new(Semaphore::new(window));
    let inflight = Arc::new(Mutex::new(VecDeque::<u64>::with_capacity(window)));
    let retries = Arc::new(Mutex::new(VecDeque::<(tokio::time::Instant, u64)>::new()));
    let producer = {
        let (traffic, permits, inflight, retries) = (
            traffic.clone(),
            permits.clone(),
            inflight.clone(),
            retries.clone(),
        );
        tokio::spawn(async move {
            let stopped = |s: &bool| *s;
            loop {
                let permit = tokio::select! {
                    _ = stop.wait_for(stopped) => return,
                    p = permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                permit.forget();
                let retry = retries
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                let seq = if let Some((due, seq)) = retry {
                    // The node asked to wait (full outbox): no new messages meanwhile.
                    tokio::select! {
                        _ = stop.wait_for(stopped) => return,
                        () = tokio::time::sleep_until(due) => {}
                    }
                    seq
                } else {
                    let seq = traffic.next_seq(tag);
                    if let Some(p) = pace {
                        let due = p.start + p.interval.mul_f64(seq as f64);
                        tokio::select! {
                            _ = stop.wait_for(stopped) => return,
                            () = tokio::time::sleep_until(due) => {}
                        }
                        if let Some(book) = &book {
                            book.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .scheduled
                                .insert(seq, due.into_std());
                        }
                    }
                    seq
                };
                inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(seq);
                if tx.send(traffic.request(tag, seq, false)).await.is_err() {
                    return;
                }
            }
        })
    };
    let result = async {
        let mut responses = client
            .send_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::Unimplemented {
                    BenchError(
                        "NL's Gateway.SendStream answers UNIMPLEMENTED; the bulk and latency phases need it \
                         (run --phases unary,baselines until the node has it)"
                            .into(),
                    )
                } else {
                    BenchError(format!(
                        "opening Gateway.SendStream to NL ({:?}): {}",
                        s.code(),
                        crate::config::one_line(s.message())
                    ))
                }
            })?
            .into_inner();
        let mut totals = StreamTotals::default();
        loop {
            let resp = match responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(s) => {
                    return Err(BenchError(format!(
                        "Gateway.SendStream to NL failed ({:?}): {}",
                        s.code(),
                        crate::config::one_line(s.message())
                    )));
                }
            };
            let seq = inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
                .ok_or_else(|| {
                    BenchError("Gateway.SendStream answered more often than it was asked".into())
                })?;
            let expected = traffic.id(tag, seq);
            if !resp.message_id.is_empty() && resp.message_id != expected {
                return Err(BenchError(format!(
                    "Gateway.SendStream answered {} where {expected} was next (responses must come in request order)",
                    resp.message_id
                )));
            }
            match resp.rejection {
                Some(r) if r.retry_after_ms > 0 => {
                    totals.retried += 1;
                    retries.lock().unwrap_or_else(|e| e.into_inner()).push_back((
                        tokio::time::Instant::now() + Duration::from_millis(r.retry_after_ms),
                        seq,
                    ));
                }
                Some(r) => {
                    totals.refused += 1;
                    totals.first_refusal.get_or_insert(r.message);
                }
                None => totals.accepted += 1,
            }
            permits.add_permits(1);
        }
        Ok(totals)
    }
    .await;
    producer.abort();
    result
}

/// Runs `streams` [`send_stream`]s until `stop`, sums their totals; fails on any refusal.
async fn send_streams(
    client: &GatewayClient<Channel>,
    traffic: &Arc<Traffic>,
    streams: u32,
    spec: &StreamSpec,
    stop: &watch::Receiver<bool>,
) -> Result<StreamTotals, BenchError> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..streams {
        set.spawn(send_stream(
            client.clone(),
            traffic.clone(),
            spec.clone(),
            stop.clone(),
        ));
    }
    let mut totals = StreamTotals::default();
    while let Some(joined) = set.join_next().await {
        let t = joined.map_err(|e| fail("a SendStream task")(&e))??;
        totals.accepted += t.accepted;
        totals.retried += t.retried;
        totals.refused += t.refused;
        if totals.first_refusal.is_none() {
            totals.first_refusal = t.first_refusal;
        }
    }
    if totals.refused > 0 {
        return Err(BenchError(format!(
            "NL refused {} stream requests; first: {}",
            totals.refused,
            totals.first_refusal.unwrap_or_default()
        )));
    }
    Ok(totals)
}

/// Waits for a sending task after `stop`, at most [`DRAIN_TIMEOUT`].
async fn finish<T>(
    task: tokio::task::JoinHandle<Result<T, BenchError>>,
    phase: &str,
) -> Result<T, BenchError> {
    match tokio::time::timeout(DRAIN_TIMEOUT, task).await {
        Ok(joined) => joined.map_err(|e| fail(&format!("{phase} phase task"))(&e))?,
        Err(_) => Err(BenchError(format!(
            "{phase} phase: senders did not finish {} s after sending stopped",
            DRAIN_TIMEOUT.as_secs()
        ))),
    }
}

/// Bulk figures.
struct Bulk {
    per_s: f64,
    delivered: u64,
    retried: u64,
    cpu_s_per_1000: Option<f64>,
}

async fn bulk(
    client: &GatewayClient<Channel>,
    traffic: &Arc<Traffic>,
    inbox: &Inbox,
    nodes: &[NodeProcess],
    args: &DeliveryArgs,
    warm: Duration,
    duration: Duration,
) -> Result<Bulk, BenchError> {
    let (stop_tx, stop) = watch::channel(false);
    let task = {
        let (client, traffic) = (client.clone(), traffic.clone());
        let (streams, window) = (args.streams, args.window as usize);
        tokio::spawn(async move {
            let spec = StreamSpec {
                tag: Tag::Bulk,
                window,
                pace: None,
                book: None,
            };
            send_streams(&client, &traffic, streams, &spec, &stop).await
        })
    };
    // A stream that fails at once (UNIMPLEMENTED) ends the phase before the warm-up is over.
    let measured = async {
        tokio::time::sleep(warm).await;
        inbox.check()?;
        let (n0, c0, t0) = (inbox.arrived(Tag::Bulk), nodes_cpu(nodes)?, Instant::now());
        tokio::time::sleep(duration).await;
        let (n1, c1, t1) = (inbox.arrived(Tag::Bulk), nodes_cpu(nodes)?, Instant::now());
        Ok::<_, BenchError>((n1 - n0, c1 - c0, (t1 - t0).as_secs_f64()))
    };
    tokio::pin!(measured);
    let mut task = task;
    let (delivered, cpu, secs) = tokio::select! {
        m = &mut measured => m?,
        joined = &mut task => {
            return Err(match joined {
                Ok(Err(e)) => BenchError(format!("bulk phase: {}", e.0)),
                Ok(Ok(_)) => BenchError("bulk phase: the streams ended before the measurement did".into()),
                Err(e) => fail("bulk phase task")(&e),
            });
        }
    };
    let _ = stop_tx.send(true);
    let totals = finish(task, "bulk").await.map_err(|e| {
        BenchError(format!(
            "bulk phase: {}",
            e.0.trim_start_matches("bulk phase: ")
        ))
    })?;
    inbox.wait_for(Tag::Bulk, totals.accepted, "bulk").await?;
    if delivered == 0 {
        return Err(BenchError(
            "bulk phase: no message reached BR's inbox during the measured window".into(),
        ));
    }
    Ok(Bulk {
        per_s: delivered as f64 / secs,
        delivered,
        retried: totals.retried,
        cpu_s_per_1000: Some(cpu / (delivered as f64 / 1000.0)),
    })
}

/// Latency figures.
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    mean_ms: f64,
    max_ms: f64,
    samples: u64,
}

async fn latency(
    client: &GatewayClient<Channel>,
    traffic: &Arc<Traffic>,
    inbox: &Inbox,
    args: &DeliveryArgs,
    warm: Duration,
    duration: Duration,
) -> Result<Latency, BenchError> {
    let (stop_tx, stop) = watch::channel(false);
    let start = tokio::time::Instant::now();
    // Latency-phase sequence numbers start at 0: message k is due at start + k / rate.
    let pace = Pace {
        start,
        interval: Duration::from_secs_f64(1.0 / f64::from(args.rate)),
    };
    let mut task = {
        let (client, traffic, book) = (client.clone(), traffic.clone(), inbox.book.clone());
        let window = args.window as usize;
        tokio::spawn(async move {
            let spec = StreamSpec {
                tag: Tag::Latency,
                window,
                pace: Some(pace),
                book: Some(book),
            };
            send_streams(&client, &traffic, 1, &spec, &stop).await
        })
    };
    let (from, to) = (start.into_std() + warm, start.into_std() + warm + duration);
    tokio::select! {
        () = tokio::time::sleep_until(start + warm + duration) => {}
        joined = &mut task => {
            return Err(match joined {
                Ok(Err(e)) => BenchError(format!("latency phase: {}", e.0)),
                Ok(Ok(_)) => BenchError("latency phase: the stream ended before the measurement did".into()),
                Err(e) => fail("latency phase task")(&e),
            });
        }
    }
    let _ = stop_tx.send(true);
    let totals = finish(task, "latency")
        .await
        .map_err(|e| BenchError(format!("latency phase: {}", e.0)))?;
    inbox
        .wait_for(Tag::Latency, totals.accepted, "latency")
        .await?;
    let mut samples: Vec<Duration> = {
        let mut book = inbox.book.lock().unwrap_or_else(|e| e.into_inner());
        book.scheduled.clear();
        std::mem::take(&mut book.samples)
            .into_iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| d)
            .collect()
    };
    if samples.is_empty() {
        return Err(BenchError(
            "latency phase: no message scheduled after the warm-up reached BR's inbox".into(),
        ));
    }
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mean = samples.iter().map(|d| d.as_secs_f64()).sum::<f64>() / samples.len() as f64;
    Ok(Latency {
        p50_ms: ms(percentile(&samples, 0.50)),
        p99_ms: ms(percentile(&samples, 0.99)),
        p999_ms: ms(percentile(&samples, 0.999)),
        mean_ms: mean * 1e3,
        max_ms: ms(samples[samples.len() - 1]),
        samples: samples.len() as u64,
    })
}

/// The `q` quantile (nearest rank) of ascending `sorted`; zero if empty.
pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Unary figures.
struct Unary {
    per_s: f64,
    delivered: u64,
    cpu_s_per_1000: Option<f64>,
}

async fn unary(
    client: &GatewayClient<Channel>,
    traffic: &Arc<Traffic>,
    inbox: &Inbox,
    nodes: &[NodeProcess],
    args: &DeliveryArgs,
    warm: Duration,
    duration: Duration,
) -> Result<Unary, BenchError> {
    let (stop_tx, stop) = watch::channel(false);
    let done = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (mut client, traffic, done, stop) =
            (client.clone(), traffic.clone(), done.clone(), stop.clone());
        set.spawn(async move {
            while !*stop.borrow() {
                let seq = traffic.next_seq(Tag::Unary);
                let request = traffic.request(Tag::Unary, seq, true);
                loop {
                    match client.send(request.clone()).await {
                        Ok(resp) if resp.get_ref().receipt.is_some() => {
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(_) => {
                            return Err(BenchError(
                                "unary phase: Send with await_delivery answered without the partner's receipt"
                                    .into(),
                            ));
                        }
                        // A full outbox: wait as told and send the same message again.
                        Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                            let wait = s
                                .metadata()
                                .get("dccf-retry-after-ms")
                                .and_then(|v| v.to_str().ok()?.parse().ok())
                                .map_or(UNARY_RETRY_DEFAULT, Duration::from_millis);
                            tokio::time::sleep(wait).await;
                        }
                        Err(s) => {
                            return Err(BenchError(format!(
                                "unary phase: Send failed ({:?}): {}",
                                s.code(),
                                crate::config::one_line(s.message())
                            )));
                        }
                    }
                }
            }
            Ok(())
        });
    }
    let measured = async {
        tokio::time::sleep(warm).await;
        let (n0, c0, t0) = (
            done.load(Ordering::Relaxed),
            nodes_cpu(nodes)?,
            Instant::now(),
        );
        tokio::time::sleep(duration).await;
        let (n1, c1, t1) = (
            done.load(Ordering::Relaxed),
            nodes_cpu(nodes)?,
            Instant::now(),
        );
        Ok::<_, BenchError>((n1 - n0, c1 - c0, (t1 - t0).as_secs_f64()))
    };
    tokio::pin!(measured);
    // The first failing sender ends the phase.
    let (delivered, cpu, secs) = loop {
        tokio::select! {
            m = &mut measured => break m?,
            Some(joined) = set.join_next() => {
                joined.map_err(|e| fail("unary sender task")(&e))??;
            }
        }
    };
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(joined) = set.join_next().await {
            joined.map_err(|e| fail("unary sender task")(&e))??;
        }
        Ok::<_, BenchError>(())
    };
    tokio::time::timeout(DRAIN_TIMEOUT, drain)
        .await
        .map_err(|_| BenchError("unary phase: senders did not finish after stopping".into()))??;
    inbox
        .wait_for(Tag::Unary, done.load(Ordering::Relaxed), "unary")
        .await?;
    if delivered == 0 {
        return Err(BenchError(
            "unary phase: no exchange completed during the measured window".into(),
        ));
    }
    Ok(Unary {
        per_s: delivered as f64 / secs,
        delivered,
        cpu_s_per_1000: Some(cpu / (delivered as f64 / 1000.0)),
    })
}

// ---------------------------------------------------------------------------------------------
// Baselines
// ---------------------------------------------------------------------------------------------

/// Spawns `exe bench delivery --child ROLE …` with piped stdout and stderr, killed on drop.
fn spawn_child(exe: &Path, role: &str, extra: &[&std::ffi::OsStr]) -> Result<Child, BenchError> {
    Command::new(exe)
        .args(["bench", "delivery", "--child", role])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(&format!("starting the {role} child process"))(&e))
}

/// Waits (at most `limit`) for a child to exit and parses the last line of its stdout as JSON.
async fn child_report<T: serde::de::DeserializeOwned>(
    mut child: Child,
    role: &str,
    limit: Duration,
) -> Result<T, BenchError> {
    let what = format!("{role} child process");
    drop(child.stdin.take());
    let (mut out, mut err) = (String::new(), String::new());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let waited = tokio::time::timeout(limit, async {
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_string(&mut out).await;
        }
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut err).await;
        }
        child.wait().await
    })
    .await
    .map_err(|_| {
        BenchError(format!(
            "{what} did not finish within {} s",
            limit.as_secs()
        ))
    })?
    .map_err(|e| fail(&what)(&e))?;
    if !waited.success() {
        let line = err.lines().last().unwrap_or("no message");
        return Err(BenchError(format!("{what} failed ({waited}): {line}")));
    }
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .map_err(|e| BenchError(format!("{what}: unreadable report {line:?}: {e}")))
}

/// What the stream server child prints first.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Listening {
    addr: SocketAddr,
}

/// What the stream client child reports.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StreamReport {
    messages: u64,
    seconds: f64,
}

/// What a sled child reports.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SledReport {
    records_per_s: f64,
}

/// Baseline (a): a bare mTLS `DeliverStream` between two child processes, BR's certificate on
/// the server and NL's on the client. Returns envelopes answered per second.
async fn stream_baseline(
    exe: &Path,
    nl: &NodeConfig,
    br: &NodeConfig,
    args: &DeliveryArgs,
) -> Result<f64, BenchError> {
    let mut server = spawn_child(
        exe,
        "stream-server",
        &[
            "--child-dir".as_ref(),
            br.data_dir.as_os_str(),
            "--child-peer-dir".as_ref(),
            nl.data_dir.as_os_str(),
        ],
    )?;
    let mut line = String::new();
    let stdout = server
        .stdout
        .as_mut()
        .ok_or_else(|| BenchError("stream server child has no stdout".into()))?;
    tokio::time::timeout(START_TIMEOUT, BufReader::new(stdout).read_line(&mut line))
        .await
        .map_err(|_| BenchError("stream server child did not start listening".into()))?
        .map_err(|e| fail("reading the stream server child's address")(&e))?;
    let Ok(Listening { addr }) = serde_json::from_str(line.trim()) else {
        let mut err = String::new();
        if let Some(s) = server.stderr.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut err)).await;
        }
        return Err(BenchError(format!(
            "stream server child failed to start: {}",
            err.lines().last().unwrap_or(line.trim())
        )));
    };
    let addr_text = addr.to_string();
    let duration_text = args.duration.to_string();
    let (streams, window) = (args.streams.to_string(), args.window.to_string());
    let client = spawn_child(
        exe,
        "stream-client",
        &[
            "--child-dir".as_ref(),
            nl.data_dir.as_os_str(),
            "--child-peer-dir".as_ref(),
            br.data_dir.as_os_str(),
            "--child-addr".as_ref(),
            addr_text.as_ref(),
            "--duration".as_ref(),
            duration_text.as_ref(),
            "--streams".as_ref(),
            streams.as_ref(),
            "--window".as_ref(),
            window.as_ref(),
        ],
    )?;
    let limit = warmup(args.duration) + Duration::from_secs_f64(args.duration) + DRAIN_TIMEOUT;
    let report: Result<StreamReport, _> = child_report(client, "stream client", limit).await;
    // Closing its stdin stops the server.
    drop(server.stdin.take());
    if tokio::time::timeout(STOP_TIMEOUT, server.wait())
        .await
        .is_err()
    {
        let _ = server.start_kill();
        let _ = server.wait().await;
    }
    let report = report?;
    if report.messages == 0 || report.seconds <= 0.0 {
        return Err(BenchError(
            "stream baseline: no envelope was answered during the measured window".into(),
        ));
    }
    Ok(report.messages as f64 / report.seconds)
}

/// Baseline (b): two raw sled child processes at once. Returns (NL side, BR side) records/s.
async fn sled_baseline(
    exe: &Path,
    root: &Path,
    duration: Duration,
) -> Result<(f64, f64), BenchError> {
    let duration_text = duration.as_secs_f64().to_string();
    let mut children = Vec::new();
    for side in ["NL", "BR"] {
        let dir = root.join(format!("raw-sled-{side}"));
        children.push(spawn_child(
            exe,
            "sled",
            &[
                "--child-dir".as_ref(),
                dir.as_os_str(),
                "--duration".as_ref(),
                duration_text.as_ref(),
            ],
        )?);
    }
    let limit = duration + DRAIN_TIMEOUT;
    let mut rates = Vec::new();
    let mut pending = children.into_iter();
    let (Some(a), Some(b)) = (pending.next(), pending.next()) else {
        return Err(BenchError("sled baseline: children missing".into()));
    };
    let (ra, rb) = tokio::join!(
        child_report::<SledReport>(a, "sled (NL side)", limit),
        child_report::<SledReport>(b, "sled (BR side)", limit)
    );
    rates.push(ra?.records_per_s);
    rates.push(rb?.records_per_s);
    Ok((rates[0], rates[1]))
}

/// Raw primitive timings, µs.
struct Crypto {
    seal_us: f64,
    open_us: f64,
    sign_us: f64,
    verify_us: f64,
}

/// Times HPKE single-shot seal and open of the sealed body of `payload` and Ed25519 sign and
/// verify of an envelope header's signed bytes (best of interleaved rounds).
fn crypto_primitives(payload: &[u8]) -> Result<Crypto, BenchError> {
    use crate::envelope::{Aead, Kdf, Kem};
    use rand_core::OsRng;
    let other = |e: &dyn std::fmt::Display| BenchError(format!("crypto timing: {e}"));
    let envelope = sample_envelope(payload)?;
    let signed =
        crate::envelope::pae::pae(crate::envelope::pae::ENVELOPE_HEADER_TYPE, &envelope.header);
    let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
    let public = key.verifying_key();
    let signature = key.sign(&signed);
    let (sk, pk) = <Kem as hpke::Kem>::gen_keypair(&mut OsRng);
    // The sealed body: 32-byte salt + payload in protobuf framing.
    let body = vec![0x5au8; payload.len() + 36];
    let info = crate::envelope::hpke_info(
        "0190b7c2-7d3e-7a55-9c41-000000000000",
        "NL",
        "BR",
        &[7u8; 32],
    );
    let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
        &hpke::OpModeS::Base,
        &pk,
        &info,
        &body,
        &[],
        &mut OsRng,
    )
    .map_err(|e| other(&e))?;
    let mut seal = || {
        let sealed = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
            &hpke::OpModeS::Base,
            &pk,
            &info,
            &body,
            &[],
            &mut OsRng,
        )
        .map_err(|e| other(&e))?;
        std::hint::black_box(sealed);
        Ok(())
    };
    let mut open = || {
        let pt = hpke::single_shot_open::<Aead, Kdf, Kem>(
            &hpke::OpModeR::Base,
            &sk,
            &enc,
            &info,
            &ct,
            &[],
        )
        .map_err(|e| other(&e))?;
        std::hint::black_box(pt);
        Ok(())
    };
    let mut sign = || {
        std::hint::black_box(key.sign(std::hint::black_box(&signed)));
        Ok(())
    };
    let mut verify = || {
        public
            .verify_strict(std::hint::black_box(&signed), &signature)
            .map_err(|e| other(&e))
    };
    // Iterations per round: about CRYPTO_ROUND of the slowest operation (seal), so that the
    // phase takes well under a second in a release build and stays short in a debug build.
    let t = Instant::now();
    for _ in 0..3 {
        seal()?;
    }
    let per_seal = t.elapsed().as_secs_f64() / 3.0;
    let iterations = (CRYPTO_ROUND.as_secs_f64() / per_seal.max(1e-9)).clamp(5.0, 2000.0) as u32;
    let mut work: [crate::bench::Work<'_>; 4] = [&mut seal, &mut open, &mut sign, &mut verify];
    let best = crate::bench::interleaved_best_us(iterations, &mut work)?;
    let [seal_us, open_us, sign_us, verify_us] = best[..] else {
        return Err(BenchError("crypto timing: missing figures".into()));
    };
    Ok(Crypto {
        seal_us,
        open_us,
        sign_us,
        verify_us,
    })
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

mod child {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio_stream::StreamExt;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::identity::IdentityPaths;
    use crate::identity::pki::Role;
    use crate::proto::v1::exchange_client::ExchangeClient;
    use crate::proto::v1::exchange_server::{Exchange, ExchangeServer};
    use crate::proto::v1::{
        CheckpointRequest, CheckpointResponse, CosignatureRequest, CosignatureResponse,
        DeliveryResult, Receipt,
    };
    use crate::server::tls;

    /// Runs the child's part and prints its report.
    pub(super) async fn run(role: ChildRole, args: &DeliveryArgs) -> Result<(), BenchError> {
        let dir = args
            .child_dir
            .clone()
            .ok_or_else(|| BenchError("--child needs --child-dir".into()))?;
        let duration = Duration::from_secs_f64(args.duration);
        match role {
            ChildRole::Sled => {
                let report = tokio::task::spawn_blocking(move || sled(&dir, duration))
                    .await
                    .map_err(|e| fail("sled task")(&e))??;
                print_json(&report)
            }
            ChildRole::StreamServer => {
                let peer = args
                    .child_peer_dir
                    .clone()
                    .ok_or_else(|| BenchError("--child needs --child-peer-dir".into()))?;
                server(&dir, &peer).await
            }
            ChildRole::StreamClient => {
                let peer = args
                    .child_peer_dir
                    .clone()
                    .ok_or_else(|| BenchError("--child needs --child-peer-dir".into()))?;
                let addr = args
                    .child_addr
                    .ok_or_else(|| BenchError("--child needs --child-addr".into()))?;
                let report = client(&dir, &peer, addr, args, duration).await?;
                print_json(&report)
            }
        }
    }

    /// Raw sled inserts of the sample envelope, one per message, `flush` every 64.
    fn sled(dir: &Path, duration: Duration) -> Result<SledReport, BenchError> {
        let record = sample_envelope(&bench_payload())?.encode_to_vec();
        let shown = dir.display().to_string();
        // The ledger store's own sled configuration.
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .cache_capacity(crate::ledger::store::CACHE_BYTES)
            .open()
            .map_err(|e| fail(&format!("opening raw sled at {shown}"))(&e))?;
        let mut next = 0u64;
        let records_per_s =
            crate::bench_ledger::raw_round(&db, &record, &mut next, duration, None)?;
        Ok(SledReport { records_per_s })
    }

    /// Trusts `ca` for node certificates (of any administration: the CA decides).
    #[derive(Debug)]
    struct PeerCa(Vec<u8>);

    impl tls::TrustSource for PeerCa {
        fn cas_for(&self, _admin: &str, role: Role) -> Vec<Vec<u8>> {
            if role == Role::Node {
                vec![self.0.clone()]
            } else {
                Vec::new()
            }
        }
    }

    fn ca_der(dir: &Path) -> Result<Vec<u8>, BenchError> {
        let path = IdentityPaths::new(dir).ca_cert();
        let certs = tls::load_certs(&path).map_err(|e| fail("loading the peer CA")(&e))?;
        certs
            .first()
            .map(|c| c.to_vec())
            .ok_or_else(|| BenchError(format!("{}: no certificate", path.display())))
    }

    /// Answers every envelope of a `DeliverStream` with an empty result; nothing else.
    #[derive(Debug)]
    struct Echo;

    #[tonic::async_trait]
    impl Exchange for Echo {
        type SubscribeAeoStream = std::pin::Pin<
            Box<
                dyn tokio_stream::Stream<Item = Result<crate::proto::v1::AeoSignedBatch, Status>>
                    + Send,
            >,
        >;

        async fn subscribe_aeo(
            &self,
            _: Request<crate::proto::v1::AeoSubscribeRequest>,
        ) -> Result<Response<Self::SubscribeAeoStream>, Status> {
            Err(Status::unimplemented("stream baseline only"))
        }

        async fn lookup_aeo(
            &self,
            _: Request<crate::proto::v1::AeoLookupRequest>,
        ) -> Result<Response<crate::proto::v1::AeoSignedBatch>, Status> {
            Err(Status::unimplemented("stream baseline only"))
        }

        async fn ping(
            &self,
            _: Request<crate::proto::v1::PingRequest>,
        ) -> Result<Response<crate::proto::v1::PingResponse>, Status> {
            Err(Status::unimplemented("not part of this fake"))
        }

        async fn deliver(&self, _: Request<Envelope>) -> Result<Response<Receipt>, Status> {
            Err(Status::unimplemented("stream baseline only"))
        }

        type DeliverStreamStream = std::pin::Pin<
            Box<dyn tokio_stream::Stream<Item = Result<DeliveryResult, Status>> + Send>,
        >;

        async fn deliver_stream(
            &self,
            request: Request<tonic::Streaming<Envelope>>,
        ) -> Result<Response<Self::DeliverStreamStream>, Status> {
            let answers = request
                .into_inner()
                .map(|e| e.map(|_| DeliveryResult::default()));
            Ok(Response::new(Box::pin(answers)))
        }

        async fn get_checkpoint(
            &self,
            _: Request<CheckpointRequest>,
        ) -> Result<Response<CheckpointResponse>, Status> {
            Err(Status::unimplemented("stream baseline only"))
        }

        async fn submit_cosignature(
            &self,
            _: Request<CosignatureRequest>,
        ) -> Result<Response<CosignatureResponse>, Status> {
            Err(Status::unimplemented("stream baseline only"))
        }
    }

    /// Serves [`Echo`] over mTLS with `dir`'s node certificate, requiring a node certificate
    /// from `peer_dir`'s CA; prints the address, serves until stdin closes.
    async fn server(dir: &Path, peer_dir: &Path) -> Result<(), BenchError> {
        let paths = IdentityPaths::new(dir);
        let cert = tls::ReloadingCert::load(&paths.node_cert(), &paths.node_key())
            .map_err(|e| fail("node certificate")(&e))?;
        let config = tls::server_config(
            cert,
            Arc::new(tls::PeerVerifier::new(Arc::new(PeerCa(ca_der(peer_dir)?)))),
        )
        .map_err(|e| fail("server TLS configuration")(&e))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| fail("binding the stream server")(&e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| fail("stream server address")(&e))?;
        print_json(&Listening { addr })?;
        let stdin_closed = async {
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        };
        tonic::transport::Server::builder()
            .add_service(ExchangeServer::new(Echo))
            .serve_with_incoming_shutdown(
                tls::incoming(
                    listener,
                    config,
                    Duration::from_secs(10),
                    64,
                    crate::server::limits::PeerLimits::new(
                        "echo",
                        &crate::config::Limits::default(),
                    ),
                ),
                stdin_closed,
            )
            .await
            .map_err(|e| fail("stream server")(&e))
    }

    /// Pushes the sample envelope to `addr` on `--streams` streams with `--window` unanswered
    /// each; counts answers during `duration` after the warm-up.
    async fn client(
        dir: &Path,
        peer_dir: &Path,
        addr: SocketAddr,
        args: &DeliveryArgs,
        duration: Duration,
    ) -> Result<StreamReport, BenchError> {
        let paths = IdentityPaths::new(dir);
        let config = tls::client_config(
            &[ca_der(peer_dir)?],
            tls::load_certs(&paths.node_cert()).map_err(|e| fail("node certificate")(&e))?,
            tls::load_key(&paths.node_key()).map_err(|e| fail("node key")(&e))?,
        )
        .map_err(|e| fail("client TLS configuration")(&e))?;
        let server_name = rustls::pki_types::ServerName::try_from(addr.ip().to_string())
            .map_err(|e| fail("server name")(&e))?;
        let channel = crate::delivery::peers::tls_channel(
            &addr.to_string(),
            server_name,
            config,
            Duration::from_secs(5),
            Duration::from_secs(30),
        )
        .map_err(|e| fail("stream client channel")(&e))?;
        let envelope = sample_envelope(&bench_payload())?;
        let answered = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..args.streams {
            let mut client = ExchangeClient::new(channel.clone());
            let (envelope, answered, stop) = (envelope.clone(), answered.clone(), stop.clone());
            let window = args.window as usize;
            set.spawn(async move {
                let (tx, rx) = tokio::sync::mpsc::channel::<Envelope>(window);
                let permits = Arc::new(Semaphore::new(window));
                let producer = {
                    let (permits, stop) = (permits.clone(), stop.clone());
                    tokio::spawn(async move {
                        while let Ok(p) = permits.acquire().await {
                            p.forget();
                            if stop.load(Ordering::Relaxed)
                                || tx.send(envelope.clone()).await.is_err()
                            {
                                return;
                            }
                        }
                    })
                };
                let mut answers = client
                    .deliver_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .map_err(|s| fail("opening the baseline stream")(&s.message()))?
                    .into_inner();
                while let Some(_answer) = answers
                    .message()
                    .await
                    .map_err(|s| fail("baseline stream")(&s.message()))?
                {
                    answered.fetch_add(1, Ordering::Relaxed);
                    permits.add_permits(1);
                }
                producer.abort();
                Ok::<_, BenchError>(())
            });
        }
        tokio::time::sleep(warmup(args.duration)).await;
        let (n0, t0) = (answered.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(duration).await;
        let (n1, t1) = (answered.load(Ordering::Relaxed), Instant::now());
        stop.store(true, Ordering::Relaxed);
        while let Some(joined) = set.join_next().await {
            joined.map_err(|e| fail("baseline stream task")(&e))??;
        }
        Ok(StreamReport {
            messages: n1 - n0,
            seconds: (t1 - t0).as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_round_trip_and_other_runs_are_ignored() {
        let id = message_id(42, Tag::Latency, 123_456);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert_eq!(
            parse_message_id(42, &id),
            Some((Tag::Latency as usize, 123_456))
        );
        assert_eq!(parse_message_id(43, &id), None);
        assert_eq!(parse_message_id(42, "not-a-uuid"), None);
        // The node normalises ids with `Uuid::to_string`; ours are already in that form.
        assert_eq!(
            uuid::Uuid::parse_str(&id).map(|u| u.to_string()).as_deref(),
            Ok(id.as_str())
        );
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(500));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(990));
        assert_eq!(percentile(&v, 0.999), Duration::from_millis(999));
        assert_eq!(percentile(&v[..1], 0.999), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "1234 (dccf node) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("1234 (x) S 1 2"), None);
        let own = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        assert!(parse_cpu_ticks(&own).is_some());
    }

    #[test]
    fn phases_expand_groups() {
        let p = Phases::from_args(&[PhaseArg::Unary, PhaseArg::Baselines]);
        assert_eq!(p.names(), ["unary", "stream", "sled", "crypto"]);
        assert!(p.needs_nodes());
        let all = Phases::from_args(&[PhaseArg::All]);
        assert_eq!(all.names().len(), 6);
        assert!(!Phases::from_args(&[PhaseArg::Sled]).needs_nodes());
    }

    #[test]
    fn the_payload_is_a_1_kib_declaration_and_the_envelope_carries_it() {
        let p = bench_payload();
        assert!(p.len().abs_diff(PAYLOAD_TARGET_BYTES) < 64, "{}", p.len());
        let e = sample_envelope(&p).expect("seal");
        assert!(e.encoded_len() > p.len());
    }

    #[test]
    fn crypto_primitives_give_positive_timings() {
        let c = crypto_primitives(&bench_payload()).expect("timings");
        for v in [c.seal_us, c.open_us, c.sign_us, c.verify_us] {
            assert!(v.is_finite() && v > 0.0, "{v}");
        }
    }
}
