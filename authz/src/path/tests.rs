use rstest::rstest;

use super::*;

#[rstest]
#[case::root("/", "/")]
#[case::plain("/orders/7712", "/orders/7712")]
#[case::trailing_slash_kept("/orders/", "/orders/")]
#[case::dot_dot_back_into_admin("/admin/../admin", "/admin")]
#[case::dot_dot_escapes_nothing("/../../etc/passwd", "/etc/passwd")]
#[case::dot_segments("/a/./b/../c", "/a/c")]
#[case::trailing_dot_dot("/a/b/..", "/a/")]
#[case::trailing_dot("/a/b/.", "/a/b/")]
#[case::double_slash_prefix("//admin", "/admin")]
#[case::double_slash_inside("/orders//7712///refund", "/orders/7712/refund")]
#[case::encoded_unreserved_letter("/%61dmin", "/admin")]
#[case::encoded_unreserved_upper("/%41DMIN", "/ADMIN")]
#[case::encoded_tilde_and_digit("/%7Euser/%31", "/~user/1")]
#[case::encoded_dots_are_dot_segments("/static/%2e%2e/admin", "/admin")]
#[case::encoded_dots_upper("/static/%2E%2E/%2E/admin", "/admin")]
#[case::reserved_escape_uppercased("/q/a%3ab", "/q/a%3Ab")]
#[case::space_escape_kept("/files/a%20b", "/files/a%20b")]
#[case::lower_hex_uppercased("/files/a%3cb", "/files/a%3Cb")]
#[case::non_ascii_escape_kept("/caf%c3%a9", "/caf%C3%A9")]
#[case::semicolon_is_ordinary("/admin;x", "/admin;x")]
#[case::case_preserved("/ADMIN", "/ADMIN")]
fn normalizes(#[case] input: &str, #[case] expected: &str) {
    let p = NormalizedPath::parse(input).unwrap();
    assert_eq!(p.path(), expected, "input {input}");
    assert_eq!(p.query(), None);
}

#[test]
fn escape_of_non_unreserved_keeps_its_encoding_with_upper_hex() {
    // `%20` is a space: not unreserved, so it stays encoded (upper-case hex).
    assert_eq!(
        NormalizedPath::parse("/a%2fb").unwrap_err(),
        PathError::EncodedSlash
    );
    assert_eq!(NormalizedPath::parse("/a%20b").unwrap().path(), "/a%20b");
}

#[rstest]
#[case::empty("", PathError::Empty)]
#[case::not_origin_form("admin", PathError::NotOriginForm)]
#[case::absolute_form("http://x/admin", PathError::NotOriginForm)]
#[case::encoded_slash("/admin%2F", PathError::EncodedSlash)]
#[case::encoded_slash_lower("/admin%2fusers", PathError::EncodedSlash)]
#[case::encoded_backslash("/admin%5C..%5Csecret", PathError::EncodedBackslash)]
#[case::raw_backslash("/admin\\..\\secret", PathError::Backslash)]
#[case::encoded_nul("/admin%00.html", PathError::Nul)]
#[case::raw_nul("/admin\0", PathError::Nul)]
#[case::fragment("/admin#top", PathError::Fragment)]
#[case::fragment_in_query("/admin?a=1#top", PathError::Fragment)]
#[case::bad_escape("/a%zz", PathError::MalformedPercent(2))]
#[case::truncated_escape("/a%4", PathError::MalformedPercent(2))]
#[case::raw_space("/a b", PathError::InvalidChar(' '))]
#[case::raw_non_ascii("/café", PathError::InvalidChar('é'))]
#[case::control_char("/a\tb", PathError::InvalidChar('\t'))]
fn rejects(#[case] input: &str, #[case] expected: PathError) {
    assert_eq!(
        NormalizedPath::parse(input).unwrap_err(),
        expected,
        "input {input:?}"
    );
}

#[test]
fn query_is_split_off_and_not_normalized() {
    let p = NormalizedPath::parse("/orders/../orders?id=../x&y=%2F").unwrap();
    assert_eq!(p.path(), "/orders");
    assert_eq!(p.query(), Some("id=../x&y=%2F"));
    assert_eq!(p.to_string(), "/orders?id=../x&y=%2F");
    // A `?` that came from an escape is data, not a query separator.
    let p = NormalizedPath::parse("/a%3Fb").unwrap();
    assert_eq!(p.path(), "/a%3Fb");
    assert_eq!(p.query(), None);
}

#[test]
fn very_long_paths() {
    let ok = format!("/{}", "a/".repeat(4000));
    assert_eq!(ok.len(), 8001);
    let p = NormalizedPath::parse(&ok).unwrap();
    assert_eq!(p.segments().count(), 4001);
    let too_long = format!("/{}", "a".repeat(MAX_PATH_LEN));
    assert_eq!(
        NormalizedPath::parse(&too_long).unwrap_err(),
        PathError::TooLong
    );
    // Many `..` never climb above the root, however many there are.
    let climb = format!("{}/etc/", "/..".repeat(2000));
    assert_eq!(NormalizedPath::parse(&climb).unwrap().path(), "/etc/");
}

#[test]
fn options_change_the_strictness() {
    let lenient = NormalizeOptions {
        reject_encoded_slash: false,
        ..NormalizeOptions::default()
    };
    assert_eq!(
        NormalizedPath::parse_with("/a%2fb/../c", lenient)
            .unwrap()
            .path(),
        "/c"
    );
    assert_eq!(
        NormalizedPath::parse_with("/files/a%2fb", lenient)
            .unwrap()
            .path(),
        "/files/a%2Fb"
    );
    let strict = NormalizeOptions {
        reject_semicolon: true,
        ..NormalizeOptions::default()
    };
    assert_eq!(
        NormalizedPath::parse_with("/admin;x", strict).unwrap_err(),
        PathError::Semicolon
    );
    assert_eq!(
        NormalizedPath::parse_with("/admin%3Bx", strict).unwrap_err(),
        PathError::Semicolon
    );
}

#[test]
fn normalization_is_idempotent() {
    for input in ["/a/../b//c/%7e/./", "/%41%2e/x", "/x;y/%20", "/", "/a/b/.."] {
        let once = NormalizedPath::parse(input).unwrap();
        let twice = NormalizedPath::parse(once.path()).unwrap();
        assert_eq!(once, twice, "input {input}");
    }
}
