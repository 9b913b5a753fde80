//! Wiring: build every component from the config, bind the listeners, run until shutdown,
//! then drain.
//!
//! Shutdown: the drain signal stops every accept loop (no new connections), readiness turns
//! false, open connections get a graceful close (HTTP/1 finishes the request in flight, HTTP/2
//! sends GOAWAY), and whatever is still open at `drain_timeout` is cut. Then the audit writer
//! is flushed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use ward_audit::{AuditKey, Auditor, Store};
use ward_authz::PolicyEngine;

use crate::config::{Config, IdentityConfig, Registry};
use crate::ctx::ListenerKind;
use crate::identity::{self, Identity};
use crate::metrics::Metrics;
use crate::outbound::Upstreams;
use crate::{Error, admin, inbound, outbound, trace};

/// How long the audit writer gets to flush at shutdown.
const AUDIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a listener needs, built once and shared.
#[derive(Debug)]
pub struct ProxyInputs {
    /// The effective configuration.
    pub cfg: Arc<Config>,
    /// The SVID and trust bundles.
    pub identity: Identity,
    /// The Cedar engine inbound calls are decided by.
    pub authz: Arc<PolicyEngine>,
    /// Where decisions are recorded; `None` when `audit.enabled` is false.
    pub audit: Option<Auditor>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The outbound destinations, swappable as a whole.
    pub upstreams: Upstreams,
    /// Turns true once shutdown starts; every accept loop watches it.
    pub drain: watch::Receiver<bool>,
    /// True while serving and not draining (`/ready`).
    pub ready: AtomicBool,
    /// Whether requests get trace spans (`tracing.otlp_endpoint` is set).
    pub(crate) traced: bool,
}

/// The addresses the listeners actually bound (port 0 becomes a real port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The inbound mTLS listener.
    pub inbound: SocketAddr,
    /// The outbound listener.
    pub outbound: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
}

/// A built, bound proxy, not yet serving.
#[derive(Debug)]
pub struct Proxy {
    inputs: Arc<ProxyInputs>,
    listeners: [(ListenerKind, TcpListener); 3],
    bound: Bound,
    drain_tx: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    exporter: Option<trace::Exporter>,
}

// === impl Proxy ===

