//! Metrics scraped from the admin server after real traffic, promtool's
//! verdict on them, trace context across two meshed hops, and the admin
//! endpoints.

use crate::support::{echo, mesh, run};
use mesh::echo::Echo;
use proxyless_core::Mesh;
use proxyless_hyper::Client;
use proxyless_hyper::admin::Admin;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Serves `admin` on a loopback port; returns its address.
async fn admin(admin: Admin) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin.serve(listener));
    addr
}

pub(crate) async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    crate::support::http_get(&format!("http://{addr}{path}")).await
}

/// Parses Prometheus text into (name{labels sorted}) -> value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_owned(),
        };
        out.insert(key, value.parse().unwrap());
    }
    out
}

fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    l.sort_unstable();
    format!("{name}{{{}}}", l.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_retries_breaker_trips_and_ejections() {
    proxyless_hyper::telemetry::install_prometheus().unwrap();
    let good = echo("tm-good").await;
    let bad = Echo::new("tm-bad")
        .fail_rate(1.0)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let m = mesh(&format!(
        r#"
services:
  - name: tm-svc
    routes:
      - name: tm-route
        retry: {{ attempts: 3, on: [5xx], backoff: {{ base: 1ms, max: 2ms }} }}
        to: [tm-pool]
  - name: tm-broken
    routes: [{{ name: tm-broken-route, to: [tm-broken-pool] }}]
backends:
  - name: tm-pool
    endpoints: ["{good}", "{bad}"]
    load_balancer: round_robin
    outlier_detection: {{ consecutive_5xx: 2, base_ejection: 30s, max_ejection_percent: 50 }}
  - name: tm-broken-pool
    endpoints: ["{bad}"]
    outlier_detection: {{ consecutive_5xx: 1, base_ejection: 30s, max_ejection_percent: 100 }}
"#,
        good = good.addr(),
        bad = bad.addr()
    ));
    let client = Client::new(&m);
    let t = run(&client, "http://tm-svc/", 200, 4).await;
    assert_eq!(t.ok, 200, "{t:?}");
    let broken = run(&client, "http://tm-broken/", 10, 1).await;
    assert_eq!(broken.errors.get("circuit_open"), Some(&9), "{broken:?}");

    let addr = admin(Admin::new(&m).with_client(&client)).await;
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let metrics = parse(&text);
    let ok = series(
        "mesh_requests_total",
        &[
            ("direction", "outbound"),
            ("service", "tm-svc"),
            ("route", "tm-route"),
            ("backend", "tm-pool"),
            ("status_class", "2xx"),
            ("error_kind", "none"),
        ],
    );
    assert_eq!(metrics.get(&ok), Some(&200.0), "{ok} in\n{text}");
    let count = ok.replace("mesh_requests_total", "mesh_request_duration_seconds_count");
    assert_eq!(metrics.get(&count), Some(&200.0), "histogram count");
    let retries = series(
        "mesh_retries_total",
        &[
            ("service", "tm-svc"),
            ("route", "tm-route"),
            ("backend", "tm-pool"),
        ],
    );
    assert!(
        metrics.get(&retries).copied().unwrap_or(0.0) >= 2.0,
        "{retries}: {text}"
    );
    let open = series(
        "mesh_requests_total",
        &[
            ("direction", "outbound"),
            ("service", "tm-broken"),
            ("route", "tm-broken-route"),
            ("backend", "tm-broken-pool"),
            ("status_class", "error"),
            ("error_kind", "circuit_open"),
        ],
    );
    assert_eq!(metrics.get(&open), Some(&9.0), "{text}");
    let rejections = series(
        "mesh_circuit_breaker_rejections_total",
        &[("backend", "tm-broken-pool"), ("reason", "all_ejected")],
    );
    assert_eq!(metrics.get(&rejections), Some(&9.0));
    for backend in ["tm-pool", "tm-broken-pool"] {
        assert_eq!(
            metrics.get(&series(
                "mesh_outlier_ejections_total",
                &[("backend", backend)]
            )),
            Some(&1.0),
            "{backend}"
        );
        assert_eq!(
            metrics.get(&series(
                "mesh_endpoints",
                &[("backend", backend), ("state", "ejected")]
            )),
            Some(&1.0)
        );
    }
    assert!(
        metrics
            .get("mesh_config_version")
            .is_some_and(|v| *v >= 1.0)
    );

    // promtool, the Prometheus project's own checker, finds nothing to lint
    // (an interop check: promtool is a peer).
    #[cfg(feature = "interop")]
    promtool_finds_nothing(&text);

    // /clusters shows the ejection; /config_dump shows the config and no keys.
    let (_, clusters) = get(addr, "/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let pool = clusters["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "tm-pool")
        .unwrap();
    let healths: Vec<&str> = pool["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["health"].as_str().unwrap())
        .collect();
    assert_eq!(healths, ["healthy", "ejected"]);
    let (_, dump) = get(addr, "/config_dump").await;
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["config"]["services"][0]["name"], "tm-svc");
    assert_eq!(get(addr, "/ready").await.0, 200);
    assert_eq!(get(addr, "/live").await.0, 200);
}

/// promtool, the Prometheus project's own checker, on an exposition.
#[cfg(feature = "interop")]
fn promtool_finds_nothing(text: &str) {
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = promtool.expect("promtool is needed (bash tests/peers/install.sh)");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access log is DEBUG on its own target: an application's ordinary
/// INFO subscriber prints none of it; `mesh::access=debug` turns on one
/// line per hop (outbound and inbound).
#[tokio::test]
async fn the_access_log_is_quiet_at_info_and_on_at_its_own_target() {
    // On first: tracing caches a callsite's interest process-wide, and a
    // quiet subscriber first would leave the access events marked unwanted.
    for (filter, lines) in [("info,mesh::access=debug", 2), ("info", 0)] {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        // This test's runtime is this thread: client and server log here.
        let _guard = tracing::subscriber::set_default(subscriber);
        let served = Mesh::empty();
        let echo = mesh::echo::Echo::new("v1")
            .start(&served, "127.0.0.1:0")
            .await
            .unwrap();
        let m = crate::support::mesh(&format!(
            "services: [{{ name: reviews, routes: [{{ to: [{{ backend: v1 }}] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{}'] }}]",
            echo.addr()
        ));
        let client = proxyless_hyper::Client::new(&m);
        let resp = client.get("http://reviews/ratings/1").await.unwrap();
        assert_eq!(resp.status(), 200);
        drop(resp);
        echo.stop().await;
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let access = text.lines().filter(|l| l.contains("mesh::access")).count();
        assert_eq!(access, lines, "{filter}: {text}");
    }
}

/// A `metrics` recorder installed after the mesh, its client and its
/// server were built, and after they served a request, receives the
/// requests from then on, both directions (handles used to be resolved
/// against the no-op recorder and kept).
#[tokio::test]
async fn a_recorder_installed_late_receives_the_metrics() {
    let served = Mesh::empty().with_service("late-server");
    let echo = Echo::new("v1").start(&served, "127.0.0.1:0").await.unwrap();
    let m = mesh(&format!(
        "services: [{{ name: late, routes: [{{ name: r, to: [{{ backend: late-v1 }}] }}] }}]\nbackends: [{{ name: late-v1, endpoints: ['{}'] }}]",
        echo.addr()
    ));
    let client = Client::new(&m);
    let get = || async { client.get("http://late/x").await.unwrap().status() };
    assert_eq!(get().await, 200);
    // Installed for this thread, which runs this test's client and server.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    for _ in 0..3 {
        assert_eq!(get().await, 200);
    }
    let text = handle.render();
    let out = series(
        "mesh_requests_total",
        &[
            ("direction", "outbound"),
            ("service", "late"),
            ("route", "r"),
            ("backend", "late-v1"),
            ("status_class", "2xx"),
            ("error_kind", "none"),
        ],
    );
    let parsed = parse(&text);
    assert_eq!(parsed.get(&out), Some(&3.0), "{out} in:\n{text}");
    let inbound = parsed
        .iter()
        .filter(|(k, _)| {
            k.starts_with("mesh_requests_total{")
                && k.contains("direction=\"inbound\"")
                && k.contains("service=\"late-server\"")
        })
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert_eq!(inbound, 3.0, "{text}");
    echo.stop().await;
}
