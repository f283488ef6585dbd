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
    // (Over TLS 1.3 the client's handshake ends first; the server's
    // refusal arrives as an alert or a reset with the request.)
    assert!(status(&forger).await.is_err());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let failures = server
        .server_stats()
        .handshake_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(failures >= 1, "the server refused no handshake");
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

/// The leaf certificate of `issued`.
fn leaf(issued: &Issued) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .next()
        .expect("a certificate")
        .expect("PEM")
}

/// Sends `n` requests through `client` while `rounds` rotations happen:
/// each round `rotate` issues and hands out a new server and client SVID,
/// and waits until `server` and `client_source` both present them. Returns
/// the requests' tally, how many rotations landed while requests were in
/// flight, and the server's last leaf certificate.
async fn rotations_under_load(
    client: &Client,
    n: u32,
    rounds: usize,
    (server, client_source): (&Identity, &Identity),
    mut rotate: impl FnMut() -> (Issued, Issued),
) -> (
    crate::support::Tally,
    usize,
    rustls::pki_types::CertificateDer<'static>,
) {
    let load = tokio::spawn({
        let client = client.clone();
        async move { run(&client, "http://reviews/ratings/1", n, 8).await }
    });
    let (mut during_load, mut last) = (0, None);
    for _ in 0..rounds {
        let (next, next_client) = rotate();
        let (want, want_client) = (leaf(&next), leaf(&next_client));
        crate::support::wait_for("both sides to take the rotation", || {
            server.svid().is_some_and(|s| s.chain()[0] == want)
                && client_source
                    .svid()
                    .is_some_and(|s| s.chain()[0] == want_client)
        })
        .await;
        during_load += usize::from(!load.is_finished());
        last = Some(want);
    }
    let tally = load.await.unwrap();
    (tally, during_load, last.expect("at least one round"))
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

mod workload_api {
    use super::*;
    use mesh::workload_api::{Agent, Delivery};
    use proxyless_core::identity::workload_api::follow;

    /// An identity following `agent`.
    fn following(agent: &Agent) -> Identity {
        let identity = Identity::pending(agent.endpoint());
        assert!(follow(&identity, &agent.endpoint()));
        identity
    }

    async fn ready_within(identity: &Identity, secs: u64) {
        tokio::time::timeout(Duration::from_secs(secs), identity.ready())
            .await
            .unwrap_or_else(|_| panic!("not ready: {:?}", identity.status()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn svids_rotated_by_the_agent_mid_traffic_fail_no_request() {
        let ca = DevCa::new(HOME).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let server_agent = Agent::start(&dir.path().join("server.sock")).await.unwrap();
        let client_agent = Agent::start(&dir.path().join("client.sock")).await.unwrap();

        // Before the agent gives an identity, the server's mesh is not ready.
        let server_identity = following(&server_agent);
        let (server, server_mesh) = reviews(server_identity.clone()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!server_mesh.is_ready(), "ready without an identity");
        let waiting = server_identity.status();
        assert!(
            waiting
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("no identity issued"),
            "{waiting:?}"
        );
        // The admin server says why it is not ready, naming the socket.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let admin_task =
            tokio::spawn(proxyless_hyper::admin::Admin::new(&server_mesh).serve(listener));
        let (code, body) = crate::telemetry::get(admin, "/ready").await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("no workload identity yet from")
                && body.contains(&server_agent.endpoint())
                && body.contains("no identity issued"),
            "{body}"
        );

        server_agent.deliver(Delivery::of(&ca.issue_for("reviews").unwrap(), &ca).unwrap());
        client_agent.deliver(Delivery::of(&ca.issue_for("client").unwrap(), &ca).unwrap());
        let client_identity = following(&client_agent);
        ready_within(&server_identity, 10).await;
        ready_within(&client_identity, 10).await;
        assert!(server_mesh.is_ready());
        assert_eq!(crate::telemetry::get(admin, "/ready").await.0, 200);
        let (_, dump) = crate::telemetry::get(admin, "/config_dump").await;
        let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
        assert_eq!(dump["identity"]["spiffe_id"], "spiffe://home.test/reviews");
        assert_eq!(
            dump["identity"]["svid_source"],
            server_agent.endpoint().as_str()
        );
        admin_task.abort();

        let client = client_of(&server, client_identity.clone());
        let load = tokio::spawn({
            let client = client.clone();
            async move { run(&client, "http://reviews/ratings/1", 3000, 8).await }
        });
        // Three rotations of both sides while the load runs.
        let mut last = None;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            let next = ca.issue_for("reviews").unwrap();
            server_agent.deliver(Delivery::of(&next, &ca).unwrap());
            client_agent.deliver(Delivery::of(&ca.issue_for("client").unwrap(), &ca).unwrap());
            last = Some(next);
        }
        assert!(!load.is_finished(), "the rotations came after the load");
        let t = load.await.unwrap();
        assert_eq!(t.ok, 3000, "failed during rotation: {t:?}");

        // New handshakes present the last SVID.
        let last = leaf(&last.unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let tls = raw_connection(&server, &client_identity).await;
            if tls.get_ref().1.peer_certificates().unwrap()[0] == last {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the last SVID was never presented"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            server_agent.streams_opened(),
            1,
            "one stream carried every rotation"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_delivery_or_a_lost_agent_keeps_the_last_good_identity_and_says_why() {
        let (home, partner) = (DevCa::new(HOME).unwrap(), DevCa::new(PARTNER).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let agent = Agent::start(&path).await.unwrap();
        let first = home.issue_for("reviews").unwrap();
        agent.deliver(
            Delivery::of(&first, &home)
                .unwrap()
                .federate(PARTNER, &partner)
                .unwrap(),
        );
        let identity = following(&agent);
        ready_within(&identity, 10).await;
        let status = identity.status();
        assert_eq!(
            status.trust_domains,
            [HOME, PARTNER],
            "federated bundles arrive"
        );
        assert_eq!(status.svid_source, agent.endpoint());

        // An expired SVID is refused by name; the first one still serves.
        let now = time::OffsetDateTime::now_utc();
        let expired = home
            .issue(
                &first.id,
                &mesh::certs::IssueOptions {
                    not_before: now - time::Duration::days(30),
                    not_after: now - time::Duration::days(1),
                    ..Default::default()
                },
            )
            .unwrap();
        agent.deliver(Delivery::of(&expired, &home).unwrap());
        let error = wait_for_error(&identity, "not valid now").await;
        assert!(error.starts_with(&agent.endpoint()), "{error}");
        assert_eq!(identity.svid().unwrap().chain()[0], leaf(&first));

        // The agent goes away: the stream's end is reported, the identity
        // keeps serving.
        drop(agent);
        wait_for_error(&identity, "Workload API").await;
        assert!(identity.is_ready());

        // A new agent at the same socket: the identity follows it again.
        std::fs::remove_file(&path).unwrap();
        let agent = Agent::start(&path).await.unwrap();
        let second = home.issue_for("reviews").unwrap();
        agent.deliver(Delivery::of(&second, &home).unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while identity.svid().unwrap().chain()[0] != leaf(&second) {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                identity.status()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(identity.status().last_error, None);
        assert_eq!(identity.status().trust_domains, [HOME], "the partner left");
    }

    async fn wait_for_error(identity: &Identity, containing: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = identity
                .status()
                .last_error
                .filter(|e| e.contains(containing))
            {
                return e;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                identity.status()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

mod certificate_providers {
    use super::*;
    use proxyless_core::xds::XdsSettings;

    /// Writes `issued` and `ca`'s bundle where istio-agent would.
    fn write_files(dir: &std::path::Path, issued: &Issued, ca: &DevCa) {
        // Written to a side file and renamed in, as agents do, so a reader
        // never sees half a file.
        for (name, text) in [
            ("cert-chain.pem", issued.cert_pem.as_str()),
            ("key.pem", issued.key_pem.as_str()),
            ("root-cert.pem", &ca.ca_pem()),
        ] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
    }

    /// An istio-agent-style bootstrap: the control plane, and one
    /// `file_watcher` instance `default` over the files in `dir`.
    fn bootstrap(cp: std::net::SocketAddr, node: &str, dir: &std::path::Path) -> String {
        let file = |n: &str| dir.join(n).display().to_string();
        serde_json::json!({
            "xds_servers": [{ "server_uri": cp.to_string(), "channel_creds": [{ "type": "insecure" }] }],
            "node": { "id": node, "cluster": "default" },
            "certificate_providers": {
                "default": {
                    "plugin_name": "file_watcher",
                    "config": {
                        "certificate_file": file("cert-chain.pem"),
                        "private_key_file": file("key.pem"),
                        "ca_certificate_file": file("root-cert.pem"),
                        "refresh_interval": "0.1s"
                    }
                }
            }
        })
        .to_string()
    }

    /// What the control plane serves: the reviews cluster and the reviews
    /// server's listener, both naming the provider instance `default`.
    fn served(reviews: std::net::SocketAddr, instance: &str) -> String {
        format!(
            r#"
services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]
backends:
  - name: reviews
    endpoints: ["{reviews}"]
    tls: {{ mode: mutual, identity: "{REVIEWS}", certificate: {instance}, trust: {instance} }}
inbound:
  - service: reviews
    mtls: strict
    certificate: default
    trust: default
    rules:
      - from: ["spiffe://home.test/client"]
"#
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clusters_and_listeners_naming_bootstrap_providers_do_mtls_and_rotate_with_no_failed_request()
     {
        let ca = DevCa::new(HOME).unwrap();
        let (server_dir, client_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_files(server_dir.path(), &ca.issue_for("reviews").unwrap(), &ca);
        write_files(client_dir.path(), &ca.issue_for("client").unwrap(), &ca);
        // The server's port first, so the served config can name it.
        let port = mesh::free_port().unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let control = mesh(&served(addr, "default"));
        let (cp, cp_task) = crate::support::dev_control_plane(&control);

        // Neither workload has an identity of its own: only the providers.
        let settings =
            XdsSettings::from_bootstrap(&bootstrap(cp, "reviews-1", server_dir.path()), Vec::new())
                .unwrap()
                .serving("reviews");
        let (server_mesh, _server_xds) =
            proxyless_core::Mesh::from_control_plane(settings).unwrap();
        assert!(server_mesh.identity().is_none());
        tokio::time::timeout(Duration::from_secs(10), server_mesh.ready())
            .await
            .expect("the server's config and provider");
        let server = Echo::new("reviews")
            .service("reviews")
            .start(&server_mesh, &addr.to_string())
            .await
            .unwrap();
        let settings = XdsSettings::from_bootstrap(
            &bootstrap(cp, "client-1", client_dir.path()),
            vec!["reviews".into()],
        )
        .unwrap();
        let (client_mesh, client_xds) = proxyless_core::Mesh::from_control_plane(settings).unwrap();
        tokio::time::timeout(Duration::from_secs(10), client_mesh.ready())
            .await
            .expect("the client's config and provider");
        let client = Client::new(&client_mesh);
        assert_eq!(status(&client).await, Ok(200));

        // Both agents rotate their files while requests flow; each rotation
        // waits until both providers have picked it up.
        let (server_source, me) = (
            server_mesh.identity_source("default").unwrap(),
            client_mesh.identity_source("default").unwrap(),
        );
        let (t, during_load, last) =
            rotations_under_load(&client, 6000, 3, (&server_source, &me), || {
                let (next, next_client) = (
                    ca.issue_for("reviews").unwrap(),
                    ca.issue_for("client").unwrap(),
                );
                write_files(server_dir.path(), &next, &ca);
                write_files(client_dir.path(), &next_client, &ca);
                (next, next_client)
            })
            .await;
        assert_eq!(t.ok, 6000, "failed during rotation: {t:?}");
        assert!(
            during_load >= 2,
            "only {during_load} rotations landed during the load"
        );

        // New handshakes present the last certificate.
        let want = last;
        let tls = raw_connection(&server, &me).await;
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(
            presented, want,
            "new handshakes use the rotated certificate"
        );

        // A cluster naming an instance the bootstrap does not declare is
        // refused, and the running config keeps serving.
        control
            .update(
                proxyless_core::config::Config::from_yaml(&served(addr, "missing")).unwrap(),
                proxyless_core::snapshot::Source::Code,
            )
            .unwrap();
        crate::support::wait_for("the NACK", || {
            let status = client_xds.status();
            let nack = status.last_nack.lock().unwrap().clone();
            nack.is_some_and(|e| e.contains("certificate provider instance `missing`"))
        })
        .await;
        assert_eq!(status(&client).await, Ok(200));
        cp_task.abort();
    }
}

mod sds {
    use super::*;
    use mesh::control_plane::{DevControlPlane, Secrets};
    use proxyless_core::xds::{Api, XdsSettings};

    /// New SVIDs for the server (`reviews`) and the client, served as the
    /// `default` secret of each side's secret store.
    pub(super) fn rotate_default_secrets(
        ca: &DevCa,
        server: &Secrets,
        client: &Secrets,
    ) -> (Issued, Issued) {
        let (next, next_client) = (
            ca.issue_for("reviews").unwrap(),
            ca.issue_for("client").unwrap(),
        );
        server.set_certificate("default", &next.cert_pem, &next.key_pem);
        client.set_certificate("default", &next_client.cert_pem, &next_client.key_pem);
        (next, next_client)
    }

    /// A development control plane serving `control`'s config and `secrets`.
    fn control_plane(
        control: &Mesh,
        secrets: &Secrets,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let incoming =
            tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = incoming.local_addr().unwrap();
        let cp = DevControlPlane::new(control.clone()).with_secrets(secrets.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(cp.into_service())
                .serve_with_incoming(incoming)
                .await;
        });
        (addr, task)
    }

    pub(super) fn served_config(reviews: std::net::SocketAddr) -> String {
        format!(
            r#"
services: [{{ name: reviews, routes: [{{ to: [reviews] }}] }}]
backends:
  - name: reviews
    endpoints: ["{reviews}"]
    tls: {{ mode: mutual, identity: "{REVIEWS}", certificate: "sds:default", trust: "sds:ROOTCA" }}
inbound:
  - service: reviews
    mtls: strict
    certificate: "sds:default"
    trust: "sds:ROOTCA"
    rules:
      - from: ["spiffe://home.test/client"]
"#
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_over_ads_give_both_sides_their_identity_and_rotate_with_no_failed_request() {
        let ca = DevCa::new(HOME).unwrap();
        let port = mesh::free_port().unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let control = mesh(&served_config(addr));
        // Each workload's agent: its own certificate under the same name.
        // The server's trust comes through Envoy's SPIFFE validator (a
        // bundle per trust domain), the client's as a plain trusted CA.
        let (server_secrets, client_secrets) = (Secrets::new(), Secrets::new());
        let first = ca.issue_for("reviews").unwrap();
        server_secrets.set_certificate("default", &first.cert_pem, &first.key_pem);
        server_secrets.set_spiffe_bundles("ROOTCA", &[(HOME, &ca.ca_pem())]);
        let me = ca.issue_for("client").unwrap();
        client_secrets.set_certificate("default", &me.cert_pem, &me.key_pem);
        client_secrets.set_trusted_ca("ROOTCA", &ca.ca_pem());
        let (server_cp, server_task) = control_plane(&control, &server_secrets);
        let (client_cp, client_task) = control_plane(&control, &client_secrets);

        let (server_mesh, _server_xds) = Mesh::from_control_plane(
            XdsSettings::new(&format!("http://{server_cp}"), "reviews-1", Vec::new())
                .serving("reviews"),
        )
        .unwrap();
        tokio::time::timeout(Duration::from_secs(10), server_mesh.ready())
            .await
            .expect("the server's config and secrets");
        assert!(server_mesh.identity().is_none());
        let server = Echo::new("reviews")
            .service("reviews")
            .start(&server_mesh, &addr.to_string())
            .await
            .unwrap();
        // The client over the incremental variant, the server over the
        // state of the world.
        let settings = XdsSettings::new(
            &format!("http://{client_cp}"),
            "client-1",
            vec!["reviews".into()],
        )
        .delta();
        assert_eq!(settings.api, Api::Delta);
        let (client_mesh, client_xds) = Mesh::from_control_plane(settings).unwrap();
        tokio::time::timeout(Duration::from_secs(10), client_mesh.ready())
            .await
            .expect("the client's config and secrets");
        let client = Client::new(&client_mesh);
        assert_eq!(status(&client).await, Ok(200));

        // The agents rotate both certificates while requests flow.
        let (server_source, client_source) = (
            server_mesh.identity_source("sds:default").unwrap(),
            client_mesh.identity_source("sds:default").unwrap(),
        );
        let (t, during_load, last) =
            rotations_under_load(&client, 6000, 3, (&server_source, &client_source), || {
                rotate_default_secrets(&ca, &server_secrets, &client_secrets)
            })
            .await;
        assert_eq!(t.ok, 6000, "failed during rotation: {t:?}");
        assert!(
            during_load >= 2,
            "only {during_load} rotations landed during the load"
        );
        let tls = raw_connection(
            &server,
            &client_mesh
                .identity_for(Some("sds:default"), Some("sds:ROOTCA"))
                .unwrap(),
        )
        .await;
        assert_eq!(
            tls.get_ref().1.peer_certificates().unwrap()[0],
            last,
            "new handshakes use the rotated certificate"
        );

        // An expired certificate is NACKed by name; the last good one stays.
        let now = time::OffsetDateTime::now_utc();
        let expired = ca
            .issue(
                &"spiffe://home.test/client".parse().unwrap(),
                &mesh::certs::IssueOptions {
                    not_before: now - time::Duration::days(30),
                    not_after: now - time::Duration::days(1),
                    ..Default::default()
                },
            )
            .unwrap();
        let good = client_source.svid().unwrap().chain()[0].clone();
        client_secrets.set_certificate("default", &expired.cert_pem, &expired.key_pem);
        crate::support::wait_for("the NACK of the expired secret", || {
            let status = client_xds.status();
            let nack = status.last_nack.lock().unwrap().clone();
            nack.is_some_and(|e| e.contains("Secret `default`") && e.contains("not valid now"))
        })
        .await;
        assert_eq!(client_source.svid().unwrap().chain()[0], good);
        let error = client_source.status().last_error.unwrap_or_default();
        assert!(error.contains("SDS secret `default`"), "{error}");
        assert_eq!(status(&client).await, Ok(200));
        server_task.abort();
        client_task.abort();
    }
}

mod sds_socket {
    use super::sds::rotate_default_secrets;
    use super::*;
    use mesh::control_plane::{DevControlPlane, Secrets};
    use proxyless_core::xds::XdsSettings;

    /// A node agent: the Secret Discovery Service alone on a Unix socket.
    /// Stops when the returned sender is dropped or sent `true`.
    fn agent(path: &std::path::Path, secrets: &Secrets) -> tokio::sync::watch::Sender<bool> {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // The agent serves no config: its mesh is empty.
        let sds = DevControlPlane::new(Mesh::empty())
            .with_secrets(secrets.clone())
            .stop_on(stopped.clone())
            .into_sds_service();
        let mut until = stopped;
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(sds)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async move {
                        let _ = until.wait_for(|s| *s).await;
                    },
                )
                .await;
        });
        stop
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn secrets_from_node_agents_sds_sockets_rotate_and_survive_an_agent_restart() {
        let ca = DevCa::new(HOME).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = mesh::free_port().unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        // The control plane serves config only; the agents serve secrets.
        let control = mesh(&super::sds::served_config(addr));
        let (cp, cp_task) = crate::support::dev_control_plane(&control);
        let (server_secrets, client_secrets) = (Secrets::new(), Secrets::new());
        let first = ca.issue_for("reviews").unwrap();
        server_secrets.set_certificate("default", &first.cert_pem, &first.key_pem);
        server_secrets.set_trusted_ca("ROOTCA", &ca.ca_pem());
        let me = ca.issue_for("client").unwrap();
        client_secrets.set_certificate("default", &me.cert_pem, &me.key_pem);
        client_secrets.set_trusted_ca("ROOTCA", &ca.ca_pem());
        let (server_sock, client_sock) =
            (dir.path().join("server-sds"), dir.path().join("client-sds"));
        let _server_agent = agent(&server_sock, &server_secrets);
        let client_agent = agent(&client_sock, &client_secrets);

        let mut settings =
            XdsSettings::new(&format!("http://{cp}"), "reviews-1", Vec::new()).serving("reviews");
        settings.sds_server = Some(format!("unix://{}", server_sock.display()));
        let (server_mesh, _sx) = Mesh::from_control_plane(settings).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server_mesh.ready())
            .await
            .expect("the server's config and its agent's secrets");
        let _server = Echo::new("reviews")
            .service("reviews")
            .start(&server_mesh, &addr.to_string())
            .await
            .unwrap();
        let mut settings =
            XdsSettings::new(&format!("http://{cp}"), "client-1", vec!["reviews".into()]);
        settings.sds_server = Some(format!("unix://{}", client_sock.display()));
        let (client_mesh, _cx) = Mesh::from_control_plane(settings).unwrap();
        tokio::time::timeout(Duration::from_secs(10), client_mesh.ready())
            .await
            .expect("the client's config and its agent's secrets");
        let client = Client::new(&client_mesh);
        assert_eq!(status(&client).await, Ok(200));

        // Rotation through the agents while requests flow.
        let client_source = client_mesh.identity_source("sds:default").unwrap();
        let server_source = server_mesh.identity_source("sds:default").unwrap();
        let (t, during_load, _) =
            rotations_under_load(&client, 4000, 2, (&server_source, &client_source), || {
                rotate_default_secrets(&ca, &server_secrets, &client_secrets)
            })
            .await;
        assert_eq!(t.ok, 4000, "failed during rotation: {t:?}");
        assert!(during_load >= 1, "no rotation landed during the load");

        // The client's agent goes away: the identity keeps serving, the
        // failure is reported; the agent comes back and rotation resumes.
        client_agent.send_replace(true);
        std::fs::remove_file(&client_sock).unwrap();
        let before = client_source.svid().unwrap().chain()[0].clone();
        crate::support::wait_for("the lost agent to be reported", || {
            client_source
                .status()
                .last_error
                .is_some_and(|e| e.contains("SDS server"))
        })
        .await;
        assert_eq!(
            status(&client).await,
            Ok(200),
            "the last good identity serves"
        );
        assert_eq!(client_source.svid().unwrap().chain()[0], before);
        // The agent rotated while it was away.
        let rotated = ca.issue_for("client").unwrap();
        client_secrets.set_certificate("default", &rotated.cert_pem, &rotated.key_pem);
        let _client_agent = agent(&client_sock, &client_secrets);
        let want = leaf(&rotated);
        crate::support::wait_for("the agent's return", || {
            client_source.svid().is_some_and(|s| s.chain()[0] == want)
        })
        .await;
        let status_now = client_source.status();
        assert_eq!(status_now.last_error, None, "{status_now:?}");
        assert_eq!(status(&client).await, Ok(200));
        cp_task.abort();
    }
}
