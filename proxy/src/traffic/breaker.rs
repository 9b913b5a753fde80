//! Circuit breaking on calls: at most `max_requests` in flight per service, at most
//! `max_pending` waiting for a slot, and everything past that fails fast with 503.
//!
//! tower's `ConcurrencyLimit` queues without bound and `LoadShed` queues nothing; Envoy's
//! breaker (and ours) sits in between, so this is a small custom layer. `max_connections` is
//! enforced where connections are opened ([`crate::upstream::MtlsConnector`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use super::{BoxFuture, Defer, HttpRequest, HttpResponse, Target, boxed};
use crate::BoxError;
use crate::metrics::DestinationLabels;
use crate::respond::RequestError;

/// Admits a call when a `max_requests` slot is free, queues up to `max_pending`, refuses the rest.
#[derive(Debug, Clone)]
pub struct Breaker<S> {
    inner: S,
    target: Arc<Target>,
    pending: Arc<AtomicUsize>,
}

// === impl Breaker ===

impl Breaker<()> {
    /// The layer that wraps a service in a breaker for `target`; its services share one
    /// pending-call counter.
    pub fn layer<S>(target: Arc<Target>) -> impl tower::Layer<S, Service = Breaker<S>> + Clone {
        let pending = Arc::new(AtomicUsize::new(0));
        tower::layer::layer_fn(move |inner| Breaker {
            inner,
            target: target.clone(),
            pending: pending.clone(),
        })
    }
}

impl<S> tower::Service<HttpRequest> for Breaker<S>
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
        let pending = self.pending.clone();
        Box::pin(async move {
            let labels = |reason| DestinationLabels {
                destination: target.name.to_string(),
                reason,
            };
            let open = |limit: &'static str| {
                target
                    .metrics
                    .circuit_open
                    .get_or_create(&labels(limit))
                    .inc();
                boxed(RequestError::CircuitOpen {
                    service: target.name.to_string(),
                    limit,
                })
            };
            let permit =
                match target.requests.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        let max_pending = target.policy.circuit_breaker.max_pending;
                        let queued = pending.fetch_add(1, Ordering::AcqRel);
                        // Undone however this ends: admitted, refused, or cancelled by the timeout.
                        let _queued = Defer::new(|| {
                            pending.fetch_sub(1, Ordering::AcqRel);
                        });
                        if queued >= max_pending {
                            return Err(open(if max_pending == 0 {
                                "max_requests"
                            } else {
                                "max_pending"
                            }));
                        }
                        target.requests.clone().acquire_owned().await.map_err(|_| {
                            boxed(RequestError::Bug("breaker semaphore closed".into()))
                        })?
                    }
                };
            let gauge = target.metrics.in_flight.get_or_create_owned(&labels(""));
            gauge.inc();
            let _in_flight = Defer::new(move || {
                gauge.dec();
                drop(permit);
            });
            inner.call(req).await
        })
    }
}
