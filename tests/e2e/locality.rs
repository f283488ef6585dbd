//! Locality-aware balancing over real sockets: nine echo servers in three
//! localities, a caller in one of them; from a file config and over the
//! development control plane's xDS stream.

use crate::support::{echo, mesh, run};
use mesh::echo::EchoHandle;
use proxyless_core::Mesh;
use proxyless_core::config::{Config, Locality};
use proxyless_core::snapshot::Source;
use proxyless_core::xds::XdsSettings;
use proxyless_hyper::Client;
use std::time::{Duration, Instant};

/// Three servers in zone `r/a` (the caller's), three in `r/b` (its
/// region), three in region `s`.
async fn three_zones() -> Vec<(EchoHandle, &'static str)> {
    let mut servers = Vec::new();
    for (zone, locality) in [("a", "r/a"), ("b", "r/b"), ("c", "s/c")] {
        for i in 0..3 {
            servers.push((echo(&format!("{zone}{i}")).await, locality));
        }
    }
    servers
}

fn zones_yaml(servers: &[(EchoHandle, &str)], unhealthy: &[usize]) -> String {
    let endpoints: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, (s, l))| {
            let health = if unhealthy.contains(&i) {
                ", healthy: false"
            } else {
                ""
            };
            format!("{{ address: \"{}\", locality: {l}{health} }}", s.addr())
        })
        .collect();
    format!(
        r#"
services: [{{ name: reviews, routes: [{{ to: [v1] }}] }}]
backends:
  - name: v1
    endpoints: [{}]
    # Round robin within a level: every endpoint gets its turn, so the one
    # made to fail is soon picked (p2c would pass over one whose first
    # connection was slow until its estimate decays).
    load_balancer: round_robin
    outlier_detection: {{ consecutive_5xx: 1, base_ejection: 15s, max_ejection_percent: 100 }}
"#,
        endpoints.join(", ")
    )
}

/// Requests per zone (the first letter of the server's name).
fn per_zone(t: &mesh::tally::Tally) -> [u32; 3] {
    let mut zones = [0; 3];
    for (name, n) in &t.by_backend {
        match name.as_bytes().first() {
            Some(b'a') => zones[0] += n,
            Some(b'b') => zones[1] += n,
            Some(b'c') => zones[2] += n,
            _ => {}
        }
    }
    zones
}

/// Fails `server` until the mesh has ejected it (one 5xx ejects), then
/// lets it answer again (it stays ejected for the ejection time).
async fn eject(client: &Client, server: &EchoHandle) {
    server.set_fail_rate(1.0);
    for _ in 0..2_000 {
        if server.failed() > 0 {
            break;
        }
        let _ = client.get("http://reviews/").await;
    }
    assert_eq!(server.failed(), 1, "one failure ejects it");
    server.set_fail_rate(0.0);
}

/// The share of `n` requests each zone took, in percent.
async fn shares(client: &Client, n: u32) -> [f64; 3] {
    let t = run(client, "http://reviews/", n, 4).await;
    assert_eq!(t.ok, n, "{t:?}");
    per_zone(&t).map(|z| f64::from(z) * 100.0 / f64::from(n))
}

