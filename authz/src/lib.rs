//! Ward's authorization engine: Cedar policies kept in git, decided per request.
//!
//! This crate owns everything about *whether* a call may happen:
//! - loading a policy repository (schema, `*.cedar`, entities, routes) and validating it
//!   strictly, with every problem located by file, line and column ([`Snapshot::load`]);
//! - normalizing request paths before anything looks at them ([`NormalizedPath`]);
//! - mapping a request (workload or end user, method, path, service) to a Cedar request
//!   ([`Request`], [`HttpRequest`], [`RequestSpec`]) and deciding it ([`PolicyEngine`],
//!   [`Decision`]), evaluating only the policies whose scope can apply;
//! - the policy author's toolchain: tests ([`policy_test`]), explanations ([`explain`]) and
//!   formatting ([`mod@format`]).
//!
//! Cedar's own types stay inside; callers see Ward's request model (namespace `Ward`, see
//! `docs/POLICY-GUIDE.md`).

#![warn(missing_docs)]

mod engine;
mod error;
pub mod explain;
pub mod format;
mod model;
pub mod path;
pub mod policy_test;
mod repo;
mod request;
mod route;
mod slice;

pub use engine::{Decision, EvalError, PolicyEngine, Snapshot};
pub use error::{Error, Location, Problem, Problems};
pub use path::{NormalizeOptions, NormalizedPath, PathError};
pub use repo::SCHEMA_FILE;
pub use request::{
    ContextSpec, EndUser, EntityRef, HttpRequest, Principal, Request, RequestContext, RequestSpec,
    Resource, UserClaims,
};
