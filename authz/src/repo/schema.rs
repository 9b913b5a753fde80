//! The schema file: parsing, Ward's model contract, and the context shape per action.

use cedar_policy::{Context, Schema, SchemaFragment};
use miette::Diagnostic;
use serde_json::{Value, json};

use super::{SourceFile, diagnostic_problem, find_from};
use crate::FastMap;
use crate::error::{Location, Problem};
use crate::model::{Model, NAMESPACE};

/// What the schema says a request context looks like, per action.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContextShape {
    /// The header names each action's `context.headers` record declares (lower case).
    // Looked up on every request: foldhash, not SipHash (keys come from the schema).
    headers: FastMap<String, Vec<String>>,
    /// Every name in `headers`, once, sorted.
    all_headers: Vec<String>,
}

// === impl ContextShape ===

impl ContextShape {
    /// The header names policies of `action` can see.
    pub(crate) fn headers(&self, action: &str) -> &[String] {
        self.headers.get(action).map_or(&[], Vec::as_slice)
    }

    /// The header names any action's policies can see (lower case).
    pub(crate) fn all_headers(&self) -> &[String] {
        &self.all_headers
    }
}

/// Parses the schema and checks it declares Ward's model; problems go to `problems`.
pub(crate) fn load(
    file: &SourceFile,
    model: &Model,
    problems: &mut Vec<Problem>,
) -> Option<(Schema, ContextShape)> {
    let schema = match Schema::from_cedarschema_str(&file.text) {
        Ok((schema, _warnings)) => schema,
        Err(err) => {
            let related: Vec<_> = err.related().map(|r| r.collect()).unwrap_or_default();
            if related.is_empty() {
                problems.push(diagnostic_problem(file, &err, 0));
            }
            for r in related {
                problems.push(diagnostic_problem(file, r, 0));
            }
            return None;
        }
    };
    let ns_offset = find_from(&file.text, &format!("namespace {NAMESPACE}"), 0).unwrap_or(0);
    let before = problems.len();
    for message in model.missing_from(&schema) {
        problems.push(Problem::new(
            Location::at(&file.path, &file.text, ns_offset),
            message,
        ));
    }
    let shape = context_shape(&file.text);
    for action in schema.actions() {
        // Action groups without `appliesTo` are never requested and have no context.
        let applies = schema
            .principals_for_action(action)
            .is_some_and(|mut p| p.next().is_some());
        if !applies {
            continue;
        }
        let name = action.id().unescaped();
        let sample = sample_context(model);
        if let Err(e) = Context::from_json_value(sample, Some((&schema, action))) {
            let offset = find_from(&file.text, &format!("\"{name}\""), 0).unwrap_or(ns_offset);
            problems.push(Problem::new(
                Location::at(&file.path, &file.text, offset),
                format!(
                    "the context of action `{name}` does not accept Ward's request context: {e}"
                ),
            ));
        }
    }
    (problems.len() == before).then_some((schema, shape))
}

/// A context with every attribute Ward sends, optional ones included, headers empty.
pub(crate) fn sample_context(model: &Model) -> Value {
    json!({
        "method": "GET",
        "path": "/",
        "host": "example",
        "source_ip": { "__extn": { "fn": "ip", "arg": "127.0.0.1" } },
        "mtls": true,
        "request_id": "sample",
        "time": 0,
        "headers": {},
        "user": { "__entity": { "type": model.user.to_string(), "id": "sample" } },
    })
}

/// Reads the header names out of the schema's JSON form; anything unexpected gives none.
fn context_shape(text: &str) -> ContextShape {
    let mut shape = ContextShape::default();
    let Ok((fragment, _)) = SchemaFragment::from_cedarschema_str(text) else {
        return shape;
    };
    let Ok(json) = fragment.to_json_value() else {
        return shape;
    };
    let Some(ns) = json.get(NAMESPACE) else {
        return shape;
    };
    let common = ns.get("commonTypes");
    let Some(actions) = ns.get("actions").and_then(Value::as_object) else {
        return shape;
    };
    for (name, action) in actions {
        let headers = action
            .pointer("/appliesTo/context")
            .and_then(|c| resolve(c, common))
            .and_then(|c| c.pointer("/attributes/headers"))
            .and_then(|h| resolve(h, common))
            .and_then(|h| h.get("attributes"))
            .and_then(Value::as_object)
            .map(|attrs| attrs.keys().map(|k| k.to_ascii_lowercase()).collect())
            .unwrap_or_default();
        shape.headers.insert(name.clone(), headers);
    }
    let mut all: Vec<String> = shape.headers.values().flatten().cloned().collect();
    all.sort();
    all.dedup();
    shape.all_headers = all;
    shape
}

/// Follows a common-type reference to its record definition.
fn resolve<'a>(ty: &'a Value, common: Option<&'a Value>) -> Option<&'a Value> {
    let kind = ty.get("type")?.as_str()?;
    if kind == "Record" {
        return Some(ty);
    }
    let name = if kind == "EntityOrCommon" {
        ty.get("name")?.as_str()?
    } else {
        kind
    };
    let short = name.strip_prefix(&format!("{NAMESPACE}::")).unwrap_or(name);
    let target = common?.get(short)?;
    // One level of indirection is all a well-formed schema needs here; guard against cycles.
    (target.get("type")?.as_str()? == "Record").then_some(target)
}
