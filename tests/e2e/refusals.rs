//! Every refusal `docs/security.md` lists, over real sockets: a mesh client
//! refusing servers, a strict meshed server refusing clients, the pooled
//! connection of one identity never serving another, and authorization on
//! the normalized path. Each refusal is checked with a positive control
//! beside it (the same peer with a good certificate or path is served), so
//! a test cannot pass because nothing works.

use mesh::certs::{DevCa, IssueOptions, Issued};
use mesh::echo::{Echo, EchoHandle};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::snapshot::Source;
use proxyless_hyper::Client;
use proxyless_tower::error::ErrorKind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "demo.local";
const REVIEWS: &str = "spiffe://demo.local/reviews";

use crate::support::identity;

use crate::support::mesh;

/// The bad certificates a peer may present, each with the words its
/// refusal must carry. `for_server` picks the wrong key usage for the side.
pub(crate) fn bad_certs(
    ca: &DevCa,
    name: &str,
    for_server: bool,
) -> Vec<(&'static str, Issued, &'static str)> {
    let id = |s: &str| s.parse().unwrap();
    let me = format!("spiffe://{TD}/{name}");
    let now = time::OffsetDateTime::now_utc();
    let issue = |ca: &DevCa, id_str: &str, o: IssueOptions| ca.issue(&id(id_str), &o).unwrap();
    let other_ca = DevCa::new("elsewhere.test").unwrap();
    let impostor_ca = DevCa::new(TD).unwrap();
    vec![
        (
            "a certificate from another CA",
            issue(&other_ca, &me, IssueOptions::default()),
            "UnknownIssuer",
        ),
        (
            "a certificate from an impostor CA of the same name",
            issue(&impostor_ca, &me, IssueOptions::default()),
            "InvalidSignatureForPublicKey",
        ),
        (
            "an expired certificate",
            issue(
                ca,
                &me,
                IssueOptions {
                    not_before: now - time::Duration::days(30),
                    not_after: now - time::Duration::days(1),
                    ..Default::default()
                },
            ),
            "Expired",
        ),
        (
            "a certificate not yet valid",
            issue(
                ca,
                &me,
                IssueOptions {
                    not_before: now + time::Duration::days(1),
                    not_after: now + time::Duration::days(30),
                    ..Default::default()
                },
            ),
            "NotValidYet",
        ),
        (
            "a certificate of another trust domain from this CA",
            issue(
                ca,
                &format!("spiffe://other.local/{name}"),
                IssueOptions::default(),
            ),
            "no trust bundle for trust domain `other.local`",
        ),
        (
            "a leaf without a URI SAN",
            issue(
                ca,
                &me,
                IssueOptions {
                    spiffe_san: false,
                    ..Default::default()
                },
            ),
            "exactly one SPIFFE ID",
        ),
        (
            "a CA certificate presented as a leaf",
            issue(
                ca,
                &me,
                IssueOptions {
                    is_ca: true,
                    ..Default::default()
                },
            ),
            "CaUsedAsEndEntity",
        ),
        (
            "a certificate without the key usage for its side",
            issue(
                ca,
                &me,
                IssueOptions {
                    server_auth: !for_server,
                    client_auth: for_server,
                    ..Default::default()
                },
            ),
            "Eku",
        ),
    ]
}

fn chain_and_key(issued: &Issued) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    (chain, key)
}

