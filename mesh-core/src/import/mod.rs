//! Other meshes' resources as this mesh's config: Istio's
//! `VirtualService`, `DestinationRule`, `ServiceEntry`,
//! `PeerAuthentication` and `AuthorizationPolicy`, and AWS App Mesh's
//! virtual services, routers, routes and nodes (the JSON of its `describe-*`
//! calls, or its Kubernetes resources).
//!
//! Every field is either carried over, carried over approximately (said,
//! with how), or reported as lost, by resource, field path, line and
//! reason: each document is read as a tree whose fields are marked as a
//! mapping reads them, and whatever no mapping read is reported. Nothing is
//! dropped silently. Authorization is carried over fail-closed: an allow
//! rule with a condition this mesh cannot express is dropped (it allows
//! less), a deny rule keeps its other conditions (it denies more), and
//! each is reported.
//!
//! ```
//! use proxyless_core::import::{import, Options};
//!
//! let istio = r#"
//! apiVersion: networking.istio.io/v1
//! kind: VirtualService
//! metadata: { name: reviews, namespace: default }
//! spec:
//!   hosts: [reviews]
//!   http:
//!     - route:
//!         - { destination: { host: reviews, subset: v1, port: { number: 9080 } }, weight: 90 }
//!         - { destination: { host: reviews, subset: v2, port: { number: 9080 } }, weight: 10 }
//!       timeout: 2s
//!       corsPolicy: { allowOrigins: [{ exact: "https://example.com" }] }
//! "#;
//! let out = import(&[("reviews.yaml", istio)], &Options::default()).unwrap();
//! assert_eq!(out.config.services[0].routes[0].to.len(), 2);
//! assert!(out.losses.iter().any(|l| l.path == "spec.http[0].corsPolicy"));
//! ```

mod appmesh;
mod istio;
mod tree;

use crate::config::{Backend, Config, ConfigError, InboundPolicy, Service, Shared};
use std::collections::BTreeMap;
use std::time::Duration;
use tree::T;

/// How resources are read.
#[derive(Debug, Clone)]
pub struct Options {
    /// The trust domain of SPIFFE IDs made from Istio principals and
    /// service accounts (`cluster.local`, Istio's default).
    pub trust_domain: String,
    /// The Kubernetes cluster's DNS domain (`cluster.local`): a short host
    /// `reviews` in namespace `default` is `reviews.default.svc.cluster.local`.
    pub cluster_domain: String,
    /// The port of a destination that names none (80).
    pub default_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            default_port: 80,
        }
    }
}

/// What an import made: the config, and everything not carried over as
/// it was.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The config (valid: it passed validation).
    pub config: Config,
    /// Each field lost or approximated, in the order of the inputs.
    pub losses: Vec<Loss>,
    /// The resources read: `Kind namespace/name (file:line)`.
    pub read: Vec<String>,
}

impl Imported {
    /// Whether anything was lost or approximated (what `meshctl import
    /// --check` fails on).
    pub fn lossy(&self) -> bool {
        !self.losses.is_empty()
    }
}

/// A field not carried over as it was.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Loss {
    /// `Kind namespace/name`.
    pub resource: String,
    /// The file it was read from.
    pub file: String,
    /// The field's line in the file, if known.
    pub line: Option<u32>,
    /// The field's path from the resource's root (`spec.http[0].fault`).
    pub path: String,
    /// Dropped, or carried over approximately.
    pub kind: LossKind,
    /// Why, and (when approximated) how it was carried over.
    pub reason: String,
}

/// How a field was not carried over as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossKind {
    /// Not carried over at all.
    Dropped,
    /// Carried over with a different meaning, said in the reason.
    Approximated,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            LossKind::Dropped => "lost",
            LossKind::Approximated => "approximated",
        };
        match self.line {
            Some(l) => write!(f, "{}:{l}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        match self.path.as_str() {
            "" => write!(f, "{}: {kind}: {}", self.resource, self.reason),
            path => write!(f, "{} {path}: {kind}: {}", self.resource, self.reason),
        }
    }
}

