//! Delivery under faults, with real `dccf-node serve` processes where a crash or memory matters
//! (loopback only; every wait is bounded and names what it waited for):
//!
//! 1. A receiver that is down while messages are queued gets every one of them exactly once when
//!    it comes back (BR is a process started only after NL queued everything).
//! 2. A sender SIGKILLed while it accepts and delivers a `SendStream`: after its restart, every
//!    message it answered QUEUED for reaches the receiver exactly once (unanswered ones may or
//!    may not arrive, never twice), and the two ledgers reconcile (`ledger export` of both
//!    stopped nodes, then the library behind `ledger reconcile`).
//! 3. The same with the receiver SIGKILLed (twice) mid-delivery.
//! 4. A peer that accepts the connection and never answers — (a) plain TCP that never speaks,
//!    (b) real TLS with BR's identity whose `DeliverStream` never answers: a `Send` with
//!    `await_delivery` answers UNAVAILABLE within the node's timeouts, the outbox names the
//!    timeout, the node keeps serving its back office and a third party (DE), and once the
//!    stand-in is replaced by the real BR the queued message is delivered (no stuck worker).
//! 5. A hostile client with NL's real node certificate against BR's Exchange (a process): bytes
//!    that are not HTTP/2 after TLS (connection closed), a `DeliverStream` frame that is not a
//!    protobuf `Envelope` (the call fails), envelopes over `limits.max_message_bytes`
//!    (RESOURCE_EXHAUSTED on unary and on a stream, just over and far over the limit), tiny
//!    HTTP/2 DATA frames, and a flood of empty envelopes on one stream for `FLOOD_TIME` — each
//!    answered with a rejection and ledgered — while BR keeps delivering NL's normal messages
//!    and answering its Gateway; the process stays up throughout.
//! 6. Backpressure: (a) NL (a process) keeps a flat memory (RSS bound explained in the test)
//!    while its partner reads one envelope per 10 ms and 20,000 messages of ~5 KiB queue in its
//!    durable outbox; (b) a client that pushes envelopes to BR (a process) without reading the
//!    results is stopped by HTTP/2 flow control instead of BR buffering them (BR's RSS stays
//!    bounded), goes on once it reads, and BR still stops on SIGTERM while that stream stays open.
//!
//! Random moments (the SIGKILLs) come from a seeded PRNG: the seed is printed and
//! `DCCF_FAULT_SEED=<seed>` replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dccf_node::config::NodeConfig;
use dccf_node::ledger::export;
use dccf_node::proto::v1::exchange_server::Exchange;
use dccf_node::proto::v1::gateway_client::GatewayClient;
use dccf_node::proto::v1::{DeliveryResult, Envelope, Receipt, RejectReason, delivery_result};
use dccf_node::proto::v1::{
    DeliveryState, InboxMessage, ListOutboxRequest, ListOutboxResponse, SendRequest,
};
use dccf_tests::*;
use prost::Message;
use tokio::time::{Instant, sleep, timeout};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

const DECL: &str = "dccf.v1.PreArrivalDeclaration";
const AGREEMENT: &str = "nl-br-exchange";
/// Bound on waiting for a process to start or stop, or for one answer.
const WAIT: Duration = Duration::from_secs(30);
/// Bound on a whole delivery of a few thousand messages in a debug build on two busy cores.
const DELIVERY: Duration = Duration::from_secs(90);

// ---- helpers --------------------------------------------------------------------------------

/// splitmix64: small and seedable, to pick kill moments reproducibly.
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = match std::env::var("DCCF_FAULT_SEED") {
            Ok(s) => s.parse().expect("DCCF_FAULT_SEED must be a u64"),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        };
        eprintln!("{test}: seed {seed} (replay with DCCF_FAULT_SEED={seed})");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

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

/// Polls `what` every `every` until it returns `Some`, or panics after `within` quoting `what`
/// and the last state `describe` gives.
async fn eventually<T, F, Fut>(what: &str, within: Duration, every: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(state) => state,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last state: {last}"
        );
        sleep(every).await;
    }
}

async fn list_outbox(gw: &mut GatewayClient<Channel>) -> Result<ListOutboxResponse, String> {
    timeout(
        WAIT,
        gw.list_outbox(ListOutboxRequest {
            limit: 5,
            ..Default::default()
        }),
    )
    .await
    .map_err(|_| "ListOutbox did not answer".to_owned())?
    .map(|r| r.into_inner())
    .map_err(|s| format!("ListOutbox: {s:?}"))
}

/// Waits until the outbox behind `gw` holds nothing (queued or dead-lettered).
async fn wait_outbox_empty(gw: &mut GatewayClient<Channel>, within: Duration) {
    eventually(
        "the sender's outbox empties",
        within,
        Duration::from_millis(200),
        || {
            let mut gw = gw.clone();
            async move {
                let o = list_outbox(&mut gw).await?;
                if o.items.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{:?}; first: {:?}", o.partners, o.items[0]))
                }
            }
        },
    )
    .await
}

/// Message ids in an inbox listing; panics naming any id listed twice.
fn inbox_ids(inbox: &[InboxMessage]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for m in inbox {
        assert!(
            ids.insert(m.message_id.clone()),
            "message {} is in the receiver's inbox twice (delivered twice)",
            m.message_id
        );
    }
    ids
}

