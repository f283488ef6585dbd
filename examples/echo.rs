//! A meshed echo backend: the project's test and benchmark target.
//!
//! ```text
//! cargo run --release --example echo -- --listen 127.0.0.1:9001 --name v1 [--fail-rate 0.3] [--delay-ms 50] [--http2]
//! ```
//!
//! Answers every request with its name in the `x-backend` header and a JSON
//! body `{"backend", "method", "path", "headers"}`; `--fail-rate` answers
//! that share of requests with 503, `--delay-ms` delays every answer. The
//! server speaks HTTP/1.1 and HTTP/2 (h2c) on the same port; `--http2` is
//! accepted for symmetry with clients that need it said. Stops on Ctrl-C.

#![allow(clippy::print_stdout)]

use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: echo --listen ADDR --name NAME [--fail-rate F] [--delay-ms MS] [--http2]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let obs = proxyless_hyper::observe::init().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let mut args = std::env::args().skip(1);
    let (mut listen, mut name, mut fail, mut delay) = (None, None, 0.0, 0u64);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(value()),
            "--name" => name = Some(value()),
            "--fail-rate" => fail = value().parse().unwrap_or_else(|_| usage()),
            "--delay-ms" => delay = value().parse().unwrap_or_else(|_| usage()),
            "--http2" => {}
            _ => usage(),
        }
    }
    let (Some(listen), Some(name)) = (listen, name) else {
        usage()
    };
    let mesh = match proxyless_core::Mesh::from_env() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let echo = mesh::echo::Echo::new(&name)
        .fail_rate(fail)
        .delay(Duration::from_millis(delay));
    let handle = match echo.start(&mesh, listen.as_str()).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    if let Ok(Some(admin)) = obs.admin(&mesh, &[]).await {
        println!("admin on http://{admin}/");
    }
    println!("echo {name} listening on {}", handle.addr());
    let _ = tokio::signal::ctrl_c().await;
    handle.stop().await;
    obs.flush().await;
}
