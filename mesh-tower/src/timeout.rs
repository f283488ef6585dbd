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
        let timeout = routed(&req)
            .and_then(|r| r.route_entry())
            .map_or(self.default, |r| r.timeout());
        let deadline = match deadline_of(&req) {
            Some(d) => d,
            None => {
                let d = crate::ext::deadline_after(self.default);
                set_deadline(&mut req, d);
                d
            }
        };
        TimeoutFuture::new(self.inner.call(req), deadline, Deadline::Overall, timeout)
    }
}
