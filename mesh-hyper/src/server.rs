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

use crate::limits::ServerLimits;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use proxyless_core::Mesh;
use proxyless_core::config::MtlsMode;
use proxyless_core::identity::SpiffeId;
use proxyless_core::identity::authz::{Verdict, authorize};
use proxyless_tower::body::ResponseBody;
use proxyless_tower::error::{Deadline, Elapsed, ErrorKind, Unauthorized};
use proxyless_tower::ext::{AUTHZ_REASON_HEADER, DEADLINE_HEADER, PeerIdentity, RequestDeadline};
use proxyless_tower::path::{PathAction, normalize_request};
use proxyless_tower::telemetry::metrics::RouteMetrics;
use proxyless_tower::telemetry::trace::{self, FinishedSpan, SpanKind, TraceContext};
use proxyless_tower::{BoxError, BoxFuture};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

/// Counters of what the server refused and served.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests that reached the inbound layers.
    pub requests: AtomicU64,
    /// Requests authorization denied.
    pub denied: AtomicU64,
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
    metrics: Arc<InboundMetrics>,
    limits: Arc<ServerLimits>,
}

/// Metric handles of one server, each resolved on first use once a
/// recorder is installed.
#[derive(Debug)]
struct InboundMetrics {
    service: String,
    requests: RouteMetrics,
    denied: std::sync::OnceLock<metrics::Counter>,
    handshake_failures: std::sync::OnceLock<metrics::Counter>,
    plaintext_refused: std::sync::OnceLock<metrics::Counter>,
}

impl InboundMetrics {
    fn new(service: Option<&str>) -> Self {
        let s = service.unwrap_or("").to_owned();
        Self {
            requests: RouteMetrics::new(
                "inbound",
                Arc::from(s.as_str()),
                Arc::from(""),
                Arc::from(""),
            ),
            service: s,
            denied: std::sync::OnceLock::new(),
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

    fn denied(&self) {
        self.count(
            &self.denied,
            proxyless_tower::telemetry::metrics::AUTHZ_DENIED,
        );
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
        Self {
            mesh: mesh.clone(),
            service: mesh.service(),
            stats: Arc::new(ServerStats::default()),
            metrics: Arc::new(InboundMetrics::new(mesh.service().as_deref())),
            limits: Arc::new(limits),
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
        self.metrics = Arc::new(InboundMetrics::new(Some(service)));
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

    /// The mTLS mode for new connections, from the current config.
    fn mode(&self) -> MtlsMode {
        let snap = self.mesh.snapshot();
        let policy = self.service.as_deref().and_then(|s| snap.inbound(s));
        match policy {
            Some(p) => p.mtls,
            None if self.mesh.identity().is_some() => MtlsMode::Permissive,
            None => MtlsMode::Disabled,
        }
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
        let limits = self.server.limits.clone();
        let mode = self.server.mode();
        // Every mode waits for the first byte within the handshake timeout:
        // a connection that never sends one is closed, whatever comes next
        // (hyper-util's protocol detection would wait for it forever).
        let starts_tls = match starts_with_tls(&stream, limits.handshake_timeout).await {
            Ok(t) => t,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    stats.first_byte_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                return Err(e.into());
            }
        };
        let tls = match mode {
            MtlsMode::Disabled => false,
            MtlsMode::Strict => {
                if !starts_tls {
                    stats.plaintext_refused.fetch_add(1, Ordering::Relaxed);
                    self.server.metrics.plaintext_refused();
                    return Err("plaintext connection refused: strict mTLS".into());
                }
                true
            }
            _ => starts_tls,
        };
        if !tls {
            return self.serve_io(TokioIo::new(stream), None, stopping).await;
        }
        let Some(identity) = self.server.mesh.identity() else {
            stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
            self.server.metrics.handshake_failed();
            return Err("TLS connection, but this workload has no identity to present".into());
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config(true));
        let tls =
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    self.server.metrics.handshake_failed();
                    return Err(format!("TLS handshake failed: {e}").into());
                }
                Err(_) => {
                    stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    self.server.metrics.handshake_failed();
                    return Err("TLS handshake timed out".into());
                }
            };
        let peer =
            proxyless_core::identity::tls::peer_spiffe_id(tls.get_ref().1.peer_certificates());
        self.serve_io(TokioIo::new(tls), peer, stopping).await
    }

    async fn serve_io<I>(
        self,
        io: I,
        peer: Option<SpiffeId>,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), BoxError>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let limits = self.server.limits.clone();
        let stats = self.server.stats.clone();
        let activity = Arc::new(Activity::new());
        let inbound = Inbound {
            inner: self.service,
            server: self.server,
            peer: PeerIdentity(peer),
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

/// A warning said at most once a second, with how many were held back.
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl RateLimited {
    fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|l| now.saturating_duration_since(l) < Duration::from_secs(1))
        {
            self.held_back = self.held_back.saturating_add(1);
            return;
        }
        tracing::warn!("{what} ({} more since the last report)", self.held_back);
        self.last = Some(now);
        self.held_back = 0;
    }
}

/// Whether the client's first byte opens a TLS handshake record (0x16);
/// `TimedOut` if none comes within `wait`.
async fn starts_with_tls(stream: &TcpStream, wait: Duration) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(wait, stream.peek(&mut first))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no first byte"))??;
    Ok(n == 1 && first[0] == 0x16)
}

