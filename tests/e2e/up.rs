//! `ward up` on embedded defaults: the README's first command, end to end. A standard SPIFFE
//! client (the crates.io `spiffe` crate) fetches an SVID and the bundle from it, and two TLS
//! endpoints built from that material complete mutual TLS through our verifiers. Calls through
//! the demo mesh's proxies are allowed and denied by the demo policies, drained on SIGTERM, and
//! their audit records query and verify with the audit commands' defaults.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_identity::verify::{self, Bundles, ServerIdentity, SvidVerifier};
use ward_identity::{SpiffeId, TrustBundle, TrustDomain, X509Svid};

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn command(dir: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("ward"));
    cmd.arg("up")
        .current_dir(dir)
        .env_remove("WARD_DATA_DIR")
        .env_remove("WARD_AGENT_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn start(dir: &Path) -> Up {
    let child = command(dir).stdout(Stdio::null()).spawn().unwrap();
    let mut up = Up(child);
    let socket = dir.join("ward-data/agent.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = up.0.try_wait().unwrap() {
            panic!("ward up exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "ward up did not serve its socket in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    up
}

/// Our SVID type from what the third-party client fetched.
fn to_ward_svid(svid: &spiffe::X509Svid) -> X509Svid {
    let now = SystemTime::now();
    X509Svid {
        spiffe_id: SpiffeId::parse(&svid.spiffe_id().to_string()).unwrap(),
        cert_chain: svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_ref().to_vec()))
            .collect(),
        private_key: PrivatePkcs8KeyDer::from(svid.private_key().as_ref().to_vec()),
        not_before: now,
        issued_at: now,
        not_after: now + Duration::from_secs(60),
    }
}

#[tokio::test]
async fn up_serves_svids_to_a_standard_client_and_they_complete_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let _up = start(dir.path());
    let endpoint = format!(
        "unix://{}",
        dir.path().join("ward-data/agent.sock").display()
    );
    let client = spiffe::WorkloadApiClient::connect_to(endpoint)
        .await
        .unwrap();

    let fetched = client.fetch_x509_svid().await.unwrap();
    let id = fetched.spiffe_id().to_string();
    assert!(id.starts_with("spiffe://ward.local/ns/default/sa/"), "{id}");
    let td = spiffe::TrustDomain::new("ward.local").unwrap();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let authorities: Vec<CertificateDer<'static>> = bundles
        .get(&td)
        .expect("a bundle for ward.local")
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    let bundle = TrustBundle::new(
        TrustDomain::parse("ward.local").unwrap(),
        authorities,
        Vec::new(),
    )
    .unwrap();

    ward_identity::install_crypto_provider();
    let svid = to_ward_svid(&fetched);
    let verifier = SvidVerifier::new(Bundles::new([Arc::new(bundle)]));
    let server = verify::server_config(&svid, verifier.clone()).unwrap();
    let client_cfg = verify::client_config(
        &svid,
        verifier,
        ServerIdentity::Exact(svid.spiffe_id.clone()),
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let peer = verify::peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap()).unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.shutdown().await.ok();
        peer
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(ServerName::try_from("not-checked.invalid").unwrap(), tcp)
        .await
        .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"hello");
    let peer = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer.as_str(), id, "the server saw the client's SPIFFE id");
}

#[test]
fn up_refuses_a_data_dir_whose_ca_is_for_another_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::ward()
        .args(["ca", "init", "--trust-domain", "other.org", "--dir"])
        .arg(dir.path().join("ward-data/ca"))
        .assert()
        .success();
    crate::support::ward()
        .arg("up")
        .current_dir(dir.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains("is for trust domain `other.org`"));
}

/// Starts `ward up ARGS…` with its stdout piped to the test.
fn start_piped(dir: &Path, args: &[&str]) -> (Up, ChildStdout) {
    let mut child = command(dir)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (Up(child), stdout)
}

