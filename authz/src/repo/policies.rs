//! The `*.cedar` files: parsed one file at a time so locations are per file, renamed to their
//! `@id`s, then validated together in strict mode.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};

use super::{SourceFile, diagnostic_problem, find_from};
use crate::error::{LineIndex, Location, Problem};

/// The annotation that names a policy.
pub(crate) const ID_ANNOTATION: &str = "id";

/// Every policy that parsed and has a usable `@id`.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    policies: Vec<ParsedPolicy>,
}

#[derive(Debug)]
struct ParsedPolicy {
    policy: Policy,
    file: SourceFile,
    offset: usize,
    location: Location,
}

// === impl Parsed ===

impl Parsed {
    /// Where each policy starts.
    pub(crate) fn sources(&self) -> Vec<(PolicyId, Location)> {
        self.policies
            .iter()
            .map(|p| (p.policy.id().clone(), p.location.clone()))
            .collect()
    }
}

/// Parses each file; problems (syntax, templates, missing or duplicate `@id`) are collected.
pub(crate) fn parse(files: &[SourceFile], problems: &mut Vec<Problem>) -> Parsed {
    let mut parsed = Parsed::default();
    let mut seen: HashMap<String, Location> = HashMap::new();
    for file in files {
        let set = match PolicySet::from_str(&file.text) {
            Ok(set) => set,
            Err(errs) => {
                problems.extend(errs.iter().map(|e| diagnostic_problem(file, e, 0)));
                continue;
            }
        };
        for template in set.templates() {
            let offset = find_from(&file.text, &template.to_cedar(), 0).unwrap_or(0);
            problems.push(Problem::new(
                Location::at(&file.path, &file.text, offset),
                "templates (policies with `?principal` or `?resource` slots) are not supported",
            ));
        }
        // Cedar names the policies of a file `policy0`, `policy1`, … in file order.
        let mut policies: Vec<&Policy> = set.policies().collect();
        policies.sort_by_key(|p| {
            p.id()
                .to_string()
                .trim_start_matches("policy")
                .parse::<usize>()
                .unwrap_or(usize::MAX)
        });
        let mut cursor = 0;
        let lines = LineIndex::new(&file.text);
        for policy in policies {
            let text = policy.to_cedar().unwrap_or_default();
            let offset = find_from(&file.text, &text, cursor).unwrap_or(cursor);
            cursor = offset + text.len();
            let location = lines.location(&file.path, &file.text, offset);
            let id = match policy.annotation(ID_ANNOTATION) {
                Some(id) if !id.trim().is_empty() => id.to_owned(),
                Some(_) => {
                    problems.push(Problem::new(location, "policy has an empty `@id`"));
                    continue;
                }
                None => {
                    problems.push(Problem::new(
                        location,
                        "policy has no `@id(\"…\")` annotation; every policy needs a unique id",
                    ));
                    continue;
                }
            };
            if let Some(first) = seen.get(&id) {
                problems.push(Problem::new(
                    location,
                    format!("duplicate policy id `{id}` (first used at {first})"),
                ));
                continue;
            }
            seen.insert(id.clone(), location.clone());
            parsed.policies.push(ParsedPolicy {
                policy: policy.new_id(PolicyId::new(id)),
                file: file.clone(),
                offset,
                location,
            });
        }
    }
    parsed
}

/// Validates the parsed policies against `schema` in strict mode.
///
/// Returns the set when no problem was found; validator warnings go to `warnings`.
pub(crate) fn validate(
    parsed: &Parsed,
    schema: &Schema,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> Option<PolicySet> {
    let mut set = PolicySet::new();
    let mut by_id: HashMap<&PolicyId, &ParsedPolicy> = HashMap::new();
    let before = problems.len();
    for p in &parsed.policies {
        if let Err(e) = set.add(p.policy.clone()) {
            problems.push(diagnostic_problem(&p.file, &e, p.offset));
            continue;
        }
        by_id.insert(p.policy.id(), p);
    }
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    for e in result.validation_errors() {
        if let Some(p) = by_id.get(e.policy_id()) {
            problems.push(diagnostic_problem(&p.file, e, p.offset));
        }
    }
    for w in result.validation_warnings() {
        if let Some(p) = by_id.get(w.policy_id()) {
            warnings.push(diagnostic_problem(&p.file, w, p.offset));
        }
    }
    (problems.len() == before).then_some(set)
}