/// The inbound layers in front of the application's service.
#[derive(Clone, Debug)]
struct Inbound<S> {
    inner: S,
    server: Server,
    peer: PeerIdentity,
    activity: Arc<Activity>,
}

impl<S, RB> Service<Request<Incoming>> for Inbound<S>
where
    S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let stats = &self.server.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let snap = self.server.mesh.snapshot();
        // Authorization judges the normalized path, and the application is
        // given that same path: what was authorized is what is served.
        match normalize_request(&mut req, &snap.config().defaults.path_normalization) {
            Ok(PathAction::Continue) => {}
            Ok(PathAction::Redirect(to)) => {
                return Box::pin(std::future::ready(Ok(redirect(&to))));
            }
            Err(e) => {
                self.server
                    .metrics
                    .requests
                    .record(Err(ErrorKind::InvalidPath), 0.0);
                tracing::debug!(path = req.uri().path(), "request refused: {e}");
                let resp = if crate::error::is_grpc(req.headers()) {
                    crate::error::grpc_error_response(&e)
                } else {
                    crate::error::error_response(&e)
                };
                return Box::pin(std::future::ready(Ok(resp)));
            }
        }
        if let Some(policy) = self.server.service.as_deref().and_then(|s| snap.inbound(s)) {
            let caller = self.peer.0.as_ref();
            if let Verdict::Deny(reason) =
                authorize(policy, caller, req.method().as_str(), req.uri().path())
            {
                stats.denied.fetch_add(1, Ordering::Relaxed);
                self.server.metrics.denied();
                self.server
                    .metrics
                    .requests
                    .record(Err(ErrorKind::Unauthorized), 0.0);
                tracing::debug!(caller = ?caller.map(|c| c.as_str()), method = %req.method(), path = req.uri().path(), "request denied: {reason}");
                let refusal = Unauthorized {
                    reason: reason.clone(),
                };
                let mut resp = if crate::error::is_grpc(req.headers()) {
                    crate::error::grpc_error_response(&refusal)
                } else {
                    crate::error::error_response(&refusal)
                };
                if let Ok(v) = HeaderValue::from_str(&reason) {
                    resp.headers_mut().insert(AUTHZ_REASON_HEADER, v);
                }

                return Box::pin(std::future::ready(Ok(resp)));
            }
        }
        req.extensions_mut().insert(self.peer.clone());
        let parent = TraceContext::extract(req.headers());
        let ctx = parent
            .as_ref()
            .map_or_else(TraceContext::new_root, TraceContext::child);
        req.extensions_mut().insert(ctx.clone());
        let log = AccessInfo {
            wanted: tracing::enabled!(target: "mesh::access", tracing::Level::DEBUG)
                || (ctx.sampled() && trace::has_sink()),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            caller: self.peer.0.clone(),
            service: self.server.service.clone(),
            parent_span_id: parent.map(|p| p.span_id),
            start_wall: std::time::SystemTime::now(),
            started: std::time::Instant::now(),
        };
        let metrics = self.server.metrics.clone();
        let grpc = crate::error::is_grpc(req.headers());
        let budget = req
            .headers()
            .get(DEADLINE_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(Duration::from_millis)
            .into_iter()
            .chain(grpc_timeout(req.headers()))
            .min();
        if let Some(b) = budget {
            req.extensions_mut()
                .insert(RequestDeadline(proxyless_tower::ext::deadline_after(b)));
        }
        let mut svc = self.inner.clone();
        let in_progress = InProgress::new(&self.activity);
        Box::pin(async move {
            let _in_progress = in_progress;
            let work = async {
                std::future::poll_fn(|cx| svc.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                svc.call(req).await.map_err(Into::into)
            };
            let span = if log.wanted {
                tracing::debug_span!(
                    "mesh.server",
                    otel.kind = "server",
                    http.request.method = %log.method,
                    url.path = %log.path,
                    trace_id = %ctx.trace_id_hex(),
                )
            } else {
                tracing::Span::none()
            };
            let work = tracing::Instrument::instrument(trace::scope(ctx.clone(), work), span);
            let result: Result<Response<RB>, BoxError> = match budget {
                Some(b) => match tokio::time::timeout(b, work).await {
                    Ok(r) => r,
                    Err(_) => Err(Elapsed {
                        deadline: Deadline::Overall,
                        timeout: b,
                    }
                    .into()),
                },
                None => work.await,
            };
            let outcome = match &result {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) => Err(ErrorKind::of(&**e)),
            };
            let elapsed = log.started.elapsed();
            metrics.requests.record(outcome, elapsed.as_secs_f64());
            log.finish(&ctx, outcome, elapsed);
            Ok(match result {
                Ok(resp) => resp.map(ResponseBody::upstream),
                Err(e) if grpc => crate::error::grpc_error_response(&*e),
                Err(e) => {
                    tracing::debug!("inbound request failed: {e}");
                    crate::error::error_response(&*e)
                }
            })
        })
    }
}

