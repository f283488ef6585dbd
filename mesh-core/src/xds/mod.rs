//! The xDS client (feature `xds`): one ADS stream to a control plane, in
//! either variant of the protocol ([`Api`]: state of the world or
//! incremental), subscribing to the listeners of the services this workload
//! calls and, as they name them, their route configurations, clusters and
//! endpoint assignments; every valid set of resources is published as a new
//! snapshot. Listeners are subscribed to on demand: the first request to a
//! host no service claims asks the control plane for that host's listener
//! and waits (bounded) for the answer, the way gRPC's proxyless channels
//! do; names the held resources stop referring to are unsubscribed.
//!
//! Protocol: each response is ACKed with its version and nonce, or NACKed
//! with `error_detail` when a resource cannot be honoured (then the last good
//! snapshot keeps serving). A dropped stream is reopened with exponential
//! backoff and the subscriptions are resumed with the versions already
//! accepted (incremental: with each held resource's version, so only what
//! changed is sent again); while the control plane is away the last
//! snapshot serves.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use proxyless_core::xds::XdsSettings;
//! let settings = XdsSettings::new("http://127.0.0.1:18000", "node-1", vec!["reviews".into()]);
//! let (mesh, xds) = proxyless_core::Mesh::from_control_plane(settings)?;
//! # Ok(()) }
//! ```

mod client;
mod error;
mod settings;
pub use error::XdsError;
pub use settings::{
    Api, Inbound, MAX_MESSAGE_BYTES, MAX_RESOURCE_BYTES, MAX_STATE_WAIT, ON_DEMAND_WAIT,
    STATE_WAIT, SettingsError, XdsSettings,
};

pub mod translate;

use crate::mesh::Mesh;
use crate::snapshot::Source;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

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
    /// Gauge: 1 while the last known good config from disk serves, before
    /// the control plane's replaces it.
    pub const STALE: &str = "mesh_xds_stale";
    /// Counter: distinct fields or filters the client accepted but does not
    /// honour (each named once in the log and in `/xds`'s `warnings`).
    pub const IGNORED: &str = "mesh_xds_ignored_fields_total";
    /// Gauge: when a response was last ACKed (Unix seconds); the serving
    /// config's staleness is `time() - this`.
    pub const LAST_ACK: &str = "mesh_xds_last_ack_timestamp_seconds";
    /// Counter: times the client's stream task failed (panicked) and was
    /// restarted.
    pub const FAILURES: &str = "mesh_xds_client_failures_total";
    /// Histogram: how long applying one response took, from its arrival to
    /// the new config serving (decoding, translation, validation,
    /// compilation), by `type`.
    pub const APPLY: &str = "mesh_xds_apply_duration_seconds";
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
    metrics::describe_counter!(
        metric_names::IGNORED,
        Unit::Count,
        "Distinct xDS fields or filters accepted but not honoured; each is named in the log and at /xds."
    );
    metrics::describe_gauge!(
        metric_names::LAST_ACK,
        Unit::Seconds,
        "When the xDS client last ACKed a response, in Unix seconds; staleness is time() minus this."
    );
    metrics::describe_counter!(
        metric_names::FAILURES,
        Unit::Count,
        "Times the xDS client's stream task failed and was restarted (the last good config kept serving)."
    );
    metrics::describe_histogram!(
        metric_names::APPLY,
        Unit::Seconds,
        "How long applying one xDS response took, from its arrival to the new config serving."
    );
    metrics::describe_gauge!(
        metric_names::CONNECTED,
        Unit::Count,
        "Whether an xDS stream to the control plane is open (1) or not (0)."
    );
    metrics::describe_gauge!(
        metric_names::STALE,
        Unit::Count,
        "1 while the last known good config from disk serves, before the control plane's replaces it."
    );
}

