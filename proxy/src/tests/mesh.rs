//! Two proxies, two apps: mTLS between them, Cedar on every inbound request, audit records,
//! handshake refusals, path confusion, and graceful drain.

use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;

use super::{CHECKOUT, MOBILE, registry};
use crate::config::{Config, TrafficPolicy};
use crate::test_util::{
    App, Running, TIMEOUT, TestCa, call, config, copy_policies, eventually, get, http_client,
    http_raw, https_raw, policies_dir,
};

/// app A → proxy A (mobile-gateway) → mTLS → proxy B (checkout-api) → app B.
struct Pair {
    ca: TestCa,
    dir: TempDir,
    app_b: App,
    proxy_b: Running,
    proxy_a: Running,
}

/// Proxy B: checkout-api in front of `app`, with the repository's policies.
fn config_b(ca: &TestCa, dir: &std::path::Path, app: std::net::SocketAddr) -> Config {
    let id_b = ca.write_identity(dir, "b", CHECKOUT);
    config(dir, "proxy-b", "checkout-api", app, id_b, policies_dir())
}

async fn pair() -> Pair {
    let ca = TestCa::new("ward.local");
    let dir = tempfile::tempdir().unwrap();
    let app_b = App::spawn("app-b").await;
    let proxy_b = Running::start(config_b(&ca, dir.path(), app_b.addr)).await;
    let id_a = ca.write_identity(dir.path(), "a", MOBILE);
    let mut cfg_a = config(
        dir.path(),
        "proxy-a",
        "mobile-gateway",
        app_b.addr,
        id_a,
        policies_dir(),
    );
    cfg_a.registry = registry(
        "checkout-api",
        &[(proxy_b.bound.inbound, CHECKOUT, &[])],
        &[],
        TrafficPolicy::default(),
    );
    let proxy_a = Running::start(cfg_a).await;
    Pair {
        ca,
        dir,
        app_b,
        proxy_b,
        proxy_a,
    }
}

impl Pair {
    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let svid = self.ca.issue(MOBILE, Duration::from_secs(600));
        self.ca.client_config(&svid, CHECKOUT)
    }

    async fn audit(&self) -> Vec<ward_audit::AuditRecord> {
        self.proxy_b
            .inputs
            .audit
            .as_ref()
            .unwrap()
            .flush()
            .await
            .unwrap();
        let url = format!(
            "sqlite://{}",
            self.dir.path().join("audit-proxy-b.db").display()
        );
        let db = ward_audit::store::Db::open(&url).await.unwrap();
        ward_audit::query::query(&db, &ward_audit::query::Filter::default())
            .await
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str(&r.body).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn a_call_crosses_two_proxies_over_mtls_with_ids_and_trace() {
    let p = pair().await;
    let client = http_client();
    let (status, body) = call(
        &client,
        p.proxy_a.bound.outbound,
        "checkout-api",
        "/cart/items?page=2",
        &[
            ("x-request-id", "req-42"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-ward-peer-id", "spiffe://ward.local/ns/evil/sa/forged"),
        ],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "app-b /cart/items?page=2"));
    let seen = p.app_b.last().unwrap();
    assert_eq!(
        seen.headers["x-ward-peer-id"], MOBILE,
        "the verified id, not the forged one"
    );
    assert_eq!(seen.headers["x-request-id"], "req-42");
    let tp = seen.headers["traceparent"].to_str().unwrap();
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );

    // As an HTTP proxy (absolute form), and the pooled connection is reused.
    let raw =
        "GET http://checkout-api/cart HTTP/1.1\r\nhost: checkout-api\r\nconnection: close\r\n\r\n";
    let (status, body) = http_raw(p.proxy_a.bound.outbound, raw).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let metrics = http_raw(p.proxy_a.bound.admin, &get("/metrics", "x"))
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("ward_proxy_connections_total{direction=\"upstream\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("direction=\"outbound\",source=\"mobile-gateway\",destination=\"checkout-api\",route=\"default\",code_class=\"2xx\"} 2"), "{metrics}");
}

