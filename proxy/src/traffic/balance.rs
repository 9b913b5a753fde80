//! Endpoints of one service, their subsets, load balancing and outlier ejection.
//!
//! Hand-rolled rather than tower's `p2c::Balance`: that one balances over a `Discover` stream
//! of ready services and has no notion of ejecting an endpoint for a while or of subsets
//! sharing endpoints. Picking is two loads and an atomic add, so the code stays short.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use ward_identity::SpiffeId;

use crate::BoxBody;
use crate::config::{LoadBalancer, OutlierDetection, selects};
use crate::metrics::{DestinationLabels, EndpointLabels, Metrics};
use crate::respond::RequestError;
use crate::upstream::EndpointClient;

/// All endpoints of one destination service.
#[derive(Debug)]
pub struct Pool {
    service: Arc<str>,
    endpoints: Vec<Arc<Endpoint>>,
    /// Every endpoint, then each named subset, as indices into `endpoints`.
    all: Members,
    subsets: BTreeMap<String, Members>,
    lb: LoadBalancer,
    outlier: Option<OutlierDetection>,
    metrics: Arc<Metrics>,
}

/// One endpoint and its health.
#[derive(Debug)]
pub struct Endpoint {
    /// Its pooled mTLS client.
    pub client: EndpointClient,
    /// The id it must present.
    pub id: SpiffeId,
    in_flight: AtomicUsize,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Members {
    indices: Vec<usize>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    times_ejected: u32,
}

/// What one attempt's outcome says about the endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Anything but the below.
    Success,
    /// A 5xx answer, a failed connect or a reset.
    Failure,
}

// === impl Pool ===

impl Pool {
    /// A pool over `endpoints` (client, id, labels) with named subsets selected by labels.
    pub fn new(
        service: Arc<str>,
        endpoints: Vec<(EndpointClient, SpiffeId, BTreeMap<String, String>)>,
        subsets: &BTreeMap<String, BTreeMap<String, String>>,
        lb: LoadBalancer,
        outlier: Option<OutlierDetection>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let members = |pick: &dyn Fn(&BTreeMap<String, String>) -> bool| Members {
            indices: endpoints
                .iter()
                .enumerate()
                .filter(|(_, (_, _, labels))| pick(labels))
                .map(|(i, _)| i)
                .collect(),
            next: AtomicUsize::new(0),
        };
        let all = members(&|_| true);
        let subsets = subsets
            .iter()
            .map(|(name, selector)| (name.clone(), members(&|labels| selects(selector, labels))))
            .collect();
        let endpoints = endpoints
            .into_iter()
            .map(|(client, id, _)| {
                Arc::new(Endpoint {
                    client,
                    id,
                    in_flight: AtomicUsize::new(0),
                    health: Mutex::new(Health::default()),
                })
            })
            .collect();
        Self {
            service,
            endpoints,
            all,
            subsets,
            lb,
            outlier,
            metrics,
        }
    }

    /// The service name.
    pub fn service(&self) -> &Arc<str> {
        &self.service
    }

    /// Picks a healthy endpoint of `subset` (every endpoint when `None`).
    pub fn pick(&self, subset: Option<&str>) -> Result<Arc<Endpoint>, RequestError> {
        let members = match subset {
            Some(name) => self
                .subsets
                .get(name)
                .ok_or_else(|| RequestError::Bug(format!("unknown subset `{name}`")))?,
            None => &self.all,
        };
        let now = Instant::now();
        let healthy: Vec<&Arc<Endpoint>> = members
            .indices
            .iter()
            .filter_map(|&i| self.endpoints.get(i))
            .filter(|e| !self.is_ejected(e, now))
            .collect();
        let chosen = match (self.lb, healthy.len()) {
            (_, 0) => None,
            (_, 1) => healthy.first(),
            (LoadBalancer::RoundRobin, n) => {
                healthy.get(members.next.fetch_add(1, Ordering::Relaxed) % n)
            }
            (LoadBalancer::LeastRequest, n) => {
                // Power of two choices: two distinct random endpoints, the less loaded wins.
                let a = fastrand::usize(..n);
                let b = (a + 1 + fastrand::usize(..n - 1)) % n;
                let (ea, eb) = (healthy.get(a), healthy.get(b));
                match (ea, eb) {
                    (Some(x), Some(y)) if y.in_flight() < x.in_flight() => Some(y),
                    (x, _) => x,
                }
            }
        };
        chosen
            .map(|e| Arc::clone(e))
            .ok_or_else(|| RequestError::NoHealthyEndpoints(self.service.to_string()))
    }

