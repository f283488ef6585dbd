//! mTLS against tools nobody here wrote: curl and `openssl s_client` as
//! clients of a strict meshed server, and `openssl s_server -Verify` (via
//! `../shared/peers/setup-mtls.sh`) as the server of a mesh client. `.ci/run`
//! installs openssl and curl.

use mesh::certs::DevCa;
use mesh::echo::Echo;
use mesh_core::Mesh;
use mesh_core::config::Config;
use mesh_core::identity::tls::{Identity, IdentityFiles};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{PeerStop, peers};

fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`{name}` is needed by the interop tests (.ci/run installs it)"
    );
    name.to_owned()
}

/// A strict meshed server and the files a foreign client needs.
async fn strict_server(dir: &Path) -> mesh::echo::EchoHandle {
    let ca = DevCa::new("demo.local").unwrap();
    ca.write_ca(dir).unwrap();
    let server = ca.issue_for("reviews").unwrap();
    ca.issue_for("productpage")
        .unwrap()
        .write(dir, "client")
        .unwrap();
    let mesh = Mesh::from_config(
        Config::from_yaml(
            "services: [{ name: reviews, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]\ninbound: [{ service: reviews, mtls: strict }]",
        )
        .unwrap(),
    )
    .unwrap();
    mesh.set_identity(
        Identity::from_pem(
            server.cert_pem.as_bytes(),
            server.key_pem.as_bytes(),
            ca.ca_pem().as_bytes(),
        )
        .unwrap(),
    );
    Echo::new("reviews")
        .service("reviews")
        .start(&mesh, "127.0.0.1:0")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_valid_svid_is_served_and_without_one_is_refused() {
    let curl = tool("curl");
    let dir = tempfile::tempdir().unwrap();
    let server = strict_server(dir.path()).await;
    let url = format!("https://127.0.0.1:{}/ratings/1", server.addr().port());
    let d = dir.path().to_owned();
    let with = tokio::task::spawn_blocking({
        let (curl, url, d) = (curl.clone(), url.clone(), d.clone());
        move || {
            Command::new(curl)
                .args(["-sS", "--max-time", "5", "--cacert"])
                .arg(d.join("ca.pem"))
                .arg("--cert")
                .arg(d.join("client.pem"))
                .arg("--key")
                .arg(d.join("client-key.pem"))
                .arg(&url)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let body: serde_json::Value = serde_json::from_slice(&with.stdout).unwrap();
    assert_eq!(body["caller"], "spiffe://demo.local/productpage");

    let without = tokio::task::spawn_blocking(move || {
        Command::new(curl)
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(d.join("ca.pem"))
            .arg(&url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        !without.status.success(),
        "curl without a certificate was served"
    );
    assert_eq!(server.served(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_verifies_the_server_and_is_verified() {
    let openssl = tool("openssl");
    let dir = tempfile::tempdir().unwrap();
    let server = strict_server(dir.path()).await;
    let d = dir.path().to_owned();
    let port = server.addr().port();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(openssl)
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-CAfile",
            ])
            .arg(d.join("ca.pem"))
            .arg("-cert")
            .arg(d.join("client.pem"))
            .arg("-key")
            .arg(d.join("client-key.pem"))
            .args(["-verify_return_error", "-quiet", "-ign_eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"GET /ratings/1 HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n")
            .unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("HTTP/1.1 200"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("spiffe://demo.local/productpage"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_client_talks_mtls_to_openssl_s_server() {
    tool("openssl");
    let setup = peers().join("setup-mtls.sh");
    assert!(setup.exists(), "{} is missing", setup.display());
    let pki = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = |args: &[&str]| {
        let out = Command::new("bash")
            .arg(&setup)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "setup-mtls.sh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let pki_dir = pki.path().to_str().unwrap().to_owned();
    run(&["certs", &pki_dir]);
    run(&["s_server", &port.to_string(), &pki_dir]);
    let _stop = PeerStop(format!("s_server-{port}"));

    let mesh = Mesh::from_config(
        Config::from_yaml(&format!(
            "services: [{{ name: peer, routes: [{{ to: [s_server] }}] }}]\nbackends: [{{ name: s_server, endpoints: ['127.0.0.1:{port}'], tls: {{ mode: mutual, identity: 'spiffe://mesh.test/ns/default/sa/server' }} }}]"
        ))
        .unwrap(),
    )
    .unwrap();
    let files = IdentityFiles {
        cert: pki.path().join("client.crt"),
        key: pki.path().join("client.key"),
        ca: pki.path().join("ca.crt"),
    };
    mesh.set_identity(Identity::load(&files).unwrap());
    let resp = mesh_hyper::Client::new(&mesh)
        .get("http://peer/")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let page = String::from_utf8_lossy(&body);
    assert!(page.contains("s_server"), "{page}");

    // The same server, expected under another identity, is refused.
    let wrong = Mesh::from_config(
        Config::from_yaml(&format!(
            "services: [{{ name: peer, routes: [{{ to: [s_server] }}] }}]\nbackends: [{{ name: s_server, endpoints: ['127.0.0.1:{port}'], tls: {{ mode: mutual, identity: 'spiffe://mesh.test/ns/default/sa/other' }} }}]"
        ))
        .unwrap(),
    )
    .unwrap();
    wrong.set_identity(Identity::load(&files).unwrap());
    assert!(
        mesh_hyper::Client::new(&wrong)
            .get("http://peer/")
            .await
            .is_err()
    );
}
