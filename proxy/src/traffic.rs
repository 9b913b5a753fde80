//! Traffic policy for outbound calls: the per-service [`Target`] and the middleware that
//! [`crate::stack::build_http_stack`] assembles from it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower::retry::budget::TpsBudget;
use tower::util::BoxCloneSyncService;
use ward_identity::SpiffeId;

use crate::config::{ServiceEntry, TrafficPolicy};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::respond::RequestError;
use crate::upstream::EndpointClient;
use crate::{BoxBody, BoxError};

pub mod balance;
pub mod breaker;
pub mod fault;
pub mod mirror;
pub mod retry;

pub use balance::Pool;

/// A request as the outbound stack carries it: the body is buffered so it can be retried and
/// mirrored.
pub type HttpRequest = Request<Full<Bytes>>;
/// A response from upstream (streamed) or from the proxy.
pub type HttpResponse = Response<BoxBody>;
/// The assembled stack for one destination service.
pub type HttpService = BoxCloneSyncService<HttpRequest, HttpResponse, BoxError>;
/// The future every custom middleware returns.
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

/// How long the retry budget remembers requests.
const BUDGET_TTL: Duration = Duration::from_secs(10);

/// One destination service, ready to be called: its endpoints, policy and shared state.
#[derive(Debug)]
pub struct Target {
    /// The service name.
    pub name: Arc<str>,
    /// Its traffic policy.
    pub policy: TrafficPolicy,
    /// Its endpoints.
    pub pool: Pool,
    /// Shared by every call to the service: retries spend from it.
    pub budget: TpsBudget,
    /// The service's `max_requests` slots.
    pub requests: Arc<Semaphore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// Where one call goes: picked once per call, so every retry and the metrics agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `header:<subset>`, `split:<subset>` or `default`: the metric label.
    pub name: Arc<str>,
    /// The subset, or every endpoint when `None`.
    pub subset: Option<Arc<str>>,
}

// === impl Target ===

impl Target {
    /// Builds the endpoints' mTLS clients and the shared state of `entry`.
    pub fn new(
        name: &str,
        entry: &ServiceEntry,
        identity: &Identity,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::Error> {
        let name: Arc<str> = Arc::from(name);
        let policy = entry.traffic.clone();
        let connections = Arc::new(Semaphore::new(policy.circuit_breaker.max_connections));
        let endpoints = entry
            .endpoints
            .iter()
            .map(|ep| {
                let id =
                    SpiffeId::parse(&ep.spiffe_id).map_err(|e| crate::ConfigError::Invalid {
                        field: format!("registry.services.{name}.endpoints.spiffe_id"),
                        reason: e.to_string(),
                    })?;
                let client = EndpointClient::new(
                    identity,
                    name.clone(),
                    ep.address,
                    id.clone(),
                    connections.clone(),
                    metrics.clone(),
                )?;
                Ok((client, id, ep.labels.clone()))
            })
            .collect::<Result<Vec<_>, crate::Error>>()?;
        let pool = Pool::new(
            name.clone(),
            endpoints,
            &entry.subsets,
            policy.load_balancer,
            policy.outlier_detection.clone(),
            metrics.clone(),
        );
        let r = &policy.retries;
        Ok(Self {
            budget: TpsBudget::new(BUDGET_TTL, r.budget_min_per_sec, r.budget_percent / 100.0),
            requests: Arc::new(Semaphore::new(policy.circuit_breaker.max_requests)),
            name,
            pool,
            policy,
            metrics,
        })
    }

    /// Picks the route: the first header route that matches, else a weighted draw from
    /// `split`, else every endpoint.
    pub fn route(&self, headers: &HeaderMap) -> Route {
        let matched = self.policy.routes.iter().find(|r| {
            r.headers.iter().all(|(name, want)| {
                headers
                    .get(name.as_str())
                    .is_some_and(|v| v.as_bytes() == want.as_bytes())
            })
        });
        if let Some(r) = matched {
            return Route {
                name: format!("header:{}", r.subset).into(),
                subset: Some(r.subset.as_str().into()),
            };
        }
        let total: u64 = self.policy.split.iter().map(|w| u64::from(w.weight)).sum();
        if total > 0 {
            let mut draw = fastrand::u64(..total);
            for w in &self.policy.split {
                let weight = u64::from(w.weight);
                if draw < weight {
                    return Route {
                        name: format!("split:{}", w.subset).into(),
                        subset: Some(w.subset.as_str().into()),
                    };
                }
                draw -= weight;
            }
        }
        Route {
            name: "default".into(),
            subset: None,
        }
    }
}

/// The innermost service: picks an endpoint of the call's route and sends the call to it.
#[derive(Debug, Clone)]
pub struct Balance {
    target: Arc<Target>,
}

// === impl Balance ===

impl Balance {
    /// Balances over `target`'s endpoints.
    pub fn new(target: Arc<Target>) -> Self {
        Self { target }
    }
}

impl tower::Service<HttpRequest> for Balance {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let target = self.target.clone();
        Box::pin(async move {
            let subset = req
                .extensions()
                .get::<Route>()
                .and_then(|r| r.subset.clone());
            let endpoint = target.pool.pick(subset.as_deref())?;
            Ok(target.pool.call(&endpoint, req).await?)
        })
    }
}

/// Copies a buffered request (method, URI, version, headers, body and the route).
pub fn clone_request(req: &HttpRequest) -> HttpRequest {
    let mut copy = Request::new(req.body().clone());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    if let Some(route) = req.extensions().get::<Route>() {
        copy.extensions_mut().insert(route.clone());
    }
    copy
}

/// Runs a closure when dropped: cleanup that must happen even when a call is cancelled.
pub(crate) struct Defer<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Defer<F> {
    pub(crate) fn new(f: F) -> Self {
        Self(Some(f))
    }
}

impl<F: FnOnce()> Drop for Defer<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Turns a middleware's own error into the boxed error the stack carries.
pub(crate) fn boxed(err: RequestError) -> BoxError {
    Box::new(err)
}
