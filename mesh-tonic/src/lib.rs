//! # mesh-tonic
//!
//! gRPC on the mesh: a channel any generated tonic client accepts, gRPC
//! status-aware retries and `grpc-timeout` deadlines, and the server layer
//! for tonic servers.
//!
//! Status: not built yet (see the project's ARCHITECTURE.md).

#![forbid(unsafe_code)]
