//! rustls verifiers that accept only valid X.509-SVIDs and report the peer's SPIFFE id.
//!
//! Both verifiers check, in order: the leaf parses; it has exactly one URI SAN and it is a
//! valid SPIFFE id; it is not a CA and its key usage is right for a leaf; its trust domain has
//! a bundle; and the chain verifies against that bundle's authorities within the validity
//! window. The server verifier also checks the server's id against what the caller expects,
//! instead of DNS names. Each failure has its own [`VerifyError`] variant.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::bundle::TrustBundle;
use crate::spiffe_id::{SpiffeId, SpiffeIdError};
use crate::svid::X509Svid;

/// Why a peer certificate is not an acceptable X.509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The certificate does not parse.
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    /// The leaf has no URI SAN.
    #[error("X.509-SVID has no URI SAN")]
    NoUriSan,
    /// The leaf has more than one URI SAN.
    #[error("X.509-SVID must have exactly one URI SAN, found {0}")]
    MultipleUriSans(usize),
    /// The URI SAN is not a SPIFFE id.
    #[error("URI SAN is not a valid SPIFFE id: {0}")]
    InvalidSpiffeId(SpiffeIdError),
    /// The leaf is a CA certificate.
    #[error("X.509-SVID leaf must not be a CA (basicConstraints CA:true)")]
    LeafIsCa,
    /// The leaf's key usage is wrong for an SVID.
    #[error("X.509-SVID key usage: {0}")]
    KeyUsage(&'static str),
    /// No bundle for the peer's trust domain.
    #[error("trust domain `{0}` is not trusted")]
    UntrustedTrustDomain(String),
    /// The certificate has expired.
    #[error("certificate has expired")]
    Expired,
    /// The certificate is not valid yet.
    #[error("certificate is not valid yet")]
    NotYetValid,
    /// The chain does not lead to an authority of the trust domain's bundle.
    #[error("certificate is not signed by an authority of the trust bundle")]
    UnknownIssuer,
    /// Another chain validation failure.
    #[error("certificate chain is invalid: {0}")]
    Chain(String),
    /// The server presented a different SPIFFE id than expected.
    #[error("server presented `{got}`, expected {expected}")]
    UnexpectedServerId {
        /// What the caller expected.
        expected: String,
        /// What the server presented.
        got: String,
    },
}

/// The trust bundles a verifier accepts, one per trust domain, swapped atomically on rotation.
#[derive(Debug, Clone)]
pub struct Bundles(Arc<ArcSwap<BTreeMap<String, Arc<TrustBundle>>>>);

/// Which server ids a client accepts.
#[derive(Clone)]
pub enum ServerIdentity {
    /// Exactly this id.
    Exact(SpiffeId),
    /// Any of these ids (e.g. the endpoints of one service).
    AnyOf(Vec<SpiffeId>),
    /// Any id that passed verification (any trusted trust domain).
    AnyTrusted,
    /// Any id the predicate accepts.
    Predicate(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>),
}

/// Checks SVID chains against [`Bundles`]; shared by the client and server verifiers.
#[derive(Debug, Clone)]
pub struct SvidVerifier {
    bundles: Bundles,
    provider: Arc<CryptoProvider>,
}

/// A rustls `ClientCertVerifier` for inbound mTLS: requires a client X.509-SVID.
#[derive(Debug)]
pub struct ClientVerifier(SvidVerifier);

/// A rustls `ServerCertVerifier` for outbound mTLS: checks the server's SPIFFE id, not DNS.
#[derive(Debug)]
pub struct ServerVerifier {
    inner: SvidVerifier,
    expected: ServerIdentity,
}

// === impl Bundles ===

