//! What one snapshot serves: every resource encoded once, in name order,
//! made from the snapshot before by translating only the services and
//! backends that changed, with the names that changed (so an incremental
//! stream sends them without comparing the rest).

use super::ENVOY_LISTENER;
use envoy_types::pb::google::protobuf::Any;
use proxyless_core::config::{Config, Shared};
use proxyless_core::snapshot::Snapshot;
use proxyless_core::xds::translate::{self, Part, type_url};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

/// The four types, in the order the tables below keep them.
pub(super) const TYPES: [&str; 4] = [
    type_url::LISTENER,
    type_url::ROUTE,
    type_url::CLUSTER,
    type_url::ENDPOINTS,
];

/// One encoded resource and its version (a hash of the encoding).
#[derive(Debug)]
pub(super) struct Encoded {
    pub(super) name: String,
    pub(super) any: Any,
    pub(super) version: String,
}

impl Encoded {
    fn new(name: String, any: Any) -> Arc<Self> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        any.value.hash(&mut h);
        Arc::new(Self {
            name,
            version: format!("{:016x}", h.finish()),
            any,
        })
    }
}

/// What changed from the snapshot a [`Served`] was made from.
#[derive(Debug)]
pub(super) struct Since {
    /// That snapshot's version.
    pub(super) version: u64,
    /// Per type (in [`TYPES`] order), the names added, changed or removed.
    pub(super) names: [BTreeSet<String>; 4],
}

/// What one snapshot serves.
#[derive(Debug)]
pub(super) struct Served {
    pub(super) snapshot: Arc<Snapshot>,
    /// Per type (in [`TYPES`] order), every resource, in name order.
    encoded: [Vec<Arc<Encoded>>; 4],
    pub(super) wildcard_listeners: Option<BTreeSet<String>>,
    /// Known when it was made from the snapshot before.
    pub(super) since: Option<Since>,
}

fn kind(t: &str) -> usize {
    TYPES.iter().position(|k| *k == t).unwrap_or(3)
}

/// Changes past this share of the resources are made afresh.
const REBUILD_SHARE: usize = 4;

impl Served {
    /// What `snapshot` serves: made from `before` (the snapshot before's)
    /// when there is one and no Envoy listener (which names every service),
    /// translating only the parts of the config `snapshot` does not share
    /// with it.
    pub(super) fn of(
        snapshot: Arc<Snapshot>,
        envoy: Option<SocketAddr>,
        before: Option<&Served>,
    ) -> Self {
        if envoy.is_none()
            && let Some(before) = before
            && let Some(served) = Self::from(&snapshot, before)
        {
            return served;
        }
        let r = translate::from_config(snapshot.config());
        let mut encoded: [Vec<Arc<Encoded>>; 4] = Default::default();
        let wildcard_listeners = envoy.map(|addr| {
            let (l, rc) = translate::envoy_listener(&r, ENVOY_LISTENER, addr);
            encoded[0].push(Encoded::new(l.name.clone(), any(&l)));
            encoded[1].push(Encoded::new(rc.name.clone(), any(&rc)));
            BTreeSet::from([ENVOY_LISTENER.to_owned()])
        });
        for (i, t) in TYPES.into_iter().enumerate() {
            let all = r.encoded(t, |_| true);
            encoded[i].extend(all.into_iter().map(|(name, any)| Encoded::new(name, any)));
            encoded[i].sort_by(|a, b| a.name.cmp(&b.name));
        }
        Self {
            snapshot,
            encoded,
            wildcard_listeners,
            since: None,
        }
    }

