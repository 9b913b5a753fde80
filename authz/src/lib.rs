//! Ward's authorization engine: Cedar policies kept in git, decided per request.
//!
//! This crate owns everything about *whether* a call may happen:
//! - loading a policy repository (schema, `*.cedar`, entities, routes) and validating it
//!   strictly, with every problem located by file, line and column ([`Snapshot::load`]);
//! - normalizing request paths before anything looks at them ([`NormalizedPath`]);
//! - mapping a request (workload or end user, method, path, service) to a Cedar request
//!   ([`Request`], [`HttpRequest`], [`RequestSpec`]) and deciding it ([`PolicyEngine`],
//!   [`Decision`]), evaluating only the policies whose scope can apply;
//! - applying decisions per service mode (`enforce` or `dry-run`) and evaluating a candidate
//!   revision in shadow, with an audit record for every decision ([`Authorizer`], [`Modes`]);
//! - serving decisions: Envoy's ext_authz gRPC API ([`ext_authz`]), a JSON check API
//!   ([`check_api`]), hot reload of the policy directories ([`reload`]) and the service that
//!   ties them together ([`server`]);
//! - counting decisions, reloads and shadow disagreements ([`Metrics`]);
//! - the policy author's toolchain: tests ([`policy_test`]), explanations ([`explain`]) and
//!   formatting ([`mod@format`]).
//!
//! Cedar's own types stay inside; callers see Ward's request model (namespace `Ward`, see
//! `docs/POLICY-GUIDE.md`).

#![warn(missing_docs)]

mod authorizer;
mod cache;
pub mod check_api;
mod engine;
mod error;
pub mod explain;
pub mod ext_authz;
pub mod format;
pub mod metrics;
mod model;
mod modes;
pub mod path;
pub mod policy_test;
pub mod reload;
mod repo;
mod request;
mod route;
pub mod server;
mod slice;
#[cfg(test)]
mod test_util;

/// A map looked up on every decision: foldhash, seeded at random per process, hashes the
/// entity ids that key these maps several times faster than std's SipHash.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub use authorizer::{Authorizer, Enforcement};
pub use engine::{Decision, EvalError, PolicyEngine, Snapshot};
pub use error::{Error, Location, Problem, Problems};
pub use metrics::Metrics;
pub use modes::{Mode, Modes};
pub use path::{NormalizeOptions, NormalizedPath, PathError};
pub use repo::SCHEMA_FILE;
pub use request::{
    ContextSpec, EndUser, EntityRef, HttpRequest, Principal, Request, RequestContext, RequestSpec,
    Resource, UserClaims,
};
