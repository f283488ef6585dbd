//! The ADS client's state machine, shared by both variants of the
//! protocol: state of the world (every response carries every subscribed
//! resource of its type) and incremental (responses carry what changed and
//! what was removed; subscriptions change by name).

use super::XdsError;
use super::translate::{self, Resources, type_url};
use super::{Api, XdsSettings, XdsStatus, metric_names};
use crate::config::{Config, Name};
use crate::mesh::Mesh;
use crate::snapshot::Source;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::Channel;

mod delta;
mod on_demand;
pub(super) mod persist;
pub(super) mod sds;
mod secrets;
mod sotw;

use delta::Delta;
pub(crate) use on_demand::OnDemand;
use sotw::Sotw;

/// The resource types, in the order a client follows them.
pub(super) const TYPES: [&str; 5] = [
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::CLUSTER,
    type_url::ENDPOINTS,
    type_url::SECRET,
];

fn known(t: &str) -> Option<&'static str> {
    TYPES.into_iter().find(|k| *k == t)
}

/// What the application asks of a running client.
#[derive(Debug)]
pub(super) enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// The node this client says it is: id, cluster, locality and metadata
/// from the settings (the bootstrap's), and who we are.
pub(super) fn node_of(settings: &XdsSettings) -> Node {
    use envoy_types::pb::envoy::config::core::v3::{Locality, node::UserAgentVersionType};
    Node {
        id: settings.node_id.clone(),
        cluster: settings.node_cluster.clone(),
        metadata: settings
            .node_metadata
            .as_ref()
            .and_then(|m| match json_value(m).kind {
                Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(s)) => Some(s),
                _ => None,
            }),
        locality: settings
            .node_locality
            .as_ref()
            .map(|[region, zone, sub_zone]| Locality {
                region: region.clone(),
                zone: zone.clone(),
                sub_zone: sub_zone.clone(),
            }),
        user_agent_name: "mesh".into(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        )),
        ..Default::default()
    }
}

