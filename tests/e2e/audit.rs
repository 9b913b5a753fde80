//! `ward audit` over a real SQLite log written by the audit writer: the reviewer's questions
//! from docs/AUDIT.md, asked through the CLI.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use predicates::prelude::*;
use ward_audit::record::now_ms;
use ward_audit::{AuditKey, AuditRecord, Auditor, Config, Decision, Store};

use crate::support::ward;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Writes 40 decisions: every 4th denied, every 10th a break-glass bypass; the first 10 are
/// two days old. Returns the store URL and the key path.
async fn log(dir: &Path) -> (String, PathBuf) {
    let url = format!("sqlite://{}", dir.join("audit.db").display());
    let key_path = dir.join("audit.key");
    let key = Arc::new(AuditKey::load_or_create(&key_path).unwrap());
    let store = Store::open(&url).await.unwrap();
    let (auditor, task) =
        Auditor::spawn(store, Some(key), Config::new("proxy-a", dir.join("spool")))
            .await
            .unwrap();
    for i in 0..40 {
        let mut r = AuditRecord::new("proxy-a", &format!("req-{i}"));
        r.time_ms = if i < 10 {
            now_ms() - 2 * DAY_MS + i
        } else {
            now_ms()
        };
        r.principal = format!("spiffe://ward.local/ns/shop/sa/svc-{}", i % 2);
        r.end_user = Some("https://idp.example#42".into());
        r.action = "GET".into();
        r.resource = "orders-api".into();
        r.decision = if i % 4 == 0 {
            Decision::Deny
        } else {
            Decision::Allow
        };
        r.policies = vec!["orders-read".into()];
        r.policy_revision = "rev-1".into();
        if i % 10 == 9 {
            r.bypass = true;
            r.grant_id = Some("bg-7".into());
            r.original_decision = Some(Decision::Deny);
        }
        auditor.record(r).unwrap();
    }
    assert!(auditor.flush().await.unwrap());
    drop(auditor);
    task.await.unwrap();
    (url, key_path)
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8(assert.get_output().stdout.clone()).unwrap()
}

#[tokio::test]
async fn query_export_and_stats_answer_the_reviewers_questions() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _) = log(dir.path()).await;

    // Who was denied what since yesterday?
    let out = ward()
        .args([
            "audit",
            "query",
            "--store",
            &url,
            "--decision",
            "deny",
            "--since",
            "1d",
            "--format",
            "json",
        ])
        .assert()
        .success();
    let denies: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(denies.len(), 7, "denies among the 30 recent records");
    assert!(
        denies
            .iter()
            .all(|d| d["decision"] == "deny" && d["hash"].is_string())
    );

    // What did break-glass let through?
    let out = ward()
        .args([
            "audit", "query", "--store", &url, "--bypass", "--format", "csv",
        ])
        .assert()
        .success();
    let csv = stdout(&out);
    assert!(csv.starts_with("time,request_id,principal"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    assert!(csv.contains("bg-7"));

    let out = ward()
        .args([
            "audit",
            "query",
            "--store",
            &url,
            "--principal",
            "spiffe://ward.local/ns/shop/sa/svc-1",
            "--limit",
            "5",
        ])
        .assert()
        .success();
    assert_eq!(stdout(&out).lines().count(), 1 + 5, "header plus one page");

    let out = ward()
        .args(["audit", "export", "--store", &url])
        .assert()
        .success();
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    assert_eq!(lines[0]["chain"], "proxy-a");

    let out = ward()
        .args(["audit", "stats", "--store", &url, "--format", "json"])
        .assert()
        .success();
    let stats: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        stats["by_decision"],
        serde_json::json!([["allow", 30], ["deny", 10]])
    );
    assert_eq!(stats["bypasses_by_grant"], serde_json::json!([["bg-7", 4]]));
}

#[tokio::test]
async fn verify_passes_then_names_a_tampered_record_and_prune_keeps_it_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let (url, key) = log(dir.path()).await;
    let pubkey = format!("{}.pub", key.display());
    ward()
        .args(["audit", "verify", "--store", &url, "--key", &pubkey])
        .assert()
        .success()
        .stdout(predicate::str::contains("intact"));

    ward()
        .args([
            "audit",
            "prune",
            "--store",
            &url,
            "--older-than",
            "1d",
            "--key",
        ])
        .arg(&key)
        .assert()
        .success()
        .stdout(predicate::str::contains("pruned 10 record(s)"));
    ward()
        .args(["audit", "verify", "--store", &url, "--key", &pubkey])
        .assert()
        .success();

    // Someone turns a deny into an allow behind the writer's back.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit_records SET decision = 'allow' WHERE seq = 13")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    ward()
        .args(["audit", "verify", "--store", &url, "--key", &pubkey])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("record 13 was edited"));
}

#[test]
fn a_missing_store_or_key_is_bad_input() {
    ward()
        .args([
            "audit",
            "query",
            "--store",
            "sqlite:///nonexistent/audit.db",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no audit database"));
    ward()
        .args([
            "audit",
            "verify",
            "--store",
            "sqlite:///nonexistent/audit.db",
            "--key",
            "/nonexistent.pub",
        ])
        .assert()
        .code(2);
    ward()
        .args([
            "audit",
            "query",
            "--since",
            "last tuesday",
            "--store",
            "sqlite:///x",
        ])
        .assert()
        .code(2);
}
