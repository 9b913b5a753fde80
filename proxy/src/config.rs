//! The proxy's configuration: listeners, identity, policies, audit, and the service registry
//! with its traffic policy (documented field by field in docs/CONFIG.md).
//!
//! [`Registry`] is the one type for "where do services live and how do we call them": the YAML
//! file fills it today, and a control plane can stream the same structure later
//! ([`crate::ProxyInputs::update_registry`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ward_identity::SpiffeId;

pub mod duration;

/// Everything `ward proxy` reads from its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This proxy's name: the `node` of its audit records and the name of its audit chain.
    pub node: String,
    /// The service this proxy fronts: the Cedar resource (`Ward::Service`) of inbound calls and
    /// the `source` label of outbound metrics.
    pub service: String,
    /// Where the three listeners bind.
    pub listen: Listen,
    /// The local app that inbound requests are forwarded to (plain HTTP).
    pub app: SocketAddr,
    /// Where this proxy's SVID and trust bundle come from.
    #[serde(with = "serde_norway::with::singleton_map")]
    pub identity: IdentityConfig,
    /// The policy repository (schema, `*.cedar`, entities, routes) inbound calls are decided by.
    pub policies: PathBuf,
    /// Where audit records go.
    pub audit: AuditConfig,
    /// Longest time a TLS handshake may take before the connection is dropped.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish before connections are cut.
    #[serde(with = "duration")]
    pub drain_timeout: Duration,
    /// Longest time the local app may take to answer an inbound request (504 after).
    #[serde(with = "duration")]
    pub app_timeout: Duration,
    /// Largest outbound request body, in bytes; bodies are buffered so that they can be retried
    /// and mirrored (413 beyond this).
    pub max_request_body: usize,
    /// The destination services the local app may call, with their endpoints and traffic policy.
    pub registry: Registry,
    /// Trace export (off unless an OTLP endpoint is set).
    pub tracing: TracingConfig,
}

/// Listen addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// mTLS from other proxies (default `127.0.0.1:15006`; `0.0.0.0:15006` to take mesh traffic).
    pub inbound: SocketAddr,
    /// Plain HTTP from the local app (default `127.0.0.1:15001`).
    pub outbound: SocketAddr,
    /// `/metrics`, `/healthz`, `/ready`, `/config` (default `127.0.0.1:15000`).
    pub admin: SocketAddr,
}

/// Where the SVID and bundle come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum IdentityConfig {
    /// PEM files, read at start and again on SIGHUP.
    Files(FilesIdentity),
    /// The SPIFFE Workload API (`ward agent`); rotations are applied as they stream in.
    WorkloadApi(WorkloadApiIdentity),
}

/// SVID and bundle from PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesIdentity {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's PKCS#8 private key.
    pub key: PathBuf,
    /// The trust bundle: the X.509 authorities of the SVID's trust domain.
    pub bundle: PathBuf,
}

/// SVID and bundle from the Workload API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadApiIdentity {
    /// The agent's Unix socket.
    pub socket: PathBuf,
    /// Which of the SVIDs the agent offers to use; the first when unset.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// How long to wait for the first SVID at start.
    #[serde(default = "default_identity_wait", with = "duration")]
    pub startup_timeout: Duration,
}

/// The audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Record every decision. Turning it off is for measuring what auditing costs; the proxy
    /// warns at start while it is off.
    pub enabled: bool,
    /// `sqlite://PATH`, `postgres://…`, `jsonl://PATH` or `stdout`.
    pub store: String,
    /// Where records are spooled while the store is down.
    pub spool_dir: PathBuf,
    /// The Ed25519 key that signs checkpoints; created (0600) when missing. Unsigned when unset.
    pub key: Option<PathBuf>,
    /// Refuse a request (503) when its record cannot be made durable.
    pub strict: bool,
    /// Longest a record waits for more to share its store transaction (group commit).
    #[serde(with = "duration")]
    pub flush_interval: Duration,
}

/// Trace export: one span per proxied request, sent to an OpenTelemetry collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317` (plain HTTP/2, no
    /// TLS); no spans are made when unset.
    pub otlp_endpoint: Option<String>,
    /// Longest time one export call may take.
    #[serde(with = "duration")]
    pub export_timeout: Duration,
}

/// The services the local app may call. The control plane will stream this same type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// By service name (what the app puts in the `Host` header or the proxy URL).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceEntry>,
}

