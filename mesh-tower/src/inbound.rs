//! The server side as tower layers, for any server: `axum::serve`, tonic's
//! `Server::builder().layer(..)`, a hyper-util connection loop, or
//! `proxyless_hyper::serve` (which is built on them).
//!
//! [`InboundLayer`] applies, outermost first:
//!
//! 1. [`Refusals`]: a refusal by the layers below becomes a response (HTTP
//!    status and `x-mesh-error`, or a gRPC status for gRPC requests), so
//!    the stack's error type is `Infallible`;
//! 2. [`InboundTelemetry`]: metrics, the access log (DEBUG, `mesh::access`)
//!    and the OpenTelemetry server span, whose context is the current one
//!    while the application's handler runs;
//! 3. [`Normalize`]: the path in normal form (or refused with 400, or
//!    redirected), so authorization and the application see the same path;
//! 4. [`Authorize`]: this workload's inbound policy judges the caller (its
//!    verified SPIFFE ID from [`PeerIdentity`] or [`ConnectionInfo`]) and
//!    the request; a denial is 403 / `PERMISSION_DENIED` and never reaches
//!    the application; then the policy's rate limit, whose refusal is 429 /
//!    `UNAVAILABLE` with `retry-after`;
//! 5. [`Deadline`]: the caller's deadline (`x-mesh-timeout-ms`,
//!    `grpc-timeout`) bounds the handler and is put in the request's
//!    extensions for the calls it makes.
//!
//! Connection facts come from whoever accepted the connection: the mesh's
//! server and acceptors insert [`ConnectionInfo`] and [`PeerIdentity`]
//! ([`WithConnection`] does it for a connection loop of your own). A
//! request with neither is a plaintext caller with no identity: a policy
//! naming principals denies it, and `mtls: strict` refuses it.
//!
//! ```
//! use proxyless_tower::inbound::InboundLayer;
//! use tower::{Layer, service_fn};
//! let mesh = proxyless_core::Mesh::empty().with_service("reviews");
//! let app = service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//! });
//! let served = InboundLayer::new(&mesh).layer(app);
//! # let _ = served;
//! ```

use crate::BoxError;
use crate::body::ResponseBody;
use crate::error::{Deadline as Which, ErrorKind, Unauthorized};
use crate::ext::{
    AUTHZ_REASON_HEADER, ConnectionInfo, DEADLINE_HEADER, PeerIdentity, RequestDeadline,
};
use crate::future::{Either, MapErr, TimeoutFuture};
use crate::path::{PathAction, normalize_request};
use crate::telemetry::metrics::{RouteMetrics, lazy_handle};
use crate::telemetry::{span, trace};
use http::{HeaderValue, Request, Response};
use opentelemetry::trace::{FutureExt as _, TraceContextExt};
use proxyless_core::Mesh;
use proxyless_core::authz::{Verdict, authorize};
use proxyless_core::config::MtlsMode;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_layer::Layer;
use tower_service::Service;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Counters of the inbound layers.
#[derive(Debug, Default)]
pub struct InboundStats {
    /// Requests that reached the inbound layers.
    pub requests: AtomicU64,
    /// Requests authorization denied.
    pub denied: AtomicU64,
    /// Requests the service's rate limit refused.
    pub rate_limited: AtomicU64,
}

/// What every inbound layer of one server shares.
#[derive(Debug)]
struct Shared {
    mesh: Mesh,
    service: Option<Arc<str>>,
    stats: Arc<InboundStats>,
    requests: RouteMetrics,
    denied: OnceLock<metrics::Counter>,
}

/// The inbound layers in their order (see the module docs).
#[derive(Debug, Clone)]
pub struct InboundLayer {
    shared: Arc<Shared>,
}

impl InboundLayer {
    /// The inbound layers for `mesh`'s [service](Mesh::service).
    pub fn new(mesh: &Mesh) -> Self {
        Self::build(mesh.clone(), mesh.service(), Arc::default())
    }

    fn build(mesh: Mesh, service: Option<Arc<str>>, stats: Arc<InboundStats>) -> Self {
        let name: Arc<str> = service.clone().unwrap_or_else(|| Arc::from(""));
        Self {
            shared: Arc::new(Shared {
                requests: RouteMetrics::new("inbound", name, Arc::from(""), Arc::from("")),
                mesh,
                service,
                stats,
                denied: OnceLock::new(),
            }),
        }
    }

    /// The same layers for mesh service `service` (whose inbound policy
    /// applies) instead of the mesh's.
    #[must_use]
    pub fn service(self, service: &str) -> Self {
        let s = &self.shared;
        Self::build(s.mesh.clone(), Some(Arc::from(service)), s.stats.clone())
    }

