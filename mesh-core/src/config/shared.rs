//! [`Shared`]: a part of a config held by reference count, so that configs
//! and snapshots built one from another share what did not change.

use serde::Serialize;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// A service or backend of a [`Config`](super::Config), shared rather than
/// copied: cloning a config counts references, and a part that is the same
/// allocation in the running config and in the next one is known unchanged
/// without comparing it. [`Mesh::update`](crate::Mesh::update) validates and
/// compiles only the parts that are not shared with the running config, and
/// the data path keeps their runtime state (breakers, latency estimates,
/// balancer tables) as it was.
///
/// It reads and writes like the value: `Deref` to read, `DerefMut` to
/// change (copy on write: a value other configs share is copied first, so
/// they never see the change), `From` to make one.
///
/// ```
/// use proxyless_core::config::{Backend, Config, Shared};
///
/// let mut cfg = Config::default();
/// cfg.backends.push(Backend { name: "reviews-v1".into(), ..Default::default() }.into());
/// let next = cfg.clone();
/// assert!(Shared::same(&cfg.backends[0], &next.backends[0]));
///
/// let mut changed = next.clone();
/// changed.backends[0].name = "reviews-v2".into(); // copies, then changes
/// assert!(!Shared::same(&next.backends[0], &changed.backends[0]));
/// assert_eq!(next.backends[0].name, "reviews-v1");
/// ```
#[derive(Default, Eq)]
pub struct Shared<T>(Arc<T>);

impl<T> Shared<T> {
    /// Shares `value`.
    pub fn new(value: T) -> Self {
        Self(Arc::new(value))
    }

    /// Whether `a` and `b` are the same allocation (and so equal without
    /// looking).
    pub fn same(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }

    /// The address that identifies the allocation, for tables keyed by
    /// identity.
    pub(crate) fn addr(this: &Self) -> usize {
        Arc::as_ptr(&this.0) as usize
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Self::new(value)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Self::same(self, other) || *self.0 == *other.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: fmt::Display> fmt::Display for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Equal values held once: each value given is exchanged for an equal one
/// already held, if any. Looks through at most [`EqualHeld::DISTINCT`]
/// values, so values that all differ cost a search that stays short and a
/// copy each, as without it; one held by nothing else makes room for a
/// new one.
#[derive(Debug)]
pub(crate) struct EqualHeld<T>(Vec<Shared<T>>);

impl<T> Default for EqualHeld<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: PartialEq> EqualHeld<T> {
    /// How many distinct values are looked through.
    pub(crate) const DISTINCT: usize = 16;

    /// The value held equal to `v`, or `v` (then held, room permitting).
    pub(crate) fn share(&mut self, v: &Shared<T>) -> Shared<T> {
        if let Some(same) = self.0.iter().find(|h| *h == v) {
            return same.clone();
        }
        if self.0.len() >= Self::DISTINCT {
            self.0.retain(|h| Arc::strong_count(&h.0) > 1);
        }
        if self.0.len() < Self::DISTINCT {
            self.0.push(v.clone());
        }
        v.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_held_once_and_room_is_made_from_the_unused() {
        let mut held = EqualHeld::default();
        let one = held.share(&Shared::new(1));
        assert!(Shared::same(&one, &held.share(&Shared::new(1))));
        // Full of values only it holds but `one`: a new value makes room.
        let mut kept = vec![one.clone()];
        for v in 2..=EqualHeld::<i32>::DISTINCT as i32 {
            held.share(&Shared::new(v));
        }
        let new = held.share(&Shared::new(100));
        assert!(
            Shared::same(&new, &held.share(&Shared::new(100))),
            "held after room was made"
        );
        assert!(
            Shared::same(&one, &held.share(&Shared::new(1))),
            "one in use stays"
        );
        assert!(held.0.len() <= EqualHeld::<i32>::DISTINCT);
        // Full of values in use: a new one is given back, not held.
        for v in 200..200 + EqualHeld::<i32>::DISTINCT as i32 {
            kept.push(held.share(&Shared::new(v)));
        }
        let other = Shared::new(999);
        assert!(Shared::same(&held.share(&other), &other));
        assert!(
            !Shared::same(&held.share(&Shared::new(999)), &other),
            "not held"
        );
    }
}
