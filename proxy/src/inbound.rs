//! Inbound: terminate mTLS, authorize every request with Cedar, record it, forward to the app.
//!
//! Per connection: TLS handshake with the workload's SVID, requiring a client SVID that chains
//! to a trusted bundle (a failure closes the connection and counts a `reason`), then
//! [`ConnCtx`] with the peer's verified SPIFFE id. Per request, in phases:
//! 1. context: request id, trace, forged identity headers dropped ([`ReqCtx`]);
//! 2. decision: path normalized and mapped to a Cedar request, decided, audited; a bad path is
//!    400 and a deny is 403 (both audited);
//! 3. forward: exactly the authorized path (plus the original query) to the local app, with
//!    `x-request-id`, `traceparent` and `x-ward-peer-id` set by us.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use ward_audit::AuditRecord;
use ward_authz::{HttpRequest, NormalizedPath, Principal, RequestContext};

use crate::app::{self, AppClient};
use crate::ctx::{ConnCtx, ListenerKind, ReqCtx};
use crate::headers;
use crate::identity::Lapse;
use crate::metrics::{HandshakeLabels, ReasonLabels, RedLabels};
use crate::proxy::ProxyInputs;
use crate::respond::{RequestError, error_response};
use crate::serve::{Drain, accept_loop, serve_http};
use crate::{BoxBody, BoxError, tls, trace};

/// Shared by every inbound connection.
struct Inbound {
    inputs: Arc<ProxyInputs>,
    acceptor: TlsAcceptor,
    app: Arc<AppClient<Incoming>>,
    // The audit records' resource, formatted once instead of per request.
    audit_resource: String,
}

/// What phase 2 decided, for the forward, the metrics and the access log.
struct Decided {
    /// The Cedar action (the `route` metric label).
    action: String,
    /// What was authorized: exactly this goes to the app.
    path: NormalizedPath,
}

/// Serves the inbound listener until shutdown.
pub(crate) async fn serve(inputs: Arc<ProxyInputs>, listener: TcpListener) {
    let acceptor = match tls::server_config(&inputs.identity) {
        Ok(cfg) => TlsAcceptor::from(cfg),
        Err(err) => {
            tracing::error!(error = %err, "inbound TLS config; the inbound listener is closed");
            return;
        }
    };
    let app = AppClient::new(inputs.cfg.app);
    let local = listener.local_addr().ok();
    let inbound = Arc::new(Inbound {
        inputs: inputs.clone(),
        acceptor,
        app,
        audit_resource: format!("Service::\"{}\"", inputs.cfg.service),
    });
    accept_loop(
        inputs,
        listener,
        ListenerKind::Inbound,
        move |tcp, peer, drain| {
            let conn = ConnCtx::new(ListenerKind::Inbound, peer, local.unwrap_or(peer));
            inbound.clone().connection(tcp, conn, drain)
        },
    )
    .await;
}

