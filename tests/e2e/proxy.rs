//! `ward proxy`: real processes. App A → proxy A outbound → mTLS → proxy B inbound → app B;
//! a policy change (SIGHUP) turns allow into 403 and the audit log holds both decisions; SVIDs
//! from `ward agent` rotate under continuous traffic without a failed request; bad input
//! exits 2 and a port conflict exits 1; SIGTERM drains and exits 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ward_proxy::test_util::{App, TestCa, call, copy_policies, get, http_client, http_raw};

use crate::support;

const MOBILE: &str = "spiffe://ward.local/ns/mobile/sa/mobile-gateway";
const CHECKOUT: &str = "spiffe://ward.local/ns/checkout/sa/checkout-api";
const TIMEOUT: Duration = Duration::from_secs(20);

/// A running `ward proxy`; killed (and reaped) on drop.
struct ProxyProc {
    child: Child,
    stderr: PathBuf,
    inbound: SocketAddr,
    outbound: SocketAddr,
    admin: SocketAddr,
}

impl ProxyProc {
    /// Starts `ward proxy --config FILE` with JSON logs and reads the bound addresses.
    fn start(dir: &Path, name: &str, yaml: &str) -> Self {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        let stderr = dir.join(format!("{name}.stderr"));
        let mut child = ward_command()
            .args(["--log-format", "json", "proxy", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| {
                    panic!(
                        "no `{key}=` in {line:?}: {}",
                        std::fs::read_to_string(&stderr).unwrap_or_default()
                    )
                })
                .parse()
                .unwrap()
        };
        let (inbound, outbound, admin) = (addr("inbound"), addr("outbound"), addr("admin"));
        Self {
            child,
            stderr,
            inbound,
            outbound,
            admin,
        }
    }

    fn signal(&self, name: &str) {
        support::signal(&self.child, name);
    }

