//! Slicing: an index of the policy set by the literal entities in each policy's scope, so a
//! request evaluates only the policies that can apply to it.
//!
//! Each policy goes into exactly one bucket, chosen in this order:
//!
//! 1. `principal == P` and `resource == R` → the bucket of the pair `(P, R)` (the usual
//!    "this workload may call that service" permit);
//! 2. else `principal == E` → the bucket of principal `E`;
//! 3. else `resource == E` → the bucket of resource `E`;
//! 4. else `action == A` or `action in [A, …]` → the bucket of every action the scope admits
//!    (the action hierarchy is fixed by the schema, so `in` is expanded exactly);
//! 5. else (no scope, or only `in` / `is` on principal and resource) → always evaluated.
//!
//! A request evaluates its pair's, principal's, resource's and action's buckets plus the
//! always bucket.
//! A policy left out has an `==` (or an action set) in its scope that the request does not
//! satisfy; Cedar evaluates the scope before the condition and stops at the first false
//! conjunct, so such a policy could neither be satisfied nor raise an error. The decision and
//! the determining policies are therefore those of the whole set; `slice/tests.rs` checks that
//! on thousands of generated requests.
//!
//! Within a bucket, policies whose condition starts with a cheap test on the context (a
//! [`Guard`], e.g. `context.path like "/admin/*"`) are grouped by that test and evaluated only
//! when it passes; see `slice/guard.rs` for why that cannot change a decision.
//!
//! The groups a request evaluates are merged into one Cedar policy set, built once per
//! combination of groups and kept, so a decision is one call into Cedar. The result is read
//! with Cedar's rules plus one of Ward's: any satisfied `forbid` denies (and the satisfied
//! forbids are the reasons); otherwise any evaluation error denies (with no reasons; fail
//! closed); otherwise any satisfied `permit` allows (the satisfied permits are the reasons);
//! otherwise deny with no reasons.

use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Authorizer, Decision as CedarDecision, Entities, EntityUid, Policy,
    PolicySet, PrincipalConstraint, Request, ResourceConstraint, Schema,
};

use crate::FastMap;
use crate::cache::Cache;
use crate::engine::EvalError;
use crate::error::Error;
use crate::request::RequestContext;

mod guard;

use guard::Guard;

/// The policy set, bucketed by scope.
#[derive(Debug, Default)]
pub(crate) struct PolicyIndex {
    by_pair: FastMap<(EntityUid, EntityUid), Sets>,
    by_principal: FastMap<EntityUid, Sets>,
    by_resource: FastMap<EntityUid, Sets>,
    by_action: FastMap<EntityUid, Sets>,
    always: Sets,
    /// The union of each combination of sets requests have evaluated, keyed by the sets'
    /// addresses (they live as long as the index and never move).
    merged: Cache<Vec<usize>, Arc<PolicySet>>,
}

/// One bucket's policies: those evaluated whenever the bucket applies, and those grouped by
/// the guard that must pass first.
#[derive(Debug, Default)]
struct Sets {
    plain: PolicySet,
    guarded: FastMap<Guard, PolicySet>,
}

/// The combined result of evaluating one or more policy sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) allow: bool,
    /// Determining policy ids, sorted.
    pub(crate) reasons: Vec<String>,
    /// Evaluation errors, sorted by policy id.
    pub(crate) errors: Vec<EvalError>,
}

enum Bucket {
    Pair(EntityUid, EntityUid),
    Principal(EntityUid),
    Resource(EntityUid),
    Actions(Vec<EntityUid>),
    Always,
}

// === impl PolicyIndex ===

impl PolicyIndex {
    /// Buckets every policy of `policies`.
    pub(crate) fn build(policies: &PolicySet, schema: &Schema) -> Result<Self, Error> {
        let actions = schema
            .action_entities()
            .map_err(|e| Error::bug(format!("schema action entities: {e}")))?;
        let mut index = Self::default();
        for policy in policies.policies() {
            let guard = policy.to_json().ok().and_then(|est| Guard::of_policy(&est));
            let add = |sets: &mut Sets| sets.add(policy, guard.clone());
            match bucket(policy, &actions) {
                Bucket::Pair(p, r) => add(index.by_pair.entry((p, r)).or_default())?,
                Bucket::Principal(uid) => add(index.by_principal.entry(uid).or_default())?,
                Bucket::Resource(uid) => add(index.by_resource.entry(uid).or_default())?,
                Bucket::Actions(uids) => {
                    for uid in uids {
                        add(index.by_action.entry(uid).or_default())?;
                    }
                }
                Bucket::Always => add(&mut index.always)?,
            }
        }
        Ok(index)
    }

    /// Evaluates `request` against every policy that can apply to it, in one Cedar call.
    pub(crate) fn evaluate(
        &self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: &RequestContext,
        request: &Request,
        entities: &Entities,
    ) -> Outcome {
        let sets: Vec<&PolicySet> = self
            .candidates(principal, action, resource, context)
            .collect();
        if let [_, _, ..] = sets.as_slice() {
            let key = sets
                .iter()
                .map(|s| std::ptr::from_ref(*s) as usize)
                .collect();
            let merged = self.merged.get(&key).or_else(|| {
                let merged = Arc::new(merge(&sets)?);
                self.merged.insert(key, merged.clone());
                Some(merged)
            });
            if let Some(merged) = merged {
                return evaluate(std::iter::once(&*merged), request, entities);
            }
        }
        evaluate(sets.into_iter(), request, entities)
    }

