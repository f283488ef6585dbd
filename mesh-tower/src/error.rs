//! The mesh's refusals, each a small typed error, and [`ErrorKind`] to tell
//! them apart wherever they are in an error chain.
//!
//! ```
//! use proxyless_tower::error::{CircuitOpen, CircuitReason, ErrorKind};
//! let err: proxyless_tower::BoxError = Box::new(CircuitOpen::new("reviews-v1".into(), CircuitReason::AllEjected));
//! assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
//! assert_eq!(ErrorKind::CircuitOpen.as_str(), "circuit_open");
//! ```

use crate::BoxError;
use proxyless_core::policy::Outcome;
use proxyless_core::policy::breaker::Limit;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use proxyless_core::route::NoRoute;

/// Why a backend's circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitReason {
    /// A threshold (`max_requests`, ...) is full.
    Limit(Limit),
    /// Outlier detection has ejected every endpoint.
    AllEjected,
    /// The backend's adaptive concurrency limit (this many in flight) is
    /// full: the backend is queueing, and the excess is shed.
    AdaptiveLimit(u32),
}

/// The backend refused the request without sending it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("circuit open for backend `{backend}`: {}", match .reason {
    CircuitReason::Limit(l) => format!("{} reached", l.field()),
    CircuitReason::AllEjected => "every endpoint is ejected".to_owned(),
    CircuitReason::AdaptiveLimit(n) => format!("adaptive concurrency limit of {n} reached"),
})]
pub struct CircuitOpen {
    /// The backend.
    pub backend: Arc<str>,
    /// Why.
    pub reason: CircuitReason,
}

impl CircuitOpen {
    /// A refusal for `backend`.
    pub fn new(backend: Arc<str>, reason: CircuitReason) -> Self {
        Self { backend, reason }
    }
}

/// The backend has no endpoint to send to.
#[derive(Debug, Clone, thiserror::Error)]
#[error("backend `{backend}` has no healthy endpoint")]
pub struct NoHealthyEndpoint {
    /// The backend.
    pub backend: Arc<str>,
}

/// Which deadline ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deadline {
    /// The route's overall timeout (or a deadline the caller brought).
    Overall,
    /// One attempt's `per_try_timeout`.
    PerTry,
}

/// A deadline ran out before the response.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} timeout of {timeout:?} elapsed", match .deadline { Deadline::Overall => "request", Deadline::PerTry => "per-try" })]
pub struct Elapsed {
    /// Which deadline.
    pub deadline: Deadline,
    /// Its length.
    pub timeout: Duration,
}

/// The last attempt failed and the retry budget allowed no more.
#[derive(Debug, thiserror::Error)]
#[error("retry budget exhausted after {attempts} attempt(s)")]
pub struct RetryBudgetExhausted {
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    #[source]
    pub source: BoxError,
}

/// Which attempt the mesh did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkippedAttempt {
    /// A retry after a failed attempt.
    Retry,
    /// A hedge beside attempts still out.
    Hedge,
}

impl SkippedAttempt {
    /// `retry` or `hedge`, as in metrics and spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Hedge => "hedge",
        }
    }
}

/// A retry or hedge the mesh did not send because the request's deadline
/// would pass before it could answer: what was left of the deadline (after
/// the backoff) was less than the least an attempt has been taking on the
/// endpoints it could go to. The caller gets the last real result at once
/// instead of a timeout later.
///
/// On a response it is an extension
/// (`response.extensions().get::<RetrySkipped>()`); on an error it is in
/// the chain as [`RetrySkippedError`], whose [`ErrorKind`] is its source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySkipped {
    /// A retry or a hedge.
    pub attempt: SkippedAttempt,
    /// Attempts made.
    pub attempts: u32,
    /// What was left of the deadline when the attempt would have gone.
    pub remaining: Duration,
    /// The least an attempt has been taking.
    pub expected: Duration,
}

impl fmt::Display for RetrySkipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} skipped after {} attempt(s): {:?} of the deadline left, an attempt takes {:?}",
            self.attempt.as_str(),
            self.attempts,
            self.remaining,
            self.expected
        )
    }
}

/// The last attempt's error, with the retry that was not sent because it
/// could not have answered in time.
#[derive(Debug, thiserror::Error)]
#[error("{skipped}")]
pub struct RetrySkippedError {
    /// What was skipped.
    pub skipped: RetrySkipped,
    /// The last attempt's error.
    #[source]
    pub source: BoxError,
}

