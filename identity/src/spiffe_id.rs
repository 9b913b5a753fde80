//! SPIFFE ids and trust domains, parsed exactly as the SPIFFE ID specification says.

use std::fmt;
use std::str::FromStr;

/// The longest SPIFFE id the specification allows, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name the specification allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// A validated SPIFFE id such as `spiffe://ward.local/ns/shop/sa/checkout`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    raw: String,
    // INVARIANT: raw[SCHEME.len()..td_end] is the trust domain; raw[td_end..] is the path.
    td_end: usize,
}

/// A validated trust domain name such as `ward.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// Why a string is not a SPIFFE id or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input is empty.
    #[error("SPIFFE id is empty")]
    Empty,
    /// The input does not start with `spiffe://`.
    #[error("SPIFFE id must start with `spiffe://`")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `[a-z0-9.-_]` in the trust domain (covers upper case, ports, userinfo).
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes and underscores; found `{0}`"
    )]
    BadTrustDomainChar(char),
    /// A character outside `[A-Za-z0-9.-_]` in the path (covers queries and fragments).
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes and underscores; found `{0}`"
    )]
    BadPathChar(char),
    /// `//` or a trailing `/` in the path.
    #[error("path cannot contain empty segments")]
    EmptySegment,
    /// A `.` or `..` path segment.
    #[error("path cannot contain dot segments")]
    DotSegment,
    /// The id is longer than 2048 bytes.
    #[error("SPIFFE id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    /// A workload id was expected to follow `/ns/<namespace>/sa/<service-account>`.
    #[error("`{0}` does not follow the /ns/<namespace>/sa/<service-account> convention")]
    NotWorkloadPath(String),
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses and validates `input`.
    ///
    /// ```
    /// use ward_identity::SpiffeId;
    /// let id = SpiffeId::parse("spiffe://ward.local/ns/shop/sa/checkout").unwrap();
    /// assert_eq!(id.trust_domain().as_str(), "ward.local");
    /// assert_eq!(id.path(), "/ns/shop/sa/checkout");
    /// assert!(SpiffeId::parse("spiffe://ward.local/../etc").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = input
            .strip_prefix(SCHEME)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        validate_trust_domain(&rest[..td_len])?;
        validate_path(&rest[td_len..])?;
        Ok(Self {
            raw: input.to_owned(),
            td_end: SCHEME.len() + td_len,
        })
    }

    /// Builds an id from a trust domain and a path (empty, or starting with `/`).
    pub fn new(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{}{path}", trust_domain.0))
    }

    /// Builds `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn workload(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::new(
            trust_domain,
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }

    /// The whole id as a string.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.raw[SCHEME.len()..self.td_end].to_owned())
    }

    /// The trust domain name, borrowed.
    pub fn trust_domain_name(&self) -> &str {
        &self.raw[SCHEME.len()..self.td_end]
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.raw[self.td_end..]
    }

    /// `(namespace, service_account)` when the path is `/ns/<ns>/sa/<sa>`.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// Like [`Self::namespace_and_service_account`], as an error when the convention is not met.
    pub fn require_workload_path(&self) -> Result<(&str, &str), SpiffeIdError> {
        self.namespace_and_service_account()
            .ok_or_else(|| SpiffeIdError::NotWorkloadPath(self.raw.clone()))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.raw
    }
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or takes it from a SPIFFE id.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.starts_with(SCHEME) {
            return Ok(SpiffeId::parse(input)?.trust_domain());
        }
        validate_trust_domain(input)?;
        Ok(Self(input.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the trust domain itself, `spiffe://<name>`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            raw: format!("{SCHEME}{}", self.0),
            td_end: SCHEME.len() + self.0.len(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    // The caller split at the first '/', so a non-empty path starts with one.
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
