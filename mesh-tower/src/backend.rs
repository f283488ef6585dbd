//! The backend layer: admission by the backend's circuit breaker, choice of
//! an endpoint by its load balancer, and outlier detection on the result.
//!
//! The request leaves with its URI pointing at the chosen endpoint
//! (`http://10.0.0.7:8080/path`) and its `Host` header naming the service it
//! was addressed to, so any HTTP client below can send it; the remaining
//! deadline goes along in `x-mesh-timeout-ms`. Requests that pass through
//! (unknown hosts) keep their URI.
//!
//! Refusals fail fast: [`CircuitOpen`] when a threshold is full or every
//! endpoint is ejected, [`NoHealthyEndpoint`] when the backend has none.
//! Transport errors that mean "could not connect" or "reset" come back as
//! [`ConnectFailed`] / [`ConnectionReset`] naming the endpoint.

use crate::BoxError;
use crate::body::MeshBody;
use crate::error::{
    CircuitOpen, CircuitReason, ConnectFailed, ConnectionReset, ErrorKind, NoHealthyEndpoint,
    outcome_of_error,
};
use crate::ext::{DEADLINE_HEADER, Served, deadline_of};
use crate::runtime::{InFlight, PickError, ResolvedBackend, Runtime, now};
use crate::telemetry::trace;
use http::uri::Authority;
use http::{Request, Response, Uri};
use proxyless_core::policy::Outcome;
use proxyless_core::policy::breaker::Slot;
use proxyless_core::snapshot::ServiceEntry;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower_service::Service;

/// The backend layer.
#[derive(Debug, Clone)]
pub struct BackendLayer {
    runtime: Arc<Runtime>,
}

impl BackendLayer {
    /// Keeps breaker, balancer and outlier state in `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

impl<S> tower_layer::Layer<S> for BackendLayer {
    type Service = Backend<S>;
    fn layer(&self, inner: S) -> Backend<S> {
        Backend {
            inner,
            runtime: self.runtime.clone(),
        }
    }
}

/// The backend service.
#[derive(Debug, Clone)]
pub struct Backend<S> {
    inner: S,
    runtime: Arc<Runtime>,
}

/// Records an attempt's outcome once: when it completes, or as a timeout
/// if its future is dropped first (a per-try or overall deadline fired).
struct Recorder {
    backend: Arc<ResolvedBackend>,
    runtime: Arc<Runtime>,
    index: usize,
    started: std::time::Instant,
    done: bool,
}

impl Recorder {
    fn record(&mut self, outcome: Outcome) {
        self.done = true;
        let t = now();
        let rtt = t.saturating_duration_since(self.started);
        self.backend
            .record(self.index, outcome, rtt, t, self.runtime.stats());
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            self.record(Outcome::Timeout);
        }
    }
}

fn set_deadline_header(req: &mut Request<MeshBody>, now: std::time::Instant) {
    if let Some(d) = deadline_of(req) {
        let left = d.saturating_duration_since(Instant::from_std(now));
        let ms = u64::try_from(left.as_millis().max(1)).unwrap_or(u64::MAX);
        if let Some(v) = deadline_value(ms) {
            req.headers_mut().insert(DEADLINE_HEADER, v);
        }
        // A gRPC server learns its budget from grpc-timeout.
        if crate::grpc::is_grpc(req.headers()) {
            req.headers_mut()
                .insert(crate::grpc::GRPC_TIMEOUT, crate::grpc::timeout_value(left));
        }
    }
}