/// A TLS server nobody meshed: presents `cert` (no client certificate
/// asked) and answers each request on a connection `200 ok`. Counts the
/// requests it answered.
async fn raw_tls_server(cert: &Issued) -> (SocketAddr, Arc<AtomicUsize>) {
    let (chain, key) = chain_and_key(cert);
    let mut config =
        rustls::ServerConfig::builder_with_provider(proxyless_core::identity::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        count.fetch_add(1, Ordering::Relaxed);
                        let _ = tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    (addr, served)
}

/// A mesh client of `addr` whose backend accepts `accepted` over mTLS.
pub(crate) fn mtls_client(ca: &DevCa, addr: SocketAddr, accepted: &[&str]) -> Client {
    let ids: Vec<String> = accepted.iter().map(|a| format!("'{a}'")).collect();
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]\nbackends: [{{ name: reviews, endpoints: ['{addr}'], tls: {{ mode: mutual, identities: [{}] }} }}]",
        ids.join(", ")
    ));
    m.set_identity(identity(ca, &ca.issue_for("productpage").unwrap()));
    Client::new(&m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_client_refuses_every_bad_server_certificate() {
    let ca = DevCa::new(TD).unwrap();
    // The client accepts the other trust domain's reviews by name, so that
    // only the trust-domain check can refuse that certificate.
    let accepted = [REVIEWS, "spiffe://other.local/reviews"];
    let good = ca.issue_for("reviews").unwrap();
    let (addr, served) = raw_tls_server(&good).await;
    let resp = mtls_client(&ca, addr, &accepted)
        .get("http://reviews/")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "positive control");
    assert_eq!(served.load(Ordering::Relaxed), 1);

    let mut cases = bad_certs(&ca, "reviews", true);
    cases.push((
        "a valid certificate of the wrong SPIFFE ID",
        ca.issue_for("ratings").unwrap(),
        "server presented spiffe://demo.local/ratings, expected",
    ));
    for (what, cert, why) in cases {
        let (addr, served) = raw_tls_server(&cert).await;
        let err = mtls_client(&ca, addr, &accepted)
            .get("http://reviews/")
            .await
            .expect_err(what);
        assert_eq!(ErrorKind::of(&*err), ErrorKind::ConnectFailed, "{what}");
        let chain = format!("{err:?}");
        assert!(chain.contains(why), "{what}: expected `{why}` in {chain}");
        assert_eq!(served.load(Ordering::Relaxed), 0, "{what} was served");
    }
}

/// A strict meshed reviews server (no authorization rules).
pub(crate) async fn strict_server(ca: &DevCa) -> (EchoHandle, Mesh) {
    let m = mesh(
        "services: [{ name: reviews, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]\ninbound: [{ service: reviews, mtls: strict }]",
    );
    m.set_identity(identity(ca, &ca.issue_for("reviews").unwrap()));
    let echo = Echo::new("reviews")
        .service("reviews")
        .start(&m, "127.0.0.1:0")
        .await
        .unwrap();
    (echo, m)
}

