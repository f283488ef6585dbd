//! Building the config the held resources describe, again after each
//! response, at the cost of what the response changed: what the last build
//! translated is kept, and the resources' journal ([`Changes`]) says which
//! of it is out of date.

use super::cluster::{backend_of, is_eds};
use super::resources::Slot;
use super::{Changes, Held, Refers, Resources, cluster_complete, service_of};
use crate::config::{Backend, Config, EqualHeld, Name, RetryPolicy, Service, Shared};
use crate::xds::XdsError;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use std::collections::BTreeSet;
use std::sync::{Arc, LazyLock};

/// What the held resources describe for the subscribed listeners.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Built {
    /// The services whose listener and everything it references are held,
    /// and the backends they use.
    pub config: Config,
    /// Listeners held whose route configuration, clusters or endpoints
    /// have not all arrived yet.
    pub incomplete: Vec<Name>,
    /// Subscribed listeners the control plane has not sent (not yet, or
    /// they do not exist).
    pub missing: Vec<Name>,
}

/// What the last build translated, and from which holdings. A service or
/// backend none of whose resources changed since is not translated again
/// but shared, as a [`Shared`] config part, with the config built before
/// (which lets the mesh skip validating and compiling it again).
#[derive(Debug, Default)]
pub struct Kept {
    services: ByName<KeptService>,
    /// In name order (the order of the config's backends); each is named
    /// as its cluster, by its backend's name.
    backends: Vec<KeptBackend>,
    /// Counts builds, to tell the services the last one saw.
    build: u64,
    /// Retry policies, each held once by the services translated (a
    /// control plane's default is on every route).
    policies: EqualHeld<RetryPolicy>,
}

/// Values by name, in name order: a sorted vector, looked up by binary
/// search. A hash table's buckets come in powers of two (16,384 of 144
/// bytes for 10,000 kept services); this holds what it holds.
///
/// Names new to it wait aside until [`ByName::settle`] merges them in one
/// pass: inserting each in place would move the entries after it every
/// time, quadratic when thousands of services arrive among thousands.
#[derive(Debug)]
struct ByName<V> {
    sorted: Vec<(Name, V)>,
    /// Inserted since the last settle, not yet found by lookups.
    added: Vec<(Name, V)>,
}

impl<V> Default for ByName<V> {
    fn default() -> Self {
        Self {
            sorted: Vec::new(),
            added: Vec::new(),
        }
    }
}

/// At most this many names new to a [`ByName`] are put in place one by one
/// (each moves the entries after it); more are merged into a new vector.
const INSERT_IN_PLACE: usize = 16;

impl<V> ByName<V> {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.sorted.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    /// The value of `name`, unless it was inserted since the last settle.
    fn get(&self, name: &str) -> Option<&V> {
        self.find(name).ok().map(|i| &self.sorted[i].1)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        let i = self.find(name).ok()?;
        Some(&mut self.sorted[i].1)
    }

