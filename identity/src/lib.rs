//! Workload identity for Ward: SPIFFE ids, the CA, X.509 and JWT SVIDs, and their verifiers.
//!
//! This crate owns everything about *who* a workload is:
//! - [`SpiffeId`] and [`TrustDomain`], parsed exactly as the SPIFFE ID specification says;
//! - [`Ca`], the certificate authority (a self-signed root or an intermediate under an
//!   enterprise root) that issues [`X509Svid`]s and [`JwtSvid`]s and rotates its root;
//! - [`TrustBundle`], the X.509 authorities and JWT keys a peer is checked against;
//! - [`verify`], rustls client and server verifiers that enforce the X.509-SVID rules and
//!   hand the peer's [`SpiffeId`] to authorization;
//! - [`workload_api`], the SPIFFE Workload API served to local workloads over a Unix socket.
//!
//! One crypto provider, `aws-lc-rs`, backs rustls, rcgen and jsonwebtoken alike.

#![warn(missing_docs)]

pub mod bundle;
pub mod ca;
pub mod jwt;
mod pem;
pub mod spiffe_id;
pub mod svid;
pub mod verify;
pub mod workload_api;

pub use bundle::TrustBundle;
pub use ca::{Ca, CaError};
pub use jwt::{JwtError, JwtSvid, JwtSvidClaims};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{SvidSource, X509Svid};
pub use verify::VerifyError;

/// Installs the process-wide rustls crypto provider (`aws-lc-rs`); safe to call more than once.
pub fn install_crypto_provider() {
    // An Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
