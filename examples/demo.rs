//! The mesh in one command: `cargo run --example demo`.
//!
//! Starts, in this process and on loopback, a small application of echo
//! services (two versions of `reviews`, an unreliable `ratings`), writes a
//! mesh config for them to a watched file, and drives real traffic through
//! a `MeshLayer` client while it walks through scenes:
//!
//! 1. `canary`: the reviews split moves 90/10 -> 50/50 -> 0/100 by editing
//!    the file while traffic flows, with no failed request; this scene's
//!    client is fed over xDS by the development control plane serving that
//!    file, as a client under Istio is by istiod;
//! 2. `resilience`: one ratings endpoint fails every request; retries
//!    (within the budget) and outlier ejection keep callers whole, and the
//!    endpoint returns once it recovers;
//! 3. `faults`: an injected delay meets the route timeout, an injected
//!    abort answers a share of requests;
//! 4. `security`: a `details` service in strict mTLS with authorization;
//!    an allowed caller gets through, a disallowed one gets 403, a caller
//!    without a certificate is refused;
//! 5. `config`: a bad edit is refused with every problem named, and the
//!    last good config keeps serving;
//! 6. `observability`: a few Prometheus metrics from the admin server, and
//!    one trace across two meshed hops (client -> frontend -> reviews);
//! 7. `locality`: a caller in one zone keeps its traffic there, spills a
//!    share to the next zone as the overprovisioning factor says when a
//!    local endpoint is ejected, and takes it back when the endpoint
//!    returns;
//! 8. `hedging`: one slow endpoint in ten sets p99; hedged requests cut it
//!    to the delay plus a fast answer, within their budget; a route's rate
//!    limit refuses past its bucket with 429.
//!
//! `--scene NAME` runs one scene; `--keep-running` leaves everything up with
//! the addresses printed, for poking with curl. Ends by itself otherwise.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use mesh::control_plane::DevControlPlane;
use mesh::echo::{Echo, EchoHandle};
use mesh::tally::Tally;
use proxyless_core::Mesh;
use proxyless_core::xds::XdsSettings;
use proxyless_hyper::Client;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

struct App {
    reviews_v1: [EchoHandle; 2],
    reviews_v2: EchoHandle,
    ratings: [EchoHandle; 2],
    file: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Clone, Copy)]
struct Knobs {
    v1: u32,
    v2: u32,
    fault_delay_pct: u32,
    fault_abort_pct: u32,
}

impl App {
    fn config(&self, k: Knobs) -> String {
        let [a, b] = &self.reviews_v1;
        let [r1, r2] = &self.ratings;
        format!(
            r#"version: 1
trust_domain: demo.local
services:
  - name: reviews
    hosts: [reviews, reviews.default.svc]
    routes:
      - name: default
        timeout: 2s
        retry: {{ attempts: 3, per_try_timeout: 500ms, on: [5xx, connect-failure, reset] }}
        to:
          - {{ backend: reviews-v1, weight: {v1} }}
          - {{ backend: reviews-v2, weight: {v2} }}
  - name: ratings
    routes:
      - name: slow-path
        match: {{ path: {{ prefix: /slow }} }}
        timeout: 200ms
        fault: {{ delay: {{ fixed: 300ms, percent: {delay} }} }}
        to: [ratings]
      - name: default
        timeout: 1s
        retry: {{ attempts: 3, on: [5xx, connect-failure], backoff: {{ base: 5ms, max: 50ms }} }}
        fault: {{ abort: {{ status: 503, percent: {abort} }} }}
        to: [ratings]
backends:
  - {{ name: reviews-v1, endpoints: ["{a}", "{b}"] }}
  - {{ name: reviews-v2, endpoints: ["{v2addr}"] }}
  - name: ratings
    endpoints: ["{r1}", "{r2}"]
    load_balancer: round_robin
    outlier_detection: {{ consecutive_5xx: 3, base_ejection: 2s, max_ejection_percent: 50 }}
"#,
            v1 = k.v1,
            v2 = k.v2,
            delay = k.fault_delay_pct,
            abort = k.fault_abort_pct,
            a = a.addr(),
            b = b.addr(),
            v2addr = self.reviews_v2.addr(),
            r1 = r1.addr(),
            r2 = r2.addr(),
        )
    }

