//! Telemetry of the outbound data path: per request, metrics (through the
//! `metrics` facade), a trace span (W3C trace context injected on the way
//! out, the task's inbound context as parent), and one access-log event
//! (`target: "mesh::access"`).
//!
//! The layer sits right below the route layer, so it sees the route
//! decision; requests the route layer refuses (`no_route`) are counted
//! there.

pub mod metrics;
pub mod trace;

use crate::BoxError;
use crate::body::MeshBody;
use crate::error::{ErrorKind, FaultAbort};
use crate::ext::{Routed, Served};
use crate::runtime::Runtime;
use http::{Request, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tower_service::Service;
use trace::{FinishedSpan, SpanKind, TraceContext};

/// The telemetry layer.
#[derive(Debug, Clone)]
pub struct TelemetryLayer {
    runtime: Arc<Runtime>,
}

impl TelemetryLayer {
    /// Resolves metric handles through `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

impl<S> tower_layer::Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;
    fn layer(&self, inner: S) -> Telemetry<S> {
        Telemetry {
            inner,
            runtime: self.runtime.clone(),
        }
    }
}

/// The telemetry service.
#[derive(Debug, Clone)]
pub struct Telemetry<S> {
    inner: S,
    runtime: Arc<Runtime>,
}

impl<S, RB> Service<Request<MeshBody>> for Telemetry<S>
where
    S: Service<Request<MeshBody>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<MeshBody>) -> Self::Future {
        let started = Instant::now();
        // The parent: a context the caller attached, else trace headers it
        // set itself, else the task's inbound request, else none (a root).
        let parent = req
            .extensions()
            .get::<TraceContext>()
            .cloned()
            .or_else(|| TraceContext::extract(req.headers()))
            .or_else(trace::current);
        let ctx = parent
            .as_ref()
            .map_or_else(TraceContext::new_root, TraceContext::child);
        ctx.inject(req.headers_mut());
        let routed = req.extensions().get::<Routed>();
        let metrics = routed.map(|r| self.runtime.route_metrics(r));
        // Names and strings only when someone will read them.
        let wanted = tracing::enabled!(target: "mesh::access", tracing::Level::DEBUG)
            || (ctx.sampled() && trace::has_sink());
        if !wanted {
            return ResponseFuture {
                inner: self.inner.call(req),
                started,
                metrics,
                info: None,
                span: tracing::Span::none(),
            };
        }
        let (service, route) = routed
            .and_then(|r| {
                Some((
                    r.service_entry()?.name().clone(),
                    r.route_entry()?.name().clone(),
                ))
            })
            .unzip();
        let info = Box::new(RequestInfo {
            method: req.method().clone(),
            authority: req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().authority().map(|a| a.as_str()))
                .unwrap_or("")
                .to_owned(),
            path: req.uri().path().to_owned(),
            service,
            route,
            ctx,
            parent_span_id: parent.map(|p| p.span_id),
            start_wall: SystemTime::now(),
        });
        // Lower layers make each attempt (and mirror copy) a child of this span.
        req.extensions_mut().insert(info.ctx.clone());
        let span = tracing::debug_span!(
            "mesh.client",
            otel.kind = "client",
            http.request.method = %info.method,
            server.address = %info.authority,
            http.route = info.route.as_deref().unwrap_or(""),
            trace_id = %info.ctx.trace_id_hex(),
        );
        ResponseFuture {
            inner: self.inner.call(req),
            started,
            metrics,
            info: Some(info),
            span,
        }
    }
}

#[derive(Debug)]
struct RequestInfo {
    method: http::Method,
    authority: String,
    path: String,
    service: Option<Arc<str>>,
    route: Option<Arc<str>>,
    ctx: TraceContext,
    parent_span_id: Option<u64>,
    start_wall: SystemTime,
}

pin_project_lite::pin_project! {
    /// The telemetry layer's future.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        metrics: Option<Arc<metrics::RouteMetrics>>,
        info: Option<Box<RequestInfo>>,
        span: tracing::Span,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = std::task::ready!(this.inner.poll(cx)).map_err(Into::into);
        let elapsed = this.started.elapsed();
        let outcome = match &result {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) => match e.downcast_ref::<FaultAbort>() {
                Some(a) => Ok(a.status),
                None => Err(ErrorKind::of(&**e)),
            },
        };
        if let Some(m) = this.metrics.as_ref() {
            m.record(outcome, elapsed.as_secs_f64());
        }
        if let Some(info) = this.info.take() {
            let served = result
                .as_ref()
                .ok()
                .and_then(|r| r.extensions().get::<Served>());
            finish(&info, outcome, elapsed, served);
        }
        Poll::Ready(result)
    }
}

fn finish(
    info: &RequestInfo,
    outcome: Result<u16, ErrorKind>,
    elapsed: std::time::Duration,
    served: Option<&Served>,
) {
    let status = outcome.ok();
    let error = outcome.err().map(ErrorKind::as_str);
    tracing::debug!(
        target: "mesh::access",
        direction = "outbound",
        method = %info.method,
        authority = %info.authority,
        path = %info.path,
        status = status.unwrap_or(0),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        service = info.service.as_deref().unwrap_or(""),
        route = info.route.as_deref().unwrap_or(""),
        backend = served.map_or("", |s| &*s.backend),
        endpoint = served.map_or("", |s| &*s.endpoint),
        attempts = served.map_or(0, |s| s.attempts),
        error = error.unwrap_or(""),
        trace_id = %info.ctx.trace_id_hex(),
    );
    if !info.ctx.sampled() {
        return;
    }
    let Some(sink) = trace::sink() else {
        return;
    };
    let mut attributes = vec![
        ("http.request.method", info.method.to_string()),
        ("server.address", info.authority.clone()),
        ("url.path", info.path.clone()),
    ];
    if let Some(s) = status {
        attributes.push(("http.response.status_code", s.to_string()));
    }
    if let Some(e) = error {
        attributes.push(("error.type", e.to_owned()));
    }
    if let Some(r) = &info.route {
        attributes.push(("http.route", r.to_string()));
    }
    if let Some(s) = served {
        attributes.push(("mesh.backend", s.backend.to_string()));
        attributes.push(("mesh.endpoint", s.endpoint.to_string()));
        attributes.push(("mesh.attempts", s.attempts.to_string()));
    }
    sink.record(FinishedSpan {
        name: format!(
            "{} {}",
            info.method,
            info.service.as_deref().unwrap_or(&info.authority)
        ),
        kind: SpanKind::Client,
        trace_id: info.ctx.trace_id,
        span_id: info.ctx.span_id,
        parent_span_id: info.parent_span_id,
        start: info.start_wall,
        end: info.start_wall + elapsed,
        attributes,
        error: error.is_some() || status.is_some_and(|s| s >= 500),
    });
}
