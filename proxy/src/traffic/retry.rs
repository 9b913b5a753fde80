//! The retry policy for tower's `Retry`: only the configured conditions, at most `attempts`
//! tries, jittered exponential backoff, and every retry paid for from the service's
//! [`tower::retry::budget::TpsBudget`] so retries never add more than `budget_percent` of extra load.

use std::sync::Arc;

use tower::retry::backoff::{Backoff, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use tower::retry::budget::Budget;
use tower::util::rng::HasherRng;

use super::{HttpRequest, HttpResponse, Target, clone_request};
use crate::BoxError;
use crate::config::RetryOn;
use crate::metrics::DestinationLabels;
use crate::respond::RequestError;

/// The per-call retry state; tower clones it for each call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    target: Arc<Target>,
    attempts_left: u32,
    deposited: bool,
    backoff: ExponentialBackoff,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    /// The policy of `target`.
    pub fn new(target: Arc<Target>) -> Self {
        let r = &target.policy.retries;
        let max = r.max_backoff.max(std::time::Duration::from_millis(1));
        let min = r.backoff.min(max);
        // The only failure modes are min > max and max == 0, both excluded just above; the
        // fallback keeps the default backoff rather than panicking.
        let mut maker =
            ExponentialBackoffMaker::new(min, max, 1.0, HasherRng::new()).unwrap_or_default();
        Self {
            attempts_left: r.attempts,
            deposited: false,
            backoff: maker.make_backoff(),
            target,
        }
    }

    /// Which retry condition, if any, an attempt's result meets.
    pub fn condition(result: &Result<HttpResponse, BoxError>) -> Option<RetryOn> {
        match result {
            Ok(resp) if resp.status().is_server_error() => Some(RetryOn::Status5xx),
            Ok(_) => None,
            Err(err) => match err.downcast_ref::<RequestError>() {
                Some(RequestError::UpstreamConnect(_)) => Some(RetryOn::ConnectFailure),
                Some(RequestError::UpstreamReset(_)) => Some(RetryOn::Reset),
                Some(RequestError::PerTryTimeout) => Some(RetryOn::PerTryTimeout),
                _ => None,
            },
        }
    }
}

impl tower::retry::Policy<HttpRequest, HttpResponse, BoxError> for RetryPolicy {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut HttpRequest,
        result: &mut Result<HttpResponse, BoxError>,
    ) -> Option<Self::Future> {
        // Every call deposits once, after its first attempt: the budget is a share of calls.
        if !self.deposited {
            self.deposited = true;
            self.target.budget.deposit();
        }
        let condition = Self::condition(result)?;
        self.attempts_left = self.attempts_left.saturating_sub(1);
        if self.attempts_left == 0 || !self.target.policy.retries.retry_on.contains(&condition) {
            return None;
        }
        let labels = DestinationLabels {
            destination: self.target.name.to_string(),
            reason: retry_label(condition),
        };
        if !self.target.budget.withdraw() {
            self.target
                .metrics
                .retries_budget_exhausted
                .get_or_create(&labels)
                .inc();
            tracing::debug!(service = %self.target.name, "retry budget exhausted");
            return None;
        }
        self.target.metrics.retries.get_or_create(&labels).inc();
        Some(self.backoff.next_backoff())
    }

    fn clone_request(&mut self, req: &HttpRequest) -> Option<HttpRequest> {
        Some(clone_request(req))
    }
}

/// The metric label of a retry condition (the config spelling).
fn retry_label(condition: RetryOn) -> &'static str {
    match condition {
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::Status5xx => "5xx",
        RetryOn::Reset => "reset",
        RetryOn::PerTryTimeout => "per-try-timeout",
    }
}
