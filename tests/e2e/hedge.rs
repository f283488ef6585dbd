//! Hedging over real sockets: one slow endpoint among fast ones; hedged
//! requests cut the tail to about the delay plus a fast answer, within
//! their budget, and the slow attempts are cancelled.

use crate::support::mesh;
use mesh::echo::EchoHandle;
use proxyless_hyper::Client;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One endpoint answering in 200 ms, nine at once.
async fn one_slow_of_ten() -> Vec<EchoHandle> {
    mesh::echo::one_slow(9, Duration::from_millis(200))
        .await
        .unwrap()
}

fn yaml(servers: &[EchoHandle], budget_percent: u32) -> String {
    let eps: Vec<String> = servers
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    format!(
        r#"
services:
  - name: plain
    routes: [{{ to: [v1] }}]
  - name: hedged
    routes: [{{ hedge: {{ delay: 20ms, budget_percent: {budget_percent} }}, to: [v1] }}]
backends:
  - name: v1
    endpoints: [{}]
    # Round robin: one first attempt in ten goes to the slow endpoint.
    load_balancer: round_robin
"#,
        eps.join(", ")
    )
}

/// The latencies of `n` requests to `url`, `concurrency` at a time, sorted.
async fn latencies(client: &Client, url: &str, n: usize, concurrency: usize) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..n / concurrency {
                let t = Instant::now();
                let resp = client.get(&url).await.unwrap();
                assert_eq!(resp.status(), 200);
                out.push(t.elapsed());
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    all
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

fn served(servers: &[EchoHandle]) -> u64 {
    servers.iter().map(EchoHandle::served).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_cuts_the_tail_to_the_delay_plus_a_fast_answer_within_its_budget() {
    let servers = one_slow_of_ten().await;
    let m = mesh(&yaml(&servers, 20));
    let client = Client::new(&m);
    let n = 400;

    let plain = latencies(&client, "http://plain/", n, 4).await;
    assert!(
        p99(&plain) >= Duration::from_millis(190),
        "without hedging the slow endpoint sets p99: {:?}",
        p99(&plain)
    );

    let before = served(&servers);
    let stats = client.runtime().stats();
    let hedged = latencies(&client, "http://hedged/", n, 4).await;
    // 20 ms, then a fast endpoint's answer (a few ms on loopback); 120 ms
    // leaves room for a loaded machine and is still far below 200.
    assert!(
        p99(&hedged) < Duration::from_millis(120),
        "p99 {:?} (without hedging {:?})",
        p99(&hedged),
        p99(&plain)
    );
    let hedges = stats.hedges.load(Ordering::Relaxed);
    let extra =
        served(&servers) + stats.hedges_cancelled.load(Ordering::Relaxed) - before - n as u64;
    // About one request in ten goes to the slow endpoint and is hedged.
    assert!(
        (n as u64 / 20..=n as u64 / 5).contains(&hedges),
        "{hedges} hedges for {n} requests (budget 20%)"
    );
    assert!(
        extra <= hedges,
        "extra load {extra} beyond the {hedges} hedges"
    );
    assert!(
        stats.hedges_cancelled.load(Ordering::Relaxed) >= hedges / 2,
        "the slow attempts are cancelled when the hedge answers first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_budget_bounds_the_hedges() {
    let servers = one_slow_of_ten().await;
    let m = mesh(&yaml(&servers, 2));
    let client = Client::new(&m);
    let n = 400;
    let _ = latencies(&client, "http://hedged/", n, 4).await;
    let stats = client.runtime().stats();
    let hedges = stats.hedges.load(Ordering::Relaxed);
    // 2% of 400 requests: 8 (the budget counts requests as they come, so a
    // hedge may come before all 400 are counted: at most 8).
    assert!(hedges <= 8, "{hedges} hedges with a budget of 2% of {n}");
    assert!(
        stats.hedges_refused.load(Ordering::Relaxed) > 0,
        "hedges wanted beyond the budget are refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_is_hedged_with_a_copy_of_it() {
    let servers = one_slow_of_ten().await;
    let eps: Vec<String> = servers
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    let m = mesh(&format!(
        r#"
services:
  - name: search
    routes: [{{ hedge: {{ delay: 20ms, budget_percent: 50, hedge_non_idempotent: true }}, to: [v1] }}]
backends: [{{ name: v1, endpoints: [{}], load_balancer: round_robin }}]
"#,
        eps.join(", ")
    ));
    let client = Client::new(&m);
    let mut slowest = Duration::ZERO;
    for i in 0..40 {
        let body = format!("query {i}");
        let req = http::Request::post("http://search/")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let t = Instant::now();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        // The echo names the length it was sent; a hedge without its body
        // copy would fail (the length says otherwise) and leave the slow
        // attempt to answer, at 200 ms.
        let echoed = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let length = format!("\"content-length\":\"{}\"", body.len());
        assert!(String::from_utf8_lossy(&echoed).contains(&length));
        // The first ten fill the route's budget (a hedge is allowed per
        // two requests); the slow endpoint's first turn comes before it.
        if i >= 10 {
            slowest = slowest.max(t.elapsed());
        }
    }
    let hedges = client.runtime().stats().hedges.load(Ordering::Relaxed);
    assert!(
        hedges >= 2,
        "the slow endpoint's requests were hedged: {hedges}"
    );
    assert!(slowest < Duration::from_millis(150), "slowest {slowest:?}");
}
