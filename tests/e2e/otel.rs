//! Traces join the application's OpenTelemetry pipeline: the app's SDK
//! (an in-memory exporter here, `mesh::spans`) sees the mesh's client and
//! server spans with their real ids, under the app's own spans, and the
//! handler's spans under the server span.

use crate::support::{echo, mesh};
use mesh::echo::Echo;
use mesh::spans::{self, Collector, SpanKind};
use opentelemetry::trace::{FutureExt as _, TraceContextExt, Tracer};
use opentelemetry::{Context, global};
use opentelemetry_sdk::trace::SpanData;
use proxyless_core::Mesh;
use proxyless_hyper::Client;
use std::time::Duration;

/// The global provider is process-wide: tests that install one take turns.
pub(crate) static OTEL_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn one<'a>(spans: &'a [SpanData], kind: SpanKind, name: &str) -> &'a SpanData {
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.span_kind == kind && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind:?} span {name} in {spans:#?}");
    found[0]
}

/// A meshed server `name` whose handler makes a span of its own and, in
/// it, calls `next` through the mesh (when given).
async fn hop(
    name: &'static str,
    client: Option<Client>,
    next: &'static str,
) -> std::net::SocketAddr {
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let client = client.clone();
        async move {
            // The app's tracer; its parent is the current context: the
            // mesh's server span.
            let tracer = global::tracer("app");
            let work = tracer.start(format!("{name} handler"));
            let cx = Context::current_with_span(work);
            let body = match client {
                Some(c) => {
                    let resp = c
                        .get(&format!("http://{next}/inner"))
                        .with_context(cx.clone())
                        .await?;
                    http_body_util::BodyExt::collect(resp.into_body())
                        .await?
                        .to_bytes()
                }
                None => bytes::Bytes::from_static(b"{}"),
            };
            cx.span().end();
            Ok::<_, proxyless_tower::BoxError>(http::Response::new(http_body_util::Full::new(body)))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = proxyless_hyper::Server::new(&Mesh::empty()).service(name);
    tokio::spawn(async move { server.serve(listener, handler).await });
    addr
}

/// The issue's proof: one trace from the app's span through the mesh's
/// client span, the meshed server's span and the handler's span, and on
/// through a second hop; parents linked; one client and one server span
/// per hop, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_app_span_through_client_server_and_handler_spans() {
    let _turn = OTEL_TURN.lock().await;
    let collector = Collector::install();
    let b = Echo::new("ot-b")
        .service("ot-b")
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let a_mesh = mesh(&format!(
        "services: [{{ name: ot-b, routes: [{{ to: [ot-b] }}] }}]\nbackends: [{{ name: ot-b, endpoints: ['{}'] }}]",
        b.addr()
    ));
    let a = hop("ot-a", Some(Client::new(&a_mesh)), "ot-b").await;
    let app_mesh = mesh(&format!(
        "services: [{{ name: ot-a, routes: [{{ to: [ot-a] }}] }}]\nbackends: [{{ name: ot-a, endpoints: ['{a}'] }}]"
    ));
    let client = Client::new(&app_mesh);

    let app_span = global::tracer("app").start("app request");
    let cx = Context::current_with_span(app_span);
    let trace_id = cx.span().span_context().trace_id();
    let resp = client
        .get("http://ot-a/outer")
        .with_context(cx.clone())
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    cx.span().end();
    let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();

    // The server spans end just after their responses are handed over.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let spans = collector.trace(trace_id);
        if spans.len() >= 7 || std::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let app = one(&spans, SpanKind::Internal, "app request");
    let a_client = one(&spans, SpanKind::Client, "GET ot-a");
    let a_server = one(&spans, SpanKind::Server, "GET ot-a");
    let handler = one(&spans, SpanKind::Internal, "ot-a handler");
    let b_client = one(&spans, SpanKind::Client, "GET ot-b");
    let b_server = one(&spans, SpanKind::Server, "GET ot-b");
    assert_eq!(
        spans.len(),
        6,
        "{:#?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert_eq!(a_client.parent_span_id, app.span_context.span_id());
    assert_eq!(a_server.parent_span_id, a_client.span_context.span_id());
    assert!(a_server.parent_span_is_remote);
    assert_eq!(handler.parent_span_id, a_server.span_context.span_id());
    assert_eq!(b_client.parent_span_id, handler.span_context.span_id());
    assert_eq!(b_server.parent_span_id, b_client.span_context.span_id());
    // What went on the wire to B is B's client span, by the global propagator.
    assert_eq!(
        echoed["headers"]["traceparent"],
        format!("00-{}-{}-01", trace_id, b_client.span_context.span_id())
    );
    // Semantic-convention attributes.
    assert_eq!(
        spans::attribute(a_client, "http.request.method").as_deref(),
        Some("GET")
    );
    assert_eq!(
        spans::attribute(a_client, "server.address").as_deref(),
        Some("ot-a")
    );
    assert_eq!(
        spans::attribute(a_client, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        spans::attribute(b_server, "url.path").as_deref(),
        Some("/inner")
    );
    assert_eq!(
        spans::attribute(b_server, "mesh.service").as_deref(),
        Some("ot-b")
    );
    assert_eq!(
        spans::attribute(b_client, "mesh.backend").as_deref(),
        Some("ot-b")
    );
    assert_eq!(a_client.instrumentation_scope.name(), "proxyless");
}

/// An application that traces with `tracing` and tracing-opentelemetry:
/// the mesh's client span hangs from the current `tracing` span, and a
/// `tracing` span in the handler hangs from the mesh's server span.
#[tokio::test]
async fn tracing_spans_of_the_app_are_parents_and_children_of_the_meshs() {
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    let _turn = OTEL_TURN.lock().await;
    let collector = Collector::install();
    let tracer = opentelemetry::trace::TracerProvider::tracer(collector.provider(), "app");
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(tracer));
    // This test's runtime is this thread: client, server and handler.
    let _guard = tracing::subscriber::set_default(subscriber);

    let handler = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| {
        async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"ok"),
            )))
        }
        .instrument(tracing::info_span!("handler work"))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = proxyless_hyper::Server::new(&Mesh::empty()).service("ot-t");
    tokio::spawn(async move { server.serve(listener, handler).await });
    let m = mesh(&format!(
        "services: [{{ name: ot-t, routes: [{{ to: [ot-t] }}] }}]\nbackends: [{{ name: ot-t, endpoints: ['{addr}'] }}]"
    ));
    let client = Client::new(&m);
    let resp = async { client.get("http://ot-t/").await.unwrap() }
        .instrument(tracing::info_span!("app operation"))
        .await;
    assert_eq!(resp.status(), 200);
    drop(resp);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let spans = collector.finished();
        let done = ["app operation", "GET ot-t", "handler work"]
            .iter()
            .all(|n| spans.iter().any(|s| s.name == *n))
            && spans.iter().filter(|s| s.name == "GET ot-t").count() == 2;
        if done || std::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let app = spans::named(&spans, "app operation").expect("the app's tracing span");
    let client_span = one(&spans, SpanKind::Client, "GET ot-t");
    let server_span = one(&spans, SpanKind::Server, "GET ot-t");
    let handler = spans::named(&spans, "handler work").expect("the handler's tracing span");
    let trace_id = app.span_context.trace_id();
    for s in [client_span, server_span, handler] {
        assert_eq!(s.span_context.trace_id(), trace_id, "{}", s.name);
    }
    assert_eq!(client_span.parent_span_id, app.span_context.span_id());
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id()
    );
    assert_eq!(handler.parent_span_id, server_span.span_context.span_id());
}

