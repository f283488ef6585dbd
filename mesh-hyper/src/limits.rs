//! What a meshed server allows a peer: how many connections, how long to
//! send headers or a TLS handshake, how long to stay idle, how large the
//! headers may be, and how many HTTP/2 streams at once. Every limit has a
//! safe default, an environment variable, and a builder method; the
//! defaults and what Envoy and hyper use for the same thing are listed in
//! `docs/operations.md`.
//!
//! ```
//! use std::time::Duration;
//! let limits = proxyless_hyper::ServerLimits {
//!     max_connections: 2_000,
//!     idle_timeout: Duration::from_secs(60),
//!     ..Default::default()
//! };
//! assert_eq!(limits.header_read_timeout, Duration::from_secs(30));
//! ```

use std::time::Duration;

/// Limits of a meshed server. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once; past it a new connection is closed at
    /// once (counted in `ServerStats::connections_refused`) and the ones
    /// held keep being served. `MESH_SERVER_MAX_CONNECTIONS`, default 10,000.
    pub max_connections: usize,
    /// Time for a TLS handshake, and for a new connection's first byte
    /// (protocol detection). `MESH_SERVER_HANDSHAKE_TIMEOUT`, default 10 s.
    pub handshake_timeout: Duration,
    /// Time for a request's headers to arrive in full (HTTP/1). hyper also
    /// runs it while a kept-alive connection waits for its next request, so
    /// it bounds how long an HTTP/1 connection idles between requests.
    /// `MESH_SERVER_HEADER_READ_TIMEOUT`, default 30 s (hyper's).
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no bytes either way for
    /// this long is closed gracefully (HTTP/2: GOAWAY). Applies after the
    /// TLS handshake too. `MESH_SERVER_IDLE_TIMEOUT`, default 5 min.
    pub idle_timeout: Duration,
    /// The most bytes of request headers: HTTP/1's read buffer, HTTP/2's
    /// header list. `MESH_SERVER_MAX_HEADER_BYTES`, default 64 KiB.
    pub max_header_bytes: u32,
    /// The most request headers (HTTP/1). `MESH_SERVER_MAX_HEADERS`,
    /// default 100.
    pub max_headers: usize,
    /// HTTP/2 streams open at once per connection.
    /// `MESH_SERVER_MAX_CONCURRENT_STREAMS`, default 200.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams the peer opened and reset before the server accepted
    /// them, allowed at once; past it the connection is closed with
    /// GOAWAY (the defence against rapid reset, CVE-2023-44487).
    /// `MESH_SERVER_MAX_PENDING_RESETS`, default 20.
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the server reset for the peer's protocol errors,
    /// allowed per connection before it is closed.
    /// `MESH_SERVER_MAX_LOCAL_RESETS`, default 1,024.
    pub max_local_error_reset_streams: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_streams: 200,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }
}

/// A limit from the environment that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}=`{value}`: {why}")]
pub struct LimitError {
    /// The variable.
    pub var: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub why: String,
}

impl ServerLimits {
    /// The defaults, with each `MESH_SERVER_*` variable that is set in
    /// the environment applied. Durations are written as in config files
    /// (`10s`, `500ms`); counts are whole numbers above zero.
    pub fn from_env() -> Result<Self, LimitError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, LimitError> {
        let mut l = Self::default();
        let duration = |k: &'static str, d: &mut Duration| -> Result<(), LimitError> {
            let Some(v) = var(k).filter(|v| !v.is_empty()) else {
                return Ok(());
            };
            let err = |why: String| LimitError {
                var: k,
                value: v.clone(),
                why,
            };
            let parsed =
                proxyless_core::config::parse_duration(&v).map_err(|e| err(e.to_string()))?;
            if parsed.is_zero() {
                return Err(err("must be greater than zero".into()));
            }
            *d = parsed;
            Ok(())
        };
        duration("MESH_SERVER_HANDSHAKE_TIMEOUT", &mut l.handshake_timeout)?;
        duration(
            "MESH_SERVER_HEADER_READ_TIMEOUT",
            &mut l.header_read_timeout,
        )?;
        duration("MESH_SERVER_IDLE_TIMEOUT", &mut l.idle_timeout)?;
        fn count<T: std::str::FromStr + PartialOrd + From<u8>>(
            var: &impl Fn(&str) -> Option<String>,
            k: &'static str,
            n: &mut T,
        ) -> Result<(), LimitError> {
            let Some(v) = var(k).filter(|v| !v.is_empty()) else {
                return Ok(());
            };
            match v.parse::<T>() {
                Ok(x) if x > T::from(0) => {
                    *n = x;
                    Ok(())
                }
                _ => Err(LimitError {
                    var: k,
                    value: v,
                    why: "must be a whole number above zero".into(),
                }),
            }
        }
        count(&var, "MESH_SERVER_MAX_CONNECTIONS", &mut l.max_connections)?;
        count(
            &var,
            "MESH_SERVER_MAX_HEADER_BYTES",
            &mut l.max_header_bytes,
        )?;
        count(&var, "MESH_SERVER_MAX_HEADERS", &mut l.max_headers)?;
        count(
            &var,
            "MESH_SERVER_MAX_CONCURRENT_STREAMS",
            &mut l.max_concurrent_streams,
        )?;
        count(
            &var,
            "MESH_SERVER_MAX_PENDING_RESETS",
            &mut l.max_pending_accept_reset_streams,
        )?;
        count(
            &var,
            "MESH_SERVER_MAX_LOCAL_RESETS",
            &mut l.max_local_error_reset_streams,
        )?;
        // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
        l.max_header_bytes = l.max_header_bytes.max(8192);
        Ok(l)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn variables_override_defaults_and_bad_ones_are_named() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let l = ServerLimits::from_vars(vars(&[
            ("MESH_SERVER_MAX_CONNECTIONS", "50"),
            ("MESH_SERVER_IDLE_TIMEOUT", "1500ms"),
        ]))
        .unwrap();
        assert_eq!(l.max_connections, 50);
        assert_eq!(l.idle_timeout, Duration::from_millis(1500));
        assert_eq!(l.max_headers, 100);
        for (k, v) in [
            ("MESH_SERVER_MAX_CONNECTIONS", "0"),
            ("MESH_SERVER_MAX_HEADERS", "many"),
            ("MESH_SERVER_IDLE_TIMEOUT", "0s"),
            ("MESH_SERVER_HEADER_READ_TIMEOUT", "10"),
        ] {
            let pairs: &'static [(&'static str, &'static str)] = Box::leak(Box::new([(k, v)]));
            let e = ServerLimits::from_vars(vars(pairs)).unwrap_err();
            assert_eq!(e.var, k, "{e}");
            assert!(e.to_string().contains(v), "{e}");
        }
    }
}
