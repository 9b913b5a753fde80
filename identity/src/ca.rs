//! The certificate authority: init, load, rotate, and issue X.509 and JWT SVIDs.
//!
//! All CA state lives in one file, `ca.json` (mode 0600), replaced atomically by rename, so a
//! crash never leaves a half-rotated CA. `bundle.pem`, `bundle.jwks` and `ca.pem` beside it are
//! derived copies for tools that want files; they are rewritten from `ca.json` on every load.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

use crate::bundle::{BundleError, TrustBundle};
use crate::jwt::{self, JwtError, JwtSigner, JwtSvid};
use crate::pem;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{SvidSource, X509Svid};

/// The default lifetime of a CA made by `ward ca init`.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The default lifetime of an X.509-SVID.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// The default lifetime of a JWT-SVID.
pub const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// How long a rotated-out root stays in the bundle by default.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);

const STATE_FILE: &str = "ca.json";
const STATE_VERSION: u32 = 1;
// Certificates start slightly in the past so a peer whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(30);

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `init` found an existing CA.
    #[error("a CA already exists in `{}`: refusing to overwrite it (use `ward ca rotate`)", .0.display())]
    AlreadyExists(PathBuf),
    /// No CA where one was expected.
    #[error("no CA in `{}`: run `ward ca init --dir {}` first", .0.display(), .0.display())]
    NotFound(PathBuf),
    /// A file could not be read or written.
    #[error("`{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is readable by others; the CA refuses to use it.
    #[error("`{}` has mode {mode:o}: CA keys must not be readable by group or others (chmod 600)", path.display())]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The state file does not parse or is inconsistent.
    #[error("`{}` is not a valid Ward CA: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The upstream certificate or key is unusable.
    #[error("upstream CA: {0}")]
    Upstream(String),
    /// An SVID for another trust domain was requested.
    #[error("`{id}` is not in trust domain `{trust_domain}`")]
    ForeignTrustDomain {
        /// The requested id.
        id: String,
        /// This CA's trust domain.
        trust_domain: String,
    },
    /// The requested lifetime is zero, or the CA has expired.
    #[error("cannot issue: {0}")]
    Validity(String),
    /// Certificate generation failed.
    #[error("generating certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// JWT signing or key handling failed.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// The bundle could not be built.
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// Options for [`Ca::init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The trust domain the CA issues SVIDs in.
    pub trust_domain: TrustDomain,
    /// Lifetime of the CA certificate.
    pub ttl: Duration,
    /// An existing CA to chain under, instead of a self-signed root.
    pub upstream: Option<Upstream>,
}

/// Options for [`Ca::rotate`].
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// How long the old root and JWT key stay in the bundle.
    pub grace: Duration,
    /// Lifetime of the new CA certificate.
    pub ttl: Duration,
    /// Required when the CA is an intermediate: the CA to sign the new one.
    pub upstream: Option<Upstream>,
}

/// An enterprise CA to sign Ward's CA as an intermediate.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// PEM: the issuing certificate first, then its chain up to and including the root.
    pub cert_path: PathBuf,
    /// PEM (PKCS#8) key of the issuing certificate.
    pub key_path: PathBuf,
}

/// A loaded CA, ready to issue SVIDs.
pub struct Ca {
    dir: PathBuf,
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    // Sent after the leaf in every SVID chain: our CA cert when it is an intermediate, then the
    // upstream intermediates. Empty for a self-signed root.
    chain: Vec<CertificateDer<'static>>,
    ca_cert: CertificateDer<'static>,
    not_after: SystemTime,
    jwt: JwtSigner,
    bundle: Arc<TrustBundle>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    version: u32,
    trust_domain: String,
    /// Our signing CA certificate.
    ca_cert: String,
    ca_key: String,
    /// Upstream certificates from the issuer of `ca_cert` up to, not including, the root.
    #[serde(default)]
    upstream_chain: String,
    /// The root: `ca_cert` itself when self-signed.
    root: String,
    jwt_key: String,
    /// Roots and JWT keys rotated out, kept in the bundle until `retire_at`.
    #[serde(default)]
    retired: Vec<Retired>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Retired {
    root: Option<String>,
    jwks: String,
    retire_at: u64,
}

// === impl Ca ===

impl Ca {
    /// Creates a new CA in `dir` (made 0700 if missing); refuses to overwrite an existing one.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<Self, CaError> {
        let state_path = dir.join(STATE_FILE);
        if state_path.exists() {
            return Err(CaError::AlreadyExists(dir.to_owned()));
        }
        create_private_dir(dir)?;
        let state = new_state(opts)?;
        write_state(dir, &state, true)?;
        Self::load(dir)
    }