    /// Counting into `stats` (shared with a server's other counters).
    #[must_use]
    pub fn stats_into(self, stats: Arc<InboundStats>) -> Self {
        let s = &self.shared;
        Self::build(s.mesh.clone(), s.service.clone(), stats)
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<InboundStats> {
        &self.shared.stats
    }
}

/// The service [`InboundLayer`] makes.
pub type Inbound<S> = Refusals<InboundTelemetry<Normalize<Authorize<Deadline<S>>>>>;

impl<S> Layer<S> for InboundLayer {
    type Service = Inbound<S>;

    fn layer(&self, inner: S) -> Inbound<S> {
        let shared = self.shared.clone();
        let deadline = Deadline { inner };
        let authorize = Authorize {
            inner: deadline,
            shared: shared.clone(),
        };
        let normalize = Normalize {
            inner: authorize,
            shared: shared.clone(),
        };
        let telemetry = InboundTelemetry {
            inner: normalize,
            shared,
        };
        Refusals {
            inner: telemetry,
            not_ready: None,
        }
    }
}

/// Answers the errors of the layers below (and of the application) with
/// responses, HTTP or gRPC as the request was.
#[derive(Debug)]
pub struct Refusals<S> {
    inner: S,
    /// Why the inner service failed readiness: the next request gets it.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for Refusals<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            not_ready: None,
        }
    }
}

/// A redirect to the normal form of a request's path (307).
#[derive(Debug, thiserror::Error)]
#[error("redirect to the normalized path {location}")]
pub struct PathRedirect {
    /// The normalized path and query.
    pub location: String,
}

impl<S, B, RB> Service<Request<B>> for Refusals<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A service that fails readiness is not called: the next request
        // is answered with the failure instead.
        if self.not_ready.is_none() {
            match self.inner.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => self.not_ready = Some(e.into()),
            }
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = crate::grpc::is_grpc(req.headers());
        if let Some(e) = self.not_ready.take() {
            return Box::pin(std::future::ready(Ok(refusal_response(&*e, grpc))));
        }
        let fut = self.inner.call(req);
        Box::pin(async move {
            Ok(match fut.await.map_err(Into::into) {
                Ok(resp) => resp.map(ResponseBody::upstream),
                Err(e) => refusal_response(&*e, grpc),
            })
        })
    }
}

fn refusal_response<RB>(
    err: &(dyn std::error::Error + 'static),
    grpc: bool,
) -> Response<ResponseBody<RB>> {
    if let Some(r) = err.downcast_ref::<PathRedirect>() {
        let mut resp = Response::new(ResponseBody::local(bytes::Bytes::new()));
        *resp.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
        if let Ok(v) = HeaderValue::from_str(&r.location) {
            resp.headers_mut().insert(http::header::LOCATION, v);
        }
        return resp;
    }
    if ErrorKind::of(err) == ErrorKind::Other {
        // The application's own failure, not a mesh refusal: no
        // `x-mesh-error`, and no detail to the caller.
        tracing::debug!("inbound request failed: {err}");
        return application_error(grpc);
    }
    let mut resp = if grpc {
        crate::response::grpc_error_response(err)
    } else {
        crate::response::error_response(err)
    };
    if let Some(u) = err.downcast_ref::<Unauthorized>()
        && let Ok(v) = HeaderValue::from_str(&u.reason)
    {
        resp.headers_mut().insert(AUTHZ_REASON_HEADER, v);
    }
    resp
}

/// 500, or gRPC's `INTERNAL`, for a handler that failed.
fn application_error<RB>(grpc: bool) -> Response<ResponseBody<RB>> {
    if grpc {
        let mut resp = Response::new(ResponseBody::local(bytes::Bytes::new()));
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("13"));
        headers.insert("grpc-message", HeaderValue::from_static("internal%20error"));
        return resp;
    }
    let mut resp = Response::new(ResponseBody::local(bytes::Bytes::from_static(
        b"internal error\n",
    )));
    *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    resp
}

