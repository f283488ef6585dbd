//! The mesh in one command: `cargo run --example demo`.
//!
//! Loads a mesh config, shows where requests go under it, then edits the
//! watched file while deciding and shows the split shift live, with the
//! version numbers the mesh published and an invalid edit refused while the
//! last good config keeps serving. Ends by itself.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use mesh_core::Mesh;
use mesh_core::route::{Decision, RequestParts, decide};
use rand::Rng;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn config(v1: u32, v2: u32) -> String {
    format!(
        r#"version: 1
trust_domain: demo.local
services:
  - name: reviews
    hosts: [reviews, reviews.default.svc]
    routes:
      - name: testers-to-v2
        match: {{ headers: {{ x-user: {{ exact: tester }} }}, path: {{ prefix: /ratings }} }}
        to: [{{ backend: reviews-v2 }}]
      - name: default
        timeout: 2s
        retry: {{ attempts: 3, per_try_timeout: 500ms, on: [5xx, connect-failure, reset] }}
        to:
          - {{ backend: reviews-v1, weight: {v1} }}
          - {{ backend: reviews-v2, weight: {v2} }}
backends:
  - {{ name: reviews-v1, endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"] }}
  - {{ name: reviews-v2, endpoints: ["127.0.0.1:9003"] }}
"#
    )
}

/// Decides `n` requests and counts them per backend.
fn split(mesh: &Mesh, n: u32, rng: &mut impl rand::Rng) -> BTreeMap<String, u32> {
    let headers = http::HeaderMap::new();
    let req = RequestParts::new("reviews", "GET", "/ratings/1", None, &headers);
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let snap = mesh.snapshot();
        if let Ok(Decision::Route(d)) = decide(&snap, &req, rng.random()) {
            *counts.entry(d.backend.name().to_string()).or_insert(0) += 1;
        }
    }
    counts
}

/// Replaces the file in one step, as config tooling should.
fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn main() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(&path, config(90, 10)).unwrap();
    let mesh = Mesh::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = rand::rng();

    println!(
        "== 1. where requests go (config version {})",
        mesh.snapshot().version()
    );
    println!("{:<44} {:<16} backend", "request", "route");
    let mut tester = http::HeaderMap::new();
    tester.insert("x-user", http::HeaderValue::from_static("tester"));
    let plain = http::HeaderMap::new();
    for (label, host, path, headers) in [
        (
            "GET http://reviews/ratings/1",
            "reviews",
            "/ratings/1",
            &plain,
        ),
        (
            "GET http://reviews/ratings/1  x-user:tester",
            "reviews",
            "/ratings/1",
            &tester,
        ),
        (
            "GET http://reviews.default.svc/health",
            "reviews.default.svc",
            "/health",
            &plain,
        ),
        ("GET http://example.com/", "example.com", "/", &plain),
    ] {
        let snap = mesh.snapshot();
        let req = RequestParts::new(host, "GET", path, None, headers);
        let (route, backend) = match decide(&snap, &req, rng.random()) {
            Ok(Decision::Route(d)) => (d.route.name().to_string(), d.backend.name().to_string()),
            Ok(Decision::Passthrough) => ("-".into(), "passthrough (unknown host)".into()),
            Err(e) => ("-".into(), format!("refused: {e}")),
        };
        println!("{label:<44} {route:<16} {backend}");
    }

    println!("\n== 2. canary: shifting the split by editing the watched file");
    println!(
        "{:<10} {:<9} {:>12} {:>12}",
        "weights", "version", "reviews-v1", "reviews-v2"
    );
    for (v1, v2) in [(90, 10), (50, 50), (0, 100)] {
        let want = mesh.snapshot().version() + u64::from((v1, v2) != (90, 10));
        write(&path, &config(v1, v2));
        let deadline = Instant::now() + Duration::from_secs(5);
        while mesh.snapshot().version() < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let counts = split(&mesh, 10_000, &mut rng);
        let get = |b: &str| counts.get(b).copied().unwrap_or(0);
        println!(
            "{:<10} {:<9} {:>12} {:>12}",
            format!("{v1}/{v2}"),
            mesh.snapshot().version(),
            get("reviews-v1"),
            get("reviews-v2")
        );
    }

    println!("\n== 3. a bad edit is refused; the last good config keeps serving");
    write(
        &path,
        &config(50, 50).replace("reviews-v2, weight", "reviews-v3, weight"),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while mesh.status().rejected == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(e) = mesh.status().last_error {
        println!("{e}");
    }
    println!("still serving version {}", mesh.snapshot().version());
    println!("\nnext: cargo run --example meshctl -- check <your mesh.yaml>");
}
