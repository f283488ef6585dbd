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
            let resource_names_subscribe = names.iter().map(|n| n.to_string()).collect();
            // What we hold, so the control plane sends only what changed.
            let initial_resource_versions = state.resources.versions(t).into_iter().collect();
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
        mut resp: DeltaDiscoveryResponse,
    ) -> Vec<DeltaDiscoveryRequest> {
        let Some(t) = state.answering(&resp.type_url) else {
            return Vec::new();
        };
        // Only what this response touches can need putting back.
        let names = resp.resources.iter().map(|r| r.name.as_str());
        let removed = resp.removed_resources.iter().map(String::as_str);
        let saved = state.resources.save_only(t, names.chain(removed));
        let applied = apply_delta(state, t, &resp);
        if applied.is_ok() && resp.resources.len() >= state.resources.count(t) / 4 {
            // Many inserted at once (the first response, a large change):
            // their map's nodes are left half full.
            state.resources.pack(t);
        }
        // Held now: the decoded response (a copy of every resource, 13 MB
        // for 20,000 assignments) is not kept through the build and
        // compile, where the client's memory peaks. Only the names stay.
        let touched: Vec<String> = std::mem::take(&mut resp.resources)
            .into_iter()
            .map(|r| r.name)
            .chain(std::mem::take(&mut resp.removed_resources))
            .collect();
        let version = if resp.system_version_info.is_empty() {
            resp.nonce.clone()
        } else {
            resp.system_version_info.clone()
        };
        let label = format!("version {version} of {} (incremental)", short(t));
        let outcome = applied.and_then(|()| state.publish(mesh, status, label));
        let reply = match &outcome {
            Ok(()) => DeltaDiscoveryRequest {
                node: state.node(),
                type_url: t.to_owned(),
                response_nonce: resp.nonce.clone(),
                ..Default::default()
            },
            Err(reason) => {
                state
                    .resources
                    .restore_only(t, touched.iter().map(String::as_str), saved);
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
            resource_names_subscribe: change.added.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: change.removed.iter().map(|n| n.to_string()).collect(),
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

/// Holds an incremental response's resources, each with its version, and
/// drops its removed ones. Stops at the first resource that cannot be held
/// (the caller puts back what was there, versions included).
fn apply_delta(
    state: &mut State,
    t: &'static str,
    resp: &DeltaDiscoveryResponse,
) -> Result<(), XdsError> {
    for r in &resp.resources {
        let Some(any) = &r.resource else { continue };
        state.within_size(t, any)?;
        match state.resources.insert_versioned(t, any, &r.version) {
            Ok(name) if name != r.name => {
                // What was saved to put back is by the names sent.
                state.resources.remove(t, &name);
                let msg = format!("holds one named `{name}`");
                return Err(XdsError::new(msg).in_resource(short(t), &r.name));
            }
            Ok(name) if !state.names(t).contains(&name) => state.resources.remove(t, &name),
            Ok(_) => {}
            Err(e) => return Err(e.in_resource(short(t), &r.name)),
        }
    }
    for name in &resp.removed_resources {
        state.resources.remove(t, name);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::on_demand::OnDemand;
    use super::*;
    use crate::config::Config;
    use crate::xds::XdsSettings;
    use crate::xds::translate::{from_config, type_url};
    use envoy_types::pb::envoy::service::discovery::v3::Resource;
    use envoy_types::pb::google::protobuf::Any;
    use std::sync::Arc;

    fn response(nonce: &str, resources: Vec<(String, Any, &str)>) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url::LISTENER.to_owned(),
            nonce: nonce.to_owned(),
            resources: resources
                .into_iter()
                .map(|(name, any, version)| Resource {
                    name,
                    version: version.to_owned(),
                    resource: Some(any),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// What a reconnecting client tells the control plane it holds.
    fn told(state: &mut State) -> Vec<(String, String)> {
        let open = Delta::open(state);
        let listeners = open.iter().find(|r| r.type_url == type_url::LISTENER);
        let mut v: Vec<_> = listeners
            .map(|r| r.initial_resource_versions.clone().into_iter().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The versions a reconnect tells are those of what is held: taken
    /// with an accepted resource, kept through a NACK, gone with a removal.
    #[test]
    fn a_reconnect_tells_the_versions_of_what_is_held() {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let demand = Arc::new(OnDemand::new(tx, std::time::Duration::from_millis(1)));
        let mut settings = XdsSettings::new("http://127.0.0.1:1", "test", vec!["a".into()]);
        settings.api = crate::xds::Api::Delta;
        let mut state = State::new(&settings, demand);
        let (mesh, status) = (Mesh::empty(), XdsStatus::default());
        let cfg = Config::from_yaml(
            "services: [{ name: a, routes: [{ to: [b] }] }]\nbackends: [{ name: b, endpoints: ['127.0.0.1:1'] }]",
        )
        .unwrap();
        let listeners = from_config(&cfg).encoded(type_url::LISTENER, |_| true);
        let (name, any) = listeners.into_iter().next().unwrap();
        assert_eq!(name, "a");
        assert!(told(&mut state).is_empty());

        let broken = Any {
            type_url: any.type_url.clone(),
            value: vec![0xff, 0xff],
        };
        for (nonce, sent, version, nacked, held) in [
            ("1", &any, "v1", false, "v1"),
            // The same bytes at a new version: the version follows.
            ("2", &any, "v2", false, "v2"),
            // A version that cannot be held is NACKed; the one before stays.
            ("3", &broken, "v3", true, "v2"),
        ] {
            let resp = response(nonce, vec![(name.clone(), sent.clone(), version)]);
            let reply = Delta::respond(&mut state, &mesh, &status, resp);
            assert_eq!(reply[0].error_detail.is_some(), nacked, "response {nonce}");
            let want = [("a".to_owned(), held.to_owned())];
            assert_eq!(told(&mut state), want, "after response {nonce}");
        }

        // Removed: nothing to tell.
        let mut removal = response("4", Vec::new());
        removal.removed_resources = vec![name];
        Delta::respond(&mut state, &mesh, &status, removal);
        assert!(told(&mut state).is_empty());
    }
}
