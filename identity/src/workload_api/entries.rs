//! Registration entries: which selectors earn which SPIFFE id, loaded from a YAML file.
//!
//! ```yaml
//! - spiffe_id: spiffe://ward.local/ns/shop/sa/checkout
//!   selectors: ["unix:uid:1001", "unix:path:/usr/bin/checkout"]
//!   ttl: 30m          # optional (humantime syntax: 90s, 30m, 1h); the agent's default otherwise
//!   hint: internal    # optional; passed to the workload as the SVID's hint
//! ```
//!
//! An entry matches a caller when *all* of its selectors are among the caller's selectors
//! (SPIRE's semantics), so adding a selector to an entry narrows it.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::attest::Selectors;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The selector kinds the Unix attestor produces; an entry naming anything else is a typo.
const SELECTOR_KINDS: &[&str] = &["uid", "gid", "user", "group", "path"];

/// One registration entry: the SPIFFE id a workload gets when it shows all of `selectors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The id issued to a matching workload.
    pub spiffe_id: SpiffeId,
    /// Every one of these must be among the caller's selectors.
    pub selectors: BTreeSet<String>,
    /// Lifetime of the X.509-SVIDs issued for this entry; the server's default when `None`.
    pub ttl: Option<Duration>,
    /// Operator guidance passed to the workload with the SVID (empty when unset).
    pub hint: String,
}

/// The validated entries of one file, all in one trust domain.
#[derive(Debug, Clone)]
pub struct Entries {
    trust_domain: TrustDomain,
    entries: Vec<Entry>,
}

/// Why an entries file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum EntriesError {
    /// The file could not be read.
    #[error("reading entries `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML is malformed or does not match the schema.
    #[error("{}: {message}", Located { path, location: *location })]
    Parse {
        /// The file.
        path: PathBuf,
        /// Line and column, when the parser knows them.
        location: Option<(usize, usize)>,
        /// What the parser said.
        message: String,
    },
    /// An entry parsed but one of its fields is not acceptable.
    #[error("`{}`: entry {index}: `{field}`: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Position of the entry in the list, from 0.
        index: usize,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// An entry as written in the file, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    spiffe_id: String,
    selectors: Vec<String>,
    #[serde(default)]
    ttl: Option<String>,
    #[serde(default)]
    hint: Option<String>,
}

struct Located<'a> {
    path: &'a Path,
    location: Option<(usize, usize)>,
}

// === impl Entry ===

impl Entry {
    /// Whether every selector of this entry is among `caller`'s.
    pub fn matches(&self, caller: &Selectors) -> bool {
        self.selectors.iter().all(|s| caller.contains(s))
    }
}

// === impl Entries ===

impl Entries {
    /// Reads and validates the entries file at `path`; every id must be in `trust_domain`.
    pub fn load(path: &Path, trust_domain: &TrustDomain) -> Result<Self, EntriesError> {
        let text = std::fs::read_to_string(path).map_err(|source| EntriesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text, trust_domain)
    }

