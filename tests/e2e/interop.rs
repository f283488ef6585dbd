//! mTLS against tools nobody here wrote: curl and `openssl s_client` as
//! clients of a strict meshed server, and `openssl s_server -Verify` (via
//! `tests/peers/setup-mtls.sh`) as the server of a mesh client. `.ci/run`
//! installs openssl and curl.

use mesh::certs::DevCa;
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::identity::tls::{Identity, IdentityFiles};
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
        "`{name}` is needed by the interop tests (bash tests/peers/install.sh)"
    );
    name.to_owned()
}

/// A strict meshed server and the files a foreign client needs.
async fn strict_server(dir: &Path) -> mesh::echo::EchoHandle {
    let ca = DevCa::new("demo.local").unwrap();
    ca.write_ca(dir).unwrap();
    ca.issue_for("productpage")
        .unwrap()
        .write(dir, "client")
        .unwrap();
    crate::refusals::strict_server(&ca).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
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
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
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
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
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
    let resp = proxyless_hyper::Client::new(&mesh)
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
        proxyless_hyper::Client::new(&wrong)
            .get("http://peer/")
            .await
            .is_err()
    );
}

/// Runs a blocking command off the runtime and returns its output.
async fn output(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// curl as the client of a strict meshed server, presenting each bad
/// certificate of `docs/security.md` in turn: each is refused, and the
/// same curl with a good certificate is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn curl_with_each_bad_certificate_is_refused_by_a_strict_server() {
    let curl = tool("curl");
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("demo.local").unwrap();
    ca.write_ca(dir.path()).unwrap();
    let (server, _mesh) = crate::refusals::strict_server(&ca).await;
    let url = format!("https://127.0.0.1:{}/ratings/1", server.addr().port());
    let curl_as = |name: &str| {
        let mut cmd = Command::new(&curl);
        cmd.args(["-sS", "--max-time", "5", "--cacert"])
            .arg(dir.path().join("ca.pem"))
            .arg("--cert")
            .arg(dir.path().join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.path().join(format!("{name}-key.pem")))
            .arg(&url);
        cmd
    };
    ca.issue_for("productpage")
        .unwrap()
        .write(dir.path(), "good")
        .unwrap();
    let ok = output(curl_as("good")).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for (i, (what, cert, _)) in crate::refusals::bad_certs(&ca, "productpage", false)
        .into_iter()
        .enumerate()
    {
        let name = format!("bad{i}");
        cert.write(dir.path(), &name).unwrap();
        let out = output(curl_as(&name)).await;
        assert!(!out.status.success(), "curl with {what} was served");
    }
    assert_eq!(server.served(), 1);
}

/// Kills a child process when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `openssl s_server` presenting `cert` on a free port, once it listens.
async fn s_server(
    openssl: &str,
    dir: &Path,
    name: &str,
    cert: &mesh::certs::Issued,
) -> (u16, Kill) {
    cert.write(dir, name).unwrap();
    let port = crate::support::free_port();
    let child = Command::new(openssl)
        .args(["s_server", "-quiet", "-www", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(dir.join(format!("{name}.pem")))
        .arg("-key")
        .arg(dir.join(format!("{name}-key.pem")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let kill = Kill(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (port, kill);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("openssl s_server did not listen on {port}");
}

/// `openssl s_server` presenting each bad certificate in turn: the mesh
/// client refuses each, and the same server with a good one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn the_mesh_client_refuses_openssl_s_server_with_each_bad_certificate() {
    let openssl = tool("openssl");
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("demo.local").unwrap();
    let accepted = [
        "spiffe://demo.local/reviews",
        "spiffe://other.local/reviews",
    ];
    let good = ca.issue_for("reviews").unwrap();
    let (port, _kill) = s_server(&openssl, dir.path(), "good", &good).await;
    let addr = ([127, 0, 0, 1], port).into();
    let resp = crate::refusals::mtls_client(&ca, addr, &accepted)
        .get("http://reviews/")
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "positive control");
    let mut cases = crate::refusals::bad_certs(&ca, "reviews", true);
    cases.push((
        "a valid certificate of the wrong SPIFFE ID",
        ca.issue_for("ratings").unwrap(),
        "server presented spiffe://demo.local/ratings",
    ));
    for (i, (what, cert, why)) in cases.into_iter().enumerate() {
        let (port, _kill) = s_server(&openssl, dir.path(), &format!("bad{i}"), &cert).await;
        let addr = ([127, 0, 0, 1], port).into();
        let err = crate::refusals::mtls_client(&ca, addr, &accepted)
            .get("http://reviews/")
            .await
            .expect_err(what);
        assert!(format!("{err:?}").contains(why), "{what}: {err:?}");
    }
}

/// curl sends each spelling of a denied path as written (`--path-as-is`):
/// none reaches the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn curl_path_spellings_of_a_denied_path_never_reach_the_handler() {
    let curl = tool("curl");
    let server = crate::refusals::admin_denying_server("").await;
    let port = server.addr().port();
    for (path, want) in [
        ("//admin", "403"),
        ("/./admin", "403"),
        ("/ratings/../admin", "403"),
        ("/%61dmin", "403"),
        ("/admin;x", "400"),
        ("/ratings/..%2Fadmin", "400"),
        ("/ratings/./1", "200"),
    ] {
        let mut cmd = Command::new(&curl);
        cmd.args([
            "-s",
            "--path-as-is",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"));
        let out = output(cmd).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{path}");
    }
    assert_eq!(server.served(), 1);
}
