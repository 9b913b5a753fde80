//! `ward authz serve`: the decision service. Two listeners share one [`Authorizer`]:
//!
//! - HTTP/1.1 and HTTP/2 JSON ([`crate::check_api`]): `POST /v1/check`,
//!   `GET /ready`, `GET /healthz`, `GET /metrics`;
//! - gRPC: Envoy's `envoy.service.auth.v3.Authorization/Check` ([`crate::ext_authz`]).
//!
//! Each decision's audit record goes to the [`Auditor`] when one is configured. In strict
//! audit mode a record that cannot be made durable fails the request closed.
//!
//! Shutdown: when the future given to [`Server::run`] completes, `/ready` turns 503, both
//! listeners stop accepting, and in-flight requests get up to [`Config::drain_timeout`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use ward_audit::{AuditRecord, Auditor};

use crate::authorizer::Authorizer;
use crate::check_api;
use crate::ext_authz::ExtAuthz;
use crate::metrics::AuditCollector;
use crate::reload::Reloader;

/// Where the service listens and how long it drains.
#[derive(Debug, Clone)]
pub struct Config {
    /// The JSON API and admin endpoints (`/v1/check`, `/ready`, `/healthz`, `/metrics`).
    pub http_listen: SocketAddr,
    /// Envoy ext_authz gRPC.
    pub grpc_listen: SocketAddr,
    /// How long in-flight requests may take to finish after shutdown begins.
    pub drain_timeout: Duration,
}

/// What every handler needs.
#[derive(Debug)]
pub struct Inputs {
    /// Decides requests.
    pub authorizer: Arc<Authorizer>,
    /// Reports reload failures on `/ready`.
    pub reloader: Arc<Reloader>,
    /// Receives every decision's record, when auditing is on.
    pub auditor: Option<Auditor>,
}

/// Why the service could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("binding {what} listener `{addr}`: {source}")]
    Bind {
        /// `http` or `grpc`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("ext_authz gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// In-flight requests did not finish within the drain timeout.
    #[error("requests still in flight after the {0:?} drain timeout")]
    DrainTimeout(Duration),
}

/// A bound, not yet running service.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    http: TcpListener,
    grpc: TcpListener,
    http_addr: SocketAddr,
    grpc_addr: SocketAddr,
    drain_timeout: Duration,
}

/// The state handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inputs: Inputs,
    pub(crate) registry: Registry,
    pub(crate) draining: AtomicBool,
}

// === impl Server ===

impl Server {
    /// Binds both listeners (port 0 picks a free port; see [`Server::http_addr`]).
    pub async fn bind(cfg: &Config, inputs: Inputs) -> Result<Self, ServeError> {
        let bind = |what, addr| async move {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { what, addr, source })?;
            let local =
                listener
                    .local_addr()
                    .map_err(|source| ServeError::Bind { what, addr, source })?;
            Ok::<_, ServeError>((listener, local))
        };
        let (http, http_addr) = bind("http", cfg.http_listen).await?;
        let (grpc, grpc_addr) = bind("grpc", cfg.grpc_listen).await?;
        Ok(Self {
            shared: Arc::new(Shared::new(inputs)),
            http,
            grpc,
            http_addr,
            grpc_addr,
            drain_timeout: cfg.drain_timeout,
        })
    }

    /// The bound address of the HTTP listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The bound address of the gRPC listener.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let http = tokio::spawn(serve_http(self.http, self.shared.clone(), stop_rx.clone()));
        let mut grpc_stop = stop_rx;
        let grpc = tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(ExtAuthz::new(self.shared.clone())))
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.grpc), async move {
                stopped(&mut grpc_stop).await;
            });
        let grpc = tokio::spawn(grpc);
        tracing::info!(http = %self.http_addr, grpc = %self.grpc_addr, "authz service ready");

        shutdown.await;
        tracing::info!(timeout = ?self.drain_timeout, "draining");
        self.shared.draining.store(true, Ordering::Release);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.drain_timeout, async {
            let (http, grpc) = tokio::join!(http, grpc);
            if let Err(e) = http {
                tracing::error!(error = %e, "BUG: HTTP server task failed");
            }
            match grpc {
                Ok(result) => result.map_err(ServeError::from),
                Err(e) => {
                    tracing::error!(error = %e, "BUG: gRPC server task failed");
                    Ok(())
                }
            }
        })
        .await;
        match drained {
            Ok(result) => result,
            Err(_) => Err(ServeError::DrainTimeout(self.drain_timeout)),
        }
    }
}

// === impl Shared ===

impl Shared {
    pub(crate) fn new(inputs: Inputs) -> Self {
        let mut registry = Registry::default();
        inputs.authorizer.metrics().register(&mut registry);
        if let Some(auditor) = &inputs.auditor {
            registry.register_collector(Box::new(AuditCollector(auditor.metrics().clone())));
        }
        Self {
            inputs,
            registry,
            draining: AtomicBool::new(false),
        }
    }

    /// Hands `record` to the auditor. An error means strict mode could not make it durable
    /// and the request must fail closed; other audit failures are counted by the auditor.
    pub(crate) async fn audit(&self, record: AuditRecord) -> Result<(), ward_audit::Error> {
        let Some(auditor) = &self.inputs.auditor else {
            return Ok(());
        };
        match auditor.submit(record).await {
            Ok(()) => Ok(()),
            Err(e) if auditor.is_strict() => {
                tracing::error!(error = %e, "audit record not durable; failing the request closed");
                Err(e)
            }
            Err(e) => {
                tracing::warn!(error = %e, "audit record not kept");
                Ok(())
            }
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Accepts HTTP connections until told to stop, then waits for open ones to finish.
async fn serve_http(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Usually EMFILE; keep serving the connections we have.
                        tracing::warn!(error = %e, "accepting an HTTP connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let shared = shared.clone();
                let service = hyper::service::service_fn(move |req| {
                    check_api::handle(shared.clone(), req)
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "HTTP connection ended with an error");
                    }
                });
            }
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The returned `Ref` holds a lock; drop it before anything else awaits.
    let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
}

#[cfg(test)]
mod tests;