    /// Holds `v` as `name`, found by lookups from the next settle on if the
    /// name is new; gives back what it held before, and where `v` now is.
    fn insert(&mut self, name: Name, v: V) -> (Option<V>, &mut V) {
        match self.find(&name) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.sorted[i].1, v);
                (Some(old), &mut self.sorted[i].1)
            }
            Err(_) => {
                self.added.push((name, v));
                let last = self.added.len() - 1;
                (None, &mut self.added[last].1)
            }
        }
    }

    /// Merges what was inserted since the last settle into name order; of
    /// a name inserted twice, the last value stays.
    fn settle(&mut self) {
        let mut added = std::mem::take(&mut self.added);
        if added.is_empty() {
            return;
        }
        if !added.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable, so the last of equal names stays last.
            added.sort_by(|a, b| a.0.cmp(&b.0));
            added.reverse();
            added.dedup_by(|a, b| a.0 == b.0);
            added.reverse();
        }
        if self.sorted.is_empty() {
            self.sorted = added;
        } else if added.len() <= INSERT_IN_PLACE {
            for (name, v) in added {
                if let Err(i) = self.find(&name) {
                    self.sorted.insert(i, (name, v));
                }
            }
        } else {
            let old = std::mem::take(&mut self.sorted);
            let mut merged = Vec::with_capacity(old.len() + added.len());
            let mut added = added.into_iter().peekable();
            for entry in old {
                while let Some(a) = added.next_if(|(n, _)| *n < entry.0) {
                    merged.push(a);
                }
                merged.push(entry);
            }
            merged.extend(added);
            self.sorted = merged;
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.sorted.retain(|(_, v)| keep(v));
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.sorted.iter().map(|(_, v)| v)
    }

    fn len(&self) -> usize {
        self.sorted.len()
    }

    /// Gives back room a build grew into and no longer needs (a vector
    /// doubles as it grows).
    fn fit(&mut self) {
        if self.sorted.capacity() > self.sorted.len() + self.sorted.len() / 8 + 16 {
            self.sorted.shrink_to_fit();
        }
        self.added = Vec::new();
    }
}

#[derive(Debug, Clone)]
struct KeptService {
    listener: Held<Listener>,
    /// Its route configuration by RDS, if not inline (named by the
    /// listener).
    routes: Option<Held<RouteConfiguration>>,
    /// The clusters it uses, and the assignments of those that are EDS.
    uses: Arc<[Name]>,
    eds: Arc<[Name]>,
    service: Shared<Service>,
    warnings: Arc<[String]>,
    seen: u64,
}

#[derive(Debug, Clone)]
struct KeptBackend {
    cluster: Held<Cluster>,
    /// Its assignment, when it is an EDS cluster and that was held (named
    /// by the cluster).
    endpoints: Option<Held<ClusterLoadAssignment>>,
    backend: Shared<Backend>,
    warnings: Arc<[String]>,
}

impl KeptService {
    /// Whether its own resources (listener, route configuration) are
    /// unchanged by the journal.
    fn own_untouched(&self, name: &str, c: &Changes) -> bool {
        let routes = match self.listener.refers() {
            Refers::Rds(n) => Some(n.as_str()),
            _ => None,
        };
        untouched(c, (Slot::LISTENER, name), (Slot::ROUTE, routes))
    }

    /// Whether what it uses (clusters, their assignments) is unchanged by
    /// the journal.
    fn uses_untouched(&self, c: &Changes) -> bool {
        self.uses.iter().all(|u| !c.touched_in(Slot::CLUSTER, u))
            && self.eds.iter().all(|e| !c.touched_in(Slot::ENDPOINTS, e))
    }

    /// Whether its own resources are the same holdings as `r` holds
    /// (looked up: what a build does when the journal cannot tell).
    fn same_holdings(&self, r: &Resources, l: &Held<Listener>) -> bool {
        let routes = match l.refers() {
            Refers::Rds(n) => r.routes.get(n),
            _ => None,
        };
        Held::same(&self.listener, l) && same_held(self.routes.as_ref(), routes)
    }

    /// Whether everything it uses is still held; brings the names of the
    /// assignments it depends on up to date. (Its translation does not
    /// depend on what the clusters say, only on their being complete.)
    fn still_complete(&mut self, r: &Resources) -> bool {
        if !self.uses.iter().all(|c| cluster_complete(r, c)) {
            return false;
        }
        let eds = eds_of(r, &self.uses);
        if *self.eds != *eds {
            self.eds = eds;
        }
        true
    }
}

/// The assignments the EDS clusters among `uses` name: `uses` itself
/// when they are the same names (an assignment is most often named as its
/// cluster is), not a copy.
fn eds_of(r: &Resources, uses: &Arc<[Name]>) -> Arc<[Name]> {
    let mut eds = BTreeSet::new();
    for c in uses.iter() {
        if let Some(Refers::Eds(e)) = r.clusters.get(c).map(Held::refers) {
            eds.insert(e.clone());
        }
    }
    if eds.iter().eq(uses.iter()) {
        return Arc::clone(uses);
    }
    shared(eds.into_iter().collect(), &NO_NAMES)
}

