//! The route decision: which route a request matches and which backend it
//! goes to. Pure: the random sample comes in as an argument.
//!
//! ```
//! use proxyless_core::config::Config;
//! use proxyless_core::route::{decide, Decision, RequestParts};
//! use proxyless_core::snapshot::{Snapshot, Source};
//!
//! let cfg = Config::from_yaml(r#"
//! services:
//!   - name: reviews
//!     routes:
//!       - match: { headers: { x-user: tester } }
//!         to: [reviews-v2]
//!       - to: [reviews-v1]
//! backends:
//!   - { name: reviews-v1, endpoints: ["127.0.0.1:9001"] }
//!   - { name: reviews-v2, endpoints: ["127.0.0.1:9002"] }
//! "#).unwrap();
//! let snap = Snapshot::compile(cfg, 1, Source::Code).unwrap();
//! let mut headers = http::HeaderMap::new();
//! headers.insert("x-user", "tester".parse().unwrap());
//! let req = RequestParts::new("reviews", "GET", "/ratings/1", None, &headers);
//! match decide(&snap, &req, 0).unwrap() {
//!     Decision::Route(d) => assert_eq!(&**d.backend.name(), "reviews-v2"),
//!     Decision::Passthrough => unreachable!(),
//! }
//! ```

use crate::config::UnknownHosts;
use crate::shadow::{Outcome, Seen};
use crate::snapshot::{
    BackendEntry, Candidate, CompiledMatch, CompiledPath, CompiledString, RouteEntry, ServiceEntry,
    Snapshot,
};
use std::sync::Arc;

/// What the route decision needs to know of a request, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The authority the request addresses; a port is ignored.
    pub authority: &'a str,
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
}

impl<'a> RequestParts<'a> {
    /// Parts from their pieces.
    pub fn new(
        authority: &'a str,
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a http::HeaderMap,
    ) -> Self {
        Self {
            authority,
            method,
            path,
            query,
            headers,
        }
    }

    /// Parts of an `http::Request`: the authority is the URI's, or the `Host`
    /// header's when the URI has none (origin-form requests).
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        let uri = req.uri();
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(http::header::HOST)?.to_str().ok())
            .unwrap_or("");
        Self {
            authority,
            method: req.method().as_str(),
            path: uri.path(),
            query: uri.query(),
            headers: req.headers(),
        }
    }

    /// The host part of the authority: no user info, no port, no brackets.
    pub fn host(&self) -> &'a str {
        host_of(self.authority)
    }
}

/// The host of an authority (`user@host:port`, `[v6]:port`).
///
/// Byte scans, not `str` pattern searches: every request asks this once,
/// and the delimiters are ASCII, so each cut is on a character boundary.
pub fn host_of(authority: &str) -> &str {
    let bytes = authority.as_bytes();
    let start = bytes
        .iter()
        .rposition(|&b| b == b'@')
        .map_or(0, |at| at + 1);
    let a = &authority[start..];
    let (open, close) = if a.as_bytes().first() == Some(&b'[') {
        (1, b']')
    } else {
        (0, b':')
    };
    let rest = &a[open..];
    match rest.as_bytes().iter().position(|&b| b == close) {
        Some(end) => &rest[..end],
        None => rest,
    }
}

/// The outcome of a route decision.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'s> {
    /// A route matched and a backend was chosen.
    Route(RouteDecision<'s>),
    /// No service claims the host and unknown hosts pass through: send the
    /// request to the host as addressed.
    Passthrough,
}

/// A matched route and the backend chosen for this request.
#[derive(Debug, Clone, Copy)]
pub struct RouteDecision<'s> {
    /// The service the host belongs to.
    pub service: &'s ServiceEntry,
    /// The first route that matched.
    pub route: &'s RouteEntry,
    /// The backend the weighted split chose.
    pub backend: &'s BackendEntry,
    /// The service's index in the snapshot.
    pub service_index: u32,
    /// The route's index within the service.
    pub route_index: u32,
    /// The backend's index in the snapshot.
    pub backend_index: u32,
}

/// Why a request has no route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoRoute {
    /// No service claims the host, and the mesh refuses unknown hosts.
    #[error("no service claims host `{0}`")]
    UnknownHost(Box<str>),
    /// The service has no route that matches the request.
    #[error("no route of service `{0}` matches the request")]
    NoMatchingRoute(Arc<str>),
    /// The matched route has no backend with a positive weight.
    #[error("route `{route}` of service `{service}` has no backend to send to")]
    NoBackend {
        /// The service.
        service: Arc<str>,
        /// The route.
        route: Arc<str>,
    },
}

/// Decides where `req` goes under `snap`. `sample` is a uniformly random
/// number that drives the weighted choice. Does not allocate on success.
pub fn decide<'s>(
    snap: &'s Snapshot,
    req: &RequestParts<'_>,
    sample: u64,
) -> Result<Decision<'s>, NoRoute> {
    decide_in(snap, snap.service_index_for_host(req.host()), req, sample)
}

