//! Reliable delivery between real nodes on loopback: the outbox, bulk mode on `SendStream`,
//! backoff and dead letters, the outbox bound, and operator retry and cancel.

use std::time::Duration;

use dccf_node::proto::v1::gateway_client::GatewayClient;
use dccf_node::proto::v1::{
    DeliveryState, EntryKind, InboxMessage, ListOutboxRequest, OutboxActionRequest, SendRequest,
    SendResponse,
};
use dccf_tests::*;
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const DECL: &str = "dccf.v1.PreArrivalDeclaration";
const AGREEMENT: &str = "nl-br-exchange";

fn declaration(seq: u64) -> SendRequest {
    SendRequest {
        await_delivery: false,
        ..send_request(
            AGREEMENT,
            "BR",
            DECL,
            dccf_node::samples::pre_arrival_declaration(seq).encode_to_vec(),
        )
    }
}

/// Sends `reqs` on one `SendStream` and returns the responses.
async fn send_stream(gw: &mut GatewayClient<Channel>, reqs: Vec<SendRequest>) -> Vec<SendResponse> {
    let mut responses = gw
        .send_stream(tokio_stream::iter(reqs))
        .await
        .expect("SendStream starts")
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = responses.next().await {
        out.push(r.expect("response"));
    }
    out
}

