//! The demo mesh of ../shared/DESIGN.md on one machine: each service is a demo app behind its
//! own `ward proxy`, all in this process. Each proxy gets its SVID from `ward up`'s own
//! Workload API, decides inbound calls with the policy repository in the data dir and writes
//! its decisions to the audit log there, one hash chain per service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use ward_identity::workload_api::Entry;
use ward_identity::{SpiffeId, TrustDomain};
use ward_proxy::config::{
    AuditConfig, DEFAULT_IDENTITY_WAIT, EndpointEntry, IdentityConfig, Listen, ServiceEntry,
    WorkloadApiIdentity,
};
use ward_proxy::{Bound, Config, Proxy, ProxyInputs};

use super::app::{self, Onward};
use crate::cmd::proxy;
use crate::output::Table;

/// One service of the demo mesh.
struct Service {
    name: &'static str,
    namespace: &'static str,
    /// The services its proxy can route to (each one earlier in [`SERVICES`]).
    calls: &'static [&'static str],
    /// The calls its app makes while answering some requests (each to one of `calls`).
    onward: &'static [Onward],
}

/// The services in start order: a proxy's registry needs the inbound address of every
/// service it calls, so those start first.
const SERVICES: &[Service] = &[
    Service {
        name: "inventory-svc",
        namespace: "inventory",
        calls: &[],
        onward: &[],
    },
    Service {
        name: "payments-svc",
        namespace: "payments",
        calls: &[],
        onward: &[],
    },
    Service {
        name: "profile-svc",
        namespace: "profile",
        calls: &[],
        onward: &[],
    },
    // Placing an order reserves its items.
    Service {
        name: "orders-api",
        namespace: "orders",
        calls: &["inventory-svc"],
        onward: &[Onward {
            on: ("POST", "/orders"),
            service: "inventory-svc",
            method: "POST",
            path: "/reservations",
        }],
    },
    // Checking out places the order and charges for it: one request, four decisions.
    Service {
        name: "checkout-api",
        namespace: "checkout",
        calls: &["orders-api", "payments-svc"],
        onward: &[
            Onward {
                on: ("POST", "/checkout"),
                service: "orders-api",
                method: "POST",
                path: "/orders",
            },
            Onward {
                on: ("POST", "/checkout"),
                service: "payments-svc",
                method: "POST",
                path: "/charges",
            },
        ],
    },
    // orders-api is routable but no policy lets the gateway call it: the demo's deny.
    Service {
        name: "mobile-gateway",
        namespace: "mobile",
        calls: &["checkout-api", "profile-svc", "orders-api"],
        onward: &[],
    },
];

/// The running demo mesh.
pub(crate) struct Mesh {
    /// In start order.
    services: Vec<Started>,
    stop: watch::Sender<bool>,
    data_dir: PathBuf,
    trust_domain: TrustDomain,
    /// The Workload API the proxies get their SVIDs from.
    socket: PathBuf,
}

/// One running service: its app and its proxy.
struct Started {
    service: &'static Service,
    app: SocketAddr,
    app_task: JoinHandle<()>,
    bound: Bound,
    inputs: Arc<ProxyInputs>,
    proxy: JoinHandle<Result<(), ward_proxy::Error>>,
}

/// The SPIFFE id of a demo service.
fn spiffe_id(trust_domain: &TrustDomain, service: &Service) -> String {
    format!(
        "spiffe://{trust_domain}/ns/{}/sa/{}",
        service.namespace, service.name
    )
}

/// Registration entries giving the demo services their ids: only processes of `uid` running
/// this very binary (`ward up` itself, whose proxies ask for them) match.
pub(crate) fn entries(trust_domain: &TrustDomain, uid: u32) -> anyhow::Result<Vec<Entry>> {
    let exe = std::fs::read_link("/proc/self/exe").context("reading /proc/self/exe")?;
    let exe = exe
        .to_str()
        .context("the path of the ward binary is not UTF-8")?
        .to_owned();
    SERVICES
        .iter()
        .map(|service| {
            Ok(Entry {
                spiffe_id: SpiffeId::parse(&spiffe_id(trust_domain, service))?,
                selectors: [format!("unix:uid:{uid}"), format!("unix:path:{exe}")].into(),
                ttl: None,
                hint: "ward up demo".to_owned(),
            })
        })
        .collect()
}

