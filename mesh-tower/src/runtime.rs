//! Runtime state shared by the layers of one [`MeshLayer`](crate::MeshLayer):
//! per-backend breakers and balancer turns, per-endpoint load, latency and
//! outlier state, the retry budget, and counters.
//!
//! State is keyed by backend name and endpoint address (see
//! [`proxyless_core::state`]), so it survives config swaps for whatever did not
//! change. Per snapshot version, each backend is *resolved* once (lazily, on
//! its first request): its endpoint states, weights and balancer tables are
//! gathered into a [`ResolvedBackend`] that later requests reach with one
//! `arc-swap` load and an index.

use crate::error::{CircuitOpen, CircuitReason, NoHealthyEndpoint};
use crate::ext::Routed;
use crate::telemetry::metrics::RouteMetrics;
use arc_swap::{ArcSwap, ArcSwapOption};
use proxyless_core::config::{self, LoadBalancer, Locality, LocalityLb, OutlierDetection};
use proxyless_core::policy::Outcome;
use proxyless_core::policy::balance::{
    Maglev, Ring, RoundRobin, hash_key, pick_two, pick_weighted,
};
use proxyless_core::policy::breaker::Breaker;
use proxyless_core::policy::budget::RetryBudget;
use proxyless_core::policy::concurrency::AdaptiveLimit;
use proxyless_core::policy::ewma::PeakEwma;
use proxyless_core::policy::locality::{Plan, PlanEndpoint};
use proxyless_core::policy::outlier::{Health, OutlierState};
use proxyless_core::snapshot::{BackendEntry, ServiceEntry, Snapshot};
use proxyless_core::state::{BackendKey, EndpointKey, StateMap};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Latency assumed for an endpoint before it has answered (Linkerd's default).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast the latency estimate forgets (Linkerd's default).
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[cfg(feature = "testing")]
thread_local! {
    /// The mesh's draws on this thread, when a test seeded them.
    static SEEDED: std::cell::RefCell<Option<rand::rngs::StdRng>> =
        const { std::cell::RefCell::new(None) };
}

thread_local! {
    /// The mesh's draws on this thread: `rand`'s small fast generator,
    /// seeded from its thread generator. The draws pick backends and
    /// endpoints, sample percentages and jitter backoffs, nothing secret,
    /// so they need not cost a cryptographic generator's (three a request).
    static FAST: std::cell::RefCell<Option<rand::rngs::SmallRng>> =
        const { std::cell::RefCell::new(None) };
}

/// The mesh's randomness: a fast generator per thread ([`FAST`]), or
/// (feature `testing`) a seeded one when a test asked for it on this
/// thread.
pub(crate) fn random<T>() -> T
where
    rand::distr::StandardUniform: rand::distr::Distribution<T>,
{
    #[cfg(feature = "testing")]
    {
        use rand::Rng;
        let seeded = SEEDED.with(|s| s.try_borrow_mut().ok()?.as_mut().map(|r| r.random()));
        if let Some(v) = seeded {
            return v;
        }
    }
    use rand::{Rng, SeedableRng};
    FAST.with(|fast| {
        let Ok(mut fast) = fast.try_borrow_mut() else {
            return rand::random();
        };
        fast.get_or_insert_with(|| rand::rngs::SmallRng::from_rng(&mut rand::rng()))
            .random()
    })
}

/// Seeds the mesh's draws on this thread.
#[cfg(feature = "testing")]
pub(crate) fn seed_this_thread(seed: u64) {
    use rand::SeedableRng;
    SEEDED.with(|s| *s.borrow_mut() = Some(rand::rngs::StdRng::seed_from_u64(seed)));
}

/// The mesh's clock: tokio's, so paused-time tests drive it too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// State shared by the layers of one client stack.
#[derive(Debug)]
pub struct Runtime {
    backends: StateMap<BackendKey, BackendState>,
    endpoints: StateMap<EndpointKey, EndpointState>,
    resolved: ArcSwapOption<Resolved>,
    resolve_lock: Mutex<()>,
    budget: ArcSwap<Budget>,
    epoch: Instant,
    stats: Stats,
    passthrough: OnceLock<Arc<RouteMetrics>>,
    /// Whether every response carries [`Served`](crate::ext::Served).
    served: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Budget {
    params: config::RetryBudget,
    state: RetryBudget,
}

/// Counters of what the stack did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Original requests seen by the retry layer.
    pub requests: AtomicU64,
    /// Retries sent.
    pub retries: AtomicU64,
    /// Retries wanted but refused by the budget.
    pub budget_exhausted: AtomicU64,
    /// Retries wanted but refused by a backend's `max_retries`.
    pub retry_overflow: AtomicU64,
    /// Mirrored requests sent.
    pub mirrored: AtomicU64,
    /// Endpoint ejections by outlier detection.
    pub ejections: AtomicU64,
    /// Hedged attempts sent (beyond the first).
    pub hedges: AtomicU64,
    /// Hedged requests' attempts cancelled when another answered first.
    pub hedges_cancelled: AtomicU64,
    /// Hedges wanted but refused by a budget.
    pub hedges_refused: AtomicU64,
    /// Retries and hedges not sent because the request's deadline would
    /// pass before they could answer.
    pub hopeless_skipped: AtomicU64,
}

