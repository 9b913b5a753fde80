//! The proxy's Prometheus metrics: RED per (source, destination, route, code class), authz
//! decisions, handshake failures, retries, ejections, connections and saturation.
//!
//! Label values are bounded: sources are SPIFFE ids or service names from the registry, routes
//! are Cedar actions or route names, never raw paths.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The caller: a SPIFFE id inbound, this service outbound.
    pub source: String,
    /// The callee: this service inbound, the destination service outbound.
    pub destination: String,
    /// The Cedar action inbound, the route (header route, split subset or `default`) outbound.
    pub route: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub code_class: &'static str,
}

/// Labels of the latency histogram (no code class, to keep series down).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The caller.
    pub source: String,
    /// The callee.
    pub destination: String,
    /// The route.
    pub route: String,
}

/// One finished request's RED labels, borrowed: a label set seen before is counted without
/// copying its strings.
#[derive(Debug, Clone, Copy, Hash)]
pub struct RedLabels<'a> {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The caller.
    pub source: &'a str,
    /// The callee.
    pub destination: &'a str,
    /// The route.
    pub route: &'a str,
}

/// The latency and count series of one RED label set and code class, shared with the families
/// (a series' clone is the same series).
#[derive(Debug)]
struct RedSeries {
    labels: RequestLabels,
    duration: Histogram,
    requests: Counter,
}

impl RedSeries {
    fn is(&self, red: RedLabels<'_>, code_class: &str) -> bool {
        let l = &self.labels;
        l.route == red.route
            && l.source == red.source
            && l.destination == red.destination
            && l.direction == red.direction
            && l.code_class == code_class
    }
}

/// A label set with one value.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `allow`, `deny` or `invalid` (the path was rejected before deciding).
    pub result: &'static str,
}

/// Labels of the handshake-failure counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// See [`crate::tls::failure_reason`].
    pub reason: &'static str,
}

/// Labels naming a destination and why.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    /// The destination service.
    pub destination: String,
    /// What happened (a retry condition, a breaker limit, a fault kind); empty when not needed.
    pub reason: &'static str,
}

/// Labels naming one endpoint.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The destination service.
    pub destination: String,
    /// The endpoint's address.
    pub endpoint: String,
}

/// A label set naming why.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why, e.g. `expired` or `untrusted`.
    pub reason: &'static str,
}

/// Labels of the connection metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `inbound`, `outbound`, `admin` (accepted) or `upstream` (opened to other proxies).
    pub direction: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the proxy keeps. Shared as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    audit: OnceLock<Arc<ward_audit::Metrics>>,
    /// Requests by outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency in seconds.
    pub duration: HistogramFamily<DurationLabels>,
    /// Inbound authorization decisions.
    pub authz: Family<ResultLabels, Counter>,
    /// `authz`'s `allow` and `deny` series, looked up once: finding a series in a family
    /// hashes its labels with SipHash on every request.
    authz_allow: Counter,
    authz_deny: Counter,
    /// Inbound decisions answered from a remembered earlier request (also in `authz`).
    authz_remembered: Counter,
    /// The RED series found so far, by a hash of their labels: finding one in its family
    /// hashes owned copies of the labels with SipHash, which with making the copies cost
    /// 2.3k instructions a request (callgrind).
    red: RwLock<HashMap<u64, Vec<RedSeries>, foldhash::fast::RandomState>>,
    red_hasher: foldhash::fast::RandomState,
    /// Failed TLS handshakes.
    pub handshake_failures: Family<HandshakeLabels, Counter>,
    /// Retries sent, by condition.
    pub retries: Family<DestinationLabels, Counter>,
    /// Retries the budget refused.
    pub retries_budget_exhausted: Family<DestinationLabels, Counter>,
    /// Endpoint ejections by outlier detection.
    pub ejections: Family<EndpointLabels, Counter>,
    /// Endpoints ejected right now.
    pub ejected: Family<DestinationLabels, Gauge>,
    /// Calls refused by a circuit-breaker limit.
    pub circuit_open: Family<DestinationLabels, Counter>,
    /// Calls in flight per destination (saturation against `max_requests`).
    pub in_flight: Family<DestinationLabels, Gauge>,
    /// Injected faults.
    pub faults: Family<DestinationLabels, Counter>,
    /// Mirrored calls sent.
    pub mirrored: Family<DestinationLabels, Counter>,
    /// Connections open right now.
    pub connections_open: Family<DirectionLabels, Gauge>,
    /// Connections accepted (inbound: after a successful handshake) or opened (upstream).
    pub connections: Family<DirectionLabels, Counter>,
    /// Inbound connections ended because the peer's SVID expired or is no longer trusted.
    pub inbound_lapses: Family<ReasonLabels, Counter>,
    /// Upstream connection pools replaced because a server SVID expired or the bundles changed.
    pub upstream_pool_replacements: Family<DestinationLabels, Counter>,
}

