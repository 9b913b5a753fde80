//! `ward policy …` against the example repository in `policies/` and broken copies of it.

use std::path::{Path, PathBuf};

use predicates::prelude::*;

use crate::support::ward;

fn demo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"))
}

/// A copy of `policies/` to change.
fn copy_demo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ward_proxy::test_util::copy_dir(&demo(), dir.path());
    dir
}

fn write(dir: &Path, rel: &str, text: &str) {
    std::fs::write(dir.join(rel), text).unwrap();
}

fn stdout(out: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(out.get_output().stdout.clone()).unwrap()
}

#[test]
fn validate_accepts_the_example_repository() {
    ward()
        .args(["policy", "validate"])
        .arg(demo())
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(
                r"ok: \d+ policies, \d+ entities, \d+ routes, \d+ tests, revision \S+\n$",
            )
            .unwrap(),
        );
}

#[test]
fn validate_reports_file_line_and_column_and_exits_2() {
    let dir = copy_demo();
    write(
        dir.path(),
        "broken.cedar",
        "@id(\"broken\")\npermit (principal, action, resource)\nwhen { principal.tenant = \"acme\" };\n",
    );
    write(
        dir.path(),
        "noid.cedar",
        "// no id\npermit (principal, action == Ward::Action::\"connect\", resource);\n",
    );
    let broken = format!("{}:3:", dir.path().join("broken.cedar").display());
    let noid = format!(
        "{}:2:1: policy has no `@id",
        dir.path().join("noid.cedar").display()
    );
    ward()
        .args(["policy", "validate"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(broken))
        .stderr(predicate::str::contains(noid))
        .stderr(predicate::str::contains("is invalid: 2 problems"));
}

#[test]
fn validate_rejects_routes_to_unknown_actions() {
    let dir = copy_demo();
    write(
        dir.path(),
        "routes/orders-api.yaml",
        "service: orders-api\nroutes:\n  - method: POST\n    path: /orders/{id}/cancel\n    action: orders:cancel\n",
    );
    let at = format!(
        "{}:4:11:",
        dir.path().join("routes/orders-api.yaml").display()
    );
    ward()
        .args(["policy", "validate"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{at} action `Ward::Action::\"orders:cancel\"` is not declared in the schema"
        )));
}

#[test]
fn policy_test_passes_on_the_example_repository() {
    let out = ward()
        .args(["policy", "test"])
        .arg(demo())
        .assert()
        .success();
    let text = stdout(&out);
    let last = text.lines().last().unwrap();
    assert!(
        last.ends_with(" passed, 0 failed"),
        "last line: {last}\n{text}"
    );
    assert!(text.contains("globex users cannot read acme orders"));
    assert!(!text.contains("FAIL"));
}

#[test]
fn a_failing_case_exits_1_with_its_reason() {
    let dir = copy_demo();
    write(
        dir.path(),
        "tests/zz-wrong.yaml",
        "cases:\n  - name: inventory may charge (wrong on purpose)\n    principal: spiffe://ward.local/ns/inventory/sa/inventory-svc\n    action: payments:charge\n    resource: payments-svc\n    expect: allow\n",
    );
    let out = ward()
        .args(["policy", "test"])
        .arg(dir.path())
        .assert()
        .code(1);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("inventory may charge"))
        .unwrap_or_else(|| panic!("no row for the case:\n{text}"));
    assert!(line.starts_with("FAIL"), "{line}");
    assert!(
        line.contains("zz-wrong.yaml:2:11: expected allow, got deny (no policy applied)"),
        "{line}"
    );
    assert!(text.trim_end().ends_with(" passed, 1 failed"), "{text}");
}

#[test]
fn fmt_check_lists_unformatted_files_and_fmt_fixes_them() {
    ward()
        .args(["policy", "fmt", "--check"])
        .arg(demo())
        .assert()
        .success()
        .stdout("");
    let dir = copy_demo();
    let messy = "@id(\"messy\")\npermit(principal,action==Ward::Action::\"connect\",resource)when{context.mtls};\n";
    write(dir.path(), "messy.cedar", messy);
    let file = dir.path().join("messy.cedar");
    ward()
        .args(["policy", "fmt", "--check"])
        .arg(dir.path())
        .assert()
        .code(1)
        .stdout(format!("{}\n", file.display()));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), messy);
    ward()
        .args(["policy", "fmt"])
        .arg(dir.path())
        .assert()
        .success();
    let pretty = std::fs::read_to_string(&file).unwrap();
    assert!(pretty.contains("permit (\n"), "{pretty}");
    ward()
        .args(["policy", "fmt", "--check"])
        .arg(dir.path())
        .assert()
        .success();
    // A file that does not parse is reported and never rewritten.
    let broken = "@id(\"b\")\npermit(principal,action\n";
    write(dir.path(), "broken.cedar", broken);
    ward()
        .args(["policy", "fmt"])
        .arg(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("broken.cedar: cannot format"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("broken.cedar")).unwrap(),
        broken
    );
}

