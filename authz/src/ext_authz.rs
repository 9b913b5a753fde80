//! Envoy's external authorization API, `envoy.service.auth.v3.Authorization/Check`.
//!
//! A `CheckRequest` maps to a Ward request like this:
//!
//! | Ward | from |
//! | --- | --- |
//! | principal | `attributes.source.principal`: the URI SAN of the client certificate Envoy verified (mTLS listener); required |
//! | service | `attributes.context_extensions["ward-service"]` when Envoy's route sets it, else the service account of `attributes.destination.principal` (Envoy's own SVID, `spiffe://<td>/ns/<ns>/sa/<service>`), else the `:authority` host without its port |
//! | method, path | `attributes.request.http.method`, `.path` (normalized; the query is not part of the path) |
//! | host | `attributes.request.http.host` without its port |
//! | headers | `attributes.request.http.headers` (only those the schema declares reach policies) |
//! | request id | the `x-request-id` header, else `http.id`, else a fresh random id |
//! | source_ip, time | `attributes.source.address`, `attributes.request.time` |
//!
//! Client-sent headers never pick the service: a caller could otherwise be authorized against
//! a service it is not calling.
//!
//! Because the app must receive exactly the path that was authorized, and ext_authz cannot
//! rewrite Envoy's `:path`, a path Envoy would forward in a different form than Ward's
//! normalization (configure Envoy's `normalize_path`, `merge_slashes` and
//! `path_with_escaped_slashes_action: REJECT_REQUEST`) is rejected with 400.
//!
//! Answers are built in one place, [`respond`]: allowed → `OK` with the upstream request
//! headers `x-ward-decision` and `x-ward-policy`; denied → `PERMISSION_DENIED` with a 403 and a
//! small JSON body naming the request id; errors → their gRPC code and HTTP status.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, HeaderAppendAction, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest as EnvoyHttp;
use serde_json::json;
use ward_identity::SpiffeId;

use crate::authorizer::Enforcement;
use crate::error::Error;
use crate::path::{NormalizedPath, PathError};
use crate::request::{HttpRequest, Principal, RequestContext};
use crate::server::Shared;

/// The `context_extensions` key that names the destination service.
pub const SERVICE_EXTENSION: &str = "ward-service";
/// Header set on allowed requests: `allow`, or `dry-run-deny` when only dry-run let it pass.
pub const DECISION_HEADER: &str = "x-ward-decision";
/// Header set on allowed requests: the determining policy ids, comma-separated.
pub const POLICY_HEADER: &str = "x-ward-policy";

/// The gRPC service.
#[derive(Debug, Clone)]
pub(crate) struct ExtAuthz {
    shared: Arc<Shared>,
}

/// Why a `CheckRequest` got no decision.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Envoy sent no HTTP attributes (e.g. a network filter, or a misconfiguration).
    #[error("check request carries no `{0}`")]
    Missing(&'static str),
    /// The connection had no verified client certificate.
    #[error("no verified peer identity: the listener must require client certificates")]
    NoPeerIdentity,
    /// The client certificate's URI SAN is not a SPIFFE id.
    #[error("peer identity `{0}` is not a SPIFFE id")]
    BadPeerIdentity(String),
    /// No rule named the destination service.
    #[error(
        "cannot tell the destination service: no `ward-service` extension, destination principal or host"
    )]
    NoService,
    /// The path failed normalization.
    #[error("{0}")]
    Path(#[from] PathError),
    /// Envoy would forward a path other than the one Ward authorizes.
    #[error(
        "request path `{got}` is not normalized (`{normalized}`); enable normalize_path and merge_slashes in Envoy"
    )]
    NotNormalized {
        /// The path Envoy sent.
        got: String,
        /// What Ward would authorize.
        normalized: String,
    },
    /// The request could not be mapped to a Cedar request.
    #[error("{0}")]
    Request(Error),
    /// Strict audit mode could not make the record durable.
    #[error("the decision could not be audited")]
    Audit,
}

// === impl ExtAuthz ===