thread_local! {
    /// The last deadline value made on this thread. Requests on one route
    /// leave with the same milliseconds left (their route's timeout, less
    /// under a millisecond), so most reuse it: a copy counts a reference
    /// instead of allocating (as hyper keeps its `Date` value).
    static LAST_DEADLINE: std::cell::RefCell<Option<(u64, http::HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `ms` as an `x-mesh-timeout-ms` value.
fn deadline_value(ms: u64) -> Option<http::HeaderValue> {
    let cached = LAST_DEADLINE.with(|last| {
        let last = last.try_borrow().ok()?;
        last.as_ref()
            .filter(|(m, _)| *m == ms)
            .map(|(_, v)| v.clone())
    });
    if cached.is_some() {
        return cached;
    }
    // Formatted on the stack: one allocation for the value, not two.
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut n = ms;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let v = http::HeaderValue::from_bytes(&buf[at..]).ok()?;
    LAST_DEADLINE.with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            // Its bytes become shared at the first copy: made here, so
            // that the copies after it only count a reference.
            *last = Some((ms, v.clone()));
        }
    });
    Some(v)
}

/// Points `req` at `endpoint`, keeping the addressed authority as `Host`.
/// Mutual-TLS backends get `https`: the transport then connects with TLS
/// and checks the endpoint's identity.
fn retarget<B>(
    req: &mut Request<B>,
    service: Option<&ServiceEntry>,
    endpoint: &Authority,
    tls: bool,
) -> Result<(), BoxError> {
    if !req.headers().contains_key(http::header::HOST)
        && let Some(a) = req.uri().authority()
    {
        // The service's own value when the request names one of its hosts
        // as configured (no allocation), else one made from the URI.
        let v = match service.and_then(|s| s.host_value(a.as_str())) {
            Some(v) => v,
            None => http::HeaderValue::from_str(a.as_str())?,
        };
        req.headers_mut().insert(http::header::HOST, v);
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    });
    parts.authority = Some(endpoint.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts)?;
    Ok(())
}

impl<S, RB> Service<Request<MeshBody>> for Backend<S>
where
    S: Service<Request<MeshBody>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<MeshBody>) -> Self::Future {
        // One clock read for the attempt: its deadline header, the pick's
        // load estimates and the start of its latency.
        let t = now();
        set_deadline_header(&mut req, t);
        let target = crate::ext::routed(&req).and_then(|r| {
            let service = r.indexes().map(|(s, _, _)| s);
            Some((r.snapshot().clone(), r.backend_entry()?.0, service))
        });
        let Some((snap, index, service_index)) = target else {
            // Passthrough, or no route layer above: send as addressed.
            return ResponseFuture::direct(self.inner.call(req));
        };
        let fail = ResponseFuture::failed;
        let Some(backend) = self.runtime.backend(&snap, index) else {
            let name = snap
                .backend(index)
                .map_or_else(|| Arc::from("?"), |b| b.name().clone());
            return fail(NoHealthyEndpoint { backend: name }.into());
        };
        let admission = match backend.state.breaker.try_request() {
            Ok(slot) => slot,
            Err(limit) => {
                rejected(&backend.name, limit.field());
                return fail(
                    CircuitOpen::new(backend.name.clone(), CircuitReason::Limit(limit)).into(),
                );
            }
        };
        let adaptive = match backend.state.admit_adaptive() {
            Ok(slot) => slot,
            Err(limit) => {
                rejected(&backend.name, "adaptive_concurrency");
                return fail(
                    CircuitOpen::new(backend.name.clone(), CircuitReason::AdaptiveLimit(limit))
                        .into(),
                );
            }
        };
        let (avoid, attempts, served, classifier) =
            crate::ext::routed(&req).map_or((None, 1, false, None), |r| {
                let classifier = r.route_entry().and_then(|e| e.classifier().cloned());
                (
                    r.avoid().cloned(),
                    r.attempt(),
                    r.wants_served(),
                    classifier,
                )
            });
        let picked = backend.pick(
            req.headers(),
            avoid.as_deref(),
            (crate::runtime::random(), crate::runtime::random()),
            t,
        );
        let index = match picked {
            Ok(i) => i,
            Err(PickError::CircuitOpen(e)) => {
                rejected(&backend.name, "all_ejected");
                return fail(e.into());
            }
            Err(PickError::NoHealthyEndpoint(e)) => return fail(e.into()),
        };
        let endpoint = backend.endpoints[index].address.clone();
        if let Some(r) = crate::ext::routed(&req) {
            r.record_pick(&endpoint);
        }
        let service = service_index.and_then(|i| snap.service(i));
        let retargeted = match &backend.endpoints[index].authority {
            Some(a) => retarget(&mut req, service, a, backend.mutual_tls),
            None => Err(format!("endpoint `{endpoint}` is not a valid authority").into()),
        };
        if let Err(e) = retargeted {
            return fail(e);
        }
        // The request's span covers the first attempt; a retry or a mirror
        // copy gets a client span of its own, child of the request's.
        let mirror = req.extensions().get::<crate::ext::Mirrored>().is_some();
        let attempt_span = if attempts > 1 || mirror {
            crate::ext::trace_of(&req)
                .cloned()
                .and_then(|parent| AttemptSpan::start(parent, &backend.name, attempts, mirror))
                .inspect(|span| trace::inject(&span.cx, req.headers_mut()))
        } else {
            None
        };
        let sent = Sent {
            attempt_span,
            in_flight: backend.start(index),
            admission,
            recorder: Recorder {
                backend,
                runtime: self.runtime.clone(),
                index,
                started: t,
                done: false,
            },
            endpoint,
            attempts,
            served,
            classifier,
            adaptive,
        };
        ResponseFuture {
            state: State::Sent {
                inner: self.inner.call(req),
                sent: Some(sent),
            },
        }
    }
}

