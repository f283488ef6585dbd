//! The one place where mesh errors become HTTP responses: the status an
//! operator expects and an `x-mesh-error` header naming the reason, so a
//! refusal by the mesh is never mistaken for the application's answer.
//!
//! | kind | status |
//! |---|---|
//! | `no_route` | 404 |
//! | `unauthorized` | 403 |
//! | `timeout` | 504 |
//! | `circuit_open`, `no_healthy_endpoint`, `connect_failed`, `reset`, `retry_budget_exhausted` | 503 |
//! | anything else | 502 |

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use mesh_tower::body::ResponseBody;
use mesh_tower::error::ErrorKind;
use mesh_tower::ext::ERROR_HEADER;

/// The status for an error kind.
pub fn status_for(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NoRoute => StatusCode::NOT_FOUND,
        ErrorKind::Unauthorized => StatusCode::FORBIDDEN,
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
    resp
}