impl ExtAuthz {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    async fn decide(&self, http: &HttpRequest, raw_path: &str) -> Result<Enforcement, CheckError> {
        let normalized = NormalizedPath::parse(&http.target)?;
        if normalized.path() != raw_path {
            return Err(CheckError::NotNormalized {
                got: raw_path.to_owned(),
                normalized: normalized.path().to_owned(),
            });
        }
        let (enforcement, _) =
            self.shared
                .inputs
                .authorizer
                .check_http(http)
                .map_err(|e| match e {
                    Error::Path(p) => CheckError::Path(p),
                    other => CheckError::Request(other),
                })?;
        self.shared
            .audit(enforcement.record.clone())
            .await
            .map_err(|_| CheckError::Audit)?;
        Ok(enforcement)
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        let result = match map(&request) {
            Ok(mapped) => {
                let request_id = mapped.http.context.request_id.clone();
                (
                    self.decide(&mapped.http, &mapped.raw_path).await,
                    request_id,
                )
            }
            Err((e, request_id)) => (Err(e), request_id),
        };
        let (outcome, request_id) = result;
        if let Err(e) = &outcome {
            if !matches!(e, CheckError::Audit) {
                self.shared
                    .inputs
                    .authorizer
                    .metrics()
                    .bad_request("ext_authz");
            }
            tracing::debug!(error = %e, %request_id, "ext_authz check rejected");
        }
        Ok(tonic::Response::new(respond(outcome.as_ref(), &request_id)))
    }
}

/// A `CheckRequest` as a Ward HTTP request.
#[derive(Debug)]
pub(crate) struct Mapped {
    pub(crate) http: HttpRequest,
    /// The path Envoy will forward, without the query.
    pub(crate) raw_path: String,
}

/// Maps Envoy's attributes to a Ward request (see the module docs for the rules). On error,
/// also returns the request id so the answer can name it.
pub(crate) fn map(req: &CheckRequest) -> Result<Mapped, (CheckError, String)> {
    let attrs = req.attributes.as_ref();
    let http = attrs
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    let request_id = http.map_or_else(ward_audit::record::random_id, request_id);
    let fail = |e| (e, request_id.clone());
    let (Some(attrs), Some(http)) = (attrs, http) else {
        return Err(fail(CheckError::Missing("attributes.request.http")));
    };
    if http.method.is_empty() {
        return Err(fail(CheckError::Missing("attributes.request.http.method")));
    }
    let principal = attrs
        .source
        .as_ref()
        .map(|s| s.principal.as_str())
        .filter(|p| !p.is_empty())
        .ok_or_else(|| fail(CheckError::NoPeerIdentity))?;
    let principal = SpiffeId::parse(principal)
        .map_err(|_| fail(CheckError::BadPeerIdentity(principal.to_owned())))?;
    let host = strip_port(&http.host);
    let service = service(attrs, host).ok_or_else(|| fail(CheckError::NoService))?;
    let headers = headers(http);
    let time = attrs
        .request
        .as_ref()
        .and_then(|r| r.time.as_ref())
        .map_or_else(|| ward_audit::record::now_ms() / 1000, |t| t.seconds);
    let raw_path = http.path.split_once('?').map_or(&*http.path, |(p, _)| p);
    Ok(Mapped {
        raw_path: raw_path.to_owned(),
        http: HttpRequest {
            principal: Principal::Workload(principal),
            service,
            method: http.method.clone(),
            target: http.path.clone(),
            context: RequestContext {
                host: host.to_owned(),
                source_ip: req.get_client_address().and_then(|a| a.parse().ok()),
                mtls: true,
                request_id,
                time,
                headers,
                ..RequestContext::default()
            },
        },
    })
}