/// What the client has done, for metrics, the admin server and tests.
#[derive(Debug, Default)]
pub struct XdsStatus {
    /// Whether a stream is open now.
    pub connected: AtomicBool,
    /// Serving the last known good config from disk, not from the control
    /// plane: what it is (the file, when it was written), until the
    /// control plane's first config replaces it.
    pub stale: Mutex<Option<String>>,
    /// The last known good file's last failure to be written or read.
    pub state_error: Mutex<Option<String>>,
    /// Whether the control plane's own config has been published; held
    /// while either the client or the last known good publishes, so the
    /// file never replaces what the control plane sent.
    pub live: Mutex<bool>,
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
    /// The control plane and the variant spoken.
    pub server: String,
    /// The variant spoken.
    pub api: Api,
    /// What is subscribed to and held, by resource type (`Listener`, ...).
    pub resources: Mutex<std::collections::BTreeMap<&'static str, TypeStatus>>,
    /// When a response was last ACKed.
    pub last_ack: Mutex<Option<std::time::SystemTime>>,
    /// Since when no stream has been open (`None` while connected).
    pub disconnected_since: Mutex<Option<std::time::SystemTime>>,
    /// Times the client's stream task failed (panicked) and was restarted.
    pub failures: AtomicU64,
    /// The last failure, until a response is ACKed again after it.
    pub last_failure: Mutex<Option<String>>,
    /// How long applying the last response took (from its arrival to the
    /// new config serving, or to its NACK), in microseconds.
    pub last_apply_micros: AtomicU64,
}

/// One resource type's subscription, for the admin server.
#[derive(Debug, Default, Clone)]
pub struct TypeStatus {
    /// The names subscribed to (the client's own set, shared).
    pub subscribed: Arc<std::collections::BTreeSet<crate::config::Name>>,
    /// How many of them are held.
    pub held: usize,
    /// The last version accepted (state of the world: the response's;
    /// incremental: the control plane's system version, else the nonce).
    pub version: String,
}

impl XdsStatus {
    /// What the admin server shows at `/xds`.
    pub fn to_json(&self) -> serde_json::Value {
        fn lock<T: Clone>(m: &Mutex<T>) -> T {
            m.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
        let secs = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let ago = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64())
        };
        let types: serde_json::Map<String, serde_json::Value> = lock(&self.resources)
            .into_iter()
            .map(|(t, s)| {
                (
                    t.to_owned(),
                    serde_json::json!({
                        "subscribed": s.subscribed.iter().collect::<Vec<_>>(),
                        "held": s.held,
                        "version": s.version,
                    }),
                )
            })
            .collect();
        let (last_ack, disconnected) = (lock(&self.last_ack), lock(&self.disconnected_since));
        serde_json::json!({
            "control_plane": self.server,
            "api": match self.api { Api::Sotw => "sotw", Api::Delta => "delta" },
            "connected": self.connected.load(std::sync::atomic::Ordering::Relaxed),
            "disconnected_since_unix_seconds": secs(disconnected),
            "disconnected_for_seconds": ago(disconnected),
            "streams_opened": self.connects.load(std::sync::atomic::Ordering::Relaxed),
            "acks": self.acks.load(std::sync::atomic::Ordering::Relaxed),
            "nacks": self.nacks.load(std::sync::atomic::Ordering::Relaxed),
            "last_ack_unix_seconds": secs(last_ack),
            "last_ack_seconds_ago": ago(last_ack),
            "last_nack": lock(&self.last_nack),
            "failures": self.failures.load(std::sync::atomic::Ordering::Relaxed),
            "degraded": lock(&self.last_failure),
            "stale": lock(&self.stale),
            "state_error": lock(&self.state_error),
            "warnings": lock(&self.warnings),
            "resources": types,
        })
    }
}

/// The xDS client as the mesh's config source: its status, health and
/// on-demand subscriptions.
#[derive(Debug)]
struct XdsSource {
    status: Arc<XdsStatus>,
    demand: Option<Arc<client::OnDemand>>,
}

