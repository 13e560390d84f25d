//! `dccf-node bench`: the reproducible figures of BENCHMARKS.md. Each suite prints a readable
//! table, or with `--json` one JSON object of snake_case figures with units in their names.
//!
//! Figures are ratios against a floor measured in the same run, because absolute timings on a
//! shared 2-core machine drift from run to run.

use std::time::Instant;

use clap::Subcommand;
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;
use rand_core::OsRng;

use crate::envelope::open::{self, ClockPolicy};
use crate::envelope::seal::{Outgoing, seal};
use crate::envelope::{Kem, now_ms};

/// Benchmark suites.
#[derive(Debug, Subcommand)]
pub enum Suite {
    /// Envelope seal+sign and verify+open of a 1 KiB pre-arrival declaration, against the raw
    /// crypto floor (Ed25519 sign + verify, X25519 key generation + two Diffie-Hellman).
    Envelope {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Iterations per measurement.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
        iterations: u32,
    },
    /// Policy evaluation of a 1 KiB pre-arrival declaration (flow, payload decoding, field
    /// allowlist, consent, rate) against envelope verify+open measured in the same run.
    Policy {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Iterations per measurement.
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
        iterations: u32,
    },
    /// Durable ledger appends with group commit against raw sled flushes, and inclusion proofs,
    /// peak RSS and disk use of a 1M-entry ledger (see `bench_ledger`).
    Ledger(crate::bench_ledger::LedgerArgs),
    /// Two nodes as separate processes on loopback: bulk `SendStream` throughput, latency at a
    /// fixed offered load, unary `Send` exchanges, CPU and peak RSS per node, against a bare
    /// mTLS stream, raw sled and the crypto ceiling measured in the same run (see
    /// `bench_delivery`).
    Delivery(crate::bench_delivery::DeliveryArgs),
    /// AEO mutual recognition between two node processes: full snapshot sync of a synthetic
    /// registry, a suspension reaching the partner's mirror, mirror lookups on one core, online
    /// signed lookups (throughput and latency at a fixed offered rate), mirror RSS (see
    /// `bench_aeo`).
    Aeo(crate::bench_aeo::AeoArgs),
}

/// Benchmark errors.
#[derive(Debug, thiserror::Error)]
#[error("bench: {0}")]
pub struct BenchError(pub(crate) String);

/// Prints `figures` as one JSON object on one line.
pub(crate) fn print_json(figures: &impl serde::Serialize) -> Result<(), BenchError> {
    let line = serde_json::to_string(figures).map_err(|e| BenchError(e.to_string()))?;
    println!("{line}");
    Ok(())
}