impl Bundles {
    /// Trusts the given bundles.
    pub fn new(bundles: impl IntoIterator<Item = Arc<TrustBundle>>) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(Self::index(bundles))))
    }

    /// Replaces every bundle at once; handshakes that start later see the new set. Returns
    /// whether the X.509 authorities changed (a trust domain added or dropped, or its CAs
    /// rotated), i.e. whether a chain verified before might no longer verify.
    pub fn replace(&self, bundles: impl IntoIterator<Item = Arc<TrustBundle>>) -> bool {
        let new = Arc::new(Self::index(bundles));
        let old = self.0.swap(new.clone());
        old.len() != new.len()
            || old.iter().zip(new.iter()).any(|((d1, b1), (d2, b2))| {
                d1 != d2 || b1.x509_authorities() != b2.x509_authorities()
            })
    }

    /// The bundle for `trust_domain`, if trusted.
    pub fn get(&self, trust_domain: &str) -> Option<Arc<TrustBundle>> {
        self.0.load().get(trust_domain).cloned()
    }

    fn index(
        bundles: impl IntoIterator<Item = Arc<TrustBundle>>,
    ) -> BTreeMap<String, Arc<TrustBundle>> {
        bundles
            .into_iter()
            .map(|b| (b.trust_domain().to_string(), b))
            .collect()
    }
}

// === impl ServerIdentity ===

impl ServerIdentity {
    fn accepts(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(expected) => expected == id,
            Self::AnyOf(ids) => ids.contains(id),
            Self::AnyTrusted => true,
            Self::Predicate(f) => f(id),
        }
    }
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "`{id}`"),
            Self::AnyOf(ids) => {
                let ids: Vec<&str> = ids.iter().map(SpiffeId::as_str).collect();
                write!(f, "one of `{}`", ids.join("`, `"))
            }
            Self::AnyTrusted => f.write_str("any trusted id"),
            Self::Predicate(_) => f.write_str("an id accepted by the caller's rule"),
        }
    }
}

// === impl SvidVerifier ===

impl SvidVerifier {
    /// A verifier over `bundles`, using the process's aws-lc-rs provider.
    pub fn new(bundles: Bundles) -> Self {
        Self {
            bundles,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        }
    }

    /// The bundles this verifier trusts.
    pub fn bundles(&self) -> &Bundles {
        &self.bundles
    }

    /// Verifies a presented chain for `usage` and returns the leaf's SPIFFE id.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SpiffeId, VerifyError> {
        let id = check_leaf(end_entity)?;
        let bundle = self
            .bundles
            .get(id.trust_domain_name())
            .ok_or_else(|| VerifyError::UntrustedTrustDomain(id.trust_domain_name().to_owned()))?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            bundle.anchors(),
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(map_webpki)?;
        Ok(id)
    }

    /// Verifies a client's chain (leaf first) as the handshake did, e.g. again after a bundle
    /// update.
    pub fn verify_client_chain(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<SpiffeId, VerifyError> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| VerifyError::Malformed("no peer certificate".into()))?;
        self.verify(leaf, intermediates, now, webpki::KeyUsage::client_auth())
    }

    fn verify_tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// === impl ClientVerifier ===

