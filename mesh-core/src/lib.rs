//! # mesh-core
//!
//! The control path of the mesh, and the pure decisions the data path asks
//! of it:
//!
//! - [`config`]: the config model (services, routes, backends, inbound
//!   policy, defaults), read from YAML or JSON and validated as a whole;
//! - [`snapshot`]: the compiled, immutable form every request reads;
//! - [`route`]: the route decision (which route, which backend), pure and
//!   allocation-free;
//! - [`identity`]: SPIFFE IDs;
//! - [`policy`]: the state machines of retry budgets, breakers, outlier
//!   detection, latency EWMA and endpoint choice, pure;
//! - [`state`]: runtime state keyed by backend and endpoint, which outlives
//!   snapshots;
//! - [`Mesh`]: the handle that holds the live snapshot (`arc-swap`),
//!   publishes new ones and lets others subscribe;
//! - `source` (feature `fs`, on by default): the watched config file and
//!   `MESH_CONFIG`;
//! - DNS discovery (feature `dns`): the names of backends with `dns`,
//!   looked up and followed by their TTLs.
//!
//! The model and decision modules do no I/O and take time and randomness as
//! arguments; `cargo build -p mesh-core --no-default-features` builds them
//! without the file source.
//!
//! ## Quick start
//!
//! ```
//! use proxyless_core::{Mesh, config::Config, route::{decide, Decision, RequestParts}};
//!
//! let config = Config::from_yaml(r#"
//! version: 1
//! services:
//!   - name: reviews
//!     routes:
//!       - to:
//!           - { backend: reviews-v1, weight: 90 }
//!           - { backend: reviews-v2, weight: 10 }
//! backends:
//!   - { name: reviews-v1, endpoints: ["127.0.0.1:9001"] }
//!   - { name: reviews-v2, endpoints: ["127.0.0.1:9003"] }
//! "#)?;
//! let mesh = Mesh::from_config(config)?;
//!
//! let headers = http::HeaderMap::new();
//! let req = RequestParts::new("reviews", "GET", "/ratings/1", None, &headers);
//! let snap = mesh.snapshot();
//! let Decision::Route(d) = decide(&snap, &req, rand_sample())? else { unreachable!() };
//! println!("{} -> {}", d.route.name(), d.backend.name());
//! # fn rand_sample() -> u64 { 42 }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod authz;
pub mod config;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "dns")]
pub use snapshot::LookupError;
pub mod identity;
#[cfg(feature = "import")]
pub mod import;
mod mesh;
pub mod path;
pub mod policy;
pub mod route;
pub mod shadow;
pub mod snapshot;
pub mod source;
pub mod state;
#[cfg(feature = "xds")]
pub mod xds;

#[cfg(feature = "dns")]
pub use mesh::DnsLookup;
pub use mesh::{DemandWait, Mesh, Subscription, UpdateStatus};
#[cfg(feature = "fs")]
pub use source::file::ReadyError;

/// Describes the metrics mesh-core records (the xDS client's, with feature
/// `xds`) to the installed `metrics` recorder; exporters call it once
/// after installing one. Without `xds` it does nothing.
pub fn describe_metrics() {
    #[cfg(feature = "xds")]
    xds::describe_metrics();
    #[cfg(feature = "dns")]
    dns::describe_metrics();
}