    /// Loads the CA in `dir` and refreshes the derived PEM/JWKS files.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        Ok(Self::load_with_state(dir)?.0)
    }

    /// Loads the CA and also returns the state it was built from.
    fn load_with_state(dir: &Path) -> Result<(Self, State), CaError> {
        let path = dir.join(STATE_FILE);
        let text = read_private(&path).map_err(|e| match e {
            CaError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                CaError::NotFound(dir.to_owned())
            }
            other => other,
        })?;
        let corrupt = |reason: String| CaError::Corrupt {
            path: path.clone(),
            reason,
        };
        let state: State = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!("unsupported version {}", state.version)));
        }
        let ca = Self::from_state(dir, &state).map_err(|e| match e {
            CaError::Io { .. } => e,
            other => corrupt(other.to_string()),
        })?;
        ca.write_derived_files()?;
        Ok((ca, state))
    }

    /// Replaces the root (or, under an upstream, the intermediate) and the JWT key; the old
    /// root and key stay in the bundle for `opts.grace` so SVIDs already issued keep verifying.
    pub fn rotate(dir: &Path, opts: RotateOptions) -> Result<Self, CaError> {
        let RotateOptions {
            grace,
            ttl,
            upstream,
        } = opts;
        let (current, old) = Self::load_with_state(dir)?;
        let self_signed = old.upstream_chain.is_empty() && old.root == old.ca_cert;
        if !self_signed && upstream.is_none() {
            return Err(CaError::Upstream(
                "this CA is an intermediate: rotate it with --upstream-cert and --upstream-key"
                    .into(),
            ));
        }
        let now = unix_now();
        let retire_at = now + grace.as_secs();
        let mut retired: Vec<Retired> = old
            .retired
            .into_iter()
            .filter(|r| r.retire_at > now)
            .collect();
        let current_jwks = jwt::jwks_json(current.bundle.jwt_keys().get(..1).unwrap_or_default());
        let opts = InitOptions {
            trust_domain: current.trust_domain.clone(),
            ttl,
            upstream,
        };
        let state = new_state(&opts)?;
        // A new upstream root (rare) also keeps the old one for the grace period.
        let root_changed = state.root != old.root;
        retired.push(Retired {
            root: root_changed.then(|| old.root.clone()),
            jwks: current_jwks,
            retire_at,
        });
        let state = State { retired, ..state };
        write_state(dir, &state, false)?;
        tracing::info!(trust_domain = %current.trust_domain, grace_secs = grace.as_secs(), "CA rotated");
        Self::load(dir)
    }

    fn from_state(dir: &Path, state: &State) -> Result<Self, CaError> {
        let trust_domain = TrustDomain::parse(&state.trust_domain)
            .map_err(|e| CaError::Upstream(format!("trust domain: {e}")))?;
        let ca_cert = one_cert(&state.ca_cert, "ca_cert")?;
        let ca_key = KeyPair::from_pem(&state.ca_key)?;
        let issuer = Issuer::from_ca_cert_der(&ca_cert, ca_key)?;
        let root = one_cert(&state.root, "root")?;
        let mut chain = Vec::new();
        if root != ca_cert {
            chain.push(ca_cert.clone());
            chain.extend(pem::decode_certs(&state.upstream_chain).map_err(CaError::Upstream)?);
        }
        let not_after = cert_not_after(&ca_cert)?;
        let jwt_key = KeyPair::from_pem(&state.jwt_key)?;
        let (jwt, jwt_public) = JwtSigner::new(&jwt_key.serialize_der(), jwt_key.public_key_raw())?;
        let now = unix_now();
        let mut roots = vec![root];
        let mut keys = vec![jwt_public];
        for r in state.retired.iter().filter(|r| r.retire_at > now) {
            if let Some(old_root) = &r.root {
                roots.push(one_cert(old_root, "retired root")?);
            }
            keys.extend(jwt::parse_jwks(&r.jwks)?);
        }
        let bundle = TrustBundle::new(trust_domain.clone(), roots, keys)?;
        Ok(Self {
            dir: dir.to_owned(),
            trust_domain,
            issuer,
            chain,
            ca_cert,
            not_after,
            jwt,
            bundle: Arc::new(bundle),
        })
    }

    fn write_derived_files(&self) -> Result<(), CaError> {
        write_atomic(
            &self.dir.join("bundle.pem"),
            self.bundle.to_pem().as_bytes(),
            0o644,
        )?;
        write_atomic(
            &self.dir.join("bundle.jwks"),
            self.bundle.jwks_json().as_bytes(),
            0o644,
        )?;
        write_atomic(
            &self.dir.join("ca.pem"),
            pem::encode("CERTIFICATE", &self.ca_cert).as_bytes(),
            0o644,
        )
    }

    /// The directory the CA lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// When the CA certificate expires; no SVID outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The CA's own certificate (the root when self-signed).
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        &self.ca_cert
    }

    fn check_id(&self, id: &SpiffeId) -> Result<(), CaError> {
        if id.trust_domain_name() != self.trust_domain.as_str() {
            return Err(CaError::ForeignTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        Ok(())
    }

    /// `(now, not_before, not_after)` for a credential of lifetime `ttl`.
    fn validity(&self, ttl: Duration) -> Result<(SystemTime, SystemTime, SystemTime), CaError> {
        if ttl.is_zero() {
            return Err(CaError::Validity("TTL must be positive".into()));
        }
        let now = SystemTime::now();
        if now >= self.not_after {
            return Err(CaError::Validity("the CA certificate has expired".into()));
        }
        Ok((now, now - BACKDATE, (now + ttl).min(self.not_after)))
    }
}

impl SvidSource for Ca {
    fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    fn issue_x509(&self, id: &SpiffeId, ttl: Duration) -> Result<X509Svid, CaError> {
        self.check_id(id)?;
        let (issued_at, not_before, not_after) = self.validity(ttl)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Ward");
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut cert_chain = Vec::with_capacity(1 + self.chain.len());
        cert_chain.push(cert.der().clone());
        cert_chain.extend(self.chain.iter().cloned());
        Ok(X509Svid {
            spiffe_id: id.clone(),
            cert_chain,
            private_key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_before,
            issued_at,
            not_after: truncate_to_secs(not_after),
        })
    }

    fn issue_jwt(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<JwtSvid, CaError> {
        self.check_id(id)?;
        let (_, _, not_after) = self.validity(ttl)?;
        Ok(self.jwt.sign(id, audience, ttl, not_after)?)
    }

    fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.clone()
    }
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .field("trust_domain", &self.trust_domain.as_str())
            .field("intermediate", &!self.chain.is_empty())
            .finish_non_exhaustive()
    }
}

