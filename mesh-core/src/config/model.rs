//! The mesh config model: what a YAML/JSON file or a control plane says.
//!
//! Every struct has a `Default` so configs can be built in code with
//! `..Default::default()`. Files are read by [`Config::from_yaml`] /
//! [`Config::from_json`]; writing one back is plain serde serialization.

use super::duration::serde_human;
use super::name::Name;
use super::shared::Shared;
use crate::identity::SpiffeId;
pub use crate::path::{EscapedSlashes, PathNormalization, Semicolons};
use proxyless_core_derive::Decode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// A whole mesh config.
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct Config {
    /// The config file format version; only `1` exists.
    pub version: u32,
    /// The SPIFFE trust domain of this mesh, e.g. `demo.local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// Mesh-wide defaults.
    pub defaults: Defaults,
    /// The services clients address, each with its routes.
    pub services: Vec<Shared<Service>>,
    /// The backends routes send to.
    pub backends: Vec<Shared<Backend>>,
    /// Inbound (server-side) policies, per service.
    pub inbound: Vec<InboundPolicy>,
    /// This workload's identity files (`MESH_TLS_CERT`, `MESH_TLS_KEY` and
    /// `MESH_TLS_CA` take precedence).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityFiles>,
}

/// The PEM files of this workload's identity.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Decode)]
pub struct IdentityFiles {
    /// The certificate chain, leaf first.
    #[decode(required)]
    pub cert: String,
    /// The leaf's private key.
    #[decode(required)]
    pub key: String,
    /// The trust bundle.
    #[decode(required)]
    pub ca: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            version: 1,
            trust_domain: None,
            identity: None,
            defaults: Defaults::default(),
            services: Vec::new(),
            backends: Vec::new(),
            inbound: Vec::new(),
        }
    }
}

/// Mesh-wide defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct Defaults {
    /// The overall timeout of a route that names none.
    #[serde(with = "serde_human")]
    pub timeout: Duration,
    /// How long a connection attempt to an endpoint may take.
    #[serde(with = "serde_human")]
    pub connect_timeout: Duration,
    /// The budget that bounds retries across the whole mesh.
    pub retry_budget: RetryBudget,
    /// What happens to a request for a host no service claims.
    pub unknown_hosts: UnknownHosts,
    /// How request paths are normalized before authorization and route
    /// matching (and what the application then sees).
    pub path_normalization: PathNormalization,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(1),
            retry_budget: RetryBudget::default(),
            unknown_hosts: UnknownHosts::Passthrough,
            path_normalization: PathNormalization::default(),
        }
    }
}

/// A retry budget: retries may add at most `ratio` of the original requests,
/// plus `min_per_second`, over a sliding `ttl` window (Finagle's and
/// Linkerd's model).
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct RetryBudget {
    /// Retries allowed per original request, `0.0..=1000.0`.
    pub ratio: f64,
    /// Retries allowed per second regardless of the ratio.
    pub min_per_second: u32,
    /// How long a deposit counts for.
    #[serde(with = "serde_human")]
    pub ttl: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// What to do with a request whose host no service claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Decode)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnknownHosts {
    /// Send it to the host as addressed (as Linkerd and Istio do).
    #[default]
    Passthrough,
    /// Refuse it with `NoRoute`.
    Refuse,
}

/// A virtual service: a name clients address and its ordered routes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
#[decode(fallback)]
pub struct Service {
    /// The service name, unique in the mesh.
    #[decode(required)]
    pub name: Name,
    /// Host names that address this service; defaults to `[name]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<Name>,
    /// Routes, tried in order; the first that matches wins.
    pub routes: Vec<Route>,
    /// The classifier, registered in code by this name
    /// (`proxyless_core::policy::classify::register`), for
    /// routes that name none of their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier: Option<String>,
}

impl Service {
    /// The host names that address it: its `hosts`, or its name when it
    /// lists none.
    pub fn host_names(&self) -> &[Name] {
        if self.hosts.is_empty() {
            std::slice::from_ref(&self.name)
        } else {
            &self.hosts
        }
    }
}

