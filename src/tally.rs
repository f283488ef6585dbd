//! What a batch of requests through the mesh came back with: answers by
//! the backend that gave them (`x-backend`), non-2xx answers as
//! `http_NNN`, and failures by the mesh's error kind (`timeout`,
//! `circuit_open`, ...). The demo, the `load` example and the end-to-end
//! tests count with it, so they classify outcomes the same way.
//!
//! ```
//! let mut all = mesh::tally::Tally::default();
//! let mut one = mesh::tally::Tally::default();
//! one.ok = 3;
//! one.by_backend.insert("v1".into(), 3);
//! one.errors.insert("http_503".into(), 1);
//! all.merge(one);
//! assert_eq!((all.ok, all.failed(), all.share("v1")), (3, 1, 1.0));
//! ```

use proxyless_tower::BoxError;
use proxyless_tower::error::ErrorKind;
use std::collections::BTreeMap;

/// Outcome counts.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// 2xx answers.
    pub ok: u32,
    /// Answers by their `x-backend` header.
    pub by_backend: BTreeMap<String, u32>,
    /// Everything else: `http_NNN`, or the error kind's name.
    pub errors: BTreeMap<String, u32>,
}

impl Tally {
    /// Counts one result, reading the body so the connection is reused.
    pub async fn record(
        &mut self,
        result: Result<http::Response<proxyless_hyper::Body>, BoxError>,
    ) {
        match result {
            Ok(resp) => {
                if let Some(b) = resp
                    .headers()
                    .get("x-backend")
                    .and_then(|v| v.to_str().ok())
                {
                    *self.by_backend.entry(b.to_owned()).or_default() += 1;
                }
                if resp.status().is_success() {
                    self.ok += 1;
                } else {
                    self.error(&format!("http_{}", resp.status().as_u16()));
                }
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
            }
            Err(e) => self.error(ErrorKind::of(&*e).as_str()),
        }
    }

    /// Counts one failure named `kind`.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.by_backend {
            *self.by_backend.entry(k).or_default() += v;
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// Failures of every kind.
    pub fn failed(&self) -> u32 {
        self.errors.values().sum()
    }

    /// Answers from `backend`.
    pub fn get(&self, backend: &str) -> u32 {
        self.by_backend.get(backend).copied().unwrap_or(0)
    }

    /// `backend`'s share of the answers that named a backend.
    pub fn share(&self, backend: &str) -> f64 {
        let total: u32 = self.by_backend.values().sum();
        f64::from(self.get(backend)) / f64::from(total.max(1))
    }
}