/// `list` shared; an empty list is one shared allocation (`empty`), not
/// one per kept service or backend (most have no warnings, many no EDS).
fn shared<T>(list: Vec<T>, empty: &LazyLock<Arc<[T]>>) -> Arc<[T]> {
    if list.is_empty() {
        Arc::clone(empty)
    } else {
        list.into()
    }
}

static NO_WARNINGS: LazyLock<Arc<[String]>> = LazyLock::new(|| Arc::from([]));
static NO_NAMES: LazyLock<Arc<[Name]>> = LazyLock::new(|| Arc::from([]));

impl KeptBackend {
    /// Its name: its cluster's.
    fn name(&self) -> &Name {
        &self.backend.name
    }

    /// Whether its cluster and the assignment it names are unchanged by
    /// the journal.
    fn untouched(&self, name: &str, c: &Changes) -> bool {
        let endpoints = match self.cluster.refers() {
            Refers::Eds(n) => Some(n.as_str()),
            _ => None,
        };
        untouched(c, (Slot::CLUSTER, name), (Slot::ENDPOINTS, endpoints))
    }

    /// Whether its cluster and assignment are the holdings given.
    fn same_holdings(
        &self,
        c: &Held<Cluster>,
        endpoints: Option<&Held<ClusterLoadAssignment>>,
    ) -> bool {
        Held::same(&self.cluster, c) && same_held(self.endpoints.as_ref(), endpoints)
    }
}

/// Whether a resource (type and name) and the one it reads, if any, are
/// unchanged by the journal.
fn untouched(c: &Changes, (t, name): (Slot, &str), (dt, dep): (Slot, Option<&str>)) -> bool {
    !c.everything() && !c.touched_in(t, name) && dep.is_none_or(|d| !c.touched_in(dt, d))
}

/// Whether two optional holdings are both absent or the same holding.
fn same_held<M>(a: Option<&Held<M>>, b: Option<&Held<M>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Held::same(a, b),
        _ => false,
    }
}

/// The config the held resources describe, for the listeners `services`.
/// A service goes in only when everything it references is held; the
/// others are named in [`Built::incomplete`] and [`Built::missing`].
/// Warnings list what was ignored; an error names what cannot be honoured.
///
/// `kept` is what the last build translated, and `changes` what changed in
/// `r` since (its journal, [`Resources::take_changes`]): what did not
/// change is taken from `kept` and shared with the last config. `kept` then
/// holds this build; after an error it is emptied, so the next build
/// translates everything. Give a `Kept::default()` to translate everything.
///
/// ```
/// use proxyless_core::config::{Config, Name, Shared};
/// use proxyless_core::xds::translate::{Kept, Resources, from_config, to_config, type_url};
///
/// let cfg = Config::from_yaml(
///     "services: [{ name: a, routes: [{ to: [x] }] }, { name: b, routes: [{ to: [y] }] }]\n\
///      backends: [{ name: x, endpoints: ['10.0.0.1:80'] }, { name: y, endpoints: ['10.0.0.2:80'] }]",
/// )?;
/// // Held as a client holds what a control plane sent.
/// let mut r = Resources::default();
/// let served = from_config(&cfg);
/// for t in [type_url::LISTENER, type_url::ROUTE, type_url::CLUSTER, type_url::ENDPOINTS] {
///     for (_, any) in served.encoded(t, |_| true) {
///         r.insert(t, &any)?;
///     }
/// }
/// let names = [Name::from("a"), Name::from("b")];
/// let mut kept = Kept::default();
/// let changes = r.take_changes();
/// let first = to_config(&r, &names, &changes, &mut Vec::new(), &mut kept)?;
///
/// // y's endpoints change: only backend y is translated again.
/// let mut next = cfg.clone();
/// next.backends[1].endpoints[0].address = "10.0.0.3:80".into();
/// let (_, any) = from_config(&next).encoded(type_url::ENDPOINTS, |n| n == "y").remove(0);
/// r.insert(type_url::ENDPOINTS, &any)?;
/// let changes = r.take_changes();
/// let second = to_config(&r, &names, &changes, &mut Vec::new(), &mut kept)?;
/// assert!(Shared::same(&first.config.services[1], &second.config.services[1]));
/// assert!(Shared::same(&first.config.backends[0], &second.config.backends[0]));
/// assert!(!Shared::same(&first.config.backends[1], &second.config.backends[1]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn to_config<'a>(
    r: &Resources,
    services: impl IntoIterator<Item = &'a Name>,
    changes: &Changes,
    warnings: &mut Vec<String>,
    kept: &mut Kept,
) -> Result<Built, XdsError> {
    let built = build(r, services, changes, warnings, kept);
    if built.is_err() {
        *kept = Kept::default();
    }
    built
}

