//! Generates the gRPC code of the examples and tests: the mesh's own
//! `proto/greeter.proto`, the README's `proto/helloworld.proto`, the test
//! SPIFFE agent's `proto/workload.proto` (the Workload API's X.509 half), and the
//! interop peer's
//! `tests/peers/grpc/echo.proto` (the grpcio peer serves the same file).

use std::path::Path;

fn config() -> Result<tonic_prost_build::Config, Box<dyn std::error::Error>> {
    // protoc comes from a crate, not the system.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    Ok(config)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for (file, dir) in [
        ("proto/greeter.proto", "proto"),
        ("proto/helloworld.proto", "proto"),
        ("proto/workload.proto", "proto"),
        ("tests/peers/grpc/echo.proto", "tests/peers/grpc"),
    ] {
        println!("cargo::rerun-if-changed={file}");
        tonic_prost_build::configure().compile_with_config(
            config()?,
            &[Path::new(file)],
            &[Path::new(dir)],
        )?;
    }
    Ok(())
}
