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

pub use crate::mesh::ConfigSource;
