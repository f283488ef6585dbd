//! An adaptive concurrency limit: how many requests a backend is sent at
//! once, found from the latencies it answers with, so that a backend that
//! starts to queue sheds the caller's excess at once instead of queueing it.
//!
//! The approach is the gradient one of Netflix's concurrency-limits and
//! Envoy's adaptive concurrency filter, written here for this mesh:
//!
//! - the **no-load latency** is measured by probing: the limit is held at
//!   `min_limit` until `PROBE_SAMPLES` requests have answered, and the
//!   lowest of their latencies is taken (at the start, and again every
//!   `probe_interval`, since what a backend needs changes with deploys);
//! - in between, each `window` the mean latency of the window's answers is
//!   compared with it: `gradient = clamp(tolerance * no_load / mean, 0.5,
//!   1)`, and the limit becomes `limit * gradient + sqrt(limit)`, smoothed.
//!   While latency stays near the no-load latency the limit grows by about
//!   its square root each window; once queueing shows, it falls until the
//!   latency is back within the tolerance;
//! - a window in which the backend was not asked for more than half the
//!   limit does not raise it (a limit is only learned under load).
//!
//! With `n` workers of fixed service time behind it, the limit settles where
//! `L = tolerance * n + sqrt(L)`: about 13 for 8 workers at the default
//! tolerance of 1.1, where the backend's latency is 1.6 times its no-load
//! latency instead of growing with every caller added.
//!
//! ```
//! use proxyless_core::config::AdaptiveConcurrency;
//! use proxyless_core::policy::concurrency::AdaptiveLimit;
//! use std::time::{Duration, Instant};
//!
//! let cfg = AdaptiveConcurrency::default();
//! let t0 = Instant::now();
//! let mut limit = AdaptiveLimit::new(&cfg, t0);
//! assert_eq!(limit.limit(), cfg.min_limit); // probing the no-load latency first
//! ```

use crate::config::AdaptiveConcurrency;
use std::time::{Duration, Instant};

/// Answers taken to measure the no-load latency.
pub const PROBE_SAMPLES: u32 = 20;

/// Weight of a window's new limit against the old one.
const SMOOTHING: f64 = 0.25;

/// The adaptive limit of one backend.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    cfg: AdaptiveConcurrency,
    limit: f64,
    no_load: Option<Duration>,
    phase: Phase,
    window: Window,
}

#[derive(Debug, Clone)]
enum Phase {
    /// Measuring the no-load latency at `min_limit`; the limit to go back
    /// to afterwards.
    Probing {
        lowest: Option<Duration>,
        taken: u32,
        restore: f64,
    },
    /// Adjusting the limit; the next probe is due at `probe_at`.
    Adjusting { probe_at: Instant },
}

#[derive(Debug, Clone)]
struct Window {
    started: Instant,
    sum_nanos: u128,
    count: u32,
    most_in_flight: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            sum_nanos: 0,
            count: 0,
            most_in_flight: 0,
        }
    }
}

