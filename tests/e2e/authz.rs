//! `ward authz serve`: the real binary answering the JSON check API, reloading its policy
//! directory on edits and on SIGHUP, evaluating a candidate in shadow, auditing every decision
//! and draining on SIGTERM. `authz/envoy.rs` puts a real Envoy in front of it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::support;

mod envoy;

const TIMEOUT: Duration = Duration::from_secs(20);
const CHECKOUT: &str = "spiffe://ward.local/ns/checkout/sa/checkout-api";
const INVENTORY: &str = "spiffe://ward.local/ns/inventory/sa/inventory-svc";
/// Lets inventory-svc charge payments, which the demo policies do not.
const ALLOW_INVENTORY: &str = r#"@id("inventory-to-payments")
permit (
  principal == Ward::Workload::"spiffe://ward.local/ns/inventory/sa/inventory-svc",
  action == Ward::Action::"payments:charge",
  resource == Ward::Service::"payments-svc"
);
"#;

/// A running `ward authz serve`; killed (and reaped) on drop.
pub(crate) struct Serve {
    child: Child,
    dir: tempfile::TempDir,
    pub(crate) http: SocketAddr,
    pub(crate) grpc: SocketAddr,
}

impl Serve {
    /// Starts the server on `policies` with ports 0, a JSONL audit log and `extra` flags, and
    /// reads the bound addresses from its first line of output.
    pub(crate) fn start(policies: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let audit = format!("jsonl://{}", dir.path().join("audit.jsonl").display());
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("ward"))
            .args(["authz", "serve", "--listen", "127.0.0.1:0", "--grpc-listen"])
            .args(["127.0.0.1:0", "--audit", &audit, "--policies"])
            .arg(policies)
            .args(extra)
            .env("WARD_DATA_DIR", dir.path().join("data"))
            .env("WARD_LOG_LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(TIMEOUT).unwrap_or_default();
        let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
        let addrs = parse_listening(&line)
            .unwrap_or_else(|| panic!("no `listening on` line ({line:?}): {}", stderr()));
        Self {
            child,
            dir,
            http: addrs.0,
            grpc: addrs.1,
        }
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    pub(crate) fn audit_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl")).unwrap_or_default()
    }

    pub(crate) fn signal(&self, name: &str) {
        support::signal(&self.child, name);
    }

    /// Waits for the process to exit (see [`support::wait_exit`]).
    pub(crate) async fn wait_exit(&mut self) -> ExitStatus {
        let stderr = self.dir.path().join("stderr");
        support::wait_exit(&mut self.child, TIMEOUT, || {
            std::fs::read_to_string(&stderr).unwrap_or_default()
        })
        .await
    }

    /// `GET path` on the HTTP listener, as JSON.
    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let (status, body) = call(self.http, "GET", path, "").await;
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// `POST /v1/check` with `body`.
    pub(crate) async fn check(&self, body: &Value) -> (u16, Value) {
        let (status, text) = call(self.http, "POST", "/v1/check", &body.to_string()).await;
        (status, serde_json::from_str(&text).unwrap())
    }

    pub(crate) async fn revision(&self) -> String {
        let (_, ready) = self.get("/ready").await;
        ready["revision"].as_str().unwrap().to_owned()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `listening on http=A grpc=B` → `(A, B)`.
fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("listening on ")?;
    let mut http = None;
    let mut grpc = None;
    for part in rest.split_whitespace() {
        match part.split_once('=')? {
            ("http", a) => http = a.parse().ok(),
            ("grpc", a) => grpc = a.parse().ok(),
            _ => {}
        }
    }
    Some((http?, grpc?))
}

/// One HTTP/1.1 request over `io`; returns the status, the headers and the body.
pub(crate) async fn send<T>(io: T, req: Request<Full<Bytes>>) -> (u16, hyper::HeaderMap, String)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// One plain HTTP request to `addr`.
pub(crate) async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let (status, _, body) = send(tcp, req).await;
    (status, body)
}

/// A copy of the demo policies (`policies/`) without their tests, which edits would break.
pub(crate) fn policies_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ward_proxy::test_util::copy_dir(&repo_path("policies"), dir.path());
    std::fs::remove_dir_all(dir.path().join("tests")).unwrap();
    dir
}