// === impl Metrics ===

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `ward_proxy_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ward_proxy");
        let authz = Family::<ResultLabels, Counter>::default();
        let series = |result| authz.get_or_create(&ResultLabels { result }).clone();
        let (authz_allow, authz_deny) = (series("allow"), series("deny"));
        let m = Self {
            registry: Registry::default(),
            audit: OnceLock::new(),
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
            authz,
            authz_allow,
            authz_deny,
            authz_remembered: Counter::default(),
            red: RwLock::default(),
            red_hasher: foldhash::fast::RandomState::default(),
            handshake_failures: Family::default(),
            retries: Family::default(),
            retries_budget_exhausted: Family::default(),
            ejections: Family::default(),
            ejected: Family::default(),
            circuit_open: Family::default(),
            in_flight: Family::default(),
            faults: Family::default(),
            mirrored: Family::default(),
            connections_open: Family::default(),
            connections: Family::default(),
            inbound_lapses: Family::default(),
            upstream_pool_replacements: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "requests",
            "Requests by direction, source, destination, route and code class",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Request latency",
            m.duration.clone(),
        );
        r.register(
            "authz_decisions",
            "Inbound authorization decisions by result",
            m.authz.clone(),
        );
        r.register(
            "authz_decisions_remembered",
            "Inbound decisions answered with the outcome of an earlier request that agreed on everything the policies read",
            m.authz_remembered.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "Failed mTLS handshakes by reason",
            m.handshake_failures.clone(),
        );
        r.register(
            "retries",
            "Retries sent, by destination and condition",
            m.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries refused by the retry budget",
            m.retries_budget_exhausted.clone(),
        );
        r.register(
            "ejections",
            "Endpoints ejected by outlier detection",
            m.ejections.clone(),
        );
        r.register(
            "ejected_endpoints",
            "Endpoints ejected right now",
            m.ejected.clone(),
        );
        r.register(
            "circuit_open",
            "Calls refused by a circuit-breaker limit",
            m.circuit_open.clone(),
        );
        r.register(
            "in_flight_requests",
            "Outbound calls in flight (saturation)",
            m.in_flight.clone(),
        );
        r.register(
            "faults_injected",
            "Injected faults by kind",
            m.faults.clone(),
        );
        r.register(
            "mirrored_requests",
            "Mirrored calls sent",
            m.mirrored.clone(),
        );
        r.register(
            "open_connections",
            "Connections open right now",
            m.connections_open.clone(),
        );
        r.register(
            "connections",
            "Connections accepted or opened",
            m.connections.clone(),
        );
        r.register(
            "inbound_connections_lapsed",
            "Inbound connections ended because the peer's SVID expired or is no longer trusted",
            m.inbound_lapses.clone(),
        );
        r.register(
            "upstream_pool_replacements",
            "Upstream connection pools replaced because a server SVID expired or the bundles changed",
            m.upstream_pool_replacements.clone(),
        );
        Self { registry, ..m }
    }

    /// Appends the audit writer's counters to `/metrics`.
    pub fn set_audit(&self, audit: Arc<ward_audit::Metrics>) {
        let _ = self.audit.set(audit);
    }

    /// Counts one finished request and its latency.
    pub fn request(&self, labels: RedLabels<'_>, status: u16, seconds: f64) {
        let code_class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let hash = self.red_hasher.hash_one((labels, code_class));
        {
            let seen = self.red.read().unwrap_or_else(PoisonError::into_inner);
            let found = seen
                .get(&hash)
                .and_then(|bucket| bucket.iter().find(|s| s.is(labels, code_class)));
            if let Some(series) = found {
                series.duration.observe(seconds);
                series.requests.inc();
                return;
            }
        }
        let labels_owned = RequestLabels {
            direction: labels.direction,
            source: labels.source.to_owned(),
            destination: labels.destination.to_owned(),
            route: labels.route.to_owned(),
            code_class,
        };
        let duration = self.duration.get_or_create(&DurationLabels {
            direction: labels.direction,
            source: labels_owned.source.clone(),
            destination: labels_owned.destination.clone(),
            route: labels_owned.route.clone(),
        });
        let series = RedSeries {
            duration: duration.clone(),
            requests: self.requests.get_or_create(&labels_owned).clone(),
            labels: labels_owned,
        };
        drop(duration);
        series.duration.observe(seconds);
        series.requests.inc();
        let mut seen = self.red.write().unwrap_or_else(PoisonError::into_inner);
        let bucket = seen.entry(hash).or_default();
        // Another thread may have added it meanwhile; the series are the same either way.
        if !bucket.iter().any(|s| s.is(labels, code_class)) {
            bucket.push(series);
        }
    }

    /// Counts an inbound authorization decision, and whether it was remembered rather than
    /// evaluated.
    pub fn decision(&self, allow: bool, remembered: bool) {
        if allow {
            self.authz_allow.inc();
        } else {
            self.authz_deny.inc();
        }
        if remembered {
            self.authz_remembered.inc();
        }
    }

    /// Counts an inbound request refused before any decision because it could not be mapped
    /// to one (`result="invalid"`).
    pub fn unmappable(&self) {
        self.authz
            .get_or_create(&ResultLabels { result: "invalid" })
            .inc();
    }

    /// Counts a connection opening (`inbound`, `outbound`, `admin` or `upstream`); the guard
    /// counts it closed when dropped.
    pub fn connection(self: &Arc<Self>, direction: &'static str) -> ConnectionGuard {
        let labels = DirectionLabels { direction };
        self.connections.get_or_create(&labels).inc();
        self.connections_open.get_or_create(&labels).inc();
        ConnectionGuard {
            metrics: self.clone(),
            labels,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        if let Some(audit) = self.audit.get() {
            audit.render(&mut out);
        }
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// Decrements the open-connection gauge when the connection ends.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    labels: DirectionLabels,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .get_or_create(&self.labels)
            .dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_red_metrics_and_connections() {
        let m = Arc::new(Metrics::new());
        let red = RedLabels {
            direction: "inbound",
            source: "spiffe://ward.local/ns/a/sa/b",
            destination: "orders-api",
            route: "orders:read",
        };
        m.request(red, 403, 0.002);
        // The second time the series is found among those seen, and counts on.
        m.request(red, 404, 0.004);
        m.request(
            RedLabels {
                route: "orders:write",
                ..red
            },
            200,
            0.001,
        );
        let guard = m.connection("inbound");
        let text = m.encode();
        assert!(text.contains("ward_proxy_requests_total{direction=\"inbound\",source=\"spiffe://ward.local/ns/a/sa/b\",destination=\"orders-api\",route=\"orders:read\",code_class=\"4xx\"} 2"), "{text}");
        assert!(text.contains("ward_proxy_requests_total{direction=\"inbound\",source=\"spiffe://ward.local/ns/a/sa/b\",destination=\"orders-api\",route=\"orders:write\",code_class=\"2xx\"} 1"), "{text}");
        assert!(text.contains("ward_proxy_request_duration_seconds_count{direction=\"inbound\",source=\"spiffe://ward.local/ns/a/sa/b\",destination=\"orders-api\",route=\"orders:read\"} 2"), "{text}");
        assert!(
            text.contains("ward_proxy_open_connections{direction=\"inbound\"} 1"),
            "{text}"
        );
        drop(guard);
        assert!(
            m.encode()
                .contains("ward_proxy_open_connections{direction=\"inbound\"} 0")
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
