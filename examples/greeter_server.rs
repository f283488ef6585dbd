//! A meshed tonic Greeter server.
//!
//! ```text
//! cargo run --example greeter_server -- --listen 127.0.0.1:50051 --name v1 [--fail-rate 0.2] [--fail-code unavailable]
//! ```
//!
//! Replies carry its name (in the message and as `x-backend` metadata), the
//! deadline budget it saw and its caller's SPIFFE ID. `--fail-rate` fails
//! that share of calls with `--fail-code` (a gRPC code name, default
//! `unavailable`). Identity, inbound policy (`MESH_SERVICE`) and telemetry
//! come from the environment, as for every meshed program. Stops on Ctrl-C.

#![allow(clippy::print_stdout)]

fn usage() -> ! {
    eprintln!(
        "usage: greeter_server --listen ADDR --name NAME [--fail-rate F] [--fail-code unavailable]"
    );
    std::process::exit(2)
}

fn code(name: &str) -> Option<tonic::Code> {
    use tonic::Code::*;
    Some(match name.replace('-', "_").to_ascii_lowercase().as_str() {
        "cancelled" => Cancelled,
        "unknown" => Unknown,
        "invalid_argument" => InvalidArgument,
        "deadline_exceeded" => DeadlineExceeded,
        "not_found" => NotFound,
        "permission_denied" => PermissionDenied,
        "resource_exhausted" => ResourceExhausted,
        "unimplemented" => Unimplemented,
        "internal" => Internal,
        "unavailable" => Unavailable,
        _ => return None,
    })
}

#[tokio::main]
async fn main() {
    let obs = proxyless_hyper::observe::init().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let mut args = std::env::args().skip(1);
    let (mut listen, mut name, mut rate, mut fail) = (None, None, 0.0, tonic::Code::Unavailable);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = Some(value()),
            "--name" => name = Some(value()),
            "--fail-rate" => rate = value().parse().unwrap_or_else(|_| usage()),
            "--fail-code" => fail = code(&value()).unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let (Some(listen), Some(name)) = (listen, name) else {
        usage()
    };
    let mesh = proxyless_core::Mesh::from_env().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot listen on {listen}: {e}");
            std::process::exit(1)
        });
    let _ = obs.admin(&mesh, &[]).await;
    println!(
        "greeter {name} listening on {}",
        listener
            .local_addr()
            .map_or(listen.clone(), |a| a.to_string())
    );
    let greeter = mesh::greeter::Greeter::new(&name).failing(rate, fail);
    let routes = tonic::service::Routes::new(greeter.into_server());
    tokio::select! {
        r = proxyless_tonic::serve(proxyless_hyper::Server::new(&mesh), listener, routes) => {
            if let Err(e) = r { eprintln!("{e}"); }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    obs.flush().await;
}
