//! The mesh's metrics, through the `metrics` facade (any recorder works;
//! mesh-hyper ships the Prometheus one). Names follow Prometheus
//! conventions (units in names, `_total` for counters); labels are bounded:
//! config names and fixed vocabularies, never raw paths or caller input.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `mesh_requests_total` | counter | direction, service, route, backend, status_class, error_kind |
//! | `mesh_request_duration_seconds` | histogram | direction, service, route, backend, status_class, error_kind |
//! | `mesh_retries_total` | counter | service, route, backend |
//! | `mesh_retry_budget_exhausted_total` | counter | service, route, backend |
//! | `mesh_attempts_skipped_total` | counter | service, route, backend, attempt (`retry`, `hedge`), reason (`deadline`) |
//! | `mesh_circuit_breaker_rejections_total` | counter | backend, reason |
//! | `mesh_adaptive_concurrency_limit` | gauge | backend |
//! | `mesh_reclassified_total` | counter | backend, as (`failure`, `success`) |
//! | `mesh_outlier_ejections_total` | counter | backend |
//! | `mesh_endpoints` | gauge | backend, state (`healthy`, `ejected`) |
//! | `mesh_authz_denied_total` | counter | service |
//! | `mesh_tls_handshake_failures_total` | counter | service |
//! | `mesh_tls_plaintext_refused_total` | counter | service |
//! | `mesh_config_version` | gauge | |
//! | `mesh_config_updates_total` | counter | result (`accepted`, `rejected`) |
//! | `mesh_config_last_update_timestamp_seconds` | gauge | |
//!
//! `status_class` is `1xx`..`5xx`, or `error` when no response came;
//! `error_kind` is `none` for responses, else the
//! [`ErrorKind`](crate::error::ErrorKind) name. Handles are resolved once
//! per (route, backend) and snapshot, not per request, and never before a
//! recorder is installed: a recorder installed after the mesh was built,
//! or after its first requests, receives every metric from then on.

use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use std::sync::{Arc, OnceLock};

/// `mesh_requests_total`.
pub const REQUESTS: &str = "mesh_requests_total";
/// `mesh_request_duration_seconds`.
pub const DURATION: &str = "mesh_request_duration_seconds";
/// `mesh_retries_total`.
pub const RETRIES: &str = "mesh_retries_total";
/// `mesh_retry_budget_exhausted_total`.
pub const BUDGET_EXHAUSTED: &str = "mesh_retry_budget_exhausted_total";
/// `mesh_attempts_skipped_total`: retries and hedges not sent because the
/// deadline would pass before they could answer.
pub const ATTEMPTS_SKIPPED: &str = "mesh_attempts_skipped_total";
/// `mesh_adaptive_concurrency_limit`: a backend's adaptive concurrency
/// limit now.
pub const ADAPTIVE_LIMIT: &str = "mesh_adaptive_concurrency_limit";
/// `mesh_reclassified_total`: responses a route's classifier judged
/// otherwise than the default would (a 2xx or 4xx called a failure, a 5xx
/// called a success), by backend and `as` (`failure`, `success`).
pub const RECLASSIFIED: &str = "mesh_reclassified_total";
/// `mesh_shadow_requests_total`: requests also decided under a candidate
/// config (shadow evaluation).
pub const SHADOW_REQUESTS: &str = "mesh_shadow_requests_total";
/// `mesh_shadow_differences_total`: requests the candidate config would
/// have routed differently, by service and the live and candidate route
/// and backend.
pub const SHADOW_DIFFERENCES: &str = "mesh_shadow_differences_total";
/// `mesh_circuit_breaker_rejections_total`.
pub const BREAKER_REJECTIONS: &str = "mesh_circuit_breaker_rejections_total";
/// `mesh_outlier_ejections_total`.
pub const EJECTIONS: &str = "mesh_outlier_ejections_total";
/// `mesh_endpoints`.
pub const ENDPOINTS: &str = "mesh_endpoints";
/// What became of a hedge, for [`RouteMetrics::hedge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeResult {
    /// A hedged attempt was sent.
    Sent,
    /// An attempt was cancelled: another answered first.
    Cancelled,
    /// A hedge was wanted but a budget refused it.
    Refused,
}

