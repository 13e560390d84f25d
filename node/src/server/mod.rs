//! The node's listeners: `Exchange` for partners and `Gateway` for the back office, each on its
//! own port with its own client-certificate policy ([`tls`]).

pub mod audit;
pub mod exchange;
pub mod gateway;
pub mod health;
pub mod limits;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::proto::v1::audit_server::AuditServer;
use crate::proto::v1::exchange_server::ExchangeServer;
use crate::proto::v1::gateway_server::GatewayServer;
use crate::state::{BackOfficeTrust, NodeState, PartnerTrust, StateError};

/// How long a shutdown waits for calls in progress to finish.
pub const DRAIN: Duration = Duration::from_secs(10);

/// How often a running node checks whether agreements came into or left force.
const AGREEMENT_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The node's state could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A node serving both listeners.
#[derive(Debug)]
pub struct RunningNode {
    /// Where the Exchange service listens.
    pub exchange_addr: SocketAddr,
    /// Where the Gateway service listens.
    pub gateway_addr: SocketAddr,
    /// The node's state.
    pub state: Arc<NodeState>,
    node_cert: Arc<tls::ReloadingCert>,
    shutdown: tokio::sync::watch::Sender<bool>,
    tasks: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl RunningNode {
    /// Stops accepting, lets in-flight calls finish (for at most [`DRAIN`]), and waits for the
    /// listeners to close and the background tasks to stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let mut tasks = self.tasks.into_iter();
        // The two listeners first. A graceful stop waits for every call in progress, and a
        // stream a partner keeps feeding (or an Inbox subscription) never ends by itself: stop
        // waiting after DRAIN. Nothing unacknowledged is lost; the caller retries.
        for listener in tasks.by_ref().take(2) {
            let abort = listener.abort_handle();
            if tokio::time::timeout(DRAIN, listener).await.is_err() {
                tracing::warn!(
                    drain_secs = DRAIN.as_secs(),
                    "calls still open after the drain period; no longer waiting for them"
                );
                abort.abort();
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        // Refusals counted but not yet summarised: say so before the node is gone.
        for summary in self
            .state
            .rejection_log
            .flush(crate::envelope::now_ms(), true)
        {
            crate::delivery::rejection_log::log_summary(&summary);
        }
    }

    /// Loads a rotated node certificate if its files changed (`Ok(true)`): new handshakes on
    /// both listeners and new outgoing connections use it; open connections keep the old one.
    pub fn reload_certificate(&self) -> Result<bool, tls::TlsError> {
        reload_certificate(&self.state, &self.node_cert)
    }

    /// Waits until a listener fails (they run until shutdown otherwise).
    pub async fn wait(&mut self) -> Result<(), ServerError> {
        for t in &mut self.tasks {
            if let Ok(Err(e)) = t.await {
                return Err(e.into());
            }
        }
        Ok(())
    }
}

/// Binds the configured addresses and starts the node.
pub async fn start(config: NodeConfig) -> Result<RunningNode, ServerError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })
    };
    let exchange = bind(config.listen).await?;
    let gateway = bind(config.gateway_listen).await?;
    start_on(config, exchange, gateway).await
}