/// A route: when a request matches, where it goes and under which policies.
///
/// Policies most routes leave out (fault, mirror, rate limit, hedging) are
/// boxed: absent, each costs a pointer's 8 bytes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
#[decode(fallback)]
pub struct Route {
    /// The route name (unique within its service); defaults to `route-N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    /// Alternatives: the route matches when any one of them matches (an
    /// empty list matches everything). A file may give a single mapping.
    #[serde(rename = "match", skip_serializing_if = "Vec::is_empty")]
    #[decode(rename = "match", with = super::decode::OneOrMany<RouteMatch>)]
    pub matches: Vec<RouteMatch>,
    /// The weighted backends.
    #[decode(required)]
    pub to: Vec<WeightedBackend>,
    /// Overall deadline of a request on this route (default: the mesh's).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serde_human::option::serialize"
    )]
    pub timeout: Option<Duration>,
    /// Retry policy (shared: routes of one config, and of the configs
    /// built one from another, hold an equal policy once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Shared<RetryPolicy>>,
    /// Fault injection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Box<Fault>>,
    /// Traffic mirroring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Box<Mirror>>,
    /// A local rate limit on this route's requests from this workload
    /// (protecting the dependency from this caller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Box<RateLimit>>,
    /// Hedging: after a delay, the same request to another endpoint; the
    /// first good answer wins and the others are cancelled. A route has a
    /// retry policy or a hedging policy, not both (as in gRPC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Box<HedgePolicy>>,
    /// The classifier, registered in code by this name
    /// (`proxyless_core::policy::classify::register`), that
    /// decides what this route's attempts came to: what is retried or
    /// hedged again and what counts against an endpoint. Without one, the
    /// retry policy's `on` list and 5xx-or-no-response do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier: Option<String>,
}

/// Hedged requests (gRPC's hedging policy, Finagle's backup requests): the
/// first attempt is sent; if no good answer came after `delay`, another
/// goes (to another endpoint when there is one), up to `attempts` in all;
/// the first good answer wins and the attempts still out are cancelled.
/// Hedges are budgeted: at most `budget_percent` of the route's requests,
/// and each also draws from the mesh's retry budget, so hedges and
/// retries together cannot multiply the load.
///
/// ```
/// use proxyless_core::config::{Config, HedgeDelay};
/// let cfg = Config::from_yaml(r#"
/// services:
///   - name: search
///     routes: [{ to: [v1], hedge: { delay: p95, budget_percent: 10 } }]
/// backends: [{ name: v1, endpoints: ["10.0.0.1:80", "10.0.0.2:80"] }]
/// "#).unwrap();
/// let hedge = cfg.services[0].routes[0].hedge.as_ref().unwrap();
/// assert_eq!(hedge.delay, HedgeDelay::Percentile(95.0));
/// assert_eq!(hedge.attempts, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct HedgePolicy {
    /// Attempts in all, the first included (2 to 5; default 2).
    #[decode(default = 2)]
    pub attempts: u32,
    /// How long to wait for an answer before the next attempt: a duration
    /// (`20ms`) or a percentile of the route's recent latency (`p90`,
    /// `p95`, `p99`; from 50 to 99.9). With a percentile, nothing is
    /// hedged until the route has answered 20 requests.
    #[decode(required)]
    pub delay: HedgeDelay,
    /// Hedges as a share of the route's requests, at most (percent;
    /// default 5).
    #[decode(default = 5.0)]
    pub budget_percent: f64,
    /// Hedge methods that are not idempotent too (POST, PATCH); gRPC calls
    /// are hedged whatever their method, as gRPC's design allows.
    pub hedge_non_idempotent: bool,
}

impl Default for HedgePolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            delay: HedgeDelay::Fixed(Duration::from_millis(10)),
            budget_percent: 5.0,
            hedge_non_idempotent: false,
        }
    }
}

/// When a hedge goes.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// After this long.
    Fixed(Duration),
    /// After this percentile of the route's recent latency (50 to 99.9).
    Percentile(f64),
}

impl Default for HedgeDelay {
    fn default() -> Self {
        Self::Fixed(Duration::from_millis(10))
    }
}

impl Serialize for HedgeDelay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fixed(d) => s.serialize_str(&super::format_duration(*d)),
            Self::Percentile(p) => s.collect_str(&format_args!("p{p}")),
        }
    }
}

/// A local rate limit: a token bucket, as Envoy's `local_ratelimit` filter
/// has it, optionally one per key. A refused request gets 429 (gRPC:
/// `UNAVAILABLE`, as Envoy's filter answers), `retry-after` and
/// `x-mesh-error: rate_limited`, and is never retried.
///
/// ```
/// use proxyless_core::config::{Config, RateLimitKey};
/// let cfg = Config::from_yaml(r#"
/// services:
///   - name: reviews
///     routes: [{ to: [v1], rate_limit: { max_tokens: 100, fill_interval: 1s, per: { header: x-user } } }]
/// backends: [{ name: v1, endpoints: ["10.0.0.1:80"] }]
/// "#).unwrap();
/// let limit = cfg.services[0].routes[0].rate_limit.as_ref().unwrap();
/// assert_eq!(limit.tokens_per_fill, 100); // defaults to max_tokens
/// assert_eq!(limit.per, Some(RateLimitKey::Header("x-user".into())));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// The bucket's size: the burst allowed.
    pub max_tokens: u32,
    /// Tokens added every `fill_interval` (default: `max_tokens`).
    pub tokens_per_fill: u32,
    /// How often the bucket is filled (default 1s; at least 50ms, as Envoy).
    #[serde(with = "serde_human")]
    pub fill_interval: Duration,
    /// One bucket per value of this key, instead of one in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per: Option<RateLimitKey>,
    /// With `per`, the most keys with a bucket of their own (default
    /// 10,000); the others share one more.
    pub max_keys: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            max_tokens: 1,
            tokens_per_fill: 1,
            fill_interval: Duration::from_secs(1),
            per: None,
            max_keys: DEFAULT_RATE_LIMIT_KEYS,
        }
    }
}

