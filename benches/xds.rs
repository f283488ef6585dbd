//! xDS figures: `cargo bench --bench xds` prints
//!
//! - **push to effect**: from a config change at the development control
//!   plane to the first request that follows it, at a client subscribed over
//!   ADS; once for an update made in code (the xDS path alone) and once for
//!   an edit of the watched file (adds the watcher's polling);
//! - **memory per subscribed service**: the client's resident memory growth
//!   when it subscribes to 1,000 services (each its own route, cluster and
//!   endpoint), divided by 1,000, over each variant of ADS (state of the
//!   world, incremental). The control plane and each client run in their own
//!   process (this binary, re-executed) so that neither is counted in the
//!   other;
//! - **one change among 1,000 services**: from an update of one service at
//!   the control plane to the client serving it, over each variant (state
//!   of the world resends every route configuration; incremental sends the
//!   one that changed).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::snapshot::Source;
use proxyless_core::xds::XdsSettings;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn split(a: std::net::SocketAddr, b: std::net::SocketAddr, wa: u32, wb: u32) -> String {
    format!(
        "services: [{{ name: svc, routes: [{{ to: [{{ backend: a, weight: {wa} }}, {{ backend: b, weight: {wb} }}] }}] }}]\nbackends: [{{ name: a, endpoints: ['{a}'] }}, {{ name: b, endpoints: ['{b}'] }}]"
    )
}

fn many(n: usize) -> String {
    let mut s = String::from("services:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - {{ name: svc{i}, routes: [{{ timeout: 2s, retry: {{ attempts: 2 }}, to: [b{i}] }}] }}\n"
        ));
    }
    s.push_str("backends:\n");
    for i in 0..n {
        s.push_str(&format!(
            "  - {{ name: b{i}, endpoints: ['10.1.{}.{}:8080'] }}\n",
            i / 250,
            i % 250
        ));
    }
    s
}

/// Sends requests until one is answered by `want`; returns how long that took.
async fn until_served_by(client: &proxyless_hyper::Client, want: &str, since: Instant) -> Duration {
    loop {
        if let Ok(r) = client.get("http://svc/").await
            && r.headers().get("x-backend").is_some_and(|v| v == want)
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "never served by {want}"
        );
    }
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1])
    )
}

