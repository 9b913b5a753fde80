//! The authorizer: the enforced policy engine plus per-service modes and an optional candidate
//! revision evaluated in shadow. Every decision comes back with the audit record that
//! describes it.
//!
//! - In `enforce` mode the enforced revision's decision applies.
//! - In `dry-run` mode it is made, counted and recorded, but the request is allowed; the record
//!   keeps the policy's deny as `original_decision`.
//! - With a candidate loaded, the candidate decides every request too. Only the enforced
//!   revision decides; the candidate's decision goes into the record (`candidate`) and every
//!   disagreement is counted (`ward_authz_shadow_disagreements_total`) and logged.
//!
//! The record's `mode` is `dry-run` for a dry-run service, else `shadow` when a candidate was
//! evaluated, else `enforce`; in `shadow` the enforced revision's decision applied.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use ward_audit::{AuditRecord, Candidate};

use crate::engine::{Decision, EvalError, PolicyEngine, Snapshot};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::modes::{Mode, Modes};
use crate::path::NormalizedPath;
use crate::request::{EndUser, HttpRequest, Request, RequestSpec};

/// Decides requests with the enforced engine, applying modes and shadow evaluation.
#[derive(Debug)]
pub struct Authorizer {
    engine: Arc<PolicyEngine>,
    candidate: ArcSwapOption<Snapshot>,
    modes: ArcSwap<Modes>,
    metrics: Arc<Metrics>,
    node: String,
}

/// The outcome of one request: whether it may proceed, and why.
#[derive(Debug, Clone)]
pub struct Enforcement {
    /// Whether the request may proceed (always `true` in dry-run mode).
    pub allow: bool,
    /// The enforced revision's decision.
    pub decision: Decision,
    /// How the decision was applied.
    pub mode: Mode,
    /// The candidate revision's decision, when one is loaded.
    pub candidate: Option<Decision>,
    /// The audit record of this decision, ready to hand to a `ward_audit::Auditor`.
    pub record: AuditRecord,
}

// === impl Authorizer ===

impl Authorizer {
    /// An authorizer over `engine` with `modes`, naming itself `node` in audit records.
    pub fn new(engine: Arc<PolicyEngine>, modes: Modes, node: &str) -> Self {
        Self {
            engine,
            candidate: ArcSwapOption::empty(),
            modes: ArcSwap::from_pointee(modes),
            metrics: Arc::new(Metrics::default()),
            node: node.to_owned(),
        }
    }

    /// Counts into `metrics` instead of a private set.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The enforced engine (reload it to change the enforced revision).
    pub fn engine(&self) -> &Arc<PolicyEngine> {
        &self.engine
    }

    /// The counters this authorizer updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The node name written into audit records.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Loads (`Some`) or removes (`None`) the candidate revision; returns the previous one.
    pub fn set_candidate(&self, candidate: Option<Snapshot>) -> Option<Arc<Snapshot>> {
        self.candidate.swap(candidate.map(Arc::new))
    }

    /// The candidate revision, if one is loaded.
    pub fn candidate(&self) -> Option<Arc<Snapshot>> {
        self.candidate.load_full()
    }

    /// Replaces the modes; decisions that start later use the new ones.
    pub fn set_modes(&self, modes: Modes) {
        self.modes.store(Arc::new(modes));
    }

    /// The current modes.
    pub fn modes(&self) -> Arc<Modes> {
        self.modes.load_full()
    }