/// The default [`RateLimit::max_keys`].
pub const DEFAULT_RATE_LIMIT_KEYS: u32 = 10_000;
/// The most [`RateLimit::max_keys`].
pub const MAX_RATE_LIMIT_KEYS: u32 = 1_000_000;

/// What a rate limit keeps a bucket per.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RateLimitKey {
    /// The caller's verified SPIFFE ID (inbound only; callers without one
    /// share a bucket).
    Caller,
    /// A request header's value (requests without it share a bucket).
    Header(String),
    /// The request's path (normalized).
    Path,
}

/// Conditions that must all hold for a request to match.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
#[decode(fallback)]
pub struct RouteMatch {
    /// The path condition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Allowed methods (any of them); empty means any method.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[decode(with = super::decode::OneOrMany<String>)]
    pub methods: Vec<String>,
    /// Header conditions, by header name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Query parameter conditions, by parameter name (matched as sent,
    /// without percent-decoding).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, StringMatch>,
}

/// How a request path is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PathMatch {
    /// The whole path, exactly.
    Exact(String),
    /// A plain string prefix, as Envoy's: `/ratings` matches `/ratings`,
    /// `/ratings/1` and `/ratingsX`.
    Prefix(String),
    /// A regular expression that must match the whole path.
    Regex(String),
}

/// How a header or query value is matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StringMatch {
    /// Exactly this value.
    Exact(String),
    /// Starts with this.
    Prefix(String),
    /// A regular expression that must match the whole value.
    Regex(String),
    /// `true`: the header must be present; `false`: it must be absent.
    Present(bool),
}

/// One backend of a route and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Decode)]
#[decode(fallback, shorthand = super::decode::backend_name)]
pub struct WeightedBackend {
    /// The backend's name.
    #[decode(required)]
    pub backend: Name,
    /// Its relative weight (default 1).
    pub weight: u32,
}

impl Default for WeightedBackend {
    fn default() -> Self {
        Self {
            backend: Name::default(),
            weight: 1,
        }
    }
}

/// When and how often a request is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct RetryPolicy {
    /// Total attempts including the first (so `3` is up to two retries).
    pub attempts: u32,
    /// Deadline of each attempt.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serde_human::option::serialize"
    )]
    pub per_try_timeout: Option<Duration>,
    /// The conditions that make an attempt retriable.
    #[decode(with = super::decode::RetryOnList)]
    pub on: Vec<RetryOn>,
    /// HTTP statuses that are retriable under `retriable-status-codes`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// Backoff between attempts.
    pub backoff: Backoff,
    /// Retry methods that are not idempotent (POST, PATCH) too.
    pub retry_non_idempotent: bool,
    /// Bodies up to this many bytes are buffered for replay; larger
    /// requests are sent once.
    pub max_body_bytes: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 2,
            per_try_timeout: None,
            on: vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::GatewayError,
            ],
            retriable_status_codes: Vec::new(),
            backoff: Backoff::default(),
            retry_non_idempotent: false,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// A condition under which an attempt is retried (Envoy's `retry_on` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RetryOn {
    /// Any 5xx status, and connect failures and resets.
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 and 504.
    GatewayError,
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// The connection was reset or closed before a response.
    Reset,
    /// The statuses in `retriable_status_codes`.
    RetriableStatusCodes,
    /// gRPC `CANCELLED`.
    Cancelled,
    /// gRPC `DEADLINE_EXCEEDED`.
    DeadlineExceeded,
    /// gRPC `INTERNAL`.
    Internal,
    /// gRPC `RESOURCE_EXHAUSTED`.
    ResourceExhausted,
    /// gRPC `UNAVAILABLE`.
    Unavailable,
}

