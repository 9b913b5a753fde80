//! One authorization decision, as the audit log keeps it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The request was let through.
    Allow,
    /// The request was refused.
    Deny,
}

/// How the decision was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The decision was enforced.
    Enforce,
    /// Decided and recorded, but the request was allowed regardless.
    DryRun,
    /// A candidate revision was evaluated next to the enforced one.
    Shadow,
}

/// A candidate revision's decision, evaluated in shadow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// The candidate's revision.
    pub revision: String,
    /// What it decided.
    pub decision: Decision,
    /// Its determining policies.
    pub policies: Vec<String>,
}

/// One decision. The JSON form (field names and order) is stable: it is hashed into the
/// chain and is the export format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Unique id of the record (32 hex digits).
    pub id: String,
    /// When the decision was made, UTC, millisecond precision (RFC 3339 in JSON).
    #[serde(
        rename = "time",
        serialize_with = "ser_time",
        deserialize_with = "de_time"
    )]
    pub time_ms: i64,
    /// The request id (`x-request-id`).
    pub request_id: String,
    /// The W3C trace id, if traced.
    pub trace_id: Option<String>,
    /// The proxy or gateway that decided.
    pub node: String,
    /// The principal: a SPIFFE id or a user.
    pub principal: String,
    /// The end user behind a workload call, if any.
    pub end_user: Option<String>,
    /// The Cedar action.
    pub action: String,
    /// The Cedar resource.
    pub resource: String,
    /// HTTP method, for HTTP requests.
    pub method: Option<String>,
    /// Normalized path, for HTTP requests.
    pub path: Option<String>,
    /// The decision that took effect.
    pub decision: Decision,
    /// Ids of the policies that determined it.
    pub policies: Vec<String>,
    /// Evaluation errors (each one denies).
    pub errors: Vec<String>,
    /// The policy revision that decided.
    pub policy_revision: String,
    /// Enforce, dry-run or shadow.
    pub mode: Mode,
    /// The break-glass grant that applied, if any.
    pub grant_id: Option<String>,
    /// True when a break-glass grant let a denied request through.
    pub bypass: bool,
    /// What policy decided before a bypass or dry-run changed the outcome.
    pub original_decision: Option<Decision>,
    /// The candidate revision's decision, in shadow mode.
    pub candidate: Option<Candidate>,
    /// Time spent deciding, in microseconds.
    pub latency_us: u64,
}

// === impl Decision ===

impl Decision {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            other => Err(format!(
                "unknown decision `{other}`: expected `allow` or `deny`"
            )),
        }
    }
}

// === impl Mode ===

impl Mode {
    /// `enforce`, `dry-run` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::DryRun => "dry-run",
            Self::Shadow => "shadow",
        }
    }
}

// === impl AuditRecord ===

impl AuditRecord {
    /// A record with a fresh time-ordered id and the current time; the caller fills the rest.
    pub fn new(node: &str, request_id: &str) -> Self {
        Self {
            id: time_ordered_id(),
            time_ms: now_ms(),
            request_id: request_id.to_owned(),
            trace_id: None,
            node: node.to_owned(),
            principal: String::new(),
            end_user: None,
            action: String::new(),
            resource: String::new(),
            method: None,
            path: None,
            decision: Decision::Deny,
            policies: Vec::new(),
            errors: Vec::new(),
            policy_revision: String::new(),
            mode: Mode::Enforce,
            grant_id: None,
            bypass: false,
            original_decision: None,
            candidate: None,
            latency_us: 0,
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// 128 random bits as 32 hex digits.
pub fn random_id() -> String {
    hex(&random_bytes())
}

/// A UUIDv7 (RFC 9562) as 32 hex digits: Unix milliseconds, then 74 random bits.
///
/// Ids made one after another sort by time, so an index on them (the audit log's request id)
/// grows at its end; random ids put every insert on a different page.
pub fn time_ordered_id() -> String {
    let mut bytes = random_bytes();
    let ms = u64::try_from(now_ms()).unwrap_or(0).to_be_bytes();
    bytes[..6].copy_from_slice(&ms[2..]);
    bytes[6] = 0x70 | (bytes[6] & 0x0f);
    bytes[8] = 0x80 | (bytes[8] & 0x3f);
    hex(&bytes)
}

fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    // On failure the id is still unique enough to tell records apart: time plus a counter.
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&now_ms().to_be_bytes());
        bytes[8..].copy_from_slice(&n.to_be_bytes());
    }
    bytes
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Formats unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => ms.to_string(),
    }
}

/// Parses RFC 3339 (any offset) into unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).map_err(|e| e.to_string())
}

fn ser_time<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*ms))
}

fn de_time<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = String::deserialize(d)?;
    parse_time(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_is_stable_and_round_trips() {
        let mut r = AuditRecord::new("proxy-a", "req-1");
        r.id = "00".repeat(16);
        r.time_ms = 1_764_430_000_123;
        r.principal = "spiffe://ward.local/ns/a/sa/b".into();
        r.action = "GET".into();
        r.resource = "orders-api".into();
        r.decision = Decision::Allow;
        r.policies = vec!["allow-checkout".into()];
        r.policy_revision = "abc".into();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with(r#"{"id":"00000000000000000000000000000000","time":"2025-11-29T15:26:40.123Z","request_id":"req-1""#), "{json}");
        assert!(json.contains(r#""mode":"enforce""#));
        let back: AuditRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn time_ordered_ids_are_uuid_v7_and_sort_by_time() {
        let before = now_ms();
        let first = time_ordered_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = time_ordered_id();
        for id in [&first, &second] {
            assert_eq!(id.len(), 32, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(&id[12..13], "7", "version nibble of {id}");
            assert!("89ab".contains(&id[16..17]), "variant of {id}");
        }
        let ms = i64::from_str_radix(&first[..12], 16).unwrap();
        assert!(
            (before..=now_ms()).contains(&ms),
            "{first} carries {ms}, not now"
        );
        assert!(first < second, "{first} sorts before {second}");
        assert_ne!(time_ordered_id(), time_ordered_id());
        assert_eq!(hex(&[0x00, 0x9f, 0xff]), "009fff");
    }

    #[test]
    fn unknown_fields_and_bad_times_are_rejected() {
        let r = AuditRecord::new("n", "r");
        let mut v = serde_json::to_value(&r).unwrap();
        v["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<AuditRecord>(v).is_err());
        assert!(parse_time("yesterday").is_err());
        assert_eq!(parse_time("1970-01-01T00:00:01.5+00:00"), Ok(1500));
    }
}