/// Makes the key pair and certificate(s) of a new CA generation.
fn new_state(opts: &InitOptions) -> Result<State, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let td = &opts.trust_domain;
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Ward");
    // A distinct name per generation, so chain building never confuses a rotated-out root with
    // its successor (they share a trust domain and would otherwise share a subject).
    let mut tag = [0u8; 4];
    aws_lc_rs::rand::fill(&mut tag)
        .map_err(|_| CaError::Validity("the system random generator failed".into()))?;
    let generation: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Ward CA {td} {generation}"));
    params.subject_alt_names = vec![SanType::URI(td.id().as_str().try_into()?)];
    // The CA signs leaves only; no intermediates below it.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + opts.ttl).into();
    let (ca_cert, upstream_chain, root) = match &opts.upstream {
        None => {
            let cert = params.self_signed(&key)?;
            (cert.pem(), String::new(), cert.pem())
        }
        Some(up) => {
            let (issuer, chain, root, upstream_not_after) = load_upstream(up)?;
            params.not_after = (now + opts.ttl).min(upstream_not_after).into();
            params.use_authority_key_identifier_extension = true;
            let cert = params.signed_by(&key, &issuer)?;
            (cert.pem(), chain, root)
        }
    };
    let jwt_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    Ok(State {
        version: STATE_VERSION,
        trust_domain: td.to_string(),
        ca_cert,
        ca_key: key.serialize_pem(),
        upstream_chain,
        root,
        jwt_key: jwt_key.serialize_pem(),
        retired: Vec::new(),
    })
}

