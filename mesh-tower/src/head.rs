//! A request's head kept for the attempts after the first (retries and
//! hedges), in one allocation.
//!
//! The first attempt sends the request itself, so a retry needs a copy of
//! its method, URI, version, headers and extensions. Cloning the
//! `http` parts costs the header map's two allocations, and one more for
//! each header value and URI made from text (a `Bytes` of its own, turned
//! into a shared one by its first clone), and as many frees when the copy
//! goes. Most copies go unused: retries are rare. So the URI and the
//! headers are written as bytes into one buffer, and read back into a
//! request only when an attempt is sent again.
//!
//! The buffer holds the URI's text, then for each header value its name's
//! length and its value's length (four bytes each, little-endian), a
//! sensitivity byte, the name and the value.

use crate::BoxError;
use http::header::{HeaderName, HeaderValue};
use http::{Extensions, HeaderMap, Method, Request, Uri, Version};

/// The head of a request, as a retry sends it again.
#[derive(Debug)]
pub(crate) struct Head {
    method: Method,
    version: Version,
    /// The URI's text, then the headers.
    bytes: Box<[u8]>,
    uri_len: usize,
    /// How many header names the request had (a capacity for the map).
    names: usize,
    /// The caller's extensions, when it set any (the mesh's own decision
    /// travels in the body).
    extensions: Option<Extensions>,
}

/// Bytes a header takes besides its name and value.
const FRAME: usize = 4 + 4 + 1;

impl Head {
    /// The head of `req`, copied.
    pub(crate) fn of<B>(req: &Request<B>) -> Self {
        let uri = req.uri();
        let scheme = uri.scheme_str();
        let authority = uri.authority().map(http::uri::Authority::as_str);
        let path = uri.path_and_query().map(http::uri::PathAndQuery::as_str);
        let uri_len = scheme.map_or(0, |s| s.len() + 3)
            + authority.map_or(0, str::len)
            + path.map_or(0, str::len);
        let headers = req.headers();
        let len = headers.iter().fold(uri_len, |n, (k, v)| {
            n.saturating_add(FRAME + k.as_str().len() + v.len())
        });
        let mut bytes = Vec::with_capacity(len);
        if let Some(s) = scheme {
            bytes.extend_from_slice(s.as_bytes());
            bytes.extend_from_slice(b"://");
        }
        bytes.extend_from_slice(authority.unwrap_or("").as_bytes());
        bytes.extend_from_slice(path.unwrap_or("").as_bytes());
        for (name, value) in headers {
            let name = name.as_str().as_bytes();
            // Names and values are far below 4 GiB (hyper refuses heads
            // of more than a few hundred KiB); saturate all the same.
            let mut frame = [0u8; FRAME];
            let name_len = u32::try_from(name.len()).unwrap_or(u32::MAX);
            let value_len = u32::try_from(value.len()).unwrap_or(u32::MAX);
            frame[..4].copy_from_slice(&name_len.to_le_bytes());
            frame[4..8].copy_from_slice(&value_len.to_le_bytes());
            frame[8] = u8::from(value.is_sensitive());
            bytes.extend_from_slice(&frame);
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value.as_bytes());
        }
        Self {
            method: req.method().clone(),
            version: req.version(),
            bytes: bytes.into_boxed_slice(),
            uri_len,
            names: headers.keys_len(),
            extensions: (!req.extensions().is_empty()).then(|| req.extensions().clone()),
        }
    }

    /// A request with this head and `body`.
    pub(crate) fn request<B>(&self, body: B) -> Result<Request<B>, BoxError> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.version_mut() = self.version;
        let (uri, mut rest) = self
            .bytes
            .split_at_checked(self.uri_len)
            .ok_or(Damaged("uri"))?;
        if !uri.is_empty() {
            *req.uri_mut() = Uri::try_from(uri)?;
        }
        // Never a panic: a capacity the map refuses starts it empty.
        let mut headers = HeaderMap::try_with_capacity(self.names).unwrap_or_default();
        while !rest.is_empty() {
            let (frame, after) = rest.split_at_checked(FRAME).ok_or(Damaged("frame"))?;
            let len = |at: usize| -> Result<usize, BoxError> {
                let four: [u8; 4] = frame
                    .get(at..at + 4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(Damaged("length"))?;
                Ok(usize::try_from(u32::from_le_bytes(four))?)
            };
            let (name_len, value_len) = (len(0)?, len(4)?);
            let sensitive = frame.get(8).is_some_and(|b| *b != 0);
            let (name, after) = after.split_at_checked(name_len).ok_or(Damaged("name"))?;
            let (value, after) = after.split_at_checked(value_len).ok_or(Damaged("value"))?;
            let mut value = HeaderValue::from_bytes(value)?;
            value.set_sensitive(sensitive);
            headers.try_append(HeaderName::from_bytes(name)?, value)?;
            rest = after;
        }
        *req.headers_mut() = headers;
        if let Some(e) = &self.extensions {
            *req.extensions_mut() = e.clone();
        }
        Ok(req)
    }
}

