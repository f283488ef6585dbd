//! xDS resources as a control plane sends them: a Listener, a
//! RouteConfiguration, a Cluster and a ClusterLoadAssignment from
//! arbitrary protobuf bytes (length-prefixed, in that order). Translation
//! to the config model, inbound policy from RBAC filters, and the names to
//! follow never panic; what translates either validates and compiles or
//! is refused.
#![no_main]

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::Any;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proxyless_core::snapshot::{Snapshot, Source};
use proxyless_core::xds::translate::{Kept, Resources, to_config, type_url, wanted};

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
    // Held as the client holds them (encoded, decoded again on use), and
    // through the journal the client keeps.
    let types = [type_url::LISTENER, type_url::ROUTE, type_url::CLUSTER];
    for t in types {
        let value = chunk(&mut data).to_vec();
        if t == type_url::LISTENER
            && let Ok(l) = Listener::decode(value.as_slice())
        {
            let _ = proxyless_core::xds::translate::inbound_of(&l, "svc", &mut Vec::new());
        }
        let _ = r.insert(
            t,
            &Any {
                type_url: t.to_owned(),
                value,
            },
        );
    }
    let value = data.to_vec();
    let _ = r.insert(
        type_url::ENDPOINTS,
        &Any {
            type_url: type_url::ENDPOINTS.to_owned(),
            value,
        },
    );
    let _ = wanted(&r);
    let names: Vec<String> = r.listeners().keys().cloned().collect();
    let mut warnings = Vec::new();
    let mut kept = Kept::default();
    let changes = r.take_changes();
    if let Ok(built) = to_config(&r, names.iter(), &changes, &mut warnings, &mut kept) {
        // What is kept from a build stands for a fresh translation.
        let mut again = Vec::new();
        let none = r.take_changes();
        let rebuilt = to_config(&r, names.iter(), &none, &mut again, &mut kept);
        assert_eq!(rebuilt.ok().as_ref(), Some(&built));
        assert_eq!(again, warnings);
        if built.config.validate().is_ok() {
            let _ = Snapshot::compile(built.config, 1, Source::Code);
        }
    }
});
