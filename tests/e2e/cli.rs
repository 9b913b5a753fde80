//! The CLI surface: help on every level, version, exit codes and one-line errors.

use predicates::prelude::*;

use crate::support::{ward, write_file};

/// Every subcommand group the CLI promises.
const GROUPS: &[&str] = &[
    "up",
    "config",
    "ca",
    "agent",
    "policy",
    "authz",
    "proxy",
    "gateway",
    "audit",
    "breakglass",
    "control",
];

#[test]
fn version_prints_the_crate_version() {
    ward()
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_every_group() {
    let out = ward()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for group in GROUPS {
        assert!(
            text.contains(&format!("  {group} ")),
            "`{group}` missing from --help:\n{text}"
        );
    }
}

#[test]
fn every_group_has_its_own_help() {
    for group in GROUPS {
        ward()
            .args([group, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains(format!("Usage: ward {group}")));
    }
}

#[test]
fn unknown_subcommand_is_bad_usage() {
    ward().arg("frobnicate").assert().code(2);
}

#[test]
fn malformed_config_names_file_line_column_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        "up.yaml",
        "trust_domain: ward.local\ndata_dirr: ./x\n",
    );
    let assert = ward().args(["config", "check"]).arg(&path).assert().code(2);
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    let expected = format!("error: {}:2:1: unknown field `data_dirr`", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line, no backtrace: {stderr}"
    );
}

#[test]
fn wrong_type_in_config_exits_2_from_the_process_that_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "up.yaml", "data_dir: [1, 2]\n");
    ward()
        .args(["up", "--config"])
        .arg(&path)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{}:1:11: data_dir: invalid type",
            path.display()
        )));
}

#[test]
fn missing_config_file_exits_2() {
    ward()
        .args(["config", "check", "/nonexistent/ward.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "reading config `/nonexistent/ward.yaml`",
        ));
}

#[test]
fn good_config_checks_ok() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(
        &dir,
        "up.yaml",
        "data_dir: ./d\ntrust_domain: example.org\n",
    );
    ward()
        .args(["config", "check"])
        .arg(&path)
        .assert()
        .success()
        .stdout(predicate::str::contains(": ok"));
}

#[test]
fn bad_log_filter_is_bad_usage() {
    ward()
        .args(["--log-level", "ward=notalevel", "config", "check", "x"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--log-level"));
}

#[test]
fn json_logs_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "up.yaml", "data_dir: ./d\n");
    let assert = ward()
        .args(["--log-format", "json", "config", "check"])
        .arg(&path)
        .assert()
        .success();
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "resolved configuration"),
        "{stderr}"
    );
}

#[test]
fn agent_config_is_checked_as_the_agent_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(&dir, "agent.yaml", "default_ttl: 30m\n");
    ward()
        .args(["config", "check", "--kind", "agent"])
        .arg(&good)
        .assert()
        .success();
    let bad = write_file(&dir, "bad.yaml", "socket: /run/a.sock\ndefault_ttl: soon\n");
    ward()
        .args(["config", "check", "--kind", "agent"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("{}:2:", bad.display())))
        .stderr(predicate::str::contains("default_ttl"));
}

/// `ward config check --kind KIND FILE` succeeds, logs the resolved configuration and never
/// the store password `s3cret`.
fn checks_without_the_password(kind: &str, file: &std::path::Path) {
    let assert = ward()
        .args(["config", "check", "--kind", kind])
        .arg(file)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("{}: ok", file.display())));
    let stderr = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("resolved configuration"), "{stderr}");
    assert!(
        !stderr.contains("s3cret"),
        "the store password is logged: {stderr}"
    );
}

#[test]
fn proxy_and_authz_configs_are_checked_as_their_processes_load_them() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = write_file(
        &dir,
        "proxy.yaml",
        "service: orders-api\naudit: { store: \"postgres://ward:s3cret@db:5432/audit\" }\n",
    );
    checks_without_the_password("proxy", &proxy);

    // Parsed fine, refused by the proxy's own checks.
    let unnamed = write_file(&dir, "unnamed.yaml", "node: a\n");
    ward()
        .args(["config", "check", "--kind", "proxy"])
        .arg(&unnamed)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("`service`: must name the service"));

    let authz = write_file(
        &dir,
        "authz.yaml",
        "policies: repo\naudit: \"postgres://ward:s3cret@db/audit\"\n",
    );
    checks_without_the_password("authz", &authz);
    let bad = write_file(&dir, "bad-authz.yaml", "policies: repo\nlisten: nowhere\n");
    ward()
        .args(["config", "check", "--kind", "authz"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!("{}:2:", bad.display())))
        .stderr(predicate::str::contains("listen"));
}
