//! SDS on its own stream: when the settings name an SDS server (a node
//! agent's socket, `MESH_SDS_SERVER`), the secrets the config names are
//! fetched from it over the Secret Discovery Service (`StreamSecrets`,
//! state of the world) instead of the ADS stream, as Envoy fetches Istio's
//! `default` and `ROOTCA` from the agent's `sds-grpc` socket.
//!
//! The stream follows the names the ADS client publishes; each response
//! is checked whole (every secret loads, or the response is NACKed and
//! nothing of it is applied) and ACKed. A stream that fails is reported on
//! the secrets' identity sources and reopened after a backoff of 100 ms
//! doubling to 10 s; a panic in it is caught and reported the same way.
//! The task ends when the mesh is dropped.

use super::secrets;
use super::{CatchUnwind, channel, nack};
use crate::identity::tls::IdentityError;
use crate::mesh::Mesh;
use crate::xds::XdsError;
use crate::xds::translate::{SDS_PREFIX, type_url};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message;
use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Runs the SDS stream to `server` for the names `names` carries, until
/// the mesh is dropped.
pub(crate) async fn run(
    mesh: Weak<crate::mesh::Inner>,
    server: String,
    node: Node,
    mut names: watch::Receiver<BTreeSet<String>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if Mesh::upgrade_xds(&mesh).is_none() {
            return;
        }
        let run = CatchUnwind(Box::pin(stream(&mesh, &server, &node, &mut names))).await;
        let ended = run.unwrap_or_else(|panic| {
            Err(XdsError::new(format!(
                "the SDS stream failed and was restarted: {panic}"
            )))
        });
        match ended {
            Ok(true) => backoff = Duration::from_millis(100),
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(%server, "SDS stream ended: {e}; retrying in {backoff:?}");
                if let Some(mesh) = Mesh::upgrade_xds(&mesh) {
                    report(&mesh, &names.borrow(), &server, &e);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Records a stream failure on every secret's identity source.
fn report(mesh: &Mesh, names: &BTreeSet<String>, server: &str, e: &XdsError) {
    for name in names {
        if let Some(identity) = mesh.identity_source(&format!("{SDS_PREFIX}{name}")) {
            let error = IdentityError::Material {
                what: format!("SDS server {server}"),
                problem: e.to_string(),
            };
            identity.record_error(&error);
        }
    }
}

fn request(
    node: &Node,
    names: &BTreeSet<String>,
    acked: &DiscoveryResponse,
    error: Option<String>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: acked.version_info.clone(),
        node: Some(node.clone()),
        resource_names: names.iter().cloned().collect(),
        type_url: type_url::SECRET.to_owned(),
        response_nonce: acked.nonce.clone(),
        error_detail: error.map(nack),
        ..Default::default()
    }
}

/// One stream: `Ok(true)` when it ended after working, `Ok(false)` when
/// the mesh is gone.
async fn stream(
    mesh: &Weak<crate::mesh::Inner>,
    server: &str,
    node: &Node,
    names: &mut watch::Receiver<BTreeSet<String>>,
) -> Result<bool, XdsError> {
    let channel = channel(server)
        .await
        .map_err(|e| XdsError::new(format!("cannot connect: {e}")))?;
    let (tx, rx) = mpsc::channel(4);
    // The last response ACKed (its version) and its nonce.
    let mut acked = DiscoveryResponse::default();
    let wanted = names.borrow_and_update().clone();
    let _ = tx.send(request(node, &wanted, &acked, None)).await;
    let mut responses = SecretDiscoveryServiceClient::new(channel)
        .stream_secrets(crate::xds::stream_from(rx))
        .await
        .map_err(|e| XdsError::new(format!("StreamSecrets: {e}")))?
        .into_inner();
    let mut worked = false;
    loop {
        tokio::select! {
            changed = names.changed() => {
                if changed.is_err() {
                    return Ok(false);
                }
                let wanted = names.borrow_and_update().clone();
                let _ = tx.send(request(node, &wanted, &acked, None)).await;
            }
            message = responses.message() => {
                let resp = match message {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(XdsError::new("the server ended the stream")),
                    Err(e) => return Err(XdsError::new(e.to_string())),
                };
                let Some(mesh) = Mesh::upgrade_xds(mesh) else {
                    return Ok(false);
                };
                let outcome = apply(&mesh, &resp);
                let wanted = names.borrow().clone();
                let reply = match outcome {
                    Ok(()) => {
                        worked = true;
                        acked = resp;
                        request(node, &wanted, &acked, None)
                    }
                    Err(e) => {
                        tracing::warn!(%server, "SDS response NACKed: {e}");
                        let nacked = DiscoveryResponse { nonce: resp.nonce, ..acked.clone() };
                        request(node, &wanted, &nacked, Some(e.to_string()))
                    }
                };
                if tx.send(reply).await.is_err() {
                    return Ok(worked);
                }
            }
        }
    }
}

/// Decodes and applies a response's secrets, all or none.
fn apply(mesh: &Mesh, resp: &DiscoveryResponse) -> Result<(), XdsError> {
    if resp.type_url != type_url::SECRET {
        return Err(XdsError::new(format!(
            "a response of type {}",
            resp.type_url
        )));
    }
    let mut all = Vec::with_capacity(resp.resources.len());
    for any in &resp.resources {
        if any.type_url != type_url::SECRET {
            return Err(XdsError::new(format!("a {} among secrets", any.type_url)));
        }
        let secret = Secret::decode(any.value.as_slice())
            .map_err(|e| XdsError::new(format!("cannot decode a Secret: {e}")))?;
        all.push(secret);
    }
    secrets::apply_list(mesh, all.iter().map(|s| (s.name.as_str(), s)))
}