/// Starts the node on already bound listeners (lets callers pick free ports first).
pub async fn start_on(
    config: NodeConfig,
    exchange: TcpListener,
    gateway: TcpListener,
) -> Result<RunningNode, ServerError> {
    tls::install_crypto_provider();
    let state = NodeState::open(config)?;
    let exchange_addr = exchange.local_addr().map_err(|source| ServerError::Bind {
        addr: state.config.listen,
        source,
    })?;
    let gateway_addr = gateway.local_addr().map_err(|source| ServerError::Bind {
        addr: state.config.gateway_listen,
        source,
    })?;
    let paths = state.config.identity_paths();
    let node_cert = tls::ReloadingCert::load(&paths.node_cert(), &paths.node_key())?;
    let limits = state.config.limits.clone();
    let exchange_tls = tls::server_config(
        node_cert.clone(),
        Arc::new(tls::PeerVerifier::new(Arc::new(PartnerTrust(
            Arc::downgrade(&state),
        )))),
    )?;
    let gateway_tls = tls::server_config(
        node_cert.clone(),
        Arc::new(tls::PeerVerifier::new(Arc::new(BackOfficeTrust {
            admin: state.admin().to_owned(),
            ca_der: state.own_ca_der.clone(),
        }))),
    )?;
    let (shutdown, _) = tokio::sync::watch::channel(false);
    let handshake = Duration::from_secs(limits.handshake_timeout_secs);
    // Room for the envelope's own framing on top of the payload limit; the receive pipeline
    // enforces the exact limit with RESOURCE_EXHAUSTED.
    let max_frame = limits.max_message_bytes + 64 * 1024;

    let exchange_peers = limits::PeerLimits::new("exchange", &limits);
    let gateway_peers = limits::PeerLimits::new("gateway", &limits);
    let builder = |timeout: Duration, peers: &Arc<limits::PeerLimits>| {
        tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Bounded header blocks: a peer cannot make us buffer megabytes of metadata.
            .http2_max_header_list_size(Some(64 * 1024))
            .timeout(timeout)
            .layer(size_limit::TooLargeIsResourceExhausted)
            .layer(limits::ShedLayer(peers.clone()))
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health::set_all(&health_reporter, tonic_health::ServingStatus::Serving).await;
    let reflection = health::reflection()?;
    let exchange_timeout = Duration::from_secs(limits.request_timeout_secs);
    // A Gateway Send with `await_delivery` includes connecting to and waiting for the partner:
    // its deadline covers both, so the back office hears the outcome, not a generic timeout.
    let gateway_timeout =
        Duration::from_secs(limits.connect_timeout_secs + limits.request_timeout_secs + 5);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let exchange_task = tokio::spawn(
        builder(exchange_timeout, &exchange_peers)
            .add_service(health_service.clone())
            .add_service(
                ExchangeServer::new(exchange::ExchangeService::new(
                    state.clone(),
                    shutdown.subscribe(),
                ))
                .max_decoding_message_size(max_frame)
                .max_encoding_message_size(max_frame),
            )
            .serve_with_incoming_shutdown(
                tls::incoming(
                    exchange,
                    exchange_tls,
                    handshake,
                    limits.max_pending_handshakes,
                    exchange_peers.clone(),
                ),
                stop(shutdown.subscribe()),
            ),
    );
    let gateway_task = tokio::spawn(
        builder(gateway_timeout, &gateway_peers)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                GatewayServer::new(gateway::GatewayService::new(
                    state.clone(),
                    shutdown.subscribe(),
                ))
                .max_decoding_message_size(max_frame)
                .max_encoding_message_size(max_frame),
            )
            .add_service(AuditServer::new(audit::AuditService::new(state.clone())))
            .serve_with_incoming_shutdown(
                tls::incoming(
                    gateway,
                    gateway_tls,
                    handshake,
                    limits.max_pending_handshakes,
                    gateway_peers.clone(),
                ),
                stop(shutdown.subscribe()),
            ),
    );
    // Agreements come into and leave force with time (valid_from, valid_until, a newer
    // version's start), and payloads pass their retention: check every half minute, record each
    // agreement change and crypto-shred what is past retention.
    let lifecycle_task = {
        let state = state.clone();
        spawn_periodic(
            shutdown.subscribe(),
            AGREEMENT_CHECK_INTERVAL,
            OnStop::Return,
            move || {
                let state = state.clone();
                async move {
                    if let Err(e) = state.record_agreement_changes().await {
                        tracing::error!(error = %e, "could not record agreement changes in the ledger");
                    }
                    let now = crate::envelope::now_ms();
                    if let Err(e) = crate::delivery::retention::sweep(&state, now).await {
                        tracing::error!(error = %e, "retention sweep failed");
                    }
                }
            },
        )
    };
    // Checkpoints: one right away, then whenever the ledger grew, every interval, and a last
    // one on shutdown that covers everything the node acknowledged.
    let checkpoint_task = {
        let state = state.clone();
        spawn_periodic(
            shutdown.subscribe(),
            Duration::from_millis(state.config.ledger.checkpoint_interval_ms),
            OnStop::RunOnceMore,
            move || {
                let state = state.clone();
                async move {
                    if let Err(e) = state.checkpoints.publish().await {
                        tracing::error!(error = %e, "could not publish a ledger checkpoint");
                    }
                }
            },
        )
    };
    // Witnessing: fetch, check and cosign every partner's checkpoint each interval.
    let witness_task = {
        let state = state.clone();
        spawn_periodic(
            shutdown.subscribe(),
            Duration::from_millis(state.config.ledger.witness_interval_ms),
            OnStop::CancelJob,
            move || {
                let state = state.clone();
                async move { crate::witness::round(&state).await }
            },
        )
    };
    // Delivery from the outbox, one worker per partner with queued messages.
    let courier_task = crate::delivery::courier::Courier::start(&state, shutdown.subscribe())
        .map_err(|e| {
            StateError::Ledger(crate::ledger::LedgerError::Corrupt {
                what: e.to_string(),
            })
        })?;
    // AEO: entries a crash left in the journal go to the ledger first; then one follower per
    // partner whose registry this node mirrors.
    crate::aeo::journal::flush(&state).await.map_err(|e| {
        StateError::Ledger(crate::ledger::LedgerError::Corrupt {
            what: format!("AEO journal: {e}"),
        })
    })?;
    let mirror_task = {
        let (state, stopping) = (state.clone(), shutdown.subscribe());
        tokio::spawn(async move {
            crate::aeo::mirror::run(state, stopping).await;
            Ok(())
        })
    };
    // A rotated node certificate (`dccf-node cert rotate`) is picked up without a restart.
    let cert_task = {
        let (state, node_cert) = (state.clone(), node_cert.clone());
        spawn_periodic(
            shutdown.subscribe(),
            tls::RELOAD_INTERVAL,
            OnStop::CancelJob,
            move || {
                let (state, node_cert) = (state.clone(), node_cert.clone());
                async move {
                    if let Err(e) = reload_certificate(&state, &node_cert) {
                        tracing::warn!(error = %e, "rotated node certificate not loaded; keeping the current one");
                    }
                }
            },
        )
    };
    let health_task = {
        let (store, stopping) = (state.store.clone(), shutdown.subscribe());
        tokio::spawn(async move {
            health::watch(store, health_reporter, stopping).await;
            Ok(())
        })
    };
    // Gauges (queue depths, ledger size, certificate expiry) for the metrics listener, the
    // hourly log warning about certificates close to expiry, and the report's AEO counts.
    let gauges_task = {
        let state = state.clone();
        spawn_periodic(
            shutdown.subscribe(),
            crate::telemetry::GAUGE_INTERVAL,
            OnStop::CancelJob,
            move || {
                let state = state.clone();
                async move {
                    if let Err(e) = crate::report::persist_mirror_counts(&state).await {
                        tracing::warn!(error = %e, "AEO mirror lookup counts not recorded");
                    }
                    let now = crate::envelope::now_ms();
                    for summary in state.rejection_log.flush(now, false) {
                        crate::delivery::rejection_log::log_summary(&summary);
                    }
                    let _ = tokio::task::spawn_blocking(move || {
                        crate::telemetry::refresh_gauges(&state)
                    })
                    .await;
                }
            },
        )
    };
    tracing::info!(admin = state.admin(), %exchange_addr, %gateway_addr, "node serving");
    Ok(RunningNode {
        exchange_addr,
        gateway_addr,
        state,
        node_cert,
        shutdown,
        tasks: vec![
            exchange_task,
            gateway_task,
            lifecycle_task,
            checkpoint_task,
            witness_task,
            courier_task,
            mirror_task,
            health_task,
            gauges_task,
            cert_task,
        ],
    })
}

