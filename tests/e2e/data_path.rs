//! The HTTP data path over real sockets.

use crate::support::{echo, mesh, run, run_with};
use mesh::echo::Echo;
use proxyless_core::Mesh;
use proxyless_core::snapshot::Source;
use proxyless_hyper::Client;
use std::time::Duration;

fn split_yaml(a: &str, wa: u32, b: &str, wb: u32) -> String {
    format!(
        r#"
services: [{{ name: reviews, routes: [{{ to: [{{ backend: v1, weight: {wa} }}, {{ backend: v2, weight: {wb} }}] }}] }}]
backends:
  - {{ name: v1, endpoints: ["{a}"] }}
  - {{ name: v2, endpoints: ["{b}"] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_lands_within_tolerance() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let m = mesh(&split_yaml(
        &v1.addr().to_string(),
        90,
        &v2.addr().to_string(),
        10,
    ));
    let t = run(&Client::new(&m), "http://reviews/ratings/1", 4000, 16).await;
    assert_eq!(t.ok, 4000, "{t:?}");
    // 3 percentage points is six standard deviations at n = 4000.
    assert!((t.share("v1") - 0.9).abs() < 0.03, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_weight_change_shifts_traffic_without_a_failed_request() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let (a, b) = (v1.addr().to_string(), v2.addr().to_string());
    let m = mesh(&split_yaml(&a, 90, &b, 10));
    let client = Client::new(&m);
    let load = tokio::spawn({
        let client = client.clone();
        async move { run(&client, "http://reviews/", 6000, 16).await }
    });
    for (wa, wb) in [(50, 50), (0, 100)] {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let cfg = proxyless_core::config::Config::from_yaml(&split_yaml(&a, wa, &b, wb)).unwrap();
        m.update(cfg, Source::Code).unwrap();
    }
    let during = load.await.unwrap();
    assert_eq!(during.failed(), 0, "{during:?}");
    let after = run(&client, "http://reviews/", 500, 8).await;
    assert_eq!(after.by_backend.get("v2"), Some(&500), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_lift_a_ten_percent_failing_backend_above_99_5_percent() {
    let v1 = Echo::new("v1")
        .fail_rate(0.1)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let m = mesh(&format!(
        r#"
services:
  - name: reviews
    routes: [{{ retry: {{ attempts: 3, on: [5xx], backoff: {{ base: 1ms, max: 5ms }} }}, to: [v1] }}]
backends: [{{ name: v1, endpoints: ["{}"] }}]
"#,
        v1.addr()
    ));
    let client = Client::new(&m);
    let t = run(&client, "http://reviews/", 4000, 16).await;
    let success = f64::from(t.ok) / 4000.0;
    assert!(success > 0.995, "success {success}: {t:?}");
    assert!(
        v1.failed() > 200,
        "the backend did fail about 10%: {}",
        v1.failed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_retries_against_a_backend_that_always_fails() {
    let v1 = Echo::new("v1")
        .fail_rate(1.0)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let m = mesh(&format!(
        r#"
defaults: {{ retry_budget: {{ ratio: 0.2, min_per_second: 10, ttl: 10s }} }}
services:
  - name: reviews
    routes: [{{ retry: {{ attempts: 10, on: [5xx], backoff: {{ base: 1ms, max: 1ms }} }}, to: [v1] }}]
backends: [{{ name: v1, endpoints: ["{}"] }}]
"#,
        v1.addr()
    ));
    let client = Client::new(&m);
    let n = 1000;
    let t = run(&client, "http://reviews/", n, 16).await;
    assert_eq!(t.errors.get("http_503"), Some(&n), "{t:?}");
    // Without a budget, 10 attempts would mean 10,000 requests.
    let bound = u64::from(n) * 2 / 10 + 10 * 10;
    let retries = v1.served() - u64::from(n);
    // At a second boundary the budget may lose a count to a racing caller:
    // at most one per concurrent request.
    assert!(retries <= bound + 16, "retries {retries} > budget {bound}");
    assert!(
        retries >= bound * 8 / 10,
        "the budget should be used: {retries}"
    );
}

fn outlier_yaml(endpoints: &[String], retry: bool) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let retry = if retry {
        "retry: { attempts: 3, on: [connect-failure, 5xx], backoff: { base: 1ms, max: 2ms } },"
    } else {
        ""
    };
    format!(
        r#"
defaults: {{ connect_timeout: 200ms }}
services: [{{ name: reviews, routes: [{{ {retry} to: [v1] }}] }}]
backends:
  - name: v1
    endpoints: [{}]
    load_balancer: round_robin
    outlier_detection: {{ consecutive_5xx: 3, base_ejection: 1s, max_ejection_percent: 100 }}
"#,
        eps.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_endpoints_all_fail_trips_the_breaker() {
    let a = Echo::new("a")
        .fail_rate(1.0)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let b = Echo::new("b")
        .fail_rate(1.0)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let m = mesh(&outlier_yaml(
        &[a.addr().to_string(), b.addr().to_string()],
        false,
    ));
    let client = Client::new(&m);
    let t = run(&client, "http://reviews/", 30, 1).await;
    assert_eq!(
        t.errors.get("http_503"),
        Some(&6),
        "3 failures per endpoint, then ejection: {t:?}"
    );
    assert_eq!(t.errors.get("circuit_open"), Some(&24), "{t:?}");
    // Refused requests never reached the endpoints.
    assert_eq!(a.served() + b.served(), 6);
    let err = client.get("http://reviews/").await.unwrap_err();
    assert!(
        err.to_string().contains("every endpoint is ejected"),
        "{err}"
    );
    // As a response, for callers that want one.
    let resp = client
        .clone()
        .refusals_as_responses()
        .get("http://reviews/")
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["x-mesh-error"], "circuit_open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_endpoint_is_ejected_and_returns_when_it_comes_back() {
    let mut servers = Vec::new();
    for name in ["a", "b", "c"] {
        servers.push(echo(name).await);
    }
    let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let m = mesh(&outlier_yaml(&addrs, true));
    let client = Client::new(&m);
    let before = run(&client, "http://reviews/", 300, 4).await;
    assert_eq!(before.by_backend.len(), 3, "{before:?}");

    // Crash `a`: its port refuses connections.
    let crashed = servers.remove(0);
    let addr = crashed.addr();
    crashed.stop().await;
    let during = run(&client, "http://reviews/", 300, 4).await;
    assert_eq!(
        during.failed(),
        0,
        "retries and ejection hide the crash: {during:?}"
    );
    assert_eq!(during.by_backend.get("a"), None);
    assert!(
        client
            .runtime()
            .stats()
            .ejections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // Bring it back on the same port; after the ejection time it gets traffic again.
    let back = Echo::new("a").start(&Mesh::empty(), addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = run(&client, "http://reviews/", 300, 4).await;
    assert_eq!(after.failed(), 0, "{after:?}");
    let share = after.share("a");
    assert!(share > 0.2, "the endpoint is back in rotation: {after:?}");
    drop(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_sends_less_traffic_to_a_slow_endpoint() {
    let fast = echo("fast").await;
    let slow = Echo::new("slow")
        .delay(Duration::from_millis(20))
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ to: [v1] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{}', '{}'] }}]",
        fast.addr(),
        slow.addr()
    ));
    let t = run(&Client::new(&m), "http://reviews/", 1000, 8).await;
    assert_eq!(t.ok, 1000);
    assert!(t.share("fast") > 0.8, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_keys_on_their_endpoint() {
    let servers = [echo("a").await, echo("b").await, echo("c").await];
    let eps: Vec<String> = servers.iter().map(|s| format!("'{}'", s.addr())).collect();
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ to: [v1] }}] }}]\nbackends: [{{ name: v1, endpoints: [{}], load_balancer: {{ maglev: {{ header: x-user }} }} }}]",
        eps.join(", ")
    ));
    let client = Client::new(&m);
    let mut homes = std::collections::BTreeMap::new();
    for user in 0..30 {
        let t = run_with(&client, 10, 2, move |_| {
            http::Request::get("http://reviews/").header("x-user", format!("user-{user}"))
        })
        .await;
        assert_eq!(t.by_backend.len(), 1, "user-{user} moved: {t:?}");
        *homes
            .entry(t.by_backend.keys().next().unwrap().clone())
            .or_insert(0) += 1;
    }
    assert_eq!(homes.len(), 3, "keys spread over every endpoint: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_fires_and_a_meshed_server_honours_the_deadline() {
    let slow = Echo::new("slow")
        .delay(Duration::from_millis(2000))
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ timeout: 150ms, to: [v1] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{}'] }}]",
        slow.addr()
    ));
    let started = std::time::Instant::now();
    let result = Client::new(&m).get("http://reviews/").await;
    let took = started.elapsed();
    // Client and server share one deadline; whichever fires first answers:
    // the client's timeout, or the meshed server's 504 naming it.
    match result {
        Err(e) => assert_eq!(
            proxyless_tower::error::ErrorKind::of(&*e),
            proxyless_tower::error::ErrorKind::Timeout,
            "{e}"
        ),
        Ok(resp) => {
            assert_eq!(resp.status(), 504);
            assert_eq!(resp.headers()["x-mesh-error"], "timeout");
        }
    }
    assert!(
        took >= Duration::from_millis(140) && took < Duration::from_millis(1500),
        "{took:?}"
    );

    // The server side: a caller's x-mesh-timeout-ms bounds the handler.
    let bare = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(format!("http://{}/", slow.addr()))
        .header("x-mesh-timeout-ms", "100")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = bare.request(req).await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-mesh-error"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_header_reaches_the_upstream() {
    let v1 = echo("v1").await;
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ timeout: 2s, to: [v1] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{}'] }}]",
        v1.addr()
    ));
    let resp = Client::new(&m).get("http://reviews/x").await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ms: u64 = json["headers"]["x-mesh-timeout-ms"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms > 1000 && ms <= 2000, "{ms}");
    assert_eq!(json["headers"]["host"], "reviews");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_percentages_hold() {
    let v1 = echo("v1").await;
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ fault: {{ abort: {{ status: 503, percent: 20 }} }}, to: [v1] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{}'] }}]",
        v1.addr()
    ));
    let t = run(&Client::new(&m), "http://reviews/", 2000, 8).await;
    let aborted = t.errors.get("http_503").copied().unwrap_or(0);
    assert!((320..480).contains(&aborted), "20% of 2000 aborted: {t:?}");
    assert_eq!(
        u64::from(2000 - aborted),
        v1.served(),
        "aborted requests never left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_pass_through_and_an_empty_mesh_breaks_nothing() {
    let v1 = echo("direct").await;
    let m = mesh(
        "services: [{ name: reviews, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]",
    );
    for mesh in [m, Mesh::empty()] {
        let resp = Client::new(&mesh)
            .get(&format!("http://{}/", v1.addr()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-backend"], "direct");
    }
    let refuse = mesh("defaults: { unknown_hosts: refuse }");
    let resp = Client::new(&refuse)
        .refusals_as_responses()
        .get(&format!("http://{}/", v1.addr()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-mesh-error"], "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_backends_are_reached_over_h2c() {
    let v1 = echo("h2").await;
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ to: [v1] }}] }}]\nbackends: [{{ name: v1, protocol: http2, endpoints: ['{}'] }}]",
        v1.addr()
    ));
    let resp = Client::new(&m).get("http://reviews/").await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-backend"], "h2");
}

