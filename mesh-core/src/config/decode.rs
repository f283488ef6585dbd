//! Decoding the typed model from a [`Node`] tree, collecting every problem.
//!
//! Each `Decode` impl reads one model type. Fields are all decoded before any
//! is combined, so a problem in one field never hides a problem in the next;
//! unknown fields are reported with the closest known name.

use super::duration::parse_duration;
use super::error::{Problem, ProblemKind, suggestion};
use super::model::*;
use super::node::{Key, Node, Value};
use crate::identity::SpiffeId;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Problems found so far, and the line of every field path seen (for the
/// semantic checks that run after decoding).
#[derive(Debug, Default)]
pub(crate) struct Cx {
    pub(crate) problems: Vec<Problem>,
    pub(crate) lines: HashMap<String, u32>,
}

impl Cx {
    pub(crate) fn problem(
        &mut self,
        kind: ProblemKind,
        path: &str,
        line: Option<u32>,
        msg: impl Into<String>,
    ) {
        self.problems.push(Problem::new(kind, path, line, msg));
    }

    fn decode<T: Decode>(&mut self, n: &Node, path: &str) -> Option<T> {
        if let Some(line) = n.line() {
            self.lines.insert(path.to_owned(), line);
        }
        T::decode(n, path, self)
    }

    /// Decodes `n` as a `T` found at `path`.
    #[cfg(feature = "xds")]
    pub(crate) fn decode_at<T: Decode>(&mut self, n: &Node, path: &str) -> Option<T> {
        self.decode(n, path)
    }

    fn invalid(&mut self, n: &Node, path: &str, expected: &str) {
        let msg = format!("expected {expected}, found {}", n.kind());
        self.problem(ProblemKind::InvalidValue, path, n.line(), msg);
    }
}

pub(crate) trait Decode: Sized {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self>;

    /// What stands in a list for an element that could not be decoded, so
    /// that the indexes (and paths) of the others stay true.
    fn fallback() -> Option<Self> {
        None
    }
}

pub(crate) fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The fields of a mapping that is being decoded into a struct.
pub(crate) struct Fields<'a, 'p> {
    entries: &'a [(Key, Node)],
    path: &'p str,
    line: Option<u32>,
}

impl<'a, 'p> Fields<'a, 'p> {
    /// Checks that `n` is a mapping whose keys are all in `known`; reports
    /// the rest (with a suggestion) and duplicates.
    pub(crate) fn of(n: &'a Node, path: &'p str, cx: &mut Cx, known: &[&str]) -> Option<Self> {
        let Value::Map(entries) = &n.value else {
            cx.invalid(n, path, "a mapping");
            return None;
        };
        for (i, (k, _)) in entries.iter().enumerate() {
            let at = child(path, &k.name);
            let line = (k.line > 0).then_some(k.line);
            if !known.contains(&k.name.as_str()) {
                let msg = format!(
                    "unknown field `{}`{}",
                    k.name,
                    suggestion(&k.name, known.iter().copied())
                );
                cx.problem(ProblemKind::UnknownField, &at, line, msg);
            } else if entries[..i].iter().any(|(p, _)| p.name == k.name) {
                cx.problem(ProblemKind::InvalidValue, &at, line, "given more than once");
            }
        }
        Some(Self {
            entries,
            path,
            line: n.line(),
        })
    }

    /// The value of `key`; a null value counts as absent.
    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, v)| k.name == key && v.value != Value::Null)
            .map(|(_, v)| v)
    }

    /// Decodes `key`'s value, remembering the key's line for the path.
    fn decode<T: Decode>(&self, key: &str, n: &Node, cx: &mut Cx) -> Option<T> {
        let at = child(self.path, key);
        let out = cx.decode(n, &at);
        if let Some((k, _)) = self
            .entries
            .iter()
            .find(|(k, _)| k.name == key && k.line > 0)
        {
            cx.lines.insert(at, k.line);
        }
        out
    }

    /// A required field; when absent or invalid the problem is recorded and
    /// a default stands in, so decoding goes on.
    fn req<T: Decode + Default>(&self, key: &str, cx: &mut Cx) -> T {
        self.req_opt(key, cx).unwrap_or_default()
    }

    /// A required field; `None` (and the problem recorded) when absent or
    /// invalid.
    pub(crate) fn req_opt<T: Decode>(&self, key: &str, cx: &mut Cx) -> Option<T> {
        match self.get(key) {
            Some(n) => self.decode(key, n, cx),
            None => {
                let at = child(self.path, key);
                let msg = format!("missing required field `{key}`");
                cx.problem(ProblemKind::MissingField, &at, self.line, msg);
                None
            }
        }
    }

    /// An optional field; `None` when absent or invalid (the problem is
    /// recorded).
    pub(crate) fn opt<T: Decode>(&self, key: &str, cx: &mut Cx) -> Option<T> {
        self.get(key).and_then(|n| self.decode(key, n, cx))
    }

    /// An optional field with a default.
    fn or<T: Decode>(&self, key: &str, default: T, cx: &mut Cx) -> T {
        self.opt(key, cx).unwrap_or(default)
    }
}

