//! Ward's per-hop proxy: every call between workloads goes through two of these.
//!
//! This crate owns the data path of one workload:
//! - **inbound** ([`inbound`]): terminates mutual TLS with the workload's SVID, requires a
//!   client SVID, normalizes the path, asks the Cedar engine, writes an audit record, and
//!   forwards exactly the authorized path to the local app;
//! - **outbound** ([`outbound`]): takes plain HTTP from the local app, resolves the destination
//!   service in the [`config::Registry`], and calls one of its endpoints over mutual TLS,
//!   checking the SPIFFE id it presents, through the traffic-policy stack of [`stack`]
//!   (timeouts, retries within a budget, circuit breaking, outlier ejection, load balancing,
//!   splits, header routes, fault injection, mirroring);
//! - **identity** ([`identity`]): the SVID and bundles from files or the Workload API,
//!   swapped on rotation without dropping connections;
//! - **telemetry** ([`metrics`], [`admin`]): Prometheus metrics, health, readiness and the
//!   effective config on the admin listener, one JSON access-log line per request
//!   (tracing target `access`), and trace spans exported with OTLP ([`trace`]).
//!
//! [`Proxy::build`] binds everything; [`Proxy::wait_termination`] runs it until shutdown and
//! drains in-flight requests.
//!
//! # Feature flags
//!
//! - `test-util`: `test_util`, a throwaway CA, echo apps and helpers for tests.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod config;
pub mod ctx;
mod headers;
pub mod identity;
pub mod inbound;
pub mod metrics;
pub mod outbound;
mod proxy;
pub mod respond;
mod serve;
pub mod stack;
pub mod tls;
pub mod trace;
pub mod traffic;
pub mod upstream;

#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
#[cfg(test)]
mod tests;

pub use config::{Config, ConfigError, Registry};
pub use ctx::{ConnCtx, ListenerKind, ReqCtx};
pub use identity::{Identity, IdentityError};
pub use proxy::{Bound, Proxy, ProxyInputs};
pub use respond::RequestError;

/// The body every proxy response carries: streamed from upstream or built here.
pub type BoxBody = http_body_util::combinators::BoxBody<bytes::Bytes, BoxError>;

/// The error type of tower middleware; [`respond`] turns it into a status.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can stop the proxy from starting or keep it from running.
///
/// Failures of one request are [`RequestError`]s: they become an HTTP answer, not an exit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is not acceptable.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// A listener could not bind.
    #[error("binding the {listener} listener on `{addr}`: {source}")]
    Bind {
        /// Which listener.
        listener: ListenerKind,
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The SVID or bundle could not be obtained or used.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The policy repository could not be loaded.
    #[error("policies: {0}")]
    Policies(#[from] ward_authz::Error),
    /// The audit log could not be opened.
    #[error("audit: {0}")]
    Audit(#[from] ward_audit::Error),
    /// A TLS configuration could not be built.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The OTLP trace exporter could not be set up.
    #[error("tracing: {0}")]
    Trace(#[from] trace::TraceError),
}
