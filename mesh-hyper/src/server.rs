//! The server side: [`Server`] runs a service behind the inbound layers on
//! every connection a listener accepts, HTTP/1.1 and HTTP/2 on one port.
//!
//! Per connection, the inbound policy of this workload's service
//! (`MESH_SERVICE`) in the current config sets the mTLS mode:
//!
//! - `strict`: TLS with a verified client certificate, or the connection is
//!   closed;
//! - `permissive`: TLS (with a verified client certificate) and plaintext on
//!   the same port, told apart by the first byte, as Istio does;
//! - `disabled`: plaintext.
//!
//! Without a policy, a workload with an identity is permissive and one
//! without is plaintext.
//!
//! Per request, the path is normalized first ([`proxyless_core::path`]): a
//! refused path gets 400 and `x-mesh-error: invalid_path`, and the policy
//! and the application see the normal form. Then the caller's verified
//! SPIFFE ID goes into the request's
//! extensions ([`PeerIdentity`]); the policy's rules authorize it (a denied
//! request gets 403, `x-mesh-error: unauthorized` and the reason in
//! `x-mesh-authz-reason`, and never reaches the service); and a caller's
//! deadline (`x-mesh-timeout-ms`) bounds the handler (504 past it), and is
//! put in the extensions ([`RequestDeadline`]) for calls the handler makes.

use crate::accept::{AcceptError, Acceptor, RateLimited};
use crate::limits::ServerLimits;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use proxyless_core::Mesh;
use proxyless_tower::BoxError;
use proxyless_tower::ext::ConnectionInfo;
use proxyless_tower::inbound::{InboundLayer, InboundStats, WithConnection};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tower::Layer;
use tower_service::Service;

/// Counters of what the server refused and served.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// The inbound layers' counters (requests, denials).
    pub inbound: Arc<InboundStats>,
    /// Connections whose TLS handshake failed (no, untrusted or expired
    /// certificate, ...).
    pub handshake_failures: AtomicU64,
    /// Plaintext connections refused by strict mTLS.
    pub plaintext_refused: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicU64,
    /// Connections closed because no first byte came within the handshake
    /// timeout.
    pub first_byte_timeouts: AtomicU64,
    /// Connections closed for being idle.
    pub idle_closed: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
}

/// A meshed server.
#[derive(Clone, Debug)]
pub struct Server {
    mesh: Mesh,
    service: Option<Arc<str>>,
    stats: Arc<ServerStats>,
    metrics: Arc<ConnectionMetrics>,
    limits: Arc<ServerLimits>,
    inbound: InboundLayer,
}

/// Metric handles of one server's connections, each resolved on first use
/// once a recorder is installed.
#[derive(Debug)]
struct ConnectionMetrics {
    service: String,
    handshake_failures: std::sync::OnceLock<metrics::Counter>,
    plaintext_refused: std::sync::OnceLock<metrics::Counter>,
}

impl ConnectionMetrics {
    fn new(service: Option<&str>) -> Self {
        Self {
            service: service.unwrap_or("").to_owned(),
            handshake_failures: std::sync::OnceLock::new(),
            plaintext_refused: std::sync::OnceLock::new(),
        }
    }

    fn count(&self, slot: &std::sync::OnceLock<metrics::Counter>, name: &'static str) {
        let make = || metrics::counter!(name, "service" => self.service.clone());
        if let Some(c) = proxyless_tower::telemetry::metrics::lazy_handle(slot, make) {
            c.increment(1);
        }
    }

    fn handshake_failed(&self) {
        let name = proxyless_tower::telemetry::metrics::HANDSHAKE_FAILURES;
        self.count(&self.handshake_failures, name);
    }

    fn plaintext_refused(&self) {
        let name = proxyless_tower::telemetry::metrics::PLAINTEXT_REFUSED;
        self.count(&self.plaintext_refused, name);
    }
}

/// Serves `service` on `listener` until an accept error.
pub async fn serve<S, RB>(mesh: &Mesh, listener: TcpListener, service: S) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    Server::new(mesh).serve(listener, service).await
}

/// Serves `service` on `listener` until `shutdown` completes; then stops
/// accepting and lets open connections finish their requests.
pub async fn serve_with_shutdown<S, RB, F>(
    mesh: &Mesh,
    listener: TcpListener,
    service: S,
    shutdown: F,
) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
    F: Future<Output = ()>,
{
    Server::new(mesh)
        .serve_with_shutdown(listener, service, shutdown)
        .await
}

