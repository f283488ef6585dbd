//! Route decision time against the size of the mesh.
//!
//! `cargo bench --bench route_decision`: the same request decided under a
//! config of 10 services and under one of 10,000 services of 5 routes each.
//! Host lookup is a hash map and routes are scanned only within the matched
//! service, so the two medians should be close.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use proxyless_core::config::{
    Backend, Config, Endpoint, PathMatch, Route, RouteMatch, Service, StringMatch, WeightedBackend,
};
use proxyless_core::route::{Decision, RequestParts, decide};
use proxyless_core::snapshot::{Snapshot, Source};
use std::collections::BTreeMap;
use std::hint::black_box;

/// `n` services, each with 5 routes (a header match, three path matches and
/// a weighted default) over 2 backends of their own.
fn config(n: usize) -> Config {
    let mut cfg = Config::default();
    for i in 0..n {
        let (v1, v2) = (format!("svc{i}-v1"), format!("svc{i}-v2"));
        let to = |b: &str, w| WeightedBackend {
            backend: b.to_owned().into(),
            weight: w,
        };
        let path = |p: &str| RouteMatch {
            path: Some(PathMatch::Prefix(p.to_owned())),
            ..Default::default()
        };
        let mut headers = BTreeMap::new();
        headers.insert("x-user".to_owned(), StringMatch::Exact("tester".to_owned()));
        cfg.services.push(
            Service {
                name: format!("svc{i}").into(),
                hosts: vec![
                    format!("svc{i}").into(),
                    format!("svc{i}.default.svc.cluster.local").into(),
                ],
                routes: vec![
                    Route {
                        name: Some("testers".into()),
                        matches: vec![RouteMatch {
                            headers,
                            ..Default::default()
                        }],
                        to: vec![to(&v2, 1)],
                        ..Default::default()
                    },
                    Route {
                        name: Some("admin".into()),
                        matches: vec![path("/admin")],
                        to: vec![to(&v1, 1)],
                        ..Default::default()
                    },
                    Route {
                        name: Some("static".into()),
                        matches: vec![path("/static")],
                        to: vec![to(&v1, 1)],
                        ..Default::default()
                    },
                    Route {
                        name: Some("api".into()),
                        matches: vec![path("/api")],
                        to: vec![to(&v1, 1)],
                        ..Default::default()
                    },
                    Route {
                        name: Some("default".into()),
                        to: vec![to(&v1, 90), to(&v2, 10)],
                        ..Default::default()
                    },
                ],
                classifier: None,
            }
            .into(),
        );
        for (k, b) in [v1, v2].into_iter().enumerate() {
            cfg.backends.push(
                Backend {
                    name: b.into(),
                    endpoints: vec![Endpoint::new(format!(
                        "10.0.{}.{}:8080",
                        i / 250,
                        (i % 250) * 2 + k
                    ))],
                    ..Default::default()
                }
                .into(),
            );
        }
    }
    cfg
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_decision");
    for n in [10usize, 10_000] {
        let snap = Snapshot::compile(config(n), 1, Source::Code).expect("valid config");
        let host = format!("svc{}.default.svc.cluster.local", n / 2);
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", http::HeaderValue::from_static("abc"));
        headers.insert("accept", http::HeaderValue::from_static("*/*"));
        // Misses the header and three path routes, lands on the weighted default.
        let req = RequestParts::new(&host, "GET", "/ratings/1", None, &headers);
        let mut sample = 0u64;
        group.bench_function(format!("{n}_services"), |b| {
            b.iter(|| {
                sample = sample.wrapping_add(0x9E37_79B9_7F4A_7C15);
                match decide(black_box(&snap), black_box(&req), sample) {
                    Ok(Decision::Route(d)) => d.backend_index,
                    _ => unreachable!(),
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
