//! Resilience beyond the peers, over real sockets: deadline-aware retries
//! and classification in code.

use crate::support::mesh;
use mesh::echo::Echo;
use proxyless_core::Mesh;
use proxyless_core::policy::classify::{self, Attempt, Class};
use proxyless_hyper::Client;
use proxyless_tower::error::{RetrySkipped, SkippedAttempt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A route to `addr` with `timeout`, retrying 5xx up to three attempts
/// with a backoff of a millisecond.
fn retrying(addr: &str, timeout: &str) -> String {
    format!(
        r#"
services:
  - name: ratings
    routes:
      - timeout: {timeout}
        retry: {{ attempts: 3, on: [5xx], backoff: {{ base: 1ms, max: 1ms }} }}
        to: [slow]
backends:
  - {{ name: slow, endpoints: ["{addr}"] }}
"#
    )
}

/// A backend that fails every request after 200 ms. With 300 ms of
/// deadline the first attempt fails at about 200 ms and a retry (which
/// takes 200 ms) cannot answer in the 100 ms left: it is not sent, and the
/// caller gets the 503 at once instead of a timeout at 300 ms. With 1 s the
/// retries are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_cannot_answer_before_the_deadline_is_not_sent() {
    let slow = Echo::new("slow")
        .delay(Duration::from_millis(200))
        .fail_rate(1.0)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let addr = slow.addr().to_string();

    let short = Client::new(&mesh(&retrying(&addr, "300ms")));
    let started = Instant::now();
    let resp = short.request(get("http://ratings/x")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 503, "the last real result");
    assert_eq!(slow.served(), 1, "one attempt reached the backend");
    assert!(
        took < Duration::from_millis(300),
        "answered before the deadline: {took:?}"
    );
    let skipped = resp.extensions().get::<RetrySkipped>().copied();
    let skipped = skipped.expect("the response says a retry was skipped");
    assert_eq!(skipped.attempt, SkippedAttempt::Retry);
    assert_eq!(skipped.attempts, 1);
    assert!(
        skipped.expected >= Duration::from_millis(190),
        "{skipped:?}"
    );
    assert!(
        skipped.remaining < Duration::from_millis(110),
        "{skipped:?}"
    );
    let stats = short.runtime().stats();
    assert_eq!(stats.hopeless_skipped.load(Ordering::Relaxed), 1);
    assert_eq!(stats.retries.load(Ordering::Relaxed), 0);

    let long = Client::new(&mesh(&retrying(&addr, "1s")));
    let resp = long.request(get("http://ratings/x")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(slow.served(), 1 + 3, "all three attempts were sent");
    assert!(resp.extensions().get::<RetrySkipped>().is_none());
    let stats = long.runtime().stats();
    assert_eq!(stats.retries.load(Ordering::Relaxed), 2);
    assert_eq!(stats.hopeless_skipped.load(Ordering::Relaxed), 0);
}

/// A server that answers every request 200, with `x-overloaded: 1` when
/// `overloaded`; it counts what it answers.
async fn answering(overloaded: bool) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        seen.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut resp = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            if overloaded {
                resp.headers_mut()
                    .insert("x-overloaded", http::HeaderValue::from_static("1"));
            }
            Ok::<_, proxyless_tower::BoxError>(resp)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = proxyless_hyper::Server::new(&Mesh::empty());
    tokio::spawn(async move { server.serve(listener, handler).await });
    (addr, count)
}

/// Sends `n` GETs to `http://ratings/x` one after another; each must be a
/// 200. How many carried `x-overloaded`.
async fn overloaded_answers(client: &Client, n: u32) -> u32 {
    let mut overloaded = 0;
    for _ in 0..n {
        let resp = client.request(get("http://ratings/x")).await.unwrap();
        assert_eq!(resp.status(), 200);
        overloaded += u32::from(resp.headers().contains_key("x-overloaded"));
    }
    overloaded
}

fn get(url: &str) -> http::Request<String> {
    http::Request::get(url).body(String::new()).unwrap()
}

