use ward_identity::SpiffeId;

use super::*;
use crate::request::{ContextSpec, Principal, RequestContext, Resource};
use crate::test_util::{demo_copy, demo_dir};

const CHECKOUT: &str = "spiffe://ward.local/ns/checkout/sa/checkout-api";
const REFUND_FORBID: &str = r#"@id("orders-refund-needs-support-user")
forbid (
  principal,
  action == Ward::Action::"orders:refund",
  resource == Ward::Service::"orders-api"
)
unless { context has user && context.user in Ward::Group::"support" };"#;

/// The demo policies without the refund guard: checkout-api may then refund on its own.
fn candidate_without_refund_guard() -> (tempfile::TempDir, Snapshot) {
    let dir = demo_copy();
    let mesh = dir.path().join("mesh.cedar");
    let text = std::fs::read_to_string(&mesh).unwrap();
    assert!(
        text.contains(REFUND_FORBID),
        "the demo's refund guard moved"
    );
    std::fs::write(&mesh, text.replace(REFUND_FORBID, "")).unwrap();
    let snapshot = Snapshot::load(dir.path()).unwrap();
    (dir, snapshot)
}

fn authorizer(modes: Modes) -> Authorizer {
    let engine = Arc::new(PolicyEngine::load(&demo_dir()).unwrap());
    Authorizer::new(engine, modes, "node-a")
}

fn request(action: &str, path: &str) -> Request {
    Request {
        principal: Principal::Workload(SpiffeId::parse(CHECKOUT).unwrap()),
        action: action.to_owned(),
        resource: Resource::Service("orders-api".to_owned()),
        context: RequestContext {
            method: "POST".to_owned(),
            path: path.to_owned(),
            host: "orders-api".to_owned(),
            mtls: true,
            request_id: "req-1".to_owned(),
            ..RequestContext::default()
        },
        entities: Vec::new(),
    }
}

fn http(target: &str) -> HttpRequest {
    HttpRequest {
        principal: Principal::Workload(SpiffeId::parse(CHECKOUT).unwrap()),
        service: "orders-api".to_owned(),
        method: "POST".to_owned(),
        target: target.to_owned(),
        context: RequestContext {
            mtls: true,
            request_id: "req-2".to_owned(),
            ..RequestContext::default()
        },
    }
}

#[test]
fn enforce_mode_blocks_a_deny_and_records_it() {
    let authz = authorizer(Modes::default());
    let e = authz.check(&request("orders:refund", "/orders/1/refund"));
    assert!(!e.allow);
    assert!(!e.decision.allow);
    assert_eq!(e.mode, Mode::Enforce);
    assert!(e.candidate.is_none());
    assert!(!e.disagrees());
    let r = &e.record;
    assert_eq!(r.node, "node-a");
    assert_eq!(r.request_id, "req-1");
    assert_eq!(r.principal, CHECKOUT);
    assert_eq!(r.action, "orders:refund");
    assert_eq!(r.resource, "orders-api");
    assert_eq!(r.method.as_deref(), Some("POST"));
    assert_eq!(r.path.as_deref(), Some("/orders/1/refund"));
    assert_eq!(r.decision, ward_audit::Decision::Deny);
    assert_eq!(r.policies, vec!["orders-refund-needs-support-user"]);
    assert_eq!(r.mode, ward_audit::Mode::Enforce);
    assert_eq!(r.original_decision, None);
    assert_eq!(r.candidate, None);
    assert_eq!(r.policy_revision, e.decision.revision.as_ref());
}

#[test]
fn dry_run_allows_but_keeps_the_original_deny() {
    let authz = authorizer(Modes::all(Mode::Enforce).with("orders-api", Mode::DryRun));
    let e = authz.check(&request("orders:refund", "/orders/1/refund"));
    assert!(e.allow, "dry-run lets the request through");
    assert!(!e.decision.allow, "policy still said deny");
    assert_eq!(e.mode, Mode::DryRun);
    assert_eq!(e.record.decision, ward_audit::Decision::Allow);
    assert_eq!(e.record.original_decision, Some(ward_audit::Decision::Deny));
    assert_eq!(e.record.mode, ward_audit::Mode::DryRun);
    assert_eq!(e.record.policies, vec!["orders-refund-needs-support-user"]);

    // A dry-run allow has nothing to override.
    let e = authz.check(&request("orders:read", "/orders/1"));
    assert!(e.allow && e.decision.allow);
    assert_eq!(e.record.original_decision, None);

    // Other services stay enforced.
    let mut other = request("payments:charge", "/charges");
    other.resource = Resource::Service("inventory-svc".to_owned());
    assert!(!authz.check(&other).allow);
}