// === impl Mesh ===

impl Mesh {
    /// Starts every demo app and its proxy, in [`SERVICES`] order.
    pub(crate) async fn start(
        data_dir: &Path,
        trust_domain: &TrustDomain,
        socket: &Path,
    ) -> anyhow::Result<Self> {
        let (stop, _) = watch::channel(false);
        let mut mesh = Self {
            services: Vec::new(),
            stop,
            data_dir: data_dir.to_owned(),
            trust_domain: trust_domain.clone(),
            socket: socket.to_owned(),
        };
        for service in SERVICES {
            // On an error `mesh` is dropped, which stops what already runs.
            let outbound = Arc::new(OnceLock::new());
            let (app, app_task) =
                app::spawn(service.name, service.onward, outbound.clone()).await?;
            let proxy = match mesh.start_proxy(service, app).await {
                Ok(proxy) => proxy,
                Err(err) => {
                    app_task.abort();
                    return Err(err);
                }
            };
            let _ = outbound.set(proxy.bound().outbound);
            let mut stopped = mesh.stop.subscribe();
            mesh.services.push(Started {
                service,
                app,
                app_task,
                bound: proxy.bound(),
                inputs: proxy.inputs(),
                proxy: tokio::spawn(proxy.wait_termination(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })),
            });
        }
        Ok(mesh)
    }

    /// Builds `service`'s proxy in front of its app at `app`.
    async fn start_proxy(&self, service: &Service, app: SocketAddr) -> anyhow::Result<Proxy> {
        let cfg = self.proxy_config(service, app)?;
        Proxy::build(cfg).await.map_err(|err| {
            proxy::build_error(err).context(format!("starting the proxy of {}", service.name))
        })
    }

    /// The configuration of `service`'s proxy; every service it calls is already running.
    fn proxy_config(&self, service: &Service, app: SocketAddr) -> anyhow::Result<Config> {
        let (data_dir, trust_domain) = (self.data_dir.as_path(), &self.trust_domain);
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut cfg = Config {
            node: service.name.to_owned(),
            service: service.name.to_owned(),
            listen: Listen {
                inbound: any_port,
                outbound: any_port,
                admin: any_port,
            },
            app,
            identity: IdentityConfig::WorkloadApi(WorkloadApiIdentity {
                socket: self.socket.clone(),
                spiffe_id: Some(spiffe_id(trust_domain, service)),
                startup_timeout: DEFAULT_IDENTITY_WAIT,
            }),
            policies: policies_dir(data_dir),
            audit: AuditConfig {
                store: audit_store(data_dir),
                spool_dir: data_dir.join("audit-spool").join(service.name),
                // One key signs every chain's checkpoints, where `ward audit verify` looks.
                key: Some(data_dir.join("audit.key")),
                ..AuditConfig::default()
            },
            ..Config::default()
        };
        for callee in service.calls {
            let target = self
                .services
                .iter()
                .find(|s| s.service.name == *callee)
                .with_context(|| {
                    format!("{} calls {callee}, which is not running", service.name)
                })?;
            cfg.registry.services.insert(
                target.service.name.to_owned(),
                ServiceEntry {
                    endpoints: vec![EndpointEntry {
                        address: target.bound.inbound,
                        spiffe_id: spiffe_id(trust_domain, target.service),
                        labels: Default::default(),
                    }],
                    subsets: Default::default(),
                    traffic: Default::default(),
                },
            );
        }
        Ok(cfg)
    }

    /// One row per service: its identity, its app and its proxy's listeners.
    pub(crate) fn table(&self) -> Table {
        let mut table = Table::new(["service", "app", "inbound (mTLS)", "outbound", "admin"]);
        for s in &self.services {
            table.row([
                s.service.name.to_owned(),
                s.app.to_string(),
                s.bound.inbound.to_string(),
                s.bound.outbound.to_string(),
                s.bound.admin.to_string(),
            ]);
        }
        table
    }

    /// One object per service: its id, its app and its proxy's listeners.
    pub(crate) fn to_json(&self) -> Vec<serde_json::Value> {
        self.services
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.service.name,
                    "spiffe_id": spiffe_id(&self.trust_domain, s.service),
                    "app": s.app,
                    "inbound": s.bound.inbound,
                    "outbound": s.bound.outbound,
                    "admin": s.bound.admin,
                })
            })
            .collect()
    }

    /// Commands that show an allowed call, a denied one, a call that crosses four proxies, and
    /// the audit records of them all.
    pub(crate) fn try_lines(&self) -> Vec<String> {
        let Some(gateway) = self
            .services
            .iter()
            .find(|s| s.service.name == "mobile-gateway")
            .map(|s| s.bound.outbound)
        else {
            return Vec::new();
        };
        vec![
            "try, as mobile-gateway (its app would send these through its proxy):".to_owned(),
            format!("  curl -x http://{gateway} http://checkout-api/cart      # allowed by policy"),
            format!(
                "  curl -x http://{gateway} http://orders-api/orders      # 403: denied by policy"
            ),
            format!(
                "  curl -x http://{gateway} -X POST http://checkout-api/checkout   # four hops, one request id"
            ),
            format!(
                "  ward audit query --store {} --since 10m   # every decision",
                shell_word(&audit_store(&self.data_dir))
            ),
        ]
    }

    /// Reloads every proxy's policies (on SIGHUP); a repository that fails to load is logged
    /// and the proxies keep the policies they have.
    pub(crate) fn reload_policies(&self) {
        for s in &self.services {
            let name = s.service.name;
            match s.inputs.reload_policies() {
                Ok(revision) => tracing::info!(service = name, %revision, "policies reloaded"),
                Err(err) => tracing::error!(
                    service = name,
                    error = %err,
                    "policy reload failed; keeping the current policies"
                ),
            }
        }
    }

    /// Stops every proxy (each drains its in-flight requests), then its app.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.send_replace(true);
        let mut first_error = None;
        for s in std::mem::take(&mut self.services) {
            let name = s.service.name;
            let result = s
                .proxy
                .await
                .context("a proxy task panicked")
                .and_then(|r| r.with_context(|| format!("the proxy of {name}")));
            s.app_task.abort();
            if let Err(err) = result {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Mesh {
    // A mesh dropped without `stop` (a later service failed to start): stop what runs.
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for s in &self.services {
            s.app_task.abort();
        }
    }
}

/// `word` as one shell word: single-quoted when it holds anything but plain characters.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-._/:=@%+,".contains(c);
    if word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The audit store every demo proxy writes to.
pub(crate) fn audit_store(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("audit.db").display())
}