/// Starts `ward up --format json` and returns its summary once everything listens.
fn start_mesh(dir: &Path) -> (Up, serde_json::Value) {
    let (up, stdout) = start_piped(dir, &["--format", "json"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("ward up printed its summary in time");
    let summary = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (up, summary)
}

/// The outbound listener of `service`'s proxy, from the summary.
fn outbound(summary: &serde_json::Value, service: &str) -> SocketAddr {
    summary["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("no {service} in {summary}"))["outbound"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// `GET http://{host}{path}` through the HTTP proxy at `proxy`: the status and the body.
async fn get(proxy: SocketAddr, host: &str, path: &str) -> (u16, String) {
    send(proxy, "GET", host, path).await
}

/// `{method} http://{host}{path}` (no body) through the HTTP proxy at `proxy`.
async fn send(proxy: SocketAddr, method: &str, host: &str, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let request = format!(
        "{method} http://{host}{path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\n\
         connection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn up_runs_the_demo_mesh_and_its_decisions_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, summary) = start_mesh(dir.path());
    assert_eq!(summary["trust_domain"], "ward.local");
    assert_eq!(
        summary["services"].as_array().unwrap().len(),
        6,
        "{summary}"
    );
    let gateway = outbound(&summary, "mobile-gateway");
    let checkout = outbound(&summary, "checkout-api");

    // Allowed: the app behind checkout-api sees the path and the caller the proxy verified.
    let (status, body) = get(gateway, "checkout-api", "/cart").await;
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(seen["service"], "checkout-api");
    assert_eq!(seen["path"], "/cart");
    assert_eq!(
        seen["peer"],
        "spiffe://ward.local/ns/mobile/sa/mobile-gateway"
    );
    // No policy lets the gateway list orders; checkout-api may.
    let (status, body) = get(gateway, "orders-api", "/orders").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("denied by policy"), "{body}");
    let (status, body) = get(checkout, "orders-api", "/orders").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("spiffe://ward.local/ns/checkout/sa/checkout-api"),
        "{body}"
    );

    // Checking out crosses four proxies: checkout-api's app places the order (orders-api's app
    // reserves its items at inventory-svc) and charges for it, each call through its own proxy
    // with the request id it was given.
    let (status, body) = send(gateway, "POST", "checkout-api", "/checkout").await;
    assert_eq!(status, 200, "{body}");
    let checkout: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    let request_id = checkout["request_id"].as_str().unwrap().to_owned();
    let calls = &checkout["calls"];
    assert_eq!(calls[0]["service"], "orders-api", "{checkout}");
    assert_eq!(calls[0]["status"], 200, "{checkout}");
    let reserve = &calls[0]["answer"]["calls"][0];
    assert_eq!(reserve["service"], "inventory-svc", "{checkout}");
    assert_eq!(reserve["status"], 200, "{checkout}");
    assert_eq!(
        reserve["answer"]["peer"],
        "spiffe://ward.local/ns/orders/sa/orders-api"
    );
    assert_eq!(calls[1]["service"], "payments-svc", "{checkout}");
    assert_eq!(calls[1]["status"], 200, "{checkout}");
    for hop in [&calls[0]["answer"], &reserve["answer"], &calls[1]["answer"]] {
        assert_eq!(hop["request_id"], request_id.as_str(), "{checkout}");
    }

    // A second `ward up` on the same data dir fails before it starts any proxy.
    crate::support::ward()
        .arg("up")
        .current_dir(dir.path())
        .timeout(Duration::from_secs(30))
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicates::str::contains(
            "is in use by another Workload API server",
        ));

    crate::support::signal(&up.0, "TERM");
    let status = crate::support::wait_exit(&mut up.0, Duration::from_secs(30), String::new).await;
    assert!(status.success(), "{status}");

    // The audit commands' defaults are where `ward up` writes.
    let out = crate::support::ward()
        .args(["audit", "query", "--format", "json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let decisions: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["principal"].as_str().unwrap(),
                r["resource"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(decisions.len(), 7, "{decisions:?}");
    let checkout_hops: Vec<_> = records
        .iter()
        .filter(|r| r["request_id"] == request_id.as_str())
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(checkout_hops.len(), 4, "{request_id} in {checkout_hops:?}");
    for action in [
        r#"Action::"orders:create""#,
        r#"Action::"inventory:reserve""#,
        r#"Action::"payments:charge""#,
    ] {
        assert!(
            checkout_hops.contains(&action),
            "{action} not in {checkout_hops:?}"
        );
    }
    for (principal, resource, decision) in [
        ("mobile-gateway", "checkout-api", "allow"),
        ("mobile-gateway", "orders-api", "deny"),
        ("checkout-api", "orders-api", "allow"),
        ("orders-api", "inventory-svc", "allow"),
        ("checkout-api", "payments-svc", "allow"),
    ] {
        assert!(
            decisions
                .iter()
                .any(|(p, r, d)| p.ends_with(principal) && r.contains(resource) && *d == decision),
            "{principal} → {resource} {decision} not in {decisions:?}"
        );
    }
    crate::support::ward()
        .args(["audit", "verify"])
        .current_dir(dir.path())
        .assert()
        .success()
        .stdout(predicates::str::contains("intact"));
}

#[tokio::test]
async fn up_reloads_policies_on_sighup_and_a_denied_onward_call_fails_the_checkout() {
    let dir = tempfile::tempdir().unwrap();
    let (up, summary) = start_mesh(dir.path());
    let gateway = outbound(&summary, "mobile-gateway");
    let (status, body) = send(gateway, "POST", "checkout-api", "/checkout").await;
    assert_eq!(status, 200, "{body}");

    // Take away checkout-api's permit to charge, the way an operator would: edit the repository
    // `ward up` wrote, then SIGHUP.
    let mesh = dir.path().join("ward-data/policies/mesh.cedar");
    let text = std::fs::read_to_string(&mesh).unwrap();
    let permit = text
        .find(r#"@id("mesh-checkout-to-payments")"#)
        .expect("the demo repository has the checkout → payments permit");
    let end = permit + text[permit..].find(");").unwrap() + 2;
    std::fs::write(&mesh, format!("{}{}", &text[..permit], &text[end..])).unwrap();
    crate::support::signal(&up.0, "HUP");

    let deadline = Instant::now() + Duration::from_secs(20);
    let checkout = loop {
        let (status, body) = send(gateway, "POST", "checkout-api", "/checkout").await;
        if status != 200 {
            assert_eq!(status, 502, "{body}");
            break serde_json::from_str::<serde_json::Value>(body.trim()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the policies were not reloaded: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The order still went through; the charge was denied at payments-svc's proxy.
    assert_eq!(checkout["calls"][0]["status"], 200, "{checkout}");
    assert_eq!(
        checkout["calls"][1]["service"], "payments-svc",
        "{checkout}"
    );
    assert_eq!(checkout["calls"][1]["status"], 403, "{checkout}");
    assert_eq!(
        checkout["calls"][1]["answer"]["error"], "denied by policy",
        "{checkout}"
    );
}

#[test]
fn up_without_the_demo_runs_no_proxies() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("up.yaml"), "demo: false\n").unwrap();
    let (_up, stdout) = start_piped(dir.path(), &["--config", "up.yaml"]);
    let mut summary = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        summary.push_str(&line);
        summary.push('\n');
        if line.starts_with("SPIFFE clients:") {
            break;
        }
    }
    assert!(summary.contains("Workload API"), "{summary}");
    assert!(!summary.contains("mobile-gateway"), "{summary}");
    assert!(!dir.path().join("ward-data/policies").exists());
}

#[test]
fn up_with_a_broken_policy_file_names_it_once_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("ward-data/policies");
    std::fs::create_dir_all(&repo).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/schema.cedarschema");
    std::fs::copy(schema, repo.join("schema.cedarschema")).unwrap();
    std::fs::write(
        repo.join("mesh.cedar"),
        "permit (principal, action, resource\n",
    )
    .unwrap();
    let out = crate::support::ward()
        .arg("up")
        .current_dir(dir.path())
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        error.starts_with("error: starting the proxy of inventory-svc: policies: "),
        "{error}"
    );
    assert_eq!(error.matches("mesh.cedar:").count(), 1, "{error}");
}