/// One destination service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// The service's proxies.
    pub endpoints: Vec<EndpointEntry>,
    /// Named subsets, each the endpoints whose labels include all of these.
    #[serde(default)]
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// How calls to this service are made.
    #[serde(default)]
    pub traffic: TrafficPolicy,
}

/// One endpoint: a destination proxy's inbound listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointEntry {
    /// Its inbound address.
    pub address: SocketAddr,
    /// The SPIFFE id its certificate must present; any other id fails the handshake.
    pub spiffe_id: String,
    /// Labels subsets select on (e.g. `version: v2`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How calls to one service are made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrafficPolicy {
    /// Deadline for the whole call, retries and backoff included (504 after).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Deadline for one attempt; unset means only `timeout` applies.
    #[serde(with = "duration::option")]
    pub per_try_timeout: Option<Duration>,
    /// When and how often to try again.
    pub retries: RetryPolicy,
    /// Limits that fail calls fast (503) instead of queueing without bound.
    pub circuit_breaker: CircuitBreaker,
    /// Ejecting endpoints that keep failing; off when unset.
    pub outlier_detection: Option<OutlierDetection>,
    /// How an endpoint is picked within a subset.
    pub load_balancer: LoadBalancer,
    /// Header matches that send a call to a subset; the first match wins, before `split`.
    pub routes: Vec<HeaderRoute>,
    /// Weighted split between subsets (e.g. canary 10%); all endpoints when empty.
    pub split: Vec<WeightedSubset>,
    /// Faults injected into a share of calls, for resilience testing.
    pub fault: Option<Fault>,
    /// Copies a share of calls to a shadow subset and ignores its answers.
    pub mirror: Option<Mirror>,
}

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Tries in total, the first included (1 = never retry).
    pub attempts: u32,
    /// Which failures are retried.
    pub retry_on: BTreeSet<RetryOn>,
    /// Backoff before the first retry; it doubles per retry, with random jitter.
    #[serde(with = "duration")]
    pub backoff: Duration,
    /// Longest backoff.
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// Retries may add at most this percentage of extra load…
    pub budget_percent: f32,
    /// …but this many retries per second are always allowed.
    pub budget_min_per_sec: u32,
}

/// A retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// The TCP connection or TLS handshake to the endpoint failed (nothing was sent).
    ConnectFailure,
    /// The endpoint answered 500–599.
    #[serde(rename = "5xx")]
    Status5xx,
    /// The connection or stream was reset before a response arrived.
    Reset,
    /// The per-try timeout fired.
    PerTryTimeout,
}

/// Circuit-breaker limits, per destination service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreaker {
    /// Open connections to the service's endpoints.
    pub max_connections: usize,
    /// Calls waiting for a slot under `max_requests`.
    pub max_pending: usize,
    /// Calls in flight.
    pub max_requests: usize,
}

/// Outlier detection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Eject after this many 5xx answers or connect failures in a row.
    pub consecutive_failures: u32,
    /// First ejection's length; the n-th ejection of an endpoint lasts n times this.
    #[serde(with = "duration")]
    pub base_ejection: Duration,
    /// Never eject more than this percentage of a service's endpoints (at least one stays).
    pub max_ejection_percent: u8,
}

/// Load-balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Two random endpoints; the one with fewer calls in flight wins.
    LeastRequest,
}

/// Sends calls whose headers match to a subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRoute {
    /// Header name (any case) → exact value; all must match.
    pub headers: BTreeMap<String, String>,
    /// The subset matching calls go to.
    pub subset: String,
}

/// One side of a weighted split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedSubset {
    /// The subset.
    pub subset: String,
    /// Its relative weight.
    pub weight: u32,
}

/// Fault injection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Delay a share of calls.
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    /// Answer a share of calls with an error status, without calling the service.
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

/// An injected delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    /// Share of calls delayed, 0–100.
    pub percent: f64,
    /// How long.
    #[serde(with = "duration")]
    pub duration: Duration,
}

/// An injected abort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    /// Share of calls aborted, 0–100.
    pub percent: f64,
    /// The status they get.
    pub status: u16,
}

/// Request mirroring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The subset that receives the copies.
    pub subset: String,
    /// Share of calls copied, 0–100.
    #[serde(default = "hundred")]
    pub percent: f64,
}

