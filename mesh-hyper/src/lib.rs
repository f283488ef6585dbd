//! # mesh-hyper
//!
//! The HTTP transport under the mesh layers: pooled hyper connections per
//! endpoint (HTTP/1.1 and HTTP/2), mutual TLS, the server side (`serve`),
//! and the admin server.
//!
//! Status: not built yet (see the project's ARCHITECTURE.md).

#![forbid(unsafe_code)]