/// A retry and a mirror copy each get a client span of their own under
/// the request's; a request with one attempt has just the one span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_mirror_copies_are_child_spans_of_the_request() {
    let _turn = OTEL_TURN.lock().await;
    let collector = Collector::install();
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
    tokio::time::sleep(Duration::from_millis(200)).await;
    let spans = collector.finished();
    let request = one(&spans, SpanKind::Client, "GET rs-svc");
    let children: Vec<String> = spans::children(&spans, request.span_context.span_id())
        .iter()
        .filter(|s| s.span_kind == SpanKind::Client)
        .map(|s| s.name.to_string())
        .collect();
    for want in [
        "attempt 2 rs-flaky",
        "attempt 3 rs-flaky",
        "mirror rs-shadow",
    ] {
        assert!(
            children.iter().any(|c| c == want),
            "{want} missing from {children:?}"
        );
    }
    assert!(
        !children.iter().any(|c| c == "attempt 1 rs-flaky"),
        "{children:?}"
    );
    let retry = spans::named(&spans, "attempt 2 rs-flaky").unwrap();
    assert_eq!(
        spans::attribute(retry, "http.request.resend_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        spans::attribute(retry, "http.response.status_code").as_deref(),
        Some("503")
    );
}

/// OpenTelemetry's defaults: the no-op tracer provider, no propagator.
fn without_a_provider() {
    global::set_tracer_provider(opentelemetry::trace::noop::NoopTracerProvider::new());
    global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
        vec![],
    ));
}