    /// `before` changed by what `snapshot`'s config does not share with
    /// its config; `None` when that is too much to patch.
    fn from(snapshot: &Arc<Snapshot>, before: &Served) -> Option<Self> {
        let (was, now) = (before.snapshot.config(), snapshot.config());
        let (gone, new) = changed_parts(was, now)?;
        let total: usize = before.encoded.iter().map(Vec::len).sum();
        if (gone.len() + new.len()) * REBUILD_SHARE > total.max(8) {
            return None;
        }
        let mut encoded = before.encoded.clone();
        let mut names: [BTreeSet<String>; 4] = Default::default();
        for part in gone {
            for (name, any) in translate::part_resources(part) {
                let k = kind(&any.type_url);
                let list = encoded.get_mut(k)?;
                if let Ok(i) = list.binary_search_by(|e| e.name.cmp(&name)) {
                    list.remove(i);
                }
                names.get_mut(k)?.insert(name);
            }
        }
        for part in new {
            for (name, any) in translate::part_resources(part) {
                let k = kind(&any.type_url);
                let list = encoded.get_mut(k)?;
                let e = Encoded::new(name.clone(), any);
                match list.binary_search_by(|e| e.name.cmp(&name)) {
                    Ok(i) => *list.get_mut(i)? = e,
                    Err(i) => list.insert(i, e),
                }
                names.get_mut(k)?.insert(name);
            }
        }
        Some(Self {
            snapshot: snapshot.clone(),
            encoded,
            wildcard_listeners: None,
            since: Some(Since {
                version: before.snapshot.version(),
                names,
            }),
        })
    }

    /// The resources of type `t` a subscription covers.
    pub(super) fn covered<'a>(
        &'a self,
        t: &'a str,
        wildcard: bool,
        names: &'a BTreeSet<String>,
    ) -> impl Iterator<Item = &'a Encoded> + 'a {
        self.all(t)
            .iter()
            .map(|e| &**e)
            .filter(move |e| self.covers(t, wildcard, names, &e.name))
    }

    /// Whether a subscription to `names` (a wildcard when `wildcard`) of
    /// type `t` covers the resource `name`.
    pub(super) fn covers(
        &self,
        t: &str,
        wildcard: bool,
        names: &BTreeSet<String>,
        name: &str,
    ) -> bool {
        if !wildcard {
            return names.contains(name);
        }
        match (&self.wildcard_listeners, t) {
            // Envoy's wildcard gets the socket listener, not API listeners.
            (Some(only), type_url::LISTENER) => only.contains(name),
            _ => true,
        }
    }

    /// The version responses carry.
    pub(super) fn version(&self) -> String {
        self.snapshot.version().to_string()
    }

    /// Every resource of type `t`, in name order.
    pub(super) fn all(&self, t: &str) -> &[Arc<Encoded>] {
        self.encoded.get(kind(t)).map_or(&[], Vec::as_slice)
    }

    /// The resource `name` of type `t`.
    pub(super) fn get(&self, t: &str, name: &str) -> Option<&Encoded> {
        let all = self.all(t);
        let i = all.binary_search_by(|e| e.name.as_str().cmp(name)).ok()?;
        all.get(i).map(|e| &**e)
    }

    /// The names of type `t` that changed since `version`, if this was
    /// made from that version.
    pub(super) fn changed_since(&self, version: u64, t: &str) -> Option<&BTreeSet<String>> {
        let since = self.since.as_ref().filter(|s| s.version == version)?;
        since.names.get(kind(t))
    }
}

fn any<M: prost::Message + prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// The parts of `was` that `now` dropped or changed, and the parts of
/// `now` that are new or changed. Parts `now` shares with `was` (the same
/// `Shared` allocation) are in neither. `None` when the inbound policies
/// changed (few: everything is made afresh then).
fn changed_parts<'a>(was: &'a Config, now: &'a Config) -> Option<(Vec<Part<'a>>, Vec<Part<'a>>)> {
    if was.inbound != now.inbound {
        return None;
    }
    let (mut gone, mut new) = (Vec::new(), Vec::new());
    diff(
        &was.services,
        &now.services,
        |s| &s.name,
        Part::Service,
        &mut gone,
        &mut new,
    );
    diff(
        &was.backends,
        &now.backends,
        |b| &b.name,
        Part::Backend,
        &mut gone,
        &mut new,
    );
    Some((gone, new))
}

