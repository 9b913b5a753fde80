//! Connections to destination proxies: TCP, then mTLS that must present the endpoint's
//! expected SPIFFE id, pooled and reused by hyper-util's client (HTTP/2 when ALPN agrees).
//!
//! A pooled connection is only as good as the server SVID it verified. Each endpoint's pool is
//! therefore a [`Generation`]: when the earliest server SVID among its connections expires, or
//! the trusted authorities change, the next request starts a new generation (new handshakes,
//! checked against the current bundles). Requests in flight finish on the old one, whose idle
//! connections close when its last request ends.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use ward_identity::SpiffeId;
use ward_identity::verify::ServerIdentity;

use crate::identity::Identity;
use crate::metrics::{ConnectionGuard, DestinationLabels, HandshakeLabels, Metrics};
use crate::respond::RequestError;
use crate::{BoxBody, BoxError, tls};

/// How long TCP connect plus the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle pooled connections are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// A pooled mTLS client for one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointClient {
    addr: SocketAddr,
    /// The URI authority sent: the service name (the peer's `Host` / `:authority`).
    authority: String,
    identity: Identity,
    current: Arc<ArcSwap<Generation>>,
}

/// The pooled connections of one endpoint opened under one trust generation.
#[derive(Debug)]
struct Generation {
    client: Client<MtlsConnector, Full<Bytes>>,
    /// What `client` connects with; its `lapses_at` is this generation's.
    connector: MtlsConnector,
    /// [`Identity::trust_generation`] when it started.
    trust: u64,
}

/// Opens mTLS connections to one endpoint, within the service's `max_connections`.
#[derive(Clone)]
pub struct MtlsConnector {
    addr: SocketAddr,
    tls: TlsConnector,
    server_name: ServerName<'static>,
    connections: Arc<Semaphore>,
    destination: Arc<str>,
    metrics: Arc<Metrics>,
    /// When the first server SVID among its connections expires, in Unix milliseconds
    /// (`u64::MAX` until a connection is made); shared by one generation's connections.
    lapses_at: Arc<AtomicU64>,
}

/// An established upstream connection; releases its `max_connections` slot when dropped.
#[derive(Debug)]
pub struct MtlsStream {
    io: TokioIo<TlsStream<TcpStream>>,
    h2: bool,
    _permit: OwnedSemaphorePermit,
    _guard: ConnectionGuard,
}

// === impl EndpointClient ===

impl EndpointClient {
    /// A client for the endpoint at `addr` that must present `expected`; connections count
    /// against `connections` (the service's `max_connections`).
    pub fn new(
        identity: &Identity,
        destination: Arc<str>,
        addr: SocketAddr,
        expected: SpiffeId,
        connections: Arc<Semaphore>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, rustls::Error> {
        let config = tls::client_config(identity, ServerIdentity::Exact(expected))?;
        // SPIFFE authenticates by id, not name: the SNI only tells the peer which service.
        let server_name = ServerName::try_from(destination.to_string())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
        let authority = if http::uri::Authority::try_from(destination.as_ref()).is_ok() {
            destination.to_string()
        } else {
            addr.to_string()
        };
        let connector = MtlsConnector {
            addr,
            tls: TlsConnector::from(config),
            server_name,
            connections,
            destination,
            metrics,
            lapses_at: Arc::new(AtomicU64::new(u64::MAX)),
        };
        let current = Arc::new(ArcSwap::from_pointee(Generation::new(
            connector,
            identity.trust_generation(),
        )));
        Ok(Self {
            addr,
            authority,
            identity: identity.clone(),
            current,
        })
    }

    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `req` (origin-form URI) to this endpoint.
    pub async fn send(
        &self,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<BoxBody>, RequestError> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        // The connector always dials `addr`; the URI's authority is what the peer sees.
        *req.uri_mut() = Uri::try_from(format!("https://{}{path}", self.authority))
            .map_err(|e| RequestError::Bug(format!("upstream URI: {e}")))?;
        let generation = self.generation();
        let response = generation.client.request(req).await.map_err(classify)?;
        Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed()))
    }

    /// The current generation, after starting a new one if its connections lapsed.
    fn generation(&self) -> Arc<Generation> {
        let current = self.current.load_full();
        let trust = self.identity.trust_generation();
        let lapses_at = current.connector.lapses_at.load(Ordering::Relaxed);
        let lapsed = unix_millis(SystemTime::now()) >= lapses_at;
        if current.trust == trust && !lapsed {
            return current;
        }
        let fresh = Arc::new(current.next(trust));
        let prev = self.current.compare_and_swap(&current, fresh.clone());
        if Arc::ptr_eq(&prev, &current) {
            let reason = if lapsed {
                "server_svid_expired"
            } else {
                "bundles_changed"
            };
            tracing::debug!(
                endpoint = %self.addr, reason,
                "reconnecting: new connections replace the pooled ones"
            );
            current
                .connector
                .metrics
                .upstream_pool_replacements
                .get_or_create(&DestinationLabels {
                    destination: current.connector.destination.to_string(),
                    reason,
                })
                .inc();
            fresh
        } else {
            // Another request replaced it first.
            Guard::into_inner(prev)
        }
    }
}

