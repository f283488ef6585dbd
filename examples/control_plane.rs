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
//! (`MESH_XDS_SERVICES`, or `xds:///reviews` for gRPC's own xDS client). An
//! invalid edit is refused by the file watcher and never served.

#![allow(clippy::print_stdout)]

#[tokio::main]
async fn main() {
    let _obs = mesh::observe::init();
    let mut args = std::env::args().skip(1);
    let (mut config, mut listen) = (None, "127.0.0.1:18000".to_owned());
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--config", Some(v)) => config = Some(v),
            ("--listen", Some(v)) => listen = v,
            _ => {
                eprintln!("usage: control_plane --config mesh.yaml [--listen 127.0.0.1:18000]");
                std::process::exit(2)
            }
        }
    }
    let Some(config) = config else {
        eprintln!("usage: control_plane --config mesh.yaml [--listen 127.0.0.1:18000]");
        std::process::exit(2)
    };
    let mesh = mesh_core::Mesh::from_file(&config).unwrap_or_else(|e| {
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
    if let Err(e) = mesh_core::xds::server::serve(mesh, addr).await {
        eprintln!("{e}");
        std::process::exit(1);
    }
}
