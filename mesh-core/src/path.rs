//! Path normalization: the one form of a request path that authorization
//! and route matching judge, and that the application is then given.
//!
//! A policy that matches the raw path is bypassed by any spelling a server
//! later reads as the same resource: `//admin`, `/./admin`,
//! `/ratings/../admin`, `/%61dmin`, `/admin;x`. Like Envoy's
//! `normalize_path` with Istio's path-normalization settings, the path is
//! brought to one canonical form first (the query is left alone):
//!
//! 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are
//!    decoded, other escapes have their hex digits upper-cased, and a `%`
//!    that does not start a valid escape is refused;
//! 2. an escaped slash (`%2F`, `%5C`) is kept, refused, decoded, or
//!    decoded and answered with a redirect, as [`EscapedSlashes`] says;
//! 3. a backslash is read as a slash (as browsers and Envoy do);
//! 4. `;` (path parameters, which some servers strip) is refused or kept,
//!    as [`Semicolons`] says;
//! 5. runs of slashes are merged when `merge_slashes` is on;
//! 6. `.` and `..` segments are removed (RFC 3986, section 5.2.4); `..`
//!    never climbs above the root.
//!
//! Normalizing twice gives the same result as once.
//!
//! ```
//! use proxyless_core::path::{normalize, Normalized, PathNormalization};
//! let n = PathNormalization::default();
//! let path = |p| match normalize(p, &n).unwrap() {
//!     Normalized::Path(p) => p.into_owned(),
//!     Normalized::Redirect(p) => panic!("redirect to {p}"),
//! };
//! assert_eq!(path("/ratings/../admin"), "/admin");
//! assert_eq!(path("//admin"), "/admin");
//! assert_eq!(path("/%61dmin"), "/admin");
//! assert_eq!(path("/a/./b/"), "/a/b/");
//! assert!(normalize("/admin;x", &n).is_err());
//! assert!(normalize("/admin%2Fx", &n).is_err());
//! ```

use serde::Serialize;
use std::borrow::Cow;

/// How request paths are normalized (`defaults.path_normalization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PathNormalization {
    /// Merge runs of slashes into one (`//a///b` -> `/a/b`). On by default:
    /// without it `//admin` is not `/admin` to a policy, but is to many
    /// servers (Istio's `MERGE_SLASHES`).
    pub merge_slashes: bool,
    /// What to do with `%2F` and `%5C`.
    pub escaped_slashes: EscapedSlashes,
    /// What to do with `;`.
    pub semicolons: Semicolons,
}

impl Default for PathNormalization {
    fn default() -> Self {
        Self {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            semicolons: Semicolons::Reject,
        }
    }
}

/// What to do with an escaped slash (`%2F`) or backslash (`%5C`) in a path
/// (Envoy's `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EscapedSlashes {
    /// Leave it escaped: it is part of a segment, not a separator. Safe
    /// only when no server behind decodes it into a separator.
    Keep,
    /// Refuse the request (400). The default: APIs that need `%2F` in a
    /// segment opt out with `keep`.
    #[default]
    Reject,
    /// Decode it to a separator and answer with a redirect (307) to the
    /// normalized path (inbound; outbound it is decoded and sent on).
    Redirect,
    /// Decode it to a separator and go on with the normalized path.
    Decode,
}

/// What to do with `;` in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Semicolons {
    /// Refuse the request (400). The default: servers that strip path
    /// parameters (`/admin;x` -> `/admin`) would serve what a policy on
    /// `/admin` never saw.
    #[default]
    Reject,
    /// Keep `;` as an ordinary character (Envoy's behaviour).
    Keep,
}

/// A normalized path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized<'a> {
    /// Use this path (borrowed when the input was already normal).
    Path(Cow<'a, str>),
    /// Answer with a redirect to this path (an escaped slash under
    /// [`EscapedSlashes::Redirect`]).
    Redirect(String),
}

impl<'a> Normalized<'a> {
    /// The path, whether to be used or redirected to.
    pub fn as_str(&self) -> &str {
        match self {
            Normalized::Path(p) => p,
            Normalized::Redirect(p) => p,
        }
    }
}

