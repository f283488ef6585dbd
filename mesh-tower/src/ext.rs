//! What the layers tell each other about a request: the route decision,
//! the deadline, the attempt (carried in the request's [`MeshBody`], read
//! with [`routed`]); and on the response, in its extensions, the endpoint
//! that served it and how many attempts it took ([`Served`]).

use crate::body::MeshBody;
use proxyless_core::snapshot::{BackendEntry, RouteEntry, ServiceEntry, Snapshot};
use std::sync::Arc;
use std::time::Instant;
use tokio::time::Instant as TokioInstant;

/// The route decision for a request, made once by the route layer against
/// the snapshot current at that moment; every later layer reads the same
/// snapshot through it, so a config swap mid-request changes nothing for it.
#[derive(Debug, Clone)]
pub struct Routed {
    snapshot: Arc<Snapshot>,
    target: Target,
    deadline: Option<TokioInstant>,
    started: Option<TokioInstant>,
    attempt: u32,
    avoid: Option<Arc<str>>,
    trace: Option<opentelemetry::Context>,
    /// For a hedged request: where its latest attempt went.
    picked: Option<Arc<std::sync::Mutex<Option<Arc<str>>>>>,
    /// Whether the response is to carry [`Served`].
    served: bool,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Route {
        service: u32,
        route: u32,
        backend: u32,
    },
    Passthrough,
}

impl Routed {
    /// A decision for `backend` on `route` of `service` (indexes into `snapshot`).
    pub fn route(snapshot: Arc<Snapshot>, service: u32, route: u32, backend: u32) -> Self {
        Self {
            snapshot,
            target: Target::Route {
                service,
                route,
                backend,
            },
            deadline: None,
            started: None,
            attempt: 1,
            avoid: None,
            trace: None,
            picked: None,
            served: false,
        }
    }

    /// A request for a host no service claims, sent as addressed.
    pub fn passthrough(snapshot: Arc<Snapshot>) -> Self {
        Self {
            snapshot,
            target: Target::Passthrough,
            deadline: None,
            started: None,
            attempt: 1,
            avoid: None,
            trace: None,
            picked: None,
            served: false,
        }
    }

    /// Keeps, from now on, where the attempts of this request go (the
    /// retry and hedging layers read it to send the next attempt
    /// elsewhere).
    pub fn track_picks(&mut self) {
        self.picked = Some(Arc::default());
    }

    /// Records the endpoint an attempt was sent to (the backend layer),
    /// when picks are tracked.
    pub fn record_pick(&self, endpoint: &Arc<str>) {
        if let Some(p) = &self.picked {
            *p.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(endpoint.clone());
        }
    }

