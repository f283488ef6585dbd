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

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}
