//! JWT-SVIDs: ES256 tokens whose `sub` is a SPIFFE id, and their validation against a bundle.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::spiffe_id::{SpiffeId, TrustDomain};

/// A signed JWT-SVID.
#[derive(Clone)]
pub struct JwtSvid {
    /// The compact JWS.
    pub token: String,
    /// The SPIFFE id in `sub`.
    pub spiffe_id: SpiffeId,
    /// The `exp` claim.
    pub expiry: SystemTime,
}

/// What a valid JWT-SVID says.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtSvidClaims {
    /// The `sub` claim, parsed.
    pub spiffe_id: SpiffeId,
    /// Every claim of the token, as sent.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a JWT-SVID was not issued or not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The token is not a well-formed JWS.
    #[error("malformed JWT: {0}")]
    Malformed(String),
    /// The `alg` header is not ES256.
    #[error("JWT algorithm `{0}` is not allowed: JWT-SVIDs must use ES256")]
    Algorithm(String),
    /// The header has no `kid`.
    #[error("JWT header has no `kid`")]
    MissingKeyId,
    /// No key in the bundle has this `kid`.
    #[error("JWT key id `{0}` is not in the trust bundle")]
    UnknownKeyId(String),
    /// The signature does not verify.
    #[error("JWT signature is invalid")]
    BadSignature,
    /// `exp` is in the past.
    #[error("JWT has expired")]
    Expired,
    /// `aud` does not contain the expected audience.
    #[error("JWT audience does not include `{0}`")]
    Audience(String),
    /// `sub` is missing or not a SPIFFE id of the bundle's trust domain.
    #[error("JWT subject is not a SPIFFE id of trust domain `{trust_domain}`: {reason}")]
    Subject {
        /// The bundle's trust domain.
        trust_domain: String,
        /// What was wrong.
        reason: String,
    },
    /// A required claim is missing or has the wrong type.
    #[error("JWT claims are invalid: {0}")]
    Claims(String),
    /// No audience was asked for.
    #[error("a JWT-SVID needs at least one audience")]
    NoAudience,
    /// Signing failed.
    #[error("signing JWT: {0}")]
    Signing(String),
}

/// The private half of a JWT signing key.
pub(crate) struct JwtSigner {
    kid: String,
    key: EncodingKey,
}

/// A JWT public key as published in the bundle.
#[derive(Clone)]
pub struct JwtPublicKey {
    /// Key id (`kid`).
    pub kid: String,
    x: String,
    y: String,
    key: DecodingKey,
}

#[derive(Serialize)]
struct IssueClaims<'a> {
    sub: &'a str,
    aud: &'a [String],
    exp: u64,
    iat: u64,
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Serialize, Deserialize)]
struct Jwk {
    kty: String,
    crv: String,
    x: String,
    y: String,
    kid: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    use_: Option<String>,
}

// === impl JwtSigner ===

impl JwtSigner {
    /// Builds a signer from a P-256 key (PKCS#8 DER) and its uncompressed public point.
    pub(crate) fn new(
        pkcs8_der: &[u8],
        public_point: &[u8],
    ) -> Result<(Self, JwtPublicKey), JwtError> {
        let public = JwtPublicKey::from_point(public_point)?;
        let signer = Self {
            kid: public.kid.clone(),
            key: EncodingKey::from_ec_der(pkcs8_der),
        };
        Ok((signer, public))
    }

    /// Signs a JWT-SVID for `id` and `audience`, expiring after `ttl` (capped at `not_after`).
    pub(crate) fn sign(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
        not_after: SystemTime,
    ) -> Result<JwtSvid, JwtError> {
        if audience.is_empty() || audience.iter().any(String::is_empty) {
            return Err(JwtError::NoAudience);
        }
        let now = SystemTime::now();
        let expiry = (now + ttl).min(not_after);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".to_owned());
        let claims = IssueClaims {
            sub: id.as_str(),
            aud: audience,
            exp: unix_secs(expiry),
            iat: unix_secs(now),
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| JwtError::Signing(e.to_string()))?;
        Ok(JwtSvid {
            token,
            spiffe_id: id.clone(),
            expiry: UNIX_EPOCH + Duration::from_secs(claims.exp),
        })
    }
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a bearer credential: never print it.
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id.as_str())
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for JwtSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

