//! The xDS client (feature `xds`): one ADS stream (state of the world) to a
//! control plane, subscribing to the listeners of the services this
//! workload calls and, as they name them, their route configurations,
//! clusters and endpoint assignments; every complete, valid set of resources
//! is published as a new snapshot.
//!
//! Protocol: each response is ACKed with its version and nonce, or NACKed
//! with `error_detail` when a resource cannot be honoured (then the last good
//! snapshot keeps serving). A dropped stream is reopened with exponential
//! backoff and the subscriptions are resumed with the versions already
//! accepted; while the control plane is away the last snapshot serves.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_core::xds::XdsSettings;
//! let settings = XdsSettings::new("http://127.0.0.1:18000", "node-1", vec!["reviews".into()]);
//! let (mesh, xds) = mesh_core::Mesh::from_control_plane(settings)?;
//! # Ok(()) }
//! ```

pub mod server;
pub mod translate;

use crate::mesh::Mesh;
use crate::snapshot::Source;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc;
use translate::{Resources, type_url};

/// Where to get config from, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsSettings {
    /// The control plane, `http://host:port`.
    pub server: String,
    /// This node's id.
    pub node_id: String,
    /// This node's cluster (Istio puts the workload's namespace here).
    pub node_cluster: String,
    /// The listener names (service hosts) to subscribe to.
    pub services: Vec<String>,
}

impl XdsSettings {
    /// Settings for `server`, as node `node_id`, subscribing to `services`.
    pub fn new(server: &str, node_id: &str, services: Vec<String>) -> Self {
        Self {
            server: server.to_owned(),
            node_id: node_id.to_owned(),
            node_cluster: String::new(),
            services,
        }
    }