#[tokio::test]
async fn a_deny_is_403_without_policy_text_and_both_decisions_are_audited() {
    let p = pair().await;
    let client = http_client();
    let out = p.proxy_a.bound.outbound;
    assert_eq!(
        call(
            &client,
            out,
            "checkout-api",
            "/cart",
            &[("x-request-id", "ok-1")]
        )
        .await
        .0,
        200
    );
    let (status, body) = call(
        &client,
        out,
        "checkout-api",
        "/admin",
        &[("x-request-id", "no-1")],
    )
    .await;
    assert_eq!(status, 403);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"request_id": "no-1", "error": "denied by policy"})
    );
    assert!(!p.app_b.targets().contains(&"/admin".to_owned()));
    // The same call again is answered from the remembered decision, and audited all the same.
    let (status, _) = call(
        &client,
        out,
        "checkout-api",
        "/admin",
        &[("x-request-id", "no-2")],
    )
    .await;
    assert_eq!(status, 403);

    let records = p.audit().await;
    let find = |id: &str| records.iter().find(|r| r.request_id == id).unwrap();
    let allow = find("ok-1");
    assert_eq!(allow.decision, ward_audit::Decision::Allow);
    assert_eq!(allow.principal, MOBILE);
    assert_eq!(allow.path.as_deref(), Some("/cart"));
    assert_eq!(allow.policies, ["mesh-mobile-gateway-to-checkout"]);
    assert!(allow.trace_id.is_some() && !allow.policy_revision.is_empty());
    let deny = find("no-1");
    assert_eq!(deny.decision, ward_audit::Decision::Deny);
    assert_eq!(deny.policies, ["guardrail-no-admin-paths"]);
    assert_eq!(deny.node, "proxy-b");
    let again = find("no-2");
    assert_eq!(again.decision, ward_audit::Decision::Deny);
    assert_eq!(again.policies, ["guardrail-no-admin-paths"]);
    assert_eq!(again.policy_revision, deny.policy_revision);

    let metrics = http_raw(p.proxy_b.bound.admin, &get("/metrics", "x"))
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("ward_proxy_authz_decisions_total{result=\"deny\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ward_proxy_authz_decisions_remembered_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ward_audit_records_written_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn unknown_services_and_missing_hosts_get_clear_json_errors() {
    let p = pair().await;
    let client = http_client();
    let (status, body) = call(&client, p.proxy_a.bound.outbound, "nowhere-svc", "/", &[]).await;
    assert_eq!(status, 502);
    assert!(body.contains("unknown service `nowhere-svc`"), "{body}");
    let (status, _) = http_raw(p.proxy_a.bound.outbound, "GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status, 400);
}

#[tokio::test]
async fn clients_without_a_valid_svid_are_refused_at_the_handshake() {
    let p = pair().await;
    let inbound = p.proxy_b.bound.inbound;
    let ok = https_raw(inbound, p.client_tls(), &get("/cart", "checkout-api"))
        .await
        .unwrap();
    assert_eq!(ok.0, 200);

    // No client certificate at all.
    let verifier = ward_identity::verify::SvidVerifier::new(ward_identity::verify::Bundles::new([
        ward_identity::SvidSource::bundle(&p.ca.ca),
    ]));
    let expected = ward_identity::verify::ServerIdentity::AnyTrusted;
    let anonymous = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ward_identity::verify::ServerVerifier::new(
            verifier.clone(),
            expected.clone(),
        )))
        .with_no_client_auth();
    assert!(
        https_raw(inbound, Arc::new(anonymous), &get("/cart", "x"))
            .await
            .is_err()
    );

    // An SVID from another trust domain.
    let evil = TestCa::new("evil.local");
    let foreign = evil.issue(
        "spiffe://evil.local/ns/mobile/sa/mobile-gateway",
        Duration::from_secs(600),
    );
    let cfg =
        ward_identity::verify::client_config(&foreign, verifier.clone(), expected.clone()).unwrap();
    assert!(
        https_raw(inbound, Arc::new(cfg), &get("/cart", "x"))
            .await
            .is_err()
    );

    assert_eq!(
        p.app_b.targets(),
        ["/cart"],
        "no refused client reached the app"
    );

    // An expired SVID from the right CA (1 s lifetime; polled until it has run out).
    let short = p.ca.issue(MOBILE, Duration::from_secs(1));
    let cfg = Arc::new(ward_identity::verify::client_config(&short, verifier, expected).unwrap());
    eventually(TIMEOUT, "the short SVID to be refused", || {
        let cfg = cfg.clone();
        async move {
            https_raw(inbound, cfg, &get("/cart", "x"))
                .await
                .is_err()
                .then_some(())
        }
    })
    .await;
    let hits = p.app_b.hits();
    assert!(https_raw(inbound, cfg, &get("/cart", "x")).await.is_err());
    assert_eq!(
        p.app_b.hits(),
        hits,
        "the expired client never reaches the app"
    );
    let metrics = http_raw(p.proxy_b.bound.admin, &get("/metrics", "x"))
        .await
        .unwrap()
        .1;
    for reason in ["no_client_certificate", "untrusted_trust_domain", "expired"] {
        assert!(
            metrics.contains(&format!("ward_proxy_tls_handshake_failures_total{{direction=\"inbound\",reason=\"{reason}\"}}")),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_connection_ends_gracefully_when_the_peers_svid_expires() {
    let p = pair().await;
    // 3 s of validity (whole seconds in X.509): enough for two requests.
    let short = p.ca.issue(MOBILE, Duration::from_secs(3));
    let expiry = ward_identity::verify::peer_expiry(&short.cert_chain).unwrap();
    let (mut conn, task) = keep_alive(&p, p.ca.client_config(&short, CHECKOUT)).await;
    for _ in 0..2 {
        assert_eq!(cart(&mut conn).await.unwrap(), 200);
    }
    assert!(
        !task.is_finished(),
        "the connection stays open while the SVID is valid"
    );

    tokio::time::timeout(TIMEOUT, task)
        .await
        .expect("the proxy closes the connection once the SVID has expired")
        .unwrap()
        .unwrap();
    let closed = std::time::SystemTime::now();
    assert!(
        closed + Duration::from_millis(50) >= expiry,
        "closed {:?} before the SVID expired",
        expiry.duration_since(closed).unwrap_or_default()
    );
    assert!(cart(&mut conn).await.is_err());
    assert_eq!(
        p.app_b.hits(),
        2,
        "both requests reached the app, nothing after"
    );
    let metrics = p.proxy_b.inputs.metrics.encode();
    assert!(
        metrics.contains("ward_proxy_inbound_connections_lapsed_total{reason=\"expired\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_bundle_update_that_drops_a_trust_domain_closes_its_connections() {
    let p = pair().await;
    let partner = TestCa::new("partner.test");
    let identity = &p.proxy_b.inputs.identity;
    let ours = ward_identity::SvidSource::bundle(&p.ca.ca);
    let federated = [ours.clone(), ward_identity::SvidSource::bundle(&partner.ca)];
    identity
        .update(p.ca.issue(CHECKOUT, Duration::from_secs(600)), federated)
        .unwrap();
    let outsider = partner.issue(
        "spiffe://partner.test/ns/pay/sa/settle",
        Duration::from_secs(600),
    );
    let (mut theirs, their_task) = keep_alive(&p, p.ca.client_config(&outsider, CHECKOUT)).await;
    let (mut local, local_task) = keep_alive(&p, p.client_tls()).await;
    // Federated: the handshake succeeds and the request reaches policy (which denies it).
    assert_eq!(cart(&mut theirs).await.unwrap(), 403);
    assert_eq!(cart(&mut local).await.unwrap(), 200);

    // The same bundles again (an SVID rotation) leave every connection alone.
    let federated = [ours.clone(), ward_identity::SvidSource::bundle(&partner.ca)];
    identity
        .update(p.ca.issue(CHECKOUT, Duration::from_secs(600)), federated)
        .unwrap();
    assert_eq!(cart(&mut theirs).await.unwrap(), 403);

    identity
        .update(p.ca.issue(CHECKOUT, Duration::from_secs(600)), [ours])
        .unwrap();
    tokio::time::timeout(TIMEOUT, their_task)
        .await
        .expect("the proxy closes the dropped domain's connection long before its SVID expires")
        .unwrap()
        .unwrap();
    assert!(cart(&mut theirs).await.is_err());
    assert_eq!(
        cart(&mut local).await.unwrap(),
        200,
        "a peer of a domain still trusted keeps its connection"
    );
    assert!(!local_task.is_finished());
    let refused = https_raw(
        p.proxy_b.bound.inbound,
        p.ca.client_config(&outsider, CHECKOUT),
        &get("/cart", "checkout-api"),
    )
    .await;
    assert!(refused.is_err(), "new handshakes are refused: {refused:?}");
    let metrics = p.proxy_b.inputs.metrics.encode();
    assert!(
        metrics.contains("ward_proxy_inbound_connections_lapsed_total{reason=\"untrusted\"} 1"),
        "{metrics}"
    );
}

type KeepAlive = hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// An HTTP/1.1 keep-alive connection to proxy B's inbound presenting `tls`'s SVID, and the task
/// that drives it (it finishes when the connection closes).
async fn keep_alive(
    p: &Pair,
    tls: Arc<rustls::ClientConfig>,
) -> (KeepAlive, tokio::task::JoinHandle<hyper::Result<()>>) {
    let tcp = tokio::net::TcpStream::connect(p.proxy_b.bound.inbound)
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("ward.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    (sender, tokio::spawn(conn))
}

/// `GET /cart` for checkout-api on `conn`; the status once the body has been read.
async fn cart(conn: &mut KeepAlive) -> hyper::Result<u16> {
    use http_body_util::BodyExt as _;
    let req = http::Request::get("/cart")
        .header("host", "checkout-api")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = conn.send_request(req).await?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await?;
    Ok(status)
}

#[tokio::test]
async fn declared_headers_reach_policies_joined_and_case_insensitive() {
    let ca = TestCa::new("ward.local");
    let dir = tempfile::tempdir().unwrap();
    let policies = copy_policies(dir.path());
    // `x-canary` is declared in the schema; `x-undeclared` is not, so no policy can read it.
    std::fs::write(
        policies.join("canary.cedar"),
        "@id(\"block-canary\")\nforbid (principal, action, resource)\n\
         when { context.headers has \"x-canary\" && context.headers[\"x-canary\"] == \"a, b\" };\n",
    )
    .unwrap();
    let app = App::spawn("app").await;
    let id_b = ca.write_identity(dir.path(), "b", CHECKOUT);
    let proxy = Running::start(config(
        dir.path(),
        "proxy-b",
        "checkout-api",
        app.addr,
        id_b,
        policies,
    ))
    .await;
    let tls = ca.client_config(&ca.issue(MOBILE, Duration::from_secs(600)), CHECKOUT);
    let inbound = proxy.bound.inbound;
    let send = |headers: &str| {
        let request = format!(
            "GET /cart HTTP/1.1\r\nhost: checkout-api\r\n{headers}connection: close\r\n\r\n"
        );
        let tls = tls.clone();
        async move { https_raw(inbound, tls, &request).await.unwrap().0 }
    };
    // Repeated values are joined with ", " in order, whatever the case of the name.
    assert_eq!(send("X-Canary: a\r\nx-canary: b\r\n").await, 403);
    assert_eq!(send("x-canary: a, b\r\n").await, 403);
    assert_eq!(send("x-canary: b\r\nx-canary: a\r\n").await, 200);
    assert_eq!(send("x-canary: a\r\n").await, 200);
    assert_eq!(send("x-undeclared: a, b\r\n").await, 200);
    // A value that is not visible ASCII is left out rather than passed on mangled.
    assert_eq!(
        send("x-canary: a\r\nx-canary: \u{e9}\r\nx-canary: b\r\n").await,
        403
    );
    assert_eq!(app.hits(), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn path_confusion_is_normalized_and_decided_or_rejected() {
    let p = pair().await;
    let tls = p.client_tls();
    let long = format!("/{}", "a".repeat(9000));
    // (sent, status, what the app must receive)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/admin/../admin", 403, None),
        ("//admin", 403, None),
        ("/%61dmin", 403, None),
        ("/%2e%2e/admin", 403, None),
        ("/x/..%2F..%2Fadmin", 400, None),
        ("/admin%2F", 400, None),
        ("/admin%5cx", 400, None),
        // http::Uri drops a fragment: what is decided and forwarded is the path before it.
        ("/admin#frag", 403, None),
        ("/cart#/../admin", 200, Some("/cart")),
        (&long, 400, None),
        ("/admin;x", 200, Some("/admin;x")),
        ("/ADMIN", 200, Some("/ADMIN")),
        ("/cart/./items//1/", 200, Some("/cart/items/1/")),
        (
            "/cart/%7Eme/%c3%a9?q=%2F&r=..",
            200,
            Some("/cart/~me/%C3%A9?q=%2F&r=.."),
        ),
    ];
    for (sent, status, received) in cases {
        let before = p.app_b.hits();
        let (got, body) = https_raw(
            p.proxy_b.bound.inbound,
            tls.clone(),
            &get(sent, "checkout-api"),
        )
        .await
        .unwrap();
        let short: String = sent.chars().take(40).collect();
        assert_eq!(got, *status, "{short}: {body}");
        match received {
            Some(path) => assert_eq!(p.app_b.last().unwrap().target, *path, "{short}"),
            None => assert_eq!(p.app_b.hits(), before, "{short} reached the app"),
        }
        if got >= 400 {
            assert!(
                !body.contains("guardrail"),
                "{short}: policy text leaked: {body}"
            );
        }
    }
    assert!(
        !p.app_b
            .targets()
            .iter()
            .any(|t| t.to_ascii_lowercase().starts_with("/admin")
                && t != "/admin;x"
                && t != "/ADMIN")
    );
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_readiness_flips() {
    let p = pair().await;
    p.app_b
        .delay_ms
        .store(300, std::sync::atomic::Ordering::SeqCst);
    let out = p.proxy_a.bound.outbound;
    let admin_b = p.proxy_b.bound.admin;
    let slow =
        tokio::spawn(async move { call(&http_client(), out, "checkout-api", "/slow", &[]).await });
    eventually(TIMEOUT, "the slow request to reach the app", || async {
        (p.app_b.hits() == 1).then_some(())
    })
    .await;
    let Pair {
        proxy_b,
        proxy_a: _proxy_a,
        app_b: _app_b,
        ..
    } = p;
    let inbound = proxy_b.bound.inbound;
    let stopping = tokio::spawn(proxy_b.stop());
    assert_eq!(slow.await.unwrap().0, 200, "the in-flight request finished");
    stopping.await.unwrap();
    assert!(
        http_raw(admin_b, &get("/ready", "x")).await.is_err(),
        "admin closed"
    );
    assert!(
        tokio::net::TcpStream::connect(inbound).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn with_audit_disabled_requests_pass_and_nothing_is_recorded() {
    let ca = TestCa::new("ward.local");
    let dir = tempfile::tempdir().unwrap();
    let app_b = App::spawn("app-b").await;
    let mut cfg = config_b(&ca, dir.path(), app_b.addr);
    cfg.audit.enabled = false;
    let store = dir.path().join("audit-proxy-b.db");
    assert!(
        cfg.audit.store.contains("audit-proxy-b.db"),
        "{}",
        cfg.audit.store
    );
    let proxy_b = Running::start(cfg).await;
    assert!(proxy_b.inputs.audit.is_none());
    let svid = ca.issue(MOBILE, Duration::from_secs(600));
    let (status, _) = https_raw(
        proxy_b.bound.inbound,
        ca.client_config(&svid, CHECKOUT),
        &get("/cart", "checkout-api"),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        !store.exists(),
        "no audit store is opened when auditing is off"
    );
    proxy_b.stop().await;
}
