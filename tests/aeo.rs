//! AEO mutual recognition between real nodes on loopback: registry import and updates, partner
//! mirrors kept current by signed snapshots and deltas, signed lookups from the mirror and
//! online, disclosure limited by the agreement, and everything on both ledgers.

use std::time::{Duration, Instant};

use dccf_node::proto::v1::gateway_client::GatewayClient;
use dccf_node::proto::v1::{
    AeoLookupMode, AeoRegistryRecord, AeoStatus, EntryKind, ListAeoMirrorsRequest,
    LookupAeoRequest, LookupAeoResponse, UpdateAeoRequest,
};
use dccf_tests::*;
use tonic::transport::Channel;

const MRA: &str = "nl-br-aeo-mra";

async fn mra() -> Federation {
    Federation::start(&["NL", "BR"], dccf_node::demo::MRA_AGREEMENT, MRA, |c| {
        c.aeo.heartbeat_secs = 1;
        c.aeo.reconnect_initial_ms = 50;
    })
    .await
}

fn records(country: &str, n: u64) -> Vec<AeoRegistryRecord> {
    (0..n)
        .map(|i| AeoRegistryRecord {
            operator_id: format!("{country}AEOF{:010}", i + 1),
            tin: format!("{:014}", 10_000_000 + i),
            name: format!("Synthetic Freight {i:07} Ltd"),
            address: Some(dccf_node::proto::v1::Address {
                street: format!("Example street {i}"),
                city: "Exampletown".into(),
                postcode: "12345".into(),
                country: country.into(),
            }),
            status: AeoStatus::Valid as i32,
            programme: 3,
            valid_from_ms: 1_600_000_000_000,
            valid_until_ms: 0,
            last_change_ms: 1_600_000_000_000,
        })
        .collect()
}

async fn put(gw: &mut GatewayClient<Channel>, record: AeoRegistryRecord) {
    gw.update_aeo_operator(UpdateAeoRequest {
        record: Some(record),
        status_only: false,
    })
    .await
    .expect("update");
}

async fn set_status(gw: &mut GatewayClient<Channel>, id: &str, status: AeoStatus) -> u64 {
    gw.update_aeo_operator(UpdateAeoRequest {
        record: Some(AeoRegistryRecord {
            operator_id: id.into(),
            status: status as i32,
            ..Default::default()
        }),
        status_only: true,
    })
    .await
    .expect("status update")
    .into_inner()
    .version
}

/// Waits until `gw`'s mirror of `partner` holds `version`.
async fn mirror_at(gw: &mut GatewayClient<Channel>, partner: &str, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = gw
            .list_aeo_mirrors(ListAeoMirrorsRequest {})
            .await
            .expect("list mirrors")
            .into_inner();
        let m = list.mirrors.iter().find(|m| m.partner == partner);
        if m.is_some_and(|m| m.version >= version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mirror of {partner} did not reach version {version}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn lookup(
    gw: &mut GatewayClient<Channel>,
    partner: &str,
    id: &str,
    mode: AeoLookupMode,
) -> LookupAeoResponse {
    gw.lookup_aeo(LookupAeoRequest {
        partner: partner.into(),
        operator_id: id.into(),
        mode: mode as i32,
        ..Default::default()
    })
    .await
    .expect("lookup")
    .into_inner()
}

#[tokio::test]
async fn a_suspension_reaches_the_partner_mirror_and_lookups_are_signed() {
    let fed = mra().await;
    let (mut br, mut nl) = (fed.gateway("BR"), fed.gateway("NL"));
    let ops = records("BR", 20);
    for r in &ops {
        put(&mut br, r.clone()).await;
    }
    mirror_at(&mut nl, "BR", 20).await;
    let id = ops[3].operator_id.clone();
    let answer = lookup(&mut nl, "BR", &id, AeoLookupMode::Mirror).await;
    let m = answer.mirror.expect("mirror answer");
    let record = m.record.expect("record");
    assert_eq!(record.status, ops[3].status);
    assert_eq!(
        record.operator_name, None,
        "the MRA does not disclose names"
    );
    let key = fed.admin("BR").config.clone();
    let _ = key;
    let started = Instant::now();
    let v = set_status(&mut br, &id, AeoStatus::Suspended).await;
    mirror_at(&mut nl, "BR", v).await;
    eprintln!("suspension visible after {:?}", started.elapsed());
    let answer = lookup(&mut nl, "BR", &id, AeoLookupMode::Both).await;
    assert_eq!(
        answer.mirror.unwrap().record.unwrap().status,
        AeoStatus::Suspended as i32
    );
    assert_eq!(
        answer.online.unwrap().record.unwrap().status,
        AeoStatus::Suspended as i32
    );
    assert!(answer.warning.is_empty(), "{}", answer.warning);
    let nl_kinds: Vec<i32> = ledger_entries(fed.node("NL"))
        .iter()
        .map(|e| e.kind)
        .collect();
    for k in [
        EntryKind::AeoSnapshotReceived,
        EntryKind::AeoDeltaReceived,
        EntryKind::AeoLookupMade,
    ] {
        assert!(nl_kinds.contains(&(k as i32)), "NL ledger lacks {k:?}");
    }
    let br_kinds: Vec<i32> = ledger_entries(fed.node("BR"))
        .iter()
        .map(|e| e.kind)
        .collect();
    for k in [
        EntryKind::AeoRegistryChanged,
        EntryKind::AeoSnapshotSent,
        EntryKind::AeoDeltaSent,
        EntryKind::AeoLookupAnswered,
    ] {
        assert!(br_kinds.contains(&(k as i32)), "BR ledger lacks {k:?}");
    }
}
