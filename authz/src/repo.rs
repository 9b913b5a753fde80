//! Loading a policy repository: a directory of schema, policies, entities and routes.
//!
//! ```text
//! schema.cedarschema     the Cedar schema (namespace `Ward`)
//! *.cedar                policies; each needs `@id("…")`, unique across the set
//! entities/*.json        Cedar entity JSON (arrays of entities)
//! routes/*.yaml          per service: method + path template → named action
//! tests/*.yaml           policy test cases (see `policy_test`)
//! ```
//!
//! Everything is parsed file by file, so every problem names its file, line and column, and
//! validated strictly against the schema. Any problem rejects the whole set.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cedar_policy::{Entities, PolicyId, PolicySet, Schema};
use miette::Diagnostic;
use serde::de::DeserializeOwned;

use crate::error::{Error, Location, Problem, Problems};
use crate::model::Model;
use crate::route::RouteTable;

mod entities;
mod policies;
mod revision;
mod routes;
mod schema;

pub(crate) use revision::revision;
pub(crate) use schema::ContextShape;

/// The name of the schema file at the root of a repository.
pub const SCHEMA_FILE: &str = "schema.cedarschema";

/// A file of the repository, read once.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// The path shown in messages: the repository path joined with `rel`.
    pub(crate) path: PathBuf,
    /// The path relative to the repository root, with `/` separators.
    pub(crate) rel: String,
    pub(crate) text: Arc<str>,
}

/// A repository that passed every check.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) schema: Schema,
    pub(crate) policies: PolicySet,
    /// Where each policy starts, by id.
    pub(crate) sources: Vec<(PolicyId, Location)>,
    pub(crate) entities: Entities,
    pub(crate) routes: RouteTable,
    pub(crate) context: ContextShape,
    pub(crate) revision: String,
    pub(crate) warnings: Vec<Problem>,
}

/// Loads and validates the repository at `dir`.
pub(crate) fn load(dir: &Path, model: &Model) -> Result<Loaded, Error> {
    let files = Files::read(dir)?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let schema = match &files.schema {
        Some(f) => schema::load(f, model, &mut problems),
        None => {
            problems.push(Problem::new(
                Location::start(&dir.join(SCHEMA_FILE)),
                format!("`{SCHEMA_FILE}` is missing"),
            ));
            None
        }
    };
    let parsed = policies::parse(&files.policies, &mut problems);
    let Some((schema, context)) = schema else {
        return Err(invalid(problems));
    };
    let policies = policies::validate(&parsed, &schema, &mut problems, &mut warnings);
    let entities = entities::load(&files.entities, &schema, &mut problems);
    let routes = routes::load(&files.routes, &schema, model, &mut problems);
    match (Problems::new(problems), policies, entities) {
        (None, Some(policies), Some(entities)) => Ok(Loaded {
            schema,
            policies,
            sources: parsed.sources(),
            entities,
            routes,
            context,
            revision: revision(dir, &files.all()),
            warnings,
        }),
        (Some(p), _, _) => Err(Error::Invalid(p)),
        (None, _, _) => Err(Error::bug("a repository part failed without a problem")),
    }
}

fn invalid(problems: Vec<Problem>) -> Error {
    match Problems::new(problems) {
        Some(p) => Error::Invalid(p),
        None => Error::bug("invalid repository without a problem"),
    }
}

/// The files of a repository, by kind, each list sorted by path.
#[derive(Debug, Default)]
pub(crate) struct Files {
    pub(crate) schema: Option<SourceFile>,
    pub(crate) policies: Vec<SourceFile>,
    pub(crate) entities: Vec<SourceFile>,
    pub(crate) routes: Vec<SourceFile>,
    pub(crate) tests: Vec<SourceFile>,
}

// === impl Files ===

impl Files {
    /// Reads every file the repository layout names.
    pub(crate) fn read(dir: &Path) -> Result<Self, Error> {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io("reading", dir, e))?;
        if !meta.is_dir() {
            return Err(Error::io(
                "reading",
                dir,
                std::io::Error::other("not a directory"),
            ));
        }
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = if schema_path.exists() {
            Some(read_file(dir, SCHEMA_FILE)?)
        } else {
            None
        };
        Ok(Self {
            schema,
            policies: read_dir(dir, "", "cedar")?,
            entities: read_dir(dir, "entities", "json")?,
            routes: read_dir(dir, "routes", "yaml")?,
            tests: read_dir(dir, "tests", "yaml")?,
        })
    }

    /// Every file, sorted by relative path.
    pub(crate) fn all(&self) -> Vec<&SourceFile> {
        let mut all: Vec<&SourceFile> = self
            .schema
            .iter()
            .chain(&self.policies)
            .chain(&self.entities)
            .chain(&self.routes)
            .chain(&self.tests)
            .collect();
        all.sort_by(|a, b| a.rel.cmp(&b.rel));
        all
    }
}

fn read_file(dir: &Path, rel: &str) -> Result<SourceFile, Error> {
    let path = dir.join(rel);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    Ok(SourceFile {
        path,
        rel: rel.to_owned(),
        text: text.into(),
    })
}

/// The files `dir/sub/*.ext`, sorted by name; a missing `sub` is an empty list.
fn read_dir(dir: &Path, sub: &str, ext: &str) -> Result<Vec<SourceFile>, Error> {
    let base = if sub.is_empty() {
        dir.to_owned()
    } else {
        dir.join(sub)
    };
    let entries = match std::fs::read_dir(&base) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !sub.is_empty() => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(Error::io("reading", &base, e)),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("reading", &base, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && !name.starts_with('.') && name.ends_with(&format!(".{ext}")) {
            names.insert(name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let rel = if sub.is_empty() {
                name
            } else {
                format!("{sub}/{name}")
            };
            read_file(dir, &rel)
        })
        .collect()
}

/// Parses a YAML file, turning a syntax or shape error into a located problem.
pub(crate) fn parse_yaml<T: DeserializeOwned>(file: &SourceFile) -> Result<T, Problem> {
    serde_norway::from_str(&file.text).map_err(|err| {
        let (line, column) = err
            .location()
            .map_or((1, 1), |l| (l.line().max(1), l.column().max(1)));
        let message = err.to_string();
        let message = match message.rfind(" at line ") {
            Some(i) => message[..i].to_owned(),
            None => message,
        };
        Problem::new(
            Location {
                file: file.path.clone(),
                line,
                column,
            },
            message,
        )
    })
}

/// One problem per error in a Cedar diagnostic, located by its first label in `file`.
pub(crate) fn diagnostic_problem(
    file: &SourceFile,
    d: &dyn Diagnostic,
    fallback: usize,
) -> Problem {
    let offset = d
        .labels()
        .and_then(|mut labels| labels.next())
        .map_or(fallback, |l| l.offset());
    let mut message = d.to_string();
    // Cedar puts the specifics of some errors (which attribute, which type) in the causes.
    let mut source = d.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    if let Some(help) = d.help() {
        message = format!("{message} (help: {help})");
    }
    Problem::new(Location::at(&file.path, &file.text, offset), message)
}

/// The byte offset of the first occurrence of `needle` in `text` at or after `from`.
pub(crate) fn find_from(text: &str, needle: &str, from: usize) -> Option<usize> {
    text.get(from..)?.find(needle).map(|i| i + from)
}

#[cfg(test)]
mod tests;
