//! Telemetry of the outbound data path: per request, metrics (through the
//! `metrics` facade), an OpenTelemetry client span (see [`trace`]: its
//! parent is the caller's context, its context goes out in the request's
//! headers), and, when enabled, one access-log event (`target:
//! "mesh::access"`, DEBUG).
//!
//! The layer sits right below the route layer, so it sees the route
//! decision; requests the route layer refuses (`no_route`) are counted
//! there.

pub mod metrics;
pub(crate) mod span;
pub mod trace;

use crate::BoxError;
use crate::body::MeshBody;
use crate::error::{ErrorKind, FaultAbort};
use crate::ext::Served;
use crate::runtime::Runtime;
use http::{Request, Response};
use opentelemetry::trace::TraceContextExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower_service::Service;

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
        let started = Started::new(&self.runtime, &mut req);
        started.wrap(self.inner.call(req))
    }
}

/// What the telemetry layer starts for a request before it goes down: its
/// clock, its metric handles, its span (already in the request's headers)
/// and the access log's record. The mesh's own stack starts it in place,
/// in the same call as the layers below it.
pub(crate) struct Started {
    started: Instant,
    metrics: Option<Arc<metrics::RouteMetrics>>,
    access: Option<Box<AccessInfo>>,
    cx: opentelemetry::Context,
    own_span: bool,
}

impl Started {
    /// Starts `req`'s telemetry; its trace context goes into its headers.
    pub(crate) fn new(runtime: &Runtime, req: &mut Request<MeshBody>) -> Self {
        let routed = crate::ext::routed(req);
        // The mesh's clock (tokio's, as the layers below read it).
        let started = routed
            .and_then(crate::ext::Routed::started)
            .unwrap_or_else(Instant::now);
        let metrics = routed.map(|r| runtime.route_metrics(r));
        // Borrowed: the span copies them only when it records, the access
        // log only when it is on.
        let (service, route) = routed
            .and_then(|r| Some((r.service_entry()?.name(), r.route_entry()?.name())))
            .unzip();
        let parent = trace::outbound_parent(req.extensions(), req.headers());
        let span = span::start_client(req, service, route, &parent);
        let access = tracing::enabled!(target: "mesh::access", tracing::Level::DEBUG).then(|| {
            Box::new(AccessInfo {
                method: req.method().clone(),
                authority: span::authority(req).to_owned(),
                path: req.uri().path().to_owned(),
                service: service.cloned(),
                route: route.cloned(),
            })
        });
        // A span that records nothing and carries its parent's identity (no
        // tracer provider installed) adds nothing to the parent's context:
        // the parent goes on as it is, and nothing is allocated for it.
        let recording = opentelemetry::trace::Span::is_recording(&span);
        let own_span = recording
            || opentelemetry::trace::Span::span_context(&span) != parent.span().span_context();
        let cx = if own_span {
            parent.with_span(span)
        } else {
            parent
        };
        trace::inject(&cx, req.headers_mut());
        // Lower layers make retries and mirror copies children of this span.
        crate::ext::set_trace(req, cx.clone());
        // The span's attributes and the access log name the endpoint.
        if (recording || access.is_some() || runtime.served_extension())
            && let Some(r) = crate::ext::routed_mut(req)
        {
            r.want_served();
        }
        Self {
            started,
            metrics,
            access,
            cx,
            own_span,
        }
    }

    /// The future that ends it when `inner`, the request's way down, ends.
    pub(crate) fn wrap<F>(self, inner: F) -> ResponseFuture<F> {
        ResponseFuture {
            inner,
            started: self.started,
            metrics: self.metrics,
            access: self.access,
            cx: self.cx,
            own_span: self.own_span,
        }
    }
}

/// What the access log needs of a request, kept only when it is on.
#[derive(Debug)]
struct AccessInfo {
    method: http::Method,
    authority: String,
    path: String,
    service: Option<Arc<str>>,
    route: Option<Arc<str>>,
}

pin_project_lite::pin_project! {
    /// The telemetry layer's future.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        metrics: Option<Arc<metrics::RouteMetrics>>,
        access: Option<Box<AccessInfo>>,
        cx: opentelemetry::Context,
        // Whether `cx` holds this request's span (else it is the parent's
        // context, which is not this layer's to end).
        own_span: bool,
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
        let served = result
            .as_ref()
            .ok()
            .and_then(|r| r.extensions().get::<Served>());
        let grpc_status = result
            .as_ref()
            .ok()
            .and_then(|r| crate::grpc::status(r.headers()));
        if *this.own_span {
            let skipped = crate::error::retry_skipped(&result);
            span::finish(
                this.cx,
                span::Side::Client,
                outcome,
                grpc_status,
                served,
                skipped,
            );
        }
        if let Some(info) = this.access.take() {
            access_log(&info, outcome, elapsed, served, this.cx);
        }
        Poll::Ready(result)
    }
}

fn access_log(
    info: &AccessInfo,
    outcome: Result<u16, ErrorKind>,
    elapsed: std::time::Duration,
    served: Option<&Served>,
    cx: &opentelemetry::Context,
) {
    use opentelemetry::trace::TraceContextExt;
    tracing::debug!(
        target: "mesh::access",
        direction = "outbound",
        method = %info.method,
        authority = %info.authority,
        path = %info.path,
        status = outcome.ok().unwrap_or(0),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        service = info.service.as_deref().unwrap_or(""),
        route = info.route.as_deref().unwrap_or(""),
        backend = served.map_or("", |s| &*s.backend),
        endpoint = served.map_or("", |s| &*s.endpoint),
        attempts = served.map_or(0, |s| s.attempts),
        error = outcome.err().map_or("", ErrorKind::as_str),
        trace_id = %cx.span().span_context().trace_id(),
    );
}
