//! TLS on the client side: a connector that speaks plaintext to `http://`
//! endpoints and mutual TLS to `https://` ones (the backend layer marks
//! mutual-TLS backends that way), presenting this workload's SVID and
//! accepting only the SPIFFE ID the snapshot expects of that endpoint.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use mesh_core::Mesh;
use mesh_tower::BoxError;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower_service::Service;

use tokio_rustls::rustls;

/// Why a mutual-TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConnectError {
    /// No backend in the current config expects an identity of this endpoint.
    #[error("no mutual-TLS backend names endpoint `{0}` (https outside the mesh is not supported)")]
    UnknownEndpoint(String),
    /// A backend wants mutual TLS, but this workload has no identity.
    #[error(
        "endpoint `{0}` needs mutual TLS, but this workload has no identity (set MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_CA)"
    )]
    NoIdentity(String),
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

/// The connector under the transport.
#[derive(Clone, Debug)]
pub struct MeshConnector {
    http: HttpConnector,
    mesh: Mesh,
    h2: bool,
}

impl MeshConnector {
    /// A connector for `mesh`; `h2` offers HTTP/2 by ALPN on TLS.
    pub fn new(mesh: Mesh, http: HttpConnector, h2: bool) -> Self {
        let mut http = http;
        http.enforce_http(false);
        Self { http, mesh, h2 }
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
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let connect = self.http.call(uri.clone());
        if !https {
            return Box::pin(async move { Ok(MaybeTls::Plain(connect.await?)) });
        }
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let expected = self.mesh.snapshot().endpoint_identity(&authority).cloned();
        let identity = self.mesh.identity();
        let h2 = self.h2;
        Box::pin(async move {
            let expected =
                expected.ok_or_else(|| TlsConnectError::UnknownEndpoint(authority.clone()))?;
            let identity =
                identity.ok_or_else(|| TlsConnectError::NoIdentity(authority.clone()))?;
            let config = identity.client_config(&expected, h2);
            let tcp = connect.await?.into_inner();
            let host = uri
                .host()
                .unwrap_or("mesh.invalid")
                .trim_start_matches('[')
                .trim_end_matches(']');
            // The name only feeds SNI (and is skipped for IP addresses): the
            // verifier checks the SPIFFE ID, not the name.
            let name = ServerName::try_from(host.to_owned())
                .or_else(|_| ServerName::try_from("mesh.invalid".to_owned()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| TlsConnectError::Handshake {
                    endpoint: authority.clone(),
                    source,
                })?;
            Ok(MaybeTls::Tls(Box::new(TokioIo::new(tls))))
        })
    }
}

/// A client connection: plaintext or TLS.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TokioIo<TcpStream>),
    /// TLS over TCP.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        match self {
            MaybeTls::Plain(s) => s.connected(),
            MaybeTls::Tls(s) => {
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
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
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
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
}