/// A kept head that does not read back (a bug in [`Head::of`], never the
/// request's doing).
#[derive(Debug, thiserror::Error)]
#[error("internal: the request head kept for a retry is damaged at its {0}")]
struct Damaged(&'static str);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Head;
    use http::{HeaderValue, Method, Request, Version};

    fn same<B>(a: &Request<B>, b: &Request<B>) {
        assert_eq!(a.method(), b.method());
        assert_eq!(a.uri(), b.uri());
        assert_eq!(a.uri().to_string(), b.uri().to_string());
        assert_eq!(a.version(), b.version());
        assert_eq!(a.headers(), b.headers());
        for ((ka, va), (kb, vb)) in a.headers().iter().zip(b.headers()) {
            assert_eq!((ka, va.is_sensitive()), (kb, vb.is_sensitive()));
        }
    }

    #[test]
    fn a_kept_head_reads_back_as_the_request_it_was() {
        let uris = [
            "http://api/ratings/1?x=1&y=%20",
            "https://user@[::1]:8443/",
            "http://api",
            "/origin/form?q",
            "*",
            "api.example:443",
        ];
        for uri in uris {
            let mut token = HeaderValue::from_static("secret");
            token.set_sensitive(true);
            let req = Request::builder()
                .method(Method::from_bytes(b"PURGE").unwrap())
                .uri(uri)
                .version(Version::HTTP_2)
                .header("accept", "*/*")
                .header("x-multi", "one")
                .header("x-multi", "two")
                .header("authorization", token)
                .header("x-binary", HeaderValue::from_bytes(b"\xfa\xce").unwrap())
                .header("x-empty", "")
                .body(())
                .unwrap();
            let head = Head::of(&req);
            let again = head.request(()).unwrap();
            same(&req, &again);
            assert!(again.extensions().is_empty());
            // A second attempt reads the same head again.
            same(&req, &head.request(()).unwrap());
        }
    }

    #[test]
    fn the_callers_extensions_are_kept_and_none_is_made_for_a_request_without() {
        #[derive(Clone, Debug, PartialEq)]
        struct Tenant(u32);
        let mut req = Request::get("http://api/").body(()).unwrap();
        assert!(Head::of(&req).extensions.is_none());
        req.extensions_mut().insert(Tenant(7));
        let again = Head::of(&req).request(()).unwrap();
        assert_eq!(again.extensions().get::<Tenant>(), Some(&Tenant(7)));
    }

    /// One name may carry more values than a header map has room for
    /// names: the copy is made and read back without a panic.
    #[test]
    fn a_head_with_forty_thousand_values_of_one_name_reads_back() {
        let mut req = Request::get("http://api/").body(()).unwrap();
        for i in 0..40_000u32 {
            req.headers_mut().append("x-many", HeaderValue::from(i));
        }
        let again = Head::of(&req).request(()).unwrap();
        same(&req, &again);
    }

    #[test]
    fn a_request_without_headers_keeps_only_its_uri() {
        let req = Request::get("http://api/x").body(()).unwrap();
        let head = Head::of(&req);
        assert_eq!(&*head.bytes, b"http://api/x");
        same(&req, &head.request(()).unwrap());
    }
}
