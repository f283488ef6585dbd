//! End-to-end tests over real sockets: echo servers on 127.0.0.1 behind
//! `proxyless_hyper::serve`, a `proxyless_hyper::Client` in front. One binary, one
//! module per concern.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod support;

mod chaos;
mod data_path;
mod dns;
mod grpc;
mod hedge;
mod hostile;
mod identity;
mod interop;
mod locality;
mod migration;
mod operations;
mod otel;
mod ratelimit;
mod refusals;
mod resilience;
mod security;
mod servers;
mod shadow;
mod telemetry;
mod xds;
