//! rustls configs backed by the live [`Identity`], and handshake-failure reasons for metrics.
//!
//! These are `ward_identity::verify::{server_config_with, client_config_with}` (SVID
//! verifiers, no session resumption) with our ALPN ids and a resolver that reads the
//! [`Identity`] on every handshake instead of a fixed certificate, so SVID rotation needs no
//! new config and no new listener.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, ServerConfig, SignatureScheme};
use ward_identity::VerifyError;
use ward_identity::verify::{self, ServerIdentity};

use crate::identity::Identity;

/// ALPN ids both sides offer: HTTP/2 between proxies, HTTP/1.1 as the fallback.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Presents the [`Identity`]'s current SVID, as a server and as a client.
#[derive(Debug, Clone)]
pub struct SvidResolver(pub Identity);

// === impl SvidResolver ===

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The inbound config: presents our SVID and requires a client SVID from a trusted domain.
pub fn server_config(identity: &Identity) -> Result<Arc<ServerConfig>, rustls::Error> {
    let resolver = Arc::new(SvidResolver(identity.clone()));
    let mut cfg = verify::server_config_with(identity.verifier(), resolver)?;
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// An outbound config: presents our SVID and accepts only a server presenting `expected`.
pub fn client_config(
    identity: &Identity,
    expected: ServerIdentity,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let resolver = Arc::new(SvidResolver(identity.clone()));
    let mut cfg = verify::client_config_with(identity.verifier(), expected, resolver)?;
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A short reason for a failed handshake, for the `reason` label of the failure counter.
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    let Some(tls) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof",
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::InvalidData => "not_tls",
            _ => "io",
        };
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::Other(other) => match other.0.downcast_ref::<VerifyError>() {
                Some(VerifyError::UntrustedTrustDomain(_)) => "untrusted_trust_domain",
                Some(VerifyError::UnexpectedServerId { .. }) => "unexpected_server_id",
                Some(VerifyError::Expired) => "expired",
                Some(VerifyError::UnknownIssuer) => "unknown_issuer",
                Some(_) => "invalid_svid",
                None => "invalid_certificate",
            },
            _ => "invalid_certificate",
        },
        rustls::Error::AlertReceived(_) => "alert_received",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        rustls::Error::InvalidMessage(_) => "not_tls",
        _ => "tls",
    }
}
