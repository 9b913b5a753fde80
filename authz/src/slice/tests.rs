//! Sliced evaluation must decide exactly like evaluating the whole set.

use std::path::PathBuf;

use ward_identity::SpiffeId;

use crate::Snapshot;
use crate::request::{EndUser, Principal, Request, RequestContext, Resource, UserClaims};
use crate::test_util::{Rng, load};

const WORKLOADS: [&str; 6] = [
    "spiffe://ward.local/ns/mobile/sa/mobile-gateway",
    "spiffe://ward.local/ns/checkout/sa/checkout-api",
    "spiffe://ward.local/ns/orders/sa/orders-api",
    "spiffe://ward.local/ns/inventory/sa/inventory-svc",
    "spiffe://ward.local/ns/payments/sa/payments-svc",
    "spiffe://other.example/ns/x/sa/intruder",
];
const USERS: [&str; 3] = [
    "https://login.ward.local#user:42",
    "https://login.ward.local#user:77",
    "https://login.ward.local#user:7",
];
const GROUPS: [&str; 3] = ["customers", "support", "nobody"];
const SERVICES: [&str; 6] = [
    "checkout-api",
    "payments-svc",
    "profile-svc",
    "mobile-gateway",
    "orders-api",
    "inventory-svc",
];
const ACTIONS: [&str; 12] = [
    "GET",
    "HEAD",
    "POST",
    "DELETE",
    "read",
    "write",
    "orders:read",
    "orders:refund",
    "payments:charge",
    "inventory:reserve",
    "connect",
    "egress",
];
const REQUEST_ACTIONS: [&str; 10] = [
    "GET",
    "HEAD",
    "POST",
    "DELETE",
    "orders:read",
    "orders:refund",
    "payments:charge",
    "inventory:reserve",
    "connect",
    "egress",
];
const PATHS: [&str; 5] = ["/", "/orders/1", "/admin", "/admin/x", "/charges"];

fn principal_scope(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 | 1 => "principal".to_owned(),
        2 | 3 => format!("principal == Ward::Workload::{:?}", rng.pick(&WORKLOADS)),
        4 => format!("principal == Ward::User::{:?}", rng.pick(&USERS)),
        5 => format!("principal in Ward::Group::{:?}", rng.pick(&GROUPS)),
        6 => rng
            .pick(&["principal is Ward::Workload", "principal is Ward::User"])
            .to_string(),
        _ => format!(
            "principal is Ward::User in Ward::Group::{:?}",
            rng.pick(&GROUPS)
        ),
    }
}

fn action_scope(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => "action".to_owned(),
        1 | 2 => format!("action == Ward::Action::{:?}", rng.pick(&ACTIONS)),
        _ => {
            let n = 1 + rng.below(3);
            let list: Vec<String> = (0..n)
                .map(|_| format!("Ward::Action::{:?}", rng.pick(&ACTIONS)))
                .collect();
            format!("action in [{}]", list.join(", "))
        }
    }
}

fn resource_scope(rng: &mut Rng) -> (String, bool) {
    match rng.below(5) {
        0 | 1 => ("resource".to_owned(), false),
        2 | 3 => (
            format!("resource == Ward::Service::{:?}", rng.pick(&SERVICES)),
            true,
        ),
        _ => ("resource is Ward::Service".to_owned(), true),
    }
}

fn condition(rng: &mut Rng, service: bool) -> String {
    let options = [
        String::new(),
        " when { context.mtls }".to_owned(),
        format!(
            " when {{ context.time > {} }}",
            rng.pick(&[0, 10, 1000, 1_000_000])
        ),
        " unless { context.path like \"/admin*\" }".to_owned(),
        " when { context has user && context.user.tenant == \"acme\" }".to_owned(),
        format!(
            " when {{ context has user && context.user in Ward::Group::{:?} }}",
            rng.pick(&GROUPS)
        ),
        // Overflows (an evaluation error) for large times.
        " when { context.time * 1000000000000 > 5 }".to_owned(),
        // Guarded shapes (slice/guard.rs): a cheap first test, then anything.
        format!(
            " when {{ context.method == {:?} && context.time * 1000000000000 > 5 }}",
            rng.pick(&["GET", "POST", "DELETE"])
        ),
        format!(
            " when {{ context.path like {:?} && context.mtls }}",
            rng.pick(&["/admin*", "/orders/*", "*s", "/*/x"])
        ),
        " when { !context.mtls }".to_owned(),
        " unless { context.host == \"orders-api\" }".to_owned(),
        " when { context has user }".to_owned(),
        " when { context.mtls == false || context.path == \"/\" }".to_owned(),
        if service {
            format!(
                " when {{ resource.labels.contains({:?}) }}",
                rng.pick(&["tier=edge", "pci"])
            )
        } else {
            " when { context.headers has \"x-canary\" }".to_owned()
        },
    ];
    rng.pick(&options).clone()
}