    /// Waits for the process to exit (see [`support::wait_exit`]).
    async fn wait_exit(&mut self) -> ExitStatus {
        let stderr = self.stderr.clone();
        support::wait_exit(&mut self.child, TIMEOUT, || {
            std::fs::read_to_string(&stderr).unwrap_or_default()
        })
        .await
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for ProxyProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ward_command() -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("ward"));
    for var in [
        "RUST_LOG",
        "WARD_LOG_LEVEL",
        "WARD_LOG_FORMAT",
        "WARD_PROXY_INBOUND",
        "WARD_PROXY_OUTBOUND",
        "WARD_PROXY_ADMIN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// The YAML of a proxy for `service` on port 0, with `identity` and `extra` lines appended.
fn proxy_yaml(
    dir: &Path,
    node: &str,
    service: &str,
    app: SocketAddr,
    policies: &Path,
    identity: &str,
    extra: &str,
) -> String {
    format!(
        "node: {node}\nservice: {service}\n\
         listen: {{ inbound: \"127.0.0.1:0\", outbound: \"127.0.0.1:0\", admin: \"127.0.0.1:0\" }}\n\
         app: \"{app}\"\npolicies: {policies}\n\
         audit: {{ store: \"sqlite://{db}\", spool_dir: {spool} }}\n\
         drain_timeout: 5s\n{identity}{extra}",
        policies = policies.display(),
        db = dir.join(format!("audit-{node}.db")).display(),
        spool = dir.join(format!("spool-{node}")).display(),
    )
}

fn files_identity(ca: &TestCa, dir: &Path, name: &str, id: &str) -> String {
    let f = ca.write_identity(dir, name, id);
    format!(
        "identity:\n  files: {{ cert: {}, key: {}, bundle: {} }}\n",
        f.cert.display(),
        f.key.display(),
        f.bundle.display()
    )
}

fn registry_to(service: &str, addr: SocketAddr, id: &str) -> String {
    format!(
        "registry:\n  services:\n    {service}:\n      endpoints:\n        - {{ address: \"{addr}\", spiffe_id: \"{id}\" }}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_allow_then_deny_after_a_policy_reload_and_audit_both() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ward.local");
    let policies = copy_policies(dir.path());
    let app_b = App::spawn("app-b").await;
    let b_id = files_identity(&ca, dir.path(), "b", CHECKOUT);
    let mut b = ProxyProc::start(
        dir.path(),
        "b",
        &proxy_yaml(
            dir.path(),
            "proxy-b",
            "checkout-api",
            app_b.addr,
            &policies,
            &b_id,
            "",
        ),
    );
    let a_id = files_identity(&ca, dir.path(), "a", MOBILE);
    let reg = registry_to("checkout-api", b.inbound, CHECKOUT);
    let mut a = ProxyProc::start(
        dir.path(),
        "a",
        &proxy_yaml(
            dir.path(),
            "proxy-a",
            "mobile-gateway",
            app_b.addr,
            &policies,
            &a_id,
            &reg,
        ),
    );

    let client = http_client();
    let (status, body) = call(
        &client,
        a.outbound,
        "checkout-api",
        "/cart",
        &[("x-request-id", "e2e-allow")],
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "app-b /cart"),
        "{}",
        b.logs()
    );
    assert_eq!(app_b.last().unwrap().headers["x-ward-peer-id"], MOBILE);

    // The security team withdraws mobile-gateway's access; SIGHUP applies it.
    std::fs::write(
        policies.join("incident.cedar"),
        "@id(\"incident-block-mobile\")\nforbid (\n  principal == Ward::Workload::\"spiffe://ward.local/ns/mobile/sa/mobile-gateway\",\n  action,\n  resource == Ward::Service::\"checkout-api\"\n);\n",
    )
    .unwrap();
    b.signal("HUP");
    // Polls carry their own request id: until the reload lands they are still allowed.
    support::eventually(TIMEOUT, "the reloaded policy to deny", || {
        let client = client.clone();
        async move {
            call(
                &client,
                a.outbound,
                "checkout-api",
                "/cart",
                &[("x-request-id", "e2e-poll")],
            )
            .await
            .0 == 403
        }
    })
    .await;
    let (status, body) = call(
        &client,
        a.outbound,
        "checkout-api",
        "/cart",
        &[("x-request-id", "e2e-deny")],
    )
    .await;
    assert_eq!(status, 403);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"request_id": "e2e-deny", "error": "denied by policy"})
    );

    let metrics = http_raw(b.admin, &get("/metrics", "x")).await.unwrap().1;
    let count = |result: &str| -> u64 {
        let prefix = format!("ward_proxy_authz_decisions_total{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    // At least the first call was allowed and the last denied; polls in between may be either.
    assert!(count("allow") >= 1 && count("deny") >= 1, "{metrics}");
    let config = http_raw(b.admin, &get("/config", "x")).await.unwrap().1;
    assert!(config.contains(CHECKOUT), "{config}");

    for p in [&mut a, &mut b] {
        p.signal("TERM");
        assert!(p.wait_exit().await.success(), "{}", p.logs());
    }

    // The audit log of proxy B holds both decisions.
    let url = format!("sqlite://{}", dir.path().join("audit-proxy-b.db").display());
    let db = ward_audit::store::Db::open(&url).await.unwrap();
    let rows = ward_audit::query::query(&db, &ward_audit::query::Filter::default())
        .await
        .unwrap();
    let records: Vec<ward_audit::AuditRecord> = rows
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let allow = records
        .iter()
        .find(|r| r.request_id == "e2e-allow")
        .expect("allow record");
    assert_eq!(allow.decision, ward_audit::Decision::Allow);
    assert_eq!(allow.principal, MOBILE);
    let deny = records
        .iter()
        .find(|r| r.request_id == "e2e-deny")
        .expect("deny record");
    assert_eq!(deny.decision, ward_audit::Decision::Deny);
    assert_eq!(deny.policies, ["incident-block-mobile"]);
    assert_ne!(
        allow.policy_revision, deny.policy_revision,
        "the reload changed the revision"
    );

    // The access log line carries the same request id as the audit record.
    let logs = b.logs();
    let access = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|j| j["target"] == "access" && j["request_id"] == "e2e-allow")
        .unwrap_or_else(|| panic!("no access line: {logs}"));
    assert_eq!(access["status"], 200);
    assert_eq!(access["direction"], "inbound");
    assert_eq!(access["trace_id"].as_str(), allow.trace_id.as_deref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svids_from_the_agent_rotate_under_traffic_without_failures() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("ward.local");
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let entries = format!(
        "- spiffe_id: {MOBILE}\n  selectors: [\"unix:uid:{uid}\"]\n  ttl: 4s\n\
         - spiffe_id: {CHECKOUT}\n  selectors: [\"unix:uid:{uid}\"]\n  ttl: 4s\n"
    );
    std::fs::write(dir.path().join("entries.yaml"), entries).unwrap();
    let socket = dir.path().join("agent.sock");
    let mut agent = ward_command()
        .arg("agent")
        .arg("--socket")
        .arg(&socket)
        .arg("--ca-dir")
        .arg(ca.dir.path().join("ca"))
        .arg("--entries")
        .arg(dir.path().join("entries.yaml"))
        .stderr(std::fs::File::create(dir.path().join("agent.stderr")).unwrap())
        .spawn()
        .unwrap();

    let api = |id: &str| {
        format!(
            "identity:\n  workload_api: {{ socket: {}, spiffe_id: \"{id}\" }}\n",
            socket.display()
        )
    };
    let policies = ward_proxy::test_util::policies_dir();
    let app_b = App::spawn("app-b").await;
    let b = ProxyProc::start(
        dir.path(),
        "b",
        &proxy_yaml(
            dir.path(),
            "proxy-b",
            "checkout-api",
            app_b.addr,
            &policies,
            &api(CHECKOUT),
            "",
        ),
    );
    let reg = registry_to("checkout-api", b.inbound, CHECKOUT);
    let a = ProxyProc::start(
        dir.path(),
        "a",
        &proxy_yaml(
            dir.path(),
            "proxy-a",
            "mobile-gateway",
            app_b.addr,
            &policies,
            &api(MOBILE),
            &reg,
        ),
    );

    let expiry = |admin: SocketAddr| async move {
        let body = http_raw(admin, &get("/config", "x")).await.unwrap().1;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        json["svid_not_after"].as_u64().unwrap()
    };
    let first = (expiry(a.admin).await, expiry(b.admin).await);
    let client = http_client();
    let deadline = Instant::now() + TIMEOUT;
    let mut sent = 0;
    let mut rotations = (0, 0);
    let mut last = first;
    // The first SVIDs' last valid second; no connection they authenticated is used after it.
    let first_expired = UNIX_EPOCH + Duration::from_secs(first.0.max(first.1) + 1);
    // Continuous traffic until each side has rotated at least twice and the connections the
    // first SVIDs authenticated have been closed for their expiry.
    while rotations.0 < 2
        || rotations.1 < 2
        || SystemTime::now() < first_expired + Duration::from_millis(500)
    {
        assert!(
            Instant::now() < deadline,
            "rotations seen: {rotations:?}: {}",
            b.logs()
        );
        let (status, body) = call(&client, a.outbound, "checkout-api", "/cart", &[]).await;
        assert_eq!(
            status,
            200,
            "request {sent} failed during rotation: {body}\n{}",
            a.logs()
        );
        sent += 1;
        let now = (expiry(a.admin).await, expiry(b.admin).await);
        rotations.0 += usize::from(now.0 != last.0);
        rotations.1 += usize::from(now.1 != last.1);
        last = now;
    }
    assert!(sent > 10, "only {sent} requests");
    // Proxy A stops using connections that B's first SVID authenticated once it expires. Proxy
    // B closes the connection A's first SVID authenticated at its expiry, unless A, whose
    // server SVID expired first, has already replaced it.
    let metrics = http_raw(a.admin, &get("/metrics", "x")).await.unwrap().1;
    assert!(
        metrics.contains(
            "ward_proxy_upstream_pool_replacements_total{destination=\"checkout-api\",reason=\"server_svid_expired\"}"
        ),
        "proxy A never replaced connections for B's expired SVID: {metrics}"
    );
    let b_closed = b
        .logs()
        .contains("the peer's SVID expired; closing its connection");
    let replaced_first = first.1 <= first.0;
    assert!(
        b_closed || replaced_first,
        "A's SVID expired first, yet proxy B never closed its connection: {}",
        b.logs()
    );
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn bad_input_exits_2_and_a_port_conflict_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(&config, "service: x\nregistry: { services: { a: { endpoints: [{ address: \"127.0.0.1:1\", spiffe_id: nope }] } } }\n").unwrap();
    let out = ward_command()
        .args(["proxy", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("registry.services.a.endpoints[0].spiffe_id"),
        "{stderr}"
    );

    let ca = TestCa::new("ward.local");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = proxy_yaml(
        dir.path(),
        "p",
        "checkout-api",
        "127.0.0.1:9".parse().unwrap(),
        &ward_proxy::test_util::policies_dir(),
        &files_identity(&ca, dir.path(), "p", CHECKOUT),
        "",
    )
    .replace(
        "admin: \"127.0.0.1:0\"",
        &format!("admin: \"127.0.0.1:{port}\""),
    );
    std::fs::write(&config, yaml).unwrap();
    let out = ward_command()
        .args(["proxy", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("binding the admin listener"));
}
