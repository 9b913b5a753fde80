//! Route maps: HTTP method + path template → a named Cedar action, per service.
//!
//! A file in `routes/` names one service and lists its routes in order:
//!
//! ```yaml
//! service: orders-api
//! routes:
//!   - method: POST
//!     path: /orders/{id}/refund
//!     action: orders:refund
//! ```
//!
//! A template is a normalized path whose segments are literals, `{name}` (exactly one
//! non-empty segment) or, as the last segment only, `{*name}` (the rest of the path, possibly
//! nothing: `/admin/{*rest}` matches `/admin`, `/admin/` and `/admin/a/b`, so a route meant to
//! cover a subtree also covers its root). `method` is an HTTP method or `*` for any. The first route that matches wins; a
//! request that matches no route is authorized as its HTTP method's action (`Action::"GET"` …).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::FastMap;
use crate::error::Location;
use crate::path::NormalizedPath;

/// All services' routes.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    // Looked up on every request: foldhash, not SipHash (keys come from the route files).
    services: FastMap<String, Vec<Route>>,
}

/// One route of one service.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) method: MethodMatch,
    pub(crate) template: Template,
    pub(crate) action: String,
    pub(crate) location: Location,
}

/// The methods a route accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MethodMatch {
    Any,
    Exactly(String),
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    raw: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// A `routes/*.yaml` file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteFile {
    pub(crate) service: String,
    #[serde(default)]
    pub(crate) routes: Vec<RouteSpec>,
}

/// One route as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSpec {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) action: String,
}

/// The HTTP methods Ward's Cedar model has an action for.
pub(crate) const HTTP_METHODS: [&str; 7] =
    ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"];

// === impl RouteTable ===

impl RouteTable {
    /// Adds a service's routes; the caller has checked they are valid.
    pub(crate) fn insert(&mut self, service: String, routes: Vec<Route>) {
        self.services.insert(service, routes);
    }

    /// The first route of `service` that matches, with the path parameters it bound.
    pub(crate) fn find(
        &self,
        service: &str,
        method: &str,
        path: &NormalizedPath,
    ) -> Option<(&Route, BTreeMap<String, String>)> {
        let routes = self.services.get(service)?;
        let segments: Vec<&str> = path.segments().collect();
        routes.iter().find_map(|r| {
            if !r.method.accepts(method) {
                return None;
            }
            r.template.matches(&segments).map(|params| (r, params))
        })
    }

    /// How many routes there are across all services.
    pub(crate) fn len(&self) -> usize {
        self.services.values().map(Vec::len).sum()
    }
}

// === impl MethodMatch ===

impl MethodMatch {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::Any);
        }
        if HTTP_METHODS.contains(&s) {
            return Ok(Self::Exactly(s.to_owned()));
        }
        Err(format!(
            "unknown method `{s}`: expected one of {} or `*`",
            HTTP_METHODS.join(", ")
        ))
    }

    fn accepts(&self, method: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exactly(m) => m == method,
        }
    }

    /// Every request this accepts, `other` accepts too.
    fn covered_by(&self, other: &Self) -> bool {
        match (self, other) {
            (_, Self::Any) => true,
            (Self::Exactly(a), Self::Exactly(b)) => a == b,
            (Self::Any, Self::Exactly(_)) => false,
        }
    }
}

impl std::fmt::Display for MethodMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exactly(m) => f.write_str(m),
        }
    }
}

// === impl Template ===

impl Template {
    /// Parses a template; the error says what is malformed or why it could never match.
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        if !raw.starts_with('/') {
            return Err(format!("path template `{raw}` must start with `/`"));
        }
        let mut segments = Vec::new();
        let mut names = Vec::new();
        let parts: Vec<&str> = raw[1..].split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let segment =
                parse_segment(part, last).map_err(|why| format!("path template `{raw}`: {why}"))?;
            if let Segment::Param(n) | Segment::Rest(n) = &segment {
                if names.contains(n) {
                    return Err(format!("path template `{raw}` binds `{n}` twice"));
                }
                names.push(n.clone());
            }
            segments.push(segment);
        }
        // Requests are normalized before matching; a literal that normalization would change
        // can never be seen, so the route would silently never match.
        let literal_path: String = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => format!("/{l}"),
                Segment::Param(_) | Segment::Rest(_) => "/x".to_owned(),
            })
            .collect();
        match NormalizedPath::parse(&literal_path) {
            Ok(p) if p.path() == literal_path => {}
            Ok(p) => {
                return Err(format!(
                    "path template `{raw}` never matches: requests are normalized first, and \
                     its literal part normalizes to `{}`",
                    p.path()
                ));
            }
            Err(e) => return Err(format!("path template `{raw}` never matches: {e}")),
        }
        Ok(Self {
            raw: raw.to_owned(),
            segments,
        })
    }

    /// The template as written.
    pub(crate) fn as_str(&self) -> &str {
        &self.raw
    }

    fn matches(&self, path: &[&str]) -> Option<BTreeMap<String, String>> {
        let mut params = BTreeMap::new();
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Rest(name) => {
                    params.insert(name.clone(), path.get(i..).unwrap_or(&[]).join("/"));
                    return Some(params);
                }
                Segment::Literal(l) => {
                    if path.get(i) != Some(&l.as_str()) {
                        return None;
                    }
                }
                Segment::Param(name) => match path.get(i) {
                    Some(v) if !v.is_empty() => {
                        params.insert(name.clone(), (*v).to_owned());
                    }
                    _ => return None,
                },
            }
        }
        (path.len() == self.segments.len()).then_some(params)
    }

    /// Every path this template matches, `other` matches too.
    fn covered_by(&self, other: &Self) -> bool {
        for (i, theirs) in other.segments.iter().enumerate() {
            let mine = self.segments.get(i);
            match (theirs, mine) {
                (Segment::Rest(_), _) => return true,
                (_, None | Some(Segment::Rest(_))) => return false,
                (Segment::Param(_), Some(Segment::Literal(l))) if l.is_empty() => return false,
                (Segment::Param(_), Some(_)) => {}
                (Segment::Literal(a), Some(Segment::Literal(b))) if a == b => {}
                (Segment::Literal(_), Some(_)) => return false,
            }
        }
        self.segments.len() == other.segments.len()
    }
}

fn parse_segment(part: &str, last: bool) -> Result<Segment, String> {
    let Some(inner) = part.strip_prefix('{') else {
        if part.contains(['{', '}']) {
            return Err(format!("segment `{part}` mixes text and a `{{param}}`"));
        }
        return Ok(Segment::Literal(part.to_owned()));
    };
    let Some(inner) = inner.strip_suffix('}') else {
        return Err(format!("segment `{part}` has no closing `}}`"));
    };
    let (rest, name) = match inner.strip_prefix('*') {
        Some(n) => (true, n),
        None => (false, inner),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "parameter `{part}` needs a name of letters, digits and `_`"
        ));
    }
    if rest && !last {
        return Err(format!("`{part}` must be the last segment"));
    }
    Ok(if rest {
        Segment::Rest(name.to_owned())
    } else {
        Segment::Param(name.to_owned())
    })
}

/// For each route, the index of an earlier route that matches every request it would, if any.
pub(crate) fn shadowed(routes: &[Route]) -> Vec<Option<usize>> {
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            routes[..i].iter().position(|earlier| {
                r.method.covered_by(&earlier.method) && r.template.covered_by(&earlier.template)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
