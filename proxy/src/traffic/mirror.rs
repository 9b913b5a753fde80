//! Request mirroring: a copy of a share of calls goes to a shadow subset, fire-and-forget.
//!
//! The copy is sent straight to the subset's endpoints (no retries, no breaker slot) on its own
//! task; its answer and errors are dropped, and the caller never waits for it.

use std::sync::Arc;
use std::task::{Context, Poll};

use super::fault::hit;
use super::{BoxFuture, HttpRequest, HttpResponse, Target, clone_request};
use crate::BoxError;
use crate::metrics::DestinationLabels;

/// Sends a copy of a share of calls to the mirror subset, then passes the call on.
#[derive(Debug, Clone)]
pub struct Mirror<S> {
    inner: S,
    target: Arc<Target>,
}

// === impl Mirror ===

impl Mirror<()> {
    /// The layer that wraps a service in a mirror for `target`.
    pub fn layer<S>(target: Arc<Target>) -> impl tower::Layer<S, Service = Mirror<S>> + Clone {
        tower::layer::layer_fn(move |inner| Mirror {
            inner,
            target: target.clone(),
        })
    }
}

impl<S> tower::Service<HttpRequest> for Mirror<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        if let Some(mirror) = self
            .target
            .policy
            .mirror
            .as_ref()
            .filter(|m| hit(m.percent))
        {
            let copy = clone_request(&req);
            let target = self.target.clone();
            let subset = mirror.subset.clone();
            target
                .metrics
                .mirrored
                .get_or_create(&DestinationLabels {
                    destination: target.name.to_string(),
                    reason: "",
                })
                .inc();
            tokio::spawn(async move {
                let sent = match target.pool.pick(Some(&subset)) {
                    Ok(endpoint) => target.pool.call(&endpoint, copy).await.map(|_| ()),
                    Err(err) => Err(err),
                };
                if let Err(err) = sent {
                    tracing::debug!(service = %target.name, %subset, error = %err, "mirrored call failed");
                }
            });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(req).await })
    }
}