/// Waits until the inbox behind `gw` holds every id of `expected` (each once); returns the
/// whole inbox's ids.
async fn wait_inbox_has(
    gw: &mut GatewayClient<Channel>,
    expected: &BTreeSet<String>,
    within: Duration,
) -> BTreeSet<String> {
    eventually(
        "every accepted message reaches the receiver's inbox",
        within,
        Duration::from_millis(250),
        || {
            let mut gw = gw.clone();
            async move {
                let inbox = match timeout(WAIT, drain_inbox(&mut gw)).await {
                    Ok(inbox) => inbox,
                    Err(_) => return Err("Inbox did not answer".into()),
                };
                let ids = inbox_ids(&inbox);
                let missing = expected.difference(&ids).count();
                if missing == 0 {
                    Ok(ids)
                } else {
                    Err(format!(
                        "{missing} of {} missing, {} in the inbox",
                        expected.len(),
                        ids.len()
                    ))
                }
            }
        },
    )
    .await
}

/// Exports both stopped nodes' ledgers with the CLI and reconciles them: no discrepancy, and at
/// least `at_least` messages recorded alike.
fn reconcile_stopped(a: &NodeConfig, b: &NodeConfig, dir: &Path, at_least: usize) {
    let (out_a, out_b) = (dir.join(&a.admin), dir.join(&b.admin));
    export_ledger_cli(a, &out_a);
    export_ledger_cli(b, &out_b);
    let report = export::reconcile(&out_a, &out_b).expect("both exports verify and reconcile");
    assert!(
        report.discrepancies.is_empty(),
        "the ledgers disagree: {}",
        report
            .discrepancies
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        report.matched >= at_least,
        "{} messages reconciled, expected at least {at_least}",
        report.matched
    );
}

/// What a paced `SendStream` client learnt.
#[derive(Default)]
struct Pushed {
    /// Ids answered QUEUED.
    accepted: Mutex<BTreeSet<String>>,
    count: AtomicU64,
}

/// Sends `n` declarations on one `SendStream` through `gw`, in bursts of 50 every 10 ms (so the
/// node is accepting and delivering at once), recording every id answered QUEUED. Ends when the
/// stream ends or breaks (the node was killed).
fn push_paced(
    mut gw: GatewayClient<Channel>,
    n: u64,
    pushed: Arc<Pushed>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (tx, rx) = tokio::sync::mpsc::channel::<SendRequest>(64);
        let producer = tokio::spawn(async move {
            for seq in 0..n {
                if tx.send(declaration(seq)).await.is_err() {
                    return;
                }
                if seq % 50 == 49 {
                    sleep(Duration::from_millis(10)).await;
                }
            }
        });
        let Ok(Ok(responses)) = timeout(
            WAIT,
            gw.send_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        else {
            producer.abort();
            return;
        };
        let mut responses = responses.into_inner();
        while let Some(Ok(r)) = responses.next().await {
            if r.rejection.is_none() && r.state == DeliveryState::Queued as i32 {
                pushed.accepted.lock().unwrap().insert(r.message_id);
                pushed.count.fetch_add(1, Ordering::SeqCst);
            } else {
                panic!("a send was refused: {r:?}");
            }
        }
        producer.abort();
    })
}

/// NL with quick retries through the crashes.
fn crash_tweak(config: &mut NodeConfig) {
    config.limits.connect_timeout_secs = 2;
    config.limits.request_timeout_secs = 5;
    config.delivery.max_attempts = 1_000_000;
}

