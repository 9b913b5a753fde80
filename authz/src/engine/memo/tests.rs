//! Remembered decisions must equal evaluated ones, and only requests that agree on what the
//! policies read may share one.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use cedar_policy::Policy;
use ward_identity::SpiffeId;

use super::ContextReads;
use crate::Snapshot;
use crate::request::{EndUser, Principal, Request, RequestContext, Resource, UserClaims};
use crate::test_util::{Rng, demo_copy, demo_dir, load};

fn reads(policy: &str) -> Option<ContextReads> {
    let policy = Policy::from_str(policy).unwrap();
    ContextReads::of([&policy])
}

/// The demo repository with one more policy file.
fn demo_with(policy: &str) -> (tempfile::TempDir, Snapshot) {
    let dir = demo_copy();
    std::fs::write(dir.path().join("extra.cedar"), policy).unwrap();
    let snapshot = load(dir.path());
    (dir, snapshot)
}

fn call(time: i64, request_id: &str) -> Request {
    Request {
        principal: Principal::Workload(
            SpiffeId::parse("spiffe://ward.local/ns/checkout/sa/checkout-api").unwrap(),
        ),
        action: "orders:read".to_owned(),
        resource: Resource::Service("orders-api".to_owned()),
        context: RequestContext {
            method: "GET".to_owned(),
            path: "/orders/1".to_owned(),
            mtls: true,
            time,
            request_id: request_id.to_owned(),
            ..RequestContext::default()
        },
        entities: Vec::new(),
    }
}

#[test]
fn reads_are_the_context_attributes_policies_name() {
    let r = reads(
        r#"permit (principal, action, resource) when {
            context.path like "/a*" && context has user && context.headers["x-canary"] == "1"
            && (if context.mtls then context["host"] == "h" else false)
        };"#,
    )
    .expect("plain attribute accesses are accounted for");
    assert_eq!(
        r,
        ContextReads {
            path: true,
            headers: true,
            mtls: true,
            host: true,
            ..ContextReads::default()
        }
    );
    // `context has headers.foo` names the path `["headers", "foo"]`; its first step is read.
    let nested = reads("permit (principal, action, resource) when { context has headers.foo };");
    assert_eq!(
        nested,
        Some(ContextReads {
            headers: true,
            ..ContextReads::default()
        })
    );
    let none = reads("permit (principal, action, resource) when { principal has x };").unwrap();
    assert_eq!(none, ContextReads::default());
    let time = reads("forbid (principal, action, resource) unless { context.time < 5 };").unwrap();
    assert!(time.time && !time.method, "{time:?}");
}

#[test]
fn context_used_otherwise_turns_remembering_off() {
    for policy in [
        // Unique per request: remembering would never pay.
        r#"permit (principal, action, resource) when { context.request_id == "r" };"#,
        // Not an attribute Ward sets, so nothing here has reasoned about it.
        "permit (principal, action, resource) when { context has custom };",
        // `context` as a whole value.
        r#"permit (principal, action, resource) when { context == {"mtls": true} };"#,
        "permit (principal, action, resource) when { [context].contains(context) };",
    ] {
        assert_eq!(reads(policy), None, "{policy}");
    }
    let (_dir, s) = demo_with(
        "@id(\"no-replays\")\nforbid (principal, action, resource) when { context.request_id == \"r-1\" };\n",
    );
    let first = s.authorize(&call(10, "r-0"));
    let again = s.authorize(&call(10, "r-0"));
    assert!(first.allow && again.allow && !again.remembered, "{again:?}");
    let replay = s.authorize(&call(10, "r-1"));
    assert!(!replay.allow, "{replay:?}");
    assert_eq!(replay.reasons, vec!["no-replays"]);
}

#[test]
fn an_attribute_a_policy_reads_is_part_of_the_key_and_others_are_not() {
    // The demo policies do not read `time`: a later second is the same request to them.
    let demo = load(&demo_dir());
    assert!(demo.authorize(&call(10, "a")).allow);
    let later = demo.authorize(&call(2000, "b"));
    assert!(later.allow && later.remembered, "{later:?}");

    let (_dir, s) = demo_with(
        "@id(\"business-hours\")\nforbid (principal, action, resource) unless { context.time < 1000 };\n",
    );
    let early = s.authorize(&call(10, "a"));
    assert!(early.allow && !early.remembered, "{early:?}");
    let late = s.authorize(&call(2000, "b"));
    assert!(!late.allow && !late.remembered, "{late:?}");
    assert_eq!(late.reasons, vec!["business-hours"]);
    let early_again = s.authorize(&call(10, "c"));
    assert!(
        early_again.allow && early_again.remembered,
        "{early_again:?}"
    );
}

