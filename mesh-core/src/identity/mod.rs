//! Workload identity: SPIFFE IDs.
//!
//! A SPIFFE ID is `spiffe://<trust-domain>/<path>`, validated as the SPIFFE
//! ID specification prescribes: a lowercase trust domain of letters, digits,
//! `.`, `-` and `_`; a path of non-empty segments of letters, digits, `.`,
//! `-` and `_` that are neither `.` nor `..`; no port, user info, query or
//! fragment; at most 2048 bytes.
//!
//! ```
//! use proxyless_core::identity::SpiffeId;
//! let id: SpiffeId = "spiffe://demo.local/ns/default/sa/reviews".parse().unwrap();
//! assert_eq!(id.trust_domain(), "demo.local");
//! assert_eq!(id.path(), "/ns/default/sa/reviews");
//! assert!("spiffe://Demo.local/x".parse::<SpiffeId>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A validated SPIFFE ID. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Arc<str>,
    /// Byte offset where the path starts (== len when there is none).
    path_at: usize,
}

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// Does not start with `spiffe://`.
    #[error("must start with `spiffe://`")]
    Scheme,
    /// No trust domain after the scheme.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// A character not allowed in a trust domain.
    #[error(
        "the trust domain may hold only lowercase letters, digits, `.`, `-` and `_` (found `{0}`)"
    )]
    TrustDomainChar(char),
    /// A character not allowed in a path segment.
    #[error("path segments may hold only letters, digits, `.`, `-` and `_` (found `{0}`)")]
    PathChar(char),
    /// `//` or a trailing `/`.
    #[error("the path has an empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("the path may not contain `.` or `..` segments")]
    DotSegment,
    /// Longer than 2048 bytes.
    #[error("longer than 2048 bytes")]
    TooLong,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn new(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > 2048 {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let td_end = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_end);
        validate_trust_domain(td)?;
        if !path.is_empty() {
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(SpiffeIdError::EmptySegment);
                }
                if seg == "." || seg == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                if let Some(c) = seg
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError::PathChar(c));
                }
            }
        }
        Ok(Self {
            uri: Arc::from(s),
            path_at: "spiffe://".len() + td_end,
        })
    }

    /// The ID of `path` (which must start with `/`) in `trust_domain`.
    pub fn from_parts(trust_domain: &str, path: &str) -> Result<Self, SpiffeIdError> {
        Self::new(&format!("spiffe://{trust_domain}{path}"))
    }

    /// The trust domain, e.g. `demo.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri["spiffe://".len()..self.path_at]
    }

    /// The path, e.g. `/ns/default/sa/reviews` (empty for a trust domain ID).
    pub fn path(&self) -> &str {
        &self.uri[self.path_at..]
    }

    /// The whole URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

/// Validates a trust domain name on its own (`demo.local`).
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    match td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
        None => Ok(()),
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

/// The SPIFFE IDs a backend's endpoints may present: exact IDs and
/// `prefix*` forms (what a cluster's SAN matchers say over xDS). Its
/// equality is by content, so it can key connection pools: a connection
/// verified for one set of identities is never used for another.
///
/// ```
/// use proxyless_core::identity::{IdentityMatcher, SpiffeId};
/// let m = IdentityMatcher::new(["spiffe://td/api", "spiffe://td/ns/prod/*"]).unwrap();
/// assert!(m.matches(&"spiffe://td/api".parse::<SpiffeId>().unwrap()));
/// assert!(m.matches(&"spiffe://td/ns/prod/sa/web".parse::<SpiffeId>().unwrap()));
/// assert!(!m.matches(&"spiffe://td/ns/dev/sa/web".parse::<SpiffeId>().unwrap()));
/// // A prefix must pin the trust domain: `spiffe://td*` would admit `spiffe://td-evil`.
/// assert!(IdentityMatcher::new(["spiffe://td*"]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityMatcher {
    exact: Vec<SpiffeId>,
    prefixes: Vec<Arc<str>>,
}

/// Why a pattern cannot name server identities.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityPatternError {
    /// An exact pattern that is not a SPIFFE ID.
    #[error("`{pattern}` is not a SPIFFE ID: {source}")]
    Id {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: SpiffeIdError,
    },
    /// A prefix that does not fix the trust domain.
    #[error(
        "prefix `{0}` must start with `spiffe://<trust-domain>/` so that it cannot match another trust domain"
    )]
    Prefix(String),
    /// No pattern at all.
    #[error("no identity to accept")]
    Empty,
}

