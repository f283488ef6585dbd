//! The resources a client holds, by type and name, and a journal of what
//! changed in them: what lets a config be built again from only what a
//! response touched.

use super::type_url;
use super::{Held, Refer};
use crate::config::Name;
use crate::xds::XdsError;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

/// Names, hashed fast (they come from a control plane, and a table of them
/// is only ever probed by this process: foldhash is seeded per process).
pub(super) type NameSet = HashSet<Name, foldhash::fast::RandomState>;

/// The resources a client holds, by name. Every change made through these
/// methods is written in a journal ([`take_changes`](Self::take_changes)).
#[derive(Debug, Default, Clone)]
pub struct Resources {
    pub(super) listeners: BTreeMap<Name, Held<Listener>>,
    pub(super) routes: BTreeMap<Name, Held<RouteConfiguration>>,
    pub(super) clusters: BTreeMap<Name, Held<Cluster>>,
    pub(super) endpoints: BTreeMap<Name, Held<ClusterLoadAssignment>>,
    /// SDS secrets (certificates and trust for identity sources; they
    /// feed no config).
    pub(super) secrets: BTreeMap<Name, Held<Secret>>,
    journal: Changes,
    /// Bumped whenever what the held listeners, routes and clusters refer
    /// to may have changed (one was added, dropped, or refers elsewhere).
    refers_generation: u64,
}

/// What changed in [`Resources`] since the journal was last taken: per
/// type, the names of resources held anew, replaced by other bytes, or
/// dropped.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Listeners, route configurations, clusters, assignments, secrets (in
    /// [`KINDS`] order).
    names: [NameSet; 5],
    /// Changes too wide to list (a rolled-back response): anything may have.
    everything: bool,
}

/// The types in the order [`Changes`] keeps them.
const KINDS: [&str; 5] = [
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::CLUSTER,
    type_url::ENDPOINTS,
    type_url::SECRET,
];

/// A type's place in the journal (its index in [`KINDS`]), for the build,
/// which asks about every kept service and backend after each response:
/// found once, not looked up by type URL on every question.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot(usize);

impl Slot {
    pub(super) const LISTENER: Slot = Slot(0);
    pub(super) const ROUTE: Slot = Slot(1);
    pub(super) const CLUSTER: Slot = Slot(2);
    pub(super) const ENDPOINTS: Slot = Slot(3);

    /// The place of type `t`; `None` for a type the journal does not keep.
    fn of(t: &str) -> Option<Slot> {
        KINDS.iter().position(|k| *k == t).map(Slot)
    }
}

impl Changes {
    /// Whether the resource `name` of type `t` may have changed (of a type
    /// the journal does not keep, it cannot say otherwise).
    pub fn touched(&self, t: &str, name: &str) -> bool {
        Slot::of(t).is_none_or(|slot| self.touched_in(slot, name))
    }

    /// [`touched`](Self::touched), the type given by its place.
    pub(super) fn touched_in(&self, slot: Slot, name: &str) -> bool {
        self.everything || self.names.get(slot.0).is_some_and(|s| s.contains(name))
    }

    /// Whether nothing is known to be unchanged (everything is to be
    /// looked at).
    pub fn everything(&self) -> bool {
        self.everything
    }

    /// Notes `name`, held already (the journal shares it: nothing is
    /// looked up in the table of names).
    fn note(&mut self, t: &str, name: &Name) {
        if let Some(s) = Slot::of(t).and_then(|slot| self.names.get_mut(slot.0))
            && !s.contains(name)
        {
            s.insert(name.clone());
        }
    }
}

/// One type's held resources, saved to put back if a response is NACKed.
#[derive(Debug, Clone)]
pub enum Saved {
    /// Listeners.
    Listeners(BTreeMap<Name, Held<Listener>>),
    /// Route configurations.
    Routes(BTreeMap<Name, Held<RouteConfiguration>>),
    /// Clusters.
    Clusters(BTreeMap<Name, Held<Cluster>>),
    /// Endpoint assignments.
    Endpoints(BTreeMap<Name, Held<ClusterLoadAssignment>>),
    /// SDS secrets.
    Secrets(BTreeMap<Name, Held<Secret>>),
}