/// Runs a suite and prints its figures.
pub async fn run(suite: Suite) -> Result<(), BenchError> {
    match suite {
        Suite::Ledger(args) => crate::bench_ledger::run(args).await,
        Suite::Delivery(args) => crate::bench_delivery::run(args).await,
        Suite::Aeo(args) => crate::bench_aeo::run(args).await,
        Suite::Policy { json, iterations } => {
            let r = tokio::task::spawn_blocking(move || policy(iterations))
                .await
                .map_err(|e| BenchError(e.to_string()))??;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "bench policy: 1 KiB PreArrivalDeclaration, {} allowed field paths, {} iterations, best of {} interleaved rounds",
                    r.allowed_paths, r.iterations, ROUNDS
                );
                println!("  {:<44} {:>10}", "figure", "value");
                println!("  {:<44} {:>10.2}", "policy_us", r.policy_us);
                println!("  {:<44} {:>10.1}", "verify_open_us", r.verify_open_us);
                println!("  {:<44} {:>10.4}", "ratio (target <= 0.05)", r.ratio);
                println!(
                    "  {:<44} {:>10.2}",
                    "payload_decode_us (validation, reported apart)", r.payload_decode_us
                );
            }
            Ok(())
        }
        Suite::Envelope { json, iterations } => {
            let r = tokio::task::spawn_blocking(move || envelope(iterations))
                .await
                .map_err(|e| BenchError(e.to_string()))??;
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "bench envelope: 1 KiB PreArrivalDeclaration ({} bytes), {} iterations, best of {} interleaved rounds",
                    r.payload_bytes, r.iterations, ROUNDS
                );
                println!("  {:<44} {:>10}", "figure", "value");
                println!(
                    "  {:<44} {:>10.1}",
                    "envelope seal+sign (us)", r.seal_sign_us
                );
                println!(
                    "  {:<44} {:>10.1}",
                    "envelope verify+open (us)", r.verify_open_us
                );
                println!(
                    "  {:<44} {:>10.1}",
                    "envelope_roundtrip_us", r.envelope_roundtrip_us
                );
                println!(
                    "  {:<44} {:>10.1}",
                    "crypto_floor_us (sign+verify+keygen+2 DH)", r.crypto_floor_us
                );
                println!(
                    "  {:<44} {:>10.3}",
                    "ratio_to_floor (target <= 1.25)", r.ratio_to_floor
                );
                println!("  where the time above the floor goes:");
                println!(
                    "  {:<44} {:>10.1}",
                    "hpke seal+open alone (us)", r.hpke_seal_open_us
                );
                println!(
                    "  {:<44} {:>10.1}",
                    "x25519 keygen + 2 DH alone (us)", r.x25519_floor_us
                );
                println!(
                    "  {:<44} {:>10.1}",
                    "ed25519 sign + verify alone (us)", r.ed25519_floor_us
                );
                println!(
                    "  {:<44} {:>10.1}",
                    "hpke_overhead_us (hpke beyond X25519)", r.hpke_overhead_us
                );
                println!(
                    "  {:<44} {:>10.1}",
                    "envelope_code_overhead_us (ours)", r.envelope_code_overhead_us
                );
            }
            Ok(())
        }
    }
}

/// Rounds per figure. Rounds of all figures are interleaved, so that a burst of load from
/// elsewhere on the machine hits every figure alike, and each figure keeps its best round (the
/// least disturbed one).
pub(crate) const ROUNDS: usize = 7;

/// A piece of work to time.
pub(crate) type Work<'a> = &'a mut dyn FnMut() -> Result<(), BenchError>;

/// Times `iterations` calls of each closure per round, interleaving the closures round by round;
/// returns each closure's best mean in microseconds.
pub(crate) fn interleaved_best_us(
    iterations: u32,
    work: &mut [Work<'_>],
) -> Result<Vec<f64>, BenchError> {
    let mut best = vec![f64::MAX; work.len()];
    for _ in 0..ROUNDS {
        for (i, f) in work.iter_mut().enumerate() {
            let start = Instant::now();
            for _ in 0..iterations {
                f()?;
            }
            best[i] = best[i].min(start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations));
        }
    }
    Ok(best)
}

/// Figures of the envelope suite. The last group attributes the gap between the envelope and
/// the floor: what the `hpke` crate costs beyond its X25519 operations, and what this crate's own
/// envelope code (commitment, digests, protobuf, domain separation) costs beyond the primitives.
#[derive(Debug, serde::Serialize)]
pub struct EnvelopeFigures {
    /// Encoded size of the payload.
    pub payload_bytes: usize,
    /// Iterations per round.
    pub iterations: u32,
    /// Mean time of seal + sign.
    pub seal_sign_us: f64,
    /// Mean time of parse + verify + clock checks + open.
    pub verify_open_us: f64,
    /// Sum of the two.
    pub envelope_roundtrip_us: f64,
    /// Ed25519 sign + verify and X25519 keygen + 2 DH, from raw primitives.
    pub crypto_floor_us: f64,
    /// `envelope_roundtrip_us / crypto_floor_us`.
    pub ratio_to_floor: f64,
    /// `hpke` single-shot seal + open of the sealed body alone (base mode).
    pub hpke_seal_open_us: f64,
    /// X25519 keygen + 2 DH alone (the part of the floor that HPKE performs).
    pub x25519_floor_us: f64,
    /// Ed25519 sign + verify alone (the rest of the floor).
    pub ed25519_floor_us: f64,
    /// `hpke_seal_open_us - x25519_floor_us`: the hpke crate's own cost (key schedule, ephemeral
    /// key derivation, and re-deriving the recipient public key in decap).
    pub hpke_overhead_us: f64,
    /// `envelope_roundtrip_us - hpke_seal_open_us - ed25519_floor_us`: this crate's own cost.
    pub envelope_code_overhead_us: f64,
}

