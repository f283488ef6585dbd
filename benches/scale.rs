//! The mesh at 10, 1,000 and 10,000 services, over the real xDS stream.
//!
//! `cargo bench --bench scale` prints one table per figure, a column per
//! mesh size:
//!
//! - **first snapshot**: from connecting to the control plane to the first
//!   complete snapshot, state of the world (SotW) and incremental (delta);
//! - **memory**: the client process's RSS growth from before it connects
//!   to after its first snapshot, and its heap in use then (a counting
//!   allocator: what the mesh holds, without the allocator's retained and
//!   fragmented pages), in all and per service;
//! - **route decision**: the route layer's decision (host lookup, route
//!   match, weighted split), for one service called over and over (flat is
//!   the goal: nothing in it grows with the mesh) and for requests spread
//!   over every service (which at 10,000 services measures the memory
//!   hierarchy: each decision's data is out of cache);
//! - **one change, push to effect**: one service's route changed at the
//!   control plane until the client's snapshot has it (median of a run of
//!   changes), SotW and delta; and the same change made by editing the
//!   watched config file (which adds the file source's 200 ms poll);
//! - **loading a file**: parsing, validating and compiling a config file of
//!   that many services (and of 100,000, the documented ceiling's scale).
//!
//! Each service has one route with a timeout, a retry policy and a 90/10
//! split over two backends of its own with one endpoint each. The control
//! plane and every client run in processes of their own (this binary,
//! re-executed), so that no process's memory is counted in another's.
//! `SCALE_SIZES` (default `10,1000,10000`) and `SCALE_CHANGES` (changes
//! per median, default 20) size the run.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::route::{RequestParts, decide};
use proxyless_core::snapshot::Source;
use proxyless_core::xds::XdsSettings;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes allocated and not yet freed since `region` began.
/// `stats_alloc` counts a reallocation's growth in `bytes_allocated` and
/// its shrinking in `bytes_deallocated` already; its `bytes_reallocated`
/// is the same change again (adding it counted every growth twice).
fn live_bytes(region: &Region<'_, System>) -> i64 {
    let c = region.change();
    i64::try_from(c.bytes_allocated).unwrap_or(i64::MAX)
        - i64::try_from(c.bytes_deallocated).unwrap_or(i64::MAX)
}

