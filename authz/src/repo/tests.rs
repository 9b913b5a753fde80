use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn demo_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"))
}

/// A copy of the demo repository to break.
fn copy_demo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["", "entities", "routes", "tests"] {
        let from = demo_dir().join(sub);
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
    dir
}

fn write(dir: &Path, rel: &str, text: &str) {
    std::fs::write(dir.join(rel), text).unwrap();
}

/// Loads `dir` and returns its problems as `rel:line:col: message` strings.
fn problems(dir: &Path) -> Vec<String> {
    let model = Model::new().unwrap();
    let err = load(dir, &model).expect_err("the repository should be rejected");
    let prefix = format!("{}/", dir.display());
    err.problems()
        .iter()
        .map(|p| p.to_string().replace(&prefix, ""))
        .collect()
}

fn assert_one(problems: &[String], expected_prefix: &str, contains: &str) {
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(expected_prefix) && p.contains(contains)),
        "no problem starting with `{expected_prefix}` containing `{contains}` in {problems:#?}"
    );
}

#[test]
fn the_demo_repository_is_valid() {
    let model = Model::new().unwrap();
    let loaded = load(&demo_dir(), &model).unwrap();
    assert!(loaded.policies.num_of_policies() > 5);
}

#[test]
fn a_syntax_error_names_its_file_line_and_column() {
    let dir = copy_demo();
    write(
        dir.path(),
        "broken.cedar",
        "@id(\"ok\")\npermit (principal, action, resource);\n\n@id(\"bad\")\npermit (principal, action, resource)\nwhen { context.mtls && };\n",
    );
    let p = problems(dir.path());
    assert_one(&p, "broken.cedar:6:", "unexpected token");
}

#[test]
fn missing_and_duplicate_ids_are_located() {
    let dir = copy_demo();
    write(
        dir.path(),
        "zz.cedar",
        "// first line\n@id(\"tenant-isolation\")\nforbid (principal, action, resource);\n\n  permit (principal, action, resource);\n",
    );
    let p = problems(dir.path());
    assert_one(
        &p,
        "zz.cedar:2:1",
        "duplicate policy id `tenant-isolation` (first used at ",
    );
    assert_one(&p, "zz.cedar:5:3", "no `@id(\"…\")` annotation");
}

#[test]
fn strict_validation_errors_point_into_the_policy() {
    let dir = copy_demo();
    write(
        dir.path(),
        "typo.cedar",
        "@id(\"typo\")\npermit (principal is Ward::Workload, action, resource)\nwhen { principal.namespce == \"shop\" };\n",
    );
    let p = problems(dir.path());
    assert_one(&p, "typo.cedar:3:8", "namespce");
    // A policy of another file that is fine keeps its own location untouched.
    assert!(p.iter().all(|l| l.starts_with("typo.cedar")), "{p:#?}");
}

#[test]
fn entity_problems_point_at_the_entity() {
    let dir = copy_demo();
    write(
        dir.path(),
        "entities/extra.json",
        "[\n  { \"uid\": { \"type\": \"Ward::Group\", \"id\": \"ops\" }, \"attrs\": {}, \"parents\": [] },\n  { \"uid\": { \"type\": \"Ward::Service\", \"id\": \"x\" },\n    \"attrs\": { \"namespace\": 7, \"tenant\": \"t\", \"labels\": [] }, \"parents\": [] },\n  { \"uid\": { \"type\": \"Ward::Group\", \"id\": \"support\" }, \"attrs\": {}, \"parents\": [] }\n]\n",
    );
    let p = problems(dir.path());
    assert_one(&p, "entities/extra.json:3:3", "namespace");
    assert_one(
        &p,
        "entities/users.json:",
        "duplicate entity `Ward::Group::\"support\"`",
    );
    write(
        dir.path(),
        "entities/extra.json",
        "[\n  { \"uid\": 1,, }\n]",
    );
    let p = problems(dir.path());
    assert_one(&p, "entities/extra.json:2:14", "key must be a string");
}

