//! The mesh's stack below the route layer, in one call: telemetry, then
//! the rate limit, fault, timeout and mirror layers, then retries.
//!
//! Most routes have no rate limit, no injected fault and no mirror, and
//! for them those three layers only pass the request on. Each pass moves
//! the request (376 bytes) and nests one more future. So [`Outbound`]
//! starts the telemetry and bounds the request by its deadline itself,
//! and hands such a request straight to the retry layer, or, when its
//! route neither retries nor hedges (the retry layer would only count it),
//! to the layer below that. A request whose route has any of the three
//! goes through the layers, as before. The ways do the same thing; the
//! short ones do it in fewer moves.

use crate::body::MeshBody;
use crate::error::Deadline;
use crate::fault::Fault;
use crate::future::{Either, MapErr, TimeoutFuture};
use crate::limit::Limit;
use crate::mirror::Mirror;
use crate::retry::{ResponseFuture as RetryFuture, Retry};
use crate::runtime::Runtime;
use crate::telemetry::{ResponseFuture, Started};
use crate::timeout::Timeout;
use crate::{BoxError, ext};
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// The layers a route with a rate limit, a fault or a mirror goes through.
type Guarded<S> = Limit<Fault<Timeout<Mirror<Retry<S>>>>>;

/// The outbound stack below the route layer over `S` (the backend layer
/// and the client): telemetry, rate limit, fault, timeout, mirror and
/// retry, the pass-through layers skipped for a route that has none of
/// their policies. Made by [`MeshLayer`](crate::MeshLayer).
#[derive(Debug, Clone)]
pub struct Outbound<S> {
    guarded: Guarded<S>,
    runtime: Arc<Runtime>,
    /// The timeout of a request no route layer saw.
    default: Duration,
}

impl<S> Outbound<S> {
    pub(crate) fn new(guarded: Guarded<S>, runtime: Arc<Runtime>, default: Duration) -> Self {
        Self {
            guarded,
            runtime,
            default,
        }
    }

    /// The retry layer, reached through the ones above it: the same
    /// service, so what `poll_ready` readied is what is called.
    fn retry(&mut self) -> &mut Retry<S> {
        self.guarded.inner_mut().inner_mut().inner_mut().inner_mut()
    }
}

/// The future of a request on its way through [`Outbound`]: sent once,
/// through the retry layer, or through the layers a guarded route needs.
pub type OutboundFuture<S, RB> = ResponseFuture<
    Either<
        TimeoutFuture<
            Either<MapErr<<S as Service<Request<MeshBody>>>::Future>, RetryFuture<S, RB>>,
        >,
        <Guarded<S> as Service<Request<MeshBody>>>::Future,
    >,
>;

impl<S, RB> Service<Request<MeshBody>> for Outbound<S>
where
    S: Service<Request<MeshBody>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = OutboundFuture<S, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.guarded.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<MeshBody>) -> Self::Future {
        let started = Started::new(&self.runtime, &mut req);
        // What each layer would do with the request, asked of its route
        // once (a request that passes through has none: every layer only
        // passes it on).
        let route = ext::routed(&req).and_then(ext::Routed::route_entry);
        let plain = route.is_none_or(|r| {
            crate::limit::passes(r) && crate::fault::passes(r) && crate::mirror::passes(r)
        });
        let once = route.is_none_or(crate::retry::sends_once);
        if !plain {
            return started.wrap(Either::right(self.guarded.call(req)));
        }
        let (deadline, timeout) = crate::timeout::bound(&mut req, self.default);
        // A route that neither retries nor hedges: the retry layer would
        // only count the request and send it on.
        let sent = if once {
            crate::retry::deposit(&self.runtime, &req);
            Either::left(MapErr::new(self.retry().inner_mut().call(req)))
        } else {
            Either::right(self.retry().call(req))
        };
        let bounded = TimeoutFuture::new(sent, deadline, Deadline::Overall, timeout);
        started.wrap(Either::left(bounded))
    }
}
