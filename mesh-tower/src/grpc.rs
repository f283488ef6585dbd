//! What the data path needs to know of gRPC: the status of a trailers-only
//! response (how gRPC servers answer most failures), its HTTP equivalent for
//! outlier detection, and the `grpc-timeout` header.

use http::HeaderName;
use std::time::Duration;

/// `grpc-status`.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-timeout`.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The `grpc-status` in a response's headers (a trailers-only response).
pub fn status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// The HTTP status a gRPC status stands for (Envoy's mapping), so outlier
/// detection treats `UNAVAILABLE` like a 503.
pub fn http_equivalent(code: u32) -> u16 {
    proxyless_core::policy::classify::grpc_http_equivalent(code)
}

/// `grpc-timeout` for `d` (milliseconds, at least 1).
pub fn timeout_value(d: Duration) -> http::HeaderValue {
    let ms = d.as_millis().clamp(1, 99_999_999);
    http::HeaderValue::from_str(&format!("{ms}m")).unwrap_or(http::HeaderValue::from_static("1m"))
}

/// Whether a request is gRPC (by its content type).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

/// How a response counts for outlier detection: its HTTP status, or the
/// HTTP equivalent of a non-OK trailers-only gRPC status.
pub fn outcome_of_response<B>(resp: &http::Response<B>) -> proxyless_core::policy::Outcome {
    let http = resp.status().as_u16();
    // A server's rate limit says nothing of its health (gRPC answers it
    // with UNAVAILABLE, which would otherwise count as a 503).
    if crate::response::is_rate_limited(resp.headers()) {
        return proxyless_core::policy::Outcome::Status(429);
    }
    match status(resp.headers()) {
        Some(code) if http == 200 && code != 0 => {
            proxyless_core::policy::Outcome::Status(http_equivalent(code))
        }
        _ => proxyless_core::policy::Outcome::Status(http),
    }
}

/// The `grpc-timeout` header (`100m`, `2S`, ...), as gRPC defines it.
pub fn parse_timeout(headers: &http::HeaderMap) -> Option<std::time::Duration> {
    let v = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    })
}