/// Metrics, access log and the server span of inbound requests.
#[derive(Debug, Clone)]
pub struct InboundTelemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, RB> Service<Request<B>> for InboundTelemetry<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<RB>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let shared = self.shared.clone();
        shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        let parent = trace::extract(req.headers());
        let server_span = span::start_server(&req, shared.service.as_deref(), &parent);
        let cx = parent.with_span(server_span);
        let access = tracing::enabled!(target: "mesh::access", tracing::Level::DEBUG).then(|| {
            Box::new((
                req.method().clone(),
                req.uri().path().to_owned(),
                caller_of(&req).map(|c| c.as_str().to_owned()),
            ))
        });
        // The handler's own spans, and the calls it makes, are children of
        // the server span: its context is current while the handler is
        // called (spans made then) and while its future is polled.
        let fut = {
            let _current = cx.clone().attach();
            self.inner.call(req)
        };
        let fut = fut.with_context(cx.clone());
        Box::pin(async move {
            let result = fut.await.map_err(Into::into);
            let outcome = match &result {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) if e.is::<PathRedirect>() => Ok(307),
                Err(e) => Err(ErrorKind::of(&**e)),
            };
            let elapsed = started.elapsed();
            shared.requests.record(outcome, elapsed.as_secs_f64());
            let grpc_status = result
                .as_ref()
                .ok()
                .and_then(|r| crate::grpc::status(r.headers()));
            span::finish(&cx, span::Side::Server, outcome, grpc_status, None, None);
            if let Some(info) = access {
                let (method, path, caller) = *info;
                tracing::debug!(
                    target: "mesh::access",
                    direction = "inbound",
                    method = %method,
                    path = %path,
                    status = outcome.ok().unwrap_or(0),
                    duration_ms = elapsed.as_secs_f64() * 1000.0,
                    service = shared.service.as_deref().unwrap_or(""),
                    caller = caller.as_deref().unwrap_or(""),
                    error = outcome.err().map_or("", ErrorKind::as_str),
                    trace_id = %cx.span().span_context().trace_id(),
                );
            }
            result
        })
    }
}

/// The caller's verified SPIFFE ID: [`PeerIdentity`], else
/// [`ConnectionInfo`]'s.
fn caller_of<B>(req: &Request<B>) -> Option<&proxyless_core::identity::SpiffeId> {
    match req.extensions().get::<PeerIdentity>() {
        Some(p) => p.0.as_ref(),
        None => req
            .extensions()
            .get::<ConnectionInfo>()
            .and_then(|c| c.peer.as_ref()),
    }
}

/// Path normalization.
#[derive(Debug, Clone)]
pub struct Normalize<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for Normalize<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Checked<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let snap = self.shared.mesh.snapshot();
        match normalize_request(&mut req, &snap.config().defaults.path_normalization) {
            Ok(PathAction::Continue) => passed(self.inner.call(req)),
            Ok(PathAction::Redirect(location)) => refused(PathRedirect { location }),
            Err(e) => {
                tracing::debug!(path = req.uri().path(), "request refused: {e}");
                refused(e)
            }
        }
    }
}

/// Inbound authorization by this workload's policy.
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B> Service<Request<B>> for Authorize<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Checked<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let caller = caller_of(&req).cloned();
        let snap = self.shared.mesh.snapshot();
        let policy = self.shared.service.as_deref().and_then(|s| snap.inbound(s));
        if let Some(policy) = policy {
            let verdict = if policy.mtls == MtlsMode::Strict && caller.is_none() {
                Verdict::Deny("strict mTLS: the caller has no verified identity".to_owned())
            } else {
                authorize(
                    policy,
                    caller.as_ref(),
                    req.method().as_str(),
                    req.uri().path(),
                )
            };
            if let Verdict::Deny(reason) = verdict {
                self.shared.stats.denied.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = lazy_handle(&self.shared.denied, || {
                    let service = self.shared.service.as_deref().unwrap_or("").to_owned();
                    metrics::counter!(crate::telemetry::metrics::AUTHZ_DENIED, "service" => service)
                }) {
                    c.increment(1);
                }
                tracing::debug!(
                    caller = ?caller.as_ref().map(|c| c.as_str()),
                    method = %req.method(),
                    path = req.uri().path(),
                    "request denied: {reason}"
                );
                return refused(Unauthorized { reason });
            }
        }
        // The service's rate limit, for what authorization let through.
        if let Some(service) = self.shared.service.as_deref()
            && let Some(buckets) = snap.inbound_limiter(service)
        {
            let per = policy
                .and_then(|p| p.rate_limit.as_ref())
                .and_then(|l| l.per.as_ref());
            let key = crate::limit::key_of(per, &req, caller.as_ref().map(|c| c.as_str()));
            let taken = buckets.try_take(key, crate::runtime::now());
            self.shared.requests.rate_limit(taken.is_ok());
            if let Err(retry_after) = taken {
                self.shared
                    .stats
                    .rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                return refused(crate::error::RateLimited {
                    scope: format!("service {service}").into(),
                    retry_after,
                });
            }
        }
        // The application finds the caller in one place, whoever accepted.
        if req.extensions().get::<PeerIdentity>().is_none() {
            req.extensions_mut().insert(PeerIdentity(caller));
        }
        passed(self.inner.call(req))
    }
}

