//! Local rate limiting: token buckets as Envoy's `local_ratelimit` filter
//! has them. A bucket starts full with `max_tokens`; every `fill_interval`
//! it gains `tokens_per_fill`, up to `max_tokens`; a request takes one
//! token or is refused, and told when the next fill comes.
//!
//! A [`Limiter`] is one bucket, or one bucket per key (the caller's
//! identity, a header's value, the path) with at most `max_keys` of them.
//! A key is held as a seeded 64-bit hash, whatever its length, so a caller
//! inventing long keys cannot grow memory; when the map is full, buckets
//! that have filled up again (the same as new ones) are dropped, so keys
//! seen once do not crowd out callers that come later; keys beyond that
//! share one more bucket, so nobody escapes the limit.
//!
//! ```
//! use proxyless_core::config::RateLimit;
//! use proxyless_core::policy::ratelimit::Limiter;
//! use std::time::{Duration, Instant};
//!
//! let limit = RateLimit { max_tokens: 2, tokens_per_fill: 1, fill_interval: Duration::from_secs(1), ..RateLimit::default() };
//! let l = Limiter::new(&limit, Instant::now());
//! let t = Instant::now();
//! assert!(l.try_take(None, t).is_ok());
//! assert!(l.try_take(None, t).is_ok());
//! let wait = l.try_take(None, t).unwrap_err();          // empty: wait for the next fill
//! assert!(wait <= Duration::from_secs(1));
//! assert!(l.try_take(None, t + Duration::from_secs(1)).is_ok());
//! ```

use crate::config::RateLimit;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One token bucket's state.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u64,
    /// When the last fill counted was due.
    filled: Instant,
}

impl Bucket {
    /// Whether the bucket would be full at `now` (then it is the same as
    /// a new one).
    fn refilled(&self, p: &Params, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.filled);
        let fills = since.as_nanos() / p.interval.as_nanos().max(1);
        let fills = u64::try_from(fills).unwrap_or(u64::MAX);
        self.tokens.saturating_add(fills.saturating_mul(p.per_fill)) >= p.max
    }

    fn full(max: u64, now: Instant) -> Self {
        Self {
            tokens: max,
            filled: now,
        }
    }

    /// Takes a token at `now`, or says how long until the next fill.
    fn take(&mut self, p: &Params, now: Instant) -> Result<(), Duration> {
        let since = now.saturating_duration_since(self.filled);
        let fills = since.as_nanos() / p.interval.as_nanos().max(1);
        if fills > 0 {
            let added = u64::try_from(fills)
                .unwrap_or(u64::MAX)
                .saturating_mul(p.per_fill);
            self.tokens = self.tokens.saturating_add(added).min(p.max);
            let step = p
                .interval
                .saturating_mul(u32::try_from(fills).unwrap_or(u32::MAX));
            self.filled = self.filled.checked_add(step).unwrap_or(now);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            return Ok(());
        }
        let next = self.filled.checked_add(p.interval).unwrap_or(now);
        Err(next.saturating_duration_since(now))
    }
}

#[derive(Debug, Clone, Copy)]
struct Params {
    max: u64,
    per_fill: u64,
    interval: Duration,
}

/// A rate limit's buckets: one, or one per key.
#[derive(Debug)]
pub struct Limiter {
    params: Params,
    max_keys: usize,
    shared: Mutex<Bucket>,
    keyed: Mutex<Keyed>,
    hasher: foldhash::fast::RandomState,
}

/// The per-key buckets, by the key's hash, and when the full ones were
/// last dropped.
#[derive(Debug, Default)]
struct Keyed {
    buckets: HashMap<u64, Bucket, BuildNoHash>,
    swept: Option<Instant>,
}

/// The keys are hashes already: used as they are.
#[derive(Debug, Default, Clone, Copy)]
struct BuildNoHash;

impl std::hash::BuildHasher for BuildNoHash {
    type Hasher = NoHash;
    fn build_hasher(&self) -> NoHash {
        NoHash(0)
    }
}

#[derive(Debug)]
struct NoHash(u64);

impl std::hash::Hasher for NoHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Limiter {
    /// The buckets of `limit`, full at `now`.
    pub fn new(limit: &RateLimit, now: Instant) -> Self {
        let params = Params {
            max: u64::from(limit.max_tokens.max(1)),
            per_fill: u64::from(limit.tokens_per_fill.max(1)),
            interval: limit.fill_interval.max(Duration::from_millis(1)),
        };
        Self {
            shared: Mutex::new(Bucket::full(params.max, now)),
            keyed: Mutex::new(Keyed::default()),
            hasher: foldhash::fast::RandomState::default(),
            max_keys: limit.max_keys as usize,
            params,
        }
    }

