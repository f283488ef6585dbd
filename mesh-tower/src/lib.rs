//! # mesh-tower
//!
//! The data path of the mesh as tower layers, generic over
//! `http::Request<B>`: route, fault, timeout, retry, and backend (circuit
//! breaker, load balancer, outlier detection), composed by `MeshLayer` in
//! that order. Each decision it makes comes from `mesh-core`; this crate
//! supplies the clock, the randomness and the I/O around it.
//!
//! Status: not built yet (see the project's ARCHITECTURE.md).

#![forbid(unsafe_code)]
