//! A tonic Greeter client on the mesh channel.
//!
//! ```text
//! MESH_CONFIG=mesh.yaml cargo run --example greeter_client -- [--service greeter] [-n 10] [--name you]
//! ```
//!
//! Calls `SayHello` n times through `proxyless_tonic::channel` and prints which
//! server answered each call, or the status it got.

#![allow(clippy::print_stdout)]

use mesh::greeter::{GreeterClient, HelloRequest};

#[tokio::main]
async fn main() {
    let obs = proxyless_hyper::observe::init().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1)
    });
    let mut args = std::env::args().skip(1);
    let (mut service, mut n, mut who) = ("greeter".to_owned(), 10u32, "you".to_owned());
    while let Some(a) = args.next() {
        let Some(v) = args.next() else {
            eprintln!("usage: greeter_client [--service S] [-n N] [--name NAME]");
            std::process::exit(2)
        };
        match a.as_str() {
            "--service" => service = v,
            "-n" => n = v.parse().unwrap_or(10),
            "--name" => who = v,
            _ => {
                eprintln!("unknown flag {a}");
                std::process::exit(2)
            }
        }
    }
    let mesh = proxyless_core::Mesh::from_env_ready(std::time::Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        });
    let mut client = GreeterClient::new(proxyless_tonic::channel(&mesh, &service));
    for i in 0..n {
        let req = HelloRequest {
            name: who.clone(),
            count: 0,
        };
        match client.say_hello(req).await {
            Ok(r) => println!("{i}: {} (from {})", r.get_ref().message, r.get_ref().server),
            Err(s) => println!("{i}: {:?}: {}", s.code(), s.message()),
        }
    }
    obs.flush().await;
}
