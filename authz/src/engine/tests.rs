use std::path::PathBuf;

use super::*;
use crate::request::{EndUser, Principal, RequestContext, Resource, UserClaims};
use ward_identity::SpiffeId;

pub(crate) fn demo_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
}

fn demo() -> Snapshot {
    match Snapshot::load(&demo_dir()) {
        Ok(s) => s,
        Err(e) => panic!("demo policies: {e}\n{:#?}", e.problems()),
    }
}

fn workload(sa: &str, ns: &str) -> Principal {
    Principal::Workload(SpiffeId::parse(&format!("spiffe://ward.local/ns/{ns}/sa/{sa}")).unwrap())
}

fn req(principal: Principal, action: &str, service: &str) -> Request {
    Request {
        principal,
        action: action.to_owned(),
        resource: Resource::Service(service.to_owned()),
        context: RequestContext {
            mtls: true,
            path: "/".to_owned(),
            ..RequestContext::default()
        },
        entities: Vec::new(),
    }
}

#[test]
fn demo_loads() {
    let s = demo();
    assert!(s.policy_count() >= 10, "{s:?}");
    assert_eq!(s.entity_count(), 12);
    assert_eq!(s.route_count(), 10);
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    let loc = s.policy_location("tenant-isolation").unwrap();
    assert!(loc.file.ends_with("tenants.cedar"), "{loc}");
}

#[test]
fn allows_a_declared_flow_and_names_the_permit() {
    let s = demo();
    let d = s.authorize(&req(
        workload("checkout-api", "checkout"),
        "orders:read",
        "orders-api",
    ));
    assert!(d.allow, "{d:?}");
    assert_eq!(d.reasons, vec!["mesh-checkout-to-orders"]);
    assert!(d.errors.is_empty());
    assert_eq!(&d.revision, s.revision());
}

#[test]
fn denies_by_default_with_no_reasons() {
    let s = demo();
    let d = s.authorize(&req(
        workload("inventory-svc", "inventory"),
        "payments:charge",
        "payments-svc",
    ));
    assert!(!d.allow);
    assert!(d.reasons.is_empty());
    assert!(d.errors.is_empty());
}

#[test]
fn forbid_beats_permit() {
    let s = demo();
    let mut r = req(
        workload("checkout-api", "checkout"),
        "orders:read",
        "orders-api",
    );
    r.context.mtls = false;
    let d = s.authorize(&r);
    assert!(!d.allow);
    assert_eq!(d.reasons, vec!["guardrail-mtls-required"]);
}

#[test]
fn end_user_claims_become_a_user_with_groups() {
    let s = demo();
    let claims = UserClaims {
        issuer: "https://login.ward.local".to_owned(),
        subject: "user:99".to_owned(),
        email: "new@acme.example".to_owned(),
        tenant: "acme".to_owned(),
        groups: vec!["customers".to_owned()],
    };
    let d = s.authorize(&req(
        Principal::User(claims.clone()),
        "GET",
        "mobile-gateway",
    ));
    assert!(d.allow, "{d:?}");
    assert_eq!(d.reasons, vec!["ingress-customers-to-mobile-gateway"]);
    let outsider = UserClaims {
        groups: vec![],
        ..claims.clone()
    };
    assert!(
        !s.authorize(&req(Principal::User(outsider), "GET", "mobile-gateway"))
            .allow
    );

    // The same claims carried east-west as the end user: refunds need the support group.
    let mut r = req(
        workload("checkout-api", "checkout"),
        "orders:refund",
        "orders-api",
    );
    r.context.user = Some(EndUser::Claims(claims));
    let d = s.authorize(&r);
    assert_eq!(d.reasons, vec!["orders-refund-needs-support-user"]);
    r.context.user = Some(EndUser::Id("https://login.ward.local#user:7".to_owned()));
    assert!(s.authorize(&r).allow);
}

#[test]
fn undeclared_headers_do_not_reach_policies_and_declared_ones_do() {
    let s = demo();
    let mut r = req(
        workload("checkout-api", "checkout"),
        "orders:read",
        "orders-api",
    );
    r.context.user = Some(EndUser::Id("https://login.ward.local#user:77".to_owned()));
    r.context
        .headers
        .insert("X-Something-Else".to_owned(), "x".to_owned());
    assert!(s.authorize(&r).allow);
    r.context
        .headers
        .insert("X-Ward-Tenant".to_owned(), "acme".to_owned());
    let d = s.authorize(&r);
    assert!(!d.allow);
    assert_eq!(d.reasons, vec!["tenant-isolation"]);
}

#[test]
fn declared_headers_are_every_actions_header_names_once_in_lower_case() {
    // The demo schema declares `x-ward-tenant` and `x-canary` in the one `Headers` type every
    // action's context shares; a caller may copy just these into the request context.
    assert_eq!(demo().declared_headers(), ["x-canary", "x-ward-tenant"]);
}

#[test]
fn malformed_requests_deny_with_an_error() {
    let s = demo();
    // `egress` applies to ExternalHost resources only: the request does not fit the schema.
    let d = s.authorize(&req(
        workload("payments-svc", "payments"),
        "egress",
        "orders-api",
    ));
    assert!(!d.allow);
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].policy, None);
    // An action the schema does not know.
    let d = s.authorize(&req(
        workload("checkout-api", "checkout"),
        "TRACE",
        "orders-api",
    ));
    assert!(!d.allow && d.errors.len() == 1, "{d:?}");
}

