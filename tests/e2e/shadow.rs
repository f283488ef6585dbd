//! Shadow evaluation: a candidate config beside the live one, over real
//! sockets. Every request is served by the live config; the candidate's
//! decisions are only counted, and the report is read where an operator
//! reads it (the admin server's `/shadow` and `/metrics`).

use crate::support::{dev_control_plane, echo, mesh, wait_for};
use proxyless_core::config::Config;
use proxyless_core::snapshot::Source;
use proxyless_hyper::Client;
use proxyless_hyper::admin::Admin;

/// The live config: `/api` and the rest of `sh` to v1.
fn live(v1: &str, v2: &str) -> String {
    format!(
        r#"
services:
  - name: sh
    routes:
      - {{ name: api, match: {{ path: {{ prefix: /api }} }}, to: [sh-v1] }}
      - {{ name: rest, to: [sh-v1] }}
backends:
  - {{ name: sh-v1, endpoints: ["{v1}"] }}
  - {{ name: sh-v2, endpoints: ["{v2}"] }}
"#
    )
}

/// The candidate: `/api/beta` to v2 first.
fn candidate(v1: &str, v2: &str) -> String {
    live(v1, v2).replace(
        "      - { name: api,",
        "      - { name: beta, match: { path: { prefix: /api/beta } }, to: [sh-v2] }\n      - { name: api,",
    )
}

async fn send(client: &Client, path: &str, n: usize) {
    for _ in 0..n {
        let resp = client.get(&format!("http://sh{path}")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["x-backend"],
            "sh-v1",
            "the live config serves"
        );
    }
}

async fn admin(m: &proxyless_core::Mesh) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(Admin::new(m).serve(listener));
    addr
}

async fn report(addr: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = crate::support::http_get(&format!("http://{addr}/shadow")).await;
    (status, serde_json::from_str(&body).unwrap_or_default())
}

/// The issue's test: a candidate from a watched file; live requests are all
/// served by the live config (nothing reaches the candidate's backend), and
/// the report counts the requests it would route differently, by service
/// and live -> candidate route and backend, with samples, on the admin
/// server and in metrics. An invalid edit keeps the candidate and its
/// counts; a valid one starts a new report; unloading it ends `/shadow`.
// One thread: its client and servers run where the test's own metrics
// recorder is installed (a global one would be every other test's too).
#[tokio::test]
async fn a_candidate_file_is_evaluated_against_live_requests_and_never_served() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (v1, v2) = (echo("sh-v1").await, echo("sh-v2").await);
    let (a1, a2) = (v1.addr().to_string(), v2.addr().to_string());
    let m = mesh(&live(&a1, &a2));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("candidate.yaml");
    std::fs::write(&file, candidate(&a1, &a2)).unwrap();
    m.watch_candidate_file(&file).unwrap();
    let client = Client::new(&m);
    let addr = admin(&m).await;

    send(&client, "/api/beta/x", 20).await;
    send(&client, "/api/v1/y", 30).await;
    send(&client, "/other", 10).await;
    assert_eq!(
        v2.served(),
        0,
        "nothing is sent where only the candidate goes"
    );
    assert_eq!(v1.served(), 60);

    let (status, r) = report(addr).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["evaluated"], 60, "{r}");
    assert_eq!(r["differing"], 20, "{r}");
    assert_eq!(r["candidate"]["source"], format!("file:{}", file.display()));
    let d = &r["differences"][0];
    assert_eq!(d["requests"], 20, "{r}");
    assert_eq!(
        (
            &d["live"]["service"],
            &d["live"]["route"],
            &d["live"]["backend"]
        ),
        (&"sh".into(), &"api".into(), &"sh-v1".into())
    );
    assert_eq!(
        (&d["candidate"]["route"], &d["candidate"]["backend"]),
        (&"beta".into(), &"sh-v2".into())
    );
    assert_eq!(r["differences"].as_array().unwrap().len(), 1, "{r}");
    let samples = r["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 20);
    assert_eq!(samples[0]["path"], "/api/beta/x");
    assert_eq!(samples[0]["method"], "GET");

    let metrics = prometheus.render();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("mesh_shadow_differences_total{")
                && l.contains("service=\"sh\"")
                && l.contains("live_route=\"api\"")
                && l.contains("candidate_route=\"beta\"")
                && l.contains("candidate_backend=\"sh-v2\"")
        })
        .unwrap_or_else(|| panic!("no difference series in\n{metrics}"));
    assert!(line.ends_with(" 20"), "{line}");
    let evaluated = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mesh_shadow_requests_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(evaluated.is_some_and(|n| n >= 60.0), "{metrics}");

    // An invalid edit: refused, the candidate and its counts stay.
    std::fs::write(
        &file,
        "services: [{ name: sh, routes: [{ to: [nowhere] }] }]",
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    send(&client, "/api/beta/z", 1).await;
    let (_, r) = report(addr).await;
    assert_eq!(
        (r["evaluated"].clone(), r["differing"].clone()),
        (61.into(), 21.into())
    );

    // A valid edit that changes the routes: a new report.
    let routed_to_v2 = live(&a1, &a2).replace("name: rest, to: [sh-v1]", "name: rest, to: [sh-v2]");
    std::fs::write(&file, routed_to_v2).unwrap();
    wait_for("the new candidate", || {
        m.candidate().is_some_and(|c| c.report().evaluated() == 0)
    })
    .await;
    send(&client, "/other", 5).await;
    send(&client, "/api/beta/x", 5).await;
    let (_, r) = report(addr).await;
    assert_eq!(
        (r["evaluated"].clone(), r["differing"].clone()),
        (10.into(), 5.into())
    );
    assert_eq!(r["differences"][0]["candidate"]["route"], "rest");

    // Unloaded: the final report comes back, and `/shadow` says none.
    let last = m.clear_candidate().unwrap();
    assert_eq!(last.report().differing(), 5);
    let (status, _) = report(addr).await;
    assert_eq!(status, 404);
    send(&client, "/api/beta/x", 1).await;
    assert_eq!(v2.served(), 0);
}

