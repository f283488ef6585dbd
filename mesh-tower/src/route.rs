//! The route layer: the mesh's entry. It takes one snapshot of the config,
//! decides the route and the backend (weighted), sets the request's
//! deadline, and turns the body into a [`MeshBody`] — buffered when the
//! route may need to send it again (retries, mirroring) and it is small and
//! of known length. Everything below reads its decision from the
//! [`Routed`] the request's body carries ([`ext::routed`](crate::ext::routed)).
//!
//! The path is normalized first ([`proxyless_core::path`]) for hosts the mesh
//! claims: routes match the normal form and the request is sent with it; a
//! refused path fails with [`InvalidPath`](crate::error::InvalidPath).
//!
//! A host no service claims passes through as addressed (still timed out),
//! after the config source was asked for it if it fetches hosts on demand
//! (see [`Mesh::demand`]), unless `defaults.unknown_hosts: refuse`, which fails with
//! [`NoRoute`](crate::error::NoRoute). An injected abort from the fault
//! layer comes back here as a response with its status and
//! `x-mesh-fault: abort`.

use crate::body::{MeshBody, ResponseBody};
use crate::error::FaultAbort;
use crate::ext::{RequestDeadline, Routed};
use crate::future::Either;
use crate::path::normalize_request;
use crate::{BoxError, BoxFuture};
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use proxyless_core::Mesh;
use proxyless_core::config::EscapedSlashes;
use proxyless_core::route::{Decision, RequestParts, decide_in};
use proxyless_core::snapshot::Candidate;
use std::task::{Context, Poll};
use tower_service::Service;

/// Mirrors send a copy of the body, so they buffer up to this much even on
/// routes without retries.
const MIRROR_BUFFER_LIMIT: u64 = 64 * 1024;
/// Hedges send the body again: a hedged route buffers bodies of known
/// length up to this much (a larger or streamed one is not hedged).
const HEDGE_BUFFER_LIMIT: u64 = 64 * 1024;

/// The route layer.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    mesh: Mesh,
}

impl RouteLayer {
    /// Routes by `mesh`'s live config.
    pub fn new(mesh: Mesh) -> Self {
        Self { mesh }
    }
}

impl<S> tower_layer::Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            mesh: self.mesh.clone(),
            inner,
        }
    }
}

/// The route service.
#[derive(Debug, Clone)]
pub struct Route<S> {
    mesh: Mesh,
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Route<S>
where
    S: Service<Request<MeshBody>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: Send + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = BoxError;
    type Future = Either<Respond<S::Future>, BoxFuture<Result<Self::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let snap = self.mesh.snapshot();
        // Routes match the normalized path, and the request carries it on.
        // Hosts outside the mesh are sent as addressed.
        let found = snap.service_index_for_host(RequestParts::of(&req).host());
        if found.is_some() {
            let mut how = snap.config().defaults.path_normalization;
            if how.escaped_slashes == EscapedSlashes::Redirect {
                // Only a server can redirect its caller; a client decodes.
                how.escaped_slashes = EscapedSlashes::Decode;
            }
            if let Err(e) = normalize_request(&mut req, &how) {
                return Either::right(Box::pin(std::future::ready(Err(e.into()))));
            }
        }
        let sample = crate::runtime::random();
        let decision = decide_in(&snap, found, &RequestParts::of(&req), sample);
        // A passthrough is evaluated once the source was asked for its
        // host (below), so a request decided twice is counted once.
        if let Some(candidate) = snap.candidate()
            && !matches!(decision, Ok(Decision::Passthrough))
        {
            shadow(candidate, &decision, &RequestParts::of(&req), sample);
        }
        let (mut routed, timeout, buffer_limit) = match decision {
            Err(no_route) => {
                if let Some(c) = no_route_counter() {
                    c.increment(1);
                }
                return Either::right(Box::pin(std::future::ready(Err(no_route.into()))));
            }
            Ok(Decision::Passthrough) => {
                // A source that fetches hosts on demand (xDS) is asked
                // first, once per request, and the request is decided
                // again once it answers. The wait is bounded here too (by
                // the default timeout, or the caller's earlier deadline),
                // whatever the source does.
                let asked = req.extensions().get::<Demanded>().is_some();
                let wait = (!asked)
                    .then(|| self.mesh.demand(RequestParts::of(&req).authority))
                    .flatten();
                if let Some(wait) = wait {
                    let mut bound = crate::ext::deadline_after(snap.config().defaults.timeout);
                    if let Some(RequestDeadline(earlier)) =
                        req.extensions().get::<RequestDeadline>()
                    {
                        bound = bound.min(*earlier);
                    }
                    let clone = self.clone();
                    let mut readied = std::mem::replace(self, clone);
                    let mut req = req;
                    req.extensions_mut().insert(Demanded);
                    return Either::right(Box::pin(async move {
                        let _ = tokio::time::timeout_at(bound, wait).await;
                        readied.call(req).await
                    }));
                }
                if let Some(candidate) = snap.candidate() {
                    let parts = RequestParts::of(&req);
                    shadow(candidate, &Ok(Decision::Passthrough), &parts, sample);
                }
                let t = snap.config().defaults.timeout;
                (Routed::passthrough(snap.clone()), t, None)
            }
            Ok(Decision::Route(d)) => {
                let retry_limit = d.route.retry().map(|r| u64::from(r.max_body_bytes));
                let mirror_limit = d.route.mirror().map(|_| MIRROR_BUFFER_LIMIT);
                let hedge_limit = d.route.hedge().map(|_| HEDGE_BUFFER_LIMIT);
                let limit = retry_limit.max(mirror_limit).max(hedge_limit);
                let routed = Routed::route(
                    snap.clone(),
                    d.service_index,
                    d.route_index,
                    d.backend_index,
                );
                (routed, d.route.timeout(), limit)
            }
        };
        // The one clock read of the request's way down: the layers below
        // share it until one of them waits.
        let now = tokio::time::Instant::now();
        let mut deadline = crate::ext::deadline_from(now, timeout);
        if let Some(RequestDeadline(earlier)) = req.extensions().get::<RequestDeadline>() {
            deadline = deadline.min(*earlier);
        }
        routed.set_deadline(deadline);
        routed.set_started(now);
        let (parts, body) = req.into_parts();
        if body.is_end_stream() {
            // No body to read first: call the readied service right away.
            let body = MeshBody::empty().with_routed(routed);
            let inner = self.inner.call(Request::from_parts(parts, body));
            return Either::left(Respond { inner });
        }
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::right(Box::pin(async move {
            let body = MeshBody::from_body(body, buffer_limit).await?;
            // Reading the body took time: the layers below start now.
            routed.set_started(tokio::time::Instant::now());
            let body = body.with_routed(routed);
            let result = inner.call(Request::from_parts(parts, body)).await;
            respond(result.map_err(Into::into))
        }))
    }
}

