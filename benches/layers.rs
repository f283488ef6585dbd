//! The mesh's own cost per request: the whole `MeshLayer` stack over a
//! no-op inner service, against the bare inner service called the same
//! way. `cargo bench --bench layers` prints criterion's timings and then
//! the heap allocations per request of each.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_tower::{BoxError, MeshLayer};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::future::Future;
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CONFIG: &str = r#"
services:
  - name: echo
    routes:
      - timeout: 5s
        retry: { attempts: 2, on: [5xx, connect-failure] }
        to: [{ backend: a, weight: 90 }, { backend: b, weight: 10 }]
backends:
  - { name: a, endpoints: ["127.0.0.1:1", "127.0.0.1:2"], circuit_breaker: { max_requests: 10000 } }
  - { name: b, endpoints: ["127.0.0.1:3"], circuit_breaker: { max_requests: 10000 } }
"#;

#[derive(Clone)]
struct Noop;

impl<B> Service<Request<B>> for Noop {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<()>, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        std::future::ready(Ok(Response::new(())))
    }
}

fn request() -> Request<http_body_util::Empty<bytes::Bytes>> {
    Request::get("http://echo/ratings/1")
        .body(http_body_util::Empty::new())
        .unwrap()
}

fn mesh_stack() -> proxyless_tower::MeshService<()> {
    let mesh = Mesh::from_config(Config::from_yaml(CONFIG).unwrap()).unwrap();
    MeshLayer::new(mesh).layer(Noop)
}

fn allocations<F: Future>(rt: &tokio::runtime::Runtime, n: u64, mut f: impl FnMut() -> F) -> f64 {
    let region = Region::new(GLOBAL);
    rt.block_on(async {
        for _ in 0..n {
            f().await;
        }
    });
    region.change().allocations as f64 / n as f64
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("layers");
    g.bench_function("bare_noop", |b| {
        b.to_async(&rt)
            .iter(|| async { Noop.oneshot(request()).await.unwrap() })
    });
    let svc = mesh_stack();
    g.bench_function("mesh_layer_over_noop", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move { svc.oneshot(request()).await.unwrap() }
        })
    });
    g.finish();

    let bare = allocations(&rt, 10_000, || async {
        Noop.oneshot(request()).await.unwrap()
    });
    let meshed = allocations(&rt, 10_000, || {
        let svc = svc.clone();
        async move { svc.oneshot(request()).await.unwrap() }
    });
    println!(
        "\nallocations per request: bare {bare:.1}, mesh {meshed:.1} (request construction included in both)"
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