    /// From the environment: `MESH_CONTROL_PLANE` (`http://host:port`) or a
    /// gRPC-style bootstrap file (`MESH_XDS_BOOTSTRAP`, `GRPC_XDS_BOOTSTRAP`:
    /// `xds_servers[0].server_uri`, `node.id`, `node.cluster`); the services
    /// from `MESH_XDS_SERVICES` (comma-separated); the node id from
    /// `MESH_NODE_ID`, the bootstrap, or `MESH_SERVICE` and the host name.
    pub fn from_env() -> Result<Option<Self>, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let services: Vec<String> = var("MESH_XDS_SERVICES")
            .map(|s| {
                s.split(',')
                    .map(|x| x.trim().to_owned())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let default_id = || {
            let host = var("HOSTNAME").unwrap_or_else(|| "localhost".into());
            format!(
                "{}~{host}",
                var("MESH_SERVICE").unwrap_or_else(|| "mesh".into())
            )
        };
        if let Some(server) = var("MESH_CONTROL_PLANE") {
            let id = var("MESH_NODE_ID").unwrap_or_else(default_id);
            return Ok(Some(Self::new(&server, &id, services)));
        }
        let Some(path) = var("MESH_XDS_BOOTSTRAP").or_else(|| var("GRPC_XDS_BOOTSTRAP")) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let mut s = Self::from_bootstrap(&text, services).map_err(|e| format!("{path}: {e}"))?;
        if s.node_id.is_empty() {
            s.node_id = default_id();
        }
        if let Some(id) = var("MESH_NODE_ID") {
            s.node_id = id;
        }
        Ok(Some(s))
    }

    /// From the text of a gRPC xDS bootstrap file (the format istio-agent
    /// and Traffic Director's generator write): `xds_servers[0].server_uri`
    /// with its `channel_creds`, `node.id` (empty if absent) and
    /// `node.cluster`. Refuses what this client cannot honour instead of
    /// connecting somewhere else: a Unix-socket server and credentials
    /// other than `insecure`.
    pub fn from_bootstrap(text: &str, services: Vec<String>) -> Result<Self, String> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let server = &json["xds_servers"][0];
        let uri = server["server_uri"]
            .as_str()
            .ok_or("no xds_servers[0].server_uri")?;
        if uri.starts_with("unix:") {
            return Err(format!(
                "xds_servers[0].server_uri `{uri}`: Unix-socket control planes (istio-agent's \
                 proxy) are not supported; point MESH_CONTROL_PLANE at the control plane's \
                 plaintext xDS port (istiod: 15010)"
            ));
        }
        if let Some(creds) = server["channel_creds"].as_array()
            && !creds.is_empty()
            && !creds.iter().any(|c| c["type"] == "insecure")
        {
            let kinds: Vec<&str> = creds.iter().filter_map(|c| c["type"].as_str()).collect();
            return Err(format!(
                "xds_servers[0].channel_creds {kinds:?}: only `insecure` is supported"
            ));
        }
        let server = if uri.contains("://") {
            uri.to_owned()
        } else {
            format!("http://{uri}")
        };
        let id = json["node"]["id"].as_str().unwrap_or_default();
        let mut s = Self::new(&server, id, services);
        s.node_cluster = json["node"]["cluster"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Ok(s)
    }
}

/// The metrics the xDS client records (through the `metrics` facade, to
/// whatever recorder the application installed), each labelled with
/// `control_plane`, the server's address.
pub mod metric_names {
    /// Counter: responses applied, by `type` (`Listener`, `Cluster`, ...)
    /// and `result` (`ack`, `nack`).
    pub const RESPONSES: &str = "mesh_xds_responses_total";
    /// Counter: streams opened (reconnects included).
    pub const STREAMS: &str = "mesh_xds_streams_total";
    /// Gauge: 1 while a stream is open, else 0.
    pub const CONNECTED: &str = "mesh_xds_connected";
}

/// Describes the xDS metrics to the installed recorder.
pub(crate) fn describe_metrics() {
    use metrics::Unit;
    metrics::describe_counter!(
        metric_names::RESPONSES,
        Unit::Count,
        "xDS responses from the control plane, by resource type and result (ack, nack)."
    );
    metrics::describe_counter!(
        metric_names::STREAMS,
        Unit::Count,
        "xDS streams opened to the control plane, reconnects included."
    );
    metrics::describe_gauge!(
        metric_names::CONNECTED,
        Unit::Count,
        "Whether an xDS stream to the control plane is open (1) or not (0)."
    );
}

/// What the client has done, for metrics, the admin server and tests.
#[derive(Debug, Default)]
pub struct XdsStatus {
    /// Whether a stream is open now.
    pub connected: AtomicBool,
    /// Responses ACKed.
    pub acks: AtomicU64,
    /// Responses NACKed.
    pub nacks: AtomicU64,
    /// Streams opened (the first one included).
    pub connects: AtomicU64,
    /// The last NACK's reason.
    pub last_nack: Mutex<Option<String>>,
    /// Fields ignored in the resources, as warnings.
    pub warnings: Mutex<Vec<String>>,
}

/// A running xDS client; dropping it stops nothing (the task ends with the
/// runtime).
#[derive(Debug, Clone)]
pub struct XdsHandle {
    status: Arc<XdsStatus>,
}

impl XdsHandle {
    /// The client's counters.
    pub fn status(&self) -> &XdsStatus {
        &self.status
    }
}

impl Mesh {
    /// A mesh fed by a control plane. It starts empty (not ready) and
    /// serves each complete, valid set of resources as it arrives. Needs a
    /// tokio runtime.
    pub fn from_control_plane(settings: XdsSettings) -> Result<(Mesh, XdsHandle), String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the xDS client needs a tokio runtime".to_owned())?;
        let mesh = Mesh::waiting(Source::Xds(settings.server.clone()));
        let status = Arc::new(XdsStatus::default());
        runtime.spawn(run(mesh.downgrade_xds(), settings, status.clone()));
        Ok((mesh, XdsHandle { status }))
    }
}

/// Per type URL: what we asked for and what we accepted.
#[derive(Debug, Default, Clone)]
struct Subscription {
    names: BTreeSet<String>,
    version: String,
    nonce: String,
}

async fn run(
    mesh: std::sync::Weak<crate::mesh::Inner>,
    settings: XdsSettings,
    status: Arc<XdsStatus>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut state = State::new(&settings);
    loop {
        let Some(m) = Mesh::upgrade_xds(&mesh) else {
            return;
        };
        drop(m);
        let opened = stream(&mesh, &settings, &status, &mut state).await;
        status.connected.store(false, Ordering::Relaxed);
        metrics::gauge!(metric_names::CONNECTED, "control_plane" => settings.server.clone())
            .set(0.0);
        match opened {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(server = %settings.server, "xDS stream ended: {e}; retrying in {backoff:?}")
            }
        }
        let jitter = backoff.mul_f64(rand_unit() * 0.5);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A number in [0, 1) without a random-number crate in mesh-core.
fn rand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    f64::from(nanos % 1000) / 1000.0
}

/// What survives reconnects: subscriptions with accepted versions, and the
/// resources accepted so far.
struct State {
    subs: BTreeMap<&'static str, Subscription>,
    resources: Resources,
    services: Vec<String>,
    node: Node,
    first: bool,
    /// The control plane's address, the metrics' label.
    server: String,
}