    /// The non-empty policy sets a request for `(principal, action, resource)` with `context`
    /// must evaluate.
    pub(crate) fn candidates<'a>(
        &'a self,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
        context: &'a RequestContext,
    ) -> impl Iterator<Item = &'a PolicySet> {
        // Most requests find no pair bucket; skip building the key's clones then.
        let pair = (!self.by_pair.is_empty())
            .then(|| self.by_pair.get(&(principal.clone(), resource.clone())))
            .flatten();
        [
            pair,
            self.by_principal.get(principal),
            self.by_resource.get(resource),
            self.by_action.get(action),
            Some(&self.always),
        ]
        .into_iter()
        .flatten()
        .flat_map(move |sets| sets.admitted(context))
    }

    /// How many policies are evaluated whatever the scope of the request (guarded or not).
    pub(crate) fn always_len(&self) -> usize {
        self.always.plain.num_of_policies()
            + self
                .always
                .guarded
                .values()
                .map(PolicySet::num_of_policies)
                .sum::<usize>()
    }

    /// How many policies, in all buckets, are evaluated only when their guard passes.
    #[cfg(test)]
    pub(crate) fn guarded_len(&self) -> usize {
        [&self.always]
            .into_iter()
            .chain(self.by_pair.values())
            .chain(self.by_principal.values())
            .chain(self.by_resource.values())
            .chain(self.by_action.values())
            .flat_map(|sets| sets.guarded.values())
            .map(PolicySet::num_of_policies)
            .sum()
    }
}

// === impl Sets ===

impl Sets {
    fn add(&mut self, policy: &Policy, guard: Option<Guard>) -> Result<(), Error> {
        let set = match guard {
            Some(g) => self.guarded.entry(g).or_default(),
            None => &mut self.plain,
        };
        set.add(policy.clone())
            .map_err(|e| Error::bug(format!("indexing policy `{}`: {e}", policy.id())))
    }

    /// The non-empty sets to evaluate for a request with `context`.
    fn admitted<'a>(&'a self, context: &'a RequestContext) -> impl Iterator<Item = &'a PolicySet> {
        std::iter::once(&self.plain)
            .chain(
                self.guarded
                    .iter()
                    .filter(|(guard, _)| guard.admits(context))
                    .map(|(_, set)| set),
            )
            .filter(|set| !set.is_empty())
    }
}

fn bucket(policy: &Policy, actions: &Entities) -> Bucket {
    match (policy.principal_constraint(), policy.resource_constraint()) {
        (PrincipalConstraint::Eq(p), ResourceConstraint::Eq(r)) => return Bucket::Pair(p, r),
        (PrincipalConstraint::Eq(p), _) => return Bucket::Principal(p),
        (_, ResourceConstraint::Eq(r)) => return Bucket::Resource(r),
        _ => {}
    }
    match policy.action_constraint() {
        ActionConstraint::Eq(uid) => Bucket::Actions(vec![uid]),
        ActionConstraint::In(groups) => {
            // Every schema action that is one of `groups` or a descendant of one.
            let admitted = actions
                .iter()
                .map(cedar_policy::Entity::uid)
                .filter(|a| {
                    groups
                        .iter()
                        .any(|g| g == a || actions.is_ancestor_of(g, a))
                })
                .collect();
            Bucket::Actions(admitted)
        }
        ActionConstraint::Any => Bucket::Always,
    }
}

/// One set holding every policy of `sets`; `None` if two of them share a policy id, which
/// slicing never produces (each policy is in one bucket, and a request has one action).
fn merge(sets: &[&PolicySet]) -> Option<PolicySet> {
    let mut merged = PolicySet::new();
    for policy in sets.iter().flat_map(|s| s.policies()) {
        merged.add(policy.clone()).ok()?;
    }
    Some(merged)
}

/// Evaluates `request` against each set and combines the results with Cedar's rules.
pub(crate) fn evaluate<'a>(
    sets: impl Iterator<Item = &'a PolicySet>,
    request: &Request,
    entities: &Entities,
) -> Outcome {
    let authorizer = Authorizer::new();
    let mut forbids = Vec::new();
    let mut permits = Vec::new();
    let mut errors = Vec::new();
    for set in sets {
        let response = authorizer.is_authorized(request, set, entities);
        let reasons = response.diagnostics().reason().map(ToString::to_string);
        match response.decision() {
            CedarDecision::Deny => forbids.extend(reasons),
            CedarDecision::Allow => permits.extend(reasons),
        }
        errors.extend(response.diagnostics().errors().map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            EvalError {
                policy: Some(e.policy_id().to_string()),
                message: e.inner().to_string(),
            }
        }));
    }
    errors.sort();
    // Fail closed: Cedar skips a policy that errors, but an erroring `forbid` might have
    // applied, so any error denies. Such a deny names no policies; `errors` says why.
    let (allow, mut reasons) = if !forbids.is_empty() {
        (false, forbids)
    } else if !errors.is_empty() {
        (false, Vec::new())
    } else if !permits.is_empty() {
        (true, permits)
    } else {
        (false, Vec::new())
    };
    reasons.sort();
    Outcome {
        allow,
        reasons,
        errors,
    }
}

#[cfg(test)]
mod tests;