pin_project_lite::pin_project! {
    /// The inner future, its response body wrapped and an injected abort
    /// turned into a response.
    #[derive(Debug)]
    pub struct Respond<F> {
        #[pin]
        inner: F,
    }
}

impl<F, RB, E> std::future::Future for Respond<F>
where
    F: std::future::Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<RB>>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let r = std::task::ready!(self.project().inner.poll(cx));
        Poll::Ready(respond(r.map_err(Into::into)))
    }
}

fn respond<RB>(
    result: Result<Response<RB>, BoxError>,
) -> Result<Response<ResponseBody<RB>>, BoxError> {
    match result {
        Ok(resp) => Ok(resp.map(ResponseBody::upstream)),
        Err(e) => match e.downcast_ref::<FaultAbort>() {
            Some(abort) => Ok(aborted(abort.status)),
            None => Err(e),
        },
    }
}

fn aborted<RB>(status: u16) -> Response<ResponseBody<RB>> {
    let mut resp = Response::new(ResponseBody::local(Bytes::from_static(b"fault injected\n")));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    resp.headers_mut()
        .insert("x-mesh-fault", http::HeaderValue::from_static("abort"));
    resp
}

/// On a request whose host the config source was already asked about.
#[derive(Debug, Clone, Copy)]
struct Demanded;

/// Decides the request under the candidate config too (shadow
/// evaluation), and counts the outcome. Out of line: a mesh with no
/// candidate never comes here.
#[cold]
#[inline(never)]
fn shadow(
    candidate: &Candidate,
    live: &Result<Decision<'_>, proxyless_core::route::NoRoute>,
    req: &RequestParts<'_>,
    sample: u64,
) {
    static EVALUATED: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    let differs = proxyless_core::route::shadow(candidate, live, req, sample);
    if let Some(c) = crate::telemetry::metrics::lazy_handle(&EVALUATED, || {
        metrics::counter!(crate::telemetry::metrics::SHADOW_REQUESTS)
    }) {
        c.increment(1);
    }
    if let Some((live, cand)) = differs
        && crate::telemetry::metrics::recorder_installed()
    {
        let service = live.service().or(cand.service()).unwrap_or("");
        metrics::counter!(
            crate::telemetry::metrics::SHADOW_DIFFERENCES,
            "service" => service.to_owned(),
            "live_route" => live.route_label().to_owned(),
            "live_backend" => live.backend_label().to_owned(),
            "candidate_route" => cand.route_label().to_owned(),
            "candidate_backend" => cand.backend_label().to_owned()
        )
        .increment(1);
    }
}

/// `mesh_requests_total` for requests refused before any route matched.
fn no_route_counter() -> Option<&'static metrics::Counter> {
    static COUNTER: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    crate::telemetry::metrics::lazy_handle(&COUNTER, || {
        metrics::counter!(
            crate::telemetry::metrics::REQUESTS,
            "direction" => "outbound",
            "service" => "",
            "route" => "",
            "backend" => "",
            "status_class" => "error",
            "error_kind" => "no_route"
        )
    })
}