    /// Sends `req` to `endpoint`, tracking its load and health.
    pub async fn call(
        &self,
        endpoint: &Endpoint,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<BoxBody>, RequestError> {
        let result = {
            let _in_flight = InFlight::enter(&endpoint.in_flight);
            endpoint.client.send(req).await
        };
        let outcome = match &result {
            Ok(resp) if resp.status().is_server_error() => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(RequestError::UpstreamConnect(_) | RequestError::UpstreamReset(_)) => {
                Outcome::Failure
            }
            Err(_) => Outcome::Success,
        };
        self.report(endpoint, outcome);
        result
    }

    /// Updates `endpoint`'s health; ejects it after enough consecutive failures, unless that
    /// would eject more than `max_ejection_percent` of the service.
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        let Some(od) = &self.outlier else { return };
        let now = Instant::now();
        let ejected_elsewhere = self
            .endpoints
            .iter()
            .filter(|e| !std::ptr::eq(e.as_ref(), endpoint) && self.is_ejected(e, now))
            .count();
        let mut h = lock(&endpoint.health);
        if outcome == Outcome::Success {
            h.consecutive_failures = 0;
            return;
        }
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        let already = h.ejected_until.is_some_and(|t| t > now);
        let allowed = self.endpoints.len() * usize::from(od.max_ejection_percent) / 100;
        if already
            || h.consecutive_failures < od.consecutive_failures
            || ejected_elsewhere + 1 > allowed
        {
            return;
        }
        h.times_ejected = h.times_ejected.saturating_add(1);
        h.consecutive_failures = 0;
        h.ejected_until = Some(now + od.base_ejection * h.times_ejected);
        drop(h);
        let addr = endpoint.client.addr();
        tracing::warn!(service = %self.service, endpoint = %addr, "endpoint ejected by outlier detection");
        self.metrics
            .ejections
            .get_or_create(&EndpointLabels {
                destination: self.service.to_string(),
                endpoint: addr.to_string(),
            })
            .inc();
        self.update_ejected_gauge(now);
    }

    /// The addresses ejected right now.
    pub fn ejected(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.endpoints
            .iter()
            .filter(|e| self.is_ejected(e, now))
            .map(|e| e.client.addr())
            .collect()
    }

    fn is_ejected(&self, endpoint: &Endpoint, now: Instant) -> bool {
        let mut h = lock(&endpoint.health);
        match h.ejected_until {
            Some(until) if until > now => true,
            Some(_) => {
                // The ejection ran out: back in rotation with a clean slate.
                h.ejected_until = None;
                h.consecutive_failures = 0;
                drop(h);
                tracing::info!(service = %self.service, endpoint = %endpoint.client.addr(), "endpoint returns from ejection");
                self.update_ejected_gauge(now);
                false
            }
            None => false,
        }
    }

    fn update_ejected_gauge(&self, now: Instant) {
        let n = self
            .endpoints
            .iter()
            .filter(|e| self.is_ejected(e, now))
            .count();
        self.metrics
            .ejected
            .get_or_create(&DestinationLabels {
                destination: self.service.to_string(),
                reason: "",
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

// === impl Endpoint ===

impl Endpoint {
    /// Calls in flight on this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a call in flight until dropped, so a cancelled call (a per-try timeout) is uncounted.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Locks `m`, recovering from poisoning (the health record stays usable after a panic).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
