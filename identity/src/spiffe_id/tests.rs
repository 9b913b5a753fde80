use super::*;
use SpiffeIdError::*;

#[test]
fn valid_ids_parse() {
    for (input, td, path) in [
        ("spiffe://trustdomain", "trustdomain", ""),
        ("spiffe://trustdomain/path", "trustdomain", "/path"),
        (
            "spiffe://trustdomain/path1/path2",
            "trustdomain",
            "/path1/path2",
        ),
        (
            "spiffe://trust-domain.org_1/P-a_t.h",
            "trust-domain.org_1",
            "/P-a_t.h",
        ),
        (
            "spiffe://ward.local/ns/shop/sa/checkout",
            "ward.local",
            "/ns/shop/sa/checkout",
        ),
        ("spiffe://a/...", "a", "/..."),
        ("spiffe://a/.a/a.", "a", "/.a/a."),
    ] {
        let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(id.trust_domain_name(), td, "{input}");
        assert_eq!(id.path(), path, "{input}");
        assert_eq!(id.to_string(), input);
    }
}

#[test]
fn invalid_ids_are_rejected_with_the_right_reason() {
    let long_path = format!("spiffe://a/{}", "x".repeat(MAX_ID_LEN));
    let long_td = format!("spiffe://{}", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
    let cases: &[(&str, SpiffeIdError)] = &[
        ("", Empty),
        ("http://trustdomain/path", WrongScheme),
        ("SPIFFE://trustdomain/path", WrongScheme),
        ("spiffe:/trustdomain/path", WrongScheme),
        ("spiffe://", MissingTrustDomain),
        ("spiffe:///path", MissingTrustDomain),
        ("spiffe://Trustdomain/path", BadTrustDomainChar('T')),
        ("spiffe://trustdomain:8080/path", BadTrustDomainChar(':')),
        ("spiffe://user@trustdomain/path", BadTrustDomainChar('@')),
        ("spiffe://trust domain/path", BadTrustDomainChar(' ')),
        ("spiffe://trustdomain?query", BadTrustDomainChar('?')),
        ("spiffe://trustdomain#frag", BadTrustDomainChar('#')),
        ("spiffe://trustdomain/path?query", BadPathChar('?')),
        ("spiffe://trustdomain/path#fragment", BadPathChar('#')),
        ("spiffe://trustdomain/pa%20th", BadPathChar('%')),
        ("spiffe://trustdomain/pa$th", BadPathChar('$')),
        ("spiffe://trustdomain/", EmptySegment),
        ("spiffe://trustdomain//path", EmptySegment),
        ("spiffe://trustdomain/path/", EmptySegment),
        ("spiffe://trustdomain/./path", DotSegment),
        ("spiffe://trustdomain/path/..", DotSegment),
    ];
    for (input, expected) in cases {
        assert_eq!(SpiffeId::parse(input).as_ref(), Err(expected), "{input}");
    }
    assert_eq!(SpiffeId::parse(&long_path), Err(TooLong));
    assert_eq!(SpiffeId::parse(&long_td), Err(TrustDomainTooLong));
}

#[test]
fn every_byte_outside_the_allowed_sets_is_rejected_in_the_path() {
    for b in 0u8..=127 {
        let c = b as char;
        let allowed = c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        let input = format!("spiffe://td/a{c}b");
        let parsed = SpiffeId::parse(&input);
        if allowed {
            assert!(parsed.is_ok(), "{input:?}");
        } else if c == '/' {
            assert!(parsed.is_ok(), "a slash splits segments: {input:?}");
        } else {
            assert!(parsed.is_err(), "{input:?}");
        }
    }
}

#[test]
fn id_at_the_length_limit_is_accepted() {
    let prefix = "spiffe://a/";
    let input = format!("{prefix}{}", "x".repeat(MAX_ID_LEN - prefix.len()));
    assert_eq!(input.len(), MAX_ID_LEN);
    assert!(SpiffeId::parse(&input).is_ok());
}

#[test]
fn workload_convention_round_trips() {
    let td = TrustDomain::parse("ward.local").unwrap();
    let id = SpiffeId::workload(&td, "shop", "checkout").unwrap();
    assert_eq!(id.as_str(), "spiffe://ward.local/ns/shop/sa/checkout");
    assert_eq!(
        id.namespace_and_service_account(),
        Some(("shop", "checkout"))
    );
    let other = SpiffeId::parse("spiffe://ward.local/ns/shop").unwrap();
    assert!(other.namespace_and_service_account().is_none());
    assert!(matches!(
        other.require_workload_path(),
        Err(NotWorkloadPath(_))
    ));
    assert!(
        SpiffeId::workload(&td, "a/b", "c").is_ok(),
        "nested namespaces are still valid ids"
    );
    assert!(SpiffeId::workload(&td, "", "c").is_err());
}

#[test]
fn trust_domain_parses_names_and_ids() {
    assert_eq!(
        TrustDomain::parse("example.org").unwrap().as_str(),
        "example.org"
    );
    assert_eq!(
        TrustDomain::parse("spiffe://example.org/x")
            .unwrap()
            .as_str(),
        "example.org"
    );
    assert_eq!(
        TrustDomain::parse("Example.org"),
        Err(BadTrustDomainChar('E'))
    );
    assert_eq!(TrustDomain::parse(""), Err(MissingTrustDomain));
    assert_eq!(
        TrustDomain::parse("example.org").unwrap().id().as_str(),
        "spiffe://example.org"
    );
}