impl RetryOn {
    /// Every condition and its name in config files.
    pub const ALL: [(&'static str, RetryOn); 10] = [
        ("5xx", RetryOn::FiveXx),
        ("gateway-error", RetryOn::GatewayError),
        ("connect-failure", RetryOn::ConnectFailure),
        ("reset", RetryOn::Reset),
        ("retriable-status-codes", RetryOn::RetriableStatusCodes),
        ("cancelled", RetryOn::Cancelled),
        ("deadline-exceeded", RetryOn::DeadlineExceeded),
        ("internal", RetryOn::Internal),
        ("resource-exhausted", RetryOn::ResourceExhausted),
        ("unavailable", RetryOn::Unavailable),
    ];
}

impl std::fmt::Display for RetryOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = RetryOn::ALL
            .iter()
            .find(|(_, v)| v == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

/// Exponential backoff with full jitter between retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backoff {
    /// The first retry waits up to this long.
    #[serde(with = "serde_human")]
    pub base: Duration,
    /// No wait is longer than this.
    #[serde(with = "serde_human")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        // Envoy's defaults: 25ms base, 10x base as the cap.
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// Faults injected into a route's traffic (Istio's and Envoy's model).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
pub struct Fault {
    /// Delay a share of requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer a share of requests with an error status without sending them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// An injected delay.
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct FaultDelay {
    /// How long.
    #[serde(with = "serde_human")]
    #[decode(required)]
    pub fixed: Duration,
    /// The share of requests delayed, in percent (0-100).
    #[decode(default = 100.0)]
    pub percent: f64,
}

/// An injected abort.
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct FaultAbort {
    /// The HTTP status answered.
    #[decode(required)]
    pub status: u16,
    /// The share of requests aborted, in percent (0-100).
    #[decode(default = 100.0)]
    pub percent: f64,
}

/// Traffic mirroring: a share of requests is also sent to a shadow backend,
/// whose answers are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct Mirror {
    /// The shadow backend.
    #[decode(required)]
    pub backend: Name,
    /// The share of requests mirrored, in percent (0-100).
    #[decode(default = 100.0)]
    pub percent: f64,
}

/// A backend: a set of endpoints and how they are used.
///
/// Settings most backends leave out are boxed: absent, each costs a
/// pointer's 8 bytes instead of its whole size (a backend is 144 bytes
/// rather than 440, which at 10,000 services is about 6 MB).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
#[decode(fallback)]
pub struct Backend {
    /// The backend name, unique in the mesh.
    #[decode(required)]
    pub name: Name,
    /// Its endpoints: `ip:port` or `dns-name:port`, optionally weighted.
    pub endpoints: Vec<Endpoint>,
    /// The protocol spoken to the endpoints.
    pub protocol: Protocol,
    /// How an endpoint is picked per request.
    pub load_balancer: LoadBalancer,
    /// Concurrency thresholds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Ejection of misbehaving endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<Box<OutlierDetection>>,
    /// TLS toward the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<BackendTls>>,
    /// How endpoints are preferred by locality and priority; absent: the
    /// defaults of [`LocalityLb`] (the caller's zone first, then its
    /// region, then the rest, as capacity allows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locality_lb: Option<Box<LocalityLb>>,
    /// DNS discovery: the endpoints name hosts, looked up by the mesh and
    /// looked up again as their records' TTLs say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Box<Dns>>,
    /// A limit on requests in flight that finds itself from the latencies
    /// the backend answers with (boxed: most backends have none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive_concurrency: Option<Box<AdaptiveConcurrency>>,
}

/// An adaptive concurrency limit for a backend (see
/// `proxyless_core::policy::concurrency`): requests beyond it are refused
/// at once (`ConcurrencyLimited`), not queued.
///
/// ```
/// use proxyless_core::config::Config;
/// let cfg = Config::from_yaml(r#"
/// services: [{ name: search, routes: [{ to: [v1] }] }]
/// backends:
///   - name: v1
///     endpoints: ["10.0.0.1:80"]
///     adaptive_concurrency: { max_limit: 200 }
/// "#).unwrap();
/// let a = cfg.backends[0].adaptive_concurrency.as_ref().unwrap();
/// assert_eq!((a.min_limit, a.max_limit), (3, 200));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct AdaptiveConcurrency {
    /// The floor (the limit keeps a headroom of its square root, so under
    /// a latency collapse it settles a little above), and the limit while
    /// the no-load latency is measured.
    #[decode(default = 3)]
    pub min_limit: u32,
    /// The most it rises to.
    #[decode(default = 1000)]
    pub max_limit: u32,
    /// Where it starts once the first probe is done.
    #[decode(default = 20)]
    pub initial_limit: u32,
    /// How much above the no-load latency a window's mean latency may be
    /// before the limit falls (1.1: 10% above).
    #[decode(default = 1.1)]
    pub tolerance: f64,
    /// How often the limit is adjusted (a window of answers).
    #[serde(with = "serde_human")]
    #[decode(default = Duration::from_millis(100))]
    pub window: Duration,
    /// How often the no-load latency is measured again.
    #[serde(with = "serde_human")]
    #[decode(default = Duration::from_secs(60))]
    pub probe_interval: Duration,
}

impl Default for AdaptiveConcurrency {
    fn default() -> Self {
        Self {
            min_limit: 3,
            max_limit: 1000,
            initial_limit: 20,
            tolerance: 1.1,
            window: Duration::from_millis(100),
            probe_interval: Duration::from_secs(60),
        }
    }
}

/// DNS discovery for a backend whose endpoints name hosts (`name:port`),
/// after Envoy's `STRICT_DNS` and `LOGICAL_DNS` clusters. Each name is
/// looked up (A and AAAA) when the config arrives and again when its
/// records' TTL runs out, within `min_refresh` and `max_refresh`; a failed
/// lookup keeps the last addresses and is tried again sooner, backing off
/// up to `max_refresh`. Only the first request to a name ever waits for a
/// lookup.
///
/// ```
/// use proxyless_core::config::{Config, DnsMode};
/// let cfg = Config::from_yaml(r#"
/// backends:
///   - name: ratings
///     endpoints: ["ratings.internal:9080"]
///     dns: { mode: strict, min_refresh: 5s }
/// "#).unwrap();
/// assert_eq!(cfg.backends[0].dns.as_ref().unwrap().mode, DnsMode::Strict);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Decode)]
pub struct Dns {
    /// `strict` (the default): every address is an endpoint; `logical`:
    /// the one endpoint is one host, whose connections go to the first
    /// address of its latest lookup.
    pub mode: DnsMode,
    /// Name servers (`ip:port`, at most 8); none: the system's
    /// (`/etc/resolv.conf`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    /// The least time between two lookups of a name, whatever its TTL
    /// (default 1s).
    #[serde(with = "serde_human")]
    #[decode(default = DEFAULT_DNS_MIN_REFRESH)]
    pub min_refresh: Duration,
    /// The most time between two lookups of a name (default 60s), and the
    /// longest wait before one is tried again after failing.
    #[serde(with = "serde_human")]
    #[decode(default = DEFAULT_DNS_MAX_REFRESH)]
    pub max_refresh: Duration,
}

/// The default [`Dns::min_refresh`].
pub const DEFAULT_DNS_MIN_REFRESH: Duration = Duration::from_secs(1);
/// The default [`Dns::max_refresh`].
pub const DEFAULT_DNS_MAX_REFRESH: Duration = Duration::from_secs(60);
/// The most name servers a backend's `dns` lists.
pub const MAX_DNS_SERVERS: usize = 8;
/// The most addresses one name gives a `strict` backend (the first ones,
/// in order, are kept; a lookup that returns more says so in a warning).
pub const MAX_DNS_ADDRESSES: usize = 64;

impl Default for Dns {
    fn default() -> Self {
        Self {
            mode: DnsMode::Strict,
            servers: Vec::new(),
            min_refresh: DEFAULT_DNS_MIN_REFRESH,
            max_refresh: DEFAULT_DNS_MAX_REFRESH,
        }
    }
}

/// How a DNS backend's names become endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Decode)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DnsMode {
    /// Every address a name has is an endpoint (Envoy's `STRICT_DNS`).
    #[default]
    Strict,
    /// The name is one endpoint; new connections go to the first address
    /// of its latest lookup (Envoy's `LOGICAL_DNS`).
    Logical,
}

