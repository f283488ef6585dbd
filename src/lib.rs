//! The mesh, in one dependency: re-exports the workspace crates.
//!
//! - `core` ([`mesh_core`]): config model, snapshot, route decision, config sources;
//! - `tower` ([`mesh_tower`]): the data-path layers;
//! - `hyper` ([`mesh_hyper`]): the HTTP transport and server;
//! - `tonic` ([`mesh_tonic`]): gRPC.

#![forbid(unsafe_code)]

pub use mesh_core as core;
pub use mesh_hyper as hyper;
pub use mesh_tonic as tonic;
pub use mesh_tower as tower;