impl Server {
    /// A server following `mesh`'s inbound policy for its
    /// [`service`](Mesh::service) (`MESH_SERVICE` when the mesh came from
    /// the environment), with
    /// the limits of [`ServerLimits::from_env`] (a variable that cannot be
    /// read is logged by name and its default used).
    pub fn new(mesh: &Mesh) -> Self {
        let limits = ServerLimits::from_env().unwrap_or_else(|e| {
            tracing::error!("{e}; the server's default limits apply");
            ServerLimits::default()
        });
        let inbound = InboundLayer::new(mesh);
        Self {
            mesh: mesh.clone(),
            service: mesh.service(),
            stats: Arc::new(ServerStats {
                inbound: inbound.stats().clone(),
                ..ServerStats::default()
            }),
            metrics: Arc::new(ConnectionMetrics::new(mesh.service().as_deref())),
            limits: Arc::new(limits),
            inbound,
        }
    }

    /// Serves with these limits instead.
    #[must_use]
    pub fn limits(mut self, limits: ServerLimits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// Serves as `service` (whose inbound policy applies) instead of the
    /// mesh's.
    #[must_use]
    pub fn service(mut self, service: &str) -> Self {
        self.service = Some(Arc::from(service));
        self.metrics = Arc::new(ConnectionMetrics::new(Some(service)));
        self.inbound = self.inbound.service(service);
        self
    }

    /// Its counters.
    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// Serves until an accept error.
    pub async fn serve<S, RB>(&self, listener: TcpListener, service: S) -> std::io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        RB: HttpBody<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
    {
        self.serve_with_shutdown(listener, service, std::future::pending())
            .await
    }

    /// Serves until `shutdown` completes, then drains open connections.
    pub async fn serve_with_shutdown<S, RB, F>(
        &self,
        listener: TcpListener,
        service: S,
        shutdown: F,
    ) -> std::io::Result<()>
    where
        S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        RB: HttpBody<Data = Bytes> + Send + 'static,
        RB::Error: Into<BoxError>,
        F: Future<Output = ()>,
    {
        // Every connection holds a permit until it ends. At the cap a new
        // connection is closed at once (counted, and said at most once a
        // second), so descriptors stay bounded, the connections held are
        // served, and a refused client fails fast and can go elsewhere (as
        // Envoy's connection limit does). At shutdown, taking every permit
        // waits for the drain.
        let cap = self
            .limits
            .max_connections
            .clamp(1, u32::MAX as usize)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        let permits = Arc::new(tokio::sync::Semaphore::new(cap));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let mut accept_errors = RateLimited::default();
        let mut over_cap = RateLimited::default();
        tracing::debug!(
            service = self.service.as_deref().unwrap_or("-"),
            addr = ?listener.local_addr().ok(),
            "serving"
        );
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    // Running out of descriptors or a connection reset during
                    // the handshake must not end the server; said at most
                    // once a second.
                    Err(e) if is_transient(&e) => {
                        accept_errors.warn(format_args!("accept failed: {e}"));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
                () = &mut shutdown => break,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                self.stats
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                over_cap.warn(format_args!(
                    "{cap} connections open (the server's max_connections): a new one from {peer} is closed"
                ));
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            let open = OpenConnection::new(&self.stats);
            let connection = Connection {
                server: self.clone(),
                service: service.clone(),
            };
            let stopping = stopping.clone();
            tokio::spawn(async move {
                // Held to the end, even if the connection's task unwinds.
                let _held = (permit, open);
                if let Err(e) = connection.run(stream, stopping).await {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
            });
        }
        let _ = stop.send(true);
        let _ = permits.acquire_many(cap as u32).await;
        Ok(())
    }

    /// The acceptor of this server's connections.
    fn acceptor(&self) -> Acceptor {
        let acceptor = Acceptor::new(&self.mesh).handshake_timeout(self.limits.handshake_timeout);
        match self.service.as_deref() {
            Some(s) => acceptor.service(s),
            None => acceptor,
        }
    }

    /// The inbound layers this server puts in front of the application.
    pub fn inbound_layer(&self) -> &InboundLayer {
        &self.inbound
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 23 || c == 24)
}

struct Connection<S> {
    server: Server,
    service: S,
}

impl<S, RB> Connection<S>
where
    S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    async fn run(
        self,
        stream: TcpStream,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), BoxError> {
        let stats = self.server.stats.clone();
        let metrics = &self.server.metrics;
        let (stream, info) = match self.server.acceptor().accept(stream).await {
            Ok(accepted) => accepted,
            Err(e) => {
                match &e {
                    AcceptError::FirstByteTimeout(_) => {
                        stats.first_byte_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    AcceptError::PlaintextRefused => {
                        stats.plaintext_refused.fetch_add(1, Ordering::Relaxed);
                        metrics.plaintext_refused();
                    }
                    AcceptError::NoIdentity(_)
                    | AcceptError::Handshake(_)
                    | AcceptError::HandshakeTimeout(_) => {
                        stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                        metrics.handshake_failed();
                    }
                    _ => {}
                }
                return Err(e.into());
            }
        };
        self.serve_io(TokioIo::new(stream), info, stopping).await
    }

    async fn serve_io<I>(
        self,
        io: I,
        info: ConnectionInfo,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), BoxError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let limits = self.server.limits.clone();
        let stats = self.server.stats.clone();
        let activity = Arc::new(Activity::new());
        let inbound = Tracking {
            #[cfg(feature = "axum")]
            remote: info.remote,
            inner: WithConnection::new(self.server.inbound.layer(self.service), info),
            activity: activity.clone(),
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // hyper refuses (panics on) a read buffer under 8 KiB.
            .max_buf_size((limits.max_header_bytes as usize).max(8192))
            .max_headers(limits.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes)
            .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(limits.max_local_error_reset_streams);
        let io = Tracked {
            inner: io,
            activity: activity.clone(),
        };
        let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(inbound));
        tokio::pin!(conn);
        let mut closing = *stopping.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            let idle_at = activity.idle_deadline(limits.idle_timeout);
            tokio::select! {
                done = conn.as_mut() => return done,
                _ = stopping.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = tokio::time::sleep_until(idle_at), if !closing => {
                    if activity.is_idle(limits.idle_timeout) {
                        closing = true;
                        stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// Counts a connection open until dropped.
struct OpenConnection(Arc<ServerStats>);

impl OpenConnection {
    fn new(stats: &Arc<ServerStats>) -> Self {
        stats.open_connections.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection last moved a byte, and how many of its requests are
/// in progress: it is idle when neither has happened for the idle timeout.
#[derive(Debug)]
struct Activity {
    epoch: tokio::time::Instant,
    /// Milliseconds since `epoch` of the last byte either way.
    last: AtomicU64,
    in_progress: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
            last: AtomicU64::new(0),
            in_progress: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle_deadline(&self, idle: Duration) -> tokio::time::Instant {
        let last = self.epoch + Duration::from_millis(self.last.load(Ordering::Relaxed));
        last.checked_add(idle)
            .unwrap_or_else(|| proxyless_tower::ext::deadline_after(idle))
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.in_progress.load(Ordering::Relaxed) == 0
            && tokio::time::Instant::now() >= self.idle_deadline(idle)
    }
}

/// Marks a request in progress on its connection until dropped.
struct InProgress(Arc<Activity>);

impl InProgress {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_progress.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection's I/O that notes when bytes move.
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Tracked<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_ready() {
            this.activity.touch();
        }
        polled
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Tracked<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if polled.is_ready() {
            this.activity.touch();
        }
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            this.activity.touch();
        }
        polled
    }
}

/// Marks each request in progress on its connection (for the idle
/// timeout), and, with feature `axum`, gives it axum's `ConnectInfo`.
#[derive(Clone, Debug)]
struct Tracking<S> {
    inner: S,
    activity: Arc<Activity>,
    #[cfg(feature = "axum")]
    remote: Option<std::net::SocketAddr>,
}

impl<S, B> Service<Request<B>> for Tracking<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[cfg_attr(not(feature = "axum"), allow(unused_mut))]
    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        #[cfg(feature = "axum")]
        if let Some(remote) = self.remote {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(remote));
        }
        let in_progress = InProgress::new(&self.activity);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let _in_progress = in_progress;
            fut.await
        })
    }
}

/// The `grpc-timeout` header (`100m`, `2S`, ...), as gRPC defines it
/// (see [`proxyless_tower::grpc::parse_timeout`]).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    proxyless_tower::grpc::parse_timeout(headers)
}
