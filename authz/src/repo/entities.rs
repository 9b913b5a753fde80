//! The `entities/*.json` files: Cedar entity JSON, checked against the schema.

use std::collections::HashMap;

use cedar_policy::{Entities, EntityUid, Schema};
use serde_json::Value;

use super::{SourceFile, diagnostic_problem};
use crate::error::{Location, Problem};

/// Loads every file; each problem points at the entity it is about.
pub(crate) fn load(
    files: &[SourceFile],
    schema: &Schema,
    problems: &mut Vec<Problem>,
) -> Option<Entities> {
    let before = problems.len();
    let mut all = Vec::new();
    let mut seen: HashMap<EntityUid, Location> = HashMap::new();
    for file in files {
        let Some(items) = parse_file(file, problems) else {
            continue;
        };
        let offsets = element_offsets(&file.text);
        for (i, item) in items.into_iter().enumerate() {
            let offset = offsets.get(i).copied().unwrap_or(0);
            let location = Location::at(&file.path, &file.text, offset);
            if let Err(e) =
                Entities::from_json_value(Value::Array(vec![item.clone()]), Some(schema))
            {
                problems.push(diagnostic_problem(file, &e, offset));
                continue;
            }
            let uid = item
                .get("uid")
                .cloned()
                .and_then(|u| EntityUid::from_json(u).ok());
            if let Some(uid) = uid {
                if let Some(first) = seen.get(&uid) {
                    problems.push(Problem::new(
                        location,
                        format!("duplicate entity `{uid}` (first defined at {first})"),
                    ));
                    continue;
                }
                seen.insert(uid, location);
            }
            all.push(item);
        }
    }
    if problems.len() > before {
        return None;
    }
    match Entities::from_json_value(Value::Array(all), Some(schema)) {
        Ok(entities) => Some(entities),
        Err(e) => {
            let file = files.first()?;
            problems.push(diagnostic_problem(file, &e, 0));
            None
        }
    }
}

/// The JSON array of a file, or a located problem.
fn parse_file(file: &SourceFile, problems: &mut Vec<Problem>) -> Option<Vec<Value>> {
    match serde_json::from_str::<Value>(&file.text) {
        Ok(Value::Array(items)) => Some(items),
        Ok(_) => {
            problems.push(Problem::new(
                Location::start(&file.path),
                "an entities file must hold a JSON array of entities",
            ));
            None
        }
        Err(e) => {
            let message = e.to_string();
            let message = match message.rfind(" at line ") {
                Some(i) => message[..i].to_owned(),
                None => message,
            };
            problems.push(Problem::new(
                Location {
                    file: file.path.clone(),
                    line: e.line().max(1),
                    column: e.column().max(1),
                },
                message,
            ));
            None
        }
    }
}

/// Byte offsets where each element of the top-level JSON array starts.
///
/// The text is known to be valid JSON, so a small scanner that tracks strings and nesting is
/// enough; serde_json keeps no positions for values.
pub(crate) fn element_offsets(text: &str) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut expect_element = false;
    for (i, c) in text.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if expect_element && !c.is_whitespace() && c != ']' {
            offsets.push(i);
            expect_element = false;
        }
        match c {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth == 1 && c == '[' {
                    expect_element = true;
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_element = true,
            _ => {}
        }
    }
    offsets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_offsets_skip_nested_values_and_strings() {
        let text = "[\n  {\"a\": [1, 2], \"s\": \"x,]{\\\"\"},\n  {\"b\": {}}\n]";
        let offsets = element_offsets(text);
        assert_eq!(offsets.len(), 2);
        assert_eq!(&text[offsets[0]..offsets[0] + 4], "{\"a\"");
        assert_eq!(&text[offsets[1]..offsets[1] + 4], "{\"b\"");
        assert!(element_offsets("[]").is_empty());
    }
}
