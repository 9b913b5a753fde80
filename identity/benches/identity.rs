//! Issuance and verification throughput on one core: `cargo bench -p ward-identity`.

#![allow(
    clippy::expect_used,
    reason = "a benchmark fails loudly on broken setup"
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls_pki_types::UnixTime;
use ward_identity::ca::{self, InitOptions};
use ward_identity::verify::{Bundles, SvidVerifier};
use ward_identity::{Ca, SpiffeId, SvidSource, TrustDomain};

fn bench(c: &mut Criterion) {
    ward_identity::install_crypto_provider();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::init(
        dir.path(),
        &InitOptions {
            trust_domain: TrustDomain::parse("bench.local").expect("trust domain"),
            ttl: ca::DEFAULT_CA_TTL,
            upstream: None,
        },
    )
    .expect("CA");
    let id = SpiffeId::parse("spiffe://bench.local/ns/shop/sa/checkout").expect("id");
    let audience = vec!["orders-api".to_owned()];
    let svid = ca.issue_x509(&id, ca::DEFAULT_SVID_TTL).expect("svid");
    let token = ca
        .issue_jwt(&id, &audience, ca::DEFAULT_JWT_TTL)
        .expect("jwt")
        .token;
    let bundle = ca.bundle();
    let verifier = SvidVerifier::new(Bundles::new([bundle.clone()]));

    let mut group = c.benchmark_group("identity");
    group.throughput(Throughput::Elements(1));
    group.bench_function("issue_x509_svid_p256", |b| {
        b.iter(|| {
            ca.issue_x509(black_box(&id), ca::DEFAULT_SVID_TTL)
                .expect("svid")
        })
    });
    group.bench_function("sign_jwt_svid_es256", |b| {
        b.iter(|| {
            ca.issue_jwt(black_box(&id), &audience, ca::DEFAULT_JWT_TTL)
                .expect("jwt")
        })
    });
    // Every call does the full check, as for a token never seen before.
    group.bench_function("verify_jwt_svid_uncached", |b| {
        b.iter(|| {
            ward_identity::jwt::validate_uncached(&bundle, black_box(&token), "orders-api")
                .expect("valid")
        })
    });
    // A workload presents the same token until it renews it: the bundle's cache answers.
    group.bench_function("verify_jwt_svid_repeated_token", |b| {
        b.iter(|| {
            bundle
                .validate_jwt(black_box(&token), "orders-api")
                .expect("valid")
        })
    });
    group.bench_function("verify_x509_svid_chain", |b| {
        b.iter(|| {
            verifier
                .verify(
                    black_box(svid.leaf()),
                    &[],
                    UnixTime::now(),
                    webpki::KeyUsage::client_auth(),
                )
                .expect("valid")
        })
    });
    // The floor under JWT verification: one ECDSA P-256 signature check, nothing else.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .expect("key");
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
    )
    .expect("key");
    let message = token.as_bytes();
    let signature = pair.sign(&rng, message).expect("sign");
    let public = aws_lc_rs::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    group.bench_function("raw_ecdsa_p256_verify", |b| {
        b.iter(|| {
            aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                &public,
            )
            .verify(black_box(message), signature.as_ref())
            .expect("valid")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
