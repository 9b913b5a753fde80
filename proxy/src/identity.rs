//! This workload's SVID and the trust bundles peers are checked against, swappable at runtime.
//!
//! [`Identity`] holds the current SVID behind an [`ArcSwap`] and the verifier's
//! [`Bundles`]; the rustls resolvers in [`crate::tls`] read both on every handshake, so a
//! rotation applies to the next handshake while established connections carry on untouched.
//! The SVID comes from PEM files ([`Identity::from_files`], reloaded on SIGHUP) or from the
//! Workload API ([`workload_api::spawn`], which applies every rotation the agent streams).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::UnixTime;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, pem::PemObject};
use tokio::sync::watch;
use ward_identity::verify::{Bundles, SvidVerifier};
use ward_identity::{SpiffeId, TrustBundle, VerifyError, X509Svid};

use crate::config::FilesIdentity;

pub mod workload_api;

/// The workload's current SVID and trust bundles. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Identity {
    current: Arc<ArcSwap<Current>>,
    verifier: SvidVerifier,
    /// Bumped when the trusted X.509 authorities change (see [`Identity::trust_changes`]).
    trust: Arc<watch::Sender<u64>>,
}

/// Why a peer's SVID no longer authenticates its connection.
#[derive(Debug)]
pub enum Lapse {
    /// The SVID (or a certificate of its chain) expired.
    Expired,
    /// After a trust bundle update, the chain no longer verifies.
    Untrusted(VerifyError),
}

/// Why the SVID or bundle could not be obtained or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("reading `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// PEM or DER does not parse.
    #[error("{what}: {reason}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The certificate is not a usable X.509-SVID.
    #[error("the SVID is not valid: {0}")]
    Svid(String),
    /// The bundle is unusable.
    #[error("trust bundle: {0}")]
    Bundle(#[from] ward_identity::bundle::BundleError),
    /// The key does not fit rustls.
    #[error("SVID private key: {0}")]
    Key(#[from] rustls::Error),
    /// The Workload API could not be reached or answered badly.
    #[error("Workload API `{}`: {reason}", socket.display())]
    WorkloadApi {
        /// The agent's socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The Workload API offered no SVID with the configured id.
    #[error("the Workload API offers no SVID for `{0}`")]
    NotOffered(String),
}

struct Current {
    svid: X509Svid,
    certified: Arc<CertifiedKey>,
}

// === impl Identity ===

impl Identity {
    /// Serves `svid`, trusting `bundles` (its own trust domain's and any federated ones).
    pub fn new(
        svid: X509Svid,
        bundles: impl IntoIterator<Item = Arc<TrustBundle>>,
    ) -> Result<Self, IdentityError> {
        let current = Current::new(svid)?;
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(current)),
            verifier: SvidVerifier::new(Bundles::new(bundles)),
            trust: Arc::new(watch::Sender::new(0)),
        })
    }

    /// Reads the SVID chain, key and bundle PEM files.
    pub fn from_files(files: &FilesIdentity) -> Result<Self, IdentityError> {
        let (svid, bundle) = read_files(files)?;
        Self::new(svid, [Arc::new(bundle)])
    }

    /// Re-reads the files and swaps them in; on error the current SVID keeps serving.
    pub fn reload_files(&self, files: &FilesIdentity) -> Result<(), IdentityError> {
        let (svid, bundle) = read_files(files)?;
        self.update(svid, [Arc::new(bundle)])
    }

    /// Swaps in a new SVID and bundles; handshakes from now on use them.
    pub fn update(
        &self,
        svid: X509Svid,
        bundles: impl IntoIterator<Item = Arc<TrustBundle>>,
    ) -> Result<(), IdentityError> {
        let current = Current::new(svid)?;
        // Bundles first: a peer with a freshly rotated SVID must verify once ours is out.
        if self.verifier.bundles().replace(bundles) {
            self.trust.send_modify(|generation| *generation += 1);
        }
        self.current.store(Arc::new(current));
        Ok(())
    }

    /// Changes whenever the trusted X.509 authorities do, so established connections can be
    /// checked again.
    pub fn trust_changes(&self) -> watch::Receiver<u64> {
        self.trust.subscribe()
    }

    /// How many times the trusted X.509 authorities have changed.
    pub fn trust_generation(&self) -> u64 {
        *self.trust.borrow()
    }

    /// Resolves when the peer that presented `chain` (client SVID, leaf first) in a handshake
    /// that started at trust generation `verified_under` is no longer authenticated: at
    /// `expires` (from [`ward_identity::verify::peer_expiry`]), or as soon as a trust bundle
    /// update leaves its chain unverifiable (a trust domain dropped, its CA rotated out).
    pub async fn client_lapse(
        &self,
        chain: Vec<CertificateDer<'static>>,
        verified_under: u64,
        expires: tokio::time::Instant,
    ) -> Lapse {
        let mut changes = self.trust_changes();
        // An update during the handshake is checked at once.
        if *changes.borrow_and_update() != verified_under {
            changes.mark_changed();
        }
        let expiry = tokio::time::sleep_until(expires);
        tokio::pin!(expiry);
        loop {
            tokio::select! {
                () = &mut expiry => return Lapse::Expired,
                // A closed channel (the identity is gone) leaves only the expiry.
                Ok(()) = changes.changed() => {
                    if let Err(err) = self.verifier.verify_client_chain(&chain, UnixTime::now()) {
                        return Lapse::Untrusted(err);
                    }
                }
            }
        }
    }

    /// The SPIFFE id of the current SVID.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.current.load().svid.spiffe_id.clone()
    }

    /// When the current SVID expires.
    pub fn not_after(&self) -> SystemTime {
        self.current.load().svid.not_after
    }

    /// The current SVID as rustls presents it.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.current.load().certified.clone()
    }

    /// The verifier over the current bundles (shared: bundle updates reach it).
    pub fn verifier(&self) -> SvidVerifier {
        self.verifier.clone()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.load();
        f.debug_struct("Identity")
            .field("svid", &current.svid)
            .finish_non_exhaustive()
    }
}

