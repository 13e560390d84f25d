//! Running a node in production: Prometheus metrics, JSON logs, gRPC health and reflection of a
//! real `dccf-node serve` process, graceful SIGTERM; per-peer connection and request limits.

use std::time::Duration;

use dccf_node::proto::v1::PreArrivalDeclaration;
use dccf_tests::*;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const DECL: &str = "dccf.v1.PreArrivalDeclaration";

/// A free loopback port (bound and released).
fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// `GET /metrics` over plain HTTP/1.1.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics listener");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.expect("response");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample whose line starts with `name{` and contains every `labels` part.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|p| l.contains(p)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A declaration whose text fields carry `marker`, to prove no payload reaches logs/metrics.
fn marked_declaration(marker: &str) -> Vec<u8> {
    let mut decl = dccf_node::samples::pre_arrival_declaration(7);
    decl.declaration_reference = marker.to_owned();
    decl.master_transport_document = marker.to_owned();
    // Arriving in 16 days: the lead time the report should show.
    decl.eta_ms = dccf_node::envelope::now_ms() + 16 * 86_400_000;
    PreArrivalDeclaration::encode_to_vec(&decl)
}

#[tokio::test]
async fn a_served_node_reports_metrics_health_and_reflection_and_stops_on_sigterm() {
    let metrics_addr = free_addr();
    let fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        "nl-br-exchange",
        |c| {
            if c.admin == "NL" {
                c.observability.metrics_listen = Some(metrics_addr);
                c.observability.log_format = dccf_node::config::LogFormat::Json;
            }
        },
        &["NL"],
    )
    .await;
    fed.save_config("NL");
    // NL's auditor certificate expires in 10 days: inside the 30-day warning window.
    let paths = fed.admin("NL").config.identity_paths();
    let now = time::OffsetDateTime::now_utc();
    let spare = tempfile::tempdir().unwrap();
    let (cert, key) = issue_cert(
        &fed,
        "NL",
        dccf_node::identity::pki::Role::Auditor,
        now - time::Duration::hours(1),
        now + time::Duration::days(10),
        spare.path(),
    );
    std::fs::copy(cert, paths.auditor_cert()).unwrap();
    std::fs::copy(key, paths.auditor_key()).unwrap();
    let log = fed.root.path().join("nl.log");
    let mut nl = KillOnDrop(fed.spawn_process_logged("NL", &log).await);

    // Traffic: one delivered declaration, one refused before sending (unknown agreement).
    let marker = "SECRET-CARGO-MARKER-4242";
    let mut gw = fed.gateway("NL");
    let sent = gw
        .send(send_request(
            "nl-br-exchange",
            "BR",
            DECL,
            marked_declaration(marker),
        ))
        .await
        .expect("send")
        .into_inner();
    assert!(sent.receipt.is_some(), "delivered and receipted");
    let refused = gw
        .send(send_request(
            "no-such-agreement",
            "BR",
            DECL,
            marked_declaration(marker),
        ))
        .await
        .expect_err("unknown agreement");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // Metrics: counters by partner/agreement/type/reason, latency, gauges, certificate expiry.
    let mut metrics = String::new();
    // Gauges refresh every 5 s: wait for one taken after the traffic.
    for _ in 0..150 {
        metrics = scrape(metrics_addr).await;
        if sample(&metrics, "dccf_ledger_entries", &[]).is_some_and(|n| n >= 2.0)
            && metrics.contains("dccf_outbox_depth")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent_count = sample(
        &metrics,
        "dccf_messages_sent_total",
        &[
            "partner=\"BR\"",
            "agreement=\"nl-br-exchange\"",
            "type=\"dccf.v1.PreArrivalDeclaration\"",
        ],
    );
    assert_eq!(sent_count, Some(1.0), "{metrics}");
    let refused_count = sample(
        &metrics,
        "dccf_messages_rejected_total",
        &[
            "direction=\"outbound\"",
            "partner=\"BR\"",
            // A made-up agreement id never becomes a label.
            "agreement=\"unknown\"",
            "reason=\"REJECT_REASON_UNKNOWN_AGREEMENT\"",
        ],
    );
    assert_eq!(refused_count, Some(1.0), "{metrics}");
    assert!(!metrics.contains("no-such-agreement"), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "dccf_delivery_latency_seconds_count",
            &["partner=\"BR\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(sample(&metrics, "dccf_ledger_entries", &[]).is_some_and(|n| n >= 2.0));
    assert_eq!(sample(&metrics, "dccf_ledger_available", &[]), Some(1.0));
    let node_cert_secs = sample(
        &metrics,
        "dccf_certificate_expiry_seconds",
        &["certificate=\"node\""],
    )
    .expect("node certificate expiry");
    assert!(node_cert_secs > 300.0 * 86_400.0, "{node_cert_secs}");
    assert_eq!(
        sample(
            &metrics,
            "dccf_certificate_expiring",
            &["certificate=\"node\""]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "dccf_certificate_expiring",
            &["certificate=\"auditor\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    let auditor_secs = sample(
        &metrics,
        "dccf_certificate_expiry_seconds",
        &["certificate=\"auditor\""],
    )
    .expect("auditor certificate expiry");
    assert!(
        (9.0 * 86_400.0..=10.0 * 86_400.0).contains(&auditor_secs),
        "{auditor_secs}"
    );
    assert!(
        metrics.contains("# HELP dccf_messages_sent_total"),
        "described"
    );
    assert!(!metrics.contains(marker), "no payload in metrics");

    // Health and reflection on the Gateway listener, with the back-office certificate.
    let config = &fed.admin("NL").config;
    let paths = config.identity_paths();
    let channel =
        dccf_node::cli::local_channel(config, &paths.gateway_cert(), &paths.gateway_key())
            .expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "dccf.v1.Exchange", "dccf.v1.Gateway", "dccf.v1.Audit"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "dccf.v1.Nothing".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
    let services = list_services(channel).await;
    for s in ["dccf.v1.Gateway", "dccf.v1.Audit", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|x| x == s), "{s} in {services:?}");
    }

    // SIGTERM: a clean exit, its last words logged as JSON without payload data.
    nl.stop(Duration::from_secs(30)).await;
    let text = std::fs::read_to_string(&log).expect("log");
    let mut lines = 0;
    for line in text.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 2, "JSON log lines: {text}");
    let warned = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["certificate"] == "auditor")
        .unwrap_or_else(|| panic!("no expiry warning for the auditor certificate: {text}"));
    assert_eq!(warned["level"], "WARN", "{warned}");
    assert!(
        warned["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("certificate expires soon") && m.contains("cert rotate")),
        "{warned}"
    );
    assert!(!text.contains(marker), "no payload in logs");
}

/// The services a reflection client lists.
async fn list_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_over_its_request_limit_is_shed_while_others_are_served() {
    const LIMIT: usize = 4;
    let fed = Federation::start(
        &["NL", "BR", "DE"],
        dccf_node::demo::PRE_ARRIVAL_AGREEMENT,
        dccf_node::demo::PRE_ARRIVAL_ID,
        |c| c.limits.max_requests_per_peer = LIMIT,
    )
    .await;
    // BR opens streams to NL and keeps them open until one is refused: BR's own node may hold
    // part of the budget (witnessing), so the refusal comes at the LIMIT-th stream at the latest.
    let mut br = fed.exchange_as("BR", "NL");
    let mut open = Vec::new();
    let shed = loop {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        match br
            .deliver_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(stream) => open.push((tx, stream)),
            Err(status) => break status,
        }
        assert!(open.len() <= LIMIT, "no refusal after {LIMIT} open streams");
    };
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("BR/node") && shed.message().contains("limit 4"),
        "{}",
        shed.message()
    );
    // DE, another partner of NL, is served meanwhile.
    fed.exchange_as("DE", "NL")
        .get_checkpoint(dccf_node::proto::v1::CheckpointRequest::default())
        .await
        .expect("DE is served");
    // Once BR closes its streams its budget has room again.
    open.clear();
    let mut ok = false;
    for _ in 0..100 {
        if br
            .get_checkpoint(dccf_node::proto::v1::CheckpointRequest::default())
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "closed streams free their slots");
}