impl Proxy {
    /// Validates `cfg`, obtains the identity, loads policies, opens the audit log and binds the
    /// three listeners. Nothing is served until [`Proxy::wait_termination`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ward_proxy::Error> {
    /// let cfg: ward_proxy::Config = serde_norway::from_str("service: checkout-api\n").unwrap_or_default();
    /// let proxy = ward_proxy::Proxy::build(cfg).await?;
    /// println!("inbound on {}", proxy.bound().inbound);
    /// proxy.wait_termination(async { let _ = tokio::signal::ctrl_c().await; }).await
    /// # }
    /// ```
    pub async fn build(cfg: Config) -> Result<Self, Error> {
        cfg.validate()?;
        ward_identity::install_crypto_provider();
        let exporter = trace::Exporter::install(&cfg)?;
        let traced = cfg.tracing.otlp_endpoint.is_some();
        let mut background = Vec::new();
        let identity = match &cfg.identity {
            IdentityConfig::Files(files) => Identity::from_files(files)?,
            IdentityConfig::WorkloadApi(api) => {
                let (identity, task) = identity::workload_api::spawn(api).await?;
                background.push(task);
                identity
            }
        };
        let authz = Arc::new(PolicyEngine::load(&cfg.policies)?);
        let metrics = Arc::new(Metrics::new());
        let audit = if cfg.audit.enabled {
            let audit = open_audit(&cfg).await?;
            metrics.set_audit(audit.metrics().clone());
            Some(audit)
        } else {
            tracing::warn!("audit.enabled is false: decisions are NOT recorded");
            None
        };
        let upstreams = Upstreams::new(&cfg.registry, &identity, &metrics)?;

        let bind = |kind, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    listener: kind,
                    addr,
                    source,
                })
                .map(|l| (kind, l))
        };
        let inbound = bind(ListenerKind::Inbound, cfg.listen.inbound).await?;
        let outbound = bind(ListenerKind::Outbound, cfg.listen.outbound).await?;
        let admin = bind(ListenerKind::Admin, cfg.listen.admin).await?;
        let local =
            |l: &(ListenerKind, TcpListener), addr: SocketAddr| l.1.local_addr().unwrap_or(addr);
        let bound = Bound {
            inbound: local(&inbound, cfg.listen.inbound),
            outbound: local(&outbound, cfg.listen.outbound),
            admin: local(&admin, cfg.listen.admin),
        };
        tracing::info!(
            service = %cfg.service,
            spiffe_id = %identity.spiffe_id(),
            revision = %authz.snapshot().revision(),
            config = %cfg.redacted(),
            "proxy configured"
        );
        let (drain_tx, drain) = watch::channel(false);
        let inputs = Arc::new(ProxyInputs {
            cfg: Arc::new(cfg),
            identity,
            authz,
            audit,
            metrics,
            upstreams,
            drain,
            ready: AtomicBool::new(false),
            traced,
        });
        Ok(Self {
            inputs,
            listeners: [inbound, outbound, admin],
            bound,
            drain_tx,
            background,
            exporter,
        })
    }

    /// Where the listeners are.
    pub fn bound(&self) -> Bound {
        self.bound
    }

    /// The shared inputs (identity, engine, registry, metrics), e.g. to reload on SIGHUP.
    pub fn inputs(&self) -> Arc<ProxyInputs> {
        self.inputs.clone()
    }

    /// Serves until `shutdown` completes, then drains (up to `drain_timeout`) and flushes the
    /// audit log and the trace exporter.
    pub async fn wait_termination(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Self {
            inputs,
            listeners,
            drain_tx,
            background,
            exporter,
            ..
        } = self;
        let mut loops = JoinSet::new();
        for (kind, listener) in listeners {
            let inputs = inputs.clone();
            loops.spawn(async move {
                match kind {
                    ListenerKind::Inbound => inbound::serve(inputs, listener).await,
                    ListenerKind::Outbound => outbound::serve(inputs, listener).await,
                    ListenerKind::Admin => admin::serve(inputs, listener).await,
                }
            });
        }
        inputs.ready.store(true, Ordering::Release);
        tracing::info!("proxy ready");
        shutdown.await;
        tracing::info!(deadline = ?inputs.cfg.drain_timeout, "draining");
        inputs.ready.store(false, Ordering::Release);
        drain_tx.send_replace(true);
        while loops.join_next().await.is_some() {}
        if let Some(audit) = &inputs.audit {
            match tokio::time::timeout(AUDIT_FLUSH_TIMEOUT, audit.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::error!(error = %err, "flushing the audit log"),
                Err(_) => tracing::error!("flushing the audit log timed out"),
            }
        }
        if let Some(exporter) = exporter {
            exporter.shutdown().await;
        }
        for task in background {
            task.abort();
        }
        tracing::info!("proxy stopped");
        Ok(())
    }
}

// === impl ProxyInputs ===

impl ProxyInputs {
    /// Reloads the policy repository; on error the current policies keep serving.
    pub fn reload_policies(&self) -> Result<Arc<str>, ward_authz::Error> {
        self.authz.reload(&self.cfg.policies)
    }

    /// Re-reads identity files (a no-op for the Workload API, which streams rotations).
    pub fn reload_identity(&self) -> Result<(), identity::IdentityError> {
        match &self.cfg.identity {
            IdentityConfig::Files(files) => self.identity.reload_files(files),
            IdentityConfig::WorkloadApi(_) => Ok(()),
        }
    }

    /// Replaces the registry (what a control plane will stream); calls in flight finish on the
    /// old one.
    pub fn update_registry(&self, registry: &Registry) -> Result<(), Error> {
        registry.validate()?;
        self.upstreams
            .update(registry, &self.identity, &self.metrics)
    }

    /// Waits until shutdown starts.
    pub(crate) async fn drained(&self) {
        let mut drain = self.drain.clone();
        let _ = drain.wait_for(|d| *d).await;
    }
}

async fn open_audit(cfg: &Config) -> Result<Auditor, Error> {
    let store = Store::open(&cfg.audit.store).await?;
    let key = cfg
        .audit
        .key
        .as_deref()
        .map(AuditKey::load_or_create)
        .transpose()?
        .map(Arc::new);
    let audit_cfg = ward_audit::Config {
        strict: cfg.audit.strict,
        flush_interval: cfg.audit.flush_interval,
        ..ward_audit::Config::new(&cfg.node, cfg.audit.spool_dir.clone())
    };
    let (auditor, task) = Auditor::spawn(store, key, audit_cfg).await?;
    // The writer ends on its own once every handle is dropped; it is not aborted.
    drop(task);
    Ok(auditor)
}