// ---- 1. receiver down, then back ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_process_down_while_messages_queue_gets_each_exactly_once_when_back() {
    const N: u64 = 500;
    let fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        crash_tweak,
        &["BR"],
    )
    .await;
    fed.save_config("BR");
    let mut nl = fed.gateway("NL");
    let responses: Vec<_> = timeout(DELIVERY, async {
        let mut s = nl
            .send_stream(tokio_stream::iter((0..N).map(declaration)))
            .await
            .expect("SendStream starts")
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.next().await {
            out.push(r.expect("response"));
        }
        out
    })
    .await
    .expect("SendStream answers every request");
    assert_eq!(responses.len(), N as usize);
    let accepted: BTreeSet<String> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.state, DeliveryState::Queued as i32, "{r:?}");
            r.message_id.clone()
        })
        .collect();
    assert_eq!(accepted.len(), N as usize, "distinct ids");

    // NL tries, fails and says why, while BR is down.
    eventually(
        "a failed attempt shows in the outbox",
        WAIT,
        Duration::from_millis(100),
        || {
            let mut nl = nl.clone();
            async move {
                let o = list_outbox(&mut nl).await?;
                match o.items.first() {
                    Some(i) if i.attempts >= 2 && !i.last_error.is_empty() => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;

    let log = fed.root.path().join("BR-serve.log");
    let mut br = KillOnDrop(fed.spawn_process_logged("BR", &log).await);
    let mut br_gw = fed.gateway("BR");
    let ids = wait_inbox_has(&mut br_gw, &accepted, DELIVERY).await;
    assert_eq!(ids, accepted, "nothing else arrived");
    wait_outbox_empty(&mut nl, WAIT).await;
    // Still exactly once after NL recorded every receipt.
    assert_eq!(inbox_ids(&drain_inbox(&mut br_gw).await), accepted);
    br.stop(WAIT).await;
}

// ---- 2. sender SIGKILLed mid-stream ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_sigkilled_mid_stream_delivers_every_accepted_message_exactly_once() {
    const M: u64 = 3000;
    let mut rng = Rng::from_env("sender SIGKILL");
    let mut fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        crash_tweak,
        &["NL"],
    )
    .await;
    fed.save_config("NL");
    let log = fed.root.path().join("NL-serve.log");
    let mut nl = KillOnDrop(fed.spawn_process_logged("NL", &log).await);
    let br_base = fed.node("BR").state.store.durable_head().size;

    // Kill once NL accepted `kill_after` messages and BR has recorded some: NL is accepting
    // the stream and delivering at the same time.
    let kill_after = rng.range(M / 5, 3 * M / 5);
    let pushed = Arc::new(Pushed::default());
    let client = push_paced(fed.gateway("NL"), M, pushed.clone());
    eventually(
        "NL accepts messages and BR receives some",
        DELIVERY,
        Duration::from_millis(2),
        || {
            let (pushed, br) = (
                pushed.clone(),
                fed.node("BR").state.store.durable_head().size,
            );
            async move {
                let n = pushed.count.load(Ordering::SeqCst);
                if n >= kill_after && br > br_base {
                    Ok(())
                } else {
                    Err(format!(
                        "{n} accepted, BR's ledger grew by {}",
                        br - br_base
                    ))
                }
            }
        },
    )
    .await;
    nl.kill_9();
    let received_at_kill = fed.node("BR").state.store.durable_head().size - br_base;
    timeout(WAIT, client)
        .await
        .expect("the client sees the stream break")
        .expect("client task");
    let accepted = pushed.accepted.lock().unwrap().clone();
    eprintln!(
        "sender SIGKILL: killed after {} accepted (target {kill_after}), BR's ledger +{received_at_kill}",
        accepted.len()
    );
    assert!(accepted.len() < M as usize, "killed mid-stream");

    // Restarted, NL delivers what it accepted (and whatever else it had made durable).
    let mut nl = KillOnDrop(fed.spawn_process_logged("NL", &log).await);
    let mut br_gw = fed.gateway("BR");
    wait_inbox_has(&mut br_gw, &accepted, DELIVERY).await;
    let mut nl_gw = fed.gateway("NL");
    wait_outbox_empty(&mut nl_gw, DELIVERY).await;
    let ids = inbox_ids(&drain_inbox(&mut br_gw).await);
    assert!(ids.is_superset(&accepted));
    assert!(ids.len() <= M as usize);

    nl.stop(WAIT).await;
    fed.stop("BR").await;
    let dir = tempfile::tempdir().unwrap();
    reconcile_stopped(
        &fed.admin("NL").config,
        &fed.admin("BR").config,
        dir.path(),
        ids.len(),
    );
}

// ---- 3. receiver SIGKILLed mid-stream -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_sigkilled_mid_stream_gets_every_accepted_message_exactly_once() {
    const M: u64 = 3000;
    /// SIGKILLs of BR while NL delivers.
    const KILLS: usize = 2;
    let started = Instant::now();
    let mut rng = Rng::from_env("receiver SIGKILL");
    let mut fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        crash_tweak,
        &["BR"],
    )
    .await;
    fed.save_config("BR");
    let log = fed.root.path().join("BR-serve.log");
    let mut br = KillOnDrop(fed.spawn_process_logged("BR", &log).await);

    let pushed = Arc::new(Pushed::default());
    let client = push_paced(fed.gateway("NL"), M, pushed.clone());
    let courier = &fed.node("NL").state.courier;
    let delivered = || {
        // Accepted by NL minus still queued: delivered (receipt recorded).
        pushed
            .count
            .load(Ordering::SeqCst)
            .saturating_sub(courier.queued_count("BR"))
    };
    let log_path = log.as_path();
    for kill in 0..KILLS {
        let at = rng.range(100, M / 3) + delivered();
        eventually(
            "NL delivers to BR",
            DELIVERY,
            Duration::from_millis(2),
            || {
                let d = delivered();
                async move {
                    if d >= at {
                        Ok(())
                    } else {
                        Err(format!("{d} delivered; BR's log:\n{}", tail(log_path)))
                    }
                }
            },
        )
        .await;
        br.kill_9();
        eprintln!(
            "receiver SIGKILL {kill}: after {} delivered (target {at}), {} accepted",
            delivered(),
            pushed.count.load(Ordering::SeqCst)
        );
        // Down for a moment: NL's attempts fail and back off.
        sleep(Duration::from_millis(rng.range(0, 500))).await;
        br = KillOnDrop(fed.spawn_process_logged("BR", &log).await);
    }
    timeout(DELIVERY, client)
        .await
        .expect("the client's stream completes")
        .expect("client task");
    let accepted = pushed.accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), M as usize, "NL (not killed) accepted all");

    let mut br_gw = fed.gateway("BR");
    let ids = wait_inbox_has(&mut br_gw, &accepted, DELIVERY).await;
    assert_eq!(ids, accepted, "nothing else arrived");
    let mut nl_gw = fed.gateway("NL");
    wait_outbox_empty(&mut nl_gw, DELIVERY).await;
    assert_eq!(inbox_ids(&drain_inbox(&mut br_gw).await), accepted);
    br.stop(WAIT).await;
    fed.stop("NL").await;
    let dir = tempfile::tempdir().unwrap();
    reconcile_stopped(
        &fed.admin("NL").config,
        &fed.admin("BR").config,
        dir.path(),
        M as usize,
    );
    eprintln!("receiver SIGKILL: done in {:?}", started.elapsed());
}

// ---- 4. a peer that accepts the connection and never answers --------------------------------

const ALERT: &str = "dccf.v1.RiskAlert";

/// NL, BR and DE; NL may send risk alerts to BR and to DE.
fn nl_to_br_and_de() -> String {
    let de_to_br = "from = \"DE\"\nto = \"BR\"";
    assert!(
        THREE_PARTY_AGREEMENT.contains(de_to_br),
        "agreement changed shape"
    );
    THREE_PARTY_AGREEMENT.replace(de_to_br, "from = \"NL\"\nto = \"DE\"")
}

fn alert_to(to: &str, seq: u64) -> SendRequest {
    send_request(
        "tri-exchange",
        to,
        ALERT,
        dccf_node::samples::risk_alert(seq).encode_to_vec(),
    )
}