/// The longest durations a config may hold, and the largest deadlines a
/// caller can send, serve requests: no `Instant + Duration` overflows.
/// (A route timeout of `18446744073709551615s` used to validate and then
/// panic every request.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_durations_and_deadlines_serve_without_a_panic() {
    let v1 = echo("v1").await;
    let m = mesh(&format!(
        r#"
defaults: {{ timeout: 8760h }}
services:
  - name: reviews
    routes:
      - timeout: 8760h
        retry: {{ attempts: 3, per_try_timeout: 8760h, backoff: {{ base: 8760h, max: 8760h }} }}
        fault: {{ delay: {{ fixed: 8760h, percent: 0 }} }}
        to: [v1]
backends:
  - name: v1
    endpoints: ["{}"]
    outlier_detection: {{ base_ejection: 8760h, max_ejection: 8760h }}
"#,
        v1.addr()
    ));
    let c = Client::new(&m);
    let t = run(&c, "http://reviews/ratings/1", 50, 4).await;
    assert_eq!(t.ok, 50, "{t:?}");
    // Unknown hosts take the default timeout.
    let t = run(&c, &format!("http://{}/x", v1.addr()), 5, 1).await;
    assert_eq!(t.ok, 5, "{t:?}");
    // A longer one, built in code, is refused by name.
    let mut cfg = m.snapshot().config().clone();
    cfg.services[0].routes[0].timeout = Some(Duration::MAX);
    let err = m.update(cfg, Source::Code).unwrap_err().to_string();
    assert!(err.contains("timeout") && err.contains("365 days"), "{err}");
    // A caller's deadline headers at their largest.
    for (name, value) in [
        ("x-mesh-timeout-ms", "18446744073709551615"),
        ("grpc-timeout", "99999999H"),
    ] {
        let req = http::Request::get(format!("http://{}/x", v1.addr()))
            .header(name, value)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http()
                .request(req)
                .await
                .unwrap();
        assert_eq!(resp.status(), 200, "{name}: {value}");
    }
}

