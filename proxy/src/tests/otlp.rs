//! OTLP trace export: two proxies with `tracing.otlp_endpoint` pointing at a collector running
//! in this test (a tonic `TraceService`); one call gives an `outbound` and an `inbound` span in
//! the caller's trace, nested, with the app seeing the inbound span as its parent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tracing_subscriber::layer::SubscriberExt as _;

use super::{CHECKOUT, MOBILE, registry};
use crate::config::TrafficPolicy;
use crate::test_util::{App, Running, TIMEOUT, TestCa, call, config, eventually, http_client};

/// Every span exported to it, with its resource's `service.name`.
#[derive(Debug, Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, ProtoSpan)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn spawn() -> (Self, SocketAddr) {
        let collector = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
        tokio::spawn(server);
        (collector, addr)
    }

    fn spans(&self) -> Vec<(String, ProtoSpan)> {
        self.spans.lock().unwrap().clone()
    }
}

fn attr<'a>(span: &'a ProtoSpan, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

// One thread: the proxies' tasks run where the test's subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn both_hops_export_nested_spans_in_the_callers_trace() {
    let _subscriber = tracing::subscriber::set_default(
        tracing_subscriber::registry().with(crate::trace::layer()),
    );
    let (collector, collector_addr) = Collector::spawn().await;
    let endpoint = format!("http://{collector_addr}");

    let ca = TestCa::new("ward.local");
    let dir = tempfile::tempdir().unwrap();
    let app_b = App::spawn("app-b").await;
    let mut cfg_b = config(
        dir.path(),
        "proxy-b",
        "checkout-api",
        app_b.addr,
        ca.write_identity(dir.path(), "b", CHECKOUT),
        crate::test_util::policies_dir(),
    );
    cfg_b.tracing.otlp_endpoint = Some(endpoint.clone());
    let proxy_b = Running::start(cfg_b).await;
    let mut cfg_a = config(
        dir.path(),
        "proxy-a",
        "mobile-gateway",
        app_b.addr,
        ca.write_identity(dir.path(), "a", MOBILE),
        crate::test_util::policies_dir(),
    );
    cfg_a.registry = registry(
        "checkout-api",
        &[(proxy_b.bound.inbound, CHECKOUT, &[])],
        &[],
        TrafficPolicy::default(),
    );
    cfg_a.tracing.otlp_endpoint = Some(endpoint);
    let proxy_a = Running::start(cfg_a).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (status, _) = call(
        &http_client(),
        proxy_a.bound.outbound,
        "checkout-api",
        "/",
        &[("traceparent", &format!("00-{trace_id}-{caller_span}-01"))],
    )
    .await;
    assert_eq!(status, 200);
    // Stopping flushes the batches.
    proxy_a.stop().await;
    proxy_b.stop().await;

    let spans = eventually(TIMEOUT, "two spans at the collector", || {
        let collector = collector.clone();
        async move {
            let spans = collector.spans();
            (spans.len() >= 2).then_some(spans)
        }
    })
    .await;
    let find = |kind: SpanKind| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span in {spans:#?}"))
    };
    let outbound = find(SpanKind::Client);
    let inbound = find(SpanKind::Server);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();

    // One trace: the caller's.
    assert_eq!(hex(&outbound.trace_id), trace_id);
    assert_eq!(hex(&inbound.trace_id), trace_id);
    // Nested: caller → outbound → inbound → app.
    assert_eq!(hex(&outbound.parent_span_id), caller_span);
    assert_eq!(inbound.parent_span_id, outbound.span_id);
    let sent = app_b.last().unwrap();
    let traceparent = sent.headers["traceparent"].to_str().unwrap();
    assert_eq!(
        traceparent,
        format!("00-{trace_id}-{}-01", hex(&inbound.span_id))
    );

    assert_eq!(outbound.name, "outbound GET");
    assert_eq!(inbound.name, "inbound GET");
    assert_eq!(
        attr(inbound, "ward.peer_id"),
        Some(&Value::StringValue(MOBILE.to_owned()))
    );
    assert_eq!(
        attr(inbound, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert_eq!(
        attr(outbound, "ward.destination"),
        Some(&Value::StringValue("checkout-api".to_owned()))
    );
    // The first proxy of the process installed the exporter: its resource names the spans.
    assert!(spans.iter().all(|(service, _)| service == "checkout-api"));
}
