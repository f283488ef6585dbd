//! A resilience testing kit (feature `testing`): simulated endpoints with
//! latency distributions, error rates, capacity and outages on a schedule,
//! behind the real mesh layers, under tokio's paused clock. A test of your
//! retry, timeout, hedging, outlier and concurrency settings runs
//! thousands of calls in milliseconds, and the same way every time.
//!
//! ```
//! use proxyless_core::{Mesh, config::Config};
//! use proxyless_tower::testing::{Endpoint, Latency, Sim};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), proxyless_tower::BoxError> {
//! let ms = Duration::from_millis;
//! // Ratings: three endpoints, each failing 30% of calls.
//! let flaky = Endpoint::new().latency(Latency::Uniform(ms(5), ms(40))).errors(0.3);
//! let sim = Sim::new(7)
//!     .endpoint("10.0.0.1:80", flaky.clone())
//!     .endpoint("10.0.0.2:80", flaky.clone())
//!     .endpoint("10.0.0.3:80", flaky);
//! let mesh = Mesh::from_config(Config::from_yaml(r#"
//! services:
//!   - name: ratings
//!     routes:
//!       - timeout: 500ms
//!         retry: { attempts: 7, on: [5xx], backoff: { base: 5ms, max: 20ms } }
//!         to: [ratings]
//! defaults: { retry_budget: { ratio: 1.0 } }
//! backends:
//!   - { name: ratings, endpoints: ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] }
//! "#)?)?;
//! let report = sim.client(&mesh).run(2_000, 20, |_| "http://ratings/").await;
//! // With ratings failing 30% of calls, 99.9% of mine succeed within 500 ms.
//! assert!(report.success_within(ms(500)) >= 0.999, "{report}");
//! # Ok(()) }
//! ```
//!
//! What is real: every mesh layer (route, telemetry, rate limit, fault,
//! timeout, mirror, retry or hedging, breaker, adaptive limit, balancer,
//! outlier detection), driven by the config given. What is simulated: the
//! network and the endpoints. An endpoint answers after a latency drawn
//! from its distribution (plus its queue when it has a number of workers),
//! with its error status for its share of calls, and refuses connections
//! during its outages; an address no endpoint has refuses connections.
//!
//! Determinism: run under a current-thread runtime with the clock paused
//! (`#[tokio::test(start_paused = true)]`, tokio's `test-util` feature).
//! The endpoints draw from the seed given to [`Sim::new`], and
//! [`Sim::client`] seeds the mesh's own draws (weighted splits, balancer
//! picks, backoff jitter, faults, mirrors) on the calling thread, so a
//! test gives the same report every run.

use crate::body::{MeshBody, ResponseBody};
use crate::error::ErrorKind;
use crate::{BoxError, MeshLayer, MeshService};
use http::{Request, Response, StatusCode};
use proxyless_core::Mesh;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

/// How long an endpoint takes to answer.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniform between the two.
    Uniform(Duration, Duration),
    /// Exponential with this mean (a long tail).
    Exponential(Duration),
    /// `fast` mostly, `slow` for a share of calls (0 to 1): a tail that
    /// hedging is for.
    Bimodal {
        /// The usual latency.
        fast: Duration,
        /// The tail's.
        slow: Duration,
        /// The share of calls that take `slow`.
        slow_share: f64,
    },
}

impl Latency {
    fn draw(&self, rng: &mut StdRng) -> Duration {
        match *self {
            Self::Fixed(d) => d,
            Self::Uniform(lo, hi) if hi > lo => lo + (hi - lo).mul_f64(rng.random::<f64>()),
            Self::Uniform(lo, _) => lo,
            Self::Exponential(mean) => {
                // Inverse transform; capped at 50 means so one draw cannot
                // stall a test.
                let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
                mean.mul_f64((-u.ln()).min(50.0))
            }
            Self::Bimodal {
                fast,
                slow,
                slow_share,
            } => {
                if rng.random::<f64>() < slow_share {
                    slow
                } else {
                    fast
                }
            }
        }
    }
}

/// A simulated endpoint's behaviour.
#[derive(Debug, Clone)]
pub struct Endpoint {
    latency: Latency,
    errors: f64,
    error_status: StatusCode,
    workers: Option<usize>,
    outages: Vec<(Duration, Duration)>,
}

impl Default for Endpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl Endpoint {
    /// Answers 200 after a millisecond, without limit.
    pub fn new() -> Self {
        Self {
            latency: Latency::Fixed(Duration::from_millis(1)),
            errors: 0.0,
            error_status: StatusCode::SERVICE_UNAVAILABLE,
            workers: None,
            outages: Vec::new(),
        }
    }