/// The issue's test: a backend endpoint that answers 200 with
/// `x-overloaded: 1`; a classifier registered in code marks that
/// retryable; a route names it in config. Retries go to the other
/// endpoint, and outlier detection ejects the overloaded one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classifier_in_code_drives_retries_and_ejection() {
    classify::register("e2e-overloaded", |a: &Attempt<'_>| match a {
        Attempt::Response { headers, .. } if headers.contains_key("x-overloaded") => {
            Class::RetryableFailure
        }
        a => a.default_class(),
    })
    .unwrap();
    let (hot, hot_count) = answering(true).await;
    let (cool, cool_count) = answering(false).await;
    let yaml = |classifier: &str| {
        format!(
            r#"
services:
  - name: ratings
    routes:
      - retry: {{ attempts: 3, backoff: {{ base: 1ms, max: 1ms }} }}
        {classifier}
        to: [pool]
backends:
  - name: pool
    load_balancer: round_robin
    endpoints: ["{hot}", "{cool}"]
    outlier_detection: {{ consecutive_5xx: 3, base_ejection: 30s, max_ejection_percent: 50 }}
"#
        )
    };
    let client = Client::new(&mesh(&yaml("classifier: e2e-overloaded")));
    assert_eq!(
        overloaded_answers(&client, 200).await,
        0,
        "every overloaded answer was retried elsewhere"
    );
    let stats = client.runtime().stats();
    assert!(stats.retries.load(Ordering::Relaxed) >= 1);
    assert_eq!(
        stats.ejections.load(Ordering::Relaxed),
        1,
        "the overloaded endpoint is ejected"
    );
    // Ejected after three overloaded answers: the hot endpoint saw a few
    // requests, the cool one the rest.
    let hot_seen = hot_count.load(Ordering::Relaxed);
    assert!((3..=6).contains(&hot_seen), "hot endpoint saw {hot_seen}");
    assert_eq!(cool_count.load(Ordering::Relaxed), 200);

    // The default classification (no classifier): a 200 is a success,
    // whatever its headers, as before.
    let plain = Client::new(&mesh(&yaml("")));
    assert_eq!(
        overloaded_answers(&plain, 20).await,
        10,
        "round robin: half from each, none retried"
    );
    assert_eq!(plain.runtime().stats().retries.load(Ordering::Relaxed), 0);
}

/// A config naming a classifier no code registered is refused by name,
/// and the running config keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_naming_an_unregistered_classifier_is_refused() {
    let yaml = r#"
services:
  - name: ratings
    classifier: e2e-nobody-registered-this
    routes: [{ to: [b] }]
backends: [{ name: b, endpoints: ["127.0.0.1:1"] }]
"#;
    let cfg = proxyless_core::config::Config::from_yaml(yaml).unwrap();
    let err = Mesh::from_config(cfg.clone()).unwrap_err().to_string();
    assert!(
        err.contains("services[0].classifier") && err.contains("e2e-nobody-registered-this"),
        "{err}"
    );
    let m = Mesh::empty();
    let before = m.snapshot().version();
    assert!(
        m.update(cfg, proxyless_core::snapshot::Source::Code)
            .is_err()
    );
    assert_eq!(m.snapshot().version(), before, "the running config stays");
}

/// A server of eight workers that each take 10 ms: beyond eight requests
/// at once, the rest queue, and latency grows with concurrency.
async fn eight_workers() -> std::net::SocketAddr {
    let workers = Arc::new(tokio::sync::Semaphore::new(8));
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let workers = workers.clone();
        async move {
            let _worker = workers.acquire().await?;
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, proxyless_tower::BoxError>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::new(),
            )))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = proxyless_hyper::Server::new(&Mesh::empty());
    tokio::spawn(async move { server.serve(listener, handler).await });
    addr
}

/// 48 callers for `run`; the latencies of the answers after `settle`, and
/// the refusals.
async fn load(client: &Client, run: Duration, settle: Duration) -> (Vec<Duration>, u64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (mut answered, mut refused) = (Vec::new(), 0u64);
            while started.elapsed() < run {
                let t = Instant::now();
                match client.request(get("http://slow/x")).await {
                    Ok(r) if r.status() == 200 => {
                        if started.elapsed() > settle {
                            answered.push(t.elapsed());
                        }
                    }
                    _ => {
                        refused += 1;
                        // Shed: the caller backs off a little.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            (answered, refused)
        }));
    }
    let (mut all, mut refused) = (Vec::new(), 0);
    for t in tasks {
        let (a, r) = t.await.unwrap();
        all.extend(a);
        refused += r;
    }
    all.sort();
    (all, refused)
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// The issue's test: a backend whose latency grows with concurrency (eight
/// workers of 10 ms) under 48 callers. With an adaptive limit the limit
/// settles near the knee (the theory: about 13) and p99 stays near the
/// service time; with the fixed default limit every caller queues and p99
/// grows to about 48 / 8 x 10 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_limit_finds_the_knee_and_bounds_p99_where_a_fixed_one_does_not() {
    let addr = eight_workers().await;
    let yaml = |adaptive: &str| {
        format!(
            r#"
services: [{{ name: slow, routes: [{{ timeout: 5s, to: [pool] }}] }}]
backends:
  - name: pool
    endpoints: ["{addr}"]
    {adaptive}
"#
        )
    };
    let (run, settle) = (Duration::from_millis(2500), Duration::from_millis(1200));

    let fixed = Client::new(&mesh(&yaml("")));
    let (fixed_lat, fixed_refused) = load(&fixed, run, settle).await;
    assert_eq!(fixed_refused, 0, "nothing is shed under the fixed limit");

    let m = mesh(&yaml(
        "adaptive_concurrency: { window: 50ms, probe_interval: 1h }",
    ));
    let adaptive = Client::new(&m);
    let (lat, refused) = load(&adaptive, run, settle).await;
    let backend = adaptive.runtime().backend(&m.snapshot(), 0).unwrap();
    let limit = backend.state.adaptive_limit().unwrap();
    assert!((6..=24).contains(&limit), "the limit settled at {limit}");
    assert!(refused > 0, "the excess was shed");
    let (p99_fixed, p99_adaptive) = (p99(&fixed_lat), p99(&lat));
    assert!(
        p99_fixed >= Duration::from_millis(40),
        "fixed p99 {p99_fixed:?}"
    );
    assert!(
        p99_adaptive * 2 < p99_fixed,
        "adaptive p99 {p99_adaptive:?} against fixed {p99_fixed:?} (limit {limit})"
    );
    // Both served: the adaptive run is not faster by serving nothing.
    assert!(
        lat.len() * 2 > fixed_lat.len(),
        "{} against {}",
        lat.len(),
        fixed_lat.len()
    );
    // The admin server's /clusters shows the limit.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    let admin = proxyless_hyper::admin::Admin::new(&m).with_client(&adaptive);
    tokio::spawn(admin.serve(listener));
    let (status, clusters) = crate::telemetry::get(admin_addr, "/clusters").await;
    assert_eq!(status, 200);
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    assert_eq!(
        clusters["backends"][0]["adaptive_concurrency_limit"],
        serde_json::json!([limit]),
        "{clusters}"
    );
    eprintln!(
        "adaptive limit {limit}; p99 {p99_adaptive:?} (fixed {p99_fixed:?}); answered {} (fixed {}); shed {refused}",
        lat.len(),
        fixed_lat.len()
    );
}

