//! The headers the proxy reads, adds and strips: request ids, W3C trace context, the verified
//! peer id, and hop-by-hop headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The request id, kept when the caller sent a sane one.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context.
pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The verified SPIFFE id of the calling workload, set by the inbound proxy only.
pub(crate) const PEER_ID: HeaderName = HeaderName::from_static("x-ward-peer-id");
/// Envoy's client-certificate header: never trusted from outside, so always stripped.
pub(crate) const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Longest request id accepted from a caller; a longer one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// Headers that describe one hop, not the request (RFC 9110 §7.6.1), dropped when forwarding.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The caller's request id if it is sane (printable ASCII, not too long), else a fresh one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(ward_audit::record::time_ordered_id, str::to_owned)
}

/// Continues the caller's trace (same trace id, this hop as the new parent) or starts one.
/// Returns the trace id and the `traceparent` to send on.
pub(crate) fn trace(headers: &HeaderMap) -> (String, String) {
    let parsed = headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let (trace_id, flags) = match parsed {
        // Two hex digits once parsed.
        Some((trace_id, _, flags)) => (
            trace_id.to_owned(),
            u8::from_str_radix(flags, 16).unwrap_or(1),
        ),
        None => (ward_audit::record::random_id(), 1),
    };
    let traceparent = traceparent(&trace_id, fastrand::u64(1..), flags);
    (trace_id, traceparent)
}

/// `00-<trace id>-<span id as 16 hex digits>-<flags as 2>`, written by hand: `format!` was a
/// tenth of the request context's cost (callgrind).
pub(crate) fn traceparent(trace_id: &str, span_id: u64, flags: u8) -> String {
    use ward_audit::record::push_hex;
    let mut out = String::with_capacity(TRACEPARENT_LEN);
    out.push_str("00-");
    out.push_str(trace_id);
    out.push('-');
    push_hex(&mut out, &span_id.to_be_bytes());
    out.push('-');
    push_hex(&mut out, &[flags]);
    out
}

/// `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, with the all-zero ids invalid:
/// the trace id, the parent id and the flags.
pub(crate) fn parse_traceparent(value: &str) -> Option<(&str, &str, &str)> {
    let b = value.as_bytes();
    if b.len() != TRACEPARENT_LEN || !value.starts_with("00-") || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
    let (trace_id, parent, flags) = (&b[3..35], &b[36..52], &b[53..]);
    let valid = hex(trace_id) && hex(parent) && hex(flags) && nonzero(trace_id) && nonzero(parent);
    // All ASCII once checked, so the slices fall on character boundaries.
    valid.then(|| (&value[3..35], &value[36..52], &value[53..]))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look at each name finds which are present: removing a name hashes it, and most
    // messages carry none, or only `Connection: keep-alive` (nginx's responses); hashing all
    // seven cost 2.3k instructions a message (callgrind).
    // Bit i: HOP_BY_HOP[i] is present.
    let present = headers
        .keys()
        .filter_map(|name| HOP_BY_HOP.iter().position(|h| h == name))
        .fold(0u8, |bits, i| bits | 1 << i);
    if present == 0 {
        return;
    }
    // Other headers `Connection` names; the hop-by-hop ones (and `close`) go anyway.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(name);
        }
    }
    for name in &named {
        headers.remove(name);
    }
}

/// Drops identity headers a caller may have forged, then sets ours.
pub(crate) fn set_identity_headers(
    headers: &mut HeaderMap,
    request_id: &str,
    traceparent: &str,
    peer_id: Option<&str>,
) {
    headers.remove(&XFCC);
    // Inserting replaces every value a caller sent; a value we cannot send removes them.
    for (name, value, unique) in [
        (REQUEST_ID, Some(request_id), true),
        (TRACEPARENT, Some(traceparent), true),
        (PEER_ID, peer_id, false),
    ] {
        match value.and_then(|v| HeaderValue::from_str(v).ok()) {
            Some(mut v) => {
                // A value no later request repeats is not worth a place in HPACK's dynamic
                // table: marked sensitive, HTTP/2 sends it as a never-indexed literal, and
                // neither this proxy's encoder nor the next one's decoder inserts it and
                // evicts older entries for it on every request.
                v.set_sensitive(unique);
                headers.insert(name, v);
            }
            None => {
                headers.remove(&name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn request_ids_are_kept_when_sane() {
        assert_eq!(request_id(&map(&[("x-request-id", "abc-1")])), "abc-1");
        let fresh = request_id(&map(&[("x-request-id", "has space")]));
        assert_eq!(fresh.len(), 32);
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
        let long = "a".repeat(200);
        assert_ne!(request_id(&map(&[("x-request-id", &long)])), long);
    }

    #[test]
    fn traces_continue_or_start() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace_id, tp) = trace(&map(&[("traceparent", incoming)]));
        assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-01"));
        assert_ne!(tp, incoming, "this hop gets its own parent id");
        assert!(parse_traceparent(&tp).is_some());

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let (trace_id, tp) = trace(&map(&[("traceparent", bad)]));
            assert_ne!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(parse_traceparent(&tp).is_some(), "{tp}");
        }
    }

    #[test]
    fn traceparents_are_checked_field_by_field() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(good),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01"))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        assert_eq!(
            traceparent("4bf92f3577b34da6a3ce929d0e0e4736", 0x00f0_67aa_0ba9_02b7, 1),
            good
        );
    }

    #[test]
    fn each_hop_by_hop_header_is_stripped_alone() {
        for name in HOP_BY_HOP {
            let mut h = map(&[(name.as_str(), "x"), ("x-keep", "1"), ("host", "a")]);
            strip_hop_by_hop(&mut h);
            assert!(h.get(&name).is_none(), "{name}");
            assert_eq!(h.len(), 2, "{name}");
        }
        let mut h = map(&[("x-keep", "1"), ("host", "a"), ("x-secret", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 3, "nothing hop-by-hop, nothing removed");
        let mut h = map(&[
            ("connection", "Keep-Alive, close, TE, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-secret", "1"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn forged_identity_headers_are_replaced() {
        let mut h = map(&[
            ("x-ward-peer-id", "spiffe://evil/x"),
            ("x-forwarded-client-cert", "By=spiffe://evil"),
            ("connection", "close, x-secret"),
            ("x-secret", "1"),
            ("x-keep", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        set_identity_headers(&mut h, "r1", "00-x", Some("spiffe://ward.local/ns/a/sa/b"));
        assert_eq!(h["x-ward-peer-id"], "spiffe://ward.local/ns/a/sa/b");
        assert_eq!(h.get_all("x-ward-peer-id").iter().count(), 1);
        assert!(h.get("x-forwarded-client-cert").is_none());
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert_eq!(h["x-keep"], "1");
        assert_eq!(h["x-request-id"], "r1");
        assert!(h["x-request-id"].is_sensitive() && h["traceparent"].is_sensitive());
        assert!(!h["x-ward-peer-id"].is_sensitive());

        set_identity_headers(&mut h, "r1", "00-x", None);
        assert!(h.get("x-ward-peer-id").is_none());
        h.append(
            "x-ward-peer-id",
            HeaderValue::from_static("spiffe://evil/x"),
        );
        set_identity_headers(&mut h, "r1", "00-x", Some("bad\nvalue"));
        assert!(
            h.get("x-ward-peer-id").is_none(),
            "unsendable: removed, not kept"
        );
    }
}
