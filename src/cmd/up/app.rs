//! A demo service: answers every request with what it saw, so a call through the mesh shows
//! which path arrived and which workload the proxy verified.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Binds the demo app of `service` on 127.0.0.1 (any free port) and serves it until aborted.
pub(super) async fn spawn(service: &'static str) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .with_context(|| format!("binding the demo app of {service}"))?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, most likely: let some close before trying again.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let svc =
                service_fn(move |req| async move { Ok::<_, Infallible>(answer(service, &req)) });
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

/// `{"service", "method", "path", "peer", "request_id"}` as JSON, status 200.
fn answer(service: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = serde_json::json!({
        "service": service,
        "method": req.method().as_str(),
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "peer": header("x-ward-peer-id"),
        "request_id": header("x-request-id"),
    });
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
