//! The config model, how it is read, and how it is validated.
//!
//! A config is read from YAML or JSON into a [`Config`], then checked as a
//! whole: a config with any problem is rejected with a [`ConfigError`] that
//! lists *every* problem, each with its field path, line (where the format
//! gives one) and reason.
//!
//! ```
//! use proxyless_core::config::{Config, ProblemKind};
//!
//! let cfg = Config::from_yaml(r#"
//! services:
//!   - name: reviews
//!     routes:
//!       - to: [{ backend: reviews-v1, weight: 90 }, { backend: reviews-v2, weight: 10 }]
//! backends:
//!   - { name: reviews-v1, endpoints: ["127.0.0.1:9001"] }
//!   - { name: reviews-v2, endpoints: ["127.0.0.1:9002"] }
//! "#).unwrap();
//! assert_eq!(cfg.services[0].routes[0].to.len(), 2);
//!
//! let err = Config::from_yaml("services:\n  - name: x\n    rootes: []\n").unwrap_err();
//! assert!(err.has(ProblemKind::UnknownField));
//! assert!(err.to_string().contains("did you mean `routes`"));
//! ```

mod decode;
pub mod duration;
mod error;
mod model;
mod name;
mod node;
#[cfg(feature = "import")]
pub(crate) use node::Value;
pub(crate) mod regex;
mod shared;
pub(crate) mod validate;

pub use duration::{DurationError, MAX_DURATION, format_duration, parse_duration};
pub use error::{ConfigError, Problem, ProblemKind};
pub use model::*;
pub use name::Name;
pub(crate) use shared::EqualHeld;
pub use shared::Shared;

pub(crate) use node::Node;
use std::path::Path;

/// The format of a config document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// YAML (1.2; JSON documents are YAML too, but get JSON's error messages
    /// when read as [`Format::Json`]).
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// The format a file's extension names: `.json` is JSON, anything else
    /// YAML.
    pub fn of_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

