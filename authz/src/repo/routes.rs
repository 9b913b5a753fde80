//! The `routes/*.yaml` files: one service each, checked against the schema's actions.

use std::collections::HashMap;

use cedar_policy::{EntityUid, Schema};

use super::{SourceFile, find_from, parse_yaml};
use crate::error::{Location, Problem};
use crate::model::Model;
use crate::route::{MethodMatch, Route, RouteFile, RouteTable, Template, shadowed};

/// Loads every route file; bad templates, unknown actions and unreachable routes are problems.
pub(crate) fn load(
    files: &[SourceFile],
    schema: &Schema,
    model: &Model,
    problems: &mut Vec<Problem>,
) -> RouteTable {
    let actions: Vec<&EntityUid> = schema.actions().collect();
    let mut table = RouteTable::default();
    let mut services: HashMap<String, Location> = HashMap::new();
    for file in files {
        let spec: RouteFile = match parse_yaml(file) {
            Ok(s) => s,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        let service_at = find_from(&file.text, "service:", 0).unwrap_or(0);
        let service_loc = Location::at(&file.path, &file.text, service_at);
        if spec.service.trim().is_empty() {
            problems.push(Problem::new(service_loc, "`service` must not be empty"));
            continue;
        }
        if let Some(first) = services.get(&spec.service) {
            problems.push(Problem::new(
                service_loc,
                format!(
                    "routes for service `{}` are already defined at {first}",
                    spec.service
                ),
            ));
            continue;
        }
        services.insert(spec.service.clone(), service_loc);

        let before = problems.len();
        let mut routes = Vec::new();
        let mut cursor = 0;
        for r in spec.routes {
            // YAML keeps no positions for values: find each route's path text in file order.
            let offset = find_from(&file.text, &r.path, cursor).unwrap_or(cursor);
            cursor = offset + r.path.len();
            let location = Location::at(&file.path, &file.text, offset);
            let method = MethodMatch::parse(&r.method);
            let template = Template::parse(&r.path);
            let action_known = actions.contains(&&model.action(&r.action));
            match (method, template) {
                (Ok(method), Ok(template)) if action_known => routes.push(Route {
                    method,
                    template,
                    action: r.action,
                    location,
                }),
                (method, template) => {
                    for why in [method.err(), template.err()].into_iter().flatten() {
                        problems.push(Problem::new(location.clone(), why));
                    }
                    if !action_known {
                        problems.push(Problem::new(
                            location,
                            format!(
                                "action `{}` is not declared in the schema",
                                model.action(&r.action)
                            ),
                        ));
                    }
                }
            }
        }
        for (route, earlier) in routes.iter().zip(shadowed(&routes)) {
            if let Some(e) = earlier.and_then(|i| routes.get(i)) {
                problems.push(Problem::new(
                    route.location.clone(),
                    format!(
                        "route `{} {}` never matches: `{} {}` at line {} comes first and matches \
                         every request it would",
                        route.method,
                        route.template.as_str(),
                        e.method,
                        e.template.as_str(),
                        e.location.line
                    ),
                ));
            }
        }
        if problems.len() == before {
            table.insert(spec.service, routes);
        }
    }
    table
}