impl Default for Runtime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime {
    /// Puts [`Served`](crate::ext::Served) on every response (or not:
    /// then only where the mesh's own layers read it).
    pub fn set_served_extension(&self, on: bool) {
        self.served.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether every response carries [`Served`](crate::ext::Served).
    pub fn served_extension(&self) -> bool {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Empty state.
    pub fn new() -> Self {
        let epoch = now();
        let params = config::RetryBudget::default();
        Self {
            backends: StateMap::new(),
            endpoints: StateMap::new(),
            resolved: ArcSwapOption::empty(),
            resolve_lock: Mutex::new(()),
            budget: ArcSwap::from_pointee(Budget {
                state: RetryBudget::new(params.ratio, params.min_per_second, params.ttl, epoch),
                params,
            }),
            epoch,
            stats: Stats::default(),
            passthrough: OnceLock::new(),
            served: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Runs `f` with the retry budget the snapshot configures (a changed
    /// budget starts afresh).
    pub(crate) fn with_budget<T>(&self, snap: &Snapshot, f: impl FnOnce(&RetryBudget) -> T) -> T {
        let want = &snap.config().defaults.retry_budget;
        let current = self.budget.load();
        if current.params == *want {
            return f(&current.state);
        }
        let fresh = Arc::new(Budget {
            state: RetryBudget::new(want.ratio, want.min_per_second, want.ttl, now()),
            params: want.clone(),
        });
        self.budget.store(fresh.clone());
        f(&fresh.state)
    }

    /// The resolved state of backend `index` of `snap`.
    pub fn backend(&self, snap: &Snapshot, index: u32) -> Option<Arc<ResolvedBackend>> {
        let resolved = self.resolved_for(snap);
        let slot = resolved.backends.get(index as usize)?;
        if let Some(b) = slot.get() {
            return Some(b.clone());
        }
        let entry = snap.backends().get(index as usize)?;
        Some(
            slot.get_or_init(|| Arc::new(self.resolve_backend(entry, snap.locality())))
                .clone(),
        )
    }

    fn resolved_for(&self, snap: &Snapshot) -> Arc<Resolved> {
        if let Some(r) = self.resolved.load_full()
            && r.version == snap.version()
        {
            return r;
        }
        let _guard = self
            .resolve_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.resolved.load_full();
        if let Some(r) = &current
            && r.version == snap.version()
        {
            return r.clone();
        }
        let fresh = Arc::new(Resolved::carrying(snap, current.as_deref()));
        // A request still on an older snapshot gets a private resolution;
        // only a newer one replaces the shared one and prunes state.
        if current.as_ref().is_none_or(|r| r.version < snap.version()) {
            self.resolved.store(Some(fresh.clone()));
            match &current {
                Some(before) => before.prune(snap, self),
                None => {
                    self.backends.retain(|k| snap.has_backend(k));
                    self.endpoints.retain(|k| snap.has_endpoint(k));
                }
            }
        }
        fresh
    }

    /// The metric handles of a routed request (resolved once per route and
    /// snapshot).
    pub fn route_metrics(&self, routed: &Routed) -> Arc<RouteMetrics> {
        let Some((service, route, backend)) = routed.indexes() else {
            return self
                .passthrough
                .get_or_init(|| {
                    Arc::new(RouteMetrics::new(
                        "outbound",
                        Arc::from(""),
                        Arc::from(""),
                        Arc::from("passthrough"),
                    ))
                })
                .clone();
        };
        let snap = routed.snapshot();
        let resolved = self.resolved_for(snap);
        let routes = resolved.services.get(service as usize).and_then(|slot| {
            let entry = snap.services().get(service as usize)?;
            Some(slot.get_or_init(|| {
                Arc::new(ServiceRoutes {
                    routes: entry.routes().iter().map(|_| OnceLock::new()).collect(),
                })
            }))
        });
        let slot = routes.and_then(|s| s.routes.get(route as usize));
        let svc = snap.service(service);
        let r = svc.and_then(|s| s.routes().get(route as usize));
        let (Some(slot), Some(svc), Some(r)) = (slot, svc, r) else {
            return Arc::new(RouteMetrics::new(
                "outbound",
                Arc::from("?"),
                Arc::from("?"),
                Arc::from("?"),
            ));
        };
        let handles = slot.get_or_init(|| RouteHandles {
            backends: r
                .split()
                .items()
                .filter_map(|(b, _)| {
                    let name = snap.backend(b)?.name().clone();
                    let m =
                        RouteMetrics::new("outbound", svc.name().clone(), r.name().clone(), name);
                    Some((b, Arc::new(m)))
                })
                .collect(),
        });
        match handles.backends.iter().find(|(b, _)| *b == backend) {
            Some((_, m)) => m.clone(),
            // A mirror's backend is not in the split; its requests are not
            // the caller's and are counted apart.
            None => Arc::new(RouteMetrics::new(
                "mirror",
                svc.name().clone(),
                r.name().clone(),
                snap.backend(backend)
                    .map_or_else(|| Arc::from("?"), |b| b.name().clone()),
            )),
        }
    }

    fn resolve_backend(&self, entry: &BackendEntry, caller: Option<&Locality>) -> ResolvedBackend {
        let cfg = entry.config();
        let cb = cfg.circuit_breaker.clone().unwrap_or_default();
        let state = self
            .backends
            .get_or_insert_with(entry.name(), || BackendState {
                breaker: Breaker::new(cb.max_requests, cb.max_pending, cb.max_retries),
                ejected: AtomicU32::new(0),
                turn: AtomicUsize::new(0),
                adaptive: Mutex::new(None),
                adaptive_limit: AtomicU32::new(0),
                adaptive_in_flight: Arc::new(AtomicU32::new(0)),
            });
        state
            .breaker
            .set_limits(cb.max_requests, cb.max_pending, cb.max_retries);
        state.configure_adaptive(cfg.adaptive_concurrency.as_deref(), entry.name());
        let endpoints: Box<[Arc<EndpointState>]> = entry
            .endpoints()
            .iter()
            .map(|e| {
                let key = EndpointKey::new(entry.name().clone(), e.address.clone());
                self.endpoints
                    .get_or_insert_with(&key, || EndpointState::new(e.address.clone(), self.epoch))
            })
            .collect();
        // Ejections of endpoints that left the backend no longer count.
        let ejected_now = endpoints
            .iter()
            .filter(|e| e.ejected_until.load(Ordering::Acquire) != 0)
            .count();
        state.ejected.store(ejected_now as u32, Ordering::Release);
        let weights: Box<[u32]> = entry.endpoints().iter().map(|e| e.weight.max(1)).collect();
        let pairs: Vec<(&str, u32)> = entry
            .endpoints()
            .iter()
            .zip(weights.iter())
            .map(|(e, w)| (&*e.address, *w))
            .collect();
        let picker = match cfg.load_balancer {
            LoadBalancer::RoundRobin => Picker::RoundRobin(RoundRobin::new(&weights)),
            LoadBalancer::Random => Picker::Random,
            LoadBalancer::RingHash { ref header } => Picker::Hash {
                header: http::HeaderName::from_bytes(header.as_bytes()).ok(),
                table: HashTable::Ring(Ring::new(&pairs)),
            },
            LoadBalancer::Maglev { ref header } => Picker::Hash {
                header: http::HeaderName::from_bytes(header.as_bytes()).ok(),
                table: HashTable::Maglev(Maglev::new(&pairs)),
            },
            _ => Picker::P2c,
        };
        // A DNS name's addresses take its place, locality and health.
        let origins: Vec<&config::Endpoint> = (0..entry.endpoints().len())
            .filter_map(|i| entry.origin(i))
            .collect();
        let places: Vec<PlanEndpoint<'_>> = origins
            .iter()
            .map(|e| PlanEndpoint {
                locality: e.locality.as_deref(),
                priority: e.priority,
                weight: e.weight,
            })
            .collect();
        let default_lb = LocalityLb::default();
        let plan = Plan::new(
            caller,
            &places,
            cfg.locality_lb.as_deref().unwrap_or(&default_lb),
        );
        let resolved = ResolvedBackend {
            name: entry.name().clone(),
            state,
            endpoints,
            weights,
            healthy: origins.iter().map(|e| e.healthy).collect(),
            plan,
            picker,
            outlier: cfg.outlier_detection.as_deref().cloned(),
            epoch: self.epoch,
            mutual_tls: entry.upstream_tls().is_some(),
        };
        resolved.publish_endpoint_gauges();
        resolved
    }
}

/// Per-version view of the backends and routes, each resolved on first use
/// or carried over from the version before when the snapshot shares its
/// compiled entry (the config did not change it).
#[derive(Debug)]
struct Resolved {
    version: u64,
    /// The caller's locality the backends were resolved for.
    locality: Option<Locality>,
    /// The snapshot's compiled backends and services (shared with it).
    backend_entries: Box<[Arc<BackendEntry>]>,
    service_entries: Box<[Arc<ServiceEntry>]>,
    backends: Box<[OnceLock<Arc<ResolvedBackend>>]>,
    services: Box<[OnceLock<Arc<ServiceRoutes>>]>,
}

impl Resolved {
    /// The view of `snap`, with what `before` resolved for the entries the
    /// two snapshots share.
    fn carrying(snap: &Snapshot, before: Option<&Resolved>) -> Self {
        // Backends resolved for another caller locality rank their
        // endpoints for it: resolved afresh.
        let before = before.filter(|b| b.locality.as_ref() == snap.locality());
        Self {
            version: snap.version(),
            locality: snap.locality().cloned(),
            backends: carried(
                snap.backends(),
                before.map(|b| (&*b.backend_entries, &*b.backends)),
            ),
            services: carried(
                snap.services(),
                before.map(|b| (&*b.service_entries, &*b.services)),
            ),
            backend_entries: snap.backends().into(),
            service_entries: snap.services().into(),
        }
    }

    /// Drops the state of what `snap` (newer) no longer names.
    fn prune(&self, snap: &Snapshot, runtime: &Runtime) {
        let now = snap.backends();
        let before = &self.backend_entries;
        let aligned =
            before.len() == now.len() && before.iter().zip(now).all(|(a, b)| a.name() == b.name());
        if !aligned {
            runtime.backends.retain(|k| snap.has_backend(k));
            runtime.endpoints.retain(|k| snap.has_endpoint(k));
            return;
        }
        // The same backends at the same places: only the endpoints of
        // those that changed can have gone.
        for (a, b) in before.iter().zip(now).filter(|(a, b)| !Arc::ptr_eq(a, b)) {
            for e in a.endpoints() {
                if !b.endpoints().iter().any(|n| n.address == e.address) {
                    runtime
                        .endpoints
                        .remove(&EndpointKey::new(a.name().clone(), e.address.clone()));
                }
            }
        }
    }
}

/// Compiled entries and the slots resolved for them, place by place.
type Slots<'a, E, T> = (&'a [Arc<E>], &'a [OnceLock<Arc<T>>]);

/// The slots of `entries`, with the resolutions `before` (the entries of
/// an older view and their slots) made for the same entries: found at the
/// same place when the lists are as long, by address otherwise.
fn carried<E, T>(entries: &[Arc<E>], before: Option<Slots<'_, E, T>>) -> Box<[OnceLock<Arc<T>>]> {
    let addr = |e: &Arc<E>| Arc::as_ptr(e) as usize;
    let by_addr: Option<HashMap<usize, &OnceLock<Arc<T>>>> = before
        .filter(|(old, _)| old.len() != entries.len())
        .map(|(old, slots)| old.iter().map(addr).zip(slots).collect());
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let slot = match (&by_addr, before) {
                (Some(map), _) => map.get(&addr(e)).copied(),
                (None, Some((old, slots))) => old
                    .get(i)
                    .filter(|o| Arc::ptr_eq(o, e))
                    .and_then(|_| slots.get(i)),
                (None, None) => None,
            };
            match slot.and_then(OnceLock::get) {
                Some(r) => OnceLock::from(r.clone()),
                None => OnceLock::new(),
            }
        })
        .collect()
}

/// The metric handles of one service's routes.
#[derive(Debug)]
struct ServiceRoutes {
    routes: Box<[OnceLock<RouteHandles>]>,
}

/// Metric handles of one route, per backend of its split.
#[derive(Debug)]
struct RouteHandles {
    backends: Box<[(u32, Arc<RouteMetrics>)]>,
}

/// State of one backend that outlives snapshots.
#[derive(Debug)]
pub struct BackendState {
    /// Its circuit breaker.
    pub breaker: Breaker,
    ejected: AtomicU32,
    turn: AtomicUsize,
    /// Its adaptive concurrency limit, when the config asks for one.
    adaptive: Mutex<Option<AdaptiveLimit>>,
    /// The adaptive limit now (0: none), read without the lock.
    adaptive_limit: AtomicU32,
    /// Requests in flight under the adaptive limit.
    adaptive_in_flight: Arc<AtomicU32>,
}

impl BackendState {
    /// Starts, keeps or ends the adaptive limit as `cfg` says: kept while
    /// its settings stay the same (a config push does not reset what it
    /// learned).
    fn configure_adaptive(&self, cfg: Option<&config::AdaptiveConcurrency>, name: &Arc<str>) {
        let mut adaptive = self.adaptive.lock().unwrap_or_else(PoisonError::into_inner);
        match cfg {
            None if adaptive.is_none() => return,
            None => *adaptive = None,
            Some(c) if adaptive.as_ref().is_some_and(|a| a.config() == c) => return,
            Some(c) => *adaptive = Some(AdaptiveLimit::new(c, now())),
        }
        // 0 when the config no longer asks for one.
        let limit = adaptive.as_ref().map_or(0, AdaptiveLimit::limit);
        self.adaptive_limit.store(limit, Ordering::Relaxed);
        drop(adaptive);
        publish_adaptive_limit(name, limit);
    }

    /// The adaptive limit now, if the backend has one.
    pub fn adaptive_limit(&self) -> Option<u32> {
        let limit = self.adaptive_limit.load(Ordering::Relaxed);
        (limit > 0).then_some(limit)
    }

    /// Admits a request under the adaptive limit: a slot held until it is
    /// answered (`None` without a limit), or the limit that refused it.
    pub fn admit_adaptive(&self) -> Result<Option<AdaptiveSlot>, u32> {
        let limit = self.adaptive_limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Ok(None);
        }
        self.adaptive_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| limit)?;
        Ok(Some(AdaptiveSlot {
            in_flight: self.adaptive_in_flight.clone(),
        }))
    }

    /// Folds an answer's latency into the adaptive limit.
    fn sample_adaptive(&self, rtt: Duration, t: Instant, name: &Arc<str>) {
        if self.adaptive_limit.load(Ordering::Relaxed) == 0 {
            return;
        }
        let in_flight = self.adaptive_in_flight.load(Ordering::Relaxed);
        let mut adaptive = self.adaptive.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(a) = adaptive.as_mut() else { return };
        if a.on_sample(rtt, in_flight.max(1), t) {
            let limit = a.limit();
            self.adaptive_limit.store(limit, Ordering::Relaxed);
            drop(adaptive);
            publish_adaptive_limit(name, limit);
        }
    }
}

/// `mesh_adaptive_concurrency_limit{backend}`.
fn publish_adaptive_limit(backend: &Arc<str>, limit: u32) {
    metrics::gauge!(
        crate::telemetry::metrics::ADAPTIVE_LIMIT,
        "backend" => backend.to_string()
    )
    .set(f64::from(limit));
}

/// A request admitted under a backend's adaptive limit, until it is
/// answered.
#[derive(Debug)]
pub struct AdaptiveSlot {
    in_flight: Arc<AtomicU32>,
}

impl Drop for AdaptiveSlot {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// State of one endpoint that outlives snapshots.
#[derive(Debug)]
pub struct EndpointState {
    /// Its address.
    pub address: Arc<str>,
    /// Its address as a URI authority, parsed once.
    pub authority: Option<http::uri::Authority>,
    inflight: AtomicU32,
    /// The EWMA estimate as f64 bits, and when it was made (nanoseconds
    /// since the runtime's epoch), readable without the lock.
    ewma_nanos: AtomicU64,
    ewma_stamp: AtomicU64,
    ewma: Mutex<PeakEwma>,
    /// A plain moving average of the attempts' latencies, as f64
    /// nanoseconds (0: none observed yet): what an attempt is expected to
    /// take, for deadline-aware retries. Unlike the peak EWMA it neither
    /// jumps to peaks nor counts failures as slow.
    observed_nanos: AtomicU64,
    outlier: Mutex<OutlierState>,
    /// Nanoseconds since the runtime's epoch until which it is ejected (0: not).
    ejected_until: AtomicU64,
}

impl EndpointState {
    fn new(address: Arc<str>, epoch: Instant) -> Self {
        let ewma = PeakEwma::new(DEFAULT_RTT, EWMA_DECAY, epoch);
        Self {
            authority: address.parse().ok(),
            address,
            inflight: AtomicU32::new(0),
            ewma_nanos: AtomicU64::new(ewma.nanos().to_bits()),
            ewma_stamp: AtomicU64::new(0),
            ewma: Mutex::new(ewma),
            observed_nanos: AtomicU64::new(0),
            outlier: Mutex::new(OutlierState::default()),
            ejected_until: AtomicU64::new(0),
        }
    }

