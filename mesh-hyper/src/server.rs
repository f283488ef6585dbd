//! The server side: [`serve`] runs a service behind the inbound layers on
//! every connection a listener accepts, HTTP/1.1 and HTTP/2 (h2c) on one
//! port.
//!
//! Inbound, a caller's deadline (`x-mesh-timeout-ms`) is honoured: the
//! handler gets that long, after which the caller gets 504 with
//! `x-mesh-error: timeout` and the handler is dropped. The deadline is also
//! put in the request's extensions ([`RequestDeadline`]), so a meshed call
//! the handler makes downstream inherits what is left of it.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use mesh_core::Mesh;
use mesh_tower::body::ResponseBody;
use mesh_tower::error::{Deadline, Elapsed};
use mesh_tower::ext::{DEADLINE_HEADER, RequestDeadline};
use mesh_tower::{BoxError, BoxFuture};
use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tower_service::Service;

/// Serves `service` on `listener` until an accept error.
pub async fn serve<S, RB>(mesh: &Mesh, listener: TcpListener, service: S) -> std::io::Result<()>
where
    S: Service<Request<Incoming>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: HttpBody<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    serve_with_shutdown(mesh, listener, service, std::future::pending()).await
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
    let inbound = Inbound { inner: service };
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tracing::debug!(service = mesh.service().unwrap_or("-"), addr = ?listener.local_addr().ok(), "serving");
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                // Running out of descriptors or a connection reset during the
                // handshake must not end the server.
                Err(e) if is_transient(&e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = builder.serve_connection_with_upgrades(
            TokioIo::new(stream),
            TowerToHyperService::new(inbound.clone()),
        );
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionAborted | K::ConnectionReset | K::Interrupted | K::WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 23 || c == 24)
}

/// The inbound layers in front of the application's service.
#[derive(Clone, Debug)]
struct Inbound<S> {
    inner: S,
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
        let budget = req
            .headers()
            .get(DEADLINE_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(Duration::from_millis);
        if let Some(b) = budget {
            req.extensions_mut()
                .insert(RequestDeadline(tokio::time::Instant::now() + b));
        }
        let mut svc = self.inner.clone();
        Box::pin(async move {
            let work = async {
                std::future::poll_fn(|cx| svc.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                svc.call(req).await.map_err(Into::into)
            };
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
            Ok(match result {
                Ok(resp) => resp.map(ResponseBody::upstream),
                Err(e) => {
                    tracing::debug!("inbound request failed: {e}");
                    crate::error::error_response(&*e)
                }
            })
        })
    }
}
