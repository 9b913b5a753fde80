//! Keep-alive HTTP/1.1 connections from the inbound side to the local app.
//!
//! The app is one address, so this is a stack of idle connections rather than hyper-util's
//! pooled client, which keys its pool by scheme and authority (SipHash on every checkout and
//! return), spawns a task per request to return the connection, and moved the request
//! through several large futures: 8.1k instructions a request in callgrind. A connection goes
//! back on the stack when the response body it carried has ended, so it is never handed out
//! while a body is still arriving on it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::header::HOST;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

// Idle connections kept beyond this are closed: a burst's worth, not every connection a
// spike ever opened.
const MAX_IDLE: usize = 128;

/// Why a request did not reach the app.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The TCP connection could not be made.
    #[error("connecting to the app at {addr}: {source}")]
    Connect {
        /// The app's address.
        addr: SocketAddr,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// HTTP/1.1 failed on the connection.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Connections to the app at one address, sending request bodies of type `B`.
#[derive(Debug)]
pub struct AppClient<B> {
    addr: SocketAddr,
    host: HeaderValue,
    idle: Mutex<Vec<SendRequest<B>>>,
}

/// The app's response body; gives its connection back when it has ended.
pub struct AppBody<B> {
    inner: Incoming,
    // Taken when the connection goes back (or is dropped with an unfinished body).
    conn: Option<(Arc<AppClient<B>>, SendRequest<B>)>,
}

// === impl AppClient ===

impl<B> AppClient<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A client for the app at `addr`, connecting on first use.
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        let host = HeaderValue::from_str(&addr.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Arc::new(Self {
            addr,
            host,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `req` (its URI origin-form, `/path?query`) on an idle connection or a new one.
    /// A request that an idle connection could not take because the app had closed it is
    /// sent again on another: it never left this process.
    pub async fn request(
        self: &Arc<Self>,
        mut req: Request<B>,
    ) -> Result<Response<AppBody<B>>, AppError> {
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
        loop {
            let (mut conn, fresh) = match self.checkout().await {
                Some(conn) => (conn, false),
                None => (self.connect().await?, true),
            };
            match conn.try_send_request(req).await {
                Ok(response) => {
                    let client = self.clone();
                    return Ok(response.map(|inner| AppBody {
                        inner,
                        conn: Some((client, conn)),
                    }));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(AppError::Http(err.into_error())),
                },
            }
        }
    }

    /// How many idle connections are kept right now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// The most recently used idle connection that is still open and ready.
    async fn checkout(&self) -> Option<SendRequest<B>> {
        loop {
            let mut conn = self.idle.lock().ok()?.pop()?;
            if conn.is_closed() {
                continue;
            }
            // A connection goes back when its response body ends, which can be a moment
            // before its dispatcher has finished the exchange; it is ready right after.
            if conn.ready().await.is_ok() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<B>, AppError> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|source| AppError::Connect {
                addr: self.addr,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "app connection ended");
            }
        });
        Ok(sender)
    }
}

impl<B> AppClient<B> {
    fn check_in(&self, conn: SendRequest<B>) {
        if conn.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(conn);
        }
    }
}

/// The request's URI in origin form (`/path?query`), as HTTP/1.1 sends it to the app.
pub fn origin_form(path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
    let target = match query {
        Some(q) => {
            let mut target = String::with_capacity(path.len() + q.len() + 1);
            target.push_str(path);
            target.push('?');
            target.push_str(q);
            target
        }
        None => path.to_owned(),
    };
    Ok(Uri::try_from(target)?)
}

// === impl AppBody ===

impl<B> AppBody<B> {
    /// Gives the connection back if the body has `ended`, else closes it.
    fn finish(&mut self, ended: bool) {
        if let Some((client, conn)) = self.conn.take()
            && ended
        {
            client.check_in(conn);
        }
    }
}

