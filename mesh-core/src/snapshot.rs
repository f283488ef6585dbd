//! The compiled, immutable form of a config that every request reads.
//!
//! Compilation does all the work a request would otherwise repeat: hosts are
//! indexed in a hash map (O(1) lookup whatever the number of services),
//! regexes and header names are compiled, every route gets a cumulative
//! weight table, and backend references become indexes.

use crate::config::regex::compile_regex;
use crate::config::{
    Backend, Config, EqualHeld, Fault, InboundPolicy, LoadBalancer, Locality, Name, PathMatch,
    RetryPolicy, Service, Shared, StringMatch, UnknownHosts,
};
use regex::Regex;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Where a snapshot's config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// No config: every request passes through to the host it names.
    Empty,
    /// Built in code with `Mesh::from_config`.
    Code,
    /// A watched file.
    File(PathBuf),
    /// A control plane over xDS (the server, and what it last sent).
    Xds(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Empty => f.write_str("empty"),
            Source::Code => f.write_str("code"),
            Source::File(p) => write!(f, "file:{}", p.display()),
            Source::Xds(s) => write!(f, "xds:{s}"),
        }
    }
}

/// An immutable, compiled config with a version.
#[derive(Debug)]
pub struct Snapshot {
    pub(crate) version: u64,
    pub(crate) source: Source,
    pub(crate) created: SystemTime,
    pub(crate) config: Arc<Config>,
    /// Lowercase host -> index into `services`.
    pub(crate) hosts: HostTable,
    pub(crate) services: Vec<Arc<ServiceEntry>>,
    pub(crate) backends: Vec<Arc<BackendEntry>>,
    pub(crate) backend_index: BackendIndex,
    /// Where the caller runs, if known (see [`Mesh::set_locality`](crate::Mesh::set_locality)).
    pub(crate) locality: Option<Arc<Locality>>,
    /// The buckets of each inbound policy's rate limit, in the config's
    /// order (kept from the previous snapshot while the limit is the same).
    pub(crate) inbound_limits: Vec<Option<Arc<crate::policy::ratelimit::Limiter>>>,
    /// A candidate config evaluated beside this one, if one is loaded
    /// (kept from the previous snapshot; see [`crate::shadow`]).
    pub(crate) candidate: Option<Arc<Candidate>>,
}

/// A candidate config loaded beside the live one: compiled, never sent
/// to; every request the live config decides is also decided under it and
/// the differences are counted in its [report](crate::shadow::Report).
#[derive(Debug)]
pub struct Candidate {
    pub(crate) snapshot: Snapshot,
    pub(crate) report: Arc<crate::shadow::Report>,
}

impl Candidate {
    /// The candidate, compiled.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// What it would have done differently so far.
    pub fn report(&self) -> &crate::shadow::Report {
        &self.report
    }
}

/// Hashing for tables this process alone fills and probes (seeded per
/// process).
type Fast = foldhash::fast::RandomState;
/// Lowercase host -> service index.
type HostTable = HashMap<Arc<str>, u32, Fast>;
/// Backend name -> backend index.
type BackendIndex = HashMap<Arc<str>, u32, Fast>;

/// Config parts and the entries compiled from them, place by place.
type Compiled<'a, T, E> = (&'a [Shared<T>], &'a [Arc<E>]);

/// The compiled entries of the previous snapshot, found by the config part
/// they were compiled from: at the same place, or (when the lists do not
/// line up) by its address.
struct Entries<'a, T, E> {
    old: Option<Compiled<'a, T, E>>,
    by_addr: Option<HashMap<usize, &'a Arc<E>, Fast>>,
}

impl<'a, T, E> Entries<'a, T, E> {
    fn new(old: Option<Compiled<'a, T, E>>) -> Self {
        Self { old, by_addr: None }
    }

    /// The entry compiled from `part` (at place `i` now), if any.
    fn get(&mut self, i: usize, part: &Shared<T>) -> Option<&'a Arc<E>> {
        let (parts, entries) = self.old?;
        if let (Some(p), Some(e)) = (parts.get(i), entries.get(i))
            && Shared::same(p, part)
        {
            return Some(e);
        }
        let by_addr = self
            .by_addr
            .get_or_insert_with(|| parts.iter().map(Shared::addr).zip(entries).collect());
        by_addr.get(&Shared::addr(part)).copied()
    }
}

/// A compiled service.
#[derive(Debug)]
pub struct ServiceEntry {
    pub(crate) name: Arc<str>,
    /// Held inline when there is one (most services of a large mesh).
    pub(crate) routes: SmallVec<[RouteEntry; 1]>,
    /// Its hosts as `Host` header values, made once: a request addressed
    /// to one of them is sent with a copy that shares the bytes.
    pub(crate) host_values: Box<[http::HeaderValue]>,
}

/// A service's keys in the host table: its hosts in lower case (shared
/// with the config when they are already).
fn host_keys(s: &Service) -> impl Iterator<Item = Arc<str>> + '_ {
    s.host_names().iter().map(|h| {
        if h.bytes().any(|b| b.is_ascii_uppercase()) {
            Arc::from(h.to_ascii_lowercase())
        } else {
            h.shared()
        }
    })
}

