//! Guards: a cheap test, read from a policy's first condition, that must pass for the policy
//! to be satisfied.
//!
//! Cedar evaluates a policy as `scope && first clause && …`, left to right, stopping at the
//! first false conjunct. When the first conjunct of the first `when` clause (or the whole of a
//! first `unless` clause) is one of the shapes below, it reads only values Ward itself puts in
//! the context with a fixed type, so it can neither fail nor depend on entities. If it is
//! false for a request, the policy is not satisfied and raises no error: leaving it out
//! changes neither the decision nor the determining policies. Guard-false policies are skipped
//! without calling Cedar, which is what keeps unscoped guardrails (`forbid (principal, action,
//! resource) when { context.path like "/admin/*" }`) from costing every request.
//!
//! Shapes: `context.path like "…"`, `context.{method,path,host} == "…"` (either side),
//! `context.mtls`, `context.mtls == true|false`, `context.headers has "…"`, `context has user`,
//! and `!` of any of them.

use serde_json::Value;

use crate::request::RequestContext;

/// A test on the request context that a policy's condition starts with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Guard {
    test: Test,
    /// The test must be false (from `!` or `unless`).
    negated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Test {
    PathLike(Vec<Piece>),
    Equals(Field, String),
    Mtls(bool),
    HasHeader(String),
    HasUser,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Method,
    Path,
    Host,
}

/// A piece of a Cedar `like` pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Piece {
    Literal(String),
    Wildcard,
}

// === impl Guard ===

impl Guard {
    /// The guard of a policy, from its JSON form (Cedar's EST), if its condition starts with
    /// one of the supported shapes.
    pub(crate) fn of_policy(est: &Value) -> Option<Self> {
        let first = est.get("conditions")?.as_array()?.first()?;
        let body = first.get("body")?;
        match first.get("kind")?.as_str()? {
            // `when { a && b }` needs `a`; its leftmost conjunct is evaluated first.
            "when" => Self::of_expr(leftmost_conjunct(body)),
            // `unless { a }` is `!a`; with `&&` inside it is a disjunction, not guarded.
            "unless" if body.get("&&").is_none() => Self::of_expr(body).map(Self::negate),
            _ => None,
        }
    }

    /// Whether a policy guarded by this can be satisfied by a request with context `c`.
    pub(crate) fn admits(&self, c: &RequestContext) -> bool {
        let holds = match &self.test {
            Test::PathLike(pattern) => like(&c.path, pattern),
            Test::Equals(field, value) => field.of(c) == value,
            Test::Mtls(want) => c.mtls == *want,
            // The Cedar context holds the declared headers, lower-cased; the request may
            // hold more, so this can only say "maybe" where Cedar says no (still sound), never
            // the other way round.
            Test::HasHeader(name) => c.headers.keys().any(|k| k.eq_ignore_ascii_case(name)),
            Test::HasUser => c.user.is_some(),
        };
        holds != self.negated
    }

    fn of_expr(e: &Value) -> Option<Self> {
        if let Some(inner) = e.get("!").and_then(|n| n.get("arg")) {
            return Self::of_expr(inner).map(Self::negate);
        }
        let test = if let Some(like) = e.get("like") {
            context_attr(like.get("left")?).filter(|a| *a == "path")?;
            Test::PathLike(pattern(like.get("pattern")?)?)
        } else if let Some(eq) = e.get("==") {
            let (left, right) = (eq.get("left")?, eq.get("right")?);
            let (attr, value) = match (context_attr(left), context_attr(right)) {
                (Some(a), None) => (a, right.get("Value")?),
                (None, Some(a)) => (a, left.get("Value")?),
                _ => return None,
            };
            match (attr, value) {
                ("mtls", Value::Bool(b)) => Test::Mtls(*b),
                (attr, Value::String(s)) => Test::Equals(Field::named(attr)?, s.clone()),
                _ => return None,
            }
        } else if let Some(has) = e.get("has") {
            let (left, attr) = (has.get("left")?, has.get("attr")?.as_str()?);
            if is_context(left) && attr == "user" {
                Test::HasUser
            } else if context_attr(left)? == "headers" {
                Test::HasHeader(attr.to_owned())
            } else {
                return None;
            }
        } else if context_attr(e)? == "mtls" {
            Test::Mtls(true)
        } else {
            return None;
        };
        Some(Self {
            test,
            negated: false,
        })
    }

    fn negate(self) -> Self {
        Self {
            negated: !self.negated,
            ..self
        }
    }
}

// === impl Field ===

impl Field {
    fn named(attr: &str) -> Option<Self> {
        match attr {
            "method" => Some(Self::Method),
            "path" => Some(Self::Path),
            "host" => Some(Self::Host),
            _ => None,
        }
    }

    fn of(self, c: &RequestContext) -> &str {
        match self {
            Self::Method => &c.method,
            Self::Path => &c.path,
            Self::Host => &c.host,
        }
    }
}

/// `a` of `a && b && …` (Cedar's `&&` associates to the left).
fn leftmost_conjunct(mut e: &Value) -> &Value {
    while let Some(left) = e.get("&&").and_then(|and| and.get("left")) {
        e = left;
    }
    e
}

fn is_context(e: &Value) -> bool {
    e.get("Var").and_then(Value::as_str) == Some("context")
}

/// `name` when `e` is `context.name`.
fn context_attr(e: &Value) -> Option<&str> {
    let dot = e.get(".")?;
    is_context(dot.get("left")?)
        .then(|| dot.get("attr")?.as_str())
        .flatten()
}

fn pattern(v: &Value) -> Option<Vec<Piece>> {
    v.as_array()?
        .iter()
        .map(|p| match p {
            Value::String(w) if w == "Wildcard" => Some(Piece::Wildcard),
            _ => Some(Piece::Literal(p.get("Literal")?.as_str()?.to_owned())),
        })
        .collect()
}

/// Cedar's `like`: `*` matches any run of characters, everything else itself.
///
/// The usual two-pointer match that backtracks only to the last `*`: O(text × pattern) at
/// worst, whatever path a client sends.
fn like(text: &str, pattern: &[Piece]) -> bool {
    let pat: Vec<Option<char>> = pattern
        .iter()
        .flat_map(|p| match p {
            Piece::Wildcard => vec![None],
            Piece::Literal(s) => s.chars().map(Some).collect(),
        })
        .collect();
    let text: Vec<char> = text.chars().collect();
    let (mut t, mut p) = (0, 0);
    // Where the last `*` was, and the text position it currently swallows up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(Some(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            Some(None) => {
                star = Some((p, t));
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(Option::is_none)
}

#[cfg(test)]
mod tests;