/// Within `tolerance` percentage points: at n = 1,500, the standard
/// deviation of a 93% share is 0.66 points and of a 46% share 1.3, so 4.5
/// points never fails by chance and catches a factor of 1.0 (67%/33%) or
/// none at all (100%/0%).
fn near(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 4.5,
        "{what}: {got:.1}% is not {want}%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_stays_in_the_callers_zone_and_spills_over_as_the_factor_says() {
    let servers = three_zones().await;
    let m = mesh(&zones_yaml(&servers, &[])).with_locality("r/a".parse().unwrap());
    let client = Client::new(&m);
    let n = 1_500;

    // All healthy: every request stays in zone a.
    assert_eq!(shares(&client, 600).await, [100.0, 0.0, 0.0]);

    // One of three local endpoints out: 2/3 x 1.4 = 93% stays local, the
    // rest goes to the region's other zone, none to the other region.
    let started = Instant::now();
    eject(&client, &servers[0].0).await;
    let s = shares(&client, n).await;
    near(s[0], 93.0, "zone a with 2 of 3");
    assert_eq!(s[2], 0.0, "{s:?}");
    // Two out: 1/3 x 1.4 = 46%.
    eject(&client, &servers[1].0).await;
    let s = shares(&client, n).await;
    near(s[0], 46.0, "zone a with 1 of 3");
    near(s[1], 54.0, "zone b behind it");
    assert_eq!(s[2], 0.0, "{s:?}");
    // The whole zone out: its region takes everything.
    eject(&client, &servers[2].0).await;
    let zone_a_out = Instant::now();
    assert_eq!(shares(&client, 600).await, [0.0, 100.0, 0.0]);
    // And one of b out: the other region takes 7%.
    eject(&client, &servers[3].0).await;
    let s = shares(&client, n).await;
    near(s[1], 93.0, "zone b with 2 of 3");
    near(s[2], 7.0, "region s behind it");
    assert_eq!(s[0], 0.0, "{s:?}");
    // The shares were measured while every ejection lasted.
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "the phases took {:?}, longer than the ejections",
        started.elapsed()
    );

    // The ejections end (15 s each from its own): traffic comes back to
    // zone a once the last of its endpoints is back. (Waiting from the
    // first ejection instead failed on a slow machine: the phases before
    // the third took two seconds, and its ejection ran into the check.)
    tokio::time::sleep(
        Duration::from_secs(15).saturating_sub(zone_a_out.elapsed()) + Duration::from_secs(2),
    )
    .await;
    assert_eq!(shares(&client, 600).await, [100.0, 0.0, 0.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_caller_locality_every_zone_serves() {
    let servers = three_zones().await;
    let m = mesh(&zones_yaml(&servers, &[]));
    let client = Client::new(&m);
    let s = shares(&client, 900).await;
    for z in s {
        // A third each, give or take what p2c does with equal latencies.
        assert!(z > 15.0, "{s:?}");
    }
    // Set later, it takes effect at once, on the running client too.
    m.set_locality(Some("s/c".parse().unwrap()));
    assert_eq!(shares(&client, 300).await, [0.0, 0.0, 100.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_xds_the_node_locality_and_eds_health_steer_traffic() {
    let servers = three_zones().await;
    let served = Mesh::from_config(Config::from_yaml(&zones_yaml(&servers, &[])).unwrap()).unwrap();
    let (addr, cp) = crate::support::dev_control_plane(&served);
    let mut settings = XdsSettings::new(&format!("http://{addr}"), "zonal", vec!["reviews".into()]);
    settings.node_locality = Some(["r".into(), "a".into(), String::new()]);
    let (m, _xds) = Mesh::from_control_plane(settings).unwrap();
    tokio::time::timeout(Duration::from_secs(15), m.ready())
        .await
        .unwrap();
    assert_eq!(m.locality(), Some(Locality::new("r", "a", "")));
    let snap = m.snapshot();
    let backend = &snap.config().backends[0];
    assert_eq!(
        backend.endpoints[4].locality,
        Some(Locality::new("r", "b", "").into()),
        "EDS carried the localities"
    );
    let client = Client::new(&m);
    assert_eq!(shares(&client, 300).await, [100.0, 0.0, 0.0]);

    // The control plane marks two of zone a's endpoints unhealthy: 46%
    // stays, as with ejections.
    let version = m.snapshot().version();
    let before = servers[0].0.served() + servers[1].0.served();
    served
        .update(
            Config::from_yaml(&zones_yaml(&servers, &[0, 1])).unwrap(),
            Source::Code,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while m.snapshot().version() == version {
        assert!(Instant::now() < deadline, "the update never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = shares(&client, 1_500).await;
    near(s[0], 46.0, "zone a with 1 of 3 healthy");
    let after = servers[0].0.served() + servers[1].0.served();
    assert_eq!(after, before, "unhealthy endpoints are never picked");
    cp.abort();
}