fn build<'a>(
    r: &Resources,
    services: impl IntoIterator<Item = &'a Name>,
    changes: &Changes,
    warnings: &mut Vec<String>,
    kept: &mut Kept,
) -> Result<Built, XdsError> {
    kept.build += 1;
    let this = kept.build;
    let mut built = Built::default();
    // Whether the set of clusters the services use may have changed.
    let mut uses_changed = false;
    let mut seen = 0;
    for name in services {
        let Some(k) = service(
            r,
            name,
            changes,
            kept,
            &mut uses_changed,
            warnings,
            &mut built,
        )?
        else {
            continue;
        };
        k.seen = this;
        seen += 1;
        built.config.services.push(k.service.clone());
    }
    kept.services.settle();
    if kept.services.len() != seen {
        // Services gone, or incomplete again: what they used may go too.
        kept.services.retain(|k| k.seen == this);
        uses_changed = true;
    }
    if uses_changed || changes.everything() {
        let used: BTreeSet<&Name> = kept.services.values().flat_map(|k| k.uses.iter()).collect();
        let mut old = std::mem::take(&mut kept.backends).into_iter().peekable();
        let mut now = Vec::with_capacity(used.len());
        for name in used {
            // Both in name order: the old entry of this name, if any.
            while old.next_if(|k| k.name() < name).is_some() {}
            let prev = old.next_if(|k| k.name() == name);
            if let Some(k) = backend(r, name, prev, changes, warnings)? {
                now.push(k);
            }
        }
        kept.backends = now;
    } else {
        // The same clusters: each kept backend moves into the new list,
        // brought up to date when its resources changed.
        let old = std::mem::take(&mut kept.backends);
        let mut now = Vec::with_capacity(old.len());
        for k in old {
            let name = k.name().clone();
            if let Some(k) = backend(r, &name, Some(k), changes, warnings)? {
                now.push(k);
            }
        }
        kept.backends = now;
    }
    kept.services.fit();
    built.config.backends = kept.backends.iter().map(|k| k.backend.clone()).collect();
    Ok(built)
}