#[test]
fn requests_with_entities_of_their_own_are_never_remembered() {
    let s = load(&demo_dir());
    let mut by_claims = call(10, "a");
    by_claims.context.user = Some(EndUser::Claims(UserClaims {
        issuer: "https://login.ward.local".to_owned(),
        subject: "user:42".to_owned(),
        email: String::new(),
        tenant: "acme".to_owned(),
        groups: vec!["support".to_owned()],
    }));
    let mut extra = call(10, "a");
    extra.entities = vec![serde_json::json!({
        "uid": { "type": "Ward::Group", "id": "auditors" }, "attrs": {}, "parents": []
    })];
    for req in [by_claims, extra] {
        s.authorize(&req);
        assert!(!s.authorize(&req).remembered, "{req:?}");
    }
}

/// Requests that vary in every context attribute, read or not, and in who asks for what.
fn varied(rng: &mut Rng) -> Request {
    const WORKLOADS: [&str; 4] = [
        "spiffe://ward.local/ns/mobile/sa/mobile-gateway",
        "spiffe://ward.local/ns/checkout/sa/checkout-api",
        "spiffe://ward.local/ns/orders/sa/orders-api",
        "spiffe://other.example/ns/x/sa/intruder",
    ];
    const USERS: [&str; 3] = [
        "https://login.ward.local#user:42",
        "https://login.ward.local#user:77",
        "https://login.ward.local#user:7",
    ];
    let principal = if rng.chance(85) {
        Principal::Workload(SpiffeId::parse(rng.pick::<&str>(&WORKLOADS)).unwrap())
    } else {
        Principal::Entity(crate::EntityRef {
            type_name: "User".to_owned(),
            id: rng.pick(&USERS).to_string(),
        })
    };
    let (action, service) = *rng.pick(&[
        ("GET", "checkout-api"),
        ("POST", "checkout-api"),
        ("orders:read", "orders-api"),
        ("orders:refund", "orders-api"),
        ("GET", "mobile-gateway"),
    ]);
    let mut context = RequestContext {
        method: rng.pick(&["GET", "POST"]).to_string(),
        path: rng
            .pick(&["/", "/admin", "/admin/x", "/orders/1"])
            .to_string(),
        host: rng.pick(&["orders-api", "checkout-api"]).to_string(),
        source_ip: rng
            .chance(50)
            .then(|| IpAddr::V4(Ipv4Addr::new(10, 0, 0, rng.below(4) as u8))),
        mtls: rng.chance(85),
        request_id: format!("r-{}", rng.next()),
        time: rng.below(100_000) as i64,
        user: rng
            .chance(30)
            .then(|| EndUser::Id(rng.pick(&USERS).to_string())),
        ..RequestContext::default()
    };
    for (name, values) in [
        ("X-Ward-Tenant", &["acme", "globex"][..]),
        ("x-canary", &["1"][..]),
        ("x-undeclared", &["a", "b"][..]),
    ] {
        if rng.chance(30) {
            let value = rng.pick(values).to_string();
            context.headers.insert(name.to_owned(), value);
        }
    }
    Request {
        principal,
        action: action.to_owned(),
        resource: Resource::Service(service.to_owned()),
        context,
        entities: Vec::new(),
    }
}

#[test]
fn remembered_decisions_equal_evaluated_ones() {
    let s = load(&demo_dir());
    let mut rng = Rng(0x3E3B_0DEC_1510_0001);
    let (mut remembered, mut allows, mut denies) = (0, 0, 0);
    for i in 0..4000 {
        let req = varied(&mut rng);
        let answer = s.authorize(&req);
        let evaluated = s.authorize_evaluated(&req);
        assert_eq!(
            (answer.allow, &answer.reasons, &answer.errors),
            (evaluated.allow, &evaluated.reasons, &evaluated.errors),
            "request {i} (remembered: {}): {req:#?}",
            answer.remembered
        );
        remembered += usize::from(answer.remembered);
        allows += usize::from(answer.allow);
        denies += usize::from(!answer.allow && !answer.reasons.is_empty());
    }
    // Time, request ids, methods, hosts and source addresses vary but no demo policy reads
    // them, so many requests share a remembered outcome (with the paths, users and headers
    // they do read; there are more such combinations than the memory holds, so it also starts
    // over now and then); both outcomes must be covered.
    assert!(remembered > 1200, "remembered {remembered}");
    assert!(allows > 200, "allows {allows}");
    assert!(denies > 300, "denies {denies}");
}