#[test]
fn explain_names_the_deciding_policy_and_the_closest_permits() {
    let out = ward()
        .args(["policy", "explain"])
        .arg(demo())
        .args([
            "--principal",
            "spiffe://ward.local/ns/checkout/sa/checkout-api",
            "--resource",
            "orders-api",
            "--context",
            r#"{"method":"POST","path":"/orders/7712/refund","user":"https://login.ward.local#user:42"}"#,
        ])
        .assert()
        .code(1);
    let text = stdout(&out);
    assert!(
        text.starts_with("decision: deny\naction:   orders:refund\n"),
        "{text}"
    );
    assert!(
        text.contains("determined by:\n  orders-refund-needs-support-user ("),
        "{text}"
    );
    assert!(
        text.contains("closest permits:\n  mesh-checkout-to-orders (")
            && text.contains("scope matched, condition true, overridden by the forbid above"),
        "{text}"
    );

    // A default deny: a permit's scope matched but its condition did not hold.
    let out = ward()
        .args(["policy", "explain"])
        .arg(demo())
        .args([
            "--principal",
            "User::\"https://login.ward.local#user:7\"",
            "--action",
            "GET",
            "--resource",
            "mobile-gateway",
        ])
        .assert()
        .code(1);
    let text = stdout(&out);
    assert!(
        text.contains("determined by: no policy (deny by default)"),
        "{text}"
    );

    ward()
        .args(["policy", "explain"])
        .arg(demo())
        .args([
            "--principal",
            "User::\"https://login.ward.local#user:42\"",
            "--action",
            "GET",
            "--resource",
            "mobile-gateway",
            "--format",
            "json",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(r#""decision": "allow""#));

    ward()
        .args(["policy", "explain"])
        .arg(demo())
        .args([
            "--principal",
            "spiffe://ward.local/ns/a/sa/b",
            "--resource",
            "orders-api",
        ])
        .args(["--context", r#"{"method":"GET","path":"/orders%2F1"}"#])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("encoded `/`"));
}

#[test]
fn diff_lists_requests_whose_decision_changes() {
    let new = copy_demo();
    // The change under review: refunds no longer need a support user.
    let mesh = std::fs::read_to_string(new.path().join("mesh.cedar")).unwrap();
    let cut = mesh.find("// Refunds move money").unwrap();
    write(new.path(), "mesh.cedar", &mesh[..cut]);
    let requests = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        requests.path(),
        concat!(
            r#"{"principal":"spiffe://ward.local/ns/checkout/sa/checkout-api","resource":"orders-api","context":{"method":"GET","path":"/orders/1"}}"#,
            "\n\n",
            r#"{"principal":"spiffe://ward.local/ns/checkout/sa/checkout-api","resource":"orders-api","context":{"method":"POST","path":"/orders/1/refund"},"decision":"deny","time":"2025-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"principal":"spiffe://ward.local/ns/inventory/sa/inventory-svc","action":"payments:charge","resource":"payments-svc"}"#,
            "\n",
        ),
    )
    .unwrap();
    let out = ward()
        .args(["policy", "diff"])
        .arg(demo())
        .arg(new.path())
        .arg("--requests")
        .arg(requests.path())
        .assert()
        .code(1);
    let text = stdout(&out);
    let rows: Vec<&str> = text.lines().filter(|l| !l.starts_with("LINE")).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].starts_with("3 "), "{text}");
    assert!(rows[0].contains("POST /orders/1/refund"), "{text}");
    assert!(
        rows[0].contains("deny (orders-refund-needs-support-user)"),
        "{text}"
    );
    assert!(
        rows[0].ends_with("allow (mesh-checkout-to-orders)"),
        "{text}"
    );
    assert!(
        rows[1].starts_with("3 requests replayed")
            && rows[1].contains("1 changed, 1 now allowed, 0 now denied"),
        "{text}"
    );

    ward()
        .args(["policy", "diff"])
        .arg(demo())
        .arg(demo())
        .arg("--requests")
        .arg(requests.path())
        .assert()
        .success()
        .stdout(predicate::str::contains("0 changed"));

    std::fs::write(requests.path(), "{\"principal\": 1}\n").unwrap();
    ward()
        .args(["policy", "diff"])
        .arg(demo())
        .arg(demo())
        .arg("--requests")
        .arg(requests.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{}:1: not a request",
            requests.path().display()
        )));
}
