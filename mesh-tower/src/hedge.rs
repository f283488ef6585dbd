//! Hedged requests, for routes with a hedging policy
//! ([`HedgePolicy`](proxyless_core::config::HedgePolicy)); the retry layer
//! hands them here. The first attempt is sent at once; while no good answer
//! has come, another goes after the policy's delay (fixed, or a percentile
//! of the route's recent latency), to another endpoint than the previous
//! attempt's when there is one, up to the policy's attempts. The first good
//! answer wins and the attempts still out are cancelled (dropped: their
//! connections' requests are reset, their breaker slots freed). A failed
//! answer waits for the others; with none out, the next hedge goes at once.
//!
//! Each hedge needs room in two budgets: the route's (`budget_percent` of
//! its requests) and the mesh's retry budget, which retries draw from too.
//!
//! The attempts are polled by the request's own task (at most the policy's
//! attempts, five by the limit), not spawned: no task, join handle or
//! scheduling per attempt, and dropping the request drops them all.

use crate::BoxError;
use crate::body::{MeshBody, Replayer};
use crate::error::{RetrySkipped, SkippedAttempt, mark_skipped};
use crate::ext::Routed;
use crate::runtime::{Runtime, now};
use crate::telemetry::metrics::HedgeResult;
use http::{Request, Response};
use proxyless_core::config::{HedgeDelay, HedgePolicy};
use proxyless_core::policy::classify::Class;
use proxyless_core::policy::hedge::HedgeState;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;

/// What a hedged request needs after its first attempt.
pub(crate) struct Hedged<S> {
    pub(crate) svc: S,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) routed: Routed,
    pub(crate) head: crate::head::Head,
    pub(crate) replayer: Replayer,
    pub(crate) policy: HedgePolicy,
    pub(crate) state: Arc<HedgeState>,
}

/// One attempt out: its future, or the error it failed with before it
/// could be sent.
enum Attempt<F> {
    Sent(Pin<Box<F>>),
    Failed(Option<BoxError>),
}

/// An attempt's number and result.
type Finished<RB> = (u32, Result<Response<RB>, BoxError>);

/// The most attempts a hedged request makes (the policy's limit).
const MAX_ATTEMPTS: usize = 5;

/// The attempts out, each with its number, in place (no allocation but
/// each attempt's future).
struct Out<F> {
    slots: [Option<(u32, Attempt<F>)>; MAX_ATTEMPTS],
    len: usize,
}

impl<F, RB, E> Out<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    fn new() -> Self {
        Self {
            slots: std::array::from_fn(|_| None),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds an attempt. The caller sends at most [`MAX_ATTEMPTS`], so a
    /// slot is always free (were none, the attempt would be dropped: its
    /// request cancelled, never answered wrongly).
    fn push(&mut self, n: u32, attempt: Attempt<F>) {
        let free = self.slots.iter_mut().find(|s| s.is_none());
        debug_assert!(free.is_some(), "more than {MAX_ATTEMPTS} hedged attempts");
        if let Some(slot) = free {
            *slot = Some((n, attempt));
            self.len += 1;
        }
    }

    /// The next attempt to finish, with its number; `None` with none out.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Finished<RB>>> {
        if self.len == 0 {
            return Poll::Ready(None);
        }
        for slot in &mut self.slots {
            let Some((n, attempt)) = slot else { continue };
            let ready = match attempt {
                Attempt::Sent(f) => match f.as_mut().poll(cx) {
                    Poll::Ready(r) => r.map_err(Into::into),
                    Poll::Pending => continue,
                },
                Attempt::Failed(e) => Err(e
                    .take()
                    .unwrap_or_else(|| "internal: a hedged attempt failed twice".into())),
            };
            let n = *n;
            *slot = None;
            self.len -= 1;
            return Poll::Ready(Some((n, ready)));
        }
        Poll::Pending
    }
}

/// Whether a result is a good answer: what the route's classifier calls a
/// success, or without one a response that is neither a 5xx nor a gRPC
/// failure mapped to one.
fn good<RB>(result: &Result<Response<RB>, BoxError>, routed: &Routed) -> bool {
    if let Some(c) = routed.route_entry().and_then(|r| r.classifier()) {
        return crate::classify::class_of(c, result) == Class::Success;
    }
    match result {
        Ok(resp) => !crate::grpc::outcome_of_response(resp).is_5xx(),
        Err(_) => false,
    }
}

