//! Test helpers: a throwaway CA, SVIDs on disk, recording apps, raw HTTP and mTLS clients, an
//! in-process proxy, and a polling helper (tests never sleep a fixed time).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    missing_debug_implementations,
    reason = "test helpers fail the test loudly"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use ward_identity::ca::InitOptions;
use ward_identity::verify::{Bundles, ServerIdentity, SvidVerifier};
use ward_identity::{Ca, SpiffeId, SvidSource, TrustDomain, X509Svid};

use crate::config::{AuditConfig, Config, FilesIdentity, IdentityConfig, Listen};
use crate::{Bound, Proxy, ProxyInputs};

/// How long [`eventually`] and the clients wait by default.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CA in a temporary directory.
pub struct TestCa {
    pub ca: Ca,
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(trust_domain: &str) -> Self {
        ward_identity::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            trust_domain: TrustDomain::parse(trust_domain).unwrap(),
            ttl: Duration::from_secs(24 * 3600),
            upstream: None,
        };
        let ca = Ca::init(&dir.path().join("ca"), &opts).unwrap();
        Self { ca, dir }
    }

    pub fn issue(&self, id: &str, ttl: Duration) -> X509Svid {
        self.ca
            .issue_x509(&SpiffeId::parse(id).unwrap(), ttl)
            .unwrap()
    }

    /// Writes an SVID for `id` (1 h) and this CA's bundle under `dir/name.*`.
    pub fn write_identity(&self, dir: &Path, name: &str, id: &str) -> FilesIdentity {
        let svid = self.issue(id, Duration::from_secs(3600));
        self.write_svid(dir, name, &svid)
    }

    pub fn write_svid(&self, dir: &Path, name: &str, svid: &X509Svid) -> FilesIdentity {
        let files = FilesIdentity {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            bundle: dir.join(format!("{name}.bundle")),
        };
        std::fs::write(&files.cert, svid.cert_chain_pem()).unwrap();
        std::fs::write(&files.key, svid.private_key_pem()).unwrap();
        std::fs::write(&files.bundle, self.ca.bundle().to_pem()).unwrap();
        files
    }

    /// A server config presenting a fresh SVID for `id` with ALPN h2 and HTTP/1.1.
    pub fn server_config(&self, id: &str) -> Arc<rustls::ServerConfig> {
        let svid = self.issue(id, Duration::from_secs(3600));
        let verifier = SvidVerifier::new(Bundles::new([self.ca.bundle()]));
        let mut cfg = ward_identity::verify::server_config(&svid, verifier).unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    /// A rustls client config presenting `svid` and expecting the server to be `expected`.
    pub fn client_config(&self, svid: &X509Svid, expected: &str) -> Arc<rustls::ClientConfig> {
        let verifier = SvidVerifier::new(Bundles::new([self.ca.bundle()]));
        let expected = ServerIdentity::Exact(SpiffeId::parse(expected).unwrap());
        Arc::new(ward_identity::verify::client_config(svid, verifier, expected).unwrap())
    }
}

/// The repository's example policies.
pub fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

/// Copies the example policies into `dir/policies` and returns that path.
pub fn copy_policies(dir: &Path) -> PathBuf {
    let to = dir.join("policies");
    copy_dir(&policies_dir(), &to);
    to
}

/// Copies the directory tree `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// What an [`App`] saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target exactly as received.
    pub target: String,
    pub headers: http::HeaderMap,
}

/// A local app on 127.0.0.1 that records requests and answers with a settable status.
pub struct App {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hits: Arc<AtomicUsize>,
    pub status: Arc<AtomicU16>,
    /// Answers are held back this long (settable, in ms).
    pub delay_ms: Arc<AtomicU16>,
    pub name: String,
    task: JoinHandle<()>,
}

impl App {
    /// An app that answers `200 <name> <target>`.
    pub async fn spawn(name: &str) -> Self {
        Self::spawn_with(name, None).await
    }