impl<B> std::fmt::Debug for AppBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppBody")
            .field("pooled", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> Body for AppBody<B> {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for AppBody<B> {
    fn drop(&mut self) {
        // A body read to its end leaves the connection reusable (hyper's server stops polling
        // once `is_end_stream` says so); one dropped part way is closed with it.
        let ended = self.inner.is_end_stream();
        self.finish(ended);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper_util::rt::TokioTimer;
    use tokio::net::TcpListener;

    use super::*;

    /// An app on 127.0.0.1 that counts connections and records each request's Host; `/big`
    /// answers 4 MiB, anything else `ok`.
    struct TestApp {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        hosts: Arc<Mutex<Vec<String>>>,
    }

    impl TestApp {
        /// `keep_alive: false` closes each connection after its response; `idle_close`
        /// closes a connection that waits that long for its next request.
        async fn spawn(keep_alive: bool, idle_close: Option<Duration>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let accepted = Arc::new(AtomicUsize::new(0));
            let hosts = Arc::new(Mutex::new(Vec::new()));
            let (count, seen) = (accepted.clone(), hosts.clone());
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    let seen = seen.clone();
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let host = req
                            .headers()
                            .get(HOST)
                            .map(|h| h.to_str().unwrap().to_owned());
                        seen.lock().unwrap().push(host.unwrap_or_default());
                        let body = if req.uri().path() == "/big" {
                            Bytes::from(vec![b'x'; 4 << 20])
                        } else {
                            Bytes::from_static(b"ok")
                        };
                        async move { Ok::<_, std::convert::Infallible>(Response::new(Full::new(body))) }
                    });
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder.keep_alive(keep_alive).timer(TokioTimer::new());
                    if let Some(after) = idle_close {
                        builder.header_read_timeout(after);
                    }
                    tokio::spawn(builder.serve_connection(TokioIo::new(tcp), svc));
                }
            });
            Self {
                addr,
                accepted,
                hosts,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    fn get(path: &str) -> Request<Empty<Bytes>> {
        Request::builder().uri(path).body(Empty::new()).unwrap()
    }

    async fn text(client: &Arc<AppClient<Empty<Bytes>>>, path: &str) -> Bytes {
        let response = client.request(get(path)).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_and_carry_the_host() {
        let app = TestApp::spawn(true, None).await;
        let client = AppClient::new(app.addr);
        for _ in 0..5 {
            assert_eq!(text(&client, "/").await, "ok");
            assert_eq!(client.idle(), 1);
        }
        assert_eq!(app.accepted(), 1);
        assert_eq!(*app.hosts.lock().unwrap(), vec![app.addr.to_string(); 5]);
        // A Host the request brings is kept.
        let mut req = get("/");
        req.headers_mut()
            .insert(HOST, HeaderValue::from_static("checkout-api"));
        client.request(req).await.unwrap();
        assert_eq!(app.hosts.lock().unwrap().last().unwrap(), "checkout-api");
    }

    #[tokio::test]
    async fn connections_the_app_closes_are_replaced_without_failing_a_request() {
        // Closed after every response.
        let app = TestApp::spawn(false, None).await;
        let client = AppClient::new(app.addr);
        for _ in 0..3 {
            assert_eq!(text(&client, "/").await, "ok");
        }
        assert_eq!(app.accepted(), 3);

        // Closed while idle in the pool.
        let app = TestApp::spawn(true, Some(Duration::from_millis(100))).await;
        let client = AppClient::new(app.addr);
        assert_eq!(text(&client, "/").await, "ok");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(text(&client, "/").await, "ok");
        assert_eq!(app.accepted(), 2);
    }

    #[tokio::test]
    async fn a_connection_is_reused_only_once_its_body_has_ended() {
        let app = TestApp::spawn(true, None).await;
        let client = AppClient::new(app.addr);
        // Two responses held unread at once: two connections, neither idle.
        let first = client.request(get("/big")).await.unwrap();
        let second = client.request(get("/big")).await.unwrap();
        assert_eq!((app.accepted(), client.idle()), (2, 0));
        for response in [first, second] {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 4 << 20);
        }
        assert_eq!(client.idle(), 2);

        // A body dropped part way takes its connection with it.
        let mut partial = client.request(get("/big")).await.unwrap().into_body();
        let frame = partial.frame().await.unwrap().unwrap();
        assert!(frame.data_ref().is_some_and(|d| d.len() < 4 << 20));
        drop(partial);
        assert_eq!(client.idle(), 1);
        assert_eq!(text(&client, "/").await, "ok");
        assert_eq!(app.accepted(), 2, "the other idle connection served it");
    }

    #[tokio::test]
    async fn an_app_that_is_not_listening_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let client = AppClient::<Empty<Bytes>>::new(addr);
        let err = client.request(get("/")).await.unwrap_err();
        assert!(matches!(err, AppError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn the_uri_is_origin_form() {
        assert_eq!(origin_form("/a/b", None).unwrap(), "/a/b");
        assert_eq!(origin_form("/a", Some("x=1&y")).unwrap(), "/a?x=1&y");
        assert!(origin_form("/a b", None).is_err());
    }
}
