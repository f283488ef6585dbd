//! The server side as layers on servers the mesh does not own: axum
//! (`axum::serve` with the mesh's listener, and axum under the mesh's
//! server), tonic's `Server::builder().layer(..)`, a hyper-util connection
//! loop, and a Unix socket. Each serves a meshed request with mTLS and
//! authorization, and refuses what the policy refuses.

use crate::support::{identity, mesh};
use mesh::certs::DevCa;
use mesh::greeter::{Greeter, GreeterClient, HelloRequest};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_hyper::Client;
use proxyless_tower::ext::PeerIdentity;
use proxyless_tower::inbound::{InboundLayer, WithConnection};
use std::net::SocketAddr;
use tower::Layer;

/// A strict mTLS server mesh for `service`: `spiffe://demo.local/productpage`
/// may GET `/ratings/*`, nobody anything else.
fn server_mesh(ca: &DevCa, service: &str, rule_path: &str) -> Mesh {
    let m = Mesh::from_config(
        Config::from_yaml(&format!(
            r#"
inbound:
  - service: {service}
    mtls: strict
    rules:
      - {{ from: ["spiffe://demo.local/productpage"], to: {{ paths: ["{rule_path}"] }} }}
"#
        ))
        .unwrap(),
    )
    .unwrap()
    .with_service(service);
    m.set_identity(identity(ca, &ca.issue_for(service).unwrap()));
    m
}

/// A client mesh that calls `service` at `addr` over mTLS as `caller`.
fn client_as(ca: &DevCa, caller: &str, service: &str, addr: SocketAddr) -> Client {
    let m = mesh(&format!(
        "services: [{{ name: {service}, routes: [{{ to: [b] }}] }}]\nbackends: [{{ name: b, endpoints: ['{addr}'], tls: {{ mode: mutual, identity: 'spiffe://demo.local/{service}' }} }}]"
    ));
    m.set_identity(identity(ca, &ca.issue_for(caller).unwrap()));
    Client::new(&m).refusals_as_responses()
}

/// A plaintext client of `addr`.
fn plaintext(service: &str, addr: SocketAddr) -> Client {
    Client::new(&mesh(&format!(
        "services: [{{ name: {service}, routes: [{{ to: [b] }}] }}]\nbackends: [{{ name: b, endpoints: ['{addr}'] }}]"
    )))
    .refusals_as_responses()
}