impl crate::mesh::ConfigSource for XdsSource {
    fn demand(&self, authority: &str) -> Option<crate::mesh::DemandWait> {
        self.demand.as_ref()?.want(authority)
    }

    fn status(&self) -> Option<serde_json::Value> {
        Some(self.status.to_json())
    }

    fn degraded(&self) -> Option<String> {
        let failure = self
            .status
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        failure.or_else(|| {
            self.status
                .stale
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }
}

/// A running xDS client; dropping it stops nothing (the client runs as
/// long as its mesh).
#[derive(Debug, Clone)]
pub struct XdsHandle {
    status: Arc<XdsStatus>,
    commands: mpsc::UnboundedSender<client::Command>,
}

impl XdsHandle {
    /// The client's counters.
    pub fn status(&self) -> &XdsStatus {
        &self.status
    }

    /// Subscribes to the listener `name` (a service host, as the control
    /// plane names it) now, before anything calls it.
    pub fn subscribe(&self, name: &str) {
        let _ = self
            .commands
            .send(client::Command::Subscribe(name.to_owned()));
    }

    /// Drops the listener `name` and whatever only it referred to; its
    /// service leaves the running config. A later call subscribes again.
    pub fn unsubscribe(&self, name: &str) {
        let _ = self
            .commands
            .send(client::Command::Unsubscribe(name.to_owned()));
    }
}

impl Mesh {
    /// Evaluates what a second control plane serves as this mesh's
    /// candidate config ([`Mesh::set_candidate`], shadow evaluation): a
    /// client of `settings.server` runs beside this mesh's own source, and
    /// each config it would serve is loaded as the candidate, never served.
    /// While its config is the same (an endpoint update), the report goes
    /// on counting. Only the services named in `settings.services` are
    /// asked for (hosts this mesh fetches on demand are not). Needs a
    /// tokio runtime; the client stops once this mesh is dropped.
    /// `MESH_SHADOW_CONTROL_PLANE` does this in [`Mesh::from_env`]
    /// (see [`XdsSettings::candidate_from_env`]).
    pub fn candidate_from_control_plane(
        &self,
        settings: XdsSettings,
    ) -> Result<XdsHandle, SettingsError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SettingsError::NoRuntime)?;
        let server = settings.server.clone();
        let (candidate, handle) = Mesh::from_control_plane(settings)?;
        let weak = self.downgrade();
        let keep = handle.clone();
        runtime.spawn(async move {
            // Holds the candidate's mesh (its client holds it weakly).
            let _client = keep;
            let mut configs = candidate.subscribe();
            let mut next = Some(configs.current());
            loop {
                let Some(mesh) = Mesh::upgrade(&weak) else {
                    return;
                };
                if let Some(snap) = next.take().filter(|s| s.version() > 0) {
                    let config = snap.config().clone();
                    // A refusal is logged by `set_candidate`.
                    let _ = mesh.set_candidate(config, Source::Xds(server.clone()));
                }
                drop(mesh);
                // Woken now and then to see whether this mesh is gone.
                match tokio::time::timeout(std::time::Duration::from_secs(1), configs.next()).await
                {
                    Ok(Some(snap)) => next = Some(snap),
                    Ok(None) => return,
                    Err(_) => {}
                }
            }
        });
        Ok(handle)
    }

