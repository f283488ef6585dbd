//! axum behind the mesh (feature `axum`): [`MeshListener`] terminates mTLS
//! per the inbound policy for `axum::serve`, and [`layer`] puts the inbound
//! layers (authorization, deadline, telemetry, path normalization) in
//! front of the whole router, with the connection's facts where both the
//! layers and axum's extractors find them: [`ConnectionInfo`],
//! [`PeerIdentity`], and axum's `ConnectInfo<SocketAddr>` and
//! `ConnectInfo<MeshPeer>`.
//!
//! Wrap the router from outside (`layer(..).layer(router)`), not with
//! `Router::layer`: axum runs `Router::layer` middleware after routing, so
//! the route would be chosen on the path before normalization.
//!
//! ```no_run
//! use axum::{Router, extract::ConnectInfo, routing::get};
//! use axum::ServiceExt as _;
//! use proxyless_hyper::axum::{MeshListener, MeshPeer};
//! use tower::Layer as _;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = proxyless_core::Mesh::from_env()?;            // MESH_SERVICE=reviews, MESH_TLS_*
//! let router = Router::new().route(
//!     "/ratings/{id}",
//!     get(|ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>| async move { format!("hello {addr}") }),
//! );
//! let app = proxyless_hyper::axum::layer(&mesh).layer(router);
//! let listener = MeshListener::bind(&mesh, "127.0.0.1:8443").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<MeshPeer>()).await?;
//! # Ok(()) }
//! ```

use crate::accept::{Acceptor, Incoming, MeshStream};
use axum::extract::ConnectInfo;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use http::Request;
use proxyless_core::Mesh;
use proxyless_tower::body::ResponseBody;
use proxyless_tower::ext::{ConnectionInfo, PeerIdentity};
use proxyless_tower::inbound::{Inbound, InboundLayer};
use std::convert::Infallible;
use std::task::{Context, Poll};
use tokio::net::{TcpListener, ToSocketAddrs};
use tower_service::Service;

/// The connection facts of a request served through [`MeshListener`], as
/// axum's connect info (`ConnectInfo<MeshPeer>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshPeer(pub ConnectionInfo);

impl Connected<IncomingStream<'_, MeshListener>> for MeshPeer {
    fn connect_info(stream: IncomingStream<'_, MeshListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TCP listener whose connections are accepted by the mesh's
/// [`Acceptor`], concurrently ([`Incoming`]): a slow or silent client
/// holds up no one.
#[derive(Debug)]
pub struct MeshListener {
    incoming: Incoming,
}

impl MeshListener {
    /// Binds `addr` and accepts per `mesh`'s inbound policy for its
    /// [service](Mesh::service). Needs a tokio runtime.
    pub async fn bind(mesh: &Mesh, addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Self::new(listener, Acceptor::new(mesh))
    }

    /// Accepts `listener`'s connections with `acceptor`. Needs a tokio
    /// runtime: the accept loop runs as a task until this is dropped.
    pub fn new(listener: TcpListener, acceptor: Acceptor) -> std::io::Result<Self> {
        Ok(Self {
            incoming: Incoming::new(listener, acceptor)?,
        })
    }
}

impl Listener for MeshListener {
    type Io = MeshStream;
    type Addr = MeshPeer;

    async fn accept(&mut self) -> (MeshStream, MeshPeer) {
        match self.incoming.accept().await {
            Some((stream, info)) => (stream, MeshPeer(info)),
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<MeshPeer> {
        let local = self.incoming.local_addr();
        Ok(MeshPeer(ConnectionInfo::plaintext(None, Some(local))))
    }
}

/// The inbound layers for axum: [`InboundLayer`] for `mesh`'s service,
/// with the connection's facts taken from axum's `ConnectInfo<MeshPeer>`
/// and the response in axum's body type (what `axum::serve` takes).
pub fn layer(mesh: &Mesh) -> AxumLayer {
    AxumLayer {
        inbound: InboundLayer::new(mesh),
    }
}

/// The layer [`layer`] returns.
#[derive(Debug, Clone)]
pub struct AxumLayer {
    inbound: InboundLayer,
}

impl AxumLayer {
    /// For mesh service `service` instead of the mesh's.
    #[must_use]
    pub fn service(self, service: &str) -> Self {
        Self {
            inbound: self.inbound.service(service),
        }
    }
}

impl<S> tower::Layer<S> for AxumLayer {
    type Service = AxumInbound<S>;
    fn layer(&self, inner: S) -> AxumInbound<S> {
        AxumInbound {
            inner: self.inbound.layer(inner),
        }
    }
}

/// The service [`AxumLayer`] makes.
#[derive(Debug, Clone)]
pub struct AxumInbound<S> {
    inner: Inbound<S>,
}

/// axum's request type only (what `axum::serve` gives), so that
/// `into_make_service_with_connect_info` needs no annotation.
impl<S, RB> Service<axum::extract::Request> for AxumInbound<S>
where
    Inbound<S>: Service<
            axum::extract::Request,
            Response = http::Response<ResponseBody<RB>>,
            Error = Infallible,
        >,
    <Inbound<S> as Service<axum::extract::Request>>::Future: Send + 'static,
    RB: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    RB::Error: Into<proxyless_tower::BoxError>,
{
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<axum::response::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::extract::Request) -> Self::Future {
        from_connect_info(&mut req);
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map(|resp| resp.map(axum::body::Body::new)) })
    }
}

/// Copies axum's `ConnectInfo<MeshPeer>` (from [`MeshListener`]) into the
/// extensions the inbound layers read ([`ConnectionInfo`],
/// [`PeerIdentity`]) and axum's `ConnectInfo<SocketAddr>`.
fn from_connect_info<B>(req: &mut Request<B>) {
    if let Some(ConnectInfo(MeshPeer(info))) =
        req.extensions().get::<ConnectInfo<MeshPeer>>().cloned()
    {
        let ext = req.extensions_mut();
        if let Some(remote) = info.remote {
            ext.insert(ConnectInfo(remote));
        }
        ext.insert(PeerIdentity(info.peer.clone()));
        ext.insert(info);
    }
}
