//! The layers' resilience under the testing kit: simulated endpoints, the
//! real stack, paused time, a fixed seed.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_tower::testing::{Endpoint, Latency, Sim};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn mesh(yaml: &str) -> Mesh {
    Mesh::from_config(Config::from_yaml(yaml).unwrap()).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const RATINGS: &str = r#"
defaults: { retry_budget: { ratio: 1.0 } }
services:
  - name: ratings
    routes:
      - timeout: 500ms
        retry: { attempts: 7, on: [5xx, connect-failure], backoff: { base: 5ms, max: 20ms } }
        to: [ratings]
backends:
  - name: ratings
    endpoints: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
"#;

fn flaky(share: f64) -> Endpoint {
    Endpoint::new()
        .latency(Latency::Uniform(ms(5), ms(40)))
        .errors(share)
}

/// The README's example at 10,000 calls: ratings failing 30% of calls, and
/// seven attempts lift 99.9% of the caller's calls to success within
/// 500 ms (0.3^7: 0.02% fail every attempt); the same without retries
/// loses about 30%. Also times the kit itself.
#[tokio::test(start_paused = true)]
async fn retries_lift_a_thirty_percent_failure_rate_above_99_9_percent() {
    let sim = Sim::new(7)
        .endpoint("10.0.0.1:80", flaky(0.3))
        .endpoint("10.0.0.2:80", flaky(0.3))
        .endpoint("10.0.0.3:80", flaky(0.3));
    let wall = std::time::Instant::now();
    let report = sim
        .client(&mesh(RATINGS))
        .run(10_000, 50, |_| "http://ratings/")
        .await;
    let took = wall.elapsed();
    assert_eq!(report.calls(), 10_000);
    assert!(report.success_within(ms(500)) >= 0.999, "{report}");
    eprintln!("10,000 simulated calls in {took:?} of wall time: {report}");

    let once = RATINGS.replace("attempts: 7", "attempts: 1");
    let report = sim
        .client(&mesh(&once))
        .run(10_000, 50, |_| "http://ratings/")
        .await;
    let rate = report.success_rate();
    assert!((0.67..0.73).contains(&rate), "{report}");
}

/// The same seed, the same report.
#[tokio::test(start_paused = true)]
async fn a_seed_gives_the_same_report_every_run() {
    let mut seen = Vec::new();
    for _ in 0..2 {
        let sim = Sim::new(11)
            .endpoint("10.0.0.1:80", flaky(0.2))
            .endpoint("10.0.0.2:80", flaky(0.2))
            .endpoint("10.0.0.3:80", flaky(0.5));
        let r = sim
            .client(&mesh(RATINGS))
            .run(2_000, 20, |_| "http://ratings/")
            .await;
        let answered: Vec<u64> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .iter()
            .map(|a| sim.answered(a))
            .collect();
        seen.push((r.latencies, r.statuses, answered));
    }
    assert_eq!(seen[0], seen[1]);
}

/// An endpoint down from 1 s to 3 s into the run: connect failures are
/// retried on the others and outlier detection ejects it (round robin
/// keeps sending it its turn; p2c would steer away on its own), so the
/// caller sees no failure; it serves again afterwards.
#[tokio::test(start_paused = true)]
async fn an_outage_on_a_schedule_is_ridden_out() {
    let steady = Endpoint::new().latency(Latency::Fixed(ms(10)));
    let sim = Sim::new(3)
        .endpoint("10.0.0.1:80", steady.clone().outage(ms(1000), ms(3000)))
        .endpoint("10.0.0.2:80", steady.clone())
        .endpoint("10.0.0.3:80", steady);
    let yaml = format!(
        "{RATINGS}    load_balancer: round_robin\n    outlier_detection: {{ consecutive_5xx: 3, base_ejection: 500ms, max_ejection_percent: 34 }}\n"
    );
    let client = sim.client(&mesh(&yaml));
    // 4 s of calls at 10 ms each, 10 at a time: about 4,000 calls.
    let report = client.run(4_000, 10, |_| "http://ratings/").await;
    assert_eq!(report.success_rate(), 1.0, "{report}");
    let stats = client.runtime().stats();
    assert!(stats.ejections.load(Ordering::Relaxed) >= 1);
    assert!(stats.retries.load(Ordering::Relaxed) >= 1);
    // It answered before and after its outage.
    assert!(
        sim.answered("10.0.0.1:80") > 200,
        "{}",
        sim.answered("10.0.0.1:80")
    );
}