/// Sends `req` (addressed to `http://{name}/`) through a mesh routing
/// `name` to an echo server of that name; what the server was sent.
async fn echoed(
    name: &'static str,
    req: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> serde_json::Value {
    let b = echo(name).await;
    let m = mesh(&format!(
        "services: [{{ name: {name}, routes: [{{ to: [{name}] }}] }}]\nbackends: [{{ name: {name}, endpoints: ['{}'] }}]",
        b.addr()
    ));
    let resp = Client::new(&m).request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// With no tracer provider (OpenTelemetry's no-op) and no propagator, the
/// caller's trace context still passes through the mesh to the next hop,
/// unchanged, in W3C headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_the_callers_context_passes_through() {
    let _turn = OTEL_TURN.lock().await;
    without_a_provider();
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let req = http::Request::get("http://np-b/")
        .header("traceparent", tp)
        .header("baggage", "tenant=t1")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let echoed = echoed("np-b", req).await;
    assert_eq!(echoed["headers"]["traceparent"], tp);
    assert_eq!(echoed["headers"]["baggage"], "tenant=t1");
}

/// With no global provider the mesh makes no span of its own, and it must
/// not touch the caller's: an application span (from a provider of its own,
/// not installed globally) given as the request's parent reaches the next
/// hop as the parent, and stays open until the application ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_provider_the_callers_span_is_neither_replaced_nor_ended() {
    use opentelemetry::trace::TracerProvider as _;
    let _turn = OTEL_TURN.lock().await;
    without_a_provider();
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let own = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let app = own.tracer("app").start("app work");
    let cx = Context::new().with_span(app);
    let mut req = http::Request::get("http://np-c/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    req.extensions_mut().insert(cx.clone());
    let echoed = echoed("np-c", req).await;
    let sc = cx.span().span_context().clone();
    assert_eq!(
        echoed["headers"]["traceparent"],
        format!("00-{}-{}-01", sc.trace_id(), sc.span_id()),
        "the app's span is the next hop's parent"
    );
    assert!(
        exporter.get_finished_spans().unwrap().is_empty(),
        "the mesh ended the caller's span"
    );
    cx.span().end();
    assert_eq!(exporter.get_finished_spans().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn spans_reach_a_real_otlp_collector_with_ids_parents_and_attributes() {
    use crate::support::{PeerStop, free_port, peer};
    let _turn = OTEL_TURN.lock().await;
    let (grpc, http_port) = (free_port(), free_port());
    peer(
        "setup-observability.sh",
        &["otlp", &grpc.to_string(), &http_port.to_string()],
    );
    let _stop = PeerStop(format!("otlp-{grpc}"));
    let exporter =
        proxyless_hyper::otlp::install(&format!("http://127.0.0.1:{grpc}"), "otlp-test").unwrap();
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
    drop(resp);
    // The server span finishes after the response is handed over.
    tokio::time::sleep(Duration::from_millis(100)).await;
    exporter.flush().await;

    let (_, spans) =
        crate::telemetry::get(format!("127.0.0.1:{http_port}").parse().unwrap(), "/spans").await;
    let spans: Vec<serde_json::Value> = serde_json::from_str(&spans).unwrap();
    let ours: Vec<&serde_json::Value> = spans
        .iter()
        .filter(|s| s["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736")
        .collect();
    let client = ours
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_CLIENT")
        .expect("a client span");
    let server = ours
        .iter()
        .find(|s| s["kind"] == "SPAN_KIND_SERVER")
        .expect("a server span");
    assert_eq!(ours.len(), 2, "{ours:#?}");
    assert_eq!(client["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(server["parent_span_id"], client["span_id"]);
    assert_eq!(client["name"], "GET ot-b");
    assert_eq!(client["service"], "otlp-test");
    assert_eq!(client["attributes"]["mesh.route"], "ot-route");
    assert_eq!(client["attributes"]["http.response.status_code"], "200");
    assert_eq!(server["attributes"]["url.path"], "/items/1");
    exporter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn opentelemetrys_python_sdk_continues_our_trace() {
    let _turn = OTEL_TURN.lock().await;
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
    let port = crate::support::free_port();
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

    let collector = Collector::install();
    let m = mesh(&format!(
        "services: [{{ name: sdk-peer, routes: [{{ to: [sdk-peer] }}] }}]\nbackends: [{{ name: sdk-peer, endpoints: ['127.0.0.1:{port}'] }}]"
    ));
    let resp = Client::new(&m).get("http://sdk-peer/").await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let read: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let spans = collector.finished();
    let ours = one(&spans, SpanKind::Client, "GET sdk-peer");
    assert_eq!(read["trace_id"], ours.span_context.trace_id().to_string());
    assert_eq!(
        read["parent_span_id"],
        ours.span_context.span_id().to_string()
    );
    assert_eq!(read["sampled"], true);
    assert_eq!(
        read["span_trace_id"], read["trace_id"],
        "the SDK continued our trace"
    );
}

/// A hedge gets a client span of its own under the request's; one that
/// loses the race ends marked `mesh.cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedge_that_loses_the_race_ends_its_span_marked_cancelled() {
    let _turn = OTEL_TURN.lock().await;
    let collector = Collector::install();
    let quiet = Mesh::empty();
    // Round robin: the first attempt goes to `medium` (answers in 80 ms),
    // the hedge after 20 ms to `slow` (300 ms), which loses.
    let medium = Echo::new("medium")
        .delay(Duration::from_millis(80))
        .start(&quiet, "127.0.0.1:0")
        .await
        .unwrap();
    let slow = Echo::new("slow")
        .delay(Duration::from_millis(300))
        .start(&quiet, "127.0.0.1:0")
        .await
        .unwrap();
    let m = mesh(&format!(
        r#"
services: [{{ name: ot-h, routes: [{{ hedge: {{ delay: 20ms, budget_percent: 100 }}, to: [v1] }}] }}]
backends: [{{ name: v1, endpoints: ["{}", "{}"], load_balancer: round_robin }}]
"#,
        medium.addr(),
        slow.addr()
    ));
    let client = Client::new(&m);
    let resp = client.get("http://ot-h/").await.unwrap();
    assert_eq!(resp.headers()["x-backend"], "medium");
    drop(resp);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let spans = loop {
        let spans = collector.finished();
        if spans.iter().any(|s| s.name == "attempt 2 v1") || std::time::Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let request = one(&spans, SpanKind::Client, "GET ot-h");
    let hedge = one(&spans, SpanKind::Client, "attempt 2 v1");
    assert_eq!(hedge.parent_span_id, request.span_context.span_id());
    assert_eq!(
        spans::attribute(hedge, "mesh.cancelled").as_deref(),
        Some("true"),
        "{hedge:#?}"
    );
    assert_eq!(spans::attribute(request, "mesh.cancelled"), None);
}
