//! Incremental xDS: responses carry what changed and what was removed;
//! subscriptions change by name.

use super::super::XdsStatus;
use super::{Change, State, TYPES, Variant, nack, short};
use crate::mesh::Mesh;
use crate::xds::XdsError;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;
/// Incremental.
pub(super) struct Delta;

impl Variant for Delta {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    fn open(state: &mut State) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        for t in TYPES {
            let names = state.names(t);
            if names.is_empty() {
                continue;
            }
            let resource_names_subscribe = names.iter().cloned().collect();
            // What we hold, so the control plane sends only what changed.
            let initial_resource_versions = state
                .resource_versions
                .get(t)
                .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            out.push(DeltaDiscoveryRequest {
                node: state.node(),
                type_url: t.to_owned(),
                resource_names_subscribe,
                initial_resource_versions,
                ..Default::default()
            });
        }
        out
    }

    fn type_url(resp: &Self::Response) -> &str {
        &resp.type_url
    }

    fn respond(
        state: &mut State,
        mesh: &Mesh,
        status: &XdsStatus,
        resp: DeltaDiscoveryResponse,
    ) -> Vec<DeltaDiscoveryRequest> {
        let Some(t) = state.answering(&resp.type_url) else {
            return Vec::new();
        };
        // Only what this response touches can need putting back.
        let touched: Vec<&str> = resp
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .chain(resp.removed_resources.iter().map(String::as_str))
            .collect();
        let saved = state.resources.save_only(t, touched.iter().copied());
        let applied = apply_delta(state, t, &resp);
        let (applied, versions) = match applied {
            Ok(versions) => (Ok(()), versions),
            Err(e) => (Err(e), Vec::new()),
        };
        let version = if resp.system_version_info.is_empty() {
            resp.nonce.clone()
        } else {
            resp.system_version_info.clone()
        };
        let label = format!("version {version} of {} (incremental)", short(t));
        let outcome = applied.and_then(|()| state.publish(mesh, status, label));
        let reply = match &outcome {
            Ok(()) => {
                let held = state.resource_versions.entry(t).or_default();
                for (name, v) in versions {
                    held.insert(name, v);
                }
                for name in &resp.removed_resources {
                    held.remove(name);
                }
                DeltaDiscoveryRequest {
                    node: state.node(),
                    type_url: t.to_owned(),
                    response_nonce: resp.nonce.clone(),
                    ..Default::default()
                }
            }
            Err(reason) => {
                state
                    .resources
                    .restore_only(t, touched.iter().copied(), saved);
                DeltaDiscoveryRequest {
                    node: state.node(),
                    type_url: t.to_owned(),
                    response_nonce: resp.nonce.clone(),
                    error_detail: Some(nack(reason.to_string())),
                    ..Default::default()
                }
            }
        };
        let changes = state.outcome(mesh, status, t, &version, &outcome);
        let mut out = vec![reply];
        out.extend(changes.into_iter().filter_map(|c| Self::change(state, c)));
        out
    }

    fn change(state: &mut State, change: Change) -> Option<DeltaDiscoveryRequest> {
        Some(DeltaDiscoveryRequest {
            node: state.node(),
            type_url: change.type_url.to_owned(),
            resource_names_subscribe: change.added,
            resource_names_unsubscribe: change.removed,
            ..Default::default()
        })
    }

    async fn call(
        mut client: AggregatedDiscoveryServiceClient<Channel>,
        requests: mpsc::Receiver<DeltaDiscoveryRequest>,
    ) -> Result<tonic::Streaming<DeltaDiscoveryResponse>, tonic::Status> {
        let stream = super::super::stream_from(requests);
        Ok(client
            .delta_aggregated_resources(stream)
            .await?
            .into_inner())
    }
}

/// Holds an incremental response's resources and drops its removed ones;
/// the versions of what it holds now. Stops at the first resource that
/// cannot be held (the caller puts back what was there).
fn apply_delta(
    state: &mut State,
    t: &'static str,
    resp: &DeltaDiscoveryResponse,
) -> Result<Vec<(String, String)>, XdsError> {
    let mut versions = Vec::new();
    for r in &resp.resources {
        let Some(any) = &r.resource else { continue };
        state.within_size(t, any)?;
        match state.resources.insert(t, any) {
            Ok(name) if name != r.name => {
                // What was saved to put back is by the names sent.
                state.resources.remove(t, &name);
                let msg = format!("holds one named `{name}`");
                return Err(XdsError::new(msg).in_resource(short(t), &r.name));
            }
            Ok(name) if !state.names(t).contains(&name) => state.resources.remove(t, &name),
            Ok(name) => versions.push((name, r.version.clone())),
            Err(e) => return Err(e.in_resource(short(t), &r.name)),
        }
    }
    for name in &resp.removed_resources {
        state.resources.remove(t, name);
    }
    Ok(versions)
}
