//! The mesh's own cost per request: the whole `MeshLayer` stack over a
//! no-op inner service, against the bare inner service called the same
//! way, in the same run.
//!
//! `cargo bench --bench layers` prints one table: time per request (the
//! median of alternating rounds), its ratio to bare, and heap allocations
//! per request (a counting allocator), for
//!
//! - **bare**: the no-op service alone;
//! - **mesh, one attempt**: a route with a timeout and a 90/10 split over
//!   two backends with circuit breakers (no retry policy);
//! - **mesh, retriable**: the same with `retry: { attempts: 2 }`, so the
//!   request's head is kept for a retry that does not happen;
//! - **mesh, hedged**: the same with `hedge: { delay: 10ms }`, answered
//!   before the delay, so no hedge is sent: what a hedged route costs;
//! - **mesh, one attempt, candidate**: the one-attempt row with a candidate
//!   config loaded for shadow evaluation (the same config, so every request
//!   is decided twice and nothing differs): what shadow evaluation costs.
//!   With no candidate the route layer only tests that the snapshot has
//!   none, which the one-attempt row includes.
//!
//! `LAYERS_TELEMETRY=1` runs every row with telemetry on, the way services
//! run: the Prometheus recorder installed and every span recorded by an
//! OpenTelemetry SDK provider, batched to an exporter that drops them (as
//! the e2e bench's telemetry rows). Compare a row with and without it for
//! what telemetry costs per request.
//!
//! `LAYERS_PENDING=1` makes the no-op service answer on its second poll
//! (it wakes its task at once), in every row: a response that is not
//! ready when the request is sent, as over a network. Then the mesh's
//! deadline is armed in tokio's timer, and every layer's future is polled
//! twice; compare with the default for what that adds.
//!
//! Every request is built the same way in every row (a URI and two headers;
//! building it is counted in all rows alike). `LAYERS_ROUNDS` (default 7)
//! and `LAYERS_REQUESTS` (per round, default 100000) size the run.
//!
//! Instructions, which a noisy machine does not blur: `LAYERS_PROFILE=n`
//! runs only `n` requests through the retriable stack (`LAYERS_ROW=0` bare,
//! `1` one attempt, `3` hedged, `4` one attempt with a candidate), for a
//! profiler:
//!
//! ```text
//! cargo bench --bench layers --no-run
//! LAYERS_PROFILE=20000 valgrind --tool=callgrind target/release/deps/layers-<hash>
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/discard.rs"]
mod discard;
use discard::Discard;
use http::{Request, Response};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_tower::{BoxError, MeshLayer};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const CONFIG: &str = r#"
services:
  - name: plain
    routes:
      - timeout: 5s
        to: [{ backend: a, weight: 90 }, { backend: b, weight: 10 }]
  - name: echo
    routes:
      - timeout: 5s
        retry: { attempts: 2, on: [5xx, connect-failure] }
        to: [{ backend: a, weight: 90 }, { backend: b, weight: 10 }]
  - name: hedged
    routes:
      - timeout: 5s
        hedge: { delay: 10ms, budget_percent: 5 }
        to: [{ backend: a, weight: 90 }, { backend: b, weight: 10 }]
backends:
  - { name: a, endpoints: ["127.0.0.1:1", "127.0.0.1:2"], circuit_breaker: { max_requests: 10000 } }
  - { name: b, endpoints: ["127.0.0.1:3"], circuit_breaker: { max_requests: 10000 } }
"#;

#[derive(Clone)]
struct Noop;

/// Whether the no-op service answers on its second poll (`LAYERS_PENDING=1`).
static PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The no-op service's answer: at once, or on the second poll.
struct Answer {
    pending: bool,
}

impl std::future::Future for Answer {
    type Output = Result<Response<()>, BoxError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if self.pending {
            self.pending = false;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(Response::new(())))
    }
}