impl<S, RB> Hedged<S>
where
    S: Service<Request<MeshBody>, Response = Response<RB>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    /// The delay before the next attempt, if hedging can go on.
    fn delay(&self) -> Option<Duration> {
        match self.policy.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile(p) => self.state.latency.percentile(p),
            _ => None,
        }
    }

    /// Whether another attempt, after `sent`, could not answer before the
    /// deadline: what is left of it is less than the least an attempt has
    /// been taking on the endpoints the hedge could go to.
    fn hopeless(&self, sent: u32) -> Option<RetrySkipped> {
        let deadline = self.routed.deadline()?;
        let backend = self
            .routed
            .backend_entry()
            .and_then(|(i, _)| self.runtime.backend(self.routed.snapshot(), i));
        let avoid = self.routed.last_pick();
        crate::retry::hopeless(
            (SkippedAttempt::Hedge, sent),
            deadline,
            Instant::now(),
            backend.as_deref(),
            avoid.as_deref(),
        )
    }

    /// Takes a hedge from both budgets.
    fn admit(&self) -> bool {
        let t = now();
        let shared = self
            .runtime
            .with_budget(self.routed.snapshot(), |b| b.try_withdraw(t));
        shared && self.state.try_withdraw(t)
    }

    /// Runs the hedged request from its first attempt, already sent.
    pub(crate) async fn run(mut self, first: S::Future) -> Result<Response<RB>, BoxError> {
        let started = Instant::now();
        let metrics = self.runtime.route_metrics(&self.routed);
        let mut out = Out::new();
        out.push(1, Attempt::Sent(Box::pin(first)));
        let mut sent = 1u32;
        let mut first_timed = false;
        let mut next = self.delay().map(|d| started + d);
        let mut last: Option<Result<Response<RB>, BoxError>> = None;
        let mut skipped: Option<RetrySkipped> = None;
        loop {
            let more = sent < self.policy.attempts.min(MAX_ATTEMPTS as u32);
            let wake = next.filter(|_| more);
            tokio::select! {
                finished = std::future::poll_fn(|cx| out.poll_next(cx)) => {
                    let Some((n, result)) = finished else {
                        return last.unwrap_or_else(|| Err("internal: a hedged request with no attempt".into()));
                    };
                    if n == 1 {
                        self.state.latency.record(started.elapsed());
                        first_timed = true;
                    }
                    if good(&result, &self.routed) || (out.is_empty() && (!more || skipped.is_some())) {
                        self.finish(&out, first_timed, started, &metrics);
                        return match skipped {
                            Some(s) => mark_skipped(result, s),
                            None => result,
                        };
                    }
                    last = Some(result);
                    if out.is_empty() {
                        // Nothing out: the next attempt need not wait.
                        next = Some(Instant::now());
                    }
                }
                () = sleep_until(wake) => {
                    if let Some(s) = self.hopeless(sent) {
                        // Too late for another attempt to answer: no more
                        // hedges; the attempts out (if any) may still.
                        metrics.skipped(s.attempt);
                        self.runtime.stats().hopeless_skipped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(skipped = %s, "hedge would miss the deadline; not sent");
                        skipped = Some(s);
                        next = None;
                        if out.is_empty() {
                            let last = last.unwrap_or_else(|| Err("internal: a hedged request with no attempt".into()));
                            return mark_skipped(last, s);
                        }
                    } else if self.admit() {
                        self.send(&mut out, sent + 1).await;
                        sent += 1;
                        metrics.hedge(HedgeResult::Sent);
                        self.runtime.stats().hedges.fetch_add(1, Ordering::Relaxed);
                        next = self.delay().map(|d| Instant::now() + d);
                    } else {
                        metrics.hedge(HedgeResult::Refused);
                        self.runtime.stats().hedges_refused.fetch_add(1, Ordering::Relaxed);
                        // No room: this request is not hedged further.
                        next = None;
                        if out.is_empty() {
                            return last.unwrap_or_else(|| Err("internal: a hedged request with no attempt".into()));
                        }
                    }
                }
            }
        }
    }

    /// Sends attempt `n`, to another endpoint than the last attempt's.
    async fn send(&mut self, out: &mut Out<S::Future>, n: u32) {
        let Some(body) = self.replayer.replay() else {
            out.push(
                n,
                Attempt::Failed(Some("internal: a hedge without a body copy".into())),
            );
            return;
        };
        let mut routed = self.routed.clone();
        routed.set_attempt(n, self.routed.last_pick());
        let attempt = match self.head.request(body.with_routed(routed)) {
            Ok(attempt) => attempt,
            Err(e) => return out.push(n, Attempt::Failed(Some(e))),
        };
        let ready = self.svc.ready().await.map_err(Into::into);
        match ready {
            Ok(svc) => out.push(n, Attempt::Sent(Box::pin(svc.call(attempt)))),
            Err(e) => out.push(n, Attempt::Failed(Some(e))),
        }
    }

    /// Counts the attempts still out (cancelled when `out` is dropped),
    /// and times a first attempt that did not finish (at least this long).
    fn finish(
        &self,
        out: &Out<S::Future>,
        first_timed: bool,
        started: Instant,
        metrics: &crate::telemetry::metrics::RouteMetrics,
    ) {
        if !first_timed {
            self.state.latency.record(started.elapsed());
        }
        for _ in 0..out.len() {
            metrics.hedge(HedgeResult::Cancelled);
        }
        self.runtime
            .stats()
            .hedges_cancelled
            .fetch_add(out.len() as u64, Ordering::Relaxed);
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