/// A name as the bytes of a header value that shares them.
struct NameBytes(Name);

impl AsRef<[u8]> for NameBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The (backend index, weight) pairs of a route's split, as indexed by
/// `backend_index` (names validation found; any other is skipped).
fn split_of<'a>(
    r: &'a crate::config::Route,
    backend_index: &'a BackendIndex,
) -> impl Iterator<Item = (u32, u32)> + 'a {
    r.to.iter()
        .filter_map(|wb| Some((*backend_index.get(wb.backend.as_str())?, wb.weight)))
}

/// A route's mirror: its backend's index and the percentage mirrored.
fn mirror_of(r: &crate::config::Route, backend_index: &BackendIndex) -> Option<(u32, f64)> {
    let m = r.mirror.as_ref()?;
    Some((*backend_index.get(m.backend.as_str())?, m.percent))
}

impl ServiceEntry {
    fn compile(
        s: &Service,
        config: &Config,
        backend_index: &BackendIndex,
        policies: &mut EqualHeld<RetryPolicy>,
    ) -> Self {
        let routes = s
            .routes
            .iter()
            .enumerate()
            .map(|(ri, r)| RouteEntry {
                name: match &r.name {
                    Some(n) => n.shared(),
                    None => Name::new(&format!("route-{ri}")).shared(),
                },
                matches: r.matches.iter().filter_map(compile_match).collect(),
                split: WeightTable::new(split_of(r, backend_index)),
                timeout: r.timeout.unwrap_or(config.defaults.timeout),
                retry: r.retry.as_ref().map(|p| policies.share(p)),
                fault: r.fault.clone(),
                mirror: mirror_of(r, backend_index),
                classifier: r
                    .classifier
                    .as_deref()
                    .or(s.classifier.as_deref())
                    .and_then(crate::policy::classify::registered),
                hedge: r.hedge.as_ref().map(|h| {
                    let now = std::time::Instant::now();
                    let state = crate::policy::hedge::HedgeState::new(h.budget_percent, now);
                    Box::new(((**h).clone(), Arc::new(state)))
                }),
                limiter: r.rate_limit.as_ref().map(|l| {
                    let now = std::time::Instant::now();
                    Box::new((
                        (**l).clone(),
                        Arc::new(crate::policy::ratelimit::Limiter::new(l, now)),
                    ))
                }),
            })
            .collect();
        // Each value's bytes are the host name's own (shared, not copied),
        // so that a request's copy only counts a reference.
        let host_values = s
            .host_names()
            .iter()
            .filter_map(|h| {
                let bytes = bytes::Bytes::from_owner(NameBytes(h.clone()));
                http::HeaderValue::from_maybe_shared(bytes).ok()
            })
            .collect();
        Self {
            name: s.name.shared(),
            routes,
            host_values,
        }
    }

    /// Whether this entry, compiled from `s`, indexes the same backends as
    /// `backend_index` would (backends added or removed before them move
    /// their indexes).
    fn same_backends(&self, s: &Service, backend_index: &BackendIndex) -> bool {
        self.routes.len() == s.routes.len()
            && self.routes.iter().zip(&s.routes).all(|(e, r)| {
                let split = split_of(r, backend_index).filter(|&(_, w)| w > 0);
                e.split.items().eq(split.map(|(i, w)| (i, u64::from(w))))
                    && e.mirror == mirror_of(r, backend_index)
            })
    }
}

impl ServiceEntry {
    /// The service name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The `Host` header value for `authority` when it is one of the
    /// service's hosts as written in the config (no allocation: the value
    /// shares the bytes made when the snapshot was compiled).
    pub fn host_value(&self, authority: &str) -> Option<http::HeaderValue> {
        self.host_values
            .iter()
            .find(|v| v.as_bytes() == authority.as_bytes())
            .cloned()
    }
    /// Its routes, in match order.
    pub fn routes(&self) -> &[RouteEntry] {
        &self.routes
    }
}

/// A compiled route.
#[derive(Debug)]
pub struct RouteEntry {
    pub(crate) name: Arc<str>,
    /// Alternatives (any may match); empty matches all.
    pub(crate) matches: Vec<CompiledMatch>,
    pub(crate) split: WeightTable,
    pub(crate) timeout: Duration,
    /// The config's, shared with the snapshot's other routes of an equal
    /// policy.
    pub(crate) retry: Option<Shared<RetryPolicy>>,
    /// Boxed, as the policies below: most routes have none, and absent
    /// each costs a pointer.
    pub(crate) fault: Option<Box<Fault>>,
    pub(crate) mirror: Option<(u32, f64)>,
    /// The route's rate limit's buckets (kept while the compiled service
    /// is).
    pub(crate) limiter: Option<
        Box<(
            crate::config::RateLimit,
            Arc<crate::policy::ratelimit::Limiter>,
        )>,
    >,
    /// The route's hedging policy and state (kept while the compiled
    /// service is).
    pub(crate) hedge: Option<
        Box<(
            crate::config::HedgePolicy,
            Arc<crate::policy::hedge::HedgeState>,
        )>,
    >,
    /// The classifier the route (or its service) names.
    pub(crate) classifier: Option<crate::policy::classify::Classifier>,
}

