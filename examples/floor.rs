//! The floor under `ward proxy`'s inbound side, for bench/proxy.sh's `floor` and `floor-plain`
//! setups: the same libraries and the same code for the two ends (tokio with the runtime
//! `ward` builds, rustls with Ward's SVID verifier and ALPN, hyper's HTTP/1.1 and HTTP/2
//! server, Ward's keep-alive connections to the app) and nothing between them: no path
//! normalization, no Cedar, no audit record, no metrics, no header rewriting, no logs.
//!
//! It answers how fast a proxy built on Ward's stack could be at best, so that the issue's
//! throughput goals can be told apart into what Ward's features cost and what the stack does.
//! Not a product: it authorizes nothing.
//!
//!   cargo build --release --example floor
//!   target/release/examples/floor --listen 127.0.0.1:8080 --app 127.0.0.1:9000
//!   target/release/examples/floor --listen … --app … --cert svid.pem --key svid.key --bundle bundle.pem

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use ward_proxy::Identity;
use ward_proxy::app::{AppClient, origin_form};
use ward_proxy::config::FilesIdentity;

type Body = BoxBody<bytes::Bytes, hyper::Error>;

/// Command line.
#[derive(Debug, Parser)]
struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// The app to forward every request to.
    #[arg(long)]
    app: SocketAddr,
    /// The SVID chain: with --key and --bundle, serve mTLS as `ward proxy`'s inbound does.
    #[arg(long, requires_all = ["key", "bundle"])]
    cert: Option<PathBuf>,
    /// The SVID's PKCS#8 key.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// The trust bundle client SVIDs must chain to.
    #[arg(long, requires = "cert")]
    bundle: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As src/main.rs builds it (TOKIO_WORKER_THREADS sets the workers).
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ward_identity::install_crypto_provider();
    let acceptor = match (args.cert, args.key, args.bundle) {
        (Some(cert), Some(key), Some(bundle)) => {
            let files = FilesIdentity { cert, key, bundle };
            let identity = Identity::from_files(&files).context("reading the SVID files")?;
            Some(TlsAcceptor::from(ward_proxy::tls::server_config(
                &identity,
            )?))
        }
        _ => None,
    };
    let app = AppClient::<Incoming>::new(args.app);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, app).await;
                    }
                }
                None => serve(tcp, app).await,
            }
        });
    }
}

/// HTTP/1.1 or HTTP/2 on `io`, every request to the app.
async fn serve<I>(io: I, app: Arc<AppClient<Incoming>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        // Boxed, as `ward proxy` boxes its request futures.
        Box::pin(async move { Ok::<_, Infallible>(forward(&app, req).await) })
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

async fn forward(app: &Arc<AppClient<Incoming>>, mut req: Request<Incoming>) -> Response<Body> {
    let uri = origin_form(req.uri().path(), req.uri().query());
    match uri {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return status(StatusCode::BAD_REQUEST),
    }
    *req.version_mut() = Version::HTTP_11;
    match app.request(req).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(_) => status(StatusCode::BAD_GATEWAY),
    }
}

fn status(code: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::default().map_err(|never| match never {}).boxed());
    *resp.status_mut() = code;
    resp
}