impl Decode for String {
    fn fallback() -> Option<Self> {
        Some(Self::default())
    }

    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        match &n.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                cx.invalid(n, path, "a string");
                None
            }
        }
    }
}

impl Decode for super::Name {
    fn fallback() -> Option<Self> {
        Some(Self::default())
    }

    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        match &n.value {
            Value::Str(s) => Some(Self::new(s)),
            _ => {
                cx.invalid(n, path, "a string");
                None
            }
        }
    }
}

impl Decode for bool {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        match n.value {
            Value::Bool(b) => Some(b),
            _ => {
                cx.invalid(n, path, "true or false");
                None
            }
        }
    }
}

macro_rules! decode_int {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
                match n.value {
                    Value::Int(i) => match <$t>::try_from(i) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            let msg = format!(
                                "{i} is out of range ({}..={})", <$t>::MIN, <$t>::MAX
                            );
                            cx.problem(ProblemKind::OutOfRange, path, n.line(), msg);
                            None
                        }
                    },
                    _ => {
                        cx.invalid(n, path, "a whole number");
                        None
                    }
                }
            }
        }
    )*};
}
decode_int!(u16, u32, u64);

impl Decode for f64 {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        match n.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) if f.is_finite() => Some(f),
            _ => {
                cx.invalid(n, path, "a number");
                None
            }
        }
    }
}

impl Decode for Duration {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        match &n.value {
            Value::Str(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    cx.problem(ProblemKind::InvalidDuration, path, n.line(), e.to_string());
                    None
                }
            },
            Value::Int(0) => Some(Duration::ZERO),
            Value::Int(i) => {
                let msg = format!("`{i}` has no unit; write it with one, e.g. `{i}ms` or `{i}s`");
                cx.problem(ProblemKind::InvalidDuration, path, n.line(), msg);
                None
            }
            _ => {
                cx.invalid(n, path, "a duration such as `250ms` or `2s`");
                None
            }
        }
    }
}

impl Decode for SpiffeId {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let s: String = String::decode(n, path, cx)?;
        match SpiffeId::new(&s) {
            Ok(id) => Some(id),
            Err(e) => {
                let msg = format!("`{s}` is not a SPIFFE ID: {e}");
                cx.problem(ProblemKind::InvalidSpiffeId, path, n.line(), msg);
                None
            }
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let Value::Seq(items) = &n.value else {
            cx.invalid(n, path, "a list");
            return None;
        };
        let decoded: Vec<Option<T>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| cx.decode(item, &index(path, i)))
            .collect();
        decoded
            .into_iter()
            .map(|item| item.or_else(T::fallback))
            .collect()
    }
}

impl<T: Decode> Decode for super::Shared<T> {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        T::decode(n, path, cx).map(Self::new)
    }

    fn fallback() -> Option<Self> {
        T::fallback().map(Self::new)
    }
}

impl<T: Decode> Decode for Box<T> {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        T::decode(n, path, cx).map(Box::new)
    }

    fn fallback() -> Option<Self> {
        T::fallback().map(Box::new)
    }
}

impl<T: Decode> Decode for BTreeMap<String, T> {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let Value::Map(entries) = &n.value else {
            cx.invalid(n, path, "a mapping");
            return None;
        };
        let mut out = Some(BTreeMap::new());
        for (k, v) in entries {
            let value = cx.decode::<T>(v, &child(path, &k.name));
            match (&mut out, value) {
                (Some(map), Some(value)) => {
                    map.insert(k.name.clone(), value);
                }
                _ => out = None,
            }
        }
        out
    }
}

/// A list, or a single item standing for a list of one.
pub(crate) struct OneOrMany<T>(Vec<T>);

impl<T> From<OneOrMany<T>> for Vec<T> {
    fn from(l: OneOrMany<T>) -> Self {
        l.0
    }
}

impl<T: Decode> Decode for OneOrMany<T> {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        match n.value {
            Value::Seq(_) => Vec::decode(n, path, cx).map(OneOrMany),
            _ => T::decode(n, path, cx).map(|v| OneOrMany(vec![v])),
        }
    }
}

/// Reads a string naming one of `names`.
pub(crate) fn keyword<T: Copy>(
    n: &Node,
    path: &str,
    cx: &mut Cx,
    names: &[(&str, T)],
) -> Option<T> {
    let s = String::decode(n, path, cx)?;
    if let Some((_, v)) = names.iter().find(|(name, _)| *name == s) {
        return Some(*v);
    }
    let all: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
    let msg = format!(
        "`{s}` is not one of {}{}",
        all.join(", "),
        suggestion(&s, all.iter().copied())
    );
    cx.problem(ProblemKind::InvalidValue, path, n.line(), msg);
    None
}