/// Measures the envelope suite.
pub fn envelope(iterations: u32) -> Result<EnvelopeFigures, BenchError> {
    let payload = crate::samples::pre_arrival_declaration(1).encode_to_vec();
    let sender = SigningKey::generate(&mut OsRng);
    let sender_pub = sender.verifying_key();
    let (recipient_sk, recipient_pk) = <Kem as hpke::Kem>::gen_keypair(&mut OsRng);
    let digest = [7u8; 32];
    let now = now_ms();
    let clock = ClockPolicy {
        now_ms: now,
        max_skew_secs: 300,
        max_ttl_secs: 86_400,
    };
    let msg = Outgoing {
        message_id: "0190b7c2-7d3e-7a55-9c41-3f2d1e0a9b88",
        agreement_id: "bench-agreement",
        agreement_digest: &digest,
        sender: "NL",
        recipient: "BR",
        message_type: "dccf.v1.PreArrivalDeclaration",
        payload: &payload,
        in_reply_to: "",
        consent_reference: "",
        created_at_ms: now,
        expires_at_ms: now + 3_600_000,
    };
    let fail = |e: crate::envelope::EnvelopeError| BenchError(e.to_string());
    let other = |e: &dyn std::fmt::Display| BenchError(e.to_string());

    // Warm up and check correctness once.
    let envelope = seal(&msg, &sender, &recipient_pk).map_err(fail)?;
    let header = open::parse_header(&envelope).map_err(fail)?;
    open::verify_signature(&envelope, &sender_pub, "NL").map_err(fail)?;
    if open::open_payload(&envelope, &header, &recipient_sk)
        .map_err(fail)?
        .payload
        != payload
    {
        return Err(BenchError("round trip changed the payload".into()));
    }

    let mut seal_sign = || {
        std::hint::black_box(seal(&msg, &sender, &recipient_pk).map_err(fail)?);
        Ok(())
    };
    let mut verify_open = || {
        let header = open::parse_header(&envelope).map_err(fail)?;
        open::verify_signature(&envelope, &sender_pub, "NL").map_err(fail)?;
        open::check_times(&header, &clock).map_err(fail)?;
        std::hint::black_box(open::open_payload(&envelope, &header, &recipient_sk).map_err(fail)?);
        Ok(())
    };

    // The floor: the asymmetric operations any sign-and-encrypt scheme of this kind must do.
    let signed_bytes =
        crate::envelope::pae::pae(crate::envelope::pae::ENVELOPE_HEADER_TYPE, &envelope.header);
    let recipient_static = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let recipient_public = x25519_dalek::PublicKey::from(&recipient_static);
    let ed25519 = || -> Result<(), BenchError> {
        let sig = sender.sign(&signed_bytes);
        sender_pub
            .verify_strict(&signed_bytes, &sig)
            .map_err(|e| other(&e))
    };
    let x25519 = || {
        let eph = x25519_dalek::EphemeralSecret::random_from_rng(OsRng);
        let eph_pub = x25519_dalek::PublicKey::from(&eph);
        let s1 = eph.diffie_hellman(&recipient_public);
        let s2 = recipient_static.diffie_hellman(&eph_pub);
        std::hint::black_box((s1.as_bytes()[0], s2.as_bytes()[0]));
    };
    let mut floor = || {
        ed25519()?;
        x25519();
        Ok(())
    };
    let mut ed25519_only = || ed25519();
    let mut x25519_only = || {
        x25519();
        Ok(())
    };
    // HPKE alone, on a body of the envelope's size.
    let body = vec![0x5au8; payload.len() + 36];
    let info = crate::envelope::hpke_info(msg.message_id, "NL", "BR", &digest);
    let mut hpke_only = || {
        let (enc, ct) =
            hpke::single_shot_seal::<crate::envelope::Aead, crate::envelope::Kdf, Kem, _>(
                &hpke::OpModeS::Base,
                &recipient_pk,
                &info,
                &body,
                &[],
                &mut OsRng,
            )
            .map_err(|e| other(&e))?;
        let pt = hpke::single_shot_open::<crate::envelope::Aead, crate::envelope::Kdf, Kem>(
            &hpke::OpModeR::Base,
            &recipient_sk,
            &enc,
            &info,
            &ct,
            &[],
        )
        .map_err(|e| other(&e))?;
        std::hint::black_box(pt);
        Ok(())
    };
    let mut work: [Work<'_>; 6] = [
        &mut seal_sign,
        &mut verify_open,
        &mut floor,
        &mut hpke_only,
        &mut x25519_only,
        &mut ed25519_only,
    ];
    let best = interleaved_best_us(iterations, &mut work)?;
    let [
        seal_sign_us,
        verify_open_us,
        crypto_floor_us,
        hpke_seal_open_us,
        x25519_floor_us,
        ed25519_floor_us,
    ] = best[..]
    else {
        return Err(BenchError("missing figures".into()));
    };
    let envelope_roundtrip_us = seal_sign_us + verify_open_us;
    Ok(EnvelopeFigures {
        payload_bytes: payload.len(),
        iterations,
        seal_sign_us,
        verify_open_us,
        envelope_roundtrip_us,
        crypto_floor_us,
        ratio_to_floor: envelope_roundtrip_us / crypto_floor_us,
        hpke_seal_open_us,
        x25519_floor_us,
        ed25519_floor_us,
        hpke_overhead_us: hpke_seal_open_us - x25519_floor_us,
        envelope_code_overhead_us: envelope_roundtrip_us - hpke_seal_open_us - ed25519_floor_us,
    })
}

