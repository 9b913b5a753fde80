//! The signals every long-running command reacts to: SIGHUP reloads, SIGTERM or Ctrl-C stops.

use std::future::Future;

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Installed SIGHUP and SIGTERM handlers.
pub(crate) struct Signals {
    hangup: Signal,
    terminate: Signal,
}

impl Signals {
    /// Installs the handlers. Do it before announcing addresses or sockets, so that a signal
    /// sent as soon as they appear is never lost.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// The SIGHUP stream, and a future that completes on SIGTERM or Ctrl-C.
    pub(crate) fn split(self) -> (Signal, impl Future<Output = ()> + Send + 'static) {
        let mut terminate = self.terminate;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
            }
        };
        (self.hangup, shutdown)
    }
}