    /// How long it takes to answer.
    #[must_use]
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }

    /// The share of calls (0 to 1) answered with the error status.
    #[must_use]
    pub fn errors(mut self, share: f64) -> Self {
        self.errors = share.clamp(0.0, 1.0);
        self
    }

    /// The status of its errors (503 unless set).
    #[must_use]
    pub fn error_status(mut self, status: StatusCode) -> Self {
        self.error_status = status;
        self
    }

    /// It serves `n` calls at once; the rest wait in its queue (so its
    /// latency grows with the load beyond `n`).
    #[must_use]
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n.max(1));
        self
    }

    /// It refuses connections from `from` to `to` after the simulation
    /// starts.
    #[must_use]
    pub fn outage(mut self, from: Duration, to: Duration) -> Self {
        self.outages.push((from, to));
        self
    }
}

/// An endpoint as the simulation runs it.
struct Running {
    behaviour: Endpoint,
    workers: Option<Arc<tokio::sync::Semaphore>>,
    answered: AtomicU64,
}

struct Shared {
    endpoints: HashMap<String, Arc<Running>>,
    rng: Mutex<StdRng>,
    started: Mutex<Option<Instant>>,
    seed: u64,
}

/// A set of simulated endpoints, by address.
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.shared.endpoints.keys().collect();
        names.sort();
        f.debug_struct("Sim").field("endpoints", &names).finish()
    }
}

impl Sim {
    /// No endpoints yet; draws from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            shared: Arc::new(Shared {
                endpoints: HashMap::new(),
                rng: Mutex::new(StdRng::seed_from_u64(seed)),
                started: Mutex::new(None),
                seed,
            }),
        }
    }

    /// Adds (or replaces) the endpoint at `address` (`ip:port` or
    /// `name:port`, as the config names it). On a simulation a client
    /// already uses, the result is a new simulation whose other endpoints
    /// are the same ones (their counts and queues shared); the client
    /// keeps the old one.
    #[must_use]
    pub fn endpoint(self, address: &str, endpoint: Endpoint) -> Self {
        let mut shared = Arc::try_unwrap(self.shared).unwrap_or_else(|arc| Shared {
            endpoints: arc.endpoints.clone(),
            rng: Mutex::new(StdRng::seed_from_u64(arc.seed)),
            started: Mutex::new(None),
            seed: arc.seed,
        });
        shared
            .endpoints
            .insert(address.to_owned(), Arc::new(Running::new(endpoint)));
        Self {
            shared: Arc::new(shared),
        }
    }

    /// Calls the endpoint at `address` answered (errors included; refused
    /// connections not).
    pub fn answered(&self, address: &str) -> u64 {
        self.shared
            .endpoints
            .get(address)
            .map_or(0, |r| r.answered.load(Ordering::Relaxed))
    }

    /// A mesh client over these endpoints: the real [`MeshLayer`] for
    /// `mesh`, over a transport that delivers to the simulation. Seeds the
    /// mesh's draws on this thread (see the module's docs).
    pub fn client(&self, mesh: &Mesh) -> SimClient {
        seed_this_thread(self.shared.seed);
        let layer = MeshLayer::new(mesh.clone());
        SimClient {
            svc: layer.layer(Transport { sim: self.clone() }),
            layer,
            refusal_pause: Duration::ZERO,
        }
    }

    fn since_start(&self) -> Duration {
        let mut started = self
            .shared
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let t0 = *started.get_or_insert_with(Instant::now);
        t0.elapsed()
    }

    fn draw<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        f(&mut self
            .shared
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
    }
}

impl Running {
    fn new(behaviour: Endpoint) -> Self {
        Self {
            workers: behaviour
                .workers
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
            behaviour,
            answered: AtomicU64::new(0),
        }
    }
}

/// The simulated network under the mesh: a request goes to the endpoint
/// its URI's authority names.
#[derive(Clone, Debug)]
pub struct Transport {
    sim: Sim,
}

impl tower_service::Service<Request<MeshBody>> for Transport {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<MeshBody>) -> Self::Future {
        let sim = self.sim.clone();
        let address = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        Box::pin(async move {
            let at = sim.since_start();
            let Some(ep) = sim.shared.endpoints.get(&address) else {
                return Err(refused(&address));
            };
            let b = &ep.behaviour;
            if b.outages
                .iter()
                .any(|(from, to)| (*from..*to).contains(&at))
            {
                return Err(refused(&address));
            }
            let (latency, fails) =
                sim.draw(|rng| (b.latency.draw(rng), rng.random::<f64>() < b.errors));
            let _worker = match &ep.workers {
                Some(w) => Some(w.clone().acquire_owned().await?),
                None => None,
            };
            tokio::time::sleep(latency).await;
            ep.answered.fetch_add(1, Ordering::Relaxed);
            let status = if fails {
                b.error_status
            } else {
                StatusCode::OK
            };
            let mut resp = Response::new(address);
            *resp.status_mut() = status;
            Ok(resp)
        })
    }
}

fn refused(address: &str) -> BoxError {
    Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("simulated: {address} refuses connections"),
    ))
}

