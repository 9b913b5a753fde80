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
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::BoxBody;
use crate::ctx::ListenerKind;
use crate::proxy::ProxyInputs;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A connection's share of its listener's drain: the connection ends gracefully once the
/// listener stops, and the listener waits until every share is dropped.
#[derive(Debug)]
pub(crate) struct Drain(watch::Receiver<bool>);

/// Accepts until shutdown starts, handing each connection to `handle` on its own task; then
/// closes the listener and drains the connections up to `drain_timeout`.
pub(crate) async fn accept_loop<F, Fut>(
    inputs: Arc<ProxyInputs>,
    listener: TcpListener,
    kind: ListenerKind,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Drain) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (drain, _) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = inputs.drained() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    conns.spawn(handle(tcp, peer, Drain(drain.subscribe())));
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
    drain.send_replace(true);
    if tokio::time::timeout(deadline, drain.closed())
        .await
        .is_err()
    {
        tracing::warn!(listener = %kind, open = conns.len(), "drain deadline reached; closing connections");
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 and HTTP/2 on `io` until the peer closes, the drain asks it to stop, or
/// `lapse` resolves (e.g. the peer's SVID ran out). The last two end it gracefully: requests in
/// flight finish, no new ones are taken (HTTP/2 `GOAWAY`; an idle HTTP/1.1 connection closes).
pub(crate) async fn serve_http<I, F, Fut, L>(io: I, mut drain: Drain, lapse: L, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
    L: Future<Output = ()> + Send,
{
    let handler = Arc::new(handler);
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        // Boxed: hyper and tokio move a request's future several times (into the stream's
        // task and between its stages), copying it whole each time; a box moves as a pointer.
        Box::pin(async move { Ok::<_, Infallible>(handler(req).await) })
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);
    tokio::pin!(lapse);
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            // A dropped sender (the listener is gone) stops the connection as well.
            _ = drain.0.wait_for(|stop| *stop), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            () = &mut lapse, if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(error = %err, "connection ended with an error");
    }
}