/// Counter: hedged attempts, by `result` (`sent`, `cancelled`, `refused`).
pub const HEDGES: &str = "mesh_hedges_total";
/// Counter: a local rate limit's decisions, by `result` (`admitted`,
/// `refused`).
pub const RATE_LIMIT: &str = "mesh_rate_limit_total";
/// Gauge: the share of a backend's requests, in percent, that each of its
/// locality and priority levels takes (backends with more than one level).
pub const LEVEL_LOAD: &str = "mesh_locality_load_percent";
/// `mesh_authz_denied_total`.
pub const AUTHZ_DENIED: &str = "mesh_authz_denied_total";
/// `mesh_tls_handshake_failures_total`.
pub const HANDSHAKE_FAILURES: &str = "mesh_tls_handshake_failures_total";
/// `mesh_tls_plaintext_refused_total`.
pub const PLAINTEXT_REFUSED: &str = "mesh_tls_plaintext_refused_total";
/// `mesh_config_version`.
pub const CONFIG_VERSION: &str = "mesh_config_version";
/// `mesh_config_updates_total`.
pub const CONFIG_UPDATES: &str = "mesh_config_updates_total";
/// `mesh_config_last_update_timestamp_seconds`.
pub const CONFIG_LAST_UPDATE: &str = "mesh_config_last_update_timestamp_seconds";

/// Buckets for `mesh_request_duration_seconds`, 0.5 ms to 10 s.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    proxyless_core::describe_metrics();
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Requests through the mesh, by outcome."
    );
    describe_histogram!(
        DURATION,
        Unit::Seconds,
        "Request duration through the mesh, to response headers."
    );
    describe_counter!(RETRIES, Unit::Count, "Retries sent.");
    describe_counter!(
        ATTEMPTS_SKIPPED,
        Unit::Count,
        "Retries and hedges not sent: the deadline would pass before they could answer."
    );
    describe_counter!(
        BUDGET_EXHAUSTED,
        Unit::Count,
        "Retries wanted but refused by the retry budget."
    );
    describe_counter!(
        BREAKER_REJECTIONS,
        Unit::Count,
        "Requests refused by a backend's circuit breaker."
    );
    describe_counter!(
        EJECTIONS,
        Unit::Count,
        "Endpoints ejected by outlier detection."
    );
    describe_gauge!(ENDPOINTS, Unit::Count, "Endpoints per backend, by state.");
    describe_counter!(
        RECLASSIFIED,
        Unit::Count,
        "Responses a route's classifier judged otherwise than the default would."
    );
    describe_gauge!(
        ADAPTIVE_LIMIT,
        Unit::Count,
        "A backend's adaptive concurrency limit: requests it is sent at once."
    );
    describe_counter!(
        HEDGES,
        Unit::Count,
        "Hedged attempts, by result (sent, cancelled, refused)."
    );
    describe_counter!(
        RATE_LIMIT,
        Unit::Count,
        "A route's local rate limit decisions, by result (admitted, refused)."
    );
    describe_gauge!(
        LEVEL_LOAD,
        Unit::Percent,
        "The share of a backend's requests each of its locality and priority levels takes."
    );
    describe_counter!(
        SHADOW_REQUESTS,
        Unit::Count,
        "Requests also decided under the candidate config (shadow evaluation)."
    );
    describe_counter!(
        SHADOW_DIFFERENCES,
        Unit::Count,
        "Requests the candidate config would have routed otherwise, by live and candidate route and backend."
    );
    describe_counter!(
        AUTHZ_DENIED,
        Unit::Count,
        "Inbound requests denied by authorization."
    );
    describe_counter!(
        HANDSHAKE_FAILURES,
        Unit::Count,
        "Inbound TLS handshakes that failed."
    );
    describe_counter!(
        PLAINTEXT_REFUSED,
        Unit::Count,
        "Inbound plaintext connections refused by strict mTLS."
    );
    describe_gauge!(
        CONFIG_VERSION,
        Unit::Count,
        "Version of the config snapshot serving."
    );
    describe_counter!(
        CONFIG_UPDATES,
        Unit::Count,
        "Config updates, accepted or rejected."
    );
    describe_gauge!(
        CONFIG_LAST_UPDATE,
        Unit::Seconds,
        "When the serving config was published (Unix time)."
    );
}