/// A candidate delivered by a second control plane: each config it serves
/// is loaded as the candidate, the live config keeps serving, and an
/// endpoint change there keeps the report counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_from_a_control_plane_is_evaluated_beside_the_live_config() {
    let (v1, v2) = (echo("sh-v1").await, echo("sh-v2").await);
    let (a1, a2) = (v1.addr().to_string(), v2.addr().to_string());
    let m = mesh(&live(&a1, &a2));
    let served = mesh(&candidate(&a1, &a2));
    let (cp, task) = dev_control_plane(&served);
    let settings = proxyless_core::xds::XdsSettings::new(
        &format!("http://{cp}"),
        "shadow-node",
        vec!["sh".into()],
    );
    let _xds = m.candidate_from_control_plane(settings).unwrap();
    wait_for("the control plane's candidate", || m.candidate().is_some()).await;
    let c = m.candidate().unwrap();
    assert_eq!(c.report().source(), format!("xds:http://{cp}"));

    let client = Client::new(&m);
    send(&client, "/api/beta/1", 7).await;
    send(&client, "/api/2", 3).await;
    assert_eq!(v2.served(), 0);
    let (differences, other) = c.report().differences();
    assert_eq!(
        (c.report().evaluated(), c.report().differing(), other),
        (10, 7, 0)
    );
    assert_eq!(differences[0].candidate.route_label(), "beta");

    // An endpoint change at the control plane keeps the report counting.
    let moved = candidate(&a1, &a2).replace(&a1, &a2);
    served
        .update(Config::from_yaml(&moved).unwrap(), Source::Code)
        .unwrap();
    wait_for("the moved endpoint", || {
        m.candidate().is_some_and(|c| {
            c.snapshot()
                .backend_named("sh-v1")
                .is_some_and(|b| *b.endpoints()[0].address == *a2)
        })
    })
    .await;
    assert_eq!(m.candidate().unwrap().report().differing(), 7);
    task.abort();
}