/// Why nothing was imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A file could not be read as YAML or JSON.
    #[error("{file}: {problem}")]
    Syntax {
        /// The file.
        file: String,
        /// What was wrong, with its line.
        problem: crate::config::Problem,
    },
    /// The config made from the resources did not validate (a resource
    /// refers to something none of the inputs define, say).
    #[error("the config made from the resources is invalid:\n{0}")]
    Invalid(ConfigError),
}

/// The most documents read in all.
pub const MAX_DOCUMENTS: usize = 10_000;

/// Reads `inputs` (file name and text; many documents each) and makes
/// this mesh's config of them. Documents of kinds it does not know are
/// reported as lost whole.
pub fn import(inputs: &[(&str, &str)], options: &Options) -> Result<Imported, ImportError> {
    let mut docs = Vec::new();
    for (file, text) in inputs {
        let nodes =
            crate::config::parse_documents(text).map_err(|problem| ImportError::Syntax {
                file: (*file).to_owned(),
                problem,
            })?;
        for node in &nodes {
            docs.push(Doc::new(file, T::new(node, "")));
        }
    }
    let mut out = Out::new(options);
    if docs.len() > MAX_DOCUMENTS {
        let first = &docs[MAX_DOCUMENTS];
        out.lose(
            first,
            first.tree.path(),
            first.tree.line(),
            format!(
                "more than {MAX_DOCUMENTS} documents: this one and those after it are not read"
            ),
        );
        docs.truncate(MAX_DOCUMENTS);
    }
    // The same resource given twice (a file named twice, a copy in two
    // files) is read once.
    let mut first: std::collections::HashMap<_, String> = std::collections::HashMap::new();
    docs.retain(|d| {
        let Some(id) = d.identity() else {
            return true;
        };
        let here = format!("{}:{}", d.file, d.tree.line().unwrap_or(1));
        match first.get(&id) {
            Some(there) => {
                out.lose(
                    d,
                    "",
                    d.tree.line(),
                    format!("the same resource as {there}: that one is used"),
                );
                false
            }
            None => {
                first.insert(id, here);
                true
            }
        }
    });
    let (istio, rest): (Vec<Doc>, Vec<Doc>) = docs.into_iter().partition(Doc::is_istio);
    let (appmesh, unknown): (Vec<Doc>, Vec<Doc>) = rest.into_iter().partition(Doc::is_appmesh);
    istio::import(&istio, &mut out);
    appmesh::import(&appmesh, &mut out);
    for d in &unknown {
        let what = d
            .kind
            .clone()
            .unwrap_or_else(|| "a document without `kind`".to_owned());
        out.lose(
            d,
            "",
            d.tree.line(),
            format!("{what} is not an Istio or App Mesh resource this reads"),
        );
        d.tree.consume();
    }
    // What no mapping read, in every resource read.
    let mut read = Vec::new();
    for d in istio.iter().chain(&appmesh) {
        read.push(format!(
            "{} ({}:{})",
            d.label(),
            d.file,
            d.tree.line().unwrap_or(1)
        ));
        for u in d.tree.unread() {
            out.lose(d, &u.path, u.line, "not supported by this mesh".to_owned());
        }
    }
    let files: Vec<&str> = inputs.iter().map(|(f, _)| *f).collect();
    out.finish(read, &files)
}

/// One document: its file, tree, kind and name.
pub(crate) struct Doc {
    pub(crate) file: String,
    pub(crate) tree: T,
    pub(crate) api: String,
    pub(crate) kind: Option<String>,
    pub(crate) namespace: String,
    pub(crate) name: String,
}