// === impl JwtPublicKey ===

impl JwtPublicKey {
    /// Builds the key from an uncompressed P-256 point (`04 || x || y`); `kid` is derived from it.
    pub(crate) fn from_point(point: &[u8]) -> Result<Self, JwtError> {
        if point.len() != 65 || point[0] != 4 {
            return Err(JwtError::Malformed(
                "public key is not an uncompressed P-256 point".into(),
            ));
        }
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, point);
        let kid = b64.encode(&digest.as_ref()[..16]);
        Self::from_components(kid, b64.encode(&point[1..33]), b64.encode(&point[33..]))
    }

    fn from_components(kid: String, x: String, y: String) -> Result<Self, JwtError> {
        let key = DecodingKey::from_ec_components(&x, &y)
            .map_err(|e| JwtError::Malformed(format!("JWK `{kid}`: {e}")))?;
        Ok(Self { kid, x, y, key })
    }
}

impl fmt::Debug for JwtPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtPublicKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Renders keys as a SPIFFE JWT bundle (a JWKS whose keys have `use: jwt-svid`).
pub(crate) fn jwks_json(keys: &[JwtPublicKey]) -> String {
    let keys: Vec<Jwk> = keys
        .iter()
        .map(|k| Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: k.x.clone(),
            y: k.y.clone(),
            kid: k.kid.clone(),
            use_: Some("jwt-svid".into()),
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// Parses a JWKS (as made by [`jwks_json`]) back into keys; non-P-256 keys are rejected.
pub(crate) fn parse_jwks(text: &str) -> Result<Vec<JwtPublicKey>, JwtError> {
    let jwks: Jwks = serde_json::from_str(text).map_err(|e| JwtError::Malformed(e.to_string()))?;
    jwks.keys
        .into_iter()
        .map(|k| {
            if k.kty != "EC" || k.crv != "P-256" {
                return Err(JwtError::Malformed(format!(
                    "JWK `{}` is not an EC P-256 key",
                    k.kid
                )));
            }
            JwtPublicKey::from_components(k.kid, k.x, k.y)
        })
        .collect()
}

/// Validates without the bundle's cache: always the full signature check (for benchmarks and
/// for callers that must not share a cache).
pub fn validate_uncached(
    bundle: &crate::TrustBundle,
    token: &str,
    audience: &str,
) -> Result<JwtSvidClaims, JwtError> {
    validate(token, audience, bundle.trust_domain(), bundle.jwt_keys())
}

/// Validates `token` for `audience` against `keys` of `trust_domain`.
pub(crate) fn validate(
    token: &str,
    audience: &str,
    trust_domain: &TrustDomain,
    keys: &[JwtPublicKey],
) -> Result<JwtSvidClaims, JwtError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(JwtError::Algorithm(format!("{:?}", header.alg)));
    }
    let kid = header.kid.ok_or(JwtError::MissingKeyId)?;
    let key = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| JwtError::UnknownKeyId(kid.clone()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.leeway = 0;
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key.key,
        &validation,
    )
    .map_err(|e| classify(e, audience))?;
    let subject_error = |reason: String| JwtError::Subject {
        trust_domain: trust_domain.to_string(),
        reason,
    };
    let sub = data
        .claims
        .get("sub")
        .and_then(|v| v.as_str())
        .ok_or_else(|| subject_error("missing".into()))?;
    let spiffe_id = SpiffeId::parse(sub).map_err(|e| subject_error(e.to_string()))?;
    if spiffe_id.trust_domain_name() != trust_domain.as_str() {
        return Err(subject_error(format!(
            "`{spiffe_id}` is in another trust domain"
        )));
    }
    Ok(JwtSvidClaims {
        spiffe_id,
        claims: data.claims,
    })
}

fn classify(err: jsonwebtoken::errors::Error, audience: &str) -> JwtError {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::InvalidAudience => JwtError::Audience(audience.to_owned()),
        ErrorKind::MissingRequiredClaim(c) => JwtError::Claims(format!("missing `{c}`")),
        _ => JwtError::Malformed(err.to_string()),
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
