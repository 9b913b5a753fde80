//! Fault injection: delay and/or abort a configured share of calls, for resilience testing.
//!
//! It runs first in the stack, as Envoy's fault filter runs before its router: an injected
//! abort never reaches an endpoint, never spends retry budget and never trips the breaker.

use std::sync::Arc;
use std::task::{Context, Poll};

use super::{BoxFuture, HttpRequest, HttpResponse, Target, boxed};
use crate::BoxError;
use crate::metrics::DestinationLabels;
use crate::respond::RequestError;

/// Delays or aborts a share of calls before passing the rest on.
#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
    target: Arc<Target>,
}

// === impl Fault ===

impl Fault<()> {
    /// The layer that wraps a service in a fault for `target`.
    pub fn layer<S>(target: Arc<Target>) -> impl tower::Layer<S, Service = Fault<S>> + Clone {
        tower::layer::layer_fn(move |inner| Fault {
            inner,
            target: target.clone(),
        })
    }
}

impl<S> tower::Service<HttpRequest> for Fault<S>
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let target = self.target.clone();
        Box::pin(async move {
            let count = |kind| {
                target
                    .metrics
                    .faults
                    .get_or_create(&DestinationLabels {
                        destination: target.name.to_string(),
                        reason: kind,
                    })
                    .inc();
            };
            if let Some(fault) = &target.policy.fault {
                if let Some(delay) = fault.delay.as_ref().filter(|d| hit(d.percent)) {
                    count("delay");
                    tokio::time::sleep(delay.duration).await;
                }
                if let Some(abort) = fault.abort.as_ref().filter(|a| hit(a.percent)) {
                    count("abort");
                    return Err(boxed(RequestError::Fault(abort.status)));
                }
            }
            inner.call(req).await
        })
    }
}

/// True for `percent`% of calls.
pub(crate) fn hit(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}