/// The mesh over a simulation.
#[derive(Clone, Debug)]
pub struct SimClient {
    svc: MeshService<Transport>,
    layer: MeshLayer,
    refusal_pause: Duration,
}

impl SimClient {
    /// In [`run`](Self::run), a caller whose call the mesh refused
    /// (a [refusal](ErrorKind::is_refusal): circuit open, rate limited,
    /// ...) waits `pause` before its next call, as a caller that backs
    /// off does. Without it a refused caller calls again at once, and
    /// refusals, which take no simulated time, can use up a run before
    /// its clock moves.
    #[must_use]
    pub fn pause_after_refusal(mut self, pause: Duration) -> Self {
        self.refusal_pause = pause;
        self
    }

    /// The runtime state (counters, breakers, endpoints) behind it.
    pub fn runtime(&self) -> &Arc<crate::runtime::Runtime> {
        self.layer.runtime()
    }

    /// One call.
    pub async fn call(
        &self,
        req: Request<String>,
    ) -> Result<Response<ResponseBody<String>>, BoxError> {
        self.svc.clone().oneshot(req).await
    }

    /// `calls` GETs of the URIs `uri(i)` gives, `concurrency` at a time (a
    /// closed loop), each timed from when it is sent.
    pub async fn run<U>(
        &self,
        calls: u32,
        concurrency: u32,
        uri: impl Fn(u32) -> U + Send + Sync + 'static,
    ) -> Report
    where
        U: AsRef<str>,
    {
        let uri = Arc::new(uri);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (client, uri, next) = (self.clone(), uri.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut report = Report::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Ok(i) = u32::try_from(i) else { break };
                    if i >= calls {
                        break;
                    }
                    let req = Request::get(uri(i).as_ref()).body(String::new());
                    let started = Instant::now();
                    let result = match req {
                        Ok(req) => client.call(req).await,
                        Err(e) => Err(e.into()),
                    };
                    report.record(&result, started.elapsed());
                    let refused = matches!(&result, Err(e) if ErrorKind::of(&**e).is_refusal());
                    if refused && !client.refusal_pause.is_zero() {
                        tokio::time::sleep(client.refusal_pause).await;
                    }
                }
                report
            }));
        }
        let mut all = Report::default();
        for t in tasks {
            if let Ok(r) = t.await {
                all.merge(r);
            }
        }
        all.latencies.sort_by_key(|(d, _)| *d);
        all
    }
}

/// What a run came to.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Each call's latency and whether it succeeded (a 2xx), sorted by
    /// latency.
    pub latencies: Vec<(Duration, bool)>,
    /// Responses by status.
    pub statuses: BTreeMap<u16, u32>,
    /// Calls that got no response, by [`ErrorKind`] name.
    pub errors: BTreeMap<&'static str, u32>,
}

impl Report {
    fn record(
        &mut self,
        result: &Result<Response<ResponseBody<String>>, BoxError>,
        took: Duration,
    ) {
        let ok = match result {
            Ok(r) => {
                *self.statuses.entry(r.status().as_u16()).or_default() += 1;
                r.status().is_success()
            }
            Err(e) => {
                *self.errors.entry(ErrorKind::of(&**e).as_str()).or_default() += 1;
                false
            }
        };
        self.latencies.push((took, ok));
    }

    fn merge(&mut self, other: Self) {
        self.latencies.extend(other.latencies);
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// Calls made.
    pub fn calls(&self) -> usize {
        self.latencies.len()
    }

    /// The share of calls that succeeded.
    pub fn success_rate(&self) -> f64 {
        self.share(|_, ok| ok)
    }

    /// The share of calls that succeeded within `d`.
    pub fn success_within(&self, d: Duration) -> f64 {
        self.share(|took, ok| ok && took <= d)
    }

    /// The latency under which a share `p` (0 to 1) of the calls finished,
    /// failed ones included.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64) * p.clamp(0.0, 1.0)).ceil() as usize;
        self.latencies[i.clamp(1, self.latencies.len()) - 1].0
    }

    fn share(&self, f: impl Fn(Duration, bool) -> bool) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let n = self.latencies.iter().filter(|(d, ok)| f(*d, *ok)).count();
        n as f64 / self.latencies.len() as f64
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} calls, {:.2}% succeeded; p50 {:?}, p99 {:?}, p99.9 {:?}; statuses {:?}; errors {:?}",
            self.calls(),
            self.success_rate() * 100.0,
            self.percentile(0.5),
            self.percentile(0.99),
            self.percentile(0.999),
            self.statuses,
            self.errors
        )
    }
}

/// Seeds the mesh's own random draws on this thread (weighted splits,
/// balancer picks, backoff jitter, fault and mirror shares), for a
/// reproducible test under a current-thread runtime. [`Sim::client`] calls
/// it.
pub fn seed_this_thread(seed: u64) {
    crate::runtime::seed_this_thread(seed);
}
