//! The retry layer: sends a request again when the route's policy says the
//! attempt failed in a retriable way, within three bounds:
//!
//! - the mesh-wide **retry budget** (default 20% of requests plus 10 per
//!   second, over 10 s), so retries can never multiply the load on a failing
//!   backend however many attempts a route allows;
//! - the backend's **`max_retries`** breaker threshold;
//! - the request's **deadline**: no attempt starts after it.
//!
//! Each attempt may have a `per_try_timeout`; attempts are spaced by
//! exponential backoff with full jitter, and a retry prefers an endpoint
//! other than the one that just failed. Only requests whose body is held in
//! memory (small, of known length) and whose method is idempotent (or the
//! route says `retry_non_idempotent`) are retried.
//!
//! When the budget refuses a retry the last attempt's result stands: its
//! response, or its error wrapped in [`RetryBudgetExhausted`].

use crate::body::MeshBody;
use crate::error::{
    Deadline, Elapsed, RetryBudgetExhausted, RetrySkipped, SkippedAttempt, failed_endpoint,
    mark_skipped, outcome_of_error,
};
use crate::ext::{Mirrored, Routed, deadline_of, set_deadline};
use crate::future::{Either, MapErr, TimeoutFuture};
use crate::head::Head;
use crate::runtime::{Runtime, now};
use crate::{BoxError, BoxFuture};
use http::{Method, Request, Response};
use proxyless_core::config::{RetryOn, RetryPolicy};
use proxyless_core::policy::Outcome;
use proxyless_core::policy::classify::Class;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

/// The retry layer.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    runtime: Arc<Runtime>,
}

impl RetryLayer {
    /// Retries with the budget and breakers in `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

impl<S> tower_layer::Layer<S> for RetryLayer {
    type Service = Retry<S>;
    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            runtime: self.runtime.clone(),
        }
    }
}

/// The retry service.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    runtime: Arc<Runtime>,
}

/// Whether `outcome` is retriable under `policy`.
/// Whether an attempt that ended in `outcome` (with gRPC status `grpc`,
/// for a trailers-only gRPC response) is retriable under `policy`. HTTP
/// conditions look at the HTTP status (a gRPC error is a 200); the gRPC
/// conditions look at `grpc-status`, as gRPC and Envoy define them.
pub fn is_retriable(policy: &RetryPolicy, outcome: Outcome, grpc: Option<u32>) -> bool {
    policy.on.iter().any(|on| match on {
        RetryOn::FiveXx => outcome.is_5xx(),
        RetryOn::GatewayError => outcome.is_gateway_error(),
        RetryOn::ConnectFailure => outcome == Outcome::ConnectFailure,
        RetryOn::Reset => matches!(outcome, Outcome::Reset | Outcome::Timeout),
        RetryOn::RetriableStatusCodes => {
            matches!(outcome, Outcome::Status(s) if policy.retriable_status_codes.contains(&s))
        }
        RetryOn::Cancelled => grpc == Some(1),
        RetryOn::DeadlineExceeded => grpc == Some(4),
        RetryOn::ResourceExhausted => grpc == Some(8),
        RetryOn::Internal => grpc == Some(13),
        RetryOn::Unavailable => grpc == Some(14),
        _ => false,
    })
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Full-jitter exponential backoff before retry `n` (1 for the first retry).
fn backoff(policy: &RetryPolicy, n: u32, sample: f64) -> Duration {
    let exp = policy
        .backoff
        .base
        .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
    exp.min(policy.backoff.max).mul_f64(sample)
}

impl<S, RB> Service<Request<MeshBody>> for Retry<S>
where
    S: Service<Request<MeshBody>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<MeshBody>) -> Self::Future {
        let runtime = &self.runtime;
        deposit(runtime, &req);
        if let Some(hedged) = self.hedged(&mut req) {
            let first = self.inner.call(req);
            return ResponseFuture {
                state: State::Again {
                    inner: Box::pin(hedged.run(first)),
                },
            };
        }
        let routed = crate::ext::routed(&req);
        // Borrowed from the snapshot, not copied: the retrying future reads
        // the policy again from its own copy of the decision.
        let configured = routed.and_then(|r| r.route_entry()?.retry());
        let per_try = configured.and_then(|p| p.per_try_timeout);
        let retrying = configured
            .filter(|p| p.attempts > 1)
            // gRPC calls are POSTs that gRPC's own retry design allows to retry.
            .filter(|p| {
                p.retry_non_idempotent
                    || idempotent(req.method())
                    || crate::grpc::is_grpc(req.headers())
            })
            .is_some()
            && req.extensions().get::<Mirrored>().is_none();
        let replayer = req.body().replayer().filter(|_| retrying);
        if replayer.is_some()
            && let Some(r) = crate::ext::routed_mut(&mut req)
        {
            // Judging a retry reads the endpoint that answered: kept in a
            // cell the attempts share (one allocation), not asked for as
            // `Served` on the response (three).
            r.track_picks();
        }
        let routed = crate::ext::routed(&req);
        let retry = replayer.and_then(|replayer| {
            let routed = routed?.clone();
            let backend = routed
                .backend_entry()
                .and_then(|(i, _)| runtime.backend(routed.snapshot(), i));
            Some(Box::new(Attempts {
                svc: self.inner.clone(),
                runtime: runtime.clone(),
                deadline: routed.deadline(),
                // What a retry sends again: the request as it was before
                // the first attempt (the first attempt sends the original).
                head: Head::of(&req),
                routed,
                replayer,
                backend,
                per_try,
            }))
        });
        // The first attempt is sent from here, inline; only a retry (rare)
        // moves into a boxed future.
        let first = match per_try {
            None => Either::left(MapErr::new(self.inner.call(req))),
            Some(t) => {
                shorten_deadline(&mut req, t);
                let at = crate::ext::deadline_after(t);
                Either::right(TimeoutFuture::new(
                    self.inner.call(req),
                    at,
                    Deadline::PerTry,
                    t,
                ))
            }
        };
        ResponseFuture {
            state: State::First {
                inner: first,
                retry,
            },
        }
    }
}

