//! X.509-SVIDs and the source that issues SVIDs to the Workload API and proxies.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::bundle::TrustBundle;
use crate::ca::CaError;
use crate::jwt::JwtSvid;
use crate::pem;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// An X.509-SVID: the certificate chain (leaf first, no root) and its private key.
pub struct X509Svid {
    /// The SPIFFE id in the leaf's URI SAN.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then any intermediates; never the trust anchor.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8 DER).
    pub private_key: PrivatePkcs8KeyDer<'static>,
    /// Start of the validity window (a little before issuance, for clock skew).
    pub not_before: SystemTime,
    /// When it was issued; renewal is timed from here, not from the backdated `not_before`.
    pub issued_at: SystemTime,
    /// End of the validity window.
    pub not_after: SystemTime,
}

/// Issues SVIDs and publishes the trust bundle; implemented by [`crate::Ca`].
///
/// The Workload API and proxies depend on this trait rather than on the CA, so that a remote
/// signer (the control plane) can stand in without giving them the CA key.
pub trait SvidSource: Send + Sync + 'static {
    /// The trust domain SVIDs are issued in.
    fn trust_domain(&self) -> &TrustDomain;
    /// Issues an X.509-SVID for `id`, valid for `ttl` (capped at the CA's own expiry).
    fn issue_x509(&self, id: &SpiffeId, ttl: Duration) -> Result<X509Svid, CaError>;
    /// Issues a JWT-SVID for `id` and `audience`, valid for `ttl`.
    fn issue_jwt(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<JwtSvid, CaError>;
    /// The current trust bundle (X.509 authorities and JWT keys).
    fn bundle(&self) -> Arc<TrustBundle>;
}

// === impl X509Svid ===

impl X509Svid {
    /// When to renew: half-way between issuance and expiry.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or(Duration::ZERO);
        self.issued_at + lifetime / 2
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // INVARIANT: issuance always puts the leaf first, so the chain is never empty.
        &self.cert_chain[0]
    }

    /// The chain as PEM, leaf first.
    pub fn cert_chain_pem(&self) -> String {
        self.cert_chain
            .iter()
            .map(|c| pem::encode("CERTIFICATE", c))
            .collect()
    }

    /// The private key as PKCS#8 PEM. Write it with mode 0600.
    pub fn private_key_pem(&self) -> String {
        pem::encode("PRIVATE KEY", self.private_key.secret_pkcs8_der())
    }

    /// The private key in the form rustls wants.
    pub fn rustls_private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.private_key.clone_key())
    }
}

impl Clone for X509Svid {
    fn clone(&self) -> Self {
        Self {
            spiffe_id: self.spiffe_id.clone(),
            cert_chain: self.cert_chain.clone(),
            private_key: self.private_key.clone_key(),
            not_before: self.not_before,
            issued_at: self.issued_at,
            not_after: self.not_after,
        }
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id.as_str())
            .field("chain_len", &self.cert_chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}
