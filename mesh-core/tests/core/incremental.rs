//! Incremental updates: what a new config shares with the running one is
//! neither validated alone nor compiled again, and keeps its identity; what
//! it shares is still checked against the rest.

use http::HeaderMap;
use proxyless_core::Mesh;
use proxyless_core::config::{Config, Endpoint, ProblemKind, Shared};
use proxyless_core::route::{Decision, RequestParts, decide};
use proxyless_core::snapshot::{Snapshot, Source};
use std::sync::Arc;
use std::time::Duration;

const THREE: &str = "
services:
  - { name: a, routes: [{ to: [{ backend: a1 }] }] }
  - { name: b, routes: [{ to: [{ backend: b1 }] }] }
  - { name: c, hosts: [c, c.ns], routes: [{ to: [{ backend: c1, weight: 90 }, { backend: b1, weight: 10 }] }] }
backends:
  - { name: a1, endpoints: ['127.0.0.1:9001'] }
  - { name: b1, endpoints: ['127.0.0.1:9002'] }
  - { name: c1, endpoints: ['127.0.0.1:9003'] }
";

fn mesh() -> Mesh {
    Mesh::from_config(Config::from_yaml(THREE).unwrap()).unwrap()
}

/// Which entries of `after` are the same allocation as `before`'s.
fn kept<T>(before: &[Arc<T>], after: &[Arc<T>]) -> Vec<bool> {
    after
        .iter()
        .map(|a| before.iter().any(|b| Arc::ptr_eq(a, b)))
        .collect()
}

/// The backend a request to `host` goes to, for the sample `sample`.
fn backend_for(snap: &Snapshot, host: &str, sample: u64) -> String {
    let headers = HeaderMap::new();
    let req = RequestParts::new(host, "GET", "/", None, &headers);
    match decide(snap, &req, sample).unwrap() {
        Decision::Route(d) => d.backend.name().to_string(),
        Decision::Passthrough => "<passthrough>".into(),
    }
}

#[test]
fn a_change_made_to_the_running_config_recompiles_only_what_it_touches() {
    let m = mesh();
    let before = m.snapshot();
    let mut next = before.config().clone();
    assert!(Shared::same(
        &next.services[1],
        &before.config().services[1]
    ));
    next.services[1].routes[0].timeout = Some(Duration::from_secs(3));
    next.backends[2]
        .endpoints
        .push(Endpoint::new("127.0.0.1:9004"));
    m.update(next, Source::Code).unwrap();
    let after = m.snapshot();
    assert_eq!(
        kept(before.services(), after.services()),
        [true, false, true]
    );
    assert_eq!(
        kept(before.backends(), after.backends()),
        [true, true, false]
    );
    assert_eq!(
        after.service(1).unwrap().routes()[0].timeout(),
        Duration::from_secs(3)
    );
    assert_eq!(after.backend(2).unwrap().endpoints().len(), 2);
    // The kept service routes as before: to c1 and to b1, by weight.
    assert_eq!(backend_for(&after, "c.ns", 0), "c1");
    assert_eq!(backend_for(&after, "C", u64::MAX), "b1");
}

#[test]
fn a_config_read_afresh_shares_what_equals_the_running_one() {
    let m = mesh();
    let before = m.snapshot();
    let edited = THREE.replace("127.0.0.1:9002", "127.0.0.1:9012");
    m.update(Config::from_yaml(&edited).unwrap(), Source::Code)
        .unwrap();
    let after = m.snapshot();
    assert_eq!(kept(before.services(), after.services()), [true; 3]);
    assert_eq!(
        kept(before.backends(), after.backends()),
        [true, false, true]
    );
    assert_eq!(
        after.backend(1).unwrap().endpoints()[0].address.as_ref(),
        "127.0.0.1:9012"
    );
}