    /// Decides a typed request.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use ward_authz::{Authorizer, Mode, Modes, PolicyEngine, Principal, Request, RequestContext, Resource};
    /// use ward_identity::SpiffeId;
    ///
    /// let engine = Arc::new(PolicyEngine::load("policies".as_ref())?);
    /// let authz = Authorizer::new(engine, Modes::all(Mode::Enforce).with("orders-api", Mode::DryRun), "node-1");
    /// let checked = authz.check(&Request {
    ///     principal: Principal::Workload(SpiffeId::parse("spiffe://ward.local/ns/shop/sa/checkout-api")?),
    ///     action: "GET".into(),
    ///     resource: Resource::Service("orders-api".into()),
    ///     context: RequestContext { method: "GET".into(), path: "/orders/7712".into(), ..Default::default() },
    ///     entities: vec![],
    /// });
    /// // Dry-run: allowed whatever policy said; the record keeps what it said.
    /// assert!(checked.allow);
    /// println!("{}", serde_json::to_string(&checked.record)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check(&self, request: &Request) -> Enforcement {
        let decision = self.engine.authorize(request);
        let candidate = self.candidate.load_full().map(|c| c.authorize(request));
        self.enforce(request, decision, candidate)
    }

    /// Normalizes and maps an HTTP request, then decides it. A path that fails normalization
    /// is an error (answer 400), not a decision. The returned path is what was authorized and
    /// what the caller must forward.
    pub fn check_http(&self, http: &HttpRequest) -> Result<(Enforcement, NormalizedPath), Error> {
        let snapshot = self.engine.snapshot();
        let (request, path) = snapshot.map_http(http)?;
        let decision = snapshot.authorize(&request);
        // The candidate maps the request itself: its routes may name a different action.
        let candidate = self.candidate.load_full().map(|c| match c.map_http(http) {
            Ok((req, _)) => c.authorize(&req),
            Err(e) => unmappable(&c, &e),
        });
        Ok((self.enforce(&request, decision, candidate), path))
    }

    /// Resolves a written request (as the JSON check API receives it), then decides it.
    pub fn check_spec(&self, spec: &RequestSpec) -> Result<Enforcement, Error> {
        let snapshot = self.engine.snapshot();
        let request = snapshot.resolve(spec)?;
        let decision = snapshot.authorize(&request);
        let candidate = self.candidate.load_full().map(|c| match c.resolve(spec) {
            Ok(req) => c.authorize(&req),
            Err(e) => unmappable(&c, &e),
        });
        Ok(self.enforce(&request, decision, candidate))
    }

    /// Applies the service's mode, counts, and builds the audit record.
    fn enforce(
        &self,
        request: &Request,
        decision: Decision,
        candidate: Option<Decision>,
    ) -> Enforcement {
        let mode = self.modes.load().of(request.resource.service());
        self.metrics
            .decision(decision.allow, mode, decision.elapsed, decision.remembered);
        if let Some(c) = &candidate {
            self.metrics.shadow(decision.allow, c.allow);
            if c.allow != decision.allow {
                tracing::info!(
                    principal = %request.principal,
                    action = %request.action,
                    resource = %request.resource,
                    enforced = %decision,
                    enforced_revision = %decision.revision,
                    candidate = %c,
                    candidate_revision = %c.revision,
                    "shadow disagreement"
                );
            }
        }
        let allow = match mode {
            Mode::Enforce => decision.allow,
            Mode::DryRun => true,
        };
        let record = self.record(request, &decision, mode, allow, candidate.as_ref());
        Enforcement {
            allow,
            decision,
            mode,
            candidate,
            record,
        }
    }

    fn record(
        &self,
        request: &Request,
        decision: &Decision,
        mode: Mode,
        allow: bool,
        candidate: Option<&Decision>,
    ) -> AuditRecord {
        let c = &request.context;
        let mut r = AuditRecord::new(&self.node, &c.request_id);
        r.principal = request.principal.to_string();
        r.end_user = c.user.as_ref().map(|u| match u {
            EndUser::Claims(claims) => claims.entity_id(),
            EndUser::Id(id) => id.clone(),
        });
        r.action = request.action.clone();
        r.resource = request.resource.to_string();
        r.method = (!c.method.is_empty()).then(|| c.method.clone());
        r.path = (!c.path.is_empty()).then(|| c.path.clone());
        r.decision = audit_decision(allow);
        r.policies = decision.reasons.clone();
        r.errors = decision.errors.iter().map(ToString::to_string).collect();
        r.policy_revision = decision.revision.to_string();
        r.mode = match (mode, candidate.is_some()) {
            (Mode::DryRun, _) => ward_audit::Mode::DryRun,
            (Mode::Enforce, true) => ward_audit::Mode::Shadow,
            (Mode::Enforce, false) => ward_audit::Mode::Enforce,
        };
        r.original_decision = (allow != decision.allow).then(|| audit_decision(decision.allow));
        r.candidate = candidate.map(|c| Candidate {
            revision: c.revision.to_string(),
            decision: audit_decision(c.allow),
            policies: c.reasons.clone(),
        });
        r.latency_us = u64::try_from(decision.elapsed.as_micros()).unwrap_or(u64::MAX);
        r
    }
}

// === impl Enforcement ===

impl Enforcement {
    /// Whether a candidate was evaluated and decided differently from the enforced revision.
    pub fn disagrees(&self) -> bool {
        self.candidate
            .as_ref()
            .is_some_and(|c| c.allow != self.decision.allow)
    }
}

fn audit_decision(allow: bool) -> ward_audit::Decision {
    if allow {
        ward_audit::Decision::Allow
    } else {
        ward_audit::Decision::Deny
    }
}

/// The candidate's answer to a request it could not map: deny, with the reason as an error.
fn unmappable(candidate: &Snapshot, err: &Error) -> Decision {
    Decision {
        allow: false,
        reasons: Vec::new(),
        errors: vec![EvalError {
            policy: None,
            message: err.to_string(),
        }],
        revision: candidate.revision().clone(),
        elapsed: Duration::ZERO,
        remembered: false,
    }
}

#[cfg(test)]
mod tests;
