//! Restarts: a node keeps its ledger, inbox and dedupe state across a graceful restart, and a
//! real `dccf-node serve` process killed with SIGKILL loses no message it acknowledged.

use std::collections::BTreeMap;

use dccf_node::ledger::Store;
use dccf_node::proto::v1::{EntryKind, LedgerEntry, ReceiptBody};
use dccf_tests::*;
use prost::Message;

const ALERT: &str = "dccf.v1.RiskAlert";

#[tokio::test]
async fn a_restarted_node_keeps_its_ledger_inbox_and_dedupe_state() {
    let mut fed = Federation::nl_br().await;
    let env = fed.envelope(
        "NL",
        "BR",
        ALERT,
        &dccf_node::samples::risk_alert(1).encode_to_vec(),
        |_| {},
    );
    let receipt = fed
        .exchange_as("NL", "BR")
        .deliver(env.clone())
        .await
        .unwrap()
        .into_inner();
    for seq in 2..4 {
        fed.gateway("NL")
            .send(send_request(
                "nl-br-exchange",
                "BR",
                ALERT,
                dccf_node::samples::risk_alert(seq).encode_to_vec(),
            ))
            .await
            .unwrap();
    }
    let head = fed.node("BR").state.store.durable_head();
    let entries = ledger_entries(fed.node("BR"));

    fed.restart("BR").await;

    assert_eq!(
        fed.node("BR").state.store.durable_head(),
        head,
        "same size and root after restart"
    );
    assert_eq!(ledger_entries(fed.node("BR")), entries);
    assert_eq!(
        drain_inbox(&mut fed.gateway("BR")).await.len(),
        3,
        "unacknowledged messages survive"
    );
    // Dedupe survives: the same envelope still gets its original receipt, and no new entry.
    let again = fed
        .exchange_as("NL", "BR")
        .deliver(env)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, receipt);
    assert_eq!(fed.node("BR").state.store.durable_head(), head);
    // New messages append after the old entries.
    let sent = fed
        .gateway("NL")
        .send(send_request(
            "nl-br-exchange",
            "BR",
            ALERT,
            dccf_node::samples::risk_alert(9).encode_to_vec(),
        ))
        .await
        .unwrap()
        .into_inner();
    let body = ReceiptBody::decode(sent.receipt.unwrap().body.as_slice()).unwrap();
    assert_eq!(body.ledger_index, head.size);
}

#[tokio::test]
async fn a_node_killed_with_sigkill_loses_no_acknowledged_message() {
    let fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        "nl-br-exchange",
        |_| {},
        &["BR"],
    )
    .await;
    let mut acknowledged: BTreeMap<String, ReceiptBody> = BTreeMap::new();
    for round in 0..4u64 {
        let mut child = fed.spawn_process("BR").await;
        // A sender keeps sending while the receiver is killed mid-stream.
        let mut gw = fed.gateway("NL");
        let sender = tokio::spawn(async move {
            let mut acks = Vec::new();
            for seq in 0..200u64 {
                let req = send_request(
                    "nl-br-exchange",
                    "BR",
                    ALERT,
                    dccf_node::samples::risk_alert(round * 1000 + seq).encode_to_vec(),
                );
                match gw.send(req).await {
                    Ok(r) => acks.push(r.into_inner()),
                    Err(_) => break,
                }
            }
            acks
        });
        // Let a varying number of messages through before the kill.
        tokio::time::sleep(std::time::Duration::from_millis(150 + 120 * round)).await;
        kill_9(&mut child);
        for sent in sender.await.unwrap() {
            let body = ReceiptBody::decode(sent.receipt.unwrap().body.as_slice()).unwrap();
            acknowledged.insert(sent.message_id, body);
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "some messages must have been acknowledged"
    );

    // Open the killed node's ledger directly: every acknowledged message is there, at the index
    // its receipt names, with the digest its receipt names, and the tree is consistent.
    let store =
        Store::open(&fed.admin("BR").config.ledger_dir()).expect("ledger opens after SIGKILL");
    let head = store
        .verify()
        .expect("tree recomputed from stored leaves matches the head");
    for (id, receipt) in &acknowledged {
        let leaf = store
            .entry(receipt.ledger_index)
            .unwrap()
            .unwrap_or_else(|| panic!("entry of {id} missing"));
        let entry = LedgerEntry::decode(leaf.as_slice()).unwrap();
        assert_eq!(entry.kind(), EntryKind::EnvelopeReceived);
        assert_eq!(&entry.message_id, id);
        assert_eq!(entry.envelope_digest, receipt.envelope_digest);
        assert!(receipt.ledger_size <= head.size);
    }
}