/// See [`RunningNode::reload_certificate`].
fn reload_certificate(
    state: &NodeState,
    node_cert: &tls::ReloadingCert,
) -> Result<bool, tls::TlsError> {
    if !node_cert.reload()? {
        return Ok(false);
    }
    let paths = state.config.identity_paths();
    state.peers.set_identity(
        tls::load_certs(&paths.node_cert())?,
        tls::load_key(&paths.node_key())?,
    );
    tracing::warn!(
        certificate = %paths.node_cert().display(),
        "node certificate reloaded; new connections use it"
    );
    Ok(true)
}

/// What a periodic task does when the node shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnStop {
    /// Finish the run in progress, then stop.
    Return,
    /// Finish the run in progress, run once more, then stop.
    RunOnceMore,
    /// Abandon the run in progress and stop.
    CancelJob,
}

/// Runs `job` right away and then every `every` (a late tick waits, never bursts) until
/// shutdown.
fn spawn_periodic<F, Fut>(
    mut stop: tokio::sync::watch::Receiver<bool>,
    every: Duration,
    on_stop: OnStop,
    mut job: F,
) -> JoinHandle<Result<(), tonic::transport::Error>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = stop.wait_for(|s| *s) => true,
                _ = tick.tick() => false,
            };
            if stopping {
                if on_stop == OnStop::RunOnceMore {
                    job().await;
                }
                return Ok(());
            }
            if on_stop == OnStop::CancelJob {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                    () = job() => {}
                }
            } else {
                job().await;
            }
        }
    })
}

/// gRPC says an over-limit message is `RESOURCE_EXHAUSTED`; tonic's decoder answers
/// `OUT_OF_RANGE`. This layer rewrites that one status (sent in the response headers of a unary
/// call) so partners see the standard code.
mod size_limit {
    use std::task::{Context, Poll};

    use http::HeaderValue;

    /// The layer.
    #[derive(Debug, Clone, Copy)]
    pub struct TooLargeIsResourceExhausted;

    impl<S> tower::Layer<S> for TooLargeIsResourceExhausted {
        type Service = Rewrite<S>;
        fn layer(&self, inner: S) -> Rewrite<S> {
            Rewrite(inner)
        }
    }

    /// The service.
    #[derive(Debug, Clone)]
    pub struct Rewrite<S>(S);

    impl<S, Req, B> tower::Service<Req> for Rewrite<S>
    where
        S: tower::Service<Req, Response = http::Response<B>>,
        S::Future: Send + 'static,
        B: 'static,
    {
        type Response = http::Response<B>;
        type Error = S::Error;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<http::Response<B>, S::Error>> + Send>,
        >;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.0.poll_ready(cx)
        }

        fn call(&mut self, req: Req) -> Self::Future {
            let fut = self.0.call(req);
            Box::pin(async move {
                let mut resp = fut.await?;
                let headers = resp.headers_mut();
                let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
                    && headers
                        .get("grpc-message")
                        .and_then(|m| m.to_str().ok())
                        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
                if too_large {
                    headers.insert("grpc-status", HeaderValue::from_static("8"));
                    headers.insert(
                        crate::delivery::REASON_METADATA,
                        HeaderValue::from_static("REJECT_REASON_TOO_LARGE"),
                    );
                }
                Ok(resp)
            })
        }
    }
}
