//! Policy tests: `tests/*.yaml` cases, each a request and the decision it must get.
//!
//! ```yaml
//! cases:
//!   - name: checkout-api may refund an order
//!     principal: spiffe://ward.local/ns/shop/sa/checkout-api
//!     resource: orders-api
//!     context: { method: POST, path: /orders/7712/refund }   # action found via routes
//!     expect: allow
//!     policies: [orders-refund-from-checkout]               # optional
//! ```
//!
//! A case has the fields of a [`RequestSpec`] (`principal`, `action`, `resource`, `context`,
//! `entities`) plus `name`, `expect` (`allow` or `deny`) and optionally `policies`, the exact
//! set of determining policy ids.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Location, Problem, Problems};
use crate::explain::errors_line;
use crate::repo::{Files, SourceFile, find_from, parse_yaml};
use crate::request::{ContextSpec, RequestSpec};
use crate::{Decision, Snapshot};

/// One test case, located in its file.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    /// The case's name.
    pub name: String,
    /// Where the case is written.
    pub location: Location,
    /// The request.
    pub request: RequestSpec,
    /// The decision it must get: `true` for allow.
    pub expect_allow: bool,
    /// The exact determining policies, when the case says.
    pub expect_policies: Option<Vec<String>>,
}

/// The result of running one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    /// The case.
    pub case: TestCase,
    /// The decision, when the request could be built.
    pub decision: Option<Decision>,
    /// Why the case failed; `None` when it passed.
    pub failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<CaseSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseSpec {
    name: String,
    principal: String,
    #[serde(default)]
    action: Option<String>,
    resource: String,
    #[serde(default)]
    context: ContextSpec,
    #[serde(default)]
    entities: Vec<serde_json::Value>,
    expect: Expect,
    #[serde(default)]
    policies: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// Reads every `tests/*.yaml` of the repository at `dir`.
pub fn load(dir: &Path) -> Result<Vec<TestCase>, Error> {
    let files = Files::read(dir)?;
    let mut problems = Vec::new();
    let mut cases = Vec::new();
    for file in &files.tests {
        match parse_yaml::<CaseFile>(file) {
            Ok(f) => cases.extend(locate(file, f.cases)),
            Err(p) => problems.push(p),
        }
    }
    let mut seen: Vec<&TestCase> = Vec::new();
    for case in &cases {
        if let Some(first) = seen.iter().find(|c| c.name == case.name) {
            problems.push(Problem::new(
                case.location.clone(),
                format!(
                    "duplicate test case name `{}` (first at {})",
                    case.name, first.location
                ),
            ));
        }
        seen.push(case);
    }
    match Problems::new(problems) {
        Some(p) => Err(Error::Invalid(p)),
        None => Ok(cases),
    }
}

fn locate(file: &SourceFile, specs: Vec<CaseSpec>) -> Vec<TestCase> {
    let mut cursor = 0;
    specs
        .into_iter()
        .map(|s| {
            let offset = find_from(&file.text, &s.name, cursor).unwrap_or(cursor);
            cursor = offset + s.name.len();
            TestCase {
                location: Location::at(&file.path, &file.text, offset),
                request: RequestSpec {
                    principal: s.principal,
                    action: s.action,
                    resource: s.resource,
                    context: s.context,
                    entities: s.entities,
                },
                expect_allow: matches!(s.expect, Expect::Allow),
                expect_policies: s.policies,
                name: s.name,
            }
        })
        .collect()
}

/// Runs `cases` against `snapshot`.
pub fn run(snapshot: &Snapshot, cases: &[TestCase]) -> Vec<CaseResult> {
    cases.iter().map(|c| run_one(snapshot, c)).collect()
}

fn run_one(snapshot: &Snapshot, case: &TestCase) -> CaseResult {
    let request = match snapshot.resolve(&case.request) {
        Ok(r) => r,
        Err(e) => {
            return CaseResult {
                case: case.clone(),
                decision: None,
                failure: Some(format!("bad request: {e}")),
            };
        }
    };
    let decision = snapshot.authorize(&request);
    let failure = check(case, &decision);
    CaseResult {
        case: case.clone(),
        decision: Some(decision),
        failure,
    }
}

fn check(case: &TestCase, d: &Decision) -> Option<String> {
    let word = |allow: bool| if allow { "allow" } else { "deny" };
    if d.allow != case.expect_allow {
        let mut why = format!(
            "expected {}, got {}",
            word(case.expect_allow),
            word(d.allow)
        );
        if d.reasons.is_empty() {
            why.push_str(" (no policy applied)");
        } else {
            why.push_str(&format!(" by [{}]", d.reasons.join(", ")));
        }
        if !d.errors.is_empty() {
            why.push_str(&format!("; errors: {}", errors_line(&d.errors)));
        }
        return Some(why);
    }
    let expected = case.expect_policies.as_ref()?;
    let mut expected = expected.clone();
    expected.sort();
    (expected != d.reasons).then(|| {
        format!(
            "expected determining policies [{}], got [{}]",
            expected.join(", "),
            d.reasons.join(", ")
        )
    })
}
