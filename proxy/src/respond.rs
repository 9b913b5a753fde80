//! The one place a failed request becomes an HTTP answer.
//!
//! Handlers and middleware return [`RequestError`] (or a tower `BoxError` that wraps one);
//! [`error_response`] picks the status and writes a small JSON body
//! `{"request_id": …, "error": …}`. Messages never carry policy text or upstream bodies.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ward_authz::PathError;

use crate::{BoxBody, BoxError};

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The path was rejected by normalization.
    #[error("invalid request path: {0}")]
    BadPath(#[from] PathError),
    /// The request could not be read or mapped.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Policy denied it.
    #[error("denied by policy")]
    Denied,
    /// The app sent a request with neither an absolute URI nor a `Host` header.
    #[error("no destination: send an absolute URI (HTTP proxy) or a `Host` header")]
    NoDestination,
    /// The destination is not in the registry.
    #[error("unknown service `{0}`: it is not in the proxy's registry")]
    UnknownService(String),
    /// Every endpoint of the chosen subset is ejected or there are none.
    #[error("no healthy endpoint for `{0}`")]
    NoHealthyEndpoints(String),
    /// A circuit-breaker limit is reached.
    #[error("circuit breaker open for `{service}`: {limit} reached")]
    CircuitOpen {
        /// The destination service.
        service: String,
        /// `max_requests`, `max_pending` or `max_connections`.
        limit: &'static str,
    },
    /// The request body is over `max_request_body`.
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The request timeout fired.
    #[error("request timed out")]
    Timeout,
    /// The per-try timeout fired on the last attempt.
    #[error("upstream attempt timed out")]
    PerTryTimeout,
    /// Connecting (TCP or TLS) to an endpoint failed.
    #[error("connecting to upstream failed: {0}")]
    UpstreamConnect(String),
    /// The connection or stream was reset before a response.
    #[error("upstream reset the request: {0}")]
    UpstreamReset(String),
    /// The local app could not be reached or failed mid-request.
    #[error("local app unavailable: {0}")]
    AppUnavailable(String),
    /// Fault injection aborted the request with this status.
    #[error("fault injected")]
    Fault(u16),
    /// Strict audit mode: the decision's record could not be made durable.
    #[error("audit log unavailable")]
    AuditUnavailable,
    /// An invariant was violated.
    #[error("BUG: {0}")]
    Bug(String),
}

// === impl RequestError ===

impl RequestError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadPath(_) | Self::BadRequest(_) | Self::NoDestination => StatusCode::BAD_REQUEST,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownService(_) | Self::UpstreamReset(_) | Self::AppUnavailable(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::NoHealthyEndpoints(_)
            | Self::CircuitOpen { .. }
            | Self::UpstreamConnect(_)
            | Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout | Self::PerTryTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Fault(code) => {
                StatusCode::from_u16(*code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            Self::Bug(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short, stable name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadPath(_) => "bad_path",
            Self::BadRequest(_) => "bad_request",
            Self::Denied => "denied",
            Self::NoDestination => "no_destination",
            Self::UnknownService(_) => "unknown_service",
            Self::NoHealthyEndpoints(_) => "no_healthy_endpoints",
            Self::CircuitOpen { .. } => "circuit_open",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::Timeout => "timeout",
            Self::PerTryTimeout => "per_try_timeout",
            Self::UpstreamConnect(_) => "connect_failure",
            Self::UpstreamReset(_) => "reset",
            Self::AppUnavailable(_) => "app_unavailable",
            Self::Fault(_) => "fault",
            Self::AuditUnavailable => "audit_unavailable",
            Self::Bug(_) => "bug",
        }
    }

    /// Recovers the request error inside a tower error: ours, or a timeout or load-shed from
    /// tower's own layers.
    pub fn from_box(err: BoxError) -> Self {
        let err = match err.downcast::<Self>() {
            Ok(e) => return *e,
            Err(err) => err,
        };
        if err.is::<tower::timeout::error::Elapsed>() {
            return Self::Timeout;
        }
        Self::Bug(format!("unclassified middleware error: {err}"))
    }
}

/// The answer to a failed request: its status and `{"request_id", "error"}`.
pub fn error_response(err: &RequestError, request_id: &str) -> Response<BoxBody> {
    if let RequestError::Bug(message) = err {
        tracing::error!(%message, request_id, "BUG while serving a request");
    }
    let body = serde_json::json!({ "request_id": request_id, "error": err.to_string() });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = err.status();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(crate::headers::REQUEST_ID, v);
    }
    response
}

/// A complete body from bytes.
pub fn full(data: impl Into<Bytes>) -> BoxBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_map_to_status_and_a_small_json_body() {
        for (err, status) in [
            (RequestError::BadPath(PathError::EncodedSlash), 400),
            (RequestError::Denied, 403),
            (RequestError::UnknownService("x".into()), 502),
            (RequestError::NoHealthyEndpoints("x".into()), 503),
            (RequestError::Timeout, 504),
            (RequestError::Fault(418), 418),
            (RequestError::BodyTooLarge(1), 413),
        ] {
            let resp = error_response(&err, "req-1");
            assert_eq!(resp.status().as_u16(), status, "{err}");
            assert_eq!(resp.headers()["x-request-id"], "req-1");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["request_id"], "req-1");
            assert_eq!(json["error"], err.to_string());
            assert_eq!(json.as_object().unwrap().len(), 2);
        }
    }

    #[test]
    fn tower_errors_are_recovered() {
        let boxed: BoxError = Box::new(RequestError::Denied);
        assert_eq!(RequestError::from_box(boxed), RequestError::Denied);
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(RequestError::from_box(elapsed), RequestError::Timeout);
        let other: BoxError = "weird".into();
        assert!(matches!(
            RequestError::from_box(other),
            RequestError::Bug(_)
        ));
    }
}