/// Finds our own error in a client error's causes, or says whether connecting failed.
fn classify(err: hyper_util::client::legacy::Error) -> RequestError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&err);
    let mut chain = Vec::new();
    while let Some(e) = cause {
        if let Some(ours) = e.downcast_ref::<RequestError>() {
            return ours.clone();
        }
        chain.push(e.to_string());
        cause = e.source();
    }
    let detail = if chain.is_empty() {
        err.to_string()
    } else {
        chain.join(": ")
    };
    if err.is_connect() {
        RequestError::UpstreamConnect(detail)
    } else {
        RequestError::UpstreamReset(detail)
    }
}

// === impl Generation ===

impl Generation {
    fn new(connector: MtlsConnector, trust: u64) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector.clone());
        Self {
            client,
            connector,
            trust,
        }
    }

    /// A generation with no connections yet, started at trust generation `trust`.
    fn next(&self, trust: u64) -> Self {
        let connector = MtlsConnector {
            lapses_at: Arc::new(AtomicU64::new(u64::MAX)),
            ..self.connector.clone()
        };
        Self::new(connector, trust)
    }
}

fn unix_millis(at: SystemTime) -> u64 {
    let since = at.duration_since(UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// === impl MtlsConnector ===

impl std::fmt::Debug for MtlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsConnector")
            .field("addr", &self.addr)
            .field("destination", &self.destination)
            .finish_non_exhaustive()
    }
}

impl tower::Service<Uri> for MtlsConnector {
    type Response = MtlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MtlsStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.connect().await?) })
    }
}

impl MtlsConnector {
    async fn connect(self) -> Result<MtlsStream, RequestError> {
        let permit = self.connections.clone().try_acquire_owned().map_err(|_| {
            RequestError::CircuitOpen {
                service: self.destination.to_string(),
                limit: "max_connections",
            }
        })?;
        let connect = async {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(|e| RequestError::UpstreamConnect(format!("`{}`: {e}", self.addr)))?;
            let _ = tcp.set_nodelay(true);
            self.tls
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| {
                    let reason = tls::failure_reason(&e);
                    self.metrics
                        .handshake_failures
                        .get_or_create(&HandshakeLabels {
                            direction: "outbound",
                            reason,
                        })
                        .inc();
                    RequestError::UpstreamConnect(format!("TLS with `{}`: {e}", self.addr))
                })
        };
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                RequestError::UpstreamConnect(format!("`{}`: connect timed out", self.addr))
            })??;
        let session = tls.get_ref().1;
        let h2 = session.alpn_protocol() == Some(b"h2");
        // The verifier accepted the chain, so it has an expiry; a missing one lapses at once.
        let expiry = session
            .peer_certificates()
            .and_then(|chain| ward_identity::verify::peer_expiry(chain).ok())
            .map_or(0, unix_millis);
        self.lapses_at.fetch_min(expiry, Ordering::Relaxed);
        Ok(MtlsStream {
            io: TokioIo::new(tls),
            h2,
            _permit: permit,
            _guard: self.metrics.connection("upstream"),
        })
    }
}

// === impl MtlsStream ===

impl Connection for MtlsStream {
    fn connected(&self) -> Connected {
        if self.h2 {
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl hyper::rt::Read for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MtlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
