//! The mapping of mesh errors to HTTP and gRPC responses; it lives in
//! [`proxyless_tower::response`], shared by the outbound client and the
//! inbound layers, and is re-exported here.

pub use proxyless_tower::response::*;
