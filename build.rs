//! Generates the gRPC code of the examples and tests: the mesh's own
//! `proto/greeter.proto`, and the interop peer's `echo.proto` from
//! `../shared/peers` when it is there (cfg `mesh_peer_proto`).

use std::path::Path;

fn config() -> Result<tonic_prost_build::Config, Box<dyn std::error::Error>> {
    // protoc comes from a crate, not the system.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rustc-check-cfg=cfg(mesh_peer_proto)");
    println!("cargo::rerun-if-changed=proto/greeter.proto");
    tonic_prost_build::configure().compile_with_config(
        config()?,
        &[Path::new("proto/greeter.proto")],
        &[Path::new("proto")],
    )?;
    let peer = Path::new("../shared/peers/grpc/echo.proto");
    println!("cargo::rerun-if-changed={}", peer.display());
    if peer.exists() {
        tonic_prost_build::configure().compile_with_config(
            config()?,
            &[peer],
            &[Path::new("../shared/peers/grpc")],
        )?;
        println!("cargo::rustc-cfg=mesh_peer_proto");
    }
    Ok(())
}
