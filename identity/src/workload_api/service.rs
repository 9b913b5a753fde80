//! The `SpiffeWorkloadAPI` gRPC handlers: check the header, attest, match entries, then answer.
//!
//! Each handler runs in two phases: [`Service::caller`] turns the request into a [`Caller`]
//! (or a [`CallError`]), then the handler issues or validates. [`to_status`] is the one place a
//! [`CallError`] becomes a gRPC status.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use super::attest::{Attestor, PeerCred};
use super::entries::{Entries, Entry};
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApi;
use super::proto::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use super::{CallError, Config, SECURITY_HEADER, SECURITY_HEADER_VALUE};
use crate::bundle::TrustBundle;
use crate::spiffe_id::SpiffeId;
use crate::svid::SvidSource;

/// Never re-issue more often than this, whatever the TTL: a floor against busy loops.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Responses buffered per stream; a slow reader holds back only its own stream.
const STREAM_BUFFER: usize = 1;

type Sender<T> = mpsc::Sender<Result<T, Status>>;

/// Everything a handler needs, shared by all calls and streams.
pub(super) struct Service {
    pub(super) cfg: Config,
    pub(super) entries: Entries,
    pub(super) attestor: Attestor,
    pub(super) source: watch::Receiver<Arc<dyn SvidSource>>,
    /// Turns true when the server shuts down; open streams then end so the drain can finish.
    pub(super) drain: watch::Receiver<bool>,
}

/// An attested caller and the entries it is entitled to (never empty).
struct Caller {
    peer: PeerCred,
    entries: Vec<Entry>,
}

// === impl Service ===

impl Service {
    /// Phase 1 of every call: the security header, attestation and entry matching.
    fn caller<T>(&self, request: &Request<T>) -> Result<Caller, CallError> {
        let header = request.metadata().get(SECURITY_HEADER);
        if header.is_none_or(|v| v.as_bytes() != SECURITY_HEADER_VALUE.as_bytes()) {
            return Err(CallError::MissingSecurityHeader);
        }
        let peer: PeerCred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or(CallError::NoPeerCredentials)?
            .into();
        let selectors = self.attestor.attest(&peer);
        let entries = self.entries.matching(&selectors);
        if entries.is_empty() {
            tracing::info!(%peer, %selectors, "no registration entry matches the caller");
            return Err(CallError::NoMatchingEntry);
        }
        tracing::debug!(%peer, %selectors, entries = entries.len(), "attested caller");
        Ok(Caller { peer, entries })
    }

    fn current_source(&self) -> Arc<dyn SvidSource> {
        Arc::clone(&*self.source.borrow())
    }

    fn x509_ttl(&self, entry: &Entry) -> Duration {
        entry.ttl.unwrap_or(self.cfg.default_ttl)
    }

    fn jwt_ttl(&self, entry: &Entry) -> Duration {
        entry
            .ttl
            .map_or(self.cfg.jwt_ttl, |t| t.min(self.cfg.jwt_ttl))
    }