    /// Replaces the config file in one step, as config tooling should.
    fn write(&self, text: &str) {
        write_atomically(&self.file, text);
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

const BASE: Knobs = Knobs {
    v1: 90,
    v2: 10,
    fault_delay_pct: 0,
    fault_abort_pct: 0,
};

/// The failures of `t` as `kind:count ...`, or `-`.
fn errors(t: &Tally) -> String {
    if t.errors.is_empty() {
        return "-".into();
    }
    let all: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    all.join(" ")
}

async fn send(client: &Client, url: &str, n: u32, concurrency: u32) -> Tally {
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url) = (client.clone(), url.to_owned());
        let share = n / concurrency + u32::from(w < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            for _ in 0..share {
                t.record(client.get(&url).await).await;
            }
            t
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.unwrap());
    }
    all
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn title(n: u32, name: &str, what: &str) {
    println!("\n== {n}. {name}: {what}");
}

/// The development control plane, serving `mesh`'s config (the watched
/// file) over ADS on a loopback port for the rest of the process.
fn start_control_plane(mesh: &Mesh) -> std::net::SocketAddr {
    let incoming =
        tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into()).expect("a port");
    let addr = incoming.local_addr().expect("a bound port");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DevControlPlane::new(mesh.clone()).into_service())
            .serve_with_incoming(incoming),
    );
    addr
}

/// The `reviews` routes `mesh` serves, if it has that service yet.
fn reviews_routes(mesh: &Mesh) -> Option<Vec<proxyless_core::config::Route>> {
    let snapshot = mesh.snapshot();
    let service = snapshot
        .config()
        .services
        .iter()
        .find(|s| s.name == "reviews")?;
    Some(service.routes.clone())
}