#[test]
fn route_problems_are_located() {
    let dir = copy_demo();
    write(
        dir.path(),
        "routes/extra.yaml",
        "service: extra\nroutes:\n  - method: GET\n    path: /things/{id}\n    action: things:read\n  - method: GET\n    path: /a//b\n    action: GET\n  - method: GET\n    path: /things/{other}\n    action: GET\n  - method: FETCH\n    path: /x\n    action: GET\n",
    );
    let p = problems(dir.path());
    assert_one(
        &p,
        "routes/extra.yaml:4:11",
        "action `Ward::Action::\"things:read\"` is not declared",
    );
    assert_one(&p, "routes/extra.yaml:7:11", "never matches");
    assert_one(&p, "routes/extra.yaml:13:11", "unknown method `FETCH`");
    write(
        dir.path(),
        "routes/extra.yaml",
        "service: extra\nroutes:\n  - method: GET\n    path: /things/{id}\n    action: GET\n  - method: GET\n    path: /things/export\n    action: HEAD\n",
    );
    let p = problems(dir.path());
    assert_one(
        &p,
        "routes/extra.yaml:7:11",
        "`GET /things/{id}` at line 4 comes first",
    );
    write(
        dir.path(),
        "routes/extra.yaml",
        "service: extra\nroutes:\n  - method: GET\n    pth: /x\n",
    );
    let p = problems(dir.path());
    assert_one(&p, "routes/extra.yaml:4:5", "unknown field `pth`");
    write(dir.path(), "routes/extra.yaml", "service: orders-api\n");
    let p = problems(dir.path());
    assert_one(&p, "routes/orders-api.yaml:1:1", "already defined at ");
}

#[test]
fn schema_problems_are_located_and_the_model_is_enforced() {
    let dir = copy_demo();
    write(
        dir.path(),
        SCHEMA_FILE,
        "namespace Ward {\n  entity Workload\n  entity User;\n}\n",
    );
    let p = problems(dir.path());
    assert_one(&p, "schema.cedarschema:3:", "");
    write(
        dir.path(),
        SCHEMA_FILE,
        "namespace Ward {\n  entity Workload;\n  action \"GET\" appliesTo { principal: [Workload], resource: [Workload] };\n}\n",
    );
    let p = problems(dir.path());
    assert_one(
        &p,
        "schema.cedarschema:1:1",
        "does not declare entity type `Ward::Service`",
    );
    assert_one(
        &p,
        "schema.cedarschema:1:1",
        "does not declare action `Ward::Action::\"egress\"`",
    );
    assert_one(
        &p,
        "schema.cedarschema:3:",
        "the context of action `GET` does not accept",
    );
    std::fs::remove_file(dir.path().join(SCHEMA_FILE)).unwrap();
    let p = problems(dir.path());
    assert_one(&p, "schema.cedarschema:1:1", "is missing");
}

#[test]
fn templates_are_rejected() {
    let dir = copy_demo();
    write(
        dir.path(),
        "t.cedar",
        "\n@id(\"t\")\npermit (principal == ?principal, action, resource);\n",
    );
    let p = problems(dir.path());
    assert_one(&p, "t.cedar:2:1", "templates");
}

#[test]
fn content_hash_revision_changes_with_any_file() {
    let dir = copy_demo();
    let model = Model::new().unwrap();
    let a = load(dir.path(), &model).unwrap().revision;
    assert!(a.starts_with("sha256:") && a.len() == 23, "{a}");
    assert_eq!(load(dir.path(), &model).unwrap().revision, a);
    write(dir.path(), "tests/extra.yaml", "cases: []\n");
    let b = load(dir.path(), &model).unwrap().revision;
    assert_ne!(a, b);
}

#[test]
fn git_revision_is_the_commit_and_marks_dirty_trees() {
    let dir = copy_demo();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("git is installed");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "policies"]);
    let head = git(&["rev-parse", "HEAD"]);
    let model = Model::new().unwrap();
    assert_eq!(load(dir.path(), &model).unwrap().revision, head);
    write(
        dir.path(),
        "extra.cedar",
        "@id(\"extra\")\npermit (principal, action == Ward::Action::\"connect\", resource);\n",
    );
    let dirty = load(dir.path(), &model).unwrap().revision;
    assert!(dirty.starts_with(&format!("{head}-dirty-")), "{dirty}");
}
