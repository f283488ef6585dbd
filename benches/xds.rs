//! xDS figures: `cargo bench --bench xds` prints
//!
//! - **push to effect**: from a config change at the development control
//!   plane to the first request that follows it, at a client subscribed over
//!   ADS; once for an update made in code (the xDS path alone) and once for
//!   an edit of the watched file (adds the watcher's polling);
//!
//! Memory, route decisions and one change among 10 to 10,000 services are
//! `cargo bench --bench scale`'s.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::snapshot::Source;
use proxyless_core::xds::XdsSettings;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    mesh::free_port().unwrap()
}

fn split(a: std::net::SocketAddr, b: std::net::SocketAddr, wa: u32, wb: u32) -> String {
    format!(
        "services: [{{ name: svc, routes: [{{ to: [{{ backend: a, weight: {wa} }}, {{ backend: b, weight: {wb} }}] }}] }}]\nbackends: [{{ name: a, endpoints: ['{a}'] }}, {{ name: b, endpoints: ['{b}'] }}]"
    )
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

fn main() {
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
    });
}
