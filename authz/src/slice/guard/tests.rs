use cedar_policy::Policy;

use super::{Guard, Piece, like};
use crate::request::{EndUser, RequestContext};

fn guard(src: &str) -> Option<Guard> {
    let policy = Policy::parse(None, src).unwrap();
    Guard::of_policy(&policy.to_json().unwrap())
}

fn ctx(method: &str, path: &str, mtls: bool) -> RequestContext {
    RequestContext {
        method: method.to_owned(),
        path: path.to_owned(),
        host: "orders-api".to_owned(),
        mtls,
        ..RequestContext::default()
    }
}

#[test]
fn guards_come_from_the_first_condition_only() {
    let unguarded = [
        "permit (principal, action, resource);",
        // The first conjunct reads an entity, which could fail or depend on the store.
        r#"forbid (principal, action, resource) when { principal.namespace == "x" && context.mtls };"#,
        // A second clause must not guard: the first one could raise an error.
        r#"forbid (principal, action, resource) when { context.time > 5 } when { context.mtls };"#,
        // `unless { a && b }` is `!a || !b`.
        r#"forbid (principal, action, resource) unless { context.mtls && context.path == "/" };"#,
        // `source_ip` is optional in the context; reading it can fail.
        r#"forbid (principal, action, resource) when { context.source_ip == ip("10.0.0.1") };"#,
        r#"forbid (principal, action, resource) when { context.request_id == "x" };"#,
        r#"forbid (principal, action, resource) when { context.mtls || context.path == "/" };"#,
    ];
    for src in unguarded {
        assert_eq!(guard(src), None, "{src}");
    }
    let guarded = [
        r#"forbid (principal, action, resource) when { context.path like "/admin/*" };"#,
        r#"forbid (principal, action, resource) when { context.path like "/admin/*" && principal.namespace == "x" };"#,
        r#"forbid (principal, action, resource) when { context.method == "DELETE" && context.mtls && context.time > 3 };"#,
        r#"forbid (principal, action, resource) when { "DELETE" == context.method };"#,
        r#"forbid (principal, action, resource) unless { context.mtls };"#,
        r#"forbid (principal, action, resource) when { !context.mtls };"#,
        r#"forbid (principal, action, resource) when { context.mtls == false };"#,
        r#"forbid (principal, action, resource) when { context.headers has "x-canary" && context.headers["x-canary"] == "1" };"#,
        r#"permit (principal, action, resource) when { context has user && context.user.tenant == "acme" };"#,
        r#"permit (principal, action, resource) unless { context.host == "orders-api" };"#,
    ];
    for src in guarded {
        assert!(guard(src).is_some(), "{src}");
    }
}

#[test]
fn guards_admit_exactly_what_their_test_accepts() {
    let cases = [
        (
            r#"forbid (principal, action, resource) when { context.path like "/admin/*" };"#,
            ctx("GET", "/admin/users", true),
            ctx("GET", "/admins", true),
        ),
        (
            r#"forbid (principal, action, resource) when { context.method == "DELETE" && context.mtls };"#,
            ctx("DELETE", "/", true),
            ctx("GET", "/", true),
        ),
        (
            r#"forbid (principal, action, resource) unless { context.mtls };"#,
            ctx("GET", "/", false),
            ctx("GET", "/", true),
        ),
        (
            r#"forbid (principal, action, resource) when { context.mtls == true };"#,
            ctx("GET", "/", true),
            ctx("GET", "/", false),
        ),
        (
            r#"permit (principal, action, resource) unless { context.host == "orders-api" };"#,
            RequestContext {
                host: "other".to_owned(),
                ..RequestContext::default()
            },
            ctx("GET", "/", true),
        ),
        (
            r#"forbid (principal, action, resource) when { !(context.path like "/public/*") };"#,
            ctx("GET", "/private", true),
            ctx("GET", "/public/x", true),
        ),
    ];
    for (src, admitted, refused) in cases {
        let g = guard(src).unwrap();
        assert!(g.admits(&admitted), "{src} should admit {admitted:?}");
        assert!(!g.admits(&refused), "{src} should refuse {refused:?}");
    }

    let header =
        guard(r#"forbid (principal, action, resource) when { context.headers has "x-canary" };"#)
            .unwrap();
    let mut c = ctx("GET", "/", true);
    assert!(!header.admits(&c));
    c.headers.insert("X-Canary".to_owned(), "1".to_owned());
    assert!(
        header.admits(&c),
        "header names are compared case-insensitively"
    );

    let user = guard(r#"permit (principal, action, resource) when { context has user };"#).unwrap();
    let mut c = ctx("GET", "/", true);
    assert!(!user.admits(&c));
    c.user = Some(EndUser::Id("u".to_owned()));
    assert!(user.admits(&c));
}

#[test]
fn like_matches_as_cedar_does() {
    let lit = |s: &str| Piece::Literal(s.to_owned());
    let w = Piece::Wildcard;
    let cases: &[(&[Piece], &str, bool)] = &[
        (&[], "", true),
        (&[], "a", false),
        (&[Piece::Wildcard], "", true),
        (&[Piece::Wildcard], "/anything/at/all", true),
        (&[lit("/admin")], "/admin", true),
        (&[lit("/admin")], "/admin/", false),
        (&[lit("/admin/"), w.clone()], "/admin/", true),
        (&[lit("/admin/"), w.clone()], "/admin", false),
        (&[w.clone(), lit(".json")], "/a/b.json", true),
        (&[w.clone(), lit(".json")], "/a/b.json5", false),
        (
            &[lit("/a"), w.clone(), lit("/b"), w.clone(), lit("/c")],
            "/a/x/b/y/b/c",
            true,
        ),
        (
            &[lit("/a"), w.clone(), lit("/b"), w.clone(), lit("/c")],
            "/a/x/b/y/c/d",
            false,
        ),
        // A literal `*` (written `\*` in Cedar) is a literal.
        (&[lit("/a*b")], "/a*b", true),
        (&[lit("/a*b")], "/axb", false),
        (&[lit("/é"), w.clone(), lit("ü")], "/é-ü", true),
    ];
    for (pattern, text, want) in cases {
        assert_eq!(like(text, pattern), *want, "{pattern:?} on {text:?}");
    }
    // Many wildcards against a long path that nearly matches stays fast (no exponential
    // backtracking): this would not finish with a naive recursive matcher.
    let mut pattern = Vec::new();
    for _ in 0..30 {
        pattern.push(w.clone());
        pattern.push(lit("a"));
    }
    pattern.push(lit("b"));
    assert!(!like(&"a".repeat(4_000), &pattern));
}

#[test]
fn like_patterns_parse_from_cedar() {
    let g = guard(r#"forbid (principal, action, resource) when { context.path like "/a\*b/*" };"#)
        .unwrap();
    assert!(g.admits(&ctx("GET", "/a*b/x", true)));
    assert!(!g.admits(&ctx("GET", "/axb/x", true)));
}