impl RouteEntry {
    /// The route name (`route-N` when the config gave none).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
    /// The overall deadline of a request on this route.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
    /// The retry policy, if any.
    pub fn retry(&self) -> Option<&RetryPolicy> {
        self.retry.as_deref()
    }
    /// Fault injection, if any.
    pub fn fault(&self) -> Option<&Fault> {
        self.fault.as_deref()
    }
    /// The weighted backends, as (backend index, weight).
    pub fn split(&self) -> &WeightTable {
        &self.split
    }
    /// The mirror backend's index and the percentage of requests mirrored.
    pub fn mirror(&self) -> Option<(u32, f64)> {
        self.mirror
    }
    /// The classifier the route (or its service) names, if any: it
    /// decides what is retried, hedged again and counted against an
    /// endpoint.
    pub fn classifier(&self) -> Option<&crate::policy::classify::Classifier> {
        self.classifier.as_ref()
    }
    /// The route's hedging policy and its state, if it has one.
    pub fn hedge(
        &self,
    ) -> Option<(
        &crate::config::HedgePolicy,
        &Arc<crate::policy::hedge::HedgeState>,
    )> {
        self.hedge.as_deref().map(|(p, s)| (p, s))
    }

    /// The route's rate limit and its buckets, if it has one.
    pub fn rate_limit(
        &self,
    ) -> Option<(
        &crate::config::RateLimit,
        &crate::policy::ratelimit::Limiter,
    )> {
        self.limiter.as_deref().map(|(l, b)| (l, &**b))
    }
}

/// A compiled backend.
#[derive(Debug)]
pub struct BackendEntry {
    pub(crate) name: Arc<str>,
    pub(crate) config: Shared<Backend>,
    /// Held inline when there is one (most EDS backends of a large mesh
    /// have few endpoints per client; one allocation fewer each).
    pub(crate) endpoints: SmallVec<[EndpointEntry; 1]>,
    pub(crate) upstream_tls: Option<Arc<UpstreamTls>>,
    /// For a `strict` DNS backend: each name's addresses it was compiled
    /// with (`None`: not looked up yet, the name stands as its endpoint).
    pub(crate) resolved: Box<[Option<Addresses>]>,
}

/// The addresses a DNS name had at one lookup; a lookup with the same
/// answer keeps the same allocation, so identity says "unchanged".
pub type Addresses = Arc<[std::net::IpAddr]>;

/// Why a name has no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS lookup of `{host}`: {reason}")]
pub struct LookupError {
    /// The name.
    pub host: String,
    /// What went wrong (the resolver's words, or no answer in time).
    pub reason: String,
}

#[cfg(feature = "dns")]
impl LookupError {
    pub(crate) fn new(host: &str, reason: impl Into<String>) -> Self {
        Self {
            host: host.to_owned(),
            reason: reason.into(),
        }
    }
}

/// What DNS answered so far, as snapshot compilation reads it.
pub(crate) trait DnsView {
    /// The addresses of `host` as `dns` looks it up, once known.
    fn addresses(&self, dns: &crate::config::Dns, host: &str) -> Option<Addresses>;
}

/// The buckets of `config`'s inbound rate limits: `previous`'s for a
/// service whose limit is the same, new ones otherwise.
fn inbound_limits(
    config: &Config,
    previous: Option<&Snapshot>,
) -> Vec<Option<Arc<crate::policy::ratelimit::Limiter>>> {
    config
        .inbound
        .iter()
        .map(|p| {
            let limit = p.rate_limit.as_ref()?;
            let kept = previous.and_then(|prev| {
                let i = prev
                    .config
                    .inbound
                    .iter()
                    .position(|o| o.service == p.service)?;
                let same = prev.config.inbound[i].rate_limit.as_ref() == Some(limit);
                same.then(|| prev.inbound_limits.get(i).cloned().flatten())
                    .flatten()
            });
            Some(kept.unwrap_or_else(|| {
                Arc::new(crate::policy::ratelimit::Limiter::new(
                    limit,
                    std::time::Instant::now(),
                ))
            }))
        })
        .collect()
}

/// No DNS: names stand as their endpoints.
pub(crate) struct NoDns;

impl DnsView for NoDns {
    fn addresses(&self, _: &crate::config::Dns, _: &str) -> Option<Addresses> {
        None
    }
}

/// The host of `host:port` (without an IPv6 literal's brackets) and the port.
pub(crate) fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