    /// A mesh fed by a control plane. It is ready once the services in
    /// `settings.services` have arrived (or the control plane said it has
    /// none of them); with none listed it is ready at once and fetches each
    /// host when first called.
    ///
    /// Needs a tokio runtime. The client itself runs on a thread of its
    /// own (`mesh-xds`), so that translating a large config never holds up
    /// the application's threads; it stops when the mesh is dropped.
    pub fn from_control_plane(settings: XdsSettings) -> Result<(Mesh, XdsHandle), SettingsError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SettingsError::NoRuntime)?;
        let mesh = Mesh::waiting(Source::Xds(settings.server.clone()));
        // The bootstrap's certificate providers, each an identity source
        // that clusters and listeners name.
        for (name, provider) in &settings.certificate_providers {
            mesh.set_identity_source(name, provider.start(name));
        }
        // The node's locality is the workload's: its clients prefer
        // endpoints near it.
        if let Some([region, zone, subzone]) = &settings.node_locality {
            mesh.set_locality(Some(crate::config::Locality::new(region, zone, subzone)));
        }
        let status = Arc::new(XdsStatus {
            server: settings.server.clone(),
            api: settings.api,
            disconnected_since: Mutex::new(Some(std::time::SystemTime::now())),
            ..XdsStatus::default()
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let demand = Arc::new(client::OnDemand::new(
            tx.clone(),
            settings.on_demand.unwrap_or_default(),
        ));
        let source = XdsSource {
            status: status.clone(),
            demand: settings.on_demand.is_some().then(|| demand.clone()),
        };
        // A new mesh: nothing is attached yet.
        let _ = mesh.attach_source(Arc::new(source));
        let mut state = client::State::new(&settings, demand);
        state.publish_if_empty(&mesh);
        if let Some(sds) = &settings.sds_server {
            let names = state.secrets_to();
            runtime.spawn(client::sds::run(
                mesh.downgrade_xds(),
                sds.clone(),
                client::node_of(&settings),
                names,
            ));
        }
        if let Some(path) = settings.state_file() {
            let (saver, configs) = tokio::sync::watch::channel(None);
            state.save_to(saver);
            runtime.spawn(client::save_loop(
                configs,
                path.clone(),
                Arc::downgrade(&status),
            ));
            runtime.spawn(client::restore(
                mesh.downgrade_xds(),
                status.clone(),
                settings.clone(),
                path,
            ));
        }
        // What a config starts (a DNS follower) runs on the application's
        // runtime, not the client's thread.
        state.run_for(runtime.clone());
        let run = client::run(mesh.downgrade_xds(), settings, status.clone(), state, rx);
        // The mesh's snapshots end with the mesh: the client stops then,
        // even with its stream idle.
        let mut snapshots = mesh.subscribe();
        client::start(&runtime, async move {
            let gone = async { while snapshots.next().await.is_some() {} };
            tokio::select! {
                () = run => {}
                () = gone => {}
            }
        });
        Ok((
            mesh,
            XdsHandle {
                status,
                commands: tx,
            },
        ))
    }
}