async fn get(client: &Client, url: &str) -> (u16, String, Option<String>) {
    let resp = client.get(url).await.unwrap();
    let status = resp.status().as_u16();
    let kind = resp
        .headers()
        .get("x-mesh-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), kind)
}

/// The same checks for every server: the allowed caller is served and
/// sees itself; another identity, another path (also one reached by
/// `..`), and a plaintext caller are refused.
async fn check(ca: &DevCa, service: &str, addr: SocketAddr, expect_in_body: &[&str]) {
    let allowed = client_as(ca, "productpage", service, addr);
    let (status, body, _) = get(&allowed, &format!("http://{service}/ratings/1")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("spiffe://demo.local/productpage"), "{body}");
    for want in expect_in_body {
        assert!(body.contains(want), "{want} not in {body}");
    }
    let (status, _, kind) = get(&allowed, &format!("http://{service}/ratings/../admin")).await;
    assert_eq!((status, kind.as_deref()), (403, Some("unauthorized")));
    let other = client_as(ca, "stranger", service, addr);
    let (status, _, kind) = get(&other, &format!("http://{service}/ratings/1")).await;
    assert_eq!((status, kind.as_deref()), (403, Some("unauthorized")));
    let (status, _, kind) = get(
        &plaintext(service, addr),
        &format!("http://{service}/ratings/1"),
    )
    .await;
    assert_eq!(status, 503, "a plaintext caller of strict mTLS: {kind:?}");
}

/// An axum handler that says who called, from where.
async fn who(
    axum::extract::ConnectInfo(remote): axum::extract::ConnectInfo<SocketAddr>,
    axum::Extension(peer): axum::Extension<PeerIdentity>,
) -> String {
    let caller = peer.0.map(|c| c.to_string()).unwrap_or_default();
    format!("caller={caller} remote={remote}")
}

fn router() -> axum::Router {
    axum::Router::new()
        .route("/ratings/{id}", axum::routing::get(who))
        .route("/admin", axum::routing::get(|| async { "admin" }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_serve_with_the_mesh_listener_and_layer() {
    use axum::ServiceExt as _;
    use proxyless_hyper::axum::{MeshListener, MeshPeer};
    let ca = DevCa::new("demo.local").unwrap();
    let served = server_mesh(&ca, "ax-reviews", "/ratings/*");
    let listener = MeshListener::bind(&served, "127.0.0.1:0").await.unwrap();
    let addr = axum::serve::Listener::local_addr(&listener)
        .unwrap()
        .0
        .local
        .unwrap();
    let app = proxyless_hyper::axum::layer(&served).layer(router());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<MeshPeer>(),
        )
        .await
    });
    check(&ca, "ax-reviews", addr, &["remote=127.0.0.1:"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_under_the_meshs_server_gets_connect_info() {
    let ca = DevCa::new("demo.local").unwrap();
    let served = server_mesh(&ca, "ax-served", "/ratings/*");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { proxyless_hyper::serve(&served, listener, router()).await });
    check(&ca, "ax-served", addr, &["remote=127.0.0.1:"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_server_builder_with_the_inbound_layer_and_mesh_incoming() {
    let ca = DevCa::new("demo.local").unwrap();
    let served = server_mesh(&ca, "greeter", "/mesh.demo.v1.Greeter/SayHello");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = proxyless_tonic::incoming(&served, listener).unwrap();
    let layer = InboundLayer::new(&served);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(Greeter::new("tonic").into_server())
            .serve_with_incoming(incoming),
    );
    let m = mesh(&format!(
        "services: [{{ name: greeter, routes: [{{ to: [g] }}] }}]\nbackends: [{{ name: g, endpoints: ['{addr}'], tls: {{ mode: mutual, identity: 'spiffe://demo.local/greeter' }} }}]"
    ));
    m.set_identity(identity(&ca, &ca.issue_for("productpage").unwrap()));
    let mut client = GreeterClient::new(proxyless_tonic::channel(&m, "greeter"));
    let hello = || {
        tonic::Request::new(HelloRequest {
            name: "x".into(),
            count: 1,
        })
    };
    let reply = client.say_hello(hello()).await.unwrap().into_inner();
    assert_eq!(reply.server, "tonic");
    assert_eq!(reply.caller, "spiffe://demo.local/productpage");
    let status = client.say_hello_stream(hello()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // Another identity is refused by authorization; no identity by mTLS.
    let other = mesh(&format!(
        "services: [{{ name: greeter, routes: [{{ to: [g] }}] }}]\nbackends: [{{ name: g, endpoints: ['{addr}'], tls: {{ mode: mutual, identity: 'spiffe://demo.local/greeter' }} }}]"
    ));
    other.set_identity(identity(&ca, &ca.issue_for("stranger").unwrap()));
    let status = GreeterClient::new(proxyless_tonic::channel(&other, "greeter"))
        .say_hello(hello())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let status = GreeterClient::new(proxyless_tonic::channel(&plaintext_mesh(addr), "greeter"))
        .say_hello(hello())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

fn plaintext_mesh(addr: SocketAddr) -> Mesh {
    mesh(&format!(
        "services: [{{ name: greeter, routes: [{{ to: [g] }}] }}]\nbackends: [{{ name: g, endpoints: ['{addr}'] }}]"
    ))
}

/// The application's own echo of the caller, for the plain hyper servers.
fn hyper_app() -> impl tower::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<http_body_util::Full<bytes::Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let caller = req
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.0.as_ref())
            .map(|c| c.to_string())
            .unwrap_or_default();
        Ok(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(format!("caller={caller} path={}", req.uri().path())),
        )))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hyper_util_server_of_your_own_with_the_acceptor_and_layer() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let ca = DevCa::new("demo.local").unwrap();
    let served = server_mesh(&ca, "hy-reviews", "/ratings/*");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = proxyless_hyper::accept::Acceptor::new(&served);
    let layer = InboundLayer::new(&served);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, layer) = (acceptor.clone(), layer.clone());
            tokio::spawn(async move {
                let Ok((stream, info)) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = WithConnection::new(layer.layer(hyper_app()), info);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(
                        TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(svc),
                    )
                    .await;
            });
        }
    });
    check(&ca, "hy-reviews", addr, &["path=/ratings/1"]).await;
}

/// A Unix socket: no TLS, no identity; the policy's rules for anyone apply.
#[tokio::test]
async fn a_unix_socket_server_with_the_layer() {
    use hyper_util::rt::TokioIo;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let served = Mesh::from_config(
        Config::from_yaml(
            r#"
inbound:
  - service: local
    mtls: permissive
    rules:
      - { to: { paths: ["/public/*"] } }
"#,
        )
        .unwrap(),
    )
    .unwrap()
    .with_service("local");
    let layer = InboundLayer::new(&served);
    tokio::spawn(async move {
        loop {
            let Ok((unix, _)) = listener.accept().await else {
                return;
            };
            let svc = WithConnection::new(layer.layer(hyper_app()), Default::default());
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(unix),
                hyper_util::service::TowerToHyperService::new(svc),
            ));
        }
    });
    for (path, want) in [
        ("/public/a", 200),
        ("/private", 403),
        ("/public/../private", 403),
    ] {
        let unix = tokio::net::UnixStream::connect(&path_of(&dir))
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(unix))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", "local")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{path}");
    }
}

fn path_of(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("mesh.sock")
}
