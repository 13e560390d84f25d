//! Connections to partner nodes (and, for the CLI, to the node's own Gateway): TLS 1.3 with this
//! node's certificate, trusting only the CA the agreement names for that partner, with connect and
//! request timeouts so that a stalled peer cannot hold us.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};

use crate::agreement::Party;
use crate::config::Limits;
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::server::tls::{self, TlsError};

/// Builds a lazily connecting gRPC channel to `host_port` over TLS with `config`, verifying the
/// server as `server_name`.
pub fn tls_channel(
    host_port: &str,
    server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Channel, TlsError> {
    let endpoint = Endpoint::from_shared(format!("http://{host_port}"))
        .map_err(|e| TlsError::Partner {
            admin: host_port.to_owned(),
            detail: e.to_string(),
        })?
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let addr = host_port.to_owned();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let (addr, config, name) = (addr.clone(), config.clone(), server_name.clone());
        async move {
            // The connect timeout covers TCP and the TLS handshake (a peer may accept and then
            // say nothing), and says so: the error ends up in the outbox's `last_error`.
            let connect = async {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
            };
            match tokio::time::timeout(connect_timeout, connect).await {
                Ok(tls) => Ok(TokioIo::new(tls?)),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {addr} (TCP and TLS handshake) timed out after {}s",
                        connect_timeout.as_secs_f32()
                    ),
                )),
            }
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// A partner's client with the endpoint and CA it was built for.
#[derive(Debug)]
struct CachedClient {
    endpoint: String,
    ca_der: Vec<u8>,
    client: ExchangeClient<Channel>,
}

/// A cache of Exchange clients, one per partner, rebuilt when the partner's card changes.
#[derive(Debug)]
pub struct PeerClients {
    identity: Mutex<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    max_message_bytes: usize,
    cache: Mutex<HashMap<String, CachedClient>>,
}

impl PeerClients {
    /// Clients presenting `cert_chain`/`key`, with the timeouts and sizes of `limits`.
    pub fn new(
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        limits: &Limits,
    ) -> Self {
        PeerClients {
            identity: Mutex::new((cert_chain, key)),
            connect_timeout: Duration::from_secs(limits.connect_timeout_secs),
            request_timeout: Duration::from_secs(limits.request_timeout_secs),
            max_message_bytes: limits.max_message_bytes,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The Exchange client for `party` (its endpoint, trusting only its CA).
    pub fn client(&self, party: &Party) -> Result<ExchangeClient<Channel>, TlsError> {
        let admin = &party.card.admin;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(admin)
            && c.endpoint == party.card.endpoint
            && c.ca_der == party.ca_der
        {
            return Ok(c.client.clone());
        }
        let (name, host_port) = tls::endpoint_parts(admin, &party.card.endpoint)?;
        let config = {
            let identity = self.identity.lock().unwrap_or_else(|e| e.into_inner());
            tls::client_config(
                std::slice::from_ref(&party.ca_der),
                identity.0.clone(),
                identity.1.clone_key(),
            )?
        };
        let channel = tls_channel(
            &host_port,
            name,
            config,
            self.connect_timeout,
            self.request_timeout,
        )?;
        let client = ExchangeClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes + 64 * 1024)
            .max_encoding_message_size(self.max_message_bytes + 64 * 1024);
        cache.insert(
            admin.clone(),
            CachedClient {
                endpoint: party.card.endpoint.clone(),
                ca_der: party.ca_der.clone(),
                client: client.clone(),
            },
        );
        Ok(client)
    }

    /// Presents `cert_chain`/`key` on new connections from now on (after a certificate
    /// rotation); connections in use finish with the previous certificate.
    pub fn set_identity(
        &self,
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) {
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = (cert_chain, key);
        self.clear();
    }

    /// Drops `admin`'s cached client, so that the next call dials a new connection: after a
    /// call got no answer in time, the connection itself may be what hangs (a peer whose
    /// application stalls keeps answering HTTP/2 pings, so the channel never notices).
    pub fn forget(&self, admin: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(admin);
    }

    /// Drops every cached client (after agreements change).
    pub fn clear(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}
