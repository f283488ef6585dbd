//! The mesh, in one dependency: re-exports the workspace crates, plus the
//! echo backend the demo, the tests and the benchmarks use.
//!
//! - `core` ([`proxyless_core`]): config model, snapshot, route decision, config sources;
//! - `tower` ([`proxyless_tower`]): the data-path layers;
//! - `hyper` ([`proxyless_hyper`]): the HTTP transport and server;
//! - `tonic` ([`proxyless_tonic`]): gRPC;
//! - [`echo`]: an echo backend on a real socket;
//! - [`certs`]: a development CA for SPIFFE identities;
//! - [`observe`]: logs, metrics, trace export and the admin server from the environment.

#![forbid(unsafe_code)]

pub mod certs;
pub mod echo;
pub mod greeter;
pub mod observe;
pub mod tally;

pub use proxyless_core as core;
pub use proxyless_hyper as hyper;
pub use proxyless_tonic as tonic;
pub use proxyless_tower as tower;

/// The mesh the environment describes ([`Mesh::from_env`](proxyless_core::Mesh::from_env)),
/// once it is serving a config: a control plane's first answer takes a
/// moment, and requests sent before it would pass through unrouted.
/// Fails if none arrives within `wait`, naming where it was expected from.
///
/// ```no_run
/// # async fn run() -> Result<(), String> {
/// let mesh = mesh::from_env_ready(std::time::Duration::from_secs(10)).await?;
/// let client = mesh::hyper::Client::new(&mesh);
/// # Ok(()) }
/// ```
pub async fn from_env_ready(wait: std::time::Duration) -> Result<proxyless_core::Mesh, String> {
    let mesh = proxyless_core::Mesh::from_env().map_err(|e| e.to_string())?;
    if tokio::time::timeout(wait, mesh.ready()).await.is_err() {
        return Err(format!(
            "no config from {} within {wait:?}",
            mesh.snapshot().source()
        ));
    }
    Ok(mesh)
}

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
