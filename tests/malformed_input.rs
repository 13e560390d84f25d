//! What a peer can send over the network: mutated envelopes reach a real node over real mTLS
//! and are refused without changing what it serves; one misbehaving client (hundreds of
//! connections, stalled handshakes, garbage bytes, floods of streams) does not starve an honest
//! partner, whose latency is printed with and without the attack (not asserted: timing).
//!
//! The decoder-level campaign (random and mutated bytes for every decoder) is
//! `node/src/malformed_tests.rs`; `PROPTEST_CASES` raises the number of cases of both.

use std::time::{Duration, Instant};

use dccf_node::proto::v1::{EntryKind, RiskAlert, delivery_result};
use dccf_tests::*;
use prost::Message;
use tokio::io::AsyncWriteExt;

const ALERT: &str = "dccf.v1.RiskAlert";

fn cases() -> usize {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// A deterministic mutation of `bytes` from `seed` (flip, truncate, insert or overwrite).
fn mutate(bytes: &[u8], seed: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..1 + next() % 3 {
        let at = (next() as usize) % out.len().max(1);
        match next() % 4 {
            0 if !out.is_empty() => out[at] ^= 1 << (next() % 8),
            1 => out.truncate(at),
            2 => out.insert(at.min(out.len()), next() as u8),
            _ => {
                for k in 0..1 + next() % 8 {
                    if let Some(b) = out.get_mut(at + k as usize) {
                        *b = next() as u8;
                    }
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn mutated_envelopes_over_the_network_are_refused_and_change_nothing_the_node_serves() {
    let fed = Federation::nl_br().await;
    let alert = dccf_node::samples::risk_alert(1).encode_to_vec();
    let original = fed.envelope("BR", "NL", ALERT, &alert, |_| {});
    let bytes = original.encode_to_vec();
    let before = ledger_entries(fed.node("NL"));
    let mut refused = 0;
    let mut broken_calls = 0;
    for seed in 0..cases() as u64 {
        let frame = mutate(&bytes, seed);
        if dccf_node::proto::v1::Envelope::decode(frame.as_slice()).ok() == Some(original.clone()) {
            continue; // the same envelope (e.g. only unknown fields appended)
        }
        let (results, end) =
            raw_deliver_stream(fed.exchange_channel_as("BR", "NL"), vec![frame]).await;
        for r in &results {
            assert!(
                matches!(r.outcome, Some(delivery_result::Outcome::Rejection(_))),
                "seed {seed}: a mutated envelope was accepted: {r:?}"
            );
            refused += 1;
        }
        if end.is_err() {
            broken_calls += 1; // not protobuf: the call fails with a status, nothing stored
        }
    }
    // Nothing reached NL's inbox or was recorded as received; NL still serves BR's real messages.
    assert!(drain_inbox(&mut fed.gateway("NL")).await.is_empty());
    let after = ledger_entries(fed.node("NL"));
    assert!(
        after[before.len()..]
            .iter()
            .all(|e| e.kind() == EntryKind::EnvelopeRejected),
        "only refusals were recorded"
    );
    let sent = fed
        .gateway("BR")
        .send(send_request("nl-br-exchange", "NL", ALERT, alert))
        .await
        .expect("BR's real message is delivered")
        .into_inner();
    assert!(sent.receipt.is_some());
    assert_eq!(drain_inbox(&mut fed.gateway("NL")).await.len(), 1);
    println!(
        "{refused} mutated envelopes refused with a reason, {broken_calls} calls refused as malformed"
    );
}

/// Percentiles of `samples` (milliseconds).
fn percentiles(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

/// `n` alerts DE → BR through DE's Gateway, each waiting for BR's receipt; their latencies.
async fn honest_round(fed: &Federation, n: u64, from_seq: u64) -> Vec<f64> {
    let mut gw = fed.gateway("DE");
    let mut out = Vec::new();
    for seq in from_seq..from_seq + n {
        let alert = RiskAlert::encode_to_vec(&dccf_node::samples::risk_alert(seq));
        let t = Instant::now();
        let sent = tokio::time::timeout(
            Duration::from_secs(30),
            gw.send(send_request(
                dccf_node::demo::PRE_ARRIVAL_ID,
                "BR",
                ALERT,
                alert,
            )),
        )
        .await
        .expect("DE is answered during the attack")
        .expect("DE's alert is delivered during the attack")
        .into_inner();
        assert!(sent.receipt.is_some(), "receipted");
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_client_does_not_stop_the_node_serving_an_honest_partner() {
    let fed = Federation::start(
        &["NL", "BR", "DE"],
        dccf_node::demo::PRE_ARRIVAL_AGREEMENT,
        dccf_node::demo::PRE_ARRIVAL_ID,
        |_| {},
    )
    .await;
    assert!(
        dccf_node::demo::PRE_ARRIVAL_AGREEMENT.contains("dccf.v1.RiskAlert"),
        "the agreement carries alerts"
    );
    let br = fed.node("BR").exchange_addr;
    let mut baseline = honest_round(&fed, 40, 0).await;

    // The attack, all at once, from "NL" (a certified partner) and from no one at all.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attack = tokio::task::JoinSet::new();
    // 150 TCP connections that never start TLS (held until the handshake timeout).
    for _ in 0..150 {
        attack.spawn(async move {
            let _held = tokio::net::TcpStream::connect(br).await;
            tokio::time::sleep(Duration::from_secs(15)).await;
        });
    }
    // 50 connections sending garbage instead of a TLS ClientHello, again and again.
    for i in 0..50u8 {
        let stop = stop.clone();
        attack.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut tcp) = tokio::net::TcpStream::connect(br).await {
                    let _ = tcp.write_all(&[i; 4096]).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    // 100 real mTLS connections as NL, each opening streams that send non-protobuf frames and
    // streams held open without sending, as fast as it is allowed to.
    for i in 0..100u64 {
        let channel = fed.exchange_channel_as("NL", "BR");
        let stop = stop.clone();
        attack.spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let frames = if n.is_multiple_of(2) {
                    vec![vec![0xFF; 64 + (i as usize % 512)]]
                } else {
                    vec![mutate(&[8, 1, 18, 3, 109, 45, 49], i * 1000 + n)]
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    raw_deliver_stream(channel.clone(), frames),
                )
                .await;
                n += 1;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut under_attack = honest_round(&fed, 40, 1000).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    attack.abort_all();
    while attack.join_next().await.is_some() {}

    // BR is up and consistent: every honest alert is in its inbox, and its health says SERVING.
    let inbox = drain_inbox(&mut fed.gateway("BR")).await;
    assert_eq!(inbox.iter().filter(|m| m.sender == "DE").count(), 80);
    let (b50, b99) = percentiles(&mut baseline);
    let (a50, a99) = percentiles(&mut under_attack);
    println!(
        "honest partner DE → BR, Send with receipt: p50 {b50:.1} ms / p99 {b99:.1} ms before, \
         p50 {a50:.1} ms / p99 {a99:.1} ms under attack (150 silent TCP, 50 garbage, 100 mTLS \
         stream floods)"
    );
}

#[tokio::test]
async fn a_partner_over_its_refusal_budget_waits_unjudged_while_other_partners_are_judged() {
    use dccf_node::proto::v1::RejectReason;
    const BUDGET: u64 = 50;
    let fed = Federation::start(
        &["NL", "BR", "DE"],
        dccf_node::demo::PRE_ARRIVAL_AGREEMENT,
        dccf_node::demo::PRE_ARRIVAL_ID,
        |c| c.limits.max_refusals_per_peer_per_minute = BUDGET,
    )
    .await;
    let refused_by_br = |from: &str| {
        ledger_entries(fed.node("BR"))
            .iter()
            .filter(|e| e.kind() == EntryKind::EnvelopeRejected && e.peer == from)
            .count() as u64
    };
    let reason = |r: &dccf_node::proto::v1::DeliveryResult| match &r.outcome {
        Some(delivery_result::Outcome::Rejection(rej)) => (
            RejectReason::try_from(rej.reason).unwrap(),
            rej.message.clone(),
        ),
        other => panic!("not a rejection: {other:?}"),
    };

    // NL sends envelopes BR can only refuse (empty): the first BUDGET are judged and
    // ledgered, the rest are answered "retry later" without a ledger entry.
    let (results, end) =
        raw_deliver_stream(fed.exchange_channel_as("NL", "BR"), vec![Vec::new(); 120]).await;
    end.expect("the stream itself is fine");
    assert_eq!(results.len(), 120);
    let (judged, waiting): (Vec<_>, Vec<_>) = results
        .iter()
        .map(reason)
        .partition(|(r, _)| *r != RejectReason::Unspecified);
    assert_eq!(judged.len() as u64, BUDGET, "{judged:?}");
    assert!(
        judged
            .iter()
            .all(|(r, _)| *r == RejectReason::UnsupportedVersion)
    );
    assert_eq!(waiting.len() as u64, 120 - BUDGET);
    assert!(
        waiting[0]
            .1
            .contains("limits.max_refusals_per_peer_per_minute")
            && waiting[0].1.contains("retry in"),
        "{:?}",
        waiting[0]
    );
    assert_eq!(
        refused_by_br("NL"),
        BUDGET,
        "only judged envelopes are ledgered"
    );

    // Unary delivery from NL waits too (UNAVAILABLE: retry later)...
    let status = fed
        .exchange_as("NL", "BR")
        .deliver(dccf_node::proto::v1::Envelope::default())
        .await
        .expect_err("over budget");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(refused_by_br("NL"), BUDGET);

    // ...while DE, another partner, is judged as usual.
    let (results, end) =
        raw_deliver_stream(fed.exchange_channel_as("DE", "BR"), vec![Vec::new(); 3]).await;
    end.expect("DE's stream");
    assert!(
        results
            .iter()
            .all(|r| reason(r).0 == RejectReason::UnsupportedVersion),
        "{results:?}"
    );
    assert_eq!(refused_by_br("DE"), 3);
}
