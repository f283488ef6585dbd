//! The retry budget: retries may add at most `ratio` of the original requests
//! plus `min_per_second` per second, counted over a sliding window of `ttl`
//! (the model of Finagle's and Linkerd's budgets), so retries can never
//! multiply the load on a failing backend.
//!
//! Counts live in one-second buckets of atomics: a request deposits, a retry
//! withdraws if the window has room. No lock is taken.
//!
//! ```
//! use proxyless_core::policy::budget::RetryBudget;
//! use std::time::{Duration, Instant};
//!
//! let start = Instant::now();
//! let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10), start);
//! for _ in 0..100 { budget.deposit(start); }
//! let allowed = (0..100).filter(|_| budget.try_withdraw(start)).count();
//! assert_eq!(allowed, 20);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MAX_BUCKETS: usize = 60;

#[derive(Debug, Default)]
struct Bucket {
    /// The second this bucket counts for, plus one (0 = never used).
    epoch: AtomicU64,
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

/// A retry budget over a sliding window.
#[derive(Debug)]
pub struct RetryBudget {
    ratio_milli: u64,
    min_per_second: u64,
    window: u64,
    start: Instant,
    buckets: Box<[Bucket]>,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request plus `min_per_second`,
    /// over `ttl` (whole seconds, 1 to 60).
    pub fn new(ratio: f64, min_per_second: u32, ttl: Duration, now: Instant) -> Self {
        let window = ttl.as_secs().clamp(1, MAX_BUCKETS as u64);
        Self {
            ratio_milli: (ratio.max(0.0) * 1000.0).round() as u64,
            min_per_second: u64::from(min_per_second),
            window,
            start: now,
            buckets: (0..window).map(|_| Bucket::default()).collect(),
        }
    }

    fn bucket(&self, now: Instant) -> (&Bucket, u64) {
        let sec = now.saturating_duration_since(self.start).as_secs();
        let b = &self.buckets[(sec % self.window) as usize];
        let epoch = sec + 1;
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != epoch
            && b.epoch
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This second's first visitor clears what the bucket held a
            // window ago. A racing increment may be lost: a count off by one.
            b.deposits.store(0, Ordering::Release);
            b.withdrawals.store(0, Ordering::Release);
        }
        (b, sec)
    }

    /// Counts an original request.
    pub fn deposit(&self, now: Instant) {
        self.bucket(now).0.deposits.fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one retry from the budget if there is room; false means the
    /// retry must not be made.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let (bucket, sec) = self.bucket(now);
        // Take first, then check: concurrent callers can never overdraw
        // (at worst, one of two racing for the last retry gets none).
        bucket.withdrawals.fetch_add(1, Ordering::AcqRel);
        let (deposits, withdrawals) = self.window_counts(sec);
        let allowed = self
            .min_per_second
            .saturating_mul(self.window)
            .saturating_add(deposits.saturating_mul(self.ratio_milli) / 1000);
        if withdrawals > allowed {
            bucket.withdrawals.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Requests and retries counted in the window ending at `sec`.
    fn window_counts(&self, sec: u64) -> (u64, u64) {
        let oldest = (sec + 1).saturating_sub(self.window) + 1;
        self.buckets
            .iter()
            .filter(|b| {
                let e = b.epoch.load(Ordering::Acquire);
                e >= oldest && e <= sec + 1
            })
            .fold((0, 0), |(d, w), b| {
                (
                    d + b.deposits.load(Ordering::Acquire),
                    w + b.withdrawals.load(Ordering::Acquire),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_allows_min_per_second_times_the_window_without_requests() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.2, 10, Duration::from_secs(10), t0);
        let allowed = (0..1000).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(allowed, 100);
    }

    #[test]
    fn the_ratio_scales_with_requests_and_the_window_slides() {
        let t0 = Instant::now();
        let b = RetryBudget::new(0.5, 0, Duration::from_secs(2), t0);
        for _ in 0..10 {
            b.deposit(t0);
        }
        assert_eq!((0..100).filter(|_| b.try_withdraw(t0)).count(), 5);
        // One second later the deposits still count, and so do the retries.
        let t1 = t0 + Duration::from_secs(1);
        assert!(!b.try_withdraw(t1));
        // Two seconds on, both have left the window.
        let t2 = t0 + Duration::from_secs(2);
        assert!(!b.try_withdraw(t2));
        for _ in 0..4 {
            b.deposit(t2);
        }
        assert_eq!((0..100).filter(|_| b.try_withdraw(t2)).count(), 2);
    }
}
