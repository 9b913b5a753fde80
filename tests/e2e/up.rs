//! `ward up` on embedded defaults: the README's first command, end to end. A standard SPIFFE
//! client (the crates.io `spiffe` crate) fetches an SVID and the bundle from it, and two TLS
//! endpoints built from that material complete mutual TLS through our verifiers.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_identity::verify::{self, Bundles, ServerIdentity, SvidVerifier};
use ward_identity::{SpiffeId, TrustBundle, TrustDomain, X509Svid};

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(dir: &Path) -> Up {
    let child = Command::new(assert_cmd::cargo::cargo_bin("ward"))
        .arg("up")
        .current_dir(dir)
        .env_remove("WARD_DATA_DIR")
        .env_remove("WARD_AGENT_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut up = Up(child);
    let socket = dir.join("ward-data/agent.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = up.0.try_wait().unwrap() {
            panic!("ward up exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "ward up did not serve its socket in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    up
}

/// Our SVID type from what the third-party client fetched.
fn to_ward_svid(svid: &spiffe::X509Svid) -> X509Svid {
    let now = SystemTime::now();
    X509Svid {
        spiffe_id: SpiffeId::parse(&svid.spiffe_id().to_string()).unwrap(),
        cert_chain: svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_ref().to_vec()))
            .collect(),
        private_key: PrivatePkcs8KeyDer::from(svid.private_key().as_ref().to_vec()),
        not_before: now,
        issued_at: now,
        not_after: now + Duration::from_secs(60),
    }
}

#[tokio::test]
async fn up_serves_svids_to_a_standard_client_and_they_complete_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let _up = start(dir.path());
    let endpoint = format!(
        "unix://{}",
        dir.path().join("ward-data/agent.sock").display()
    );
    let client = spiffe::WorkloadApiClient::connect_to(endpoint)
        .await
        .unwrap();

    let fetched = client.fetch_x509_svid().await.unwrap();
    let id = fetched.spiffe_id().to_string();
    assert!(id.starts_with("spiffe://ward.local/ns/default/sa/"), "{id}");
    let td = spiffe::TrustDomain::new("ward.local").unwrap();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let authorities: Vec<CertificateDer<'static>> = bundles
        .get(&td)
        .expect("a bundle for ward.local")
        .authorities()
        .iter()
        .map(|c| CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    let bundle = TrustBundle::new(
        TrustDomain::parse("ward.local").unwrap(),
        authorities,
        Vec::new(),
    )
    .unwrap();

    ward_identity::install_crypto_provider();
    let svid = to_ward_svid(&fetched);
    let verifier = SvidVerifier::new(Bundles::new([Arc::new(bundle)]));
    let server = verify::server_config(&svid, verifier.clone()).unwrap();
    let client_cfg = verify::client_config(
        &svid,
        verifier,
        ServerIdentity::Exact(svid.spiffe_id.clone()),
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let peer = verify::peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap()).unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.shutdown().await.ok();
        peer
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(ServerName::try_from("not-checked.invalid").unwrap(), tcp)
        .await
        .unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"hello");
    let peer = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(peer.as_str(), id, "the server saw the client's SPIFFE id");
}

#[test]
fn up_refuses_a_data_dir_whose_ca_is_for_another_trust_domain() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::ward()
        .args(["ca", "init", "--trust-domain", "other.org", "--dir"])
        .arg(dir.path().join("ward-data/ca"))
        .assert()
        .success();
    crate::support::ward()
        .arg("up")
        .current_dir(dir.path())
        .assert()
        .code(2)
        .stderr(predicates::str::contains("is for trust domain `other.org`"));
}