/// JSON as a protobuf `Value`.
fn json_value(v: &serde_json::Value) -> envoy_types::pb::google::protobuf::Value {
    use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(Struct {
            fields: o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// What survives reconnects: subscriptions, accepted versions, and the
/// resources accepted so far.
pub(super) struct State {
    /// Subscribed names per type, shared with the status (a client may
    /// subscribe to tens of thousands: they are held once).
    names: BTreeMap<&'static str, Arc<BTreeSet<Name>>>,
    /// State of the world: the accepted version and last nonce per type.
    version: BTreeMap<&'static str, String>,
    nonce: BTreeMap<&'static str, String>,
    resources: Resources,
    /// What the last published config was translated from.
    kept: translate::Kept,
    /// The resources' `refers_generation` when their names were last
    /// followed.
    followed: Option<u64>,
    /// State of the world: resources of a type whose subscription emptied.
    /// The server was told nothing (an empty list would be a wildcard), so
    /// it still counts them as ours and will not send them again if they
    /// come back: they wait here, kept current by its responses.
    parked: Resources,
    /// Whether the variant is state of the world.
    sotw: bool,
    /// The largest resource accepted, encoded.
    max_resource_bytes: usize,
    node: Node,
    /// The next request is the stream's first (it carries the node).
    first: bool,
    /// A config has been published (the mesh is ready).
    published: bool,
    /// A listener response has arrived since the stream opened.
    listeners_answered: bool,
    /// The control plane's address, the metrics' label.
    server: String,
    demand: Arc<OnDemand>,
    /// A server's inbound listener.
    inbound: Option<super::Inbound>,
    /// The bootstrap's certificate provider instances.
    providers: BTreeSet<String>,
    /// The SDS secrets the last built config names, with their uses.
    secrets: BTreeMap<String, secrets::Uses>,
    /// With an SDS server of its own: where the secrets' names go (they
    /// are not subscribed to over ADS then).
    sds: Option<tokio::sync::watch::Sender<BTreeSet<String>>>,
    /// With a state directory: where each published config's resources go
    /// to be written (the last known good), and the node id they are
    /// written for.
    saver: Option<tokio::sync::watch::Sender<Option<Arc<ToSave>>>>,
    node_id: String,
    /// The application's runtime, entered while a config is published:
    /// what the mesh starts for it (a DNS follower) runs there, not on the
    /// client's own thread.
    app: Option<tokio::runtime::Handle>,
}

/// A cluster or listener that names a certificate provider instance the
/// bootstrap does not declare is refused (as gRPC does): it could never
/// present or verify a certificate.
fn unknown_providers(cfg: &Config, providers: &BTreeSet<String>) -> Result<(), XdsError> {
    let named = |what: String, names: [Option<&String>; 2]| {
        for name in names.into_iter().flatten() {
            if !name.starts_with(translate::SDS_PREFIX) && !providers.contains(name) {
                return Err(XdsError::new(format!(
                    "{what} names certificate provider instance `{name}`, which the bootstrap does not declare"
                )));
            }
        }
        Ok(())
    };
    for b in &cfg.backends {
        if let Some(tls) = &b.tls {
            named(
                format!("cluster `{}`", b.name),
                [tls.certificate.as_ref(), tls.trust.as_ref()],
            )?;
        }
    }
    for p in &cfg.inbound {
        named(
            format!("the inbound listener of `{}`", p.service),
            [p.certificate.as_ref(), p.trust.as_ref()],
        )?;
    }
    Ok(())
}

impl State {
    pub(super) fn new(settings: &XdsSettings, demand: Arc<OnDemand>) -> Self {
        let mut names: BTreeMap<&'static str, BTreeSet<Name>> =
            TYPES.into_iter().map(|t| (t, BTreeSet::new())).collect();
        for s in &settings.services {
            names
                .entry(type_url::LISTENER)
                .or_default()
                .insert(Name::new(s));
            demand.expect(s);
        }
        if let Some(inbound) = &settings.inbound {
            names
                .entry(type_url::LISTENER)
                .or_default()
                .insert(Name::new(&inbound.listener));
        }
        Self {
            names: names.into_iter().map(|(t, n)| (t, Arc::new(n))).collect(),
            version: BTreeMap::new(),
            nonce: BTreeMap::new(),
            resources: Resources::default(),
            kept: translate::Kept::default(),
            followed: None,
            parked: Resources::default(),
            sotw: settings.api == Api::Sotw,
            max_resource_bytes: settings.max_resource_bytes,
            node: node_of(settings),
            first: true,
            published: false,
            listeners_answered: false,
            server: settings.server.clone(),
            demand,
            inbound: settings.inbound.clone(),
            providers: settings.certificate_providers.keys().cloned().collect(),
            secrets: BTreeMap::new(),
            sds: None,
            saver: None,
            node_id: settings.node_id.clone(),
            app: None,
        }
    }

    /// Publishes with `app` entered (see [`State::app`]).
    pub(super) fn run_for(&mut self, app: tokio::runtime::Handle) {
        self.app = Some(app);
    }

    /// Sends each published config's resources to `saver`.
    pub(super) fn save_to(&mut self, saver: tokio::sync::watch::Sender<Option<Arc<ToSave>>>) {
        self.saver = Some(saver);
    }

    /// Hands the held resources to the writer of the last known good (the
    /// latest wins: a burst of configs is written once). Their encodings
    /// are shared; the file is made and written off the client's task.
    fn save(&self) {
        if let Some(saver) = &self.saver {
            saver.send_replace(Some(Arc::new(ToSave {
                server: self.server.clone(),
                node: self.node_id.clone(),
                written: std::time::SystemTime::now(),
                resources: self.resources.all_encoded().collect(),
            })));
        }
    }

    /// Refuses a resource larger than the limit, naming it.
    fn within_size(
        &self,
        t: &str,
        any: &envoy_types::pb::google::protobuf::Any,
    ) -> Result<(), XdsError> {
        if any.value.len() <= self.max_resource_bytes {
            return Ok(());
        }
        let name = Resources::default()
            .insert(t, any)
            .unwrap_or_else(|_| "(undecodable)".into());
        let msg = format!(
            "{} bytes, over the limit of {} (MESH_XDS_MAX_RESOURCE_BYTES)",
            any.value.len(),
            self.max_resource_bytes
        );
        Err(XdsError::new(msg).in_resource(short(t), &name))
    }

    fn node(&mut self) -> Option<Node> {
        std::mem::take(&mut self.first).then(|| self.node.clone())
    }

    fn names(&self, t: &str) -> &BTreeSet<Name> {
        static NONE: BTreeSet<Name> = BTreeSet::new();
        self.names.get(t).map_or(&NONE, |n| &**n)
    }

    /// Publishes an empty config when nothing is subscribed yet: an
    /// on-demand client is ready at once, its hosts come as they are called.
    /// Sends the secrets' names to an SDS stream of their own instead of
    /// subscribing to them over ADS; returns the names to follow.
    pub(super) fn secrets_to(&mut self) -> tokio::sync::watch::Receiver<BTreeSet<String>> {
        let (tx, rx) = tokio::sync::watch::channel(BTreeSet::new());
        self.sds = Some(tx);
        rx
    }

    pub(super) fn publish_if_empty(&mut self, mesh: &Mesh) {
        if self.names(type_url::LISTENER).is_empty() && !self.published {
            let source = Source::Xds("nothing subscribed yet (on demand)".into());
            if mesh.update(Config::default(), source).is_ok() {
                self.published = true;
            }
        }
    }

    /// Translates the held resources and publishes them if they changed.
    /// An error is the reason to NACK.
    fn publish(&mut self, mesh: &Mesh, status: &XdsStatus, label: String) -> Result<(), XdsError> {
        let mut warnings = Vec::new();
        let changes = self.resources.take_changes();
        let mut kept = std::mem::take(&mut self.kept);
        let built = build_config(
            &self.resources,
            self.names(type_url::LISTENER),
            self.inbound.as_ref(),
            &self.providers,
            (&changes, &mut kept),
            &mut warnings,
        );
        self.kept = kept;
        record_warnings(status, warnings);
        let built = built?;
        let named = secrets::named(&built.config);
        secrets::register(mesh, &self.secrets, &named);
        self.secrets = named;
        secrets::apply(mesh, &self.resources, &changes)?;
        // The first config waits for every service named at start-up that
        // exists; later ones do not wait for a half-arrived service (it
        // keeps its running config until the rest arrives).
        if !self.published && (!built.incomplete.is_empty() || !self.listeners_answered) {
            return Ok(());
        }
        let running = mesh.snapshot();
        let mut cfg = built.config;
        carry_over(&mut cfg, running.config(), &built.incomplete);
        if self.published && cfg == *running.config() {
            return Ok(());
        }
        // Under the lock the last known good publishes under: once the
        // control plane's config serves, the file never replaces it.
        let mut live = status.live.lock().unwrap_or_else(PoisonError::into_inner);
        let _app = self.app.as_ref().map(tokio::runtime::Handle::enter);
        mesh.update(cfg, Source::Xds(label))
            .map_err(|e| XdsError::new(format!("the resulting config is invalid: {e}")))?;
        *live = true;
        drop(live);
        self.published = true;
        if status
            .stale
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
        {
            tracing::info!(server = %self.server, "the control plane's config replaces the last known good");
            metrics::gauge!(metric_names::STALE, "control_plane" => self.server.clone()).set(0.0);
        }
        self.save();
        Ok(())
    }

    /// The type a response answers, if one we asked for; notes that the
    /// listeners have been answered.
    fn answering(&mut self, type_url: &str) -> Option<&'static str> {
        let Some(t) = known(type_url) else {
            tracing::warn!(%type_url, "xDS response of a type never asked for, ignored");
            return None;
        };
        if t == type_url::LISTENER {
            self.listeners_answered = true;
        }
        Some(t)
    }

    /// Writes what is subscribed and held into `status`. The names are
    /// shared, not copied (a client may subscribe to tens of thousands).
    fn report(&mut self, status: &XdsStatus) {
        let mut types = status
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for t in TYPES {
            let names = self.names(t);
            // Only subscribed names are held (others are dropped or
            // parked as they come), so the count is the map's size.
            let held = self.resources.count(t);
            debug_assert_eq!(
                held,
                names.iter().filter(|n| self.resources.holds(t, n)).count(),
                "only subscribed {t} resources are held"
            );
            let entry = types.entry(short(t)).or_default();
            if let Some(shared) = self.names.get(t)
                && !Arc::ptr_eq(shared, &entry.subscribed)
            {
                entry.subscribed = shared.clone();
            }
            entry.held = held;
        }
    }

    /// Ends the waits of hosts the running config now answers for.
    fn settle(&self, mesh: &Mesh, listener_response: bool) {
        let snap = mesh.snapshot();
        let held = self.resources.listeners();
        let subscribed = self.names(type_url::LISTENER);
        self.demand.settle(|host| {
            snap.service_for_host(crate::route::host_of(host)).is_some()
                || (listener_response && subscribed.contains(host) && !held.contains_key(host))
        });
    }

    /// Follows what the accepted resources name: per type, the names to
    /// subscribe to and to drop (dropped resources are forgotten).
    fn follow(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        // The secrets the config names (few; compared every time), over
        // ADS or to the SDS stream.
        let secrets: BTreeSet<String> = self.secrets.keys().cloned().collect();
        match &self.sds {
            Some(sds) => {
                sds.send_if_modified(|names| {
                    let changed = *names != secrets;
                    *names = secrets;
                    changed
                });
            }
            None => {
                let names = secrets.iter().map(Name::from).collect();
                out.extend(self.resubscribe(type_url::SECRET, names));
            }
        }
        // What the held resources name changes only when they do.
        if self.followed == Some(self.resources.refers_generation()) {
            return out;
        }
        // Parked resources that come back can name more: follow until
        // nothing changes (a listener names routes, routes clusters,
        // clusters endpoints: a few rounds at most).
        for _ in 0..TYPES.len() {
            let wanted = translate::wanted(&self.resources);
            let before = out.len();
            for (t, names) in [
                (type_url::ROUTE, wanted.routes),
                (type_url::CLUSTER, wanted.clusters),
                (type_url::ENDPOINTS, wanted.endpoints),
            ] {
                if let Some(change) = self.resubscribe(t, names) {
                    out.push(change);
                }
            }
            if out.len() == before {
                break;
            }
        }
        self.followed = Some(self.resources.refers_generation());
        out
    }

    fn resubscribe(&mut self, t: &'static str, names: BTreeSet<Name>) -> Option<Change> {
        let current = self.names.entry(t).or_default();
        if **current == names {
            return None;
        }
        let added: Vec<Name> = names.difference(current).cloned().collect();
        let removed: Vec<Name> = current.difference(&names).cloned().collect();
        let told_nothing = self.sotw && names.is_empty();
        *current = Arc::new(names);
        if told_nothing {
            // The server still counts these as ours (see `parked`).
            let saved = self
                .resources
                .save_only(t, removed.iter().map(Name::as_str));
            self.parked
                .restore_only(t, removed.iter().map(Name::as_str), saved);
        } else if self.sotw {
            // Back from the parking: current, the server kept them so.
            let saved = self.parked.save_only(t, added.iter().map(Name::as_str));
            self.resources
                .restore_only(t, added.iter().map(Name::as_str), saved);
            // Told a new list now: the server stops keeping the rest.
            self.parked.clear(t);
        }
        for r in &removed {
            self.resources.remove(t, r);
        }
        Some(Change {
            type_url: t,
            added,
            removed,
        })
    }

    /// Applies an application command; returns the subscription changes.
    fn command(&mut self, mesh: &Mesh, status: &XdsStatus, cmd: Command) -> Vec<Change> {
        let mut listeners = self.names(type_url::LISTENER).clone();
        match cmd {
            Command::Subscribe(host) => {
                tracing::debug!(%host, "xDS: subscribing on demand");
                listeners.insert(host.into());
            }
            Command::Unsubscribe(host) => {
                self.demand.forget(&host);
                listeners.remove(host.as_str());
            }
        }
        let Some(change) = self.resubscribe(type_url::LISTENER, listeners) else {
            return Vec::new();
        };
        if !change.removed.is_empty() {
            let label = format!("unsubscribed {}", change.removed.join(", "));
            if let Err(e) = self.publish(mesh, status, label) {
                tracing::warn!("xDS: after unsubscribing: {e}");
            }
        }
        let mut out = vec![change];
        out.extend(self.follow());
        out
    }

    /// Records the outcome of a response: metrics, counters, the NACK
    /// reason; then follows the names and settles on-demand waits.
    fn outcome(
        &mut self,
        mesh: &Mesh,
        status: &XdsStatus,
        t: &'static str,
        version: &str,
        outcome: &Result<(), XdsError>,
    ) -> Vec<Change> {
        let result = if outcome.is_ok() { "ack" } else { "nack" };
        let short = t.rsplit('.').next().unwrap_or(t);
        metrics::counter!(metric_names::RESPONSES, "control_plane" => self.server.clone(), "type" => short, "result" => result)
            .increment(1);
        match outcome {
            Ok(()) => {
                status.acks.fetch_add(1, Ordering::Relaxed);
                // Working again after a failure: no longer degraded.
                *status
                    .last_failure
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                *status
                    .last_ack
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(std::time::SystemTime::now());
                metrics::gauge!(metric_names::LAST_ACK, "control_plane" => self.server.clone())
                    .set(unix_now());
                status
                    .resources
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(short)
                    .or_default()
                    .version = version.to_owned();
            }
            Err(reason) => {
                status.nacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(type_url = t, %version, "xDS response NACKed: {reason}");
                *status
                    .last_nack
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(reason.to_string());
            }
        }
        let changes = self.follow();
        // A new name to fetch may complete nothing, but a dropped one can
        // (a route that stopped naming a cluster), and so can one back from
        // the parking: publish once more (nothing is published if nothing
        // changed).
        if !changes.is_empty()
            && let Err(e) = self.publish(mesh, status, format!("version {version} of {short}"))
        {
            tracing::warn!("xDS: after following names: {e}");
        }
        self.settle(mesh, t == type_url::LISTENER);
        changes
    }
}

/// For services still arriving, the running config's version of them and
/// the backends they use, so they keep serving meanwhile.
fn carry_over(cfg: &mut Config, running: &Config, incomplete: &[Name]) {
    if incomplete.is_empty() {
        return;
    }
    let mut have: BTreeSet<Name> = cfg.backends.iter().map(|b| b.name.clone()).collect();
    for name in incomplete {
        let host = crate::route::host_of(name);
        let Some(s) = running.services.iter().find(|s| s.name == host) else {
            continue;
        };
        let used: BTreeSet<&str> = s
            .routes
            .iter()
            .flat_map(|r| {
                r.to.iter()
                    .map(|w| w.backend.as_str())
                    .chain(r.mirror.iter().map(|m| m.backend.as_str()))
            })
            .collect();
        for b in &running.backends {
            if used.contains(b.name.as_str()) && have.insert(b.name.clone()) {
                cfg.backends.push(b.clone());
            }
        }
        cfg.services.push(s.clone());
    }
}

fn record_warnings(status: &XdsStatus, warnings: Vec<String>) {
    if warnings.is_empty() {
        return;
    }
    let mut w = status
        .warnings
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for x in warnings {
        if !w.contains(&x) {
            tracing::warn!("xDS: {x}");
            metrics::counter!(metric_names::IGNORED, "control_plane" => status.server.clone())
                .increment(1);
            w.push(x);
        }
    }
}

/// A change of subscription for one type.
#[derive(Debug)]
pub(super) struct Change {
    type_url: &'static str,
    added: Vec<Name>,
    removed: Vec<Name>,
}

fn nack(message: String) -> Status {
    Status {
        code: 3, // INVALID_ARGUMENT
        message,
        details: Vec::new(),
    }
}

/// One variant of the protocol.
pub(super) trait Variant {
    type Request: Send + 'static;
    type Response: Send + 'static;
    /// The requests that (re)open every subscription on a new stream.
    fn open(state: &mut State) -> Vec<Self::Request>;
    /// The type URL of a response.
    fn type_url(resp: &Self::Response) -> &str;
    /// Applies a response; returns the ACK or NACK and what follows.
    fn respond(
        state: &mut State,
        mesh: &Mesh,
        status: &XdsStatus,
        resp: Self::Response,
    ) -> Vec<Self::Request>;
    /// A subscription change as a request (none when it cannot be said).
    fn change(state: &mut State, change: Change) -> Option<Self::Request>;
    /// Opens the stream.
    fn call(
        client: AggregatedDiscoveryServiceClient<Channel>,
        requests: mpsc::Receiver<Self::Request>,
    ) -> impl Future<Output = Result<tonic::Streaming<Self::Response>, tonic::Status>> + Send;
}

/// A channel to the control plane: `http://host:port`, or a Unix socket
/// (`unix:///path`, `unix:path`), as istio-agent serves xDS to proxyless
/// workloads on `unix:///etc/istio/proxy/XDS`.
async fn channel(server: &str) -> Result<Channel, tonic::transport::Error> {
    if !server.starts_with("unix:") {
        return tonic::transport::Endpoint::from_shared(server.to_owned())?
            .connect()
            .await;
    }
    // `unix:///abs` (and `unix:/abs`) are absolute, `unix:rel` relative.
    let path = server
        .strip_prefix("unix://")
        .or_else(|| server.strip_prefix("unix:"))
        .unwrap_or_default()
        .to_owned();
    // The URI is not used to connect; it names the authority sent.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn short(t: &str) -> &str {
    t.rsplit('.').next().unwrap_or(t)
}

/// The short name of a type the client subscribes to, or `other` (a
/// metric label from a fixed vocabulary, whatever the server sends).
fn known_type(t: &str) -> &'static str {
    TYPES
        .into_iter()
        .find(|k| *k == t)
        .map_or("other", |k| short(k))
}

/// Records how long applying a response of type `t` took.
fn record_apply(status: &XdsStatus, server: &str, t: &'static str, took: std::time::Duration) {
    let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    status.last_apply_micros.store(micros, Ordering::Relaxed);
    metrics::histogram!(metric_names::APPLY, "control_plane" => server.to_owned(), "type" => t)
        .record(took.as_secs_f64());
}

/// A future whose panic is caught and returned as its message.
struct CatchUnwind<F>(std::pin::Pin<Box<F>>);

/// A panic caught, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Panicked(String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a stream ended.
type StreamError = Box<dyn std::error::Error + Send + Sync>;

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(panic) => std::task::Poll::Ready(Err(Panicked(
                panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned()),
            ))),
        }
    }
}