/// What the attempts after the first need: the service, the request's head
/// and a way to copy its body, and the bounds that stop retries.
struct Attempts<S> {
    svc: S,
    runtime: Arc<Runtime>,
    routed: Routed,
    deadline: Option<Instant>,
    /// The request's head (its body is the replayer's to copy). The
    /// mesh's own decision is put back on each retry from `routed`.
    head: Head,
    replayer: crate::body::Replayer,
    backend: Option<Arc<crate::runtime::ResolvedBackend>>,
    per_try: Option<Duration>,
}

/// After an attempt: its result stands, or another attempt follows.
enum Next<RB> {
    Done(Result<Response<RB>, BoxError>),
    Again {
        avoid: Option<Arc<str>>,
        slot: Option<proxyless_core::policy::breaker::Slot>,
        wake: Instant,
    },
}

impl<S, RB> Attempts<S>
where
    S: Service<Request<MeshBody>, Response = Response<RB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    /// Judges attempt `n`'s result: final, or retried after a backoff
    /// (within the budget, the breaker's retry limit and the deadline).
    fn judge(&self, n: u32, result: Result<Response<RB>, BoxError>) -> Next<RB> {
        let Some(policy) = self.routed.route_entry().and_then(|r| r.retry()) else {
            return Next::Done(result);
        };
        let (outcome, grpc) = match &result {
            Ok(resp) => (
                Outcome::Status(resp.status().as_u16()),
                crate::grpc::status(resp.headers()),
            ),
            Err(e) => (outcome_of_error(&**e), None),
        };
        let retriable = match self.routed.route_entry().and_then(|r| r.classifier()) {
            Some(c) => crate::classify::class_of(c, &result) == Class::RetryableFailure,
            None => is_retriable(policy, outcome, grpc),
        };
        // Most results are final: nothing more is looked at for them.
        if !retriable {
            return Next::Done(result);
        }
        let limited = matches!(&result, Ok(r) if crate::response::is_rate_limited(r.headers()));
        let endpoint = match &result {
            Ok(_) => self.routed.last_pick(),
            Err(e) => failed_endpoint(&**e),
        };
        let last = n >= policy.attempts
            || limited
            || !self.replayer.can_replay()
            || self.deadline.is_some_and(|d| Instant::now() >= d);
        if last {
            return Next::Done(result);
        }
        // Whether the retry could answer in time is judged before it takes
        // anything from the budget or the breaker: a hopeless retry only
        // adds load to a backend that is struggling already.
        let wake = crate::ext::deadline_after(backoff(policy, n, crate::runtime::random()));
        if let Some(skipped) = self.hopeless(n, wake, endpoint.as_deref()) {
            self.runtime
                .stats()
                .hopeless_skipped
                .fetch_add(1, Ordering::Relaxed);
            self.runtime
                .route_metrics(&self.routed)
                .skipped(skipped.attempt);
            tracing::debug!(%skipped, "retry would miss the deadline; not sent");
            return Next::Done(mark_skipped(result, skipped));
        }
        let runtime = &self.runtime;
        if !runtime.with_budget(self.routed.snapshot(), |b| b.try_withdraw(now())) {
            runtime
                .stats()
                .budget_exhausted
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(attempts = n, "retry budget exhausted; not retrying");
            runtime.route_metrics(&self.routed).budget_exhausted();
            return Next::Done(result.map_err(|source| {
                RetryBudgetExhausted {
                    attempts: n,
                    source,
                }
                .into()
            }));
        }
        let slot = match self.backend.as_ref().map(|b| b.state.breaker.try_retry()) {
            Some(Err(_)) => {
                runtime
                    .stats()
                    .retry_overflow
                    .fetch_add(1, Ordering::Relaxed);
                return Next::Done(result);
            }
            Some(Ok(slot)) => Some(slot),
            None => None,
        };
        Next::Again {
            avoid: endpoint,
            slot,
            wake,
        }
    }

    /// Whether a retry sent at `wake`, after `n` attempts, could not
    /// answer before the deadline: the backoff runs past it, or what is
    /// left of it is less than the least an attempt has been taking on the
    /// endpoints the retry could go to (`avoid` is the one that failed).
    fn hopeless(&self, n: u32, wake: Instant, avoid: Option<&str>) -> Option<RetrySkipped> {
        let attempt = (SkippedAttempt::Retry, n);
        hopeless(
            attempt,
            self.deadline?,
            wake,
            self.backend.as_deref(),
            avoid,
        )
    }

    /// The attempts after the first, from the backoff before attempt 2.
    async fn rest(
        mut self,
        mut avoid: Option<Arc<str>>,
        mut slot: Option<proxyless_core::policy::breaker::Slot>,
        mut wake: Instant,
    ) -> Result<Response<RB>, BoxError> {
        let mut n = 1;
        loop {
            tokio::time::sleep_until(wake).await;
            self.svc.ready().await.map_err(Into::into)?;
            self.runtime.stats().retries.fetch_add(1, Ordering::Relaxed);
            self.runtime.route_metrics(&self.routed).retry();
            n += 1;
            // Held from a retry's admission until that retry is answered.
            let _retry_slot = slot.take();
            let Some(body) = self.replayer.replay() else {
                return Err("internal: retry without a body copy".into());
            };
            let mut attempt = self.head.request(body)?;
            let mut routed = self.routed.clone();
            routed.set_attempt(n, avoid.take());
            attempt.body_mut().set_routed(routed);
            if let Some(t) = self.per_try {
                shorten_deadline(&mut attempt, t);
            }
            let result = per_try_bound(self.svc.call(attempt), self.per_try).await;
            match self.judge(n, result) {
                Next::Done(result) => return result,
                Next::Again {
                    avoid: a,
                    slot: s,
                    wake: w,
                } => (avoid, slot, wake) = (a, s, w),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The retry layer's future: the first attempt inline; the attempts
    /// after it, if any, boxed.
    pub struct ResponseFuture<S: Service<Request<MeshBody>>, RB> {
        #[pin]
        state: State<S, RB>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<MeshBody>>, RB> {
        First {
            #[pin]
            inner: Either<MapErr<S::Future>, TimeoutFuture<S::Future>>,
            retry: Option<Box<Attempts<S>>>,
        },
        Again {
            inner: BoxFuture<Result<Response<RB>, BoxError>>,
        },
    }
}

impl<S: Service<Request<MeshBody>>, RB> std::fmt::Debug for ResponseFuture<S, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("retry::ResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<S, RB> std::future::Future for ResponseFuture<S, RB>
where
    S: Service<Request<MeshBody>, Response = Response<RB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let again = match self.as_mut().project().state.project() {
                StateProj::Again { inner } => return inner.as_mut().poll(cx),
                StateProj::First { inner, retry } => {
                    let result = std::task::ready!(inner.poll(cx));
                    let Some(attempts) = retry.take() else {
                        return Poll::Ready(result);
                    };
                    match attempts.judge(1, result) {
                        Next::Done(result) => return Poll::Ready(result),
                        Next::Again { avoid, slot, wake } => {
                            Box::pin((*attempts).rest(avoid, slot, wake))
                        }
                    }
                }
            };
            self.as_mut()
                .project()
                .state
                .set(State::Again { inner: again });
        }
    }
}

/// Counts `req` among the requests the retry budget allows a share of as
/// retries: every request the retry layer sees, whether it may retry or not.
pub(crate) fn deposit(runtime: &Runtime, req: &Request<MeshBody>) {
    runtime.stats().requests.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = crate::ext::routed(req) {
        // The route layer's clock read will do: a deposit's time only
        // ages it out of the budget's window (seconds).
        let at = r.started().map_or_else(now, tokio::time::Instant::into_std);
        runtime.with_budget(r.snapshot(), |b| b.deposit(at));
    }
}

/// Whether the retry layer would send the requests of `route` once, as
/// they are, and only count them: it neither retries nor hedges.
pub(crate) fn sends_once(route: &proxyless_core::snapshot::RouteEntry) -> bool {
    route.retry().is_none() && route.hedge().is_none()
}

impl<S> Retry<S> {
    /// The service below.
    pub(crate) fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// For a request on a route with a hedging policy (of a method it
    /// hedges, with a body held in memory, not a mirror copy): what its
    /// hedges need, with the request set to record where attempts go.
    fn hedged<RB>(&self, req: &mut Request<MeshBody>) -> Option<crate::hedge::Hedged<S>>
    where
        S: Service<Request<MeshBody>, Response = Response<RB>> + Clone,
    {
        let routed = crate::ext::routed(req)?;
        let (policy, state) = routed.route_entry()?.hedge()?;
        state.deposit(now());
        let allowed = policy.hedge_non_idempotent
            || idempotent(req.method())
            || crate::grpc::is_grpc(req.headers());
        if !allowed || req.extensions().get::<Mirrored>().is_some() {
            return None;
        }
        let replayer = req.body().replayer()?;
        let (policy, state) = (policy.clone(), state.clone());
        let routed = crate::ext::routed_mut(req)?;
        routed.track_picks();
        let routed = routed.clone();
        Some(crate::hedge::Hedged {
            svc: self.inner.clone(),
            runtime: self.runtime.clone(),
            head: Head::of(req),
            routed,
            replayer,
            policy,
            state,
        })
    }
}

/// Whether an attempt (a retry or a hedge, after `attempts`) sent at `at`
/// could not answer before `deadline`: `at` is past it, or what is left is
/// less than the least an attempt has been taking on the endpoints of
/// `backend` it could go to (other than `avoid` when there are others).
/// An endpoint never heard from may be fast: then only the deadline
/// itself counts.
pub(crate) fn hopeless(
    (attempt, attempts): (SkippedAttempt, u32),
    deadline: Instant,
    at: Instant,
    backend: Option<&crate::runtime::ResolvedBackend>,
    avoid: Option<&str>,
) -> Option<RetrySkipped> {
    let remaining = deadline.saturating_duration_since(at);
    let expected = backend
        .and_then(|b| b.expected_latency(avoid, now()))
        .unwrap_or(Duration::ZERO);
    (at >= deadline || remaining < expected).then_some(RetrySkipped {
        attempt,
        attempts,
        remaining,
        expected,
    })
}

/// Bounds the request's deadline by `per_try` from now.
fn shorten_deadline(req: &mut Request<MeshBody>, per_try: Duration) {
    let try_deadline = crate::ext::deadline_after(per_try);
    let d = deadline_of(req).map_or(try_deadline, |d| d.min(try_deadline));
    set_deadline(req, d);
}

async fn per_try_bound<F, T, E>(fut: F, per_try: Option<Duration>) -> Result<T, BoxError>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    match per_try {
        None => fut.await.map_err(Into::into),
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Err(Elapsed {
                deadline: Deadline::PerTry,
                timeout: t,
            }
            .into()),
        },
    }
}
