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
        Some((trace_id, _, flags)) => (trace_id.to_owned(), flags.to_owned()),
        None => (ward_audit::record::random_id(), "01".to_owned()),
    };
    let span_id = format!("{:016x}", fastrand::u64(1..));
    let traceparent = format!("00-{trace_id}-{span_id}-{flags}");
    (trace_id, traceparent)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, with the all-zero ids invalid:
/// the trace id, the parent id and the flags.
pub(crate) fn parse_traceparent(value: &str) -> Option<(&str, &str, &str)> {
    let mut parts = value.split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let valid = version == "00"
        && parts.next().is_none()
        && hex(trace_id, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, parent, flags))
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
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
    headers.remove(&PEER_ID);
    headers.remove(&XFCC);
    for (name, value) in [
        (REQUEST_ID, Some(request_id)),
        (TRACEPARENT, Some(traceparent)),
        (PEER_ID, peer_id),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, v);
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
        assert!(h.get("x-forwarded-client-cert").is_none());
        assert!(h.get("x-secret").is_none() && h.get("connection").is_none());
        assert_eq!(h["x-keep"], "1");
        assert_eq!(h["x-request-id"], "r1");

        set_identity_headers(&mut h, "r1", "00-x", None);
        assert!(h.get("x-ward-peer-id").is_none());
    }
}
