//! Certificates made by `openssl` (not by our CA code) against the verifiers, plus real
//! rustls handshakes.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::TrustDomain;
use crate::ca::{self, Ca, InitOptions};
use crate::svid::SvidSource;

struct Fixture {
    dir: tempfile::TempDir,
    ca: Ca,
}

fn fixture(td: &str) -> Fixture {
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(
        &dir.path().join("ca"),
        &InitOptions {
            trust_domain: TrustDomain::parse(td).unwrap(),
            ttl: ca::DEFAULT_CA_TTL,
            upstream: None,
        },
    )
    .unwrap();
    // Hand the CA's key to openssl the way an operator would: as PEM files.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("ca/ca.json")).unwrap())
            .unwrap();
    std::fs::write(
        dir.path().join("ca.pem"),
        state["ca_cert"].as_str().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join("ca.key"), state["ca_key"].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("index.txt"), "").unwrap();
    std::fs::write(dir.path().join("serial"), "1000\n").unwrap();
    let cnf = format!(
        "[ca]\ndefault_ca = d\n[d]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\nserial = {0}/serial\n\
         default_md = sha256\npolicy = p\nunique_subject = no\n[p]\norganizationName = optional\n",
        dir.path().display()
    );
    std::fs::write(dir.path().join("ca.cnf"), cnf).unwrap();
    Fixture { dir, ca }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command line tool is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a leaf with `extensions`, signed by the fixture's CA, valid `start`..`end` (YYMMDDHHMMSSZ).
fn openssl_leaf(
    f: &Fixture,
    name: &str,
    extensions: &str,
    start: &str,
    end: &str,
) -> CertificateDer<'static> {
    let d = f.dir.path();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{name}.key"),
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            "/O=Test",
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        d.join(format!("{name}.ext")),
        format!("[x]\n{extensions}\n"),
    )
    .unwrap();
    openssl(
        d,
        &[
            "ca",
            "-batch",
            "-config",
            "ca.cnf",
            "-cert",
            "ca.pem",
            "-keyfile",
            "ca.key",
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
            "-extensions",
            "x",
            "-startdate",
            start,
            "-enddate",
            end,
            "-notext",
        ],
    );
    let pem = std::fs::read_to_string(d.join(format!("{name}.pem"))).unwrap();
    crate::pem::decode_certs(&pem).unwrap().remove(0)
}

const LEAF: &str = "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth, clientAuth";
const NOW_START: &str = "20000101000000Z";
const FAR_END: &str = "20991231235959Z";

fn check(f: &Fixture, cert: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    SvidVerifier::new(Bundles::new([f.ca.bundle()])).verify(
        cert,
        &[],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
    )
}

#[test]
fn openssl_made_svid_is_accepted() {
    let f = fixture("example.org");
    let ext = format!("subjectAltName = URI:spiffe://example.org/ns/a/sa/b\n{LEAF}");
    let cert = openssl_leaf(&f, "good", &ext, NOW_START, FAR_END);
    assert_eq!(
        check(&f, &cert).unwrap().as_str(),
        "spiffe://example.org/ns/a/sa/b"
    );
}