/// One endpoint of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `ip:port`, `[ipv6]:port` or `dns-name:port`.
    pub address: String,
    /// Relative weight for load balancing (default 1).
    pub weight: u32,
    /// Where it runs, if known (shared: the endpoints of one locality hold
    /// it once, and an endpoint is 48 bytes rather than 112).
    pub locality: Option<Shared<Locality>>,
    /// Its priority: 0 (the default) is used first; a higher one takes
    /// traffic as the healthy capacity before it falls short (Envoy's
    /// priority levels).
    pub priority: u32,
    /// Whether its source says it may serve (EDS health; `true` unless a
    /// control plane said otherwise). An unhealthy endpoint is never
    /// picked, but counts in its locality's and priority's capacity.
    pub healthy: bool,
}

impl Endpoint {
    /// A healthy endpoint of weight 1, priority 0, with no locality.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            weight: 1,
            locality: None,
            priority: 0,
            healthy: true,
        }
    }

    /// This endpoint in `locality`.
    #[must_use]
    pub fn in_locality(mut self, locality: Locality) -> Self {
        self.locality = Some(locality.into());
        self
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let plain =
            self.weight == 1 && self.locality.is_none() && self.priority == 0 && self.healthy;
        if plain {
            return s.serialize_str(&self.address);
        }
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("address", &self.address)?;
        if self.weight != 1 {
            m.serialize_entry("weight", &self.weight)?;
        }
        if let Some(l) = &self.locality {
            m.serialize_entry("locality", l)?;
        }
        if self.priority != 0 {
            m.serialize_entry("priority", &self.priority)?;
        }
        if !self.healthy {
            m.serialize_entry("healthy", &false)?;
        }
        m.end()
    }
}

