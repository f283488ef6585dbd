//! Identity sources and trust over real sockets: federated trust domains,
//! trust-bundle changes that close the connections they no longer vouch
//! for.

use crate::support::{mesh, run};
use mesh::certs::{DevCa, Issued};
use mesh::echo::{Echo, EchoHandle};
use proxyless_core::Mesh;
use proxyless_core::identity::tls::{Identity, Svid, TrustBundles};
use proxyless_hyper::Client;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOME: &str = "home.test";
const PARTNER: &str = "partner.test";
const REVIEWS: &str = "spiffe://home.test/reviews";

/// Bundles trusting each `(trust domain, CA)`.
fn bundles(trusted: &[(&str, &DevCa)]) -> TrustBundles {
    let mut b = TrustBundles::new();
    for (domain, ca) in trusted {
        b.insert_pem(domain, ca.ca_pem().as_bytes()).unwrap();
    }
    b
}

/// The workload `issued`, trusting `trusted`.
fn federated(issued: &Issued, trusted: &[(&str, &DevCa)]) -> Identity {
    let svid = Svid::from_pem(issued.cert_pem.as_bytes(), issued.key_pem.as_bytes()).unwrap();
    Identity::new(svid, bundles(trusted), "test").unwrap()
}

/// A strict reviews server in `home.test` that lets only the partner's
/// `client` read ratings.
async fn reviews(identity: Identity) -> (EchoHandle, Mesh) {
    let m = mesh(
        r#"
services: [{ name: reviews, routes: [{ to: [reviews] }] }]
backends: [{ name: reviews, endpoints: ["127.0.0.1:1"] }]
inbound:
  - service: reviews
    mtls: strict
    rules:
      - action: allow
        from: ["spiffe://partner.test/client", "spiffe://home.test/*"]
        to: { paths: ["/ratings/*"] }
"#,
    );
    m.set_identity(identity);
    let echo = Echo::new("reviews")
        .service("reviews")
        .start(&m, "127.0.0.1:0")
        .await
        .unwrap();
    (echo, m)
}

fn client_of(server: &EchoHandle, me: Identity) -> Client {
    let m = mesh(&format!(
        "services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]\nbackends: [{{ name: reviews, endpoints: ['{}'], tls: {{ mode: mutual, identity: '{REVIEWS}' }} }}]",
        server.addr()
    ));
    m.set_identity(me);
    Client::new(&m)
}

async fn status(client: &Client) -> Result<u16, String> {
    client
        .get("http://reviews/ratings/1")
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_peer_is_verified_by_its_own_domains_bundle_and_authorized_by_its_id() {
    let (home, partner) = (DevCa::new(HOME).unwrap(), DevCa::new(PARTNER).unwrap());
    let both = [(HOME, &home), (PARTNER, &partner)];
    let (server, _m) = reviews(federated(&home.issue_for("reviews").unwrap(), &both)).await;

    let partner_client = client_of(
        &server,
        federated(&partner.issue_for("client").unwrap(), &both),
    );
    assert_eq!(status(&partner_client).await, Ok(200));

    // Verified, but not allowed by its SPIFFE ID.
    let stranger = client_of(
        &server,
        federated(&partner.issue_for("other").unwrap(), &both),
    );
    assert_eq!(status(&stranger).await, Ok(403));

    // The home CA signing a partner.test ID: the partner's bundle does
    // not vouch for it, so the handshake fails.
    let forged = home
        .issue(
            &"spiffe://partner.test/client".parse().unwrap(),
            &Default::default(),
        )
        .unwrap();
    let forger = client_of(&server, federated(&forged, &both));
    let refused = status(&forger).await.unwrap_err();
    assert!(
        refused.contains("Handshake") || refused.contains("Connect"),
        "{refused}"
    );
    assert_eq!(server.served(), 1, "only the partner's client was served");
}

/// A raw mutual-TLS HTTP/1.1 connection to `server` as `me`, which has read
/// one answer.
async fn raw_connection(
    server: &EchoHandle,
    me: &Identity,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = me.client_config(&REVIEWS.parse().unwrap(), false);
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert!(answers(&mut tls).await, "the first request is served");
    tls
}

/// Sends a request on `tls` and says whether a 200 came back within 2 s.
async fn answers(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> bool {
    let request = b"GET /ratings/1 HTTP/1.1\r\nhost: reviews\r\n\r\n";
    if tls.write_all(request).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => buf.starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_removed_from_the_servers_bundles_closes_the_connections_it_verified() {
    let (home, partner) = (DevCa::new(HOME).unwrap(), DevCa::new(PARTNER).unwrap());
    let both = [(HOME, &home), (PARTNER, &partner)];
    let server_identity = federated(&home.issue_for("reviews").unwrap(), &both);
    let (server, _m) = reviews(server_identity.clone()).await;

    let mut from_partner = raw_connection(
        &server,
        &federated(&partner.issue_for("client").unwrap(), &both),
    )
    .await;
    let mut from_home =
        raw_connection(&server, &federated(&home.issue_for("ops").unwrap(), &both)).await;

    // The partner's CA leaves the server's bundles.
    server_identity
        .set_bundles(bundles(&[(HOME, &home)]))
        .unwrap();

    // The partner's idle connection is closed by the server (EOF or a
    // reset), without waiting for it to send anything.
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(2), from_partner.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the partner's connection stayed open: {closed:?}"
    );
    // The home connection, still vouched for, keeps serving.
    assert!(
        answers(&mut from_home).await,
        "the home connection was closed"
    );
    // New partner handshakes are refused.
    let config = federated(&partner.issue_for("client").unwrap(), &both)
        .client_config(&REVIEWS.parse().unwrap(), false);
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = match tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    {
        Ok(mut tls) => !answers(&mut tls).await,
        Err(_) => true,
    };
    assert!(refused, "a new partner handshake was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_removed_from_the_clients_bundles_closes_its_pooled_connections() {
    let (home, partner) = (DevCa::new(HOME).unwrap(), DevCa::new(PARTNER).unwrap());
    let both = [(HOME, &home), (PARTNER, &partner)];
    let (server, _m) = reviews(federated(&home.issue_for("reviews").unwrap(), &both)).await;
    let me = federated(&partner.issue_for("client").unwrap(), &both);
    let client = client_of(&server, me.clone());
    let t = run(&client, "http://reviews/ratings/1", 20, 2).await;
    assert_eq!(t.ok, 20, "{t:?}");

    // The client stops trusting the server's CA: its pooled connections
    // close, and the next request needs a handshake that fails.
    me.set_bundles(bundles(&[(PARTNER, &partner)])).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = status(&client).await.unwrap_err();
    assert!(
        refused.contains("Handshake") || refused.contains("Connect"),
        "{refused}"
    );
    assert_eq!(server.served(), 20);
}
