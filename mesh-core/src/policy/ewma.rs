//! Peak-EWMA latency (Finagle's and Linkerd's load metric): a latency above
//! the estimate replaces it at once, a lower one pulls it down gradually
//! with a decay that depends on the time since the last observation, and an
//! estimate with no observation decays toward zero with time (so an
//! endpoint that was slow or down is tried again, as Linkerd's and tower's
//! do). The balancer's cost of an endpoint is this estimate times its
//! requests in flight plus one.
//!
//! A failure counts as a slow response ([`PeakEwma::observe_failure`]):
//! three times the estimate, but never more than [`MAX_FAILURE_PENALTY`], so
//! a run of failures cannot compound the estimate without bound (it used to
//! reach 10^13 ms in a 3 s outage and keep two identical endpoints apart
//! for minutes after).
//!
//! ```
//! use proxyless_core::policy::ewma::PeakEwma;
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

/// The most a failure counts as: failures stay expensive without making an
/// estimate that takes minutes to decay.
pub const MAX_FAILURE_PENALTY: Duration = Duration::from_secs(1);

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
            nanos: nanos_f64(initial),
            decay_nanos: nanos_f64(decay).max(1.0),
            stamp: now,
        }
    }

    /// Folds in one observed latency.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = nanos_f64(rtt);
        if rtt > self.nanos {
            self.nanos = rtt;
        } else {
            let elapsed = nanos_f64(now.saturating_duration_since(self.stamp));
            let w = decay_weight(elapsed / self.decay_nanos);
            self.nanos = self.nanos * w + rtt * (1.0 - w);
        }
        self.stamp = self.stamp.max(now);
    }

    /// Folds in a failure that took `rtt`: it counts as at least three
    /// times the estimate, at most [`MAX_FAILURE_PENALTY`] (unless it took
    /// longer than that itself).
    pub fn observe_failure(&mut self, rtt: Duration, now: Instant) {
        let penalty = self
            .estimate(now)
            .saturating_mul(3)
            .min(MAX_FAILURE_PENALTY);
        self.observe(rtt.max(penalty), now);
    }

    /// The estimate at `now`: the last one, decayed for the time since.
    pub fn estimate(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.nanos_at(now) as u64)
    }

    /// The estimate as of the last observation, in nanoseconds.
    pub fn nanos(&self) -> f64 {
        self.nanos
    }

    /// When the last observation was made.
    pub fn stamp(&self) -> Instant {
        self.stamp
    }

    /// The estimate at `now` in nanoseconds.
    pub fn nanos_at(&self, now: Instant) -> f64 {
        decayed(
            self.nanos,
            now.saturating_duration_since(self.stamp),
            self.decay_nanos,
        )
    }
}

/// `nanos` after `idle` with no observation, for time constant
/// `decay_nanos`. Idle times under a millisecond are not worth an `exp`.
pub fn decayed(nanos: f64, idle: Duration, decay_nanos: f64) -> f64 {
    if idle < Duration::from_millis(1) {
        return nanos;
    }
    nanos * decay_weight(nanos_f64(idle) / decay_nanos)
}

/// `e^-x` for `x >= 0`. Observations a busy endpoint makes microseconds
/// apart give an `x` of about 1e-7, where the series' first terms are
/// exact to 1e-10 and cost a fraction of the `exp` call.
fn decay_weight(x: f64) -> f64 {
    if x < 1e-3 {
        1.0 - x + 0.5 * x * x
    } else {
        (-x).exp()
    }
}

/// `d` in nanoseconds, without the 128-bit conversion `as_nanos` needs
/// (the data path converts a latency or two per request).
pub fn nanos_f64(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e9 + f64::from(d.subsec_nanos())
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

    #[test]
    fn an_idle_estimate_decays_toward_zero() {
        let t0 = Instant::now();
        let e = PeakEwma::new(Duration::from_secs(1), Duration::from_secs(10), t0);
        let later = |s| e.estimate(t0 + Duration::from_secs(s));
        assert_eq!(later(0), Duration::from_secs(1));
        let ten = later(10).as_secs_f64();
        assert!((ten - (-1.0f64).exp()).abs() < 1e-6, "{ten}");
        assert!(later(100) < Duration::from_millis(1));
    }

    #[test]
    fn the_decay_weight_is_exp_to_within_a_billionth() {
        let mut x = 1e-12;
        while x < 50.0 {
            let (got, want) = (decay_weight(x), (-x).exp());
            assert!(
                (got - want).abs() <= 1e-9 * want,
                "x {x}: {got} against {want}"
            );
            x *= 1.37;
        }
        assert_eq!(decay_weight(0.0), 1.0);
    }

    #[test]
    fn nanoseconds_as_a_float_agree_with_the_integer_count() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(1_234_567),
            Duration::from_secs(86_400 * 365),
            Duration::MAX,
        ] {
            let want = d.as_nanos() as f64;
            assert!((nanos_f64(d) - want).abs() <= want * 1e-15, "{d:?}");
        }
    }

    #[test]
    fn failures_are_penalized_but_never_beyond_the_bound() {
        let t0 = Instant::now();
        let mut e = PeakEwma::new(Duration::from_millis(10), Duration::from_secs(10), t0);
        e.observe_failure(Duration::from_millis(1), t0);
        assert_eq!(e.estimate(t0), Duration::from_millis(30));
        // A 3 s outage of fast failures, 1,000 a second: bounded.
        for i in 0..3_000 {
            e.observe_failure(Duration::from_millis(1), t0 + Duration::from_millis(i));
        }
        let end = t0 + Duration::from_secs(3);
        let at_end = e.estimate(end);
        assert!(
            at_end <= MAX_FAILURE_PENALTY && at_end > Duration::from_millis(990),
            "{at_end:?}"
        );
        // A failure slower than the bound counts as what it took.
        e.observe_failure(Duration::from_secs(5), end);
        assert_eq!(e.estimate(end), Duration::from_secs(5));
    }
}