#[test]
fn modes_can_be_swapped_while_serving() {
    let authz = authorizer(Modes::default());
    let req = request("orders:refund", "/orders/1/refund");
    assert!(!authz.check(&req).allow);
    authz.set_modes(Modes::all(Mode::DryRun));
    assert!(authz.check(&req).allow);
    assert_eq!(authz.modes().default, Mode::DryRun);
}

#[test]
fn shadow_candidate_is_evaluated_but_never_decides() {
    let authz = authorizer(Modes::default());
    let (_dir, candidate) = candidate_without_refund_guard();
    let candidate_rev = candidate.revision().clone();
    assert!(authz.set_candidate(Some(candidate)).is_none());

    let e = authz.check(&request("orders:refund", "/orders/1/refund"));
    assert!(!e.allow, "the enforced revision decides");
    let c = e.candidate.as_ref().unwrap();
    assert!(c.allow, "the candidate would allow: {c:?}");
    assert_eq!(c.revision, candidate_rev);
    assert!(e.disagrees());
    assert_eq!(e.record.mode, ward_audit::Mode::Shadow);
    assert_eq!(e.record.decision, ward_audit::Decision::Deny);
    assert_eq!(
        e.record.candidate,
        Some(Candidate {
            revision: candidate_rev.to_string(),
            decision: ward_audit::Decision::Allow,
            policies: vec!["mesh-checkout-to-orders".to_owned()],
        })
    );
    assert_eq!(authz.metrics().shadow_disagreement_count(), 1);

    // Agreement is evaluated and recorded, but not counted as a disagreement.
    let e = authz.check(&request("orders:read", "/orders/1"));
    assert!(e.allow && !e.disagrees());
    assert_eq!(e.record.mode, ward_audit::Mode::Shadow);
    assert_eq!(authz.metrics().shadow_disagreement_count(), 1);

    // Removing the candidate ends shadow evaluation.
    assert!(authz.set_candidate(None).is_some());
    let e = authz.check(&request("orders:refund", "/orders/1/refund"));
    assert!(e.candidate.is_none());
    assert_eq!(e.record.mode, ward_audit::Mode::Enforce);
}

#[test]
fn dry_run_with_a_candidate_records_both() {
    let authz = authorizer(Modes::all(Mode::DryRun));
    let (_dir, candidate) = candidate_without_refund_guard();
    authz.set_candidate(Some(candidate));
    let e = authz.check(&request("orders:refund", "/orders/1/refund"));
    assert!(e.allow);
    assert_eq!(e.record.mode, ward_audit::Mode::DryRun);
    assert_eq!(e.record.original_decision, Some(ward_audit::Decision::Deny));
    assert_eq!(
        e.record.candidate.as_ref().map(|c| c.decision),
        Some(ward_audit::Decision::Allow)
    );
}

#[test]
fn http_requests_are_normalized_and_routed_by_each_revision() {
    let authz = authorizer(Modes::default());
    let (dir, _) = candidate_without_refund_guard();
    // The candidate also drops orders-api's routes: POST /orders/{id}/refund is then plain POST.
    std::fs::remove_file(dir.path().join("routes/orders-api.yaml")).unwrap();
    let candidate = Snapshot::load(dir.path()).unwrap();
    authz.set_candidate(Some(candidate));

    let (e, path) = authz.check_http(&http("/orders//1/./refund?x=1")).unwrap();
    assert_eq!(path.path(), "/orders/1/refund");
    assert_eq!(e.record.action, "orders:refund");
    assert_eq!(e.record.path.as_deref(), Some("/orders/1/refund"));
    assert_eq!(e.record.request_id, "req-2");
    assert!(!e.allow);
    // Unrouted, the candidate sees action POST, which no permit for checkout-api covers.
    let c = e.candidate.unwrap();
    assert!(!c.allow && c.reasons.is_empty(), "{c:?}");

    let err = authz.check_http(&http("/orders/1%2Frefund")).unwrap_err();
    assert!(matches!(err, Error::Path(_)), "{err}");
}

#[test]
fn written_requests_resolve_with_routes_and_report_bad_input() {
    let authz = authorizer(Modes::default());
    let spec = RequestSpec {
        principal: CHECKOUT.to_owned(),
        action: None,
        resource: "orders-api".to_owned(),
        context: ContextSpec {
            method: Some("GET".to_owned()),
            path: Some("/orders/7712".to_owned()),
            ..ContextSpec::default()
        },
        entities: Vec::new(),
    };
    let e = authz.check_spec(&spec).unwrap();
    assert!(e.allow);
    assert_eq!(e.record.action, "orders:read");
    assert_eq!(e.record.policies, vec!["mesh-checkout-to-orders"]);

    let bad = RequestSpec {
        principal: "spiffe://bad id".to_owned(),
        ..spec
    };
    assert!(matches!(authz.check_spec(&bad), Err(Error::Request(_))));
}