/// Why a configuration is not acceptable (after it parsed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field's value is out of range or inconsistent.
    #[error("`{field}`: {reason}")]
    Invalid {
        /// The field, as a path (`registry.services.orders-api.split`).
        field: String,
        /// What is wrong.
        reason: String,
    },
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        Self {
            node: "ward-proxy".to_owned(),
            service: String::new(),
            listen: Listen::default(),
            app: SocketAddr::from(([127, 0, 0, 1], 8080)),
            identity: IdentityConfig::WorkloadApi(WorkloadApiIdentity {
                socket: PathBuf::from("ward-data/agent.sock"),
                spiffe_id: None,
                startup_timeout: default_identity_wait(),
            }),
            policies: PathBuf::from("policies"),
            audit: AuditConfig::default(),
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            app_timeout: Duration::from_secs(30),
            max_request_body: 4 * 1024 * 1024,
            registry: Registry::default(),
            tracing: TracingConfig::default(),
        }
    }
}

impl Config {
    /// Checks what serde cannot: names, ids, ranges, and references between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.trim().is_empty() {
            return Err(invalid("node", "must not be empty"));
        }
        if self.service.trim().is_empty() {
            return Err(invalid(
                "service",
                "must name the service this proxy fronts",
            ));
        }
        if let IdentityConfig::WorkloadApi(w) = &self.identity
            && let Some(id) = &w.spiffe_id
        {
            SpiffeId::parse(id)
                .map_err(|e| invalid("identity.workload_api.spiffe_id", e.to_string()))?;
        }
        if self.max_request_body == 0 {
            return Err(invalid("max_request_body", "must be at least 1"));
        }
        if self.audit.flush_interval.is_zero()
            || self.audit.flush_interval > Duration::from_secs(60)
        {
            return Err(invalid(
                "audit.flush_interval",
                "must be between 1ms and 60s",
            ));
        }
        if self.audit.strict && !self.audit.enabled {
            return Err(invalid(
                "audit.strict",
                "cannot be true while audit.enabled is false",
            ));
        }
        self.tracing.validate()?;
        self.registry.validate()
    }

    /// The config as JSON with secrets removed, for `/config` and the startup log line.
    pub fn redacted(&self) -> serde_json::Value {
        let mut copy = self.clone();
        copy.audit.store = ward_audit::store::redact(&copy.audit.store);
        serde_json::to_value(&copy).unwrap_or(serde_json::Value::Null)
    }
}

// === impl Listen ===

impl Default for Listen {
    fn default() -> Self {
        Self {
            inbound: SocketAddr::from(([127, 0, 0, 1], 15006)),
            outbound: SocketAddr::from(([127, 0, 0, 1], 15001)),
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
        }
    }
}

// === impl AuditConfig ===

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store: "sqlite://ward-data/audit.db".to_owned(),
            spool_dir: PathBuf::from("ward-data/audit-spool"),
            key: None,
            strict: false,
            flush_interval: Duration::from_millis(100),
        }
    }
}

// === impl TracingConfig ===

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TracingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|e| invalid("tracing.otlp_endpoint", format!("not a URL: {e}")))?;
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(invalid(
                    "tracing.otlp_endpoint",
                    "must be `http://HOST:PORT` (OTLP/gRPC without TLS)",
                ));
            }
        }
        if self.export_timeout.is_zero() {
            return Err(invalid("tracing.export_timeout", "must not be 0"));
        }
        Ok(())
    }
}

// === impl Registry ===

impl Registry {
    /// Checks every service: ids parse, subsets exist and are non-empty, shares are in range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, svc) in &self.services {
            svc.validate(&format!("registry.services.{name}"))?;
        }
        Ok(())
    }
}

// === impl ServiceEntry ===

impl ServiceEntry {
    fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(invalid(format!("{at}.endpoints"), "needs at least one"));
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            SpiffeId::parse(&ep.spiffe_id)
                .map_err(|e| invalid(format!("{at}.endpoints[{i}].spiffe_id"), e.to_string()))?;
        }
        for (subset, labels) in &self.subsets {
            if !self.endpoints.iter().any(|e| selects(labels, &e.labels)) {
                return Err(invalid(
                    format!("{at}.subsets.{subset}"),
                    "selects no endpoint",
                ));
            }
        }
        let known = |s: &str, field: String| {
            if self.subsets.contains_key(s) {
                Ok(())
            } else {
                Err(invalid(field, format!("unknown subset `{s}`")))
            }
        };
        let t = &self.traffic;
        for (i, r) in t.routes.iter().enumerate() {
            known(&r.subset, format!("{at}.traffic.routes[{i}].subset"))?;
        }
        for (i, w) in t.split.iter().enumerate() {
            known(&w.subset, format!("{at}.traffic.split[{i}].subset"))?;
        }
        if !t.split.is_empty() && t.split.iter().all(|w| w.weight == 0) {
            return Err(invalid(
                format!("{at}.traffic.split"),
                "weights add up to 0",
            ));
        }
        if let Some(m) = &t.mirror {
            known(&m.subset, format!("{at}.traffic.mirror.subset"))?;
            percent(m.percent, format!("{at}.traffic.mirror.percent"))?;
        }
        t.validate_limits(at)
    }
}

