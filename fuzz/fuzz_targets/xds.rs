//! xDS resources as a control plane sends them: a Listener, a
//! RouteConfiguration, a Cluster and a ClusterLoadAssignment from
//! arbitrary protobuf bytes (length-prefixed, in that order). Translation
//! to the config model, inbound policy from RBAC filters, and the names to
//! follow never panic; what translates either validates and compiles or
//! is refused; and a build from what the last one kept and the resources'
//! journal equals a build from nothing, through the changes a client's
//! responses make (resent, dropped, sent back, rolled back).
#![no_main]

use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::Any;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proxyless_core::config::Name;
use proxyless_core::snapshot::{Snapshot, Source};
use proxyless_core::xds::translate::{
    Built, Changes, Kept, Resources, to_config, type_url, wanted,
};

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

/// Builds the config of `r` from what `kept` holds and the journal, and
/// afresh; the two must agree.
fn both(r: &mut Resources, names: &[Name], kept: &mut Kept) -> Option<Built> {
    let changes = r.take_changes();
    let mut w1 = Vec::new();
    let from_kept = to_config(r, names.iter(), &changes, &mut w1, kept);
    let mut w2 = Vec::new();
    let fresh = to_config(
        r,
        names.iter(),
        &Changes::default(),
        &mut w2,
        &mut Kept::default(),
    );
    assert_eq!(from_kept.as_ref().ok(), fresh.as_ref().ok());
    assert_eq!(from_kept.is_err(), fresh.is_err());
    if fresh.is_ok() {
        assert_eq!(w1, w2);
    }
    fresh.ok()
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut r = Resources::default();
    // Held as the client holds them (encoded, decoded again on use), and
    // through the journal the client keeps.
    let types = [type_url::LISTENER, type_url::ROUTE, type_url::CLUSTER];
    let mut sent = Vec::new();
    for t in types {
        let value = chunk(&mut data).to_vec();
        if t == type_url::LISTENER
            && let Ok(l) = Listener::decode(value.as_slice())
        {
            let _ = proxyless_core::xds::translate::inbound_of(&l, "svc", &mut Vec::new());
        }
        sent.push(Any {
            type_url: t.to_owned(),
            value,
        });
    }
    sent.push(Any {
        type_url: type_url::ENDPOINTS.to_owned(),
        value: data.to_vec(),
    });
    for any in &sent {
        let _ = r.insert(&any.type_url, any);
    }
    let _ = wanted(&r);
    let names: Vec<Name> = r.listeners().keys().cloned().collect();
    let mut kept = Kept::default();
    let Some(built) = both(&mut r, &names, &mut kept) else {
        return;
    };
    if built.config.validate().is_ok() {
        let _ = Snapshot::compile(built.config, 1, Source::Code);
    }
    // What a client's later responses do, each followed by a build that
    // must agree with one from nothing: the same again; a state of the
    // world resent unchanged; the assignment dropped and sent back; a
    // rolled-back response.
    both(&mut r, &names, &mut kept);
    for any in &sent {
        let before = r.take(&any.type_url);
        let carried = match r.insert_replacing(&any.type_url, any, Some(&before)) {
            Ok((_, held)) => usize::from(held),
            Err(_) => {
                r.restore(before);
                continue;
            }
        };
        r.replaced(&any.type_url, &before, carried);
        both(&mut r, &names, &mut kept);
    }
    let assignments: Vec<Name> = r.endpoints().keys().cloned().collect();
    for name in &assignments {
        r.remove(type_url::ENDPOINTS, name);
    }
    both(&mut r, &names, &mut kept);
    if let Some(any) = sent.last() {
        let _ = r.insert(type_url::ENDPOINTS, any);
    }
    both(&mut r, &names, &mut kept);
    let saved = r.save(type_url::LISTENER);
    r.clear(type_url::LISTENER);
    r.restore(saved);
    both(&mut r, &names, &mut kept);
});
