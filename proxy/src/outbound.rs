//! Outbound: plain HTTP from the local app to a destination service over mTLS.
//!
//! The app either uses the proxy as an HTTP proxy (`http_proxy=http://127.0.0.1:15001`, so
//! requests arrive in absolute form) or sends to it directly with the service name in `Host`.
//! Per request, in phases:
//! 1. context: request id, trace, destination service looked up in the registry (unknown →
//!    502 with a JSON error);
//! 2. the body is buffered (so it can be retried and mirrored), the route chosen, and the call
//!    handed to the service's stack ([`crate::stack::build_http_stack`]);
//! 3. the response streams back; one access-log line and the RED metrics.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::Registry;
use crate::ctx::{ConnCtx, ListenerKind, ReqCtx};
use crate::headers;
use crate::identity::Identity;
use crate::metrics::{Metrics, RedLabels};
use crate::proxy::ProxyInputs;
use crate::respond::{RequestError, error_response};
use crate::serve::{accept_loop, serve_http};
use crate::stack::build_http_stack;
use crate::traffic::{HttpService, Route, Target};
use crate::{BoxBody, Error, trace};

/// The destination services, swapped as a whole when the registry changes.
#[derive(Debug)]
pub struct Upstreams(ArcSwap<HashMap<String, Upstream>>);

/// One destination: its shared state and its assembled stack.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Endpoints, policy and shared state.
    pub target: Arc<Target>,
    /// The stack calls go through.
    pub stack: HttpService,
}

// === impl Upstreams ===

impl Upstreams {
    /// Builds every service of `registry`.
    pub fn new(
        registry: &Registry,
        identity: &Identity,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, Error> {
        Ok(Self(ArcSwap::from_pointee(build(
            registry, identity, metrics,
        )?)))
    }

    /// Replaces every service; calls in flight finish on the old ones.
    pub fn update(
        &self,
        registry: &Registry,
        identity: &Identity,
        metrics: &Arc<Metrics>,
    ) -> Result<(), Error> {
        self.0.store(Arc::new(build(registry, identity, metrics)?));
        Ok(())
    }

    /// The destination named `service`.
    pub fn get(&self, service: &str) -> Option<Upstream> {
        self.0.load().get(service).cloned()
    }
}

fn build(
    registry: &Registry,
    identity: &Identity,
    metrics: &Arc<Metrics>,
) -> Result<HashMap<String, Upstream>, Error> {
    registry
        .services
        .iter()
        .map(|(name, entry)| {
            let target = Arc::new(Target::new(name, entry, identity, metrics.clone())?);
            let stack = build_http_stack(&target);
            Ok((name.clone(), Upstream { target, stack }))
        })
        .collect()
}

/// Serves the outbound listener until shutdown.
pub(crate) async fn serve(inputs: Arc<ProxyInputs>, listener: TcpListener) {
    let local = listener.local_addr().ok();
    let shared = inputs.clone();
    accept_loop(
        inputs,
        listener,
        ListenerKind::Outbound,
        move |tcp, peer, drain| {
            let inputs = shared.clone();
            let conn = Arc::new(ConnCtx::new(
                ListenerKind::Outbound,
                peer,
                local.unwrap_or(peer),
            ));
            async move {
                let _open = inputs.metrics.connection("outbound");
                serve_http(tcp, drain, std::future::pending(), move |req| {
                    request(inputs.clone(), conn.clone(), req)
                })
                .await;
            }
        },
    )
    .await;
}

/// One request through the three phases, then the access log and metrics.
async fn request(
    inputs: Arc<ProxyInputs>,
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Response<BoxBody> {
    // Phase 1: context and destination.
    let mut ctx = ReqCtx::new(conn, &req);
    let span = trace::start(inputs.traced, &mut ctx, req.headers());
    let service = ctx.host().to_owned();
    let (result, route) = match call(&inputs, &ctx, &service, req).await {
        Ok((resp, route)) => (Ok(resp), route),
        Err((err, route)) => (Err(err), route),
    };
    let mut response = match result {
        Ok(resp) => resp,
        Err(err) => error_response(&err, &ctx.request_id),
    };
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        response
            .headers_mut()
            .entry(headers::REQUEST_ID)
            .or_insert(v);
    }
    log(&inputs, &ctx, &service, &route, response.status().as_u16());
    trace::finish(&span, &route, response.status().as_u16());
    response
}

/// Phases 1 (lookup) to 3 (the call). Errors come with the route chosen so far.
async fn call(
    inputs: &ProxyInputs,
    ctx: &ReqCtx,
    service: &str,
    req: Request<Incoming>,
) -> Result<(Response<BoxBody>, String), (RequestError, String)> {
    let unrouted = |err| (err, "-".to_owned());
    if service.is_empty() {
        return Err(unrouted(RequestError::NoDestination));
    }
    let upstream = inputs
        .upstreams
        .get(service)
        .ok_or_else(|| unrouted(RequestError::UnknownService(service.to_owned())))?;
    // Phase 2: buffer, rebuild in origin form, route.
    let (mut parts, body) = req.into_parts();
    let limit = inputs.cfg.max_request_body;
    let body = Limited::new(body, limit).collect().await.map_err(|err| {
        if err.is::<http_body_util::LengthLimitError>() {
            unrouted(RequestError::BodyTooLarge(limit))
        } else {
            unrouted(RequestError::BadRequest(format!(
                "reading the request body: {err}"
            )))
        }
    })?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri =
        Uri::try_from(path).map_err(|e| unrouted(RequestError::BadRequest(e.to_string())))?;
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::set_identity_headers(&mut parts.headers, &ctx.request_id, &ctx.traceparent, None);
    if let Ok(host) = HeaderValue::from_str(service) {
        parts.headers.insert(http::header::HOST, host);
    }
    let route: Route = upstream.target.route(&parts.headers);
    let route_name = route.name.to_string();
    parts.extensions = http::Extensions::new();
    parts.extensions.insert(route);
    let req = Request::from_parts(parts, Full::new(body.to_bytes()));
    // Phase 3: through the stack.
    match upstream.stack.oneshot(req).await {
        Ok(mut resp) => {
            headers::strip_hop_by_hop(resp.headers_mut());
            Ok((resp, route_name))
        }
        Err(err) => Err((RequestError::from_box(err), route_name)),
    }
}

fn log(inputs: &ProxyInputs, ctx: &ReqCtx, service: &str, route: &str, status: u16) {
    let elapsed = ctx.start.elapsed();
    tracing::info!(
        target: "access",
        direction = "outbound",
        request_id = %ctx.request_id,
        trace_id = %ctx.trace_id,
        src = %ctx.conn.src,
        method = %ctx.method,
        authority = %ctx.authority,
        path = %ctx.path,
        destination = service,
        route,
        status,
        duration_ms = elapsed.as_secs_f64() * 1000.0,
    );
    // Unknown services are not a label value: that would let the app grow the series.
    let destination = if inputs.upstreams.get(service).is_some() {
        service
    } else {
        "-"
    };
    inputs.metrics.request(
        RedLabels {
            direction: "outbound",
            source: &inputs.cfg.service,
            destination,
            route,
        },
        status,
        elapsed.as_secs_f64(),
    );
}
