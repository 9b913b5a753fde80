use super::*;

fn td() -> TrustDomain {
    TrustDomain::parse("ward.local").unwrap()
}

fn parse(text: &str) -> Result<Entries, EntriesError> {
    Entries::parse(Path::new("entries.yaml"), text, &td())
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

fn selectors(list: &[&str]) -> Selectors {
    list.iter().copied().collect()
}

const TWO: &str = "\
- spiffe_id: spiffe://ward.local/ns/shop/sa/checkout
  selectors: [\"unix:uid:1000\", \"unix:path:/usr/bin/checkout\"]
  ttl: 30m
  hint: internal
- spiffe_id: spiffe://ward.local/ns/shop/sa/any
  selectors: [\"unix:uid:1000\"]
";

#[test]
fn a_valid_file_loads_with_defaults() {
    let entries = parse(TWO).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries.trust_domain(), &td());
    let first = &entries.all()[0];
    assert_eq!(
        first.spiffe_id.as_str(),
        "spiffe://ward.local/ns/shop/sa/checkout"
    );
    assert_eq!(first.ttl, Some(Duration::from_secs(1800)));
    assert_eq!(first.hint, "internal");
    let second = &entries.all()[1];
    assert_eq!(second.ttl, None);
    assert_eq!(second.hint, "");
}

#[test]
fn an_entry_matches_only_when_all_its_selectors_are_present() {
    let entries = parse(TWO).unwrap();
    let ids = |caller: &[&str]| -> Vec<String> {
        entries
            .matching(&selectors(caller))
            .into_iter()
            .map(|e| e.spiffe_id.to_string())
            .collect()
    };
    // Both selectors (plus extras the caller has) → both entries.
    assert_eq!(
        ids(&[
            "unix:uid:1000",
            "unix:gid:1000",
            "unix:path:/usr/bin/checkout"
        ]),
        [
            "spiffe://ward.local/ns/shop/sa/checkout",
            "spiffe://ward.local/ns/shop/sa/any"
        ]
    );
    // Only the uid → only the entry that asks for nothing more.
    assert_eq!(
        ids(&["unix:uid:1000", "unix:path:/usr/bin/other"]),
        ["spiffe://ward.local/ns/shop/sa/any"]
    );
    // Another uid → nothing, even with the right path.
    assert!(ids(&["unix:uid:1001", "unix:path:/usr/bin/checkout"]).is_empty());
    assert!(ids(&[]).is_empty());
}

#[test]
fn an_empty_file_is_an_empty_list() {
    assert!(parse("").unwrap().is_empty());
    assert!(parse("  \n").unwrap().is_empty());
    assert!(parse("[]").unwrap().is_empty());
}

#[test]
fn unknown_fields_are_rejected_with_their_location() {
    let msg = err("- spiffe_id: spiffe://ward.local/a\n  selectors: [\"unix:uid:1\"]\n  tll: 1h\n");
    assert!(msg.starts_with("entries.yaml:3:3: "), "{msg}");
    assert!(msg.contains("unknown field `tll`"), "{msg}");
}

#[test]
fn missing_required_fields_are_rejected() {
    let msg = err("- spiffe_id: spiffe://ward.local/a\n");
    assert!(msg.contains("missing field `selectors`"), "{msg}");
    let msg = err("- selectors: [\"unix:uid:1\"]\n");
    assert!(msg.contains("missing field `spiffe_id`"), "{msg}");
}

#[test]
fn a_map_instead_of_a_list_is_rejected() {
    let msg = err("spiffe_id: spiffe://ward.local/a\n");
    assert!(msg.starts_with("entries.yaml"), "{msg}");
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn field_errors_name_the_entry_index_and_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "- spiffe_id: http://ward.local/a\n  selectors: [\"unix:uid:1\"]\n",
            "`entries.yaml`: entry 0: `spiffe_id`: `http://ward.local/a`: SPIFFE id must start with `spiffe://`",
        ),
        (
            "- spiffe_id: spiffe://other.org/a\n  selectors: [\"unix:uid:1\"]\n",
            "`entries.yaml`: entry 0: `spiffe_id`: `spiffe://other.org/a` is not in trust domain `ward.local`",
        ),
        (
            "- spiffe_id: spiffe://ward.local/a\n  selectors: []\n",
            "`entries.yaml`: entry 0: `selectors`: at least one selector is required",
        ),
        (
            "- spiffe_id: spiffe://ward.local/a\n  selectors: [\"k8s:ns:default\"]\n",
            "`entries.yaml`: entry 0: `selectors`: unknown selector `k8s:ns:default`",
        ),
        (
            "- spiffe_id: spiffe://ward.local/a\n  selectors: [\"unix:pid:1\"]\n",
            "`entries.yaml`: entry 0: `selectors`: unknown selector `unix:pid:1`",
        ),
        (
            "- spiffe_id: spiffe://ward.local/a\n  selectors: [\"unix:uid:root\"]\n",
            "`entries.yaml`: entry 0: `selectors`: selector `unix:uid:root`: the value must be a number",
        ),
        (
            "- spiffe_id: spiffe://ward.local/a\n  selectors: [\"unix:path:bin/app\"]\n",
            "`entries.yaml`: entry 0: `selectors`: selector `unix:path:bin/app`: the value must be an absolute path",
        ),
        (
            "- spiffe_id: spiffe://ward.local/a\n  selectors: [\"unix:user:\"]\n",
            "`entries.yaml`: entry 0: `selectors`: selector `unix:user:` has no value",
        ),
        (
            "- spiffe_id: spiffe://ward.local/a\n  selectors: [\"unix:uid:1\"]\n  ttl: an hour\n",
            "`entries.yaml`: entry 0: `ttl`: invalid duration `an hour`",
        ),
        (
            "- spiffe_id: spiffe://ward.local/a\n  selectors: [\"unix:uid:1\"]\n  ttl: 500ms\n",
            "`entries.yaml`: entry 0: `ttl`: `500ms` is shorter than 1s",
        ),
    ];
    for (text, expected) in cases {
        let msg = err(text);
        assert!(msg.starts_with(expected), "got: {msg}\nwant: {expected}");
    }
}

#[test]
fn the_index_counts_from_zero_in_file_order() {
    let text =
        format!("{TWO}- spiffe_id: spiffe://ward.local/../x\n  selectors: [\"unix:uid:1\"]\n");
    let msg = err(&text);
    assert!(
        msg.starts_with("`entries.yaml`: entry 2: `spiffe_id`: "),
        "{msg}"
    );
}

#[test]
fn load_reports_a_missing_file() {
    let err = Entries::load(Path::new("/nonexistent/entries.yaml"), &td()).unwrap_err();
    assert!(matches!(err, EntriesError::Read { .. }));
    assert!(
        err.to_string()
            .starts_with("reading entries `/nonexistent/entries.yaml`: "),
        "{err}"
    );
}

#[test]
fn entries_built_in_code_are_validated_too() {
    let entry = |id: &str, sel: &[&str]| Entry {
        spiffe_id: SpiffeId::parse(id).unwrap(),
        selectors: sel.iter().map(|s| s.to_string()).collect(),
        ttl: None,
        hint: String::new(),
    };
    assert!(Entries::new(td(), vec![entry("spiffe://ward.local/a", &["unix:uid:1"])]).is_ok());
    assert!(Entries::new(td(), vec![entry("spiffe://other/a", &["unix:uid:1"])]).is_err());
    assert!(Entries::new(td(), vec![entry("spiffe://ward.local/a", &[])]).is_err());
}