    /// Requests in flight to it.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Its latency estimate.
    pub fn latency(&self) -> Duration {
        Duration::from_nanos(f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed)) as u64)
    }

    /// What an attempt to it has been taking (a moving average of its
    /// observed latencies, failures included at their real length), or
    /// `None` before its first answer.
    pub fn observed_latency(&self) -> Option<Duration> {
        let nanos = f64::from_bits(self.observed_nanos.load(Ordering::Relaxed));
        (nanos > 0.0).then(|| Duration::from_nanos(nanos as u64))
    }

    /// Folds `rtt` into [`observed_latency`](Self::observed_latency).
    /// Called under the EWMA's lock, so updates do not race.
    fn observe_plain(&self, rtt: Duration) {
        let rtt = proxyless_core::policy::ewma::nanos_f64(rtt).max(1.0);
        let was = f64::from_bits(self.observed_nanos.load(Ordering::Relaxed));
        let now = if was > 0.0 {
            was + OBSERVED_WEIGHT * (rtt - was)
        } else {
            rtt
        };
        self.observed_nanos.store(now.to_bits(), Ordering::Relaxed);
    }
}

/// The weight of a new observation in an endpoint's plain moving average
/// of latency: about the last ten attempts count.
const OBSERVED_WEIGHT: f64 = 0.2;

