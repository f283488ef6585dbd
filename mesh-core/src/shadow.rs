//! Shadow evaluation: what a candidate config would do with live traffic.
//!
//! A candidate config is loaded beside the live one
//! ([`Mesh::set_candidate`](crate::Mesh::set_candidate), a watched file
//! named by `MESH_SHADOW_CONFIG`, or a control plane's config with
//! `XdsSettings::candidate`). Every request the live config routes is also
//! decided under the candidate, with the same random draw for weighted
//! splits, and nothing more: the candidate's decision is never sent. Where
//! the two decisions differ, the difference is counted by (service, live
//! route and backend, candidate route and backend), and the last few
//! differing requests are kept as samples. The [`Report`] is what an
//! operator reads before promoting the candidate: on the admin server
//! (`/shadow`), through `meshctl shadow`, and as the metrics
//! `mesh_shadow_requests_total` and `mesh_shadow_differences_total`.
//!
//! With no candidate loaded the data path pays nothing beyond one branch
//! on the snapshot it already holds.
//!
//! Everything kept is bounded: at most [`MAX_KEYS`] distinct differences
//! are counted apart (the rest are counted together, as `other`), at most
//! [`MAX_SAMPLES`] samples are kept (the newest), and a sample's path is
//! cut at [`MAX_SAMPLE_PATH`] bytes. Samples carry no query string and no
//! header values, which may hold credentials.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// Distinct differences counted apart; further ones are counted together.
pub const MAX_KEYS: usize = 1024;
/// Differing requests kept as samples (the newest).
pub const MAX_SAMPLES: usize = 64;
/// A sample's path is cut at this many bytes.
pub const MAX_SAMPLE_PATH: usize = 256;

/// Where one config sends a request: the route and backend, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A route matched and a backend was chosen.
    Routed {
        /// The service that claims the host.
        #[serde(serialize_with = "name")]
        service: Arc<str>,
        /// The route that matched (`route-N` when unnamed).
        #[serde(serialize_with = "name")]
        route: Arc<str>,
        /// The backend the split chose.
        #[serde(serialize_with = "name")]
        backend: Arc<str>,
    },
    /// No service claims the host and it passes through as addressed.
    Passthrough,
    /// No service claims the host and unknown hosts are refused.
    UnknownHost,
    /// The service claims the host but no route matches.
    NoMatchingRoute {
        /// The service.
        #[serde(serialize_with = "name")]
        service: Arc<str>,
    },
    /// The matched route has no backend to send to.
    NoBackend {
        /// The service.
        #[serde(serialize_with = "name")]
        service: Arc<str>,
        /// The route.
        #[serde(serialize_with = "name")]
        route: Arc<str>,
    },
}

impl Outcome {
    /// The service the outcome names, if any (a difference is filed under
    /// the live one, else the candidate's).
    pub fn service(&self) -> Option<&str> {
        match self {
            Outcome::Routed { service, .. }
            | Outcome::NoMatchingRoute { service }
            | Outcome::NoBackend { service, .. } => Some(service),
            Outcome::Passthrough | Outcome::UnknownHost => None,
        }
    }

    /// The route, or what stands in for it in labels: `(passthrough)`,
    /// `(unknown host)`, `(no route)`.
    pub fn route_label(&self) -> &str {
        match self {
            Outcome::Routed { route, .. } | Outcome::NoBackend { route, .. } => route,
            Outcome::Passthrough => "(passthrough)",
            Outcome::UnknownHost => "(unknown host)",
            Outcome::NoMatchingRoute { .. } => "(no route)",
        }
    }

    /// The backend, or `(none)`.
    pub fn backend_label(&self) -> &str {
        match self {
            Outcome::Routed { backend, .. } => backend,
            _ => "(none)",
        }
    }
}

/// One kind of difference, with how many requests showed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Difference {
    /// What the live config did.
    pub live: Outcome,
    /// What the candidate would have done.
    pub candidate: Outcome,
    /// Requests that differed so.
    pub requests: u64,
}

/// A request the two configs decided differently.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    /// When (Unix milliseconds).
    pub unix_ms: u64,
    /// The method.
    pub method: String,
    /// The authority addressed.
    pub authority: String,
    /// The path, without its query, cut at [`MAX_SAMPLE_PATH`] bytes.
    pub path: String,
    /// What the live config did.
    pub live: Outcome,
    /// What the candidate would have done.
    pub candidate: Outcome,
}

/// What a request looked like, for a sample (borrowed; copied only when
/// the request differed).
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// The method.
    pub method: &'a str,
    /// The authority.
    pub authority: &'a str,
    /// The path (no query).
    pub path: &'a str,
}

/// The counts of a candidate's evaluation, shared by every snapshot that
/// carries the candidate.
#[derive(Debug)]
pub struct Report {
    source: String,
    loaded: SystemTime,
    evaluated: AtomicU64,
    differing: AtomicU64,
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    counts: HashMap<(Outcome, Outcome), u64>,
    other: u64,
    samples: VecDeque<Sample>,
}