    /// Parses and validates entries from `text` (`path` is used in messages only).
    pub fn parse(
        path: &Path,
        text: &str,
        trust_domain: &TrustDomain,
    ) -> Result<Self, EntriesError> {
        // An empty file is an empty list, not "invalid type: unit value".
        let text = if text.trim().is_empty() { "[]" } else { text };
        let raw: Vec<RawEntry> = serde_norway::from_str(text).map_err(|err| {
            let location = err.location().map(|l| (l.line(), l.column()));
            EntriesError::Parse {
                path: path.to_owned(),
                location,
                message: strip_location(&err.to_string()),
            }
        })?;
        let entries = raw
            .into_iter()
            .enumerate()
            .map(|(index, raw)| {
                validate(raw, trust_domain).map_err(|(field, reason)| EntriesError::Invalid {
                    path: path.to_owned(),
                    index,
                    field,
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            trust_domain: trust_domain.clone(),
            entries,
        })
    }

    /// Builds entries in code; every id must be in `trust_domain` and every selector valid.
    pub fn new(trust_domain: TrustDomain, entries: Vec<Entry>) -> Result<Self, EntriesError> {
        for (index, entry) in entries.iter().enumerate() {
            let invalid = |field, reason| EntriesError::Invalid {
                path: PathBuf::from("<entries built in code>"),
                index,
                field,
                reason,
            };
            check_trust_domain(&entry.spiffe_id, &trust_domain)
                .map_err(|r| invalid("spiffe_id", r))?;
            check_selectors(entry.selectors.iter().map(String::as_str))
                .map_err(|r| invalid("selectors", r))?;
        }
        Ok(Self {
            trust_domain,
            entries,
        })
    }

    /// The trust domain every entry's id belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Every entry, in file order.
    pub fn all(&self) -> &[Entry] {
        &self.entries
    }

    /// The entries a caller with `selectors` is entitled to, in file order.
    pub fn matching(&self, selectors: &Selectors) -> Vec<Entry> {
        self.entries
            .iter()
            .filter(|e| e.matches(selectors))
            .cloned()
            .collect()
    }

    /// Whether there are no entries at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
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

/// Turns one raw entry into an [`Entry`], or names the field at fault and why.
fn validate(raw: RawEntry, trust_domain: &TrustDomain) -> Result<Entry, (&'static str, String)> {
    let spiffe_id = SpiffeId::parse(&raw.spiffe_id)
        .map_err(|e| ("spiffe_id", format!("`{}`: {e}", raw.spiffe_id)))?;
    check_trust_domain(&spiffe_id, trust_domain).map_err(|r| ("spiffe_id", r))?;
    check_selectors(raw.selectors.iter().map(String::as_str)).map_err(|r| ("selectors", r))?;
    let ttl = match raw.ttl {
        None => None,
        Some(text) => {
            let ttl = humantime::parse_duration(&text)
                .map_err(|e| ("ttl", format!("invalid duration `{text}`: {e}")))?;
            if ttl < Duration::from_secs(1) {
                return Err(("ttl", format!("`{text}` is shorter than 1s")));
            }
            Some(ttl)
        }
    };
    Ok(Entry {
        spiffe_id,
        selectors: raw.selectors.into_iter().collect(),
        ttl,
        hint: raw.hint.unwrap_or_default(),
    })
}

fn check_trust_domain(id: &SpiffeId, trust_domain: &TrustDomain) -> Result<(), String> {
    if id.trust_domain_name() == trust_domain.as_str() {
        Ok(())
    } else {
        Err(format!(
            "`{id}` is not in trust domain `{trust_domain}`, the CA's"
        ))
    }
}

/// At least one selector, each `unix:<kind>:<value>` with a kind the attestor produces.
fn check_selectors<'a>(selectors: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut count = 0;
    for selector in selectors {
        count += 1;
        check_selector(selector)?;
    }
    if count == 0 {
        // An entry without selectors would match every caller on the machine.
        return Err("at least one selector is required".to_owned());
    }
    Ok(())
}

fn check_selector(selector: &str) -> Result<(), String> {
    let expected = || {
        let kinds: Vec<String> = SELECTOR_KINDS
            .iter()
            .map(|k| format!("unix:{k}:"))
            .collect();
        format!("expected one of {}", kinds.join(", "))
    };
    let Some((kind, value)) = selector
        .strip_prefix("unix:")
        .and_then(|rest| rest.split_once(':'))
    else {
        return Err(format!("unknown selector `{selector}`: {}", expected()));
    };
    if !SELECTOR_KINDS.contains(&kind) {
        return Err(format!("unknown selector `{selector}`: {}", expected()));
    }
    if value.is_empty() {
        return Err(format!("selector `{selector}` has no value"));
    }
    let valid = match kind {
        "uid" | "gid" => value.parse::<u32>().is_ok(),
        "path" => value.starts_with('/'),
        _ => true,
    };
    if !valid {
        let want = if kind == "path" {
            "an absolute path"
        } else {
            "a number"
        };
        return Err(format!("selector `{selector}`: the value must be {want}"));
    }
    Ok(())
}

/// Drops the trailing " at line L column C" since the error prints the location up front.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests;
