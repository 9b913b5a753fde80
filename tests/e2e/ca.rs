//! `ward ca`: the CA as an operator drives it from the shell.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use predicates::prelude::*;

use crate::support::ward;

fn init(dir: &Path) {
    ward()
        .args(["ca", "init", "--trust-domain", "example.org", "--dir"])
        .arg(dir)
        .assert()
        .success()
        .stdout(predicate::str::contains("example.org"));
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_issue_and_verify_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init(&ca);
    assert_eq!(mode(&ca.join("ca.json")), 0o600);
    ward()
        .args(["ca", "init", "--trust-domain", "example.org", "--dir"])
        .arg(&ca)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("refusing to overwrite"));

    let out = tmp.path().join("svid");
    ward()
        .args([
            "ca",
            "issue",
            "--spiffe-id",
            "spiffe://example.org/ns/shop/sa/checkout",
            "--ttl",
            "10m",
            "--dir",
        ])
        .arg(&ca)
        .arg("--out")
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "spiffe://example.org/ns/shop/sa/checkout",
        ));
    assert_eq!(mode(&out.join("svid.key")), 0o600);
    // A third-party tool accepts the chain and sees exactly one URI SAN.
    let verify = Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(out.join("bundle.pem"))
        .arg(out.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(out.join("svid.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
}

#[test]
fn issue_rejects_bad_ids_and_foreign_trust_domains() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init(&ca);
    for (id, msg) in [
        ("spiffe://example.org/a/../b", "dot segments"),
        ("spiffe://other.org/a", "not in trust domain `example.org`"),
        ("https://example.org/a", "must start with `spiffe://`"),
    ] {
        ward()
            .args(["ca", "issue", "--spiffe-id", id, "--dir"])
            .arg(&ca)
            .arg("--out")
            .arg(tmp.path().join("x"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains(msg));
    }
    ward()
        .args([
            "ca",
            "issue",
            "--spiffe-id",
            "spiffe://example.org/a",
            "--dir",
        ])
        .arg(tmp.path().join("nope"))
        .arg("--out")
        .arg(tmp.path().join("x"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("ward ca init"));
}

#[test]
fn bundle_show_rotate_and_jwt() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    init(&ca);
    let pem = ward()
        .args(["ca", "bundle", "--dir"])
        .arg(&ca)
        .assert()
        .success();
    let pem = String::from_utf8(pem.get_output().stdout.clone()).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1);
    let jwks = ward()
        .args(["ca", "bundle", "--format", "jwks", "--dir"])
        .arg(&ca)
        .assert()
        .success();
    let jwks: serde_json::Value = serde_json::from_slice(&jwks.get_output().stdout).unwrap();
    assert_eq!(jwks["keys"][0]["use"], "jwt-svid");

    ward()
        .args(["ca", "rotate", "--grace", "1h", "--dir"])
        .arg(&ca)
        .assert()
        .success();
    let show = ward()
        .args(["ca", "show", "--format", "json", "--dir"])
        .arg(&ca)
        .assert()
        .success();
    let show: serde_json::Value = serde_json::from_slice(&show.get_output().stdout).unwrap();
    assert_eq!(
        show["x509_authorities"].as_array().unwrap().len(),
        2,
        "{show}"
    );
    assert_eq!(show["jwt_key_ids"].as_array().unwrap().len(), 2, "{show}");

    let jwt = ward()
        .args([
            "ca",
            "jwt",
            "--spiffe-id",
            "spiffe://example.org/a",
            "--audience",
            "orders",
            "--dir",
        ])
        .arg(&ca)
        .assert()
        .success();
    let token = String::from_utf8(jwt.get_output().stdout.clone()).unwrap();
    assert_eq!(token.trim().split('.').count(), 3);
    ward_identity::install_crypto_provider();
    let bundle = ward_identity::Ca::load(&ca).unwrap();
    let claims = ward_identity::SvidSource::bundle(&bundle)
        .validate_jwt(token.trim(), "orders")
        .unwrap();
    assert_eq!(claims.spiffe_id.as_str(), "spiffe://example.org/a");
}