/// Where a workload runs: region, zone and sub-zone (Envoy's `Locality`),
/// written `region/zone/subzone` (trailing parts may be left out:
/// `us-east1/us-east1-b`). The caller's own comes from `MESH_LOCALITY` or
/// the xDS bootstrap's `node.locality`.
///
/// ```
/// use proxyless_core::config::Locality;
/// let l: Locality = "us-east1/us-east1-b".parse().unwrap();
/// assert_eq!(l.zone, "us-east1-b");
/// assert_eq!(l.to_string(), "us-east1/us-east1-b");
/// assert!("a/b/c/d".parse::<Locality>().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    /// The region.
    pub region: String,
    /// The zone within the region.
    pub zone: String,
    /// The sub-zone within the zone.
    pub subzone: String,
}

/// The longest part of a locality, in bytes.
pub const MAX_LOCALITY_PART: usize = 128;

impl Locality {
    /// A locality of its three parts.
    pub fn new(region: &str, zone: &str, subzone: &str) -> Self {
        Self {
            region: region.to_owned(),
            zone: zone.to_owned(),
            subzone: subzone.to_owned(),
        }
    }

    /// Whether no part is set.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }

    /// How far `other` is from this locality: 0 in the same sub-zone, 1
    /// in the same zone, 2 in the same region, 3 elsewhere.
    pub fn distance(&self, other: &Locality) -> u32 {
        if self.region != other.region {
            3
        } else if self.zone != other.zone {
            2
        } else if self.subzone != other.subzone {
            1
        } else {
            0
        }
    }
}

/// Why a text is not a locality, or not a locality pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocalityError {
    /// More than `region/zone/subzone`.
    #[error("`{0}` has more than three parts; a locality is `region/zone/subzone`")]
    TooManyParts(String),
    /// A part over [`MAX_LOCALITY_PART`] bytes.
    #[error("a part of `{0}` is longer than {MAX_LOCALITY_PART} bytes")]
    PartTooLong(String),
    /// A space, a control character, or a `*` where a locality belongs.
    #[error("`{0}` has a space, a control character or `*` (a pattern, not a locality)")]
    BadCharacter(String),
    /// A `*` that is not the last part on its own.
    #[error("`{0}`: `*` must stand alone as the last part (`region/*`)")]
    MisplacedStar(String),
    /// Nothing at all.
    #[error("an empty locality")]
    Empty,
}

impl std::str::FromStr for Locality {
    type Err = LocalityError;

    fn from_str(s: &str) -> Result<Self, LocalityError> {
        let parts: Vec<&str> = s.split('/').collect();
        if parts.len() > 3 {
            return Err(LocalityError::TooManyParts(s.to_owned()));
        }
        for p in &parts {
            if p.len() > MAX_LOCALITY_PART {
                return Err(LocalityError::PartTooLong(s.to_owned()));
            }
            if p.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '*')
            {
                return Err(LocalityError::BadCharacter(s.to_owned()));
            }
        }
        let part = |i: usize| parts.get(i).copied().unwrap_or("");
        Ok(Self::new(part(0), part(1), part(2)))
    }
}

impl std::fmt::Display for Locality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.region)?;
        if !self.zone.is_empty() || !self.subzone.is_empty() {
            write!(f, "/{}", self.zone)?;
        }
        if !self.subzone.is_empty() {
            write!(f, "/{}", self.subzone)?;
        }
        Ok(())
    }
}