/// The metrics of all three, from one run under the testing kit (paused
/// time, a recorder local to this thread): a skipped hopeless retry, the
/// responses a classifier judged otherwise than the default, the adaptive
/// limit and its refusals.
#[tokio::test(start_paused = true)]
async fn skips_reclassifications_and_the_adaptive_limit_are_in_the_metrics() {
    use proxyless_tower::testing::{Endpoint, Latency, Sim};
    classify::register("e2e-metrics-overloaded", |a: &Attempt<'_>| match a {
        Attempt::Response { status, .. } if status.as_u16() == 429 => Class::RetryableFailure,
        a => a.default_class(),
    })
    .unwrap();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let ms = Duration::from_millis;
    let sim = Sim::new(4)
        .endpoint(
            "10.0.0.1:80",
            Endpoint::new().latency(Latency::Fixed(ms(200))).errors(1.0),
        )
        .endpoint(
            "10.0.0.2:80",
            Endpoint::new()
                .errors(1.0)
                .error_status(http::StatusCode::TOO_MANY_REQUESTS),
        )
        .endpoint(
            "10.0.0.3:80",
            Endpoint::new().latency(Latency::Fixed(ms(10))).workers(2),
        );
    let m = mesh(
        r#"
services:
  - name: slow
    routes: [{ name: r, timeout: 250ms, retry: { attempts: 3, on: [5xx], backoff: { base: 1ms, max: 1ms } }, to: [slow] }]
  - name: shedding
    classifier: e2e-metrics-overloaded
    routes: [{ name: r, retry: { attempts: 2 }, to: [shedding] }]
  - name: small
    routes: [{ name: r, timeout: 5s, to: [small] }]
backends:
  - { name: slow, endpoints: ["10.0.0.1:80"] }
  - { name: shedding, endpoints: ["10.0.0.2:80"] }
  - name: small
    endpoints: ["10.0.0.3:80"]
    adaptive_concurrency: { window: 20ms, min_limit: 1, initial_limit: 2 }
"#,
    );
    let client = sim.client(&m).pause_after_refusal(ms(1));
    client.run(2, 1, |_| "http://slow/").await;
    client.run(3, 1, |_| "http://shedding/").await;
    client.run(500, 8, |_| "http://small/").await;
    let text = handle.render();
    let has = |line: &str| text.lines().any(|l| l.starts_with(line));
    assert!(
        has(
            r#"mesh_attempts_skipped_total{service="slow",route="r",backend="slow",attempt="retry",reason="deadline"} 2"#
        ),
        "{text}"
    );
    assert!(
        has(r#"mesh_reclassified_total{backend="shedding",as="failure"} 6"#),
        "{text}"
    );
    assert!(
        has(r#"mesh_adaptive_concurrency_limit{backend="small"}"#),
        "{text}"
    );
    assert!(
        has(
            r#"mesh_circuit_breaker_rejections_total{backend="small",reason="adaptive_concurrency"}"#
        ),
        "{text}"
    );
}