#[tokio::test]
async fn a_peer_over_its_connection_limit_is_disconnected_while_others_connect() {
    const LIMIT: usize = 3;
    let fed = Federation::start(
        &["NL", "BR", "DE"],
        dccf_node::demo::PRE_ARRIVAL_AGREEMENT,
        dccf_node::demo::PRE_ARRIVAL_ID,
        |c| c.limits.max_connections_per_peer = LIMIT,
    )
    .await;
    // Each client is its own connection (a fresh channel each). BR's own node may hold one.
    let mut held = Vec::new();
    let refused = loop {
        let mut c = fed.exchange_as("BR", "NL");
        match c
            .get_checkpoint(dccf_node::proto::v1::CheckpointRequest::default())
            .await
        {
            Ok(_) => held.push(c),
            Err(status) => break status,
        }
        assert!(held.len() <= LIMIT, "no refusal after {LIMIT} connections");
    };
    assert_eq!(refused.code(), Code::Unknown, "{refused:?}");
    assert!(
        format!("{refused:?}").contains("closed connection"),
        "{refused:?}"
    );
    fed.exchange_as("DE", "NL")
        .get_checkpoint(dccf_node::proto::v1::CheckpointRequest::default())
        .await
        .expect("DE connects");
    // The held connections still work.
    for c in &mut held {
        c.get_checkpoint(dccf_node::proto::v1::CheckpointRequest::default())
            .await
            .expect("held connection");
    }
}