/// [`decide`] for a caller that already looked up the service claiming the
/// request's host ([`Snapshot::service_index_for_host`]), so the lookup is
/// not made twice.
pub fn decide_in<'s>(
    snap: &'s Snapshot,
    found: Option<(u32, &'s ServiceEntry)>,
    req: &RequestParts<'_>,
    sample: u64,
) -> Result<Decision<'s>, NoRoute> {
    let Some((service_index, service)) = found else {
        return match snap.unknown_hosts() {
            UnknownHosts::Refuse => Err(NoRoute::UnknownHost(req.host().into())),
            _ => Ok(Decision::Passthrough),
        };
    };
    let (route_index, route) = service
        .routes
        .iter()
        .enumerate()
        .find(|(_, r)| route_matches(r, req))
        .ok_or_else(|| NoRoute::NoMatchingRoute(service.name.clone()))?;
    let no_backend = || NoRoute::NoBackend {
        service: service.name.clone(),
        route: route.name.clone(),
    };
    let backend_index = route.split.pick(sample).ok_or_else(no_backend)?;
    let backend = snap.backend(backend_index).ok_or_else(no_backend)?;
    Ok(Decision::Route(RouteDecision {
        service,
        route,
        backend,
        service_index,
        route_index: route_index as u32,
        backend_index,
    }))
}

/// Decides `req` under `candidate` as well, with the same `sample`, and
/// files the result against the `live` decision in the candidate's report
/// (see [`crate::shadow`]). Returns the two outcomes when they differ.
/// Nothing is allocated when they agree.
pub fn shadow(
    candidate: &Candidate,
    live: &Result<Decision<'_>, NoRoute>,
    req: &RequestParts<'_>,
    sample: u64,
) -> Option<(Outcome, Outcome)> {
    let cand = decide(&candidate.snapshot, req, sample);
    if alike(live, &cand) {
        candidate.report.same();
        return None;
    }
    let (live, cand) = (outcome(live), outcome(&cand));
    let seen = Seen {
        method: req.method,
        authority: req.authority,
        path: req.path,
    };
    candidate.report.differ(seen, live.clone(), cand.clone());
    Some((live, cand))
}

/// Whether two decisions (under different snapshots) send the request to
/// the same place, by names.
fn alike(a: &Result<Decision<'_>, NoRoute>, b: &Result<Decision<'_>, NoRoute>) -> bool {
    match (a, b) {
        (Ok(Decision::Route(a)), Ok(Decision::Route(b))) => {
            a.service.name == b.service.name
                && a.route.name == b.route.name
                && a.backend.name == b.backend.name
        }
        (Ok(Decision::Passthrough), Ok(Decision::Passthrough)) => true,
        (Err(a), Err(b)) => a == b,
        _ => false,
    }
}

fn outcome(d: &Result<Decision<'_>, NoRoute>) -> Outcome {
    match d {
        Ok(Decision::Route(d)) => Outcome::Routed {
            service: d.service.name.clone(),
            route: d.route.name.clone(),
            backend: d.backend.name.clone(),
        },
        Ok(Decision::Passthrough) => Outcome::Passthrough,
        Err(NoRoute::UnknownHost(_)) => Outcome::UnknownHost,
        Err(NoRoute::NoMatchingRoute(service)) => Outcome::NoMatchingRoute {
            service: service.clone(),
        },
        Err(NoRoute::NoBackend { service, route }) => Outcome::NoBackend {
            service: service.clone(),
            route: route.clone(),
        },
    }
}

/// The first route of `service` that matches `req`.
pub fn match_route<'s>(
    service: &'s ServiceEntry,
    req: &RequestParts<'_>,
) -> Option<&'s RouteEntry> {
    service.routes.iter().find(|r| route_matches(r, req))
}

fn route_matches(r: &RouteEntry, req: &RequestParts<'_>) -> bool {
    r.matches.is_empty() || r.matches.iter().any(|m| matches(m, req))
}

fn matches(m: &CompiledMatch, req: &RequestParts<'_>) -> bool {
    if let Some(p) = &m.path {
        let ok = match p {
            CompiledPath::Exact(s) => req.path == &**s,
            CompiledPath::Prefix(s) => req.path.starts_with(&**s),
            CompiledPath::Regex(re) => re.is_match(req.path),
        };
        if !ok {
            return false;
        }
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| &**x == req.method) {
        return false;
    }
    for (name, cond) in &m.headers {
        let mut values = req.headers.get_all(name).iter();
        let ok = match cond {
            CompiledString::Present(want) => values.next().is_some() == *want,
            _ => values.any(|v| v.to_str().is_ok_and(|v| string_matches(cond, v))),
        };
        if !ok {
            return false;
        }
    }
    for (name, cond) in &m.query {
        let mut values = query_values(req.query.unwrap_or(""), name);
        let ok = match cond {
            CompiledString::Present(want) => values.next().is_some() == *want,
            _ => values.any(|v| string_matches(cond, v)),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn string_matches(cond: &CompiledString, v: &str) -> bool {
    match cond {
        CompiledString::Exact(s) => v == &**s,
        CompiledString::Prefix(s) => v.starts_with(&**s),
        CompiledString::Regex(re) => re.is_match(v),
        CompiledString::Present(p) => *p,
    }
}

/// The values of parameter `name` in a raw query string, as sent.
fn query_values<'q>(query: &'q str, name: &'q str) -> impl Iterator<Item = &'q str> + 'q {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}