/// `n` random policies, two lines each (`@id`, policy).
fn policies(rng: &mut Rng, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let forbid = rng.chance(12);
            let (mut resource, service) = resource_scope(rng);
            let mut principal = principal_scope(rng);
            // Mostly narrow forbids, as real sets have, so that some requests get allowed.
            if forbid && rng.chance(80) {
                principal = format!("principal == Ward::Workload::{:?}", rng.pick(&WORKLOADS));
                resource = format!("resource == Ward::Service::{:?}", rng.pick(&SERVICES));
            }
            format!(
                "@id(\"p{i}\")\n{} ({principal}, {}, {resource}){};\n",
                if forbid { "forbid" } else { "permit" },
                action_scope(rng),
                condition(rng, service)
            )
        })
        .collect()
}

fn request(rng: &mut Rng) -> Request {
    let principal = match rng.below(5) {
        0..=2 => {
            let id = rng.pick(&WORKLOADS).to_string();
            Principal::Workload(SpiffeId::parse(&id).unwrap())
        }
        3 => Principal::Entity(crate::EntityRef {
            type_name: "User".to_owned(),
            id: rng.pick(&USERS).to_string(),
        }),
        _ => Principal::User(UserClaims {
            issuer: "https://login.ward.local".to_owned(),
            subject: format!("user:{}", rng.below(3)),
            email: String::new(),
            tenant: rng.pick(&["acme", "globex"]).to_string(),
            groups: vec![rng.pick(&GROUPS).to_string()],
        }),
    };
    let action = rng.pick(&REQUEST_ACTIONS).to_string();
    let resource = if action == "egress" && rng.chance(80) {
        Resource::ExternalHost("api.stripe.com".to_owned())
    } else {
        Resource::Service(rng.pick(&SERVICES).to_string())
    };
    let mut context = RequestContext {
        method: rng.pick(&["GET", "POST", "DELETE"]).to_string(),
        path: rng.pick(&PATHS).to_string(),
        host: rng.pick(&["orders-api", "other"]).to_string(),
        mtls: rng.chance(80),
        // A huge time makes `context.time * 1000000000000` overflow: an evaluation error.
        time: if rng.chance(10) {
            10_000_000_000
        } else {
            *rng.pick(&[0, 20, 5000])
        },
        ..RequestContext::default()
    };
    if rng.chance(40) {
        context.user = Some(EndUser::Id(rng.pick(&USERS).to_string()));
    }
    if rng.chance(30) {
        context
            .headers
            .insert("x-canary".to_owned(), "1".to_owned());
    }
    Request {
        principal,
        action,
        resource,
        context,
        entities: Vec::new(),
    }
}

fn generated_repo(seed: u64, n: usize) -> (tempfile::TempDir, Rng) {
    let demo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        demo.join("schema.cedarschema"),
        dir.path().join("schema.cedarschema"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("entities")).unwrap();
    for f in ["services.json", "users.json"] {
        std::fs::copy(
            demo.join("entities").join(f),
            dir.path().join("entities").join(f),
        )
        .unwrap();
    }
    let mut rng = Rng(seed);
    let mut generated = policies(&mut rng, n);
    let file = dir.path().join("generated.cedar");
    // Strict validation rejects scopes no request can satisfy (e.g. `egress` to a Service):
    // drop those and keep the rest.
    for _ in 0..3 {
        std::fs::write(&file, generated.concat()).unwrap();
        let Err(e) = Snapshot::load(dir.path()) else {
            break;
        };
        let bad: std::collections::HashSet<usize> = e
            .problems()
            .iter()
            .map(|p| (p.location.line - 1) / 2)
            .collect();
        generated = generated
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !bad.contains(i))
            .map(|(_, p)| p)
            .collect();
    }
    (dir, rng)
}

