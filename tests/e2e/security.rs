//! Mutual TLS with SPIFFE identities, and authorization, over real rustls
//! handshakes on loopback with certificates made per test.

use crate::support::run;
use mesh::certs::{DevCa, IssueOptions, Issued};
use mesh::echo::{Echo, EchoHandle};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::identity::tls::Identity;
use proxyless_hyper::Client;
use proxyless_tower::error::ErrorKind;
use rustls::pki_types::pem::PemObject;
use std::sync::atomic::Ordering;
use std::time::Duration;

const TD: &str = "demo.local";
const REVIEWS: &str = "spiffe://demo.local/reviews";
const PRODUCTPAGE: &str = "spiffe://demo.local/productpage";

use crate::support::identity;

fn inbound(mode: &str) -> String {
    format!(
        r#"
services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]
backends: [{{ name: reviews, endpoints: ["127.0.0.1:1"] }}]
inbound:
  - service: reviews
    mtls: {mode}
    rules:
      - action: allow
        from: ["{PRODUCTPAGE}"]
        to: {{ paths: ["/ratings/*"], methods: [GET] }}
      - action: allow
        from: ["*"]
        to: {{ paths: ["/health"] }}
      - action: allow
        from: ["spiffe://demo.local/ops/*"]
      - action: deny
        to: {{ paths: ["/admin*"] }}
"#
    )
}

/// A reviews server with `mode`, presenting `spiffe://demo.local/reviews`.
async fn server(ca: &DevCa, mode: &str) -> (EchoHandle, Mesh) {
    let mesh = Mesh::from_config(Config::from_yaml(&inbound(mode)).unwrap()).unwrap();
    mesh.set_identity(identity(ca, &ca.issue_for("reviews").unwrap()));
    let echo = Echo::new("reviews")
        .service("reviews")
        .start(&mesh, "127.0.0.1:0")
        .await
        .unwrap();
    (echo, mesh)
}

/// A client of `server` whose backend expects `expected` over mTLS (or
/// plaintext when None), presenting `me` if given.
fn client(ca: &DevCa, server: &EchoHandle, expected: Option<&str>, me: Option<&Issued>) -> Client {
    let tls = expected.map_or(String::new(), |id| {
        format!(", tls: {{ mode: mutual, identity: \"{id}\" }}")
    });
    let mesh = Mesh::from_config(
        Config::from_yaml(&format!(
            "services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]\nbackends: [{{ name: reviews, endpoints: ['{}']{tls} }}]",
            server.addr()
        ))
        .unwrap(),
    )
    .unwrap();
    if let Some(me) = me {
        mesh.set_identity(identity(ca, me));
    }
    Client::new(&mesh)
}