impl Serialize for Locality {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Locality-aware load balancing for one backend, after Envoy's priority
/// levels and Istio's `localityLbSetting`.
///
/// Endpoints are ranked into levels: by priority, then (with
/// `prefer_local`) by how far their locality is from the caller's: the
/// same sub-zone, zone, region, a `failover` region, anywhere else. A level
/// takes all traffic while its healthy share times `overprovisioning` is
/// at least 1; below that, the rest spills to the next levels (a level
/// with 2 of 3 endpoints healthy takes 93%). Within a level, localities
/// share traffic by `weights` when any are given (each weight scaled by
/// its locality's healthy share the same way), or in proportion to their
/// endpoints' weights otherwise.
///
/// `distribute` replaces the ranking by distance for callers in a given
/// locality: it names where their traffic goes, in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Decode)]
pub struct LocalityLb {
    /// Rank endpoints by distance from the caller (default `true`). With
    /// `false`, or when the caller's locality is unknown, only priorities
    /// rank.
    #[decode(default = true)]
    pub prefer_local: bool,
    /// Envoy's overprovisioning factor: how much healthy capacity a level
    /// is assumed to have to spare (default 1.4; 1.0 to 10.0).
    #[decode(default = 1.4)]
    pub overprovisioning: f64,
    /// Which region a caller's region fails over to before any other.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<LocalityFailover>,
    /// Fixed shares for callers in given localities.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub distribute: Vec<LocalityDistribute>,
    /// Locality weights (`region/zone/subzone` -> weight; EDS's
    /// `load_balancing_weight` of a locality).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, u32>,
}

impl Default for LocalityLb {
    fn default() -> Self {
        Self {
            prefer_local: true,
            overprovisioning: DEFAULT_OVERPROVISIONING,
            failover: Vec::new(),
            distribute: Vec::new(),
            weights: BTreeMap::new(),
        }
    }
}

/// Envoy's default overprovisioning factor.
pub const DEFAULT_OVERPROVISIONING: f64 = 1.4;

/// A region's failover target (Istio's `failover`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Decode)]
pub struct LocalityFailover {
    /// The caller's region.
    #[decode(required)]
    pub from: String,
    /// The region its traffic goes to when its own cannot take it.
    #[decode(required)]
    pub to: String,
}

/// The most rules in a backend's `locality_lb` lists and maps.
pub const MAX_LOCALITY_RULES: usize = 256;
/// The highest endpoint priority.
pub const MAX_PRIORITY: u32 = 127;

/// Whether `pattern` (a locality whose last part may be `*`, or `*`)
/// covers `l`. A pattern without `*` covers its locality exactly.
///
/// ```
/// use proxyless_core::config::{Locality, locality_pattern_matches};
/// let l = Locality::new("eu", "eu-1", "");
/// assert!(locality_pattern_matches("eu/*", &l));
/// assert!(locality_pattern_matches("eu/eu-1", &l));
/// assert!(!locality_pattern_matches("eu", &l));
/// ```
pub fn locality_pattern_matches(pattern: &str, l: &Locality) -> bool {
    let parts = [&l.region, &l.zone, &l.subzone];
    let mut given = pattern.split('/');
    for part in parts {
        match given.next() {
            Some("*") => return true,
            Some(p) if p == part => {}
            Some(_) => return false,
            None => return part.is_empty(),
        }
    }
    given.next().is_none_or(|p| p == "*")
}

/// Why `pattern` is not a locality pattern, if it is not.
pub fn check_locality_pattern(pattern: &str) -> Result<(), LocalityError> {
    let body = match pattern.strip_suffix('*') {
        Some("") => return Ok(()),
        Some(rest) => rest
            .strip_suffix('/')
            .ok_or_else(|| LocalityError::MisplacedStar(pattern.to_owned()))?,
        None => pattern,
    };
    let l: Locality = body.parse()?;
    if l.is_empty() {
        return Err(LocalityError::Empty);
    }
    if pattern.ends_with('*') && body.split('/').count() >= 3 {
        return Err(LocalityError::TooManyParts(pattern.to_owned()));
    }
    Ok(())
}

/// Where the traffic of callers in one locality goes (Istio's
/// `distribute`). Patterns are localities whose last part may be `*`
/// (`us-east1/*`, `us-east1/us-east1-b/*`), or `*` alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Decode)]
pub struct LocalityDistribute {
    /// The callers it applies to (a pattern).
    #[decode(required)]
    pub from: String,
    /// Pattern -> percent of their traffic; the percents add up to 100.
    /// Endpoints that no pattern matches take none.
    #[decode(required)]
    pub to: BTreeMap<String, u32>,
}

/// The protocol spoken to a backend's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Decode)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 (h2c in plaintext, ALPN under TLS); `h2c` is read as this.
    #[decode(alias = "h2c")]
    Http2,
    /// gRPC: HTTP/2 on the wire (Istio's `grpc` port name, Kuma's
    /// `kuma.io/protocol: grpc`).
    Grpc,
}

impl Protocol {
    /// Whether the endpoints speak HTTP/2 (`http2` and `grpc`).
    pub fn is_http2(self) -> bool {
        matches!(self, Self::Http2 | Self::Grpc)
    }
}

/// How an endpoint is chosen for a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency (Linkerd's default).
    #[default]
    P2cEwma,
    /// Round robin, weighted.
    RoundRobin,
    /// Uniform random, weighted.
    Random,
    /// Consistent hash on a request header, over a ring.
    RingHash {
        /// The header whose value is the key.
        header: String,
    },
    /// Consistent hash on a request header, Maglev table.
    Maglev {
        /// The header whose value is the key.
        header: String,
    },
}

/// Envoy-style circuit-breaker thresholds for one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Decode)]
pub struct CircuitBreaker {
    /// Requests in flight to the backend at once.
    pub max_requests: u32,
    /// Requests waiting for a connection or an endpoint at once.
    pub max_pending: u32,
    /// Retries in flight to the backend at once.
    pub max_retries: u32,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        // Envoy's defaults for requests and pending. Envoy's `max_retries`
        // default of 3 starves retries under any concurrency (Istio raises
        // it to the maximum); the retry budget is what bounds retries here.
        Self {
            max_requests: 1024,
            max_pending: 1024,
            max_retries: 1024,
        }
    }
}