/// Hedging against a tail: 5% of calls take 1 s. Hedged after 50 ms to
/// another endpoint, p99 falls from the tail to about the hedge delay.
#[tokio::test(start_paused = true)]
async fn hedging_cuts_a_one_second_tail() {
    let tail = Endpoint::new().latency(Latency::Bimodal {
        fast: ms(10),
        slow: ms(1000),
        slow_share: 0.05,
    });
    let sim = Sim::new(5)
        .endpoint("10.0.0.1:80", tail.clone())
        .endpoint("10.0.0.2:80", tail.clone())
        .endpoint("10.0.0.3:80", tail);
    let yaml = |policy: &str| {
        format!(
            r#"
defaults: {{ retry_budget: {{ ratio: 1.0 }} }}
services:
  - name: ratings
    routes: [{{ timeout: 2s, {policy} to: [ratings] }}]
backends:
  - {{ name: ratings, endpoints: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] }}
"#
        )
    };
    let plain = sim
        .client(&mesh(&yaml("")))
        .run(4_000, 20, |_| "http://ratings/")
        .await;
    let hedged = sim
        .client(&mesh(&yaml(
            "hedge: { delay: 50ms, attempts: 2, budget_percent: 20 },",
        )))
        .run(4_000, 20, |_| "http://ratings/")
        .await;
    assert!(plain.percentile(0.99) >= ms(1000), "{plain}");
    assert!(hedged.percentile(0.99) <= ms(70), "{hedged}");
    assert_eq!(hedged.success_rate(), 1.0, "{hedged}");
}

/// The adaptive limit, deterministic: an endpoint of eight workers of
/// 10 ms under 64 callers settles near its knee, and the latency of what
/// it serves stays near its service time.
#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_settles_near_the_knee() {
    let sim = Sim::new(9).endpoint(
        "10.0.0.1:80",
        Endpoint::new().latency(Latency::Fixed(ms(10))).workers(8),
    );
    let m = mesh(
        r#"
services: [{ name: slow, routes: [{ timeout: 5s, to: [pool] }] }]
backends:
  - name: pool
    endpoints: ["10.0.0.1:80"]
    adaptive_concurrency: { window: 50ms, probe_interval: 1h }
"#,
    );
    let client = sim.client(&m).pause_after_refusal(ms(5));
    // A first run to settle, a second to measure.
    let settling = client.run(20_000, 64, |_| "http://slow/").await;
    let report = client.run(20_000, 64, |_| "http://slow/").await;
    let took = settling.latencies.len() + report.latencies.len();
    assert_eq!(took, 40_000);
    let limit = client
        .runtime()
        .backend(&m.snapshot(), 0)
        .unwrap()
        .state
        .adaptive_limit()
        .unwrap();
    assert!((10..=16).contains(&limit), "limit {limit}");
    // Refused calls come back at once; the served ones queue little.
    let served: Vec<Duration> = report
        .latencies
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(d, _)| *d)
        .collect();
    assert!(served.len() >= 500, "{report}");
    let p99 = served[served.len() * 99 / 100];
    eprintln!("adaptive limit {limit}; served p99 {p99:?}; {report}");
    assert!(p99 <= ms(25), "p99 of the served {p99:?}: {report}");
    assert!(
        report.errors.get("circuit_open").copied().unwrap_or(0) > 0,
        "{report}"
    );
}

