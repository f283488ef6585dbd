//! The xDS client against an ADS server nobody here wrote
//! (`tests/peers/setup-xds-server.sh`, on grpcio + xds-protos): routing
//! by what it serves, ACKs and NACKs as the protocol says, and serving the
//! last good snapshot while the control plane is away.

use crate::support::{PeerStop as Stop, echo, free_port, peer, peers, run, run_with, wait_for};
use proxyless_core::Mesh;
use proxyless_core::xds::{Api, XdsSettings};
use proxyless_hyper::Client;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Resources for listener `xds-svc`: route `xds-route` splitting over EDS
/// clusters `xa` and `xb`.
fn resources(a: u16, b: u16, wa: u32, wb: u32, action: serde_json::Value) -> serde_json::Value {
    let hcm = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "rds": { "route_config_name": "xds-route", "config_source": { "ads": {}, "resource_api_version": "V3" } },
        "http_filters": [{ "name": "envoy.filters.http.router",
            "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
    });
    let cluster = |name: &str| {
        serde_json::json!({
            "name": name, "type": "EDS", "lb_policy": "ROUND_ROBIN",
            "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } }
        })
    };
    let cla = |name: &str, port: u16| {
        serde_json::json!({
            "cluster_name": name,
            "endpoints": [{ "locality": { "zone": "z" }, "lb_endpoints": [{ "endpoint": { "address": {
                "socket_address": { "address": "127.0.0.1", "port_value": port } } }, "load_balancing_weight": 1 }],
                "load_balancing_weight": 1 }]
        })
    };
    let mut route_action = serde_json::json!({
        "weighted_clusters": { "clusters": [ { "name": "xa", "weight": wa }, { "name": "xb", "weight": wb } ] },
        "timeout": "2s",
        "retry_policy": { "retry_on": "5xx,connect-failure", "num_retries": 2 }
    });
    let route = if action.is_null() {
        serde_json::json!({ "match": { "prefix": "/" }, "route": route_action.take(),
            // Something we accept but cannot honour: named, not dropped silently.
            "typed_per_filter_config": { "envoy.filters.http.fault": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                "abort": { "grpc_status": 14, "percentage": { "numerator": 0 } } } } })
    } else {
        serde_json::json!({ "match": { "prefix": "/" }, "redirect": action })
    };
    serde_json::json!({
        "listeners": [{ "name": "xds-svc", "api_listener": { "api_listener": hcm } }],
        "routes": [{ "name": "xds-route", "virtual_hosts": [{ "name": "vh", "domains": ["xds-svc"], "routes": [route] }] }],
        "clusters": [cluster("xa"), cluster("xb")],
        "endpoints": [cla("xa", a), cla("xb", b)]
    })
}

async fn post_config(admin: u16, config: &serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("http://127.0.0.1:{admin}/config"))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            config.to_string(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert!(
        resp.status().is_success(),
        "POST /config: {}",
        resp.status()
    );
}

