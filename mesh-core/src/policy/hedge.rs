//! What hedging keeps per route: the route's recent latency, for a delay
//! given as a percentile, and the hedges' own budget.
//!
//! ```
//! use proxyless_core::policy::hedge::LatencyWindow;
//! use std::time::Duration;
//! let w = LatencyWindow::new();
//! assert_eq!(w.percentile(95.0), None); // too few answers yet
//! for ms in 1..=100 {
//!     w.record(Duration::from_millis(ms));
//! }
//! assert_eq!(w.percentile(95.0), Some(Duration::from_millis(95)));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Latencies kept (the most recent).
const WINDOW: usize = 512;
/// Answers needed before a percentile is given.
pub const MIN_SAMPLES: usize = 20;
/// A percentile is computed again after this many new answers.
const REFRESH: u64 = 32;

/// The most recent latencies of a route, and its percentiles, computed
/// again every 32 answers (not on every request).
#[derive(Debug)]
pub struct LatencyWindow {
    samples: Mutex<Ring>,
    /// (percentile x 10, micros) of the last computation, and the count
    /// of answers then.
    cached: Mutex<Option<(u32, u64, u64)>>,
    recorded: AtomicU64,
}

#[derive(Debug)]
struct Ring {
    micros: Vec<u64>,
    next: usize,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            samples: Mutex::new(Ring {
                micros: Vec::new(),
                next: 0,
            }),
            cached: Mutex::new(None),
            recorded: AtomicU64::new(0),
        }
    }

    /// Records an answer's latency.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let mut ring = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.micros.len() < WINDOW {
            ring.micros.push(us);
        } else {
            let i = ring.next;
            ring.micros[i] = us;
        }
        ring.next = (ring.next + 1) % WINDOW;
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }

    /// The `p`-th percentile (0 to 100) of the recent latencies, once
    /// there are [`MIN_SAMPLES`] of them.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let recorded = self.recorded.load(Ordering::Relaxed);
        let key = (p.clamp(0.0, 100.0) * 10.0).round() as u32;
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((k, us, at)) = *cached
            && k == key
            && recorded.saturating_sub(at) < REFRESH
        {
            return Some(Duration::from_micros(us));
        }
        let mut sorted = self
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .micros
            .clone();
        if sorted.len() < MIN_SAMPLES {
            return None;
        }
        sorted.sort_unstable();
        // Nearest rank.
        let rank = ((f64::from(key) / 1000.0) * sorted.len() as f64).ceil() as usize;
        let us = sorted[rank.clamp(1, sorted.len()) - 1];
        *cached = Some((key, us, recorded));
        Some(Duration::from_micros(us))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_the_most_recent_and_refreshes_in_steps() {
        let w = LatencyWindow::new();
        for _ in 0..WINDOW {
            w.record(Duration::from_millis(100));
        }
        assert_eq!(w.percentile(50.0), Some(Duration::from_millis(100)));
        // Faster answers replace the old ones; the percentile follows
        // within a refresh.
        for _ in 0..WINDOW {
            w.record(Duration::from_millis(5));
        }
        assert_eq!(w.percentile(50.0), Some(Duration::from_millis(5)));
        assert_eq!(w.percentile(99.9), Some(Duration::from_millis(5)));
        assert_eq!(w.percentile(200.0), Some(Duration::from_millis(5)));
    }
}

/// A hedged route's state: its recent latency and the hedges' budget (a
/// share of the route's requests over the last 10 seconds).
#[derive(Debug)]
pub struct HedgeState {
    /// The route's recent latency (for a percentile delay).
    pub latency: LatencyWindow,
    budget: super::budget::RetryBudget,
}

impl HedgeState {
    /// The state of a route hedging up to `budget_percent` of its requests.
    pub fn new(budget_percent: f64, now: std::time::Instant) -> Self {
        Self {
            latency: LatencyWindow::new(),
            budget: super::budget::RetryBudget::new(
                budget_percent / 100.0,
                0,
                Duration::from_secs(10),
                now,
            ),
        }
    }

    /// Counts one of the route's requests.
    pub fn deposit(&self, now: std::time::Instant) {
        self.budget.deposit(now);
    }

    /// Takes one hedge from the budget; false when there is no room.
    pub fn try_withdraw(&self, now: std::time::Instant) -> bool {
        self.budget.try_withdraw(now)
    }
}
