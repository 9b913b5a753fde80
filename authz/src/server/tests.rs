use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::*;
use crate::engine::PolicyEngine;
use crate::modes::Modes;
use crate::test_util::demo_dir;

fn inputs() -> Inputs {
    let engine = Arc::new(PolicyEngine::load(&demo_dir()).unwrap());
    let authorizer = Arc::new(Authorizer::new(engine, Modes::default(), "n"));
    let reloader = Arc::new(Reloader::new(authorizer.clone(), demo_dir(), None));
    Inputs {
        authorizer,
        reloader,
        auditor: None,
    }
}

fn config() -> Config {
    Config {
        http_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        drain_timeout: Duration::from_secs(5),
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the whole response.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn serves_both_listeners_on_port_zero_and_drains() {
    let server = Server::bind(&config(), inputs()).await.unwrap();
    let (http, grpc) = (server.http_addr(), server.grpc_addr());
    assert_ne!(http.port(), 0);
    assert_ne!(grpc.port(), 0);
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let reply = http_get(http, "/healthz").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let reply = http_get(http, "/ready").await;
    assert!(reply.contains(r#""status":"ready""#), "{reply}");

    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let answer = client
        .check(CheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status.unwrap().code,
        tonic::Code::InvalidArgument as i32,
        "an empty check request is malformed"
    );
    drop(client);

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "stopped accepting"
    );
}

#[tokio::test]
async fn a_taken_port_fails_to_start() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cfg = Config {
        grpc_listen: taken.local_addr().unwrap(),
        ..config()
    };
    let err = Server::bind(&cfg, inputs()).await.unwrap_err();
    assert!(
        matches!(err, ServeError::Bind { what: "grpc", .. }),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("binding grpc listener"),
        "{err}"
    );
}
