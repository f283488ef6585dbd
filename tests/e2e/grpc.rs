//! gRPC through the mesh: tonic clients on `proxyless_tonic::channel`, tonic
//! servers behind `proxyless_tonic::serve`, and grpcio (Python) on either side.

use crate::support::mesh;
use mesh::certs::DevCa;
use mesh::greeter::{Greeter, GreeterClient, GreeterServer, HelloRequest};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::identity::tls::Identity;
use std::net::SocketAddr;
use std::time::Duration;

async fn start(greeter: Greeter, server: proxyless_hyper::Server) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let routes = tonic::service::Routes::new(greeter.into_server());
    tokio::spawn(proxyless_tonic::serve(server, listener, routes));
    addr
}

async fn plain(greeter: Greeter) -> SocketAddr {
    start(greeter, proxyless_hyper::Server::new(&Mesh::empty())).await
}

fn hello(name: &str) -> tonic::Request<HelloRequest> {
    tonic::Request::new(HelloRequest {
        name: name.into(),
        count: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_across_two_versions() {
    let (v1, v2) = (
        plain(Greeter::new("v1")).await,
        plain(Greeter::new("v2")).await,
    );
    let m = mesh(&format!(
        "services: [{{ name: greeter, routes: [{{ to: [{{ backend: v1, weight: 90 }}, {{ backend: v2, weight: 10 }}] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{v1}'] }}, {{ name: v2, endpoints: ['{v2}'] }}]"
    ));
    let mut client = GreeterClient::new(proxyless_tonic::channel(&m, "greeter"));
    let mut v2_count = 0;
    for _ in 0..2000 {
        let resp = client.say_hello(hello("x")).await.unwrap();
        assert_eq!(
            resp.metadata().get("x-backend").unwrap(),
            resp.get_ref().server.as_str()
        );
        v2_count += u32::from(resp.get_ref().server == "v2");
    }
    let share = f64::from(v2_count) / 2000.0;
    assert!((share - 0.1).abs() < 0.03, "v2 share {share}");
}

/// A tonic client on a mesh fed over incremental xDS with nothing listed:
/// its first call subscribes to the service and is routed by the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_on_a_control_plane_fetches_its_service_on_the_first_call() {
    let (v1, v2) = (
        plain(Greeter::new("v1")).await,
        plain(Greeter::new("v2")).await,
    );
    let served = mesh(&format!(
        "services: [{{ name: greeter, routes: [{{ to: [{{ backend: v1, weight: 0 }}, {{ backend: v2, weight: 100 }}] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{v1}'] }}, {{ name: v2, endpoints: ['{v2}'] }}]"
    ));
    let (addr, cp) = crate::support::dev_control_plane(&served);
    let settings = proxyless_core::xds::XdsSettings::new(
        &format!("http://{addr}"),
        "greeter-client",
        Vec::new(),
    )
    .delta();
    let (m, _xds) = Mesh::from_control_plane(settings).unwrap();
    assert!(m.snapshot().service_for_host("greeter").is_none());
    let mut client = GreeterClient::new(proxyless_tonic::channel(&m, "greeter"));
    for _ in 0..20 {
        let resp = client.say_hello(hello("x")).await.unwrap();
        assert_eq!(resp.get_ref().server, "v2", "routed by the fetched config");
    }
    assert!(m.snapshot().service_for_host("greeter").is_some());
    cp.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_by_grpc_status_and_only_the_listed_ones() {
    let flaky = Greeter::new("flaky").failing(0.3, tonic::Code::Unavailable);
    let broken = Greeter::new("broken").failing(1.0, tonic::Code::Internal);
    let (a, b) = (plain(flaky.clone()).await, plain(broken.clone()).await);
    let m = mesh(&format!(
        r#"
# 30% failures need more retries than the default 20% budget allows.
defaults: {{ retry_budget: {{ ratio: 1.0 }} }}
services:
  - name: flaky
    routes: [{{ retry: {{ attempts: 4, on: [unavailable], backoff: {{ base: 1ms, max: 2ms }} }}, to: [flaky] }}]
  - name: broken
    routes: [{{ retry: {{ attempts: 4, on: [unavailable] }}, to: [broken] }}]
backends:
  - {{ name: flaky, endpoints: ["{a}"] }}
  - {{ name: broken, endpoints: ["{b}"] }}
"#
    ));
    let mut client = GreeterClient::new(proxyless_tonic::channel(&m, "flaky"));
    let mut ok = 0;
    for _ in 0..500 {
        ok += u32::from(client.say_hello(hello("x")).await.is_ok());
    }
    // Four attempts leave 0.3^4 = 0.8% failing (about 4 of 500); without
    // retries 150 would fail. 20 bounds the tail of the former far away
    // from the latter.
    assert!(ok >= 480, "{ok} of 500 with UNAVAILABLE retried");
    assert!(
        flaky.served() > 550,
        "failures were retried: {}",
        flaky.served()
    );

    let mut client = GreeterClient::new(proxyless_tonic::channel(&m, "broken"));
    let status = client.say_hello(hello("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert_eq!(
        broken.served(),
        1,
        "INTERNAL is not in the route's conditions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sees_the_remaining_deadline() {
    let g = plain(Greeter::new("g")).await;
    let m = mesh(&format!(
        "services: [{{ name: greeter, routes: [{{ timeout: 5s, to: [g] }}] }}, {{ name: tight, routes: [{{ timeout: 200ms, to: [g] }}] }}]\nbackends: [{{ name: g, endpoints: ['{g}'] }}]"
    ));
    // The caller's 800 ms is shorter than the route's 5 s.
    let mut req = hello("x");
    req.set_timeout(Duration::from_millis(800));
    let seen = GreeterClient::new(proxyless_tonic::channel(&m, "greeter"))
        .say_hello(req)
        .await
        .unwrap()
        .into_inner()
        .deadline_ms;
    assert!(seen > 500 && seen <= 800, "server saw {seen} ms");
    // The route's 200 ms is shorter than the caller's.
    let mut req = hello("x");
    req.set_timeout(Duration::from_secs(10));
    let seen = GreeterClient::new(proxyless_tonic::channel(&m, "tight"))
        .say_hello(req)
        .await
        .unwrap()
        .into_inner()
        .deadline_ms;
    assert!(seen > 0 && seen <= 200, "server saw {seen} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_are_routed_and_refusals_are_grpc_statuses() {
    let g = plain(Greeter::new("g")).await;
    let m = mesh(&format!(
        r#"
services:
  - name: greeter
    routes: [{{ to: [g] }}]
  - name: gone
    routes: [{{ to: [gone] }}]
  - name: slow
    routes: [{{ timeout: 100ms, fault: {{ delay: {{ fixed: 1s, percent: 100 }} }}, to: [g] }}]
backends:
  - {{ name: g, endpoints: ["{g}"] }}
  - {{ name: gone, endpoints: [] }}
"#
    ));
    let mut client = GreeterClient::new(proxyless_tonic::channel(&m, "greeter"));
    let mut stream = client
        .say_hello_stream(HelloRequest {
            name: "s".into(),
            count: 5,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.message, format!("hello s #{n}"));
        n += 1;
    }
    assert_eq!(n, 5);

    let status = GreeterClient::new(proxyless_tonic::channel(&m, "gone"))
        .say_hello(hello("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no healthy endpoint"),
        "{status:?}"
    );
    assert_eq!(
        status.metadata().get("x-mesh-error").unwrap(),
        "no_healthy_endpoint"
    );
    let status = GreeterClient::new(proxyless_tonic::channel(&m, "slow"))
        .say_hello(hello("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    let status = GreeterClient::new(proxyless_tonic::channel(&m, "nowhere.invalid:1"))
        .say_hello(hello("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_and_authorization_per_method() {
    let ca = DevCa::new("demo.local").unwrap();
    let id = |name: &str| {
        let i = ca.issue_for(name).unwrap();
        Identity::from_pem(
            i.cert_pem.as_bytes(),
            i.key_pem.as_bytes(),
            ca.ca_pem().as_bytes(),
        )
        .unwrap()
    };
    let server_mesh = Mesh::from_config(
        Config::from_yaml(
            r#"
services: [{ name: greeter, routes: [{ to: [g] }] }]
backends: [{ name: g, endpoints: ["127.0.0.1:1"] }]
inbound:
  - service: greeter
    mtls: strict
    rules:
      - { from: ["spiffe://demo.local/web"], to: { paths: ["/mesh.demo.v1.Greeter/SayHello"] } }
"#,
        )
        .unwrap(),
    )
    .unwrap();
    server_mesh.set_identity(id("greeter"));
    let g = start(
        Greeter::new("g"),
        proxyless_hyper::Server::new(&server_mesh).service("greeter"),
    )
    .await;
    let m = mesh(&format!(
        "services: [{{ name: greeter, routes: [{{ to: [g] }}] }}]\nbackends: [{{ name: g, endpoints: ['{g}'], tls: {{ mode: mutual, identity: 'spiffe://demo.local/greeter' }} }}]"
    ));
    m.set_identity(id("web"));
    let mut client = GreeterClient::new(proxyless_tonic::channel(&m, "greeter"));
    let reply = client.say_hello(hello("x")).await.unwrap().into_inner();
    assert_eq!(reply.caller, "spiffe://demo.local/web");
    let status = client
        .say_hello_stream(HelloRequest {
            name: "x".into(),
            count: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("SayHelloStream"), "{status:?}");
}

mod interop {
    use super::*;

    #[allow(missing_docs, unreachable_pub, clippy::all)]
    mod peer {
        tonic::include_proto!("mesh.peer.v1");
    }
    use peer::echo_client::EchoClient;
    use peer::{EchoRequest, EchoResponse};

    use crate::support::{PeerStop as Stop, free_port, peer, peers};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(feature = "interop"),
        ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
    )]
    async fn the_grpcio_peer_behind_the_mesh_channel_with_status_retries() {
        let port = free_port();
        peer("setup-grpc-peer.sh", &[&port.to_string(), "py-peer"]);
        let _stop = Stop(format!("grpc-peer-{port}"));
        let m = mesh(&format!(
            "services: [{{ name: peer, routes: [{{ retry: {{ attempts: 10, on: [unavailable], backoff: {{ base: 1ms, max: 2ms }} }}, to: [py] }}] }}]\nbackends: [{{ name: py, endpoints: ['127.0.0.1:{port}'] }}]"
        ));
        let mut client = EchoClient::new(proxyless_tonic::channel(&m, "peer"));
        let mut ok = 0;
        let mut last: Option<EchoResponse> = None;
        for i in 0..100 {
            let mut req = tonic::Request::new(EchoRequest {
                message: i.to_string(),
                fail_code: 14,
                fail_ratio: 0.3,
                ..Default::default()
            });
            // The caller's trace: continued through the mesh to grpcio
            // (with or without a tracer provider installed).
            req.metadata_mut().insert(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                    .parse()
                    .unwrap(),
            );
            if let Ok(r) = client.echo(req).await {
                ok += 1;
                last = Some(r.into_inner());
            }
        }
        // A call fails only when all ten attempts do (0.3^10 = 6e-6): two
        // failures in 100 calls come about once in six million runs (with
        // five attempts it was once in 40).
        assert!(ok >= 99, "{ok} of 100 through 30% UNAVAILABLE");
        let last = last.unwrap();
        assert_eq!(last.server, "py-peer");
        assert!(
            last.metadata
                .get("traceparent")
                .is_some_and(|t| t.starts_with("00-0af7651916cd43dd8448eb211c80319c-")),
            "{:?}",
            last.metadata
        );
        // grpcio turns grpc-timeout into the call's deadline rather than metadata.
        assert!(
            last.metadata.contains_key("x-mesh-timeout-ms"),
            "{:?}",
            last.metadata
        );
    }

    /// Our tonic Echo, for the grpcio client.
    #[derive(Debug, Clone)]
    struct TonicEcho;

    type Replies = std::pin::Pin<
        Box<dyn futures_core::Stream<Item = Result<EchoResponse, tonic::Status>> + Send>,
    >;

    #[tonic::async_trait]
    impl peer::echo_server::Echo for TonicEcho {
        async fn echo(
            &self,
            req: tonic::Request<EchoRequest>,
        ) -> Result<tonic::Response<EchoResponse>, tonic::Status> {
            Ok(tonic::Response::new(EchoResponse {
                message: req.get_ref().message.clone(),
                server: "tonic-meshed".into(),
                ..Default::default()
            }))
        }

        type ServerStreamStream = Replies;

        async fn server_stream(
            &self,
            _req: tonic::Request<EchoRequest>,
        ) -> Result<tonic::Response<Replies>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
    }

    async fn python_client(args: &[String]) -> serde_json::Value {
        let mut cmd = tokio::process::Command::new(crate::support::peers_python());
        cmd.arg(peers().join("grpc/grpc_peer.py"))
            .arg("client")
            .args(args);
        let out = cmd.output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(feature = "interop"),
        ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
    )]
    async fn the_grpcio_client_calls_a_meshed_tonic_server_in_plaintext_and_mtls() {
        // Plaintext.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = tonic::service::Routes::new(peer::echo_server::EchoServer::new(TonicEcho));
        tokio::spawn(proxyless_tonic::serve(
            proxyless_hyper::Server::new(&Mesh::empty()),
            listener,
            routes,
        ));
        let out = python_client(&[
            "--target".into(),
            addr.to_string(),
            "-n".into(),
            "20".into(),
        ])
        .await;
        assert_eq!(out["counts"]["tonic-meshed"], 20, "{out}");

        // Strict mTLS, the Python client presenting a development SVID.
        let ca = DevCa::new("demo.local").unwrap();
        let dir = tempfile::tempdir().unwrap();
        ca.write_ca(dir.path()).unwrap();
        ca.issue_for("py-client")
            .unwrap()
            .write(dir.path(), "client")
            .unwrap();
        let server = ca.issue_for("echo").unwrap();
        let server_mesh = Mesh::from_config(
            Config::from_yaml(
                "services: [{ name: echo, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]\ninbound: [{ service: echo, mtls: strict }]",
            )
            .unwrap(),
        )
        .unwrap();
        server_mesh.set_identity(
            Identity::from_pem(
                server.cert_pem.as_bytes(),
                server.key_pem.as_bytes(),
                ca.ca_pem().as_bytes(),
            )
            .unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let routes = tonic::service::Routes::new(peer::echo_server::EchoServer::new(TonicEcho));
        tokio::spawn(proxyless_tonic::serve(
            proxyless_hyper::Server::new(&server_mesh).service("echo"),
            listener,
            routes,
        ));
        let d = dir.path();
        let tls = |with_cert: bool| {
            let mut a = vec![
                "--target".to_owned(),
                format!("localhost:{}", addr.port()),
                "-n".into(),
                "20".into(),
                "--timeout".into(),
                "3".into(),
                "--tls-ca".into(),
                d.join("ca.pem").display().to_string(),
            ];
            if with_cert {
                a.extend([
                    "--tls-cert".into(),
                    d.join("client.pem").display().to_string(),
                    "--tls-key".into(),
                    d.join("client-key.pem").display().to_string(),
                ]);
            }
            a
        };
        let out = python_client(&tls(true)).await;
        assert_eq!(out["counts"]["tonic-meshed"], 20, "{out}");
        let out = python_client(&tls(false)).await;
        assert!(
            out["counts"].get("tonic-meshed").is_none(),
            "served without a client certificate: {out}"
        );
    }
}

/// A channel to a name that is no host fails every call with the name,
/// and sends nothing anywhere (it used to go to `invalid.service`).
#[tokio::test]
async fn a_channel_to_an_invalid_service_names_it_on_every_call() {
    let m = Mesh::empty();
    let mut client = GreeterClient::new(proxyless_tonic::channel(&m, "no spaces allowed"));
    for _ in 0..2 {
        let status = client.say_hello(hello("x")).await.unwrap_err();
        assert!(
            status
                .message()
                .contains("`no spaces allowed` is not a valid service host"),
            "{status:?}"
        );
    }
}

/// A backend declared `protocol: grpc` (or `h2c`) is spoken to in HTTP/2
/// even by a plain HTTP/1.1 caller: here a tonic server, which speaks
/// nothing else, answers an HTTP/1.1 GET through the mesh (an `http1`
/// backend is reached in HTTP/1.1 and fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_protocol_backend_is_reached_over_http2() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Greeter::new("h2-only").into_server())
            .serve_with_incoming(incoming),
    );
    for (protocol, works) in [("grpc", true), ("h2c", true), ("http1", false)] {
        let m = mesh(&format!(
            "services: [{{ name: greeter, routes: [{{ to: [{{ backend: b }}] }}] }}]\nbackends: [{{ name: b, endpoints: ['{addr}'], protocol: {protocol} }}]"
        ));
        let client = proxyless_hyper::Client::new(&m);
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            client.get("http://greeter/mesh.demo.v1.Greeter/Nothing"),
        )
        .await
        .expect("an answer within 5 s");
        match answer {
            Ok(resp) => {
                assert!(works, "{protocol}: a tonic server answered HTTP/1.1?");
                // tonic's answer to an unknown method: gRPC's UNIMPLEMENTED.
                assert_eq!(resp.headers().get("grpc-status").unwrap(), "12");
            }
            Err(e) => assert!(!works, "{protocol}: {e}"),
        }
    }
}

/// tonic's client conventions work on a mesh channel: an interceptor (its
/// metadata reaches the mesh's header match), gzip both ways, and a
/// decoding limit (a reply over it is refused by the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interceptors_compression_and_message_limits_work_on_a_mesh_channel() {
    use tonic::codec::CompressionEncoding::Gzip;
    let serve = |name: &str| {
        let server = GreeterServer::new(Greeter::new(name))
            .accept_compressed(Gzip)
            .send_compressed(Gzip);
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let routes = tonic::service::Routes::new(server);
            tokio::spawn(proxyless_tonic::serve(
                proxyless_hyper::Server::new(&Mesh::empty()),
                listener,
                routes,
            ));
            addr
        }
    };
    let (v1, v2) = (serve("v1").await, serve("v2").await);
    let m = mesh(&format!(
        "services: [{{ name: greeter, routes: [{{ match: {{ headers: {{ x-user: {{ exact: tester }} }} }}, to: [{{ backend: v2 }}] }}, {{ to: [{{ backend: v1 }}] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{v1}'] }}, {{ name: v2, endpoints: ['{v2}'] }}]"
    ));
    let channel = proxyless_tonic::channel(&m, "greeter");

    // The interceptor's metadata is a header the route matches on.
    let mut tester =
        GreeterClient::with_interceptor(channel.clone(), |mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("x-user", "tester".parse().unwrap());
            Ok(req)
        });
    assert_eq!(
        tester.say_hello(hello("x")).await.unwrap().get_ref().server,
        "v2"
    );
    // An interceptor that refuses answers without sending.
    let mut refused =
        GreeterClient::with_interceptor(channel.clone(), |_req: tonic::Request<()>| {
            Err(tonic::Status::permission_denied("not today"))
        });
    let status = refused.say_hello(hello("x")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);

    // gzip both ways.
    let mut gz = GreeterClient::new(channel.clone())
        .send_compressed(Gzip)
        .accept_compressed(Gzip);
    let reply = gz.say_hello(hello(&"z".repeat(10_000))).await.unwrap();
    assert_eq!(reply.get_ref().server, "v1");
    assert!(
        reply.get_ref().message.contains("zzzz"),
        "{:?}",
        reply.get_ref().message
    );

    // A reply over the decoding limit is refused by the client.
    let mut small = GreeterClient::new(channel).max_decoding_message_size(16);
    let status = small
        .say_hello(hello(&"y".repeat(1_000)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
}