    /// Takes a token from `key`'s bucket (the one bucket when `key` is
    /// `None`, or when `max_keys` buckets exist already and `key` has
    /// none), or says how long until the next fill.
    pub fn try_take(&self, key: Option<&str>, now: Instant) -> Result<(), Duration> {
        if let Some(key) = key {
            let hash = std::hash::BuildHasher::hash_one(&self.hasher, key);
            let mut keyed = self.keyed.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(b) = keyed.buckets.get_mut(&hash) {
                return b.take(&self.params, now);
            }
            // Full: drop the buckets that have filled up again, at most
            // once per fill interval (the sweep looks at every key).
            let due = keyed
                .swept
                .is_none_or(|t| now.saturating_duration_since(t) >= self.params.interval);
            if keyed.buckets.len() >= self.max_keys && due {
                let p = self.params;
                keyed.buckets.retain(|_, b| !b.refilled(&p, now));
                keyed.swept = Some(now);
            }
            if keyed.buckets.len() < self.max_keys {
                let mut b = Bucket::full(self.params.max, now);
                let taken = b.take(&self.params, now);
                keyed.buckets.insert(hash, b);
                return taken;
            }
        }
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(&self.params, now)
    }

    /// How many keys have a bucket of their own.
    pub fn keys(&self) -> usize {
        self.keyed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .buckets
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u32, per_fill: u32, ms: u64, max_keys: u32) -> RateLimit {
        RateLimit {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: Duration::from_millis(ms),
            max_keys,
            ..RateLimit::default()
        }
    }

    #[test]
    fn a_bucket_refills_in_steps_up_to_its_size() {
        let t0 = Instant::now();
        let l = Limiter::new(&limit(3, 2, 100, 0), t0);
        for _ in 0..3 {
            assert!(l.try_take(None, t0).is_ok());
        }
        assert_eq!(l.try_take(None, t0), Err(Duration::from_millis(100)));
        let t = t0 + Duration::from_millis(150);
        assert_eq!(l.try_take(None, t), Ok(()));
        assert_eq!(l.try_take(None, t), Ok(()));
        // The next fill is due 100 ms after the first, at 200 ms.
        assert_eq!(l.try_take(None, t), Err(Duration::from_millis(50)));
        // A long pause fills to the size, no more.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(l.try_take(None, later).is_ok());
        }
        assert!(l.try_take(None, later).is_err());
    }

    #[test]
    fn keys_have_buckets_of_their_own_up_to_max_keys_then_share_one() {
        let t0 = Instant::now();
        let l = Limiter::new(&limit(1, 1, 1000, 2), t0);
        assert!(l.try_take(Some("a"), t0).is_ok());
        assert!(l.try_take(Some("a"), t0).is_err());
        assert!(l.try_take(Some("b"), t0).is_ok());
        // Beyond two keys: the shared bucket, whatever the key.
        assert!(l.try_take(Some("c"), t0).is_ok());
        assert!(l.try_take(Some("d"), t0).is_err());
        assert_eq!(l.keys(), 2);
        // Once a and b have filled up again, new keys get buckets of their
        // own: keys seen once do not crowd later callers out.
        let later = t0 + Duration::from_secs(1);
        assert!(l.try_take(Some("e"), later).is_ok());
        assert!(l.try_take(Some("e"), later).is_err());
        assert!(l.try_take(Some("f"), later).is_ok());
        assert_eq!(l.keys(), 2);
    }

    #[test]
    fn long_keys_cost_no_more_memory_than_short_ones() {
        let t0 = Instant::now();
        let l = Limiter::new(&limit(1, 1, 1000, 100), t0);
        let long = "k".repeat(64 * 1024);
        assert!(l.try_take(Some(&long), t0).is_ok());
        assert!(
            l.try_take(Some(&long), t0).is_err(),
            "the same key, the same bucket"
        );
        assert!(l.try_take(Some(&long[1..]), t0).is_ok(), "another key");
    }

    #[test]
    fn extreme_settings_neither_panic_nor_overflow() {
        let t0 = Instant::now();
        let l = Limiter::new(&limit(u32::MAX, u32::MAX, 1, 0), t0);
        assert!(
            l.try_take(None, t0 + Duration::from_secs(86_400 * 365))
                .is_ok()
        );
        let l = Limiter::new(&limit(0, 0, 0, 0), t0);
        assert!(l.try_take(None, t0).is_ok());
        let before = t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0);
        assert!(l.try_take(None, before).is_err());
    }
}
