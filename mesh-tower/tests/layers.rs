//! Unit tests of each layer over tower-test mocks, with paused time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use bytes::Bytes;
use http::{Request, Response};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_tower::body::MeshBody;
use proxyless_tower::error::ErrorKind;
use proxyless_tower::ext::{DEADLINE_HEADER, Served};
use proxyless_tower::{BoxError, MeshLayer};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Mock = mock::Mock<Request<MeshBody>, Response<String>>;
type Handle = mock::Handle<Request<MeshBody>, Response<String>>;

fn mesh(yaml: &str) -> Mesh {
    Mesh::from_config(Config::from_yaml(yaml).unwrap()).unwrap()
}

fn stack(yaml: &str) -> (proxyless_tower::MeshService<Mock>, Handle, MeshLayer) {
    let (svc, handle): (Mock, Handle) = mock::pair();
    let layer = MeshLayer::new(mesh(yaml)).with_served();
    (layer.layer(svc), handle, layer)
}

fn get(uri: &str) -> Request<String> {
    Request::get(uri).body(String::new()).unwrap()
}

fn status(code: u16) -> Response<String> {
    Response::builder()
        .status(code)
        .body(String::new())
        .unwrap()
}

/// Answers every request the mock receives with `f`, until the handle drops.
fn serve(
    mut handle: Handle,
    f: impl Fn(&Request<MeshBody>) -> Result<Response<String>, BoxError> + Send + 'static,
) {
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            match f(&req) {
                Ok(r) => send.send_response(r),
                Err(e) => send.send_error(e),
            }
        }
    });
}

const RETRY: &str = r#"
services:
  - name: api
    routes:
      - retry: { attempts: 5, on: [5xx], backoff: { base: 1ms, max: 2ms } }
        to: [b]
backends:
  - { name: b, endpoints: ["127.0.0.1:1", "127.0.0.1:2"] }
"#;