impl IdentityMatcher {
    /// Accepts exactly `id`.
    pub fn exact(id: SpiffeId) -> Self {
        Self {
            exact: vec![id],
            prefixes: Vec::new(),
        }
    }

    /// Accepts what any of `patterns` names: a SPIFFE ID exactly, or a
    /// prefix ending in `*` that includes the trust domain and the `/`
    /// after it. Order and duplicates do not matter.
    pub fn new<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, IdentityPatternError> {
        let mut exact = Vec::new();
        let mut prefixes: Vec<Arc<str>> = Vec::new();
        for p in patterns {
            match p.strip_suffix('*') {
                Some(prefix) => {
                    let td = prefix
                        .strip_prefix("spiffe://")
                        .and_then(|rest| rest.split_once('/'))
                        .map(|(td, _)| td);
                    match td {
                        Some(td) if validate_trust_domain(td).is_ok() => {
                            prefixes.push(Arc::from(prefix));
                        }
                        _ => return Err(IdentityPatternError::Prefix(p.to_owned())),
                    }
                }
                None => {
                    exact.push(SpiffeId::new(p).map_err(|source| IdentityPatternError::Id {
                        pattern: p.to_owned(),
                        source,
                    })?)
                }
            }
        }
        if exact.is_empty() && prefixes.is_empty() {
            return Err(IdentityPatternError::Empty);
        }
        exact.sort();
        exact.dedup();
        prefixes.sort();
        prefixes.dedup();
        Ok(Self { exact, prefixes })
    }

    /// Whether a server presenting `id` is accepted.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        self.exact.iter().any(|e| e == id)
            || self.prefixes.iter().any(|p| id.as_str().starts_with(&**p))
    }

    /// The exact IDs accepted.
    pub fn exact_ids(&self) -> &[SpiffeId] {
        &self.exact
    }

    /// The prefixes accepted (without the `*`).
    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.prefixes.iter().map(|p| &**p)
    }
}

impl FromStr for IdentityMatcher {
    type Err = IdentityPatternError;
    /// One pattern: a SPIFFE ID, or a `prefix*` that includes the trust domain.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new([s])
    }
}

impl fmt::Display for IdentityMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for e in &self.exact {
            write!(f, "{sep}{e}")?;
            sep = " or ";
        }
        for p in &self.prefixes {
            write!(f, "{sep}{p}*")?;
            sep = " or ";
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for s in [
            "spiffe://demo.local",
            "spiffe://demo.local/ns/default/sa/reviews",
            "spiffe://example-1.org_x/a.b/c-d/E_F",
        ] {
            let id = SpiffeId::new(s).unwrap();
            assert_eq!(id.as_str(), s);
        }
        let id = SpiffeId::new("spiffe://td/a/b").unwrap();
        assert_eq!((id.trust_domain(), id.path()), ("td", "/a/b"));
    }

    #[test]
    fn rejects_malformed_ids() {
        let cases = [
            ("http://demo.local/x", SpiffeIdError::Scheme),
            ("spiffe:///x", SpiffeIdError::EmptyTrustDomain),
            ("spiffe://Demo/x", SpiffeIdError::TrustDomainChar('D')),
            ("spiffe://demo:8080/x", SpiffeIdError::TrustDomainChar(':')),
            ("spiffe://user@demo/x", SpiffeIdError::TrustDomainChar('@')),
            ("spiffe://demo/a//b", SpiffeIdError::EmptySegment),
            ("spiffe://demo/a/", SpiffeIdError::EmptySegment),
            ("spiffe://demo/a/../b", SpiffeIdError::DotSegment),
            ("spiffe://demo/a?x=1", SpiffeIdError::PathChar('?')),
            ("spiffe://demo/a#f", SpiffeIdError::PathChar('#')),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::new(s), Err(want), "{s}");
        }
        let long = format!("spiffe://demo/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::new(&long), Err(SpiffeIdError::TooLong));
    }
}

#[cfg(feature = "tls")]
pub mod provider;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "spiffe")]
pub mod workload_api;
#[cfg(feature = "tls")]
pub mod x509;
