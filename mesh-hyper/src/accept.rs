//! mTLS termination as an acceptor a user can put under any server: per
//! connection, this workload's inbound policy (its `mtls` mode) in the
//! current config decides, as Istio does:
//!
//! - `strict`: TLS with a verified client certificate, or the connection is
//!   refused;
//! - `permissive`: TLS (with a verified client certificate) and plaintext on
//!   the same port, told apart by the first byte;
//! - `disabled`: plaintext.
//!
//! Without a policy, a workload with an identity is permissive and one
//! without is plaintext. Every mode waits for the first byte at most the
//! handshake timeout (a connection that sends none is refused), and the
//! TLS handshake is bounded by it too.
//!
//! What it returns is a stream (plaintext or TLS) and the
//! [`ConnectionInfo`] the inbound layers and the application read: put it
//! into each request with [`WithConnection`](proxyless_tower::inbound::WithConnection),
//! or let `proxyless_hyper::serve`, `proxyless_hyper::axum::MeshListener` (feature `axum`) or
//! `proxyless_tonic::incoming` do it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use proxyless_hyper::accept::Acceptor;
//! let mesh = proxyless_core::Mesh::from_env()?;
//! let acceptor = Acceptor::new(&mesh);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
//! let (tcp, _) = listener.accept().await?;
//! let (stream, info) = acceptor.accept(tcp).await?;
//! println!("caller {:?} over {}", info.peer, if info.tls { "mTLS" } else { "plaintext" });
//! # drop(stream); Ok(()) }
//! ```

use proxyless_core::Mesh;
use proxyless_core::config::MtlsMode;
use proxyless_core::identity::tls::Identity;
use proxyless_tower::ext::ConnectionInfo;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// No first byte came within the handshake timeout.
    #[error("no first byte within {0:?}")]
    FirstByteTimeout(Duration),
    /// A plaintext connection under strict mTLS.
    #[error("plaintext connection refused: strict mTLS")]
    PlaintextRefused,
    /// A TLS connection, but the identity the listener names is missing.
    #[error("TLS connection, but {0}")]
    NoIdentity(proxyless_core::identity::tls::IdentityUnavailable),
    /// The TLS handshake failed (no, untrusted or expired certificate, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The TLS handshake did not finish within the handshake timeout.
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The connection failed before anything was decided.
    #[error("connection failed: {0}")]
    Io(std::io::Error),
}

/// The mesh's mTLS acceptor for one service (see the module docs).
#[derive(Debug, Clone)]
pub struct Acceptor {
    mesh: Mesh,
    service: Option<Arc<str>>,
    handshake_timeout: Duration,
}

impl Acceptor {
    /// For `mesh`'s [service](Mesh::service), with a handshake timeout of
    /// 10 s (the server's default).
    pub fn new(mesh: &Mesh) -> Self {
        Self {
            mesh: mesh.clone(),
            service: mesh.service(),
            handshake_timeout: crate::ServerLimits::default().handshake_timeout,
        }
    }

    /// For mesh service `service` instead.
    #[must_use]
    pub fn service(mut self, service: &str) -> Self {
        self.service = Some(Arc::from(service));
        self
    }

    /// Bounds the wait for the first byte and the TLS handshake.
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The mTLS mode for a new connection, from the current config.
    pub fn mode(&self) -> MtlsMode {
        let snap = self.mesh.snapshot();
        let policy = self.service.as_deref().and_then(|s| snap.inbound(s));
        match policy {
            Some(p) => p.mtls,
            None if self.mesh.identity().is_some() => MtlsMode::Permissive,
            None => MtlsMode::Disabled,
        }
    }

    /// The identity this listener presents and verifies callers with: the
    /// sources its inbound policy names, else the workload's.
    fn identity(&self) -> Result<Identity, AcceptError> {
        let snap = self.mesh.snapshot();
        let policy = self.service.as_deref().and_then(|s| snap.inbound(s));
        let (certificate, trust) = policy.map_or((None, None), |p| {
            (p.certificate.as_deref(), p.trust.as_deref())
        });
        self.mesh
            .identity_for(certificate, trust)
            .map_err(AcceptError::NoIdentity)
    }

