//! The policy engine: an immutable snapshot of a validated repository behind an atomic swap.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cedar_policy::{Entities, Policy, PolicyId, PolicySet, Schema};

use crate::error::{Error, Location, Problem};
use crate::model::Model;
use crate::path::NormalizedPath;
use crate::repo::{self, ContextShape};
use crate::request::{HttpRequest, Request, RequestSpec};
use crate::route::RouteTable;
use crate::slice::{self, Outcome, PolicyIndex};

mod memo;
mod prepare;
mod resolve;
mod scope;

pub(crate) use prepare::Prepared;

/// Decides requests against the current [`Snapshot`]; a reload swaps the snapshot atomically,
/// so a decision never blocks on a reload and never sees half a policy set.
#[derive(Debug)]
pub struct PolicyEngine {
    current: ArcSwap<Snapshot>,
}

/// One validated revision of a policy repository: schema, policies, entities and routes.
pub struct Snapshot {
    pub(crate) model: Model,
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    index: PolicyIndex,
    pub(crate) entities: Entities,
    pub(crate) routes: RouteTable,
    pub(crate) context: ContextShape,
    revision: Arc<str>,
    sources: HashMap<PolicyId, Location>,
    warnings: Vec<Problem>,
    /// How a request's small entity store is built; `None`: use the full store.
    pub(crate) scope: Option<scope::EntityScope>,
    /// Whether requests of a shape conform to the schema (see `Snapshot::request`).
    pub(crate) conforming: crate::cache::Cache<prepare::ShapeKey, Result<(), String>>,
    /// The context attributes policies read; `None` (not known) turns remembering decisions
    /// off and keeps every optional attribute in the context.
    context_reads: Option<memo::ContextReads>,
    /// Outcomes of earlier requests, by what they depend on (`engine/memo.rs`).
    decided: crate::cache::Cache<memo::MemoKey, Arc<Outcome>>,
}

/// The answer to a request. A deny is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allow: bool,
    /// The `@id`s of the policies that determined the decision, sorted: the satisfied
    /// `forbid`s of a deny, or the satisfied `permit`s of an allow. Empty for a default deny
    /// and for a deny caused by errors.
    pub reasons: Vec<String>,
    /// Errors met while evaluating. Any error denies (fail closed: an erroring `forbid` might
    /// have applied), unless a satisfied `forbid` already did.
    pub errors: Vec<EvalError>,
    /// The revision of the policy set that decided.
    pub revision: Arc<str>,
    /// Time taken to decide.
    pub elapsed: Duration,
    /// Whether the outcome was remembered from an earlier request that agreed on everything
    /// the policies can read, rather than evaluated (see `engine/memo.rs`).
    pub remembered: bool,
}

/// An error met while deciding.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EvalError {
    /// The policy that failed to evaluate, or `None` when the request itself could not be built
    /// (e.g. its context does not match the schema); such a request is denied.
    pub policy: Option<String>,
    /// What went wrong, one line.
    pub message: String,
}

// === impl PolicyEngine ===

