//! The development control plane (a fixture of the examples and tests, not
//! part of the published crates): serves a [`Mesh`]'s config as xDS
//! resources over ADS, in both variants (state of the world and
//! incremental), and pushes every new snapshot to every stream. It uses the
//! same translation module as the client, in the other direction
//! ([`from_config`](proxyless_core::xds::translate::from_config)).
//!
//! Clients like ours and gRPC's subscribe to API listeners by name (the
//! service hosts). Envoy subscribes to every listener (a wildcard) and
//! needs a socket to listen on: give it one with
//! [`DevControlPlane::envoy_listener`], and a wildcard listener
//! subscription gets a listener on that address routing every service by
//! Host.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = proxyless_core::Mesh::from_file("mesh.yaml")?;     // watched: edits are pushed
//! mesh::control_plane::serve(mesh, "127.0.0.1:18000".parse()?).await?;
//! # Ok(()) }
//! ```

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use proxyless_core::Mesh;
use proxyless_core::snapshot::Snapshot;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

mod secrets;
mod served;
use proxyless_core::xds::translate::type_url;
pub use secrets::Secrets;
use served::Served;

/// The name of the socket listener (and its route configuration) served
/// to Envoy.
pub const ENVOY_LISTENER: &str = "mesh-envoy";

/// The ADS service over a mesh's live config.
#[derive(Debug, Clone)]
pub struct DevControlPlane {
    mesh: Mesh,
    nonce: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
    envoy: Option<SocketAddr>,
    /// The newest snapshot's resources, translated once for every stream.
    served: Arc<std::sync::Mutex<Option<Arc<Served>>>>,
    /// SDS secrets, served over ADS and over the Secret Discovery Service.
    secrets: Secrets,
}

impl DevControlPlane {
    /// Serves `mesh`'s config.
    pub fn new(mesh: Mesh) -> Self {
        Self::with_stop(mesh, tokio::sync::watch::channel(false).1)
    }

    /// Serves `mesh`'s config until `stop` turns true, then ends every stream.
    fn with_stop(mesh: Mesh, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        Self {
            mesh,
            nonce: Arc::new(AtomicU64::new(0)),
            stop,
            envoy: None,
            served: Arc::default(),
            secrets: Secrets::new(),
        }
    }

