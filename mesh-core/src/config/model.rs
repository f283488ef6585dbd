//! The mesh config model: what a YAML/JSON file or a control plane says.
//!
//! Every struct has a `Default` so configs can be built in code with
//! `..Default::default()`. Files are read by [`Config::from_yaml`] /
//! [`Config::from_json`]; writing one back is plain serde serialization.

use super::duration::serde_human;
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
    pub name: String,
    /// Host names that address this service; defaults to `[name]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Routes, tried in order; the first that matches wins.
    pub routes: Vec<Route>,
}

impl Service {
    /// The host names that address it: its `hosts`, or its name when it
    /// lists none.
    pub fn host_names(&self) -> &[String] {
        if self.hosts.is_empty() {
            std::slice::from_ref(&self.name)
        } else {
            &self.hosts
        }
    }
}

/// A route: when a request matches, where it goes and under which policies.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
#[decode(fallback)]
pub struct Route {
    /// The route name (unique within its service); defaults to `route-N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    /// Retry policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Fault injection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Traffic mirroring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
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
    /// A prefix on segment boundaries: `/ratings` matches `/ratings` and
    /// `/ratings/1`, not `/ratingsX`.
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
    pub backend: String,
    /// Its relative weight (default 1).
    pub weight: u32,
}

impl Default for WeightedBackend {
    fn default() -> Self {
        Self {
            backend: String::new(),
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
    pub backend: String,
    /// The share of requests mirrored, in percent (0-100).
    #[decode(default = 100.0)]
    pub percent: f64,
}

/// A backend: a set of endpoints and how they are used.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Decode)]
#[decode(fallback)]
pub struct Backend {
    /// The backend name, unique in the mesh.
    #[decode(required)]
    pub name: String,
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
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS toward the endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
}

/// One endpoint of a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `ip:port`, `[ipv6]:port` or `dns-name:port`.
    pub address: String,
    /// Relative weight for load balancing (default 1).
    pub weight: u32,
}

impl Endpoint {
    /// An endpoint of weight 1.
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            weight: 1,
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if self.weight == 1 {
            s.serialize_str(&self.address)
        } else {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("address", &self.address)?;
            m.serialize_entry("weight", &self.weight)?;
            m.end()
        }
    }
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
}

impl BackendTls {
    /// Mutual TLS verifying exactly `identity`.
    pub fn mutual(identity: SpiffeId) -> Self {
        Self {
            mode: BackendTlsMode::Mutual,
            identity: Some(identity),
            identities: Vec::new(),
            sni: None,
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
