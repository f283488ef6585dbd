//! The timeout layer: the request must be answered by its deadline (the
//! route's timeout from when the route layer saw it, or an earlier deadline
//! the caller brought), or it fails with [`Elapsed`](crate::error::Elapsed). The remaining time
//! travels to the upstream in the `x-mesh-timeout-ms` header (set by the
//! backend layer on each attempt), so a meshed server stops working on a
//! request its caller has given up on.

use crate::BoxError;
use crate::body::MeshBody;
use crate::error::Deadline;
use crate::ext::{deadline_of, routed, set_deadline};
use crate::future::TimeoutFuture;
use http::Request;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// The timeout layer; `default` applies to requests no route layer saw.
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    default: Duration,
}

impl TimeoutLayer {
    /// Requests without a deadline get `default`.
    pub fn new(default: Duration) -> Self {
        Self { default }
    }

    /// The timeout of requests without a deadline.
    pub(crate) fn default_timeout(&self) -> Duration {
        self.default
    }
}

impl Default for TimeoutLayer {
    fn default() -> Self {
        Self::new(Duration::from_secs(15))
    }
}

impl<S> tower_layer::Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            default: self.default,
        }
    }
}

/// The timeout service.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    default: Duration,
}

impl<S> Service<Request<MeshBody>> for Timeout<S>
where
    S: Service<Request<MeshBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<MeshBody>) -> Self::Future {
        let (deadline, timeout) = bound(&mut req, self.default);
        TimeoutFuture::new(self.inner.call(req), deadline, Deadline::Overall, timeout)
    }
}

impl<S> Timeout<S> {
    /// The service below.
    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

/// The deadline `req` must be answered by (`default` from now when nothing
/// above set one, and then set on it), and the timeout it stands for: its
/// route's, or the config's default for a request that passes through.
pub(crate) fn bound(
    req: &mut Request<MeshBody>,
    default: Duration,
) -> (tokio::time::Instant, Duration) {
    let timeout = routed(req).map_or(default, |r| match r.route_entry() {
        Some(e) => e.timeout(),
        None => r.snapshot().config().defaults.timeout,
    });
    let deadline = match deadline_of(req) {
        Some(d) => d,
        None => {
            let d = crate::ext::deadline_after(default);
            set_deadline(req, d);
            d
        }
    };
    (deadline, timeout)
}
