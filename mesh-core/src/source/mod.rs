//! Config sources: where snapshots come from besides code.
//!
//! A source publishes configs with [`Mesh::update`](crate::Mesh::update) (each validated as a
//! whole; one that is rejected leaves the last good config serving) and
//! tells the mesh what only it knows through [`ConfigSource`]: the
//! watched file (`file`, feature `fs`) and the xDS client (feature `xds`)
//! are two; an application can write its own (a DNS or Consul source, a
//! config service) and attach it with [`Mesh::attach_source`](crate::Mesh::attach_source).
//!
//! ```
//! use proxyless_core::Mesh;
//! use proxyless_core::source::ConfigSource;
//! use std::sync::Arc;
//!
//! /// Says where its configs come from, for the admin server.
//! #[derive(Debug)]
//! struct Static;
//!
//! impl ConfigSource for Static {
//!     fn status(&self) -> Option<serde_json::Value> {
//!         Some(serde_json::json!({ "kind": "static" }))
//!     }
//! }
//!
//! let mesh = Mesh::empty();
//! mesh.attach_source(Arc::new(Static)).expect("the first source attaches");
//! assert_eq!(mesh.source_status().unwrap()["kind"], "static");
//! ```

#[cfg(feature = "fs")]
pub mod file;

use crate::mesh::DemandWait;

/// What a config source tells the mesh, beyond the configs it publishes
/// with [`Mesh::update`](crate::Mesh::update). Every method has a default:
/// a source implements what applies to it.
pub trait ConfigSource: Send + Sync + std::fmt::Debug {
    /// Asks for the config of `authority`, a host no service of the current
    /// config claims, for a source that fetches hosts when they are first
    /// called (as xDS does). Returns a wait the request holds (bounded by
    /// the source: it must end even if no answer comes), or `None` when
    /// there is nothing to wait for (the source does not fetch on demand,
    /// or it already answered for this host).
    fn demand(&self, authority: &str) -> Option<DemandWait> {
        let _ = authority;
        None
    }

    /// The source's own state as JSON, for the admin server: what it is
    /// connected to, what it holds, how fresh it is.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }

    /// Why the source works in a degraded way, if it does (its task failed
    /// and was restarted, and has not worked since). The admin server's
    /// `/ready` says so while the last good config serves.
    fn degraded(&self) -> Option<String> {
        None
    }
}
