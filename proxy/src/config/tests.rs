use super::*;

const FULL: &str = r#"
node: proxy-a
service: checkout-api
listen: { inbound: "0.0.0.0:15006", outbound: "127.0.0.1:15001", admin: "127.0.0.1:15000" }
app: "127.0.0.1:8080"
identity:
  files: { cert: a.crt, key: a.key, bundle: bundle.pem }
policies: policies
audit: { store: "postgres://ward:secret@db/ward", spool_dir: spool }
registry:
  services:
    orders-api:
      endpoints:
        - address: "127.0.0.1:16006"
          spiffe_id: spiffe://ward.local/ns/orders/sa/orders-api
          labels: { version: v1 }
        - address: "127.0.0.1:17006"
          spiffe_id: spiffe://ward.local/ns/orders/sa/orders-api
          labels: { version: v2 }
      subsets: { stable: { version: v1 }, canary: { version: v2 } }
      traffic:
        timeout: 2s
        per_try_timeout: 500ms
        retries: { attempts: 3, retry_on: [connect-failure, 5xx], budget_percent: 10 }
        outlier_detection: { consecutive_failures: 3, base_ejection: 10s }
        load_balancer: least-request
        routes: [{ headers: { x-canary: "1" }, subset: canary }]
        split: [{ subset: stable, weight: 90 }, { subset: canary, weight: 10 }]
        fault: { abort: { percent: 5, status: 503 } }
        mirror: { subset: canary, percent: 50 }
"#;

fn parse(text: &str) -> Config {
    serde_norway::from_str(text).unwrap()
}

#[test]
fn a_full_file_parses_and_validates() {
    let cfg = parse(FULL);
    cfg.validate().unwrap();
    let orders = &cfg.registry.services["orders-api"];
    let t = &orders.traffic;
    assert_eq!(t.timeout, Duration::from_secs(2));
    assert_eq!(t.per_try_timeout, Some(Duration::from_millis(500)));
    assert_eq!(t.retries.attempts, 3);
    assert!(t.retries.retry_on.contains(&RetryOn::Status5xx));
    assert_eq!(
        t.retries.backoff,
        Duration::from_millis(25),
        "unset fields keep defaults"
    );
    assert_eq!(t.load_balancer, LoadBalancer::LeastRequest);
    assert_eq!(
        t.outlier_detection.as_ref().unwrap().max_ejection_percent,
        50
    );
    assert_eq!(t.mirror.as_ref().unwrap().percent, 50.0);
    assert_eq!(cfg.listen.inbound.port(), 15006);
}

#[test]
fn defaults_are_safe() {
    let cfg = Config::default();
    assert!(cfg.listen.inbound.ip().is_loopback());
    assert_eq!(cfg.listen.outbound.port(), 15001);
    assert_eq!(cfg.listen.admin.port(), 15000);
    assert!(matches!(cfg.identity, IdentityConfig::WorkloadApi(_)));
    assert_eq!(
        cfg.validate(),
        Err(invalid(
            "service",
            "must name the service this proxy fronts"
        ))
    );
}

#[test]
fn the_redacted_config_hides_the_store_password_and_round_trips() {
    let cfg = parse(FULL);
    let json = cfg.redacted();
    assert_eq!(json["audit"]["store"], "postgres://ward:***@db/ward");
    assert_eq!(
        json["registry"]["services"]["orders-api"]["traffic"]["timeout"],
        "2s"
    );
    let back: Config = serde_json::from_value(json).unwrap();
    assert_eq!(back.registry, cfg.registry);
}

#[test]
fn unknown_fields_and_bad_durations_are_rejected() {
    let err = serde_norway::from_str::<Config>("servcie: x\n").unwrap_err();
    assert!(err.to_string().contains("unknown field `servcie`"), "{err}");
    let err = serde_norway::from_str::<Config>("drain_timeout: soon\n").unwrap_err();
    assert!(err.to_string().contains("invalid duration `soon`"), "{err}");
    let err = serde_norway::from_str::<Config>(
        "registry: { services: { a: { endpoints: [], traffic: { retries: { retry_on: [teapot] } } } } }\n",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown variant `teapot`"),
        "{err}"
    );
}

#[test]
fn validation_names_the_field() {
    for (edit, field) in [
        (
            ("spiffe://ward.local/ns/orders/sa/orders-api", "not-an-id"),
            "registry.services.orders-api.endpoints[0].spiffe_id",
        ),
        (
            ("subset: canary }]", "subset: nope }]"),
            "registry.services.orders-api.traffic.routes[0].subset",
        ),
        (
            (
                "weight: 90 }, { subset: canary, weight: 10",
                "weight: 0 }, { subset: canary, weight: 0",
            ),
            "registry.services.orders-api.traffic.split",
        ),
        (
            ("percent: 5,", "percent: 500,"),
            "registry.services.orders-api.traffic.fault.abort.percent",
        ),
        (
            ("attempts: 3", "attempts: 0"),
            "registry.services.orders-api.traffic.retries.attempts",
        ),
        (
            ("canary: { version: v2 }", "canary: { version: v9 }"),
            "registry.services.orders-api.subsets.canary",
        ),
        (
            (
                "spool_dir: spool }",
                "spool_dir: spool, enabled: false, strict: true }",
            ),
            "audit.strict",
        ),
    ] {
        let cfg = parse(&FULL.replacen(edit.0, edit.1, 1));
        match cfg.validate() {
            Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{edit:?}: {other:?}"),
        }
    }
}

#[test]
fn tracing_is_off_by_default_and_takes_a_plain_grpc_endpoint() {
    assert_eq!(parse(FULL).tracing, TracingConfig::default());
    assert_eq!(TracingConfig::default().otlp_endpoint, None);
    let with = |tracing: &str| parse(&format!("{FULL}tracing: {tracing}\n"));
    let cfg = with(r#"{ otlp_endpoint: "http://127.0.0.1:4317", export_timeout: 2s }"#);
    cfg.validate().unwrap();
    assert_eq!(cfg.tracing.export_timeout, Duration::from_secs(2));
    for bad in [
        r#"{ otlp_endpoint: "https://collector:4317" }"#,
        r#"{ otlp_endpoint: "127.0.0.1:4317" }"#,
        r#"{ otlp_endpoint: "not a url" }"#,
    ] {
        match with(bad).validate() {
            Err(ConfigError::Invalid { field, .. }) => {
                assert_eq!(field, "tracing.otlp_endpoint", "{bad}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let err = serde_norway::from_str::<Config>("tracing: { endpoint: x }\n").unwrap_err();
    assert!(
        err.to_string().contains("unknown field `endpoint`"),
        "{err}"
    );
}
