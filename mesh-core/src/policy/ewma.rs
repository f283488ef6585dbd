//! Peak-EWMA latency (Finagle's and Linkerd's load metric): a latency above
//! the estimate replaces it at once, a lower one pulls it down gradually
//! with a decay that depends on the time since the last observation. The
//! balancer's cost of an endpoint is this estimate times its requests in
//! flight plus one.
//!
//! ```
//! use mesh_core::policy::ewma::PeakEwma;
//! use std::time::{Duration, Instant};
//!
//! let t0 = Instant::now();
//! let mut e = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10), t0);
//! e.observe(Duration::from_millis(200), t0);
//! assert_eq!(e.estimate(t0), Duration::from_millis(200));   // peaks count at once
//! e.observe(Duration::from_millis(10), t0 + Duration::from_secs(10));
//! assert!(e.estimate(t0 + Duration::from_secs(10)) < Duration::from_millis(100));
//! ```

use std::time::{Duration, Instant};

/// A peak-sensitive moving average of latency, in nanoseconds.
#[derive(Debug, Clone)]
pub struct PeakEwma {
    nanos: f64,
    decay_nanos: f64,
    stamp: Instant,
}

impl PeakEwma {
    /// Starts at `initial`, decaying with time constant `decay`.
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            nanos: initial.as_nanos() as f64,
            decay_nanos: decay.as_nanos().max(1) as f64,
            stamp: now,
        }
    }

    /// Folds in one observed latency.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.nanos {
            self.nanos = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_nanos() as f64;
            let w = (-elapsed / self.decay_nanos).exp();
            self.nanos = self.nanos * w + rtt * (1.0 - w);
        }
        self.stamp = self.stamp.max(now);
    }

    /// The current estimate.
    pub fn estimate(&self, _now: Instant) -> Duration {
        Duration::from_nanos(self.nanos as u64)
    }

    /// The estimate in nanoseconds, for cost comparisons.
    pub fn nanos(&self) -> f64 {
        self.nanos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_down_slowly_and_up_at_once() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(100), Duration::from_secs(1), t0);
        e.observe(Duration::from_millis(10), t0 + Duration::from_millis(100));
        let one = e.estimate(t0);
        assert!(
            one < Duration::from_millis(100) && one > Duration::from_millis(80),
            "{one:?}"
        );
        for i in 2..50 {
            e.observe(
                Duration::from_millis(10),
                t0 + Duration::from_millis(100 * i),
            );
        }
        assert!(e.estimate(t0) < Duration::from_millis(12));
        e.observe(Duration::from_millis(500), t0 + Duration::from_secs(6));
        assert_eq!(e.estimate(t0), Duration::from_millis(500));
    }
}
