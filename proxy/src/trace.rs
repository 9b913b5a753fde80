//! Trace spans for proxied requests, exported with OTLP/gRPC when `tracing.otlp_endpoint` is
//! set.
//!
//! Each request gets one `tracing` span with target [`TARGET`]: `outbound` (kind client) in the
//! caller's proxy, `inbound` (kind server) in the callee's. The span continues the W3C trace of
//! the incoming `traceparent` (or starts one) and is the parent named in the `traceparent` sent
//! on, so the apps, both proxies, the access logs and the audit record share one trace id and
//! the exported spans nest: app A → `outbound` → `inbound` → app B.
//!
//! Wiring: [`layer`] goes into the process's subscriber once, at start (the `ward` binary's
//! logging does this for every command); [`Exporter::install`] later gives it a tracer that
//! batches spans to the collector. A proxy without an endpoint creates no spans at all, so
//! tracing costs nothing when it is off. One process has one exporter: when several proxies
//! run in one process (tests), the first one's exporter and resource carry every span.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use http::HeaderMap;
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::config::Config;
use crate::ctx::{ListenerKind, ReqCtx};
use crate::headers;

/// The `tracing` target of request spans; the only spans [`layer`] exports.
pub const TARGET: &str = "ward_proxy::trace";

/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The process's tracer, set by the first [`Exporter::install`].
static TRACER: OnceLock<BoxedTracer> = OnceLock::new();

/// Used until a tracer is installed (no span is created then, but the layer needs one).
static NOOP: LazyLock<BoxedTracer> =
    LazyLock::new(|| BoxedTracer::new(Box::new(opentelemetry::trace::noop::NoopTracer::new())));

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for `{endpoint}`: {reason}")]
pub struct TraceError {
    endpoint: String,
    reason: String,
}

/// The OTLP pipeline this proxy installed; [`Exporter::shutdown`] exports what is left.
#[derive(Debug)]
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// The subscriber layer that turns request spans (target [`TARGET`], nothing else) into
/// OpenTelemetry spans for the installed exporter.
pub fn layer<S>() -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(LateTracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE))
}

// === impl Exporter ===

impl Exporter {
    /// Builds the OTLP/gRPC exporter for `cfg.tracing` and makes it the process's tracer.
    /// `None` when no endpoint is configured, or when another proxy in this process installed
    /// one already (its exporter then carries this proxy's spans too). Call inside a tokio
    /// runtime: the gRPC channel's I/O runs on it.
    pub fn install(cfg: &Config) -> Result<Option<Self>, TraceError> {
        let Some(endpoint) = &cfg.tracing.otlp_endpoint else {
            return Ok(None);
        };
        if TRACER.get().is_some() {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(cfg.tracing.export_timeout)
            .build()
            .map_err(|e| TraceError {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        let resource = Resource::builder()
            .with_service_name(cfg.service.clone())
            .with_attribute(KeyValue::new("service.instance.id", cfg.node.clone()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = BoxedTracer::new(Box::new(provider.tracer("ward-proxy")));
        if TRACER.set(tracer).is_err() {
            // Lost a race with another proxy of this process: that one exports.
            let _ = provider.shutdown();
            return Ok(None);
        }
        tracing::info!(%endpoint, "exporting trace spans with OTLP");
        Ok(Some(Self { provider }))
    }

    /// Exports the spans still batched and stops the exporter (bounded by a few seconds).
    pub async fn shutdown(self) {
        // The exporter blocks its caller until the batch is out, and the batch needs the
        // runtime: wait on a blocking thread.
        let provider = self.provider;
        let done = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "stopping the OTLP exporter"),
            Ok(Err(err)) => tracing::warn!(error = %err, "stopping the OTLP exporter"),
            Err(_) => tracing::warn!("stopping the OTLP exporter timed out"),
        }
    }
}

/// Starts the span of one request (when `enabled`) and points `ctx`'s trace at it: the trace
/// id becomes the span's and the `traceparent` sent on names this span as the parent.
pub(crate) fn start(enabled: bool, ctx: &mut ReqCtx, incoming: &HeaderMap) -> Span {
    if !enabled {
        return Span::none();
    }
    let path = ctx
        .path
        .split_once('?')
        .map_or(ctx.path.as_str(), |(p, _)| p);
    let span = match ctx.conn.listener {
        ListenerKind::Inbound => tracing::info_span!(
            target: TARGET,
            "inbound",
            otel.name = %format_args!("inbound {}", ctx.method),
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = %ctx.method,
            url.path = path,
            server.address = %ctx.authority,
            client.address = %ctx.conn.src.ip(),
            ward.peer_id = ctx.conn.peer_id.as_ref().map(|id| id.as_str()),
            ward.request_id = %ctx.request_id,
            ward.route = Empty,
            http.response.status_code = Empty,
        ),
        ListenerKind::Outbound | ListenerKind::Admin => tracing::info_span!(
            target: TARGET,
            "outbound",
            otel.name = %format_args!("outbound {}", ctx.method),
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = %ctx.method,
            url.path = path,
            server.address = %ctx.authority,
            ward.destination = ctx.host(),
            ward.request_id = %ctx.request_id,
            ward.route = Empty,
            http.response.status_code = Empty,
        ),
    };
    if let Some(parent) = remote_parent(incoming) {
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        ctx.trace_id = sc.trace_id().to_string();
        ctx.traceparent = headers::traceparent(
            &ctx.trace_id,
            u64::from_be_bytes(sc.span_id().to_bytes()),
            sc.trace_flags().to_u8(),
        );
    }
    span
}

/// Records the outcome on the request's span (a no-op when tracing is off).
pub(crate) fn finish(span: &Span, route: &str, status: u16) {
    if span.is_none() {
        return;
    }
    span.record("ward.route", route);
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// The caller's span from a valid `traceparent`, as a remote parent.
fn remote_parent(incoming: &HeaderMap) -> Option<SpanContext> {
    let value = incoming.get(&headers::TRACEPARENT)?.to_str().ok()?;
    let (trace_id, parent_id, flags) = headers::parse_traceparent(value)?;
    Some(SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(parent_id).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    ))
}

/// A tracer that is the installed one once there is one, and a no-op before: the layer is
/// built when the process starts, before any config is read.
#[derive(Debug, Clone, Copy)]
struct LateTracer;

impl Tracer for LateTracer {
    type Span = BoxedSpan;

    fn build_with_context(&self, builder: SpanBuilder, parent_cx: &Context) -> BoxedSpan {
        TRACER
            .get()
            .unwrap_or(&NOOP)
            .build_with_context(builder, parent_cx)
    }
}