#[derive(Debug)]
enum Picker {
    P2c,
    RoundRobin(RoundRobin),
    Random,
    Hash {
        header: Option<http::HeaderName>,
        table: HashTable,
    },
}

#[derive(Debug)]
enum HashTable {
    Ring(Ring),
    Maglev(Maglev),
}

/// A backend as one snapshot sees it, with the state behind it.
#[derive(Debug)]
pub struct ResolvedBackend {
    /// The backend name.
    pub name: Arc<str>,
    /// Its lasting state.
    pub state: Arc<BackendState>,
    /// Its endpoints, in config order.
    pub endpoints: Box<[Arc<EndpointState>]>,
    weights: Box<[u32]>,
    /// Whether its source lets each endpoint serve.
    healthy: Box<[bool]>,
    /// Levels and localities, when the backend has more than one.
    plan: Option<Plan>,
    picker: Picker,
    outlier: Option<OutlierDetection>,
    epoch: Instant,
    /// Whether its endpoints are reached over mutual TLS.
    pub mutual_tls: bool,
}

/// Why no endpoint could be picked.
#[derive(Debug)]
pub enum PickError {
    /// Every endpoint is ejected.
    CircuitOpen(CircuitOpen),
    /// There are no endpoints.
    NoHealthyEndpoint(NoHealthyEndpoint),
}