/// Starts `run` (the client's stream loop) on a thread of its own, named
/// `mesh-xds`, with a single-threaded runtime of its own: decoding,
/// translating and compiling a config (over a second at 10,000 services)
/// never holds up one of the application's workers, or the whole of a
/// single-threaded application, and the config's memory is allocated in
/// one place rather than spread over every worker's heap. If no thread or
/// runtime can be made, `app` runs it instead.
pub(super) fn start(
    app: &tokio::runtime::Handle,
    run: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // Handed over once the thread runs: if it cannot be made, `run` is
    // still here for the application's runtime.
    let (hand, over) = std::sync::mpsc::channel();
    let own = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no runtime ({e})"))
        .and_then(|runtime| {
            std::thread::Builder::new()
                .name("mesh-xds".into())
                .spawn(move || {
                    if let Ok(run) = over.recv() {
                        runtime.block_on(run);
                    }
                })
                .map_err(|e| format!("no thread ({e})"))
        });
    let run = match own {
        Ok(_) => match hand.send(run) {
            Ok(()) => return,
            Err(back) => {
                tracing::warn!(
                    "the xDS client's thread ended; it runs on the application's runtime"
                );
                back.0
            }
        },
        Err(e) => {
            tracing::warn!("the xDS client runs on the application's runtime: {e}");
            run
        }
    };
    app.spawn(run);
}