#[test]
fn http_requests_are_normalized_then_routed() {
    let engine = PolicyEngine::new(demo());
    let http = |target: &str, method: &str| HttpRequest {
        principal: workload("checkout-api", "checkout"),
        service: "orders-api".to_owned(),
        method: method.to_owned(),
        target: target.to_owned(),
        context: RequestContext {
            mtls: true,
            ..RequestContext::default()
        },
    };
    let (d, path) = engine
        .authorize_http(&http("//orders/./7712?x=1", "GET"))
        .unwrap();
    assert_eq!(path.path(), "/orders/7712");
    assert!(d.allow, "{d:?}");
    // `/%61dmin` is `/admin` once normalized: the guardrail sees through it.
    let (d, path) = engine
        .authorize_http(&http("/orders/../%61dmin/x", "GET"))
        .unwrap();
    assert_eq!(path.path(), "/admin/x");
    assert_eq!(d.reasons, vec!["guardrail-no-admin-paths"]);
    // Unmatched routes fall back to the method action, which checkout-api has no permit for.
    let (d, _) = engine.authorize_http(&http("/metrics", "GET")).unwrap();
    assert!(!d.allow && d.reasons.is_empty());
    assert!(matches!(
        engine.authorize_http(&http("/orders%2F7712", "GET")),
        Err(Error::Path(crate::PathError::EncodedSlash))
    ));
}

#[test]
fn swap_is_atomic_and_reload_keeps_the_old_snapshot_on_error() {
    let engine = PolicyEngine::new(demo());
    let before = engine.snapshot().revision().clone();
    let bad = tempfile::tempdir().unwrap();
    assert!(engine.reload(bad.path()).is_err());
    assert_eq!(engine.snapshot().revision(), &before);
    let rev = engine.reload(&demo_dir()).unwrap();
    assert_eq!(&rev, engine.snapshot().revision());
}

#[test]
fn the_demo_policy_tests_pass() {
    let s = demo();
    let cases = crate::policy_test::load(&demo_dir()).unwrap();
    assert!(cases.len() >= 20, "{}", cases.len());
    let results = crate::policy_test::run(&s, &cases);
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.case.name)))
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(results.iter().any(|r| !r.decision.as_ref().unwrap().allow));
}

#[test]
fn failing_cases_say_why() {
    let s = demo();
    let mut case = crate::policy_test::load(&demo_dir())
        .unwrap()
        .into_iter()
        .find(|c| c.name == "globex users cannot read acme orders")
        .unwrap();
    case.expect_allow = true;
    let r = crate::policy_test::run(&s, std::slice::from_ref(&case));
    assert_eq!(
        r[0].failure.as_deref(),
        Some("expected allow, got deny by [tenant-isolation]")
    );
    case.expect_allow = false;
    case.expect_policies = Some(vec!["guardrail-mtls-required".to_owned()]);
    let r = crate::policy_test::run(&s, std::slice::from_ref(&case));
    assert_eq!(
        r[0].failure.as_deref(),
        Some("expected determining policies [guardrail-mtls-required], got [tenant-isolation]")
    );
    case.request.principal = "not a principal".to_owned();
    let r = crate::policy_test::run(&s, std::slice::from_ref(&case));
    assert!(
        r[0].failure
            .as_deref()
            .unwrap()
            .starts_with("bad request: "),
        "{r:?}"
    );
}

#[test]
fn explain_lists_the_permits_that_came_closest() {
    let s = demo();
    let mut r = req(
        workload("checkout-api", "checkout"),
        "orders:refund",
        "orders-api",
    );
    r.context.user = Some(EndUser::Id("https://login.ward.local#user:42".to_owned()));
    let e = crate::explain::explain(&s, &r).unwrap();
    assert!(!e.decision.allow);
    let verdicts: Vec<(String, String)> = e
        .policies
        .iter()
        .map(|p| (p.id.clone(), p.verdict.to_string()))
        .collect();
    assert!(verdicts.contains(&(
        "orders-refund-needs-support-user".to_owned(),
        "scope matched, condition true".to_owned()
    )));
    assert!(verdicts.contains(&(
        "mesh-checkout-to-orders".to_owned(),
        "scope matched, condition true".to_owned()
    )));
    assert!(verdicts.contains(&(
        "guardrail-mtls-required".to_owned(),
        "scope matched, condition false".to_owned()
    )));
    // Policies whose scope names another principal or resource are not listed.
    assert!(
        !verdicts
            .iter()
            .any(|(id, _)| id == "mesh-orders-to-inventory")
    );
    let closest: Vec<&str> = e.closest_permits().map(|p| p.id.as_str()).collect();
    assert_eq!(closest, vec!["mesh-checkout-to-orders"]);

    // A deny where the permit's condition is false.
    let mut r = req(
        Principal::Entity(crate::EntityRef {
            type_name: "User".into(),
            id: "https://login.ward.local#user:42".into(),
        }),
        "GET",
        "globex-reports",
    );
    r.context.mtls = false;
    let e = crate::explain::explain(&s, &r).unwrap();
    assert_eq!(e.decision.reasons, vec!["tenant-owned-services"]);
    assert!(e.closest_permits().next().is_none());
}