/// A stand-in Exchange (BR's TLS identity) that takes every call and never answers: `Deliver`
/// never returns, and `DeliverStream` reads the envelopes and never sends a result.
/// A partner whose TLS and HTTP/2 work but whose application never answers; it records the
/// client address of every `DeliverStream` call (one per connection the sender opens).
#[derive(Clone, Default)]
struct Silent {
    streams_from: Arc<Mutex<Vec<Option<std::net::SocketAddr>>>>,
}

#[tonic::async_trait]
impl Exchange for Silent {
    type SubscribeAeoStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<dccf_node::proto::v1::AeoSignedBatch, Status>>
                + Send,
        >,
    >;

    async fn subscribe_aeo(
        &self,
        _: Request<dccf_node::proto::v1::AeoSubscribeRequest>,
    ) -> Result<Response<Self::SubscribeAeoStream>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn lookup_aeo(
        &self,
        _: Request<dccf_node::proto::v1::AeoLookupRequest>,
    ) -> Result<Response<dccf_node::proto::v1::AeoSignedBatch>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn ping(
        &self,
        _: Request<dccf_node::proto::v1::PingRequest>,
    ) -> Result<Response<dccf_node::proto::v1::PingResponse>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn deliver(&self, _: Request<Envelope>) -> Result<Response<Receipt>, Status> {
        std::future::pending().await
    }

    type DeliverStreamStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<DeliveryResult, Status>> + Send>>;

    async fn deliver_stream(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        self.streams_from
            .lock()
            .unwrap()
            .push(request.remote_addr());
        let mut incoming = request.into_inner();
        let results =
            async_stream_never(async move { while let Some(Ok(_)) = incoming.next().await {} });
        Ok(Response::new(results))
    }

    async fn get_checkpoint(
        &self,
        _: Request<dccf_node::proto::v1::CheckpointRequest>,
    ) -> Result<Response<dccf_node::proto::v1::CheckpointResponse>, Status> {
        std::future::pending().await
    }

    async fn submit_cosignature(
        &self,
        _: Request<dccf_node::proto::v1::CosignatureRequest>,
    ) -> Result<Response<dccf_node::proto::v1::CosignatureResponse>, Status> {
        std::future::pending().await
    }
}