    /// Where the latest attempt went, when picks are tracked.
    pub fn last_pick(&self) -> Option<Arc<str>> {
        self.picked
            .as_ref()?
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The same route, sent to another backend (a mirror).
    pub fn with_backend(&self, backend: u32) -> Self {
        let mut next = self.clone();
        if let Target::Route { backend: b, .. } = &mut next.target {
            *b = backend;
        }
        next
    }

    /// When the request must be answered by, if known.
    pub fn deadline(&self) -> Option<TokioInstant> {
        self.deadline
    }

    /// Sets the deadline (the route layer; the retry layer per attempt).
    pub fn set_deadline(&mut self, deadline: TokioInstant) {
        self.deadline = Some(deadline);
    }

    /// When the route layer handed the request on (its clock read, which
    /// the layers right below it share instead of reading the clock again:
    /// the telemetry layer's start, the retry budget's deposit).
    pub fn started(&self) -> Option<TokioInstant> {
        self.started
    }

    /// Sets when the request was handed on (the route layer).
    pub fn set_started(&mut self, at: TokioInstant) {
        self.started = Some(at);
    }

    /// Which attempt this is (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Asks for [`Served`] on the response (a layer above that reads the
    /// endpoint, or an application that asked for it with
    /// `MeshLayer::with_served`). Without it the backend layer adds none: a
    /// response's first extension costs three allocations.
    pub fn want_served(&mut self) {
        self.served = true;
    }

    /// Whether [`Served`] is wanted on the response.
    pub fn wants_served(&self) -> bool {
        self.served
    }

    /// An endpoint this attempt should avoid if another is available (the
    /// one the previous attempt failed on).
    pub fn avoid(&self) -> Option<&Arc<str>> {
        self.avoid.as_ref()
    }

    /// Marks a retry: attempt `n`, avoiding `avoid`.
    pub fn set_attempt(&mut self, n: u32, avoid: Option<Arc<str>>) {
        self.attempt = n;
        self.avoid = avoid;
    }

    /// The OpenTelemetry context of the request's client span (set by the
    /// telemetry layer): retries and mirror copies become its children.
    pub fn trace(&self) -> Option<&opentelemetry::Context> {
        self.trace.as_ref()
    }

    /// Sets the request's trace context (the telemetry layer).
    pub fn set_trace(&mut self, cx: opentelemetry::Context) {
        self.trace = Some(cx);
    }

    /// (service, route, backend) indexes into the snapshot, unless passthrough.
    pub fn indexes(&self) -> Option<(u32, u32, u32)> {
        match self.target {
            Target::Route {
                service,
                route,
                backend,
            } => Some((service, route, backend)),
            Target::Passthrough => None,
        }
    }

    /// The snapshot the decision was made against.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Whether the request passes through to its own host.
    pub fn is_passthrough(&self) -> bool {
        matches!(self.target, Target::Passthrough)
    }

    /// The matched service.
    pub fn service_entry(&self) -> Option<&ServiceEntry> {
        match self.target {
            Target::Route { service, .. } => self.snapshot.service(service),
            Target::Passthrough => None,
        }
    }

    /// The matched route.
    pub fn route_entry(&self) -> Option<&RouteEntry> {
        match self.target {
            Target::Route { service, route, .. } => {
                self.snapshot.service(service)?.routes().get(route as usize)
            }
            Target::Passthrough => None,
        }
    }

    /// The chosen backend and its index.
    pub fn backend_entry(&self) -> Option<(u32, &BackendEntry)> {
        match self.target {
            Target::Route { backend, .. } => Some((backend, self.snapshot.backend(backend)?)),
            Target::Passthrough => None,
        }
    }
}

/// When the request must be answered by. Set by the route layer from the
/// route's timeout (or kept, if the caller brought an earlier one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestDeadline(pub TokioInstant);

impl RequestDeadline {
    /// The deadline as a std `Instant`.
    pub fn std(&self) -> Instant {
        self.0.into_std()
    }
}

/// The instant `d` from now, saturating: `d` is clamped to the config's
/// [`MAX_DURATION`](proxyless_core::config::MAX_DURATION) and an instant past
/// what the clock can represent becomes the furthest it can, so no timeout
/// from a config, a control plane or a peer's header can panic.
pub fn deadline_after(d: std::time::Duration) -> TokioInstant {
    deadline_from(TokioInstant::now(), d)
}

/// The instant `d` after `now`, saturating as [`deadline_after`] does (for
/// a caller that has read the clock already).
pub fn deadline_from(now: TokioInstant, d: std::time::Duration) -> TokioInstant {
    let d = d.min(proxyless_core::config::MAX_DURATION);
    now.checked_add(d)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// Marks a mirrored copy of a request: never retried or mirrored again.
#[derive(Debug, Clone, Copy)]
pub struct Mirrored;

/// On a response: the backend and endpoint that served it, and how many
/// attempts it took. Present when the layer was built
/// [`with_served`](crate::MeshLayer::with_served) (and whenever the mesh's
/// own layers need it: a recording span, the access log, a retrying route).
#[derive(Debug, Clone)]
pub struct Served {
    /// The backend.
    pub backend: Arc<str>,
    /// The endpoint address.
    pub endpoint: Arc<str>,
    /// Attempts made (1 when it was not retried).
    pub attempts: u32,
}

/// The header that carries the remaining deadline, in milliseconds, to a
/// meshed server (relative, so clocks need not agree).
pub const DEADLINE_HEADER: http::HeaderName = http::HeaderName::from_static("x-mesh-timeout-ms");

/// The response header that names a mesh refusal.
pub const ERROR_HEADER: http::HeaderName = http::HeaderName::from_static("x-mesh-error");

/// The route decision a request carries: in its body (where the route
/// layer puts it), or else in its extensions (a decision made by hand, for
/// a layer used alone).
pub fn routed(req: &http::Request<MeshBody>) -> Option<&Routed> {
    req.body()
        .routed()
        .or_else(|| req.extensions().get::<Routed>())
}

/// The route decision a request carries, to change.
pub fn routed_mut(req: &mut http::Request<MeshBody>) -> Option<&mut Routed> {
    if req.body().routed().is_some() {
        return req.body_mut().routed_mut();
    }
    req.extensions_mut().get_mut::<Routed>()
}

/// The deadline of a request: its route decision's, or a bare
/// [`RequestDeadline`] when no route layer saw it.
pub fn deadline_of(req: &http::Request<MeshBody>) -> Option<TokioInstant> {
    match routed(req) {
        Some(r) if r.deadline.is_some() => r.deadline,
        _ => req.extensions().get::<RequestDeadline>().map(|d| d.0),
    }
}

/// The trace context of a request's client span: its route decision's, or
/// a bare [`opentelemetry::Context`] extension when no route layer saw it.
pub fn trace_of(req: &http::Request<MeshBody>) -> Option<&opentelemetry::Context> {
    match routed(req).and_then(Routed::trace) {
        Some(cx) => Some(cx),
        None => req.extensions().get::<opentelemetry::Context>(),
    }
}

/// Sets the trace context of a request where [`trace_of`] reads it.
pub fn set_trace(req: &mut http::Request<MeshBody>, cx: opentelemetry::Context) {
    match routed_mut(req) {
        Some(r) => r.set_trace(cx),
        None => {
            req.extensions_mut().insert(cx);
        }
    }
}

/// Sets the deadline of a request where [`deadline_of`] reads it.
pub fn set_deadline(req: &mut http::Request<MeshBody>, deadline: TokioInstant) {
    match routed_mut(req) {
        Some(r) => r.set_deadline(deadline),
        None => {
            req.extensions_mut().insert(RequestDeadline(deadline));
        }
    }
}

/// On an inbound request: the caller's verified SPIFFE ID (from its
/// client certificate), or `None` when it came over plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<proxyless_core::identity::SpiffeId>);

/// On an inbound request: what the server knows of its connection. The
/// mesh's server and acceptors insert it (with [`PeerIdentity`]); the
/// inbound layers read the caller's identity from either. tonic inserts it
/// too when the connection came from `proxyless_tonic::incoming`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The caller's address.
    pub remote: Option<std::net::SocketAddr>,
    /// The address it connected to.
    pub local: Option<std::net::SocketAddr>,
    /// The caller's verified SPIFFE ID, over mTLS.
    pub peer: Option<proxyless_core::identity::SpiffeId>,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl ConnectionInfo {
    /// A plaintext connection from `remote`.
    pub fn plaintext(
        remote: Option<std::net::SocketAddr>,
        local: Option<std::net::SocketAddr>,
    ) -> Self {
        Self {
            remote,
            local,
            peer: None,
            tls: false,
        }
    }

    /// A TLS connection from `remote`, verified as `peer` (if it showed a
    /// certificate).
    pub fn tls(
        remote: Option<std::net::SocketAddr>,
        local: Option<std::net::SocketAddr>,
        peer: Option<proxyless_core::identity::SpiffeId>,
    ) -> Self {
        Self {
            remote,
            local,
            peer,
            tls: true,
        }
    }
}

/// The response header that says why authorization denied a request.
pub const AUTHZ_REASON_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-mesh-authz-reason");