impl Report {
    /// An empty report for a candidate from `source` (a file path, a
    /// control plane, `api`).
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            loaded: SystemTime::now(),
            evaluated: AtomicU64::new(0),
            differing: AtomicU64::new(0),
            kept: Mutex::new(Kept::default()),
        }
    }

    /// Counts a request both configs decided alike.
    pub fn same(&self) {
        self.evaluated.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request the configs decided differently, and keeps it as
    /// the newest sample.
    pub fn differ(&self, seen: Seen<'_>, live: Outcome, candidate: Outcome) {
        self.evaluated.fetch_add(1, Ordering::Relaxed);
        self.differing.fetch_add(1, Ordering::Relaxed);
        let sample = Sample {
            unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            method: seen.method.to_owned(),
            authority: seen.authority.to_owned(),
            path: cut(seen.path, MAX_SAMPLE_PATH).to_owned(),
            live: live.clone(),
            candidate: candidate.clone(),
        };
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (live, candidate);
        let room = kept.counts.len() < MAX_KEYS;
        match kept.counts.get_mut(&key) {
            Some(n) => *n = n.saturating_add(1),
            None if room => {
                kept.counts.insert(key, 1);
            }
            None => kept.other = kept.other.saturating_add(1),
        }
        if kept.samples.len() >= MAX_SAMPLES {
            kept.samples.pop_front();
        }
        kept.samples.push_back(sample);
    }

    /// Where the candidate came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// When the candidate was loaded.
    pub fn loaded(&self) -> SystemTime {
        self.loaded
    }

    /// Requests evaluated under the candidate.
    pub fn evaluated(&self) -> u64 {
        self.evaluated.load(Ordering::Relaxed)
    }

    /// Requests the candidate would have routed differently.
    pub fn differing(&self) -> u64 {
        self.differing.load(Ordering::Relaxed)
    }

    /// The differences counted apart, most requests first (ties by the
    /// live then the candidate outcome's labels), and the requests whose
    /// difference found no room among them.
    pub fn differences(&self) -> (Vec<Difference>, u64) {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Difference> = kept
            .counts
            .iter()
            .map(|((live, candidate), n)| Difference {
                live: live.clone(),
                candidate: candidate.clone(),
                requests: *n,
            })
            .collect();
        out.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| label(&a.live).cmp(&label(&b.live)))
                .then_with(|| label(&a.candidate).cmp(&label(&b.candidate)))
        });
        (out, kept.other)
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        kept.samples.iter().cloned().collect()
    }

    /// The report as JSON (what the admin server's `/shadow` serves).
    pub fn to_json(&self) -> serde_json::Value {
        let (differences, other) = self.differences();
        let loaded = self
            .loaded
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        serde_json::json!({
            "candidate": { "source": self.source, "loaded_unix_seconds": loaded },
            "evaluated": self.evaluated(),
            "differing": self.differing(),
            "differences": differences,
            "other_differences": other,
            "samples": self.samples(),
        })
    }
}

fn name<S: serde::Serializer>(s: &Arc<str>, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(s)
}

fn label(o: &Outcome) -> (String, String, String) {
    (
        o.service().unwrap_or("").to_owned(),
        o.route_label().to_owned(),
        o.backend_label().to_owned(),
    )
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn routed(route: &str, backend: &str) -> Outcome {
        Outcome::Routed {
            service: "reviews".into(),
            route: route.into(),
            backend: backend.into(),
        }
    }

    const SEEN: Seen<'static> = Seen {
        method: "GET",
        authority: "reviews",
        path: "/ratings/1",
    };

    #[test]
    fn counts_differences_by_kind_and_keeps_the_newest_samples() {
        let r = Report::new("api");
        r.same();
        for _ in 0..3 {
            r.differ(SEEN, routed("v1", "a"), routed("canary", "b"));
        }
        r.differ(SEEN, routed("v1", "a"), Outcome::UnknownHost);
        assert_eq!((r.evaluated(), r.differing()), (5, 4));
        let (d, other) = r.differences();
        assert_eq!(other, 0);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].requests, 3);
        assert_eq!(d[0].candidate, routed("canary", "b"));
        assert_eq!(d[1].candidate.route_label(), "(unknown host)");
        for i in 0..MAX_SAMPLES + 5 {
            let path = format!("/p/{i}");
            let seen = Seen {
                path: &path,
                ..SEEN
            };
            r.differ(seen, routed("v1", "a"), routed("v2", "a"));
        }
        let samples = r.samples();
        assert_eq!(samples.len(), MAX_SAMPLES);
        assert_eq!(
            samples.last().unwrap().path,
            format!("/p/{}", MAX_SAMPLES + 4)
        );
        let json = r.to_json();
        assert_eq!(json["differing"], 4 + MAX_SAMPLES as u64 + 5);
        assert_eq!(json["differences"][0]["live"]["outcome"], "routed");
    }

    #[test]
    fn bounds_what_it_keeps() {
        let r = Report::new("api");
        for i in 0..MAX_KEYS + 10 {
            r.differ(SEEN, routed("v1", "a"), routed(&format!("r{i}"), "a"));
        }
        let (d, other) = r.differences();
        assert_eq!((d.len(), other), (MAX_KEYS, 10));
        let long = "é".repeat(MAX_SAMPLE_PATH);
        r.differ(
            Seen {
                path: &long,
                ..SEEN
            },
            routed("v1", "a"),
            Outcome::Passthrough,
        );
        let kept = r.samples().pop().unwrap().path;
        assert!(kept.len() <= MAX_SAMPLE_PATH && kept.len() >= MAX_SAMPLE_PATH - 1);
        assert!(long.starts_with(&kept));
    }
}