/// Whether a `metrics` recorder is installed (globally, or for this
/// thread). The facade's stand-in when none is, `NoopRecorder`, is the one
/// recorder of size zero: a real one holds its registry.
pub fn recorder_installed() -> bool {
    metrics::with_recorder(|r| std::mem::size_of_val(r) > 0)
}

/// The handle in `slot`, made by `make` once a recorder is installed;
/// `None` (and nothing cached) while none is, so that a recorder installed
/// later gets the series instead of a no-op handle kept forever.
pub fn lazy_handle<T>(slot: &OnceLock<T>, make: impl FnOnce() -> T) -> Option<&T> {
    if let Some(h) = slot.get() {
        return Some(h);
    }
    recorder_installed().then(|| slot.get_or_init(make))
}

/// Outcome classes, each with its own lazily registered series.
const CLASSES: [(&str, &str); 15] = [
    ("1xx", "none"),
    ("2xx", "none"),
    ("3xx", "none"),
    ("4xx", "none"),
    ("5xx", "none"),
    ("error", "timeout"),
    ("error", "circuit_open"),
    ("error", "no_healthy_endpoint"),
    ("error", "connect_failed"),
    ("error", "reset"),
    ("error", "retry_budget_exhausted"),
    ("error", "unauthorized"),
    ("error", "no_route"),
    ("error", "rate_limited"),
    ("error", "other"),
];

/// Index into [`CLASSES`] for an outcome.
pub(crate) fn class_of(outcome: Result<u16, crate::error::ErrorKind>) -> usize {
    use crate::error::ErrorKind as K;
    match outcome {
        Ok(s) => usize::from((s / 100).clamp(1, 5)) - 1,
        Err(K::Timeout) => 5,
        Err(K::CircuitOpen) => 6,
        Err(K::NoHealthyEndpoint) => 7,
        Err(K::ConnectFailed) => 8,
        Err(K::Reset) => 9,
        Err(K::RetryBudgetExhausted) => 10,
        Err(K::Unauthorized) => 11,
        Err(K::NoRoute) => 12,
        Err(K::RateLimited) => 13,
        Err(_) => 14,
    }
}