fn free_port() -> u16 {
    mesh::free_port().unwrap()
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// A config of `n` services; service 0's route timeout is `timeout_s`.
fn many(n: usize, timeout_s: u64) -> String {
    let mut s = String::with_capacity(n * 300);
    s.push_str("services:\n");
    for i in 0..n {
        let t = if i == 0 { timeout_s } else { 2 };
        s.push_str(&format!(
            "  - {{ name: svc{i}, routes: [{{ timeout: {t}s, retry: {{ attempts: 2 }}, to: [{{ backend: b{i}, weight: 90 }}, {{ backend: c{i}, weight: 10 }}] }}] }}\n"
        ));
    }
    s.push_str("backends:\n");
    for i in 0..n {
        let (hi, lo) = (i / 250, i % 250);
        s.push_str(&format!(
            "  - {{ name: b{i}, endpoints: ['10.1.{hi}.{lo}:8080'] }}\n  - {{ name: c{i}, endpoints: ['10.2.{hi}.{lo}:8080'] }}\n"
        ));
    }
    s
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The timeout of service 0's route in `m`'s snapshot.
fn timeout_of_svc0(m: &Mesh) -> Option<Duration> {
    let snap = m.snapshot();
    let s = snap.config().services.iter().find(|s| s.name == "svc0");
    s.and_then(|s| s.routes.first()?.timeout)
}

/// Waits (bounded) until `m`'s service 0 has `timeout`.
async fn until_timeout(m: &Mesh, timeout: Duration, since: Instant) -> Duration {
    while timeout_of_svc0(m) != Some(timeout) {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the change never took effect"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    since.elapsed()
}

/// Nanoseconds per route decision for one request to one service, made
/// over and over (what a client calling a few services does: the
/// decision's data stays in cache).
fn hot_decision_ns(m: &Mesh) -> f64 {
    let snap = m.snapshot();
    let req = http::Request::get("http://svc0/ratings/1")
        .body(())
        .unwrap();
    let n = 500_000u64;
    // The median of seven runs: a run is short, and the machine is shared.
    let mut runs: Vec<f64> = (0..7)
        .map(|_| {
            let started = Instant::now();
            let mut routed = 0u64;
            for k in 0..n {
                if decide(&snap, &RequestParts::of(&req), std::hint::black_box(k)).is_ok() {
                    routed += 1;
                }
            }
            assert_eq!(routed, n, "every request is routed");
            started.elapsed().as_secs_f64() * 1e9 / n as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Nanoseconds per route decision, over requests to every service of `m`
/// in a scrambled (fixed) order (the data of each decision is, at 10,000
/// services, mostly out of cache).
fn decision_ns(m: &Mesh, n: usize) -> f64 {
    let snap = m.snapshot();
    let mut order: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let requests: Vec<http::Request<()>> = order
        .iter()
        .map(|i| {
            http::Request::get(format!("http://svc{i}/ratings/1"))
                .body(())
                .unwrap()
        })
        .collect();
    let rounds = (200_000 / n).max(1);
    let started = Instant::now();
    let mut routed = 0u64;
    for r in 0..rounds {
        for (k, req) in requests.iter().enumerate() {
            let sample = (r as u64).wrapping_mul(31).wrapping_add(k as u64);
            if decide(&snap, &RequestParts::of(req), sample).is_ok() {
                routed += 1;
            }
        }
    }
    let took = started.elapsed();
    assert_eq!(routed, (rounds * n) as u64, "every request is routed");
    took.as_secs_f64() * 1e9 / routed as f64
}

/// Re-executed as a client of the control plane on `port` with `n`
/// services: prints its figures as `key value` lines.
fn client_process(api: &str, port: u16, n: usize, changes: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let api: proxyless_core::xds::Api = api.parse().unwrap();
        let services: Vec<String> = (0..n).map(|i| format!("svc{i}")).collect();
        let before = rss_kib();
        let region = Region::new(GLOBAL);
        let t0 = Instant::now();
        let mut settings =
            XdsSettings::new(&format!("http://127.0.0.1:{port}"), "bench-scale", services);
        settings.api = api;
        let (m, _xds) = Mesh::from_control_plane(settings).unwrap();
        while m.snapshot().services().len() < n {
            assert!(t0.elapsed() < Duration::from_secs(120), "no full snapshot");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let first = t0.elapsed();
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!("first_ms {:.1}", first.as_secs_f64() * 1000.0);
        println!("rss_kib {}", rss_kib().saturating_sub(before));
        println!("heap_kib {}", live_bytes(&region) / 1024);
        println!("decision_ns {:.1}", decision_ns(&m, n));
        println!("hot_decision_ns {:.1}", hot_decision_ns(&m));
        // One change at a time, asked of the control plane process through
        // the file it watches.
        let file = std::path::PathBuf::from(env("SCALE_FILE", ""));
        let mut took = Vec::new();
        for i in 0..changes {
            let timeout = Duration::from_secs(3 + (i as u64 % 2));
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, many(n, timeout.as_secs())).unwrap();
            let t = Instant::now();
            std::fs::rename(&tmp, &file).unwrap();
            until_timeout(&m, timeout, t).await;
            // The control plane's own file poll is in this figure; the
            // xDS push alone is measured in-process below.
            took.push(t.elapsed());
        }
        println!("file_change_ms {:.1}", median(took).as_secs_f64() * 1000.0);
        // Exit holding everything: a heap profiler's figures at the end
        // of the run (dhat's "at t-end") are then the client's steady state.
        std::process::exit(0);
    });
}

/// Re-executed as the control plane serving the config in `file`.
fn control_plane_process(file: &str, port: u16) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mesh = Mesh::from_file(file).unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        mesh::control_plane::serve(mesh, addr).await.unwrap();
    });
}

/// One change at a control plane in this process, pushed to a client in
/// this process: the xDS path alone (no file poll). The control plane
/// changes one service of the config it serves, as an incremental control
/// plane does; how long its own update took (validating and compiling
/// what changed, before it sends anything) is reported apart.
async fn push_in_process(api: &str, n: usize, changes: usize) -> Push {
    let cp = Mesh::from_config(Config::from_yaml(&many(n, 2)).unwrap()).unwrap();
    let port = free_port();
    let served = cp.clone();
    tokio::spawn(async move {
        mesh::control_plane::serve(served, format!("127.0.0.1:{port}").parse().unwrap()).await
    });
    wait_listening(port).await;
    let services: Vec<String> = (0..n).map(|i| format!("svc{i}")).collect();
    let mut settings = XdsSettings::new(&format!("http://127.0.0.1:{port}"), "bench-one", services);
    settings.api = api.parse().unwrap();
    let (m, xds) = Mesh::from_control_plane(settings).unwrap();
    let t0 = Instant::now();
    while m.snapshot().services().len() < n {
        assert!(t0.elapsed() < Duration::from_secs(120), "no full snapshot");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (mut took, mut at_cp, mut applied) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..changes {
        let timeout = Duration::from_secs(3 + (i as u64 % 2));
        // The control plane changes one service of the config it serves
        // (the file edit row below reads a whole file again instead).
        let mut cfg = cp.snapshot().config().clone();
        let svc0 = cfg.services.iter_mut().find(|s| s.name == "svc0").unwrap();
        svc0.routes[0].timeout = Some(timeout);
        let t = Instant::now();
        cp.update(cfg, Source::Code).unwrap();
        at_cp.push(t.elapsed());
        took.push(until_timeout(&m, timeout, t).await);
        let micros = xds.status().last_apply_micros.load(Ordering::Relaxed);
        applied.push(Duration::from_micros(micros));
    }
    Push {
        total: median(took),
        control_plane_update: median(at_cp),
        client_apply: median(applied),
    }
}

/// One change's push to effect, and two parts of it.
#[derive(Debug, Clone, Copy)]
struct Push {
    total: Duration,
    /// The control plane validating and compiling the change.
    control_plane_update: Duration,
    /// The client applying the response (its `last_apply_micros`).
    client_apply: Duration,
}

async fn wait_listening(port: u16) {
    let t0 = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "control plane never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Parses, validates and compiles a config of `n` services.
fn load(n: usize) -> (Duration, u64) {
    let text = many(n, 2);
    let before = rss_kib();
    let t = Instant::now();
    let mesh = Mesh::from_config(Config::from_yaml(&text).unwrap()).unwrap();
    let took = t.elapsed();
    let grown = rss_kib().saturating_sub(before);
    assert_eq!(mesh.snapshot().services().len(), n);
    (took, grown)
}

/// The heap figure counts a grown and a shrunk allocation once.
fn check_live_bytes() {
    let region = Region::new(GLOBAL);
    let mut v: Vec<u8> = Vec::with_capacity(64);
    v.reserve_exact(64 * 1024);
    let grown = v.capacity();
    assert_eq!(live_bytes(&region), i64::try_from(grown).unwrap());
    v.shrink_to(1024);
    let shrunk = v.capacity();
    assert_eq!(live_bytes(&region), i64::try_from(shrunk).unwrap());
    drop(v);
    assert_eq!(live_bytes(&region), 0);
}

fn main() {
    check_live_bytes();
    let changes: usize = env("SCALE_CHANGES", "20").parse().unwrap_or(20);
    // `SCALE_LOAD=n`: only load a file of n services (for a profiler).
    if let Ok(n) = std::env::var("SCALE_LOAD") {
        let (t, kib) = load(n.parse().unwrap());
        println!("{} ms, {kib} KiB", t.as_millis());
        return;
    }
    // `SCALE_PUSH=api`: only the in-process push at the first size (for a
    // profiler).
    if let Ok(api) = std::env::var("SCALE_PUSH") {
        let n = env("SCALE_SIZES", "1000")
            .split(',')
            .next()
            .and_then(|s| s.parse().ok());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let push = rt.block_on(push_in_process(&api, n.unwrap_or(1000), changes));
        println!("{push:?}");
        return;
    }
    if let Ok(port) = std::env::var("SCALE_CONTROL_PLANE") {
        control_plane_process(&env("SCALE_FILE", ""), port.parse().unwrap());
        return;
    }
    if let Ok(api) = std::env::var("SCALE_CLIENT") {
        let port = env("SCALE_PORT", "0").parse().unwrap();
        let n = env("SCALE_N", "10").parse().unwrap();
        client_process(&api, port, n, changes);
        return;
    }
    let sizes: Vec<usize> = env("SCALE_SIZES", "10,1000,10000")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // (size, api) -> figures
    let mut figures: Vec<(usize, &str, std::collections::HashMap<String, f64>)> = Vec::new();
    let mut pushes: Vec<(usize, Push, Push)> = Vec::new();
    let mut loads = Vec::new();
    for &n in &sizes {
        for api in ["sotw", "delta"] {
            let file = dir.path().join(format!("mesh-{n}-{api}.yaml"));
            std::fs::write(&file, many(n, 2)).unwrap();
            let port = free_port();
            let mut cp = std::process::Command::new(std::env::current_exe().unwrap())
                .env("SCALE_CONTROL_PLANE", port.to_string())
                .env("SCALE_FILE", &file)
                .spawn()
                .unwrap();
            rt.block_on(wait_listening(port));
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .env("SCALE_CLIENT", api)
                .env("SCALE_PORT", port.to_string())
                .env("SCALE_N", n.to_string())
                .env("SCALE_FILE", &file)
                .output()
                .unwrap();
            let _ = cp.kill();
            let _ = cp.wait();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let f: std::collections::HashMap<String, f64> = text
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect();
            assert_eq!(f.len(), 6, "client process ({n}, {api}) said: {text}");
            figures.push((n, api, f));
        }
        let (sotw, delta) = rt.block_on(async {
            (
                push_in_process("sotw", n, changes).await,
                push_in_process("delta", n, changes).await,
            )
        });
        pushes.push((n, sotw, delta));
        loads.push((n, load(n)));
    }
    loads.push((100_000, load(100_000)));

    let get = |n: usize, api: &str, key: &str| {
        figures
            .iter()
            .find(|(m, a, _)| *m == n && *a == api)
            .and_then(|(_, _, f)| f.get(key).copied())
            .unwrap_or(f64::NAN)
    };
    let header = |title: &str| {
        println!("\n{title}\n");
        let cols: Vec<String> = sizes.iter().map(|n| format!("{n} services")).collect();
        println!("| | {} |", cols.join(" | "));
        println!("|---|{}", "---:|".repeat(sizes.len()));
    };
    let row = |name: &str, cell: &dyn Fn(usize) -> String| {
        let cells: Vec<String> = sizes.iter().map(|&n| cell(n)).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    header("scale: a client subscribed over xDS to every service (its own process)");
    for api in ["sotw", "delta"] {
        row(&format!("first snapshot, {api}"), &|n| {
            format!("{:.0} ms", get(n, api, "first_ms"))
        });
    }
    for api in ["sotw", "delta"] {
        row(&format!("client RSS growth, {api}"), &|n| {
            format!("{:.1} MiB", get(n, api, "rss_kib") / 1024.0)
        });
        row(&format!("client heap in use, {api}"), &|n| {
            format!("{:.1} MiB", get(n, api, "heap_kib") / 1024.0)
        });
        row(&format!("heap per service, {api}"), &|n| {
            format!("{:.1} KiB", get(n, api, "heap_kib") / n as f64)
        });
    }
    for (name, key) in [
        ("route decision, one service called", "hot_decision_ns"),
        ("route decision, every service in turn", "decision_ns"),
    ] {
        row(name, &|n| format!("{:.0} ns", get(n, "sotw", key)));
        row("  vs the smallest mesh", &|n| {
            format!("{:.2}x", get(n, "sotw", key) / get(sizes[0], "sotw", key))
        });
    }
    header("one service changed: push to effect (median)");
    let push = |n: usize| pushes.iter().find(|p| p.0 == n);
    for (api, pick) in [("sotw", 0), ("delta", 1)] {
        let of = |n: usize| push(n).map(|p| if pick == 0 { p.1 } else { p.2 });
        row(
            &format!("xDS push, {api} (control plane in process)"),
            &|n| of(n).map_or_else(String::new, |p| ms(p.total)),
        );
        row("  of which the control plane's update", &|n| {
            of(n).map_or_else(String::new, |p| ms(p.control_plane_update))
        });
        row("  of which the client applying the response", &|n| {
            of(n).map_or_else(String::new, |p| ms(p.client_apply))
        });
    }
    for api in ["sotw", "delta"] {
        row(
            &format!("file edit at the control plane -> client, {api}"),
            &|n| format!("{:.1} ms", get(n, api, "file_change_ms")),
        );
    }
    println!(
        "\nloading a config file of n services (parse, validate, compile), in this process:\n"
    );
    println!("| services | time | RSS growth |");
    println!("|---:|---:|---:|");
    for (n, (t, kib)) in &loads {
        println!("| {n} | {} | {:.1} MiB |", ms(*t), *kib as f64 / 1024.0);
    }
}
