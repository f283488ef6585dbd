//! The one place where mesh errors become HTTP responses: the status an
//! operator expects and an `x-mesh-error` header naming the reason, so a
//! refusal by the mesh is never mistaken for the application's answer.
//!
//! | kind | status |
//! |---|---|
//! | `invalid_path` | 400 |
//! | `no_route` | 404 |
//! | `unauthorized` | 403 |
//! | `rate_limited` | 429, with `retry-after` |
//! | `timeout` | 504 |
//! | `circuit_open`, `no_healthy_endpoint`, `connect_failed`, `reset`, `retry_budget_exhausted` | 503 |
//! | anything else | 502 |
//!
//! gRPC requests get a trailers-only response instead
//! ([`grpc_error_response`]): `UNAVAILABLE` for refusals and transport
//! failures (a rate limit too, as Envoy's `local_ratelimit` answers, with
//! `retry-after`), `DEADLINE_EXCEEDED`, `PERMISSION_DENIED`, `UNIMPLEMENTED` for
//! no route, `INVALID_ARGUMENT` for a refused path.

use crate::body::ResponseBody;
use crate::error::ErrorKind;
use crate::ext::ERROR_HEADER;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

/// The status for an error kind.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NoRoute => StatusCode::NOT_FOUND,
        ErrorKind::InvalidPath => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::FORBIDDEN,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::CircuitOpen
        | ErrorKind::NoHealthyEndpoint
        | ErrorKind::ConnectFailed
        | ErrorKind::Reset
        | ErrorKind::RetryBudgetExhausted => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// The response that stands for `err`.
pub fn error_response<B>(err: &(dyn std::error::Error + 'static)) -> Response<ResponseBody<B>> {
    let kind = ErrorKind::of(err);
    let mut resp = Response::new(ResponseBody::local(Bytes::from(format!("{err}\n"))));
    *resp.status_mut() = status_for(kind);
    resp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
    retry_after(err, resp.headers_mut());
    resp
}

/// `retry-after` (whole seconds, at least 1) for a rate-limit refusal.
fn retry_after(err: &(dyn std::error::Error + 'static), headers: &mut http::HeaderMap) {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<crate::error::RateLimited>() {
            let secs = r.retry_after.as_millis().div_ceil(1000).max(1);
            headers.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)),
            );
            return;
        }
        cur = e.source();
    }
}

/// The gRPC status code for an error kind (the code a gRPC caller expects
/// of a mesh refusal, as Envoy maps them).
pub fn grpc_code_for(kind: ErrorKind) -> u32 {
    match kind {
        ErrorKind::Timeout => 4,      // DEADLINE_EXCEEDED
        ErrorKind::Unauthorized => 7, // PERMISSION_DENIED
        ErrorKind::NoRoute => 12,     // UNIMPLEMENTED
        ErrorKind::InvalidPath => 3,  // INVALID_ARGUMENT
        ErrorKind::CircuitOpen
        | ErrorKind::NoHealthyEndpoint
        | ErrorKind::ConnectFailed
        | ErrorKind::Reset
        | ErrorKind::RetryBudgetExhausted
        | ErrorKind::RateLimited => 14, // UNAVAILABLE
        _ => 2,                       // UNKNOWN
    }
}

/// A gRPC trailers-only response that stands for `err`: HTTP 200,
/// `grpc-status` and `grpc-message` in the headers, and `x-mesh-error`.
pub fn grpc_error_response<B>(
    err: &(dyn std::error::Error + 'static),
) -> Response<ResponseBody<B>> {
    let kind = ErrorKind::of(err);
    let mut resp = Response::new(ResponseBody::local(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(grpc_code_for(kind)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&err.to_string())) {
        h.insert("grpc-message", v);
    }
    h.insert(ERROR_HEADER, HeaderValue::from_static(kind.as_str()));
    retry_after(err, h);
    resp
}

/// Whether a response is a meshed server's rate-limit refusal
/// (`x-mesh-error: rate_limited`): never retried into the same limit, and
/// no sign of the server's health.
pub fn is_rate_limited(headers: &http::HeaderMap) -> bool {
    headers
        .get(ERROR_HEADER)
        .is_some_and(|v| v.as_bytes() == ErrorKind::RateLimited.as_str().as_bytes())
}

/// Whether a request is gRPC (by its content type).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::RateLimited;

    #[test]
    fn a_rate_limit_refusal_is_429_or_unavailable_with_retry_after() {
        let err = RateLimited {
            scope: "route reviews/default".into(),
            retry_after: std::time::Duration::from_millis(1200),
        };
        let resp: Response<ResponseBody<()>> = error_response(&err);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()[ERROR_HEADER], "rate_limited");
        assert!(is_rate_limited(resp.headers()));
        let grpc: Response<ResponseBody<()>> = grpc_error_response(&err);
        assert_eq!(grpc.headers()["grpc-status"], "14");
        assert_eq!(grpc.headers()["retry-after"], "2");
        // It says nothing of the server's health.
        assert_eq!(
            crate::grpc::outcome_of_response(&grpc),
            proxyless_core::policy::Outcome::Status(429)
        );
    }
}
