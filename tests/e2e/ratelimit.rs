//! Local rate limits over real sockets: a route's limit in the client, a
//! service's limit in the server, keyed and not; refusals as 429 with
//! `retry-after` and `x-mesh-error: rate_limited`, never retried.

use crate::support::mesh;
use mesh::echo::{Echo, EchoHandle};
use proxyless_core::Mesh;
use proxyless_hyper::Client;
use proxyless_tower::error::ErrorKind;
use std::time::Duration;

async fn echo(name: &str) -> EchoHandle {
    Echo::new(name)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap()
}

async fn get(client: &Client, user: Option<&str>) -> http::Response<proxyless_hyper::Body> {
    let mut req = http::Request::get("http://reviews/");
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    client.request(req).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_limit_refuses_past_its_bucket_with_429_and_never_retries() {
    let v1 = echo("v1").await;
    let m = mesh(&format!(
        r#"
services:
  - name: reviews
    routes:
      - retry: {{ attempts: 3, on: [5xx, unavailable, retriable-status-codes], retriable_status_codes: [429] }}
        rate_limit: {{ max_tokens: 5, tokens_per_fill: 1, fill_interval: 300ms }}
        to: [v1]
backends: [{{ name: v1, endpoints: ["{}"] }}]
"#,
        v1.addr()
    ));
    let client = Client::new(&m).refusals_as_responses();
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let resp = get(&client, None).await;
        if resp.status() == 429 {
            assert_eq!(resp.headers()["x-mesh-error"], "rate_limited");
            assert_eq!(resp.headers()["retry-after"], "1");
        }
        statuses.push(resp.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        v1.served(),
        5,
        "refusals never reach the backend, nor are retried"
    );
    // One token per 300 ms: after 350 ms, one more request gets through.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(get(&client, None).await.status(), 200);
    assert_eq!(get(&client, None).await.status(), 429);
    // Without refusals as responses, the error is typed.
    let err = Client::new(&m).get("http://reviews/").await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::RateLimited, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_limit_gives_each_key_its_own_bucket() {
    let v1 = echo("v1").await;
    let m = mesh(&format!(
        r#"
services:
  - name: reviews
    routes: [{{ rate_limit: {{ max_tokens: 2, fill_interval: 1h, per: {{ header: x-user }} }}, to: [v1] }}]
backends: [{{ name: v1, endpoints: ["{}"] }}]
"#,
        v1.addr()
    ));
    let client = Client::new(&m).refusals_as_responses();
    for user in ["ann", "bob"] {
        assert_eq!(get(&client, Some(user)).await.status(), 200);
        assert_eq!(get(&client, Some(user)).await.status(), 200);
        assert_eq!(get(&client, Some(user)).await.status(), 429, "{user}");
    }
    // Requests without the header share one more bucket.
    assert_eq!(get(&client, None).await.status(), 200);
    assert_eq!(v1.served(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_limit_refuses_callers_before_the_handler_and_callers_do_not_retry_into_it() {
    let config = r#"
services: [{ name: reviews, routes: [{ to: [reviews] }] }]
backends: [{ name: reviews, endpoints: ["127.0.0.1:1"] }]
inbound:
  - service: reviews
    mtls: permissive
    rate_limit: { max_tokens: 3, fill_interval: 1h, per: { header: x-user } }
"#;
    let server_mesh = mesh(config).with_service("reviews");
    let server = Echo::new("reviews")
        .service("reviews")
        .start(&server_mesh, "127.0.0.1:0")
        .await
        .unwrap();
    // A meshed caller whose route retries 429 and UNAVAILABLE.
    let caller = mesh(&format!(
        r#"
services:
  - name: reviews
    routes: [{{ retry: {{ attempts: 3, on: [5xx, unavailable, retriable-status-codes], retriable_status_codes: [429] }}, to: [v1] }}]
backends: [{{ name: v1, endpoints: ["{}"] }}]
"#,
        server.addr()
    ));
    let client = Client::new(&caller);
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..6 {
        let resp = get(&client, Some("ann")).await;
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(resp.headers()["x-mesh-error"], "rate_limited");
                assert!(resp.headers().contains_key("retry-after"));
                limited += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, limited), (3, 3));
    assert_eq!(
        server.served(),
        3,
        "refused requests never reach the handler"
    );
    assert_eq!(
        server
            .server_stats()
            .inbound
            .rate_limited
            .load(std::sync::atomic::Ordering::Relaxed),
        3,
        "each refused call was refused once: not retried into the limit"
    );
    // Another caller key has its own bucket.
    assert_eq!(get(&client, Some("bob")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_xds_a_routes_local_ratelimit_is_enforced_by_the_client() {
    let v1 = echo("v1").await;
    let served = mesh(&format!(
        r#"
services:
  - name: reviews
    routes: [{{ rate_limit: {{ max_tokens: 3, fill_interval: 1h }}, to: [v1] }}]
backends: [{{ name: v1, endpoints: ["{}"] }}]
"#,
        v1.addr()
    ));
    let (addr, cp) = crate::support::dev_control_plane(&served);
    let settings = proxyless_core::xds::XdsSettings::new(
        &format!("http://{addr}"),
        "limited",
        vec!["reviews".into()],
    );
    let (m, _xds) = Mesh::from_control_plane(settings).unwrap();
    tokio::time::timeout(Duration::from_secs(15), m.ready())
        .await
        .unwrap();
    let limit = m.snapshot().config().services[0].routes[0]
        .rate_limit
        .clone();
    assert_eq!(
        limit.map(|l| (l.max_tokens, l.fill_interval)),
        Some((3, Duration::from_secs(3600)))
    );
    let client = Client::new(&m).refusals_as_responses();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(&client, None).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429]);
    cp.abort();
}