/// Reads a mapping with exactly one key out of `kinds`, returning the key and
/// its value node.
fn one_of<'a>(n: &'a Node, path: &str, cx: &mut Cx, kinds: &[&str]) -> Option<(&'a str, &'a Node)> {
    let f = Fields::of(n, path, cx, kinds)?;
    let given: Vec<&(Key, Node)> = f
        .entries
        .iter()
        .filter(|(k, _)| kinds.contains(&k.name.as_str()))
        .collect();
    match given.as_slice() {
        [(k, v)] => Some((k.name.as_str(), v)),
        [] => {
            let msg = format!("give one of {}", kinds.join(", "));
            cx.problem(ProblemKind::MissingField, path, n.line(), msg);
            None
        }
        _ => {
            let msg = format!("give only one of {}", kinds.join(", "));
            cx.problem(ProblemKind::InvalidValue, path, n.line(), msg);
            None
        }
    }
}

impl Decode for PathNormalization {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let f = Fields::of(
            n,
            path,
            cx,
            &["merge_slashes", "escaped_slashes", "semicolons"],
        )?;
        let d = PathNormalization::default();
        let merge_slashes = f.or("merge_slashes", d.merge_slashes, cx);
        let escaped_slashes = f.or("escaped_slashes", d.escaped_slashes, cx);
        let semicolons = f.or("semicolons", d.semicolons, cx);
        Some(PathNormalization {
            merge_slashes,
            escaped_slashes,
            semicolons,
        })
    }
}

impl Decode for EscapedSlashes {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        keyword(
            n,
            path,
            cx,
            &[
                ("keep", Self::Keep),
                ("reject", Self::Reject),
                ("redirect", Self::Redirect),
                ("decode", Self::Decode),
            ],
        )
    }
}

impl Decode for Semicolons {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        keyword(
            n,
            path,
            cx,
            &[("reject", Self::Reject), ("keep", Self::Keep)],
        )
    }
}

impl Decode for PathMatch {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let (kind, v) = one_of(n, path, cx, &["exact", "prefix", "regex"])?;
        let s = cx.decode::<String>(v, &child(path, kind))?;
        Some(match kind {
            "exact" => Self::Exact(s),
            "prefix" => Self::Prefix(s),
            _ => Self::Regex(s),
        })
    }
}

impl Decode for StringMatch {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        if let Value::Str(s) = &n.value {
            // `x-user: tester` is shorthand for `x-user: { exact: tester }`.
            return Some(Self::Exact(s.clone()));
        }
        let (kind, v) = one_of(n, path, cx, &["exact", "prefix", "regex", "present"])?;
        let at = child(path, kind);
        Some(match kind {
            "present" => Self::Present(cx.decode(v, &at)?),
            "exact" => Self::Exact(cx.decode(v, &at)?),
            "prefix" => Self::Prefix(cx.decode(v, &at)?),
            _ => Self::Regex(cx.decode(v, &at)?),
        })
    }
}

/// `on: [5xx, reset]` or Envoy's `on: "5xx,reset"`.
pub(crate) struct RetryOnList(Vec<RetryOn>);

impl From<RetryOnList> for Vec<RetryOn> {
    fn from(l: RetryOnList) -> Self {
        l.0
    }
}

impl Decode for RetryOnList {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        match &n.value {
            Value::Str(s) if s.contains(',') => {
                let parts: Vec<Node> = s
                    .split(',')
                    .map(|p| Node {
                        value: Value::Str(p.trim().to_owned()),
                        line: n.line,
                    })
                    .collect();
                let seq = Node {
                    value: Value::Seq(parts),
                    line: n.line,
                };
                Vec::decode(&seq, path, cx).map(RetryOnList)
            }
            _ => OneOrMany::decode(n, path, cx).map(|l| RetryOnList(l.0)),
        }
    }
}

impl Decode for RetryOn {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        keyword(n, path, cx, &RetryOn::ALL)
    }
}

impl Decode for Backoff {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let f = Fields::of(n, path, cx, &["base", "max"])?;
        let d = Backoff::default();
        let base = f.or("base", d.base, cx);
        let max = f.opt::<Duration>("max", cx);
        Some(Backoff {
            base,
            // Envoy's rule: the cap defaults to ten times the base.
            max: max.unwrap_or(base.saturating_mul(10)),
        })
    }
}

