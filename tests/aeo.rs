//! AEO mutual recognition between real nodes on loopback: registry import and updates, partner
//! mirrors kept current by signed snapshots and deltas, signed lookups from the mirror and
//! online, disclosure limited by the agreement, and everything on both ledgers.

use std::time::{Duration, Instant};

use dccf_node::proto::v1::gateway_client::GatewayClient;
use dccf_node::proto::v1::{
    AeoLookupMode, AeoRegistryRecord, AeoStatus, AeoSubscribeRequest, EntryKind, ImportAeoRequest,
    ImportAeoResponse, ListAeoMirrorsRequest, LookupAeoRequest, LookupAeoResponse,
    OperatorIdentifierKind, UpdateAeoRequest,
};
use dccf_tests::*;
use tonic::Code;
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
    dccf_node::aeo::generate::generate(country, n, 7).collect()
}

fn csv_of(records: &[AeoRegistryRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    dccf_node::aeo::import::write(dccf_node::aeo::import::Format::Csv, records, &mut out)
        .expect("write csv");
    out
}

async fn import(
    gw: &mut GatewayClient<Channel>,
    format: &str,
    data: Vec<u8>,
) -> Result<ImportAeoResponse, tonic::Status> {
    // Several chunks, as the CLI sends them.
    let chunks: Vec<ImportAeoRequest> = data
        .chunks(4096)
        .enumerate()
        .map(|(i, c)| ImportAeoRequest {
            format: if i == 0 { format.into() } else { String::new() },
            data: c.to_vec(),
        })
        .collect();
    gw.import_aeo_registry(tokio_stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

fn br_key(fed: &Federation) -> ed25519_dalek::VerifyingKey {
    fed.node("BR").state.identity.signing.verifying_key()
}

fn count(node: &dccf_node::server::RunningNode, kind: EntryKind) -> usize {
    aeo_entries(node)
        .iter()
        .filter(|e| e.kind == kind as i32)
        .count()
}

/// The number of `kind` entries once there is at least one (a mirror change is visible as soon
/// as redb commits it; its ledger entry follows from the journal moments later).
async fn ledgered(node: &dccf_node::server::RunningNode, kind: EntryKind) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(node, kind) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    count(node, kind)
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

async fn lookup_by_tin(
    gw: &mut GatewayClient<Channel>,
    partner: &str,
    tin: &str,
    mode: AeoLookupMode,
) -> LookupAeoResponse {
    gw.lookup_aeo(LookupAeoRequest {
        partner: partner.into(),
        operator_id: tin.into(),
        identifier_kind: OperatorIdentifierKind::Tin as i32,
        mode: mode as i32,
        ..Default::default()
    })
    .await
    .expect("lookup by TIN")
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
    assert_eq!(record.operator_address, None, "nor addresses");
    // The answer carries BR's signature: a third party can check it with BR's key alone.
    let statement = m.statement.expect("signed");
    let (header, signed) =
        dccf_node::aeo::statement::verify_statement(&statement, &br_key(&fed)).expect("verifies");
    assert_eq!(
        (header.publisher.as_str(), header.recipient.as_str()),
        ("BR", "NL")
    );
    assert_eq!(signed.status, ops[3].status);
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    assert!(dccf_node::aeo::statement::verify_statement(&statement, &other).is_err());
    let mirrors = nl
        .list_aeo_mirrors(ListAeoMirrorsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mirrors.mirrors[0].lookups, 1, "mirror lookups are counted");
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
    for k in [
        EntryKind::AeoSnapshotReceived,
        EntryKind::AeoDeltaReceived,
        EntryKind::AeoLookupMade,
    ] {
        assert!(
            ledgered(fed.node("NL"), k).await > 0,
            "NL ledger lacks {k:?}"
        );
    }
    // Ledgers hold signed headers and digests, never operator data.
    for admin in ["NL", "BR"] {
        for leaf in ledger_leaves(fed.node(admin)) {
            for secret in [id.as_bytes(), ops[3].name.as_bytes(), ops[3].tin.as_bytes()] {
                assert!(
                    !leaf.windows(secret.len()).any(|w| w == secret),
                    "{admin}'s ledger holds operator data"
                );
            }
        }
    }
    for k in [
        EntryKind::AeoRegistryChanged,
        EntryKind::AeoSnapshotSent,
        EntryKind::AeoDeltaSent,
        EntryKind::AeoLookupAnswered,
    ] {
        assert!(
            ledgered(fed.node("BR"), k).await > 0,
            "BR ledger lacks {k:?}"
        );
    }
}

#[tokio::test]
async fn a_bad_import_changes_nothing_and_a_good_one_reaches_the_mirror() {
    let fed = mra().await;
    let (mut br, mut nl) = (fed.gateway("BR"), fed.gateway("NL"));
    let ops = records("BR", 500);
    let good = import(&mut br, "csv", csv_of(&ops)).await.expect("import");
    assert_eq!((good.records, good.changed, good.version), (500, 500, 500));
    assert!(good.ledger_index > 0);
    mirror_at(&mut nl, "BR", 500).await;

    // Line 302 (header is line 1) has a bad status: refused, nothing changes.
    let mut text = String::from_utf8(csv_of(&ops)).unwrap();
    text = text.replace(",valid,", ",suspended,");
    let lines: Vec<&str> = text.lines().collect();
    let mut bad: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    bad[301] = bad[301].replacen(",suspended,", ",on-holiday,", 1);
    let e = import(&mut br, "csv", (bad.join("\n") + "\n").into_bytes())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("line 302, field status"),
        "{}",
        e.message()
    );
    let list = br
        .list_aeo_mirrors(ListAeoMirrorsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.registry_version, 500,
        "a refused import changes nothing"
    );
    let answer = lookup(&mut nl, "BR", &ops[0].operator_id, AeoLookupMode::Online).await;
    assert_eq!(answer.online.unwrap().record.unwrap().status, ops[0].status);

    // The same file fixed: every record that changed is one version; the mirror follows.
    let fixed = import(&mut br, "csv", text.into_bytes())
        .await
        .expect("import");
    let valid = ops
        .iter()
        .filter(|r| r.status == AeoStatus::Valid as i32)
        .count() as u64;
    assert_eq!((fixed.changed, fixed.version), (valid, 500 + valid));
    mirror_at(&mut nl, "BR", fixed.version).await;
    let answer = lookup(&mut nl, "BR", &ops[0].operator_id, AeoLookupMode::Mirror).await;
    assert_ne!(
        answer.mirror.unwrap().record.unwrap().status,
        AeoStatus::Valid as i32
    );
    // Unknown format, empty import.
    let e = import(&mut br, "xml", b"x".to_vec()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = import(&mut br, "csv", Vec::new()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn unknown_operators_answer_not_found_and_nothing_more() {
    let fed = mra().await;
    let (mut br, mut nl) = (fed.gateway("BR"), fed.gateway("NL"));
    for r in records("BR", 5) {
        put(&mut br, r).await;
    }
    mirror_at(&mut nl, "BR", 5).await;
    let answer = lookup(&mut nl, "BR", "BRAEOF9999999999", AeoLookupMode::Both).await;
    let mirror = answer.mirror.unwrap();
    let record = mirror.record.unwrap();
    assert_eq!(record.status, AeoStatus::NotFound as i32);
    assert!(mirror.statement.is_none());
    let online = answer.online.unwrap().record.unwrap();
    assert_eq!(online.status, AeoStatus::NotFound as i32);
    // Only the echoed identifier, the status and the time.
    let echo = dccf_node::aeo::statement::not_found(
        "BRAEOF9999999999",
        online.identifier_kind,
        online.as_of_ms,
    );
    assert_eq!(online, echo);
    assert!(answer.warning.is_empty(), "{}", answer.warning);
}

/// The MRA with BR's answer flow to NL also listing the operator's name and city.
fn mra_disclosing_names() -> String {
    let template = dccf_node::demo::MRA_AGREEMENT;
    let marker = "from = \"BR\"\nto = \"NL\"\nfields = [\"query_reference\"";
    assert!(template.contains(marker), "template changed");
    template.replacen(
        marker,
        "from = \"BR\"\nto = \"NL\"\nfields = [\"operator_name\", \"operator_address.city\", \"tin\", \"query_reference\"",
        1,
    )
}

#[tokio::test]
async fn disclosure_follows_the_agreement_flow() {
    let template = mra_disclosing_names();
    let fed = Federation::start(&["NL", "BR"], &template, MRA, |c| {
        c.aeo.heartbeat_secs = 1;
    })
    .await;
    let (mut br, mut nl) = (fed.gateway("BR"), fed.gateway("NL"));
    let ops = records("BR", 10);
    import(&mut br, "csv", csv_of(&ops)).await.expect("import");
    for r in records("NL", 10) {
        put(&mut nl, r).await;
    }
    mirror_at(&mut nl, "BR", 10).await;
    mirror_at(&mut br, "NL", 10).await;
    // BR -> NL discloses name, city and TIN (lookups by TIN work) but not the street.
    let answer = lookup_by_tin(&mut nl, "BR", &ops[2].tin, AeoLookupMode::Both).await;
    for a in [answer.mirror.unwrap(), answer.online.unwrap()] {
        let r = a.record.unwrap();
        assert_eq!(r.operator_name.as_deref(), Some(ops[2].name.as_str()));
        let address = r.operator_address.unwrap();
        assert_eq!(address.city, ops[2].address.as_ref().unwrap().city);
        assert!(address.street.is_empty(), "street is not in the flow");
        assert_eq!(r.aeo_authorisation_number, ops[2].operator_id);
    }
    // NL -> BR discloses status and dates only (the shipped flow): no name, no TIN lookups.
    let nl_ops = records("NL", 10);
    let answer = lookup(&mut br, "NL", &nl_ops[1].operator_id, AeoLookupMode::Both).await;
    for a in [answer.mirror.unwrap(), answer.online.unwrap()] {
        let r = a.record.unwrap();
        assert_eq!(r.operator_name, None);
        assert_eq!(r.operator_address, None);
        assert!(r.tin.is_empty());
    }
    let by_tin = lookup_by_tin(&mut br, "NL", &nl_ops[1].tin, AeoLookupMode::Mirror).await;
    assert_eq!(
        by_tin.mirror.unwrap().record.unwrap().status,
        AeoStatus::NotFound as i32,
        "the mirror holds no TINs the agreement does not disclose"
    );
}

#[tokio::test]
async fn the_mirror_answers_while_the_partner_is_down_and_catches_up_without_a_new_snapshot() {
    let mut fed = mra().await;
    let (mut br, mut nl) = (fed.gateway("BR"), fed.gateway("NL"));
    let ops = records("BR", 50);
    import(&mut br, "csv", csv_of(&ops)).await.expect("import");
    mirror_at(&mut nl, "BR", 50).await;
    fed.stop("BR").await;
    let id = &ops[7].operator_id;
    let mirror = lookup(&mut nl, "BR", id, AeoLookupMode::Mirror).await;
    let m = mirror.mirror.unwrap();
    assert_eq!(m.record.unwrap().status, ops[7].status);
    assert!(m.as_of_ms > 0 && m.registry_version == 50);
    let e = nl
        .lookup_aeo(LookupAeoRequest {
            partner: "BR".into(),
            operator_id: id.clone(),
            mode: AeoLookupMode::Online as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    let both = lookup(&mut nl, "BR", id, AeoLookupMode::Both).await;
    assert!(both.mirror.is_some() && both.online.is_none());
    assert!(
        both.warning.contains("online lookup failed"),
        "{}",
        both.warning
    );

    // NL restarts while BR is down, keeps its mirror; BR comes back with a change made
    // meanwhile; NL catches up by a delta (no second snapshot).
    fed.restart("NL").await;
    let mut nl = fed.gateway("NL");
    let again = lookup(&mut nl, "BR", id, AeoLookupMode::Mirror).await;
    assert_eq!(again.mirror.unwrap().registry_version, 50);
    fed.start_node("BR").await;
    let mut br = fed.gateway("BR");
    let v = set_status(&mut br, id, AeoStatus::Revoked).await;
    mirror_at(&mut nl, "BR", v).await;
    let now = lookup(&mut nl, "BR", id, AeoLookupMode::Mirror).await;
    assert_eq!(
        now.mirror.unwrap().record.unwrap().status,
        AeoStatus::Revoked as i32
    );
    assert_eq!(
        count(fed.node("BR"), EntryKind::AeoSnapshotSent),
        1,
        "NL caught up with a delta, not a second snapshot"
    );
    assert_eq!(
        ledgered(fed.node("NL"), EntryKind::AeoSnapshotReceived).await,
        1
    );
    assert!(ledgered(fed.node("NL"), EntryKind::AeoDeltaReceived).await >= 1);
}

#[tokio::test]
async fn only_agreement_partners_with_an_answer_flow_may_subscribe_or_ask() {
    let fed = Federation::start(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        "nl-br-exchange",
        |_| {},
    )
    .await;
    let mut br = fed.gateway("BR");
    put(&mut br, records("BR", 1).remove(0)).await;
    // NL's node asks BR directly: refused, the agreement has no AEO flows.
    let mut ex = fed.exchange_as("NL", "BR");
    let e = ex
        .subscribe_aeo(AeoSubscribeRequest {
            agreement_id: "nl-br-exchange".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    let e = ex
        .lookup_aeo(dccf_node::proto::v1::AeoLookupRequest {
            agreement_id: "nl-br-exchange".into(),
            queries: vec![dccf_node::samples::aeo_status_query("BRAEOF0000000001", 1)],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    let e = ex
        .subscribe_aeo(AeoSubscribeRequest {
            agreement_id: "no-such-agreement".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // NL's Gateway: no mirror, and no online lookup either.
    let mut nl = fed.gateway("NL");
    for mode in [AeoLookupMode::Mirror, AeoLookupMode::Online] {
        let e = nl
            .lookup_aeo(LookupAeoRequest {
                partner: "BR".into(),
                operator_id: "BRAEOF0000000001".into(),
                mode: mode as i32,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::PermissionDenied,
            "{mode:?}: {}",
            e.message()
        );
    }
}

#[tokio::test]
async fn a_stream_of_lookups_answers_each_in_order_and_goes_on_after_a_bad_one() {
    let fed = mra().await;
    let (mut br, mut nl) = (fed.gateway("BR"), fed.gateway("NL"));
    let ops = records("BR", 30);
    import(&mut br, "json", {
        let mut out = Vec::new();
        dccf_node::aeo::import::write(dccf_node::aeo::import::Format::Json, &ops, &mut out)
            .unwrap();
        out
    })
    .await
    .expect("json import");
    mirror_at(&mut nl, "BR", 30).await;
    let ids = [
        ops[0].operator_id.as_str(),
        "BRAEOF9999999999",
        "",
        ops[29].operator_id.as_str(),
    ];
    let requests: Vec<LookupAeoRequest> = ids
        .iter()
        .map(|id| LookupAeoRequest {
            partner: "BR".into(),
            operator_id: (*id).into(),
            query_reference: format!("ref-{id}"),
            ..Default::default()
        })
        .collect();
    let mut answers = nl
        .lookup_aeo_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(a) = answers.message().await.unwrap() {
        got.push(a);
    }
    assert_eq!(got.len(), 4);
    for (a, id) in got.iter().zip(ids) {
        assert_eq!(a.query_reference, format!("ref-{id}"));
    }
    let status = |a: &LookupAeoResponse| a.mirror.as_ref().unwrap().record.as_ref().unwrap().status;
    assert_eq!(status(&got[0]), ops[0].status);
    assert_eq!(status(&got[1]), AeoStatus::NotFound as i32);
    assert!(got[2].error.contains("operator id"), "{}", got[2].error);
    assert_eq!(status(&got[3]), ops[29].status);
}

#[tokio::test]
async fn online_lookups_count_against_the_query_flow_rate_on_both_sides() {
    let template = dccf_node::demo::MRA_AGREEMENT
        .replace("rate_limit_per_minute = 600", "rate_limit_per_minute = 2");
    let fed = Federation::start(&["NL", "BR"], &template, MRA, |_| {}).await;
    let (mut br, mut nl) = (fed.gateway("BR"), fed.gateway("NL"));
    put(&mut br, records("BR", 1).remove(0)).await;
    let id = records("BR", 1).remove(0).operator_id;
    for _ in 0..2 {
        lookup(&mut nl, "BR", &id, AeoLookupMode::Online).await;
    }
    let e = nl
        .lookup_aeo(LookupAeoRequest {
            partner: "BR".into(),
            operator_id: id.clone(),
            mode: AeoLookupMode::Online as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert!(
        e.message().contains("rate limit of 2 per minute"),
        "{}",
        e.message()
    );
    // BR counts on its side too: three queries at once from NL's node are refused.
    let mut ex = fed.exchange_as("NL", "BR");
    let queries = (0..3)
        .map(|i| dccf_node::samples::aeo_status_query(&id, i))
        .collect();
    let e = ex
        .lookup_aeo(dccf_node::proto::v1::AeoLookupRequest {
            agreement_id: MRA.into(),
            queries,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
}

#[tokio::test]
async fn a_partner_has_one_feed_at_a_time() {
    // NL's node stays down (its own follower would subscribe too); its certificate asks.
    let fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::MRA_AGREEMENT,
        MRA,
        |c| c.aeo.heartbeat_secs = 1,
        &["NL"],
    )
    .await;
    let mut br = fed.gateway("BR");
    put(&mut br, records("BR", 1).remove(0)).await;
    let subscribe = || AeoSubscribeRequest {
        agreement_id: MRA.into(),
        ..Default::default()
    };
    let mut ex = fed.exchange_as("NL", "BR");
    let mut first = ex.subscribe_aeo(subscribe()).await.unwrap().into_inner();
    first.message().await.unwrap().expect("a snapshot part");
    let mut second = ex.subscribe_aeo(subscribe()).await.unwrap().into_inner();
    second.message().await.unwrap().expect("a snapshot part");
    // The first feed ends (at the latest at its next heartbeat); the second goes on.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return String::new(),
                Err(s) => return s.message().to_owned(),
            }
        }
    })
    .await
    .expect("the superseded feed ends");
    assert!(ended.contains("subscribed again"), "{ended}");
    let next = tokio::time::timeout(Duration::from_secs(5), second.message()).await;
    assert!(
        matches!(next, Ok(Ok(Some(_)))),
        "the newer feed goes on: {next:?}"
    );
}
