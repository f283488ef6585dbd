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
use crate::error::{Deadline, Elapsed, RetryBudgetExhausted, failed_endpoint, outcome_of_error};
use crate::ext::{Mirrored, Routed, Served, deadline_of, set_deadline};
use crate::future::{Either, MapErr, TimeoutFuture};
use crate::runtime::{Runtime, now};
use crate::{BoxError, BoxFuture};
use http::{Method, Request, Response};
use proxyless_core::config::{RetryOn, RetryPolicy};
use proxyless_core::policy::Outcome;
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
    type Future = Either<
        Either<MapErr<S::Future>, TimeoutFuture<S::Future>>,
        BoxFuture<Result<Response<RB>, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<MeshBody>) -> Self::Future {
        let runtime = self.runtime.clone();
        runtime.stats().requests.fetch_add(1, Ordering::Relaxed);
        let routed = req.extensions().get::<Routed>();
        if let Some(r) = routed {
            runtime.with_budget(r.snapshot(), |b| b.deposit(now()));
        }
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
            && req.body().replayer().is_some()
            && req.extensions().get::<Mirrored>().is_none();
        let Some(routed) = routed.filter(|_| retrying).cloned() else {
            // One attempt, bounded by the route's per-try timeout if it has one.
            let Some(t) = per_try else {
                return Either::left(Either::left(MapErr::new(self.inner.call(req))));
            };
            shorten_deadline(&mut req, t);
            let at = crate::ext::deadline_after(t);
            let fut = self.inner.call(req);
            return Either::left(Either::right(TimeoutFuture::new(
                fut,
                at,
                Deadline::PerTry,
                t,
            )));
        };
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        Either::right(Box::pin(async move {
            let Some(policy) = routed.route_entry().and_then(|r| r.retry()) else {
                return Err("internal: a retrying request without a retry policy".into());
            };
            let (parts, body) = req.into_parts();
            // The first attempt sends the body itself; retries send copies.
            let Some(replayer) = body.replayer() else {
                return Err("internal: retry policy without a replayable body".into());
            };
            let mut first = Some(body);
            let deadline = routed.deadline();
            let backend = routed
                .backend_entry()
                .and_then(|(i, _)| runtime.backend(routed.snapshot(), i));
            let mut avoid: Option<Arc<str>> = None;
            let mut n = 1;
            // Held from a retry's admission until that retry is answered.
            let mut _retry_slot = None;
            loop {
                let body = match first.take() {
                    Some(b) => b,
                    None => match replayer.replay() {
                        Some(b) => b,
                        None => return Err("internal: retry without a body copy".into()),
                    },
                };
                let mut attempt = Request::from_parts(parts.clone(), body);
                if n > 1
                    && let Some(r) = attempt.extensions_mut().get_mut::<Routed>()
                {
                    r.set_attempt(n, avoid.take());
                }
                if let Some(t) = policy.per_try_timeout {
                    shorten_deadline(&mut attempt, t);
                }
                let result = per_try_bound(svc.call(attempt), policy.per_try_timeout).await;
                let (outcome, endpoint, grpc) = match &result {
                    Ok(resp) => (
                        Outcome::Status(resp.status().as_u16()),
                        resp.extensions()
                            .get::<Served>()
                            .map(|s| s.endpoint.clone()),
                        crate::grpc::status(resp.headers()),
                    ),
                    Err(e) => (outcome_of_error(&**e), failed_endpoint(&**e), None),
                };
                let last = n >= policy.attempts
                    || !is_retriable(policy, outcome, grpc)
                    || !replayer.can_replay()
                    || deadline.is_some_and(|d| Instant::now() >= d);
                if last {
                    return result;
                }
                if !runtime.with_budget(routed.snapshot(), |b| b.try_withdraw(now())) {
                    runtime
                        .stats()
                        .budget_exhausted
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(attempts = n, "retry budget exhausted; not retrying");
                    runtime.route_metrics(&routed).budget_exhausted();
                    return result.map_err(|source| {
                        RetryBudgetExhausted {
                            attempts: n,
                            source,
                        }
                        .into()
                    });
                }
                let slot = match backend.as_ref().map(|b| b.state.breaker.try_retry()) {
                    Some(Err(_)) => {
                        runtime
                            .stats()
                            .retry_overflow
                            .fetch_add(1, Ordering::Relaxed);
                        return result;
                    }
                    Some(Ok(slot)) => Some(slot),
                    None => None,
                };
                drop(result);
                avoid = endpoint;
                let wake = crate::ext::deadline_after(backoff(policy, n, rand::random()));
                if deadline.is_some_and(|d| wake >= d) {
                    return Err(Elapsed {
                        deadline: Deadline::Overall,
                        timeout: routed.route_entry().map_or(Duration::ZERO, |r| r.timeout()),
                    }
                    .into());
                }
                tokio::time::sleep_until(wake).await;
                svc.ready().await.map_err(Into::into)?;
                runtime.stats().retries.fetch_add(1, Ordering::Relaxed);
                runtime.route_metrics(&routed).retry();
                n += 1;
                _retry_slot = slot;
            }
        }))
    }
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
