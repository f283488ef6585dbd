//! xDS resources as a control plane sends them: a Listener, a
//! RouteConfiguration, a Cluster and a ClusterLoadAssignment from
//! arbitrary protobuf bytes (length-prefixed, in that order). Translation
//! to the config model, inbound policy from RBAC filters, and the names to
//! follow never panic; what translates either validates and compiles or
//! is refused.
#![no_main]

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use libfuzzer_sys::fuzz_target;
use proxyless_core::snapshot::{Snapshot, Source};
use proxyless_core::xds::translate::{Held, Resources, to_config, wanted};

/// The next length-prefixed chunk (a u16, little-endian).
fn chunk<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    if data.len() < 2 {
        return std::mem::take(data);
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (c, rest) = data[2..].split_at(n);
    *data = rest;
    c
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut r = Resources::default();
    // Held as the client holds them: encoded, decoded again on use.
    if let Ok((held, l)) = Held::<Listener>::decoded(chunk(&mut data)) {
        let mut warnings = Vec::new();
        let _ = proxyless_core::xds::translate::inbound_of(&l, "svc", &mut warnings);
        r.listeners.insert(l.name.clone(), held);
    }
    if let Ok((held, rc)) = Held::<RouteConfiguration>::decoded(chunk(&mut data)) {
        r.routes.insert(rc.name, held);
    }
    if let Ok((held, c)) = Held::<Cluster>::decoded(chunk(&mut data)) {
        r.clusters.insert(c.name, held);
    }
    if let Ok((held, cla)) = Held::<ClusterLoadAssignment>::decoded(data) {
        r.endpoints.insert(cla.cluster_name, held);
    }
    let _ = wanted(&r);
    let names: Vec<String> = r.listeners.keys().cloned().collect();
    let mut warnings = Vec::new();
    if let Ok(built) = to_config(&r, names.iter(), &mut warnings) {
        if built.config.validate().is_ok() {
            let _ = Snapshot::compile(built.config, 1, Source::Code);
        }
    }
});
