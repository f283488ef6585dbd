//! The mesh, in one dependency: re-exports the workspace crates, plus the
//! echo backend the demo, the tests and the benchmarks use.
//!
//! - `core` ([`proxyless_core`]): config model, snapshot, route decision, config sources;
//! - `tower` ([`proxyless_tower`]): the data-path layers;
//! - `hyper` ([`proxyless_hyper`]): the HTTP transport and server;
//! - `tonic` ([`proxyless_tonic`]): gRPC;
//! - [`echo`]: an echo backend on a real socket;
//! - [`certs`]: a development CA for SPIFFE identities;
//! - [`control_plane`]: the development xDS control plane;
//! - [`greeter`]: the demo's gRPC service; [`tally`]: outcome counting for the demo, `load` and tests.

#![forbid(unsafe_code)]

pub mod certs;
pub mod control_plane;
pub mod echo;
pub mod greeter;
pub mod tally;

pub use proxyless_core as core;
pub use proxyless_hyper as hyper;
pub use proxyless_tonic as tonic;
pub use proxyless_tower as tower;

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