// === impl Current ===

impl Current {
    fn new(svid: X509Svid) -> Result<Self, IdentityError> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified = Arc::new(ward_identity::verify::certified_key(&svid, &provider)?);
        Ok(Self { svid, certified })
    }
}

/// Builds an [`X509Svid`] from a DER chain (leaf first) and a PKCS#8 key, reading the id and
/// validity window from the leaf.
pub fn svid_from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
) -> Result<X509Svid, IdentityError> {
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::Svid("the certificate chain is empty".into()))?;
    let spiffe_id = ward_identity::verify::peer_spiffe_id(&chain)
        .map_err(|e| IdentityError::Svid(e.to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| IdentityError::Parse {
            what: "SVID certificate",
            reason: e.to_string(),
        })?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        UNIX_EPOCH + Duration::from_secs(secs)
    };
    let not_before = at(cert.validity().not_before);
    let not_after = at(cert.validity().not_after);
    Ok(X509Svid {
        spiffe_id,
        cert_chain: chain,
        private_key: key,
        not_before,
        issued_at: not_before,
        not_after,
    })
}

/// Splits concatenated DER certificates (the Workload API's encoding).
pub fn split_der(mut der: &[u8]) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (rest, _) =
            x509_parser::parse_x509_certificate(der).map_err(|e| IdentityError::Parse {
                what: "DER certificate",
                reason: e.to_string(),
            })?;
        let len = der.len() - rest.len();
        certs.push(CertificateDer::from(der[..len].to_vec()));
        der = rest;
    }
    Ok(certs)
}

fn read_files(files: &FilesIdentity) -> Result<(X509Svid, TrustBundle), IdentityError> {
    let chain = CertificateDer::pem_slice_iter(read(&files.cert)?.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Parse {
            what: "SVID certificate PEM",
            reason: e.to_string(),
        })?;
    let key = PrivatePkcs8KeyDer::from_pem_slice(read(&files.key)?.as_bytes()).map_err(|e| {
        IdentityError::Parse {
            what: "SVID key PEM (PKCS#8)",
            reason: e.to_string(),
        }
    })?;
    let svid = svid_from_der(chain, key)?;
    let bundle = TrustBundle::from_pem(svid.spiffe_id.trust_domain(), &read(&files.bundle)?, None)?;
    Ok((svid, bundle))
}

fn read(path: &Path) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::test_util::TestCa;

    #[tokio::test]
    async fn a_bundle_update_during_the_handshake_is_not_missed() {
        let ours = TestCa::new("ward.local");
        let partner = TestCa::new("partner.test");
        let svid = || ours.issue("spiffe://ward.local/ns/a/sa/b", Duration::from_secs(600));
        let bundle = |ca: &TestCa| ward_identity::SvidSource::bundle(&ca.ca);
        let identity = Identity::new(svid(), [bundle(&ours), bundle(&partner)]).unwrap();
        let peer = partner.issue("spiffe://partner.test/x", Duration::from_secs(600));
        let before = identity.trust_generation();
        let far = tokio::time::Instant::now() + Duration::from_secs(600);
        // Verified under the current bundles: nothing to end.
        let waiting = identity.client_lapse(peer.cert_chain.clone(), before, far);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), waiting)
                .await
                .is_err()
        );

        // The handshake verified the peer under `before`; the domain was dropped before the
        // connection started watching.
        identity.update(svid(), [bundle(&ours)]).unwrap();
        assert_eq!(identity.trust_generation(), before + 1);
        let lapse = tokio::time::timeout(
            Duration::from_secs(5),
            identity.client_lapse(peer.cert_chain.clone(), before, far),
        )
        .await
        .expect("checked at once");
        assert!(
            matches!(
                lapse,
                Lapse::Untrusted(VerifyError::UntrustedTrustDomain(_))
            ),
            "{lapse:?}"
        );
    }
}