/// What a sent request holds until its response: its breaker slot, its
/// in-flight mark, and what to record.
struct Sent {
    attempt_span: Option<AttemptSpan>,
    in_flight: InFlight,
    admission: Slot,
    recorder: Recorder,
    endpoint: Arc<str>,
    attempts: u32,
    /// Whether the response carries [`Served`].
    served: bool,
    /// The route's classifier, which judges the response for the endpoint.
    classifier: Option<proxyless_core::policy::classify::Classifier>,
    /// Its place under the backend's adaptive concurrency limit.
    adaptive: Option<crate::runtime::AdaptiveSlot>,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// The backend layer's future.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Direct { #[pin] inner: F },
        Failed { error: Option<BoxError> },
        Sent { #[pin] inner: F, sent: Option<Sent> },
    }
}

impl<F> ResponseFuture<F> {
    fn direct(inner: F) -> Self {
        Self {
            state: State::Direct { inner },
        }
    }

    fn failed(error: BoxError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, RB, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Direct { inner } => inner.poll(cx).map_err(Into::into),
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "backend future polled after completion".into()))),
            StateProj::Sent { inner, sent } => {
                let result = std::task::ready!(inner.poll(cx)).map_err(Into::into);
                let Some(mut sent) = sent.take() else {
                    return Poll::Ready(Err("backend future polled after completion".into()));
                };
                let outcome = match &result {
                    Ok(resp) => crate::grpc::outcome_of_response(resp),
                    Err(e) => outcome_of_error(&**e),
                };
                let outcome = match &sent.classifier {
                    Some(c) => crate::classify::outcome_for_endpoint(
                        c,
                        &result,
                        outcome,
                        &sent.recorder.backend.name,
                    ),
                    None => outcome,
                };
                sent.recorder.record(outcome);
                if let Some(s) = sent.attempt_span.take() {
                    s.finish(outcome, &sent.endpoint);
                }
                drop((sent.in_flight, sent.admission, sent.adaptive));
                Poll::Ready(match result {
                    Ok(mut resp) => {
                        if sent.served {
                            resp.extensions_mut().insert(Served {
                                backend: sent.recorder.backend.name.clone(),
                                endpoint: sent.endpoint,
                                attempts: sent.attempts,
                            });
                        }
                        Ok(resp)
                    }
                    Err(e) => Err(name_endpoint(e, outcome, sent.endpoint)),
                })
            }
        }
    }
}

