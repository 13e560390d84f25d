//! AEO under SIGKILL, with real node processes: a registry import killed part-way is either all
//! there or not at all after restart, with exactly one ledger entry per committed change; a
//! mirror node killed in the middle of a snapshot keeps no half-installed mirror and converges
//! after restart.

use std::path::Path;
use std::time::{Duration, Instant};

use dccf_node::proto::v1::gateway_client::GatewayClient;
use dccf_node::proto::v1::{
    AeoRegistryRecord, EntryKind, ListAeoMirrorsRequest, ListAeoMirrorsResponse,
};
use dccf_tests::*;
use tonic::transport::Channel;

const MRA: &str = "nl-br-aeo-mra";

struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn csv(country: &str, n: u64, seed: u64) -> Vec<u8> {
    let records: Vec<AeoRegistryRecord> =
        dccf_node::aeo::generate::generate(country, n, seed).collect();
    let mut out = Vec::new();
    dccf_node::aeo::import::write(dccf_node::aeo::import::Format::Csv, &records, &mut out)
        .expect("csv");
    out
}

async fn import(mut gw: GatewayClient<Channel>, data: Vec<u8>) -> Result<u64, tonic::Status> {
    let chunks = dccf_node::aeo::import::requests(dccf_node::aeo::import::Format::Csv, &data);
    Ok(gw
        .import_aeo_registry(tokio_stream::iter(chunks))
        .await?
        .into_inner()
        .version)
}

async fn mirrors(gw: &mut GatewayClient<Channel>) -> ListAeoMirrorsResponse {
    gw.list_aeo_mirrors(ListAeoMirrorsRequest {})
        .await
        .expect("list mirrors")
        .into_inner()
}

async fn wait_mirror(gw: &mut GatewayClient<Channel>, version: u64, records: u64, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = mirrors(gw).await;
        if list
            .mirrors
            .iter()
            .any(|m| m.partner == "BR" && m.version == version && m.records == records)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mirror not at version {version} with {records} records: {:?}\n{}",
            list.mirrors,
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registry-change entries of `node`'s ledger: (version_from, version_to) each.
fn registry_changes(node: &dccf_node::server::RunningNode) -> Vec<(u64, u64)> {
    aeo_entries(node)
        .iter()
        .filter(|e| e.kind == EntryKind::AeoRegistryChanged as i32)
        .filter_map(|e| e.aeo.as_ref().map(|a| (a.version_from, a.version_to)))
        .collect()
}

#[tokio::test]
async fn sigkill_during_import_and_during_a_snapshot_loses_nothing_and_half_applies_nothing() {
    let mut fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::MRA_AGREEMENT,
        MRA,
        |c| {
            c.aeo.heartbeat_secs = 1;
            c.aeo.reconnect_initial_ms = 50;
        },
        &["NL", "BR"],
    )
    .await;
    fed.save_config("NL");
    fed.save_config("BR");
    let log = fed.root.path().join("processes.log");

    // 1. BR imports a small registry, then a big one, and is killed while importing it.
    let mut br = Proc(fed.spawn_process_logged("BR", &log).await);
    let small = import(fed.gateway("BR"), csv("BR", 1_000, 1))
        .await
        .expect("small import");
    let big = csv("BR", 40_000, 2);
    let importing = tokio::spawn(import(fed.gateway("BR"), big.clone()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill_9(&mut br.0);
    drop(br);
    let outcome = importing.await.expect("import task");
    // The registry is the old one or the new one, and its ledger says exactly what happened.
    fed.start_node("BR").await;
    let info = mirrors(&mut fed.gateway("BR")).await;
    let changes = registry_changes(fed.node("BR"));
    assert_eq!(changes.first(), Some(&(0, small)), "{changes:?}");
    match outcome {
        Ok(version) => {
            eprintln!("the import finished before the kill (version {version})");
            assert_eq!(info.registry_version, version);
        }
        Err(_) if info.registry_version == small => {
            eprintln!("killed during the import: nothing of it was committed");
        }
        Err(_) => eprintln!(
            "killed after the import committed, before it was answered (version {})",
            info.registry_version
        ),
    }
    // The big file's ids include the small one's: all of it is 40,000 operators.
    assert!(
        (info.registry_version, info.registry_records) == (small, 1_000)
            || (info.registry_version > small && info.registry_records == 40_000),
        "half an import: version {} with {} records",
        info.registry_version,
        info.registry_records
    );
    let last = changes.last().expect("an entry").1;
    assert_eq!(
        last, info.registry_version,
        "every committed change is on the ledger once: {changes:?}"
    );
    assert!(
        changes.windows(2).all(|w| w[0].1 == w[1].0),
        "contiguous: {changes:?}"
    );
    // Import it (again): everything there, the ledger continues.
    let version = import(fed.gateway("BR"), big)
        .await
        .expect("import after restart");

    // 2. NL starts empty and is killed while receiving BR's snapshot; it restarts and converges.
    let mut nl = Proc(fed.spawn_process_logged("NL", &log).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_9(&mut nl.0);
    drop(nl);
    fed.start_node("NL").await;
    let records = mirrors(&mut fed.gateway("BR")).await.registry_records;
    wait_mirror(&mut fed.gateway("NL"), version, records, &log).await;
    // The mirror is visible once redb commits; its ledger entry follows from the journal.
    let installed = || {
        aeo_entries(fed.node("NL"))
            .iter()
            .filter(|e| e.kind == EntryKind::AeoSnapshotReceived as i32)
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while installed() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = installed();
    assert_eq!(
        received, 1,
        "one installed snapshot, whether or not the kill hit it"
    );
    // The mirror answers for every operator of BR's registry with BR's status.
    let sample: Vec<AeoRegistryRecord> = dccf_node::aeo::generate::generate("BR", 40_000, 2)
        .step_by(997)
        .collect();
    let mut gw = fed.gateway("NL");
    for r in sample {
        let answer = gw
            .lookup_aeo(dccf_node::proto::v1::LookupAeoRequest {
                partner: "BR".into(),
                operator_id: r.operator_id.clone(),
                ..Default::default()
            })
            .await
            .expect("lookup")
            .into_inner();
        assert_eq!(answer.mirror.unwrap().record.unwrap().status, r.status);
    }
}