/// Where `ward up` keeps the demo policies.
pub(crate) fn policies_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("policies")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_url_is_quoted_for_the_shell_only_when_it_needs_it() {
        assert_eq!(
            shell_word("sqlite://ward-data/audit.db"),
            "sqlite://ward-data/audit.db"
        );
        assert_eq!(
            shell_word("sqlite://my data/it's.db"),
            r"'sqlite://my data/it'\''s.db'"
        );
    }

    #[test]
    fn every_service_calls_only_services_that_start_before_it() {
        for (i, service) in SERVICES.iter().enumerate() {
            for callee in service.calls {
                assert!(
                    SERVICES[..i].iter().any(|s| s.name == *callee),
                    "{} calls {callee}",
                    service.name
                );
            }
        }
    }

    #[test]
    fn every_onward_call_goes_to_a_service_the_proxy_routes_to() {
        for service in SERVICES {
            for call in service.onward {
                assert!(
                    service.calls.contains(&call.service),
                    "{} calls {} onward but cannot route to it",
                    service.name,
                    call.service
                );
            }
        }
    }

    #[test]
    fn every_demo_service_is_a_service_of_the_policy_repository() {
        let services = include_str!("../../../policies/entities/services.json");
        for service in SERVICES {
            assert!(
                services.contains(&format!(r#""id": "{}""#, service.name))
                    && services.contains(&format!(r#""namespace": "{}""#, service.namespace)),
                "{}",
                service.name
            );
        }
    }
}
