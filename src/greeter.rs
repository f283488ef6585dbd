//! The Greeter gRPC service of the examples and tests (`proto/greeter.proto`):
//! replies carry the server's name (also as `x-backend` metadata), the
//! deadline budget it saw, and its caller's SPIFFE ID; it can fail a share of
//! calls with a chosen status.

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("mesh.demo.v1");
}

pub use generated::greeter_client::GreeterClient;
pub use generated::greeter_server::{Greeter as GreeterService, GreeterServer};
pub use generated::{HelloReply, HelloRequest};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::{Request, Response, Status};

/// A Greeter that answers as `name`.
#[derive(Debug, Clone)]
pub struct Greeter {
    name: Arc<str>,
    fail_rate: f64,
    fail_code: tonic::Code,
    served: Arc<AtomicU64>,
}

impl Greeter {
    /// A greeter named `name` that never fails.
    pub fn new(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            fail_rate: 0.0,
            fail_code: tonic::Code::Unavailable,
            served: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Fails this share of calls with `code`.
    #[must_use]
    pub fn failing(mut self, rate: f64, code: tonic::Code) -> Self {
        self.fail_rate = rate;
        self.fail_code = code;
        self
    }

    /// Calls answered (failed ones included).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// The tonic service.
    pub fn into_server(self) -> GreeterServer<Self> {
        GreeterServer::new(self)
    }

    fn reply<T>(&self, req: &Request<T>, message: String) -> HelloReply {
        let deadline_ms = req
            .extensions()
            .get::<proxyless_tower::ext::RequestDeadline>()
            .map_or(0, |d| {
                d.0.saturating_duration_since(tokio::time::Instant::now())
                    .as_millis() as u64
            });
        let caller = req
            .extensions()
            .get::<proxyless_tower::ext::PeerIdentity>()
            .and_then(|p| p.0.as_ref())
            .map(|id| id.to_string())
            .unwrap_or_default();
        HelloReply {
            message,
            server: self.name.to_string(),
            deadline_ms,
            caller,
        }
    }

    fn check(&self) -> Result<(), Status> {
        self.served.fetch_add(1, Ordering::Relaxed);
        if rand::random::<f64>() < self.fail_rate {
            return Err(Status::new(
                self.fail_code,
                format!("injected by {}", self.name),
            ));
        }
        Ok(())
    }

    fn tag<T>(&self, mut resp: Response<T>) -> Response<T> {
        if let Ok(v) = self.name.parse() {
            resp.metadata_mut().insert("x-backend", v);
        }
        resp
    }
}

type ReplyStream = Pin<Box<dyn futures_core::Stream<Item = Result<HelloReply, Status>> + Send>>;

#[tonic::async_trait]
impl GreeterService for Greeter {
    async fn say_hello(&self, req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        self.check()?;
        let reply = self.reply(&req, format!("hello {}", req.get_ref().name));
        Ok(self.tag(Response::new(reply)))
    }

    type SayHelloStreamStream = ReplyStream;

    async fn say_hello_stream(
        &self,
        req: Request<HelloRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.check()?;
        let n = match req.get_ref().count {
            0 => 3,
            n => n,
        };
        let replies: Vec<Result<HelloReply, Status>> = (0..n)
            .map(|i| Ok(self.reply(&req, format!("hello {} #{i}", req.get_ref().name))))
            .collect();
        let stream: ReplyStream = Box::pin(tokio_stream::iter(replies));
        Ok(self.tag(Response::new(stream)))
    }
}
