//! Remembered decisions.
//!
//! A Cedar decision is a function of the request, the policies and the entities, and a
//! snapshot's policies and entities never change. So two requests that agree on their
//! principal, action, resource and every context attribute a policy can read get the same
//! outcome, and the second need not be evaluated. Which attributes the policies read is found
//! once per snapshot by walking each policy's JSON form; a policy that uses `context` in any
//! way the walk does not follow turns remembering off for the whole snapshot.

use std::net::IpAddr;

use serde_json::Value;
use ward_identity::SpiffeId;

use super::Snapshot;
use crate::request::{EndUser, EntityRef, Principal, Request, Resource};

/// The context attributes some policy reads (`context.x` or `context has x`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ContextReads {
    method: bool,
    path: bool,
    host: bool,
    mtls: bool,
    time: bool,
    headers: bool,
}

/// Who asked, for a remembered decision (end users with claims bring their own entities and
/// are never remembered).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Asker {
    Workload(SpiffeId),
    Entity(EntityRef),
}

/// Everything a remembered decision depends on. An attribute no policy reads is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MemoKey {
    principal: Asker,
    action: String,
    resource: Resource,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    mtls: Option<bool>,
    time: Option<i64>,
    /// The declared headers present, by their declared name; values only when read. Which
    /// ones are present decides whether the request conforms to the schema.
    headers: Vec<(String, Option<String>)>,
    /// Only when a policy mentions `source_ip` (otherwise the context leaves it out).
    source_ip: Option<IpAddr>,
    user: Option<String>,
}

// === impl ContextReads ===

impl ContextReads {
    /// What the policies read, or `None` when some policy's use of `context` is not a plain
    /// attribute access Ward can account for (then nothing is remembered).
    pub(crate) fn of<'a>(
        policies: impl IntoIterator<Item = &'a cedar_policy::Policy>,
    ) -> Option<Self> {
        let mut reads = Self::default();
        for policy in policies {
            let json = policy.to_json().ok()?;
            reads.walk(&json)?;
        }
        Some(reads)
    }

    /// Records the attributes `value` reads; `None` when it uses `context` otherwise.
    fn walk(&mut self, value: &Value) -> Option<()> {
        match value {
            Value::Object(map) => {
                if map.get("Var").and_then(Value::as_str) == Some("context") {
                    // `context` as a whole value: anything could depend on anything.
                    return None;
                }
                for (op, inner) in map {
                    if let Some(attr) = context_attr(op, inner) {
                        self.note(attr)?;
                        // The access itself is accounted for; walk only its other parts.
                        for (k, v) in inner.as_object()? {
                            if k != "left" && k != "attr" {
                                self.walk(v)?;
                            }
                        }
                    } else {
                        self.walk(inner)?;
                    }
                }
                Some(())
            }
            Value::Array(items) => items.iter().try_for_each(|v| self.walk(v)),
            _ => Some(()),
        }
    }

    /// Marks `attr` read. `request_id` is unique per request, so remembering is pointless, and
    /// an attribute Ward does not set is not something this module has reasoned about.
    fn note(&mut self, attr: &str) -> Option<()> {
        match attr {
            "method" => self.method = true,
            "path" => self.path = true,
            "host" => self.host = true,
            "mtls" => self.mtls = true,
            "time" => self.time = true,
            "headers" => self.headers = true,
            // Always in the key: the context carries them only when present or read.
            "source_ip" | "user" => {}
            _ => return None,
        }
        Some(())
    }
}

/// `attr` when `op: inner` is `context.attr` or `context has attr` (or `context has
/// attr.more…`, whose `attr` is the path as an array).
fn context_attr<'v>(op: &str, inner: &'v Value) -> Option<&'v str> {
    if op != "." && op != "has" {
        return None;
    }
    let inner = inner.as_object()?;
    let left = inner.get("left")?.as_object()?;
    if left.len() != 1 || left.get("Var").and_then(Value::as_str) != Some("context") {
        return None;
    }
    match inner.get("attr")? {
        Value::String(attr) => Some(attr),
        Value::Array(path) if op == "has" => path.first()?.as_str(),
        _ => None,
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// The key `req`'s decision is remembered under, or `None` when it is not remembered: the
    /// policies read the context in a way not accounted for, or the request brings entities of
    /// its own (extra entities, or an end user's claims).
    pub(crate) fn memo_key(&self, req: &Request) -> Option<MemoKey> {
        let reads = self.context_reads?;
        if !req.entities.is_empty() {
            return None;
        }
        let principal = match &req.principal {
            Principal::Workload(id) => Asker::Workload(id.clone()),
            Principal::Entity(r) => Asker::Entity(r.clone()),
            Principal::User(_) => return None,
        };
        let user = match &req.context.user {
            None => None,
            Some(EndUser::Id(id)) => Some(id.clone()),
            Some(EndUser::Claims(_)) => return None,
        };
        let c = &req.context;
        let headers = self
            .declared_headers_of(&req.action, c)
            .map(|(name, value)| (name.clone(), reads.headers.then(|| value.clone())))
            .collect();
        Some(MemoKey {
            principal,
            action: req.action.clone(),
            resource: req.resource.clone(),
            method: reads.method.then(|| c.method.clone()),
            path: reads.path.then(|| c.path.clone()),
            host: reads.host.then(|| c.host.clone()),
            mtls: reads.mtls.then_some(c.mtls),
            time: reads.time.then_some(c.time),
            headers,
            source_ip: c.source_ip.filter(|_| self.reads_source_ip),
            user,
        })
    }
}

#[cfg(test)]
mod tests;