/// The kept service `name`, brought up to date with `r`: as it was when
/// none of its resources changed, translated again when its own did.
/// `None` when it is missing or incomplete (said so in `built`).
fn service<'k>(
    r: &Resources,
    name: &Name,
    changes: &Changes,
    kept: &'k mut Kept,
    uses_changed: &mut bool,
    warnings: &mut Vec<String>,
    built: &mut Built,
) -> Result<Option<&'k mut KeptService>, XdsError> {
    let old = kept.services.get(name.as_str());
    if !old.is_some_and(|k| k.own_untouched(name, changes)) {
        let Some(l) = r.listeners.get(name) else {
            built.missing.push(name.clone());
            return Ok(None);
        };
        if !old.is_some_and(|k| changes.everything() && k.same_holdings(r, l)) {
            let Some(fresh) = translate_service(r, name, l, &mut kept.policies, warnings)? else {
                built.incomplete.push(name.clone());
                return Ok(None);
            };
            let (old, now) = kept.services.insert(name.clone(), fresh);
            *uses_changed |= old.is_none_or(|old| old.uses != now.uses);
            return Ok(Some(now));
        }
    }
    let Some(k) = kept.services.get_mut(name.as_str()) else {
        return Ok(None);
    };
    // Its translation's warnings stand whether or not what it uses has
    // all arrived, as a translation afresh says them.
    warnings.extend(k.warnings.iter().cloned());
    if (changes.everything() || !k.uses_untouched(changes)) && !k.still_complete(r) {
        built.incomplete.push(name.clone());
        return Ok(None);
    }
    Ok(Some(k))
}

/// The service of listener `l` (subscribed as `name`), translated; `None`
/// while incomplete.
fn translate_service(
    r: &Resources,
    name: &str,
    l: &Held<Listener>,
    policies: &mut EqualHeld<RetryPolicy>,
    warnings: &mut Vec<String>,
) -> Result<Option<KeptService>, XdsError> {
    let mut own = Vec::new();
    let translated = service_of(r, name, &l.get(), &mut own);
    warnings.extend(own.iter().cloned());
    let Some((mut service, uses)) = translated? else {
        return Ok(None);
    };
    for route in &mut service.routes {
        if let Some(p) = &mut route.retry {
            let held = policies.share(p);
            *p = held;
        }
    }
    let routes = match l.refers() {
        Refers::Rds(n) => r.routes.get(n).cloned(),
        _ => None,
    };
    // What its route configuration names, read when it was held, is most
    // often what the service uses (both in name order): shared, not copied.
    let named = match &routes {
        Some(rc) => rc.refers(),
        None => l.refers(),
    };
    let uses: Vec<Name> = uses.into_iter().collect();
    let uses: Arc<[Name]> = match named {
        Refers::Clusters(named) if **named == *uses => Arc::clone(named),
        _ => uses.into(),
    };
    Ok(Some(KeptService {
        listener: l.clone(),
        routes,
        eds: eds_of(r, &uses),
        uses,
        service: service.into(),
        warnings: shared(own, &NO_WARNINGS),
        seen: 0,
    }))
}

