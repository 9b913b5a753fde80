//! Parses arbitrary bytes as a SPIFFE id; a valid id must round-trip and satisfy the spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ward_identity::SpiffeId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SpiffeId::parse(text) {
        assert_eq!(id.as_str(), text);
        assert!(text.len() <= 2048);
        assert!(!id.trust_domain_name().is_empty());
        assert!(!id.path().contains("//") && !id.path().ends_with('/'));
        assert!(id.path().split('/').all(|s| s != "." && s != ".."));
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
    }
});
