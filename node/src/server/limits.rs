//! Per-peer and per-listener bounds: how many connections one peer may hold, how many requests
//! (and open streams) it may have in progress, and how many the listener serves at once. A
//! request over a limit is answered at once — `RESOURCE_EXHAUSTED` for a peer over its share,
//! `UNAVAILABLE` when the node as a whole is full — instead of waiting in a queue, so one
//! misbehaving peer cannot take the service away from the others.
//!
//! A peer is the administration and role of its verified client certificate: every
//! connection and request of one partner counts against one budget, however many source
//! addresses or certificates it uses.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::config::Limits;

/// Most certificates whose identity is cached (one per connected peer certificate in practice).
const IDENTITY_CACHE: usize = 1024;

/// The bounds of one listener and what is in use now.
#[derive(Debug)]
pub struct PeerLimits {
    listener: &'static str,
    max_connections_per_peer: usize,
    max_requests_per_peer: usize,
    max_requests_in_flight: usize,
    connections: Mutex<HashMap<String, usize>>,
    requests: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    identities: Mutex<HashMap<Vec<u8>, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PeerLimits {
    /// The bounds of `listener` (`exchange` or `gateway`, a metric label) from `[limits]`.
    pub fn new(listener: &'static str, limits: &Limits) -> Arc<Self> {
        Arc::new(PeerLimits {
            listener,
            max_connections_per_peer: limits.max_connections_per_peer,
            max_requests_per_peer: limits.max_requests_per_peer,
            max_requests_in_flight: limits.max_requests_in_flight,
            connections: Mutex::default(),
            requests: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            identities: Mutex::default(),
        })
    }

    /// `ADMIN/role` of a verified leaf certificate, or `unidentified` (such a peer got past
    /// the handshake only if the verifier accepted it, which needs an identity: not expected).
    fn peer_of(&self, leaf: &[u8]) -> String {
        if let Some(p) = lock(&self.identities).get(leaf) {
            return p.clone();
        }
        let peer = crate::identity::pki::cert_identity(leaf).map_or_else(
            |_| "unidentified".to_owned(),
            |id| format!("{}/{}", id.admin, id.role.as_str()),
        );
        let mut cache = lock(&self.identities);
        if cache.len() >= IDENTITY_CACHE {
            cache.clear();
        }
        cache.insert(leaf.to_vec(), peer.clone());
        peer
    }

    /// Admits one more connection of the peer presenting `leaf`, or `None` if it holds its
    /// maximum already (the caller closes the connection).
    pub fn admit_connection(self: &Arc<Self>, leaf: &[u8]) -> Option<ConnectionGuard> {
        let peer = self.peer_of(leaf);
        let mut conns = lock(&self.connections);
        let n = conns.entry(peer.clone()).or_insert(0);
        if *n >= self.max_connections_per_peer {
            drop(conns);
            crate::telemetry::connection_refused(self.listener);
            tracing::warn!(
                listener = self.listener,
                peer,
                limit = self.max_connections_per_peer,
                "connection closed: the peer holds the maximum number of connections"
            );
            return None;
        }
        *n += 1;
        Some(ConnectionGuard {
            limits: self.clone(),
            peer,
        })
    }

    /// Admits one more request of `peer`, or says which limit it hit.
    fn admit_request(self: &Arc<Self>, peer: String) -> Result<RequestGuard, tonic::Status> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_requests_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            crate::telemetry::request_shed(self.listener, "node");
            return Err(tonic::Status::unavailable(format!(
                "node overloaded: {} requests in progress on the {} listener; retry with backoff",
                self.max_requests_in_flight, self.listener
            )));
        }
        let mut requests = lock(&self.requests);
        let n = requests.entry(peer.clone()).or_insert(0);
        if *n >= self.max_requests_per_peer {
            drop(requests);
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            crate::telemetry::request_shed(self.listener, "peer");
            return Err(tonic::Status::resource_exhausted(format!(
                "too many requests in progress from {peer} (limit {}); retry with backoff",
                self.max_requests_per_peer
            )));
        }
        *n += 1;
        Ok(RequestGuard {
            limits: self.clone(),
            peer,
        })
    }
}

/// Holds one connection slot of a peer until dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    limits: Arc<PeerLimits>,
    peer: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        release(&self.limits.connections, &self.peer);
    }
}

/// Holds one request slot of a peer (and of the listener) until dropped.
#[derive(Debug)]
struct RequestGuard {
    limits: Arc<PeerLimits>,
    peer: String,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.limits.in_flight.fetch_sub(1, Ordering::AcqRel);
        release(&self.limits.requests, &self.peer);
    }
}

fn release(counts: &Mutex<HashMap<String, usize>>, peer: &str) {
    let mut counts = lock(counts);
    if let Some(n) = counts.get_mut(peer) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(peer);
        }
    }
}

/// An established TLS connection that holds its peer's connection slot.
#[derive(Debug)]
pub struct Guarded {
    stream: TlsStream<TcpStream>,
    _slot: ConnectionGuard,
}

impl Guarded {
    /// Wraps `stream`, holding `slot` for as long as the connection lives.
    pub fn new(stream: TlsStream<TcpStream>, slot: ConnectionGuard) -> Self {
        Guarded {
            stream,
            _slot: slot,
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The tower layer that applies the request limits of one listener.
#[derive(Debug, Clone)]
pub struct ShedLayer(pub Arc<PeerLimits>);

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            limits: self.0.clone(),
        }
    }
}

/// The service of [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    limits: Arc<PeerLimits>,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Shed<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let peer = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|certs| certs.first().map(|c| self.limits.peer_of(c)))
            .unwrap_or_else(|| "unidentified".to_owned());
        let guard = match self.limits.admit_request(peer) {
            Ok(g) => g,
            Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
        };
        let fut = self.inner.call(request);
        Box::pin(async move {
            let response = fut.await?;
            // The slot is held until the response body (a stream's messages) is done.
            Ok(response.map(|body| {
                tonic::body::Body::new(body.map_frame(move |frame| {
                    let _held = &guard;
                    frame
                }))
            }))
        })
    }
}