/// Runs `$body` with `$m` bound to the map a [`Saved`] holds, whatever its
/// type.
macro_rules! on_saved {
    ($s:expr, |$m:ident| $body:expr) => {
        match $s {
            Saved::Listeners($m) => $body,
            Saved::Routes($m) => $body,
            Saved::Clusters($m) => $body,
            Saved::Endpoints($m) => $body,
            Saved::Secrets($m) => $body,
        }
    };
}

impl Saved {
    fn names(&self) -> Box<dyn Iterator<Item = &Name> + '_> {
        on_saved!(self, |m| Box::new(m.keys()))
    }

    fn len(&self) -> usize {
        on_saved!(self, |m| m.len())
    }
}

/// A type of resource a client holds: the name it is known by, and where
/// [`Resources`] and [`Saved`] keep it.
trait Kind: Message + Default + Refer + prost::Name {
    fn name(&self) -> &str;
    fn map(r: &Resources) -> &BTreeMap<Name, Held<Self>>;
    fn map_mut(r: &mut Resources) -> &mut BTreeMap<Name, Held<Self>>;
    fn saved(map: BTreeMap<Name, Held<Self>>) -> Saved;
    fn unsaved(s: &Saved) -> Option<&BTreeMap<Name, Held<Self>>>;
}

macro_rules! kind {
    ($M:ty, $field:ident, $variant:ident, $name:ident) => {
        impl Kind for $M {
            fn name(&self) -> &str {
                &self.$name
            }
            fn map(r: &Resources) -> &BTreeMap<Name, Held<Self>> {
                &r.$field
            }
            fn map_mut(r: &mut Resources) -> &mut BTreeMap<Name, Held<Self>> {
                &mut r.$field
            }
            fn saved(map: BTreeMap<Name, Held<Self>>) -> Saved {
                Saved::$variant(map)
            }
            fn unsaved(s: &Saved) -> Option<&BTreeMap<Name, Held<Self>>> {
                match s {
                    Saved::$variant(m) => Some(m),
                    _ => None,
                }
            }
        }
    };
}

kind!(Listener, listeners, Listeners, name);
kind!(RouteConfiguration, routes, Routes, name);
kind!(Cluster, clusters, Clusters, name);
kind!(ClusterLoadAssignment, endpoints, Endpoints, cluster_name);
kind!(Secret, secrets, Secrets, name);

/// Runs `$body` with `$M` the [`Kind`] of type URL `$t`: the one place a
/// type URL picks a type (any other URL is taken as the assignments', as
/// the journal takes it; the client admits only these five).
macro_rules! by_type {
    ($t:expr, $M:ident => $body:expr) => {
        match $t {
            type_url::LISTENER => {
                type $M = Listener;
                $body
            }
            type_url::ROUTE => {
                type $M = RouteConfiguration;
                $body
            }
            type_url::CLUSTER => {
                type $M = Cluster;
                $body
            }
            type_url::SECRET => {
                type $M = Secret;
                $body
            }
            _ => {
                type $M = ClusterLoadAssignment;
                $body
            }
        }
    };
}

/// The first field 1 of a protobuf message, if it is a UTF-8 string: the
/// name of each of the four resource types (`name`, or an assignment's
/// `cluster_name`). Only a guess, to find a held resource whose bytes may
/// be these: equal bytes decode to the same name, so a guess that finds
/// one is right, and any other is decoded in full.
fn peek_name(mut b: &[u8]) -> Option<&str> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    // Within the first few fields (encoders write fields in order).
    for _ in 0..8 {
        let key = varint(&mut b)?;
        let len = match key & 7 {
            0 => {
                varint(&mut b)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut b)?).ok()?,
            5 => 4,
            _ => return None,
        };
        let (field, rest) = (b.get(..len)?, b.get(len..)?);
        if key == (1 << 3) | 2 {
            return std::str::from_utf8(field).ok();
        }
        b = rest;
    }
    None
}

