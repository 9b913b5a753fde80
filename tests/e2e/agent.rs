//! `ward agent`: the real binary serving the SPIFFE Workload API, checked with the crates.io
//! `spiffe` client (as a workload would use it) and with our generated tonic client (for the
//! error codes and the streams).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::Code;
use tonic::metadata::MetadataValue;
use ward_identity::ca::{InitOptions, RotateOptions};
use ward_identity::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use ward_identity::workload_api::proto::{
    JwtsvidRequest, X509BundlesRequest, X509svidRequest, X509svidResponse,
};
use ward_identity::{Ca, TrustDomain};

use crate::support;

const TRUST_DOMAIN: &str = "e2e.ward.local";
const WORKLOAD_ID: &str = "spiffe://e2e.ward.local/ns/e2e/sa/test";
const AUDIENCE: &str = "e2e-audience";
const TIMEOUT: Duration = Duration::from_secs(10);

type Client = SpiffeWorkloadApiClient<tonic::transport::Channel>;

/// A running `ward agent` over a fresh CA; killed (and reaped) on drop.
struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Agent {
    /// Starts an agent whose entries give [`WORKLOAD_ID`] to `selector` (with `extra` YAML
    /// appended to the entry), and waits until its socket accepts connections.
    fn start(selector: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            trust_domain: TrustDomain::parse(TRUST_DOMAIN).unwrap(),
            ttl: Duration::from_secs(3600 * 24),
            upstream: None,
        };
        Ca::init(&dir.path().join("ca"), &opts).unwrap();
        let entries = format!(
            "- spiffe_id: {WORKLOAD_ID}\n  selectors: [\"{selector}\"]\n  hint: e2e\n{extra}"
        );
        std::fs::write(dir.path().join("entries.yaml"), entries).unwrap();
        let socket = dir.path().join("agent.sock");
        let child = agent_command(dir.path())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut agent = Self { child, dir, socket };
        agent.wait_until_serving();
        agent
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("agent exited with {status}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "no socket after {TIMEOUT:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        support::signal(&self.child, name);
    }

    /// Waits for the agent to exit (see [`support::wait_exit`]).
    async fn wait_exit(&mut self) -> ExitStatus {
        let stderr = self.dir.path().join("stderr");
        support::wait_exit(&mut self.child, TIMEOUT, || {
            std::fs::read_to_string(&stderr).unwrap_or_default()
        })
        .await
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    async fn client(&self) -> Client {
        SpiffeWorkloadApiClient::connect(self.endpoint())
            .await
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ward agent` on the files an [`Agent`] lays out in `dir`, with a quiet environment.
fn agent_command(dir: &Path) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("ward"));
    cmd.arg("agent")
        .arg("--socket")
        .arg(dir.join("agent.sock"))
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .arg("--entries")
        .arg(dir.join("entries.yaml"))
        .env_remove("WARD_AGENT_SOCKET")
        .env_remove("WARD_DATA_DIR")
        .env_remove("RUST_LOG")
        .env("WARD_LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// The effective uid of this process: the owner of a file it just created.
fn my_uid() -> u32 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probe");
    std::fs::write(&path, "").unwrap();
    std::fs::metadata(&path).unwrap().uid()
}

/// A request carrying the `workload.spiffe.io: true` metadata, as SPIFFE clients send it.
fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", MetadataValue::from_static("true"));
    request
}

/// The next message of a stream, failing the test after [`TIMEOUT`].
async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .expect("no stream message within the timeout")
        .expect("stream error")
        .expect("stream ended")
}

fn leaf_der(response: &X509svidResponse) -> Vec<u8> {
    assert_eq!(response.svids.len(), 1);
    response.svids[0].x509_svid.clone()
}

#[tokio::test]
async fn spiffe_client_fetches_svids_and_bundles_and_validates_a_jwt() {
    let agent = Agent::start(&format!("unix:uid:{}", my_uid()), "");
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), WORKLOAD_ID);
    assert_eq!(svid.hint(), Some("e2e"));

    let bundles = client.fetch_x509_bundles().await.unwrap();
    let bundle = bundles.get(&td).expect("a bundle for our trust domain");
    assert_eq!(bundle.authorities().len(), 1);

    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(
        jwt_bundles.get(&td).is_some(),
        "a JWT bundle for our trust domain"
    );

    let jwt = client.fetch_jwt_svid([AUDIENCE], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), WORKLOAD_ID);
    assert_eq!(jwt.audience(), [AUDIENCE]);

    let validated = client
        .validate_jwt_token(AUDIENCE, jwt.token())
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id().to_string(), WORKLOAD_ID);
    assert!(
        client
            .validate_jwt_token("someone-else", jwt.token())
            .await
            .is_err(),
        "a JWT-SVID for another audience must not validate"
    );
}

#[tokio::test]
async fn calls_without_the_security_header_are_invalid_argument() {
    let agent = Agent::start(&format!("unix:uid:{}", my_uid()), "");
    let mut client = agent.client().await;
    let status = client
        .fetch_x509svid(tonic::Request::new(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let mut wrong = tonic::Request::new(X509svidRequest {});
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", MetadataValue::from_static("TRUE"));
    let status = client.fetch_x509svid(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn a_caller_no_entry_matches_is_permission_denied() {
    let other_uid = my_uid().wrapping_add(1);
    let agent = Agent::start(&format!("unix:uid:{other_uid}"), "");
    let mut client = agent.client().await;

    let status = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let request = JwtsvidRequest {
        audience: vec![AUDIENCE.to_owned()],
        spiffe_id: String::new(),
    };
    let status = client
        .fetch_jwtsvid(with_header(request))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let spiffe_client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    assert!(spiffe_client.fetch_x509_svid().await.is_err());
}

#[tokio::test]
async fn jwt_requests_need_an_audience_and_an_entitled_id() {
    let agent = Agent::start(&format!("unix:uid:{}", my_uid()), "");
    let mut client = agent.client().await;

    let no_audience = JwtsvidRequest {
        audience: Vec::new(),
        spiffe_id: String::new(),
    };
    let status = client
        .fetch_jwtsvid(with_header(no_audience))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let not_mine = JwtsvidRequest {
        audience: vec![AUDIENCE.to_owned()],
        spiffe_id: "spiffe://e2e.ward.local/ns/e2e/sa/someone-else".to_owned(),
    };
    let status = client
        .fetch_jwtsvid(with_header(not_mine))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let mine = JwtsvidRequest {
        audience: vec![AUDIENCE.to_owned()],
        spiffe_id: WORKLOAD_ID.to_owned(),
    };
    let response = client.fetch_jwtsvid(with_header(mine)).await.unwrap();
    let svids = response.into_inner().svids;
    assert_eq!(svids.len(), 1);
    assert_eq!(svids[0].spiffe_id, WORKLOAD_ID);
    assert_eq!(svids[0].hint, "e2e");
}

#[tokio::test]
async fn the_x509_svid_stream_delivers_a_new_svid_before_a_short_one_expires() {
    let agent = Agent::start(&format!("unix:uid:{}", my_uid()), "  ttl: 4s\n");
    let mut client = agent.client().await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();

    let first = next(&mut stream).await;
    let started = Instant::now();
    let second = next(&mut stream).await;
    assert_ne!(
        leaf_der(&first),
        leaf_der(&second),
        "a rotated SVID is a new certificate"
    );
    assert_ne!(first.svids[0].x509_svid_key, second.svids[0].x509_svid_key);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the new SVID must come before the old one expires, took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sighup_reloads_the_ca_and_pushes_the_new_bundle_to_open_streams() {
    let agent = Agent::start(&format!("unix:uid:{}", my_uid()), "");
    let mut client = agent.client().await;
    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut svids = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let key = format!("spiffe://{TRUST_DOMAIN}");
    let before = next(&mut bundles).await.bundles[&key].clone();
    let first_svid = next(&mut svids).await;

    let rotate = RotateOptions {
        grace: Duration::from_secs(3600),
        ttl: Duration::from_secs(3600 * 24),
        upstream: None,
    };
    Ca::rotate(&agent.dir.path().join("ca"), rotate).unwrap();
    agent.signal("HUP");

    let after = next(&mut bundles).await.bundles[&key].clone();
    assert!(
        after.starts_with(&before) || after.ends_with(&before),
        "the old root stays during the grace period"
    );
    assert!(after.len() > before.len(), "the new root joins the bundle");
    let second_svid = next(&mut svids).await;
    assert_ne!(leaf_der(&first_svid), leaf_der(&second_svid));
    assert_eq!(second_svid.svids[0].bundle, after);
}

#[tokio::test]
async fn sigterm_removes_the_socket_and_exits_0() {
    let mut agent = Agent::start(&format!("unix:uid:{}", my_uid()), "");
    // An open stream must not hold the shutdown up.
    let mut client = agent.client().await;
    let mut stream = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let _ = next(&mut stream).await;

    agent.signal("TERM");
    let end = tokio::time::timeout(TIMEOUT, stream.message()).await;
    assert!(
        matches!(end, Ok(Ok(None))),
        "the stream ends cleanly on shutdown: {end:?}"
    );
    let status = agent.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", agent.stderr());
    assert!(!agent.socket.exists(), "the socket is removed on exit");
    let stderr = agent.stderr();
    assert!(
        !stderr.contains("drain deadline"),
        "open streams end on shutdown: {stderr}"
    );
}

#[test]
fn a_second_agent_on_a_live_socket_fails_and_leaves_it_alone() {
    let agent = Agent::start(&format!("unix:uid:{}", my_uid()), "");
    let output = agent_command(agent.dir.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("in use by another Workload API server"),
        "{stderr}"
    );
    assert!(std::os::unix::net::UnixStream::connect(&agent.socket).is_ok());
}

#[test]
fn bad_entries_exit_2_naming_the_entry_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let opts = InitOptions {
        trust_domain: TrustDomain::parse(TRUST_DOMAIN).unwrap(),
        ttl: Duration::from_secs(3600),
        upstream: None,
    };
    Ca::init(&dir.path().join("ca"), &opts).unwrap();
    std::fs::write(
        dir.path().join("entries.yaml"),
        "- spiffe_id: spiffe://elsewhere.org/x\n  selectors: [\"unix:uid:0\"]\n",
    )
    .unwrap();
    let output = agent_command(dir.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("entry 0: `spiffe_id`: `spiffe://elsewhere.org/x` is not in trust domain"),
        "{stderr}"
    );
    assert!(!dir.path().join("agent.sock").exists());
}

#[test]
fn a_missing_ca_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("entries.yaml"), "[]\n").unwrap();
    let output = agent_command(dir.path())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("loading the CA from"), "{stderr}");
}