#[test]
fn sliced_and_unsliced_evaluation_agree() {
    let (dir, mut rng) = generated_repo(0x5EED_CAFE_F00D_0001, 300);
    let snapshot = load(dir.path());
    assert!(
        snapshot.unsliced_policy_count() < snapshot.policy_count() / 2,
        "most generated policies should be sliced: {} of {}",
        snapshot.unsliced_policy_count(),
        snapshot.policy_count()
    );
    // Guarded policies must be common enough for the comparison to cover them.
    assert!(
        snapshot.guarded_policy_count() > 40,
        "guarded: {} of {}",
        snapshot.guarded_policy_count(),
        snapshot.policy_count()
    );
    let (mut allows, mut forbidden, mut errored, mut remembered) = (0, 0, 0, 0);
    for i in 0..3000 {
        let req = request(&mut rng);
        let sliced = snapshot.authorize_evaluated(&req);
        let full = snapshot.authorize_unsliced(&req);
        assert_eq!(
            (sliced.allow, &sliced.reasons, &sliced.errors),
            (full.allow, &full.reasons, &full.errors),
            "request {i} decided differently: {req:#?}"
        );
        // Asked twice: the second answer may come from memory (engine/memo.rs) and must agree.
        for _ in 0..2 {
            let again = snapshot.authorize(&req);
            assert_eq!(
                (again.allow, &again.reasons, &again.errors),
                (full.allow, &full.reasons, &full.errors),
                "request {i} decided differently when remembered ({}): {req:#?}",
                again.remembered
            );
            remembered += usize::from(again.remembered);
        }
        allows += usize::from(sliced.allow);
        forbidden += usize::from(!sliced.allow && !sliced.reasons.is_empty());
        errored += usize::from(!sliced.errors.is_empty());
    }
    // The generator must exercise every outcome, or the comparison proves little.
    assert!(allows > 200, "allows {allows}");
    assert!(forbidden > 200, "forbidden {forbidden}");
    assert!(errored > 50, "errored {errored}");
    // Every request without claims of its own is remembered the second time it is asked.
    assert!(remembered > 2000, "remembered {remembered}");
}

#[test]
fn slicing_skips_policies_scoped_to_other_entities() {
    let dir = tempfile::tempdir().unwrap();
    let demo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"));
    std::fs::copy(
        demo.join("schema.cedarschema"),
        dir.path().join("schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"
@id("by-principal") permit (principal == Ward::Workload::"spiffe://ward.local/ns/a/sa/a", action, resource);
@id("by-resource") permit (principal, action, resource == Ward::Service::"s");
@id("by-action-group") permit (principal, action in Ward::Action::"read", resource);
@id("by-group") forbid (principal in Ward::Group::"g", action, resource);
@id("global") forbid (principal, action, resource) when { context.path == "/x" };
"#,
    )
    .unwrap();
    let s = Snapshot::load(dir.path()).unwrap();
    assert_eq!(s.policy_count(), 5);
    // `in` on a principal group and unconstrained scopes are always evaluated.
    assert_eq!(s.unsliced_policy_count(), 2);
    let a = Principal::Workload(SpiffeId::parse("spiffe://ward.local/ns/a/sa/a").unwrap());
    let mut req = Request {
        principal: a,
        action: "HEAD".to_owned(),
        resource: Resource::Service("s".to_owned()),
        context: RequestContext::default(),
        entities: Vec::new(),
    };
    let d = s.authorize(&req);
    assert_eq!(
        d.reasons,
        vec!["by-action-group", "by-principal", "by-resource"]
    );
    req.action = "POST".to_owned();
    req.context.path = "/x".to_owned();
    let d = s.authorize(&req);
    assert_eq!(d.reasons, vec!["global"]);
}
