//! # mesh-tower
//!
//! The mesh's data path as tower layers, generic over `http::Request<B>`.
//! [`MeshLayer`] composes them in this order:
//!
//! ```text
//! app -> Route    one snapshot; route match; weighted backend; deadline; body
//!     -> Telemetry metrics, the OpenTelemetry client span (context out by the propagator), access log
//!     -> Limit    the route's local rate limit (a refusal is never retried)
//!     -> Fault    injected delay / abort
//!     -> Timeout  the request's deadline
//!     -> Mirror   a share copied to a shadow backend, fire and forget
//!     -> Retry    budgeted, per-try timeout, backoff with jitter; or hedging
//!     -> Backend  breaker admission, load-balanced endpoint, outlier detection
//!     -> your HTTP client (mesh-hyper's, or any Service<Request<MeshBody>>)
//! ```
//!
//! The server side is [`inbound::InboundLayer`]: refusals as responses,
//! the server span and metrics, path normalization, authorization and the
//! caller's deadline, for any server.
//!
//! A route with no rate limit, fault or mirror skips those three layers
//! (they would only pass its request on): [`outbound::Outbound`] starts the
//! telemetry, bounds the request by its deadline and hands it to the retry
//! layer in one call.
//!
//! Each layer also works alone. Decisions come from `mesh-core` (pure
//! functions and state machines); this crate supplies the clock, the
//! randomness and the plumbing. Layers tell each other what they decided
//! through request extensions ([`ext`]).
//!
//! Every refusal is a typed error ([`error`]): [`NoRoute`](error::NoRoute),
//! [`CircuitOpen`](error::CircuitOpen),
//! [`NoHealthyEndpoint`](error::NoHealthyEndpoint),
//! [`Elapsed`](error::Elapsed), [`RateLimited`](error::RateLimited),
//! [`RetryBudgetExhausted`](error::RetryBudgetExhausted); find one in a
//! chain with [`ErrorKind::of`](error::ErrorKind::of).
//!
//! ## Example
//!
//! ```
//! use proxyless_core::{Mesh, config::Config};
//! use proxyless_tower::{MeshLayer, body::MeshBody};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), proxyless_tower::BoxError> {
//! let mesh = Mesh::from_config(Config::from_yaml(r#"
//! services: [{ name: reviews, routes: [{ to: [reviews-v1] }] }]
//! backends: [{ name: reviews-v1, endpoints: ["127.0.0.1:9001"] }]
//! "#)?)?;
//!
//! // Any client that sends Request<MeshBody>; here one that echoes the URI.
//! let client = tower::service_fn(|req: http::Request<MeshBody>| async move {
//!     Ok::<_, proxyless_tower::BoxError>(http::Response::new(req.uri().to_string()))
//! });
//! let svc = MeshLayer::new(mesh).layer(client);
//! let resp = svc.oneshot(http::Request::get("http://reviews/ratings/1").body(String::new())?).await?;
//! assert_eq!(resp.into_body().into_upstream(), Some("http://127.0.0.1:9001/ratings/1".to_owned()));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod backend;
pub mod body;
mod classify;
pub mod error;
pub mod ext;
pub mod fault;
pub mod future;
pub mod grpc;
mod head;
mod hedge;
pub mod inbound;
pub mod limit;
pub mod mirror;
pub mod outbound;
pub mod path;
pub mod response;
pub mod retry;
pub mod route;
pub mod runtime;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timeout;

use body::MeshBody;
use http::{Request, Response};
use proxyless_core::Mesh;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tower_layer::Layer;

/// The error type of every mesh service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The future type of the layers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The composed outbound data path over the inner client `S`, in the
/// documented order. Accepts `Request<B>` for any body `B` of `Bytes`.
///
/// A concrete type, not a boxed one: a request through it allocates no
/// futures of its own on the common path (no body to buffer, one attempt).
pub type MeshService<S> = route::Route<outbound::Outbound<backend::Backend<S>>>;

/// The whole outbound data path in one layer, in the documented order.
#[derive(Debug, Clone)]
pub struct MeshLayer {
    mesh: Mesh,
    runtime: Arc<runtime::Runtime>,
}

impl MeshLayer {
    /// The data path driven by `mesh`'s live config.
    pub fn new(mesh: Mesh) -> Self {
        Self {
            mesh,
            runtime: Arc::new(runtime::Runtime::new()),
        }
    }

    /// Every response carries [`ext::Served`] (the backend and endpoint
    /// that answered, and the attempts it took). Off by default: the first
    /// extension of a response costs three allocations, and the mesh's
    /// own layers ask for it only when they read it.
    ///
    /// ```
    /// # use tower::Layer;
    /// let layer = proxyless_tower::MeshLayer::new(proxyless_core::Mesh::empty()).with_served();
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn with_served(self) -> Self {
        self.runtime.set_served_extension(true);
        self
    }

    /// The runtime state (breakers, endpoints, counters) behind this layer.
    pub fn runtime(&self) -> &Arc<runtime::Runtime> {
        &self.runtime
    }

    /// The mesh it follows.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }
}

impl<S, RB> Layer<S> for MeshLayer
where
    S: tower_service::Service<Request<MeshBody>, Response = Response<RB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Service = MeshService<S>;

    fn layer(&self, inner: S) -> MeshService<S> {
        let rt = &self.runtime;
        let timeout = timeout::TimeoutLayer::default();
        let default = timeout.default_timeout();
        let stack = fault::FaultLayer.layer(
            timeout.layer(
                mirror::MirrorLayer::new(rt.clone()).layer(
                    retry::RetryLayer::new(rt.clone())
                        .layer(backend::BackendLayer::new(rt.clone()).layer(inner)),
                ),
            ),
        );
        let stack = limit::LimitLayer::new(rt.clone()).layer(stack);
        let stack = outbound::Outbound::new(stack, rt.clone(), default);
        route::RouteLayer::new(self.mesh.clone()).layer(stack)
    }
}