/// A result stream that yields nothing, ever, while `work` runs (stopped with the stream).
fn async_stream_never(
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<DeliveryResult, Status>> + Send>> {
    struct Never(tokio::task::JoinHandle<()>);
    impl tokio_stream::Stream for Never {
        type Item = Result<DeliveryResult, Status>;
        fn poll_next(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Pending
        }
    }
    impl Drop for Never {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    Box::pin(Never(tokio::spawn(work)))
}

/// Binds `addr` (just released by a stopped node), retrying for a while.
async fn bind(addr: std::net::SocketAddr) -> tokio::net::TcpListener {
    eventually(
        &format!("bind {addr}"),
        WAIT,
        Duration::from_millis(50),
        || async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await
}

/// The common part of the never-answering peer tests: with `stand_in` serving at BR's exchange
/// address, NL's `Send` answers UNAVAILABLE in time, the outbox names the timeout, NL keeps
/// serving (its Gateway, DE), and after `stand_in` is stopped and the real BR is back the
/// message is delivered.
async fn never_answering_peer(
    fed: &mut Federation,
    stop_stand_in: impl FnOnce(),
    timeout_text: &str,
) {
    let mut nl = fed.gateway("NL");
    let status = timeout(Duration::from_secs(60), nl.send(alert_to("BR", 1)))
        .await
        .expect("a Send with await_delivery to a silent peer must answer, not hang")
        .expect_err("not delivered");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("BR"), "{}", status.message());
    let stuck = eventually(
        "the failed attempt is recorded in the outbox",
        WAIT,
        Duration::from_millis(100),
        || {
            let mut nl = nl.clone();
            async move {
                let o = list_outbox(&mut nl).await?;
                match o.items.as_slice() {
                    [item] if item.attempts >= 1 && !item.last_error.is_empty() => Ok(item.clone()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    eprintln!("outbox after a silent peer: {stuck:?}");
    assert!(
        stuck.last_error.contains(timeout_text),
        "the outbox should name the timeout ({timeout_text:?}): {:?}",
        stuck.last_error
    );

    // NL still serves: its back office, and a third party.
    let to_de = timeout(WAIT, nl.send(alert_to("DE", 2)))
        .await
        .expect("Send to DE answers")
        .expect("delivered to DE while BR is silent")
        .into_inner();
    assert_eq!(to_de.state, DeliveryState::Delivered as i32);
    let de_inbox = drain_inbox(&mut fed.gateway("DE")).await;
    assert_eq!(de_inbox.len(), 1);
    assert_eq!(de_inbox[0].message_id, to_de.message_id);

    // The real BR comes back: the waiting message is delivered (the worker is not stuck).
    stop_stand_in();
    fed.start_node("BR").await;
    let expected: BTreeSet<String> = [stuck.message_id.clone()].into();
    let ids = wait_inbox_has(&mut fed.gateway("BR"), &expected, WAIT).await;
    assert_eq!(ids, expected);
    wait_outbox_empty(&mut nl, WAIT).await;
}

fn short_timeouts(config: &mut NodeConfig) {
    config.limits.connect_timeout_secs = 1;
    config.limits.request_timeout_secs = 2;
    config.limits.handshake_timeout_secs = 1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_accepts_tcp_and_never_speaks_times_out_and_delivery_resumes_when_it_is_replaced()
 {
    let mut fed = Federation::start(
        &["NL", "BR", "DE"],
        &nl_to_br_and_de(),
        "tri-exchange",
        short_timeouts,
    )
    .await;
    let addr = fed.node("BR").exchange_addr;
    fed.stop("BR").await;
    let listener = bind(addr).await;
    // Accepts TCP connections, then never reads or writes (not even a TLS handshake).
    let stand_in = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    // Dropping the task drops the listener and the connections it holds.
    never_answering_peer(&mut fed, move || stand_in.abort(), "timed out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_peer_whose_deliver_stream_never_answers_times_out_and_delivery_resumes_when_it_is_replaced()
 {
    let mut fed = Federation::start(
        &["NL", "BR", "DE"],
        &nl_to_br_and_de(),
        "tri-exchange",
        short_timeouts,
    )
    .await;
    let addr = fed.node("BR").exchange_addr;
    fed.stop("BR").await;
    let silent = Silent::default();
    let streams_from = silent.streams_from.clone();
    let mut stand_in = StandIn::serve(addr, fed.stand_in_tls("BR", "NL"), silent);
    never_answering_peer(&mut fed, move || stand_in.stop(), "no answer within").await;
    // Each retry after a silent attempt came on a new connection, not the one that hung.
    let from = streams_from.lock().unwrap().clone();
    let ports: BTreeSet<_> = from.iter().flatten().map(|a| a.port()).collect();
    assert!(from.len() >= 2, "attempts: {from:?}");
    assert_eq!(
        ports.len(),
        from.len(),
        "one connection per attempt: {from:?}"
    );
}

// ---- 5. garbage, oversized envelopes, a flood of tiny ones ----------------------------------

/// Empty envelopes, always ready (so the client packs them into full DATA frames), until `left`
/// are taken or `deadline` passes; counts what the transport took in `taken`.
struct Flood {
    left: u64,
    deadline: Instant,
    taken: Arc<AtomicU64>,
}

impl tokio_stream::Stream for Flood {
    type Item = Envelope;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Envelope>> {
        let taken = self.taken.load(Ordering::Relaxed);
        if self.left == 0 || (taken.is_multiple_of(1024) && Instant::now() >= self.deadline) {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        self.taken.store(taken + 1, Ordering::Relaxed);
        std::task::Poll::Ready(Some(Envelope::default()))
    }
}

/// The last lines of a log file.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Empty envelopes offered in the flood, at most.
const FLOOD: u64 = 1_000_000;
/// How long the flood goes on at most (see the test for what fits in a debug build).
const FLOOD_TIME: Duration = Duration::from_secs(10);

fn rejection_reason(r: &DeliveryResult) -> Option<RejectReason> {
    match &r.outcome {
        Some(delivery_result::Outcome::Rejection(rej)) => RejectReason::try_from(rej.reason).ok(),
        _ => None,
    }
}

/// BR's Exchange still works: NL delivers a message through its Gateway and BR's Gateway
/// answers; returns the message id.
async fn br_still_serves(fed: &Federation, seq: u64) -> String {
    let sent = timeout(
        WAIT,
        fed.gateway("NL").send(SendRequest {
            await_delivery: true,
            ..declaration(seq)
        }),
    )
    .await
    .expect("NL's Send answers")
    .expect("delivered to BR")
    .into_inner();
    assert_eq!(sent.state, DeliveryState::Delivered as i32, "{sent:?}");
    let inbox = timeout(WAIT, drain_inbox(&mut fed.gateway("BR")))
        .await
        .expect("BR's Gateway answers");
    assert!(inbox.iter().any(|m| m.message_id == sent.message_id));
    sent.message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_envelopes_and_a_flood_of_empty_ones_leave_the_receiver_serving() {
    const LIMIT: usize = 64 * 1024;
    let started = Instant::now();
    let fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        |c| {
            c.limits.max_message_bytes = LIMIT;
            // This test judges every envelope of the flood, and its honest traffic comes from
            // the flooding partner itself: no refusal budget (tests/malformed_input.rs has one).
            c.limits.max_refusals_per_peer_per_minute = 1 << 40;
        },
        &["BR"],
    )
    .await;
    fed.save_config("BR");
    let log = fed.root.path().join("BR-serve.log");
    let mut br = KillOnDrop(fed.spawn_process_logged("BR", &log).await);
    let nl_paths = fed.admin("NL").config.identity_paths();

    // (a) After a TLS handshake with NL's real certificate, bytes that are not HTTP/2: BR
    // closes the connection.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, tls) = fed.exchange_tls(&nl_paths.node_cert(), &nl_paths.node_key(), "BR");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut conn = tokio_rustls::TlsConnector::from(tls)
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .expect("TLS handshake with NL's node certificate");
        let garbage: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: br\r\n\r\n").await;
        let _ = conn.write_all(&garbage).await;
        let mut buf = vec![0u8; 16 * 1024];
        timeout(WAIT, async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("BR closes a connection that does not speak HTTP/2");
        br.assert_running("after non-HTTP/2 bytes");
    }

    // (a) A DeliverStream frame that is not a protobuf Envelope: the call fails, nothing is
    // accepted.
    let not_protobuf = vec![0xFFu8; 100];
    let (results, end) = timeout(
        WAIT,
        raw_deliver_stream(
            fed.exchange_channel_as("NL", "BR"),
            vec![not_protobuf.clone()],
        ),
    )
    .await
    .expect("BR answers a garbage frame");
    let status = end.expect_err("a frame that is not an Envelope fails the stream");
    assert!(results.is_empty(), "{results:?}");
    eprintln!("garbage DeliverStream frame: {status:?}");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Internal | tonic::Code::InvalidArgument
        ),
        "{status:?}"
    );
    br.assert_running("after a garbage frame");

    // (b) Envelopes over the limit, just over (checked and recorded by the receive pipeline)
    // and far over (refused while decoding): RESOURCE_EXHAUSTED, unary and on a stream.
    let mut alert = dccf_node::samples::risk_alert(1);
    alert.description = "x".repeat(LIMIT + 1);
    let just_over = fed.envelope("NL", "BR", ALERT, &alert.encode_to_vec(), |_| {});
    alert.description = "y".repeat(LIMIT * 4);
    let far_over = fed.envelope("NL", "BR", ALERT, &alert.encode_to_vec(), |_| {});
    for (what, env) in [("just over", &just_over), ("far over", &far_over)] {
        let status = fed
            .exchange_as("NL", "BR")
            .deliver(env.clone())
            .await
            .expect_err("over the limit");
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{what}, unary: {status:?}"
        );
    }
    let (results, end) = raw_deliver_stream(
        fed.exchange_channel_as("NL", "BR"),
        vec![just_over.encode_to_vec()],
    )
    .await;
    end.expect("the stream itself is fine");
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(
        rejection_reason(&results[0]),
        Some(RejectReason::TooLarge),
        "{results:?}"
    );
    let (results, end) = raw_deliver_stream(
        fed.exchange_channel_as("NL", "BR"),
        vec![far_over.encode_to_vec()],
    )
    .await;
    let status = end.expect_err("a frame far over the limit fails the stream");
    assert!(results.is_empty(), "{results:?}");
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "far over, stream: {status:?}"
    );
    br.assert_running("after oversized envelopes");
    br_still_serves(&fed, 1).await;
    eprintln!(
        "flood: garbage and oversized done at {:?}",
        started.elapsed()
    );

    // (c) Tiny DATA frames: empty envelopes handed to the transport a few at a time, so that
    // each HTTP/2 DATA frame is tiny. BR's HTTP/2 layer (h2) limits how many small frames it
    // buffers for a stream and may close the connection (GOAWAY ENHANCE_YOUR_CALM): either
    // outcome is fine as long as BR stays up and serves others.
    let (results, end) = timeout(
        WAIT,
        raw_deliver_stream(
            fed.exchange_channel_as("NL", "BR"),
            vec![Vec::new(); 20_000],
        ),
    )
    .await
    .expect("a stream of tiny frames ends, one way or another");
    eprintln!(
        "flood: 20000 tiny frames: {} answered, then {:?}",
        results.len(),
        end.as_ref().err().map(|s| s.message().to_owned())
    );
    br.assert_running("after tiny DATA frames");
    br_still_serves(&fed, 2).await;

    // (c) The flood proper: empty envelopes offered as fast as the transport takes them (so
    // they travel packed in full-size DATA frames), for at most FLOOD_TIME, while BR keeps
    // serving others.
    let taken = Arc::new(AtomicU64::new(0));
    let frames = Flood {
        left: FLOOD,
        deadline: Instant::now() + FLOOD_TIME,
        taken: taken.clone(),
    };
    let mut flooder = fed.exchange_as("NL", "BR");
    let flood_log = log.clone();
    let flood = tokio::spawn(async move {
        let mut results = flooder
            .deliver_stream(frames)
            .await
            .expect("the flood stream starts")
            .into_inner();
        let mut rejected = BTreeMap::<String, u64>::new();
        while let Some(r) = results.message().await.unwrap_or_else(|s| {
            panic!(
                "the flood stream breaks after {} results: {s:?}; BR's log:\n{}",
                rejected.values().sum::<u64>(),
                tail(&flood_log)
            )
        }) {
            let reason = rejection_reason(&r)
                .map_or("not a rejection".into(), |r| r.as_str_name().to_owned());
            *rejected.entry(reason).or_default() += 1;
        }
        rejected
    });
    let mut served = 0;
    while !flood.is_finished() {
        served += 1;
        br_still_serves(&fed, 100 + served).await;
        br.assert_running("during the flood");
        sleep(Duration::from_millis(500)).await;
    }
    let rejected = timeout(WAIT, flood)
        .await
        .expect("the flood stream ends")
        .expect("flood task");
    let taken = taken.load(Ordering::SeqCst);
    eprintln!(
        "flood: {taken} empty envelopes in {FLOOD_TIME:?} (of {FLOOD}), answers {rejected:?}, BR served {served} \
         normal messages meanwhile; at {:?}",
        started.elapsed()
    );
    assert_eq!(
        rejected.values().sum::<u64>(),
        taken,
        "one answer per envelope: {rejected:?}"
    );
    assert_eq!(
        rejected.len(),
        1,
        "every empty envelope is rejected alike: {rejected:?}"
    );
    assert!(served >= 1);
    br.assert_running("after the flood");
    br_still_serves(&fed, 99).await;
    br.stop(WAIT).await;

    // BR's log names a burst of refusals per minute and counts the rest in summary lines:
    // every refusal is accounted for, and the flood did not become a flood of log lines.
    let text = std::fs::read_to_string(&log).unwrap();
    let reason = rejected.keys().next().expect("one reason");
    let full = text
        .lines()
        .filter(|l| l.contains("envelope rejected") && l.contains(reason.as_str()))
        .count() as u64;
    let suppressed: u64 = text
        .lines()
        .filter(|l| l.contains("not logged one by one") && l.contains(reason.as_str()))
        .map(|l| {
            let n = l.split("suppressed=").nth(1).expect("a count");
            n.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|d| d.parse::<u64>().ok())
                .expect("a number")
        })
        .sum();
    let windows = started.elapsed().as_secs() / 60 + 2;
    eprintln!(
        "flood: BR's log is {} KiB: {full} refusals logged in full, {suppressed} counted in summaries",
        text.len() / 1024
    );
    assert!(
        full + suppressed >= taken,
        "{full} logged + {suppressed} summarised < {taken} refused"
    );
    let burst = u64::from(dccf_node::delivery::rejection_log::BURST);
    assert!(
        full <= burst * windows,
        "{full} full lines for {reason} in {windows} windows"
    );
    // Every rejection from the authenticated partner is in BR's ledger.
    let store = dccf_node::ledger::Store::open(&fed.admin("BR").config.ledger_dir())
        .expect("BR's ledger opens");
    let size = store.durable_head().size;
    assert!(size > taken, "ledger size {size} for {taken} rejections");
    fn bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
    }
    eprintln!(
        "flood: BR's ledger holds {size} entries in {} MiB",
        bytes(&fed.admin("BR").config.ledger_dir()) / (1024 * 1024)
    );
}

// ---- 6. backpressure: memory stays flat while the receiver is slow --------------------------

/// A stand-in Exchange (BR's identity) that reads one envelope every 10 ms and never answers.
struct SlowReader {
    read: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Exchange for SlowReader {
    type SubscribeAeoStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<dccf_node::proto::v1::AeoSignedBatch, Status>>
                + Send,
        >,
    >;

    async fn subscribe_aeo(
        &self,
        _: Request<dccf_node::proto::v1::AeoSubscribeRequest>,
    ) -> Result<Response<Self::SubscribeAeoStream>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn lookup_aeo(
        &self,
        _: Request<dccf_node::proto::v1::AeoLookupRequest>,
    ) -> Result<Response<dccf_node::proto::v1::AeoSignedBatch>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn ping(
        &self,
        _: Request<dccf_node::proto::v1::PingRequest>,
    ) -> Result<Response<dccf_node::proto::v1::PingResponse>, Status> {
        Err(Status::unimplemented("not part of this fake"))
    }

    async fn deliver(&self, _: Request<Envelope>) -> Result<Response<Receipt>, Status> {
        std::future::pending().await
    }

    type DeliverStreamStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<DeliveryResult, Status>> + Send>>;

    async fn deliver_stream(
        &self,
        request: Request<Streaming<Envelope>>,
    ) -> Result<Response<Self::DeliverStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let read = self.read.clone();
        Ok(Response::new(async_stream_never(async move {
            while let Some(Ok(_)) = incoming.next().await {
                read.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_millis(10)).await;
            }
        })))
    }

    async fn get_checkpoint(
        &self,
        _: Request<dccf_node::proto::v1::CheckpointRequest>,
    ) -> Result<Response<dccf_node::proto::v1::CheckpointResponse>, Status> {
        Err(Status::unavailable("busy"))
    }

    async fn submit_cosignature(
        &self,
        _: Request<dccf_node::proto::v1::CosignatureRequest>,
    ) -> Result<Response<dccf_node::proto::v1::CosignatureResponse>, Status> {
        Err(Status::unavailable("busy"))
    }
}

/// Messages queued while the receiver is slow.
const MEM_MESSAGES: u64 = 20_000;
/// Of which sent first, to warm up (allocator pools, sled's page cache) before the baseline.
const MEM_WARM_UP: u64 = 2_000;
/// Size of each message's free-text field, so that one in-memory copy of the queue would be
/// about 20,000 × 4 KiB = 80 MiB.
const MEM_PAYLOAD: usize = 4 * 1024;

fn big_alert(seq: u64) -> SendRequest {
    let mut alert = dccf_node::samples::risk_alert(seq);
    alert.description = format!("{seq:08} {}", "risk ".repeat(MEM_PAYLOAD / 5));
    SendRequest {
        await_delivery: false,
        ..send_request(AGREEMENT, "BR", ALERT, alert.encode_to_vec())
    }
}

/// Sends `seqs` on one `SendStream`; panics unless every one is answered QUEUED.
async fn push_all(gw: &mut GatewayClient<Channel>, seqs: std::ops::Range<u64>) {
    let n = seqs.end - seqs.start;
    let mut responses = timeout(
        WAIT,
        gw.send_stream(tokio_stream::iter(seqs.map(big_alert))),
    )
    .await
    .expect("SendStream starts")
    .expect("SendStream")
    .into_inner();
    let mut queued = 0;
    while let Some(r) = timeout(WAIT, responses.next()).await.expect("a response") {
        let r = r.expect("response");
        assert_eq!(r.state, DeliveryState::Queued as i32, "{r:?}");
        queued += 1;
    }
    assert_eq!(queued, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_keeps_flat_memory_while_its_partner_reads_slowly() {
    let started = Instant::now();
    let fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        crash_tweak,
        &["NL", "BR"],
    )
    .await;
    fed.save_config("NL");
    let read = Arc::new(AtomicU64::new(0));
    let _stand_in = StandIn::serve(
        fed.admin("BR").config.listen,
        fed.stand_in_tls("BR", "NL"),
        SlowReader { read: read.clone() },
    );
    let log = fed.root.path().join("NL-serve.log");
    let mut nl = KillOnDrop(fed.spawn_process_logged("NL", &log).await);
    let pid = nl.pid();
    let mut gw = fed.gateway("NL");

    push_all(&mut gw, 0..MEM_WARM_UP).await;
    sleep(Duration::from_secs(1)).await;
    let baseline = vm_rss_kib(pid);
    let mut samples = Vec::new();
    let step = (MEM_MESSAGES - MEM_WARM_UP) / 6;
    let mut next = MEM_WARM_UP;
    while next < MEM_MESSAGES {
        let end = (next + step).min(MEM_MESSAGES);
        push_all(&mut gw, next..end).await;
        next = end;
        samples.push((next, vm_rss_kib(pid)));
    }
    for _ in 0..6 {
        sleep(Duration::from_millis(500)).await;
        samples.push((next, vm_rss_kib(pid)));
    }
    nl.assert_running("after the push");
    let o = list_outbox(&mut gw).await.expect("ListOutbox answers");
    let read = read.load(Ordering::SeqCst);
    eprintln!(
        "memory: NL RSS baseline {} MiB after {MEM_WARM_UP} messages, then {:?} (messages, MiB); \
         the slow partner read {read} envelopes; outbox {:?}; at {:?}",
        baseline / 1024,
        samples
            .iter()
            .map(|(n, kib)| (*n, kib / 1024))
            .collect::<Vec<_>>(),
        o.partners,
        started.elapsed()
    );
    // The bound: NL's RSS may grow by at most 64 MiB over the baseline taken after the warm-up.
    // Legitimately it grows by sled's page cache (capped at 32 MiB, CACHE_BYTES) and allocator
    // noise; one in-memory copy of the queue would be 18,000 × ~5 KiB ≈ 90 MiB on top, so an
    // unbounded queue anywhere (outbox reader, courier window, stream buffers) trips it, while
    // the observed growth (about 25-30 MiB in a debug build) leaves room for noise.
    let peak = samples
        .iter()
        .map(|(_, kib)| *kib)
        .max()
        .unwrap_or(baseline);
    assert!(
        peak < baseline + 64 * 1024,
        "NL's memory grew from {} to {} MiB while {MEM_MESSAGES} messages waited for a slow \
         partner: {samples:?}",
        baseline / 1024,
        peak / 1024
    );
    assert!(read > 0, "the courier streams to the slow partner");
    assert_eq!(
        o.partners
            .iter()
            .map(|p| (p.partner.as_str(), p.queued, p.dead_letter))
            .collect::<Vec<_>>(),
        [("BR", MEM_MESSAGES, 0)],
        "every message waits in the durable outbox"
    );
    nl.stop(WAIT).await;
}

/// Garbage envelopes of about 8 KiB, always ready, until `left` are taken; counts them.
struct Pusher {
    left: u64,
    taken: Arc<AtomicU64>,
}

impl tokio_stream::Stream for Pusher {
    type Item = Envelope;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Envelope>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        self.taken.fetch_add(1, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Envelope {
            header: vec![0xAB; 8 * 1024],
            ..Default::default()
        }))
    }
}

/// Waits until `counter` stops moving for `quiet`; returns its value then.
async fn wait_stalled(what: &str, counter: &AtomicU64, quiet: Duration, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    let mut last = counter.load(Ordering::SeqCst);
    let mut since = Instant::now();
    loop {
        sleep(Duration::from_millis(100)).await;
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still moving after {within:?} (at {now})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_results_is_stopped_by_flow_control_not_buffered_by_the_receiver()
 {
    /// ~8 GiB if nothing stopped the client.
    const OFFERED: u64 = 1_000_000;
    let started = Instant::now();
    let fed = Federation::start_except(
        &["NL", "BR"],
        dccf_node::demo::EXAMPLE_AGREEMENT,
        AGREEMENT,
        // Every pushed envelope is judged (flow control is under test, not the refusal
        // budget), and the honest traffic comes from the pushing partner itself.
        |c| c.limits.max_refusals_per_peer_per_minute = 1 << 40,
        &["BR"],
    )
    .await;
    fed.save_config("BR");
    let log = fed.root.path().join("BR-serve.log");
    let mut br = KillOnDrop(fed.spawn_process_logged("BR", &log).await);
    let pid = br.pid();
    // Warm up BR's receive path, then take the baseline.
    br_still_serves(&fed, 1).await;
    let baseline = vm_rss_kib(pid);

    let taken = Arc::new(AtomicU64::new(0));
    let mut client = fed.exchange_as("NL", "BR");
    let mut results = timeout(
        WAIT,
        client.deliver_stream(Pusher {
            left: OFFERED,
            taken: taken.clone(),
        }),
    )
    .await
    .expect("DeliverStream answers")
    .expect("DeliverStream starts")
    .into_inner();
    // Nobody reads `results`: BR must stop reading envelopes, and HTTP/2 stop the client.
    let stalled = wait_stalled(
        "the unread stream",
        &taken,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .await;
    let rss = vm_rss_kib(pid);
    eprintln!(
        "receiver flow control: the client got {stalled} envelopes (~{} MiB) into the stream \
         before it stalled; BR RSS {} -> {} MiB; at {:?}",
        stalled * 8 / 1024,
        baseline / 1024,
        rss / 1024,
        started.elapsed()
    );
    // Unread results (a rejection each, ~100 bytes) fill the client's HTTP/2 receive window
    // and BR's bounded results buffer first: tens of thousands of small answers, then BR
    // stops reading envelopes.
    assert!(
        stalled < OFFERED / 10,
        "the client was never stopped ({stalled} of {OFFERED} envelopes taken)"
    );
    // 64 MiB: well above the bounded buffers (windows, a chunk of 256 envelopes, the results
    // channel), well below what the stalled client offered had BR buffered it.
    assert!(
        rss < baseline + 64 * 1024,
        "BR grew from {} to {} MiB while the client did not read",
        baseline / 1024,
        rss / 1024
    );
    br.assert_running("while a client does not read");
    br_still_serves(&fed, 2).await;

    // Once the client reads, the stream moves again.
    let mut answered = 0u64;
    while answered < stalled + 1000 {
        let r = timeout(WAIT, results.message())
            .await
            .expect("results flow once read")
            .expect("result")
            .expect("the stream goes on");
        assert_eq!(rejection_reason(&r), Some(RejectReason::Malformed), "{r:?}");
        answered += 1;
    }
    assert!(taken.load(Ordering::SeqCst) > stalled);
    // The client stops reading again and keeps its stream open: BR still stops on SIGTERM
    // (after its drain period, not waiting for the stream to end).
    br.assert_running("after the stream");
    br.stop(WAIT).await;
    drop(results);
    drop(client);
}
