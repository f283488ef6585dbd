//! What the mesh cannot take from a control plane, and where: the detail
//! the client sends back in a NACK, and what it logs.

use std::fmt;

/// A resource (or part of one) the mesh cannot honour: which resource,
/// the field path inside it, and why.
///
/// ```
/// use proxyless_core::xds::XdsError;
/// let e = XdsError::new("only route actions are supported")
///     .at("routes[2].action")
///     .at("virtual_hosts[0]")
///     .in_resource("RouteConfiguration", "reviews");
/// assert_eq!(e.path(), "virtual_hosts[0].routes[2].action");
/// assert_eq!(
///     e.to_string(),
///     "RouteConfiguration `reviews`: virtual_hosts[0].routes[2].action: only route actions are supported"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdsError {
    resource: String,
    path: String,
    message: String,
}

impl XdsError {
    /// An error with no location yet.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            resource: String::new(),
            path: String::new(),
            message: message.into(),
        }
    }

    /// The same error one level out: `segment` goes before the path so far.
    #[must_use]
    pub fn at(mut self, segment: impl fmt::Display) -> Self {
        let segment = segment.to_string();
        self.path = match (segment.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => segment,
            (false, false) if self.path.starts_with('[') => format!("{segment}{}", self.path),
            (false, false) => format!("{segment}.{}", self.path),
        };
        self
    }

    /// Names the resource (`kind` `name`), if none is named yet.
    #[must_use]
    pub fn in_resource(mut self, kind: &str, name: &str) -> Self {
        if self.resource.is_empty() {
            self.resource = format!("{kind} `{name}`");
        }
        self
    }

    /// The resource, as `Kind `name``, or empty.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The field path inside the resource, or empty.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for XdsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.resource, &self.path] {
            if !part.is_empty() {
                write!(f, "{part}: ")?;
            }
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for XdsError {}

/// Shorthand for a located error.
pub(crate) fn at(path: impl fmt::Display, message: impl Into<String>) -> XdsError {
    XdsError::new(message).at(path)
}
