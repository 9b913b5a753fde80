//! Traffic policy, end to end through a real outbound proxy to mTLS endpoints that present
//! the expected SPIFFE id: retries, budgets, timeouts, ejection, balancing, splits, routes,
//! faults, mirroring and circuit breaking.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use super::{MOBILE, ORDERS, registry};
use crate::config::{
    CircuitBreaker, Fault, FaultAbort, FaultDelay, HeaderRoute, LoadBalancer, Mirror,
    OutlierDetection, Registry, RetryOn, RetryPolicy, TrafficPolicy, WeightedSubset,
};
use crate::test_util::{
    App, Running, TIMEOUT, TestCa, call, config, eventually, get, http_client, http_raw,
    policies_dir,
};

struct Setup {
    ca: TestCa,
    dir: TempDir,
}

impl Setup {
    fn new() -> Self {
        Self {
            ca: TestCa::new("ward.local"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An endpoint of orders-api: an app behind mTLS presenting the orders-api SVID.
    async fn endpoint(&self, name: &str) -> App {
        App::spawn_tls(name, self.ca.server_config(ORDERS)).await
    }

    /// The mobile-gateway proxy with `endpoints` (each presenting orders-api's SVID, no subset
    /// labels) as orders-api, under `policy`.
    async fn orders_proxy(&self, endpoints: &[SocketAddr], policy: TrafficPolicy) -> Running {
        let endpoints: Vec<_> = endpoints.iter().map(|a| (*a, ORDERS, &[][..])).collect();
        self.proxy(registry("orders-api", &endpoints, &[], policy))
            .await
    }

    /// The mobile-gateway proxy with `registry`.
    async fn proxy(&self, registry: Registry) -> Running {
        let id = self.ca.write_identity(self.dir.path(), "a", MOBILE);
        let mut cfg = config(
            self.dir.path(),
            "proxy-a",
            "mobile-gateway",
            SocketAddr::from(([127, 0, 0, 1], 9)),
            id,
            policies_dir(),
        );
        cfg.registry = registry;
        Running::start(cfg).await
    }
}

fn retries(attempts: u32, on: &[RetryOn]) -> RetryPolicy {
    RetryPolicy {
        attempts,
        retry_on: on.iter().copied().collect::<BTreeSet<_>>(),
        backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RetryPolicy::default()
    }
}

/// The default traffic policy without retries: each call is one try.
fn one_try() -> TrafficPolicy {
    TrafficPolicy {
        retries: retries(1, &[]),
        ..TrafficPolicy::default()
    }
}

async fn metrics(proxy: &Running) -> String {
    http_raw(proxy.bound.admin, &get("/metrics", "x"))
        .await
        .unwrap()
        .1
}

/// A port nothing listens on.
async fn dead_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn retries_happen_on_listed_conditions_only() {
    let s = Setup::new();
    let failing = s.endpoint("failing").await;
    failing.status.store(503, Ordering::SeqCst);
    let client = http_client();

    // 5xx is listed: three tries, the last answer returned.
    let policy = TrafficPolicy {
        retries: retries(3, &[RetryOn::Status5xx]),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[failing.addr], policy).await;
    let (status, _) = call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    assert_eq!((status, failing.hits()), (503, 3));
    assert!(
        metrics(&proxy)
            .await
            .contains("ward_proxy_retries_total{destination=\"orders-api\",reason=\"5xx\"} 2")
    );
    proxy.stop().await;

    // Only connect failures are listed: a 503 is not retried.
    let policy = TrafficPolicy {
        retries: retries(3, &[RetryOn::ConnectFailure]),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[failing.addr], policy).await;
    call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    assert_eq!(failing.hits(), 4);
    proxy.stop().await;
}

#[tokio::test]
async fn connect_failures_are_retried_on_another_endpoint() {
    let s = Setup::new();
    let healthy = s.endpoint("healthy").await;
    let dead = dead_addr().await;
    let client = http_client();
    let policy = TrafficPolicy {
        retries: retries(2, &[RetryOn::ConnectFailure]),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[dead, healthy.addr], policy).await;
    for _ in 0..10 {
        assert_eq!(
            call(&client, proxy.bound.outbound, "orders-api", "/o", &[])
                .await
                .0,
            200
        );
    }
    assert_eq!(healthy.hits(), 10);

    let proxy_no_retry = s
        .proxy(registry(
            "orders-api",
            &[(dead, ORDERS, &[]), (healthy.addr, ORDERS, &[])],
            &[],
            one_try(),
        ))
        .await;
    let mut statuses = BTreeSet::new();
    for _ in 0..4 {
        statuses.insert(
            call(
                &client,
                proxy_no_retry.bound.outbound,
                "orders-api",
                "/o",
                &[],
            )
            .await
            .0,
        );
    }
    assert_eq!(
        statuses,
        BTreeSet::from([200, 503]),
        "round robin hits the dead endpoint"
    );
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let s = Setup::new();
    let failing = s.endpoint("failing").await;
    failing.status.store(500, Ordering::SeqCst);
    let client = http_client();
    let policy = TrafficPolicy {
        retries: RetryPolicy {
            budget_percent: 0.0,
            budget_min_per_sec: 1,
            ..retries(5, &[RetryOn::Status5xx])
        },
        ..TrafficPolicy::default()
    };
    let proxy = s
        .proxy(registry(
            "orders-api",
            &[(failing.addr, ORDERS, &[])],
            &[],
            policy,
        ))
        .await;
    let calls = 30;
    for _ in 0..calls {
        assert_eq!(
            call(&client, proxy.bound.outbound, "orders-api", "/o", &[])
                .await
                .0,
            500
        );
    }
    let retried = failing.hits() - calls;
    // Without a budget this would be 4 retries per call (120); the reserve is 1/s over 10 s.
    assert!(retried <= 12, "{retried} retries");
    let text = metrics(&proxy).await;
    assert!(
        text.contains(
            "ward_proxy_retry_budget_exhausted_total{destination=\"orders-api\",reason=\"5xx\"}"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn the_per_try_timeout_fires_and_is_retried_when_listed() {
    let s = Setup::new();
    let slow = s.endpoint("slow").await;
    slow.delay_ms.store(2000, Ordering::SeqCst);
    let client = http_client();
    let policy = TrafficPolicy {
        per_try_timeout: Some(Duration::from_millis(100)),
        retries: retries(2, &[RetryOn::PerTryTimeout]),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[slow.addr], policy).await;
    let start = Instant::now();
    let (status, body) = call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("upstream attempt timed out"), "{body}");
    assert!(start.elapsed() < Duration::from_millis(1500));
    eventually(TIMEOUT, "both tries to arrive", || async {
        (slow.hits() == 2).then_some(())
    })
    .await;

    // The request timeout caps everything: 504 with its own message.
    let policy = TrafficPolicy {
        timeout: Duration::from_millis(150),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[slow.addr], policy).await;
    let (status, body) = call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    assert_eq!(status, 504);
    assert!(body.contains("request timed out"), "{body}");
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_comes_back() {
    let s = Setup::new();
    let bad = s.endpoint("bad").await;
    let good = s.endpoint("good").await;
    bad.status.store(500, Ordering::SeqCst);
    let client = http_client();
    let policy = TrafficPolicy {
        retries: retries(1, &[]),
        outlier_detection: Some(OutlierDetection {
            consecutive_failures: 2,
            base_ejection: Duration::from_millis(500),
            max_ejection_percent: 50,
        }),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[bad.addr, good.addr], policy).await;
    let out = proxy.bound.outbound;
    for _ in 0..4 {
        call(&client, out, "orders-api", "/o", &[]).await;
    }
    assert_eq!(bad.hits(), 2, "ejected after two 5xx in a row");
    for _ in 0..10 {
        assert_eq!(call(&client, out, "orders-api", "/o", &[]).await.0, 200);
    }
    assert_eq!(bad.hits(), 2, "no traffic while ejected");
    assert!(metrics(&proxy).await.contains(&format!(
        "ward_proxy_ejections_total{{destination=\"orders-api\",endpoint=\"{}\"}} 1",
        bad.addr
    )));

    bad.status.store(200, Ordering::SeqCst);
    eventually(TIMEOUT, "the ejected endpoint to return", || {
        let client = client.clone();
        let bad = &bad;
        async move {
            call(&client, out, "orders-api", "/o", &[]).await;
            (bad.hits() > 2).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn max_ejection_percent_keeps_the_last_endpoint() {
    let s = Setup::new();
    let bad = s.endpoint("bad").await;
    bad.status.store(500, Ordering::SeqCst);
    let client = http_client();
    let policy = TrafficPolicy {
        retries: retries(1, &[]),
        outlier_detection: Some(OutlierDetection {
            consecutive_failures: 1,
            ..OutlierDetection::default()
        }),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[bad.addr], policy).await;
    for _ in 0..5 {
        assert_eq!(
            call(&client, proxy.bound.outbound, "orders-api", "/o", &[])
                .await
                .0,
            500
        );
    }
    assert_eq!(
        bad.hits(),
        5,
        "50% of one endpoint is zero endpoints: never ejected"
    );
}

#[tokio::test]
async fn a_90_10_split_lands_within_3_percent_over_2000_requests() {
    let s = Setup::new();
    let stable = s.endpoint("stable").await;
    let canary = s.endpoint("canary").await;
    let policy = TrafficPolicy {
        split: vec![
            WeightedSubset {
                subset: "v1".into(),
                weight: 90,
            },
            WeightedSubset {
                subset: "v2".into(),
                weight: 10,
            },
        ],
        routes: vec![HeaderRoute {
            headers: [("x-canary".to_owned(), "1".to_owned())].into(),
            subset: "v2".into(),
        }],
        ..TrafficPolicy::default()
    };
    let reg = registry(
        "orders-api",
        &[
            (stable.addr, ORDERS, &[("version", "v1")]),
            (canary.addr, ORDERS, &[("version", "v2")]),
        ],
        &[("v1", &[("version", "v1")]), ("v2", &[("version", "v2")])],
        policy,
    );
    let proxy = s.proxy(reg).await;
    let client = http_client();
    let total = 2000;
    for _ in 0..total {
        assert_eq!(
            call(&client, proxy.bound.outbound, "orders-api", "/o", &[])
                .await
                .0,
            200
        );
    }
    let share = canary.hits() as f64 / total as f64;
    assert!((0.07..=0.13).contains(&share), "canary share {share}");
    assert_eq!(stable.hits() + canary.hits(), total);

    // A header route beats the split.
    for _ in 0..20 {
        let (_, body) = call(
            &client,
            proxy.bound.outbound,
            "orders-api",
            "/o",
            &[("x-canary", "1")],
        )
        .await;
        assert!(body.starts_with("canary"), "{body}");
    }
    assert!(
        metrics(&proxy)
            .await
            .contains("route=\"header:v2\",code_class=\"2xx\"} 20")
    );
}

#[tokio::test]
async fn faults_abort_and_delay_the_configured_share() {
    let s = Setup::new();
    let app = s.endpoint("app").await;
    let policy = TrafficPolicy {
        fault: Some(Fault {
            delay: None,
            abort: Some(FaultAbort {
                percent: 30.0,
                status: 418,
            }),
        }),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[app.addr], policy).await;
    let client = http_client();
    let total = 1000;
    let mut aborted = 0;
    for _ in 0..total {
        match call(&client, proxy.bound.outbound, "orders-api", "/o", &[])
            .await
            .0
        {
            418 => aborted += 1,
            200 => {}
            other => panic!("status {other}"),
        }
    }
    let share = f64::from(aborted) / f64::from(total);
    assert!((0.25..=0.35).contains(&share), "abort share {share}");
    assert_eq!(
        app.hits(),
        (total - aborted) as usize,
        "aborted calls never reach the endpoint"
    );
    proxy.stop().await;

    let policy = TrafficPolicy {
        fault: Some(Fault {
            delay: Some(FaultDelay {
                percent: 50.0,
                duration: Duration::from_millis(40),
            }),
            abort: None,
        }),
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[app.addr], policy).await;
    let mut delayed = 0;
    let total = 200;
    for _ in 0..total {
        let start = Instant::now();
        assert_eq!(
            call(&client, proxy.bound.outbound, "orders-api", "/o", &[])
                .await
                .0,
            200
        );
        if start.elapsed() >= Duration::from_millis(40) {
            delayed += 1;
        }
    }
    let share = f64::from(delayed) / f64::from(total);
    assert!((0.35..=0.65).contains(&share), "delay share {share}");
}

#[tokio::test]
async fn mirroring_copies_calls_to_the_shadow_subset() {
    let s = Setup::new();
    let primary = s.endpoint("primary").await;
    let shadow = s.endpoint("shadow").await;
    shadow.status.store(500, Ordering::SeqCst);
    let policy = TrafficPolicy {
        split: vec![WeightedSubset {
            subset: "main".into(),
            weight: 1,
        }],
        mirror: Some(Mirror {
            subset: "shadow".into(),
            percent: 100.0,
        }),
        ..TrafficPolicy::default()
    };
    let reg = registry(
        "orders-api",
        &[
            (primary.addr, ORDERS, &[("role", "main")]),
            (shadow.addr, ORDERS, &[("role", "shadow")]),
        ],
        &[
            ("main", &[("role", "main")]),
            ("shadow", &[("role", "shadow")]),
        ],
        policy,
    );
    let proxy = s.proxy(reg).await;
    let client = http_client();
    for _ in 0..10 {
        let (status, body) = call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
        assert_eq!(status, 200, "the shadow's 500 never reaches the caller");
        assert!(body.starts_with("primary"));
    }
    eventually(TIMEOUT, "ten mirrored calls", || async {
        (shadow.hits() == 10).then_some(())
    })
    .await;
    assert_eq!(primary.hits(), 10);
}

#[tokio::test]
async fn round_robin_spreads_evenly_and_least_request_uses_both() {
    let s = Setup::new();
    let a = s.endpoint("a").await;
    let b = s.endpoint("b").await;
    let client = http_client();
    let eps = [(a.addr, ORDERS, &[][..]), (b.addr, ORDERS, &[][..])];
    let proxy = s
        .proxy(registry("orders-api", &eps, &[], TrafficPolicy::default()))
        .await;
    for _ in 0..100 {
        call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    }
    assert_eq!((a.hits(), b.hits()), (50, 50));
    proxy.stop().await;

    let policy = TrafficPolicy {
        load_balancer: LoadBalancer::LeastRequest,
        ..TrafficPolicy::default()
    };
    let proxy = s.proxy(registry("orders-api", &eps, &[], policy)).await;
    for _ in 0..100 {
        call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    }
    assert!(a.hits() > 50 && b.hits() > 50, "{} {}", a.hits(), b.hits());
}

#[tokio::test]
async fn the_circuit_breaker_fails_fast_past_its_limits() {
    let s = Setup::new();
    let slow = s.endpoint("slow").await;
    slow.delay_ms.store(400, Ordering::SeqCst);
    let policy = TrafficPolicy {
        circuit_breaker: CircuitBreaker {
            max_connections: 10,
            max_pending: 0,
            max_requests: 1,
        },
        ..TrafficPolicy::default()
    };
    let proxy = s.orders_proxy(&[slow.addr], policy).await;
    let out = proxy.bound.outbound;
    let first =
        tokio::spawn(async move { call(&http_client(), out, "orders-api", "/o", &[]).await });
    eventually(TIMEOUT, "the first call to hold the slot", || async {
        (slow.hits() == 1).then_some(())
    })
    .await;
    let (status, body) = call(&http_client(), out, "orders-api", "/o", &[]).await;
    assert_eq!(status, 503);
    assert!(
        body.contains("circuit breaker open for `orders-api`: max_requests reached"),
        "{body}"
    );
    assert_eq!(first.await.unwrap().0, 200);
    assert!(metrics(&proxy).await.contains(
        "ward_proxy_circuit_open_total{destination=\"orders-api\",reason=\"max_requests\"} 1"
    ));
}

#[tokio::test]
async fn endpoints_must_present_the_expected_spiffe_id() {
    let s = Setup::new();
    // This endpoint presents checkout-api's SVID where the registry expects orders-api.
    let impostor = App::spawn_tls("impostor", s.ca.server_config(super::CHECKOUT)).await;
    let policy = one_try();
    let proxy = s.orders_proxy(&[impostor.addr], policy).await;
    let (status, body) = call(
        &http_client(),
        proxy.bound.outbound,
        "orders-api",
        "/o",
        &[],
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(impostor.hits(), 0);
    assert!(metrics(&proxy).await.contains("ward_proxy_tls_handshake_failures_total{direction=\"outbound\",reason=\"unexpected_server_id\"} 1"));
}

/// An endpoint presenting `svid`, accepting clients of `trusted` domains' CAs. It offers
/// session resumption, as rustls and Envoy do by default, so the proxy must refuse it.
async fn endpoint_with(name: &str, svid: &ward_identity::X509Svid, trusted: &[&TestCa]) -> App {
    use std::sync::Arc;
    let bundles = trusted
        .iter()
        .map(|ca| ward_identity::SvidSource::bundle(&ca.ca));
    let verifier =
        ward_identity::verify::SvidVerifier::new(ward_identity::verify::Bundles::new(bundles));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(ward_identity::verify::ClientVerifier::new(
            verifier,
        )))
        .with_single_cert(svid.cert_chain.clone(), svid.rustls_private_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    App::spawn_tls(name, Arc::new(cfg)).await
}

#[tokio::test]
async fn a_pooled_connection_is_not_reused_past_the_servers_svid_expiry() {
    let s = Setup::new();
    // The endpoint keeps presenting this SVID after it expires, so a new handshake fails: a
    // second request can succeed only over the old connection.
    let short = s.ca.issue(ORDERS, Duration::from_secs(3));
    let expiry = ward_identity::verify::peer_expiry(&short.cert_chain).unwrap();
    let app = endpoint_with("short", &short, &[&s.ca]).await;
    let policy = one_try();
    let proxy = s.orders_proxy(&[app.addr], policy).await;
    let client = http_client();
    let (status, body) = call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    assert_eq!(status, 200, "{body}");

    let left = expiry
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(100)).await;
    let (status, body) = call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(app.hits(), 1, "nothing went over the expired connection");
    let metrics = metrics(&proxy).await;
    assert!(metrics.contains(
        "ward_proxy_tls_handshake_failures_total{direction=\"outbound\",reason=\"expired\"} 1"
    ));
    assert!(metrics.contains("ward_proxy_upstream_pool_replacements_total{destination=\"orders-api\",reason=\"server_svid_expired\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_bundle_update_that_drops_the_servers_trust_domain_ends_its_pooled_connections() {
    let s = Setup::new();
    let partner = TestCa::new("partner.test");
    const SETTLE: &str = "spiffe://partner.test/ns/pay/sa/settle";
    let app = endpoint_with(
        "partner",
        &partner.issue(SETTLE, Duration::from_secs(600)),
        &[&s.ca, &partner],
    )
    .await;
    let policy = one_try();
    let proxy = s
        .proxy(registry(
            "orders-api",
            &[(app.addr, SETTLE, &[])],
            &[],
            policy,
        ))
        .await;
    let identity = &proxy.inputs.identity;
    let ours = ward_identity::SvidSource::bundle(&s.ca.ca);
    let mobile = || s.ca.issue(MOBILE, Duration::from_secs(600));
    identity
        .update(
            mobile(),
            [ours.clone(), ward_identity::SvidSource::bundle(&partner.ca)],
        )
        .unwrap();
    let client = http_client();
    for _ in 0..2 {
        let (status, body) = call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
        assert_eq!(status, 200, "{body}");
    }

    identity.update(mobile(), [ours]).unwrap();
    let (status, body) = call(&client, proxy.bound.outbound, "orders-api", "/o", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(app.hits(), 2, "nothing went over the distrusted connection");
    let metrics = metrics(&proxy).await;
    assert!(metrics.contains(
        "ward_proxy_tls_handshake_failures_total{direction=\"outbound\",reason=\"untrusted_trust_domain\"} 1"
    ));
    // Once for federating the partner's domain, once for dropping it.
    assert!(metrics.contains("ward_proxy_upstream_pool_replacements_total{destination=\"orders-api\",reason=\"bundles_changed\"} 2"), "{metrics}");
}
