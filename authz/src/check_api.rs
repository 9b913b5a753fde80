//! The JSON HTTP API for callers that are not Envoy, and the admin endpoints.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /v1/check` | a decision for the request in the body (`docs/authz-openapi.yaml`) |
//! | `GET /ready` | 200 with the serving revision, or 503 while draining |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /metrics` | Prometheus text (OpenMetrics) |
//!
//! A deny is a normal 200 answer with `"allow": false`. Errors are mapped to statuses in one
//! place, `ApiError::into_response`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::authorizer::Enforcement;
use crate::error::Error;
use crate::request::{ContextSpec, RequestSpec};
use crate::server::Shared;

/// The largest request body accepted by `POST /v1/check`.
pub const MAX_BODY: usize = 64 * 1024;

/// The body of `POST /v1/check`: a [`RequestSpec`] without `entities`.
///
/// Extra entities are refused: they would let the caller redefine the repository's entities
/// (a service's tenant, a user's groups) for its own request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    principal: String,
    #[serde(default)]
    action: Option<String>,
    resource: String,
    #[serde(default)]
    context: ContextSpec,
}

/// The answer of `POST /v1/check`.
#[derive(Debug, Serialize)]
struct CheckReply<'a> {
    allow: bool,
    decision: &'static str,
    mode: &'static str,
    action: &'a str,
    resource: &'a str,
    policies: &'a [String],
    errors: Vec<String>,
    revision: &'a str,
    request_id: &'a str,
    audit_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate: Option<CandidateReply<'a>>,
    latency_us: u64,
}

#[derive(Debug, Serialize)]
struct CandidateReply<'a> {
    revision: &'a str,
    decision: &'static str,
    policies: &'a [String],
}

/// Everything that can go wrong answering an HTTP request.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("no route for `{0}`")]
    NotFound(String),
    #[error("method not allowed; use {0}")]
    MethodNotAllowed(&'static str),
    #[error("request body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("reading the request body: {0}")]
    Body(String),
    #[error("request body: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Request(#[from] Error),
    #[error("the decision could not be audited: {0}")]
    Audit(#[from] ward_audit::Error),
}

type Reply = Response<Full<Bytes>>;

/// Serves one request.
pub(crate) async fn handle<B>(shared: Arc<Shared>, req: Request<B>) -> Result<Reply, Infallible>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = match (req.uri().path(), req.method()) {
        ("/v1/check", &Method::POST) => check(&shared, req).await,
        ("/v1/check", _) => Err(ApiError::MethodNotAllowed("POST")),
        ("/ready", &Method::GET) => Ok(ready(&shared)),
        ("/healthz", &Method::GET) => Ok(text(StatusCode::OK, "text/plain", "ok\n".into())),
        ("/metrics", &Method::GET) => Ok(metrics(&shared)),
        ("/ready" | "/healthz" | "/metrics", _) => Err(ApiError::MethodNotAllowed("GET")),
        (path, _) => Err(ApiError::NotFound(path.to_owned())),
    };
    Ok(result.unwrap_or_else(|e| {
        if matches!(e, ApiError::Json(_) | ApiError::Request(_)) {
            shared.inputs.authorizer.metrics().bad_request("http");
        }
        e.into_response()
    }))
}

async fn check<B>(shared: &Shared, req: Request<B>) -> Result<Reply, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::TooLarge
            } else {
                ApiError::Body(e.to_string())
            }
        })?
        .to_bytes();
    let body: CheckBody = serde_json::from_slice(&body)?;
    let spec = body.into_spec();
    let enforcement = shared.inputs.authorizer.check_spec(&spec)?;
    shared.audit(enforcement.record.clone()).await?;
    let reply = CheckReply::new(&enforcement);
    Ok(json_reply(StatusCode::OK, &reply))
}

fn ready(shared: &Shared) -> Reply {
    let authz = &shared.inputs.authorizer;
    let snapshot = authz.engine().snapshot();
    let candidate = authz
        .candidate()
        .map(|c| json!({ "revision": c.revision().as_ref(), "policies": c.policy_count() }));
    let failures: Vec<_> = shared
        .inputs
        .reloader
        .failures()
        .into_iter()
        .map(|f| {
            json!({
                "target": f.target.as_str(),
                "error": f.error,
                "time": ward_audit::record::format_time(f.time_ms),
            })
        })
        .collect();
    let draining = shared.is_draining();
    let body = json!({
        "status": if draining { "draining" } else { "ready" },
        "revision": snapshot.revision().as_ref(),
        "policies": snapshot.policy_count(),
        "candidate": candidate,
        "reload_failures": failures,
    });
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_reply(status, &body)
}

fn metrics(shared: &Shared) -> Reply {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &shared.registry) {
        Ok(()) => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out,
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("encoding metrics: {e}\n"),
        ),
    }
}

// === impl CheckBody ===

impl CheckBody {
    /// The written request; an absent `time` means now (not 0, as in policy tests).
    fn into_spec(self) -> RequestSpec {
        let mut context = self.context;
        if context.time.is_none() {
            context.time = Some(ward_audit::record::now_ms() / 1000);
        }
        if context.request_id.is_none() {
            context.request_id = Some(ward_audit::record::time_ordered_id());
        }
        RequestSpec {
            principal: self.principal,
            action: self.action,
            resource: self.resource,
            context,
            entities: Vec::new(),
        }
    }
}

// === impl CheckReply ===

impl<'a> CheckReply<'a> {
    fn new(e: &'a Enforcement) -> Self {
        Self {
            allow: e.allow,
            decision: word(e.decision.allow),
            mode: e.mode.as_str(),
            action: &e.record.action,
            resource: &e.record.resource,
            policies: &e.decision.reasons,
            errors: e.decision.errors.iter().map(ToString::to_string).collect(),
            revision: &e.decision.revision,
            request_id: &e.record.request_id,
            audit_id: &e.record.id,
            candidate: e.candidate.as_ref().map(|c| CandidateReply {
                revision: &c.revision,
                decision: word(c.allow),
                policies: &c.reasons,
            }),
            latency_us: e.record.latency_us,
        }
    }
}

fn word(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

// === impl ApiError ===

impl ApiError {
    /// The one place HTTP API errors become statuses.
    fn into_response(self) -> Reply {
        let status = match &self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Body(_) | Self::Json(_) | Self::Request(_) => StatusCode::BAD_REQUEST,
            Self::Audit(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut reply = json_reply(status, &json!({ "error": self.to_string() }));
        if let Self::MethodNotAllowed(allow) = self {
            reply
                .headers_mut()
                .insert(ALLOW, http::HeaderValue::from_static(allow));
        }
        reply
    }
}

fn json_reply(status: StatusCode, body: &impl Serialize) -> Reply {
    match serde_json::to_string(body) {
        Ok(mut text) => {
            text.push('\n');
            self::text(status, "application/json", text)
        }
        Err(e) => self::text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("BUG: encoding a reply: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    reply
}

#[cfg(test)]
mod tests;