    /// The same app behind mTLS with `tls` (e.g. a stand-in for a destination proxy).
    pub async fn spawn_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::spawn_with(name, Some(tls)).await
    }

    async fn spawn_with(name: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let delay_ms = Arc::new(AtomicU16::new(0));
        let state = (
            seen.clone(),
            hits.clone(),
            status.clone(),
            delay_ms.clone(),
            name.to_owned(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (seen, hits, status, delay, name) = state.clone();
                        async move {
                            let target = req
                                .uri()
                                .path_and_query()
                                .map_or("/".to_owned(), |p| p.to_string());
                            seen.lock().unwrap().push(Seen {
                                method: req.method().to_string(),
                                target: target.clone(),
                                headers: req.headers().clone(),
                            });
                            hits.fetch_add(1, Ordering::SeqCst);
                            let wait = delay.load(Ordering::SeqCst);
                            if wait > 0 {
                                tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
                            }
                            let mut resp =
                                Response::new(Full::new(Bytes::from(format!("{name} {target}"))));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(cfg) => {
                            let Ok(stream) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await
                            else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            seen,
            hits,
            status,
            delay_ms,
            name: name.to_owned(),
            task,
        }
    }

    pub fn targets(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.target.clone())
            .collect()
    }

    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A proxy config for tests: every listener on port 0, files identity, SQLite audit in `dir`.
pub fn config(
    dir: &Path,
    node: &str,
    service: &str,
    app: SocketAddr,
    identity: FilesIdentity,
    policies: PathBuf,
) -> Config {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    Config {
        node: node.to_owned(),
        service: service.to_owned(),
        listen: Listen {
            inbound: any,
            outbound: any,
            admin: any,
        },
        app,
        identity: IdentityConfig::Files(identity),
        policies,
        audit: AuditConfig {
            enabled: true,
            flush_interval: Duration::from_millis(100),
            store: format!(
                "sqlite://{}",
                dir.join(format!("audit-{node}.db")).display()
            ),
            spool_dir: dir.join(format!("spool-{node}")),
            key: None,
            strict: false,
        },
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// A proxy running in-process.
pub struct Running {
    pub bound: Bound,
    pub inputs: Arc<ProxyInputs>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), crate::Error>>>,
}

impl Running {
    pub async fn start(cfg: Config) -> Self {
        let proxy = Proxy::build(cfg).await.unwrap();
        let bound = proxy.bound();
        let inputs = proxy.inputs();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(proxy.wait_termination(async {
            let _ = stopped.await;
        }));
        let running = Self {
            bound,
            inputs,
            stop: Some(stop),
            task: Some(task),
        };
        let admin = running.bound.admin;
        eventually(TIMEOUT, "the proxy to be ready", || async move {
            let resp = http_raw(
                admin,
                "GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await
            .ok()?;
            (resp.0 == 200).then_some(())
        })
        .await;
        running
    }

    /// Starts the drain and waits for the proxy to stop.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Sends raw bytes over plain TCP and reads the answer until the server closes.
pub async fn http_raw(addr: SocketAddr, request: &str) -> std::io::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    Ok(parse_response(&out))
}

/// Sends raw bytes over mTLS and reads the answer until the server closes.
pub async fn https_raw(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &str,
) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name =
        rustls_pki_types::ServerName::try_from("ward.test").map_err(std::io::Error::other)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    if out.is_empty() {
        return Err(std::io::Error::other("connection closed without an answer"));
    }
    Ok(parse_response(&out))
}

/// `GET target` with `Connection: close`, as HTTP/1.1 text.
pub fn get(target: &str, host: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (status, body)
}

/// A pooled plain-HTTP client (to an outbound listener).
pub fn http_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// `GET http://{service}{path}` through the outbound listener at `outbound`: status and body.
pub async fn call(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    outbound: SocketAddr,
    service: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = Request::get(format!("http://{outbound}{path}")).header("host", service);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