/// The issue's deadline test, deterministic: a backend that fails after
/// 200 ms, retries on 5xx. With a 250 ms deadline the retry (200 ms, 50 ms
/// left) is not sent and the 503 comes at 200 ms; with 1 s it is sent.
#[tokio::test(start_paused = true)]
async fn a_hopeless_retry_is_skipped_and_a_hopeful_one_sent() {
    let sim = Sim::new(1).endpoint(
        "10.0.0.1:80",
        Endpoint::new().latency(Latency::Fixed(ms(200))).errors(1.0),
    );
    let yaml = |timeout: &str| {
        format!(
            r#"
services:
  - name: s
    routes: [{{ timeout: {timeout}, retry: {{ attempts: 3, on: [5xx], backoff: {{ base: 1ms, max: 1ms }} }}, to: [b] }}]
backends: [{{ name: b, endpoints: ["10.0.0.1:80"] }}]
"#
        )
    };
    let short = sim.client(&mesh(&yaml("250ms")));
    let r = short.run(1, 1, |_| "http://s/").await;
    assert_eq!(r.statuses.get(&503), Some(&1), "{r}");
    assert_eq!(r.percentile(1.0), ms(200), "{r}");
    assert_eq!(sim.answered("10.0.0.1:80"), 1);
    assert_eq!(
        short
            .runtime()
            .stats()
            .hopeless_skipped
            .load(Ordering::Relaxed),
        1
    );
    let long = sim.client(&mesh(&yaml("1s")));
    let r = long.run(1, 1, |_| "http://s/").await;
    assert_eq!(r.statuses.get(&503), Some(&1), "{r}");
    assert_eq!(sim.answered("10.0.0.1:80"), 1 + 3, "three attempts");
    assert_eq!(long.runtime().stats().retries.load(Ordering::Relaxed), 2);
}

/// A classifier that panics is the application's bug, not the request's
/// end: the attempt is classified by default and the call is answered.
#[tokio::test(start_paused = true)]
async fn a_panicking_classifier_falls_back_to_the_default() {
    use proxyless_core::policy::classify::{self, Attempt, Class};
    classify::register("kit-panics", |_: &Attempt<'_>| -> Class {
        panic!("a classifier bug")
    })
    .unwrap();
    let sim = Sim::new(2)
        .endpoint("10.0.0.1:80", Endpoint::new().errors(1.0))
        .endpoint("10.0.0.2:80", Endpoint::new());
    let m = mesh(
        r#"
services: [{ name: s, classifier: kit-panics, routes: [{ retry: { attempts: 3, on: [5xx] }, to: [b] }] }]
backends: [{ name: b, load_balancer: round_robin, endpoints: ["10.0.0.1:80", "10.0.0.2:80"] }]
"#,
    );
    let report = sim.client(&m).run(20, 1, |_| "http://s/").await;
    // By default a 503 is retryable-failure: retried on the other endpoint.
    assert_eq!(report.success_rate(), 1.0, "{report}");
}

/// An endpoint added to a simulation a client already uses makes a new
/// simulation that shares the other endpoints (their counts go on).
#[tokio::test(start_paused = true)]
async fn adding_an_endpoint_later_keeps_the_others_counts() {
    let sim = Sim::new(6).endpoint("10.0.0.1:80", Endpoint::new());
    let m = mesh(
        r#"
services: [{ name: s, routes: [{ retry: { attempts: 3 }, to: [b] }] }]
backends: [{ name: b, endpoints: ["10.0.0.1:80", "10.0.0.2:80"] }]
"#,
    );
    let first = sim.client(&m);
    let bigger = sim.clone().endpoint("10.0.0.2:80", Endpoint::new());
    let r = first.run(20, 1, |_| "http://s/").await;
    // The first client's simulation has no 10.0.0.2: its share is refused
    // there and retried (connect failures) on 10.0.0.1.
    assert_eq!(r.success_rate(), 1.0, "{r}");
    let one = sim.answered("10.0.0.1:80");
    assert_eq!(bigger.answered("10.0.0.1:80"), one);
    bigger.client(&m).run(20, 1, |_| "http://s/").await;
    assert!(sim.answered("10.0.0.1:80") > one, "counts are shared");
    assert!(bigger.answered("10.0.0.2:80") > 0);
    assert_eq!(sim.answered("10.0.0.2:80"), 0);
}