/// One request from a TLS client nobody meshed, presenting `cert` (or
/// none): whether any answer came back.
async fn raw_tls_request(ca: &DevCa, addr: SocketAddr, cert: Option<&Issued>) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.ca_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder =
        rustls::ClientConfig::builder_with_provider(proxyless_core::identity::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match cert {
        Some(c) => {
            let (chain, key) = chain_and_key(c);
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    else {
        return false;
    };
    // TLS 1.3: the client finishes first; a refusal arrives on the read.
    let _ = tls
        .write_all(b"GET /ratings/1 HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_server_refuses_every_bad_client_certificate() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = strict_server(&ca).await;
    let stats = reviews.server_stats();
    let good = ca.issue_for("productpage").unwrap();
    assert!(raw_tls_request(&ca, reviews.addr(), Some(&good)).await);
    assert_eq!(reviews.served(), 1, "positive control");

    let mut cases: Vec<(&str, Option<Issued>)> = bad_certs(&ca, "productpage", false)
        .into_iter()
        .map(|(what, cert, _)| (what, Some(cert)))
        .collect();
    cases.push(("no certificate", None));
    for (i, (what, cert)) in cases.iter().enumerate() {
        assert!(
            !raw_tls_request(&ca, reviews.addr(), cert.as_ref()).await,
            "{what} was answered"
        );
        // The refusal is counted by the server (it may land just after the
        // client gave up).
        let want = i as u64 + 1;
        for _ in 0..100 {
            if stats.handshake_failures.load(Ordering::Relaxed) >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            stats.handshake_failures.load(Ordering::Relaxed),
            want,
            "{what}"
        );
    }
    assert_eq!(reviews.served(), 1);
}

/// Two backends at one address that expect different identities: each
/// request is verified for its own backend, whatever the other left in the
/// pool. (Before the transport key, `api-wrong` was served over `api`'s
/// connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_identity_on_a_shared_address_is_refused() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = strict_server(&ca).await;
    let addr = reviews.addr();
    let m = mesh(&format!(
        r#"
services:
  - {{ name: api, routes: [{{ to: [api] }}] }}
  - {{ name: api-wrong, routes: [{{ to: [api-wrong] }}] }}
  - {{ name: api-prefix, routes: [{{ to: [api-prefix] }}] }}
backends:
  - {{ name: api, endpoints: ['{addr}'], tls: {{ mode: mutual, identity: '{REVIEWS}' }} }}
  - {{ name: api-wrong, endpoints: ['{addr}'], tls: {{ mode: mutual, identity: 'spiffe://demo.local/someone-else' }} }}
  - {{ name: api-prefix, endpoints: ['{addr}'], tls: {{ mode: mutual, identities: ['spiffe://demo.local/rev*'] }} }}
"#
    ));
    m.set_identity(identity(&ca, &ca.issue_for("productpage").unwrap()));
    let c = Client::new(&m);
    for round in 0..10 {
        let ok = c.get("http://api/").await.unwrap();
        assert_eq!(ok.status(), 200, "round {round}");
        let ok = c.get("http://api-prefix/").await.unwrap();
        assert_eq!(ok.status(), 200, "round {round}");
        let err = c.get("http://api-wrong/").await.unwrap_err();
        assert!(
            format!("{err:?}").contains("server presented spiffe://demo.local/reviews, expected spiffe://demo.local/someone-else"),
            "round {round}: {err:?}"
        );
    }
    assert_eq!(reviews.served(), 20);
}

/// A live config edit that changes what a backend's endpoint must present:
/// the connection pooled under the old identity is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_changed_by_a_live_edit_never_reuses_the_pooled_connection() {
    let ca = DevCa::new(TD).unwrap();
    let (reviews, _m) = strict_server(&ca).await;
    let config = |id: &str| {
        Config::from_yaml(&format!(
            "services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]\nbackends: [{{ name: reviews, endpoints: ['{}'], tls: {{ mode: mutual, identity: '{id}' }} }}]",
            reviews.addr()
        ))
        .unwrap()
    };
    let m = Mesh::from_config(config(REVIEWS)).unwrap();
    m.set_identity(identity(&ca, &ca.issue_for("productpage").unwrap()));
    let c = Client::new(&m);
    let t = crate::support::run(&c, "http://reviews/", 50, 4).await;
    assert_eq!(t.ok, 50, "{t:?}");
    m.update(config("spiffe://demo.local/someone-else"), Source::Code)
        .unwrap();
    let t = crate::support::run(&c, "http://reviews/", 20, 4).await;
    assert_eq!(
        t.ok, 0,
        "served over the connection of the old identity: {t:?}"
    );
    assert_eq!(reviews.served(), 50);
    // And back: a fresh, verified connection serves again.
    m.update(config(REVIEWS), Source::Code).unwrap();
    let t = crate::support::run(&c, "http://reviews/", 20, 4).await;
    assert_eq!(t.ok, 20, "{t:?}");
}

/// A raw HTTP/1.1 request with `target` sent as written (no client
/// library tidies it): the status and the body.
async fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {target} HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A plaintext reviews server that denies `/admin` and `/admin/*` and
/// allows `/ratings/*` to anyone.
pub(crate) async fn admin_denying_server(extra_defaults: &str) -> EchoHandle {
    let m = mesh(&format!(
        r#"
defaults: {{ {extra_defaults} }}
services: [{{ name: reviews, routes: [{{ to: [b] }}] }}]
backends: [{{ name: b, endpoints: ['127.0.0.1:1'] }}]
inbound:
  - service: reviews
    mtls: disabled
    rules:
      - {{ action: deny, to: {{ paths: ["/admin", "/admin/*"] }} }}
      - {{ action: allow, to: {{ paths: ["/ratings/*"] }} }}
"#
    ));
    Echo::new("reviews")
        .service("reviews")
        .start(&m, "127.0.0.1:0")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_judges_the_normalized_path_and_the_handler_gets_it() {
    let reviews = admin_denying_server("").await;
    let addr = reviews.addr();
    // Each spelling of /admin is denied (403) or refused (400), never served.
    for (raw, want) in [
        ("/admin", 403),
        ("//admin", 403),
        ("/./admin", 403),
        ("/ratings/../admin", 403),
        ("/ratings/%2e%2e/admin", 403),
        ("/%61dmin", 403),
        ("/admin/", 403),
        ("//admin//x", 403),
        ("/admin;x", 400),
        ("/ratings/..%2Fadmin", 400),
        ("/ratings/%zz", 400),
    ] {
        let (status, body) = raw_get(addr, raw).await;
        assert_eq!(status, want, "{raw}: {body}");
    }
    assert_eq!(reviews.served(), 0);
    // What is allowed is served with its normal form.
    for (raw, normal) in [
        ("/ratings/1", "/ratings/1"),
        ("/ratings/./1", "/ratings/1"),
        ("//ratings//1", "/ratings/1"),
        ("/ratings/x/../%31?q=1", "/ratings/1"),
    ] {
        let (status, body) = raw_get(addr, raw).await;
        assert_eq!(status, 200, "{raw}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["path"], normal, "{raw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_slashes_keep_redirect_or_decode_as_configured() {
    let keep = admin_denying_server("path_normalization: { escaped_slashes: keep }").await;
    let (status, body) = raw_get(keep.addr(), "/ratings/a%2fb").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["path"], "/ratings/a%2Fb");

    let redirect = admin_denying_server("path_normalization: { escaped_slashes: redirect }").await;
    let (status, _) = raw_get(redirect.addr(), "/ratings/..%2Fadmin?x=1").await;
    assert_eq!(status, 307);
    assert_eq!(redirect.served(), 0);

    let decode = admin_denying_server("path_normalization: { escaped_slashes: decode }").await;
    let (status, _) = raw_get(decode.addr(), "/ratings/..%2Fadmin").await;
    assert_eq!(status, 403, "decoded, normalized to /admin, denied");
    let (status, body) = raw_get(decode.addr(), "/ratings%2F1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(decode.served(), 1);
}

/// The redirect carries the normalized path and the query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_names_the_normalized_path() {
    let s = admin_denying_server("path_normalization: { escaped_slashes: redirect }").await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    tcp.write_all(
        b"GET /ratings/a%2F..%2F1?x=1 HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    assert!(text.contains("location: /ratings/1?x=1"), "{text}");
}

/// Outbound: routes match the normalized path, and it is what is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_routes_match_the_normalized_path() {
    let admin = crate::support::echo("admin").await;
    let public = crate::support::echo("public").await;
    let m = mesh(&format!(
        r#"
services:
  - name: web
    routes:
      - {{ match: {{ path: {{ prefix: /admin }} }}, to: [admin] }}
      - {{ to: [public] }}
backends:
  - {{ name: admin, endpoints: ['{}'] }}
  - {{ name: public, endpoints: ['{}'] }}
"#,
        admin.addr(),
        public.addr()
    ));
    let c = Client::new(&m).refusals_as_responses();
    for raw in ["/admin/x", "/public/../admin/x", "//admin/x", "/%61dmin/x"] {
        let resp = c.get(&format!("http://web{raw}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{raw}");
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (v["backend"].as_str(), v["path"].as_str()),
            (Some("admin"), Some("/admin/x")),
            "{raw}"
        );
    }
    let resp = c.get("http://web/admin;x").await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-mesh-error"], "invalid_path");
    assert_eq!(admin.served() + public.served(), 4);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]

    /// Every spelling of a path gets the decision its normal form gets, and
    /// the handler is given the normal form.
    #[test]
    fn a_raw_path_is_judged_and_served_as_its_normal_form(
        segments in proptest::collection::vec(
            proptest::sample::select(vec![
                "admin", "ratings", "1", ".", "..", "", "%2e", "%2E%2e", "%61dmin",
                "%72atings", "a%20b", "\\", "x",
            ]),
            0..6,
        )
    ) {
        let raw = format!("/{}", segments.join("/"));
        let normal = proxyless_core::path::normalize(&raw, &Default::default())
            .unwrap()
            .as_str()
            .to_owned();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (raw_answer, normal_answer) = rt.block_on(async {
            let s = admin_denying_server("").await;
            (raw_get(s.addr(), &raw).await, raw_get(s.addr(), &normal).await)
        });
        proptest::prop_assert_eq!(raw_answer.0, normal_answer.0, "{} vs {}", raw, normal);
        if raw_answer.0 == 200 {
            let v: serde_json::Value = serde_json::from_str(&raw_answer.1).unwrap();
            proptest::prop_assert_eq!(v["path"].as_str(), Some(normal.as_str()));
        }
    }
}