#[tokio::test]
async fn doctor_explains_each_problem_of_a_misconfigured_node_with_a_fix() {
    use std::os::unix::fs::PermissionsExt;
    let mut fed = Federation::nl_br().await;
    let nl = fed.admin("NL").config.clone();
    let config = nl.data_dir.join("node.toml");
    fed.save_config("NL");
    let config = config.to_str().expect("utf-8 path").to_owned();

    // Healthy: every check passes, the partner answers with a signed time.
    let (ok, out, err) = cli_async(&["doctor", "--config", &config]).await;
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("partner BR") && out.contains("mutual TLS ok"),
        "{out}"
    );
    assert!(out.contains("BR's clock"), "{out}");
    assert!(
        out.contains("agreement nl-br-exchange") && out.contains("in force"),
        "{out}"
    );
    assert!(out.contains("running node: last checkpoint"), "{out}");
    assert!(out.contains("running and serving"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");

    // Broken: a key readable by everyone, the partner down.
    let key = nl.identity_paths().signing_key();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    fed.stop("BR").await;
    let (ok, out, err) = cli_async(&["doctor", "--config", &config]).await;
    assert!(!ok, "a broken node fails the check: {out}");
    assert!(
        err.contains("doctor: ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(
        out.contains("can be read by other users (mode 0644)")
            && out.contains(&format!("fix: chmod 600 {}", key.display())),
        "{out}"
    );
    // Said once, with that fix: not also as a key to restore from a backup.
    assert_finding(
        &out,
        "info",
        "keys",
        &["not loaded until the key file permissions are fixed"],
    );
    assert!(findings(&out, "FAIL", "keys").is_empty(), "{out}");
    assert!(
        out.contains("FAIL  partner BR") && out.contains("cannot reach"),
        "{out}"
    );
    assert!(out.contains("check that BR's node is running"), "{out}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // An agreement missing a party's signature: not in force, and who must sign.
    let sig =
        dccf_node::agreement::signature_path(&nl.agreements_dir.join("nl-br-exchange.toml"), "BR");
    std::fs::remove_file(&sig).unwrap();
    let (ok, out, _) = cli_async(&["doctor", "--config", &config]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("not signed by BR"), "{out}");
    assert!(out.contains("ask BR to sign"), "{out}");
    assert!(out.contains("no agreement in force"), "{out}");

    // A config error names the file and field.
    std::fs::write(nl.data_dir.join("bad.toml"), "admin = \"NL\"\nlisten = 5\n").unwrap();
    let bad = nl.data_dir.join("bad.toml");
    let (ok, out, _) = cli(&["doctor", "--config", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("FAIL  config") && out.contains("listen"),
        "{out}"
    );
}

/// The files' contents, to put back with [`restore`].
fn keep(files: &[std::path::PathBuf]) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    files
        .iter()
        .map(|f| (f.clone(), std::fs::read(f).expect("read")))
        .collect()
}

/// Overwrites each `(from, to)`'s `to` with a copy of `from`; returns what was there, for
/// [`restore`].
fn replace_with(
    pairs: &[(std::path::PathBuf, std::path::PathBuf)],
) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let kept = keep(&pairs.iter().map(|(_, to)| to.clone()).collect::<Vec<_>>());
    for (from, to) in pairs {
        std::fs::copy(from, to).expect("copy over");
    }
    kept
}

/// Writes back what [`keep`] read (the files keep their mode).
fn restore(kept: &[(std::path::PathBuf, Vec<u8>)]) {
    for (f, bytes) in kept {
        std::fs::write(f, bytes).expect("restore");
    }
}

/// `dccf-node cert rotate --config CONFIG --role ROLE EXTRA…`; panics unless it succeeds.
async fn rotate(config: &str, role: &str, extra: &[&str]) {
    let mut args = vec!["cert", "rotate", "--config", config, "--role", role];
    args.extend_from_slice(extra);
    let (ok, _, err) = cli_async(&args).await;
    assert!(ok, "{args:?}: {err}");
}

/// Exactly one finding of `level` for `check`, containing every one of `needles`.
fn assert_finding(out: &str, level: &str, check: &str, needles: &[&str]) {
    let found = findings(out, level, check);
    assert_eq!(found.len(), 1, "one {level} {check}: {out}");
    for n in needles {
        assert!(
            found[0].contains(n),
            "{level} {check} mentions {n:?}: {out}"
        );
    }
}

#[tokio::test]
async fn doctor_names_certificate_card_and_port_problems_with_the_fix_for_each() {
    use dccf_node::identity::pki::Role;
    let mut fed = Federation::nl_br().await;
    let nl = fed.admin("NL").config.clone();
    let paths = nl.identity_paths();
    fed.save_config("NL");
    let config = nl.data_dir.join("node.toml");
    let config = config.to_str().unwrap().to_owned();
    let spare = tempfile::tempdir().unwrap();
    let other = stranger(spare.path(), "NL");
    let (ok, out) = fed.doctor("NL").await;
    assert!(ok, "{out}");
    assert_finding(
        &out,
        "ok",
        "own party card",
        &[
            "signing key, HPKE key and CA",
            "valid for the endpoint https://127.0.0.1:",
        ],
    );

    // A certificate close to its expiry: a warning with the command that renews it.
    let kept = keep(&[paths.auditor_cert(), paths.auditor_key()]);
    rotate(&config, "auditor", &["--days", "10"]).await;
    let (ok, out) = fed.doctor("NL").await;
    assert!(ok, "a warning alone fails nothing: {out}");
    assert_finding(
        &out,
        "WARN",
        "auditor certificate",
        &[
            "expires in ",
            " day(s)",
            "fix: dccf-node cert rotate --config <node.toml> --role auditor",
        ],
    );
    restore(&kept);

    // An expired back-office certificate: named, and why the node's health check fails.
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = issue_cert(
        &fed,
        "NL",
        Role::Gateway,
        now - time::Duration::days(30),
        now - time::Duration::days(1),
        spare.path(),
    );
    let kept = replace_with(&[(cert, paths.gateway_cert()), (key, paths.gateway_key())]);
    let (ok, out) = fed.doctor("NL").await;
    assert!(!ok, "{out}");
    assert_finding(
        &out,
        "FAIL",
        "gateway certificate",
        &[
            "expired on",
            "fix: dccf-node cert rotate --config <node.toml> --role gateway",
        ],
    );
    assert_finding(
        &out,
        "FAIL",
        "node",
        &[
            "health check over mutual TLS failed",
            "refused the gateway client certificate",
        ],
    );
    restore(&kept);

    // A node certificate from another CA: named, and the partner's refusal explained.
    let kept = replace_with(&[
        (other.node_cert(), paths.node_cert()),
        (other.node_key(), paths.node_key()),
    ]);
    let (ok, out) = fed.doctor("NL").await;
    assert!(!ok, "{out}");
    assert_finding(
        &out,
        "FAIL",
        "node certificate",
        &["is not issued by this node's CA", "--role node"],
    );
    assert_finding(
        &out,
        "FAIL",
        "partner BR",
        &[
            "closed the connection in the TLS handshake",
            "refused this node's certificate",
        ],
    );
    restore(&kept);

    // A node certificate that does not name the host partners dial: the exact command.
    rotate(&config, "node", &["--host", "nl.customs.invalid"]).await;
    let (ok, out) = fed.doctor("NL").await;
    assert!(!ok, "{out}");
    assert_finding(
        &out,
        "FAIL",
        "node certificate",
        &[
            "is not valid for 127.0.0.1, the host partners dial",
            "it names nl.customs.invalid",
            "fix: dccf-node cert rotate --config <node.toml> --role node --host 127.0.0.1",
        ],
    );
    rotate(
        &config,
        "node",
        &["--host", "127.0.0.1", "--host", "localhost"],
    )
    .await;
    let (_, out) = fed.doctor("NL").await;
    assert!(
        findings(&out, "FAIL", "node certificate").is_empty(),
        "{out}"
    );
    let (ok, _, err) = cli_async(&[
        "cert",
        "rotate",
        "--config",
        &config,
        "--role",
        "gateway",
        "--host",
        "x.example",
    ])
    .await;
    assert!(
        !ok && err.contains("--host") && err.lines().count() == 1,
        "{err}"
    );

    // Keys that are not the ones the agreement names (another backup, a second init).
    let kept = replace_with(&[
        (other.signing_key(), paths.signing_key()),
        (other.hpke_key(), paths.hpke_key()),
    ]);
    let (ok, out) = fed.doctor("NL").await;
    assert!(!ok, "{out}");
    assert_finding(
        &out,
        "FAIL",
        "own party card",
        &[
            "agreement nl-br-exchange v1 lists NL with keys this node does not have",
            "signing key",
            "HPKE key",
            "restore the matching keys/",
        ],
    );
    restore(&kept);

    // A stopped node whose port another program holds: it could not start.
    fed.stop("NL").await;
    let holder = std::net::TcpListener::bind(nl.listen).expect("take NL's port");
    let (ok, out) = fed.doctor("NL").await;
    assert!(!ok, "{out}");
    assert_finding(&out, "info", "node", &["not running"]);
    assert_finding(
        &out,
        "FAIL",
        "listen addresses",
        &[
            &format!("listen {} is in use by another program", nl.listen),
            "ss -ltnp",
        ],
    );
    drop(holder);
    let (ok, out) = fed.doctor("NL").await;
    assert!(ok, "{out}");
    assert_finding(&out, "ok", "listen addresses", &["free"]);
    assert_finding(&out, "ok", "ledger", &["checkpoint"]);
}

#[tokio::test]
async fn status_summarises_a_running_node_and_says_when_it_is_not_running() {
    let mut fed = Federation::nl_br().await;
    fed.save_config("NL");
    let config = fed.admin("NL").config.data_dir.join("node.toml");
    let config = config.to_str().unwrap().to_owned();
    let (ok, out, err) = cli_async(&["status", "--config", &config]).await;
    assert!(ok, "{err}");
    assert!(
        out.starts_with("NL  dccf-node") && out.contains("SERVING"),
        "{out}"
    );
    assert!(out.contains("nl-br-exchange v1 in force"), "{out}");
    assert!(out.contains("ledger ") && out.contains("entries"), "{out}");
    assert!(
        out.contains("outbox") && out.contains("certificates  node until"),
        "{out}"
    );
    assert!(out.lines().count() <= 24, "one screen: {out}");
    fed.stop("NL").await;
    let (ok, _, err) = cli(&["status", "--config", &config]);
    assert!(!ok);
    assert!(err.contains("is not running"), "{err}");
}

/// The certificate `addr` presents in a fresh TLS handshake as `from` would connect.
async fn presented_cert(fed: &Federation, from: &str, to: &str) -> Vec<u8> {
    let paths = fed.admin(from).config.identity_paths();
    let (addr, config) = fed.exchange_tls(&paths.node_cert(), &paths.node_key(), to);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_rotated_node_certificate_is_served_without_a_restart_and_old_connections_keep_working() {
    let fed = Federation::nl_br().await;
    fed.save_config("NL");
    let nl = fed.admin("NL").config.clone();
    let config = nl.data_dir.join("node.toml");
    let before = presented_cert(&fed, "BR", "NL").await;
    // A connection opened before the rotation.
    let mut old = fed.exchange_as("BR", "NL");
    old.get_checkpoint(dccf_node::proto::v1::CheckpointRequest::default())
        .await
        .expect("before");

    let (ok, out, err) = cli(&[
        "cert",
        "rotate",
        "--config",
        config.to_str().unwrap(),
        "--role",
        "node",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("rotated the node certificate of NL"), "{out}");
    let on_disk = dccf_node::server::tls::load_certs(&nl.identity_paths().node_cert()).unwrap();
    assert_ne!(on_disk[0].to_vec(), before, "a new certificate");
    assert_eq!(
        dccf_node::identity::pki::cert_hosts(&on_disk[0]).unwrap(),
        dccf_node::identity::pki::cert_hosts(&before).unwrap(),
        "same hosts"
    );

    // What SIGHUP (or the periodic check) does in `serve`.
    assert!(
        fed.node("NL").reload_certificate().expect("reload"),
        "changed"
    );
    assert!(
        !fed.node("NL").reload_certificate().expect("reload"),
        "once"
    );
    assert_eq!(presented_cert(&fed, "BR", "NL").await, on_disk[0].to_vec());
    old.get_checkpoint(dccf_node::proto::v1::CheckpointRequest::default())
        .await
        .expect("the connection opened before the rotation still works");
    // Both directions deliver with the new certificate.
    let decl = dccf_node::samples::pre_arrival_declaration(3).encode_to_vec();
    fed.gateway("NL")
        .send(send_request("nl-br-exchange", "BR", DECL, decl))
        .await
        .expect("NL → BR after rotation");
    let alert = dccf_node::samples::risk_alert(3).encode_to_vec();
    fed.gateway("BR")
        .send(send_request(
            "nl-br-exchange",
            "NL",
            "dccf.v1.RiskAlert",
            alert,
        ))
        .await
        .expect("BR → NL after rotation");

    let (ok, out, _) = cli(&["cert", "list", "--config", config.to_str().unwrap()]);
    assert!(ok);
    assert!(out.lines().any(|l| l.starts_with("node ")), "{out}");
    assert!(!out.contains("EXPIRED"), "{out}");

    // A half-rotated pair (certificate without its key) is refused; the current one stays.
    let paths = nl.identity_paths();
    std::fs::copy(
        format!("{}.previous", paths.node_cert().display()),
        paths.node_cert(),
    )
    .unwrap();
    assert!(
        fed.node("NL").reload_certificate().is_err(),
        "mismatched key refused"
    );
    assert_eq!(presented_cert(&fed, "BR", "NL").await, on_disk[0].to_vec());
}

#[tokio::test]
async fn sigterm_finishes_deliveries_on_the_wire_before_the_process_exits() {
    use dccf_node::proto::v1::{EntryKind, LedgerEntry};
    const N: usize = 3000;
    let mut fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        "nl-br-exchange",
        |_| {},
        &["NL"],
    )
    .await;
    fed.save_config("NL");
    let log = fed.root.path().join("nl.log");
    let mut nl = KillOnDrop(fed.spawn_process_logged("NL", &log).await);
    // Queue N declarations while BR is down, then let BR come back.
    fed.stop("BR").await;
    queue_declarations(&fed, "NL", "BR", "nl-br-exchange", N).await;
    fed.start_node("BR").await;
    let received = |fed: &Federation| {
        all_ledger_entries(fed.node("BR"))
            .into_iter()
            .filter(|(_, e)| e.kind() == EntryKind::EnvelopeReceived)
            .map(|(_, e)| e.message_id)
            .collect::<Vec<_>>()
    };
    // SIGTERM as soon as deliveries are flowing.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while fed.node("BR").state.store.durable_head().size < 50 {
        assert!(std::time::Instant::now() < deadline, "no delivery started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    nl.stop(Duration::from_secs(60)).await;

    // Every envelope BR accepted has its receipt in NL's ledger: nothing was cut off mid-air.
    let at_br = received(&fed);
    let store = dccf_node::ledger::Store::open(&fed.admin("NL").config.ledger_dir())
        .expect("NL's ledger after exit");
    // Single receipts name one message; bulk-mode batch receipts list theirs as items.
    let receipted: std::collections::HashSet<String> = (0..store.durable_head().size)
        .map(|i| LedgerEntry::decode(store.entry(i).unwrap().unwrap().as_slice()).unwrap())
        .filter(|e| e.kind() == EntryKind::ReceiptReceived)
        .flat_map(|e| {
            let body = dccf_node::proto::v1::ReceiptBody::decode(
                e.receipt.expect("receipt").body.as_slice(),
            )
            .expect("receipt body");
            std::iter::once(body.message_id).chain(body.items.into_iter().map(|i| i.message_id))
        })
        .collect();
    let missing: Vec<_> = at_br.iter().filter(|m| !receipted.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} envelopes BR accepted have no receipt at NL",
        missing.len(),
        at_br.len()
    );
    assert!(
        at_br.len() < N,
        "the stop came while deliveries were flowing ({} of {N} delivered)",
        at_br.len()
    );
    println!(
        "SIGTERM while delivering: {} of {N} accepted by BR, every one receipted at NL",
        at_br.len()
    );
}

#[tokio::test]
async fn a_stopped_node_ends_the_aeo_feeds_partners_follow_and_releases_its_ledger() {
    use dccf_node::proto::v1::{ImportAeoRequest, ListAeoMirrorsRequest};
    let mut fed = Federation::start(
        &["NL", "BR"],
        dccf_node::demo::MRA_AGREEMENT,
        "nl-br-aeo-mra",
        |c| {
            c.aeo.heartbeat_secs = 1;
            c.aeo.reconnect_initial_ms = 50;
        },
    )
    .await;
    let registry: Vec<_> = dccf_node::aeo::generate::generate("NL", 10, 1).collect();
    let mut csv = Vec::new();
    dccf_node::aeo::import::write(dccf_node::aeo::import::Format::Csv, &registry, &mut csv)
        .unwrap();
    fed.gateway("NL")
        .import_aeo_registry(tokio_stream::iter(vec![ImportAeoRequest {
            format: "csv".into(),
            data: csv,
        }]))
        .await
        .expect("import");
    // BR mirrors NL: its feed is a server stream NL serves for as long as BR follows.
    let mut br = fed.gateway("BR");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mirrors = br
            .list_aeo_mirrors(ListAeoMirrorsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .mirrors;
        if mirrors
            .iter()
            .any(|m| m.partner == "NL" && m.connected && m.records == 10)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "BR never mirrored NL: {mirrors:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stop ends that feed (BR resubscribes later) instead of waiting it out, and nothing
    // of the stopped node lives on: its ledger can be opened at once.
    let dir = fed.admin("NL").config.ledger_dir();
    fed.stop("NL").await;
    dccf_node::ledger::Store::open_waiting(&dir, Duration::ZERO)
        .expect("the stopped node released its ledger");
}

#[tokio::test]
async fn the_report_summarises_flows_lead_times_and_refusals_running_or_stopped() {
    let mut fed = Federation::nl_br().await;
    fed.save_config("BR");
    let marker = "SECRET-CARGO-MARKER-4242";
    for _ in 0..3 {
        fed.gateway("NL")
            .send(send_request(
                "nl-br-exchange",
                "BR",
                DECL,
                marked_declaration(marker),
            ))
            .await
            .expect("delivered");
    }
    // A refusal at BR: an envelope for a flow the agreement does not have (BR → NL only).
    let bad = fed.envelope(
        "NL",
        "BR",
        "dccf.v1.AeoStatusResponse",
        &dccf_node::samples::risk_alert(1).encode_to_vec(),
        |_| {},
    );
    assert!(fed.exchange_as("NL", "BR").deliver(bad).await.is_err());
    let config = fed.admin("BR").config.data_dir.join("node.toml");
    let config = config.to_str().unwrap().to_owned();
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let run = |args: Vec<String>| async move {
        cli_async(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
    };
    let args = |format: &str| {
        vec![
            "report".to_owned(),
            "--config".into(),
            config.clone(),
            "--since".into(),
            today.clone(),
            "--format".into(),
            format.into(),
        ]
    };

    // Running: through the Audit service.
    let (ok, table, err) = run(args("table")).await;
    assert!(ok, "{err}");
    let line = table
        .lines()
        .find(|l| l.contains("PreArrivalDeclaration") && l.contains("received"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains(" 3 ") && line.contains("nl-br-exchange") && line.contains("NL"),
        "{line}"
    );
    assert!(line.contains(" d /"), "lead times of about 16 days: {line}");
    assert!(
        table.contains("PAYLOAD_INVALID 1"),
        "the refusal by reason: {table}"
    );
    let (ok, csv, _) = run(args("csv")).await;
    assert!(ok);
    let row = csv
        .lines()
        .find(|l| l.contains("PreArrivalDeclaration") && l.contains("received"))
        .expect("csv row");
    let cols: Vec<&str> = row.split(',').collect();
    assert_eq!(cols[5], "3", "{row}");
    assert_eq!(cols[12], "3", "three lead times: {row}");
    let lead_p50: i64 = cols[13].parse().unwrap();
    assert!(
        lead_p50 > 15 * 86_400_000 && lead_p50 < 18 * 86_400_000,
        "{row}"
    );
    let svg_path = fed.root.path().join("report.svg");
    let mut svg_args = args("svg");
    svg_args.extend(["--out".to_owned(), svg_path.to_str().unwrap().to_owned()]);
    let (ok, _, err) = run(svg_args).await;
    assert!(ok, "{err}");
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("Pre-arrival lead time"));
    for out in [&table, &csv, &svg] {
        assert!(!out.contains(marker), "aggregates only");
    }

    // Stopped: the same numbers straight from the ledger.
    fed.stop("BR").await;
    let (ok, csv_stopped, err) = run(args("csv")).await;
    assert!(ok, "{err}");
    assert!(csv_stopped.contains(row), "{csv_stopped}");

    // Bad dates: one line, non-zero exit.
    let mut bad = args("table");
    bad[4] = "last tuesday".into();
    let (ok, _, err) = run(bad).await;
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--since \"last tuesday\""), "{err}");
}