impl Config {
    /// Reads and validates a YAML config.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, Format::Yaml)
    }

    /// Reads and validates a JSON config.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, Format::Json)
    }

    /// Reads and validates a config in `format`.
    pub fn parse(text: &str, format: Format) -> Result<Config, ConfigError> {
        let root = parse_tree(text, format).map_err(|p| ConfigError::new(vec![p]))?;
        if matches!(root.value, node::Value::Null) {
            // Only comments: as empty as an empty file.
            return Err(ConfigError::new(vec![empty_document()]));
        }
        let mut cx = decode::Cx::default();
        let cfg = decode::decode_config(&root, &mut cx);
        let Some(cfg) = cfg else {
            return Err(ConfigError::new(cx.problems));
        };
        // Semantic checks run on what could be read, so one pass shows
        // everything; a check on a value that did not decode would only
        // echo that problem, so those are left out.
        let mut problems = cx.problems;
        let decoded = problems.len();
        for p in validate::validate(&cfg, &cx.lines, None) {
            if !problems[..decoded]
                .iter()
                .any(|d| related(&d.path, &p.path))
            {
                problems.push(p);
            }
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            // In the order of the document, where lines are known.
            problems.sort_by_key(|p| p.line.unwrap_or(u32::MAX));
            Err(ConfigError::new(problems))
        }
    }

    /// Reads and validates a config file; `.json` files are JSON, others YAML.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(vec![Problem::new(
                ProblemKind::Syntax,
                "",
                None,
                format!("cannot read the file: {e}"),
            )])
            .in_file(path)
        })?;
        Self::parse(&text, Format::of_path(path)).map_err(|e| e.in_file(path))
    }

    /// Checks a config built in code (or changed since it was read).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_since(None)
    }

    /// Checks a config that may share services and backends with `known`,
    /// a config that passed: those are checked only against the rest.
    pub(crate) fn validate_since(&self, known: Option<&Config>) -> Result<(), ConfigError> {
        let problems = validate::validate(self, &Default::default(), known);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::new(problems))
        }
    }

    /// The config as YAML, in the form [`Config::from_yaml`] reads.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot write YAML: {e}\n"))
    }

    /// The config as YAML without the settings that equal their defaults
    /// (the defaults block, a route's retry backoff, a backend's balancer,
    /// ...): what a person keeps in a file. [`Config::from_yaml`] reads it
    /// back to an equal config.
    ///
    /// ```
    /// use proxyless_core::config::Config;
    ///
    /// let cfg = Config::from_yaml("services: [{ name: web, routes: [{ to: [web-v1], retry: { attempts: 3 } }] }]\nbackends: [{ name: web-v1, endpoints: ['127.0.0.1:8080'] }]").unwrap();
    /// let short = cfg.to_yaml_short();
    /// assert!(!short.contains("defaults") && !short.contains("backoff"));
    /// assert_eq!(Config::from_yaml(&short).unwrap(), cfg);
    /// ```
    pub fn to_yaml_short(&self) -> String {
        let Ok(mut v) = serde_json::to_value(self) else {
            return self.to_yaml();
        };
        let default = |d: serde_json::Result<serde_json::Value>| d.unwrap_or_default();
        let route = default(serde_json::to_value(Route::default()));
        let retry = default(serde_json::to_value(RetryPolicy::default()));
        let backend = default(serde_json::to_value(Backend::default()));
        let breaker = default(serde_json::to_value(CircuitBreaker::default()));
        let outlier = default(serde_json::to_value(OutlierDetection::default()));
        let inbound = default(serde_json::to_value(InboundPolicy::default()));
        if let Some(services) = v.get_mut("services").and_then(|s| s.as_array_mut()) {
            for s in services {
                for r in s
                    .get_mut("routes")
                    .and_then(|r| r.as_array_mut())
                    .into_iter()
                    .flatten()
                {
                    prune(r, &route);
                    if let Some(p) = r.get_mut("retry") {
                        // A backoff's `max` defaults from its `base`: one
                        // that stays is written whole.
                        let backoff = p.get("backoff").cloned();
                        prune(p, &retry);
                        if let (Some(kept), Some(whole)) = (p.get_mut("backoff"), backoff) {
                            *kept = whole;
                        }
                    }
                }
            }
        }
        if let Some(backends) = v.get_mut("backends").and_then(|b| b.as_array_mut()) {
            for b in backends {
                prune(b, &backend);
                if let Some(c) = b.get_mut("circuit_breaker") {
                    prune(c, &breaker);
                }
                if let Some(o) = b.get_mut("outlier_detection") {
                    prune(o, &outlier);
                }
            }
        }
        if let Some(policies) = v.get_mut("inbound").and_then(|i| i.as_array_mut()) {
            for p in policies {
                prune(p, &inbound);
            }
        }
        prune(&mut v, &default(serde_json::to_value(Config::default())));
        serde_saphyr::to_string(&v).unwrap_or_else(|_| self.to_yaml())
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// An empty document is refused: it is far more often a failed template
/// render, a truncating redirect or a ConfigMap glitch than a wish to empty
/// the mesh (which is written `services: []`).
fn empty_document() -> Problem {
    Problem::new(
        ProblemKind::Syntax,
        "",
        None,
        "the document is empty (a mesh with no services is written `services: []`)",
    )
}

/// The largest config text read (a file, or text handed to
/// [`Config::parse`]): room for about 100,000 services with a route and a
/// weighted split each (~37 MiB of YAML).
pub const MAX_CONFIG_BYTES: usize = 64 * 1024 * 1024;

/// The YAML reader's limits, set deliberately rather than left at the
/// reader's defaults (whose 250,000 nodes refused a 10,000-service file):
/// a config of [`MAX_CONFIG_BYTES`] fits; anchors and aliases stay
/// bounded, so an alias bomb is refused in milliseconds.
fn yaml_budget() -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = 10_000_000;
    budget.max_events = 20_000_000;
    budget.max_depth = 64;
    budget.max_aliases = 10_000;
    budget.max_anchors = 10_000;
    budget.max_documents = 1;
    // What aliases replay is charged here: an alias bomb stops at it.
    budget.max_recorded_anchor_events = 100_000;
    budget
}

