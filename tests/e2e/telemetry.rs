//! Metrics scraped from the admin server after real traffic, promtool's
//! verdict on them, trace context across two meshed hops, and the admin
//! endpoints.

use crate::support::{echo, mesh, run};
use mesh::echo::Echo;
use proxyless_core::Mesh;
use proxyless_hyper::Client;
use proxyless_hyper::admin::Admin;
use proxyless_tower::telemetry::trace::{self, FinishedSpan, SpanKind, SpanSink};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Serves `admin` on a loopback port; returns its address.
async fn admin(admin: Admin) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin.serve(listener));
    addr
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
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

#[derive(Debug, Default, Clone)]
struct Collector(Arc<Mutex<Vec<FinishedSpan>>>);

impl SpanSink for Collector {
    fn record(&self, span: FinishedSpan) {
        self.0.lock().unwrap().push(span);
    }
}

/// The span sink is process-wide: tests that install one take turns.
static SINK_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_crosses_two_meshed_hops_with_parent_links() {
    let _turn = SINK_TURN.lock().await;
    let collector = Collector::default();
    trace::set_span_sink(Box::new(collector.clone()));

    // B: an echo. A: a meshed server whose handler calls B through the mesh.
    let b = Echo::new("tr-b")
        .service("tr-b")
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let a_mesh = mesh(&format!(
        "services: [{{ name: tr-b, routes: [{{ to: [tr-b] }}] }}]\nbackends: [{{ name: tr-b, endpoints: ['{}'] }}]",
        b.addr()
    ));
    let a_client = Client::new(&a_mesh);
    let a_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = a_listener.local_addr().unwrap();
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let c = a_client.clone();
        async move {
            let resp = c.get("http://tr-b/inner").await?;
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await?
                .to_bytes();
            Ok::<_, proxyless_tower::BoxError>(http::Response::new(http_body_util::Full::new(body)))
        }
    });
    let server = proxyless_hyper::Server::new(&Mesh::empty()).service("tr-a");
    tokio::spawn(async move { server.serve(a_listener, handler).await });

    // The outer client calls A with a traceparent of its own.
    let outer = mesh(&format!(
        "services: [{{ name: tr-a, routes: [{{ to: [tr-a] }}] }}]\nbackends: [{{ name: tr-a, endpoints: ['{a_addr}'] }}]"
    ));
    let req = http::Request::get("http://tr-a/outer")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = Client::new(&outer).request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let at_b = echoed["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        at_b.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{at_b}"
    );

    tokio::time::sleep(Duration::from_millis(50)).await;
    let spans: Vec<FinishedSpan> = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.trace_id == 0x0af7651916cd43dd8448eb211c80319c)
        .cloned()
        .collect();
    let find = |kind: SpanKind, name_part: &str| {
        spans
            .iter()
            .find(|s| s.kind == kind && s.name.contains(name_part))
            .unwrap_or_else(|| panic!("no {kind:?} span {name_part} in {spans:#?}"))
            .clone()
    };
    // Each request span has one attempt span under it, which is what the
    // next hop's server span hangs from.
    let outer_client = find(SpanKind::Client, "GET tr-a");
    let outer_attempt = find(SpanKind::Client, "attempt 1 tr-a");
    let a_server = find(SpanKind::Server, "tr-a");
    let a_client_span = find(SpanKind::Client, "GET tr-b");
    let a_attempt = find(SpanKind::Client, "attempt 1 tr-b");
    let b_server = find(SpanKind::Server, "tr-b");
    assert_eq!(outer_client.parent_span_id, Some(0xb7ad6b7169203331));
    assert_eq!(outer_attempt.parent_span_id, Some(outer_client.span_id));
    assert_eq!(a_server.parent_span_id, Some(outer_attempt.span_id));
    assert_eq!(a_client_span.parent_span_id, Some(a_server.span_id));
    assert_eq!(a_attempt.parent_span_id, Some(a_client_span.span_id));
    assert_eq!(b_server.parent_span_id, Some(a_attempt.span_id));
    assert_eq!(
        at_b,
        format!(
            "00-0af7651916cd43dd8448eb211c80319c-{:016x}-01",
            a_attempt.span_id
        )
    );
    assert!(
        a_client_span
            .attributes
            .iter()
            .any(|(k, v)| *k == "http.response.status_code" && v == "200")
    );
    assert!(
        b_server
            .attributes
            .iter()
            .any(|(k, v)| *k == "url.path" && v == "/inner")
    );
    trace::clear_span_sink();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn spans_reach_a_real_otlp_collector_with_ids_parents_and_attributes() {
    let _turn = SINK_TURN.lock().await;
    use crate::support::{PeerStop, free_port, peer};
    let (grpc, http_port) = (free_port(), free_port());
    peer(
        "setup-observability.sh",
        &["otlp", &grpc.to_string(), &http_port.to_string()],
    );
    let _stop = PeerStop(format!("otlp-{grpc}"));

    let exporter = proxyless_hyper::otlp::install(
        &format!("http://127.0.0.1:{http_port}/v1/traces"),
        "otlp-test",
    )
    .unwrap();
    let b = Echo::new("ot-b")
        .service("ot-b")
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let m = mesh(&format!(
        "services: [{{ name: ot-b, routes: [{{ name: ot-route, to: [ot-b] }}] }}]\nbackends: [{{ name: ot-b, endpoints: ['{}'] }}]",
        b.addr()
    ));
    let req = http::Request::get("http://ot-b/items/1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = Client::new(&m).request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The server span finishes after the response is handed over.
    tokio::time::sleep(Duration::from_millis(50)).await;
    exporter.flush().await;
    trace::clear_span_sink();
    assert!(exporter.exported() >= 2, "exported {}", exporter.exported());

    let (_, spans) = get(format!("127.0.0.1:{http_port}").parse().unwrap(), "/spans").await;
    let spans: Vec<serde_json::Value> = serde_json::from_str(&spans).unwrap();
    let ours: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .collect();
    let client = ours
        .iter()
        .find(|s| {
            s["kind"] == "SPAN_KIND_CLIENT"
                && s["name"].as_str().is_some_and(|n| n.starts_with("GET"))
        })
        .expect("a client span");
    let server = ours
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .expect("a server span");
    assert_eq!(client["parent_span_id"], "00f067aa0ba902b7");
    let attempt = ours
        .iter()
        .find(|s| {
            s["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("attempt 1"))
        })
        .expect("an attempt span");
    assert_eq!(attempt["parent_span_id"], client["span_id"]);
    assert_eq!(server["parent_span_id"], attempt["span_id"]);
    assert_eq!(client["service"], "otlp-test");
    assert_eq!(client["attributes"]["http.route"], "ot-route");
    assert_eq!(client["attributes"]["http.response.status_code"], "200");
    assert_eq!(server["attributes"]["url.path"], "/items/1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn opentelemetrys_python_sdk_reads_our_traceparent() {
    let _turn = SINK_TURN.lock().await;
    let setup =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/setup-otel-sdk.sh");
    let out = std::process::Command::new("bash")
        .arg(&setup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/otel_sdk_peer.py");
    let child = std::process::Command::new(python)
        .arg(script)
        .arg(port.to_string())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the SDK peer did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let collector = Collector::default();
    trace::set_span_sink(Box::new(collector.clone()));
    let m = mesh(&format!(
        "services: [{{ name: sdk-peer, routes: [{{ to: [sdk-peer] }}] }}]\nbackends: [{{ name: sdk-peer, endpoints: ['127.0.0.1:{port}'] }}]"
    ));
    let resp = Client::new(&m).get("http://sdk-peer/").await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    trace::clear_span_sink();
    let read: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ours = collector
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.kind == SpanKind::Client && s.name.starts_with("attempt 1 sdk-peer"))
        .cloned()
        .expect("our attempt span, the one on the wire");
    assert_eq!(read["trace_id"], format!("{:032x}", ours.trace_id));
    assert_eq!(read["parent_span_id"], format!("{:016x}", ours.span_id));
    assert_eq!(read["sampled"], true);
    assert_eq!(
        read["span_trace_id"], read["trace_id"],
        "the SDK continued our trace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_mirror_copies_are_child_spans_of_the_request() {
    let _turn = SINK_TURN.lock().await;
    let collector = Collector::default();
    trace::set_span_sink(Box::new(collector.clone()));
    let flaky = Echo::new("rs-flaky")
        .fail_rate(1.0)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let shadow = echo("rs-shadow").await;
    let m = mesh(&format!(
        r#"
services:
  - name: rs-svc
    routes:
      - retry: {{ attempts: 3, on: [5xx], backoff: {{ base: 1ms, max: 1ms }} }}
        mirror: {{ backend: rs-shadow, percent: 100 }}
        to: [rs-flaky]
backends:
  - {{ name: rs-flaky, endpoints: ["{}"] }}
  - {{ name: rs-shadow, endpoints: ["{}"] }}
"#,
        flaky.addr(),
        shadow.addr()
    ));
    let resp = Client::new(&m).get("http://rs-svc/").await.unwrap();
    assert_eq!(resp.status(), 503);
    tokio::time::sleep(Duration::from_millis(100)).await;
    trace::clear_span_sink();
    let spans = collector.0.lock().unwrap().clone();
    let request = spans
        .iter()
        .find(|s| s.name == "GET rs-svc")
        .expect("the request span");
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == Some(request.span_id))
        .map(|s| s.name.as_str())
        .collect();
    for want in [
        "attempt 1 rs-flaky",
        "attempt 2 rs-flaky",
        "attempt 3 rs-flaky",
        "mirror rs-shadow",
    ] {
        assert!(children.contains(&want), "{want} missing from {children:?}");
    }
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