impl ClientVerifier {
    /// Requires client SVIDs that chain to `verifier`'s bundles.
    pub fn new(verifier: SvidVerifier) -> Self {
        Self(verifier)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
            )
            .map(|_| ClientCertVerified::assertion())
            .map_err(to_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

// === impl ServerVerifier ===

impl ServerVerifier {
    /// Accepts server SVIDs that chain to `verifier`'s bundles and match `expected`.
    pub fn new(verifier: SvidVerifier, expected: ServerIdentity) -> Self {
        Self {
            inner: verifier,
            expected,
        }
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // SPIFFE authenticates by id, not by DNS name: the SNI is only routing.
        let id = self
            .inner
            .verify(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
            )
            .map_err(to_rustls)?;
        if !self.expected.accepts(&id) {
            return Err(to_rustls(VerifyError::UnexpectedServerId {
                expected: format!("{:?}", self.expected),
                got: id.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.schemes()
    }
}

/// The SPIFFE id of a peer whose chain a verifier above already accepted.
pub fn peer_spiffe_id(peer_certs: &[CertificateDer<'_>]) -> Result<SpiffeId, VerifyError> {
    peer_certs
        .first()
        .ok_or(VerifyError::NoUriSan)
        .and_then(check_leaf)
}

/// The moment the chain a peer presented (its SVID and any intermediates) stops being valid:
/// a connection it authenticated must not outlive it. X.509's `notAfter` is the last valid
/// second, so this is one second after the earliest `notAfter`, when the handshake verifier
/// starts refusing the chain.
pub fn peer_expiry(peer_certs: &[CertificateDer<'_>]) -> Result<SystemTime, VerifyError> {
    let mut earliest: Option<SystemTime> = None;
    for der in peer_certs {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        let last = not_after(&cert);
        let at = last.checked_add(Duration::from_secs(1)).unwrap_or(last);
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    earliest.ok_or_else(|| VerifyError::Malformed("no peer certificate".into()))
}

/// A certificate's `notAfter` (its last valid second) as a `SystemTime`; before 1970 is 1970.
pub(crate) fn not_after(cert: &x509_parser::certificate::X509Certificate<'_>) -> SystemTime {
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A server config that presents `svid` and requires client SVIDs; no session resumption.
pub fn server_config(
    svid: &X509Svid,
    verifier: SvidVerifier,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let certs = SingleCertAndKey::from(certified_key(svid, &verifier.provider)?);
    server_config_with(verifier, Arc::new(certs))
}

/// A server config that presents what `certs` resolves (e.g. an SVID that rotates) and
/// requires client SVIDs that `verifier` accepts.
///
/// No session resumption: a resumed session skips verifying the client against the bundles as
/// they are now, so an expired or distrusted SVID could come back.
pub fn server_config_with(
    verifier: SvidVerifier,
    certs: Arc<dyn ResolvesServerCert>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let provider = verifier.provider.clone();
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(ClientVerifier::new(verifier)))
        .with_cert_resolver(certs);
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// A client config that presents `svid` and accepts servers matching `expected`; no session
/// resumption.
pub fn client_config(
    svid: &X509Svid,
    verifier: SvidVerifier,
    expected: ServerIdentity,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let certs = SingleCertAndKey::from(certified_key(svid, &verifier.provider)?);
    client_config_with(verifier, expected, Arc::new(certs))
}

/// A client config that presents what `certs` resolves and accepts servers that `verifier`
/// accepts and that match `expected`.
///
/// No session resumption: a resumed session skips verifying the server against the bundles as
/// they are now.
pub fn client_config_with(
    verifier: SvidVerifier,
    expected: ServerIdentity,
    certs: Arc<dyn ResolvesClientCert>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = verifier.provider.clone();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerVerifier::new(verifier, expected)))
        .with_client_cert_resolver(certs);
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(cfg)
}

/// `svid` as rustls presents it; fails if its key does not match its certificate.
pub fn certified_key(
    svid: &X509Svid,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, rustls::Error> {
    CertifiedKey::from_der(svid.cert_chain.clone(), svid.rustls_private_key(), provider)
}

/// The X.509-SVID profile checks on the leaf alone; returns its SPIFFE id.
fn check_leaf(der: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        uris.extend(san.value.general_names.iter().filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        }));
    }
    let uri = match uris.as_slice() {
        [] => return Err(VerifyError::NoUriSan),
        [one] => *one,
        many => return Err(VerifyError::MultipleUriSans(many.len())),
    };
    let id = SpiffeId::parse(uri).map_err(VerifyError::InvalidSpiffeId)?;
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| VerifyError::Malformed(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err(VerifyError::LeafIsCa);
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if !ku.value.digital_signature() {
            return Err(VerifyError::KeyUsage("digitalSignature is required"));
        }
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err(VerifyError::KeyUsage(
                "keyCertSign and cRLSign are not allowed on a leaf",
            ));
        }
    }
    Ok(id)
}

fn map_webpki(err: webpki::Error) -> VerifyError {
    match err {
        webpki::Error::CertExpired { .. } => VerifyError::Expired,
        webpki::Error::CertNotValidYet { .. } => VerifyError::NotYetValid,
        webpki::Error::UnknownIssuer => VerifyError::UnknownIssuer,
        webpki::Error::CaUsedAsEndEntity => VerifyError::LeafIsCa,
        other => VerifyError::Chain(other.to_string()),
    }
}

fn to_rustls(err: VerifyError) -> rustls::Error {
    let kind = match &err {
        VerifyError::Expired => CertificateError::Expired,
        VerifyError::NotYetValid => CertificateError::NotValidYet,
        VerifyError::UnknownIssuer => CertificateError::UnknownIssuer,
        _ => CertificateError::Other(OtherError(Arc::new(err))),
    };
    rustls::Error::InvalidCertificate(kind)
}

#[cfg(test)]
mod tests;