/// The backend of cluster `name`: `prev` when none of its resources
/// changed, else translated afresh; `None` when the cluster is not held.
fn backend(
    r: &Resources,
    name: &str,
    prev: Option<KeptBackend>,
    changes: &Changes,
    warnings: &mut Vec<String>,
) -> Result<Option<KeptBackend>, XdsError> {
    if let Some(k) = prev.as_ref().filter(|k| k.untouched(name, changes)) {
        warnings.extend(k.warnings.iter().cloned());
        return Ok(prev);
    }
    let Some(c) = r.clusters.get(name) else {
        return Ok(None);
    };
    let endpoints = match c.refers() {
        Refers::Eds(eds) => r.endpoints.get(eds).cloned(),
        _ => None,
    };
    if let Some(k) = prev.filter(|k| k.same_holdings(c, endpoints.as_ref())) {
        warnings.extend(k.warnings.iter().cloned());
        return Ok(Some(k));
    }
    let cluster = c.get();
    let cla = match &endpoints {
        Some(e) => e.get(),
        None if is_eds(&cluster) => ClusterLoadAssignment::default(),
        None => cluster.load_assignment.clone().unwrap_or_default(),
    };
    let mut own = Vec::new();
    let backend =
        backend_of(&cluster, &cla, &mut own).map_err(|e| e.in_resource("Cluster", name))?;
    warnings.extend(own.iter().cloned());
    Ok(Some(KeptBackend {
        cluster: c.clone(),
        endpoints,
        backend: backend.into(),
        warnings: shared(own, &NO_WARNINGS),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{Saved, from_config, type_url};
    use super::*;
    use envoy_types::pb::google::protobuf::Any;
    use proptest::prelude::*;
    use prost::Message;

    const A: &str = "
services:
  - { name: s, routes: [{ to: [b] }] }
  - { name: t, routes: [{ timeout: 2s, to: [b, c] }] }
  - { name: u, routes: [{ to: [c] }] }
backends:
  - { name: b, endpoints: ['127.0.0.1:1'] }
  - { name: c, endpoints: ['127.0.0.1:2'] }
  - { name: d, endpoints: ['127.0.0.1:3'] }
";
    /// Version `v` of the config: 0 is `A`; 1 has the same names and other
    /// content (c's endpoints, t's timeout, u's backend: what u uses
    /// changes).
    fn version(v: usize) -> String {
        if v == 0 {
            return A.to_owned();
        }
        A.replace("127.0.0.1:2", "127.0.0.1:9")
            .replace("timeout: 2s", "timeout: 3s")
            .replace(
                "name: u, routes: [{ to: [c] }]",
                "name: u, routes: [{ to: [d] }]",
            )
    }
    const TYPES: [&str; 4] = [
        type_url::LISTENER,
        type_url::ROUTE,
        type_url::CLUSTER,
        type_url::ENDPOINTS,
    ];
    const NAMES: [&str; 6] = ["s", "t", "u", "b", "c", "d"];

    /// The resource `name` of type `t` in version `v`, if any.
    fn resource(v: usize, t: &str, name: &str) -> Option<Any> {
        let cfg = crate::config::Config::from_yaml(&version(v)).unwrap();
        let r = from_config(&cfg);
        let pick = |n: &str| n == name;
        r.encoded(t, pick).into_iter().next().map(|(_, a)| a)
    }

    /// Every resource of version A, held.
    fn held_a() -> Resources {
        let mut r = Resources::default();
        for t in TYPES {
            for n in NAMES {
                if let Some(any) = resource(0, t, n) {
                    r.insert(t, &any).unwrap();
                }
            }
        }
        r
    }

    fn names() -> Vec<Name> {
        ["s", "t", "u", "v"].map(Name::from).to_vec()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, usize, usize),
        Remove(usize, usize),
        /// A state-of-the-world response: per name, absent or a version.
        Replace(usize, [Option<usize>; 6]),
        /// A response rolled back whole.
        Rollback(usize, usize, usize),
        /// An incremental response rolled back.
        RollbackOnly(usize, usize, usize),
        /// Nothing changes: a build again from an empty journal.
        Build,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 0..6usize, 0..2usize).prop_map(|(t, n, v)| Op::Insert(t, n, v)),
            (0..4usize, 0..6usize).prop_map(|(t, n)| Op::Remove(t, n)),
            (
                0..4usize,
                proptest::array::uniform6(proptest::option::of(0..2usize))
            )
                .prop_map(|(t, vs)| Op::Replace(t, vs)),
            (0..4usize, 0..6usize, 0..2usize).prop_map(|(t, n, v)| Op::Rollback(t, n, v)),
            (0..4usize, 0..6usize, 0..2usize).prop_map(|(t, n, v)| Op::RollbackOnly(t, n, v)),
            Just(Op::Build),
        ]
    }

    fn apply(r: &mut Resources, op: &Op) {
        let insert = |r: &mut Resources, t: &str, n: &str, v: usize| {
            if let Some(any) = resource(v, t, n) {
                r.insert(t, &any).unwrap();
            }
        };
        match *op {
            Op::Insert(t, n, v) => insert(r, TYPES[t], NAMES[n], v),
            Op::Remove(t, n) => r.remove(TYPES[t], NAMES[n]),
            Op::Replace(t, vs) => {
                let t = TYPES[t];
                let before = r.take(t);
                let mut carried = 0;
                for (n, v) in NAMES.iter().zip(vs) {
                    if let Some(any) = v.and_then(|v| resource(v, t, n)) {
                        let (_, held) = r.insert_replacing(t, &any, Some(&before)).unwrap();
                        carried += usize::from(held);
                    }
                }
                r.replaced(t, &before, carried);
            }
            Op::Rollback(t, n, v) => {
                let saved: Saved = r.take(TYPES[t]);
                insert(r, TYPES[t], NAMES[n], v);
                r.restore(saved);
            }
            Op::RollbackOnly(t, n, v) => {
                let saved = r.save_only(TYPES[t], [NAMES[n]]);
                insert(r, TYPES[t], NAMES[n], v);
                r.restore_only(TYPES[t], [NAMES[n]], saved);
            }
            Op::Build => {}
        }
    }

    proptest! {
        /// Rounds of inserts (new names among held ones, repeated names,
        /// fewer and more than are put in place one by one), each settled,
        /// hold what a map would, in name order.
        #[test]
        fn by_name_holds_what_a_map_would(
            rounds in proptest::collection::vec(
                proptest::collection::vec((0..200u32, 0..4u8), 0..60),
                1..6,
            ),
        ) {
            let mut held = ByName::default();
            let mut model = std::collections::BTreeMap::new();
            for round in rounds {
                for (n, v) in round {
                    let name = Name::from(format!("svc-{n:03}"));
                    // A name inserted since the last settle is not found yet.
                    let settled = held.get(&name).is_some();
                    let (before, now) = held.insert(name.clone(), v);
                    prop_assert_eq!(*now, v);
                    prop_assert_eq!(before, model.get(&name).copied().filter(|_| settled));
                    model.insert(name, v);
                }
                held.settle();
                held.fit();
                let got: Vec<(Name, u8)> = held.sorted.iter().map(|(n, v)| (n.clone(), *v)).collect();
                let want: Vec<(Name, u8)> = model.iter().map(|(n, v)| (n.clone(), *v)).collect();
                prop_assert_eq!(got, want);
                for (n, v) in &model {
                    prop_assert_eq!(held.get(n), Some(v));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// However resources come and go, a build from what was kept and
        /// the journal equals a build from nothing.
        #[test]
        fn a_kept_build_equals_a_fresh_one(ops in proptest::collection::vec(op(), 1..24)) {
            let mut r = held_a();
            let mut kept = Kept::default();
            let changes = r.take_changes();
            let start = to_config(&r, &names(), &changes, &mut Vec::new(), &mut kept).unwrap();
            prop_assert_eq!(start.config.services.len(), 3);
            for op in &ops {
                apply(&mut r, op);
                let changes = r.take_changes();
                let (mut w1, mut w2) = (Vec::new(), Vec::new());
                let kept_build = to_config(&r, &names(), &changes, &mut w1, &mut kept).unwrap();
                let fresh = Changes::default();
                let fresh = to_config(&r, &names(), &fresh, &mut w2, &mut Kept::default()).unwrap();
                prop_assert_eq!(&kept_build, &fresh, "after {:?}", op);
                prop_assert_eq!(w1, w2);
            }
        }
    }

    /// What a service uses is its route configuration's list of clusters,
    /// and its assignments that list again (each named as its cluster), held
    /// once.
    #[test]
    fn a_service_shares_the_names_its_resources_hold() {
        let mut r = held_a();
        let mut kept = Kept::default();
        let changes = r.take_changes();
        to_config(&r, &names(), &changes, &mut Vec::new(), &mut kept).unwrap();
        let t = kept.services.get("t").unwrap();
        assert_eq!(*t.uses, [Name::from("b"), Name::from("c")]);
        let Refers::Clusters(named) = r.routes["t"].refers() else {
            panic!("t's route configuration names clusters");
        };
        assert!(
            Arc::ptr_eq(named, &t.uses),
            "uses is the route configuration's list"
        );
        assert!(
            Arc::ptr_eq(&t.eds, &t.uses),
            "the assignments are named as their clusters"
        );
    }

    /// Services translated with equal retry policies hold one.
    #[test]
    fn equal_retry_policies_are_translated_into_one() {
        let mut yaml = String::from("services:\n");
        for (s, ms) in [("p", 100), ("q", 100), ("r", 200), ("s", 100)] {
            yaml += &format!(
                "  - {{ name: {s}, routes: [{{ retry: {{ attempts: 2, per_try_timeout: {ms}ms }}, to: [b] }}] }}\n"
            );
        }
        yaml += "backends: [{ name: b, endpoints: ['127.0.0.1:1'] }]";
        let cfg = Config::from_yaml(&yaml).unwrap();
        let mut r = Resources::default();
        let served = from_config(&cfg);
        for t in TYPES {
            for (_, any) in served.encoded(t, |_| true) {
                r.insert(t, &any).unwrap();
            }
        }
        let names = ["p", "q", "r", "s"].map(Name::from);
        let changes = r.take_changes();
        let built = to_config(&r, &names, &changes, &mut Vec::new(), &mut Kept::default()).unwrap();
        let retry = |i: usize| built.config.services[i].routes[0].retry.clone().unwrap();
        assert!(Shared::same(&retry(0), &retry(1)) && Shared::same(&retry(0), &retry(3)));
        assert!(!Shared::same(&retry(0), &retry(2)));
        assert_eq!(
            retry(2).per_try_timeout,
            Some(std::time::Duration::from_millis(200))
        );
    }

    #[test]
    fn only_what_changed_is_translated_again() {
        let mut r = held_a();
        let mut kept = Kept::default();
        let mut build = |r: &mut Resources| {
            let changes = r.take_changes();
            to_config(r, &names(), &changes, &mut Vec::new(), &mut kept).unwrap()
        };
        let same = |a: &Built, b: &Built| {
            let s = a.config.services.iter().zip(&b.config.services);
            let k = a.config.backends.iter().zip(&b.config.backends);
            (
                s.map(|(x, y)| Shared::same(x, y)).collect::<Vec<_>>(),
                k.map(|(x, y)| Shared::same(x, y)).collect::<Vec<_>>(),
            )
        };
        let one = build(&mut r);
        assert_eq!(one.missing, ["v"]);
        let two = build(&mut r);
        assert_eq!(same(&one, &two), (vec![true; 3], vec![true; 2]));

        // c's endpoints: backend c only; the services that use it are kept.
        let cla = resource(1, type_url::ENDPOINTS, "c").unwrap();
        r.insert(type_url::ENDPOINTS, &cla).unwrap();
        let three = build(&mut r);
        assert_eq!(same(&two, &three), (vec![true; 3], vec![true, false]));
        assert_eq!(three.config.backends[1].endpoints[0].address, "127.0.0.1:9");

        // t's route configuration: service t only.
        let rc = resource(1, type_url::ROUTE, "t").unwrap();
        r.insert(type_url::ROUTE, &rc).unwrap();
        let four = build(&mut r);
        assert_eq!(
            same(&three, &four),
            (vec![true, false, true], vec![true, true])
        );

        // u moves from c to d: d joins the backends, in name order.
        let rc = resource(1, type_url::ROUTE, "u").unwrap();
        r.insert(type_url::ROUTE, &rc).unwrap();
        let five = build(&mut r);
        let backends: Vec<&str> = five
            .config
            .backends
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(backends, ["b", "c", "d"]);
        assert!(Shared::same(
            &five.config.backends[0],
            &four.config.backends[0]
        ));

        // The same bytes again change nothing at all.
        let rc = resource(1, type_url::ROUTE, "u").unwrap();
        r.insert(type_url::ROUTE, &rc).unwrap();
        let six = build(&mut r);
        assert_eq!(same(&five, &six), (vec![true; 3], vec![true; 3]));
        let _ = rc.encode_to_vec();
    }
}