/// Holds `any` in `map`; what it replaced or held before is written in
/// `journal`. `before` is the same type's resources a state-of-the-world
/// response replaces: a resource sent again with the same bytes keeps its
/// holding from there (or from `map`), without being decoded. Returns the
/// name, and whether `before` had one of that name.
fn hold<M: Kind>(
    r: &mut Resources,
    before: Option<&BTreeMap<Name, Held<M>>>,
    any: &Any,
    t: &str,
    version: Option<&str>,
) -> Result<(Name, bool), XdsError> {
    let at_version = |held: Held<M>| match version {
        Some(v) => held.with_version(v),
        None => held,
    };
    let bytes = any.value.as_slice();
    let known = |r: &Resources, name: &str| {
        before
            .and_then(|b| b.get_key_value(name))
            .or_else(|| M::map(r).get_key_value(name))
            .filter(|(_, h)| h.bytes() == bytes)
            .map(|(n, h)| (n.clone(), h.clone()))
    };
    if let Some(name) = peek_name(bytes)
        && let Some((name, held)) = known(r, name)
    {
        let was_before = before.is_some_and(|b| b.contains_key(&name));
        M::map_mut(r).insert(name.clone(), at_version(held));
        return Ok((name, was_before));
    }
    let (held, v) = Held::<M>::decoded(bytes)
        .map_err(|e| XdsError::new(format!("cannot decode a {}: {e}", any.type_url)))?;
    let name = Name::new(v.name());
    let old = (before.and_then(|b| b.get(&name)))
        .or_else(|| M::map(r).get(&name))
        .cloned();
    if old.as_ref().is_none_or(|o| o.refers() != held.refers()) && refers_anything(t) {
        r.refers_generation += 1;
    }
    let was_before = before.is_some_and(|b| b.contains_key(&name));
    let held = match old {
        // The same bytes again keep the holding, and with it what was
        // translated from it.
        Some(o) if o == held => o,
        _ => {
            r.journal.note(t, &name);
            held
        }
    };
    M::map_mut(r).insert(name.clone(), at_version(held));
    Ok((name, was_before))
}

/// Whether resources of type `t` name others (assignments and secrets
/// name nothing, so they never change what is followed).
fn refers_anything(t: &str) -> bool {
    t != type_url::ENDPOINTS && t != type_url::SECRET
}

impl Resources {
    /// Listeners.
    pub fn listeners(&self) -> &BTreeMap<Name, Held<Listener>> {
        &self.listeners
    }

    /// Route configurations.
    pub fn routes(&self) -> &BTreeMap<Name, Held<RouteConfiguration>> {
        &self.routes
    }

    /// Clusters.
    pub fn clusters(&self) -> &BTreeMap<Name, Held<Cluster>> {
        &self.clusters
    }

    /// Endpoint assignments.
    pub fn endpoints(&self) -> &BTreeMap<Name, Held<ClusterLoadAssignment>> {
        &self.endpoints
    }

    /// SDS secrets.
    pub fn secrets(&self) -> &BTreeMap<Name, Held<Secret>> {
        &self.secrets
    }