/// Why a path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// It does not start with `/` (and is not `*`).
    #[error("the path does not start with `/`")]
    NotAbsolute,
    /// A `%` that does not start a two-hex-digit escape.
    #[error("the path has a `%` that is not a valid percent-escape")]
    BadEscape,
    /// An escaped slash, refused by [`EscapedSlashes::Reject`].
    #[error("the path has an escaped slash (%2F or %5C)")]
    EscapedSlash,
    /// A `;`, refused by [`Semicolons::Reject`].
    #[error("the path has a `;` (path parameters are refused)")]
    Semicolon,
}

/// Normalizes `path` (without its query) as `how` says.
pub fn normalize<'a>(path: &'a str, how: &PathNormalization) -> Result<Normalized<'a>, PathError> {
    if path == "*" {
        return Ok(Normalized::Path(Cow::Borrowed(path)));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path, how) {
        return Ok(Normalized::Path(Cow::Borrowed(path)));
    }
    let mut decoded = String::with_capacity(path.len());
    let mut redirect = false;
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (hex(h), hex(l)),
                    _ => (None, None),
                };
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape);
                };
                let c = hi << 4 | lo;
                if is_unreserved(c) {
                    decoded.push(char::from(c));
                } else if c == b'/' || c == b'\\' {
                    match how.escaped_slashes {
                        EscapedSlashes::Keep => push_escape(&mut decoded, c),
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Redirect => {
                            redirect = true;
                            decoded.push('/');
                        }
                        EscapedSlashes::Decode => decoded.push('/'),
                    }
                } else {
                    push_escape(&mut decoded, c);
                }
                i += 3;
                continue;
            }
            b'\\' => decoded.push('/'),
            b';' if how.semicolons == Semicolons::Reject => return Err(PathError::Semicolon),
            _ => {
                // Copy the run up to the next byte that needs a look, so
                // multi-byte characters are copied whole.
                let end = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'%' | b'\\' | b';'))
                    .map_or(bytes.len(), |n| i + n);
                let end = if end == i { i + 1 } else { end };
                decoded.push_str(&path[i..end]);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    let normal = remove_dot_segments(&decoded, how.merge_slashes);
    Ok(if redirect {
        Normalized::Redirect(normal)
    } else if normal == path {
        Normalized::Path(Cow::Borrowed(path))
    } else {
        Normalized::Path(Cow::Owned(normal))
    })
}

/// Whether `path` is already normal: the common case, checked in one scan
/// without allocating.
fn is_normal(path: &str, how: &PathNormalization) -> bool {
    let mut prev = 0u8;
    for &b in path.as_bytes() {
        match b {
            b'%' | b'\\' => return false,
            b';' if how.semicolons == Semicolons::Reject => return false,
            b'/' if prev == b'/' && how.merge_slashes => return false,
            b'.' if prev == b'/' => return false,
            _ => {}
        }
        prev = b;
    }
    true
}