/// How connections to a backend's endpoints are secured: with the
/// endpoint's address, the key of a connection pool. Two backends whose
/// endpoints share an address but expect different identities get
/// different connections, each verified for what its backend expects.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// The SPIFFE IDs the endpoints may present; `None` when the config
    /// named none that is valid, and then every handshake is refused
    /// (validation refuses such configs; this is the fail-closed fallback).
    pub identities: Option<crate::identity::IdentityMatcher>,
    /// The server name sent in the handshake, if any.
    pub sni: Option<Arc<str>>,
    /// The identity source whose SVID is presented; the workload's when
    /// `None` (see [`Mesh::identity_for`](crate::Mesh::identity_for)).
    pub certificate: Option<Arc<str>>,
    /// The identity source whose bundles verify the server.
    pub trust: Option<Arc<str>>,
}

impl UpstreamTls {
    /// The TLS a backend's config asks for, if mutual.
    pub fn of(backend: &Backend) -> Option<Self> {
        let tls = backend.tls.as_ref()?;
        (tls.mode == crate::config::BackendTlsMode::Mutual).then(|| Self {
            identities: tls.matcher().ok(),
            sni: tls.sni.as_deref().map(Arc::from),
            certificate: tls.certificate.as_deref().map(Arc::from),
            trust: tls.trust.as_deref().map(Arc::from),
        })
    }
}

impl BackendEntry {
    fn compile(b: &Shared<Backend>, dns: &dyn DnsView) -> Self {
        let strict = b
            .dns
            .as_ref()
            .filter(|d| d.mode == crate::config::DnsMode::Strict);
        let mut endpoints = SmallVec::with_capacity(b.endpoints.len());
        let mut resolved = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (origin, e) in b.endpoints.iter().enumerate() {
            let origin = origin as u32;
            let found = strict.and_then(|d| {
                let (host, port) = split_host_port(&e.address)?;
                Some((dns.addresses(d, host)?, port))
            });
            if strict.is_some() {
                resolved.push(found.as_ref().map(|(a, _)| a.clone()));
            }
            let Some((addresses, port)) = found else {
                endpoints.push(EndpointEntry {
                    address: Arc::from(e.address.as_str()),
                    weight: e.weight,
                    origin,
                });
                continue;
            };
            // Two names with one address give one endpoint.
            for ip in addresses.iter().take(crate::config::MAX_DNS_ADDRESSES) {
                let address: Arc<str> = std::net::SocketAddr::new(*ip, port).to_string().into();
                if seen.insert(address.clone()) {
                    endpoints.push(EndpointEntry {
                        address,
                        weight: e.weight,
                        origin,
                    });
                }
            }
        }
        BackendEntry {
            name: b.name.shared(),
            config: b.clone(),
            endpoints,
            upstream_tls: UpstreamTls::of(b).map(Arc::new),
            resolved: resolved.into(),
        }
    }

    /// Whether DNS still answers what this entry was compiled with.
    fn same_answers(&self, dns: &dyn DnsView) -> bool {
        let Some(d) = &self.config.dns else {
            return true;
        };
        if self.resolved.is_empty() {
            return true;
        }
        self.config
            .endpoints
            .iter()
            .zip(self.resolved.iter())
            .all(|(e, before)| {
                let now = split_host_port(&e.address).and_then(|(h, _)| dns.addresses(d, h));
                match (before, &now) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                }
            })
    }

    /// The config endpoint compiled endpoint `i` comes from (for a DNS
    /// backend, the name it was looked up from).
    pub fn origin(&self, i: usize) -> Option<&crate::config::Endpoint> {
        let e = self.endpoints.get(i)?;
        self.config.endpoints.get(e.origin as usize)
    }

    /// The backend name: also its key for runtime state.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
    /// Its configuration.
    pub fn config(&self) -> &Backend {
        &self.config
    }
    /// Its endpoints.
    pub fn endpoints(&self) -> &[EndpointEntry] {
        &self.endpoints
    }
    /// Its load-balancer policy.
    pub fn load_balancer(&self) -> &LoadBalancer {
        &self.config.load_balancer
    }

    /// How its endpoints are reached over mutual TLS; `None` for plaintext.
    pub fn upstream_tls(&self) -> Option<&Arc<UpstreamTls>> {
        self.upstream_tls.as_ref()
    }
}

/// A compiled endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointEntry {
    /// `host:port`.
    pub address: Arc<str>,
    /// Relative weight.
    pub weight: u32,
    /// The index of the config endpoint it comes from (see
    /// [`BackendEntry::origin`]).
    pub origin: u32,
}

/// A cumulative weight table for weighted choice.
#[derive(Debug, Clone)]
pub struct WeightTable {
    /// (item, cumulative weight up to and including it); weights of zero are
    /// kept out. Most routes split over one or two backends: those are held
    /// inline, not in an allocation of their own (10,000 of them at 10,000
    /// services).
    entries: SmallVec<[(u32, u64); 2]>,
    total: u64,
}

impl WeightTable {
    /// Builds a table from (item, weight) pairs.
    pub fn new(items: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut total = 0u64;
        let mut entries = SmallVec::new();
        for (item, w) in items {
            if w > 0 {
                total += u64::from(w);
                entries.push((item, total));
            }
        }
        entries.shrink_to_fit();
        Self { entries, total }
    }

