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

// Request, trace and record ids must be unique, not secret: nothing authorizes by them. A
// per-thread wyrand stream (fastrand, seeded from the process's random hashing keys) gives 128
// bits in a few instructions; aws-lc's DRBG spent about 2.4k instructions on every call
// (callgrind), which was 3% of the proxy's worker per request for one id.
fn random_bytes() -> [u8; 16] {
    fastrand::u128(..).to_le_bytes()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends the lowercase hex of `bytes` to `out`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Formats unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    // In 0..1000, so the cast is exact.
    let millis = ms.rem_euclid(1000) as u32;
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        // Years before 0 or after 9999 would not fit four digits; `time` keeps within
        // ±9999 and RFC 3339 does not go below 0.
        Ok(t) if t.year() >= 0 => {
            // Digit by digit: the audit writer formats one time per record, and `format!`
            // with seven arguments cost it about 3k instructions a record (callgrind).
            let mut out = [0u8; 24];
            let fields = [
                (0, t.year().unsigned_abs(), 4),
                (5, u32::from(u8::from(t.month())), 2),
                (8, u32::from(t.day()), 2),
                (11, u32::from(t.hour()), 2),
                (14, u32::from(t.minute()), 2),
                (17, u32::from(t.second()), 2),
                (20, millis, 3),
            ];
            for (at, mut value, width) in fields {
                for slot in out[at..at + width].iter_mut().rev() {
                    // A remainder of 10 is below 10, so the cast is exact.
                    *slot = b'0' + (value % 10) as u8;
                    value /= 10;
                }
            }
            for (at, sep) in [
                (4, b'-'),
                (7, b'-'),
                (10, b'T'),
                (13, b':'),
                (16, b':'),
                (19, b'.'),
                (23, b'Z'),
            ] {
                out[at] = sep;
            }
            out.iter().map(|&b| char::from(b)).collect()
        }
        _ => ms.to_string(),
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
    fn ids_made_on_many_threads_at_once_are_all_distinct() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..25_000)
                        .flat_map(|_| [time_ordered_id(), random_id()])
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert_eq!(id.len(), 32);
                assert!(all.insert(id), "an id came twice");
            }
        }
        assert_eq!(all.len(), 200_000);
    }

    #[test]
    fn times_format_as_rfc3339_milliseconds_and_parse_back() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(951_782_400_007), "2000-02-29T00:00:00.007Z");
        assert_eq!(format_time(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999Z");
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..10_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let ms = i64::try_from(rng % 253_402_300_800_000).unwrap();
            let text = format_time(ms);
            assert_eq!(text.len(), 24, "{text}");
            assert_eq!(parse_time(&text), Ok(ms), "{text}");
            let t = time::OffsetDateTime::from_unix_timestamp(ms / 1000).unwrap();
            let date = format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day());
            assert!(text.starts_with(&date), "{text} against {date}");
        }
        // Past year 9999 there is no RFC 3339 form: the number of milliseconds instead.
        assert_eq!(format_time(253_402_300_800_000), "253402300800000");
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