/// Figures of the policy suite.
#[derive(Debug, serde::Serialize)]
pub struct PolicyFigures {
    /// Iterations per round.
    pub iterations: u32,
    /// Field paths in the flow's allowlist.
    pub allowed_paths: usize,
    /// One policy evaluation on the decoded payload: flow lookup, field allowlist walk, consent
    /// and rate checks.
    pub policy_us: f64,
    /// Envelope parse + verify + clock checks + open, measured in the same run.
    pub verify_open_us: f64,
    /// `policy_us / verify_open_us`.
    pub ratio: f64,
    /// Decoding and validating the payload against its descriptor (`delivery::check_payload`),
    /// which the receive pipeline does for every message whatever the policy; reported apart.
    pub payload_decode_us: f64,
}

/// Measures the policy suite.
pub fn policy(iterations: u32) -> Result<PolicyFigures, BenchError> {
    use crate::agreement::{Agreement, AgreementDoc, Flow};
    let other = |e: &dyn std::fmt::Display| BenchError(e.to_string());
    // Two real party cards (keys and CA certificates), generated in a temporary directory.
    let dir = tempfile::tempdir().map_err(|e| other(&e))?;
    let card = |admin: &str| {
        crate::identity::NodeIdentity::generate_all(
            &crate::identity::IdentityPaths {
                dir: dir.path().join(admin),
            },
            admin,
            "127.0.0.1",
            "https://127.0.0.1:7001",
        )
        .map_err(|e| other(&e))
    };
    // A realistic allowlist: the declaration's header fields, whole parties, and goods items
    // field by field (the walk has to descend into every item).
    let paths: Vec<&str> = crate::agreement::templates::PRE_ARRIVAL_HEADER_FIELDS
        .iter()
        .copied()
        .chain([
            "goods_items.sequence_number",
            "goods_items.hs_code",
            "goods_items.description",
            "goods_items.gross_mass_grams",
            "goods_items.net_mass_grams",
            "goods_items.package_count",
            "goods_items.package_kind",
            "goods_items.customs_value",
            "goods_items.country_of_origin",
            "goods_items.container_ids",
        ])
        .collect();
    let doc = AgreementDoc {
        id: "bench".into(),
        version: 1,
        title: "bench".into(),
        legal_basis: String::new(),
        purposes: Vec::new(),
        valid_from: "2020-01-01T00:00:00Z".parse().map_err(|e| other(&e))?,
        valid_until: "2100-01-01T00:00:00Z".parse().map_err(|e| other(&e))?,
        parties: vec![card("NL")?, card("BR")?],
        flows: vec![Flow {
            message_type: "dccf.v1.PreArrivalDeclaration".into(),
            from: "NL".into(),
            to: "BR".into(),
            fields: paths
                .iter()
                .map(|p| toml::Spanned::new(0..0, (*p).to_owned()))
                .collect(),
            rate_limit_per_minute: Some(u32::MAX),
            consent_required: false,
            retention_days: None,
            onward_transfer: false,
            allow: Default::default(),
        }],
    };
    let text = toml::to_string(&doc).map_err(|e| other(&e))?;
    let agreement = Agreement::parse(std::path::Path::new("bench.toml"), text.as_bytes())
        .map_err(|e| other(&e))?;
    let limiter = crate::policy::RateLimiter::default();
    let payload = crate::samples::pre_arrival_declaration(1).encode_to_vec();
    let facts = crate::policy::MessageFacts {
        sender: "NL",
        recipient: "BR",
        message_type: "dccf.v1.PreArrivalDeclaration",
    };
    let decoded =
        crate::delivery::check_payload(facts.message_type, &payload).map_err(|e| other(&e))?;
    let mut decode = || -> Result<(), BenchError> {
        let message =
            crate::delivery::check_payload(facts.message_type, &payload).map_err(|e| other(&e))?;
        std::hint::black_box(message);
        Ok(())
    };
    let evaluate = || -> Result<(), BenchError> {
        let flow = crate::policy::check(&agreement, &facts).map_err(|e| other(&e))?;
        crate::policy::check_fields(&agreement, flow, &decoded).map_err(|e| other(&e))?;
        crate::policy::check_consent(&agreement, flow, "").map_err(|e| other(&e))?;
        limiter
            .admit(&agreement, flow, crate::policy::Side::Receiving)
            .map_err(|e| other(&e))?;
        Ok(())
    };
    evaluate()?;

    // Envelope verify+open of the same payload, as in the envelope suite.
    let sender = SigningKey::generate(&mut OsRng);
    let sender_pub = sender.verifying_key();
    let (sk, pk) = <Kem as hpke::Kem>::gen_keypair(&mut OsRng);
    let now = now_ms();
    let digest = [7u8; 32];
    let envelope = seal(
        &Outgoing {
            message_id: "0190b7c2-7d3e-7a55-9c41-3f2d1e0a9b88",
            agreement_id: "bench",
            agreement_digest: &digest,
            sender: "NL",
            recipient: "BR",
            message_type: facts.message_type,
            payload: &payload,
            in_reply_to: "",
            consent_reference: "",
            created_at_ms: now,
            expires_at_ms: now + 3_600_000,
        },
        &sender,
        &pk,
    )
    .map_err(|e| other(&e))?;
    let clock = ClockPolicy {
        now_ms: now,
        max_skew_secs: 300,
        max_ttl_secs: 86_400,
    };
    let mut verify_open = || -> Result<(), BenchError> {
        let header = open::parse_header(&envelope).map_err(|e| other(&e))?;
        open::verify_signature(&envelope, &sender_pub, "NL").map_err(|e| other(&e))?;
        open::check_times(&header, &clock).map_err(|e| other(&e))?;
        std::hint::black_box(open::open_payload(&envelope, &header, &sk).map_err(|e| other(&e))?);
        Ok(())
    };
    let mut policy_eval = evaluate;
    let mut work: [Work<'_>; 3] = [&mut policy_eval, &mut verify_open, &mut decode];
    let best = interleaved_best_us(iterations, &mut work)?;
    Ok(PolicyFigures {
        iterations,
        allowed_paths: paths.len(),
        policy_us: best[0],
        verify_open_us: best[1],
        ratio: best[0] / best[1],
        payload_decode_us: best[2],
    })
}