#[test]
fn openssl_made_bad_svids_are_rejected_each_with_its_own_error() {
    let f = fixture("example.org");
    let other = fixture("other.org");
    let two_sans = openssl_leaf(
        &f,
        "two",
        &format!("subjectAltName = URI:spiffe://example.org/a, URI:spiffe://example.org/b\n{LEAF}"),
        NOW_START,
        FAR_END,
    );
    let ca_true = openssl_leaf(
        &f,
        "catrue",
        "subjectAltName = URI:spiffe://example.org/a\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, digitalSignature, keyCertSign",
        NOW_START,
        FAR_END,
    );
    let foreign = openssl_leaf(
        &other,
        "foreign",
        &format!("subjectAltName = URI:spiffe://other.org/a\n{LEAF}"),
        NOW_START,
        FAR_END,
    );
    let expired = openssl_leaf(
        &f,
        "expired",
        &format!("subjectAltName = URI:spiffe://example.org/a\n{LEAF}"),
        "20200101000000Z",
        "20200102000000Z",
    );
    let no_san = openssl_leaf(&f, "nosan", LEAF, NOW_START, FAR_END);
    let dns_only = openssl_leaf(
        &f,
        "dns",
        &format!("subjectAltName = DNS:example.org\n{LEAF}"),
        NOW_START,
        FAR_END,
    );
    let bad_id = openssl_leaf(
        &f,
        "badid",
        &format!("subjectAltName = URI:spiffe://example.org/../etc\n{LEAF}"),
        NOW_START,
        FAR_END,
    );
    // Same trust domain name, but signed by a CA that is not in our bundle.
    let impostor = openssl_leaf(
        &fixture("example.org"),
        "impostor",
        &format!("subjectAltName = URI:spiffe://example.org/a\n{LEAF}"),
        NOW_START,
        FAR_END,
    );
    let results = [
        (
            "two URI SANs",
            check(&f, &two_sans),
            VerifyError::MultipleUriSans(2),
        ),
        ("CA:true", check(&f, &ca_true), VerifyError::LeafIsCa),
        (
            "other trust domain",
            check(&f, &foreign),
            VerifyError::UntrustedTrustDomain("other.org".into()),
        ),
        ("expired", check(&f, &expired), VerifyError::Expired),
        ("no SAN", check(&f, &no_san), VerifyError::NoUriSan),
        ("DNS SAN only", check(&f, &dns_only), VerifyError::NoUriSan),
        (
            "unknown issuer",
            check(&f, &impostor),
            VerifyError::UnknownIssuer,
        ),
    ];
    for (case, got, want) in &results {
        assert_eq!(got.as_ref(), Err(want), "{case}");
    }
    assert!(matches!(
        check(&f, &bad_id),
        Err(VerifyError::InvalidSpiffeId(_))
    ));
    let distinct: std::collections::BTreeSet<String> = results[..4]
        .iter()
        .map(|(_, got, _)| format!("{got:?}"))
        .collect();
    assert_eq!(distinct.len(), 4, "the four named cases fail differently");
}

