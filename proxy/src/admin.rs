//! The admin listener (localhost by default): `/metrics`, `/healthz`, `/ready`, `/config`.
//!
//! - `/metrics`: Prometheus text format ([`crate::metrics`] plus the audit writer's counters);
//! - `/healthz`: 200 while the process serves;
//! - `/ready`: 200 once every listener runs, 503 before and while draining;
//! - `/config`: the effective configuration as JSON, the audit store URL redacted, plus the
//!   SPIFFE id, its expiry and the policy revision in force.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::BoxBody;
use crate::ctx::ListenerKind;
use crate::proxy::ProxyInputs;
use crate::respond::full;
use crate::serve::{accept_loop, serve_http};

/// Serves the admin listener until shutdown.
pub(crate) async fn serve(inputs: Arc<ProxyInputs>, listener: TcpListener) {
    let shared = inputs.clone();
    accept_loop(
        inputs,
        listener,
        ListenerKind::Admin,
        move |tcp, _peer, drain| {
            let inputs = shared.clone();
            async move {
                let _open = inputs.metrics.connection("admin");
                serve_http(tcp, drain, std::future::pending(), move |req| {
                    let inputs = inputs.clone();
                    async move { handle(&inputs, &req) }
                })
                .await;
            }
        },
    )
    .await;
}

/// Answers one admin request.
fn handle(inputs: &ProxyInputs, req: &Request<Incoming>) -> Response<BoxBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = text(StatusCode::OK, inputs.metrics.encode());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/ready" => {
            if inputs.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/config" => {
            let expires = inputs
                .identity
                .not_after()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let body = serde_json::json!({
                "config": inputs.cfg.redacted(),
                "spiffe_id": inputs.identity.spiffe_id().to_string(),
                "svid_not_after": expires,
                "policy_revision": inputs.authz.snapshot().revision().to_string(),
            });
            let mut resp = text(StatusCode::OK, format!("{body:#}\n"));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /ready or /config\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<BoxBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}
