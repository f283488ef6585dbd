//! A load generator that sends through the mesh and reports what happened,
//! as one JSON object on stdout.
//!
//! ```text
//! MESH_CONFIG=mesh.yaml cargo run --release --example load -- \
//!     --service reviews --path /ratings/1 --requests 10000 --concurrency 32 [--rate R] [-H k:v]
//! ```
//!
//! With `--grpc` it calls the Greeter (`SayHello`) through the mesh
//! channel instead: `by_backend` counts the `x-backend` metadata and errors
//! are counted by gRPC status name (`unavailable`, `deadline_exceeded`).
//!
//! Output keys: `requests`, `ok` (2xx), `errors` (count per kind: mesh
//! refusals by name such as `circuit_open`, HTTP statuses as `http_503`),
//! `by_backend` (count per `x-backend`), `retries`, `latency_ms` (`p50`,
//! `p90`, `p99`, `max`), `rps` and `workers_failed` (workers that panicked:
//! what they sent is lost, and the exit code is 1).

#![allow(clippy::print_stdout)]

use mesh::tally::Tally;
use proxyless_hyper::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Args {
    service: String,
    path: String,
    requests: u64,
    concurrency: u64,
    rate: Option<f64>,
    grpc: bool,
    headers: Vec<(String, String)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: load --service NAME [--path /p] [--requests N] [--concurrency C] [--rate R] [-H k:v]... [--grpc]"
    );
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        service: String::new(),
        path: "/".into(),
        requests: 1000,
        concurrency: 16,
        rate: None,
        headers: Vec::new(),
        grpc: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--service" => a.service = value(),
            "--path" => a.path = value(),
            "--requests" => a.requests = value().parse().unwrap_or_else(|_| usage()),
            "--concurrency" => a.concurrency = value().parse().unwrap_or_else(|_| usage()),
            "--rate" => a.rate = Some(value().parse().unwrap_or_else(|_| usage())),
            "--grpc" => a.grpc = true,
            "-H" => {
                let h = value();
                let Some((k, v)) = h.split_once(':') else {
                    usage()
                };
                a.headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            _ => usage(),
        }
    }
    if a.service.is_empty() || a.concurrency == 0 {
        usage();
    }
    a
}

/// One worker's results.
#[derive(Default)]
struct Worker {
    counts: Tally,
    latencies_us: Vec<u64>,
}

#[tokio::main]
async fn main() {
    let obs = proxyless_hyper::observe::init().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let args = Arc::new(args());
    let mesh = proxyless_core::Mesh::from_env_ready(std::time::Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    let client = Client::new(&mesh);
    let _ = obs.admin(&mesh, &[&client]).await;
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, next) = (client.clone(), args.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut t = Worker::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.requests {
                    break;
                }
                if let Some(rate) = args.rate {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                if args.grpc {
                    let mut greeter = mesh::greeter::GreeterClient::new(
                        proxyless_tonic::MeshChannel::with_client(client.clone(), &args.service),
                    );
                    let sent = Instant::now();
                    let result = greeter
                        .say_hello(mesh::greeter::HelloRequest {
                            name: "load".into(),
                            count: 0,
                        })
                        .await;
                    t.latencies_us.push(sent.elapsed().as_micros() as u64);
                    match result {
                        Ok(r) => {
                            t.counts.ok += 1;
                            if let Some(b) =
                                r.metadata().get("x-backend").and_then(|v| v.to_str().ok())
                            {
                                *t.counts.by_backend.entry(b.to_owned()).or_default() += 1;
                            }
                        }
                        Err(s) => t.counts.error(&snake(&format!("{:?}", s.code()))),
                    }
                    continue;
                }
                let mut req = http::Request::get(format!("http://{}{}", args.service, args.path));
                for (k, v) in &args.headers {
                    req = req.header(k, v);
                }
                let Ok(req) = req.body(http_body_util::Empty::<bytes::Bytes>::new()) else {
                    usage()
                };
                let sent = Instant::now();
                let result = client.request(req).await;
                t.latencies_us.push(sent.elapsed().as_micros() as u64);
                t.counts.record(result).await;
            }
            t
        }));
    }
    let mut all = Worker::default();
    // A worker that fails is counted and said, and the exit code says so:
    // a load tool that hides failure hides the next bug.
    let mut workers_failed = 0u32;
    for w in workers {
        match w.await {
            Ok(t) => {
                all.counts.merge(t.counts);
                all.latencies_us.extend(t.latencies_us);
            }
            Err(e) => {
                workers_failed += 1;
                eprintln!("load: a worker failed: {e}");
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((all.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        all.latencies_us[i] as f64 / 1000.0
    };
    let out = serde_json::json!({
        "requests": all.latencies_us.len(),
        "ok": all.counts.ok,
        "errors": all.counts.errors,
        "by_backend": all.counts.by_backend,
        "retries": client.runtime().stats().retries.load(Ordering::Relaxed),
        "retries_refused": {
            "budget": client.runtime().stats().budget_exhausted.load(Ordering::Relaxed),
            "max_retries": client.runtime().stats().retry_overflow.load(Ordering::Relaxed),
        },
        "latency_ms": { "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) },
        "rps": (all.latencies_us.len() as f64 / elapsed).round(),
        "workers_failed": workers_failed,
    });
    println!("{out}");
    obs.flush().await;
    if workers_failed > 0 {
        std::process::exit(1);
    }
}

/// `DeadlineExceeded` -> `deadline_exceeded`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
