//! # mesh-tonic
//!
//! gRPC on the mesh. [`channel`] gives any generated tonic client the
//! whole outbound data path (routing by gRPC service and method as path
//! matches, weighted splits, timeouts, retries, breakers, load balancing
//! over HTTP/2 connections, mTLS, telemetry); [`serve`] runs tonic services
//! behind the inbound layers (mTLS, authorization by method path, telemetry,
//! deadlines).
//!
//! gRPC semantics: retry conditions `cancelled`, `deadline-exceeded`,
//! `internal`, `resource-exhausted` and `unavailable` are judged on the
//! `grpc-status` of trailers-only responses (how servers answer failures),
//! so a streaming call is retried only before its first response message; a
//! caller's `grpc-timeout` shortens the route timeout, and the remaining
//! budget goes to the server in `grpc-timeout`; mesh refusals reach the
//! caller as the `Status` it expects: `UNAVAILABLE` (circuit open, no
//! endpoint, connect failure), `DEADLINE_EXCEEDED`, `PERMISSION_DENIED`,
//! `UNIMPLEMENTED` (no route), with the reason in the message and the kind
//! in `x-mesh-error` metadata.
//!
//! ```no_run
//! # mod greeter_client { pub struct GreeterClient<T>(T); impl<T> GreeterClient<T> { pub fn new(t: T) -> Self { Self(t) } } }
//! # use greeter_client::GreeterClient;
//! # fn run() -> Result<(), proxyless_tower::BoxError> {
//! let mesh = proxyless_core::Mesh::from_env()?;
//! let client = GreeterClient::new(proxyless_tonic::channel(&mesh, "greeter"));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

use bytes::Bytes;
use http::{Request, Response};
use proxyless_core::Mesh;
use proxyless_hyper::Client;
use proxyless_tower::ext::RequestDeadline;
use proxyless_tower::{BoxError, BoxFuture};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_service::Service;

/// A channel for tonic clients: requests go to mesh service `service`.
#[derive(Clone, Debug)]
pub struct MeshChannel {
    client: Client,
    /// The service as an authority, or the text that is not one.
    authority: Result<http::uri::Authority, Arc<str>>,
}

/// A channel to mesh service `service` (a host the config's services
/// claim, or, outside the mesh, `host:port` to pass through to).
///
/// A `service` that is not a valid authority makes every call fail with
/// an error naming it (nothing is sent).
pub fn channel(mesh: &Mesh, service: &str) -> MeshChannel {
    MeshChannel::with_client(Client::new(mesh), service)
}

impl MeshChannel {
    /// A channel over an existing mesh client (shared breakers, balancer
    /// state and counters).
    pub fn with_client(client: Client, service: &str) -> Self {
        let authority = service.parse().map_err(|_| Arc::from(service));
        Self { client, authority }
    }

    /// The mesh client underneath.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl<B> Service<Request<B>> for MeshChannel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<proxyless_hyper::Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<proxyless_hyper::Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::<Request<B>>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let authority = match &self.authority {
            Ok(a) => a.clone(),
            Err(bad) => {
                let err = format!("mesh channel: `{bad}` is not a valid service host");
                return Box::pin(std::future::ready(Err(err.into())));
            }
        };
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        match http::Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        }
        // The caller's deadline bounds the route's.
        if let Some(t) = proxyless_hyper::grpc_timeout(req.headers()) {
            req.extensions_mut()
                .insert(RequestDeadline(tokio::time::Instant::now() + t));
        }
        let fut = self.client.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => Ok(resp),
                // The one place mesh refusals become gRPC statuses.
                Err(e) => Ok(proxyless_hyper::error::grpc_error_response(&*e)),
            }
        })
    }
}

/// Serves tonic services (e.g. `Server::builder().add_service(..)` routes,
/// or `tonic::service::Routes::new(svc)`) on `listener` behind the inbound
/// layers of [`proxyless_hyper::Server`]: mTLS per the service's inbound policy,
/// authorization by method path (`/package.Service/Method`), telemetry and
/// deadlines.
pub async fn serve(
    server: proxyless_hyper::Server,
    listener: tokio::net::TcpListener,
    routes: tonic::service::Routes,
) -> std::io::Result<()> {
    server.serve(listener, routes).await
}

/// `listener`'s connections accepted by the mesh's mTLS acceptor, for
/// tonic's own server: `Server::builder().layer(InboundLayer::new(&mesh))
/// .add_service(..).serve_with_incoming(incoming(&mesh, listener)?)`. Each
/// request carries the connection's [`ConnectionInfo`](proxyless_tower::ext::ConnectionInfo)
/// (tonic inserts it), which the inbound layers read the caller from.
/// Needs a tokio runtime.
///
/// ```no_run
/// # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
/// use proxyless_tower::inbound::InboundLayer;
/// let mesh = proxyless_core::Mesh::from_env()?;                 // MESH_SERVICE, MESH_TLS_*
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
/// tonic::transport::Server::builder()
///     .layer(InboundLayer::new(&mesh))
///     .add_routes(routes)
///     .serve_with_incoming(proxyless_tonic::incoming(&mesh, listener)?)
///     .await?;
/// # Ok(()) }
/// ```
pub fn incoming(mesh: &Mesh, listener: tokio::net::TcpListener) -> std::io::Result<Incoming> {
    let acceptor = proxyless_hyper::accept::Acceptor::new(mesh);
    Ok(Incoming(proxyless_hyper::accept::Incoming::new(
        listener, acceptor,
    )?))
}

/// The stream [`incoming`] returns.
#[derive(Debug)]
pub struct Incoming(proxyless_hyper::accept::Incoming);

impl tokio_stream::Stream for Incoming {
    type Item = std::io::Result<Connection>;

    fn poll_next(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .0
            .poll_accept(cx)
            .map(|a| a.map(|(stream, info)| Ok(Connection { stream, info })))
    }
}

/// An accepted connection, as tonic's server takes it.
#[derive(Debug)]
pub struct Connection {
    stream: proxyless_hyper::accept::MeshStream,
    info: proxyless_tower::ext::ConnectionInfo,
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = proxyless_tower::ext::ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl tokio::io::AsyncRead for Connection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Connection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
