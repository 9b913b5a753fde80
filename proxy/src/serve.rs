//! The accept loop and HTTP connection serving shared by the three listeners.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::BoxBody;
use crate::ctx::ListenerKind;
use crate::proxy::ProxyInputs;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts until shutdown starts, handing each connection to `handle` on its own task; then
/// closes the listener and drains the connections up to `drain_timeout`.
pub(crate) async fn accept_loop<F, Fut>(
    inputs: Arc<ProxyInputs>,
    listener: TcpListener,
    kind: ListenerKind,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Watcher) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = inputs.drained() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(handle(tcp, peer, graceful.watcher()));
                }
                Err(err) => {
                    tracing::warn!(listener = %kind, error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let deadline = inputs.cfg.drain_timeout;
    if tokio::time::timeout(deadline, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %kind, open = conns.len(), "drain deadline reached; closing connections");
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 and HTTP/2 on `io` until the peer closes or the drain asks it to stop.
pub(crate) async fn serve_http<I, F, Fut>(io: I, watcher: Watcher, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler(req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(err) = watcher.watch(conn).await {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}
