//! Chaos under load, bounded in time: the config swapped ten times a
//! second (with bad configs among them), an endpoint killed and restarted,
//! the control plane killed and restarted. Traffic keeps flowing with no
//! failed request where the mesh can hide the fault, and the last word
//! (config, endpoint, control plane) is what serves in the end.

use crate::support::{echo, free_port, mesh, run};
use mesh::echo::Echo;
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::snapshot::Source;
use proxyless_core::xds::XdsSettings;
use proxyless_hyper::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn split(a: &str, wa: u32, b: &str, wb: u32) -> String {
    format!(
        r#"
services: [{{ name: reviews, routes: [{{ retry: {{ attempts: 3, on: [connect-failure, reset] }}, to: [{{ backend: v1, weight: {wa} }}, {{ backend: v2, weight: {wb} }}] }}] }}]
backends:
  - {{ name: v1, endpoints: ["{a}"] }}
  - {{ name: v2, endpoints: ["{b}"] }}
"#
    )
}

/// Load until `stop`: the tally of everything sent.
fn load(client: &Client, stop: &Arc<AtomicBool>) -> tokio::task::JoinHandle<crate::support::Tally> {
    let (client, stop) = (client.clone(), stop.clone());
    tokio::spawn(async move {
        let mut all = crate::support::Tally::default();
        while !stop.load(Ordering::Relaxed) {
            all.merge(run(&client, "http://reviews/", 64, 8).await);
        }
        all
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_swapped_ten_times_a_second_under_load() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let (a, b) = (v1.addr().to_string(), v2.addr().to_string());
    let m = mesh(&split(&a, 50, &b, 50));
    let client = Client::new(&m);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&client, &stop);
    let (mut accepted, mut rejected) = (0, 0);
    for i in 0..30u32 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let yaml = if i % 5 == 4 {
            // A bad edit among them: refused, the last good one serves.
            split(&a, 0, &b, 0)
        } else {
            split(&a, i % 3, &b, 1)
        };
        match Config::from_yaml(&yaml) {
            Ok(cfg) => {
                m.update(cfg, Source::Code).unwrap();
                accepted += 1;
            }
            Err(_) => rejected += 1,
        }
    }
    m.update(
        Config::from_yaml(&split(&a, 0, &b, 1)).unwrap(),
        Source::Code,
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let during = traffic.await.unwrap();
    assert_eq!((accepted, rejected), (24, 6));
    assert!(during.ok > 500, "{during:?}");
    assert_eq!(during.failed(), 0, "{during:?}");
    let after = run(&client, "http://reviews/", 200, 4).await;
    assert_eq!(
        after.by_backend.get("v2"),
        Some(&200),
        "the last config: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_killed_under_load_is_ejected_and_comes_back() {
    let (a, b) = (echo("a").await, echo("b").await);
    let (addr_a, addr_b) = (a.addr(), b.addr());
    let m = mesh(&format!(
        r#"
services: [{{ name: reviews, routes: [{{ retry: {{ attempts: 3, on: [connect-failure, reset, 5xx] }}, to: [v1] }}] }}]
backends:
  - name: v1
    endpoints: ["{addr_a}", "{addr_b}"]
    load_balancer: round_robin
    outlier_detection: {{ consecutive_5xx: 0, consecutive_connect_failures: 2, base_ejection: 1s, max_ejection: 1s, max_ejection_percent: 50 }}
"#
    ));
    let client = Client::new(&m);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&client, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let during = traffic.await.unwrap();
    // Another endpoint exists: what was in flight on the dead one is
    // retried there. The bound is the issue's: failures no more than the
    // requests in flight (8); a CI run once saw 1 of 5,375.
    assert!(during.failed() <= 8, "{during:?}");
    // Traffic flowed throughout. Not a rate: a full run of the suite on a
    // slow machine once served 575 in the second (a request on the dead
    // endpoint held its batch), where a quiet one serves about 5,000.
    assert!(during.ok > 200, "{during:?}");
    assert!(client.runtime().stats().ejections.load(Ordering::Relaxed) >= 1);
    // Back on its port: in rotation again once the ejection ends.
    let back = Echo::new("a").start(&Mesh::empty(), addr_a).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = run(&client, "http://reviews/", 40, 2).await;
        assert_eq!(t.failed(), 0, "{t:?}");
        if t.by_backend.get("a").is_some_and(|n| *n > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "a never came back: {t:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back.served() > 0);
}

/// The development control plane on `port`, serving `mesh`, in a runtime
/// of its own: killing it drops every task it runs (its streams included),
/// as a killed process would.
struct ControlPlane {
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    fn start(mesh: &Mesh, port: u16) -> Self {
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let (up, is_up) = std::sync::mpsc::channel::<()>();
        let mesh = mesh.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let incoming =
                    tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], port).into())
                        .unwrap();
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(mesh::control_plane::DevControlPlane::new(mesh).into_service())
                        .serve_with_incoming(incoming),
                );
            });
            let _ = up.send(());
            let _ = killed.recv();
            rt.shutdown_timeout(Duration::ZERO);
        });
        is_up.recv().unwrap();
        Self {
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.kill.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_killed_mid_traffic_and_restarted() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let (a, b) = (v1.addr().to_string(), v2.addr().to_string());
    let port = free_port();
    let served = mesh(&split(&a, 1, &b, 0));
    let cp = ControlPlane::start(&served, port);
    let settings = XdsSettings::new(
        &format!("http://127.0.0.1:{port}"),
        "chaos",
        vec!["reviews".into()],
    );
    let (m, xds) = Mesh::from_control_plane(settings).unwrap();
    tokio::time::timeout(Duration::from_secs(5), m.ready())
        .await
        .unwrap();
    let client = Client::new(&m);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load(&client, &stop);
    tokio::time::sleep(Duration::from_millis(200)).await;
    cp.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while xds.status().connected.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "still connected to a dead control plane"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Away for a while: the last config keeps serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Back, with a new word: the client reconnects and applies it.
    served
        .update(
            Config::from_yaml(&split(&a, 0, &b, 1)).unwrap(),
            Source::Code,
        )
        .unwrap();
    let _cp = ControlPlane::start(&served, port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while m
        .snapshot()
        .config()
        .services
        .first()
        .is_none_or(|s| s.routes[0].to[0].weight != 0)
    {
        assert!(Instant::now() < deadline, "the new config never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let during = traffic.await.unwrap();
    assert_eq!(during.failed(), 0, "{during:?}");
    assert!(during.get("v1") > 0, "{during:?}");
    let after = run(&client, "http://reviews/", 100, 4).await;
    assert_eq!(after.by_backend.get("v2"), Some(&100), "{after:?}");
    assert!(xds.status().connects.load(Ordering::Relaxed) >= 2);
}
