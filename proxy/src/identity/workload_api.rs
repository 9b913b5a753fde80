//! The SVID from the SPIFFE Workload API (`ward agent`), kept current as the agent rotates it.
//!
//! One `FetchX509SVID` stream stays open; every message the agent pushes (renewal at half-life,
//! a CA rotation) is swapped into the [`Identity`]. When the stream breaks, the current SVID
//! keeps serving while the task reconnects with backoff.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::PrivatePkcs8KeyDer;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codec::Streaming;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use ward_identity::workload_api::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use ward_identity::workload_api::proto::{X509svidRequest, X509svidResponse};
use ward_identity::workload_api::{SECURITY_HEADER, SECURITY_HEADER_VALUE};
use ward_identity::{TrustBundle, TrustDomain, X509Svid};

use super::{Identity, IdentityError, split_der, svid_from_der};
use crate::config::WorkloadApiIdentity;

/// Shortest and longest pause between reconnection attempts.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Stream = Streaming<X509svidResponse>;

/// Fetches the first SVID (retrying until `startup_timeout`), then keeps it current in a task.
pub async fn spawn(cfg: &WorkloadApiIdentity) -> Result<(Identity, JoinHandle<()>), IdentityError> {
    let deadline = Instant::now() + cfg.startup_timeout;
    let mut backoff = MIN_BACKOFF;
    let (first, stream) = loop {
        let attempt = tokio::time::timeout_at(deadline, open(cfg)).await;
        match attempt {
            Ok(Ok(opened)) => break opened,
            Ok(Err(err)) if Instant::now() + backoff < deadline => {
                tracing::debug!(error = %err, "Workload API not ready yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Ok(Err(err)) => return Err(err),
            Err(_) => {
                return Err(api_error(
                    cfg,
                    format!("no SVID within {:?}", cfg.startup_timeout),
                ));
            }
        }
    };
    let (svid, bundles) = first;
    tracing::info!(spiffe_id = %svid.spiffe_id, "SVID received from the Workload API");
    let identity = Identity::new(svid, bundles)?;
    let task = tokio::spawn(follow(cfg.clone(), identity.clone(), stream));
    Ok((identity, task))
}

/// Connects, opens the stream and reads its first message.
async fn open(
    cfg: &WorkloadApiIdentity,
) -> Result<((X509Svid, Vec<Arc<TrustBundle>>), Stream), IdentityError> {
    let endpoint = Endpoint::from_shared(format!("unix://{}", cfg.socket.display()))
        .map_err(|e| api_error(cfg, e.to_string()))?;
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|e| api_error(cfg, format!("connecting: {e}")))?;
    let mut request = tonic::Request::new(X509svidRequest {});
    request.metadata_mut().insert(
        SECURITY_HEADER,
        MetadataValue::from_static(SECURITY_HEADER_VALUE),
    );
    let mut stream = SpiffeWorkloadApiClient::new(channel)
        .fetch_x509svid(request)
        .await
        .map_err(|status| api_error(cfg, format!("FetchX509SVID: {}", status.message())))?
        .into_inner();
    let first = next(cfg, &mut stream).await?;
    Ok((first, stream))
}

/// The next pushed SVID and bundles.
async fn next(
    cfg: &WorkloadApiIdentity,
    stream: &mut Stream,
) -> Result<(X509Svid, Vec<Arc<TrustBundle>>), IdentityError> {
    match stream.message().await {
        Ok(Some(message)) => parse(cfg, message),
        Ok(None) => Err(api_error(cfg, "the stream ended".to_owned())),
        Err(status) => Err(api_error(cfg, format!("stream: {}", status.message()))),
    }
}

/// Applies every update; reconnects when the stream breaks. Runs until aborted.
async fn follow(cfg: WorkloadApiIdentity, identity: Identity, mut stream: Stream) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match next(&cfg, &mut stream).await {
            Ok((svid, bundles)) => {
                let id = svid.spiffe_id.clone();
                match identity.update(svid, bundles) {
                    Ok(()) => tracing::info!(spiffe_id = %id, "SVID rotated"),
                    Err(err) => tracing::error!(error = %err, "rejected an SVID update"),
                }
                continue;
            }
            Err(err) => tracing::warn!(error = %err, "Workload API stream lost; reconnecting"),
        }
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match open(&cfg).await {
                Ok(((svid, bundles), reopened)) => {
                    if let Err(err) = identity.update(svid, bundles) {
                        tracing::error!(error = %err, "rejected an SVID update");
                    }
                    stream = reopened;
                    backoff = MIN_BACKOFF;
                    break;
                }
                Err(err) => tracing::debug!(error = %err, "Workload API reconnect failed"),
            }
        }
    }
}

/// Picks the configured SVID (or the first) and collects its bundle and federated bundles.
fn parse(
    cfg: &WorkloadApiIdentity,
    message: X509svidResponse,
) -> Result<(X509Svid, Vec<Arc<TrustBundle>>), IdentityError> {
    let chosen = match &cfg.spiffe_id {
        Some(id) => message.svids.iter().find(|s| &s.spiffe_id == id),
        None => message.svids.first(),
    }
    .ok_or_else(|| {
        IdentityError::NotOffered(cfg.spiffe_id.clone().unwrap_or_else(|| "any id".into()))
    })?;
    let chain = split_der(&chosen.x509_svid)?;
    let key = PrivatePkcs8KeyDer::from(chosen.x509_svid_key.clone());
    let svid = svid_from_der(chain, key)?;
    let own = TrustBundle::new(
        svid.spiffe_id.trust_domain(),
        split_der(&chosen.bundle)?,
        vec![],
    )?;
    let mut bundles = vec![Arc::new(own)];
    for (td, der) in &message.federated_bundles {
        let td = TrustDomain::parse(td).map_err(|e| IdentityError::Parse {
            what: "federated bundle trust domain",
            reason: e.to_string(),
        })?;
        bundles.push(Arc::new(TrustBundle::new(td, split_der(der)?, vec![])?));
    }
    Ok((svid, bundles))
}

fn api_error(cfg: &WorkloadApiIdentity, reason: String) -> IdentityError {
    IdentityError::WorkloadApi {
        socket: cfg.socket.clone(),
        reason,
    }
}