/// The parts of one list that went or changed (`gone`) and that came or
/// changed (`new`): compared place by place while the names line up, by
/// name otherwise.
fn diff<'a, T>(
    was: &'a [Shared<T>],
    now: &'a [Shared<T>],
    name: impl Fn(&T) -> &str,
    part: impl Fn(&'a T) -> Part<'a>,
    gone: &mut Vec<Part<'a>>,
    new: &mut Vec<Part<'a>>,
) {
    let aligned = was.len() == now.len() && was.iter().zip(now).all(|(a, b)| name(a) == name(b));
    if aligned {
        for (a, b) in was.iter().zip(now).filter(|(a, b)| !Shared::same(a, b)) {
            gone.push(part(a));
            new.push(part(b));
        }
        return;
    }
    let by_name: HashMap<&str, &Shared<T>> = was.iter().map(|w| (name(w), w)).collect();
    let mut kept = BTreeMap::new();
    for b in now {
        match by_name.get(name(b)) {
            Some(a) if Shared::same(a, b) => {}
            Some(a) => {
                gone.push(part(a));
                new.push(part(b));
            }
            None => new.push(part(b)),
        }
        kept.insert(name(b), ());
    }
    gone.extend(
        was.iter()
            .filter(|a| !kept.contains_key(name(a)))
            .map(|a| part(a)),
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proxyless_core::config::Endpoint;
    use proxyless_core::snapshot::Source;

    fn snapshot(cfg: Config, version: u64) -> Arc<Snapshot> {
        Arc::new(Snapshot::compile(cfg, version, Source::Code).unwrap())
    }

    /// Name and version of every resource, per type.
    fn listing(s: &Served) -> Vec<Vec<(String, String)>> {
        TYPES
            .iter()
            .map(|t| {
                s.all(t)
                    .iter()
                    .map(|e| (e.name.clone(), e.version.clone()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn what_is_made_from_the_snapshot_before_equals_what_is_made_afresh() {
        let mut yaml = String::from("services:\n");
        for i in 0..12 {
            yaml.push_str(&format!(
                "  - {{ name: s{i}, routes: [{{ to: [b{i}] }}] }}\n"
            ));
        }
        yaml.push_str("backends:\n");
        for i in 0..12 {
            yaml.push_str(&format!(
                "  - {{ name: b{i}, endpoints: ['127.0.0.1:{}'] }}\n",
                1000 + i
            ));
        }
        let first = Config::from_yaml(&yaml).unwrap();
        type Change = fn(&mut Config);
        let changes: [(&str, Change, usize); 5] = [
            (
                "an endpoint",
                |c| c.backends[3].endpoints.push(Endpoint::new("127.0.0.1:9")),
                1,
            ),
            (
                "hosts",
                |c| c.services[5].hosts = vec!["s5".into(), "five".into()],
                1,
            ),
            (
                "a service gone",
                |c| {
                    c.services.remove(7);
                },
                2,
            ),
            (
                "a service and backend new",
                |c| {
                    let mut s = (*c.services[0]).clone();
                    s.name = "new".into();
                    c.services.push(s.into());
                    let mut b = (*c.backends[0]).clone();
                    b.name = "b-new".into();
                    c.backends.push(b.into());
                },
                2,
            ),
            ("places swapped", |c| c.backends.swap(1, 2), 0),
        ];
        let mut before = Served::of(snapshot(first.clone(), 1), None, None);
        let mut cfg = first;
        for (version, (what, change, listeners_routes)) in (2..).zip(changes) {
            change(&mut cfg);
            let snap = snapshot(cfg.clone(), version);
            let patched = Served::of(snap.clone(), None, Some(&before));
            let afresh = Served::of(snap, None, None);
            assert_eq!(listing(&patched), listing(&afresh), "{what}");
            let since = patched.since.as_ref().expect(what);
            assert_eq!(since.version, version - 1);
            // What changed is named; nothing else is.
            let named: usize = since.names.iter().map(BTreeSet::len).sum();
            assert!(
                named <= 2 * listeners_routes + 2 + 2,
                "{what}: {:?}",
                since.names
            );
            cfg = patched.snapshot.config().clone();
            before = patched;
        }
        // An endpoint change names the backend's cluster and assignment only.
        let mut next = cfg.clone();
        next.backends[0].endpoints[0] = Endpoint::new("127.0.0.1:7");
        let patched = Served::of(snapshot(next, 99), None, Some(&before));
        let since = patched.since.unwrap();
        assert!(since.names[0].is_empty() && since.names[1].is_empty());
        assert_eq!(since.names[2], BTreeSet::from(["b0".to_owned()]));
        assert_eq!(since.names[3], BTreeSet::from(["b0".to_owned()]));
    }
}
