//! The development control plane: serves a [`Mesh`]'s config as xDS
//! resources over ADS (state of the world) and pushes every new snapshot to
//! every stream. It uses the same translation module as the client, in the
//! other direction ([`from_config`](super::translate::from_config)).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = mesh_core::Mesh::from_file("mesh.yaml")?;     // watched: edits are pushed
//! mesh_core::xds::server::serve(mesh, "127.0.0.1:18000".parse()?).await?;
//! # Ok(()) }
//! ```

use super::translate::{self, Resources, type_url};
use crate::mesh::Mesh;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// The ADS service over a mesh's live config.
#[derive(Debug, Clone)]
pub struct DevControlPlane {
    mesh: Mesh,
    nonce: Arc<AtomicU64>,
    stop: tokio::sync::watch::Receiver<bool>,
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
        }
    }

    /// The tonic service, for a `tonic::transport::Server`.
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

/// Serves `mesh` as ADS on `addr` until the task is dropped.
pub async fn serve(mesh: Mesh, addr: std::net::SocketAddr) -> Result<(), tonic::transport::Error> {
    serve_with_shutdown(mesh, addr, std::future::pending()).await
}

/// Serves `mesh` as ADS on `addr` until `shutdown` completes; then ends
/// every stream (clients reconnect elsewhere or later) and stops listening.
pub async fn serve_with_shutdown(
    mesh: Mesh,
    addr: std::net::SocketAddr,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    tonic::transport::Server::builder()
        .add_service(DevControlPlane::with_stop(mesh, stop_rx).into_service())
        .serve_with_shutdown(addr, signal)
        .await
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

fn respond(
    resources: &Resources,
    t: &str,
    names: &[String],
    version: u64,
    nonce: u64,
) -> DiscoveryResponse {
    fn pick<M: Message + prost::Name>(map: &BTreeMap<String, M>, names: &[String]) -> Vec<Any> {
        map.iter()
            .filter(|(k, _)| names.is_empty() || names.contains(k))
            .map(|(_, v)| Any {
                type_url: M::type_url(),
                value: v.encode_to_vec(),
            })
            .collect()
    }
    let resources = match t {
        type_url::LISTENER => pick(&resources.listeners, names),
        type_url::ROUTE => pick(&resources.routes, names),
        type_url::CLUSTER => pick(&resources.clusters, names),
        type_url::ENDPOINTS => pick(&resources.endpoints, names),
        _ => Vec::new(),
    };
    DiscoveryResponse {
        version_info: version.to_string(),
        resources,
        type_url: t.to_owned(),
        nonce: nonce.to_string(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for DevControlPlane {
    type StreamAggregatedResourcesStream = Responses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut incoming = request.into_inner();
        let (tx, mut rx) = mpsc::channel::<Result<DiscoveryResponse, Status>>(16);
        let mesh = self.mesh.clone();
        let nonces = self.nonce.clone();
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let mut subscribed: BTreeMap<String, Vec<String>> = BTreeMap::new();
            let mut updates = mesh.subscribe();
            let mut node = String::new();
            // Translated once per snapshot, not once per ACK.
            let mut snap = mesh.snapshot();
            let mut resources = translate::from_config(snap.config());
            loop {
                let now = mesh.snapshot();
                if now.version() != snap.version() {
                    resources = translate::from_config(now.config());
                    snap = now;
                }
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    // `new()` has no stop signal: its sender is gone and
                    // `changed()` errs at once, which disables this branch.
                    Ok(()) = stop.changed() => continue,
                    msg = incoming.message() => {
                        let req = match msg {
                            Ok(Some(r)) => r,
                            _ => return,
                        };
                        if let Some(n) = &req.node {
                            node = n.id.clone();
                        }
                        if let Some(err) = &req.error_detail {
                            tracing::warn!(%node, type_url = %req.type_url, version = %req.version_info, "NACK: {}", err.message);
                        }
                        let changed = subscribed.get(&req.type_url) != Some(&req.resource_names);
                        let first = req.response_nonce.is_empty();
                        subscribed.insert(req.type_url.clone(), req.resource_names.clone());
                        if first || changed {
                            let nonce = nonces.fetch_add(1, Ordering::Relaxed) + 1;
                            let resp = respond(&resources, &req.type_url, &req.resource_names, snap.version(), nonce);
                            if tx.send(Ok(resp)).await.is_err() {
                                return;
                            }
                        }
                    }
                    next = updates.next() => {
                        let Some(next) = next else { return };
                        if next.version() != snap.version() {
                            resources = translate::from_config(next.config());
                            snap = next;
                        }
                        for (t, names) in &subscribed {
                            let nonce = nonces.fetch_add(1, Ordering::Relaxed) + 1;
                            if tx.send(Ok(respond(&resources, t, names, snap.version(), nonce))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let stream = super::futures_core_stream::from_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }

    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented(
            "incremental (delta) xDS is not served yet; use state of the world",
        ))
    }
}
