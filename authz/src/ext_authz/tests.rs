use envoy_types::ext_authz::v3::pb::HttpResponse;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{Peer, Request as EnvoyRequest};

use super::*;
use crate::authorizer::Authorizer;
use crate::engine::PolicyEngine;
use crate::modes::{Mode, Modes};
use crate::reload::Reloader;
use crate::server::Inputs;
use crate::test_util::demo_dir;

const CHECKOUT: &str = "spiffe://ward.local/ns/checkout/sa/checkout-api";
const ORDERS: &str = "spiffe://ward.local/ns/orders/sa/orders-api";

fn check_request(method: &str, path: &str) -> CheckRequest {
    let headers = HashMap::from([
        (":path".to_owned(), path.to_owned()),
        (":method".to_owned(), method.to_owned()),
        ("x-request-id".to_owned(), "req-42".to_owned()),
        ("X-Canary".to_owned(), "yes".to_owned()),
    ]);
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: CHECKOUT.to_owned(),
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: "127.0.0.7".to_owned(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            destination: Some(Peer {
                principal: ORDERS.to_owned(),
                ..Peer::default()
            }),
            request: Some(EnvoyRequest {
                time: None,
                http: Some(EnvoyHttp {
                    id: "envoy-id".to_owned(),
                    method: method.to_owned(),
                    path: path.to_owned(),
                    host: "orders.example:8443".to_owned(),
                    headers,
                    ..EnvoyHttp::default()
                }),
            }),
            ..AttributeContext::default()
        }),
    }
}

fn attrs(req: &mut CheckRequest) -> &mut AttributeContext {
    req.attributes.as_mut().unwrap()
}

fn http_of(req: &mut CheckRequest) -> &mut EnvoyHttp {
    attrs(req).request.as_mut().unwrap().http.as_mut().unwrap()
}

fn service_of(req: &CheckRequest) -> String {
    map(req).unwrap().http.service
}

fn ext_authz(modes: Modes) -> ExtAuthz {
    let engine = Arc::new(PolicyEngine::load(&demo_dir()).unwrap());
    let authorizer = Arc::new(Authorizer::new(engine, modes, "n"));
    let reloader = Arc::new(Reloader::new(authorizer.clone(), demo_dir(), None));
    ExtAuthz::new(Arc::new(Shared::new(Inputs {
        authorizer,
        reloader,
        auditor: None,
    })))
}

async fn answer(svc: &ExtAuthz, req: CheckRequest) -> CheckResponse {
    svc.check(tonic::Request::new(req))
        .await
        .unwrap()
        .into_inner()
}

fn header<'a>(
    headers: &'a [envoy_types::ext_authz::v3::pb::HeaderValueOption],
    key: &str,
) -> Option<&'a str> {
    headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == key)
        .map(|h| h.value.as_str())
}

#[test]
fn maps_the_peer_the_destination_and_the_request() {
    let m = map(&check_request("GET", "/orders/7?x=1")).unwrap();
    assert_eq!(m.http.principal.to_string(), CHECKOUT);
    assert_eq!(m.http.service, "orders-api");
    assert_eq!(m.http.method, "GET");
    assert_eq!(m.http.target, "/orders/7?x=1");
    assert_eq!(m.raw_path, "/orders/7");
    let c = &m.http.context;
    assert_eq!(c.host, "orders.example");
    assert!(c.mtls);
    assert_eq!(c.request_id, "req-42");
    assert_eq!(c.source_ip, Some("127.0.0.7".parse().unwrap()));
    assert_eq!(c.headers.get("x-canary").map(String::as_str), Some("yes"));
    assert!(!c.headers.keys().any(|k| k.starts_with(':')));
    assert!(c.time > 1_700_000_000, "time defaults to now");
}

#[test]
fn the_service_comes_from_the_route_then_the_destination_then_the_host() {
    let mut req = check_request("GET", "/");
    // A client-sent header never picks the service.
    http_of(&mut req)
        .headers
        .insert("x-ward-service".to_owned(), "payments-svc".to_owned());
    assert_eq!(service_of(&req), "orders-api");
    attrs(&mut req)
        .context_extensions
        .insert(SERVICE_EXTENSION.to_owned(), "inventory-svc".to_owned());
    assert_eq!(service_of(&req), "inventory-svc");
    attrs(&mut req).context_extensions.clear();
    attrs(&mut req).destination = None;
    assert_eq!(service_of(&req), "orders.example");
    http_of(&mut req).host = "[::1]:80".to_owned();
    assert_eq!(service_of(&req), "::1");
    http_of(&mut req).host.clear();
    assert!(matches!(map(&req), Err((CheckError::NoService, id)) if id == "req-42"));
}

