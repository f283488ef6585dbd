//! [`Name`]: a name held once, however many places hold it.

use serde::Serialize;
use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

/// A name in a config (a service's, a backend's, a host) or in what a
/// control plane sent (a resource's, one it refers to): immutable, and held
/// once. Names are interned: making a `Name` of text a live `Name` already
/// holds shares that one's allocation, so a cluster named by a route, a
/// cluster resource, its assignment, a subscription and a backend is one
/// allocation, not five. Cloning counts a reference.
///
/// It reads like a `&str` (`Deref`, `Borrow<str>`, comparisons with `str`
/// and `String`) and is made from one with `From`/`into()`:
///
/// ```
/// use proxyless_core::config::Name;
///
/// let a = Name::from("reviews-v1");
/// let b = Name::from(String::from("reviews-v1"));
/// assert_eq!(a, "reviews-v1");
/// assert!(Name::same(&a, &b), "one allocation for equal names");
/// assert!(a.starts_with("reviews"));
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Arc<str>);

/// The live names, by text. A name only this table holds is dropped from it
/// when the table has doubled since it was last swept, so the sweep's cost
/// is spread over the names made in between.
struct Table {
    names: HashSet<Arc<str>, foldhash::fast::RandomState>,
    /// How many were live after the last sweep.
    live: usize,
}

/// The most names kept without a sweep (a small table is never swept).
const SWEEP_FLOOR: usize = 1024;

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        names: HashSet::default(),
        live: 0,
    })
});

impl Table {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(held) = self.names.get(s) {
            return held.clone();
        }
        if self.names.len() >= SWEEP_FLOOR.max(self.live.saturating_mul(2)) {
            // Held by nothing but this table: no `Name` can clone it
            // (cloning one needs a `Name`), so it can go.
            self.names.retain(|n| Arc::strong_count(n) > 1);
            self.live = self.names.len();
        }
        let name: Arc<str> = Arc::from(s);
        self.names.insert(name.clone());
        name
    }
}

impl Name {
    /// The name `s`, sharing the allocation of a live name of the same
    /// text.
    pub fn new(s: &str) -> Self {
        if s.is_empty() {
            static EMPTY: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));
            return Self(EMPTY.clone());
        }
        let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        Self(table.intern(s))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, shared (a reference count, no copy).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// Whether `a` and `b` are the same allocation.
    pub fn same(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

impl Default for Name {
    fn default() -> Self {
        Self::new("")
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Self::new(s)
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Self::new(&s)
    }
}

impl From<&Name> for Name {
    fn from(n: &Name) -> Self {
        n.clone()
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.as_str().to_owned()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_allocation() {
        let a = Name::from("name-test-a");
        let b = Name::from("name-test-a".to_owned());
        assert!(Name::same(&a, &b));
        assert!(!Name::same(&a, &Name::from("name-test-b")));
        assert_eq!(a.as_str(), "name-test-a");
        assert_eq!(format!("{a}/{a:?}"), "name-test-a/\"name-test-a\"");
        assert!(Name::same(&Name::default(), &Name::from("")));
    }

    #[test]
    fn names_only_the_table_holds_are_swept_as_it_grows() {
        // A table of its own: the process's is shared with other tests.
        let mut t = Table {
            names: HashSet::default(),
            live: 0,
        };
        let kept = t.intern("kept");
        for i in 0..(4 * SWEEP_FLOOR) {
            drop(t.intern(&format!("gone-{i}")));
        }
        assert!(t.names.len() <= SWEEP_FLOOR, "{} names held", t.names.len());
        assert!(Arc::ptr_eq(&t.intern("kept"), &kept), "a live name stays");
        // Live names are never swept, and the floor grows with them.
        let live: Vec<_> = (0..(2 * SWEEP_FLOOR))
            .map(|i| t.intern(&format!("live-{i}")))
            .collect();
        for i in 0..(4 * SWEEP_FLOOR) {
            drop(t.intern(&format!("gone-again-{i}")));
        }
        assert!(live.iter().all(|n| t.names.contains(n)));
        assert!(
            t.names.len() <= 3 * live.len(),
            "{} names held",
            t.names.len()
        );
    }

    #[test]
    fn a_name_compares_and_hashes_as_its_text() {
        use std::collections::{BTreeMap, HashMap};
        let n = Name::from("reviews");
        let text = String::from("reviews");
        assert_eq!(n, "reviews");
        assert_eq!("reviews", n);
        assert_eq!(n, text);
        assert_eq!(text, n);
        let mut by_hash = HashMap::new();
        by_hash.insert(n.clone(), 1);
        assert_eq!(by_hash.get("reviews"), Some(&1));
        let mut by_order = BTreeMap::new();
        by_order.insert(Name::from("b"), 2);
        by_order.insert(Name::from("a"), 1);
        assert_eq!(by_order.get("a"), Some(&1));
        assert_eq!(by_order.keys().next().map(Name::as_str), Some("a"));
    }
}
