//! The transport under the mesh layers: pooled hyper connections, one pool
//! per endpoint (hyper-util's pool is keyed by the URI's authority, which
//! the backend layer has pointed at the endpoint), HTTP/1.1 or HTTP/2 (h2c)
//! as the backend's `protocol` says, with a connect timeout.
//!
//! Its errors are typed for the layers above: a failed connect is
//! [`ConnectFailed`], a connection closed or reset before the response is
//! [`ConnectionReset`].

use crate::tls::MeshConnector;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_core::Mesh;
use mesh_core::config::Protocol;
use mesh_tower::body::MeshBody;
use mesh_tower::error::{ConnectFailed, ConnectionReset};
use mesh_tower::ext::Routed;
use mesh_tower::{BoxError, BoxFuture};
use std::error::Error as _;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// The HTTP transport.
#[derive(Clone, Debug)]
pub struct Transport {
    // Behind one Arc: the layers above clone their inner service per
    // request, and two hyper clients are a lot of fields to copy.
    clients: Arc<Clients>,
}

#[derive(Debug)]
struct Clients {
    h1: Client<MeshConnector, MeshBody>,
    h2: Client<MeshConnector, MeshBody>,
}

impl Transport {
    /// A transport for `mesh`: its connect timeout, and its identity for
    /// mutual TLS.
    pub fn new(mesh: &Mesh) -> Self {
        let connect_timeout = mesh.snapshot().config().defaults.connect_timeout;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(MeshConnector::new(mesh.clone(), connector.clone(), false));
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(MeshConnector::new(mesh.clone(), connector, true));
        Self {
            clients: Arc::new(Clients { h1, h2 }),
        }
    }
}

impl Service<Request<MeshBody>> for Transport {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Incoming>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<MeshBody>) -> Self::Future {
        let protocol = req
            .extensions()
            .get::<Routed>()
            .and_then(|r| Some(r.backend_entry()?.1.config().protocol));
        // gRPC (and any request made as HTTP/2) goes over HTTP/2 whatever
        // the backend says.
        let h2 = protocol == Some(Protocol::Http2) || req.version() == http::Version::HTTP_2;
        let fut = if h2 {
            self.clients.h2.request(req)
        } else {
            self.clients.h1.request(req)
        };
        Box::pin(async move { fut.await.map_err(classify) })
    }
}

/// Types hyper's errors for the retry and outlier logic.
fn classify(e: hyper_util::client::legacy::Error) -> BoxError {
    if e.is_connect() {
        return ConnectFailed {
            endpoint: None,
            source: Box::new(e),
        }
        .into();
    }
    let reset = std::iter::successors(e.source(), |s| (*s).source()).any(|s| {
        s.downcast_ref::<hyper::Error>()
            .is_some_and(|h| h.is_incomplete_message() || h.is_canceled() || h.is_closed())
            || s.downcast_ref::<std::io::Error>().is_some_and(|io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                )
            })
    });
    if reset {
        return ConnectionReset {
            endpoint: None,
            source: Box::new(e),
        }
        .into();
    }
    Box::new(e)
}
