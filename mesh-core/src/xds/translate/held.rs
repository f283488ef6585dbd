//! A held resource: kept as the control plane encoded it, decoded when a
//! config is built from it, with the names it refers to read once when it
//! is held.
//!
//! Decoded, the Envoy messages are large whatever they hold (a `Cluster` is
//! over 3 KiB of mostly empty fields, a `Listener` over 2 KiB); encoded, a
//! typical cluster is a few hundred bytes. A client subscribed to 10,000
//! services holds tens of thousands of them, so it holds the encoding. What
//! to subscribe to next (the names resources refer to) is asked after every
//! response, so those names are kept beside the encoding.

use crate::config::Name;
use prost::Message;
use std::marker::PhantomData;
use std::sync::Arc;

/// A resource of type `M`, held encoded (shared, so copies for a NACK's
/// rollback cost a reference count), with the names it refers to and the
/// version an incremental control plane gave it.
pub struct Held<M> {
    bytes: Arc<[u8]>,
    meta: Arc<Meta>,
    kind: PhantomData<fn() -> M>,
}

/// What is read once of a held resource, beside its encoding.
#[derive(Debug, PartialEq, Eq)]
struct Meta {
    refers: Refers,
    /// The resource's version, over incremental xDS (told back to the
    /// control plane on reconnecting, so it sends only what changed).
    /// Kept here rather than in a map of its own: the holding's name is
    /// the map's key already, and a NACK's rollback puts it back with the
    /// resource.
    version: Option<Version>,
}

/// A resource's version as a control plane gave it: up to
/// [`Version::INLINE`] bytes held inline (a counter, a 64-bit hash in hex,
/// a push's timestamp), a longer one in an allocation of its own. Held
/// inline, the versions of 10,000 services' resources are 60,000
/// allocations fewer.
#[derive(Debug, PartialEq, Eq)]
enum Version {
    Inline {
        len: u8,
        bytes: [u8; Version::INLINE],
    },
    Boxed(Box<str>),
}

impl Version {
    const INLINE: usize = 22;

    fn new(v: &str) -> Self {
        let mut bytes = [0; Self::INLINE];
        match (bytes.get_mut(..v.len()), u8::try_from(v.len())) {
            (Some(to), Ok(len)) => {
                to.copy_from_slice(v.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Boxed(v.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `str` whole: always UTF-8.
            Self::Inline { len, bytes } => bytes
                .get(..usize::from(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            Self::Boxed(s) => s,
        }
    }
}

/// The names a resource refers to, as [`wanted`](super::wanted) follows
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Refers {
    /// Nothing (an assignment; a listener with no usable routes).
    #[default]
    Nothing,
    /// A listener's route configuration, by RDS.
    Rds(Name),
    /// The clusters a route configuration names (a listener's own inline
    /// one, or an RDS one), in name order, each once: shared with what a
    /// translation of it uses.
    Clusters(Arc<[Name]>),
    /// An EDS cluster's assignment.
    Eds(Name),
}

/// How a resource type tells what it refers to.
pub trait Refer {
    /// The names this resource refers to.
    fn refers(&self) -> Refers;
}

impl<M> Clone for Held<M> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            meta: self.meta.clone(),
            kind: PhantomData,
        }
    }
}

impl<M> std::fmt::Debug for Held<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Held({} bytes)", self.bytes.len())
    }
}

impl<M> PartialEq for Held<M> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl<M> Held<M> {
    /// The encoding.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoding, shared.
    pub fn shared_bytes(&self) -> Arc<[u8]> {
        self.bytes.clone()
    }

    /// Whether `a` and `b` are the same holding (not only equal bytes):
    /// what was translated from one stands for the other.
    pub fn same(a: &Self, b: &Self) -> bool {
        Arc::ptr_eq(&a.bytes, &b.bytes)
    }

    /// The names the resource refers to (read when it was held).
    pub fn refers(&self) -> &Refers {
        &self.meta.refers
    }

    /// The version an incremental control plane gave it.
    pub fn version(&self) -> Option<&str> {
        self.meta.version.as_ref().map(Version::as_str)
    }

    /// The same holding, at `version` (empty: none).
    #[must_use]
    pub fn with_version(self, version: &str) -> Self {
        if self.version().unwrap_or("") == version {
            return self;
        }
        let meta = Meta {
            refers: self.meta.refers.clone(),
            version: (!version.is_empty()).then(|| Version::new(version)),
        };
        Self {
            bytes: self.bytes,
            meta: shared(meta),
            kind: PhantomData,
        }
    }
}

