//! A demo service: answers every request with what it saw, so a call through the mesh shows
//! which path arrived and which workload the proxy verified. Some requests make the app call
//! other services first, through its own proxy, as a real service would; their answers are
//! nested in its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

// A demo call that takes longer than this is reported as failed rather than left hanging.
const ONWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// A call a demo app makes while it answers `method path`.
#[derive(Debug)]
pub(super) struct Onward {
    /// The request that makes the app call: method and path.
    pub(super) on: (&'static str, &'static str),
    /// The service it calls.
    pub(super) service: &'static str,
    /// The method of that call.
    pub(super) method: &'static str,
    /// The path of that call.
    pub(super) path: &'static str,
}

/// What one demo app knows.
struct App {
    service: &'static str,
    onward: &'static [Onward],
    /// Its own proxy's outbound listener, set once the proxy runs.
    outbound: Arc<OnceLock<SocketAddr>>,
}

/// Binds the demo app of `service` on 127.0.0.1 (any free port) and serves it until aborted.
/// Its `onward` calls go to the address `outbound` will hold.
pub(super) async fn spawn(
    service: &'static str,
    onward: &'static [Onward],
    outbound: Arc<OnceLock<SocketAddr>>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .with_context(|| format!("binding the demo app of {service}"))?;
    let addr = listener.local_addr()?;
    let app = Arc::new(App {
        service,
        onward,
        outbound,
    });
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, most likely: let some close before trying again.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let app = app.clone();
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.answer(req).await) }
            });
            tokio::spawn(async move {
                // A client that goes away mid-request is not this demo's problem.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok((addr, task))
}

// === impl App ===

impl App {
    /// `{"service", "method", "path", "peer", "request_id"}` as JSON, plus `calls` when the
    /// request made the app call others: 200, or 502 when one of those did not answer 2xx.
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut body = serde_json::json!({
            "service": self.service,
            "method": req.method().as_str(),
            "path": path,
            "peer": header(req.headers(), "x-ward-peer-id"),
            "request_id": header(req.headers(), "x-request-id"),
        });
        let mut status = StatusCode::OK;
        let mut calls = Vec::new();
        for call in self
            .onward
            .iter()
            .filter(|c| c.on == (req.method().as_str(), req.uri().path()))
        {
            let (code, answer) = match self.call(call, req.headers()).await {
                Ok(answered) => answered,
                Err(err) => (
                    StatusCode::BAD_GATEWAY,
                    serde_json::json!(format!("{err:#}")),
                ),
            };
            if !code.is_success() {
                status = StatusCode::BAD_GATEWAY;
            }
            calls.push(serde_json::json!({
                "service": call.service,
                "method": call.method,
                "path": call.path,
                "status": code.as_u16(),
                "answer": answer,
            }));
        }
        if !calls.is_empty() {
            body["calls"] = calls.into();
        }
        let mut text = body.to_string();
        text.push('\n');
        let mut response = Response::new(Full::new(Bytes::from(text)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        response
    }

    /// Makes `call` through this app's proxy, passing on the request id and trace context of
    /// the request being answered, so that every hop's access log and audit record share them.
    async fn call(
        &self,
        call: &Onward,
        incoming: &HeaderMap,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let outbound = *self
            .outbound
            .get()
            .context("this service's proxy is not running yet")?;
        let mut request = Request::builder()
            .method(call.method)
            .uri(call.path)
            .header(hyper::header::HOST, call.service);
        for name in ["x-request-id", "traceparent"] {
            if let Some(value) = incoming.get(name) {
                request = request.header(name, value);
            }
        }
        let request = request.body(Empty::<Bytes>::new())?;
        let exchange = async {
            let tcp = TcpStream::connect(outbound)
                .await
                .with_context(|| format!("connecting to this service's proxy at {outbound}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .context("HTTP/1.1 with this service's proxy")?;
            tokio::spawn(conn);
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            let answer = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).trim().to_owned())
            });
            anyhow::Ok((status, answer))
        };
        tokio::time::timeout(ONWARD_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{} did not answer within {ONWARD_TIMEOUT:?}", call.service))?
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
