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

use super::Snapshot;
use crate::request::{EndUser, Principal, Request, Resource};

/// How many outcomes a snapshot remembers before it starts over: at 4,096 a proxy fed only
/// new paths held about 5 MB more resident memory than without remembering (PERFORMANCE.md).
pub(crate) const CAPACITY: usize = 1_024;

/// The context attributes some policy reads (`context.x` or `context has x`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ContextReads {
    method: bool,
    path: bool,
    host: bool,
    mtls: bool,
    time: bool,
    headers: bool,
    source_ip: bool,
}

/// Everything a remembered decision depends on, written out as bytes: a tag and a length
/// before each part, so two different requests never write the same key. One allocation per
/// key, and two words per entry in the cache's table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MemoKey(Box<[u8]>);

/// Writes a [`MemoKey`].
struct KeyWriter {
    bytes: Vec<u8>,
    /// False once a part was too long for its length to be written: such a request is not
    /// remembered.
    whole: bool,
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
            "source_ip" => self.source_ip = true,
            // Always in the key: the context carries it only when present.
            "user" => {}
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

// === impl KeyWriter ===

impl KeyWriter {
    fn part(&mut self, tag: u8, bytes: &[u8]) -> &mut Self {
        match u32::try_from(bytes.len()) {
            Ok(len) => {
                self.bytes.push(tag);
                self.bytes.extend_from_slice(&len.to_le_bytes());
                self.bytes.extend_from_slice(bytes);
            }
            Err(_) => self.whole = false,
        }
        self
    }

    fn part_if(&mut self, read: bool, tag: u8, bytes: &[u8]) -> &mut Self {
        if read { self.part(tag, bytes) } else { self }
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Whether a policy may read `context.source_ip` (yes when the policies' reads are not
    /// known); when none does, requests leave the optional attribute out (building an
    /// `ipaddr` value is a good part of a request's cost).
    pub(crate) fn reads_source_ip(&self) -> bool {
        self.context_reads.is_none_or(|r| r.source_ip)
    }

    /// The key `req`'s decision is remembered under, or `None` when it is not remembered: the
    /// policies read the context in a way not accounted for, or the request brings entities of
    /// its own (extra entities, or an end user's claims).
    pub(crate) fn memo_key(&self, req: &Request) -> Option<MemoKey> {
        let reads = self.context_reads?;
        if !req.entities.is_empty() {
            return None;
        }
        let c = &req.context;
        let mut key = KeyWriter {
            bytes: Vec::with_capacity(160),
            whole: true,
        };
        match &req.principal {
            Principal::Workload(id) => key.part(b'w', id.as_str().as_bytes()),
            Principal::Entity(r) => key
                .part(b'e', r.type_name.as_bytes())
                .part(b'i', r.id.as_bytes()),
            Principal::User(_) => return None,
        };
        key.part(b'a', req.action.as_bytes());
        match &req.resource {
            Resource::Service(name) => key.part(b's', name.as_bytes()),
            Resource::ExternalHost(host) => key.part(b'x', host.as_bytes()),
            Resource::Entity(r) => key
                .part(b'r', r.type_name.as_bytes())
                .part(b'i', r.id.as_bytes()),
        };
        match &c.user {
            None => {}
            Some(EndUser::Id(id)) => {
                key.part(b'u', id.as_bytes());
            }
            Some(EndUser::Claims(_)) => return None,
        }
        key.part_if(reads.method, b'M', c.method.as_bytes())
            .part_if(reads.path, b'P', c.path.as_bytes())
            .part_if(reads.host, b'H', c.host.as_bytes())
            .part_if(reads.mtls, b'T', &[u8::from(c.mtls)])
            .part_if(reads.time, b'N', &c.time.to_le_bytes());
        // Which declared headers are present decides whether the request conforms to the
        // schema, so their names always count; their values only when read.
        for (name, value) in self.declared_headers_of(&req.action, c) {
            key.part(b'h', name.as_bytes())
                .part_if(reads.headers, b'v', value.as_bytes());
        }
        // Only when a policy reads `source_ip` (otherwise the context leaves it out).
        match c.source_ip.filter(|_| reads.source_ip) {
            None => {}
            Some(IpAddr::V4(ip)) => {
                key.part(b'4', &ip.octets());
            }
            Some(IpAddr::V6(ip)) => {
                key.part(b'6', &ip.octets());
            }
        }
        key.whole.then(|| MemoKey(key.bytes.into_boxed_slice()))
    }
}

#[cfg(test)]
mod tests;