impl Decode for Endpoint {
    fn fallback() -> Option<Self> {
        Some(Endpoint::new(""))
    }

    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        if let Value::Str(s) = &n.value {
            return Some(Endpoint::new(s.clone()));
        }
        let keys = ["address", "weight", "locality", "priority", "healthy"];
        let f = Fields::of(n, path, cx, &keys)?;
        Some(Endpoint {
            address: f.req("address", cx),
            weight: f.or("weight", 1u32, cx),
            locality: f.opt("locality", cx),
            priority: f.or("priority", 0u32, cx),
            healthy: f.or("healthy", true, cx),
        })
    }
}

impl Decode for RateLimit {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let keys = [
            "max_tokens",
            "tokens_per_fill",
            "fill_interval",
            "per",
            "max_keys",
        ];
        let f = Fields::of(n, path, cx, &keys)?;
        let max_tokens: u32 = f.req("max_tokens", cx);
        Some(RateLimit {
            max_tokens,
            tokens_per_fill: f.or("tokens_per_fill", max_tokens, cx),
            fill_interval: f.or("fill_interval", std::time::Duration::from_secs(1), cx),
            per: f.opt("per", cx),
            max_keys: f.or("max_keys", DEFAULT_RATE_LIMIT_KEYS, cx),
        })
    }
}

impl Decode for HedgeDelay {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let s: String = String::decode(n, path, cx)?;
        if let Some(p) = s.strip_prefix('p') {
            return match p.parse::<f64>() {
                Ok(p) if p.is_finite() => Some(HedgeDelay::Percentile(p)),
                _ => {
                    let msg = format!("`{s}` is neither a duration nor a percentile (`p95`)");
                    cx.problem(ProblemKind::InvalidValue, path, n.line(), msg);
                    None
                }
            };
        }
        match parse_duration(&s) {
            Ok(d) => Some(HedgeDelay::Fixed(d)),
            Err(e) => {
                let msg = format!("`{s}` is neither a duration nor a percentile (`p95`): {e}");
                cx.problem(ProblemKind::InvalidDuration, path, n.line(), msg);
                None
            }
        }
    }
}

impl Decode for RateLimitKey {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        if let Value::Map(_) = &n.value {
            let (_, v) = one_of(n, path, cx, &["header"])?;
            let name: String = String::decode(v, &child(path, "header"), cx)?;
            return Some(RateLimitKey::Header(name));
        }
        #[derive(Clone, Copy)]
        enum K {
            Caller,
            Path,
        }
        match keyword(n, path, cx, &[("caller", K::Caller), ("path", K::Path)])? {
            K::Caller => Some(RateLimitKey::Caller),
            K::Path => Some(RateLimitKey::Path),
        }
    }
}

impl Decode for Locality {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        let s: String = String::decode(n, path, cx)?;
        match s.parse() {
            Ok(l) => Some(l),
            Err(e) => {
                cx.problem(ProblemKind::InvalidValue, path, n.line(), e.to_string());
                None
            }
        }
    }
}

impl Decode for LoadBalancer {
    fn decode(n: &Node, path: &str, cx: &mut Cx) -> Option<Self> {
        #[derive(Clone, Copy)]
        enum K {
            P2c,
            Rr,
            Random,
            Ring,
            Maglev,
        }
        let names = [
            ("p2c_ewma", K::P2c),
            ("round_robin", K::Rr),
            ("random", K::Random),
            ("ring_hash", K::Ring),
            ("maglev", K::Maglev),
        ];
        let (kind, args) = match &n.value {
            Value::Map(_) => {
                let (k, v) = one_of(n, path, cx, &["ring_hash", "maglev"])?;
                let kind = if k == "ring_hash" { K::Ring } else { K::Maglev };
                (kind, Some((k, v)))
            }
            _ => (keyword(n, path, cx, &names)?, None),
        };
        let header = |cx: &mut Cx| -> Option<String> {
            let Some((k, v)) = args else {
                let msg = "a consistent-hash balancer needs a key: write `{ ring_hash: { header: NAME } }` (or maglev)";
                cx.problem(ProblemKind::MissingField, path, n.line(), msg);
                return None;
            };
            let at = child(path, k);
            let f = Fields::of(v, &at, cx, &["header"])?;
            Some(f.req("header", cx))
        };
        Some(match kind {
            K::P2c => Self::P2cEwma,
            K::Rr => Self::RoundRobin,
            K::Random => Self::Random,
            K::Ring => Self::RingHash {
                header: header(cx)?,
            },
            K::Maglev => Self::Maglev {
                header: header(cx)?,
            },
        })
    }
}

/// `to: [reviews-v1]`: a backend's name alone, weight 1.
pub(crate) fn backend_name(n: &Node) -> Option<WeightedBackend> {
    match &n.value {
        Value::Str(s) => Some(WeightedBackend {
            backend: s.into(),
            weight: 1,
        }),
        _ => None,
    }
}

/// Decodes a whole config tree.
pub(crate) fn decode_config(root: &Node, cx: &mut Cx) -> Option<Config> {
    cx.decode(root, "")
}
