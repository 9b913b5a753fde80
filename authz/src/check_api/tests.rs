use http_body_util::Full;
use serde_json::Value;
use ward_audit::{Auditor, Store};

use super::*;
use crate::authorizer::Authorizer;
use crate::engine::PolicyEngine;
use crate::modes::{Mode, Modes};
use crate::reload::Reloader;
use crate::server::Inputs;
use crate::test_util::demo_dir;

const CHECKOUT: &str = "spiffe://ward.local/ns/checkout/sa/checkout-api";

fn shared_with(modes: Modes, auditor: Option<Auditor>) -> Arc<Shared> {
    let engine = Arc::new(PolicyEngine::load(&demo_dir()).unwrap());
    let authorizer = Arc::new(Authorizer::new(engine, modes, "test-node"));
    let reloader = Arc::new(Reloader::new(authorizer.clone(), demo_dir(), None));
    Arc::new(Shared::new(Inputs {
        authorizer,
        reloader,
        auditor,
    }))
}

fn shared() -> Arc<Shared> {
    shared_with(Modes::default(), None)
}

async fn call(
    shared: &Arc<Shared>,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, Value, Reply) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let reply = handle(shared.clone(), req).await.unwrap();
    let status = reply.status();
    let (parts, body) = reply.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    let again = Response::from_parts(parts, Full::new(bytes));
    (status, json, again)
}

async fn check(shared: &Arc<Shared>, body: Value) -> (StatusCode, Value) {
    let (status, json, _) = call(shared, Method::POST, "/v1/check", &body.to_string()).await;
    (status, json)
}

#[tokio::test]
async fn check_allows_with_the_determining_policy_and_routes_the_action() {
    let s = shared();
    let (status, reply) = check(
        &s,
        json!({
            "principal": CHECKOUT,
            "resource": "orders-api",
            "context": { "method": "GET", "path": "/orders//7712", "request_id": "r-1" }
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["allow"], true);
    assert_eq!(reply["decision"], "allow");
    assert_eq!(reply["mode"], "enforce");
    assert_eq!(reply["action"], "orders:read");
    assert_eq!(reply["policies"], json!(["mesh-checkout-to-orders"]));
    assert_eq!(reply["request_id"], "r-1");
    assert_eq!(reply["audit_id"].as_str().unwrap().len(), 32);
    assert!(reply["revision"].as_str().unwrap().len() > 8);
    assert!(reply.get("candidate").is_none());
}

#[tokio::test]
async fn a_deny_is_a_200_answer_and_dry_run_lets_it_pass() {
    let body = json!({
        "principal": CHECKOUT,
        "action": "orders:refund",
        "resource": "orders-api",
    });
    let (status, reply) = check(&shared(), body.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["allow"], false);
    assert_eq!(
        reply["policies"],
        json!(["orders-refund-needs-support-user"])
    );
    assert!(
        !reply["request_id"].as_str().unwrap().is_empty(),
        "a request id is made up when none is given"
    );

    let dry = shared_with(
        Modes::all(Mode::Enforce).with("orders-api", Mode::DryRun),
        None,
    );
    let (_, reply) = check(&dry, body).await;
    assert_eq!(reply["allow"], true);
    assert_eq!(reply["decision"], "deny");
    assert_eq!(reply["mode"], "dry-run");
}

#[tokio::test]
async fn bad_requests_are_400_with_a_reason() {
    let s = shared();
    for (body, want) in [
        (
            json!({ "principal": CHECKOUT, "action": "GET", "resource": "orders-api", "entities": [] }),
            "unknown field `entities`",
        ),
        (
            json!({ "principal": "spiffe://", "action": "GET", "resource": "orders-api" }),
            "principal `spiffe://`",
        ),
        (
            json!({ "principal": CHECKOUT, "resource": "orders-api", "context": { "method": "GET", "path": "/a%2Fb" } }),
            "encoded `/`",
        ),
        (json!({ "principal": CHECKOUT }), "missing field `resource`"),
    ] {
        let (status, reply) = check(&s, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains(want), "{error}");
    }
    let (status, reply, _) = call(&s, Method::POST, "/v1/check", "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reply}");
    let big = "x".repeat(MAX_BODY + 1);
    let (status, _, _) = call(&s, Method::POST, "/v1/check", &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn routes_and_methods() {
    let s = shared();
    let (status, _, reply) = call(&s, Method::GET, "/v1/check", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.headers()[ALLOW], "POST");
    let (status, _, _) = call(&s, Method::GET, "/v2/check", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body, _) = call(&s, Method::GET, "/healthz", "").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, Value::String("ok\n".into()))
    );
    let (status, _, _) = call(&s, Method::POST, "/ready", "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn ready_reports_the_revision_until_draining() {
    let s = shared();
    let (status, body, _) = call(&s, Method::GET, "/ready", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
    let revision = s.inputs.authorizer.engine().snapshot().revision().clone();
    assert_eq!(body["revision"], revision.as_ref());
    assert_eq!(body["candidate"], Value::Null);
    assert_eq!(body["reload_failures"], json!([]));

    s.draining.store(true, std::sync::atomic::Ordering::Release);
    let (status, body, _) = call(&s, Method::GET, "/ready", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "draining");
}

#[tokio::test]
async fn metrics_count_decisions_and_bad_requests() {
    let s = shared();
    check(
        &s,
        json!({ "principal": CHECKOUT, "action": "orders:read", "resource": "orders-api" }),
    )
    .await;
    check(&s, json!({ "principal": "nope" })).await;
    let (status, body, reply) = call(&s, Method::GET, "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        reply.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = body.as_str().unwrap();
    assert!(
        text.contains(r#"ward_authz_decisions_total{result="allow",mode="enforce"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"ward_authz_bad_requests_total{api="http"} 1"#),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn every_decision_is_audited_and_strict_mode_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let store = Store::open(&format!("jsonl://{}", log.display()))
        .await
        .unwrap();
    let cfg = ward_audit::Config::new("test-node", dir.path().join("spool"));
    let (auditor, _task) = Auditor::spawn(store, None, cfg).await.unwrap();
    let s = shared_with(Modes::default(), Some(auditor.clone()));
    let (_, reply) = check(
        &s,
        json!({ "principal": CHECKOUT, "action": "orders:refund", "resource": "orders-api" }),
    )
    .await;
    auditor.flush().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(reply["audit_id"].as_str().unwrap()), "{text}");
    assert!(text.contains("orders-refund-needs-support-user"), "{text}");

    // A strict auditor whose writer has stopped cannot make records durable: fail closed.
    let store = Store::open(&format!("jsonl://{}", log.display()))
        .await
        .unwrap();
    let cfg = ward_audit::Config {
        strict: true,
        ..ward_audit::Config::new("strict-node", dir.path().join("spool2"))
    };
    let (strict, task) = Auditor::spawn(store, None, cfg).await.unwrap();
    task.abort();
    let _ = task.await;
    let s = shared_with(Modes::default(), Some(strict));
    let (status, reply) = check(
        &s,
        json!({ "principal": CHECKOUT, "action": "orders:read", "resource": "orders-api" }),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("audited"),
        "{reply}"
    );
}