/// Reads BR's inbox until `n` messages arrived (or the deadline), acknowledging nothing.
async fn wait_inbox(
    gw: &mut GatewayClient<Channel>,
    n: usize,
    within: Duration,
) -> Vec<InboxMessage> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = drain_inbox(gw).await;
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn outbox(
    gw: &mut GatewayClient<Channel>,
    dead_only: bool,
) -> dccf_node::proto::v1::ListOutboxResponse {
    gw.list_outbox(ListOutboxRequest {
        dead_letter_only: dead_only,
        limit: 10_000,
        ..Default::default()
    })
    .await
    .expect("ListOutbox")
    .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_stream_delivers_every_message_once_in_order_with_batch_receipts() {
    let fed = Federation::nl_br().await;
    let mut nl = fed.gateway("NL");
    let mut br = fed.gateway("BR");
    const N: u64 = 600;
    let responses = send_stream(&mut nl, (0..N).map(declaration).collect()).await;
    assert_eq!(responses.len(), N as usize);
    assert!(
        responses.iter().all(|r| r.rejection.is_none()),
        "{:?}",
        responses[0]
    );
    // Submission order is ledger order on the sender.
    assert!(
        responses
            .windows(2)
            .all(|w| w[0].sent_ledger_index < w[1].sent_ledger_index)
    );

    let inbox = wait_inbox(&mut br, N as usize, Duration::from_secs(30)).await;
    assert_eq!(
        inbox.len(),
        N as usize,
        "every message arrives exactly once"
    );
    // Delivered in submission order: BR's ledger indices follow NL's submission order.
    let ids: Vec<&str> = responses.iter().map(|r| r.message_id.as_str()).collect();
    let arrived: Vec<&str> = inbox.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(arrived, ids);

    // Every envelope BR recorded verifies on its own (header + path + signed batch root) under
    // NL's key, as a third party would check it.
    let nl_key = fed.node("NL").state.identity.signing.verifying_key();
    let received: Vec<_> = ledger_entries(fed.node("BR"))
        .into_iter()
        .filter(|e| e.kind() == EntryKind::EnvelopeReceived)
        .collect();
    assert_eq!(received.len(), N as usize);
    for e in &received {
        assert!(!e.batch_header.is_empty(), "bulk mode on SendStream");
        dccf_node::ledger::entry::verify_envelope_signature(e, &nl_key, "NL").expect("verifies");
    }
    // Far fewer receipts than messages: one per batch committed together.
    let issued = ledger_entries(fed.node("BR"))
        .iter()
        .filter(|e| e.kind() == EntryKind::ReceiptIssued)
        .count();
    assert!(issued >= 1 && issued < N as usize / 4, "{issued} receipts");

    // NL records the batch receipts and its outbox empties.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = outbox(&mut nl, false).await;
        if o.items.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox not empty: {}",
            o.items.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = send_stream(
        &mut nl,
        vec![SendRequest {
            message_id: responses[7].message_id.clone(),
            ..declaration(7)
        }],
    )
    .await;
    assert_eq!(
        again[0].state,
        DeliveryState::Delivered as i32,
        "{:?}",
        again[0]
    );
    assert!(
        again[0].receipt.is_some(),
        "a resend answers with the stored batch receipt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_stopped_partner_wait_in_the_outbox_and_all_arrive_once_it_is_back() {
    let mut fed = Federation::nl_br().await;
    fed.stop("BR").await;
    let mut nl = fed.gateway("NL");
    let responses = send_stream(&mut nl, (0..200).map(declaration).collect()).await;
    assert!(
        responses
            .iter()
            .all(|r| r.state == DeliveryState::Queued as i32)
    );
    // Attempts are made, fail and are counted against the oldest message.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let o = outbox(&mut nl, false).await;
    assert_eq!(o.items.len(), 200);
    assert!(o.items[0].attempts >= 1, "{:?}", o.items[0]);
    assert!(!o.items[0].last_error.is_empty());

    fed.start_node("BR").await;
    let mut br = fed.gateway("BR");
    let inbox = wait_inbox(&mut br, 200, Duration::from_secs(30)).await;
    assert_eq!(inbox.len(), 200);
    let mut ids: Vec<_> = inbox.iter().map(|m| m.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200, "none twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_answers_resource_exhausted_with_a_retry_hint() {
    let mut fed = Federation::start(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        |c| {
            c.delivery.max_outbox_per_partner = 5;
        },
    )
    .await;
    fed.stop("BR").await;
    let mut nl = fed.gateway("NL");
    for seq in 0..5 {
        let r = nl
            .send(declaration(seq))
            .await
            .expect("room for 5")
            .into_inner();
        assert_eq!(r.state, DeliveryState::Queued as i32);
    }
    let status = nl.send(declaration(5)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("outbox for BR is full"),
        "{}",
        status.message()
    );
    let hint: u64 = status
        .metadata()
        .get("dccf-retry-after-ms")
        .expect("retry hint")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hint >= 1000);
    // On a stream: a rejection per refused request, and the stream goes on.
    let rs = send_stream(&mut nl, vec![declaration(6), declaration(7)]).await;
    assert_eq!(rs.len(), 2);
    for r in &rs {
        let rej = r.rejection.as_ref().expect("refused");
        assert!(
            rej.retry_after_ms >= 1000 && rej.message.contains("full"),
            "{rej:?}"
        );
    }
    // Nothing beyond the bound was written.
    assert_eq!(outbox(&mut nl, false).await.items.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_its_attempts_is_dead_lettered_and_an_operator_can_retry_or_cancel_it() {
    let mut fed = Federation::start(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        |c| {
            c.delivery.max_attempts = 2;
            c.limits.connect_timeout_secs = 1;
        },
    )
    .await;
    fed.stop("BR").await;
    let mut nl = fed.gateway("NL");
    let a = nl
        .send(declaration(1))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let b = nl
        .send(declaration(2))
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let dead = outbox(&mut nl, true).await;
        if dead.items.len() == 2 {
            assert!(
                dead.items
                    .iter()
                    .all(|i| i.state == DeliveryState::DeadLetter as i32)
            );
            assert!(
                dead.items[0]
                    .last_error
                    .contains("gave up after 2 attempts"),
                "{:?}",
                dead.items[0]
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead-lettered: {:?}",
            outbox(&mut nl, false).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kinds: Vec<_> = ledger_entries(fed.node("NL"))
        .iter()
        .map(|e| e.kind())
        .collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EntryKind::DeliveryDeadLettered)
            .count(),
        2
    );
    // `doctor` points the operator at them.
    let (_, out) = fed.doctor("NL").await;
    let dead = findings(&out, "WARN", "outbox BR");
    assert_eq!(dead.len(), 1, "{out}");
    assert!(
        dead[0].contains("2 message(s) to BR given up (dead letter)")
            && dead[0].contains("outbox list --config <node.toml> --partner BR --dead-letter"),
        "{out}"
    );

    // Cancel one, retry the other once BR is back: only the retried one arrives.
    let cancelled = nl
        .cancel_outbox(OutboxActionRequest {
            message_ids: vec![b.clone(), "no-such-id".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.affected, 1);
    fed.start_node("BR").await;
    let retried = nl
        .retry_outbox(OutboxActionRequest {
            message_ids: vec![a.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.affected, 1);
    let mut br = fed.gateway("BR");
    let inbox = wait_inbox(&mut br, 1, Duration::from_secs(20)).await;
    assert_eq!(
        inbox
            .iter()
            .map(|m| m.message_id.as_str())
            .collect::<Vec<_>>(),
        [a.as_str()]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        drain_inbox(&mut br).await.len(),
        1,
        "the cancelled message never arrives"
    );
    let kinds: Vec<_> = ledger_entries(fed.node("NL"))
        .iter()
        .map(|e| e.kind())
        .collect();
    assert!(kinds.contains(&EntryKind::DeliveryCancelled));
    assert!(kinds.contains(&EntryKind::DeliveryRequeued));
    assert!(outbox(&mut nl, false).await.items.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_inbox_stream_sees_every_message_once_while_a_bulk_stream_arrives() {
    let fed = Federation::nl_br().await;
    let mut nl = fed.gateway("NL");
    let mut live = fed
        .gateway("BR")
        .inbox(dccf_node::proto::v1::InboxRequest { drain_only: false })
        .await
        .unwrap()
        .into_inner();
    const N: u64 = 1500;
    let sending =
        tokio::spawn(async move { send_stream(&mut nl, (0..N).map(declaration).collect()).await });
    let mut seen = Vec::new();
    while seen.len() < N as usize {
        let m = tokio::time::timeout(Duration::from_secs(30), live.message())
            .await
            .unwrap_or_else(|_| panic!("live inbox stalled after {} of {N}", seen.len()))
            .unwrap()
            .unwrap();
        seen.push(m.ledger_index);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "in ledger order, none twice"
    );
    let responses = sending.await.unwrap();
    assert_eq!(responses.len(), N as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shuts_down_promptly_while_its_back_office_keeps_an_inbox_stream_open() {
    let mut fed = Federation::nl_br().await;
    let mut live = fed
        .gateway("BR")
        .inbox(dccf_node::proto::v1::InboxRequest { drain_only: false })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), fed.stop("BR"))
        .await
        .expect("graceful shutdown does not wait for an open Inbox stream");
    // The stream ends (cleanly or with an error), it does not hang.
    let end = tokio::time::timeout(Duration::from_secs(5), live.message()).await;
    assert!(end.is_ok(), "the Inbox stream ended with the node");
}
