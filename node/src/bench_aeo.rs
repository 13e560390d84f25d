//! `dccf-node bench aeo`: AEO mutual recognition between two node processes on loopback.
//!
//! Sets up BR (publisher) and NL (mirror) under the shipped `nl-br-aeo-mra` agreement in a
//! temporary directory, each as a `dccf-node serve` child process of this executable, and runs:
//!
//! 1. **snapshot**: BR starts alone and imports `--operators` synthetic operators (one CSV over
//!    `Gateway.ImportAeoRegistry`); then NL starts, subscribes and receives the full signed
//!    snapshot. `snapshot_sync_s_1m` = NL's start (listening) until NL's `ListAeoMirrors` shows
//!    BR's registry version with every operator (polled every 20 ms). `mirror_rss_mb_1m` = NL's
//!    resident set (`VmRSS`) then, and again after the lookup phases (the larger is reported).
//! 2. **suspension**: 20 times, BR suspends (or reinstates) a random operator through
//!    `Gateway.UpdateAeoOperator`; `suspension_visible_ms` is the median time from the call's
//!    start until NL's mirror lookup (`Gateway.LookupAeo`, polled every millisecond) shows it.
//! 3. **online**: `Gateway.LookupAeo` in ONLINE mode on NL (NL asks BR: a signed answer, on both
//!    ledgers) with 64 callers for `--duration` (`online_lookups_per_s`), then open-loop at
//!    `--rate` per second for `--duration`, latency from each call's *scheduled* time
//!    (`online_p99_ms_at_500`).
//! 4. **mirror**: also `Gateway.LookupAeoStream` throughput on NL (extra), then NL stops and its
//!    `aeo.redb` is opened in this process: `mirror_lookups_per_s` = `AeoStore::mirror_lookup`
//!    of uniformly random ids (5 % unknown) on one thread for `--duration`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::{BenchError, print_json};
use crate::bench_delivery::{NodeProcess, percentile};
use crate::config::NodeConfig;
use crate::proto::v1::gateway_client::GatewayClient;
use crate::proto::v1::{
    AeoLookupMode, AeoRegistryRecord, AeoStatus, ListAeoMirrorsRequest, LookupAeoRequest,
    UpdateAeoRequest,
};

type Gw = GatewayClient<tonic::transport::Channel>;

/// Options of `dccf-node bench aeo`.
#[derive(Debug, Clone, clap::Args)]
pub struct AeoArgs {
    /// Operators in BR's registry.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub operators: u64,
    /// Seconds per timed phase.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Offered online lookups per second in the latency phase.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The figures (`--json` keys).
#[derive(Debug, Default, Serialize)]
pub struct AeoFigures {
    /// Operators in the registry.
    pub operators: u64,
    /// Cores of this machine.
    pub cores: usize,
    /// Seconds per timed phase.
    pub duration_s: f64,
    /// Mirror lookups per second on one core (in-process, against NL's mirror database).
    pub mirror_lookups_per_s: f64,
    /// `Gateway.LookupAeoStream` mirror lookups per second (one stream).
    pub gateway_stream_lookups_per_s: f64,
    /// Online signed lookups per second (64 concurrent callers).
    pub online_lookups_per_s: f64,
    /// p99 of online lookups at the offered rate, ms.
    pub online_p99_ms_at_500: f64,
    /// p50 of online lookups at the offered rate, ms.
    pub online_p50_ms_at_500: f64,
    /// Offered rate of the latency phase.
    pub online_offered_per_s: u32,
    /// Full snapshot sync, seconds.
    pub snapshot_sync_s_1m: f64,
    /// BR's import of the registry file, seconds.
    pub import_s: f64,
    /// Size of the imported CSV file, MB.
    pub import_file_mb: f64,
    /// NL's RSS after the snapshot or the lookups, the larger, MB.
    pub mirror_rss_mb_1m: f64,
    /// NL's RSS right after the snapshot, MB.
    pub mirror_rss_mb_after_snapshot: f64,
    /// NL's RSS after the lookup phases, MB.
    pub mirror_rss_mb_after_lookups: f64,
    /// NL's peak RSS (VmHWM), MB.
    pub mirror_peak_rss_mb: f64,
    /// Median time for a suspension to show in NL's mirror, ms.
    pub suspension_visible_ms: f64,
    /// Slowest of those, ms.
    pub suspension_visible_max_ms: f64,
    /// Size of NL's `aeo.redb`, MB.
    pub mirror_db_mb: f64,
}

fn fail(what: &str) -> impl FnOnce(&dyn std::fmt::Display) -> BenchError + '_ {
    move |e| BenchError(crate::config::one_line(&format!("{what}: {e}")))
}