/// The handles of one (direction, service, route, backend).
#[derive(Debug)]
pub struct RouteMetrics {
    labels: [(&'static str, Arc<str>); 4],
    slots: [OnceLock<(Counter, Histogram)>; 15],
    retries: OnceLock<Counter>,
    exhausted: OnceLock<Counter>,
    limited: [OnceLock<Counter>; 2],
    hedges: [OnceLock<Counter>; 3],
    skipped: [OnceLock<Counter>; 2],
}

impl RouteMetrics {
    /// Handles for these labels (nothing is registered until used).
    pub fn new(
        direction: &'static str,
        service: Arc<str>,
        route: Arc<str>,
        backend: Arc<str>,
    ) -> Self {
        Self {
            labels: [
                ("direction", Arc::from(direction)),
                ("service", service),
                ("route", route),
                ("backend", backend),
            ],
            slots: Default::default(),
            retries: OnceLock::new(),
            exhausted: OnceLock::new(),
            limited: Default::default(),
            hedges: Default::default(),
            skipped: Default::default(),
        }
    }

    fn owned(&self) -> Vec<(&'static str, String)> {
        self.labels
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect()
    }

    /// Records one request's outcome and duration.
    pub fn record(&self, outcome: Result<u16, crate::error::ErrorKind>, seconds: f64) {
        let i = class_of(outcome);
        let handles = lazy_handle(&self.slots[i], || {
            let (class, kind) = CLASSES[i];
            let mut labels = self.owned();
            labels.push(("status_class", class.to_owned()));
            labels.push(("error_kind", kind.to_owned()));
            (
                metrics::counter!(REQUESTS, &labels),
                metrics::histogram!(DURATION, &labels),
            )
        });
        if let Some((counter, histogram)) = handles {
            counter.increment(1);
            histogram.record(seconds);
        }
    }

    /// Counts a retry.
    pub fn retry(&self) {
        if let Some(c) = lazy_handle(&self.retries, || {
            metrics::counter!(RETRIES, &self.owned()[1..])
        }) {
            c.increment(1);
        }
    }

    /// Counts a rate limit's decision on a request: admitted or refused
    /// (`mesh_rate_limit_total{direction, service, route, result}`).
    pub fn rate_limit(&self, admitted: bool) {
        let (i, result) = if admitted {
            (0, "admitted")
        } else {
            (1, "refused")
        };
        if let Some(c) = lazy_handle(&self.limited[i], || {
            let mut labels = self.owned();
            labels.truncate(3);
            labels.push(("result", result.to_owned()));
            metrics::counter!(RATE_LIMIT, &labels)
        }) {
            c.increment(1);
        }
    }

    /// Counts a hedge: `sent`, `cancelled` (an attempt still out when
    /// another answered) or `refused` (by a budget)
    /// (`mesh_hedges_total{service, route, backend, result}`).
    pub fn hedge(&self, result: HedgeResult) {
        let (i, name) = match result {
            HedgeResult::Sent => (0, "sent"),
            HedgeResult::Cancelled => (1, "cancelled"),
            HedgeResult::Refused => (2, "refused"),
        };
        if let Some(c) = lazy_handle(&self.hedges[i], || {
            let mut labels = self.owned()[1..].to_vec();
            labels.push(("result", name.to_owned()));
            metrics::counter!(HEDGES, &labels)
        }) {
            c.increment(1);
        }
    }

    /// Counts a retry or hedge not sent because the deadline would pass
    /// before it could answer
    /// (`mesh_attempts_skipped_total{service, route, backend, attempt, reason="deadline"}`).
    pub fn skipped(&self, attempt: crate::error::SkippedAttempt) {
        let i = usize::from(attempt == crate::error::SkippedAttempt::Hedge);
        if let Some(c) = lazy_handle(&self.skipped[i], || {
            let mut labels = self.owned()[1..].to_vec();
            labels.push(("attempt", attempt.as_str().to_owned()));
            labels.push(("reason", "deadline".to_owned()));
            metrics::counter!(ATTEMPTS_SKIPPED, &labels)
        }) {
            c.increment(1);
        }
    }

    /// Counts a retry the budget refused.
    pub fn budget_exhausted(&self) {
        if let Some(c) = lazy_handle(&self.exhausted, || {
            metrics::counter!(BUDGET_EXHAUSTED, &self.owned()[1..])
        }) {
            c.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every metric this module names is described (a Prometheus linter
    /// refuses a series without help text): each `pub const` naming a
    /// `mesh_` metric is the first argument of a `describe_*!` call.
    #[test]
    fn every_metric_named_here_has_help_text() {
        let source = include_str!("metrics.rs");
        let (code, _) = source.split_once("#[cfg(test)]").unwrap_or((source, ""));
        let described = code.replace(['\n', ' '], "");
        let mut names = 0;
        for line in code.lines() {
            let Some(rest) = line.strip_prefix("pub const ") else {
                continue;
            };
            let Some((name, value)) = rest.split_once(": &str = ") else {
                continue;
            };
            if !value.starts_with("\"mesh_") {
                continue;
            }
            names += 1;
            let called = ["counter", "gauge", "histogram"]
                .iter()
                .any(|k| described.contains(&format!("describe_{k}!({name},")));
            assert!(called, "{name} ({value}) has no describe_*! call");
        }
        assert!(names >= 20, "found only {names} metric names");
    }
}