// === impl TrafficPolicy ===

impl Default for TrafficPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            per_try_timeout: None,
            retries: RetryPolicy::default(),
            circuit_breaker: CircuitBreaker::default(),
            outlier_detection: None,
            load_balancer: LoadBalancer::default(),
            routes: Vec::new(),
            split: Vec::new(),
            fault: None,
            mirror: None,
        }
    }
}

impl TrafficPolicy {
    fn validate_limits(&self, at: &str) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(invalid(format!("{at}.traffic.timeout"), "must not be 0"));
        }
        if self.per_try_timeout.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                format!("{at}.traffic.per_try_timeout"),
                "must not be 0",
            ));
        }
        let r = &self.retries;
        if r.attempts == 0 {
            return Err(invalid(
                format!("{at}.traffic.retries.attempts"),
                "must be at least 1",
            ));
        }
        if !(0.0..=1000.0).contains(&r.budget_percent) {
            return Err(invalid(
                format!("{at}.traffic.retries.budget_percent"),
                "must be between 0 and 1000",
            ));
        }
        if r.budget_min_per_sec >= 1_000_000 {
            return Err(invalid(
                format!("{at}.traffic.retries.budget_min_per_sec"),
                "must be below 1000000",
            ));
        }
        if r.max_backoff < r.backoff {
            return Err(invalid(
                format!("{at}.traffic.retries.max_backoff"),
                "must not be shorter than `backoff`",
            ));
        }
        let cb = &self.circuit_breaker;
        if cb.max_connections == 0 || cb.max_requests == 0 {
            return Err(invalid(
                format!("{at}.traffic.circuit_breaker"),
                "`max_connections` and `max_requests` must be at least 1",
            ));
        }
        if let Some(o) = &self.outlier_detection {
            if o.consecutive_failures == 0 {
                return Err(invalid(
                    format!("{at}.traffic.outlier_detection.consecutive_failures"),
                    "must be at least 1",
                ));
            }
            if o.max_ejection_percent > 100 {
                return Err(invalid(
                    format!("{at}.traffic.outlier_detection.max_ejection_percent"),
                    "must be between 0 and 100",
                ));
            }
        }
        if let Some(f) = &self.fault {
            if let Some(d) = &f.delay {
                percent(d.percent, format!("{at}.traffic.fault.delay.percent"))?;
            }
            if let Some(a) = &f.abort {
                percent(a.percent, format!("{at}.traffic.fault.abort.percent"))?;
                if !(200..=599).contains(&a.status) {
                    return Err(invalid(
                        format!("{at}.traffic.fault.abort.status"),
                        "must be an HTTP status between 200 and 599",
                    ));
                }
            }
        }
        Ok(())
    }
}

// === impl RetryPolicy ===

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            retry_on: BTreeSet::from([RetryOn::ConnectFailure, RetryOn::Reset]),
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            budget_percent: 20.0,
            budget_min_per_sec: 10,
        }
    }
}

// === impl CircuitBreaker ===

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
        }
    }
}

// === impl OutlierDetection ===

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 50,
        }
    }
}

/// Whether an endpoint with `labels` belongs to a subset selecting `selector`.
pub(crate) fn selects(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn percent(value: f64, field: String) -> Result<(), ConfigError> {
    if (0.0..=100.0).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, "must be between 0 and 100"))
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// How long a proxy waits for its first SVID from the Workload API unless configured.
pub const DEFAULT_IDENTITY_WAIT: Duration = Duration::from_secs(30);

fn default_identity_wait() -> Duration {
    DEFAULT_IDENTITY_WAIT
}

fn hundred() -> f64 {
    100.0
}

#[cfg(test)]
mod tests;