/// Reads an upstream CA: its issuer, the intermediates to send, the root, and its expiry.
fn load_upstream(
    up: &Upstream,
) -> Result<(Issuer<'static, KeyPair>, String, String, SystemTime), CaError> {
    let cert_text = fs::read_to_string(&up.cert_path).map_err(|source| CaError::Io {
        path: up.cert_path.clone(),
        source,
    })?;
    let key_text = read_private(&up.key_path)?;
    let certs = pem::decode_certs(&cert_text)
        .map_err(|e| CaError::Upstream(format!("`{}`: {e}", up.cert_path.display())))?;
    let (issuing, root) = match (certs.first(), certs.last()) {
        (Some(first), Some(last)) => (first.clone(), last.clone()),
        _ => {
            return Err(CaError::Upstream(format!(
                "`{}` holds no certificate",
                up.cert_path.display()
            )));
        }
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(&issuing)
        .map_err(|e| CaError::Upstream(format!("`{}`: {e}", up.cert_path.display())))?;
    let is_ca = parsed
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(CaError::Upstream(format!(
            "`{}` is not a CA certificate (basicConstraints CA:true is missing)",
            up.cert_path.display()
        )));
    }
    let key = KeyPair::from_pem(&key_text)
        .map_err(|e| CaError::Upstream(format!("`{}`: {e}", up.key_path.display())))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(CaError::Upstream(format!(
            "`{}` does not match the certificate in `{}`",
            up.key_path.display(),
            up.cert_path.display()
        )));
    }
    let not_after = crate::verify::not_after(&parsed);
    let issuer = Issuer::from_ca_cert_der(&issuing, key)?;
    // Everything below the root is sent in SVID chains; the root is the trust anchor.
    let chain: String = certs[..certs.len() - 1]
        .iter()
        .map(|c| pem::encode("CERTIFICATE", c))
        .collect();
    Ok((issuer, chain, pem::encode("CERTIFICATE", &root), not_after))
}

fn one_cert(text: &str, what: &str) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = pem::decode_certs(text).map_err(CaError::Upstream)?;
    match certs.len() {
        1 => Ok(certs.remove(0)),
        n => Err(CaError::Upstream(format!(
            "{what}: expected one certificate, found {n}"
        ))),
    }
}

fn cert_not_after(cert: &CertificateDer<'_>) -> Result<SystemTime, CaError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CaError::Upstream(e.to_string()))?;
    Ok(crate::verify::not_after(&parsed))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| CaError::Validity("the system random generator failed".into()))?;
    // A positive 128-bit integer: clear the sign bit, keep the top byte non-zero for full length.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    UNIX_EPOCH
        + Duration::from_secs(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
}

fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// Reads a file that holds a private key, refusing one that group or others can read.
fn read_private(path: &Path) -> Result<String, CaError> {
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(CaError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    fs::read_to_string(path).map_err(io)
}

fn write_state(dir: &Path, state: &State, create_new: bool) -> Result<(), CaError> {
    let path = dir.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| CaError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if create_new && path.exists() {
        return Err(CaError::AlreadyExists(dir.to_owned()));
    }
    write_atomic(&path, text.as_bytes(), 0o600)
}

/// Writes `bytes` to a temporary file with `mode`, syncs it, and renames it over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let io = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