/// Has the independent server send everything to `xb`, and waits until the
/// mesh serves that.
async fn shift_to_xb(admin: u16, (pa, pb): (u16, u16), mesh: &Mesh) {
    post_config(admin, &resources(pa, pb, 0, 100, serde_json::Value::Null)).await;
    wait_for("the shift", || {
        mesh.snapshot()
            .config()
            .services
            .first()
            .is_some_and(|s| s.routes[0].to[0].weight == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn routes_by_what_an_independent_ads_server_serves_and_acks_and_nacks() {
    against_the_independent_server(Api::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn the_same_over_incremental_xds_against_the_independent_server() {
    against_the_independent_server(Api::Delta).await;
}

async fn against_the_independent_server(api: Api) {
    let (a, b) = (echo("xa").await, echo("xb").await);
    let (pa, pb) = (a.addr().port(), b.addr().port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xds.json");
    std::fs::write(
        &file,
        resources(pa, pb, 80, 20, serde_json::Value::Null).to_string(),
    )
    .unwrap();
    let (port, admin, stop) = start_peer(&file);

    let mut settings = XdsSettings::new(
        &format!("http://127.0.0.1:{port}"),
        "mesh-test-node",
        vec!["xds-svc".into()],
    );
    settings.api = api;
    let (mesh, xds) = Mesh::from_control_plane(settings).unwrap();
    wait_for("the first snapshot", || mesh.snapshot().version() >= 1).await;
    let client = Client::new(&mesh);
    let t = run(&client, "http://xds-svc/", 2000, 8).await;
    assert_eq!(t.ok, 2000, "{t:?}");
    assert!((t.share("xa") - 0.8).abs() < 0.04, "{t:?}");
    let snap = mesh.snapshot();
    let route = &snap.config().services[0].routes[0];
    assert_eq!(route.timeout, Some(Duration::from_secs(2)));
    assert_eq!(route.retry.as_ref().unwrap().attempts, 3);
    assert!(
        xds.status().acks.load(Ordering::Relaxed) >= 4,
        "LDS, RDS, CDS, EDS acked"
    );
    assert_eq!(xds.status().nacks.load(Ordering::Relaxed), 0);
    // How long applying the last response took is kept (and recorded as
    // mesh_xds_apply_duration_seconds): some time, well under the test's.
    let applied = xds.status().last_apply_micros.load(Ordering::Relaxed);
    assert!((1..10_000_000).contains(&applied), "{applied} µs");

    // A route we cannot honour (a redirect) is NACKed; traffic is unaffected.
    let version = mesh.snapshot().version();
    post_config(
        admin,
        &resources(
            pa,
            pb,
            80,
            20,
            serde_json::json!({ "path_redirect": "/elsewhere" }),
        ),
    )
    .await;
    wait_for("the NACK", || {
        xds.status().nacks.load(Ordering::Relaxed) >= 1
    })
    .await;
    let reason = xds.status().last_nack.lock().unwrap().clone().unwrap();
    assert!(reason.contains("redirect"), "{reason}");
    // An operator sees the same at the admin server's /xds.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    let admin_server = tokio::spawn(proxyless_hyper::admin::Admin::new(&mesh).serve(listener));
    let status: serde_json::Value =
        serde_json::from_str(&get_text(format!("http://{admin_addr}/xds")).await).unwrap();
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(
        status["api"],
        if api == Api::Delta { "delta" } else { "sotw" },
        "{status}"
    );
    assert!(
        status["last_nack"]
            .as_str()
            .unwrap_or_default()
            .contains("redirect"),
        "{status}"
    );
    assert_eq!(
        status["resources"]["Listener"]["subscribed"][0], "xds-svc",
        "{status}"
    );
    assert_eq!(status["resources"]["Cluster"]["held"], 2, "{status}");
    assert!(
        status["last_ack_seconds_ago"]
            .as_f64()
            .is_some_and(|s| s < 60.0),
        "{status}"
    );
    assert_eq!(mesh.snapshot().version(), version);
    let t = run(&client, "http://xds-svc/", 200, 4).await;
    assert_eq!(t.ok, 200, "{t:?}");
    // The server saw the NACK with our reason.
    let (_, events) = crate::support::http_get(&format!("http://127.0.0.1:{admin}/events")).await;
    assert!(events.to_lowercase().contains("nack"), "{events}");
    let kind = if api == Api::Delta { "delta" } else { "sotw" };
    assert!(
        events.contains(&format!("\"kind\": \"{kind}\"")),
        "{events}"
    );

    // A good update shifts traffic live, with no failed request.
    shift_to_xb(admin, (pa, pb), &mesh).await;
    let t = run(&client, "http://xds-svc/", 300, 4).await;
    assert_eq!(t.by_backend.get("xb"), Some(&300), "{t:?}");

    // The control plane goes away: the last snapshot keeps serving.
    drop(stop);
    wait_for("the disconnect", || {
        !xds.status().connected.load(Ordering::Relaxed)
    })
    .await;
    let t = run(&client, "http://xds-svc/", 300, 4).await;
    assert_eq!(t.ok, 300, "{t:?}");
    // And /xds says how long the config has been without a control plane.
    let status: serde_json::Value =
        serde_json::from_str(&get_text(format!("http://{admin_addr}/xds")).await).unwrap();
    assert_eq!(status["connected"], false, "{status}");
    assert!(
        status["disconnected_for_seconds"].as_f64().is_some(),
        "{status}"
    );
    admin_server.abort();
}

/// Starts the independent ADS server serving `file`: (port, admin port, stop).
fn start_peer(file: &Path) -> (u16, u16, Stop) {
    let (port, admin) = (free_port(), free_port());
    peer(
        "setup-xds-server.sh",
        &[
            &port.to_string(),
            &admin.to_string(),
            file.to_str().unwrap(),
        ],
    );
    (port, admin, Stop(format!("xds-server-{port}")))
}

async fn get_text(url: String) -> String {
    crate::support::http_get(&url).await.1
}

/// The listener names our stream at the independent server subscribes to.
async fn subscribed_listeners(admin: u16) -> Vec<String> {
    let state: serde_json::Value =
        serde_json::from_str(&get_text(format!("http://127.0.0.1:{admin}/state")).await).unwrap();
    let streams = state["streams"].as_array().cloned().unwrap_or_default();
    let ours = streams
        .iter()
        .find(|s| s["node"] == "on-demand")
        .cloned()
        .unwrap_or_default();
    let names = &ours["types"]["type.googleapis.com/envoy.config.listener.v3.Listener"]["names"];
    names
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn hosts_are_subscribed_when_first_called_and_unsubscribed_on_request() {
    on_demand(Api::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn the_same_on_demand_over_incremental_xds() {
    on_demand(Api::Delta).await;
}

async fn on_demand(api: Api) {
    let (a, b) = (echo("xa").await, echo("xb").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xds.json");
    let json = resources(
        a.addr().port(),
        b.addr().port(),
        80,
        20,
        serde_json::Value::Null,
    );
    std::fs::write(&file, json.to_string()).unwrap();
    let (port, admin, _stop) = start_peer(&file);

    // Nothing listed: ready at once, nothing subscribed.
    let mut settings =
        XdsSettings::new(&format!("http://127.0.0.1:{port}"), "on-demand", Vec::new());
    settings.api = api;
    let (mesh, xds) = Mesh::from_control_plane(settings).unwrap();
    assert!(mesh.is_ready());
    assert!(mesh.snapshot().config().services.is_empty());

    // The first call subscribes to its host and is routed by the answer:
    // not one request passes through unrouted while the answer is on its way.
    let client = Client::new(&mesh);
    let t = run(&client, "http://xds-svc/", 1000, 8).await;
    assert_eq!(t.ok, 1000, "{t:?}");
    assert!((t.share("xa") - 0.8).abs() < 0.05, "{t:?}");
    assert_eq!(subscribed_listeners(admin).await, ["xds-svc"]);
    assert!(mesh.snapshot().service_for_host("xds-svc").is_some());

    // A host the control plane does not know is asked once, then passes
    // through as addressed; an address is never asked about.
    let direct = format!("http://{}/", a.addr());
    let t = run(&client, &direct, 20, 2).await;
    assert_eq!(t.by_backend.get("xa"), Some(&20), "{t:?}");
    let unknown = run(&client, "http://not-in-the-mesh.invalid/", 3, 1).await;
    assert_eq!(unknown.ok, 0, "{unknown:?}");
    let mut names = subscribed_listeners(admin).await;
    names.sort();
    assert_eq!(names, ["not-in-the-mesh.invalid", "xds-svc"]);

    // Unsubscribing drops the host and what only it referred to.
    xds.unsubscribe("xds-svc");
    wait_for("the service to leave", || {
        mesh.snapshot().service_for_host("xds-svc").is_none()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribed_listeners(admin).await != ["not-in-the-mesh.invalid"] {
        assert!(Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(mesh.snapshot().config().backends.is_empty());
}

/// The development control plane serving a watched file, in this process;
/// sending on the returned channel stops it (streams end, the port closes).
async fn control_plane(file: &Path, port: u16) -> tokio::sync::oneshot::Sender<()> {
    let mesh = Mesh::from_file(file).unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let _ = mesh::control_plane::serve_with_shutdown(mesh, addr, shutdown).await;
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "control plane did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop
}

fn split_file(a: std::net::SocketAddr, b: std::net::SocketAddr, wa: u32, wb: u32) -> String {
    format!(
        r#"
services:
  - name: cp-svc
    routes:
      - name: faulty
        match: {{ path: {{ prefix: /fault }} }}
        fault: {{ abort: {{ status: 418, percent: 100 }} }}
        to: [cp-a]
      - name: main
        timeout: 3s
        retry: {{ attempts: 3, on: [5xx, connect-failure] }}
        to: [{{ backend: cp-a, weight: {wa} }}, {{ backend: cp-b, weight: {wb} }}]
backends:
  - {{ name: cp-a, endpoints: ["{a}"], load_balancer: round_robin, outlier_detection: {{ consecutive_5xx: 7 }} }}
  - {{ name: cp-b, endpoints: ["{b}"], circuit_breaker: {{ max_requests: 500 }} }}
"#
    )
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_control_plane_routes_as_the_file_does_and_pushes_edits() {
    development_control_plane(Api::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_over_incremental_xds_from_the_development_control_plane() {
    development_control_plane(Api::Delta).await;
}

async fn development_control_plane(api: Api) {
    let (a, b) = (echo("cp-a").await, echo("cp-b").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(&file, &split_file(a.addr(), b.addr(), 70, 30));
    let port = free_port();
    let cp = control_plane(&file, port).await;

    let mut settings = XdsSettings::new(
        &format!("http://127.0.0.1:{port}"),
        "cp-test",
        vec!["cp-svc".into()],
    );
    settings.api = api;
    let (mesh, xds) = Mesh::from_control_plane(settings).unwrap();
    wait_for("the first snapshot", || mesh.snapshot().version() >= 1).await;
    // The same config as the file, through xDS and back.
    let from_file = proxyless_core::config::Config::from_path(&file).unwrap();
    let got = mesh.snapshot().config().clone();
    assert_eq!(got.services[0].routes, from_file.services[0].routes);
    assert_eq!(got.backends, from_file.backends);
    let client = Client::new(&mesh);
    // The fault, carried as the fault filter's per-route config, is injected.
    let t = run(&client, "http://cp-svc/fault", 20, 2).await;
    assert_eq!(t.errors.get("http_418").copied(), Some(20), "{t:?}");
    let t = run(&client, "http://cp-svc/", 2000, 8).await;
    assert!((t.share("cp-a") - 0.7).abs() < 0.04, "{t:?}");

    // An edit is pushed; traffic shifts with no failed request.
    let during = tokio::spawn({
        let client = client.clone();
        async move { run(&client, "http://cp-svc/", 3000, 8).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    write(&file, &split_file(a.addr(), b.addr(), 0, 100));
    let during = during.await.unwrap();
    assert_eq!(during.failed(), 0, "{during:?}");
    wait_for("the push", || {
        mesh.snapshot().config().services[0].routes[1].to[0].weight == 0
    })
    .await;
    let t = run(&client, "http://cp-svc/", 300, 4).await;
    assert_eq!(t.by_backend.get("cp-b"), Some(&300), "{t:?}");

    // An invalid edit is refused by the watcher and never served.
    let version = mesh.snapshot().version();
    write(
        &file,
        "services: [{ name: cp-svc, routes: [{ to: [nope] }] }]\n",
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(mesh.snapshot().version(), version);

    // The control plane dies: traffic goes on; it comes back: updates resume.
    let _ = cp.send(());
    wait_for("the disconnect", || {
        !xds.status().connected.load(Ordering::Relaxed)
    })
    .await;
    let t = run(&client, "http://cp-svc/", 300, 4).await;
    assert_eq!(t.ok, 300, "{t:?}");
    write(&file, &split_file(a.addr(), b.addr(), 100, 0));
    let _cp = control_plane(&file, port).await;
    wait_for("the resumed stream", || {
        mesh.snapshot().config().services[0].routes[1].to[1].weight == 0
    })
    .await;
    let t = run(&client, "http://cp-svc/", 300, 4).await;
    assert_eq!(t.by_backend.get("cp-a"), Some(&300), "{t:?}");
    assert!(xds.status().connects.load(Ordering::Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_edit_among_many_services_is_applied_to_what_it_touches() {
    one_edit_among_many(Api::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_edit_over_incremental_xds() {
    one_edit_among_many(Api::Delta).await;
}

/// The indexes at which `after` holds another allocation than `before`.
fn changed<T>(before: &[std::sync::Arc<T>], after: &[std::sync::Arc<T>]) -> Vec<usize> {
    let same = |i: usize| std::sync::Arc::ptr_eq(&before[i], &after[i]);
    (0..after.len().min(before.len()))
        .filter(|&i| !same(i))
        .collect()
}

/// Twenty services over the development control plane; one backend's
/// endpoint is edited in the file. The client's next snapshot shares every
/// other service and backend with the one before (the same allocations:
/// not translated, validated or compiled again), and the data path keeps
/// their resolved state by identity.
async fn one_edit_among_many(api: Api) {
    let (a, b) = (echo("many-a").await, echo("many-b").await);
    let file_of = |moved: std::net::SocketAddr| {
        let mut text = String::from("services:\n");
        for i in 0..20 {
            text.push_str(&format!(
                "  - {{ name: svc{i}, routes: [{{ to: [b{i}] }}] }}\n"
            ));
        }
        text.push_str("backends:\n");
        for i in 0..20 {
            let at = if i == 7 { moved } else { a.addr() };
            text.push_str(&format!("  - {{ name: b{i}, endpoints: ['{at}'] }}\n"));
        }
        text
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(&file, &file_of(a.addr()));
    let port = free_port();
    let _cp = control_plane(&file, port).await;
    let services = (0..20).map(|i| format!("svc{i}")).collect();
    let mut settings = XdsSettings::new(&format!("http://127.0.0.1:{port}"), "many", services);
    settings.api = api;
    let (mesh, _xds) = Mesh::from_control_plane(settings).unwrap();
    wait_for("all twenty", || mesh.snapshot().services().len() == 20).await;
    let client = Client::new(&mesh);
    for i in [0, 7] {
        let t = run(&client, &format!("http://svc{i}/"), 20, 2).await;
        assert_eq!(t.by_backend.get("many-a"), Some(&20), "{t:?}");
    }
    let before = mesh.snapshot();
    let resolved_b0 = client.runtime().backend(&before, 0).unwrap();

    write(&file, &file_of(b.addr()));
    wait_for("the edit", || mesh.snapshot().version() > before.version()).await;
    let after = mesh.snapshot();
    // Names sort as strings: b7 is backend 17, svc7 is service 17.
    assert_eq!(after.backend(17).unwrap().name().as_ref(), "b7");
    assert_eq!(
        changed(before.backends(), after.backends()),
        [17],
        "only b7 compiled again"
    );
    assert_eq!(
        changed(before.services(), after.services()),
        Vec::<usize>::new()
    );
    let resolved_now = client.runtime().backend(&after, 0).unwrap();
    assert!(std::sync::Arc::ptr_eq(&resolved_b0, &resolved_now));
    let t = run(&client, "http://svc7/", 20, 2).await;
    assert_eq!(t.by_backend.get("many-b"), Some(&20), "{t:?}");
    let t = run(&client, "http://svc0/", 20, 2).await;
    assert_eq!(t.by_backend.get("many-a"), Some(&20), "{t:?}");
}

/// `DevControlPlane::new` behind the user's own tonic server (no stop
/// signal) keeps streams open and pushes edits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_service_in_a_users_own_server_keeps_streams_open() {
    let prometheus = proxyless_hyper::telemetry::install_prometheus().unwrap();
    let (a, b) = (echo("own-a").await, echo("own-b").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(
        &file,
        &split_file(a.addr(), b.addr(), 100, 0).replace("cp-svc", "own-svc"),
    );
    let served = Mesh::from_file(&file).unwrap();
    let incoming = tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = incoming.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(mesh::control_plane::DevControlPlane::new(served).into_service())
            .serve_with_incoming(incoming),
    );
    let settings = XdsSettings::new(&format!("http://{addr}"), "own", vec!["own-svc".into()]);
    let (mesh, xds) = Mesh::from_control_plane(settings).unwrap();
    assert!(!mesh.is_ready());
    tokio::time::timeout(Duration::from_secs(5), mesh.ready())
        .await
        .expect("the first snapshot");
    let version = mesh.snapshot().version();
    assert!(version >= 1);
    write(
        &file,
        &split_file(a.addr(), b.addr(), 0, 100).replace("cp-svc", "own-svc"),
    );
    wait_for("the edit", || mesh.snapshot().version() > version).await;
    let t = run(&Client::new(&mesh), "http://own-svc/", 100, 4).await;
    assert_eq!(t.by_backend.get("own-b"), Some(&100), "{t:?}");
    assert_eq!(
        xds.status().connects.load(Ordering::Relaxed),
        1,
        "one stream, never dropped"
    );
    assert!(xds.status().connected.load(Ordering::Relaxed));
    // The same, as an operator scraping /metrics sees it.
    let scrape = prometheus.render();
    let series = |name: &str, labels: &[&str]| -> Option<f64> {
        scrape
            .lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains(&format!("control_plane=\"http://{addr}\""))
                    && labels.iter().all(|x| l.contains(x))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    assert_eq!(series("mesh_xds_streams_total", &[]), Some(1.0), "{scrape}");
    assert_eq!(series("mesh_xds_connected", &[]), Some(1.0), "{scrape}");
    let acks = |t: &str| {
        series(
            "mesh_xds_responses_total",
            &[&format!("type=\"{t}\""), "result=\"ack\""],
        )
    };
    assert!(acks("Listener") >= Some(1.0), "{scrape}");
    assert!(
        acks("RouteConfiguration") >= Some(2.0),
        "the first and the edit: {scrape}"
    );
    assert!(
        scrape.contains("# HELP mesh_xds_responses_total"),
        "described: {scrape}"
    );
    // Staleness: when the last ACK was, in Unix seconds.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last_ack = series("mesh_xds_last_ack_timestamp_seconds", &[]).unwrap_or(0.0);
    assert!(
        (now - last_ack).abs() < 60.0,
        "{last_ack} vs {now}: {scrape}"
    );
    server.abort();
}

/// gRPC's own xDS client (grpcio, `xds:///` target) reads the development
/// control plane's resources and routes by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn grpcs_own_xds_client_routes_by_the_development_control_plane() {
    let (p1, p2) = (free_port(), free_port());
    let mut stops = Vec::new();
    for (port, name) in [(p1, "grpc-x1"), (p2, "grpc-x2")] {
        peer("setup-grpc-peer.sh", &[&port.to_string(), name]);
        stops.push(Stop(format!("grpc-peer-{port}")));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    write(
        &file,
        &format!(
            r#"
services:
  - name: echo-svc
    routes: [{{ name: all, to: [{{ backend: x1, weight: 50 }}, {{ backend: x2, weight: 50 }}] }}]
backends:
  - {{ name: x1, endpoints: ["127.0.0.1:{p1}"], protocol: http2, load_balancer: round_robin }}
  - {{ name: x2, endpoints: ["127.0.0.1:{p2}"], protocol: http2, load_balancer: round_robin }}
"#
        ),
    );
    let port = free_port();
    let _cp = control_plane(&file, port).await;
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        serde_json::json!({
            "xds_servers": [{ "server_uri": format!("127.0.0.1:{port}"), "channel_creds": [{ "type": "insecure" }],
                              "server_features": ["xds_v3"] }],
            "node": { "id": "grpcio-client", "cluster": "test", "locality": { "zone": "mesh" } }
        })
        .to_string(),
    )
    .unwrap();
    let out = tokio::process::Command::new(crate::support::peers_python())
        .arg(peers().join("grpc/grpc_peer.py"))
        .args([
            "client",
            "--target",
            "xds:///echo-svc",
            "-n",
            "200",
            "--timeout",
            "5",
        ])
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (
        counts["counts"]["grpc-x1"].as_u64().unwrap_or(0),
        counts["counts"]["grpc-x2"].as_u64().unwrap_or(0),
    );
    assert_eq!(a + b, 200, "{counts}");
    assert!(a > 60 && b > 60, "a 50/50 split: {counts}");
}

/// Envoy (a real one, `tests/peers/setup-envoy.sh ads`) as a client of
/// the development control plane: it takes the socket listener and the
/// clusters, routes by Host with the file's weights, and follows an edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn envoy_routes_by_the_development_control_plane() {
    envoy_client("GRPC").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn envoy_routes_by_the_development_control_plane_over_incremental_xds() {
    envoy_client("DELTA_GRPC").await;
}

async fn envoy_client(api: &str) {
    let (a, b) = (echo("cp-a").await, echo("cp-b").await);
    let mesh = crate::support::mesh(&split_file(a.addr(), b.addr(), 80, 20));
    let (cp, listen, admin) = (free_port(), free_port(), free_port());
    let listen_addr: std::net::SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    let (stop_cp, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = mesh.clone();
    tokio::spawn(async move {
        let _ = mesh::control_plane::DevControlPlane::new(served)
            .envoy_listener(listen_addr)
            .serve_with_shutdown(format!("127.0.0.1:{cp}").parse().unwrap(), async {
                let _ = stopped.await;
            })
            .await;
    });
    peer(
        "setup-envoy.sh",
        &[
            "ads",
            &cp.to_string(),
            &admin.to_string(),
            &format!("envoy-{api}"),
            api,
        ],
    );
    let _envoy = Stop(format!("envoy-ads-{admin}"));

    let client = Client::new(&Mesh::empty());
    let through_envoy = move |_| {
        http::Request::get(format!("http://127.0.0.1:{listen}/"))
            .header(http::header::HOST, "cp-svc")
    };
    // Envoy listens once it has the listener, its routes and clusters.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = run_with(&client, 1, 1, through_envoy).await;
        if t.ok == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy never routed: {t:?}\n{}",
            get_text(format!("http://127.0.0.1:{admin}/config_dump")).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = run_with(&client, 1000, 8, through_envoy).await;
    assert_eq!(t.ok, 1000, "{t:?}");
    assert!((t.share("cp-a") - 0.8).abs() < 0.05, "{t:?}");
    // Envoy took the fault filter's per-route config too.
    let faulty = move |_| {
        http::Request::get(format!("http://127.0.0.1:{listen}/fault"))
            .header(http::header::HOST, "cp-svc")
    };
    let t = run_with(&client, 20, 2, faulty).await;
    assert_eq!(t.errors.get("http_418").copied(), Some(20), "{t:?}");
    // Envoy ACKed what it got: its config dump holds our cluster.
    let dump = get_text(format!("http://127.0.0.1:{admin}/config_dump")).await;
    assert!(dump.contains("\"cp-b\""), "{dump}");

    // An edit reaches Envoy as a push.
    mesh.update(
        proxyless_core::config::Config::from_yaml(&split_file(a.addr(), b.addr(), 0, 100)).unwrap(),
        proxyless_core::snapshot::Source::Code,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = run_with(&client, 50, 4, through_envoy).await;
        if t.by_backend.get("cp-b") == Some(&50) {
            break;
        }
        assert!(Instant::now() < deadline, "Envoy never shifted: {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_cp.send(());
}

/// istio-agent serves xDS to proxyless workloads on a Unix socket and
/// writes a bootstrap naming it: the client takes that bootstrap as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_agent_style_bootstrap_over_a_unix_socket() {
    let (a, b) = (echo("cp-a").await, echo("cp-b").await);
    let served = crate::support::mesh(&split_file(a.addr(), b.addr(), 100, 0));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("XDS");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let cp = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(mesh::control_plane::DevControlPlane::new(served).into_service())
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let bootstrap = serde_json::json!({
        "xds_servers": [{ "server_uri": format!("unix://{}", socket.display()),
                          "channel_creds": [{ "type": "insecure" }],
                          "server_features": ["xds_v3"] }],
        "node": { "id": "sidecar~127.0.0.1~productpage-1.default~default.svc.cluster.local",
                  "cluster": "default" },
        "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"
    });
    let settings =
        XdsSettings::from_bootstrap(&bootstrap.to_string(), vec!["cp-svc".into()]).unwrap();
    let (mesh, xds) = Mesh::from_control_plane(settings).unwrap();
    tokio::time::timeout(Duration::from_secs(5), mesh.ready())
        .await
        .expect("a config over the Unix socket");
    let t = run(&Client::new(&mesh), "http://cp-svc/", 50, 4).await;
    assert_eq!(t.by_backend.get("cp-a"), Some(&50), "{t:?}");
    assert!(xds.status().acks.load(Ordering::Relaxed) >= 4);
    cp.abort();
}

/// Two echo backends (`xa`, `xb`) and the independent ADS server serving
/// `resources` for them (50/50), changed first by `edit`; a mesh subscribed
/// to `xds-svc` once its first snapshot is in. Returns the backends, the
/// mesh, its client, the resources as served, the server's admin port, and
/// what stops the server (and removes the file).
async fn served_by_the_independent_server(
    edit: impl FnOnce(&mut serde_json::Value),
) -> (
    (mesh::echo::EchoHandle, mesh::echo::EchoHandle),
    Mesh,
    proxyless_core::xds::XdsHandle,
    serde_json::Value,
    u16,
    (Stop, tempfile::TempDir),
) {
    let (a, b) = (echo("xa").await, echo("xb").await);
    let mut served = resources(
        a.addr().port(),
        b.addr().port(),
        50,
        50,
        serde_json::Value::Null,
    );
    edit(&mut served);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("xds.json");
    std::fs::write(&file, served.to_string()).unwrap();
    let (port, admin, stop) = start_peer(&file);
    let settings = XdsSettings::new(
        &format!("http://127.0.0.1:{port}"),
        "mesh-test-node",
        vec!["xds-svc".into()],
    );
    let (mesh, xds) = Mesh::from_control_plane(settings).unwrap();
    wait_for("the first snapshot", || mesh.snapshot().version() >= 1).await;
    ((a, b), mesh, xds, served, admin, (stop, dir))
}

/// What a control plane may send at its extremes: durations at protobuf's
/// maximum (and a retry backoff built from one), `num_retries` past what
/// is supported, and an endpoint with port 0. The durations are clamped,
/// the retries clamped with a warning, the port refused with a NACK like a
/// file's would be; the client keeps working and takes the next update.
/// (A huge backoff used to panic the client task silently, `num_retries: 20`
/// to NACK the route, and port 0 to be served.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn extremes_from_a_control_plane_are_clamped_or_refused_and_the_client_lives_on() {
    let ((a, b), mesh, xds, _, admin, _stop) = served_by_the_independent_server(|r| {
        let action = &mut r["routes"][0]["virtual_hosts"][0]["routes"][0]["route"];
        action["timeout"] = serde_json::json!("315576000000s");
        action["retry_policy"] = serde_json::json!({
            "retry_on": "5xx", "num_retries": 20, "per_try_timeout": "315576000000s",
            "retry_back_off": { "base_interval": "315576000000s" }
        });
    })
    .await;
    let (pa, pb) = (a.addr().port(), b.addr().port());
    let snap = mesh.snapshot();
    let route = &snap.config().services[0].routes[0];
    let max = proxyless_core::config::MAX_DURATION;
    assert_eq!(route.timeout, Some(max));
    let retry = route.retry.as_ref().unwrap();
    assert_eq!((retry.attempts, retry.backoff.base), (10, max));
    let warnings = xds.status().warnings.lock().unwrap().join("\n");
    assert!(warnings.contains("num_retries 20 clamped"), "{warnings}");
    let t = run(&Client::new(&mesh), "http://xds-svc/", 100, 4).await;
    assert_eq!(t.ok, 100, "{t:?}");

    // Port 0: refused as a file's would be.
    let mut zero = resources(pa, pb, 50, 50, serde_json::Value::Null);
    zero["endpoints"][1]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
        ["port_value"] = serde_json::json!(0);
    post_config(admin, &zero).await;
    wait_for("the NACK", || {
        xds.status().nacks.load(Ordering::Relaxed) >= 1
    })
    .await;
    let reason = xds.status().last_nack.lock().unwrap().clone().unwrap();
    assert!(reason.contains("1..=65535"), "{reason}");

    // Alive: the next good update is applied.
    shift_to_xb(admin, (pa, pb), &mesh).await;
    let t = run(&Client::new(&mesh), "http://xds-svc/", 100, 4).await;
    assert_eq!(t.by_backend.get("xb"), Some(&100), "{t:?}");
    assert_eq!(xds.status().failures.load(Ordering::Relaxed), 0);
    assert!(mesh.degraded().is_none());
}

/// A state-of-the-world snapshot without the service's listener, then the
/// good one again: the service is routed again within seconds. (The client
/// used to drop the clusters, keep the subscription the server knew, and
/// wait minutes for a cluster to change; its EDS unsubscription was an
/// empty list, a wildcard to the server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "interop"),
    ignore = "interop: needs third-party peers (bash tests/peers/install.sh; cargo test --workspace --features interop)"
)]
async fn a_listener_that_goes_and_comes_back_is_served_again() {
    let (_backends, mesh, _xds, good, admin, _stop) =
        served_by_the_independent_server(|_| {}).await;
    let client = Client::new(&mesh);
    assert_eq!(run(&client, "http://xds-svc/", 50, 2).await.ok, 50);

    let mut without = good.clone();
    without["listeners"] = serde_json::json!([]);
    post_config(admin, &without).await;
    wait_for("the service to go", || {
        mesh.snapshot().config().services.is_empty()
    })
    .await;

    post_config(admin, &good).await;
    wait_for("the service to come back", || {
        mesh.snapshot()
            .config()
            .services
            .first()
            .is_some_and(|s| s.name == "xds-svc")
            && mesh.snapshot().config().backends.len() == 2
    })
    .await;
    let t = run(&client, "http://xds-svc/", 100, 4).await;
    assert_eq!(t.ok, 100, "{t:?}");
    // The server never saw an empty subscription list from us.
    let (_, events) = crate::support::http_get(&format!("http://127.0.0.1:{admin}/events")).await;
    assert!(!events.contains("\"names\": []"), "{events}");
}

/// A RouteConfiguration over gRPC's default 4 MiB message limit (60,000
/// routes) is taken; one over the configured per-resource limit is NACKed
/// by name while the client keeps serving. (A 9.5 MB RouteConfiguration
/// used to put the client in a reconnect loop, with no NACK.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_configuration_over_4_mib_is_taken_and_one_over_the_limit_nacked() {
    use proxyless_core::config::{Config, PathMatch, Route, RouteMatch, WeightedBackend};
    let v1 = echo("v1").await;
    let mut cfg = Config::from_yaml(&format!(
        "services: [{{ name: big, routes: [{{ to: [v1] }}] }}]\nbackends: [{{ name: v1, endpoints: ['{}'] }}]",
        v1.addr()
    ))
    .unwrap();
    let fallback = cfg.services[0].routes.pop().unwrap();
    for i in 0..60_000 {
        cfg.services[0].routes.push(Route {
            name: Some(format!("route-{i}").into()),
            matches: vec![RouteMatch {
                path: Some(PathMatch::Exact(format!(
                    "/a/fairly/long/path/to/make/the/resource/large/{i:08}"
                ))),
                ..Default::default()
            }],
            to: vec![WeightedBackend {
                backend: "v1".into(),
                weight: 1,
            }],
            ..Default::default()
        });
    }
    cfg.services[0].routes.push(fallback);
    let resources = proxyless_core::xds::translate::from_config(&cfg);
    let size = resources
        .routes()
        .values()
        .map(|h| h.bytes().len())
        .max()
        .unwrap();
    assert!(
        size > 4 * 1024 * 1024,
        "the RouteConfiguration is only {size} bytes"
    );
    let served = Mesh::from_config(cfg).unwrap();
    let (addr, cp) = crate::support::dev_control_plane(&served);
    let settings = XdsSettings::new(&format!("http://{addr}"), "big", vec!["big".into()]);
    let (mesh, xds) = Mesh::from_control_plane(settings.clone()).unwrap();
    wait_for("the first snapshot", || mesh.snapshot().version() >= 1).await;
    assert_eq!(mesh.snapshot().config().services[0].routes.len(), 60_001);
    let t = run(
        &Client::new(&mesh),
        "http://big/a/fairly/long/path/to/make/the/resource/large/00000007",
        10,
        2,
    )
    .await;
    assert_eq!(t.ok, 10, "{t:?}");
    assert_eq!(xds.status().nacks.load(Ordering::Relaxed), 0);

    let mut small = settings;
    small.max_resource_bytes = 1024 * 1024;
    let (limited, xds) = Mesh::from_control_plane(small).unwrap();
    wait_for("the NACK", || {
        xds.status().nacks.load(Ordering::Relaxed) >= 1
    })
    .await;
    let reason = xds.status().last_nack.lock().unwrap().clone().unwrap();
    assert!(
        reason.contains("RouteConfiguration `") && reason.contains("MESH_XDS_MAX_RESOURCE_BYTES"),
        "{reason}"
    );
    assert!(limited.snapshot().config().services.is_empty());
    cp.abort();
}

/// A TCP relay on loopback to `port` that counts the bytes coming back and
/// cuts every connection through it when told (the control plane and the
/// client stay up: only the stream between them breaks).
struct Relay {
    port: u16,
    back: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    async fn to(port: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_port = listener.local_addr().unwrap().port();
        let back = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let counted = back.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
                    continue;
                };
                let (mut ir, mut iw) = inbound.into_split();
                let (mut or, mut ow) = outbound.into_split();
                let (counted, mut cuts) = (counted.clone(), cuts.clone());
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let up = tokio::io::copy(&mut ir, &mut ow);
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = or.read(&mut buf).await.unwrap_or(0);
                            if n == 0 || iw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            counted.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    };
                    // Dropping both halves of both sockets closes them.
                    tokio::select! {
                        _ = up => {}
                        () = down => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Self {
            port: relay_port,
            back,
            cut,
        }
    }

    /// The bytes the control plane sent since the last call.
    fn take(&self) -> u64 {
        self.back.swap(0, Ordering::Relaxed)
    }

    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

/// Waits until `relay` has carried nothing back for half a second (the
/// control plane has said what it had to); returns what it carried.
async fn quiet(relay: &Relay) -> u64 {
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = relay.take();
        total += n;
        if n == 0 {
            return total;
        }
        assert!(
            Instant::now() < deadline,
            "the control plane never went quiet"
        );
    }
}

/// A client of `n` services through `relay`: the bytes its first
/// subscription cost, and the bytes a reconnect cost with nothing changed.
async fn first_and_reconnect(api: Api, n: usize, file: &Path, relay: &Relay) -> (u64, u64) {
    let names: Vec<String> = (0..n).map(|i| format!("rc-{i}")).collect();
    let server = format!("http://127.0.0.1:{}", relay.port);
    let mut settings = XdsSettings::new(&server, "reconnect", names);
    settings.api = api;
    let (mesh, xds) = Mesh::from_control_plane(settings).unwrap();
    wait_for("every service", || {
        mesh.snapshot().config().services.len() == n
    })
    .await;
    let first = quiet(relay).await;
    let (version, acks) = (
        mesh.snapshot().version(),
        xds.status().acks.load(Ordering::Relaxed),
    );
    relay.cut();
    wait_for("the second stream", || {
        xds.status().connects.load(Ordering::Relaxed) >= 2
    })
    .await;
    // One answer per type, ACKed, on the new stream.
    wait_for("the answers on it", || {
        xds.status().acks.load(Ordering::Relaxed) >= acks + 4
    })
    .await;
    let again = quiet(relay).await;
    assert_eq!(mesh.snapshot().config().services.len(), n);
    if api == Api::Delta {
        assert_eq!(
            mesh.snapshot().version(),
            version,
            "nothing changed, nothing published"
        );
    }
    // The new stream carries edits.
    let text = std::fs::read_to_string(file).unwrap();
    write(file, &text.replace("timeout: 2s", "timeout: 3s"));
    wait_for("the edit", || {
        mesh.snapshot().config().services[0].routes[0].timeout == Some(Duration::from_secs(3))
    })
    .await;
    write(file, &text);
    wait_for("the edit undone", || {
        mesh.snapshot().config().services[0].routes[0].timeout == Some(Duration::from_secs(2))
    })
    .await;
    quiet(relay).await;
    (first, again)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnected_incremental_stream_is_sent_only_what_changed() {
    const N: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    let mut text = String::from("services:\n");
    for i in 0..N {
        text += &format!("  - {{ name: rc-{i}, routes: [{{ timeout: 2s, to: [rc-b{i}] }}] }}\n");
    }
    text += "backends:\n";
    for i in 0..N {
        text += &format!(
            "  - {{ name: rc-b{i}, endpoints: [\"127.0.0.1:{}\"] }}\n",
            1000 + i
        );
    }
    write(&file, &text);
    let port = free_port();
    let _cp = control_plane(&file, port).await;
    let relay = Relay::to(port).await;

    // Over incremental xDS the client tells the versions it holds, and the
    // control plane sends none of them again.
    let (first, again) = first_and_reconnect(Api::Delta, N, &file, &relay).await;
    eprintln!("incremental: {first} bytes at first, {again} on reconnecting");
    assert!(first > 20_000, "{N} services cost {first} bytes");
    assert!(
        again * 20 < first,
        "a reconnect cost {again} bytes of {first}"
    );

    // State of the world has no such thing: the same reconnect resends
    // everything (which shows the relay's count sees a resend).
    let (first, again) = first_and_reconnect(Api::Sotw, N, &file, &relay).await;
    eprintln!("state of the world: {first} bytes at first, {again} on reconnecting");
    assert!(
        again * 2 > first,
        "a reconnect cost {again} bytes of {first}"
    );
}

/// One service routed to one endpoint at `address`.
fn one_endpoint(address: &str) -> proxyless_core::config::Config {
    proxyless_core::config::Config::from_yaml(&format!(
        "services: [{{ name: busy-svc, routes: [{{ to: [busy-b] }}] }}]\n\
         backends: [{{ name: busy-b, endpoints: ['{address}'] }}]"
    ))
    .unwrap()
}

/// The client runs on a thread of its own: a config is taken and served
/// while the application's only thread is busy (a handler computing, or
/// blocking where it should not). On the application's runtime it would
/// wait for the thread, and a large config's translation would hold the
/// application up in turn.
#[test]
fn configs_are_taken_while_the_applications_only_thread_is_busy() {
    let cp_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let control = Mesh::from_config(one_endpoint("127.0.0.1:1")).unwrap();
    let port = free_port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    cp_runtime.spawn(mesh::control_plane::serve_with_shutdown(
        control.clone(),
        ([127, 0, 0, 1], port).into(),
        async {
            let _ = stopped.await;
        },
    ));
    let app = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    app.block_on(async {
        let settings = XdsSettings::new(
            &format!("http://127.0.0.1:{port}"),
            "busy-1",
            vec!["busy-svc".into()],
        );
        let (mesh, _client) = Mesh::from_control_plane(settings).unwrap();
        tokio::time::timeout(Duration::from_secs(10), mesh.ready())
            .await
            .expect("the first config");
        let address = |m: &Mesh| {
            m.snapshot().config().backends[0].endpoints[0]
                .address
                .clone()
        };
        assert_eq!(address(&mesh), "127.0.0.1:1");
        control
            .update(
                one_endpoint("127.0.0.1:2"),
                proxyless_core::snapshot::Source::Code,
            )
            .unwrap();
        // This runtime's only thread is kept busy: nothing else on it runs
        // until the loop ends.
        let deadline = Instant::now() + Duration::from_secs(10);
        while address(&mesh) != "127.0.0.1:2" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            address(&mesh),
            "127.0.0.1:2",
            "the client waited for the application's thread"
        );
    });
    let _ = stop.send(());
}

/// A mesh dropped while its stream is idle closes the stream at once: the
/// client's thread does not live on, connected, for a mesh nobody has.
#[tokio::test]
async fn a_dropped_mesh_closes_its_stream_to_the_control_plane() {
    use tokio::io::AsyncReadExt;
    // A control plane that accepts and never answers: the stream idles.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = XdsSettings::new(&format!("http://{addr}"), "dropped-1", vec!["x".into()]);
    let (mesh, _client) = Mesh::from_control_plane(settings).unwrap();
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the client connects")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("the client speaks first")
        .unwrap();
    assert!(n > 0);
    drop(mesh);
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the dropped mesh's client kept its stream open"
    );
}
