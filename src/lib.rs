//! The mesh, in one dependency: re-exports the workspace crates, plus the
//! echo backend the demo, the tests and the benchmarks use.
//!
//! - `core` ([`mesh_core`]): config model, snapshot, route decision, config sources;
//! - `tower` ([`mesh_tower`]): the data-path layers;
//! - `hyper` ([`mesh_hyper`]): the HTTP transport and server;
//! - `tonic` ([`mesh_tonic`]): gRPC;
//! - [`echo`]: an echo backend on a real socket;
//! - [`certs`]: a development CA for SPIFFE identities;
//! - [`observe`]: logs, metrics, trace export and the admin server from the environment.

#![forbid(unsafe_code)]

pub mod certs;
pub mod echo;
pub mod greeter;
pub mod observe;
pub mod tally;

pub use mesh_core as core;
pub use mesh_hyper as hyper;
pub use mesh_tonic as tonic;
pub use mesh_tower as tower;

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