    /// The sum of the weights.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The items and their weights.
    pub fn items(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        let mut prev = 0;
        self.entries.iter().map(move |&(item, cum)| {
            let w = cum - prev;
            prev = cum;
            (item, w)
        })
    }

    /// Picks an item for a uniformly random `sample`: each item with
    /// probability weight / total. `None` only when the table is empty.
    pub fn pick(&self, sample: u64) -> Option<u32> {
        if let [(only, _)] = self.entries.as_slice() {
            return Some(*only);
        }
        // Multiply-shift maps the sample onto 0..total without a division.
        let x = ((u128::from(sample) * u128::from(self.total)) >> 64) as u64;
        let i = self.entries.partition_point(|&(_, cum)| cum <= x);
        self.entries.get(i).map(|&(item, _)| item)
    }
}

/// A compiled match: every present condition must hold.
#[derive(Debug)]
pub(crate) struct CompiledMatch {
    pub(crate) path: Option<CompiledPath>,
    pub(crate) methods: Vec<Box<str>>,
    pub(crate) headers: Vec<(http::HeaderName, CompiledString)>,
    pub(crate) query: Vec<(Box<str>, CompiledString)>,
}

#[derive(Debug)]
pub(crate) enum CompiledPath {
    Exact(Arc<str>),
    Prefix(Arc<str>),
    Regex(Regex),
}

#[derive(Debug)]
pub(crate) enum CompiledString {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
    Present(bool),
}

/// Why a config could not be compiled. Validation rejects all of these
/// first, so seeing one means a config skipped validation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The config did not validate.
    #[error(transparent)]
    Invalid(#[from] crate::config::ConfigError),
}

impl Snapshot {
    /// Validates and compiles `config`.
    pub fn compile(config: Config, version: u64, source: Source) -> Result<Self, CompileError> {
        config.validate()?;
        Ok(Self::compile_valid(Arc::new(config), version, source))
    }

    /// The empty snapshot: no services, every request passes through.
    pub fn empty(version: u64) -> Self {
        Self::compile_valid(Arc::new(Config::default()), version, Source::Empty)
    }

    /// An empty snapshot waiting for its first config from `source`.
    pub fn waiting(source: Source) -> Self {
        Self::compile_valid(Arc::new(Config::default()), 0, source)
    }

    /// Compiles a config that has passed validation. Anything validation
    /// would have refused is skipped rather than panicking.
    fn compile_valid(config: Arc<Config>, version: u64, source: Source) -> Self {
        Self::compile_from(config, version, source, None, &NoDns)
    }

    /// Compiles a validated `config`, sharing with `previous` the compiled
    /// services and backends whose config is shared with it (the same
    /// [`Shared`](crate::config::Shared) allocation): what did not change
    /// is not compiled again, and keeps its identity, by which the data
    /// path keeps its runtime state.
    pub(crate) fn compile_from(
        config: Arc<Config>,
        version: u64,
        source: Source,
        previous: Option<&Snapshot>,
        dns: &dyn DnsView,
    ) -> Self {
        let locality = previous.and_then(|p| p.locality.clone());
        let candidate = previous.and_then(|p| p.candidate.clone());
        let inbound_limits = inbound_limits(&config, previous);
        let previous = previous.filter(|p| !p.services.is_empty() || !p.backends.is_empty());
        let mut old_backends =
            Entries::new(previous.map(|p| (&p.config.backends[..], &p.backends[..])));
        let backends: Vec<Arc<BackendEntry>> = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| match old_backends.get(i, b) {
                Some(old) if old.same_answers(dns) => old.clone(),
                _ => Arc::new(BackendEntry::compile(b, dns)),
            })
            .collect();
        // The same names at the same places: the previous index serves,
        // and compiled routes keep their backend indexes.
        let same_indexes = previous.is_some_and(|p| {
            p.backends.len() == backends.len()
                && p.backends
                    .iter()
                    .zip(&backends)
                    .all(|(a, b)| a.name == b.name)
        });
        let backend_index = match previous {
            Some(p) if same_indexes => p.backend_index.clone(),
            _ => {
                let mut index =
                    BackendIndex::with_capacity_and_hasher(backends.len(), Fast::default());
                for (i, b) in backends.iter().enumerate() {
                    index.insert(b.name.clone(), i as u32);
                }
                index
            }
        };

