use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

use super::*;
use crate::verify::{Bundles, SvidVerifier, VerifyError};

fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

fn init(dir: &Path) -> Ca {
    Ca::init(
        dir,
        &InitOptions {
            trust_domain: td(),
            ttl: DEFAULT_CA_TTL,
            upstream: None,
        },
    )
    .unwrap()
}

fn id(path: &str) -> SpiffeId {
    SpiffeId::new(&td(), path).unwrap()
}

fn verifier(ca: &Ca) -> SvidVerifier {
    SvidVerifier::new(Bundles::new([ca.bundle()]))
}

fn verify(v: &SvidVerifier, svid: &X509Svid) -> Result<SpiffeId, VerifyError> {
    v.verify(
        svid.leaf(),
        &svid.cert_chain[1..],
        rustls_pki_types::UnixTime::now(),
        webpki::KeyUsage::client_auth(),
    )
}

#[test]
fn init_writes_keys_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    init(&ca_dir);
    let mode = |p: &str| fs::metadata(ca_dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("ca.json"), 0o600);
    assert_eq!(
        fs::metadata(&ca_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for public in ["bundle.pem", "bundle.jwks", "ca.pem"] {
        assert!(ca_dir.join(public).exists(), "{public}");
    }
    let again = Ca::init(
        &ca_dir,
        &InitOptions {
            trust_domain: td(),
            ttl: DEFAULT_CA_TTL,
            upstream: None,
        },
    );
    assert!(matches!(again, Err(CaError::AlreadyExists(_))), "{again:?}");
}

#[test]
fn load_refuses_a_world_readable_key() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path());
    fs::set_permissions(
        dir.path().join("ca.json"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, CaError::InsecurePermissions { mode: 0o644, .. }),
        "{err}"
    );
}

#[test]
fn load_of_a_missing_ca_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = Ca::load(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::NotFound(_)));
    assert!(err.to_string().contains("ward ca init"), "{err}");
}

#[test]
fn x509_svid_follows_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path());
    let svid = ca
        .issue_x509(&id("/ns/shop/sa/checkout"), DEFAULT_SVID_TTL)
        .unwrap();
    assert_eq!(svid.cert_chain.len(), 1, "a self-signed root is not sent");
    let (_, cert) = X509Certificate::from_der(svid.leaf()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, ["spiffe://example.org/ns/shop/sa/checkout"]);
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("CA:false is explicit");
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(cert.raw_serial().len(), 16, "128-bit serial");
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!((3600..=3600 + 31).contains(&lifetime), "{lifetime}");
    assert_eq!(verify(&verifier(&ca), &svid).unwrap(), svid.spiffe_id);
}

#[test]
fn serials_are_random() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path());
    let serial = |s: &X509Svid| {
        X509Certificate::from_der(s.leaf())
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    let a = ca.issue_x509(&id("/a"), DEFAULT_SVID_TTL).unwrap();
    let b = ca.issue_x509(&id("/a"), DEFAULT_SVID_TTL).unwrap();
    assert_ne!(serial(&a), serial(&b));
}

#[test]
fn svid_never_outlives_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::init(
        dir.path(),
        &InitOptions {
            trust_domain: td(),
            ttl: Duration::from_secs(120),
            upstream: None,
        },
    )
    .unwrap();
    let svid = ca.issue_x509(&id("/a"), Duration::from_secs(3600)).unwrap();
    assert!(svid.not_after <= ca.not_after());
    assert!(svid.not_after < SystemTime::now() + Duration::from_secs(130));
}

#[test]
fn foreign_trust_domain_and_zero_ttl_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path());
    let other = SpiffeId::parse("spiffe://other.org/a").unwrap();
    assert!(matches!(
        ca.issue_x509(&other, DEFAULT_SVID_TTL),
        Err(CaError::ForeignTrustDomain { .. })
    ));
    assert!(matches!(
        ca.issue_x509(&id("/a"), Duration::ZERO),
        Err(CaError::Validity(_))
    ));
    assert!(matches!(
        ca.issue_jwt(&other, &["aud".into()], DEFAULT_JWT_TTL),
        Err(CaError::ForeignTrustDomain { .. })
    ));
}

#[test]
fn jwt_svid_validates_and_enforces_audience_kid_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path());
    let who = id("/ns/shop/sa/checkout");
    let jwt = ca
        .issue_jwt(&who, &["orders".into()], DEFAULT_JWT_TTL)
        .unwrap();
    let claims = ca.bundle().validate_jwt(&jwt.token, "orders").unwrap();
    assert_eq!(claims.spiffe_id, who);
    for claim in ["sub", "aud", "exp", "iat"] {
        assert!(claims.claims.contains_key(claim), "{claim}");
    }
    assert!(matches!(
        ca.bundle().validate_jwt(&jwt.token, "payments"),
        Err(JwtError::Audience(_))
    ));
    // Another CA's bundle does not know the kid.
    let other_dir = tempfile::tempdir().unwrap();
    let other = init(other_dir.path());
    assert!(matches!(
        other.bundle().validate_jwt(&jwt.token, "orders"),
        Err(JwtError::UnknownKeyId(_))
    ));
    // A tampered payload fails the signature.
    let mut parts: Vec<String> = jwt.token.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    assert!(
        ca.bundle()
            .validate_jwt(&parts.join("."), "orders")
            .is_err()
    );
    // A zero-second TTL is refused; one second expires.
    let short = ca
        .issue_jwt(&who, &["orders".into()], Duration::from_secs(1))
        .unwrap();
    // Validated once (and cached) while fresh; the cache must not outlive `exp`.
    assert!(ca.bundle().validate_jwt(&short.token, "orders").is_ok());
    let deadline = short.expiry + Duration::from_secs(1);
    while SystemTime::now() <= deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(matches!(
        ca.bundle().validate_jwt(&short.token, "orders"),
        Err(JwtError::Expired)
    ));
    assert!(matches!(
        ca.issue_jwt(&who, &[], DEFAULT_JWT_TTL),
        Err(CaError::Jwt(JwtError::NoAudience))
    ));
}

