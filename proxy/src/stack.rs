//! The outbound middleware stack, in one listing, top (first to see a call) to bottom.
//!
//! Routing (header routes and the weighted split) is not a layer: [`crate::traffic::Target::route`]
//! decides it once per call in [`crate::outbound`], before the stack, so the access log, the
//! metrics and every retry of the call agree on where it went (the choice rides in the
//! request's extensions).

use std::sync::Arc;

use tower::ServiceBuilder;
use tower::retry::RetryLayer;
use tower::timeout::TimeoutLayer;

use crate::BoxError;
use crate::respond::RequestError;
use crate::traffic::breaker::Breaker;
use crate::traffic::fault::Fault;
use crate::traffic::mirror::Mirror;
use crate::traffic::retry::RetryPolicy;
use crate::traffic::{Balance, HttpService, Target};

/// Assembles the stack that calls `target`.
pub fn build_http_stack(target: &Arc<Target>) -> HttpService {
    let per_try = target.policy.per_try_timeout;
    let stack = ServiceBuilder::new()
        // Fault injection first: an injected abort or delay stands for the whole upstream
        // failing, so it must not be retried, spend retry budget or hold a breaker slot.
        .layer(Fault::layer(target.clone()))
        // Mirroring next: the shadow copy is the call as the app made it, sent once, never
        // retried, and it never delays the real call.
        .layer(Mirror::layer(target.clone()))
        // The request timeout bounds everything below: waiting for a breaker slot, every
        // attempt and every backoff; when it fires the caller gets 504.
        .layer(TimeoutLayer::new(target.policy.timeout))
        // The breaker sits above retries so that one call holds one slot however many times
        // it is tried: `max_requests` limits calls, and the budget below limits retries.
        .layer(Breaker::layer(target.clone()))
        // Retries: only the configured conditions, jittered backoff, paid from the service's
        // budget. Each retry goes back through the balancer and may pick another endpoint.
        .layer(RetryLayer::new(RetryPolicy::new(target.clone())))
        // Tells a per-try timeout apart from the request timeout, so retry can match
        // `per-try-timeout` and the answer says which one fired.
        .map_err(per_try_error)
        // The per-try timeout bounds one attempt, below retry so that each try gets its own.
        .option_layer(per_try.map(TimeoutLayer::new))
        // Innermost: pick a healthy endpoint (round robin or P2C least-request, skipping
        // ejected ones) and call it over pooled mTLS; its outcome feeds outlier detection.
        .service(Balance::new(target.clone()));
    HttpService::new(stack)
}

/// Marks a timeout that fired below retry as the per-try timeout.
fn per_try_error(err: BoxError) -> BoxError {
    if err.is::<tower::timeout::error::Elapsed>() {
        Box::new(RequestError::PerTryTimeout)
    } else {
        err
    }
}
