//! The socket's lifecycle: prepare the path, bind, serve until shutdown, drain, clean up.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;

use super::attest::Attestor;
use super::entries::Entries;
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use super::service::Service;
use super::{Config, Error, SourceUpdater};
use crate::svid::SvidSource;

/// Any local process may connect; each caller is attested on every call, so the socket itself
/// needs no access control. The directory it lives in is the operator's to restrict.
const SOCKET_MODE: u32 = 0o666;

/// The Workload API server, ready to bind its socket.
pub struct Server {
    cfg: Config,
    entries: Entries,
    attestor: Attestor,
    source: watch::Receiver<Arc<dyn SvidSource>>,
}

/// A [`Server`] whose socket is bound.
#[derive(Debug)]
pub struct Listening {
    server: Server,
    listener: UnixListener,
}

// === impl Server ===

impl Server {
    /// A server issuing from `source` to callers that match `entries`, plus the handle that
    /// swaps the source later. The entries must be in the source's trust domain.
    pub fn new(
        cfg: Config,
        entries: Entries,
        source: Arc<dyn SvidSource>,
    ) -> Result<(Self, SourceUpdater), Error> {
        let trust_domain = entries.trust_domain().clone();
        if source.trust_domain() != &trust_domain {
            return Err(Error::TrustDomainMismatch {
                expected: trust_domain,
                got: source.trust_domain().clone(),
            });
        }
        let (tx, rx) = watch::channel(source);
        let server = Self {
            cfg,
            entries,
            attestor: Attestor::default(),
            source: rx,
        };
        Ok((server, SourceUpdater { trust_domain, tx }))
    }

    /// Replaces the attestor (tests point it at fake `/proc` and `/etc` files).
    pub fn with_attestor(mut self, attestor: Attestor) -> Self {
        self.attestor = attestor;
        self
    }

    /// Binds the socket and serves until `shutdown` completes; then closes open streams, waits
    /// up to [`Config::drain_timeout`] for in-flight calls, and removes the socket.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        self.bind()?.run(shutdown).await
    }

    /// Binds the socket now, so that a caller learns of a socket in use before it starts
    /// anything that depends on this server (inside a tokio runtime).
    pub fn bind(self) -> Result<Listening, Error> {
        let listener = bind(&self.cfg.socket)?;
        tracing::info!(socket = %self.cfg.socket.display(), entries = self.entries.len(), "Workload API listening");
        Ok(Listening {
            server: self,
            listener,
        })
    }

    async fn serve(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let drain_timeout = self.cfg.drain_timeout;
        let (drain_tx, drain_rx) = watch::channel(false);
        let service = Arc::new(Service {
            cfg: self.cfg,
            entries: self.entries,
            attestor: self.attestor,
            source: self.source,
            drain: drain_rx.clone(),
        });
        let signal = async move {
            shutdown.await;
            tracing::info!("Workload API shutting down");
            // Open streams end on this; without it the graceful shutdown would wait forever.
            drain_tx.send_replace(true);
        };
        let serve = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(service))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal);
        let mut drain_rx = drain_rx;
        let deadline = async move {
            let _ = drain_rx.wait_for(|draining| *draining).await;
            tokio::time::sleep(drain_timeout).await;
        };
        tokio::select! {
            result = serve => result.map_err(Error::from),
            () = deadline => {
                tracing::warn!(timeout = ?drain_timeout, "drain deadline passed; dropping open calls");
                Ok(())
            }
        }
    }
}

// === impl Listening ===

impl Listening {
    /// Serves until `shutdown` completes, as [`Server::run`] does after binding.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let path = self.server.cfg.socket.clone();
        let result = self.server.serve(self.listener, shutdown).await;
        if let Err(err) = std::fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(socket = %path.display(), error = %err, "could not remove the socket");
        }
        tracing::info!("Workload API stopped");
        result
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("cfg", &self.cfg)
            .field("entries", &self.entries.len())
            .field("trust_domain", self.entries.trust_domain())
            .finish_non_exhaustive()
    }
}

/// Prepares `path` and binds it: a stale socket is removed, a live one or a non-socket is an
/// error, and the new socket gets [`SOCKET_MODE`].
fn bind(path: &Path) -> Result<UnixListener, Error> {
    let io_err = |source| Error::Socket {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::NotASocket(path.to_owned()));
        }
        Ok(_) => {
            // A socket nobody answers on is left over from a crash; one that answers is live.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Error::SocketInUse(path.to_owned()));
            }
            tracing::info!(socket = %path.display(), "removing a stale socket");
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err(err)),
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(io_err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");

        let live = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        assert!(matches!(bind(&path), Err(Error::SocketInUse(_))));

        drop(live); // the file stays, nobody listens: stale
        assert!(path.exists());
        let _rebound = bind(&path).unwrap();

        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(bind(&file), Err(Error::NotASocket(_))));
        assert!(file.exists());
    }
}