/// RFC 3986 5.2.4 over the segments of an absolute path, merging empty
/// segments when `merge` is on. A path that ended in a `.` or `..` segment,
/// or in `/`, keeps its trailing slash.
fn remove_dot_segments(path: &str, merge: bool) -> String {
    let mut out: Vec<&str> = Vec::new();
    // Skip the leading '/'.
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i == last;
        match *seg {
            "." => trailing = is_last,
            ".." => {
                out.pop();
                trailing = is_last;
            }
            "" if merge && !is_last => {}
            "" if is_last => trailing = true,
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if trailing || normal.is_empty() {
        normal.push('/');
    }
    normal
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn push_escape(out: &mut String, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(c >> 4)]));
    out.push(char::from(HEX[usize::from(c & 15)]));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn n(path: &str) -> Result<String, PathError> {
        normalize(path, &PathNormalization::default()).map(|p| p.as_str().to_owned())
    }

    #[test]
    fn every_spelling_of_admin_is_admin() {
        for raw in [
            "/admin",
            "//admin",
            "///admin",
            "/./admin",
            "/ratings/../admin",
            "/ratings/../../admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "/%2e/admin",
            "/ratings/%2E%2E/admin",
            "/x/.%2e/admin",
            "/\\admin",
            "/ratings\\..\\admin",
            "/a/b/../../admin",
        ] {
            assert_eq!(n(raw).unwrap(), "/admin", "{raw}");
        }
    }

    #[test]
    fn trailing_slashes_and_the_root() {
        let cases = [
            ("/", "/"),
            ("/a/", "/a/"),
            ("/a/.", "/a/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../..", "/"),
            ("/.", "/"),
            ("//", "/"),
            ("/a//", "/a/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a..b/c.", "/a..b/c."),
            ("/%7euser", "/~user"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/caf\u{e9}/%2e", "/caf\u{e9}/"),
            ("*", "*"),
        ];
        for (raw, want) in cases {
            assert_eq!(n(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn refusals() {
        assert_eq!(n("admin"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
        for bad in ["/%", "/%4", "/%zz", "/a%g0"] {
            assert_eq!(n(bad), Err(PathError::BadEscape), "{bad}");
        }
        assert_eq!(n("/x%2F..%2Fadmin"), Err(PathError::EscapedSlash));
        assert_eq!(n("/x%5cadmin"), Err(PathError::EscapedSlash));
        assert_eq!(n("/admin;x"), Err(PathError::Semicolon));
        assert_eq!(n("/admin%3Bx").unwrap(), "/admin%3Bx");
    }

    #[test]
    fn the_options() {
        let how = |merge, escaped, semicolons| PathNormalization {
            merge_slashes: merge,
            escaped_slashes: escaped,
            semicolons,
        };
        let keep = how(false, EscapedSlashes::Keep, Semicolons::Keep);
        let p = |path, h: &PathNormalization| normalize(path, h).unwrap();
        assert_eq!(p("//a//b", &keep).as_str(), "//a//b");
        assert_eq!(p("/a//../b", &keep).as_str(), "/a/b");
        assert_eq!(p("/x%2f..%2fadmin", &keep).as_str(), "/x%2F..%2Fadmin");
        assert_eq!(p("/admin;x", &keep).as_str(), "/admin;x");
        let decode = how(true, EscapedSlashes::Decode, Semicolons::Reject);
        assert_eq!(
            p("/x%2F..%2Fadmin", &decode),
            Normalized::Path(Cow::Owned("/admin".into()))
        );
        let redirect = how(true, EscapedSlashes::Redirect, Semicolons::Reject);
        assert_eq!(
            p("/x%2F..%2Fadmin", &redirect),
            Normalized::Redirect("/admin".into())
        );
        // Already normal: borrowed, no allocation.
        assert!(matches!(
            p("/ratings/1", &PathNormalization::default()),
            Normalized::Path(Cow::Borrowed(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn normalizing_is_idempotent_and_leaves_no_dot_segments(
            raw in "(/(\\.|\\.\\.|[a-c]|%2[eEfF]|%6[1-3]|%5[cC]|;|\\\\|)){0,8}/?"
        ) {
            for how in [
                PathNormalization::default(),
                PathNormalization { escaped_slashes: EscapedSlashes::Decode, semicolons: Semicolons::Keep, ..Default::default() },
                PathNormalization { merge_slashes: false, escaped_slashes: EscapedSlashes::Keep, semicolons: Semicolons::Keep },
            ] {
                let Ok(once) = normalize(&raw, &how) else { continue };
                let once = once.as_str().to_owned();
                let twice = normalize(&once, &how).unwrap();
                proptest::prop_assert_eq!(twice.as_str(), once.as_str(), "{} under {:?}", raw, how);
                proptest::prop_assert!(once.starts_with('/'));
                for seg in once.split('/') {
                    proptest::prop_assert!(seg != "." && seg != "..", "{} -> {}", raw, once);
                }
                if how.merge_slashes {
                    proptest::prop_assert!(!once.contains("//"), "{} -> {}", raw, once);
                }
            }
        }
    }
}