        // A compiled service is kept when its routes' backends keep their
        // indexes and the default timeout its routes may take is the same.
        let mut old_services = Entries::new(
            previous
                .filter(|p| p.config.defaults.timeout == config.defaults.timeout)
                .map(|p| (&p.config.services[..], &p.services[..])),
        );
        let mut services = Vec::with_capacity(config.services.len());
        let mut policies = EqualHeld::default();
        for (i, s) in config.services.iter().enumerate() {
            let entry = match old_services.get(i, s) {
                Some(old) if same_indexes || old.same_backends(s, &backend_index) => old.clone(),
                _ => Arc::new(ServiceEntry::compile(
                    s,
                    &config,
                    &backend_index,
                    &mut policies,
                )),
            };
            services.push(entry);
        }
        let hosts = Self::host_table(&config, &services, previous);
        Self {
            version,
            source,
            created: SystemTime::now(),
            config,
            hosts,
            services,
            backends,
            backend_index,
            locality,
            inbound_limits,
            candidate,
        }
    }

    /// This snapshot as `version`, for a caller in `locality`: the same
    /// compiled config, shared.
    pub(crate) fn relocated(&self, version: u64, locality: Option<Arc<Locality>>) -> Self {
        Self {
            version,
            source: self.source.clone(),
            created: SystemTime::now(),
            config: self.config.clone(),
            hosts: self.hosts.clone(),
            services: self.services.clone(),
            backends: self.backends.clone(),
            backend_index: self.backend_index.clone(),
            locality,
            inbound_limits: self.inbound_limits.clone(),
            candidate: self.candidate.clone(),
        }
    }

    /// This snapshot as `version`, with `candidate` evaluated beside it:
    /// the same compiled config, shared.
    pub(crate) fn with_candidate(&self, version: u64, candidate: Option<Arc<Candidate>>) -> Self {
        let mut snap = self.relocated(version, self.locality.clone());
        snap.candidate = candidate;
        snap
    }

    /// The candidate config evaluated beside this one, if one is loaded
    /// (see [`Mesh::set_candidate`](crate::Mesh::set_candidate)).
    #[inline]
    pub fn candidate(&self) -> Option<&Arc<Candidate>> {
        self.candidate.as_ref()
    }

    /// Where the caller runs, if known: endpoints are preferred by their
    /// distance from it (see [`LocalityLb`](crate::config::LocalityLb)).
    pub fn locality(&self) -> Option<&Locality> {
        self.locality.as_deref()
    }

    /// The host table of `services`: the previous snapshot's with the
    /// hosts of the services at changed places replaced, when the two have
    /// as many services; made afresh otherwise.
    fn host_table(
        config: &Config,
        services: &[Arc<ServiceEntry>],
        previous: Option<&Snapshot>,
    ) -> HostTable {
        // The compiled services are the config's, place by place.
        if let Some(p) = previous.filter(|p| p.services.len() == services.len()) {
            let mut hosts = p.hosts.clone();
            let changed = p.services.iter().zip(services).enumerate();
            for (i, _) in changed.filter(|(_, (a, b))| !Arc::ptr_eq(a, b)) {
                if let Some(old) = p.config.services.get(i) {
                    for k in host_keys(old) {
                        if hosts.get(&k) == Some(&(i as u32)) {
                            hosts.remove(&k);
                        }
                    }
                }
                if let Some(new) = config.services.get(i) {
                    for k in host_keys(new) {
                        hosts.insert(k, i as u32);
                    }
                }
            }
            return hosts;
        }
        let mut hosts = HostTable::with_capacity_and_hasher(services.len(), Fast::default());
        for (i, s) in config.services.iter().enumerate() {
            for k in host_keys(s) {
                hosts.insert(k, i as u32);
            }
        }
        hosts
    }

    /// The version: strictly increasing across the snapshots one `Mesh`
    /// publishes.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Where the config came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// When this snapshot was compiled.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// The config it was compiled from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the snapshot has no services (everything passes through).
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// What to do with unknown hosts.
    pub fn unknown_hosts(&self) -> UnknownHosts {
        self.config.defaults.unknown_hosts
    }

    /// The services. An entry is shared with the snapshot before when its
    /// config did not change (`Arc::ptr_eq` tells).
    pub fn services(&self) -> &[Arc<ServiceEntry>] {
        &self.services
    }

    /// The backends. An entry is shared with the snapshot before when its
    /// config did not change (`Arc::ptr_eq` tells): state kept per backend
    /// can be kept by identity.
    pub fn backends(&self) -> &[Arc<BackendEntry>] {
        &self.backends
    }

    /// A backend by index (as held by route split tables).
    pub fn backend(&self, index: u32) -> Option<&BackendEntry> {
        self.backends.get(index as usize).map(|b| &**b)
    }

    /// A backend by name.
    pub fn backend_named(&self, name: &str) -> Option<&BackendEntry> {
        self.backend_index.get(name).and_then(|&i| self.backend(i))
    }

    /// The inbound policy of `service`, if the config has one.
    pub fn inbound(&self, service: &str) -> Option<&InboundPolicy> {
        self.config.inbound.iter().find(|p| p.service == service)
    }

    /// The buckets of `service`'s inbound rate limit, if it has one.
    pub fn inbound_limiter(&self, service: &str) -> Option<&crate::policy::ratelimit::Limiter> {
        let i = self
            .config
            .inbound
            .iter()
            .position(|p| p.service == service)?;
        self.inbound_limits.get(i)?.as_deref()
    }

    /// The service that claims `host` (no port; any ASCII case), without
    /// allocating.
    pub fn service_for_host(&self, host: &str) -> Option<&ServiceEntry> {
        self.service_index_for_host(host).map(|(_, s)| s)
    }

    /// A service by index.
    pub fn service(&self, index: u32) -> Option<&ServiceEntry> {
        self.services.get(index as usize).map(|s| &**s)
    }

    /// The service that claims `host` and its index.
    pub fn service_index_for_host(&self, host: &str) -> Option<(u32, &ServiceEntry)> {
        let idx = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            let mut buf = [0u8; 253];
            let dst = buf.get_mut(..host.len())?;
            dst.copy_from_slice(host.as_bytes());
            dst.make_ascii_lowercase();
            let lower = std::str::from_utf8(dst).ok()?;
            self.hosts.get(lower)
        } else {
            self.hosts.get(host)
        };
        idx.and_then(|&i| Some((i, &**self.services.get(i as usize)?)))
    }
}

