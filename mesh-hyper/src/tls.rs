//! TLS on the client side: a connector that speaks plaintext to `http://`
//! endpoints and mutual TLS to `https://` ones (the backend layer marks
//! mutual-TLS backends that way), presenting this workload's SVID.
//!
//! A connector serves one transport key: plaintext, or mutual TLS with one
//! [`UpstreamTls`] (the SPIFFE IDs the server may present, and the SNI).
//! The transport keeps a pool per key, so the identity a connection was
//! verified for travels with the routed backend, never looked up by the
//! endpoint's address, and a connection verified for one backend is never
//! reused for another that expects someone else at the same address.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use proxyless_core::Mesh;
use proxyless_core::identity::tls::Identity;
use proxyless_core::snapshot::UpstreamTls;
use proxyless_tower::BoxError;
use rustls::pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use tokio_rustls::rustls;

/// Why a mutual-TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConnectError {
    /// An `https` request that no mutual-TLS backend routed.
    #[error("no mutual-TLS backend names endpoint `{0}` (https outside the mesh is not supported)")]
    UnknownEndpoint(String),
    /// A backend wants mutual TLS, but the identity it names is missing.
    #[error("endpoint `{endpoint}` needs mutual TLS, but {reason}")]
    NoIdentity {
        /// The endpoint.
        endpoint: String,
        /// Which identity is missing.
        reason: proxyless_core::identity::tls::IdentityUnavailable,
    },
    /// The backend's config names no valid identity to verify.
    #[error("endpoint `{0}`: its backend names no valid SPIFFE ID to verify; refused")]
    NoExpectedIdentity(String),
    /// The handshake failed (the server's identity included).
    #[error("TLS handshake with `{endpoint}` failed: {source}")]
    Handshake {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The connector under one of the transport's pools.
#[derive(Clone, Debug)]
pub struct MeshConnector {
    http: HttpConnector,
    mesh: Mesh,
    tls: Option<Arc<UpstreamTls>>,
    h2: bool,
}

impl MeshConnector {
    /// A connector for `mesh` that speaks plaintext (`tls: None`) or mutual
    /// TLS verifying what `tls` names; `h2` offers HTTP/2 by ALPN on TLS.
    pub fn new(mesh: Mesh, http: HttpConnector, tls: Option<Arc<UpstreamTls>>, h2: bool) -> Self {
        let mut http = http;
        http.enforce_http(false);
        Self {
            http,
            mesh,
            tls,
            h2,
        }
    }
}

impl Service<http::Uri> for MeshConnector {
    type Response = MaybeTls;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MaybeTls, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let host = uri
            .host()
            .unwrap_or("mesh.invalid")
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        // A name a DNS backend follows: the mesh's last answer (the first
        // connection to it waits for the first lookup).
        #[cfg(feature = "dns")]
        if let Some(lookup) = self.mesh.lookup(&host) {
            let mut this = self.clone();
            return Box::pin(async move {
                let addresses = lookup.await?;
                let first = addresses
                    .first()
                    .ok_or_else(|| TlsConnectError::UnknownEndpoint(host.clone()))?;
                let port = uri.port_u16().unwrap_or(80);
                let mut parts = uri.into_parts();
                parts.authority = Some(
                    std::net::SocketAddr::new(*first, port)
                        .to_string()
                        .parse()
                        .map_err(|_| TlsConnectError::UnknownEndpoint(host.clone()))?,
                );
                let uri = http::Uri::from_parts(parts)
                    .map_err(|_| TlsConnectError::UnknownEndpoint(host.clone()))?;
                this.connect(uri, host).await
            });
        }
        self.connect(uri, host)
    }
}