async fn canary(app: &App, file_mesh: &Mesh, control_plane: std::net::SocketAddr) {
    title(
        1,
        "canary",
        "shifting reviews from v1 to v2 by editing the file the control plane serves",
    );
    // This scene's client is configured the way one under Istio is: over
    // xDS, from the development control plane, which serves the file.
    let (mesh, xds) = Mesh::from_control_plane(XdsSettings::new(
        &format!("http://{control_plane}"),
        "demo-client",
        vec!["reviews".into()],
    ))
    .expect("a tokio runtime");
    let synced =
        || reviews_routes(&mesh).is_some() && reviews_routes(&mesh) == reviews_routes(file_mesh);
    wait_for("the first xDS snapshot", synced).await;
    println!(
        "client fed over xDS by the development control plane at {control_plane}; {} ACKs",
        xds.status().acks.load(Ordering::Relaxed)
    );
    let client = &Client::new(&mesh);
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut all = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let t = send(&client, "http://reviews/ratings/1", 200, 8).await;
                all.merge(t);
            }
            all
        })
    };
    println!(
        "{:<8} {:>8} {:>12} {:>12} {:>8}",
        "weights", "version", "reviews-v1", "reviews-v2", "failed"
    );
    for (v1, v2) in [(90, 10), (50, 50), (0, 100)] {
        let want = file_mesh.snapshot().version() + u64::from((v1, v2) != (BASE.v1, BASE.v2));
        app.write(&app.config(Knobs { v1, v2, ..BASE }));
        wait_for("the control plane to read the file", || {
            file_mesh.snapshot().version() >= want
        })
        .await;
        wait_for("the push to reach the client", synced).await;
        let t = send(client, "http://reviews/ratings/1", 2000, 16).await;
        println!(
            "{:<8} {:>8} {:>12} {:>12} {:>8}",
            format!("{v1}/{v2}"),
            mesh.snapshot().version(),
            t.get("reviews-v1a") + t.get("reviews-v1b"),
            t.get("reviews-v2"),
            t.failed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let during = background.await.unwrap();
    println!(
        "background traffic across the three shifts: {} ok, {} failed",
        during.ok,
        during.failed()
    );
    app.write(&app.config(BASE));
}

async fn resilience(app: &App, client: &Client) {
    title(2, "resilience", "one ratings endpoint fails every request");
    let before = client.runtime().stats();
    let (retries0, ejections0) = (
        before.retries.load(Ordering::Relaxed),
        before.ejections.load(Ordering::Relaxed),
    );
    app.ratings[1].set_fail_rate(1.0);
    println!(
        "{:<28} {:>6} {:>8} {:>8} {:>8} {:>10}",
        "phase", "ok", "failed", "r1 hits", "r2 hits", "retries"
    );
    let phase = |name: &str, t: &Tally, retries: u64| {
        println!(
            "{:<28} {:>6} {:>8} {:>8} {:>8} {:>10}",
            name,
            t.ok,
            t.failed(),
            t.get("ratings-1"),
            t.get("ratings-2"),
            retries
        );
    };
    let stats = client.runtime().stats();
    let t = send(client, "http://ratings/stars", 1000, 8).await;
    phase(
        "ratings-2 failing",
        &t,
        stats.retries.load(Ordering::Relaxed) - retries0,
    );
    println!(
        "outlier detection ejected ratings-2 {} time(s); callers saw {} failures",
        stats.ejections.load(Ordering::Relaxed) - ejections0,
        t.failed()
    );
    app.ratings[1].set_fail_rate(0.0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = stats.retries.load(Ordering::Relaxed);
    let t = send(client, "http://ratings/stars", 1000, 8).await;
    phase(
        "recovered, ejection over",
        &t,
        stats.retries.load(Ordering::Relaxed) - r,
    );
}

async fn faults(app: &App, mesh: &Mesh, client: &Client) {
    title(
        3,
        "faults",
        "an injected delay meets the route timeout; an injected abort",
    );
    let want = mesh.snapshot().version() + 1;
    app.write(&app.config(Knobs {
        fault_delay_pct: 50,
        fault_abort_pct: 10,
        ..BASE
    }));
    wait_for("the fault config", || mesh.snapshot().version() >= want).await;
    let started = Instant::now();
    let slow = send(client, "http://ratings/slow", 40, 8).await;
    println!(
        "/slow  (300ms delay on 50%, 200ms timeout): {} ok, errors {}  ({} ms for 40 requests)",
        slow.ok,
        errors(&slow),
        started.elapsed().as_millis()
    );
    let abort = send(client, "http://ratings/stars", 1000, 8).await;
    println!(
        "/stars (503 abort on 10%):                  {} ok, errors {}",
        abort.ok,
        errors(&abort)
    );
    app.write(&app.config(BASE));
}

async fn security() {
    title(
        4,
        "security",
        "strict mTLS and authorization on the details service",
    );
    let ca = mesh::certs::DevCa::new("demo.local").unwrap();
    let identity = |name: &str| {
        let issued = ca.issue_for(name).unwrap();
        proxyless_core::identity::tls::Identity::from_pem(
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            ca.ca_pem().as_bytes(),
        )
        .unwrap()
    };
    let server_mesh = Mesh::from_config(
        proxyless_core::config::Config::from_yaml(
            r#"
services: [{ name: details, routes: [{ to: [details] }] }]
backends: [{ name: details, endpoints: ["127.0.0.1:1"] }]
inbound:
  - service: details
    mtls: strict
    rules:
      - { action: allow, from: ["spiffe://demo.local/productpage"], to: { paths: ["/details/*"], methods: [GET] } }
"#,
        )
        .unwrap(),
    )
    .unwrap();
    server_mesh.set_identity(identity("details"));
    let details = Echo::new("details")
        .service("details")
        .start(&server_mesh, "127.0.0.1:0")
        .await
        .unwrap();
    let caller = |me: Option<&str>, tls: bool| {
        let tls = if tls {
            ", tls: { mode: mutual, identity: 'spiffe://demo.local/details' }"
        } else {
            ""
        };
        let m = Mesh::from_config(
            proxyless_core::config::Config::from_yaml(&format!(
                "services: [{{ name: details, routes: [{{ to: [details] }}] }}]\nbackends: [{{ name: details, endpoints: ['{}']{tls} }}]",
                details.addr()
            ))
            .unwrap(),
        )
        .unwrap();
        if let Some(me) = me {
            m.set_identity(identity(me));
        }
        Client::new(&m).refusals_as_responses()
    };
    println!("{:<40} {:>8}  answer", "caller", "status");
    for (who, client) in [
        (
            "spiffe://demo.local/productpage (mTLS)",
            caller(Some("productpage"), true),
        ),
        (
            "spiffe://demo.local/reviews (mTLS)",
            caller(Some("reviews"), true),
        ),
        ("no certificate (plaintext)", caller(None, false)),
    ] {
        let resp = client.get("http://details/details/1").await.unwrap();
        let status = resp.status().as_u16();
        let answer = match (
            resp.headers().get("x-mesh-authz-reason"),
            resp.headers().get("x-mesh-error"),
        ) {
            (Some(reason), _) => format!("denied: {}", reason.to_str().unwrap_or("?")),
            (None, Some(e)) => format!("refused: {}", e.to_str().unwrap_or("?")),
            (None, None) => {
                let body = http_body_util::BodyExt::collect(resp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                format!("served; the application saw caller {}", json["caller"])
            }
        };
        println!("{who:<40} {status:>8}  {answer}");
    }
    let stats = details.server_stats();
    println!(
        "details server: {} denied by authorization, {} plaintext connections refused",
        stats.inbound.denied.load(Ordering::Relaxed),
        stats.plaintext_refused.load(Ordering::Relaxed)
    );
}

async fn config(app: &App, mesh: &Mesh, client: &Client) {
    title(
        5,
        "config",
        "a bad edit is refused; the last good config keeps serving",
    );
    let rejected = mesh.status().rejected;
    let bad = app
        .config(BASE)
        .replace("backend: reviews-v2, weight", "backend: reviews-v3, weight")
        .replace("load_balancer: round_robin", "load_balancer: round_robbin");
    app.write(&bad);
    wait_for("the rejection", || mesh.status().rejected > rejected).await;
    if let Some(e) = mesh.status().last_error {
        println!("{e}");
    }
    let t = send(client, "http://reviews/ratings/1", 200, 4).await;
    println!(
        "still serving version {}: {} of 200 requests ok",
        mesh.snapshot().version(),
        t.ok
    );
    app.write(&app.config(BASE));
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scene = args
        .iter()
        .position(|a| a == "--scene")
        .and_then(|i| args.get(i + 1).cloned());
    let keep_running = args.iter().any(|a| a == "--keep-running");
    let scenes = [
        "canary",
        "resilience",
        "faults",
        "security",
        "config",
        "observability",
        "locality",
        "hedging",
    ];
    // Metrics handles are resolved when clients and servers are made: the
    // recorder goes in first.
    let _ = proxyless_hyper::telemetry::install_prometheus();
    if let Some(s) = &scene
        && !scenes.contains(&s.as_str())
    {
        eprintln!("unknown scene `{s}`; scenes: {}", scenes.join(", "));
        std::process::exit(2);
    }
    let wants = |name: &str| scene.as_deref().is_none_or(|s| s == name);

    let quiet = Mesh::empty();
    let start = |name: &'static str| {
        let quiet = quiet.clone();
        async move { Echo::new(name).start(&quiet, "127.0.0.1:0").await.unwrap() }
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let app = App {
        reviews_v1: [start("reviews-v1a").await, start("reviews-v1b").await],
        reviews_v2: start("reviews-v2").await,
        ratings: [start("ratings-1").await, start("ratings-2").await],
        file: dir.path().join("mesh.yaml"),
        _dir: dir,
    };
    app.write(&app.config(BASE));
    let mesh = Mesh::from_file(&app.file).unwrap_or_else(|e| panic!("{e}"));
    let client = Client::new(&mesh);
    let control_plane = start_control_plane(&mesh);
    println!(
        "mesh: {} services, version {}, config {}",
        mesh.snapshot().services().len(),
        mesh.snapshot().version(),
        app.file.display()
    );

    let started = Instant::now();
    if wants("canary") {
        canary(&app, &mesh, control_plane).await;
    }
    if wants("resilience") {
        resilience(&app, &client).await;
    }
    if wants("faults") {
        faults(&app, &mesh, &client).await;
    }
    if wants("security") {
        security().await;
    }
    if wants("config") {
        config(&app, &mesh, &client).await;
    }
    if wants("observability") {
        observability(&mesh, &client).await;
    }
    if wants("locality") {
        locality().await;
    }
    if wants("hedging") {
        hedging().await;
    }
    println!("\ndone in {:.1}s.", started.elapsed().as_secs_f64());
    if keep_running {
        println!("\nstill running; the config is {}", app.file.display());
        println!("  the development control plane (xDS) is http://{control_plane}");
        for (name, h) in [
            ("reviews-v1a", &app.reviews_v1[0]),
            ("reviews-v1b", &app.reviews_v1[1]),
            ("reviews-v2", &app.reviews_v2),
            ("ratings-1", &app.ratings[0]),
            ("ratings-2", &app.ratings[1]),
        ] {
            println!("  {name:<12} http://{}/", h.addr());
        }
        println!("Ctrl-C to stop.");
        let _ = tokio::signal::ctrl_c().await;
    } else {
        println!(
            "next: cargo run --example meshctl -- check <your mesh.yaml>; the README's quick start."
        );
    }
}

async fn locality() {
    title(
        7,
        "locality",
        "the caller is in us-east1-b; two endpoints there, two in us-east1-c",
    );
    let quiet = Mesh::empty();
    let mut servers = Vec::new();
    for name in ["b-1", "b-2", "c-1", "c-2"] {
        servers.push(Echo::new(name).start(&quiet, "127.0.0.1:0").await.unwrap());
    }
    let zone = |i: usize| {
        if i < 2 {
            "us-east1/us-east1-b"
        } else {
            "us-east1/us-east1-c"
        }
    };
    let endpoints: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{{ address: \"{}\", locality: {} }}", s.addr(), zone(i)))
        .collect();
    let yaml = format!(
        r#"
services: [{{ name: details, routes: [{{ to: [details] }}] }}]
backends:
  - name: details
    endpoints: [{}]
    load_balancer: round_robin
    outlier_detection: {{ consecutive_5xx: 1, base_ejection: 2s, max_ejection_percent: 100 }}
"#,
        endpoints.join(", ")
    );
    let config = proxyless_core::config::Config::from_yaml(&yaml).unwrap();
    let mesh = Mesh::from_config(config)
        .unwrap()
        .with_locality("us-east1/us-east1-b".parse().unwrap());
    let client = Client::new(&mesh);
    println!(
        "{:<34} {:>8} {:>12} {:>8}",
        "phase", "ok", "us-east1-b", "us-east1-c"
    );
    let phase = |name: &str, t: &Tally| {
        let b = t.get("b-1") + t.get("b-2");
        let c = t.get("c-1") + t.get("c-2");
        println!("{name:<34} {:>8} {b:>12} {c:>8}", t.ok);
    };
    phase(
        "both local endpoints healthy",
        &send(&client, "http://details/", 1000, 8).await,
    );
    // b-1 fails once and is ejected for two seconds.
    servers[0].set_fail_rate(1.0);
    for _ in 0..1000 {
        if servers[0].failed() > 0 {
            break;
        }
        let _ = client.get("http://details/").await;
    }
    servers[0].set_fail_rate(0.0);
    phase(
        "b-1 ejected: 1/2 x 1.4 = 70% stay",
        &send(&client, "http://details/", 1000, 8).await,
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    phase("b-1 back", &send(&client, "http://details/", 1000, 8).await);
    for s in servers {
        s.stop().await;
    }
}

async fn hedging() {
    title(
        8,
        "hedging",
        "search has ten endpoints; one answers in 200 ms, nine at once",
    );
    let servers = mesh::echo::one_slow(9, Duration::from_millis(200))
        .await
        .unwrap();
    let endpoints: Vec<String> = servers
        .iter()
        .map(|s| format!("\"{}\"", s.addr()))
        .collect();
    let yaml = format!(
        r#"
services:
  - {{ name: search, routes: [{{ to: [search] }}] }}
  - {{ name: search-hedged, routes: [{{ hedge: {{ delay: 20ms, budget_percent: 20 }}, to: [search] }}] }}
  - {{ name: search-limited, routes: [{{ rate_limit: {{ max_tokens: 100, fill_interval: 1h }}, to: [search] }}] }}
backends:
  - {{ name: search, endpoints: [{}], load_balancer: round_robin }}
"#,
        endpoints.join(", ")
    );
    let config = proxyless_core::config::Config::from_yaml(&yaml).unwrap();
    let client = Client::new(&Mesh::from_config(config).unwrap());
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>8}",
        "route", "ok", "p50", "p99", "hedges"
    );
    for (name, url) in [
        ("not hedged", "http://search/"),
        ("hedged after 20ms", "http://search-hedged/"),
    ] {
        let stats = client.runtime().stats();
        let before = stats.hedges.load(Ordering::Relaxed);
        let mut times = Vec::new();
        for _ in 0..400 {
            let t = Instant::now();
            if let Ok(resp) = client.get(url).await {
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                times.push(t.elapsed());
            }
        }
        times.sort();
        let at = |q: usize| times.get((times.len() * q).div_ceil(100).saturating_sub(1));
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        println!(
            "{name:<24} {:>8} {:>8.1}ms {:>8.1}ms {:>8}",
            times.len(),
            ms(at(50)),
            ms(at(99)),
            stats.hedges.load(Ordering::Relaxed) - before
        );
    }
    let t = send(
        &client.clone().refusals_as_responses(),
        "http://search-limited/",
        150,
        4,
    )
    .await;
    println!(
        "rate limit of 100: {} ok, {} refused with 429 (rate_limited)",
        t.ok,
        t.errors.get("http_429").copied().unwrap_or(0)
    );
    for s in servers {
        s.stop().await;
    }
}

async fn observability(mesh: &Mesh, client: &Client) {
    use mesh::spans::{self, SpanKind};
    title(
        6,
        "observability",
        "metrics from the admin server, one trace across two hops",
    );
    let admin = proxyless_hyper::admin::Admin::new(mesh).with_client(client);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    tokio::spawn(admin.serve(listener));
    let _ = send(client, "http://reviews/ratings/1", 200, 4).await;
    let bare = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let metrics = bare
        .get(format!("http://{admin_addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    let text = http_body_util::BodyExt::collect(metrics.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    println!("from http://{admin_addr}/metrics:");
    for line in text.lines().filter(|l| {
        (l.starts_with("mesh_requests_total")
            && l.contains("service=\"reviews\"")
            && l.contains("2xx"))
            || l.starts_with("mesh_outlier_ejections_total")
            || l.starts_with("mesh_retries_total{")
            || l.starts_with("mesh_config_version")
    }) {
        println!("  {line}");
    }

    // A frontend that calls reviews through the mesh, traced end to end.
    // As an application's own OpenTelemetry pipeline would collect them.
    let collector = spans::Collector::install();
    let frontend_client = client.clone();
    let handler = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
        let c = frontend_client.clone();
        async move {
            let resp = c.get("http://reviews/ratings/1").await?;
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await?
                .to_bytes();
            Ok::<_, proxyless_tower::BoxError>(http::Response::new(http_body_util::Full::new(body)))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let frontend = listener.local_addr().unwrap();
    let server = proxyless_hyper::Server::new(&Mesh::empty()).service("frontend");
    tokio::spawn(async move { server.serve(listener, handler).await });
    let outside = Mesh::from_config(
        proxyless_core::config::Config::from_yaml(&format!(
            "services: [{{ name: frontend, routes: [{{ to: [frontend] }}] }}]\nbackends: [{{ name: frontend, endpoints: ['{frontend}'] }}]"
        ))
        .unwrap(),
    )
    .unwrap();
    let resp = Client::new(&outside).get("http://frontend/").await.unwrap();
    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let all = collector.finished();
    let Some(root) = all
        .iter()
        .find(|s| s.name == "GET frontend" && s.span_kind == SpanKind::Client)
    else {
        println!("no trace recorded");
        return;
    };
    let trace_id = root.span_context.trace_id();
    println!("trace {trace_id}:");
    for line in spans::tree(&all, root) {
        println!("  {line}");
    }
    let hops = all
        .iter()
        .filter(|s| s.span_context.trace_id() == trace_id && s.span_kind == SpanKind::Server)
        .count();
    println!("one trace id across {hops} server hops");
    println!("admin endpoints to try: http://{admin_addr}/clusters  /config_dump  /ready  /live");
}
