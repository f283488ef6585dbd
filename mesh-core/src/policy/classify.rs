//! Response classification in Rust code: what an attempt came to, as the
//! retries, hedges and outlier detection of a route see it.
//!
//! Every peer classifies with a fixed list (status codes, gRPC codes,
//! "gateway-error"). Here a classifier is a function, registered under a
//! name when the process starts and named by a route (or a service, for
//! all its routes) in config as `classifier: <name>`. Without one, a
//! route classifies as it always has: its `retry.on` list decides what is
//! retried, and a 5xx or a failure to get a response counts against the
//! endpoint.
//!
//! ```
//! use proxyless_core::policy::classify::{self, Attempt, Class};
//!
//! // A backend that sheds load answers 200 with `x-overloaded: 1`.
//! classify::register("overloaded-is-retriable", |a: &Attempt<'_>| match a {
//!     Attempt::Response { headers, .. } if headers.contains_key("x-overloaded") => {
//!         Class::RetryableFailure
//!     }
//!     a => a.default_class(),
//! })
//! .unwrap();
//! assert!(classify::registered("overloaded-is-retriable").is_some());
//! ```
//!
//! A classifier sees the response's head (status, headers, and the gRPC
//! status when the headers carry it: a trailers-only gRPC response) or the
//! attempt's error; trailers that follow a body are not known when the
//! attempt is judged. It may be called more than once per attempt (by the
//! retry and by the endpoint's bookkeeping), so keep it pure and cheap.

use super::Outcome;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A good answer: not retried, not counted against the endpoint.
    Success,
    /// A failure worth another attempt (on another endpoint): retried
    /// within the route's attempts, budget and deadline, and counted
    /// against the endpoint.
    RetryableFailure,
    /// A failure another attempt would not mend: returned as it is, and
    /// counted against the endpoint.
    Failure,
}

impl Class {
    /// Whether it counts against the endpoint.
    pub fn is_failure(self) -> bool {
        self != Self::Success
    }
}

/// An attempt, as a classifier sees it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Attempt<'a> {
    /// A response came.
    Response {
        /// Its status.
        status: http::StatusCode,
        /// Its headers.
        headers: &'a http::HeaderMap,
        /// The gRPC status in its headers (a trailers-only response).
        grpc_status: Option<u32>,
    },
    /// No response came.
    Error {
        /// How the policies see the error.
        outcome: Outcome,
        /// The error.
        error: &'a (dyn std::error::Error + Send + Sync + 'static),
    },
}

impl Attempt<'_> {
    /// How a route without a classifier counts the attempt against its
    /// endpoint: a 5xx, a gRPC status whose HTTP equivalent is a 5xx
    /// (`UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`,
    /// `UNAVAILABLE`, `DATA_LOSS`), or no response at all is a failure
    /// (retryable, as far as classification goes: the route's `retry.on`
    /// list decides what is retried then).
    pub fn default_class(&self) -> Class {
        let failed = match self {
            Self::Response {
                status,
                grpc_status,
                ..
            } => {
                status.is_server_error()
                    || grpc_status.is_some_and(|c| grpc_http_equivalent(c) >= 500)
            }
            Self::Error { .. } => true,
        };
        if failed {
            Class::RetryableFailure
        } else {
            Class::Success
        }
    }
}

/// The HTTP status a gRPC status stands for (Envoy's mapping), so a
/// gRPC `UNAVAILABLE` counts as a 503 wherever a 5xx counts.
pub fn grpc_http_equivalent(code: u32) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// A classifier: any `Fn(&Attempt) -> Class` that can be shared.
pub trait Classify: Send + Sync + 'static {
    /// Classifies `attempt`.
    fn classify(&self, attempt: &Attempt<'_>) -> Class;
}

impl<F> Classify for F
where
    F: Fn(&Attempt<'_>) -> Class + Send + Sync + 'static,
{
    fn classify(&self, attempt: &Attempt<'_>) -> Class {
        self(attempt)
    }
}

impl std::fmt::Debug for dyn Classify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Classifier")
    }
}

/// A registered classifier, shared.
pub type Classifier = Arc<dyn Classify>;

/// Why a classifier could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The name is empty, longer than [`MAX_NAME`] bytes, or has other
    /// characters than ASCII letters, digits, `-`, `_` and `.`.
    #[error("classifier name `{0}` is not 1 to 64 ASCII letters, digits, `-`, `_` or `.`")]
    InvalidName(String),
    /// A classifier has this name already (they are not replaced: a
    /// running route would change its behaviour under its config).
    #[error("a classifier named `{0}` is registered already")]
    Taken(String),
    /// [`MAX_CLASSIFIERS`] are registered.
    #[error("{MAX_CLASSIFIERS} classifiers are registered; no more are taken")]
    Full,
}

/// The longest classifier name.
pub const MAX_NAME: usize = 64;
/// The most classifiers a process registers.
pub const MAX_CLASSIFIERS: usize = 256;

fn registry() -> &'static RwLock<HashMap<String, Classifier>> {
    static REGISTRY: std::sync::OnceLock<RwLock<HashMap<String, Classifier>>> =
        std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Registers `classifier` under `name`, for configs to name. Register
/// before the mesh loads a config that names it: a config naming a
/// classifier no code registered is refused.
pub fn register(name: &str, classifier: impl Classify) -> Result<(), RegisterError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Err(RegisterError::InvalidName(name.chars().take(80).collect()));
    }
    let mut map = registry().write().unwrap_or_else(PoisonError::into_inner);
    if map.contains_key(name) {
        return Err(RegisterError::Taken(name.to_owned()));
    }
    if map.len() >= MAX_CLASSIFIERS {
        return Err(RegisterError::Full);
    }
    map.insert(name.to_owned(), Arc::new(classifier));
    Ok(())
}

/// The classifier registered under `name`.
pub fn registered(name: &str) -> Option<Classifier> {
    registry()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .cloned()
}

/// The names registered, sorted (for error messages).
pub fn names() -> Vec<String> {
    let mut names: Vec<String> = registry()
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_never_replaced() {
        let always = |_: &Attempt<'_>| Class::Success;
        register("classify-test.one", always).unwrap();
        assert_eq!(
            register("classify-test.one", always),
            Err(RegisterError::Taken("classify-test.one".into()))
        );
        for bad in ["", "has space", "ü", &"x".repeat(65)] {
            assert!(
                matches!(register(bad, always), Err(RegisterError::InvalidName(_))),
                "{bad}"
            );
        }
        let c = registered("classify-test.one").unwrap();
        let headers = http::HeaderMap::new();
        let attempt = Attempt::Response {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            headers: &headers,
            grpc_status: None,
        };
        assert_eq!(c.classify(&attempt), Class::Success);
        assert_eq!(attempt.default_class(), Class::RetryableFailure);
        assert!(names().contains(&"classify-test.one".to_owned()));
        assert!(registered("classify-test.none").is_none());
    }
}
