//! Explaining a decision: which policies decided it and, for a deny, which permits came closest.
//!
//! A policy "came close" when its scope (principal, action, resource) matches the request but
//! its condition was false or failed to evaluate. Each such policy is evaluated on its own, so
//! the verdicts are exact, not guesses.

use std::fmt;

use cedar_policy::{
    ActionConstraint, Authorizer, Effect as CedarEffect, Entities, EntityUid, Policy, PolicySet,
    PrincipalConstraint, ResourceConstraint,
};

use crate::engine::{Decision, Prepared};
use crate::error::{Error, Location};
use crate::request::Request;
use crate::{EvalError, Snapshot};

/// A decision with the verdict of every policy whose scope matched the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision, exactly as [`Snapshot::authorize`] makes it.
    pub decision: Decision,
    /// The action the request was decided as (after route matching).
    pub action: String,
    /// Policies whose scope matched, sorted by id.
    pub policies: Vec<PolicyVerdict>,
}

/// What one policy whose scope matched did with the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVerdict {
    /// The policy's `@id`.
    pub id: String,
    /// `permit` or `forbid`.
    pub effect: Effect,
    /// What happened.
    pub verdict: Verdict,
    /// Where the policy is defined.
    pub location: Option<Location>,
}

/// A policy's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// `permit`.
    Permit,
    /// `forbid`.
    Forbid,
}

/// What a policy whose scope matched did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its condition held; it is among the policies that determined the decision, or it is a
    /// satisfied `permit` overridden by a `forbid` or an error.
    Satisfied,
    /// Its condition was false.
    ConditionFalse,
    /// Its condition failed to evaluate.
    Errored(String),
}

// === impl Explanation ===

/// Decides `request` and explains the decision.
pub fn explain(snapshot: &Snapshot, request: &Request) -> Result<Explanation, Error> {
    let decision = snapshot.authorize(request);
    // A request that cannot be built was denied with an error; no policy's scope was checked.
    let Ok(prepared) = snapshot.prepare(request) else {
        return Ok(Explanation {
            decision,
            action: request.action.clone(),
            policies: Vec::new(),
        });
    };
    let mut policies = Vec::new();
    for policy in snapshot.policies_sorted() {
        if !scope_matches(policy, &prepared) {
            continue;
        }
        let id = policy.id().to_string();
        policies.push(PolicyVerdict {
            verdict: evaluate_alone(policy, &prepared)?,
            effect: match policy.effect() {
                CedarEffect::Permit => Effect::Permit,
                CedarEffect::Forbid => Effect::Forbid,
            },
            location: snapshot.policy_location(&id).cloned(),
            id,
        });
    }
    Ok(Explanation {
        decision,
        action: request.action.clone(),
        policies,
    })
}

impl Explanation {
    /// For a deny: the permits whose scope matched but that did not allow (condition false or
    /// errored). Empty for an allow.
    pub fn closest_permits(&self) -> impl Iterator<Item = &PolicyVerdict> {
        let deny = !self.decision.allow;
        self.policies
            .iter()
            .filter(move |p| deny && p.effect == Effect::Permit)
    }
}

// === impl Effect ===

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Permit => "permit",
            Self::Forbid => "forbid",
        })
    }
}

// === impl Verdict ===

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Satisfied => f.write_str("scope matched, condition true"),
            Self::ConditionFalse => f.write_str("scope matched, condition false"),
            Self::Errored(e) => write!(f, "scope matched, condition errored: {e}"),
        }
    }
}

/// Whether `policy`'s scope admits the request's principal, action and resource.
fn scope_matches(policy: &Policy, p: &Prepared<'_>) -> bool {
    let e: &Entities = &p.entities;
    let is_in =
        |child: &EntityUid, parent: &EntityUid| child == parent || e.is_ancestor_of(parent, child);
    let principal = match policy.principal_constraint() {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Eq(u) => p.principal == u,
        PrincipalConstraint::In(u) => is_in(&p.principal, &u),
        PrincipalConstraint::Is(t) => p.principal.type_name() == &t,
        PrincipalConstraint::IsIn(t, u) => p.principal.type_name() == &t && is_in(&p.principal, &u),
    };
    let action = match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(u) => p.action == u,
        ActionConstraint::In(us) => us.iter().any(|u| is_in(&p.action, u)),
    };
    let resource = match policy.resource_constraint() {
        ResourceConstraint::Any => true,
        ResourceConstraint::Eq(u) => p.resource == u,
        ResourceConstraint::In(u) => is_in(&p.resource, &u),
        ResourceConstraint::Is(t) => p.resource.type_name() == &t,
        ResourceConstraint::IsIn(t, u) => p.resource.type_name() == &t && is_in(&p.resource, &u),
    };
    principal && action && resource
}

/// Evaluates `policy` as the only policy of a set.
fn evaluate_alone(policy: &Policy, p: &Prepared<'_>) -> Result<Verdict, Error> {
    let set = PolicySet::from_policies([policy.clone()])
        .map_err(|e| Error::bug(format!("one-policy set: {e}")))?;
    let response = Authorizer::new().is_authorized(&p.request, &set, &p.entities);
    if let Some(err) = response.diagnostics().errors().next() {
        let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = err;
        return Ok(Verdict::Errored(e.inner().to_string()));
    }
    let satisfied = response.diagnostics().reason().next().is_some();
    // A lone policy whose condition holds is the reason of its own decision, whatever its effect.
    Ok(if satisfied {
        Verdict::Satisfied
    } else {
        Verdict::ConditionFalse
    })
}

/// The errors of a decision, for display.
pub fn errors_line(errors: &[EvalError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
