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
//! - [`greeter`]: the demo's gRPC service; [`tally`]: outcome counting for the demo, `load` and tests;
//! - [`spans`]: spans collected in process by an OpenTelemetry SDK, as an application's pipeline would.

#![forbid(unsafe_code)]

pub mod certs;
pub mod control_plane;
pub mod echo;
pub mod greeter;
pub mod spans;
pub mod tally;

pub use proxyless_core as core;
pub use proxyless_hyper as hyper;
pub use proxyless_tonic as tonic;
pub use proxyless_tower as tower;

/// The README's code blocks, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// The newcomer's guide's code blocks, run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/using.md")]
struct UsingDoctests;

#[cfg(test)]
mod tests {
    /// Every environment variable the published crates read is in the
    /// guide's one table (a new variable without a row fails here).
    #[test]
    fn every_environment_variable_is_documented() {
        let guide = include_str!("../docs/using.md");
        let mut missing = Vec::new();
        for dir in [
            "mesh-core/src",
            "mesh-tower/src",
            "mesh-hyper/src",
            "mesh-tonic/src",
        ] {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let mut stack = vec![root];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{d:?}: {e}")) {
                    let path = entry.map(|e| e.path()).unwrap_or_default();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "rs") {
                        let text = std::fs::read_to_string(&path).unwrap_or_default();
                        for name in quoted_variables(&text) {
                            if !guide.contains(&format!("`{name}`")) {
                                missing.push(format!("{name} ({})", path.display()));
                            }
                        }
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in docs/using.md's table: {missing:?}"
        );
    }

    /// `"MESH_..."`, `"OTEL_..."` and `"GRPC_..."` string literals.
    fn quoted_variables(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for (i, _) in text.match_indices('"') {
            let rest = &text[i + 1..];
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            let prefixed = ["MESH_", "OTEL_", "GRPC_"]
                .iter()
                .any(|p| name.starts_with(p));
            if prefixed && rest[end..].starts_with('"') && name.len() > 5 {
                out.push(name);
            }
        }
        out
    }
}
