//! Outlier detection for one endpoint (Envoy's consecutive-failure model):
//! after N consecutive 5xx, gateway errors or connect failures the endpoint
//! asks to be ejected; the n-th ejection lasts n x `base_ejection` (capped
//! at `max_ejection`), and the endpoint returns by itself when it ends. The
//! backend decides whether the ejection may happen (`max_ejection_percent`).
//!
//! ```
//! use proxyless_core::config::OutlierDetection;
//! use proxyless_core::policy::{Outcome, outlier::{Health, OutlierState}};
//! use std::time::{Duration, Instant};
//!
//! let cfg = OutlierDetection { consecutive_5xx: 2, ..Default::default() };
//! let t0 = Instant::now();
//! let mut ep = OutlierState::default();
//! assert!(!ep.on_outcome(Outcome::Status(503), &cfg));
//! assert!(ep.on_outcome(Outcome::Status(503), &cfg));   // wants ejection
//! let until = ep.eject(&cfg, t0);
//! assert_eq!(until - t0, Duration::from_secs(30));
//! assert_eq!(ep.health(t0), Health::Ejected);
//! assert_eq!(ep.health(until), Health::Returned);
//! ```

use super::Outcome;
use crate::config::OutlierDetection;
use std::time::Instant;

/// Where an endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// In service.
    Available,
    /// Ejected; not to be picked.
    Ejected,
    /// Was ejected and its time is up: back in service from now on.
    Returned,
}

/// Failure counters and ejection state of one endpoint.
#[derive(Debug, Clone, Default)]
pub struct OutlierState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_connect: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    last_return: Option<Instant>,
}

impl OutlierState {
    /// Records an outcome; true when a threshold is reached and the endpoint
    /// should be ejected.
    pub fn on_outcome(&mut self, outcome: Outcome, cfg: &OutlierDetection) -> bool {
        if self.ejected_until.is_some() {
            return false;
        }
        let bump = |n: &mut u32, hit: bool| {
            *n = if hit { n.saturating_add(1) } else { 0 };
            *n
        };
        let c5 = bump(&mut self.consecutive_5xx, outcome.is_5xx());
        let cg = bump(&mut self.consecutive_gateway, outcome.is_gateway_error());
        let cc = bump(
            &mut self.consecutive_connect,
            matches!(outcome, Outcome::ConnectFailure),
        );
        let hit = |n: u32, threshold: u32| threshold > 0 && n >= threshold;
        hit(c5, cfg.consecutive_5xx)
            || hit(cg, cfg.consecutive_gateway_errors)
            || hit(cc, cfg.consecutive_connect_failures)
    }

    /// Ejects the endpoint; returns when it will come back.
    pub fn eject(&mut self, cfg: &OutlierDetection, now: Instant) -> Instant {
        // A long healthy stretch forgives earlier ejections.
        if self
            .last_return
            .is_some_and(|r| now.saturating_duration_since(r) > cfg.max_ejection)
        {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let length = cfg
            .base_ejection
            .saturating_mul(self.ejections)
            .min(cfg.max_ejection);
        let until = now
            .checked_add(length.min(crate::config::MAX_DURATION))
            .unwrap_or(now);
        self.ejected_until = Some(until);
        self.reset_counters();
        until
    }

    /// Where the endpoint stands at `now`; an ejection whose time is up ends
    /// here (and says so once, as `Returned`).
    pub fn health(&mut self, now: Instant) -> Health {
        match self.ejected_until {
            None => Health::Available,
            Some(until) if now < until => Health::Ejected,
            Some(_) => {
                self.ejected_until = None;
                self.last_return = Some(now);
                Health::Returned
            }
        }
    }

    /// Whether the endpoint is ejected, without ending an ejection.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|u| now < u)
    }

    /// How many times it has been ejected (since the last forgiveness).
    pub fn ejections(&self) -> u32 {
        self.ejections
    }

    fn reset_counters(&mut self) {
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        self.consecutive_connect = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            consecutive_gateway_errors: 0,
            consecutive_connect_failures: 1,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn a_success_resets_the_streak() {
        let mut s = OutlierState::default();
        let c = cfg();
        assert!(!s.on_outcome(Outcome::Status(500), &c));
        assert!(!s.on_outcome(Outcome::Status(500), &c));
        assert!(!s.on_outcome(Outcome::Status(200), &c));
        assert!(!s.on_outcome(Outcome::Status(500), &c));
        assert!(!s.on_outcome(Outcome::Status(500), &c));
        assert!(s.on_outcome(Outcome::Status(500), &c));
    }

    #[test]
    fn connect_failures_have_their_own_threshold() {
        let mut s = OutlierState::default();
        assert!(s.on_outcome(Outcome::ConnectFailure, &cfg()));
    }

    #[test]
    fn ejections_grow_and_are_capped() {
        let c = cfg();
        let t0 = Instant::now();
        let mut s = OutlierState::default();
        let u1 = s.eject(&c, t0);
        assert_eq!(u1 - t0, Duration::from_secs(10));
        assert_eq!(s.health(u1), Health::Returned);
        assert_eq!(s.health(u1), Health::Available);
        let u2 = s.eject(&c, u1);
        assert_eq!(u2 - u1, Duration::from_secs(20));
        s.health(u2);
        let u3 = s.eject(&c, u2);
        assert_eq!(u3 - u2, Duration::from_secs(25), "capped at max_ejection");
        s.health(u3);
        // Healthy for longer than max_ejection: forgiven.
        let later = u3 + Duration::from_secs(26);
        let u4 = s.eject(&c, later);
        assert_eq!(u4 - later, Duration::from_secs(10));
    }
}