    /// What changed since the last call (the journal starts empty again).
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.journal)
    }

    /// A count that changes whenever what the held listeners, route
    /// configurations and clusters name may have (see
    /// [`wanted`](super::wanted)).
    pub fn refers_generation(&self) -> u64 {
        self.refers_generation
    }

    /// Decodes `any` as a resource of type `t` and holds it (replacing one
    /// of the same name); returns its name.
    pub fn insert(&mut self, t: &str, any: &Any) -> Result<Name, XdsError> {
        self.insert_replacing(t, any, None).map(|(name, _)| name)
    }

    /// [`insert`](Self::insert) for a state-of-the-world response, which
    /// replaces `before` (what [`take`](Self::take) moved out): a resource
    /// sent again unchanged keeps its holding. Returns the name, and
    /// whether `before` held one of that name.
    pub fn insert_replacing(
        &mut self,
        t: &str,
        any: &Any,
        before: Option<&Saved>,
    ) -> Result<(Name, bool), XdsError> {
        Self::admits(t, any)?;
        by_type!(t, M => hold::<M>(self, before.and_then(M::unsaved), any, t, None))
    }

    /// Ends a state-of-the-world replacement of type `t`: what `before`
    /// held and the response did not carry is written in the journal as
    /// dropped. `carried` counts the names the response carried that
    /// `before` held.
    pub fn replaced(&mut self, t: &str, before: &Saved, carried: usize) {
        if carried == before.len() {
            return;
        }
        let gone: Vec<&Name> = before.names().filter(|n| !self.holds(t, n)).collect();
        if !gone.is_empty() && refers_anything(t) {
            self.refers_generation += 1;
        }
        for n in gone {
            self.journal.note(t, n);
        }
    }

    /// Every listener, route configuration, cluster and assignment held,
    /// as received, with its type: the encodings shared, not copied
    /// (secrets are left out: they carry private keys).
    pub fn all_encoded(&self) -> impl Iterator<Item = (&'static str, Arc<[u8]>)> + '_ {
        fn each<'a, M>(
            t: &'static str,
            map: &'a BTreeMap<Name, Held<M>>,
        ) -> impl Iterator<Item = (&'static str, Arc<[u8]>)> + 'a {
            map.values().map(move |h| (t, h.shared_bytes()))
        }
        each(type_url::LISTENER, &self.listeners)
            .chain(each(type_url::ROUTE, &self.routes))
            .chain(each(type_url::CLUSTER, &self.clusters))
            .chain(each(type_url::ENDPOINTS, &self.endpoints))
    }

    /// How many resources of type `t` are held.
    pub fn count(&self, t: &str) -> usize {
        by_type!(t, M => M::map(self).len())
    }

    /// Whether the resource `name` of type `t` is held.
    pub fn holds(&self, t: &str, name: &str) -> bool {
        by_type!(t, M => M::map(self).contains_key(name))
    }

    /// Rebuilds the map of type `t` with its B-tree's nodes full. Inserted
    /// one by one (what a response does), a map's nodes are left about
    /// half full: 10,000 held resources took 2,500 nodes of 11 slots
    /// (1.2 MB) where 910 do. A client packs a type after a response that
    /// inserted many; the next inserts split only the nodes they land in.
    pub fn pack(&mut self, t: &str) {
        by_type!(t, M => {
            let map = std::mem::take(M::map_mut(self));
            *M::map_mut(self) = map.into_iter().collect();
        })
    }

    /// Drops the resource `name` of type `t`.
    pub fn remove(&mut self, t: &str, name: &str) {
        let removed = by_type!(t, M => M::map_mut(self).remove_entry(name).map(|(n, _)| n));
        if let Some(name) = removed {
            self.dropped(t, &name);
        }
    }

    fn dropped(&mut self, t: &str, name: &Name) {
        self.journal.note(t, name);
        if refers_anything(t) {
            self.refers_generation += 1;
        }
    }

    /// Keeps only the resources of type `t` that `keep` accepts.
    pub fn retain(&mut self, t: &str, keep: impl Fn(&str) -> bool) {
        let mut gone = Vec::new();
        by_type!(t, M => M::map_mut(self).retain(|k, _| {
            let stays = keep(k);
            if !stays {
                gone.push(k.clone());
            }
            stays
        }));
        for name in gone {
            self.dropped(t, &name);
        }
    }

    /// Drops every resource of type `t`.
    pub fn clear(&mut self, t: &str) {
        self.retain(t, |_| false);
    }

    /// A copy of the resources of type `t`.
    pub fn save(&self, t: &str) -> Saved {
        by_type!(t, M => M::saved(M::map(self).clone()))
    }

    /// Moves the resources of type `t` out (leaving none), to put back with
    /// [`restore`](Self::restore): what a state-of-the-world response,
    /// which replaces them all, saves without copying. Follow it with
    /// [`insert_replacing`](Self::insert_replacing) and
    /// [`replaced`](Self::replaced), or with `restore`.
    pub fn take(&mut self, t: &str) -> Saved {
        by_type!(t, M => M::saved(std::mem::take(M::map_mut(self))))
    }

    /// A copy of the resources of type `t` named in `names` (those held),
    /// to put back with [`restore_only`](Self::restore_only): what an
    /// incremental response, which touches only these, saves.
    pub fn save_only<'a>(&self, t: &str, names: impl IntoIterator<Item = &'a str>) -> Saved {
        fn pick<'a, M: Clone>(
            map: &BTreeMap<Name, M>,
            names: impl IntoIterator<Item = &'a str>,
        ) -> BTreeMap<Name, M> {
            names
                .into_iter()
                .filter_map(|n| map.get_key_value(n))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }
        by_type!(t, M => M::saved(pick(M::map(self), names)))
    }

    /// [`insert`](Self::insert) for an incremental response: the resource
    /// is held at the `version` the control plane gave it (empty: none),
    /// which a reconnect tells back so that it is not sent again.
    pub fn insert_versioned(
        &mut self,
        t: &str,
        any: &Any,
        version: &str,
    ) -> Result<Name, XdsError> {
        Self::admits(t, any)?;
        by_type!(t, M => hold::<M>(self, None, any, t, Some(version))).map(|(name, _)| name)
    }

    /// Whether `any` is of type `t`, as a response of type `t` must hold.
    fn admits(t: &str, any: &Any) -> Result<(), XdsError> {
        if any.type_url == t {
            Ok(())
        } else {
            Err(XdsError::new(format!(
                "a {} in a response of type {t}",
                any.type_url
            )))
        }
    }

    /// The held resources of type `t` that have a version, with it.
    pub fn versions(&self, t: &str) -> Vec<(String, String)> {
        fn of<M>(map: &BTreeMap<Name, Held<M>>) -> Vec<(String, String)> {
            map.iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.version()?.to_owned())))
                .collect()
        }
        by_type!(t, M => of(M::map(self)))
    }

    /// Undoes changes to `names` of type `t`: drops them, then puts back
    /// what [`save_only`](Self::save_only) copied.
    pub fn restore_only<'a>(
        &mut self,
        t: &str,
        names: impl IntoIterator<Item = &'a str>,
        saved: Saved,
    ) {
        for n in names {
            self.remove(t, n);
        }
        for n in saved.names() {
            self.dropped(t, n);
        }
        fn put_back<M: Kind>(r: &mut Resources, m: BTreeMap<Name, Held<M>>) {
            M::map_mut(r).extend(m);
        }
        on_saved!(saved, |m| put_back(self, m));
    }

    /// Puts back what [`save`](Self::save) copied (or
    /// [`take`](Self::take) moved out).
    pub fn restore(&mut self, saved: Saved) {
        self.journal.everything = true;
        self.refers_generation += 1;
        fn replace<M: Kind>(r: &mut Resources, m: BTreeMap<Name, Held<M>>) {
            *M::map_mut(r) = m;
        }
        on_saved!(saved, |m| replace(self, m));
    }

    /// The encoded resources of type `t` whose names `pick` accepts, by name.
    pub fn encoded(&self, t: &str, pick: impl Fn(&str) -> bool) -> Vec<(String, Any)> {
        fn enc<M: Message + prost::Name>(
            map: &BTreeMap<Name, Held<M>>,
            pick: impl Fn(&str) -> bool,
        ) -> Vec<(String, Any)> {
            map.iter()
                .filter(|(k, _)| pick(k))
                .map(|(k, v)| {
                    let any = Any {
                        type_url: M::type_url(),
                        value: v.bytes().to_vec(),
                    };
                    (k.to_string(), any)
                })
                .collect()
        }
        by_type!(t, M => enc(M::map(self), pick))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn any<M: Message + prost::Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }

    fn cluster(name: &str, eds: bool) -> Any {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            ClusterDiscoveryType, DiscoveryType,
        };
        any(&Cluster {
            name: name.into(),
            cluster_discovery_type: eds
                .then_some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        })
    }

    #[test]
    fn a_name_is_peeked_without_decoding_and_never_trusted() {
        let bytes = cluster("reviews", false).value;
        assert_eq!(peek_name(&bytes), Some("reviews"));
        assert_eq!(peek_name(&[]), None);
        assert_eq!(peek_name(&[0x0a, 0xff]), None, "a length past the end");
        assert_eq!(peek_name(&[0x0b]), None, "a group");
        // Two names: prost keeps the last; the peek finds the first, and
        // the held one (stored by its decoded name) has other bytes.
        let mut r = Resources::default();
        let mut two = any(&Cluster {
            name: "a".into(),
            ..Default::default()
        });
        two.value.extend_from_slice(&[0x0a, 0x01, b'b']);
        assert_eq!(r.insert(type_url::CLUSTER, &two).unwrap(), "b");
        assert_eq!(r.insert(type_url::CLUSTER, &two).unwrap(), "b");
        assert!(r.clusters().contains_key("b") && !r.clusters().contains_key("a"));
    }

    #[test]
    fn packing_keeps_every_holding_and_changes_nothing() {
        let t = type_url::CLUSTER;
        let mut r = Resources::default();
        for i in (0..100).rev() {
            r.insert(t, &cluster(&format!("c{i:03}"), i % 2 == 0))
                .unwrap();
        }
        let before = r.clusters().clone();
        let (g, _) = (r.refers_generation(), r.take_changes());
        r.pack(t);
        assert_eq!(r.clusters().len(), 100);
        for ((n1, h1), (n2, h2)) in before.iter().zip(r.clusters()) {
            assert_eq!(n1, n2);
            assert!(Held::same(h1, h2), "{n1} is the same holding");
        }
        assert!(!r.take_changes().touched(t, "c000"), "nothing changed");
        assert_eq!(r.refers_generation(), g);
        r.insert(t, &cluster("c100", false)).unwrap();
        assert!(r.take_changes().touched(t, "c100"), "inserting goes on");
    }

    #[test]
    fn the_places_name_the_types_they_stand_for() {
        for (slot, t) in [
            (Slot::LISTENER, type_url::LISTENER),
            (Slot::ROUTE, type_url::ROUTE),
            (Slot::CLUSTER, type_url::CLUSTER),
            (Slot::ENDPOINTS, type_url::ENDPOINTS),
        ] {
            assert_eq!(Slot::of(t).map(|s| s.0), Some(slot.0), "{t}");
        }
        // A type the journal does not keep is never mixed into another's
        // names, and may always have changed.
        let mut changes = Changes::default();
        changes.note("type.example/Unknown", &Name::new("a"));
        assert!(changes.names.iter().all(NameSet::is_empty));
        assert!(changes.touched("type.example/Unknown", "a"));
        assert!(!changes.touched(type_url::ENDPOINTS, "a"));
    }

    #[test]
    fn the_journal_lists_what_changed_and_only_that() {
        let t = type_url::CLUSTER;
        let mut r = Resources::default();
        r.insert(t, &cluster("a", false)).unwrap();
        r.insert(t, &cluster("b", true)).unwrap();
        let g = r.refers_generation();
        let changes = r.take_changes();
        assert!(changes.touched(t, "a") && changes.touched(t, "b"));
        assert!(!changes.touched(type_url::ENDPOINTS, "a"));

        // The same bytes again: nothing changed, the holding is kept.
        let held = r.clusters()["a"].clone();
        r.insert(t, &cluster("a", false)).unwrap();
        assert!(Held::same(&held, &r.clusters()["a"]));
        assert!(!r.take_changes().touched(t, "a"));
        assert_eq!(r.refers_generation(), g);

        // A state-of-the-world response that drops b and resends a.
        let before = r.take(t);
        let (name, was) = r
            .insert_replacing(t, &cluster("a", false), Some(&before))
            .unwrap();
        assert_eq!((name.as_str(), was), ("a", true));
        r.replaced(t, &before, 1);
        assert!(Held::same(&held, &r.clusters()["a"]));
        let changes = r.take_changes();
        assert!(changes.touched(t, "b") && !changes.touched(t, "a"));
        assert!(r.refers_generation() > g, "b referred to its assignment");

        // A change of what a cluster refers to moves the generation.
        let g = r.refers_generation();
        r.insert(t, &cluster("a", true)).unwrap();
        assert!(r.refers_generation() > g);
        assert!(r.take_changes().touched(t, "a"));

        // Undoing a response: everything is to be looked at again.
        let saved = r.save(t);
        r.restore(saved);
        assert!(r.take_changes().everything());
        assert!(!r.take_changes().everything());
    }
}
