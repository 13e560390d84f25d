//! Test helpers for DCCF node integration tests: a federation of real nodes on loopback (real
//! mTLS, real sled in temp dirs), clients with any certificate, hand-built envelopes, ledger
//! readers, and the real `dccf-node` binary for process-level tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dccf_node::config::NodeConfig;
use dccf_node::envelope::seal::{Outgoing, seal};
use dccf_node::identity::pki::{CertRequest, CertificateAuthority, Role};
use dccf_node::identity::{IdentityPaths, NodeIdentity};
use dccf_node::proto::v1::exchange_client::ExchangeClient;
use dccf_node::proto::v1::gateway_client::GatewayClient;
use dccf_node::proto::v1::{
    EntryKind, Envelope, InboxMessage, InboxRequest, LedgerEntry, SendRequest,
};
use dccf_node::server::{RunningNode, start_on};
use prost::Message;
use tonic::transport::Channel;

/// A three-party agreement used by tests that need a third administration.
pub const THREE_PARTY_AGREEMENT: &str = r#"
id = "tri-exchange"
version = 1
title = "Three-party test agreement"
valid_from = 2020-01-01T00:00:00Z
valid_until = 2100-01-01T00:00:00Z

[[parties]]
admin = "NL"
endpoint = "https://127.0.0.1:1"
signing_key = ""
hpke_key = ""
ca_cert = ""

[[parties]]
admin = "BR"
endpoint = "https://127.0.0.1:1"
signing_key = ""
hpke_key = ""
ca_cert = ""

[[parties]]
admin = "DE"
endpoint = "https://127.0.0.1:1"
signing_key = ""
hpke_key = ""
ca_cert = ""

[[flows]]
message_type = "dccf.v1.RiskAlert"
from = "NL"
to = "BR"
fields = ["*"]

[[flows]]
message_type = "dccf.v1.RiskAlert"
from = "DE"
to = "BR"
fields = ["*"]
"#;

/// One administration of a test federation.
pub struct Admin {
    /// Its configuration (as loaded from its node.toml).
    pub config: NodeConfig,
    /// The running node, if started.
    pub node: Option<RunningNode>,
}

/// Real nodes on loopback sharing one signed agreement.
pub struct Federation {
    /// Root of all data directories (`<root>/<admin>/`).
    pub root: tempfile::TempDir,
    /// The administrations, in the order given.
    pub admins: Vec<Admin>,
    /// The agreement id.
    pub agreement_id: String,
}

/// Installs the ring crypto provider (every test binary must).
pub fn init() {
    dccf_node::server::tls::install_crypto_provider();
}

impl Federation {
    /// NL and BR under the shipped example agreement, both running.
    pub async fn nl_br() -> Federation {
        Self::start(
            &["NL", "BR"],
            dccf_node::demo::EXAMPLE_AGREEMENT,
            "nl-br-exchange",
            |_| {},
        )
        .await
    }

    /// `admins` under `template`, each config adjusted by `tweak` before start.
    pub async fn start(
        admins: &[&str],
        template: &str,
        agreement_id: &str,
        tweak: impl Fn(&mut NodeConfig),
    ) -> Federation {
        Self::start_except(admins, template, agreement_id, tweak, &[]).await
    }

    /// Like [`Federation::start`], but leaves the nodes of `not_started` stopped (their ports
    /// are free for a process to take: see [`Federation::spawn_process`]).
    pub async fn start_except(
        admins: &[&str],
        template: &str,
        agreement_id: &str,
        tweak: impl Fn(&mut NodeConfig),
        not_started: &[&str],
    ) -> Federation {
        init();
        let root = tempfile::tempdir().expect("temp dir");
        let file_name = format!("{agreement_id}.toml");
        let prepared =
            dccf_node::demo::setup(root.path(), admins, &[(template, file_name.as_str())])
                .await
                .expect("federation setup");
        let mut out = Vec::new();
        for (mut config, exchange, gateway) in prepared {
            // Tests restart partners within seconds: retry quickly (a test may override).
            config.delivery.backoff_initial_ms = 50;
            config.delivery.backoff_max_ms = 500;
            tweak(&mut config);
            let node = if not_started.contains(&config.admin.as_str()) {
                None
            } else {
                Some(
                    start_on(config.clone(), exchange, gateway)
                        .await
                        .expect("node starts"),
                )
            };
            out.push(Admin { config, node });
        }
        Federation {
            root,
            admins: out,
            agreement_id: agreement_id.to_owned(),
        }
    }

