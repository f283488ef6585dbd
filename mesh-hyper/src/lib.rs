//! # mesh-hyper
//!
//! The HTTP side of the mesh over hyper 1:
//!
//! - [`Transport`]: pooled connections per endpoint, HTTP/1.1 and HTTP/2
//!   (h2c), connect timeout, typed connect/reset errors;
//! - [`Client`]: the whole outbound data path ([`proxyless_tower::MeshLayer`]
//!   over the transport), in one line from a [`Mesh`](proxyless_core::Mesh);
//! - [`serve`] / [`Server`]: a server running a service behind the mTLS
//!   acceptor and the inbound layers ([`proxyless_tower::inbound`]), with
//!   connection limits and timeouts ([`ServerLimits`]);
//! - [`accept`]: mTLS termination per the inbound policy, for servers the
//!   mesh does not own (hyper-util loops, tonic via `proxyless_tonic::incoming`);
//!   `axum` (feature `axum`): `MeshListener` and the layer for `axum::serve`;
//! - [`error`]: the one mapping of mesh errors to HTTP and gRPC responses;
//! - [`admin`]: the admin server (`/metrics`, `/ready`, `/live`,
//!   `/config_dump`, `/clusters`, `/xds`); [`telemetry`]: the Prometheus
//!   exporter; `otlp` (feature `otlp`): span export over OTLP/gRPC with the
//!   OpenTelemetry SDK; `observe` (feature `observe`): logs, metrics and
//!   span export from the environment in one call.
//!
//! ```no_run
//! use proxyless_hyper::Client;
//! # async fn run() -> Result<(), proxyless_tower::BoxError> {
//! let mesh = proxyless_core::Mesh::from_env()?;              // MESH_CONFIG=mesh.yaml
//! let client = Client::new(&mesh);
//! let resp = client.get("http://reviews/ratings/1").await?;
//! println!("{} from {:?}", resp.status(), resp.headers().get("x-backend"));
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod accept;
pub mod admin;
#[cfg(feature = "axum")]
pub mod axum;
mod client;
pub mod error;
mod limits;
#[cfg(feature = "observe")]
pub mod observe;
#[cfg(feature = "otlp")]
pub mod otlp;
mod server;
pub mod telemetry;
pub mod tls;
mod transport;

pub use client::{Body, Client, ResponseFuture};
pub use limits::{LimitError, ServerLimits};
pub use server::{Server, ServerStats, grpc_timeout, serve, serve_with_shutdown};
pub use transport::{Transport, TransportFuture};