impl AdaptiveLimit {
    /// A limit for `cfg`, probing the no-load latency first.
    pub fn new(cfg: &AdaptiveConcurrency, now: Instant) -> Self {
        Self {
            cfg: cfg.clone(),
            limit: f64::from(cfg.initial_limit),
            no_load: None,
            phase: Phase::Probing {
                lowest: None,
                taken: 0,
                restore: f64::from(cfg.initial_limit),
            },
            window: Window::new(now),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &AdaptiveConcurrency {
        &self.cfg
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> u32 {
        match self.phase {
            Phase::Probing { .. } => self.cfg.min_limit,
            Phase::Adjusting { .. } => self.limit as u32,
        }
    }

    /// The no-load latency measured by the last probe.
    pub fn no_load_latency(&self) -> Option<Duration> {
        self.no_load
    }

    /// Whether the no-load latency is being measured (the limit held at
    /// `min_limit`).
    pub fn probing(&self) -> bool {
        matches!(self.phase, Phase::Probing { .. })
    }

    /// Folds in an answer that took `rtt`, sent while `in_flight` requests
    /// (itself included) were out. Returns whether the limit changed.
    pub fn on_sample(&mut self, rtt: Duration, in_flight: u32, now: Instant) -> bool {
        let before = self.limit();
        match &mut self.phase {
            Phase::Probing {
                lowest,
                taken,
                restore,
            } => {
                *lowest = Some(lowest.map_or(rtt, |l| l.min(rtt)));
                *taken += 1;
                if *taken >= PROBE_SAMPLES {
                    self.no_load = *lowest;
                    self.limit = *restore;
                    self.phase = Phase::Adjusting {
                        probe_at: now + self.cfg.probe_interval,
                    };
                    self.window = Window::new(now);
                }
            }
            Phase::Adjusting { probe_at } => {
                let w = &mut self.window;
                w.sum_nanos = w.sum_nanos.saturating_add(rtt.as_nanos());
                w.count = w.count.saturating_add(1);
                w.most_in_flight = w.most_in_flight.max(in_flight);
                if now >= *probe_at {
                    self.phase = Phase::Probing {
                        lowest: None,
                        taken: 0,
                        restore: self.limit,
                    };
                } else if now.saturating_duration_since(w.started) >= self.cfg.window
                    && w.count >= 3
                {
                    self.close_window(now);
                }
            }
        }
        self.limit() != before
    }

    /// Ends a window: the limit follows the gradient of its latency.
    fn close_window(&mut self, now: Instant) {
        let w = std::mem::replace(&mut self.window, Window::new(now));
        let (Some(no_load), Some(count)) = (self.no_load, std::num::NonZeroU32::new(w.count))
        else {
            return;
        };
        let mean = w.sum_nanos as f64 / f64::from(count.get());
        let no_load = no_load.as_nanos().max(1) as f64;
        let gradient = (self.cfg.tolerance * no_load / mean.max(1.0)).clamp(0.5, 1.0);
        let mut next = self.limit * gradient + self.limit.sqrt();
        // Not asked for more than half of it: no evidence it can go higher.
        if f64::from(w.most_in_flight) < self.limit / 2.0 {
            next = next.min(self.limit);
        }
        let smoothed = self.limit * (1.0 - SMOOTHING) + next * SMOOTHING;
        self.limit = smoothed.clamp(f64::from(self.cfg.min_limit), f64::from(self.cfg.max_limit));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A backend of `workers` workers taking `service` each: with `c`
    /// requests out, an answer takes `service * max(1, c / workers)`.
    fn latency(service: Duration, workers: u32, c: u32) -> Duration {
        service.mul_f64((f64::from(c) / f64::from(workers)).max(1.0))
    }

    /// A caller that always has more to send than the limit: the limit is
    /// what is out. Steps simulated time by each answer.
    fn run(cfg: &AdaptiveConcurrency, workers: u32, windows: u32) -> (AdaptiveLimit, Vec<u32>) {
        let service = Duration::from_millis(10);
        let t0 = Instant::now();
        let mut l = AdaptiveLimit::new(cfg, t0);
        let mut t = t0;
        let mut seen = Vec::new();
        let end = t0 + cfg.window * windows;
        while t < end {
            let c = l.limit();
            let rtt = latency(service, workers, c);
            // `c` answers come back per `rtt`.
            let step = rtt / c.max(1);
            for _ in 0..c {
                t += step;
                l.on_sample(rtt, c, t);
            }
            seen.push(l.limit());
        }
        (l, seen)
    }

    #[test]
    fn the_limit_settles_near_the_knee_and_holds_latency_down() {
        let cfg = AdaptiveConcurrency {
            probe_interval: Duration::from_secs(3600),
            ..AdaptiveConcurrency::default()
        };
        let (l, seen) = run(&cfg, 8, 300);
        assert_eq!(l.no_load_latency(), Some(Duration::from_millis(10)));
        // L = 1.1 * 8 + sqrt(L): about 12.6.
        let last: Vec<u32> = seen.iter().rev().take(50).copied().collect();
        assert!(last.iter().all(|&x| (10..=16).contains(&x)), "{last:?}");
        // A knee four times higher: the limit follows it.
        let (l, _) = run(&cfg, 32, 300);
        assert!((36..=46).contains(&l.limit()), "{}", l.limit());
    }

    #[test]
    fn it_probes_at_the_least_and_does_not_grow_without_load() {
        let cfg = AdaptiveConcurrency::default();
        let t0 = Instant::now();
        let mut l = AdaptiveLimit::new(&cfg, t0);
        assert!(l.probing());
        for i in 0..PROBE_SAMPLES {
            assert_eq!(l.limit(), cfg.min_limit);
            l.on_sample(Duration::from_millis(10 + u64::from(i)), 1, t0);
        }
        assert!(!l.probing());
        assert_eq!(l.no_load_latency(), Some(Duration::from_millis(10)));
        assert_eq!(l.limit(), cfg.initial_limit);
        // Fast answers, but never more than two out: the limit stays.
        let mut t = t0;
        for _ in 0..1000 {
            t += Duration::from_millis(5);
            l.on_sample(Duration::from_millis(10), 2, t);
        }
        assert_eq!(l.limit(), cfg.initial_limit);
        // The next probe comes after probe_interval.
        l.on_sample(Duration::from_millis(10), 2, t + cfg.probe_interval);
        assert!(l.probing());
    }

    #[test]
    fn a_latency_collapse_falls_to_a_few_and_recovers() {
        let cfg = AdaptiveConcurrency {
            probe_interval: Duration::from_secs(3600),
            ..AdaptiveConcurrency::default()
        };
        let t0 = Instant::now();
        let mut l = AdaptiveLimit::new(&cfg, t0);
        for _ in 0..PROBE_SAMPLES {
            l.on_sample(Duration::from_millis(10), 1, t0);
        }
        let mut t = t0;
        for _ in 0..2000 {
            t += Duration::from_millis(2);
            l.on_sample(Duration::from_secs(2), l.limit(), t);
        }
        // Halved each window (smoothed) with sqrt(L) of headroom added: it
        // settles where 0.125 L = 0.25 sqrt(L), at 4.
        assert!(l.limit() <= 4, "{}", l.limit());
        for _ in 0..20_000 {
            t += Duration::from_millis(2);
            l.on_sample(Duration::from_millis(10), l.limit(), t);
        }
        assert_eq!(
            l.limit(),
            cfg.max_limit,
            "grows back while latency is at its floor"
        );
    }
}