/// `meta`, shared: resources that refer to nothing and have no version
/// (every assignment over state of the world) share one holding of that,
/// so tens of thousands of them cost no allocation each.
fn shared(meta: Meta) -> Arc<Meta> {
    static NOTHING: std::sync::OnceLock<Arc<Meta>> = std::sync::OnceLock::new();
    match meta {
        Meta {
            refers: Refers::Nothing,
            version: None,
        } => NOTHING
            .get_or_init(|| {
                Arc::new(Meta {
                    refers: Refers::Nothing,
                    version: None,
                })
            })
            .clone(),
        other => Arc::new(other),
    }
}

/// What `m` refers to, with no version yet.
fn meta_of<M: Refer>(m: &M) -> Arc<Meta> {
    shared(Meta {
        refers: m.refers(),
        version: None,
    })
}

impl<M: Message + Default + Refer> Held<M> {
    /// Holds `m`, encoded.
    pub fn new(m: &M) -> Self {
        Self {
            bytes: m.encode_to_vec().into(),
            meta: meta_of(m),
            kind: PhantomData,
        }
    }

    /// Holds an encoding if it decodes as an `M`; the resource is returned
    /// decoded too.
    pub fn decoded(bytes: &[u8]) -> Result<(Self, M), prost::DecodeError> {
        let m = M::decode(bytes)?;
        let held = Self {
            bytes: bytes.into(),
            meta: meta_of(&m),
            kind: PhantomData,
        };
        Ok((held, m))
    }

    /// The resource. Its encoding was checked when it was held, so this
    /// does not fail; were it to, the empty resource comes back (and fails
    /// translation with an error naming what is missing).
    pub fn get(&self) -> M {
        M::decode(&*self.bytes).unwrap_or_default()
    }

    /// Changes the resource (tests and the development control plane).
    pub fn update(&mut self, f: impl FnOnce(&mut M)) {
        let mut m = self.get();
        f(&mut m);
        *self = Self::new(&m);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    #[test]
    fn holds_the_encoding_and_gives_back_the_resource() {
        let c = Cluster {
            name: "reviews".into(),
            ..Default::default()
        };
        let held = Held::new(&c);
        assert_eq!(held.get(), c);
        assert_eq!(held.bytes(), c.encode_to_vec().as_slice());
        // Far smaller than the decoded message it stands for.
        assert!(held.bytes().len() < 16 && std::mem::size_of::<Cluster>() > 1000);
        let (again, decoded) = Held::<Cluster>::decoded(held.bytes()).unwrap();
        assert_eq!((again.clone(), decoded), (held.clone(), c));
        let mut changed = held.clone();
        changed.update(|c| c.name = "ratings".into());
        assert_eq!(changed.get().name, "ratings");
        assert_ne!(changed, held, "a copy changes alone");
        assert!(Held::<Cluster>::decoded(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn resources_that_refer_to_nothing_share_one_holding_of_it() {
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        let held = |name: &str| {
            Held::new(&ClusterLoadAssignment {
                cluster_name: name.into(),
                ..Default::default()
            })
        };
        let (a, b) = (held("a"), held("b"));
        assert_eq!(a.refers(), &Refers::Nothing);
        assert!(std::ptr::eq(a.refers(), b.refers()));
        // One that refers to something has its own.
        use envoy_types::pb::envoy::config::cluster::v3::cluster::{
            ClusterDiscoveryType, DiscoveryType,
        };
        let c = Held::new(&Cluster {
            name: "c".into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            ..Default::default()
        });
        assert_eq!(c.refers(), &Refers::Eds("c".into()));
        assert!(!std::ptr::eq(a.refers(), c.refers()));
    }

    #[test]
    fn a_version_is_kept_with_the_holding_and_changes_only_it() {
        let held = Held::new(&Cluster {
            name: "c".into(),
            ..Default::default()
        });
        assert_eq!(held.version(), None);
        let v1 = held.clone().with_version("v1");
        assert_eq!(v1.version(), Some("v1"));
        assert!(Held::same(&held, &v1), "the encoding is shared");
        assert_eq!(held.version(), None, "the copy it came from is unchanged");
        assert_eq!(v1.clone().with_version("").version(), None);
        assert_eq!(v1.with_version("v2").version(), Some("v2"));
        // Long and short alike, and at the edge of what is held inline.
        for v in [
            "1",
            &"a".repeat(Version::INLINE),
            &"b".repeat(Version::INLINE + 1),
            "é".repeat(40).as_str(),
        ] {
            assert_eq!(held.clone().with_version(v).version(), Some(v));
        }
        assert!(matches!(
            Version::new(&"a".repeat(Version::INLINE)),
            Version::Inline { .. }
        ));
        assert!(matches!(
            Version::new(&"a".repeat(Version::INLINE + 1)),
            Version::Boxed(_)
        ));
    }
}
