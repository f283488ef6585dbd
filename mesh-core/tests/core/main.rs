//! mesh-core's integration tests: one binary, one module per concern.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod config_files;
mod environment;
#[cfg(feature = "import")]
mod import;
mod incremental;
mod round_trip;
mod routing;
mod watch;