/// Passive health checking: endpoints that fail are ejected for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Decode)]
pub struct OutlierDetection {
    /// Consecutive 5xx answers (or connect failures) that eject (0 = off).
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 or connect failures that eject (0 = off).
    pub consecutive_gateway_errors: u32,
    /// Consecutive connect failures that eject (0 = off).
    pub consecutive_connect_failures: u32,
    /// The first ejection's length; the n-th lasts n times this.
    #[serde(with = "serde_human")]
    pub base_ejection: Duration,
    /// No ejection lasts longer than this.
    #[serde(with = "serde_human")]
    pub max_ejection: Duration,
    /// At most this share of a backend's endpoints is ejected at once.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        // Envoy's defaults.
        Self {
            consecutive_5xx: 5,
            consecutive_gateway_errors: 0,
            consecutive_connect_failures: 0,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// TLS toward a backend.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Decode)]
pub struct BackendTls {
    /// Whether connections use mutual TLS.
    #[decode(default = BackendTlsMode::Mutual)]
    pub mode: BackendTlsMode,
    /// The SPIFFE ID the endpoints must present (`mutual` needs this or
    /// `identities`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
    /// More identities the endpoints may present: exact SPIFFE IDs, or
    /// prefixes ending in `*` that include the trust domain
    /// (`spiffe://td/ns/prod/*`), as a cluster's SAN matchers say over xDS.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// The server name sent in the TLS handshake (SNI); none by default
    /// (the SPIFFE ID, not the name, is what is verified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// The identity source whose SVID these connections present: a gRPC
    /// bootstrap's certificate provider instance (`default`), or an SDS
    /// secret (`sds:default`); this workload's identity when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The identity source whose trust bundles verify the endpoints (named
    /// as `certificate` is); this workload's identity's when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
}

impl BackendTls {
    /// Mutual TLS verifying exactly `identity`.
    pub fn mutual(identity: SpiffeId) -> Self {
        Self {
            mode: BackendTlsMode::Mutual,
            identity: Some(identity),
            identities: Vec::new(),
            sni: None,
            certificate: None,
            trust: None,
        }
    }

    /// What the endpoints may present: `identity` and `identities` together.
    pub fn matcher(
        &self,
    ) -> Result<crate::identity::IdentityMatcher, crate::identity::IdentityPatternError> {
        crate::identity::IdentityMatcher::new(
            self.identity
                .iter()
                .map(SpiffeId::as_str)
                .chain(self.identities.iter().map(String::as_str)),
        )
    }
}

/// TLS mode toward a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Decode)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendTlsMode {
    /// Plaintext.
    #[default]
    Disabled,
    /// Mutual TLS, verifying the endpoint's SPIFFE identity.
    Mutual,
}

/// Inbound policy of a service: how callers connect and who may call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
#[decode(fallback)]
pub struct InboundPolicy {
    /// The service it governs.
    #[decode(required)]
    pub service: String,
    /// The mTLS mode of the service's listener.
    pub mtls: MtlsMode,
    /// Authorization rules; deny rules win, and once any allow rule exists
    /// whatever no rule allows is denied.
    pub rules: Vec<AuthzRule>,
    /// A local rate limit on the service's requests, applied after
    /// authorization (a denied request takes no token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// The identity source whose SVID the listener presents (a certificate
    /// provider instance, or `sds:<secret>`); this workload's identity
    /// when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The identity source whose trust bundles verify callers; this
    /// workload's identity's when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
}

/// The mTLS mode of an inbound listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Decode)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MtlsMode {
    /// Client certificates required and verified.
    Strict,
    /// mTLS and plaintext on the same port, told apart per connection.
    #[default]
    Permissive,
    /// Plaintext only.
    Disabled,
}

/// One authorization rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
#[decode(fallback)]
pub struct AuthzRule {
    /// Allow or deny.
    #[decode(default = AuthzAction::Allow)]
    pub action: AuthzAction,
    /// Caller identities: exact SPIFFE IDs, `prefix*` forms, or `*`.
    /// Empty means any caller (including unauthenticated ones).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[decode(with = super::decode::OneOrMany<String>)]
    pub from: Vec<String>,
    /// Which requests the rule covers.
    #[serde(skip_serializing_if = "AuthzTarget::is_empty")]
    pub to: AuthzTarget,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Decode)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuthzAction {
    /// Allow what the rule covers.
    #[default]
    Allow,
    /// Deny what the rule covers; deny wins over allow.
    Deny,
}

/// The requests an authorization rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Decode)]
pub struct AuthzTarget {
    /// Paths: exact, or `prefix*`; empty means any path.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[decode(with = super::decode::OneOrMany<String>)]
    pub paths: Vec<String>,
    /// Methods; empty means any method.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[decode(with = super::decode::OneOrMany<String>)]
    pub methods: Vec<String>,
}

impl AuthzTarget {
    fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.methods.is_empty()
    }
}
