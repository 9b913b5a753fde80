use std::path::Path;

use rstest::rstest;

use super::*;

fn route(method: &str, path: &str, action: &str) -> Route {
    Route {
        method: MethodMatch::parse(method).unwrap(),
        template: Template::parse(path).unwrap(),
        action: action.to_owned(),
        location: Location::start(Path::new("routes/test.yaml")),
    }
}

fn table() -> RouteTable {
    let mut t = RouteTable::default();
    t.insert(
        "orders-api".to_owned(),
        vec![
            route("POST", "/orders/{id}/refund", "orders:refund"),
            route("GET", "/orders/export", "orders:export"),
            route("GET", "/orders/{id}", "orders:read"),
            route("*", "/admin/{*rest}", "orders:admin"),
            route("GET", "/", "orders:home"),
        ],
    );
    t
}

#[rstest]
#[case::refund("POST", "/orders/7712/refund", Some("orders:refund"))]
#[case::refund_wrong_method("GET", "/orders/7712/refund", None)]
#[case::refund_normalized_first("POST", "//orders/./7712/x/../refund", Some("orders:refund"))]
#[case::refund_encoded_letters("POST", "/%6Frders/7712/refund", Some("orders:refund"))]
#[case::export_literal_wins_by_order("GET", "/orders/export", Some("orders:export"))]
#[case::read("GET", "/orders/7712", Some("orders:read"))]
#[case::param_needs_a_segment("GET", "/orders/", None)]
#[case::too_many_segments("GET", "/orders/7712/x", None)]
#[case::query_is_not_matched("GET", "/orders/7712?refund=1", Some("orders:read"))]
#[case::case_sensitive("GET", "/ORDERS/7712", None)]
#[case::semicolon_is_not_stripped("GET", "/orders/export;x", Some("orders:read"))]
#[case::rest_matches_empty("DELETE", "/admin/", Some("orders:admin"))]
#[case::rest_matches_deep("PUT", "/admin/a/b/c", Some("orders:admin"))]
#[case::rest_matches_the_prefix_itself("PUT", "/admin", Some("orders:admin"))]
#[case::rest_needs_its_prefix("PUT", "/administrator", None)]
#[case::root("GET", "/", Some("orders:home"))]
fn matching(#[case] method: &str, #[case] target: &str, #[case] expected: Option<&str>) {
    let t = table();
    let path = NormalizedPath::parse(target).unwrap();
    let got = t
        .find("orders-api", method, &path)
        .map(|(r, _)| r.action.as_str());
    assert_eq!(got, expected, "{method} {target}");
}

#[test]
fn params_are_bound() {
    let t = table();
    let path = NormalizedPath::parse("/admin/a/b").unwrap();
    let (_, params) = t.find("orders-api", "GET", &path).unwrap();
    assert_eq!(params.get("rest").map(String::as_str), Some("a/b"));
    let path = NormalizedPath::parse("/orders/7712/refund").unwrap();
    let (_, params) = t.find("orders-api", "POST", &path).unwrap();
    assert_eq!(params.get("id").map(String::as_str), Some("7712"));
    assert!(t.find("other-svc", "GET", &path).is_none());
    assert_eq!(t.len(), 5);
}

#[rstest]
#[case::relative("orders", "must start with `/`")]
#[case::unclosed("/orders/{id", "no closing")]
#[case::mixed("/orders/x{id}", "mixes text")]
#[case::empty_name("/orders/{}", "needs a name")]
#[case::bad_name("/orders/{a-b}", "needs a name")]
#[case::rest_not_last("/a/{*rest}/b", "must be the last segment")]
#[case::twice("/a/{id}/{id}", "binds `id` twice")]
#[case::dot_segment("/a/../b", "never matches")]
#[case::double_slash("/a//b", "never matches")]
#[case::encoded_unreserved("/%61dmin", "never matches")]
#[case::lower_hex("/a%3ab", "never matches")]
#[case::encoded_slash("/a%2Fb", "never matches")]
fn malformed_templates(#[case] raw: &str, #[case] why: &str) {
    let err = Template::parse(raw).unwrap_err();
    assert!(err.contains(why), "{raw}: {err}");
}

#[test]
fn unknown_methods_are_rejected() {
    assert!(
        MethodMatch::parse("get")
            .unwrap_err()
            .contains("unknown method `get`")
    );
    assert_eq!(MethodMatch::parse("*").unwrap(), MethodMatch::Any);
}

#[test]
fn shadowed_routes_are_found() {
    let routes = vec![
        route("GET", "/orders/{id}", "a"),
        route("GET", "/orders/export", "b"),  // shadowed by 0
        route("POST", "/orders/export", "c"), // different method
        route("*", "/admin/{*rest}", "d"),
        route("DELETE", "/admin/x/y", "e"),   // shadowed by 3
        route("GET", "/admin", "f"),          // `{*rest}` may match nothing: shadowed by 3
        route("GET", "/administrator", "i"),  // a different literal
        route("GET", "/orders/", "g"),        // `{id}` never matches an empty segment
        route("GET", "/orders/{other}", "h"), // same shape as 0
    ];
    assert_eq!(
        shadowed(&routes),
        vec![
            None,
            Some(0),
            None,
            None,
            Some(3),
            Some(3),
            None,
            None,
            Some(0)
        ]
    );
}