/// Every document of a YAML (or JSON) stream, as trees with lines, under
/// a config's limits but for up to 10,000 documents of 1,000,000 values
/// in all (empty ones skipped): what `import` reads other meshes'
/// resources with.
#[cfg(feature = "import")]
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Node>, Problem> {
    if text.len() > MAX_CONFIG_BYTES {
        let msg = format!("{} bytes, over the limit of {MAX_CONFIG_BYTES}", text.len());
        return Err(Problem::new(ProblemKind::OutOfRange, "", None, msg));
    }
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let mut budget = yaml_budget();
    budget.max_documents = 10_000;
    // Each value is kept with its path while imported: fewer than a
    // config may hold (other meshes' resources are small).
    budget.max_nodes = 1_000_000;
    budget.max_events = 2_000_000;
    options.budget = Some(budget);
    serde_saphyr::from_multiple_with_options::<Node>(text, options).map_err(|e| yaml_problem(&e))
}

/// What the YAML reader said, with its line.
fn yaml_problem(e: &serde_saphyr::Error) -> Problem {
    let line = e
        .location()
        .and_then(|l| u32::try_from(l.line()).ok())
        .filter(|l| *l > 0);
    let msg = format!("not valid YAML: {}", first_line(&e.to_string()));
    Problem::new(ProblemKind::Syntax, "", line, msg)
}

fn parse_tree(text: &str, format: Format) -> Result<Node, Problem> {
    let syntax = |line: Option<u32>, msg: String| Problem::new(ProblemKind::Syntax, "", line, msg);
    if text.len() > MAX_CONFIG_BYTES {
        let msg = format!(
            "the config is {} bytes, over the limit of {MAX_CONFIG_BYTES}",
            text.len()
        );
        return Err(Problem::new(ProblemKind::OutOfRange, "", None, msg));
    }
    match format {
        Format::Yaml => {
            if text.trim().is_empty() {
                return Err(empty_document());
            }
            // YAML 1.2 booleans only: `on: [5xx]` is a key named "on", not `true`.
            let mut options = serde_saphyr::Options::default();
            options.strict_booleans = true;
            options.budget = Some(yaml_budget());
            serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| yaml_problem(&e))
        }
        Format::Json => {
            // serde_json judges the syntax, so errors speak of JSON. JSON is
            // YAML 1.2, so the YAML reader then gives the tree with lines;
            // should it ever disagree, the tree comes from serde_json alone.
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                let line = u32::try_from(e.line()).ok().filter(|l| *l > 0);
                syntax(line, format!("not valid JSON: {e}"))
            })?;
            Ok(parse_tree(text, Format::Yaml).unwrap_or_else(|_| node::from_json(value)))
        }
    }
}

/// Reads one part of the model from JSON (a control plane's extension
/// data), or says what was wrong with it, at `path`.
#[cfg(feature = "xds")]
pub(crate) fn part_from_json<T: decode::Decode>(text: &str, path: &str) -> Result<T, Problem> {
    let root = parse_tree(text, Format::Json)?;
    let mut cx = decode::Cx::default();
    let part = cx.decode_at::<T>(&root, path);
    match (part, cx.problems.into_iter().next()) {
        (Some(part), None) => Ok(part),
        (_, Some(p)) => Err(p),
        (None, None) => Err(Problem::new(
            ProblemKind::InvalidValue,
            path,
            None,
            "could not be read",
        )),
    }
}

/// Whether one field path lies within the other (or they are equal).
fn related(a: &str, b: &str) -> bool {
    let within = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
    };
    within(a, b) || within(b, a)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Removes from the mapping `v` every field equal to the same field of
/// `default`, and (in fields that stay) what equals their defaults within.
fn prune(v: &mut serde_json::Value, default: &serde_json::Value) {
    let (Some(fields), Some(defaults)) = (v.as_object_mut(), default.as_object()) else {
        return;
    };
    fields.retain(|k, value| defaults.get(k) != Some(value));
    for (k, value) in fields.iter_mut() {
        if let Some(d) = defaults.get(k).filter(|d| d.is_object()) {
            prune(value, d);
        }
    }
}