    /// Issues one X.509-SVID per entry and says when the earliest should be renewed.
    fn issue_x509(
        &self,
        source: &dyn SvidSource,
        entries: &[Entry],
    ) -> Result<(X509svidResponse, Instant), CallError> {
        let bundle = x509_bundle_der(&source.bundle());
        let mut svids = Vec::with_capacity(entries.len());
        let mut renew_at: Option<SystemTime> = None;
        for entry in entries {
            let svid = source
                .issue_x509(&entry.spiffe_id, self.x509_ttl(entry))
                .map_err(|source| CallError::Issue {
                    id: entry.spiffe_id.clone(),
                    source,
                })?;
            let at = svid.renew_at();
            renew_at = Some(renew_at.map_or(at, |r| r.min(at)));
            svids.push(X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                x509_svid: svid
                    .cert_chain
                    .iter()
                    .flat_map(|c| c.iter().copied())
                    .collect(),
                x509_svid_key: svid.private_key.secret_pkcs8_der().to_vec(),
                bundle: bundle.clone(),
                hint: entry.hint.clone(),
            });
        }
        let wait = renew_at
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO)
            .max(MIN_REFRESH_INTERVAL);
        let response = X509svidResponse {
            svids,
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        };
        Ok((response, Instant::now() + wait))
    }

    fn fetch_jwt(
        &self,
        caller: &Caller,
        req: JwtsvidRequest,
    ) -> Result<JwtsvidResponse, CallError> {
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(CallError::InvalidRequest(
                "`audience` is required and must not contain empty values".to_owned(),
            ));
        }
        let wanted = if req.spiffe_id.is_empty() {
            None
        } else {
            Some(SpiffeId::parse(&req.spiffe_id).map_err(|e| {
                CallError::InvalidRequest(format!("`spiffe_id` `{}`: {e}", req.spiffe_id))
            })?)
        };
        let source = self.current_source();
        let mut seen = BTreeSet::new();
        let mut svids = Vec::new();
        for entry in &caller.entries {
            let id = &entry.spiffe_id;
            if wanted.as_ref().is_some_and(|w| w != id) || !seen.insert(id.clone()) {
                continue;
            }
            let jwt = source
                .issue_jwt(id, &req.audience, self.jwt_ttl(entry))
                .map_err(|source| CallError::Issue {
                    id: id.clone(),
                    source,
                })?;
            svids.push(Jwtsvid {
                spiffe_id: jwt.spiffe_id.to_string(),
                svid: jwt.token,
                hint: entry.hint.clone(),
            });
        }
        match wanted {
            Some(id) if svids.is_empty() => Err(CallError::NotEntitled(id)),
            _ => Ok(JwtsvidResponse { svids }),
        }
    }

    fn validate_jwt(
        &self,
        req: &ValidateJwtsvidRequest,
    ) -> Result<ValidateJwtsvidResponse, CallError> {
        if req.audience.is_empty() {
            return Err(CallError::InvalidRequest(
                "`audience` is required".to_owned(),
            ));
        }
        if req.svid.is_empty() {
            return Err(CallError::InvalidRequest("`svid` is required".to_owned()));
        }
        let claims = self
            .current_source()
            .bundle()
            .validate_jwt(&req.svid, &req.audience)
            .map_err(CallError::InvalidJwtSvid)?;
        Ok(ValidateJwtsvidResponse {
            spiffe_id: claims.spiffe_id.to_string(),
            claims: Some(json_to_struct(claims.claims)),
        })
    }

    /// Streams X.509-SVIDs: now, at the earliest half-life, and when the X.509 bundle changes.
    async fn x509_svid_stream(self: Arc<Self>, entries: Vec<Entry>, tx: Sender<X509svidResponse>) {
        let mut source_rx = self.source.clone();
        let mut drain = self.drain.clone();
        loop {
            let source = Arc::clone(&*source_rx.borrow_and_update());
            let (response, refresh_at) = match self.issue_x509(&*source, &entries) {
                Ok(issued) => issued,
                Err(err) => {
                    // The client reconnects with backoff; it still holds its previous SVIDs.
                    let _ = tx.send(Err(to_status(err))).await;
                    return;
                }
            };
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
            tracing::debug!(svids = entries.len(), "sent X.509-SVIDs");
            let sent_bundle = source.bundle();
            // Wait for the refresh time or a bundle change, whichever comes first.
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(refresh_at) => break,
                    changed = source_rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let new_bundle = source_rx.borrow_and_update().bundle();
                        if new_bundle.x509_authorities() != sent_bundle.x509_authorities() {
                            break;
                        }
                    }
                    () = tx.closed() => return,
                    _ = drain.wait_for(|draining| *draining) => return,
                }
            }
        }
    }

    /// Streams `make(bundle)` now and again whenever it changes.
    async fn bundle_stream<T>(self: Arc<Self>, tx: Sender<T>, make: fn(&TrustBundle) -> T)
    where
        T: PartialEq + Clone + Send + 'static,
    {
        let mut source_rx = self.source.clone();
        let mut drain = self.drain.clone();
        let mut last: Option<T> = None;
        loop {
            let bundle = source_rx.borrow_and_update().bundle();
            let response = make(&bundle);
            if last.as_ref() != Some(&response) {
                if tx.send(Ok(response.clone())).await.is_err() {
                    return;
                }
                last = Some(response);
            }
            tokio::select! {
                changed = source_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
                _ = drain.wait_for(|draining| *draining) => return,
            }
        }
    }
}

