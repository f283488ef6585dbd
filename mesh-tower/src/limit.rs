//! The outbound rate-limit layer: a route's local rate limit
//! ([`RateLimit`](proxyless_core::config::RateLimit)) protects its
//! dependency from this workload. Below telemetry (a refusal is counted
//! and traced like any outcome) and above the retry layer (a refused
//! request is never retried into the limit). A route without a limit costs
//! one branch.

use crate::body::MeshBody;
use crate::error::RateLimited;
use crate::future::Either;
use crate::runtime::Runtime;
use crate::{BoxError, ext};
use http::Request;
use proxyless_core::config::RateLimitKey;
use proxyless_core::snapshot::RouteEntry;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// The rate-limit layer.
#[derive(Debug, Clone)]
pub struct LimitLayer {
    runtime: Arc<Runtime>,
}

impl LimitLayer {
    /// Limits with `runtime`'s metric handles.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

impl<S> tower_layer::Layer<S> for LimitLayer {
    type Service = Limit<S>;
    fn layer(&self, inner: S) -> Limit<S> {
        Limit {
            inner,
            runtime: self.runtime.clone(),
        }
    }
}

/// The rate-limit service.
#[derive(Debug, Clone)]
pub struct Limit<S> {
    inner: S,
    runtime: Arc<Runtime>,
}

/// The key of `req` for a limit keyed by `per`.
pub(crate) fn key_of<'a, B>(
    per: Option<&RateLimitKey>,
    req: &'a Request<B>,
    caller: Option<&'a str>,
) -> Option<&'a str> {
    match per? {
        RateLimitKey::Header(h) => Some(req.headers().get(h.as_str())?.to_str().unwrap_or("")),
        RateLimitKey::Path => Some(req.uri().path()),
        RateLimitKey::Caller => caller.or(Some("")),
        _ => None,
    }
}

/// Whether the rate-limit layer only passes on the requests of `route`:
/// it has no rate limit.
pub(crate) fn passes(route: &RouteEntry) -> bool {
    route.rate_limit().is_none()
}

impl<S> Limit<S> {
    /// The service below.
    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S> Service<Request<MeshBody>> for Limit<S>
where
    S: Service<Request<MeshBody>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<S::Future, std::future::Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<MeshBody>) -> Self::Future {
        let Some(routed) = ext::routed(&req) else {
            return Either::left(self.inner.call(req));
        };
        let Some((limit, buckets)) = routed.route_entry().and_then(|r| r.rate_limit()) else {
            return Either::left(self.inner.call(req));
        };
        let key = key_of(limit.per.as_ref(), &req, None);
        let taken = buckets.try_take(key, crate::runtime::now());
        let metrics = self.runtime.route_metrics(routed);
        metrics.rate_limit(taken.is_ok());
        match taken {
            Ok(()) => Either::left(self.inner.call(req)),
            Err(retry_after) => {
                let scope = match (routed.service_entry(), routed.route_entry()) {
                    (Some(s), Some(r)) => format!("route {}/{}", s.name(), r.name()),
                    _ => "route".to_owned(),
                };
                let refused = RateLimited {
                    scope: scope.into(),
                    retry_after,
                };
                Either::right(std::future::ready(Err(refused.into())))
            }
        }
    }
}
