use std::future::Future;
use std::time::Instant;

use ward_identity::SpiffeId;

use super::*;
use crate::PolicyEngine;
use crate::modes::Modes;
use crate::request::{Principal, Request, RequestContext, Resource};
use crate::test_util::demo_copy;

const BROKEN: &str =
    "@id(\"broken\")\npermit (principal, action, resource) when { principal.nope };\n";
const ALLOW_INVENTORY: &str = r#"@id("inventory-to-payments")
permit (
  principal == Ward::Workload::"spiffe://ward.local/ns/inventory/sa/inventory-svc",
  action == Ward::Action::"payments:charge",
  resource == Ward::Service::"payments-svc"
);
"#;

fn setup(candidate: bool) -> (tempfile::TempDir, Option<tempfile::TempDir>, Arc<Reloader>) {
    let dir = demo_copy();
    let cand = candidate.then(demo_copy);
    let engine = Arc::new(PolicyEngine::load(dir.path()).unwrap());
    let authz = Arc::new(Authorizer::new(engine, Modes::default(), "n"));
    let reloader = Arc::new(Reloader::new(
        authz,
        dir.path().to_owned(),
        cand.as_ref().map(|c| c.path().to_owned()),
    ));
    (dir, cand, reloader)
}

fn charge() -> Request {
    Request {
        principal: Principal::Workload(
            SpiffeId::parse("spiffe://ward.local/ns/inventory/sa/inventory-svc").unwrap(),
        ),
        action: "payments:charge".to_owned(),
        resource: Resource::Service("payments-svc".to_owned()),
        context: RequestContext {
            mtls: true,
            path: "/charges".to_owned(),
            ..RequestContext::default()
        },
        entities: Vec::new(),
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn an_edit_swaps_in_and_a_broken_edit_keeps_the_last_good_revision() {
    let (dir, _, reloader) = setup(false);
    let authz = reloader.authorizer().clone();
    let first = authz.engine().snapshot().revision().clone();
    assert!(!authz.check(&charge()).allow);

    std::fs::write(dir.path().join("extra.cedar"), ALLOW_INVENTORY).unwrap();
    let second = reloader.reload_enforced().unwrap();
    assert_ne!(second, first);
    assert!(authz.check(&charge()).allow);
    assert!(reloader.failures().is_empty());

    std::fs::write(dir.path().join("broken.cedar"), BROKEN).unwrap();
    let err = reloader.reload_enforced().unwrap_err();
    assert!(err.to_string().contains("broken.cedar:2:"), "{err}");
    assert_eq!(authz.engine().snapshot().revision(), &second);
    assert!(
        authz.check(&charge()).allow,
        "the last good revision serves"
    );
    let failures = reloader.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].target, ReloadTarget::Enforced);
    assert!(failures[0].error.contains("broken.cedar"), "{failures:?}");

    std::fs::remove_file(dir.path().join("broken.cedar")).unwrap();
    assert_eq!(reloader.reload_enforced().unwrap(), second);
    assert!(
        reloader.failures().is_empty(),
        "a good reload clears the failure"
    );
}

#[test]
fn the_candidate_reloads_on_its_own() {
    let (_dir, cand, reloader) = setup(true);
    let authz = reloader.authorizer().clone();
    assert!(authz.candidate().is_none());
    assert!(reloader.reload_all());
    assert!(authz.candidate().is_some());
    let e = authz.check(&charge());
    assert!(!e.allow && !e.disagrees());

    let cand = cand.unwrap();
    std::fs::write(cand.path().join("extra.cedar"), ALLOW_INVENTORY).unwrap();
    reloader.reload_candidate().unwrap().unwrap();
    let e = authz.check(&charge());
    assert!(!e.allow, "the candidate never decides");
    assert!(e.disagrees());

    std::fs::write(cand.path().join("broken.cedar"), BROKEN).unwrap();
    assert!(!reloader.reload_all());
    assert_eq!(reloader.failures()[0].target, ReloadTarget::Candidate);
    assert!(
        authz.check(&charge()).disagrees(),
        "the last good candidate stays"
    );

    let (_, _, plain) = setup(false);
    assert!(plain.reload_candidate().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reloads_after_an_edit_settles() {
    let (dir, cand, reloader) = setup(true);
    reloader.reload_all();
    let authz = reloader.authorizer().clone();
    let _watch = reloader.watch(Duration::from_millis(50)).unwrap();
    let first = authz.engine().snapshot().revision().clone();

    std::fs::write(dir.path().join("extra.cedar"), ALLOW_INVENTORY).unwrap();
    eventually("the enforced revision to change", || {
        let authz = authz.clone();
        let first = first.clone();
        async move { authz.engine().snapshot().revision() != &first }
    })
    .await;
    assert!(authz.check(&charge()).allow);

    let second = authz.engine().snapshot().revision().clone();
    std::fs::write(dir.path().join("entities/broken.json"), "[{").unwrap();
    eventually("the failure to be reported", || {
        let reloader = reloader.clone();
        async move { !reloader.failures().is_empty() }
    })
    .await;
    assert_eq!(authz.engine().snapshot().revision(), &second);

    // An edit in the candidate directory reloads the candidate.
    let cand = cand.unwrap();
    let cand_first = authz.candidate().unwrap().revision().clone();
    std::fs::write(cand.path().join("extra.cedar"), ALLOW_INVENTORY).unwrap();
    eventually("the candidate revision to change", || {
        let authz = authz.clone();
        let cand_first = cand_first.clone();
        async move { authz.candidate().unwrap().revision() != &cand_first }
    })
    .await;
}

#[test]
fn git_bookkeeping_is_ignored() {
    assert!(in_git_dir(Path::new("/repo/.git/index")));
    assert!(!in_git_dir(Path::new("/repo/policies/mesh.cedar")));
    assert!(!in_git_dir(Path::new("/repo/.github/x")));
}
