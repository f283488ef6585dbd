//! An echo backend for demos, tests and benchmarks: it answers every
//! request with its name in `x-backend` and a JSON body
//! `{"backend", "caller", "method", "path", "headers"}` (`caller`: the
//! verified SPIFFE ID of an mTLS caller), can fail a share of requests
//! with 503 and delay every answer, and counts what it served. It runs
//! behind [`proxyless_hyper::serve`] on a real socket.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let mesh = proxyless_core::Mesh::empty();
//! let v1 = mesh::echo::Echo::new("v1").fail_rate(0.1).start(&mesh, "127.0.0.1:0").await?;
//! println!("v1 listens on {}", v1.addr());
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use proxyless_core::Mesh;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// An echo backend, to be started.
#[derive(Debug, Clone)]
pub struct Echo {
    name: String,
    fail_rate: f64,
    delay: Duration,
    service: Option<String>,
    limits: Option<proxyless_hyper::ServerLimits>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    fail_rate_bits: AtomicU64,
    delay_ms: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
}

impl Echo {
    /// A backend answering as `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            fail_rate: 0.0,
            delay: Duration::ZERO,
            service: None,
            limits: None,
        }
    }

    /// Serves as mesh service `service`: its inbound policy (mTLS mode,
    /// authorization) applies. Default: the mesh's [`service`](proxyless_core::Mesh::service).
    #[must_use]
    pub fn service(mut self, service: &str) -> Self {
        self.service = Some(service.to_owned());
        self
    }

    /// Answers this share of requests (0.0 to 1.0) with 503.
    #[must_use]
    pub fn fail_rate(mut self, rate: f64) -> Self {
        self.fail_rate = rate;
        self
    }

    /// Delays every answer.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Serves with these limits instead of the environment's.
    #[must_use]
    pub fn limits(mut self, limits: proxyless_hyper::ServerLimits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Binds `addr` and serves until the handle is stopped or dropped.
    pub async fn start(
        self,
        mesh: &Mesh,
        addr: impl tokio::net::ToSocketAddrs,
    ) -> std::io::Result<EchoHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: self.name,
            fail_rate_bits: AtomicU64::new(self.fail_rate.to_bits()),
            delay_ms: AtomicU64::new(self.delay.as_millis() as u64),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let svc = {
            let shared = shared.clone();
            tower::service_fn(move |req: Request<Incoming>| answer(shared.clone(), req))
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut server = proxyless_hyper::Server::new(mesh);
        if let Some(s) = &self.service {
            server = server.service(s);
        }
        if let Some(l) = self.limits {
            server = server.limits(l);
        }
        let stats = server.stats().clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = server.serve_with_shutdown(listener, svc, shutdown).await {
                tracing::warn!("echo server stopped: {e}");
            }
        });
        Ok(EchoHandle {
            addr,
            stats,
            shared,
            stop: Some(stop),
            task,
        })
    }
}

async fn answer(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = shared.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail =
        rand::random::<f64>() < f64::from_bits(shared.fail_rate_bits.load(Ordering::Relaxed));
    let headers: BTreeMap<&str, &str> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let caller = req
        .extensions()
        .get::<proxyless_tower::ext::PeerIdentity>()
        .and_then(|p| p.0.as_ref())
        .map(|id| id.to_string());
    let body = serde_json::json!({
        "backend": shared.name,
        "caller": caller,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        "x-backend",
        http::HeaderValue::from_str(&shared.name).unwrap_or(http::HeaderValue::from_static("?")),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if fail {
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        shared.failed.fetch_add(1, Ordering::Relaxed);
    }
    shared.served.fetch_add(1, Ordering::Relaxed);
    Ok(resp)
}

/// A running echo backend.
#[derive(Debug)]
pub struct EchoHandle {
    addr: SocketAddr,
    stats: Arc<proxyless_hyper::ServerStats>,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl EchoHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters (authorization denials, refused handshakes).
    pub fn server_stats(&self) -> &proxyless_hyper::ServerStats {
        &self.stats
    }

    /// Requests answered so far (failed ones included).
    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Requests answered with 503 so far.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Changes the share of requests answered with 503.
    pub fn set_fail_rate(&self, rate: f64) {
        self.shared
            .fail_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Changes the delay of every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Stops accepting, lets open requests finish, and waits for the server
    /// to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for EchoHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Echo servers on loopback for hedging: `slow`, answering after `delay`,
/// then `fast` ones (`fast0`, `fast1`, ...) answering at once.
pub async fn one_slow(fast: usize, delay: Duration) -> std::io::Result<Vec<EchoHandle>> {
    let quiet = Mesh::empty();
    let mut servers = vec![
        Echo::new("slow")
            .delay(delay)
            .start(&quiet, "127.0.0.1:0")
            .await?,
    ];
    for i in 0..fast {
        servers.push(
            Echo::new(format!("fast{i}"))
                .start(&quiet, "127.0.0.1:0")
                .await?,
        );
    }
    Ok(servers)
}
