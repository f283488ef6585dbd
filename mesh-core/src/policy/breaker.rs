//! Circuit-breaker thresholds for one backend (Envoy's model): at most so
//! many requests, pending requests and retries in flight at once. Above a
//! threshold a request fails fast instead of queueing on a struggling
//! backend. Admission returns a guard that gives the slot back when dropped.
//!
//! ```
//! use proxyless_core::policy::breaker::{Breaker, Limit};
//!
//! let breaker = Breaker::new(1, 1, 1);
//! let first = breaker.try_request().unwrap();
//! assert_eq!(breaker.try_request().unwrap_err(), Limit::Requests);
//! drop(first);
//! assert!(breaker.try_request().is_ok());
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Which threshold refused an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// `max_requests`.
    Requests,
    /// `max_pending`.
    Pending,
    /// `max_retries`.
    Retries,
}

impl Limit {
    /// The config field that set the threshold.
    pub fn field(self) -> &'static str {
        match self {
            Limit::Requests => "max_requests",
            Limit::Pending => "max_pending",
            Limit::Retries => "max_retries",
        }
    }
}

/// The in-flight counters of one backend. Thresholds can change with each
/// snapshot; the counters carry over.
#[derive(Debug)]
pub struct Breaker {
    requests: Counter,
    pending: Counter,
    retries: Counter,
}

#[derive(Debug)]
struct Counter {
    active: Arc<AtomicU32>,
    max: AtomicU32,
}

impl Counter {
    fn new(max: u32) -> Self {
        Self {
            active: Arc::new(AtomicU32::new(0)),
            max: AtomicU32::new(max),
        }
    }

    fn try_acquire(&self) -> Option<Slot> {
        let max = self.max.load(Ordering::Relaxed);
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                active: self.active.clone(),
            })
    }
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    active: Arc<AtomicU32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    /// A breaker with these thresholds.
    pub fn new(max_requests: u32, max_pending: u32, max_retries: u32) -> Self {
        Self {
            requests: Counter::new(max_requests),
            pending: Counter::new(max_pending),
            retries: Counter::new(max_retries),
        }
    }

    /// Sets new thresholds; requests in flight keep their slots.
    pub fn set_limits(&self, max_requests: u32, max_pending: u32, max_retries: u32) {
        self.requests.max.store(max_requests, Ordering::Relaxed);
        self.pending.max.store(max_pending, Ordering::Relaxed);
        self.retries.max.store(max_retries, Ordering::Relaxed);
    }

    /// Admits a request, or says which threshold is full.
    pub fn try_request(&self) -> Result<Slot, Limit> {
        self.requests.try_acquire().ok_or(Limit::Requests)
    }

    /// Admits a request waiting for the backend to be ready.
    pub fn try_pending(&self) -> Result<Slot, Limit> {
        self.pending.try_acquire().ok_or(Limit::Pending)
    }

    /// Admits a retry.
    pub fn try_retry(&self) -> Result<Slot, Limit> {
        self.retries.try_acquire().ok_or(Limit::Retries)
    }

    /// Requests in flight.
    pub fn active_requests(&self) -> u32 {
        self.requests.active.load(Ordering::Relaxed)
    }

    /// Retries in flight.
    pub fn active_retries(&self) -> u32 {
        self.retries.active.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_threshold_holds_and_frees_independently() {
        let b = Breaker::new(2, 1, 1);
        let r1 = b.try_request().unwrap();
        let _r2 = b.try_request().unwrap();
        assert_eq!(b.try_request().unwrap_err(), Limit::Requests);
        let p = b.try_pending().unwrap();
        assert_eq!(b.try_pending().unwrap_err(), Limit::Pending);
        let x = b.try_retry().unwrap();
        assert_eq!(b.try_retry().unwrap_err(), Limit::Retries);
        drop((r1, p, x));
        assert_eq!(b.active_requests(), 1);
        assert!(b.try_request().is_ok() && b.try_pending().is_ok() && b.try_retry().is_ok());
    }

    #[test]
    fn lowered_limits_apply_to_new_admissions_only() {
        let b = Breaker::new(3, 1, 1);
        let held: Vec<_> = (0..3).map(|_| b.try_request().unwrap()).collect();
        b.set_limits(1, 1, 1);
        assert!(b.try_request().is_err());
        drop(held);
        assert!(b.try_request().is_ok());
    }
}