impl PolicyEngine {
    /// An engine serving `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// Loads the repository at `dir` into a new engine.
    ///
    /// ```no_run
    /// use ward_authz::{PolicyEngine, Principal, Request, RequestContext, Resource};
    /// use ward_identity::SpiffeId;
    ///
    /// let engine = PolicyEngine::load("policies".as_ref())?;
    /// let decision = engine.authorize(&Request {
    ///     principal: Principal::Workload(SpiffeId::parse("spiffe://ward.local/ns/shop/sa/checkout-api")?),
    ///     action: "GET".into(),
    ///     resource: Resource::Service("orders-api".into()),
    ///     context: RequestContext { method: "GET".into(), path: "/orders/7712".into(), ..Default::default() },
    ///     entities: vec![],
    /// });
    /// println!("{} by {:?} at {}", decision.allow, decision.reasons, decision.revision);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Ok(Self::new(Snapshot::load(dir)?))
    }

    /// The snapshot decisions are made against right now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot; in-flight decisions finish on the old one.
    pub fn swap(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        self.current.swap(Arc::new(snapshot))
    }

    /// Loads `dir` and swaps it in; on error the current snapshot keeps serving.
    pub fn reload(&self, dir: &Path) -> Result<Arc<str>, Error> {
        let snapshot = Snapshot::load(dir)?;
        let revision = snapshot.revision.clone();
        self.swap(snapshot);
        Ok(revision)
    }

    /// Decides `request` with the current snapshot.
    pub fn authorize(&self, request: &Request) -> Decision {
        self.current.load().authorize(request)
    }

    /// Normalizes and maps an HTTP request, then decides it.
    ///
    /// A path that fails normalization is an error (answer 400), not a decision. On success the
    /// caller must forward the returned path, which is exactly what was authorized.
    pub fn authorize_http(&self, http: &HttpRequest) -> Result<(Decision, NormalizedPath), Error> {
        let snapshot = self.current.load();
        let (request, path) = snapshot.map_http(http)?;
        Ok((snapshot.authorize(&request), path))
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Loads and validates the repository at `dir`; any problem rejects the whole set.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let model = Model::new()?;
        let loaded = repo::load(dir, &model)?;
        let index = PolicyIndex::build(&loaded.policies, &loaded.schema)?;
        let context_reads = memo::ContextReads::of(loaded.policies.policies());
        let mut snapshot = Self {
            model,
            index,
            schema: loaded.schema,
            policies: loaded.policies,
            entities: loaded.entities,
            routes: loaded.routes,
            context: loaded.context,
            revision: loaded.revision.into(),
            sources: loaded.sources.into_iter().collect(),
            warnings: loaded.warnings,
            scope: None,
            conforming: crate::cache::Cache::new(),
            context_reads,
            decided: crate::cache::Cache::with_capacity(memo::CAPACITY),
        };
        snapshot.scope = scope::EntityScope::build(
            &snapshot.policies,
            &snapshot.entities,
            &snapshot.schema,
            snapshot.probe_entities(),
        );
        Ok(snapshot)
    }

    /// The revision: a git commit (`-dirty-…` when uncommitted changes exist) or a content hash.
    pub fn revision(&self) -> &Arc<str> {
        &self.revision
    }

    /// The request headers the schema lets policies read (lower case): a caller may pass only
    /// these in [`RequestContext::headers`], since no others reach a policy.
    pub fn declared_headers(&self) -> &[String] {
        self.context.all_headers()
    }

    /// Number of policies.
    pub fn policy_count(&self) -> usize {
        self.policies.num_of_policies()
    }

    /// Number of entities declared in `entities/` (action entities from the schema excluded).
    pub fn entity_count(&self) -> usize {
        self.entities
            .iter()
            .filter(|e| e.uid().type_name() != &self.model.action)
            .count()
    }

    /// Number of routes across all services.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Number of policies every request evaluates (the rest are sliced by scope).
    pub fn unsliced_policy_count(&self) -> usize {
        self.index.always_len()
    }

    /// Number of policies evaluated only when their guard passes (`slice/guard.rs`).
    #[cfg(test)]
    pub(crate) fn guarded_policy_count(&self) -> usize {
        self.index.guarded_len()
    }

    /// Validator warnings; they do not reject the set.
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// Where policy `id` is defined.
    pub fn policy_location(&self, id: &str) -> Option<&Location> {
        self.sources.get(&PolicyId::new(id))
    }

    /// Decides `request`, evaluating only the policies whose scope can match, or answers with
    /// the outcome of an earlier request that agreed on everything the policies can read.
    pub fn authorize(&self, request: &Request) -> Decision {
        let start = Instant::now();
        let key = self.memo_key(request);
        if let Some(outcome) = key.as_ref().and_then(|k| self.decided.get(k)) {
            return Decision {
                remembered: true,
                ..self.decision(Outcome::clone(&outcome), start)
            };
        }
        let outcome = self.evaluate(request);
        if let Some(key) = key {
            self.decided.insert(key, Arc::new(outcome.clone()));
        }
        self.decision(outcome, start)
    }

    /// Decides `request` with Cedar, never from remembered decisions; for tests and benchmarks.
    pub fn authorize_evaluated(&self, request: &Request) -> Decision {
        let start = Instant::now();
        self.decision(self.evaluate(request), start)
    }

    fn evaluate(&self, request: &Request) -> Outcome {
        match self.prepare(request) {
            Ok(p) => self.index.evaluate(
                &p.principal,
                &p.action,
                &p.resource,
                &request.context,
                &p.request,
                &p.entities,
            ),
            Err(message) => Outcome::rejected(message),
        }
    }

    /// Decides `request` against every policy (no slicing); for tests and benchmarks.
    pub fn authorize_unsliced(&self, request: &Request) -> Decision {
        let start = Instant::now();
        let outcome = match self.prepare(request) {
            Ok(p) => slice::evaluate(std::iter::once(&self.policies), &p.request, &p.entities),
            Err(message) => Outcome::rejected(message),
        };
        self.decision(outcome, start)
    }

    /// Turns a written request into a typed one (routes decide the action when it is absent).
    pub fn resolve(&self, spec: &RequestSpec) -> Result<Request, Error> {
        resolve::spec(self, spec)
    }

    /// Normalizes the path of `http` and maps it to a request.
    pub fn map_http(&self, http: &HttpRequest) -> Result<(Request, NormalizedPath), Error> {
        resolve::http(self, http)
    }

    /// The policies, in a stable order (by id).
    pub(crate) fn policies_sorted(&self) -> Vec<&Policy> {
        let mut all: Vec<&Policy> = self.policies.policies().collect();
        all.sort_by_key(|p| p.id().to_string());
        all
    }

    fn decision(&self, outcome: Outcome, start: Instant) -> Decision {
        Decision {
            allow: outcome.allow,
            reasons: outcome.reasons,
            errors: outcome.errors,
            revision: self.revision.clone(),
            elapsed: start.elapsed(),
            remembered: false,
        }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("revision", &self.revision)
            .field("policies", &self.policy_count())
            .field("entities", &self.entity_count())
            .field("routes", &self.route_count())
            .finish_non_exhaustive()
    }
}

// === impl Decision ===

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.allow { "allow" } else { "deny" })?;
        if !self.reasons.is_empty() {
            write!(f, " by {}", self.reasons.join(", "))?;
        }
        if !self.errors.is_empty() {
            write!(f, " ({} errors)", self.errors.len())?;
        }
        Ok(())
    }
}

// === impl EvalError ===

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Some(p) => write!(f, "policy `{p}`: {}", self.message),
            None => write!(f, "request: {}", self.message),
        }
    }
}

// === impl Outcome ===

impl Outcome {
    /// A request that could not be built: deny, with the reason as an error.
    fn rejected(message: String) -> Self {
        Self {
            allow: false,
            reasons: Vec::new(),
            errors: vec![EvalError {
                policy: None,
                message,
            }],
        }
    }
}

#[cfg(test)]
mod tests;