async fn body_json(resp: http::Response<proxyless_hyper::Body>) -> serde_json::Value {
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_carries_the_caller_identity_to_the_application() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = server(&ca, "strict").await;
    let pp = ca.issue_for("productpage").unwrap();
    let c = client(&ca, &reviews, Some(REVIEWS), Some(&pp));
    let resp = c.get("http://reviews/ratings/1").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_json(resp).await["caller"], PRODUCTPAGE);
    // Connections are reused: many requests, one handshake's worth of work.
    let t = run(&c, "http://reviews/ratings/2", 200, 8).await;
    assert_eq!(t.ok, 200, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_over_http2() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = server(&ca, "strict").await;
    let pp = ca.issue_for("productpage").unwrap();
    let mesh = Mesh::from_config(
        Config::from_yaml(&format!(
            "services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]\nbackends: [{{ name: reviews, protocol: http2, endpoints: ['{}'], tls: {{ mode: mutual, identity: '{REVIEWS}' }} }}]",
            reviews.addr()
        ))
        .unwrap(),
    )
    .unwrap();
    mesh.set_identity(identity(&ca, &pp));
    let resp = Client::new(&mesh)
        .get("http://reviews/ratings/1")
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(body_json(resp).await["caller"], PRODUCTPAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_identity_is_refused_by_the_client() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = server(&ca, "strict").await;
    let pp = ca.issue_for("productpage").unwrap();
    let c = client(
        &ca,
        &reviews,
        Some("spiffe://demo.local/ratings"),
        Some(&pp),
    );
    let err = c.get("http://reviews/ratings/1").await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::ConnectFailed, "{err}");
    let chain = format!("{:?}", err);
    assert!(
        chain.contains(
            "server presented spiffe://demo.local/reviews, expected spiffe://demo.local/ratings"
        ),
        "{chain}"
    );
    assert_eq!(reviews.served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_server_refuses_plaintext_untrusted_expired_and_certless_clients() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = server(&ca, "strict").await;
    let stats = reviews.server_stats();

    // Plaintext.
    let plain = client(&ca, &reviews, None, None);
    assert!(plain.get("http://reviews/ratings/1").await.is_err());
    assert_eq!(stats.plaintext_refused.load(Ordering::Relaxed), 1);

    // A certificate from another CA (which also does not trust ours).
    let other = DevCa::new("evil.test").unwrap();
    let intruder = other.issue_for("x").unwrap();
    let c = client(&other, &reviews, Some(REVIEWS), Some(&intruder));
    assert!(c.get("http://reviews/ratings/1").await.is_err());

    // An expired certificate from the right CA is refused as an SVID before
    // it is ever presented (a strict server's refusal of an expired client
    // certificate is in `refusals`).
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue(
            &PRODUCTPAGE.parse().unwrap(),
            &IssueOptions {
                not_before: now - time::Duration::days(30),
                not_after: now - time::Duration::days(1),
                ..Default::default()
            },
        )
        .unwrap();
    let refused = Identity::from_pem(
        expired.cert_pem.as_bytes(),
        expired.key_pem.as_bytes(),
        ca.ca_pem().as_bytes(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains(PRODUCTPAGE) && refused.contains("not valid now"),
        "{refused}"
    );

    // TLS without a client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        rustls::ClientConfig::builder_with_provider(proxyless_core::identity::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(reviews.addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
    {
        // TLS 1.3: the client finishes first; the refusal arrives on the first read.
        Ok(mut tls) => {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = tls
                .write_all(b"GET /ratings/1 HTTP/1.1\r\nhost: reviews\r\n\r\n")
                .await;
            let mut buf = [0u8; 64];
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
        }
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate got an answer");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        stats.handshake_failures.load(Ordering::Relaxed),
        2,
        "untrusted, certless (an expired SVID never loads)"
    );
    assert_eq!(reviews.served(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_plaintext_and_mtls_on_one_port() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = server(&ca, "permissive").await;
    let pp = ca.issue_for("productpage").unwrap();
    let mtls = client(&ca, &reviews, Some(REVIEWS), Some(&pp));
    let resp = mtls.get("http://reviews/ratings/1").await.unwrap();
    assert_eq!(body_json(resp).await["caller"], PRODUCTPAGE);
    // Plaintext reaches what authorization allows unauthenticated callers
    // (nothing here but what no allow rule needs): the deny-less path is
    // refused by default-deny, but the connection itself is accepted.
    let plain = client(&ca, &reviews, None, None).refusals_as_responses();
    let resp = plain.get("http://reviews/ratings/1").await.unwrap();
    assert_eq!(resp.status(), 403, "plaintext caller is not productpage");
    assert_eq!(
        reviews
            .server_stats()
            .plaintext_refused
            .load(Ordering::Relaxed),
        0
    );
    assert_eq!(
        reviews
            .server_stats()
            .handshake_failures
            .load(Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_denies_defaults_to_deny_and_matches_wildcards() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = server(&ca, "permissive").await;
    authorization(&ca, &reviews).await;
}

/// The same policy served by a control plane as the server's inbound
/// listener (RBAC HTTP filters, TLS filter chains), over both variants of
/// ADS: the same answers to the same callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_authorization_from_a_control_planes_rbac_filters() {
    use proxyless_core::xds::{Api, XdsSettings};
    for api in [Api::Sotw, Api::Delta] {
        let ca = DevCa::new(TD).unwrap();
        let served = Mesh::from_config(Config::from_yaml(&inbound("permissive")).unwrap()).unwrap();
        let (addr, cp) = crate::support::dev_control_plane(&served);
        let mut settings =
            XdsSettings::new(&format!("http://{addr}"), "reviews-1", Vec::new()).serving("reviews");
        settings.api = api;
        let (mesh, _xds) = Mesh::from_control_plane(settings).unwrap();
        tokio::time::timeout(Duration::from_secs(5), mesh.ready())
            .await
            .expect("the first snapshot");
        // The same policy (deny rules travel in their own filter, first).
        let (got, want) = (mesh.snapshot(), served.snapshot());
        let (got, want) = (
            got.inbound("reviews").unwrap(),
            want.inbound("reviews").unwrap(),
        );
        assert_eq!(got.mtls, want.mtls, "over {api:?}");
        assert_eq!(got.rules.len(), want.rules.len(), "over {api:?}: {got:?}");
        assert!(
            want.rules.iter().all(|r| got.rules.contains(r)),
            "over {api:?}: {got:?}"
        );
        mesh.set_identity(identity(&ca, &ca.issue_for("reviews").unwrap()));
        let reviews = Echo::new("reviews")
            .service("reviews")
            .start(&mesh, "127.0.0.1:0")
            .await
            .unwrap();
        authorization(&ca, &reviews).await;

        // A policy change reaches the running server: strict now refuses
        // the plaintext caller at the handshake instead of with a 403.
        served
            .update(
                Config::from_yaml(&inbound("strict")).unwrap(),
                proxyless_core::snapshot::Source::Code,
            )
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while mesh.snapshot().inbound("reviews").map(|p| p.mtls)
            != Some(proxyless_core::config::MtlsMode::Strict)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the push over {api:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let plain = client(&ca, &reviews, None, None);
        let t = run(&plain, "http://reviews/health", 3, 1).await;
        assert_eq!(t.ok, 0, "{t:?}");
        assert!(
            !t.errors.contains_key("http_403"),
            "refused before HTTP: {t:?}"
        );
        cp.abort();
    }
}

async fn authorization(ca: &DevCa, reviews: &EchoHandle) {
    let pp = ca.issue_for("productpage").unwrap();
    let ops = ca
        .issue(
            &"spiffe://demo.local/ops/oncall".parse().unwrap(),
            &IssueOptions::default(),
        )
        .unwrap();
    let other = ca.issue_for("details").unwrap();
    let as_pp = client(ca, reviews, Some(REVIEWS), Some(&pp)).refusals_as_responses();
    let as_ops = client(ca, reviews, Some(REVIEWS), Some(&ops)).refusals_as_responses();
    let as_other = client(ca, reviews, Some(REVIEWS), Some(&other)).refusals_as_responses();
    let plain = client(ca, reviews, None, None).refusals_as_responses();

    let status = |c: &Client, method: &'static str, path: &'static str| {
        let c = c.clone();
        async move {
            let req = http::Request::builder()
                .method(method)
                .uri(format!("http://reviews{path}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = c.request(req).await.unwrap();
            let reason = resp
                .headers()
                .get("x-mesh-authz-reason")
                .map(|v| v.to_str().unwrap().to_owned());
            if resp.status() == 403 {
                assert_eq!(resp.headers()["x-mesh-error"], "unauthorized");
                assert!(reason.is_some());
            }
            resp.status().as_u16()
        }
    };
    assert_eq!(status(&as_pp, "GET", "/ratings/1").await, 200, "allowed");
    assert_eq!(
        status(&as_pp, "POST", "/ratings/1").await,
        403,
        "method not allowed"
    );
    assert_eq!(status(&as_pp, "GET", "/reviews").await, 403, "default deny");
    assert_eq!(
        status(&as_other, "GET", "/ratings/1").await,
        403,
        "another caller"
    );
    assert_eq!(
        status(&as_other, "GET", "/health").await,
        200,
        "`*`: any authenticated caller"
    );
    assert_eq!(
        status(&plain, "GET", "/health").await,
        403,
        "`*` is not the unauthenticated"
    );
    assert_eq!(
        status(&as_ops, "DELETE", "/anything").await,
        200,
        "prefix principal"
    );
    assert_eq!(
        status(&as_ops, "GET", "/admin/users").await,
        403,
        "deny wins"
    );
    assert_eq!(
        reviews
            .server_stats()
            .inbound
            .denied
            .load(Ordering::Relaxed),
        5
    );
    assert_eq!(
        reviews.served(),
        3,
        "denied requests never reach the application"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_mid_traffic_fails_no_request_and_a_bad_rotation_is_refused() {
    let ca = DevCa::new(TD).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = proxyless_core::identity::tls::IdentityFiles {
        cert: dir.path().join("reviews.pem"),
        key: dir.path().join("reviews-key.pem"),
        ca: dir.path().join("ca.pem"),
    };
    let first = ca.issue_for("reviews").unwrap();
    first.write(dir.path(), "reviews").unwrap();
    ca.write_ca(dir.path()).unwrap();
    let server_mesh = Mesh::from_config(Config::from_yaml(&inbound("strict")).unwrap()).unwrap();
    let server_identity = Identity::load(&files).unwrap();
    server_identity.watch_every(files.clone(), Duration::from_millis(50));
    server_mesh.set_identity(server_identity.clone());
    let reviews = Echo::new("reviews")
        .service("reviews")
        .start(&server_mesh, "127.0.0.1:0")
        .await
        .unwrap();

    let pp = ca.issue_for("productpage").unwrap();
    let c = client(&ca, &reviews, Some(REVIEWS), Some(&pp));
    let load = tokio::spawn({
        let c = c.clone();
        async move { run(&c, "http://reviews/ratings/1", 3000, 8).await }
    });
    // Rotate to a new certificate while traffic flows.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let second = ca.issue_for("reviews").unwrap();
    second.write(dir.path(), "reviews").unwrap();
    let t = load.await.unwrap();
    assert_eq!(t.ok, 3000, "{t:?}");

    // New handshakes present the new certificate.
    let presented = || async {
        let tls = client_handshake(&ca, &pp, reviews.addr()).await;
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let second_der = rustls::pki_types::CertificateDer::pem_slice_iter(second.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while presented().await != second_der {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A key that does not belong to the certificate is refused; the current
    // identity keeps serving.
    let third = ca.issue_for("reviews").unwrap();
    std::fs::write(&files.cert, &third.cert_pem).unwrap();
    std::fs::write(&files.key, &first.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        presented().await,
        second_der,
        "a mismatched key must not replace the identity"
    );
    let err = server_identity.reload(&files).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert_eq!(
        c.get("http://reviews/ratings/1").await.unwrap().status(),
        200
    );
}

/// A raw mTLS handshake with `addr`, as `me`.
async fn client_handshake(
    ca: &DevCa,
    me: &Issued,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = identity(ca, me).client_config(&REVIEWS.parse().unwrap(), false);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Upstream TLS named by a control plane: the development control plane
/// serves a backend with `tls: mutual`; the xDS-fed client verifies the
/// strict server's SPIFFE ID and presents its own (plaintext would be
/// refused by the server, the wrong ID by the client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_a_backend_a_control_plane_names() {
    use proxyless_core::xds::XdsSettings;
    let ca = DevCa::new(TD).unwrap();
    let (echo, _server_mesh) = server(&ca, "strict").await;
    let config = |tls: &str| {
        format!(
            "services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]\nbackends: [{{ name: reviews, endpoints: ['{}'], tls: {{ mode: mutual, {tls} }} }}]",
            echo.addr()
        )
    };
    // Exact and prefix SAN matchers, as a control plane sends them.
    for (expected, ok) in [
        (format!("identity: '{REVIEWS}'"), 20),
        ("identity: 'spiffe://demo.local/someone-else'".to_owned(), 0),
        (
            "identities: ['spiffe://demo.local/rev*', 'spiffe://demo.local/x']".to_owned(),
            20,
        ),
        ("identities: ['spiffe://demo.local/ns/*']".to_owned(), 0),
    ] {
        let served = Mesh::from_config(Config::from_yaml(&config(&expected)).unwrap()).unwrap();
        let (addr, cp) = crate::support::dev_control_plane(&served);
        let settings = XdsSettings::new(&format!("http://{addr}"), "pp", vec!["reviews".into()]);
        let (mesh, _xds) = Mesh::from_control_plane(settings).unwrap();
        mesh.set_identity(identity(&ca, &ca.issue_for("productpage").unwrap()));
        tokio::time::timeout(Duration::from_secs(5), mesh.ready())
            .await
            .expect("the first snapshot");
        let snapshot = mesh.snapshot();
        // What arrived over xDS is what was served.
        assert_eq!(
            snapshot.config().backends[0].tls,
            served.snapshot().config().backends[0].tls,
            "{expected}"
        );
        let t = run(&Client::new(&mesh), "http://reviews/ratings/1", 20, 2).await;
        assert_eq!(t.ok, ok, "expecting {expected}: {t:?}");
        cp.abort();
    }
}
