//! Per-connection and per-request context, built once and passed down by reference.
//!
//! Authorization, audit, metrics and the access log all read from these, so they agree on who
//! called what. Both print compactly (`src(identity)->dst`) to keep log lines short.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::Instant;
use ward_identity::SpiffeId;

use crate::headers;

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// mTLS from other proxies.
    Inbound,
    /// Plain HTTP from the local app.
    Outbound,
    /// The admin endpoints.
    Admin,
}

/// What is known about a connection once it is accepted (and, inbound, once TLS finished).
#[derive(Debug, Clone)]
pub struct ConnCtx {
    /// The peer's address.
    pub src: SocketAddr,
    /// Our address the peer connected to.
    pub dst: SocketAddr,
    /// The peer's verified SPIFFE id (inbound only).
    pub peer_id: Option<SpiffeId>,
    /// The SNI the peer sent, if any.
    pub sni: Option<String>,
    /// The listener.
    pub listener: ListenerKind,
}

/// What is known about one request once its head is read.
#[derive(Debug, Clone)]
pub struct ReqCtx {
    /// The connection it came on.
    pub conn: Arc<ConnCtx>,
    /// The HTTP method.
    pub method: http::Method,
    /// The `Host` / `:authority` (or the absolute-form URI's authority), without userinfo.
    pub authority: String,
    /// The request target as received (path and query).
    pub path: String,
    /// `x-request-id`: the caller's, or a new one.
    pub request_id: String,
    /// The W3C trace id (32 hex digits) of the `traceparent` sent on.
    pub trace_id: String,
    /// The `traceparent` this hop sends on (same trace id, this hop as parent).
    pub traceparent: String,
    /// When the request arrived.
    pub start: Instant,
    /// When the request must be done by, if a timeout applies.
    pub deadline: Option<Instant>,
}

// === impl ListenerKind ===

impl ListenerKind {
    /// `inbound`, `outbound` or `admin`: the metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Admin => "admin",
        }
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl ConnCtx ===

impl ConnCtx {
    /// A connection on `listener` with no identity yet.
    pub fn new(listener: ListenerKind, src: SocketAddr, dst: SocketAddr) -> Self {
        Self {
            src,
            dst,
            peer_id: None,
            sni: None,
            listener,
        }
    }
}

impl fmt::Display for ConnCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.peer_id {
            Some(id) => write!(f, "{}({id})->{}", self.src, self.dst),
            None => write!(f, "{}->{}", self.src, self.dst),
        }
    }
}

// === impl ReqCtx ===

impl ReqCtx {
    /// Phase 1 of every handler: the request id (the caller's, or new), the trace (continued
    /// or new), the authority (`Host`, else the URI's) and the raw target.
    pub fn new<B>(conn: Arc<ConnCtx>, req: &http::Request<B>) -> Self {
        let request_id = headers::request_id(req.headers());
        let (trace_id, traceparent) = headers::trace(req.headers());
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
        Self {
            conn,
            method: req.method().clone(),
            authority,
            path,
            request_id,
            trace_id,
            traceparent,
            start: Instant::now(),
            deadline: None,
        }
    }

    /// The host of the authority: no userinfo, no port, no IPv6 brackets.
    pub fn host(&self) -> &str {
        let authority = self
            .authority
            .rsplit_once('@')
            .map_or(self.authority.as_str(), |(_, h)| h);
        if let Some(rest) = authority.strip_prefix('[') {
            return rest.split_once(']').map_or(rest, |(h, _)| h);
        }
        authority.split_once(':').map_or(authority, |(h, _)| h)
    }
}

impl fmt::Display for ReqCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}{} [{}]",
            self.conn, self.method, self.authority, self.path, self.request_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_compact() {
        let mut conn = ConnCtx::new(
            ListenerKind::Inbound,
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:15006".parse().unwrap(),
        );
        assert_eq!(conn.to_string(), "127.0.0.1:5000->127.0.0.1:15006");
        conn.peer_id = Some(SpiffeId::parse("spiffe://ward.local/ns/a/sa/b").unwrap());
        assert_eq!(
            conn.to_string(),
            "127.0.0.1:5000(spiffe://ward.local/ns/a/sa/b)->127.0.0.1:15006"
        );
        let req = ReqCtx {
            conn: Arc::new(conn),
            method: http::Method::GET,
            authority: "orders-api".into(),
            path: "/orders/1".into(),
            request_id: "r1".into(),
            trace_id: "t".into(),
            traceparent: String::new(),
            start: Instant::now(),
            deadline: None,
        };
        assert!(req.to_string().ends_with("GET orders-api/orders/1 [r1]"));
    }

    #[test]
    fn request_context_reads_the_authority_and_target() {
        let conn = Arc::new(ConnCtx::new(
            ListenerKind::Outbound,
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:15001".parse().unwrap(),
        ));
        let absolute = http::Request::get("http://orders-api:8080/orders?x=1")
            .body(())
            .unwrap();
        let ctx = ReqCtx::new(conn.clone(), &absolute);
        assert_eq!(
            (ctx.authority.as_str(), ctx.host()),
            ("orders-api:8080", "orders-api")
        );
        assert_eq!(ctx.path, "/orders?x=1");
        assert_eq!(ctx.request_id.len(), 32);

        let by_host = http::Request::get("/a")
            .header("host", "[::1]:80")
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        let ctx = ReqCtx::new(conn.clone(), &by_host);
        assert_eq!((ctx.host(), ctx.request_id.as_str()), ("::1", "abc"));

        let none = http::Request::get("/a").body(()).unwrap();
        assert_eq!(ReqCtx::new(conn, &none).host(), "");
    }
}
