//! DNS discovery over real sockets: a DNS server on loopback whose records
//! change while requests flow, echo servers on 127.0.0.1-3 (one port),
//! from a config in code and over the development control plane.

use crate::support::{mesh, run, wait_for};
use mesh::dns_server::DnsServer;
use mesh::echo::{Echo, EchoHandle};
use proxyless_core::Mesh;
use proxyless_core::config::Config;
use proxyless_core::xds::XdsSettings;
use proxyless_hyper::Client;
use std::net::IpAddr;
use std::time::Duration;

const NAME: &str = "ratings.mesh.test";

/// Echo servers `a`, `b`, `c` on 127.0.0.1, .2 and .3, all on one port.
/// (The backends below balance by round robin: the tests count requests
/// per address, and p2c may pass over an address whose first connection
/// was slow.)
async fn three_hosts() -> (Vec<EchoHandle>, u16) {
    let quiet = Mesh::empty();
    let a = Echo::new("a").start(&quiet, "127.0.0.1:0").await.unwrap();
    let port = a.addr().port();
    let mut servers = vec![a];
    for (name, ip) in [("b", "127.0.0.2"), ("c", "127.0.0.3")] {
        let s = Echo::new(name)
            .start(&quiet, &format!("{ip}:{port}"))
            .await
            .unwrap();
        servers.push(s);
    }
    (servers, port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dns_yaml(port: u16, dns: &DnsServer, mode: &str) -> String {
    format!(
        r#"
services:
  - name: ratings
    routes: [{{ retry: {{ attempts: 3, on: [connect-failure, reset] }}, to: [ratings] }}]
backends:
  - name: ratings
    endpoints: ["{NAME}:{port}"]
    load_balancer: round_robin
    dns: {{ mode: {mode}, servers: ["{}"], min_refresh: 100ms, max_refresh: 2s }}
"#,
        dns.addr()
    )
}

/// The addresses the mesh's current snapshot has for the backend.
fn endpoints(m: &Mesh) -> Vec<String> {
    let snap = m.snapshot();
    let b = snap.backend_named("ratings").unwrap();
    let mut out: Vec<String> = b
        .endpoints()
        .iter()
        .map(|e| e.address.to_string())
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_dns_follows_the_records_live_and_keeps_the_last_answer_when_lookups_fail() {
    let (servers, port) = three_hosts().await;
    let dns = DnsServer::start(1).await.unwrap();
    dns.set(NAME, &[ip("127.0.0.1"), ip("127.0.0.2")]);
    let m = mesh(&dns_yaml(port, &dns, "strict"));
    let client = Client::new(&m);

    // The first request waits for the first lookup; then every address is
    // an endpoint.
    let t = run(&client, "http://ratings/", 200, 4).await;
    assert_eq!(t.ok, 200, "{t:?}");
    wait_for("the first answer in the snapshot", || {
        endpoints(&m).len() == 2
    })
    .await;
    assert_eq!(
        endpoints(&m),
        [format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}")]
    );
    let t = run(&client, "http://ratings/", 400, 4).await;
    assert!(
        t.get("a") > 50 && t.get("b") > 50 && t.get("c") == 0,
        "{t:?}"
    );

    // The state of 127.0.0.2, which stays, is kept across the change.
    let rt = client.runtime();
    let state_of = |addr: &str| {
        let snap = m.snapshot();
        let i = snap
            .backends()
            .iter()
            .position(|b| &**b.name() == "ratings")
            .unwrap();
        let b = rt.backend(&snap, i as u32).unwrap();
        b.endpoints.iter().find(|e| &*e.address == addr).cloned()
    };
    let kept = state_of(&format!("127.0.0.2:{port}")).unwrap();

    // The records change under traffic: .1 goes, .3 comes.
    let load = tokio::spawn({
        let client = client.clone();
        async move { run(&client, "http://ratings/", 3000, 4).await }
    });
    dns.set(NAME, &[ip("127.0.0.2"), ip("127.0.0.3")]);
    wait_for("the new answer", || {
        endpoints(&m) == [format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")]
    })
    .await;
    let during = load.await.unwrap();
    assert_eq!(during.failed(), 0, "{during:?}");
    let t = run(&client, "http://ratings/", 400, 4).await;
    assert!(
        t.get("a") == 0 && t.get("b") > 50 && t.get("c") > 50,
        "{t:?}"
    );
    let after = state_of(&format!("127.0.0.2:{port}")).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&kept, &after),
        "the unchanged endpoint keeps its runtime state"
    );

    // The server fails: the last answer stands, and the failure shows.
    dns.set_failing(true);
    let asked = dns.questions();
    wait_for("failed lookups", || dns.questions() > asked + 2).await;
    let t = run(&client, "http://ratings/", 300, 4).await;
    assert_eq!(t.ok, 300, "{t:?}");
    assert!(t.get("b") > 30 && t.get("c") > 30, "{t:?}");
    assert_eq!(endpoints(&m).len(), 2);
    let status = m.dns_status();
    let name = &status[0];
    assert_eq!(name["name"], NAME);
    assert!(
        name["consecutive_failures"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(name["last_error"].is_string(), "{status}");
    assert_eq!(name["addresses"].as_array().unwrap().len(), 2, "{status}");

    // It answers again: followed again.
    dns.set_failing(false);
    dns.set(NAME, &[ip("127.0.0.3")]);
    wait_for("the recovered answer", || {
        endpoints(&m) == [format!("127.0.0.3:{port}")]
    })
    .await;
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ttl_paces_the_lookups_within_the_bounds() {
    let (_servers, port) = three_hosts().await;
    let dns = DnsServer::start(60).await.unwrap();
    dns.set(NAME, &[ip("127.0.0.1")]);
    // A 60 s TTL, bounded by max_refresh 2s: about one lookup every 2 s
    // (an A and an AAAA question each).
    let m = mesh(&dns_yaml(port, &dns, "strict"));
    let client = Client::new(&m);
    assert_eq!(run(&client, "http://ratings/", 10, 1).await.ok, 10);
    let start = dns.questions();
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let asked = dns.questions() - start;
    assert!(
        (2..=8).contains(&asked),
        "{asked} questions in 4.5 s at one lookup per 2 s"
    );
    // A 1 s TTL is followed (min_refresh is 100ms).
    dns.set_ttl(1);
    dns.set(NAME, &[ip("127.0.0.2")]);
    wait_for("the change after the old TTL's bound", || {
        endpoints(&m) == [format!("127.0.0.2:{port}")]
    })
    .await;
    let start = dns.questions();
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let asked = dns.questions() - start;
    assert!(
        (4..=16).contains(&asked),
        "{asked} questions in 3.2 s at one lookup per second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_dns_connects_to_the_latest_answer() {
    let (mut servers, port) = three_hosts().await;
    let dns = DnsServer::start(1).await.unwrap();
    dns.set(NAME, &[ip("127.0.0.1")]);
    let m = mesh(&dns_yaml(port, &dns, "logical"));
    let client = Client::new(&m);
    let t = run(&client, "http://ratings/", 50, 2).await;
    assert_eq!(t.get("a"), 50, "{t:?}");
    // One endpoint, the name: the snapshot does not change with answers.
    assert_eq!(endpoints(&m), [format!("{NAME}:{port}")]);

    dns.set(NAME, &[ip("127.0.0.2")]);
    let asked = dns.questions();
    wait_for("a lookup after the change", || dns.questions() >= asked + 4).await;
    // Connections made from now on go to .2; a's pooled ones end with it.
    servers.remove(0).stop().await;
    let t = run(&client, "http://ratings/", 100, 2).await;
    assert_eq!(t.ok, 100, "{t:?}");
    assert_eq!(t.get("b"), 100, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_xds_a_strict_dns_cluster_is_looked_up_by_the_client() {
    let (_servers, port) = three_hosts().await;
    let dns = DnsServer::start(1).await.unwrap();
    dns.set(NAME, &[ip("127.0.0.2"), ip("127.0.0.3")]);
    let served =
        Mesh::from_config(Config::from_yaml(&dns_yaml(port, &dns, "strict")).unwrap()).unwrap();
    let (addr, cp) = crate::support::dev_control_plane(&served);
    let settings = XdsSettings::new(&format!("http://{addr}"), "dns", vec!["ratings".into()]);
    let (m, _xds) = Mesh::from_control_plane(settings).unwrap();
    tokio::time::timeout(Duration::from_secs(15), m.ready())
        .await
        .unwrap();
    let snap = m.snapshot();
    let dns_settings = snap.config().backends[0].dns.clone().unwrap();
    assert_eq!(dns_settings.servers, [dns.addr().to_string()]);
    assert_eq!(dns_settings.min_refresh, Duration::from_millis(100));
    let client = Client::new(&m);
    let t = run(&client, "http://ratings/", 300, 4).await;
    assert_eq!(t.ok, 300, "{t:?}");
    wait_for("the answer in the snapshot", || endpoints(&m).len() == 2).await;
    let t = run(&client, "http://ratings/", 300, 4).await;
    assert!(
        t.get("a") == 0 && t.get("b") > 30 && t.get("c") > 30,
        "{t:?}"
    );
    cp.abort();
}

/// dnsmasq on a loopback port answering from a hosts file (TTL 1 s); the
/// file is rewritten and reloaded with SIGHUP. Stops when dropped.
struct Dnsmasq {
    child: tokio::process::Child,
    hosts: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn start(records: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        write_hosts(&hosts, records);
        let bin = ["/usr/sbin/dnsmasq", "dnsmasq"]
            .into_iter()
            .find(|b| std::path::Path::new(b).exists())
            .unwrap_or("dnsmasq");
        let port = crate::support::free_port();
        let child = tokio::process::Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--local-ttl=1",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--user=root",
                "--pid-file=",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("dnsmasq: {e} (install it with bash tests/peers/install.sh)")
            });
        Self {
            child,
            hosts,
            port,
            _dir: dir,
        }
    }

    fn set(&self, records: &[&str]) {
        write_hosts(&self.hosts, records);
        let pid = self.child.id().unwrap().to_string();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn write_hosts(path: &std::path::Path, records: &[&str]) {
    let text: String = records.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs dnsmasq (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn strict_dns_follows_dnsmasq_as_its_records_change() {
    let (_servers, port) = three_hosts().await;
    let dnsmasq = Dnsmasq::start(&["127.0.0.1", "127.0.0.2"]);
    let m = mesh(&format!(
        r#"
services: [{{ name: ratings, routes: [{{ to: [ratings] }}] }}]
backends:
  - name: ratings
    endpoints: ["{NAME}:{port}"]
    load_balancer: round_robin
    dns: {{ servers: ["127.0.0.1:{}"], min_refresh: 100ms, max_refresh: 2s }}
"#,
        dnsmasq.port
    ));
    let client = Client::new(&m);
    // dnsmasq takes a moment to listen: the first lookups may fail.
    wait_for("dnsmasq's first answer", || endpoints(&m).len() == 2).await;
    let t = run(&client, "http://ratings/", 300, 4).await;
    assert!(
        t.get("a") > 30 && t.get("b") > 30 && t.get("c") == 0,
        "{t:?}"
    );
    let load = tokio::spawn({
        let client = client.clone();
        async move { run(&client, "http://ratings/", 2000, 4).await }
    });
    dnsmasq.set(&["127.0.0.3"]);
    wait_for("dnsmasq's new answer", || {
        endpoints(&m) == [format!("127.0.0.3:{port}")]
    })
    .await;
    let during = load.await.unwrap();
    assert_eq!(during.failed(), 0, "{during:?}");
    let t = run(&client, "http://ratings/", 100, 4).await;
    assert_eq!(t.get("c"), 100, "{t:?}");
}