// The handlers only wire phases together; the work is in `Service`'s methods.
#[tonic::async_trait]
impl SpiffeWorkloadApi for Arc<Service> {
    type FetchX509SVIDStream = ReceiverStream<Result<X509svidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<X509BundlesResponse, Status>>;
    type FetchJWTBundlesStream = ReceiverStream<Result<JwtBundlesResponse, Status>>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let caller = self.caller(&request).map_err(to_status)?;
        tracing::info!(peer = %caller.peer, "FetchX509SVID stream opened");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(Arc::clone(self).x509_svid_stream(caller.entries, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let caller = self.caller(&request).map_err(to_status)?;
        tracing::info!(peer = %caller.peer, "FetchX509Bundles stream opened");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(Arc::clone(self).bundle_stream(tx, x509_bundles_response));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let caller = self.caller(&request).map_err(to_status)?;
        let response = self
            .fetch_jwt(&caller, request.into_inner())
            .map_err(to_status)?;
        tracing::info!(peer = %caller.peer, svids = response.svids.len(), "issued JWT-SVIDs");
        Ok(Response::new(response))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let caller = self.caller(&request).map_err(to_status)?;
        tracing::info!(peer = %caller.peer, "FetchJWTBundles stream opened");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(Arc::clone(self).bundle_stream(tx, jwt_bundles_response));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let caller = self.caller(&request).map_err(to_status)?;
        let response = self.validate_jwt(request.get_ref()).map_err(to_status)?;
        tracing::debug!(peer = %caller.peer, subject = %response.spiffe_id, "validated a JWT-SVID");
        Ok(Response::new(response))
    }
}

/// The one place a [`CallError`] becomes a gRPC status (codes from the Workload Endpoint spec).
fn to_status(err: CallError) -> Status {
    match err {
        CallError::MissingSecurityHeader
        | CallError::InvalidRequest(_)
        | CallError::InvalidJwtSvid(_) => Status::invalid_argument(err.to_string()),
        CallError::NoPeerCredentials | CallError::NoMatchingEntry | CallError::NotEntitled(_) => {
            Status::permission_denied(err.to_string())
        }
        CallError::Issue { .. } => {
            // The details (CA state, file paths) stay in the agent's log, not with the caller.
            tracing::error!(error = %err, "SVID issuance failed");
            Status::unavailable("the Workload API could not issue an SVID; retry later")
        }
    }
}

/// The X.509 authorities as one concatenated DER blob, as the Workload API sends bundles.
fn x509_bundle_der(bundle: &TrustBundle) -> Vec<u8> {
    bundle
        .x509_authorities()
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect()
}

/// Bundles are keyed by the trust domain's SPIFFE id (`spiffe://<td>`), as SPIRE does.
fn bundle_key(bundle: &TrustBundle) -> String {
    bundle.trust_domain().id().to_string()
}

fn x509_bundles_response(bundle: &TrustBundle) -> X509BundlesResponse {
    X509BundlesResponse {
        crl: Vec::new(),
        bundles: HashMap::from([(bundle_key(bundle), x509_bundle_der(bundle))]),
    }
}

fn jwt_bundles_response(bundle: &TrustBundle) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: HashMap::from([(bundle_key(bundle), bundle.jwks_json().into_bytes())]),
    }
}

fn json_to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, json_to_value(v)))
            .collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(b),
        // Only `arbitrary_precision` numbers lack an f64 form; protobuf has no other number type.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(json_to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_claims_become_a_protobuf_struct() {
        let serde_json::Value::Object(map) = serde_json::json!({
            "sub": "spiffe://ward.local/a",
            "aud": ["x", "y"],
            "exp": 17,
            "flag": true,
            "none": null,
            "nested": {"k": 1.5},
        }) else {
            unreachable!()
        };
        let s = json_to_struct(map);
        use prost_types::value::Kind;
        assert_eq!(
            s.fields["sub"].kind,
            Some(Kind::StringValue("spiffe://ward.local/a".into()))
        );
        assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(17.0)));
        assert_eq!(s.fields["flag"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(s.fields["none"].kind, Some(Kind::NullValue(0)));
        let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else {
            panic!("aud is a list")
        };
        assert_eq!(aud.values.len(), 2);
        let Some(Kind::StructValue(nested)) = &s.fields["nested"].kind else {
            panic!("nested is a struct")
        };
        assert_eq!(nested.fields["k"].kind, Some(Kind::NumberValue(1.5)));
    }

    #[test]
    fn status_codes_follow_the_workload_endpoint_spec() {
        use tonic::Code;
        let id = SpiffeId::parse("spiffe://ward.local/x").unwrap();
        let cases = [
            (CallError::MissingSecurityHeader, Code::InvalidArgument),
            (CallError::InvalidRequest("x".into()), Code::InvalidArgument),
            (CallError::NoPeerCredentials, Code::PermissionDenied),
            (CallError::NoMatchingEntry, Code::PermissionDenied),
            (CallError::NotEntitled(id), Code::PermissionDenied),
        ];
        for (err, code) in cases {
            assert_eq!(to_status(err).code(), code);
        }
    }
}