impl Doc {
    fn new(file: &str, tree: T) -> Doc {
        let text = |t: Option<&T>| t.and_then(T::text).unwrap_or_default();
        let api = text(tree.get("apiVersion"));
        let kind = tree.get("kind").and_then(T::text);
        let (namespace, name) = match tree.get("metadata") {
            Some(m) => {
                let ns = text(m.get("namespace"));
                let name = text(m.get("name"));
                // What Kubernetes keeps about a resource configures nothing.
                for (_, t) in m.entries() {
                    t.consume();
                }
                (ns, name)
            }
            None => (String::new(), String::new()),
        };
        if let Some(s) = tree.get("status") {
            s.consume();
        }
        // An App Mesh describe call's output names itself inside.
        let described = kind.is_none().then(|| appmesh::described(&tree)).flatten();
        let (kind, namespace, name) = match described {
            Some((k, mesh, n)) => (Some(k.to_owned()), mesh, n),
            None => (kind, namespace, name),
        };
        Doc {
            file: file.to_owned(),
            tree,
            api,
            kind,
            namespace: if namespace.is_empty() {
                "default".to_owned()
            } else {
                namespace
            },
            name,
        }
    }

    fn is_istio(&self) -> bool {
        self.api.contains("istio.io")
    }

    fn is_appmesh(&self) -> bool {
        self.api.starts_with("appmesh.k8s.aws") || appmesh::describe_kind(&self.tree).is_some()
    }

    /// What names the resource: API group, kind, namespace and name (for
    /// an App Mesh route, its router's name too); none without a name.
    fn identity(&self) -> Option<(String, String, String, String)> {
        let kind = self.kind.clone().filter(|_| !self.name.is_empty())?;
        let group = self.api.split('/').next().unwrap_or_default().to_owned();
        let router = self
            .tree
            .peek("route")
            .and_then(|r| r.peek("virtualRouterName"))
            .and_then(T::peek_text)
            .unwrap_or_default();
        let name = format!("{router}/{}", self.name);
        Some((group, kind, self.namespace.clone(), name))
    }

    /// `Kind namespace/name`.
    pub(crate) fn label(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind.as_deref().unwrap_or("?"),
            self.namespace,
            self.name
        )
    }
}

/// The config being made, and the losses so far.
pub(crate) struct Out<'o> {
    pub(crate) options: &'o Options,
    pub(crate) services: BTreeMap<String, Service>,
    pub(crate) backends: BTreeMap<String, Backend>,
    pub(crate) inbound: BTreeMap<String, InboundPolicy>,
    pub(crate) trust_domain: Option<String>,
    /// Where each inbound policy was first made from: resource, file, line.
    inbound_from: BTreeMap<String, (String, String, Option<u32>)>,
    losses: Vec<Loss>,
    seen: std::collections::HashSet<Loss>,
}

impl<'o> Out<'o> {
    fn new(options: &'o Options) -> Self {
        Self {
            options,
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            inbound: BTreeMap::new(),
            trust_domain: None,
            inbound_from: BTreeMap::new(),
            losses: Vec::new(),
            seen: std::collections::HashSet::new(),
        }
    }

    /// Reports a field of `d` lost.
    pub(crate) fn lose(&mut self, d: &Doc, path: &str, line: Option<u32>, reason: String) {
        self.push(d, path, line, LossKind::Dropped, reason);
    }

    /// Reports the field `t` of `d` lost, and marks it read.
    pub(crate) fn drop_field(&mut self, d: &Doc, t: &T, reason: impl Into<String>) {
        t.consume();
        self.push(d, t.path(), t.line(), LossKind::Dropped, reason.into());
    }

    /// The inbound policy of `service`, made (from `d`) if new.
    pub(crate) fn inbound(&mut self, d: &Doc, service: &str) -> &mut InboundPolicy {
        self.inbound_from
            .entry(service.to_owned())
            .or_insert_with(|| (d.label(), d.file.clone(), d.tree.line()));
        self.inbound
            .entry(service.to_owned())
            .or_insert_with(|| InboundPolicy {
                service: service.to_owned(),
                ..InboundPolicy::default()
            })
    }

