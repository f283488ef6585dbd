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

use prost::Message;
use std::marker::PhantomData;
use std::sync::Arc;

/// A resource of type `M`, held encoded (shared, so copies for a NACK's
/// rollback cost a reference count), with the names it refers to.
pub struct Held<M> {
    bytes: Arc<[u8]>,
    refers: Arc<Refers>,
    kind: PhantomData<fn() -> M>,
}

/// The names a resource refers to, as [`wanted`](super::wanted) follows
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Refers {
    /// Nothing (an assignment; a listener with no usable routes).
    #[default]
    Nothing,
    /// A listener's route configuration, by RDS.
    Rds(String),
    /// The clusters a route configuration names (a listener's own inline
    /// one, or an RDS one).
    Clusters(Box<[String]>),
    /// An EDS cluster's assignment.
    Eds(String),
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
            refers: self.refers.clone(),
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
        &self.refers
    }
}

impl<M: Message + Default + Refer> Held<M> {
    /// Holds `m`, encoded.
    pub fn new(m: &M) -> Self {
        Self {
            bytes: m.encode_to_vec().into(),
            refers: Arc::new(m.refers()),
            kind: PhantomData,
        }
    }

    /// Holds an encoding if it decodes as an `M`; the resource is returned
    /// decoded too.
    pub fn decoded(bytes: &[u8]) -> Result<(Self, M), prost::DecodeError> {
        let m = M::decode(bytes)?;
        let held = Self {
            bytes: bytes.into(),
            refers: Arc::new(m.refers()),
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
}