/// After both endpoints of a backend fail for a few seconds, two identical
/// endpoints share traffic evenly again within seconds of recovery. (The
/// failure penalty used to compound to 10^13 ms and keep them 74/26 for
/// minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_forgets_an_outage_within_seconds() {
    let (a, b) = (echo("a").await, echo("b").await);
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ to: [v1] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{}', '{}'] }}]",
        a.addr(),
        b.addr()
    ));
    let c = Client::new(&m);
    a.set_fail_rate(1.0);
    b.set_fail_rate(1.0);
    let outage = std::time::Instant::now();
    while outage.elapsed() < Duration::from_secs(3) {
        let t = run(&c, "http://reviews/", 200, 4).await;
        assert_eq!(t.ok, 0, "{t:?}");
    }
    let backend = c.runtime().backend(&m.snapshot(), 0).unwrap();
    for ep in backend.endpoints.iter() {
        assert!(
            ep.latency() <= proxyless_core::policy::ewma::MAX_FAILURE_PENALTY,
            "{}: {:?}",
            ep.address,
            ep.latency()
        );
    }
    a.set_fail_rate(0.0);
    b.set_fail_rate(0.0);
    let recovery = std::time::Instant::now();
    while recovery.elapsed() < Duration::from_secs(2) {
        run(&c, "http://reviews/", 200, 4).await;
    }
    let t = run(&c, "http://reviews/", 2000, 4).await;
    assert_eq!(t.ok, 2000, "{t:?}");
    let share = t.share("a");
    assert!((0.3..=0.7).contains(&share), "a got {share} of 2000: {t:?}");
}

