//! The mesh, in one dependency: re-exports the workspace crates, plus the
//! echo backend the demo, the tests and the benchmarks use.
//!
//! - `core` ([`proxyless_core`]): config model, snapshot, route decision, config sources;
//! - `tower` ([`proxyless_tower`]): the data-path layers;
//! - `hyper` ([`proxyless_hyper`]): the HTTP transport and server;
//! - `tonic` ([`proxyless_tonic`]): gRPC;
//! - [`echo`]: an echo backend on a real socket;
//! - [`certs`]: a development CA for SPIFFE identities;
//! - [`dns_server`]: a DNS server on loopback whose records change while it runs;
//! - [`control_plane`]: the development xDS control plane;
//! - [`greeter`]: the demo's gRPC service; [`tally`]: outcome counting for the demo, `load` and tests;
//! - [`spans`]: spans collected in process by an OpenTelemetry SDK, as an application's pipeline would;
//! - [`workload_api`]: a SPIFFE agent serving the Workload API on a Unix socket;
//! - [`free_port`]: a loopback port for a test's server.

#![forbid(unsafe_code)]

pub mod certs;
pub mod control_plane;
pub mod dns_server;
pub mod echo;
pub mod greeter;
pub mod spans;
pub mod tally;
pub mod workload_api;

pub use proxyless_core as core;
pub use proxyless_hyper as hyper;
pub use proxyless_tonic as tonic;
pub use proxyless_tower as tower;

/// A loopback port that was free a moment ago (for tests and benches that
/// start servers; another process may take it before they bind it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

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
        for (path, text) in library_sources() {
            for name in quoted_variables(&text) {
                if !guide.contains(&format!("`{name}`")) {
                    missing.push(format!("{name} ({})", path.display()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in docs/using.md's table: {missing:?}"
        );
    }

    /// The published crates' library sources, path and text.
    fn library_sources() -> Vec<(std::path::PathBuf, String)> {
        let mut out = Vec::new();
        for dir in [
            "mesh-core/src",
            "mesh-tower/src",
            "mesh-hyper/src",
            "mesh-tonic/src",
        ] {
            let mut stack = vec![std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{d:?}: {e}")) {
                    let path = entry.map(|e| e.path()).unwrap_or_default();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "rs") {
                        let text = std::fs::read_to_string(&path).unwrap_or_default();
                        out.push((path, text));
                    }
                }
            }
        }
        out
    }

    /// The text before the file's unit tests.
    fn before_tests(text: &str) -> &str {
        text.find("#[cfg(test)]").map_or(text, |i| &text[..i])
    }

    /// Library code reports errors as types, not strings: no
    /// `Result<_, String>` outside tests.
    #[test]
    fn no_library_function_returns_a_string_error() {
        let mut found = Vec::new();
        for (path, text) in library_sources() {
            for (n, line) in before_tests(&text).lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if code.contains("Result<") && code.contains(", String>") {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(found.is_empty(), "string errors:\n{}", found.join("\n"));
    }

    /// The xDS module's functions stay readable: none over 80 lines
    /// (tests aside).
    #[test]
    fn no_xds_function_is_over_80_lines() {
        let mut long = Vec::new();
        for (path, text) in library_sources() {
            if !path.to_string_lossy().contains("/xds/") {
                continue;
            }
            let lines: Vec<&str> = before_tests(&text).lines().collect();
            for (i, line) in lines.iter().enumerate() {
                let t = line.trim_start();
                let is_fn = [
                    "fn ",
                    "pub fn ",
                    "pub(crate) fn ",
                    "pub(super) fn ",
                    "async fn ",
                    "pub async fn ",
                    "pub(super) async fn ",
                ]
                .iter()
                .any(|p| t.starts_with(p));
                if !is_fn {
                    continue;
                }
                let (mut depth, mut started, mut end) = (0i32, false, i);
                for (j, l) in lines.iter().enumerate().skip(i) {
                    for c in l.chars() {
                        match c {
                            '{' => {
                                depth += 1;
                                started = true;
                            }
                            '}' => depth -= 1,
                            _ => {}
                        }
                    }
                    end = j;
                    if (started && depth <= 0) || (!started && l.trim_end().ends_with(';')) {
                        break;
                    }
                }
                if end - i + 1 > 80 {
                    long.push(format!(
                        "{}:{}: {} lines",
                        path.display(),
                        i + 1,
                        end - i + 1
                    ));
                }
            }
        }
        assert!(
            long.is_empty(),
            "functions over 80 lines:\n{}",
            long.join("\n")
        );
    }

    /// proxyless-core's top-level modules depend on each other one way: no
    /// cycle among the `crate::module` paths their library code names.
    #[test]
    fn the_cores_modules_have_no_cycle() {
        use std::collections::{BTreeMap, BTreeSet};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mesh-core/src");
        let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, text) in library_sources() {
            let Ok(rel) = path.strip_prefix(&root) else {
                continue;
            };
            let first = rel
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned());
            let Some(module) = first.map(|m| m.trim_end_matches(".rs").to_owned()) else {
                continue;
            };
            if module == "lib" {
                continue;
            }
            let named = uses.entry(module.clone()).or_default();
            for (i, _) in before_tests(&text).match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if &rest[..end] != module.as_str() {
                    named.insert(rest[..end].to_owned());
                }
            }
        }
        let modules: BTreeSet<String> = uses.keys().cloned().collect();
        // Depth-first search for a path back to where it started.
        fn back_to(
            start: &str,
            at: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            seen: &mut BTreeSet<String>,
            trail: &mut Vec<String>,
        ) -> bool {
            for next in g.get(at).into_iter().flatten() {
                trail.push(next.clone());
                if next == start
                    || (seen.insert(next.clone()) && back_to(start, next, g, seen, trail))
                {
                    return true;
                }
                trail.pop();
            }
            false
        }
        let graph: BTreeMap<String, BTreeSet<String>> = uses
            .into_iter()
            .map(|(m, named)| (m, named.intersection(&modules).cloned().collect()))
            .collect();
        for m in &modules {
            let mut trail = vec![m.clone()];
            let cycle = back_to(m, m, &graph, &mut BTreeSet::new(), &mut trail);
            assert!(!cycle, "a module cycle: {}", trail.join(" -> "));
        }
    }

    /// `"MESH_..."`, `"OTEL_..."`, `"GRPC_..."` and `"SPIFFE_..."` string literals.
    fn quoted_variables(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        for (i, _) in text.match_indices('"') {
            let rest = &text[i + 1..];
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            let prefixed = ["MESH_", "OTEL_", "GRPC_", "SPIFFE_"]
                .iter()
                .any(|p| name.starts_with(p));
            if prefixed && rest[end..].starts_with('"') && name.len() > 5 {
                out.push(name);
            }
        }
        out
    }
}