#[test]
fn jwt_with_another_algorithm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path());
    // alg "none" and HS256 must never be accepted, whatever the kid.
    let kid = ca.bundle().jwt_keys()[0].kid.clone();
    let b64 =
        |s: &str| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s);
    for alg in ["none", "HS256"] {
        let header = b64(&format!(r#"{{"alg":"{alg}","kid":"{kid}"}}"#));
        let body = b64(r#"{"sub":"spiffe://example.org/a","aud":["x"],"exp":99999999999}"#);
        let token = format!("{header}.{body}.");
        assert!(ca.bundle().validate_jwt(&token, "x").is_err(), "{alg}");
    }
}

#[test]
fn rotation_keeps_old_svids_valid_during_grace() {
    let dir = tempfile::tempdir().unwrap();
    let ca = init(dir.path());
    let old_svid = ca.issue_x509(&id("/a"), DEFAULT_SVID_TTL).unwrap();
    let old_jwt = ca
        .issue_jwt(&id("/a"), &["x".into()], DEFAULT_JWT_TTL)
        .unwrap();
    let rotated = Ca::rotate(
        dir.path(),
        RotateOptions {
            grace: Duration::from_secs(3600),
            ttl: DEFAULT_CA_TTL,
            upstream: None,
        },
    )
    .unwrap();
    assert_ne!(rotated.ca_cert(), ca.ca_cert());
    assert_eq!(rotated.bundle().x509_authorities().len(), 2);
    let new_svid = rotated.issue_x509(&id("/a"), DEFAULT_SVID_TTL).unwrap();
    let v = verifier(&rotated);
    assert!(
        verify(&v, &old_svid).is_ok(),
        "old root kept for the grace period"
    );
    assert!(verify(&v, &new_svid).is_ok());
    assert!(rotated.bundle().validate_jwt(&old_jwt.token, "x").is_ok());
    // Loading again (a restart) sees the same two roots.
    assert_eq!(
        Ca::load(dir.path())
            .unwrap()
            .bundle()
            .x509_authorities()
            .len(),
        2
    );
    // A second rotation with no grace drops the root it replaces, and only that one.
    let again = Ca::rotate(
        dir.path(),
        RotateOptions {
            grace: Duration::ZERO,
            ttl: DEFAULT_CA_TTL,
            upstream: None,
        },
    )
    .unwrap();
    assert_eq!(again.bundle().x509_authorities().len(), 2);
    assert!(
        verify(&verifier(&again), &old_svid).is_ok(),
        "still in its grace period"
    );
    assert_eq!(
        verify(&verifier(&again), &new_svid),
        Err(VerifyError::UnknownIssuer)
    );
}

#[test]
fn intermediate_under_an_upstream_root_chains_to_it() {
    let dir = tempfile::tempdir().unwrap();
    // The "enterprise root" is just another self-signed CA here.
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = params.self_signed(&root_key).unwrap();
    let cert_path = dir.path().join("root.pem");
    let key_path = dir.path().join("root.key");
    fs::write(&cert_path, root.pem()).unwrap();
    fs::write(&key_path, root_key.serialize_pem()).unwrap();
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).unwrap();
    let upstream = Upstream {
        cert_path,
        key_path,
    };
    let ca = Ca::init(
        &dir.path().join("ca"),
        &InitOptions {
            trust_domain: td(),
            ttl: DEFAULT_CA_TTL,
            upstream: Some(upstream.clone()),
        },
    )
    .unwrap();
    assert_eq!(
        ca.bundle().x509_authorities()[0].as_ref(),
        root.der().as_ref()
    );
    let svid = ca.issue_x509(&id("/a"), DEFAULT_SVID_TTL).unwrap();
    assert_eq!(svid.cert_chain.len(), 2, "leaf + Ward's intermediate");
    assert!(verify(&verifier(&ca), &svid).is_ok());
    // Rotating an intermediate needs the upstream again.
    let no_upstream = Ca::rotate(
        &dir.path().join("ca"),
        RotateOptions {
            grace: DEFAULT_ROTATION_GRACE,
            ttl: DEFAULT_CA_TTL,
            upstream: None,
        },
    );
    assert!(matches!(no_upstream, Err(CaError::Upstream(_))));
    // A key that does not match the certificate is refused.
    let wrong_key = dir.path().join("wrong.key");
    fs::write(
        &wrong_key,
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem(),
    )
    .unwrap();
    fs::set_permissions(&wrong_key, fs::Permissions::from_mode(0o600)).unwrap();
    let err = Ca::init(
        &dir.path().join("ca2"),
        &InitOptions {
            trust_domain: td(),
            ttl: DEFAULT_CA_TTL,
            upstream: Some(Upstream {
                key_path: wrong_key,
                ..upstream
            }),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}