impl<B> Service<Request<B>> for Noop {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = Answer;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        Answer {
            pending: PENDING.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

type Req = Request<http_body_util::Empty<bytes::Bytes>>;

fn request(host: &str) -> Req {
    Request::get(match host {
        "plain" => "http://plain/ratings/1",
        "hedged" => "http://hedged/ratings/1",
        _ => "http://echo/ratings/1",
    })
    .header(http::header::USER_AGENT, "bench")
    .header(http::header::ACCEPT, "*/*")
    .body(http_body_util::Empty::new())
    .unwrap()
}

fn mesh_stack() -> proxyless_tower::MeshService<Noop> {
    let mesh = Mesh::from_config(Config::from_yaml(CONFIG).unwrap()).unwrap();
    MeshLayer::new(mesh).layer(Noop)
}

/// The stack with the same config loaded as its candidate.
fn shadowed_stack() -> proxyless_tower::MeshService<Noop> {
    let mesh = Mesh::from_config(Config::from_yaml(CONFIG).unwrap()).unwrap();
    let candidate = Config::from_yaml(CONFIG).unwrap();
    mesh.set_candidate(candidate, proxyless_core::snapshot::Source::Code)
        .unwrap();
    MeshLayer::new(mesh).layer(Noop)
}

/// One request's future.
type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// The rows: a name, and one request through it.
type Row = (&'static str, Box<dyn Fn() -> Pending>);

fn rows() -> Vec<Row> {
    let svc = mesh_stack();
    let retriable = svc.clone();
    let hedged = svc.clone();
    let shadowed = shadowed_stack();
    vec![
        (
            "bare",
            Box::new(|| Box::pin(async { drop(Noop.oneshot(request("plain")).await.unwrap()) })),
        ),
        (
            "mesh, one attempt",
            Box::new(move || {
                let mut svc = svc.clone();
                Box::pin(async move {
                    // Called directly: the row measures the stack, not a
                    // clone of it or a boxed future around it.
                    let _ =
                        std::future::poll_fn(|cx| Service::<Req>::poll_ready(&mut svc, cx)).await;
                    drop(svc.call(request("plain")).await.unwrap());
                })
            }),
        ),
        (
            "mesh, retriable",
            Box::new(move || {
                let mut svc = retriable.clone();
                Box::pin(async move {
                    let _ =
                        std::future::poll_fn(|cx| Service::<Req>::poll_ready(&mut svc, cx)).await;
                    drop(svc.call(request("echo")).await.unwrap());
                })
            }),
        ),
        (
            "mesh, hedged",
            Box::new(move || {
                let mut svc = hedged.clone();
                Box::pin(async move {
                    let _ =
                        std::future::poll_fn(|cx| Service::<Req>::poll_ready(&mut svc, cx)).await;
                    drop(svc.call(request("hedged")).await.unwrap());
                })
            }),
        ),
        (
            "mesh, one attempt, candidate",
            Box::new(move || {
                let mut svc = shadowed.clone();
                Box::pin(async move {
                    let _ =
                        std::future::poll_fn(|cx| Service::<Req>::poll_ready(&mut svc, cx)).await;
                    drop(svc.call(request("plain")).await.unwrap());
                })
            }),
        ),
    ]
}

/// Time per request over `n` requests, and allocations per request.
fn round(rt: &tokio::runtime::Runtime, n: u64, one: &dyn Fn() -> Pending) -> (Duration, f64) {
    // The row's own boxed future is one allocation; it is not the mesh's.
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    rt.block_on(async {
        for _ in 0..n {
            one().await;
        }
    });
    let took = started.elapsed();
    let allocations = region.change().allocations as f64 / n as f64 - 1.0;
    (took / u32::try_from(n).unwrap_or(u32::MAX), allocations)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let telemetry = env("LAYERS_TELEMETRY", 0) == 1;
    PENDING.store(
        env("LAYERS_PENDING", 0) == 1,
        std::sync::atomic::Ordering::Relaxed,
    );
    if telemetry {
        proxyless_hyper::telemetry::install_prometheus().unwrap();
        opentelemetry::global::set_tracer_provider(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(Discard)
                .build(),
        );
    }
    if let Ok(n) = std::env::var("LAYERS_PROFILE") {
        let n: u64 = n.parse().expect("LAYERS_PROFILE is a number of requests");
        let row = usize::try_from(env("LAYERS_ROW", 2)).unwrap_or(2).min(4);
        let rows = rows();
        rt.block_on(async {
            for _ in 0..n {
                (rows[row].1)().await;
            }
        });
        return;
    }
    let (rounds, n) = (env("LAYERS_ROUNDS", 7), env("LAYERS_REQUESTS", 100_000));
    let rows = rows();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); rows.len()];
    let mut allocations = vec![0.0; rows.len()];
    // Warm up, then alternate the rows round by round so drift hits all.
    for (_, one) in &rows {
        round(&rt, n / 10, one.as_ref());
    }
    for _ in 0..rounds {
        for (i, (_, one)) in rows.iter().enumerate() {
            let (t, a) = round(&rt, n, one.as_ref());
            times[i].push(t);
            allocations[i] = a;
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let medians: Vec<Duration> = times.iter_mut().map(median).collect();
    let bare = medians[0].as_secs_f64();
    let mut on = if telemetry { ", telemetry on" } else { "" }.to_owned();
    if PENDING.load(std::sync::atomic::Ordering::Relaxed) {
        on.push_str(", answered on the second poll");
    }
    println!(
        "\nlayers: {rounds} rounds of {n} requests, median round (current-thread runtime{on})\n"
    );
    println!("| | time per request | vs bare | allocations per request | over bare |");
    println!("|---|---|---|---|---|");
    for (i, (name, _)) in rows.iter().enumerate() {
        let t = medians[i].as_secs_f64();
        println!(
            "| {name} | {:.0} ns | {:.2}x (+{:.0} ns) | {:.1} | +{:.1} |",
            t * 1e9,
            t / bare,
            (t - bare) * 1e9,
            allocations[i],
            allocations[i] - allocations[0],
        );
    }
}
