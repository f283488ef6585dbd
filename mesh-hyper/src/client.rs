//! [`Client`]: the whole outbound data path over the hyper transport, in
//! one line from a [`Mesh`].

use crate::error::error_response;
use crate::transport::Transport;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use proxyless_core::Mesh;
use proxyless_tower::body::ResponseBody;
use proxyless_tower::runtime::Runtime;
use proxyless_tower::{BoxError, MeshLayer, MeshService};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

/// The body of a response through the mesh: the upstream's, or one the
/// mesh made (an injected abort, or a refusal when
/// [`Client::refusals_as_responses`] is on).
pub type Body = ResponseBody<Incoming>;

/// An HTTP client with the mesh's routing, timeouts, retries, breakers and
/// load balancing.
///
/// ```no_run
/// # async fn run() -> Result<(), proxyless_tower::BoxError> {
/// let mesh = proxyless_core::Mesh::from_env()?;
/// let client = proxyless_hyper::Client::new(&mesh);
/// let resp = client.get("http://reviews/ratings/1").await?;
/// println!("{}", resp.status());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    svc: MeshService<Transport>,
    layer: MeshLayer,
    refusals_as_responses: bool,
}

impl Client {
    /// A client following `mesh`'s live config.
    pub fn new(mesh: &Mesh) -> Self {
        let layer = MeshLayer::new(mesh.clone());
        Self {
            svc: layer.layer(Transport::new(mesh)),
            layer,
            refusals_as_responses: false,
        }
    }

    /// Answer mesh refusals and failures with a response (404/503/504 and
    /// an `x-mesh-error` header) instead of an error.
    #[must_use]
    pub fn refusals_as_responses(mut self) -> Self {
        self.refusals_as_responses = true;
        self
    }

    /// Every response carries `proxyless_tower::ext::Served` (the backend
    /// and endpoint that answered); see `MeshLayer::with_served`.
    #[must_use]
    pub fn with_served(self) -> Self {
        self.layer.runtime().set_served_extension(true);
        self
    }

    /// The runtime state behind the client (counters, breakers, endpoints).
    pub fn runtime(&self) -> &Arc<Runtime> {
        self.layer.runtime()
    }

    /// Sends a request.
    pub async fn request<B>(&self, req: Request<B>) -> Result<Response<Body>, BoxError>
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.clone().oneshot(req).await
    }

    /// Sends `GET uri`.
    pub async fn get(&self, uri: &str) -> Result<Response<Body>, BoxError> {
        let req = Request::get(uri).body(http_body_util::Empty::<Bytes>::new())?;
        self.request(req).await
    }
}

impl<B> Service<Request<B>> for Client
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::<Request<B>>::poll_ready(&mut self.svc, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ResponseFuture {
            inner: self.svc.call(req),
            refusals_as_responses: self.refusals_as_responses,
        }
    }
}

/// The future of the mesh stack under [`Client`] (the same for every
/// request body type).
type StackFuture =
    <MeshService<Transport> as Service<Request<http_body_util::Empty<Bytes>>>>::Future;

pin_project_lite::pin_project! {
    /// The future of a [`Client`] request.
    pub struct ResponseFuture {
        #[pin]
        inner: StackFuture,
        refusals_as_responses: bool,
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl std::future::Future for ResponseFuture {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match std::task::ready!(this.inner.poll(cx)) {
            Err(e) if *this.refusals_as_responses => Poll::Ready(Ok(error_response(&*e))),
            other => Poll::Ready(other),
        }
    }
}
