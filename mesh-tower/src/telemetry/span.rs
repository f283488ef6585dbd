//! The mesh's client and server spans, one place for their names and
//! attributes (OpenTelemetry's semantic conventions for HTTP and gRPC, plus
//! the mesh's own `mesh.*`). A span the tracer does not record (no provider
//! installed, or not sampled) gets nothing but its start and end.

use super::trace;
use crate::error::ErrorKind;
use crate::ext::Served;
use http::Request;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

/// Which side of a call a span is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Server,
}

/// The authority a request is for: its `Host` header, else its URI's.
pub(crate) fn authority<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("")
}

/// Starts a span of `kind` under `parent`, named and described by
/// `describe` only if it records.
fn start(
    parent: &Context,
    kind: SpanKind,
    describe: impl FnOnce() -> (String, Vec<KeyValue>),
) -> opentelemetry::global::BoxedSpan {
    let tracer = trace::tracer();
    let span = tracer
        .span_builder("mesh")
        .with_kind(kind)
        .start_with_context(&tracer, parent);
    if opentelemetry::trace::Span::is_recording(&span) {
        let (name, attributes) = describe();
        let mut span = span;
        opentelemetry::trace::Span::update_name(&mut span, name);
        opentelemetry::trace::Span::set_attributes(&mut span, attributes);
        return span;
    }
    span
}

/// The attributes of a gRPC call (`/package.Service/Method`), if it is one.
fn rpc_attributes<B>(req: &Request<B>, out: &mut Vec<KeyValue>) -> Option<String> {
    if !crate::grpc::is_grpc(req.headers()) {
        return None;
    }
    let path = req.uri().path().trim_start_matches('/');
    let (service, method) = path.split_once('/')?;
    out.push(KeyValue::new("rpc.system", "grpc"));
    out.push(KeyValue::new("rpc.service", service.to_owned()));
    out.push(KeyValue::new("rpc.method", method.to_owned()));
    Some(path.to_owned())
}

/// The method as a span attribute: the standard ones without a copy.
fn method_value(m: &http::Method) -> opentelemetry::Value {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match STANDARD.into_iter().find(|name| *name == m.as_str()) {
        Some(name) => name.into(),
        None => m.as_str().to_owned().into(),
    }
}

/// `<method> <target>`, the name of an HTTP span (joined by hand: one
/// per recorded span, and `format!` cost 850 instructions of it).
fn span_name(method: &http::Method, target: &str) -> String {
    let method = method.as_str();
    let mut name = String::with_capacity(method.len() + 1 + target.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(target);
    name
}

/// The client span of an outbound request to mesh `service` by `route`
/// (names shared with the config, not copied).
pub(crate) fn start_client<B>(
    req: &Request<B>,
    service: Option<&std::sync::Arc<str>>,
    route: Option<&std::sync::Arc<str>>,
    parent: &Context,
) -> opentelemetry::global::BoxedSpan {
    start(parent, SpanKind::Client, || {
        let host = authority(req);
        let mut attributes = Vec::with_capacity(8);
        attributes.extend([
            KeyValue::new("http.request.method", method_value(req.method())),
            KeyValue::new("server.address", host.to_owned()),
            KeyValue::new("url.path", req.uri().path().to_owned()),
        ]);
        if let Some(s) = service {
            attributes.push(KeyValue::new("mesh.service", s.clone()));
        }
        if let Some(r) = route {
            attributes.push(KeyValue::new("mesh.route", r.clone()));
        }
        let name = match rpc_attributes(req, &mut attributes) {
            Some(rpc) => rpc,
            None => span_name(req.method(), service.map_or(host, |s| &**s)),
        };
        (name, attributes)
    })
}

/// The server span of an inbound request to this workload's `service`.
pub(crate) fn start_server<B>(
    req: &Request<B>,
    service: Option<&str>,
    parent: &Context,
) -> opentelemetry::global::BoxedSpan {
    start(parent, SpanKind::Server, || {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method_value(req.method())),
            KeyValue::new("url.path", req.uri().path().to_owned()),
        ];
        if let Some(s) = service {
            attributes.push(KeyValue::new("mesh.service", s.to_owned()));
        }
        if let Some(c) = req
            .extensions()
            .get::<crate::ext::PeerIdentity>()
            .and_then(|p| p.0.as_ref())
        {
            attributes.push(KeyValue::new("mesh.caller", c.as_str().to_owned()));
        }
        if let Some(info) = req.extensions().get::<crate::ext::ConnectionInfo>()
            && let Some(remote) = info.remote
        {
            attributes.push(KeyValue::new("client.address", remote.ip().to_string()));
        }
        let name = match rpc_attributes(req, &mut attributes) {
            Some(rpc) => rpc,
            None => match service {
                Some(s) => span_name(req.method(), s),
                None => req.method().as_str().to_owned(),
            },
        };
        (name, attributes)
    })
}

/// Records the outcome on the span in `cx` and ends it.
pub(crate) fn finish(
    cx: &Context,
    side: Side,
    outcome: Result<u16, ErrorKind>,
    grpc_status: Option<u32>,
    served: Option<&Served>,
    skipped: Option<crate::error::RetrySkipped>,
) {
    let span = cx.span();
    if !span.is_recording() {
        span.end();
        return;
    }
    let mut attributes = Vec::with_capacity(4);
    let failed = match outcome {
        Ok(status) => {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                attributes.push(KeyValue::new("error.type", status.to_string()));
            }
            status >= 500 || (side == Side::Client && status >= 400)
        }
        Err(kind) => {
            attributes.push(KeyValue::new("error.type", kind.as_str()));
            true
        }
    };
    if let Some(code) = grpc_status {
        attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    }
    if let Some(s) = served {
        attributes.push(KeyValue::new("mesh.backend", s.backend.clone()));
        attributes.push(KeyValue::new("mesh.endpoint", s.endpoint.clone()));
        attributes.push(KeyValue::new("mesh.attempts", i64::from(s.attempts)));
    }
    if let Some(s) = skipped {
        // A retry or hedge not sent: the deadline would have passed first.
        attributes.push(KeyValue::new("mesh.skipped_attempt", s.attempt.as_str()));
        attributes.push(KeyValue::new("mesh.skipped_reason", "deadline"));
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        attributes.push(KeyValue::new("mesh.deadline_left_ms", ms(s.remaining)));
        attributes.push(KeyValue::new("mesh.attempt_expected_ms", ms(s.expected)));
    }
    span.set_attributes(attributes);
    if failed {
        span.set_status(Status::error(""));
    }
    span.end();
}
