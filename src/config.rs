//! Loads one YAML configuration file per process, with `WARD_…` environment overrides.
//!
//! Every process (`ward up`, `ward agent`, `ward proxy`, …) reads its file through [`load`], so
//! every config error looks the same: the file, the line and column, and the field.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Overrides the data directory of any process that has one.
pub(crate) const ENV_DATA_DIR: &str = "WARD_DATA_DIR";

/// A source of environment variables; tests pass a map instead of mutating the process.
pub(crate) trait Env {
    /// The value of `key`, if set.
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ProcessEnv;

/// A fixed set of variables.
#[cfg(test)]
#[derive(Debug, Clone, Default)]
pub(crate) struct MapEnv(pub(crate) std::collections::HashMap<String, String>);

/// A store URL read from a file. Its `Debug` replaces any password, so a configuration can be
/// logged whole (`?cfg`) without printing the secret.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct StoreUrl(String);

impl StoreUrl {
    /// The URL as written, password included.
    pub(crate) fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&ward_audit::store::redact(&self.0), f)
    }
}

/// A configuration that some `WARD_…` variables may override after the file is read.
pub(crate) trait Overrides {
    /// Applies the overrides this config honours.
    fn apply_env(&mut self, env: &dyn Env) -> Result<(), ConfigError>;
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    /// The file could not be read.
    #[error("reading config `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema.
    #[error("{}: {message}", Located { path, location: *location })]
    Parse {
        path: PathBuf,
        location: Option<(usize, usize)>,
        message: String,
    },
    /// An environment override holds a value that does not parse.
    #[error("environment variable `{var}`=`{value}`: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

struct Located<'a> {
    path: &'a Path,
    location: Option<(usize, usize)>,
}

// === impl ProcessEnv ===

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

// === impl MapEnv ===

#[cfg(test)]
impl Env for MapEnv {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

#[cfg(test)]
impl<const N: usize> From<[(&str, &str); N]> for MapEnv {
    fn from(pairs: [(&str, &str); N]) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

// === impl Located ===

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((line, col)) => write!(f, "{}:{line}:{col}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// Reads `path` as YAML into `T`, rejecting unknown fields, then applies environment overrides.
pub(crate) fn load<T>(path: &Path, env: &dyn Env) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Overrides,
{
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut cfg = parse::<T>(path, &text)?;
    cfg.apply_env(env)?;
    Ok(cfg)
}

/// [`load`]s `path` when given, else starts from `T::default()`; environment overrides apply
/// either way.
pub(crate) fn load_or_default<T>(path: Option<&Path>, env: &dyn Env) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Overrides + Default,
{
    match path {
        Some(path) => load(path, env),
        None => {
            let mut cfg = T::default();
            cfg.apply_env(env)?;
            Ok(cfg)
        }
    }
}

/// Parses YAML text that came from `path` (used for messages only).
pub(crate) fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    // An empty file means "all defaults", not "invalid type: unit value".
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_norway::from_str(text).map_err(|err| {
        let location = err.location().map(|l| (l.line(), l.column()));
        ConfigError::Parse {
            path: path.to_owned(),
            location,
            message: strip_location(&err.to_string()),
        }
    })
}

/// Drops the trailing " at line L column C" since the error prints the location up front.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Overrides `target` with the path in `var`, if set and not empty.
pub(crate) fn override_path(env: &dyn Env, var: &'static str, target: &mut PathBuf) {
    if let Some(value) = env.var(var).filter(|v| !v.is_empty()) {
        *target = PathBuf::from(value);
    }
}

/// Overrides `target` with `var` parsed by `FromStr`, if set.
pub(crate) fn override_parsed<T>(
    env: &dyn Env,
    var: &'static str,
    target: &mut T,
) -> Result<(), ConfigError>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    if let Some(value) = env.var(var).filter(|v| !v.is_empty()) {
        *target = value.parse().map_err(|err: T::Err| ConfigError::Env {
            var,
            reason: err.to_string(),
            value,
        })?;
    }
    Ok(())
}

/// Reads a humantime duration such as `500ms`, `10s` or `1m` (`deserialize_with` helper).
pub(crate) fn duration<'de, D>(deserializer: D) -> Result<std::time::Duration, D::Error>
where
    D: serde::Deserializer<'de>,
{
    deserializer.deserialize_str(DurationVisitor {
        min: std::time::Duration::ZERO,
    })
}

/// Like [`duration`], refusing anything shorter than one second.
pub(crate) fn duration_at_least_1s<'de, D>(deserializer: D) -> Result<std::time::Duration, D::Error>
where
    D: serde::Deserializer<'de>,
{
    deserializer.deserialize_str(DurationVisitor {
        min: std::time::Duration::from_secs(1),
    })
}

// A visitor rather than `String::deserialize` plus a check: errors raised while the parser is
// on the value carry its line, column and field path.
struct DurationVisitor {
    min: std::time::Duration,
}

impl serde::de::Visitor<'_> for DurationVisitor {
    type Value = std::time::Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as `500ms`, `30s` or `1h`")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        let value = humantime::parse_duration(text)
            .map_err(|e| E::custom(format!("invalid duration `{text}`: {e}")))?;
        if value < self.min {
            return Err(E::custom(format!(
                "duration `{text}` is shorter than {}",
                humantime::format_duration(self.min)
            )));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests;
