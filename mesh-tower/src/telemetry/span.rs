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
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Whether the last span started was recorded: then the next most likely
/// is too (a provider is installed and sampling keeps most spans).
static LAST_RECORDED: AtomicBool = AtomicBool::new(false);

/// Starts a span of `kind` under `parent`, named and described by
/// `describe` only if it records.
///
/// While spans are being recorded, the description goes into the span
/// builder, where the SDK takes the name and attributes whole (and a
/// sampler sees them) instead of one dynamic call each after the start:
/// about 1,000 instructions less per span. While they are not (no
/// provider, or sampled out), nothing is described; a change either way
/// costs one span described in the slower way, or built for nothing.
fn start(
    parent: &Context,
    kind: SpanKind,
    describe: impl FnOnce() -> (String, Vec<KeyValue>),
) -> opentelemetry::global::BoxedSpan {
    start_on(&trace::tracer(), &LAST_RECORDED, parent, kind, describe)
}

/// [`start`] on `tracer`, remembering in `recorded` whether the span was.
fn start_on(
    tracer: &opentelemetry::global::BoxedTracer,
    recorded: &AtomicBool,
    parent: &Context,
    kind: SpanKind,
    describe: impl FnOnce() -> (String, Vec<KeyValue>),
) -> opentelemetry::global::BoxedSpan {
    use opentelemetry::trace::Span as _;
    if recorded.load(Ordering::Relaxed) {
        let (name, attributes) = describe();
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        if !span.is_recording() {
            recorded.store(false, Ordering::Relaxed);
        }
        return span;
    }
    let mut span = tracer
        .span_builder("mesh")
        .with_kind(kind)
        .start_with_context(tracer, parent);
    if span.is_recording() {
        recorded.store(true, Ordering::Relaxed);
        let (name, attributes) = describe();
        span.update_name(name);
        span.set_attributes(attributes);
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    fn described() -> (String, Vec<KeyValue>) {
        let attributes = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.path", "/items/1".to_owned()),
        ];
        ("GET reviews".to_owned(), attributes)
    }

    /// A span described up front (the last one was recorded) is the span
    /// described after its start (the last one was not); a span that does
    /// not record is not described, and is remembered as not recorded.
    #[test]
    fn a_span_is_described_the_same_up_front_or_after_and_only_if_it_records() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = opentelemetry::global::BoxedTracer::new(Box::new(provider.tracer("t")));
        let recorded = AtomicBool::new(false);
        let parent = Context::new();
        for up_front in [false, true] {
            assert_eq!(recorded.load(Ordering::Relaxed), up_front);
            let mut span = start_on(&tracer, &recorded, &parent, SpanKind::Client, described);
            span.end();
        }
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2);
        for s in &spans {
            assert_eq!(s.name, "GET reviews");
            assert_eq!(s.span_kind, SpanKind::Client);
            assert_eq!(s.attributes, described().1);
        }

        // Not recorded (a provider that samples nothing): not described.
        let none = SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff)
            .build();
        let tracer = opentelemetry::global::BoxedTracer::new(Box::new(none.tracer("t")));
        let mut calls = 0;
        for _ in 0..2 {
            let span = start_on(&tracer, &recorded, &parent, SpanKind::Client, || {
                calls += 1;
                described()
            });
            assert!(!span.is_recording());
        }
        assert!(!recorded.load(Ordering::Relaxed));
        assert_eq!(calls, 1, "described once: the first after a recorded span");
    }
}