fn compile_match(m: &crate::config::RouteMatch) -> Option<CompiledMatch> {
    Some(CompiledMatch {
        path: match &m.path {
            None => None,
            // Shared: most routes' paths are a few common ones (`/`).
            Some(PathMatch::Exact(p)) => Some(CompiledPath::Exact(Name::new(p).shared())),
            Some(PathMatch::Prefix(p)) => Some(CompiledPath::Prefix(Name::new(p).shared())),
            Some(PathMatch::Regex(r)) => Some(CompiledPath::Regex(compile_regex(r).ok()?)),
        },
        methods: m.methods.iter().map(|s| s.as_str().into()).collect(),
        headers: m
            .headers
            .iter()
            .map(|(k, v)| {
                Some((
                    http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                    compile_string(v)?,
                ))
            })
            .collect::<Option<_>>()?,
        query: m
            .query
            .iter()
            .map(|(k, v)| Some((k.as_str().into(), compile_string(v)?)))
            .collect::<Option<_>>()?,
    })
}

fn compile_string(m: &StringMatch) -> Option<CompiledString> {
    Some(match m {
        StringMatch::Exact(s) => CompiledString::Exact(s.as_str().into()),
        StringMatch::Prefix(s) => CompiledString::Prefix(s.as_str().into()),
        StringMatch::Regex(r) => CompiledString::Regex(compile_regex(r).ok()?),
        StringMatch::Present(p) => CompiledString::Present(*p),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// DNS answers from a table.
    struct Answers(Vec<(&'static str, Addresses)>);

    impl DnsView for Answers {
        fn addresses(&self, _: &crate::config::Dns, host: &str) -> Option<Addresses> {
            self.0
                .iter()
                .find(|(h, _)| *h == host)
                .map(|(_, a)| a.clone())
        }
    }

    fn ips(list: &[&str]) -> Addresses {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn a_strict_dns_backend_has_one_endpoint_per_address_and_recompiles_on_new_answers() {
        let cfg = Config::from_yaml(
            r#"
backends:
  - name: b
    endpoints: ["a.test:80", { address: "b.test:80", weight: 3 }, "c.test:80"]
    dns: { mode: strict }
"#,
        )
        .unwrap();
        let b = &cfg.backends[0];
        let many: Vec<String> = (0..100).map(|i| format!("10.1.0.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let answers = Answers(vec![
            ("a.test", ips(&["10.0.0.1", "fd00::1"])),
            // An address two names share is one endpoint.
            ("b.test", ips(&["10.0.0.1", "10.0.0.2"])),
            ("c.test", ips(&many)),
        ]);
        let entry = BackendEntry::compile(b, &answers);
        let addrs: Vec<&str> = entry.endpoints.iter().map(|e| &*e.address).collect();
        assert_eq!(&addrs[..3], ["10.0.0.1:80", "[fd00::1]:80", "10.0.0.2:80"]);
        assert_eq!(
            addrs.len(),
            3 + crate::config::MAX_DNS_ADDRESSES,
            "a name gives at most the first 64"
        );
        // Each endpoint keeps its name's weight, found through its origin.
        assert_eq!(entry.endpoints[2].weight, 3);
        assert_eq!(entry.origin(2).unwrap().address, "b.test:80");
        assert!(entry.same_answers(&answers));
        // A name not looked up yet stands as its endpoint.
        let partial = Answers(vec![("a.test", ips(&["10.0.0.1"]))]);
        let entry2 = BackendEntry::compile(b, &partial);
        let addrs: Vec<&str> = entry2.endpoints.iter().map(|e| &*e.address).collect();
        assert_eq!(addrs, ["10.0.0.1:80", "b.test:80", "c.test:80"]);
        assert!(!entry.same_answers(&partial));
        // The same answers in new allocations are new answers (the
        // resolver keeps the allocation while an answer is unchanged).
        let again = Answers(vec![("a.test", ips(&["10.0.0.1"]))]);
        assert!(!entry2.same_answers(&again));
        assert!(entry2.same_answers(&partial));
    }

    #[test]
    fn weight_table_picks_in_proportion_at_the_edges() {
        let t = WeightTable::new([(7, 90), (8, 0), (9, 10)]);
        assert_eq!(t.total(), 100);
        assert_eq!(t.pick(0), Some(7));
        assert_eq!(t.pick(u64::MAX), Some(9));
        // The boundary: 90% of the sample space goes to the first item.
        let edge = (u64::MAX / 100) * 90;
        assert_eq!(t.pick(edge - (1 << 20)), Some(7));
        assert_eq!(t.pick(edge + (1 << 20)), Some(9));
        assert_eq!(t.items().collect::<Vec<_>>(), vec![(7, 90), (9, 10)]);
        assert_eq!(WeightTable::new([(1, 0)]).pick(5), None);
    }

    #[test]
    fn a_service_host_value_is_made_once_and_shared() {
        let cfg = Config::from_yaml(
            "services: [{ name: a, routes: [{ to: [b] }] }, { name: c, hosts: [c.ns, c], routes: [{ to: [b] }] }]\n\
             backends: [{ name: b, endpoints: ['127.0.0.1:1'] }]",
        )
        .unwrap();
        let snap = Snapshot::compile(cfg, 1, Source::Code).unwrap();
        let (a, c) = (snap.service(0).unwrap(), snap.service(1).unwrap());
        assert_eq!(a.host_value("a").unwrap(), "a");
        assert_eq!(c.host_value("c.ns").unwrap(), "c.ns");
        assert_eq!(c.host_value("c").unwrap(), "c");
        // Anything else is the caller's to make (a port, another case).
        assert!(c.host_value("c:80").is_none() && c.host_value("C").is_none());
        assert!(a.host_value("c").is_none());
        // The value's bytes are the config's name's, not a copy.
        let name = &snap.config.services[0].name;
        assert_eq!(
            a.host_value("a").unwrap().as_bytes().as_ptr(),
            name.as_ptr()
        );
    }

    /// A snapshot compiled from the one before keeps its host table up to
    /// date at the places that changed, whatever the case of the hosts.
    #[test]
    fn the_host_table_follows_a_changed_service_in_any_case() {
        let yaml = |hosts: &str| {
            format!(
                "services: [{{ name: a, hosts: [A.ns, a], routes: [{{ to: [b] }}] }}, \
                 {{ name: c, hosts: [{hosts}], routes: [{{ to: [b] }}] }}]\n\
                 backends: [{{ name: b, endpoints: ['127.0.0.1:1'] }}]"
            )
        };
        let first = Config::from_yaml(&yaml("C.ns, c")).unwrap();
        let one = Snapshot::compile(first.clone(), 1, Source::Code).unwrap();
        let index = |s: &Snapshot, h: &str| s.service_index_for_host(h).map(|(i, _)| i);
        assert_eq!(index(&one, "c.NS"), Some(1));
        // Service a is the same config part; c has other hosts.
        let mut next = first;
        next.services[1] = Config::from_yaml(&yaml("D.ns, c")).unwrap().services[1].clone();
        let two = Snapshot::compile_from(Arc::new(next), 2, Source::Code, Some(&one), &NoDns);
        assert!(!Arc::ptr_eq(&one.services[1], &two.services[1]));
        assert!(Arc::ptr_eq(&one.services[0], &two.services[0]));
        assert_eq!(index(&two, "c.ns"), None, "the host it dropped");
        assert_eq!(index(&two, "d.NS"), Some(1));
        assert_eq!(index(&two, "c"), Some(1));
        assert_eq!(index(&two, "a.ns"), Some(0), "the service unchanged");
        assert_eq!(two.hosts.len(), 4);
    }

    /// Routes with equal retry policies share one; each route still has
    /// its own policy's values, past the number of distinct policies
    /// looked through too.
    #[test]
    fn equal_retry_policies_are_held_once() {
        let mut yaml = String::from("services:\n");
        // Three alike, one other, then 20 more all different.
        for (i, ms) in [100, 100, 200, 100].into_iter().chain(300..320).enumerate() {
            yaml.push_str(&format!(
                "  - {{ name: s{i}, routes: [{{ retry: {{ attempts: 2, per_try_timeout: {ms}ms }}, to: [b] }}] }}\n"
            ));
        }
        yaml.push_str("backends: [{ name: b, endpoints: ['127.0.0.1:1'] }]");
        let cfg = Config::from_yaml(&yaml).unwrap();
        let snap = Snapshot::compile(cfg.clone(), 1, Source::Code).unwrap();
        let retry = |i: usize| {
            snap.service(u32::try_from(i).unwrap()).unwrap().routes()[0]
                .retry
                .clone()
                .unwrap()
        };
        assert!(Shared::same(&retry(0), &retry(1)));
        assert!(Shared::same(&retry(0), &retry(3)));
        assert!(!Shared::same(&retry(0), &retry(2)));
        let own = |i: usize| cfg.services[i].routes[0].retry.clone().unwrap();
        assert!(Shared::same(&retry(0), &own(0)), "the config's, not a copy");
        for i in 0..cfg.services.len() {
            assert_eq!(
                *retry(i),
                *own(i),
                "service {i} has its own policy's values"
            );
        }
    }
}