/// The skipped retry recorded on `result`, if any.
pub fn retry_skipped<RB>(result: &Result<http::Response<RB>, BoxError>) -> Option<RetrySkipped> {
    match result {
        Ok(r) => r.extensions().get::<RetrySkipped>().copied(),
        Err(e) => {
            let mut cur: Option<&(dyn StdError + 'static)> = Some(&**e);
            while let Some(e) = cur {
                if let Some(s) = e.downcast_ref::<RetrySkippedError>() {
                    return Some(s.skipped);
                }
                cur = e.source();
            }
            None
        }
    }
}

/// Records `skipped` on `result`: an extension on a response, a wrapper
/// around an error.
pub(crate) fn mark_skipped<RB>(
    result: Result<http::Response<RB>, BoxError>,
    skipped: RetrySkipped,
) -> Result<http::Response<RB>, BoxError> {
    match result {
        Ok(mut r) => {
            r.extensions_mut().insert(skipped);
            Ok(r)
        }
        Err(source) => Err(RetrySkippedError { skipped, source }.into()),
    }
}

/// A fault injected by the route's `fault.abort` policy. The route layer
/// turns it into a response with this status.
#[derive(Debug, Clone, thiserror::Error)]
#[error("fault injected: abort with status {status}")]
pub struct FaultAbort {
    /// The status to answer with.
    pub status: u16,
}

/// The connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {}", .endpoint.as_deref().unwrap_or("the endpoint"))]
pub struct ConnectFailed {
    /// The endpoint, when known.
    pub endpoint: Option<Arc<str>>,
    /// What went wrong.
    #[source]
    pub source: BoxError,
}

/// The connection closed or was reset before a response came.
#[derive(Debug, thiserror::Error)]
#[error("connection to {} reset before a response", .endpoint.as_deref().unwrap_or("the endpoint"))]
pub struct ConnectionReset {
    /// The endpoint, when known.
    pub endpoint: Option<Arc<str>>,
    /// What went wrong.
    #[source]
    pub source: BoxError,
}

/// The caller is not allowed (inbound authorization).
#[derive(Debug, Clone, thiserror::Error)]
#[error("unauthorized: {reason}")]
pub struct Unauthorized {
    /// Why, for the caller and the logs.
    pub reason: String,
}

/// The request's path is refused by path normalization (a bad
/// percent-escape, an escaped slash or a `;` where refused).
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid path: {source}")]
pub struct InvalidPath {
    /// Why.
    #[source]
    pub source: proxyless_core::path::PathError,
}

/// A local rate limit refused the request (never retried).
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate limited by {scope}: the next token comes in {}ms", .retry_after.as_millis())]
pub struct RateLimited {
    /// Whose limit: `route <service>/<route>` or `service <name>`.
    pub scope: Arc<str>,
    /// When the bucket is filled next.
    pub retry_after: Duration,
}

/// The kinds of mesh errors, for programs, metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No route (unknown host when refused, or no matching route).
    NoRoute,
    /// A circuit breaker refused.
    CircuitOpen,
    /// No endpoint to send to.
    NoHealthyEndpoint,
    /// A deadline ran out.
    Timeout,
    /// Retries were wanted but the budget was spent.
    RetryBudgetExhausted,
    /// The connection could not be made.
    ConnectFailed,
    /// The connection was reset.
    Reset,
    /// Inbound authorization denied the caller.
    Unauthorized,
    /// An injected abort.
    FaultAbort,
    /// The path was refused by normalization.
    InvalidPath,
    /// A local rate limit refused the request.
    RateLimited,
    /// Not a mesh error.
    Other,
}

impl ErrorKind {
    /// The kind of the first mesh error in `err`'s chain (`Other` if none).
    pub fn of(err: &(dyn StdError + 'static)) -> Self {
        let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
        while let Some(e) = cur {
            let kind = if e.is::<NoRoute>() {
                Some(Self::NoRoute)
            } else if e.is::<CircuitOpen>() {
                Some(Self::CircuitOpen)
            } else if e.is::<NoHealthyEndpoint>() {
                Some(Self::NoHealthyEndpoint)
            } else if e.is::<Elapsed>() {
                Some(Self::Timeout)
            } else if e.is::<RetryBudgetExhausted>() {
                Some(Self::RetryBudgetExhausted)
            } else if e.is::<ConnectFailed>() {
                Some(Self::ConnectFailed)
            } else if e.is::<ConnectionReset>() {
                Some(Self::Reset)
            } else if e.is::<Unauthorized>() {
                Some(Self::Unauthorized)
            } else if e.is::<FaultAbort>() {
                Some(Self::FaultAbort)
            } else if e.is::<InvalidPath>() {
                Some(Self::InvalidPath)
            } else if e.is::<RateLimited>() {
                Some(Self::RateLimited)
            } else {
                None
            };
            if let Some(k) = kind {
                return k;
            }
            cur = e.source();
        }
        Self::Other
    }

    /// The snake_case name used in headers, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::CircuitOpen => "circuit_open",
            Self::NoHealthyEndpoint => "no_healthy_endpoint",
            Self::Timeout => "timeout",
            Self::RetryBudgetExhausted => "retry_budget_exhausted",
            Self::ConnectFailed => "connect_failed",
            Self::Reset => "reset",
            Self::Unauthorized => "unauthorized",
            Self::FaultAbort => "fault_abort",
            Self::InvalidPath => "invalid_path",
            Self::RateLimited => "rate_limited",
            Self::Other => "other",
        }
    }

    /// Whether the mesh itself refused (rather than the upstream failing).
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            Self::NoRoute
                | Self::CircuitOpen
                | Self::NoHealthyEndpoint
                | Self::Unauthorized
                | Self::InvalidPath
                | Self::RateLimited
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attempt's error counts for retries and outlier detection: typed
/// mesh errors first, then I/O error kinds anywhere in the chain.
pub fn outcome_of_error(err: &(dyn StdError + 'static)) -> Outcome {
    match ErrorKind::of(err) {
        ErrorKind::ConnectFailed => return Outcome::ConnectFailure,
        ErrorKind::Reset => return Outcome::Reset,
        ErrorKind::Timeout => return Outcome::Timeout,
        _ => {}
    }
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionRefused
                | K::AddrNotAvailable
                | K::HostUnreachable
                | K::NetworkUnreachable => Outcome::ConnectFailure,
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
                    Outcome::Reset
                }
                K::TimedOut => Outcome::Timeout,
                _ => Outcome::Error,
            };
        }
        cur = e.source();
    }
    Outcome::Error
}

/// The endpoint a connect failure or reset happened on, if the error names one.
pub fn failed_endpoint(err: &(dyn StdError + 'static)) -> Option<Arc<str>> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectFailed>() {
            return c.endpoint.clone();
        }
        if let Some(r) = e.downcast_ref::<ConnectionReset>() {
            return r.endpoint.clone();
        }
        cur = e.source();
    }
    None
}