    /// The administration `admin`.
    pub fn admin(&self, admin: &str) -> &Admin {
        self.admins
            .iter()
            .find(|a| a.config.admin == admin)
            .expect("known admin")
    }

    fn admin_mut(&mut self, admin: &str) -> &mut Admin {
        self.admins
            .iter_mut()
            .find(|a| a.config.admin == admin)
            .expect("known admin")
    }

    /// `admin`'s running node.
    pub fn node(&self, admin: &str) -> &RunningNode {
        self.admin(admin).node.as_ref().expect("node running")
    }

    /// A Gateway client for `admin` with its back-office certificate.
    pub fn gateway(&self, admin: &str) -> GatewayClient<Channel> {
        dccf_node::cli::gateway_client_for(&self.admin(admin).config).expect("gateway client")
    }

    /// An Exchange client to `to` (in-process or a process), presenting `from`'s node certificate.
    pub fn exchange_as(&self, from: &str, to: &str) -> ExchangeClient<Channel> {
        let paths = self.admin(from).config.identity_paths();
        self.exchange_with_cert(&paths.node_cert(), &paths.node_key(), to)
    }

    /// An Exchange client to `to` presenting an arbitrary certificate and key.
    pub fn exchange_with_cert(&self, cert: &Path, key: &Path, to: &str) -> ExchangeClient<Channel> {
        let (addr, config) = self.exchange_tls(cert, key, to);
        let channel = dccf_node::delivery::peers::tls_channel(
            &addr.to_string(),
            "127.0.0.1".try_into().unwrap(),
            config,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap();
        ExchangeClient::new(channel)
            .max_encoding_message_size(64 * 1024 * 1024)
            .max_decoding_message_size(64 * 1024 * 1024)
    }

    /// The address of `to`'s Exchange listener (of the running in-process node, or the
    /// configured one for a node process) and a TLS client configuration presenting `cert`/`key`
    /// and trusting only `to`'s CA: what a raw client needs to speak to `to` over real TLS.
    pub fn exchange_tls(
        &self,
        cert: &Path,
        key: &Path,
        to: &str,
    ) -> (std::net::SocketAddr, std::sync::Arc<rustls::ClientConfig>) {
        let target = self.admin(to);
        let ca =
            dccf_node::server::tls::load_certs(&target.config.identity_paths().ca_cert()).unwrap();
        let config = dccf_node::server::tls::client_config(
            &[ca[0].to_vec()],
            dccf_node::server::tls::load_certs(cert).unwrap(),
            dccf_node::server::tls::load_key(key).unwrap(),
        )
        .unwrap();
        let addr = target
            .node
            .as_ref()
            .map_or(target.config.listen, |n| n.exchange_addr);
        (addr, config)
    }

    /// A gRPC channel to `to`'s Exchange listener presenting `from`'s node certificate (for raw
    /// clients with their own codec).
    pub fn exchange_channel_as(&self, from: &str, to: &str) -> Channel {
        let paths = self.admin(from).config.identity_paths();
        let (addr, config) = self.exchange_tls(&paths.node_cert(), &paths.node_key(), to);
        dccf_node::delivery::peers::tls_channel(
            &addr.to_string(),
            "127.0.0.1".try_into().unwrap(),
            config,
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    /// Seals and signs an envelope with `from`'s real keys, to `to`'s HPKE key, under the
    /// federation's agreement, letting `edit` change the statement first.
    pub fn envelope(
        &self,
        from: &str,
        to: &str,
        message_type: &str,
        payload: &[u8],
        edit: impl FnOnce(&mut OutgoingOwned),
    ) -> Envelope {
        let state = &self.node(from).state;
        let agreements = state.agreements();
        let agreement = agreements
            .active(&self.agreement_id, dccf_node::envelope::now_ms())
            .expect("active agreement");
        let partner = agreement.party(to).expect("party");
        let now = dccf_node::envelope::now_ms();
        let mut o = OutgoingOwned {
            message_id: uuid_v7(),
            agreement_id: self.agreement_id.clone(),
            agreement_digest: agreement.digest,
            sender: from.to_owned(),
            recipient: to.to_owned(),
            message_type: message_type.to_owned(),
            payload: payload.to_vec(),
            created_at_ms: now,
            expires_at_ms: now + 600_000,
        };
        edit(&mut o);
        seal(
            &Outgoing {
                message_id: &o.message_id,
                agreement_id: &o.agreement_id,
                agreement_digest: &o.agreement_digest,
                sender: &o.sender,
                recipient: &o.recipient,
                message_type: &o.message_type,
                payload: &o.payload,
                in_reply_to: "",
                consent_reference: "",
                created_at_ms: o.created_at_ms,
                expires_at_ms: o.expires_at_ms,
            },
            state.identity.signing.signing_key(),
            &partner.hpke_key,
        )
        .expect("seal")
    }

    /// Seals and signs an envelope with `from`'s keys and `to`'s HPKE key from any loaded
    /// agreement version, in force or not (to test what a receiver does with it).
    pub fn envelope_unchecked(
        &self,
        from: &str,
        to: &str,
        message_type: &str,
        payload: &[u8],
    ) -> Envelope {
        let state = &self.node(from).state;
        let agreements = state.agreements();
        let agreement = agreements
            .all()
            .find(|a| a.id() == self.agreement_id)
            .expect("agreement loaded");
        let partner = agreement.party(to).expect("party");
        let now = dccf_node::envelope::now_ms();
        let id = uuid_v7();
        seal(
            &Outgoing {
                message_id: &id,
                agreement_id: &self.agreement_id,
                agreement_digest: &agreement.digest,
                sender: from,
                recipient: to,
                message_type,
                payload,
                in_reply_to: "",
                consent_reference: "",
                created_at_ms: now,
                expires_at_ms: now + 600_000,
            },
            state.identity.signing.signing_key(),
            &partner.hpke_key,
        )
        .expect("seal")
    }

    /// Stops `admin`'s node (gracefully) and starts it again on the same addresses and data.
    pub async fn restart(&mut self, admin: &str) {
        let a = self.admin_mut(admin);
        let node = a.node.take().expect("running");
        let (ex, gw) = (node.exchange_addr, node.gateway_addr);
        node.shutdown().await;
        let exchange = bind_retry(ex).await;
        let gateway = bind_retry(gw).await;
        a.node = Some(
            start_on(a.config.clone(), exchange, gateway)
                .await
                .expect("restart"),
        );
    }

    /// Stops `admin`'s node.
    pub async fn stop(&mut self, admin: &str) {
        if let Some(node) = self.admin_mut(admin).node.take() {
            node.shutdown().await;
        }
    }

    /// Starts `admin`'s stopped node again on its configured addresses and data directory.
    pub async fn start_node(&mut self, admin: &str) {
        let a = self.admin_mut(admin);
        assert!(a.node.is_none(), "{admin} is already running");
        let exchange = bind_retry(a.config.listen).await;
        let gateway = bind_retry(a.config.gateway_listen).await;
        a.node = Some(
            start_on(a.config.clone(), exchange, gateway)
                .await
                .expect("node starts again"),
        );
    }
}

async fn bind_retry(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    for _ in 0..100 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot re-bind {addr}");
}

/// An owned, editable version of [`Outgoing`].
#[derive(Debug, Clone)]
pub struct OutgoingOwned {
    /// Message id.
    pub message_id: String,
    /// Agreement id.
    pub agreement_id: String,
    /// Agreement digest.
    pub agreement_digest: [u8; 32],
    /// Sender.
    pub sender: String,
    /// Recipient.
    pub recipient: String,
    /// Message type.
    pub message_type: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Creation time.
    pub created_at_ms: i64,
    /// Expiry time.
    pub expires_at_ms: i64,
}

/// A fresh UUIDv7 string.
pub fn uuid_v7() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A send request for `message_type` under `agreement`.
pub fn send_request(
    agreement: &str,
    to: &str,
    message_type: &str,
    payload: Vec<u8>,
) -> SendRequest {
    dccf_node::delivery::outbound::request(agreement, to, message_type, payload)
}

/// Reads the whole inbox of a Gateway without waiting for new messages.
pub async fn drain_inbox(gw: &mut GatewayClient<Channel>) -> Vec<InboxMessage> {
    let mut stream = gw
        .inbox(InboxRequest { drain_only: true })
        .await
        .expect("inbox")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.expect("inbox message") {
        out.push(m);
    }
    out
}

/// Every durable ledger entry of a running node, with its index.
pub fn all_ledger_entries(node: &RunningNode) -> Vec<(u64, LedgerEntry)> {
    let store = &node.state.store;
    (0..store.durable_head().size)
        .map(|i| {
            let leaf = store.entry(i).expect("read").expect("entry present");
            (
                i,
                LedgerEntry::decode(leaf.as_slice()).expect("entry decodes"),
            )
        })
        .collect()
}

fn is_agreement_entry(e: &LedgerEntry) -> bool {
    matches!(
        e.kind(),
        EntryKind::AgreementActivated | EntryKind::AgreementDeactivated
    )
}

/// AEO feed and lookup entries (kinds 16 to 23), which nodes under an agreement with AEO flows
/// record in the background as their mirror feeds start.
fn is_aeo_entry(e: &LedgerEntry) -> bool {
    (EntryKind::AeoRegistryChanged as i32..=EntryKind::AeoFeedRejected as i32).contains(&e.kind)
}

/// The ledger's message decisions (sent, received, rejected, receipts), without the agreement
/// lifecycle entries every node also records and without AEO entries.
pub fn ledger_entries(node: &RunningNode) -> Vec<LedgerEntry> {
    all_ledger_entries(node)
        .into_iter()
        .map(|(_, e)| e)
        .filter(|e| !is_agreement_entry(e) && !is_aeo_entry(e))
        .collect()
}

/// The ledger's AEO entries (registry changes, snapshots, deltas, lookups, refused batches).
pub fn aeo_entries(node: &RunningNode) -> Vec<LedgerEntry> {
    all_ledger_entries(node)
        .into_iter()
        .map(|(_, e)| e)
        .filter(is_aeo_entry)
        .collect()
}

/// The ledger's agreement lifecycle entries (activated, deactivated).
pub fn agreement_entries(node: &RunningNode) -> Vec<LedgerEntry> {
    all_ledger_entries(node)
        .into_iter()
        .map(|(_, e)| e)
        .filter(is_agreement_entry)
        .collect()
}

/// Every raw leaf of a ledger, for searching plaintext.
pub fn ledger_leaves(node: &RunningNode) -> Vec<Vec<u8>> {
    let store = &node.state.store;
    (0..store.durable_head().size)
        .map(|i| store.entry(i).unwrap().unwrap())
        .collect()
}

/// Issues, from `admin`'s own CA, a certificate of `role` valid in `[not_before, not_after]`, and
/// writes it to `dir`; returns (cert path, key path).
pub fn issue_cert(
    fed: &Federation,
    admin: &str,
    role: Role,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    dir: &Path,
) -> (PathBuf, PathBuf) {
    let paths = fed.admin(admin).config.identity_paths();
    let ca = CertificateAuthority::load(&paths.ca_cert(), &paths.ca_key()).expect("CA loads");
    let mut req = CertRequest::new(admin, role, vec!["127.0.0.1".into()]);
    req.not_before = not_before;
    req.not_after = not_after;
    let issued = ca.issue(&req).expect("issue");
    let (cert, key) = (
        dir.join(format!("{admin}-{}.pem", role.as_str())),
        dir.join(format!("{admin}-{}.key", role.as_str())),
    );
    issued.save(&cert, &key).expect("save");
    (cert, key)
}

/// A stranger administration with its own CA, not named in any agreement; returns its paths.
pub fn stranger(dir: &Path, admin: &str) -> IdentityPaths {
    let paths = IdentityPaths {
        dir: dir.join(admin),
    };
    NodeIdentity::generate_all(&paths, admin, "127.0.0.1", "https://127.0.0.1:1")
        .expect("stranger identity");
    paths
}

impl Federation {
    /// Starts `admin` as a real `dccf-node serve` process and waits until it accepts connections.
    pub async fn spawn_process(&self, admin: &str) -> std::process::Child {
        let config = &self.admin(admin).config;
        let child = std::process::Command::new(node_binary())
            .args(["serve", "--config"])
            .arg(config.data_dir.join("node.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn dccf-node serve");
        wait_listening(config.listen).await;
        wait_listening(config.gateway_listen).await;
        child
    }

    /// Like [`Federation::spawn_process`], but appends the process's stderr to `log` and fails
    /// at once, quoting the log, if the process exits before it listens.
    pub async fn spawn_process_logged(&self, admin: &str, log: &Path) -> std::process::Child {
        let config = &self.admin(admin).config;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open process log");
        let mut child = std::process::Command::new(node_binary())
            .args(["serve", "--config"])
            .arg(config.data_dir.join("node.toml"))
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn dccf-node serve");
        for addr in [config.listen, config.gateway_listen] {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "dccf-node serve for {admin} exited with {status} before listening; \
                         its stderr:\n{}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nothing listens on {addr} after 30 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        child
    }

    /// Writes `admin`'s in-memory configuration (e.g. changed by a `tweak`) to its `node.toml`,
    /// so a process started with [`Federation::spawn_process`] runs with it.
    pub fn save_config(&self, admin: &str) {
        let config = &self.admin(admin).config;
        std::fs::write(
            config.data_dir.join("node.toml"),
            config.to_commented_toml(),
        )
        .expect("write node.toml");
    }
}

impl Federation {
    /// Runs `dccf-node doctor` on `admin`'s node.toml (written from its in-memory config
    /// first); returns whether it exited 0, and what it printed.
    pub async fn doctor(&self, admin: &str) -> (bool, String) {
        self.save_config(admin);
        let config = self.admin(admin).config.data_dir.join("node.toml");
        let (ok, out, err) = cli_async(&["doctor", "--config", config.to_str().unwrap()]).await;
        assert!(
            ok || err.lines().count() == 1 && err.contains("doctor: "),
            "a failing doctor says so in one line: {err}"
        );
        (ok, out)
    }
}

/// The findings in `doctor` output `out` with tag `level` (`ok`, `info`, `WARN`, `FAIL`) for
/// exactly the check `check`, each as its line plus its `fix:` line when it has one.
pub fn findings(out: &str, level: &str, check: &str) -> Vec<String> {
    let prefix = format!("{level:<4}  {check:<20} ");
    let lines: Vec<&str> = out.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.starts_with(&prefix) {
            continue;
        }
        let mut text = (*line).to_owned();
        if let Some(next) = lines.get(i + 1)
            && next.trim_start().starts_with("fix: ")
        {
            text.push('\n');
            text.push_str(next.trim());
        }
        found.push(text);
    }
    found
}

/// Queues `n` pre-arrival declarations from `from` to `to` under `agreement` on one
/// `Gateway.SendStream` (bulk mode, not awaiting delivery); panics unless every one is queued.
pub async fn queue_declarations(fed: &Federation, from: &str, to: &str, agreement: &str, n: usize) {
    let reqs: Vec<_> = (0..n)
        .map(|i| {
            let mut r = send_request(
                agreement,
                to,
                "dccf.v1.PreArrivalDeclaration",
                dccf_node::samples::pre_arrival_declaration(i as u64).encode_to_vec(),
            );
            r.await_delivery = false;
            r
        })
        .collect();
    let mut answers = fed
        .gateway(from)
        .send_stream(tokio_stream::iter(reqs))
        .await
        .expect("SendStream")
        .into_inner();
    let mut queued = 0;
    while let Some(a) = answers.message().await.expect("SendStream answer") {
        assert!(a.rejection.is_none(), "{a:?}");
        queued += 1;
    }
    assert_eq!(queued, n, "every declaration queued");
}

/// Runs the node binary with `args`; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(node_binary())
        .args(args)
        .output()
        .expect("run dccf-node");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`cli`] off the test's async threads (the command may talk to in-process nodes).
pub async fn cli_async(args: &[&str]) -> (bool, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || cli(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

/// Polls until `addr` accepts TCP connections (at most 30 s).
pub async fn wait_listening(addr: std::net::SocketAddr) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr} after 30 s");
}

/// Kills `child` with SIGKILL and reaps it.
pub fn kill_9(child: &mut std::process::Child) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 failed");
    let _ = child.wait();
}

/// Path of the `dccf-node` binary built by `cargo test` (next to the test executable's `deps/`).
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("dccf-node");
    assert!(
        bin.exists(),
        "{} not found: run the suite with `cargo test` at the workspace root (it builds the binary)",
        bin.display()
    );
    bin
}

/// The gRPC reason code a refusal carries in `dccf-reason`.
pub fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("dccf-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// A child process that is killed (SIGKILL) and reaped when dropped, so that a failing test
/// leaves no node running behind it.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill_9(&mut self) {
        kill_9(&mut self.0);
    }