/// Runs the client until the mesh is dropped: opens a stream, serves it
/// until it ends, backs off, and opens the next.
pub(super) async fn run(
    mesh: Weak<crate::mesh::Inner>,
    settings: XdsSettings,
    status: Arc<XdsStatus>,
    mut state: State,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if Mesh::upgrade_xds(&mesh).is_none() {
            return;
        }
        // Supervised: a panic anywhere in the stream's work ends this
        // stream only; it is logged, counted and shown as degraded, and the
        // next stream opens after the backoff (the last good config serves
        // meanwhile). Without this the task died silently and `/xds` went
        // on saying "connected".
        let (m, st) = (&mesh, &settings);
        let opened = match settings.api {
            Api::Sotw => {
                CatchUnwind(Box::pin(stream::<Sotw>(
                    m,
                    st,
                    &status,
                    &mut state,
                    &mut commands,
                )))
                .await
            }
            Api::Delta => {
                CatchUnwind(Box::pin(stream::<Delta>(
                    m,
                    st,
                    &status,
                    &mut state,
                    &mut commands,
                )))
                .await
            }
        };
        let opened = opened.unwrap_or_else(|panic| {
            let what = format!("the xDS client failed and was restarted: {panic}");
            tracing::error!(server = %settings.server, "{what}");
            status.failures.fetch_add(1, Ordering::Relaxed);
            *status
                .last_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(what.clone());
            metrics::counter!(metric_names::FAILURES, "control_plane" => settings.server.clone())
                .increment(1);
            Err(what.into())
        });
        status.connected.store(false, Ordering::Relaxed);
        status
            .disconnected_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(std::time::SystemTime::now);
        metrics::gauge!(metric_names::CONNECTED, "control_plane" => settings.server.clone())
            .set(0.0);
        match opened {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(server = %settings.server, "xDS stream ended: {e}; retrying in {backoff:?}")
            }
        }
        let jitter = backoff.mul_f64(super::rand_unit() * 0.5);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn stream<V: Variant>(
    mesh: &Weak<crate::mesh::Inner>,
    settings: &XdsSettings,
    status: &XdsStatus,
    state: &mut State,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Result<(), StreamError> {
    let client = AggregatedDiscoveryServiceClient::new(
        channel(&settings.server)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?,
    )
    .max_decoding_message_size(settings.max_message_bytes);
    let (tx, rx) = mpsc::channel::<V::Request>(64);
    state.first = true;
    state.listeners_answered = state.names(type_url::LISTENER).is_empty();
    for req in V::open(state) {
        tx.send(req).await.map_err(|e| e.to_string())?;
    }
    // Some servers answer the call only with their first response, and
    // with nothing subscribed yet that waits for the application's first
    // call: its subscription must get through meanwhile.
    let mut commands_open = true;
    let call = V::call(client, rx);
    tokio::pin!(call);
    let mut responses = loop {
        tokio::select! {
            opened = &mut call => break opened.map_err(|e| format!("ADS refused: {e}"))?,
            cmd = commands.recv(), if commands_open => {
                let Some(cmd) = cmd else {
                    commands_open = false;
                    continue;
                };
                let Some(m) = Mesh::upgrade_xds(mesh) else { return Ok(()) };
                for c in state.command(&m, status, cmd) {
                    if let Some(req) = V::change(state, c) {
                        tx.send(req).await.map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    };
    opened(settings, status);
    loop {
        let requests = tokio::select! {
            msg = responses.message() => {
                let Some(resp) = msg.map_err(|e| stream_error(&e, settings))? else {
                    return Err("the control plane closed the stream".into());
                };
                let Some(m) = Mesh::upgrade_xds(mesh) else { return Ok(()) };
                let started = std::time::Instant::now();
                let t = known_type(V::type_url(&resp));
                let out = V::respond(state, &m, status, resp);
                record_apply(status, &state.server, t, started.elapsed());
                out
            }
            cmd = commands.recv(), if commands_open => {
                let Some(cmd) = cmd else {
                    commands_open = false;
                    continue;
                };
                let Some(m) = Mesh::upgrade_xds(mesh) else { return Ok(()) };
                let changes = state.command(&m, status, cmd);
                changes
                    .into_iter()
                    .filter_map(|c| V::change(state, c))
                    .collect()
            }
        };
        state.report(status);
        for req in requests {
            tx.send(req).await.map_err(|e| e.to_string())?;
        }
    }
}

/// Marks the stream open in the status, metrics and log.
fn opened(settings: &XdsSettings, status: &XdsStatus) {
    status.connected.store(true, Ordering::Relaxed);
    *status
        .disconnected_since
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    status.connects.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(metric_names::STREAMS, "control_plane" => settings.server.clone())
        .increment(1);
    metrics::gauge!(metric_names::CONNECTED, "control_plane" => settings.server.clone()).set(1.0);
    tracing::info!(server = %settings.server, node = %settings.node_id, api = ?settings.api, "xDS stream open");
}

/// A stream's error, naming the message limit when it was hit.
fn stream_error(e: &tonic::Status, settings: &XdsSettings) -> StreamError {
    if e.code() == tonic::Code::OutOfRange || e.message().contains("message length too large") {
        let limit = settings.max_message_bytes;
        format!("stream error: {e} (the limit is MESH_XDS_MAX_MESSAGE_BYTES, {limit} bytes)").into()
    } else {
        format!("stream error: {e}").into()
    }
}

/// A published config's resources, for the writer of the last known good.
#[derive(Debug)]
pub(super) struct ToSave {
    server: String,
    node: String,
    written: std::time::SystemTime,
    resources: Vec<(&'static str, Arc<[u8]>)>,
}

/// Writes the last known good to `path` as the client publishes, the
/// latest config each time (made and written off the runtime's threads);
/// a failure is logged and shown on the status, and the next config tries
/// again.
pub(super) async fn save_loop(
    mut configs: tokio::sync::watch::Receiver<Option<Arc<ToSave>>>,
    path: std::path::PathBuf,
    status: Weak<XdsStatus>,
) {
    while configs.changed().await.is_ok() {
        let Some(save) = configs.borrow_and_update().clone() else {
            continue;
        };
        let to = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let resources = save.resources.iter().map(|(t, b)| (*t, &**b));
            let bytes = persist::encode(&save.server, &save.node, save.written, resources);
            persist::write(&to, &bytes)
        })
        .await;
        let Some(status) = status.upgrade() else {
            return;
        };
        let error = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("cannot write {}: {e}", path.display())),
            Err(e) => Some(format!("writing {} failed: {e}", path.display())),
        };
        if let Some(e) = &error {
            tracing::warn!("xDS last known good: {e}");
        }
        *status
            .state_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// After `wait`, if the control plane's config is not serving yet, serves
/// the last known good from `path`, marked stale until the control
/// plane's replaces it. A file that does not load is refused with why
/// (on the status and in the log) and nothing is served from it.
pub(super) async fn restore(
    mesh: Weak<crate::mesh::Inner>,
    status: Arc<XdsStatus>,
    settings: XdsSettings,
    path: std::path::PathBuf,
) {
    tokio::time::sleep(settings.state_wait).await;
    if *status.live.lock().unwrap_or_else(PoisonError::into_inner) {
        return;
    }
    let file = path.clone();
    let (server, node) = (settings.server.clone(), settings.node_id.clone());
    let loaded = tokio::task::spawn_blocking(move || persist::load(&file, &server, &node)).await;
    let refused = |why: String| {
        tracing::error!(server = %settings.server, "xDS last known good not served: {why}");
        *status
            .state_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(why);
    };
    let loaded = match loaded {
        Ok(Ok(l)) => l,
        Ok(Err(persist::PersistError::Read { source, .. }))
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return;
        }
        Ok(Err(e)) => return refused(e.to_string()),
        Err(e) => return refused(format!("reading {} failed: {e}", path.display())),
    };
    let Some(m) = Mesh::upgrade_xds(&mesh) else {
        return;
    };
    let config = match last_known_good(&settings, &loaded) {
        Ok(c) => c,
        Err(e) => return refused(format!("{} is refused: {e}", path.display())),
    };
    let ago = loaded.written.elapsed().unwrap_or_default().as_secs();
    let what = format!(
        "serving the last known good config from {} (written {ago} s ago): the control plane has not answered",
        path.display()
    );
    let live = status.live.lock().unwrap_or_else(PoisonError::into_inner);
    if *live {
        return;
    }
    let source = Source::Xds(format!("last known good from {}", path.display()));
    if let Err(e) = m.update(config, source) {
        drop(live);
        return refused(format!("{} is refused: {e}", path.display()));
    }
    drop(live);
    tracing::warn!(server = %settings.server, "xDS: {what}");
    metrics::gauge!(metric_names::STALE, "control_plane" => settings.server.clone()).set(1.0);
    *status.stale.lock().unwrap_or_else(PoisonError::into_inner) = Some(what);
}

/// The config the resources of a state file make, as the client makes one
/// from its control plane's.
fn last_known_good(settings: &XdsSettings, loaded: &persist::Loaded) -> Result<Config, XdsError> {
    let mut resources = Resources::default();
    for any in &loaded.resources {
        let t = known(&any.type_url)
            .filter(|t| *t != type_url::SECRET)
            .ok_or_else(|| XdsError::new(format!("a resource of type `{}`", any.type_url)))?;
        resources.insert(t, any)?;
    }
    let names: BTreeSet<Name> = resources.listeners().keys().cloned().collect();
    let providers = settings.certificate_providers.keys().cloned().collect();
    let built = build_config(
        &resources,
        &names,
        settings.inbound.as_ref(),
        &providers,
        (
            &translate::Changes::default(),
            &mut translate::Kept::default(),
        ),
        &mut Vec::new(),
    )?;
    Ok(built.config)
}

/// The config the held `resources` make for the listeners `names`: the
/// services (all but a server's inbound listener), the server's inbound
/// policy, and the check that every certificate provider instance named
/// is declared. What the client publishes and what the last known good
/// serves are made the same way.
fn build_config(
    resources: &Resources,
    names: &BTreeSet<Name>,
    inbound: Option<&super::Inbound>,
    providers: &BTreeSet<String>,
    (changes, kept): (&translate::Changes, &mut translate::Kept),
    warnings: &mut Vec<String>,
) -> Result<translate::Built, XdsError> {
    let services = names
        .iter()
        .filter(|n| inbound.is_none_or(|i| i.listener != **n));
    let built = translate::to_config(resources, services, changes, warnings, kept);
    let policy =
        match inbound.and_then(|i| Some((i, resources.listeners().get(i.listener.as_str())?))) {
            Some((i, l)) => translate::inbound_of(&l.get(), &i.service, warnings).map(Some),
            None => Ok(None),
        };
    let (mut built, policy) = (built?, policy?);
    built.config.inbound.extend(policy);
    unknown_providers(&built.config, providers)?;
    Ok(built)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::on_demand::MAX_ON_DEMAND_HOSTS;
    use super::{Arc, BTreeSet, CatchUnwind, OnDemand, State, XdsSettings, XdsStatus, type_url};

    #[tokio::test]
    async fn on_demand_hosts_are_bounded() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let demand = OnDemand::new(tx, std::time::Duration::from_millis(1));
        for i in 0..MAX_ON_DEMAND_HOSTS {
            assert!(demand.want(&format!("host-{i}")).is_some());
        }
        assert!(demand.want("one-too-many").is_none());
        let mut asked = 0;
        while rx.try_recv().is_ok() {
            asked += 1;
        }
        assert_eq!(asked, MAX_ON_DEMAND_HOSTS);
    }

    /// A host subscribed up front holds no channel until a caller waits
    /// on it; a caller that comes before the answer waits for it, and
    /// none after.
    #[tokio::test]
    async fn an_expected_host_is_waited_for_only_once_called() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let demand = OnDemand::new(tx, std::time::Duration::from_secs(30));
        demand.expect("early");
        demand.expect("unwaited");
        let wait = demand.want("early").expect("pending until answered");
        assert!(rx.try_recv().is_err(), "subscribed already: nothing asked");
        let waiting = tokio::spawn(wait);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        demand.settle(|h| h == "early" || h == "unwaited");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the answer ends the wait")
            .unwrap();
        assert!(demand.want("early").is_none());
        assert!(demand.want("unwaited").is_none());
    }

    /// The status shows the subscribed names as they are now, sharing the
    /// client's set.
    #[test]
    fn the_status_follows_subscriptions() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let demand = Arc::new(OnDemand::new(tx, std::time::Duration::from_millis(1)));
        let settings = XdsSettings::new("http://127.0.0.1:1", "test", vec!["a".into()]);
        let mut state = State::new(&settings, demand);
        let status = XdsStatus::default();
        let subscribed = |status: &XdsStatus| -> Vec<crate::config::Name> {
            status.resources.lock().unwrap()["Listener"]
                .subscribed
                .iter()
                .cloned()
                .collect()
        };
        state.report(&status);
        assert_eq!(subscribed(&status), ["a"]);
        let names = BTreeSet::from(["a".into(), "b".into()]);
        assert!(state.resubscribe(type_url::LISTENER, names).is_some());
        state.report(&status);
        assert_eq!(subscribed(&status), ["a", "b"]);
        // The status shares the client's set: no copy of the names.
        let shared = status.resources.lock().unwrap()["Listener"]
            .subscribed
            .clone();
        assert!(Arc::ptr_eq(&shared, &state.names[type_url::LISTENER]));
        assert!(
            state
                .resubscribe(type_url::LISTENER, BTreeSet::from(["b".into()]))
                .is_some()
        );
        state.report(&status);
        assert_eq!(subscribed(&status), ["b"]);
    }

    #[tokio::test]
    async fn a_panicking_future_is_caught_as_its_message() {
        let caught = CatchUnwind(Box::pin(async { panic!("boom {}", 7) })).await;
        assert_eq!(caught.err().map(|p| p.0).as_deref(), Some("boom 7"));
        let fine = CatchUnwind(Box::pin(async { 3 })).await;
        assert_eq!(fine, Ok(3));
    }
}