impl MeshConnector {
    /// Connects to `uri`; `host` is the name it was addressed by (for SNI
    /// when the backend sets none).
    fn connect(
        &mut self,
        uri: http::Uri,
        host: String,
    ) -> Pin<Box<dyn Future<Output = Result<MaybeTls, BoxError>> + Send>> {
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let authority = || {
            uri.authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default()
        };
        let tls = match (https, &self.tls) {
            (false, None) => {
                let connect = self.http.call(uri);
                return Box::pin(async move { Ok(MaybeTls::Plain(connect.await?)) });
            }
            (true, Some(tls)) => tls.clone(),
            // A TLS pool never connects in plaintext, and a plaintext pool
            // never originates TLS: the key decides, not the URI alone.
            _ => {
                let e = TlsConnectError::UnknownEndpoint(authority());
                return Box::pin(std::future::ready(Err(e.into())));
            }
        };
        let authority = authority();
        let identity = self
            .mesh
            .identity_for(tls.certificate.as_deref(), tls.trust.as_deref());
        let h2 = self.h2;
        let connect = self.http.call(uri.clone());
        Box::pin(async move {
            let expected = tls
                .identities
                .as_ref()
                .ok_or_else(|| TlsConnectError::NoExpectedIdentity(authority.clone()))?;
            let identity = identity.map_err(|reason| TlsConnectError::NoIdentity {
                endpoint: authority.clone(),
                reason,
            })?;
            let config = identity.client_config(expected, h2);
            let tcp = connect.await?.into_inner();
            // The name only feeds SNI (and is not sent for IP addresses):
            // the verifier checks the SPIFFE ID, not the name.
            let name = tls.sni.as_deref().unwrap_or(&host);
            let name = ServerName::try_from(name.to_owned())
                .or_else(|_| ServerName::try_from("mesh.invalid".to_owned()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| TlsConnectError::Handshake {
                    endpoint: authority.clone(),
                    source,
                })?;
            let guard = TrustGuard::new(&identity, tls.get_ref().1.peer_certificates());
            Ok(MaybeTls::Tls(Box::new(TokioIo::new(tls)), guard))
        })
    }
}

/// A client connection: plaintext or TLS.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TokioIo<TcpStream>),
    /// TLS over TCP, closed when its server's CA leaves the trust bundles.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>, TrustGuard),
}

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        match self {
            MaybeTls::Plain(s) => s.connected(),
            MaybeTls::Tls(s, _) => {
                let (tcp, conn) = s.inner().get_ref();
                let connected = tcp.connected();
                if conn.alpn_protocol() == Some(b"h2") {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}

impl Read for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s, guard) => match guard.poll_revoked(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Pin::new(&mut **s).poll_read(cx, buf),
            },
        }
    }
}

impl Write for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s, guard) => match guard.poll_revoked(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Pin::new(&mut **s).poll_write(cx, buf),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s, _) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s, _) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s, guard) => match guard.poll_revoked(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// Closes a mutual-TLS connection once its peer's certificate no longer
/// verifies against this workload's trust bundles: a bundle change that
/// removes the CA that vouched for the peer ends the connections it
/// verified (their next read or write fails with `ConnectionAborted`, and
/// an idle one is woken to fail), while connections whose CA stays are
/// untouched. SVID rotations re-check nothing but the peer's chain.
pub struct TrustGuard {
    revoked: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    fired: bool,
}

impl std::fmt::Debug for TrustGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustGuard")
            .field("watching", &self.revoked.is_some())
            .field("fired", &self.fired)
            .finish()
    }
}

impl TrustGuard {
    /// A guard of a connection whose peer presented `chain` (leaf first),
    /// verified by `identity`; none when the peer presented nothing.
    pub fn new(identity: &Identity, chain: Option<&[CertificateDer<'_>]>) -> Self {
        let Some(chain) = chain.filter(|c| !c.is_empty()) else {
            return Self::none();
        };
        let chain: Vec<CertificateDer<'static>> =
            chain.iter().map(|c| c.clone().into_owned()).collect();
        let identity = identity.clone();
        let mut changes = identity.changes();
        let revoked = async move {
            loop {
                if !changes.changed().await {
                    // The identity is gone: nothing can change any more.
                    std::future::pending::<()>().await;
                }
                if !identity.still_trusts(&chain) {
                    let peer = proxyless_core::identity::tls::peer_spiffe_id(Some(&chain));
                    tracing::info!(
                        peer = ?peer.map(|p| p.to_string()),
                        "closing a connection: its peer no longer verifies against the trust bundles"
                    );
                    return;
                }
            }
        };
        Self {
            revoked: Some(Box::pin(revoked)),
            fired: false,
        }
    }

    /// A guard that never fires.
    pub fn none() -> Self {
        Self {
            revoked: None,
            fired: false,
        }
    }

    /// `Ready(error)` once the peer is no longer trusted; registers the
    /// task to be woken when that happens.
    pub fn poll_revoked(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.fired {
            let Some(revoked) = self.revoked.as_mut() else {
                return Poll::Pending;
            };
            if revoked.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.fired = true;
            self.revoked = None;
        }
        Poll::Ready(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the peer's certificate no longer verifies against the trust bundles",
        ))
    }
}
