//! Operations beyond the peers: a cold start from the last known good
//! config when the control plane is down.

use crate::support::{dev_control_plane, echo, mesh, wait_for};
use proxyless_core::Mesh;
use proxyless_core::xds::XdsSettings;
use proxyless_hyper::Client;
use std::time::Duration;

/// A control plane serving `served` on `addr` (a port it had before).
fn control_plane_on(
    served: &Mesh,
    addr: std::net::SocketAddr,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let incoming = tonic::transport::server::TcpIncoming::bind(addr).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(mesh::control_plane::DevControlPlane::new(served.clone()).into_service())
            .serve_with_incoming(incoming),
    )
}

async fn status_of(client: &Client) -> u16 {
    match client.get("http://lkg/x").await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// The test: run with a control plane (the file is written), stop
/// it, restart the client: after the wait it serves the last config,
/// marked stale; a corrupt, truncated or foreign file is refused with why
/// and nothing is served; the control plane back, its config replaces the
/// stale one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_starting_while_its_control_plane_is_down_serves_the_last_known_good() {
    let v1 = echo("lkg-v1").await;
    let served = mesh(&format!(
        "services: [{{ name: lkg, routes: [{{ to: [v1] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{}'] }}]",
        v1.addr()
    ));
    let (addr, cp) = dev_control_plane(&served);
    let dir = tempfile::tempdir().unwrap();
    let settings = |node: &str| {
        let mut s = XdsSettings::new(&format!("http://{addr}"), node, vec!["lkg".into()]);
        s.state_dir = Some(dir.path().to_owned());
        s.state_wait = Duration::from_millis(300);
        s
    };
    let file = settings("lkg-node").state_file().unwrap();

    // With its control plane: it serves, and the file is written.
    let (first, _xds) = Mesh::from_control_plane(settings("lkg-node")).unwrap();
    wait_for("the control plane's config", || first.is_ready()).await;
    assert_eq!(status_of(&Client::new(&first)).await, 200);
    wait_for("the state file", || file.exists()).await;
    let good = std::fs::read(&file).unwrap();
    drop(first);
    cp.abort();
    let _ = cp.await;

    // The control plane down: a new client waits, then serves the file.
    let (m, xds) = Mesh::from_control_plane(settings("lkg-node")).unwrap();
    assert!(!m.is_ready(), "nothing to serve before the wait");
    wait_for("the last known good", || m.is_ready()).await;
    let client = Client::new(&m);
    assert_eq!(status_of(&client).await, 200);
    let stale = xds.status().stale.lock().unwrap().clone().unwrap();
    assert!(stale.contains("last known good"), "{stale}");
    assert!(m.degraded().unwrap().contains("last known good"));
    assert!(
        m.snapshot()
            .source()
            .to_string()
            .contains("last known good")
    );

    // Damaged or foreign files are refused, and nothing is served.
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x5a;
    let other = settings("other-node").state_file().unwrap();
    for (bytes, at, node, why) in [
        (&corrupt[..], &file, "lkg-node", "checksum"),
        (&good[..good.len() - 9], &file, "lkg-node", "truncated"),
        (&good[..], &other, "other-node", "node `lkg-node`"),
    ] {
        std::fs::write(at, bytes).unwrap();
        let (refused, xds) = Mesh::from_control_plane(settings(node)).unwrap();
        wait_for("the refusal", || {
            xds.status().state_error.lock().unwrap().is_some()
        })
        .await;
        let error = xds.status().state_error.lock().unwrap().clone().unwrap();
        assert!(
            error.contains(why) && error.contains(".state"),
            "{why}: {error}"
        );
        assert!(!refused.is_ready(), "{why}: a refused file is not served");
        assert!(xds.status().stale.lock().unwrap().is_none());
    }

    // The control plane back (on its port): its config replaces the file's.
    let cp = control_plane_on(&served, addr);
    wait_for("the control plane's config", || {
        xds.status().stale.lock().unwrap().is_none()
    })
    .await;
    assert!(m.degraded().is_none());
    assert!(
        !m.snapshot()
            .source()
            .to_string()
            .contains("last known good")
    );
    assert_eq!(status_of(&client).await, 200);
    cp.abort();
}
