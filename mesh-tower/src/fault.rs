//! The fault layer: injects the route's faults, as Istio and Envoy define
//! them. A delay holds a share of requests for a fixed time (never past the
//! request's deadline: a delay that outlasts the route timeout ends as a
//! timeout, as the caller would see it); an abort answers a share of
//! requests with an error status without sending them (the route layer
//! turns [`FaultAbort`] into that response).

use crate::body::MeshBody;
use crate::error::{Deadline, Elapsed, FaultAbort};
use crate::ext::{deadline_of, routed};
use crate::future::{Either, MapErr};
use crate::{BoxError, BoxFuture};
use http::Request;
use proxyless_core::snapshot::RouteEntry;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// The fault layer.
#[derive(Debug, Clone, Default)]
pub struct FaultLayer;

impl<S> tower_layer::Layer<S> for FaultLayer {
    type Service = Fault<S>;
    fn layer(&self, inner: S) -> Fault<S> {
        Fault { inner }
    }
}

/// The fault service.
#[derive(Debug, Clone)]
pub struct Fault<S> {
    inner: S,
}

/// Whether a request falls in `percent` percent, for a uniform `sample` in [0, 1).
fn hit(percent: f64, sample: f64) -> bool {
    sample * 100.0 < percent
}

/// Whether the fault layer only passes on the requests of `route`: it
/// injects no fault.
pub(crate) fn passes(route: &RouteEntry) -> bool {
    route.fault().is_none()
}

impl<S> Fault<S> {
    /// The service below.
    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S> Service<Request<MeshBody>> for Fault<S>
where
    S: Service<Request<MeshBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<MapErr<S::Future>, BoxFuture<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<MeshBody>) -> Self::Future {
        let routed = routed(&req);
        let fault = routed.and_then(|r| r.route_entry()?.fault().cloned());
        let Some(fault) = fault else {
            return Either::left(MapErr::new(self.inner.call(req)));
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let route_timeout = routed
            .and_then(|r| r.route_entry())
            .map_or(Duration::ZERO, |r| r.timeout());
        let delay = fault
            .delay
            .filter(|d| hit(d.percent, crate::runtime::random()))
            .map(|d| d.fixed);
        let abort = fault
            .abort
            .filter(|a| hit(a.percent, crate::runtime::random()));
        let deadline = deadline_of(&req);
        Either::right(Box::pin(async move {
            if let Some(delay) = delay {
                let until = crate::ext::deadline_after(delay);
                match deadline {
                    Some(d) if d <= until => {
                        tokio::time::sleep_until(d).await;
                        return Err(Elapsed {
                            deadline: Deadline::Overall,
                            timeout: route_timeout,
                        }
                        .into());
                    }
                    _ => tokio::time::sleep_until(until).await,
                }
            }
            if let Some(a) = abort {
                return Err(FaultAbort { status: a.status }.into());
            }
            inner.call(req).await.map_err(Into::into)
        }))
    }
}