/// The one place a check's outcome becomes Envoy's answer.
pub fn respond(outcome: Result<&Enforcement, &CheckError>, request_id: &str) -> CheckResponse {
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    match outcome {
        Ok(e) if e.allow => {
            let mut ok = OkHttpResponseBuilder::new();
            let decision = if e.decision.allow {
                "allow"
            } else {
                "dry-run-deny"
            };
            ok.add_header(DECISION_HEADER, decision, overwrite, false);
            if e.decision.reasons.is_empty() {
                // Never let a client-sent value through as if Ward had set it.
                ok.remove_header(POLICY_HEADER);
            } else {
                ok.add_header(
                    POLICY_HEADER,
                    e.decision.reasons.join(","),
                    overwrite,
                    false,
                );
            }
            let mut response = CheckResponse::with_status(tonic::Status::ok("allowed"));
            response.set_http_response(ok);
            response
        }
        Ok(_) => denied(
            tonic::Status::permission_denied("denied"),
            HttpStatusCode::Forbidden,
            json!({ "error": "forbidden", "request_id": request_id }),
        ),
        Err(err) => {
            let (status, http) = match err {
                CheckError::NoPeerIdentity | CheckError::BadPeerIdentity(_) => (
                    tonic::Status::unauthenticated(err.to_string()),
                    HttpStatusCode::Unauthorized,
                ),
                CheckError::Missing(_)
                | CheckError::NoService
                | CheckError::Path(_)
                | CheckError::NotNormalized { .. }
                | CheckError::Request(_) => (
                    tonic::Status::invalid_argument(err.to_string()),
                    HttpStatusCode::BadRequest,
                ),
                CheckError::Audit => (
                    tonic::Status::unavailable(err.to_string()),
                    HttpStatusCode::ServiceUnavailable,
                ),
            };
            let body = json!({ "error": err.to_string(), "request_id": request_id });
            denied(status, http, body)
        }
    }
}

fn denied(status: tonic::Status, http: HttpStatusCode, body: serde_json::Value) -> CheckResponse {
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    let mut denied = DeniedHttpResponseBuilder::new();
    denied
        .set_http_status(http)
        .add_header("content-type", "application/json", overwrite, false)
        .add_header(DECISION_HEADER, "deny", overwrite, false)
        .set_body(format!("{body}\n"));
    let mut response = CheckResponse::with_status(status);
    response.set_http_response(denied);
    response
}

fn request_id(http: &EnvoyHttp) -> String {
    [
        http.headers.get("x-request-id").map(String::as_str),
        Some(http.id.as_str()),
    ]
    .into_iter()
    .flatten()
    .find(|id| !id.is_empty())
    .map_or_else(ward_audit::record::random_id, str::to_owned)
}

/// The destination service: the route's extension, else Envoy's own SPIFFE id, else the host.
fn service(
    attrs: &envoy_types::pb::envoy::service::auth::v3::AttributeContext,
    host: &str,
) -> Option<String> {
    if let Some(s) = attrs.context_extensions.get(SERVICE_EXTENSION) {
        return (!s.is_empty()).then(|| s.clone());
    }
    let from_principal = attrs
        .destination
        .as_ref()
        .and_then(|d| SpiffeId::parse(&d.principal).ok())
        .and_then(|id| {
            id.namespace_and_service_account()
                .map(|(_, sa)| sa.to_owned())
        });
    from_principal.or_else(|| (!host.is_empty()).then(|| host.to_owned()))
}

/// Request headers by lower-case name, without pseudo-headers.
fn headers(http: &EnvoyHttp) -> std::collections::BTreeMap<String, String> {
    let from_map = |h: &HashMap<String, String>| {
        h.iter()
            .filter(|(k, _)| !k.starts_with(':'))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    };
    match &http.header_map {
        // `encode_raw_headers: true` sends headers here instead.
        Some(map) if http.headers.is_empty() => map
            .headers
            .iter()
            .filter(|h| !h.key.starts_with(':'))
            .map(|h| {
                let value = if h.value.is_empty() {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                } else {
                    h.value.clone()
                };
                (h.key.to_ascii_lowercase(), value)
            })
            .collect(),
        _ => from_map(&http.headers),
    }
}

/// `host:port` → `host`; `[::1]:80` → `::1`.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests;
