//! The state machines behind the data path's policies, pure: time comes in
//! as an `Instant` argument and randomness as `u64` samples, so each is
//! tested without sleeping and without chance.
//!
//! - [`budget`]: the retry budget (a ratio of requests plus a floor per second);
//! - [`breaker`]: circuit-breaker thresholds per backend;
//! - [`classify`]: response classification by code registered by name;
//! - [`concurrency`]: the adaptive concurrency limit per backend;
//! - [`outlier`]: consecutive-failure ejection per endpoint;
//! - [`ewma`]: peak-EWMA latency per endpoint;
//! - [`balance`]: endpoint choice (p2c, round robin, random, ring hash, Maglev);
//! - [`locality`]: which priority level and locality a request goes to.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod classify;
pub mod concurrency;
pub mod ewma;
pub mod hedge;
pub mod locality;
pub mod outlier;
pub mod ratelimit;

/// What an attempt to an endpoint came to, as the policies see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A response with this HTTP status.
    Status(u16),
    /// The connection could not be made.
    ConnectFailure,
    /// The connection was reset or closed before a response.
    Reset,
    /// The attempt ran out of time.
    Timeout,
    /// Another error.
    Error,
    /// A response its route's classifier judged: a failure or not,
    /// whatever its status.
    Classified {
        /// The HTTP status.
        status: u16,
        /// Whether the classifier called it a failure.
        failed: bool,
    },
}

impl Outcome {
    /// A 5xx status, or a failure to get any response (Envoy counts
    /// connect failures and resets as 5xx for outlier detection).
    pub fn is_5xx(self) -> bool {
        match self {
            Outcome::Status(s) => (500..600).contains(&s),
            Outcome::Classified { failed, .. } => failed,
            _ => true,
        }
    }

    /// 502, 503, 504, or a failure to get any response.
    pub fn is_gateway_error(self) -> bool {
        match self {
            Outcome::Status(s) => matches!(s, 502..=504),
            Outcome::Classified { status, failed } => failed && matches!(status, 502..=504),
            _ => true,
        }
    }
}
