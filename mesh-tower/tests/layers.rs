//! Unit tests of each layer over tower-test mocks, with paused time.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use http::{Request, Response};
use mesh_core::Mesh;
use mesh_core::config::Config;
use mesh_tower::body::MeshBody;
use mesh_tower::ext::{Attempt, Attempts};
use mesh_tower::{BoxError, MeshLayer};
use std::sync::atomic::Ordering;
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Mock = mock::Mock<Request<MeshBody>, Response<String>>;
type Handle = mock::Handle<Request<MeshBody>, Response<String>>;

fn mesh(yaml: &str) -> Mesh {
    Mesh::from_config(Config::from_yaml(yaml).unwrap()).unwrap()
}

fn stack(yaml: &str) -> (mesh_tower::MeshService<String>, Handle, MeshLayer) {
    let (svc, handle): (Mock, Handle) = mock::pair();
    let layer = MeshLayer::new(mesh(yaml));
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

#[tokio::test(start_paused = true)]
async fn retries_a_5xx_on_another_endpoint_until_success() {
    let (svc, handle, _) = stack(RETRY);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    serve(handle, move |req| {
        let a = req.extensions().get::<Attempt>().unwrap();
        log.lock()
            .unwrap()
            .push((a.number, req.uri().authority().unwrap().to_string()));
        Ok(status(if a.number < 3 { 503 } else { 200 }))
    });
    let resp = svc.oneshot(get("http://api/x")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.extensions().get::<Attempts>(), Some(&Attempts(3)));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for w in seen.windows(2) {
        assert_ne!(
            w[0].1, w[1].1,
            "a retry went to the endpoint that just failed: {seen:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_budget_bounds_retries_to_ratio_plus_floor() {
    let (svc, handle, layer) = stack(
        r#"
defaults: { retry_budget: { ratio: 0.2, min_per_second: 1, ttl: 10s } }
services:
  - name: api
    routes:
      - retry: { attempts: 10, on: [5xx], backoff: { base: 1ms, max: 1ms } }
        to: [b]
backends: [{ name: b, endpoints: ["127.0.0.1:1"] }]
"#,
    );
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
