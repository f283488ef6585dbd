//! The mirror layer: a share of a route's requests is also sent, fire and
//! forget, to a shadow backend (with `-shadow` appended to the host, as
//! Envoy does); its answer, error or lateness never reaches the caller.
//! Only requests whose body is held in memory can be copied.

use crate::BoxError;
use crate::body::MeshBody;
use crate::ext::Mirrored;
use crate::future::MapErr;
use crate::runtime::Runtime;
use http::Request;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use tower::ServiceExt;
use tower_service::Service;

/// The mirror layer.
#[derive(Debug, Clone)]
pub struct MirrorLayer {
    runtime: Arc<Runtime>,
}

impl MirrorLayer {
    /// Counts mirrored requests in `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

impl<S> tower_layer::Layer<S> for MirrorLayer {
    type Service = Mirror<S>;
    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror {
            inner,
            runtime: self.runtime.clone(),
        }
    }
}

/// The mirror service.
#[derive(Debug, Clone)]
pub struct Mirror<S> {
    inner: S,
    runtime: Arc<Runtime>,
}

/// Whether the mirror layer only passes on the requests of `route`: it
/// mirrors none.
pub(crate) fn passes(route: &proxyless_core::snapshot::RouteEntry) -> bool {
    route.mirror().is_none()
}

impl<S> Mirror<S> {
    /// The service below.
    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// A copy of `req` for the mirror backend, if this request is mirrored.
    fn shadow(req: &Request<MeshBody>) -> Option<Request<MeshBody>> {
        if req.extensions().get::<Mirrored>().is_some() {
            return None;
        }
        let routed = crate::ext::routed(req)?;
        let (backend, percent) = routed.route_entry()?.mirror()?;
        if crate::runtime::random::<f64>() * 100.0 >= percent {
            return None;
        }
        let body = req
            .body()
            .replay()?
            .with_routed(routed.with_backend(backend));
        let mut copy = Request::new(body);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        let host = proxyless_core::route::RequestParts::of(req)
            .authority
            .to_owned();
        if let Ok(v) = http::HeaderValue::from_str(&format!("{host}-shadow")) {
            copy.headers_mut().insert(http::header::HOST, v);
        }
        copy.extensions_mut().insert(Mirrored);
        Some(copy)
    }
}

impl<S> Service<Request<MeshBody>> for Mirror<S>
where
    S: Service<Request<MeshBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = MapErr<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<MeshBody>) -> Self::Future {
        if let Some(shadow) = Self::shadow(&req) {
            self.runtime
                .stats()
                .mirrored
                .fetch_add(1, Ordering::Relaxed);
            let deadline = shadow
                .extensions()
                .get::<crate::ext::RequestDeadline>()
                .map(|d| d.0);
            let svc = self.inner.clone();
            tokio::spawn(async move {
                let send = svc.oneshot(shadow);
                let _ = match deadline {
                    Some(d) => tokio::time::timeout_at(d, send).await.ok(),
                    None => Some(send.await),
                };
            });
        }
        MapErr::new(self.inner.call(req))
    }
}