/// A number in [0, 1), random enough for backoff jitter, without a
/// random-number crate in mesh-core: std's randomly seeded `RandomState`.
fn rand_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A `Stream` of the messages sent into a channel.
fn stream_from<T>(
    rx: mpsc::Receiver<T>,
) -> tonic::codegen::tokio_stream::wrappers::ReceiverStream<T> {
    tonic::codegen::tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::{XdsSettings, client};

    #[test]
    fn a_grpc_bootstrap_gives_server_node_and_cluster() {
        let s = XdsSettings::from_bootstrap(
            r#"{"xds_servers": [{"server_uri": "istiod.istio-system.svc:15010",
                 "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
               "node": {"id": "sidecar~10.0.0.7~reviews-1.default~default.svc.cluster.local",
                        "cluster": "default",
                        "locality": {"region": "us-east1", "zone": "us-east1-b"},
                        "metadata": {"GENERATOR": "grpc", "ISTIO_VERSION": "1.24.0", "LABELS": {"app": "reviews"}}},
               "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"}"#,
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
        assert_eq!(
            s.server_listener_template.as_deref(),
            Some("xds.istio.io/grpc/lds/inbound/%s")
        );
        assert_eq!(
            s.node_metadata,
            Some(
                serde_json::json!({"GENERATOR": "grpc", "ISTIO_VERSION": "1.24.0", "LABELS": {"app": "reviews"}})
            )
        );
        assert_eq!(
            s.node_locality,
            Some([
                "us-east1".to_owned(),
                "us-east1-b".to_owned(),
                String::new()
            ])
        );
        // ... and they travel in the node the client sends.
        let node = client::node_of(&s);
        assert_eq!(node.id, s.node_id);
        let meta = node.metadata.unwrap();
        let generator = &meta.fields["GENERATOR"];
        assert_eq!(
            generator.kind,
            Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                "grpc".into()
            ))
        );
        assert!(meta.fields.contains_key("LABELS"));
        assert_eq!(node.locality.unwrap().zone, "us-east1-b");
    }

    #[test]
    fn what_the_client_cannot_honour_is_refused_by_name_and_a_unix_socket_is_not() {
        // istio-agent's own socket is taken as it is.
        let unix = XdsSettings::from_bootstrap(
            r#"{"xds_servers": [{"server_uri": "unix:///etc/istio/proxy/XDS",
                 "channel_creds": [{"type": "insecure"}]}]}"#,
            Vec::new(),
        )
        .unwrap();
        assert_eq!(unix.server, "unix:///etc/istio/proxy/XDS");
        let tls = XdsSettings::from_bootstrap(
            r#"{"xds_servers": [{"server_uri": "cp:443", "channel_creds": [{"type": "google_default"}]}]}"#,
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            tls.contains("google_default") && tls.contains("insecure"),
            "{tls}"
        );
        let https = XdsSettings::from_bootstrap(
            r#"{"xds_servers": [{"server_uri": "https://istiod.istio-system.svc:15012"}]}"#,
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            https.contains("server_uri") && https.contains("TLS") && https.contains("15012"),
            "{https}"
        );
        let none = XdsSettings::from_bootstrap(r#"{"node": {"id": "x"}}"#, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(none.contains("server_uri"), "{none}");
        assert!(XdsSettings::from_bootstrap("{", Vec::new()).is_err());
    }

    #[test]
    fn an_istio_bootstraps_certificate_providers_are_read_and_bad_ones_refused_by_name() {
        let with = |providers: &str| {
            XdsSettings::from_bootstrap(
                &format!(
                    r#"{{"xds_servers": [{{"server_uri": "unix:///etc/istio/proxy/XDS"}}],
                       "certificate_providers": {providers}}}"#
                ),
                Vec::new(),
            )
        };
        let s = with(
            r#"{"default": {"plugin_name": "file_watcher", "config": {
                  "certificate_file": "/var/lib/istio/data/cert-chain.pem",
                  "private_key_file": "/var/lib/istio/data/key.pem",
                  "ca_certificate_file": "/var/lib/istio/data/root-cert.pem",
                  "refresh_interval": "900s"}},
                "roots": {"plugin_name": "file_watcher", "config": {"ca_certificate_file": "/ca.pem"}}}"#,
        )
        .unwrap();
        let default = &s.certificate_providers["default"];
        assert_eq!(
            default.certificate_file.as_deref(),
            Some(std::path::Path::new("/var/lib/istio/data/cert-chain.pem"))
        );
        assert_eq!(
            default.refresh_interval,
            std::time::Duration::from_secs(900)
        );
        let roots = &s.certificate_providers["roots"];
        assert_eq!(roots.certificate_file, None);
        assert_eq!(
            roots.refresh_interval,
            crate::identity::provider::DEFAULT_REFRESH
        );
        for (bad, says) in [
            (
                r#"{"x": {"plugin_name": "meshca", "config": {}}}"#,
                "plugin `meshca`",
            ),
            (
                r#"{"x": {"plugin_name": "file_watcher", "config": {"certificate_file": "/c"}}}"#,
                "go together",
            ),
            (
                r#"{"x": {"plugin_name": "file_watcher", "config": {"ca_certificate_file": "/c", "refresh_interval": 5}}}"#,
                "refresh_interval",
            ),
            (
                r#"{"sds:x": {"plugin_name": "file_watcher", "config": {"ca_certificate_file": "/c"}}}"#,
                "sds:",
            ),
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(
                e.contains("certificate_providers.") && e.contains(says),
                "{e}"
            );
        }
    }
}
