//! The transport under the mesh layers: pooled hyper connections, HTTP/1.1
//! or HTTP/2 (h2c) as the backend's `protocol` says, with a connect timeout.
//!
//! Connections are pooled per transport key: the endpoint's address (the
//! URI authority, which the backend layer has pointed at the endpoint),
//! the protocol, and for mutual-TLS backends the [`UpstreamTls`] the routed
//! backend carries (the SPIFFE IDs its endpoints may present, the SNI). A
//! connection made under one key is never used for another; when a config
//! change stops naming a key, its pool is dropped: idle connections close,
//! requests in flight finish on theirs.
//!
//! Its errors are typed for the layers above: a failed connect is
//! [`ConnectFailed`], a connection closed or reset before the response is
//! [`ConnectionReset`].

use crate::tls::MeshConnector;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;
use proxyless_core::Mesh;
use proxyless_core::snapshot::{Snapshot, UpstreamTls};
use proxyless_tower::BoxError;
use proxyless_tower::body::MeshBody;
use proxyless_tower::error::{ConnectFailed, ConnectionReset};
use std::collections::{HashMap, HashSet};
use std::error::Error as _;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tower_service::Service;

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Pool = Client<MeshConnector, MeshBody>;

/// The HTTP transport.
#[derive(Clone, Debug)]
pub struct Transport {
    // Behind one Arc: the layers above clone their inner service per
    // request, and the pools are a lot of fields to copy.
    clients: Arc<Clients>,
}

#[derive(Debug)]
struct Clients {
    mesh: Mesh,
    connector: HttpConnector,
    h1: Pool,
    h2: Pool,
    tls: RwLock<TlsPools>,
}

/// The mutual-TLS pools, one per (upstream TLS, HTTP/2).
#[derive(Debug, Default)]
struct TlsPools {
    /// The snapshot version the pools were last pruned against.
    version: u64,
    pools: HashMap<(Arc<UpstreamTls>, bool), Pool>,
}

impl Transport {
    /// A transport for `mesh`: its connect timeout, and its identity for
    /// mutual TLS.
    pub fn new(mesh: &Mesh) -> Self {
        let connect_timeout = mesh.snapshot().config().defaults.connect_timeout;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let pool = |tls, h2| pool(mesh, &connector, tls, h2);
        Self {
            clients: Arc::new(Clients {
                h1: pool(None, false),
                h2: pool(None, true),
                tls: RwLock::new(TlsPools::default()),
                mesh: mesh.clone(),
                connector,
            }),
        }
    }
}

fn pool(mesh: &Mesh, connector: &HttpConnector, tls: Option<Arc<UpstreamTls>>, h2: bool) -> Pool {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(POOL_IDLE_TIMEOUT);
    if h2 {
        builder.http2_only(true);
    }
    builder.build(MeshConnector::new(mesh.clone(), connector.clone(), tls, h2))
}

impl Clients {
    /// Sends `req` on the pool for `tls` (its routed backend's, from `snap`).
    fn tls_request(
        &self,
        snap: &Snapshot,
        tls: &Arc<UpstreamTls>,
        h2: bool,
        req: Request<MeshBody>,
    ) -> ResponseFuture {
        let key = (tls.clone(), h2);
        {
            let pools = self.tls.read().unwrap_or_else(PoisonError::into_inner);
            if pools.version >= snap.version()
                && let Some(p) = pools.pools.get(&key)
            {
                return p.request(req);
            }
        }
        let mut pools = self.tls.write().unwrap_or_else(PoisonError::into_inner);
        if snap.version() > pools.version {
            // A newer config: drop the pools of keys it no longer names.
            let named: HashSet<&UpstreamTls> = snap
                .backends()
                .iter()
                .filter_map(|b| b.upstream_tls().map(|t| &**t))
                .collect();
            pools.pools.retain(|(t, _), _| named.contains(&**t));
            pools.version = snap.version();
        }
        if let Some(p) = pools.pools.get(&key) {
            return p.request(req);
        }
        let p = pool(&self.mesh, &self.connector, Some(tls.clone()), h2);
        let fut = p.request(req);
        // A request routed on an older snapshot gets a pool of its own that
        // is not kept: its key may be one the current config dropped.
        if snap.version() >= pools.version {
            pools.pools.insert(key, p);
        }
        fut
    }
}

impl Service<Request<MeshBody>> for Transport {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = TransportFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<MeshBody>) -> Self::Future {
        let routed = proxyless_tower::ext::routed(&req);
        let backend = routed.and_then(|r| r.backend_entry());
        // gRPC (and any request made as HTTP/2) goes over HTTP/2 whatever
        // the backend says.
        let h2 = backend.is_some_and(|(_, b)| b.config().protocol.is_http2())
            || req.version() == http::Version::HTTP_2;
        let tls = routed.zip(backend.and_then(|(_, b)| b.upstream_tls()));
        let fut = match (tls, h2) {
            (Some((r, tls)), h2) => {
                let snap = r.snapshot().clone();
                self.clients.tls_request(&snap, &tls.clone(), h2, req)
            }
            (None, true) => self.clients.h2.request(req),
            (None, false) => self.clients.h1.request(req),
        };
        TransportFuture { inner: fut }
    }
}

pin_project_lite::pin_project! {
    /// The transport's future: hyper's, its errors typed for the retry and
    /// outlier logic.
    pub struct TransportFuture {
        #[pin]
        inner: ResponseFuture,
    }
}

impl std::fmt::Debug for TransportFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportFuture").finish_non_exhaustive()
    }
}

impl std::future::Future for TransportFuture {
    type Output = Result<Response<Incoming>, BoxError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(classify)
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