impl ResolvedBackend {
    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether endpoint `i` may be picked at `now`; ends ejections whose
    /// time is up.
    fn available(&self, i: usize, now: Instant) -> bool {
        let Some(ep) = self.endpoints.get(i) else {
            return false;
        };
        if !self.healthy.get(i).copied().unwrap_or(true) {
            return false;
        }
        let until = ep.ejected_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if self.nanos_since_epoch(now) < until {
            return false;
        }
        let mut o = ep.outlier.lock().unwrap_or_else(PoisonError::into_inner);
        let returned = o.health(now) == Health::Returned;
        if returned {
            ep.ejected_until.store(0, Ordering::Release);
            let _ = self
                .state
                .ejected
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
        // Unlocked before the gauges look at every endpoint (which may
        // lock theirs).
        drop(o);
        if returned {
            tracing::info!(backend = %self.name, endpoint = %ep.address, "endpoint returns from ejection");
            self.publish_endpoint_gauges();
        }
        true
    }

    /// Picks an endpoint for a request with `headers`, avoiding `avoid`
    /// when another is available.
    pub fn pick(
        &self,
        headers: &http::HeaderMap,
        avoid: Option<&str>,
        samples: (u64, u64),
        now: Instant,
    ) -> Result<usize, PickError> {
        if self.endpoints.is_empty() {
            return Err(PickError::NoHealthyEndpoint(NoHealthyEndpoint {
                backend: self.name.clone(),
            }));
        }
        let avoiding = |i: usize| avoid.is_none_or(|a| *self.endpoints[i].address != *a);
        let t = self.nanos_since_epoch(now);
        // The level (and locality) first, by a sample of its own; then the
        // balancer within it. A retry that must avoid the only endpoint
        // there goes anywhere else before it goes back to it.
        let subset = self.plan.as_ref().and_then(|plan| {
            let sample =
                proxyless_core::policy::balance::mix(samples.0 ^ samples.1.rotate_left(32));
            Some((plan, plan.choose(sample, |i| self.available(i, now))?))
        });
        let within = subset.and_then(|(plan, subset)| {
            self.pick_among(headers, samples, t, |i| {
                plan.contains(subset, i) && avoiding(i) && self.available(i, now)
            })
        });
        let picked = within
            .or_else(|| {
                self.pick_among(headers, samples, t, |i| {
                    avoiding(i) && self.available(i, now)
                })
            })
            .or_else(|| self.pick_among(headers, samples, t, |i| self.available(i, now)));
        picked.ok_or_else(|| {
            if self.healthy.iter().all(|h| !h) {
                return PickError::NoHealthyEndpoint(NoHealthyEndpoint {
                    backend: self.name.clone(),
                });
            }
            PickError::CircuitOpen(CircuitOpen::new(
                self.name.clone(),
                CircuitReason::AllEjected,
            ))
        })
    }

    /// The share of requests each of its levels takes now, by name
    /// (`p0-local`, `p0-zone`, ...), in order; empty when the backend has
    /// one level.
    pub fn level_loads(&self, now: Instant) -> Vec<(String, u32)> {
        let Some(plan) = &self.plan else {
            return Vec::new();
        };
        let loads = plan.loads(|i| self.available(i, now));
        plan.level_names().map(str::to_owned).zip(loads).collect()
    }

    /// The level endpoint `i` is in, when the backend has several.
    pub fn level_of(&self, i: usize) -> Option<&str> {
        let plan = self.plan.as_ref()?;
        let level = plan.level_of(i)?;
        plan.level_names().nth(level as usize)
    }

    /// Whether its source lets endpoint `i` serve (EDS health).
    pub fn is_healthy(&self, i: usize) -> bool {
        self.healthy.get(i).copied().unwrap_or(false)
    }

    fn pick_among(
        &self,
        headers: &http::HeaderMap,
        samples: (u64, u64),
        now: u64,
        available: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match &self.picker {
            Picker::P2c => {
                let (a, b) = pick_two(&self.weights, samples, &available)?;
                Some(if self.cost(b, now) < self.cost(a, now) {
                    b
                } else {
                    a
                })
            }
            Picker::RoundRobin(rr) => {
                let turn = self.state.turn.fetch_add(1, Ordering::Relaxed);
                rr.pick(turn, available)
            }
            Picker::Random => pick_weighted(&self.weights, samples.0, available),
            Picker::Hash { header, table } => {
                let key = header.as_ref().and_then(|h| headers.get(h));
                match key {
                    // No key: any endpoint will do (Envoy picks at random).
                    None => pick_weighted(&self.weights, samples.0, available),
                    Some(v) => {
                        let h = hash_key(v.as_bytes());
                        match table {
                            HashTable::Ring(r) => r.pick(h, available),
                            HashTable::Maglev(m) => m.pick(h, available),
                        }
                    }
                }
            }
        }
    }

    /// Peak-EWMA cost: latency (decayed for the time since it was last
    /// observed) times (requests in flight + 1) over weight.
    fn cost(&self, i: usize, now: u64) -> f64 {
        let ep = &self.endpoints[i];
        let lat = f64::from_bits(ep.ewma_nanos.load(Ordering::Relaxed));
        let idle = Duration::from_nanos(now.saturating_sub(ep.ewma_stamp.load(Ordering::Relaxed)));
        let lat = proxyless_core::policy::ewma::decayed(
            lat,
            idle,
            proxyless_core::policy::ewma::nanos_f64(EWMA_DECAY),
        );
        lat * f64::from(ep.inflight() + 1) / f64::from(self.weights[i])
    }

    /// Marks a request in flight to endpoint `i` until the guard drops.
    pub fn start(&self, i: usize) -> InFlight {
        let ep = self.endpoints[i].clone();
        ep.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight { ep }
    }

    /// Records what a request to endpoint `i` came to: latency for the
    /// balancer, the outcome for outlier detection.
    pub fn record(&self, i: usize, outcome: Outcome, rtt: Duration, now: Instant, stats: &Stats) {
        let Some(ep) = self.endpoints.get(i) else {
            return;
        };
        {
            let mut e = ep.ewma.lock().unwrap_or_else(PoisonError::into_inner);
            // A failure counts as slow, so p2c steers away from an endpoint
            // that fails fast (Finagle's failure penalty).
            // (Bounded: see `PeakEwma::observe_failure`.)
            if outcome.is_5xx() {
                e.observe_failure(rtt, now);
            } else {
                e.observe(rtt, now);
            }
            ep.ewma_nanos.store(e.nanos().to_bits(), Ordering::Relaxed);
            ep.ewma_stamp
                .store(self.nanos_since_epoch(e.stamp()), Ordering::Relaxed);
            ep.observe_plain(rtt);
        }
        self.state.sample_adaptive(rtt, now, &self.name);
        let Some(cfg) = &self.outlier else {
            return;
        };
        let mut o = ep.outlier.lock().unwrap_or_else(PoisonError::into_inner);
        if !o.on_outcome(outcome, cfg) {
            return;
        }
        let n = self.endpoints.len() as u32;
        let allowed = (n * cfg.max_ejection_percent / 100).max(1);
        let admitted = self
            .state
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                (e < allowed).then_some(e + 1)
            })
            .is_ok();
        if admitted {
            let until = o.eject(cfg, now);
            ep.ejected_until
                .store(self.nanos_since_epoch(until), Ordering::Release);
            let ejections = o.ejections();
            // Unlocked before the gauges look at every endpoint.
            drop(o);
            stats.ejections.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::telemetry::metrics::EJECTIONS, "backend" => self.name.to_string())
                .increment(1);
            self.publish_endpoint_gauges();
            tracing::warn!(
                backend = %self.name,
                endpoint = %ep.address,
                ejections,
                for_ms = until.saturating_duration_since(now).as_millis() as u64,
                "endpoint ejected by outlier detection"
            );
        }
    }

    /// Sets `mesh_endpoints{backend, state}` (`healthy`, `ejected`,
    /// `unhealthy`) and `mesh_locality_load_percent{backend, level}`.
    pub fn publish_endpoint_gauges(&self) {
        use crate::telemetry::metrics::{ENDPOINTS, LEVEL_LOAD};
        let total = self.endpoints.len();
        let ejected = self.state.ejected.load(Ordering::Acquire) as usize;
        let unhealthy = self.healthy.iter().filter(|h| !**h).count();
        let serving = total.saturating_sub(ejected).saturating_sub(unhealthy);
        let name = self.name.to_string();
        for (state, n) in [
            ("ejected", ejected),
            ("unhealthy", unhealthy),
            ("healthy", serving),
        ] {
            metrics::gauge!(ENDPOINTS, "backend" => name.clone(), "state" => state).set(n as f64);
        }
        for (level, load) in self.level_loads(now()) {
            metrics::gauge!(LEVEL_LOAD, "backend" => name.clone(), "level" => level)
                .set(f64::from(load));
        }
    }

    /// What another attempt is expected to take at the least: the lowest
    /// [`observed_latency`](EndpointState::observed_latency) among the
    /// endpoints it could go to (healthy, not ejected, other than `avoid`
    /// when there are others). `None` when one of them has never answered
    /// (it may be fast) or there is none: then nothing is known.
    pub fn expected_latency(&self, avoid: Option<&str>, now: Instant) -> Option<Duration> {
        let eligible =
            |i: usize| self.healthy.get(i).copied().unwrap_or(true) && !self.is_ejected(i, now);
        for avoiding in [true, false] {
            let mut best: Option<Duration> = None;
            let mut any = false;
            for (i, ep) in self.endpoints.iter().enumerate() {
                if !eligible(i) || (avoiding && avoid.is_some_and(|a| *ep.address == *a)) {
                    continue;
                }
                any = true;
                let seen = ep.observed_latency()?;
                best = Some(best.map_or(seen, |b| b.min(seen)));
            }
            if any {
                return best;
            }
        }
        None
    }

    /// Whether endpoint `i` is ejected now.
    pub fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.endpoints.get(i).is_some_and(|ep| {
            let until = ep.ejected_until.load(Ordering::Acquire);
            until != 0 && self.nanos_since_epoch(now) < until
        })
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight {
    ep: Arc<EndpointState>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.ep.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proxyless_core::Mesh;
    use proxyless_core::config::Config;

    #[test]
    fn the_fast_draws_are_uniform_and_differ_between_threads() {
        let n = 20_000;
        let draws: Vec<f64> = (0..n).map(|_| random::<f64>()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / f64::from(n);
        // The mean of 20,000 uniform draws is 0.5 with a deviation of 0.002.
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        let tenths = draws.iter().filter(|d| **d < 0.1).count();
        assert!((1_600..2_400).contains(&tenths), "{tenths} under 0.1");
        // Each thread seeds its own generator: their first draws differ.
        let firsts: Vec<u64> = (0..4)
            .map(|_| std::thread::spawn(random::<u64>).join().unwrap())
            .collect();
        assert!(firsts.iter().any(|f| *f != firsts[0]), "{firsts:?}");
    }

    #[test]
    fn an_attempt_is_expected_to_take_the_least_observed_on_the_endpoints_it_could_reach() {
        let yaml = "
services: [{ name: s, routes: [{ to: [b] }] }]
backends: [{ name: b, endpoints: ['127.0.0.1:1', '127.0.0.1:2'] }]
";
        let m = Mesh::from_config(Config::from_yaml(yaml).unwrap()).unwrap();
        let rt = Runtime::new();
        let b = rt.backend(&m.snapshot(), 0).unwrap();
        let (t, ms) = (now(), Duration::from_millis);
        let (one, two) = (Some("127.0.0.1:1"), Some("127.0.0.1:2"));
        assert_eq!(b.expected_latency(None, t), None, "nothing observed yet");
        b.record(0, Outcome::Status(503), ms(200), t, rt.stats());
        // The other endpoint has never answered: it may be fast.
        assert_eq!(b.expected_latency(None, t), None);
        assert_eq!(b.expected_latency(one, t), None);
        b.record(1, Outcome::Status(200), ms(50), t, rt.stats());
        assert_eq!(b.expected_latency(None, t), Some(ms(50)));
        // Avoiding the fast one leaves the slow one; a failure counts at
        // its real length (the balancer's peak EWMA would triple it).
        assert_eq!(b.expected_latency(two, t), Some(ms(200)));
        // A moving average: 200 ms then 100 ms is about 180 ms.
        b.record(0, Outcome::Status(200), ms(100), t, rt.stats());
        let seen = b.endpoints[0].observed_latency().unwrap();
        assert!(
            seen.abs_diff(ms(180)) < Duration::from_micros(1),
            "{seen:?}"
        );
        // With the other endpoint ejected, the retry goes back to the one
        // avoided: its average counts.
        b.endpoints[1]
            .ejected_until
            .store(u64::MAX, Ordering::Release);
        let back = b.expected_latency(one, t).unwrap();
        assert!(
            back.abs_diff(ms(180)) < Duration::from_micros(1),
            "{back:?}"
        );
    }
}
