//! The mesh, in one dependency: re-exports the workspace crates.
//!
//! - [`core`]: config model, snapshot, route decision, config sources;
//! - [`tower`]: the data-path layers;
//! - [`hyper`]: the HTTP transport and server;
//! - [`tonic`]: gRPC.

#![forbid(unsafe_code)]

pub use mesh_core as core;
pub use mesh_hyper as hyper;
pub use mesh_tonic as tonic;
pub use mesh_tower as tower;