/// Names the endpoint on a connect failure or reset: typed already by the
/// client below without one (it does not know which endpoint the mesh
/// picked), or untyped. A retry reads the name to try another endpoint.
fn name_endpoint(e: BoxError, outcome: Outcome, endpoint: Arc<str>) -> BoxError {
    let e = match e.downcast::<ConnectFailed>() {
        Ok(mut c) => {
            c.endpoint.get_or_insert(endpoint);
            return c;
        }
        Err(e) => e,
    };
    let e = match e.downcast::<ConnectionReset>() {
        Ok(mut r) => {
            r.endpoint.get_or_insert(endpoint);
            return r;
        }
        Err(e) => e,
    };
    match (ErrorKind::of(&*e), outcome) {
        (ErrorKind::Other, Outcome::ConnectFailure) => ConnectFailed {
            endpoint: Some(endpoint),
            source: e,
        }
        .into(),
        (ErrorKind::Other, Outcome::Reset) => ConnectionReset {
            endpoint: Some(endpoint),
            source: e,
        }
        .into(),
        _ => e,
    }
}

/// Counts a breaker refusal (rare: the registry lookup is fine here).
fn rejected(backend: &Arc<str>, reason: &'static str) {
    metrics::counter!(
        crate::telemetry::metrics::BREAKER_REJECTIONS,
        "backend" => backend.to_string(),
        "reason" => reason
    )
    .increment(1);
}

/// The span of a retry, a hedge or a mirror copy, child of the request's
/// span. One dropped before it finished (a hedge that lost the race, or a
/// request given up) ends marked `mesh.cancelled`.
#[derive(Debug)]
struct AttemptSpan {
    cx: opentelemetry::Context,
    finished: bool,
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::TraceContextExt;
        if self.finished {
            return;
        }
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("mesh.cancelled", true));
        span.end();
    }
}

impl AttemptSpan {
    /// A started span, or `None` when the tracer records nothing.
    fn start(
        parent: opentelemetry::Context,
        backend: &str,
        attempt: u32,
        mirror: bool,
    ) -> Option<Self> {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
        let tracer = trace::tracer();
        let span = tracer
            .span_builder(if mirror { "mirror" } else { "retry" })
            .with_kind(SpanKind::Client)
            .start_with_context(&tracer, &parent);
        let cx = parent.with_span(span);
        let recording = {
            let span = cx.span();
            if span.is_recording() {
                span.update_name(if mirror {
                    format!("mirror {backend}")
                } else {
                    format!("attempt {attempt} {backend}")
                });
                span.set_attribute(KeyValue::new(
                    "http.request.resend_count",
                    i64::from(attempt.saturating_sub(1)),
                ));
                span.set_attribute(KeyValue::new("mesh.backend", backend.to_owned()));
            }
            span.is_recording()
        };
        recording.then_some(Self {
            cx,
            finished: false,
        })
    }

    fn finish(mut self, outcome: Outcome, endpoint: &str) {
        self.finished = true;
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{Status, TraceContextExt};
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("mesh.endpoint", endpoint.to_owned()));
        match outcome {
            Outcome::Status(s) => {
                span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
                if s >= 500 {
                    span.set_status(Status::error(""));
                }
            }
            Outcome::Classified { status, failed } => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if failed {
                    span.set_status(Status::error("classified as a failure"));
                }
            }
            other => {
                span.set_attribute(KeyValue::new(
                    "error.type",
                    format!("{other:?}").to_lowercase(),
                ));
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::deadline_value;

    #[test]
    fn a_deadline_value_is_made_once_and_shared_while_it_repeats() {
        let a = deadline_value(15_000).unwrap();
        let b = deadline_value(15_000).unwrap();
        assert_eq!(a, "15000");
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr(), "shared");
        let c = deadline_value(7).unwrap();
        assert_eq!(c, "7");
        assert_ne!(c.as_bytes().as_ptr(), a.as_bytes().as_ptr());
        assert_eq!(
            deadline_value(u64::MAX).unwrap(),
            u64::MAX.to_string().as_str()
        );
        assert_eq!(deadline_value(15_000).unwrap(), "15000");
    }
}