/// A 307 to `to` (a normalized path and query).
fn redirect<B>(to: &str) -> Response<ResponseBody<B>> {
    let mut resp = Response::new(ResponseBody::local(bytes::Bytes::new()));
    *resp.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

/// What the access log and the server span need of a request.
struct AccessInfo {
    wanted: bool,
    method: http::Method,
    path: String,
    caller: Option<SpiffeId>,
    service: Option<Arc<str>>,
    parent_span_id: Option<u64>,
    start_wall: std::time::SystemTime,
    started: std::time::Instant,
}

impl AccessInfo {
    fn finish(&self, ctx: &TraceContext, outcome: Result<u16, ErrorKind>, elapsed: Duration) {
        if !self.wanted {
            return;
        }
        let status = outcome.ok();
        let error = outcome.err().map(ErrorKind::as_str);
        tracing::debug!(
            target: "mesh::access",
            direction = "inbound",
            method = %self.method,
            path = %self.path,
            status = status.unwrap_or(0),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            service = self.service.as_deref().unwrap_or(""),
            caller = self.caller.as_ref().map_or("", |c| c.as_str()),
            error = error.unwrap_or(""),
            trace_id = %ctx.trace_id_hex(),
        );
        if !ctx.sampled() || !trace::has_sink() {
            return;
        }
        let mut attributes = vec![
            ("http.request.method", self.method.to_string()),
            ("url.path", self.path.clone()),
        ];
        if let Some(s) = status {
            attributes.push(("http.response.status_code", s.to_string()));
        }
        if let Some(e) = error {
            attributes.push(("error.type", e.to_owned()));
        }
        if let Some(c) = &self.caller {
            attributes.push(("mesh.caller", c.to_string()));
        }
        trace::record(FinishedSpan {
            name: format!(
                "{} {}",
                self.method,
                self.service.as_deref().unwrap_or("server")
            ),
            kind: SpanKind::Server,
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: self.parent_span_id,
            start: self.start_wall,
            end: self.start_wall + elapsed,
            attributes,
            error: error.is_some() || status.is_some_and(|s| s >= 500),
        });
    }
}

/// The `grpc-timeout` header (`100m`, `2S`, ...), as gRPC defines it
/// (see [`proxyless_tower::grpc::parse_timeout`]).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    proxyless_tower::grpc::parse_timeout(headers)
}