    /// Ends every stream once `stop` turns true (for a server run by
    /// hand, as on a Unix socket).
    #[must_use]
    pub fn stop_on(mut self, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    /// Serves `secrets` too (SDS over ADS, and [`into_sds_service`](Self::into_sds_service)).
    #[must_use]
    pub fn with_secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    /// The Secret Discovery Service on its own, over the same secrets (a
    /// node agent's SDS socket).
    pub fn into_sds_service(
        self,
    ) -> envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer<Self>
    {
        envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer::new(self)
    }

    /// Serves a wildcard listener subscription (Envoy's) a socket listener
    /// on `addr`, [`ENVOY_LISTENER`], routing every service by Host.
    pub fn envoy_listener(mut self, addr: SocketAddr) -> Self {
        self.envoy = Some(addr);
        self
    }

    /// Serves on `addr` until `shutdown` completes; then ends every stream
    /// (clients reconnect elsewhere or later) and stops listening.
    pub async fn serve_with_shutdown(
        mut self,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        self.stop = stop_rx;
        let signal = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tonic::transport::Server::builder()
            .add_service(self.into_service())
            .serve_with_shutdown(addr, signal)
            .await
    }

    fn next_nonce(&self) -> String {
        (self.nonce.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }

    /// The tonic service, for a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

/// Serves `mesh` as ADS on `addr` until the task is dropped.
pub async fn serve(mesh: Mesh, addr: SocketAddr) -> Result<(), tonic::transport::Error> {
    serve_with_shutdown(mesh, addr, std::future::pending()).await
}

/// Serves `mesh` as ADS on `addr` until `shutdown` completes; then ends
/// every stream (clients reconnect elsewhere or later) and stops listening.
pub async fn serve_with_shutdown(
    mesh: Mesh,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    DevControlPlane::new(mesh)
        .serve_with_shutdown(addr, shutdown)
        .await
}

/// A stream's view of the served snapshot, refreshed when it changes.
struct Current {
    mesh: Mesh,
    envoy: Option<SocketAddr>,
    cache: Arc<std::sync::Mutex<Option<Arc<Served>>>>,
    served: Arc<Served>,
}

impl Current {
    fn new(cp: &DevControlPlane) -> Self {
        let served = Self::translated(&cp.served, cp.mesh.snapshot(), cp.envoy);
        Self {
            mesh: cp.mesh.clone(),
            envoy: cp.envoy,
            cache: cp.served.clone(),
            served,
        }
    }

    /// The snapshot's resources: translated by the first stream to need
    /// them, shared by the rest (a thousand clients cost one translation
    /// per change, not a thousand).
    fn translated(
        cache: &std::sync::Mutex<Option<Arc<Served>>>,
        snapshot: Arc<Snapshot>,
        envoy: Option<SocketAddr>,
    ) -> Arc<Served> {
        let mut cache = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = cache.as_ref()
            && s.snapshot.version() == snapshot.version()
        {
            return s.clone();
        }
        // The translation before, for what the snapshot shares with it.
        let served = Arc::new(Served::of(snapshot, envoy, cache.as_deref()));
        // Never replace a newer translation with an older one.
        if cache
            .as_ref()
            .is_none_or(|s| s.snapshot.version() < served.snapshot.version())
        {
            *cache = Some(served.clone());
        }
        served
    }

    /// Takes the newest snapshot's resources, once per version.
    fn refresh(&mut self, newest: Option<Arc<Snapshot>>) {
        let newest = newest.unwrap_or_else(|| self.mesh.snapshot());
        if newest.version() != self.served.snapshot.version() {
            self.served = Self::translated(&self.cache, newest, self.envoy);
        }
    }
}

/// A state-of-the-world response for a subscription.
fn respond(served: &Served, t: &str, names: &[String], nonce: String) -> DiscoveryResponse {
    let wanted: BTreeSet<String> = names.iter().filter(|n| *n != "*").cloned().collect();
    let wildcard = names.is_empty() || names.iter().any(|n| n == "*");
    let resources = served
        .covered(t, wildcard, &wanted)
        .map(|e| e.any.clone())
        .collect();
    DiscoveryResponse {
        version_info: served.version(),
        resources,
        type_url: t.to_owned(),
        nonce,
        ..Default::default()
    }
}

/// An incremental subscription of one type on one stream.
#[derive(Debug, Default)]
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: the version of each resource sent, or `None`
    /// for a name it was told does not exist.
    sent: BTreeMap<String, Option<String>>,
    /// The snapshot version the client was last brought up to.
    diffed: Option<u64>,
}

impl DeltaSub {
    /// What changed for this subscription since the client last heard:
    /// new or changed resources, and names removed or never there.
    fn diff(&mut self, served: &Served, t: &str, nonce: String) -> Option<DeltaDiscoveryResponse> {
        // From the snapshot it last heard of: only the names that changed.
        let (resources, removed) = match self.diffed.and_then(|v| served.changed_since(v, t)) {
            Some(names) => self.changes(served, t, names),
            None => self.everything(served, t),
        };
        self.diffed = Some(served.snapshot.version());
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        Some(DeltaDiscoveryResponse {
            system_version_info: served.version(),
            resources,
            type_url: t.to_owned(),
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }

    /// What to send for the resources `names` of type `t` (those that
    /// changed): the covered ones the client does not hold as they are,
    /// and the names it holds or asked for that are gone.
    fn changes(
        &mut self,
        served: &Served,
        t: &str,
        names: &BTreeSet<String>,
    ) -> (Vec<Resource>, Vec<String>) {
        let (mut resources, mut removed) = (Vec::new(), Vec::new());
        for name in names {
            let covered = served.covers(t, self.wildcard, &self.names, name);
            match served.get(t, name).filter(|_| covered) {
                Some(e) => Self::send(&mut self.sent, e, &mut resources),
                None => {
                    let held = matches!(self.sent.get(name), Some(Some(_)));
                    let named = self.names.contains(name);
                    if held || (named && !self.sent.contains_key(name)) {
                        removed.push(name.clone());
                        if named {
                            self.sent.insert(name.clone(), None);
                        } else {
                            self.sent.remove(name);
                        }
                    }
                }
            }
        }
        (resources, removed)
    }

    /// Adds `e` to `resources` unless the client holds it as it is.
    fn send(
        sent: &mut BTreeMap<String, Option<String>>,
        e: &served::Encoded,
        resources: &mut Vec<Resource>,
    ) {
        if sent.get(&e.name).and_then(Option::as_ref) != Some(&e.version) {
            sent.insert(e.name.clone(), Some(e.version.clone()));
            resources.push(Resource {
                name: e.name.clone(),
                version: e.version.clone(),
                resource: Some(e.any.clone()),
                ..Default::default()
            });
        }
    }

    /// What to send for every resource of type `t` the subscription
    /// covers, compared with what the client holds.
    fn everything(&mut self, served: &Served, t: &str) -> (Vec<Resource>, Vec<String>) {
        let mut resources = Vec::new();
        let mut present = BTreeSet::new();
        for e in served.covered(t, self.wildcard, &self.names) {
            present.insert(e.name.as_str());
            Self::send(&mut self.sent, e, &mut resources);
        }
        let mut removed = Vec::new();
        self.sent.retain(|name, v| {
            if present.contains(name.as_str()) || v.is_none() {
                return true;
            }
            removed.push(name.clone());
            false
        });
        // Named but not served: say so once, so the client need not wait.
        for name in &self.names {
            if !present.contains(name.as_str()) && !self.sent.contains_key(name) {
                self.sent.insert(name.clone(), None);
                removed.push(name.clone());
            }
        }
        (resources, removed)
    }
}

/// One variant's state on one stream: what the client subscribed to and
/// holds, and how it answers requests and new snapshots.
trait Variant: Default + Send + 'static {
    type Request: AdsRequest + prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    /// What to send for a request.
    fn request(
        &mut self,
        cp: &DevControlPlane,
        served: &Served,
        req: Self::Request,
    ) -> Vec<Self::Response>;
    /// What to send for a new snapshot.
    fn snapshot(&mut self, cp: &DevControlPlane, served: &Served) -> Vec<Self::Response>;
    /// What to send for a request for secrets.
    fn secret_request(
        &mut self,
        cp: &DevControlPlane,
        secrets: &secrets::Served,
        req: Self::Request,
    ) -> Vec<Self::Response>;
    /// What to send when the secrets change.
    fn secrets(&mut self, cp: &DevControlPlane, secrets: &secrets::Served) -> Vec<Self::Response>;
}

/// What the server reads of either variant's requests.
trait AdsRequest {
    /// The node id, when the request carries the node.
    fn node_id(&self) -> Option<&str>;
    /// The type and the reason, when the request is a NACK.
    fn nack(&self) -> Option<(&str, &str)>;
    /// The type asked for.
    fn type_url(&self) -> &str;
}

macro_rules! ads_request {
    ($($t:ty),*) => {$(
        impl AdsRequest for $t {
            fn node_id(&self) -> Option<&str> {
                self.node.as_ref().map(|n| n.id.as_str())
            }
            fn nack(&self) -> Option<(&str, &str)> {
                let e = self.error_detail.as_ref()?;
                Some((&self.type_url, &e.message))
            }
            fn type_url(&self) -> &str {
                &self.type_url
            }
        }
    )*};
}
ads_request!(DiscoveryRequest, DeltaDiscoveryRequest);

type Outgoing<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers a request for secrets. The secrets are read without being
/// marked seen: a request (an ACK, most often) is answered only when the
/// subscription changed, so a change of secrets that arrived beside it
/// must still wake the stream's secrets branch, or it would wait for the
/// next change, one rotation late.
fn answer_secret_request<V: Variant>(
    state: &mut V,
    cp: &DevControlPlane,
    secrets: &tokio::sync::watch::Receiver<Arc<secrets::Served>>,
    req: V::Request,
) -> Vec<V::Response> {
    let now = secrets.borrow().clone();
    state.secret_request(cp, &now, req)
}

/// Serves one ADS stream of variant `V` until the client goes, the
/// control plane stops, or the mesh is dropped.
fn serve_stream<V: Variant>(
    cp: DevControlPlane,
    mut incoming: Streaming<V::Request>,
) -> Outgoing<V::Response> {
    let (tx, rx) = mpsc::channel::<Result<V::Response, Status>>(16);
    tokio::spawn(async move {
        let mut state = V::default();
        let mut updates = cp.mesh.subscribe();
        let mut secrets = cp.secrets.subscribe();
        let mut stop = cp.stop.clone();
        let mut node = String::new();
        let mut current = Current::new(&cp);
        loop {
            current.refresh(None);
            if *stop.borrow() {
                return;
            }
            let out = tokio::select! {
                // `new()` has no stop signal: its sender is gone and
                // `changed()` errs at once, which disables this branch.
                Ok(()) = stop.changed() => continue,
                msg = incoming.message() => {
                    let Ok(Some(req)) = msg else { return };
                    if let Some(n) = req.node_id() {
                        n.clone_into(&mut node);
                    }
                    if let Some((t, reason)) = req.nack() {
                        tracing::warn!(%node, type_url = %t, "NACK: {reason}");
                    }
                    if req.type_url() == type_url::SECRET {
                        answer_secret_request(&mut state, &cp, &secrets, req)
                    } else {
                        state.request(&cp, &current.served, req)
                    }
                }
                Ok(()) = secrets.changed() => {
                    let now = secrets.borrow_and_update().clone();
                    state.secrets(&cp, &now)
                }
                next = updates.next() => {
                    let Some(next) = next else { return };
                    current.refresh(Some(next));
                    state.snapshot(&cp, &current.served)
                }
            };
            for resp in out {
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// State of the world: the names each type subscribes to.
#[derive(Default)]
struct Sotw {
    subscribed: BTreeMap<String, Vec<String>>,
    /// The snapshot version last sent on this stream.
    sent: Option<u64>,
    /// The generation of the secrets last sent on this stream.
    secrets_sent: Option<u64>,
}

impl Variant for Sotw {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;

    fn request(
        &mut self,
        cp: &DevControlPlane,
        served: &Served,
        req: DiscoveryRequest,
    ) -> Vec<DiscoveryResponse> {
        let changed = self.subscribed.get(&req.type_url) != Some(&req.resource_names);
        let first = req.response_nonce.is_empty();
        let out = (first || changed)
            .then(|| respond(served, &req.type_url, &req.resource_names, cp.next_nonce()));
        self.subscribed.insert(req.type_url, req.resource_names);
        out.into_iter().collect()
    }

    fn snapshot(&mut self, cp: &DevControlPlane, served: &Served) -> Vec<DiscoveryResponse> {
        let before = self.sent.replace(served.snapshot.version());
        self.subscribed
            .iter()
            .filter(|(t, _)| *t != type_url::SECRET)
            // A type with nothing changed since the last snapshot sent is
            // not sent again (every response carries all of a type).
            .filter(|(t, _)| {
                let changed = before.and_then(|v| served.changed_since(v, t));
                changed.is_none_or(|names| !names.is_empty())
            })
            .map(|(t, names)| respond(served, t, names, cp.next_nonce()))
            .collect()
    }

    fn secret_request(
        &mut self,
        cp: &DevControlPlane,
        secrets: &secrets::Served,
        req: DiscoveryRequest,
    ) -> Vec<DiscoveryResponse> {
        let changed = self.subscribed.get(&req.type_url) != Some(&req.resource_names);
        let first = req.response_nonce.is_empty();
        let out = (first || changed).then(|| {
            self.secrets_sent = Some(secrets.generation);
            secrets.respond(&req.resource_names, cp.next_nonce())
        });
        self.subscribed.insert(req.type_url, req.resource_names);
        out.into_iter().collect()
    }

    fn secrets(
        &mut self,
        cp: &DevControlPlane,
        secrets: &secrets::Served,
    ) -> Vec<DiscoveryResponse> {
        // A request may have been answered with these secrets already.
        if self.secrets_sent == Some(secrets.generation) {
            return Vec::new();
        }
        let Some(names) = self.subscribed.get(type_url::SECRET) else {
            return Vec::new();
        };
        self.secrets_sent = Some(secrets.generation);
        vec![secrets.respond(names, cp.next_nonce())]
    }
}

/// Incremental: per type, the subscription and what the client holds.
#[derive(Default)]
struct Delta {
    subs: BTreeMap<String, DeltaSub>,
}

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn request(
        &mut self,
        cp: &DevControlPlane,
        served: &Served,
        req: DeltaDiscoveryRequest,
    ) -> Vec<DeltaDiscoveryResponse> {
        let (first, changed) = self.subscribe(&req);
        let Some(sub) = self.subs.get_mut(&req.type_url) else {
            return Vec::new();
        };
        if !changed {
            return Vec::new();
        }
        // What the subscription covers changed: compare everything.
        sub.diffed = None;
        match sub.diff(served, &req.type_url, cp.next_nonce()) {
            Some(resp) => vec![resp],
            // The first answer is sent even when empty: Envoy waits for it
            // before serving.
            None if first => vec![empty_delta(served.version(), req.type_url, cp)],
            None => Vec::new(),
        }
    }

    fn snapshot(&mut self, cp: &DevControlPlane, served: &Served) -> Vec<DeltaDiscoveryResponse> {
        self.subs
            .iter_mut()
            .filter(|(t, _)| *t != type_url::SECRET)
            .filter_map(|(t, sub)| sub.diff(served, t, cp.next_nonce()))
            .collect()
    }

    fn secret_request(
        &mut self,
        cp: &DevControlPlane,
        secrets: &secrets::Served,
        req: DeltaDiscoveryRequest,
    ) -> Vec<DeltaDiscoveryResponse> {
        let (first, changed) = self.subscribe(&req);
        let Some(sub) = self.subs.get_mut(&req.type_url).filter(|_| changed) else {
            return Vec::new();
        };
        match secrets.diff(sub.wildcard, &sub.names, &mut sub.sent, cp.next_nonce()) {
            Some(resp) => vec![resp],
            None if first => vec![empty_delta(
                secrets.generation.to_string(),
                req.type_url,
                cp,
            )],
            None => Vec::new(),
        }
    }

    fn secrets(
        &mut self,
        cp: &DevControlPlane,
        secrets: &secrets::Served,
    ) -> Vec<DeltaDiscoveryResponse> {
        let Some(sub) = self.subs.get_mut(type_url::SECRET) else {
            return Vec::new();
        };
        secrets
            .diff(sub.wildcard, &sub.names, &mut sub.sent, cp.next_nonce())
            .into_iter()
            .collect()
    }
}

/// An empty incremental response (a first answer is sent even when empty).
fn empty_delta(version: String, t: String, cp: &DevControlPlane) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: version,
        type_url: t,
        nonce: cp.next_nonce(),
        ..Default::default()
    }
}

impl Delta {
    /// Applies a request's subscription changes: whether it is the type's
    /// first request, and whether what the subscription covers changed.
    fn subscribe(&mut self, req: &DeltaDiscoveryRequest) -> (bool, bool) {
        let first = !self.subs.contains_key(&req.type_url);
        let sub = self.subs.entry(req.type_url.clone()).or_default();
        if first {
            // No names at first is the legacy wildcard.
            sub.wildcard = req.resource_names_subscribe.is_empty();
            for (name, version) in &req.initial_resource_versions {
                sub.sent.insert(name.clone(), Some(version.clone()));
            }
        }
        let mut changed = first;
        for name in &req.resource_names_subscribe {
            if name == "*" {
                sub.wildcard = true;
            } else {
                changed |= sub.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                sub.wildcard = false;
            }
            changed |= sub.names.remove(name);
            sub.sent.remove(name);
        }
        (first, changed)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for DevControlPlane {
    type StreamAggregatedResourcesStream = Outgoing<DiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Ok(Response::new(serve_stream::<Sotw>(
            self.clone(),
            request.into_inner(),
        )))
    }

    type DeltaAggregatedResourcesStream = Outgoing<DeltaDiscoveryResponse>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Ok(Response::new(serve_stream::<Delta>(
            self.clone(),
            request.into_inner(),
        )))
    }
}

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService
    for DevControlPlane
{
    type StreamSecretsStream = Outgoing<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Ok(Response::new(serve_stream::<Sotw>(
            self.clone(),
            request.into_inner(),
        )))
    }

    type DeltaSecretsStream = Outgoing<DeltaDiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Ok(Response::new(serve_stream::<Delta>(
            self.clone(),
            request.into_inner(),
        )))
    }

    async fn fetch_secrets(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented("secrets are streamed: use StreamSecrets or DeltaSecrets"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proxyless_core::config::{Config, Endpoint};
    use proxyless_core::snapshot::Source;

    /// What a response says, in a form to compare: names and versions
    /// sent, names removed.
    fn said(r: Option<DeltaDiscoveryResponse>) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
        let r = r.unwrap_or_default();
        let sent = r
            .resources
            .into_iter()
            .map(|x| (x.name, x.version))
            .collect();
        (sent, r.removed_resources.into_iter().collect())
    }

    /// A first request for the `default` secret, in either variant.
    fn secret_requests() -> (DiscoveryRequest, DeltaDiscoveryRequest) {
        (
            DiscoveryRequest {
                type_url: type_url::SECRET.into(),
                resource_names: vec!["default".into()],
                ..Default::default()
            },
            DeltaDiscoveryRequest {
                type_url: type_url::SECRET.into(),
                resource_names_subscribe: vec!["default".into()],
                ..Default::default()
            },
        )
    }

    /// Plays a stream's secret events for one variant: the first request
    /// is answered; a rotation lands beside the ACK of that answer; the
    /// ACK must leave the rotation to the secrets branch, which sends it
    /// once. Returns the versions each step sent.
    fn rotation_beside_an_ack<V: Variant>(
        first: V::Request,
        ack: V::Request,
        version: impl Fn(&V::Response) -> String,
    ) -> Vec<Vec<String>> {
        let mesh = Mesh::from_config(Config::from_yaml("services: []").unwrap()).unwrap();
        let secrets = Secrets::new();
        let cp = DevControlPlane::new(mesh).with_secrets(secrets.clone());
        secrets.set_certificate("default", "chain 1", "key 1");
        let mut rx = cp.secrets.subscribe();
        rx.borrow_and_update();
        let mut state = V::default();
        let versions = |out: Vec<V::Response>| out.iter().map(&version).collect::<Vec<_>>();
        let mut steps = vec![versions(answer_secret_request(&mut state, &cp, &rx, first))];
        secrets.set_certificate("default", "chain 2", "key 2");
        steps.push(versions(answer_secret_request(&mut state, &cp, &rx, ack)));
        assert!(
            rx.has_changed().unwrap(),
            "the ACK took the rotation's wake-up"
        );
        let now = rx.borrow_and_update().clone();
        steps.push(versions(state.secrets(&cp, &now)));
        // The same secrets again send nothing.
        steps.push(versions(state.secrets(&cp, &now)));
        steps
    }

    #[test]
    fn a_rotation_beside_an_ack_is_sent_once_on_either_variant() {
        let (sotw, delta) = secret_requests();
        let sotw_ack = DiscoveryRequest {
            response_nonce: "1".into(),
            version_info: "1".into(),
            ..sotw.clone()
        };
        let delta_ack = DeltaDiscoveryRequest {
            response_nonce: "1".into(),
            resource_names_subscribe: Vec::new(),
            ..delta.clone()
        };
        let want = vec![vec!["1"], vec![], vec!["2"], vec![]];
        assert_eq!(
            rotation_beside_an_ack::<Sotw>(sotw, sotw_ack, |r| r.version_info.clone()),
            want
        );
        assert_eq!(
            rotation_beside_an_ack::<Delta>(delta, delta_ack, |r| r.system_version_info.clone()),
            want
        );
    }

    #[test]
    fn an_incremental_diff_says_what_a_full_one_says() {
        let yaml = "services: [{ name: a, routes: [{ to: [x] }] }, { name: b, routes: [{ to: [y] }] }]\n\
                    backends: [{ name: x, endpoints: ['127.0.0.1:1'] }, { name: y, endpoints: ['127.0.0.1:2'] }]";
        let mut cfg = Config::from_yaml(yaml).unwrap();
        let snap =
            |cfg: &Config, v| Arc::new(Snapshot::compile(cfg.clone(), v, Source::Code).unwrap());
        let mut served = Served::of(snap(&cfg, 1), None, None);
        let t = served::TYPES[3];
        let mut subs: Vec<(DeltaSub, DeltaSub)> = vec![
            // A wildcard, and one naming x, y and a name never served.
            (
                DeltaSub {
                    wildcard: true,
                    ..Default::default()
                },
                DeltaSub {
                    wildcard: true,
                    ..Default::default()
                },
            ),
            (
                DeltaSub {
                    names: ["x", "y", "z"].map(String::from).into(),
                    ..Default::default()
                },
                DeltaSub {
                    names: ["x", "y", "z"].map(String::from).into(),
                    ..Default::default()
                },
            ),
        ];
        let steps: [fn(&mut Config); 4] = [
            |c| c.backends[0].endpoints.push(Endpoint::new("127.0.0.1:3")),
            |c| {
                c.backends.remove(1);
                c.services.remove(1);
            },
            |c| {
                let mut y = (*c.backends[0]).clone();
                y.name = "y".into();
                c.backends.push(y.into());
            },
            |c| c.backends[1].endpoints[0] = Endpoint::new("127.0.0.1:4"),
        ];
        for (v, step) in (2..).zip(steps.iter().map(Some).chain([None])) {
            for (inc, full) in &mut subs {
                full.diffed = None;
                let (a, b) = (
                    inc.diff(&served, t, "n".into()),
                    full.diff(&served, t, "n".into()),
                );
                assert_eq!(said(a), said(b), "at version {}", v - 1);
                assert_eq!(inc.sent, full.sent);
            }
            if let Some(step) = step {
                step(&mut cfg);
                served = Served::of(snap(&cfg, v), None, Some(&served));
                assert!(served.since.is_some());
            }
        }
    }
}