    /// Accepts `stream` as the mode says.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(MeshStream, ConnectionInfo), AcceptError> {
        let remote = stream.peer_addr().ok();
        let local = stream.local_addr().ok();
        let mode = self.mode();
        let starts_tls = starts_with_tls(&stream, self.handshake_timeout).await?;
        let tls = match mode {
            MtlsMode::Disabled => false,
            MtlsMode::Strict if !starts_tls => return Err(AcceptError::PlaintextRefused),
            _ => starts_tls,
        };
        if !tls {
            let info = ConnectionInfo::plaintext(remote, local);
            return Ok((MeshStream::Plain(stream), info));
        }
        let identity = self.identity()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config(true));
        let tls = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await
        {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(AcceptError::Handshake(e)),
            Err(_) => return Err(AcceptError::HandshakeTimeout(self.handshake_timeout)),
        };
        let chain = tls.get_ref().1.peer_certificates();
        let peer = proxyless_core::identity::tls::peer_spiffe_id(chain);
        let guard = crate::tls::TrustGuard::new(&identity, chain);
        let info = ConnectionInfo::tls(remote, local, peer);
        Ok((MeshStream::Tls(Box::new(tls), guard), info))
    }
}

/// Whether the client's first byte opens a TLS handshake record (0x16).
async fn starts_with_tls(stream: &TcpStream, wait: Duration) -> Result<bool, AcceptError> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(wait, stream.peek(&mut first))
        .await
        .map_err(|_| AcceptError::FirstByteTimeout(wait))?
        .map_err(AcceptError::Io)?;
    Ok(n == 1 && first[0] == 0x16)
}

/// An accepted connection: plaintext, or TLS over TCP.
#[derive(Debug)]
pub enum MeshStream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS, the caller verified (if it showed a certificate); closed when
    /// the caller's CA leaves the trust bundles.
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        crate::tls::TrustGuard,
    ),
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s, guard) => match guard.poll_revoked(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Pin::new(s.as_mut()).poll_read(cx, buf),
            },
        }
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s, guard) => match guard.poll_revoked(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Pin::new(s.as_mut()).poll_write(cx, buf),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s, guard) => match guard.poll_revoked(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// How many connections [`Incoming`] lets be in their first byte or TLS
/// handshake at once; past it new connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 1024;

/// A listener's connections, accepted by an [`Acceptor`] concurrently (at
/// most [`MAX_HANDSHAKES`] handshakes at once) by a task that runs until
/// this is dropped; a refused connection is closed and logged at DEBUG.
#[derive(Debug)]
pub struct Incoming {
    local: std::net::SocketAddr,
    accepted: tokio::sync::mpsc::Receiver<(MeshStream, ConnectionInfo)>,
}

impl Incoming {
    /// Starts accepting `listener`'s connections. Needs a tokio runtime.
    pub fn new(listener: tokio::net::TcpListener, acceptor: Acceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        tokio::spawn(accept_loop(listener, Arc::new(acceptor), tx));
        Ok(Self { local, accepted })
    }

    /// The next accepted connection (`None` only if the accept task ended).
    pub async fn accept(&mut self) -> Option<(MeshStream, ConnectionInfo)> {
        self.accepted.recv().await
    }

    /// [`Incoming::accept`] as a poll.
    pub fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<(MeshStream, ConnectionInfo)>> {
        self.accepted.poll_recv(cx)
    }

    /// The address listened on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.local
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: Arc<Acceptor>,
    tx: tokio::sync::mpsc::Sender<(MeshStream, ConnectionInfo)>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let mut accept_errors = RateLimited::default();
    loop {
        let permit = tokio::select! {
            p = handshakes.clone().acquire_owned() => p,
            () = tx.closed() => return,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = tx.closed() => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors or a reset during the handshake: said
                // at most once a second, and the loop goes on.
                accept_errors.warn(format_args!("accept failed: {e}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor.accept(tcp).await {
                Ok(accepted) => {
                    let _ = tx.send(accepted).await;
                }
                Err(e) => tracing::debug!(%remote, "connection refused: {e}"),
            }
        });
    }
}

/// A warning said at most once a second, with how many were held back.
#[derive(Debug, Default)]
pub(crate) struct RateLimited {
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl RateLimited {
    pub(crate) fn warn(&mut self, what: std::fmt::Arguments<'_>) {
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