/// Every attempt carries what the caller put in the request (its headers
/// and extensions) and the mesh's own decision, marked with its attempt.
#[tokio::test(start_paused = true)]
async fn every_attempt_carries_the_callers_extensions_and_headers() {
    #[derive(Clone, Debug, PartialEq)]
    struct Tenant(&'static str);
    for with_extension in [true, false] {
        let (svc, handle, _) = stack(RETRY);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        serve(handle, move |req| {
            let a = proxyless_tower::ext::routed(req).unwrap().attempt();
            log.lock().unwrap().push((
                a,
                req.extensions().get::<Tenant>().cloned(),
                req.headers().get("x-user").cloned(),
            ));
            Ok(status(if a < 3 { 503 } else { 200 }))
        });
        let mut req = get("http://api/x");
        req.headers_mut()
            .insert("x-user", http::HeaderValue::from_static("ana"));
        if with_extension {
            req.extensions_mut().insert(Tenant("t1"));
        }
        assert_eq!(svc.oneshot(req).await.unwrap().status(), 200);
        let seen = seen.lock().unwrap();
        let attempts: Vec<u32> = seen.iter().map(|s| s.0).collect();
        assert_eq!(attempts, [1, 2, 3]);
        for (_, tenant, user) in seen.iter() {
            assert_eq!(tenant.as_ref(), with_extension.then_some(&Tenant("t1")));
            assert_eq!(user.as_ref().map(|v| v.as_bytes()), Some(&b"ana"[..]));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn retries_a_5xx_on_another_endpoint_until_success() {
    let (svc, handle, _) = stack(RETRY);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    serve(handle, move |req| {
        let a = proxyless_tower::ext::routed(req).unwrap();
        log.lock()
            .unwrap()
            .push((a.attempt(), req.uri().authority().unwrap().to_string()));
        Ok(status(if a.attempt() < 3 { 503 } else { 200 }))
    });
    let resp = svc.oneshot(get("http://api/x")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.extensions().get::<Served>().map(|s| s.attempts),
        Some(3)
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for w in seen.windows(2) {
        assert_ne!(
            w[0].1, w[1].1,
            "a retry went to the endpoint that just failed: {seen:?}"
        );
    }
}

/// A retry budget of 20% plus 1/s over 10 s, and a service `api` whose
/// route retries 5xx up to 10 attempts (services may follow).
const BUDGETED: &str = r#"
defaults: { retry_budget: { ratio: 0.2, min_per_second: 1, ttl: 10s } }
services:
  - name: api
    routes:
      - retry: { attempts: 10, on: [5xx], backoff: { base: 1ms, max: 1ms } }
        to: [b]
"#;

const ONE_BACKEND: &str = r#"backends: [{ name: b, endpoints: ["127.0.0.1:1"] }]"#;

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_retries_to_ratio_plus_floor() {
    let (svc, handle, layer) = stack(&format!("{BUDGETED}{ONE_BACKEND}"));
    serve(handle, |_| Ok(status(503)));
    for _ in 0..200 {
        let resp = svc.clone().oneshot(get("http://api/")).await.unwrap();
        assert_eq!(resp.status(), 503);
    }
    let stats = layer.runtime().stats();
    let retries = stats.retries.load(Ordering::Relaxed);
    // 20% of 200 requests plus 1/s over the 10 s window.
    assert!(retries <= 40 + 10, "retries {retries}");
    assert!(
        retries >= 40,
        "the budget should allow its ratio: retries {retries}"
    );
    assert!(stats.budget_exhausted.load(Ordering::Relaxed) > 0);
}

/// Requests on a route that never retries (sent past the retry layer)
/// still count toward the budget that retrying routes draw from.
#[tokio::test(start_paused = true)]
async fn requests_that_never_retry_still_fill_the_budget() {
    let plain = "  - name: plain\n    routes: [{ to: [b] }]\n";
    let (svc, handle, layer) = stack(&format!("{BUDGETED}{plain}{ONE_BACKEND}"));
    serve(handle, |req| {
        let plain = req.headers()[http::header::HOST] == "plain";
        Ok(status(if plain { 200 } else { 503 }))
    });
    for _ in 0..200 {
        let resp = svc.clone().oneshot(get("http://plain/")).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Ten failing requests want 90 retries.
    for _ in 0..10 {
        let resp = svc.clone().oneshot(get("http://api/")).await.unwrap();
        assert_eq!(resp.status(), 503);
    }
    let stats = layer.runtime().stats();
    assert_eq!(stats.requests.load(Ordering::Relaxed), 210);
    let retries = stats.retries.load(Ordering::Relaxed);
    // 20% of 210 requests plus 1/s over the 10 s window; without the plain
    // requests' share it would be 12 at most.
    assert!((42..=52).contains(&retries), "retries {retries}");
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_methods_and_streaming_bodies_are_sent_once() {
    let (svc, handle, _) = stack(RETRY);
    serve(handle, |_| Ok(status(503)));
    let post = Request::post("http://api/x")
        .body(String::from("payload"))
        .unwrap();
    let resp = svc.clone().oneshot(post).await.unwrap();
    assert_eq!(
        resp.extensions().get::<Served>().map(|s| s.attempts),
        Some(1)
    );

    // A body of unknown length cannot be replayed.
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
    tokio::spawn(async move {
        let _ = tx.send_data(Bytes::from_static(b"chunk")).await;
    });
    let put = Request::put("http://api/x").body(body).unwrap();
    let resp = svc.oneshot(put).await.unwrap();
    assert_eq!(
        resp.extensions().get::<Served>().map(|s| s.attempts),
        Some(1)
    );
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_methods_are_retried_when_the_route_says_so() {
    let (svc, handle, _) =
        stack(&RETRY.replace("on: [5xx]", "on: [5xx], retry_non_idempotent: true"));
    serve(handle, |req| {
        let n = proxyless_tower::ext::routed(req).unwrap().attempt();
        Ok(status(if n < 2 { 503 } else { 200 }))
    });
    let post = Request::post("http://api/x")
        .body(String::from("payload"))
        .unwrap();
    let resp = svc.oneshot(post).await.unwrap();
    assert_eq!(
        (
            resp.status().as_u16(),
            resp.extensions().get::<Served>().map(|s| s.attempts)
        ),
        (200, Some(2))
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_listed_conditions_are_retried() {
    let yaml = r#"
services:
  - name: api
    routes:
      - retry: { attempts: 3, on: [connect-failure, retriable-status-codes], retriable_status_codes: [409] }
        to: [b]
backends: [{ name: b, endpoints: ["127.0.0.1:1", "127.0.0.1:2"] }]
"#;
    let (svc, handle, _) = stack(yaml);
    serve(handle, |req| {
        let n = proxyless_tower::ext::routed(req).unwrap().attempt();
        match (req.uri().path(), n) {
            ("/conflict", 1) => Ok(status(409)),
            ("/refused", 1) => {
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
            }
            ("/broken", _) => Ok(status(500)),
            _ => Ok(status(200)),
        }
    });
    for (path, want_status, want_attempts) in [
        ("/conflict", 200, 2),
        ("/refused", 200, 2),
        ("/broken", 500, 1),
    ] {
        let resp = svc
            .clone()
            .oneshot(get(&format!("http://api{path}")))
            .await
            .unwrap();
        assert_eq!(resp.status(), want_status, "{path}");
        assert_eq!(
            resp.extensions().get::<Served>().map(|s| s.attempts),
            Some(want_attempts),
            "{path}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_ends_a_slow_attempt_and_retries() {
    let yaml = r#"
services:
  - name: api
    routes:
      - timeout: 10s
        retry: { attempts: 2, per_try_timeout: 100ms, on: [reset] }
        to: [b]
backends: [{ name: b, endpoints: ["127.0.0.1:1", "127.0.0.1:2"] }]
"#;
    let (svc, mut handle, _) = stack(yaml);
    tokio::spawn(async move {
        // The first attempt is never answered; the second is.
        let (_first, _hold) = handle.next_request().await.unwrap();
        let (second, send) = handle.next_request().await.unwrap();
        let ms: u64 = second.headers()[DEADLINE_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(ms <= 100, "per-try deadline propagated: {ms}");
        send.send_response(status(200));
        std::future::pending::<()>().await;
    });
    let started = tokio::time::Instant::now();
    let resp = svc.oneshot(get("http://api/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.extensions().get::<Served>().map(|s| s.attempts),
        Some(2)
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
}

/// Sends `uri` through a stack of `yaml` to a backend that never answers:
/// the backend sees `ms` left in `x-mesh-timeout-ms`, and the request fails
/// after `ms` with a timeout error that names `ms`.
async fn times_out_after(yaml: &str, uri: &str, ms: u64) {
    let (svc, mut handle, _) = stack(yaml);
    tokio::spawn(async move {
        let (req, _never) = handle.next_request().await.unwrap();
        assert_eq!(req.headers()[DEADLINE_HEADER], ms.to_string().as_str());
        std::future::pending::<()>().await;
    });
    let started = tokio::time::Instant::now();
    let err = svc.oneshot(get(uri)).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_millis(ms));
    let elapsed = err
        .downcast_ref::<proxyless_tower::error::Elapsed>()
        .unwrap();
    assert_eq!(elapsed.timeout, Duration::from_millis(ms), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_route_timeout_fires_at_the_deadline_and_is_propagated() {
    let yaml = r#"
services: [{ name: api, routes: [{ timeout: 250ms, to: [b] }] }]
backends: [{ name: b, endpoints: ["127.0.0.1:1"] }]
"#;
    times_out_after(yaml, "http://api/", 250).await;
}

/// A request that passes through (no service claims its host) is bounded
/// by the config's default timeout, and its error says that timeout.
#[tokio::test(start_paused = true)]
async fn a_passthrough_times_out_at_the_default_and_says_so() {
    let yaml = r#"
defaults: { timeout: 300ms }
services: [{ name: api, routes: [{ to: [b] }] }]
backends: [{ name: b, endpoints: ["127.0.0.1:1"] }]
"#;
    times_out_after(yaml, "http://example.com/", 300).await;
}

#[tokio::test(start_paused = true)]
async fn the_backend_layer_retargets_to_an_endpoint_and_keeps_the_host() {
    let (svc, handle, _) = stack(RETRY);
    serve(handle, |req| {
        assert_eq!(req.headers()[http::header::HOST], "api");
        assert!(req.uri().to_string().starts_with("http://127.0.0.1:"));
        assert!(req.uri().to_string().ends_with("/ratings/1?x=1"));
        Ok(status(200))
    });
    let resp = svc.oneshot(get("http://api/ratings/1?x=1")).await.unwrap();
    let served = resp.extensions().get::<Served>().unwrap();
    assert_eq!(&*served.backend, "b");
}

#[tokio::test(start_paused = true)]
async fn unknown_hosts_pass_through_as_addressed_or_are_refused() {
    let (svc, handle, _) = stack(RETRY);
    serve(handle, |req| {
        assert_eq!(req.uri().to_string(), "http://example.com/x");
        Ok(status(200))
    });
    assert_eq!(
        svc.oneshot(get("http://example.com/x"))
            .await
            .unwrap()
            .status(),
        200
    );

    let (svc, _handle, _) = stack(&format!("defaults: {{ unknown_hosts: refuse }}\n{RETRY}"));
    let err = svc.oneshot(get("http://example.com/x")).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::NoRoute);
}

#[tokio::test(start_paused = true)]
async fn max_requests_fails_fast_with_circuit_open() {
    let yaml = r#"
services: [{ name: api, routes: [{ to: [b] }] }]
backends: [{ name: b, endpoints: ["127.0.0.1:1"], circuit_breaker: { max_requests: 2 } }]
"#;
    let (svc, mut handle, _) = stack(yaml);
    let held = tokio::spawn(async move {
        let a = handle.next_request().await.unwrap();
        let b = handle.next_request().await.unwrap();
        (a, b, handle)
    });
    let s1 = tokio::spawn(svc.clone().oneshot(get("http://api/")));
    let s2 = tokio::spawn(svc.clone().oneshot(get("http://api/")));
    let ((_, r1), (_, r2), _handle) = held.await.unwrap();
    let err = svc.clone().oneshot(get("http://api/")).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
    assert!(err.to_string().contains("max_requests"), "{err}");
    r1.send_response(status(200));
    r2.send_response(status(200));
    assert!(s1.await.unwrap().is_ok() && s2.await.unwrap().is_ok());
}

const OUTLIER: &str = r#"
services: [{ name: api, routes: [{ to: [b] }] }]
backends:
  - name: b
    endpoints: ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    load_balancer: round_robin
    outlier_detection: { consecutive_5xx: 3, base_ejection: 10s, max_ejection_percent: 100 }
"#;

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_gets_no_traffic_until_its_time_is_up() {
    let (svc, handle, layer) = stack(OUTLIER);
    let bad = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let is_bad = bad.clone();
    serve(handle, move |req| {
        let failing = req.uri().authority().unwrap().as_str() == "127.0.0.1:1"
            && is_bad.load(Ordering::Relaxed);
        Ok(status(if failing { 503 } else { 200 }))
    });
    let mut by_endpoint = std::collections::HashMap::<String, u32>::new();
    for _ in 0..60 {
        let resp = svc.clone().oneshot(get("http://api/")).await.unwrap();
        let ep = resp
            .extensions()
            .get::<Served>()
            .unwrap()
            .endpoint
            .to_string();
        *by_endpoint.entry(ep).or_default() += 1;
    }
    assert_eq!(
        by_endpoint.get("127.0.0.1:1"),
        Some(&3),
        "ejected after 3 consecutive 5xx: {by_endpoint:?}"
    );
    assert_eq!(layer.runtime().stats().ejections.load(Ordering::Relaxed), 1);

    bad.store(false, Ordering::Relaxed);
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut back = 0;
    for _ in 0..30 {
        let resp = svc.clone().oneshot(get("http://api/")).await.unwrap();
        back += u32::from(&*resp.extensions().get::<Served>().unwrap().endpoint == "127.0.0.1:1");
    }
    assert!(
        back >= 9,
        "the endpoint returned after its ejection: {back}"
    );
}

#[tokio::test(start_paused = true)]
async fn every_endpoint_ejected_opens_the_circuit() {
    let (svc, handle, _) = stack(OUTLIER);
    serve(handle, |_| Ok(status(503)));
    let mut first_open = None;
    for i in 0..20 {
        match svc.clone().oneshot(get("http://api/")).await {
            Ok(r) => assert_eq!(r.status(), 503),
            Err(e) => {
                assert_eq!(ErrorKind::of(&*e), ErrorKind::CircuitOpen);
                assert!(e.to_string().contains("every endpoint is ejected"), "{e}");
                first_open.get_or_insert(i);
            }
        }
    }
    assert_eq!(
        first_open,
        Some(9),
        "3 endpoints x 3 consecutive 5xx, then fast failure"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_without_endpoints_has_no_healthy_endpoint() {
    let (svc, _handle, _) = stack(
        "services: [{ name: api, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: [] }]",
    );
    let err = svc.oneshot(get("http://api/")).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::NoHealthyEndpoint);
}

#[tokio::test(start_paused = true)]
async fn consistent_hash_keeps_a_key_on_one_endpoint() {
    for lb in [
        "{ ring_hash: { header: x-user } }",
        "{ maglev: { header: x-user } }",
    ] {
        let yaml = format!(
            "services: [{{ name: api, routes: [{{ to: [b] }}] }}]\nbackends: [{{ name: b, endpoints: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3', '127.0.0.1:4'], load_balancer: {lb} }}]"
        );
        let (svc, handle, _) = stack(&yaml);
        serve(handle, |_| Ok(status(200)));
        let mut homes = std::collections::HashSet::new();
        for user in 0..20 {
            let mut seen = std::collections::HashSet::new();
            for _ in 0..10 {
                let req = Request::get("http://api/")
                    .header("x-user", format!("u{user}"))
                    .body(String::new())
                    .unwrap();
                let resp = svc.clone().oneshot(req).await.unwrap();
                seen.insert(
                    resp.extensions()
                        .get::<Served>()
                        .unwrap()
                        .endpoint
                        .to_string(),
                );
            }
            assert_eq!(seen.len(), 1, "{lb}: user {user} moved between {seen:?}");
            homes.extend(seen);
        }
        assert!(
            homes.len() >= 3,
            "{lb}: keys spread over endpoints: {homes:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fault_injection_aborts_and_delays_their_share() {
    let yaml = r#"
services:
  - name: api
    routes:
      - match: { path: { prefix: /abort } }
        fault: { abort: { status: 418, percent: 30 } }
        to: [b]
      - match: { path: { prefix: /delay } }
        fault: { delay: { fixed: 1s, percent: 100 } }
        to: [b]
      - match: { path: { prefix: /late } }
        timeout: 500ms
        fault: { delay: { fixed: 1s, percent: 100 } }
        to: [b]
backends: [{ name: b, endpoints: ["127.0.0.1:1"] }]
"#;
    let (svc, handle, _) = stack(yaml);
    serve(handle, |_| Ok(status(200)));
    let mut aborted = 0;
    for _ in 0..2000 {
        let resp = svc.clone().oneshot(get("http://api/abort")).await.unwrap();
        if resp.status() == 418 {
            assert_eq!(resp.headers()["x-mesh-fault"], "abort");
            aborted += 1;
        }
    }
    assert!(
        (500..700).contains(&aborted),
        "30% of 2000 aborted: {aborted}"
    );

    let t = tokio::time::Instant::now();
    assert_eq!(
        svc.clone()
            .oneshot(get("http://api/delay"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(t.elapsed(), Duration::from_secs(1));

    let t = tokio::time::Instant::now();
    let err = svc.oneshot(get("http://api/late")).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Timeout);
    assert_eq!(
        t.elapsed(),
        Duration::from_millis(500),
        "the delay meets the route timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn mirrors_copy_their_share_and_never_affect_the_caller() {
    let yaml = r#"
services:
  - name: api
    routes: [{ mirror: { backend: shadow, percent: 50 }, to: [b] }]
backends:
  - { name: b, endpoints: ["127.0.0.1:1"] }
  - { name: shadow, endpoints: ["127.0.0.1:9"] }
"#;
    let (svc, handle, layer) = stack(yaml);
    let shadowed = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = shadowed.clone();
    serve(handle, move |req| {
        if req.uri().authority().unwrap().as_str() == "127.0.0.1:9" {
            assert_eq!(req.headers()[http::header::HOST], "api-shadow");
            count.fetch_add(1, Ordering::Relaxed);
            return Ok(status(500));
        }
        Ok(status(200))
    });
    for _ in 0..1000 {
        assert_eq!(
            svc.clone()
                .oneshot(get("http://api/"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let n = shadowed.load(Ordering::Relaxed);
    assert!((400..600).contains(&n), "half mirrored: {n}");
    assert_eq!(
        u64::from(n),
        layer.runtime().stats().mirrored.load(Ordering::Relaxed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_config_swap_changes_the_split_for_the_next_request() {
    let m = mesh(
        "services: [{ name: api, routes: [{ to: [a] }] }]\nbackends: [{ name: a, endpoints: ['127.0.0.1:1'] }, { name: c, endpoints: ['127.0.0.1:2'] }]",
    );
    let (svc, handle): (Mock, Handle) = mock::pair();
    let svc = MeshLayer::new(m.clone()).with_served().layer(svc);
    serve(handle, |_| Ok(status(200)));
    let backend = |r: &Response<_>| r.extensions().get::<Served>().unwrap().backend.to_string();
    assert_eq!(
        backend(&svc.clone().oneshot(get("http://api/")).await.unwrap()),
        "a"
    );
    let mut cfg = m.snapshot().config().clone();
    cfg.services[0].routes[0].to[0].backend = "c".into();
    m.update(cfg, proxyless_core::snapshot::Source::Code)
        .unwrap();
    assert_eq!(
        backend(&svc.oneshot(get("http://api/")).await.unwrap()),
        "c"
    );
}

#[tokio::test(start_paused = true)]
async fn runtime_state_survives_a_config_swap_for_unchanged_endpoints() {
    let m = mesh(OUTLIER);
    let (svc, handle): (Mock, Handle) = mock::pair();
    let svc = MeshLayer::new(m.clone()).with_served().layer(svc);
    serve(handle, |req| {
        let failing = req.uri().authority().unwrap().as_str() == "127.0.0.1:1";
        Ok(status(if failing { 503 } else { 200 }))
    });
    for _ in 0..9 {
        let _ = svc.clone().oneshot(get("http://api/")).await.unwrap();
    }
    // A push that changes something else: a new route timeout and a fourth endpoint.
    let mut cfg = m.snapshot().config().clone();
    cfg.services[0].routes[0].timeout = Some(Duration::from_secs(3));
    cfg.backends[0]
        .endpoints
        .push(proxyless_core::config::Endpoint::new("127.0.0.1:4"));
    m.update(cfg, proxyless_core::snapshot::Source::Code)
        .unwrap();
    for _ in 0..40 {
        let resp = svc.clone().oneshot(get("http://api/")).await.unwrap();
        let ep = resp
            .extensions()
            .get::<Served>()
            .unwrap()
            .endpoint
            .to_string();
        assert_ne!(ep, "127.0.0.1:1", "the ejection was lost in the swap");
    }
}

/// An endpoint removed by a push loses its state: back in a later push, it
/// starts afresh (its ejection forgotten), whatever else changed.
#[tokio::test(start_paused = true)]
async fn an_endpoint_removed_and_added_back_starts_afresh() {
    let m = mesh(OUTLIER);
    let (svc, handle): (Mock, Handle) = mock::pair();
    let layer = MeshLayer::new(m.clone()).with_served();
    let svc = layer.layer(svc);
    serve(handle, |req| {
        let failing = req.uri().authority().unwrap().as_str() == "127.0.0.1:1";
        Ok(status(if failing { 503 } else { 200 }))
    });
    for _ in 0..9 {
        let _ = svc.clone().oneshot(get("http://api/")).await.unwrap();
    }
    let ejected = |m: &Mesh| {
        let snap = m.snapshot();
        let b = layer.runtime().backend(&snap, 0).unwrap();
        b.is_ejected(0, tokio::time::Instant::now().into_std())
    };
    assert!(ejected(&m), "three 503s eject 127.0.0.1:1");
    let push = |f: &dyn Fn(&mut Vec<proxyless_core::config::Endpoint>)| {
        let mut cfg = m.snapshot().config().clone();
        f(&mut cfg.backends[0].endpoints);
        m.update(cfg, proxyless_core::snapshot::Source::Code)
            .unwrap();
        // A request resolves the new snapshot (and prunes what it dropped).
        svc.clone().oneshot(get("http://api/"))
    };
    push(&|e| {
        e.remove(0);
    })
    .await
    .unwrap();
    push(&|e| e.insert(0, proxyless_core::config::Endpoint::new("127.0.0.1:1")))
        .await
        .unwrap();
    assert!(!ejected(&m), "the ejection went with the endpoint");
}

/// A backend the new config does not change keeps its resolution (the
/// same endpoint states, breaker and balancer table, by identity); a changed
/// one is resolved again.
#[tokio::test(start_paused = true)]
async fn an_unchanged_backend_keeps_its_resolution_across_a_swap() {
    let m = mesh(
        "services: [{ name: a, routes: [{ to: [a1] }] }, { name: b, routes: [{ to: [b1] }] }]\n\
         backends:\n\
         - { name: a1, load_balancer: { maglev: { header: x-user } }, endpoints: ['127.0.0.1:1', '127.0.0.1:2'] }\n\
         - { name: b1, endpoints: ['127.0.0.1:3'] }\n",
    );
    let (svc, handle): (Mock, Handle) = mock::pair();
    let layer = MeshLayer::new(m.clone()).with_served();
    let svc = layer.layer(svc);
    serve(handle, |_| Ok(status(200)));
    for host in ["a", "b"] {
        let req = get(&format!("http://{host}/"));
        svc.clone().oneshot(req).await.unwrap();
    }
    let before = m.snapshot();
    let rt = layer.runtime();
    let (a1, b1) = (
        rt.backend(&before, 0).unwrap(),
        rt.backend(&before, 1).unwrap(),
    );

    let mut cfg = before.config().clone();
    cfg.backends[1]
        .endpoints
        .push(proxyless_core::config::Endpoint::new("127.0.0.1:4"));
    m.update(cfg, proxyless_core::snapshot::Source::Code)
        .unwrap();
    let after = m.snapshot();
    let (a1_now, b1_now) = (
        rt.backend(&after, 0).unwrap(),
        rt.backend(&after, 1).unwrap(),
    );
    assert!(Arc::ptr_eq(&a1, &a1_now), "a1 did not change: kept");
    assert!(!Arc::ptr_eq(&b1, &b1_now), "b1 changed: resolved again");
    assert_eq!(b1_now.endpoints.len(), 2);
    // What lasts across configs is the same either way.
    assert!(Arc::ptr_eq(&b1.state, &b1_now.state));
    assert!(Arc::ptr_eq(&b1.endpoints[0], &b1_now.endpoints[0]));
}

/// Every config that validates serves requests without a panic, however
/// extreme its values: the longest durations, the largest weights and
/// thresholds, every balancer, faults and mirrors at 0 and 100%. Time is
/// paused, so a 365-day delay passes at once.
mod extremes {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::select;

    fn config() -> impl Strategy<Value = String> {
        const DURATIONS: [&str; 4] = ["1ns", "1ms", "2s", "8760h"];
        let duration = || select(DURATIONS.to_vec());
        // (shorter, longer): backoffs and ejections need max >= base.
        let ordered =
            || (0usize..4, 0usize..4).prop_map(|(a, b)| (DURATIONS[a.min(b)], DURATIONS[a.max(b)]));
        let big = || select(vec![0u64, 1, 7, 4_294_967_295]);
        let weight = || select(vec![1u64, 3, 4_294_967_295]);
        let percent = || select(vec![0.0f64, 0.001, 50.0, 100.0]);
        let lb = select(vec![
            "p2c_ewma",
            "round_robin",
            "random",
            "{ ring_hash: { header: x-user } }",
            "{ maglev: { header: x-user } }",
        ]);
        (
            (duration(), duration(), select(vec![0.0f64, 0.2, 1000.0]), big()),
            (duration(), 1u32..=10, duration(), ordered()),
            (duration(), percent(), 200u16..=599, percent(), percent()),
            (weight(), weight(), weight(), lb),
            (big(), big(), ordered(), 0u32..=100),
        )
            .prop_map(
                |(
                    (default_timeout, connect, ratio, min_per_second),
                    (timeout, attempts, per_try, (base, max)),
                    (delay, delay_pct, abort, abort_pct, mirror_pct),
                    (w1, w2, ew, lb),
                    (c5xx, max_requests, (ej_base, ej_max), ej_pct),
                )| {
                    format!(
                        r#"
defaults:
  timeout: {default_timeout}
  connect_timeout: {connect}
  retry_budget: {{ ratio: {ratio}, min_per_second: {min_per_second}, ttl: 1s }}
services:
  - name: s
    routes:
      - timeout: {timeout}
        retry: {{ attempts: {attempts}, per_try_timeout: {per_try}, on: [5xx, reset, connect-failure], backoff: {{ base: {base}, max: {max} }} }}
        fault: {{ delay: {{ fixed: {delay}, percent: {delay_pct} }}, abort: {{ status: {abort}, percent: {abort_pct} }} }}
        mirror: {{ backend: b, percent: {mirror_pct} }}
        to: [{{ backend: a, weight: {w1} }}, {{ backend: b, weight: {w2} }}]
backends:
  - name: a
    endpoints: [{{ address: "127.0.0.1:1", weight: {ew} }}, "127.0.0.1:2"]
    load_balancer: {lb}
    circuit_breaker: {{ max_requests: {max_requests}, max_pending: {max_requests}, max_retries: {max_requests} }}
    outlier_detection: {{ consecutive_5xx: {c5xx}, base_ejection: {ej_base}, max_ejection: {ej_max}, max_ejection_percent: {ej_pct} }}
  - name: b
    endpoints: ["127.0.0.1:3"]
"#
                    )
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn every_config_that_validates_serves_without_panicking(yaml in config()) {
            let cfg = match Config::from_yaml(&yaml) {
                Ok(cfg) => cfg,
                Err(e) => {
                    // Refused with an error naming why: fine. Only zero
                    // thresholds are refused here; anything else means the
                    // generator no longer reaches what it means to.
                    prop_assert!(e.to_string().contains("max_requests"), "{e}\n{yaml}");
                    return Ok(());
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async move {
                let mesh = Mesh::from_config(cfg).unwrap();
                let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
                let svc = tower::service_fn({
                    let calls = calls.clone();
                    move |_req: Request<MeshBody>| {
                        let n = calls.fetch_add(1, Ordering::Relaxed);
                        async move {
                            match n % 3 {
                                0 => Ok(status(200)),
                                1 => Ok(status(503)),
                                _ => Err::<Response<String>, BoxError>("reset".into()),
                            }
                        }
                    }
                });
                let svc = MeshLayer::new(mesh).with_served().layer(svc);
                for user in ["a", "b", "c", "d"] {
                    let req = Request::get("http://s/x")
                        .header("x-user", user)
                        .body(String::new())
                        .unwrap();
                    // Ok or a mesh error: either way, an answer.
                    let _ = svc.clone().oneshot(req).await;
                }
            });
        }
    }
}

/// `Served` costs a response its first extension (three allocations): it
/// is there when asked for, and a retrying route still finds the endpoint
/// that failed without it being asked for.
#[tokio::test]
async fn served_is_on_responses_when_asked_for_and_retries_find_the_failed_endpoint_without_it() {
    const RETRYING: &str = r#"
services: [{ name: api, routes: [{ to: [b], retry: { attempts: 2, on: [5xx], backoff: { base: 1ms } } }] }]
backends:
  - name: b
    endpoints: ["127.0.0.1:1", "127.0.0.1:2"]
    load_balancer: { ring_hash: { header: x-user } }
"#;
    const PLAIN: &str = r#"
services: [{ name: api, routes: [{ to: [b] }] }]
backends: [{ name: b, endpoints: ["127.0.0.1:1"] }]
"#;
    // Not asked for: none on a plain route's response.
    let (svc, handle): (Mock, Handle) = mock::pair();
    let svc = MeshLayer::new(mesh(PLAIN)).layer(svc);
    serve(handle, |_| Ok(status(200)));
    let resp = svc.oneshot(get("http://api/")).await.unwrap();
    assert!(resp.extensions().get::<Served>().is_none());

    // Asked for: there, naming the endpoint.
    let (svc, handle, _layer) = stack(PLAIN);
    serve(handle, |_| Ok(status(200)));
    let resp = svc.oneshot(get("http://api/")).await.unwrap();
    assert_eq!(
        &*resp.extensions().get::<Served>().unwrap().endpoint,
        "127.0.0.1:1"
    );

    // Not asked for, on a retrying route: the retry avoids the endpoint
    // that failed, every time (the hash would send it back there).
    let (svc, handle): (Mock, Handle) = mock::pair();
    let svc = MeshLayer::new(mesh(RETRYING)).layer(svc);
    let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = hits.clone();
    serve(handle, move |req| {
        let ep = req.uri().authority().unwrap().as_str().to_owned();
        let mut seen = seen.lock().unwrap();
        // The first attempt of each request fails, wherever it went.
        let first = seen.len() % 2 == 0;
        seen.push(ep);
        Ok(status(if first { 503 } else { 200 }))
    });
    for _ in 0..10 {
        let req = Request::get("http://api/")
            .header("x-user", "alice")
            .body(String::new())
            .unwrap();
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let hits = hits.lock().unwrap();
    assert_eq!(hits.len(), 20);
    for pair in hits.chunks(2) {
        assert_ne!(
            pair[0], pair[1],
            "a retry went back to the endpoint that failed: {hits:?}"
        );
    }
}

/// A client below the mesh that reports a connect failure without naming
/// the endpoint (hyper's does not know the mesh's pick): the backend layer
/// names it, so the retry goes to another endpoint, every time.
#[tokio::test(start_paused = true)]
async fn a_connect_failure_the_client_types_without_an_endpoint_is_retried_elsewhere() {
    let yaml = r#"
services: [{ name: api, routes: [{ retry: { attempts: 2, on: [connect-failure], backoff: { base: 1ms, max: 1ms } }, to: [b] }] }]
backends: [{ name: b, load_balancer: { ring_hash: { header: x-user } }, endpoints: ["127.0.0.1:1", "127.0.0.1:2"] }]
"#;
    let (svc, handle, _) = stack(yaml);
    let first_tries = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = first_tries.clone();
    serve(handle, move |req| {
        let to = req.uri().authority().unwrap().to_string();
        if proxyless_tower::ext::routed(req).unwrap().attempt() == 1 {
            seen.lock().unwrap().push(to.clone());
        }
        if to == "127.0.0.1:1" {
            Err(proxyless_tower::error::ConnectFailed {
                endpoint: None,
                source: "refused".into(),
            }
            .into())
        } else {
            Ok(status(200))
        }
    });
    // A hash balancer sends a key to the same endpoint every time: only
    // the named failure steers its retry elsewhere.
    for user in 0..20u32 {
        let mut req = get("http://api/x");
        req.headers_mut()
            .insert("x-user", http::HeaderValue::from(user));
        let resp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(
            resp.status(),
            200,
            "user {user}: the retry avoided the endpoint that failed"
        );
    }
    let firsts = first_tries.lock().unwrap();
    assert!(
        firsts.iter().any(|a| a == "127.0.0.1:1"),
        "some keys hash to the failing endpoint"
    );
}