pub(crate) fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn charge() -> Value {
    json!({ "principal": INVENTORY, "action": "payments:charge", "resource": "payments-svc" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_api_decides_audits_and_drains_on_sigterm() {
    let mut serve = Serve::start(&repo_path("policies"), &[]);

    let (status, allow) = serve
        .check(&json!({
            "principal": CHECKOUT,
            "resource": "orders-api",
            "context": { "method": "GET", "path": "/orders/7712", "request_id": "e2e-allow" }
        }))
        .await;
    assert_eq!(status, 200, "{allow}");
    assert_eq!(allow["allow"], true);
    assert_eq!(allow["action"], "orders:read");
    assert_eq!(allow["policies"], json!(["mesh-checkout-to-orders"]));

    let (status, deny) = serve
        .check(&json!({
            "principal": CHECKOUT,
            "resource": "orders-api",
            "context": { "method": "POST", "path": "/orders/7712/refund", "request_id": "e2e-deny" }
        }))
        .await;
    assert_eq!(status, 200);
    assert_eq!(deny["allow"], false);
    assert_eq!(
        deny["policies"],
        json!(["orders-refund-needs-support-user"])
    );

    let (status, bad) = serve
        .check(&json!({ "principal": CHECKOUT, "resource": "orders-api", "entities": [] }))
        .await;
    assert_eq!(status, 400, "{bad}");

    let (status, ready) = serve.get("/ready").await;
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["revision"], allow["revision"]);
    let (_, metrics) = serve.get("/metrics").await;
    let metrics = metrics.as_str().unwrap();
    for want in [
        r#"ward_authz_decisions_total{result="allow",mode="enforce"} 1"#,
        r#"ward_authz_decisions_total{result="deny",mode="enforce"} 1"#,
        r#"ward_authz_bad_requests_total{api="http"} 1"#,
    ] {
        assert!(metrics.contains(want), "missing {want}:\n{metrics}");
    }

    serve.signal("TERM");
    let status = serve.wait_exit().await;
    assert!(status.success(), "{status}: {}", serve.stderr());
    let log = serve.audit_log();
    assert_eq!(log.lines().count(), 2, "one record per decision:\n{log}");
    for id in [&allow["audit_id"], &deny["audit_id"]] {
        assert!(log.contains(id.as_str().unwrap()), "{id} not in\n{log}");
    }
    assert!(log.contains(r#"\"request_id\":\"e2e-deny\""#), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reloads_and_a_broken_edit_keeps_the_last_good_revision() {
    let policies = policies_copy();
    let serve = Serve::start(policies.path(), &[]);
    let first = serve.revision().await;
    assert_eq!(serve.check(&charge()).await.1["allow"], false);

    std::fs::write(policies.path().join("extra.cedar"), ALLOW_INVENTORY).unwrap();
    support::eventually(TIMEOUT, "the edit to be enforced", || async {
        serve.check(&charge()).await.1["allow"] == true
    })
    .await;
    let second = serve.revision().await;
    assert_ne!(second, first);

    std::fs::write(
        policies.path().join("broken.cedar"),
        "@id(\"broken\")\npermit (principal, action, resource) when { principal.nope };\n",
    )
    .unwrap();
    support::eventually(TIMEOUT, "the failed reload to show on /ready", || async {
        let (_, ready) = serve.get("/ready").await;
        ready["reload_failures"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    })
    .await;
    let (status, ready) = serve.get("/ready").await;
    assert_eq!(status, 200);
    assert_eq!(
        ready["revision"],
        second.as_str(),
        "the last good revision serves"
    );
    let failure = &ready["reload_failures"][0];
    assert_eq!(failure["target"], "enforced");
    assert!(
        failure["error"]
            .as_str()
            .unwrap()
            .contains("broken.cedar:2:"),
        "{failure}"
    );
    assert_eq!(serve.check(&charge()).await.1["allow"], true);
    let (_, metrics) = serve.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains(r#"ward_authz_reloads_total{target="enforced",result="failed"}"#),
        "{metrics}"
    );
    assert!(
        serve.stderr().contains("policy reload failed"),
        "{}",
        serve.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_when_watching_is_off() {
    let policies = policies_copy();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "watch: false\n").unwrap();
    let serve = Serve::start(
        policies.path(),
        &["--config", config.path().to_str().unwrap()],
    );
    let first = serve.revision().await;
    std::fs::write(policies.path().join("extra.cedar"), ALLOW_INVENTORY).unwrap();
    assert_eq!(serve.revision().await, first, "not watching: no reload yet");
    assert_eq!(serve.check(&charge()).await.1["allow"], false);

    serve.signal("HUP");
    support::eventually(TIMEOUT, "SIGHUP to reload", || async {
        serve.revision().await != first
    })
    .await;
    assert_eq!(serve.check(&charge()).await.1["allow"], true);
    assert!(
        serve.stderr().contains("SIGHUP received"),
        "{}",
        serve.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_in_shadow_is_reported_but_never_decides() {
    let candidate = policies_copy();
    std::fs::write(candidate.path().join("extra.cedar"), ALLOW_INVENTORY).unwrap();
    let mut serve = Serve::start(
        &repo_path("policies"),
        &["--candidate", candidate.path().to_str().unwrap()],
    );
    let (_, reply) = serve.check(&charge()).await;
    assert_eq!(reply["allow"], false, "{reply}");
    assert_eq!(reply["candidate"]["decision"], "allow", "{reply}");
    assert_eq!(
        reply["candidate"]["policies"],
        json!(["inventory-to-payments"])
    );
    let (_, ready) = serve.get("/ready").await;
    assert_eq!(
        ready["candidate"]["revision"],
        reply["candidate"]["revision"]
    );
    let (_, metrics) = serve.get("/metrics").await;
    assert!(
        metrics.as_str().unwrap().contains(
            r#"ward_authz_shadow_disagreements_total{enforced="deny",candidate="allow"} 1"#
        ),
        "{metrics}"
    );

    serve.signal("TERM");
    assert!(serve.wait_exit().await.success(), "{}", serve.stderr());
    let log = serve.audit_log();
    assert!(log.contains(r#"\"mode\":\"shadow\""#), "{log}");
    assert!(log.contains(r#"\"candidate\":{\"revision\""#), "{log}");
}

#[test]
fn a_broken_repository_or_config_exits_2() {
    let policies = policies_copy();
    std::fs::write(policies.path().join("broken.cedar"), "permit (").unwrap();
    crate::support::ward()
        .args([
            "authz",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .arg("--policies")
        .arg(policies.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains("broken.cedar:1:"));

    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "polices: x\n").unwrap();
    crate::support::ward()
        .args(["authz", "serve", "--config"])
        .arg(config.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains("unknown field `polices`"));
}