/// An application's own config source (the seam a DNS or Consul source
/// uses): attached to the mesh, it is asked for a host's config on the
/// host's first call, publishes one, and the waiting request is routed by
/// it; its status is the mesh's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_own_config_source_answers_a_hosts_first_call() {
    use proxyless_core::source::ConfigSource;
    use std::sync::Arc;

    #[derive(Debug)]
    struct Directory {
        ask: tokio::sync::mpsc::UnboundedSender<(String, tokio::sync::oneshot::Sender<()>)>,
        asked: std::sync::atomic::AtomicU32,
    }
    impl ConfigSource for Directory {
        fn demand(&self, authority: &str) -> Option<proxyless_core::DemandWait> {
            self.asked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (done, wait) = tokio::sync::oneshot::channel();
            self.ask.send((authority.to_owned(), done)).ok()?;
            Some(Box::pin(async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
            }))
        }
        fn status(&self) -> Option<serde_json::Value> {
            Some(serde_json::json!({ "kind": "directory" }))
        }
    }

    let backend = Echo::new("dir-v1")
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap();
    let mesh = Mesh::empty();
    let (ask, mut asks) = tokio::sync::mpsc::unbounded_channel();
    let source = Arc::new(Directory {
        ask,
        asked: Default::default(),
    });
    mesh.attach_source(source.clone()).unwrap();
    // The directory: any host it is asked about is served by the backend.
    let publisher = mesh.clone();
    let addr = backend.addr();
    tokio::spawn(async move {
        while let Some((host, done)) = asks.recv().await {
            let host = proxyless_core::route::host_of(&host).to_owned();
            let yaml = format!(
                "services: [{{ name: {host}, routes: [{{ to: [dir-v1] }}] }}]\nbackends: [{{ name: dir-v1, endpoints: ['{addr}'] }}]"
            );
            let config = proxyless_core::config::Config::from_yaml(&yaml).unwrap();
            publisher
                .update(config, proxyless_core::snapshot::Source::Code)
                .unwrap();
            let _ = done.send(());
        }
    });
    let client = Client::new(&mesh);
    let resp = client.get("http://catalog/items").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-backend"], "dir-v1");
    assert_eq!(source.asked.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(mesh.source_status().unwrap()["kind"], "directory");
    // A second source is refused.
    assert!(mesh.attach_source(source.clone()).is_err());
}

/// A config source that never answers (and would be asked forever) cannot
/// hold a request: it is asked once per request, and the wait is bounded
/// by the default timeout.
#[tokio::test]
async fn a_source_that_never_answers_is_asked_once_and_bounded() {
    use proxyless_core::source::ConfigSource;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, Default)]
    struct Silent(AtomicU32);
    impl ConfigSource for Silent {
        fn demand(&self, _authority: &str) -> Option<proxyless_core::DemandWait> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Some(Box::pin(std::future::pending()))
        }
    }

    let m = mesh("defaults: { timeout: 300ms }");
    let silent = Arc::new(Silent::default());
    m.attach_source(silent.clone()).unwrap();
    let client = Client::new(&m).refusals_as_responses();
    let started = std::time::Instant::now();
    // Passed through after the wait: an address nothing listens on.
    let port = crate::support::free_port();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client.get(&format!("http://localhost:{port}/")),
    )
    .await
    .expect("the request ends by itself");
    assert!(resp.is_ok_and(|r| r.status() == 503));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(silent.0.load(Ordering::Relaxed), 1);
}