/// Runs the suite and prints the figures.
pub async fn run(args: AeoArgs) -> Result<(), BenchError> {
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        return Err(BenchError(
            "--duration must be between 0 and 3600 seconds".into(),
        ));
    }
    let r = measure(&args).await?;
    if args.json {
        print_json(&r)
    } else {
        print_table(&r);
        Ok(())
    }
}

fn print_table(r: &AeoFigures) {
    println!(
        "AEO mutual recognition, {} operators, {} cores, {} s per phase",
        r.operators, r.cores, r.duration_s
    );
    let rows = [
        (
            "mirror lookups/s (one core)",
            format!("{:.0}", r.mirror_lookups_per_s),
            "≥ 200000",
        ),
        (
            "online signed lookups/s",
            format!("{:.0}", r.online_lookups_per_s),
            "≥ 2000",
        ),
        (
            "online p99 at offered rate, ms",
            format!(
                "{:.2} (p50 {:.2}, {}/s)",
                r.online_p99_ms_at_500, r.online_p50_ms_at_500, r.online_offered_per_s
            ),
            "≤ 10",
        ),
        (
            "full snapshot sync, s",
            format!("{:.2}", r.snapshot_sync_s_1m),
            "≤ 30",
        ),
        (
            "mirror RSS, MB",
            format!(
                "{:.0} (after snapshot {:.0}, after lookups {:.0}, peak {:.0})",
                r.mirror_rss_mb_1m,
                r.mirror_rss_mb_after_snapshot,
                r.mirror_rss_mb_after_lookups,
                r.mirror_peak_rss_mb
            ),
            "≤ 200",
        ),
        (
            "suspension visible at partner, ms",
            format!(
                "{:.1} median, {:.1} max",
                r.suspension_visible_ms, r.suspension_visible_max_ms
            ),
            "≤ 2000",
        ),
        (
            "gateway stream lookups/s",
            format!("{:.0}", r.gateway_stream_lookups_per_s),
            "-",
        ),
        (
            "import of the registry, s",
            format!("{:.2} ({:.0} MB CSV)", r.import_s, r.import_file_mb),
            "-",
        ),
        ("mirror database, MB", format!("{:.0}", r.mirror_db_mb), "-"),
    ];
    for (what, value, target) in rows {
        println!("  {what:<36} {value:<48} target {target}");
    }
}

/// Sets up, runs every phase, stops the nodes.
pub async fn measure(args: &AeoArgs) -> Result<AeoFigures, BenchError> {
    let exe = std::env::current_exe().map_err(|e| fail("locating the dccf-node executable")(&e))?;
    let work = tempfile::Builder::new()
        .prefix("dccf-bench-aeo-")
        .tempdir()
        .map_err(|e| fail("creating a temporary work directory")(&e))?;
    let (work, root) = if std::env::var_os("DCCF_BENCH_KEEP").is_some() {
        let kept = work.keep();
        eprintln!("bench aeo: keeping {}", kept.display());
        (None, kept)
    } else {
        let path = work.path().to_owned();
        (Some(work), path)
    };
    // The shipped MRA limits queries to 600 a minute per direction; the throughput phases need
    // an agreement without that limit (same flows and disclosure otherwise).
    let unlimited = crate::demo::MRA_AGREEMENT.replace("rate_limit_per_minute = 600\n", "");
    let prepared = crate::demo::setup(
        &root,
        &["NL", "BR"],
        &[(unlimited.as_str(), crate::demo::MRA_AGREEMENT_FILE)],
    )
    .await
    .map_err(|e| fail("setting up NL and BR")(&e))?;
    let configs: Vec<NodeConfig> = prepared.into_iter().map(|(c, _, _)| c).collect();
    let [nl, br] = &configs[..] else {
        return Err(BenchError("setup did not create NL and BR".into()));
    };
    let mut r = AeoFigures {
        operators: args.operators,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        duration_s: args.duration,
        online_offered_per_s: args.rate,
        ..Default::default()
    };
    let mut br_node = NodeProcess::spawn(&exe, br, &root.join("BR.log")).await?;
    let result = async {
        let mut br_gw = crate::cli::gateway_client_for(br).map_err(|e| fail("BR gateway")(&e))?;
        let version = import(&mut br_gw, args.operators, &mut r).await?;
        let mut nl_node = NodeProcess::spawn(&exe, nl, &root.join("NL.log")).await?;
        let phases = async {
            let mut nl_gw =
                crate::cli::gateway_client_for(nl).map_err(|e| fail("NL gateway")(&e))?;
            let started = Instant::now();
            wait_mirror(&mut nl_gw, version, args.operators).await?;
            r.snapshot_sync_s_1m = started.elapsed().as_secs_f64();
            r.mirror_rss_mb_after_snapshot = nl_node.rss_mb()?;
            suspension(&mut br_gw, &mut nl_gw, args.operators, &mut r).await?;
            let d = Duration::from_secs_f64(args.duration);
            r.gateway_stream_lookups_per_s = stream_lookups(&nl_gw, args.operators, d).await?;
            r.online_lookups_per_s = online_throughput(&nl_gw, args.operators, d).await?;
            let (p50, p99) = online_latency(&nl_gw, args.operators, args.rate, d).await?;
            (r.online_p50_ms_at_500, r.online_p99_ms_at_500) = (p50, p99);
            r.mirror_rss_mb_after_lookups = nl_node.rss_mb()?;
            r.mirror_peak_rss_mb = nl_node.peak_rss_mb()?;
            r.mirror_rss_mb_1m = r
                .mirror_rss_mb_after_snapshot
                .max(r.mirror_rss_mb_after_lookups);
            Ok::<(), BenchError>(())
        }
        .await;
        nl_node.stop().await;
        phases?;
        let db = nl.aeo_db();
        r.mirror_db_mb = std::fs::metadata(&db).map_or(0.0, |m| m.len() as f64 / 1e6);
        let (n, d) = (args.operators, args.duration);
        r.mirror_lookups_per_s = tokio::task::spawn_blocking(move || mirror_lookups(&db, n, d))
            .await
            .map_err(|e| fail("mirror lookup thread")(&e))??;
        Ok::<(), BenchError>(())
    }
    .await;
    br_node.stop().await;
    result?;
    drop(work);
    Ok(r)
}