impl State {
    fn new(settings: &XdsSettings) -> Self {
        let mut subs = BTreeMap::new();
        subs.insert(
            type_url::LISTENER,
            Subscription {
                names: settings.services.iter().cloned().collect(),
                ..Default::default()
            },
        );
        Self {
            subs,
            resources: Resources::default(),
            services: settings.services.clone(),
            node: Node {
                id: settings.node_id.clone(),
                cluster: settings.node_cluster.clone(),
                user_agent_name: "mesh".into(),
                ..Default::default()
            },
            first: true,
            server: settings.server.clone(),
        }
    }

    fn request(&mut self, type_url: &'static str, error: Option<String>) -> DiscoveryRequest {
        let sub = self.subs.get(type_url).cloned().unwrap_or_default();
        let node = if std::mem::take(&mut self.first) {
            Some(self.node.clone())
        } else {
            None
        };
        DiscoveryRequest {
            version_info: sub.version,
            node,
            resource_names: sub.names.into_iter().collect(),
            type_url: type_url.to_owned(),
            response_nonce: sub.nonce,
            error_detail: error.map(|message| Status {
                code: 3, // INVALID_ARGUMENT
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }
}

async fn stream(
    mesh: &std::sync::Weak<crate::mesh::Inner>,
    settings: &XdsSettings,
    status: &XdsStatus,
    state: &mut State,
) -> Result<(), String> {
    let mut client = AggregatedDiscoveryServiceClient::connect(settings.server.clone())
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (tx, rx) = mpsc::channel::<DiscoveryRequest>(16);
    state.first = true;
    // Resume every subscription, with the versions already accepted.
    let types: Vec<&'static str> = state.subs.keys().copied().collect();
    for t in types {
        if t == type_url::LISTENER || !state.subs[t].names.is_empty() {
            let req = state.request(t, None);
            tx.send(req).await.map_err(|e| e.to_string())?;
        }
    }
    let mut responses = client
        .stream_aggregated_resources(tokio_stream_from(rx))
        .await
        .map_err(|e| format!("ADS refused: {e}"))?
        .into_inner();
    status.connected.store(true, Ordering::Relaxed);
    status.connects.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(metric_names::STREAMS, "control_plane" => settings.server.clone())
        .increment(1);
    metrics::gauge!(metric_names::CONNECTED, "control_plane" => settings.server.clone()).set(1.0);
    tracing::info!(server = %settings.server, node = %settings.node_id, "xDS stream open");
    while let Some(resp) = responses
        .message()
        .await
        .map_err(|e| format!("stream error: {e}"))?
    {
        let Some(m) = Mesh::upgrade_xds(mesh) else {
            return Ok(());
        };
        for req in handle(&m, status, state, resp) {
            tx.send(req).await.map_err(|e| e.to_string())?;
        }
    }
    Err("the control plane closed the stream".into())
}

/// Applies one response; returns the requests to send (an ACK or NACK, and
/// subscription changes).
fn handle(
    mesh: &Mesh,
    status: &XdsStatus,
    state: &mut State,
    resp: DiscoveryResponse,
) -> Vec<DiscoveryRequest> {
    let Some(t) = [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ]
    .into_iter()
    .find(|t| *t == resp.type_url) else {
        tracing::warn!(type_url = %resp.type_url, "xDS response of a type never asked for, ignored");
        return Vec::new();
    };
    let previous = state.resources.clone();
    let applied = apply(&mut state.resources, t, &resp);
    let mut warnings = Vec::new();
    let outcome = applied.and_then(|()| {
        translate::to_config(&state.resources, &state.services, &mut warnings).and_then(|cfg| {
            match cfg {
                // An ACK for resources that change nothing (a re-sent
                // snapshot, a reordered list) keeps the running snapshot
                // and its connections as they are.
                Some(cfg) if cfg == *mesh.snapshot().config() => Ok(()),
                Some(cfg) => mesh
                    .update(
                        cfg,
                        Source::Xds(format!("version {} of {t}", resp.version_info)),
                    )
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        })
    });
    if !warnings.is_empty() {
        let mut w = status
            .warnings
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for x in &warnings {
            if !w.contains(x) {
                tracing::warn!("xDS: {x}");
                w.push(x.clone());
            }
        }
    }
    let mut out = Vec::new();
    let result = if outcome.is_ok() { "ack" } else { "nack" };
    let short = t.rsplit('.').next().unwrap_or(t);
    metrics::counter!(metric_names::RESPONSES, "control_plane" => state.server.clone(), "type" => short, "result" => result)
        .increment(1);
    let sub = state.subs.entry(t).or_default();
    sub.nonce = resp.nonce.clone();
    match outcome {
        Ok(()) => {
            sub.version = resp.version_info.clone();
            status.acks.fetch_add(1, Ordering::Relaxed);
            out.push(state.request(t, None));
        }
        Err(reason) => {
            state.resources = previous;
            status.nacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(type_url = t, version = %resp.version_info, "xDS response NACKed: {reason}");
            *status
                .last_nack
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(reason.clone());
            out.push(state.request(t, Some(reason)));
        }
    }
    // Follow what the accepted resources name.
    let wanted = translate::wanted(&state.resources);
    for (t, names) in [
        (type_url::ROUTE, wanted.routes),
        (type_url::CLUSTER, wanted.clusters),
        (type_url::ENDPOINTS, wanted.endpoints),
    ] {
        let sub = state.subs.entry(t).or_default();
        if sub.names != names {
            sub.names = names;
            out.push(state.request(t, None));
        }
    }
    out
}

/// Replaces the held resources of type `t` with the response's (state of
/// the world: a response carries every subscribed resource of its type).
fn apply(r: &mut Resources, t: &str, resp: &DiscoveryResponse) -> Result<(), String> {
    macro_rules! decode_all {
        ($ty:ty, $map:expr, $name:ident) => {{
            let mut fresh = BTreeMap::new();
            for any in &resp.resources {
                let v = <$ty>::decode(any.value.as_slice())
                    .map_err(|e| format!("cannot decode a {}: {e}", any.type_url))?;
                fresh.insert(v.$name.clone(), v);
            }
            $map = fresh;
        }};
    }
    match t {
        type_url::LISTENER => decode_all!(
            envoy_types::pb::envoy::config::listener::v3::Listener,
            r.listeners,
            name
        ),
        type_url::ROUTE => decode_all!(
            envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
            r.routes,
            name
        ),
        type_url::CLUSTER => decode_all!(
            envoy_types::pb::envoy::config::cluster::v3::Cluster,
            r.clusters,
            name
        ),
        _ => decode_all!(
            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
            r.endpoints,
            cluster_name
        ),
    }
    Ok(())
}

/// A `Stream` of the requests to send, from a channel.
fn tokio_stream_from(
    mut rx: mpsc::Receiver<DiscoveryRequest>,
) -> impl futures_core_stream::Stream<Item = DiscoveryRequest> {
    futures_core_stream::from_fn(move |cx| rx.poll_recv(cx))
}

/// A minimal `Stream` from a poll function (mesh-core takes no stream crate).
mod futures_core_stream {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    pub(super) use tonic::codegen::tokio_stream::Stream;

    pub(super) struct FromFn<F>(F);

    pub(super) fn from_fn<T, F>(f: F) -> FromFn<F>
    where
        F: FnMut(&mut Context<'_>) -> Poll<Option<T>>,
    {
        FromFn(f)
    }

    impl<T, F> Stream for FromFn<F>
    where
        F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin,
    {
        type Item = T;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            (self.get_mut().0)(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::XdsSettings;

    #[test]
    fn a_grpc_bootstrap_gives_server_node_and_cluster() {
        let s = XdsSettings::from_bootstrap(
            r#"{"xds_servers": [{"server_uri": "istiod.istio-system.svc:15010",
                 "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
               "node": {"id": "sidecar~10.0.0.7~reviews-1.default~default.svc.cluster.local",
                        "cluster": "default"}}"#,
            vec!["reviews".into()],
        )
        .unwrap();
        assert_eq!(s.server, "http://istiod.istio-system.svc:15010");
        assert_eq!(
            s.node_id,
            "sidecar~10.0.0.7~reviews-1.default~default.svc.cluster.local"
        );
        assert_eq!(s.node_cluster, "default");
        assert_eq!(s.services, ["reviews"]);
    }

    #[test]
    fn what_the_client_cannot_honour_is_refused_by_name() {
        let unix = XdsSettings::from_bootstrap(
            r#"{"xds_servers": [{"server_uri": "unix:///etc/istio/proxy/XDS"}]}"#,
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            unix.contains("unix:///etc/istio/proxy/XDS") && unix.contains("Unix-socket"),
            "{unix}"
        );
        let tls = XdsSettings::from_bootstrap(
            r#"{"xds_servers": [{"server_uri": "cp:443", "channel_creds": [{"type": "google_default"}]}]}"#,
            Vec::new(),
        )
        .unwrap_err();
        assert!(
            tls.contains("google_default") && tls.contains("insecure"),
            "{tls}"
        );
        let none = XdsSettings::from_bootstrap(r#"{"node": {"id": "x"}}"#, Vec::new()).unwrap_err();
        assert!(none.contains("server_uri"), "{none}");
        assert!(XdsSettings::from_bootstrap("{", Vec::new()).is_err());
    }
}
