//! Shared helpers: meshes from YAML with real echo backends.

use mesh::echo::{Echo, EchoHandle};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_hyper::Client;

pub fn mesh(yaml: &str) -> Mesh {
    Mesh::from_config(Config::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))).unwrap()
}

pub async fn echo(name: &str) -> EchoHandle {
    Echo::new(name)
        .start(&Mesh::empty(), "127.0.0.1:0")
        .await
        .unwrap()
}

pub use mesh::tally::Tally;

/// The identity `issued` (from `ca`) as a workload holds it.
pub fn identity(
    ca: &mesh::certs::DevCa,
    issued: &mesh::certs::Issued,
) -> proxyless_core::identity::tls::Identity {
    proxyless_core::identity::tls::Identity::from_pem(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        ca.ca_pem().as_bytes(),
    )
    .unwrap()
}

/// Sends `n` requests, `concurrency` at a time.
pub async fn run(client: &Client, url: &str, n: u32, concurrency: u32) -> Tally {
    let url = url.to_owned();
    run_with(client, n, concurrency, move |_| {
        http::Request::get(url.as_str())
    })
    .await
}

pub async fn run_with(
    client: &Client,
    n: u32,
    concurrency: u32,
    make: impl Fn(u32) -> http::request::Builder + Send + Sync + 'static,
) -> Tally {
    let make = std::sync::Arc::new(make);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, make, next) = (client.clone(), make.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return t;
                }
                let req = make(i)
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                t.record(client.request(req).await).await;
            }
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        all.merge(task.await.unwrap());
    }
    all
}

/// The development control plane serving `mesh` on a free loopback port;
/// its address, and the task to abort to stop it.
pub fn dev_control_plane(
    mesh: &Mesh,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let incoming = tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(mesh::control_plane::DevControlPlane::new(mesh.clone()).into_service())
            .serve_with_incoming(incoming),
    );
    (addr, task)
}

/// Waits until `cond` holds, checking every 20 ms; fails the test after
/// 15 s, naming `what` it waited for.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A plain GET over loopback (no mesh): the status and the body as text.
pub async fn http_get(url: &str) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Where the peer scripts are (`tests/peers`).
pub fn peers() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// The Python of the peers' venv (`tests/peers/setup-python-peers.sh`).
pub fn peers_python() -> std::path::PathBuf {
    let home = std::env::var_os("MESH_PEERS_HOME")
        .map_or_else(|| "/opt/mesh-peers".into(), std::path::PathBuf::from);
    let python = home.join("venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: the interop peers are not installed (bash tests/peers/install.sh)",
        python.display()
    );
    python
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    mesh::free_port().unwrap()
}

/// Runs a peer script with `args`; fails the test, with its error output,
/// if the script fails. Returns what it printed.
pub fn peer(script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("bash")
        .arg(peers().join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} {args:?} failed (are the interop peers installed? bash tests/peers/install.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops a peer (by the name its `tests/peers` script gave it) when dropped.
pub struct PeerStop(pub String);

impl Drop for PeerStop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(peers().join("stop-peers.sh"))
            .arg(&self.0)
            .output();
    }
}
