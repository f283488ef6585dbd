//! The development control plane: serves a mesh file as xDS over ADS and
//! pushes every change of the file to connected clients.
//!
//! ```text
//! cargo run --example control_plane -- --config mesh.yaml --listen 127.0.0.1:18000
//! MESH_CONTROL_PLANE=http://127.0.0.1:18000 MESH_XDS_SERVICES=reviews \
//!   cargo run --release --example load -- --service reviews --requests 1000
//! ```
//!
//! Clients subscribe to the listeners named after the services they call
//! (on their first call, or up front with `MESH_XDS_SERVICES`; gRPC's own
//! xDS client with `xds:///reviews`), over either variant of ADS (state of
//! the world, or incremental with `MESH_XDS_API=delta`). An invalid edit is
//! refused by the file watcher and never served.
//!
//! `--envoy-listen 127.0.0.1:10000` also serves Envoy (which subscribes to
//! every listener and needs a socket): a listener on that address routing
//! every service by Host, e.g. with the peer script
//! `tests/peers/setup-envoy.sh ads 18000 9901` and then
//! `curl -H 'Host: reviews' 127.0.0.1:10000/`.

#![allow(clippy::print_stdout)]

#[tokio::main]
async fn main() {
    let _obs = proxyless_hyper::observe::init();
    let mut args = std::env::args().skip(1);
    const USAGE: &str =
        "usage: control_plane --config mesh.yaml [--listen 127.0.0.1:18000] [--envoy-listen ADDR]";
    let (mut config, mut listen, mut envoy) = (None, "127.0.0.1:18000".to_owned(), None);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--config", Some(v)) => config = Some(v),
            ("--listen", Some(v)) => listen = v,
            ("--envoy-listen", Some(v)) => envoy = Some(v),
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2)
            }
        }
    }
    let Some(config) = config else {
        eprintln!("{USAGE}");
        std::process::exit(2)
    };
    let mesh = proxyless_core::Mesh::from_file(&config).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let addr: std::net::SocketAddr = listen.parse().unwrap_or_else(|e| {
        eprintln!("--listen {listen}: {e}");
        std::process::exit(2)
    });
    println!(
        "serving {config} (version {}) as xDS on {addr}",
        mesh.snapshot().version()
    );
    let mut cp = mesh::control_plane::DevControlPlane::new(mesh);
    if let Some(envoy) = envoy {
        let envoy: std::net::SocketAddr = envoy.parse().unwrap_or_else(|e| {
            eprintln!("--envoy-listen {envoy}: {e}");
            std::process::exit(2)
        });
        println!("Envoy gets a listener on {envoy}");
        cp = cp.envoy_listener(envoy);
    }
    if let Err(e) = cp.serve_with_shutdown(addr, std::future::pending()).await {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