// === impl Inbound ===

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("app", &self.inputs.cfg.app)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Handshake, then serve HTTP on the connection.
    async fn connection(self: Arc<Self>, tcp: TcpStream, mut conn: ConnCtx, drain: Drain) {
        let metrics = &self.inputs.metrics;
        let timeout = self.inputs.cfg.handshake_timeout;
        let trust = self.inputs.identity.trust_generation();
        let accepted = tokio::time::timeout(timeout, self.acceptor.accept(tcp)).await;
        let failure = |reason: &'static str| {
            metrics
                .handshake_failures
                .get_or_create(&HandshakeLabels {
                    direction: "inbound",
                    reason,
                })
                .inc();
        };
        let tls = match accepted {
            Ok(Ok(tls)) => tls,
            Ok(Err(err)) => {
                let reason = tls::failure_reason(&err);
                failure(reason);
                tracing::info!(%conn, reason, error = %err, "mTLS handshake refused");
                return;
            }
            Err(_) => {
                failure("timeout");
                tracing::info!(%conn, "mTLS handshake timed out");
                return;
            }
        };
        let (_, session) = tls.get_ref();
        conn.sni = session.server_name().map(str::to_owned);
        let chain = session.peer_certificates().unwrap_or_default().to_vec();
        let expiry = match (
            ward_identity::verify::peer_spiffe_id(&chain),
            ward_identity::verify::peer_expiry(&chain),
        ) {
            (Ok(id), Ok(expiry)) => {
                conn.peer_id = Some(id);
                expiry
            }
            // The verifier already required a valid SVID; getting here is a bug.
            other => {
                debug_assert!(
                    false,
                    "BUG: verified peer without an id or expiry: {other:?}"
                );
                failure("no_peer_id");
                return;
            }
        };
        // The connection ends with the SVID that authenticated it (a rotating peer reconnects
        // with its new one), or when the bundles no longer vouch for it: otherwise a pooled
        // connection would outlive an expired or distrusted identity.
        let left = expiry
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        let expires = tokio::time::Instant::now() + left;
        let _open = metrics.connection("inbound");
        let conn = Arc::new(conn);
        tracing::debug!(%conn, "inbound connection");
        let lapse = {
            let (identity, conn) = (self.inputs.identity.clone(), conn.clone());
            let metrics = self.inputs.metrics.clone();
            async move {
                let reason = match identity.client_lapse(chain, trust, expires).await {
                    Lapse::Expired => {
                        tracing::info!(%conn, "the peer's SVID expired; closing its connection");
                        "expired"
                    }
                    Lapse::Untrusted(error) => {
                        tracing::info!(
                            %conn, %error,
                            "the trust bundles no longer vouch for the peer's SVID; closing its connection"
                        );
                        "untrusted"
                    }
                };
                metrics
                    .inbound_lapses
                    .get_or_create(&ReasonLabels { reason })
                    .inc();
            }
        };
        let this = self.clone();
        serve_http(tls, drain, lapse, move |req| {
            this.clone().request(conn.clone(), req)
        })
        .await;
    }

    /// One request through the three phases, then the access log and metrics.
    async fn request(
        self: Arc<Self>,
        conn: Arc<ConnCtx>,
        mut req: Request<Incoming>,
    ) -> Response<BoxBody> {
        // Phase 1: context. Identity headers from outside are never believed.
        headers::strip_hop_by_hop(req.headers_mut());
        let mut ctx = ReqCtx::new(conn, &req);
        let span = trace::start(self.inputs.traced, &mut ctx, req.headers());
        // Set once, before the decision: a policy that reads these headers sees what the app
        // will get (the verified peer), never what the caller sent.
        let peer = ctx.conn.peer_id.as_ref().map(|id| id.as_str());
        headers::set_identity_headers(req.headers_mut(), &ctx.request_id, &ctx.traceparent, peer);
        // Phase 2: normalize, decide, record.
        let (result, action) = match self.decide(&ctx, req.headers()).await {
            Ok(decided) => {
                let action = decided.action.clone();
                // Phase 3: forward exactly what was authorized.
                (self.forward(decided, req).await, action)
            }
            Err((err, action)) => (Err(err), action),
        };
        let response = match result {
            Ok(resp) => resp,
            Err(err) => error_response(&err, &ctx.request_id),
        };
        self.log(&ctx, &action, response.status().as_u16());
        trace::finish(&span, &action, response.status().as_u16());
        response
    }

    /// Phase 2: the Cedar decision and its audit record. On failure, also returns the action
    /// for the metrics (`-` when the path was rejected before mapping).
    async fn decide(
        &self,
        ctx: &ReqCtx,
        headers: &HeaderMap,
    ) -> Result<Decided, (RequestError, String)> {
        let inputs = &self.inputs;
        let Some(peer) = ctx.conn.peer_id.clone() else {
            return Err((
                RequestError::Bug("inbound request without a peer id".into()),
                "-".into(),
            ));
        };
        let snapshot = inputs.authz.snapshot();
        let http = HttpRequest {
            principal: Principal::Workload(peer.clone()),
            service: inputs.cfg.service.clone(),
            method: ctx.method.as_str().to_owned(),
            target: ctx.path.clone(),
            context: RequestContext {
                host: ctx.host().to_owned(),
                source_ip: Some(ctx.conn.src.ip()),
                mtls: true,
                request_id: ctx.request_id.clone(),
                time: ward_audit::record::now_ms() / 1000,
                headers: cedar_headers(headers, snapshot.declared_headers()),
                ..RequestContext::default()
            },
        };
        let (request, path) = match snapshot.map_http(&http) {
            Ok(mapped) => mapped,
            Err(err) => {
                let err = match err {
                    ward_authz::Error::Path(e) => RequestError::BadPath(e),
                    other => RequestError::BadRequest(other.to_string()),
                };
                self.inputs.metrics.unmappable();
                // Not a decision, but an attempt worth keeping: recorded as a deny.
                self.submit(|| {
                    let mut r = self.record(ctx, &peer);
                    r.path = Some(ctx.path.chars().take(256).collect());
                    r.errors = vec![err.to_string()];
                    r.policy_revision = snapshot.revision().to_string();
                    r
                })
                .await
                .map_err(|e| (e, "-".to_owned()))?;
                return Err((err, "-".to_owned()));
            }
        };
        let decision = snapshot.authorize(&request);
        self.inputs
            .metrics
            .decision(decision.allow, decision.remembered);
        let action = request.action.clone();
        self.submit(|| {
            let mut r = self.record(ctx, &peer);
            // `Action::"name"`, without format!'s machinery on the request path.
            let mut action = String::with_capacity(request.action.len() + 10);
            action.push_str("Action::\"");
            action.push_str(&request.action);
            action.push('"');
            r.action = action;
            r.path = Some(path.path().to_owned());
            r.decision = if decision.allow {
                ward_audit::Decision::Allow
            } else {
                ward_audit::Decision::Deny
            };
            r.policies = decision.reasons.clone();
            r.errors = decision.errors.iter().map(|e| e.message.clone()).collect();
            r.policy_revision = decision.revision.to_string();
            r.latency_us = u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX);
            r
        })
        .await
        .map_err(|e| (e, action.clone()))?;
        if !decision.allow {
            tracing::info!(%peer, %action, path = %path.path(), request_id = %ctx.request_id, policies = ?decision.reasons, "denied by policy");
            return Err((RequestError::Denied, action));
        }
        Ok(Decided { action, path })
    }

    /// Phase 3: the authorized path and original query to the app.
    async fn forward(
        &self,
        decided: Decided,
        mut req: Request<Incoming>,
    ) -> Result<Response<BoxBody>, RequestError> {
        *req.uri_mut() = app::origin_form(decided.path.path(), decided.path.query())
            .map_err(|e| RequestError::Bug(format!("app URI: {e}")))?;
        // The app speaks HTTP/1.1 whatever the peer spoke.
        *req.version_mut() = Version::HTTP_11;
        let sent = tokio::time::timeout(self.inputs.cfg.app_timeout, self.app.request(req)).await;
        let mut response = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(err)) => return Err(RequestError::AppUnavailable(err.to_string())),
            Err(_) => return Err(RequestError::Timeout),
        };
        headers::strip_hop_by_hop(response.headers_mut());
        Ok(response.map(|body| body.map_err(|e| Box::new(e) as BoxError).boxed()))
    }

    /// The fields of an audit record every inbound request shares.
    fn record(&self, ctx: &ReqCtx, peer: &ward_identity::SpiffeId) -> AuditRecord {
        let mut r = AuditRecord::new(&self.inputs.cfg.node, &ctx.request_id);
        r.trace_id = Some(ctx.trace_id.clone());
        r.principal = peer.to_string();
        r.resource = self.audit_resource.clone();
        r.method = Some(ctx.method.as_str().to_owned());
        r
    }

    /// Hands the record `make` builds to the audit log; nothing is built when auditing is off.
    async fn submit(&self, make: impl FnOnce() -> AuditRecord) -> Result<(), RequestError> {
        let Some(audit) = &self.inputs.audit else {
            return Ok(());
        };
        match audit.submit(make()).await {
            Ok(()) => Ok(()),
            Err(err) if audit.is_strict() => {
                tracing::error!(error = %err, "audit record not durable: failing the request closed");
                Err(RequestError::AuditUnavailable)
            }
            Err(err) => {
                tracing::error!(error = %err, "audit record lost");
                Ok(())
            }
        }
    }

    fn log(&self, ctx: &ReqCtx, route: &str, status: u16) {
        let elapsed = ctx.start.elapsed();
        let source = ctx.conn.peer_id.as_ref().map_or("", |id| id.as_str());
        tracing::info!(
            target: "access",
            direction = "inbound",
            request_id = %ctx.request_id,
            trace_id = %ctx.trace_id,
            src = %ctx.conn.src,
            peer = %source,
            method = %ctx.method,
            authority = %ctx.authority,
            path = %ctx.path,
            route,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
        );
        self.inputs.metrics.request(
            RedLabels {
                direction: "inbound",
                source,
                destination: &self.inputs.cfg.service,
                route,
            },
            status,
            elapsed.as_secs_f64(),
        );
    }
}

/// The request headers policies can read, as Cedar context: lower-case names, values joined
/// by `, `. Headers the schema does not declare never reach a policy, so they are not copied.
fn cedar_headers(headers: &HeaderMap, declared: &[String]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for name in declared {
        // Values that are not visible ASCII are left out; a header with none left is absent.
        let values: Vec<&str> = headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            out.insert(name.clone(), values.join(", "));
        }
    }
    out
}
