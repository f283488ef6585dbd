//! Path normalization applied to a request: the route layer (outbound) and
//! the server (inbound) bring the path to its normal form before matching
//! or authorizing, and send on the normalized form, so that what was
//! matched or authorized is what is served. See [`proxyless_core::path`].

use crate::error::InvalidPath;
use http::Request;
use http::uri::{PathAndQuery, Uri};
use proxyless_core::path::{Normalized, PathNormalization, normalize};
use std::borrow::Cow;

/// What became of a request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathAction {
    /// The request now carries the normalized path.
    Continue,
    /// The request should be answered with a redirect to this path and
    /// query (an escaped slash under `escaped_slashes: redirect`).
    Redirect(String),
}

/// Normalizes `req`'s path in place as `how` says.
pub fn normalize_request<B>(
    req: &mut Request<B>,
    how: &PathNormalization,
) -> Result<PathAction, InvalidPath> {
    let (path, redirect) = match normalize(req.uri().path(), how) {
        Ok(Normalized::Path(Cow::Borrowed(_))) => return Ok(PathAction::Continue),
        Ok(Normalized::Path(Cow::Owned(p))) => (p, false),
        Ok(Normalized::Redirect(p)) => (p, true),
        Err(source) => return Err(InvalidPath { source }),
    };
    let with_query = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if redirect {
        return Ok(PathAction::Redirect(with_query));
    }
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    // The normalized path holds only characters the input's URI already
    // allowed, so this parse cannot fail; if it did, refuse rather than
    // send what was not normalized.
    let pq = PathAndQuery::from_maybe_shared(with_query).map_err(|_| InvalidPath {
        source: proxyless_core::path::PathError::BadEscape,
    })?;
    parts.path_and_query = Some(pq);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| InvalidPath {
        source: proxyless_core::path::PathError::BadEscape,
    })?;
    Ok(PathAction::Continue)
}