#[test]
fn services_whose_backends_move_are_compiled_again_and_route_true() {
    let m = mesh();
    let before = m.snapshot();
    let mut next = before.config().clone();
    // a and a1 go: b1 and c1 move down one index.
    next.services.remove(0);
    next.backends.remove(0);
    m.update(next, Source::Code).unwrap();
    let after = m.snapshot();
    assert_eq!(kept(before.backends(), after.backends()), [true, true]);
    assert_eq!(kept(before.services(), after.services()), [false, false]);
    assert_eq!(backend_for(&after, "b", 0), "b1");
    assert_eq!(backend_for(&after, "c", 0), "c1");
    assert_eq!(backend_for(&after, "c", u64::MAX), "b1");
}

#[test]
fn a_new_default_timeout_reaches_the_routes_of_every_service() {
    let m = mesh();
    let mut next = m.snapshot().config().clone();
    next.defaults.timeout = Duration::from_secs(7);
    m.update(next, Source::Code).unwrap();
    let after = m.snapshot();
    for s in after.services() {
        assert_eq!(
            s.routes()[0].timeout(),
            Duration::from_secs(7),
            "{}",
            s.name()
        );
    }
}

#[test]
fn what_a_new_config_shares_is_still_checked_against_the_rest() {
    let m = mesh();
    let running = m.snapshot().config().clone();

    // A shared service's backend removed.
    let mut gone = running.clone();
    gone.backends.retain(|b| b.name != "b1");
    let err = m.update(gone, Source::Code).unwrap_err();
    assert!(err.has(ProblemKind::UndefinedReference), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("services[1].routes[0].to[0].backend"),
        "{text}"
    );
    assert!(
        text.contains("services[2].routes[0].to[1].backend"),
        "{text}"
    );

    // A new service claiming a shared one's host.
    let mut claim = running.clone();
    let mut thief = (*running.services[0]).clone();
    thief.name = "thief".into();
    thief.hosts = vec!["c.ns".into()];
    claim.services.push(thief.into());
    let err = m.update(claim, Source::Code).unwrap_err();
    assert!(err.has(ProblemKind::ConflictingHost), "{err}");

    // A new backend with a shared one's name, and a shared service twice.
    let mut twice = running.clone();
    twice.backends.push((*running.backends[0]).clone().into());
    twice.services.push(running.services[0].clone());
    let err = m.update(twice, Source::Code).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("backend `a1` is defined twice"), "{text}");
    assert!(text.contains("service `a` is defined twice"), "{text}");

    // Nothing of it was published.
    assert_eq!(m.status().rejected, 3);
    assert!(Shared::same(
        &m.snapshot().config().services[0],
        &running.services[0]
    ));
}

#[test]
fn hosts_that_move_between_services_are_found_where_they_went() {
    let m = mesh();
    let name_of = |m: &Mesh, host: &str| {
        let snap = m.snapshot();
        snap.service_for_host(host).map(|s| s.name().to_string())
    };
    assert_eq!(name_of(&m, "c.ns").as_deref(), Some("c"));
    // c.ns moves from c to a.
    let mut next = m.snapshot().config().clone();
    next.services[2].hosts.retain(|h| h != "c.ns");
    next.services[0].hosts = vec!["a".into(), "c.ns".into()];
    m.update(next, Source::Code).unwrap();
    assert_eq!(name_of(&m, "c.ns").as_deref(), Some("a"));
    assert_eq!(name_of(&m, "c").as_deref(), Some("c"));
    assert_eq!(name_of(&m, "a").as_deref(), Some("a"));
    // The services change places.
    let mut next = m.snapshot().config().clone();
    next.services.swap(0, 2);
    m.update(next, Source::Code).unwrap();
    let snap = m.snapshot();
    assert_eq!(snap.service(0).unwrap().name().as_ref(), "c");
    for (host, service) in [("c.ns", "a"), ("c", "c"), ("a", "a"), ("b", "b")] {
        assert_eq!(name_of(&m, host).as_deref(), Some(service), "{host}");
    }
    // A host dropped is no longer claimed.
    let mut next = m.snapshot().config().clone();
    next.services[2].hosts = vec!["a".into()];
    m.update(next, Source::Code).unwrap();
    assert_eq!(name_of(&m, "c.ns"), None);
}