/// Imports `n` synthetic BR operators into BR; returns the registry version.
async fn import(gw: &mut Gw, n: u64, r: &mut AeoFigures) -> Result<u64, BenchError> {
    let records: Vec<AeoRegistryRecord> = crate::aeo::generate::generate("BR", n, 1).collect();
    let mut csv = Vec::new();
    crate::aeo::import::write(crate::aeo::import::Format::Csv, &records, &mut csv)
        .map_err(|e| fail("writing the registry CSV")(&e))?;
    drop(records);
    r.import_file_mb = csv.len() as f64 / 1e6;
    let chunks = crate::aeo::import::requests(crate::aeo::import::Format::Csv, &csv);
    drop(csv);
    let started = Instant::now();
    let response = gw
        .import_aeo_registry(tokio_stream::iter(chunks))
        .await
        .map_err(|s| fail("importing BR's registry")(&s.message()))?
        .into_inner();
    r.import_s = started.elapsed().as_secs_f64();
    Ok(response.version)
}

/// Waits until NL's mirror of BR holds `version` with `records` operators.
async fn wait_mirror(gw: &mut Gw, version: u64, records: u64) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = gw
            .list_aeo_mirrors(ListAeoMirrorsRequest {})
            .await
            .map_err(|s| fail("ListAeoMirrors on NL")(&s.message()))?
            .into_inner();
        if list
            .mirrors
            .iter()
            .any(|m| m.partner == "BR" && m.version >= version && m.records >= records)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError(format!(
                "NL's mirror did not reach version {version} within 600 s: {:?}",
                list.mirrors
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pseudo-random index below `n` (xorshift; benchmarks need spread, not secrecy).
fn next_index(state: &mut u64, n: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state % n
}

fn lookup_request(id: String, mode: AeoLookupMode) -> LookupAeoRequest {
    LookupAeoRequest {
        partner: "BR".into(),
        operator_id: id,
        mode: mode as i32,
        purpose: "bench".into(),
        ..Default::default()
    }
}

/// Phase 2: suspensions (and reinstatements) reaching NL's mirror.
async fn suspension(
    br: &mut Gw,
    nl: &mut Gw,
    n: u64,
    r: &mut AeoFigures,
) -> Result<(), BenchError> {
    let mut seed = 0x5eed_u64;
    let mut times = Vec::new();
    for round in 0..20 {
        let id = crate::aeo::generate::operator_id("BR", next_index(&mut seed, n));
        let status = if round % 2 == 0 {
            AeoStatus::Suspended
        } else {
            AeoStatus::Valid
        };
        let started = Instant::now();
        br.update_aeo_operator(UpdateAeoRequest {
            record: Some(AeoRegistryRecord {
                operator_id: id.clone(),
                status: status as i32,
                ..Default::default()
            }),
            status_only: true,
        })
        .await
        .map_err(|s| fail("UpdateAeoOperator on BR")(&s.message()))?;
        loop {
            let answer = nl
                .lookup_aeo(lookup_request(id.clone(), AeoLookupMode::Mirror))
                .await
                .map_err(|s| fail("LookupAeo on NL")(&s.message()))?
                .into_inner();
            let seen = answer
                .mirror
                .and_then(|m| m.record)
                .is_some_and(|rec| rec.status == status as i32);
            if seen {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(BenchError(format!(
                    "{id}: change not visible at NL after 60 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        times.push(started.elapsed());
    }
    times.sort();
    r.suspension_visible_ms = percentile(&times, 0.5).as_secs_f64() * 1e3;
    r.suspension_visible_max_ms = times.last().map_or(0.0, |t| t.as_secs_f64() * 1e3);
    Ok(())
}

/// Mirror lookups over one `LookupAeoStream`, pipelined, per second.
async fn stream_lookups(gw: &Gw, n: u64, duration: Duration) -> Result<f64, BenchError> {
    let mut gw = gw.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let feeder = tokio::spawn(async move {
        let mut seed = 42u64;
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            let id = crate::aeo::generate::operator_id("BR", next_index(&mut seed, n));
            if tx
                .send(lookup_request(id, AeoLookupMode::Mirror))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut answers = gw
        .lookup_aeo_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| fail("LookupAeoStream on NL")(&s.message()))?
        .into_inner();
    let mut count = 0u64;
    while let Some(a) = answers
        .message()
        .await
        .map_err(|s| fail("LookupAeoStream on NL")(&s.message()))?
    {
        if !a.error.is_empty() {
            return Err(BenchError(format!("stream lookup failed: {}", a.error)));
        }
        count += 1;
    }
    let _ = feeder.await;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Online lookups with 64 concurrent callers, per second.
async fn online_throughput(gw: &Gw, n: u64, duration: Duration) -> Result<f64, BenchError> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let mut gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut seed = 1 + t * 7919;
            let mut done = 0u64;
            while Instant::now() < deadline {
                let id = crate::aeo::generate::operator_id("BR", next_index(&mut seed, n));
                gw.lookup_aeo(lookup_request(id, AeoLookupMode::Online))
                    .await
                    .map_err(|s| fail("online LookupAeo on NL")(&s.message()))?;
                done += 1;
            }
            Ok::<u64, BenchError>(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| fail("online lookup task")(&e))??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Online lookups offered open-loop at `rate`/s; (p50, p99) in ms from each scheduled time.
async fn online_latency(
    gw: &Gw,
    n: u64,
    rate: u32,
    duration: Duration,
) -> Result<(f64, f64), BenchError> {
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(total as usize);
    let mut seed = 99u64;
    for i in 0..total {
        let at = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(at.into()).await;
        let mut gw = gw.clone();
        let id = crate::aeo::generate::operator_id("BR", next_index(&mut seed, n));
        tasks.push(tokio::spawn(async move {
            gw.lookup_aeo(lookup_request(id, AeoLookupMode::Online))
                .await
                .map_err(|s| fail("online LookupAeo on NL")(&s.message()))?;
            Ok::<Duration, BenchError>(at.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    for t in tasks {
        latencies.push(t.await.map_err(|e| fail("online lookup task")(&e))??);
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok((
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
    ))
}

/// Mirror lookups of random ids (5 % unknown) on this thread against NL's stopped database.
fn mirror_lookups(db: &Path, n: u64, seconds: f64) -> Result<f64, BenchError> {
    let store = crate::aeo::store::AeoStore::open(db, 64 << 20)
        .map_err(|e| fail("opening NL's AEO database")(&e))?;
    let ids: Vec<String> = (0..65_536u64)
        .map(|k| {
            let mut seed = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            if k % 20 == 0 {
                format!("BRAEOF9{:09}", k)
            } else {
                crate::aeo::generate::operator_id("BR", next_index(&mut seed, n))
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let (mut done, mut found) = (0u64, 0u64);
    while Instant::now() < deadline {
        for id in ids.iter().skip((done % 65_536) as usize).take(1024) {
            if store
                .mirror_lookup("BR", id, false)
                .map_err(|e| fail("mirror lookup")(&e))?
                .is_some()
            {
                found += 1;
            }
            done += 1;
        }
    }
    if found == 0 {
        return Err(BenchError("the mirror answered no lookup".into()));
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