/// The caller's deadline.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(budget) = caller_budget(req.headers()) else {
            return Either::right(MapErr::new(self.inner.call(req)));
        };
        // The handler's calls get the same deadline it is held to.
        let at = crate::ext::deadline_after(budget);
        req.extensions_mut().insert(RequestDeadline(at));
        let inner = self.inner.call(req);
        Either::left(TimeoutFuture::new(inner, at, Which::Overall, budget))
    }
}

/// The future of a layer that refuses a request at once or passes it on
/// (no allocation either way).
pub type Checked<F, T> = Either<std::future::Ready<Result<T, BoxError>>, MapErr<F>>;

fn passed<F, T>(inner: F) -> Checked<F, T> {
    Either::right(MapErr::new(inner))
}

fn refused<F, T>(error: impl Into<BoxError>) -> Checked<F, T> {
    Either::left(std::future::ready(Err(error.into())))
}

/// [`Deadline`]'s future: the handler, bounded by the caller's budget when
/// it brought one.
pub type DeadlineFuture<F> = Either<TimeoutFuture<F>, MapErr<F>>;

/// The shorter of the caller's `x-mesh-timeout-ms` and `grpc-timeout`.
pub fn caller_budget(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(DEADLINE_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_millis)
        .into_iter()
        .chain(crate::grpc::parse_timeout(headers))
        .min()
}

/// Puts one connection's facts ([`ConnectionInfo`], and [`PeerIdentity`])
/// into each request: for a connection loop of your own, under
/// [`InboundLayer`].
#[derive(Debug, Clone)]
pub struct WithConnection<S> {
    inner: S,
    info: ConnectionInfo,
}

impl<S> WithConnection<S> {
    /// `inner`, with `info` on every request.
    pub fn new(inner: S, info: ConnectionInfo) -> Self {
        Self { inner, info }
    }
}

impl<S, B> Service<Request<B>> for WithConnection<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let ext = req.extensions_mut();
        ext.insert(PeerIdentity(self.info.peer.clone()));
        ext.insert(self.info.clone());
        self.inner.call(req)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn failing()
    -> impl Service<
        Request<String>,
        Response = Response<String>,
        Error = BoxError,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|_req: Request<String>| async {
            Err::<Response<String>, BoxError>("database down".into())
        })
    }

    /// A handler's own failure is the application's 500 (or `INTERNAL`),
    /// not dressed as a mesh refusal, and its text stays inside.
    #[tokio::test]
    async fn an_application_error_is_a_plain_500_or_internal() {
        let mesh = Mesh::empty();
        let svc = InboundLayer::new(&mesh).layer(failing());
        let resp = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        assert!(resp.headers().get(crate::ext::ERROR_HEADER).is_none());
        let grpc = Request::builder()
            .header("content-type", "application/grpc")
            .body(String::new())
            .unwrap();
        let resp = svc.oneshot(grpc).await.unwrap();
        assert_eq!(resp.headers()["grpc-status"], "13");
        assert!(!format!("{:?}", resp.headers()).contains("database"));
    }

    /// A caller's deadline bounds the handler: 504 and `x-mesh-error: timeout`.
    #[tokio::test(start_paused = true)]
    async fn the_callers_deadline_bounds_the_handler() {
        let slow = tower::service_fn(|req: Request<String>| async move {
            assert!(req.extensions().get::<RequestDeadline>().is_some());
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, BoxError>(Response::new(String::new()))
        });
        let svc = InboundLayer::new(&Mesh::empty()).layer(slow);
        let req = Request::builder()
            .header(DEADLINE_HEADER, "100")
            .body(String::new())
            .unwrap();
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 504);
        assert_eq!(resp.headers()[crate::ext::ERROR_HEADER], "timeout");
    }

    /// Under strict mTLS a request with no verified caller is refused by
    /// the layer itself, whatever server it runs in.
    #[tokio::test]
    async fn strict_mtls_refuses_a_caller_without_identity() {
        let config = proxyless_core::config::Config::from_yaml(
            "version: 1\ninbound:\n  - { service: s, mtls: strict }\n",
        )
        .unwrap();
        let mesh = Mesh::from_config(config).unwrap().with_service("s");
        let ok = tower::service_fn(|_req: Request<String>| async {
            Ok::<_, BoxError>(Response::new(String::new()))
        });
        let resp = InboundLayer::new(&mesh)
            .layer(ok)
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        assert!(
            resp.headers()[AUTHZ_REASON_HEADER]
                .to_str()
                .unwrap()
                .contains("strict mTLS")
        );
    }
}