/// Re-executed as a client over `api` of the control plane on `port`:
/// prints the first snapshot's delay (ms), the RSS growth (KiB), and the
/// median delay of one change among 1,000 services (ms).
fn client_process(api: &str, port: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let api: proxyless_core::xds::Api = api.parse().unwrap();
        let services: Vec<String> = (0..1000).map(|i| format!("svc{i}")).collect();
        let before = rss_kib();
        let t0 = Instant::now();
        let mut settings = XdsSettings::new(
            &format!("http://127.0.0.1:{port}"),
            "bench-mem",
            services.clone(),
        );
        settings.api = api;
        let (m, _x) = Mesh::from_control_plane(settings).unwrap();
        while m.snapshot().version() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = t0.elapsed();
        assert_eq!(m.snapshot().services().len(), 1000);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let grown = rss_kib().saturating_sub(before);

        // One change among 1,000, at a control plane in this process.
        let cp = Mesh::from_config(Config::from_yaml(&many(1000)).unwrap()).unwrap();
        let port = free_port();
        let served = cp.clone();
        tokio::spawn(async move {
            mesh::control_plane::serve(served, format!("127.0.0.1:{port}").parse().unwrap()).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut settings =
            XdsSettings::new(&format!("http://127.0.0.1:{port}"), "bench-one", services);
        settings.api = api;
        let (m, _x) = Mesh::from_control_plane(settings).unwrap();
        while m.snapshot().version() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let timeout_of_svc0 = |m: &Mesh| {
            let snap = m.snapshot();
            let s = snap.config().services.iter().find(|s| s.name == "svc0");
            s.and_then(|s| s.routes[0].timeout)
        };
        let mut one = Vec::new();
        for i in 0..20u64 {
            let timeout = Duration::from_secs(3 + i % 2);
            let mut cfg = Config::from_yaml(&many(1000)).unwrap();
            cfg.services[0].routes[0].timeout = Some(timeout);
            let t0 = Instant::now();
            cp.update(cfg, Source::Code).unwrap();
            while timeout_of_svc0(&m) != Some(timeout) {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            one.push(t0.elapsed());
        }
        one.sort();
        println!(
            "{:.1} {} {:.2}",
            took.as_secs_f64() * 1000.0,
            grown,
            one[one.len() / 2].as_secs_f64() * 1000.0
        );
    });
}

fn main() {
    if let (Ok(api), Ok(port)) = (
        std::env::var("MESH_BENCH_CLIENT"),
        std::env::var("MESH_BENCH_PORT"),
    ) {
        client_process(&api, &port);
        return;
    }
    // Re-executed as the control plane for the memory figure.
    if let Ok(port) = std::env::var("MESH_BENCH_CONTROL_PLANE") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let mesh = Mesh::from_config(Config::from_yaml(&many(1000)).unwrap()).unwrap();
            let addr = format!("127.0.0.1:{port}").parse().unwrap();
            mesh::control_plane::serve(mesh, addr).await.unwrap();
        });
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let quiet = Mesh::empty();
        let a = mesh::echo::Echo::new("a")
            .start(&quiet, "127.0.0.1:0")
            .await
            .unwrap();
        let b = mesh::echo::Echo::new("b")
            .start(&quiet, "127.0.0.1:0")
            .await
            .unwrap();

        // Updates made in code at the control plane.
        let cp_mesh =
            Mesh::from_config(Config::from_yaml(&split(a.addr(), b.addr(), 100, 0)).unwrap())
                .unwrap();
        let port = free_port();
        let cp = cp_mesh.clone();
        tokio::spawn(async move {
            mesh::control_plane::serve(cp, format!("127.0.0.1:{port}").parse().unwrap()).await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (client_mesh, _xds) = Mesh::from_control_plane(XdsSettings::new(
            &format!("http://127.0.0.1:{port}"),
            "bench",
            vec!["svc".into()],
        ))
        .unwrap();
        while client_mesh.snapshot().version() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let client = proxyless_hyper::Client::new(&client_mesh);
        let mut code = Vec::new();
        for i in 0..30 {
            let (wa, wb, want) = if i % 2 == 0 {
                (0, 100, "b")
            } else {
                (100, 0, "a")
            };
            let t0 = Instant::now();
            cp_mesh
                .update(
                    Config::from_yaml(&split(a.addr(), b.addr(), wa, wb)).unwrap(),
                    Source::Code,
                )
                .unwrap();
            code.push(until_served_by(&client, want, t0).await);
        }

        // Edits of the watched file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh.yaml");
        std::fs::write(&file, split(a.addr(), b.addr(), 100, 0)).unwrap();
        let file_mesh = Mesh::from_file(&file).unwrap();
        let port = free_port();
        tokio::spawn(async move {
            mesh::control_plane::serve(file_mesh, format!("127.0.0.1:{port}").parse().unwrap())
                .await
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (client_mesh, _xds2) = Mesh::from_control_plane(XdsSettings::new(
            &format!("http://127.0.0.1:{port}"),
            "bench2",
            vec!["svc".into()],
        ))
        .unwrap();
        while client_mesh.snapshot().version() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let client = proxyless_hyper::Client::new(&client_mesh);
        let mut edits = Vec::new();
        for i in 0..15 {
            let (wa, wb, want) = if i % 2 == 0 {
                (0, 100, "b")
            } else {
                (100, 0, "a")
            };
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, split(a.addr(), b.addr(), wa, wb)).unwrap();
            let t0 = Instant::now();
            std::fs::rename(&tmp, &file).unwrap();
            edits.push(until_served_by(&client, want, t0).await);
        }
        println!(
            "\npush to effect (config change at the control plane -> first request routed by it):\n"
        );
        println!("| change | samples | time |");
        println!("|---|---:|---|");
        println!(
            "| update in code (xDS push, client publish) | {} | {} |",
            code.len(),
            stats(code)
        );
        println!(
            "| edit of the watched file (adds the 200 ms poll + 50 ms settle) | {} | {} |",
            edits.len(),
            stats(edits)
        );

        // Memory per subscribed service, control plane in another process.
        let port = free_port();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("MESH_BENCH_CONTROL_PLANE", port.to_string())
            .spawn()
            .unwrap();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut rows = Vec::new();
        for api in ["sotw", "delta"] {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .env("MESH_BENCH_CLIENT", api)
                .env("MESH_BENCH_PORT", port.to_string())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let f: Vec<f64> = text
                .lines()
                .last()
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            assert_eq!(f.len(), 3, "client process said: {text}");
            rows.push((api, f));
        }
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "\n1,000 subscribed services (route, cluster, endpoint each), a client process per variant:\n"
        );
        println!("| figure | state of the world | incremental |");
        println!("|---|---:|---:|");
        let row = |name: &str, i: usize, unit: &str| {
            println!(
                "| {name} | {:.1} {unit} | {:.1} {unit} |",
                rows[0].1[i], rows[1].1[i]
            );
        };
        row("first complete snapshot after connecting", 0, "ms");
        row("client resident memory growth", 1, "KiB");
        println!(
            "| per subscribed service | {:.1} KiB | {:.1} KiB |",
            rows[0].1[1] / 1000.0,
            rows[1].1[1] / 1000.0
        );
        println!(
            "| one service changed: push to effect (median of 20) | {:.2} ms | {:.2} ms |",
            rows[0].1[2], rows[1].1[2]
        );
    });
}