    /// A workload named so near a service that a config would take the
    /// name for a typo of it cannot have its policy written: each such
    /// policy is dropped and said.
    fn drop_near_misses(&mut self) {
        let services: Vec<&str> = self.services.keys().map(String::as_str).collect();
        let near: Vec<(String, String)> = self
            .inbound
            .keys()
            .filter(|s| !self.services.contains_key(*s))
            .filter_map(|s| {
                Some((
                    s.clone(),
                    crate::config::validate::inbound_typo_of(s, services.iter().copied())?
                        .to_owned(),
                ))
            })
            .collect();
        for (workload, service) in near {
            self.inbound.remove(&workload);
            let (resource, file, line) = self.inbound_from.remove(&workload).unwrap_or_default();
            self.losses.push(Loss {
                resource,
                file,
                line,
                path: String::new(),
                kind: LossKind::Dropped,
                reason: format!("the inbound policy of `{workload}`: a name this near the service `{service}` is taken for a typo of it; run the workload under another MESH_SERVICE and write its policy"),
            });
        }
    }

    /// Reports the field `key` of `parent` (in `d`) lost, if present.
    pub(crate) fn drop_if(&mut self, d: &Doc, parent: &T, key: &str, reason: &str) {
        if let Some(t) = parent.get(key) {
            self.drop_field(d, t, reason);
        }
    }

    /// Reports a field of `d` carried over approximately, by path.
    pub(crate) fn push_approximate(
        &mut self,
        d: &Doc,
        path: &str,
        line: Option<u32>,
        reason: String,
    ) {
        self.push(d, path, line, LossKind::Approximated, reason);
    }

    /// Reports the field `t` of `d` carried over approximately.
    pub(crate) fn approximate(&mut self, d: &Doc, t: &T, reason: impl Into<String>) {
        self.push(d, t.path(), t.line(), LossKind::Approximated, reason.into());
    }

    fn push(&mut self, d: &Doc, path: &str, line: Option<u32>, kind: LossKind, reason: String) {
        let loss = Loss {
            resource: d.label(),
            file: d.file.clone(),
            line,
            path: path.to_owned(),
            kind,
            reason,
        };
        // A policy applied to several backends is reported once.
        if self.seen.insert(loss.clone()) {
            self.losses.push(loss);
        }
    }

    fn finish(mut self, read: Vec<String>, files: &[&str]) -> Result<Imported, ImportError> {
        self.drop_near_misses();
        // In the order of the inputs.
        let at = |l: &Loss| {
            let file = files
                .iter()
                .position(|f| *f == l.file)
                .unwrap_or(usize::MAX);
            (file, l.line.unwrap_or(0))
        };
        self.losses.sort_by_key(at);
        let config = Config {
            trust_domain: self.trust_domain,
            services: self.services.into_values().map(Shared::new).collect(),
            backends: self.backends.into_values().map(Shared::new).collect(),
            inbound: self.inbound.into_values().collect(),
            ..Config::default()
        };
        config.validate().map_err(ImportError::Invalid)?;
        Ok(Imported {
            config,
            losses: self.losses,
            read,
        })
    }
}

/// The most attempts a route makes (retries and the first).
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// A route's attempts for `retries` retries (written at `at` in `d`): at
/// most [`MAX_ATTEMPTS`], said when cut.
pub(crate) fn attempts(out: &mut Out<'_>, d: &Doc, at: Option<&T>, retries: u32) -> u32 {
    let attempts = retries.saturating_add(1);
    if attempts > MAX_ATTEMPTS
        && let Some(t) = at
    {
        let most = MAX_ATTEMPTS - 1;
        out.approximate(d, t, format!("{retries} retries: at most {most} here"));
    }
    attempts.min(MAX_ATTEMPTS)
}

/// A Go duration (`1.5s`, `100ms`, `1h30m`), as Istio writes them; at
/// most [`crate::config::MAX_DURATION`].
pub(crate) fn go_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * unit;
    }
    (total.is_finite() && total <= crate::config::MAX_DURATION.as_secs_f64())
        .then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_go_durations() {
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(go_duration("250ms"), Some(Duration::from_millis(250)));
        for bad in ["", "5", "1x", "s", "99999999h"] {
            assert_eq!(go_duration(bad), None, "{bad}");
        }
    }
}