    /// Stops the process with SIGTERM and waits (at most `within`) for a clean exit.
    pub async fn stop(&mut self, within: Duration) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM failed");
        let deadline = tokio::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.0.try_wait().expect("wait for the node process") {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node process did not stop within {within:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "the node process exited with {status}");
    }

    /// Panics if the process has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.0.try_wait().expect("query the node process") {
            panic!("{what}: the node process exited with {status}");
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident memory (`VmRSS`) of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Runs `dccf-node ledger export` for the stopped node configured by `config` into `out`, as an
/// operator would; panics with the command's output if it fails.
pub fn export_ledger_cli(config: &NodeConfig, out: &Path) {
    let output = std::process::Command::new(node_binary())
        .args(["ledger", "export", "--config"])
        .arg(config.data_dir.join("node.toml"))
        .arg("--out")
        .arg(out)
        .output()
        .expect("run dccf-node ledger export");
    assert!(
        output.status.success(),
        "ledger export of {} failed: {}{}",
        config.admin,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Trusts `admin`'s CA for node certificates of `admin` only (for stand-in servers).
#[derive(Debug)]
pub struct TrustAdmin(pub String, pub Vec<u8>);

impl dccf_node::server::tls::TrustSource for TrustAdmin {
    fn cas_for(&self, admin: &str, role: Role) -> Vec<Vec<u8>> {
        if admin == self.0 && role == Role::Node {
            vec![self.1.clone()]
        } else {
            vec![]
        }
    }
}

impl Federation {
    /// A TLS server configuration holding `admin`'s real node identity and admitting `client`'s
    /// node certificate: a stand-in for `admin`'s Exchange listener that `client` connects to
    /// as if it were the real node (a misbehaving peer is outside the product).
    pub fn stand_in_tls(&self, admin: &str, client: &str) -> std::sync::Arc<rustls::ServerConfig> {
        use dccf_node::server::tls;
        let me = self.admin(admin).config.identity_paths();
        let client_ca = tls::load_certs(&self.admin(client).config.identity_paths().ca_cert())
            .unwrap()[0]
            .to_vec();
        tls::server_config(
            tls::ReloadingCert::load(&me.node_cert(), &me.node_key()).unwrap(),
            std::sync::Arc::new(tls::PeerVerifier::new(std::sync::Arc::new(TrustAdmin(
                client.into(),
                client_ca,
            )))),
        )
        .unwrap()
    }
}

/// A stand-in Exchange server (e.g. a misbehaving peer) on its own runtime and thread, so that
/// stopping it closes every connection it accepted, as the exit of a real node process would
/// (aborting a tonic server task leaves its spawned connection tasks serving).
pub struct StandIn {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandIn {
    /// Serves `service` over TLS with `tls` on `addr` (bound here, retrying while a stopped
    /// node releases it).
    pub fn serve<S>(
        addr: std::net::SocketAddr,
        tls: std::sync::Arc<rustls::ServerConfig>,
        service: S,
    ) -> StandIn
    where
        S: dccf_node::proto::v1::exchange_server::Exchange,
    {
        let listener = bind_std_retry(addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("stand-in runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let incoming = dccf_node::server::tls::incoming(
                    listener,
                    tls,
                    Duration::from_secs(5),
                    8,
                    dccf_node::server::limits::PeerLimits::new("test", &Default::default()),
                );
                let server = tonic::transport::Server::builder()
                    .add_service(
                        dccf_node::proto::v1::exchange_server::ExchangeServer::new(service)
                            .max_decoding_message_size(64 * 1024 * 1024),
                    )
                    .serve_with_incoming(incoming);
                tokio::select! {
                    _ = server => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task, closing the sockets.
            rt.shutdown_timeout(Duration::from_secs(5));
        });
        StandIn {
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stops the server and closes its connections and listener.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("stand-in thread");
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `addr` (as a non-blocking std listener), retrying for up to 5 s while a stopped node
/// releases it.
pub fn bind_std_retry(addr: std::net::SocketAddr) -> std::net::TcpListener {
    for _ in 0..100 {
        if let Ok(l) = std::net::TcpListener::bind(addr) {
            l.set_nonblocking(true).expect("non-blocking listener");
            return l;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot bind {addr}");
}

/// A gRPC codec that sends raw bytes as the message (anything, not necessarily protobuf) and
/// decodes `dccf_node::proto::v1::DeliveryResult`s.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

pub struct RawEncoder;
pub struct ResultDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResultDecoder {
    type Item = dccf_node::proto::v1::DeliveryResult;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<dccf_node::proto::v1::DeliveryResult>, tonic::Status> {
        dccf_node::proto::v1::DeliveryResult::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = dccf_node::proto::v1::DeliveryResult;
    type Encoder = RawEncoder;
    type Decoder = ResultDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResultDecoder {
        ResultDecoder
    }
}

/// Sends `frames` as raw messages on `Exchange.DeliverStream` and returns what came back: the
/// results, then the final status (`Ok` for a clean end).
pub async fn raw_deliver_stream(
    channel: tonic::transport::Channel,
    frames: Vec<Vec<u8>>,
) -> (
    Vec<dccf_node::proto::v1::DeliveryResult>,
    Result<(), tonic::Status>,
) {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    grpc.ready().await.expect("channel ready");
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/dccf.v1.Exchange/DeliverStream");
    let response = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(frames)),
            path,
            RawCodec,
        )
        .await;
    let mut stream = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut results = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(r)) => results.push(r),
            Ok(None) => return (results, Ok(())),
            Err(status) => return (results, Err(status)),
        }
    }
}