#[test]
fn request_ids_prefer_the_header_then_envoys_id() {
    let mut req = check_request("GET", "/");
    http_of(&mut req).headers.remove("x-request-id");
    assert_eq!(map(&req).unwrap().http.context.request_id, "envoy-id");
    http_of(&mut req).id.clear();
    assert_eq!(map(&req).unwrap().http.context.request_id.len(), 32);
}

#[test]
fn missing_identity_or_attributes_are_errors() {
    let mut req = check_request("GET", "/");
    attrs(&mut req).source.as_mut().unwrap().principal.clear();
    assert!(matches!(map(&req), Err((CheckError::NoPeerIdentity, _))));
    attrs(&mut req).source.as_mut().unwrap().principal = "CN=alice".to_owned();
    assert!(matches!(map(&req), Err((CheckError::BadPeerIdentity(p), _)) if p == "CN=alice"));
    assert!(matches!(
        map(&CheckRequest::default()),
        Err((CheckError::Missing(_), _))
    ));
}

#[tokio::test]
async fn allowed_requests_get_the_decision_headers() {
    let svc = ext_authz(Modes::default());
    let r = answer(&svc, check_request("GET", "/orders/7712")).await;
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("expected an OK response: {r:?}");
    };
    assert_eq!(header(&ok.headers, DECISION_HEADER), Some("allow"));
    assert_eq!(
        header(&ok.headers, POLICY_HEADER),
        Some("mesh-checkout-to-orders")
    );
}

#[tokio::test]
async fn denied_requests_get_a_403_naming_the_request_id_only() {
    let svc = ext_authz(Modes::default());
    let r = answer(&svc, check_request("POST", "/orders/7712/refund")).await;
    assert_eq!(
        r.status.as_ref().unwrap().code,
        tonic::Code::PermissionDenied as i32
    );
    let Some(HttpResponse::DeniedResponse(denied)) = r.http_response else {
        panic!("expected a denied response: {r:?}");
    };
    assert_eq!(
        denied.status.unwrap().code,
        HttpStatusCode::Forbidden as i32
    );
    let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
    assert_eq!(
        body,
        json!({ "error": "forbidden", "request_id": "req-42" })
    );
    assert!(
        !denied.body.contains("refund"),
        "no policy text: {}",
        denied.body
    );
    assert_eq!(
        header(&denied.headers, "content-type"),
        Some("application/json")
    );
}

#[tokio::test]
async fn dry_run_passes_a_deny_and_says_so() {
    let svc = ext_authz(Modes::all(Mode::DryRun));
    let r = answer(&svc, check_request("POST", "/orders/7712/refund")).await;
    let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
        panic!("expected an OK response: {r:?}");
    };
    assert_eq!(header(&ok.headers, DECISION_HEADER), Some("dry-run-deny"));
    assert_eq!(
        header(&ok.headers, POLICY_HEADER),
        Some("orders-refund-needs-support-user")
    );
}

#[tokio::test]
async fn paths_are_normalized_or_rejected_and_identity_is_required() {
    let svc = ext_authz(Modes::default());
    for (path, want) in [
        ("/orders//7712", "not normalized"),
        ("/orders/7712%2F..", "encoded `/`"),
    ] {
        let r = answer(&svc, check_request("GET", path)).await;
        let status = r.status.unwrap();
        assert_eq!(status.code, tonic::Code::InvalidArgument as i32, "{path}");
        assert!(status.message.contains(want), "{path}: {}", status.message);
        let Some(HttpResponse::DeniedResponse(denied)) = r.http_response else {
            panic!("expected a denied response");
        };
        assert_eq!(
            denied.status.unwrap().code,
            HttpStatusCode::BadRequest as i32
        );
        assert!(denied.body.contains("req-42"));
    }
    let mut req = check_request("GET", "/orders/7712");
    attrs(&mut req).source = None;
    let r = answer(&svc, req).await;
    assert_eq!(r.status.unwrap().code, tonic::Code::Unauthenticated as i32);
    let Some(HttpResponse::DeniedResponse(denied)) = r.http_response else {
        panic!("expected a denied response");
    };
    assert_eq!(
        denied.status.unwrap().code,
        HttpStatusCode::Unauthorized as i32
    );
}

#[test]
fn ports_are_stripped_from_hosts() {
    assert_eq!(strip_port("a.example:80"), "a.example");
    assert_eq!(strip_port("a.example"), "a.example");
    assert_eq!(strip_port("[::1]:8080"), "::1");
    assert_eq!(strip_port("[::1]"), "::1");
    assert_eq!(strip_port("a:b"), "a:b");
}