/// Runs one TLS handshake over loopback and returns the server-side result and the client
/// id the server saw.
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> (Result<SpiffeId, String>, Result<(), String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let id = peer_spiffe_id(tls.get_ref().1.peer_certificates().unwrap_or_default())
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(id)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let client_result = async {
        let mut tls = connector
            .connect(ServerName::try_from("ignored.invalid").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok(())
    }
    .await;
    let server_result = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .unwrap()
        .unwrap();
    (server_result, client_result)
}

#[tokio::test]
async fn mutual_tls_with_svids_reports_the_peer_id() {
    let f = fixture("example.org");
    let server_id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/orders").unwrap();
    let client_id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/checkout").unwrap();
    let server_svid = f.ca.issue_x509(&server_id, ca::DEFAULT_SVID_TTL).unwrap();
    let client_svid = f.ca.issue_x509(&client_id, ca::DEFAULT_SVID_TTL).unwrap();
    let v = SvidVerifier::new(Bundles::new([f.ca.bundle()]));
    let server = server_config(&server_svid, v.clone()).unwrap();
    let client = client_config(
        &client_svid,
        v.clone(),
        ServerIdentity::Exact(server_id.clone()),
    )
    .unwrap();
    let (server_result, client_result) = handshake(server, client).await;
    assert_eq!(server_result.unwrap(), client_id);
    client_result.unwrap();

    // The client refuses a server that presents another id, whatever the DNS name says.
    let server = server_config(&server_svid, v.clone()).unwrap();
    let wrong = SpiffeId::parse("spiffe://example.org/ns/shop/sa/payments").unwrap();
    let client = client_config(&client_svid, v.clone(), ServerIdentity::Exact(wrong)).unwrap();
    let (_, client_result) = handshake(server, client).await;
    let err = client_result.unwrap_err();
    assert!(err.contains("expected"), "{err}");
}

#[tokio::test]
async fn client_from_another_trust_domain_is_refused_at_the_handshake() {
    let f = fixture("example.org");
    let other = fixture("other.org");
    let server_id = SpiffeId::parse("spiffe://example.org/s").unwrap();
    let server_svid = f.ca.issue_x509(&server_id, ca::DEFAULT_SVID_TTL).unwrap();
    let intruder = other
        .ca
        .issue_x509(
            &SpiffeId::parse("spiffe://other.org/x").unwrap(),
            ca::DEFAULT_SVID_TTL,
        )
        .unwrap();
    let ours = SvidVerifier::new(Bundles::new([f.ca.bundle()]));
    // The intruder trusts our server, but our server does not trust the intruder's domain.
    let theirs = SvidVerifier::new(Bundles::new([f.ca.bundle(), other.ca.bundle()]));
    let server = server_config(&server_svid, ours).unwrap();
    let client = client_config(&intruder, theirs, ServerIdentity::AnyTrusted).unwrap();
    let (server_result, _) = handshake(server, client).await;
    let err = server_result.unwrap_err();
    assert!(err.contains("other.org"), "{err}");
}

#[test]
fn peer_expiry_is_a_second_after_the_first_not_after_in_the_chain() {
    let f = fixture("ward.local");
    let id = SpiffeId::parse("spiffe://ward.local/ns/a/sa/b").unwrap();
    let before = SystemTime::now();
    let svid = f.ca.issue_x509(&id, Duration::from_secs(600)).unwrap();
    let leaf_expiry = peer_expiry(&svid.cert_chain[..1]).unwrap();
    // X.509 times have whole seconds, and `notAfter` itself is still valid.
    let lifetime = leaf_expiry.duration_since(before).unwrap();
    assert!(
        (Duration::from_secs(599)..=Duration::from_secs(602)).contains(&lifetime),
        "{lifetime:?}"
    );
    // A chain that ends sooner than its leaf (an expiring intermediate) ends the connection.
    let shorter = f.ca.issue_x509(&id, Duration::from_secs(60)).unwrap();
    let chain = [svid.cert_chain[0].clone(), shorter.cert_chain[0].clone()];
    assert!(peer_expiry(&chain).unwrap() < leaf_expiry);
    assert!(peer_expiry(&[]).is_err());
    assert!(peer_expiry(&[CertificateDer::from(vec![1, 2, 3])]).is_err());
}

#[test]
fn replacing_bundles_says_whether_the_x509_authorities_changed() {
    let f = fixture("example.org");
    let other = fixture("other.org");
    let bundles = Bundles::new([f.ca.bundle()]);
    assert!(!bundles.replace([f.ca.bundle()]), "the same authorities");
    assert!(
        bundles.replace([f.ca.bundle(), other.ca.bundle()]),
        "a domain added"
    );
    assert!(bundles.replace([other.ca.bundle()]), "a domain dropped");
    // The same trust domain with another CA: a rotation that drops the old authority.
    let rotated = fixture("other.org");
    assert!(
        bundles.replace([rotated.ca.bundle()]),
        "authorities rotated"
    );
    assert!(!bundles.replace([rotated.ca.bundle()]));
    assert!(bundles.get("other.org").is_some() && bundles.get("example.org").is_none());
}

/// Connects twice with the same configs; how each client handshake went.
async fn handshake_kinds(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> Vec<rustls::HandshakeKind> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"ok").await;
                let _ = tls.shutdown().await;
            }
        }
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("ignored.invalid").unwrap(), tcp)
            .await
            .unwrap();
        // Reading lets the client take the server's session tickets, if any.
        let mut buf = [0u8; 2];
        tls.read_exact(&mut buf).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind().unwrap());
    }
    kinds
}

#[tokio::test]
async fn neither_side_resumes_a_session_so_every_handshake_verifies_the_peer() {
    use rustls::HandshakeKind::Full;
    let f = fixture("example.org");
    let id = SpiffeId::parse("spiffe://example.org/s").unwrap();
    let svid = f.ca.issue_x509(&id, ca::DEFAULT_SVID_TTL).unwrap();
    let verifier = || SvidVerifier::new(Bundles::new([f.ca.bundle()]));
    let ours_server = server_config(&svid, verifier()).unwrap();
    let ours_client = client_config(&svid, verifier(), ServerIdentity::AnyTrusted).unwrap();
    // Counterparts with rustls's defaults, which resume (tickets and a session cache).
    let mut resuming_client = ours_client.clone();
    resuming_client.resumption = rustls::client::Resumption::default();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resuming_server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(Arc::new(ClientVerifier::new(verifier())))
        .with_single_cert(svid.cert_chain.clone(), svid.rustls_private_key())
        .unwrap();
    // The counterparts do resume with each other, so the checks below can fail.
    let baseline = handshake_kinds(resuming_server.clone(), resuming_client.clone()).await;
    assert_eq!(baseline[1], rustls::HandshakeKind::Resumed);
    assert_eq!(
        handshake_kinds(ours_server, resuming_client).await,
        [Full, Full]
    );
    assert_eq!(
        handshake_kinds(resuming_server, ours_client).await,
        [Full, Full]
    );
}
